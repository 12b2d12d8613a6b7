//! Client for the OCI distribution API (v2): resolves references to platform
//! manifests through mirrors and the registry itself, and fetches blobs.

mod auth;
mod endpoint;
mod push;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use serde::Deserialize;

pub use auth::Credentials;
pub use push::PushBlob;
use auth::{Authorization, Scheme, TokenCache, TokenKey};
use endpoint::Endpoint;

use crate::config::RegistryConfig;
use crate::images::digest::Digest;
use crate::images::manifest::{
    self, DOCKER_MANIFEST_SCHEMA1, DOCKER_MANIFEST_SCHEMA1_SIGNED, Descriptor, Index, Manifest, OCI_INDEX, OCI_MANIFEST,
    Platform,
};
use crate::images::reference::Reference;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Total time for requests whose bodies are small (manifests, configs).
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// A manifest fetched by tag has no declared size; containerd bounds it so too.
const MANIFEST_LIMIT: u64 = 4 << 20;
/// How deep an index may nest indexes before the platform's manifest.
const MAX_INDEX_DEPTH: usize = 4;
/// A layer download must receive at least this much per stall timeout: a registry
/// trickling a few bytes a second is as stuck as a silent one.
const MIN_PROGRESS_BYTES: u64 = 1024;
const SMALL_BLOB_LIMIT: u64 = 16 << 20;
const MAX_TRIES: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// A longer Retry-After than this is not waited for; the ordinary backoff applies.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
const ERROR_SNIPPET_LEN: usize = 512;
const USER_AGENT: &str = concat!("berth/", env!("CARGO_PKG_VERSION"));

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{reference} not found at {endpoint}")]
    NotFound { reference: String, endpoint: String },
    #[error("unauthorized at {registry}: {detail}")]
    Unauthorized { registry: String, detail: String },
    #[error("content digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("{reference}: no manifest for platform {platform} (the index offers: {})", available.join(", "))]
    NoMatchingPlatform { reference: String, platform: String, available: Vec<String> },
    #[error("{what}: unsupported media type {media_type}")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("{url}: invalid manifest: {reason}")]
    InvalidManifest { url: String, reason: String },
    #[error("{url}: HTTP {status}: {body}")]
    Http { url: String, status: u16, body: String },
    #[error("{url}: {}", error_chain(source))]
    Transport { url: String, source: reqwest::Error },
    #[error("{url}: the response is larger than the {limit}-byte limit")]
    TooLarge { url: String, limit: u64 },
    #[error("blob {digest}: the registry sent more than the {declared} bytes the descriptor declares ({received} bytes received)")]
    LongerThanDeclared { digest: Digest, declared: u64, received: u64 },
    #[error("blob {digest}: the registry's body ended after {received} of the {declared} bytes the descriptor declares")]
    ShorterThanDeclared { digest: Digest, declared: u64, received: u64 },
    #[error("{url}: download stalled: less than {MIN_PROGRESS_BYTES} bytes arrived in {} s \
             (registry.download_stall_timeout_seconds); {received} of {declared} bytes received", timeout.as_secs())]
    Stalled { url: String, timeout: Duration, received: u64, declared: u64 },
    #[error("{reference}: the index nests indexes more than {MAX_INDEX_DEPTH} deep before a manifest for {platform}")]
    NestedIndexTooDeep { reference: String, platform: String },
    #[error("registry.mirrors[{registry:?}]: endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { registry: String, endpoint: String, reason: String },
    #[error("building the HTTP client: {}", error_chain(.0))]
    Client(#[source] reqwest::Error),
    /// Every endpoint (mirrors, then the registry) failed; `cause` is the most
    /// telling of their errors, `attempts` lists each endpoint with its error.
    #[error("{reference}: {cause} (tried {})", attempts.join("; "))]
    AllEndpointsFailed { reference: String, attempts: Vec<String>, cause: Box<RegistryError> },
}

impl RegistryError {
    pub fn is_not_found(&self) -> bool {
        matches!(self.cause(), RegistryError::NotFound { .. })
    }

    /// The error that decided the outcome: for `AllEndpointsFailed` its most
    /// telling endpoint error, otherwise the error itself.
    pub fn cause(&self) -> &RegistryError {
        match self {
            RegistryError::AllEndpointsFailed { cause, .. } => cause,
            other => other,
        }
    }

    /// Errors that say something about the image or the credentials rank above
    /// errors that only say an endpoint could not be used.
    fn specificity(&self) -> u8 {
        match self {
            RegistryError::Transport { .. } | RegistryError::Client(_) | RegistryError::InvalidEndpoint { .. } => 0,
            RegistryError::Http { .. } => 1,
            _ => 2,
        }
    }
}

/// reqwest's own message is only the outermost layer ("error sending request");
/// the reason (connection refused, certificate, timeout) is further down.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

/// A manifest or index exactly as the registry served it.
#[derive(Debug, Clone)]
pub struct RawManifest {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Bytes,
}

#[derive(Debug)]
pub struct Resolved {
    /// The endpoint that answered, with the repository and auth state; used for the blobs.
    pub source: BlobSource,
    /// Digest of what the reference named (the index when there was one): Docker's RepoDigest.
    pub repo_digest: Digest,
    pub index: Option<RawManifest>,
    /// The manifest for the requested platform.
    pub manifest: RawManifest,
    pub parsed: Manifest,
}

pub type BlobStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, RegistryError>> + Send>>;

#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    verifying: reqwest::Client,
    /// For https endpoints on hosts listed as insecure.
    unverified: reqwest::Client,
    mirrors: BTreeMap<String, Vec<Arc<Endpoint>>>,
    insecure: Vec<String>,
    /// The config's credentials per endpoint authority, for requests without their own.
    auths: BTreeMap<String, Arc<Credentials>>,
    tokens: TokenCache,
    /// `registry.download_stall_timeout_seconds`.
    stall_timeout: Duration,
}

impl RegistryClient {
    pub fn new(config: &RegistryConfig) -> Result<RegistryClient, RegistryError> {
        let stall_timeout = Duration::from_secs(config.download_stall_timeout_seconds.max(1));
        let builder = || {
            // A read that waits this long is a stall (manifests, configs, tokens);
            // layer bodies also get the progress check of `open_blob`.
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(stall_timeout)
                .user_agent(USER_AGENT)
        };
        let verifying = builder().build().map_err(RegistryError::Client)?;
        let unverified = builder().danger_accept_invalid_certs(true).build().map_err(RegistryError::Client)?;
        let mut mirrors = BTreeMap::new();
        for (registry, urls) in &config.mirrors {
            let endpoints = urls
                .iter()
                .map(|url| Endpoint::mirror(registry, url, &config.insecure).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?;
            mirrors.insert(registry.clone(), endpoints);
        }
        Ok(RegistryClient {
            inner: Arc::new(ClientInner {
                verifying,
                unverified,
                mirrors,
                insecure: config.insecure.clone(),
                auths: config
                    .auths
                    .iter()
                    .map(|(host, auth)| {
                        let credentials =
                            Credentials::Basic { username: auth.username.clone(), password: auth.password.clone() };
                        (host.clone(), Arc::new(credentials))
                    })
                    .collect(),
                tokens: TokenCache::default(),
                stall_timeout,
            }),
        })
    }

    /// Fetches what `reference` names (by digest when it has one, else by tag),
    /// follows an index/manifest list to the manifest for `platform`, and returns
    /// it. Tries each mirror of `reference.registry()` in order, then the
    /// registry itself.
    pub async fn resolve(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
        platform: &Platform,
    ) -> Result<Resolved, RegistryError> {
        let mirrors = self.inner.mirrors.get(reference.registry()).cloned().unwrap_or_default();
        let mut failures = Vec::new();
        for mirror in mirrors {
            match self.resolve_at(mirror, reference, credentials, platform).await {
                Ok(resolved) => return Ok(resolved),
                Err((endpoint, error)) => {
                    tracing::warn!(endpoint, %reference, %error, "registry mirror failed, trying the next endpoint");
                    failures.push((endpoint, error));
                }
            }
        }
        let upstream = Arc::new(Endpoint::upstream(reference.registry(), &self.inner.insecure));
        self.resolve_at(upstream, reference, credentials, platform)
            .await
            .map_err(|last| most_telling(reference, failures, last))
    }

    /// The request's own credentials, else the config's for that endpoint.
    fn credentials_for(&self, endpoint: &Endpoint, given: Option<&Credentials>) -> Option<Arc<Credentials>> {
        match given {
            Some(credentials) => Some(Arc::new(credentials.clone())),
            None => self.inner.auths.get(&endpoint.authority).cloned(),
        }
    }

    async fn resolve_at(
        &self,
        endpoint: Arc<Endpoint>,
        reference: &Reference,
        credentials: Option<&Credentials>,
        platform: &Platform,
    ) -> Result<Resolved, (String, RegistryError)> {
        let source = BlobSource {
            client: self.clone(),
            credentials: self.credentials_for(&endpoint, credentials),
            endpoint,
            repository: reference.repository().into(),
            scheme: Arc::default(),
            actions: "pull",
        };
        tracing::debug!(endpoint = source.endpoint(), %reference, %platform, "resolving");
        source.resolve(reference, platform).await.map_err(|error| {
            tracing::debug!(endpoint = source.endpoint(), %reference, %error, "endpoint failed");
            (source.endpoint().to_string(), error)
        })
    }

    fn http(&self, skip_tls_verify: bool) -> &reqwest::Client {
        if skip_tls_verify { &self.inner.unverified } else { &self.inner.verifying }
    }
}

/// The error to report when every endpoint failed: the most specific one (the
/// last among equals), with every attempt named.
fn most_telling(
    reference: &Reference,
    mut failures: Vec<(String, RegistryError)>,
    last: (String, RegistryError),
) -> RegistryError {
    if failures.is_empty() {
        return last.1;
    }
    failures.push(last);
    let attempts = failures.iter().map(|(endpoint, error)| format!("{endpoint}: {error}")).collect();
    let mut chosen = 0;
    for (n, (_, error)) in failures.iter().enumerate() {
        if error.specificity() >= failures[chosen].1.specificity() {
            chosen = n;
        }
    }
    RegistryError::AllEndpointsFailed {
        reference: reference.to_string(),
        attempts,
        cause: Box::new(failures.swap_remove(chosen).1),
    }
}

/// One endpoint and repository, with what was learned about authenticating there.
/// Cheap to clone; clones share the auth state.
#[derive(Clone)]
pub struct BlobSource {
    client: RegistryClient,
    endpoint: Arc<Endpoint>,
    repository: Arc<str>,
    credentials: Option<Arc<Credentials>>,
    scheme: Arc<Mutex<Option<Scheme>>>,
    /// The token scope's actions: `pull`, or `pull,push` for a push.
    actions: &'static str,
}

impl fmt::Debug for BlobSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobSource")
            .field("endpoint", &self.endpoint())
            .field("repository", &self.repository)
            .finish_non_exhaustive()
    }
}

impl BlobSource {
    /// The endpoint URL, for logs.
    pub fn endpoint(&self) -> &str {
        self.endpoint.url()
    }

    /// A small blob (an image config) in one piece, size-capped and digest-verified.
    pub async fn fetch_blob(&self, desc: &Descriptor) -> Result<Bytes, RegistryError> {
        let url = self.endpoint.blob_url(&self.repository, &desc.digest.to_string());
        if desc.size > SMALL_BLOB_LIMIT {
            return Err(RegistryError::TooLarge { url, limit: SMALL_BLOB_LIMIT });
        }
        let response = self.get(&url, None, Some(SMALL_REQUEST_TIMEOUT)).await?;
        let response = self.check_status(response, &url, || format!("{}@{}", self.repository, desc.digest)).await?;
        let bytes = read_declared(response, &desc.digest, desc.size, &url).await?;
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(RegistryError::DigestMismatch { expected: desc.digest.clone(), actual });
        }
        Ok(bytes)
    }

    /// A large blob (a layer) as a stream of chunks. Failures before the body
    /// starts are retried; a failure mid-body comes out of the stream. The caller
    /// verifies the digest while consuming it; the stream itself ends in an error
    /// as soon as the body exceeds the declared size, ends short of it, or stalls
    /// (see `MIN_PROGRESS_BYTES`), so nothing beyond the declared size is ever
    /// handed on. Dropping the stream closes the connection.
    pub async fn open_blob(&self, desc: &Descriptor) -> Result<BlobStream, RegistryError> {
        let url = self.endpoint.blob_url(&self.repository, &desc.digest.to_string());
        tracing::debug!(%url, size = desc.size, "opening blob");
        let response = self.get(&url, None, None).await?;
        let response = self.check_status(response, &url, || format!("{}@{}", self.repository, desc.digest)).await?;
        let (digest, declared) = (desc.digest.clone(), desc.size);
        if let Some(length) = response.content_length().filter(|&length| length > declared) {
            return Err(RegistryError::LongerThanDeclared { digest, declared, received: length });
        }
        let progress = Progress {
            body: Box::pin(response.bytes_stream()),
            url,
            digest,
            declared,
            received: 0,
            stall_timeout: self.client.inner.stall_timeout,
            window_bytes: 0,
            window_waited: Duration::ZERO,
        };
        Ok(Box::pin(futures::stream::unfold(Some(progress), |state| async move {
            let mut progress = state?;
            match progress.next().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(progress))),
                Ok(None) => None,
                // The first error ends the stream.
                Err(error) => Some((Err(error), None)),
            }
        })))
    }

    async fn resolve(&self, reference: &Reference, platform: &Platform) -> Result<Resolved, RegistryError> {
        let top = match (reference.digest(), reference.tag()) {
            (Some(digest), _) => self.fetch_manifest(&digest.to_string(), Some((digest, MANIFEST_LIMIT))).await?,
            (None, Some(tag)) => self.fetch_manifest(tag, None).await?,
            (None, None) => self.fetch_manifest("latest", None).await?,
        };
        let repo_digest = top.digest.clone();
        // An index may name further indexes; they are followed to the manifest,
        // a bounded number of levels deep. Only the top index is kept.
        let mut index = None;
        let mut manifest = top;
        for depth in 0.. {
            if !manifest::is_index_media_type(&manifest.media_type) {
                break;
            }
            if depth == MAX_INDEX_DEPTH {
                return Err(RegistryError::NestedIndexTooDeep {
                    reference: reference.to_string(),
                    platform: platform.to_string(),
                });
            }
            let url = self.endpoint.manifest_url(&self.repository, &manifest.digest.to_string());
            let parsed: Index = parse_document(&manifest.bytes, &url)?;
            let Some(chosen) = manifest::select_platform(&parsed, platform) else {
                return Err(RegistryError::NoMatchingPlatform {
                    reference: reference.to_string(),
                    platform: platform.to_string(),
                    available: parsed.manifests.iter().filter_map(|d| d.platform.as_ref().map(Platform::to_string)).collect(),
                });
            };
            tracing::debug!(%reference, %platform, digest = %chosen.digest, depth, "index entry chosen");
            let child = self.fetch_manifest(&chosen.digest.to_string(), Some((&chosen.digest, chosen.size))).await?;
            index.get_or_insert(std::mem::replace(&mut manifest, child));
        }
        if !manifest::is_manifest_media_type(&manifest.media_type) {
            return Err(RegistryError::UnsupportedMediaType {
                what: format!("{reference} manifest {}", manifest.digest),
                media_type: manifest.media_type,
            });
        }
        let url = self.endpoint.manifest_url(&self.repository, &manifest.digest.to_string());
        let parsed: Manifest = parse_document(&manifest.bytes, &url)?;
        if !manifest::is_config_media_type(&parsed.config.media_type) {
            // Artifacts (Helm charts, signatures, ...) share the manifest format but are not images.
            return Err(RegistryError::UnsupportedMediaType {
                what: format!("{reference} config {}", parsed.config.digest),
                media_type: parsed.config.media_type,
            });
        }
        Ok(Resolved { source: self.clone(), repo_digest, index, manifest, parsed })
    }

    /// Fetches a manifest or index by tag or digest; by digest the bytes must hash
    /// to it, by tag they must agree with `Docker-Content-Digest` when it is sent.
    /// `expected` carries the digest with the size an index declares for it (or
    /// `MANIFEST_LIMIT` when nothing declares one); by tag `MANIFEST_LIMIT` bounds it.
    async fn fetch_manifest(&self, tag_or_digest: &str, expected: Option<(&Digest, u64)>) -> Result<RawManifest, RegistryError> {
        let url = self.endpoint.manifest_url(&self.repository, tag_or_digest);
        let response = self.get(&url, Some(MANIFEST_ACCEPT), Some(SMALL_REQUEST_TIMEOUT)).await?;
        let separator = if expected.is_some() { '@' } else { ':' };
        let response = self.check_status(response, &url, || format!("{}{separator}{tag_or_digest}", self.repository)).await?;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string());
        // Another algorithm (sha512) cannot be cross-checked and is ignored.
        let announced = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let bytes = match expected {
            Some((digest, size)) if size < MANIFEST_LIMIT => read_declared(response, digest, size, &url).await?,
            _ => read_capped(response, MANIFEST_LIMIT, &url).await?,
        };
        let digest = Digest::of(&bytes);
        if let Some(expected) = expected.map(|(d, _)| d).or(announced.as_ref())
            && *expected != digest
        {
            return Err(RegistryError::DigestMismatch { expected: expected.clone(), actual: digest });
        }
        let media_type = manifest_media_type(content_type.as_deref(), &bytes, &url)?;
        tracing::debug!(%url, %media_type, %digest, "manifest fetched");
        Ok(RawManifest { media_type, digest, bytes })
    }

    /// GET with retries and authentication; see `send`.
    async fn get(&self, url: &str, accept: Option<&str>, timeout: Option<Duration>) -> Result<reqwest::Response, RegistryError> {
        let http = self.client.http(self.endpoint.skip_tls_verify);
        self.send(url, || {
            let mut request = http.get(url);
            if let Some(accept) = accept {
                request = request.header(reqwest::header::ACCEPT, accept);
            }
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            request
        })
        .await
    }

    /// Sends the request `make` builds, with retries and authentication:
    /// anonymous until the endpoint challenges, then answering the challenge once
    /// per request. `make` is called for every attempt, so a body is rebuilt.
    async fn send(&self, url: &str, make: impl Fn() -> reqwest::RequestBuilder) -> Result<reqwest::Response, RegistryError> {
        let mut answered_challenge = false;
        loop {
            let scheme = self.scheme.lock().unwrap_or_else(PoisonError::into_inner).clone();
            let authorization = match &scheme {
                Some(scheme) => Some(self.authorization(scheme).await?),
                None => None,
            };
            let response = send_with_retries(url, || match &authorization {
                Some(authorization) => authorization.apply(make()),
                None => make(),
            })
            .await?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            let challenges = auth::parse_challenges(response.headers().get_all(WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()));
            let body = snippet(response).await;
            if answered_challenge {
                let who = if self.credentials.is_some() { "with the given credentials" } else { "anonymously" };
                return Err(self.unauthorized(format!("access to {} refused {who} (HTTP 401): {body}", self.repository)));
            }
            let Some(next) = auth::usable_scheme(&challenges) else {
                return Err(self.unauthorized(format!("{url} answered 401 without a Basic or Bearer challenge: {body}")));
            };
            if let Some(Scheme::Bearer { realm, service }) = &scheme {
                // The cached token was refused (expired early or revoked): fetch a fresh one.
                self.client.inner.tokens.remove(&self.token_key(realm, service.as_deref()));
            }
            tracing::debug!(endpoint = self.endpoint(), challenge = ?next, "challenged, authenticating");
            *self.scheme.lock().unwrap_or_else(PoisonError::into_inner) = Some(next);
            answered_challenge = true;
        }
    }

    async fn authorization(&self, scheme: &Scheme) -> Result<Authorization, RegistryError> {
        match (scheme, self.credentials.as_deref()) {
            (Scheme::Basic, Some(Credentials::Basic { username, password })) => {
                Ok(Authorization::Basic { username: username.clone(), password: password.clone() })
            }
            (Scheme::Basic, _) => Err(self.unauthorized("the registry asks for a username and password".into())),
            (Scheme::Bearer { .. }, Some(Credentials::RegistryToken(token))) => Ok(Authorization::Bearer(token.clone())),
            (Scheme::Bearer { realm, service }, credentials) => {
                let key = self.token_key(realm, service.as_deref());
                if let Some(token) = self.client.inner.tokens.get(&key) {
                    return Ok(Authorization::Bearer(token));
                }
                let http = self.client.http(auth::realm_needs_insecure_tls(realm, &self.client.inner.insecure));
                let (token, valid_for) =
                    auth::request_token(http, &self.endpoint.authority, realm, service.as_deref(), &key.scope, credentials)
                        .await?;
                tracing::debug!(realm, scope = key.scope, ?valid_for, "bearer token obtained");
                self.client.inner.tokens.insert(key, token.clone(), valid_for);
                Ok(Authorization::Bearer(token))
            }
        }
    }

    fn token_key(&self, realm: &str, service: Option<&str>) -> TokenKey {
        let scope = format!("repository:{}:{}", self.repository, self.actions);
        TokenKey::new(realm, service, &scope, self.credentials.as_deref())
    }

    fn unauthorized(&self, detail: String) -> RegistryError {
        RegistryError::Unauthorized { registry: self.endpoint.authority.clone(), detail }
    }

    /// Turns an unsuccessful status into the error naming `what` was asked for.
    async fn check_status(
        &self,
        response: reqwest::Response,
        url: &str,
        what: impl FnOnce() -> String,
    ) -> Result<reqwest::Response, RegistryError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = snippet(response).await;
        Err(match status {
            StatusCode::NOT_FOUND => RegistryError::NotFound { reference: what(), endpoint: self.endpoint().to_string() },
            StatusCode::FORBIDDEN => self.unauthorized(format!("access to {} denied (HTTP 403): {body}", what())),
            _ => RegistryError::Http { url: url.to_string(), status: status.as_u16(), body },
        })
    }
}

/// Sends the request `make` builds, again on connection failures, timeouts
/// before an answer, 429 and 502/503/504, with exponential backoff (or a short
/// Retry-After). The last answer is returned as it is, whatever its status.
pub(super) async fn send_with_retries(
    url: &str,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, RegistryError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let backoff = FIRST_BACKOFF * 2u32.pow(attempt - 1);
        let last_try = attempt >= MAX_TRIES;
        match make().send().await {
            Ok(response) if !last_try && is_retryable(response.status()) => {
                let delay = retry_after(&response).unwrap_or(backoff);
                tracing::debug!(url, status = %response.status(), attempt, ?delay, "retrying");
                tokio::time::sleep(delay).await;
            }
            Ok(response) => return Ok(response),
            // A read timeout is a stall (`download_stall_timeout_seconds`), which
            // fails the request rather than waiting that long again.
            Err(error) if !last_try && error.is_connect() => {
                tracing::debug!(url, error = error_chain(&error), attempt, delay = ?backoff, "retrying");
                tokio::time::sleep(backoff).await;
            }
            Err(source) => return Err(RegistryError::Transport { url: url.to_string(), source }),
        }
    }
}

fn is_retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Retry-After in seconds, when it is short enough to wait for.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds: u64 = response.headers().get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds)).filter(|d| *d <= MAX_RETRY_AFTER)
}

/// The whole body, refused as soon as it is known to exceed `limit`.
pub(super) async fn read_capped(mut response: reqwest::Response, limit: u64, url: &str) -> Result<Bytes, RegistryError> {
    let too_large = || RegistryError::TooLarge { url: url.to_string(), limit };
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|source| RegistryError::Transport { url: url.to_string(), source })? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The whole body of a blob whose descriptor declares `declared` bytes: refused
/// as soon as it is known to be longer, and when it ends shorter.
async fn read_declared(
    mut response: reqwest::Response,
    digest: &Digest,
    declared: u64,
    url: &str,
) -> Result<Bytes, RegistryError> {
    let longer = |received| RegistryError::LongerThanDeclared { digest: digest.clone(), declared, received };
    if let Some(length) = response.content_length().filter(|&length| length > declared) {
        return Err(longer(length));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|source| RegistryError::Transport { url: url.to_string(), source })? {
        let received = (body.len() + chunk.len()) as u64;
        if received > declared {
            return Err(longer(received));
        }
        body.extend_from_slice(&chunk);
    }
    if (body.len() as u64) < declared {
        return Err(RegistryError::ShorterThanDeclared { digest: digest.clone(), declared, received: body.len() as u64 });
    }
    Ok(body.freeze())
}

/// A layer body being received, with the checks `open_blob` promises.
struct Progress {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, reqwest::Error>> + Send>>,
    url: String,
    digest: Digest,
    declared: u64,
    received: u64,
    stall_timeout: Duration,
    /// Bytes and time spent waiting on the network since the window began; a
    /// window closes once it has `MIN_PROGRESS_BYTES`. Time the consumer takes
    /// (a slow disk pushing back) is not counted.
    window_bytes: u64,
    window_waited: Duration,
}

impl Progress {
    async fn next(&mut self) -> Result<Option<Bytes>, RegistryError> {
        let budget = self.stall_timeout.saturating_sub(self.window_waited);
        let started = tokio::time::Instant::now();
        let next = tokio::time::timeout(budget, self.body.next()).await;
        self.window_waited += started.elapsed();
        let chunk = match next {
            Err(_) => return Err(self.stalled()),
            Ok(None) if self.received < self.declared => {
                return Err(RegistryError::ShorterThanDeclared {
                    digest: self.digest.clone(),
                    declared: self.declared,
                    received: self.received,
                });
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(source))) if source.is_timeout() => return Err(self.stalled()),
            Ok(Some(Err(source))) => return Err(RegistryError::Transport { url: self.url.clone(), source }),
            Ok(Some(Ok(chunk))) => chunk,
        };
        self.received += chunk.len() as u64;
        if self.received > self.declared {
            return Err(RegistryError::LongerThanDeclared {
                digest: self.digest.clone(),
                declared: self.declared,
                received: self.received,
            });
        }
        self.window_bytes += chunk.len() as u64;
        if self.window_bytes >= MIN_PROGRESS_BYTES {
            (self.window_bytes, self.window_waited) = (0, Duration::ZERO);
        }
        Ok(Some(chunk))
    }

    fn stalled(&self) -> RegistryError {
        RegistryError::Stalled {
            url: self.url.clone(),
            timeout: self.stall_timeout,
            received: self.received,
            declared: self.declared,
        }
    }
}

/// The start of an error body, for messages; reading stops after a few hundred bytes.
pub(super) async fn snippet(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_SNIPPET_LEN {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    match text.char_indices().nth(ERROR_SNIPPET_LEN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

fn parse_document<T: serde::de::DeserializeOwned>(bytes: &[u8], url: &str) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::InvalidManifest { url: url.to_string(), reason: e.to_string() })
}

/// The media type of a fetched manifest: the Content-Type when it names a
/// manifest type, otherwise the document's own `mediaType`, otherwise its shape.
/// The two may not disagree, so that a document cannot be read as another kind.
fn manifest_media_type(content_type: Option<&str>, bytes: &[u8], url: &str) -> Result<String, RegistryError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Shape {
        schema_version: Option<u32>,
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let invalid = |reason: String| RegistryError::InvalidManifest { url: url.to_string(), reason };
    let shape: Shape = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let is_schema1 = |t: &str| t == DOCKER_MANIFEST_SCHEMA1 || t == DOCKER_MANIFEST_SCHEMA1_SIGNED;
    let known = |t: &str| manifest::is_manifest_media_type(t) || manifest::is_index_media_type(t) || is_schema1(t);
    let media_type = match (content_type.filter(|t| known(t)), shape.media_type.as_deref()) {
        (Some(header), Some(declared)) if header != declared => {
            return Err(invalid(format!("Content-Type {header} disagrees with the document's mediaType {declared}")));
        }
        (Some(header), _) => header.to_string(),
        (None, Some(declared)) => declared.to_string(),
        (None, None) if shape.schema_version == Some(1) => DOCKER_MANIFEST_SCHEMA1.to_string(),
        (None, None) if shape.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) if shape.config.is_some() => OCI_MANIFEST.to_string(),
        (None, None) => return Err(invalid("neither the Content-Type nor the document names a manifest type".into())),
    };
    if is_schema1(&media_type) || shape.schema_version == Some(1) {
        return Err(RegistryError::UnsupportedMediaType {
            what: format!("{url} (Docker schema 1 manifests are not supported; push the image with a current client)"),
            media_type,
        });
    }
    if !manifest::is_manifest_media_type(&media_type) && !manifest::is_index_media_type(&media_type) {
        return Err(RegistryError::UnsupportedMediaType { what: url.to_string(), media_type });
    }
    Ok(media_type)
}
