//! berthd: the node daemon. Serves CRI v1 on a unix socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use berth::config::Config;
use berth::images::ImageService;
use berth::sandbox::PodService;
use berth::store::Store;
use clap::{Parser, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// berth's node daemon: serves the Container Runtime Interface (CRI v1) on a unix
/// socket for kubelet and crictl.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML). Default: /etc/berth/config.toml when it exists,
    /// otherwise the embedded defaults (see docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Persistent data directory (content store, snapshots, metadata); overrides `root`.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Volatile state directory; overrides `state`.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Unix socket serving CRI; overrides `socket`.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log output format. The level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal, never into log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down");
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(root) = args.root {
        config.root = root;
    }
    if let Some(state) = args.state {
        config.state = state;
    }
    if let Some(socket) = args.socket {
        config.socket = socket;
    }
    // Before anything opens them: root and state 0711, their contents private,
    // also when an older berthd left them world-readable (see store::layout).
    berth::store::layout::prepare(&config.root, &config.state)?;
    let store = Arc::new(Store::open(&config.root.join("meta.redb"))?);
    let images = ImageService::open(&config, store.clone())?;
    let pods = PodService::open(&config, store.clone(), images.clone()).await?;
    tracing::info!(root = %config.root.display(), state = %config.state.display(), "berthd starting");
    let builder = berth::builder::executor::Builder::open(&config, images.clone(), pods.clone(), store.clone()).await?;
    berth::cri::serve(&config, images, pods, builder, shutdown_signal()).await?;
    tracing::info!("berthd stopped");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("starting the tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
