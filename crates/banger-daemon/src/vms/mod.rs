//! The VM lifecycle: create, start, stop, restart, delete, and re-adoption of
//! live VMMs after a daemon restart.
//!
//! States persist in SQLite and move only as the table in [`state`] says,
//! each write a compare-and-set, so two requests racing on one VM cannot
//! both act on it. Each VM also has an in-memory slot (its live VMM process,
//! the agent's readiness) that only this daemon process knows about; after a
//! restart it is rebuilt from the VM directory's VMM handle.
//!
//! - [`create`]: create (disks, host key, lease) and delete;
//! - [`start`]: start, boot arguments, guest readiness;
//! - [`stop`]: stop (agent, then VMM, then force) and restart;
//! - [`watch`]: the watcher of a running VMM, and re-adoption;
//! - [`network`]: the VM's host networking through the root helper.

pub mod agent;
pub mod create;
pub mod network;
pub mod start;
pub mod state;
pub mod stop;
pub mod warm_start;
pub mod watch;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use banger_proto::VmSpec;
use banger_store::VmRecord;
use banger_vmm::RunningVmm;
use tokio::sync::Mutex;

use crate::{Daemon, DaemonError, VmDir};

/// How long a graceful stop may take before the VMM is forced.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long the guest agent may take to announce itself after the VMM starts.
/// TCG boots are ~10-20 s on these machines; leave generous room for load.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);
pub(crate) const GUEST_CID: u32 = 3;

/// What this daemon process knows about a VM beyond the database.
#[derive(Default)]
pub struct Slot {
    /// Serialises lifecycle operations on one VM.
    pub op: Mutex<()>,
    pub vmm: Mutex<Option<RunningVmm>>,
    pub ready: tokio::sync::watch::Sender<ReadyState>,
    /// How to reach the running VM's agent (see [`agent`]).
    pub agent: std::sync::Mutex<Option<agent::AgentLink>>,
}

impl Slot {
    /// Sets (or with `None` drops, removing a QEMU VM's gateway) the link.
    pub(crate) fn set_agent(&self, link: Option<agent::AgentLink>) {
        *self.agent.lock().unwrap_or_else(|p| p.into_inner()) = link;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ReadyState {
    #[default]
    Waiting,
    Ready,
    Failed(String),
}

#[derive(Default)]
pub struct Slots {
    map: std::sync::Mutex<HashMap<String, Arc<Slot>>>,
    /// Tap names claimed by VMs being started or running: tap → VM.
    taps: std::sync::Mutex<HashMap<String, String>>,
}

impl Slots {
    pub fn get(&self, name: &str) -> Arc<Slot> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(name.to_string()).or_default().clone()
    }
    pub fn peek(&self, name: &str) -> Option<Arc<Slot>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
    pub fn remove(&self, name: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
    /// A tap name for `vm` no other VM holds: the one it claimed already,
    /// else its hashed name, stepping around a 24-bit hash collision with
    /// another VM's claim or `recorded` tap (one VM's egress change must
    /// never touch another's tap). Claiming and checking are one step, so
    /// two VMs starting at once cannot take the same name.
    pub fn claim_tap(&self, vm: &str, recorded: &std::collections::HashSet<String>) -> String {
        let mut taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, _)) = taps.iter().find(|(_, v)| v.as_str() == vm) {
            return t.clone();
        }
        let mut taken = recorded.clone();
        taken.extend(taps.keys().cloned());
        let tap = banger_net::tap_name_unique(vm, &taken);
        taps.insert(tap.clone(), vm.to_string());
        tap
    }

    /// `vm`'s tap is gone.
    pub fn release_tap(&self, vm: &str) {
        self.taps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, v| v != vm);
    }

    /// Slots held (one per VM that was operated on and not deleted).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl crate::Daemon {
    /// The slot of an existing VM; an unknown name is NotFound and gets no
    /// slot, so requests for made-up names cannot grow the daemon's memory.
    pub(crate) fn known_slot(&self, name: &str) -> Result<Arc<Slot>, crate::DaemonError> {
        self.store.get_vm(name)?;
        Ok(self.slots.get(name))
    }
}

/// Extra per-VM facts kept in the `extra` JSON column.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct VmExtra {
    pub spec: Option<VmSpec>,
    pub tap: Option<String>,
    /// The VMM kind chosen when the VM was last started.
    pub vmm_kind: Option<banger_vmm::VmmKind>,
    /// The warm snapshot generation this VM was restored from: its disks are overlays
    /// backed by that snapshot's, which therefore outlives it.
    #[serde(default)]
    pub warm_from: Option<String>,
    /// Set at create: restore from a warm snapshot at the first start (its disks are
    /// made then, from the snapshot). `false` after that first start.
    #[serde(default)]
    pub warm_pending: bool,
    /// How the restore made this VM's disks (`root: qcow2 overlay, …`), for `--timings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_disks: Option<String>,
    /// The OpenSSH public key given at create, for disks made later (a warm create
    /// whose restore fell back) and for a restored guest's authorized_keys.
    #[serde(default)]
    pub authorized_key: Option<String>,
    /// The names of an `allow:` egress policy (absent: all, or none when
    /// the record's `no_egress` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_allow: Option<Vec<String>>,
}

pub fn extra_of(rec: &VmRecord) -> VmExtra {
    serde_json::from_str(&rec.extra).unwrap_or_default()
}

/// A VM's egress policy, from its record.
pub fn egress_of(rec: &VmRecord) -> banger_proto::EgressPolicy {
    use banger_proto::EgressPolicy;
    if rec.no_egress {
        return EgressPolicy::None;
    }
    match extra_of(rec).egress_allow {
        Some(names) => EgressPolicy::Allow { names },
        None => EgressPolicy::All,
    }
}

pub(crate) fn ipv4(rec: &VmRecord) -> Option<Ipv4Addr> {
    rec.ip.as_deref().and_then(|s| s.parse().ok())
}

/// Runs blocking disk work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DaemonError> + Send + 'static,
) -> Result<T, DaemonError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DaemonError::internal(format!("worker failed: {e}")))?
}

impl Daemon {
    /// The directory of VM `name`.
    pub fn vm_dir(&self, name: &str) -> VmDir {
        VmDir::new(self.paths.vm_dir(name))
    }
}

/// What a running VMM process holds that it shares with nobody (see `vm show`).
pub fn private_memory_bytes(pid: u32) -> Option<u64> {
    banger_vmm::process::private_dirty_bytes(pid)
}
