//! Bundles: what `banger image pull` downloads and `banger image bundle`
//! produces. A directory (served over HTTP) holding
//!
//! - `manifest.json`: [`BundleManifest`],
//! - `manifest.json.sig`: base64 ed25519 signature over the exact bytes of
//!   `manifest.json`,
//! - `<path>.zst` for each file the manifest lists.
//!
//! See docs/image-catalog.md.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::kernel::{INITRD, KernelRecord, VMLINUX, VMLINUZ};
use crate::store::{self, ImageRecord, ROOTFS};

pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.json.sig";
pub const FORMAT: u32 = 1;
/// Manifests are small; anything bigger is refused before parsing.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
const ZSTD_LEVEL: i32 = 3;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    pub format: u32,
    pub name: String,
    pub version: String,
    pub arch: String,
    #[serde(default)]
    pub description: String,
    pub files: Vec<BundleFile>,
    pub kernel: BundleKernel,
    /// Default kernel command line (Firecracker; no `nomodule`).
    pub boot_args: String,
}

/// One file; served as `<path>.zst` beside the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    /// A plain file name: no `/`, no `..`.
    pub path: String,
    /// Uncompressed.
    pub size: u64,
    pub sha256: String,
    pub compressed_size: u64,
    pub compressed_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleKernel {
    pub name: String,
    pub version: String,
    /// File names from `files`.
    pub vmlinuz: String,
    pub initrd: Option<String>,
    pub vmlinux: Option<String>,
    pub pvh: bool,
}

fn merr(msg: impl Into<String>) -> Error {
    Error::Manifest(msg.into())
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A manifest file name must be a single plain component.
pub fn check_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(merr(format!(
            "file path {name:?} is not a plain file name inside the bundle (no '/', '..', or leading '.'); refusing"
        )))
    }
}

impl BundleManifest {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let m: BundleManifest = serde_json::from_slice(bytes)
            .map_err(|e| merr(format!("not a valid bundle manifest: {e}")))?;
        m.validate()?;
        Ok(m)
    }

    /// Structural checks: format, names, file paths confined to the bundle,
    /// digests well formed, kernel files present, a rootfs present.
    pub fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            return Err(merr(format!(
                "format {} is not supported (this banger reads format {FORMAT}); upgrade banger",
                self.format
            )));
        }
        banger_core::names::validate_image_name(&self.name)?;
        banger_core::names::validate_kernel_name(&self.kernel.name)?;
        let mut seen = BTreeSet::new();
        for f in &self.files {
            check_file_name(&f.path)?;
            if !seen.insert(f.path.as_str()) {
                return Err(merr(format!("file {:?} is listed twice", f.path)));
            }
            if !is_sha256_hex(&f.sha256) || !is_sha256_hex(&f.compressed_sha256) {
                return Err(merr(format!(
                    "file {:?}: sha256 must be 64 lowercase hex digits",
                    f.path
                )));
            }
        }
        let need = |name: &str| {
            if seen.contains(name) {
                Ok(())
            } else {
                Err(merr(format!(
                    "names {name:?} but does not list it in files"
                )))
            }
        };
        need(ROOTFS)?;
        need(&self.kernel.vmlinuz)?;
        if let Some(i) = &self.kernel.initrd {
            need(i)?;
        }
        if let Some(v) = &self.kernel.vmlinux {
            need(v)?;
        }
        Ok(())
    }

    pub fn file(&self, path: &str) -> Option<&BundleFile> {
        self.files.iter().find(|f| f.path == path)
    }
}

// ---- keys -------------------------------------------------------------

/// Create a new signing key: `secret` gets the base64 32-byte seed (mode
/// 0600), `public` the base64 public key (what a catalog entry carries).
pub fn generate_key(secret: &Path, public: &Path) -> Result<VerifyingKey> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(secret)
        .ctx("create key file", secret)?;
    writeln!(f, "{}", B64.encode(key.to_bytes())).ctx("write", secret)?;
    let vk = key.verifying_key();
    fs::write(public, format!("{}\n", public_key_base64(&vk))).ctx("write", public)?;
    Ok(vk)
}

pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    let text = fs::read_to_string(path).ctx("read", path)?;
    let bytes = B64.decode(text.trim()).map_err(|e| Error::Key {
        path: path.to_path_buf(),
        reason: format!("not base64: {e}"),
    })?;
    let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| Error::Key {
        path: path.to_path_buf(),
        reason: format!("expected a 32-byte ed25519 seed, got {} bytes", bytes.len()),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

pub fn public_key_base64(key: &VerifyingKey) -> String {
    B64.encode(key.to_bytes())
}

pub fn parse_public_key(b64: &str) -> Result<VerifyingKey> {
    let bad = |reason: String| Error::Catalog(format!("public key {b64:?}: {reason}"));
    let bytes = B64
        .decode(b64.trim())
        .map_err(|e| bad(format!("not base64: {e}")))?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| bad(format!("expected 32 bytes, got {}", bytes.len())))?;
    VerifyingKey::from_bytes(&arr).map_err(|e| bad(e.to_string()))
}

/// Base64 signature of `manifest` bytes.
pub fn sign(manifest: &[u8], key: &SigningKey) -> String {
    B64.encode(key.sign(manifest).to_bytes())
}

pub fn verify(manifest: &[u8], signature_b64: &str, key: &VerifyingKey) -> Result<()> {
    let bytes = B64
        .decode(signature_b64.trim())
        .map_err(|_| Error::BadSignature)?;
    let arr: [u8; 64] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| Error::BadSignature)?;
    key.verify(manifest, &Signature::from_bytes(&arr))
        .map_err(|_| Error::BadSignature)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ---- producing a bundle -------------------------------------------------

/// What [`bundle`] produced.
#[derive(Debug, Clone)]
pub struct BundleOutput {
    pub dir: PathBuf,
    pub manifest: BundleManifest,
    /// The pin for the catalog entry.
    pub manifest_sha256: String,
    pub public_key: String,
}

struct HashWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Compress `src` to `dst` (zstd), hashing both sides.
fn compress_file(src: &Path, dst: &Path, name: &str) -> Result<BundleFile> {
    let mut input = fs::File::open(src).ctx("open", src)?;
    let out = fs::File::create(dst).ctx("create", dst)?;
    let mut hw = HashWriter {
        inner: std::io::BufWriter::new(out),
        hash: Sha256::new(),
        len: 0,
    };
    let mut raw_hash = Sha256::new();
    let mut raw_len = 0u64;
    {
        let mut enc =
            zstd::stream::write::Encoder::new(&mut hw, ZSTD_LEVEL).ctx("compress", src)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf).ctx("read", src)?;
            if n == 0 {
                break;
            }
            raw_hash.update(&buf[..n]);
            raw_len += n as u64;
            enc.write_all(&buf[..n]).ctx("compress into", dst)?;
        }
        enc.finish().ctx("compress into", dst)?;
    }
    hw.flush().ctx("write", dst)?;
    Ok(BundleFile {
        path: name.to_string(),
        size: raw_len,
        sha256: hex::encode(raw_hash.finalize()),
        compressed_size: hw.len,
        compressed_sha256: hex::encode(hw.hash.finalize()),
    })
}

/// Produce a signed bundle for an installed image and its kernel in
/// `out_dir` (created; must not exist yet). Written into a temp sibling and
/// renamed, so a failed run leaves nothing.
pub fn bundle(
    image: &ImageRecord,
    kernel: &KernelRecord,
    key: &SigningKey,
    out_dir: &Path,
) -> Result<BundleOutput> {
    if out_dir.exists() {
        return Err(Error::Io {
            action: "create bundle dir",
            path: out_dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already exists; choose a new --out directory",
            ),
        });
    }
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = store::temp_dir_in(&parent)?;
    let mut files = vec![compress_file(
        &image.rootfs,
        &tmp.path().join(format!("{ROOTFS}.zst")),
        ROOTFS,
    )?];
    let mut add = |src: &Path, name: &str| -> Result<String> {
        files.push(compress_file(
            src,
            &tmp.path().join(format!("{name}.zst")),
            name,
        )?);
        Ok(name.to_string())
    };
    let vmlinuz = add(&kernel.vmlinuz, VMLINUZ)?;
    let initrd = kernel
        .initrd
        .as_deref()
        .map(|p| add(p, INITRD))
        .transpose()?;
    let vmlinux = kernel
        .vmlinux
        .as_deref()
        .map(|p| add(p, VMLINUX))
        .transpose()?;
    let manifest = BundleManifest {
        format: FORMAT,
        name: image.manifest.name.clone(),
        version: image.manifest.version.clone(),
        arch: image.manifest.arch.clone(),
        description: String::new(),
        files,
        kernel: BundleKernel {
            name: kernel.name.clone(),
            version: kernel.version.clone(),
            vmlinuz,
            initrd,
            vmlinux,
            pvh: kernel.pvh,
        },
        boot_args: kernel.boot_args.clone(),
    };
    manifest.validate()?;
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|source| Error::Json {
        path: tmp.path().join(MANIFEST),
        source,
    })?;
    fs::write(tmp.path().join(MANIFEST), &bytes).ctx("write", tmp.path().join(MANIFEST))?;
    fs::write(
        tmp.path().join(SIGNATURE),
        format!("{}\n", sign(&bytes, key)),
    )
    .ctx("write", tmp.path().join(SIGNATURE))?;
    fs::rename(tmp.path(), out_dir).ctx("create bundle dir", out_dir)?;
    let _ = tmp.keep();
    Ok(BundleOutput {
        dir: out_dir.to_path_buf(),
        manifest,
        manifest_sha256: sha256_hex(&bytes),
        public_key: public_key_base64(&key.verifying_key()),
    })
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;
