//! Snapshot wire types: the warm snapshots the daemon keeps per VM shape (`banger image
//! warm`, and what `vm run`/`vm create` restore from).

use serde::{Deserialize, Serialize};

/// One warm snapshot: what it is for, where it is, what making it cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmSnapshotInfo {
    pub image: String,
    /// `qemu` or `firecracker`.
    pub vmm: String,
    pub vcpu: u32,
    pub memory_mib: u64,
    pub disk_bytes: u64,
    /// The snapshot's directory under the state dir.
    pub dir: String,
    /// Unix seconds.
    pub created_unix: u64,
    /// The device state stream's size.
    pub state_bytes: u64,
    /// How long the source guest was paused for its state and memory.
    pub save_ms: u64,
    /// How long copying its disks took (the source stayed paused).
    pub disk_copy_ms: u64,
    /// `true` when this request made it; `false` when it existed already.
    pub made: bool,
    /// Taken out of use (stale or broken); kept only while restored VMs' disks back
    /// onto it.
    #[serde(default)]
    pub retired: bool,
}
