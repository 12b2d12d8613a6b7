use crate::images::ImageError;
use crate::oci::SpecError;
use crate::shim::ShimError;
use crate::store::StoreError;

use super::cni::CniError;
use super::netns::NetnsError;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("container spec: {0}")]
    Spec(#[from] SpecError),
    #[error("shim: {0}")]
    Shim(#[from] ShimError),
    #[error("pod network: {0}")]
    Cni(#[from] CniError),
    #[error("network namespace: {0}")]
    Netns(#[from] NetnsError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{0}")]
    DeadlineExceeded(String),
}

impl SandboxError {
    pub(super) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
        let context = context.into();
        move |source| SandboxError::Io { context, source }
    }

    pub(super) fn invalid(field: &str, reason: impl Into<String>) -> SandboxError {
        SandboxError::InvalidArgument { field: field.to_string(), reason: reason.into() }
    }
}
