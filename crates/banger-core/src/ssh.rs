//! The one `ssh-keygen` call: a fresh passphrase-less ed25519 key, used for
//! the user's banger identity (CLI) and for each VM's host key (daemon).

use std::path::Path;
use std::process::Command;

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error("cannot run ssh-keygen (install openssh-client): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("ssh-keygen failed: {0}")]
    Failed(String),
}

/// Writes a new ed25519 key pair at `path` and `path.pub` with `comment`
/// (argv only; ssh-keygen refuses to overwrite, so callers remove old keys).
pub fn keygen_ed25519(path: &Path, comment: &str) -> Result<(), KeygenError> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .map_err(KeygenError::Spawn)?;
    if !out.status.success() {
        return Err(KeygenError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_key_pair_with_the_comment() {
        if banger_core_has_no_keygen() {
            eprintln!("SKIP: ssh-keygen is not installed");
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let key = tmp.path().join("id");
        keygen_ed25519(&key, "box.vm").expect("keygen");
        let public = std::fs::read_to_string(tmp.path().join("id.pub")).expect("pub");
        assert!(public.starts_with("ssh-ed25519 "), "{public}");
        assert!(public.trim().ends_with(" box.vm"), "{public}");
        // An existing key is not overwritten silently: ssh-keygen asks, gets no answer, fails.
        let e = keygen_ed25519(&key, "again").expect_err("exists");
        assert!(matches!(e, KeygenError::Failed(_)), "{e}");
    }

    fn banger_core_has_no_keygen() -> bool {
        crate::host::find_program("ssh-keygen").is_none()
    }
}
