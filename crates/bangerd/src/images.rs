//! Building and registering images in the daemon's store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_proto::ErrorKind;
use banger_store::{ImageRecord, KernelRecord};

use crate::Daemon;
use crate::api::ApiErr;

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
    ) -> Result<(ImageRecord, KernelRecord), ApiErr> {
        banger_core::names::validate_image_name(&name)?;
        if self.store.get_image(&name).is_ok() {
            return Err(ApiErr::new(
                ErrorKind::Conflict,
                format!(
                    "an image named {name:?} already exists; delete it first (banger image delete {name})"
                ),
            ));
        }
        let agent = agent_binary().ok_or_else(|| {
            ApiErr::new(
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
                .map_err(|e| ApiErr::internal(format!("cannot create a build directory: {e}")))?;
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
                .map_err(|e| ApiErr::internal(format!("image build failed: {e}")))?;
            d.register_built(&built, &format!("build:{}", profile.as_str()))
        })
        .await
        .map_err(|e| ApiErr::internal(format!("build worker failed: {e}")))?
    }

    /// Registers a built image (and its kernel, once per kernel name).
    pub fn register_built(
        &self,
        built: &banger_image::BuiltImage,
        origin: &str,
    ) -> Result<(ImageRecord, KernelRecord), ApiErr> {
        let (img, k) = banger_image::build::install_built(
            built,
            &self.paths.images_dir(),
            &self.paths.kernels_dir(),
        )
        .map_err(|e| ApiErr::internal(format!("cannot install the image: {e}")))?;
        self.register_files(&built.manifest.name, origin, &img, &k)
    }

    /// Records installed image and kernel directories in the database.
    pub fn register_files(
        &self,
        name: &str,
        origin: &str,
        img: &banger_image::store::ImageRecord,
        k: &banger_image::kernel::KernelRecord,
    ) -> Result<(ImageRecord, KernelRecord), ApiErr> {
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
