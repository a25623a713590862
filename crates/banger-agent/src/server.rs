//! The agent's side: one session per connection, over any byte stream.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use banger_proto::agent::{
    AgentErrorKind, AgentErrorMsg, DATA_CHUNK, EXIT_COMMAND_NOT_FOUND, EXIT_NOT_EXECUTABLE,
    ExecRequest, ExitStatus, FrameKind, GuestHello, GuestMsg, HostMsg, PROTOCOL_VERSION, TtySize,
    version_mismatch_message,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::transfer::{Modes, UnpackError, default_name, pack_path, unpack_contained};
use crate::wire::{WireError, read_frame, write_data, write_msg};

/// How long the agent waits for the host's hello and request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Default `PATH` for exec'd commands (systemd gives the agent a minimal one).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What `shutdown` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Really power the machine off (the guest).
    PowerOff,
    /// Only acknowledge and log (tests, and running the agent on a host).
    DryRun,
}

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub shutdown: ShutdownMode,
    /// Whether `sync-time` really sets the clock (false: only report offset).
    pub set_clock: bool,
}

impl AgentConfig {
    /// Settings for tests and for running outside a guest: nothing
    /// machine-wide is changed.
    pub fn harmless() -> Self {
        AgentConfig {
            shutdown: ShutdownMode::DryRun,
            set_clock: false,
        }
    }

    /// Settings inside a real guest.
    pub fn guest() -> Self {
        AgentConfig {
            shutdown: ShutdownMode::PowerOff,
            set_clock: true,
        }
    }
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Arc<Mutex<Box<dyn AsyncWrite + Send + Unpin>>>;

/// Facts about this machine for `hello`.
pub fn guest_hello() -> GuestHello {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let uptime_ms = read("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0);
    GuestHello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: read("/proc/sys/kernel/osrelease"),
        hostname: read("/proc/sys/kernel/hostname"),
        uptime_ms,
    }
}

fn err(kind: AgentErrorKind, message: impl Into<String>) -> GuestMsg {
    GuestMsg::Error(AgentErrorMsg::new(kind, message))
}

async fn send(w: &Writer, msg: &GuestMsg) -> Result<(), WireError> {
    let mut g = w.lock().await;
    write_msg(&mut **g, msg).await
}

async fn send_data(w: &Writer, kind: FrameKind, data: &[u8]) -> Result<(), WireError> {
    let mut g = w.lock().await;
    write_data(&mut **g, kind, data).await
}

async fn read_msg_timeout(r: &mut Reader) -> Result<Option<HostMsg>, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, read_frame(r)).await {
        Err(_) => Err(format!("no request within {}s", REQUEST_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some(f))) => f.message::<HostMsg>().map(Some).map_err(|e| e.to_string()),
    }
}

/// Serves one connection: hello, one request, close. Errors are reported to
/// the peer when possible and logged.
pub async fn serve_connection<S>(stream: S, cfg: Arc<AgentConfig>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let mut r: Reader = Box::new(r);
    let w: Writer = Arc::new(Mutex::new(Box::new(w)));
    if let Err(e) = session(&mut r, &w, &cfg).await {
        tracing::warn!("agent session ended with an error: {e}");
    }
    {
        let mut g = w.lock().await;
        let _ = g.shutdown().await;
    }
    // Closing a socket with unread input resets the connection, and the peer
    // may then lose our last answer (often an error). Discard what the peer
    // still sends, for a bounded time, until it closes.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut buf = vec![0u8; DATA_CHUNK];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

async fn session(r: &mut Reader, w: &Writer, cfg: &AgentConfig) -> Result<(), WireError> {
    match read_msg_timeout(r).await {
        Ok(Some(HostMsg::Hello(h))) => {
            if h.protocol_version != PROTOCOL_VERSION {
                let m = version_mismatch_message(h.protocol_version, PROTOCOL_VERSION);
                return send(w, &err(AgentErrorKind::VersionMismatch, m)).await;
            }
            tracing::debug!("hello from {}", h.client);
            send(w, &GuestMsg::Hello(guest_hello())).await?;
        }
        Ok(Some(other)) => {
            let m = format!("expected hello as the first message, got {other:?}");
            return send(w, &err(AgentErrorKind::BadRequest, m)).await;
        }
        Ok(None) => return Ok(()),
        Err(e) => return send(w, &err(AgentErrorKind::BadRequest, e)).await,
    }
    let req = match read_msg_timeout(r).await {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(()),
        Err(e) => return send(w, &err(AgentErrorKind::BadRequest, e)).await,
    };
    match req {
        HostMsg::Ping => send(w, &GuestMsg::Pong).await,
        HostMsg::Exec(req) => exec(req, r, w).await,
        HostMsg::Upload { target_dir } => upload(PathBuf::from(target_dir), r, w).await,
        HostMsg::Download { path } => download(PathBuf::from(path), w).await,
        HostMsg::Shutdown => {
            send(w, &GuestMsg::ShutdownStarted).await?;
            power_off(cfg.shutdown).await;
            Ok(())
        }
        HostMsg::SyncTime { unix_secs, nanos } => {
            send(w, &sync_time(unix_secs, nanos, cfg.set_clock)).await
        }
        HostMsg::Readiness => {
            let report = tokio::task::spawn_blocking(crate::readiness::collect)
                .await
                .unwrap_or_default();
            send(w, &GuestMsg::Readiness(report)).await
        }
        other @ (HostMsg::Hello(_) | HostMsg::Resize(_) | HostMsg::Signal { .. }) => {
            let m = format!(
                "{other:?} is not a request; expected ping, exec, upload, download, shutdown, sync_time or readiness"
            );
            send(w, &err(AgentErrorKind::BadRequest, m)).await
        }
    }
}

fn sync_time(unix_secs: i64, nanos: u32, set_clock: bool) -> GuestMsg {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let host_ms = unix_secs.saturating_mul(1000) + i64::from(nanos / 1_000_000);
    let offset_ms = now - host_ms;
    if set_clock {
        let ts = nix::sys::time::TimeSpec::new(unix_secs, i64::from(nanos.min(999_999_999)));
        if let Err(e) = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
            return err(
                AgentErrorKind::Unsupported,
                format!("cannot set the guest clock: {e} (the agent must run as root)"),
            );
        }
    }
    GuestMsg::TimeSynced { offset_ms }
}

/// How the guest will be powered off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerOffPlan {
    /// systemd is PID 1: let it stop services and unmount cleanly.
    Systemctl,
    /// No init we know: sync and ask the kernel directly.
    Reboot,
}

/// Chooses the power-off method from PID 1's `comm`.
pub fn power_off_plan(pid1_comm: &str) -> PowerOffPlan {
    if pid1_comm.trim() == "systemd" {
        PowerOffPlan::Systemctl
    } else {
        PowerOffPlan::Reboot
    }
}

async fn power_off(mode: ShutdownMode) {
    if mode == ShutdownMode::DryRun {
        tracing::info!("shutdown requested (dry run: not powering off)");
        return;
    }
    let comm = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if power_off_plan(&comm) == PowerOffPlan::Systemctl {
        tracing::info!("shutdown requested: systemctl poweroff");
        match tokio::process::Command::new("systemctl")
            .arg("poweroff")
            .status()
            .await
        {
            Ok(s) if s.success() => return,
            Ok(s) => tracing::warn!("systemctl poweroff failed ({s}); powering off directly"),
            Err(e) => tracing::warn!("cannot run systemctl ({e}); powering off directly"),
        }
    }
    tracing::info!("shutdown requested: sync + reboot(RB_POWER_OFF)");
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    tracing::error!("reboot(RB_POWER_OFF) failed: {e}");
}

// ---------------------------------------------------------------- exec

/// Who an exec runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// Resolves an OCI `User` (`name`, `uid`, `name:group`, `uid:gid`) against
/// the guest's passwd and group files under `etc`. A numeric uid without a
/// passwd entry is allowed (gid 0 unless given), as container runtimes do.
pub(crate) fn resolve_user(spec: &str, etc: &Path) -> Result<Identity, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = std::fs::read_to_string(etc.join("passwd")).unwrap_or_default();
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && (f[0] == user || f[2] == user))
            .then(|| (f[2].to_string(), f[3].to_string(), f[5].to_string()))
    });
    let (uid, mut gid, home) = match (entry, user.parse::<u32>()) {
        (Some((u, g, h)), _) => (
            u.parse::<u32>()
                .map_err(|_| format!("bad uid for user {user:?} in /etc/passwd"))?,
            g.parse::<u32>()
                .map_err(|_| format!("bad gid for user {user:?} in /etc/passwd"))?,
            h,
        ),
        (None, Ok(uid)) => (uid, 0, "/".to_string()),
        (None, Err(_)) => {
            return Err(format!(
                "user {user:?} does not exist in the guest's /etc/passwd"
            ));
        }
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let groups = std::fs::read_to_string(etc.join("group")).unwrap_or_default();
                groups
                    .lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.len() >= 3 && f[0] == g)
                            .then(|| f[2].parse::<u32>().ok())
                            .flatten()
                    })
                    .ok_or_else(|| {
                        format!("group {g:?} does not exist in the guest's /etc/group")
                    })?
            }
        };
    }
    Ok(Identity { uid, gid, home })
}

fn exec_env(req: &ExecRequest) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v));
    };
    set(
        "PATH",
        std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string()),
    );
    set(
        "HOME",
        std::env::var("HOME").unwrap_or_else(|_| "/root".to_string()),
    );
    for k in ["LANG", "LC_ALL", "USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(k) {
            set(k, v);
        }
    }
    if req.tty.is_some() {
        set("TERM", "xterm-256color".to_string());
    }
    for (k, v) in &req.env {
        set(k, v.clone());
    }
    env
}

fn winsize(s: TtySize) -> libc::winsize {
    libc::winsize {
        ws_row: s.rows,
        ws_col: s.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn set_winsize(fd: &OwnedFd, s: TtySize) {
    let ws = winsize(s);
    // SAFETY: TIOCSWINSZ reads a winsize struct we own from a valid fd.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        tracing::warn!("TIOCSWINSZ failed: {}", io::Error::last_os_error());
    }
}

async fn pump_output<R: AsyncRead + Unpin>(mut src: R, kind: FrameKind, w: Writer) {
    let mut buf = vec![0u8; DATA_CHUNK];
    loop {
        match src.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if send_data(&w, kind, &buf[..n]).await.is_err() {
                    return;
                }
            }
            // A pty master reports EIO once every slave fd is closed: EOF.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                tracing::warn!("reading process output: {e}");
                break;
            }
        }
    }
    let _ = send_data(&w, kind, &[]).await;
}

/// Spawn failure as a shell would report it.
fn spawn_failure(argv0: &str, e: &io::Error) -> (i32, String) {
    match e.kind() {
        io::ErrorKind::NotFound => (
            EXIT_COMMAND_NOT_FOUND,
            format!("banger-vsock-agent: {argv0}: command not found\n"),
        ),
        io::ErrorKind::PermissionDenied => (
            EXIT_NOT_EXECUTABLE,
            format!("banger-vsock-agent: {argv0}: permission denied\n"),
        ),
        _ => (
            EXIT_NOT_EXECUTABLE,
            format!("banger-vsock-agent: {argv0}: cannot execute: {e}\n"),
        ),
    }
}

async fn exec(req: ExecRequest, r: &mut Reader, w: &Writer) -> Result<(), WireError> {
    let Some(argv0) = req.argv.first().cloned() else {
        return send(
            w,
            &err(AgentErrorKind::BadRequest, "exec with an empty argv"),
        )
        .await;
    };
    if let Some(cwd) = &req.cwd
        && !Path::new(cwd).is_dir()
    {
        let m = format!("working directory {cwd} does not exist in the guest");
        return send(w, &err(AgentErrorKind::NotFound, m)).await;
    }
    let identity = match req.user.as_deref().filter(|u| !u.is_empty()) {
        None => None,
        Some(spec) => match resolve_user(spec, Path::new("/etc")) {
            Ok(id) => Some(id),
            Err(m) => return send(w, &err(AgentErrorKind::NotFound, m)).await,
        },
    };
    let mut cmd = tokio::process::Command::new(&argv0);
    let mut env = exec_env(&req);
    if let Some(id) = &identity {
        // The image's user gets its own HOME unless the request set one.
        if !req.env.iter().any(|(k, _)| k == "HOME") {
            env.retain(|(k, _)| k != "HOME");
            env.push(("HOME".into(), id.home.clone()));
        }
        // std drops supplementary groups (setgroups) when a uid is set.
        cmd.uid(id.uid).gid(id.gid);
    }
    cmd.args(&req.argv[1..])
        .env_clear()
        .envs(env)
        .current_dir(req.cwd.as_deref().unwrap_or("/"))
        .kill_on_drop(true);

    // In tty mode the master stays here; the slave becomes the child's
    // controlling terminal.
    let mut master: Option<OwnedFd> = None;
    match req.tty {
        Some(size) => {
            let ws = winsize(size);
            let pty = match nix::pty::openpty(Some(&ws), None) {
                Ok(p) => p,
                Err(e) => {
                    let m = format!("cannot allocate a pty: {e}");
                    return send(w, &err(AgentErrorKind::Io, m)).await;
                }
            };
            let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
            let (i, o, e) = match (dup(&pty.slave), dup(&pty.slave), dup(&pty.slave)) {
                (Ok(i), Ok(o), Ok(e)) => (i, o, e),
                _ => {
                    let m = "cannot duplicate the pty slave";
                    return send(w, &err(AgentErrorKind::Io, m)).await;
                }
            };
            cmd.stdin(i).stdout(o).stderr(e);
            // SAFETY: only async-signal-safe calls (setsid, ioctl) between
            // fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            master = Some(pty.master);
        }
        None => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // Own process group: signals for the agent don't reach it,
                // and a vanished host kills the whole group.
                .process_group(0);
        }
    }

    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let (code, text) = spawn_failure(&argv0, &e);
            let out_kind = if req.tty.is_some() {
                FrameKind::Stdout
            } else {
                FrameKind::Stderr
            };
            send_data(w, out_kind, text.as_bytes()).await?;
            send_data(w, FrameKind::Stdout, &[]).await?;
            send_data(w, FrameKind::Stderr, &[]).await?;
            return send(w, &GuestMsg::Exited(ExitStatus::Exited { code })).await;
        }
    };
    // Drop our copies of the slave so the master sees EOF when the child exits.
    drop(cmd);
    let pid = child.id().unwrap_or(0);
    send(w, &GuestMsg::Started { pid }).await?;

    let mut pumps = Vec::new();
    let mut stdin_sink: Option<Box<dyn AsyncWrite + Send + Unpin>> = None;
    let mut resize_fd: Option<OwnedFd> = None;
    if let Some(m) = master {
        let (rd, wr, rs) = match (m.try_clone(), m.try_clone()) {
            (Ok(a), Ok(b)) => (a, b, m),
            _ => {
                let _ = child.start_kill();
                return send(
                    w,
                    &err(AgentErrorKind::Io, "cannot duplicate the pty master"),
                )
                .await;
            }
        };
        let rd = tokio::fs::File::from_std(std::fs::File::from(rd));
        stdin_sink = Some(Box::new(tokio::fs::File::from_std(std::fs::File::from(wr))));
        resize_fd = Some(rs);
        pumps.push(tokio::spawn(pump_output(rd, FrameKind::Stdout, w.clone())));
        send_data(w, FrameKind::Stderr, &[]).await?;
    } else {
        if let Some(o) = child.stdout.take() {
            pumps.push(tokio::spawn(pump_output(o, FrameKind::Stdout, w.clone())));
        }
        if let Some(e) = child.stderr.take() {
            pumps.push(tokio::spawn(pump_output(e, FrameKind::Stderr, w.clone())));
        }
        if let Some(i) = child.stdin.take() {
            stdin_sink = Some(Box::new(i));
        }
    }
    let is_tty = req.tty.is_some();

    // Input: stdin bytes and control messages from the host, until the
    // process is done. Writing stdin blocks when the process doesn't read:
    // that is the backpressure towards the host.
    let input = async {
        loop {
            let f = match read_frame(r).await {
                Ok(Some(f)) => f,
                Ok(None) | Err(_) => {
                    // The host is gone: nobody will read the output.
                    kill_process(pid, true, libc::SIGKILL);
                    return;
                }
            };
            match f.kind {
                FrameKind::Stdin if f.payload.is_empty() => {
                    // On a pty there is no EOF to give; keep it open.
                    if !is_tty {
                        stdin_sink = None;
                    }
                }
                FrameKind::Stdin => {
                    if let Some(s) = stdin_sink.as_mut()
                        && (s.write_all(&f.payload).await.is_err() || s.flush().await.is_err())
                    {
                        // The process closed its stdin; discard the rest.
                        stdin_sink = None;
                    }
                }
                FrameKind::Control => match f.message::<HostMsg>() {
                    Ok(HostMsg::Resize(size)) => {
                        if let Some(fd) = &resize_fd {
                            set_winsize(fd, size);
                        }
                    }
                    Ok(HostMsg::Signal { signal }) => kill_process(pid, true, signal),
                    Ok(other) => tracing::warn!("ignoring {other:?} during exec"),
                    Err(e) => tracing::warn!("ignoring bad control frame during exec: {e}"),
                },
                other => tracing::warn!("ignoring {other:?} frame during exec"),
            }
        }
    };
    let finish = async {
        let status = child.wait().await;
        for p in pumps {
            let _ = p.await;
        }
        status
    };
    let status = tokio::select! {
        s = finish => s,
        _ = async { input.await; std::future::pending::<()>().await } => unreachable!("pending never completes"),
    };
    let status = match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            match (s.code(), s.signal()) {
                (Some(code), _) => ExitStatus::Exited { code },
                (None, Some(signal)) => ExitStatus::Signaled { signal },
                (None, None) => ExitStatus::Exited { code: -1 },
            }
        }
        Err(e) => {
            let m = format!("waiting for the process failed: {e}");
            return send(w, &err(AgentErrorKind::Io, m)).await;
        }
    };
    send(w, &GuestMsg::Exited(status)).await
}

/// Signals the process (`group`: its whole process group, like a terminal's
/// Ctrl-C, so `sh -c` wrappers don't leave children holding the output open;
/// the child leads its own group in both modes: `process_group(0)` or
/// `setsid`).
fn kill_process(pid: u32, group: bool, signal: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    if pid <= 0 {
        return;
    }
    let target = if group { -pid } else { pid };
    // SAFETY: kill(2) on a pid we spawned; no memory is involved.
    unsafe { libc::kill(target, signal) };
}

// -------------------------------------------------------- upload/download

/// A blocking `Read` over chunks sent from the async side.
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.blocking_recv() {
                Some(c) => {
                    self.cur = c;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

async fn upload(target: PathBuf, r: &mut Reader, w: &Writer) -> Result<(), WireError> {
    if !target.is_absolute() {
        let m = format!(
            "upload target {} must be an absolute path",
            target.display()
        );
        return send(w, &err(AgentErrorKind::BadRequest, m)).await;
    }
    // A small bounded queue: the host can be at most a few chunks ahead of
    // the disk.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let t = target.clone();
    let mut worker = tokio::task::spawn_blocking(move || {
        let reader = ChunkReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        };
        // Unpacking may stop before the end of the stream (tar's end
        // blocks, or an error); the reader is dropped on return, so further
        // sends fail fast instead of blocking.
        unpack_contained(reader, &t, Modes::Preserve)
    });
    let mut tx = Some(tx);
    // Frames are read one after another (never raced against anything, so
    // no frame is ever half-read); an unpack failure is noticed between
    // frames and reported at once.
    let mut finished = None;
    loop {
        if finished.is_none() && worker.is_finished() {
            tx = None;
            let r = (&mut worker).await;
            let failed = !matches!(r, Ok(Ok(_)));
            finished = Some(r);
            if failed {
                break;
            }
        }
        let f = match read_frame(r).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                tracing::warn!("host closed the connection during upload");
                return Ok(());
            }
            Err(e) => return send(w, &err(AgentErrorKind::BadRequest, e.to_string())).await,
        };
        if f.kind != FrameKind::Data {
            let m = format!("expected tar data during upload, got a {:?} frame", f.kind);
            return send(w, &err(AgentErrorKind::BadRequest, m)).await;
        }
        if f.payload.is_empty() {
            break;
        }
        if let Some(s) = &tx
            && s.send(f.payload).await.is_err()
        {
            tx = None;
        }
    }
    drop(tx);
    let res = match finished {
        Some(r) => r,
        None => worker.await,
    };
    match res {
        Ok(Ok(summary)) => send(w, &GuestMsg::UploadDone(summary)).await,
        Ok(Err(e)) => {
            let kind = match e {
                UnpackError::Rejected { .. } => AgentErrorKind::PathRejected,
                UnpackError::Tar(_) => AgentErrorKind::BadRequest,
                _ => AgentErrorKind::Io,
            };
            send(w, &err(kind, e.to_string())).await?;
            drain_data(r).await;
            Ok(())
        }
        Err(e) => {
            send(
                w,
                &err(AgentErrorKind::Io, format!("unpack task failed: {e}")),
            )
            .await
        }
    }
}

/// After a failed upload, reads and discards the rest of the stream for a
/// bounded time so the host sees our error instead of a reset connection.
async fn drain_data(r: &mut Reader) {
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(f)) = read_frame(r).await {
            if f.kind == FrameKind::Data && f.payload.is_empty() {
                break;
            }
        }
    })
    .await;
}

/// A blocking `Write` that ships chunks to the async side.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn ship(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(DATA_CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "host stopped reading"))
    }
}

impl io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(DATA_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= DATA_CHUNK {
            self.ship()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.ship()
    }
}

async fn download(path: PathBuf, w: &Writer) -> Result<(), WireError> {
    if !path.is_absolute() {
        let m = format!("download path {} must be absolute", path.display());
        return send(w, &err(AgentErrorKind::BadRequest, m)).await;
    }
    if let Err(e) = std::fs::symlink_metadata(&path) {
        let kind = if e.kind() == io::ErrorKind::NotFound {
            AgentErrorKind::NotFound
        } else {
            AgentErrorKind::Io
        };
        return send(
            w,
            &err(kind, format!("cannot read {}: {e}", path.display())),
        )
        .await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let p = path.clone();
    let worker = tokio::task::spawn_blocking(move || {
        let out = ChunkWriter {
            tx,
            buf: Vec::with_capacity(DATA_CHUNK),
        };
        let mut out = pack_path(&p, &default_name(&p), out)?;
        io::Write::flush(&mut out)
    });
    let mut bytes = 0u64;
    while let Some(chunk) = rx.recv().await {
        bytes += chunk.len() as u64;
        send_data(w, FrameKind::Data, &chunk).await?;
    }
    match worker.await {
        Ok(Ok(())) => {
            send_data(w, FrameKind::Data, &[]).await?;
            send(w, &GuestMsg::DownloadDone { bytes }).await
        }
        Ok(Err(e)) => {
            let m = format!("cannot pack {}: {e}", path.display());
            send(w, &err(AgentErrorKind::Io, m)).await
        }
        Err(e) => {
            send(
                w,
                &err(AgentErrorKind::Io, format!("pack task failed: {e}")),
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_off_plan_follows_pid1() {
        assert_eq!(power_off_plan("systemd\n"), PowerOffPlan::Systemctl);
        assert_eq!(power_off_plan("init\n"), PowerOffPlan::Reboot);
        assert_eq!(power_off_plan(""), PowerOffPlan::Reboot);
    }

    #[test]
    fn users_resolve_like_a_container_runtime() {
        let etc = tempfile::tempdir().expect("tmp");
        std::fs::write(
            etc.path().join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(etc.path().join("group"), "root:x:0:\nstaff:x:50:\n").expect("group");
        let r = |s: &str| resolve_user(s, etc.path());
        let id = |uid, gid, home: &str| Identity {
            uid,
            gid,
            home: home.into(),
        };
        assert_eq!(r("app"), Ok(id(1000, 1001, "/home/app")));
        assert_eq!(r("1000"), Ok(id(1000, 1001, "/home/app")));
        assert_eq!(r("app:staff"), Ok(id(1000, 50, "/home/app")));
        assert_eq!(r("4242:7"), Ok(id(4242, 7, "/")));
        assert!(
            r("ghost")
                .expect_err("no such user")
                .contains("does not exist")
        );
        assert!(
            r("app:ghosts")
                .expect_err("no such group")
                .contains("group")
        );
    }

    #[test]
    fn exec_env_overrides() {
        let mut req = ExecRequest::new(["true"]);
        req.env.push(("PATH".into(), "/x".into()));
        req.tty = Some(TtySize { rows: 1, cols: 1 });
        let env = exec_env(&req);
        assert!(env.contains(&("PATH".into(), "/x".into())));
        assert!(env.iter().any(|(k, _)| k == "TERM"));
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }
}
