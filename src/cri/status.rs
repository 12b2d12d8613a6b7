//! The one mapping from berth's domain errors to gRPC status codes.

use tonic::{Code, Status};

use crate::images::ImageError;
use crate::images::content::ContentError;
use crate::images::registry::RegistryError;
use crate::oci::SpecError;
use crate::sandbox::SandboxError;
use crate::shim::ShimError;

impl From<ImageError> for Status {
    fn from(error: ImageError) -> Status {
        Status::new(image_code(&error), error.to_string())
    }
}

fn image_code(error: &ImageError) -> Code {
    match error.root() {
            ImageError::InvalidReference(_) => Code::InvalidArgument,
            ImageError::NotFound { .. } => Code::NotFound,
            ImageError::Registry(e) => match e.cause() {
                RegistryError::NotFound { .. } => Code::NotFound,
                RegistryError::Unauthorized { .. } => Code::Unauthenticated,
                // Content that is not what its descriptor promised.
                RegistryError::DigestMismatch { .. }
                | RegistryError::LongerThanDeclared { .. }
                | RegistryError::ShorterThanDeclared { .. } => Code::DataLoss,
                RegistryError::NoMatchingPlatform { .. }
                | RegistryError::NestedIndexTooDeep { .. }
                | RegistryError::UnsupportedMediaType { .. }
                | RegistryError::InvalidManifest { .. } => Code::FailedPrecondition,
                _ => Code::Unavailable,
            },
            ImageError::Content(ContentError::DigestMismatch { .. } | ContentError::SizeMismatch { .. })
            | ImageError::DiffIdMismatch { .. } => Code::DataLoss,
            ImageError::Unpack { .. } | ImageError::InvalidImage { .. } => Code::FailedPrecondition,
            ImageError::NoSpace { .. } => Code::ResourceExhausted,
            ImageError::Content(_)
            | ImageError::Store(_)
            | ImageError::Snapshot(_)
            | ImageError::Io { .. }
            | ImageError::Internal(_)
            | ImageError::Shared(_) => Code::Internal,
    }
}

impl From<SandboxError> for Status {
    fn from(error: SandboxError) -> Status {
        let code = match &error {
            SandboxError::Image(e) => image_code(e),
            SandboxError::InvalidArgument { .. } | SandboxError::Spec(SpecError::Invalid { .. }) => Code::InvalidArgument,
            SandboxError::Spec(SpecError::Precondition { .. }) => Code::FailedPrecondition,
            SandboxError::Spec(SpecError::Host { .. }) => Code::Internal,
            SandboxError::NotFound { .. } => Code::NotFound,
            SandboxError::AlreadyExists(_) => Code::AlreadyExists,
            SandboxError::FailedPrecondition(_) => Code::FailedPrecondition,
            SandboxError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            SandboxError::Shim(e) => shim_code(e),
            SandboxError::Cni(_) | SandboxError::Netns(_) | SandboxError::Store(_) | SandboxError::Io { .. } => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}

/// The shim's own answers keep their meaning (its ttrpc codes are gRPC's); only
/// a shim that cannot be reached is Unavailable, which clients retry.
fn shim_code(error: &ShimError) -> Code {
    match error {
        ShimError::Gone(_) => Code::Unavailable,
        ShimError::NotFound(_) => Code::NotFound,
        ShimError::AlreadyExists(_) => Code::AlreadyExists,
        ShimError::InvalidArgument(_) => Code::InvalidArgument,
        ShimError::FailedPrecondition(_) => Code::FailedPrecondition,
        ShimError::Timeout { .. } => Code::DeadlineExceeded,
        ShimError::Spawn { .. } | ShimError::Io { .. } | ShimError::Shim { .. } => Code::Internal,
    }
}

/// A required message field the client left out.
pub(crate) fn missing(field: &str) -> Status {
    Status::invalid_argument(format!("{field} is required"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shims_codes_survive_the_cri_edge() {
        let code = |error: ShimError| Status::from(SandboxError::Shim(error)).code();
        assert_eq!(code(ShimError::NotFound("no exec".into())), Code::NotFound);
        assert_eq!(code(ShimError::AlreadyExists("exec-1".into())), Code::AlreadyExists);
        assert_eq!(code(ShimError::InvalidArgument("signal".into())), Code::InvalidArgument);
        assert_eq!(code(ShimError::FailedPrecondition("running".into())), Code::FailedPrecondition);
        assert_eq!(code(ShimError::Gone("connection reset".into())), Code::Unavailable);
        let timeout = ShimError::Timeout { method: "Kill", timeout: std::time::Duration::from_secs(1) };
        assert_eq!(code(timeout), Code::DeadlineExceeded);
        assert_eq!(code(ShimError::Shim { method: "Update", message: "runc failed".into() }), Code::Internal);
    }
}
