//! The OCI runtime executor. [`OciRuntime`] is what the task service needs from a
//! runtime; [`RuncCli`] implements it by running a binary with runc's command
//! line, which crun and youki accept too, so another runtime is another path.

use std::ffi::OsString;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

use super::reaper::Reaper;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("running {binary}: {source}")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("{binary} {command} failed: {message}")]
    Failed { binary: PathBuf, command: &'static str, message: String },
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
}

/// The descriptors a runtime command hands to the process it starts; `None` is /dev/null.
#[derive(Default)]
pub struct ProcessStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// How to start a container's init process or an extra process in it.
pub struct StartSpec {
    pub stdio: ProcessStdio,
    /// Where the runtime sends the pseudo-terminal master, for a process with a terminal.
    pub console_socket: Option<PathBuf>,
    /// Where the runtime writes the pid of the started process.
    pub pid_file: PathBuf,
}

/// The runtime operations the task service uses. Each returns once the runtime
/// command finished; the processes it starts are watched through the reaper.
pub trait OciRuntime: Send + Sync + 'static {
    /// Creates the container from `bundle`, leaving its init process waiting for `start`.
    fn create(&self, id: &str, bundle: &Path, spec: StartSpec) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    fn start(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Starts the process described by the OCI process JSON at `process_json` in the container.
    fn exec(&self, id: &str, process_json: &Path, spec: StartSpec) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Signals the init process, or with `all` every process of the container.
    fn kill(&self, id: &str, signal: u32, all: bool) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes the container; `force` kills it first if it still runs.
    fn delete(&self, id: &str, force: bool) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Applies OCI `LinuxResources` JSON to the running container.
    fn update(&self, id: &str, resources_json: &[u8]) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}

/// An OCI runtime with runc's command line: runc itself, crun or youki.
pub struct RuncCli {
    binary: PathBuf,
    root: PathBuf,
    /// Where each command's JSON log (the runtime's error messages) is written and read back.
    scratch_dir: PathBuf,
    reaper: Arc<Reaper>,
    sequence: AtomicU64,
}

impl RuncCli {
    pub fn new(binary: PathBuf, root: PathBuf, scratch_dir: PathBuf, reaper: Arc<Reaper>) -> RuncCli {
        RuncCli { binary, root, scratch_dir, reaper, sequence: AtomicU64::new(0) }
    }

    fn scratch_path(&self, command: &str, extension: &str) -> PathBuf {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        self.scratch_dir.join(format!("runc-{command}-{sequence}.{extension}"))
    }

    /// Runs one runtime command to completion. The runtime's own stdio is the
    /// started process's stdio, so its error messages are taken from its JSON log.
    async fn run(&self, command: &'static str, args: Vec<OsString>, stdio: ProcessStdio) -> Result<(), RuntimeError> {
        let log_path = self.scratch_path(command, "log");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root).arg("--log").arg(&log_path).arg("--log-format").arg("json");
        cmd.arg(command).args(args);
        cmd.stdin(stdio_or_null(stdio.stdin)).stdout(stdio_or_null(stdio.stdout)).stderr(stdio_or_null(stdio.stderr));
        let spawned = self.reaper.spawn(&mut cmd);
        // The command holds its own copies of the descriptors now; the shim's go with it.
        drop(cmd);
        let (_, exited) = spawned.map_err(|source| RuntimeError::Spawn { binary: self.binary.clone(), source })?;
        let status = exited.await.map_err(|_| RuntimeError::Failed {
            binary: self.binary.clone(),
            command,
            message: "its exit was never reaped".into(),
        })?;
        let log = std::fs::read(&log_path).unwrap_or_default();
        let _ = std::fs::remove_file(&log_path);
        if status.code == 0 {
            return Ok(());
        }
        let message = last_error(&log).unwrap_or_else(|| format!("exit status {}", status.code));
        Err(RuntimeError::Failed { binary: self.binary.clone(), command, message })
    }
}

fn stdio_or_null(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

/// The message of the last error-level line of a runtime's JSON log.
fn last_error(log: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Line {
        level: String,
        msg: String,
    }
    log.rsplit(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Line>(line).ok())
        .find(|line| line.level == "error" || line.level == "fatal")
        .map(|line| line.msg)
}

fn start_args(spec: &StartSpec) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--pid-file".into(), spec.pid_file.clone().into()];
    if let Some(socket) = &spec.console_socket {
        args.push("--console-socket".into());
        args.push(socket.clone().into());
    }
    args
}

impl OciRuntime for RuncCli {
    async fn create(&self, id: &str, bundle: &Path, spec: StartSpec) -> Result<(), RuntimeError> {
        let mut args: Vec<OsString> = vec!["--bundle".into(), bundle.into()];
        args.extend(start_args(&spec));
        args.push(id.into());
        self.run("create", args, spec.stdio).await
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run("start", vec![id.into()], ProcessStdio::default()).await
    }

    async fn exec(&self, id: &str, process_json: &Path, spec: StartSpec) -> Result<(), RuntimeError> {
        let mut args: Vec<OsString> = vec!["--process".into(), process_json.into(), "--detach".into()];
        if spec.console_socket.is_some() {
            args.push("--tty".into());
        }
        args.extend(start_args(&spec));
        args.push(id.into());
        self.run("exec", args, spec.stdio).await
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), RuntimeError> {
        let mut args: Vec<OsString> = Vec::new();
        if all {
            args.push("--all".into());
        }
        args.push(id.into());
        args.push(signal.to_string().into());
        self.run("kill", args, ProcessStdio::default()).await
    }

    async fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let mut args: Vec<OsString> = Vec::new();
        if force {
            args.push("--force".into());
        }
        args.push(id.into());
        self.run("delete", args, ProcessStdio::default()).await
    }

    async fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), RuntimeError> {
        let path = self.scratch_path("update", "json");
        std::fs::write(&path, resources_json).map_err(|source| RuntimeError::File { path: path.clone(), source })?;
        let result = self.run("update", vec!["--resources".into(), path.clone().into(), id.into()], ProcessStdio::default()).await;
        let _ = std::fs::remove_file(&path);
        result
    }
}

/// `runtime --root ROOT delete --force ID`, run by berthd itself for a container
/// whose shim is gone: nobody else would ever remove its state from the runtime's
/// root. A container the runtime does not know is already deleted.
pub async fn force_delete(binary: &Path, root: &Path, id: &str) -> Result<(), RuntimeError> {
    if !root.join(id).exists() {
        return Ok(());
    }
    let output = tokio::process::Command::new(binary)
        .arg("--root")
        .arg(root)
        .args(["delete", "--force", id])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| RuntimeError::Spawn { binary: binary.to_path_buf(), source })?;
    let message = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if output.status.success() || message.contains("does not exist") || !root.join(id).exists() {
        return Ok(());
    }
    Err(RuntimeError::Failed { binary: binary.to_path_buf(), command: "delete", message })
}

/// Reads the pid a runtime wrote to a pid file.
pub fn read_pid_file(path: &Path) -> Result<u32, RuntimeError> {
    let text = std::fs::read_to_string(path).map_err(|source| RuntimeError::File { path: path.to_path_buf(), source })?;
    text.trim().parse::<u32>().ok().filter(|pid| *pid > 0).ok_or_else(|| RuntimeError::File {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a pid: {:?}", text.trim())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_error_line_of_a_json_log_is_the_message() {
        let log = br#"{"level":"warning","msg":"cgroup v1 is deprecated","time":"2024-01-01T00:00:00Z"}
{"level":"error","msg":"container_linux.go:380: starting container process caused: exec: \"nope\": executable file not found in $PATH","time":"2024-01-01T00:00:00Z"}
{"level":"error","msg":"the real cause","time":"2024-01-01T00:00:01Z"}
not json at all
"#;
        assert_eq!(last_error(log).as_deref(), Some("the real cause"));
        assert_eq!(last_error(b""), None);
    }
}
