//! Creating a directory as root and handing it to the owner without ever
//! following a link the owner could have planted.
//!
//! `banger system run` (as root) creates the daemon's directories and gives
//! them to the owner. Done by path (`mkdir -p`, then `chown` and `chmod` of
//! the path), an owner who can write a parent swaps the new directory for a
//! symlink between the calls, and root chowns `/etc` to them. Here:
//!
//! * the path is walked from `/` one component at a time with
//!   `openat(O_DIRECTORY | O_NOFOLLOW)` on the parent's fd; a symlink on the
//!   way is followed only when root owns it (`/var/run -> /run`), never one
//!   the owner (or anyone else) made;
//! * the directory that gets the first new component must not be writable
//!   by the owner (unless it is sticky, like `/tmp`, where they cannot move
//!   root's entries): refused with a message saying why;
//! * new components are made with `mkdirat` on the parent fd and opened
//!   `O_NOFOLLOW`; the last one is chowned and chmodded through its fd
//!   (`fchown`, `fchmod`), so whatever the owner does to the names, only
//!   the directory root created changes owner.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Result, SystemError};

/// Most root-owned symlinks followed on one path.
const MAX_LINKS: usize = 16;

/// Who the directories are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Untrusted {
    pub uid: u32,
    pub gid: u32,
}

fn c(name: &std::ffi::OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn open_dir_at(parent: &OwnedFd, name: &std::ffi::OsStr) -> io::Result<OwnedFd> {
    let n = c(name)?;
    // SAFETY: a valid dirfd and a NUL-terminated name; the returned fd is
    // owned below.
    let fd = unsafe {
        libc::openat(
            parent.as_raw_fd(),
            n.as_ptr(),
            libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn stat_at(parent: &OwnedFd, name: &std::ffi::OsStr) -> io::Result<libc::stat> {
    let n = c(name)?;
    // SAFETY: zeroed stat is a valid out-buffer for fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dirfd, NUL-terminated name, valid out pointer.
    let rc = unsafe {
        libc::fstatat(
            parent.as_raw_fd(),
            n.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-buffer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Whether `who` could rename or replace entries of a directory with this
/// owner and mode.
fn writable_by(st: &libc::stat, who: Untrusted) -> bool {
    let m = st.st_mode;
    if m & libc::S_ISVTX != 0 && st.st_uid != who.uid {
        // Sticky: only an entry's owner (or the directory's) may move it.
        return false;
    }
    (st.st_uid == who.uid && m & libc::S_IWUSR != 0)
        || (st.st_gid == who.gid && m & libc::S_IWGRP != 0)
        || m & libc::S_IWOTH != 0
}

fn root_fd() -> io::Result<OwnedFd> {
    // SAFETY: a constant NUL-terminated path; the fd is owned below.
    let fd = unsafe {
        libc::open(
            c"/".as_ptr(),
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Create `dir` (and missing parents, 0755 root) unless it exists, give the
/// last component `mode` and, with `chown_to`, that owner — all without
/// following a link `who` could have made. An existing `dir` is left as it
/// is (a socket path such as /tmp/x.sock must never re-own /tmp). Returns
/// whether it was created.
pub fn create_owned_dir(
    dir: &Path,
    mode: u32,
    chown_to: Option<(u32, u32)>,
    who: Untrusted,
) -> Result<bool> {
    let refuse = |why: String| SystemError::UnsafeDir {
        path: dir.to_path_buf(),
        why,
    };
    if !dir.is_absolute() {
        return Err(refuse("it is not an absolute path".into()));
    }
    let io_err = |e| SystemError::io("create directory", dir, e);
    let mut todo: Vec<std::ffi::OsString> = dir
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    if dir.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(refuse("it contains `..`".into()));
    }
    todo.reverse();
    let mut at = root_fd().map_err(io_err)?;
    let mut walked = PathBuf::from("/");
    let mut links = 0;
    // Existing components.
    while let Some(name) = todo.last().cloned() {
        let st = match stat_at(&at, &name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(io_err(e)),
        };
        todo.pop();
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                at = open_dir_at(&at, &name).map_err(io_err)?;
                walked.push(&name);
            }
            libc::S_IFLNK if st.st_uid == 0 && links < MAX_LINKS => {
                links += 1;
                // A root-owned link: resolve it and walk its target again.
                let target = std::fs::canonicalize(walked.join(&name)).map_err(io_err)?;
                for part in target.components().rev() {
                    if let Component::Normal(n) = part {
                        todo.push(n.to_os_string());
                    }
                }
                at = root_fd().map_err(io_err)?;
                walked = PathBuf::from("/");
            }
            libc::S_IFLNK => {
                return Err(refuse(format!(
                    "{} is a symlink owned by uid {} (only root's links are followed)",
                    walked.join(&name).display(),
                    st.st_uid
                )));
            }
            _ => {
                return Err(refuse(format!(
                    "{} is not a directory",
                    walked.join(&name).display()
                )));
            }
        }
    }
    if todo.is_empty() {
        return Ok(false);
    }
    let st = fstat(&at).map_err(io_err)?;
    if writable_by(&st, who) {
        return Err(refuse(format!(
            "its parent {} can be written by uid {} (who could swap the new directory for a \
             symlink); create {} yourself as that user, or choose a root-owned location",
            walked.display(),
            who.uid,
            dir.display()
        )));
    }
    while let Some(name) = todo.pop() {
        let n = c(&name).map_err(io_err)?;
        let m = if todo.is_empty() { 0o700 } else { 0o755 };
        // SAFETY: a valid dirfd and a NUL-terminated name.
        if unsafe { libc::mkdirat(at.as_raw_fd(), n.as_ptr(), m) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(io_err(e));
            }
        }
        at = open_dir_at(&at, &name).map_err(|e| {
            refuse(format!(
                "{} changed while it was created ({e})",
                walked.join(&name).display()
            ))
        })?;
        walked.push(&name);
    }
    if let Some((uid, gid)) = chown_to {
        // SAFETY: a valid fd of the directory created above.
        if unsafe { libc::fchown(at.as_raw_fd(), uid, gid) } != 0 {
            return Err(SystemError::io("chown", dir, io::Error::last_os_error()));
        }
    }
    // SAFETY: as above.
    if unsafe { libc::fchmod(at.as_raw_fd(), mode as libc::mode_t) } != 0 {
        return Err(SystemError::io(
            "set the mode of",
            dir,
            io::Error::last_os_error(),
        ));
    }
    Ok(true)
}

#[cfg(test)]
#[path = "owned_dir_tests.rs"]
mod tests;
