//! The root helper's network settings, taken from the owner's config.toml
//! when banger is installed (`system install` writes them into the root
//! unit's command line, a root-owned file) or started (`system run` passes
//! them). From then on the helper decides the network: the owner daemon's
//! requests are checked against these, never obeyed.

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use banger_core::config::Config;

use crate::error::{Result, SystemError};
use crate::layout::Owner;

/// The owner's config file: `$BANGER_CONFIG` when set (as for the daemon),
/// else `<home>/.config/banger/config.toml`.
pub fn owner_config_path(owner: &Owner) -> PathBuf {
    match std::env::var_os(banger_core::paths::ENV_CONFIG).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => Path::new(&owner.home).join(".config/banger/config.toml"),
    }
}

/// Read the owner's config as root without being tricked into reading
/// another file: no symlink is followed for the last component, and the
/// file must be a regular file owned by the owner or root. A missing file
/// is the built-in configuration.
pub fn owner_config(owner: &Owner) -> Result<Config> {
    let path = owner_config_path(owner);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => return Err(SystemError::io("open the owner's config", &path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| SystemError::io("inspect the owner's config", &path, e))?;
    if !meta.is_file() || (meta.uid() != owner.uid && meta.uid() != 0) {
        return Err(SystemError::OwnerConfig {
            path,
            why: format!(
                "it must be a regular file owned by {} (uid {}) or root",
                owner.name, owner.uid
            ),
        });
    }
    let mut text = String::new();
    file.take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|e| SystemError::io("read the owner's config", &path, e))?;
    Config::parse(&text, &path).map_err(|e| SystemError::OwnerConfig {
        path: path.clone(),
        why: e.to_string(),
    })
}

/// `bangerd-root` arguments for the network `cfg` describes.
pub fn helper_net_args(cfg: &Config) -> Vec<String> {
    vec![
        "--bridge".into(),
        cfg.bridge_name().value,
        "--subnet".into(),
        cfg.vm_subnet().value.to_string(),
        "--dns-port".into(),
        cfg.dns_port().value.to_string(),
        "--isolate-vms".into(),
        cfg.isolate_vms().value.to_string(),
        "--block-lan".into(),
        cfg.block_lan().value.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(home: &Path) -> Owner {
        Owner {
            name: "alice".into(),
            // SAFETY: geteuid has no preconditions.
            uid: unsafe { libc::geteuid() },
            gid: 0,
            group: "alice".into(),
            home: home.display().to_string(),
        }
    }

    #[test]
    fn config_values_become_helper_arguments() {
        let home = tempfile::tempdir().expect("tmp");
        let o = owner(home.path());
        assert_eq!(
            helper_net_args(&owner_config(&o).expect("no file: defaults")),
            [
                "--bridge",
                "banger0",
                "--subnet",
                "172.16.0.0/24",
                "--dns-port",
                "53",
                "--isolate-vms",
                "true",
                "--block-lan",
                "true"
            ]
        );
        let dir = home.path().join(".config/banger");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("config.toml"),
            "[network]\nsubnet = \"10.77.0.0/24\"\nisolate_vms = false\n",
        )
        .expect("write");
        let args = helper_net_args(&owner_config(&o).expect("config"));
        assert_eq!(args[3], "10.77.0.0/24");
        assert_eq!(args[7], "false");
    }

    #[test]
    fn a_symlinked_config_is_not_followed() {
        let home = tempfile::tempdir().expect("tmp");
        let dir = home.path().join(".config/banger");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let secret = home.path().join("secret");
        std::fs::write(&secret, "root-only = \"hunter2\"\n").expect("write");
        std::os::unix::fs::symlink(&secret, dir.join("config.toml")).expect("symlink");
        let err = owner_config(&owner(home.path())).expect_err("symlink refused");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
