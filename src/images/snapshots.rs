//! Snapshot directories: one unpacked layer per `snapshots/<id>/fs`, ready to be an
//! overlayfs lowerdir. A layer unpacks into `snapshots/.ingest/<random>/` and is
//! renamed to its numeric id only once it is complete and verified; the metadata
//! database records it after the rename, so a record always names a full tree.
//! Directories that no record names (a crash between rename and record, or a
//! removal that was interrupted) are removed by `remove_unrecorded`.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::store::layout::private_dir;

#[derive(Debug, thiserror::Error)]
#[error("snapshot directory {path}: {source}")]
pub struct SnapshotError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError { path: path.to_path_buf(), source }
}

#[derive(Debug)]
pub struct Snapshots {
    dir: PathBuf,
    ingest: PathBuf,
    trash: PathBuf,
}

impl Snapshots {
    pub fn open(dir: &Path) -> Result<Snapshots, SnapshotError> {
        let snapshots = Snapshots { dir: dir.to_path_buf(), ingest: dir.join(".ingest"), trash: dir.join(".trash") };
        // Private all the way down (see store::layout): layers hold setuid binaries
        // and world-writable directories that only containers may see.
        private_dir(dir).map_err(io_err(dir))?;
        for d in [&snapshots.ingest, &snapshots.trash] {
            if d.exists() {
                fs::remove_dir_all(d).map_err(io_err(d))?;
            }
            private_dir(d).map_err(io_err(d))?;
        }
        Ok(snapshots)
    }

    /// The tree of a committed snapshot.
    pub fn fs_path(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string()).join("fs")
    }

    /// A fresh, empty directory to unpack a layer into.
    pub fn prepare(&self) -> Result<PreparedSnapshot, SnapshotError> {
        let root = self.ingest.join(format!("{:016x}", rand::random::<u64>()));
        let fs_dir = root.join("fs");
        private_dir(&root).map_err(io_err(&root))?;
        fs::create_dir(&fs_dir).map_err(io_err(&fs_dir))?;
        Ok(PreparedSnapshot { root: Some(root), fs_dir })
    }

    /// Moves a completed tree to its permanent name.
    pub fn commit(&self, prepared: PreparedSnapshot, id: u64) -> Result<(), SnapshotError> {
        let mut prepared = prepared;
        let from = prepared.root.take().expect("a prepared snapshot commits once");
        let to = self.dir.join(id.to_string());
        fs::rename(&from, &to).map_err(io_err(&to))?;
        fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))
    }

    /// Creates the writable snapshot `id`: `fs/` is an overlay upperdir and
    /// `work/` its workdir (overlayfs needs both on the same filesystem).
    pub fn create_writable(&self, id: u64) -> Result<(PathBuf, PathBuf), SnapshotError> {
        let root = self.dir.join(id.to_string());
        let (upper, work) = (root.join("fs"), root.join("work"));
        // Only the snapshot's own directory is private: `fs/` is the overlay's
        // upper root, whose mode the container's root directory shows.
        private_dir(&root).map_err(io_err(&root))?;
        for d in [&upper, &work] {
            fs::create_dir_all(d).map_err(io_err(d))?;
        }
        Ok((upper, work))
    }

    /// Bytes and inodes under a snapshot's tree, by walking it without following
    /// symlinks (writable layers change all the time, so no record can say).
    pub fn usage(&self, id: u64) -> Result<(u64, u64), SnapshotError> {
        let mut pending = vec![self.fs_path(id)];
        let (mut bytes, mut inodes) = (0, 0);
        while let Some(dir) = pending.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err(&dir))?;
                let meta = entry.metadata().map_err(io_err(&entry.path()))?;
                inodes += 1;
                if meta.is_dir() {
                    pending.push(entry.path());
                } else if meta.is_file() {
                    bytes += meta.len();
                }
            }
        }
        Ok((bytes, inodes))
    }

    /// Takes a snapshot out of sight at once (a rename) and returns the path whose
    /// deletion may then take as long as the tree needs, outside any lock.
    pub fn detach(&self, id: u64) -> Result<Option<PathBuf>, SnapshotError> {
        let from = self.dir.join(id.to_string());
        let to = self.trash.join(format!("{id}-{:08x}", rand::random::<u32>()));
        match fs::rename(&from, &to) {
            Ok(()) => Ok(Some(to)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&from)(e)),
        }
    }

    /// Removes every numbered directory whose id is not in `recorded`, and returns
    /// the recorded ids whose directory is missing.
    pub fn reconcile(&self, recorded: &HashSet<u64>) -> Result<Vec<u64>, SnapshotError> {
        let mut present = HashSet::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if recorded.contains(&id) {
                present.insert(id);
            } else {
                tracing::info!(snapshot = id, "removing snapshot that no record names");
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(io_err(&path))?;
            }
        }
        Ok(recorded.difference(&present).copied().collect())
    }
}

/// A layer being unpacked. Dropping it without committing removes the tree.
pub struct PreparedSnapshot {
    root: Option<PathBuf>,
    fs_dir: PathBuf,
}

impl PreparedSnapshot {
    pub fn fs_path(&self) -> &Path {
        &self.fs_dir
    }
}

impl Drop for PreparedSnapshot {
    fn drop(&mut self) {
        if let Some(root) = self.root.take()
            && let Err(e) = fs::remove_dir_all(&root)
        {
            tracing::warn!(path = %root.display(), error = %e, "could not remove an abandoned layer unpack");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn snapshot_directories_are_private_but_their_trees_keep_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots_dir = dir.path().join("snapshots");
        let snapshots = Snapshots::open(&snapshots_dir).unwrap();
        assert_eq!(mode(&snapshots_dir), 0o700);
        let prepared = snapshots.prepare().unwrap();
        fs::set_permissions(prepared.fs_path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(mode(prepared.fs_path().parent().unwrap()), 0o700);
        snapshots.commit(prepared, 1).unwrap();
        assert_eq!((mode(&snapshots_dir.join("1")), mode(&snapshots.fs_path(1))), (0o700, 0o755));
        let (upper, _) = snapshots.create_writable(2).unwrap();
        assert_eq!(mode(&snapshots_dir.join("2")), 0o700);
        assert_eq!(mode(&upper) & 0o005, 0o005, "the upper root stays traversable: it is the container's /");
    }
}
