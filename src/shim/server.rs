//! The shim process: daemonizing, the socket and pid file, and the serving loop.
//!
//! The shim runs on a current-thread tokio runtime: one thread serves ttrpc, reaps,
//! copies stdio and runs the runtime's commands, which keeps an idle shim small
//! and makes spawning and reaping race-free (nothing reaps while a command is
//! being spawned).

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::ttrpc::r#async::Server;
use containerd_shim_protos::ttrpc::r#async::transport::Listener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

use super::reaper::Reaper;
use super::runtime::RuncCli;
use super::service::TaskService;
use super::{LOG_FILE, PID_FILE, SOCKET_FILE};

/// What the shim serves and with which runtime.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    /// The pod this shim serves; it only names the shim in its log.
    pub id: String,
    /// The pod's shim directory: socket, pid file, log and per-container files.
    pub state_dir: PathBuf,
    /// The OCI runtime binary (runc, or crun/youki, which share its command line).
    pub runtime: PathBuf,
    /// The runtime's state root (`--root`).
    pub runtime_root: PathBuf,
    /// Serve in this process, attached to the caller, instead of daemonizing.
    pub foreground: bool,
    pub debug: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("a shim already serves {0}")]
    AlreadyServed(PathBuf),
    #[error("runtime {0}: not an executable file")]
    Runtime(PathBuf),
    #[error("{0}")]
    Setup(String),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ServeError + '_ {
    move |source| ServeError::Io { path: path.to_path_buf(), source }
}

/// Runs the shim: checks the configuration and binds the socket, then forks the
/// daemon and returns once it serves (or failed to), so the caller can connect
/// as soon as this process exits with success.
pub fn launch(mut config: ShimConfig) -> ExitCode {
    let listener = match prepare(&mut config) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("berth-shim: {error}");
            return ExitCode::FAILURE;
        }
    };
    if config.foreground {
        init_logging(config.debug);
        return finish(run(config, listener, None));
    }
    let (mut ready_reader, ready_writer) = match io::pipe() {
        Ok(pipe) => pipe,
        Err(error) => {
            eprintln!("berth-shim: creating the readiness pipe: {error}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: no other thread exists yet, so the child may go on running Rust code.
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("berth-shim: fork: {}", io::Error::last_os_error());
            ExitCode::FAILURE
        }
        0 => {
            drop(ready_reader);
            let code = match daemonize(&config) {
                Ok(()) => {
                    init_logging(config.debug);
                    finish(run(config, listener, Some(ready_writer)))
                }
                Err(error) => {
                    let _ = writeln!(&ready_writer, "{error}");
                    ExitCode::FAILURE
                }
            };
            std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
        }
        _daemon => {
            drop(ready_writer);
            drop(listener);
            let mut report = String::new();
            let _ = ready_reader.read_to_string(&mut report);
            match report.trim() {
                READY => {
                    println!("unix://{}", config.state_dir.join(SOCKET_FILE).display());
                    ExitCode::SUCCESS
                }
                "" => {
                    eprintln!("berth-shim: the shim exited while starting; see {}", config.state_dir.join(LOG_FILE).display());
                    ExitCode::FAILURE
                }
                error => {
                    eprintln!("berth-shim: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

const READY: &str = "ready";

fn finish(result: Result<(), ServeError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "shim failed");
            ExitCode::FAILURE
        }
    }
}

/// Checks the configuration, makes the state directory and binds the socket.
fn prepare(config: &mut ShimConfig) -> Result<UnixListener, ServeError> {
    config.state_dir = std::path::absolute(&config.state_dir).map_err(io_error(&config.state_dir))?;
    config.runtime_root = std::path::absolute(&config.runtime_root).map_err(io_error(&config.runtime_root))?;
    let runtime_is_executable = std::fs::metadata(&config.runtime).map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0);
    if !runtime_is_executable.unwrap_or(false) {
        return Err(ServeError::Runtime(config.runtime.clone()));
    }
    std::fs::create_dir_all(&config.state_dir).map_err(io_error(&config.state_dir))?;
    let socket = config.state_dir.join(SOCKET_FILE);
    if socket.exists() {
        if UnixStream::connect(&socket).is_ok() {
            return Err(ServeError::AlreadyServed(socket));
        }
        std::fs::remove_file(&socket).map_err(io_error(&socket))?;
    }
    // Nobody but root may talk to the shim: the socket is created 0600.
    let previous = rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&socket);
    rustix::process::umask(previous);
    let listener = bound.map_err(io_error(&socket))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(io_error(&socket))?;
    Ok(listener)
}

/// Detaches the forked shim: its own session, stdio on /dev/null and the log
/// file, and child subreaper, so container processes are reparented to it.
fn daemonize(config: &ShimConfig) -> Result<(), ServeError> {
    rustix::process::setsid().map_err(|error| ServeError::Setup(format!("setsid: {error}")))?;
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").map_err(io_error(Path::new("/dev/null")))?;
    let log_path = config.state_dir.join(LOG_FILE);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io_error(&log_path))?;
    for (source, target) in [(&null, libc::STDIN_FILENO), (&null, libc::STDOUT_FILENO), (&log, libc::STDERR_FILENO)] {
        // SAFETY: dup2 onto the standard descriptors, which nothing else holds as owned.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(source), target) } < 0 {
            return Err(ServeError::Setup(format!("redirecting stdio: {}", io::Error::last_os_error())));
        }
    }
    std::env::set_current_dir("/").map_err(io_error(Path::new("/")))?;
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|error| ServeError::Setup(format!("becoming a child subreaper: {error}")))?;
    Ok(())
}

fn init_logging(debug: bool) {
    let level = if debug { tracing::Level::DEBUG } else { tracing::Level::INFO };
    tracing_subscriber::fmt().with_max_level(level).with_ansi(false).with_writer(io::stderr).init();
}

fn run(config: ShimConfig, listener: UnixListener, ready: Option<io::PipeWriter>) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ServeError::Setup(format!("starting the runtime: {error}")))?;
    let served = runtime.block_on(serve(config, listener, ready));
    // Copy loops of processes still running stay parked; don't wait for them.
    runtime.shutdown_background();
    served
}

async fn serve(config: ShimConfig, listener: UnixListener, ready: Option<io::PipeWriter>) -> Result<(), ServeError> {
    let setup = |what: &str, error: io::Error| ServeError::Setup(format!("{what}: {error}"));
    // SIGCHLD is watched before the first child can exist.
    let sigchld = signal(SignalKind::child()).map_err(|error| setup("watching SIGCHLD", error))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|error| setup("watching SIGTERM", error))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|error| setup("watching SIGINT", error))?;
    let reaper = Reaper::new();
    tokio::spawn(reaper.clone().run(sigchld));

    let state_dir = config.state_dir.clone();
    let runtime = RuncCli::new(config.runtime.clone(), config.runtime_root.clone(), state_dir.clone(), reaper.clone());
    let exit_requested = Arc::new(Notify::new());
    let service = TaskService::new(runtime, reaper, state_dir.clone(), exit_requested.clone());
    let socket = state_dir.join(SOCKET_FILE);
    let listener = Listener::try_from(listener).map_err(io_error(&socket))?;
    let mut server = Server::new().add_listener(listener).register_service(service.services());
    server.start().await.map_err(|error| ServeError::Setup(format!("serving ttrpc: {error}")))?;

    let pid_path = state_dir.join(PID_FILE);
    write_atomically(&pid_path, format!("{}\n", std::process::id()).as_bytes()).map_err(io_error(&pid_path))?;
    if let Some(mut ready) = ready {
        let _ = writeln!(ready, "{READY}");
    }
    tracing::info!(pod = %config.id, socket = %socket.display(), runtime = %config.runtime.display(), "berth-shim serving");

    let reason = tokio::select! {
        _ = exit_requested.notified() => "shutdown requested",
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(reason, "berth-shim exiting");
    // Lets the Shutdown reply go out, without waiting on clients that keep calls open.
    let _ = tokio::time::timeout(Duration::from_millis(500), server.shutdown()).await;
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&pid_path);
    Ok(())
}

/// Writes a file so readers see all or nothing (see [`crate::durable`]).
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    crate::durable::write_file(path, contents, 0o644)
}
