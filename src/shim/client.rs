//! berthd's client for a pod's shim. Every call but `wait` and `exec_sync` has a
//! deadline, and a shim that is gone (dead pid, refused or broken connection)
//! answers [`ShimError::Gone`], so berthd can show its containers as exited or
//! unknown instead of hanging.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::api;
use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::wrappers::{BoolValue, StringValue};
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::ttrpc::r#async::Client;
use containerd_shim_protos::ttrpc::r#async::transport::Socket;
use containerd_shim_protos::ttrpc::{self, Code};
use std::os::unix::ffi::OsStrExt;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::net::unix::pipe;

use super::cgroup::{V1_METRICS_TYPE, V2_METRICS_TYPE};
use super::{ATTACH_METHOD, EXTRA_SERVICE, OOM_KILLED_METHOD, PID_FILE, REOPEN_LOG_METHOD, SOCKET_FILE};

/// Deadline of an ordinary call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of calls that run the OCI runtime to set a container up or tear it down.
const RUNTIME_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long starting a shim may take until it serves.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an exec'd process's output may still arrive after its exit was reported.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// Largest output kept per stream of `exec_sync`; the rest is read and dropped.
const EXEC_OUTPUT_LIMIT: usize = 16 * 1024 * 1024;

const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const RESOURCES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The shim is not running or its connection broke; what it supervised is unknown.
    #[error("the shim is gone: {0}")]
    Gone(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("shim {method} did not answer within {timeout:?}")]
    Timeout { method: &'static str, timeout: Duration },
    #[error("starting berth-shim for {state_dir}: {reason}")]
    Spawn { state_dir: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("shim {method}: {message}")]
    Shim { method: &'static str, message: String },
}

/// How to start a pod's shim.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    /// The `berth-shim` binary.
    pub shim_binary: PathBuf,
    pub pod_id: String,
    /// The pod's shim directory (`/run/berth/pods/POD`).
    pub state_dir: PathBuf,
    /// The OCI runtime binary for the pod's runtime handler.
    pub runtime_binary: PathBuf,
    /// The runtime's state root (`--root`).
    pub runtime_root: PathBuf,
}

/// A container to create in the pod.
#[derive(Debug, Clone)]
pub struct CreateTask {
    pub id: String,
    /// Holds config.json and the mounted rootfs.
    pub bundle: PathBuf,
    pub terminal: bool,
    /// Give the container a stdin: a FIFO at [`ShimClient::stdin_path`] that berthd writes.
    pub stdin: bool,
    /// The CRI log file for both output streams; `None` discards the output.
    pub log_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal for a process killed by a signal.
    pub code: i32,
    pub exited_at: SystemTime,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Created,
    Running,
    Stopped,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskState {
    pub status: TaskStatus,
    pub pid: u32,
    pub exit: Option<Exit>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    /// The process outlived the timeout and was killed; the output is what it wrote until then.
    pub timed_out: bool,
}

/// A container's resource usage, from its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// When the statistics were read, in nanoseconds since the epoch (CRI's timestamps).
    pub timestamp_nanos: i64,
    /// Cumulative CPU time.
    pub cpu_usage_ns: u64,
    pub memory_usage: u64,
    /// Usage minus inactive file pages, as kubelet counts it for eviction.
    pub memory_working_set: u64,
    /// Anonymous memory (v1 `total_rss`, v2 `anon`).
    pub memory_rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub pids: u64,
}

/// A connection to one pod's shim. Clones share the connection.
#[derive(Clone)]
pub struct ShimClient {
    state_dir: PathBuf,
    shim_pid: u32,
    /// The shim process itself, whatever later takes its pid number: liveness and
    /// SIGKILL go through it, never through the bare pid, which a berthd restart
    /// may find reused by an unrelated process.
    process: Arc<ShimProcess>,
    connection: Client,
    task: TaskClient,
}

impl ShimClient {
    /// Starts a shim for a pod and connects to it. The shim detaches: it keeps
    /// running when berthd exits.
    pub async fn spawn(options: &SpawnOptions) -> Result<ShimClient, ShimError> {
        let spawn_error = |reason: String| ShimError::Spawn { state_dir: options.state_dir.clone(), reason };
        let launcher = tokio::process::Command::new(&options.shim_binary)
            .arg("--id")
            .arg(&options.pod_id)
            .arg("--state-dir")
            .arg(&options.state_dir)
            .arg("--runtime")
            .arg(&options.runtime_binary)
            .arg("--runtime-root")
            .arg(&options.runtime_root)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(SPAWN_TIMEOUT, launcher)
            .await
            .map_err(|_| spawn_error(format!("it did not serve within {SPAWN_TIMEOUT:?}")))?
            .map_err(|error| spawn_error(format!("running {}: {error}", options.shim_binary.display())))?;
        if !output.status.success() {
            let message = String::from_utf8_lossy(&output.stderr).trim().to_string();
            return Err(spawn_error(if message.is_empty() { output.status.to_string() } else { message }));
        }
        ShimClient::connect(&options.state_dir).await
    }

    /// Connects to the shim serving `state_dir`, e.g. after berthd restarted.
    pub async fn connect(state_dir: &Path) -> Result<ShimClient, ShimError> {
        let gone = |reason: String| ShimError::Gone(format!("{}: {reason}", state_dir.display()));
        let pid_path = state_dir.join(PID_FILE);
        let pid_text = std::fs::read_to_string(&pid_path).map_err(|error| gone(format!("{}: {error}", pid_path.display())))?;
        let shim_pid: u32 = pid_text.trim().parse().map_err(|_| gone(format!("{}: not a pid: {:?}", pid_path.display(), pid_text.trim())))?;
        let process = ShimProcess::open(shim_pid, state_dir).map_err(gone)?;
        let socket_path = state_dir.join(SOCKET_FILE);
        let stream = tokio::time::timeout(CALL_TIMEOUT, UnixStream::connect(&socket_path))
            .await
            .map_err(|_| ShimError::Timeout { method: "connect", timeout: CALL_TIMEOUT })?
            .map_err(|error| gone(format!("connecting to {}: {error}", socket_path.display())))?;
        let connection = Client::new(Socket::from(stream));
        let task = TaskClient::new(connection.clone());
        Ok(ShimClient { state_dir: state_dir.to_path_buf(), shim_pid, process: Arc::new(process), connection, task })
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The shim's pid (for measuring it, or killing a shim that no longer answers).
    pub fn shim_pid(&self) -> u32 {
        self.shim_pid
    }

    /// The FIFO that feeds a container's stdin when it was created with `stdin`.
    pub fn stdin_path(&self, id: &str) -> PathBuf {
        self.state_dir.join("io").join(format!("{id}.stdin"))
    }

    fn error(&self, method: &'static str, error: ttrpc::Error) -> ShimError {
        match error {
            ttrpc::Error::RpcStatus(status) => {
                let message = status.message;
                match status.code.enum_value_or_default() {
                    Code::NOT_FOUND => ShimError::NotFound(message),
                    Code::ALREADY_EXISTS => ShimError::AlreadyExists(message),
                    Code::INVALID_ARGUMENT => ShimError::InvalidArgument(message),
                    Code::FAILED_PRECONDITION => ShimError::FailedPrecondition(message),
                    _ => ShimError::Shim { method, message },
                }
            }
            other => ShimError::Gone(format!("{}: {method}: {other}", self.state_dir.display())),
        }
    }

    /// Runs one call, with a deadline unless `timeout` is `None`.
    async fn call<T>(
        &self,
        method: &'static str,
        timeout: Option<Duration>,
        call: impl Future<Output = ttrpc::Result<T>>,
    ) -> Result<T, ShimError> {
        let result = match timeout {
            Some(timeout) => tokio::time::timeout(timeout, call).await.map_err(|_| ShimError::Timeout { method, timeout })?,
            None => call.await,
        };
        result.map_err(|error| self.error(method, error))
    }

    fn context() -> ttrpc::context::Context {
        ttrpc::context::Context::default()
    }

    pub async fn create(&self, request: CreateTask) -> Result<u32, ShimError> {
        // The id names the stdin FIFO; the shim checks it too, but only after the FIFO exists.
        if request.id.is_empty() || request.id.contains('/') || request.id.starts_with('.') {
            return Err(ShimError::InvalidArgument(format!("id {:?}: not usable as a file name", request.id)));
        }
        let stdin = if request.stdin {
            let path = self.stdin_path(&request.id);
            make_fifo(&path)?;
            path.display().to_string()
        } else {
            String::new()
        };
        let create = api::CreateTaskRequest {
            id: request.id.clone(),
            bundle: request.bundle.display().to_string(),
            terminal: request.terminal,
            stdin: stdin.clone(),
            stdout: request.log_path.as_ref().map(|path| path.display().to_string()).unwrap_or_default(),
            ..Default::default()
        };
        let result = self.call("Create", Some(RUNTIME_CALL_TIMEOUT), self.task.create(Self::context(), &create)).await;
        if result.is_err() && !stdin.is_empty() {
            let _ = std::fs::remove_file(&stdin);
        }
        Ok(result?.pid)
    }

    pub async fn start(&self, id: &str) -> Result<u32, ShimError> {
        let request = api::StartRequest { id: id.into(), ..Default::default() };
        Ok(self.call("Start", Some(RUNTIME_CALL_TIMEOUT), self.task.start(Self::context(), &request)).await?.pid)
    }

    /// Signals the container's init process, or with `all` every process in it.
    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), ShimError> {
        let request = api::KillRequest { id: id.into(), signal, all, ..Default::default() };
        self.call("Kill", Some(CALL_TIMEOUT), self.task.kill(Self::context(), &request)).await?;
        Ok(())
    }

    /// Waits, without deadline, until the container's init process exited.
    pub async fn wait(&self, id: &str) -> Result<Exit, ShimError> {
        let request = api::WaitRequest { id: id.into(), ..Default::default() };
        let response = self.call("Wait", None, self.task.wait(Self::context(), &request)).await?;
        // The exit stands even if the container was deleted right after it.
        let oom_killed = self.oom_killed(id).await.unwrap_or(false);
        Ok(Exit { code: response.exit_status as i32, exited_at: system_time(&response.exited_at), oom_killed })
    }

    pub async fn state(&self, id: &str) -> Result<TaskState, ShimError> {
        let request = api::StateRequest { id: id.into(), ..Default::default() };
        let response = self.call("State", Some(CALL_TIMEOUT), self.task.state(Self::context(), &request)).await?;
        let status = match response.status.enum_value_or_default() {
            api::Status::CREATED => TaskStatus::Created,
            api::Status::RUNNING => TaskStatus::Running,
            api::Status::STOPPED => TaskStatus::Stopped,
            _ => TaskStatus::Unknown,
        };
        let exit = match status {
            TaskStatus::Stopped => Some(Exit {
                code: response.exit_status as i32,
                exited_at: system_time(&response.exited_at),
                oom_killed: self.oom_killed(id).await.unwrap_or(false),
            }),
            _ => None,
        };
        Ok(TaskState { status, pid: response.pid, exit })
    }

    /// Removes a container that is not running; returns its exit if it ran.
    pub async fn delete(&self, id: &str) -> Result<Option<Exit>, ShimError> {
        // Asked first: the shim forgets the container with Delete.
        let oom_killed = self.oom_killed(id).await;
        let request = api::DeleteRequest { id: id.into(), ..Default::default() };
        let response = self.call("Delete", Some(RUNTIME_CALL_TIMEOUT), self.task.delete(Self::context(), &request)).await?;
        let _ = std::fs::remove_file(self.stdin_path(id));
        Ok(response.exited_at.as_ref().map(|exited_at| Exit {
            code: response.exit_status as i32,
            exited_at: exited_at.clone().into(),
            oom_killed: oom_killed.unwrap_or(false),
        }))
    }

    /// Creates the FIFOs of an exec'd process, has the shim run it on them, and
    /// opens this side of each. The FIFO files are gone when this returns; the
    /// open ends keep the pipes alive, so no file outlives the process however
    /// the caller ends.
    async fn start_exec(&self, id: &str, process: &oci_spec::runtime::Process, streams: ExecStreams) -> Result<ExecPipes, ShimError> {
        let exec_id = format!("exec-{:016x}", rand::random::<u64>());
        let io_dir = self.state_dir.join("io");
        let path = |stream: &str, wanted: bool| wanted.then(|| io_dir.join(format!("{exec_id}.{stream}")));
        let fifos = IoFifos {
            stdin: path("stdin", streams.stdin),
            stdout: path("stdout", streams.stdout),
            stderr: path("stderr", streams.stderr && !process.terminal().unwrap_or(false)),
        };
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ShimError::Io { path, source }
        };
        let (stdout, stderr) = fifos.open_outputs()?;
        let stdin = match &fifos.stdin {
            Some(path) => {
                make_fifo(path)?;
                // Read-write, so that opening never waits for (or fails without) the shim's end.
                Some(pipe::OpenOptions::new().read_write(true).open_sender(path).map_err(io_error(path))?)
            }
            None => None,
        };
        let shown = |fifo: &Option<PathBuf>| fifo.as_ref().map(|p| p.display().to_string()).unwrap_or_default();

        let spec = serde_json::to_vec(process).map_err(|error| ShimError::InvalidArgument(format!("process: {error}")))?;
        let request = api::ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.clone(),
            terminal: process.terminal().unwrap_or(false),
            stdin: shown(&fifos.stdin),
            stdout: shown(&fifos.stdout),
            stderr: shown(&fifos.stderr),
            spec: MessageField::some(Any { type_url: PROCESS_TYPE_URL.into(), value: spec, ..Default::default() }),
            ..Default::default()
        };
        self.call("Exec", Some(CALL_TIMEOUT), self.task.exec(Self::context(), &request)).await?;
        let start = api::StartRequest { id: id.into(), exec_id: exec_id.clone(), ..Default::default() };
        if let Err(error) = self.call("Start", Some(RUNTIME_CALL_TIMEOUT), self.task.start(Self::context(), &start)).await {
            self.delete_exec(id, &exec_id).await;
            return Err(error);
        }
        Ok(ExecPipes { exec_id, stdin, stdout, stderr })
    }

    /// Runs a process in the container and collects its output: the process
    /// writes into FIFOs this client creates in the shim directory and removes
    /// afterwards. After `timeout` the process is killed and `timed_out` set.
    pub async fn exec_sync(&self, id: &str, process: &oci_spec::runtime::Process, timeout: Option<Duration>) -> Result<ExecOutput, ShimError> {
        let streams = ExecStreams { stdin: false, stdout: true, stderr: true };
        let ExecPipes { exec_id, stdout, stderr, .. } = self.start_exec(id, process, streams).await?;
        // Read only now: before the shim opened the FIFOs for writing, a read would see their end.
        let stdout = stdout.map(OutputCollector::start);
        let stderr = stderr.map(OutputCollector::start);

        let wait_request = api::WaitRequest { id: id.into(), exec_id: exec_id.clone(), ..Default::default() };
        let wait = self.call("Wait", None, self.task.wait(Self::context(), &wait_request));
        let (exited, timed_out) = match timeout {
            None => (wait.await, false),
            Some(limit) => match tokio::time::timeout(limit, wait).await {
                Ok(exited) => (exited, false),
                Err(_) => {
                    let _ = self.signal_exec(id, &exec_id, libc::SIGKILL as u32, true).await;
                    (self.call("Wait", Some(CALL_TIMEOUT), self.task.wait(Self::context(), &wait_request)).await, true)
                }
            },
        };
        let finish = |collector: Option<OutputCollector>| async move {
            match collector {
                Some(collector) => collector.finish().await,
                None => Vec::new(),
            }
        };
        let (stdout, stderr) = (finish(stdout).await, finish(stderr).await);
        self.delete_exec(id, &exec_id).await;
        let exit = exited?;
        Ok(ExecOutput { stdout, stderr, exit_code: exit.exit_status as i32, timed_out })
    }

    /// Starts an interactive process in the container, wired to pipes the caller
    /// drives. The shim forgets the process once it exited (see [`ExecSession::exit`]),
    /// whether or not anybody still listens.
    pub async fn exec(&self, id: &str, process: &oci_spec::runtime::Process, streams: ExecStreams) -> Result<ExecSession, ShimError> {
        let ExecPipes { exec_id, stdin, stdout, stderr } = self.start_exec(id, process, streams).await?;
        let (exit_sender, exit) = tokio::sync::oneshot::channel();
        let (client, container_id, waited_exec) = (self.clone(), id.to_string(), exec_id.clone());
        tokio::spawn(async move {
            let request = api::WaitRequest { id: container_id.clone(), exec_id: waited_exec.clone(), ..Default::default() };
            let exited = client.call("Wait", None, client.task.wait(Self::context(), &request)).await;
            client.delete_exec(&container_id, &waited_exec).await;
            let _ = exit_sender.send(exited.map(|response| response.exit_status as i32));
        });
        let control = ExecControl { client: self.clone(), container_id: id.to_string(), exec_id };
        Ok(ExecSession { stdin, stdout, stderr, exit, control })
    }

    /// Connects to a running container's own process: its stdin FIFO (when it
    /// was created with `stdin` and `streams.stdin`), a live copy of the output
    /// streams asked for (the shim feeds FIFOs this client creates, removed once
    /// open), and its exit code to come.
    pub async fn attach(&self, id: &str, streams: ExecStreams) -> Result<Attachment, ShimError> {
        let stdin = if streams.stdin {
            let path = self.stdin_path(id);
            // The shim holds the FIFO open read-write for the container's life, so
            // this open neither blocks nor fails while the container runs.
            Some(pipe::OpenOptions::new().open_sender(&path).map_err(|source| ShimError::Io { path, source })?)
        } else {
            None
        };
        let attach_id = format!("{id}.attach-{:016x}", rand::random::<u64>());
        let io_dir = self.state_dir.join("io");
        let path = |stream: &str, wanted: bool| wanted.then(|| io_dir.join(format!("{attach_id}.{stream}")));
        let fifos = IoFifos { stdin: None, stdout: path("stdout", streams.stdout), stderr: path("stderr", streams.stderr) };
        let (stdout, stderr) = fifos.open_outputs()?;
        let shown = |fifo: &Option<PathBuf>| fifo.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let request = api::ExecProcessRequest { id: id.into(), stdout: shown(&fifos.stdout), stderr: shown(&fifos.stderr), ..Default::default() };
        let payload = request.write_to_bytes().map_err(|error| ShimError::InvalidArgument(format!("attach request: {error}")))?;
        self.extra_request(ATTACH_METHOD, payload).await?;
        let (exit_sender, exit) = tokio::sync::oneshot::channel();
        let (client, container_id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            let _ = exit_sender.send(client.wait(&container_id).await.map(|exit| exit.code));
        });
        Ok(Attachment { stdin, stdout, stderr, exit, client: self.clone(), container_id: id.to_string() })
    }

    async fn signal_exec(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<(), ShimError> {
        let kill = api::KillRequest { id: id.into(), exec_id: exec_id.into(), signal, all, ..Default::default() };
        self.call("Kill", Some(CALL_TIMEOUT), self.task.kill(Self::context(), &kill)).await?;
        Ok(())
    }

    async fn delete_exec(&self, id: &str, exec_id: &str) {
        let request = api::DeleteRequest { id: id.into(), exec_id: exec_id.into(), ..Default::default() };
        if let Err(error) = self.call("Delete", Some(CALL_TIMEOUT), self.task.delete(Self::context(), &request)).await {
            tracing::warn!(container = id, exec_id, %error, "removing an exec'd process from the shim");
        }
    }

    /// Applies new resource limits to a running container.
    pub async fn update(&self, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<(), ShimError> {
        let value = serde_json::to_vec(resources).map_err(|error| ShimError::InvalidArgument(format!("resources: {error}")))?;
        let request = api::UpdateTaskRequest {
            id: id.into(),
            resources: MessageField::some(Any { type_url: RESOURCES_TYPE_URL.into(), value, ..Default::default() }),
            ..Default::default()
        };
        self.call("Update", Some(RUNTIME_CALL_TIMEOUT), self.task.update(Self::context(), &request)).await?;
        Ok(())
    }

    pub async fn stats(&self, id: &str) -> Result<Stats, ShimError> {
        let request = api::StatsRequest { id: id.into(), ..Default::default() };
        let response = self.call("Stats", Some(CALL_TIMEOUT), self.task.stats(Self::context(), &request)).await?;
        let any = response.stats.into_option().ok_or_else(|| ShimError::Shim { method: "Stats", message: "the reply carries no statistics".into() })?;
        let undecodable = |error: containerd_shim_protos::protobuf::Error| ShimError::Shim { method: "Stats", message: format!("{}: {error}", any.type_url) };
        let timestamp_nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|since| since.as_nanos() as i64).unwrap_or(0);
        if any.type_url.ends_with(V1_METRICS_TYPE) {
            let metrics = v1::Metrics::parse_from_bytes(&any.value).map_err(undecodable)?;
            let memory = metrics.memory.get_or_default();
            let usage = memory.usage.usage;
            Ok(Stats {
                timestamp_nanos,
                cpu_usage_ns: metrics.cpu.usage.total,
                memory_usage: usage,
                memory_working_set: usage.saturating_sub(memory.total_inactive_file),
                memory_rss: memory.total_rss,
                page_faults: memory.total_pg_fault,
                major_page_faults: memory.total_pg_maj_fault,
                pids: metrics.pids.current,
            })
        } else if any.type_url.ends_with(V2_METRICS_TYPE) {
            let metrics = v2::Metrics::parse_from_bytes(&any.value).map_err(undecodable)?;
            let memory = metrics.memory.get_or_default();
            Ok(Stats {
                timestamp_nanos,
                cpu_usage_ns: metrics.cpu.usage_usec.saturating_mul(1000),
                memory_usage: memory.usage,
                memory_working_set: memory.usage.saturating_sub(memory.inactive_file),
                memory_rss: memory.anon,
                page_faults: memory.pgfault,
                major_page_faults: memory.pgmajfault,
                pids: metrics.pids.current,
            })
        } else {
            Err(ShimError::Shim { method: "Stats", message: format!("unknown statistics type {:?}", any.type_url) })
        }
    }

    /// The processes in the container (from its cgroup).
    pub async fn pids(&self, id: &str) -> Result<Vec<u32>, ShimError> {
        let request = api::PidsRequest { id: id.into(), ..Default::default() };
        let response = self.call("Pids", Some(CALL_TIMEOUT), self.task.pids(Self::context(), &request)).await?;
        Ok(response.processes.iter().map(|process| process.pid).collect())
    }

    /// Ends the container's stdin: its process reads end-of-file.
    pub async fn close_stdin(&self, id: &str) -> Result<(), ShimError> {
        let request = api::CloseIORequest { id: id.into(), stdin: true, ..Default::default() };
        self.call("CloseIO", Some(CALL_TIMEOUT), self.task.close_io(Self::context(), &request)).await?;
        Ok(())
    }

    /// Sets the window size of the container's terminal.
    pub async fn resize_pty(&self, id: &str, width: u32, height: u32) -> Result<(), ShimError> {
        let request = api::ResizePtyRequest { id: id.into(), width, height, ..Default::default() };
        self.call("ResizePty", Some(CALL_TIMEOUT), self.task.resize_pty(Self::context(), &request)).await?;
        Ok(())
    }

    /// Makes the shim reopen a container's CRI log file, after kubelet rotated it.
    pub async fn reopen_log(&self, id: &str) -> Result<(), ShimError> {
        self.extra_call(REOPEN_LOG_METHOD, id).await?;
        Ok(())
    }

    async fn oom_killed(&self, id: &str) -> Result<bool, ShimError> {
        let payload = self.extra_call(OOM_KILLED_METHOD, id).await?;
        BoolValue::parse_from_bytes(&payload)
            .map(|value| value.value)
            .map_err(|error| ShimError::Shim { method: OOM_KILLED_METHOD, message: format!("decoding the reply: {error}") })
    }

    /// Calls a method of `berth.shim.v1.Container` that takes the container id.
    async fn extra_call(&self, method: &'static str, id: &str) -> Result<Vec<u8>, ShimError> {
        let payload = StringValue { value: id.into(), ..Default::default() }
            .write_to_bytes()
            .map_err(|error| ShimError::InvalidArgument(format!("id: {error}")))?;
        self.extra_request(method, payload).await
    }

    async fn extra_request(&self, method: &'static str, payload: Vec<u8>) -> Result<Vec<u8>, ShimError> {
        let mut request = ttrpc::Request::new();
        request.set_service(EXTRA_SERVICE.into());
        request.set_method(method.into());
        request.payload = payload;
        Ok(self.call(method, Some(CALL_TIMEOUT), self.connection.request(request)).await?.payload)
    }

    /// Asks the shim to exit and waits until it did. A shim that still holds
    /// containers stays, and this answers `FailedPrecondition`.
    pub async fn shutdown(self) -> Result<(), ShimError> {
        let held = self.held_containers();
        if !held.is_empty() {
            return Err(ShimError::FailedPrecondition(format!("the shim still holds containers {held:?}; delete them first")));
        }
        let request = api::ShutdownRequest { now: false, ..Default::default() };
        match self.call("Shutdown", Some(CALL_TIMEOUT), self.task.shutdown(Self::context(), &request)).await {
            Ok(_) | Err(ShimError::Gone(_)) => {}
            Err(error) => return Err(error),
        }
        if !self.wait_shim_exit(CALL_TIMEOUT).await {
            return Err(ShimError::Timeout { method: "Shutdown", timeout: CALL_TIMEOUT });
        }
        Ok(())
    }

    /// Kills and deletes every container the shim still holds, then makes it
    /// exit, with SIGKILL if it does not leave by itself: for rolling a pod back
    /// and for removing leftovers. A shim that is already gone is success.
    pub async fn kill_and_shutdown(&self) -> Result<(), ShimError> {
        for id in self.held_containers() {
            match self.kill(&id, libc::SIGKILL as u32, true).await {
                Err(ShimError::Gone(_)) => return Ok(()),
                Err(error) => tracing::debug!(container = %id, %error, "killing a container at shim shutdown"),
                Ok(()) => {}
            }
            let _ = tokio::time::timeout(CALL_TIMEOUT, self.wait(&id)).await;
            if let Err(error) = self.delete(&id).await {
                tracing::warn!(container = %id, %error, "deleting a container at shim shutdown");
            }
        }
        let request = api::ShutdownRequest { now: true, ..Default::default() };
        match self.call("Shutdown", Some(CALL_TIMEOUT), self.task.shutdown(Self::context(), &request)).await {
            Ok(_) | Err(ShimError::Gone(_)) | Err(ShimError::Timeout { .. }) => {}
            Err(error) => return Err(error),
        }
        if !self.wait_shim_exit(CALL_TIMEOUT).await {
            tracing::warn!(pid = self.shim_pid, "the shim ignored Shutdown; killing it");
            self.process.kill();
            self.wait_shim_exit(CALL_TIMEOUT).await;
        }
        Ok(())
    }

    /// The containers the shim holds: it keeps `STATE_DIR/tasks/ID` for each.
    fn held_containers(&self) -> Vec<String> {
        std::fs::read_dir(self.state_dir.join("tasks"))
            .map(|entries| entries.flatten().filter_map(|entry| entry.file_name().to_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    async fn wait_shim_exit(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.process.alive() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

fn system_time(timestamp: &MessageField<containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp>) -> SystemTime {
    timestamp.as_ref().map(|timestamp| timestamp.clone().into()).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A shim process, identified once at connect time: its pid must be running
/// `berth-shim` for this very state directory (a pid file outlives its shim, and
/// the number may since belong to anything), and from then on it is held by a
/// pidfd, which keeps naming that process even after its number is reused.
struct ShimProcess {
    pid: u32,
    /// `None` only on kernels without pidfds (before 5.3); then the identity is
    /// checked again before each use of the pid.
    pidfd: Option<std::os::fd::OwnedFd>,
    state_dir: PathBuf,
}

impl ShimProcess {
    fn open(pid: u32, state_dir: &Path) -> Result<ShimProcess, String> {
        let raw = rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| format!("{pid} is not a pid"))?;
        let pidfd = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => Some(fd),
            Err(rustix::io::Errno::NOSYS) => None,
            Err(_) => return Err(format!("shim process {pid} is not running")),
        };
        // Checked after the pidfd was opened: if the number named our shim then,
        // the pidfd names it too.
        let process = ShimProcess { pid, pidfd, state_dir: state_dir.to_path_buf() };
        if !process.is_our_shim() {
            return Err(format!("process {pid} of the pid file is not this directory's shim (it exited and its pid was reused)"));
        }
        if !process.alive() {
            return Err(format!("shim process {pid} is not running"));
        }
        Ok(process)
    }

    /// Whether the pid runs `--state-dir` of this directory, as the shim's command line has it.
    fn is_our_shim(&self) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", self.pid)) else { return false };
        let mut args = cmdline.split(|&b| b == 0);
        while let Some(arg) = args.next() {
            if arg == b"--state-dir" {
                let Some(dir) = args.next() else { return false };
                let dir = Path::new(std::ffi::OsStr::from_bytes(dir));
                return dir == self.state_dir
                    || matches!((dir.canonicalize(), self.state_dir.canonicalize()), (Ok(a), Ok(b)) if a == b);
            }
        }
        false
    }

    /// Whether the shim still runs. A zombie does not.
    fn alive(&self) -> bool {
        match &self.pidfd {
            Some(fd) => {
                use std::os::fd::AsRawFd;
                let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd for the duration of the call; a zero
                // timeout never blocks. A pidfd polls readable once its process exited.
                let ready = unsafe { libc::poll(&mut poll, 1, 0) };
                ready == 0
            }
            None => process_alive(self.pid) && self.is_our_shim(),
        }
    }

    fn kill(&self) {
        match &self.pidfd {
            Some(fd) => {
                let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
            }
            None if self.is_our_shim() => {
                // SAFETY: kill has no memory effects.
                unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
            }
            None => {}
        }
    }
}

/// Whether the process runs. A zombie does not: an exited shim waits as one
/// until its new parent (often pid 1) gets round to reaping it.
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may hold spaces.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

fn make_fifo(path: &Path) -> Result<(), ShimError> {
    let io_error = |source| ShimError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error)?;
    }
    let _ = std::fs::remove_file(path);
    rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::from_bits_truncate(0o600)).map_err(|errno| io_error(errno.into()))
}

/// Which standard streams of an exec'd process the caller connects. A terminal
/// process (`process.terminal`) has no separate stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecStreams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// The FIFO files of one exec or attach, removed once both ends are open (or the start failed).
struct IoFifos {
    stdin: Option<PathBuf>,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
}

impl IoFifos {
    /// Makes the output FIFOs and opens their reading ends, which the shim's
    /// writing ends need to exist. Read them only once the shim opened those:
    /// before, a read sees the end of the stream.
    fn open_outputs(&self) -> Result<(Option<pipe::Receiver>, Option<pipe::Receiver>), ShimError> {
        let open = |fifo: &Option<PathBuf>| match fifo {
            Some(path) => {
                make_fifo(path)?;
                let receiver = pipe::OpenOptions::new().open_receiver(path).map_err(|source| ShimError::Io { path: path.clone(), source })?;
                Ok(Some(receiver))
            }
            None => Ok(None),
        };
        Ok((open(&self.stdout)?, open(&self.stderr)?))
    }
}

impl Drop for IoFifos {
    fn drop(&mut self) {
        for path in [&self.stdin, &self.stdout, &self.stderr].into_iter().flatten() {
            let _ = std::fs::remove_file(path);
        }
    }
}

struct ExecPipes {
    exec_id: String,
    stdin: Option<pipe::Sender>,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
}

/// A running interactive exec: its pipes, its exit code to come, and its controls.
pub struct ExecSession {
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    /// The exit code once the process ended (128 + signal when killed).
    pub exit: tokio::sync::oneshot::Receiver<Result<i32, ShimError>>,
    pub control: ExecControl,
}

/// Acts on one exec'd process; clones act on the same one.
#[derive(Clone)]
pub struct ExecControl {
    client: ShimClient,
    container_id: String,
    exec_id: String,
}

impl ExecControl {
    pub async fn resize(&self, width: u32, height: u32) -> Result<(), ShimError> {
        let request = api::ResizePtyRequest { id: self.container_id.clone(), exec_id: self.exec_id.clone(), width, height, ..Default::default() };
        self.client.call("ResizePty", Some(CALL_TIMEOUT), self.client.task.resize_pty(Self::context(), &request)).await?;
        Ok(())
    }

    /// Ends the process's stdin; the shim first passes on what was already
    /// written into the stdin FIFO.
    pub async fn close_stdin(&self) -> Result<(), ShimError> {
        let request = api::CloseIORequest { id: self.container_id.clone(), exec_id: self.exec_id.clone(), stdin: true, ..Default::default() };
        self.client.call("CloseIO", Some(CALL_TIMEOUT), self.client.task.close_io(Self::context(), &request)).await?;
        Ok(())
    }

    pub async fn signal(&self, signal: u32) -> Result<(), ShimError> {
        self.client.signal_exec(&self.container_id, &self.exec_id, signal, false).await
    }

    /// SIGKILLs the process and everything it started (its process group and
    /// descendants), as a terminal's hangup would.
    pub async fn kill_all(&self) -> Result<(), ShimError> {
        self.client.signal_exec(&self.container_id, &self.exec_id, libc::SIGKILL as u32, true).await
    }

    fn context() -> ttrpc::context::Context {
        ShimClient::context()
    }
}

/// One attacher's connection to a container's own process. The output pipes end
/// when the container's output does, or when the reader fell too far behind.
pub struct Attachment {
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    /// The container's exit code once it ended.
    pub exit: tokio::sync::oneshot::Receiver<Result<i32, ShimError>>,
    client: ShimClient,
    container_id: String,
}

impl Attachment {
    pub async fn resize(&self, width: u32, height: u32) -> Result<(), ShimError> {
        self.client.resize_pty(&self.container_id, width, height).await
    }

    /// Ends the container's stdin for good (`stdin_once`), after what was
    /// written into it.
    pub async fn close_stdin(&self) -> Result<(), ShimError> {
        self.client.close_stdin(&self.container_id).await
    }
}

/// Reads one output FIFO in the background into a buffer that survives the
/// reader being stopped, so output written before a timeout is kept.
struct OutputCollector {
    buffer: Arc<Mutex<Vec<u8>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl OutputCollector {
    fn start(mut fifo: pipe::Receiver) -> OutputCollector {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let shared = buffer.clone();
        let reader = tokio::spawn(async move {
            let mut chunk = vec![0u8; 16 * 1024];
            while let Ok(read) = fifo.read(&mut chunk).await {
                if read == 0 {
                    return;
                }
                let mut buffer = shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let room = EXEC_OUTPUT_LIMIT.saturating_sub(buffer.len());
                buffer.extend_from_slice(&chunk[..read.min(room)]);
            }
        });
        OutputCollector { buffer, reader }
    }

    /// Waits briefly for the rest of the output, then takes what was read.
    async fn finish(self) -> Vec<u8> {
        let OutputCollector { buffer, mut reader } = self;
        if tokio::time::timeout(OUTPUT_DRAIN, &mut reader).await.is_err() {
            reader.abort();
        }
        std::mem::take(&mut *buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}
