//! OCI images as banger sandboxes: pull from any registry v2, verify every
//! blob while it streams, flatten the layers safely, and produce a checked
//! rootfs.ext4 plus the image's run config in the image store.
//!
//! The daemon calls [`pull_to_ext4`] (blocking: run it on a blocking
//! thread) with [`PullOptions`]; `vm run` reads [`ImageConfig::load`] from
//! the image dir. [`LayerCache::cleanup_partial`] belongs in daemon start.
//! See docs/oci.md.

pub mod auth;
pub mod cache;
pub mod error;
pub mod flatten;
pub mod pull;
pub mod reference;
pub mod registry;

pub use cache::LayerCache;
pub use error::{Error, Result};
pub use flatten::{Flattened, Flattener, Limits};
pub use pull::{
    ImageConfig, OCI_CONFIG, Phase, Progress, PullOptions, PulledImage, pull_to_ext4, resolve,
};
pub use reference::Reference;
pub use registry::{Descriptor, ImageManifestDoc, RegistryOptions};
