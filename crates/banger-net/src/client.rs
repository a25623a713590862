//! The owner daemon's side of the root helper socket.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_proto::root::{
    FrameError, ROOT_MAX_FRAME, ROOT_PROTOCOL_VERSION, RootError, RootOp, RootReply, RootRequest,
    RootResponse, decode_frame, encode_frame,
};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const START_HINT: &str = "start it as root with `bangerd-root --owner-uid <your uid>` \
(or `systemctl start bangerd-root`)";

#[derive(Debug, Error)]
pub enum RootClientError {
    #[error("the root helper is not running: no socket at {socket}; {START_HINT}", socket = .socket.display())]
    NotRunning { socket: PathBuf },
    #[error("the root helper is not accepting connections on {socket} ({source}); {START_HINT}", socket = .socket.display())]
    Refused {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "permission denied on the root helper socket {socket}: it only accepts its configured owner uid (started with --owner-uid)",
        socket = .socket.display()
    )]
    PermissionDenied { socket: PathBuf },
    #[error("talking to the root helper at {socket}: {source}", socket = .socket.display())]
    Io {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the root helper at {socket} closed the connection without answering (a peer it does not accept is dropped)", socket = .socket.display())]
    Closed { socket: PathBuf },
    #[error("the root helper did not answer within {0:?}")]
    Timeout(Duration),
    #[error("bad frame from or to the root helper: {0}")]
    Frame(#[from] FrameError),
    #[error(
        "the root helper speaks protocol {helper}, this daemon {ROOT_PROTOCOL_VERSION}; install matching versions of bangerd and bangerd-root"
    )]
    Version { helper: u32 },
    #[error("root helper refused {op}: {error}")]
    Helper { op: &'static str, error: RootError },
}

/// Calls the root helper over its Unix socket, one connection per call.
#[derive(Debug, Clone)]
pub struct RootClient {
    socket: PathBuf,
    timeout: Duration,
}

impl RootClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        RootClient {
            socket: socket.into(),
            timeout: Duration::from_secs(30),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Send one operation and wait for its answer.
    pub async fn call(&self, op: RootOp) -> Result<RootReply, RootClientError> {
        let name = op.name();
        let fut = self.call_inner(op);
        let resp = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| RootClientError::Timeout(self.timeout))??;
        match resp {
            RootResponse::Ok { reply } => Ok(reply),
            RootResponse::Err { error } => Err(RootClientError::Helper { op: name, error }),
        }
    }

    /// Liveness and version check; returns the helper's owner uid.
    pub async fn ping(&self) -> Result<u32, RootClientError> {
        match self.call(RootOp::Ping).await? {
            RootReply::Pong {
                protocol_version,
                owner_uid,
                ..
            } => {
                if protocol_version != ROOT_PROTOCOL_VERSION {
                    return Err(RootClientError::Version {
                        helper: protocol_version,
                    });
                }
                Ok(owner_uid)
            }
            other => Err(RootClientError::Io {
                socket: self.socket.clone(),
                source: std::io::Error::other(format!("unexpected answer to ping: {other:?}")),
            }),
        }
    }

    /// Let allowlisted `guest` reach each `(address, ttl_secs)` of a DNS
    /// answer (the helper validates and clamps).
    pub async fn allow_egress(
        &self,
        guest: std::net::Ipv4Addr,
        addrs: &[(std::net::Ipv4Addr, u32)],
    ) -> Result<(), RootClientError> {
        let grants = addrs
            .iter()
            .map(|(a, ttl)| banger_proto::root::EgressGrant {
                addr: a.to_string(),
                ttl_secs: *ttl,
            })
            .collect();
        self.call(RootOp::AllowEgress {
            ip: guest.to_string(),
            grants,
        })
        .await
        .map(|_| ())
    }

    async fn call_inner(&self, op: RootOp) -> Result<RootResponse, RootClientError> {
        let socket = || self.socket.clone();
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => RootClientError::NotRunning { socket: socket() },
                ErrorKind::PermissionDenied => {
                    RootClientError::PermissionDenied { socket: socket() }
                }
                ErrorKind::ConnectionRefused => RootClientError::Refused {
                    socket: socket(),
                    source: e,
                },
                _ => RootClientError::Io {
                    socket: socket(),
                    source: e,
                },
            })?;
        let io = |source| RootClientError::Io {
            socket: socket(),
            source,
        };
        let frame = encode_frame(&RootRequest::new(op))?;
        let (rd, mut wr) = stream.into_split();
        wr.write_all(&frame).await.map_err(|e| {
            if e.kind() == ErrorKind::BrokenPipe || e.kind() == ErrorKind::ConnectionReset {
                RootClientError::Closed { socket: socket() }
            } else {
                io(e)
            }
        })?;
        let mut line = Vec::new();
        let mut rd = BufReader::new(rd).take(ROOT_MAX_FRAME as u64 + 1);
        let n = rd.read_until(b'\n', &mut line).await.map_err(|e| {
            if e.kind() == ErrorKind::ConnectionReset {
                RootClientError::Closed { socket: socket() }
            } else {
                io(e)
            }
        })?;
        if n == 0 {
            return Err(RootClientError::Closed { socket: socket() });
        }
        let resp: RootResponse = decode_frame(&line)?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn absent_socket_says_how_to_start_the_helper() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = RootClient::new(dir.path().join("nope.sock"))
            .call(RootOp::Ping)
            .await
            .expect_err("no helper");
        let msg = err.to_string();
        assert!(matches!(err, RootClientError::NotRunning { .. }), "{msg}");
        assert!(msg.contains("bangerd-root --owner-uid"), "{msg}");
    }

    #[tokio::test]
    async fn stale_socket_is_refused_with_hint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let err = RootClient::new(&path)
            .call(RootOp::Ping)
            .await
            .expect_err("refused");
        assert!(matches!(err, RootClientError::Refused { .. }), "{err}");
        assert!(err.to_string().contains("bangerd-root"), "{err}");
    }

    #[tokio::test]
    async fn talks_to_a_line_server_and_reports_helper_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            for _ in 0..2 {
                let (s, _) = listener.accept().await.expect("accept");
                let (rd, mut wr) = s.into_split();
                let mut line = Vec::new();
                BufReader::new(rd)
                    .read_until(b'\n', &mut line)
                    .await
                    .expect("read");
                let req: RootRequest = decode_frame(&line).expect("request");
                let resp: RootResponse = match req.op {
                    RootOp::Ping => Ok(RootReply::Pong {
                        protocol_version: ROOT_PROTOCOL_VERSION,
                        helper_version: "t".into(),
                        owner_uid: 4242,
                        bridge: "banger0".into(),
                        subnet: "172.16.0.0/24".into(),
                    }),
                    _ => Err(RootError::new(
                        banger_proto::root::RootErrorKind::BadRequest,
                        "nope",
                    )),
                }
                .into();
                wr.write_all(&encode_frame(&resp).expect("encode"))
                    .await
                    .expect("write");
            }
        });
        let c = RootClient::new(&path).with_timeout(Duration::from_secs(5));
        assert_eq!(c.ping().await.expect("ping"), 4242);
        let err = c.call(RootOp::RemoveNat).await.expect_err("refused");
        assert!(err.to_string().contains("remove_nat: nope"), "{err}");
    }
}
