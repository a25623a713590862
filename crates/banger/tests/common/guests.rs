//! The real-guest harness shared by the end-to-end tests: a network
//! namespace the test creates and removes, bangerd-root and bangerd inside
//! it, the CLI run as a user would, the cached minimal image with the static
//! agent, and a teardown that deletes VMs before stopping the daemons (VMs
//! outlive their daemon by design) and prints logs and guest consoles when
//! a test fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const LONG: Duration = Duration::from_secs(600);
pub const SHORT: Duration = Duration::from_secs(60);

/// The minimal image every e2e test registers; one cached build serves all.
pub const MINIMAL_IMAGE: &str = "e2e-minimal";

pub use banger_core::host::find_program as which;

/// Why a real-guest test cannot run here (it then prints SKIP and passes).
pub fn skip_reason(extra_tools: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespace, bridge, taps)".into());
    }
    let base = ["qemu-system-x86_64", "mmdebstrap", "ip", "nft", "debugfs"];
    for tool in base.iter().chain(extra_tools) {
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
pub fn run(cmd: Command, timeout: Duration) -> (i32, String, String) {
    run_with_input(cmd, None, timeout)
}

/// [`run`] with `input` written to the command's stdin (then closed).
pub fn run_with_input(
    mut cmd: Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> (i32, String, String) {
    let desc = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&bytes);
        });
    }
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

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// SIGTERM, then SIGKILL after a bounded wait.
fn stop_child(name: &str, mut c: Child) {
    // SAFETY: signalling our own child (`ip netns exec` exec's the program,
    // so this is its pid).
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("{name} ignored SIGTERM; killing it");
            let _ = c.kill();
            let _ = c.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A namespace with banger's daemons in it; torn down on drop.
pub struct GuestEnv {
    pub ns: String,
    pub dir: tempfile::TempDir,
    helper: Option<Child>,
    daemon: Option<Child>,
    /// Other processes the test started in the namespace (e.g. a registry),
    /// by name; their logs are `<name>.log`.
    extra: Vec<(String, Child)>,
}

impl GuestEnv {
    /// A fresh namespace `banger-<tag>-<pid>` with loopback up and an empty
    /// home for the user.
    pub fn start(tag: &str) -> GuestEnv {
        let ns = format!("banger-{tag}-{}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .expect("ip");
        assert!(st.success(), "ip netns add {ns}");
        let env = GuestEnv {
            ns,
            dir: tempfile::Builder::new()
                .prefix("bgr-e2e")
                .tempdir()
                .expect("tmp"),
            helper: None,
            daemon: None,
            extra: Vec::new(),
        };
        let (code, _, err) = env.netns(&["ip", "link", "set", "lo", "up"], SHORT);
        assert_eq!(code, 0, "{err}");
        std::fs::create_dir_all(env.home().join(".config/banger")).expect("home");
        env
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    pub fn socket(&self) -> PathBuf {
        self.path("run/bangerd.sock")
    }
    pub fn home(&self) -> PathBuf {
        self.path("home")
    }
    pub fn config_file(&self) -> PathBuf {
        self.home().join(".config/banger/config.toml")
    }
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    pub fn netns(&self, argv: &[&str], timeout: Duration) -> (i32, String, String) {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).args(argv);
        run(c, timeout)
    }

    pub fn spawn_in_ns(&self, bin: &Path, args: &[String], log: &str) -> Child {
        let logf = std::fs::File::create(self.path(log)).expect("log");
        Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg("env")
            .arg(format!("HOME={}", self.home().display()))
            .arg("NO_COLOR=1")
            .arg(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup"))
            .stderr(logf)
            .spawn()
            .expect("spawn")
    }

    /// Keeps a process the test started in the namespace, stopped on drop.
    pub fn adopt_child(&mut self, name: &str, child: Child) {
        self.extra.push((name.to_string(), child));
    }

    pub fn start_daemons(&mut self) {
        self.start_daemons_with(&[]);
    }

    /// [`GuestEnv::start_daemons`] with more arguments for bangerd-root (its network
    /// policy, e.g. `--isolate-vms false`).
    pub fn start_daemons_with(&mut self, helper_args: &[&str]) {
        let root_sock = self.path("root/root.sock");
        let mut args: Vec<String> = vec![
            "--socket".into(),
            root_sock.display().to_string(),
            "--owner-uid".into(),
            "0".into(),
        ];
        args.extend(helper_args.iter().map(|a| a.to_string()));
        self.helper =
            Some(self.spawn_in_ns(&super::bin("bangerd-root"), &args, "bangerd-root.log"));
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

    pub fn start_daemon(&mut self) {
        if !self.config_file().exists() {
            std::fs::write(self.config_file(), "").expect("config");
        }
        let args: Vec<String> = vec![
            "--socket".into(),
            self.socket().display().to_string(),
            "--state-dir".into(),
            self.path("state").display().to_string(),
            "--cache-dir".into(),
            self.path("cache").display().to_string(),
            "--root-socket".into(),
            self.path("root/root.sock").display().to_string(),
            "--config".into(),
            self.config_file().display().to_string(),
        ];
        self.daemon = Some(self.spawn_in_ns(&super::bin("bangerd"), &args, "bangerd.log"));
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

    /// SIGTERM the daemon and wait for it to exit (bounded); VMs keep
    /// running. Its log is kept as `bangerd-1.log`.
    pub fn stop_daemon(&mut self) {
        let c = self.daemon.take().expect("daemon running");
        stop_child("bangerd", c);
        std::fs::write(self.path("bangerd-1.log"), self.log("bangerd.log")).expect("save log");
    }

    /// The argv prefix that runs a program in the namespace with the user's
    /// environment (HOME, BANGER_SOCKET, NO_COLOR).
    pub fn user_env_argv(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.ns.clone(),
            "env".into(),
            format!("HOME={}", self.home().display()),
            format!("BANGER_SOCKET={}", self.socket().display()),
            "NO_COLOR=1".into(),
        ]
    }

    /// `banger ARGS` as the user would run it, inside the namespace.
    pub fn banger(&self, args: &[&str], timeout: Duration) -> (i32, String, String) {
        let argv = self.user_env_argv();
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..])
            .arg(env!("CARGO_BIN_EXE_banger"))
            .args(args);
        let r = run(c, timeout);
        eprintln!("$ banger {} → {}\n{}{}", args.join(" "), r.0, r.1, r.2);
        r
    }

    pub fn vm_names(&self) -> Vec<String> {
        let (code, out, _) = self.banger(&["vm", "list", "--json"], SHORT);
        if code != 0 {
            return vec![];
        }
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Registers the cached minimal image (kernel + rootfs) the user way.
    pub fn register_minimal(&self, built: &banger_image::BuiltImage, kernel: &str) {
        let kdir = built.dir.join("kernel");
        let (code, _, err) = self.banger(
            &[
                "kernel",
                "register",
                kernel,
                "--vmlinuz",
                &kdir.join("vmlinuz").display().to_string(),
                "--initrd",
                &kdir.join("initrd.img").display().to_string(),
            ],
            LONG,
        );
        assert_eq!(code, 0, "{err}");
        let (code, _, err) = self.banger(
            &[
                "image",
                "register",
                MINIMAL_IMAGE,
                "--rootfs",
                &built.rootfs.display().to_string(),
                "--kernel",
                kernel,
            ],
            LONG,
        );
        assert_eq!(code, 0, "{err}");
    }

    pub fn print_consoles(&self) {
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

    fn dump_diagnostics(&self) {
        eprintln!(
            "----- bangerd.log -----\n{}",
            tail(&self.log("bangerd.log"), 80)
        );
        eprintln!(
            "----- bangerd-root.log -----\n{}",
            tail(&self.log("bangerd-root.log"), 30)
        );
        for (name, _) in &self.extra {
            eprintln!(
                "----- {name}.log -----\n{}",
                tail(&self.log(&format!("{name}.log")), 20)
            );
        }
        self.print_consoles();
    }

    /// Deletes VMs through the daemon, then kills any VMM still recorded
    /// by the pid its handle holds.
    fn remove_vms(&self) {
        if self.daemon.is_some() && std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
            for name in self.vm_names() {
                let _ = self.banger(&["vm", "delete", &name], Duration::from_secs(120));
            }
        }
        let Ok(rd) = std::fs::read_dir(self.path("state/vms")) else {
            return;
        };
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

impl Drop for GuestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_diagnostics();
        }
        self.remove_vms();
        if let Some(c) = self.daemon.take() {
            stop_child("bangerd", c);
        }
        if let Some(c) = self.helper.take() {
            stop_child("bangerd-root", c);
        }
        for (name, c) in self.extra.drain(..) {
            stop_child(&name, c);
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// The static guest agent (also banger-init): `$BANGER_AGENT_BIN`, else
/// built now.
pub fn agent_binary() -> PathBuf {
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
/// its inputs) so every e2e test and rerun shares it.
pub fn minimal_image(agent: &Path) -> banger_image::BuiltImage {
    let cache = banger_testkit::test_cache_dir();
    let mut opts = banger_image::BuildOptions::new(
        MINIMAL_IMAGE,
        banger_image::Profile::Minimal,
        cache.join("unused"),
    );
    opts.agent = Some(banger_image::AgentPayload {
        binary: agent.to_path_buf(),
        unit: banger_agent::SYSTEMD_UNIT.to_string(),
    });
    banger_image::build::cached_build(&opts, &cache).expect("building the minimal test image")
}
