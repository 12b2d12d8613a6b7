//! Exec and port-forward over SPDY/3.1 (crictl's default transport, and kubelet's
//! proxy): after the upgrade the client opens one stream per `streamtype`, which
//! the server accepts and replies to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::ExecRequest;
use super::channel::{self, TerminalSize};
use super::remotecommand::{ClientEvent, ExecEnd, OUTPUT_QUEUE, run_exec};
use super::spdy::{SpdySession, SpdyStream};
use crate::sandbox::PodService;

/// The remotecommand version served over SPDY; its error stream carries a metav1.Status.
pub const EXEC_PROTOCOL: &str = "v4.channel.k8s.io";
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// How long the client has to open all its streams, as the kubelet allows.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the last frames get to leave before the connection is dropped.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
const EVENT_QUEUE: usize = 16;
const READ_CHUNK: usize = 32 * 1024;
/// A resize message is a few dozen bytes; more without a complete one is garbage.
const MAX_RESIZE_BUFFER: usize = 4096;

pub async fn serve_exec(connection: TcpStream, pods: PodService, request: ExecRequest) {
    let (mut session, driver) = SpdySession::server(connection);
    let driver = tokio::spawn(driver);
    let expected = 1 + usize::from(request.stdin) + usize::from(request.stdout) + usize::from(request.stderr && !request.tty) + usize::from(request.tty);
    let mut streams: HashMap<String, Arc<SpdyStream>> = HashMap::new();
    let opened = async {
        while streams.len() < expected {
            let Some(stream) = session.accept().await else { return false };
            let kind = stream.header("streamtype").unwrap_or_default().to_string();
            if stream.reply(&[], false).await.is_err() {
                return false;
            }
            streams.insert(kind, Arc::new(stream));
        }
        true
    };
    if !matches!(tokio::time::timeout(STREAM_CREATION_TIMEOUT, opened).await, Ok(true)) {
        driver.abort();
        return;
    }
    let Some(error_stream) = streams.get("error").cloned() else {
        driver.abort();
        return;
    };

    let (output, mut queue) = mpsc::channel::<(u8, Bytes)>(OUTPUT_QUEUE);
    let (stdout, stderr) = (streams.get("stdout").cloned(), streams.get("stderr").cloned());
    let writer = tokio::spawn(async move {
        while let Some((channel, data)) = queue.recv().await {
            let target = if channel == channel::STDERR { &stderr } else { &stdout };
            if let Some(stream) = target
                && stream.write(&data).await.is_err()
            {
                return;
            }
        }
    });
    let (events, received) = mpsc::channel(EVENT_QUEUE);
    let mut readers = Vec::new();
    if let Some(stdin) = streams.get("stdin").cloned() {
        readers.push(tokio::spawn(read_stdin(stdin, events.clone())));
    }
    if let Some(resize) = streams.get("resize").cloned() {
        readers.push(tokio::spawn(read_resizes(resize, events.clone())));
    }
    // The client counts as gone once the connection ends, not when its stdin does.
    let watcher = tokio::spawn(async move {
        let _ = driver.await;
        drop(events);
    });

    let end = run_exec(pods, request, received, output).await;
    readers.iter().for_each(|reader| reader.abort());
    if end != ExecEnd::ClientGone {
        let _ = writer.await;
        if let Some(status) = end.status(true) {
            let _ = error_stream.write(&status).await;
        }
        for stream in streams.values() {
            let _ = stream.close().await;
        }
    }
    drop(streams);
    drop(error_stream);
    drop(session);
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, watcher).await;
}

async fn read_stdin(stdin: Arc<SpdyStream>, events: mpsc::Sender<ClientEvent>) {
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        match stdin.read(&mut buffer).await {
            Ok(0) => {
                let _ = events.send(ClientEvent::CloseStdin).await;
                return;
            }
            Ok(count) => {
                if events.send(ClientEvent::Stdin(Bytes::copy_from_slice(&buffer[..count]))).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// The resize stream is a sequence of JSON objects with no separator.
async fn read_resizes(resize: Arc<SpdyStream>, events: mpsc::Sender<ClientEvent>) {
    let mut pending = Vec::new();
    let mut buffer = vec![0u8; 1024];
    while let Ok(count) = resize.read(&mut buffer).await {
        if count == 0 {
            return;
        }
        pending.extend_from_slice(&buffer[..count]);
        let mut sizes = serde_json::Deserializer::from_slice(&pending).into_iter::<TerminalSize>();
        let mut parsed = Vec::new();
        let consumed = loop {
            match sizes.next() {
                Some(Ok(size)) => parsed.push(size),
                Some(Err(error)) if error.is_eof() => break sizes.byte_offset(),
                Some(Err(_)) => return,
                None => break sizes.byte_offset(),
            }
        };
        pending.drain(..consumed);
        if pending.len() > MAX_RESIZE_BUFFER {
            return;
        }
        for size in parsed {
            if events.send(ClientEvent::Resize(size)).await.is_err() {
                return;
            }
        }
    }
}

/// Port-forward: the client opens an error and a data stream per connection,
/// paired by `requestid`, naming the pod's port in `port`.
/// `connection`: the upgraded TCP connection, or a WebSocket tunnel carrying SPDY.
pub async fn serve_port_forward<T>(connection: T, pods: PodService, pod_id: String)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut session, driver) = SpdySession::server(connection);
    let driver = tokio::spawn(driver);
    let mut waiting: HashMap<String, (Option<SpdyStream>, Option<SpdyStream>)> = HashMap::new();
    while let Some(stream) = session.accept().await {
        let (Some(kind), Some(request_id)) = (stream.header("streamtype").map(str::to_string), stream.header("requestid").map(str::to_string)) else {
            stream.reset(super::spdy::frame::rst_status::PROTOCOL_ERROR);
            continue;
        };
        if stream.reply(&[], false).await.is_err() {
            break;
        }
        let pair = waiting.entry(request_id.clone()).or_default();
        match kind.as_str() {
            "error" => pair.0 = Some(stream),
            "data" => pair.1 = Some(stream),
            _ => {
                stream.reset(super::spdy::frame::rst_status::PROTOCOL_ERROR);
                continue;
            }
        }
        if matches!(waiting.get(&request_id), Some((Some(_), Some(_))))
            && let Some((Some(error), Some(data))) = waiting.remove(&request_id)
        {
            tokio::spawn(forward(pods.clone(), pod_id.clone(), error, data));
        }
    }
    drop(session);
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, driver).await;
}

/// Connects to a port inside the pod; the error is the message for the client.
pub async fn dial_pod_port(pods: &PodService, pod_id: &str, port: u16) -> Result<TcpStream, String> {
    pods.port_forward(pod_id, port).await.map_err(|failure| format!("error forwarding port {port} to pod {pod_id}: {failure}"))
}

async fn forward(pods: PodService, pod_id: String, error: SpdyStream, data: SpdyStream) {
    let port = data.header("port").and_then(|port| port.parse::<u16>().ok()).filter(|&port| port > 0);
    let connection = match port {
        Some(port) => dial_pod_port(&pods, &pod_id, port).await,
        None => Err(format!("port {:?}: not a port number", data.header("port").unwrap_or_default())),
    };
    let connection = match connection {
        Ok(connection) => connection,
        Err(message) => {
            let _ = error.write(message.as_bytes()).await;
            let _ = error.close().await;
            let _ = data.close().await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = connection.into_split();
    let data = Arc::new(data);
    let incoming = data.clone();
    let upstream = tokio::spawn(async move {
        let mut buffer = vec![0u8; READ_CHUNK];
        while let Ok(count) = incoming.read(&mut buffer).await {
            if count == 0 || to_pod.write_all(&buffer[..count]).await.is_err() {
                break;
            }
        }
        let _ = to_pod.shutdown().await;
    });
    let outgoing = data.clone();
    let downstream = async move {
        let mut buffer = vec![0u8; READ_CHUNK];
        while let Ok(count) = from_pod.read(&mut buffer).await {
            if count == 0 || outgoing.write(&buffer[..count]).await.is_err() {
                break;
            }
        }
        let _ = outgoing.close().await;
    };
    // The pod closing its side ends the forward; the client may never half-close.
    downstream.await;
    upstream.abort();
    let _ = error.close().await;
}
