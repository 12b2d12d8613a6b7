//! TCP proxies on 127.0.0.1 in front of a registry that misbehave on purpose: one
//! cuts every connection after a number of response bytes (a registry dying mid-layer),
//! one trickles responses (a slow registry, to catch berthd in the middle of a pull).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug)]
enum Behaviour {
    CutAfter { response_bytes: u64 },
    Throttle { bytes_per_second: u64 },
}

pub struct TestProxy {
    address: SocketAddr,
    connections: Arc<AtomicUsize>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl TestProxy {
    /// Forwards to `upstream` (`host:port`) and closes each connection once it has
    /// relayed `response_bytes` bytes of responses on it.
    pub async fn dying(upstream: &str, response_bytes: u64) -> TestProxy {
        TestProxy::start(upstream, Behaviour::CutAfter { response_bytes }).await
    }

    /// Forwards to `upstream`, relaying responses at about `bytes_per_second` per
    /// connection.
    pub async fn throttled(upstream: &str, bytes_per_second: u64) -> TestProxy {
        TestProxy::start(upstream, Behaviour::Throttle { bytes_per_second }).await
    }

    async fn start(upstream: &str, behaviour: Behaviour) -> TestProxy {
        let upstream: SocketAddr = upstream.parse().expect("proxy upstream is host:port on 127.0.0.1");
        assert!(upstream.ip().is_loopback(), "test proxies only forward to loopback");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(relay(client, upstream, behaviour));
            }
        });
        TestProxy { address, connections, accept_loop }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.address.to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, behaviour: Behaviour) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    });
    let started = tokio::time::Instant::now();
    let mut relayed = 0u64;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match server_read.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let allowed = match behaviour {
            Behaviour::CutAfter { response_bytes } => (response_bytes - relayed).min(read as u64) as usize,
            Behaviour::Throttle { .. } => read,
        };
        if client_write.write_all(&buffer[..allowed]).await.is_err() {
            break;
        }
        relayed += allowed as u64;
        match behaviour {
            Behaviour::CutAfter { response_bytes } if relayed >= response_bytes => break,
            Behaviour::CutAfter { .. } => {}
            Behaviour::Throttle { bytes_per_second } => {
                let due = Duration::from_secs_f64(relayed as f64 / bytes_per_second as f64);
                tokio::time::sleep_until(started + due).await;
            }
        }
    }
    let _ = client_write.shutdown().await;
    requests.abort();
}
