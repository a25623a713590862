//! `pull_to_ext4`: reference → verified layers in the cache → flattened
//! tree → checked ext4 + image config, installed atomically in the image
//! store as `<images>/<sha256 of rootfs>/{rootfs.ext4,image.json,oci-config.json}`.

use std::fs;
use std::io::{self, Read, Write as _};
use std::path::{Path, PathBuf};

use banger_image::ext4;
use banger_image::store::{self, IMAGE_MANIFEST, ImageManifest, ImageRecord, ROOTFS};
use serde::{Deserialize, Serialize};

use crate::cache::LayerCache;
use crate::error::{Error, IoContext, Result};
use crate::flatten::{Flattener, Limits};
use crate::reference::Reference;
use crate::registry::{Client, Descriptor, ImageManifestDoc, RegistryOptions};

/// File beside rootfs.ext4 holding the [`ImageConfig`].
pub const OCI_CONFIG: &str = "oci-config.json";

/// What `vm run -- CMD` needs from the image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// The canonical reference it was pulled as.
    pub reference: String,
    /// Digest of the (platform) manifest.
    pub manifest_digest: String,
    pub config_digest: String,
    /// `KEY=value` strings, in order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, as the image says.
    pub user: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub os: String,
    pub architecture: String,
}

impl ImageConfig {
    /// The config stored beside an installed image.
    pub fn load(image_dir: &Path) -> Result<Self> {
        let p = image_dir.join(OCI_CONFIG);
        let text = fs::read(&p).ctx("read", &p)?;
        serde_json::from_slice(&text).map_err(|e| Error::Config {
            digest: p.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// The argv `docker run IMAGE [ARGS]` would execute: Entrypoint +
    /// (ARGS, or Cmd when ARGS is empty).
    pub fn argv(&self, args: &[String]) -> Vec<String> {
        let mut v = self.entrypoint.clone().unwrap_or_default();
        if args.is_empty() {
            v.extend(self.cmd.clone().unwrap_or_default());
        } else {
            v.extend(args.iter().cloned());
        }
        v
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Bytes arriving from the registry.
    Downloading,
    /// Already in the layer cache; nothing to download.
    Cached,
    /// Decompressing and applying to the tree (`done`/`total` in
    /// compressed bytes).
    Extracting,
    /// Layer applied.
    Done,
    /// All layers applied; building and checking the ext4 (`layer` is the
    /// layer count).
    Ext4,
}

/// One progress report; the CLI draws a bar per `layer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub layer: usize,
    pub layers: usize,
    pub digest: String,
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

pub struct PullOptions<'a> {
    /// Image store (`<images>/<sha>/…`); a temp dir is made here too, so
    /// the flattened tree and the ext4 are on the store's filesystem.
    pub images_dir: PathBuf,
    /// Layer cache directory, shared by all pulls.
    pub cache_dir: PathBuf,
    pub registry: RegistryOptions,
    pub limits: Limits,
    /// Kernel name and boot args recorded in image.json.
    pub kernel: String,
    pub boot_args: String,
    /// Free space in the ext4 beyond the image's content (sparse: costs no
    /// disk until used).
    pub free_space: u64,
    pub progress: Option<&'a mut dyn FnMut(&Progress)>,
}

impl<'a> PullOptions<'a> {
    pub fn new(images_dir: PathBuf, cache_dir: PathBuf, kernel: impl Into<String>) -> Self {
        PullOptions {
            images_dir,
            cache_dir,
            registry: RegistryOptions::default(),
            limits: Limits::default(),
            kernel: kernel.into(),
            boot_args: String::new(),
            free_space: 128 << 20,
            progress: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PulledImage {
    pub reference: Reference,
    /// The installed image: `dir`, `rootfs` (rootfs.ext4) and image.json.
    pub image: ImageRecord,
    pub config: ImageConfig,
    /// `<dir>/oci-config.json`.
    pub config_path: PathBuf,
    pub layers: Vec<Descriptor>,
    /// Bytes fetched from the registry (0 when every layer was cached).
    pub downloaded: u64,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RawRunConfig>,
    rootfs: RawRootfs,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Resolve `reference` to its linux/amd64 manifest (digest, config and
/// layer descriptors) without downloading layers: lets the daemon tell
/// whether an installed image (its `oci-config.json` `manifest_digest`) is
/// current.
pub fn resolve(reference: &str, opts: &RegistryOptions) -> Result<(Reference, ImageManifestDoc)> {
    let reference = Reference::parse(reference)?;
    let mut client = Client::new(&reference, opts)?;
    let doc = client.resolve(&reference)?;
    Ok((reference, doc))
}

/// Pull `reference`, flatten it and install it as an image. See the
/// module docs for the layout. On any error nothing is installed; a layer
/// whose content was refused is also dropped from the cache.
pub fn pull_to_ext4(reference: &str, mut opts: PullOptions<'_>) -> Result<PulledImage> {
    let reference = Reference::parse(reference)?;
    let cache = LayerCache::new(&opts.cache_dir);
    let mut client = Client::new(&reference, &opts.registry)?;
    let manifest = client.resolve(&reference)?;
    tracing::info!(
        reference = %reference,
        manifest = %manifest.digest,
        layers = manifest.layers.len(),
        "resolved image"
    );
    let config_bytes = client.small_blob(&manifest.config)?;
    let raw: RawConfig = serde_json::from_slice(&config_bytes).map_err(|e| Error::Config {
        digest: manifest.config.digest.clone(),
        reason: format!("not a valid image config: {e}"),
    })?;
    let cfg_err = |reason: String| Error::Config {
        digest: manifest.config.digest.clone(),
        reason,
    };
    if (!raw.os.is_empty() && raw.os != "linux")
        || (!raw.architecture.is_empty() && raw.architecture != "amd64")
    {
        return Err(cfg_err(format!(
            "image is {}/{}, banger guests are linux/amd64",
            raw.os, raw.architecture
        )));
    }
    if raw.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(cfg_err(format!(
            "{} diff_ids for {} layers",
            raw.rootfs.diff_ids.len(),
            manifest.layers.len()
        )));
    }
    let run = raw.config.unwrap_or_default();
    let config = ImageConfig {
        reference: reference.to_string(),
        manifest_digest: manifest.digest.clone(),
        config_digest: manifest.config.digest.clone(),
        env: run.env.unwrap_or_default(),
        working_dir: run.working_dir.filter(|w| !w.is_empty()),
        user: run.user.filter(|u| !u.is_empty()),
        entrypoint: run.entrypoint,
        cmd: run.cmd,
        os: raw.os,
        architecture: raw.architecture,
    };

    let n = manifest.layers.len();
    let mut report = |p: Progress| {
        if let Some(cb) = opts.progress.as_mut() {
            cb(&p);
        }
    };
    let mut downloaded = 0u64;
    let mut blobs = Vec::with_capacity(n);
    for (i, layer) in manifest.layers.iter().enumerate() {
        let progress = |phase, done| Progress {
            layer: i,
            layers: n,
            digest: layer.digest.clone(),
            phase,
            done,
            total: layer.size,
        };
        if let Some(p) = cache.get(&layer.digest)? {
            report(progress(Phase::Cached, layer.size));
            blobs.push(p);
            continue;
        }
        let mut last = 0u64;
        let p = client.fetch_blob(&cache, layer, &mut |done| {
            if done - last >= 1 << 20 || done == layer.size {
                last = done;
                report(progress(Phase::Downloading, done));
            }
        })?;
        downloaded += layer.size;
        blobs.push(p);
    }

    let tmp = store::temp_dir_in(&opts.images_dir)?;
    let tree = tmp.path().join("tree");
    let mut flattener = Flattener::new(&tree, opts.limits)?;
    for (i, (layer, blob)) in manifest.layers.iter().zip(&blobs).enumerate() {
        let file = fs::File::open(blob).ctx("open cached layer", blob)?;
        let mut last = 0u64;
        let reader = Progressed {
            inner: file,
            done: 0,
            cb: &mut |done: u64| {
                if done - last >= 4 << 20 {
                    last = done;
                    report(Progress {
                        layer: i,
                        layers: n,
                        digest: layer.digest.clone(),
                        phase: Phase::Extracting,
                        done,
                        total: layer.size,
                    });
                }
            },
        };
        let res = flattener.apply_layer(&layer.digest, reader, Some(&raw.rootfs.diff_ids[i]));
        if let Err(e) = res {
            tracing::warn!(layer = %layer.digest, error = %e, "layer refused; evicted from the cache");
            // The bytes match their digest, but their content was refused:
            // keep nothing of it around as if it were usable.
            let _ = cache.remove(&layer.digest);
            return Err(e);
        }
        report(Progress {
            layer: i,
            layers: n,
            digest: layer.digest.clone(),
            phase: Phase::Done,
            done: layer.size,
            total: layer.size,
        });
    }
    report(Progress {
        layer: n,
        layers: n,
        digest: manifest.digest.clone(),
        phase: Phase::Ext4,
        done: 0,
        total: 0,
    });
    let flat = flattener.finish()?;
    let rootfs = tmp.path().join(ROOTFS);
    let size = ext4_size(flat.file_bytes, flat.paths, opts.free_space);
    ext4::make_ext4(&tree, &rootfs, size, &flat.fixups)?;
    fs::remove_dir_all(&tree).ctx("remove", &tree)?;
    if !flat.xattrs.is_empty() {
        apply_xattrs(&rootfs, &flat.xattrs)?;
        ext4::fsck(&rootfs)?;
    }

    let sha = store::sha256_file(&rootfs)?;
    let image_manifest = ImageManifest {
        name: format!("{}/{}", reference.registry, reference.repository),
        version: reference
            .tag
            .clone()
            .unwrap_or_else(|| manifest.digest.clone()),
        arch: "x86_64".into(),
        sha256: sha.clone(),
        size: ext4::FileSize::of(&rootfs)?,
        kernel: opts.kernel.clone(),
        boot_args: opts.boot_args.clone(),
        source: format!("oci:{reference}@{}", manifest.digest),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    write_json(&tmp.path().join(IMAGE_MANIFEST), &image_manifest)?;
    write_json(&tmp.path().join(OCI_CONFIG), &config)?;
    let dir = opts.images_dir.join(&sha);
    store::install_dir(tmp, &dir)?;
    let image = ImageRecord::load(&dir)?;
    tracing::info!(reference = %reference, dir = %dir.display(), downloaded, "image installed");
    Ok(PulledImage {
        reference,
        config_path: dir.join(OCI_CONFIG),
        image,
        config,
        layers: manifest.layers,
        downloaded,
    })
}

/// Room for the content, one block per path, and enough inodes at mke2fs's
/// default 16 KiB per inode, plus `free`; at least 64 MiB.
pub fn ext4_size(file_bytes: u64, paths: u64, free: u64) -> u64 {
    let data = file_bytes + paths * 4096;
    let by_data = data + data / 4;
    let by_inodes = paths * 16384 + paths * 4096;
    let mib = 1u64 << 20;
    let size = by_data.max(by_inodes) + free + 32 * mib;
    size.div_ceil(mib).max(64) * mib
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| Error::Io {
        action: "serialise",
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    fs::write(path, text).ctx("write", path)
}

/// Set xattrs in an (unmounted) ext4 image with `debugfs ea_set -f`: the
/// value goes through a file so any bytes survive.
fn apply_xattrs(image: &Path, xattrs: &[(String, String, Vec<u8>)]) -> Result<()> {
    let dir = tempfile::tempdir().ctx("create temp dir for", image)?;
    let mut script = String::new();
    for (i, (path, name, value)) in xattrs.iter().enumerate() {
        for s in [path, name] {
            if s.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
                return Err(Error::Layer {
                    layer: "(xattrs)".into(),
                    reason: format!("cannot carry xattr {name:?} on {path:?} into ext4"),
                });
            }
        }
        let f = dir.path().join(format!("v{i}"));
        fs::write(&f, value).ctx("write", &f)?;
        script.push_str(&format!(
            "ea_set -f \"{}\" \"{path}\" \"{name}\"\n",
            f.display()
        ));
    }
    let sp = dir.path().join("script");
    fs::File::create(&sp)
        .and_then(|mut f| f.write_all(script.as_bytes()))
        .ctx("write", &sp)?;
    let out = std::process::Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&sp)
        .arg(image)
        .env("DEBUGFS_PAGER", "__none__")
        .stdin(std::process::Stdio::null())
        .output()
        .ctx("run debugfs on", image)?;
    // debugfs exits 0 even when a command fails: errors are on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !out.status.success() || !errors.is_empty() {
        return Err(Error::Layer {
            layer: "(xattrs)".into(),
            reason: format!("debugfs ea_set failed: {}", errors.join("; ")),
        });
    }
    Ok(())
}

struct Progressed<'c, R> {
    inner: R,
    done: u64,
    cb: &'c mut dyn FnMut(u64),
}

impl<R: Read> Read for Progressed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.cb)(self.done);
        Ok(n)
    }
}
