//! The rules of `sandbox_spec`, `container_spec` and `exec_process`, checked
//! on the specs they produce.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxNamespaceType, LinuxSeccompAction, Spec};

use super::test_support::hybrid_host;
use super::*;

struct Pod {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
}

impl Pod {
    fn new() -> Pod {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nweb:x:33:33::/var/www:/bin/sh\n")
            .unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nweb:x:33:\nlogs:x:4:web\n").unwrap();
        for file in ["hostname", "hosts", "resolv.conf"] {
            std::fs::write(dir.path().join(file), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("shm")).unwrap();
        Pod { dir, rootfs }
    }

    fn sandbox(&self) -> SandboxContext {
        SandboxContext {
            sandbox_id: "pod1".into(),
            pod_name: "web".into(),
            pod_namespace: "default".into(),
            pod_uid: "uid-1".into(),
            netns_path: Some("/run/berth/pods/pod1/netns".into()),
            pause_pid: Some(4242),
            hostname: "web-0".into(),
            hostname_path: self.dir.path().join("hostname"),
            hosts_path: self.dir.path().join("hosts"),
            resolv_conf_path: self.dir.path().join("resolv.conf"),
            shm_path: Some(self.dir.path().join("shm")),
            cgroup_parent: "/berth/pod1".into(),
            ..Default::default()
        }
    }

    fn spec(&self, container: &ContainerSpec, image: &ImageDefaults) -> Result<Spec, SpecError> {
        container_spec("ctr1", &self.sandbox(), container, image, &self.rootfs, &hybrid_host())
    }

    fn privileged_spec(&self, container: &ContainerSpec) -> Result<Spec, SpecError> {
        let sandbox = SandboxContext { privileged: true, ..self.sandbox() };
        container_spec("ctr1", &sandbox, container, &image(), &self.rootfs, &hybrid_host())
    }
}

fn image() -> ImageDefaults {
    ImageDefaults {
        entrypoint: vec!["/entry".into()],
        cmd: vec!["--serve".into()],
        env: vec!["PATH=/image/bin".into(), "LANG=C".into(), "MODE=image".into()],
        ..Default::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

fn args(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().args().clone().unwrap()
}

fn env(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().env().clone().unwrap()
}

fn linux(spec: &Spec) -> &oci_spec::runtime::Linux {
    spec.linux().as_ref().unwrap()
}

fn bounding(spec: &Spec) -> std::collections::HashSet<Capability> {
    spec.process().as_ref().unwrap().capabilities().as_ref().unwrap().bounding().clone().unwrap()
}

fn namespace_paths(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
    linux(spec).namespaces().clone().unwrap().iter().map(|ns| (ns.typ(), ns.path().clone())).collect()
}

fn invalid_field(error: &SpecError) -> &str {
    match error {
        SpecError::Invalid { field, .. } => field,
        other => panic!("expected an invalid-argument error, got {other}"),
    }
}

#[test]
fn command_and_args_merge_as_kubernetes_defines() {
    let pod = Pod::new();
    let cases: [(&[&str], &[&str], &[&str]); 4] = [
        (&[], &[], &["/entry", "--serve"]),
        (&[], &["--debug"], &["/entry", "--debug"]),
        (&["/bin/sh"], &[], &["/bin/sh"]),
        (&["/bin/sh"], &["-c", "true"], &["/bin/sh", "-c", "true"]),
    ];
    for (command, arguments, expected) in cases {
        let container = ContainerSpec { command: strings(command), args: strings(arguments), ..Default::default() };
        assert_eq!(
            args(&pod.spec(&container, &image()).unwrap()),
            strings(expected),
            "command {command:?} args {arguments:?}"
        );
    }
    let only_cmd = ImageDefaults { entrypoint: vec![], cmd: strings(&["/cmd"]), ..Default::default() };
    assert_eq!(args(&pod.spec(&ContainerSpec::default(), &only_cmd).unwrap()), strings(&["/cmd"]));

    let error = pod.spec(&ContainerSpec::default(), &ImageDefaults::default()).unwrap_err();
    assert_eq!(invalid_field(&error), "command");
}

#[test]
fn environment_layers_later_wins_in_place() {
    let pod = Pod::new();
    let container = ContainerSpec {
        env: vec![("MODE".into(), "container".into()), ("EXTRA".into(), "1".into())],
        ..Default::default()
    };
    assert_eq!(
        env(&pod.spec(&container, &image()).unwrap()),
        strings(&["PATH=/image/bin", "HOSTNAME=web-0", "LANG=C", "MODE=container", "EXTRA=1"])
    );

    let bare = ImageDefaults { cmd: strings(&["/cmd"]), ..Default::default() };
    let tty = ContainerSpec { tty: true, ..Default::default() };
    let spec = pod.spec(&tty, &bare).unwrap();
    assert_eq!(
        env(&spec),
        strings(&["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm", "HOSTNAME=web-0"])
    );
    assert_eq!(spec.process().as_ref().unwrap().terminal(), Some(true));
    let own_term = ContainerSpec { tty: true, env: vec![("TERM".into(), "vt100".into())], ..Default::default() };
    assert!(env(&pod.spec(&own_term, &bare).unwrap()).contains(&"TERM=vt100".to_string()));
}

#[test]
fn working_dir_falls_back_to_the_image_then_root() {
    let pod = Pod::new();
    let cwd = |container: &ContainerSpec, image: &ImageDefaults| {
        pod.spec(container, image).unwrap().process().as_ref().unwrap().cwd().clone()
    };
    let with_dir = ImageDefaults { working_dir: "/srv".into(), ..image() };
    assert_eq!(cwd(&ContainerSpec::default(), &image()), PathBuf::from("/"));
    assert_eq!(cwd(&ContainerSpec::default(), &with_dir), PathBuf::from("/srv"));
    assert_eq!(
        cwd(&ContainerSpec { working_dir: "/work".into(), ..Default::default() }, &with_dir),
        PathBuf::from("/work")
    );
    let error =
        pod.spec(&ContainerSpec { working_dir: "relative".into(), ..Default::default() }, &image()).unwrap_err();
    assert_eq!(invalid_field(&error), "working_dir");
}

#[test]
fn user_and_groups_come_from_the_image() {
    let pod = Pod::new();
    let web = ImageDefaults { user: "web".into(), ..image() };
    let container = ContainerSpec {
        security: SecurityContext { supplemental_groups: vec![1234], ..Default::default() },
        ..Default::default()
    };
    let spec = pod.spec(&container, &web).unwrap();
    let user = spec.process().as_ref().unwrap().user();
    assert_eq!((user.uid(), user.gid()), (33, 33));
    assert_eq!(user.additional_gids().clone().unwrap(), vec![33, 4, 1234]);
}

#[test]
fn default_capabilities_with_add_and_drop() {
    let pod = Pod::new();
    let caps = bounding(&pod.spec(&ContainerSpec::default(), &image()).unwrap());
    assert_eq!(caps.len(), 14);
    assert!(caps.contains(&Capability::NetRaw) && !caps.contains(&Capability::SysAdmin));

    let container = ContainerSpec {
        security: SecurityContext {
            capabilities_add: strings(&["NET_ADMIN"]),
            capabilities_drop: strings(&["NET_RAW"]),
            ..Default::default()
        },
        ..Default::default()
    };
    let spec = pod.spec(&container, &image()).unwrap();
    let caps = bounding(&spec);
    assert!(caps.contains(&Capability::NetAdmin) && !caps.contains(&Capability::NetRaw));
    let process_caps = spec.process().as_ref().unwrap().capabilities().clone().unwrap();
    assert_eq!(process_caps.effective().clone().unwrap(), caps);
    assert_eq!(process_caps.permitted().clone().unwrap(), caps);
    assert!(process_caps.inheritable().is_none() && process_caps.ambient().is_none());

    let drop_all = ContainerSpec {
        security: SecurityContext { capabilities_drop: strings(&["ALL"]), ..Default::default() },
        ..Default::default()
    };
    assert!(bounding(&pod.spec(&drop_all, &image()).unwrap()).is_empty());
    let add_all = ContainerSpec {
        security: SecurityContext { capabilities_add: strings(&["ALL"]), ..Default::default() },
        ..Default::default()
    };
    assert_eq!(bounding(&pod.spec(&add_all, &image()).unwrap()).len(), 41);
}

#[test]
fn privileged_containers_get_everything_and_only_in_privileged_pods() {
    let pod = Pod::new();
    let privileged = ContainerSpec {
        security: SecurityContext {
            privileged: true,
            seccomp: Seccomp::RuntimeDefault,
            masked_paths: Some(strings(&["/proc/kcore"])),
            ..Default::default()
        },
        ..Default::default()
    };
    let error = pod.spec(&privileged, &image()).unwrap_err();
    assert_eq!(invalid_field(&error), "security.privileged");

    let spec = pod.privileged_spec(&privileged).unwrap();
    assert_eq!(bounding(&spec).len(), 41);
    assert_eq!(linux(&spec).masked_paths().clone().unwrap(), Vec::<String>::new());
    assert_eq!(linux(&spec).readonly_paths().clone().unwrap(), Vec::<String>::new());
    assert!(linux(&spec).seccomp().is_none(), "privileged containers run unconfined");
    let rules = linux(&spec).resources().clone().unwrap().devices().clone().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow() && rules[0].typ().is_none());
    let nodes = linux(&spec).devices().clone().unwrap();
    assert!(nodes.iter().any(|node| node.path() == Path::new("/dev/null")), "host devices are present");
    let sys = spec.mounts().clone().unwrap().into_iter().find(|m| m.destination() == Path::new("/sys")).unwrap();
    assert!(sys.options().clone().unwrap().contains(&"rw".to_string()));
}

#[test]
fn masked_and_readonly_paths_default_to_containerds() {
    let pod = Pod::new();
    let spec = pod.spec(&ContainerSpec::default(), &image()).unwrap();
    let masked = linux(&spec).masked_paths().clone().unwrap();
    assert!(masked.contains(&"/proc/kcore".to_string()) && masked.contains(&"/sys/firmware".to_string()));
    assert_eq!(masked.len(), 11);
    assert_eq!(
        linux(&spec).readonly_paths().clone().unwrap(),
        strings(&["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"])
    );

    let given = ContainerSpec {
        security: SecurityContext {
            masked_paths: Some(strings(&["/bin/ls"])),
            readonly_paths: Some(vec![]),
            ..Default::default()
        },
        ..Default::default()
    };
    let spec = pod.spec(&given, &image()).unwrap();
    assert_eq!(linux(&spec).masked_paths().clone().unwrap(), strings(&["/bin/ls"]));
    assert_eq!(linux(&spec).readonly_paths().clone().unwrap(), Vec::<String>::new());
}

#[test]
fn seccomp_modes() {
    let pod = Pod::new();
    let with = |seccomp: Seccomp| ContainerSpec {
        security: SecurityContext { seccomp, ..Default::default() },
        ..Default::default()
    };
    assert!(linux(&pod.spec(&with(Seccomp::Unconfined), &image()).unwrap()).seccomp().is_none());

    let spec = pod.spec(&with(Seccomp::RuntimeDefault), &image()).unwrap();
    let seccomp = linux(&spec).seccomp().clone().unwrap();
    assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert!(seccomp.syscalls().as_ref().unwrap().len() > 10);

    let profile = pod.dir.path().join("profile.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let spec = pod.spec(&with(Seccomp::Localhost(profile)), &image()).unwrap();
    let seccomp = linux(&spec).seccomp().clone().unwrap();
    assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActAllow);
    assert_eq!(seccomp.syscalls().as_ref().unwrap()[0].names(), &strings(&["sethostname"]));

    let error = pod.spec(&with(Seccomp::Localhost(pod.dir.path().join("missing.json"))), &image()).unwrap_err();
    assert_eq!(invalid_field(&error), "security.seccomp");
}

#[test]
fn apparmor_profiles_need_apparmor() {
    let pod = Pod::new();
    let named = ContainerSpec {
        security: SecurityContext { apparmor: AppArmor::Localhost("strict".into()), ..Default::default() },
        ..Default::default()
    };
    let error = pod.spec(&named, &image()).unwrap_err();
    assert!(matches!(&error, SpecError::Precondition { field, .. } if field == "security.apparmor"), "{error}");
    let host = HostFacts { apparmor_enabled: true, ..hybrid_host() };
    let spec = container_spec("ctr1", &pod.sandbox(), &named, &image(), &pod.rootfs, &host).unwrap();
    assert_eq!(spec.process().as_ref().unwrap().apparmor_profile().as_deref(), Some("strict"));
    let default = ContainerSpec {
        security: SecurityContext { apparmor: AppArmor::RuntimeDefault, ..Default::default() },
        ..Default::default()
    };
    assert!(pod.spec(&default, &image()).unwrap().process().as_ref().unwrap().apparmor_profile().is_none());
}

#[test]
fn oom_score_adj_is_clamped_to_the_host() {
    let pod = Pod::new();
    let host = HostFacts { oom_score_adj_min: -100, ..hybrid_host() };
    let container =
        ContainerSpec { resources: Resources { oom_score_adj: -999, ..Default::default() }, ..Default::default() };
    let spec = container_spec("ctr1", &pod.sandbox(), &container, &image(), &pod.rootfs, &host).unwrap();
    assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(-100));
    let pause = sandbox_spec(&pod.sandbox(), &image(), &pod.rootfs, &[], &host).unwrap();
    assert_eq!(pause.process().as_ref().unwrap().oom_score_adj(), Some(-100));
    let generous = HostFacts { oom_score_adj_min: -1000, ..hybrid_host() };
    let pause = sandbox_spec(&pod.sandbox(), &image(), &pod.rootfs, &[], &generous).unwrap();
    assert_eq!(pause.process().as_ref().unwrap().oom_score_adj(), Some(-998));
}

#[test]
fn container_namespaces_join_the_pause_container() {
    let pod = Pod::new();
    let spec = pod.spec(&ContainerSpec::default(), &image()).unwrap();
    let pause = |kind: &str| Some(PathBuf::from(format!("/proc/4242/ns/{kind}")));
    assert_eq!(
        namespace_paths(&spec),
        vec![
            (LinuxNamespaceType::Mount, None),
            (LinuxNamespaceType::Network, Some(PathBuf::from("/run/berth/pods/pod1/netns"))),
            (LinuxNamespaceType::Uts, pause("uts")),
            (LinuxNamespaceType::Ipc, pause("ipc")),
            (LinuxNamespaceType::Pid, pause("pid")),
        ]
    );
    assert!(spec.hostname().is_none(), "the hostname lives in the pod's UTS namespace");
    assert_eq!(linux(&spec).cgroups_path().clone().unwrap(), PathBuf::from("/berth/pod1/ctr1"));

    let host_everything = ContainerSpec {
        security: SecurityContext {
            namespaces: NamespaceOptions {
                network: NamespaceMode::Node,
                pid: PidNamespace::Node,
                ipc: NamespaceMode::Node,
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let spec = pod.spec(&host_everything, &image()).unwrap();
    assert_eq!(namespace_paths(&spec), vec![(LinuxNamespaceType::Mount, None)]);
    let shm = spec.mounts().clone().unwrap().into_iter().find(|m| m.destination() == Path::new("/dev/shm")).unwrap();
    assert_eq!(shm.source().as_deref(), Some(Path::new("/dev/shm")), "host IPC shares the host's /dev/shm");

    let own_pid = ContainerSpec {
        security: SecurityContext {
            namespaces: NamespaceOptions { pid: PidNamespace::Container, ..Default::default() },
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(namespace_paths(&pod.spec(&own_pid, &image()).unwrap()).contains(&(LinuxNamespaceType::Pid, None)));
    let target = ContainerSpec {
        security: SecurityContext {
            namespaces: NamespaceOptions { pid: PidNamespace::Target(777), ..Default::default() },
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(
        namespace_paths(&pod.spec(&target, &image()).unwrap())
            .contains(&(LinuxNamespaceType::Pid, Some(PathBuf::from("/proc/777/ns/pid"))))
    );

    let no_pause = SandboxContext { pause_pid: None, ..pod.sandbox() };
    let error = container_spec("ctr1", &no_pause, &ContainerSpec::default(), &image(), &pod.rootfs, &hybrid_host())
        .unwrap_err();
    assert!(matches!(&error, SpecError::Precondition { field, .. } if field == "sandbox.pause_pid"), "{error}");

    let v2 = HostFacts { cgroup_v2: true, ..hybrid_host() };
    let spec = container_spec("ctr1", &pod.sandbox(), &ContainerSpec::default(), &image(), &pod.rootfs, &v2).unwrap();
    assert!(namespace_paths(&spec).contains(&(LinuxNamespaceType::Cgroup, None)));
}

#[test]
fn container_mounts_pod_files_and_rejects_missing_sources() {
    let pod = Pod::new();
    let container = ContainerSpec {
        mounts: vec![Mount {
            container_path: "/data".into(),
            host_path: pod.dir.path().join("shm"),
            readonly: true,
            ..Default::default()
        }],
        security: SecurityContext { readonly_rootfs: true, ..Default::default() },
        ..Default::default()
    };
    let spec = pod.spec(&container, &image()).unwrap();
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    let mounts = spec.mounts().clone().unwrap();
    let hosts = mounts.iter().find(|m| m.destination() == Path::new("/etc/hosts")).unwrap();
    assert_eq!(hosts.source().as_deref(), Some(pod.dir.path().join("hosts").as_path()));
    assert!(hosts.options().clone().unwrap().contains(&"ro".to_string()), "read-only rootfs, read-only pod files");
    assert!(mounts.iter().any(|m| m.destination() == Path::new("/data")));

    let missing = ContainerSpec {
        mounts: vec![Mount {
            container_path: "/data".into(),
            host_path: "/nonexistent/berth".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let error = pod.spec(&missing, &image()).unwrap_err();
    assert_eq!(invalid_field(&error), "mounts[0].host_path");
}

#[test]
fn container_annotations_carry_the_pod() {
    let pod = Pod::new();
    let container = ContainerSpec {
        name: "app".into(),
        image: "registry.local/app:1".into(),
        annotations: BTreeMap::from([("team".to_string(), "blue".to_string())]),
        ..Default::default()
    };
    let annotations = pod.spec(&container, &image()).unwrap().annotations().clone().unwrap();
    assert_eq!(annotations["team"], "blue");
    assert_eq!(annotations[annotations::CONTAINER_TYPE], "container");
    assert_eq!(annotations[annotations::SANDBOX_ID], "pod1");
    assert_eq!(annotations[annotations::SANDBOX_NAME], "web");
    assert_eq!(annotations[annotations::SANDBOX_NAMESPACE], "default");
    assert_eq!(annotations[annotations::SANDBOX_UID], "uid-1");
    assert_eq!(annotations[annotations::CONTAINER_NAME], "app");
    assert_eq!(annotations[annotations::IMAGE_NAME], "registry.local/app:1");
}

#[test]
fn container_resources_and_devices() {
    let pod = Pod::new();
    let container = ContainerSpec {
        resources: Resources {
            memory_limit_bytes: 32 << 20,
            cpu_shares: 256,
            pids_limit: Some(64),
            ..Default::default()
        },
        devices: vec![Device {
            container_path: "/dev/xnull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }],
        ..Default::default()
    };
    let spec = pod.spec(&container, &image()).unwrap();
    let resources = linux(&spec).resources().clone().unwrap();
    assert_eq!(resources.memory().unwrap().limit(), Some(32 << 20));
    assert_eq!(resources.cpu().clone().unwrap().shares(), Some(256));
    assert_eq!(resources.pids().unwrap().limit(), 64);
    let rules = resources.devices().clone().unwrap();
    assert!(!rules[0].allow(), "deny everything first");
    assert!(rules[1].allow() && rules[1].major() == Some(1) && rules[1].minor() == Some(3));
    assert_eq!(linux(&spec).devices().clone().unwrap()[0].path(), Path::new("/dev/xnull"));
}

#[test]
fn sandbox_spec_holds_the_pod_namespaces() {
    let pod = Pod::new();
    let sandbox = SandboxContext {
        sysctls: BTreeMap::from([
            ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
            ("net/ipv4/ip_unprivileged_port_start".to_string(), "0".to_string()),
            ("fs.mqueue.msg_max".to_string(), "100".to_string()),
        ]),
        pod_annotations: BTreeMap::from([("owner".to_string(), "me".to_string())]),
        ..pod.sandbox()
    };
    let spec = sandbox_spec(&sandbox, &image(), &pod.rootfs, &strings(&["/pause"]), &hybrid_host()).unwrap();
    assert_eq!(args(&spec), strings(&["/pause"]));
    assert_eq!(spec.hostname().as_deref(), Some("web-0"));
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(
        namespace_paths(&spec),
        vec![
            (LinuxNamespaceType::Mount, None),
            (LinuxNamespaceType::Network, Some(PathBuf::from("/run/berth/pods/pod1/netns"))),
            (LinuxNamespaceType::Uts, None),
            (LinuxNamespaceType::Pid, None),
            (LinuxNamespaceType::Ipc, None),
        ]
    );
    assert_eq!(linux(&spec).cgroups_path().clone().unwrap(), PathBuf::from("/berth/pod1/pause"));
    let sysctls = linux(&spec).sysctl().clone().unwrap();
    assert_eq!(sysctls["net.ipv4.ip_unprivileged_port_start"], "0");
    assert_eq!(sysctls.len(), 3);
    assert!(bounding(&spec).is_empty());
    assert_eq!(spec.process().as_ref().unwrap().no_new_privileges(), Some(true));
    let annotations = spec.annotations().clone().unwrap();
    assert_eq!(annotations[annotations::CONTAINER_TYPE], "sandbox");
    assert_eq!(annotations["owner"], "me");
    let shm = spec.mounts().clone().unwrap().into_iter().find(|m| m.destination() == Path::new("/dev/shm")).unwrap();
    assert!(shm.options().clone().unwrap().contains(&"ro".to_string()));

    // The sandbox image's own command, and host namespaces.
    let host =
        SandboxContext { netns_path: None, host_pid: true, host_ipc: true, sysctls: BTreeMap::new(), ..pod.sandbox() };
    let spec = sandbox_spec(&host, &image(), &pod.rootfs, &[], &hybrid_host()).unwrap();
    assert_eq!(args(&spec), strings(&["/entry", "--serve"]));
    assert_eq!(namespace_paths(&spec), vec![(LinuxNamespaceType::Mount, None)]);
    assert!(spec.hostname().is_none(), "no hostname without a UTS namespace of its own");

    let error = sandbox_spec(&pod.sandbox(), &ImageDefaults::default(), &pod.rootfs, &[], &hybrid_host()).unwrap_err();
    assert_eq!(invalid_field(&error), "command");
}

#[test]
fn only_namespaced_sysctls_are_accepted() {
    let pod = Pod::new();
    let with = |name: &str, netns: bool, host_ipc: bool| {
        let sandbox = SandboxContext {
            sysctls: BTreeMap::from([(name.to_string(), "1".to_string())]),
            netns_path: netns.then(|| PathBuf::from("/run/netns/x")),
            host_ipc,
            ..pod.sandbox()
        };
        sandbox_spec(&sandbox, &image(), &pod.rootfs, &[], &hybrid_host())
    };
    assert!(with("kernel.msgmax", true, false).is_ok());
    assert!(with("net.core.somaxconn", true, false).is_ok());
    for (name, netns, host_ipc) in [
        ("kernel.domainname", true, false),
        ("vm.swappiness", true, false),
        ("kernel.pid_max", true, false),
        ("net.core.somaxconn", false, false),
        ("kernel.shmmax", true, true),
        ("fs.mqueue.msg_max", true, true),
    ] {
        let error = with(name, netns, host_ipc).unwrap_err();
        assert_eq!(invalid_field(&error), format!("sysctls[{name:?}]"), "{name}");
    }
}

#[test]
fn exec_processes_inherit_the_containers_identity() {
    let pod = Pod::new();
    let container = ContainerSpec {
        security: SecurityContext { run_as_user: Some(33), no_new_privs: true, ..Default::default() },
        working_dir: "/srv".into(),
        ..Default::default()
    };
    let spec = pod.spec(&container, &image()).unwrap();
    let exec = exec_process(&spec, &strings(&["id", "-G"]), true).unwrap();
    let original = spec.process().clone().unwrap();
    assert_eq!(exec.args().clone().unwrap(), strings(&["id", "-G"]));
    assert_eq!(exec.user(), original.user());
    assert_eq!(exec.cwd(), original.cwd());
    assert_eq!(exec.capabilities(), original.capabilities());
    assert_eq!(exec.no_new_privileges(), Some(true));
    assert_eq!(exec.terminal(), Some(true));
    assert!(exec.env().clone().unwrap().contains(&"TERM=xterm".to_string()));
    let plain = exec_process(&spec, &strings(&["true"]), false).unwrap();
    assert_eq!(plain.env(), original.env());
    assert_eq!(plain.terminal(), Some(false));

    assert_eq!(invalid_field(&exec_process(&spec, &[], false).unwrap_err()), "cmd");
}

#[test]
fn serialised_specs_carry_nothing_from_library_defaults() {
    let pod = Pod::new();
    let json = serde_json::to_value(pod.spec(&ContainerSpec::default(), &image()).unwrap()).unwrap();
    assert!(json.get("hostname").is_none(), "{json}");
    assert!(json["process"].get("rlimits").is_none());
    assert_eq!(json["ociVersion"], "1.0.2");
    assert_eq!(json["process"]["noNewPrivileges"], false);
    assert_eq!(json["linux"]["cgroupsPath"], "/berth/pod1/ctr1");
    assert!(json["linux"].get("seccomp").is_none());
}

#[test]
fn container_ids_must_name_a_cgroup() {
    let pod = Pod::new();
    for id in ["", "a/b", ".."] {
        let error =
            container_spec(id, &pod.sandbox(), &ContainerSpec::default(), &image(), &pod.rootfs, &hybrid_host())
                .unwrap_err();
        assert_eq!(invalid_field(&error), "id");
    }
}
