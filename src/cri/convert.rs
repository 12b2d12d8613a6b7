//! CRI messages to berth's own pod and container types, and back. Validation that
//! needs only the message happens here, with errors naming the CRI field.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use k8s_cri::v1 as cri;
use tonic::Status;

use super::status::missing;
use crate::oci::{
    AppArmor, Device, HugepageLimit, Mount, NamespaceMode as OciNamespaceMode, NamespaceOptions, PidNamespace,
    Propagation, Resources, Seccomp, SecurityContext, SupplementalGroupsPolicy,
};
use crate::sandbox::cni::{PortMapping, Protocol};
use crate::sandbox::files::DnsConfig;
use crate::sandbox::model::{ContainerRecord, ContainerState, NamespaceMode, PodConfig, PodRecord, PodState};

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

fn sorted(map: HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

fn unsorted(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn namespace_mode(mode: i32, field: &str) -> Result<NamespaceMode, Status> {
    match cri::NamespaceMode::try_from(mode) {
        Ok(cri::NamespaceMode::Pod) | Ok(cri::NamespaceMode::Container) => Ok(NamespaceMode::Pod),
        Ok(cri::NamespaceMode::Node) => Ok(NamespaceMode::Node),
        Ok(cri::NamespaceMode::Target) => Err(invalid(field, "TARGET applies to a container's pid namespace only")),
        Err(_) => Err(invalid(field, format!("unknown namespace mode {mode}"))),
    }
}

fn seccomp(profile: Option<&cri::SecurityProfile>, deprecated_path: &str, field: &str) -> Result<Seccomp, Status> {
    if let Some(profile) = profile {
        return match cri::security_profile::ProfileType::try_from(profile.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => Ok(Seccomp::RuntimeDefault),
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(Seccomp::Unconfined),
            Ok(cri::security_profile::ProfileType::Localhost) if !profile.localhost_ref.is_empty() => {
                Ok(Seccomp::Localhost(PathBuf::from(&profile.localhost_ref)))
            }
            Ok(cri::security_profile::ProfileType::Localhost) => Err(invalid(&format!("{field}.localhost_ref"), "is empty")),
            Err(_) => Err(invalid(&format!("{field}.profile_type"), format!("unknown {}", profile.profile_type))),
        };
    }
    // The fields kubelet sent before SecurityProfile existed.
    match deprecated_path {
        "" | "unconfined" => Ok(Seccomp::Unconfined),
        "runtime/default" | "docker/default" => Ok(Seccomp::RuntimeDefault),
        path => match path.strip_prefix("localhost/") {
            Some(p) => Ok(Seccomp::Localhost(PathBuf::from(p))),
            None => Err(invalid("seccomp_profile_path", format!("unknown profile {path:?}"))),
        },
    }
}

fn apparmor(profile: Option<&cri::SecurityProfile>, deprecated: &str) -> Result<AppArmor, Status> {
    if let Some(profile) = profile {
        return match cri::security_profile::ProfileType::try_from(profile.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => Ok(AppArmor::RuntimeDefault),
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(AppArmor::Unconfined),
            Ok(cri::security_profile::ProfileType::Localhost) => Ok(AppArmor::Localhost(profile.localhost_ref.clone())),
            Err(_) => Err(invalid("apparmor.profile_type", format!("unknown {}", profile.profile_type))),
        };
    }
    Ok(match deprecated {
        "" | "unconfined" => AppArmor::Unconfined,
        "runtime/default" => AppArmor::RuntimeDefault,
        other => AppArmor::Localhost(other.strip_prefix("localhost/").unwrap_or(other).to_string()),
    })
}

// Reads the pre-SecurityProfile fields too: older kubelets still send them.
#[allow(deprecated)]
pub fn pod_config(config: Option<cri::PodSandboxConfig>, runtime_handler: String) -> Result<PodConfig, Status> {
    let config = config.ok_or_else(|| missing("config"))?;
    let metadata = config.metadata.ok_or_else(|| missing("config.metadata"))?;
    let linux = config.linux.unwrap_or_default();
    let security = linux.security_context.unwrap_or_default();
    let namespaces = security.namespace_options.unwrap_or_default();
    let mut port_mappings = Vec::new();
    for (i, p) in config.port_mappings.iter().enumerate() {
        let field = |f: &str| format!("config.port_mappings[{i}].{f}");
        let protocol = match cri::Protocol::try_from(p.protocol) {
            Ok(cri::Protocol::Tcp) => Protocol::Tcp,
            Ok(cri::Protocol::Udp) => Protocol::Udp,
            Ok(cri::Protocol::Sctp) => Protocol::Sctp,
            Err(_) => return Err(invalid(&field("protocol"), format!("unknown protocol {}", p.protocol))),
        };
        let port = |v: i32, f: &str| u16::try_from(v).map_err(|_| invalid(&field(f), format!("{v} is not a port")));
        port_mappings.push(PortMapping {
            protocol,
            container_port: port(p.container_port, "container_port")?,
            host_port: port(p.host_port, "host_port")?,
            host_ip: p.host_ip.clone(),
        });
    }
    Ok(PodConfig {
        name: metadata.name,
        namespace: metadata.namespace,
        uid: metadata.uid,
        attempt: metadata.attempt,
        hostname: config.hostname,
        log_directory: (!config.log_directory.is_empty()).then(|| PathBuf::from(config.log_directory)),
        dns: config.dns_config.map(|d| DnsConfig { servers: d.servers, searches: d.searches, options: d.options }),
        port_mappings,
        labels: sorted(config.labels),
        annotations: sorted(config.annotations),
        cgroup_parent: linux.cgroup_parent,
        network: namespace_mode(namespaces.network, "config.linux.security_context.namespace_options.network")?,
        pid: namespace_mode(namespaces.pid, "config.linux.security_context.namespace_options.pid")?,
        ipc: namespace_mode(namespaces.ipc, "config.linux.security_context.namespace_options.ipc")?,
        sysctls: sorted(linux.sysctls),
        runtime_handler,
        privileged: security.privileged,
        run_as_user: security.run_as_user.map(|v| v.value),
        run_as_group: security.run_as_group.map(|v| v.value),
        seccomp: seccomp(security.seccomp.as_ref(), &security.seccomp_profile_path, "config.linux.security_context.seccomp")?,
    })
}

pub fn resources(r: &cri::LinuxContainerResources) -> Resources {
    Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_bytes: r.memory_limit_in_bytes,
        memory_swap_limit_bytes: r.memory_swap_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| HugepageLimit { page_size: h.page_size.clone(), limit_bytes: h.limit })
            .collect(),
        unified: sorted(r.unified.clone()),
        pids_limit: None,
    }
}

fn cri_resources(r: &Resources) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| cri::HugepageLimit { page_size: h.page_size.clone(), limit: h.limit_bytes })
            .collect(),
        unified: unsorted(&r.unified),
        memory_swap_limit_in_bytes: r.memory_swap_limit_bytes,
    }
}

/// What CreateContainer asks for, in berth's terms.
pub struct ContainerRequest {
    pub name: String,
    pub attempt: u32,
    pub image: String,
    pub log_path: Option<PathBuf>,
    pub spec: crate::oci::ContainerSpec,
    /// CRI's `target_id` for a TARGET pid namespace, resolved by the caller.
    pub pid_target: Option<String>,
}

#[allow(deprecated)]
pub fn container_request(config: Option<cri::ContainerConfig>) -> Result<ContainerRequest, Status> {
    let config = config.ok_or_else(|| missing("config"))?;
    let metadata = config.metadata.ok_or_else(|| missing("config.metadata"))?;
    let image = config.image.map(|i| i.image).filter(|i| !i.is_empty()).ok_or_else(|| missing("config.image.image"))?;
    let linux = config.linux.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let ns = sc.namespace_options.clone().unwrap_or_default();
    let ns_field = "config.linux.security_context.namespace_options";
    let (pid, pid_target) = match cri::NamespaceMode::try_from(ns.pid) {
        Ok(cri::NamespaceMode::Pod) => (PidNamespace::Pod, None),
        Ok(cri::NamespaceMode::Container) => (PidNamespace::Container, None),
        Ok(cri::NamespaceMode::Node) => (PidNamespace::Node, None),
        Ok(cri::NamespaceMode::Target) if !ns.target_id.is_empty() => (PidNamespace::Pod, Some(ns.target_id.clone())),
        Ok(cri::NamespaceMode::Target) => return Err(invalid(&format!("{ns_field}.target_id"), "is required for TARGET")),
        Err(_) => return Err(invalid(&format!("{ns_field}.pid"), format!("unknown mode {}", ns.pid))),
    };
    let oci_mode = |mode: i32, f: &str| -> Result<OciNamespaceMode, Status> {
        Ok(match namespace_mode(mode, &format!("{ns_field}.{f}"))? {
            NamespaceMode::Pod => OciNamespaceMode::Pod,
            NamespaceMode::Node => OciNamespaceMode::Node,
        })
    };
    let capabilities = sc.capabilities.clone().unwrap_or_default();
    let security = SecurityContext {
        privileged: sc.privileged,
        readonly_rootfs: sc.readonly_rootfs,
        run_as_user: sc.run_as_user.map(|v| v.value),
        run_as_group: sc.run_as_group.map(|v| v.value),
        run_as_username: sc.run_as_username.clone(),
        supplemental_groups: sc.supplemental_groups.clone(),
        supplemental_groups_policy: match cri::SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy) {
            Ok(cri::SupplementalGroupsPolicy::Strict) => SupplementalGroupsPolicy::Strict,
            _ => SupplementalGroupsPolicy::Merge,
        },
        capabilities_add: capabilities.add_capabilities,
        capabilities_drop: capabilities.drop_capabilities,
        no_new_privs: sc.no_new_privs,
        // kubelet sends the defaults explicitly; an absent list means "use ours".
        masked_paths: (!sc.masked_paths.is_empty()).then(|| sc.masked_paths.clone()),
        readonly_paths: (!sc.readonly_paths.is_empty()).then(|| sc.readonly_paths.clone()),
        seccomp: seccomp(sc.seccomp.as_ref(), &sc.seccomp_profile_path, "config.linux.security_context.seccomp")?,
        apparmor: apparmor(sc.apparmor.as_ref(), &sc.apparmor_profile)?,
        namespaces: NamespaceOptions { network: oci_mode(ns.network, "network")?, pid, ipc: oci_mode(ns.ipc, "ipc")? },
    };
    let mut mounts = Vec::new();
    for (i, m) in config.mounts.iter().enumerate() {
        if m.container_path.is_empty() {
            return Err(invalid(&format!("config.mounts[{i}].container_path"), "is empty"));
        }
        if m.host_path.is_empty() {
            return Err(invalid(&format!("config.mounts[{i}].host_path"), "is empty"));
        }
        let propagation = match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationPrivate) => Propagation::Private,
            Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
            Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
            Err(_) => return Err(invalid(&format!("config.mounts[{i}].propagation"), format!("unknown {}", m.propagation))),
        };
        mounts.push(Mount {
            container_path: PathBuf::from(&m.container_path),
            host_path: PathBuf::from(&m.host_path),
            readonly: m.readonly,
            propagation,
            selinux_relabel: m.selinux_relabel,
            recursive_read_only: m.recursive_read_only,
        });
    }
    let spec = crate::oci::ContainerSpec {
        name: metadata.name.clone(),
        image: image.clone(),
        command: config.command,
        args: config.args,
        working_dir: config.working_dir,
        env: config.envs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        mounts,
        devices: config
            .devices
            .into_iter()
            .map(|d| Device {
                container_path: PathBuf::from(d.container_path),
                host_path: PathBuf::from(d.host_path),
                permissions: d.permissions,
            })
            .collect(),
        labels: sorted(config.labels),
        annotations: sorted(config.annotations),
        tty: config.tty,
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        resources: linux.resources.as_ref().map(resources).unwrap_or_default(),
        security,
    };
    Ok(ContainerRequest {
        name: metadata.name,
        attempt: metadata.attempt,
        image,
        log_path: (!config.log_path.is_empty()).then(|| PathBuf::from(config.log_path)),
        spec,
        pid_target,
    })
}

pub fn pod_state(state: PodState) -> cri::PodSandboxState {
    match state {
        PodState::Ready => cri::PodSandboxState::SandboxReady,
        PodState::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

pub fn container_state(state: ContainerState) -> cri::ContainerState {
    match state {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
    }
}

pub fn pod_metadata(pod: &PodRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: pod.config.name.clone(),
        uid: pod.config.uid.clone(),
        namespace: pod.config.namespace.clone(),
        attempt: pod.config.attempt,
    }
}

pub fn pod_sandbox(pod: &PodRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: pod.id.clone(),
        metadata: Some(pod_metadata(pod)),
        state: pod_state(pod.state) as i32,
        created_at: pod.created_at_nanos,
        labels: unsorted(&pod.config.labels),
        annotations: unsorted(&pod.config.annotations),
        runtime_handler: pod.handler.clone(),
    }
}

fn cri_namespace_mode(mode: NamespaceMode) -> i32 {
    match mode {
        NamespaceMode::Pod => cri::NamespaceMode::Pod as i32,
        NamespaceMode::Node => cri::NamespaceMode::Node as i32,
    }
}

pub fn pod_status(pod: &PodRecord) -> cri::PodSandboxStatus {
    let mut ips = pod.ips.iter();
    cri::PodSandboxStatus {
        id: pod.id.clone(),
        metadata: Some(pod_metadata(pod)),
        state: pod_state(pod.state) as i32,
        created_at: pod.created_at_nanos,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: ips.next().cloned().unwrap_or_default(),
            additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: cri_namespace_mode(pod.config.network),
                    pid: cri_namespace_mode(pod.config.pid),
                    ipc: cri_namespace_mode(pod.config.ipc),
                    ..Default::default()
                }),
            }),
        }),
        labels: unsorted(&pod.config.labels),
        annotations: unsorted(&pod.config.annotations),
        runtime_handler: pod.handler.clone(),
    }
}

pub fn container_metadata(c: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata { name: c.name.clone(), attempt: c.attempt }
}

pub fn container(c: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.pod_id.clone(),
        metadata: Some(container_metadata(c)),
        image: Some(cri::ImageSpec { image: c.image.clone(), ..Default::default() }),
        image_ref: c.image_id.clone(),
        state: container_state(c.state) as i32,
        created_at: c.created_at_nanos,
        labels: unsorted(&c.spec.labels),
        annotations: unsorted(&c.spec.annotations),
        image_id: c.image_id.clone(),
    }
}

pub fn container_status(c: &ContainerRecord) -> cri::ContainerStatus {
    let propagation = |p: Propagation| match p {
        Propagation::Private => cri::MountPropagation::PropagationPrivate as i32,
        Propagation::HostToContainer => cri::MountPropagation::PropagationHostToContainer as i32,
        Propagation::Bidirectional => cri::MountPropagation::PropagationBidirectional as i32,
    };
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: Some(container_metadata(c)),
        state: container_state(c.state) as i32,
        created_at: c.created_at_nanos,
        started_at: c.started_at_nanos,
        finished_at: c.finished_at_nanos,
        exit_code: c.exit_code,
        image: Some(cri::ImageSpec { image: c.image.clone(), ..Default::default() }),
        image_ref: c.image_id.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: unsorted(&c.spec.labels),
        annotations: unsorted(&c.spec.annotations),
        mounts: c
            .spec
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.display().to_string(),
                host_path: m.host_path.display().to_string(),
                readonly: m.readonly,
                selinux_relabel: m.selinux_relabel,
                propagation: propagation(m.propagation),
                recursive_read_only: m.recursive_read_only,
                ..Default::default()
            })
            .collect(),
        log_path: c.log_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        resources: Some(cri::ContainerResources {
            linux: Some(cri_resources(&c.spec.resources)),
            ..Default::default()
        }),
        image_id: c.image_id.clone(),
        user: c.user.as_ref().map(|user| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: user.uid.into(),
                gid: user.gid.into(),
                supplemental_groups: user.supplemental_gids.iter().map(|&gid| gid.into()).collect(),
            }),
        }),
    }
}

/// CRI label selectors: every pair must match.
pub fn labels_match(selector: &HashMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
