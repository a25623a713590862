//! Building and registering images in the daemon's store.

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
        .chain([PathBuf::from("/usr/local/lib/banger/banger-vsock-agent")])
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

/// Serialises pulls: two pulls of the same bundle would write the same
/// `.part` files in the downloads dir.
static PULL_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Why a pull failed, and whether the bundle was merely unavailable (so a
/// local build is the sensible fallback) or refused.
#[derive(Debug)]
pub struct PullFailure {
    pub err: DaemonError,
    pub unavailable: bool,
}

impl PullFailure {
    fn refused(err: DaemonError) -> Self {
        PullFailure {
            err,
            unavailable: false,
        }
    }
    fn unavailable(err: DaemonError) -> Self {
        PullFailure {
            err,
            unavailable: true,
        }
    }
}

impl From<DaemonError> for PullFailure {
    fn from(err: DaemonError) -> Self {
        PullFailure::refused(err)
    }
}

/// Catalog names are plain store names; anything with '/' or ':' is an
/// OCI reference, which this endpoint does not fetch.
pub fn oci_reference_error(name: &str) -> Option<String> {
    (name.contains('/') || name.contains(':')).then(|| {
        format!(
            "{name:?} is an OCI reference, not a catalog name (such as {}); \
             OCI images are pulled with POST /v1/images/oci-pull",
            banger_core::config::DEFAULT_IMAGE_NAME
        )
    })
}

fn phase_name(p: banger_image::pull::Phase) -> &'static str {
    match p {
        banger_image::pull::Phase::Download => "download",
        banger_image::pull::Phase::Decompress => "decompress",
        banger_image::pull::Phase::Install => "install",
    }
}

impl Daemon {
    /// The catalog a pull uses: the request's file, else config's
    /// `catalog_file`, else the one embedded in banger.
    pub fn catalog(
        &self,
        override_file: Option<&str>,
    ) -> Result<banger_image::catalog::Catalog, DaemonError> {
        let file = match override_file {
            Some(f) => {
                let p = PathBuf::from(f);
                if !p.is_absolute() {
                    return Err(DaemonError::bad_request(format!(
                        "catalog file {f:?} must be an absolute path"
                    )));
                }
                Some(p)
            }
            None => self
                .config
                .catalog_file
                .as_ref()
                .map(|p| p.expand(&banger_core::host::home_dir().unwrap_or_default())),
        };
        banger_image::catalog::Catalog::resolve(file.as_deref())
            .map_err(|e| DaemonError::bad_request(e.to_string()))
    }

    /// Pulls catalog entry `req.name`, installs it into the store and
    /// registers image and kernel (blocking: run on a blocking thread). On
    /// any failure nothing is registered and nothing new is left in the
    /// store. `progress` gets throttled progress events.
    pub fn pull_catalog_image(
        &self,
        req: &banger_proto::PullImageRequest,
        progress: &mut dyn FnMut(banger_proto::PullProgress),
    ) -> Result<(ImageRecord, KernelRecord), PullFailure> {
        use banger_image::Error as E;
        if let Some(msg) = oci_reference_error(&req.name) {
            return Err(DaemonError::bad_request(msg).into());
        }
        let local = req.local_name.clone().unwrap_or_else(|| req.name.clone());
        banger_core::names::validate_image_name(&local).map_err(DaemonError::from)?;
        if self.store.get_image(&local).is_ok() {
            return Err(DaemonError::new(
                ErrorKind::Conflict,
                format!("an image named {local:?} already exists; delete it first (banger image delete {local})"),
            )
            .into());
        }
        let catalog = self.catalog(req.catalog.as_deref())?;
        let entry = catalog.find(&req.name).map_err(|_| {
            let source = match (&req.catalog, &self.config.catalog_file) {
                (Some(f), _) => format!("catalog file {f}"),
                (None, Some(f)) => format!("catalog_file {} from config", f.0),
                (None, None) => "the catalog built into banger".to_string(),
            };
            let names: Vec<&str> = catalog.entries.iter().map(|e| e.name.as_str()).collect();
            let has = if names.is_empty() {
                "it has no entries".to_string()
            } else {
                format!("it has: {}", names.join(", "))
            };
            PullFailure::unavailable(DaemonError::new(
                ErrorKind::NotFound,
                format!(
                    "no image named {:?} in the catalog ({source}; {has}); set catalog_file in config to use another catalog, or build the image locally with `banger image build`",
                    req.name
                ),
            ))
        })?;
        let _guard = PULL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = (String::new(), std::time::Instant::now());
        let mut cb = |p: &banger_image::pull::Progress| {
            let phase = phase_name(p.phase);
            // Throttled: a line per ~100 ms, plus every phase change and the
            // end of each file, is smooth enough for a bar.
            let key = format!("{phase}/{}", p.file);
            if key == last.0 && p.done < p.total && last.1.elapsed().as_millis() < 100 {
                return;
            }
            last = (key, std::time::Instant::now());
            progress(banger_proto::PullProgress {
                phase: phase.to_string(),
                file: p.file.clone(),
                done: p.all_done,
                total: p.all_total,
            });
        };
        let mut opts = banger_image::pull::PullOptions::new(
            self.paths.images_dir(),
            self.paths.kernels_dir(),
            self.paths.downloads_dir(),
        );
        opts.progress = Some(&mut cb);
        tracing::info!(image = %req.name, url = %entry.url, "pulling catalog bundle");
        let kernel_known: Vec<String> = self
            .store
            .list_kernels()
            .map_err(DaemonError::from)?
            .into_iter()
            .map(|k| k.name)
            .collect();
        let pulled = banger_image::pull::pull(entry, opts).map_err(|e| {
            let unavailable = matches!(e, E::Download { .. } | E::Unpinned(_));
            let msg = format!("cannot pull {}: {e}", req.name);
            PullFailure {
                err: if unavailable {
                    DaemonError::new(ErrorKind::Conflict, msg)
                } else {
                    DaemonError::internal(msg)
                },
                unavailable,
            }
        })?;
        let origin = format!("bundle {}", entry.url);
        match self.register_files(&local, &origin, &pulled.image, &pulled.kernel) {
            Ok(r) => {
                tracing::info!(
                    image = %local,
                    bytes = pulled.bytes_downloaded,
                    resumes = pulled.resumes,
                    secs = pulled.elapsed.as_secs_f64(),
                    "pulled"
                );
                Ok(r)
            }
            Err(e) => {
                // Undo: a kernel row this pull added, and files no row uses.
                let new_kernel = !kernel_known.contains(&pulled.kernel.name);
                if new_kernel {
                    let _ = self.store.delete_kernel(&pulled.kernel.name);
                }
                let dir = pulled.image.dir.display().to_string();
                let used = self
                    .store
                    .list_images()
                    .map(|l| l.iter().any(|i| i.dir == dir))
                    .unwrap_or(true);
                if !used {
                    let _ = std::fs::remove_dir_all(&pulled.image.dir);
                }
                if new_kernel {
                    let _ =
                        std::fs::remove_dir_all(self.paths.kernels_dir().join(&pulled.kernel.name));
                }
                Err(e.into())
            }
        }
    }

    /// Writes a signed bundle of image `name` into `out` (which the daemon
    /// creates, so it must be a path the daemon's user can write).
    pub fn bundle_image(
        &self,
        req: &banger_proto::BundleImageRequest,
    ) -> Result<banger_proto::BundleInfo, DaemonError> {
        let img = self.store.get_image(&req.name)?;
        let kernel = self.store.get_kernel(&img.kernel)?;
        let (key, out) = (PathBuf::from(&req.key), PathBuf::from(&req.out));
        for (p, what) in [(&key, "key"), (&out, "out")] {
            if !p.is_absolute() {
                return Err(DaemonError::bad_request(format!(
                    "{what} {} must be an absolute path",
                    p.display()
                )));
            }
        }
        let key = banger_image::bundle::load_signing_key(&key)
            .map_err(|e| DaemonError::bad_request(e.to_string()))?;
        let image = banger_image::store::ImageRecord::load(Path::new(&img.dir))
            .map_err(|e| DaemonError::internal(format!("image {}: {e}", req.name)))?;
        let k = banger_image::kernel::KernelRecord::load(Path::new(&kernel.dir))
            .map_err(|e| DaemonError::internal(format!("kernel {}: {e}", kernel.name)))?;
        let b = banger_image::bundle::bundle(&image, &k, &key, &out)
            .map_err(|e| DaemonError::bad_request(format!("cannot bundle {}: {e}", req.name)))?;
        let size_bytes = b.manifest.files.iter().map(|f| f.compressed_size).sum();
        Ok(banger_proto::BundleInfo {
            dir: b.dir.display().to_string(),
            manifest_sha256: b.manifest_sha256,
            public_key: b.public_key,
            size_bytes,
        })
    }
}
