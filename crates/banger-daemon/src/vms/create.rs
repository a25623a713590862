//! Creating and deleting VMs: the row and its address lease, the VM's own
//! disks, its ssh host key (pinned in known_hosts), and undoing all of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_proto::{Provenance, Sourced, VmSpec, VmState};
use banger_store::VmRecord;

use super::state::{Move, Op, next};
use super::{VmExtra, blocking};
use crate::{Daemon, DaemonError};

impl Daemon {
    /// The sizing a create request gets: request, else config/heuristics.
    pub fn resolve_spec(&self, req: &banger_proto::CreateVmRequest) -> VmSpec {
        let mut spec = self.config().vm_defaults(self.host_facts());
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

    /// The spec a request gets, refused when outside the shared limits.
    fn checked_spec(&self, req: &banger_proto::CreateVmRequest) -> Result<VmSpec, DaemonError> {
        let spec = self.resolve_spec(req);
        banger_core::limits::check_spec(
            spec.vcpu.value,
            spec.memory_mib.value,
            spec.disk_bytes.value,
        )
        .map_err(|e| DaemonError::bad_request(e.to_string()))?;
        Ok(spec)
    }

    /// A create checked whole without doing it (`vm run --dry-run`).
    pub fn plan_vm(
        &self,
        req: &banger_proto::CreateVmRequest,
    ) -> Result<banger_proto::VmPlan, DaemonError> {
        if let Some(name) = &req.name {
            banger_core::names::validate_vm_name(name)?;
            if self.store.get_vm(name).is_ok() {
                return Err(DaemonError::new(
                    banger_proto::ErrorKind::Conflict,
                    format!(
                        "a VM named {name:?} already exists; choose another --name or delete it (banger vm delete {name})"
                    ),
                ));
            }
        }
        let image = req
            .image
            .clone()
            .unwrap_or_else(|| self.config().image_name().value);
        Ok(banger_proto::VmPlan {
            name: req.name.clone(),
            image_present: self.store.get_image(&image).is_ok(),
            image,
            spec: self.checked_spec(req)?,
        })
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
            .unwrap_or_else(|| self.config().image_name().value);
        let image = self.store.get_image(&image_name).map_err(|_| {
            DaemonError::not_found(format!(
                "no image named {image_name:?}; build it (`banger image build {image_name}`), register one (`banger image register`) or pull an OCI image (`banger image pull REF --name {image_name}`)"
            ))
        })?;
        let spec = self.checked_spec(&req)?;
        if let Some(k) = &req.ssh_public_key {
            crate::guest::check_ssh_public_key(k)
                .map_err(|e| DaemonError::bad_request(e.to_string()))?;
        }
        let subnet = self.config().vm_subnet().value;
        let pick = move |used: &[String]| {
            let used = used.iter().filter_map(|s| s.parse().ok()).collect();
            banger_net::allocate_ip(&subnet, &used)
                .ok()
                .map(|ip| ip.to_string())
        };
        let egress = match (&req.egress, req.no_egress) {
            (_, true) => banger_proto::EgressPolicy::None,
            (Some(e), false) => e.clone(),
            (None, false) => self.config().egress().value,
        };
        // A shape with a warm snapshot gets its disks from it at the first start.
        let warm = !req.cold && self.warm_available(&image.name, &spec);
        let extra = VmExtra {
            spec: Some(spec.clone()),
            warm_pending: warm,
            authorized_key: req.ssh_public_key.clone(),
            egress_allow: match &egress {
                banger_proto::EgressPolicy::Allow { names } => Some(names.clone()),
                _ => None,
            },
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
                no_egress: egress == banger_proto::EgressPolicy::None,
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
            move || d.provision(&rec, &image_dir, key.as_deref(), !warm)
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(vm = %name, "create failed, cleaning up: {}", e.message);
            self.abandon(&rec);
            return Err(e);
        }
        self.apply(&rec, Op::Provisioned, None)?;
        tracing::info!(vm = %name, ip = ?rec.ip, "created");
        Ok((self.store.get_vm(&name)?, spec))
    }

    /// Undoes a create that did not finish (it failed, or the daemon died
    /// during it): files, pinned host key, row and lease.
    pub(crate) fn abandon(&self, rec: &VmRecord) {
        let name = &rec.name;
        if let Err(e) = self.vm_dir(name).remove() {
            tracing::warn!(vm = %name, "cannot remove the VM's files: {e}");
        }
        if let Err(e) = crate::guest::unpin_host_key(&self.paths.known_hosts(), name) {
            tracing::warn!(vm = %name, "cannot unpin its host key: {e:#}");
        }
        if let Err(e) = self.apply(rec, Op::Abandon, None) {
            tracing::warn!(vm = %name, "cannot remove its row: {}", e.message);
        }
    }

    /// Disk work of a create (blocking): the host key (pinned), and with `disks` the
    /// root and work disks (a warm create makes them at its first start instead).
    fn provision(
        &self,
        rec: &VmRecord,
        image_dir: &Path,
        ssh_key: Option<&str>,
        disks: bool,
    ) -> Result<(), DaemonError> {
        let dir = self.vm_dir(&rec.name);
        dir.create().map_err(DaemonError::internal)?;
        let host_key = crate::guest::generate_host_key(&dir.host_key(), &rec.name)
            .map_err(DaemonError::internal)?;
        crate::guest::pin_host_key(
            &self.paths.known_hosts(),
            &rec.name,
            rec.ip.as_deref(),
            &host_key.public,
        )
        .map_err(DaemonError::internal)?;
        if disks {
            self.make_disks(rec, image_dir, ssh_key, &host_key)?;
        } else if let Some(k) = ssh_key {
            // Authorized through the agent after the restore; later boots' checks use it.
            crate::readiness::remember_key(&dir, k).map_err(DaemonError::internal)?;
        }
        Ok(())
    }

    /// The disks of a VM that gets none from a warm snapshot (blocking).
    pub(crate) fn provision_disks(
        &self,
        rec: &VmRecord,
        ssh_key: Option<&str>,
    ) -> Result<(), DaemonError> {
        let image = self.store.get_image(&rec.image)?;
        let key_path = self.vm_dir(&rec.name).host_key();
        let host_key = crate::guest::HostKey {
            private: std::fs::read(&key_path).map_err(DaemonError::internal)?,
            public: std::fs::read_to_string(key_path.with_extension("pub"))
                .map_err(DaemonError::internal)?
                .trim()
                .to_string(),
        };
        self.make_disks(rec, Path::new(&image.dir), ssh_key, &host_key)
    }

    fn make_disks(
        &self,
        rec: &VmRecord,
        image_dir: &Path,
        ssh_key: Option<&str>,
        host_key: &crate::guest::HostKey,
    ) -> Result<(), DaemonError> {
        let dir = self.vm_dir(&rec.name);
        let rootfs = image_dir.join(banger_image::store::ROOTFS);
        let root = dir.root_disk();
        let method = banger_vmm::clone_disk(&rootfs, &root).map_err(DaemonError::internal)?;
        tracing::debug!(vm = %rec.name, ?method, "root disk cloned");
        crate::guest::personalise_root(&root, &rec.name, host_key)
            .map_err(DaemonError::internal)?;
        let home = banger_core::host::home_dir();
        let plan = match home {
            Some(h) if !self.config().file_sync.is_empty() => {
                crate::file_sync::plan(&self.config().file_sync, &h)
                    .map_err(|e| DaemonError::bad_request(e.to_string()))?
            }
            _ => crate::file_sync::SyncPlan::default(),
        };
        for w in &plan.warnings {
            tracing::warn!(vm = %rec.name, "{w}");
        }
        crate::guest::make_work_disk(
            &dir.work_disk(),
            rec.disk_bytes,
            &root,
            ssh_key,
            &plan,
            &self.paths.tmp_dir(),
        )
        .map_err(DaemonError::internal)?;
        if let Some(k) = ssh_key {
            crate::readiness::remember_key(&dir, k).map_err(DaemonError::internal)?;
        }
        Ok(())
    }

    /// Deletes a VM and everything it owns; a running VM is stopped first
    /// (without a clean guest shutdown: its disks are about to go).
    pub async fn delete_vm(self: &Arc<Self>, name: &str) -> Result<VmRecord, DaemonError> {
        let slot = self.known_slot(name)?;
        let _op = slot.op.lock().await;
        let mut rec = self.store.get_vm(name)?;
        if rec.state == VmState::Running {
            rec = self.stop_locked(name, &slot, true).await?;
        }
        // Refuse before touching files; the row goes last, compare-and-set.
        if next(rec.state, Op::Delete) != Move::Remove {
            return Err(self.apply(&rec, Op::Delete, None).err().unwrap_or_else(|| {
                DaemonError::conflict(format!("VM {name} cannot be deleted now"))
            }));
        }
        let dir = self.vm_dir(name);
        let d = Arc::clone(self);
        let n = name.to_string();
        blocking(move || {
            dir.remove().map_err(|e| {
                DaemonError::internal(format!("cannot remove {}: {e}", dir.display()))
            })?;
            crate::guest::unpin_host_key(&d.paths.known_hosts(), &n)
                .map_err(DaemonError::internal)?;
            Ok(())
        })
        .await?;
        self.apply(&rec, Op::Delete, None)?;
        self.slots.remove(name);
        // A retired warm snapshot this VM's disks backed onto may go now.
        self.warm_gc();
        tracing::info!(vm = %name, "deleted");
        Ok(rec)
    }
}
