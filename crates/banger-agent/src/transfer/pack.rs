//! Tar packing, the one way banger writes a tree into a transfer stream:
//! `vm cp` host → guest (the CLI) and guest → host (the agent), and the
//! workspace upload of `vm run`. Symlinks are never followed, the named
//! source included: a symlink is packed as a symlink.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

fn builder<W: io::Write>(out: W) -> tar::Builder<W> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b
}

/// Writes `src` (file, directory or symlink, not followed) as a tar stream
/// whose single top-level entry is `name`.
pub fn pack_path<W: io::Write>(src: &Path, name: &Path, out: W) -> io::Result<W> {
    let mut b = builder(out);
    if fs::symlink_metadata(src)?.is_dir() {
        b.append_dir_all(name, src)?;
    } else {
        b.append_path_with_name(src, name)?;
    }
    b.into_inner()
}

/// The name [`pack_path`] gives `src` when the caller has no other in mind:
/// its last component (`.` for a path that has none, e.g. `/`).
pub fn default_name(src: &Path) -> PathBuf {
    src.file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Writes the files `files` (relative to `root`, symlinks not followed) as a
/// tar stream under their relative names, with deterministic headers (no
/// owner names, fixed mtimes), so the same tree always packs the same way.
pub fn pack_files<W: io::Write>(root: &Path, files: &[PathBuf], out: W) -> Result<W, PackError> {
    let mut b = builder(out);
    b.mode(tar::HeaderMode::Deterministic);
    for f in files {
        let full = root.join(f);
        b.append_path_with_name(&full, f)
            .map_err(|source| PackError { path: full, source })?;
    }
    b.into_inner().map_err(|source| PackError {
        path: root.to_path_buf(),
        source,
    })
}

/// Writes the contents of the directory `root` as a tar stream of relative names, every
/// entry owned by root (uid/gid 0) with the mode it has on the host and fixed mtimes:
/// what the daemon sends into a restored guest for `[[file_sync]]` (a 0600 credentials
/// file stays 0600, as on a cold create's work disk), whoever runs the daemon.
pub fn pack_tree_as_root<W: io::Write>(root: &Path, out: W) -> io::Result<W> {
    let mut b = builder(out);
    append_tree(&mut b, root, Path::new("."))?;
    b.into_inner()
}

/// Appends everything under `dir` (as `rel/…`) to `b`, see [`pack_tree_as_root`].
fn append_tree<W: std::io::Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = rel.join(e.file_name());
        let meta = std::fs::symlink_metadata(&path)?;
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        h.set_mode(meta.permissions().mode() & 0o7777);
        h.set_uid(0);
        h.set_gid(0);
        if meta.file_type().is_symlink() {
            h.set_size(0);
            b.append_link(&mut h, &name, std::fs::read_link(&path)?)?;
        } else if meta.is_dir() {
            h.set_size(0);
            b.append_data(&mut h, &name, std::io::empty())?;
            append_tree(b, &path, &name)?;
        } else {
            b.append_data(&mut h, &name, std::fs::File::open(&path)?)?;
        }
    }
    Ok(())
}

/// A file that could not be added to a [`pack_files`] stream.
#[derive(Debug, thiserror::Error)]
#[error("cannot add {} to the archive: {source}", path.display())]
pub struct PackError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar: &[u8]) -> Vec<(String, bool)> {
        let mut names: Vec<(String, bool)> = tar::Archive::new(tar)
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.path()
                        .expect("p")
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/"),
                    e.header().entry_type().is_symlink(),
                )
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn pack_names_the_top_entry_and_keeps_symlinks() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = tmp.path().join("d");
        fs::create_dir_all(d.join("s")).expect("mkdir");
        fs::write(d.join("s/f"), "x").expect("w");
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).expect("symlink");
        let out = pack_path(&d, Path::new("renamed"), Vec::new()).expect("pack");
        assert_eq!(
            names(&out),
            [
                ("renamed".to_string(), false),
                ("renamed/link".to_string(), true),
                ("renamed/s".to_string(), false),
                ("renamed/s/f".to_string(), false),
            ]
        );
        // The named source itself is not followed either.
        let out =
            pack_path(&d.join("link"), &default_name(&d.join("link")), Vec::new()).expect("pack");
        assert_eq!(names(&out), [("link".to_string(), true)]);
        assert_eq!(default_name(Path::new("/")), PathBuf::from("."));
    }

    #[test]
    fn pack_files_is_deterministic_and_names_the_missing_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        fs::write(tmp.path().join("a"), "x").expect("w");
        let files = [PathBuf::from("a")];
        let one = pack_files(tmp.path(), &files, Vec::new()).expect("pack");
        let two = pack_files(tmp.path(), &files, Vec::new()).expect("pack");
        assert_eq!(one, two);
        let e =
            pack_files(tmp.path(), &[PathBuf::from("gone")], Vec::new()).expect_err("missing file");
        assert!(e.to_string().contains("gone"), "{e}");
    }

    /// [`pack_tree_as_root`] keeps the tree's modes (0600 stays 0600) and makes every entry
    /// root's, whoever runs the daemon.
    #[test]
    fn the_file_sync_tar_keeps_modes_and_is_owned_by_root() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let t = dir.path();
        std::fs::create_dir(t.join(".aws")).expect("mkdir");
        std::fs::set_permissions(t.join(".aws"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        for (f, mode) in [(".aws/credentials", 0o600), ("tool", 0o755)] {
            std::fs::write(t.join(f), "x").expect("write");
            std::fs::set_permissions(t.join(f), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
        }
        std::os::unix::fs::symlink("tool", t.join("link")).expect("symlink");
        let bytes = pack_tree_as_root(t, Vec::new()).expect("tar");
        let mut a = tar::Archive::new(&bytes[..]);
        let mut got = Vec::new();
        for e in a.entries().expect("entries") {
            let e = e.expect("entry");
            let h = e.header();
            assert_eq!((h.uid().ok(), h.gid().ok()), (Some(0), Some(0)));
            got.push((
                e.path().expect("path").display().to_string(),
                h.mode().expect("mode"),
            ));
        }
        assert_eq!(
            got,
            [
                (".aws".to_string(), 0o700),
                (".aws/credentials".to_string(), 0o600),
                ("link".to_string(), 0o777),
                ("tool".to_string(), 0o755),
            ]
        );
    }
}
