//! Stopping VMs: the guest agent's clean shutdown first, then the VMM's own
//! graceful stop, then force; afterwards no VMM, no tap, no `.vm` name.

use std::sync::Arc;
use std::time::Duration;

use banger_store::VmRecord;
use banger_vmm::Vmm;

use super::state::{Applied, Op};
use super::{ReadyState, Slot};
use crate::{Daemon, DaemonError};

impl Daemon {
    /// Stops a running VM (a stopped one is left as it is).
    pub async fn stop_vm(self: &Arc<Self>, name: &str) -> Result<VmRecord, DaemonError> {
        let slot = self.known_slot(name)?;
        let _op = slot.op.lock().await;
        self.stop_locked(name, &slot, false).await
    }

    pub async fn restart_vm(self: &Arc<Self>, name: &str) -> Result<VmRecord, DaemonError> {
        self.stop_vm(name).await?;
        self.start_vm(name).await
    }

    /// Stop with the VM's op lock held. `discard`: the VM is about to be
    /// deleted, so its disks do not matter and a clean guest shutdown would
    /// only cost time.
    pub(crate) async fn stop_locked(
        self: &Arc<Self>,
        name: &str,
        slot: &Arc<Slot>,
        discard: bool,
    ) -> Result<VmRecord, DaemonError> {
        let rec = self.store.get_vm(name)?;
        if self.apply(&rec, Op::Stop, None)? == Applied::AlreadyDone {
            return Ok(rec);
        }
        let mut guard = slot.vmm.lock().await;
        if let Some(mut vm) = guard.take() {
            let kind = vm.handle().kind;
            if !discard && *slot.ready.borrow() == ReadyState::Ready {
                let client = self
                    .agent_client(name)
                    .with_connect_timeout(Duration::from_secs(3));
                match tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await {
                    Ok(Ok(())) => {
                        if vm.wait_exit(self.stop_grace).await.is_some() {
                            tracing::info!(vm = %name, "guest powered off through the agent");
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(vm = %name, "agent shutdown failed: {e}"),
                    Err(_) => tracing::warn!(vm = %name, "agent shutdown timed out"),
                }
            }
            let grace = if discard {
                Duration::ZERO
            } else {
                self.stop_grace
            };
            let stopped = match self.driver_for(Some(kind)) {
                Ok(driver) => driver
                    .stop(&mut vm, grace)
                    .await
                    .map_err(|e| DaemonError::internal(format!("stopping VM {name}: {e}"))),
                Err(e) => Err(e),
            };
            match stopped {
                Ok(outcome) => {
                    slot.set_agent(None);
                    tracing::info!(vm = %name, method = ?outcome.method, "stopped");
                }
                Err(e) => {
                    // It still runs: keep it (the watcher still watches)
                    // and say so; a later stop tries again.
                    *guard = Some(vm);
                    drop(guard);
                    self.apply_now(name, Op::StopFailed, Some(&e.message))?;
                    return Err(e);
                }
            }
        }
        drop(guard);
        slot.ready.send_replace(ReadyState::Waiting);
        // The VMM is gone, so the VM is stopped whatever happens to its tap.
        let reason = match self.teardown_network(&rec).await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(vm = %name, "{}", e.message);
                Some(e.message)
            }
        };
        self.dns_names.remove(name);
        self.store.set_vm_process(name, None, None)?;
        self.vm_dir(name).remove_handle();
        self.apply_now(name, Op::Halted, reason.as_deref())?;
        Ok(self.store.get_vm(name)?)
    }
}
