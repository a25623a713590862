//! One error type for the crate. Messages name the reference, layer digest
//! or entry path that was wrong, and what to do where there is something.

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

    #[error("invalid image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },

    #[error("registry request {url} failed: {reason}")]
    Http { url: String, reason: String },

    #[error(
        "registry {registry} refused access to {repository} ({status}): check the credentials in $REGISTRY_AUTH_FILE or ~/.docker/config.json, or that the repository exists"
    )]
    Unauthorized {
        registry: String,
        repository: String,
        status: u16,
    },

    #[error("{what} not found in {repository} (HTTP 404): check the name and tag")]
    NotFound { what: String, repository: String },

    #[error("auth file {path}: {reason}")]
    AuthFile { path: PathBuf, reason: String },

    #[error("{what} {digest}: {reason}")]
    Manifest {
        what: &'static str,
        digest: String,
        reason: String,
    },

    #[error(
        "no linux/amd64 image in the index for {reference} (available: {available}); banger guests are x86_64"
    )]
    NoPlatform {
        reference: String,
        available: String,
    },

    #[error(
        "blob {expected} from {url} does not match its digest ({reason}); nothing was stored — the registry or something between us served altered data"
    )]
    DigestMismatch {
        expected: String,
        url: String,
        reason: String,
    },

    #[error("unsupported digest {0:?}: only sha256 digests are supported")]
    UnsupportedDigest(String),

    #[error("layer {layer}: entry {entry:?}: {reason}; refusing the image")]
    Hostile {
        layer: String,
        entry: String,
        reason: String,
    },

    #[error("layer {layer}: {reason}")]
    Layer { layer: String, reason: String },

    #[error("image config {digest}: {reason}")]
    Config { digest: String, reason: String },

    #[error(transparent)]
    Image(#[from] banger_image::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

// `IoContext` for this crate's `Error`, from banger-image's one definition.
banger_image::io_context!(Error);
