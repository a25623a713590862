//! Images and kernels.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_proto::{
    BuildImageRequest, BundleImageRequest, BundleInfo, ErrorKind, ImageInfo, KernelInfo, PullEvent,
    PullImageRequest, RegisterImageRequest, RegisterKernelRequest,
};
use banger_store::{ImageRecord, KernelRecord};

use super::{ApiErr, ApiJson, ApiResult, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/images", get(list_images))
        .route("/v1/images/build", post(build_image))
        .route("/v1/images/register", post(register_image))
        .route("/v1/images/pull", post(pull_image))
        .route("/v1/images/bundle", post(bundle_image))
        .route("/v1/kernels/register", post(register_kernel))
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

/// Streams newline-delimited JSON [`PullEvent`]s: progress, then one
/// `image` or `error` line. The answer is 200 once streaming starts; the
/// last line says how the pull ended.
async fn pull_image(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<PullImageRequest>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use tokio_stream::StreamExt;
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
    let lines = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(|ev| {
        let mut line = serde_json::to_vec(&ev).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(line))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
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

fn absolute(p: &str, what: &str) -> Result<std::path::PathBuf, ApiErr> {
    let path = std::path::PathBuf::from(p);
    if !path.is_absolute() {
        return Err(ApiErr::bad_request(format!(
            "{what} {p:?} must be an absolute path"
        )));
    }
    if !path.is_file() {
        return Err(ApiErr::bad_request(format!(
            "{what} {p:?} is not a readable file"
        )));
    }
    Ok(path)
}

async fn register_kernel(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<RegisterKernelRequest>,
) -> ApiResult<KernelInfo> {
    banger_core::names::validate_kernel_name(&req.name)?;
    if d.store.get_kernel(&req.name).is_ok() {
        return Err(ApiErr::new(
            ErrorKind::Conflict,
            format!(
                "a kernel named {:?} already exists; delete it first",
                req.name
            ),
        ));
    }
    let vmlinuz = absolute(&req.vmlinuz, "vmlinuz")?;
    let initrd = req
        .initrd
        .as_deref()
        .map(|p| absolute(p, "initrd"))
        .transpose()?;
    let dd = d.clone();
    let name = req.name.clone();
    let k = tokio::task::spawn_blocking(move || {
        banger_image::store::install_kernel(
            &dd.paths.kernels_dir(),
            &name,
            "unknown",
            &vmlinuz,
            initrd.as_deref(),
        )
    })
    .await
    .map_err(ApiErr::internal)?
    .map_err(|e| ApiErr::bad_request(format!("cannot register kernel {}: {e}", req.name)))?;
    let rec = KernelRecord {
        name: k.name.clone(),
        version: k.version.clone(),
        dir: d.paths.kernels_dir().join(&k.name).display().to_string(),
        has_vmlinux: k.has_vmlinux,
        pvh: k.pvh,
        created_at: 0,
    };
    d.store.insert_kernel(&rec)?;
    Ok(Json(kernel_info(d.store.get_kernel(&rec.name)?)))
}

async fn register_image(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<RegisterImageRequest>,
) -> ApiResult<ImageInfo> {
    banger_core::names::validate_image_name(&req.name)?;
    if d.store.get_image(&req.name).is_ok() {
        return Err(ApiErr::new(
            ErrorKind::Conflict,
            format!(
                "an image named {:?} already exists; delete it first",
                req.name
            ),
        ));
    }
    let kernel = d.store.get_kernel(&req.kernel)?;
    let rootfs = absolute(&req.rootfs, "rootfs")?;
    let manifest = banger_image::store::ImageManifest {
        name: req.name.clone(),
        version: "registered".into(),
        arch: "x86_64".into(),
        sha256: String::new(),
        size: banger_image::FileSize {
            apparent: 0,
            allocated: 0,
        },
        kernel: kernel.name.clone(),
        boot_args: String::new(),
        source: format!("register:{}", rootfs.display()),
        created: 0,
    };
    let dd = d.clone();
    let img = tokio::task::spawn_blocking(move || {
        banger_image::store::register_image(&dd.paths.images_dir(), &rootfs, manifest)
    })
    .await
    .map_err(ApiErr::internal)?
    .map_err(|e| ApiErr::bad_request(format!("cannot register image {}: {e}", req.name)))?;
    let kernel_rec = banger_image::kernel::KernelRecord::load(std::path::Path::new(&kernel.dir))
        .map_err(ApiErr::internal)?;
    let (img, _) = d.register_files(&req.name, "register", &img, &kernel_rec)?;
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
    // Its warm snapshots go too, except those restored VMs' disks still back onto.
    d.warm_gc();
    // Content-addressed: another name may point at the same directory.
    let shared = d.store.list_images()?.iter().any(|i| i.dir == rec.dir);
    if !shared {
        remove_store_dir(&d.paths.images_dir(), &rec.dir);
    }
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
