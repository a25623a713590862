//! VMs.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use banger_proto::{CreateVmRequest, CreateVmResponse, ErrorKind, VmInfo};
use banger_store::VmRecord;

use super::{ApiErr, ApiJson, ApiResult, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/vms", get(list).post(create))
        .route("/v1/vms/{name}", get(show))
}

pub fn vm_info(r: VmRecord) -> VmInfo {
    VmInfo {
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
    }
}

async fn list(State(d): State<AppState>) -> ApiResult<Vec<VmInfo>> {
    Ok(Json(d.store.list_vms()?.into_iter().map(vm_info).collect()))
}

async fn show(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult<VmInfo> {
    Ok(Json(vm_info(d.store.get_vm(&name)?)))
}

async fn create(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<CreateVmRequest>,
) -> ApiResult<CreateVmResponse> {
    if let Some(name) = &req.name {
        banger_core::names::validate_vm_name(name)?;
    }
    let image = req
        .image
        .clone()
        .unwrap_or_else(|| d.config.image_name().value);
    d.store.get_image(&image).map_err(|_| {
        ApiErr::new(
            ErrorKind::NotFound,
            format!("no image named {image:?}; run `banger image pull {image}` or `banger image build {image}`"),
        )
    })?;
    Err(ApiErr::new(
        ErrorKind::NotImplemented,
        "VM creation is not available in this build yet",
    ))
}
