//! Host side of the serial agent channel (QEMU VMs): one connection to
//! QEMU's chardev socket per VM, shared by every agent session, each session
//! a stream of the [`crate::mux`] multiplexer.
//!
//! QEMU is the server (`-chardev socket,server=on,wait=off`): the socket
//! exists as soon as QEMU runs, a restarted daemon or a restored VM is
//! reached by connecting again, and QEMU never waits for us. A connection
//! starts with `Hello(nonce)`; frames are ignored until the guest's
//! `HelloAck` with that nonce, so whatever a restored guest was in the middle
//! of sending is dropped. A closed socket (VM stopped, restored into a new
//! QEMU) fails the open streams; the next session connects again.
//!
//! QEMU accepts one client at a time, so other processes (the CLI) reach the
//! agent through [`Gateway`], which serves the hybrid-vsock protocol
//! (`CONNECT <port>`) on a Unix socket and turns each connection into a
//! stream here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use banger_proto::agent::{AGENT_PORT, GuestHello};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::AgentError;
use crate::mux::{Decoder, Frame, Kind, Link, MUX_VERSION, MuxStream, hello_payload, parse_hello};

/// Where a connection is.
#[derive(Debug, Clone)]
enum Phase {
    /// `Hello` sent, waiting for the guest agent's answer.
    Handshaking,
    Ready(GuestHello),
    Dead(String),
}

#[derive(Debug)]
struct Conn {
    link: Arc<Link>,
    phase: watch::Receiver<Phase>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.link.kill("the agent channel was closed");
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    next_id: AtomicU32,
}

/// The agent of one VM over its serial channel. Cheap to clone; clones share
/// the connection.
#[derive(Debug, Clone)]
pub struct SerialChannel {
    inner: Arc<Inner>,
}

impl PartialEq for SerialChannel {
    fn eq(&self, other: &Self) -> bool {
        self.inner.path == other.inner.path
    }
}
impl Eq for SerialChannel {}

impl SerialChannel {
    /// The channel behind QEMU's chardev socket `path`. Connects lazily.
    pub fn new(path: impl Into<PathBuf>) -> SerialChannel {
        SerialChannel {
            inner: Arc::new(Inner {
                path: path.into(),
                conn: tokio::sync::Mutex::new(None),
                next_id: AtomicU32::new(1),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The live connection, connecting (and saying `Hello`) if there is none.
    async fn conn(&self) -> Result<Arc<Conn>, AgentError> {
        let mut g = self.inner.conn.lock().await;
        if let Some(c) = g.as_ref()
            && c.link.dead().is_none()
        {
            return Ok(c.clone());
        }
        *g = None;
        let s =
            UnixStream::connect(&self.inner.path)
                .await
                .map_err(|e| AgentError::SerialConnect {
                    path: self.inner.path.clone(),
                    source: e,
                })?;
        let c = Arc::new(start(s));
        *g = Some(c.clone());
        Ok(c)
    }

    /// Waits until the connection's handshake is done; `Err(why)` if the
    /// connection died (the caller may connect again).
    async fn ready(c: &Conn) -> Result<GuestHello, String> {
        let mut phase = c.phase.clone();
        loop {
            match &*phase.borrow_and_update() {
                Phase::Ready(h) => return Ok(h.clone()),
                Phase::Dead(why) => return Err(why.clone()),
                Phase::Handshaking => {}
            }
            if phase.changed().await.is_err() {
                return Err("the agent channel's reader stopped".into());
            }
        }
    }

    /// Opens one stream (one agent session), connecting first if needed.
    pub async fn open(&self, timeout: Duration) -> Result<MuxStream, AgentError> {
        let secs = timeout.as_secs().max(1);
        tokio::time::timeout(timeout, async {
            // A connection may die under us once (e.g. the VM was restored
            // into a new QEMU): connect again before giving up.
            let mut why = String::new();
            for _ in 0..2 {
                let c = self.conn().await?;
                if let Err(w) = Self::ready(&c).await {
                    why = w;
                    continue;
                }
                let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                match c.link.add_stream(id, true, usize::MAX) {
                    Some(s) => return Ok(s),
                    None => why = c.link.dead().unwrap_or_default(),
                }
            }
            Err(AgentError::ChannelClosed {
                path: self.inner.path.clone(),
                why,
            })
        })
        .await
        .map_err(|_| AgentError::Timeout {
            what: "waiting for the guest agent on the serial channel",
            secs,
        })?
    }

    /// Waits at most `timeout` for the guest agent to answer on the channel
    /// (the serial equivalent of the boot-time readiness announcement):
    /// keeps connecting while QEMU's socket does not exist yet.
    pub async fn wait_ready(&self, timeout: Duration, vm: &str) -> Result<GuestHello, AgentError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let attempt = async {
            loop {
                match self.conn().await {
                    Ok(c) => match Self::ready(&c).await {
                        Ok(h) => return h,
                        Err(why) => tracing::debug!("serial agent channel: {why}"),
                    },
                    Err(e) => tracing::debug!("serial agent channel not up yet: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout_at(deadline, attempt)
            .await
            .map_err(|_| AgentError::ReadyTimeout {
                vm: vm.to_string(),
                secs: timeout.as_secs(),
            })
    }

    /// Drops the connection (its streams fail); the next call reconnects.
    pub async fn disconnect(&self) {
        *self.inner.conn.lock().await = None;
    }
}

/// Starts the reader and writer of a new connection and says `Hello`.
fn start(s: UnixStream) -> Conn {
    let (mut r, mut w) = s.into_split();
    let (link, mut out) = Link::new();
    let (phase_tx, phase) = watch::channel(Phase::Handshaking);
    let nonce = Arc::new(AtomicU64::new(crate::mux::random_u64()));
    link.send(Frame::new(
        Kind::Hello,
        0,
        hello_payload(nonce.load(Ordering::Relaxed)),
    ));
    let wl = link.clone();
    let writer = tokio::spawn(async move {
        while let Some(o) = out.recv().await {
            if !wl.current(o.epoch) {
                continue;
            }
            if let Err(e) = w.write_all(&o.bytes).await {
                wl.kill(&format!("writing to the agent channel: {e}"));
                return;
            }
        }
    });
    let rl = link.clone();
    let reader = tokio::spawn(async move {
        let mut d = Decoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        let why = loop {
            let n = match r.read(&mut buf).await {
                Ok(0) => break "QEMU closed the agent channel (the VM stopped?)".to_string(),
                Ok(n) => n,
                Err(e) => break format!("reading the agent channel: {e}"),
            };
            d.feed(&buf[..n], |f| on_frame(&rl, &phase_tx, &nonce, f));
        };
        rl.kill(&why);
        let _ = phase_tx.send(Phase::Dead(why));
    });
    Conn {
        link,
        phase,
        tasks: [writer, reader],
    }
}

fn on_frame(link: &Link, phase: &watch::Sender<Phase>, nonce: &AtomicU64, f: Frame) {
    let ready = matches!(*phase.borrow(), Phase::Ready(_));
    match f.kind {
        Kind::HelloAck => {
            let Some((version, n, rest)) = parse_hello(&f.payload) else {
                return;
            };
            if n != nonce.load(Ordering::Relaxed) {
                return; // an answer to an earlier Hello
            }
            if version != MUX_VERSION {
                let why = format!(
                    "the guest agent speaks serial mux version {version}, this host {MUX_VERSION}; \
                     rebuild the image with this banger's agent"
                );
                link.kill(&why);
                let _ = phase.send(Phase::Dead(why));
                return;
            }
            match serde_json::from_slice::<GuestHello>(rest) {
                Ok(h) => {
                    let _ = phase.send(Phase::Ready(h));
                }
                Err(e) => tracing::warn!("agent channel: bad hello from the guest: {e}"),
            }
        }
        Kind::Announce => {
            // The agent (re)started: whatever streams we had are gone.
            let n = link.reset(false);
            if n > 0 {
                tracing::warn!("the guest agent restarted; {n} agent session(s) lost");
            }
            let fresh = crate::mux::random_u64();
            nonce.store(fresh, Ordering::Relaxed);
            let _ = phase.send(Phase::Handshaking);
            link.send(Frame::new(Kind::Hello, 0, hello_payload(fresh)));
        }
        // Nothing before the handshake belongs to this session.
        _ if ready => {
            link.deliver(f);
        }
        _ => {}
    }
}

/// Serves the hybrid-vsock protocol (`CONNECT <port>\n` → `OK <port>\n`) on
/// a Unix socket, each connection bridged to a stream of a [`SerialChannel`]:
/// how processes other than the channel's owner (the CLI, through the VM's
/// `vsock_path`) reach a QEMU guest's agent. Stops and removes its socket
/// when dropped.
#[derive(Debug)]
pub struct Gateway {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Gateway {
    /// Binds `path` (replacing a stale socket) and serves `channel` on it.
    pub fn serve(channel: SerialChannel, path: &Path) -> Result<Gateway, AgentError> {
        let listen_err = |e| AgentError::ReadyListen {
            path: path.to_path_buf(),
            source: e,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(listen_err(e)),
        }
        let l = UnixListener::bind(path).map_err(listen_err)?;
        let task = tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(bridge(s, channel.clone()));
                    }
                    Err(e) => {
                        tracing::warn!("agent gateway: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Gateway {
            path: path.to_path_buf(),
            task,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How long a gateway client may take to send its `CONNECT` line.
const CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(5);

async fn bridge(mut s: UnixStream, channel: SerialChannel) {
    let line = tokio::time::timeout(CONNECT_LINE_TIMEOUT, async {
        let mut line = Vec::new();
        loop {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.ok()? == 0 {
                return None;
            }
            if b[0] == b'\n' {
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            line.push(b[0]);
            if line.len() > 64 {
                return None;
            }
        }
    })
    .await
    .ok()
    .flatten();
    let Some(line) = line else { return };
    let port = line
        .strip_prefix("CONNECT ")
        .and_then(|p| p.trim().parse::<u32>().ok());
    if port != Some(AGENT_PORT) {
        // Only the agent lives behind this channel; the client reports it.
        let _ = s.write_all(b"REFUSED\n").await;
        return;
    }
    let mut stream = match channel.open(crate::client::DEFAULT_CONNECT_TIMEOUT).await {
        Ok(st) => st,
        Err(e) => {
            tracing::warn!("agent gateway: {e}");
            return;
        }
    };
    if s.write_all(format!("OK {AGENT_PORT}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut s, &mut stream).await {
        tracing::debug!("agent gateway: session ended: {e}");
    }
}
