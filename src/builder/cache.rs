//! The build cache: what each step produced, by a key that chains the parent
//! step's key, the instruction after expansion, the build args in scope and,
//! for COPY/ADD, a hash of the sources' names, modes, ownership and content
//! (never their times). An entry holds the whole image state after its step, so
//! a hit continues the build without running anything. Entries live in the
//! metadata database and so survive restarts; one whose layers garbage
//! collection took is dropped when found, and the step runs again.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::BuildError;
use crate::images::ImageService;
use crate::inroot::{self, Kind as EntryKind, Root, WalkEntry};
use crate::images::digest::Digest;
use crate::images::manifest::ImageConfig;
use crate::store::{Kind, LayerRecord, Store};

/// The image state after a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub config: ImageConfig,
    /// Bottom layer first.
    pub layers: Vec<LayerRecord>,
    /// When the step ran, seconds since the epoch.
    pub created_seconds: i64,
}

#[derive(Clone)]
pub struct BuildCache {
    store: Arc<Store>,
}

/// The key of a step: hex sha256 over its parts, each length-prefixed so that
/// no two different sequences of parts hash alike.
pub fn step_key(parent: &str, instruction: &str, args: &BTreeMap<String, String>, sources: Option<&str>) -> String {
    let mut hasher = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    part(parent.as_bytes());
    part(instruction.as_bytes());
    for (name, value) in args {
        part(name.as_bytes());
        part(value.as_bytes());
    }
    part(sources.unwrap_or("").as_bytes());
    hex::encode(hasher.finalize())
}

impl BuildCache {
    pub fn new(store: Arc<Store>) -> BuildCache {
        BuildCache { store }
    }

    /// The entry of `key` whose layers are all still `present`.
    pub fn get(&self, key: &str, present: impl Fn(&LayerRecord) -> bool) -> Result<Option<CacheEntry>, BuildError> {
        let Some(entry) = self.store.get::<CacheEntry>(Kind::BuildCache, key)? else { return Ok(None) };
        if entry.layers.iter().all(present) {
            return Ok(Some(entry));
        }
        tracing::debug!(key, "dropping a build cache entry whose layers are gone");
        self.store.delete(Kind::BuildCache, key)?;
        Ok(None)
    }

    pub fn put(&self, key: &str, entry: &CacheEntry) -> Result<(), BuildError> {
        Ok(self.store.put(Kind::BuildCache, key, entry)?)
    }

    /// Drops every entry; returns how many there were.
    pub fn prune(&self) -> Result<u32, BuildError> {
        let entries = self.store.list::<serde_json::Value>(Kind::BuildCache)?;
        for (key, _) in &entries {
            self.store.delete(Kind::BuildCache, key)?;
        }
        Ok(entries.len() as u32)
    }
}

/// Whether a cached layer is still stored and unpacked.
pub fn layer_present(images: &ImageService, layer: &LayerRecord) -> bool {
    let (Ok(digest), Ok(diff_id)) = (layer.digest.parse::<Digest>(), layer.diff_id.parse::<Digest>()) else { return false };
    images.content().contains(&digest) && matches!(images.unpacked_size(&diff_id), Ok(Some(_)))
}

/// A hash of the files at `paths` (each a file, symlink or directory taken
/// recursively), named relative to `root`: names, types, modes, owners,
/// contents and link targets, in name order. Times are left out on purpose:
/// a checkout or touch must not invalidate the cache.
pub fn sources_hash(root: &Root, paths: &[std::path::PathBuf]) -> Result<String, BuildError> {
    let mut hasher = Sha256::new();
    let mut sorted: Vec<&std::path::PathBuf> = paths.iter().collect();
    sorted.sort();
    let mut buffer = vec![0u8; 64 * 1024];
    for source in sorted {
        let shown = || Path::new("/").join(source).display().to_string();
        let (node, _) = root.open_node(source).map_err(BuildError::io(format!("reading {}", shown())))?;
        inroot::walk(node.as_fd(), &mut |entry: &WalkEntry<'_>| -> Result<bool, BuildError> {
            let name = source.join(entry.rel);
            let io = |e: std::io::Error| BuildError::io(format!("reading {}", Path::new("/").join(&name).display()))(e);
            hasher.update(name.as_os_str().as_encoded_bytes());
            hasher.update([0]);
            hasher.update(entry.stat.st_mode.to_le_bytes());
            hasher.update(entry.stat.st_uid.to_le_bytes());
            hasher.update(entry.stat.st_gid.to_le_bytes());
            match entry.kind() {
                EntryKind::Symlink => hasher.update(entry.link_target().map_err(|e| io(e.into()))?.as_os_str().as_encoded_bytes()),
                EntryKind::File => {
                    hasher.update((entry.stat.st_size as u64).to_le_bytes());
                    let mut file = entry.open_file().map_err(|e| io(e.into()))?;
                    loop {
                        let n = file.read(&mut buffer).map_err(io)?;
                        if n == 0 {
                            break;
                        }
                        hasher.update(&buffer[..n]);
                    }
                }
                EntryKind::Special => hasher.update(entry.stat.st_rdev.to_le_bytes()),
                EntryKind::Directory => {}
            }
            hasher.update([0xff]);
            Ok(true)
        })?;
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_chain_and_tell_their_parts_apart() {
        let none = BTreeMap::new();
        let a = step_key("p", "RUN echo a", &none, None);
        assert_eq!(a, step_key("p", "RUN echo a", &none, None));
        assert_ne!(a, step_key("q", "RUN echo a", &none, None));
        assert_ne!(step_key("p", "ab", &none, None), step_key("pa", "b", &none, None));
        let args = BTreeMap::from([("V".to_string(), "1".to_string())]);
        assert_ne!(a, step_key("p", "RUN echo a", &args, None));
        assert_ne!(a, step_key("p", "RUN echo a", &none, Some("h")));
    }

    #[test]
    fn sources_hash_sees_content_and_mode_but_not_times() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "one").unwrap();
        let root = Root::open(dir.path()).unwrap();
        let hash = || sources_hash(&root, &[std::path::PathBuf::from("f")]).unwrap();
        let first = hash();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(later).unwrap();
        assert_eq!(first, hash());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let chmodded = hash();
        assert_ne!(first, chmodded);
        std::fs::write(&file, "two").unwrap();
        assert_ne!(chmodded, hash());
    }
}
