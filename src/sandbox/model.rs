//! The sandbox room's records: what a pod and a container are, in berth's own
//! terms. `src/cri/` translates CRI messages into these; the metadata database
//! stores them as JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::cni::{NetworkStatus, PortMapping};
use super::files::DnsConfig;
use crate::oci::{ContainerSpec, Seccomp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceMode {
    /// The pod's own namespace, shared by its containers.
    Pod,
    /// The node's namespace.
    Node,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodConfig {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub hostname: String,
    pub log_directory: Option<PathBuf>,
    pub dns: Option<DnsConfig>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// cgroupfs parent as kubelet gives it; empty means berth's own `/berth`.
    pub cgroup_parent: String,
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    pub sysctls: BTreeMap<String, String>,
    pub runtime_handler: String,
    /// Pod-level security, applied to the pause container.
    pub privileged: bool,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub seccomp: Seccomp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub config: PodConfig,
    pub state: PodState,
    pub created_at_nanos: i64,
    /// The pod's addresses as CNI reported them, primary first.
    pub ips: Vec<String>,
    /// CNI's ADD result, handed back to CHECK and DEL as the spec asks.
    pub network: Option<NetworkStatus>,
    /// The network namespace's bind mount; None for host-network pods.
    pub netns: Option<PathBuf>,
    /// The pause process holding the pod's IPC/UTS/PID namespaces.
    pub pause_pid: Option<u32>,
    pub cgroup_parent: String,
    pub handler: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    /// The image as the request named it, and the id it resolved to.
    pub image: String,
    pub image_id: String,
    pub spec: ContainerSpec,
    /// Absolute path of the CRI log file; None when the pod has no log directory.
    pub log_path: Option<PathBuf>,
    pub state: ContainerState,
    pub created_at_nanos: i64,
    pub started_at_nanos: i64,
    pub finished_at_nanos: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub pid: Option<u32>,
    /// The image's STOPSIGNAL, when it names one.
    pub stop_signal: Option<String>,
    /// Who the container's process runs as, as resolved against the image when it
    /// was created; absent in records of berth versions that did not keep it.
    #[serde(default)]
    pub user: Option<ProcessUser>,
}

/// The uid, primary gid and supplemental gids a container's process runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub supplemental_gids: Vec<u32>,
}
