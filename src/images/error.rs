use std::sync::Arc;

use super::content::ContentError;
use super::digest::Digest;
use super::reference::ReferenceError;
use super::registry::RegistryError;
use super::snapshots::SnapshotError;
use super::unpack::UnpackError;
use crate::store::StoreError;

fn caused_by_full_disk(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.downcast_ref::<std::io::Error>().is_some_and(io_full_disk) {
            return true;
        }
        next = error.source();
    }
    false
}

/// io::Error's `source` skips the error it wraps, so that one is looked at here.
fn io_full_disk(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || error.kind() == std::io::ErrorKind::StorageFull
        || error.get_ref().is_some_and(|inner| caused_by_full_disk(inner))
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),
    #[error("{0}")]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Content(#[from] ContentError),
    #[error("layer {layer}: unsafe or malformed layer refused: {source}")]
    Unpack { layer: Digest, source: UnpackError },
    #[error("layer {layer}: uncompressed digest {actual} does not match the image config's diff id {expected}")]
    DiffIdMismatch { layer: Digest, expected: Digest, actual: Digest },
    #[error("image {reference}: {reason}")]
    InvalidImage { reference: String, reason: String },
    #[error("image {image} not found")]
    NotFound { image: String },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// The filesystem under the root (or a quota) is full.
    #[error("{context}: no space left on device")]
    NoSpace { context: String },
    #[error("internal error: {0}")]
    Internal(String),
    /// The outcome of a pull that several requests waited on together.
    #[error("{0}")]
    Shared(Arc<ImageError>),
}

impl ImageError {
    /// This error as `NoSpace` when a full disk (ENOSPC, EDQUOT) caused it, naming
    /// what was being written; otherwise unchanged.
    pub fn or_no_space(self) -> ImageError {
        if !self.is_full_disk() || matches!(self, ImageError::NoSpace { .. }) {
            return self;
        }
        let context = match &self {
            ImageError::Unpack { layer, .. } => format!("layer {layer}: writing the unpacked layer"),
            ImageError::Content(ContentError::Io { path, .. }) => format!("writing {}", path.display()),
            ImageError::Io { context, .. } => context.clone(),
            other => other.to_string(),
        };
        ImageError::NoSpace { context }
    }

    /// Whether a full disk is among the causes of this error.
    pub fn is_full_disk(&self) -> bool {
        match self {
            ImageError::NoSpace { .. } => true,
            ImageError::Shared(inner) => inner.is_full_disk(),
            // Its io::Error is not exposed as a source.
            ImageError::Unpack { source: UnpackError::Malformed(error), .. } => io_full_disk(error),
            other => caused_by_full_disk(other),
        }
    }

    /// The error a caller acts on, looking through shared pulls.
    pub fn root(&self) -> &ImageError {
        match self {
            ImageError::Shared(inner) => inner.root(),
            other => other,
        }
    }
}
