//! RUN steps as containers: one `berth-shim` per build (the same shim, Task API
//! and runc that run pods), one short-lived container per RUN on an overlay of
//! the step's parent layers under a fresh writable snapshot. The caller turns
//! that snapshot's upper dir into a layer, then releases the step.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Mount as OciMount, Spec};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::images::ImageService;
use crate::oci::{self, ContainerSpec, HostFacts, ImageDefaults, NamespaceMode, PidNamespace, SandboxContext, Seccomp};
use crate::sandbox::{files, netns, rootfs};
use crate::shim::{CreateTask, ShimClient, SpawnOptions, cgroup_tree};
use crate::store::Store;

use super::BuildError;

/// How often the step's log is read for new output while it runs.
const OUTPUT_POLL: Duration = Duration::from_millis(50);
/// The cgroup of a build's steps, followed by the build id.
const BUILD_CGROUP_PREFIX: &str = "/berth/build-";
/// Owners of build steps' leases on layers, followed by `<build id>:<step>`.
const LEASE_PREFIX: &str = "build:";
/// A RUN's private /dev/shm, as Docker sizes it.
const SHM_OPTIONS: &str = "size=65536k";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StepNetwork {
    #[default]
    Host,
    /// A namespace of the build's own with only loopback.
    None,
}

/// Which stream a piece of a RUN's output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// The process of one RUN.
#[derive(Debug, Clone, Default)]
pub struct RunProcess {
    pub args: Vec<String>,
    /// `KEY=value` entries: the stage's ENV plus the build args in scope.
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub network: StepNetwork,
    pub mounts: Vec<StepMount>,
}

/// What `RUN --mount` puts into a step's container; targets are absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepMount {
    /// A host directory or file (a cache directory, or part of the context).
    Bind { source: PathBuf, target: PathBuf, readonly: bool },
    Tmpfs { target: PathBuf, size: Option<u64> },
}

/// The finished container of a RUN whose writable layer is still held.
pub struct RunResult {
    pub exit_code: i32,
    /// The overlay upper dir: what the RUN changed.
    pub upper: PathBuf,
}

/// A step's mounted root filesystem.
pub struct Mounted {
    pub rootfs: PathBuf,
    /// The overlay upper dir: what the step changes.
    pub upper: PathBuf,
}

/// The shim and host files one build's RUN containers share.
pub struct StepSandbox {
    shim: ShimClient,
    images: ImageService,
    dir: PathBuf,
    cgroup_parent: String,
    /// The namespace with only loopback that `--network none` steps share,
    /// made when the first of them runs.
    netns: tokio::sync::OnceCell<PathBuf>,
    host: HostFacts,
}

impl StepSandbox {
    pub async fn open(config: &Config, images: ImageService, build_id: &str) -> Result<StepSandbox, BuildError> {
        let dir = config.state.join("builds").join(build_id);
        std::fs::create_dir_all(&dir).map_err(BuildError::io(format!("creating {}", dir.display())))?;
        let opened = Self::open_in(config, images, build_id, &dir).await;
        if opened.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        opened
    }

    async fn open_in(
        config: &Config,
        images: ImageService,
        build_id: &str,
        dir: &Path,
    ) -> Result<StepSandbox, BuildError> {
        let write = |what: &str| BuildError::io(format!("writing the build's {what}"));
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        files::write_hostname(dir, &hostname).map_err(write("hostname"))?;
        files::write_hosts(dir, &hostname, None).map_err(write("hosts file"))?;
        files::write_resolv_conf(dir, None).map_err(write("resolv.conf"))?;
        let handlers = config.runtime.effective_handlers();
        let handler = handlers.get(&config.runtime.default_handler).ok_or_else(|| {
            BuildError::Precondition(format!("runtime.default_handler {:?} is not configured", config.runtime.default_handler))
        })?;
        let shim_binary = match &config.runtime.shim {
            Some(path) => path.clone(),
            None => std::env::current_exe().map_err(BuildError::io("locating berthd's own binary"))?.with_file_name("berth-shim"),
        };
        let shim = ShimClient::spawn(&SpawnOptions {
            shim_binary,
            pod_id: format!("build-{build_id}"),
            state_dir: dir.join("shim"),
            runtime_binary: crate::sandbox::find_in_path(&handler.path)
                .ok_or_else(|| BuildError::Precondition(format!("runtime {}: not found", handler.path.display())))?,
            runtime_root: handler.root.clone().unwrap_or_else(|| config.state.join("runtime").join(&config.runtime.default_handler)),
        })
        .await?;
        Ok(StepSandbox {
            shim,
            images,
            dir: dir.to_path_buf(),
            cgroup_parent: format!("{BUILD_CGROUP_PREFIX}{build_id}"),
            netns: tokio::sync::OnceCell::new(),
            host: HostFacts::detect(),
        })
    }

    /// Removes what builds a stopped berthd was running left: their step
    /// mounts, shims (and so containers), namespaces, cgroups, writable
    /// snapshots and directories.
    pub async fn clean_up_after_crash(config: &Config, images: &ImageService, store: &Store) -> Result<(), BuildError> {
        let builds = config.state.join("builds");
        let entries = match std::fs::read_dir(&builds) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(BuildError::io(format!("listing {}", builds.display()))(e)),
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let id = entry.file_name().to_string_lossy().to_string();
            tracing::info!(build = %id, "cleaning up a build berthd did not finish");
            if let Ok(steps) = std::fs::read_dir(dir.join("steps")) {
                for step in steps.flatten() {
                    let _ = rootfs::unmount(&step.path().join("rootfs"));
                }
            }
            if let Ok(shim) = ShimClient::connect(&dir.join("shim")).await
                && let Err(e) = shim.kill_and_shutdown().await
            {
                tracing::warn!(build = %id, error = %e, "stopping a left-over build shim");
            }
            let netns_path = dir.join("netns");
            if netns_path.exists() {
                let _ = netns::remove(&netns_path);
            }
            let cgroup = format!("{BUILD_CGROUP_PREFIX}{id}");
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || cgroup_tree::remove(&cgroup)).await {
                tracing::warn!(build = %id, error = %e, "removing a left-over build cgroup");
            }
            std::fs::remove_dir_all(&dir).map_err(BuildError::io(format!("removing {}", dir.display())))?;
        }
        for (owner, _) in store.leases()? {
            if owner.starts_with(LEASE_PREFIX) {
                images.release_rootfs(&owner)?;
            }
        }
        Ok(())
    }

    fn bundle(&self, step: &str) -> PathBuf {
        self.dir.join("steps").join(step)
    }

    /// The lease owner of a step's layers.
    fn owner(&self, step: &str) -> String {
        format!("{LEASE_PREFIX}{}:{step}", self.dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default())
    }

    /// Runs `process` on `parent_layers` (diff ids, bottom first) and waits for
    /// it, sending its output as it comes. The step stays held (see `release`)
    /// whatever the outcome, unless this fails before the container ran.
    pub async fn run(
        &self,
        step: &str,
        parent_layers: &[String],
        process: &RunProcess,
        output: &mpsc::Sender<(OutputStream, Bytes)>,
    ) -> Result<RunResult, BuildError> {
        let result = self.run_held(step, parent_layers, process, output).await;
        if result.is_err() {
            self.release(step).await;
        }
        result
    }

    async fn run_held(
        &self,
        step: &str,
        parent_layers: &[String],
        process: &RunProcess,
        output: &mpsc::Sender<(OutputStream, Bytes)>,
    ) -> Result<RunResult, BuildError> {
        let mounted = self.mount(step, parent_layers).await?;
        let (bundle, rootfs_dir) = (self.bundle(step), mounted.rootfs.clone());
        let netns = match process.network {
            StepNetwork::Host => None,
            StepNetwork::None => Some(self.empty_netns().await?),
        };
        let spec = self.spec(step, process, &rootfs_dir, netns)?;
        let json = serde_json::to_vec(&spec).map_err(|e| BuildError::Internal(format!("step spec: {e}")))?;
        crate::store::layout::write_private_file(&bundle.join("config.json"), &json).map_err(BuildError::io("writing the step's config.json"))?;

        let log = bundle.join("output.log");
        self.shim
            .create(CreateTask { id: step.to_string(), bundle: bundle.clone(), terminal: false, stdin: false, log_path: Some(log.clone()) })
            .await?;
        self.shim.start(step).await?;
        let (stopped_tx, stopped) = tokio::sync::watch::channel(false);
        let follower = tokio::spawn(follow_output(log, output.clone(), stopped));
        let exit = self.shim.wait(step).await;
        let _ = stopped_tx.send(true);
        let _ = follower.await;
        let exit = exit?;
        Ok(RunResult { exit_code: exit.code, upper: mounted.upper })
    }

    /// Mounts an overlay of `parent_layers` (diff ids, bottom first) under a
    /// fresh writable snapshot at the step's bundle rootfs; `release` undoes it.
    pub async fn mount(&self, step: &str, parent_layers: &[String]) -> Result<Mounted, BuildError> {
        let rootfs_dir = self.bundle(step).join("rootfs");
        crate::store::layout::private_dir(&self.bundle(step)).map_err(BuildError::io(format!("creating {}", self.bundle(step).display())))?;
        std::fs::create_dir_all(&rootfs_dir).map_err(BuildError::io(format!("creating {}", rootfs_dir.display())))?;
        let mut layers = self.images.prepare_layers(&self.owner(step), "build step", parent_layers)?;
        if layers.lowerdirs.is_empty() {
            // FROM scratch: overlayfs needs a lower layer, so an empty one stands in.
            let empty = self.bundle(step).join("empty");
            std::fs::create_dir_all(&empty).map_err(BuildError::io(format!("creating {}", empty.display())))?;
            layers.lowerdirs.push(empty);
        }
        if let Err(e) = rootfs::mount(&layers, &rootfs_dir) {
            self.release(step).await;
            return Err(BuildError::Internal(e.to_string()));
        }
        Ok(Mounted { rootfs: rootfs_dir, upper: layers.upperdir })
    }

    /// Detaches a step's rootfs so that its upper dir is stable to read.
    pub fn unmount(&self, step: &str) -> Result<(), BuildError> {
        rootfs::unmount(&self.bundle(step).join("rootfs")).map_err(|e| BuildError::Internal(e.to_string()))
    }

    /// Removes a step's container, mount, writable snapshot and bundle.
    pub async fn release(&self, step: &str) {
        if let Err(e) = self.shim.delete(step).await {
            tracing::debug!(step, error = %e, "deleting a build step's container");
        }
        let bundle = self.bundle(step);
        if let Err(e) = rootfs::unmount(&bundle.join("rootfs")) {
            tracing::warn!(step, error = %e, "unmounting a build step's rootfs");
        }
        if let Err(e) = self.images.release_rootfs(&self.owner(step)) {
            tracing::warn!(step, error = %e, "releasing a build step's layers");
        }
        let _ = std::fs::remove_dir_all(&bundle);
    }

    async fn empty_netns(&self) -> Result<&Path, BuildError> {
        let path = self
            .netns
            .get_or_try_init(|| async {
                let path = self.dir.join("netns");
                let target = path.clone();
                tokio::task::spawn_blocking(move || netns::create(&target))
                    .await
                    .map_err(|e| BuildError::Internal(format!("network namespace task: {e}")))?
                    .map_err(|e| BuildError::Internal(format!("creating the build's network namespace: {e}")))?;
                Ok::<_, BuildError>(path)
            })
            .await?;
        Ok(path)
    }

    /// Stops the shim and removes the build's namespace, cgroup and files.
    pub async fn close(self) {
        if let Err(e) = self.shim.kill_and_shutdown().await {
            tracing::warn!(error = %e, "stopping the build's shim");
        }
        if let Some(path) = self.netns.get()
            && let Err(e) = netns::remove(path)
        {
            tracing::warn!(error = %e, "removing the build's network namespace");
        }
        let cgroup = self.cgroup_parent.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || cgroup_tree::remove(&cgroup)).await {
            tracing::warn!(error = %e, "removing the build's cgroup");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The spec of a pod container, adjusted for a build step: namespaces of its
    /// own for PID and IPC (no pause container holds them), a private /dev/shm,
    /// and the build's network namespace when it has one.
    fn spec(&self, step: &str, process: &RunProcess, rootfs: &Path, netns: Option<&Path>) -> Result<Spec, BuildError> {
        let context = SandboxContext {
            sandbox_id: format!("build-{step}"),
            hostname_path: self.dir.join("hostname"),
            hosts_path: self.dir.join("hosts"),
            resolv_conf_path: self.dir.join("resolv.conf"),
            cgroup_parent: self.cgroup_parent.clone(),
            ..Default::default()
        };
        let mut container = ContainerSpec { name: step.to_string(), command: process.args.clone(), ..Default::default() };
        container.security.seccomp = Seccomp::RuntimeDefault;
        container.security.namespaces.network = NamespaceMode::Node;
        container.security.namespaces.ipc = NamespaceMode::Node;
        container.security.namespaces.pid = PidNamespace::Container;
        let defaults = ImageDefaults {
            env: process.env.clone(),
            working_dir: process.working_dir.clone(),
            user: process.user.clone(),
            ..Default::default()
        };
        let mut spec = oci::container_spec(step, &context, &container, &defaults, rootfs, &self.host)
            .map_err(|e| BuildError::Precondition(e.to_string()))?;
        if let Some(linux) = spec.linux_mut() {
            let mut namespaces = linux.namespaces().clone().unwrap_or_default();
            namespaces.push(new_namespace(LinuxNamespaceType::Ipc, None));
            if let Some(path) = netns {
                namespaces.push(new_namespace(LinuxNamespaceType::Network, Some(path.to_path_buf())));
            }
            linux.set_namespaces(Some(namespaces));
        }
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.retain(|m| m.destination() != Path::new("/dev/shm"));
        let mut shm = OciMount::default();
        shm.set_destination(PathBuf::from("/dev/shm"));
        shm.set_typ(Some("tmpfs".into()));
        shm.set_source(Some(PathBuf::from("shm")));
        shm.set_options(Some(["nosuid", "noexec", "nodev", "mode=1777", SHM_OPTIONS].map(String::from).to_vec()));
        mounts.push(shm);
        for mount in &process.mounts {
            let mut oci = OciMount::default();
            match mount {
                StepMount::Bind { source, target, readonly } => {
                    oci.set_destination(target.clone());
                    oci.set_typ(Some("bind".into()));
                    oci.set_source(Some(source.clone()));
                    oci.set_options(Some(vec!["rbind".into(), if *readonly { "ro" } else { "rw" }.into()]));
                }
                StepMount::Tmpfs { target, size } => {
                    oci.set_destination(target.clone());
                    oci.set_typ(Some("tmpfs".into()));
                    oci.set_source(Some(PathBuf::from("tmpfs")));
                    let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
                    options.extend(size.map(|bytes| format!("size={bytes}")));
                    oci.set_options(Some(options));
                }
            }
            mounts.push(oci);
        }
        spec.set_mounts(Some(mounts));
        Ok(spec)
    }
}

fn new_namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let mut namespace = LinuxNamespace::default();
    namespace.set_typ(typ);
    namespace.set_path(path);
    namespace
}

/// Sends what the shim writes into the step's CRI log (`<time> <stream> <F|P>
/// <message>`) as the bytes the process wrote, until `stopped` and the end.
async fn follow_output(log: PathBuf, output: mpsc::Sender<(OutputStream, Bytes)>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut file = loop {
        match tokio::fs::File::open(&log).await {
            Ok(file) => break file,
            Err(_) if !*stopped.borrow() => {
                let _ = tokio::time::timeout(OUTPUT_POLL, stopped.changed()).await;
            }
            Err(_) => return,
        }
    };
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let count = file.read(&mut chunk).await.unwrap_or(0);
        if count == 0 {
            if *stopped.borrow() {
                return;
            }
            let _ = tokio::time::timeout(OUTPUT_POLL, stopped.changed()).await;
            continue;
        }
        pending.extend_from_slice(&chunk[..count]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let mut fields = line[..end].splitn(4, |&b| b == b' ');
            let (Some(_time), Some(stream), Some(tag)) = (fields.next(), fields.next(), fields.next()) else { continue };
            let mut data = fields.next().unwrap_or_default().to_vec();
            if tag == b"F" {
                data.push(b'\n');
            }
            let stream = if stream == b"stderr" { OutputStream::Stderr } else { OutputStream::Stdout };
            if output.send((stream, Bytes::from(data))).await.is_err() {
                return;
            }
        }
    }
}
