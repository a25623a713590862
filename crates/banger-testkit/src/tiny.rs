//! A tiny registered image for daemon tests that create VMs without booting
//! a real guest: a small ext4 root with the directories personalisation
//! writes to, and a kernel directory whose "vmlinux" is a placeholder (the
//! VMM in those tests is the fake firecracker, which never reads it).

use banger_core::Paths;
use banger_store::{ImageRecord, KernelRecord, Store};

/// Store name of the image [`register_tiny_image`] registers.
pub const TINY_IMAGE: &str = "tiny";

/// Writes the image and kernel files under `paths` and registers both.
/// Needs `mkfs.ext4` (e2fsprogs).
pub fn register_tiny_image(store: &Store, paths: &Paths) -> Result<(), String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("tiny image: {what}: {e}");
    let tree = tempfile::tempdir().map_err(|e| err("temp dir", &e))?;
    for sub in ["etc/ssh", "root"] {
        std::fs::create_dir_all(tree.path().join(sub)).map_err(|e| err("mkdir", &e))?;
    }
    std::fs::write(tree.path().join("root/.bashrc"), "# bashrc\n").map_err(|e| err("w", &e))?;
    let img_dir = paths.images_dir().join(TINY_IMAGE);
    std::fs::create_dir_all(&img_dir).map_err(|e| err("mkdir", &e))?;
    banger_image::ext4::make_ext4(
        tree.path(),
        &img_dir.join(banger_image::store::ROOTFS),
        64 << 20,
        &banger_image::Ext4Fixups::new(),
    )
    .map_err(|e| err("mkfs", &e))?;
    let kdir = paths.kernels_dir().join("k");
    std::fs::create_dir_all(&kdir).map_err(|e| err("mkdir", &e))?;
    for f in ["vmlinux", "vmlinuz"] {
        std::fs::write(kdir.join(f), b"not a kernel").map_err(|e| err("w", &e))?;
    }
    let krec = banger_image::kernel::KernelRecord {
        name: "k".into(),
        version: "test".into(),
        vmlinuz: kdir.join("vmlinuz"),
        initrd: None,
        vmlinux: Some(kdir.join("vmlinux")),
        has_vmlinux: true,
        pvh: false,
        boot_args: String::new(),
    };
    let json = serde_json::to_vec(&krec).map_err(|e| err("json", &e))?;
    std::fs::write(kdir.join(banger_image::kernel::KERNEL_RECORD), json)
        .map_err(|e| err("w", &e))?;
    store
        .insert_kernel(&KernelRecord {
            name: "k".into(),
            version: "test".into(),
            dir: kdir.display().to_string(),
            has_vmlinux: true,
            pvh: false,
            created_at: 0,
        })
        .map_err(|e| err("kernel row", &e))?;
    store
        .insert_image(&ImageRecord {
            name: TINY_IMAGE.into(),
            digest: "sha256:00".into(),
            kernel: "k".into(),
            size_bytes: 0,
            origin: "test".into(),
            dir: img_dir.display().to_string(),
            created_at: 0,
        })
        .map_err(|e| err("image row", &e))?;
    Ok(())
}
