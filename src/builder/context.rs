//! The build context a client uploads: a tar stream, spooled to a file and then
//! unpacked with the image room's safe extraction (nothing in it can write
//! outside the context directory). The directory goes when the context is dropped.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::BuildError;
use crate::images::unpack::unpack_layer;

/// An upload in progress.
pub struct Upload {
    dir: Option<PathBuf>,
    file: File,
}

/// An unpacked build context.
pub struct BuildContext {
    dir: PathBuf,
}

impl BuildContext {
    /// Starts receiving an upload under `parent` (its own new directory).
    pub fn receive_start(parent: &Path) -> Result<Upload, BuildError> {
        let dir = parent.join(format!("{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).map_err(BuildError::io(format!("creating {}", dir.display())))?;
        let path = dir.join("upload.tar");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(BuildError::io(format!("creating {}", path.display())))?;
        Ok(Upload { dir: Some(dir), file })
    }

    /// The unpacked files.
    pub fn root(&self) -> PathBuf {
        self.dir.join("files")
    }
}

impl Upload {
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), BuildError> {
        self.file.write_all(chunk).map_err(BuildError::io("spooling the upload"))
    }

    /// The uploaded bytes, rewound, as a file that outlives this upload's directory.
    pub fn into_file(mut self) -> Result<File, BuildError> {
        self.file.seek(SeekFrom::Start(0)).map_err(BuildError::io("rewinding the upload"))?;
        let file = self.file.try_clone().map_err(BuildError::io("reopening the upload"))?;
        Ok(file)
    }

    /// Unpacks the upload as a build context.
    pub async fn finish(mut self) -> Result<BuildContext, BuildError> {
        let dir = self.dir.take().expect("an upload finishes once");
        let context = BuildContext { dir };
        self.file.seek(SeekFrom::Start(0)).map_err(BuildError::io("rewinding the context"))?;
        let file = self.file.try_clone().map_err(BuildError::io("reopening the context"))?;
        let root = context.root();
        let unpacked = tokio::task::spawn_blocking(move || {
            std::fs::create_dir(&root).map_err(BuildError::io(format!("creating {}", root.display())))?;
            unpack_layer(std::io::BufReader::new(file), &root).map_err(|e| BuildError::Invalid(format!("context: {e}")))
        })
        .await
        .map_err(|e| BuildError::Internal(format!("context unpack task: {e}")))?;
        unpacked?;
        let _ = std::fs::remove_file(context.dir.join("upload.tar"));
        Ok(context)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for BuildContext {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "removing a build context");
        }
    }
}
