//! OCI images as banger images: pull through `banger_oci`, make the result
//! bootable without systemd (banger-init injected, `init=` in its boot
//! args, booted with an already registered Debian kernel), and register it.
//!
//! The wire types of `POST /v1/images/oci-pull` are banger-proto's
//! (`OciPullRequest`, `OciPullEvent`).

use std::path::Path;
use std::sync::Arc;

use banger_image::ext4::{self, GuestEntry};
use banger_proto::{ErrorKind, OciPullEvent, OciPullRequest, OciRunConfig};

use crate::Daemon;
use crate::DaemonError;

/// What `vm run -- CMD` honours from an image's config.
fn run_config(c: banger_oci::ImageConfig) -> OciRunConfig {
    OciRunConfig {
        env: c.env,
        working_dir: c.working_dir,
        user: c.user,
        entrypoint: c.entrypoint,
        cmd: c.cmd,
    }
}

/// Origin prefix of images pulled from a registry; the rest is
/// `<canonical reference>@<manifest digest>`.
pub const ORIGIN_PREFIX: &str = "oci:";

/// Layer cache shared by every pull, under the cache dir.
pub fn layer_cache_dir(d: &Daemon) -> std::path::PathBuf {
    d.paths.cache_dir.join(LAYER_CACHE_SUBDIR)
}

/// Under the cache dir: OCI layer blobs, shared between images.
pub const LAYER_CACHE_SUBDIR: &str = "oci-layers";

/// The local store name for a reference: registry, path and tag in store
/// name characters, `docker.io/library/` dropped (`python:3.12-slim` →
/// `python-3.12-slim`, `127.0.0.1:5000/t/bb:1` → `127.0.0.1-5000-t-bb-1`).
pub fn image_name_for(reference: &banger_oci::Reference) -> String {
    let mut s = reference.to_string();
    for p in ["docker.io/library/", "docker.io/"] {
        if let Some(rest) = s.strip_prefix(p) {
            s = rest.to_string();
            break;
        }
    }
    if let Some(i) = s.find("@sha256:") {
        // A digest pin: 12 hex digits name it well enough.
        let keep = (i + "@sha256:".len() + 12).min(s.len());
        s.truncate(keep);
    }
    let mut name: String = s
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '_' | '-') => c,
            _ => '-',
        })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    let mut name = name
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if name.len() > 64 {
        // Keep the end (repository and tag tell images apart).
        let cut = name.len() - 64;
        name = name[cut..]
            .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_string();
    }
    if name.is_empty() {
        name = "oci-image".into();
    }
    name
}

fn progress_event(p: &banger_oci::Progress) -> OciPullEvent {
    let phase = match p.phase {
        banger_oci::Phase::Downloading => "downloading",
        banger_oci::Phase::Cached => "cached",
        banger_oci::Phase::Extracting => "extracting",
        banger_oci::Phase::Done => "done",
        banger_oci::Phase::Ext4 => "ext4",
    };
    OciPullEvent::Progress {
        layer: p.layer,
        layers: p.layers,
        digest: p.digest.clone(),
        phase: phase.to_string(),
        done: p.done,
        total: p.total,
    }
}

/// Serialises OCI pulls: two pulls of one reference would both install
/// and race to register the same name.
static OCI_PULL_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Daemon {
    /// The kernel OCI images boot with and its boot args (plus
    /// `init=/sbin/banger-init`): the default image's kernel, else any
    /// registered kernel.
    pub fn oci_kernel(&self) -> Result<(String, String), DaemonError> {
        let strip_init = |args: &str| {
            args.split_whitespace()
                .filter(|w| !w.starts_with("init="))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let with_init = |args: String| {
            if args.is_empty() {
                banger_agent::init::INIT_BOOT_ARG.to_string()
            } else {
                format!("{args} {}", banger_agent::init::INIT_BOOT_ARG)
            }
        };
        if let Ok(img) = self.store.get_image(&self.config().image_name().value)
            && self.store.get_kernel(&img.kernel).is_ok()
        {
            let args = banger_image::store::ImageRecord::load(Path::new(&img.dir))
                .map(|r| strip_init(&r.manifest.boot_args))
                .unwrap_or_default();
            let args = if args.is_empty() {
                self.kernel_boot_args(&img.kernel)
            } else {
                args
            };
            return Ok((img.kernel, with_init(args)));
        }
        let kernels = self.store.list_kernels()?;
        let k = kernels.first().ok_or_else(|| {
            DaemonError::new(
                ErrorKind::Conflict,
                "no kernel is registered to boot OCI images with; register or pull a Debian image first, its kernel boots OCI images",
            )
        })?;
        Ok((k.name.clone(), with_init(self.kernel_boot_args(&k.name))))
    }

    fn kernel_boot_args(&self, kernel: &str) -> String {
        self.store
            .get_kernel(kernel)
            .ok()
            .and_then(|k| banger_image::kernel::KernelRecord::load(Path::new(&k.dir)).ok())
            .map(|k| {
                k.boot_args
                    .split_whitespace()
                    .filter(|w| !w.starts_with("init="))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    }

    /// An image already pulled from `reference` (same canonical reference
    /// in its origin), with its run config.
    fn installed_oci(
        &self,
        name: &str,
        reference: &banger_oci::Reference,
    ) -> Option<(banger_store::ImageRecord, OciRunConfig)> {
        let img = self.store.get_image(name).ok()?;
        let rest = img.origin.strip_prefix(ORIGIN_PREFIX)?;
        let (r, _digest) = rest.rsplit_once('@')?;
        let same = r == reference.to_string()
            || rest == reference.to_string()
            || banger_oci::Reference::parse(r).is_ok_and(|p| p == *reference);
        if !same {
            return None;
        }
        let cfg = banger_oci::ImageConfig::load(Path::new(&img.dir)).ok()?;
        Some((img, run_config(cfg)))
    }

    /// Pulls `req.reference`, makes it bootable, registers it (blocking:
    /// minutes for big images; call from a blocking thread).
    pub fn pull_oci_image(
        self: &Arc<Self>,
        req: &OciPullRequest,
        progress: &mut dyn FnMut(OciPullEvent),
    ) -> Result<OciPullEvent, DaemonError> {
        let reference = banger_oci::Reference::parse(&req.reference)
            .map_err(|e| DaemonError::bad_request(format!("{:?}: {e}", req.reference)))?;
        let name = match &req.name {
            Some(n) => n.clone(),
            None => image_name_for(&reference),
        };
        banger_core::names::validate_image_name(&name)?;
        let _guard = OCI_PULL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let mut registry = banger_oci::RegistryOptions {
            insecure_registries: self.config().insecure_registries.clone(),
            ..Default::default()
        };
        registry.auth_files.retain(|p| p.is_file());
        if let Some((img, config)) = self.installed_oci(&name, &reference) {
            let current = req.if_missing || {
                let installed = banger_oci::ImageConfig::load(Path::new(&img.dir))
                    .map(|c| c.manifest_digest)
                    .unwrap_or_default();
                banger_oci::resolve(&req.reference, &registry)
                    .map(|(_, doc)| doc.digest == installed)
                    .map_err(DaemonError::from)?
            };
            if current {
                return Ok(OciPullEvent::Done {
                    image: crate::images::image_info(img),
                    config,
                    pulled: false,
                });
            }
            return Err(DaemonError::new(
                ErrorKind::Conflict,
                format!(
                    "image {name:?} holds an older pull of {reference}; delete it (banger image delete {name}) and pull again"
                ),
            ));
        }
        if self.store.get_image(&name).is_ok() {
            return Err(DaemonError::new(
                ErrorKind::Conflict,
                format!(
                    "an image named {name:?} already exists and was not pulled from {reference}; choose another --name"
                ),
            ));
        }
        let agent = crate::images::agent_binary().ok_or_else(|| {
            DaemonError::new(
                ErrorKind::Conflict,
                format!(
                    "cannot find the banger-vsock-agent binary to inject as {}; build it (scripts/build-agent-static) and set {}, or install banger with `banger system install`",
                    banger_agent::init::INIT_PATH,
                    crate::images::ENV_AGENT_BIN
                ),
            )
        })?;
        let agent_bytes = std::fs::read(&agent)
            .map_err(|e| DaemonError::internal(format!("cannot read {}: {e}", agent.display())))?;
        let (kernel, boot_args) = self.oci_kernel()?;
        let kernel_dir = self.store.get_kernel(&kernel)?.dir;
        let krec = banger_image::kernel::KernelRecord::load(Path::new(&kernel_dir))
            .map_err(|e| DaemonError::internal(format!("kernel {kernel}: {e}")))?;

        let cache = layer_cache_dir(self);
        crate::ensure_private_dir(&cache).map_err(DaemonError::internal)?;
        let mut opts = banger_oci::PullOptions::new(self.paths.images_dir(), cache, kernel.clone());
        opts.registry = registry;
        opts.boot_args = boot_args;
        let mut on_progress = |p: &banger_oci::Progress| progress(progress_event(p));
        opts.progress = Some(&mut on_progress);
        tracing::info!(reference = %reference, image = %name, kernel = %kernel, "pulling OCI image");
        let pulled = banger_oci::pull_to_ext4(&req.reference, opts).map_err(DaemonError::from)?;
        let installed = pulled.image.clone();
        let r = self
            .make_bootable(&installed, &agent_bytes)
            .and_then(|img| {
                let origin = img.manifest.source.clone();
                self.register_files(&name, &origin, &img, &krec)
            });
        match r {
            Ok((img, _)) => {
                tracing::info!(image = %name, origin = %img.origin, "OCI image registered");
                Ok(OciPullEvent::Done {
                    image: crate::images::image_info(img),
                    config: run_config(pulled.config),
                    pulled: true,
                })
            }
            Err(e) => {
                // Nothing registered: do not leave an unusable image dir.
                let _ = std::fs::remove_dir_all(&installed.dir);
                Err(e)
            }
        }
    }

    /// Injects banger-init and the directories the initramfs and init
    /// mount over, then records the changed rootfs's digest and size.
    fn make_bootable(
        &self,
        img: &banger_image::store::ImageRecord,
        agent: &[u8],
    ) -> Result<banger_image::store::ImageRecord, DaemonError> {
        let rootfs = &img.rootfs;
        let fail = |e: banger_image::Error| {
            DaemonError::internal(format!(
                "cannot install banger-init into {}: {e}",
                rootfs.display()
            ))
        };
        // Merged-/usr images have /sbin -> usr/sbin; debugfs does not
        // follow symlinks, so write where the link points.
        let sbin_is_link = ext4::stat(rootfs, "/sbin")
            .map_err(fail)?
            .is_some_and(|s| s.mode & 0o170000 == 0o120000);
        let init_path = if sbin_is_link {
            "/usr/sbin/banger-init"
        } else {
            banger_agent::init::INIT_PATH
        };
        let mut entries = Vec::new();
        // The initramfs moves /dev, /proc, /sys and /run onto these.
        for (dir, mode) in [
            ("/dev", 0o755),
            ("/proc", 0o555),
            ("/sys", 0o555),
            ("/run", 0o755),
            ("/tmp", 0o1777),
            ("/root", 0o700),
        ] {
            let present = ext4::stat(rootfs, dir).map_err(fail)?;
            if present.is_none() {
                entries.push(GuestEntry::dir(dir, mode));
            }
        }
        entries.push(GuestEntry::file(init_path, agent.to_vec(), 0o755));
        ext4::write_files(rootfs, &entries).map_err(fail)?;
        let mut out = img.clone();
        out.manifest.sha256 = banger_image::store::sha256_file(rootfs).map_err(fail)?;
        out.manifest.size = ext4::FileSize::of(rootfs).map_err(fail)?;
        let json = serde_json::to_vec_pretty(&out.manifest).map_err(DaemonError::internal)?;
        std::fs::write(img.dir.join(banger_image::store::IMAGE_MANIFEST), json)
            .map_err(|e| DaemonError::internal(format!("cannot update image.json: {e}")))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(r: &str) -> String {
        image_name_for(&banger_oci::Reference::parse(r).expect("reference"))
    }

    #[test]
    fn names_from_references_are_store_names() {
        assert_eq!(name("python:3.12-slim"), "python-3.12-slim");
        assert_eq!(name("busybox"), "busybox-latest");
        assert_eq!(name("ghcr.io/org/app:V1"), "ghcr.io-org-app-v1");
        assert_eq!(
            name("127.0.0.1:5000/test/busybox:1"),
            "127.0.0.1-5000-test-busybox-1"
        );
        let pinned = name(&format!("alpine@sha256:{}", "ab".repeat(32)));
        assert_eq!(pinned, "alpine-sha256-abababababab");
        let long = name(&format!("example.com/{}/app:1", "x".repeat(80)));
        assert!(long.len() <= 64 && long.ends_with("app-1"), "{long}");
        for n in [pinned, long, name("quay.io/a_b/c.d:E")] {
            banger_core::names::validate_image_name(&n).expect("valid store name");
        }
    }
}
