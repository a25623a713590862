//! Landing a checked guest archive on the host with `cp -r` semantics:
//! into an existing directory under its own name, or at a new name (or over
//! a file) through a staging directory and one rename, so a failed copy
//! leaves nothing half-written. Always unpacked with [`Modes::Safe`].

use std::io::Read;
use std::path::{Path, PathBuf};

use banger_proto::agent::UploadSummary;

use super::TransferError;
use super::check::Shape;
use super::unpack::{Modes, unpack_contained};

fn dest_err(message: String) -> TransferError {
    TransferError::Destination { message }
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> TransferError {
    move |source| TransferError::Io { context, source }
}

/// Unpacks a checked archive (see [`super::check_archive`]) at `dst`.
pub fn unpack_to<R: Read>(r: R, shape: &Shape, dst: &Path) -> Result<UploadSummary, TransferError> {
    let trailing_slash = dst.as_os_str().to_string_lossy().ends_with('/');
    match std::fs::metadata(dst) {
        // An existing directory (or a symlink to one, the user's own
        // choice): the copy goes inside it.
        Ok(m) if m.is_dir() => {
            return Ok(unpack_contained(r, dst, Modes::Safe)?);
        }
        Ok(_) if trailing_slash => {
            return Err(dest_err(format!("{} is not a directory", dst.display())));
        }
        Ok(_) if shape.is_dir => {
            return Err(dest_err(format!(
                "cannot overwrite non-directory {} with a directory",
                dst.display()
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if trailing_slash {
                return Err(dest_err(format!(
                    "directory {} does not exist",
                    dst.display()
                )));
            }
        }
        Err(e) => return Err(io_err(format!("cannot inspect {}", dst.display()))(e)),
    }
    let name = dst.file_name().ok_or_else(|| {
        dest_err(format!(
            "{} does not name a file or directory",
            dst.display()
        ))
    })?;
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(dest_err(format!(
            "directory {} does not exist",
            parent.display()
        )));
    }
    let staging = tempfile::Builder::new()
        .prefix(".banger-cp-")
        .tempdir_in(&parent)
        .map_err(io_err(format!(
            "cannot create a staging directory in {}",
            parent.display()
        )))?;
    let summary = unpack_contained(r, staging.path(), Modes::Safe)?;
    std::fs::rename(staging.path().join(&shape.name), parent.join(name)).map_err(io_err(
        format!("cannot move the copy into place at {}", dst.display()),
    ))?;
    Ok(summary)
}
