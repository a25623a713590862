//! The catalog's signed bundles: which catalog a pull uses, pulling an
//! entry into the store (nothing registered and nothing left on failure),
//! and writing a signed bundle of an installed image.

use std::path::{Path, PathBuf};

use banger_proto::ErrorKind;
use banger_store::{ImageRecord, KernelRecord};

use crate::{Daemon, DaemonError};

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
    banger_core::names::is_oci_reference(name).then(|| {
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
                .config()
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
            let source = match (&req.catalog, &self.config().catalog_file) {
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
