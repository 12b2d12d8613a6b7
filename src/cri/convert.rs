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

/// Kernel bounds of CFS bandwidth control, in microseconds (kernel/sched/core.c).
const CPU_PERIOD_RANGE: std::ops::RangeInclusive<i64> = 1_000..=1_000_000;
const MIN_CPU_QUOTA: i64 = 1_000;
/// cpu.shares as cgroup v1 accepts them (and runc converts to cpu.weight).
const CPU_SHARES_RANGE: std::ops::RangeInclusive<i64> = 2..=262_144;

/// Checks what the kernel or runc would refuse only once the container is being
/// made or changed: refused here, the client hears InvalidArgument naming the field
/// (`prefix` is where the message sits in the request), not a runtime failure.
fn validate_resources(r: &cri::LinuxContainerResources, prefix: &str) -> Result<(), Status> {
    let field = |name: &str| format!("{prefix}.{name}");
    if r.cpu_period != 0 && !CPU_PERIOD_RANGE.contains(&r.cpu_period) {
        return Err(invalid(&field("cpu_period"), format!("{} is outside {CPU_PERIOD_RANGE:?} microseconds", r.cpu_period)));
    }
    if r.cpu_quota != 0 && r.cpu_quota != -1 && r.cpu_quota < MIN_CPU_QUOTA {
        return Err(invalid(&field("cpu_quota"), format!("{} is below {MIN_CPU_QUOTA} microseconds (-1: unlimited)", r.cpu_quota)));
    }
    if r.cpu_shares != 0 && !CPU_SHARES_RANGE.contains(&r.cpu_shares) {
        return Err(invalid(&field("cpu_shares"), format!("{} is outside {CPU_SHARES_RANGE:?}", r.cpu_shares)));
    }
    if r.memory_limit_in_bytes < 0 {
        return Err(invalid(&field("memory_limit_in_bytes"), format!("{} is negative", r.memory_limit_in_bytes)));
    }
    let swap = r.memory_swap_limit_in_bytes;
    if swap != 0 && swap != -1 && (swap < 0 || (r.memory_limit_in_bytes > 0 && swap < r.memory_limit_in_bytes)) {
        return Err(invalid(
            &field("memory_swap_limit_in_bytes"),
            format!("{swap} must be -1 (unlimited) or at least memory_limit_in_bytes ({})", r.memory_limit_in_bytes),
        ));
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(invalid(&field("oom_score_adj"), format!("{} is outside -1000..=1000", r.oom_score_adj)));
    }
    for (name, list) in [("cpuset_cpus", &r.cpuset_cpus), ("cpuset_mems", &r.cpuset_mems)] {
        if !list.is_empty() && !is_cpu_list(list) {
            return Err(invalid(&field(name), format!("{list:?} is not a list like \"0-3,6\"")));
        }
    }
    for (index, limit) in r.hugepage_limits.iter().enumerate() {
        let size = limit.page_size.as_str();
        let digits = size.trim_end_matches(['K', 'M', 'G', 'B']);
        let valid_unit = matches!(&size[digits.len()..], "KB" | "MB" | "GB");
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || !valid_unit {
            return Err(invalid(&field(&format!("hugepage_limits[{index}].page_size")), format!("{size:?} is not a size like \"2MB\"")));
        }
    }
    for key in r.unified.keys() {
        if key.is_empty() || key.contains('/') || key.starts_with('.') {
            return Err(invalid(&field("unified"), format!("{key:?} is not a cgroup file name")));
        }
    }
    Ok(())
}

/// A cpuset list: `N` or `N-M` (N <= M), separated by commas.
fn is_cpu_list(list: &str) -> bool {
    let number = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u32>().is_ok();
    list.split(',').all(|part| match part.split_once('-') {
        Some((low, high)) => number(low) && number(high) && low.parse::<u32>().ok() <= high.parse::<u32>().ok(),
        None => number(part),
    })
}

/// The resources of a request, checked; `prefix` names the message in errors.
pub fn resources(r: &cri::LinuxContainerResources, prefix: &str) -> Result<Resources, Status> {
    validate_resources(r, prefix)?;
    Ok(Resources {
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
    })
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
        resources: linux.resources.as_ref().map(|r| resources(r, "config.linux.resources")).transpose()?.unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(r: cri::LinuxContainerResources) -> String {
        let status = resources(&r, "linux").expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        status.message().to_string()
    }

    #[test]
    fn resources_the_kernel_would_refuse_are_invalid_arguments_naming_the_field() {
        let base = cri::LinuxContainerResources::default;
        assert!(refused(cri::LinuxContainerResources { cpu_period: 10, ..base() }).starts_with("linux.cpu_period:"));
        assert!(refused(cri::LinuxContainerResources { cpu_quota: 5, ..base() }).starts_with("linux.cpu_quota:"));
        assert!(refused(cri::LinuxContainerResources { cpu_shares: 1, ..base() }).starts_with("linux.cpu_shares:"));
        assert!(refused(cri::LinuxContainerResources { oom_score_adj: 5000, ..base() }).starts_with("linux.oom_score_adj:"));
        assert!(refused(cri::LinuxContainerResources { cpuset_cpus: "zero".into(), ..base() }).starts_with("linux.cpuset_cpus:"));
        assert!(refused(cri::LinuxContainerResources { cpuset_mems: "3-1".into(), ..base() }).starts_with("linux.cpuset_mems:"));
        let swap = cri::LinuxContainerResources { memory_limit_in_bytes: 1 << 30, memory_swap_limit_in_bytes: 1 << 20, ..base() };
        assert!(refused(swap).starts_with("linux.memory_swap_limit_in_bytes:"));
        let hugepages = vec![cri::HugepageLimit { page_size: "2XB".into(), limit: 1 }];
        assert!(refused(cri::LinuxContainerResources { hugepage_limits: hugepages, ..base() }).contains("page_size"));
        let unified = HashMap::from([("../memory.max".to_string(), "1".to_string())]);
        assert!(refused(cri::LinuxContainerResources { unified, ..base() }).starts_with("linux.unified:"));
    }

    #[test]
    fn what_kubelet_sends_is_accepted() {
        let r = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: -1,
            oom_score_adj: -997,
            cpuset_cpus: "0-1,3".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![cri::HugepageLimit { page_size: "2MB".into(), limit: 0 }],
            unified: HashMap::from([("memory.high".to_string(), "max".to_string())]),
        };
        assert!(resources(&r, "linux").is_ok());
        assert!(resources(&cri::LinuxContainerResources { cpu_quota: -1, ..Default::default() }, "linux").is_ok());
    }
}
