//! On-disk layout of the image and kernel store, and atomic installs.
//!
//! ```text
//! <images>/<sha256 of rootfs.ext4>/rootfs.ext4
//! <images>/<sha256>/image.json          (ImageManifest)
//! <kernels>/<name>/{vmlinuz,initrd.img,vmlinux,kernel.json}
//! <images>/.tmp-banger-*                 (in-progress installs; removed by cleanup_partial)
//! ```
//!
//! Everything is first written into a `.tmp-banger-*` directory inside the
//! destination parent (same filesystem), then renamed into place, so a crash
//! never leaves a half image under a real name.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::ext4::FileSize;
use crate::kernel::{self, KernelRecord};

pub const TMP_PREFIX: &str = ".tmp-banger-";
pub const ROOTFS: &str = "rootfs.ext4";
pub const IMAGE_MANIFEST: &str = "image.json";

/// Metadata stored beside each image's rootfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// sha256 of rootfs.ext4 (also the directory name).
    pub sha256: String,
    pub size: FileSize,
    /// Name of the kernel directory under the kernels dir.
    pub kernel: String,
    pub boot_args: String,
    /// Where it came from: `build:<profile>`, `bundle:<url>`, `register:<path>`.
    pub source: String,
    /// Seconds since the epoch.
    pub created: u64,
}

/// An installed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub manifest: ImageManifest,
}

impl ImageRecord {
    pub fn load(dir: &Path) -> Result<Self> {
        let p = dir.join(IMAGE_MANIFEST);
        let text = fs::read(&p).ctx("read", &p)?;
        let manifest =
            serde_json::from_slice(&text).map_err(|source| Error::Json { path: p, source })?;
        Ok(ImageRecord {
            dir: dir.to_path_buf(),
            rootfs: dir.join(ROOTFS),
            manifest,
        })
    }
}

/// A fresh temp dir inside `parent` (created if missing), removed on drop
/// unless renamed into place by [`install_dir`].
pub fn temp_dir_in(parent: &Path) -> Result<tempfile::TempDir> {
    fs::create_dir_all(parent).ctx("create", parent)?;
    tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempdir_in(parent)
        .ctx("create temp dir in", parent)
}

/// Result of [`install_dir`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    New,
    /// `dest` already existed; the temp dir was discarded.
    AlreadyPresent,
}

/// Rename `tmp` to `dest` (same filesystem: atomic). If `dest` exists the
/// temp dir is removed and `AlreadyPresent` returned: content-addressed
/// directories with the same name have the same content.
///
/// Before the rename every file in `tmp` is sealed: written to disk
/// (fsync, then the directory), so a crash after the install never leaves
/// a name whose content is not durable, and made read-only, since a file
/// under its content address is never edited (VMs boot copies of it).
/// The parent is synced after the rename so the name itself is durable.
pub fn install_dir(tmp: tempfile::TempDir, dest: &Path) -> Result<Installed> {
    if dest.exists() {
        return Ok(Installed::AlreadyPresent);
    }
    seal_dir(tmp.path())?;
    match fs::rename(tmp.path(), dest) {
        Ok(()) => {
            // Already moved: nothing left for the TempDir to remove.
            let _ = tmp.keep();
            if let Some(parent) = dest.parent() {
                sync_dir(parent)?;
            }
            Ok(Installed::New)
        }
        // Lost a race with an identical install.
        Err(_) if dest.exists() => Ok(Installed::AlreadyPresent),
        Err(e) => Err(Error::Io {
            action: "install into",
            path: dest.to_path_buf(),
            source: e,
        }),
    }
}

/// fsync and write-protect every regular file directly in `dir`, then
/// fsync `dir` itself.
fn seal_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in fs::read_dir(dir).ctx("list", dir)? {
        let path = entry.ctx("list", dir)?.path();
        let meta = fs::symlink_metadata(&path).ctx("inspect", &path)?;
        if !meta.file_type().is_file() {
            continue;
        }
        fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .ctx("sync", &path)?;
        let mode = meta.permissions().mode() & !0o222;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).ctx("write-protect", &path)?;
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx("sync", dir)
}

/// Remove leftover temp dirs/files (`.tmp-banger-*`) from an interrupted
/// build, pull or install. Call at daemon start for the images, kernels
/// and downloads dirs. Returns what was removed.
pub fn cleanup_partial(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => {
            return Err(Error::Io {
                action: "list",
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let p = e.path();
        let res = if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        res.ctx("remove leftover", &p)?;
        removed.push(p);
    }
    Ok(removed)
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).ctx("open", path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ctx("read", path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Writes a file keeping all-zero blocks as holes, so a decompressed or
/// copied disk image stays sparse.
pub struct SparseWriter {
    file: fs::File,
    path: PathBuf,
    len: u64,
    pending: Vec<u8>,
}

const SPARSE_BLOCK: usize = 64 << 10;

impl SparseWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let file = fs::File::create(path).ctx("create", path)?;
        Ok(SparseWriter {
            file,
            path: path.to_path_buf(),
            len: 0,
            pending: Vec::with_capacity(SPARSE_BLOCK),
        })
    }
    fn flush_block(&mut self) -> std::io::Result<()> {
        if self.pending.iter().all(|b| *b == 0) {
            self.file
                .seek(SeekFrom::Current(self.pending.len() as i64))?;
        } else {
            self.file.write_all(&self.pending)?;
        }
        self.len += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }
    /// Flush, set the final length (a trailing hole) and fsync.
    pub fn finish(mut self) -> Result<u64> {
        self.flush_block().ctx("write", &self.path)?;
        self.file.set_len(self.len).ctx("size", &self.path)?;
        self.file.sync_all().ctx("sync", &self.path)?;
        Ok(self.len)
    }
}

impl Write for SparseWriter {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let total = buf.len();
        while !buf.is_empty() {
            let room = SPARSE_BLOCK - self.pending.len();
            let n = room.min(buf.len());
            self.pending.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.pending.len() == SPARSE_BLOCK {
                self.flush_block()?;
            }
        }
        Ok(total)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Copy keeping holes.
pub fn sparse_copy(src: &Path, dst: &Path) -> Result<u64> {
    let mut from = fs::File::open(src).ctx("open", src)?;
    let mut to = SparseWriter::create(dst)?;
    std::io::copy(&mut from, &mut to).ctx("copy to", dst)?;
    to.finish()
}

/// Move a file into `dir`, renaming when possible, else a sparse copy.
fn move_into(src: &Path, dst: &Path) -> Result<()> {
    if fs::rename(src, dst).is_ok() {
        return Ok(());
    }
    sparse_copy(src, dst)?;
    Ok(())
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Install a rootfs file as a content-addressed image. `rootfs` is moved
/// (renamed if on the same filesystem, else copied sparsely); `manifest`'s
/// `sha256` and `size` are filled in here. Idempotent: the same content
/// yields the same directory.
pub fn install_image(
    images_dir: &Path,
    rootfs: &Path,
    mut manifest: ImageManifest,
) -> Result<ImageRecord> {
    let sha = sha256_file(rootfs)?;
    let tmp = temp_dir_in(images_dir)?;
    let dst = tmp.path().join(ROOTFS);
    move_into(rootfs, &dst)?;
    manifest.sha256 = sha.clone();
    manifest.size = FileSize::of(&dst)?;
    write_json(&tmp.path().join(IMAGE_MANIFEST), &manifest)?;
    let dir = images_dir.join(&sha);
    install_dir(tmp, &dir)?;
    ImageRecord::load(&dir)
}

/// Register an existing rootfs.ext4 from disk (copied, sparsely; the
/// source is left alone). Checks it with `e2fsck -fn` first.
pub fn register_image(
    images_dir: &Path,
    rootfs: &Path,
    manifest: ImageManifest,
) -> Result<ImageRecord> {
    crate::ext4::fsck(rootfs)?;
    check_has_init(rootfs)?;
    let tmp = temp_dir_in(images_dir)?;
    let staged = tmp.path().join(ROOTFS);
    sparse_copy(rootfs, &staged)?;
    // install_image renames within the same filesystem; tmp is then empty
    // and removed on drop.
    install_image(images_dir, &staged, manifest)
}

/// Where the kernel looks for init (before its last resort, /bin/sh), and
/// where banger installs its own.
const INIT_PATHS: &[&str] = &[
    "/sbin/init",
    "/usr/sbin/init",
    "/etc/init",
    "/bin/init",
    "/usr/bin/init",
    "/sbin/banger-init",
    "/usr/sbin/banger-init",
];

/// Refuses a root filesystem nothing could boot: no init where the kernel
/// looks for one.
pub fn check_has_init(rootfs: &Path) -> Result<()> {
    let wanted: Vec<String> = INIT_PATHS.iter().map(|p| p.to_string()).collect();
    if crate::ext4::existing_paths(rootfs, &wanted)?.is_empty() {
        return Err(Error::Rootfs {
            path: rootfs.to_path_buf(),
            reason: format!(
                "it has no init (none of {}): the kernel would have nothing to run; \
                 register the root filesystem of a full system (with systemd or another init)",
                INIT_PATHS.join(", ")
            ),
        });
    }
    Ok(())
}

/// `kernel register`: refuses files that are not a kernel and an initrd
/// before anything is copied, then installs them as [`install_kernel`].
pub fn register_kernel(
    kernels_dir: &Path,
    name: &str,
    vmlinuz: &Path,
    initrd: Option<&Path>,
) -> Result<KernelRecord> {
    kernel::check_kernel_file(vmlinuz)?;
    if let Some(i) = initrd {
        kernel::check_initrd(i)?;
    }
    install_kernel(kernels_dir, name, "unknown", vmlinuz, initrd)
}

/// Install a kernel directory `<kernels>/<name>/` from a vmlinuz (+ initrd):
/// extracts vmlinux and writes kernel.json. If a kernel of that name exists
/// it is returned unchanged.
pub fn install_kernel(
    kernels_dir: &Path,
    name: &str,
    version: &str,
    vmlinuz: &Path,
    initrd: Option<&Path>,
) -> Result<KernelRecord> {
    banger_core::names::validate_kernel_name(name)?;
    let tmp = temp_dir_in(kernels_dir)?;
    kernel::write_kernel_dir(tmp.path(), name, version, vmlinuz, initrd)?;
    let dir = kernels_dir.join(name);
    install_dir(tmp, &dir)?;
    KernelRecord::load(&dir)
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    fs::write(path, text).ctx("write", path)
}
