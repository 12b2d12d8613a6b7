//! berth-shim, one per pod, and berthd's client for it.
//!
//! berthd starts `berth-shim --id POD --state-dir DIR --runtime BIN --runtime-root DIR`;
//! the first process forks the shim proper and exits once it serves, printing
//! the socket address. The shim runs in its own session as a child subreaper,
//! logs to `DIR/shim.log`, writes its pid to `DIR/shim.pid` and serves ttrpc on
//! `DIR/shim.sock` (mode 0600) until `Shutdown`. It outlives berthd.
//!
//! The protocol is containerd's shim Task API (registered as both
//! `containerd.task.v2.Task` and `containerd.task.v3.Task`) with these conventions:
//!
//! * Create: `bundle` holds `config.json` and an already mounted `rootfs`;
//!   `rootfs` mounts and checkpoints are refused. `stdout` is the path of the
//!   container's CRI log file and both streams go there (`stderr` empty) — unless
//!   `stdout` is a FIFO, in which case stdout and stderr are raw FIFOs as with
//!   containerd. `stdin` is a FIFO (opened read-write, so it ends only with
//!   `CloseIO`) or empty. The cgroup of the container is `linux.cgroupsPath` of
//!   config.json, an absolute cgroupfs path, read for `Stats`, `Pids` and OOM kills.
//! * Exec registers the process (`spec` is an `Any` whose value is OCI Process
//!   JSON); Start runs it. Its `stdout`/`stderr` are FIFOs (their reader must have
//!   opened them before Start) or files to append to; empty discards.
//! * Wait and State report an exit only once the process's output is copied out
//!   (at most 2 s after the exit). Exit codes of killed processes are 128 + signal.
//! * Stats answers `io.containerd.cgroups.v1.Metrics` or `...v2.Metrics`.
//! * Shutdown exits when no container is left, or always with `now`.
//!
//! Beside it, `berth.shim.v1.Container` has two methods taking the container id
//! as a `google.protobuf.StringValue`: `ReopenLog` (after kubelet rotated the
//! log; answers `Empty`) and `OomKilled` (whether the kernel's OOM killer killed
//! a process of the container; answers `google.protobuf.BoolValue`). A third,
//! `Attach`, takes an `ExecProcessRequest` whose `id`/`exec_id` name a process
//! (`exec_id` empty: the container's own) and whose `stdout`/`stderr` name FIFOs,
//! already open for reading, that get a live copy of that output stream from
//! then on; a FIFO ends when the stream does, or when its reader falls more than
//! 64 chunks behind. Answers `Empty`.

mod cgroup;
pub mod cgroup_tree;
pub mod client;
mod cri_log;
mod process_tree;
mod reaper;
pub mod runtime;
pub mod server;
mod service;
mod stdio;

pub use client::{CreateTask, ExecOutput, Exit, ShimClient, ShimError, SpawnOptions, Stats, TaskState, TaskStatus};
pub use cri_log::rfc3339_nano;

/// The Task API's service names; containerd 2.0 renamed v2 to v3 without changing a message.
pub const TASK_SERVICE_V2: &str = "containerd.task.v2.Task";
pub const TASK_SERVICE_V3: &str = "containerd.task.v3.Task";
/// berth's service beside the Task API.
pub const EXTRA_SERVICE: &str = "berth.shim.v1.Container";
pub const REOPEN_LOG_METHOD: &str = "ReopenLog";
pub const OOM_KILLED_METHOD: &str = "OomKilled";
pub const ATTACH_METHOD: &str = "Attach";

/// File names inside a pod's shim state directory.
pub const SOCKET_FILE: &str = "shim.sock";
pub const PID_FILE: &str = "shim.pid";
pub const LOG_FILE: &str = "shim.log";
