//! berth's own description of a container and of the pod around it. The fields
//! carry the meaning of their CRI counterparts (`src/cri/` maps one onto the
//! other) without depending on CRI types, so that the builder and tests can
//! describe containers too. They serialise, so the orchestration can store them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What the image's config contributes to a container: the OCI image config's
/// `Entrypoint`, `Cmd`, `Env` (`KEY=value` entries), `WorkingDir`, `User` and
/// `StopSignal`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: Option<String>,
}

/// An application container as the user asked for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    /// The image as the user named it; recorded in the spec's annotations.
    pub image: String,
    /// Replaces the image's ENTRYPOINT when not empty.
    pub command: Vec<String>,
    /// Replaces the image's CMD when not empty.
    pub args: Vec<String>,
    /// Empty means the image's working dir, then `/`.
    pub working_dir: String,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub devices: Vec<Device>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
    pub resources: Resources,
    pub security: SecurityContext,
}

/// A bind mount from the host into the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub container_path: PathBuf,
    pub host_path: PathBuf,
    pub readonly: bool,
    pub propagation: Propagation,
    /// Accepted and ignored: berth runs where SELinux is absent.
    pub selinux_relabel: bool,
    /// Read-only for every submount too (`rro`); needs `readonly` and private
    /// propagation.
    pub recursive_read_only: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    /// `rprivate`: no mount events cross in either direction.
    #[default]
    Private,
    /// `rslave`: mounts made on the host under the source appear in the container.
    HostToContainer,
    /// `rshared`: mount events cross both ways.
    Bidirectional,
}

/// A host device node (or a directory of them) made visible in the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub container_path: PathBuf,
    pub host_path: PathBuf,
    /// Device cgroup access, a combination of `r`, `w` and `m`; empty means `rwm`.
    pub permissions: String,
}

/// cgroup limits. Zero (or an empty string) leaves a limit unset, as in CRI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_bytes: i64,
    /// Memory plus swap; when unset and the host accounts swap, it equals the
    /// memory limit so that a container does not swap by default.
    pub memory_swap_limit_bytes: i64,
    /// Clamped to what the host allows (see `HostFacts::oom_score_adj_min`).
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub hugepage_limits: Vec<HugepageLimit>,
    /// cgroup v2 files and their values, written as given.
    pub unified: BTreeMap<String, String>,
    pub pids_limit: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HugepageLimit {
    /// As the kernel names it in the hugetlb controller: `2MB`, `1GB`.
    pub page_size: String,
    pub limit_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityContext {
    /// All capabilities, all host devices, no masked or read-only paths, no
    /// seccomp or AppArmor confinement, writable sysfs and cgroupfs. Only in a
    /// privileged pod.
    pub privileged: bool,
    pub readonly_rootfs: bool,
    pub run_as_user: Option<i64>,
    /// Needs `run_as_user` or `run_as_username`.
    pub run_as_group: Option<i64>,
    pub run_as_username: String,
    pub supplemental_groups: Vec<i64>,
    pub supplemental_groups_policy: SupplementalGroupsPolicy,
    /// Capability names with or without `CAP_`, or `ALL`.
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    pub no_new_privs: bool,
    /// `None` gives containerd's default list; an empty list masks nothing.
    pub masked_paths: Option<Vec<String>>,
    /// `None` gives containerd's default list; an empty list protects nothing.
    pub readonly_paths: Option<Vec<String>>,
    pub seccomp: Seccomp,
    pub apparmor: AppArmor,
    pub namespaces: NamespaceOptions,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupplementalGroupsPolicy {
    /// The groups the image's /etc/group gives the user, plus the listed ones.
    #[default]
    Merge,
    /// Only the primary group and the listed ones.
    Strict,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Seccomp {
    #[default]
    Unconfined,
    /// berth's default profile, equivalent to containerd's and Docker's.
    RuntimeDefault,
    /// A profile in Docker's seccomp JSON format, read from this host path.
    Localhost(PathBuf),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppArmor {
    #[default]
    Unconfined,
    /// Confinement by the host's default profile where AppArmor is enabled;
    /// nothing on hosts without AppArmor.
    RuntimeDefault,
    /// A profile already loaded on the host, by name.
    Localhost(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceOptions {
    pub network: NamespaceMode,
    pub pid: PidNamespace,
    pub ipc: NamespaceMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceMode {
    /// Shared with the pod (the pause container holds it).
    #[default]
    Pod,
    /// The host's.
    Node,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PidNamespace {
    #[default]
    Pod,
    /// A namespace of the container's own.
    Container,
    Node,
    /// The namespace of another container, by the host pid of its init
    /// process (the caller resolves CRI's `target_id` to it).
    Target(u32),
}

/// What the pod gives each of its containers, and the pod-level settings of
/// its pause container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxContext {
    pub sandbox_id: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    /// The pod's network namespace (a bind-mounted nsfs file); `None` is the
    /// host network, which also means the host's UTS namespace.
    pub netns_path: Option<PathBuf>,
    pub host_pid: bool,
    pub host_ipc: bool,
    /// The running pause process, whose IPC, UTS and PID namespaces the
    /// containers join through `/proc/<pid>/ns/*`.
    pub pause_pid: Option<u32>,
    /// Empty means the host's name.
    pub hostname: String,
    /// The pod's /etc/hostname, /etc/hosts and /etc/resolv.conf, bind-mounted
    /// into every container that does not mount those paths itself.
    pub hostname_path: PathBuf,
    pub hosts_path: PathBuf,
    pub resolv_conf_path: PathBuf,
    /// The pod's /dev/shm (a tmpfs on the host); `None` gives every container
    /// a private one. Ignored with `host_ipc`, which shares the host's.
    pub shm_path: Option<PathBuf>,
    /// cgroupfs path of the pod, e.g. `/berth/<pod-id>`; containers go below it.
    pub cgroup_parent: String,
    /// Applied to the pause container, whose network and IPC namespaces the
    /// pod shares; only namespaced sysctls are accepted.
    pub sysctls: BTreeMap<String, String>,
    pub privileged: bool,
    /// Pod-level identity and seccomp, for the pause container.
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub seccomp: Seccomp,
    /// Passed into the pause container's spec annotations.
    pub pod_annotations: BTreeMap<String, String>,
}
