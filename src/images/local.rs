//! Entry points for images made on this node rather than pulled: layers the
//! builder diffs out of a container, images it assembles or commits, archives
//! loaded from disk, and pushing any stored image to a registry. The same
//! invariants hold as for a pull: blobs are verified before they become visible,
//! snapshot trees are renamed into place before their record is written, and
//! whatever is not referenced yet is held against garbage collection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use super::compression::Compression;
use super::content::{BlobWriter, ContentStore};
use super::digest::Digest;
use super::error::ImageError;
use super::manifest::{Descriptor, Manifest, OCI_MANIFEST};
use super::pull::HashingReader;
use super::reference::Reference;
use super::registry::{Credentials, PushBlob, RawManifest};
use super::service::{Claim, ImageService, name_key};
use super::snapshots::PreparedSnapshot;
use super::unpack::{UnpackStats, unpack_layer};
use crate::store::{ImageRecord, SnapshotRecord};

/// Keeps blobs and snapshots (by digest or diff id) from garbage collection until
/// dropped, for content written before the image record that references it.
pub struct ContentHold {
    _claim: Claim,
}

impl std::fmt::Debug for ContentHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentHold")
    }
}

impl ImageService {
    /// Holds `keys` (blob digests and diff ids) against garbage collection.
    pub fn hold(&self, keys: Vec<String>) -> ContentHold {
        ContentHold { _claim: ImageService::claim(&self.inner, keys) }
    }

    pub fn content(&self) -> &ContentStore {
        &self.inner.content
    }

    /// A fresh, empty snapshot tree to fill; see `commit_snapshot`.
    pub fn prepare_snapshot(&self) -> Result<PreparedSnapshot, ImageError> {
        Ok(self.inner.snapshots.prepare()?)
    }

    /// Publishes a filled tree as the snapshot of `diff_id`. When that layer is
    /// already unpacked (the same content built twice) the new tree is discarded.
    /// The caller must have flushed the tree to disk (`unpack_layer` does).
    pub fn commit_snapshot(
        &self,
        diff_id: &Digest,
        tree: PreparedSnapshot,
        stats: &UnpackStats,
    ) -> Result<(), ImageError> {
        let inner = &self.inner;
        let key = diff_id.to_string();
        // Serialises against GC and other commits of the same diff id, so that two
        // trees never claim one record.
        let _gc = inner.claims.lock().expect("claim table poisoned");
        if inner.store.snapshot(&key)?.is_some() {
            return Ok(());
        }
        let id = inner.store.allocate_snapshot_id()?;
        inner.snapshots.commit(tree, id)?;
        inner.store.put_snapshot(&key, &SnapshotRecord { id, size: stats.bytes, inodes: stats.inodes })?;
        Ok(())
    }

    /// Bytes of regular files a layer's snapshot holds, if it is unpacked.
    pub fn unpacked_size(&self, diff_id: &Digest) -> Result<Option<u64>, ImageError> {
        Ok(self.inner.store.snapshot(&diff_id.to_string())?.map(|s| s.size))
    }

    /// The stored record of the image `spec` names (reference, id or id prefix).
    pub fn image_record(&self, spec: &str) -> Result<Option<ImageRecord>, ImageError> {
        self.find(spec)
    }

    /// The writable layer (overlay upper dir) of a container's root filesystem,
    /// by the owner its lease was taken for.
    pub fn writable_dir(&self, owner: &str) -> Result<Option<PathBuf>, ImageError> {
        let lease = self.inner.store.lease(owner)?;
        Ok(lease.and_then(|l| l.snapshot_ids.first().map(|&id| self.inner.snapshots.fs_path(id))))
    }

    /// Records an image whose blobs and snapshots are all present, with `names`
    /// (references, normalised here) pointing at it. Returns the names as stored.
    pub fn register_image(&self, record: &ImageRecord, names: &[String]) -> Result<Vec<String>, ImageError> {
        let keys = names.iter().map(|n| Reference::parse(n).map(|r| name_key(&r))).collect::<Result<Vec<_>, _>>()?;
        // Snapshot trees may have been written without fsync; the record promises them.
        let root = std::fs::File::open(&self.inner.root)
            .map_err(|source| ImageError::Io { context: format!("opening {}", self.inner.root.display()), source })?;
        rustix::fs::syncfs(&root)
            .map_err(|e| ImageError::Io { context: "syncing the image filesystem".into(), source: e.into() })?;
        self.inner.store.put_image(record, &keys)?;
        tracing::info!(image = %record.id, names = ?keys, "registered image");
        Ok(keys)
    }

    /// Points the name `target` at the image `source` names. Returns the stored name.
    pub fn tag(&self, source: &str, target: &str) -> Result<String, ImageError> {
        let record = self.find(source)?.ok_or_else(|| ImageError::NotFound { image: source.to_string() })?;
        let reference = Reference::parse(target)?;
        if reference.digest().is_some() {
            return Err(ImageError::InvalidImage {
                reference: target.to_string(),
                reason: "a tag may not carry a digest".into(),
            });
        }
        let key = name_key(&reference);
        self.inner.store.put_image(&record, std::slice::from_ref(&key))?;
        tracing::info!(image = %record.id, name = %key, "tagged");
        Ok(key)
    }

    /// Stores a layer blob read from `blob` and unpacks it into the snapshot of
    /// `diff_id` (unless that exists) through the same safe unpacker as a pull,
    /// in one pass. Both digests are verified before anything becomes visible.
    /// Blocking; callers hold the digest and diff id (see `hold`).
    pub fn import_layer(&self, blob: impl Read + Send, layer: &Descriptor, diff_id: &Digest) -> Result<(), ImageError> {
        let io_err = |source| ImageError::Io { context: format!("layer {}", layer.digest), source };
        let writer = self.inner.content.writer(layer.digest.clone(), Some(layer.size))?;
        let mut tee = BufReader::new(TeeReader { inner: blob, copy: writer });
        let compression = match Compression::from_media_type(&layer.media_type) {
            Some(c) => c,
            None => Compression::detect(tee.fill_buf().map_err(io_err)?),
        };
        let unpack_into = match self.inner.store.snapshot(&diff_id.to_string())? {
            Some(_) => None,
            None => Some(self.inner.snapshots.prepare()?),
        };
        let (stats, actual) = {
            let mut tar =
                HashingReader { inner: compression.decoder(&mut tee).map_err(io_err)?, hasher: Sha256::new() };
            let stats = match &unpack_into {
                Some(tree) => Some(
                    unpack_layer(&mut tar, tree.fs_path())
                        .map_err(|source| ImageError::Unpack { layer: layer.digest.clone(), source })?,
                ),
                None => None,
            };
            io::copy(&mut tar, &mut io::sink()).map_err(io_err)?;
            (stats, Digest::from_hasher(tar.hasher))
        };
        io::copy(&mut tee, &mut io::sink()).map_err(io_err)?;
        if actual != *diff_id {
            return Err(ImageError::DiffIdMismatch { layer: layer.digest.clone(), expected: diff_id.clone(), actual });
        }
        tee.into_inner().copy.commit()?;
        if let (Some(tree), Some(stats)) = (unpack_into, stats) {
            self.commit_snapshot(diff_id, tree, &stats)?;
        }
        Ok(())
    }

    /// Pushes the image `spec` names to `target` (a reference with a tag or not):
    /// layers, config, then the manifest, to the target's registry itself
    /// (mirrors serve pulls only). On success `target` and its digest reference
    /// name the image locally too, as after a pull. Returns the manifest digest.
    pub async fn push(&self, spec: &str, target: &str, credentials: Option<Credentials>) -> Result<Digest, ImageError> {
        let record = self.find(spec)?.ok_or_else(|| ImageError::NotFound { image: spec.to_string() })?;
        let reference = Reference::parse(target)?;
        let invalid = |reason: String| ImageError::InvalidImage { reference: record.id.clone(), reason };
        let manifest_digest: Digest = record.manifest.parse().map_err(|e| invalid(format!("manifest: {e}")))?;
        let bytes = self.inner.content.read(&manifest_digest)?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| invalid(format!("manifest: {e}")))?;
        let media_type = manifest.media_type.clone().unwrap_or_else(|| OCI_MANIFEST.to_string());
        let blobs = manifest
            .layers
            .iter()
            .chain(std::iter::once(&manifest.config))
            .map(|d| PushBlob { path: self.inner.content.path(&d.digest), descriptor: d.clone() })
            .collect::<Vec<_>>();
        let raw = RawManifest { media_type, digest: manifest_digest.clone(), bytes: bytes.into() };
        let pushed = self.inner.registry.push(&reference, credentials.as_ref(), &blobs, &raw).await?;
        let mut names = vec![reference.with_digest(pushed.clone()).to_string()];
        if reference.digest().is_none() {
            names.push(name_key(&reference));
        }
        self.inner.store.put_image(&record, &names)?;
        tracing::info!(image = %record.id, target = %reference, digest = %pushed, "pushed image");
        Ok(pushed)
    }
}

/// Copies everything read through it into a blob writer.
struct TeeReader<R> {
    inner: R,
    copy: BlobWriter,
}

impl<R: Read> Read for TeeReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}
