//! Wire types only. Every type that crosses a process boundary lives here so
//! that the CLI, the owner daemon, the root helper and the guest agent cannot
//! drift apart. Nothing in this crate does I/O.

pub mod agent;
pub mod api;
pub mod config;
pub mod egress;
pub mod oci;
pub mod root;
pub mod snapshot;
pub mod tar_guard;

pub use api::*;
pub use config::{ConfigReload, ConfigValue, DaemonConfig};
pub use egress::EgressPolicy;
pub use oci::{OciPullEvent, OciPullRequest, OciRunConfig};
pub use snapshot::WarmSnapshotInfo;
