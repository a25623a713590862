//! The CLI at its edges: names that look like URL syntax, readers that go
//! away, an empty BANGER_SOCKET, a daemon that never answers, a socket the
//! user may not open. Real binaries; a real daemon where one is needed.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, banger};

/// Exit code, stdout and stderr of a command that must end within 2 minutes.
fn run(cmd: &mut Command) -> (i32, String, String) {
    let (code, out, err, _) = run_bounded(cmd, Duration::from_secs(120));
    (code, out, err)
}

/// `run`, but a command still running after `limit` is killed and the
/// test fails (a hung CLI must fail the test, not hang it).
fn run_bounded(cmd: &mut Command, limit: Duration) -> (i32, String, String, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn banger");
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}: the CLI hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        took,
    )
}

fn names(d: &Daemon, what: &str) -> Vec<String> {
    let (code, out, err) = run(d.cli().args([what, "list", "--json"]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v.as_array()
        .expect("array")
        .iter()
        .filter_map(|x| x["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn names_are_data_not_url_syntax() {
    let d = Daemon::prepare();
    std::fs::create_dir_all(d.state_dir()).expect("state");
    {
        let store = banger_store::Store::open(&d.state_dir().join("state.db")).expect("store");
        common::seed_kernel(&store, "k2");
        common::seed_image(&store, "i6", "k2");
    }
    let d = d.start();

    // `i6?` once meant DELETE /v1/images/i6 with an empty query string.
    let (code, _, err) = run(d.cli().args(["image", "delete", "i6?"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid image name \"i6?\""), "{err}");
    assert_eq!(names(&d, "image"), ["i6"], "i6 survives");
    let (code, _, err) = run(d.cli().args(["image", "show", "i6#frag"]));
    assert_eq!(code, 1);
    assert!(err.contains("invalid image name \"i6#frag\""), "{err}");

    let (code, _, err) = run(d.cli().args(["kernel", "delete", "k2?"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid kernel name \"k2?\""), "{err}");
    assert_eq!(names(&d, "kernel"), ["k2"], "k2 survives");

    // Not "no route GET /v1/vms/" nor "invalid uri character".
    let (code, _, err) = run(d.cli().args(["vm", "show", ""]));
    assert_eq!(code, 1);
    assert!(err.contains("invalid VM name \"\": it is empty"), "{err}");
    for bad in ["a b", "../x", "a?b"] {
        let (code, _, err) = run(d.cli().args(["vm", "show", bad]));
        assert_eq!(code, 1, "{bad}");
        assert!(
            err.contains(&format!("invalid VM name {bad:?}")),
            "{bad}: {err}"
        );
        assert!(!err.contains("uri") && !err.contains("route"), "{err}");
    }
    // An image may not take a name that is one of the daemon's actions.
    let (code, _, err) = run(d.cli().args(["image", "show", "build"]));
    assert_eq!(code, 1);
    assert!(err.contains("reserved"), "{err}");
}

/// Runs `cmd` with stdout on a pipe whose reader is already gone: every
/// write fails with EPIPE, as under `| head -0`.
fn with_closed_stdout(cmd: &mut Command) -> (Option<i32>, String) {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two fds we own; the read end is closed at once.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    // SAFETY: fds[1] is an open fd nothing else owns.
    let write_end = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    let out = cmd
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    let d = Daemon::prepare().start();
    let cfg = d.root().join("none.toml");
    for args in [
        &["config", "show"][..],
        &["config", "show", "--json"],
        &["doctor"],
        &["vm", "list"],
        &["image", "list"],
        &["completion", "bash"],
        &["--help"],
    ] {
        let (code, err) = with_closed_stdout(d.cli().args(args).env("BANGER_CONFIG", &cfg));
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            matches!(code, Some(0) | Some(141)),
            "{args:?} exited {code:?}: {err}"
        );
        assert!(!err.contains("error:"), "{args:?}: {err}");
    }
}

#[test]
fn empty_banger_socket_means_unset() {
    let (code, out, err) = run(banger()
        .args(["completion", "bash"])
        .env("BANGER_SOCKET", ""));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("COMPLETE"));
    let (code, _, err) = run(banger().args(["vm", "list"]).env("BANGER_SOCKET", ""));
    assert!(!err.contains("a value is required"), "{err}");
    if code != 0 {
        assert!(err.contains("/run/banger/bangerd.sock"), "{err}");
    }
    // --socket given once anywhere on the line still wins.
    let d = Daemon::prepare().start();
    let (code, out, err) = run(banger()
        .args(["vm", "list", "--json", "--socket"])
        .arg(&d.socket)
        .env("BANGER_SOCKET", ""));
    assert_eq!((code, out.trim()), (0, "[]"), "{err}");
}

#[test]
fn a_daemon_that_never_answers_does_not_hang_the_cli() {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("mute.sock");
    // Bound but never accepted: connect succeeds (the kernel queues it),
    // and no answer ever comes. A stand-in for a stuck daemon.
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let cfg = dir.path().join("none.toml");

    let (code, out, err, took) = run_bounded(
        banger()
            .args(["vm", "list"])
            .env("BANGER_SOCKET", &sock)
            .env("BANGER_CONFIG", &cfg),
        Duration::from_secs(40),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("accepted the connection but sent no answer to GET /v1/vms within 20s"),
        "{err}"
    );
    assert!(took >= Duration::from_secs(19), "gave up early: {took:?}");

    // doctor reports the host's checks and says the daemon is mute.
    let (_, out, err, _) = run_bounded(
        banger()
            .arg("doctor")
            .env("BANGER_SOCKET", &sock)
            .env("BANGER_CONFIG", &cfg),
        Duration::from_secs(60),
    );
    assert!(out.contains("architecture"), "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("bangerd"))
        .unwrap_or_else(|| panic!("no bangerd line: {out}"));
    assert!(
        line.starts_with("warn") && line.contains("no answer"),
        "{line}"
    );
}

#[test]
fn a_socket_you_may_not_open_is_a_permissions_problem() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sock = dir.path().join("bangerd.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let mut cmd = banger();
    cmd.args(["vm", "list"]).env("BANGER_SOCKET", &sock);
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } == 0 {
        // root opens anything: ask as nobody, like a user outside the owner.
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        cmd.uid(65534).gid(65534).env("HOME", dir.path());
    } else {
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    }
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("permission denied opening bangerd's socket"),
        "{err}"
    );
    assert!(err.contains("mode 0"), "{err}");
    assert!(err.contains("--owner"), "{err}");
    assert!(!err.contains("bangerd is not running"), "{err}");
}

#[test]
fn output_has_nulls_and_words_not_placeholders_and_enum_names() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("none.toml");
    let (code, out, err) = run(banger()
        .args(["config", "show", "--json"])
        .env("BANGER_CONFIG", &cfg));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let rows = v["values"].as_array().expect("values");
    for key in ["firecracker_bin", "qemu_bin", "catalog_file"] {
        let row = rows.iter().find(|r| r["key"] == key).expect(key);
        assert!(row["value"].is_null(), "{key}: {row}");
    }
    let (_, out, _) = run(banger()
        .args(["doctor"])
        .env("BANGER_CONFIG", &cfg)
        .env("BANGER_SOCKET", dir.path().join("none.sock")));
    let tsc = out
        .lines()
        .find(|l| l.contains("host TSC"))
        .unwrap_or_else(|| panic!("no host TSC line: {out}"));
    for debug_name in ["Sysfs", "KernelLog", "Measured"] {
        assert!(!tsc.contains(debug_name), "{tsc}");
    }
}

#[test]
fn no_dead_end_commands_are_advertised() {
    let d = Daemon::prepare().start();
    // `kernel pull` was a stub; it is gone, not "not available yet".
    let (code, _, err) = run(d.cli().args(["kernel", "pull", "x"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unrecognized subcommand 'pull'"), "{err}");
    // The embedded catalog is empty: nothing suggests pulling from it.
    let mut said = String::new();
    for args in [
        &["--help"][..],
        &["image", "--help"],
        &["kernel", "--help"],
        &["image", "list"],
        &["kernel", "list"],
    ] {
        let (code, out, err) = run(d.cli().args(args));
        assert_eq!(code, 0, "{args:?}: {err}");
        said.push_str(&out);
    }
    assert!(!said.contains("kernel pull"), "{said}");
    assert!(!said.contains("image pull debian-bookworm"), "{said}");
    assert!(said.contains("banger image build"), "{said}");
    // doctor says the catalog is empty and what `vm run` does instead.
    let (_, out, _) = run(d
        .cli()
        .args(["doctor", "--json"])
        .env("BANGER_CONFIG", d.root().join("none.toml")));
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let cat = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "image catalog")
        .cloned()
        .expect("catalog check");
    assert_eq!(cat["status"], "warn");
    let detail = cat["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("no entries") && detail.contains("builds debian-bookworm locally"),
        "{detail}"
    );
}

/// A file with a bzImage setup header (no payload: QEMU-only) and a cpio
/// initrd: enough for the daemon's checks, not for a boot.
fn fake_kernel(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut vmlinuz = vec![0u8; 4096];
    vmlinuz[0x1fe] = 0x55;
    vmlinuz[0x1ff] = 0xaa;
    vmlinuz[0x202..0x206].copy_from_slice(b"HdrS");
    let (k, i) = (dir.join("vmlinuz"), dir.join("initrd.img"));
    std::fs::write(&k, &vmlinuz).expect("write");
    std::fs::write(&i, b"070701000000").expect("write");
    (k, i)
}

#[test]
fn register_refuses_what_is_not_a_kernel_or_a_bootable_rootfs() {
    if banger_core::host::find_program("mkfs.ext4").is_none()
        || banger_core::host::find_program("debugfs").is_none()
    {
        eprintln!("SKIP: e2fsprogs (mkfs.ext4, debugfs) is not installed");
        return;
    }
    let d = Daemon::prepare().start();
    let dir = d.root().join("files");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a kernel\n").expect("write");
    let (vmlinuz, initrd) = fake_kernel(&dir);
    let s = |p: &std::path::Path| p.display().to_string();
    for (k, i) in [
        (&text, &initrd),
        (&std::path::PathBuf::from("/etc/passwd"), &initrd),
    ] {
        let (code, _, err) = run(d.cli().args([
            "kernel",
            "register",
            "bad",
            "--vmlinuz",
            &s(k),
            "--initrd",
            &s(i),
        ]));
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("not a Linux kernel"), "{err}");
    }
    let (code, _, err) = run(d.cli().args([
        "kernel",
        "register",
        "bad",
        "--vmlinuz",
        &s(&vmlinuz),
        "--initrd",
        &s(&text),
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not an initramfs"), "{err}");
    assert!(names(&d, "kernel").is_empty(), "nothing registered");

    let (code, _, err) = run(d.cli().args([
        "kernel",
        "register",
        "k",
        "--vmlinuz",
        &s(&vmlinuz),
        "--initrd",
        &s(&initrd),
    ]));
    assert_eq!(code, 0, "{err}");
    // an ext4 with no init anywhere the kernel looks
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).expect("mkdir");
    std::fs::write(tree.join("etc/hostname"), "x\n").expect("write");
    let rootfs = dir.join("rootfs.ext4");
    banger_image::ext4::make_ext4(&tree, &rootfs, 16 << 20, &Default::default()).expect("mkfs");
    let (code, _, err) = run(d.cli().args([
        "image",
        "register",
        "noinit",
        "--rootfs",
        &s(&rootfs),
        "--kernel",
        "k",
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("has no init"), "{err}");
    assert!(names(&d, "image").is_empty(), "nothing registered");
}

#[test]
fn one_set_of_limits_and_flags_checked_before_anything_is_made() {
    let d = Daemon::prepare().start();
    let home = d.root().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let cfg = d.root().join("config.toml");
    // config takes only what the daemon would take
    std::fs::write(&cfg, "[vm_defaults]\nvcpu = 48\n").expect("write");
    let (code, _, err) = run(d
        .cli()
        .args(["config", "show", "--file"])
        .env("BANGER_CONFIG", &cfg));
    assert_eq!(code, 1);
    assert!(err.contains("vcpu 48 is outside 1..=32"), "{err}");
    std::fs::remove_file(&cfg).expect("rm");

    for (flag, value, want) in [
        ("--vcpu", "0", "invalid --vcpu"),
        ("--vcpu", "48", "vcpu 48 is outside 1..=32"),
        ("--memory", "64", "memory 64 MiB is outside"),
        ("--disk", "1M", "disk 1M is outside"),
        ("--image", "Bad?", "invalid image name"),
    ] {
        for dry in [true, false] {
            let mut cmd = d.cli();
            cmd.args(["vm", "run", flag, value])
                .env("HOME", &home)
                .env("BANGER_CONFIG", &cfg);
            if dry {
                cmd.arg("--dry-run");
            }
            let (code, _, err) = run(&mut cmd);
            assert_eq!(code, 1, "{flag} {value}: {err}");
            assert!(err.contains(want), "{flag} {value}: {err}");
        }
    }
    assert!(
        !home.join(".local/state/banger/ssh").exists(),
        "no key was made for a refused request"
    );

    // A valid dry run: checked whole by the daemon, spec printed, nothing made.
    let (code, out, err) = run(d
        .cli()
        .args([
            "vm",
            "run",
            "--dry-run",
            "--vcpu",
            "2",
            "--memory",
            "1G",
            "--name",
            "dry",
        ])
        .env("HOME", &home)
        .env("BANGER_CONFIG", &cfg));
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("spec: 2 vCPU (flag), 1024 MiB RAM (flag)"),
        "{err}"
    );
    assert!(err.contains("debian-bookworm is not here yet"), "{err}");
    assert!(names(&d, "vm").is_empty());
    assert!(!home.join(".local/state/banger/ssh").exists());
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused() {
    let first = Daemon::prepare().start();
    let out = Command::new(common::bin("bangerd"))
        .arg("--socket")
        .arg(first.root().join("run/other.sock"))
        .arg("--state-dir")
        .arg(first.state_dir())
        .arg("--cache-dir")
        .arg(first.root().join("cache2"))
        .arg("--config")
        .arg(first.root().join("none.toml"))
        .arg("--no-network")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "another bangerd (pid {}) is using the state directory",
            first.pid()
        )),
        "{err}"
    );
    let (code, _, _) = run(first.cli().args(["vm", "list"]));
    assert_eq!(code, 0, "the first one still serves");
}

#[test]
fn ssh_config_install_keeps_a_symlink_and_writes_the_included_file_at_once() {
    let d = Daemon::prepare().start();
    for daemon_up in [true, false] {
        let home = tempfile::tempdir().expect("home");
        let dotfiles = home.path().join("dotfiles");
        std::fs::create_dir_all(&dotfiles).expect("mkdir");
        std::fs::create_dir_all(home.path().join(".ssh")).expect("mkdir");
        std::fs::write(dotfiles.join("ssh"), "Host work\n  User me\n").expect("write");
        let link = home.path().join(".ssh/config");
        std::os::unix::fs::symlink("../dotfiles/ssh", &link).expect("ln");
        let mut c = d.cli();
        c.args(["ssh-config", "--install"])
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME");
        if !daemon_up {
            c.env("BANGER_SOCKET", home.path().join("no-daemon.sock"));
        }
        let (code, out, err) = run(&mut c);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            std::fs::symlink_metadata(&link)
                .expect("meta")
                .file_type()
                .is_symlink(),
            "~/.ssh/config is still a symlink"
        );
        let edited = std::fs::read_to_string(dotfiles.join("ssh")).expect("read");
        assert!(
            edited.contains("Include ~/.config/banger/ssh_config")
                && edited.ends_with("Host work\n  User me\n"),
            "{edited}"
        );
        let included = home.path().join(".config/banger/ssh_config");
        let text = std::fs::read_to_string(&included)
            .unwrap_or_else(|e| panic!("{} exists at once: {e}\n{out}{err}", included.display()));
        assert_eq!(
            text.contains("Host *.vm"),
            daemon_up,
            "entries when the daemon answers, a placeholder otherwise: {text}"
        );
    }
}

/// `config show` as the daemon reports it, parsed.
fn running_config(d: &Daemon) -> serde_json::Value {
    let (code, out, err) = run(d.cli().args(["config", "show", "--json"]));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("json")
}

fn config_value(v: &serde_json::Value, key: &str) -> serde_json::Value {
    v["values"]
        .as_array()
        .expect("values")
        .iter()
        .find(|r| r["key"] == key)
        .map(|r| r["value"].clone())
        .unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn config_show_is_what_the_daemon_loaded_and_sighup_reloads_it() {
    let d = Daemon::prepare();
    let file = d.root().join("config.toml");
    std::fs::write(&file, "default_image_name = \"one\"\n").expect("write");
    let d = d.start();
    let v = running_config(&d);
    assert_eq!(v["from"], "daemon", "{v}");
    assert_eq!(v["file"], file.display().to_string());
    assert_eq!(config_value(&v, "default_image_name"), "one");
    assert_eq!(v["changed_since_load"], false);

    // Edited: the daemon still runs with the old value and says so.
    std::fs::write(&file, "default_image_name = \"two\"\n").expect("write");
    let v = running_config(&d);
    assert_eq!(config_value(&v, "default_image_name"), "one");
    assert_eq!(v["changed_since_load"], true);
    let (_, out, _) = run(d.cli().arg("doctor"));
    let line = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("config"))
        .unwrap_or_else(|| panic!("doctor has a config line:\n{out}"));
    assert!(
        line.starts_with("warn") && line.contains("changed since bangerd loaded it"),
        "{line}"
    );
    let (_, out, _) = run(d.cli().args(["config", "show"]));
    assert!(out.contains("the file changed since"), "{out}");
    // --file shows the file as it would load now.
    let (code, out, err) = run(d
        .cli()
        .args(["config", "show", "--file", "--json"])
        .env("BANGER_CONFIG", &file));
    assert_eq!(code, 0, "{err}");
    let f: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (f["from"].as_str(), config_value(&f, "default_image_name")),
        (Some("file"), "two".into())
    );

    // SIGHUP applies it.
    // SAFETY: signalling the daemon this test started, by its pid.
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = running_config(&d);
        if config_value(&v, "default_image_name") == "two" {
            assert_eq!(v["changed_since_load"], false);
            assert_eq!(v["last_reload"]["outcome"], "applied", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A key wired into the running host: nothing applied, restart named.
    std::fs::write(
        &file,
        "default_image_name = \"three\"\n[network]\nbridge = \"banger7\"\n",
    )
    .expect("write");
    let (code, out, _) = run(d.cli().args(["config", "reload"]));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("network.bridge") && out.contains("restart"),
        "{out}"
    );
    assert_eq!(
        config_value(&running_config(&d), "default_image_name"),
        "two"
    );
    // An invalid file: refused with its error, the daemon keeps running.
    std::fs::write(&file, "default_image_name = [\n").expect("write");
    let (code, out, _) = run(d.cli().args(["config", "reload"]));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("invalid") && out.contains("config.toml:"),
        "{out}"
    );
    assert_eq!(
        config_value(&running_config(&d), "default_image_name"),
        "two"
    );
}
