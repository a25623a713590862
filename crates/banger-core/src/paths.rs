//! Where banger keeps things. Every location can be overridden (flag or
//! environment) so that a whole installation runs unprivileged in a temp dir,
//! which is how the tests run it.

use std::path::{Path, PathBuf};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/banger";
/// Where `system install` puts host-side files that are not commands.
pub const SYSTEM_LIB_DIR: &str = "/usr/local/lib/banger";
/// The installed guest agent on the host (copied into images from here).
pub const SYSTEM_AGENT_BIN: &str = "/usr/local/lib/banger/banger-vsock-agent";
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/banger";
pub const DEFAULT_RUNTIME_DIR: &str = "/run/banger";
pub const DEFAULT_SOCKET: &str = "/run/banger/bangerd.sock";
pub const DEFAULT_ROOT_SOCKET: &str = "/run/banger-root/bangerd-root.sock";

pub const ENV_STATE_DIR: &str = "BANGER_STATE_DIR";
pub const ENV_CACHE_DIR: &str = "BANGER_CACHE_DIR";
pub const ENV_RUNTIME_DIR: &str = "BANGER_RUNTIME_DIR";
pub const ENV_SOCKET: &str = "BANGER_SOCKET";
pub const ENV_ROOT_SOCKET: &str = "BANGER_ROOT_SOCKET";
pub const ENV_CONFIG: &str = "BANGER_CONFIG";

/// The daemon-side layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub socket: PathBuf,
    pub root_socket: PathBuf,
}

impl Paths {
    /// Layout from explicit overrides, then the environment, then the
    /// system defaults. A runtime dir given without a socket places the
    /// socket inside it.
    pub fn resolve(
        state_dir: Option<PathBuf>,
        cache_dir: Option<PathBuf>,
        runtime_dir: Option<PathBuf>,
        socket: Option<PathBuf>,
        root_socket: Option<PathBuf>,
    ) -> Self {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let state_dir = state_dir
            .or_else(|| env(ENV_STATE_DIR))
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let cache_dir = cache_dir
            .or_else(|| env(ENV_CACHE_DIR))
            .unwrap_or_else(|| DEFAULT_CACHE_DIR.into());
        let runtime_dir = runtime_dir.or_else(|| env(ENV_RUNTIME_DIR));
        let socket = socket
            .or_else(|| env(ENV_SOCKET))
            .unwrap_or_else(|| match &runtime_dir {
                Some(r) => r.join("bangerd.sock"),
                None => DEFAULT_SOCKET.into(),
            });
        let runtime_dir = runtime_dir.unwrap_or_else(|| {
            socket
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| DEFAULT_RUNTIME_DIR.into())
        });
        let root_socket = root_socket
            .or_else(|| env(ENV_ROOT_SOCKET))
            .unwrap_or_else(|| DEFAULT_ROOT_SOCKET.into());
        Paths {
            state_dir,
            cache_dir,
            runtime_dir,
            socket,
            root_socket,
        }
    }

    /// Everything under one directory: what the tests and `banger system run`
    /// use on hosts without systemd.
    pub fn under(root: &Path) -> Self {
        Paths {
            state_dir: root.join("state"),
            cache_dir: root.join("cache"),
            runtime_dir: root.join("run"),
            socket: root.join("run/bangerd.sock"),
            root_socket: root.join("run-root/bangerd-root.sock"),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.state_dir.join("state.db")
    }
    pub fn vms_dir(&self) -> PathBuf {
        self.state_dir.join("vms")
    }
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.vms_dir().join(name)
    }
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }
    pub fn kernels_dir(&self) -> PathBuf {
        self.state_dir.join("kernels")
    }
    pub fn ssh_dir(&self) -> PathBuf {
        self.state_dir.join("ssh")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.ssh_dir().join("known_hosts")
    }
    pub fn downloads_dir(&self) -> PathBuf {
        self.cache_dir.join("downloads")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.state_dir.join("tmp")
    }
}

/// The socket the CLI talks to: `--socket`, `$BANGER_SOCKET`, or the default.
pub fn client_socket(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os(ENV_SOCKET)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| DEFAULT_SOCKET.into())
}

/// `$BANGER_CONFIG`, else `$XDG_CONFIG_HOME/banger/config.toml`, else
/// `~/.config/banger/config.toml`.
pub fn config_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_CONFIG).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    config_dir().map(|d| d.join("config.toml"))
}

/// `$XDG_CONFIG_HOME/banger` or `~/.config/banger`.
pub fn config_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        let x = PathBuf::from(x);
        if x.is_absolute() {
            return Some(x.join("banger"));
        }
    }
    crate::host::home_dir().map(|h| h.join(".config/banger"))
}

/// `~/.local/state/banger`: the user's own banger state (ssh key).
pub fn user_state_dir() -> Option<PathBuf> {
    crate::host::home_dir().map(|h| h.join(".local/state/banger"))
}

/// Is `path` inside `root` once both are normalised lexically? Neither is
/// touched on disk; callers that must follow symlinks canonicalize first.
pub fn is_within(path: &Path, root: &Path) -> bool {
    use std::path::Component;
    fn norm(p: &Path) -> Option<Vec<std::ffi::OsString>> {
        let mut out = Vec::new();
        for c in p.components() {
            match c {
                Component::RootDir | Component::Prefix(_) => out.clear(),
                Component::CurDir => {}
                Component::ParentDir => {
                    out.pop()?;
                }
                Component::Normal(s) => out.push(s.to_os_string()),
            }
        }
        Some(out)
    }
    if !path.is_absolute() || !root.is_absolute() {
        return false;
    }
    match (norm(path), norm(root)) {
        (Some(p), Some(r)) => p.len() >= r.len() && p[..r.len()] == r[..],
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_dir_places_socket() {
        let p = Paths::resolve(
            Some("/s".into()),
            Some("/c".into()),
            Some("/r".into()),
            None,
            Some("/rr/x.sock".into()),
        );
        assert_eq!(p.socket, PathBuf::from("/r/bangerd.sock"));
        assert_eq!(p.runtime_dir, PathBuf::from("/r"));
        assert_eq!(p.db(), PathBuf::from("/s/state.db"));
    }

    #[test]
    fn containment_is_lexical_and_strict() {
        let home = Path::new("/home/u");
        assert!(is_within(Path::new("/home/u/.aws"), home));
        assert!(is_within(Path::new("/home/u"), home));
        assert!(!is_within(Path::new("/home/u/../v/x"), home));
        assert!(!is_within(Path::new("/home/user2"), home));
        assert!(!is_within(Path::new("/../../etc"), home));
        assert!(!is_within(Path::new("relative"), home));
        assert!(is_within(Path::new("/home/u/a/../b"), home));
    }
}
