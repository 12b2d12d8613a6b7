//! Exec, whatever the transport: stdin, resizes and the end of stdin come in as
//! [`ClientEvent`]s; stdout and stderr go out, in order, as (channel, bytes); the
//! transport reports the [`ExecEnd`] last.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::ExecRequest;
use super::channel::{self, TerminalSize};
use crate::sandbox::PodService;
use crate::shim::client::{ExecControl, ExecStreams};

/// How long output may still arrive after the process exited (a background
/// child can hold the pipe open forever).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 32 * 1024;
/// Output chunks queued for a transport; a slow client stalls the readers of the
/// process's output (and so the process), not berthd's memory.
pub const OUTPUT_QUEUE: usize = 16;

/// What a client sends an exec.
#[derive(Debug)]
pub enum ClientEvent {
    Stdin(Bytes),
    /// The client's stdin ended (v5 close signal, or FIN of the SPDY stdin stream).
    CloseStdin,
    Resize(TerminalSize),
}

/// How an exec ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ExecEnd {
    Exited(i32),
    /// The process could not start, or its end could not be learnt.
    Failed(String),
    /// The transport closed `events` before the process ended.
    ClientGone,
}

impl ExecEnd {
    /// The error channel's final message in `protocol`'s form, if it has one.
    pub fn status(&self, structured: bool) -> Option<Vec<u8>> {
        match self {
            ExecEnd::Exited(code) => channel::exit_status(structured, *code),
            ExecEnd::Failed(message) => Some(channel::failure_status(structured, message)),
            ExecEnd::ClientGone => None,
        }
    }
}

/// Runs `request` until the process ends or the client goes away (`events`
/// closes). When it returns, every clone of `output` is gone, so the transport's
/// writer has seen all output.
pub async fn run_exec(pods: PodService, request: ExecRequest, events: mpsc::Receiver<ClientEvent>, output: mpsc::Sender<(u8, Bytes)>) -> ExecEnd {
    let Some(cmd) = &request.cmd else {
        return run_attach(pods, request, events, output).await;
    };
    let streams = ExecStreams { stdin: request.stdin, stdout: request.stdout, stderr: request.stderr };
    let session = match pods.exec(&request.container_id, cmd, request.tty, streams).await {
        Ok(session) => session,
        Err(error) => return ExecEnd::Failed(error.to_string()),
    };
    let mut pumps = Vec::new();
    for (channel, pipe) in [(channel::STDOUT, session.stdout), (channel::STDERR, session.stderr)] {
        if let Some(pipe) = pipe {
            pumps.push(tokio::spawn(pump_output(pipe, channel, output.clone())));
        }
    }
    drop(output);
    let stoppers: Vec<_> = pumps.iter().map(|pump| pump.abort_handle()).collect();
    let mut client = tokio::spawn(feed_process(events, session.stdin, session.control.clone()));

    let mut exit = session.exit;
    let exited = tokio::select! {
        exited = &mut exit => exited,
        _ = &mut client => {
            // Nobody can see the process's output or end its input any more: it is
            // killed with all it started (a terminal's hangup would reach those, a
            // pipe's end does not), and the exit waiter lets the shim forget it.
            if let Err(error) = session.control.kill_all().await {
                tracing::debug!(%error, "killing an exec whose client went away");
            }
            stoppers.iter().for_each(|pump| pump.abort());
            return ExecEnd::ClientGone;
        }
    };
    client.abort();
    let drained = async {
        for pump in pumps {
            let _ = pump.await;
        }
    };
    if tokio::time::timeout(OUTPUT_DRAIN, drained).await.is_err() {
        stoppers.iter().for_each(|pump| pump.abort());
    }
    match exited {
        Ok(Ok(code)) => ExecEnd::Exited(code),
        Ok(Err(error)) => ExecEnd::Failed(format!("waiting for the process: {error}")),
        Err(_) => ExecEnd::Failed("the process's exit status was lost".into()),
    }
}

async fn pump_output(mut pipe: pipe::Receiver, channel: u8, output: mpsc::Sender<(u8, Bytes)>) {
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(count) => {
                if output.send((channel, Bytes::copy_from_slice(&buffer[..count]))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Applies the client's events to the process until the client goes away; its
/// input ends then.
async fn feed_process(mut events: mpsc::Receiver<ClientEvent>, mut stdin: Option<pipe::Sender>, control: ExecControl) {
    while let Some(event) = events.recv().await {
        match event {
            ClientEvent::Stdin(data) => {
                if let Some(pipe) = stdin.as_mut()
                    && pipe.write_all(&data).await.is_err()
                {
                    stdin = None;
                }
            }
            ClientEvent::Resize(size) => {
                if let Err(error) = control.resize(size.width.into(), size.height.into()).await {
                    tracing::debug!(%error, "resizing an exec terminal");
                }
            }
            ClientEvent::CloseStdin => {
                if let Some(pipe) = stdin.take()
                    && let Err(error) = close_stdin(&control, pipe).await
                {
                    tracing::debug!(%error, "closing an exec's stdin");
                }
            }
        }
    }
    if let Some(pipe) = stdin.take() {
        let _ = close_stdin(&control, pipe).await;
    }
}

/// Closes this end of the stdin FIFO, whose bytes stay in it for the shim, then
/// has the shim pass them on and end the process's stdin.
async fn close_stdin(control: &ExecControl, pipe: pipe::Sender) -> Result<(), crate::shim::ShimError> {
    drop(pipe);
    control.close_stdin().await
}

/// Attach: input goes to the container's stdin FIFO, output is the shim's live
/// copy of the container's, from now on.
async fn run_attach(pods: PodService, request: ExecRequest, mut events: mpsc::Receiver<ClientEvent>, output: mpsc::Sender<(u8, Bytes)>) -> ExecEnd {
    let streams = ExecStreams { stdin: request.stdin, stdout: request.stdout, stderr: request.stderr };
    let (container, mut attachment) = match pods.attach(&request.container_id, streams).await {
        Ok(attached) => attached,
        Err(error) => return ExecEnd::Failed(error.to_string()),
    };
    let mut pumps = Vec::new();
    for (channel, pipe) in [(channel::STDOUT, attachment.stdout.take()), (channel::STDERR, attachment.stderr.take())] {
        if let Some(pipe) = pipe {
            pumps.push(tokio::spawn(pump_output(pipe, channel, output.clone())));
        }
    }
    drop(output);
    let stoppers: Vec<_> = pumps.iter().map(|pump| pump.abort_handle()).collect();
    let stdin_once = container.spec.stdin_once;
    let mut exit = std::mem::replace(&mut attachment.exit, tokio::sync::oneshot::channel().1);
    loop {
        tokio::select! {
            _ = &mut exit => break,
            event = events.recv() => match event {
                Some(ClientEvent::Stdin(data)) => {
                    if let Some(pipe) = attachment.stdin.as_mut()
                        && pipe.write_all(&data).await.is_err()
                    {
                        attachment.stdin = None;
                    }
                }
                Some(ClientEvent::Resize(size)) => {
                    let _ = attachment.resize(size.width.into(), size.height.into()).await;
                }
                Some(ClientEvent::CloseStdin) => {
                    if stdin_once && attachment.stdin.is_some() {
                        let _ = attachment.close_stdin().await;
                    }
                    attachment.stdin = None;
                }
                None => {
                    // Detaching leaves the container running; with stdin_once its
                    // stdin ends with the first attacher's.
                    if stdin_once && attachment.stdin.is_some() {
                        let _ = attachment.close_stdin().await;
                    }
                    stoppers.iter().for_each(|pump| pump.abort());
                    return ExecEnd::ClientGone;
                }
            },
        }
    }
    // The shim reports the exit once the output is copied out, which ends the pipes.
    let drained = futures::future::join_all(pumps);
    if tokio::time::timeout(OUTPUT_DRAIN, drained).await.is_err() {
        stoppers.iter().for_each(|pump| pump.abort());
    }
    // Kubernetes reports an attach that ended with its container as a success.
    ExecEnd::Exited(0)
}
