//! Builds (or reuses) the cached test guest and checks it is bootable material.

use std::process::Command;

#[test]
fn test_guest_has_kernel_initrd_and_clean_ext4_rootfs() {
    if !banger_testkit::is_root() || banger_testkit::which("mmdebstrap").is_none() {
        eprintln!("SKIP: building the test guest needs root and mmdebstrap");
        return;
    }
    let guest = banger_testkit::test_guest().expect("build test guest");
    for p in [&guest.vmlinuz, &guest.initrd, &guest.rootfs] {
        let len = std::fs::metadata(p).expect("guest file exists").len();
        assert!(
            len > 1024 * 1024,
            "{} is suspiciously small ({len} bytes)",
            p.display()
        );
    }
    // e2fsck -n on a copy would be cleaner, but the cached image is never booted in place.
    let out = Command::new(banger_testkit::which("e2fsck").expect("e2fsck"))
        .args(["-fn"])
        .arg(&guest.rootfs)
        .output()
        .expect("run e2fsck");
    assert!(
        out.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The initramfs must carry the microvm transport, or the kernel never sees /dev/vda.
    if let Some(lsinitramfs) = banger_testkit::which("lsinitramfs") {
        let out = Command::new(lsinitramfs)
            .arg(&guest.initrd)
            .output()
            .expect("lsinitramfs");
        let listing = String::from_utf8_lossy(&out.stdout);
        for module in ["virtio_mmio", "virtio_blk", "virtio_net"] {
            assert!(listing.contains(module), "initrd lacks {module}");
        }
    }
}

#[test]
fn vmlinux_can_be_extracted_from_the_guest_kernel_for_firecracker() {
    if !banger_testkit::is_root() || banger_testkit::which("mmdebstrap").is_none() {
        eprintln!("SKIP: building the test guest needs root and mmdebstrap");
        return;
    }
    let guest = banger_testkit::test_guest().expect("build test guest");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("vmlinux");
    banger_testkit::extract_vmlinux(&guest.vmlinuz, &out).expect("extract vmlinux");
    let elf = std::fs::read(&out).expect("read vmlinux");
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "64-bit ELF");
    assert!(elf.len() > std::fs::metadata(&guest.vmlinuz).expect("meta").len() as usize);
}
