//! Exec, attach and port-forward over WebSocket (crictl `--transport websocket`):
//! exec and attach over a channel protocol; port-forward either as SPDY tunnelled
//! through the socket (client-go's dialer, so crictl) or over a channel protocol
//! with two channels per port (the kubelet's older WebSocket port-forward).

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::ExecRequest;
use super::channel::{self, ChannelProtocol, close_normally};
use super::over_spdy::dial_pod_port;
use super::remotecommand::{ClientEvent, ExecEnd, OUTPUT_QUEUE, run_exec};
use crate::sandbox::PodService;

/// Client events queued for the process; the socket's reader waits beyond that.
const EVENT_QUEUE: usize = 16;
/// The subprotocol of client-go's tunnelling dialer: binary messages carry the
/// bytes of a SPDY/3.1 port-forward session.
pub const PORT_FORWARD_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// Tunnel bytes buffered between the socket and the SPDY session.
const TUNNEL_BUFFER: usize = 64 * 1024;
const READ_CHUNK: usize = 32 * 1024;
/// How long a client gets to answer the server's Close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Channel numbers are one byte and every port takes two.
const MAX_PORTS: usize = 128;

/// The largest frame and message a client may send. Clients write stdin and
/// tunnelled port-forward bytes in chunks of 32 KiB; tungstenite's defaults
/// (16 MiB frames, 64 MiB messages, buffered whole) would let every connection
/// hold far more memory than any client needs.
const MAX_FRAME_BYTES: usize = 1 << 20;
const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The socket settings every upgraded connection gets.
pub(super) fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default().max_frame_size(Some(MAX_FRAME_BYTES)).max_message_size(Some(MAX_MESSAGE_BYTES))
}

type SocketSink = futures::stream::SplitSink<WebSocketStream<TcpStream>, Message>;

/// Writes what is queued for each channel to the socket, in order, with bounded
/// memory; the task hands the sink back when the queue closes, or nothing when
/// the client went away.
fn spawn_channel_writer(
    mut sink: SocketSink,
    protocol: ChannelProtocol,
) -> (mpsc::Sender<(u8, Bytes)>, tokio::task::JoinHandle<Option<SocketSink>>) {
    let (output, mut queue) = mpsc::channel::<(u8, Bytes)>(OUTPUT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some((channel, data)) = queue.recv().await {
            if sink.send(protocol.encode(channel, &data)).await.is_err() {
                return None;
            }
        }
        Some(sink)
    });
    (output, writer)
}

pub async fn serve_exec(socket: WebSocketStream<TcpStream>, protocol: ChannelProtocol, pods: PodService, request: ExecRequest) {
    let (sink, mut incoming) = socket.split();
    let (output, writer) = spawn_channel_writer(sink, protocol);
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

/// Turns a WebSocket carrying a byte stream in binary messages into that byte
/// stream. The client closing the socket is the stream's end; the stream's
/// user dropping it closes the socket normally.
pub fn tunnel(socket: WebSocketStream<TcpStream>) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(TUNNEL_BUFFER);
    let (mut from_session, mut to_session) = tokio::io::split(theirs);
    let (mut sink, mut incoming) = socket.split();
    let inbound = tokio::spawn(async move {
        while let Some(Ok(message)) = incoming.next().await {
            match message {
                Message::Binary(data) => {
                    if to_session.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_session.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buffer = vec![0u8; READ_CHUNK];
        while let Ok(count) = from_session.read(&mut buffer).await {
            if count == 0 || sink.send(Message::binary(buffer[..count].to_vec())).await.is_err() {
                break;
            }
        }
        let _ = close_normally(&mut sink).await;
        // The reader sees the client's answering Close, unless the client never sends one.
        let stopper = inbound.abort_handle();
        if tokio::time::timeout(CLOSE_GRACE, inbound).await.is_err() {
            stopper.abort();
        }
    });
    ours
}

/// The ports of a channel-protocol port-forward: `port` query parameters, each
/// one port or a comma-separated list, as the kubelet reads them.
pub fn requested_ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (name, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        if name != "port" {
            continue;
        }
        if value.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for port in value.replace("%2C", ",").replace("%2c", ",").split(',') {
            match port.parse::<u16>() {
                Ok(number) if number > 0 => ports.push(number),
                _ => return Err(format!("query parameter \"port\": {port:?} is not a port number")),
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    if ports.len() > MAX_PORTS {
        return Err(format!("query parameter \"port\": at most {MAX_PORTS} ports per connection"));
    }
    Ok(ports)
}

fn data_channel(index: usize) -> u8 {
    (2 * index) as u8
}

fn error_channel(index: usize) -> u8 {
    (2 * index + 1) as u8
}

/// Port-forward over a channel protocol: port `i` of `ports` has data channel
/// `2i` (both ways) and error channel `2i+1` (to the client); the first message
/// on each names the port, two bytes little-endian. The socket closes once
/// every pod connection ended.
pub async fn serve_port_forward(socket: WebSocketStream<TcpStream>, protocol: ChannelProtocol, pods: PodService, pod_id: String, ports: Vec<u16>) {
    let (sink, mut incoming) = socket.split();
    let (output, writer) = spawn_channel_writer(sink, protocol);
    let mut to_pods = Vec::new();
    let mut forwards = Vec::new();
    for (index, &port) in ports.iter().enumerate() {
        for channel in [data_channel(index), error_channel(index)] {
            let _ = output.send((channel, Bytes::copy_from_slice(&port.to_le_bytes()))).await;
        }
        let (sender, receiver) = mpsc::channel(EVENT_QUEUE);
        to_pods.push(sender);
        forwards.push(tokio::spawn(forward_channels(pods.clone(), pod_id.clone(), port, index, receiver, output.clone())));
    }
    drop(output);
    let stoppers: Vec<_> = forwards.iter().map(|forward| forward.abort_handle()).collect();
    let reader = async {
        while let Some(Ok(message)) = incoming.next().await {
            if matches!(message, Message::Close(_)) {
                return;
            }
            let Some((channel, data)) = protocol.decode(&message) else { continue };
            // Odd channels carry errors, which only the server sends.
            if channel % 2 == 0
                && let Some(to_pod) = to_pods.get(usize::from(channel / 2))
            {
                // A forward that ended takes no more data; the rest of the socket goes on.
                let _ = to_pod.send(data).await;
            }
        }
    };
    tokio::select! {
        _ = reader => {
            stoppers.iter().for_each(|forward| forward.abort());
            writer.abort();
        }
        _ = futures::future::join_all(forwards) => {
            if let Ok(Some(mut sink)) = writer.await {
                let _ = close_normally(&mut sink).await;
            }
        }
    }
}

/// One port's connection: the client's data channel into the pod's port and back,
/// until the pod closes its side; a failure to connect goes to the error channel.
async fn forward_channels(pods: PodService, pod_id: String, port: u16, index: usize, mut from_client: mpsc::Receiver<Bytes>, output: mpsc::Sender<(u8, Bytes)>) {
    let connection = match dial_pod_port(&pods, &pod_id, port).await {
        Ok(connection) => connection,
        Err(message) => {
            let _ = output.send((error_channel(index), Bytes::from(message))).await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = connection.into_split();
    let upstream = tokio::spawn(async move {
        while let Some(data) = from_client.recv().await {
            if to_pod.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = to_pod.shutdown().await;
    });
    let mut buffer = vec![0u8; READ_CHUNK];
    while let Ok(count) = from_pod.read(&mut buffer).await {
        if count == 0 || output.send((data_channel(index), Bytes::copy_from_slice(&buffer[..count]))).await.is_err() {
            break;
        }
    }
    upstream.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_repeated_and_comma_separated_parameters() {
        assert_eq!(requested_ports("port=80&port=8080,9090"), Ok(vec![80, 8080, 9090]));
        assert_eq!(requested_ports("x=1&port=443%2C8443"), Ok(vec![443, 8443]));
        assert!(requested_ports("").unwrap_err().contains("required"));
        assert!(requested_ports("port=").unwrap_err().contains("empty"));
        assert!(requested_ports("port=0").unwrap_err().contains("\"0\""));
        assert!(requested_ports("port=65536").is_err());
        assert!(requested_ports("port=http").is_err());
        let many = vec!["port=1"; MAX_PORTS + 1].join("&");
        assert!(requested_ports(&many).unwrap_err().contains("at most"));
    }

    /// A client frame header (FIN, binary, masked) declaring `length` bytes.
    fn frame_header(length: u64) -> Vec<u8> {
        let mut header = vec![0x82];
        match u16::try_from(length) {
            Ok(short) if short >= 126 => {
                header.push(0x80 | 126);
                header.extend_from_slice(&short.to_be_bytes());
            }
            _ => {
                header.push(0x80 | 127);
                header.extend_from_slice(&length.to_be_bytes());
            }
        }
        header.extend_from_slice(&[1, 2, 3, 4]);
        header
    }

    async fn first_message(bytes: Vec<u8>) -> Result<Message, tokio_tungstenite::tungstenite::Error> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut socket = WebSocketStream::from_raw_socket(server, tokio_tungstenite::tungstenite::protocol::Role::Server, Some(socket_config())).await;
        tokio::spawn(async move {
            let _ = client.write_all(&bytes).await;
            // Keep the client open: the server must decide from the header alone.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        tokio::time::timeout(Duration::from_secs(2), socket.next()).await.expect("the server answers at once").expect("a message or an error")
    }

    #[tokio::test]
    async fn huge_declared_frames_are_refused_from_their_header() {
        for length in [u64::MAX >> 1, 1 << 40, MAX_FRAME_BYTES as u64 + 1] {
            let error = first_message(frame_header(length)).await.unwrap_err();
            assert!(matches!(error, tokio_tungstenite::tungstenite::Error::Capacity(_)), "{length}: {error}");
        }
        // A fragmented message may not grow past its own bound either.
        let mut fragments = Vec::new();
        for index in 0..5 {
            let mut header = frame_header(MAX_FRAME_BYTES as u64);
            header[0] = if index == 0 { 0x02 } else { 0x00 };
            fragments.extend_from_slice(&header);
            fragments.extend(std::iter::repeat_n(0u8, MAX_FRAME_BYTES));
        }
        let error = first_message(fragments).await.unwrap_err();
        assert!(matches!(error, tokio_tungstenite::tungstenite::Error::Capacity(_)), "{error}");
        // What clients really send passes.
        let mut chunk = frame_header(32 * 1024);
        chunk.extend(std::iter::repeat_n(0u8, 32 * 1024));
        assert!(matches!(first_message(chunk).await, Ok(Message::Binary(data)) if data.len() == 32 * 1024));
    }

    #[test]
    fn every_port_has_a_data_and_an_error_channel() {
        assert_eq!((data_channel(0), error_channel(0)), (0, 1));
        assert_eq!((data_channel(127), error_channel(127)), (254, 255));
    }
}
