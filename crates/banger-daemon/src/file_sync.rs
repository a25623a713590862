//! `[[file_sync]]`: host files copied into a new VM's work disk (the guest's
//! /root) at create time, under the upstream rules:
//! - host paths must resolve inside the owner's home;
//! - a top-level symlink is followed only when its target stays in the home;
//! - symlinks met while recursing are skipped with a warning (they would
//!   otherwise leak files from outside the named tree);
//! - guest paths live under `~/` or `/root/`;
//! - files are 0600 unless `mode` says otherwise, directories 0700.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use banger_core::FileSync;
use banger_core::paths::is_within;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SyncError {
    #[error(
        "file_sync host path {path} is outside your home {home}; only paths inside it can be synced"
    )]
    OutsideHome { path: String, home: String },
    #[error(
        "file_sync host path {path} is a symlink to {target}, outside your home {home}; refusing to follow it"
    )]
    SymlinkEscapes {
        path: String,
        target: String,
        home: String,
    },
    #[error("file_sync guest path {0:?} must be under ~/ or /root/ with no '..'")]
    BadGuestPath(String),
    #[error("file_sync: cannot read {path}: {reason}")]
    Io { path: String, reason: String },
}

/// What to write: a path relative to the guest's /root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncItem {
    Dir {
        rel: PathBuf,
        mode: u32,
    },
    File {
        rel: PathBuf,
        source: PathBuf,
        mode: u32,
    },
}

#[derive(Debug, Default)]
pub struct SyncPlan {
    pub items: Vec<SyncItem>,
    pub warnings: Vec<String>,
}

/// The guest path relative to /root (the work disk's root).
pub fn guest_rel(guest: &str) -> Result<PathBuf, SyncError> {
    let rest = guest
        .strip_prefix("~/")
        .or_else(|| guest.strip_prefix("/root/"))
        .ok_or_else(|| SyncError::BadGuestPath(guest.into()))?;
    let rel = PathBuf::from(rest);
    if rest.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(SyncError::BadGuestPath(guest.into()));
    }
    Ok(rel)
}

fn io_err(path: &Path, e: std::io::Error) -> SyncError {
    SyncError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Resolves every entry against `home` and walks directories.
pub fn plan(entries: &[FileSync], home: &Path) -> Result<SyncPlan, SyncError> {
    let mut out = SyncPlan::default();
    let home_real = std::fs::canonicalize(home).map_err(|e| io_err(home, e))?;
    for e in entries {
        let host = e.host.expand(home);
        let rel = guest_rel(&e.guest)?;
        if !is_within(&host, home) {
            return Err(SyncError::OutsideHome {
                path: host.display().to_string(),
                home: home.display().to_string(),
            });
        }
        let meta = match std::fs::symlink_metadata(&host) {
            Ok(m) => m,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                out.warnings.push(format!(
                    "file_sync: {} does not exist; skipped",
                    host.display()
                ));
                continue;
            }
            Err(err) => return Err(io_err(&host, err)),
        };
        // Follow a top-level symlink only into the home; resolve the whole
        // path so a symlinked parent directory cannot escape either.
        let real = std::fs::canonicalize(&host).map_err(|err| io_err(&host, err))?;
        if !is_within(&real, &home_real) {
            return Err(if meta.file_type().is_symlink() {
                SyncError::SymlinkEscapes {
                    path: host.display().to_string(),
                    target: real.display().to_string(),
                    home: home.display().to_string(),
                }
            } else {
                SyncError::OutsideHome {
                    path: real.display().to_string(),
                    home: home.display().to_string(),
                }
            });
        }
        let real_meta = std::fs::metadata(&real).map_err(|err| io_err(&real, err))?;
        if real_meta.is_dir() {
            walk(&real, &rel, e.mode, &mut out)?;
        } else if real_meta.is_file() {
            out.items.push(SyncItem::File {
                rel,
                source: real,
                mode: e.mode.unwrap_or(0o600),
            });
        } else {
            out.warnings.push(format!(
                "file_sync: {} is not a regular file or directory; skipped",
                host.display()
            ));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, rel: &Path, mode: Option<u32>, out: &mut SyncPlan) -> Result<(), SyncError> {
    out.items.push(SyncItem::Dir {
        rel: rel.to_path_buf(),
        mode: 0o700,
    });
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io_err(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let ft = entry.file_type().map_err(|e| io_err(&path, e))?;
        let child_rel = rel.join(entry.file_name());
        if ft.is_symlink() {
            out.warnings.push(format!(
                "file_sync: skipping symlink {} inside a synced directory",
                path.display()
            ));
        } else if ft.is_dir() {
            walk(&path, &child_rel, mode, out)?;
        } else if ft.is_file() {
            out.items.push(SyncItem::File {
                rel: child_rel,
                source: path,
                mode: mode.unwrap_or(0o600),
            });
        } else {
            out.warnings.push(format!(
                "file_sync: skipping {} (not a regular file)",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Materialises the plan under `tree` (the work disk's future root). Parent
/// directories that the plan does not name are created 0700.
pub fn materialise(plan: &SyncPlan, tree: &Path) -> Result<Vec<PathBuf>, SyncError> {
    let mut written = Vec::new();
    for item in &plan.items {
        match item {
            SyncItem::Dir { rel, mode } => {
                let p = tree.join(rel);
                mkdirs(tree, rel)?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
                    .map_err(|e| io_err(&p, e))?;
                written.push(rel.clone());
            }
            SyncItem::File { rel, source, mode } => {
                if let Some(parent) = rel.parent() {
                    mkdirs(tree, parent)?;
                }
                let p = tree.join(rel);
                std::fs::copy(source, &p).map_err(|e| io_err(source, e))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
                    .map_err(|e| io_err(&p, e))?;
                written.push(rel.clone());
            }
        }
    }
    Ok(written)
}

fn mkdirs(tree: &Path, rel: &Path) -> Result<(), SyncError> {
    let mut cur = tree.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        if !cur.exists() {
            std::fs::create_dir(&cur).map_err(|e| io_err(&cur, e))?;
            std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io_err(&cur, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_core::config::AnchoredPath;

    fn entry(host: &str, guest: &str, mode: Option<u32>) -> FileSync {
        FileSync {
            host: AnchoredPath::parse(host).expect("anchored"),
            guest: guest.into(),
            mode,
        }
    }

    #[test]
    fn guest_paths() {
        assert_eq!(guest_rel("~/.aws").expect("ok"), PathBuf::from(".aws"));
        assert_eq!(
            guest_rel("/root/bin/x").expect("ok"),
            PathBuf::from("bin/x")
        );
        for bad in [
            "/etc/passwd",
            "~/../etc",
            "~/",
            "/root/",
            "relative",
            "~/a/../../b",
        ] {
            assert!(guest_rel(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plans_files_dirs_modes_and_refuses_escapes() {
        let home = tempfile::tempdir().expect("home");
        let outside = tempfile::tempdir().expect("outside");
        let h = home.path();
        std::fs::create_dir_all(h.join(".aws/sub")).expect("mkdir");
        std::fs::write(h.join(".aws/credentials"), "secret").expect("write");
        std::fs::write(h.join(".aws/sub/config"), "cfg").expect("write");
        std::fs::write(outside.path().join("leak"), "leak").expect("write");
        std::os::unix::fs::symlink(outside.path().join("leak"), h.join(".aws/link"))
            .expect("symlink");
        std::fs::create_dir_all(h.join("bin")).expect("mkdir");
        std::fs::write(h.join("bin/tool"), "#!/bin/sh\n").expect("write");

        let p = plan(
            &[
                entry("~/.aws", "~/.aws", None),
                entry("~/bin/tool", "/root/bin/tool", Some(0o755)),
            ],
            h,
        )
        .expect("plan");
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("skipping symlink"));
        let tree = tempfile::tempdir().expect("tree");
        materialise(&p, tree.path()).expect("materialise");
        let mode = |rel: &str| {
            std::fs::metadata(tree.path().join(rel))
                .expect(rel)
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode(".aws"), 0o700);
        assert_eq!(mode(".aws/credentials"), 0o600);
        assert_eq!(mode(".aws/sub/config"), 0o600);
        assert_eq!(mode("bin/tool"), 0o755);
        assert_eq!(mode("bin"), 0o700);
        assert!(!tree.path().join(".aws/link").exists());
        assert_eq!(
            std::fs::read_to_string(tree.path().join(".aws/credentials")).expect("read"),
            "secret"
        );

        // outside the home, lexically or through a top-level symlink
        let abs_outside = outside.path().join("leak").display().to_string();
        let e = plan(&[entry(&abs_outside, "~/x", None)], h).expect_err("outside");
        assert!(matches!(e, SyncError::OutsideHome { .. }), "{e}");
        std::os::unix::fs::symlink(outside.path(), h.join("escape")).expect("symlink");
        let e = plan(&[entry("~/escape", "~/x", None)], h).expect_err("escape");
        assert!(matches!(e, SyncError::SymlinkEscapes { .. }), "{e}");
        // a top-level symlink that stays inside the home is followed
        std::os::unix::fs::symlink(h.join("bin/tool"), h.join("tool-link")).expect("symlink");
        let p = plan(&[entry("~/tool-link", "~/t", None)], h).expect("inside link");
        assert!(matches!(&p.items[0], SyncItem::File { mode: 0o600, .. }));
        // missing host path: warned, not fatal
        let p = plan(&[entry("~/nope", "~/nope", None)], h).expect("missing");
        assert!(p.items.is_empty() && p.warnings[0].contains("does not exist"));
    }
}
