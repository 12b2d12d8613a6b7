//! The pull pipeline. Per layer, one pass over the bytes: the registry's stream is
//! written to the content store's ingest file and hashed, decompressed, hashed
//! again (the diff id) and unpacked into a fresh snapshot directory, all at once.
//! Layers run in parallel, each on its own blocking thread, bounded per pull by
//! `max_concurrent_downloads`. Nothing becomes visible until both digests match.
//! The registry client bounds every body by its declared size and fails a stalled
//! one; a pull whose future is dropped (its last caller went away) stops its
//! downloads and leaves nothing in ingest.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use super::compression::Compression;
use super::content::{BlobWriter, ContentError};
use super::digest::Digest;
use super::error::ImageError;
use super::manifest::{self, Descriptor, ImageConfig};
use super::reference::Reference;
use super::registry::{BlobSource, Credentials, RegistryError};
use super::service::{ImageService, Inner, name_key, now_nanos};
use super::snapshots::PreparedSnapshot;
use super::unpack::{UnpackStats, adopt_lower_metadata, unpack_layer};
use crate::store::{ImageRecord, LayerRecord, SnapshotRecord};

/// Chunks in flight between the network and an unpacking thread. Bounded so a slow
/// disk pushes back on the download instead of buffering the layer in memory.
const CHUNKS_IN_FLIGHT: usize = 32;
const LAYER_ATTEMPTS: u32 = 3;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

impl Inner {
    pub(super) async fn pull_uncached(
        self: Arc<Self>,
        reference: Reference,
        credentials: Option<Credentials>,
    ) -> Result<String, ImageError> {
        self.pull_steps(reference, credentials).await.map_err(ImageError::or_no_space)
    }

    async fn pull_steps(self: Arc<Self>, reference: Reference, credentials: Option<Credentials>) -> Result<String, ImageError> {
        let started = Instant::now();
        tracing::info!(image = %reference, "pulling image");
        let resolved = self.registry.resolve(&reference, credentials.as_ref(), &manifest::host_platform()).await?;
        let source = &resolved.source;
        let parsed = &resolved.parsed;

        let mut claims = vec![resolved.manifest.digest.to_string(), parsed.config.digest.to_string()];
        claims.extend(resolved.index.as_ref().map(|i| i.digest.to_string()));
        claims.extend(parsed.layers.iter().map(|l| l.digest.to_string()));
        let _claim = ImageService::claim(&self, claims);

        let config_bytes = match self.content.contains(&parsed.config.digest) {
            true => Bytes::from(self.content.read(&parsed.config.digest)?),
            false => source.fetch_blob(&parsed.config).await?,
        };
        let invalid = |reason: String| ImageError::InvalidImage { reference: reference.to_string(), reason };
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| invalid(format!("image config: {e}")))?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != parsed.layers.len() {
            return Err(invalid(format!(
                "manifest has {} layers but the config lists {} diff ids",
                parsed.layers.len(),
                diff_ids.len()
            )));
        }
        {
            let _claims = ImageService::claim(&self, diff_ids.iter().map(Digest::to_string).collect());
            self.content.put(&parsed.config.digest, &config_bytes)?;
            // Per pull, as containerd does: a registry that holds this pull's
            // downloads cannot hold another pull's.
            let downloads = Semaphore::new(self.max_concurrent_downloads);
            let implicit_dirs = futures::future::try_join_all(
                parsed
                    .layers
                    .iter()
                    .zip(diff_ids)
                    .map(|(layer, diff_id)| self.ensure_layer(source, layer, diff_id, &downloads)),
            )
            .await?;
            self.adopt_implicit_dirs(diff_ids, implicit_dirs).await?;
            self.content.put(&resolved.manifest.digest, &resolved.manifest.bytes)?;
            if let Some(index) = &resolved.index {
                self.content.put(&index.digest, &index.bytes)?;
            }

            // Snapshot trees were written without per-file fsync; one syncfs makes
            // every layer durable before the record that promises them is written.
            let root = self.root.clone();
            tokio::task::spawn_blocking(move || -> io::Result<()> {
                let dir = std::fs::File::open(&root)?;
                rustix::fs::syncfs(&dir)?;
                Ok(())
            })
            .await
            .map_err(|e| ImageError::Internal(format!("sync task: {e}")))?
            .map_err(|source| ImageError::Io { context: "syncing the image filesystem".into(), source })?;

            let record = ImageRecord {
                id: parsed.config.digest.to_string(),
                manifest: resolved.manifest.digest.to_string(),
                index: resolved.index.as_ref().map(|i| i.digest.to_string()),
                config: parsed.config.digest.to_string(),
                layers: parsed
                    .layers
                    .iter()
                    .zip(diff_ids)
                    .map(|(l, d)| LayerRecord {
                        digest: l.digest.to_string(),
                        media_type: l.media_type.clone(),
                        size: l.size,
                        diff_id: d.to_string(),
                    })
                    .collect(),
                size: parsed.config.size + parsed.layers.iter().map(|l| l.size).sum::<u64>(),
                user: config.config.as_ref().and_then(|c| c.user.clone()).filter(|u| !u.is_empty()),
                created_unix_nanos: now_nanos(),
            };
            // A reference with a digest names content, not a tag: `name:tag@digest`
            // records no tag, since the registry's tag was never consulted.
            let mut names = vec![reference.with_digest(resolved.repo_digest.clone()).to_string()];
            if reference.digest().is_none() {
                names.push(name_key(&reference));
            }
            self.store.put_image(&record, &names)?;
        }
        tracing::info!(
            image = %reference,
            id = %parsed.config.digest,
            layers = parsed.layers.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pulled image"
        );
        Ok(parsed.config.digest.to_string())
    }

    /// Makes sure the layer's blob and snapshot exist, fetching them at most once
    /// even when several images that share the layer are pulled together.
    /// Returns the directories a fresh unpack had to invent (see
    /// `adopt_implicit_dirs`); empty when the layer was already there.
    async fn ensure_layer(
        self: &Arc<Self>,
        source: &BlobSource,
        layer: &Descriptor,
        diff_id: &Digest,
        downloads: &Semaphore,
    ) -> Result<Vec<PathBuf>, ImageError> {
        // Serialised per diff id: the same layer compressed two ways is still one
        // snapshot, and must not be unpacked twice at once.
        let lock = self.layer_locks.lock().expect("layer lock table poisoned").entry(diff_id.clone()).or_default().clone();
        let lock = LayerLock { inner: self, diff_id, lock };
        {
            let _serialised = lock.lock.lock().await;
            let unpacked = self.store.snapshot(&diff_id.to_string())?.is_some();
            if unpacked && self.content.contains(&layer.digest) {
                tracing::debug!(layer = %layer.digest, "layer already present");
                return Ok(Vec::new());
            }
            let _download = downloads.acquire().await.map_err(|e| ImageError::Internal(e.to_string()))?;
            let mut attempt = 1;
            loop {
                match self.fetch_layer(source, layer, diff_id, !unpacked).await {
                    Err(ImageError::Registry(e)) if attempt < LAYER_ATTEMPTS && is_transient(&e) => {
                        let backoff = Duration::from_millis(500 << attempt);
                        tracing::warn!(layer = %layer.digest, attempt, error = %e, "layer download failed, retrying");
                        tokio::time::sleep(backoff).await;
                        attempt += 1;
                    }
                    other => return other,
                }
            }
        }
    }

    /// Downloads the layer's blob and, when `unpack`, unpacks it into a new
    /// snapshot in the same pass. Without `unpack` (the snapshot exists, from the
    /// same layer compressed another way) only the blob is stored.
    async fn fetch_layer(
        self: &Arc<Self>,
        source: &BlobSource,
        layer: &Descriptor,
        diff_id: &Digest,
        unpack: bool,
    ) -> Result<Vec<PathBuf>, ImageError> {
        let started = Instant::now();
        let declared = Compression::from_media_type(&layer.media_type);
        let mut stream = source.open_blob(layer).await?;
        let blob = self.content.writer(layer.digest.clone(), Some(layer.size))?;
        let snapshot = if unpack { Some(self.snapshots.prepare()?) } else { None };
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
        let layer_digest = layer.digest.clone();
        let unpacker = tokio::task::spawn_blocking(move || unpack_stream(rx, blob, snapshot, declared, &layer_digest));

        let mut received = 0u64;
        let mut last_report = Instant::now();
        let download: Result<(), ImageError> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                received += chunk.len() as u64;
                if last_report.elapsed() >= PROGRESS_EVERY {
                    last_report = Instant::now();
                    tracing::info!(layer = %layer.digest.short(), received, total = layer.size, "downloading layer");
                }
                if tx.send(chunk).await.is_err() {
                    // The unpacker stopped early; its result says why.
                    break;
                }
            }
            Ok(())
        }
        .await;
        drop(tx);
        let unpacked = unpacker.await.map_err(|e| ImageError::Internal(format!("unpack task: {e}")))?;
        // A broken download truncates the tar, so the network's error is the cause
        // to report; otherwise the unpacker's verdict stands.
        download?;
        let (blob, unpacked) = unpacked?;
        // The blob's own digest first: a layer altered in transit also changes
        // its diff id, and the altered blob is the cause.
        blob.verify()?;
        let inner = self.clone();
        let diff_key = diff_id.to_string();
        let commit = match unpacked {
            Some((_, _, actual)) if actual != *diff_id => {
                return Err(ImageError::DiffIdMismatch { layer: layer.digest.clone(), expected: diff_id.clone(), actual });
            }
            Some((snapshot, stats, _)) => {
                tokio::task::spawn_blocking(move || inner.commit_layer(blob, snapshot, stats, &diff_key))
            }
            None => tokio::task::spawn_blocking(move || blob.commit().map(|()| Vec::new()).map_err(ImageError::from)),
        };
        let implicit_dirs = commit.await.map_err(|e| ImageError::Internal(format!("commit task: {e}")))??;
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            layer = %layer.digest.short(),
            bytes = layer.size,
            secs = format!("{secs:.2}"),
            mb_per_s = format!("{:.1}", layer.size as f64 / 1e6 / secs.max(1e-6)),
            "layer ready"
        );
        Ok(implicit_dirs)
    }

    /// Layers unpack in parallel, so a directory a layer leaves implicit (some
    /// tools omit parent entries) was created 0755 root:root without knowing the
    /// layers below. Once all are present, such directories take the owner, mode
    /// and mtime the layers below give them, as an in-order unpack would have.
    async fn adopt_implicit_dirs(self: &Arc<Self>, diff_ids: &[Digest], implicit_dirs: Vec<Vec<PathBuf>>) -> Result<(), ImageError> {
        if implicit_dirs.iter().all(Vec::is_empty) {
            return Ok(());
        }
        let mut trees = Vec::with_capacity(diff_ids.len());
        for diff_id in diff_ids {
            let snapshot = self.store.snapshot(&diff_id.to_string())?.ok_or_else(|| {
                ImageError::Internal(format!("layer {diff_id} vanished while its image was being pulled"))
            })?;
            trees.push(self.snapshots.fs_path(snapshot.id));
        }
        let layers = diff_ids.to_vec();
        tokio::task::spawn_blocking(move || {
            for (i, dirs) in implicit_dirs.iter().enumerate().filter(|(_, d)| !d.is_empty()) {
                let lowers: Vec<&Path> = trees[..i].iter().rev().map(PathBuf::as_path).collect();
                adopt_lower_metadata(&trees[i], dirs, &lowers)
                    .map_err(|source| ImageError::Unpack { layer: layers[i].clone(), source })?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ImageError::Internal(format!("implicit directory task: {e}")))?
    }

    /// Publishes a verified layer: the blob by rename, then the tree by rename to a
    /// fresh id, then the record. A crash between steps leaves only things that
    /// startup recovery removes.
    fn commit_layer(
        &self,
        blob: BlobWriter,
        snapshot: PreparedSnapshot,
        stats: UnpackStats,
        diff_id: &str,
    ) -> Result<Vec<PathBuf>, ImageError> {
        blob.commit()?;
        let id = self.store.allocate_snapshot_id()?;
        self.snapshots.commit(snapshot, id)?;
        self.store.put_snapshot(diff_id, &SnapshotRecord { id, size: stats.bytes, inodes: stats.inodes })?;
        Ok(stats.implicit_dirs)
    }
}

/// A pull's hold on a layer's lock; the table forgets the lock once no pull holds
/// it, also when the pull is cancelled while waiting.
struct LayerLock<'a> {
    inner: &'a Inner,
    diff_id: &'a Digest,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for LayerLock<'_> {
    fn drop(&mut self) {
        let mut locks = self.inner.layer_locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The table's reference and this one: nobody else wants the lock.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(self.diff_id);
        }
    }
}

type Unpacked = (PreparedSnapshot, UnpackStats, Digest);

/// Runs on a blocking thread: tees the compressed chunks into the blob file and,
/// given a snapshot to fill, decompresses, hashes the tar (the diff id) and unpacks
/// it. Returns everything the commit needs.
fn unpack_stream(
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
    blob: BlobWriter,
    snapshot: Option<PreparedSnapshot>,
    declared: Option<Compression>,
    layer: &Digest,
) -> Result<(BlobWriter, Option<Unpacked>), ImageError> {
    let io_err = |source| ImageError::Io { context: format!("layer {layer}"), source };
    let mut tee = TeeReader { chunks, current: Bytes::new(), blob, write_error: None };
    let unpacked = match snapshot {
        None => Ok(None),
        Some(snapshot) => unpack_tee(&mut tee, snapshot, declared, layer).map(Some),
    };
    // A full disk is the cause whatever the bytes were; no need to read them all.
    let unpacked = match unpacked {
        Err(error) if error.is_full_disk() => return Err(error),
        other => other,
    };
    let drained = io::copy(&mut tee, &mut io::sink());
    if let Some(source) = tee.write_error.take() {
        return Err(ImageError::Io { context: format!("layer {layer}: writing the blob to the content store"), source });
    }
    let unpacked = match unpacked {
        Ok(unpacked) => unpacked,
        // A layer that does not unpack is most often one whose bytes were altered
        // (in transit or in the registry); then the digest is the cause to report.
        Err(error) => {
            let (actual, _) = tee.blob.written();
            if drained.is_ok() && actual != *layer {
                return Err(ContentError::DigestMismatch { expected: layer.clone(), actual }.into());
            }
            return Err(error);
        }
    };
    drained.map_err(io_err)?;
    Ok((tee.blob, unpacked))
}

/// Decompresses, hashes (the diff id) and unpacks the layer `tee` streams into
/// `snapshot`.
fn unpack_tee(
    tee: &mut TeeReader,
    snapshot: PreparedSnapshot,
    declared: Option<Compression>,
    layer: &Digest,
) -> Result<Unpacked, ImageError> {
    let io_err = |source| ImageError::Io { context: format!("layer {layer}"), source };
    let compression = match declared {
        Some(c) => c,
        None => Compression::detect(tee.peek().map_err(io_err)?),
    };
    let decoder = compression.decoder(&mut *tee).map_err(io_err)?;
    let mut tar = HashingReader { inner: decoder, hasher: Sha256::new() };
    let stats =
        unpack_layer(&mut tar, snapshot.fs_path()).map_err(|source| ImageError::Unpack { layer: layer.clone(), source })?;
    // The tar ends before its padding and the compressor's trailer; read them so
    // both digests cover every byte.
    io::copy(&mut tar, &mut io::sink()).map_err(io_err)?;
    Ok((snapshot, stats, Digest::from_hasher(tar.hasher)))
}

/// Reads the chunks the download task sends, writing each into the blob file as
/// it passes. A failed write is kept, so that the blob's error (a full disk, say)
/// is reported rather than what the tar reader made of it.
struct TeeReader {
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
    blob: BlobWriter,
    write_error: Option<io::Error>,
}

impl TeeReader {
    /// Fills the current chunk (if the stream has one) and returns it unread.
    fn peek(&mut self) -> io::Result<&[u8]> {
        if self.current.is_empty() {
            self.fill()?;
        }
        Ok(&self.current)
    }

    /// Takes the next chunk into `current` and the blob; false at the end.
    fn fill(&mut self) -> io::Result<bool> {
        if let Some(error) = &self.write_error {
            return Err(io::Error::new(error.kind(), error.to_string()));
        }
        let Some(chunk) = self.chunks.blocking_recv() else { return Ok(false) };
        if let Err(error) = self.blob.write_all(&chunk) {
            let kept = match error.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(error.kind(), error.to_string()),
            };
            self.write_error = Some(kept);
            return Err(error);
        }
        self.current = chunk;
        Ok(true)
    }
}

impl Read for TeeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if !self.fill()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

pub(super) struct HashingReader<R> {
    pub(super) inner: R,
    pub(super) hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Worth another attempt within the pull: not a refusal, not wrong content, and
/// not a stall (which already waited `download_stall_timeout_seconds`).
fn is_transient(error: &RegistryError) -> bool {
    !error.is_not_found()
        && !matches!(
            error.cause(),
            RegistryError::DigestMismatch { .. }
                | RegistryError::Unauthorized { .. }
                | RegistryError::LongerThanDeclared { .. }
                | RegistryError::Stalled { .. }
        )
}
