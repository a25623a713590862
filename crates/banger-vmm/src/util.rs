//! Process spawning and waiting shared by the drivers.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::error::VmmError;
use crate::process::{ProcessIdentity, log_tail};

pub(crate) fn open_append(path: &Path) -> Result<File, VmmError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(VmmError::io(format!("open log {}", path.display())))
}

/// Removes a stale socket left by a previous run (a VMM refuses to bind over it).
pub(crate) fn remove_stale(path: &Path) -> Result<(), VmmError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(VmmError::Io {
            context: format!("remove stale socket {}", path.display()),
            source: e,
        }),
    }
}

/// Spawns `program args` with stdout/stderr appended to files. Its own process group keeps
/// terminal signals aimed at the daemon from killing VMs; no kill-on-drop, so VMs outlive
/// a daemon restart.
pub(crate) fn spawn(
    program: &Path,
    args: &[OsString],
    stdout: &Path,
    stderr: &Path,
) -> Result<(Child, ProcessIdentity), VmmError> {
    spawn_in(program, args, stdout, stderr, None)
}

/// [`spawn`] with a working directory (Firecracker resolves relative disk paths, also
/// those inside a snapshot, against it).
pub(crate) fn spawn_in(
    program: &Path,
    args: &[OsString],
    stdout: &Path,
    stderr: &Path,
    cwd: Option<&Path>,
) -> Result<(Child, ProcessIdentity), VmmError> {
    let out = open_append(stdout)?;
    let err = if stderr == stdout {
        out.try_clone().map_err(VmmError::io("dup log fd"))?
    } else {
        open_append(stderr)?
    };
    let mut cmd = Command::new(program);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|source| VmmError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    let pid = child.id().ok_or_else(|| {
        VmmError::Unavailable(format!("{} exited immediately", program.display()))
    })?;
    let identity =
        ProcessIdentity::of(pid).map_err(VmmError::io(format!("read /proc/{pid}/stat")))?;
    Ok((child, identity))
}

/// Waits until a Unix socket at `path` accepts connections, the child exits, or `timeout`.
pub(crate) async fn wait_for_socket(
    child: &mut Child,
    program: &str,
    path: &Path,
    timeout: Duration,
    log: &Path,
) -> Result<(), VmmError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(VmmError::ExitedEarly {
                program: program.to_string(),
                exit: status.into(),
                log_tail: log_tail(log, 20),
            });
        }
        if path.exists() && tokio::net::UnixStream::connect(path).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(VmmError::SocketTimeout {
                program: program.to_string(),
                socket: path.to_path_buf(),
                timeout,
                log_tail: log_tail(log, 20),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Paths inside option strings (`key=value,key=value`) must not contain commas.
pub(crate) fn no_comma(what: &str, p: &Path) -> Result<PathBuf, VmmError> {
    if p.to_string_lossy().contains(',') {
        return Err(VmmError::InvalidSpec(format!(
            "{what} path {} must not contain ','",
            p.display()
        )));
    }
    Ok(p.to_path_buf())
}
