//! /etc/banger/install.json: what was installed, for whom, and where.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SystemError};
use crate::layout::{
    BINARIES, CACHE_DIR, DAEMON_UNIT, Layout, METADATA_FILE, Owner, ROOT_RUNTIME_DIR, ROOT_SOCKET,
    ROOT_UNIT, RUNTIME_DIR, SOCKET, STATE_DIR, UNIT_DIR,
};

pub const METADATA_SCHEMA: u32 = 1;

/// Written 0644: `banger system status` runs as the owner and reads it; it
/// holds no secret.
pub const METADATA_MODE: u32 = 0o644;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallMetadata {
    pub schema: u32,
    pub owner: String,
    pub uid: u32,
    pub gid: u32,
    pub group: String,
    pub version: String,
    /// RFC 3339, UTC.
    pub installed_at: String,
    pub paths: InstalledPaths,
}

/// Host paths (never the test prefix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledPaths {
    /// Binary name → installed path.
    pub binaries: BTreeMap<String, String>,
    /// Unit name → unit file.
    pub units: BTreeMap<String, String>,
    pub metadata: String,
    pub socket: String,
    pub root_socket: String,
    pub state_dir: String,
    pub cache_dir: String,
    pub runtime_dir: String,
    pub root_runtime_dir: String,
}

impl InstalledPaths {
    pub fn standard() -> Self {
        InstalledPaths {
            binaries: BINARIES
                .iter()
                .map(|(name, dir)| ((*name).to_owned(), format!("{dir}/{name}")))
                .collect(),
            units: [DAEMON_UNIT, ROOT_UNIT]
                .iter()
                .map(|u| ((*u).to_owned(), format!("{UNIT_DIR}/{u}")))
                .collect(),
            metadata: METADATA_FILE.to_owned(),
            socket: SOCKET.to_owned(),
            root_socket: ROOT_SOCKET.to_owned(),
            state_dir: STATE_DIR.to_owned(),
            cache_dir: CACHE_DIR.to_owned(),
            runtime_dir: RUNTIME_DIR.to_owned(),
            root_runtime_dir: ROOT_RUNTIME_DIR.to_owned(),
        }
    }
}

impl InstallMetadata {
    pub fn new(owner: &Owner, version: &str, installed_at: String) -> Self {
        InstallMetadata {
            schema: METADATA_SCHEMA,
            owner: owner.name.clone(),
            uid: owner.uid,
            gid: owner.gid,
            group: owner.group.clone(),
            version: version.to_owned(),
            installed_at,
            paths: InstalledPaths::standard(),
        }
    }

    /// `Ok(None)` when nothing is installed under `layout`.
    pub fn read(layout: &Layout) -> Result<Option<InstallMetadata>> {
        let path = layout.metadata_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(SystemError::BadMetadata {
                    path,
                    detail: e.to_string(),
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| SystemError::BadMetadata {
                path,
                detail: e.to_string(),
            })
    }

    pub fn to_json(&self) -> String {
        // Serializing plain strings and maps cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_garbage() {
        let d = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(d.path());
        assert_eq!(InstallMetadata::read(&layout).expect("absent"), None);

        let owner = Owner {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            group: "alice".into(),
            home: "/home/alice".into(),
        };
        let m = InstallMetadata::new(&owner, "0.1.0", "2026-01-01T00:00:00Z".into());
        std::fs::create_dir_all(layout.at(crate::layout::ETC_DIR)).expect("mkdir");
        std::fs::write(layout.metadata_file(), m.to_json()).expect("write");
        assert_eq!(
            InstallMetadata::read(&layout).expect("read"),
            Some(m.clone())
        );
        assert_eq!(
            m.paths
                .binaries
                .get("banger-vsock-agent")
                .map(String::as_str),
            Some("/usr/local/lib/banger/banger-vsock-agent")
        );

        std::fs::write(layout.metadata_file(), "{not json").expect("write");
        let err = InstallMetadata::read(&layout).expect_err("garbage");
        assert!(
            err.to_string()
                .contains("re-run `sudo banger system install"),
            "{err}"
        );
    }
}
