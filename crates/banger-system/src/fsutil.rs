//! Atomic file replacement and removal, the only ways install touches files.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::error::{Result, SystemError};

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.banger-new-{}", std::process::id()))
}

/// Create `dir` and missing parents with `mode` (existing ones are left as
/// they are: /usr/local/bin belongs to the host).
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| SystemError::io("create directory", dir, e))
}

/// Replace `path` with `contents` so that readers see the old file or the
/// new one, never a torn write: write a temp sibling, fsync, chmod, rename.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = temp_sibling(path);
    let res = (|| {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| SystemError::io("create", &tmp, e))?;
        f.write_all(contents)
            .map_err(|e| SystemError::io("write", &tmp, e))?;
        // Explicit chmod: the mode must not depend on the caller's umask.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| SystemError::io("set the mode of", &tmp, e))?;
        f.sync_all().map_err(|e| SystemError::io("sync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| SystemError::io("rename into place", path, e))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Install `src` at `dst` atomically. Renaming over a running binary is safe
/// (the old inode lives on until its process exits), unlike writing into it.
pub fn copy_atomic(src: &Path, dst: &Path, mode: u32) -> Result<()> {
    let tmp = temp_sibling(dst);
    let res = (|| {
        let _ = fs::remove_file(&tmp);
        fs::copy(src, &tmp).map_err(|e| SystemError::io("copy binary to", &tmp, e))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .map_err(|e| SystemError::io("set the mode of", &tmp, e))?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| SystemError::io("sync", &tmp, e))?;
        fs::rename(&tmp, dst).map_err(|e| SystemError::io("rename into place", dst, e))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Remove a file or a whole tree; returns whether something was there.
/// Symlinks are removed, never followed.
pub fn remove_path(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(SystemError::io("inspect", path, e)),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path)
            .map(|_| true)
            .map_err(|e| SystemError::io("remove directory", path, e)),
        Ok(_) => fs::remove_file(path)
            .map(|_| true)
            .map_err(|e| SystemError::io("remove", path, e)),
    }
}

/// RFC 3339 UTC timestamp for the install metadata (no extra dependency for
/// one date: civil-from-days, Howard Hinnant's algorithm).
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn write_atomic_sets_mode_regardless_of_umask_and_replaces() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("f");
        write_atomic(&p, b"one", 0o600).expect("write");
        write_atomic(&p, b"two", 0o644).expect("rewrite");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let mode = fs::metadata(&p).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644);
        // No temp files left behind.
        assert_eq!(fs::read_dir(d.path()).expect("ls").count(), 1);
    }

    #[test]
    fn remove_path_does_not_follow_symlinks() {
        let d = tempfile::tempdir().expect("tempdir");
        let target = d.path().join("keep");
        fs::create_dir(&target).expect("mkdir");
        fs::write(target.join("x"), b"x").expect("write");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(remove_path(&link).expect("remove"));
        assert!(target.join("x").exists());
        assert!(!remove_path(&link).expect("remove again"));
    }
}
