//! Reaping. The shim is a child subreaper: the OCI runtime's commands are its
//! children, and container processes become its children once the runtime that
//! forked them exits. One loop reaps every exit on SIGCHLD and hands each to
//! whoever watches that pid.
//!
//! A container process is known only by the pid the runtime writes to its pid
//! file, and it may exit before that file is read. While such a start is under
//! way, exits of pids nobody watches yet are kept, so the late watcher still gets
//! its exit; once no start is under way they are dropped, as they belong to
//! orphans nobody asked about.

use std::collections::HashMap;
use std::io;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use rustix::process::{WaitOptions, WaitStatus};
use tokio::signal::unix::Signal;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, or 128 + the signal number for a process killed by a signal
    /// (the shell's convention, which containerd and kubelet use too).
    pub code: u32,
    pub at: SystemTime,
}

impl ExitStatus {
    fn from_wait(status: WaitStatus, at: SystemTime) -> ExitStatus {
        let code = match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => code as u32,
            (None, Some(signal)) => 128 + signal as u32,
            (None, None) => 255,
        };
        ExitStatus { code, at }
    }
}

#[derive(Default)]
struct ReaperState {
    watchers: HashMap<i32, oneshot::Sender<ExitStatus>>,
    starts_under_way: usize,
    unwatched_exits: HashMap<i32, ExitStatus>,
}

#[derive(Default)]
pub struct Reaper {
    state: Mutex<ReaperState>,
}

impl Reaper {
    pub fn new() -> Arc<Reaper> {
        Arc::new(Reaper::default())
    }

    fn lock(&self) -> MutexGuard<'_, ReaperState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spawns a command and watches its exit. The watcher is registered under the
    /// same lock the reaping loop takes, so even an instant exit reaches it.
    pub fn spawn(&self, command: &mut Command) -> io::Result<(u32, oneshot::Receiver<ExitStatus>)> {
        let mut state = self.lock();
        let child = command.spawn()?;
        let pid = child.id();
        // The std handle is dropped without waiting: the reaping loop owns every wait.
        drop(child);
        let (sender, receiver) = oneshot::channel();
        state.watchers.insert(pid as i32, sender);
        Ok((pid, receiver))
    }

    /// Marks a start whose pid is not known yet; see the module comment.
    pub fn start_under_way(self: &Arc<Self>) -> StartUnderWay {
        self.lock().starts_under_way += 1;
        StartUnderWay { reaper: self.clone() }
    }

    /// Watches a process that is (or was) a child of the shim, by pid.
    pub fn watch(&self, pid: u32) -> oneshot::Receiver<ExitStatus> {
        let mut state = self.lock();
        let (sender, receiver) = oneshot::channel();
        match state.unwatched_exits.remove(&(pid as i32)) {
            Some(exit) => {
                let _ = sender.send(exit);
            }
            None => {
                state.watchers.insert(pid as i32, sender);
            }
        }
        receiver
    }

    /// Reaps until the SIGCHLD stream ends; run as its own task for the life of the shim.
    pub async fn run(self: Arc<Self>, mut sigchld: Signal) {
        loop {
            self.reap_exited();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    }

    fn reap_exited(&self) {
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => self.deliver(pid.as_raw_nonzero().get(), status),
                Ok(None) => return,
                Err(rustix::io::Errno::INTR) => continue,
                // ECHILD: no children left at all.
                Err(_) => return,
            }
        }
    }

    fn deliver(&self, pid: i32, status: WaitStatus) {
        if !(status.exited() || status.signaled()) {
            return;
        }
        let exit = ExitStatus::from_wait(status, SystemTime::now());
        let mut state = self.lock();
        match state.watchers.remove(&pid) {
            Some(watcher) => {
                let _ = watcher.send(exit);
            }
            None if state.starts_under_way > 0 => {
                state.unwatched_exits.insert(pid, exit);
            }
            None => tracing::debug!(pid, code = exit.code, "reaped an orphan"),
        }
    }
}

pub struct StartUnderWay {
    reaper: Arc<Reaper>,
}

impl Drop for StartUnderWay {
    fn drop(&mut self) {
        let mut state = self.reaper.lock();
        state.starts_under_way -= 1;
        if state.starts_under_way == 0 {
            state.unwatched_exits.clear();
        }
    }
}
