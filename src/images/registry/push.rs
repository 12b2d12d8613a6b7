//! Pushing an image with the distribution API: each blob unless the repository
//! has it already (HEAD), uploaded with a POST that opens an upload session and
//! one PUT that carries the whole blob and closes it; then the manifest. Pushes go
//! to the registry itself, never to a mirror, with a token scoped `pull,push`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};

use super::endpoint::Endpoint;
use super::{BlobSource, RawManifest, RegistryClient, RegistryError, SMALL_REQUEST_TIMEOUT, snippet};
use crate::images::digest::Digest;
use crate::images::manifest::Descriptor;
use crate::images::reference::Reference;

/// A blob to push and the file that holds it.
#[derive(Debug, Clone)]
pub struct PushBlob {
    pub descriptor: Descriptor,
    pub path: PathBuf,
}

impl RegistryClient {
    /// Pushes `blobs` (layers and config) and then `manifest` to `target`'s
    /// repository, under its tag (or its digest when it has no tag). Returns the
    /// digest the registry stored the manifest under.
    pub async fn push(
        &self,
        target: &Reference,
        credentials: Option<&super::Credentials>,
        blobs: &[PushBlob],
        manifest: &RawManifest,
    ) -> Result<Digest, RegistryError> {
        let endpoint = Arc::new(Endpoint::upstream(target.registry(), &self.inner.insecure));
        let destination = BlobSource {
            client: self.clone(),
            credentials: self.credentials_for(&endpoint, credentials),
            endpoint,
            repository: target.repository().into(),
            scheme: Arc::default(),
            actions: "pull,push",
        };
        for blob in blobs {
            if destination.has_blob(&blob.descriptor).await? {
                tracing::debug!(digest = %blob.descriptor.digest, "blob already in the repository");
                continue;
            }
            destination.upload(blob).await?;
        }
        let tag_or_digest = match target.tag() {
            Some(tag) if target.digest().is_none() => tag.to_string(),
            _ => manifest.digest.to_string(),
        };
        destination.put_manifest(&tag_or_digest, manifest).await
    }
}

impl BlobSource {
    async fn has_blob(&self, desc: &Descriptor) -> Result<bool, RegistryError> {
        let url = self.endpoint.blob_url(&self.repository, &desc.digest.to_string());
        let http = self.client.http(self.endpoint.skip_tls_verify);
        let response = self.send(&url, || http.head(&url).timeout(SMALL_REQUEST_TIMEOUT)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(false),
            _ => {
                self.check_status(response, &url, || format!("{}@{}", self.repository, desc.digest)).await.map(|_| true)
            }
        }
    }

    async fn upload(&self, blob: &PushBlob) -> Result<(), RegistryError> {
        let desc = &blob.descriptor;
        let what = || format!("{}@{}", self.repository, desc.digest);
        let http = self.client.http(self.endpoint.skip_tls_verify);
        let start = format!("{}/{}/blobs/uploads/", self.endpoint.api_base, self.repository);
        let response =
            self.send(&start, || http.post(&start).header(CONTENT_LENGTH, 0).timeout(SMALL_REQUEST_TIMEOUT)).await?;
        let response = self.check_status(response, &start, what).await?;
        let location =
            response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| RegistryError::Http {
                url: start.clone(),
                status: response.status().as_u16(),
                body: "the upload session was opened without a Location header".into(),
            })?;
        // The Location may be relative, and may carry a query (the session state)
        // that the digest is added to.
        let mut url =
            reqwest::Url::parse(&start).and_then(|base| base.join(location)).map_err(|e| RegistryError::Http {
                url: start.clone(),
                status: 202,
                body: format!("unusable upload Location {location:?}: {e}"),
            })?;
        url.query_pairs_mut().append_pair("digest", &desc.digest.to_string());
        let url = url.to_string();
        tracing::debug!(digest = %desc.digest, size = desc.size, "uploading blob");
        let response = self
            .send(&url, || {
                http.put(&url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, desc.size)
                    .body(file_body(&blob.path))
            })
            .await?;
        self.check_status(response, &url, what).await?;
        Ok(())
    }

    async fn put_manifest(&self, tag_or_digest: &str, manifest: &RawManifest) -> Result<Digest, RegistryError> {
        let url = self.endpoint.manifest_url(&self.repository, tag_or_digest);
        let http = self.client.http(self.endpoint.skip_tls_verify);
        let body = manifest.bytes.clone();
        let response = self
            .send(&url, || {
                http.put(&url)
                    .header(CONTENT_TYPE, &manifest.media_type)
                    .body(body.clone())
                    .timeout(SMALL_REQUEST_TIMEOUT)
            })
            .await?;
        let response = self.check_status(response, &url, || format!("{}:{tag_or_digest}", self.repository)).await?;
        let stored =
            response.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        match stored {
            Some(stored) if stored != manifest.digest => {
                let body = snippet(response).await;
                tracing::warn!(%url, %stored, sent = %manifest.digest, body, "registry stored the manifest under another digest");
                Err(RegistryError::DigestMismatch { expected: manifest.digest.clone(), actual: stored })
            }
            _ => Ok(manifest.digest.clone()),
        }
    }
}

/// The blob file as a streamed request body, opened anew for every attempt. A
/// file that cannot be opened fails the request with that error.
fn file_body(path: &Path) -> reqwest::Body {
    match std::fs::File::open(path) {
        Ok(file) => reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file))),
        Err(e) => {
            let e = std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
            reqwest::Body::wrap_stream(futures::stream::once(async move { Err::<Bytes, _>(e) }))
        }
    }
}
