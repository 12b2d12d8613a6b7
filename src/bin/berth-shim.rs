//! berth-shim: supervises the containers of one pod for berthd. See `berth::shim`.

use std::path::PathBuf;
use std::process::ExitCode;

use berth::shim::server::{ShimConfig, launch};
use clap::Parser;

/// One pod's container supervisor. It serves containerd's shim v2 Task API
/// (ttrpc) on STATE_DIR/shim.sock, runs containers with an OCI runtime, writes
/// their CRI logs and keeps their exit status. It forks into the background,
/// prints the socket address once it serves and keeps running when its caller
/// exits; it leaves after a Shutdown call once no container is left. Its own log
/// is STATE_DIR/shim.log, its pid is in STATE_DIR/shim.pid.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The pod sandbox id (names the shim in its log).
    #[arg(long)]
    id: String,
    /// The pod's shim directory: socket, pid file, log, per-container state.
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// OCI runtime binary with runc's command line (runc, crun, youki).
    #[arg(long, value_name = "PATH", default_value = "/usr/sbin/runc")]
    runtime: PathBuf,
    /// The OCI runtime's state directory, passed as its --root.
    #[arg(long, value_name = "DIR", default_value = "/run/berth/runc")]
    runtime_root: PathBuf,
    /// Serve in the foreground, attached to the terminal, instead of daemonizing.
    #[arg(long)]
    foreground: bool,
    /// Log debug messages too.
    #[arg(long)]
    debug: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    launch(ShimConfig {
        id: args.id,
        state_dir: args.state_dir,
        runtime: args.runtime,
        runtime_root: args.runtime_root,
        foreground: args.foreground,
        debug: args.debug,
    })
}
