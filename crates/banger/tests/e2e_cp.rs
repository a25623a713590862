//! `banger vm cp` against a real guest, both directions: the same harness as
//! e2e.rs (its own network namespace, root helper and daemon, the cached
//! minimal image with the static agent). Skips with a message where it
//! cannot run (not root, no qemu, no vhost-device-vsock, no mmdebstrap).

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
        let ns = format!("banger-e2ecp-{}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .expect("ip");
        assert!(st.success(), "ip netns add {ns}");
        let dir = tempfile::Builder::new()
            .prefix("bgr-e2ecp")
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

const LONG: Duration = Duration::from_secs(600);
const SHORT: Duration = Duration::from_secs(60);

/// Every file, directory and symlink under `root`, with contents / targets,
/// relative and sorted: two trees are equal when these are.
fn snapshot(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("prefix").display().to_string();
            let ft = e.file_type().expect("file type");
            if ft.is_symlink() {
                out.push((
                    rel,
                    format!("-> {}", std::fs::read_link(&p).expect("link").display()),
                ));
            } else if ft.is_dir() {
                out.push((rel, "dir".into()));
                stack.push(p);
            } else {
                out.push((
                    rel,
                    String::from_utf8_lossy(&std::fs::read(&p).expect("read")).into_owned(),
                ));
            }
        }
    }
    out.sort();
    out
}

// The agent's own real-guest test uploads 20,000 files and scripts/bench-agent
// times it; here the copy semantics matter, not the volume.
const TREE_FILES: usize = 2_000;

fn make_tree(root: &Path) {
    for i in 0..TREE_FILES {
        let d = root.join(format!("d{:03}", i % 100));
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(format!("f{i:05}")), format!("file {i}\n")).expect("write");
    }
    std::fs::create_dir_all(root.join("empty")).expect("mkdir");
    std::os::unix::fs::symlink("../d000/f00000", root.join("d001/link")).expect("symlink");
}

#[test]
fn vm_cp_both_ways_with_a_real_guest() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: real-guest vm cp test: {why}");
        return;
    }
    let agent = agent_binary();
    let built = minimal_image(&agent);
    let mut env = Env::start();
    std::fs::write(env.home().join(".config/banger/config.toml"), "").expect("config");
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("BANGER_AGENT_BIN", &agent) };
    env.start_daemons();
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
    let (code, _, err) = env.banger(
        &[
            "vm", "create", "--name", "cpbox", "--image", IMAGE, "--vcpu", "2", "--memory", "1024",
        ],
        LONG,
    );
    assert_eq!(code, 0, "{err}");

    // bad arguments fail before touching any VM
    let (code, _, err) = env.banger(&["vm", "cp", "a", "b"], SHORT);
    assert_ne!(code, 0);
    assert!(err.contains("NAME:PATH"), "{err}");
    let (code, _, err) = env.banger(&["vm", "cp", "cpbox:/a", "cpbox:/b"], SHORT);
    assert_ne!(code, 0);
    assert!(err.contains("one side must be a host path"), "{err}");

    let tree = env.path("tree");
    make_tree(&tree);
    let tree_s = tree.display().to_string();
    let want = snapshot(&tree);

    // host -> guest: onto an existing directory (lands as /root/tree), while
    // the guest is possibly still booting (vm cp waits for readiness)
    let (code, _, err) = env.banger(&["vm", "cp", &tree_s, "cpbox:/root"], LONG);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = env.banger(&["vm", "exec", "cpbox", "--", "sh", "-c", "find /root/tree -type f | wc -l; cat /root/tree/d042/f00142; readlink /root/tree/d001/link"], SHORT);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            TREE_FILES.to_string().as_str(),
            "file 142",
            "../d000/f00000"
        ]
    );
    // onto a new name: becomes that name (a relative guest path is under /root)
    let (code, _, err) = env.banger(&["vm", "cp", &tree_s, "cpbox:renamed"], LONG);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = env.banger(
        &[
            "vm",
            "exec",
            "cpbox",
            "--",
            "cat",
            "/root/renamed/d000/f00000",
        ],
        SHORT,
    );
    assert_eq!((code, out.as_str()), (0, "file 0\n"));
    // a single file to a new name, then onto an existing directory
    let f = env.path("note.txt");
    std::fs::write(&f, "note\n").expect("w");
    let f_s = f.display().to_string();
    let (code, _, err) = env.banger(&["vm", "cp", &f_s, "cpbox:/tmp/renamed.txt"], SHORT);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = env.banger(&["vm", "cp", &f_s, "cpbox:/tmp"], SHORT);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = env.banger(
        &[
            "vm",
            "exec",
            "cpbox",
            "--",
            "cat",
            "/tmp/renamed.txt",
            "/tmp/note.txt",
        ],
        SHORT,
    );
    assert_eq!((code, out.as_str()), (0, "note\nnote\n"));
    // a directory never replaces a file; a missing parent is an error
    let (code, _, err) = env.banger(&["vm", "cp", &tree_s, "cpbox:/tmp/note.txt"], SHORT);
    assert_ne!(code, 0);
    assert!(err.contains("non-directory"), "{err}");
    let (code, _, err) = env.banger(&["vm", "cp", &f_s, "cpbox:/no/such/dir/x"], SHORT);
    assert_ne!(code, 0);
    assert!(err.contains("does not exist"), "{err}");

    // guest -> host: the tree comes back identical, under a new name
    let back = env.path("back");
    let (code, _, err) = env.banger(
        &["vm", "cp", "cpbox:/root/tree", &back.display().to_string()],
        LONG,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(snapshot(&back), want, "round trip changed the tree");
    // into an existing directory, under the guest name
    let into = env.path("into");
    std::fs::create_dir(&into).expect("mkdir");
    let (code, _, err) = env.banger(
        &[
            "vm",
            "cp",
            "cpbox:/etc/hostname",
            &into.display().to_string(),
        ],
        SHORT,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(into.join("hostname"))
            .expect("r")
            .trim(),
        "cpbox"
    );

    // a guest tree with a symlink pointing out of it is refused, and
    // nothing is written on the host
    let (code, _, _) = env.banger(
        &[
            "vm",
            "exec",
            "cpbox",
            "--",
            "sh",
            "-c",
            "mkdir -p /root/evil && echo x > /root/evil/ok && ln -s /etc/shadow /root/evil/pw",
        ],
        SHORT,
    );
    assert_eq!(code, 0);
    let evil = env.path("evil");
    let (code, _, err) = env.banger(
        &["vm", "cp", "cpbox:/root/evil", &evil.display().to_string()],
        SHORT,
    );
    assert_ne!(code, 0);
    assert!(err.contains("points outside"), "{err}");
    assert!(!evil.exists(), "a refused copy wrote {}", evil.display());
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".banger-cp-"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    // a missing guest path names the problem
    let (code, _, err) = env.banger(
        &[
            "vm",
            "cp",
            "cpbox:/no/such",
            &env.path("x").display().to_string(),
        ],
        SHORT,
    );
    assert_ne!(code, 0);
    assert!(err.contains("/no/such"), "{err}");

    let (code, _, _) = env.banger(&["vm", "delete", "cpbox"], LONG);
    assert_eq!(code, 0);
}
