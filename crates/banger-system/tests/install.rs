//! install / status / restart / uninstall against a temp root prefix, with
//! the systemctl calls recorded and real Unix listeners standing in for the
//! two daemons' sockets.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_system::{
    DAEMON_UNIT, HostFacts, InstallMetadata, InstallOptions, Layout, Owner, ROOT_UNIT,
    RecordingSystemctl, SystemError, UninstallOptions, UnitParams, install, render_daemon_unit,
    render_root_unit, restart, status, uninstall,
};

const ROOT: HostFacts = HostFacts {
    euid: 0,
    systemd_booted: true,
};

/// `nobody` exists on every Debian/Ubuntu host and is not root.
const OWNER: &str = "nobody";

struct Fixture {
    _tmp: tempfile::TempDir,
    prefix: PathBuf,
    src: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let prefix = tmp.path().join("root");
        let src = tmp.path().join("build");
        fs::create_dir_all(&prefix).expect("mkdir prefix");
        fs::create_dir_all(&src).expect("mkdir src");
        let f = Fixture {
            _tmp: tmp,
            prefix,
            src,
        };
        f.build("v1");
        f
    }

    /// Fake build outputs whose content names the build, so an upgrade is
    /// visible in the installed files.
    fn build(&self, tag: &str) {
        for name in ["banger", "bangerd", "bangerd-root", "banger-vsock-agent"] {
            let p = self.src.join(name);
            fs::write(&p, format!("#!/bin/sh\n# {name} {tag}\n")).expect("write binary");
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).expect("chmod");
        }
    }

    fn layout(&self) -> Layout {
        Layout::new(&self.prefix)
    }

    fn opts(&self, version: &str) -> InstallOptions {
        let mut o = InstallOptions::new(OWNER);
        o.layout = self.layout();
        o.source_dir = Some(self.src.clone());
        o.version = version.into();
        o.kvm_group = Some("kvm".into());
        o.ready_timeout = Duration::from_secs(5);
        o
    }

    fn p(&self, host_path: &str) -> PathBuf {
        self.layout().at(host_path)
    }

    /// Real listeners where systemd would have started the daemons.
    fn listen(&self) -> (UnixListener, UnixListener) {
        let l = self.layout();
        let bind = |p: PathBuf| {
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir run");
            let _ = fs::remove_file(&p);
            UnixListener::bind(&p).expect("bind")
        };
        (bind(l.root_socket()), bind(l.socket()))
    }

    /// Every path under the prefix, relative to it.
    fn tree(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(dir).expect("read_dir") {
                let e = e.expect("entry");
                let p = e.path();
                out.push(p.strip_prefix(base).expect("prefix").display().to_string());
                if e.file_type().expect("type").is_dir() {
                    walk(&p, base, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.prefix, &self.prefix, &mut out);
        out.sort();
        out
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn fresh_install_writes_binaries_units_and_metadata_then_enables_both() {
    let f = Fixture::new();
    let _l = f.listen();
    let sys = RecordingSystemctl::new();
    let report = install(&f.opts("0.1.0"), &sys, &ROOT).expect("install");

    assert!(!report.upgraded);
    assert_eq!(report.previous_version, None);
    assert_eq!(
        sys.call_lines(),
        [
            "daemon-reload",
            "enable --now bangerd-root.service bangerd.service"
        ]
    );

    for (name, dir) in [
        ("banger", "/usr/local/bin"),
        ("bangerd", "/usr/local/bin"),
        ("bangerd-root", "/usr/local/bin"),
        ("banger-vsock-agent", "/usr/local/lib/banger"),
    ] {
        let installed = f.p(dir).join(name);
        assert_eq!(
            fs::read(&installed).expect("installed binary"),
            fs::read(f.src.join(name)).expect("source"),
            "{name}"
        );
        assert_eq!(mode(&installed), 0o755, "{name}");
        if is_root() {
            assert_eq!(fs::metadata(&installed).expect("meta").uid(), 0, "{name}");
        }
    }

    let owner = Owner::lookup(OWNER).expect("owner");
    let params = UnitParams::standard(owner.clone(), Some("kvm".into()), "0.1.0");
    let daemon_unit = f.p("/etc/systemd/system/bangerd.service");
    let root_unit = f.p("/etc/systemd/system/bangerd-root.service");
    assert_eq!(
        fs::read_to_string(&daemon_unit).expect("unit"),
        render_daemon_unit(&params).expect("render")
    );
    assert_eq!(
        fs::read_to_string(&root_unit).expect("unit"),
        render_root_unit(&params).expect("render")
    );
    let daemon_text = fs::read_to_string(&daemon_unit).expect("unit");
    assert!(daemon_text.contains(&format!("\nUser={}\n", owner.name)));
    assert!(
        fs::read_to_string(&root_unit)
            .expect("unit")
            .contains(&format!(
                "--owner-uid {} --bridge banger0 --subnet 172.16.0.0/24 --dns-port 53 \
                 --isolate-vms true --block-lan true\n",
                owner.uid
            ))
    );
    assert_eq!(mode(&daemon_unit), 0o644);
    assert_eq!(mode(&root_unit), 0o644);

    let meta_path = f.p("/etc/banger/install.json");
    assert_eq!(mode(&meta_path), 0o644);
    let meta: InstallMetadata =
        serde_json::from_str(&fs::read_to_string(&meta_path).expect("read")).expect("json");
    assert_eq!(meta, report.metadata);
    assert_eq!(
        (
            meta.owner.as_str(),
            meta.uid,
            meta.gid,
            meta.version.as_str()
        ),
        (OWNER, owner.uid, owner.gid, "0.1.0")
    );
    assert!(meta.installed_at.ends_with('Z') && meta.installed_at.len() == 20);
    assert_eq!(meta.paths.socket, "/run/banger/bangerd.sock");

    // Install never creates state: systemd does, on first start.
    assert!(!f.p("/var/lib/banger").exists());
    // No temp files left next to what was installed.
    assert!(
        f.tree().iter().all(|p| !p.contains("banger-new")),
        "{:?}",
        f.tree()
    );
}

#[test]
fn reinstall_upgrades_in_place_and_keeps_state() {
    let f = Fixture::new();
    let _l = f.listen();
    let sys = RecordingSystemctl::new();
    install(&f.opts("0.1.0"), &sys, &ROOT).expect("first install");

    let state = f.p("/var/lib/banger/state.db");
    fs::create_dir_all(state.parent().expect("parent")).expect("mkdir");
    fs::write(&state, b"precious").expect("state");
    // A process still running the old daemon keeps its file: replacement is
    // by rename, not by writing into the running binary.
    let old_daemon = fs::File::open(f.p("/usr/local/bin/bangerd")).expect("open old");
    let old_ino = fs::metadata(f.p("/usr/local/bin/bangerd"))
        .expect("meta")
        .ino();

    f.build("v2");
    let sys2 = RecordingSystemctl::new();
    let report = install(&f.opts("0.2.0"), &sys2, &ROOT).expect("upgrade");

    assert!(report.upgraded);
    assert_eq!(report.previous_version.as_deref(), Some("0.1.0"));
    assert_eq!(
        sys2.call_lines(),
        [
            "daemon-reload",
            "enable bangerd-root.service bangerd.service",
            "restart bangerd-root.service bangerd.service"
        ]
    );
    let new = fs::read_to_string(f.p("/usr/local/bin/bangerd")).expect("read");
    assert!(new.contains("bangerd v2"), "{new}");
    assert_ne!(
        fs::metadata(f.p("/usr/local/bin/bangerd"))
            .expect("meta")
            .ino(),
        old_ino
    );
    let old = std::io::read_to_string(old_daemon).expect("read old");
    assert!(old.contains("bangerd v1"));
    assert!(
        fs::read_to_string(f.p("/etc/systemd/system/bangerd.service"))
            .expect("unit")
            .contains("(banger 0.2.0)")
    );
    assert_eq!(fs::read(&state).expect("state"), b"precious");
    let meta = InstallMetadata::read(&f.layout())
        .expect("read")
        .expect("present");
    assert_eq!(meta.version, "0.2.0");
}

/// `sudo banger system install` run from the installed banger finds the
/// agent where the previous install put it.
#[test]
fn reinstall_from_the_installed_binaries_finds_the_agent() {
    let f = Fixture::new();
    let _l = f.listen();
    install(&f.opts("0.1.0"), &RecordingSystemctl::new(), &ROOT).expect("install");
    let mut o = f.opts("0.1.0");
    o.source_dir = Some(f.p("/usr/local/bin"));
    let report = install(&o, &RecordingSystemctl::new(), &ROOT).expect("reinstall");
    assert!(report.upgraded);
    assert_eq!(
        fs::read(f.p("/usr/local/lib/banger/banger-vsock-agent")).expect("agent"),
        fs::read(f.src.join("banger-vsock-agent")).expect("source agent")
    );
}

#[test]
fn refusals_change_nothing() {
    let f = Fixture::new();
    let sys = RecordingSystemctl::new();

    let user = HostFacts {
        euid: 1000,
        systemd_booted: true,
    };
    let err = install(&f.opts("0.1.0"), &sys, &user).expect_err("non-root");
    assert!(matches!(err, SystemError::NotRoot { .. }));
    assert!(
        err.to_string().contains("sudo banger system install"),
        "{err}"
    );

    let no_systemd = HostFacts {
        euid: 0,
        systemd_booted: false,
    };
    let err = install(&f.opts("0.1.0"), &sys, &no_systemd).expect_err("no systemd");
    assert!(matches!(err, SystemError::SystemdRequired));
    assert!(err.to_string().contains("banger system run"), "{err}");

    let mut o = f.opts("0.1.0");
    o.owner = "banger-no-such-user".into();
    let err = install(&o, &sys, &ROOT).expect_err("unknown owner");
    assert!(matches!(err, SystemError::UnknownOwner(_)), "{err}");

    let mut o = f.opts("0.1.0");
    o.owner = "root".into();
    assert!(matches!(
        install(&o, &sys, &ROOT),
        Err(SystemError::OwnerIsRoot(_))
    ));

    fs::remove_file(f.src.join("bangerd-root")).expect("rm");
    let err = install(&f.opts("0.1.0"), &sys, &ROOT).expect_err("missing binary");
    assert!(
        matches!(
            &err,
            SystemError::MissingBinary {
                name: "bangerd-root",
                ..
            }
        ),
        "{err}"
    );

    assert!(sys.calls().is_empty(), "{:?}", sys.call_lines());
    assert!(f.tree().is_empty(), "{:?}", f.tree());
    assert!(matches!(
        restart(&f.layout(), &sys, &user, Duration::from_secs(1)),
        Err(SystemError::NotRoot { command: "restart" })
    ));
    let o = UninstallOptions {
        layout: f.layout(),
        purge: true,
    };
    assert!(matches!(
        uninstall(&o, &sys, &user),
        Err(SystemError::NotRoot {
            command: "uninstall"
        })
    ));
}

#[test]
fn install_fails_clearly_when_a_daemon_never_answers() {
    let f = Fixture::new();
    let l = f.layout();
    fs::create_dir_all(l.root_socket().parent().expect("parent")).expect("mkdir");
    let _helper = UnixListener::bind(l.root_socket()).expect("bind");
    let mut o = f.opts("0.1.0");
    o.ready_timeout = Duration::from_millis(300);
    let start = std::time::Instant::now();
    let err = install(&o, &RecordingSystemctl::new(), &ROOT).expect_err("timeout");
    assert!(start.elapsed() < Duration::from_secs(3));
    match &err {
        SystemError::SocketTimeout { what, path, .. } => {
            assert_eq!(*what, "bangerd");
            assert_eq!(path, &l.socket());
        }
        other => panic!("unexpected {other}"),
    }
    assert!(
        err.to_string().contains("journalctl -u bangerd.service"),
        "{err}"
    );
}

#[test]
fn install_stops_when_systemctl_fails() {
    let f = Fixture::new();
    let sys = RecordingSystemctl::new();
    sys.fail("enable");
    let err = install(&f.opts("0.1.0"), &sys, &ROOT).expect_err("enable fails");
    assert!(err.to_string().contains("systemctl enable --now"), "{err}");
}

/// Files banger installs plus state systemd would have created, and a home
/// with the user's own banger files.
fn installed_with_state(f: &Fixture) -> Vec<PathBuf> {
    let _l = f.listen();
    install(&f.opts("0.1.0"), &RecordingSystemctl::new(), &ROOT).expect("install");
    for p in [
        "/var/lib/banger/state.db",
        "/var/lib/banger/vms/a/rootfs.ext4",
        "/var/cache/banger/downloads/x",
        "/run/banger/vms/a.sock",
        "/run/banger-root/x",
    ] {
        let p = f.p(p);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, b"x").expect("write");
    }
    let home = [
        "/home/alice/.config/banger/config.toml",
        "/home/alice/.local/state/banger/ssh/id_ed25519",
    ];
    home.iter()
        .map(|p| {
            let p = f.p(p);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(&p, b"mine").expect("write");
            p
        })
        .collect()
}

#[test]
fn uninstall_without_purge_keeps_state_and_user_files() {
    let f = Fixture::new();
    let home = installed_with_state(&f);
    let sys = RecordingSystemctl::new();
    let o = UninstallOptions {
        layout: f.layout(),
        purge: false,
    };
    let report = uninstall(&o, &sys, &ROOT).expect("uninstall");
    assert_eq!(
        sys.call_lines(),
        [
            "kill --kill-who=all --signal=SIGTERM bangerd.service",
            "disable --now bangerd.service bangerd-root.service",
            "daemon-reload"
        ]
    );
    for gone in [
        "/etc/systemd/system/bangerd.service",
        "/etc/systemd/system/bangerd-root.service",
        "/usr/local/bin/banger",
        "/usr/local/bin/bangerd",
        "/usr/local/bin/bangerd-root",
        "/usr/local/lib/banger",
        "/etc/banger",
    ] {
        assert!(!f.p(gone).exists(), "{gone} still there");
        assert!(report.removed.contains(&f.p(gone)), "{gone} not reported");
    }
    for kept in [
        "/var/lib/banger/state.db",
        "/var/cache/banger/downloads/x",
        "/run/banger/vms/a.sock",
        "/run/banger-root/x",
    ] {
        assert!(f.p(kept).exists(), "{kept} removed without --purge");
    }
    assert_eq!(report.kept.len(), 4);
    for p in home {
        assert_eq!(fs::read(&p).expect("user file"), b"mine");
    }
}

#[test]
fn uninstall_purge_leaves_nothing_of_bangers_but_the_users_files() {
    let f = Fixture::new();
    let home = installed_with_state(&f);
    let o = UninstallOptions {
        layout: f.layout(),
        purge: true,
    };
    uninstall(&o, &RecordingSystemctl::new(), &ROOT).expect("uninstall --purge");
    let left: Vec<String> = f
        .tree()
        .into_iter()
        .filter(|p| p.contains("banger") && !p.starts_with("home/"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    for p in home {
        assert_eq!(fs::read(&p).expect("user file"), b"mine");
    }
    // A second uninstall has nothing to do and does not fail.
    let again = uninstall(&o, &RecordingSystemctl::new(), &ROOT).expect("again");
    assert!(again.removed.is_empty());
}

#[test]
fn uninstall_without_systemd_still_removes_files_and_says_so() {
    let f = Fixture::new();
    installed_with_state(&f);
    let sys = RecordingSystemctl::new();
    let facts = HostFacts {
        euid: 0,
        systemd_booted: false,
    };
    let o = UninstallOptions {
        layout: f.layout(),
        purge: false,
    };
    let report = uninstall(&o, &sys, &facts).expect("uninstall");
    assert!(sys.calls().is_empty());
    assert!(!f.p("/etc/banger").exists());
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("systemd is not running"))
    );
}

#[test]
fn status_reports_services_sockets_and_metadata() {
    let f = Fixture::new();
    let sys = RecordingSystemctl::new();
    let before = status(&f.layout(), &sys, &ROOT);
    assert!(!before.installed && !before.healthy());

    let listeners = f.listen();
    install(&f.opts("0.1.0"), &RecordingSystemctl::new(), &ROOT).expect("install");
    sys.set_show(
        ROOT_UNIT,
        "LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=4242\n",
    );
    sys.set_show(
        DAEMON_UNIT,
        "MainPID=4343\nLoadState=loaded\nActiveState=active\nSubState=running\n",
    );
    let st = status(&f.layout(), &sys, &ROOT);
    assert!(st.healthy(), "{st:?}");
    assert_eq!(st.owner.as_deref(), Some(OWNER));
    assert_eq!(st.version.as_deref(), Some("0.1.0"));
    assert_eq!(st.services[0].main_pid, Some(4242));
    assert_eq!(st.services[1].main_pid, Some(4343));
    assert_eq!(
        sys.call_lines()[0],
        "show -p LoadState -p ActiveState -p SubState -p MainPID bangerd-root.service"
    );

    let json = serde_json::to_value(&st).expect("json");
    assert_eq!(json["services"][1]["unit"], "bangerd.service");
    assert_eq!(json["services"][1]["active_state"], "active");
    assert_eq!(json["services"][1]["socket"]["answering"], true);
    assert_eq!(
        json["metadata"]["uid"],
        st.metadata.as_ref().map(|m| m.uid).expect("uid")
    );

    let text = st.to_text();
    assert!(text.contains("banger 0.1.0 installed"), "{text}");
    assert!(
        text.contains("bangerd.service       active (running), pid 4343"),
        "{text}"
    );

    // The daemon dies: the service is failed and its socket refuses.
    drop(listeners);
    sys.set_show(
        DAEMON_UNIT,
        "LoadState=loaded\nActiveState=failed\nSubState=failed\nMainPID=0\n",
    );
    let st = status(&f.layout(), &sys, &ROOT);
    assert!(!st.healthy());
    assert_eq!(st.services[1].main_pid, None);
    assert_eq!(st.services[1].active_state.as_deref(), Some("failed"));
    assert!(!st.services[1].socket.answering);
    assert!(st.services[1].socket.error.is_some());
    let text = st.to_text();
    assert!(
        text.contains("bangerd.service       failed (failed), no pid"),
        "{text}"
    );
    assert!(
        text.contains("not answering: socket exists but nothing is listening"),
        "{text}"
    );
}

/// The real `HostSystemctl` path: argv reaches the program as separate
/// arguments (no shell), recorded by a stand-in `systemctl`.
#[test]
fn install_through_host_systemctl_execs_argv() {
    let f = Fixture::new();
    let _l = f.listen();
    let log = f.prefix.parent().expect("tmp").join("systemctl.log");
    let fake = f.prefix.parent().expect("tmp").join("systemctl");
    fs::write(
        &fake,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '[%s]' \"$a\" >> '{}'; done\necho >> '{}'\n",
            log.display(),
            log.display()
        ),
    )
    .expect("write fake");
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).expect("chmod");
    let sys = banger_system::HostSystemctl { program: fake };
    install(&f.opts("0.1.0"), &sys, &ROOT).expect("install");
    assert_eq!(
        fs::read_to_string(&log).expect("log"),
        "[daemon-reload]\n[enable][--now][bangerd-root.service][bangerd.service]\n"
    );
}

#[test]
fn status_without_systemd_still_reports_sockets() {
    let f = Fixture::new();
    let _l = f.listen();
    let sys = RecordingSystemctl::new();
    let facts = HostFacts {
        euid: 1000,
        systemd_booted: false,
    };
    let st = status(&f.layout(), &sys, &facts);
    assert!(sys.calls().is_empty());
    assert!(st.services.iter().all(|s| s.socket.answering));
    assert!(st.services.iter().all(|s| s.error.is_some()));
}

#[test]
fn restart_restarts_both_and_waits_for_the_sockets() {
    let f = Fixture::new();
    let _l = f.listen();
    let sys = RecordingSystemctl::new();
    restart(&f.layout(), &sys, &ROOT, Duration::from_secs(2)).expect("restart");
    assert_eq!(
        sys.call_lines(),
        ["restart bangerd-root.service bangerd.service"]
    );
    let no_systemd = HostFacts {
        euid: 0,
        systemd_booted: false,
    };
    assert!(matches!(
        restart(&f.layout(), &sys, &no_systemd, Duration::from_secs(1)),
        Err(SystemError::SystemdRequired)
    ));
}
