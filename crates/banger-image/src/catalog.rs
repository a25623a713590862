//! The image catalog: which bundles `banger image pull NAME` may fetch.
//! One is embedded in the binary; a catalog file named in config replaces
//! it. Format: docs/image-catalog.md.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// The catalog compiled into banger. Empty until a bundle is published;
/// `vm run` then builds the default image locally.
pub const EMBEDDED: &str = include_str!("../catalog.json");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub format: u32,
    pub entries: Vec<CatalogEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Base URL of the bundle directory (`<url>/manifest.json`, …).
    pub url: String,
    /// sha256 of manifest.json. Required: entries without it are refused
    /// at pull time.
    #[serde(default)]
    pub manifest_sha256: Option<String>,
    /// base64 ed25519 public key that signed the manifest.
    pub public_key: String,
}

impl CatalogEntry {
    /// The pin, or the error that refuses an unpinned entry.
    pub fn pin(&self) -> Result<&str> {
        match self.manifest_sha256.as_deref() {
            Some(p) if !p.trim().is_empty() => Ok(p.trim()),
            _ => Err(Error::Unpinned(self.name.clone())),
        }
    }

    pub fn file_url(&self, file: &str) -> String {
        format!("{}/{}", self.url.trim_end_matches('/'), file)
    }
}

impl Catalog {
    pub fn parse(text: &str) -> Result<Self> {
        let c: Catalog = serde_json::from_str(text)
            .map_err(|e| Error::Catalog(format!("not a valid catalog: {e}")))?;
        if c.format != 1 {
            return Err(Error::Catalog(format!(
                "format {} is not supported (expected 1)",
                c.format
            )));
        }
        Ok(c)
    }

    pub fn embedded() -> Result<Self> {
        Self::parse(EMBEDDED)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).ctx("read catalog", path)?;
        Self::parse(&text).map_err(|e| Error::Catalog(format!("{}: {e}", path.display())))
    }

    /// The catalog file from config if given, else the embedded one.
    pub fn resolve(override_file: Option<&Path>) -> Result<Self> {
        match override_file {
            Some(p) => Self::load(p),
            None => Self::embedded(),
        }
    }

    pub fn find(&self, name: &str) -> Result<&CatalogEntry> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::NotInCatalog(name.to_string()))
    }
}
