use crate::images::ImageError;
use crate::shim::ShimError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The request or the Dockerfile is wrong; the message names the field or line.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// Fine as asked, but this node or this build's state cannot do it.
    #[error("{0}")]
    Precondition(String),
    /// A RUN step's command failed.
    #[error("The command '{command}' returned a non-zero code: {code}")]
    RunFailed { command: String, code: i32 },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Builder(#[from] super::BuilderError),
    #[error("build container: {0}")]
    Shim(#[from] ShimError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{0}")]
    Internal(String),
}

/// The walks of `crate::inroot` name the path in their errors.
impl From<std::io::Error> for BuildError {
    fn from(source: std::io::Error) -> BuildError {
        BuildError::Io { context: "reading a file tree".into(), source }
    }
}

impl BuildError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
        let context = context.into();
        move |source| BuildError::Io { context, source }
    }
}
