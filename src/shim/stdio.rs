//! Process stdio: where a process's output goes, where its input comes from, the
//! copy loops between them, and the console socket that receives a terminal.
//!
//! Output to a FIFO or a CRI log goes through a pipe the shim drains, so a process
//! never blocks or dies because its reader went away; output to a regular file or
//! nowhere is handed to the process directly. Input from a FIFO goes through a pipe
//! too, so that `CloseIO` can end it.
//!
//! Attachers get a live copy of a container's output beside its log: each
//! through a FIFO of its own, fed from a bounded queue, so that a slow or stalled
//! attacher is cut off instead of holding up the container, the log or the others.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustix::fs::OFlags;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::cri_log::{CriLogFile, LineSplitter, LogStream, MAX_LOG_LINE};

/// A non-blocking descriptor (pipe, FIFO or terminal master) driven by the reactor.
pub struct AsyncStream {
    fd: AsyncFd<OwnedFd>,
}

impl AsyncStream {
    pub fn new(fd: OwnedFd) -> io::Result<AsyncStream> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
        // SAFETY: the OwnedFd is valid and owned by the AsyncFd for its whole life.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(AsyncStream { fd })
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }

    /// Reads some bytes; 0 is the end of the stream. A terminal master whose other
    /// side is closed by every process reports EIO, which is its end of stream too.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| rustix::io::read(fd.get_ref(), &mut *buf).map_err(io::Error::from)) {
                Ok(Err(error)) if error.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads what is there without waiting; `WouldBlock` when nothing is.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        rustix::io::read(self.fd.get_ref(), buf).map_err(io::Error::from)
    }

    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Ok(written)) => buf = &buf[written..],
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// Where one output stream of a process goes.
pub enum Output {
    Discard,
    /// Nowhere but to the process's attachers: a container without a log still
    /// feeds CRI Attach, so its output goes through a pipe all the same.
    AttachersOnly,
    /// A regular file, appended to.
    File(File),
    /// A FIFO somebody reads, fed the raw bytes.
    Fifo(AsyncStream),
    /// The container's CRI log, one entry per line, tagged with the stream.
    Log(Arc<CriLogFile>, LogStream),
}

impl Output {
    /// Opens a stdio path of the task API: empty is nothing, a FIFO gets raw bytes
    /// (its reader must have it open already), anything else is a file appended to.
    pub fn open_raw(path: &str, field: &'static str) -> Result<Output, StdioError> {
        if path.is_empty() {
            return Ok(Output::Discard);
        }
        let error = |source| StdioError { field, path: PathBuf::from(path), source };
        if is_fifo(Path::new(path)) {
            let fifo = OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path).map_err(|source| {
                if source.raw_os_error() == Some(libc::ENXIO) {
                    error(io::Error::new(io::ErrorKind::NotConnected, "nobody reads this FIFO; open it for reading first"))
                } else {
                    error(source)
                }
            })?;
            return Ok(Output::Fifo(AsyncStream::new(fifo.into()).map_err(error)?));
        }
        let file = OpenOptions::new().create(true).append(true).mode(0o640).open(path).map_err(error)?;
        Ok(Output::File(file))
    }

    /// What the process itself gets for this stream, and the copy loop to run when
    /// the output goes through a pipe.
    pub fn attach(self) -> io::Result<(Option<OwnedFd>, Option<OutputCopy>)> {
        match self {
            Output::Discard => Ok((None, None)),
            Output::File(file) => Ok((Some(file.into()), None)),
            sink => {
                let (reader, writer) = io::pipe()?;
                let source = AsyncStream::new(reader.into())?;
                Ok((Some(writer.into()), Some(OutputCopy { source, sink, fanout: None })))
            }
        }
    }
}

/// A copy loop from a process's output to its destination (and its attachers);
/// it ends when every writer of the source is gone.
pub struct OutputCopy {
    pub source: AsyncStream,
    pub sink: Output,
    pub fanout: Option<(Arc<OutputFanout>, LogStream)>,
}

impl OutputCopy {
    /// Also copies the output, as `stream`, to whoever attaches to `fanout` while it runs.
    pub fn with_fanout(mut self, fanout: &Arc<OutputFanout>, stream: LogStream) -> OutputCopy {
        fanout.open(stream);
        self.fanout = Some((fanout.clone(), stream));
        self
    }

    pub async fn run(self) {
        let OutputCopy { source, mut sink, fanout } = self;
        let mut splitter = matches!(sink, Output::Log(..)).then(|| LineSplitter::new(MAX_LOG_LINE));
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let read = match source.read(&mut buf).await {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!(%error, "reading process output");
                    break;
                }
            };
            if let Some((fanout, stream)) = &fanout {
                fanout.send(*stream, &buf[..read]);
            }
            if let Err(error) = write_output(&mut sink, splitter.as_mut(), &buf[..read]).await {
                // The reader went away or the disk is full: keep draining the source,
                // so the process is not blocked by a destination it can't see.
                tracing::warn!(%error, "writing process output; discarding the rest");
                sink = Output::Discard;
            }
        }
        if let (Output::Log(log, stream), Some(splitter)) = (&sink, splitter.as_mut()) {
            splitter.finish(&mut |tag, message| {
                let _ = log.write_entry(*stream, tag, message);
            });
        }
        if let Some((fanout, stream)) = &fanout {
            fanout.close(*stream);
        }
    }
}

/// Output chunks (up to 32 KiB each) queued for one attacher's FIFO; an attacher
/// further behind than that is cut off.
const ATTACHER_QUEUE: usize = 64;

/// The attachers of one process's output streams.
#[derive(Default)]
pub struct OutputFanout {
    state: Mutex<FanoutState>,
}

#[derive(Default)]
struct FanoutState {
    /// Streams whose copy loop runs; only those take attachers.
    open: Vec<LogStream>,
    attached: Vec<(LogStream, mpsc::Sender<Bytes>)>,
}

impl OutputFanout {
    fn lock(&self) -> std::sync::MutexGuard<'_, FanoutState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn open(&self, stream: LogStream) {
        self.lock().open.push(stream);
    }

    /// Gives `fifo` the output of `stream` from now on, until the stream ends,
    /// the FIFO's reader goes away or falls too far behind. A stream that already
    /// ended (or never had a copy loop) closes the FIFO at once.
    pub fn attach(&self, stream: LogStream, fifo: AsyncStream) {
        let mut state = self.lock();
        if !state.open.contains(&stream) {
            return;
        }
        let (sender, mut queue) = mpsc::channel::<Bytes>(ATTACHER_QUEUE);
        state.attached.push((stream, sender));
        tokio::spawn(async move {
            while let Some(data) = queue.recv().await {
                if fifo.write_all(&data).await.is_err() {
                    return;
                }
            }
        });
    }

    fn send(&self, stream: LogStream, data: &[u8]) {
        let mut state = self.lock();
        if !state.attached.iter().any(|(attached, _)| *attached == stream) {
            return;
        }
        let data = Bytes::copy_from_slice(data);
        state.attached.retain(|(attached, sender)| *attached != stream || sender.try_send(data.clone()).is_ok());
    }

    /// The stream ended: its attachers get what is queued, then the end of their FIFO.
    fn close(&self, stream: LogStream) {
        let mut state = self.lock();
        state.open.retain(|open| *open != stream);
        state.attached.retain(|(attached, _)| *attached != stream);
    }
}

async fn write_output(sink: &mut Output, splitter: Option<&mut LineSplitter>, data: &[u8]) -> io::Result<()> {
    match sink {
        Output::Discard | Output::AttachersOnly => Ok(()),
        Output::File(file) => io::Write::write_all(file, data),
        Output::Fifo(fifo) => fifo.write_all(data).await,
        Output::Log(log, stream) => {
            let mut result = Ok(());
            if let Some(splitter) = splitter {
                splitter.feed(data, &mut |tag, message| {
                    if result.is_ok() {
                        result = log.write_entry(*stream, tag, message);
                    }
                });
            }
            result
        }
    }
}

/// Where a process's stdin comes from.
pub enum Input {
    None,
    File(File),
    /// A FIFO the client writes. It is opened read-write so that it never reports
    /// end-of-file between writers: stdin ends with `CloseIO` (or the process's exit).
    Fifo(AsyncStream),
}

impl Input {
    pub fn open(path: &str) -> Result<Input, StdioError> {
        if path.is_empty() {
            return Ok(Input::None);
        }
        let error = |source| StdioError { field: "stdin", path: PathBuf::from(path), source };
        if is_fifo(Path::new(path)) {
            let fifo = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path).map_err(error)?;
            return Ok(Input::Fifo(AsyncStream::new(fifo.into()).map_err(error)?));
        }
        Ok(Input::File(File::open(path).map_err(error)?))
    }

    pub fn attach(self) -> io::Result<(Option<OwnedFd>, Option<InputCopy>)> {
        match self {
            Input::None => Ok((None, None)),
            Input::File(file) => Ok((Some(file.into()), None)),
            Input::Fifo(source) => {
                let (reader, writer) = io::pipe()?;
                let sink = AsyncStream::new(writer.into())?;
                Ok((Some(reader.into()), Some(InputCopy { source, sink: Arc::new(sink) })))
            }
        }
    }
}

/// The copy loop into a process's stdin (a pipe, or a terminal master).
pub struct InputCopy {
    pub source: AsyncStream,
    pub sink: Arc<AsyncStream>,
}

impl InputCopy {
    /// Copies until the source ends, or until `finish` fires: then what the
    /// writers already put into the source still goes in before the copy ends.
    async fn run(self, mut finish: oneshot::Receiver<()>) {
        let mut buf = vec![0u8; 8 * 1024];
        let mut finishing = false;
        loop {
            let read = if finishing {
                match self.source.try_read(&mut buf) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                    read => read,
                }
            } else {
                tokio::select! {
                    read = self.source.read(&mut buf) => read,
                    _ = &mut finish => {
                        finishing = true;
                        continue;
                    }
                }
            };
            match read {
                Ok(0) => return,
                Ok(read) => {
                    if self.sink.write_all(&buf[..read]).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "reading process input");
                    return;
                }
            }
        }
    }
}

/// How long `CloseIO` lets pending input drain into a process that reads it slowly.
const STDIN_DRAIN: Duration = Duration::from_secs(5);

/// A running copy loop into a process's stdin; ending it closes the process's
/// stdin (unless the sink is a terminal, which others hold too).
pub struct StdinCopy {
    task: JoinHandle<()>,
    finish: oneshot::Sender<()>,
}

impl StdinCopy {
    pub fn spawn(copy: InputCopy) -> StdinCopy {
        let (finish, finishing) = oneshot::channel();
        StdinCopy { task: tokio::spawn(copy.run(finishing)), finish }
    }

    /// Stops at once: the process is gone.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Stops once what was written into the source before this call reached the
    /// process (`CloseIO`), or after STDIN_DRAIN if the process does not read it.
    pub async fn finish(self) {
        let StdinCopy { task, finish } = self;
        let _ = finish.send(());
        let stopper = task.abort_handle();
        if tokio::time::timeout(STDIN_DRAIN, task).await.is_err() {
            stopper.abort();
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{field} {path}: {source}")]
pub struct StdioError {
    pub field: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

fn is_fifo(path: &Path) -> bool {
    std::fs::metadata(path).map(|meta| meta.file_type().is_fifo()).unwrap_or(false)
}

/// The unix socket the runtime connects to, to hand over the master side of a
/// new process's pseudo-terminal. The socket file is removed when this is dropped.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn bind(path: PathBuf) -> io::Result<ConsoleSocket> {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        Ok(ConsoleSocket { path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn receive_master(&self) -> io::Result<OwnedFd> {
        let (stream, _) = self.listener.accept().await?;
        loop {
            stream.readable().await?;
            match stream.try_io(Interest::READABLE, || receive_fd(stream.as_raw_fd())) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Receives one descriptor passed with SCM_RIGHTS; the message text (the
/// terminal's name) is not needed.
fn receive_fd(socket: std::os::fd::RawFd) -> io::Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let mut iov = libc::iovec { iov_base: name.as_mut_ptr().cast(), iov_len: name.len() };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: the socket is a valid descriptor and the message points at live buffers.
    let received = unsafe { libc::recvmsg(socket, &mut message, libc::MSG_CMSG_CLOEXEC) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled msg_control; CMSG_* walk it within msg_controllen.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<libc::c_int>());
                return Ok(OwnedFd::from_raw_fd(fd));
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "the console socket message carried no descriptor"))
}

/// Sets the window size of a terminal (on its master side).
pub fn resize_terminal(master: &AsyncStream, width: u32, height: u32) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: height.min(u16::MAX as u32) as u16,
        ws_col: width.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is live.
    if unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
