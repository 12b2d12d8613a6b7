//! Server side of a SPDY/3 session, as Kubernetes clients use it: the client opens
//! every stream (odd ids), the server replies and exchanges data on them.
//!
//! Flow control. SPDY/3 gives every stream a 64 KiB window. This session advertises
//! that window and sends WINDOW_UPDATE as the application reads, and it never buffers
//! more than the window per stream: when a peer ignores the window (moby/spdystream,
//! used by kubectl, crictl and kubelet, neither sends WINDOW_UPDATE nor honours it),
//! the session stops reading the socket until the stream's reader catches up, so TCP
//! pushes back. In the other direction, waiting for the peer's WINDOW_UPDATE would
//! stall such clients after 64 KiB forever, so honouring the peer's window is a
//! choice (`SessionConfig::enforce_peer_window`); without it, writes are bounded by
//! the outgoing queue and the socket.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

use super::frame::{
    self, Frame, FrameError, MAX_STREAM_ID, SETTINGS_INITIAL_WINDOW_SIZE, goaway_status, rst_status,
};
use super::headers::{HeaderDecoder, HeaderEncoder, HeaderError, HeaderList, header_value};

/// SPDY/3's initial per-stream window, in both directions.
pub const DEFAULT_WINDOW: u32 = 64 * 1024;
/// Writes are cut into data frames of at most this size so streams interleave.
const MAX_DATA_CHUNK: usize = 16 * 1024;
/// Frames the application may queue ahead of the socket; bounds the outgoing memory.
const OUTGOING_QUEUE: usize = 16;
/// Streams the client may open before the application accepts them.
const ACCEPT_QUEUE: usize = 32;

#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    /// Hold outgoing data until the peer's stream window allows it. Off by default:
    /// Kubernetes clients never open their windows (see the module documentation).
    pub enforce_peer_window: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("SPDY connection I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("malformed SPDY frame: {0}")]
    Frame(#[from] FrameError),
    #[error("malformed SPDY header block: {0}")]
    Headers(#[from] HeaderError),
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
}

enum Outbound {
    Frame(Frame),
    /// Headers are compressed by the writer so blocks enter the zlib context in the
    /// order they go on the wire.
    Reply {
        stream_id: u32,
        headers: HeaderList,
        fin: bool,
    },
    /// Ends the writer; with a status it first sends GOAWAY.
    Shutdown {
        goaway: Option<u32>,
    },
}

struct StreamState {
    received: VecDeque<Bytes>,
    received_len: usize,
    remote_fin: bool,
    local_fin: bool,
    reset: Option<u32>,
    /// Bytes the application consumed that the peer has not been credited for yet.
    unacknowledged: u32,
    send_window: i64,
    reader: Arc<Notify>,
    writer: Arc<Notify>,
}

struct State {
    streams: HashMap<u32, StreamState>,
    last_client_stream: u32,
    goaway_sent: bool,
    peer_initial_window: i64,
    closed: bool,
}

struct Inner {
    state: Mutex<State>,
    control: mpsc::UnboundedSender<Outbound>,
    /// Wakes the read loop when a full receive buffer drains or its stream goes away.
    space: Notify,
    config: SessionConfig,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send_control(&self, frame: Frame) {
        // Fails only once the writer is gone, when nothing can be sent anyway.
        let _ = self.control.send(Outbound::Frame(frame));
    }
}

/// One SPDY session on an upgraded connection. Dropping it and every `SpdyStream`
/// makes the driver send GOAWAY and finish.
pub struct SpdySession {
    inner: Arc<Inner>,
    incoming: mpsc::Receiver<SpdyStream>,
    /// The writer runs while any handle holds a sender; the session counts as one.
    _writer_alive: mpsc::Sender<Outbound>,
}

impl SpdySession {
    /// Starts a server session on `io` with the default configuration. The returned
    /// future drives the connection and must be polled (spawned) for anything to
    /// happen; it resolves when the peer closes the connection, on a protocol error,
    /// or once the session and all its streams are dropped.
    pub fn server<T>(
        io: T,
    ) -> (
        SpdySession,
        impl Future<Output = Result<(), SessionError>> + Send + 'static,
    )
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::server_with_config(io, SessionConfig::default())
    }

    pub fn server_with_config<T>(
        io: T,
        config: SessionConfig,
    ) -> (
        SpdySession,
        impl Future<Output = Result<(), SessionError>> + Send + 'static,
    )
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::channel(OUTGOING_QUEUE);
        let (incoming_tx, incoming_rx) = mpsc::channel(ACCEPT_QUEUE);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                streams: HashMap::new(),
                last_client_stream: 0,
                goaway_sent: false,
                peer_initial_window: i64::from(DEFAULT_WINDOW),
                closed: false,
            }),
            control: control_tx,
            space: Notify::new(),
            config,
        });
        let driver = drive(
            io,
            Arc::clone(&inner),
            control_rx,
            data_rx,
            data_tx.downgrade(),
            incoming_tx,
        );
        (
            SpdySession {
                inner,
                incoming: incoming_rx,
                _writer_alive: data_tx,
            },
            driver,
        )
    }

    /// The next stream the client opened; `None` once the client sent GOAWAY or the
    /// connection ended.
    pub async fn accept(&mut self) -> Option<SpdyStream> {
        self.incoming.recv().await
    }

    /// Tells the client no further streams will be accepted (GOAWAY with status OK);
    /// streams already open keep working. Streams the client opens afterwards are
    /// refused with RST_STREAM.
    pub fn goaway(&self) {
        let mut state = self.inner.lock();
        if state.goaway_sent || state.closed {
            return;
        }
        state.goaway_sent = true;
        let last_good_stream_id = state.last_client_stream;
        drop(state);
        self.inner.send_control(Frame::GoAway {
            last_good_stream_id,
            status: goaway_status::OK,
        });
    }
}

/// A stream the client opened. Reads and writes take `&self` so one task can read
/// while another writes (share it in an `Arc`); at most one task should read and one
/// write at a time. Dropping a stream whose local side is still open resets it with
/// CANCEL.
pub struct SpdyStream {
    pub id: u32,
    /// The SYN_STREAM headers; names are lowercase, repeated names appear repeatedly.
    pub headers: HeaderList,
    inner: Arc<Inner>,
    outgoing: mpsc::Sender<Outbound>,
    reader: Arc<Notify>,
    writer: Arc<Notify>,
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "SPDY connection closed")
}

fn reset_error(id: u32, status: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("SPDY stream {id} was reset with status {status}"),
    )
}

impl SpdyStream {
    /// First value of header `name` (case-insensitive) from the SYN_STREAM.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// Sends SYN_REPLY; with `fin` the server's side of the stream is closed at once.
    pub async fn reply(&self, headers: &[(String, String)], fin: bool) -> io::Result<()> {
        self.check_writable()?;
        if fin {
            self.mark_local_fin();
        }
        self.outgoing
            .send(Outbound::Reply {
                stream_id: self.id,
                headers: headers.to_vec(),
                fin,
            })
            .await
            .map_err(|_| closed_error())
    }

    /// Sends all of `data`, waiting for queue space (and for the peer's window when
    /// the session enforces it).
    pub async fn write(&self, data: &[u8]) -> io::Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let allowed = self
                .reserve_send_window(rest.len().min(MAX_DATA_CHUNK))
                .await?;
            let (chunk, tail) = rest.split_at(allowed);
            rest = tail;
            self.outgoing
                .send(Outbound::Frame(Frame::Data {
                    stream_id: self.id,
                    fin: false,
                    data: Bytes::copy_from_slice(chunk),
                }))
                .await
                .map_err(|_| closed_error())?;
        }
        Ok(())
    }

    /// Half-closes the server's side with an empty FIN data frame; reading goes on.
    pub async fn close(&self) -> io::Result<()> {
        self.check_writable()?;
        self.mark_local_fin();
        self.outgoing
            .send(Outbound::Frame(Frame::Data {
                stream_id: self.id,
                fin: true,
                data: Bytes::new(),
            }))
            .await
            .map_err(|_| closed_error())
    }

    /// Reads into `buf`; 0 means the client half-closed the stream (FIN). A reset
    /// stream gives `ConnectionReset`, a dead connection `ConnectionAborted`.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            {
                let mut state = self.inner.lock();
                let closed = state.closed;
                let Some(stream) = state.streams.get_mut(&self.id) else {
                    return Err(closed_error());
                };
                if let Some(status) = stream.reset {
                    return Err(reset_error(self.id, status));
                }
                if let Some(front) = stream.received.front_mut() {
                    let n = front.len().min(buf.len());
                    buf[..n].copy_from_slice(&front[..n]);
                    if n == front.len() {
                        stream.received.pop_front();
                    } else {
                        *front = front.slice(n..);
                    }
                    stream.received_len -= n;
                    stream.unacknowledged = stream.unacknowledged.saturating_add(n as u32);
                    let credit =
                        if !stream.remote_fin && stream.unacknowledged >= DEFAULT_WINDOW / 2 {
                            std::mem::take(&mut stream.unacknowledged)
                        } else {
                            0
                        };
                    drop(state);
                    if credit > 0 {
                        self.inner.send_control(Frame::WindowUpdate {
                            stream_id: self.id,
                            delta: credit,
                        });
                    }
                    self.inner.space.notify_one();
                    return Ok(n);
                }
                if stream.remote_fin {
                    return Ok(0);
                }
                if closed {
                    return Err(closed_error());
                }
            }
            self.reader.notified().await;
        }
    }

    /// Aborts the stream in both directions with RST_STREAM `status` (see
    /// `frame::rst_status`).
    pub fn reset(&self, status: u32) {
        let mut state = self.inner.lock();
        if let Some(stream) = state.streams.get_mut(&self.id) {
            if stream.reset.is_some() {
                return;
            }
            stream.reset = Some(status);
        }
        drop(state);
        self.inner.send_control(Frame::RstStream {
            stream_id: self.id,
            status,
        });
        self.reader.notify_one();
        self.writer.notify_one();
    }

    fn check_writable(&self) -> io::Result<()> {
        let state = self.inner.lock();
        if state.closed {
            return Err(closed_error());
        }
        let Some(stream) = state.streams.get(&self.id) else {
            return Err(closed_error());
        };
        if let Some(status) = stream.reset {
            return Err(reset_error(self.id, status));
        }
        if stream.local_fin {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("SPDY stream {} is already closed for writing", self.id),
            ));
        }
        Ok(())
    }

    fn mark_local_fin(&self) {
        if let Some(stream) = self.inner.lock().streams.get_mut(&self.id) {
            stream.local_fin = true;
        }
    }

    /// Takes up to `wanted` bytes of send window, waiting while it is exhausted.
    async fn reserve_send_window(&self, wanted: usize) -> io::Result<usize> {
        loop {
            self.check_writable()?;
            {
                let mut state = self.inner.lock();
                let enforce = self.inner.config.enforce_peer_window;
                let Some(stream) = state.streams.get_mut(&self.id) else {
                    return Err(closed_error());
                };
                if !enforce {
                    return Ok(wanted);
                }
                if stream.send_window > 0 {
                    let allowed = (stream.send_window as usize).min(wanted);
                    stream.send_window -= allowed as i64;
                    return Ok(allowed);
                }
            }
            self.writer.notified().await;
        }
    }
}

impl Drop for SpdyStream {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        let closed = state.closed;
        let Some(stream) = state.streams.remove(&self.id) else {
            return;
        };
        drop(state);
        self.inner.space.notify_one();
        if !closed && !stream.local_fin && stream.reset.is_none() {
            self.inner.send_control(Frame::RstStream {
                stream_id: self.id,
                status: rst_status::CANCEL,
            });
        }
    }
}

async fn drive<T>(
    io: T,
    inner: Arc<Inner>,
    control_rx: mpsc::UnboundedReceiver<Outbound>,
    data_rx: mpsc::Receiver<Outbound>,
    data_tx: mpsc::WeakSender<Outbound>,
    incoming_tx: mpsc::Sender<SpdyStream>,
) -> Result<(), SessionError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read_half, write_half) = tokio::io::split(io);
    let reading = read_loop(read_half, Arc::clone(&inner), data_tx, incoming_tx);
    let writing = write_loop(write_half, &inner, control_rx, data_rx);
    tokio::pin!(reading, writing);
    let result = tokio::select! {
        read_result = &mut reading => {
            // The read loop has told the writer to stop; let it send GOAWAY first.
            let write_result = writing.await;
            read_result.and(write_result)
        }
        write_result = &mut writing => write_result,
    };
    let mut state = inner.lock();
    state.closed = true;
    for stream in state.streams.values() {
        stream.reader.notify_one();
        stream.writer.notify_one();
    }
    drop(state);
    inner.space.notify_one();
    if let Err(error) = &result {
        tracing::debug!(%error, "SPDY session ended with an error");
    }
    result
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    inner: &Inner,
    mut control_rx: mpsc::UnboundedReceiver<Outbound>,
    mut data_rx: mpsc::Receiver<Outbound>,
) -> Result<(), SessionError> {
    let mut encoder = HeaderEncoder::new();
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut data_open = true;
    loop {
        let message = tokio::select! {
            biased;
            Some(message) = control_rx.recv() => message,
            message = data_rx.recv(), if data_open => match message {
                Some(message) => message,
                None => {
                    // Every handle is gone: nobody can use the session any more.
                    data_open = false;
                    Outbound::Shutdown { goaway: Some(goaway_status::OK) }
                }
            },
            else => Outbound::Shutdown { goaway: None },
        };
        let mut shutdown = None;
        encode_outbound(message, &mut encoder, &mut out, &mut shutdown)?;
        // Batch whatever else is already queued into the same write.
        while shutdown.is_none() && out.len() < 64 * 1024 {
            let next = match control_rx.try_recv() {
                Ok(message) => message,
                Err(_) => match data_rx.try_recv() {
                    Ok(message) => message,
                    Err(_) => break,
                },
            };
            encode_outbound(next, &mut encoder, &mut out, &mut shutdown)?;
        }
        if let Some(goaway) = shutdown {
            while let Ok(message) = control_rx.try_recv() {
                let mut ignored = None;
                encode_outbound(message, &mut encoder, &mut out, &mut ignored)?;
            }
            let (already_sent, last_good_stream_id) = {
                let state = inner.lock();
                (state.goaway_sent, state.last_client_stream)
            };
            if let Some(status) = goaway.filter(|_| !already_sent) {
                Frame::GoAway {
                    last_good_stream_id,
                    status,
                }
                .encode(&mut out)?;
            }
            writer.write_all(&out).await?;
            writer.flush().await?;
            // The peer may already be gone; the session is over either way.
            let _ = writer.shutdown().await;
            return Ok(());
        }
        writer.write_all(&out).await?;
        writer.flush().await?;
        out.clear();
    }
}

fn encode_outbound(
    message: Outbound,
    encoder: &mut HeaderEncoder,
    out: &mut BytesMut,
    shutdown: &mut Option<Option<u32>>,
) -> Result<(), SessionError> {
    match message {
        Outbound::Frame(frame) => frame.encode(out)?,
        Outbound::Reply {
            stream_id,
            headers,
            fin,
        } => {
            let header_block = encoder.encode(&headers)?;
            Frame::SynReply {
                stream_id,
                fin,
                header_block,
            }
            .encode(out)?;
        }
        Outbound::Shutdown { goaway } => *shutdown = Some(goaway),
    }
    Ok(())
}

async fn read_loop<R: AsyncRead + Unpin>(
    reader: R,
    inner: Arc<Inner>,
    data_tx: mpsc::WeakSender<Outbound>,
    incoming_tx: mpsc::Sender<SpdyStream>,
) -> Result<(), SessionError> {
    let result = read_frames(reader, &inner, data_tx, incoming_tx).await;
    let goaway = match &result {
        Ok(()) | Err(SessionError::Io(_)) => None,
        Err(_) => Some(goaway_status::PROTOCOL_ERROR),
    };
    let _ = inner.control.send(Outbound::Shutdown { goaway });
    result
}

async fn read_frames<R: AsyncRead + Unpin>(
    mut reader: R,
    inner: &Arc<Inner>,
    data_tx: mpsc::WeakSender<Outbound>,
    incoming_tx: mpsc::Sender<SpdyStream>,
) -> Result<(), SessionError> {
    let mut decoder = HeaderDecoder::new();
    let mut incoming = Some(incoming_tx);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        while let Some(frame) = frame::parse(&mut buf)? {
            handle_frame(frame, inner, &mut decoder, &data_tx, &mut incoming).await?;
        }
        if reader.read_buf(&mut buf).await? == 0 {
            if buf.is_empty() {
                return Ok(());
            }
            return Err(SessionError::Protocol(format!(
                "connection ended inside a frame ({} bytes pending)",
                buf.len()
            )));
        }
    }
}

async fn handle_frame(
    frame: Frame,
    inner: &Arc<Inner>,
    decoder: &mut HeaderDecoder,
    data_tx: &mpsc::WeakSender<Outbound>,
    incoming: &mut Option<mpsc::Sender<SpdyStream>>,
) -> Result<(), SessionError> {
    match frame {
        Frame::SynStream {
            stream_id,
            fin,
            unidirectional,
            header_block,
            ..
        } => {
            // Decode first: the zlib context must see every block, even refused ones.
            let headers = decoder.decode(&header_block)?;
            let accepted = incoming.clone();
            if let Some((stream, incoming_tx)) = open_stream(
                inner,
                data_tx,
                accepted,
                stream_id,
                headers,
                fin,
                unidirectional,
            )? {
                // A dropped session drops the stream here, which refuses it with CANCEL.
                let _ = incoming_tx.send(stream).await;
            }
        }
        Frame::Data {
            stream_id,
            fin,
            data,
        } => receive_data(inner, stream_id, fin, data).await,
        Frame::SynReply {
            stream_id,
            header_block,
            ..
        } => {
            decoder.decode(&header_block)?;
            tracing::debug!(stream_id, "ignoring SYN_REPLY: this side opens no streams");
            inner.send_control(Frame::RstStream {
                stream_id,
                status: rst_status::INVALID_STREAM,
            });
        }
        Frame::Headers {
            stream_id,
            fin,
            header_block,
        } => {
            decoder.decode(&header_block)?;
            if fin {
                receive_data(inner, stream_id, true, Bytes::new()).await;
            }
        }
        Frame::RstStream { stream_id, status } => {
            let mut state = inner.lock();
            if let Some(stream) = state.streams.get_mut(&stream_id) {
                stream.reset = Some(status);
                stream.reader.notify_one();
                stream.writer.notify_one();
            }
        }
        Frame::Settings { entries, .. } => {
            let mut state = inner.lock();
            for entry in entries
                .iter()
                .filter(|entry| entry.id == SETTINGS_INITIAL_WINDOW_SIZE)
            {
                let new_window = i64::from(entry.value.min(MAX_STREAM_ID));
                let change = new_window - state.peer_initial_window;
                state.peer_initial_window = new_window;
                for stream in state.streams.values_mut() {
                    stream.send_window += change;
                    stream.writer.notify_one();
                }
            }
        }
        Frame::Ping { id } => {
            // Odd ids are the client's own pings; even ones would answer ours, and this
            // side sends none.
            if id % 2 == 1 {
                inner.send_control(Frame::Ping { id });
            }
        }
        Frame::GoAway { .. } => {
            *incoming = None;
        }
        Frame::WindowUpdate { stream_id, delta } => {
            // Stream 0 is SPDY/3.1's session window; per-stream windows already bound
            // what this side sends.
            if stream_id == 0 {
                return Ok(());
            }
            let mut state = inner.lock();
            let Some(stream) = state.streams.get_mut(&stream_id) else {
                return Ok(());
            };
            stream.send_window += i64::from(delta);
            if stream.send_window > i64::from(MAX_STREAM_ID) && stream.reset.is_none() {
                stream.reset = Some(rst_status::FLOW_CONTROL_ERROR);
                stream.reader.notify_one();
                stream.writer.notify_one();
                drop(state);
                inner.send_control(Frame::RstStream {
                    stream_id,
                    status: rst_status::FLOW_CONTROL_ERROR,
                });
                return Ok(());
            }
            stream.writer.notify_one();
        }
    }
    Ok(())
}

/// Registers a stream the client opened; `None` when it was refused.
fn open_stream(
    inner: &Arc<Inner>,
    data_tx: &mpsc::WeakSender<Outbound>,
    incoming: Option<mpsc::Sender<SpdyStream>>,
    stream_id: u32,
    headers: HeaderList,
    fin: bool,
    unidirectional: bool,
) -> Result<Option<(SpdyStream, mpsc::Sender<SpdyStream>)>, SessionError> {
    let outgoing = data_tx.upgrade();
    let mut state = inner.lock();
    if stream_id.is_multiple_of(2) || stream_id <= state.last_client_stream {
        return Err(SessionError::Protocol(format!(
            "SYN_STREAM with stream id {stream_id} after {}; client streams must be odd and increasing",
            state.last_client_stream
        )));
    }
    state.last_client_stream = stream_id;
    let (Some(incoming_tx), Some(outgoing)) = (incoming.filter(|_| !state.goaway_sent), outgoing)
    else {
        drop(state);
        inner.send_control(Frame::RstStream {
            stream_id,
            status: rst_status::REFUSED_STREAM,
        });
        return Ok(None);
    };
    let reader = Arc::new(Notify::new());
    let writer = Arc::new(Notify::new());
    let send_window = state.peer_initial_window;
    state.streams.insert(
        stream_id,
        StreamState {
            received: VecDeque::new(),
            received_len: 0,
            remote_fin: fin,
            local_fin: unidirectional,
            reset: None,
            unacknowledged: 0,
            send_window,
            reader: Arc::clone(&reader),
            writer: Arc::clone(&writer),
        },
    );
    drop(state);
    let stream = SpdyStream {
        id: stream_id,
        headers,
        inner: Arc::clone(inner),
        outgoing,
        reader,
        writer,
    };
    Ok(Some((stream, incoming_tx)))
}

/// Queues received data for the stream's reader, waiting while its buffer already
/// holds a full window (only a peer ignoring flow control gets that far).
async fn receive_data(inner: &Arc<Inner>, stream_id: u32, fin: bool, data: Bytes) {
    loop {
        {
            let mut state = inner.lock();
            let last_client_stream = state.last_client_stream;
            let Some(stream) = state.streams.get_mut(&stream_id) else {
                drop(state);
                // Data for a stream this side already dropped is expected in flight;
                // for one never opened it is a stream error.
                if stream_id.is_multiple_of(2) || stream_id > last_client_stream {
                    inner.send_control(Frame::RstStream {
                        stream_id,
                        status: rst_status::INVALID_STREAM,
                    });
                }
                return;
            };
            if stream.reset.is_some() {
                return;
            }
            if stream.remote_fin {
                stream.reset = Some(rst_status::STREAM_ALREADY_CLOSED);
                stream.reader.notify_one();
                stream.writer.notify_one();
                drop(state);
                inner.send_control(Frame::RstStream {
                    stream_id,
                    status: rst_status::STREAM_ALREADY_CLOSED,
                });
                return;
            }
            if data.is_empty() || stream.received_len < DEFAULT_WINDOW as usize {
                stream.received_len += data.len();
                if !data.is_empty() {
                    stream.received.push_back(data);
                }
                stream.remote_fin = fin;
                stream.reader.notify_one();
                return;
            }
        }
        inner.space.notified().await;
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
