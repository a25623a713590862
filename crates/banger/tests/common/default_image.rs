//! The image a new user gets: profile full, built by `banger image build`,
//! named `debian-bookworm`. A build takes minutes, so its result is kept in
//! the test cache (`$BANGER_TEST_CACHE/default-image/<inputs key>/`) and
//! later tests and runs register that copy the user way instead of
//! building again. The build needs the Debian mirror, which the test
//! namespace cannot reach (nothing leaves it), so it runs against a daemon
//! of its own in the host's namespace, started with `--no-network`. The key covers what decides the image's contents (the
//! recipe, package and unit lists, guest files, the agent's bytes), so a
//! change to any of them builds afresh.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::guests::{GuestEnv, LONG};

pub const DEFAULT_IMAGE: &str = banger_core::config::DEFAULT_IMAGE_NAME;
const KERNEL: &str = "e2e-default-kernel";
/// A full build downloads and installs ~950 MB of packages.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);

/// What identifies a default image built with this agent.
fn cache_dir(agent: &Path) -> PathBuf {
    let mut opts = banger_image::BuildOptions::new(
        DEFAULT_IMAGE,
        banger_image::Profile::Full,
        PathBuf::from("unused"),
    );
    opts.agent = Some(banger_image::AgentPayload {
        binary: agent.to_path_buf(),
        unit: banger_agent::SYSTEMD_UNIT.to_string(),
    });
    let key = banger_image::build::inputs_key(&opts).expect("hash the build inputs");
    banger_testkit::test_cache_dir()
        .join("default-image")
        .join(key)
}

/// An exclusive lock on `path` for as long as the file is open.
fn lock(path: &Path) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .expect("open lock file");
    // SAFETY: flock on a descriptor we own; blocks until the lock is ours.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(r, 0, "flock {}", path.display());
    f
}

/// Registers the cached build in `env`'s daemon, the user way.
fn register(env: &GuestEnv, dir: &Path) {
    let s = |f: &str| dir.join(f).display().to_string();
    let (code, _, err) = env.banger(
        &[
            "kernel",
            "register",
            KERNEL,
            "--vmlinuz",
            &s("vmlinuz"),
            "--initrd",
            &s("initrd.img"),
        ],
        LONG,
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = env.banger(
        &[
            "image",
            "register",
            DEFAULT_IMAGE,
            "--rootfs",
            &s("rootfs.ext4"),
            "--kernel",
            KERNEL,
        ],
        LONG,
    );
    assert_eq!(code, 0, "{err}");
}

/// Makes `debian-bookworm` exist in `env`'s daemon (whose agent is
/// `$BANGER_AGENT_BIN`); returns how (for the test's log).
pub fn ensure(env: &GuestEnv, agent: &Path) -> String {
    let dir = cache_dir(agent);
    let parent = dir.parent().expect("cache parent");
    std::fs::create_dir_all(parent).expect("create the test cache");
    let _lock = lock(&dir.with_extension("lock"));
    let files = ["rootfs.ext4", "vmlinuz", "initrd.img"].map(|f| dir.join(f));
    if files.iter().all(|f| f.is_file()) {
        register(env, &dir);
        return format!("registered the cached build in {}", dir.display());
    }
    let t = Instant::now();
    let builder = Builder::start();
    let (code, out, err) = builder.banger(&["image", "build"], BUILD_TIMEOUT);
    assert_eq!(
        code,
        0,
        "banger image build failed\n{out}\n{err}\n{}",
        builder.log()
    );
    let built = format!(
        "built by `banger image build` in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    // Keep a copy for later tests and runs: the rootfs and its kernel files.
    let (code, out, err) = builder.banger(&["image", "list", "--json"], LONG);
    assert_eq!(code, 0, "{err}");
    let images: serde_json::Value = serde_json::from_str(&out).expect("json");
    let img = images
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == DEFAULT_IMAGE))
        .expect("the built image is listed")
        .clone();
    let digest = img["digest"].as_str().expect("digest");
    let rootfs = builder
        .dir
        .path()
        .join("state/images")
        .join(digest.trim_start_matches("sha256:"))
        .join("rootfs.ext4");
    let kdir = builder
        .dir
        .path()
        .join("state/kernels")
        .join(img["kernel"].as_str().expect("kernel"));
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-default-image")
        .tempdir_in(parent)
        .expect("tmp dir in the cache");
    for (src, name) in [
        (rootfs, "rootfs.ext4"),
        (kdir.join("vmlinuz"), "vmlinuz"),
        (kdir.join("initrd.img"), "initrd.img"),
    ] {
        // cp keeps the rootfs sparse.
        let st = std::process::Command::new("cp")
            .arg("--sparse=always")
            .arg(&src)
            .arg(tmp.path().join(name))
            .status()
            .expect("cp");
        assert!(st.success(), "caching {}", src.display());
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, &dir).expect("move the cached image into place");
    drop(builder);
    register(env, &dir);
    format!("{built}; cached in {}", dir.display())
}

/// A daemon in the host's namespace for the build only (no VMs, no
/// network setup); killed on drop.
struct Builder {
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Builder {
    fn start() -> Builder {
        let dir = tempfile::Builder::new()
            .prefix("bgr-build")
            .tempdir()
            .expect("tmp");
        let p = |s: &str| dir.path().join(s);
        std::fs::write(p("config.toml"), "").expect("config");
        let log = std::fs::File::create(p("bangerd.log")).expect("log");
        let child = std::process::Command::new(super::bin("bangerd"))
            .arg("--no-network")
            .arg("--socket")
            .arg(p("run/bangerd.sock"))
            .arg("--state-dir")
            .arg(p("state"))
            .arg("--cache-dir")
            .arg(p("cache"))
            .arg("--config")
            .arg(p("config.toml"))
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn bangerd");
        let socket = p("run/bangerd.sock");
        let b = Builder { dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "build daemon did not come up: {}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bangerd.log")).unwrap_or_default()
    }

    fn banger(&self, args: &[&str], timeout: Duration) -> (i32, String, String) {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_banger"));
        c.env("BANGER_SOCKET", self.dir.path().join("run/bangerd.sock"))
            .env("NO_COLOR", "1")
            .args(args);
        super::guests::run(c, timeout)
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
