//! Images and kernels.

use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_daemon::images::{image_info, kernel_info};
use banger_proto::{
    BuildImageRequest, BundleImageRequest, BundleInfo, CreateVmRequest, EnsureEvent,
    EnsureImageRequest, ImageInfo, KernelInfo, PullEvent, PullImageRequest, RegisterImageRequest,
    RegisterKernelRequest, WarmSnapshotInfo,
};

use super::{ApiErr, ApiJson, ApiResult, AppState, Path, ndjson};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/images", get(list_images))
        .route("/v1/images/build", post(build_image))
        .route("/v1/images/register", post(register_image))
        .route("/v1/images/pull", post(pull_image))
        .route("/v1/images/ensure", post(ensure_image))
        .route("/v1/images/bundle", post(bundle_image))
        .route("/v1/kernels/register", post(register_kernel))
        .route("/v1/images/{name}", get(show_image).delete(delete_image))
        .route("/v1/images/{name}/warm", post(warm_image))
        .route("/v1/kernels", get(list_kernels))
        .route("/v1/kernels/{name}", get(show_kernel).delete(delete_kernel))
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

/// Streams newline-delimited JSON [`PullEvent`]s: progress, then one
/// `image` or `error` line. The answer is 200 once streaming starts; the
/// last line says how the pull ended.
async fn pull_image(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<PullImageRequest>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<PullEvent>();
    // The pull runs to its end even if the client goes away: a finished
    // pull is registered, an unfinished one leaves nothing.
    tokio::task::spawn_blocking(move || {
        let ptx = tx.clone();
        let mut progress = |p| {
            let _ = ptx.send(PullEvent::Progress(p));
        };
        let last = match d.pull_catalog_image(&req, &mut progress) {
            Ok((img, _)) => PullEvent::Done {
                image: image_info(img),
            },
            Err(f) => {
                tracing::warn!(image = %req.name, "pull failed: {}", f.err.message);
                PullEvent::Failed {
                    error: f.err.into(),
                    unavailable: f.unavailable,
                }
            }
        };
        let _ = tx.send(last);
    });
    ndjson(rx)
}

/// Streams newline-delimited JSON [`EnsureEvent`]s: the steps taken and
/// the pull's progress, then one `done` or `failed` line.
async fn ensure_image(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<EnsureImageRequest>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<EnsureEvent>();
    // Like a pull, it runs to its end even if the client goes away.
    tokio::spawn(async move {
        let last = match d.ensure_image(&req.name, tx.clone()).await {
            Ok((img, source)) => EnsureEvent::Done {
                image: image_info(img),
                source,
            },
            Err(e) => {
                tracing::warn!(image = %req.name, "ensure failed: {}", e.message);
                EnsureEvent::Failed { error: e.into() }
            }
        };
        let _ = tx.send(last);
    });
    ndjson(rx)
}

async fn bundle_image(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<BundleImageRequest>,
) -> ApiResult<BundleInfo> {
    let info = tokio::task::spawn_blocking(move || d.bundle_image(&req))
        .await
        .map_err(ApiErr::internal)??;
    Ok(Json(info))
}

async fn register_kernel(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<RegisterKernelRequest>,
) -> ApiResult<KernelInfo> {
    Ok(Json(kernel_info(d.register_kernel(req).await?)))
}

async fn register_image(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<RegisterImageRequest>,
) -> ApiResult<ImageInfo> {
    Ok(Json(image_info(d.register_image(req).await?)))
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
    Ok(Json(image_info(d.delete_image(&name)?)))
}

/// Makes the image's warm snapshot for a shape now (it boots a VM: minutes under TCG).
/// The work runs to its end even if the client goes away, so its VM is always deleted.
async fn warm_image(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<CreateVmRequest>,
) -> ApiResult<WarmSnapshotInfo> {
    let work = tokio::spawn(async move { d.warm_image(&name, &req).await });
    let info = work
        .await
        .map_err(|e| ApiErr::internal(format!("the warm snapshot task failed: {e}")))??;
    Ok(Json(info))
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
    Ok(Json(kernel_info(d.delete_kernel(&name)?)))
}
