use std::path::PathBuf;
use std::time::Duration;

use crate::process::ExitInfo;

/// Everything the VMM layer can fail with. Messages name what went wrong and, where there
/// is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The spec handed to a driver is unusable.
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),

    /// The configured VMM cannot be used on this host.
    #[error("{0}")]
    Unavailable(String),

    /// Spawning the VMM (or a helper) failed outright.
    #[error(
        "could not start `{program}`: {source}; check that it is installed and the configured path is right"
    )]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    /// The VMM did not create its control socket in time.
    #[error("{program} did not create its control socket {} within {timeout:?}; its log:\n{log_tail}", socket.display())]
    SocketTimeout {
        program: String,
        socket: PathBuf,
        timeout: Duration,
        log_tail: String,
    },

    /// The VMM exited while it was being started.
    #[error("{program} exited during startup ({exit}); its log:\n{log_tail}")]
    ExitedEarly {
        program: String,
        exit: ExitInfo,
        log_tail: String,
    },

    /// Firecracker answered an API request with an error; `fault_message` is verbatim.
    #[error("firecracker rejected {method} {path} (HTTP {status}): {fault_message}")]
    Api {
        method: String,
        path: String,
        status: u16,
        fault_message: String,
    },

    /// Talking HTTP to Firecracker's API socket failed below the API level.
    #[error("firecracker API request {method} {path} failed: {detail}")]
    Http {
        method: String,
        path: String,
        detail: String,
    },

    /// Talking QMP to QEMU failed, or QEMU returned a QMP error.
    #[error("QMP command `{command}` on {} failed: {detail}", socket.display())]
    Qmp {
        command: String,
        socket: PathBuf,
        detail: String,
    },

    /// A snapshot cannot be used (incomplete, corrupt, or made for another VM/VMM).
    #[error("snapshot {} cannot be used: {reason}", dir.display())]
    Snapshot { dir: PathBuf, reason: String },

    /// A filesystem or process operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// An external tool (mkfs.ext4, ...) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Tool {
        command: String,
        status: String,
        stderr: String,
    },
}

impl VmmError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
        let context = context.into();
        move |source| VmmError::Io { context, source }
    }
}
