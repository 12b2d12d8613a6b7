//! The metadata database (redb): which images exist, which names point at them and
//! which unpacked layer snapshots back them. Blobs and snapshot trees live on the
//! filesystem; this database is the single record of what is complete. Every change
//! is one transaction, so a `kill -9` at any moment leaves either the old or the new
//! state, never a mix.

pub mod layout;
mod records;

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub use records::{ImageRecord, LayerRecord, Lease, SnapshotRecord};

/// Image id (`sha256:<config digest>`) -> JSON `ImageRecord`.
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
/// Normalised reference (`docker.io/library/busybox:latest`, `...@sha256:...`) -> image id.
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("names");
/// Layer diff id (`sha256:` of the uncompressed tar) -> JSON `SnapshotRecord`.
/// Keyed by diff id rather than chain id: an overlay lowerdir holds only its own
/// layer's changes, so the same layer under different parents unpacks once.
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// Monotonic counters; `next_snapshot_id` names snapshot directories. Short numeric
/// directory names keep overlay's lowerdir option (one page at most) usable for
/// images with many layers.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// Owner (`container/<id>`) -> JSON `Lease`: what a live object holds on to, so
/// that image GC keeps it even when its image is removed.
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
/// Pod sandbox id -> the sandbox room's JSON record.
const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
/// Container id -> the sandbox room's JSON record.
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
/// Build cache key -> the builder room's JSON cache entry.
const BUILD_CACHE: TableDefinition<&str, &[u8]> = TableDefinition::new("build_cache");

/// The record kinds this database keeps for other rooms, as JSON they define.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pod,
    Container,
    BuildCache,
}

impl Kind {
    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Kind::Pod => PODS,
            Kind::Container => CONTAINERS,
            Kind::BuildCache => BUILD_CACHE,
        }
    }
}
const NEXT_SNAPSHOT_ID: &str = "next_snapshot_id";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata database: {0}")]
    Db(#[from] redb::Error),
    #[error("metadata database {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("metadata database: corrupt record {key:?}: {source}")]
    Corrupt { key: String, source: serde_json::Error },
}

fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database. redb holds a file lock, so a second berthd on
    /// the same root fails here instead of corrupting the first one's state.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // The database holds every container's environment: created 0600 before
        // redb opens it (never readable by others, not even for a moment), and
        // repaired if an older berthd left it 0644.
        let io_err = |source| StoreError::Io { path: path.to_path_buf(), source };
        match layout::create_private_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io_err(e)),
            _ => {}
        }
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(layout::PRIVATE_FILE)).map_err(io_err)?;
        let db = Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(IMAGES).map_err(db_err)?;
            txn.open_table(NAMES).map_err(db_err)?;
            txn.open_table(SNAPSHOTS).map_err(db_err)?;
            txn.open_table(COUNTERS).map_err(db_err)?;
            txn.open_table(LEASES).map_err(db_err)?;
            txn.open_table(PODS).map_err(db_err)?;
            txn.open_table(CONTAINERS).map_err(db_err)?;
            txn.open_table(BUILD_CACHE).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Store { db })
    }

    pub fn image(&self, id: &str) -> Result<Option<ImageRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(IMAGES).map_err(db_err)?;
        table.get(id).map_err(db_err)?.map(|v| decode(id, v.value())).transpose()
    }

    pub fn image_id_by_name(&self, name: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(NAMES).map_err(db_err)?;
        Ok(table.get(name).map_err(db_err)?.map(|v| v.value().to_string()))
    }

    /// Every image with the names that point at it, in one consistent read.
    pub fn images_with_names(&self) -> Result<Vec<(ImageRecord, Vec<String>)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let images = txn.open_table(IMAGES).map_err(db_err)?;
        let names = txn.open_table(NAMES).map_err(db_err)?;
        let mut by_id: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for entry in names.iter().map_err(db_err)? {
            let (name, id) = entry.map_err(db_err)?;
            by_id.entry(id.value().to_string()).or_default().push(name.value().to_string());
        }
        let mut out = Vec::new();
        for entry in images.iter().map_err(db_err)? {
            let (id, value) = entry.map_err(db_err)?;
            let record = decode(id.value(), value.value())?;
            let names = by_id.remove(id.value()).unwrap_or_default();
            out.push((record, names));
        }
        Ok(out)
    }

    pub fn names_of(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let names = txn.open_table(NAMES).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in names.iter().map_err(db_err)? {
            let (name, target) = entry.map_err(db_err)?;
            if target.value() == id {
                out.push(name.value().to_string());
            }
        }
        Ok(out)
    }

    /// Records a completed image and points `names` at it, atomically. A name that
    /// pointed at another image moves; that image stays, reachable by id, as Docker
    /// keeps a re-tagged image.
    pub fn put_image(&self, record: &ImageRecord, names: &[String]) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).expect("image records always serialise");
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut images = txn.open_table(IMAGES).map_err(db_err)?;
            images.insert(record.id.as_str(), value.as_slice()).map_err(db_err)?;
            let mut table = txn.open_table(NAMES).map_err(db_err)?;
            for name in names {
                table.insert(name.as_str(), record.id.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Removes one name. Returns whether it existed.
    pub fn remove_name(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let existed = {
            let mut table = txn.open_table(NAMES).map_err(db_err)?;
            table.remove(name).map_err(db_err)?.is_some()
        };
        txn.commit().map_err(db_err)?;
        Ok(existed)
    }

    /// Removes an image record and every name pointing at it, atomically.
    pub fn remove_image(&self, id: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut names = txn.open_table(NAMES).map_err(db_err)?;
            names.retain(|_, target| target != id).map_err(db_err)?;
            let mut images = txn.open_table(IMAGES).map_err(db_err)?;
            images.remove(id).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    pub fn snapshot(&self, diff_id: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        table.get(diff_id).map_err(db_err)?.map(|v| decode(diff_id, v.value())).transpose()
    }

    pub fn snapshots(&self) -> Result<Vec<(String, SnapshotRecord)>, StoreError> {
        self.list_table(SNAPSHOTS)
    }

    /// Hands out a snapshot directory id that no other snapshot will ever get. Ids
    /// are never reused, so a directory left by a crash can't be mistaken for a
    /// newer snapshot.
    pub fn allocate_snapshot_id(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let id = {
            let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
            let next = counters.get(NEXT_SNAPSHOT_ID).map_err(db_err)?.map_or(1, |v| v.value());
            counters.insert(NEXT_SNAPSHOT_ID, next + 1).map_err(db_err)?;
            next
        };
        txn.commit().map_err(db_err)?;
        Ok(id)
    }

    pub fn put_snapshot(&self, diff_id: &str, record: &SnapshotRecord) -> Result<(), StoreError> {
        self.put_json(SNAPSHOTS, diff_id, record)
    }

    /// Removes snapshot records in one transaction.
    pub fn remove_snapshots(&self, diff_ids: &[String]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            for diff_id in diff_ids {
                table.remove(diff_id.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }
}

impl Store {
    pub fn lease(&self, owner: &str) -> Result<Option<Lease>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(LEASES).map_err(db_err)?;
        table.get(owner).map_err(db_err)?.map(|v| decode(owner, v.value())).transpose()
    }

    pub fn leases(&self) -> Result<Vec<(String, Lease)>, StoreError> {
        self.list_table(LEASES)
    }

    /// Records a lease on `diff_ids` plus a writable snapshot id allocated for it,
    /// in one transaction (one sync instead of two on the container-create path).
    pub fn lease_with_new_snapshot(&self, owner: &str, diff_ids: Vec<String>) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let id = {
            let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
            let id = counters.get(NEXT_SNAPSHOT_ID).map_err(db_err)?.map_or(1, |v| v.value());
            counters.insert(NEXT_SNAPSHOT_ID, id + 1).map_err(db_err)?;
            let lease = Lease { diff_ids, snapshot_ids: vec![id] };
            let value = serde_json::to_vec(&lease).expect("leases always serialise");
            let mut leases = txn.open_table(LEASES).map_err(db_err)?;
            leases.insert(owner, value.as_slice()).map_err(db_err)?;
            id
        };
        txn.commit().map_err(db_err)?;
        Ok(id)
    }

    pub fn remove_lease(&self, owner: &str) -> Result<(), StoreError> {
        self.delete_key(LEASES, owner)
    }

    pub fn get<T: serde::de::DeserializeOwned>(&self, kind: Kind, id: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(kind.table()).map_err(db_err)?;
        table.get(id).map_err(db_err)?.map(|v| decode(id, v.value())).transpose()
    }

    pub fn list<T: serde::de::DeserializeOwned>(&self, kind: Kind) -> Result<Vec<(String, T)>, StoreError> {
        self.list_table(kind.table())
    }

    pub fn put<T: serde::Serialize>(&self, kind: Kind, id: &str, record: &T) -> Result<(), StoreError> {
        self.put_json(kind.table(), id, record)
    }

    pub fn delete(&self, kind: Kind, id: &str) -> Result<(), StoreError> {
        self.delete_key(kind.table(), id)
    }

    fn list_table<T: serde::de::DeserializeOwned>(
        &self,
        definition: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(definition).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            out.push((key.value().to_string(), decode(key.value(), value.value())?));
        }
        Ok(out)
    }

    fn put_json<T: serde::Serialize>(
        &self,
        definition: TableDefinition<&str, &[u8]>,
        key: &str,
        record: &T,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).map_err(|source| StoreError::Corrupt { key: key.to_string(), source })?;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(definition).map_err(db_err)?;
            table.insert(key, value.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    fn delete_key(&self, definition: TableDefinition<&str, &[u8]>, key: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(definition).map_err(db_err)?;
            table.remove(key).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { key: key.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> ImageRecord {
        ImageRecord {
            id: id.to_string(),
            manifest: "sha256:m".into(),
            index: None,
            config: id.to_string(),
            layers: vec![],
            size: 1,
            user: None,
            created_unix_nanos: 0,
        }
    }

    #[test]
    fn names_move_and_images_go_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("meta.redb")).unwrap();
        store.put_image(&record("sha256:a"), &["x:1".into(), "x:2".into()]).unwrap();
        store.put_image(&record("sha256:b"), &["x:2".into()]).unwrap();
        assert_eq!(store.image_id_by_name("x:2").unwrap().as_deref(), Some("sha256:b"));
        assert_eq!(store.names_of("sha256:a").unwrap(), vec!["x:1".to_string()]);
        store.remove_image("sha256:a").unwrap();
        assert!(store.image("sha256:a").unwrap().is_none());
        assert!(store.image_id_by_name("x:1").unwrap().is_none());
        assert_eq!(store.images_with_names().unwrap().len(), 1);
    }

    #[test]
    fn snapshot_ids_are_never_reused_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let first = Store::open(&path).unwrap().allocate_snapshot_id().unwrap();
        let second = Store::open(&path).unwrap().allocate_snapshot_id().unwrap();
        assert!(second > first);
    }
}
