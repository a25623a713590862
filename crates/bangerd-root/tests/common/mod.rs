//! Shared harness of the helper's privileged tests: network namespaces the
//! test creates and removes, the real `bangerd-root` started inside one,
//! and one-line JSON calls to it. Nothing here reaches beyond the test's
//! own namespaces.

#![allow(dead_code)]

pub mod frames;
pub mod tap;
pub mod world;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct Netns(pub String);

impl Netns {
    pub fn new(suffix: &str) -> Netns {
        let name = format!("banger-t-{}-{suffix}", std::process::id());
        run("ip", &["netns", "add", &name]);
        Netns(name)
    }
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .expect("ip netns exec")
    }
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} in {}: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// The MAC address of a link in this namespace.
    pub fn mac_of(&self, link: &str) -> [u8; 6] {
        let v: Value =
            serde_json::from_str(&self.ip(&["-j", "link", "show", "dev", link])).expect("json");
        let text = v[0]["address"].as_str().expect("address");
        let mut mac = [0u8; 6];
        for (b, p) in mac.iter_mut().zip(text.split(':')) {
            *b = u8::from_str_radix(p, 16).expect("hex");
        }
        mac
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: bangerd-root netns test needs root");
        return false;
    }
    for tool in ["ip", "nft", "ping"] {
        if Command::new(tool).arg("-V").output().is_err() {
            eprintln!("SKIP: {tool} not found (Debian packages iproute2, nftables, iputils-ping)");
            return false;
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("SKIP: no /dev/net/tun");
        return false;
    }
    true
}

/// The real helper, running in a namespace; killed by its pid on drop.
pub struct Helper {
    pub child: Child,
    pub log: PathBuf,
    pub sock: PathBuf,
}

impl Helper {
    /// Start `bangerd-root` in `ns` with `--owner-uid owner` and `extra`
    /// arguments; waits (bounded) until it answers.
    pub fn start(ns: &Netns, dir: &Path, owner: u32, extra: &[&str]) -> Helper {
        let sock = dir.join("root.sock");
        let log = dir.join("helper.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_bangerd-root")])
            .arg("--socket")
            .arg(&sock)
            .args(["--owner-uid", &owner.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start bangerd-root");
        let mut h = Helper { child, log, sock };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&h.sock).is_err() {
            if let Ok(Some(st)) = h.child.try_wait() {
                panic!("bangerd-root exited early: {st}: {}", h.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "bangerd-root did not listen within 10s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        h
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn op(&self, body: Value) -> Value {
        op(&self.sock, body)
    }

    pub fn ok(&self, body: Value) -> Value {
        ok(&self.sock, body)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Killed by the pid we started, never by name.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- bangerd-root log ---\n{}", self.log_text());
        }
    }
}

pub fn call(sock: &Path, req: Value) -> Value {
    let mut s = UnixStream::connect(sock).expect("connect to helper");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut line = serde_json::to_vec(&req).expect("json");
    line.push(b'\n');
    s.write_all(&line).expect("write");
    let mut resp = String::new();
    BufReader::new(s).read_line(&mut resp).expect("read");
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("bad response {resp:?}: {e}"))
}

pub fn op(sock: &Path, body: Value) -> Value {
    let mut req = body;
    req["version"] = json!(banger_proto::root::ROOT_PROTOCOL_VERSION);
    call(sock, req)
}

pub fn ok(sock: &Path, body: Value) -> Value {
    let r = op(sock, body.clone());
    assert_eq!(r["status"], "ok", "{body} -> {r}");
    r["reply"].clone()
}
