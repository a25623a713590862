//! Firecracker pause/resume, snapshot and restore over its REST API.
//!
//! Save: `PATCH /vm Paused`, `PUT /snapshot/create` (Full: vmstate + memory file), then the
//! disks are copied while the guest is still paused. Restore: a fresh firecracker in the
//! new VM's directory (the snapshot names disks relative to it, so the new VM's own
//! copies are opened), logger/metrics, `PUT /snapshot/load` with a File memory backend
//! (mapped privately: nothing copied up front), `network_overrides` and `vsock_override`
//! for the new VM's tap and vsock socket, then `PATCH /vm Resumed`. The request builders
//! are pure so the contract test validates every body against Firecracker's spec.

use std::path::Path;
use std::time::Instant;

use serde_json::json;

use crate::error::VmmError;
use crate::firecracker::{ApiRequest, FirecrackerDriver, log_requests, send};
use crate::process::RunningVmm;
use crate::snapshot::{
    AfterSnapshot, MEM_FILE, MemoryMode, Partial, RestoreReport, RestoredDisks, STATE_FILE, Saved,
    Snapshot, source_disks, vmm_fingerprint,
};
use crate::spec::{VmmKind, VmmSpec};

pub fn pause_request() -> ApiRequest {
    ApiRequest::patch("/vm", json!({ "state": "Paused" }))
}

pub fn resume_request() -> ApiRequest {
    ApiRequest::patch("/vm", json!({ "state": "Resumed" }))
}

/// `PUT /snapshot/create` writing a Full snapshot into `dir`.
pub fn snapshot_create_request(dir: &Path) -> ApiRequest {
    ApiRequest::put(
        "/snapshot/create",
        json!({
            "snapshot_type": "Full",
            "snapshot_path": dir.join(STATE_FILE).to_string_lossy(),
            "mem_file_path": dir.join(MEM_FILE).to_string_lossy(),
        }),
    )
}

/// Every request of a restore of the snapshot in `snapshot_dir` into `spec`, in order.
pub fn restore_requests(snapshot_dir: &Path, spec: &VmmSpec) -> Vec<ApiRequest> {
    let mut reqs = log_requests(spec);
    let mut load = json!({
        "snapshot_path": snapshot_dir.join(STATE_FILE).to_string_lossy(),
        "mem_backend": {
            "backend_type": "File",
            "backend_path": snapshot_dir.join(MEM_FILE).to_string_lossy(),
        },
        "resume_vm": false,
    });
    if let Some(net) = &spec.net {
        load["network_overrides"] = json!([{ "iface_id": "eth0", "host_dev_name": net.tap }]);
    }
    if let Some(v) = &spec.vsock {
        load["vsock_override"] = json!({ "uds_path": v.uds_path.to_string_lossy() });
    }
    reqs.push(ApiRequest::put("/snapshot/load", load));
    reqs.push(resume_request());
    reqs
}

impl FirecrackerDriver {
    async fn request(&self, vm: &RunningVmm, req: &ApiRequest) -> Result<(), VmmError> {
        send(&vm.handle().control_socket, req, self.api_timeout).await
    }

    pub(crate) async fn fc_pause(&self, vm: &RunningVmm) -> Result<(), VmmError> {
        self.request(vm, &pause_request()).await
    }

    pub(crate) async fn fc_resume(&self, vm: &RunningVmm) -> Result<(), VmmError> {
        self.request(vm, &resume_request()).await
    }

    pub(crate) async fn fc_snapshot(
        &self,
        vm: &mut RunningVmm,
        source: &VmmSpec,
        dest: &Path,
        then: AfterSnapshot,
    ) -> Result<Snapshot, VmmError> {
        let partial = Partial::create(dest)?;
        source_disks(source)?;
        let t0 = Instant::now();
        self.fc_pause(vm).await?;
        let saved = async {
            self.request(vm, &snapshot_create_request(&partial.path))
                .await?;
            let mem = partial.path.join(MEM_FILE);
            let mem_bytes = std::fs::metadata(&mem)
                .map_err(VmmError::io(format!("stat {}", mem.display())))?
                .len();
            partial.finish(
                source,
                Saved {
                    vmm: VmmKind::Firecracker,
                    bin: &self.bin,
                    memory: MemoryMode::File,
                    mem_bytes,
                    save_ms: t0.elapsed().as_millis() as u64,
                    qemu_img: None,
                },
            )
        }
        .await;
        let result = saved.and_then(|m| partial.commit(m));
        if then == AfterSnapshot::Resume || result.is_err() {
            self.fc_resume(vm).await?;
        }
        result
    }

    pub(crate) async fn fc_restore(
        &self,
        snap: &Snapshot,
        spec: &VmmSpec,
    ) -> Result<(RunningVmm, RestoreReport), VmmError> {
        snap.check_restorable(spec, VmmKind::Firecracker, &vmm_fingerprint(&self.bin)?)?;
        let t0 = Instant::now();
        let disks = RestoredDisks::create(snap, spec, None, true)?;
        let disk_ms = t0.elapsed().as_millis() as u64;
        let t1 = Instant::now();
        let mut vm = self.spawn_api(spec).await?;
        if let Err(e) = self
            .send_all(&mut vm, &restore_requests(&snap.dir, spec))
            .await
        {
            return Err(VmmError::Snapshot {
                dir: snap.dir.clone(),
                reason: format!("firecracker could not restore it: {e}"),
            });
        }
        let report = RestoreReport {
            disks: disks.keep(),
            disk_ms,
            restore_ms: t1.elapsed().as_millis() as u64,
        };
        tracing::info!(vm = %spec.name, pid = vm.pid(), restore_ms = report.restore_ms, "firecracker restored");
        Ok((vm, report))
    }
}
