//! Starting VMs: the VMM spec (kernel, boot arguments, disks, NIC, the
//! agent's channel), the boot itself with rollback when it fails, and the
//! guest's readiness (the agent answering, then systemd finishing the boot).

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use banger_proto::VmState;
use banger_store::VmRecord;
use banger_vmm::{Driver, KernelFiles, Vmm, VmmSpec};

use super::state::{Applied, Op};
use super::warm_start::Started;
use super::{READY_TIMEOUT, ReadyState, Slot, agent, extra_of, ipv4};
use crate::{Daemon, DaemonError};

impl Daemon {
    pub(crate) fn selection_kind(&self) -> Option<banger_vmm::VmmKind> {
        self.selection.as_ref().ok().map(|s| s.kind)
    }

    pub(crate) fn driver_for(
        &self,
        kind: Option<banger_vmm::VmmKind>,
    ) -> Result<Driver, DaemonError> {
        let sel = self.selection.as_ref().map_err(|e| {
            DaemonError::conflict(format!(
                "no usable VMM on this host: {e}; see `banger doctor`"
            ))
        })?;
        Driver::for_kind(kind.unwrap_or(sel.kind), sel)
            .map_err(|e| DaemonError::conflict(e.to_string()))
    }

    /// Boot arguments: root on vda, the address from our lease, quiet boots.
    fn boot_args(&self, rec: &VmRecord, kernel_args: &str) -> String {
        let mut args = String::new();
        let base = if kernel_args.trim().is_empty() {
            "console=ttyS0 reboot=k panic=1"
        } else {
            kernel_args.trim()
        };
        args.push_str(base);
        for extra in ["root=/dev/vda", "rw", "quiet", "loglevel=3"] {
            let key = extra.split('=').next().unwrap_or(extra);
            let present = base
                .split_whitespace()
                .any(|w| w == extra || w.split('=').next() == Some(key));
            if !present {
                args.push(' ');
                args.push_str(extra);
            }
        }
        if let Some(ip) = ipv4(rec)
            && self.network.attaches()
        {
            let subnet = self.config().vm_subnet().value;
            let mask = Ipv4Addr::from(subnet.mask());
            let dns = self.guest_dns.map(|a| a.to_string()).unwrap_or_default();
            args.push_str(&format!(
                " ip={ip}::{}:{mask}:{}:eth0:off:{dns}",
                subnet.gateway(),
                rec.name
            ));
        }
        args
    }

    /// Starts a stopped (or failed) VM. When the boot fails, whatever it
    /// started is stopped again and the VM is left in `error` with why.
    pub async fn start_vm(self: &Arc<Self>, name: &str) -> Result<VmRecord, DaemonError> {
        let slot = self.known_slot(name)?;
        let _op = slot.op.lock().await;
        let rec = self.store.get_vm(name)?;
        if self.apply(&rec, Op::Start, None)? == Applied::AlreadyDone {
            return Ok(rec);
        }
        let rec = self.store.get_vm(name)?;
        // No VMM may run for a VM that is being started: one a killed daemon
        // spawned and never recorded a handle for goes first (one VMM per disk).
        if let Some(orphan) = banger_vmm::spawn_record::reap_spawned(self.vm_dir(name).path()) {
            tracing::warn!(vm = %name, pid = orphan.pid, "killed an unrecorded VMM before starting");
        }
        match self.boot(&rec, &slot).await {
            Ok(()) => Ok(self.store.get_vm(name)?),
            Err(e) => {
                self.undo_boot(&rec, &slot).await;
                if let Err(w) = self.apply_now(name, Op::BootFailed, Some(&e.message)) {
                    tracing::warn!(vm = %name, "cannot record the failed start: {}", w.message);
                }
                Err(e)
            }
        }
    }

    /// Rollback of a failed boot: no VMM, no handle, no network, no name.
    async fn undo_boot(&self, rec: &VmRecord, slot: &Arc<Slot>) {
        let name = &rec.name;
        if let Some(mut vm) = slot.vmm.lock().await.take() {
            let kind = vm.handle().kind;
            if let Ok(driver) = self.driver_for(Some(kind))
                && let Err(e) = driver.stop(&mut vm, Duration::ZERO).await
            {
                tracing::warn!(vm = %name, "cannot stop the VMM of a failed start: {e}");
            }
        }
        slot.set_agent(None);
        self.vm_dir(name).remove_handle();
        let _ = self.store.set_vm_process(name, None, None);
        if let Err(e) = self.teardown_network(rec).await {
            tracing::warn!(vm = %name, "{}", e.message);
        }
        self.dns_names.remove(name);
        slot.ready
            .send_replace(ReadyState::Failed("the VM failed to start".into()));
    }

    async fn boot(self: &Arc<Self>, rec: &VmRecord, slot: &Arc<Slot>) -> Result<(), DaemonError> {
        let name = rec.name.clone();
        let dir = self.vm_dir(&name);
        let image = self.store.get_image(&rec.image)?;
        let kernel = self.store.get_kernel(&rec.kernel)?;
        let krec = banger_image::kernel::KernelRecord::load(Path::new(&kernel.dir))
            .map_err(DaemonError::internal)?;
        let image_manifest = banger_image::store::ImageRecord::load(Path::new(&image.dir)).ok();
        let kernel_args = image_manifest
            .as_ref()
            .map(|m| m.manifest.boot_args.clone())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| krec.boot_args.clone());
        let mut extra = extra_of(rec);
        let driver = self.driver_for(None)?;
        let net = self.setup_network(rec).await?;
        extra.tap = net.as_ref().map(|n| n.tap.clone());
        extra.vmm_kind = Some(driver.kind());
        self.store.set_vm_extra(
            &name,
            &serde_json::to_string(&extra).unwrap_or_else(|_| "{}".into()),
        )?;
        let (vsock, agent_port) = agent::agent_devices(driver.kind(), &dir);
        let mut spec = VmmSpec {
            name: name.clone(),
            vm_dir: dir.path().to_path_buf(),
            vcpus: u8::try_from(rec.vcpu).unwrap_or(32),
            memory_mib: u32::try_from(rec.memory_mib).unwrap_or(u32::MAX),
            kernel: KernelFiles {
                vmlinux: krec.vmlinux.clone(),
                vmlinuz: Some(krec.vmlinuz.clone()),
                initrd: krec.initrd.clone(),
            },
            boot_args: self.boot_args(rec, &kernel_args),
            root_disk: dir.root_disk(),
            work_disk: Some(dir.work_disk()),
            net,
            agent_port,
            vsock,
            console_log: dir.console_log(),
            memory_file: None,
        };
        // QEMU guest RAM in a (tmpfs) file when the VM can become a warm snapshot.
        if driver.kind() == banger_vmm::VmmKind::Qemu
            && super::warm_start::warm_capable(&spec, driver.kind())
        {
            spec.memory_file = Some(self.memory_file(&name)?);
        }
        let readiness = agent::prepare(driver.kind(), &dir)?;
        slot.ready.send_replace(ReadyState::Waiting);
        let (running, restored) = match self.start_or_restore(rec, &driver, &mut spec).await? {
            Started::Booted(vm) => (vm, None),
            Started::Restored(vm, snap, link) => (vm, Some((snap, link))),
        };
        let handle = running.handle().clone();
        // In the slot at once: a failure from here on stops it (undo_boot).
        *slot.vmm.lock().await = Some(running);
        dir.write_handle(&handle).map_err(DaemonError::internal)?;
        self.store.set_vm_process(
            &name,
            Some(handle.process.pid),
            Some(handle.process.start_time),
        )?;
        self.apply(rec, Op::Booted, None)?;
        if let Some(ip) = ipv4(rec) {
            let _ = self.dns_names.set(&name, ip);
        }
        tracing::info!(vm = %name, pid = handle.process.pid, vmm = %driver.kind(), "started");
        if let Some((_, link)) = restored {
            // start_or_restore gave it its identity already, through this link.
            slot.set_agent(Some(*link));
            slot.ready.send_replace(ReadyState::Ready);
            self.watch(name, Arc::clone(slot));
            return Ok(());
        }
        let link = agent::link(driver.kind(), &dir)?;
        let ready = link.ready(readiness, READY_TIMEOUT, &name);
        slot.set_agent(Some(link));
        let warm = (
            Arc::clone(self),
            self.store.get_vm(&name)?,
            driver.clone(),
            spec.clone(),
        );
        {
            let slot = Arc::clone(slot);
            let vm = name.clone();
            let probe = crate::readiness::Probe::new(
                &name,
                &dir,
                ipv4(rec).filter(|_| self.network.attaches()),
                &self.paths.known_hosts(),
            );
            let started = std::time::Instant::now();
            tokio::spawn(async move {
                let state = match ready.await {
                    Ok(h) => {
                        tracing::info!(vm = %vm, agent = %h.agent_version, "guest agent up");
                        // The agent starts early in boot; "ready" is what
                        // the user's next step needs, checked.
                        match probe.run().await {
                            Ok(()) => {
                                // Before readiness: nothing of the user's is in it yet.
                                let (d, rec, driver, spec) = &warm;
                                d.make_warm_if_missing(rec, &slot, driver, spec).await;
                                let secs = started.elapsed().as_secs_f64();
                                tracing::info!(vm = %vm, secs, "guest ready");
                                ReadyState::Ready
                            }
                            Err(why) => {
                                tracing::warn!(vm = %vm, "{why}");
                                ReadyState::Failed(why)
                            }
                        }
                    }
                    Err(e) => ReadyState::Failed(e.message),
                };
                slot.ready.send_replace(state);
            });
        }
        self.watch(name, Arc::clone(slot));
        Ok(())
    }

    /// Waits until the guest agent is ready, or fails with why.
    pub async fn wait_ready(&self, name: &str, timeout: Duration) -> Result<(), DaemonError> {
        let rec = self.store.get_vm(name)?;
        if rec.state != VmState::Running {
            return Err(DaemonError::conflict(format!(
                "VM {name} is {}, not running",
                rec.state
            )));
        }
        let mut rx = self.slots.get(name).ready.subscribe();
        let r = tokio::time::timeout(timeout, rx.wait_for(|s| *s != ReadyState::Waiting)).await;
        match r {
            Err(_) => Err(DaemonError::conflict(format!(
                "VM {name}: the guest did not become ready within {}s; look at `banger vm logs {name}`",
                timeout.as_secs()
            ))),
            Ok(Err(_)) => Err(DaemonError::internal("readiness channel closed")),
            Ok(Ok(s)) => match &*s {
                ReadyState::Ready => Ok(()),
                ReadyState::Failed(why) => Err(DaemonError::conflict(why.clone())),
                ReadyState::Waiting => Err(DaemonError::internal("readiness still pending")),
            },
        }
    }

    pub fn agent_ready(&self, name: &str) -> bool {
        self.slots
            .peek(name)
            .is_some_and(|s| *s.ready.borrow() == ReadyState::Ready)
    }
}
