//! Filesystem observations the tests make around berthd: walking trees without
//! following symlinks, finding files by name, and checking the content store.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every path below `dir` (not `dir` itself), symlinks listed but never followed.
/// A missing `dir` yields nothing.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_real_dir = std::fs::symlink_metadata(&path).map(|m| m.is_dir()).unwrap_or(false);
            if is_real_dir {
                pending.push(path.clone());
            }
            found.push(path);
        }
    }
    found.sort();
    found
}

/// Regular files below `dir`.
pub fn regular_files(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).map(|m| m.is_file()).unwrap_or(false))
        .collect()
}

/// Total size of the regular files below `dir`.
pub fn bytes_below(dir: &Path) -> u64 {
    regular_files(dir)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Paths below each of `dirs` whose file name is `name`. `shallow_dirs` are searched
/// only one level deep (for `/`, `/tmp`, … where a full walk would be slow).
pub fn find_named(dirs: &[&Path], shallow_dirs: &[&Path], name: &str) -> Vec<PathBuf> {
    let mut hits: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| walk(d))
        .filter(|p| p.file_name().is_some_and(|n| n == name))
        .collect();
    for dir in shallow_dirs {
        let candidate = dir.join(name);
        if std::fs::symlink_metadata(&candidate).is_ok() {
            hits.push(candidate);
        }
    }
    hits.sort();
    hits.dedup();
    hits
}

/// `<root>/content/blobs/sha256`.
pub fn blob_dir(root: &Path) -> PathBuf {
    root.join("content").join("blobs").join("sha256")
}

/// Whether berthd's content store holds the blob `digest`.
pub fn has_blob(root: &Path, digest: &str) -> bool {
    blob_dir(root).join(super::digest_hex(digest)).is_file()
}

/// Digests of the blobs in berthd's content store. Panics if any blob's content does
/// not hash to its name: a blob must be visible only after its digest was verified.
pub fn verified_blobs(root: &Path) -> BTreeSet<String> {
    let dir = blob_dir(root);
    let mut digests = BTreeSet::new();
    for path in regular_files(&dir) {
        let name = path.strip_prefix(&dir).expect("below blob dir").to_string_lossy().into_owned();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let actual = super::sha256_digest(&data);
        assert_eq!(
            format!("sha256:{name}"),
            actual,
            "{} is visible in the content store but its content hashes to {actual}",
            path.display()
        );
        digests.insert(actual);
    }
    digests
}

/// The unpacked layers: entries directly in `<root>/snapshots`, leaving out hidden
/// ones (berthd's in-progress and trash areas).
pub fn snapshot_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("snapshots"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The value of extended attribute `name` on `path` (not following symlinks).
pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buffer = vec![0u8; 256];
    let size = rustix::fs::lgetxattr(path, name, &mut buffer).ok()?;
    buffer.truncate(size);
    Some(buffer)
}

/// Hard-link count of `path`.
pub fn link_count(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).nlink()
}
