//! What a RunPodSandbox under way is about to make, written to the pod's state
//! directory before it makes anything. A berthd that dies midway leaves the file
//! behind with whatever part of the pod it had made; the next berthd reads it to
//! undo exactly that part (CNI DEL, the pod's cgroups, its runtime state) before
//! it serves. The pod's record in the database replaces the intent once the pod runs.
//!
//! Crash points: `BERTH_TEST_CRASH_AT=<point>` makes berthd SIGKILL itself when a
//! RunPodSandbox reaches `<point>` (see [`crash_point`]), so that tests can stop it
//! at chosen steps deterministically. Unset, as in production, it costs one lookup.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::error::SandboxError;
use super::model::PodConfig;

pub const INTENT_FILE: &str = "intent.json";
/// The environment variable naming the step at which berthd kills itself.
pub const CRASH_AT_VARIABLE: &str = "BERTH_TEST_CRASH_AT";

/// Everything needed to find what a half-made pod made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodIntent {
    pub id: String,
    pub config: PodConfig,
    /// The runtime handler, whose state root may hold the pause container.
    pub handler: String,
    /// The pod's cgroup parent (berth's `/berth/<id>` unless kubelet named one).
    pub cgroup_parent: String,
    /// The network namespace, when the pod gets its own (then CNI ADD may have run).
    pub netns: Option<PathBuf>,
}

pub fn write(pod_dir: &Path, intent: &PodIntent) -> Result<(), SandboxError> {
    let path = pod_dir.join(INTENT_FILE);
    let json = serde_json::to_vec(intent).map_err(|e| SandboxError::invalid("pod intent", e.to_string()))?;
    crate::durable::write_file(&path, &json, 0o600).map_err(SandboxError::io(format!("writing {}", path.display())))
}

/// The intent a half-made pod left, if any (and if readable: a file that is not
/// whole was never acted upon, as it is written before the first step).
pub fn read(pod_dir: &Path) -> Option<PodIntent> {
    let bytes = std::fs::read(pod_dir.join(INTENT_FILE)).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(intent) => Some(intent),
        Err(error) => {
            tracing::warn!(dir = %pod_dir.display(), %error, "unreadable pod intent; sweeping by name only");
            None
        }
    }
}

/// Test hook: SIGKILLs this process when `point` is the step named in
/// `BERTH_TEST_CRASH_AT`, as `kill -9` would at that moment.
pub fn crash_point(point: &str) {
    static CRASH_AT: OnceLock<Option<String>> = OnceLock::new();
    let wanted = CRASH_AT.get_or_init(|| std::env::var(CRASH_AT_VARIABLE).ok().filter(|v| !v.is_empty()));
    if wanted.as_deref() == Some(point) {
        tracing::warn!(point, "{CRASH_AT_VARIABLE}: killing berthd here");
        // SIGKILL rather than abort: no unwinding, no core file, nothing flushed.
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
