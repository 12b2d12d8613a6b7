//! The real CNCF distribution registry on 127.0.0.1, with storage in a tempdir, and a
//! small client that pushes [`TestImage`]s through its HTTP API.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::image::{PushedIndex, index_json};
use super::token::{self, TokenServer};
use super::{ManifestFormat, Platform, Pushed, TestImage, digest_hex, free_port, sha256_digest};

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

enum Auth {
    Anonymous,
    Basic { username: String, password: String },
    Token { server: TokenServer },
}

pub struct TestRegistry {
    dir: tempfile::TempDir,
    port: u16,
    auth: Auth,
    child: Option<Child>,
    http: reqwest::Client,
}

impl TestRegistry {
    /// A registry that lets anyone pull and push.
    pub async fn start() -> TestRegistry {
        TestRegistry::launch(Auth::Anonymous).await
    }

    /// A registry behind htpasswd basic auth with one user.
    pub async fn start_basic(username: &str, password: &str) -> TestRegistry {
        TestRegistry::launch(Auth::Basic { username: username.into(), password: password.into() }).await
    }

    /// A registry behind bearer-token auth, with its own token server that knows one user.
    pub async fn start_token(username: &str, password: &str) -> TestRegistry {
        TestRegistry::launch(Auth::Token { server: TokenServer::start(username, password).await }).await
    }

    async fn launch(auth: Auth) -> TestRegistry {
        let dir = tempfile::Builder::new().prefix("berth-registry-").tempdir().expect("registry tempdir");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("registry http client");
        let mut registry = TestRegistry { dir, port: free_port(), auth, child: None, http };
        registry.write_config();
        registry.spawn().await;
        registry
    }

    fn write_config(&self) {
        let storage = self.dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("create registry storage");
        let auth_section = match &self.auth {
            Auth::Anonymous => String::new(),
            Auth::Basic { username, password } => {
                let htpasswd_path = self.dir.path().join("htpasswd");
                let output = Command::new("htpasswd")
                    .args(["-Bbn", username, password])
                    .output()
                    .expect("run htpasswd; deploy/install-deps.sh installs apache2-utils");
                assert!(output.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&output.stderr));
                std::fs::write(&htpasswd_path, &output.stdout).expect("write htpasswd file");
                format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    htpasswd_path.display()
                )
            }
            Auth::Token { server } => {
                let bundle = self.dir.path().join("token-ca.pem");
                std::fs::write(&bundle, server.certificate_pem()).expect("write token root bundle");
                format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    server.realm(),
                    token::SERVICE,
                    token::ISSUER,
                    bundle.display()
                )
            }
        };
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: berth-test-secret\n\
             health:\n  storagedriver:\n    enabled: false\n\
             {auth_section}",
            storage = storage.display(),
            port = self.port,
        );
        std::fs::write(self.config_path(), config).expect("write registry config");
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    /// The registry's stdout and stderr, including its access log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open registry log");
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup registry log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {REGISTRY_BINARY}: {e}; deploy/install-deps.sh installs it"));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(response) = self.http.get(format!("{}/v2/", self.url())).send().await {
                let status = response.status().as_u16();
                if status == 200 || status == 401 {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("registry exited with {status} before serving /v2/:\n{}", self.log());
            }
            assert!(tokio::time::Instant::now() < deadline, "registry did not answer /v2/ in 15 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `127.0.0.1:<port>`, the registry's host as a reference names it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// SIGKILLs the registry; its storage stays for [`TestRegistry::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same port and storage.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Where the registry keeps the blob `digest` on disk (to corrupt it).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest_hex(digest);
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// How many times the registry answered `GET` for blob `digest` of `repo`, read from
    /// its access log.
    pub fn blob_get_count(&self, repo: &str, digest: &str) -> usize {
        let request_line = format!("\"GET /v2/{repo}/blobs/{digest} HTTP/");
        self.log().lines().filter(|line| line.contains(&request_line)).count()
    }

    /// Tokens the bearer-token server issued to callers with valid credentials.
    pub fn authenticated_tokens_issued(&self) -> usize {
        match &self.auth {
            Auth::Token { server } => server.authenticated_tokens(),
            _ => panic!("authenticated_tokens_issued on a registry without token auth"),
        }
    }

    fn authorize(&self, request: reqwest::RequestBuilder, repo: &str) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::Anonymous => request,
            Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
            Auth::Token { server } => request.bearer_auth(server.token_for(&format!("repository:{repo}:pull,push"))),
        }
    }

    /// Uploads `data` as a blob of `repo` unless the registry already has it.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256_digest(data);
        let head = self
            .authorize(self.http.head(format!("{}/v2/{repo}/blobs/{digest}", self.url())), repo)
            .send()
            .await
            .expect("HEAD blob");
        if head.status().is_success() {
            return digest;
        }
        let start = self
            .authorize(self.http.post(format!("{}/v2/{repo}/blobs/uploads/", self.url())), repo)
            .send()
            .await
            .expect("start blob upload");
        assert_eq!(start.status().as_u16(), 202, "start upload to {repo}: {}", start.text().await.unwrap_or_default());
        let location = start
            .headers()
            .get("location")
            .expect("upload Location header")
            .to_str()
            .expect("ASCII Location")
            .to_owned();
        let location = if location.starts_with('/') { format!("{}{location}", self.url()) } else { location };
        let separator = if location.contains('?') { '&' } else { '?' };
        let finish = self
            .authorize(self.http.put(format!("{location}{separator}digest={digest}")), repo)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("finish blob upload");
        assert_eq!(finish.status().as_u16(), 201, "upload {digest} to {repo}: {}", finish.text().await.unwrap_or_default());
        digest
    }

    /// PUTs a manifest or index under `reference` (tag or digest); returns its digest.
    pub async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
        let response = self
            .authorize(self.http.put(format!("{}/v2/{repo}/manifests/{reference}", self.url())), repo)
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("PUT manifest");
        let status = response.status().as_u16();
        let served_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(status, 201, "PUT {repo}:{reference}: {}", response.text().await.unwrap_or_default());
        let digest = sha256_digest(body);
        assert_eq!(served_digest.as_deref(), Some(digest.as_str()), "registry digest of {repo}:{reference}");
        digest
    }

    /// Pushes `image`'s blobs and manifest and tags it `repo:tag`.
    pub async fn push(&self, repo: &str, tag: &str, image: &TestImage) -> Pushed {
        let pushed = self.push_untagged(repo, image).await;
        self.put_manifest(repo, tag, image.format.manifest_media_type(), &image.manifest_json()).await;
        pushed
    }

    async fn push_untagged(&self, repo: &str, image: &TestImage) -> Pushed {
        let mut layer_digests = Vec::new();
        let mut size = 0u64;
        for layer in &image.layers {
            layer_digests.push(self.push_blob(repo, layer.blob()).await);
            size += layer.blob().len() as u64;
        }
        let config = image.config_json();
        let image_id = self.push_blob(repo, &config).await;
        let manifest = image.manifest_json();
        let repo_digest =
            self.put_manifest(repo, &sha256_digest(&manifest), image.format.manifest_media_type(), &manifest).await;
        size += (config.len() + manifest.len()) as u64;
        Pushed { repo_digest, image_id, layer_digests, size }
    }

    /// Pushes one image per platform and an index (OCI) or manifest list (Docker)
    /// naming them, tagged `repo:tag`. Each image's config gets its entry's platform.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        format: ManifestFormat,
        entries: &[(Platform, TestImage)],
    ) -> PushedIndex {
        let mut images = Vec::new();
        let mut placed = Vec::new();
        for (platform, image) in entries {
            let image = image.clone().platform(platform.clone());
            let pushed = self.push_untagged(repo, &image).await;
            images.push((platform.clone(), pushed));
            placed.push((platform.clone(), image));
        }
        let borrowed: Vec<(Platform, &TestImage)> = placed.iter().map(|(p, i)| (p.clone(), i)).collect();
        let index = index_json(format, &borrowed);
        let index_digest = self.put_manifest(repo, tag, format.index_media_type(), &index).await;
        PushedIndex { index_digest, images }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}
