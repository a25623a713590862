//! Moving trees in and out of guests as tar streams: the one home of the
//! security-critical tar rules, used by every path that packs or unpacks
//! guest data (`vm cp` both ways, `vm run`'s workspace upload, the agent's
//! upload and download handlers).
//!
//! * [`pack`]: the one packer ([`pack_path`]; [`pack_files`] for a file list;
//!   [`pack_tree_as_root`] for the daemon's file_sync tree).
//! * [`unpack`]: the contained unpacker (never writes outside its target,
//!   never through a symlink); on the host it masks setuid, setgid and
//!   world-writable bits ([`Modes::Safe`]).
//! * [`check`]: the host's whole-stream check of what a guest sent, symlink
//!   chains resolved.
//! * [`stage`]: `cp -r` placement on the host through a staging directory.

pub mod check;
pub mod pack;
pub mod stage;
pub mod unpack;

pub use check::{Shape, check_archive};
pub use pack::{PackError, default_name, pack_files, pack_path, pack_tree_as_root};
pub use stage::unpack_to;
pub use unpack::{Modes, UNSAFE_MODE_BITS, UnpackError, contained_relative, unpack_contained};

/// Why a guest → host transfer was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// An entry of the guest's archive breaks a rule; nothing was written.
    #[error("refusing entry {entry:?}: {reason}")]
    Refused { entry: String, reason: String },
    /// A link that resolves outside the copied tree.
    #[error(
        "refusing link {link:?} -> {target:?}: it points outside the copied path (copy its target instead)"
    )]
    LinkOutside { link: String, target: String },
    /// The guest sent no entry at all.
    #[error("the guest sent an empty archive")]
    Empty,
    /// The stream could not be read.
    #[error("reading {what}: {source}")]
    Read {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The host destination does not fit the copy (`cp -r` rules).
    #[error("{message}")]
    Destination { message: String },
    /// A host filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The contained unpacker refused or failed.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
}
