//! berth-shim: supervises the containers of one pod for berthd. See `berth::shim`.
//!
//! One runs per pod, so its resident size counts once per pod: its six flags are
//! read by hand rather than through clap, whose code would be most of the binary's
//! text and stay resident after start-up.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use berth::shim::server::{ShimConfig, launch};

const USAGE: &str = "\
One pod's container supervisor. It serves containerd's shim v2 Task API (ttrpc) on
STATE_DIR/shim.sock, runs containers with an OCI runtime, writes their CRI logs and
keeps their exit status. It forks into the background, prints the socket address once
it serves and keeps running when its caller exits; it leaves after a Shutdown call once
no container is left. Its own log is STATE_DIR/shim.log, its pid is in STATE_DIR/shim.pid.

Usage: berth-shim --id ID --state-dir DIR [OPTIONS]

Options:
      --id <ID>              The pod sandbox id (names the shim in its log)
      --state-dir <DIR>      The pod's shim directory: socket, pid file, log, per-container state
      --runtime <PATH>       OCI runtime binary with runc's command line (runc, crun, youki)
                             [default: /usr/sbin/runc]
      --runtime-root <DIR>   The OCI runtime's state directory, passed as its --root
                             [default: /run/berth/runc]
      --foreground           Serve in the foreground, attached to the terminal, instead of daemonizing
      --debug                Log debug messages too
  -h, --help                 Print help
  -V, --version              Print version
";

enum Parsed {
    Run(ShimConfig),
    Help,
    Version,
}

fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, String> {
    let mut id = None;
    let mut state_dir = None;
    let mut runtime = PathBuf::from("/usr/sbin/runc");
    let mut runtime_root = PathBuf::from("/run/berth/runc");
    let (mut foreground, mut debug) = (false, false);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg.into_string().map_err(|arg| format!("argument {arg:?} is not UTF-8"))?;
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(OsString::from(value))),
            _ => (arg, None),
        };
        let mut value = |name: &str| {
            inline_value.clone().or_else(|| args.next()).ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--id" => id = Some(value("--id")?.into_string().map_err(|_| "--id is not UTF-8".to_string())?),
            "--state-dir" => state_dir = Some(PathBuf::from(value("--state-dir")?)),
            "--runtime" => runtime = PathBuf::from(value("--runtime")?),
            "--runtime-root" => runtime_root = PathBuf::from(value("--runtime-root")?),
            "--foreground" => foreground = true,
            "--debug" => debug = true,
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(Parsed::Run(ShimConfig {
        id: id.ok_or("--id is required")?,
        state_dir: state_dir.ok_or("--state-dir is required")?,
        runtime,
        runtime_root,
        foreground,
        debug,
    }))
}

fn main() -> ExitCode {
    match parse(std::env::args_os().skip(1)) {
        Ok(Parsed::Run(config)) => launch(config),
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Parsed::Version) => {
            println!("berth-shim {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("berth-shim: {error}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<Parsed, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn reads_flags_with_separate_and_inline_values() {
        let Ok(Parsed::Run(config)) =
            parse_args(&["--id", "pod1", "--state-dir=/run/s", "--runtime", "/bin/crun", "--foreground"])
        else {
            panic!("arguments refused");
        };
        assert_eq!(config.id, "pod1");
        assert_eq!(config.state_dir, PathBuf::from("/run/s"));
        assert_eq!(config.runtime, PathBuf::from("/bin/crun"));
        assert_eq!(config.runtime_root, PathBuf::from("/run/berth/runc"));
        assert!(config.foreground && !config.debug);
    }

    #[test]
    fn names_what_is_missing_or_unknown() {
        assert_eq!(parse_args(&["--id", "p"]).err().unwrap(), "--state-dir is required");
        assert_eq!(parse_args(&["--id"]).err().unwrap(), "--id needs a value");
        assert_eq!(parse_args(&["--id", "p", "--state-dir", "/s", "--bogus"]).err().unwrap(), "unexpected argument \"--bogus\"");
        assert!(matches!(parse_args(&["--help"]), Ok(Parsed::Help)));
    }
}
