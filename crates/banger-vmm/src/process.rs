//! VMM processes: identity that survives a daemon restart, liveness, exit status, signals.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::process::Child;

use crate::spec::VmmKind;

/// A process identified by pid **and** its start time (field 22 of `/proc/<pid>/stat`, in
/// clock ticks since boot), so a recycled pid is never mistaken for our VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub start_time: u64,
}

/// What `/proc/<pid>/stat` says about a pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: char,
    start_time: u64,
}

fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); start time is field 22.
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

impl ProcessIdentity {
    /// Reads the identity of a running pid.
    pub fn of(pid: u32) -> std::io::Result<ProcessIdentity> {
        let stat = read_stat(pid).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no process {pid} in /proc"),
            )
        })?;
        Ok(ProcessIdentity {
            pid,
            start_time: stat.start_time,
        })
    }

    /// Whether this exact process still runs (same pid and start time, not a zombie).
    pub fn is_alive(&self) -> bool {
        match read_stat(self.pid) {
            Some(s) => s.start_time == self.start_time && s.state != 'Z' && s.state != 'X',
            None => false,
        }
    }

    /// Sends `signal` only if this exact process still runs (a recycled pid is left alone).
    pub fn signal(&self, signal: i32) -> bool {
        if !self.is_alive() {
            return false;
        }
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        // SAFETY: kill(2) with a positive pid we just verified; no memory is involved.
        unsafe { libc::kill(pid, signal) == 0 }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitInfo {
    /// Exited with this status code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// It was not our child (re-adopted after a daemon restart), so its status is unknowable.
    Unknown,
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitInfo::Code(c) => write!(f, "exit status {c}"),
            ExitInfo::Signal(s) => write!(f, "killed by signal {s}"),
            ExitInfo::Unknown => f.write_str("exited; status unknown (not our child)"),
        }
    }
}

impl From<std::process::ExitStatus> for ExitInfo {
    fn from(s: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (s.code(), s.signal()) {
            (Some(c), _) => ExitInfo::Code(c),
            (None, Some(sig)) => ExitInfo::Signal(sig),
            (None, None) => ExitInfo::Unknown,
        }
    }
}

/// A helper process a VM depends on (none today; handles of older QEMU VMs named their
/// `vhost-device-vsock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperProcess {
    pub name: String,
    pub process: ProcessIdentity,
}

/// What the daemon persists about a started VMM, to find it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmHandle {
    pub kind: VmmKind,
    pub vm_name: String,
    pub vm_dir: PathBuf,
    pub process: ProcessIdentity,
    /// Firecracker's API socket or QEMU's QMP socket.
    pub control_socket: PathBuf,
    pub console_log: PathBuf,
    /// The VMM's own log (firecracker logger / qemu stderr).
    pub vmm_log: PathBuf,
    #[serde(default)]
    pub helpers: Vec<HelperProcess>,
    /// Guest RAM file (QEMU `memory_file`), removed when the VM is found stopped.
    #[serde(default)]
    pub memory_file: Option<PathBuf>,
}

/// A VMM process this daemon manages: the persisted handle, plus the `Child` when the
/// VMM was started by this very daemon process (then its exit status is known).
#[derive(Debug)]
pub struct RunningVmm {
    handle: VmmHandle,
    child: Option<Child>,
    helper_children: Vec<Child>,
    exit: Option<ExitInfo>,
    kill_on_drop: bool,
}

/// Current state of a managed VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmStatus {
    Running,
    Exited(ExitInfo),
}

impl RunningVmm {
    pub(crate) fn new(
        handle: VmmHandle,
        child: Option<Child>,
        helper_children: Vec<Child>,
    ) -> RunningVmm {
        RunningVmm {
            handle,
            child,
            helper_children,
            exit: None,
            kill_on_drop: false,
        }
    }

    /// SIGKILL the VMM and its helpers if this value is dropped while they run. Off by
    /// default, because the daemon must be able to restart without stopping VMs; tests turn
    /// it on so a failing assertion does not leak a guest.
    pub fn set_kill_on_drop(&mut self, kill: bool) {
        self.kill_on_drop = kill;
    }

    pub(crate) fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// The identity to persist.
    pub fn handle(&self) -> &VmmHandle {
        &self.handle
    }

    pub fn pid(&self) -> u32 {
        self.handle.process.pid
    }

    pub fn console_log(&self) -> &Path {
        &self.handle.console_log
    }

    /// Polls the VMM without blocking. A VMM that exited is reaped (its status recorded).
    pub fn status(&mut self) -> VmmStatus {
        if let Some(e) = self.exit {
            return VmmStatus::Exited(e);
        }
        let exited = match &mut self.child {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(ExitInfo::from(status)),
                Ok(None) => None,
                Err(_) => (!self.handle.process.is_alive()).then_some(ExitInfo::Unknown),
            },
            None => (!self.handle.process.is_alive()).then_some(ExitInfo::Unknown),
        };
        match exited {
            Some(e) => {
                self.exit = Some(e);
                VmmStatus::Exited(e)
            }
            None => VmmStatus::Running,
        }
    }

    pub fn is_alive(&mut self) -> bool {
        self.status() == VmmStatus::Running
    }

    /// Waits up to `timeout` for the VMM to exit; `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            if let VmmStatus::Exited(e) = self.status() {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the VMM (only if it is still the same process) and waits for it to go.
    pub(crate) async fn kill(&mut self) -> Option<ExitInfo> {
        if let VmmStatus::Exited(e) = self.status() {
            return Some(e);
        }
        match &mut self.child {
            // Our child cannot have been reaped behind our back, so its pid is still ours.
            Some(child) => {
                let _ = child.start_kill();
            }
            None => {
                self.handle.process.signal(libc::SIGKILL);
            }
        }
        self.wait_exit(Duration::from_secs(5)).await
    }

    /// Stops helper processes: SIGTERM, a short wait, then SIGKILL (vhost-device-vsock
    /// ignores SIGTERM for a while). Once the VMM itself is gone, also removes its guest
    /// RAM file.
    pub(crate) async fn stop_helpers(&mut self) {
        for h in &self.handle.helpers {
            h.process.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline && self.handle.helpers.iter().any(|h| h.process.is_alive())
        {
            self.reap_helpers();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for h in &self.handle.helpers {
            h.process.signal(libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && self.handle.helpers.iter().any(|h| h.process.is_alive())
        {
            self.reap_helpers();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.reap_helpers();
        // Guest RAM on tmpfs is memory: give it back once the VMM is gone.
        if let Some(f) = &self.handle.memory_file
            && !self.handle.process.is_alive()
        {
            let _ = std::fs::remove_file(f);
        }
    }

    fn reap_helpers(&mut self) {
        for c in &mut self.helper_children {
            let _ = c.try_wait();
        }
    }
}

impl Drop for RunningVmm {
    fn drop(&mut self) {
        if !self.kill_on_drop {
            return;
        }
        if self.status() == VmmStatus::Running {
            match &mut self.child {
                Some(child) => {
                    let _ = child.start_kill();
                }
                None => {
                    self.handle.process.signal(libc::SIGKILL);
                }
            }
        }
        for h in &self.handle.helpers {
            h.process.signal(libc::SIGKILL);
        }
    }
}

/// The result of looking for a VMM after a daemon restart.
#[derive(Debug)]
pub enum Adoption {
    /// The very process still runs; manage it again.
    Alive(Box<RunningVmm>),
    /// It is gone; `reason` says why we think so. Helpers it left behind were stopped.
    Gone { reason: String },
}

/// Re-adopts a VMM from its persisted handle: alive only if pid **and** start time match.
pub async fn adopt(handle: VmmHandle) -> Adoption {
    if handle.process.is_alive() {
        return Adoption::Alive(Box::new(RunningVmm::new(handle, None, Vec::new())));
    }
    let reason = match read_stat(handle.process.pid) {
        Some(s) if s.start_time != handle.process.start_time => format!(
            "{} (pid {}) is gone; the pid now belongs to another process",
            handle.kind, handle.process.pid
        ),
        Some(_) => format!(
            "{} (pid {}) has exited (zombie)",
            handle.kind, handle.process.pid
        ),
        None => format!(
            "{} (pid {}) is no longer running",
            handle.kind, handle.process.pid
        ),
    };
    // Orphaned helpers (vsock backend) would otherwise leak.
    let mut vm = RunningVmm::new(handle, None, Vec::new());
    vm.stop_helpers().await;
    Adoption::Gone { reason }
}

/// `Private_Dirty` of `/proc/<pid>/smaps_rollup` in bytes: memory the process wrote and
/// maps alone (a restored VM's copy-on-write pages; a booted VM's touched RAM).
pub fn private_dirty_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Private_Dirty:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    // Only the end: a guest may have written megabytes to its console.
    match crate::console::tail(path, crate::console::TAIL_MAX) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<{} unreadable: {e}>", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_memory_of_this_process_is_read() {
        // Other test threads of this process allocate and free at the same
        // time, so one sample may see their frees too: a few tries, each a
        // real measurement of 64 MiB made dirty between two reads.
        let mut seen = Vec::new();
        for _ in 0..5 {
            let before = private_dirty_bytes(std::process::id()).expect("smaps_rollup");
            let big = vec![1u8; 64 << 20];
            let after = private_dirty_bytes(std::process::id()).expect("smaps_rollup");
            drop(big);
            seen.push((before, after));
            if after >= before + (60 << 20) {
                break;
            }
        }
        let (before, after) = *seen.last().expect("measured");
        assert!(after >= before + (60 << 20), "before -> after: {seen:?}");
        assert_eq!(private_dirty_bytes(u32::MAX), None);
    }

    #[test]
    fn own_identity_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcessIdentity::of(std::process::id()).expect("own stat");
        assert!(me.is_alive());
        let recycled = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!recycled.is_alive());
        assert!(!recycled.signal(0), "must not signal a recycled pid");
    }

    #[tokio::test]
    async fn child_exit_status_is_recorded() {
        let child = tokio::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .expect("spawn sh");
        let pid = child.id().expect("pid");
        let identity = ProcessIdentity::of(pid).expect("identity");
        let handle = VmmHandle {
            kind: VmmKind::Qemu,
            vm_name: "t".into(),
            vm_dir: PathBuf::from("/nonexistent"),
            process: identity,
            control_socket: PathBuf::from("/nonexistent/s"),
            console_log: PathBuf::from("/nonexistent/c"),
            vmm_log: PathBuf::from("/nonexistent/l"),
            helpers: vec![],
            memory_file: None,
        };
        let mut vm = RunningVmm::new(handle, Some(child), vec![]);
        assert_eq!(
            vm.wait_exit(Duration::from_secs(5)).await,
            Some(ExitInfo::Code(7))
        );
        assert_eq!(vm.status(), VmmStatus::Exited(ExitInfo::Code(7)));
    }
}
