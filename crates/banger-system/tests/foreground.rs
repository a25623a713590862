//! `banger system run` with real child processes: small python3 stand-ins
//! for bangerd and bangerd-root that bind their sockets, record how they
//! were started (uid, gid, umask, argv, env) and record the signal that
//! stopped them.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use banger_core::paths::Paths;
use banger_system::{Foreground, HostFacts, Owner, RunOptions, StopFlag, StopReason, SystemError};

const FAKE: &str = r#"#!/usr/bin/env python3
import json, os, signal, socket, sys, time
BEHAVIOR = "@BEHAVIOR@"
args = sys.argv[1:]
sock = args[args.index("--socket") + 1]
if BEHAVIOR == "exit3":
    sys.exit(3)
um = os.umask(0o077)
os.umask(um)
def on(sig, frame):
    with open(sock + ".signal", "w") as f:
        f.write(str(sig))
    sys.exit(0)
if BEHAVIOR == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, on)
    signal.signal(signal.SIGINT, on)
s = socket.socket(socket.AF_UNIX)
s.bind(sock)
if "--owner-uid" in args:
    # What bangerd-root does: hand the socket to the owner, then 0600.
    os.chown(sock, int(args[args.index("--owner-uid") + 1]), -1)
    os.chmod(sock, 0o600)
s.listen(8)
info = {"uid": os.getuid(), "gid": os.getgid(), "umask": um, "argv": args,
        "root_socket_env": os.environ.get("BANGER_ROOT_SOCKET"),
        "home": os.environ.get("HOME"), "own_pgrp": os.getpgrp() == os.getpid()}
with open(sock + ".info", "w") as f:
    json.dump(info, f)
s.settimeout(0.1)
# Bounded: a stand-in never outlives a broken test by long.
deadline = time.time() + (1.0 if BEHAVIOR == "exit_after" else 120)
while time.time() < deadline:
    try:
        c, _ = s.accept()
        c.close()
    except socket.timeout:
        pass
sys.exit(7 if BEHAVIOR == "exit_after" else 0)
"#;

/// CAP_NET_ADMIN | CAP_CHOWN | CAP_FOWNER | CAP_SETPCAP, the unit's bound.
const HELPER_BOUND: u64 = 1 << 12 | 1 << 0 | 1 << 3 | 1 << 8;

fn have_python() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Fx {
    _tmp: tempfile::TempDir,
    paths: Paths,
    bin: PathBuf,
}

fn fixture(daemon: &str, helper: &str) -> Fx {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The owner (not root) must reach its dirs below this one.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = tmp.path().join("bin");
    fs::create_dir(&bin).expect("mkdir");
    for (name, behavior) in [("bangerd", daemon), ("bangerd-root", helper)] {
        let p = bin.join(name);
        fs::write(&p, FAKE.replace("@BEHAVIOR@", behavior)).expect("write fake");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let paths = Paths::under(&tmp.path().join("t"));
    Fx {
        _tmp: tmp,
        paths,
        bin,
    }
}

fn opts(fx: &Fx, owner: Option<&str>) -> RunOptions {
    let mut o = RunOptions::new(fx.paths.clone());
    o.bin_dir = Some(fx.bin.clone());
    o.owner = owner.map(str::to_owned);
    o.ready_timeout = Duration::from_secs(20);
    o.stop_timeout = Duration::from_secs(5);
    o
}

fn info(sock: &Path) -> serde_json::Value {
    let p = PathBuf::from(format!("{}.info", sock.display()));
    serde_json::from_str(&fs::read_to_string(&p).expect("info file")).expect("json")
}

fn signal_seen(sock: &Path) -> Option<i32> {
    fs::read_to_string(format!("{}.signal", sock.display()))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn gone(pid: u32) -> bool {
    // Reaped children no longer exist; kill(pid, 0) fails with ESRCH.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err()
}

fn proc_status(pid: u32) -> std::collections::HashMap<String, String> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("proc status")
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn mode_of(p: &Path) -> (u32, u32, u32) {
    let m = fs::metadata(p).expect("metadata");
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

fn skip() -> bool {
    if !have_python() {
        eprintln!("SKIP: python3 (the stand-in daemons) not found");
        return true;
    }
    false
}

#[test]
fn as_root_starts_both_like_the_units_and_forwards_the_stop_signal() {
    if skip() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root (drops the daemon to an owner user)");
        return;
    }
    let fx = fixture("serve", "serve");
    let nobody = Owner::lookup("nobody").expect("nobody");
    let stop = StopFlag::new();
    let facts = HostFacts {
        euid: 0,
        systemd_booted: false,
    };
    let fg = Foreground::start(&opts(&fx, Some("nobody")), &facts, stop.clone()).expect("start");
    assert!(fg.notes().is_empty(), "{:?}", fg.notes());
    let (dpid, hpid) = (fg.daemon_pid(), fg.helper_pid().expect("helper started"));

    let p = &fx.paths;
    let d = info(&p.socket);
    assert_eq!(d["uid"], nobody.uid);
    assert_eq!(d["gid"], nobody.gid);
    assert_eq!(d["umask"], 0o077);
    assert_eq!(d["home"], nobody.home.as_str());
    assert_eq!(d["own_pgrp"], true);
    assert_eq!(d["root_socket_env"], p.root_socket.to_str().expect("utf-8"));
    let argv: Vec<String> = serde_json::from_value(d["argv"].clone()).expect("argv");
    let want: Vec<String> = [
        "--socket",
        p.socket.to_str().expect("utf-8"),
        "--state-dir",
        p.state_dir.to_str().expect("utf-8"),
        "--cache-dir",
        p.cache_dir.to_str().expect("utf-8"),
        "--runtime-dir",
        p.runtime_dir.to_str().expect("utf-8"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    assert_eq!(argv, want);

    let h = info(&p.root_socket);
    assert_eq!(h["uid"], 0);
    assert_eq!(h["gid"], nobody.gid, "helper runs with the owner's group");
    assert_eq!(h["umask"], 0o077);
    assert_eq!(
        h["argv"],
        serde_json::json!([
            "--socket",
            p.root_socket.to_str().expect("utf-8"),
            "--owner-uid",
            nobody.uid.to_string(),
            // The network, from the owner's (here absent) config.
            "--bridge",
            "banger0",
            "--subnet",
            "172.16.0.0/24",
            "--dns-port",
            "53",
            "--isolate-vms",
            "true",
            "--block-lan",
            "true"
        ])
    );

    for dir in [&p.state_dir, &p.cache_dir, &p.runtime_dir] {
        assert_eq!(
            mode_of(dir),
            (0o700, nobody.uid, nobody.gid),
            "{}",
            dir.display()
        );
    }
    let root_dir = p.root_socket.parent().expect("parent");
    assert_eq!(mode_of(root_dir), (0o750, 0, nobody.gid));
    assert_eq!(mode_of(&p.root_socket), (0o600, nobody.uid, nobody.gid));

    // The helper is bounded like the unit (the stand-in drops nothing
    // further); the daemon, dropped to the owner, holds nothing. Both have
    // no_new_privs.
    let bound = format!("{:016x}", HELPER_BOUND);
    let helper_caps = proc_status(hpid);
    assert_eq!(helper_caps["CapBnd"], bound);
    assert_eq!(helper_caps["CapEff"], bound);
    assert_eq!(helper_caps["NoNewPrivs"], "1");
    let daemon_caps = proc_status(dpid);
    assert_eq!(daemon_caps["CapEff"], "0000000000000000");
    assert_eq!(daemon_caps["NoNewPrivs"], "1");

    stop.request(libc::SIGTERM);
    let out = fg.wait();
    assert_eq!(
        out.reason,
        StopReason::Signal {
            signal: libc::SIGTERM
        }
    );
    assert!(out.clean(), "{out:?}");
    assert_eq!(signal_seen(&p.socket), Some(libc::SIGTERM));
    assert_eq!(signal_seen(&p.root_socket), Some(libc::SIGTERM));
    assert!(gone(dpid) && gone(hpid));
}

#[test]
fn without_root_only_the_daemon_starts_and_the_reason_is_given() {
    if skip() {
        return;
    }
    let fx = fixture("serve", "serve");
    let me = nix::unistd::geteuid().as_raw();
    // Pretend to be unprivileged; when the test runs as root, claim to be
    // nobody so the non-root path is taken (nothing is dropped to it).
    let euid = if me == 0 { 65534 } else { me };
    let facts = HostFacts {
        euid,
        systemd_booted: false,
    };
    // A directory that already exists is not re-moded (think /tmp).
    fs::create_dir_all(&fx.paths.cache_dir).expect("mkdir");
    fs::set_permissions(&fx.paths.cache_dir, fs::Permissions::from_mode(0o1777)).expect("chmod");
    let stop = StopFlag::new();
    let fg = Foreground::start(&opts(&fx, None), &facts, stop.clone()).expect("start");
    assert_eq!(mode_of(&fx.paths.cache_dir).0, 0o1777);
    assert_eq!(mode_of(&fx.paths.state_dir).0, 0o700);
    assert_eq!(fg.helper_pid(), None);
    assert_eq!(fg.notes().len(), 1);
    assert!(
        fg.notes()[0].contains("sudo banger system run"),
        "{:?}",
        fg.notes()
    );
    assert!(fg.notes()[0].contains("root helper"), "{:?}", fg.notes());
    assert!(!fx.paths.root_socket.exists());
    stop.request(libc::SIGINT);
    let out = fg.wait();
    assert!(out.helper.is_none());
    assert!(out.clean(), "{out:?}");
    assert_eq!(signal_seen(&fx.paths.socket), Some(libc::SIGINT));
}

#[test]
fn a_daemon_that_dies_during_startup_is_reported_and_the_helper_stopped() {
    if skip() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root (starts the helper)");
        return;
    }
    let fx = fixture("exit3", "serve");
    let facts = HostFacts {
        euid: 0,
        systemd_booted: false,
    };
    let start = Instant::now();
    let err = Foreground::start(&opts(&fx, Some("nobody")), &facts, StopFlag::new())
        .expect_err("daemon exits");
    assert!(start.elapsed() < Duration::from_secs(15));
    match &err {
        SystemError::ExitedEarly { name, status } => {
            assert_eq!(*name, "bangerd");
            assert_eq!(status, "exit status 3");
        }
        other => panic!("unexpected: {other}"),
    }
    // The helper was answering before the daemon started; it was stopped.
    assert_eq!(signal_seen(&fx.paths.root_socket), Some(libc::SIGTERM));

    // A helper that dies: reported, and the daemon is never started.
    let fx = fixture("serve", "exit3");
    let err = Foreground::start(&opts(&fx, Some("nobody")), &facts, StopFlag::new())
        .expect_err("helper exits");
    assert!(
        matches!(
            &err,
            SystemError::ExitedEarly {
                name: "bangerd-root",
                ..
            }
        ),
        "{err}"
    );
    assert!(!fx.paths.socket.exists());
}

#[test]
fn a_child_that_ignores_the_signal_is_killed_after_the_stop_timeout() {
    if skip() {
        return;
    }
    let fx = fixture("ignore", "serve");
    let euid = nix::unistd::geteuid().as_raw();
    let facts = HostFacts {
        euid: if euid == 0 { 65534 } else { euid },
        systemd_booted: false,
    };
    let mut o = opts(&fx, None);
    o.stop_timeout = Duration::from_millis(500);
    let stop = StopFlag::new();
    let fg = Foreground::start(&o, &facts, stop.clone()).expect("start");
    let pid = fg.daemon_pid();
    stop.request(libc::SIGTERM);
    let t = Instant::now();
    let out = fg.wait();
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(out.daemon.killed);
    assert_eq!(out.daemon.signal, Some(libc::SIGKILL));
    assert!(!out.clean());
    assert!(gone(pid));
}

#[test]
fn a_child_exiting_on_its_own_ends_the_run_and_stops_the_other() {
    if skip() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root (starts the helper)");
        return;
    }
    let fx = fixture("exit_after", "serve");
    let facts = HostFacts {
        euid: 0,
        systemd_booted: false,
    };
    let fg = Foreground::start(&opts(&fx, Some("nobody")), &facts, StopFlag::new()).expect("start");
    let out = fg.wait();
    assert_eq!(
        out.reason,
        StopReason::ChildExited {
            name: "bangerd".into()
        }
    );
    assert_eq!(out.daemon.exit_code, Some(7));
    let helper = out.helper.expect("helper outcome");
    assert!(helper.success() && !helper.killed, "{helper:?}");
    assert_eq!(signal_seen(&fx.paths.root_socket), Some(libc::SIGTERM));
}

#[test]
fn refuses_to_start_over_a_running_instance_or_without_binaries() {
    if skip() {
        return;
    }
    let fx = fixture("serve", "serve");
    let facts = HostFacts {
        euid: 65534,
        systemd_booted: false,
    };
    fs::create_dir_all(&fx.paths.runtime_dir).expect("mkdir");
    let l = std::os::unix::net::UnixListener::bind(&fx.paths.socket).expect("bind");
    let err = Foreground::start(&opts(&fx, None), &facts, StopFlag::new()).expect_err("running");
    assert!(
        matches!(
            err,
            SystemError::AlreadyRunning {
                what: "bangerd",
                ..
            }
        ),
        "{err}"
    );
    drop(l);
    fs::remove_file(&fx.paths.socket).expect("rm");

    fs::remove_file(fx.bin.join("bangerd")).expect("rm");
    let err = Foreground::start(&opts(&fx, None), &facts, StopFlag::new()).expect_err("missing");
    assert!(
        matches!(
            err,
            SystemError::MissingBinary {
                name: "bangerd",
                ..
            }
        ),
        "{err}"
    );
}

/// The real `bangerd-root` (when a workspace build left one in the target
/// dir) under the foreground supervisor, bounded as in its unit: it must
/// start, hand its socket to the owner and end with exactly CAP_NET_ADMIN.
#[test]
fn the_real_root_helper_starts_within_the_unit_bound_and_keeps_only_net_admin() {
    if skip() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root (starts the root helper)");
        return;
    }
    // target/<profile>/deps/<this test> -> target/<profile>/bangerd-root
    let real = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("bangerd-root")))
        .filter(|p| p.is_file());
    let Some(real) = real else {
        eprintln!(
            "SKIP: no built bangerd-root next to the test binaries (cargo build -p bangerd-root)"
        );
        return;
    };
    let fx = fixture("serve", "serve");
    fs::remove_file(fx.bin.join("bangerd-root")).expect("rm stand-in");
    std::os::unix::fs::symlink(&real, fx.bin.join("bangerd-root")).expect("symlink");
    let nobody = Owner::lookup("nobody").expect("nobody");
    let facts = HostFacts {
        euid: 0,
        systemd_booted: false,
    };
    let stop = StopFlag::new();
    let fg = Foreground::start(&opts(&fx, Some("nobody")), &facts, stop.clone()).expect("start");
    let hpid = fg.helper_pid().expect("helper");
    let caps = proc_status(hpid);
    let net_admin = format!("{:016x}", 1u64 << 12);
    assert_eq!(caps["CapEff"], net_admin);
    assert_eq!(caps["CapPrm"], net_admin);
    assert_eq!(caps["CapBnd"], net_admin);
    assert_eq!(caps["CapAmb"], "0000000000000000");
    assert_eq!(caps["NoNewPrivs"], "1");
    assert_eq!(
        mode_of(&fx.paths.root_socket),
        (0o600, nobody.uid, nobody.gid)
    );
    stop.request(libc::SIGTERM);
    let out = fg.wait();
    assert!(out.clean(), "{out:?}");
}

/// The real `bangerd` (when a workspace build left one in the target dir)
/// dropped to the owner by the foreground supervisor, next to a stand-in
/// helper (the real helper would build a bridge on the host network when
/// the daemon asks; that belongs in a test network namespace). Everything it
/// creates must be private to the owner: no group or other bits anywhere.
#[test]
fn the_real_daemon_runs_as_the_owner_and_creates_only_private_files() {
    if skip() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root (drops the daemon to an owner user)");
        return;
    }
    let real = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("bangerd")))
        .filter(|p| p.is_file());
    let Some(real) = real else {
        eprintln!("SKIP: no built bangerd next to the test binaries (cargo build -p bangerd)");
        return;
    };
    let fx = fixture("serve", "serve");
    fs::remove_file(fx.bin.join("bangerd")).expect("rm stand-in");
    std::os::unix::fs::symlink(&real, fx.bin.join("bangerd")).expect("symlink");
    let nobody = Owner::lookup("nobody").expect("nobody");
    let facts = HostFacts {
        euid: 0,
        systemd_booted: false,
    };
    let stop = StopFlag::new();
    let fg = Foreground::start(&opts(&fx, Some("nobody")), &facts, stop.clone()).expect("start");
    assert_eq!(
        proc_status(fg.daemon_pid())["Uid"]
            .split_whitespace()
            .next(),
        Some("65534")
    );
    assert_eq!(
        mode_of(&fx.paths.socket),
        (0o600, nobody.uid, nobody.gid),
        "daemon socket"
    );
    stop.request(libc::SIGTERM);
    let out = fg.wait();
    assert!(out.clean(), "{out:?}");

    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u32, u32)>) {
        for e in fs::read_dir(dir).expect("read_dir").flatten() {
            let m = fs::symlink_metadata(e.path()).expect("meta");
            out.push((e.path(), m.permissions().mode() & 0o7777, m.uid()));
            if m.is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    let mut created = Vec::new();
    for d in [
        &fx.paths.state_dir,
        &fx.paths.cache_dir,
        &fx.paths.runtime_dir,
    ] {
        walk(d, &mut created);
    }
    let loose: Vec<_> = created
        .iter()
        .filter(|(_, mode, uid)| mode & 0o077 != 0 || *uid != nobody.uid)
        .collect();
    assert!(loose.is_empty(), "not private to the owner: {loose:?}");
}
