//! Images and kernels in the daemon's store: building the golden image,
//! registering built, pulled or user-supplied files, deleting them, and
//! their wire form.
//!
//! - [`catalog`]: pulls of the catalog's signed bundles, and bundling;
//! - [`ensure`]: "make this image present", the policy `vm run` uses.

pub mod catalog;
pub mod ensure;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_proto::ErrorKind;
use banger_store::{ImageRecord, KernelRecord};

use crate::Daemon;
use crate::DaemonError;

pub const ENV_AGENT_BIN: &str = "BANGER_AGENT_BIN";

/// The guest agent binary to bake into images: `$BANGER_AGENT_BIN`, next to
/// this daemon's executable, or the system install location.
pub fn agent_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_AGENT_BIN).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("banger-vsock-agent")));
    beside
        .into_iter()
        .chain([PathBuf::from(banger_core::paths::SYSTEM_AGENT_BIN)])
        .find(|p| p.is_file())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Daemon {
    /// Builds the golden image with mmdebstrap and registers it (blocking;
    /// minutes). Everything is built under the state dir's tmp area and
    /// moved into place only when complete.
    pub async fn build_image(
        self: &Arc<Self>,
        name: String,
        profile: banger_image::Profile,
        mirror: Option<String>,
    ) -> Result<(ImageRecord, KernelRecord), DaemonError> {
        banger_core::names::validate_image_name(&name)?;
        if self.store.get_image(&name).is_ok() {
            return Err(DaemonError::new(
                ErrorKind::Conflict,
                format!(
                    "an image named {name:?} already exists; delete it first (banger image delete {name})"
                ),
            ));
        }
        let agent = agent_binary().ok_or_else(|| {
            DaemonError::new(
                ErrorKind::Conflict,
                format!(
                    "cannot find the banger-vsock-agent binary to put in the image; build it (scripts/build-agent-static) and set {ENV_AGENT_BIN}, or install banger with `banger system install`"
                ),
            )
        })?;
        let d = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let tmp = tempfile::Builder::new()
                .prefix("build-")
                .tempdir_in(d.paths.tmp_dir())
                .map_err(|e| {
                    DaemonError::internal(format!("cannot create a build directory: {e}"))
                })?;
            let mut opts = banger_image::BuildOptions::new(&name, profile, tmp.path().join("out"));
            if let Some(m) = mirror {
                opts.mirror = m;
            }
            opts.agent = Some(banger_image::AgentPayload {
                binary: agent,
                unit: banger_agent::SYSTEMD_UNIT.to_string(),
            });
            tracing::info!(image = %name, profile = profile.as_str(), "building image");
            let built = banger_image::build_image(&opts)
                .map_err(|e| DaemonError::internal(format!("image build failed: {e}")))?;
            d.register_built(&built, &format!("build:{}", profile.as_str()))
        })
        .await
        .map_err(|e| DaemonError::internal(format!("build worker failed: {e}")))?
    }

    /// Registers a built image (and its kernel, once per kernel name).
    pub fn register_built(
        &self,
        built: &banger_image::BuiltImage,
        origin: &str,
    ) -> Result<(ImageRecord, KernelRecord), DaemonError> {
        let (img, k) = banger_image::build::install_built(
            built,
            &self.paths.images_dir(),
            &self.paths.kernels_dir(),
        )
        .map_err(|e| DaemonError::internal(format!("cannot install the image: {e}")))?;
        self.register_files(&built.manifest.name, origin, &img, &k)
    }

    /// Records installed image and kernel directories in the database.
    pub fn register_files(
        &self,
        name: &str,
        origin: &str,
        img: &banger_image::store::ImageRecord,
        k: &banger_image::kernel::KernelRecord,
    ) -> Result<(ImageRecord, KernelRecord), DaemonError> {
        let kernel = match self.store.get_kernel(&k.name) {
            Ok(existing) => existing,
            Err(_) => {
                let rec = KernelRecord {
                    name: k.name.clone(),
                    version: k.version.clone(),
                    dir: kernel_dir(&self.paths.kernels_dir(), &k.name),
                    has_vmlinux: k.has_vmlinux,
                    pvh: k.pvh,
                    created_at: unix_now(),
                };
                self.store.insert_kernel(&rec)?;
                rec
            }
        };
        let image = ImageRecord {
            name: name.to_string(),
            digest: format!("sha256:{}", img.manifest.sha256),
            kernel: kernel.name.clone(),
            size_bytes: img.manifest.size.allocated,
            origin: origin.to_string(),
            dir: img.dir.display().to_string(),
            created_at: unix_now(),
        };
        self.store.insert_image(&image)?;
        Ok((image, kernel))
    }
}

fn kernel_dir(kernels: &Path, name: &str) -> String {
    kernels.join(name).display().to_string()
}

/// An image row as the API reports it.
pub fn image_info(r: ImageRecord) -> banger_proto::ImageInfo {
    banger_proto::ImageInfo {
        name: r.name,
        digest: r.digest,
        kernel: r.kernel,
        size_bytes: r.size_bytes,
        origin: r.origin,
        created_at: r.created_at,
    }
}

/// A kernel row as the API reports it.
pub fn kernel_info(r: KernelRecord) -> banger_proto::KernelInfo {
    banger_proto::KernelInfo {
        name: r.name,
        version: r.version,
        has_vmlinux: r.has_vmlinux,
        pvh: r.pvh,
        created_at: r.created_at,
    }
}

/// A user-supplied file: an absolute path to a readable file.
fn absolute_file(p: &str, what: &str) -> Result<PathBuf, DaemonError> {
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(DaemonError::bad_request(format!(
            "{what} {p:?} must be an absolute path"
        )));
    }
    if !path.is_file() {
        return Err(DaemonError::bad_request(format!(
            "{what} {p:?} is not a readable file"
        )));
    }
    Ok(path)
}

impl Daemon {
    /// Registers a user's kernel (vmlinuz, optional initrd) under `req.name`.
    pub async fn register_kernel(
        self: &Arc<Self>,
        req: banger_proto::RegisterKernelRequest,
    ) -> Result<KernelRecord, DaemonError> {
        banger_core::names::validate_kernel_name(&req.name)?;
        if self.store.get_kernel(&req.name).is_ok() {
            return Err(DaemonError::conflict(format!(
                "a kernel named {:?} already exists; delete it first",
                req.name
            )));
        }
        let vmlinuz = absolute_file(&req.vmlinuz, "vmlinuz")?;
        let initrd = req
            .initrd
            .as_deref()
            .map(|p| absolute_file(p, "initrd"))
            .transpose()?;
        let d = Arc::clone(self);
        let name = req.name.clone();
        let k = tokio::task::spawn_blocking(move || {
            banger_image::store::register_kernel(
                &d.paths.kernels_dir(),
                &name,
                &vmlinuz,
                initrd.as_deref(),
            )
        })
        .await
        .map_err(DaemonError::internal)?
        .map_err(|e| {
            DaemonError::bad_request(format!("cannot register kernel {}: {e}", req.name))
        })?;
        let rec = KernelRecord {
            name: k.name.clone(),
            version: k.version.clone(),
            dir: kernel_dir(&self.paths.kernels_dir(), &k.name),
            has_vmlinux: k.has_vmlinux,
            pvh: k.pvh,
            created_at: 0,
        };
        self.store.insert_kernel(&rec)?;
        Ok(self.store.get_kernel(&rec.name)?)
    }

    /// Registers a user's ext4 root filesystem as image `req.name`, booted
    /// with kernel `req.kernel`.
    pub async fn register_image(
        self: &Arc<Self>,
        req: banger_proto::RegisterImageRequest,
    ) -> Result<ImageRecord, DaemonError> {
        banger_core::names::validate_image_name(&req.name)?;
        if self.store.get_image(&req.name).is_ok() {
            return Err(DaemonError::conflict(format!(
                "an image named {:?} already exists; delete it first",
                req.name
            )));
        }
        let kernel = self.store.get_kernel(&req.kernel)?;
        let rootfs = absolute_file(&req.rootfs, "rootfs")?;
        let manifest = banger_image::store::ImageManifest {
            name: req.name.clone(),
            version: "registered".into(),
            arch: "x86_64".into(),
            sha256: String::new(),
            size: banger_image::FileSize {
                apparent: 0,
                allocated: 0,
            },
            kernel: kernel.name.clone(),
            boot_args: String::new(),
            source: format!("register:{}", rootfs.display()),
            created: 0,
        };
        let d = Arc::clone(self);
        let img = tokio::task::spawn_blocking(move || {
            banger_image::store::register_image(&d.paths.images_dir(), &rootfs, manifest)
        })
        .await
        .map_err(DaemonError::internal)?
        .map_err(|e| {
            DaemonError::bad_request(format!("cannot register image {}: {e}", req.name))
        })?;
        let kernel_rec = banger_image::kernel::KernelRecord::load(Path::new(&kernel.dir))
            .map_err(DaemonError::internal)?;
        let (img, _) = self.register_files(&req.name, "register", &img, &kernel_rec)?;
        Ok(img)
    }

    /// Deletes image `name`, and its files unless another name shares them.
    pub fn delete_image(&self, name: &str) -> Result<ImageRecord, DaemonError> {
        let rec = self.store.delete_image(name)?;
        // Its warm snapshots go too, except those restored VMs' disks still back onto.
        self.warm_gc();
        // Content-addressed: another name may point at the same directory.
        let shared = self.store.list_images()?.iter().any(|i| i.dir == rec.dir);
        if !shared {
            remove_store_dir(&self.paths.images_dir(), &rec.dir);
        }
        Ok(rec)
    }

    /// Deletes kernel `name` and its files (refused while images use it).
    pub fn delete_kernel(&self, name: &str) -> Result<KernelRecord, DaemonError> {
        let rec = self.store.delete_kernel(name)?;
        remove_store_dir(&self.paths.kernels_dir(), &rec.dir);
        Ok(rec)
    }
}

/// Removes a store directory only if it lies inside its store root: a
/// corrupted row must never make the daemon delete something else.
fn remove_store_dir(root: &Path, dir: &str) {
    let p = Path::new(dir);
    if !banger_core::paths::is_within(p, root) || p == root {
        tracing::error!(dir, root = %root.display(), "refusing to remove a directory outside its store");
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(p)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir, "cannot remove store directory: {e}");
    }
}

/// Store directories no row names: an install renamed into place whose
/// registration a kill -9 interrupted. Only entries directly under `root`
/// that are directories and not in-progress temp dirs are candidates.
/// When some row names a directory that is not directly under `root`
/// (the state dir was moved, or reached by another path), nothing is an
/// orphan: a row this function cannot match must never cost an image.
pub(crate) fn orphan_store_dirs<'a>(
    root: &Path,
    registered: impl IntoIterator<Item = &'a str>,
) -> std::io::Result<Vec<PathBuf>> {
    let mut names = std::collections::HashSet::new();
    for dir in registered {
        let dir = Path::new(dir);
        match dir.file_name() {
            Some(name) if dir.parent() == Some(root) => {
                names.insert(name.to_os_string());
            }
            _ => return Ok(Vec::new()),
        }
    }
    let mut orphans = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(orphans),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name
            .to_string_lossy()
            .starts_with(banger_image::store::TMP_PREFIX)
            || !entry.file_type()?.is_dir()
        {
            continue;
        }
        if !names.contains(&name) {
            orphans.push(root.join(&name));
        }
    }
    orphans.sort();
    Ok(orphans)
}

impl Daemon {
    /// Removes image and kernel directories that no row names (see
    /// [`orphan_store_dirs`]). Called at start, before anything can pull.
    pub(crate) fn remove_orphan_store_dirs(&self) -> Result<(), DaemonError> {
        let images = self.store.list_images()?;
        let kernels = self.store.list_kernels()?;
        let sets = [
            (
                self.paths.images_dir(),
                images.iter().map(|r| r.dir.as_str()).collect::<Vec<_>>(),
            ),
            (
                self.paths.kernels_dir(),
                kernels.iter().map(|r| r.dir.as_str()).collect::<Vec<_>>(),
            ),
        ];
        for (root, dirs) in sets {
            let orphans = orphan_store_dirs(&root, dirs).map_err(|e| {
                DaemonError::internal(format!("cannot list {}: {e}", root.display()))
            })?;
            for dir in orphans {
                tracing::warn!(dir = %dir.display(), "removing a store directory no image or kernel names (an interrupted install)");
                remove_store_dir(&root, &dir.to_string_lossy());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod orphan_tests {
    use super::*;

    #[test]
    fn only_unnamed_directories_are_orphans() {
        let root = tempfile::tempdir().expect("tempdir");
        for d in ["named", "orphan", ".tmp-banger-inflight"] {
            std::fs::create_dir(root.path().join(d)).expect("mkdir");
        }
        std::fs::write(root.path().join("stray-file"), b"x").expect("file");
        let named = root.path().join("named");
        let named = named.to_string_lossy().into_owned();
        let orphans = orphan_store_dirs(root.path(), [named.as_str()]).expect("list");
        assert_eq!(orphans, vec![root.path().join("orphan")]);
        // A row elsewhere (a moved state dir): nothing is removed.
        let moved =
            orphan_store_dirs(root.path(), [named.as_str(), "/elsewhere/abc"]).expect("list");
        assert!(moved.is_empty());
        let missing = root.path().join("absent");
        assert!(
            orphan_store_dirs(&missing, [])
                .expect("absent root")
                .is_empty()
        );
    }
}
