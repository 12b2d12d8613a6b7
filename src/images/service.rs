//! `ImageService`: what the CRI image service (and later the builder) asks of the
//! image room. It owns the content store, the snapshots and the image records, and
//! keeps them consistent: at startup it removes whatever a crash left half-done,
//! and after every removal it collects the blobs and snapshots nothing references.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::{BoxFuture, FutureExt, WeakShared};

use super::content::ContentStore;
use super::digest::Digest;
use super::error::ImageError;
use super::reference::Reference;
use super::registry::{Credentials, RegistryClient};
use super::snapshots::Snapshots;
use crate::config::Config;
use super::manifest::ImageConfig;
use crate::store::{ImageRecord, Store};

/// An image as callers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSummary {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size: u64,
    /// The image config's USER, as written there.
    pub user: Option<String>,
    pub pinned: bool,
}

/// The directories of a container's overlay root filesystem.
#[derive(Debug, Clone, PartialEq)]
pub struct RootfsLayers {
    /// Topmost layer first, as overlayfs lists them.
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: PathBuf,
    pub workdir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FsUsage {
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
    pub timestamp_nanos: i64,
}

type PullResult = Result<String, Arc<ImageError>>;
/// What callers of a running pull share; the table holds it weakly.
type WeakPull = WeakShared<BoxFuture<'static, PullResult>>;

#[derive(Clone)]
pub struct ImageService {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) root: PathBuf,
    pub(super) store: Arc<Store>,
    pub(super) content: ContentStore,
    pub(super) snapshots: Snapshots,
    pub(super) registry: RegistryClient,
    /// The normalised sandbox image, pinned against removal by GC and reported so.
    sandbox_image: Option<String>,
    /// `max_concurrent_downloads`: layer downloads one pull runs at once.
    pub(super) max_concurrent_downloads: usize,
    /// One pull per normalised reference at a time; later callers wait on it.
    /// Only the callers hold it (strongly): when the last goes, the pull stops.
    /// Keyed by reference, with the pull's number so a finished pull never
    /// removes its successor's entry.
    inflight: Mutex<HashMap<String, (u64, WeakPull)>>,
    next_pull: AtomicU64,
    /// One fetch per layer at a time, across images that share it.
    pub(super) layer_locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Blob digests and diff ids that running pulls have claimed but no image
    /// record references yet. GC must not take them; see `claim`.
    pub(super) claims: Mutex<HashMap<String, usize>>,
}

/// The task of one shared pull, owned by the future its callers wait on: dropping
/// it (the last caller went away) cancels the pull.
struct PullTask {
    handle: tokio::task::JoinHandle<PullResult>,
    inner: Arc<Inner>,
    key: String,
    id: u64,
}

impl PullTask {
    async fn wait(mut self) -> PullResult {
        (&mut self.handle).await.unwrap_or_else(|e| Err(Arc::new(ImageError::Internal(format!("pull task: {e}")))))
    }
}

impl Drop for PullTask {
    fn drop(&mut self) {
        if !self.handle.is_finished() {
            tracing::info!(image = %self.key, "every caller of the pull went away; cancelling it");
            self.handle.abort();
        }
        self.inner.forget_pull(&self.key, self.id);
    }
}

impl Inner {
    /// Removes pull `id`'s entry from the table, unless a newer pull replaced it.
    fn forget_pull(&self, key: &str, id: u64) {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if inflight.get(key).is_some_and(|(current, _)| *current == id) {
            inflight.remove(key);
        }
    }
}

/// Held by a pull for its duration; releases its claims on drop.
pub(super) struct Claim {
    inner: Arc<Inner>,
    keys: Vec<String>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claims = self.inner.claims.lock().expect("claim table poisoned");
        for key in &self.keys {
            if let Some(count) = claims.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    claims.remove(key);
                }
            }
        }
    }
}

impl ImageService {
    /// Opens the image room under `config.root`, repairing what a crash left.
    pub fn open(config: &Config, store: Arc<Store>) -> Result<ImageService, ImageError> {
        let root = config.root.clone();
        let content = ContentStore::open(&root.join("content"))?;
        let snapshots = Snapshots::open(&root.join("snapshots"))?;
        let registry = RegistryClient::new(&config.registry)?;
        let sandbox_image = match Reference::parse(&config.sandbox_image) {
            Ok(r) => Some(r.to_string()),
            Err(e) => {
                tracing::warn!(error = %e, "sandbox_image is not a valid reference; nothing is pinned");
                None
            }
        };
        let service = ImageService {
            inner: Arc::new(Inner {
                root,
                store,
                content,
                snapshots,
                registry,
                sandbox_image,
                max_concurrent_downloads: config.max_concurrent_downloads,
                inflight: Mutex::default(),
                next_pull: AtomicU64::new(0),
                layer_locks: Mutex::default(),
                claims: Mutex::default(),
            }),
        };
        service.recover()?;
        Ok(service)
    }

    /// Makes the records and the trees agree after an unclean stop: snapshot
    /// directories without a record go, records whose directory vanished go along
    /// with the images built on them, and then everything unreferenced is collected
    /// (which removes the layers of a pull that never finished).
    fn recover(&self) -> Result<(), ImageError> {
        let inner = &self.inner;
        let recorded = inner.store.snapshots()?;
        let mut ids: HashSet<u64> = recorded.iter().map(|(_, r)| r.id).collect();
        for (_, lease) in inner.store.leases()? {
            ids.extend(lease.snapshot_ids);
        }
        let missing: HashSet<u64> = inner.snapshots.reconcile(&ids)?.into_iter().collect();
        if recorded.iter().any(|(_, r)| missing.contains(&r.id)) {
            let lost: HashSet<&str> =
                recorded.iter().filter(|(_, r)| missing.contains(&r.id)).map(|(d, _)| d.as_str()).collect();
            for (image, _) in inner.store.images_with_names()? {
                if image.layers.iter().any(|l| lost.contains(l.diff_id.as_str())) {
                    tracing::warn!(image = %image.id, "removing image whose layer snapshot is missing");
                    inner.store.remove_image(&image.id)?;
                }
            }
            inner.store.remove_snapshots(&lost.into_iter().map(str::to_string).collect::<Vec<_>>())?;
        }
        self.collect_garbage()
    }

    /// Pulls `image`, sharing the work with any pull of the same reference already
    /// running. The pull runs as its own task for as long as any caller waits on
    /// it; when the last one gives up (its CRI client disconnected or hit its
    /// deadline), the task is cancelled: its downloads close their connections and
    /// its partial blobs and snapshots are removed. Returns the image id.
    pub async fn pull(&self, image: &str, credentials: Option<Credentials>) -> Result<String, ImageError> {
        let reference = Reference::parse(image)?;
        let key = reference.to_string();
        let shared = {
            let mut inflight = self.inner.inflight.lock().expect("inflight table poisoned");
            match inflight.get(&key).and_then(|(_, weak)| weak.upgrade()) {
                Some(running) => {
                    tracing::debug!(image = %key, "joining a pull already running");
                    running
                }
                None => {
                    let id = self.inner.next_pull.fetch_add(1, Ordering::Relaxed);
                    let inner = self.inner.clone();
                    let task_key = key.clone();
                    let handle = tokio::spawn(async move {
                        let result = inner.clone().pull_uncached(reference, credentials).await.map_err(Arc::new);
                        inner.forget_pull(&task_key, id);
                        result
                    });
                    let task = PullTask { handle, inner: self.inner.clone(), key: key.clone(), id };
                    let shared = task.wait().boxed().shared();
                    let weak = shared.downgrade().expect("a pull that was never polled has not finished");
                    inflight.insert(key, (id, weak));
                    shared
                }
            }
        };
        shared.await.map_err(ImageError::Shared)
    }

    pub fn list(&self, filter: Option<&str>) -> Result<Vec<ImageSummary>, ImageError> {
        if let Some(spec) = filter.filter(|s| !s.is_empty()) {
            return Ok(self.status(spec)?.into_iter().collect());
        }
        Ok(self.inner.store.images_with_names()?.into_iter().map(|(r, names)| self.summary(&r, names)).collect())
    }

    /// The image `spec` names (a reference, an image id, or a unique id prefix), if any.
    pub fn status(&self, spec: &str) -> Result<Option<ImageSummary>, ImageError> {
        let Some(record) = self.find(spec)? else { return Ok(None) };
        let names = self.inner.store.names_of(&record.id)?;
        Ok(Some(self.summary(&record, names)))
    }

    /// The image config as stored, for verbose status.
    pub fn config_json(&self, image_id: &str) -> Result<serde_json::Value, ImageError> {
        let record = self.find(image_id)?.ok_or_else(|| ImageError::Internal(format!("image {image_id} vanished")))?;
        let digest: Digest = record.config.parse().map_err(|e| ImageError::Internal(format!("{e}")))?;
        let bytes = self.inner.content.read(&digest)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::InvalidImage { reference: record.id.clone(), reason: format!("config: {e}") })
    }

    /// Removes what `spec` names. A tag goes alone while the image keeps other
    /// tags; an id or digest reference, or the last tag, removes the image with
    /// all its names. Removing what does not exist succeeds, as CRI requires.
    pub async fn remove(&self, spec: &str) -> Result<(), ImageError> {
        let Some((record, by_name)) = self.lookup(spec)? else { return Ok(()) };
        let store = &self.inner.store;
        if let Some(reference) = by_name.filter(|r| r.digest().is_none()) {
            let tag_name = reference.to_string();
            let names = store.names_of(&record.id)?;
            let other_tags = names.iter().filter(|n| **n != tag_name && !n.contains('@')).count();
            if other_tags > 0 {
                store.remove_name(&tag_name)?;
                tracing::info!(name = %tag_name, image = %record.id, "untagged");
                return Ok(());
            }
        }
        store.remove_image(&record.id)?;
        tracing::info!(image = %record.id, "removed image");
        let service = self.clone();
        tokio::task::spawn_blocking(move || service.collect_garbage())
            .await
            .map_err(|e| ImageError::Internal(format!("garbage collection task: {e}")))?
    }

    /// Bytes and inodes the image filesystem uses, from the records kept at unpack
    /// time rather than a walk of the trees.
    pub fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        let (mut used_bytes, mut inodes_used) = (0, 0);
        for (_, snapshot) in self.inner.store.snapshots()? {
            used_bytes += snapshot.size;
            inodes_used += snapshot.inodes;
        }
        for (_, size) in self.inner.content.list()? {
            used_bytes += size;
            inodes_used += 1;
        }
        Ok(FsUsage { mountpoint: self.inner.root.clone(), used_bytes, inodes_used, timestamp_nanos: now_nanos() })
    }

    /// The image's run defaults (entrypoint, cmd, env, working dir, user, stop
    /// signal), from its stored config.
    pub fn image_config(&self, image_id: &str) -> Result<ImageConfig, ImageError> {
        let config = self.config_json(image_id)?;
        serde_json::from_value(config)
            .map_err(|e| ImageError::InvalidImage { reference: image_id.to_string(), reason: format!("config: {e}") })
    }

    /// Prepares the layers of a container's root filesystem: a fresh writable
    /// snapshot over the image's layers, held by a lease named `owner` so that
    /// neither survives as garbage nor is collected while the owner lives, even if
    /// the image itself is removed.
    pub fn prepare_rootfs(&self, owner: &str, image_id: &str) -> Result<RootfsLayers, ImageError> {
        let record = self.find(image_id)?.ok_or_else(|| ImageError::NotFound { image: image_id.to_string() })?;
        let diff_ids: Vec<String> = record.layers.iter().map(|l| l.diff_id.clone()).collect();
        self.prepare_layers(owner, &record.id, &diff_ids)
    }

    /// Like `prepare_rootfs`, over layers given by diff id, bottom first (a build
    /// step's parent is not an image yet). `reference` names them in errors.
    pub fn prepare_layers(&self, owner: &str, reference: &str, diff_ids: &[String]) -> Result<RootfsLayers, ImageError> {
        let inner = &self.inner;
        let mut lowerdirs = Vec::with_capacity(diff_ids.len());
        // Held across reading the snapshot records and writing the lease, so GC
        // can't take a layer in between.
        let _gc = inner.claims.lock().expect("claim table poisoned");
        for diff_id in diff_ids.iter().rev() {
            let snapshot = inner.store.snapshot(diff_id)?.ok_or_else(|| ImageError::InvalidImage {
                reference: reference.to_string(),
                reason: format!("layer {diff_id} is not unpacked"),
            })?;
            lowerdirs.push(inner.snapshots.fs_path(snapshot.id));
        }
        let id = inner.store.lease_with_new_snapshot(owner, diff_ids.to_vec())?;
        let (upperdir, workdir) = inner.snapshots.create_writable(id)?;
        Ok(RootfsLayers { lowerdirs, upperdir, workdir })
    }

    /// Drops a container's writable snapshot and lease; what only it kept alive
    /// is collected. Succeeds when there is nothing to release.
    pub fn release_rootfs(&self, owner: &str) -> Result<(), ImageError> {
        let inner = &self.inner;
        let Some(lease) = inner.store.lease(owner)? else { return Ok(()) };
        inner.store.remove_lease(owner)?;
        for id in lease.snapshot_ids {
            if let Some(path) = inner.snapshots.detach(id)? {
                std::fs::remove_dir_all(&path)
                    .map_err(|source| ImageError::Io { context: format!("removing {}", path.display()), source })?;
            }
        }
        self.collect_garbage()
    }

    /// Bytes and inodes of an owner's writable layer, for container stats.
    pub fn writable_usage(&self, owner: &str) -> Result<(u64, u64), ImageError> {
        let Some(lease) = self.inner.store.lease(owner)? else { return Ok((0, 0)) };
        let mut total = (0, 0);
        for id in lease.snapshot_ids {
            let (bytes, inodes) = self.inner.snapshots.usage(id)?;
            total = (total.0 + bytes, total.1 + inodes);
        }
        Ok(total)
    }

    fn summary(&self, record: &ImageRecord, names: Vec<String>) -> ImageSummary {
        let pinned = self.inner.sandbox_image.as_ref().is_some_and(|s| names.contains(s));
        let (repo_digests, repo_tags) = names.into_iter().partition(|n| n.contains('@'));
        ImageSummary {
            id: record.id.clone(),
            repo_tags,
            repo_digests,
            size: record.size,
            user: record.user.clone(),
            pinned,
        }
    }

    pub(super) fn find(&self, spec: &str) -> Result<Option<ImageRecord>, ImageError> {
        Ok(self.lookup(spec)?.map(|(record, _)| record))
    }

    /// Resolves `spec` and says how: by image id (or id prefix), or by which name.
    fn lookup(&self, spec: &str) -> Result<Option<(ImageRecord, Option<Reference>)>, ImageError> {
        let store = &self.inner.store;
        let bare = spec.strip_prefix("sha256:").unwrap_or(spec);
        if bare.len() == 64 && Digest::from_hex(bare).is_ok() {
            return Ok(store.image(&format!("sha256:{bare}"))?.map(|r| (r, None)));
        }
        let reference = Reference::parse(spec)?;
        if let Some(id) = store.image_id_by_name(&name_key(&reference))? {
            return Ok(store.image(&id)?.map(|r| (r, Some(reference))));
        }
        // Like Docker and CRI-O, a unique prefix of an image id names that image.
        if bare.len() >= 3 && bare.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut matches = store.images_with_names()?.into_iter().filter(|(r, _)| r.id[7..].starts_with(bare));
            if let (Some((record, _)), None) = (matches.next(), matches.next()) {
                return Ok(Some((record, None)));
            }
        }
        Ok(None)
    }

    /// Claims blobs and diff ids for a running pull so that GC leaves them alone
    /// until the image record that references them is committed.
    pub(super) fn claim(inner: &Arc<Inner>, keys: Vec<String>) -> Claim {
        let mut claims = inner.claims.lock().expect("claim table poisoned");
        for key in &keys {
            *claims.entry(key.clone()).or_default() += 1;
        }
        Claim { inner: inner.clone(), keys }
    }

    /// Deletes every snapshot and blob that no image record and no running pull
    /// references. The lease table stays locked while deciding and unlinking, so
    /// a pull can't claim a layer in between; deleting the trees happens after.
    pub fn collect_garbage(&self) -> Result<(), ImageError> {
        let inner = &self.inner;
        let mut detached = Vec::new();
        {
            let claims = inner.claims.lock().expect("claim table poisoned");
            let mut blobs: HashSet<String> = claims.keys().cloned().collect();
            let mut diffs = blobs.clone();
            for (_, lease) in inner.store.leases()? {
                diffs.extend(lease.diff_ids);
            }
            for (image, _) in inner.store.images_with_names()? {
                blobs.insert(image.manifest.clone());
                blobs.extend(image.index.clone());
                blobs.insert(image.config.clone());
                for layer in &image.layers {
                    blobs.insert(layer.digest.clone());
                    diffs.insert(layer.diff_id.clone());
                }
            }
            let doomed: Vec<_> = inner.store.snapshots()?.into_iter().filter(|(d, _)| !diffs.contains(d)).collect();
            inner.store.remove_snapshots(&doomed.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>())?;
            for (diff_id, snapshot) in &doomed {
                tracing::debug!(%diff_id, snapshot = snapshot.id, "collecting snapshot");
                detached.extend(inner.snapshots.detach(snapshot.id)?);
            }
            for (digest, _) in inner.content.list()? {
                if !blobs.contains(&digest.to_string()) {
                    tracing::debug!(%digest, "collecting blob");
                    inner.content.delete(&digest)?;
                }
            }
        }
        for path in detached {
            std::fs::remove_dir_all(&path)
                .map_err(|source| ImageError::Io { context: format!("removing {}", path.display()), source })?;
        }
        Ok(())
    }
}

/// The key of the names table for a reference: `name@digest` when it carries a
/// digest (the digest decides, the tag is decoration), `name:tag` otherwise.
pub(super) fn name_key(reference: &Reference) -> String {
    match reference.digest() {
        Some(digest) => reference.with_digest(digest.clone()).to_string(),
        None => reference.to_string(),
    }
}

pub(super) fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}
