//! The specs handed to the real runc on this host: a pause container holding
//! a fresh network namespace, an application container joining it with the
//! default seccomp profile, dropped privileges and limits, an exec into it,
//! and a privileged `true`. Proves that runc accepts what this room writes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::*;

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: [&str; 12] =
    ["sh", "sleep", "id", "grep", "cat", "hostname", "touch", "true", "echo", "ls", "tr", "head"];

fn runc(root: &Path, args: &[&str]) -> Output {
    Command::new("runc").arg("--root").arg(root).args(args).stdin(Stdio::null()).output().expect("runc is installed")
}

fn runc_ok(root: &Path, args: &[&str]) -> String {
    let output = runc(root, args);
    assert!(
        output.status.success(),
        "runc {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Starts a container in the background. Its stdio must not be our pipes: it
/// keeps them open for as long as it runs.
fn runc_detached(root: &Path, bundle: &Path, id: &str, log: &Path) {
    let status = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["run", "--detach", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .status()
        .expect("runc is installed");
    assert!(status.success(), "runc run {id}: {}", std::fs::read_to_string(log).unwrap_or_default());
}

/// Everything the test creates on the host, undone even when it fails.
struct Host {
    work: tempfile::TempDir,
    runc_root: PathBuf,
    cgroup_parent: String,
    netns: PathBuf,
    containers: Vec<String>,
}

impl Host {
    fn new() -> Host {
        let work = tempfile::tempdir().unwrap();
        let runc_root = work.path().join("runc");
        let netns = work.path().join("netns");
        std::fs::write(&netns, "").unwrap();
        let status = Command::new("unshare").arg(format!("--net={}", netns.display())).arg("true").status().unwrap();
        assert!(status.success(), "creating a persistent network namespace");
        let unique = work.path().file_name().unwrap().to_string_lossy().replace('.', "");
        Host { cgroup_parent: format!("/berth-oci-test-{unique}"), runc_root, netns, containers: Vec::new(), work }
    }

    fn rootfs(&self, name: &str) -> PathBuf {
        let rootfs = self.work.path().join(name).join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n").unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\nextra:x:2000:app\n").unwrap();
        rootfs
    }

    fn bundle(&mut self, id: &str, spec: &Spec) -> PathBuf {
        let bundle = self.work.path().join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        spec.save(bundle.join("config.json")).unwrap();
        self.containers.push(id.to_string());
        bundle
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for id in self.containers.iter().rev() {
            let _ = runc(&self.runc_root, &["delete", "--force", id]);
        }
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for controller in controllers.flatten() {
                let parent = controller.path().join(self.cgroup_parent.trim_start_matches('/'));
                let _ = std::fs::remove_dir(parent.join("pause"));
                let _ = std::fs::remove_dir(&parent);
            }
        }
        let _ = Command::new("umount").arg(&self.netns).status();
    }
}

#[test]
fn runc_runs_a_pod_from_these_specs() {
    let host_facts = HostFacts::detect();
    let mut host = Host::new();
    let pod_files = host.work.path().join("pod");
    std::fs::create_dir_all(pod_files.join("shm")).unwrap();
    std::fs::write(pod_files.join("hostname"), "berth-test\n").unwrap();
    std::fs::write(pod_files.join("hosts"), "127.0.0.1 localhost berth-test\n").unwrap();
    std::fs::write(pod_files.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    let data = host.work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("greeting"), "hello\n").unwrap();

    let mut sandbox = SandboxContext {
        sandbox_id: "pod".into(),
        pod_name: "oci-test".into(),
        pod_namespace: "default".into(),
        pod_uid: "uid".into(),
        netns_path: Some(host.netns.clone()),
        hostname: "berth-test".into(),
        hostname_path: pod_files.join("hostname"),
        hosts_path: pod_files.join("hosts"),
        resolv_conf_path: pod_files.join("resolv.conf"),
        shm_path: Some(pod_files.join("shm")),
        cgroup_parent: host.cgroup_parent.clone(),
        sysctls: [("kernel.shm_rmid_forced".to_string(), "1".to_string())].into(),
        seccomp: Seccomp::RuntimeDefault,
        ..Default::default()
    };
    let pause_image = ImageDefaults { entrypoint: vec!["/bin/sleep".into(), "600".into()], ..Default::default() };
    let pause_rootfs = host.rootfs("pause-root");
    let pause = sandbox_spec(&sandbox, &pause_image, &pause_rootfs, &[], &host_facts).unwrap();
    let bundle = host.bundle("berth-oci-pause", &pause);
    runc_detached(&host.runc_root, &bundle, "berth-oci-pause", &host.work.path().join("pause.log"));
    let state: serde_json::Value =
        serde_json::from_str(&runc_ok(&host.runc_root, &["state", "berth-oci-pause"])).unwrap();
    sandbox.pause_pid = Some(state["pid"].as_u64().unwrap() as u32);

    let app = ContainerSpec {
        name: "app".into(),
        image: "busybox".into(),
        command: vec!["/bin/sleep".into(), "600".into()],
        env: vec![("GREETING_FILE".into(), "/data/greeting".into())],
        mounts: vec![Mount {
            container_path: "/data".into(),
            host_path: data.clone(),
            readonly: true,
            recursive_read_only: true,
            ..Default::default()
        }],
        resources: Resources {
            cpu_shares: 512,
            memory_limit_bytes: 64 << 20,
            pids_limit: Some(50),
            oom_score_adj: -1000,
            ..Default::default()
        },
        security: SecurityContext {
            run_as_username: "app".into(),
            supplemental_groups: vec![1234],
            readonly_rootfs: true,
            capabilities_drop: vec!["NET_RAW".into()],
            seccomp: Seccomp::RuntimeDefault,
            ..Default::default()
        },
        ..Default::default()
    };
    let app_rootfs = host.rootfs("app-root");
    let spec =
        container_spec("berth-oci-app", &sandbox, &app, &ImageDefaults::default(), &app_rootfs, &host_facts).unwrap();
    let bundle = host.bundle("berth-oci-app", &spec);
    runc_detached(&host.runc_root, &bundle, "berth-oci-app", &host.work.path().join("app.log"));

    let script = "echo uid=$(id -u) groups=$(id -G); grep Seccomp: /proc/self/status | tr -d '\\t '; \
                  echo greeting=$(cat $GREETING_FILE); echo hostname=$(hostname); \
                  echo pid1=$(head -c 10 /proc/1/cmdline | tr '\\0' ' '); \
                  echo shm=$(cat /proc/sys/kernel/shm_rmid_forced); \
                  touch /rootfs-write 2>/dev/null && echo rootfs=writable || echo rootfs=read-only; \
                  touch /data/x 2>/dev/null && echo data=writable || echo data=read-only; \
                  cat /proc/kcore 2>/dev/null | head -c 1 | grep -q . && echo kcore=readable || echo kcore=masked";
    let exec = exec_process(&spec, &["/bin/sh".to_string(), "-c".to_string(), script.to_string()], false).unwrap();
    let exec_file = host.work.path().join("exec.json");
    std::fs::write(&exec_file, serde_json::to_vec(&exec).unwrap()).unwrap();
    let output = runc_ok(&host.runc_root, &["exec", "--process", exec_file.to_str().unwrap(), "berth-oci-app"]);
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(
        lines,
        vec![
            "uid=1000 groups=1000 1234 2000",
            "Seccomp:2",
            "greeting=hello",
            "hostname=berth-test",
            "pid1=/bin/sleep",
            "shm=1",
            "rootfs=read-only",
            "data=read-only",
            "kcore=masked",
        ],
        "{output}"
    );

    let memory_limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{}/berth-oci-app/memory.limit_in_bytes",
        host.cgroup_parent
    ));
    if !host_facts.cgroup_v2 {
        assert_eq!(memory_limit.unwrap().trim(), (64u64 << 20).to_string());
    }

    // A privileged container in a privileged pod: every host device, all
    // capabilities, no seccomp.
    sandbox.privileged = true;
    let privileged = ContainerSpec {
        command: vec!["/bin/true".into()],
        security: SecurityContext { privileged: true, seccomp: Seccomp::RuntimeDefault, ..Default::default() },
        ..Default::default()
    };
    let true_rootfs = host.rootfs("true-root");
    let spec =
        container_spec("berth-oci-true", &sandbox, &privileged, &ImageDefaults::default(), &true_rootfs, &host_facts)
            .unwrap();
    let bundle = host.bundle("berth-oci-true", &spec);
    let output = runc(&host.runc_root, &["run", "--bundle", bundle.to_str().unwrap(), "berth-oci-true"]);
    assert!(output.status.success(), "runc run true: {}", String::from_utf8_lossy(&output.stderr));
}
