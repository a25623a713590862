//! The layer cache: `<dir>/blobs/sha256/<hex>`, shared by every image.
//!
//! A file under its digest name was renamed there after its content
//! hashed to that digest, so its presence means "verified". Downloads
//! stream into `<dir>/blobs/sha256/.tmp-*` first: a kill -9 leaves only a
//! temp file, which [`LayerCache::cleanup_partial`] removes and nothing ever
//! reads as a blob.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::reference::validate_digest;

const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, Clone)]
pub struct LayerCache {
    dir: PathBuf,
}

impl LayerCache {
    /// `dir` is created when first written.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LayerCache { dir: dir.into() }
    }

    fn blobs(&self) -> PathBuf {
        self.dir.join("blobs").join("sha256")
    }

    /// Where a verified blob lives (whether or not it is there).
    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.blobs().join(validate_digest(digest)?))
    }

    /// The verified blob, if cached.
    pub fn get(&self, digest: &str) -> Result<Option<PathBuf>> {
        let p = self.path(digest)?;
        Ok(p.is_file().then_some(p))
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.get(digest).ok().flatten().is_some()
    }

    pub(crate) fn temp_file(&self, hex: &str) -> Result<tempfile::NamedTempFile> {
        let dir = self.blobs();
        fs::create_dir_all(&dir).ctx("create", &dir)?;
        tempfile::Builder::new()
            .prefix(&format!("{TMP_PREFIX}{hex}-"))
            .tempfile_in(&dir)
            .ctx("create temp file in", &dir)
    }

    /// Move a verified temp file to its digest name. Synced first so a
    /// crash right after cannot leave a short file under a trusted name.
    pub(crate) fn commit(&self, tmp: tempfile::NamedTempFile, digest: &str) -> Result<PathBuf> {
        let dst = self.path(digest)?;
        tmp.as_file().sync_all().ctx("sync", tmp.path())?;
        tmp.persist(&dst).map_err(|e| crate::error::Error::Io {
            action: "move into the cache",
            path: dst.clone(),
            source: e.error,
        })?;
        Ok(dst)
    }

    /// Forget a blob (its content was refused by the flattener, or it no
    /// longer matches its digest).
    pub fn remove(&self, digest: &str) -> Result<()> {
        let p = self.path(digest)?;
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx("remove", p),
        }
    }

    /// Digests of the cached blobs.
    pub fn list(&self) -> Result<Vec<String>> {
        let dir = self.blobs();
        let mut out = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).ctx("list", dir),
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let d = format!("sha256:{name}");
            if validate_digest(&d).is_ok() {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Remove temp files left by an interrupted download. Call at daemon
    /// start (no pull running).
    pub fn cleanup_partial(&self) -> Result<Vec<PathBuf>> {
        let dir = self.blobs();
        let mut removed = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(e).ctx("list", dir),
        };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let p = e.path();
                fs::remove_file(&p).ctx("remove leftover", &p)?;
                removed.push(p);
            }
        }
        Ok(removed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
