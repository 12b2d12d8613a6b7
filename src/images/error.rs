use std::sync::Arc;

use super::content::ContentError;
use super::digest::Digest;
use super::reference::ReferenceError;
use super::registry::RegistryError;
use super::snapshots::SnapshotError;
use super::unpack::UnpackError;
use crate::store::StoreError;

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
    #[error("internal error: {0}")]
    Internal(String),
    /// The outcome of a pull that several requests waited on together.
    #[error("{0}")]
    Shared(Arc<ImageError>),
}

impl ImageError {
    /// The error a caller acts on, looking through shared pulls.
    pub fn root(&self) -> &ImageError {
        match self {
            ImageError::Shared(inner) => inner.root(),
            other => other,
        }
    }
}
