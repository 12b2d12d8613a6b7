//! A small hostile registry on 127.0.0.1: it serves one image (manifest by tag and
//! by digest, config, layers) over the distribution API, honestly or, for one part
//! of it, the way a broken or malicious registry does: a body that never ends, one
//! that trickles a byte a second, or one that stops after its headers. It counts
//! the hostile bodies it is sending, so a test sees when berthd hangs up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{TestImage, sha256_digest};

/// An endless body still ends here, so that a berthd that ignores the declared size
/// fails the test instead of filling the machine's disk.
pub const ENDLESS_CAP: u64 = 256 << 20;
const CHUNK: usize = 64 << 10;

/// How the hostile part of the image is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Honest,
    /// 200 with a chunked body of zeros that goes on (up to [`ENDLESS_CAP`]).
    Endless,
    /// 200 with the right Content-Length and the right bytes, one a second.
    Trickle,
    /// 200 with the right Content-Length, then nothing.
    Stall,
}

/// Which part of the image misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The manifest fetched by tag.
    Manifest,
    Config,
    Layers,
}

struct Document {
    path: String,
    content_type: String,
    body: Arc<Vec<u8>>,
    /// `None`: always answered honestly.
    part: Option<Part>,
}

struct Shared {
    documents: Vec<Document>,
    behaviour: Mutex<(Part, Behaviour)>,
    hostile_open: AtomicUsize,
    hostile_started: AtomicUsize,
    bytes_sent: AtomicUsize,
}

pub struct HostileRegistry {
    address: SocketAddr,
    shared: Arc<Shared>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl HostileRegistry {
    /// Serves `image` as `repo:tag`, with `part` answered as `behaviour`.
    pub async fn start(repo: &str, tag: &str, image: &TestImage, part: Part, behaviour: Behaviour) -> HostileRegistry {
        let manifest = Arc::new(image.manifest_json());
        let manifest_type = image.format.manifest_media_type().to_owned();
        let mut documents = vec![
            Document {
                path: format!("/v2/{repo}/manifests/{tag}"),
                content_type: manifest_type.clone(),
                body: manifest.clone(),
                part: Some(Part::Manifest),
            },
            Document {
                // By digest the manifest is always honest: only the tag is hostile.
                path: format!("/v2/{repo}/manifests/{}", sha256_digest(&manifest)),
                content_type: manifest_type,
                body: manifest.clone(),
                part: None,
            },
        ];
        let config = image.config_json();
        documents.push(Document {
            path: format!("/v2/{repo}/blobs/{}", sha256_digest(&config)),
            content_type: "application/octet-stream".into(),
            body: Arc::new(config),
            part: Some(Part::Config),
        });
        for layer in &image.layers {
            documents.push(Document {
                path: format!("/v2/{repo}/blobs/{}", layer.digest()),
                content_type: "application/octet-stream".into(),
                body: Arc::new(layer.blob().to_vec()),
                part: Some(Part::Layers),
            });
        }
        let shared = Arc::new(Shared {
            documents,
            behaviour: Mutex::new((part, behaviour)),
            hostile_open: AtomicUsize::new(0),
            hostile_started: AtomicUsize::new(0),
            bytes_sent: AtomicUsize::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind hostile registry");
        let address = listener.local_addr().expect("hostile registry address");
        let serving = shared.clone();
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(serve(stream, serving.clone()));
            }
        });
        HostileRegistry { address, shared, accept_loop }
    }

    /// From now on `part` is answered as `behaviour` (`Honest`: the registry recovered).
    pub fn set_behaviour(&self, part: Part, behaviour: Behaviour) {
        *self.shared.behaviour.lock().expect("behaviour lock") = (part, behaviour);
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.address.to_string()
    }

    /// Hostile bodies being sent right now: each ends when berthd closes its connection.
    pub fn hostile_bodies_open(&self) -> usize {
        self.shared.hostile_open.load(Ordering::SeqCst)
    }

    /// Hostile bodies begun so far.
    pub fn hostile_bodies_started(&self) -> usize {
        self.shared.hostile_started.load(Ordering::SeqCst)
    }

    /// Body bytes of hostile answers written to sockets so far.
    pub fn hostile_bytes_sent(&self) -> u64 {
        self.shared.bytes_sent.load(Ordering::SeqCst) as u64
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// One connection: HTTP/1.1 GETs, kept alive until a hostile answer or the client ends it.
async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut buffer = Vec::new();
    loop {
        let Some(head) = read_head(&mut stream, &mut buffer).await else { return };
        let path = head.split_whitespace().nth(1).unwrap_or("").split('?').next().unwrap_or("").to_owned();
        let is_head = head.starts_with("HEAD ");
        if path == "/v2/" || path == "/v2" {
            if respond(&mut stream, "200 OK", "application/json", b"{}", is_head).await.is_err() {
                return;
            }
            continue;
        }
        let Some(document) = shared.documents.iter().find(|d| d.path == path) else {
            if respond(&mut stream, "404 Not Found", "application/json", br#"{"errors":[{"code":"NOT_FOUND"}]}"#, is_head)
                .await
                .is_err()
            {
                return;
            }
            continue;
        };
        let (part, behaviour) = *shared.behaviour.lock().expect("behaviour lock");
        if document.part != Some(part) || behaviour == Behaviour::Honest || is_head {
            if respond(&mut stream, "200 OK", &document.content_type, &document.body, is_head).await.is_err() {
                return;
            }
            continue;
        }
        shared.hostile_started.fetch_add(1, Ordering::SeqCst);
        shared.hostile_open.fetch_add(1, Ordering::SeqCst);
        misbehave(&mut stream, document, behaviour, &shared).await;
        shared.hostile_open.fetch_sub(1, Ordering::SeqCst);
        return;
    }
}

/// Reads up to the end of a request head; `None` when the client hung up.
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8], is_head: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nDocker-Content-Digest: {}\r\n\r\n",
        body.len(),
        sha256_digest(body)
    );
    stream.write_all(head.as_bytes()).await?;
    if !is_head {
        stream.write_all(body).await?;
    }
    Ok(())
}

/// Sends the hostile answer until it is done or the client hangs up (seen as a
/// read that returns: berthd sends nothing more on a connection whose body it waits for).
async fn misbehave(stream: &mut TcpStream, document: &Document, behaviour: Behaviour, shared: &Shared) {
    let (mut reader, mut writer) = stream.split();
    let mut hung_up = [0u8; 1];
    let sending = async {
        let sent = |n: usize| shared.bytes_sent.fetch_add(n, Ordering::SeqCst);
        match behaviour {
            Behaviour::Honest => {}
            Behaviour::Endless => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\n\r\n", document.content_type);
                writer.write_all(head.as_bytes()).await?;
                let zeros = vec![0u8; CHUNK];
                let mut total = 0u64;
                while total < ENDLESS_CAP {
                    writer.write_all(format!("{CHUNK:x}\r\n").as_bytes()).await?;
                    writer.write_all(&zeros).await?;
                    writer.write_all(b"\r\n").await?;
                    total += CHUNK as u64;
                    sent(CHUNK);
                }
                writer.write_all(b"0\r\n\r\n").await?;
                // Then hold the connection, as a registry still "sending" would.
                std::future::pending::<()>().await;
            }
            Behaviour::Trickle | Behaviour::Stall => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
                    document.content_type,
                    document.body.len()
                );
                writer.write_all(head.as_bytes()).await?;
                if behaviour == Behaviour::Stall {
                    std::future::pending::<()>().await;
                }
                for byte in document.body.iter() {
                    writer.write_all(std::slice::from_ref(byte)).await?;
                    sent(1);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                std::future::pending::<()>().await;
            }
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        _ = sending => {}
        _ = reader.read(&mut hung_up) => {}
    }
}
