//! The OCI runtime specs of a pod: its pause container and its application
//! containers, following what containerd's CRI plugin gives runc so that
//! workloads and the CRI validation suite see the same container.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxCapabilities, LinuxCpu, LinuxNamespace, LinuxNamespaceType, LinuxResources, LinuxSeccomp, Process, Root, Spec,
    User,
};

use super::SpecError;
use super::caps::CapabilitySet;
use super::devices;
use super::host::HostFacts;
use super::mounts::{MountTable, PodFiles, Shm, clean_absolute, mount_table};
use super::resources::{clamp_oom_score_adj, linux_resources};
use super::seccomp::{Profile, Target};
use super::types::{
    AppArmor, ContainerSpec, ImageDefaults, NamespaceMode, PidNamespace, SandboxContext, Seccomp, SecurityContext,
};
use super::user::{ResolvedUser, resolve_user};

/// The runtime-spec version written into every spec; runc 1.1 reads 1.0.x.
const OCI_VERSION: &str = "1.0.2";

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's: the pause container is the first thing the OOM killer spares.
const SANDBOX_OOM_SCORE_ADJ: i64 = -998;

/// containerd's: the pause container only sleeps, so it gets the smallest
/// useful CPU weight.
const SANDBOX_CPU_SHARES: u64 = 2;

/// The cgroup of the pause container, below the pod's. Keeping it out of the
/// pod cgroup itself leaves that one free of processes, which cgroup v2
/// requires for a parent whose children have controllers enabled.
pub const SANDBOX_CGROUP_LEAF: &str = "pause";

/// containerd's default masked paths: kernel interfaces that leak host
/// information or allow side channels.
const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const DEFAULT_READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The annotations containerd's CRI plugin sets, which tools (and NRI
/// plugins) read to tell pause containers from application containers.
pub mod annotations {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";
    pub const CONTAINER_TYPE_CONTAINER: &str = "container";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
}

/// The spec of a pod's pause container, which holds the pod's namespaces:
/// new IPC, UTS and PID namespaces unless the pod uses the host's, the pod's
/// network namespace (host network when `netns_path` is `None`), the pod
/// hostname, the pod's sysctls. It runs `command` (else the sandbox image's
/// ENTRYPOINT + CMD) as the image's user or the pod's `run_as_user`, with no
/// capabilities, no-new-privileges, a read-only rootfs, the pod's /dev/shm and
/// DNS files read-only, oom_score_adj -998 (as the host allows), cpu shares 2,
/// and the cgroup `<cgroup_parent>/pause`.
pub fn sandbox_spec(
    sandbox: &SandboxContext,
    image: &ImageDefaults,
    rootfs: &Path,
    command: &[String],
    host: &HostFacts,
) -> Result<Spec, SpecError> {
    let args = if command.is_empty() {
        image.entrypoint.iter().chain(&image.cmd).cloned().collect()
    } else {
        command.to_vec()
    };
    if args.is_empty() {
        return Err(SpecError::invalid("command", "the sandbox image has no ENTRYPOINT or CMD and none was given"));
    }
    let cwd = working_dir("", image)?;
    let env = merge_env(vec![DEFAULT_PATH.to_string()], &image.env);
    let pod_security =
        SecurityContext { run_as_user: sandbox.run_as_user, run_as_group: sandbox.run_as_group, ..Default::default() };
    let user = resolve_user(rootfs, &image.user, &pod_security)?;
    let capabilities = CapabilitySet::empty();
    let seccomp = if sandbox.privileged { None } else { seccomp_for(&sandbox.seccomp, &capabilities, host)? };

    let shm = pod_shm(sandbox, sandbox.host_ipc);
    let table = mount_table(
        &PodFiles {
            hostname: &sandbox.hostname_path,
            hosts: &sandbox.hosts_path,
            resolv_conf: &sandbox.resolv_conf_path,
            files_readonly: true,
            shm,
            shm_readonly: true,
            privileged: false,
        },
        &[],
    )?;

    let host_network = sandbox.netns_path.is_none();
    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)];
    if let Some(netns) = &sandbox.netns_path {
        namespaces.push(namespace(LinuxNamespaceType::Network, Some(netns.clone())));
        namespaces.push(namespace(LinuxNamespaceType::Uts, None));
    }
    if !sandbox.host_pid {
        namespaces.push(namespace(LinuxNamespaceType::Pid, None));
    }
    if !sandbox.host_ipc {
        namespaces.push(namespace(LinuxNamespaceType::Ipc, None));
    }
    if host.cgroup_v2 && !sandbox.privileged {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, None));
    }

    let sysctls = namespaced_sysctls(&sandbox.sysctls, host_network, sandbox.host_ipc)?;
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(Some(SANDBOX_CPU_SHARES));
    let mut resources = LinuxResources::default();
    resources.set_cpu(Some(cpu));
    resources.set_devices(Some(vec![devices::deny_all()]));

    let mut annotations: HashMap<String, String> =
        sandbox.pod_annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    annotations.extend(sandbox_annotations(sandbox, annotations::CONTAINER_TYPE_SANDBOX));

    let process = process(ProcessParts {
        args,
        env,
        cwd,
        user,
        tty: false,
        capabilities: &capabilities,
        no_new_privileges: true,
        apparmor_profile: None,
        oom_score_adj: clamp_oom_score_adj(SANDBOX_OOM_SCORE_ADJ, host)?,
    });
    let hostname = (!host_network && !sandbox.hostname.is_empty()).then(|| sandbox.hostname.clone());
    Ok(assemble(SpecParts {
        rootfs,
        readonly_rootfs: true,
        process,
        hostname,
        table,
        namespaces,
        cgroups_path: cgroups_path(&sandbox.cgroup_parent, SANDBOX_CGROUP_LEAF),
        resources,
        device_nodes: Vec::new(),
        sysctls,
        seccomp,
        masked_paths: DEFAULT_MASKED_PATHS.iter().map(|p| p.to_string()).collect(),
        readonly_paths: DEFAULT_READONLY_PATHS.iter().map(|p| p.to_string()).collect(),
        annotations,
    }))
}

/// The spec of application container `id` in the pod `sandbox`.
pub fn container_spec(
    id: &str,
    sandbox: &SandboxContext,
    container: &ContainerSpec,
    image: &ImageDefaults,
    rootfs: &Path,
    host: &HostFacts,
) -> Result<Spec, SpecError> {
    if id.is_empty() || id.contains('/') || id == "." || id == ".." {
        return Err(SpecError::invalid("id", format!("{id:?} cannot name a cgroup")));
    }
    let security = &container.security;
    if security.privileged && !sandbox.privileged {
        return Err(SpecError::invalid("security.privileged", "a privileged container needs a privileged pod"));
    }

    let args = process_args(container, image)?;
    let cwd = working_dir(&container.working_dir, image)?;
    let env = container_env(container, image, &sandbox.hostname);
    let user = resolve_user(rootfs, &image.user, security)?;

    let base = if security.privileged { CapabilitySet::all(host.capabilities) } else { CapabilitySet::default_set() };
    let capabilities = base.apply(&security.capabilities_add, &security.capabilities_drop, host.capabilities)?;
    // Privileged containers run unconfined, whatever profile they name.
    let seccomp = if security.privileged { None } else { seccomp_for(&security.seccomp, &capabilities, host)? };
    let apparmor_profile = if security.privileged { None } else { apparmor_profile(&security.apparmor, host)? };

    let host_ipc = security.namespaces.ipc == NamespaceMode::Node;
    let shm = pod_shm(sandbox, host_ipc);
    let table = mount_table(
        &PodFiles {
            hostname: &sandbox.hostname_path,
            hosts: &sandbox.hosts_path,
            resolv_conf: &sandbox.resolv_conf_path,
            files_readonly: security.readonly_rootfs,
            shm,
            shm_readonly: false,
            privileged: security.privileged,
        },
        &container.mounts,
    )?;

    let requested = devices::requested_devices(&container.devices)?;
    let mut device_nodes = if security.privileged { devices::host_devices()? } else { Vec::new() };
    device_nodes.retain(|node| !requested.nodes.iter().any(|wanted| wanted.path() == node.path()));
    device_nodes.extend(requested.nodes);
    let mut device_rules = vec![if security.privileged { devices::allow_all() } else { devices::deny_all() }];
    if !security.privileged {
        device_rules.extend(requested.cgroup);
    }
    let mut resources = linux_resources(&container.resources, host)?;
    resources.set_devices(Some(device_rules));

    let masked_paths = if security.privileged {
        Vec::new()
    } else {
        security.masked_paths.clone().unwrap_or_else(|| DEFAULT_MASKED_PATHS.iter().map(|p| p.to_string()).collect())
    };
    let readonly_paths = if security.privileged {
        Vec::new()
    } else {
        security
            .readonly_paths
            .clone()
            .unwrap_or_else(|| DEFAULT_READONLY_PATHS.iter().map(|p| p.to_string()).collect())
    };

    let mut annotations: HashMap<String, String> =
        container.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    annotations.extend(sandbox_annotations(sandbox, annotations::CONTAINER_TYPE_CONTAINER));
    annotations.insert(annotations::CONTAINER_NAME.to_string(), container.name.clone());
    annotations.insert(annotations::IMAGE_NAME.to_string(), container.image.clone());

    let process = process(ProcessParts {
        args,
        env,
        cwd,
        user,
        tty: container.tty,
        capabilities: &capabilities,
        no_new_privileges: security.no_new_privs,
        apparmor_profile,
        oom_score_adj: clamp_oom_score_adj(container.resources.oom_score_adj, host)?,
    });
    Ok(assemble(SpecParts {
        rootfs,
        readonly_rootfs: security.readonly_rootfs,
        process,
        hostname: None,
        table,
        namespaces: container_namespaces(sandbox, security, host)?,
        cgroups_path: cgroups_path(&sandbox.cgroup_parent, id),
        resources,
        device_nodes,
        sysctls: HashMap::new(),
        seccomp,
        masked_paths,
        readonly_paths,
        annotations,
    }))
}

/// The process of an exec in a container created from `spec`: the same user,
/// groups, environment, working dir, capabilities, no-new-privileges,
/// AppArmor profile and oom_score_adj, running `cmd`; with a terminal,
/// `TERM=xterm` as containerd sets it.
pub fn exec_process(spec: &Spec, cmd: &[String], tty: bool) -> Result<Process, SpecError> {
    if cmd.is_empty() {
        return Err(SpecError::invalid("cmd", "is empty"));
    }
    let mut process =
        spec.process().clone().ok_or_else(|| SpecError::invalid("process", "the container's spec has none"))?;
    process.set_args(Some(cmd.to_vec()));
    process.set_terminal(Some(tty));
    process.set_console_size(None);
    if tty {
        let env = process.env().clone().unwrap_or_default();
        process.set_env(Some(merge_env(env, &["TERM=xterm".to_string()])));
    }
    Ok(process)
}

/// Kubernetes' rule: `command` replaces ENTRYPOINT and then CMD is dropped
/// unless `args` replace it; `args` alone replace CMD after the ENTRYPOINT.
fn process_args(container: &ContainerSpec, image: &ImageDefaults) -> Result<Vec<String>, SpecError> {
    let (command, args) = if container.command.is_empty() {
        let args = if container.args.is_empty() { &image.cmd } else { &container.args };
        (&image.entrypoint, args)
    } else {
        (&container.command, &container.args)
    };
    let merged: Vec<String> = command.iter().chain(args).cloned().collect();
    if merged.is_empty() {
        return Err(SpecError::invalid("command", "no command given and the image has no ENTRYPOINT or CMD"));
    }
    Ok(merged)
}

fn working_dir(requested: &str, image: &ImageDefaults) -> Result<PathBuf, SpecError> {
    let (field, dir) = match (requested, image.working_dir.as_str()) {
        ("", "") => return Ok(PathBuf::from("/")),
        ("", image_dir) => ("image working dir", image_dir),
        (requested, _) => ("working_dir", requested),
    };
    clean_absolute(Path::new(dir)).ok_or_else(|| SpecError::invalid(field, format!("{dir:?} is not an absolute path")))
}

/// containerd's order, later entries replacing earlier ones of the same
/// name in place: PATH, TERM (with a terminal), HOSTNAME, the image's, the
/// container's.
fn container_env(container: &ContainerSpec, image: &ImageDefaults, pod_hostname: &str) -> Vec<String> {
    let hostname = if pod_hostname.is_empty() {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|name| name.trim().to_string()).unwrap_or_default()
    } else {
        pod_hostname.to_string()
    };
    let mut env = vec![DEFAULT_PATH.to_string()];
    if container.tty {
        env.push("TERM=xterm".to_string());
    }
    env.push(format!("HOSTNAME={hostname}"));
    let env = merge_env(env, &image.env);
    let requested: Vec<String> = container.env.iter().map(|(key, value)| format!("{key}={value}")).collect();
    merge_env(env, &requested)
}

fn merge_env(mut env: Vec<String>, overrides: &[String]) -> Vec<String> {
    let key = |entry: &str| entry.split_once('=').map_or(entry, |(key, _)| key).to_string();
    for entry in overrides {
        let name = key(entry);
        match env.iter_mut().find(|existing| key(existing) == name) {
            Some(existing) => *existing = entry.clone(),
            None => env.push(entry.clone()),
        }
    }
    env
}

fn container_namespaces(
    sandbox: &SandboxContext,
    security: &SecurityContext,
    host: &HostFacts,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    let pause_namespace = |kind: &str| {
        sandbox
            .pause_pid
            .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/{kind}")))
            .ok_or_else(|| SpecError::precondition("sandbox.pause_pid", "the pod's pause container is not running"))
    };
    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)];
    let pod_network = match security.namespaces.network {
        NamespaceMode::Pod => sandbox.netns_path.as_ref(),
        NamespaceMode::Node => None,
    };
    if let Some(netns) = pod_network {
        namespaces.push(namespace(LinuxNamespaceType::Network, Some(netns.clone())));
        namespaces.push(namespace(LinuxNamespaceType::Uts, Some(pause_namespace("uts")?)));
    }
    if security.namespaces.ipc == NamespaceMode::Pod {
        namespaces.push(namespace(LinuxNamespaceType::Ipc, Some(pause_namespace("ipc")?)));
    }
    match security.namespaces.pid {
        PidNamespace::Pod => namespaces.push(namespace(LinuxNamespaceType::Pid, Some(pause_namespace("pid")?))),
        PidNamespace::Container => namespaces.push(namespace(LinuxNamespaceType::Pid, None)),
        PidNamespace::Target(pid) => {
            namespaces.push(namespace(LinuxNamespaceType::Pid, Some(PathBuf::from(format!("/proc/{pid}/ns/pid")))))
        }
        PidNamespace::Node => {}
    }
    if host.cgroup_v2 && !security.privileged {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, None));
    }
    Ok(namespaces)
}

fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let mut namespace = LinuxNamespace::default();
    namespace.set_typ(typ);
    namespace.set_path(path);
    namespace
}

/// Only sysctls that live in a namespace the pod owns: net.* in its network
/// namespace, the System V IPC and POSIX message queue ones in its IPC
/// namespace. Anything else would change the host. Names may use `/` as the
/// separator (`net/ipv4/ip_forward`), as Kubernetes allows.
fn namespaced_sysctls(
    sysctls: &BTreeMap<String, String>,
    host_network: bool,
    host_ipc: bool,
) -> Result<HashMap<String, String>, SpecError> {
    let mut accepted = HashMap::new();
    for (name, value) in sysctls {
        let field = format!("sysctls[{name:?}]");
        let canonical = canonical_sysctl(name);
        let ipc = IPC_SYSCTLS.contains(&canonical.as_str()) || canonical.starts_with("fs.mqueue.");
        if canonical.starts_with("net.") {
            if host_network {
                return Err(SpecError::invalid(field, "net.* sysctls would change the host's network namespace"));
            }
        } else if ipc {
            if host_ipc {
                return Err(SpecError::invalid(field, "IPC sysctls would change the host's IPC namespace"));
            }
        } else {
            return Err(SpecError::invalid(field, "not a namespaced sysctl; it would change the host"));
        }
        accepted.insert(canonical, value.clone());
    }
    Ok(accepted)
}

/// The System V IPC sysctls of an IPC namespace (with `fs.mqueue.*`).
const IPC_SYSCTLS: [&str; 8] = [
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
];

/// `net/ipv4/conf/eth0.100/forwarding` → `net.ipv4.conf.eth0/100.forwarding`:
/// when `/` is the first separator, `/` and `.` swap roles.
fn canonical_sysctl(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(index) if name.as_bytes()[index] == b'/' => name
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                other => other,
            })
            .collect(),
        _ => name.to_string(),
    }
}

fn seccomp_for(
    seccomp: &Seccomp,
    capabilities: &CapabilitySet,
    host: &HostFacts,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    let profile = match seccomp {
        Seccomp::Unconfined => return Ok(None),
        Seccomp::RuntimeDefault => Profile::runtime_default()?,
        Seccomp::Localhost(path) => Profile::load(path)?,
    };
    profile.render(&Target { capabilities, kernel_version: host.kernel_version }).map(Some)
}

/// berth loads no AppArmor profile of its own: `RuntimeDefault` leaves the
/// container unconfined, and a named profile needs AppArmor on the host.
fn apparmor_profile(apparmor: &AppArmor, host: &HostFacts) -> Result<Option<String>, SpecError> {
    match apparmor {
        AppArmor::Unconfined | AppArmor::RuntimeDefault => Ok(None),
        AppArmor::Localhost(_) if !host.apparmor_enabled => {
            Err(SpecError::precondition("security.apparmor", "AppArmor is not enabled on this host"))
        }
        AppArmor::Localhost(name) if name.is_empty() => {
            Err(SpecError::invalid("security.apparmor", "profile name is empty"))
        }
        AppArmor::Localhost(name) => Ok(Some(name.clone())),
    }
}

fn cgroups_path(parent: &str, leaf: &str) -> PathBuf {
    PathBuf::from(format!("{}/{leaf}", parent.trim_end_matches('/')))
}

fn sandbox_annotations(sandbox: &SandboxContext, container_type: &str) -> [(String, String); 5] {
    [
        (annotations::CONTAINER_TYPE.to_string(), container_type.to_string()),
        (annotations::SANDBOX_ID.to_string(), sandbox.sandbox_id.clone()),
        (annotations::SANDBOX_NAME.to_string(), sandbox.pod_name.clone()),
        (annotations::SANDBOX_NAMESPACE.to_string(), sandbox.pod_namespace.clone()),
        (annotations::SANDBOX_UID.to_string(), sandbox.pod_uid.clone()),
    ]
}

struct ProcessParts<'a> {
    args: Vec<String>,
    env: Vec<String>,
    cwd: PathBuf,
    user: ResolvedUser,
    tty: bool,
    capabilities: &'a CapabilitySet,
    no_new_privileges: bool,
    apparmor_profile: Option<String>,
    oom_score_adj: i32,
}

/// Every field is set: oci-spec's defaults (a shell, rlimits, its own
/// capability set) must not leak into a container.
fn process(parts: ProcessParts) -> Process {
    let mut user = User::default();
    user.set_uid(parts.user.uid);
    user.set_gid(parts.user.gid);
    user.set_additional_gids(Some(parts.user.additional_gids));
    user.set_umask(None);
    user.set_username(None);

    let set = parts.capabilities.to_oci();
    let mut capabilities = LinuxCapabilities::default();
    capabilities.set_bounding(Some(set.clone()));
    capabilities.set_effective(Some(set.clone()));
    capabilities.set_permitted(Some(set));
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);

    let mut process = Process::default();
    process.set_terminal(Some(parts.tty));
    process.set_console_size(None);
    process.set_user(user);
    process.set_args(Some(parts.args));
    process.set_command_line(None);
    process.set_env(Some(parts.env));
    process.set_cwd(parts.cwd);
    process.set_capabilities(Some(capabilities));
    process.set_rlimits(None);
    process.set_no_new_privileges(Some(parts.no_new_privileges));
    process.set_apparmor_profile(parts.apparmor_profile);
    process.set_oom_score_adj(Some(parts.oom_score_adj));
    process.set_selinux_label(None);
    process.set_io_priority(None);
    process.set_scheduler(None);
    process.set_exec_cpu_affinity(None);
    process
}

struct SpecParts<'a> {
    rootfs: &'a Path,
    readonly_rootfs: bool,
    process: Process,
    hostname: Option<String>,
    table: MountTable,
    namespaces: Vec<LinuxNamespace>,
    cgroups_path: PathBuf,
    resources: LinuxResources,
    device_nodes: Vec<oci_spec::runtime::LinuxDevice>,
    sysctls: HashMap<String, String>,
    seccomp: Option<LinuxSeccomp>,
    masked_paths: Vec<String>,
    readonly_paths: Vec<String>,
    annotations: HashMap<String, String>,
}

fn assemble(parts: SpecParts) -> Spec {
    let mut root = Root::default();
    root.set_path(parts.rootfs.to_path_buf());
    root.set_readonly(Some(parts.readonly_rootfs));

    let mut linux = oci_spec::runtime::Linux::default();
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    linux.set_net_devices(None);
    linux.set_sysctl((!parts.sysctls.is_empty()).then_some(parts.sysctls));
    linux.set_resources(Some(parts.resources));
    linux.set_cgroups_path(Some(parts.cgroups_path));
    linux.set_namespaces(Some(parts.namespaces));
    linux.set_devices((!parts.device_nodes.is_empty()).then_some(parts.device_nodes));
    linux.set_seccomp(parts.seccomp);
    linux.set_rootfs_propagation(parts.table.rootfs_propagation.map(str::to_string));
    linux.set_masked_paths(Some(parts.masked_paths));
    linux.set_readonly_paths(Some(parts.readonly_paths));
    linux.set_mount_label(None);
    linux.set_intel_rdt(None);
    linux.set_personality(None);

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_string());
    spec.set_root(Some(root));
    spec.set_mounts(Some(parts.table.mounts));
    spec.set_process(Some(parts.process));
    spec.set_hostname(parts.hostname);
    spec.set_domainname(None);
    spec.set_hooks(None);
    spec.set_annotations(Some(parts.annotations));
    spec.set_linux(Some(linux));
    spec
}

/// /dev/shm for a process of the pod: the host's with host IPC, else the pod's
/// tmpfs, else a private one.
fn pod_shm(sandbox: &SandboxContext, host_ipc: bool) -> Shm {
    if host_ipc {
        Shm::Bind(PathBuf::from("/dev/shm"))
    } else {
        sandbox.shm_path.clone().map_or(Shm::Private, Shm::Bind)
    }
}
