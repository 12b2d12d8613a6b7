//! The sandbox room's records: what a pod and a container are, in berth's own
//! terms. `src/cri/` translates CRI messages into these; the metadata database
//! stores them as JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::cni::{PortMapping, Protocol};
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
    pub dns: Option<DnsConfigRecord>,
    pub port_mappings: Vec<PortMappingRecord>,
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

/// Serialisable copies of the CNI and files types, so their modules stay free of
/// storage concerns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsConfigRecord {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl From<&DnsConfigRecord> for DnsConfig {
    fn from(d: &DnsConfigRecord) -> Self {
        DnsConfig { servers: d.servers.clone(), searches: d.searches.clone(), options: d.options.clone() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortMappingRecord {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub container_port: u16,
    pub host_port: u16,
    pub host_ip: String,
}

impl PortMappingRecord {
    pub fn to_cni(&self) -> PortMapping {
        let protocol = match self.protocol.as_str() {
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => Protocol::Tcp,
        };
        PortMapping { protocol, container_port: self.container_port, host_port: self.host_port, host_ip: self.host_ip.clone() }
    }
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
}
