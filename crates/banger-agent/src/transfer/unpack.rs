//! Tar extraction that never writes outside its target directory.
//!
//! Each entry's path is checked *before* anything is written for it:
//! absolute paths and `..` components are refused, and every ancestor
//! directory between the target and the entry is `lstat`ed so a symlink
//! planted by an earlier entry (or already present) is never followed.
//! The entry's own final component is never followed either: an existing
//! symlink there is replaced, not written through.
//!
//! Both ends use it: the agent unpacks uploads in the guest
//! ([`Modes::Preserve`]: the user's own files, setuid bits and all), and the
//! host unpacks what a guest sent ([`Modes::Safe`]: setuid, setgid and
//! world-writable bits are masked, so a hostile guest cannot plant a
//! setuid binary or a world-writable file in the user's tree).

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use banger_proto::agent::UploadSummary;
use tar::EntryType;

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry was refused; nothing was written for it.
    #[error("upload entry {path:?} rejected: {reason}")]
    Rejected { path: String, reason: String },
    /// The target directory could not be prepared.
    #[error("cannot prepare upload target {path}: {source}")]
    Target {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing an entry failed.
    #[error("cannot write upload entry {path:?}: {source}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The tar stream itself is malformed or was cut short.
    #[error("malformed tar stream: {0}")]
    Tar(#[source] io::Error),
}

impl UnpackError {
    fn rejected(path: &Path, reason: impl Into<String>) -> Self {
        UnpackError::Rejected {
            path: path.display().to_string(),
            reason: reason.into(),
        }
    }
}

/// An entry type in words, for errors ("a fifo", not `Fifo`).
pub fn kind_name(kind: EntryType) -> String {
    match kind {
        EntryType::Regular | EntryType::Continuous => "regular file".into(),
        EntryType::Directory => "directory".into(),
        EntryType::Symlink => "symbolic link".into(),
        EntryType::Link => "hard link".into(),
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "fifo".into(),
        EntryType::GNUSparse => "sparse file".into(),
        EntryType::GNULongName | EntryType::GNULongLink => "GNU long-name record".into(),
        EntryType::XHeader | EntryType::XGlobalHeader => "PAX header".into(),
        other => format!("entry of unknown type {:?}", char::from(other.as_byte())),
    }
}

/// Turns an entry name into a relative path made only of normal components.
pub fn contained_relative(raw: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(UnpackError::rejected(
                    raw,
                    "it contains a `..` component, which could escape the target directory",
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::rejected(
                    raw,
                    "absolute paths are not allowed; entries must be relative to the target directory",
                ));
            }
        }
    }
    Ok(out)
}

/// Refuses if any directory between `root` and `root/rel` (exclusive of the
/// final component) is a symlink or not a directory.
///
/// `known` holds directories (relative) already verified or created as real
/// directories during this upload; they are not `lstat`ed again. That is
/// sound because no later entry can turn a directory into anything else:
/// [`clear_final`] refuses to replace a directory.
fn check_ancestors(
    root: &Path,
    rel: &Path,
    raw: &Path,
    known: &HashSet<PathBuf>,
) -> Result<(), UnpackError> {
    let mut cur = root.to_path_buf();
    let mut rel_cur = PathBuf::new();
    let mut comps = rel.components().peekable();
    while let Some(c) = comps.next() {
        if comps.peek().is_none() {
            break;
        }
        cur.push(c);
        rel_cur.push(c);
        if known.contains(&rel_cur) {
            continue;
        }
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UnpackError::rejected(
                    raw,
                    format!(
                        "its parent {} is a symlink; writing through it could escape the target directory",
                        cur.strip_prefix(root).unwrap_or(&cur).display()
                    ),
                ));
            }
            Ok(m) if !m.is_dir() => {
                return Err(UnpackError::rejected(
                    raw,
                    format!(
                        "its parent {} is not a directory",
                        cur.strip_prefix(root).unwrap_or(&cur).display()
                    ),
                ));
            }
            Ok(_) => {}
            // Missing ancestors are created as real directories below.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(UnpackError::Write {
                    path: raw.display().to_string(),
                    source: e,
                });
            }
        }
    }
    Ok(())
}

/// Removes whatever non-directory sits at `dest` so the new entry replaces it
/// instead of being written through it.
fn clear_final(dest: &Path, raw: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => Err(UnpackError::rejected(
            raw,
            "a directory already exists at this path",
        )),
        Ok(_) => fs::remove_file(dest).map_err(|e| UnpackError::Write {
            path: raw.display().to_string(),
            source: e,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(UnpackError::Write {
            path: raw.display().to_string(),
            source: e,
        }),
    }
}

/// Which permission bits of the archive's entries survive unpacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modes {
    /// Every bit as the archive says (the guest unpacking the user's upload).
    Preserve,
    /// Setuid, setgid and world-writable bits cleared (the host unpacking
    /// data a guest chose).
    Safe,
}

/// The bits [`Modes::Safe`] clears: setuid, setgid, other-writable.
pub const UNSAFE_MODE_BITS: u32 = 0o6002;

impl Modes {
    fn mask(self) -> u32 {
        match self {
            Modes::Preserve => 0,
            Modes::Safe => UNSAFE_MODE_BITS,
        }
    }
}

/// Unpacks the tar stream `reader` under `target` (created if missing).
pub fn unpack_contained<R: Read>(
    reader: R,
    target: &Path,
    modes: Modes,
) -> Result<UploadSummary, UnpackError> {
    let target_err = |e| UnpackError::Target {
        path: target.to_path_buf(),
        source: e,
    };
    fs::create_dir_all(target).map_err(target_err)?;
    // The target itself may legitimately be reached through a symlink (it is
    // the caller's choice); containment is enforced below it.
    let root = target.canonicalize().map_err(target_err)?;
    // Oversized PAX / GNU long name headers fail before they are read.
    let mut archive = tar::Archive::new(banger_proto::tar_guard::TarGuard::new(reader));
    let mut known_dirs: HashSet<PathBuf> = HashSet::new();
    let mut summary = UploadSummary {
        entries: 0,
        bytes: 0,
    };
    for entry in archive.entries().map_err(UnpackError::Tar)? {
        let mut entry = entry.map_err(UnpackError::Tar)?;
        let raw = entry.path().map_err(UnpackError::Tar)?.into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            continue;
        }
        let rel = contained_relative(&raw)?;
        let write_err = |e| UnpackError::Write {
            path: raw.display().to_string(),
            source: e,
        };
        if rel.as_os_str().is_empty() {
            // `./` itself: the target already exists.
            if kind.is_dir() {
                summary.entries += 1;
                continue;
            }
            return Err(UnpackError::rejected(
                &raw,
                "a non-directory entry names the target directory itself",
            ));
        }
        check_ancestors(&root, &rel, &raw, &known_dirs)?;
        let dest = root.join(&rel);
        if let Some(parent) = rel.parent()
            && !parent.as_os_str().is_empty()
            && !known_dirs.contains(parent)
        {
            // Ancestors were just checked: none is a symlink, so this
            // creates (or finds) real directories only.
            fs::create_dir_all(root.join(parent)).map_err(write_err)?;
            for a in parent.ancestors() {
                if a.as_os_str().is_empty() || !known_dirs.insert(a.to_path_buf()) {
                    break;
                }
            }
        }
        entry.set_preserve_permissions(true);
        entry.set_mask(modes.mask());
        entry.set_preserve_mtime(true);
        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => clear_final(&dest, &raw)?,
                    Err(_) => {}
                }
                entry.unpack(&dest).map_err(write_err)?;
                known_dirs.insert(rel.clone());
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                clear_final(&dest, &raw)?;
                summary.bytes += entry.header().size().unwrap_or(0);
                entry.unpack(&dest).map_err(write_err)?;
            }
            EntryType::Symlink => {
                // The link is created as-is; it is never followed by later
                // entries (see check_ancestors / clear_final).
                clear_final(&dest, &raw)?;
                entry.unpack(&dest).map_err(write_err)?;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(UnpackError::Tar)?
                    .ok_or_else(|| UnpackError::rejected(&raw, "hard link without a target"))?
                    .into_owned();
                let link_rel = contained_relative(&link).map_err(|_| {
                    UnpackError::rejected(
                        &raw,
                        format!(
                            "hard link target {} is outside the target directory",
                            link.display()
                        ),
                    )
                })?;
                check_ancestors(&root, &link_rel, &link, &known_dirs)?;
                clear_final(&dest, &raw)?;
                // linkat without AT_SYMLINK_FOLLOW: a symlink source is
                // linked itself, not followed.
                fs::hard_link(root.join(&link_rel), &dest).map_err(write_err)?;
            }
            other => {
                return Err(UnpackError::rejected(
                    &raw,
                    format!(
                        "it is a {}, which is not supported (only files, directories and links)",
                        kind_name(other)
                    ),
                ));
            }
        }
        summary.entries += 1;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            contained_relative(Path::new("./a/./b")).expect("ok"),
            PathBuf::from("a/b")
        );
        assert!(contained_relative(Path::new("a/../../b")).is_err());
        assert!(contained_relative(Path::new("/etc/passwd")).is_err());
    }
}
