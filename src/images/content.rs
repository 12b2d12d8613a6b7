//! The content store: blobs exactly as the registry served them, addressed by
//! sha256, under `content/blobs/sha256/<hex>`. A blob is written to
//! `content/ingest/` while it streams in and becomes visible only after its digest
//! and size have been verified, by a rename; a crash leaves at most a file in
//! `ingest/`, which `open` clears.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("blob {expected}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: size mismatch, expected {expected} bytes, got {actual}")]
    SizeMismatch { digest: Digest, expected: u64, actual: u64 },
    #[error("content store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContentError + '_ {
    move |source| ContentError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    pub fn open(dir: &Path) -> Result<ContentStore, ContentError> {
        let blobs = dir.join("blobs").join("sha256");
        let ingest = dir.join("ingest");
        // Private: blobs of built or private images may hold secrets (see store::layout).
        crate::store::layout::private_dir(dir).map_err(io_err(dir))?;
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        // Anything in ingest/ is a download that a crash interrupted; no record
        // points at it.
        if ingest.exists() {
            fs::remove_dir_all(&ingest).map_err(io_err(&ingest))?;
        }
        fs::create_dir_all(&ingest).map_err(io_err(&ingest))?;
        Ok(ContentStore { blobs, ingest })
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).exists()
    }

    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, ContentError> {
        let path = self.path(digest);
        fs::read(&path).map_err(io_err(&path))
    }

    /// Starts writing a blob that must hash to `expected`.
    pub fn writer(&self, expected: Digest, expected_size: Option<u64>) -> Result<BlobWriter, ContentError> {
        let temp = self.ingest.join(format!("{}-{:016x}", expected.hex(), rand::random::<u64>()));
        let file = File::options().write(true).create_new(true).open(&temp).map_err(io_err(&temp))?;
        Ok(BlobWriter {
            file,
            temp: Some(temp),
            hasher: Sha256::new(),
            written: 0,
            expected,
            expected_size,
            blobs: self.blobs.clone(),
        })
    }

    /// Starts writing a blob made on this node (a built layer), whose digest is
    /// known only once every byte is written; finish it with `commit_computed`.
    pub fn writer_computed(&self) -> Result<BlobWriter, ContentError> {
        self.writer(Digest::of(b""), None)
    }

    /// Stores a small blob that is already in memory (manifests, configs).
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), ContentError> {
        if self.contains(digest) {
            return Ok(());
        }
        let mut writer = self.writer(digest.clone(), Some(bytes.len() as u64))?;
        writer.write_all(bytes).map_err(io_err(&self.ingest))?;
        writer.commit()
    }

    pub fn delete(&self, digest: &Digest) -> Result<(), ContentError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Every stored blob with its size.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, ContentError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.blobs).map_err(io_err(&self.blobs))? {
            let entry = entry.map_err(io_err(&self.blobs))?;
            let Some(digest) = entry.file_name().to_str().and_then(|n| Digest::from_hex(n).ok()) else {
                continue;
            };
            let size = entry.metadata().map_err(io_err(&entry.path()))?.len();
            out.push((digest, size));
        }
        Ok(out)
    }
}

/// A blob being written. Dropping it without `commit` removes the partial file.
pub struct BlobWriter {
    file: File,
    temp: Option<PathBuf>,
    hasher: Sha256,
    written: u64,
    expected: Digest,
    expected_size: Option<u64>,
    blobs: PathBuf,
}

impl BlobWriter {
    /// Verifies, fsyncs and renames the blob into place, then fsyncs the directory
    /// so the rename itself survives a power cut.
    pub fn commit(mut self) -> Result<(), ContentError> {
        self.verify()?;
        let temp = self.temp.take().expect("commit runs once");
        self.file.sync_all().map_err(io_err(&temp))?;
        let target = self.blobs.join(self.expected.hex());
        fs::rename(&temp, &target).map_err(io_err(&target))?;
        File::open(&self.blobs).and_then(|d| d.sync_all()).map_err(io_err(&self.blobs))
    }

    /// Checks what was written against the expected size and digest.
    pub fn verify(&self) -> Result<(), ContentError> {
        if let Some(expected) = self.expected_size.filter(|&s| s != self.written) {
            return Err(ContentError::SizeMismatch { digest: self.expected.clone(), expected, actual: self.written });
        }
        let actual = Digest::from_hasher(self.hasher.clone());
        if actual != self.expected {
            return Err(ContentError::DigestMismatch { expected: self.expected.clone(), actual });
        }
        Ok(())
    }

    /// The digest and size of what was written so far.
    pub fn written(&self) -> (Digest, u64) {
        (Digest::from_hasher(self.hasher.clone()), self.written)
    }

    /// Publishes a blob from `ContentStore::writer_computed` under the digest of
    /// what was written, and returns that digest and the size.
    pub fn commit_computed(mut self) -> Result<(Digest, u64), ContentError> {
        let (digest, size) = self.written();
        self.expected = digest.clone();
        self.commit()?;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = fs::remove_file(temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_blobs_become_visible_and_bad_ones_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let good = Digest::of(b"hello");
        store.put(&good, b"hello").unwrap();
        assert_eq!(store.read(&good).unwrap(), b"hello");

        let claimed = Digest::of(b"other");
        let mut w = store.writer(claimed.clone(), None).unwrap();
        w.write_all(b"tampered").unwrap();
        assert!(matches!(w.commit(), Err(ContentError::DigestMismatch { .. })));
        assert!(!store.contains(&claimed));
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
        assert_eq!(store.list().unwrap(), vec![(good, 5)]);
    }

    #[test]
    fn reopening_clears_interrupted_ingests() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let w = store.writer(Digest::of(b"x"), None).unwrap();
        std::mem::forget(w);
        ContentStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn the_store_is_private_even_when_it_existed_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("content");
        fs::create_dir(&content).unwrap();
        fs::set_permissions(&content, fs::Permissions::from_mode(0o755)).unwrap();
        ContentStore::open(&content).unwrap();
        assert_eq!(fs::metadata(&content).unwrap().permissions().mode() & 0o7777, 0o700);
    }
}
