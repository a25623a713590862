//! One error type for the crate. Each message says what was wrong and, where
//! there is one, what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("could not run {program}: {source} (is it installed? see `banger doctor`)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{program} failed ({status}): {stderr}")]
    Command {
        program: String,
        status: String,
        stderr: String,
    },

    #[error("e2fsck reports problems in {path}: {output}")]
    Fsck { path: PathBuf, output: String },

    #[error("invalid guest path {path:?}: {reason}")]
    GuestPath { path: String, reason: &'static str },

    #[error("kernel {path}: {reason}")]
    Kernel { path: PathBuf, reason: String },

    #[error("root filesystem {path}: {reason}")]
    Rootfs { path: PathBuf, reason: String },

    #[error("image build: {0}")]
    Build(String),

    #[error("key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },

    #[error("catalog: {0}")]
    Catalog(String),

    #[error(
        "no image named {0:?} in the catalog (see `banger image pull --help` for the catalog file option)"
    )]
    NotInCatalog(String),

    #[error("catalog entry {0:?} has no manifest_sha256 pin; refusing to pull an unpinned bundle")]
    Unpinned(String),

    #[error("manifest: {0}")]
    Manifest(String),

    #[error(
        "manifest sha256 is {actual}, but the catalog pins {expected}: the bundle was changed or the catalog is stale; not installing"
    )]
    PinMismatch { expected: String, actual: String },

    #[error(
        "manifest signature does not verify with the catalog's public key: the bundle was tampered with or signed with another key; not installing"
    )]
    BadSignature,

    #[error("download {url}: {reason}")]
    Download { url: String, reason: String },

    #[error(
        "{file}: {what} mismatch (expected {expected}, got {actual}); the download is corrupt or tampered with"
    )]
    Mismatch {
        file: String,
        what: &'static str,
        expected: String,
        actual: String,
    },

    #[error("{file}: more than the declared {declared} bytes; refusing oversized data")]
    Oversized { file: String, declared: u64 },

    #[error("{file}: truncated, got {got} of {declared} bytes")]
    Truncated {
        file: String,
        got: u64,
        declared: u64,
    },

    #[error(transparent)]
    Name(#[from] banger_core::names::NameError),

    #[error("json {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

// `IoContext` for this crate's `Error` (see the macro below).
crate::io_context!(Error);

/// Defines `IoContext::ctx(action, path)` on `std::io::Result` for an error
/// enum with an `Io { action, path, source }` variant: the one home of the
/// io-error context helper (banger-image and banger-oci use it).
#[macro_export]
macro_rules! io_context {
    ($err:ident) => {
        /// Attach the action and path to an io::Error.
        pub(crate) trait IoContext<T> {
            fn ctx(
                self,
                action: &'static str,
                path: impl Into<std::path::PathBuf>,
            ) -> std::result::Result<T, $err>;
        }

        impl<T> IoContext<T> for std::io::Result<T> {
            fn ctx(
                self,
                action: &'static str,
                path: impl Into<std::path::PathBuf>,
            ) -> std::result::Result<T, $err> {
                self.map_err(|source| $err::Io {
                    action,
                    path: path.into(),
                    source,
                })
            }
        }
    };
}
