//! HTTP routes of the public API. Handlers are thin: they parse, call the
//! core (`banger-daemon`), and map its typed errors to typed JSON answers.

mod images;
mod oci;
mod vms;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use banger_proto::{API_VERSION, ApiError, ErrorKind, Names, VersionInfo};
use banger_store::StoreError;

use crate::{Daemon, DaemonError};

pub type AppState = Arc<Daemon>;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiErr(pub ApiError);

impl ApiErr {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        ApiErr(ApiError::new(kind, msg))
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, msg)
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        // `{:#}` keeps an anyhow context chain ("what: because: because").
        Self::new(ErrorKind::Internal, format!("{e:#}"))
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(kind = ?self.0.kind, "{}", self.0.message);
        }
        (status, Json(self.0)).into_response()
    }
}

/// The core's kind → the wire's kind; the status follows from the kind in
/// [`IntoResponse`] above, the one place that maps errors to HTTP.
impl From<DaemonError> for ApiErr {
    fn from(e: DaemonError) -> Self {
        ApiErr(e.into())
    }
}

impl From<StoreError> for ApiErr {
    fn from(e: StoreError) -> Self {
        DaemonError::from(e).into()
    }
}

impl From<banger_core::names::NameError> for ApiErr {
    fn from(e: banger_core::names::NameError) -> Self {
        DaemonError::from(e).into()
    }
}

pub type ApiResult<T> = Result<Json<T>, ApiErr>;

/// A newline-delimited JSON answer: one line per event from `rx`, until its
/// senders are gone. The status is 200 once streaming starts; the events
/// themselves say how the work ended.
pub fn ndjson<T: serde::Serialize + Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> Response {
    use tokio_stream::StreamExt;
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

/// `Json<T>` whose rejection is a typed [`ApiError`] instead of axum's text.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiErr;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(ApiErr::bad_request(format!(
                "malformed request body: {}",
                rej.body_text()
            ))),
        }
    }
}

/// Defines a wrapper around an axum parts extractor whose rejection is a
/// typed [`ApiError`] ("malformed path: …") instead of axum's plain text.
macro_rules! typed_parts_extractor {
    ($(#[$doc:meta])* $name:ident, $inner:ident, $rejection:ident, $what:literal) => {
        $(#[$doc])*
        pub struct $name<T>(pub T);

        impl<S, T> FromRequestParts<S> for $name<T>
        where
            axum::extract::$inner<T>: FromRequestParts<S, Rejection = $rejection>,
            S: Send + Sync,
        {
            type Rejection = ApiErr;

            async fn from_request_parts(
                parts: &mut axum::http::request::Parts,
                state: &S,
            ) -> Result<Self, Self::Rejection> {
                match axum::extract::$inner::<T>::from_request_parts(parts, state).await {
                    Ok(axum::extract::$inner(v)) => Ok($name(v)),
                    Err(rej) => Err(ApiErr::bad_request(format!(
                        concat!("malformed ", $what, ": {}"),
                        rej.body_text()
                    ))),
                }
            }
        }
    };
}

typed_parts_extractor!(
    /// `axum::extract::Path` whose rejection (a name that is not valid
    /// UTF-8 or does not fit) is a typed [`ApiError`], like every other error.
    Path,
    Path,
    PathRejection,
    "path"
);
typed_parts_extractor!(
    /// `axum::extract::Query` whose rejection (`?timeout_secs=soon`) is a
    /// typed [`ApiError`].
    Query,
    Query,
    QueryRejection,
    "query"
);

pub fn router(daemon: AppState) -> Router {
    Router::new()
        .route("/v1/version", get(version))
        .route("/v1/names", get(names))
        .route("/v1/config", get(config))
        .route("/v1/config/reload", axum::routing::post(reload_config))
        .merge(vms::routes())
        .merge(images::routes())
        .merge(oci::routes())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(daemon)
}

async fn version() -> Json<VersionInfo> {
    Json(VersionInfo {
        api_version: API_VERSION,
        daemon_version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
    })
}

/// The configuration this daemon runs with (not the file's text now).
async fn config(State(d): State<AppState>) -> Json<banger_proto::DaemonConfig> {
    Json(d.config_report())
}

/// What SIGHUP does, for a client that cannot signal the daemon.
async fn reload_config(State(d): State<AppState>) -> Json<banger_proto::ConfigReload> {
    Json(d.reload_config())
}

async fn names(State(d): State<AppState>) -> ApiResult<Names> {
    Ok(Json(Names {
        vms: d.store.list_vms()?.into_iter().map(|v| v.name).collect(),
        images: d.store.list_images()?.into_iter().map(|v| v.name).collect(),
        kernels: d
            .store
            .list_kernels()?
            .into_iter()
            .map(|v| v.name)
            .collect(),
    }))
}

async fn unknown_route(req: Request) -> ApiErr {
    ApiErr::new(
        ErrorKind::UnknownRoute,
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiErr {
    ApiErr::new(
        ErrorKind::BadRequest,
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}
