//! Unpack a rootfs tarball as an unprivileged user, remembering in
//! [`Ext4Fixups`] what the unpack could not apply: owners, device nodes and
//! permissions that would lock the unpacking user out (0000 files, 0555
//! directories) until the tree has been copied into ext4.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::ext4::{Ext4Fixups, NodeKind};

/// Unpack `tar` into `dest` (created if needed). Returns the fixups that
/// make an ext4 image built from `dest` carry the archive's metadata.
pub fn unpack_tar<R: Read>(tar: R, dest: &Path) -> Result<Ext4Fixups> {
    fs::create_dir_all(dest).ctx("create", dest)?;
    let mut archive = tar::Archive::new(tar);
    let mut fixups = Ext4Fixups::new();
    let entries = archive.entries().ctx("read tar entries into", dest)?;
    for entry in entries {
        let mut entry = entry.ctx("read tar entry into", dest)?;
        let rel = sanitize(&entry.path().ctx("read tar entry path into", dest)?)?;
        let guest = if rel.as_os_str().is_empty() {
            "/".to_string()
        } else {
            format!("/{}", rel.to_string_lossy())
        };
        let h = entry.header();
        let mode = h.mode().ctx("read tar mode for", &rel)?;
        let uid = h.uid().ctx("read tar uid for", &rel)? as u32;
        let gid = h.gid().ctx("read tar gid for", &rel)? as u32;
        let ty = h.entry_type();
        let target = dest.join(&rel);
        let node = match ty {
            tar::EntryType::Char => Some((NodeKind::Char, 0o020000)),
            tar::EntryType::Block => Some((NodeKind::Block, 0o060000)),
            tar::EntryType::Fifo => Some((NodeKind::Fifo, 0o010000)),
            _ => None,
        };
        if let Some((kind, _)) = node {
            // mknod needs privileges the unpacking user may lack: the node
            // is created by debugfs in the image instead.
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).ctx("create", parent)?;
            }
            let major = h.device_major().ok().flatten().unwrap_or(0);
            let minor = h.device_minor().ok().flatten().unwrap_or(0);
            fixups.mknod(guest, kind, major, minor, mode & 0o7777, uid, gid);
            continue;
        }
        let type_bits = match ty {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target).ctx("create", &target)?;
                set_perm(&target, 0o755)?;
                0o040000
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).ctx("create", parent)?;
                }
                if target.symlink_metadata().is_ok() {
                    fs::remove_file(&target).ctx("replace", &target)?;
                }
                let mut out = fs::File::create(&target).ctx("create", &target)?;
                std::io::copy(&mut entry, &mut out).ctx("unpack", &target)?;
                set_perm(&target, 0o644)?;
                0o100000
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).ctx("create", parent)?;
                }
                // tar checks that link targets stay inside dest.
                entry.unpack_in(dest).ctx("unpack", &target)?;
                if ty == tar::EntryType::Link {
                    // Same inode as its target: its metadata is fixed there.
                    continue;
                }
                0o120000
            }
            // pax/GNU long-name headers are consumed by the tar crate;
            // anything else (sockets…) has no place in a rootfs image.
            _ => continue,
        };
        let meta = target.symlink_metadata().ctx("stat", &target)?;
        if (meta.uid(), meta.gid()) != (uid, gid) {
            fixups.set_owner(guest.clone(), uid, gid);
        }
        if type_bits != 0o120000 && meta.mode() & 0o7777 != mode & 0o7777 {
            fixups.set_mode(guest, type_bits | (mode & 0o7777));
        }
    }
    Ok(fixups)
}

/// Readable and writable by the unpacking user whatever the archive says;
/// the archive's mode is restored in the image.
fn set_perm(path: &Path, perm: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(perm)).ctx("chmod", path)
}

fn sanitize(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::GuestPath {
                    path: path.display().to_string(),
                    reason: "tar entry escapes the destination",
                });
            }
        }
    }
    Ok(out)
}
