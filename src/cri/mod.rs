//! The CRI v1 edge: tonic services over berthd's unix socket. Requests are
//! validated and translated into berth's own calls here, and domain errors are
//! mapped to gRPC status codes here, once (`status.rs`). Nothing below this room
//! sees a CRI type.

mod convert;
mod image;
mod runtime;
mod status;
pub mod streaming;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::images::ImageService;
use crate::sandbox::PodService;
use streaming::StreamingServer;

pub use image::CriImageService;
pub use runtime::CriRuntimeService;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket {path}: another berthd is already serving it")]
    InUse { path: String },
    #[error("socket {path}: {source}")]
    Socket { path: String, source: std::io::Error },
    #[error(transparent)]
    Streaming(#[from] streaming::StreamingError),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds the socket (mode 0660: root and the socket's group may drive the node)
/// and serves until `shutdown` resolves; the socket file is removed on the way out.
pub async fn serve(
    config: &Config,
    images: ImageService,
    pods: PodService,
    builder: crate::builder::executor::Builder,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let path = &config.socket;
    let shown = path.display().to_string();
    let sock_err = |source| ServeError::Socket { path: shown.clone(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(sock_err)?;
    }
    remove_stale_socket(path).await?;
    let streaming = StreamingServer::start(&config.streaming, pods.clone()).await?;
    let listener = UnixListener::bind(path).map_err(sock_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(sock_err)?;
    tracing::info!(socket = %shown, "serving CRI v1");

    let result = tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(CriRuntimeService::new(config.clone(), pods, streaming)))
        .add_service(ImageServiceServer::new(CriImageService::new(images)))
        .add_service(crate::builder::service::BuilderService::server(builder))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(socket = %shown, error = %e, "could not remove the socket");
    }
    Ok(result?)
}

/// A socket file left by a crashed berthd would make bind fail; one that still
/// answers belongs to a live berthd and must not be stolen.
async fn remove_stale_socket(path: &Path) -> Result<(), ServeError> {
    let shown = path.display().to_string();
    match tokio::net::UnixStream::connect(path).await {
        Ok(_) => Err(ServeError::InUse { path: shown }),
        Err(_) if path.exists() => {
            std::fs::remove_file(path).map_err(|source| ServeError::Socket { path: shown, source })
        }
        Err(_) => Ok(()),
    }
}
