//! The records the metadata database keeps. They are berth's own types, stored as
//! JSON so that adding a field later stays readable by older records.

use serde::{Deserialize, Serialize};

/// A complete, pulled (or built) image. Everything it names is present: its blobs in
/// the content store and every layer's snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:` digest of the image config: the image id CRI and Docker show.
    pub id: String,
    /// The platform manifest.
    pub manifest: String,
    /// The index or manifest list the reference named, when there was one.
    pub index: Option<String>,
    pub config: String,
    /// Bottom layer first.
    pub layers: Vec<LayerRecord>,
    /// Compressed bytes of config and layers, as containerd reports image size.
    pub size: u64,
    /// The image config's USER, kept to answer ImageStatus without reading blobs.
    pub user: Option<String>,
    pub created_unix_nanos: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as the registry served it.
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// Digest of the uncompressed tar; keys the snapshot.
    pub diff_id: String,
}

/// One unpacked layer: `snapshots/<id>/fs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: u64,
    /// Bytes of regular files and entries created, for ImageFsInfo without a walk.
    pub size: u64,
    pub inodes: u64,
}

/// What a live object (a container) holds: the layers under its root filesystem
/// and its own writable snapshot. GC keeps both while the lease exists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub diff_ids: Vec<String>,
    /// Snapshot directory ids owned outright (writable layers).
    pub snapshot_ids: Vec<u64>,
}
