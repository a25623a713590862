use std::path::PathBuf;

use banger_image::kernel::{self, Compression};

use crate::support::{Comp, fake_bzimage, fake_elf};

#[test]
fn extracts_vmlinux_from_each_compression() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (comp, want) in [
        (Comp::Gzip, Compression::Gzip),
        (Comp::Xz, Compression::Xz),
        (Comp::Zstd, Compression::Zstd),
        (Comp::Lz4, Compression::Lz4),
    ] {
        for pvh in [true, false] {
            let elf = fake_elf(pvh);
            let p = dir.path().join(format!("bz-{comp:?}-{pvh}"));
            std::fs::write(&p, fake_bzimage(&elf, comp)).expect("write");
            let v = kernel::extract_vmlinux(&p).expect("extract");
            assert_eq!(v.compression, want);
            assert_eq!(v.elf, elf, "{comp:?}: payload must decompress to the ELF");
            assert_eq!(v.pvh, pvh, "{comp:?}: PVH note detection");
        }
    }
}

#[test]
fn rejects_non_bzimage_and_non_elf_payload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("junk");
    std::fs::write(&p, vec![0u8; 4096]).expect("write");
    let e = kernel::extract_vmlinux(&p).expect_err("junk is not a bzImage");
    assert!(e.to_string().contains("HdrS"), "{e}");

    let p2 = dir.path().join("notelf");
    std::fs::write(&p2, fake_bzimage(b"definitely not an ELF file", Comp::Gzip)).expect("write");
    let e = kernel::extract_vmlinux(&p2).expect_err("payload is not ELF");
    assert!(e.to_string().contains("not an ELF"), "{e}");
}

#[test]
fn boot_args_have_no_nomodule() {
    assert!(!kernel::DEFAULT_FIRECRACKER_BOOT_ARGS.contains("nomodule"));
    assert!(kernel::DEFAULT_FIRECRACKER_BOOT_ARGS.contains("root=/dev/vda"));
}

/// The real Debian kernel, when the build test's cached image or the host
/// has one: extraction must give an ELF.
#[test]
fn real_debian_kernel_if_present() {
    let mut candidates: Vec<std::path::PathBuf> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    let cache = banger_testkit::test_cache_dir();
    for e in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
        for p in [e.path().join("kernel/vmlinuz"), e.path().join("vmlinuz")] {
            if p.is_file() {
                candidates.push(p);
            }
        }
    }
    let Some(bz) = candidates.first() else {
        eprintln!("SKIP: no real vmlinuz on this host or in the test cache");
        return;
    };
    let v = kernel::extract_vmlinux(bz).expect("extract real kernel");
    let version = kernel::bzimage_version(bz).expect("version string");
    assert!(
        version.starts_with(|c: char| c.is_ascii_digit()),
        "{version}"
    );
    assert_eq!(&v.elf[..4], b"\x7fELF");
    eprintln!(
        "{}: {version} {:?}, pvh={}, {} bytes",
        bz.display(),
        v.compression,
        v.pvh,
        v.elf.len()
    );
}

#[test]
fn only_kernels_and_initramfs_register() {
    use banger_image::kernel::{KernelFormat, check_initrd, check_kernel_file};
    use banger_image::store;
    let t = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| t.path().join(n);
    std::fs::write(p("text"), "just some text\n").expect("write");
    std::fs::write(p("empty"), b"").expect("write");
    std::fs::write(p("bz"), fake_bzimage(&fake_elf(true), Comp::Gzip)).expect("write");
    std::fs::write(p("elf"), fake_elf(true)).expect("write");
    std::fs::write(p("cpio"), b"070701000000").expect("write");
    for bad in [
        p("text"),
        p("empty"),
        std::path::PathBuf::from("/etc/passwd"),
    ] {
        let e = check_kernel_file(&bad).expect_err("not a kernel");
        assert!(e.to_string().contains("not a Linux kernel"), "{e}");
        let e = check_initrd(&bad).expect_err("not an initrd");
        assert!(e.to_string().contains("not an initramfs"), "{e}");
    }
    assert_eq!(
        check_kernel_file(&p("bz")).expect("bz"),
        KernelFormat::BzImage
    );
    assert_eq!(
        check_kernel_file(&p("elf")).expect("elf"),
        KernelFormat::Elf
    );
    check_initrd(&p("cpio")).expect("cpio");

    // Refused before anything is installed.
    let kernels = p("kernels");
    let e = store::register_kernel(&kernels, "k", &PathBuf::from("/etc/passwd"), None)
        .expect_err("passwd");
    assert!(e.to_string().contains("not a Linux kernel"), "{e}");
    assert!(!kernels.join("k").exists());
    let e = store::register_kernel(&kernels, "k", &p("bz"), Some(&p("text"))).expect_err("initrd");
    assert!(e.to_string().contains("not an initramfs"), "{e}");
    // An ELF vmlinux registers as its own vmlinux (Firecracker boots it).
    let k = store::register_kernel(&kernels, "k", &p("elf"), Some(&p("cpio"))).expect("elf");
    assert!(k.has_vmlinux && k.pvh);
}
