//! Starting a VM from a warm snapshot, and making that snapshot.
//!
//! - At create, a VM whose shape has a warm snapshot gets no disks (`warm_pending`):
//!   its first start restores them as overlays on the snapshot's.
//! - [`Daemon::start_or_restore`] restores it (its own disks, tap, vsock, console); if
//!   the restore fails the snapshot is discarded with a warning, the disks are made as a
//!   cold create would, and the VM boots cold: the user still gets a VM.
//! - A restored VM is ready after one agent round trip that gives it its identity
//!   ([`crate::identity`]).
//! - After a cold boot reaches ready and before readiness is announced (so no user
//!   command or file is in it), [`Daemon::make_warm_if_missing`] snapshots the VM as its
//!   shape's warm snapshot if there is none (once, even with concurrent runs).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_agent::client::AgentClient;
use banger_store::VmRecord;
use banger_vmm::{Driver, RestoreReport, RunningVmm, Snapshot, Vmm, VmmKind, VmmSpec};

use super::{Slot, VmExtra, blocking, extra_of, ipv4};
use crate::identity::Identity;
use crate::{Daemon, DaemonError, VmDir};

/// Whether VMs of this spec can be snapshotted with their agent channel: Firecracker's
/// vsock survives a snapshot; under QEMU only the agent's virtio-serial port migrates
/// (vhost-user vsock blocks migration), so a QEMU VM qualifies with that port and no
/// vsock device.
pub fn warm_capable(spec: &VmmSpec, kind: VmmKind) -> bool {
    match kind {
        VmmKind::Firecracker => spec.vsock.is_some(),
        VmmKind::Qemu => spec.vsock.is_none() && spec.agent_port.is_some(),
    }
}

/// How a VM was started.
pub enum Started {
    Booted(RunningVmm),
    /// Restored and identified through `link`, the agent link the VM keeps (under QEMU
    /// the one connection its serial channel accepts).
    Restored(RunningVmm, Box<Snapshot>, Box<super::agent::AgentLink>),
}

impl Daemon {
    /// Guest RAM for a QEMU VM: a file under the runtime dir (tmpfs), so snapshots copy
    /// it instead of streaming RAM.
    pub(crate) fn memory_file(&self, name: &str) -> Result<PathBuf, DaemonError> {
        let dir = self.paths.runtime_dir.join("mem");
        crate::ensure_private_dir(&dir).map_err(DaemonError::internal)?;
        Ok(dir.join(format!("{name}.ram")))
    }

    /// Starts `spec`: a restore when the VM is warm-pending and its snapshot is good,
    /// else a cold boot (making the VM's disks first if it had none yet).
    pub(crate) async fn start_or_restore(
        self: &Arc<Self>,
        rec: &VmRecord,
        driver: &Driver,
        spec: &mut VmmSpec,
    ) -> Result<Started, DaemonError> {
        let mut extra = extra_of(rec);
        if extra.warm_pending {
            let snap = self
                .warm_key(rec, driver)
                .ok()
                .and_then(|k| self.warm_lookup(&k));
            if let Some(snap) = snap {
                let mut restore_spec = spec.clone();
                restore_spec.memory_file = None;
                match self
                    .restore_identified(rec, driver, &snap, &restore_spec)
                    .await
                {
                    Ok((vm, link, report)) => {
                        extra.warm_pending = false;
                        extra.warm_from = Some(snap.dir.display().to_string());
                        extra.restore_disks = Some(describe_disks(&report));
                        self.save_extra(&rec.name, &extra)?;
                        *spec = restore_spec;
                        return Ok(Started::Restored(vm, Box::new(snap), Box::new(link)));
                    }
                    Err(e) => {
                        let why = format!(
                            "restoring {} failed: {}; booting it cold",
                            rec.name, e.message
                        );
                        self.warm_discard(&snap.dir, &why);
                    }
                }
            }
            // No usable snapshot: the disks a cold create makes, then a cold boot.
            let d = Arc::clone(self);
            let r = rec.clone();
            let key = extra.authorized_key.clone();
            blocking(move || d.provision_disks(&r, key.as_deref())).await?;
            extra.warm_pending = false;
            self.save_extra(&rec.name, &extra)?;
        }
        let vm = driver
            .start(spec)
            .await
            .map_err(|e| DaemonError::internal(format!("starting VM {}: {e}", rec.name)))?;
        Ok(Started::Booted(vm))
    }

    pub(crate) fn save_extra(&self, name: &str, extra: &VmExtra) -> Result<(), DaemonError> {
        let text = serde_json::to_string(extra).map_err(DaemonError::internal)?;
        self.store.set_vm_extra(name, &text)?;
        Ok(())
    }

    /// Restores `spec` from `snap` and gives the guest its identity through the agent
    /// link the VM then keeps. On any failure the restored VMM is stopped and the disks
    /// it got are removed.
    async fn restore_identified(
        &self,
        rec: &VmRecord,
        driver: &Driver,
        snap: &Snapshot,
        spec: &VmmSpec,
    ) -> Result<(RunningVmm, super::agent::AgentLink, RestoreReport), DaemonError> {
        let r = driver
            .restore(snap, spec)
            .await
            .map_err(|e| DaemonError::internal(e.to_string()))?;
        tracing::info!(vm = %rec.name, snapshot = %snap.dir.display(),
            restore_ms = r.report.restore_ms, disk_ms = r.report.disk_ms,
            disks = ?r.report.disks, "restored from the warm snapshot");
        let mut vm = r.vm;
        let identified = match super::agent::link(driver.kind(), &VmDir::new(&spec.vm_dir)) {
            Ok(link) => {
                let agent = link.client().with_connect_timeout(Duration::from_secs(5));
                self.restored_ready(rec, &agent).await.map(|()| link)
            }
            Err(e) => Err(e),
        };
        let link = match identified {
            Ok(link) => link,
            Err(e) => {
                let _ = driver.stop(&mut vm, Duration::ZERO).await;
                for p in [Some(spec.root_disk.clone()), spec.work_disk.clone()]
                    .into_iter()
                    .flatten()
                {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        };
        Ok((vm, link, r.report))
    }

    /// Readiness of a restored VM: the agent answers, then takes the VM's identity and
    /// per-VM files.
    pub(crate) async fn restored_ready(
        &self,
        rec: &VmRecord,
        agent: &AgentClient,
    ) -> Result<(), DaemonError> {
        let t0 = Instant::now();
        loop {
            match agent.ping().await {
                Ok(_) => break,
                Err(e) if t0.elapsed() < self.warm.agent_timeout => {
                    tracing::debug!(vm = %rec.name, "restored agent not answering yet: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(DaemonError::internal(format!(
                        "the restored guest's agent did not answer within {}s: {e}",
                        self.warm.agent_timeout.as_secs()
                    )));
                }
            }
        }
        let agent_ms = t0.elapsed().as_millis() as u64;
        let identity = self.identity_of(rec)?;
        let tree = self.file_sync_tree()?;
        identity
            .apply(agent, tree.as_ref().map(|t| t.path()))
            .await?;
        tracing::info!(vm = %rec.name, ms = t0.elapsed().as_millis() as u64, agent_ms,
            "restored guest took its identity");
        Ok(())
    }

    fn identity_of(&self, rec: &VmRecord) -> Result<Identity, DaemonError> {
        let dir = self.vm_dir(&rec.name);
        let key = dir.host_key();
        let private = std::fs::read(&key)
            .map_err(|e| DaemonError::internal(format!("cannot read {}: {e}", key.display())))?;
        let public = std::fs::read_to_string(key.with_extension("pub"))
            .map_err(|e| DaemonError::internal(format!("cannot read the host key: {e}")))?;
        let net = ipv4(rec).filter(|_| self.network.attaches());
        let subnet = self.config().vm_subnet().value;
        Ok(Identity {
            name: rec.name.clone(),
            mac: rec.mac.clone(),
            ip: net,
            prefix: subnet.prefix,
            gateway: net.map(|_| subnet.gateway()),
            host_key_private: private,
            host_key_public: public.trim().to_string(),
            authorized_key: extra_of(rec).authorized_key,
        })
    }

    /// `[[file_sync]]` materialised into a scratch dir (None when there is nothing).
    fn file_sync_tree(&self) -> Result<Option<tempfile::TempDir>, DaemonError> {
        let Some(home) = banger_core::host::home_dir() else {
            return Ok(None);
        };
        if self.config().file_sync.is_empty() {
            return Ok(None);
        }
        let plan = crate::file_sync::plan(&self.config().file_sync, &home)
            .map_err(|e| DaemonError::bad_request(e.to_string()))?;
        let tmp = tempfile::Builder::new()
            .prefix("file-sync-")
            .tempdir_in(self.paths.tmp_dir())
            .map_err(DaemonError::internal)?;
        crate::file_sync::materialise(&plan, tmp.path())
            .map_err(|e| DaemonError::internal(e.to_string()))?;
        Ok(Some(tmp))
    }

    /// After a cold boot reached ready: the VM becomes its shape's warm snapshot if
    /// there is none. Failures only cost the next run its warm start.
    pub(crate) async fn make_warm_if_missing(
        &self,
        rec: &VmRecord,
        slot: &Arc<Slot>,
        driver: &Driver,
        spec: &VmmSpec,
    ) {
        if !warm_capable(spec, driver.kind()) {
            tracing::debug!(vm = %rec.name, "no warm snapshot: this VM's agent channel does not survive one");
            return;
        }
        let Ok(key) = self.warm_key(rec, driver) else {
            return;
        };
        if self.warm_lookup(&key).is_some() {
            return;
        }
        let networked = ipv4(rec).is_some() && self.network.attaches();
        if let Err(why) = crate::identity::preflight(&self.agent_client(&rec.name), networked).await
        {
            tracing::info!(vm = %rec.name, "no warm snapshot of this shape: the guest could not take a new identity after a restore: {why}");
            return;
        }
        let mut guard = slot.vmm.lock().await;
        let Some(vm) = guard.as_mut() else {
            return;
        };
        if let Err(e) = self.warm_make(&key, driver, vm, spec).await {
            tracing::warn!(vm = %rec.name, "{}", e.message);
        }
    }
}

/// How a restore made the VM's disks, for `--timings` and `vm show` (e.g. `root:
/// qcow2 overlay, work: qcow2 overlay`).
fn describe_disks(report: &RestoreReport) -> String {
    report
        .disks
        .iter()
        .map(|(id, m)| format!("{id}: {m}"))
        .collect::<Vec<_>>()
        .join(", ")
}
