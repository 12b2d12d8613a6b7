//! Another local user must not reach what berthd keeps in its root and state: the
//! unpacked layers (setuid-root binaries, world-writable directories), the database
//! and the bundles' specs (container environments). A real berthd pulls a real image
//! from a real registry and runs a container with a secret in its environment as
//! uid 1000; then `nobody` tries, through setpriv, to get at all of it. Needs root.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Berthd, BerthdConfig, Compression, Entry, TestImage, TestLayer, TestRegistry};
use k8s_cri::v1 as cri;

const SECRET: &str = "s3cr3t-token-4b1d";
const NOBODY: &str = "65534";

/// Runs `argv` as nobody (no groups); its exit success and its stdout+stderr.
fn as_nobody(argv: &[&str]) -> (bool, String) {
    let output = Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        // setpriv keeps root's capabilities until it execs, so the path of the
        // command it runs would be looked up with CAP_DAC_OVERRIDE. A shell,
        // exec'd as nobody and so without capabilities, looks it up instead.
        .args(["/bin/sh", "-c", "exec \"$0\" \"$@\""])
        .args(argv)
        .output()
        .expect("run setpriv (util-linux)");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 test path")
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// busybox plus a layer holding a setuid-root `id` and a world-writable directory.
fn hostile_image() -> TestImage {
    let id = std::fs::read("/usr/bin/id").expect("read /usr/bin/id (coreutils)");
    let mut image = TestImage::busybox();
    image.layers.push(TestLayer::new(
        &[
            Entry::File { path: "suid-id".into(), data: id, mode: 0o4755 },
            Entry::Dir { path: "drop".into(), mode: 0o777 },
        ],
        Compression::Gzip,
    ));
    image
}

/// The unpacked snapshot that holds `name` at its top, found as root.
fn snapshot_with(root: &Path, name: &str) -> PathBuf {
    let snapshots = root.join("snapshots");
    std::fs::read_dir(&snapshots)
        .expect("list snapshots")
        .flatten()
        .map(|e| e.path().join("fs"))
        .find(|fs| fs.join(name).exists())
        .unwrap_or_else(|| panic!("no snapshot under {} holds {name}", snapshots.display()))
}

fn bundle_specs(state: &Path) -> Vec<PathBuf> {
    let containers = state.join("containers");
    std::fs::read_dir(&containers)
        .expect("list containers")
        .flatten()
        .map(|e| e.path().join("bundle").join("config.json"))
        .filter(|p| p.is_file())
        .collect()
}

/// Everything `nobody` tries; each attempt must fail.
fn assert_nobody_is_locked_out(berthd: &Berthd, layer: &Path) {
    let (root, state) = (berthd.root(), berthd.state());
    let snapshots = root.join("snapshots");
    for dir in [root, state, snapshots.as_path()] {
        let (ok, out) = as_nobody(&["ls", path_str(dir)]);
        assert!(!ok, "nobody lists {} ({:o}):\n{out}", dir.display(), mode(dir));
    }
    let (ok, out) = as_nobody(&["ls", path_str(layer)]);
    assert!(!ok, "nobody enters the snapshot {}:\n{out}", layer.display());
    let (ok, out) = as_nobody(&[path_str(&layer.join("suid-id")), "-u"]);
    assert!(!ok && !out.trim().ends_with('0'), "nobody runs the setuid binary from the snapshot: {out}");
    let planted = layer.join("drop").join("planted");
    let (ok, out) = as_nobody(&["touch", path_str(&planted)]);
    assert!(!ok && !planted.exists(), "nobody writes into a layer directory:\n{out}");
    let (ok, out) = as_nobody(&["cat", path_str(&root.join("meta.redb"))]);
    assert!(!ok && !out.contains(SECRET), "nobody reads the database:\n{out}");
    let specs = bundle_specs(state);
    assert!(!specs.is_empty(), "no bundle under {}", state.display());
    for spec in specs {
        let (ok, out) = as_nobody(&["cat", path_str(&spec)]);
        assert!(!ok && !out.contains(SECRET), "nobody reads {}:\n{out}", spec.display());
    }
    // What must stay reachable: the socket's directory is traversable, so that
    // the socket's group (0660) can connect.
    let (ok, out) = as_nobody(&["test", "-S", path_str(berthd.socket())]);
    assert!(ok, "the CRI socket is not reachable through {}:\n{out}", state.display());
}

async fn run_pod(berthd: &Berthd) -> String {
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata { name: "modes".into(), uid: "uid-modes".into(), namespace: "store".into(), attempt: 0 }),
        hostname: "modes".into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption { network: cri::NamespaceMode::Node as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let request = cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
    match berthd.runtime_client().await.run_pod_sandbox(request).await {
        Ok(response) => response.into_inner().pod_sandbox_id,
        Err(status) => panic!("RunPodSandbox: {status:?}\n{}", berthd.log()),
    }
}

/// A started container sleeping as uid 1000 with the secret in its environment.
async fn run_container(berthd: &Berthd, pod: &str) -> String {
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "holder".into(), attempt: 0 }),
        image: Some(common::berthd::spec("docker.io/library/hostile:1")),
        command: vec!["/bin/sleep".into(), "3600".into()],
        envs: vec![cri::KeyValue { key: "API_TOKEN".into(), value: SECRET.into() }],
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut client = berthd.runtime_client().await;
    let request = cri::CreateContainerRequest { pod_sandbox_id: pod.into(), config: Some(config), sandbox_config: None };
    let id = match client.create_container(request).await {
        Ok(response) => response.into_inner().container_id,
        Err(status) => panic!("CreateContainer: {status:?}\n{}", berthd.log()),
    };
    if let Err(status) = client.start_container(cri::StartContainerRequest { container_id: id.clone() }).await {
        panic!("StartContainer: {status:?}\n{}", berthd.log());
    }
    id
}

async fn exec(berthd: &Berthd, container: &str, script: &str) -> (i32, String) {
    let request = cri::ExecSyncRequest { container_id: container.into(), cmd: vec!["sh".into(), "-c".into(), script.into()], timeout: 10 };
    let response = berthd.runtime_client().await.exec_sync(request).await.expect("ExecSync").into_inner();
    let text = format!("{}{}", String::from_utf8_lossy(&response.stdout), String::from_utf8_lossy(&response.stderr));
    (response.exit_code, text)
}

#[test]
fn other_users_cannot_reach_layers_database_or_specs_and_an_old_root_is_repaired() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        registry.push("library/hostile", "1", &hostile_image()).await;
        registry.push("library/pause", "modes", &TestImage::busybox().cmd(&["/bin/sleep", "3600"])).await;
        let mut berthd =
            Berthd::start(BerthdConfig::for_registry(&registry).sandbox_image("docker.io/library/pause:modes")).await;
        // The fixture's temporary directory is 0700; a real root sits in /var/lib (0755).
        set_mode(berthd.base(), 0o755);
        berthd.pull("docker.io/library/hostile:1").await.expect("pull the image");
        let pod = run_pod(&berthd).await;
        let container = run_container(&berthd, &pod).await;

        // The container, as uid 1000, still uses its rootfs and sees its layers.
        let (code, out) = exec(&berthd, &container, "id -u && ls /bin/busybox && echo hi > /tmp/x && cat /tmp/x && echo $API_TOKEN").await;
        assert_eq!((code, out.as_str()), (0, format!("1000\n/bin/busybox\nhi\n{SECRET}\n").as_str()), "{}", berthd.log());
        let (code, out) = exec(&berthd, &container, "./suid-id -u; ls -ld /drop").await;
        assert_eq!(code, 0, "{out}");

        let layer = snapshot_with(berthd.root(), "suid-id");
        assert!(bundle_specs(berthd.state()).iter().any(|s| std::fs::read_to_string(s).unwrap().contains(SECRET)));
        assert_nobody_is_locked_out(&berthd, &layer);
        assert_eq!((mode(berthd.root()), mode(berthd.state())), (0o711, 0o711));
        assert_eq!(mode(&berthd.root().join("meta.redb")), 0o600);
        assert_eq!(mode(layer.parent().unwrap()), 0o700);

        // An older berthd left everything world-readable: the next start repairs it.
        berthd.terminate().await;
        for dir in [berthd.root(), berthd.state(), berthd.root().join("snapshots").as_path(), layer.parent().unwrap()] {
            set_mode(dir, 0o755);
        }
        for dir in ["content", "build-cache-mounts"].map(|d| berthd.root().join(d)) {
            set_mode(&dir, 0o755);
        }
        for dir in ["pods", "containers", "shims"].map(|d| berthd.state().join(d)) {
            set_mode(&dir, 0o755);
        }
        set_mode(&berthd.root().join("meta.redb"), 0o644);
        for spec in bundle_specs(berthd.state()) {
            set_mode(spec.parent().unwrap(), 0o755);
            set_mode(&spec, 0o644);
        }
        let (ok, out) = as_nobody(&[path_str(&layer.join("suid-id")), "-u"]);
        assert_eq!((ok, out.trim()), (true, "0"), "an old root really is open: nobody gets euid 0");
        berthd.restart().await;
        assert_nobody_is_locked_out(&berthd, &layer);
        for spec in bundle_specs(berthd.state()) {
            assert_eq!((mode(spec.parent().unwrap()), mode(&spec)), (0o700, 0o600), "{}", spec.display());
        }
        assert_eq!(exec(&berthd, &container, "id -u").await, (0, "1000\n".into()), "the container survives the repair");

        let mut client = berthd.runtime_client().await;
        client.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("StopPodSandbox");
        client.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.expect("RemovePodSandbox");
    });
}
