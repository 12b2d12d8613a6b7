//! Exec over a WebSocket channel protocol (crictl `--transport websocket`).

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::ExecRequest;
use super::channel::{self, ChannelProtocol, close_normally};
use super::remotecommand::{ClientEvent, ExecEnd, OUTPUT_QUEUE, run_exec};
use crate::sandbox::PodService;

/// Client events queued for the process; the socket's reader waits beyond that.
const EVENT_QUEUE: usize = 16;

pub async fn serve_exec(socket: WebSocketStream<TcpStream>, protocol: ChannelProtocol, pods: PodService, request: ExecRequest) {
    let (mut sink, mut incoming) = socket.split();
    let (output, mut queue) = mpsc::channel::<(u8, Bytes)>(OUTPUT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some((channel, data)) = queue.recv().await {
            if sink.send(protocol.encode(channel, &data)).await.is_err() {
                return None;
            }
        }
        Some(sink)
    });
    let (events, received) = mpsc::channel(EVENT_QUEUE);
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = incoming.next().await {
            if matches!(message, Message::Close(_)) {
                return;
            }
            let Some((channel, data)) = protocol.decode(&message) else { continue };
            let event = match channel {
                channel::STDIN => ClientEvent::Stdin(data),
                channel::RESIZE => match serde_json::from_slice(&data) {
                    Ok(size) => ClientEvent::Resize(size),
                    Err(_) => continue,
                },
                channel::CLOSE if protocol.has_close_signal() && data.first() == Some(&channel::STDIN) => ClientEvent::CloseStdin,
                _ => continue,
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    });
    let end = run_exec(pods, request, received, output).await;
    reader.abort();
    if end == ExecEnd::ClientGone {
        writer.abort();
        return;
    }
    let Ok(Some(mut sink)) = writer.await else { return };
    if let Some(status) = end.status(protocol.structured_status()) {
        let _ = sink.send(protocol.encode(channel::ERROR, &status)).await;
    }
    let _ = close_normally(&mut sink).await;
}
