//! What berthd's RuntimeService answers when a request cannot be carried out: the
//! gRPC code a client acts on (Unavailable is retried, InvalidArgument is not) and a
//! message naming the field at fault.

mod common;

use common::pods::*;
use common::*;
use k8s_cri::v1 as cri;

fn with_resources(name: &str, resources: cri::LinuxContainerResources) -> cri::ContainerConfig {
    cri::ContainerConfig {
        linux: Some(cri::LinuxContainerConfig { resources: Some(resources), ..Default::default() }),
        ..sleeper_config(name)
    }
}

async fn update(berthd: &Berthd, container: &str, resources: cri::LinuxContainerResources) -> Result<(), tonic::Status> {
    let request = cri::UpdateContainerResourcesRequest {
        container_id: container.into(),
        linux: Some(resources),
        ..Default::default()
    };
    berthd.runtime_client().await.update_container_resources(request).await.map(|_| ())
}

fn assert_invalid(result: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(field), "the message names {field}: {status:?}");
}

#[test]
fn invalid_resources_are_invalid_arguments_and_the_shims_codes_are_kept() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let berthd = berthd_with_busybox(&registry).await;
        let pod = run_pod(&berthd, "resources").await;

        let bad_period = cri::LinuxContainerResources { cpu_period: 10, cpu_quota: 20_000, ..Default::default() };
        assert_invalid(try_create(&berthd, &pod, with_resources("bad-period", bad_period)).await, "config.linux.resources.cpu_period");
        let bad_cpus = cri::LinuxContainerResources { cpuset_cpus: "not-a-cpu".into(), ..Default::default() };
        assert_invalid(try_create(&berthd, &pod, with_resources("bad-cpus", bad_cpus.clone())).await, "config.linux.resources.cpuset_cpus");
        assert!(list_containers(&berthd, &pod).await.is_empty(), "refused creates leave no container");

        let running = run_sleeper(&berthd, &pod, "running").await;
        assert_invalid(update(&berthd, &running, bad_cpus).await, "linux.cpuset_cpus");
        let bad_quota = cri::LinuxContainerResources { cpu_period: 100_000, cpu_quota: 10, ..Default::default() };
        assert_invalid(update(&berthd, &running, bad_quota).await, "linux.cpu_quota");
        let fine = cri::LinuxContainerResources { cpu_period: 100_000, cpu_quota: 50_000, ..Default::default() };
        update(&berthd, &running, fine.clone()).await.expect("a valid update applies");

        // The shim refuses to update a container that never started: its
        // FailedPrecondition reaches the client as such, not as Unavailable.
        let created = try_create(&berthd, &pod, sleeper_config("created")).await.expect("create");
        let status = update(&berthd, &created, fine).await.expect_err("a container that never ran has no cgroup to update");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        remove_pod(&berthd, &pod).await;
    });
}

#[test]
fn log_paths_cannot_leave_the_pods_log_directory() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let berthd = berthd_with_busybox(&registry).await;
        let logs = berthd.base().join("logs").join("pod");
        let config = cri::PodSandboxConfig { log_directory: logs.display().to_string(), ..pod_config("logs") };
        let pod = try_run_pod(&berthd, config).await.expect("RunPodSandbox");

        let outside = berthd.base().join("escaped.log");
        let climbing = "../../escaped.log".to_string();
        assert!(logs.join(&climbing).ends_with("logs/pod/../../escaped.log"));
        for (name, log_path) in [("absolute", outside.display().to_string()), ("climbing", climbing)] {
            let config = cri::ContainerConfig { log_path, ..sleeper_config(name) };
            assert_invalid(try_create(&berthd, &pod, config).await, "config.log_path");
        }
        assert!(!outside.exists(), "nothing was written outside the log directory");
        assert!(list_containers(&berthd, &pod).await.is_empty(), "refused creates leave no container");

        let config = cri::ContainerConfig { log_path: "app/./0.log".into(), ..sleeper_config("inside") };
        let inside = try_create(&berthd, &pod, config).await.expect("a log path inside the directory is fine");
        let start = cri::StartContainerRequest { container_id: inside };
        berthd.runtime_client().await.start_container(start).await.expect("StartContainer");
        assert!(logs.join("app/0.log").exists(), "the log is where log_directory and log_path say");
        remove_pod(&berthd, &pod).await;
    });
}
