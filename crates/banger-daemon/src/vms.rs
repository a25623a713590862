//! The VM lifecycle: create, start, stop, restart, delete, and re-adoption of
//! live VMMs after a daemon restart.
//!
//! States persist in SQLite; transitions are compare-and-set, so two requests
//! racing on one VM cannot both act on it. Each VM also has an in-memory slot
//! (its live VMM process, the agent's readiness) that only this daemon
//! process knows about; after a restart it is rebuilt from `vmm.json`.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use banger_proto::{ErrorKind, Provenance, Sourced, VmSpec, VmState};
use banger_store::VmRecord;
use banger_vmm::{
    Adoption, Driver, KernelFiles, NetSpec, RunningVmm, Vmm, VmmHandle, VmmSpec, VsockSpec,
};
use tokio::sync::Mutex;

use crate::Daemon;
use crate::DaemonError;

/// How long a graceful stop may take before the VMM is forced.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long the guest agent may take to announce itself after the VMM starts.
/// TCG boots are ~10-20 s on these machines; leave generous room for load.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);
const GUEST_CID: u32 = 3;

pub const ROOT_DISK: &str = "root.ext4";
pub const WORK_DISK: &str = "work.ext4";
pub const HANDLE_FILE: &str = "vmm.json";
pub const CONSOLE_LOG: &str = "console.log";
pub const VSOCK: &str = "v.sock";
pub const HOST_KEY: &str = "ssh_host_ed25519_key";

/// What this daemon process knows about a VM beyond the database.
#[derive(Default)]
pub struct Slot {
    /// Serialises lifecycle operations on one VM.
    pub op: Mutex<()>,
    pub vmm: Mutex<Option<RunningVmm>>,
    pub ready: tokio::sync::watch::Sender<ReadyState>,
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
}

/// Extra per-VM facts kept in the `extra` JSON column.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct VmExtra {
    pub spec: Option<VmSpec>,
    pub tap: Option<String>,
    /// The VMM kind chosen when the VM was last started.
    pub vmm_kind: Option<banger_vmm::VmmKind>,
}

pub fn extra_of(rec: &VmRecord) -> VmExtra {
    serde_json::from_str(&rec.extra).unwrap_or_default()
}

fn ipv4(rec: &VmRecord) -> Option<Ipv4Addr> {
    rec.ip.as_deref().and_then(|s| s.parse().ok())
}

fn err(kind: ErrorKind, msg: impl Into<String>) -> DaemonError {
    DaemonError::new(kind, msg)
}

/// Runs blocking disk work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DaemonError> + Send + 'static,
) -> Result<T, DaemonError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DaemonError::internal(format!("worker failed: {e}")))?
}

impl Daemon {
    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.paths.vm_dir(name)
    }

    /// The sizing a create request gets: request, else config/heuristics.
    pub fn resolve_spec(&self, req: &banger_proto::CreateVmRequest) -> VmSpec {
        let mut spec = self
            .config
            .vm_defaults(banger_core::config::HostFacts::probe());
        if let Some(v) = req.vcpu {
            spec.vcpu = Sourced::new(v, Provenance::Flag);
        }
        if let Some(m) = req.memory_mib {
            spec.memory_mib = Sourced::new(m, Provenance::Flag);
        }
        if let Some(d) = req.disk_bytes {
            spec.disk_bytes = Sourced::new(d, Provenance::Flag);
        }
        spec
    }

    /// Creates a VM: registers it (state `creating`), leases an address,
    /// clones and personalises its disks, pins its host key, then marks it
    /// `stopped`. Any failure removes everything it made.
    pub async fn create_vm(
        self: &Arc<Self>,
        req: banger_proto::CreateVmRequest,
    ) -> Result<(VmRecord, VmSpec), DaemonError> {
        let image_name = req
            .image
            .clone()
            .unwrap_or_else(|| self.config.image_name().value);
        let image = self.store.get_image(&image_name).map_err(|_| {
            err(
                ErrorKind::NotFound,
                format!("no image named {image_name:?}; run `banger image pull {image_name}` or `banger image build {image_name}`"),
            )
        })?;
        let spec = self.resolve_spec(&req);
        if spec.vcpu.value == 0 || spec.vcpu.value > 32 {
            return Err(DaemonError::bad_request("vcpu must be between 1 and 32"));
        }
        if spec.memory_mib.value < 128 {
            return Err(DaemonError::bad_request("memory must be at least 128 MiB"));
        }
        if spec.disk_bytes.value < (256 << 20) {
            return Err(DaemonError::bad_request("disk must be at least 256M"));
        }
        let subnet = self.config.vm_subnet().value;
        let pick = move |used: &[String]| {
            let used = used.iter().filter_map(|s| s.parse().ok()).collect();
            banger_net::allocate_ip(&subnet, &used)
                .ok()
                .map(|ip| ip.to_string())
        };
        let extra = VmExtra {
            spec: Some(spec.clone()),
            ..Default::default()
        };
        // A random name can collide; a chosen one is the user's to change.
        let mut attempts = 0;
        let rec = loop {
            let name = match &req.name {
                Some(n) => n.clone(),
                None => banger_core::names::random_vm_name(),
            };
            banger_core::names::validate_vm_name(&name)?;
            let rec = VmRecord {
                name: name.clone(),
                state: VmState::Creating,
                image: image.name.clone(),
                kernel: image.kernel.clone(),
                vcpu: spec.vcpu.value,
                memory_mib: spec.memory_mib.value,
                disk_bytes: spec.disk_bytes.value,
                mac: banger_vmm::MacAddr::derive(&format!("banger-vm:{name}")).to_string(),
                ip: None,
                vmm: self
                    .selection_kind()
                    .map(|k| k.to_string())
                    .unwrap_or_else(|| "none".into()),
                pid: None,
                pid_start: None,
                reason: None,
                no_egress: req.no_egress || self.config.egress_blocked().value,
                created_at: 0,
                extra: serde_json::to_string(&extra).unwrap_or_else(|_| "{}".into()),
            };
            match self.store.insert_vm(&rec, Some(&pick), &subnet.to_string()) {
                Ok(r) => break r,
                Err(banger_store::StoreError::VmExists(_))
                    if req.name.is_none() && attempts < 5 =>
                {
                    attempts += 1;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let name = rec.name.clone();
        let d = Arc::clone(self);
        let image_dir = PathBuf::from(&image.dir);
        let key = req.ssh_public_key.clone();
        let r = blocking({
            let rec = rec.clone();
            move || d.provision(&rec, &image_dir, key.as_deref())
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(vm = %name, "create failed, cleaning up: {}", e.message);
            let _ = std::fs::remove_dir_all(self.vm_dir(&name));
            let _ = self.store.delete_vm(&name);
            return Err(e);
        }
        self.store
            .transition_vm(&name, &[VmState::Creating], VmState::Stopped)?;
        tracing::info!(vm = %name, ip = ?rec.ip, "created");
        Ok((self.store.get_vm(&name)?, spec))
    }

    /// Disk work of a create (blocking).
    fn provision(
        &self,
        rec: &VmRecord,
        image_dir: &Path,
        ssh_key: Option<&str>,
    ) -> Result<(), DaemonError> {
        let dir = self.vm_dir(&rec.name);
        crate::ensure_private_dir(&dir).map_err(DaemonError::internal)?;
        let rootfs = image_dir.join(banger_image::store::ROOTFS);
        let root = dir.join(ROOT_DISK);
        let method = banger_vmm::clone_disk(&rootfs, &root).map_err(DaemonError::internal)?;
        tracing::debug!(vm = %rec.name, ?method, "root disk cloned");
        let host_key =
            crate::guest::generate_host_key(&dir, &rec.name).map_err(DaemonError::internal)?;
        crate::guest::personalise_root(&root, &rec.name, &host_key)
            .map_err(DaemonError::internal)?;
        let home = banger_core::host::home_dir();
        let plan = match home {
            Some(h) if !self.config.file_sync.is_empty() => {
                crate::file_sync::plan(&self.config.file_sync, &h)
                    .map_err(|e| DaemonError::bad_request(e.to_string()))?
            }
            _ => crate::file_sync::SyncPlan::default(),
        };
        for w in &plan.warnings {
            tracing::warn!(vm = %rec.name, "{w}");
        }
        crate::guest::make_work_disk(
            &dir.join(WORK_DISK),
            rec.disk_bytes,
            &root,
            ssh_key,
            &plan,
            &self.paths.tmp_dir(),
        )
        .map_err(DaemonError::internal)?;
        crate::guest::pin_host_key(
            &self.paths.known_hosts(),
            &rec.name,
            rec.ip.as_deref(),
            &host_key.public,
        )
        .map_err(DaemonError::internal)?;
        Ok(())
    }

    fn selection_kind(&self) -> Option<banger_vmm::VmmKind> {
        self.selection.as_ref().ok().map(|s| s.kind)
    }

    fn driver_for(&self, kind: Option<banger_vmm::VmmKind>) -> Result<Driver, DaemonError> {
        let sel = self.selection.as_ref().map_err(|e| {
            err(
                ErrorKind::Conflict,
                format!("no usable VMM on this host: {e}; see `banger doctor`"),
            )
        })?;
        Driver::for_kind(kind.unwrap_or(sel.kind), sel)
            .map_err(|e| err(ErrorKind::Conflict, e.to_string()))
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
            && self.network.is_some()
        {
            let subnet = self.config.vm_subnet().value;
            let mask = Ipv4Addr::from(subnet.mask());
            let dns = crate::guest::host_nameserver()
                .map(|a| a.to_string())
                .unwrap_or_default();
            args.push_str(&format!(
                " ip={ip}::{}:{mask}:{}:eth0:off:{dns}",
                subnet.gateway(),
                rec.name
            ));
        }
        args
    }

    /// Starts a stopped VM.
    pub async fn start_vm(self: &Arc<Self>, name: &str) -> Result<VmRecord, DaemonError> {
        let slot = self.slots.get(name);
        let _op = slot.op.lock().await;
        let rec = self.store.get_vm(name)?;
        if rec.state == VmState::Running {
            return Ok(rec);
        }
        if !self.store.transition_vm(
            name,
            &[VmState::Stopped, VmState::Error],
            VmState::Starting,
        )? {
            return Err(err(
                ErrorKind::Conflict,
                format!(
                    "VM {name} is {}; it can be started only when stopped",
                    rec.state
                ),
            ));
        }
        match self.boot(&rec, &slot).await {
            Ok(()) => Ok(self.store.get_vm(name)?),
            Err(e) => {
                let _ = self.teardown_network(&rec).await;
                self.store
                    .set_vm_state(name, VmState::Error, Some(&e.message))?;
                Err(e)
            }
        }
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
        let vsock_path = dir.join(VSOCK);
        let spec = VmmSpec {
            name: name.clone(),
            vm_dir: dir.clone(),
            vcpus: u8::try_from(rec.vcpu).unwrap_or(32),
            memory_mib: u32::try_from(rec.memory_mib).unwrap_or(u32::MAX),
            kernel: KernelFiles {
                vmlinux: krec.vmlinux.clone(),
                vmlinuz: Some(krec.vmlinuz.clone()),
                initrd: krec.initrd.clone(),
            },
            boot_args: self.boot_args(rec, &kernel_args),
            root_disk: dir.join(ROOT_DISK),
            work_disk: Some(dir.join(WORK_DISK)),
            net,
            vsock: self.agent_enabled(&driver).then(|| VsockSpec {
                guest_cid: GUEST_CID,
                uds_path: vsock_path.clone(),
            }),
            console_log: dir.join(CONSOLE_LOG),
        };
        let listener = match &spec.vsock {
            Some(v) => Some(
                banger_agent::client::ReadinessListener::bind(
                    &v.uds_path,
                    banger_proto::agent::READY_PORT,
                )
                .map_err(DaemonError::internal)?,
            ),
            None => None,
        };
        slot.ready.send_replace(ReadyState::Waiting);
        let running = driver
            .start(&spec)
            .await
            .map_err(|e| err(ErrorKind::Internal, format!("starting VM {name}: {e}")))?;
        let handle = running.handle().clone();
        write_handle(&dir, &handle).map_err(DaemonError::internal)?;
        self.store.set_vm_process(
            &name,
            Some(handle.process.pid),
            Some(handle.process.start_time),
        )?;
        *slot.vmm.lock().await = Some(running);
        self.store
            .transition_vm(&name, &[VmState::Starting], VmState::Running)?;
        if let Some(ip) = ipv4(rec) {
            let _ = self.dns_names.set(&name, ip);
        }
        tracing::info!(vm = %name, pid = handle.process.pid, vmm = %driver.kind(), "started");
        match listener {
            Some(l) => {
                let slot = Arc::clone(slot);
                let vm = name.clone();
                let uds = vsock_path.clone();
                tokio::spawn(async move {
                    let state = match l.wait(READY_TIMEOUT, &vm).await {
                        Ok(h) => {
                            tracing::info!(vm = %vm, agent = %h.agent_version, "guest agent up");
                            // The agent starts early in boot; "ready" means the
                            // boot finished (network configured, sshd up), so
                            // ssh and commands that need the network work at once.
                            wait_boot_finished(&uds, &vm).await;
                            tracing::info!(vm = %vm, "guest ready");
                            ReadyState::Ready
                        }
                        Err(e) => ReadyState::Failed(e.to_string()),
                    };
                    slot.ready.send_replace(state);
                });
            }
            None => {
                slot.ready.send_replace(ReadyState::Failed(
                    "this VM has no guest agent channel (vsock unavailable on this host; see `banger doctor`)".into(),
                ));
            }
        }
        self.watch(name, Arc::clone(slot));
        Ok(())
    }

    /// Whether VMs get a vsock device (and so the guest agent channel).
    fn agent_enabled(&self, driver: &Driver) -> bool {
        match driver {
            Driver::Firecracker(_) => true,
            Driver::Qemu(q) => q.vhost_vsock_bin.is_some(),
        }
    }

    /// Watches a running VMM; when it exits on its own, records why.
    fn watch(self: &Arc<Self>, name: String, slot: Arc<Slot>) {
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
                    if let Ok(rec) = d.store.get_vm(&name) {
                        let _ = d.teardown_network(&rec).await;
                    }
                    d.dns_names.remove(&name);
                    let _ = d.store.set_vm_process(&name, None, None);
                    let _ = d.store.set_vm_state(&name, VmState::Stopped, Some(&reason));
                    slot.ready.send_replace(ReadyState::Failed(reason));
                    return;
                }
            }
        });
    }

    /// Stops a running VM: the agent's clean shutdown, then the VMM's own
    /// graceful stop, then force.
    pub async fn stop_vm(self: &Arc<Self>, name: &str) -> Result<VmRecord, DaemonError> {
        let slot = self.slots.get(name);
        let _op = slot.op.lock().await;
        self.stop_locked(name, &slot, false).await
    }

    /// `discard`: the VM is about to be deleted, so its disks do not matter
    /// and a clean guest shutdown would only cost time.
    async fn stop_locked(
        self: &Arc<Self>,
        name: &str,
        slot: &Arc<Slot>,
        discard: bool,
    ) -> Result<VmRecord, DaemonError> {
        let rec = self.store.get_vm(name)?;
        if matches!(
            rec.state,
            VmState::Stopped | VmState::Error | VmState::Creating
        ) && slot.vmm.lock().await.is_none()
        {
            return Ok(rec);
        }
        self.store.transition_vm(
            name,
            &[VmState::Running, VmState::Starting, VmState::Error],
            VmState::Stopping,
        )?;
        let mut guard = slot.vmm.lock().await;
        if let Some(mut vm) = guard.take() {
            let kind = vm.handle().kind;
            if !discard && *slot.ready.borrow() == ReadyState::Ready {
                let client =
                    banger_agent::client::AgentClient::hybrid(self.vm_dir(name).join(VSOCK))
                        .with_connect_timeout(Duration::from_secs(3));
                match tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await {
                    Ok(Ok(())) => {
                        if vm.wait_exit(STOP_GRACE).await.is_some() {
                            tracing::info!(vm = %name, "guest powered off through the agent");
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(vm = %name, "agent shutdown failed: {e}"),
                    Err(_) => tracing::warn!(vm = %name, "agent shutdown timed out"),
                }
            }
            let driver = self.driver_for(Some(kind))?;
            let grace = if discard { Duration::ZERO } else { STOP_GRACE };
            let outcome = driver
                .stop(&mut vm, grace)
                .await
                .map_err(|e| err(ErrorKind::Internal, format!("stopping VM {name}: {e}")))?;
            tracing::info!(vm = %name, method = ?outcome.method, "stopped");
        }
        drop(guard);
        slot.ready.send_replace(ReadyState::Waiting);
        self.teardown_network(&rec).await?;
        self.dns_names.remove(name);
        self.store.set_vm_process(name, None, None)?;
        let _ = std::fs::remove_file(self.vm_dir(name).join(HANDLE_FILE));
        self.store.set_vm_state(name, VmState::Stopped, None)?;
        Ok(self.store.get_vm(name)?)
    }

    pub async fn restart_vm(self: &Arc<Self>, name: &str) -> Result<VmRecord, DaemonError> {
        self.stop_vm(name).await?;
        self.start_vm(name).await
    }

    /// Deletes a VM and everything it owns.
    pub async fn delete_vm(self: &Arc<Self>, name: &str) -> Result<VmRecord, DaemonError> {
        let slot = self.slots.get(name);
        let _op = slot.op.lock().await;
        let rec = self.store.get_vm(name)?;
        if rec.state != VmState::Creating {
            self.stop_locked(name, &slot, true).await?;
        }
        let dir = self.vm_dir(name);
        let d = Arc::clone(self);
        let n = name.to_string();
        blocking(move || {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| {
                    DaemonError::internal(format!("cannot remove {}: {e}", dir.display()))
                })?;
            }
            crate::guest::unpin_host_key(&d.paths.known_hosts(), &n)
                .map_err(DaemonError::internal)?;
            Ok(())
        })
        .await?;
        self.store.delete_vm(name)?;
        self.slots.remove(name);
        tracing::info!(vm = %name, "deleted");
        Ok(rec)
    }

    /// Waits until the guest agent is ready, or fails with why.
    pub async fn wait_ready(&self, name: &str, timeout: Duration) -> Result<(), DaemonError> {
        let rec = self.store.get_vm(name)?;
        if rec.state != VmState::Running {
            return Err(err(
                ErrorKind::Conflict,
                format!("VM {name} is {}, not running", rec.state),
            ));
        }
        let mut rx = self.slots.get(name).ready.subscribe();
        let r = tokio::time::timeout(timeout, rx.wait_for(|s| *s != ReadyState::Waiting)).await;
        match r {
            Err(_) => Err(err(
                ErrorKind::Conflict,
                format!(
                    "VM {name}: the guest did not become ready within {}s; look at `banger vm logs {name}`",
                    timeout.as_secs()
                ),
            )),
            Ok(Err(_)) => Err(DaemonError::internal("readiness channel closed")),
            Ok(Ok(s)) => match &*s {
                ReadyState::Ready => Ok(()),
                ReadyState::Failed(why) => Err(err(ErrorKind::Conflict, why.clone())),
                ReadyState::Waiting => Err(DaemonError::internal("readiness still pending")),
            },
        }
    }

    pub fn agent_ready(&self, name: &str) -> bool {
        self.slots
            .peek(name)
            .is_some_and(|s| *s.ready.borrow() == ReadyState::Ready)
    }

    /// After a daemon restart: adopt live VMMs, record dead ones.
    pub async fn readopt(self: &Arc<Self>) -> anyhow::Result<()> {
        for rec in self.store.list_vms()? {
            if !matches!(
                rec.state,
                VmState::Running | VmState::Starting | VmState::Stopping
            ) {
                continue;
            }
            let dir = self.vm_dir(&rec.name);
            let handle = read_handle(&dir);
            let outcome = match handle {
                Some(h) => banger_vmm::adopt(h).await,
                None => Adoption::Gone {
                    reason: "no VMM handle was recorded".into(),
                },
            };
            match outcome {
                Adoption::Alive(vm) => {
                    tracing::info!(vm = %rec.name, pid = vm.pid(), "re-adopted running VM");
                    let slot = self.slots.get(&rec.name);
                    *slot.vmm.lock().await = Some(*vm);
                    // The agent announced itself to the previous daemon; ask it directly.
                    let client = banger_agent::client::AgentClient::hybrid(dir.join(VSOCK))
                        .with_connect_timeout(Duration::from_secs(2));
                    let ready = tokio::time::timeout(Duration::from_secs(3), client.ping()).await;
                    slot.ready.send_replace(if matches!(ready, Ok(Ok(_))) {
                        ReadyState::Ready
                    } else {
                        ReadyState::Failed(
                            "the guest agent did not answer after the daemon restarted".into(),
                        )
                    });
                    self.store.set_vm_state(&rec.name, VmState::Running, None)?;
                    if let Some(ip) = ipv4(&rec) {
                        let _ = self.dns_names.set(&rec.name, ip);
                    }
                    self.watch(rec.name.clone(), slot);
                }
                Adoption::Gone { reason } => {
                    let tail = banger_vmm::process::log_tail(&dir.join(CONSOLE_LOG), 10);
                    let why = format!("its VMM is gone ({reason}); console tail:\n{tail}");
                    tracing::warn!(vm = %rec.name, "{why}");
                    let _ = self.teardown_network(&rec).await;
                    self.store.set_vm_process(&rec.name, None, None)?;
                    self.store
                        .set_vm_state(&rec.name, VmState::Stopped, Some(&why))?;
                }
            }
        }
        Ok(())
    }

    /// Bridge, tap, NAT and egress for one VM through the root helper.
    async fn setup_network(&self, rec: &VmRecord) -> Result<Option<NetSpec>, DaemonError> {
        let Some(root) = &self.network else {
            return Ok(None);
        };
        use banger_proto::root::RootOp;
        let bridge = self.config.bridge_name().value;
        let subnet = self.config.vm_subnet().value.to_string();
        let tap = banger_net::tap_name(&rec.name);
        let call = |op: RootOp| async move {
            root.call(op).await.map_err(|e| {
                err(
                    ErrorKind::Conflict,
                    format!("network setup for {}: {e}", rec.name),
                )
            })
        };
        call(RootOp::EnsureBridge {
            bridge: bridge.clone(),
            subnet: subnet.clone(),
        })
        .await?;
        call(RootOp::EnsureNat {
            bridge: bridge.clone(),
            subnet,
        })
        .await?;
        call(RootOp::CreateTap {
            tap: tap.clone(),
            bridge,
            // SAFETY: geteuid has no preconditions.
            owner_uid: unsafe { libc::geteuid() },
        })
        .await?;
        call(RootOp::SetEgress {
            tap: tap.clone(),
            allowed: !rec.no_egress,
        })
        .await?;
        let mac = rec
            .mac
            .parse()
            .map_err(|e: banger_vmm::VmmError| DaemonError::internal(e.to_string()))?;
        Ok(Some(NetSpec { tap, mac }))
    }

    async fn teardown_network(&self, rec: &VmRecord) -> Result<(), DaemonError> {
        let Some(root) = &self.network else {
            return Ok(());
        };
        let tap = extra_of(rec)
            .tap
            .unwrap_or_else(|| banger_net::tap_name(&rec.name));
        root.call(banger_proto::root::RootOp::DeleteTap { tap })
            .await
            .map_err(|e| {
                err(
                    ErrorKind::Conflict,
                    format!("network teardown for {}: {e}", rec.name),
                )
            })?;
        Ok(())
    }
}

/// Waits (bounded) until systemd in the guest reports the boot finished.
/// Guests without systemd (an OCI image's own init) count as finished.
async fn wait_boot_finished(uds: &Path, vm: &str) {
    let client = banger_agent::client::AgentClient::hybrid(uds)
        .with_connect_timeout(Duration::from_secs(10));
    let req = banger_proto::agent::ExecRequest::new(["systemctl", "is-system-running", "--wait"]);
    match tokio::time::timeout(READY_TIMEOUT, client.exec_capture(&req, b"")).await {
        // No systemctl (banger-init runs OCI images): booted once the agent is up.
        Ok(Ok(out)) if out.status == banger_proto::agent::ExitStatus::Exited { code: 127 } => {
            tracing::debug!(vm, "no systemd in the guest: its boot is finished");
        }
        Ok(Ok(out)) => {
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state != "running" && !state.is_empty() {
                tracing::warn!(vm, state, "guest finished booting with failed units");
            }
        }
        Ok(Err(e)) => tracing::warn!(vm, "cannot ask the guest whether it finished booting: {e}"),
        Err(_) => tracing::warn!(vm, "the guest did not finish booting in time"),
    }
}

fn write_handle(dir: &Path, h: &VmmHandle) -> std::io::Result<()> {
    let tmp = dir.join(format!("{HANDLE_FILE}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(h).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, dir.join(HANDLE_FILE))
}

fn read_handle(dir: &Path) -> Option<VmmHandle> {
    let text = std::fs::read(dir.join(HANDLE_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}
