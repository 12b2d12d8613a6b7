//! The one mapping from berth's domain errors to gRPC status codes.

use tonic::{Code, Status};

use crate::images::ImageError;
use crate::images::content::ContentError;
use crate::images::registry::RegistryError;

impl From<ImageError> for Status {
    fn from(error: ImageError) -> Status {
        let code = match error.root() {
            ImageError::InvalidReference(_) => Code::InvalidArgument,
            ImageError::NotFound { .. } => Code::NotFound,
            ImageError::Registry(e) => match e.cause() {
                RegistryError::NotFound { .. } => Code::NotFound,
                RegistryError::Unauthorized { .. } => Code::Unauthenticated,
                RegistryError::DigestMismatch { .. } => Code::DataLoss,
                RegistryError::NoMatchingPlatform { .. }
                | RegistryError::UnsupportedMediaType { .. }
                | RegistryError::InvalidManifest { .. } => Code::FailedPrecondition,
                _ => Code::Unavailable,
            },
            ImageError::Content(ContentError::DigestMismatch { .. } | ContentError::SizeMismatch { .. })
            | ImageError::DiffIdMismatch { .. } => Code::DataLoss,
            ImageError::Unpack { .. } | ImageError::InvalidImage { .. } => Code::FailedPrecondition,
            ImageError::Content(_)
            | ImageError::Store(_)
            | ImageError::Snapshot(_)
            | ImageError::Io { .. }
            | ImageError::Internal(_)
            | ImageError::Shared(_) => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}

/// A required message field the client left out.
pub(crate) fn missing(field: &str) -> Status {
    Status::invalid_argument(format!("{field} is required"))
}
