//! Image archives. `save` writes an OCI image layout as a tar (`oci-layout`,
//! `index.json` whose entries carry the image names, `blobs/sha256/…`) plus the
//! `manifest.json` that `docker load` reads, pointing into the same blobs, as
//! Docker 25 writes them. `load` reads that format, plain OCI layouts (skopeo,
//! buildkit) and the older `docker save` format (`<id>/layer.tar`, possibly
//! symlinked between images), and registers the images under their names.
//!
//! Names inside a loaded archive never become paths: every file is staged under
//! a number in a scratch directory of the image store and looked up by its
//! archive name; blobs are verified against their digests and layers unpacked by
//! the same safe unpacker as a pull.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::error::BuilderError;
use crate::images::ImageService;
use crate::images::compression::Compression;
use crate::images::digest::Digest;
use crate::images::manifest::{
    self, Descriptor, ImageConfig, Index, Manifest, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD,
    OCI_MANIFEST,
};
use crate::images::reference::Reference;
use crate::store::{ImageRecord, LayerRecord};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Hops of symlinks (docker save links shared layers) followed before giving up.
const MAX_ALIAS_HOPS: usize = 8;

/// One entry of Docker's `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// An image `load` registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    pub id: String,
    pub names: Vec<String>,
}

/// Writes the images `specs` name into `out` as one archive. A spec that is a tag
/// saves that name; an id saves the image with all its tags. Blocking.
pub fn save(images: &ImageService, specs: &[String], out: impl Write) -> Result<(), BuilderError> {
    let mut index_entries = Vec::new();
    let mut docker_entries = Vec::new();
    let mut blobs: BTreeMap<Digest, u64> = BTreeMap::new();
    for spec in specs {
        let summary = images.status(spec)?.ok_or_else(|| BuilderError::NotFound(spec.clone()))?;
        let record = images.image_record(&summary.id)?.ok_or_else(|| BuilderError::NotFound(spec.clone()))?;
        let named = Reference::parse(spec).ok().map(|r| r.to_string()).filter(|r| summary.repo_tags.contains(r));
        let tags = match named {
            Some(name) => vec![name],
            None => summary.repo_tags.clone(),
        };
        let parse = |value: &str, field: &str| -> Result<Digest, BuilderError> {
            value.parse().map_err(|e| BuilderError::invalid(format!("image {}: {field}", record.id), format!("{e}")))
        };
        let manifest_digest = parse(&record.manifest, "manifest")?;
        let manifest_bytes = images.content().read(&manifest_digest)?;
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| BuilderError::invalid(format!("image {}: manifest", record.id), e.to_string()))?;
        blobs.insert(manifest_digest.clone(), manifest_bytes.len() as u64);
        blobs.insert(manifest.config.digest.clone(), manifest.config.size);
        for layer in &manifest.layers {
            blobs.insert(layer.digest.clone(), layer.size);
        }
        let descriptor = |annotations: BTreeMap<String, String>| Descriptor {
            media_type: manifest.media_type.clone().unwrap_or_else(|| OCI_MANIFEST.into()),
            digest: manifest_digest.clone(),
            size: manifest_bytes.len() as u64,
            urls: Vec::new(),
            annotations,
            platform: None,
        };
        if tags.is_empty() {
            index_entries.push(descriptor(BTreeMap::new()));
        }
        for tag in &tags {
            let reference = Reference::parse(tag).map_err(crate::images::ImageError::from)?;
            let mut annotations = BTreeMap::from([(CONTAINERD_IMAGE_NAME.to_string(), tag.clone())]);
            annotations.insert(REF_NAME.into(), reference.tag().unwrap_or("latest").to_string());
            index_entries.push(descriptor(annotations));
        }
        docker_entries.push(DockerManifestEntry {
            config: blob_path(&manifest.config.digest),
            repo_tags: Some(tags),
            layers: manifest.layers.iter().map(|l| blob_path(&l.digest)).collect(),
        });
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: index_entries,
        annotations: BTreeMap::new(),
    };
    let mut tar = tar::Builder::new(out);
    let write_err = |what: &str| {
        let what = what.to_string();
        move |source: io::Error| BuilderError::Io { path: what.into(), op: "writing the archive", source }
    };
    append_bytes(&mut tar, "oci-layout", OCI_LAYOUT).map_err(write_err("oci-layout"))?;
    let index_json = serde_json::to_vec(&index).expect("indexes always serialise");
    append_bytes(&mut tar, "index.json", &index_json).map_err(write_err("index.json"))?;
    let docker_json = serde_json::to_vec(&docker_entries).expect("manifest.json always serialises");
    append_bytes(&mut tar, "manifest.json", &docker_json).map_err(write_err("manifest.json"))?;
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut header = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut header, dir, io::empty()).map_err(write_err(dir))?;
    }
    for (digest, size) in blobs {
        let path = images.content().path(&digest);
        let file = File::open(&path).map_err(BuilderError::io(&path, "opening blob"))?;
        let mut header = header(tar::EntryType::Regular, 0o644, size);
        tar.append_data(&mut header, blob_path(&digest), file.take(size)).map_err(write_err(&blob_path(&digest)))?;
    }
    tar.into_inner().map_err(write_err("the archive end"))?.flush().map_err(write_err("the archive"))?;
    Ok(())
}

/// Reads an archive (OCI layout, or `docker save` output) from `archive` and
/// registers every image in it with the names it carries. Blocking.
pub fn load(images: &ImageService, archive: impl Read) -> Result<Vec<LoadedImage>, BuilderError> {
    // A scratch tree in the image store: same filesystem, removed on drop and
    // cleared at startup should a crash interrupt the load.
    let scratch = images.prepare_snapshot()?;
    let staged = stage(archive, scratch.fs_path())?;
    if staged.has("index.json") {
        load_oci_layout(images, &staged)
    } else if staged.has("manifest.json") {
        load_docker_archive(images, &staged)
    } else {
        Err(BuilderError::InvalidArchive {
            reason: "neither index.json (an OCI layout) nor manifest.json (docker save) is in it".into(),
        })
    }
}

/// The archive's files, staged under numbers and found by their archive names.
struct Staged {
    files: HashMap<String, PathBuf>,
    /// Symlinks and hard links: archive name -> the archive name they point to.
    aliases: HashMap<String, String>,
}

impl Staged {
    fn has(&self, name: &str) -> bool {
        self.resolve(name).is_ok()
    }

    fn resolve(&self, name: &str) -> Result<&Path, BuilderError> {
        let mut name =
            normalise(name).ok_or_else(|| invalid_archive(format!("{name:?} is not a path inside the archive")))?;
        for _ in 0..=MAX_ALIAS_HOPS {
            if let Some(path) = self.files.get(&name) {
                return Ok(path);
            }
            match self.aliases.get(&name) {
                Some(target) => name = target.clone(),
                None => return Err(invalid_archive(format!("{name} is missing"))),
            }
        }
        Err(invalid_archive(format!("{name}: too many links")))
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, BuilderError> {
        let path = self.resolve(name)?;
        fs::read(path).map_err(BuilderError::io(path, "reading staged file"))
    }

    /// A blob of an OCI layout, verified against its digest.
    fn blob(&self, descriptor: &Descriptor) -> Result<Vec<u8>, BuilderError> {
        let bytes = self.read(&blob_path(&descriptor.digest))?;
        let actual = Digest::of(&bytes);
        if actual != descriptor.digest {
            return Err(invalid_archive(format!("blob {} holds content with digest {actual}", descriptor.digest)));
        }
        Ok(bytes)
    }
}

fn stage(archive: impl Read, dir: &Path) -> Result<Staged, BuilderError> {
    let mut staged = Staged { files: HashMap::new(), aliases: HashMap::new() };
    let mut archive = tar::Archive::new(archive);
    let read_err = |source: io::Error| invalid_archive(format!("unreadable tar: {source}"));
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw_name = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| invalid_archive("an entry name is not UTF-8".into()))?;
        let Some(name) = normalise(&raw_name) else {
            return Err(invalid_archive(format!("entry {raw_name:?} is not a path inside the archive")));
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let path = dir.join(staged.files.len().to_string());
                let mut file = File::create(&path).map_err(BuilderError::io(&path, "staging archive entry"))?;
                io::copy(&mut entry, &mut file).map_err(read_err)?;
                staged.files.insert(name, path);
            }
            kind @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                let target = entry
                    .link_name_bytes()
                    .and_then(|t| String::from_utf8(t.into_owned()).ok())
                    .ok_or_else(|| invalid_archive(format!("link {name} has no UTF-8 target")))?;
                // A symlink's target is relative to its directory, a hard link's to the archive root.
                let target = match kind {
                    tar::EntryType::Symlink => match Path::new(&name).parent() {
                        Some(parent) => parent.join(&target).to_string_lossy().into_owned(),
                        None => target,
                    },
                    _ => target,
                };
                let target = normalise(&target)
                    .ok_or_else(|| invalid_archive(format!("link {name} points outside the archive")))?;
                staged.aliases.insert(name, target);
            }
            _ => {}
        }
    }
    Ok(staged)
}

/// The archive name `name` means (`./a/../b/` is `b`), or None when it leaves the
/// archive or names its root.
fn normalise(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn load_oci_layout(images: &ImageService, staged: &Staged) -> Result<Vec<LoadedImage>, BuilderError> {
    let index: Index = parse_json(&staged.read("index.json")?, "index.json")?;
    let mut loaded: Vec<LoadedImage> = Vec::new();
    for entry in &index.manifests {
        let descriptor = if manifest::is_index_media_type(&entry.media_type) {
            let nested: Index = parse_json(&staged.blob(entry)?, &format!("index {}", entry.digest))?;
            let platform = manifest::host_platform();
            manifest::select_platform(&nested, &platform)
                .cloned()
                .ok_or_else(|| invalid_archive(format!("index {} has no manifest for {platform}", entry.digest)))?
        } else {
            entry.clone()
        };
        let manifest_bytes = staged.blob(&descriptor)?;
        let manifest: Manifest = parse_json(&manifest_bytes, &format!("manifest {}", descriptor.digest))?;
        let config_bytes = staged.blob(&manifest.config)?;
        let layers = manifest
            .layers
            .iter()
            .map(|l| Ok((l.clone(), staged.resolve(&blob_path(&l.digest))?.to_path_buf())))
            .collect::<Result<Vec<_>, BuilderError>>()?;
        let names = name_in_index(entry).into_iter().collect::<Vec<_>>();
        let id = import_image(images, &manifest_bytes, &manifest, &config_bytes, &layers, &names)?;
        merge(&mut loaded, id, names);
    }
    Ok(loaded)
}

/// The image name an index entry carries: containerd's full name, or a ref.name
/// that is a whole reference (skopeo writes what it was given). A bare tag names
/// no repository and so no image.
fn name_in_index(entry: &Descriptor) -> Option<String> {
    let full = entry.annotations.get(CONTAINERD_IMAGE_NAME);
    let reference = entry.annotations.get(REF_NAME).filter(|r| r.contains(':') || r.contains('/'));
    full.or(reference).and_then(|name| Reference::parse(name).ok()).map(|r| r.to_string())
}

fn load_docker_archive(images: &ImageService, staged: &Staged) -> Result<Vec<LoadedImage>, BuilderError> {
    let entries: Vec<DockerManifestEntry> = parse_json(&staged.read("manifest.json")?, "manifest.json")?;
    let mut loaded: Vec<LoadedImage> = Vec::new();
    for entry in entries {
        let config_bytes = staged.read(&entry.config)?;
        let mut layers = Vec::with_capacity(entry.layers.len());
        for name in &entry.layers {
            let path = staged.resolve(name)?.to_path_buf();
            layers.push((describe_layer_file(&path)?, path));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: OCI_CONFIG.into(),
                digest: Digest::of(&config_bytes),
                size: config_bytes.len() as u64,
                urls: Vec::new(),
                annotations: BTreeMap::new(),
                platform: None,
            },
            layers: layers.iter().map(|(d, _)| d.clone()).collect(),
            annotations: BTreeMap::new(),
        };
        let manifest_bytes = serde_json::to_vec(&manifest).expect("manifests always serialise");
        let names = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| Reference::parse(t).map(|r| r.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid_archive(format!("manifest.json RepoTags: {e}")))?;
        let id = import_image(images, &manifest_bytes, &manifest, &config_bytes, &layers, &names)?;
        merge(&mut loaded, id, names);
    }
    Ok(loaded)
}

/// A layer file of a docker-save archive: its digest, size and compression.
fn describe_layer_file(path: &Path) -> Result<Descriptor, BuilderError> {
    let mut file = File::open(path).map_err(BuilderError::io(path, "opening staged layer"))?;
    let mut hasher = Sha256::new();
    let mut prefix = Vec::new();
    let mut buffer = vec![0u8; 128 << 10];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(BuilderError::io(path, "reading staged layer"))?;
        if n == 0 {
            break;
        }
        if prefix.len() < 4 {
            prefix.extend_from_slice(&buffer[..n.min(4)]);
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    let media_type = match Compression::detect(&prefix) {
        Compression::None => OCI_LAYER,
        Compression::Gzip => OCI_LAYER_GZIP,
        Compression::Zstd => OCI_LAYER_ZSTD,
    };
    Ok(Descriptor {
        media_type: media_type.into(),
        digest: Digest::from_hasher(hasher),
        size,
        urls: Vec::new(),
        annotations: BTreeMap::new(),
        platform: None,
    })
}

/// Stores one image's blobs, unpacks its layers and records it under `names`.
fn import_image(
    images: &ImageService,
    manifest_bytes: &[u8],
    manifest: &Manifest,
    config_bytes: &[u8],
    layers: &[(Descriptor, PathBuf)],
    names: &[String],
) -> Result<String, BuilderError> {
    let config: ImageConfig = parse_json(config_bytes, &format!("config {}", manifest.config.digest))?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != layers.len() {
        return Err(invalid_archive(format!(
            "image {}: {} layers but the config lists {} diff ids",
            manifest.config.digest,
            layers.len(),
            diff_ids.len()
        )));
    }
    let manifest_digest = Digest::of(manifest_bytes);
    let mut keys = vec![manifest_digest.to_string(), manifest.config.digest.to_string()];
    keys.extend(layers.iter().map(|(d, _)| d.digest.to_string()));
    keys.extend(diff_ids.iter().map(Digest::to_string));
    let _hold = images.hold(keys);
    for ((descriptor, path), diff_id) in layers.iter().zip(diff_ids) {
        if images.content().contains(&descriptor.digest) && images.unpacked_size(diff_id)?.is_some() {
            continue;
        }
        let file = File::open(path).map_err(BuilderError::io(path, "opening staged layer"))?;
        images.import_layer(file, descriptor, diff_id)?;
    }
    images.content().put(&manifest.config.digest, config_bytes)?;
    images.content().put(&manifest_digest, manifest_bytes)?;
    let record = ImageRecord {
        id: manifest.config.digest.to_string(),
        manifest: manifest_digest.to_string(),
        index: None,
        config: manifest.config.digest.to_string(),
        layers: layers
            .iter()
            .zip(diff_ids)
            .map(|((d, _), diff_id)| LayerRecord {
                digest: d.digest.to_string(),
                media_type: d.media_type.clone(),
                size: d.size,
                diff_id: diff_id.to_string(),
            })
            .collect(),
        size: manifest.config.size + layers.iter().map(|(d, _)| d.size).sum::<u64>(),
        user: config.config.as_ref().and_then(|c| c.user.clone()).filter(|u| !u.is_empty()),
        created_unix_nanos: super::image::unix_nanos(None),
    };
    let names = images.register_image(&record, names)?;
    tracing::info!(image = %record.id, ?names, "loaded image");
    Ok(record.id)
}

fn merge(loaded: &mut Vec<LoadedImage>, id: String, names: Vec<String>) {
    match loaded.iter_mut().find(|l| l.id == id) {
        Some(existing) => existing.names.extend(names),
        None => loaded.push(LoadedImage { id, names }),
    }
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, BuilderError> {
    serde_json::from_slice(bytes).map_err(|e| invalid_archive(format!("{what}: {e}")))
}

fn invalid_archive(reason: String) -> BuilderError {
    BuilderError::InvalidArchive { reason }
}

/// Archive headers carry nothing of this host (owner, time), so that saving the
/// same images twice gives the same bytes.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    header
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> io::Result<()> {
    let mut header = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
    tar.append_data(&mut header, name, bytes)
}
