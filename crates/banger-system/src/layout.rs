//! Where an installation puts things, the facts about the host that decide
//! what install may do, and the owner user.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, SystemError};

pub const BIN_DIR: &str = "/usr/local/bin";
/// The guest agent is not a host command, so it stays off `$PATH`.
pub const LIB_DIR: &str = banger_core::paths::SYSTEM_LIB_DIR;
pub const ETC_DIR: &str = "/etc/banger";
pub const METADATA_FILE: &str = "/etc/banger/install.json";
pub const UNIT_DIR: &str = "/etc/systemd/system";
pub const DAEMON_UNIT: &str = "bangerd.service";
pub const ROOT_UNIT: &str = "bangerd-root.service";
pub const STATE_DIR: &str = banger_core::paths::DEFAULT_STATE_DIR;
pub const CACHE_DIR: &str = banger_core::paths::DEFAULT_CACHE_DIR;
pub const RUNTIME_DIR: &str = banger_core::paths::DEFAULT_RUNTIME_DIR;
pub const ROOT_RUNTIME_DIR: &str = "/run/banger-root";
pub const SOCKET: &str = banger_core::paths::DEFAULT_SOCKET;
pub const ROOT_SOCKET: &str = banger_core::paths::DEFAULT_ROOT_SOCKET;

/// The binaries an installation consists of: (file name, install directory).
pub const BINARIES: [(&str, &str); 4] = [
    ("banger", BIN_DIR),
    ("bangerd", BIN_DIR),
    ("bangerd-root", BIN_DIR),
    ("banger-vsock-agent", LIB_DIR),
];

/// Host paths resolved under a root prefix. The prefix is `/` on a real host
/// and a temp dir in tests (`--root DIR`), so nothing a test does reaches the
/// real /etc. Paths written *into* units and metadata are always the
/// unprefixed host paths: they describe the installed system, not the place
/// the files were staged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    pub fn host() -> Self {
        Layout::new("/")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `abs` (an absolute host path) under the root prefix.
    pub fn at(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    pub fn metadata_file(&self) -> PathBuf {
        self.at(METADATA_FILE)
    }
    pub fn unit_file(&self, unit: &str) -> PathBuf {
        self.at(UNIT_DIR).join(unit)
    }
    pub fn socket(&self) -> PathBuf {
        self.at(SOCKET)
    }
    pub fn root_socket(&self) -> PathBuf {
        self.at(ROOT_SOCKET)
    }
}

/// Installed host path of one of [`BINARIES`].
pub fn installed_binary(name: &str) -> Option<String> {
    BINARIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, dir)| format!("{dir}/{n}"))
}

/// What install/uninstall/restart need to know about the host they run on.
/// Injectable so the refusal paths are tested even when tests run as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    pub euid: u32,
    /// systemd is PID 1 (the `sd_booted()` test: /run/systemd/system exists).
    pub systemd_booted: bool,
}

impl HostFacts {
    pub fn detect() -> Self {
        HostFacts {
            euid: nix::unistd::geteuid().as_raw(),
            systemd_booted: Path::new("/run/systemd/system").is_dir(),
        }
    }

    pub fn is_root(&self) -> bool {
        self.euid == 0
    }
}

/// The unprivileged user that owns banger's daemon, its state and its VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Name of the primary group: the group of the root helper's socket directory.
    pub group: String,
    /// Home directory (`HOME` for a daemon started in the foreground).
    #[serde(default)]
    pub home: String,
}

impl Owner {
    /// Look the user up with getpwnam (and its primary group with getgrgid).
    /// Root is refused: an owner daemon running as root would make the
    /// split between the two services pointless.
    pub fn lookup(name: &str) -> Result<Owner> {
        let owner = Owner::lookup_any(name)?;
        if owner.uid == 0 {
            return Err(SystemError::OwnerIsRoot(name.to_owned()));
        }
        Ok(owner)
    }

    /// Like [`Owner::lookup`] but accepts root: the foreground path allows
    /// running everything as the invoking user, whoever that is.
    pub fn lookup_any(name: &str) -> Result<Owner> {
        validate_user_name(name)?;
        let user = nix::unistd::User::from_name(name)
            .map_err(|source| SystemError::UserLookup {
                name: name.to_owned(),
                source,
            })?
            .ok_or_else(|| SystemError::UnknownOwner(name.to_owned()))?;
        let group = nix::unistd::Group::from_gid(user.gid)
            .map_err(|source| SystemError::UserLookup {
                name: user.gid.to_string(),
                source,
            })?
            .map(|g| g.name)
            // A primary gid without a group entry still works for Group=
            // when written numerically.
            .unwrap_or_else(|| user.gid.as_raw().to_string());
        Ok(Owner {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            group,
            home: user.dir.to_string_lossy().into_owned(),
        })
    }

    /// The user for a uid (the foreground path's default owner).
    pub fn from_uid(uid: u32) -> Result<Owner> {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .map_err(|source| SystemError::UserLookup {
                name: uid.to_string(),
                source,
            })?
            .ok_or_else(|| SystemError::UnknownOwner(uid.to_string()))?;
        Owner::lookup_any(&user.name)
    }
}

/// The `kvm` group when the host has one: the daemon joins it to open
/// /dev/kvm (udev gives the device to that group, mode 0660).
pub fn kvm_group() -> Option<String> {
    nix::unistd::Group::from_name("kvm")
        .ok()
        .flatten()
        .map(|g| g.name)
}

/// User names go into unit files (`User=`) and argv; only the portable
/// character set is accepted so no value can break out of its line.
pub fn validate_user_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && !name.chars().all(|c| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SystemError::InvalidOwner(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_joins_absolute_host_paths() {
        let l = Layout::new("/tmp/x");
        assert_eq!(
            l.metadata_file(),
            Path::new("/tmp/x/etc/banger/install.json")
        );
        assert_eq!(
            l.unit_file(DAEMON_UNIT),
            Path::new("/tmp/x/etc/systemd/system/bangerd.service")
        );
        assert_eq!(
            l.root_socket(),
            Path::new("/tmp/x/run/banger-root/bangerd-root.sock")
        );
        assert_eq!(Layout::host().socket(), Path::new(SOCKET));
    }

    #[test]
    fn user_names() {
        for ok in ["alice", "_svc", "a.b-c_1", "Bob"] {
            validate_user_name(ok).expect(ok);
        }
        for bad in ["", "-x", "123", "a b", "a\nUser=root", "a/b", "a$"] {
            assert!(validate_user_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn lookup_refuses_unknown_and_root() {
        assert!(matches!(
            Owner::lookup("banger-no-such-user-x"),
            Err(SystemError::UnknownOwner(_))
        ));
        assert!(matches!(
            Owner::lookup("root"),
            Err(SystemError::OwnerIsRoot(_))
        ));
        let root = Owner::lookup_any("root").expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
    }

    #[test]
    fn installed_binary_paths() {
        assert_eq!(
            installed_binary("banger-vsock-agent").as_deref(),
            Some("/usr/local/lib/banger/banger-vsock-agent")
        );
        assert_eq!(
            installed_binary("bangerd").as_deref(),
            Some("/usr/local/bin/bangerd")
        );
        assert_eq!(installed_binary("nope"), None);
    }
}
