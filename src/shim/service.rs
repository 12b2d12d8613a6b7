//! The task service: containerd's shim Task API over the containers of one pod,
//! plus berth's small `berth.shim.v1.Container` service beside it.
//!
//! State changes (create, start, exec start, kill, delete, update) run as their
//! own tasks and the request handler awaits them, so a client that times out or
//! disconnects mid-call never leaves a container half created.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::well_known_types::wrappers::{BoolValue, StringValue};
use containerd_shim_protos::protobuf::{EnumOrUnknown, Message, MessageField};
use containerd_shim_protos::shim_async::{Task, create_task};
use containerd_shim_protos::ttrpc::{self, Code};
use containerd_shim_protos::ttrpc::r#async::{MethodHandler, Service, TtrpcContext};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

use super::cgroup::ContainerCgroup;
use super::cri_log::{CriLogFile, LogStream};
use super::reaper::{ExitStatus, Reaper};
use super::runtime::{OciRuntime, ProcessStdio, RuntimeError, StartSpec, read_pid_file};
use super::stdio::{AsyncStream, ConsoleSocket, Input, InputCopy, Output, OutputCopy, OutputFanout, StdinCopy, StdioError, resize_terminal};
use super::{ATTACH_METHOD, EXTRA_SERVICE, OOM_KILLED_METHOD, REOPEN_LOG_METHOD, TASK_SERVICE_V2, TASK_SERVICE_V3};

/// How long an exit waits for the process's output to be copied out before it is
/// reported anyway (a leaked descendant may hold the output pipe open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// How long the runtime has to hand over a terminal after `create`/`exec` returned.
const CONSOLE_HANDOVER: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
}

impl From<TaskError> for ttrpc::Error {
    fn from(error: TaskError) -> ttrpc::Error {
        let code = match &error {
            TaskError::NotFound(_) => Code::NOT_FOUND,
            TaskError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            TaskError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            TaskError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            TaskError::Internal(_) => Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, error.to_string()))
    }
}

impl From<RuntimeError> for TaskError {
    fn from(error: RuntimeError) -> TaskError {
        TaskError::Internal(error.to_string())
    }
}

impl From<StdioError> for TaskError {
    fn from(error: StdioError) -> TaskError {
        TaskError::InvalidArgument(error.to_string())
    }
}

fn internal(context: &str, error: impl std::fmt::Display) -> TaskError {
    TaskError::Internal(format!("{context}: {error}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Stopped,
}

#[derive(Default)]
struct ProcessIo {
    /// The copy loop into stdin; ending it closes the process's stdin.
    stdin: Option<StdinCopy>,
    /// The master side of the process's terminal, for resizing.
    console: Option<Arc<AsyncStream>>,
    outputs: Vec<JoinHandle<()>>,
}

struct ProcessState {
    pid: u32,
    phase: Phase,
    io: ProcessIo,
}

/// The init process of a container or a process exec'd into it.
struct Process {
    exec_id: String,
    terminal: bool,
    stdin: String,
    stdout: String,
    stderr: String,
    /// OCI process JSON of an exec'd process (empty for init).
    spec: Vec<u8>,
    state: Mutex<ProcessState>,
    exit: watch::Sender<Option<ExitStatus>>,
    /// Live copies of the output copied through the shim.
    attachers: Arc<OutputFanout>,
}

impl Process {
    fn new(exec_id: String, terminal: bool, stdin: String, stdout: String, stderr: String, spec: Vec<u8>) -> Process {
        Process {
            exec_id,
            terminal,
            stdin,
            stdout,
            stderr,
            spec,
            state: Mutex::new(ProcessState { pid: 0, phase: Phase::Created, io: ProcessIo::default() }),
            exit: watch::Sender::new(None),
            attachers: Arc::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, ProcessState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    fn kind(&self) -> String {
        if self.exec_id.is_empty() { "init process".into() } else { format!("exec process {}", self.exec_id) }
    }
}

struct Container {
    id: String,
    bundle: String,
    /// `STATE_DIR/tasks/ID`: pid files and exec process specs.
    work_dir: PathBuf,
    cgroup: Option<ContainerCgroup>,
    log: Option<Arc<CriLogFile>>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    oom_killed: AtomicBool,
}

impl Container {
    fn execs(&self) -> MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn process(&self, exec_id: &str) -> Result<Arc<Process>, TaskError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| TaskError::NotFound(format!("container {}: no exec process {exec_id:?}", self.id)))
    }
}

#[derive(Default)]
struct Table {
    containers: HashMap<String, Arc<Container>>,
    /// Ids whose Create is under way, so that a second Create of the same id fails.
    creating: HashSet<String>,
}

pub struct ShimState<R> {
    runtime: R,
    reaper: Arc<Reaper>,
    state_dir: PathBuf,
    table: Mutex<Table>,
    console_sequence: AtomicU64,
    /// Notified when the shim should exit (`Shutdown`).
    exit_requested: Arc<Notify>,
}

/// The Task service; clones share one state.
pub struct TaskService<R> {
    state: Arc<ShimState<R>>,
}

impl<R> Clone for TaskService<R> {
    fn clone(&self) -> Self {
        TaskService { state: self.state.clone() }
    }
}

impl<R: OciRuntime> TaskService<R> {
    pub fn new(runtime: R, reaper: Arc<Reaper>, state_dir: PathBuf, exit_requested: Arc<Notify>) -> TaskService<R> {
        TaskService {
            state: Arc::new(ShimState {
                runtime,
                reaper,
                state_dir,
                table: Mutex::new(Table::default()),
                console_sequence: AtomicU64::new(0),
                exit_requested,
            }),
        }
    }

    /// The ttrpc services to register: the Task API under both names containerd
    /// uses for it (v2 up to containerd 1.7, v3 from 2.0; the messages are the
    /// same), and berth's own service.
    pub fn services(&self) -> HashMap<String, Service> {
        let task: Arc<dyn Task + Send + Sync> = Arc::new(self.clone());
        let mut services = HashMap::new();
        for name in [TASK_SERVICE_V3, TASK_SERVICE_V2] {
            let generated = create_task(task.clone());
            if let Some(service) = generated.into_values().next() {
                services.insert(name.to_string(), service);
            }
        }
        let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
        methods.insert(REOPEN_LOG_METHOD.into(), Box::new(ExtraMethod { service: self.clone(), method: Extra::ReopenLog }));
        methods.insert(OOM_KILLED_METHOD.into(), Box::new(ExtraMethod { service: self.clone(), method: Extra::OomKilled }));
        methods.insert(ATTACH_METHOD.into(), Box::new(ExtraMethod { service: self.clone(), method: Extra::Attach }));
        services.insert(EXTRA_SERVICE.into(), Service { methods, streams: HashMap::new() });
        services
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.state.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, TaskError> {
        self.table().containers.get(id).cloned().ok_or_else(|| TaskError::NotFound(format!("container {id:?} not found")))
    }

    /// Runs a state change to completion even if the request that asked for it is dropped.
    async fn detached<T: Send + 'static>(
        &self,
        change: impl Future<Output = Result<T, TaskError>> + Send + 'static,
    ) -> Result<T, TaskError> {
        tokio::spawn(change).await.map_err(|error| internal("task", error))?
    }

    async fn create_container(self, request: api::CreateTaskRequest) -> Result<u32, TaskError> {
        let id = request.id.clone();
        validate_name("id", &id)?;
        {
            let mut table = self.table();
            if table.containers.contains_key(&id) || !table.creating.insert(id.clone()) {
                return Err(TaskError::AlreadyExists(format!("container {id:?} already exists")));
            }
        }
        let result = self.create_reserved(request).await;
        let mut table = self.table();
        table.creating.remove(&id);
        let container = result?;
        let pid = container.init.state().pid;
        table.containers.insert(id, container);
        Ok(pid)
    }

    async fn create_reserved(&self, request: api::CreateTaskRequest) -> Result<Arc<Container>, TaskError> {
        if !request.rootfs.is_empty() {
            return Err(TaskError::InvalidArgument("rootfs: berth-shim mounts nothing; mount the bundle's rootfs before Create".into()));
        }
        if !request.checkpoint.is_empty() || !request.parent_checkpoint.is_empty() {
            return Err(TaskError::InvalidArgument("checkpoint: restoring from a checkpoint is not supported".into()));
        }
        let bundle = PathBuf::from(&request.bundle);
        if !bundle.is_absolute() || !bundle.join("config.json").is_file() {
            return Err(TaskError::InvalidArgument(format!("bundle {:?}: not an absolute directory holding config.json", request.bundle)));
        }
        let cgroup = ContainerCgroup::from_bundle(&bundle).map_err(|error| TaskError::InvalidArgument(error.to_string()))?;

        // berth's convention: stdout names the CRI log file and both streams go
        // there; a FIFO in stdout is containerd's convention (raw bytes, one FIFO
        // per stream).
        let (log, stdout, stderr) = if request.stdout.is_empty() || is_fifo(&request.stdout) {
            let output = |path: &str, field| {
                if path.is_empty() { Ok(Output::AttachersOnly) } else { Output::open_raw(path, field) }
            };
            (None, output(&request.stdout, "stdout")?, output(&request.stderr, "stderr")?)
        } else {
            if !request.stderr.is_empty() && request.stderr != request.stdout {
                return Err(TaskError::InvalidArgument(
                    "stderr: must be empty when stdout names a CRI log file (both streams go to that file)".into(),
                ));
            }
            let log = Arc::new(CriLogFile::open(Path::new(&request.stdout)).map_err(|source| StdioError {
                field: "stdout",
                path: request.stdout.clone().into(),
                source,
            })?);
            (Some(log.clone()), Output::Log(log.clone(), LogStream::Stdout), Output::Log(log, LogStream::Stderr))
        };
        let stdin = Input::open(&request.stdin)?;

        let work_dir = self.state.state_dir.join("tasks").join(&request.id);
        std::fs::create_dir_all(&work_dir).map_err(|error| internal(&format!("creating {}", work_dir.display()), error))?;
        let init = Arc::new(Process::new(
            String::new(),
            request.terminal,
            request.stdin.clone(),
            request.stdout.clone(),
            request.stderr.clone(),
            Vec::new(),
        ));
        let pid_file = work_dir.join("init.pid");
        let launched = self
            .launch(&init, stdin, stdout, stderr, pid_file.clone(), |spec| self.state.runtime.create(&request.id, &bundle, spec))
            .await;
        let exited = match launched {
            Ok(exited) => exited,
            Err(error) => {
                // The runtime writes the pid file only once it created the
                // container; then the failure came after, and the container goes.
                if pid_file.exists() {
                    let _ = self.state.runtime.delete(&request.id, true).await;
                }
                let _ = std::fs::remove_dir_all(&work_dir);
                return Err(error);
            }
        };
        let container = Arc::new(Container {
            id: request.id.clone(),
            bundle: request.bundle.clone(),
            work_dir,
            cgroup,
            log,
            init: init.clone(),
            execs: Mutex::new(HashMap::new()),
            oom_killed: AtomicBool::new(false),
        });
        tokio::spawn(self.clone().supervise(container.clone(), init, exited));
        Ok(container)
    }

    /// Sets up a process's stdio, runs the runtime command that starts it,
    /// records its pid and watches its exit; the copy loops start once the pid is known.
    async fn launch<F, Fut>(
        &self,
        process: &Arc<Process>,
        stdin: Input,
        stdout: Output,
        stderr: Output,
        pid_file: PathBuf,
        run: F,
    ) -> Result<oneshot::Receiver<ExitStatus>, TaskError>
    where
        F: FnOnce(StartSpec) -> Fut,
        Fut: Future<Output = Result<(), RuntimeError>>,
    {
        let _ = std::fs::remove_file(&pid_file);
        let mut io = ProcessIo::default();
        let mut output_copies = Vec::new();
        let mut input_copy = None;
        if process.terminal && matches!(stdin, Input::File(_)) {
            return Err(TaskError::InvalidArgument("stdin: a terminal takes its input from a FIFO only".into()));
        }
        let started_under_way = self.state.reaper.start_under_way();
        if process.terminal {
            let sequence = self.state.console_sequence.fetch_add(1, Ordering::Relaxed);
            let socket_path = self.state.state_dir.join(format!("console-{sequence}.sock"));
            let console = ConsoleSocket::bind(socket_path).map_err(|error| internal("binding the console socket", error))?;
            let (master_sender, master_receiver) = oneshot::channel();
            let socket_path = console.path().to_path_buf();
            let receiving = tokio::spawn(async move {
                let _ = master_sender.send(console.receive_master().await);
            });
            let spec = StartSpec { stdio: ProcessStdio::default(), console_socket: Some(socket_path), pid_file: pid_file.clone() };
            let result = run(spec).await;
            if let Err(error) = result {
                receiving.abort();
                return Err(error.into());
            }
            let master = match tokio::time::timeout(CONSOLE_HANDOVER, master_receiver).await {
                Ok(Ok(Ok(master))) => master,
                Ok(Ok(Err(error))) => return Err(internal("receiving the terminal", error)),
                _ => {
                    receiving.abort();
                    return Err(TaskError::Internal("the runtime never handed over the terminal".into()));
                }
            };
            let writer: OwnedFd = master.try_clone().map_err(|error| internal("duplicating the terminal", error))?;
            let console = Arc::new(AsyncStream::new(writer).map_err(|error| internal("terminal", error))?);
            let reader = AsyncStream::new(master).map_err(|error| internal("terminal", error))?;
            // A terminal merges stderr into stdout.
            drop(stderr);
            output_copies.push(OutputCopy { source: reader, sink: stdout, fanout: None }.with_fanout(&process.attachers, LogStream::Stdout));
            if let Input::Fifo(source) = stdin {
                input_copy = Some(InputCopy { source, sink: console.clone() });
            }
            io.console = Some(console);
        } else {
            let (stdin_fd, stdin_copy) = stdin.attach().map_err(|error| internal("stdin pipe", error))?;
            let (stdout_fd, stdout_copy) = stdout.attach().map_err(|error| internal("stdout pipe", error))?;
            let (stderr_fd, stderr_copy) = stderr.attach().map_err(|error| internal("stderr pipe", error))?;
            output_copies.extend(stdout_copy.map(|copy| copy.with_fanout(&process.attachers, LogStream::Stdout)));
            output_copies.extend(stderr_copy.map(|copy| copy.with_fanout(&process.attachers, LogStream::Stderr)));
            input_copy = stdin_copy;
            let stdio = ProcessStdio { stdin: stdin_fd, stdout: stdout_fd, stderr: stderr_fd };
            run(StartSpec { stdio, console_socket: None, pid_file: pid_file.clone() }).await?;
        }
        let pid = read_pid_file(&pid_file)?;
        let exited = self.state.reaper.watch(pid);
        io.outputs = output_copies.into_iter().map(|copy| tokio::spawn(copy.run())).collect();
        io.stdin = input_copy.map(StdinCopy::spawn);
        let mut state = process.state();
        state.pid = pid;
        state.io = io;
        if !process.exec_id.is_empty() {
            state.phase = Phase::Running;
        }
        drop(state);
        // Only now that the pid is watched may exits of unknown pids be dropped.
        drop(started_under_way);
        Ok(exited)
    }

    /// Waits for a process to exit, then records the exit once its output is copied out.
    async fn supervise(self, container: Arc<Container>, process: Arc<Process>, exited: oneshot::Receiver<ExitStatus>) {
        let Ok(exit) = exited.await else {
            return;
        };
        if process.exec_id.is_empty() {
            if container.cgroup.as_ref().is_some_and(|cgroup| cgroup.oom_kills() > 0) {
                container.oom_killed.store(true, Ordering::Relaxed);
            }
            // With a private pid namespace the kernel already killed the rest;
            // with the host's, exec'd processes would outlive their container.
            for exec in container.execs().values() {
                let state = exec.state();
                if state.phase == Phase::Running && state.pid > 0 {
                    // SAFETY: kill has no memory effects.
                    unsafe { libc::kill(state.pid as i32, libc::SIGKILL) };
                }
            }
        }
        let outputs = std::mem::take(&mut process.state().io.outputs);
        let _ = tokio::time::timeout(OUTPUT_DRAIN, futures::future::join_all(outputs)).await;
        let mut state = process.state();
        if let Some(stdin) = state.io.stdin.take() {
            stdin.abort();
        }
        state.phase = Phase::Stopped;
        drop(state);
        if process.exec_id.is_empty() {
            tracing::info!(container = %container.id, code = exit.code, "container exited");
        } else {
            tracing::debug!(container = %container.id, exec = %process.exec_id, code = exit.code, "exec'd process exited");
        }
        process.exit.send_replace(Some(exit));
    }

    async fn start_process(self, id: String, exec_id: String) -> Result<u32, TaskError> {
        let container = self.container(&id)?;
        let process = container.process(&exec_id)?;
        if process.state().phase != Phase::Created {
            return Err(TaskError::FailedPrecondition(format!("container {id}: {} was already started", process.kind())));
        }
        if exec_id.is_empty() {
            self.state.runtime.start(&id).await?;
            let mut state = process.state();
            if state.phase == Phase::Created {
                state.phase = Phase::Running;
            }
            return Ok(state.pid);
        }
        if container.init.state().phase != Phase::Running {
            return Err(TaskError::FailedPrecondition(format!("container {id} is not running")));
        }
        let spec_path = container.work_dir.join(format!("exec-{exec_id}.json"));
        let pid_file = container.work_dir.join(format!("exec-{exec_id}.pid"));
        std::fs::write(&spec_path, &process.spec).map_err(|error| internal(&format!("writing {}", spec_path.display()), error))?;
        let stdin = Input::open(&process.stdin)?;
        let stdout = Output::open_raw(&process.stdout, "stdout")?;
        let stderr = Output::open_raw(&process.stderr, "stderr")?;
        let launched =
            self.launch(&process, stdin, stdout, stderr, pid_file.clone(), |spec| self.state.runtime.exec(&id, &spec_path, spec)).await;
        let _ = std::fs::remove_file(&spec_path);
        let exited = match launched {
            Ok(exited) => exited,
            Err(error) => {
                // A pid file means the process runs although its start failed after; it goes.
                if let Ok(pid) = read_pid_file(&pid_file) {
                    // SAFETY: kill has no memory effects.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
                return Err(error);
            }
        };
        let pid = process.state().pid;
        tokio::spawn(self.clone().supervise(container, process, exited));
        Ok(pid)
    }

    async fn kill_process(self, request: api::KillRequest) -> Result<(), TaskError> {
        let container = self.container(&request.id)?;
        let process = container.process(&request.exec_id)?;
        if !(1..=64).contains(&request.signal) {
            return Err(TaskError::InvalidArgument(format!("signal: {} is not a signal number", request.signal)));
        }
        let finished = || TaskError::NotFound(format!("container {}: {} already finished", request.id, process.kind()));
        if request.exec_id.is_empty() {
            if process.exited().is_some() && !request.all {
                return Err(finished());
            }
            return match self.state.runtime.kill(&request.id, request.signal, request.all).await {
                Err(_) if process.exited().is_some() => Err(finished()),
                result => result.map_err(TaskError::from),
            };
        }
        let state = process.state();
        match state.phase {
            Phase::Created => Err(TaskError::FailedPrecondition(format!("container {}: {} was never started", request.id, process.kind()))),
            Phase::Stopped => Err(finished()),
            // With `all`, what the process started goes too (see `process_tree`).
            Phase::Running if request.all => {
                if !super::process_tree::signal_tree(state.pid as i32, request.signal as i32) {
                    return Err(finished());
                }
                Ok(())
            }
            Phase::Running => {
                // SAFETY: kill has no memory effects.
                if unsafe { libc::kill(state.pid as i32, request.signal as i32) } != 0 {
                    return Err(finished());
                }
                Ok(())
            }
        }
    }

    async fn delete_process(self, id: String, exec_id: String) -> Result<api::DeleteResponse, TaskError> {
        let container = self.container(&id)?;
        let process = container.process(&exec_id)?;
        let phase = process.state().phase;
        if phase == Phase::Running {
            return Err(TaskError::FailedPrecondition(format!("container {id}: {} is running; kill it first", process.kind())));
        }
        if !exec_id.is_empty() {
            container.execs().remove(&exec_id);
            let _ = std::fs::remove_file(container.work_dir.join(format!("exec-{exec_id}.pid")));
            return Ok(delete_response(&process));
        }
        let result = self.state.runtime.delete(&id, phase == Phase::Created).await;
        if let Err(error) = result {
            // Already gone from the runtime's state: nothing is left to remove.
            if !error.to_string().contains("does not exist") {
                return Err(error.into());
            }
        }
        if phase == Phase::Created {
            // A forced delete killed the init process; its exit completes the record.
            let mut exit = process.exit.subscribe();
            let _ = tokio::time::timeout(OUTPUT_DRAIN * 2, exit.wait_for(Option::is_some)).await;
        }
        self.table().containers.remove(&id);
        let execs: Vec<Arc<Process>> = container.execs().drain().map(|(_, exec)| exec).collect();
        for process in execs.iter().chain(std::iter::once(&container.init)) {
            let mut state = process.state();
            if let Some(stdin) = state.io.stdin.take() {
                stdin.abort();
            }
            for copy in state.io.outputs.drain(..) {
                copy.abort();
            }
        }
        let _ = std::fs::remove_dir_all(&container.work_dir);
        Ok(delete_response(&process))
    }

    fn register_exec(&self, request: api::ExecProcessRequest) -> Result<(), TaskError> {
        validate_name("exec_id", &request.exec_id)?;
        let container = self.container(&request.id)?;
        let spec = request.spec.as_ref().map(|any| any.value.clone()).unwrap_or_default();
        check_process_json(&spec)?;
        if container.init.state().phase != Phase::Running {
            return Err(TaskError::FailedPrecondition(format!("container {} is not running", request.id)));
        }
        let mut execs = container.execs();
        if execs.contains_key(&request.exec_id) {
            return Err(TaskError::AlreadyExists(format!("container {}: exec process {:?} already exists", request.id, request.exec_id)));
        }
        let process = Process::new(request.exec_id.clone(), request.terminal, request.stdin, request.stdout, request.stderr, spec);
        execs.insert(request.exec_id, Arc::new(process));
        Ok(())
    }

    fn reopen_log(&self, id: &str) -> Result<(), TaskError> {
        let container = self.container(id)?;
        let log = container.log.as_ref().ok_or_else(|| TaskError::FailedPrecondition(format!("container {id} has no CRI log file")))?;
        log.reopen().map_err(|error| internal(&format!("reopening {}", log.path().display()), error))
    }

    /// Gives the FIFOs named in `stdout`/`stderr` a live copy of the process's
    /// output. Both are opened before either is attached, so a bad one attaches none.
    fn attach(&self, request: &api::ExecProcessRequest) -> Result<(), TaskError> {
        let container = self.container(&request.id)?;
        let process = container.process(&request.exec_id)?;
        let mut fifos = Vec::new();
        for (path, field, stream) in [(&request.stdout, "stdout", LogStream::Stdout), (&request.stderr, "stderr", LogStream::Stderr)] {
            if path.is_empty() {
                continue;
            }
            let Output::Fifo(fifo) = (if is_fifo(path) { Output::open_raw(path, field)? } else { Output::Discard }) else {
                return Err(TaskError::InvalidArgument(format!("{field} {path:?}: not a FIFO")));
            };
            fifos.push((stream, fifo));
        }
        for (stream, fifo) in fifos {
            process.attachers.attach(stream, fifo);
        }
        Ok(())
    }

    fn oom_killed(&self, id: &str) -> Result<bool, TaskError> {
        let container = self.container(id)?;
        let recorded = container.oom_killed.load(Ordering::Relaxed);
        Ok(recorded || container.cgroup.as_ref().is_some_and(|cgroup| cgroup.oom_kills() > 0))
    }
}

fn delete_response(process: &Process) -> api::DeleteResponse {
    let mut response = api::DeleteResponse { pid: process.state().pid, ..Default::default() };
    if let Some(exit) = process.exited() {
        response.exit_status = exit.code;
        response.exited_at = MessageField::some(Timestamp::from(exit.at));
    }
    response
}

/// Container and exec ids name files and directories, so they are kept to a safe alphabet.
fn validate_name(field: &str, name: &str) -> Result<(), TaskError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 128 || !name.chars().all(allowed) || name.starts_with('.') {
        return Err(TaskError::InvalidArgument(format!("{field} {name:?}: must be 1 to 128 of [A-Za-z0-9_.-], not starting with a dot")));
    }
    Ok(())
}

/// Checks that a JSON document is an object. The runtime validates the rest;
/// this only turns garbage into an error that names the field. (oci-spec's
/// types would do it too, but would double the code an idle shim maps.)
fn json_object(field: &str, json: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, TaskError> {
    match serde_json::from_slice(json) {
        Ok(serde_json::Value::Object(object)) => Ok(object),
        Ok(_) => Err(TaskError::InvalidArgument(format!("{field}: not a JSON object"))),
        Err(error) => Err(TaskError::InvalidArgument(format!("{field}: not JSON: {error}"))),
    }
}

/// An OCI process needs at least its command line.
fn check_process_json(json: &[u8]) -> Result<(), TaskError> {
    let process = json_object("spec", json)?;
    let args = process.get("args").and_then(|args| args.as_array());
    if !args.is_some_and(|args| !args.is_empty() && args.iter().all(serde_json::Value::is_string)) {
        return Err(TaskError::InvalidArgument("spec.args: an OCI process needs a non-empty list of strings".into()));
    }
    Ok(())
}

fn is_fifo(path: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).map(|meta| meta.file_type().is_fifo()).unwrap_or(false)
}

fn status_of(phase: Phase) -> api::Status {
    match phase {
        Phase::Created => api::Status::CREATED,
        Phase::Running => api::Status::RUNNING,
        Phase::Stopped => api::Status::STOPPED,
    }
}

#[tonic::async_trait]
impl<R: OciRuntime> Task for TaskService<R> {
    async fn state(&self, _: &TtrpcContext, request: api::StateRequest) -> ttrpc::Result<api::StateResponse> {
        let container = self.container(&request.id)?;
        let process = container.process(&request.exec_id)?;
        let state = process.state();
        let mut response = api::StateResponse {
            id: request.id,
            exec_id: request.exec_id,
            bundle: container.bundle.clone(),
            pid: state.pid,
            status: EnumOrUnknown::new(status_of(state.phase)),
            stdin: process.stdin.clone(),
            stdout: process.stdout.clone(),
            stderr: process.stderr.clone(),
            terminal: process.terminal,
            ..Default::default()
        };
        if let Some(exit) = process.exited() {
            response.exit_status = exit.code;
            response.exited_at = MessageField::some(Timestamp::from(exit.at));
        }
        Ok(response)
    }

    async fn create(&self, _: &TtrpcContext, request: api::CreateTaskRequest) -> ttrpc::Result<api::CreateTaskResponse> {
        let pid = self.detached(self.clone().create_container(request)).await?;
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    async fn start(&self, _: &TtrpcContext, request: api::StartRequest) -> ttrpc::Result<api::StartResponse> {
        let pid = self.detached(self.clone().start_process(request.id, request.exec_id)).await?;
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    async fn delete(&self, _: &TtrpcContext, request: api::DeleteRequest) -> ttrpc::Result<api::DeleteResponse> {
        Ok(self.detached(self.clone().delete_process(request.id, request.exec_id)).await?)
    }

    async fn pids(&self, _: &TtrpcContext, request: api::PidsRequest) -> ttrpc::Result<api::PidsResponse> {
        let container = self.container(&request.id)?;
        let mut pids = container.cgroup.as_ref().map(ContainerCgroup::pids).unwrap_or_default();
        let init_pid = container.init.state().pid;
        if pids.is_empty() && container.init.exited().is_none() && init_pid > 0 {
            pids.push(init_pid);
        }
        let processes = pids.into_iter().map(|pid| api::ProcessInfo { pid, ..Default::default() }).collect();
        Ok(api::PidsResponse { processes, ..Default::default() })
    }

    async fn kill(&self, _: &TtrpcContext, request: api::KillRequest) -> ttrpc::Result<Empty> {
        self.detached(self.clone().kill_process(request)).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, request: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
        self.register_exec(request)?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, request: api::ResizePtyRequest) -> ttrpc::Result<Empty> {
        let container = self.container(&request.id)?;
        let process = container.process(&request.exec_id)?;
        let console = process.state().io.console.clone();
        let console = console.ok_or_else(|| TaskError::FailedPrecondition(format!("container {}: {} has no terminal", request.id, process.kind())))?;
        resize_terminal(&console, request.width, request.height).map_err(|error| internal("resizing the terminal", error))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, request: api::CloseIORequest) -> ttrpc::Result<Empty> {
        let container = self.container(&request.id)?;
        let process = container.process(&request.exec_id)?;
        let stdin = if request.stdin { process.state().io.stdin.take() } else { None };
        if let Some(stdin) = stdin {
            stdin.finish().await;
        }
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, request: api::UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let resources = request.resources.as_ref().map(|any| any.value.clone()).unwrap_or_default();
        json_object("resources", &resources)?;
        let container = self.container(&request.id)?;
        if container.init.state().phase != Phase::Running {
            return Err(TaskError::FailedPrecondition(format!("container {} is not running", request.id)).into());
        }
        let service = self.clone();
        self.detached(async move { Ok(service.state.runtime.update(&request.id, &resources).await?) }).await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _: &TtrpcContext, request: api::WaitRequest) -> ttrpc::Result<api::WaitResponse> {
        let container = self.container(&request.id)?;
        let process = container.process(&request.exec_id)?;
        let mut exit = process.exit.subscribe();
        let exit = exit.wait_for(Option::is_some).await.map(|exit| *exit);
        let Ok(Some(exit)) = exit else {
            return Err(TaskError::Internal("the shim is shutting down".into()).into());
        };
        Ok(api::WaitResponse { exit_status: exit.code, exited_at: MessageField::some(Timestamp::from(exit.at)), ..Default::default() })
    }

    async fn stats(&self, _: &TtrpcContext, request: api::StatsRequest) -> ttrpc::Result<api::StatsResponse> {
        let container = self.container(&request.id)?;
        let cgroup = container
            .cgroup
            .as_ref()
            .ok_or_else(|| TaskError::FailedPrecondition(format!("container {}: config.json names no linux.cgroupsPath", request.id)))?;
        let stats = cgroup.metrics().map_err(|error| TaskError::FailedPrecondition(error.to_string()))?;
        Ok(api::StatsResponse { stats: MessageField::some(stats), ..Default::default() })
    }

    async fn connect(&self, _: &TtrpcContext, request: api::ConnectRequest) -> ttrpc::Result<api::ConnectResponse> {
        let task_pid = self.table().containers.get(&request.id).map(|container| container.init.state().pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: concat!("berth-shim ", env!("CARGO_PKG_VERSION")).into(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, request: api::ShutdownRequest) -> ttrpc::Result<Empty> {
        if request.now || self.table().containers.is_empty() {
            self.state.exit_requested.notify_one();
        }
        Ok(Empty::new())
    }
}

#[derive(Clone, Copy)]
enum Extra {
    ReopenLog,
    OomKilled,
    Attach,
}

/// A method of `berth.shim.v1.Container`. `ReopenLog` and `OomKilled` take the
/// container id as a `google.protobuf.StringValue` and answer `Empty` and a
/// `google.protobuf.BoolValue`; `Attach` takes an `ExecProcessRequest` naming
/// the process and its attacher's FIFOs, and answers `Empty`.
struct ExtraMethod<R> {
    service: TaskService<R>,
    method: Extra,
}

#[tonic::async_trait]
impl<R: OciRuntime> MethodHandler for ExtraMethod<R> {
    async fn handler(&self, _: TtrpcContext, request: ttrpc::Request) -> ttrpc::Result<ttrpc::Response> {
        let mut response = ttrpc::Response::new();
        let outcome = match (self.method, StringValue::parse_from_bytes(&request.payload)) {
            (Extra::Attach, _) => match api::ExecProcessRequest::parse_from_bytes(&request.payload) {
                Err(error) => Err(TaskError::InvalidArgument(format!("request: not an ExecProcessRequest: {error}"))),
                Ok(attach) => self.service.attach(&attach).map(|()| Empty::new().write_to_bytes()),
            },
            (_, Err(error)) => Err(TaskError::InvalidArgument(format!("request: not a StringValue container id: {error}"))),
            (Extra::ReopenLog, Ok(id)) => self.service.reopen_log(&id.value).map(|()| Empty::new().write_to_bytes()),
            (Extra::OomKilled, Ok(id)) => {
                self.service.oom_killed(&id.value).map(|killed| BoolValue { value: killed, ..Default::default() }.write_to_bytes())
            }
        };
        match outcome {
            Ok(Ok(payload)) => {
                response.set_status(ttrpc::get_status(Code::OK, ""));
                response.payload = payload;
            }
            Ok(Err(error)) => response.set_status(ttrpc::get_status(Code::INTERNAL, format!("encoding the response: {error}"))),
            Err(error) => {
                if let ttrpc::Error::RpcStatus(status) = ttrpc::Error::from(error) {
                    response.set_status(status);
                }
            }
        }
        Ok(response)
    }
}
