//! CRI RuntimeService over berth's `PodService`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use k8s_cri::v1 as cri;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::convert::{self, labels_match};
use super::status::missing;
use super::streaming::{ExecRequest, StreamingServer};
use crate::config::Config;
use crate::oci::PidNamespace;
use crate::sandbox::PodService;
use crate::sandbox::events::{LifecycleChange, LifecycleEvent};
use crate::sandbox::model::{ContainerRecord, PodRecord};
use crate::shim::Stats;

pub const RUNTIME_NAME: &str = "berth";
pub const RUNTIME_API_VERSION: &str = "v1";

pub struct CriRuntimeService {
    config: Config,
    pods: PodService,
    streaming: StreamingServer,
    cpu_samples: CpuSamples,
    /// What each runtime handler can do, asked of its OCI runtime once at start-up.
    handler_features: Vec<cri::RuntimeHandler>,
}

impl CriRuntimeService {
    pub fn new(config: Config, pods: PodService, streaming: StreamingServer) -> Self {
        let kernel_version = crate::oci::HostFacts::detect().kernel_version;
        let default_handler = config.runtime.default_handler.clone();
        let mut handler_features: Vec<cri::RuntimeHandler> = config
            .runtime
            .effective_handlers()
            .into_iter()
            .map(|(name, handler)| cri::RuntimeHandler {
                name,
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: crate::oci::runtime_supports_recursive_read_only(&handler.path, kernel_version),
                    user_namespaces: false,
                }),
            })
            .collect();
        // A request naming no handler gets the default one, and so does the empty name
        // in this list, as containerd reports it.
        if let Some(default) = handler_features.iter().find(|handler| handler.name == default_handler) {
            handler_features.push(cri::RuntimeHandler { name: String::new(), features: default.features });
        }
        CriRuntimeService { config, pods, streaming, cpu_samples: CpuSamples::default(), handler_features }
    }

    fn cpu_usage(&self, id: &str, stats: &Stats) -> cri::CpuUsage {
        self.cpu_samples.usage(id, stats)
    }

    fn memory_usage(stats: &Stats) -> cri::MemoryUsage {
        let v = |value| Some(cri::UInt64Value { value });
        cri::MemoryUsage {
            timestamp: stats.timestamp_nanos,
            working_set_bytes: v(stats.memory_working_set),
            available_bytes: None,
            usage_bytes: v(stats.memory_usage),
            rss_bytes: v(stats.memory_rss),
            page_faults: v(stats.page_faults),
            major_page_faults: v(stats.major_page_faults),
        }
    }

    async fn container_stats(&self, c: &ContainerRecord) -> Result<cri::ContainerStats, Status> {
        let (record, stats, (bytes, inodes)) = self.pods.container_stats(&c.id).await?;
        let now = now_nanos();
        Ok(cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: record.id.clone(),
                metadata: Some(convert::container_metadata(&record)),
                labels: record.spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                annotations: record.spec.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            }),
            cpu: stats.as_ref().map(|s| self.cpu_usage(&record.id, s)),
            memory: stats.as_ref().map(Self::memory_usage),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: now,
                fs_id: Some(cri::FilesystemIdentifier { mountpoint: self.config.root.display().to_string() }),
                used_bytes: Some(cri::UInt64Value { value: bytes }),
                inodes_used: Some(cri::UInt64Value { value: inodes }),
            }),
            swap: None,
        })
    }

    async fn pod_stats(&self, pod: &PodRecord) -> Result<cri::PodSandboxStats, Status> {
        let (pod, stats) = self.pods.pod_stats(&pod.id).await?;
        let mut containers = Vec::new();
        for c in self.pods.containers()?.into_iter().filter(|c| c.pod_id == pod.id) {
            containers.push(self.container_stats(&c).await?);
        }
        Ok(cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: pod.id.clone(),
                metadata: Some(convert::pod_metadata(&pod)),
                labels: pod.config.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                annotations: pod.config.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: stats.as_ref().map(|s| self.cpu_usage(&pod.id, s)),
                memory: stats.as_ref().map(Self::memory_usage),
                network: None,
                process: stats.as_ref().map(|s| cri::ProcessUsage {
                    timestamp: s.timestamp_nanos,
                    process_count: Some(cri::UInt64Value { value: s.pids }),
                }),
                containers,
            }),
            windows: None,
        })
    }
}

/// The previous CPU sample per container or pod, to turn cumulative usage into a
/// rate (nanocores) as the kubelet's summary API expects. An entry goes with its
/// container or pod, so the map holds only what exists.
#[derive(Default)]
struct CpuSamples {
    samples: Mutex<HashMap<String, (i64, u64)>>,
}

impl CpuSamples {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, u64)>> {
        // Plain numbers: a panic elsewhere cannot leave an entry half-written.
        self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn usage(&self, id: &str, stats: &Stats) -> cri::CpuUsage {
        let mut samples = self.lock();
        let nano_cores = samples.get(id).and_then(|&(at, usage)| {
            let elapsed = stats.timestamp_nanos.checked_sub(at).filter(|&e| e > 0)?;
            let used = stats.cpu_usage_ns.checked_sub(usage)?;
            Some((used as u128 * 1_000_000_000 / elapsed as u128) as u64)
        });
        samples.insert(id.to_string(), (stats.timestamp_nanos, stats.cpu_usage_ns));
        cri::CpuUsage {
            timestamp: stats.timestamp_nanos,
            usage_core_nano_seconds: Some(cri::UInt64Value { value: stats.cpu_usage_ns }),
            usage_nano_cores: nano_cores.map(|value| cri::UInt64Value { value }),
        }
    }

    fn forget<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut samples = self.lock();
        for id in ids {
            samples.remove(id);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

fn container_statuses_of(pods: &PodService, pod_id: &str) -> Result<Vec<cri::ContainerStatus>, Status> {
    Ok(pods.containers()?.iter().filter(|c| c.pod_id == pod_id).map(convert::container_status).collect())
}

/// An event as kubelet's evented PLEG reads it: what changed, and the pod's status
/// as it is now (none once the pod is gone).
fn container_event(pods: &PodService, event: LifecycleEvent) -> cri::ContainerEventResponse {
    let container_event_type = match event.change {
        LifecycleChange::Created => cri::ContainerEventType::ContainerCreatedEvent,
        LifecycleChange::Started => cri::ContainerEventType::ContainerStartedEvent,
        LifecycleChange::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
        LifecycleChange::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
    };
    let pod = pods.pod(&event.pod_id).ok().flatten();
    cri::ContainerEventResponse {
        container_id: event.id,
        container_event_type: container_event_type as i32,
        created_at: event.at_nanos,
        pod_sandbox_status: pod.as_ref().map(convert::pod_status),
        containers_statuses: container_statuses_of(pods, &event.pod_id).unwrap_or_default(),
    }
}

fn not_yet(method: &str) -> Status {
    Status::unimplemented(format!("{method}: not served by this build of berth"))
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
        let runtime = cri::RuntimeCondition { r#type: "RuntimeReady".into(), status: true, ..Default::default() };
        let network = match self.pods.network_status() {
            Ok(()) => cri::RuntimeCondition { r#type: "NetworkReady".into(), status: true, ..Default::default() },
            Err(message) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message,
            },
        };
        let mut info = HashMap::new();
        if request.into_inner().verbose {
            let config = serde_json::json!({
                "root": self.config.root,
                "state": self.config.state,
                "socket": self.config.socket,
                "sandboxImage": self.config.sandbox_image,
                "maxConcurrentDownloads": self.config.max_concurrent_downloads,
                "registry": {
                    "mirrors": self.config.registry.mirrors,
                    "insecure": self.config.registry.insecure,
                    // Which hosts have credentials, never the credentials.
                    "authsFor": self.config.registry.auths.keys().collect::<Vec<_>>(),
                },
                "cni": { "confDir": self.config.cni.conf_dir, "binDirs": self.config.cni.bin_dirs },
                "runtime": {
                    "defaultHandler": self.config.runtime.default_handler,
                    "stopGracePeriod": self.config.runtime.stop_grace_period,
                    "handlers": self.config.runtime.effective_handlers().into_iter()
                        .map(|(name, h)| (name, h.path.display().to_string())).collect::<HashMap<_, _>>(),
                },
            });
            info.insert("config".to_string(), config.to_string());
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions: vec![runtime, network] }),
            info,
            runtime_handlers: self.handler_features.clone(),
            features: Some(cri::RuntimeFeatures { supplemental_groups_policy: true }),
        }))
    }

    async fn runtime_config(&self, _: Request<cri::RuntimeConfigRequest>) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration { cgroup_driver: cri::CgroupDriver::Cgroupfs as i32 }),
        }))
    }

    async fn run_pod_sandbox(&self, request: Request<cri::RunPodSandboxRequest>) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let request = request.into_inner();
        let config = convert::pod_config(request.config, request.runtime_handler)?;
        // Its own task: a client that gives up must not leave a half-built pod.
        let pods = self.pods.clone();
        let pod_sandbox_id = tokio::spawn(async move { pods.run_pod(config).await })
            .await
            .map_err(|e| Status::internal(format!("run_pod_sandbox task: {e}")))??;
        Ok(Response::new(cri::RunPodSandboxResponse { pod_sandbox_id }))
    }

    async fn stop_pod_sandbox(&self, request: Request<cri::StopPodSandboxRequest>) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        if id.is_empty() {
            return Err(missing("pod_sandbox_id"));
        }
        self.pods.stop_pod(&id).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(&self, request: Request<cri::RemovePodSandboxRequest>) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        if id.is_empty() {
            return Err(missing("pod_sandbox_id"));
        }
        let removed: Vec<String> = match self.pods.pod(&id)? {
            Some(pod) => {
                let containers = self.pods.containers()?.into_iter().filter(|c| c.pod_id == pod.id).map(|c| c.id);
                std::iter::once(pod.id.clone()).chain(containers).collect()
            }
            None => Vec::new(),
        };
        self.pods.remove_pod(&id).await?;
        self.cpu_samples.forget(removed.iter().map(String::as_str));
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(&self, request: Request<cri::PodSandboxStatusRequest>) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let request = request.into_inner();
        let pod = self
            .pods
            .pod(&request.pod_sandbox_id)?
            .ok_or_else(|| Status::not_found(format!("pod sandbox {} not found", request.pod_sandbox_id)))?;
        let mut info = HashMap::new();
        if request.verbose {
            info.insert("info".to_string(), serde_json::to_string(&pod).unwrap_or_default());
        }
        let containers_statuses = container_statuses_of(&self.pods, &pod.id)?;
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(convert::pod_status(&pod)),
            info,
            containers_statuses,
            timestamp: now_nanos(),
        }))
    }

    async fn list_pod_sandbox(&self, request: Request<cri::ListPodSandboxRequest>) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let items = self
            .pods
            .pods()?
            .iter()
            .filter(|p| filter.id.is_empty() || p.id.starts_with(&filter.id))
            .filter(|p| filter.state.as_ref().is_none_or(|s| convert::pod_state(p.state) as i32 == s.state))
            .filter(|p| labels_match(&filter.label_selector, &p.config.labels))
            .map(convert::pod_sandbox)
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(&self, request: Request<cri::CreateContainerRequest>) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let request = request.into_inner();
        if request.pod_sandbox_id.is_empty() {
            return Err(missing("pod_sandbox_id"));
        }
        let mut req = convert::container_request(request.config)?;
        if let Some(target) = &req.pid_target {
            let field = "config.linux.security_context.namespace_options.target_id";
            let target = self.pods.container(target)?.ok_or_else(|| Status::not_found(format!("{field}: container {target} not found")))?;
            let pid = target.pid.ok_or_else(|| Status::failed_precondition(format!("{field}: container {} has no process", target.id)))?;
            req.spec.security.namespaces.pid = PidNamespace::Target(pid);
        }
        let pods = self.pods.clone();
        let pod_id = request.pod_sandbox_id;
        let container_id = tokio::spawn(async move {
            pods.create_container(&pod_id, req.name, req.attempt, req.image, req.log_path, req.spec).await
        })
        .await
        .map_err(|e| Status::internal(format!("create_container task: {e}")))??;
        Ok(Response::new(cri::CreateContainerResponse { container_id }))
    }

    async fn start_container(&self, request: Request<cri::StartContainerRequest>) -> Result<Response<cri::StartContainerResponse>, Status> {
        self.pods.start_container(&request.into_inner().container_id).await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(&self, request: Request<cri::StopContainerRequest>) -> Result<Response<cri::StopContainerResponse>, Status> {
        let request = request.into_inner();
        let timeout = Duration::from_secs(request.timeout.max(0) as u64);
        // Stopping is idempotent in CRI: a container already gone is as stopped as it gets.
        if self.pods.container(&request.container_id)?.is_none() {
            return Ok(Response::new(cri::StopContainerResponse {}));
        }
        self.pods.stop_container(&request.container_id, timeout).await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(&self, request: Request<cri::RemoveContainerRequest>) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        let removed = self.pods.container(&id)?.map(|c| c.id);
        self.pods.remove_container(&id).await?;
        self.cpu_samples.forget(removed.as_deref());
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(&self, request: Request<cri::ListContainersRequest>) -> Result<Response<cri::ListContainersResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let containers = self
            .pods
            .containers()?
            .iter()
            .filter(|c| filter.id.is_empty() || c.id.starts_with(&filter.id))
            .filter(|c| filter.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&filter.pod_sandbox_id))
            .filter(|c| filter.state.as_ref().is_none_or(|s| convert::container_state(c.state) as i32 == s.state))
            .filter(|c| labels_match(&filter.label_selector, &c.spec.labels))
            .map(convert::container)
            .collect();
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(&self, request: Request<cri::ContainerStatusRequest>) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let request = request.into_inner();
        let container = self
            .pods
            .container(&request.container_id)?
            .ok_or_else(|| Status::not_found(format!("container {} not found", request.container_id)))?;
        let mut info = HashMap::new();
        if request.verbose {
            info.insert("info".to_string(), serde_json::to_string(&container).unwrap_or_default());
        }
        Ok(Response::new(cri::ContainerStatusResponse { status: Some(convert::container_status(&container)), info }))
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let request = request.into_inner();
        let linux = request.linux.ok_or_else(|| missing("linux"))?;
        self.pods.update_resources(&request.container_id, convert::resources(&linux, "linux")?).await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(&self, request: Request<cri::ReopenContainerLogRequest>) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        self.pods.reopen_log(&request.into_inner().container_id).await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(&self, request: Request<cri::ExecSyncRequest>) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let request = request.into_inner();
        let timeout = (request.timeout > 0).then(|| Duration::from_secs(request.timeout as u64));
        let output = self.pods.exec_sync(&request.container_id, &request.cmd, timeout).await?;
        if output.timed_out {
            return Err(Status::deadline_exceeded(format!(
                "command {:?} timed out after {}s",
                request.cmd, request.timeout
            )));
        }
        Ok(Response::new(cri::ExecSyncResponse { stdout: output.stdout, stderr: output.stderr, exit_code: output.exit_code }))
    }

    async fn container_stats(&self, request: Request<cri::ContainerStatsRequest>) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        let container = self.pods.container(&id)?.ok_or_else(|| Status::not_found(format!("container {id} not found")))?;
        Ok(Response::new(cri::ContainerStatsResponse { stats: Some(self.container_stats(&container).await?) }))
    }

    async fn list_container_stats(&self, request: Request<cri::ListContainerStatsRequest>) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut stats = Vec::new();
        for c in self.pods.containers()? {
            let selected = (filter.id.is_empty() || c.id.starts_with(&filter.id))
                && (filter.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&filter.pod_sandbox_id))
                && labels_match(&filter.label_selector, &c.spec.labels);
            if selected {
                stats.push(self.container_stats(&c).await?);
            }
        }
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(&self, request: Request<cri::PodSandboxStatsRequest>) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let pod = self.pods.pod(&id)?.ok_or_else(|| Status::not_found(format!("pod sandbox {id} not found")))?;
        Ok(Response::new(cri::PodSandboxStatsResponse { stats: Some(self.pod_stats(&pod).await?) }))
    }

    async fn list_pod_sandbox_stats(&self, request: Request<cri::ListPodSandboxStatsRequest>) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut stats = Vec::new();
        for pod in self.pods.pods()? {
            if (filter.id.is_empty() || pod.id.starts_with(&filter.id)) && labels_match(&filter.label_selector, &pod.config.labels) {
                stats.push(self.pod_stats(&pod).await?);
            }
        }
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(&self, _: Request<cri::UpdateRuntimeConfigRequest>) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        // kubelet sends the pod CIDR here; berth's CNI config carries its own.
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn get_container_events(&self, _: Request<cri::GetEventsRequest>) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let pods = self.pods.clone();
        let events = futures::stream::unfold(self.pods.subscribe_events(), move |mut receiver| {
            let pods = pods.clone();
            async move {
                loop {
                    match receiver.recv().await {
                        Ok(event) => return Some((Ok(container_event(&pods, event)), receiver)),
                        Err(RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "a GetContainerEvents client fell behind and missed events");
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn exec(&self, request: Request<cri::ExecRequest>) -> Result<Response<cri::ExecResponse>, Status> {
        let request = request.into_inner();
        if request.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd: must not be empty"));
        }
        if !(request.stdin || request.stdout || request.stderr) {
            return Err(Status::invalid_argument("one of stdin, stdout and stderr must be set"));
        }
        if request.tty && request.stderr {
            return Err(Status::invalid_argument("tty and stderr: a terminal merges stderr into stdout, so they cannot both be set"));
        }
        let container = self.pods.running_container(&request.container_id)?;
        let url = self.streaming.exec_url(ExecRequest {
            container_id: container.id,
            cmd: Some(request.cmd),
            tty: request.tty,
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
        });
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(&self, request: Request<cri::AttachRequest>) -> Result<Response<cri::AttachResponse>, Status> {
        let request = request.into_inner();
        if !(request.stdin || request.stdout || request.stderr) {
            return Err(Status::invalid_argument("one of stdin, stdout and stderr must be set"));
        }
        if request.tty && request.stderr {
            return Err(Status::invalid_argument("tty and stderr: a terminal merges stderr into stdout, so they cannot both be set"));
        }
        let container = self.pods.running_container(&request.container_id)?;
        if request.stdin && !container.spec.stdin {
            return Err(Status::invalid_argument(format!("stdin: container {} was not created with stdin", container.id)));
        }
        let url = self.streaming.attach_url(ExecRequest {
            container_id: container.id,
            cmd: None,
            tty: request.tty,
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
        });
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(&self, request: Request<cri::PortForwardRequest>) -> Result<Response<cri::PortForwardResponse>, Status> {
        let request = request.into_inner();
        let pod = self.pods.pod(&request.pod_sandbox_id)?.ok_or_else(|| Status::not_found(format!("pod sandbox {} not found", request.pod_sandbox_id)))?;
        if let Some(port) = request.port.iter().find(|&&port| !(1..=65535).contains(&port)) {
            return Err(Status::invalid_argument(format!("port: {port} is not a port number")));
        }
        Ok(Response::new(cri::PortForwardResponse { url: self.streaming.port_forward_url(pod.id) }))
    }

    not_yet_served! {
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse;
        list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(at: i64, used: u64) -> Stats {
        Stats {
            timestamp_nanos: at,
            cpu_usage_ns: used,
            memory_usage: 0,
            memory_working_set: 0,
            memory_rss: 0,
            page_faults: 0,
            major_page_faults: 0,
            pids: 0,
        }
    }

    #[test]
    fn cpu_rates_come_from_the_previous_sample_and_removed_objects_leave_none() {
        let samples = CpuSamples::default();
        assert_eq!(samples.usage("c1", &stats(1_000_000_000, 0)).usage_nano_cores, None);
        let second = samples.usage("c1", &stats(2_000_000_000, 500_000_000));
        assert_eq!(second.usage_nano_cores.map(|v| v.value), Some(500_000_000), "half a core");
        samples.usage("c2", &stats(1, 1));
        samples.usage("pod", &stats(1, 1));
        assert_eq!(samples.len(), 3);
        samples.forget(["c1", "pod"]);
        samples.forget(None::<&str>);
        assert_eq!(samples.len(), 1, "only the container that still exists keeps a sample");
    }
}
