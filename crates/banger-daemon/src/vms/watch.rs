//! Noticing what happens to VMMs without being asked: the watcher of a
//! running VMM (it exited on its own: record why, clean up), and re-adoption
//! of live VMMs when a restarted daemon opens its state.

use std::sync::Arc;
use std::time::Duration;

use banger_vmm::{Adoption, Vmm};

use super::state::{Move, Op, next};
use super::{ReadyState, Slot, ipv4};
use crate::Daemon;

impl Daemon {
    /// Watches a running VMM; when it exits on its own, records why.
    pub(crate) fn watch(self: &Arc<Self>, name: String, slot: Arc<Slot>) {
        let d = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut guard = slot.vmm.lock().await;
                let Some(vm) = guard.as_mut() else {
                    return; // stopped through the API
                };
                if let banger_vmm::VmmStatus::Exited(info) = vm.status() {
                    let console = vm.console_log().to_path_buf();
                    let kind = vm.handle().kind;
                    let mut dead = guard.take();
                    drop(guard);
                    slot.set_agent(None);
                    // The VMM is gone but its helpers (the vsock backend)
                    // and control sockets are not: the driver's stop of an
                    // exited VMM cleans those up.
                    if let (Some(vm), Ok(driver)) = (dead.as_mut(), d.driver_for(Some(kind))) {
                        let _ = driver.stop(vm, Duration::ZERO).await;
                    }
                    let tail = banger_vmm::process::log_tail(&console, 10);
                    let reason =
                        format!("the VMM exited unexpectedly ({info}); console tail:\n{tail}");
                    tracing::warn!(vm = %name, "{reason}");
                    d.vm_exited(&name, &reason).await;
                    slot.ready.send_replace(ReadyState::Failed(reason));
                    return;
                }
                let console = vm.console_log().to_path_buf();
                drop(guard);
                // A guest flooding its console costs a bounded amount of disk.
                let trimmed = tokio::task::spawn_blocking(move || {
                    use banger_vmm::console::{CONSOLE_CAP, CONSOLE_KEEP, cap};
                    cap(&console, CONSOLE_CAP, CONSOLE_KEEP)
                })
                .await;
                if let Ok(Err(e)) = trimmed {
                    tracing::debug!(vm = %name, "cannot trim the console log: {e}");
                }
            }
        });
    }

    /// The rest of a VMM's death: network, name, process identity, state.
    async fn vm_exited(&self, name: &str, reason: &str) {
        let Ok(rec) = self.store.get_vm(name) else {
            return;
        };
        if let Err(e) = self.teardown_network(&rec).await {
            tracing::warn!(vm = %name, "{}", e.message);
        }
        self.dns_names.remove(name);
        let _ = self.store.set_vm_process(name, None, None);
        self.vm_dir(name).remove_handle();
        if let Err(e) = self.apply(&rec, Op::Exited, Some(reason)) {
            // A stop that began before the exit was noticed finishes it.
            tracing::info!(vm = %name, "exit not recorded: {}", e.message);
        }
    }

    /// After a daemon restart: adopt live VMMs, record dead ones; returns
    /// when every VM is done (see [`Daemon::begin_readopt`]).
    pub async fn readopt(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut tasks = self.begin_readopt().await?;
        let mut first_error = None;
        while let Some(done) = tasks.join_next().await {
            let result = done.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Starts re-adopting every VM that was running, all at once, each
    /// with bounded waits (a wedged guest's agent costs ≤ 5 s, and only its
    /// own VM). Returns as soon as every such VM's lifecycle lock is taken:
    /// the daemon can serve (and tell systemd READY) at once, and a request
    /// for a VM still being re-adopted waits for that VM only.
    pub async fn begin_readopt(
        self: &Arc<Self>,
    ) -> anyhow::Result<tokio::task::JoinSet<anyhow::Result<()>>> {
        let mut tasks = tokio::task::JoinSet::new();
        for rec in self.store.list_vms()? {
            if next(rec.state, Op::Adopted) == Move::Refused {
                continue; // nothing was running
            }
            let (claimed, is_claimed) = tokio::sync::oneshot::channel();
            let d = Arc::clone(self);
            tasks.spawn(async move {
                let slot = d.slots.get(&rec.name);
                let _op = slot.op.lock().await;
                let _ = claimed.send(());
                let name = rec.name.clone();
                d.readopt_one(rec, &slot)
                    .await
                    .map_err(|e| e.context(format!("re-adopting VM {name}")))
            });
            let _ = is_claimed.await;
        }
        Ok(tasks)
    }

    /// One VM of [`Daemon::begin_readopt`], its lifecycle lock held.
    async fn readopt_one(
        self: &Arc<Self>,
        rec: banger_store::VmRecord,
        slot: &Arc<Slot>,
    ) -> anyhow::Result<()> {
        let dir = self.vm_dir(&rec.name);
        let outcome = match dir.read_handle() {
            Some(h) => banger_vmm::adopt(h).await,
            None => Adoption::Gone {
                reason: "no VMM handle was recorded".into(),
            },
        };
        match outcome {
            Adoption::Alive(vm) => {
                tracing::info!(vm = %rec.name, pid = vm.pid(), "re-adopted running VM");
                let kind = vm.handle().kind;
                *slot.vmm.lock().await = Some(*vm);
                // The agent announced itself to the previous daemon; ask it directly.
                let answered = match super::agent::link(kind, &dir) {
                    Ok(link) => {
                        let client = link.client().with_connect_timeout(Duration::from_secs(2));
                        slot.set_agent(Some(link));
                        let ping = client.ping();
                        matches!(
                            tokio::time::timeout(Duration::from_secs(3), ping).await,
                            Ok(Ok(_))
                        )
                    }
                    Err(e) => {
                        tracing::warn!(vm = %rec.name, "{}", e.message);
                        false
                    }
                };
                slot.ready.send_replace(if answered {
                    ReadyState::Ready
                } else {
                    ReadyState::Failed(
                        "the guest agent did not answer after the daemon restarted".into(),
                    )
                });
                self.apply(&rec, Op::Adopted, None)?;
                if let Some(ip) = ipv4(&rec) {
                    let _ = self.dns_names.set(&rec.name, ip);
                }
                if self.network.attaches() {
                    self.forward_dns_for(&rec);
                }
                self.watch(rec.name.clone(), Arc::clone(slot));
            }
            Adoption::Gone { reason } => {
                // A VMM spawned by a daemon that died before writing the
                // handle: it must not outlive this (a start would boot a second one).
                if let Some(orphan) = banger_vmm::spawn_record::reap_spawned(dir.path()) {
                    tracing::warn!(vm = %rec.name, pid = orphan.pid, "killed a VMM spawned before the daemon died, with no handle");
                }
                let tail = banger_vmm::process::log_tail(&dir.console_log(), 10);
                let why = format!("its VMM is gone ({reason}); console tail:\n{tail}");
                tracing::warn!(vm = %rec.name, "{why}");
                let _ = self.teardown_network(&rec).await;
                self.store.set_vm_process(&rec.name, None, None)?;
                dir.remove_handle();
                self.apply(&rec, Op::Lost, Some(&why))?;
            }
        }
        Ok(())
    }
}
