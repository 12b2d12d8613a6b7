//! Exec over a WebSocket channel protocol: stdin, resize and close signals in,
//! stdout and stderr out, and the exit status last on the error channel.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::SplitStream;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::ExecRequest;
use super::channel::{self, ChannelProtocol, TerminalSize, close_normally};
use crate::sandbox::PodService;
use crate::shim::client::{ExecControl, ExecStreams};

/// How long output may still arrive after the process exited (a background
/// child can hold the pipe open forever).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// Outgoing messages queued for the socket; a slow client stalls the readers of
/// the process's output (and so the process), not berthd's memory.
const OUTGOING_QUEUE: usize = 16;
const READ_CHUNK: usize = 32 * 1024;

type Socket = WebSocketStream<TcpStream>;

pub async fn serve_exec(socket: Socket, protocol: ChannelProtocol, pods: PodService, request: ExecRequest) {
    let (mut sink, incoming) = socket.split();
    let streams = ExecStreams { stdin: request.stdin, stdout: request.stdout, stderr: request.stderr };
    let session = match pods.exec(&request.container_id, &request.cmd, request.tty, streams).await {
        Ok(session) => session,
        Err(error) => {
            let status = channel::failure_status(protocol, &error.to_string());
            let _ = sink.send(protocol.encode(channel::ERROR, &status)).await;
            let _ = close_normally(&mut sink).await;
            return;
        }
    };

    let (outgoing, mut queue) = mpsc::channel::<(u8, Bytes)>(OUTGOING_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some((channel, data)) = queue.recv().await {
            if sink.send(protocol.encode(channel, &data)).await.is_err() {
                return None;
            }
        }
        Some(sink)
    });
    let mut pumps = Vec::new();
    for (channel, output) in [(channel::STDOUT, session.stdout), (channel::STDERR, session.stderr)] {
        if let Some(output) = output {
            pumps.push(tokio::spawn(pump_output(output, channel, outgoing.clone())));
        }
    }
    drop(outgoing);
    let mut client = tokio::spawn(read_client(incoming, protocol, session.stdin, session.control.clone()));

    let mut exit = session.exit;
    let exit_code = tokio::select! {
        exited = &mut exit => Some(exited),
        _ = &mut client => None,
    };
    let Some(exited) = exit_code else {
        // The client went away first. Kubernetes leaves the process running;
        // berth ends its input so a shell waiting on it ends too, and hangs up
        // a terminal, whose shell would otherwise wait forever.
        if request.tty {
            let _ = session.control.signal(libc::SIGHUP as u32).await;
        }
        for pump in pumps {
            pump.abort();
        }
        writer.abort();
        return;
    };
    client.abort();
    let stoppers: Vec<_> = pumps.iter().map(|pump| pump.abort_handle()).collect();
    let drained = async {
        for pump in pumps {
            let _ = pump.await;
        }
    };
    if tokio::time::timeout(OUTPUT_DRAIN, drained).await.is_err() {
        stoppers.iter().for_each(|pump| pump.abort());
    }
    let Ok(Some(mut sink)) = writer.await else { return };
    let status = match exited {
        Ok(Ok(code)) => channel::exit_status(protocol, code),
        Ok(Err(error)) => Some(channel::failure_status(protocol, &format!("waiting for the process: {error}"))),
        Err(_) => Some(channel::failure_status(protocol, "the process's exit status was lost")),
    };
    if let Some(status) = status {
        let _ = sink.send(protocol.encode(channel::ERROR, &status)).await;
    }
    let _ = close_normally(&mut sink).await;
}

async fn pump_output(mut output: pipe::Receiver, channel: u8, outgoing: mpsc::Sender<(u8, Bytes)>) {
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        match output.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(count) => {
                if outgoing.send((channel, Bytes::copy_from_slice(&buffer[..count]))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Feeds the client's stdin, resizes and close signals to the process until
/// the client closes or disconnects; its input ends then.
async fn read_client(mut incoming: SplitStream<Socket>, protocol: ChannelProtocol, mut stdin: Option<pipe::Sender>, control: ExecControl) {
    while let Some(Ok(message)) = incoming.next().await {
        if matches!(message, Message::Close(_)) {
            break;
        }
        let Some((channel, data)) = protocol.decode(&message) else { continue };
        match channel {
            channel::STDIN => {
                if let Some(pipe) = stdin.as_mut()
                    && pipe.write_all(&data).await.is_err()
                {
                    stdin = None;
                }
            }
            channel::RESIZE => {
                if let Ok(size) = serde_json::from_slice::<TerminalSize>(&data)
                    && let Err(error) = control.resize(size.width.into(), size.height.into()).await
                {
                    tracing::debug!(%error, "resizing an exec terminal");
                }
            }
            channel::CLOSE if protocol.has_close_signal() && data.first() == Some(&channel::STDIN) => {
                if let Some(pipe) = stdin.take()
                    && let Err(error) = control.close_stdin(Some(&pipe)).await
                {
                    tracing::debug!(%error, "closing an exec's stdin");
                }
            }
            _ => {}
        }
    }
    if let Some(pipe) = stdin.take() {
        let _ = control.close_stdin(Some(&pipe)).await;
    }
}
