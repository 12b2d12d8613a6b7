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
            // Kubernetes leaves the process running when its client goes away; its
            // stdin is closed by now, and a terminal is hung up, whose shell would
            // otherwise wait for input forever.
            if request.tty {
                let _ = session.control.signal(libc::SIGHUP as u32).await;
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
                    && let Err(error) = control.close_stdin(Some(&pipe)).await
                {
                    tracing::debug!(%error, "closing an exec's stdin");
                }
            }
        }
    }
    if let Some(pipe) = stdin.take() {
        let _ = control.close_stdin(Some(&pipe)).await;
    }
}

/// Attach: input goes to the container's stdin FIFO, output comes from following
/// the container's CRI log (the shim writes output there only), from now on.
async fn run_attach(pods: PodService, request: ExecRequest, mut events: mpsc::Receiver<ClientEvent>, output: mpsc::Sender<(u8, Bytes)>) -> ExecEnd {
    let (container, mut attachment) = match pods.attach(&request.container_id, request.stdin).await {
        Ok(attached) => attached,
        Err(error) => return ExecEnd::Failed(error.to_string()),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The log is opened at its end before any input goes in, so that the output
    // the input causes is never missed.
    let log = match (&container.log_path, request.stdout || request.stderr) {
        (Some(path), true) => match open_at_end(path).await {
            Ok(log) => Some(log),
            Err(error) => return ExecEnd::Failed(format!("following the log {}: {error}", path.display())),
        },
        _ => None,
    };
    let follower = log.map(|log| {
        let filter = LogFilter { tty: request.tty, stdout: request.stdout, stderr: request.stderr };
        tokio::spawn(follow_log(log, filter, output, stopped))
    });
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
                    if let Some(follower) = follower {
                        follower.abort();
                    }
                    return ExecEnd::ClientGone;
                }
            },
        }
    }
    let _ = stop.send(true);
    if let Some(follower) = follower {
        let _ = tokio::time::timeout(OUTPUT_DRAIN, follower).await;
    }
    // Kubernetes reports an attach that ended with its container as a success.
    ExecEnd::Exited(0)
}

/// Which log entries an attacher gets, on which channel.
struct LogFilter {
    tty: bool,
    stdout: bool,
    stderr: bool,
}

/// How often a followed log is checked for new entries.
const LOG_POLL: Duration = Duration::from_millis(100);

/// Sends the log's new entries until `stopped` turns true and the file is read to its end.
async fn open_at_end(path: &std::path::Path) -> std::io::Result<tokio::fs::File> {
    use tokio::io::AsyncSeekExt;
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::End(0)).await?;
    Ok(file)
}

async fn follow_log(mut file: tokio::fs::File, filter: LogFilter, output: mpsc::Sender<(u8, Bytes)>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut pending = Vec::new();
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        let count = match file.read(&mut buffer).await {
            Ok(count) => count,
            Err(_) => return,
        };
        if count == 0 {
            if *stopped.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(LOG_POLL) => {}
                _ = stopped.changed() => {}
            }
            continue;
        }
        pending.extend_from_slice(&buffer[..count]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Some((channel, data)) = log_entry(&line[..end], &filter)
                && output.send((channel, data)).await.is_err()
            {
                return;
            }
        }
    }
}

/// One CRI log line (`<time> <stdout|stderr> <F|P> <message>`) as the bytes the
/// process wrote, if the filter wants its stream.
fn log_entry(line: &[u8], filter: &LogFilter) -> Option<(u8, Bytes)> {
    let mut fields = line.splitn(4, |&b| b == b' ');
    let (_time, stream, tag) = (fields.next()?, fields.next()?, fields.next()?);
    let message = fields.next().unwrap_or_default();
    let channel = match stream {
        b"stdout" if filter.stdout => channel::STDOUT,
        b"stderr" if filter.tty && filter.stdout => channel::STDOUT,
        b"stderr" if filter.stderr => channel::STDERR,
        _ => return None,
    };
    let mut data = message.to_vec();
    if tag == b"F" {
        data.push(b'\n');
    }
    Some((channel, Bytes::from(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_entries_become_the_bytes_written() {
        let both = LogFilter { tty: false, stdout: true, stderr: true };
        let entry = |line: &str, filter: &LogFilter| log_entry(line.as_bytes(), filter);
        assert_eq!(entry("2026-01-01T00:00:00.1Z stdout F hello world", &both), Some((channel::STDOUT, Bytes::from_static(b"hello world\n"))));
        assert_eq!(entry("2026-01-01T00:00:00.1Z stderr P part", &both), Some((channel::STDERR, Bytes::from_static(b"part"))));
        assert_eq!(entry("2026-01-01T00:00:00.1Z stdout F ", &both), Some((channel::STDOUT, Bytes::from_static(b"\n"))));
        let only_stdout = LogFilter { tty: false, stdout: true, stderr: false };
        assert_eq!(entry("t stderr F x", &only_stdout), None);
        let tty = LogFilter { tty: true, stdout: true, stderr: false };
        assert_eq!(entry("t stderr F x", &tty), Some((channel::STDOUT, Bytes::from_static(b"x\n"))));
        assert_eq!(entry("garbage", &both), None);
    }
}
