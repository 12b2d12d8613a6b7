use std::path::PathBuf;

use crate::images::ImageError;
use crate::images::content::ContentError;
use crate::images::unpack::UnpackError;

/// What can go wrong while making, committing, saving or loading images.
#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    #[error("{0}")]
    Image(#[from] ImageError),
    #[error("{0}")]
    Content(#[from] ContentError),
    #[error("{}: {op}: {source}", path.display())]
    Io { path: PathBuf, op: &'static str, source: std::io::Error },
    #[error("the layer written from {}: {source}", tree.display())]
    Snapshot { tree: PathBuf, source: UnpackError },
    #[error("container {id}: no writable layer (it was never created here, or it has been removed)")]
    NoWritableLayer { id: String },
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("archive: {reason}")]
    InvalidArchive { reason: String },
    #[error("image {0} not found")]
    NotFound(String),
}

/// The walks of `crate::inroot` name the path in their errors.
impl From<std::io::Error> for BuilderError {
    fn from(source: std::io::Error) -> BuilderError {
        BuilderError::Io { path: PathBuf::new(), op: "walking the tree", source }
    }
}

impl BuilderError {
    pub(super) fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(std::io::Error) -> BuilderError {
        let path = path.into();
        move |source| BuilderError::Io { path, op, source }
    }

    pub(super) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> BuilderError {
        BuilderError::InvalidArgument { field: field.into(), reason: reason.into() }
    }
}
