//! `banger system run`: both daemons as children of the current terminal,
//! for hosts without systemd (containers, CI, these build machines).
//!
//! It mirrors the units as far as a plain process can: the helper runs as
//! root with the owner's primary group, the daemon runs as the owner, both
//! with umask 077, and both get the same socket paths the units use.

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, chown};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use banger_core::paths::{ENV_ROOT_SOCKET, Paths};
use serde::Serialize;

use crate::error::{Result, SystemError};
use crate::layout::{HostFacts, Owner};
use crate::sockets::{self, WaitFailure};

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// State, cache and runtime dirs and both sockets.
    pub paths: Paths,
    /// Where `bangerd` and `bangerd-root` are; `None` = next to the running
    /// executable.
    pub bin_dir: Option<PathBuf>,
    /// As root: the user `bangerd` runs as (`--owner`). `None` = the user
    /// behind sudo (`$SUDO_UID`), else root itself. Ignored when not root.
    pub owner: Option<String>,
    pub ready_timeout: Duration,
    /// After forwarding the stop signal, how long to wait before SIGKILL.
    pub stop_timeout: Duration,
}

impl RunOptions {
    pub fn new(paths: Paths) -> Self {
        RunOptions {
            paths,
            bin_dir: None,
            owner: None,
            ready_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// Set by a signal handler (or a test) to the signal number that should be
/// forwarded to the children; 0 while running.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicUsize>);

impl StopFlag {
    pub fn new() -> Self {
        Self::default()
    }

    /// Route SIGINT and SIGTERM into this flag instead of killing us, so we
    /// can forward them and wait for the children.
    pub fn register_signals(&self) -> Result<()> {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            signal_hook::flag::register_usize(sig, Arc::clone(&self.0), sig as usize)
                .map_err(SystemError::Signals)?;
        }
        Ok(())
    }

    pub fn request(&self, signal: i32) {
        self.0.store(signal.max(1) as usize, Ordering::SeqCst);
    }

    pub fn requested(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }
}

/// How one child ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildOutcome {
    pub name: String,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// It ignored the forwarded signal for `stop_timeout` and was killed.
    pub killed: bool,
}

impl ChildOutcome {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum StopReason {
    /// We received this signal and forwarded it.
    Signal { signal: i32 },
    /// This child exited on its own; the other one was stopped.
    ChildExited { name: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub reason: StopReason,
    pub daemon: ChildOutcome,
    /// `None` when the helper was not started (not root).
    pub helper: Option<ChildOutcome>,
}

impl RunOutcome {
    /// Stopped by a signal and every child exited cleanly.
    pub fn clean(&self) -> bool {
        let StopReason::Signal { signal } = self.reason else {
            return false;
        };
        // Exiting 0, or dying of the very signal we forwarded (a process
        // that keeps the default SIGTERM action), is a normal stop.
        let ok = |c: &ChildOutcome| !c.killed && (c.success() || c.signal == Some(signal));
        ok(&self.daemon) && self.helper.as_ref().is_none_or(ok)
    }
}

struct Proc {
    name: &'static str,
    child: Child,
    done: Option<ChildOutcome>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn poll(&mut self) -> Option<&ChildOutcome> {
        if self.done.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.done = Some(ChildOutcome {
                name: self.name.to_owned(),
                pid: self.child.id(),
                exit_code: status.code(),
                signal: status.signal(),
                killed: false,
            });
        }
        self.done.as_ref()
    }

    fn signal(&mut self, sig: i32) {
        if self.poll().is_none() {
            // Our own child, not yet reaped: the pid cannot have been reused.
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
                let _ = nix::sys::signal::kill(pid, sig);
            }
        }
    }

    fn kill(&mut self) -> ChildOutcome {
        if self.poll().is_none() {
            let _ = self.child.kill();
            let status = self.child.wait().ok();
            self.done = Some(ChildOutcome {
                name: self.name.to_owned(),
                pid: self.child.id(),
                exit_code: status.and_then(|s| s.code()),
                signal: status.and_then(|s| s.signal()),
                killed: true,
            });
        }
        self.done.clone().unwrap_or_else(|| ChildOutcome {
            name: self.name.to_owned(),
            pid: self.child.id(),
            exit_code: None,
            signal: None,
            killed: true,
        })
    }
}

/// Both daemons, started and answering.
pub struct Foreground {
    helper: Option<Proc>,
    daemon: Proc,
    notes: Vec<String>,
    stop: StopFlag,
    stop_timeout: Duration,
}

impl std::fmt::Debug for Foreground {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Foreground")
            .field("daemon_pid", &self.daemon_pid())
            .field("helper_pid", &self.helper_pid())
            .field("notes", &self.notes)
            .finish()
    }
}

/// Create `dir` with `mode` (and owner) if it is missing. An existing
/// directory is left exactly as it is: a socket path such as /tmp/x.sock
/// must never lead to re-moding or re-owning /tmp. As root for another
/// owner (`who`), no link the owner could plant is followed and no parent
/// the owner can write is used ([`crate::owned_dir`]).
fn prepare_dir(
    dir: &Path,
    mode: u32,
    owner: Option<(u32, u32)>,
    who: Option<crate::owned_dir::Untrusted>,
) -> Result<()> {
    if let Some(who) = who {
        return crate::owned_dir::create_owned_dir(dir, mode, owner, who).map(|_| ());
    }
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| SystemError::io("create directory", dir, e))?;
    if let Some((uid, gid)) = owner {
        chown(dir, Some(uid), Some(gid)).map_err(|e| SystemError::io("chown", dir, e))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| SystemError::io("set the mode of", dir, e))
}

/// The helper's bounding set, as in the unit's CapabilityBoundingSet:
/// CAP_NET_ADMIN for its work, plus what it needs for the moment between
/// start and serving (hand the socket to the owner: CAP_CHOWN, then chmod
/// the now owner-owned file: CAP_FOWNER; shrink its own bounding set:
/// CAP_SETPCAP). The helper drops all but CAP_NET_ADMIN before it accepts a
/// connection.
const HELPER_CAPS: [libc::c_ulong; 4] = [
    12, // CAP_NET_ADMIN
    0,  // CAP_CHOWN
    3,  // CAP_FOWNER
    8,  // CAP_SETPCAP
];

/// Highest capability number the running kernel knows.
fn cap_last_cap() -> libc::c_ulong {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// `bound_caps_to`: for the helper, shrink the bounding set to these
/// capabilities before exec, so a root child can never hold more (what the
/// unit's CapabilityBoundingSet gives).
fn base_command(program: &Path, bound_caps_to: Option<&'static [libc::c_ulong]>) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    // Own process group: a terminal's Ctrl-C reaches only us, and we decide
    // how the children stop (forward, wait, then kill).
    cmd.process_group(0);
    let last_cap = cap_last_cap();
    // SAFETY: umask and prctl are async-signal-safe, allocate nothing and
    // touch only the child. std runs this after setgid/setuid.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(0o077);
            // If the supervisor dies without stopping us, stop anyway rather
            // than linger detached from any terminal.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(keep) = bound_caps_to {
                for cap in 0..=last_cap {
                    if !keep.contains(&cap) && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            // NoNewPrivileges=yes, as in both units.
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn spawn(name: &'static str, mut cmd: Command, program: &Path) -> Result<Proc> {
    let child = cmd.spawn().map_err(|source| SystemError::Spawn {
        program: program.to_path_buf(),
        source,
    })?;
    tracing::info!(pid = child.id(), "started {name}");
    Ok(Proc {
        name,
        child,
        done: None,
    })
}

impl Foreground {
    /// Start the helper (as root) and the daemon, and wait until both sockets
    /// answer. A stop request or a child dying during startup stops the rest.
    pub fn start(opts: &RunOptions, facts: &HostFacts, stop: StopFlag) -> Result<Foreground> {
        let bin_dir = match &opts.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()
                .map_err(SystemError::CurrentExe)?
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| {
                    SystemError::CurrentExe(std::io::Error::other(
                        "executable has no parent directory",
                    ))
                })?,
        };
        let daemon_bin = bin_dir.join("bangerd");
        let helper_bin = bin_dir.join("bangerd-root");
        if !daemon_bin.is_file() {
            return Err(SystemError::MissingBinary {
                name: "bangerd",
                path: daemon_bin,
            });
        }
        let p = &opts.paths;
        for (what, sock) in [("bangerd", &p.socket), ("bangerd-root", &p.root_socket)] {
            if sockets::answers(sock) {
                return Err(SystemError::AlreadyRunning {
                    what,
                    path: sock.clone(),
                });
            }
        }

        let mut notes = Vec::new();
        let owner = if facts.is_root() {
            match &opts.owner {
                Some(name) => Owner::lookup_any(name)?,
                None => match std::env::var("SUDO_UID").ok().and_then(|u| u.parse().ok()) {
                    Some(uid) => Owner::from_uid(uid)?,
                    None => Owner::from_uid(0)?,
                },
            }
        } else {
            Owner::from_uid(facts.euid)?
        };
        if facts.is_root() && owner.uid == 0 {
            notes.push(
                "bangerd runs as root because no unprivileged owner was given; pass \
                 --owner USER to run it as that user, as the systemd install does"
                    .to_owned(),
            );
        }
        // As root we hand the daemon's directories to the owner; otherwise
        // they are already ours.
        let chown_to = (facts.is_root() && owner.uid != 0).then_some((owner.uid, owner.gid));
        let who = chown_to.map(|(uid, gid)| crate::owned_dir::Untrusted { uid, gid });
        for dir in [&p.state_dir, &p.cache_dir, &p.runtime_dir] {
            prepare_dir(dir, 0o700, chown_to, who)?;
        }
        if let Some(sock_dir) = p.socket.parent() {
            prepare_dir(sock_dir, 0o700, chown_to, who)?;
        }

        let helper = if facts.is_root() {
            if !helper_bin.is_file() {
                return Err(SystemError::MissingBinary {
                    name: "bangerd-root",
                    path: helper_bin,
                });
            }
            if let Some(dir) = p.root_socket.parent() {
                // root:<owner group> 0750, as RuntimeDirectory gives the unit.
                prepare_dir(dir, 0o750, Some((0, owner.gid)), who)?;
            }
            let mut cmd = base_command(&helper_bin, Some(&HELPER_CAPS));
            cmd.arg("--socket")
                .arg(&p.root_socket)
                .arg("--owner-uid")
                .arg(owner.uid.to_string())
                .args(crate::helper_net::helper_net_args(
                    &crate::helper_net::owner_config(&owner)?,
                ))
                // The unit's Group=: /run/banger-root is searchable by the
                // owner's group only.
                .gid(owner.gid);
            let mut h = spawn("bangerd-root", cmd, &helper_bin)?;
            // The daemon talks to the helper as it starts: the helper must be
            // answering first.
            let ready = wait_ready(
                &mut [&mut h],
                &p.root_socket,
                "bangerd-root",
                opts.ready_timeout,
                &stop,
            );
            if let Err(e) = ready {
                let sig = stop.requested().unwrap_or(libc::SIGTERM);
                stop_one(&mut h, sig, Instant::now() + opts.stop_timeout);
                return Err(e);
            }
            Some(h)
        } else {
            notes.push(format!(
                "not running as root: starting only bangerd. VM networking (bridge, taps, \
                 NAT, .vm DNS wiring) needs the root helper; run `sudo banger system run \
                 --owner {}` to start both",
                owner.name
            ));
            None
        };
        for n in &notes {
            tracing::warn!("{n}");
        }

        let mut cmd = base_command(&daemon_bin, None);
        cmd.arg("--socket")
            .arg(&p.socket)
            .arg("--state-dir")
            .arg(&p.state_dir)
            .arg("--cache-dir")
            .arg(&p.cache_dir)
            .arg("--runtime-dir")
            .arg(&p.runtime_dir)
            .env(ENV_ROOT_SOCKET, &p.root_socket);
        if chown_to.is_some() {
            // What systemd's User= sets up; std drops supplementary groups.
            cmd.uid(owner.uid)
                .gid(owner.gid)
                .env("HOME", &owner.home)
                .env("USER", &owner.name)
                .env("LOGNAME", &owner.name);
        }
        let daemon = match spawn("bangerd", cmd, &daemon_bin) {
            Ok(d) => d,
            Err(e) => {
                if let Some(mut h) = helper {
                    stop_one(&mut h, libc::SIGTERM, Instant::now() + opts.stop_timeout);
                }
                return Err(e);
            }
        };

        let mut fg = Foreground {
            helper,
            daemon,
            notes,
            stop,
            stop_timeout: opts.stop_timeout,
        };
        let Foreground {
            helper,
            daemon,
            stop,
            ..
        } = &mut fg;
        let mut procs: Vec<&mut Proc> = helper.iter_mut().collect();
        procs.push(daemon);
        match wait_ready(&mut procs, &p.socket, "bangerd", opts.ready_timeout, stop) {
            Ok(()) => Ok(fg),
            Err(e) => {
                let sig = fg.stop.requested().unwrap_or(libc::SIGTERM);
                fg.shutdown(sig);
                Err(e)
            }
        }
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }
    pub fn daemon_pid(&self) -> u32 {
        self.daemon.pid()
    }
    pub fn helper_pid(&self) -> Option<u32> {
        self.helper.as_ref().map(Proc::pid)
    }

    /// Block until a stop is requested (forwarded to both children) or a
    /// child exits on its own (the other is then sent SIGTERM).
    pub fn wait(mut self) -> RunOutcome {
        let reason = loop {
            if let Some(signal) = self.stop.requested() {
                break StopReason::Signal { signal };
            }
            let exited = self
                .helper
                .iter_mut()
                .chain([&mut self.daemon])
                .find_map(|p| p.poll().map(|o| o.name.clone()));
            if let Some(name) = exited {
                break StopReason::ChildExited { name };
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let sig = match reason {
            StopReason::Signal { signal } => signal,
            StopReason::ChildExited { .. } => libc::SIGTERM,
        };
        let (daemon, helper) = self.shutdown(sig);
        RunOutcome {
            reason,
            daemon,
            helper,
        }
    }

    /// Send `sig` to both, wait up to the stop timeout, then SIGKILL. The
    /// daemon goes first so it can still ask the helper to tear down.
    fn shutdown(&mut self, sig: i32) -> (ChildOutcome, Option<ChildOutcome>) {
        let deadline = Instant::now() + self.stop_timeout;
        let daemon = stop_one(&mut self.daemon, sig, deadline);
        let helper = self.helper.as_mut().map(|h| {
            stop_one(
                h,
                sig,
                deadline.max(Instant::now() + Duration::from_secs(1)),
            )
        });
        (daemon, helper)
    }
}

/// Wait until `socket` answers while every process in `procs` stays alive
/// and no stop is requested.
fn wait_ready(
    procs: &mut [&mut Proc],
    socket: &Path,
    what: &'static str,
    timeout: Duration,
    stop: &StopFlag,
) -> Result<()> {
    let mut died: Option<(&'static str, String)> = None;
    let waited = sockets::wait_all(&[socket], timeout, || {
        if let Some(sig) = stop.requested() {
            return Err(format!("interrupted by signal {sig}"));
        }
        for proc in procs.iter_mut() {
            let name = proc.name;
            if let Some(o) = proc.poll() {
                died = Some((name, describe(o.exit_code, o.signal)));
                return Err(name.to_owned());
            }
        }
        Ok(())
    });
    match waited {
        Ok(()) => Ok(()),
        Err(WaitFailure::Timeout(_)) => Err(SystemError::SocketTimeout {
            what,
            path: socket.to_path_buf(),
            waited: timeout,
            hint: "its output is above".into(),
        }),
        Err(WaitFailure::Died(why)) => Err(match died {
            Some((name, status)) => SystemError::ExitedEarly { name, status },
            None => SystemError::Interrupted(why),
        }),
    }
}

fn stop_one(p: &mut Proc, sig: i32, deadline: Instant) -> ChildOutcome {
    p.signal(sig);
    while Instant::now() < deadline {
        if let Some(o) = p.poll() {
            return o.clone();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(pid = p.pid(), "{} ignored signal {sig}; killing it", p.name);
    p.kill()
}

fn describe(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".to_owned(),
    }
}

/// `banger system run`: start both, then wait for SIGINT/SIGTERM (forwarded
/// to the children) or for a child to exit; returns how they ended.
pub fn run_foreground(opts: &RunOptions, facts: &HostFacts) -> Result<RunOutcome> {
    let stop = StopFlag::new();
    stop.register_signals()?;
    let fg = Foreground::start(opts, facts, stop)?;
    Ok(fg.wait())
}
