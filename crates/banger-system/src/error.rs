use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while installing, inspecting or running
/// banger's services. Each message says what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// A host-changing command was run by an unprivileged user.
    #[error(
        "`banger system {command}` changes this host's services and files and must run as root: \
         run it again with `sudo banger system {command} ...`"
    )]
    NotRoot { command: &'static str },

    /// PID 1 is not systemd, so the supported service install cannot work.
    #[error(
        "systemd is not running on this host (/run/systemd/system is absent), and the supported \
         install runs banger as the systemd services bangerd.service and bangerd-root.service. \
         On hosts without systemd (containers, CI) run both daemons in the foreground instead: \
         `sudo banger system run --owner USER`"
    )]
    SystemdRequired,

    #[error(
        "owner user {0:?} does not exist on this host: create the user first, or pass an existing \
         user to --owner (usually your own: --owner \"$USER\")"
    )]
    UnknownOwner(String),

    #[error(
        "owner user {0:?} has uid 0: the owner daemon must run as an unprivileged user; pass your \
         own user to --owner (usually --owner \"$SUDO_USER\")"
    )]
    OwnerIsRoot(String),

    #[error(
        "owner name {0:?} is not a valid user name (expected letters, digits, '_', '-' or '.', \
         not starting with '-' or a digit-only name)"
    )]
    InvalidOwner(String),

    #[error("cannot look up user or group {name:?}: {source}")]
    UserLookup {
        name: String,
        #[source]
        source: nix::Error,
    },

    #[error(
        "cannot find the {name} binary at {}: build every banger binary (`cargo build --release`) \
         and run install from the build directory, or pass the directory that holds them",
        path.display()
    )]
    MissingBinary { name: &'static str, path: PathBuf },

    #[error("cannot locate the running executable to find banger's binaries next to it: {0}")]
    CurrentExe(#[source] std::io::Error),

    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`systemctl {args}` failed: {detail}")]
    Systemctl { args: String, detail: String },

    #[error(
        "{what} did not answer on {} within {waited:?}: {hint}",
        path.display()
    )]
    SocketTimeout {
        what: &'static str,
        path: PathBuf,
        waited: Duration,
        hint: String,
    },

    #[error(
        "install metadata {} is unreadable ({detail}); re-run `sudo banger system install --owner USER`",
        path.display()
    )]
    BadMetadata { path: PathBuf, detail: String },

    #[error(
        "{0:?} cannot be written into a systemd unit: paths must be absolute and free of \
         whitespace, quotes, backslashes and control characters"
    )]
    UnitValue(String),

    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{name} exited before it was ready ({status}); its output is above")]
    ExitedEarly { name: &'static str, status: String },

    #[error(
        "{what} is already answering on {}: stop the running instance first (or pick other \
         paths with --runtime-dir/--socket)",
        path.display()
    )]
    AlreadyRunning { what: &'static str, path: PathBuf },

    #[error("stopped before the daemons were ready: {0}")]
    Interrupted(String),

    #[error(
        "cannot use the owner's config {} for the root helper's network settings: {why}",
        path.display()
    )]
    OwnerConfig { path: PathBuf, why: String },

    #[error("refusing to create {} as root: {why}", path.display())]
    UnsafeDir { path: PathBuf, why: String },
    #[error("cannot install signal handlers for the foreground run: {0}")]
    Signals(#[source] std::io::Error),
}

impl SystemError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        SystemError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = SystemError> = std::result::Result<T, E>;
