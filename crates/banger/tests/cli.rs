//! Black-box tests of the `banger` CLI against a real `bangerd`.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Daemon, banger, raw_http};

fn stdout_of(cmd: &mut std::process::Command) -> (i32, String, String) {
    let out = cmd.output().expect("run banger");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every command path, for the help snapshot.
const COMMANDS: &[&str] = &[
    "",
    "vm",
    "vm run",
    "vm create",
    "vm start",
    "vm stop",
    "vm restart",
    "vm delete",
    "vm list",
    "vm show",
    "vm ssh",
    "vm logs",
    "vm exec",
    "vm cp",
    "image",
    "image pull",
    "image build",
    "image list",
    "image show",
    "image delete",
    "image register",
    "image bundle",
    "image keygen",
    "kernel",
    "kernel list",
    "kernel register",
    "kernel delete",
    "doctor",
    "config",
    "config show",
    "system",
    "system install",
    "system status",
    "system restart",
    "system uninstall",
    "system run",
    "ssh-config",
    "completion",
];

#[test]
fn help_tree_snapshot() {
    let mut all = String::new();
    for path in COMMANDS {
        let mut cmd = banger();
        cmd.args(path.split_whitespace())
            .arg("--help")
            .env("COLUMNS", "100");
        let (code, out, err) = stdout_of(&mut cmd);
        assert_eq!(code, 0, "banger {path} --help failed: {err}");
        all.push_str(&format!("===== banger {path} --help\n{out}\n"));
    }
    insta::assert_snapshot!("help_tree", all);
}

#[test]
fn version_flag() {
    let (code, out, _) = stdout_of(banger().arg("--version"));
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("banger {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn daemon_down_says_how_to_start_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("nope.sock");
    let (code, out, err) = stdout_of(banger().args(["vm", "list"]).env("BANGER_SOCKET", &sock));
    assert_eq!(code, 1, "stdout: {out}");
    assert!(out.is_empty());
    assert!(err.contains("bangerd is not running"), "{err}");
    assert!(err.contains(&sock.display().to_string()), "{err}");
    assert!(
        err.contains("banger system install") && err.contains("banger system run"),
        "{err}"
    );
}

#[test]
fn daemon_serves_lists_and_typed_errors() {
    let mut d = Daemon::prepare().start();

    // the socket is the owner's alone
    let mode = std::fs::metadata(&d.socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let state_mode = std::fs::metadata(d.state_dir())
        .expect("state")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(state_mode, 0o700);

    for what in [["vm", "list"], ["image", "list"], ["kernel", "list"]] {
        let (code, out, err) = stdout_of(d.cli().args(what).arg("--json"));
        assert_eq!(code, 0, "{what:?}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v, serde_json::json!([]), "{what:?}");
    }
    let (code, out, _) = stdout_of(d.cli().args(["vm", "list"]));
    assert_eq!(code, 0);
    assert!(out.contains("No VMs"), "{out}");

    let (code, _, err) = stdout_of(d.cli().args(["vm", "show", "ghost"]));
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "error: no VM named \"ghost\"");

    // a bad name is refused by the CLI before anything is sent
    let (code, _, err) = stdout_of(d.cli().args(["vm", "create", "--name", "Not_A_Label"]));
    assert_eq!(code, 1);
    assert!(err.contains("invalid VM name \"Not_A_Label\""), "{err}");

    // malformed JSON and unknown routes get typed 4xx answers
    let body = "{not json";
    let req = format!(
        "POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let ans = raw_http(&d.socket, req.as_bytes());
    assert!(ans.starts_with("HTTP/1.1 400"), "{ans}");
    assert!(ans.contains(r#""kind":"bad_request""#), "{ans}");
    let ans = raw_http(
        &d.socket,
        b"GET /v9/whatever HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(ans.starts_with("HTTP/1.1 404"), "{ans}");
    assert!(ans.contains(r#""kind":"unknown_route""#), "{ans}");
    // a query or path the extractors refuse: the same JSON error shape
    for (req, what) in [
        (&b"POST /v1/vms/x/ready?timeout_secs=soon HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..], "malformed query"),
        (b"GET /v1/vms/%ff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "malformed path"),
    ] {
        let ans = raw_http(&d.socket, req);
        assert!(ans.starts_with("HTTP/1.1 400"), "{ans}");
        assert!(ans.contains("application/json"), "{ans}");
        assert!(ans.contains(r#""kind":"bad_request""#) && ans.contains(what), "{ans}");
    }
    let ans = raw_http(&d.socket, b"garbage\r\n\r\n");
    assert!(ans.is_empty() || ans.starts_with("HTTP/1.1 400"), "{ans}");

    // and it keeps serving
    let (code, out, _) = stdout_of(d.cli().args(["vm", "list", "--json"]));
    assert_eq!((code, out.trim()), (0, "[]"));

    let st = d.terminate();
    assert!(st.success(), "bangerd exit: {st}; log:\n{}", d.log());
    assert!(!d.socket.exists(), "socket removed on shutdown");
    assert!(d.log().contains("SIGTERM: shutting down"), "{}", d.log());
}

#[test]
fn second_daemon_on_the_same_socket_is_refused() {
    let first = Daemon::prepare().start();
    let out = std::process::Command::new(common::bin("bangerd"))
        .arg("--socket")
        .arg(&first.socket)
        .arg("--state-dir")
        .arg(first.root().join("state2"))
        .arg("--cache-dir")
        .arg(first.root().join("cache2"))
        .arg("--config")
        .arg(first.root().join("none.toml"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another bangerd is already serving"), "{err}");
    // the first one still answers
    let (code, _, _) = stdout_of(first.cli().args(["vm", "list"]));
    assert_eq!(code, 0);
}

#[test]
fn interrupted_create_is_cleaned_up_on_start() {
    let d = Daemon::prepare();
    std::fs::create_dir_all(d.state_dir()).expect("state");
    {
        let store = banger_store::Store::open(&d.state_dir().join("state.db")).expect("store");
        store
            .insert_vm(
                &seed_vm("half-made", banger_proto::VmState::Creating),
                None,
                "",
            )
            .expect("seed");
        store
            .insert_vm(&seed_vm("kept", banger_proto::VmState::Stopped), None, "")
            .expect("seed");
    }
    std::fs::create_dir_all(d.state_dir().join("vms/half-made")).expect("vm dir");
    std::fs::create_dir_all(d.state_dir().join("tmp/pull-123")).expect("tmp");
    let d = d.start();
    let (code, out, _) = stdout_of(d.cli().args(["vm", "list", "--json"]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let names: Vec<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert_eq!(names, ["kept"]);
    assert!(!d.state_dir().join("vms/half-made").exists());
    assert!(!d.state_dir().join("tmp/pull-123").exists());
}

fn seed_vm(name: &str, state: banger_proto::VmState) -> banger_store::VmRecord {
    banger_store::VmRecord {
        name: name.into(),
        state,
        image: "img".into(),
        kernel: "k".into(),
        vcpu: 1,
        memory_mib: 512,
        disk_bytes: 1 << 30,
        mac: format!("02:00:00:00:00:{:02x}", name.len()),
        ip: None,
        vmm: "qemu".into(),
        pid: None,
        pid_start: None,
        reason: None,
        no_egress: false,
        created_at: 1,
        extra: "{}".into(),
    }
}

#[test]
fn vm_list_json_shape() {
    let d = Daemon::prepare();
    std::fs::create_dir_all(d.state_dir()).expect("state");
    {
        let store = banger_store::Store::open(&d.state_dir().join("state.db")).expect("store");
        store
            .insert_vm(&seed_vm("shape", banger_proto::VmState::Stopped), None, "")
            .expect("seed");
    }
    let d = d.start();
    let (code, out, err) = stdout_of(d.cli().args(["vm", "list", "--json"]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    insta::assert_json_snapshot!("vm_list_json", v);
    let (code, out, _) = stdout_of(d.cli().args(["vm", "show", "shape", "--json"]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["name"], "shape");
    assert_eq!(v["state"], "stopped");
}

#[test]
fn config_show_reports_provenance_and_rejects_bad_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "vmm = \"qemu\"\n[vm_defaults]\nvcpu = 3\n").expect("write");
    let (code, out, err) = stdout_of(
        banger()
            .args(["config", "show", "--json"])
            .env("BANGER_SOCKET", dir.path().join("no-daemon.sock"))
            .env("BANGER_CONFIG", &cfg),
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let rows = v["values"].as_array().expect("values");
    let get = |k: &str| rows.iter().find(|r| r["key"] == k).cloned().expect(k);
    assert_eq!(get("vmm")["value"], "qemu");
    assert_eq!(get("vmm")["source"], "config");
    assert_eq!(get("vm_defaults.vcpu")["value"], 3);
    assert_eq!(get("vm_defaults.vcpu")["source"], "config");
    assert_eq!(get("vm_defaults.disk_size")["source"], "built_in");
    assert_eq!(get("default_image_name")["value"], "debian-bookworm");

    std::fs::write(&cfg, "[vm_defaults]\ndisk_size = \"big\"\n").expect("write");
    let (code, _, err) = stdout_of(banger().args(["config", "show"]).env("BANGER_CONFIG", &cfg));
    assert_eq!(code, 1);
    let want = format!(
        "error: {}:2:13: [vm_defaults] key `disk_size`: invalid size \"big\": it does not start with a number (use a whole number with a unit, like \"512M\", \"16G\" or \"1T\")",
        cfg.display()
    );
    assert_eq!(err.trim(), want);

    std::fs::write(&cfg, "ssh_key_path = \"id_ed25519\"\n").expect("write");
    let (code, _, err) = stdout_of(banger().args(["doctor"]).env("BANGER_CONFIG", &cfg));
    assert_eq!(code, 1);
    assert!(
        err.contains("relative path; use an absolute path or one starting with ~/"),
        "{err}"
    );
}

#[test]
fn doctor_json_is_truthful_about_this_host() {
    let dir = tempfile::tempdir().expect("tmp");
    let (code, out, err) = stdout_of(
        banger()
            .args(["doctor", "--json"])
            .env("BANGER_CONFIG", dir.path().join("none.toml"))
            .env("BANGER_SOCKET", dir.path().join("none.sock")),
    );
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    assert_eq!(code == 0, v["ok"] == true, "exit code follows ok");
    let names: Vec<&str> = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for want in [
        "architecture",
        "/dev/kvm",
        "cpu virtualization",
        "firecracker",
        "qemu-system-x86_64",
        "vmm",
        "image build",
        "mkfs.ext4",
        "ssh",
        "nft",
        "ip",
        "vm defaults",
        "bangerd",
    ] {
        assert!(names.contains(&want), "missing check {want}: {names:?}");
    }
    for k in ["vcpu", "memory_mib", "disk_bytes"] {
        assert!(
            v["vm_defaults"][k]["source"].is_string(),
            "{k} has provenance"
        );
    }
    // On a host whose CPU flags lack vmx/svm, auto must not pick firecracker.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpuinfo.contains(" vmx") && !cpuinfo.contains(" svm") {
        assert_ne!(v["vmm"]["driver"], "firecracker");
        let cpu = v["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["name"] == "cpu virtualization")
            .expect("cpu check");
        assert_eq!(
            cpu["status"], "warn",
            "a KVM that cannot run guests is reported"
        );
        assert!(
            cpu["detail"].as_str().unwrap_or("").contains("cannot run"),
            "{cpu}"
        );
    }
}

#[test]
fn completion_scripts_load_in_their_shells() {
    for (shell, checker) in [
        ("bash", Some("bash")),
        ("zsh", Some("zsh")),
        ("fish", Some("fish")),
        ("powershell", None),
    ] {
        let (code, out, err) = stdout_of(banger().args(["completion", shell]));
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(
            out.contains("COMPLETE"),
            "{shell} script registers the dynamic completer"
        );
        let Some(checker) = checker else { continue };
        if banger_core::host::find_program(checker).is_none() {
            eprintln!("SKIP: {checker} is not installed; cannot syntax-check the {shell} script");
            continue;
        }
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("script");
        std::fs::write(&f, &out).expect("write");
        let st = std::process::Command::new(checker)
            .arg("-n")
            .arg(&f)
            .output()
            .expect("checker");
        assert!(
            st.status.success(),
            "{checker} -n rejected the script: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
}

fn complete(socket: &std::path::Path, words: &[&str]) -> Vec<String> {
    let out = banger()
        .env("COMPLETE", "fish")
        .env("BANGER_SOCKET", socket)
        .arg("--")
        .args(words)
        .output()
        .expect("complete");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or("").to_string())
        // flags are always offered; what matters is which values are
        .filter(|c| !c.starts_with('-'))
        .collect()
}

#[test]
fn completion_offers_live_names_only_when_the_daemon_runs() {
    let d = Daemon::prepare();
    std::fs::create_dir_all(d.state_dir()).expect("state");
    {
        let store = banger_store::Store::open(&d.state_dir().join("state.db")).expect("store");
        common::seed_kernel(&store, "k-live");
        common::seed_image(&store, "img-live", "k-live");
        store
            .insert_vm(
                &seed_vm("vm-live", banger_proto::VmState::Stopped),
                None,
                "",
            )
            .expect("vm");
    }
    let sock = d.socket.clone();
    // daemon down: no values at all (and no file-name fallback)
    assert_eq!(
        complete(&sock, &["banger", "vm", "show", ""]),
        Vec::<String>::new()
    );
    let d = d.start();
    assert_eq!(
        complete(&d.socket, &["banger", "vm", "show", ""]),
        ["vm-live"]
    );
    assert_eq!(
        complete(&d.socket, &["banger", "image", "delete", ""]),
        ["img-live"]
    );
    assert_eq!(
        complete(&d.socket, &["banger", "kernel", "delete", ""]),
        ["k-live"]
    );
    assert!(
        complete(&d.socket, &["banger", "vm", "run", "--image", ""])
            .contains(&"img-live".to_string())
    );
    // subcommands complete too
    assert!(complete(&d.socket, &["banger", "vm", ""]).contains(&"run".to_string()));
}
