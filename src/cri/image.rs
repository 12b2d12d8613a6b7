//! CRI ImageService over berth's `ImageService`.

use std::collections::HashMap;

use base64::Engine as _;
use k8s_cri::v1 as cri;
use tonic::{Request, Response, Status};

use super::status::missing;
use crate::images::registry::Credentials;
use crate::images::{ImageService, ImageSummary};

pub struct CriImageService {
    images: ImageService,
}

impl CriImageService {
    pub fn new(images: ImageService) -> Self {
        CriImageService { images }
    }
}

fn image_spec(spec: Option<cri::ImageSpec>, field: &str) -> Result<String, Status> {
    match spec {
        Some(s) if !s.image.is_empty() => Ok(s.image),
        _ => Err(missing(field)),
    }
}

/// CRI's AuthConfig allows three shapes; the first present wins, in the order
/// kubelet itself prefers them.
fn credentials(auth: Option<cri::AuthConfig>) -> Result<Option<Credentials>, Status> {
    let Some(auth) = auth else { return Ok(None) };
    if !auth.registry_token.is_empty() {
        return Ok(Some(Credentials::RegistryToken(auth.registry_token)));
    }
    if !auth.identity_token.is_empty() {
        return Ok(Some(Credentials::IdentityToken(auth.identity_token)));
    }
    if !auth.username.is_empty() {
        return Ok(Some(Credentials::Basic { username: auth.username, password: auth.password }));
    }
    if !auth.auth.is_empty() {
        let bad = || Status::invalid_argument("auth.auth must be base64 of \"username:password\"");
        let decoded = base64::engine::general_purpose::STANDARD.decode(auth.auth.trim()).map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials::Basic { username: username.into(), password: password.into() }));
    }
    Ok(None)
}

/// containerd's rule: a numeric USER (optionally `uid:gid`) fills uid, a name
/// fills username, an empty one fills neither.
fn to_cri_image(summary: ImageSummary) -> cri::Image {
    let user = summary.user.as_deref().unwrap_or("");
    let user_part = user.split(':').next().unwrap_or("");
    let (uid, username) = match user_part.parse::<i64>() {
        Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        Err(_) => (None, user_part.to_string()),
    };
    cri::Image {
        id: summary.id,
        repo_tags: summary.repo_tags,
        repo_digests: summary.repo_digests,
        size: summary.size,
        uid,
        username,
        spec: None,
        pinned: summary.pinned,
    }
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for CriImageService {
    async fn list_images(&self, request: Request<cri::ListImagesRequest>) -> Result<Response<cri::ListImagesResponse>, Status> {
        let filter = request.into_inner().filter.and_then(|f| f.image).map(|s| s.image);
        let images = self.images.list(filter.as_deref())?;
        Ok(Response::new(cri::ListImagesResponse { images: images.into_iter().map(to_cri_image).collect() }))
    }

    async fn image_status(&self, request: Request<cri::ImageStatusRequest>) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let spec = image_spec(request.image, "image.image")?;
        let Some(summary) = self.images.status(&spec)? else {
            return Ok(Response::new(cri::ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if request.verbose {
            let config = self.images.config_json(&summary.id)?;
            let verbose = serde_json::json!({ "imageSpec": config, "pinned": summary.pinned });
            info.insert("info".to_string(), verbose.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse { image: Some(to_cri_image(summary)), info }))
    }

    async fn pull_image(&self, request: Request<cri::PullImageRequest>) -> Result<Response<cri::PullImageResponse>, Status> {
        let request = request.into_inner();
        let image = image_spec(request.image, "image.image")?;
        let credentials = credentials(request.auth)?;
        let image_ref = self.images.pull(&image, credentials).await?;
        Ok(Response::new(cri::PullImageResponse { image_ref }))
    }

    async fn remove_image(&self, request: Request<cri::RemoveImageRequest>) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let spec = image_spec(request.into_inner().image, "image.image")?;
        self.images.remove(&spec).await?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(&self, _: Request<cri::ImageFsInfoRequest>) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let usage = self.images.fs_usage()?;
        let filesystem = cri::FilesystemUsage {
            timestamp: usage.timestamp_nanos,
            fs_id: Some(cri::FilesystemIdentifier { mountpoint: usage.mountpoint.display().to_string() }),
            used_bytes: Some(cri::UInt64Value { value: usage.used_bytes }),
            inodes_used: Some(cri::UInt64Value { value: usage.inodes_used }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![filesystem.clone()],
            container_filesystems: vec![filesystem],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(user: Option<&str>) -> ImageSummary {
        ImageSummary { id: "sha256:x".into(), repo_tags: vec![], repo_digests: vec![], size: 0, user: user.map(Into::into), pinned: false }
    }

    #[test]
    fn image_user_maps_to_uid_or_username() {
        assert_eq!(to_cri_image(summary(Some("1000:1000"))).uid, Some(cri::Int64Value { value: 1000 }));
        let named = to_cri_image(summary(Some("nobody:nogroup")));
        assert_eq!((named.uid, named.username.as_str()), (None, "nobody"));
        let none = to_cri_image(summary(None));
        assert_eq!((none.uid, none.username.as_str()), (None, ""));
    }

    #[test]
    fn auth_config_shapes() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("u:p:with:colons");
        let auth = cri::AuthConfig { auth: encoded, ..Default::default() };
        assert!(matches!(credentials(Some(auth)).unwrap(), Some(Credentials::Basic { username, password }) if username == "u" && password == "p:with:colons"));
        let bad = cri::AuthConfig { auth: "%%%".into(), ..Default::default() };
        assert!(credentials(Some(bad)).unwrap_err().message().contains("auth.auth"));
    }
}
