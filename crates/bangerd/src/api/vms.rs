//! VMs.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_proto::{CreateVmRequest, CreateVmResponse, SshInfo, VmInfo};
use banger_store::VmRecord;
use serde::Deserialize;

use super::{ApiErr, ApiJson, ApiResult, AppState, Path, Query};
use crate::Daemon;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/vms", get(list).post(create))
        .route("/v1/vms/{name}", get(show).delete(delete))
        .route("/v1/vms/{name}/start", post(start))
        .route("/v1/vms/{name}/stop", post(stop))
        .route("/v1/vms/{name}/restart", post(restart))
        .route("/v1/vms/{name}/ready", post(ready))
        .route("/v1/vms/{name}/logs", get(logs))
        .route("/v1/ssh", get(ssh_info))
}

pub fn vm_info(d: &Daemon, r: VmRecord) -> VmInfo {
    let running = r.state == banger_proto::VmState::Running;
    let vsock = d.vm_dir(&r.name).vsock();
    let extra = banger_daemon::vms::extra_of(&r);
    let (restored_from, restore_disks) = (extra.warm_from, extra.restore_disks);
    let private_memory_bytes = running
        .then_some(r.pid)
        .flatten()
        .and_then(banger_daemon::vms::private_memory_bytes);
    let egress = banger_daemon::vms::egress_of(&r);
    VmInfo {
        restored_from,
        restore_disks,
        private_memory_bytes,
        agent_ready: running && d.agent_ready(&r.name),
        vsock_path: (running && vsock.exists()).then(|| vsock.display().to_string()),
        name: r.name,
        state: r.state,
        image: r.image,
        vcpu: r.vcpu,
        memory_mib: r.memory_mib,
        disk_bytes: r.disk_bytes,
        ip: r.ip,
        mac: r.mac,
        vmm: r.vmm,
        pid: r.pid,
        reason: r.reason,
        created_at: r.created_at,
        no_egress: r.no_egress,
        egress,
    }
}

async fn list(State(d): State<AppState>) -> ApiResult<Vec<VmInfo>> {
    Ok(Json(
        d.store
            .list_vms()?
            .into_iter()
            .map(|r| vm_info(&d, r))
            .collect(),
    ))
}

async fn show(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult<VmInfo> {
    Ok(Json(vm_info(&d, d.store.get_vm(&name)?)))
}

#[derive(Debug, Deserialize, Default)]
struct CreateQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn create(
    State(d): State<AppState>,
    Query(q): Query<CreateQuery>,
    ApiJson(req): ApiJson<CreateVmRequest>,
) -> Result<Response, ApiErr> {
    use axum::response::IntoResponse;
    if q.dry_run {
        return Ok(Json(d.plan_vm(&req)?).into_response());
    }
    Ok(create_vm(d, req).await?.into_response())
}

async fn create_vm(d: AppState, req: CreateVmRequest) -> ApiResult<CreateVmResponse> {
    if let Some(name) = &req.name {
        banger_core::names::validate_vm_name(name)?;
    }
    let start = req.start;
    let (mut rec, spec) = d.create_vm(req).await?;
    if start {
        rec = d.start_vm(&rec.name).await?;
    }
    Ok(Json(CreateVmResponse {
        vm: vm_info(&d, rec),
        spec,
    }))
}

async fn start(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult<VmInfo> {
    let rec = d.start_vm(&name).await?;
    Ok(Json(vm_info(&d, rec)))
}

async fn stop(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult<VmInfo> {
    let rec = d.stop_vm(&name).await?;
    Ok(Json(vm_info(&d, rec)))
}

async fn restart(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult<VmInfo> {
    let rec = d.restart_vm(&name).await?;
    Ok(Json(vm_info(&d, rec)))
}

async fn delete(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult<VmInfo> {
    let rec = d.delete_vm(&name).await?;
    Ok(Json(vm_info(&d, rec)))
}

#[derive(Debug, Deserialize)]
struct ReadyQuery {
    #[serde(default = "default_ready_secs")]
    timeout_secs: u64,
}

fn default_ready_secs() -> u64 {
    banger_daemon::vms::READY_TIMEOUT.as_secs()
}

/// Blocks until the guest agent announced itself (or fails saying why).
async fn ready(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ReadyQuery>,
) -> ApiResult<VmInfo> {
    d.wait_ready(&name, Duration::from_secs(q.timeout_secs.min(3600)))
        .await?;
    Ok(Json(vm_info(&d, d.store.get_vm(&name)?)))
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

/// The serial console log; with `follow`, new output streams until the VM
/// stops or the client goes away.
async fn logs(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiErr> {
    d.store.get_vm(&name)?;
    let path = d.vm_dir(&name).console_log();
    if !q.follow {
        // The tail only: the log may be megabytes of a flooding guest.
        let p = path.clone();
        let read = tokio::task::spawn_blocking(move || {
            banger_vmm::console::tail(&p, banger_vmm::console::TAIL_MAX)
        })
        .await
        .map_err(|e| ApiErr::internal(e.to_string()))?;
        let bytes = match read {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(ApiErr::internal(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        return Ok(Response::new(Body::from(bytes)));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut pos = 0u64;
        loop {
            if let Ok(mut f) = tokio::fs::File::open(&path).await {
                let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                if len < pos {
                    // Truncated: a fresh boot, or the daemon trimmed a
                    // flood to its tail (banger_vmm::console).
                    pos = 0;
                }
                // Start (and catch up) near the end, never a whole flood.
                pos = pos.max(len.saturating_sub(banger_vmm::console::TAIL_MAX));
                if len > pos && f.seek(std::io::SeekFrom::Start(pos)).await.is_ok() {
                    let mut buf = Vec::new();
                    if let Ok(n) = f.read_to_end(&mut buf).await {
                        pos += n as u64;
                        if tx.send(Ok(buf)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let still_there = matches!(d.store.get_vm(&name), Ok(r) if r.state != banger_proto::VmState::Stopped && r.state != banger_proto::VmState::Error);
            if !still_there || tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Response::new(Body::from_stream(stream)))
}

async fn ssh_info(State(d): State<AppState>) -> ApiResult<SshInfo> {
    let kh = d.paths.known_hosts();
    if !kh.exists() {
        banger_daemon::ensure_private_dir(&d.paths.ssh_dir()).map_err(ApiErr::internal)?;
        std::fs::write(&kh, b"").map_err(|e| ApiErr::internal(e.to_string()))?;
    }
    Ok(Json(SshInfo {
        known_hosts: kh.display().to_string(),
    }))
}
