use std::fs;

use banger_image::build::{self, BuildMode, BuildRecord, BuiltImage, Profile};
use banger_image::ext4::{self, FileSize};
use banger_image::kernel;
use banger_image::store::{self, ImageManifest};

use crate::support::{Comp, fake_bzimage, fake_elf, listing, skip_without_e2fsprogs, small_ext4};

/// A built-image directory like build_image leaves, from small parts.
fn fake_built(dir: &std::path::Path, elf_pvh: bool) -> BuiltImage {
    fs::create_dir_all(dir).expect("mkdir");
    let rootfs = small_ext4(dir);
    let bz = dir.join("bz");
    fs::write(&bz, fake_bzimage(&fake_elf(elf_pvh), Comp::Gzip)).expect("write");
    kernel::write_kernel_dir(
        &dir.join(build::KERNEL_SUBDIR),
        "k-test",
        "6.1.0-t",
        &bz,
        None,
    )
    .expect("kernel dir");
    let m = ImageManifest {
        name: "built".into(),
        version: "1".into(),
        arch: "x86_64".into(),
        sha256: store::sha256_file(&rootfs).expect("hash"),
        size: FileSize::of(&rootfs).expect("size"),
        kernel: "k-test".into(),
        boot_args: kernel::DEFAULT_FIRECRACKER_BOOT_ARGS.into(),
        source: "build:minimal".into(),
        created: 0,
    };
    fs::write(
        dir.join(store::IMAGE_MANIFEST),
        serde_json::to_vec(&m).expect("json"),
    )
    .expect("write");
    let rec = BuildRecord {
        profile: Profile::Minimal,
        mode: BuildMode::Root,
        suite: "bookworm".into(),
        mirror: build::DEFAULT_MIRROR.into(),
        agent_included: false,
        stages: vec![],
    };
    fs::write(
        dir.join(build::BUILD_RECORD),
        serde_json::to_vec(&rec).expect("json"),
    )
    .expect("write");
    BuiltImage::load(dir).expect("load")
}

#[test]
fn install_built_is_content_addressed_and_idempotent() {
    if skip_without_e2fsprogs() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let built = fake_built(&t.path().join("built"), true);
    let (images, kernels) = (t.path().join("images"), t.path().join("kernels"));
    let (img, k) = build::install_built(&built, &images, &kernels).expect("install");
    assert_eq!(img.dir, images.join(&built.manifest.sha256));
    assert_eq!(
        store::sha256_file(&img.rootfs).expect("hash"),
        built.manifest.sha256
    );
    assert_eq!(k.name, "k-test");
    assert!(k.has_vmlinux && k.pvh);
    assert_eq!(
        k.vmlinux.as_deref(),
        Some(kernels.join("k-test/vmlinux").as_path())
    );
    // Again: same directories, nothing extra.
    let (img2, _) = build::install_built(&built, &images, &kernels).expect("again");
    assert_eq!(img2.dir, img.dir);
    assert_eq!(listing(&images).len(), 3, "{:?}", listing(&images));
    assert_eq!(store::ImageRecord::load(&img.dir).expect("load"), img);

    // A different kernel under the same name is refused, and nothing new
    // is left behind.
    let other = fake_built(&t.path().join("other"), false);
    let before = (listing(&images), listing(&kernels));
    let e = build::install_built(&other, &images, &kernels).expect_err("name clash");
    assert!(e.to_string().contains("different kernel"), "{e}");
    assert_eq!((listing(&images), listing(&kernels)), before);
}

#[test]
fn register_image_copies_and_checks() {
    if skip_without_e2fsprogs() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    // Nothing could boot a root filesystem without an init: refused.
    let no_init = small_ext4(&t.path().join("no-init"));
    let src = {
        let dir = t.path().join("with-init");
        let tree = dir.join("tree");
        fs::create_dir_all(tree.join("sbin")).expect("mkdir");
        fs::write(tree.join("sbin/init"), "#!/bin/sh\n").expect("write");
        let noise: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(tree.join("noise.bin"), noise).expect("write");
        let img = dir.join("rootfs.ext4");
        ext4::make_ext4(&tree, &img, 16 << 20, &ext4::Ext4Fixups::new()).expect("mkfs");
        img
    };
    let m = ImageManifest {
        name: "reg".into(),
        version: "1".into(),
        arch: "x86_64".into(),
        sha256: String::new(),
        size: FileSize {
            apparent: 0,
            allocated: 0,
        },
        kernel: "k".into(),
        boot_args: String::new(),
        source: format!("register:{}", src.display()),
        created: 0,
    };
    let images = t.path().join("images");
    let e = store::register_image(&images, &no_init, m.clone()).expect_err("no init");
    assert!(e.to_string().contains("has no init"), "{e}");
    let rec = store::register_image(&images, &src, m.clone()).expect("register");
    assert!(src.is_file(), "the source is left alone");
    assert_eq!(rec.manifest.sha256, store::sha256_file(&src).expect("hash"));
    assert!(
        rec.manifest.size.allocated < rec.manifest.size.apparent,
        "copy stays sparse"
    );

    let junk = t.path().join("junk.ext4");
    fs::write(&junk, vec![0u8; 1 << 20]).expect("write");
    assert!(
        store::register_image(&images, &junk, m).is_err(),
        "not an ext4 image"
    );
    assert!(listing(&images).iter().all(|n| !n.contains(".tmp-banger")));
}
