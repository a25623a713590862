//! The CLI's HTTP/1.1 client for the daemon's Unix socket. Every wait is
//! bounded: a daemon that accepts a connection and never answers makes the
//! command fail with a message, not hang ([`answer_bound`] says how long
//! each request may take).

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_proto::{API_VERSION, ApiError, VersionInfo};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error(
        "bangerd is not running (cannot connect to {socket}: {reason}).\n\
         Start it with `sudo banger system install --owner \"$USER\"` on a systemd host,\n\
         or `sudo banger system run` in a terminal (hosts without systemd); see `banger doctor`."
    )]
    DaemonDown { socket: PathBuf, reason: String },
    #[error(
        "bangerd at {socket} speaks API version {theirs}, this banger speaks {ours}; install matching versions (`sudo banger system install`)"
    )]
    VersionMismatch {
        socket: PathBuf,
        theirs: u32,
        ours: u32,
    },
    #[error(
        "permission denied opening bangerd's socket {socket}{detail}.\n\
         bangerd serves one owner user: run banger as that user (the --owner given to \
         `banger system install`), reinstall with `sudo banger system install --owner \"$USER\"`, \
         or point --socket / BANGER_SOCKET at a daemon you own"
    )]
    PermissionDenied { socket: PathBuf, detail: String },
    #[error(
        "bangerd at {socket} accepted the connection but sent no answer to {what} within {}s; \
         it may be stuck or overloaded: see its log (`journalctl -u bangerd`, or the terminal \
         running `banger system run`), then restart it (`sudo banger system restart`)",
        waited.as_secs()
    )]
    NoAnswer {
        socket: PathBuf,
        what: String,
        waited: Duration,
    },
    #[error("{0}")]
    Api(ApiError),
    #[error("talking to bangerd at {socket}: {detail}")]
    Transport { socket: PathBuf, detail: String },
    #[error("bangerd sent an answer this banger cannot read ({status}): {detail}")]
    BadAnswer { status: StatusCode, detail: String },
}

/// How long an ordinary request (list, show, version) may go unanswered.
pub const QUICK: Duration = Duration::from_secs(20);

/// The longest a request may wait for its answer: quick for queries, long
/// for work the daemon does before it answers (builds, copies, boots). For
/// streamed answers (pulls, `logs --follow`) it bounds the wait for the
/// answer to start, not the stream.
pub fn answer_bound(method: &Method, path: &str) -> Duration {
    const MIN: u64 = 60;
    let route = path.split('?').next().unwrap_or(path);
    let mins = |m: u64| Duration::from_secs(m * MIN);
    if *method == Method::POST {
        match route {
            "/v1/images/build" => return mins(180),
            "/v1/images/register" | "/v1/kernels/register" | "/v1/images/bundle" => {
                return mins(60);
            }
            "/v1/vms" => return mins(15),
            _ => {}
        }
        if ["/start", "/stop", "/restart", "/ready"]
            .iter()
            .any(|a| route.starts_with("/v1/vms/") && route.ends_with(a))
        {
            return mins(15);
        }
        // `image warm` boots a VM to ready before it answers.
        if route.starts_with("/v1/images/") && route.ends_with("/warm") {
            return mins(15);
        }
    }
    if *method == Method::DELETE {
        return mins(10);
    }
    QUICK
}

/// Why the socket could not be opened, with the owner and mode when the
/// kernel said "permission denied".
fn connect_error(socket: &Path, e: std::io::Error) -> ClientError {
    if e.kind() != std::io::ErrorKind::PermissionDenied {
        return ClientError::DaemonDown {
            socket: socket.to_path_buf(),
            reason: e.to_string(),
        };
    }
    use std::os::unix::fs::MetadataExt;
    let detail = match std::fs::metadata(socket) {
        Ok(m) => format!(
            " (owned by uid {}, mode {:04o}; you are uid {})",
            m.uid(),
            m.mode() & 0o7777,
            // SAFETY: getuid has no failure mode.
            unsafe { libc::getuid() }
        ),
        Err(_) => " (its directory is not open to you)".to_string(),
    };
    ClientError::PermissionDenied {
        socket: socket.to_path_buf(),
        detail,
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Self {
        Client { socket }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn transport(&self, detail: impl std::fmt::Display) -> ClientError {
        ClientError::Transport {
            socket: self.socket.clone(),
            detail: detail.to_string(),
        }
    }

    /// The typed error of a non-2xx answer.
    fn error_of(status: StatusCode, bytes: &[u8]) -> ClientError {
        match serde_json::from_slice::<ApiError>(bytes) {
            Ok(e) => ClientError::Api(e),
            Err(_) => ClientError::BadAnswer {
                status,
                detail: String::from_utf8_lossy(bytes).into_owned(),
            },
        }
    }

    /// Opens a connection and sends one request; the answer's body is left
    /// for the caller to read whole or as a stream.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Incoming), ClientError> {
        let bound = answer_bound(&method, path);
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        tokio::time::timeout(bound, self.request_unbounded(method, path, body))
            .await
            .map_err(|_| ClientError::NoAnswer {
                socket: self.socket.clone(),
                what,
                waited: bound,
            })?
    }

    async fn request_unbounded(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Incoming), ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| connect_error(&self.socket, e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.transport(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "bangerd");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.transport(e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.transport(e))?;
        Ok((resp.status(), resp.into_body()))
    }

    /// A request whose whole 2xx body is returned; other answers are errors.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let bound = answer_bound(&method, path);
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let (status, body) = self.request(method, path, body).await?;
        // The whole answer, not only its start, within the same bound.
        let bytes = tokio::time::timeout(bound, body.collect())
            .await
            .map_err(|_| ClientError::NoAnswer {
                socket: self.socket.clone(),
                what,
                waited: bound,
            })?
            .map_err(|e| self.transport(e))?
            .to_bytes();
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(Self::error_of(status, &bytes))
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadAnswer {
            status: StatusCode::OK,
            detail: e.to_string(),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| self.transport(e))?;
        self.call(Method::POST, path, Some(body)).await
    }

    /// GET returning the raw body (e.g. console logs).
    pub async fn get_raw(&self, path: &str) -> Result<Bytes, ClientError> {
        self.send(Method::GET, path, None).await
    }

    /// Sends a request and hands each chunk of a 2xx answer to `on_chunk`
    /// as it arrives.
    async fn streamed(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        mut on_chunk: impl AsyncFnMut(&[u8]) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let (status, mut body) = self.request(method, path, body).await?;
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| self.transport(e))?
                .to_bytes();
            return Err(Self::error_of(status, &bytes));
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.transport(e))?;
            if let Some(data) = frame.data_ref() {
                on_chunk(data).await?;
            }
        }
        Ok(())
    }

    /// GET streaming the body into `out` as it arrives (`logs --follow`).
    pub async fn stream<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        path: &str,
        out: &mut W,
    ) -> Result<(), ClientError> {
        use tokio::io::AsyncWriteExt;
        self.streamed(Method::GET, path, None, async |data: &[u8]| {
            out.write_all(data).await.map_err(|e| self.transport(e))?;
            out.flush().await.map_err(|e| self.transport(e))
        })
        .await
    }

    /// POST `body` and hand each line of the streamed (NDJSON) answer to
    /// `on_line` as it arrives.
    pub async fn post_lines<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        mut on_line: impl FnMut(&[u8]),
    ) -> Result<(), ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| self.transport(e))?;
        let mut pending: Vec<u8> = Vec::new();
        self.streamed(Method::POST, path, Some(body), async |data: &[u8]| {
            pending.extend_from_slice(data);
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                if line.len() > 1 {
                    on_line(&line[..line.len() - 1]);
                }
            }
            Ok(())
        })
        .await?;
        if !pending.is_empty() {
            on_line(&pending);
        }
        Ok(())
    }

    /// Checks that the daemon answers and speaks our API version.
    pub async fn version(&self) -> Result<VersionInfo, ClientError> {
        self.version_within(QUICK).await
    }

    /// [`Client::version`] with a shorter bound (`doctor`).
    pub async fn version_within(&self, bound: Duration) -> Result<VersionInfo, ClientError> {
        let v: VersionInfo = match tokio::time::timeout(bound, self.get("/v1/version")).await {
            Ok(v) => v?,
            Err(_) => {
                return Err(ClientError::NoAnswer {
                    socket: self.socket.clone(),
                    what: "GET /v1/version".into(),
                    waited: bound,
                });
            }
        };
        if v.api_version != API_VERSION {
            return Err(ClientError::VersionMismatch {
                socket: self.socket.clone(),
                theirs: v.api_version,
                ours: API_VERSION,
            });
        }
        Ok(v)
    }

    /// Like `get`, but gives up after `timeout` (used by shell completion,
    /// which must never make a shell hang).
    pub async fn get_with_timeout<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Option<T> {
        tokio::time::timeout(timeout, self.get(path))
            .await
            .ok()?
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_work_gets_long_bounds_queries_quick_ones() {
        assert_eq!(answer_bound(&Method::GET, "/v1/vms"), QUICK);
        assert_eq!(
            answer_bound(&Method::GET, "/v1/vms/a/logs?follow=true"),
            QUICK
        );
        assert_eq!(answer_bound(&Method::POST, "/v1/images/pull"), QUICK);
        assert!(answer_bound(&Method::POST, "/v1/images/build") >= Duration::from_secs(3600));
        assert!(
            answer_bound(&Method::POST, "/v1/vms/a/ready?timeout_secs=300")
                > Duration::from_secs(300)
        );
        assert!(answer_bound(&Method::POST, "/v1/vms/a/stop") > QUICK);
        assert!(answer_bound(&Method::POST, "/v1/images/a/warm") > Duration::from_secs(300));
        assert!(answer_bound(&Method::DELETE, "/v1/vms/a") > QUICK);
    }
}
