//! A real SIGINT to the supervising process is forwarded to the children.
//! Its own test binary: it installs process-wide signal handlers.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::Duration;

use banger_core::paths::Paths;
use banger_system::{Foreground, HostFacts, RunOptions, StopFlag, StopReason};

const FAKE: &str = r#"#!/usr/bin/env python3
import signal, socket, sys, time
args = sys.argv[1:]
sock = args[args.index("--socket") + 1]
def on(sig, frame):
    with open(sock + ".signal", "w") as f:
        f.write(str(sig))
    sys.exit(0)
signal.signal(signal.SIGTERM, on)
signal.signal(signal.SIGINT, on)
s = socket.socket(socket.AF_UNIX)
s.bind(sock)
s.listen(8)
s.settimeout(0.1)
deadline = time.time() + 120
while time.time() < deadline:
    try:
        s.accept()[0].close()
    except socket.timeout:
        pass
"#;

#[test]
fn sigint_to_the_supervisor_is_forwarded_and_the_run_ends_cleanly() {
    if !Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("SKIP: python3 (the stand-in daemon) not found");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = tmp.path().join("bin");
    fs::create_dir(&bin).expect("mkdir");
    let p = bin.join("bangerd");
    fs::write(&p, FAKE).expect("write");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");

    let paths = Paths::under(&tmp.path().join("t"));
    let mut opts = RunOptions::new(paths.clone());
    opts.bin_dir = Some(bin);
    opts.ready_timeout = Duration::from_secs(20);
    let me = nix::unistd::geteuid().as_raw();
    // The unprivileged path: only the daemon, no privilege changes.
    let facts = HostFacts {
        euid: if me == 0 { 65534 } else { me },
        systemd_booted: false,
    };
    let stop = StopFlag::new();
    stop.register_signals().expect("handlers");
    let fg = Foreground::start(&opts, &facts, stop).expect("start");
    nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGINT)
        .expect("signal self");
    let out = fg.wait();
    assert_eq!(
        out.reason,
        StopReason::Signal {
            signal: libc::SIGINT
        }
    );
    assert!(out.clean(), "{out:?}");
    let seen =
        fs::read_to_string(format!("{}.signal", paths.socket.display())).expect("signal file");
    assert_eq!(seen.trim(), libc::SIGINT.to_string());
}
