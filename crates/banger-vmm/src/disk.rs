//! Per-VM disks: root disk clones, empty ext4 work disks, and the disk side of
//! snapshots (qcow2 overlays on a snapshot's raw disk, flattening an overlay back to raw).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::error::VmmError;
use crate::host::find_program;

/// How a root disk was cloned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloneMethod {
    /// FICLONE: shares extents copy-on-write; instant and uses no space up front.
    Reflink,
    /// SEEK_DATA/SEEK_HOLE + copy_file_range: copies only allocated ranges.
    SparseCopy {
        /// Bytes of data actually copied (holes are skipped).
        data_bytes: u64,
    },
}

/// A disk file's format, read from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    Raw,
    /// A qcow2 file (banger makes them only as overlays on a snapshot's raw disk).
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// The format of the disk at `path`: qcow2 when it starts with qcow2's magic, else raw
/// (also for an unreadable file: opening it then fails with a clear error elsewhere).
pub fn disk_format(path: &Path) -> DiskFormat {
    use std::io::Read;
    let mut magic = [0u8; 4];
    match File::open(path).and_then(|mut f| f.read_exact(&mut magic)) {
        Ok(()) if &magic == b"QFI\xfb" => DiskFormat::Qcow2,
        _ => DiskFormat::Raw,
    }
}

/// How a restored VM got its own disk from a snapshot's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreDiskMethod {
    /// A full clone (reflink or sparse copy).
    Clone(CloneMethod),
    /// A qcow2 overlay whose backing file is the snapshot's raw disk: O(1); the snapshot's
    /// disk must outlive the VM.
    Qcow2Overlay,
}

impl std::fmt::Display for RestoreDiskMethod {
    /// What `--timings` and logs show: `qcow2 overlay`, `reflink`, `sparse copy (N MiB)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreDiskMethod::Qcow2Overlay => f.write_str("qcow2 overlay"),
            RestoreDiskMethod::Clone(CloneMethod::Reflink) => f.write_str("reflink"),
            RestoreDiskMethod::Clone(CloneMethod::SparseCopy { data_bytes }) => {
                write!(f, "sparse copy ({} MiB)", data_bytes >> 20)
            }
        }
    }
}

/// Makes `dst` (which must not exist) a private writable disk backed by the snapshot disk
/// `src`: a reflink when the filesystem has them, else (when `qemu_img` is given, i.e.
/// under QEMU) a qcow2 overlay on `src`, else a sparse copy.
pub fn restore_disk(
    src: &Path,
    dst: &Path,
    qemu_img: Option<&Path>,
) -> Result<RestoreDiskMethod, VmmError> {
    if let Some(qemu_img) = qemu_img
        && !reflink_works(src, dst)
    {
        qemu_img_run(
            qemu_img,
            &["create", "-q", "-f", "qcow2", "-F", "raw", "-b"],
            src,
            dst,
        )?;
        return Ok(RestoreDiskMethod::Qcow2Overlay);
    }
    clone_disk(src, dst).map(RestoreDiskMethod::Clone)
}

/// Whether FICLONE works from `src`'s filesystem to `dst`'s directory (probed with a
/// throwaway file next to `dst`).
fn reflink_works(src: &Path, dst: &Path) -> bool {
    let probe = dst.with_extension("reflink-probe");
    let ok = (|| {
        let input = File::open(src).ok()?;
        let output = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .ok()?;
        // SAFETY: FICLONE takes the source fd as its integer argument; both fds are open.
        let r = unsafe { libc::ioctl(output.as_raw_fd(), FICLONE, input.as_raw_fd()) };
        Some(r == 0)
    })()
    .unwrap_or(false);
    let _ = std::fs::remove_file(&probe);
    ok
}

/// Copies a (stopped) VM's disk into a snapshot as a standalone raw file: a clone for a
/// raw disk, `qemu-img convert` (reading through the backing chain) for a qcow2 overlay.
pub fn snapshot_disk(src: &Path, dst: &Path, qemu_img: Option<&Path>) -> Result<(), VmmError> {
    if disk_format(src) == DiskFormat::Raw {
        return clone_disk(src, dst).map(|_| ());
    }
    let qemu_img = qemu_img.ok_or_else(|| {
        VmmError::Unavailable(format!(
            "{} is a qcow2 overlay and qemu-img is not installed; apt-get install qemu-utils",
            src.display()
        ))
    })?;
    qemu_img_run(qemu_img, &["convert", "-q", "-O", "raw"], src, dst)
}

/// `qemu-img ARGS SRC DST`; on failure `dst` is removed and stderr reported.
fn qemu_img_run(qemu_img: &Path, args: &[&str], src: &Path, dst: &Path) -> Result<(), VmmError> {
    let out = Command::new(qemu_img)
        .args(args)
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null())
        .output()
        .map_err(VmmError::io(format!("run {}", qemu_img.display())))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(dst);
        return Err(VmmError::Tool {
            command: format!(
                "{} {} {} {}",
                qemu_img.display(),
                args.join(" "),
                src.display(),
                dst.display()
            ),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// FICLONE = _IOW(0x94, 9, int)
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Clones `src` to a new file `dst` (which must not exist): a reflink where the filesystem
/// supports it, else a sparse copy. On failure `dst` is removed.
pub fn clone_disk(src: &Path, dst: &Path) -> Result<CloneMethod, VmmError> {
    let input =
        File::open(src).map_err(VmmError::io(format!("open source image {}", src.display())))?;
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(VmmError::io(format!("create disk {}", dst.display())))?;
    let result = clone_into(&input, &output, src, dst);
    if result.is_err() {
        drop(output);
        let _ = std::fs::remove_file(dst);
    }
    result
}

fn clone_into(
    input: &File,
    output: &File,
    src: &Path,
    dst: &Path,
) -> Result<CloneMethod, VmmError> {
    // SAFETY: FICLONE takes the source fd as its integer argument; both fds are open.
    let r = unsafe { libc::ioctl(output.as_raw_fd(), FICLONE, input.as_raw_fd()) };
    if r == 0 {
        return Ok(CloneMethod::Reflink);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        // Not supported here / across filesystems: fall back to copying.
        Some(
            libc::EOPNOTSUPP
            | libc::EXDEV
            | libc::EINVAL
            | libc::ENOTTY
            | libc::ENOSYS
            | libc::EPERM,
        ) => {}
        _ => {
            return Err(VmmError::Io {
                context: format!("reflink {} to {}", src.display(), dst.display()),
                source: err,
            });
        }
    }
    let data_bytes = sparse_copy(input, output).map_err(VmmError::io(format!(
        "copy {} to {}",
        src.display(),
        dst.display()
    )))?;
    Ok(CloneMethod::SparseCopy { data_bytes })
}

/// Copies only the data ranges of `input`; the holes stay holes in `output`.
fn sparse_copy(input: &File, output: &File) -> std::io::Result<u64> {
    let len = input.metadata()?.len();
    output.set_len(len)?;
    let (ifd, ofd) = (input.as_raw_fd(), output.as_raw_fd());
    let mut copied = 0u64;
    let mut pos: i64 = 0;
    let end = i64::try_from(len).map_err(std::io::Error::other)?;
    while pos < end {
        // SAFETY: lseek on an open fd; no memory involved.
        let data = unsafe { libc::lseek(ifd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after `pos`: the rest is a hole
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(ifd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        copy_range(ifd, ofd, data, hole - data)?;
        copied += u64::try_from(hole - data).map_err(std::io::Error::other)?;
        pos = hole;
    }
    output.sync_all()?;
    Ok(copied)
}

fn copy_range(ifd: i32, ofd: i32, start: i64, len: i64) -> std::io::Result<()> {
    let mut off_in = start;
    let mut off_out = start;
    let mut left = len;
    while left > 0 {
        let chunk = usize::try_from(left.min(1 << 30)).map_err(std::io::Error::other)?;
        // SAFETY: valid fds and pointers to offsets we own for the call's duration.
        let n = unsafe { libc::copy_file_range(ifd, &mut off_in, ofd, &mut off_out, chunk, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(
                e.raw_os_error(),
                Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP)
            ) {
                return pread_pwrite(ifd, ofd, off_in, left);
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "source image shrank while being copied",
            ));
        }
        left -= i64::try_from(n).map_err(std::io::Error::other)?;
    }
    Ok(())
}

fn pread_pwrite(ifd: i32, ofd: i32, mut off: i64, mut left: i64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        // SAFETY: buf has `want` writable bytes.
        let n = unsafe { libc::pread(ifd, buf.as_mut_ptr().cast(), want, off) };
        if n <= 0 {
            return Err(if n == 0 {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "source image shrank")
            } else {
                std::io::Error::last_os_error()
            });
        }
        let n = usize::try_from(n).map_err(std::io::Error::other)?;
        let mut done = 0;
        while done < n {
            // SAFETY: writing initialized bytes buf[done..n].
            let w = unsafe {
                libc::pwrite(
                    ofd,
                    buf[done..n].as_ptr().cast(),
                    n - done,
                    off + done as i64,
                )
            };
            if w < 0 {
                return Err(std::io::Error::last_os_error());
            }
            done += usize::try_from(w).map_err(std::io::Error::other)?;
        }
        off += n as i64;
        left -= n as i64;
    }
    Ok(())
}

/// Creates a new sparse file of `size_bytes` at `path` (which must not exist) and formats it
/// ext4 with label `banger-work`. On failure the file is removed.
pub fn create_work_disk(path: &Path, size_bytes: u64) -> Result<(), VmmError> {
    if size_bytes < 16 * 1024 * 1024 {
        return Err(VmmError::InvalidSpec(format!(
            "work disk size {size_bytes} bytes is too small; use at least 16 MiB"
        )));
    }
    let mkfs = find_program("mkfs.ext4").ok_or_else(|| {
        VmmError::Unavailable("mkfs.ext4 not found; install e2fsprogs".to_string())
    })?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(VmmError::io(format!("create work disk {}", path.display())))?;
    let result = (|| {
        file.set_len(size_bytes)
            .map_err(VmmError::io(format!("size work disk {}", path.display())))?;
        drop(file);
        let out = Command::new(&mkfs)
            .args(["-F", "-q", "-L", "banger-work"])
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .map_err(VmmError::io(format!("run {}", mkfs.display())))?;
        if !out.status.success() {
            return Err(VmmError::Tool {
                command: format!("{} -F -q -L banger-work {}", mkfs.display(), path.display()),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_preserves_content_and_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src.img");
        let mut f = File::create(&src).expect("create");
        f.set_len(64 << 20).expect("len");
        f.seek(SeekFrom::Start(1 << 20)).expect("seek");
        f.write_all(&[0xab; 8192]).expect("write");
        f.seek(SeekFrom::Start(40 << 20)).expect("seek");
        f.write_all(b"tail data").expect("write");
        drop(f);
        let input = File::open(&src).expect("open");
        let dst = dir.path().join("dst.img");
        let output = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dst)
            .expect("create");
        let copied = sparse_copy(&input, &output).expect("copy");
        drop(output);
        assert_eq!(
            std::fs::read(&src).expect("read"),
            std::fs::read(&dst).expect("read")
        );
        let m = std::fs::metadata(&dst).expect("meta");
        assert_eq!(m.len(), 64 << 20);
        assert!(
            m.blocks() * 512 < 4 << 20,
            "copy is not sparse: {} blocks",
            m.blocks()
        );
        assert!(copied < 4 << 20, "copied {copied} bytes of data");
    }

    #[test]
    fn clone_disk_reports_a_method_refuses_overwrite_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src.img");
        std::fs::write(&src, vec![7u8; 100_000]).expect("write");
        let dst = dir.path().join("dst.img");
        let method = clone_disk(&src, &dst).expect("clone");
        eprintln!("clone method on this tempdir: {method:?}");
        assert_eq!(std::fs::read(&dst).expect("read"), vec![7u8; 100_000]);
        assert!(
            clone_disk(&src, &dst).is_err(),
            "must not overwrite an existing disk"
        );
        assert_eq!(
            std::fs::read(&dst).expect("read").len(),
            100_000,
            "existing disk untouched"
        );
        let missing = clone_disk(&dir.path().join("nope"), &dir.path().join("out"));
        assert!(missing.is_err());
        assert!(!dir.path().join("out").exists());
    }

    #[test]
    fn work_disk_is_a_clean_labelled_ext4() {
        let Some(e2fsck) = find_program("e2fsck") else {
            eprintln!("SKIP: e2fsck not installed (apt-get install e2fsprogs)");
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("work.ext4");
        create_work_disk(&disk, 256 << 20).expect("create work disk");
        let m = std::fs::metadata(&disk).expect("meta");
        assert_eq!(m.len(), 256 << 20);
        assert!(m.blocks() * 512 < 64 << 20, "work disk should be sparse");
        let out = Command::new(e2fsck)
            .arg("-fn")
            .arg(&disk)
            .output()
            .expect("e2fsck");
        assert!(
            out.status.success(),
            "e2fsck: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        if let Some(blkid) = find_program("blkid") {
            let out = Command::new(blkid)
                .args(["-o", "value", "-s", "LABEL"])
                .arg(&disk)
                .output()
                .expect("blkid");
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "banger-work");
        }
        assert!(
            create_work_disk(&disk, 256 << 20).is_err(),
            "must not overwrite"
        );
        assert!(create_work_disk(&dir.path().join("tiny"), 1024).is_err());
    }
}
