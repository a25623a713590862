//! `POST /v1/images/oci-pull`: any registry image as a banger image.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use banger_proto::{OciPullEvent, OciPullRequest};

use super::{ApiJson, AppState, ndjson};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/images/oci-pull", post(oci_pull))
}

/// Streams newline-delimited JSON [`OciPullEvent`]s: per-layer progress,
/// then one `done` or `failed` line. The answer is 200 once streaming
/// starts; the last line says how the pull ended.
async fn oci_pull(State(d): State<AppState>, ApiJson(req): ApiJson<OciPullRequest>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<OciPullEvent>();
    // The pull runs to its end even if the client goes away: a finished
    // pull is registered, an unfinished one leaves nothing.
    tokio::task::spawn_blocking(move || {
        let ptx = tx.clone();
        let mut progress = |ev| {
            let _ = ptx.send(ev);
        };
        let last = match d.pull_oci_image(&req, &mut progress) {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(reference = %req.reference, "OCI pull failed: {}", e.message);
                OciPullEvent::Failed { error: e.into() }
            }
        };
        let _ = tx.send(last);
    });
    ndjson(rx)
}
