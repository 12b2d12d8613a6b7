//! berthd as a child process with its own root, state, socket and config, driven only
//! through CRI gRPC over its unix socket.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AuthConfig, Image, ImageFilter, ImageFsInfoResponse, ImageSpec, ImageStatusRequest, ImageStatusResponse,
    ListImagesRequest, PullImageRequest, RemoveImageRequest, VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use super::TestRegistry;

const BERTHD_BINARY: &str = env!("CARGO_BIN_EXE_berthd");
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The parts of berthd's config the tests vary.
#[derive(Clone, Debug, Default)]
pub struct BerthdConfig {
    pub insecure: Vec<String>,
    pub mirrors: Vec<(String, Vec<String>)>,
    pub sandbox_image: Option<String>,
    pub max_concurrent_downloads: Option<u32>,
    /// `[registry.auths]`: endpoint host → (username, password).
    pub auths: Vec<(String, String, String)>,
    /// Any other key: (table, key, value); an empty table is the top level.
    pub settings: Vec<(String, String, toml::Value)>,
    /// `registry.download_stall_timeout_seconds`.
    pub download_stall_timeout_seconds: Option<u64>,
    /// Puts berthd's root on a tmpfs of this many bytes (a disk that fills up).
    pub root_tmpfs_bytes: Option<u64>,
}

impl BerthdConfig {
    /// `registry` reachable directly (plain HTTP) and as the docker.io mirror.
    pub fn for_registry(registry: &TestRegistry) -> BerthdConfig {
        BerthdConfig::default().insecure(&registry.host()).mirror("docker.io", &registry.url())
    }

    pub fn insecure(mut self, host: &str) -> BerthdConfig {
        self.insecure.push(host.to_owned());
        self
    }

    /// Adds `endpoint` (a URL) to the mirrors tried for `registry_host`.
    pub fn mirror(mut self, registry_host: &str, endpoint: &str) -> BerthdConfig {
        match self.mirrors.iter_mut().find(|(host, _)| host == registry_host) {
            Some((_, endpoints)) => endpoints.push(endpoint.to_owned()),
            None => self.mirrors.push((registry_host.to_owned(), vec![endpoint.to_owned()])),
        }
        self
    }

    pub fn sandbox_image(mut self, reference: &str) -> BerthdConfig {
        self.sandbox_image = Some(reference.to_owned());
        self
    }

    pub fn max_concurrent_downloads(mut self, count: u32) -> BerthdConfig {
        self.max_concurrent_downloads = Some(count);
        self
    }

    pub fn download_stall_timeout_seconds(mut self, seconds: u64) -> BerthdConfig {
        self.download_stall_timeout_seconds = Some(seconds);
        self
    }

    pub fn root_on_tmpfs(mut self, bytes: u64) -> BerthdConfig {
        self.root_tmpfs_bytes = Some(bytes);
        self
    }

    /// Credentials berthd uses for `host` when a request brings none.
    pub fn auth(mut self, host: &str, username: &str, password: &str) -> BerthdConfig {
        self.auths.push((host.to_owned(), username.to_owned(), password.to_owned()));
        self
    }

    /// Sets `key` of `[table]` (the top level when `table` is empty).
    pub fn set(mut self, table: &str, key: &str, value: impl Into<toml::Value>) -> BerthdConfig {
        self.settings.push((table.to_owned(), key.to_owned(), value.into()));
        self
    }

    fn to_toml(&self, root: &Path, state: &Path, socket: &Path) -> String {
        let path_value = |p: &Path| toml::Value::String(p.to_str().expect("UTF-8 temp path").to_owned());
        let strings = |items: &[String]| toml::Value::Array(items.iter().cloned().map(toml::Value::String).collect());
        let mut table = toml::Table::new();
        table.insert("root".into(), path_value(root));
        table.insert("state".into(), path_value(state));
        table.insert("socket".into(), path_value(socket));
        if let Some(image) = &self.sandbox_image {
            table.insert("sandbox_image".into(), toml::Value::String(image.clone()));
        }
        if let Some(count) = self.max_concurrent_downloads {
            table.insert("max_concurrent_downloads".into(), toml::Value::Integer(count.into()));
        }
        let mut registry = toml::Table::new();
        registry.insert("insecure".into(), strings(&self.insecure));
        let mut mirrors = toml::Table::new();
        for (host, endpoints) in &self.mirrors {
            mirrors.insert(host.clone(), strings(endpoints));
        }
        registry.insert("mirrors".into(), toml::Value::Table(mirrors));
        let mut auths = toml::Table::new();
        for (host, username, password) in &self.auths {
            let mut auth = toml::Table::new();
            auth.insert("username".into(), toml::Value::String(username.clone()));
            auth.insert("password".into(), toml::Value::String(password.clone()));
            auths.insert(host.clone(), toml::Value::Table(auth));
        }
        registry.insert("auths".into(), toml::Value::Table(auths));
        if let Some(seconds) = self.download_stall_timeout_seconds {
            registry.insert("download_stall_timeout_seconds".into(), toml::Value::Integer(seconds as i64));
        }
        table.insert("registry".into(), toml::Value::Table(registry));
        for (name, key, value) in &self.settings {
            let target = if name.is_empty() {
                &mut table
            } else {
                let entry = table.entry(name.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                entry.as_table_mut().expect("a table")
            };
            target.insert(key.clone(), value.clone());
        }
        toml::to_string(&table).expect("serialise berthd config")
    }
}

pub struct Berthd {
    base: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    socket: PathBuf,
    config_path: PathBuf,
    sentinel: PathBuf,
    child: Option<Child>,
    root_is_tmpfs: bool,
}

impl Berthd {
    /// Starts berthd on fresh directories and waits until it answers `Version`.
    pub async fn start(config: BerthdConfig) -> Berthd {
        let base = tempfile::Builder::new().prefix("berth-e2e-").tempdir().expect("berthd tempdir");
        let root = base.path().join("root");
        let state = base.path().join("state");
        let socket = state.join("berth.sock");
        let sentinel = base.path().join("sentinel");
        std::fs::create_dir_all(&sentinel).expect("create sentinel dir");
        let config_path = base.path().join("config.toml");
        std::fs::write(&config_path, config.to_toml(&root, &state, &socket)).expect("write berthd config");
        if let Some(bytes) = config.root_tmpfs_bytes {
            std::fs::create_dir_all(&root).expect("create root mount point");
            let options = std::ffi::CString::new(format!("size={bytes}")).expect("tmpfs options");
            rustix::mount::mount("tmpfs", &root, "tmpfs", rustix::mount::MountFlags::empty(), options.as_c_str())
                .expect("mount a tmpfs for berthd's root");
        }
        let root_is_tmpfs = config.root_tmpfs_bytes.is_some();
        let mut berthd = Berthd { base, root, state, socket, config_path, sentinel, child: None, root_is_tmpfs };
        berthd.spawn().await;
        berthd
    }

    fn log_path(&self) -> PathBuf {
        self.base.path().join("berthd.log")
    }

    /// The last lines berthd wrote to stdout and stderr, across restarts: enough to
    /// explain a failure without drowning it.
    pub fn log(&self) -> String {
        const TAIL_LINES: usize = 200;
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open berthd log");
        let child = Command::new(BERTHD_BINARY)
            .arg("--config")
            .arg(&self.config_path)
            .arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--log-format", "text"])
            .env("RUST_LOG", "info,berth=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup berthd log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {BERTHD_BINARY}: {e}"));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if self.socket.exists() {
                if let Ok(mut client) = self.try_runtime_client().await {
                    if client.version(VersionRequest { version: "v1".into() }).await.is_ok() {
                        return;
                    }
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                panic!("berthd exited with {status} before answering Version:\n{}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "berthd did not answer Version within {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The running berthd's process id (0 when it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state(&self) -> &Path {
        &self.state
    }

    /// The socket serving CRI and the builder service.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// An empty directory outside berthd's root that hostile layers aim at.
    pub fn sentinel(&self) -> &Path {
        &self.sentinel
    }

    /// The directory holding root, state, sentinel, config and log.
    pub fn base(&self) -> &Path {
        self.base.path()
    }

    /// SIGKILLs berthd: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts berthd again on the same root, state, socket and config (SIGKILLing it
    /// first if it still runs).
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// Sends SIGTERM and asserts berthd exits 0 within 20 s and removes its socket.
    pub async fn terminate(&mut self) {
        let mut child = self.child.take().expect("berthd is running");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("berthd pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("send SIGTERM to berthd");
        let deadline = tokio::time::Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for berthd") {
                break status;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("berthd did not exit within {EXIT_TIMEOUT:?} of SIGTERM:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "berthd exited with {status} after SIGTERM:\n{}", self.log());
        assert!(!self.socket.exists(), "berthd left its socket {} behind after SIGTERM", self.socket.display());
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        channel_to(self.socket.clone()).await
    }

    async fn try_runtime_client(&self) -> Result<RuntimeServiceClient<Channel>, tonic::transport::Error> {
        Ok(RuntimeServiceClient::new(self.channel().await?))
    }

    pub async fn image_client(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await.expect("connect to berthd's socket"))
    }

    pub async fn runtime_client(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await.expect("connect to berthd's socket"))
    }

    /// PullImage without credentials; the image ref berthd returns.
    pub async fn pull(&self, reference: &str) -> Result<String, tonic::Status> {
        self.pull_with_auth(reference, None).await
    }

    /// PullImage on a connection of its own, as a future that owns everything:
    /// for a task the test aborts, as a client that goes away (kubelet's deadline,
    /// a killed crictl) drops its call.
    pub fn pull_future(&self, reference: &str) -> impl std::future::Future<Output = Result<String, tonic::Status>> + Send + 'static {
        let (socket, reference) = (self.socket.clone(), reference.to_owned());
        async move {
            let channel = channel_to(socket).await.expect("connect to berthd's socket");
            let request = PullImageRequest { image: Some(spec(&reference)), auth: None, sandbox_config: None };
            Ok(ImageServiceClient::new(channel).pull_image(request).await?.into_inner().image_ref)
        }
    }

    pub async fn pull_with_auth(&self, reference: &str, auth: Option<AuthConfig>) -> Result<String, tonic::Status> {
        let request = PullImageRequest { image: Some(spec(reference)), auth, sandbox_config: None };
        Ok(self.image_client().await.pull_image(request).await?.into_inner().image_ref)
    }

    /// ImageStatus (non-verbose); `None` when berthd does not know the image.
    pub async fn image_status(&self, reference: &str) -> Option<Image> {
        self.image_status_response(reference, false).await.image
    }

    pub async fn image_status_response(&self, reference: &str, verbose: bool) -> ImageStatusResponse {
        let request = ImageStatusRequest { image: Some(spec(reference)), verbose };
        match self.image_client().await.image_status(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => panic!("ImageStatus {reference}: {status:?}"),
        }
    }

    /// ListImages, optionally filtered by an image reference.
    pub async fn list_images(&self, filter: Option<&str>) -> Vec<Image> {
        let request = ListImagesRequest { filter: filter.map(|r| ImageFilter { image: Some(spec(r)) }) };
        match self.image_client().await.list_images(request).await {
            Ok(response) => response.into_inner().images,
            Err(status) => panic!("ListImages {filter:?}: {status:?}"),
        }
    }

    pub async fn remove_image(&self, reference: &str) -> Result<(), tonic::Status> {
        let request = RemoveImageRequest { image: Some(spec(reference)) };
        self.image_client().await.remove_image(request).await.map(|_| ())
    }

    pub async fn image_fs_info(&self) -> ImageFsInfoResponse {
        match self.image_client().await.image_fs_info(k8s_cri::v1::ImageFsInfoRequest {}).await {
            Ok(response) => response.into_inner(),
            Err(status) => panic!("ImageFsInfo: {status:?}"),
        }
    }

    /// Paths outside berthd's root and state that did not come from the fixture itself
    /// (its config and log); hostile layers must never add any.
    pub fn paths_outside_root(&self) -> BTreeSet<PathBuf> {
        super::fs::walk(self.base.path())
            .into_iter()
            .filter(|p| !p.starts_with(&self.root) && !p.starts_with(&self.state))
            .filter(|p| *p != self.config_path && *p != self.log_path())
            .collect()
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        self.kill9();
        // berthd makes <state>/pods a shared mount point for the pods' network
        // namespaces (as `ip netns` does with /run/netns); it outlives berthd by
        // design, so the test removes it with its temporary directory.
        let pods = self.state.join("pods");
        let _ = rustix::mount::unmount(&pods, rustix::mount::UnmountFlags::DETACH);
        if self.root_is_tmpfs {
            let _ = rustix::mount::unmount(&self.root, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

async fn channel_to(socket: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://berthd.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }))
        .await
}

pub fn spec(reference: &str) -> ImageSpec {
    ImageSpec { image: reference.to_owned(), ..Default::default() }
}
