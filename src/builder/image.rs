//! Assembling an image from a base (or scratch) and new layers: the image config
//! (run defaults, rootfs diff ids, history) and an OCI manifest are written into
//! the content store and the image is registered under its names, where CRI sees
//! it at once. The image id is the config's digest, as for pulled images. Also
//! what `inspect` and `history` show of a stored image; tagging and removal are
//! `ImageService::tag` and `ImageService::remove`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::error::BuilderError;
use super::layer::Layer;
use crate::images::ImageService;
use crate::images::compression::Compression;
use crate::images::digest::Digest;
use crate::images::manifest::{
    self, ContainerConfig, Descriptor, History, ImageConfig, Manifest, OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP,
    OCI_LAYER_NONDISTRIBUTABLE_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST, RootFs,
};
use crate::store::{ImageRecord, LayerRecord};

/// The image a new one starts from.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// None for scratch.
    pub id: Option<String>,
    pub config: ImageConfig,
    /// Bottom layer first.
    pub layers: Vec<LayerRecord>,
}

impl BaseImage {
    /// No layers, no defaults, this host's platform.
    pub fn scratch() -> BaseImage {
        let platform = manifest::host_platform();
        let config = ImageConfig {
            architecture: platform.architecture,
            os: platform.os,
            variant: platform.variant,
            rootfs: RootFs { fs_type: "layers".into(), diff_ids: Vec::new() },
            ..ImageConfig::default()
        };
        BaseImage { id: None, config, layers: Vec::new() }
    }

    /// The stored image `spec` names (a reference, an id or an id prefix).
    pub fn stored(images: &ImageService, spec: &str) -> Result<BaseImage, BuilderError> {
        let record = images.image_record(spec)?.ok_or_else(|| BuilderError::NotFound(spec.to_string()))?;
        let config = images.image_config(&record.id)?;
        Ok(BaseImage { id: Some(record.id), config, layers: record.layers })
    }
}

/// One history entry of the new image, with the layer it added, if any.
#[derive(Debug)]
pub struct HistoryStep {
    /// What made it, as `docker history` shows it (`RUN /bin/sh -c make`).
    pub created_by: String,
    pub comment: Option<String>,
    /// None for a step that changed only the config (or no files).
    pub layer: Option<Layer>,
}

/// A new image being put together: the base, the run defaults (starting as the
/// base's), and the steps on top.
#[derive(Debug)]
pub struct ImageDraft {
    pub base: BaseImage,
    pub config: ContainerConfig,
    pub author: Option<String>,
    pub steps: Vec<HistoryStep>,
    /// `SOURCE_DATE_EPOCH`: the time recorded as created, instead of now.
    pub source_date_epoch: Option<i64>,
}

impl ImageDraft {
    pub fn new(base: BaseImage) -> ImageDraft {
        let config = base.config.config.clone().unwrap_or_default();
        ImageDraft { base, config, author: None, steps: Vec::new(), source_date_epoch: None }
    }
}

/// Writes the draft's config and manifest and registers the image under `names`
/// (references; may be empty, leaving the image reachable by id). Returns the
/// image id. Blocking (it syncs the filesystem).
pub fn write_image(images: &ImageService, draft: ImageDraft, names: &[String]) -> Result<String, BuilderError> {
    let created = rfc3339(draft.source_date_epoch);
    let mut config = draft.base.config;
    // What the base's own build recorded about itself is not true of this image.
    config.extra.clear();
    config.created = Some(created.clone());
    config.author = draft.author.clone().or(config.author);
    config.config = Some(draft.config);
    let mut layers: Vec<LayerRecord> = draft.base.layers;
    for step in &draft.steps {
        config.history.push(History {
            created: Some(created.clone()),
            created_by: Some(step.created_by.clone()),
            author: draft.author.clone(),
            comment: step.comment.clone(),
            empty_layer: step.layer.is_none(),
        });
        if let Some(layer) = &step.layer {
            layers.push(layer.record());
        }
    }
    config.rootfs = RootFs {
        fs_type: "layers".into(),
        diff_ids: layers
            .iter()
            .map(|l| l.diff_id.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| BuilderError::invalid("base.layers", format!("{e}")))?,
    };
    let config_bytes = serde_json::to_vec(&config).expect("image configs always serialise");
    let config_descriptor = descriptor(OCI_CONFIG, &config_bytes);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: config_descriptor.clone(),
        layers: layers
            .iter()
            .map(|l| -> Result<Descriptor, BuilderError> {
                Ok(Descriptor {
                    media_type: oci_layer_media_type(&l.media_type),
                    digest: l.digest.parse().map_err(|e| BuilderError::invalid("base.layers", format!("{e}")))?,
                    size: l.size,
                    urls: Vec::new(),
                    annotations: Default::default(),
                    platform: None,
                })
            })
            .collect::<Result<_, _>>()?,
        annotations: Default::default(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifests always serialise");
    let manifest_digest = Digest::of(&manifest_bytes);
    let _hold = images.hold(vec![config_descriptor.digest.to_string(), manifest_digest.to_string()]);
    images.content().put(&config_descriptor.digest, &config_bytes)?;
    images.content().put(&manifest_digest, &manifest_bytes)?;
    let record = ImageRecord {
        id: config_descriptor.digest.to_string(),
        manifest: manifest_digest.to_string(),
        index: None,
        config: config_descriptor.digest.to_string(),
        size: config_descriptor.size + layers.iter().map(|l| l.size).sum::<u64>(),
        layers: layers
            .into_iter()
            .map(|l| LayerRecord { media_type: oci_layer_media_type(&l.media_type), ..l })
            .collect(),
        user: config.config.as_ref().and_then(|c| c.user.clone()).filter(|u| !u.is_empty()),
        created_unix_nanos: unix_nanos(draft.source_date_epoch),
    };
    images.register_image(&record, names)?;
    // The steps' layers are referenced by the record now; their holds may go.
    drop(draft.steps);
    Ok(record.id)
}

/// The image config of the image `spec` names, as stored.
pub fn inspect(images: &ImageService, spec: &str) -> Result<serde_json::Value, BuilderError> {
    let record = images.image_record(spec)?.ok_or_else(|| BuilderError::NotFound(spec.to_string()))?;
    Ok(images.config_json(&record.id)?)
}

/// One row of `history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    pub created: Option<String>,
    pub created_by: String,
    /// Bytes of files the step's layer holds; 0 for an empty layer.
    pub size: u64,
    pub comment: String,
    pub empty_layer: bool,
}

/// The image's history, newest first as `docker history` prints it. Each step
/// that added a layer is matched with the next layer, bottom up.
pub fn history(images: &ImageService, spec: &str) -> Result<Vec<HistoryRow>, BuilderError> {
    let record = images.image_record(spec)?.ok_or_else(|| BuilderError::NotFound(spec.to_string()))?;
    let config = images.image_config(&record.id)?;
    let mut layers = record.layers.iter();
    let mut rows = Vec::with_capacity(config.history.len());
    let layer_size = |layer: &LayerRecord| -> Result<u64, BuilderError> {
        let diff_id: Digest = layer.diff_id.parse().map_err(|e| BuilderError::invalid("layers", format!("{e}")))?;
        Ok(images.unpacked_size(&diff_id)?.unwrap_or(layer.size))
    };
    for entry in &config.history {
        let layer = if entry.empty_layer { None } else { layers.next() };
        let size = match layer {
            Some(layer) => layer_size(layer)?,
            None => 0,
        };
        rows.push(HistoryRow {
            created: entry.created.clone(),
            created_by: entry.created_by.clone().unwrap_or_default(),
            size,
            comment: entry.comment.clone().unwrap_or_default(),
            empty_layer: entry.empty_layer,
        });
    }
    // Images made without history (some tools write none) still show their layers.
    for layer in layers {
        let size = layer_size(layer)?;
        rows.push(HistoryRow {
            created: None,
            created_by: String::new(),
            size,
            comment: String::new(),
            empty_layer: false,
        });
    }
    rows.reverse();
    Ok(rows)
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
        urls: Vec::new(),
        annotations: Default::default(),
        platform: None,
    }
}

/// The OCI media type for a layer a Docker manifest listed: the bytes are the
/// same, and an OCI manifest must not mix in Docker's types.
fn oci_layer_media_type(media_type: &str) -> String {
    if media_type.starts_with("application/vnd.oci.") {
        return media_type.to_string();
    }
    if media_type == manifest::DOCKER_LAYER_FOREIGN_GZIP {
        return OCI_LAYER_NONDISTRIBUTABLE_GZIP.to_string();
    }
    match Compression::from_media_type(media_type) {
        Some(Compression::None) => OCI_LAYER,
        Some(Compression::Zstd) => OCI_LAYER_ZSTD,
        Some(Compression::Gzip) | None => OCI_LAYER_GZIP,
    }
    .to_string()
}

fn created_time(source_date_epoch: Option<i64>) -> SystemTime {
    match source_date_epoch {
        Some(epoch) => UNIX_EPOCH + Duration::from_secs(epoch.max(0) as u64),
        None => SystemTime::now(),
    }
}

fn rfc3339(source_date_epoch: Option<i64>) -> String {
    crate::shim::rfc3339_nano(created_time(source_date_epoch))
}

pub(super) fn unix_nanos(source_date_epoch: Option<i64>) -> i64 {
    created_time(source_date_epoch).duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}
