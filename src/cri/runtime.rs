//! CRI RuntimeService. This build serves the runtime's identity, status and
//! configuration; the pod and container methods answer `Unimplemented` with a
//! message saying so, until the pod sandbox service lands behind them.

use std::collections::HashMap;
use std::pin::Pin;

use k8s_cri::v1 as cri;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::images::ImageService;

pub const RUNTIME_NAME: &str = "berth";
pub const RUNTIME_API_VERSION: &str = "v1";

pub struct CriRuntimeService {
    config: Config,
    // Held for the pod methods, which pull the sandbox image through it.
    _images: ImageService,
}

impl CriRuntimeService {
    pub fn new(config: Config, images: ImageService) -> Self {
        CriRuntimeService { config, _images: images }
    }
}

fn not_yet(method: &str) -> Status {
    Status::unimplemented(format!("{method}: berth does not run pods and containers yet; this build serves images only"))
}

/// Generates the methods that answer `Unimplemented`, one line each. The trait is
/// an `async_trait`, whose attribute can't see into a macro, so the methods are
/// written in the boxed-future form that attribute would have produced.
macro_rules! not_yet_served {
    ($($method:ident($request:ident) -> $response:ident;)*) => {
        $(
            fn $method<'life0, 'async_trait>(
                &'life0 self,
                _: Request<cri::$request>,
            ) -> Pin<Box<dyn std::future::Future<Output = Result<Response<cri::$response>, Status>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move { Err(not_yet(stringify!($method))) })
            }
        )*
    };
}

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for CriRuntimeService {
    type GetContainerEventsStream =
        Pin<Box<dyn futures::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send + 'static>>;

    async fn version(&self, _: Request<cri::VersionRequest>) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        }))
    }

    async fn status(&self, request: Request<cri::StatusRequest>) -> Result<Response<cri::StatusResponse>, Status> {
        let condition = |kind: &str, reason: &str, message: &str| cri::RuntimeCondition {
            r#type: kind.into(),
            status: false,
            reason: reason.into(),
            message: message.into(),
        };
        let conditions = vec![
            condition("RuntimeReady", "ContainersNotServed", "this build of berth serves images only"),
            condition("NetworkReady", "NetworkNotServed", "pod networking is not served by this build of berth"),
        ];
        let mut info = HashMap::new();
        if request.into_inner().verbose {
            let config = serde_json::json!({
                "root": self.config.root,
                "state": self.config.state,
                "socket": self.config.socket,
                "sandboxImage": self.config.sandbox_image,
                "maxConcurrentDownloads": self.config.max_concurrent_downloads,
                "registry": { "mirrors": self.config.registry.mirrors, "insecure": self.config.registry.insecure },
            });
            info.insert("config".to_string(), config.to_string());
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers: vec![],
            features: None,
        }))
    }

    async fn runtime_config(&self, _: Request<cri::RuntimeConfigRequest>) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration { cgroup_driver: cri::CgroupDriver::Cgroupfs as i32 }),
        }))
    }

    async fn get_container_events(&self, _: Request<cri::GetEventsRequest>) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(not_yet("get_container_events"))
    }

    not_yet_served! {
        run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse;
        stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse;
        remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse;
        pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse;
        list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse;
        create_container(CreateContainerRequest) -> CreateContainerResponse;
        start_container(StartContainerRequest) -> StartContainerResponse;
        stop_container(StopContainerRequest) -> StopContainerResponse;
        remove_container(RemoveContainerRequest) -> RemoveContainerResponse;
        list_containers(ListContainersRequest) -> ListContainersResponse;
        container_status(ContainerStatusRequest) -> ContainerStatusResponse;
        update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse;
        reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse;
        exec_sync(ExecSyncRequest) -> ExecSyncResponse;
        exec(ExecRequest) -> ExecResponse;
        attach(AttachRequest) -> AttachResponse;
        port_forward(PortForwardRequest) -> PortForwardResponse;
        container_stats(ContainerStatsRequest) -> ContainerStatsResponse;
        list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse;
        pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse;
        list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse;
        update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse;
        list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse;
    }
}
