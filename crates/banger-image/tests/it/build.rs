//! The real golden image build (mmdebstrap, ~2 minutes). Needs root (CI
//! and this machine) and Debian's mirror; skips with a message otherwise.
//! The result is cached in `test_cache_dir()` keyed by the build inputs.

use banger_image::build::{self, AgentPayload, BuildMode, BuildOptions, Profile};
use banger_image::ext4;

use crate::support::{have, skip_without_e2fsprogs};

const FAKE_UNIT: &str = "[Unit]\nDescription=banger guest agent (test stand-in)\n\n[Service]\nExecStart=/usr/local/bin/banger-vsock-agent\n\n[Install]\nWantedBy=multi-user.target\n";

/// The options of the cached minimal test image (with a stand-in agent).
pub fn minimal_opts() -> BuildOptions {
    let agent_dir = banger_testkit::test_cache_dir().join("fake-agent");
    std::fs::create_dir_all(&agent_dir).expect("mkdir");
    let agent_bin = agent_dir.join("banger-vsock-agent");
    std::fs::write(&agent_bin, "#!/bin/sh\nexec sleep infinity\n").expect("write");
    let mut opts = BuildOptions::new("test-minimal", Profile::Minimal, Default::default());
    opts.mode = Some(BuildMode::Root);
    opts.agent = Some(AgentPayload {
        binary: agent_bin,
        unit: FAKE_UNIT.into(),
    });
    opts
}

/// Build (once per inputs) or reuse the minimal image.
pub fn cached_minimal() -> build::BuiltImage {
    build::cached_build(&minimal_opts(), &banger_testkit::test_cache_dir())
        .expect("build minimal image")
}

/// Whether the real build can run here; prints why not.
pub fn can_build() -> bool {
    if skip_without_e2fsprogs() {
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: the minimal image build needs root (mmdebstrap --mode=root)");
        return false;
    }
    if !have("mmdebstrap") {
        eprintln!("SKIP: mmdebstrap not found (apt-get install mmdebstrap)");
        return false;
    }
    true
}

#[test]
fn minimal_image_build() {
    if !can_build() {
        return;
    }
    let t = std::time::Instant::now();
    let built = cached_minimal();
    eprintln!(
        "minimal image at {} ({:.1}s, stages {:?})",
        built.dir.display(),
        t.elapsed().as_secs_f64(),
        built.build.stages
    );

    let img = &built.rootfs;
    ext4::fsck(img).expect("e2fsck -fn");
    let size = built.size().expect("size");
    assert!(size.allocated < size.apparent, "sparse: {size:?}");

    let sshd = String::from_utf8(
        ext4::read_file(img, "/etc/ssh/sshd_config.d/banger.conf").expect("drop-in"),
    )
    .expect("utf8");
    for line in [
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "AuthorizedKeysFile /root/.ssh/authorized_keys",
    ] {
        assert!(
            sshd.lines().any(|l| l == line),
            "sshd drop-in lacks {line:?}:\n{sshd}"
        );
    }
    let main_cfg =
        String::from_utf8(ext4::read_file(img, "/etc/ssh/sshd_config").expect("sshd_config"))
            .expect("utf8");
    assert!(
        main_cfg.contains("Include /etc/ssh/sshd_config.d/*.conf"),
        "the drop-in must be included"
    );
    let svc = String::from_utf8(
        ext4::read_file(img, "/etc/systemd/system/ssh.service.d/banger.conf").expect("ssh drop-in"),
    )
    .expect("utf8");
    assert!(svc.lines().any(|l| l == "ExecStartPre="));
    let unit = String::from_utf8(
        ext4::read_file(img, "/lib/systemd/system/ssh.service").expect("ssh unit"),
    )
    .expect("utf8");
    assert!(
        !unit.contains("ssh-keygen"),
        "the unit must not regenerate host keys"
    );

    for k in ["rsa", "ecdsa", "ed25519"] {
        for suffix in ["", ".pub"] {
            let p = format!("/etc/ssh/ssh_host_{k}_key{suffix}");
            assert!(
                ext4::stat(img, &p).expect("stat").is_none(),
                "{p} must not be baked in"
            );
        }
    }
    let root = ext4::stat(img, "/root").expect("stat").expect("/root");
    assert_eq!((root.mode, root.uid), (0o040700, 0));
    let ssh = ext4::stat(img, "/root/.ssh")
        .expect("stat")
        .expect("/root/.ssh");
    assert_eq!((ssh.mode, ssh.uid), (0o040700, 0));

    let agent = ext4::stat(img, build::AGENT_INSTALL_PATH)
        .expect("stat")
        .expect("agent binary");
    assert_eq!(agent.mode, 0o100755);
    assert_eq!(
        ext4::read_file(img, build::AGENT_UNIT).expect("unit"),
        FAKE_UNIT.as_bytes()
    );
    assert!(
        ext4::stat(
            img,
            "/etc/systemd/system/multi-user.target.wants/banger-vsock-agent.service"
        )
        .expect("stat")
        .is_some(),
        "agent enabled"
    );
    assert!(
        ext4::stat(
            img,
            "/etc/systemd/system/sysinit.target.wants/banger-net.service"
        )
        .expect("stat")
        .is_some(),
        "network unit enabled"
    );
    let masked = ext4::stat(img, "/etc/systemd/system/systemd-logind.service")
        .expect("stat")
        .expect("mask");
    assert_eq!(masked.mode & 0o170000, 0o120000);
    let modules = String::from_utf8(
        ext4::read_file(img, "/usr/share/initramfs-tools/modules.d/banger.conf").expect("modules"),
    )
    .expect("utf8");
    for m in build::INITRAMFS_MODULES {
        assert!(
            modules.lines().any(|l| l == *m),
            "{m} missing from initramfs modules"
        );
    }
    assert_eq!(
        ext4::read_file(img, "/etc/resolv.conf").expect("resolv"),
        b""
    );

    let k = &built.kernel;
    assert!(k.vmlinuz.is_file() && k.initrd.as_ref().is_some_and(|p| p.is_file()));
    assert!(k.has_vmlinux);
    let elf = std::fs::read(k.vmlinux.as_ref().expect("vmlinux")).expect("read");
    assert_eq!(&elf[..4], b"\x7fELF");
    assert!(k.version.ends_with("cloud-amd64"), "{}", k.version);
    assert!(!k.boot_args.contains("nomodule"));
    eprintln!(
        "kernel {} pvh={} vmlinux={} bytes",
        k.version,
        k.pvh,
        elf.len()
    );
    // The initrd carries the virtio/vsock modules (checked in its cpio).
    let initrd = std::fs::read(k.initrd.as_ref().expect("initrd")).expect("read");
    let listing = crate::support::initrd_listing(&initrd);
    for m in [
        "virtio_mmio.ko",
        "virtio_blk.ko",
        "virtio_net.ko",
        "vmw_vsock_virtio_transport.ko",
        "virtio_console.ko",
    ] {
        assert!(listing.iter().any(|n| n.ends_with(m)), "{m} not in initrd");
    }
}

#[test]
fn prerequisites_report_each_mode() {
    let root = build::prerequisites(BuildMode::Root);
    assert!(root.iter().any(|c| c.name == "mmdebstrap"));
    let unshare = build::prerequisites(BuildMode::Unshare);
    assert!(unshare.iter().any(|c| c.name == "/etc/subuid"));
    assert!(unshare.iter().any(|c| c.name == "newuidmap"));
    assert_eq!(
        BuildMode::auto(),
        if nix::unistd::geteuid().is_root() {
            BuildMode::Root
        } else {
            BuildMode::Unshare
        }
    );
}

/// The unprivileged path (as used by `--mode=unshare`) without mmdebstrap:
/// a rootfs tarball → unpack → customise → ext4 with fixups.
#[test]
fn build_from_tarball() {
    if skip_without_e2fsprogs() {
        return;
    }
    use crate::support::{Comp, fake_bzimage, fake_elf};
    let t = tempfile::tempdir().expect("tempdir");
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, ty: tar::EntryType, mode: u32, uid: u64, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_size(data.len() as u64);
        if ty == tar::EntryType::Char {
            h.set_device_major(1).expect("major");
            h.set_device_minor(3).expect("minor");
        }
        h.set_cksum();
        b.append_data(&mut h, path, data).expect("append");
    };
    use tar::EntryType as T;
    let bz = fake_bzimage(&fake_elf(true), Comp::Zstd);
    add("./", T::Directory, 0o755, 0, b"");
    add("boot/", T::Directory, 0o755, 0, b"");
    add(
        "boot/vmlinuz-6.1.0-9-cloud-amd64",
        T::Regular,
        0o644,
        0,
        &bz,
    );
    add(
        "boot/initrd.img-6.1.0-9-cloud-amd64",
        T::Regular,
        0o644,
        0,
        b"initrd",
    );
    add("etc/", T::Directory, 0o755, 0, b"");
    add("etc/ssh/", T::Directory, 0o755, 0, b"");
    add(
        "etc/ssh/sshd_config",
        T::Regular,
        0o644,
        0,
        b"Include /etc/ssh/sshd_config.d/*.conf\n",
    );
    add("etc/ssh/ssh_host_rsa_key", T::Regular, 0o600, 0, b"baked");
    add("root/", T::Directory, 0o755, 0, b"");
    add("home/user/", T::Directory, 0o700, 1000, b"");
    add("dev/", T::Directory, 0o755, 0, b"");
    add("dev/null", T::Char, 0o666, 0, b"");
    add("usr/bin/", T::Directory, 0o755, 0, b"");
    add("usr/bin/sudo", T::Regular, 0o4755, 0, b"#!/bin/sh\n");
    let tarball = t.path().join("rootfs.tar");
    std::fs::write(&tarball, b.into_inner().expect("tar")).expect("write");

    let mut opts = BuildOptions::new("from-tar", Profile::Minimal, t.path().join("out"));
    opts.size = Some(96 << 20);
    let built = build::build_from_tar(&tarball, &opts).expect("build from tar");
    let img = &built.rootfs;
    ext4::fsck(img).expect("fsck");
    assert!(
        ext4::stat(img, "/etc/ssh/ssh_host_rsa_key")
            .expect("stat")
            .is_none()
    );
    assert_eq!(
        ext4::stat(img, "/root").expect("stat").expect("root").mode,
        0o040700
    );
    let home = ext4::stat(img, "/home/user").expect("stat").expect("home");
    assert_eq!((home.mode, home.uid), (0o040700, 1000));
    assert_eq!(
        ext4::stat(img, "/usr/bin/sudo")
            .expect("stat")
            .expect("sudo")
            .mode,
        0o104755
    );
    assert_eq!(
        ext4::stat(img, "/dev/null")
            .expect("stat")
            .expect("null")
            .mode,
        0o020666
    );
    let net = ext4::stat(img, "/usr/local/sbin/banger-net")
        .expect("stat")
        .expect("net");
    assert_eq!((net.mode, net.uid, net.gid), (0o100755, 0, 0));
    assert!(built.kernel.has_vmlinux && built.kernel.pvh);
    assert_eq!(built.kernel.name, "debian-bookworm-6.1.0-9-cloud-amd64");
    assert!(!built.build.agent_included);
    // Nothing but the result beside it.
    let names: Vec<String> = std::fs::read_dir(t.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".tmp-banger")),
        "{names:?}"
    );
}
