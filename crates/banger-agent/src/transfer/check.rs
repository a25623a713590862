//! The host's check of a tar stream a guest sent (`vm cp NAME:PATH ...`),
//! made on the whole stream before anything is written: a hostile guest
//! chooses every byte of it.
//!
//! Accepted: one top-level entry (the copied path), every name relative
//! without `..`, only files, directories and links, and every link pointing
//! inside the copied tree once the archive's *own* symlinks are resolved —
//! `t/a/u -> ..` followed by `t/a/x -> u/../..` is a link out of the tree
//! even though each target looks contained on its own. A copied symlink
//! itself (the archive is one link) may point next to it, inside the
//! destination directory, relatively.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use super::TransferError;
use super::unpack::{contained_relative, kind_name};

/// What a checked archive holds: one top-level entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Shape {
    pub name: String,
    pub is_dir: bool,
}

/// How many symlinks one resolution may pass through (Linux's own limit).
const MAX_LINK_HOPS: usize = 40;

fn refused(raw: &Path, reason: impl Into<String>) -> TransferError {
    TransferError::Refused {
        entry: raw.display().to_string(),
        reason: reason.into(),
    }
}

fn tar_err(what: &'static str) -> impl Fn(std::io::Error) -> TransferError {
    move |source| TransferError::Read { what, source }
}

/// One link entry, kept for the second pass.
struct Link {
    raw: PathBuf,
    rel: PathBuf,
    target: PathBuf,
    hard: bool,
}

/// Checks a tar stream from a guest (see the module comment).
pub fn check_archive<R: Read>(r: R) -> Result<Shape, TransferError> {
    // Oversized PAX / GNU long name headers fail before they are read.
    let mut archive = tar::Archive::new(banger_proto::tar_guard::TarGuard::new(r));
    let mut shape: Option<Shape> = None;
    let mut links: Vec<Link> = Vec::new();
    for entry in archive.entries().map_err(tar_err("the tar stream"))? {
        let entry = entry.map_err(tar_err("the tar stream"))?;
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            continue;
        }
        let raw = entry.path().map_err(tar_err("an entry name"))?.into_owned();
        let rel = contained_relative(&raw)?;
        let mut comps = rel.components();
        let Some(Component::Normal(top)) = comps.next() else {
            return Err(refused(&raw, "it names the destination itself"));
        };
        let top = top.to_string_lossy().into_owned();
        let is_top = comps.next().is_none();
        match &shape {
            None => {
                if !is_top {
                    return Err(refused(
                        &raw,
                        "the first entry must be the copied path itself",
                    ));
                }
                shape = Some(Shape {
                    name: top,
                    is_dir: kind.is_dir(),
                });
            }
            Some(s) if s.name != top || !s.is_dir => {
                return Err(refused(
                    &raw,
                    format!("it is outside the copied path {:?}", s.name),
                ));
            }
            Some(_) => {}
        }
        match kind {
            EntryType::Directory
            | EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse => {}
            EntryType::Symlink | EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(tar_err("a link target"))?
                    .ok_or_else(|| refused(&raw, "the link has no target"))?
                    .into_owned();
                links.push(Link {
                    raw,
                    rel,
                    target,
                    hard: kind == EntryType::Link,
                });
            }
            other => {
                return Err(refused(
                    &raw,
                    format!(
                        "it is a {}, which is not supported (only files, directories and links)",
                        kind_name(other)
                    ),
                ));
            }
        }
    }
    let shape = shape.ok_or(TransferError::Empty)?;
    // Second pass: every link resolved against the archive's final set of
    // symlinks (a later entry may be the link an earlier one goes through;
    // the last entry at a path is the one that stays on disk).
    let symlinks: HashMap<&Path, &Path> = links
        .iter()
        .filter(|l| !l.hard)
        .map(|l| (l.rel.as_path(), l.target.as_path()))
        .collect();
    for l in &links {
        let ok = if l.hard {
            // A hard link names another entry by its full name, under the
            // same top; it is never resolved through a symlink (the
            // unpacker refuses symlinked parents).
            resolve(&symlinks, Path::new(""), &l.target, false)
                .is_some_and(|p| p.first().map(|c| c.as_os_str()) == Some(OsStr::new(&shape.name)))
        } else {
            // Relative to the link's own directory.
            let base = l.rel.parent().unwrap_or(Path::new(""));
            resolve(&symlinks, base, &l.target, true).is_some()
        };
        if !ok {
            return Err(TransferError::LinkOutside {
                link: l.raw.display().to_string(),
                target: l.target.display().to_string(),
            });
        }
    }
    Ok(shape)
}

/// Resolves `target` from the relative directory `base` (its first
/// component is the copied tree's top) and returns where it ends, or `None`
/// when it leaves the tree: an absolute target, a `..` above the top, or
/// more than [`MAX_LINK_HOPS`] symlinks. With `follow`, every component that
/// is one of the archive's `symlinks` is replaced by that link's target,
/// resolved from the link's own directory, as the kernel will do on disk.
fn resolve(
    symlinks: &HashMap<&Path, &Path>,
    base: &Path,
    target: &Path,
    follow: bool,
) -> Option<Vec<OsString>> {
    let mut stack: Vec<OsString> = base
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            _ => None,
        })
        .collect();
    // Components still to walk, next one last.
    let mut todo: Vec<Component> = target.components().rev().collect();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c {
            Component::Normal(p) => {
                stack.push(p.to_os_string());
                if !follow {
                    continue;
                }
                let here: PathBuf = stack.iter().collect();
                if let Some(next) = symlinks.get(here.as_path()) {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return None;
                    }
                    stack.pop();
                    todo.extend(next.components().rev());
                }
            }
            Component::CurDir => {}
            Component::ParentDir => {
                stack.pop();
                if stack.is_empty() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!stack.is_empty()).then_some(stack)
}
