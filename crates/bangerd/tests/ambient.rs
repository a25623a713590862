//! No thread of a running `bangerd` holds ambient capabilities, so no child
//! it spawns (VMMs, ssh-keygen, mkfs…) inherits any: ambient sets are per
//! thread and inherited at spawn. The daemon is started the way the unit
//! starts it, with CAP_NET_BIND_SERVICE ambient (`setpriv`), and every
//! thread's `CapAmb` is read from /proc. Needs root and setpriv.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WITH_AMBIENT: [&str; 4] = [
    "--inh-caps",
    "+net_bind_service",
    "--ambient-caps",
    "+net_bind_service",
];

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // Ended by the pid this test started.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `CapAmb` of every thread of `pid`.
fn ambient_of(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let status =
            std::fs::read_to_string(t.expect("task").path().join("status")).unwrap_or_default();
        if let Some(l) = status.lines().find(|l| l.starts_with("CapAmb:")) {
            out.push(l.trim_start_matches("CapAmb:").trim().to_string());
        }
    }
    out
}

#[test]
fn no_daemon_thread_passes_ambient_capabilities_to_children() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("setpriv").arg("-V").output().is_err() {
        eprintln!("SKIP: needs root and setpriv (util-linux)");
        return;
    }
    // Control: setpriv really grants the ambient capability.
    let control = Killed(
        Command::new("setpriv")
            .args(WITH_AMBIENT)
            .args(["sleep", "20"])
            .spawn()
            .expect("setpriv sleep"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let amb = ambient_of(control.0.id());
    assert!(
        amb.iter().any(|a| a != "0000000000000000"),
        "control: setpriv did not set an ambient capability ({amb:?})"
    );
    drop(control);

    let d = tempfile::tempdir().expect("tmp");
    let sock = d.path().join("bangerd.sock");
    let daemon = Killed(
        Command::new("setpriv")
            .args(WITH_AMBIENT)
            .arg(env!("CARGO_BIN_EXE_bangerd"))
            .arg("--socket")
            .arg(&sock)
            .arg("--state-dir")
            .arg(d.path().join("state"))
            .arg("--cache-dir")
            .arg(d.path().join("cache"))
            .arg("--runtime-dir")
            .arg(d.path().join("run"))
            .args(["--no-network", "--dns-listen", "127.0.0.1:0"])
            .env("XDG_CONFIG_HOME", d.path().join("config"))
            .env("HOME", d.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bangerd"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "bangerd did not listen within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let amb = ambient_of(daemon.0.id());
    assert!(amb.len() > 1, "bangerd runs several threads: {amb:?}");
    assert!(
        amb.iter().all(|a| a == "0000000000000000"),
        "threads with ambient capabilities: {amb:?}"
    );
}
