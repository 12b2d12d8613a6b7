//! Creates racing for one name: kubelet retries a RunPodSandbox or CreateContainer
//! whose answer it did not get, so two calls with the same metadata arrive at once.
//! Exactly one may win; the others must hear AlreadyExists naming the object, and a
//! create that failed must leave its name free.

mod common;

use common::pods::*;
use common::*;
use k8s_cri::v1 as cri;

const RACERS: usize = 4;

#[test]
fn concurrent_creates_with_one_name_make_one_pod_and_one_container() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let berthd = berthd_with_busybox(&registry).await;

        let runs: Vec<_> = (0..RACERS)
            .map(|_| {
                let config = pod_config("racer");
                let berthd = &berthd;
                async move { try_run_pod(berthd, config).await }
            })
            .collect();
        let results = futures::future::join_all(runs).await;
        let won: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "exactly one RunPodSandbox may win: {results:?}\n{}", berthd.log());
        let pod = won[0].clone();
        for lost in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(lost.code(), tonic::Code::AlreadyExists, "{lost:?}");
            assert!(lost.message().contains("racer") && lost.message().contains(&pod), "names the pod: {lost:?}");
        }
        assert_eq!(list_pods(&berthd).await.len(), 1, "one pod exists");

        let creates: Vec<_> = (0..RACERS)
            .map(|_| {
                let (berthd, pod) = (&berthd, &pod);
                async move { try_create(berthd, pod, sleeper_config("twin")).await }
            })
            .collect();
        let results = futures::future::join_all(creates).await;
        let won: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "exactly one CreateContainer may win: {results:?}\n{}", berthd.log());
        for lost in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(lost.code(), tonic::Code::AlreadyExists, "{lost:?}");
            assert!(lost.message().contains("twin") && lost.message().contains(won[0].as_str()), "names the container: {lost:?}");
        }
        assert_eq!(list_containers(&berthd, &pod).await.len(), 1, "one container exists");

        // Removed, a name is free again.
        let removed = cri::RemoveContainerRequest { container_id: won[0].clone() };
        berthd.runtime_client().await.remove_container(removed).await.expect("RemoveContainer");
        try_create(&berthd, &pod, sleeper_config("twin")).await.expect("the name of a removed container is free");
        remove_pod(&berthd, &pod).await;
        let again = try_run_pod(&berthd, pod_config("racer")).await.expect("the name of a removed pod is free");
        remove_pod(&berthd, &again).await;
    });
}

#[test]
fn a_failed_create_gives_its_name_back() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let berthd = berthd_with_busybox(&registry).await;

        let request = cri::RunPodSandboxRequest { config: Some(pod_config("retried")), runtime_handler: "no-such-handler".into() };
        let failed = berthd.runtime_client().await.run_pod_sandbox(request).await.expect_err("an unknown handler fails");
        assert_eq!(failed.code(), tonic::Code::InvalidArgument, "{failed:?}");
        let pod = run_pod(&berthd, "retried").await;

        let mut missing_image = sleeper_config("retried");
        missing_image.image = Some(common::berthd::spec("docker.io/library/no-such-image:1"));
        let failed = try_create(&berthd, &pod, missing_image).await.expect_err("an unknown image fails");
        assert_eq!(failed.code(), tonic::Code::NotFound, "{failed:?}");
        let container = try_create(&berthd, &pod, sleeper_config("retried")).await;
        assert!(container.is_ok(), "the failed create left its name free: {container:?}\n{}", berthd.log());
        remove_pod(&berthd, &pod).await;
    });
}
