//! Images and kernels.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_proto::{BuildImageRequest, ImageInfo, KernelInfo};
use banger_store::{ImageRecord, KernelRecord};

use super::{ApiErr, ApiJson, ApiResult, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/images", get(list_images))
        .route("/v1/images/build", post(build_image))
        .route("/v1/images/{name}", get(show_image).delete(delete_image))
        .route("/v1/kernels", get(list_kernels))
        .route("/v1/kernels/{name}", get(show_kernel).delete(delete_kernel))
}

pub fn image_info(r: ImageRecord) -> ImageInfo {
    ImageInfo {
        name: r.name,
        digest: r.digest,
        kernel: r.kernel,
        size_bytes: r.size_bytes,
        origin: r.origin,
        created_at: r.created_at,
    }
}

pub fn kernel_info(r: KernelRecord) -> KernelInfo {
    KernelInfo {
        name: r.name,
        version: r.version,
        has_vmlinux: r.has_vmlinux,
        pvh: r.pvh,
        created_at: r.created_at,
    }
}

async fn build_image(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<BuildImageRequest>,
) -> ApiResult<ImageInfo> {
    let profile = match req.profile.as_str() {
        "full" => banger_image::Profile::Full,
        "minimal" => banger_image::Profile::Minimal,
        other => {
            return Err(ApiErr::bad_request(format!(
                "unknown profile {other:?}; use \"full\" or \"minimal\""
            )));
        }
    };
    let (img, _) = d.build_image(req.name, profile, req.mirror).await?;
    Ok(Json(image_info(img)))
}

async fn list_images(State(d): State<AppState>) -> ApiResult<Vec<ImageInfo>> {
    Ok(Json(
        d.store.list_images()?.into_iter().map(image_info).collect(),
    ))
}

async fn show_image(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult<ImageInfo> {
    Ok(Json(image_info(d.store.get_image(&name)?)))
}

async fn delete_image(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult<ImageInfo> {
    let rec = d.store.delete_image(&name)?;
    remove_store_dir(&d.paths.images_dir(), &rec.dir);
    Ok(Json(image_info(rec)))
}

async fn list_kernels(State(d): State<AppState>) -> ApiResult<Vec<KernelInfo>> {
    Ok(Json(
        d.store
            .list_kernels()?
            .into_iter()
            .map(kernel_info)
            .collect(),
    ))
}

async fn show_kernel(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult<KernelInfo> {
    Ok(Json(kernel_info(d.store.get_kernel(&name)?)))
}

async fn delete_kernel(
    State(d): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<KernelInfo> {
    let rec = d.store.delete_kernel(&name)?;
    remove_store_dir(&d.paths.kernels_dir(), &rec.dir);
    Ok(Json(kernel_info(rec)))
}

/// Removes a store directory only if it lies inside its store root: a
/// corrupted row must never make the daemon delete something else.
fn remove_store_dir(root: &std::path::Path, dir: &str) {
    let p = std::path::Path::new(dir);
    if !banger_core::paths::is_within(p, root) || p == root {
        tracing::error!(dir, root = %root.display(), "refusing to remove a directory outside its store");
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(p)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir, "cannot remove store directory: {e}");
    }
}
