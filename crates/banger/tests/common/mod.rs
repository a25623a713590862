//! Shared harness for the CLI's black-box tests: real binaries, a real
//! daemon on a temp socket.

#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod default_image;
pub mod guests;
pub mod outside;

/// `git ARGS` in `dir`, which must succeed.
pub fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git");
    assert!(st.success(), "git {args:?}");
}

/// Path of a workspace binary, building it once if this test run did not.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    // Tests run from target/<profile>/deps/; binaries live one level up.
    let exe = std::env::current_exe().expect("test exe path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf();
    let p = dir.join(name);
    if !p.exists() {
        BUILT.get_or_init(|| {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--bins", "--workspace"])
                .status()
                .expect("cargo build");
            assert!(status.success(), "building workspace binaries failed");
        });
    }
    assert!(p.exists(), "{} was not built", p.display());
    p
}

pub fn banger() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_banger"));
    c.env_remove("BANGER_SOCKET")
        .env_remove("BANGER_CONFIG")
        .env("NO_COLOR", "1");
    c
}

/// A real `bangerd` on a temp socket; killed on drop.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Prepares a temp dir; call [`Daemon::start`] to run the daemon.
    pub fn prepare() -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run/bangerd.sock");
        Daemon {
            dir,
            socket,
            child: None,
        }
    }

    pub fn start(mut self) -> Daemon {
        let log = std::fs::File::create(self.dir.path().join("bangerd.log")).expect("log");
        let child = Command::new(bin("bangerd"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn bangerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&self.socket).is_err() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("bangerd exited early ({st}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "bangerd did not come up; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bangerd.log")).unwrap_or_default()
    }

    pub fn cli(&self) -> Command {
        let mut c = banger();
        c.env("BANGER_SOCKET", &self.socket);
        c
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("bangerd ignored SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends raw bytes to the socket and returns the raw HTTP answer.
pub fn raw_http(socket: &Path, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A kernel row pointing nowhere: enough for listing, naming and deleting.
pub fn seed_kernel(store: &banger_store::Store, name: &str) {
    store
        .insert_kernel(&banger_store::KernelRecord {
            name: name.into(),
            version: "6.1".into(),
            dir: "/nonexistent".into(),
            has_vmlinux: false,
            pvh: false,
            created_at: 1,
        })
        .expect("kernel");
}

/// An image row pointing nowhere, booted by `kernel`.
pub fn seed_image(store: &banger_store::Store, name: &str, kernel: &str) {
    store
        .insert_image(&banger_store::ImageRecord {
            name: name.into(),
            digest: "sha256:00".into(),
            kernel: kernel.into(),
            size_bytes: 1,
            origin: "test".into(),
            dir: "/nonexistent".into(),
            created_at: 1,
        })
        .expect("image");
}
