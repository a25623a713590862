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
}
