//! Turning a directory into a layer: an overlay upper dir (what a RUN step or a
//! running container changed) or a plain tree of files (what COPY brings).
//!
//! The tar is deterministic, so that the same changes give the same diff id and
//! digest on every run: entries in byte order of their names, parents before
//! children, no user or group names, whole-second mtimes (clamped to
//! `SOURCE_DATE_EPOCH` when given), a gzip header without name or time. Owner,
//! mode, xattrs (except overlayfs' own) and hard links within the layer are kept.
//! In an upper dir, overlayfs' whiteouts become OCI ones: a 0/0 character device
//! is `.wh.NAME`, a directory marked `trusted.overlay.opaque=y` gets
//! `.wh..wh..opq`.
//!
//! One pass writes the blob: the tar is hashed (the diff id), gzip-compressed into
//! the content store (hashed again: the digest) and, through a pipe, unpacked by
//! the image room's safe unpacker into the snapshot the layer is then run from.
//! Unpacking what was just written costs a second copy of the files, but the
//! snapshot is then exactly what a pull of the pushed layer would give.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Stat};

use flate2::Compression as GzipLevel;
use flate2::write::GzEncoder;
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::error::BuilderError;
use crate::images::digest::Digest;
use crate::images::manifest::{Descriptor, OCI_LAYER_GZIP};
use crate::images::unpack::unpack_layer;
use crate::inroot::{self, WalkEntry};
use crate::images::{ContentHold, ImageService};
use crate::store::LayerRecord;

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const OVERLAY_XATTR_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// What the directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeKind {
    /// An overlayfs upper dir: whiteouts and opaque markers mean deletions.
    OverlayUpper,
    /// Plain files, taken as they are.
    Plain,
}

#[derive(Debug, Clone, Default)]
pub struct LayerOptions {
    /// `SOURCE_DATE_EPOCH`: no entry's mtime is later than this (seconds).
    pub source_date_epoch: Option<i64>,
}

/// A layer in the content store with its snapshot unpacked. It is held against
/// garbage collection until dropped, so drop it only once an image references it.
#[derive(Debug)]
pub struct Layer {
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// The gzip blob as a manifest lists it.
    pub descriptor: Descriptor,
    _hold: ContentHold,
}

impl Layer {
    pub fn record(&self) -> LayerRecord {
        LayerRecord {
            digest: self.descriptor.digest.to_string(),
            media_type: self.descriptor.media_type.clone(),
            size: self.descriptor.size,
            diff_id: self.diff_id.to_string(),
        }
    }
}

/// Writes the layer of `tree` into the image store and unpacks its snapshot.
/// Returns `None` when the tree is empty: nothing changed, and an image records
/// that as a history entry with `empty_layer`. Blocking: run it off the async
/// runtime. A running container may write to the tree meanwhile: a file that
/// changes is taken at the size it had when listed, one that vanishes is left out.
pub fn create_layer(
    images: &ImageService,
    tree: &Path,
    kind: TreeKind,
    options: &LayerOptions,
) -> Result<Option<Layer>, BuilderError> {
    let mut entries = fs::read_dir(tree).map_err(BuilderError::io(tree, "reading directory"))?;
    if entries.next().is_none() {
        return Ok(None);
    }
    let snapshot = images.prepare_snapshot()?;
    let blob = images.content().writer_computed()?;
    let (pipe_reader, pipe_writer) = io::pipe().map_err(BuilderError::io(tree, "creating a pipe"))?;
    let (sink, unpacked) = std::thread::scope(|scope| {
        let unpacker = scope.spawn(|| unpack_layer(pipe_reader, snapshot.fs_path()));
        let sink = LayerSink {
            diff: Sha256::new(),
            gzip: GzEncoder::new(blob, GzipLevel::default()),
            unpack: Some(pipe_writer),
        };
        // Closing the pipe ends the unpacker's stream; on failure, dropping the
        // sink closes it too.
        let written = write_tar(tree, kind, options, sink).map(|mut sink| {
            sink.unpack = None;
            sink
        });
        (written, unpacker.join())
    });
    let unpacked =
        unpacked.map_err(|_| BuilderError::io(tree, "unpacking")(io::Error::other("the unpacker panicked")))?;
    let (sink, stats) = match (sink, unpacked) {
        (Ok(sink), Ok(stats)) => (sink, stats),
        // The unpacker stopped reading, so the pipe broke; its error says why.
        (Err(BuilderError::Io { source, .. }), Err(unpack)) if source.kind() == io::ErrorKind::BrokenPipe => {
            return Err(BuilderError::Snapshot { tree: tree.to_path_buf(), source: unpack });
        }
        (Err(e), _) => return Err(e),
        (Ok(_), Err(unpack)) => return Err(BuilderError::Snapshot { tree: tree.to_path_buf(), source: unpack }),
    };
    let diff_id = Digest::from_hasher(sink.diff);
    let blob = sink.gzip.finish().map_err(BuilderError::io(tree, "compressing the layer"))?;
    let (digest, size) = blob.written();
    let hold = images.hold(vec![digest.to_string(), diff_id.to_string()]);
    blob.commit_computed()?;
    images.commit_snapshot(&diff_id, snapshot, &stats)?;
    tracing::info!(tree = %tree.display(), %diff_id, %digest, size, "layer created");
    let descriptor = Descriptor {
        media_type: OCI_LAYER_GZIP.to_string(),
        digest,
        size,
        urls: Vec::new(),
        annotations: Default::default(),
        platform: None,
    };
    Ok(Some(Layer { diff_id, descriptor, _hold: hold }))
}

/// Writes the tar of `tree` into `sink` and returns the sink once the archive's
/// end marker is written. The tree is walked by descriptors (see
/// `crate::inroot::walk`): a running container that swaps a name for a symlink
/// meanwhile cannot make berth read anything outside the tree, nor open a device.
fn write_tar(tree: &Path, kind: TreeKind, options: &LayerOptions, sink: LayerSink) -> Result<LayerSink, BuilderError> {
    let mut writer = TarWriter { builder: tar::Builder::new(sink), kind, options, first_paths: HashMap::new() };
    let root = inroot::open_dir(tree).map_err(|e| BuilderError::io(tree, "opening")(e.into()))?;
    inroot::walk(root.as_fd(), &mut |entry: &WalkEntry<'_>| -> Result<bool, BuilderError> {
        if entry.rel.as_os_str().is_empty() {
            return Ok(true);
        }
        writer.append(&tree.join(entry.rel), entry)
    })?;
    writer.builder.into_inner().map_err(BuilderError::io(tree, "finishing the layer tar"))
}

/// What an entry holds besides its header.
enum Body {
    Directory,
    File(File),
    /// The path this file was first written under in the layer.
    HardLink(PathBuf),
    Symlink(PathBuf),
    /// Character or block device, or fifo.
    Device(EntryType),
}

struct TarWriter<'a> {
    builder: tar::Builder<LayerSink>,
    kind: TreeKind,
    options: &'a LayerOptions,
    /// (device, inode) of multiply-linked files -> the path first written.
    first_paths: HashMap<(u64, u64), PathBuf>,
}

impl TarWriter<'_> {
    /// Appends one entry; says whether the walk descends into it.
    fn append(&mut self, path: &Path, entry: &WalkEntry<'_>) -> Result<bool, BuilderError> {
        let meta = entry.stat;
        let entry_path = entry.rel;
        let file_type = FileType::from_raw_mode(meta.st_mode);
        let write_err = BuilderError::io(path, "writing the layer tar");
        if self.kind == TreeKind::OverlayUpper && file_type == FileType::CharacterDevice && meta.st_rdev == 0 {
            let name = entry_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let whiteout = entry_path.with_file_name(format!("{WHITEOUT_PREFIX}{name}"));
            self.append_marker(&whiteout, meta).map_err(write_err)?;
            return Ok(false);
        }
        // Everything that may skip the entry comes before its PAX header, which
        // would otherwise apply to the next entry.
        let body = match file_type {
            FileType::Directory => Body::Directory,
            FileType::RegularFile => {
                let key = (meta.st_dev, meta.st_ino);
                match self.first_paths.get(&key) {
                    Some(first) if meta.st_nlink > 1 => Body::HardLink(first.clone()),
                    _ => {
                        let file = entry.open_file().map_err(|e| BuilderError::io(path, "opening")(e.into()))?;
                        if meta.st_nlink > 1 {
                            self.first_paths.insert(key, entry_path.to_path_buf());
                        }
                        Body::File(file)
                    }
                }
            }
            FileType::Symlink => Body::Symlink(entry.link_target().map_err(|e| BuilderError::io(path, "reading symlink")(e.into()))?),
            FileType::CharacterDevice => Body::Device(EntryType::Char),
            FileType::BlockDevice => Body::Device(EntryType::Block),
            FileType::Fifo => Body::Device(EntryType::Fifo),
            _ => {
                tracing::debug!(path = %path.display(), "sockets cannot be archived; skipped");
                return Ok(false);
            }
        };

        let xattrs = read_xattrs(&entry.xattr_path(), path)?;
        let opaque = self.kind == TreeKind::OverlayUpper
            && matches!(body, Body::Directory)
            && xattrs.iter().any(|(name, value)| name == OPAQUE_XATTR && value == b"y");
        let xattrs: Vec<(String, &[u8])> = xattrs
            .iter()
            .filter(|(name, _)| !OVERLAY_XATTR_PREFIXES.iter().any(|p| name.starts_with(p)))
            .map(|(name, value)| (format!("SCHILY.xattr.{name}"), value.as_slice()))
            .collect();
        if !xattrs.is_empty() {
            self.builder.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), *v))).map_err(write_err)?;
        }

        let write_err = BuilderError::io(path, "writing the layer tar");
        let mut header = self.header(meta);
        let size = meta.st_size.max(0) as u64;
        match body {
            Body::Directory => {
                header.set_entry_type(EntryType::Directory);
                self.builder.append_data(&mut header, entry_path, io::empty()).map_err(write_err)?;
                if opaque {
                    self.append_marker(&entry_path.join(OPAQUE_WHITEOUT), meta)
                        .map_err(BuilderError::io(path, "writing the layer tar"))?;
                }
                return Ok(true);
            }
            Body::File(file) => {
                header.set_entry_type(EntryType::Regular);
                header.set_size(size);
                // Exactly the listed size: a file a running container changes
                // meanwhile must not make the entry's data disagree with its header.
                let data = file.take(size).chain(io::repeat(0)).take(size);
                self.builder.append_data(&mut header, entry_path, data).map_err(write_err)?;
            }
            Body::HardLink(first) => {
                header.set_entry_type(EntryType::Link);
                self.builder.append_link(&mut header, entry_path, first).map_err(write_err)?;
            }
            Body::Symlink(target) => {
                header.set_entry_type(EntryType::Symlink);
                self.builder.append_link(&mut header, entry_path, target).map_err(write_err)?;
            }
            Body::Device(entry_type) => {
                header.set_entry_type(entry_type);
                if entry_type != EntryType::Fifo {
                    let device_err = || BuilderError::io(path, "device number");
                    header.set_device_major(rustix::fs::major(meta.st_rdev)).map_err(device_err())?;
                    header.set_device_minor(rustix::fs::minor(meta.st_rdev)).map_err(device_err())?;
                }
                self.builder.append_data(&mut header, entry_path, io::empty()).map_err(write_err)?;
            }
        }
        Ok(false)
    }

    /// An empty regular file standing for a deletion (`.wh.NAME`, `.wh..wh..opq`).
    fn append_marker(&mut self, entry_path: &Path, meta: &Stat) -> io::Result<()> {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        header.set_mtime(self.mtime(meta));
        self.builder.append_data(&mut header, entry_path, io::empty())
    }

    fn header(&self, meta: &Stat) -> Header {
        let mut header = Header::new_gnu();
        header.set_mode(meta.st_mode & 0o7777);
        header.set_uid(meta.st_uid.into());
        header.set_gid(meta.st_gid.into());
        header.set_mtime(self.mtime(meta));
        header.set_size(0);
        header
    }

    fn mtime(&self, meta: &Stat) -> u64 {
        let mtime = match self.options.source_date_epoch {
            Some(epoch) => (meta.st_mtime as i64).min(epoch),
            None => meta.st_mtime as i64,
        };
        mtime.max(0) as u64
    }
}

/// The xattrs of the entry at `xattr_path` itself (not a symlink's target), in
/// name order; `path` names it in errors.
fn read_xattrs(xattr_path: &Path, path: &Path) -> Result<Vec<(String, Vec<u8>)>, BuilderError> {
    let err = BuilderError::io(path, "reading extended attributes");
    let size = match rustix::fs::llistxattr_query(xattr_path) {
        Ok(size) => size,
        // Not supported here, or the entry vanished since it was listed.
        Err(rustix::io::Errno::NOTSUP | rustix::io::Errno::NOENT) => return Ok(Vec::new()),
        Err(e) => return Err(err(e.into())),
    };
    let mut list = vec![0u8; size];
    let len = rustix::fs::llistxattr(xattr_path, &mut list[..]).map_err(|e| err(e.into()))?;
    list.truncate(len);
    let mut xattrs = Vec::new();
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let err = BuilderError::io(path, "reading extended attributes");
        let size = match rustix::fs::lgetxattr_query(xattr_path, name.as_str()) {
            Ok(size) => size,
            // Removed since listed.
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(err(e.into())),
        };
        let mut value = vec![0u8; size];
        let len = rustix::fs::lgetxattr(xattr_path, name.as_str(), &mut value[..]).map_err(|e| err(e.into()))?;
        value.truncate(len);
        xattrs.push((name, value));
    }
    xattrs.sort();
    Ok(xattrs)
}

/// Where the tar goes: hashed for the diff id, gzipped into the blob, and piped to
/// the unpacker.
struct LayerSink {
    diff: Sha256,
    gzip: GzEncoder<crate::images::content::BlobWriter>,
    unpack: Option<io::PipeWriter>,
}

impl Write for LayerSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.gzip.write_all(buf)?;
        if let Some(pipe) = &mut self.unpack {
            pipe.write_all(buf)?;
        }
        self.diff.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.gzip.flush()
    }
}
