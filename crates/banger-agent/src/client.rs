//! Host side: talk to a guest's agent through a hybrid-vsock Unix socket
//! (Firecracker), the serial channel's multiplexer (QEMU, see
//! [`crate::serial`]) or a plain Unix socket (tests), and wait for its
//! boot-time readiness announcement.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use banger_proto::agent::{
    AGENT_PORT, AgentErrorMsg, DATA_CHUNK, ExecRequest, ExitStatus, FrameError, FrameKind,
    GuestHello, GuestMsg, HostHello, HostMsg, PROTOCOL_VERSION, ReadinessReport, TtySize,
    UploadSummary, version_mismatch_message,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, mpsc};

use crate::serial::SerialChannel;
use crate::wire::{WireError, read_frame, write_data, write_msg};

/// Default bound on connecting and on the hybrid-vsock handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything that can go wrong talking to a guest agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to the VM's vsock socket {path}: {source}; is the VM running?")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "vsock CONNECT to guest port {port} was refused (reply {reply:?}); is banger-vsock-agent running in the guest?"
    )]
    HandshakeRejected { port: u32, reply: String },
    #[error(
        "the VMM closed the vsock connection to guest port {port} without answering; nothing listens on that port in the guest (is banger-vsock-agent running?)"
    )]
    HandshakeClosed { port: u32 },
    #[error("cannot connect to the VM's agent channel {path}: {source}; is the VM running?")]
    SerialConnect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the VM's agent channel {path} closed: {why}")]
    ChannelClosed { path: PathBuf, why: String },
    #[error("timed out after {secs}s {what}")]
    Timeout { what: &'static str, secs: u64 },
    #[error(
        "VM {vm}: the guest agent did not announce readiness within {secs}s; look at `banger vm logs {vm}` for the guest's boot log"
    )]
    ReadyTimeout { vm: String, secs: u64 },
    #[error("cannot listen for the guest's readiness on {path}: {source}")]
    ReadyListen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}", version_mismatch_message(*host, *guest))]
    VersionMismatch { host: u32, guest: u32 },
    #[error(transparent)]
    Guest(#[from] AgentErrorMsg),
    #[error("unexpected answer from the guest agent: {0}")]
    Protocol(String),
    #[error("the guest agent closed the connection before answering {0}")]
    Closed(&'static str),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("agent connection: {0}")]
    Io(#[from] io::Error),
}

impl From<FrameError> for AgentError {
    fn from(e: FrameError) -> Self {
        AgentError::Wire(WireError::Frame(e))
    }
}

/// Where the agent is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentTarget {
    /// Firecracker's vsock host socket (or the daemon's gateway to a QEMU
    /// VM's serial channel): connect to `uds_path`, then `CONNECT <port>`.
    HybridVsock { uds_path: PathBuf, port: u32 },
    /// The agent serving a Unix socket directly (`--listen unix:PATH`).
    Unix(PathBuf),
    /// QEMU's virtio-serial chardev socket, sessions multiplexed on one
    /// shared connection.
    Serial(SerialChannel),
}

/// `<uds_path>_<port>`: where guest-initiated vsock connections arrive.
pub fn ready_socket_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = uds_path.as_os_str().to_os_string();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Opens a stream to guest `port` through a hybrid-vsock Unix socket:
/// connect, send `CONNECT <port>\n`, expect a line starting with `OK `.
pub async fn connect_hybrid(
    uds_path: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, AgentError> {
    let secs = timeout.as_secs().max(1);
    tokio::time::timeout(timeout, async {
        let mut s = UnixStream::connect(uds_path)
            .await
            .map_err(|e| AgentError::Connect {
                path: uds_path.to_path_buf(),
                source: e,
            })?;
        s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
        // Byte by byte: anything after the newline already belongs to the
        // agent protocol and must stay in the socket.
        let mut line = Vec::new();
        loop {
            let mut b = [0u8; 1];
            if s.read(&mut b).await? == 0 {
                return Err(AgentError::HandshakeClosed { port });
            }
            if b[0] == b'\n' {
                break;
            }
            line.push(b[0]);
            if line.len() > 128 {
                break;
            }
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        if line.starts_with("OK ") {
            Ok(s)
        } else {
            Err(AgentError::HandshakeRejected { port, reply: line })
        }
    })
    .await
    .map_err(|_| AgentError::Timeout {
        what: "connecting to the guest agent",
        secs,
    })?
}

/// Control messages for a running exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecControl {
    Resize(TtySize),
    Signal(i32),
}

/// Most bytes [`AgentClient::exec_capture`] keeps of stdout and of stderr.
pub const CAPTURE_MAX: usize = 16 << 20;

/// A memory sink that refuses to grow past [`CAPTURE_MAX`].
struct Capped {
    buf: Vec<u8>,
    what: &'static str,
}

impl Capped {
    fn new(what: &'static str) -> Self {
        Capped {
            buf: Vec::new(),
            what,
        }
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.buf.len() + data.len() > CAPTURE_MAX {
            return Poll::Ready(Err(io::Error::other(format!(
                "the command wrote more than {CAPTURE_MAX} bytes to {}; captured output is \
                 capped there (stream big output to a file instead)",
                self.what
            ))));
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Captured result of [`AgentClient::exec_capture`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A client for one guest's agent. Cheap to clone; every call opens its own
/// connection, so calls may run concurrently.
#[derive(Debug, Clone)]
pub struct AgentClient {
    target: AgentTarget,
    connect_timeout: Duration,
    client_name: String,
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;
type Conn = (BoxRead, BoxWrite);

impl AgentClient {
    pub fn new(target: AgentTarget) -> Self {
        AgentClient {
            target,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            client_name: format!("banger {}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// The agent of a VM whose hybrid-vsock socket is `uds_path`.
    pub fn hybrid(uds_path: impl Into<PathBuf>) -> Self {
        Self::new(AgentTarget::HybridVsock {
            uds_path: uds_path.into(),
            port: AGENT_PORT,
        })
    }

    /// The agent of a QEMU VM whose serial chardev socket is `path`. Clones
    /// share one connection; use one client (or its clones) per VM.
    pub fn serial(path: impl Into<PathBuf>) -> Self {
        Self::new(AgentTarget::Serial(SerialChannel::new(path)))
    }

    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    pub fn target(&self) -> &AgentTarget {
        &self.target
    }

    /// Connects, sends hello and `req` (pipelined), and checks the hello.
    async fn open(&self, req: &HostMsg) -> Result<(Conn, GuestHello), AgentError> {
        let stream = match &self.target {
            AgentTarget::HybridVsock { uds_path, port } => {
                connect_hybrid(uds_path, *port, self.connect_timeout).await?
            }
            AgentTarget::Serial(ch) => {
                let (r, w) = tokio::io::split(ch.open(self.connect_timeout).await?);
                return self.handshake((Box::new(r), Box::new(w)), req).await;
            }
            AgentTarget::Unix(p) => {
                tokio::time::timeout(self.connect_timeout, UnixStream::connect(p))
                    .await
                    .map_err(|_| AgentError::Timeout {
                        what: "connecting to the guest agent",
                        secs: self.connect_timeout.as_secs(),
                    })?
                    .map_err(|e| AgentError::Connect {
                        path: p.clone(),
                        source: e,
                    })?
            }
        };
        let (r, w) = stream.into_split();
        self.handshake((Box::new(r), Box::new(w)), req).await
    }

    /// Sends hello and `req` (pipelined) on a fresh session and checks the
    /// agent's hello.
    async fn handshake(&self, conn: Conn, req: &HostMsg) -> Result<(Conn, GuestHello), AgentError> {
        let (mut r, mut w) = conn;
        let hello = HostMsg::Hello(HostHello {
            protocol_version: PROTOCOL_VERSION,
            client: self.client_name.clone(),
        });
        write_msg(&mut w, &hello).await?;
        write_msg(&mut w, req).await?;
        let reply = tokio::time::timeout(self.connect_timeout, read_msg(&mut r, "hello"))
            .await
            .map_err(|_| AgentError::Timeout {
                what: "waiting for the guest agent's hello",
                secs: self.connect_timeout.as_secs(),
            })??;
        match reply {
            GuestMsg::Hello(h) if h.protocol_version == PROTOCOL_VERSION => Ok(((r, w), h)),
            GuestMsg::Hello(h) => Err(AgentError::VersionMismatch {
                host: PROTOCOL_VERSION,
                guest: h.protocol_version,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Protocol version and guest facts.
    pub async fn hello(&self) -> Result<GuestHello, AgentError> {
        // Ping rides along so the agent has a request to serve.
        let ((mut r, _w), h) = self.open(&HostMsg::Ping).await?;
        expect_pong(read_msg(&mut r, "ping").await?)?;
        Ok(h)
    }

    /// Round trip through the agent; returns the time it took.
    pub async fn ping(&self) -> Result<Duration, AgentError> {
        let t = Instant::now();
        let ((mut r, _w), _) = self.open(&HostMsg::Ping).await?;
        expect_pong(read_msg(&mut r, "ping").await?)?;
        Ok(t.elapsed())
    }

    /// Asks the guest to power off cleanly. Returns once the agent has
    /// accepted; the VM goes away shortly after.
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        let ((mut r, _w), _) = self.open(&HostMsg::Shutdown).await?;
        match read_msg(&mut r, "shutdown").await? {
            GuestMsg::ShutdownStarted => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// What the guest's readiness depends on (see [`crate::readiness`]).
    pub async fn readiness(&self) -> Result<ReadinessReport, AgentError> {
        let ((mut r, _w), _) = self.open(&HostMsg::Readiness).await?;
        match read_msg(&mut r, "readiness").await? {
            GuestMsg::Readiness(report) => Ok(report),
            other => Err(unexpected(other)),
        }
    }

    /// Sets the guest's clock to the host's; returns the guest's offset
    /// (guest minus host, ms) before the change.
    pub async fn sync_time(&self) -> Result<i64, AgentError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let req = HostMsg::SyncTime {
            unix_secs: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
            nanos: now.subsec_nanos(),
        };
        let ((mut r, _w), _) = self.open(&req).await?;
        match read_msg(&mut r, "sync_time").await? {
            GuestMsg::TimeSynced { offset_ms } => Ok(offset_ms),
            other => Err(unexpected(other)),
        }
    }

    /// Runs a command, streaming `stdin` to it and its output to `stdout` /
    /// `stderr` (in tty mode everything arrives on `stdout`). Returns how it
    /// ended. `stdin: None` gives the process an immediate EOF. Memory use
    /// is bounded: output is read from the agent only as fast as the sinks
    /// accept it, and stdin is read only as fast as the agent takes it.
    pub async fn exec<I, O, E>(
        &self,
        req: &ExecRequest,
        stdin: Option<I>,
        stdout: &mut O,
        stderr: &mut E,
        control: Option<mpsc::Receiver<ExecControl>>,
    ) -> Result<ExitStatus, AgentError>
    where
        I: AsyncRead + Unpin,
        O: AsyncWrite + Unpin + ?Sized,
        E: AsyncWrite + Unpin + ?Sized,
    {
        let ((mut r, w), _) = self.open(&HostMsg::Exec(req.clone())).await?;
        let w = Arc::new(Mutex::new(w));

        let stdin_pump = async {
            let mut buf = vec![0u8; DATA_CHUNK];
            if let Some(mut src) = stdin {
                loop {
                    let n = match src.read(&mut buf).await {
                        Ok(n) => n,
                        Err(e) => {
                            tracing::warn!("reading stdin for the guest: {e}");
                            0
                        }
                    };
                    let mut g = w.lock().await;
                    if write_data(&mut *g, FrameKind::Stdin, &buf[..n])
                        .await
                        .is_err()
                        || n == 0
                    {
                        return;
                    }
                }
            } else {
                let mut g = w.lock().await;
                let _ = write_data(&mut *g, FrameKind::Stdin, &[]).await;
            }
        };
        let control_pump = async {
            let Some(mut rx) = control else { return };
            while let Some(c) = rx.recv().await {
                let msg = match c {
                    ExecControl::Resize(s) => HostMsg::Resize(s),
                    ExecControl::Signal(signal) => HostMsg::Signal { signal },
                };
                let mut g = w.lock().await;
                if write_msg(&mut *g, &msg).await.is_err() {
                    return;
                }
            }
        };
        let output = async {
            loop {
                let Some(f) = read_frame(&mut r).await? else {
                    return Err(AgentError::Closed("exec"));
                };
                match f.kind {
                    FrameKind::Stdout => write_sink(stdout, &f.payload).await?,
                    FrameKind::Stderr => write_sink(stderr, &f.payload).await?,
                    FrameKind::Control => match f.message::<GuestMsg>()? {
                        GuestMsg::Started { .. } => {}
                        GuestMsg::Exited(status) => return Ok(status),
                        other => return Err(unexpected(other)),
                    },
                    other => {
                        return Err(AgentError::Protocol(format!(
                            "a {other:?} frame during exec"
                        )));
                    }
                }
            }
        };
        tokio::select! {
            res = output => res,
            _ = async {
                tokio::join!(stdin_pump, control_pump);
                std::future::pending::<()>().await
            } => unreachable!("pending never completes"),
        }
    }

    /// Runs a command with `stdin` as its input and collects its output,
    /// at most [`CAPTURE_MAX`] bytes of each stream: more fails the call
    /// (a guest streaming GiBs must not grow the host's memory; use
    /// [`Self::exec`] with a sink for big output).
    pub async fn exec_capture(
        &self,
        req: &ExecRequest,
        stdin: &[u8],
    ) -> Result<ExecOutput, AgentError> {
        let mut stdout = Capped::new("stdout");
        let mut stderr = Capped::new("stderr");
        let status = self
            .exec(req, Some(stdin), &mut stdout, &mut stderr, None)
            .await?;
        Ok(ExecOutput {
            status,
            stdout: stdout.buf,
            stderr: stderr.buf,
        })
    }

    /// Streams the tar archive `tar` to the guest, which unpacks it under
    /// `target_dir` (absolute; created if missing). Entries that would
    /// escape it are refused and fail the upload.
    pub async fn upload_tar<R: AsyncRead + Unpin>(
        &self,
        mut tar: R,
        target_dir: &str,
    ) -> Result<UploadSummary, AgentError> {
        let req = HostMsg::Upload {
            target_dir: target_dir.to_string(),
        };
        let ((mut r, mut w), _) = self.open(&req).await?;
        let send = async {
            let mut buf = vec![0u8; DATA_CHUNK];
            loop {
                let n = tar.read(&mut buf).await?;
                write_data(&mut w, FrameKind::Data, &buf[..n]).await?;
                if n == 0 {
                    return Ok::<(), AgentError>(());
                }
            }
        };
        // The agent answers early if it rejects an entry: race the answer
        // against sending so a refusal is reported, not a broken pipe.
        let answer = async { read_msg(&mut r, "upload").await };
        tokio::pin!(answer);
        let reply = tokio::select! {
            res = send => match res {
                Ok(()) => answer.await?,
                Err(send_err) => match tokio::time::timeout(Duration::from_secs(5), answer).await {
                    Ok(Ok(m @ GuestMsg::Error(_))) => m,
                    _ => return Err(send_err),
                },
            },
            reply = &mut answer => reply?,
        };
        match reply {
            GuestMsg::UploadDone(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Fetches `path` (absolute; file or directory) from the guest as a tar
    /// stream whose single top-level entry is the path's last component.
    /// A missing path fails here; errors later in the stream surface as
    /// read errors.
    pub async fn download(&self, path: &str) -> Result<DownloadStream, AgentError> {
        let req = HostMsg::Download {
            path: path.to_string(),
        };
        let ((mut r, w), _) = self.open(&req).await?;
        let first = read_frame(&mut r)
            .await?
            .ok_or(AgentError::Closed("download"))?;
        if first.kind == FrameKind::Control {
            return Err(match first.message::<GuestMsg>()? {
                GuestMsg::Error(e) => AgentError::Guest(e),
                other => unexpected(other),
            });
        }
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let _keep_open = w;
            let res = download_pump(first, &mut r, &tx).await;
            if let Err(e) = res {
                let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
            }
        });
        Ok(DownloadStream {
            rx,
            cur: Vec::new(),
            pos: 0,
        })
    }
}

async fn download_pump(
    first: banger_proto::agent::Frame,
    r: &mut BoxRead,
    tx: &mpsc::Sender<io::Result<Vec<u8>>>,
) -> Result<(), AgentError> {
    let mut f = first;
    loop {
        if f.kind != FrameKind::Data {
            return match f.message::<GuestMsg>() {
                Ok(GuestMsg::Error(e)) => Err(AgentError::Guest(e)),
                Ok(other) => Err(unexpected(other)),
                Err(e) => Err(e.into()),
            };
        }
        if f.payload.is_empty() {
            break;
        }
        if tx.send(Ok(f.payload)).await.is_err() {
            // The caller dropped the stream.
            return Ok(());
        }
        f = read_frame(r).await?.ok_or(AgentError::Closed("download"))?;
    }
    match read_msg(r, "download").await? {
        GuestMsg::DownloadDone { .. } => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// The tar stream of a download. Reads fail if the guest reports an error
/// mid-stream; a clean EOF means the agent confirmed completion.
pub struct DownloadStream {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl AsyncRead for DownloadStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pos >= self.cur.len() {
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(chunk))) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
            }
        }
        let n = buf.remaining().min(self.cur.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.cur[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

async fn write_sink<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        // End of that stream: nothing to write; the sink is the caller's.
        return w.flush().await;
    }
    w.write_all(data).await?;
    w.flush().await
}

fn unexpected(m: GuestMsg) -> AgentError {
    match m {
        GuestMsg::Error(e) => AgentError::Guest(e),
        other => AgentError::Protocol(format!("{other:?}")),
    }
}

fn expect_pong(m: GuestMsg) -> Result<(), AgentError> {
    match m {
        GuestMsg::Pong => Ok(()),
        other => Err(unexpected(other)),
    }
}

async fn read_msg<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
) -> Result<GuestMsg, AgentError> {
    let f = read_frame(r).await?.ok_or(AgentError::Closed(what))?;
    Ok(f.message::<GuestMsg>()?)
}

/// Listens on `<uds_path>_<port>` for the guest agent's boot-time hello.
/// Bind it before starting the VMM so the announcement cannot be missed.
/// The socket file is removed on drop.
#[derive(Debug)]
pub struct ReadinessListener {
    path: PathBuf,
    listener: UnixListener,
}

impl ReadinessListener {
    /// Binds `<uds_path>_<port>`, replacing a stale socket file.
    pub fn bind(uds_path: &Path, port: u32) -> Result<Self, AgentError> {
        Self::bind_path(ready_socket_path(uds_path, port))
    }

    /// Binds exactly `path`.
    pub fn bind_path(path: PathBuf) -> Result<Self, AgentError> {
        let listen_err = |e| AgentError::ReadyListen {
            path: path.clone(),
            source: e,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(listen_err(e)),
        }
        let listener = UnixListener::bind(&path).map_err(listen_err)?;
        Ok(ReadinessListener { path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits at most `timeout` for the guest's hello. Connections that do not
    /// carry a valid hello are ignored (logged). `vm` names the VM in the
    /// timeout error, which points the user at `banger vm logs`.
    pub async fn wait(&self, timeout: Duration, vm: &str) -> Result<GuestHello, AgentError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let accepted = tokio::time::timeout_at(deadline, self.listener.accept()).await;
            let (mut s, _) = match accepted {
                Err(_) => {
                    return Err(AgentError::ReadyTimeout {
                        vm: vm.to_string(),
                        secs: timeout.as_secs(),
                    });
                }
                Ok(Err(e)) => {
                    tracing::warn!("accepting the readiness connection: {e}");
                    continue;
                }
                Ok(Ok(c)) => c,
            };
            let msg = tokio::time::timeout_at(deadline, read_msg(&mut s, "readiness")).await;
            match msg {
                Err(_) => {
                    return Err(AgentError::ReadyTimeout {
                        vm: vm.to_string(),
                        secs: timeout.as_secs(),
                    });
                }
                Ok(Ok(GuestMsg::Hello(h))) if h.protocol_version == PROTOCOL_VERSION => {
                    return Ok(h);
                }
                Ok(Ok(GuestMsg::Hello(h))) => {
                    return Err(AgentError::VersionMismatch {
                        host: PROTOCOL_VERSION,
                        guest: h.protocol_version,
                    });
                }
                Ok(Ok(other)) => tracing::warn!("readiness socket: ignoring {other:?}"),
                Ok(Err(e)) => tracing::warn!("readiness socket: ignoring a bad connection: {e}"),
            }
        }
    }
}

impl Drop for ReadinessListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
