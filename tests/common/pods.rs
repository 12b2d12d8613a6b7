//! Pods and containers through berthd's CRI RuntimeService: busybox images pushed
//! to the test registry, pods on the host network (no CNI), sleeping containers.

use k8s_cri::v1 as cri;

use super::{Berthd, BerthdConfig, Compression, Entry, TestImage, TestLayer, TestRegistry};

const BUSYBOX_APPLETS: [&str; 8] = ["sh", "cat", "sleep", "ls", "echo", "true", "ps", "env"];

/// busybox-static with a few applets and an /etc/passwd.
pub fn busybox_image() -> TestImage {
    let busybox = std::fs::read("/bin/busybox").expect("read /bin/busybox (Debian package busybox-static)");
    let mut entries = vec![Entry::dir("bin"), Entry::File { path: "bin/busybox".into(), data: busybox, mode: 0o755 }];
    for applet in BUSYBOX_APPLETS {
        entries.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    for dir in ["etc", "tmp", "proc", "sys", "dev"] {
        entries.push(Entry::dir(dir));
    }
    entries.push(Entry::file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"));
    TestImage::new(vec![TestLayer::new(&entries, Compression::Gzip)])
}

/// A berthd whose sandbox image is busybox sleeping, with busybox pulled.
pub async fn berthd_with_busybox(registry: &TestRegistry) -> Berthd {
    registry.push("library/busybox", "latest", &busybox_image()).await;
    registry.push("library/pause", "test", &busybox_image().cmd(&["/bin/sleep", "3600"])).await;
    let berthd = Berthd::start(BerthdConfig::for_registry(registry).sandbox_image("docker.io/library/pause:test")).await;
    berthd.pull("docker.io/library/busybox:latest").await.expect("pull busybox");
    berthd
}

/// A pod config on the host network, named `name`.
pub fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "berth-tests".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub async fn try_run_pod(berthd: &Berthd, config: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    let request = cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
    Ok(berthd.runtime_client().await.run_pod_sandbox(request).await?.into_inner().pod_sandbox_id)
}

pub async fn run_pod(berthd: &Berthd, name: &str) -> String {
    match try_run_pod(berthd, pod_config(name)).await {
        Ok(id) => id,
        Err(status) => panic!("RunPodSandbox: {status:?}\n{}", berthd.log()),
    }
}

/// A busybox container config sleeping an hour.
pub fn sleeper_config(name: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(super::berthd::spec("docker.io/library/busybox:latest")),
        command: vec!["/bin/sleep".into(), "3600".into()],
        ..Default::default()
    }
}

pub async fn try_create(berthd: &Berthd, pod: &str, config: cri::ContainerConfig) -> Result<String, tonic::Status> {
    let request = cri::CreateContainerRequest { pod_sandbox_id: pod.into(), config: Some(config), sandbox_config: None };
    Ok(berthd.runtime_client().await.create_container(request).await?.into_inner().container_id)
}

/// A started sleeper in `pod`.
pub async fn run_sleeper(berthd: &Berthd, pod: &str, name: &str) -> String {
    let id = match try_create(berthd, pod, sleeper_config(name)).await {
        Ok(id) => id,
        Err(status) => panic!("CreateContainer {name}: {status:?}\n{}", berthd.log()),
    };
    let start = cri::StartContainerRequest { container_id: id.clone() };
    berthd.runtime_client().await.start_container(start).await.expect("StartContainer");
    id
}

pub async fn remove_pod(berthd: &Berthd, pod: &str) {
    let mut client = berthd.runtime_client().await;
    client.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.into() }).await.expect("StopPodSandbox");
    client.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.into() }).await.expect("RemovePodSandbox");
}

pub async fn list_pods(berthd: &Berthd) -> Vec<cri::PodSandbox> {
    let request = cri::ListPodSandboxRequest { filter: None };
    berthd.runtime_client().await.list_pod_sandbox(request).await.expect("ListPodSandbox").into_inner().items
}

pub async fn list_containers(berthd: &Berthd, pod: &str) -> Vec<cri::Container> {
    let filter = cri::ContainerFilter { pod_sandbox_id: pod.into(), ..Default::default() };
    let request = cri::ListContainersRequest { filter: Some(filter) };
    berthd.runtime_client().await.list_containers(request).await.expect("ListContainers").into_inner().containers
}
