//! One daemon per state directory: `bangerd.lock` in it is held with
//! `flock` for the daemon's life. Two daemons on one state dir (through
//! different sockets) would each think they own the same VMs and disks.
//! The kernel drops the lock when the process dies, so a crash never
//! leaves a stale lock behind.

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, bail};

/// Held for as long as the daemon runs.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Takes the lock or says which daemon holds it.
    pub fn acquire(state_dir: &Path) -> anyhow::Result<StateLock> {
        let path = state_dir.join("bangerd.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                bail!(
                    "another bangerd (pid {}) is using the state directory {}; stop it first, \
                     or give this one its own --state-dir",
                    holder
                        .trim()
                        .parse::<u32>()
                        .map_or("unknown".into(), |p| p.to_string()),
                    state_dir.display()
                );
            }
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().expect("tmp");
        let first = StateLock::acquire(dir.path()).expect("first");
        let e = StateLock::acquire(dir.path()).expect_err("second");
        let msg = e.to_string();
        assert!(msg.contains("another bangerd"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        StateLock::acquire(dir.path()).expect("free again");
    }
}
