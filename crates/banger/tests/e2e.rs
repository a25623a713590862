//! End to end with real guests: the root helper and the owner daemon run
//! inside a network namespace this test creates (and removes), guests boot
//! under the qemu driver (TCG here), and the CLI drives everything the way a
//! user would. Skips with a message where it cannot run (not root, no qemu,
//! no vhost-device-vsock, no mmdebstrap).
//!
//! One test function on purpose: the daemon, the image and the guests are
//! expensive, and the scenarios below run in order against them.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "e2e-minimal";

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([
            PathBuf::from("/usr/sbin"),
            PathBuf::from("/root/.cargo/bin"),
        ])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespace, bridge, taps)".into());
    }
    for tool in [
        "qemu-system-x86_64",
        "mmdebstrap",
        "ip",
        "nft",
        "ssh",
        "dig",
        "vhost-device-vsock",
    ] {
        if which(tool).is_none() {
            return Some(format!(
                "{tool} is not installed (scripts/install-deps installs it)"
            ));
        }
    }
    None
}

/// Runs `cmd` with a deadline; a hung command fails the test instead of
/// hanging CI.
fn run(mut cmd: Command, timeout: Duration) -> (i32, String, String) {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out after {timeout:?}: {desc}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let code = status.code().unwrap_or(-1);
    (code, t_out.join().expect("out"), t_err.join().expect("err"))
}

struct Env {
    ns: String,
    dir: tempfile::TempDir,
    helper: Option<Child>,
    daemon: Option<Child>,
}

impl Env {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn socket(&self) -> PathBuf {
        self.path("run/bangerd.sock")
    }
    fn home(&self) -> PathBuf {
        self.path("home")
    }

    fn start() -> Env {
        let ns = format!("banger-e2e-{}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .expect("ip");
        assert!(st.success(), "ip netns add {ns}");
        let dir = tempfile::Builder::new()
            .prefix("bgr-e2e")
            .tempdir()
            .expect("tmp");
        let env = Env {
            ns,
            dir,
            helper: None,
            daemon: None,
        };
        env.netns(&["ip", "link", "set", "lo", "up"]);
        std::fs::create_dir_all(env.home().join(".config/banger")).expect("home");
        env
    }

    fn netns(&self, argv: &[&str]) -> (i32, String, String) {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).args(argv);
        run(c, Duration::from_secs(60))
    }

    fn spawn_in_ns(&self, bin: &Path, args: &[String], log: &str) -> Child {
        let logf = std::fs::File::create(self.path(log)).expect("log");
        Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg("env")
            .arg(format!("HOME={}", self.home().display()))
            .arg("NO_COLOR=1")
            .arg(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn")
    }

    fn start_daemons(&mut self) {
        let root_sock = self.path("root/root.sock");
        self.helper = Some(self.spawn_in_ns(
            &common::bin("bangerd-root"),
            &[
                "--socket".into(),
                root_sock.display().to_string(),
                "--owner-uid".into(),
                "0".into(),
            ],
            "bangerd-root.log",
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !root_sock.exists() {
            assert!(
                Instant::now() < deadline,
                "bangerd-root did not come up: {}",
                self.log("bangerd-root.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.start_daemon();
    }

    fn start_daemon(&mut self) {
        let root_sock = self.path("root/root.sock");
        let mut args: Vec<String> = vec![
            "--socket".into(),
            self.socket().display().to_string(),
            "--state-dir".into(),
            self.path("state").display().to_string(),
            "--cache-dir".into(),
            self.path("cache").display().to_string(),
            "--root-socket".into(),
            root_sock.display().to_string(),
        ];
        args.push("--config".into());
        args.push(
            self.home()
                .join(".config/banger/config.toml")
                .display()
                .to_string(),
        );
        self.daemon = Some(self.spawn_in_ns(&common::bin("bangerd"), &args, "bangerd.log"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "bangerd did not come up: {}",
                self.log("bangerd.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM the daemon and wait for it to exit (bounded); VMs keep running.
    fn stop_daemon(&mut self) {
        let mut c = self.daemon.take().expect("daemon running");
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "bangerd ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        // keep the first run's log next to the second's
        let old = self.log("bangerd.log");
        std::fs::write(self.path("bangerd-1.log"), old).expect("save log");
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// `banger ARGS` as the user would run it, inside the namespace.
    fn banger(&self, args: &[&str], timeout: Duration) -> (i32, String, String) {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns])
            .arg("env")
            .arg(format!("HOME={}", self.home().display()))
            .arg(format!("BANGER_SOCKET={}", self.socket().display()))
            .arg("NO_COLOR=1")
            .arg(env!("CARGO_BIN_EXE_banger"))
            .args(args);
        let r = run(c, timeout);
        eprintln!("$ banger {} → {}\n{}{}", args.join(" "), r.0, r.1, r.2);
        r
    }

    fn vm_names(&self) -> Vec<String> {
        let (code, out, _) = self.banger(&["vm", "list", "--json"], Duration::from_secs(30));
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v.as_array()
            .expect("array")
            .iter()
            .filter_map(|x| x["name"].as_str().map(str::to_string))
            .collect()
    }

    fn dump_diagnostics(&self) {
        eprintln!(
            "----- bangerd.log -----\n{}",
            tail(&self.log("bangerd.log"), 60)
        );
        eprintln!(
            "----- bangerd-root.log -----\n{}",
            tail(&self.log("bangerd-root.log"), 30)
        );
        if let Ok(rd) = std::fs::read_dir(self.path("state/vms")) {
            for e in rd.flatten() {
                let c = std::fs::read_to_string(e.path().join("console.log")).unwrap_or_default();
                eprintln!(
                    "----- console of {} -----\n{}",
                    e.file_name().to_string_lossy(),
                    tail(&c, 80)
                );
            }
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Env {
    /// VMs outlive their daemon by design, so a test deletes its VMs before
    /// stopping the daemon, and kills any VMM it still finds by the pid its
    /// handle recorded.
    fn remove_vms(&self) {
        if self.daemon.is_some() && std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
            for name in self.vm_names() {
                let _ = self.banger(&["vm", "delete", &name], Duration::from_secs(120));
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.path("state/vms")) {
            for e in rd.flatten() {
                let Ok(text) = std::fs::read_to_string(e.path().join("vmm.json")) else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                let mut pids: Vec<i64> = v["helpers"]
                    .as_array()
                    .map(|h| {
                        h.iter()
                            .filter_map(|x| x["process"]["pid"].as_i64())
                            .collect()
                    })
                    .unwrap_or_default();
                pids.extend(v["process"]["pid"].as_i64());
                for pid in pids {
                    eprintln!("killing leftover VMM process {pid} of {:?}", e.file_name());
                    // SAFETY: a pid this test's daemon recorded for its own VMM.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_diagnostics();
        }
        self.remove_vms();
        for (name, child) in [
            ("bangerd", self.daemon.take()),
            ("bangerd-root", self.helper.take()),
        ] {
            if let Some(mut c) = child {
                // SAFETY: signalling our own child (the `ip netns exec` that
                // exec'd the daemon) by its pid.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    if Instant::now() > deadline {
                        eprintln!("{name} ignored SIGTERM; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// The static guest agent: `$BANGER_AGENT_BIN`, else built now.
fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BANGER_AGENT_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(root.join("scripts/build-agent-static"))
        .output()
        .expect("build agent");
    assert!(
        out.status.success(),
        "build-agent-static: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or_default(),
    )
}

/// The minimal golden image with the agent, built once and cached (keyed by
/// its inputs) so reruns do not rebuild it.
fn minimal_image(agent: &Path) -> banger_image::BuiltImage {
    let cache = banger_image::build::test_cache_dir();
    let mut opts = banger_image::BuildOptions::new(
        IMAGE,
        banger_image::Profile::Minimal,
        cache.join("unused"),
    );
    opts.agent = Some(banger_image::AgentPayload {
        binary: agent.to_path_buf(),
        unit: banger_agent::SYSTEMD_UNIT.to_string(),
    });
    banger_image::build::cached_build(&opts, &cache).expect("building the minimal test image")
}

fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git");
    assert!(st.success(), "git {args:?}");
}

fn make_repo(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["config", "user.email", "e2e@example.invalid"]);
    git(dir, &["config", "user.name", "e2e"]);
    std::fs::write(dir.join(".gitignore"), "ignored.txt\n").expect("w");
    std::fs::write(dir.join("tracked.txt"), "tracked\n").expect("w");
    std::fs::write(dir.join("src/main.sh"), "echo hi\n").expect("w");
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "init"]);
    std::fs::write(dir.join("untracked.txt"), "u\n").expect("w");
    std::fs::write(dir.join("ignored.txt"), "i\n").expect("w");
}

const LONG: Duration = Duration::from_secs(600);
const SHORT: Duration = Duration::from_secs(60);

#[test]
fn real_guests_end_to_end() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: real-guest end-to-end test: {why}");
        return;
    }
    let agent = agent_binary();
    let built = minimal_image(&agent);

    let mut env = Env::start();
    // file_sync: written into every new VM's /root
    let h = env.home();
    std::fs::create_dir_all(h.join(".aws")).expect("mkdir");
    std::fs::write(h.join(".aws/credentials"), "secret\n").expect("w");
    std::fs::create_dir_all(h.join("bin")).expect("mkdir");
    std::fs::write(h.join("bin/tool"), "#!/bin/sh\necho tool\n").expect("w");
    std::fs::write(
        h.join(".config/banger/config.toml"),
        "[[file_sync]]\nhost = \"~/.aws\"\nguest = \"~/.aws\"\n\n[[file_sync]]\nhost = \"~/bin/tool\"\nguest = \"~/bin/tool\"\nmode = \"0755\"\n",
    )
    .expect("config");
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("BANGER_AGENT_BIN", &agent) };
    env.start_daemons();

    // register the image the user way
    let kdir = built.dir.join("kernel");
    let (code, _, err) = env.banger(
        &[
            "kernel",
            "register",
            "e2e-kernel",
            "--vmlinuz",
            &kdir.join("vmlinuz").display().to_string(),
            "--initrd",
            &kdir.join("initrd.img").display().to_string(),
        ],
        LONG,
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = env.banger(
        &[
            "image",
            "register",
            IMAGE,
            "--rootfs",
            &built.rootfs.display().to_string(),
            "--kernel",
            "e2e-kernel",
        ],
        LONG,
    );
    assert_eq!(code, 0, "{err}");

    // --dry-run: exactly the tracked files, and no VM
    let repo = env.path("myrepo");
    make_repo(&repo);
    let repo_s = repo.display().to_string();
    let (code, out, _) = env.banger(&["vm", "run", "--dry-run", &repo_s], SHORT);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [".gitignore", "src/main.sh", "tracked.txt"]
    );
    assert!(env.vm_names().is_empty(), "--dry-run created nothing");

    // workspace + command + --rm: the command's status comes back, only
    // tracked files made it, and the VM is gone afterwards
    let checks = "test -f tracked.txt && test -f src/main.sh && test ! -e untracked.txt && test ! -e ignored.txt \
                  && test \"$(pwd)\" = /root/myrepo || exit 99; exit 7";
    let (code, out, err) = env.banger(
        &[
            "vm",
            "run",
            "--rm",
            "--image",
            IMAGE,
            "--vcpu",
            "2",
            "--memory",
            "1024",
            "--timings",
            &repo_s,
            "--",
            "sh",
            "-c",
            checks,
        ],
        LONG,
    );
    assert_eq!(code, 7, "stdout: {out}\nstderr: {err}");
    assert!(
        out.starts_with("spec: 2 vCPU (flag), 1024 MiB RAM (flag)"),
        "{out}"
    );
    assert!(err.contains("timing: boot"), "{err}");
    assert!(env.vm_names().is_empty(), "--rm deleted the VM");

    // --include-untracked ships untracked (never ignored) files
    let (code, out, err) = env.banger(
        &[
            "vm",
            "run",
            "--rm",
            "--image",
            IMAGE,
            "--vcpu",
            "2",
            "--memory",
            "1024",
            "--include-untracked",
            &repo_s,
            "--",
            "sh",
            "-c",
            "test -f untracked.txt && test ! -e ignored.txt && sleep 2 \
             && grep -q 'nothing to install' /root/.cache/banger/vm-run-tooling-myrepo.log",
        ],
        LONG,
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");

    // a long-lived VM: ssh with strict host key checking, exec, DNS
    let (code, out, err) = env.banger(
        &[
            "vm", "create", "--name", "box", "--image", IMAGE, "--vcpu", "2", "--memory", "1024",
        ],
        LONG,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("created box (running)"), "{out}");
    let (code, out, err) = env.banger(&["vm", "ssh", "box", "--", "uname", "-n"], LONG);
    assert_eq!((code, out.trim()), (0, "box"), "{err}");
    let (code, _, _) = env.banger(&["vm", "exec", "box", "--", "sh", "-c", "exit 5"], SHORT);
    assert_eq!(code, 5);
    let (code, out, _) = env.banger(
        &[
            "vm",
            "exec",
            "box",
            "--",
            "stat",
            "-c",
            "%a %U",
            "/root",
            "/root/.ssh",
            "/root/.ssh/authorized_keys",
            "/root/.aws/credentials",
            "/root/bin/tool",
        ],
        SHORT,
    );
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["700 root", "700 root", "600 root", "600 root", "755 root"]
    );
    let (code, out, _) = env.banger(
        &[
            "vm",
            "exec",
            "box",
            "--",
            "systemctl",
            "is-active",
            "multi-user.target",
        ],
        SHORT,
    );
    assert_eq!((code, out.trim()), (0, "active"));
    let (code, out, _) = env.banger(&["vm", "exec", "box", "--", "no-such-command"], SHORT);
    assert_eq!(code, 127, "{out}");

    // a daemon restart does not stop running VMs: they are re-adopted
    env.stop_daemon();
    env.start_daemon();
    let (code, out, _) = env.banger(&["vm", "exec", "box", "--", "cat", "/etc/hostname"], LONG);
    assert_eq!(
        (code, out.trim()),
        (0, "box"),
        "re-adopted VM still answers"
    );
    assert!(
        env.log("bangerd.log").contains("re-adopted running VM"),
        "{}",
        env.log("bangerd.log")
    );

    let (code, out, _) = env.banger(&["vm", "show", "box", "--json"], SHORT);
    assert_eq!(code, 0);
    let info: serde_json::Value = serde_json::from_str(&out).expect("json");
    let ip = info["ip"].as_str().expect("ip").to_string();
    // <name>.vm resolves through banger's DNS on the bridge; other names are refused
    let (code, out, _) = env.netns(&[
        "dig",
        "+short",
        "+time=2",
        "+tries=1",
        "@172.16.0.1",
        "box.vm",
        "A",
    ]);
    assert_eq!((code, out.trim()), (0, ip.as_str()));
    let (_, out, _) = env.netns(&["dig", "+time=2", "+tries=1", "@172.16.0.1", "nope.vm", "A"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    let (_, out, _) = env.netns(&[
        "dig",
        "+time=2",
        "+tries=1",
        "@172.16.0.1",
        "example.com",
        "A",
    ]);
    assert!(out.contains("status: REFUSED"), "{out}");
    // and the address it gave reaches a port in the guest: sshd's banner
    let probe = format!("exec 3<>/dev/tcp/{ip}/22; head -c 7 <&3");
    let (code, out, _) = env.netns(&["timeout", "20", "bash", "-c", &probe]);
    assert_eq!((code, out.as_str()), (0, "SSH-2.0"));
    // stop, start again, still works; logs exist
    let (code, out, _) = env.banger(&["vm", "stop", "box"], LONG);
    assert_eq!((code, out.trim()), (0, "box stopped"));
    let (code, out, _) = env.banger(&["vm", "start", "box"], LONG);
    assert_eq!((code, out.trim()), (0, "box running"));
    let (code, out, _) = env.banger(&["vm", "exec", "box", "--", "cat", "/etc/hostname"], LONG);
    assert_eq!((code, out.trim()), (0, "box"));
    let (code, out, _) = env.banger(&["vm", "logs", "box"], SHORT);
    assert_eq!(code, 0);
    assert!(!out.is_empty(), "console log is kept");

    // a VMM that dies shows as stopped, with why and the console's tail
    let (_, out, _) = env.banger(&["vm", "show", "box", "--json"], SHORT);
    let info: serde_json::Value = serde_json::from_str(&out).expect("json");
    let pid = info["pid"].as_i64().expect("pid");
    // SAFETY: the VMM pid our own daemon reports for our own VM.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        let (_, out, _) = env.banger(&["vm", "show", "box", "--json"], SHORT);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        if v["state"] == "stopped" {
            break v;
        }
        assert!(Instant::now() < deadline, "crash not noticed: {v}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let reason = info["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("exited unexpectedly") && reason.contains("console tail"),
        "{reason}"
    );

    // delete frees everything
    let (code, _, _) = env.banger(&["vm", "delete", "box"], LONG);
    assert_eq!(code, 0);
    assert!(env.vm_names().is_empty());
    assert!(!env.path("state/vms/box").exists(), "VM directory removed");
    let kh = std::fs::read_to_string(env.path("state/ssh/known_hosts")).unwrap_or_default();
    assert!(!kh.contains("box.vm"), "host key unpinned: {kh}");
    let (_, out, _) = env.netns(&["ip", "-o", "link", "show", "type", "tun"]);
    assert!(!out.contains("bangertap"), "taps removed: {out}");
}
