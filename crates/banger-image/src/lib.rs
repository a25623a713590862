//! Guest images for banger: golden image builds (mmdebstrap), rootfs →
//! ext4 without mounting, kernels (vmlinuz/initrd + extracted ELF vmlinux),
//! the content-addressed store, and signed bundles pulled from a catalog.
//!
//! The daemon calls:
//! - [`build::build_image`] / [`build::install_built`] for `image build`,
//! - [`pull::pull`] with a [`catalog::Catalog`] entry for `image pull`,
//! - [`bundle::bundle`] for `image bundle`,
//! - [`store::register_image`], [`store::install_kernel`] for `register`,
//! - [`ext4::write_files`] to personalise a VM's root disk,
//! - [`store::cleanup_partial`] at start,
//! - [`build::prerequisites`] for `doctor`.

pub mod build;
pub mod bundle;
pub mod catalog;
mod cmd;
pub mod error;
pub mod ext4;
pub mod kernel;
pub mod pull;
pub mod store;
pub mod unpack;

pub use build::{AgentPayload, BuildMode, BuildOptions, BuiltImage, Profile, build_image};
pub use error::{Error, Result};
pub use ext4::{Ext4Fixups, FileSize, GuestEntry, NodeKind};
