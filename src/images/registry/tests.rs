//! The client against the real CNCF distribution registry (Debian's
//! `docker-registry`) on 127.0.0.1, with images pushed by the tests over plain
//! HTTP; and bearer-token, redirect and retry behaviour against a tiny local
//! HTTP server, because that registry only does htpasswd (Basic) auth.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::images::manifest::{
    DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, ImageConfig, OCI_CONFIG, OCI_LAYER, RootFs,
    host_platform,
};

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
const REPO: &str = "berth/test";

/// A `docker-registry serve` process on a free 127.0.0.1 port, killed on drop.
struct TestRegistry {
    child: Child,
    authority: String,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    async fn start(htpasswd: Option<(&str, &str)>) -> TestRegistry {
        assert!(
            Path::new(REGISTRY_BINARY).exists(),
            "{REGISTRY_BINARY} is missing: install the docker-registry package (apt-get install docker-registry)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let authority = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {authority}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = htpasswd {
            let out = Command::new("htpasswd").args(["-Bbn", user, password]).output().expect("running htpasswd (apache2-utils)");
            assert!(out.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, &out.stdout).unwrap();
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n", path.display()));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let mut registry = TestRegistry { child, authority, dir };
        registry.wait_ready().await;
        registry
    }

    async fn wait_ready(&mut self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("docker-registry exited with {status}: {}", self.log());
            }
            if let Ok(response) = http.get(format!("http://{}/v2/", self.authority)).send().await
                && matches!(response.status().as_u16(), 200 | 401)
            {
                return;
            }
            assert!(Instant::now() < deadline, "docker-registry did not come up: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn base(&self) -> String {
        format!("http://{}", self.authority)
    }

    fn blob_data(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir.path().join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Pushes with the registry's plain upload protocol, as `docker push` does.
struct Pusher {
    http: reqwest::Client,
    base: String,
    basic: Option<(String, String)>,
}

impl Pusher {
    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.basic {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    async fn blob(&self, media_type: &str, bytes: &[u8]) -> Descriptor {
        let digest = Digest::of(bytes);
        let start = self.request(reqwest::Method::POST, &format!("{}/v2/{REPO}/blobs/uploads/", self.base)).send().await.unwrap();
        assert_eq!(start.status(), 202, "starting upload: {}", start.text().await.unwrap());
        let location = start.headers()["location"].to_str().unwrap().to_string();
        let location = if location.starts_with("http") { location } else { format!("{}{location}", self.base) };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = self
            .request(reqwest::Method::PUT, &format!("{location}{separator}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201, "finishing upload: {}", put.text().await.unwrap());
        descriptor(media_type, bytes)
    }

    async fn manifest(&self, reference: &str, media_type: &str, bytes: &[u8]) -> Descriptor {
        let put = self
            .request(reqwest::Method::PUT, &format!("{}/v2/{REPO}/manifests/{reference}", self.base))
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201, "pushing manifest {reference}: {}", put.text().await.unwrap());
        descriptor(media_type, bytes)
    }
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
        urls: vec![],
        annotations: BTreeMap::new(),
        platform: None,
    }
}

fn platform(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
    Platform { os: os.into(), architecture: architecture.into(), variant: variant.map(Into::into), ..Platform::default() }
}

/// Deterministic incompressible bytes (xorshift), large enough to arrive in several chunks.
fn layer_bytes(seed: u8, len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

struct PushedImage {
    manifest: Descriptor,
    config: Descriptor,
    config_bytes: Vec<u8>,
    layer: Descriptor,
}

struct Pushed {
    index: Descriptor,
    amd64: PushedImage,
    arm64: PushedImage,
    docker_list: Descriptor,
    docker_amd64: PushedImage,
}

async fn push_image(pusher: &Pusher, p: &Platform, seed: u8, docker: bool) -> PushedImage {
    let raw = layer_bytes(seed, 300_000 + usize::from(seed));
    let (layer_bytes, layer_type, config_type, manifest_type) = if docker {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
        gz.write_all(&raw).unwrap();
        (gz.finish().unwrap(), DOCKER_LAYER_GZIP, DOCKER_CONFIG, DOCKER_MANIFEST)
    } else {
        (raw.clone(), OCI_LAYER, OCI_CONFIG, OCI_MANIFEST)
    };
    let layer = pusher.blob(layer_type, &layer_bytes).await;
    let config_doc = ImageConfig {
        architecture: p.architecture.clone(),
        os: p.os.clone(),
        variant: p.variant.clone(),
        rootfs: RootFs { fs_type: "layers".into(), diff_ids: vec![Digest::of(&raw)] },
        ..ImageConfig::default()
    };
    let config_bytes = serde_json::to_vec(&config_doc).unwrap();
    let config = pusher.blob(config_type, &config_bytes).await;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(manifest_type.into()),
        config: config.clone(),
        layers: vec![layer.clone()],
        annotations: BTreeMap::new(),
    };
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let mut manifest = pusher.manifest(&Digest::of(&bytes).to_string(), manifest_type, &bytes).await;
    manifest.platform = Some(p.clone());
    PushedImage { manifest, config, config_bytes, layer }
}

/// Tags: `multi` (OCI index: an attestation, linux/amd64, linux/arm64/v8),
/// `single` (the amd64 manifest alone), `dockerlist` (a Docker manifest list).
async fn push_test_images(pusher: &Pusher) -> Pushed {
    let amd64 = push_image(pusher, &platform("linux", "amd64", None), 1, false).await;
    let arm64 = push_image(pusher, &platform("linux", "arm64", Some("v8")), 2, false).await;
    let mut attestation = push_image(pusher, &platform("unknown", "unknown", None), 3, false).await;
    attestation.manifest.annotations.insert("vnd.docker.reference.type".into(), "attestation-manifest".into());
    let index = Index {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: vec![attestation.manifest, amd64.manifest.clone(), arm64.manifest.clone()],
        annotations: BTreeMap::new(),
    };
    let index = pusher.manifest("multi", OCI_INDEX, &serde_json::to_vec(&index).unwrap()).await;
    let single = serde_json::to_vec(&Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: amd64.config.clone(),
        layers: vec![amd64.layer.clone()],
        annotations: BTreeMap::new(),
    })
    .unwrap();
    pusher.manifest("single", OCI_MANIFEST, &single).await;

    let docker_amd64 = push_image(pusher, &platform("linux", "amd64", None), 4, true).await;
    let list = Index {
        schema_version: 2,
        media_type: Some(DOCKER_MANIFEST_LIST.into()),
        manifests: vec![docker_amd64.manifest.clone()],
        annotations: BTreeMap::new(),
    };
    let docker_list = pusher.manifest("dockerlist", DOCKER_MANIFEST_LIST, &serde_json::to_vec(&list).unwrap()).await;
    Pushed { index, amd64, arm64, docker_list, docker_amd64 }
}

fn insecure_client(registry: &TestRegistry, mirrors: &[(&str, Vec<String>)]) -> RegistryClient {
    RegistryClient::new(&RegistryConfig {
        mirrors: mirrors.iter().map(|(host, urls)| (host.to_string(), urls.clone())).collect(),
        insecure: vec![registry.authority.clone()],
        ..Default::default()
    })
    .unwrap()
}

fn reference(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

async fn stream_digest(mut stream: BlobStream) -> (Digest, usize) {
    let (mut hasher, mut chunks) = (Sha256::new(), 0);
    while let Some(chunk) = stream.next().await {
        hasher.update(chunk.unwrap());
        chunks += 1;
    }
    (Digest::from_hasher(hasher), chunks)
}

#[tokio::test]
async fn resolves_tags_digests_and_platforms_and_fetches_blobs() {
    let registry = TestRegistry::start(None).await;
    let pushed = push_test_images(&Pusher { http: reqwest::Client::new(), base: registry.base(), basic: None }).await;
    let client = insecure_client(&registry, &[]);
    let amd64 = platform("linux", "amd64", None);
    let name = format!("{}/{REPO}", registry.authority);

    let resolved = client.resolve(&reference(&format!("{name}:multi")), None, &amd64).await.unwrap();
    assert_eq!(resolved.repo_digest, pushed.index.digest);
    let index = resolved.index.as_ref().unwrap();
    assert_eq!((index.media_type.as_str(), &index.digest), (OCI_INDEX, &pushed.index.digest));
    assert_eq!(resolved.manifest.digest, pushed.amd64.manifest.digest);
    assert_eq!(resolved.manifest.media_type, OCI_MANIFEST);
    assert_eq!(Digest::of(&resolved.manifest.bytes), resolved.manifest.digest);
    assert_eq!(resolved.parsed.config, pushed.amd64.config);
    assert_eq!(resolved.source.endpoint(), registry.base());

    let config = resolved.source.fetch_blob(&resolved.parsed.config).await.unwrap();
    assert_eq!(config, pushed.amd64.config_bytes);
    assert_eq!(serde_json::from_slice::<ImageConfig>(&config).unwrap().architecture, "amd64");
    let (digest, chunks) = stream_digest(resolved.source.open_blob(&resolved.parsed.layers[0]).await.unwrap()).await;
    assert_eq!(digest, pushed.amd64.layer.digest);
    assert!(chunks > 1, "a 300 kB layer should arrive in several chunks");

    // The host's own platform picks the same entry as its explicit spelling.
    let host = host_platform();
    let by_host = client.resolve(&reference(&format!("{name}:multi")), None, &host).await.unwrap();
    let expected = if host.architecture == "arm64" { &pushed.arm64 } else { &pushed.amd64 };
    assert_eq!(by_host.manifest.digest, expected.manifest.digest);

    let arm = client.resolve(&reference(&format!("{name}:multi")), None, &platform("linux", "arm64", Some("v8"))).await.unwrap();
    assert_eq!(arm.manifest.digest, pushed.arm64.manifest.digest);
    assert_eq!(arm.source.fetch_blob(&arm.parsed.config).await.unwrap(), pushed.arm64.config_bytes);

    let by_index_digest = reference(&format!("{name}@{}", pushed.index.digest));
    let resolved = client.resolve(&by_index_digest, None, &amd64).await.unwrap();
    assert_eq!((resolved.repo_digest.clone(), resolved.manifest.digest), (pushed.index.digest.clone(), pushed.amd64.manifest.digest.clone()));

    let by_manifest_digest = reference(&format!("{name}:ignored@{}", pushed.amd64.manifest.digest));
    let resolved = client.resolve(&by_manifest_digest, None, &amd64).await.unwrap();
    assert!(resolved.index.is_none());
    assert_eq!(resolved.repo_digest, pushed.amd64.manifest.digest);

    let single = client.resolve(&reference(&format!("{name}:single")), None, &amd64).await.unwrap();
    assert!(single.index.is_none());
    assert_eq!(single.repo_digest, single.manifest.digest);
    assert_eq!(single.parsed.layers, vec![pushed.amd64.layer.clone()]);

    let docker = client.resolve(&reference(&format!("{name}:dockerlist")), None, &amd64).await.unwrap();
    assert_eq!(docker.index.as_ref().unwrap().media_type, DOCKER_MANIFEST_LIST);
    assert_eq!(docker.repo_digest, pushed.docker_list.digest);
    assert_eq!(docker.manifest.media_type, DOCKER_MANIFEST);
    assert_eq!(docker.manifest.digest, pushed.docker_amd64.manifest.digest);
    let (digest, _) = stream_digest(docker.source.open_blob(&docker.parsed.layers[0]).await.unwrap()).await;
    assert_eq!(digest, pushed.docker_amd64.layer.digest);

    let err = client.resolve(&reference(&format!("{name}:multi")), None, &platform("linux", "s390x", None)).await.unwrap_err();
    assert!(matches!(err, RegistryError::NoMatchingPlatform { .. }), "{err}");
    assert!(err.to_string().contains("linux/s390x") && err.to_string().contains("linux/arm64/v8"), "{err}");

    for missing in [format!("{name}:nope"), format!("{}/berth/absent:latest", registry.authority)] {
        let err = client.resolve(&reference(&missing), None, &amd64).await.unwrap_err();
        assert!(err.is_not_found(), "{missing}: {err}");
    }
    let unknown_blob = Descriptor { digest: Digest::of(b"never pushed"), ..pushed.amd64.layer.clone() };
    assert!(resolved.source.open_blob(&unknown_blob).await.err().unwrap().is_not_found());
}

#[tokio::test]
async fn mirrors_are_tried_in_order_and_the_most_telling_error_wins() {
    let registry = TestRegistry::start(None).await;
    let pushed = push_test_images(&Pusher { http: reqwest::Client::new(), base: registry.base(), basic: None }).await;
    let amd64 = platform("linux", "amd64", None);

    // An image named after an unreachable registry comes from its mirror; the
    // mirror URL may already end in /v2.
    for mirror_url in [registry.base(), format!("{}/v2/", registry.base())] {
        let client = insecure_client(&registry, &[("example.invalid", vec![mirror_url.clone()])]);
        let resolved = client.resolve(&reference(&format!("example.invalid/{REPO}:multi")), None, &amd64).await.unwrap();
        assert_eq!(resolved.manifest.digest, pushed.amd64.manifest.digest, "{mirror_url}");
        assert_eq!(resolved.source.endpoint(), registry.base());
        assert_eq!(resolved.source.fetch_blob(&resolved.parsed.config).await.unwrap(), pushed.amd64.config_bytes);
    }

    // A mirror that refuses connections is passed over for the registry itself.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let client = insecure_client(&registry, &[(registry.authority.as_str(), vec![dead.clone()])]);
    let name = format!("{}/{REPO}", registry.authority);
    let resolved = client.resolve(&reference(&format!("{name}:multi")), None, &amd64).await.unwrap();
    assert_eq!(resolved.source.endpoint(), registry.base());

    // When everything fails, NotFound from the registry beats the dead mirror's
    // connection error, and both endpoints are named.
    let err = client.resolve(&reference(&format!("{name}:nope")), None, &amd64).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(matches!(err, RegistryError::AllEndpointsFailed { .. }));
    let message = err.to_string();
    assert!(message.contains(&dead) && message.contains(&registry.base()), "{message}");
    assert!(message.contains("onnection refused"), "{message}");
}

#[tokio::test]
async fn htpasswd_registry_needs_the_right_credentials() {
    let registry = TestRegistry::start(Some(("user", "pass"))).await;
    let pusher = Pusher { http: reqwest::Client::new(), base: registry.base(), basic: Some(("user".into(), "pass".into())) };
    let pushed = push_test_images(&pusher).await;
    let client = insecure_client(&registry, &[]);
    let amd64 = platform("linux", "amd64", None);
    let image = reference(&format!("{}/{REPO}:multi", registry.authority));

    let good = Credentials::Basic { username: "user".into(), password: "pass".into() };
    let resolved = client.resolve(&image, Some(&good), &amd64).await.unwrap();
    assert_eq!(resolved.manifest.digest, pushed.amd64.manifest.digest);
    assert_eq!(resolved.source.fetch_blob(&resolved.parsed.config).await.unwrap(), pushed.amd64.config_bytes);
    let (digest, _) = stream_digest(resolved.source.open_blob(&resolved.parsed.layers[0]).await.unwrap()).await;
    assert_eq!(digest, pushed.amd64.layer.digest);

    let wrong = Credentials::Basic { username: "user".into(), password: "wrong".into() };
    let token = Credentials::RegistryToken("not-a-password".into());
    for (credentials, expect) in [(None, "username and password"), (Some(&wrong), "refused"), (Some(&token), "username and password")] {
        let err = client.resolve(&image, credentials, &amd64).await.unwrap_err();
        match &err {
            RegistryError::Unauthorized { registry: host, detail } => {
                assert_eq!(host, &registry.authority);
                assert!(detail.contains(expect), "{credentials:?}: {err}");
            }
            other => panic!("{credentials:?}: expected Unauthorized, got {other}"),
        }
    }
}

#[tokio::test]
async fn a_corrupted_blob_is_a_digest_mismatch() {
    let registry = TestRegistry::start(None).await;
    let pushed = push_test_images(&Pusher { http: reqwest::Client::new(), base: registry.base(), basic: None }).await;
    let client = insecure_client(&registry, &[]);
    let resolved =
        client.resolve(&reference(&format!("{}/{REPO}:single", registry.authority)), None, &host_platform()).await.unwrap();

    let path = registry.blob_data(&pushed.amd64.config.digest);
    let mut corrupted = std::fs::read(&path).unwrap();
    corrupted[0] ^= 0xff;
    std::fs::write(&path, &corrupted).unwrap();
    match resolved.source.fetch_blob(&pushed.amd64.config).await {
        Err(RegistryError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, pushed.amd64.config.digest);
            assert_eq!(actual, Digest::of(&corrupted));
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
}

/// What the tiny server saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    host: String,
    authorization: Option<String>,
    body: String,
}

type Reply = (u16, Vec<(&'static str, String)>, Vec<u8>);

/// A one-request-per-connection HTTP/1.1 server on 127.0.0.1, answering with `handler`.
async fn serve(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (log, handler) = (seen.clone(), Arc::new(handler));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (log, handler) = (log.clone(), handler.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let header = |name: &str| {
                    head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string()))
                };
                let body_len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                while buf.len() < head_end + body_len {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let mut request_line = head.split_whitespace();
                let request = Seen {
                    method: request_line.next().unwrap_or_default().to_string(),
                    path: request_line.next().unwrap_or_default().to_string(),
                    host: header("host").unwrap_or_default(),
                    authorization: header("authorization"),
                    body: String::from_utf8_lossy(&buf[head_end..head_end + body_len]).to_string(),
                };
                log.lock().unwrap().push(request.clone());
                let (status, headers, body) = handler(&request);
                let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
                for (name, value) in headers {
                    out.push_str(&format!("{name}: {value}\r\n"));
                }
                out.push_str("\r\n");
                let _ = conn.write_all(out.as_bytes()).await;
                let _ = conn.write_all(&body).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (base, seen)
}

fn a_manifest_and_its_config() -> (Vec<u8>, Vec<u8>, Descriptor) {
    let config_bytes = serde_json::to_vec(&ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        rootfs: RootFs { fs_type: "layers".into(), diff_ids: vec![] },
        ..ImageConfig::default()
    })
    .unwrap();
    let config = descriptor(OCI_CONFIG, &config_bytes);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: config.clone(),
        layers: vec![],
        annotations: BTreeMap::new(),
    };
    (serde_json::to_vec(&manifest).unwrap(), config_bytes, config)
}

#[tokio::test]
async fn bearer_tokens_are_fetched_cached_per_credentials_and_not_leaked_on_redirect() {
    let (manifest_bytes, config_bytes, config) = a_manifest_and_its_config();
    let (storage, storage_seen) = serve(move |_| (200, vec![], config_bytes.clone())).await;
    let issued = Arc::new(Mutex::new(0u32));
    let (registry, registry_seen) = {
        let issued = issued.clone();
        serve(move |req| {
            let challenge = format!(r#"Bearer realm="http://{}/token",service="berth-test",scope="repository:team/app:pull""#, req.host);
            if req.path.starts_with("/token") {
                let basic = base64::engine::general_purpose::STANDARD.encode("user:pass");
                let token = match (req.method.as_str(), req.authorization.as_deref()) {
                    ("GET", Some(a)) if a == format!("Basic {basic}") => "user-token",
                    ("GET", None) => "anonymous-token",
                    ("POST", None) if req.body.contains("grant_type=refresh_token") && req.body.contains("refresh_token=r1") => {
                        "refreshed-token"
                    }
                    _ => return (401, vec![], b"bad credentials".to_vec()),
                };
                *issued.lock().unwrap() += 1;
                return (200, vec![], format!(r#"{{"access_token":"{token}","expires_in":300}}"#).into_bytes());
            }
            let authorised = req.authorization.as_deref().is_some_and(|a| a.starts_with("Bearer ") && a.ends_with("-token"));
            match (authorised, req.path.as_str()) {
                (false, _) => (401, vec![("WWW-Authenticate", challenge)], b"{\"errors\":[]}".to_vec()),
                (true, "/v2/team/app/manifests/latest") => (200, vec![("Content-Type", OCI_MANIFEST.into())], manifest_bytes.clone()),
                (true, p) if p.starts_with("/v2/team/app/blobs/") => (307, vec![("Location", format!("{storage}/data"))], vec![]),
                _ => (404, vec![], vec![]),
            }
        })
        .await
    };
    let authority = registry.trim_start_matches("http://").to_string();
    let client = RegistryClient::new(&RegistryConfig { insecure: vec![authority.clone()], ..Default::default() }).unwrap();
    let image = reference(&format!("{authority}/team/app"));
    let user = Credentials::Basic { username: "user".into(), password: "pass".into() };
    let amd64 = platform("linux", "amd64", None);

    let first = client.resolve(&image, Some(&user), &amd64).await.unwrap();
    let second = client.resolve(&image, Some(&user), &amd64).await.unwrap();
    assert_eq!(*issued.lock().unwrap(), 1, "the second resolve reuses the cached token");
    assert_eq!(first.manifest.digest, second.manifest.digest);
    let token_request = registry_seen.lock().unwrap().iter().find(|s| s.path.starts_with("/token")).cloned().unwrap();
    assert!(token_request.path.contains("scope=repository%3Ateam%2Fapp%3Apull"), "{token_request:?}");
    assert!(token_request.path.contains("service=berth-test"), "{token_request:?}");

    assert_eq!(second.source.fetch_blob(&config).await.unwrap(), a_manifest_and_its_config().1);
    let storage_requests = storage_seen.lock().unwrap().clone();
    assert_eq!(storage_requests.len(), 1);
    assert_eq!(storage_requests[0].authorization, None, "the token must not follow a redirect to another host");
    let blob_request = registry_seen.lock().unwrap().iter().rev().find(|s| s.path.contains("/blobs/")).cloned().unwrap();
    assert_eq!(blob_request.authorization.as_deref(), Some("Bearer user-token"));

    // Other credentials (or none) never get the cached token of the first.
    client.resolve(&image, None, &amd64).await.unwrap();
    client.resolve(&image, Some(&Credentials::IdentityToken("r1".into())), &amd64).await.unwrap();
    assert_eq!(*issued.lock().unwrap(), 3);
    let used: Vec<_> = registry_seen.lock().unwrap().iter().filter_map(|s| s.authorization.clone()).collect();
    assert!(used.contains(&"Bearer anonymous-token".to_string()) && used.contains(&"Bearer refreshed-token".to_string()));

    let wrong = Credentials::Basic { username: "user".into(), password: "nope".into() };
    let err = client.resolve(&image, Some(&wrong), &amd64).await.unwrap_err();
    assert!(matches!(&err, RegistryError::Unauthorized { detail, .. } if detail.contains("token server")), "{err}");
}

#[tokio::test]
async fn unavailable_answers_are_retried_with_backoff() {
    let (manifest_bytes, _, _) = a_manifest_and_its_config();
    let (base, seen) = {
        let calls = Arc::new(Mutex::new(0u32));
        serve(move |_| {
            let mut n = calls.lock().unwrap();
            *n += 1;
            match *n {
                1 => (503, vec![], b"busy".to_vec()),
                2 => (429, vec![("Retry-After", "1".into())], vec![]),
                _ => (200, vec![("Content-Type", OCI_MANIFEST.into())], manifest_bytes.clone()),
            }
        })
        .await
    };
    let authority = base.trim_start_matches("http://").to_string();
    let client = RegistryClient::new(&RegistryConfig { insecure: vec![authority.clone()], ..Default::default() }).unwrap();
    let started = Instant::now();
    client.resolve(&reference(&format!("{authority}/a:b")), None, &host_platform()).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert!(started.elapsed() >= Duration::from_millis(1200), "backoff 200 ms, then Retry-After 1 s");

    let (base, seen) = serve(|_| (502, vec![], b"bad gateway".to_vec())).await;
    let authority = base.trim_start_matches("http://").to_string();
    let client = RegistryClient::new(&RegistryConfig { insecure: vec![authority.clone()], ..Default::default() }).unwrap();
    let err = client.resolve(&reference(&format!("{authority}/a:b")), None, &host_platform()).await.unwrap_err();
    assert!(matches!(&err, RegistryError::Http { status: 502, body, .. } if body == "bad gateway"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 4);
}
