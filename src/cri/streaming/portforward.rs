//! Port-forward over a WebSocket channel protocol, as the kubelet serves it:
//! `?port=P` once per port; port i gets data channel 2i and error channel 2i+1,
//! each opened by the server with the port number (two bytes, little-endian).

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::channel::{ChannelProtocol, close_normally};
use crate::sandbox::PodService;

const OUTGOING_QUEUE: usize = 16;
const READ_CHUNK: usize = 32 * 1024;

pub async fn serve(socket: WebSocketStream<TcpStream>, protocol: ChannelProtocol, pods: PodService, pod_id: &str, ports: &[&str]) {
    let (mut sink, mut incoming) = socket.split();
    let ports: Result<Vec<u16>, String> = if ports.is_empty() {
        Err("at least one port parameter is required".to_string())
    } else {
        ports.iter().map(|p| p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| format!("port {p:?}: not a port number"))).collect()
    };
    let ports = match ports {
        Ok(ports) => ports,
        Err(reason) => {
            let _ = sink.send(protocol.encode(1, reason.as_bytes())).await;
            let _ = close_normally(&mut sink).await;
            return;
        }
    };

    let (outgoing, mut queue) = mpsc::channel::<(u8, Bytes)>(OUTGOING_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some((channel, data)) = queue.recv().await {
            if sink.send(protocol.encode(channel, &data)).await.is_err() {
                break;
            }
        }
        let _ = close_normally(&mut sink).await;
    });
    let mut writers: Vec<Option<OwnedWriteHalf>> = Vec::with_capacity(ports.len());
    let mut readers = Vec::new();
    for (index, &port) in ports.iter().enumerate() {
        let (data, error) = ((index * 2) as u8, (index * 2 + 1) as u8);
        let prefix = Bytes::copy_from_slice(&port.to_le_bytes());
        if outgoing.send((data, prefix.clone())).await.is_err() || outgoing.send((error, prefix)).await.is_err() {
            return;
        }
        match pods.port_forward(pod_id, port).await {
            Ok(connection) => {
                let (mut read, write) = connection.into_split();
                writers.push(Some(write));
                let outgoing = outgoing.clone();
                readers.push(tokio::spawn(async move {
                    let mut buffer = vec![0u8; READ_CHUNK];
                    while let Ok(count) = read.read(&mut buffer).await {
                        if count == 0 || outgoing.send((data, Bytes::copy_from_slice(&buffer[..count]))).await.is_err() {
                            return;
                        }
                    }
                }));
            }
            Err(failure) => {
                writers.push(None);
                let message = format!("error forwarding port {port} to pod {pod_id}: {failure}");
                let _ = outgoing.send((error, Bytes::from(message))).await;
            }
        }
    }
    drop(outgoing);

    let from_client = async {
        while let Some(Ok(message)) = incoming.next().await {
            if matches!(message, Message::Close(_)) {
                return;
            }
            let Some((channel, data)) = protocol.decode(&message) else { continue };
            let index = usize::from(channel / 2);
            if channel % 2 != 0 || data.is_empty() {
                continue;
            }
            if let Some(Some(write)) = writers.get_mut(index)
                && write.write_all(&data).await.is_err()
            {
                writers[index] = None;
            }
        }
    };
    let stoppers: Vec<_> = readers.iter().map(|reader| reader.abort_handle()).collect();
    tokio::select! {
        _ = from_client => {
            stoppers.iter().for_each(|reader| reader.abort());
            writer.abort();
        }
        // Every connection in the pod ended: what they sent is still queued, and
        // the writer closes the socket once it went out.
        _ = futures::future::join_all(readers) => {
            let _ = writer.await;
        }
    }
}
