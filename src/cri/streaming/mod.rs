//! The CRI streaming server: `Exec`, `Attach` and `PortForward` answer with a URL
//! on this HTTP server, naming the request by a single-use token; the client
//! (crictl, or kubelet proxying kubectl) then connects there and upgrades the
//! connection to a stream protocol.

mod channel;
mod http;
mod over_spdy;
mod remotecommand;
pub mod spdy;
mod tokens;
mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::StreamingConfig;
use crate::sandbox::PodService;

use tokens::TokenCache;

/// An interactive command to run in a container, or an attach to its own process.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub container_id: String,
    /// `None`: attach to the container's own process.
    pub cmd: Option<Vec<String>>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// What a token stands for.
#[derive(Debug, Clone)]
enum PendingStream {
    Exec(ExecRequest),
    Attach(ExecRequest),
    PortForward { pod_id: String },
}

#[derive(Debug, thiserror::Error)]
#[error("streaming server on {address}: {source}")]
pub struct StreamingError {
    pub address: SocketAddr,
    pub source: std::io::Error,
}

/// The running server. Clones share it.
#[derive(Clone)]
pub struct StreamingServer {
    base_url: String,
    tokens: Arc<TokenCache<PendingStream>>,
}

impl StreamingServer {
    /// Binds `[streaming] address` and serves in the background for as long as
    /// the runtime lives.
    pub async fn start(config: &StreamingConfig, pods: PodService) -> Result<StreamingServer, StreamingError> {
        let listener = TcpListener::bind(config.address).await.map_err(|source| StreamingError { address: config.address, source })?;
        let bound = listener.local_addr().map_err(|source| StreamingError { address: config.address, source })?;
        let tokens = Arc::new(TokenCache::new(Duration::from_secs(config.token_ttl_seconds)));
        tokio::spawn(http::accept_loop(listener, tokens.clone(), pods));
        tracing::info!(address = %bound, "serving exec, attach and port-forward streams");
        Ok(StreamingServer { base_url: format!("http://{bound}"), tokens })
    }

    pub fn exec_url(&self, request: ExecRequest) -> String {
        format!("{}/exec/{}", self.base_url, self.tokens.insert(PendingStream::Exec(request)))
    }

    pub fn attach_url(&self, request: ExecRequest) -> String {
        format!("{}/attach/{}", self.base_url, self.tokens.insert(PendingStream::Attach(request)))
    }

    pub fn port_forward_url(&self, pod_id: String) -> String {
        format!("{}/portforward/{}", self.base_url, self.tokens.insert(PendingStream::PortForward { pod_id }))
    }
}
