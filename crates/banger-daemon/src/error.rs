//! The core's one error type. Every daemon operation fails with a
//! [`DaemonError`]: a wire-level [`ErrorKind`] (what the client can do about
//! it), a message that says what was wrong and what to do, and the
//! underlying error when there is one. The HTTP layer (bangerd) turns `kind`
//! into a status in one place; nothing here knows about HTTP.

use banger_proto::{ApiError, ErrorKind};
use banger_store::StoreError;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DaemonError {
    pub kind: ErrorKind,
    pub message: String,
    #[source]
    pub source: Option<Source>,
}

pub type DaemonResult<T> = Result<T, DaemonError>;

impl DaemonError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        DaemonError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// An internal failure; `{:#}` keeps an anyhow context chain
    /// ("what: because: because") in the message.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Internal, format!("{e:#}"))
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The typed answer a client gets.
    pub fn to_api(&self) -> ApiError {
        ApiError::new(self.kind, self.message.clone())
    }
}

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        ApiError::new(e.kind, e.message)
    }
}

impl From<StoreError> for DaemonError {
    fn from(e: StoreError) -> Self {
        let kind = match &e {
            StoreError::VmNotFound(_)
            | StoreError::ImageNotFound(_)
            | StoreError::KernelNotFound(_) => ErrorKind::NotFound,
            StoreError::VmExists(_)
            | StoreError::ImageExists(_)
            | StoreError::KernelExists(_)
            | StoreError::InUse { .. }
            | StoreError::SubnetFull(_)
            | StoreError::StateChanged { .. } => ErrorKind::Conflict,
            _ => ErrorKind::Internal,
        };
        DaemonError::new(kind, e.to_string()).with_source(e)
    }
}

impl From<banger_core::names::NameError> for DaemonError {
    fn from(e: banger_core::names::NameError) -> Self {
        DaemonError::bad_request(e.to_string()).with_source(e)
    }
}

impl From<banger_vmm::VmmError> for DaemonError {
    fn from(e: banger_vmm::VmmError) -> Self {
        DaemonError::internal(&e).with_source(e)
    }
}

impl From<banger_net::RootClientError> for DaemonError {
    fn from(e: banger_net::RootClientError) -> Self {
        DaemonError::conflict(e.to_string()).with_source(e)
    }
}

impl From<banger_oci::Error> for DaemonError {
    fn from(e: banger_oci::Error) -> Self {
        let kind = match &e {
            banger_oci::Error::Hostile { .. } => ErrorKind::BadRequest,
            _ => ErrorKind::Internal,
        };
        DaemonError::new(kind, format!("OCI pull failed: {e}")).with_source(e)
    }
}

impl From<banger_image::Error> for DaemonError {
    fn from(e: banger_image::Error) -> Self {
        DaemonError::internal(&e).with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_keep_their_kind_and_source() {
        let e: DaemonError = StoreError::VmNotFound("a".into()).into();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(std::error::Error::source(&e).is_some());
        let e: DaemonError = StoreError::VmExists("a".into()).into();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert_eq!(e.to_api().kind, ErrorKind::Conflict);
    }
}
