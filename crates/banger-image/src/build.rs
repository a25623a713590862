//! Golden image build: mmdebstrap → customised tree → ext4 + kernel files.
//!
//! Modes: `--mode=root` when running as root (CI, `sudo`); otherwise
//! `--mode=unshare`, which needs subordinate uid/gid ranges for the user
//! (`/etc/subuid`, `/etc/subgid`, `newuidmap`/`newgidmap` from the `uidmap`
//! package) and user namespaces. In unshare mode mmdebstrap writes a tar
//! (the only way to carry root ownership out of the namespace); it is
//! unpacked unprivileged and the lost owners/devices restored in the ext4
//! image with [`Ext4Fixups`]. [`prerequisites`] reports what a mode needs,
//! for `banger doctor`.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cmd;
use crate::error::{Error, IoContext, Result};
use crate::ext4::{self, Ext4Fixups, FileSize, Fixup};
use crate::kernel::{self, KernelRecord};
use crate::store::{self, ImageManifest, ROOTFS};

pub const DEFAULT_SUITE: &str = "bookworm";
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const BUILD_RECORD: &str = "build.json";
pub const KERNEL_SUBDIR: &str = "kernel";

/// The static guest agent and its systemd unit, from the agent crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPayload {
    pub binary: PathBuf,
    pub unit: String,
}

pub use banger_proto::agent::AGENT_INSTALL_PATH;
pub const AGENT_UNIT: &str = "/etc/systemd/system/banger-vsock-agent.service";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// The developer sandbox: docker, build tools, logind/dbus.
    Full,
    /// Fast to build and boot, for tests: no docker, no dbus/logind.
    Minimal,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Full => "full",
            Profile::Minimal => "minimal",
        }
    }
    pub fn packages(self) -> &'static [&'static str] {
        match self {
            Profile::Full => &[
                "systemd",
                "systemd-sysv",
                "dbus",
                "libpam-systemd",
                "openssh-server",
                "docker.io",
                "git",
                "jq",
                "curl",
                "ca-certificates",
                "build-essential",
                "sudo",
                "less",
                "vim-tiny",
                "iproute2",
                "procps",
                "netbase",
                "initramfs-tools",
                "linux-image-cloud-amd64",
            ],
            Profile::Minimal => &[
                "systemd",
                "systemd-sysv",
                "openssh-server",
                "iproute2",
                "ca-certificates",
                "initramfs-tools",
                "linux-image-cloud-amd64",
            ],
        }
    }
    /// Units masked (symlinked to /dev/null): what a sandbox never uses and
    /// what measurably slowed boots (docs in the design brief).
    pub fn masked_units(self) -> Vec<&'static str> {
        let mut v = COMMON_MASKS.to_vec();
        if self == Profile::Minimal {
            v.extend_from_slice(MINIMAL_MASKS);
        }
        v
    }
    fn default_size(self) -> u64 {
        match self {
            Profile::Full => 4 << 30,
            Profile::Minimal => 1 << 30,
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(Profile::Full),
            "minimal" => Ok(Profile::Minimal),
            _ => Err(Error::Build(format!(
                "unknown profile {s:?} (use \"full\" or \"minimal\")"
            ))),
        }
    }
}

const COMMON_MASKS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-tmpfiles-clean.timer",
    "dpkg-db-backup.timer",
    "getty@tty1.service",
    "systemd-remount-fs.service",
    "systemd-firstboot.service",
    "systemd-machine-id-commit.service",
    "systemd-pstore.service",
    "systemd-hwdb-update.service",
    "systemd-journal-catalog-update.service",
    "systemd-update-done.service",
    "ldconfig.service",
    "systemd-networkd-wait-online.service",
];

const MINIMAL_MASKS: &[&str] = &[
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "modprobe@.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-random-seed.service",
    "systemd-sysusers.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "systemd-binfmt.service",
    "systemd-logind.service",
    // Starts gettys on tty2-6 when dbus/logind are absent: no VTs here.
    "getty-static.service",
    "dbus.service",
    "dbus.socket",
];

/// Modules the initramfs must load: the devices reach the guest as
/// virtio-mmio (ACPI), and Debian builds these as modules. `virtio_console`
/// carries the agent's channel under QEMU; OCI images (banger-init, no udev,
/// no modules on their root) boot with this initramfs and get it only here.
pub const INITRAMFS_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "vmw_vsock_virtio_transport",
    "virtio_console",
];

/// Runs after the essential packages, before the kernel package and so
/// before its initramfs is generated (checked: the modules end up in the
/// initrd). A constant: no data is ever spliced into it.
const ESSENTIAL_HOOK: &str = "mkdir -p \"$1/usr/share/initramfs-tools/modules.d\" && printf '%s\\n' virtio_mmio virtio_blk virtio_net vmw_vsock_virtio_transport virtio_console > \"$1/usr/share/initramfs-tools/modules.d/banger.conf\"";

const SSHD_DROPIN: &str = include_str!("../guest/sshd-banger.conf");
const SSH_SERVICE_DROPIN: &str = include_str!("../guest/ssh-service-banger.conf");
const NET_SCRIPT: &str = include_str!("../guest/banger-net");
const NET_UNIT: &str = include_str!("../guest/banger-net.service");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildMode {
    Root,
    Unshare,
}

impl BuildMode {
    /// Root when running as root, else unshare.
    pub fn auto() -> Self {
        if nix::unistd::geteuid().is_root() {
            BuildMode::Root
        } else {
            BuildMode::Unshare
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            BuildMode::Root => "root",
            BuildMode::Unshare => "unshare",
        }
    }
}

/// One prerequisite, for `banger doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What building in `mode` needs, checked on this host.
pub fn prerequisites(mode: BuildMode) -> Vec<Check> {
    let mut v = Vec::new();
    let tool = |name: &str, pkg: &str| match banger_core::host::find_program(name) {
        Some(p) => Check {
            name: name.into(),
            ok: true,
            detail: p.display().to_string(),
        },
        None => Check {
            name: name.into(),
            ok: false,
            detail: format!("not found; apt-get install {pkg}"),
        },
    };
    for (t, p) in [
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("e2fsck", "e2fsprogs"),
    ] {
        v.push(tool(t, p));
    }
    match mode {
        BuildMode::Root => {
            let root = nix::unistd::geteuid().is_root();
            v.push(Check {
                name: "mmdebstrap --mode=root".into(),
                ok: root,
                detail: if root {
                    "running as root".into()
                } else {
                    "needs root; the owner daemon builds with --mode=unshare instead".into()
                },
            });
        }
        BuildMode::Unshare => {
            v.push(tool("newuidmap", "uidmap"));
            v.push(tool("newgidmap", "uidmap"));
            let uid = nix::unistd::geteuid();
            let user = nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name);
            for file in ["/etc/subuid", "/etc/subgid"] {
                let found = subid_range(Path::new(file), uid.as_raw(), user.as_deref());
                v.push(Check {
                    name: file.into(),
                    ok: matches!(found, Some(n) if n >= 65536),
                    detail: match found {
                        Some(n) if n >= 65536 => format!("{n} subordinate ids"),
                        Some(n) => format!("only {n} subordinate ids; 65536 needed"),
                        None => format!(
                            "no range for {}; e.g. usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {}",
                            user.as_deref().unwrap_or("this user"),
                            user.as_deref().unwrap_or("USER")
                        ),
                    },
                });
            }
            let userns = fs::read_to_string("/proc/sys/user/max_user_namespaces")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(1);
            let clone = fs::read_to_string("/proc/sys/kernel/unprivileged_userns_clone")
                .ok()
                .map(|s| s.trim() != "0")
                .unwrap_or(true);
            v.push(Check {
                name: "user namespaces".into(),
                ok: userns > 0 && clone,
                detail: if userns > 0 && clone {
                    "enabled".into()
                } else {
                    "disabled (user.max_user_namespaces / kernel.unprivileged_userns_clone)".into()
                },
            });
        }
    }
    v
}

fn subid_range(file: &Path, uid: u32, user: Option<&str>) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, _start, count) = (f.next()?, f.next()?, f.next()?);
        (who == uid.to_string() || Some(who) == user)
            .then(|| count.parse().ok())
            .flatten()
    })
}

/// Inputs of a build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Image name (e.g. `debian-bookworm`).
    pub name: String,
    pub version: String,
    pub profile: Profile,
    pub suite: String,
    /// Debian mirror URL (http, https or file).
    pub mirror: String,
    /// None: [`BuildMode::auto`].
    pub mode: Option<BuildMode>,
    /// None: the image has no agent (logged).
    pub agent: Option<AgentPayload>,
    /// Where the result goes; must not exist. Built in a temp sibling and
    /// renamed, so a failed or killed build leaves only a `.tmp-banger-*`
    /// dir for [`store::cleanup_partial`].
    pub out_dir: PathBuf,
    /// Apparent size of rootfs.ext4 (sparse). None: profile default, or
    /// more if the tree needs it.
    pub size: Option<u64>,
}

impl BuildOptions {
    pub fn new(name: impl Into<String>, profile: Profile, out_dir: PathBuf) -> Self {
        BuildOptions {
            name: name.into(),
            version: "local".into(),
            profile,
            suite: DEFAULT_SUITE.into(),
            mirror: DEFAULT_MIRROR.into(),
            mode: None,
            agent: None,
            out_dir,
            size: None,
        }
    }
}

/// Wall time of one build stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub seconds: f64,
}

/// `build.json`: how an image was built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub profile: Profile,
    pub mode: BuildMode,
    pub suite: String,
    pub mirror: String,
    pub agent_included: bool,
    pub stages: Vec<Stage>,
}

/// A built image directory:
/// `<dir>/rootfs.ext4`, `<dir>/image.json`, `<dir>/build.json`,
/// `<dir>/kernel/{vmlinuz,initrd.img,vmlinux,kernel.json}`.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltImage {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub manifest: ImageManifest,
    pub kernel: KernelRecord,
    pub build: BuildRecord,
}

impl BuiltImage {
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<Vec<u8>> {
            let p = dir.join(name);
            fs::read(&p).ctx("read", p)
        };
        let json = |name: &str, e: serde_json::Error| Error::Json {
            path: dir.join(name),
            source: e,
        };
        let manifest: ImageManifest = serde_json::from_slice(&read(store::IMAGE_MANIFEST)?)
            .map_err(|e| json(store::IMAGE_MANIFEST, e))?;
        let build: BuildRecord =
            serde_json::from_slice(&read(BUILD_RECORD)?).map_err(|e| json(BUILD_RECORD, e))?;
        Ok(BuiltImage {
            dir: dir.to_path_buf(),
            rootfs: dir.join(ROOTFS),
            manifest,
            kernel: KernelRecord::load(&dir.join(KERNEL_SUBDIR))?,
            build,
        })
    }

    pub fn size(&self) -> Result<FileSize> {
        FileSize::of(&self.rootfs)
    }
}

fn validate_mirror(m: &str) -> Result<()> {
    let ok = (m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file://"))
        && !m.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(Error::Build(format!(
            "mirror {m:?} must be one http(s):// or file:// URL without spaces"
        )))
    }
}

/// Build a golden image. Takes minutes (package downloads); needs the
/// prerequisites of its mode.
pub fn build_image(opts: &BuildOptions) -> Result<BuiltImage> {
    banger_core::names::validate_image_name(&opts.name)?;
    validate_mirror(&opts.mirror)?;
    if !opts
        .suite
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Error::Build(format!(
            "suite {:?} is not a Debian suite name",
            opts.suite
        )));
    }
    if opts.out_dir.exists() {
        return Err(Error::Build(format!(
            "{} already exists; choose a new output directory",
            opts.out_dir.display()
        )));
    }
    let mode = opts.mode.unwrap_or_else(BuildMode::auto);
    let missing: Vec<String> = prerequisites(mode)
        .into_iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Build(format!(
            "cannot build with --mode={}: {}",
            mode.as_str(),
            missing.join("; ")
        )));
    }
    if let Some(a) = &opts.agent
        && !a.binary.is_file()
    {
        return Err(Error::Build(format!(
            "agent binary {} does not exist",
            a.binary.display()
        )));
    }
    let tmp = temp_beside(&opts.out_dir)?;
    let work = tmp.path();
    let tree = work.join("tree");
    let mut stages = Vec::new();
    let t = Instant::now();
    let mut fixups = Ext4Fixups::new();
    match mode {
        BuildMode::Root => {
            mmdebstrap(opts, mode, &tree)?;
            stage(&mut stages, "mmdebstrap", t);
        }
        BuildMode::Unshare => {
            let tarball = work.join("rootfs.tar");
            mmdebstrap(opts, mode, &tarball)?;
            stage(&mut stages, "mmdebstrap", t);
            let t = Instant::now();
            fixups = unpack_file(&tarball, &tree)?;
            fs::remove_file(&tarball).ctx("remove", &tarball)?;
            stage(&mut stages, "unpack", t);
        }
    }
    finish(opts, mode, tmp, fixups, stages)
}

/// Build from a rootfs tarball instead of running mmdebstrap (e.g. one made
/// with `mmdebstrap --format=tar` elsewhere): the same unprivileged path as
/// `--mode=unshare` (unpack, customise, ext4 with owner/device fixups).
/// The tarball must contain a Debian kernel in /boot. `opts.mirror`,
/// `suite` and `mode` are only recorded.
pub fn build_from_tar(tarball: &Path, opts: &BuildOptions) -> Result<BuiltImage> {
    banger_core::names::validate_image_name(&opts.name)?;
    if opts.out_dir.exists() {
        return Err(Error::Build(format!(
            "{} already exists; choose a new output directory",
            opts.out_dir.display()
        )));
    }
    let tmp = temp_beside(&opts.out_dir)?;
    let tree = tmp.path().join("tree");
    let mut stages = Vec::new();
    let t = Instant::now();
    let fixups = unpack_file(tarball, &tree)?;
    stage(&mut stages, "unpack", t);
    finish(opts, BuildMode::Unshare, tmp, fixups, stages)
}

fn temp_beside(out_dir: &Path) -> Result<tempfile::TempDir> {
    let parent = out_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    store::temp_dir_in(parent)
}

fn unpack_file(tarball: &Path, tree: &Path) -> Result<Ext4Fixups> {
    let f = fs::File::open(tarball).ctx("open", tarball)?;
    crate::unpack::unpack_tar(std::io::BufReader::new(f), tree)
}

fn stage(stages: &mut Vec<Stage>, name: &str, t: Instant) {
    let seconds = t.elapsed().as_secs_f64();
    tracing::info!(stage = name, seconds, "image build stage done");
    stages.push(Stage {
        name: name.into(),
        seconds,
    });
}

/// Everything after the tree exists: customise, kernel, ext4, hash, and the
/// rename of the temp dir into `opts.out_dir`.
fn finish(
    opts: &BuildOptions,
    mode: BuildMode,
    tmp: tempfile::TempDir,
    mut fixups: Ext4Fixups,
    mut stages: Vec<Stage>,
) -> Result<BuiltImage> {
    let work = tmp.path();
    let tree = work.join("tree");
    let mut timed = |name: &str, t: Instant| stage(&mut stages, name, t);
    let t = Instant::now();
    let created = customize(&tree, opts.profile, opts.agent.as_ref())?;
    if mode == BuildMode::Unshare {
        // Files written here belong to the unprivileged builder; in the
        // guest they are root's.
        for p in created {
            fixups.set_owner(p, 0, 0);
        }
    }
    // Fixups recorded at unpack time for files customize removed (the ssh
    // host keys) would fail in debugfs.
    fixups.retain(|f| match f {
        Fixup::SetOwner { path, .. } | Fixup::SetMode { path, .. } => tree
            .join(path.trim_start_matches('/'))
            .symlink_metadata()
            .is_ok(),
        Fixup::Mknod { .. } | Fixup::Symlink { .. } => true,
    });
    timed("customize", t);

    let t = Instant::now();
    let (kversion, vmlinuz, initrd) = kernel::find_in_tree(&tree)?;
    let kname = format!("debian-{}-{}", opts.suite, kversion);
    kernel::write_kernel_dir(
        &work.join(KERNEL_SUBDIR),
        &kname,
        &kversion,
        &vmlinuz,
        initrd.as_deref(),
    )?;
    timed("kernel", t);

    let t = Instant::now();
    let used = tree_usage(&tree)?;
    let needed = (used + used / 2 + (64 << 20)).div_ceil(1 << 20) << 20;
    let size = match opts.size {
        Some(s) if s < needed => {
            return Err(Error::Build(format!(
                "size {s} is too small for a {used}-byte tree; need at least {needed}"
            )));
        }
        Some(s) => s,
        None => needed.max(opts.profile.default_size()),
    };
    let rootfs = work.join(ROOTFS);
    let fsize = ext4::make_ext4(&tree, &rootfs, size, &fixups)?;
    timed("ext4", t);

    let t = Instant::now();
    remove_tree(&tree)?;
    let sha256 = store::sha256_file(&rootfs)?;
    timed("hash", t);

    let manifest = ImageManifest {
        name: opts.name.clone(),
        version: opts.version.clone(),
        arch: "x86_64".into(),
        sha256,
        size: fsize,
        kernel: kname,
        boot_args: kernel::DEFAULT_FIRECRACKER_BOOT_ARGS.into(),
        source: format!("build:{}", opts.profile.as_str()),
        created: store::now(),
    };
    store::write_json(&work.join(store::IMAGE_MANIFEST), &manifest)?;
    let record = BuildRecord {
        profile: opts.profile,
        mode,
        suite: opts.suite.clone(),
        mirror: opts.mirror.clone(),
        agent_included: opts.agent.is_some(),
        stages,
    };
    store::write_json(&work.join(BUILD_RECORD), &record)?;
    fs::rename(work, &opts.out_dir).ctx("move build into", &opts.out_dir)?;
    let _ = tmp.keep();
    BuiltImage::load(&opts.out_dir)
}

fn mmdebstrap(opts: &BuildOptions, mode: BuildMode, target: &Path) -> Result<()> {
    let mut args: Vec<std::ffi::OsString> = vec![
        format!("--mode={}", mode.as_str()).into(),
        "--variant=apt".into(),
        match mode {
            BuildMode::Root => "--format=directory".into(),
            BuildMode::Unshare => "--format=tar".into(),
        },
        format!("--include={}", opts.profile.packages().join(",")).into(),
        format!("--essential-hook={ESSENTIAL_HOOK}").into(),
    ];
    if opts.profile == Profile::Minimal {
        for o in [
            "path-exclude=/usr/share/man/*",
            "path-exclude=/usr/share/doc/*",
            "path-include=/usr/share/doc/*/copyright",
            "path-exclude=/usr/share/locale/*",
        ] {
            args.push(format!("--dpkgopt={o}").into());
        }
    }
    args.push(opts.suite.clone().into());
    args.push(target.into());
    args.push(opts.mirror.clone().into());
    cmd::run("mmdebstrap", &args)?;
    Ok(())
}

fn tree_usage(root: &Path) -> Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).ctx("list", &dir)? {
            let e = e.ctx("list", &dir)?;
            let m = e.path().symlink_metadata().ctx("stat", e.path())?;
            // Rounded to blocks, plus an inode's worth of metadata.
            total += m.len().div_ceil(4096) * 4096 + 256;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(total)
}

fn remove_tree(tree: &Path) -> Result<()> {
    // Unprivileged unpacks may have left read-only dirs: make them
    // writable so they can be removed.
    let _ = fs::set_permissions(tree, fs::Permissions::from_mode(0o755));
    fs::remove_dir_all(tree).ctx("remove build tree", tree)
}

fn write(
    root: &Path,
    guest: &str,
    contents: &[u8],
    perm: u32,
    created: &mut Vec<String>,
) -> Result<()> {
    let p = root.join(guest.trim_start_matches('/'));
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).ctx("create", parent)?;
    }
    if p.symlink_metadata().is_ok() {
        fs::remove_file(&p).ctx("replace", &p)?;
    }
    fs::write(&p, contents).ctx("write", &p)?;
    fs::set_permissions(&p, fs::Permissions::from_mode(perm)).ctx("chmod", &p)?;
    created.push(guest.to_string());
    Ok(())
}

fn link(root: &Path, guest: &str, target: &str, created: &mut Vec<String>) -> Result<()> {
    let p = root.join(guest.trim_start_matches('/'));
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).ctx("create", parent)?;
    }
    if p.symlink_metadata().is_ok() {
        fs::remove_file(&p).ctx("replace", &p)?;
    }
    symlink(target, &p).ctx("symlink", &p)?;
    created.push(guest.to_string());
    Ok(())
}

/// The `WantedBy=` target of a unit's [Install] section.
fn wanted_by(unit: &str) -> String {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("WantedBy="))
        .flat_map(|v| v.split_whitespace())
        .find(|t| {
            t.ends_with(".target")
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        })
        .unwrap_or("multi-user.target")
        .to_string()
}

/// Apply banger's configuration to a bootstrapped tree. Returns the guest
/// paths written (their owner must be root in the image).
pub fn customize(
    tree: &Path,
    profile: Profile,
    agent: Option<&AgentPayload>,
) -> Result<Vec<String>> {
    let mut c = Vec::new();
    // sshd: the upstream Security settings, no ExecStartPre test.
    write(
        tree,
        "/etc/ssh/sshd_config.d/banger.conf",
        SSHD_DROPIN.as_bytes(),
        0o644,
        &mut c,
    )?;
    write(
        tree,
        "/etc/systemd/system/ssh.service.d/banger.conf",
        SSH_SERVICE_DROPIN.as_bytes(),
        0o644,
        &mut c,
    )?;
    // No baked host keys: each VM gets its own at create time so banger
    // can pin them.
    let ssh = tree.join("etc/ssh");
    if let Ok(entries) = fs::read_dir(&ssh) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                fs::remove_file(e.path()).ctx("remove host key", e.path())?;
            }
        }
    }
    // StrictModes: /root and /root/.ssh 0700.
    for d in ["root", "root/.ssh"] {
        let p = tree.join(d);
        fs::create_dir_all(&p).ctx("create", &p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).ctx("chmod", &p)?;
        c.push(format!("/{d}"));
    }
    // Network from the kernel command line.
    write(
        tree,
        "/usr/local/sbin/banger-net",
        NET_SCRIPT.as_bytes(),
        0o755,
        &mut c,
    )?;
    write(
        tree,
        "/etc/systemd/system/banger-net.service",
        NET_UNIT.as_bytes(),
        0o644,
        &mut c,
    )?;
    link(
        tree,
        "/etc/systemd/system/sysinit.target.wants/banger-net.service",
        "/etc/systemd/system/banger-net.service",
        &mut c,
    )?;
    // Root stays rw from the command line; nothing else to mount.
    write(
        tree,
        "/etc/fstab",
        b"# banger: root is mounted from the kernel command line\n",
        0o644,
        &mut c,
    )?;
    // mmdebstrap copies the build host's hostname and resolver: neither
    // belongs in a guest. banger-net and the daemon write the real ones.
    write(tree, "/etc/hostname", b"banger\n", 0o644, &mut c)?;
    write(tree, "/etc/resolv.conf", b"", 0o644, &mut c)?;
    write(
        tree,
        "/etc/hosts",
        b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
        &mut c,
    )?;
    // systemd generates a machine id at first boot of each VM.
    write(tree, "/etc/machine-id", b"", 0o444, &mut c)?;
    for unit in profile.masked_units() {
        link(
            tree,
            &format!("/etc/systemd/system/{unit}"),
            "/dev/null",
            &mut c,
        )?;
    }
    match agent {
        Some(a) => {
            let bin = fs::read(&a.binary).ctx("read agent binary", &a.binary)?;
            write(tree, AGENT_INSTALL_PATH, &bin, 0o755, &mut c)?;
            write(tree, AGENT_UNIT, a.unit.as_bytes(), 0o644, &mut c)?;
            let target = wanted_by(&a.unit);
            link(
                tree,
                &format!("/etc/systemd/system/{target}.wants/banger-vsock-agent.service"),
                AGENT_UNIT,
                &mut c,
            )?;
        }
        None => tracing::warn!("no agent given: the image does not include banger-vsock-agent"),
    }
    // Parent dirs created above (e.g. ssh.service.d, *.wants) are root's too.
    let mut dirs: Vec<String> = c
        .iter()
        .filter_map(|p| {
            Path::new(p)
                .parent()
                .map(|d| d.to_string_lossy().into_owned())
        })
        .filter(|d| d != "/")
        .collect();
    dirs.sort();
    dirs.dedup();
    c.extend(dirs);
    Ok(c)
}

/// Bump when [`customize`] or the build steps change what an image
/// contains: cached test images keyed with the old value are rebuilt.
pub const RECIPE_VERSION: u32 = 2;

/// Hash of everything that determines a build's result: options, recipe
/// version, package and mask lists, guest files, the agent's bytes.
pub fn inputs_key(opts: &BuildOptions) -> Result<String> {
    let mut h = Sha256::new();
    let masks = opts.profile.masked_units().join(",");
    let packages = opts.profile.packages().join(",");
    let recipe = RECIPE_VERSION.to_string();
    for part in [
        recipe.as_str(),
        opts.name.as_str(),
        opts.version.as_str(),
        opts.profile.as_str(),
        opts.suite.as_str(),
        opts.mirror.as_str(),
        packages.as_str(),
        masks.as_str(),
        ESSENTIAL_HOOK,
        SSHD_DROPIN,
        SSH_SERVICE_DROPIN,
        NET_SCRIPT,
        NET_UNIT,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(format!("{:?}", opts.size));
    if let Some(a) = &opts.agent {
        h.update(store::sha256_file(&a.binary)?);
        h.update(&a.unit);
    }
    Ok(hex::encode(&h.finalize()[..16]))
}

/// Build (or reuse) an image in `cache_dir/<inputs_key>`; `opts.out_dir` is
/// ignored. Concurrent callers (parallel tests, other crates' test
/// binaries) serialise on a lock file and the first one builds. Tests pass
/// banger-testkit's `test_cache_dir` to share one minimal image across the suite.
pub fn cached_build(opts: &BuildOptions, cache_dir: &Path) -> Result<BuiltImage> {
    let key = inputs_key(opts)?;
    let dir = cache_dir.join(&key);
    if dir.join(BUILD_RECORD).is_file() {
        return BuiltImage::load(&dir);
    }
    fs::create_dir_all(cache_dir).ctx("create", cache_dir)?;
    let lock_path = cache_dir.join(format!("{key}.lock"));
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .ctx("open", &lock_path)?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, e)| Error::Io {
            action: "lock",
            path: lock_path.clone(),
            source: e.into(),
        },
    )?;
    if dir.join(BUILD_RECORD).is_file() {
        return BuiltImage::load(&dir);
    }
    let mut o = opts.clone();
    o.out_dir = dir.clone();
    build_image(&o)
}

/// Move a built image into the store: the kernel to
/// `<kernels>/<kernel name>/` (kept if a kernel of that name with the same
/// vmlinuz exists), the rootfs to `<images>/<sha256>/`.
pub fn install_built(
    built: &BuiltImage,
    images_dir: &Path,
    kernels_dir: &Path,
) -> Result<(store::ImageRecord, KernelRecord)> {
    let kdir = kernels_dir.join(&built.kernel.name);
    if kdir.exists() {
        let same = store::sha256_file(&kdir.join(kernel::VMLINUZ)).ok()
            == Some(store::sha256_file(&built.kernel.vmlinuz)?);
        if !same {
            return Err(Error::Build(format!(
                "a different kernel named {:?} is already installed; delete it first",
                built.kernel.name
            )));
        }
    } else {
        let tmp = store::temp_dir_in(kernels_dir)?;
        for f in [
            kernel::VMLINUZ,
            kernel::INITRD,
            kernel::VMLINUX,
            kernel::KERNEL_RECORD,
        ] {
            let src = built.dir.join(KERNEL_SUBDIR).join(f);
            if src.exists() {
                fs::copy(&src, tmp.path().join(f)).ctx("copy", &src)?;
            }
        }
        store::install_dir(tmp, &kdir)?;
    }
    let kernel = KernelRecord::load(&kdir)?;
    let tmp = store::temp_dir_in(images_dir)?;
    let staged = tmp.path().join(ROOTFS);
    store::sparse_copy(&built.rootfs, &staged)?;
    let image = store::install_image(images_dir, &staged, built.manifest.clone())?;
    Ok((image, kernel))
}

#[cfg(test)]
#[path = "build_tests.rs"]
mod tests;
