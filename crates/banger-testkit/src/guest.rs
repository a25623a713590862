//! A minimal Debian bookworm guest for boot tests, built once and cached.
//!
//! Stand-in until `banger-image` can build the golden image: the recipe follows the BRIEF
//! (mmdebstrap rootfs, initramfs with virtio_mmio/virtio_blk/virtio_net because Debian's
//! kernel finds microvm devices through ACPI, `mkfs.ext4 -d`). A marker unit prints
//! [`READY_MARKER`] on the console once `multi-user.target` is being reached.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Bumped whenever the recipe changes, so stale caches are not reused.
const RECIPE_VERSION: &str = "bookworm-v3";

/// Printed on the serial console by the guest's `banger-test-ready.service`, followed by
/// ` root=<root device> work=<device labelled banger-work>`.
pub const READY_MARKER: &str = "BANGER-TEST-READY";

/// Guest vsock port where `socat` answers every connection with the hostname
/// ([`GUEST_HOSTNAME`]) and closes.
pub const VSOCK_ECHO_PORT: u32 = 5001;
pub const GUEST_HOSTNAME: &str = "banger-test";

/// systemd-networkd in the guest gives every Ethernet NIC this static address (/30), so a
/// test puts the host side of the tap at [`GUEST_PEER_CIDR`] inside its own netns.
pub const GUEST_IP: &str = "172.31.255.2";
pub const GUEST_PEER_CIDR: &str = "172.31.255.1/30";

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("building the test guest needs root (mmdebstrap --mode=root); run the tests as root")]
    NotRoot,
    #[error("`{0}` not found on PATH; install it (apt-get install -y {1})")]
    MissingTool(&'static str, &'static str),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr_tail}")]
    Command {
        command: String,
        status: String,
        stderr_tail: String,
    },
    #[error("the built rootfs has no {0} in /boot; is linux-image-cloud-amd64 installed?")]
    NoKernel(&'static str),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> GuestError {
    let context = context.into();
    move |source| GuestError::Io { context, source }
}

/// The cached guest's files. Copy/clone `rootfs` before booting it writable.
#[derive(Debug, Clone)]
pub struct TestGuest {
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    /// Suggested kernel command line (without console/tsc args, which drivers add).
    pub boot_args: String,
}

/// Returns the cached test guest, building it first if needed (≈1 min, needs root,
/// mmdebstrap, mkfs.ext4 and access to deb.debian.org). Concurrent callers wait on a lock.
pub fn test_guest() -> Result<TestGuest, GuestError> {
    let dir = crate::test_cache_dir().join(format!("guest-{RECIPE_VERSION}"));
    let guest = TestGuest {
        vmlinuz: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        rootfs: dir.join("rootfs.ext4"),
        boot_args: "root=/dev/vda rw panic=-1".to_string(),
    };
    let done = dir.join("complete");
    if done.exists() {
        return Ok(guest);
    }
    if !crate::is_root() {
        return Err(GuestError::NotRoot);
    }
    fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let lock = fs::File::create(dir.join("lock")).map_err(io("create lock file"))?;
    // SAFETY: flock on a valid fd we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io("flock")(std::io::Error::last_os_error()));
    }
    if done.exists() {
        return Ok(guest);
    }
    build(&dir)?;
    fs::write(&done, RECIPE_VERSION).map_err(io("write completion marker"))?;
    Ok(guest)
}

fn run(cmd: &mut Command) -> Result<(), GuestError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("run {cmd:?}")))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
    Err(GuestError::Command {
        command: format!("{cmd:?}"),
        status: out.status.to_string(),
        stderr_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

fn build(dir: &Path) -> Result<(), GuestError> {
    let mmdebstrap =
        crate::which("mmdebstrap").ok_or(GuestError::MissingTool("mmdebstrap", "mmdebstrap"))?;
    let mkfs =
        crate::which("mkfs.ext4").ok_or(GuestError::MissingTool("mkfs.ext4", "e2fsprogs"))?;
    let tree = dir.join("tree");
    let overlay = dir.join("overlay");
    for d in [&tree, &overlay] {
        if d.exists() {
            fs::remove_dir_all(d).map_err(io(format!("remove stale {}", d.display())))?;
        }
    }
    // Files copied into the rootfs: initramfs modules (needed before the kernel can see
    // its root disk under microvm) and the console marker unit.
    let files: &[(&str, &str)] = &[
        (
            "usr/share/initramfs-tools/modules.d/banger-test.conf",
            "virtio_mmio\nvirtio_blk\nvirtio_net\n",
        ),
        (
            "etc/systemd/system/banger-test-ready.service",
            "[Unit]\nDescription=banger test readiness marker\nAfter=basic.target\n\n\
             [Service]\nType=oneshot\n\
             ExecStart=/bin/sh -c 'echo BANGER-TEST-READY root=$$(findmnt -no SOURCE /) work=$$(blkid -L banger-work)'\n\
             StandardOutput=journal+console\n\n[Install]\nWantedBy=multi-user.target\n",
        ),
        (
            "etc/systemd/system/banger-test-vsock.service",
            "[Unit]\nDescription=banger test vsock responder\n\n\
             [Service]\nExecStart=/usr/bin/socat VSOCK-LISTEN:5001,reuseaddr,fork EXEC:/usr/bin/hostname\n\
             Restart=always\n\n[Install]\nWantedBy=multi-user.target\n",
        ),
        (
            "etc/systemd/network/10-banger-test.network",
            "[Match]\nType=ether\n\n[Network]\nAddress=172.31.255.2/30\nLinkLocalAddressing=no\n",
        ),
        ("etc/hostname", "banger-test\n"),
        (
            "etc/fstab",
            "# root is mounted rw from the kernel command line\n",
        ),
    ];
    for (rel, content) in files {
        let p = overlay.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
        }
        fs::write(&p, content).map_err(io(format!("write {}", p.display())))?;
    }
    let wants = overlay.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).map_err(io("create wants dir"))?;
    for unit in ["banger-test-ready.service", "banger-test-vsock.service"] {
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), wants.join(unit))
            .map_err(io(format!("enable {unit}")))?;
    }
    std::os::unix::fs::symlink(
        "/lib/systemd/system/systemd-networkd.service",
        wants.join("systemd-networkd.service"),
    )
    .map_err(io("enable systemd-networkd"))?;
    // Root logs in on the serial console without a password (a throwaway test guest).
    let hook_sync = format!("sync-in {} /", overlay.display());
    run(Command::new(mmdebstrap)
        .arg("--mode=root")
        .arg("--variant=apt")
        .arg("--include=systemd-sysv,linux-image-cloud-amd64,initramfs-tools,dbus,udev,iproute2,socat")
        .arg(format!("--essential-hook={hook_sync}"))
        .arg(format!("--customize-hook={hook_sync}"))
        .arg("--customize-hook=chroot \"$1\" passwd -d root")
        .arg("--customize-hook=chroot \"$1\" update-initramfs -u -k all")
        .arg("bookworm")
        .arg(&tree))?;
    let boot = tree.join("boot");
    let find = |prefix: &'static str| -> Result<PathBuf, GuestError> {
        let mut found: Vec<PathBuf> = fs::read_dir(&boot)
            .map_err(io(format!("read {}", boot.display())))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .collect();
        found.sort();
        found.pop().ok_or(GuestError::NoKernel(prefix))
    };
    let vmlinuz = find("vmlinuz-")?;
    let initrd = find("initrd.img-")?;
    fs::copy(&vmlinuz, dir.join("vmlinuz")).map_err(io("copy vmlinuz"))?;
    fs::copy(&initrd, dir.join("initrd.img")).map_err(io("copy initrd"))?;
    let rootfs = dir.join("rootfs.ext4");
    let _ = fs::remove_file(&rootfs);
    run(Command::new(mkfs)
        .args(["-F", "-q", "-L", "banger-root", "-d"])
        .arg(&tree)
        .arg(&rootfs)
        .arg("1536M"))?;
    fs::remove_dir_all(&tree).map_err(io("remove build tree"))?;
    fs::remove_dir_all(&overlay).map_err(io("remove overlay"))?;
    Ok(())
}

/// Extracts the ELF `vmlinux` from a compressed kernel (`vmlinuz`/bzImage), like the
/// kernel's `scripts/extract-vmlinux`: finds a compression magic, decompresses from there
/// with the matching tool, and keeps the first result that is an ELF file. Firecracker
/// boots only ELF kernels.
pub fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<(), GuestError> {
    use std::io::Write;
    let data = fs::read(bzimage).map_err(io(format!("read {}", bzimage.display())))?;
    let formats: &[(&[u8], &'static str, &'static str)] = &[
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd", "zstd"),
        (&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], "xz", "xz-utils"),
        (&[0x1f, 0x8b, 0x08], "gzip", "gzip"),
        (&[0x02, 0x21, 0x4c, 0x18], "lz4", "lz4"),
    ];
    for (magic, tool, package) in formats {
        let offsets: Vec<usize> = data
            .windows(magic.len())
            .enumerate()
            .filter(|(_, w)| w == magic)
            .map(|(i, _)| i)
            .take(8)
            .collect();
        if offsets.is_empty() {
            continue;
        }
        let program = crate::which(tool).ok_or(GuestError::MissingTool(tool, package))?;
        for off in offsets {
            let mut child = Command::new(&program)
                .arg("-dc")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(io(format!("run {tool}")))?;
            let mut stdin = child
                .stdin
                .take()
                .ok_or_else(|| io("stdin")(std::io::Error::other("no stdin")))?;
            let payload = data[off..].to_vec();
            // Feed from a thread: the decompressor's stdout must be drained concurrently.
            let feeder = std::thread::spawn(move || {
                let _ = stdin.write_all(&payload);
            });
            let output = child
                .wait_with_output()
                .map_err(io(format!("run {tool}")))?;
            let _ = feeder.join();
            // Trailing bytes after the stream make tools exit non-zero; the ELF check decides.
            if output.stdout.starts_with(b"\x7fELF") {
                fs::write(out, &output.stdout).map_err(io(format!("write {}", out.display())))?;
                return Ok(());
            }
        }
    }
    Err(GuestError::NoKernel(
        "ELF payload inside the compressed kernel",
    ))
}
