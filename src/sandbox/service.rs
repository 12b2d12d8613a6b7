//! `PodService`: the lifecycle of pod sandboxes and their containers. A pod is a
//! network namespace with CNI attached, its files (hostname, hosts, resolv.conf,
//! /dev/shm), one `berth-shim` holding the pause container and every container of
//! the pod, and a record in the metadata database. Each step that creates
//! something has its undo, run when a later step fails, so a failed RunPodSandbox
//! or CreateContainer leaves nothing behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use rand::RngCore;

use super::cni::{Cni, PodNetwork};
use super::error::SandboxError;
use super::events::{LifecycleChange, LifecycleEvent, LifecycleEvents};
use super::model::*;
use super::names::{self, NameRegistry};
use super::intent::{self, PodIntent, crash_point};
use super::{files, netns, rootfs};
use crate::config::Config;
use crate::images::ImageService;
use crate::images::manifest::ImageConfig;
use crate::oci::{self, ContainerSpec, HostFacts, ImageDefaults, Resources, SandboxContext};
use crate::shim::client::{Attachment, ExecSession, ExecStreams};
use crate::shim::{CreateTask, ExecOutput, ShimClient, SpawnOptions, Stats, TaskStatus, cgroup_tree};
use crate::store::{Kind, Store};

/// /dev/shm of a pod, as Docker and containerd size it.
const SHM_SIZE: u64 = 64 * 1024 * 1024;
/// How long a SIGKILLed container may take to be reaped before StopContainer
/// reports failure instead of hanging kubelet.
const KILL_REAP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long port-forward waits for a connection inside the pod.
const PORT_FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CGROUP_PARENT: &str = "/berth";
/// Hex digits of the pod id naming its shim directory: 64 random bits.
const SHIM_DIR_ID_LEN: usize = 16;

#[derive(Clone)]
pub struct PodService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    images: ImageService,
    config: Config,
    shim_binary: PathBuf,
    host: HostFacts,
    cni: Mutex<Result<Arc<Cni>, String>>,
    shims: tokio::sync::Mutex<HashMap<String, Arc<ShimClient>>>,
    /// Serialises changes to one pod's or container's record: the exit watcher,
    /// stop and remove all write the same record.
    records: tokio::sync::Mutex<()>,
    events: LifecycleEvents,
    /// Pod and container names, reserved before a create does any work.
    names: NameRegistry,
}

/// Undo steps of a half-built pod or container, run in reverse when a later step
/// fails. Each step is a future that has not started yet.
struct Rollback {
    steps: Vec<(&'static str, BoxFuture<'static, ()>)>,
}

impl Rollback {
    fn new() -> Self {
        Rollback { steps: Vec::new() }
    }

    fn push(&mut self, what: &'static str, undo: impl std::future::Future<Output = ()> + Send + 'static) {
        self.steps.push((what, Box::pin(undo)));
    }

    /// Runs `build` and undoes its steps if it fails.
    async fn guard<T>(mut self, build: impl AsyncFnOnce(&mut Rollback) -> Result<T, SandboxError>) -> Result<T, SandboxError> {
        let result = build(&mut self).await;
        if result.is_err() {
            while let Some((what, undo)) = self.steps.pop() {
                tracing::debug!(step = what, "rolling back");
                undo.await;
            }
        }
        result
    }
}

fn new_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

fn nanos(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

impl PodService {
    pub async fn open(config: &Config, store: Arc<Store>, images: ImageService) -> Result<PodService, SandboxError> {
        let shim_binary = match &config.runtime.shim {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .map_err(SandboxError::io("locating berthd's own binary"))?
                .with_file_name("berth-shim"),
        };
        let pods_dir = config.state.join("pods");
        std::fs::create_dir_all(&pods_dir).map_err(SandboxError::io(format!("creating {}", pods_dir.display())))?;
        netns::prepare_dir(&pods_dir)?;
        let cni = load_cni(config);
        let service = PodService {
            inner: Arc::new(Inner {
                store,
                images,
                config: config.clone(),
                shim_binary,
                host: HostFacts::detect(),
                cni: Mutex::new(cni),
                shims: Default::default(),
                records: Default::default(),
                events: LifecycleEvents::default(),
                names: NameRegistry::default(),
            }),
        };
        for pod in service.pods()? {
            let c = &pod.config;
            service.inner.names.claim(names::pod_name(&c.name, &c.namespace, &c.uid, c.attempt), &pod.id);
        }
        for container in service.containers()? {
            service.inner.names.claim(names::container_name(&container.pod_id, &container.name, container.attempt), &container.id);
        }
        service.recover().await?;
        Ok(service)
    }

    /// Every lifecycle change of pods and containers from now on.
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<LifecycleEvent> {
        self.inner.events.subscribe()
    }

    /// Whether pods can get a network; the reason when not.
    pub fn network_status(&self) -> Result<(), String> {
        self.cni().map(|_| ())
    }

    fn cni(&self) -> Result<Arc<Cni>, String> {
        let mut cni = self.inner.cni.lock().expect("cni poisoned");
        if cni.is_err() {
            *cni = load_cni(&self.inner.config);
        }
        cni.clone()
    }

    /// The shim's own directory (socket, pid file, log). Short on purpose: a unix
    /// socket path may not exceed 107 bytes, and pod ids are 64 characters.
    fn shim_dir(&self, id: &str) -> PathBuf {
        self.inner.config.state.join("shims").join(&id[..id.len().min(SHIM_DIR_ID_LEN)])
    }

    fn pod_dir(&self, id: &str) -> PathBuf {
        self.inner.config.state.join("pods").join(id)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.inner.config.state.join("containers").join(id)
    }

    // ---- lookups -------------------------------------------------------------

    pub fn pods(&self) -> Result<Vec<PodRecord>, SandboxError> {
        Ok(self.inner.store.list::<PodRecord>(Kind::Pod)?.into_iter().map(|(_, p)| p).collect())
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>, SandboxError> {
        Ok(self.inner.store.list::<ContainerRecord>(Kind::Container)?.into_iter().map(|(_, c)| c).collect())
    }

    /// The pod `id` names: the full id or a unique prefix, as crictl accepts.
    pub fn pod(&self, id: &str) -> Result<Option<PodRecord>, SandboxError> {
        if let Some(pod) = self.inner.store.get::<PodRecord>(Kind::Pod, id)? {
            return Ok(Some(pod));
        }
        Ok(unique_prefix(self.pods()?, id, |p| &p.id))
    }

    pub fn container(&self, id: &str) -> Result<Option<ContainerRecord>, SandboxError> {
        if let Some(c) = self.inner.store.get::<ContainerRecord>(Kind::Container, id)? {
            return Ok(Some(c));
        }
        Ok(unique_prefix(self.containers()?, id, |c| &c.id))
    }

    fn require_pod(&self, id: &str) -> Result<PodRecord, SandboxError> {
        self.pod(id)?.ok_or_else(|| SandboxError::NotFound { kind: "pod sandbox", id: id.to_string() })
    }

    fn require_container(&self, id: &str) -> Result<ContainerRecord, SandboxError> {
        self.container(id)?.ok_or_else(|| SandboxError::NotFound { kind: "container", id: id.to_string() })
    }

    async fn shim(&self, pod_id: &str) -> Result<Arc<ShimClient>, SandboxError> {
        let mut shims = self.inner.shims.lock().await;
        if let Some(shim) = shims.get(pod_id) {
            return Ok(shim.clone());
        }
        let shim = Arc::new(ShimClient::connect(&self.shim_dir(pod_id)).await?);
        shims.insert(pod_id.to_string(), shim.clone());
        Ok(shim)
    }

    // ---- pods ----------------------------------------------------------------

    pub async fn run_pod(&self, config: PodConfig) -> Result<String, SandboxError> {
        validate_pod(&config)?;
        let id = new_id();
        let c = &config;
        let reservation =
            self.inner.names.reserve(names::pod_name(&c.name, &c.namespace, &c.uid, c.attempt), &id).map_err(|holder| {
                SandboxError::AlreadyExists(format!(
                    "pod sandbox {}/{} (uid {}, attempt {}) already exists as {holder}",
                    c.namespace, c.name, c.uid, c.attempt
                ))
            })?;
        let handler_name = if config.runtime_handler.is_empty() {
            self.inner.config.runtime.default_handler.clone()
        } else {
            config.runtime_handler.clone()
        };
        let handlers = self.inner.config.runtime.effective_handlers();
        let handler = handlers
            .get(&handler_name)
            .ok_or_else(|| SandboxError::invalid("runtime_handler", format!("no runtime handler named {handler_name:?}")))?
            .clone();

        let id = Rollback::new().guard(async |rollback| self.build_pod(id, config, handler_name, handler, rollback).await).await?;
        reservation.keep();
        Ok(id)
    }

    async fn build_pod(
        &self,
        id: String,
        config: PodConfig,
        handler_name: String,
        handler: crate::config::RuntimeHandler,
        rollback: &mut Rollback,
    ) -> Result<String, SandboxError> {
        let pod_dir = self.pod_dir(&id);
        std::fs::create_dir_all(&pod_dir).map_err(SandboxError::io(format!("creating {}", pod_dir.display())))?;
        {
            let dir = pod_dir.clone();
            rollback.push("pod dir", async move { drop(std::fs::remove_dir_all(dir)) });
        }
        let cgroup_parent = pod_cgroup_parent(&id, &config);
        let own_netns = config.network == NamespaceMode::Pod;
        // Before the first side effect: a berthd killed from here on leaves what
        // the next one needs to undo the rest (see `intent`).
        let netns_target = own_netns.then(|| pod_dir.join("netns"));
        intent::write(
            &pod_dir,
            &PodIntent {
                id: id.clone(),
                config: config.clone(),
                handler: handler_name.clone(),
                cgroup_parent: cgroup_parent.clone(),
                netns: netns_target.clone(),
            },
        )?;
        crash_point("intent");

        let mut netns_path = None;
        let mut cni = None;
        if let Some(path) = netns_target {
            cni = Some(self.cni().map_err(SandboxError::FailedPrecondition)?);
            // Creating a namespace parks a thread in it; keep that off the runtime's workers.
            let target = path.clone();
            tokio::task::spawn_blocking(move || netns::create(&target))
                .await
                .map_err(|e| SandboxError::FailedPrecondition(format!("network namespace task: {e}")))??;
            {
                let path = path.clone();
                rollback.push("netns", async move {
                    if let Err(e) = netns::remove(&path) {
                        tracing::warn!(error = %e, "removing network namespace");
                    }
                });
            }
            netns_path = Some(path);
            crash_point("netns");
        }

        let hostname = pod_hostname(&config);
        let io = |what: &str| SandboxError::io(format!("writing the pod's {what}"));
        files::write_hostname(&pod_dir, &hostname).map_err(io("hostname"))?;
        // The pod's address is not known until CNI answers; the pause container only
        // needs the file to exist, and the final one replaces it before any container
        // of the pod mounts it.
        files::write_hosts(&pod_dir, &hostname, None).map_err(io("hosts file"))?;
        files::write_resolv_conf(&pod_dir, config.dns.as_ref()).map_err(io("resolv.conf"))?;
        if config.ipc == NamespaceMode::Pod {
            files::mount_shm(&pod_dir, SHM_SIZE).map_err(io("/dev/shm"))?;
            let dir = pod_dir.clone();
            rollback.push("shm", async move { drop(files::unmount_shm(&dir)) });
        }

        // CNI ADD and the pause container are independent once the namespace exists,
        // and each spends most of its time waiting on other programs (the plugins,
        // runc): running them side by side takes the slower of the two off a pod's
        // start, not their sum.
        let network_setup = async {
            let began = std::time::Instant::now();
            let added = match (&cni, &netns_path) {
                (Some(cni), Some(path)) => {
                    let added = cni.add(&pod_network(&id, &config, path)).await;
                    crash_point("cni");
                    Some(added)
                }
                _ => None,
            };
            (added, began.elapsed())
        };
        let pause_setup = async {
            let began = std::time::Instant::now();
            let pause = self.start_pause(&id, &config, &handler_name, &handler, netns_path.clone(), &cgroup_parent, rollback).await;
            (pause, began.elapsed())
        };
        let ((network, network_time), (pause, pause_time)) = tokio::join!(network_setup, pause_setup);
        let network = match network {
            None => None,
            Some(added) => {
                let status = added?;
                let (cni, id, config, path, added) =
                    (cni.clone(), id.clone(), config.clone(), netns_path.clone(), status.clone());
                rollback.push("cni", async move {
                    if let (Some(cni), Some(path)) = (cni, path)
                        && let Err(e) = cni.del(&pod_network(&id, &config, &path), Some(&added)).await
                    {
                        tracing::warn!(error = %e, "CNI DEL while rolling back");
                    }
                });
                Some(status)
            }
        };
        let (shim, pid) = pause?;
        let ips: Vec<String> =
            network.as_ref().map(|status| status.ips.iter().map(|ip| ip.to_string()).collect()).unwrap_or_default();
        let primary_ip = ips.first().and_then(|ip| ip.parse().ok());
        if primary_ip.is_some() {
            files::write_hosts(&pod_dir, &hostname, primary_ip).map_err(io("hosts file"))?;
        }

        let record = PodRecord {
            id: id.clone(),
            config,
            state: PodState::Ready,
            created_at_nanos: now_nanos(),
            ips,
            network,
            netns: netns_path,
            pause_pid: Some(pid),
            cgroup_parent,
            handler: handler_name,
        };
        crash_point("record");
        self.inner.store.put(Kind::Pod, &id, &record)?;
        self.inner.shims.lock().await.insert(id.clone(), shim);
        self.inner.events.announce(&id, &id, LifecycleChange::Created, record.created_at_nanos);
        self.inner.events.announce(&id, &id, LifecycleChange::Started, now_nanos());
        tracing::info!(
            pod = %id,
            name = %record.config.name,
            namespace = %record.config.namespace,
            network_ms = network_time.as_millis() as u64,
            pause_ms = pause_time.as_millis() as u64,
            "pod sandbox running"
        );
        Ok(id)
    }

    /// Starts the pod's shim and, in it, the pause container that holds the pod's
    /// IPC/UTS/PID namespaces. Returns the shim and the pause process.
    #[allow(clippy::too_many_arguments)]
    async fn start_pause(
        &self,
        id: &str,
        config: &PodConfig,
        handler_name: &str,
        handler: &crate::config::RuntimeHandler,
        netns_path: Option<PathBuf>,
        cgroup_parent: &str,
        rollback: &mut Rollback,
    ) -> Result<(Arc<ShimClient>, u32), SandboxError> {
        let sandbox_image = self.inner.config.sandbox_image.clone();
        let image_id = match self.inner.images.status(&sandbox_image)? {
            Some(image) => image.id,
            None => self.inner.images.pull(&sandbox_image, None).await?,
        };
        let image_config = self.inner.images.image_config(&image_id)?;
        let (runtime_binary, runtime_root) = self.runtime_of(handler_name, handler)?;
        let shim = ShimClient::spawn(&SpawnOptions {
            shim_binary: self.inner.shim_binary.clone(),
            pod_id: id.to_string(),
            state_dir: self.shim_dir(id),
            runtime_binary,
            runtime_root,
        })
        .await?;
        crash_point("shim");
        let shim = Arc::new(shim);
        {
            let shim = shim.clone();
            rollback.push("shim", async move {
                if let Err(e) = shim.kill_and_shutdown().await {
                    tracing::warn!(error = %e, "stopping the shim while rolling back");
                }
            });
        }
        let context = self.sandbox_context(id, config, netns_path, None, cgroup_parent);
        let defaults = image_defaults(&image_config);
        let command: Vec<String> = defaults.entrypoint.iter().chain(defaults.cmd.iter()).cloned().collect();
        let bundle = self.prepare_bundle(id, &image_id, rollback, |rootfs| {
            oci::sandbox_spec(&context, &defaults, rootfs, &command, &self.inner.host).map_err(Into::into)
        })?;
        crash_point("rootfs");
        let pid = shim.create(CreateTask { id: id.to_string(), bundle, terminal: false, stdin: false, log_path: None }).await?;
        crash_point("pause-created");
        shim.start(id).await?;
        crash_point("pause-started");
        Ok((shim, pid))
    }

    /// The OCI runtime binary of a runtime handler and its state root (`--root`).
    fn runtime_of(&self, handler_name: &str, handler: &crate::config::RuntimeHandler) -> Result<(PathBuf, PathBuf), SandboxError> {
        let binary = find_in_path(&handler.path).ok_or_else(|| {
            SandboxError::FailedPrecondition(format!("runtime handler {handler_name:?}: {} not found", handler.path.display()))
        })?;
        let root = handler.root.clone().unwrap_or_else(|| self.inner.config.state.join("runtime").join(handler_name));
        Ok((binary, root))
    }

    /// Removes container `id` from the state root of the pod's OCI runtime, for
    /// when the shim that would have done so is gone.
    async fn delete_runtime_state(&self, handler_name: &str, id: &str) -> Result<(), SandboxError> {
        let handlers = self.inner.config.runtime.effective_handlers();
        let Some(handler) = handlers.get(handler_name) else {
            tracing::warn!(container = id, handler = handler_name, "no such runtime handler any more; its state stays");
            return Ok(());
        };
        let (binary, root) = self.runtime_of(handler_name, handler)?;
        crate::shim::runtime::force_delete(&binary, &root, id)
            .await
            .map_err(|e| SandboxError::FailedPrecondition(format!("removing {id} from {}: {e}", root.display())))?;
        tracing::info!(container = id, root = %root.display(), "removed the runtime state the gone shim left");
        Ok(())
    }

    /// Deletes container `id` through the pod's shim; when the shim is gone, from
    /// the runtime's state root directly.
    async fn delete_task(&self, pod_id: &str, handler_name: &str, id: &str) -> Result<(), SandboxError> {
        let deleted = match self.shim(pod_id).await {
            Ok(shim) => match shim.delete(id).await {
                Err(crate::shim::ShimError::Gone(_)) => false,
                Err(e) => {
                    tracing::debug!(container = id, error = %e, "task delete");
                    true
                }
                Ok(_) => true,
            },
            Err(_) => false,
        };
        if !deleted {
            self.delete_runtime_state(handler_name, id).await?;
        }
        Ok(())
    }

    /// The runtime handler a pod was made with (the default one if the pod is gone).
    fn handler_of(&self, pod_id: &str) -> String {
        match self.pod(pod_id) {
            Ok(Some(pod)) => pod.handler,
            _ => self.inner.config.runtime.default_handler.clone(),
        }
    }

    /// Mounts the overlay root filesystem of `owner` over `image_id` and writes the
    /// bundle's config.json from `spec`. Returns the bundle directory.
    fn prepare_bundle(
        &self,
        owner: &str,
        image_id: &str,
        rollback: &mut Rollback,
        spec: impl FnOnce(&Path) -> Result<oci_spec::runtime::Spec, SandboxError>,
    ) -> Result<PathBuf, SandboxError> {
        let dir = self.container_dir(owner);
        let bundle = dir.join("bundle");
        let rootfs_dir = bundle.join("rootfs");
        crate::store::layout::private_dir(&bundle).map_err(SandboxError::io(format!("creating {}", bundle.display())))?;
        std::fs::create_dir_all(&rootfs_dir).map_err(SandboxError::io(format!("creating {}", rootfs_dir.display())))?;
        {
            let dir = dir.clone();
            rollback.push("bundle dir", async move { drop(std::fs::remove_dir_all(dir)) });
        }
        let layers = self.inner.images.prepare_rootfs(owner, image_id)?;
        {
            let (images, owner) = (self.inner.images.clone(), owner.to_string());
            rollback.push("rootfs layers", async move {
                if let Err(e) = images.release_rootfs(&owner) {
                    tracing::warn!(error = %e, "releasing a container's layers while rolling back");
                }
            });
        }
        rootfs::mount(&layers, &rootfs_dir)?;
        {
            let rootfs_dir = rootfs_dir.clone();
            rollback.push("rootfs mount", async move { drop(rootfs::unmount(&rootfs_dir)) });
        }
        let spec = spec(&rootfs_dir)?;
        let json = serde_json::to_vec_pretty(&spec).map_err(|e| SandboxError::invalid("spec", e.to_string()))?;
        write_atomic(&bundle.join("config.json"), &json)?;
        Ok(bundle)
    }

    pub async fn stop_pod(&self, id: &str) -> Result<(), SandboxError> {
        let Some(mut pod) = self.pod(id)? else {
            // Idempotent, as kubelet retries stops of pods it already cleaned up.
            return Ok(());
        };
        for container in self.containers()?.into_iter().filter(|c| c.pod_id == pod.id) {
            if matches!(container.state, ContainerState::Running | ContainerState::Created) {
                self.stop_container_inner(&container.id, Some(Duration::ZERO)).await?;
            }
        }
        let shim_state = match self.shim(&pod.id).await {
            Ok(shim) => shim.state(&pod.id).await.map(|state| (shim, state)).map_err(SandboxError::from),
            Err(e) => Err(e),
        };
        match shim_state {
            Ok((shim, state)) => {
                if state.status != TaskStatus::Stopped {
                    shim.kill(&pod.id, libc::SIGKILL as u32, true).await?;
                    let _ = tokio::time::timeout(KILL_REAP_TIMEOUT, shim.wait(&pod.id)).await;
                }
            }
            Err(e) => {
                // Nobody supervises the pod's processes any more: end them directly.
                self.inner.shims.lock().await.remove(&pod.id);
                let cgroup = pod.cgroup_parent.clone();
                let killed = tokio::task::spawn_blocking(move || cgroup_tree::kill_all(&cgroup))
                    .await
                    .map_err(|e| SandboxError::FailedPrecondition(format!("cgroup task: {e}")))?
                    .map_err(SandboxError::io(format!("killing the processes of cgroup {}", pod.cgroup_parent)))?;
                tracing::warn!(pod = %pod.id, killed, error = %e, "pod's shim is gone; killed its processes through the cgroup");
            }
        }
        let pod_dir = self.pod_dir(&pod.id);
        if let Some(netns_path) = &pod.netns {
            if let Ok(cni) = self.cni() {
                cni.del(&pod_network(&pod.id, &pod.config, netns_path), pod.network.as_ref()).await?;
            }
            netns::remove(netns_path)?;
        }
        files::unmount_shm(&pod_dir).map_err(SandboxError::io("unmounting the pod's /dev/shm"))?;
        if pod.state != PodState::NotReady {
            pod.state = PodState::NotReady;
            self.inner.store.put(Kind::Pod, &pod.id, &pod)?;
            self.inner.events.announce(&pod.id, &pod.id, LifecycleChange::Stopped, now_nanos());
            tracing::info!(pod = %pod.id, "pod sandbox stopped");
        }
        Ok(())
    }

    pub async fn remove_pod(&self, id: &str) -> Result<(), SandboxError> {
        let Some(pod) = self.pod(id)? else { return Ok(()) };
        self.stop_pod(&pod.id).await?;
        for container in self.containers()?.into_iter().filter(|c| c.pod_id == pod.id) {
            self.remove_container(&container.id).await?;
        }
        self.delete_task(&pod.id, &pod.handler, &pod.id).await?;
        if let Ok(shim) = self.shim(&pod.id).await
            && let Err(e) = shim.kill_and_shutdown().await
        {
            tracing::warn!(pod = %pod.id, error = %e, "shim shutdown");
        }
        self.inner.shims.lock().await.remove(&pod.id);
        self.remove_bundle(&pod.id)?;
        // runc removes the containers' cgroups; the pod's own level is berth's,
        // unless kubelet gave the parent (then kubelet owns it).
        if pod.config.cgroup_parent.is_empty() {
            let cgroup = pod.cgroup_parent.clone();
            tokio::task::spawn_blocking(move || cgroup_tree::remove(&cgroup))
                .await
                .map_err(|e| SandboxError::FailedPrecondition(format!("cgroup task: {e}")))?
                .map_err(SandboxError::io(format!("removing cgroup {}", pod.cgroup_parent)))?;
        }
        for dir in [self.pod_dir(&pod.id), self.shim_dir(&pod.id)] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(SandboxError::io(format!("removing {}", dir.display())))?;
            }
        }
        self.inner.store.delete(Kind::Pod, &pod.id)?;
        let c = &pod.config;
        self.inner.names.release(&names::pod_name(&c.name, &c.namespace, &c.uid, c.attempt));
        self.inner.events.announce(&pod.id, &pod.id, LifecycleChange::Deleted, now_nanos());
        tracing::info!(pod = %pod.id, "pod sandbox removed");
        Ok(())
    }

    fn remove_bundle(&self, owner: &str) -> Result<(), SandboxError> {
        let dir = self.container_dir(owner);
        rootfs::unmount(&dir.join("bundle").join("rootfs"))?;
        self.inner.images.release_rootfs(owner)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(SandboxError::io(format!("removing {}", dir.display())))?;
        }
        Ok(())
    }

    // ---- containers ----------------------------------------------------------

    pub async fn create_container(
        &self,
        pod_id: &str,
        name: String,
        attempt: u32,
        image: String,
        log_path: Option<PathBuf>,
        spec: ContainerSpec,
    ) -> Result<String, SandboxError> {
        let pod = self.require_pod(pod_id)?;
        if pod.state != PodState::Ready {
            return Err(SandboxError::FailedPrecondition(format!("pod sandbox {} is not ready", pod.id)));
        }
        if name.is_empty() {
            return Err(SandboxError::invalid("config.metadata.name", "must not be empty"));
        }
        let id = new_id();
        let reservation = self.inner.names.reserve(names::container_name(&pod.id, &name, attempt), &id).map_err(|holder| {
            SandboxError::AlreadyExists(format!("container {name} (attempt {attempt}) already exists in pod {} as {holder}", pod.id))
        })?;
        let image_summary = self
            .inner
            .images
            .status(&image)?
            .ok_or_else(|| SandboxError::NotFound { kind: "image", id: image.clone() })?;
        let image_config = self.inner.images.image_config(&image_summary.id)?;
        let log_path = match (&pod.config.log_directory, log_path) {
            (Some(dir), Some(path)) if !path.as_os_str().is_empty() => Some(contained_log_path(dir, &path)?),
            _ => None,
        };

        let id = Rollback::new()
            .guard(async |rollback| {
                self.build_container(id, pod, name, attempt, image, image_summary.id, image_config, log_path, spec, rollback)
                    .await
            })
            .await?;
        reservation.keep();
        Ok(id)
    }

    #[allow(clippy::too_many_arguments)]
    async fn build_container(
        &self,
        id: String,
        pod: PodRecord,
        name: String,
        attempt: u32,
        image: String,
        image_id: String,
        image_config: ImageConfig,
        log_path: Option<PathBuf>,
        spec: ContainerSpec,
        rollback: &mut Rollback,
    ) -> Result<String, SandboxError> {
        let defaults = image_defaults(&image_config);
        let context = self.sandbox_context(&pod.id, &pod.config, pod.netns.clone(), pod.pause_pid, &pod.cgroup_parent);
        let host = self.inner.host.clone();
        let mut user = None;
        let bundle = self.prepare_bundle(&id, &image_id, rollback, |rootfs| {
            let oci_spec = oci::container_spec(&id, &context, &spec, &defaults, rootfs, &host)?;
            user = oci_spec.process().as_ref().map(|process| ProcessUser {
                uid: process.user().uid(),
                gid: process.user().gid(),
                supplemental_gids: process.user().additional_gids().clone().unwrap_or_default(),
            });
            Ok(oci_spec)
        })?;
        if let Some(parent) = log_path.as_ref().and_then(|p| p.parent()) {
            std::fs::create_dir_all(parent).map_err(SandboxError::io(format!("creating {}", parent.display())))?;
        }
        let shim = self.shim(&pod.id).await?;
        let pid = shim
            .create(CreateTask {
                id: id.clone(),
                bundle,
                terminal: spec.tty,
                stdin: spec.stdin,
                log_path: log_path.clone(),
            })
            .await?;
        {
            let (shim, id) = (shim.clone(), id.clone());
            rollback.push("task", async move { drop(shim.delete(&id).await) });
        }
        let record = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            name,
            attempt,
            image,
            image_id,
            spec,
            log_path,
            state: ContainerState::Created,
            created_at_nanos: now_nanos(),
            started_at_nanos: 0,
            finished_at_nanos: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: Some(pid),
            stop_signal: image_config.config.as_ref().and_then(|c| c.stop_signal.clone()),
            user,
        };
        self.inner.store.put(Kind::Container, &id, &record)?;
        self.inner.events.announce(&id, &pod.id, LifecycleChange::Created, record.created_at_nanos);
        tracing::info!(container = %id, pod = %pod.id, name = %record.name, "container created");
        Ok(id)
    }

    /// What the pod gives its containers (and its pause container, which has no
    /// pause pid to join yet).
    fn sandbox_context(
        &self,
        id: &str,
        config: &PodConfig,
        netns_path: Option<PathBuf>,
        pause_pid: Option<u32>,
        cgroup_parent: &str,
    ) -> SandboxContext {
        let dir = self.pod_dir(id);
        SandboxContext {
            sandbox_id: id.to_string(),
            pod_name: config.name.clone(),
            pod_namespace: config.namespace.clone(),
            pod_uid: config.uid.clone(),
            netns_path,
            host_pid: config.pid == NamespaceMode::Node,
            host_ipc: config.ipc == NamespaceMode::Node,
            pause_pid,
            hostname: pod_hostname(config),
            hostname_path: dir.join("hostname"),
            hosts_path: dir.join("hosts"),
            resolv_conf_path: dir.join("resolv.conf"),
            shm_path: (config.ipc == NamespaceMode::Pod).then(|| dir.join("shm")),
            cgroup_parent: cgroup_parent.to_string(),
            sysctls: config.sysctls.clone(),
            privileged: config.privileged,
            run_as_user: config.run_as_user,
            run_as_group: config.run_as_group,
            seccomp: config.seccomp.clone(),
            pod_annotations: config.annotations.clone(),
        }
    }

    pub async fn start_container(&self, id: &str) -> Result<(), SandboxError> {
        let container = self.require_container(id)?;
        if container.state != ContainerState::Created {
            return Err(SandboxError::FailedPrecondition(format!(
                "container {} is {:?}, not Created",
                container.id, container.state
            )));
        }
        let shim = self.shim(&container.pod_id).await?;
        let pid = shim.start(&container.id).await?;
        {
            let _guard = self.inner.records.lock().await;
            let mut record = self.require_container(&container.id)?;
            record.state = ContainerState::Running;
            record.started_at_nanos = now_nanos();
            record.pid = Some(pid);
            self.inner.store.put(Kind::Container, &record.id, &record)?;
            self.inner.events.announce(&record.id, &record.pod_id, LifecycleChange::Started, record.started_at_nanos);
        }
        self.watch_exit(container.pod_id.clone(), container.id.clone());
        tracing::info!(container = %container.id, pid, "container started");
        Ok(())
    }

    /// Records the container's exit when its process ends, whenever that is.
    fn watch_exit(&self, pod_id: String, id: String) {
        let service = self.clone();
        tokio::spawn(async move {
            let exit = match service.shim(&pod_id).await {
                Ok(shim) => shim.wait(&id).await,
                Err(e) => Err(match e {
                    SandboxError::Shim(e) => e,
                    other => {
                        tracing::warn!(container = %id, error = %other, "cannot watch container");
                        return;
                    }
                }),
            };
            if let Err(e) = service.record_exit(&id, exit).await {
                tracing::warn!(container = %id, error = %e, "recording container exit");
            }
        });
    }

    async fn record_exit(&self, id: &str, exit: Result<crate::shim::Exit, crate::shim::ShimError>) -> Result<(), SandboxError> {
        let _guard = self.inner.records.lock().await;
        let Some(mut record) = self.inner.store.get::<ContainerRecord>(Kind::Container, id)? else { return Ok(()) };
        if record.state == ContainerState::Exited {
            return Ok(());
        }
        match exit {
            Ok(exit) => {
                record.state = ContainerState::Exited;
                record.exit_code = exit.code;
                record.finished_at_nanos = nanos(exit.exited_at);
                record.reason = if exit.oom_killed {
                    "OOMKilled"
                } else if exit.code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .to_string();
                tracing::info!(container = %id, code = exit.code, reason = %record.reason, "container exited");
            }
            Err(e) => {
                // The shim is gone: nobody can say how the container ended.
                record.state = ContainerState::Unknown;
                record.reason = "Unknown".into();
                record.message = format!("lost contact with the pod's shim: {e}");
                record.finished_at_nanos = now_nanos();
                tracing::warn!(container = %id, error = %e, "container state unknown");
            }
        }
        self.inner.store.put(Kind::Container, id, &record)?;
        self.inner.events.announce(id, &record.pod_id, LifecycleChange::Stopped, record.finished_at_nanos);
        Ok(())
    }

    /// Sends the stop signal, waits `timeout` (0: the configured grace period),
    /// then SIGKILLs every process of the container.
    pub async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), SandboxError> {
        let timeout = if timeout.is_zero() {
            Duration::from_secs(self.inner.config.runtime.stop_grace_period)
        } else {
            timeout
        };
        self.stop_container_inner(id, Some(timeout)).await
    }

    async fn stop_container_inner(&self, id: &str, timeout: Option<Duration>) -> Result<(), SandboxError> {
        let container = self.require_container(id)?;
        let shim = self.shim(&container.pod_id).await?;
        match container.state {
            ContainerState::Exited | ContainerState::Unknown => return Ok(()),
            ContainerState::Created => {
                // Never started: nothing to signal; it simply ends.
                self.record_exit(&container.id, Ok(crate::shim::Exit { code: 0, exited_at: std::time::SystemTime::now(), oom_killed: false }))
                    .await?;
                return Ok(());
            }
            ContainerState::Running => {}
        }
        let grace = timeout.unwrap_or_default();
        if !grace.is_zero() {
            let signal = container.stop_signal.as_deref().map(parse_signal).transpose()?.unwrap_or(libc::SIGTERM);
            tracing::info!(container = %container.id, signal, grace_s = grace.as_secs(), "stopping container");
            shim.kill(&container.id, signal as u32, false).await?;
            if let Ok(exit) = tokio::time::timeout(grace, shim.wait(&container.id)).await {
                return self.record_exit(&container.id, exit).await;
            }
            tracing::info!(container = %container.id, "grace period over, sending SIGKILL");
        }
        shim.kill(&container.id, libc::SIGKILL as u32, true).await?;
        match tokio::time::timeout(KILL_REAP_TIMEOUT, shim.wait(&container.id)).await {
            Ok(exit) => self.record_exit(&container.id, exit).await,
            Err(_) => Err(SandboxError::DeadlineExceeded(format!(
                "container {} did not exit within {}s of SIGKILL",
                container.id,
                KILL_REAP_TIMEOUT.as_secs()
            ))),
        }
    }

    pub async fn remove_container(&self, id: &str) -> Result<(), SandboxError> {
        let Some(container) = self.container(id)? else { return Ok(()) };
        if container.state == ContainerState::Running {
            self.stop_container_inner(&container.id, None).await?;
        }
        self.delete_task(&container.pod_id, &self.handler_of(&container.pod_id), &container.id).await?;
        self.remove_bundle(&container.id)?;
        if let Some(log) = &container.log_path {
            let _ = std::fs::remove_file(log);
        }
        self.inner.store.delete(Kind::Container, &container.id)?;
        self.inner.names.release(&names::container_name(&container.pod_id, &container.name, container.attempt));
        self.inner.events.announce(&container.id, &container.pod_id, LifecycleChange::Deleted, now_nanos());
        tracing::info!(container = %container.id, "container removed");
        Ok(())
    }

    pub async fn exec_sync(&self, id: &str, cmd: &[String], timeout: Option<Duration>) -> Result<ExecOutput, SandboxError> {
        let container = self.require_container(id)?;
        if container.state != ContainerState::Running {
            return Err(SandboxError::FailedPrecondition(format!("container {} is not running", container.id)));
        }
        if cmd.is_empty() {
            return Err(SandboxError::invalid("cmd", "must not be empty"));
        }
        let spec = self.read_spec(&container.id)?;
        let process = oci::exec_process(&spec, cmd, false)?;
        let shim = self.shim(&container.pod_id).await?;
        Ok(shim.exec_sync(&container.id, &process, timeout).await?)
    }

    /// The container an interactive exec or attach would reach, if it runs.
    pub fn running_container(&self, id: &str) -> Result<ContainerRecord, SandboxError> {
        let container = self.require_container(id)?;
        if container.state != ContainerState::Running {
            return Err(SandboxError::FailedPrecondition(format!("container {} is not running", container.id)));
        }
        Ok(container)
    }

    /// Starts `cmd` in a running container with the given streams connected;
    /// `tty` gives it a terminal (stdout then carries both output streams).
    pub async fn exec(&self, id: &str, cmd: &[String], tty: bool, streams: ExecStreams) -> Result<ExecSession, SandboxError> {
        let container = self.running_container(id)?;
        if cmd.is_empty() {
            return Err(SandboxError::invalid("cmd", "must not be empty"));
        }
        let spec = self.read_spec(&container.id)?;
        let process = oci::exec_process(&spec, cmd, tty)?;
        let shim = self.shim(&container.pod_id).await?;
        Ok(shim.exec(&container.id, &process, streams).await?)
    }

    /// Attaches to a running container's own process; `streams.stdin` needs a
    /// container created with `stdin`, and a terminal has no stderr of its own.
    pub async fn attach(&self, id: &str, streams: ExecStreams) -> Result<(ContainerRecord, Attachment), SandboxError> {
        let container = self.running_container(id)?;
        if streams.stdin && !container.spec.stdin {
            return Err(SandboxError::invalid("stdin", format!("container {} was not created with stdin", container.id)));
        }
        let streams = ExecStreams { stderr: streams.stderr && !container.spec.tty, ..streams };
        let shim = self.shim(&container.pod_id).await?;
        let attachment = shim.attach(&container.id, streams).await?;
        Ok((container, attachment))
    }

    /// Connects to `127.0.0.1:port` as seen from inside a ready pod's network.
    pub async fn port_forward(&self, pod_id: &str, port: u16) -> Result<tokio::net::TcpStream, SandboxError> {
        let pod = self.require_pod(pod_id)?;
        if pod.state != PodState::Ready {
            return Err(SandboxError::FailedPrecondition(format!("pod sandbox {} is not ready", pod.id)));
        }
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let context = format!("pod sandbox {}: connecting to {target}", pod.id);
        let stream = match pod.netns.clone() {
            // The socket belongs to the namespace it was created in; connecting on
            // a blocking thread keeps the namespace switch off the runtime's threads.
            Some(path) => tokio::task::spawn_blocking(move || {
                netns::run_in(&path, || std::net::TcpStream::connect_timeout(&target, PORT_FORWARD_CONNECT_TIMEOUT))
            })
            .await
            .map_err(|error| SandboxError::io(context.clone())(std::io::Error::other(error)))??
            .map_err(SandboxError::io(context.clone()))?,
            None => return tokio::net::TcpStream::connect(target).await.map_err(SandboxError::io(context)),
        };
        stream.set_nonblocking(true).map_err(SandboxError::io(context.clone()))?;
        tokio::net::TcpStream::from_std(stream).map_err(SandboxError::io(context))
    }

    pub async fn update_resources(&self, id: &str, resources: Resources) -> Result<(), SandboxError> {
        let container = self.require_container(id)?;
        let linux = oci::linux_resources(&resources, &self.inner.host)?;
        let shim = self.shim(&container.pod_id).await?;
        shim.update(&container.id, &linux).await?;
        let _guard = self.inner.records.lock().await;
        let mut record = self.require_container(&container.id)?;
        record.spec.resources = resources;
        self.inner.store.put(Kind::Container, &record.id, &record)?;
        Ok(())
    }

    pub async fn container_stats(&self, id: &str) -> Result<(ContainerRecord, Option<Stats>, (u64, u64)), SandboxError> {
        let container = self.require_container(id)?;
        let stats = match container.state {
            ContainerState::Running => Some(self.shim(&container.pod_id).await?.stats(&container.id).await?),
            _ => None,
        };
        let writable = self.inner.images.writable_usage(&container.id)?;
        Ok((container, stats, writable))
    }

    pub async fn pod_stats(&self, id: &str) -> Result<(PodRecord, Option<Stats>), SandboxError> {
        let pod = self.require_pod(id)?;
        let stats = match pod.state {
            PodState::Ready => Some(self.shim(&pod.id).await?.stats(&pod.id).await?),
            PodState::NotReady => None,
        };
        Ok((pod, stats))
    }

    /// Reopens a container's log after kubelet rotated it.
    pub async fn reopen_log(&self, id: &str) -> Result<(), SandboxError> {
        let container = self.require_container(id)?;
        if container.state != ContainerState::Running {
            return Err(SandboxError::FailedPrecondition(format!("container {} is not running", container.id)));
        }
        let shim = self.shim(&container.pod_id).await?;
        Ok(shim.reopen_log(&container.id).await?)
    }

    fn read_spec(&self, id: &str) -> Result<oci_spec::runtime::Spec, SandboxError> {
        let path = self.container_dir(id).join("bundle").join("config.json");
        let bytes = std::fs::read(&path).map_err(SandboxError::io(format!("reading {}", path.display())))?;
        serde_json::from_slice(&bytes).map_err(|e| SandboxError::invalid("config.json", e.to_string()))
    }

    // ---- restart -------------------------------------------------------------

    /// After a berthd restart: reconnect to every live pod's shim, learn how the
    /// containers fared meanwhile, watch the running ones again, and stop shims
    /// whose pods no record names.
    async fn recover(&self) -> Result<(), SandboxError> {
        let pods = self.pods()?;
        for pod in &pods {
            if pod.state != PodState::Ready {
                continue;
            }
            if let Err(e) = self.shim(&pod.id).await {
                tracing::warn!(pod = %pod.id, error = %e, "pod's shim is gone; marking the pod not ready");
                let mut pod = pod.clone();
                pod.state = PodState::NotReady;
                self.inner.store.put(Kind::Pod, &pod.id, &pod)?;
            }
        }
        for container in self.containers()? {
            if container.state != ContainerState::Running {
                continue;
            }
            match self.shim(&container.pod_id).await {
                Ok(shim) => match shim.state(&container.id).await {
                    Ok(state) if state.status == TaskStatus::Stopped => {
                        let exit = state.exit.ok_or_else(|| crate::shim::ShimError::Gone("no exit status".into()));
                        self.record_exit(&container.id, exit).await?;
                    }
                    Ok(_) => self.watch_exit(container.pod_id.clone(), container.id.clone()),
                    Err(e) => self.record_exit(&container.id, Err(e)).await?,
                },
                Err(SandboxError::Shim(e)) => self.record_exit(&container.id, Err(e)).await?,
                Err(e) => return Err(e),
            }
        }
        let shims_dir = self.inner.config.state.join("shims");
        for entry in std::fs::read_dir(&shims_dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if pods.iter().any(|p| self.shim_dir(&p.id) == entry.path()) {
                continue;
            }
            tracing::info!(shim = %name, "stopping a shim whose pod was removed");
            if let Ok(shim) = ShimClient::connect(&entry.path()).await {
                let _ = shim.kill_and_shutdown().await;
            }
            let _ = std::fs::remove_dir_all(entry.path());
        }
        let pods_dir = self.inner.config.state.join("pods");
        for entry in std::fs::read_dir(&pods_dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if pods.iter().any(|p| p.id == name) {
                continue;
            }
            tracing::info!(pod = %name, "removing what a removed or half-made pod left");
            self.undo_half_made_pod(&name, &entry.path()).await;
        }
        self.sweep_unknown_bundles(&pods).await?;
        Ok(())
    }

    /// Undoes what a RunPodSandbox that never finished (berthd died in it) or a
    /// RemovePodSandbox cut short made: its address (CNI DEL), the pause container
    /// in the runtime's root, the pod's cgroups, its rootfs and bundle, network
    /// namespace and /dev/shm. What was made is found by the pod's id, which names
    /// every one of these, and by the intent file written before the first of them.
    async fn undo_half_made_pod(&self, id: &str, dir: &Path) {
        let intent = intent::read(dir);
        if let Some(intent) = &intent
            && let Some(netns_path) = &intent.netns
            && let Ok(cni) = self.cni()
            && let Err(error) = cni.del(&pod_network(id, &intent.config, netns_path), None).await
        {
            tracing::warn!(pod = id, %error, "CNI DEL of a half-made pod");
        }
        let handler = intent.as_ref().map_or_else(|| self.inner.config.runtime.default_handler.clone(), |i| i.handler.clone());
        if let Err(error) = self.delete_runtime_state(&handler, id).await {
            tracing::warn!(pod = id, %error, "removing a half-made pod's pause container");
        }
        // Of a parent kubelet named, only the pause container's level is berth's.
        let cgroup = match &intent {
            Some(intent) if !intent.config.cgroup_parent.is_empty() => {
                format!("{}/{}", intent.cgroup_parent.trim_end_matches('/'), oci::SANDBOX_CGROUP_LEAF)
            }
            _ => format!("{DEFAULT_CGROUP_PARENT}/{id}"),
        };
        match tokio::task::spawn_blocking(move || cgroup_tree::remove(&cgroup).map_err(|e| (cgroup, e))).await {
            Ok(Err((cgroup, error))) => tracing::warn!(pod = id, %cgroup, %error, "removing a half-made pod's cgroups"),
            Err(error) => tracing::warn!(pod = id, %error, "cgroup task"),
            Ok(Ok(())) => {}
        }
        if let Err(error) = self.remove_bundle(id) {
            tracing::warn!(pod = id, %error, "removing a half-made pod's rootfs");
        }
        let _ = netns::remove(&dir.join("netns"));
        let _ = files::unmount_shm(dir);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Bundles (mounted rootfs, layer lease) of containers no record names: a
    /// CreateContainer cut short by a crash. A shim that holds such a container
    /// gets it killed and deleted first.
    async fn sweep_unknown_bundles(&self, pods: &[PodRecord]) -> Result<(), SandboxError> {
        let containers = self.containers()?;
        let dir = self.inner.config.state.join("containers");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().to_string();
            if pods.iter().any(|p| p.id == id) || containers.iter().any(|c| c.id == id) {
                continue;
            }
            tracing::info!(container = %id, "removing the bundle of a container no record names");
            for pod in pods.iter().filter(|p| p.state == PodState::Ready) {
                let Ok(shim) = self.shim(&pod.id).await else { continue };
                if shim.state(&id).await.is_err() {
                    continue;
                }
                let _ = shim.kill(&id, libc::SIGKILL as u32, true).await;
                let _ = tokio::time::timeout(KILL_REAP_TIMEOUT, shim.wait(&id)).await;
                if let Err(error) = shim.delete(&id).await {
                    tracing::warn!(container = %id, %error, "deleting a container no record names");
                }
            }
            if let Err(error) = self.remove_bundle(&id) {
                tracing::warn!(container = %id, %error, "removing the bundle of a container no record names");
            }
        }
        Ok(())
    }
}

fn load_cni(config: &Config) -> Result<Arc<Cni>, String> {
    Cni::load(&config.cni).map(Arc::new).map_err(|e| e.to_string())
}

fn unique_prefix<T>(items: Vec<T>, prefix: &str, id: impl Fn(&T) -> &String) -> Option<T> {
    if prefix.is_empty() {
        return None;
    }
    let mut matches = items.into_iter().filter(|i| id(i).starts_with(prefix));
    match (matches.next(), matches.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

/// The pod's cgroup parent: kubelet's, else berth's own `/berth/<id>`.
fn pod_cgroup_parent(id: &str, config: &PodConfig) -> String {
    if config.cgroup_parent.is_empty() { format!("{DEFAULT_CGROUP_PARENT}/{id}") } else { config.cgroup_parent.clone() }
}

fn pod_network<'a>(id: &'a str, config: &'a PodConfig, netns: &'a Path) -> PodNetwork<'a> {
    PodNetwork {
        id,
        name: &config.name,
        namespace: &config.namespace,
        uid: &config.uid,
        netns,
        port_mappings: &config.port_mappings,
    }
}

/// The pod's hostname: as configured, else the node's, as containerd and CRI-O give it
/// (a pod's name may be longer than the 64 bytes a hostname may have).
fn pod_hostname(config: &PodConfig) -> String {
    if !config.hostname.is_empty() {
        return config.hostname.clone();
    }
    match std::fs::read_to_string("/proc/sys/kernel/hostname") {
        Ok(node_hostname) => node_hostname.trim_end().to_string(),
        Err(error) => {
            tracing::warn!(%error, "reading the node's hostname; the pod gets \"localhost\"");
            "localhost".to_string()
        }
    }
}

fn validate_pod(config: &PodConfig) -> Result<(), SandboxError> {
    for (field, value) in [("config.metadata.name", &config.name), ("config.metadata.namespace", &config.namespace)] {
        if value.is_empty() {
            return Err(SandboxError::invalid(field, "must not be empty"));
        }
    }
    Ok(())
}

fn image_defaults(config: &ImageConfig) -> ImageDefaults {
    let c = config.config.clone().unwrap_or_default();
    ImageDefaults {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env,
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
        stop_signal: c.stop_signal,
    }
}

/// `path` below the pod's log directory. CRI's `log_path` is relative to it; an
/// absolute one would replace the directory (`Path::join`) and `..` would climb
/// out, letting a container's log be written anywhere on the node: both are refused.
fn contained_log_path(dir: &Path, path: &Path) -> Result<PathBuf, SandboxError> {
    use std::path::Component;
    let refuse = |reason: &str| SandboxError::invalid("config.log_path", format!("{}: {reason}", path.display()));
    let mut below = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => below.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !below.pop() {
                    return Err(refuse("climbs out of the pod's log_directory"));
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(refuse("must be relative to the pod's log_directory")),
        }
    }
    if below.as_os_str().is_empty() {
        return Err(refuse("names the log_directory itself, not a file in it"));
    }
    Ok(dir.join(below))
}

/// A bare program name is looked up in `PATH`, as a shell would; a path is kept.
pub(crate) fn find_in_path(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return Some(program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

/// `SIGTERM`, `TERM` or `15`, as Docker's STOPSIGNAL accepts.
fn parse_signal(name: &str) -> Result<i32, SandboxError> {
    if let Ok(n) = name.parse::<i32>() {
        return Ok(n);
    }
    let bare = name.trim_start_matches("SIG");
    let signal = match bare {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "WINCH" => libc::SIGWINCH,
        "STOP" => libc::SIGSTOP,
        "PWR" => libc::SIGPWR,
        _ => return Err(SandboxError::invalid("image STOPSIGNAL", format!("unknown signal {name:?}"))),
    };
    Ok(signal)
}

/// Writes a file that must never be seen half-written (see [`crate::durable`]).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SandboxError> {
    // 0600: a spec holds the container's environment (see store::layout).
    crate::durable::write_file(path, bytes, 0o600).map_err(SandboxError::io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse_as_docker_accepts_them() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("QUIT").unwrap(), libc::SIGQUIT);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("SIGNOPE").is_err());
    }

    #[test]
    fn log_paths_stay_below_the_log_directory() {
        let dir = Path::new("/var/log/pods/p");
        assert_eq!(contained_log_path(dir, Path::new("app/0.log")).unwrap(), dir.join("app/0.log"));
        assert_eq!(contained_log_path(dir, Path::new("./a/../b.log")).unwrap(), dir.join("b.log"));
        for bad in ["/etc/passwd", "../../x", "a/../../x", ".", "a/.."] {
            let error = contained_log_path(dir, Path::new(bad)).expect_err(bad);
            assert!(matches!(&error, SandboxError::InvalidArgument { field, .. } if field == "config.log_path"), "{bad}: {error}");
        }
    }

    #[test]
    fn prefixes_must_be_unique() {
        let ids = vec!["abc1".to_string(), "abd2".to_string()];
        assert_eq!(unique_prefix(ids.clone(), "abc", |s| s), Some("abc1".to_string()));
        assert_eq!(unique_prefix(ids.clone(), "ab", |s| s), None);
        assert_eq!(unique_prefix(ids, "", |s| s), None);
    }
}
