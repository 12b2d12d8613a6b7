//! Safe extraction of one layer (an uncompressed tar stream) into a snapshot
//! directory that later becomes an overlayfs lowerdir.
//!
//! The registry that serves a layer controls every byte of its tar, so no name in
//! it is trusted. `dest` is opened once, and every entry's parent directory is
//! resolved from that fd with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`:
//! the kernel then treats `dest` as `/` for absolute symlinks and for `..` alike, so
//! a symlink planted by an earlier entry can never carry a later entry outside. The
//! final component is created with a `*at` call on that parent fd which never
//! follows a symlink. OCI whiteouts become overlayfs whiteouts: 0/0 character
//! devices and the `trusted.overlay.opaque` xattr.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use tar::EntryType;

use crate::inroot::{open_child_dir, open_dir, resolve, resolve_dir, resolve_without_symlinks};

/// What one layer added to the disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Sum of the sizes of the regular files written.
    pub bytes: u64,
    /// Filesystem objects created: files, directories (also the parents a layer
    /// leaves implicit), symlinks, devices, fifos and whiteouts. Hard links share
    /// their target's inode and are not counted; neither is an existing directory
    /// that an entry only updates.
    pub inodes: u64,
    /// Directories this layer did not contain but unpack had to create, relative to
    /// dest, parents before children: the input of `adopt_lower_metadata`. A
    /// directory that a later entry lists after all, replaces or removes is not
    /// among them, nor one created through a symlink of the layer (its path would
    /// name the directory only by way of that symlink).
    pub implicit_dirs: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot open layer destination {}: {source}", dest.display())]
    Destination { dest: PathBuf, source: io::Error },
    #[error("cannot read lower layer {}: {source}", path.display())]
    LowerLayer { path: PathBuf, source: io::Error },
    #[error("malformed layer tar: {0}")]
    Malformed(io::Error),
    #[error("malformed layer tar: the extension headers of one entry exceed {METADATA_BUDGET} bytes")]
    MetadataTooLarge,
    #[error("layer tar ends without its end-of-archive marker: the stream is truncated")]
    MissingEndOfArchive,
    #[error("layer entry {path:?}: the name contains a `..` component")]
    ParentComponent { path: String },
    #[error("layer entry {path:?}: hard link target {target:?} contains a `..` component")]
    HardlinkTargetEscapes { path: String, target: String },
    #[error("layer entry {path:?}: hard link target {target:?} does not exist in this layer")]
    HardlinkTargetMissing { path: String, target: String },
    #[error("layer entry {path:?}: {reason}")]
    Invalid { path: String, reason: &'static str },
    #[error("layer entry {path:?}: unsupported entry type {type_flag:?}")]
    UnsupportedType { path: String, type_flag: char },
    #[error("layer entry {path:?}: the data ends after {written} of {expected} bytes")]
    TruncatedData { path: String, expected: u64, written: u64 },
    #[error("layer entry {path:?}: unreadable header field {field}: {source}")]
    Header { path: String, field: &'static str, source: io::Error },
    #[error("layer entry {path:?}: header field {field} is out of range: {value}")]
    OutOfRange { path: String, field: &'static str, value: u64 },
    #[error("layer entry {path:?}: PAX record {key}: {reason}")]
    Pax { path: String, key: String, reason: &'static str },
    #[error("layer entry {path:?}: cannot set extended attribute {name}: {source}")]
    Xattr { path: String, name: String, source: io::Error },
    #[error("layer entry {path:?}: {op}: {source}")]
    Io { path: String, op: &'static str, source: io::Error },
}

/// Go's archive/tar, which writes the layers of docker, buildkit and most registry
/// tooling, refuses any single long-name or PAX record over 1 MiB. One entry may
/// carry a GNU long name, a long link name and a PAX header, each bounded so, plus
/// header blocks; anything beyond this is not a layer but an attempt to make the
/// tar reader (which holds these records in memory) allocate without bound.
const METADATA_BUDGET: u64 = 4 << 20;
const TAR_BLOCK: u64 = 512;
const COPY_BUFFER_SIZE: usize = 128 << 10;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";
/// AUFS kept its own bookkeeping under this prefix (`.wh..wh.plnk`, `.wh..wh.aufs`);
/// old Docker layers still carry it and it means nothing to overlayfs.
const AUFS_METADATA_PREFIX: &[u8] = b".wh..wh.";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
const PAX_GNU_SPARSE_PREFIX: &[u8] = b"GNU.sparse.";
/// overlayfs reads its own metadata from these namespaces (`user.` when mounted
/// with `userxattr`): opaque markers, redirects, metacopy and origin records. A
/// layer that carried them could make the mounted rootfs show files the layers do
/// not contain, or follow a redirect elsewhere in the lower stack. Only the
/// whiteout conversion here may write them.
const OVERLAY_XATTR_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];
/// Mode of the parent directories a layer uses without listing them (what Docker and
/// containerd give them too).
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Extracts the uncompressed tar layer stream `tar` into `dest`, an existing, empty
/// directory that becomes an overlayfs lowerdir. Parent directories the layer uses
/// without listing them are created 0755 root:root and listed in
/// `UnpackStats::implicit_dirs`; see `adopt_lower_metadata`.
///
/// Everything lands inside `dest` or the layer is refused; a refused or failed layer
/// leaves a partial tree behind that the caller discards. The tree is flushed to disk
/// (syncfs) before this returns, so the caller may rename and record it right away.
/// The stream is read to its end, so that a decompressor checks its trailer and a
/// digest computed over the stream covers every byte.
pub fn unpack_layer<R: Read>(tar: R, dest: &Path) -> Result<UnpackStats, UnpackError> {
    let root = open_dir(dest).map_err(|source| UnpackError::Destination { dest: dest.to_path_buf(), source: source.into() })?;
    unpack_layer_at(tar, root, dest)
}

/// `unpack_layer` into the open directory `root` (`dest` names it in errors): a
/// directory already resolved inside another root, such as ADD's destination in a
/// step's root filesystem.
pub fn unpack_layer_at<R: Read>(tar: R, root: OwnedFd, dest: &Path) -> Result<UnpackStats, UnpackError> {
    let destination_error =
        |source: Errno| UnpackError::Destination { dest: dest.to_path_buf(), source: source.into() };
    let stream = Rc::new(StreamState::default());
    let mut archive = tar::Archive::new(MeteredReader { inner: tar, state: Rc::clone(&stream) });
    let mut layer = Layer {
        root,
        dir_times: BTreeMap::new(),
        implicit_dirs: ImplicitDirs::default(),
        stats: UnpackStats::default(),
        buffer: vec![0; COPY_BUFFER_SIZE],
    };

    let mut end_of_last_entry = 0u64;
    let mut entries = archive.entries().map_err(UnpackError::Malformed)?;
    loop {
        stream.metadata_budget.set(Some(METADATA_BUDGET));
        let next = entries.next();
        stream.metadata_budget.set(None);
        let mut entry = match next {
            None => break,
            Some(Ok(entry)) => entry,
            Some(Err(_)) if stream.budget_exceeded.get() => return Err(UnpackError::MetadataTooLarge),
            Some(Err(e)) => return Err(UnpackError::Malformed(e)),
        };
        end_of_last_entry = entry
            .size()
            .checked_next_multiple_of(TAR_BLOCK)
            .and_then(|padded| padded.checked_add(entry.raw_file_position()))
            .ok_or_else(|| UnpackError::Malformed(io::Error::other("entry size overflows")))?;
        layer.apply(&mut entry)?;
        // Data an entry type does not use (a directory or link that carries bytes)
        // is drained here, outside the metadata budget, rather than skipped by the
        // tar reader inside it.
        io::copy(&mut entry, &mut io::sink()).map_err(|source| UnpackError::Io {
            path: shown(&entry.path_bytes()),
            op: "read entry data",
            source,
        })?;
    }
    // The tar reader takes a clean end of stream at a block boundary for the end of
    // the archive; only the zero block it reads when the marker is really there tells
    // a complete layer from one cut short between two entries.
    if stream.consumed.get() < end_of_last_entry.saturating_add(TAR_BLOCK) {
        return Err(UnpackError::MissingEndOfArchive);
    }
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(UnpackError::Malformed)?;

    layer.apply_directory_times()?;
    rustix::fs::syncfs(&layer.root).map_err(destination_error)?;
    let implicit_dirs = layer.implicit_dirs.still_implicit(&layer.root)?;
    Ok(UnpackStats { implicit_dirs, ..layer.stats })
}

/// Gives each directory in `implicit_dirs` (as `UnpackStats::implicit_dirs` lists
/// them) that is still an implicit directory of `dest` the owner, mode and mtime of
/// the topmost of `lowers` (topmost first) that has a directory at that path.
/// `lowers` are the unpacked layers this one goes on top of, which a parallel pull
/// may finish only after `dest`. Some layer writers (umoci among them) list a
/// changed file without its parent directories; in the overlay the directory
/// unpack then had to create hides the lower one's metadata, so an implicit `tmp/`
/// would turn a 1777 /tmp into 0755. containerd keeps the lower metadata too.
///
/// The lookup is the overlay's own: every path is resolved inside its tree with
/// openat2 RESOLVE_IN_ROOT and without following any symlink. A lower with a
/// non-directory at the path or on the way to it (a file, a whiteout, a symlink)
/// stops the search, because it hides the layers below; so does an opaque
/// directory above the path, in a lower or in `dest`. A directory missing from
/// every lower, or hidden so, is left as unpack made it: 0755 root:root. A path
/// that no longer names a directory of `dest` without a symlink is skipped. Like
/// `unpack_layer`, this flushes `dest` to disk before it returns.
pub fn adopt_lower_metadata(dest: &Path, implicit_dirs: &[PathBuf], lowers: &[&Path]) -> Result<(), UnpackError> {
    let destination_error =
        |source: Errno| UnpackError::Destination { dest: dest.to_path_buf(), source: source.into() };
    let root = open_dir(dest).map_err(destination_error)?;
    let mut trees =
        vec![Tree { root, path: dest, error: |dest, source| UnpackError::Destination { dest, source } }];
    for &lower in lowers {
        let root =
            open_dir(lower).map_err(|e| UnpackError::LowerLayer { path: lower.to_path_buf(), source: e.into() })?;
        trees.push(Tree { root, path: lower, error: |path, source| UnpackError::LowerLayer { path, source } });
    }
    let roots = trees.iter().map(Tree::presence_of_root).collect::<Result<Vec<_>, _>>()?;

    // The presences of the previous path's ancestors in every tree, `dest` first:
    // `walk[i]` is the one of its first i+1 components. Listed parents first, the
    // next path mostly shares them, so each directory is looked up once.
    let mut walk: Vec<Vec<Presence>> = Vec::new();
    let mut previous: Vec<&OsStr> = Vec::new();
    let mut changed = false;
    for rel in implicit_dirs {
        let path = shown(rel.as_os_str().as_bytes());
        let components = plain_components(rel).ok_or_else(|| invalid(&path, "not a relative path below the layer"))?;
        let shared = previous.iter().zip(&components).take_while(|(a, b)| a == b).count();
        walk.truncate(shared);
        let mut prefix: PathBuf = components[..shared].iter().collect();
        for component in &components[shared..] {
            prefix.push(component);
            let above = walk.last().unwrap_or(&roots);
            let here = trees
                .iter()
                .zip(above)
                .map(|(tree, above)| tree.presence(&prefix, above))
                .collect::<Result<Vec<_>, _>>()?;
            walk.push(here);
        }
        previous = components;

        let Some((in_dest, in_lowers)) = walk.last().and_then(|here| here.split_first()) else {
            continue;
        };
        match in_dest {
            Presence::Directory { under_opaque: false, .. } => {}
            Presence::Directory { under_opaque: true, .. } => {
                tracing::debug!(dir = %path, "the layer made a parent opaque; implicit directory keeps its metadata");
                continue;
            }
            Presence::Absent { .. } | Presence::Blocked => {
                tracing::debug!(dir = %path, "no longer a directory of the layer; metadata not adopted");
                continue;
            }
        }
        let mut source = None;
        for presence in in_lowers {
            match presence {
                Presence::Directory { meta, .. } => {
                    source = Some(meta);
                    break;
                }
                Presence::Absent { under_opaque: false } => {}
                Presence::Absent { under_opaque: true } | Presence::Blocked => break,
            }
        }
        let Some(meta) = source else { continue };
        let dir = resolve_without_symlinks(&trees[0].root, rel).map_err(io_error(&path, "open implicit directory"))?;
        rustix::fs::fchown(&dir, Some(meta.uid), Some(meta.gid)).map_err(io_error(&path, "set owner"))?;
        rustix::fs::fchmod(&dir, meta.mode).map_err(io_error(&path, "set mode"))?;
        rustix::fs::futimens(&dir, &meta.mtime.both()).map_err(io_error(&path, "set mtime"))?;
        changed = true;
    }
    if changed {
        rustix::fs::syncfs(&trees[0].root).map_err(destination_error)?;
    }
    Ok(())
}

#[derive(Default)]
struct StreamState {
    consumed: Cell<u64>,
    /// Bytes the tar reader may still read for the entry it is parsing; `None`
    /// while the entry's data is being read.
    metadata_budget: Cell<Option<u64>>,
    budget_exceeded: Cell<bool>,
}

/// Counts what the tar reader consumes and caps what it may read while parsing one
/// entry's headers (see `METADATA_BUDGET`).
struct MeteredReader<R> {
    inner: R,
    state: Rc<StreamState>,
}

impl<R: Read> Read for MeteredReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let budget = self.state.metadata_budget.get();
        let allowed = match budget {
            Some(0) if !buf.is_empty() => {
                self.state.budget_exceeded.set(true);
                return Err(io::Error::other("entry headers exceed the metadata budget"));
            }
            Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let n = self.inner.read(&mut buf[..allowed])?;
        self.state.consumed.set(self.state.consumed.get() + n as u64);
        if let Some(left) = budget {
            self.state.metadata_budget.set(Some(left - n as u64));
        }
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timestamp {
    secs: i64,
    nanos: u32,
}

impl Timestamp {
    /// Access and modification time both set to this instant: a layer records only
    /// the mtime that matters, and a fixed atime keeps unpacked trees reproducible.
    fn both(self) -> Timestamps {
        let spec = Timespec { tv_sec: self.secs, tv_nsec: self.nanos.into() };
        Timestamps { last_access: spec, last_modification: spec }
    }
}

/// Owner, mode, mtime and xattrs of one entry, from its header and PAX records.
struct EntryMeta {
    uid: Uid,
    gid: Gid,
    mode: Mode,
    mtime: Timestamp,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Directory,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

struct Layer {
    root: OwnedFd,
    /// Directory mtimes, applied once every entry is in place because creating a
    /// child changes its parent's mtime. Keyed by path rather than holding fds: a
    /// layer may have far more directories than a process may hold open descriptors;
    /// a map keeps one record per directory however often the tar lists it.
    dir_times: BTreeMap<PathBuf, Timestamp>,
    implicit_dirs: ImplicitDirs,
    stats: UnpackStats,
    buffer: Vec<u8>,
}

impl Layer {
    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        let path = shown(&raw_path);
        let type_flag = entry.header().entry_type();
        let old_style_regular = entry.header().as_old().linkflag[0] == b'\0';
        let kind = match type_flag {
            // Pre-POSIX archives marked directories as old-style regular entries
            // whose name ends in a slash.
            EntryType::Regular if old_style_regular && raw_path.ends_with(b"/") => Kind::Directory,
            EntryType::Regular | EntryType::Continuous => Kind::File,
            EntryType::Directory => Kind::Directory,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::Hardlink,
            EntryType::Char => Kind::Char,
            EntryType::Block => Kind::Block,
            EntryType::Fifo => Kind::Fifo,
            // Global PAX headers hold archive-wide defaults (git archive puts a
            // commit id there); layer writers never rely on them.
            EntryType::XGlobalHeader => {
                tracing::debug!(entry = %path, "ignoring a global PAX header in a layer");
                return Ok(());
            }
            other => return Err(UnpackError::UnsupportedType { path, type_flag: char::from(other.as_byte()) }),
        };
        let rel = contained_path(&raw_path).ok_or_else(|| UnpackError::ParentComponent { path: path.clone() })?;

        let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
            return self.apply_root(entry, kind, &path);
        };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parent_rel, &name, &path);
        }
        let meta = entry_meta(entry, &path)?;
        let parent = self.open_parent(parent_rel, &path)?;
        let name = name.as_os_str();
        match kind {
            Kind::File => self.write_file(entry, parent.as_fd(), name, &rel, &meta, &path),
            Kind::Directory => self.make_directory(parent.as_fd(), name, &rel, meta, &path),
            Kind::Symlink => self.make_symlink(entry, parent.as_fd(), name, &rel, &meta, &path),
            Kind::Hardlink => self.make_hardlink(entry, parent.as_fd(), name, &rel, &path),
            Kind::Char | Kind::Block | Kind::Fifo => {
                self.make_special(entry, kind, parent.as_fd(), name, &rel, &meta, &path)
            }
        }
    }

    /// An entry named `.`, `./` or `/` describes `dest` itself.
    fn apply_root<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: Kind,
        path: &str,
    ) -> Result<(), UnpackError> {
        if kind != Kind::Directory {
            return Err(invalid(path, "names the layer root but is not a directory"));
        }
        let meta = entry_meta(entry, path)?;
        set_owner_and_mode(self.root.as_fd(), &meta, path)?;
        set_xattrs(Node::Open(self.root.as_fd()), &meta.xattrs, path)?;
        self.dir_times.insert(PathBuf::new(), meta.mtime);
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        meta: &EntryMeta,
        path: &str,
    ) -> Result<(), UnpackError> {
        self.remove_existing(parent, name, rel, path)?;
        // O_CREAT|O_EXCL never opens an existing name, symlink or not, so the data
        // can only go into a fresh inode and never through a link (soft or hard) an
        // earlier entry planted; O_NOFOLLOW states the same intent. 0600 until the
        // owner and mode from the header are applied after the data.
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io_error(path, "create file"))?;
        self.stats.inodes += 1;
        let mut file = File::from(fd);
        let expected = entry.size();
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(UnpackError::Io { path: path.to_owned(), op: "read entry data", source }),
            };
            file.write_all(&self.buffer[..n]).map_err(|source| UnpackError::Io {
                path: path.to_owned(),
                op: "write file data",
                source,
            })?;
            written += n as u64;
        }
        if written != expected {
            return Err(UnpackError::TruncatedData { path: path.to_owned(), expected, written });
        }
        self.stats.bytes += written;
        // Owner before mode, because chown clears setuid and setgid; xattrs after
        // both, because chown and writes clear security.capability.
        set_owner_and_mode(file.as_fd(), meta, path)?;
        set_xattrs(Node::Open(file.as_fd()), &meta.xattrs, path)?;
        rustix::fs::futimens(&file, &meta.mtime.both()).map_err(io_error(path, "set mtime"))
    }

    fn make_directory(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        meta: EntryMeta,
        path: &str,
    ) -> Result<(), UnpackError> {
        // 0700 until the header's owner and mode are applied below.
        let initial_mode = Mode::from_raw_mode(0o700);
        match rustix::fs::mkdirat(parent, name, initial_mode) {
            Ok(()) => self.stats.inodes += 1,
            Err(Errno::EXIST) => {
                let existing = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_error(path, "inspect existing entry"))?;
                // An existing directory keeps its contents and takes the new
                // metadata; anything else (a symlink included) is replaced.
                if FileType::from_raw_mode(existing.st_mode) != FileType::Directory {
                    rustix::fs::unlinkat(parent, name, AtFlags::empty()).map_err(io_error(path, "replace"))?;
                    rustix::fs::mkdirat(parent, name, initial_mode).map_err(io_error(path, "create directory"))?;
                    self.stats.inodes += 1;
                }
            }
            Err(e) => return Err(io_error(path, "create directory")(e)),
        }
        let dir = open_child_dir(parent, name).map_err(io_error(path, "open directory"))?;
        if !self.implicit_dirs.is_empty() {
            let inode = rustix::fs::fstat(&dir).map_err(io_error(path, "inspect directory"))?.st_ino;
            self.implicit_dirs.forget_inode(inode);
        }
        set_owner_and_mode(dir.as_fd(), &meta, path)?;
        set_xattrs(Node::Open(dir.as_fd()), &meta.xattrs, path)?;
        self.dir_times.insert(rel.to_path_buf(), meta.mtime);
        Ok(())
    }

    fn make_symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        meta: &EntryMeta,
        path: &str,
    ) -> Result<(), UnpackError> {
        // The target is stored verbatim: a symlink may point anywhere, and what it
        // reaches is decided by whoever follows it: the container, inside its own
        // root, or here openat2 with RESOLVE_IN_ROOT.
        let target = entry.link_name_bytes().ok_or_else(|| invalid(path, "symlink without a target"))?;
        self.remove_existing(parent, name, rel, path)?;
        rustix::fs::symlinkat(OsStr::from_bytes(&target), parent, name).map_err(io_error(path, "create symlink"))?;
        self.stats.inodes += 1;
        // A symlink's own mode is meaningless on Linux and chmod would follow it, so
        // only owner, xattrs and times are applied, all without following.
        rustix::fs::chownat(parent, name, Some(meta.uid), Some(meta.gid), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_error(path, "set owner"))?;
        set_xattrs(Node::Named { parent, name }, &meta.xattrs, path)?;
        rustix::fs::utimensat(parent, name, &meta.mtime.both(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_error(path, "set mtime"))
    }

    /// A hard link's metadata is its target's: the entry adds a name, not an inode.
    fn make_hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        path: &str,
    ) -> Result<(), UnpackError> {
        let raw_target = entry.link_name_bytes().ok_or_else(|| invalid(path, "hard link without a target"))?;
        let target_shown = shown(&raw_target);
        let target = contained_path(&raw_target).ok_or_else(|| UnpackError::HardlinkTargetEscapes {
            path: path.to_owned(),
            target: target_shown.clone(),
        })?;
        let Some(target_name) = target.file_name() else {
            return Err(invalid(path, "hard link to the layer root"));
        };
        if target == rel {
            return Ok(());
        }
        let missing = || UnpackError::HardlinkTargetMissing { path: path.to_owned(), target: target_shown.clone() };
        let target_parent = match resolve_dir(&self.root, target.parent().unwrap_or(Path::new(""))) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Err(missing()),
            Err(e) => return Err(io_error(path, "open hard link target directory")(e)),
        };
        self.remove_existing(parent, name, rel, path)?;
        // No AT_SYMLINK_FOLLOW: a target that is a symlink is linked as the symlink
        // itself, as tar does, and never resolved to whatever it points at. The
        // target's parent was resolved inside `dest`, so the inode is one of this
        // layer's own.
        match rustix::fs::linkat(&target_parent, target_name, parent, name, AtFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::NOENT) => Err(missing()),
            Err(e) => Err(io_error(path, "create hard link")(e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn make_special<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        kind: Kind,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        meta: &EntryMeta,
        path: &str,
    ) -> Result<(), UnpackError> {
        let device_number = |field: &'static str, number: io::Result<Option<u32>>| match number {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err(UnpackError::Header {
                path: path.to_owned(),
                field,
                source: io::Error::other("an old-style header has no device numbers"),
            }),
            Err(source) => Err(UnpackError::Header { path: path.to_owned(), field, source }),
        };
        let (file_type, device) = match kind {
            Kind::Char | Kind::Block => {
                let major = device_number("devmajor", entry.header().device_major())?;
                let minor = device_number("devminor", entry.header().device_minor())?;
                let file_type = if kind == Kind::Char { FileType::CharacterDevice } else { FileType::BlockDevice };
                (file_type, rustix::fs::makedev(major, minor))
            }
            _ => (FileType::Fifo, 0),
        };
        self.remove_existing(parent, name, rel, path)?;
        rustix::fs::mknodat(parent, name, file_type, Mode::from_raw_mode(0o600), device)
            .map_err(io_error(path, "create device or fifo"))?;
        self.stats.inodes += 1;
        rustix::fs::chownat(parent, name, Some(meta.uid), Some(meta.gid), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_error(path, "set owner"))?;
        chmod_without_opening(parent, name, meta.mode).map_err(io_error(path, "set mode"))?;
        set_xattrs(Node::Named { parent, name }, &meta.xattrs, path)?;
        rustix::fs::utimensat(parent, name, &meta.mtime.both(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_error(path, "set mtime"))
    }

    /// `parent_rel/.wh.NAME` hides NAME of the lower layers: overlayfs spells that
    /// as a 0/0 character device named NAME. `parent_rel/.wh..wh..opq` hides all of
    /// the lower layers' `parent_rel`: overlayfs spells that as an xattr on it.
    fn whiteout(&mut self, parent_rel: &Path, name: &OsStr, path: &str) -> Result<(), UnpackError> {
        let name = name.as_bytes();
        if name == OPAQUE_WHITEOUT {
            let dir = self.open_parent(parent_rel, path)?;
            return rustix::fs::fsetxattr(&dir, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(io_error(path, "mark directory opaque"));
        }
        if name.starts_with(AUFS_METADATA_PREFIX) {
            tracing::debug!(entry = %path, "ignoring AUFS metadata in a layer");
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(invalid(path, "whiteout that names no file"));
        }
        let hidden = OsStr::from_bytes(hidden);
        let parent = self.open_parent(parent_rel, path)?;
        // A whiteout only hides lower layers (OCI image spec): a file this same layer
        // already created under the hidden name stays.
        match rustix::fs::statat(&parent, hidden, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => return Ok(()),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(io_error(path, "inspect whiteout target")(e)),
        }
        rustix::fs::mknodat(&parent, hidden, FileType::CharacterDevice, Mode::empty(), rustix::fs::makedev(0, 0))
            .map_err(io_error(path, "create whiteout device"))?;
        self.stats.inodes += 1;
        Ok(())
    }

    /// Opens the directory `rel` (resolved inside `dest`), creating the parents a
    /// layer uses without listing them.
    fn open_parent(&mut self, rel: &Path, path: &str) -> Result<OwnedFd, UnpackError> {
        match resolve_dir(&self.root, rel) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(io_error(path, "open parent directory")(e)),
        }
        // Walk down from the root, each step again resolved inside `dest` so that a
        // symlink among the ancestors keeps being followed within it.
        let mut dir = resolve_dir(&self.root, Path::new("")).map_err(io_error(path, "open layer root"))?;
        let mut prefix = PathBuf::new();
        for component in rel.components() {
            prefix.push(component);
            dir = match resolve_dir(&self.root, &prefix) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    let name = component.as_os_str();
                    match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
                        Ok(()) => {}
                        // The name exists yet resolving it found nothing: a symlink
                        // whose target is not in this layer. Creating the target
                        // would mean guessing a path; the layer is refused instead.
                        Err(Errno::EXIST) => {
                            return Err(invalid(path, "a parent is a symlink to a directory missing from the layer"));
                        }
                        Err(e) => return Err(io_error(path, "create parent directory")(e)),
                    }
                    self.stats.inodes += 1;
                    let created = open_child_dir(dir.as_fd(), name).map_err(io_error(path, "open parent directory"))?;
                    // Explicitly root:root: a setgid parent would otherwise pass its group on.
                    rustix::fs::fchown(&created, Some(Uid::ROOT), Some(Gid::ROOT))
                        .map_err(io_error(path, "set parent directory owner"))?;
                    rustix::fs::fchmod(&created, Mode::from_raw_mode(IMPLICIT_DIR_MODE))
                        .map_err(io_error(path, "set parent directory mode"))?;
                    let inode =
                        rustix::fs::fstat(&created).map_err(io_error(path, "inspect parent directory"))?.st_ino;
                    self.implicit_dirs.insert(prefix.clone(), inode);
                    created
                }
                Err(e) => return Err(io_error(path, "open parent directory")(e)),
            };
        }
        Ok(dir)
    }

    /// Clears `name` for a new non-directory: tar semantics, where the later entry
    /// wins. A directory in the way is removed with its contents.
    fn remove_existing(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        path: &str,
    ) -> Result<(), UnpackError> {
        match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            // Linux answers EISDIR when unlink meets a directory.
            Err(Errno::ISDIR) => {
                remove_tree(parent, name).map_err(io_error(path, "remove the directory it replaces"))?;
                let descendants: Vec<PathBuf> = self
                    .dir_times
                    .range(rel.to_path_buf()..)
                    .take_while(|(p, _)| p.starts_with(rel))
                    .map(|(p, _)| p.clone())
                    .collect();
                for dir in descendants {
                    self.dir_times.remove(&dir);
                }
                self.implicit_dirs.forget_tree(rel);
                Ok(())
            }
            Err(e) => Err(io_error(path, "replace")(e)),
        }
    }

    fn apply_directory_times(&self) -> Result<(), UnpackError> {
        for (rel, mtime) in &self.dir_times {
            let path = shown(rel.as_os_str().as_bytes());
            // O_NOFOLLOW: a name recorded as a directory must not lead to another
            // directory through a symlink. A directory reached through a symlinked
            // parent (`lib/x` with `lib -> usr/lib`) may have been replaced under
            // its other name (`usr/lib/x`) since; that later entry won, so there is
            // no mtime left to restore.
            let dir = match resolve(&self.root, rel, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW, ResolveFlags::empty()) {
                Ok(dir) => dir,
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {
                    tracing::debug!(entry = %path, "directory replaced later in the layer; mtime not restored");
                    continue;
                }
                Err(e) => return Err(io_error(&path, "open directory")(e)),
            };
            rustix::fs::futimens(&dir, &mtime.both()).map_err(io_error(&path, "set directory mtime"))?;
        }
        Ok(())
    }
}

/// The directories a layer used without listing them, while they still are: an
/// entry for one of them makes it explicit, and one that replaces it or an ancestor
/// removes it. Known by inode as well as by path, because a symlink in the layer
/// can give a directory a second name, under which an entry may list it. `by_path`
/// is the record; `by_inode` may keep stale entries, checked against it.
#[derive(Default)]
struct ImplicitDirs {
    by_path: BTreeMap<PathBuf, u64>,
    by_inode: HashMap<u64, PathBuf>,
}

impl ImplicitDirs {
    fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    fn insert(&mut self, rel: PathBuf, inode: u64) {
        // The inode number of a directory removed through another name came back.
        if let Some(stale) = self.by_inode.insert(inode, rel.clone()) {
            self.remove_path_if(&stale, inode);
        }
        self.by_path.insert(rel, inode);
    }

    /// The directory `inode` got an entry of its own.
    fn forget_inode(&mut self, inode: u64) {
        if let Some(rel) = self.by_inode.remove(&inode) {
            self.remove_path_if(&rel, inode);
        }
    }

    /// `rel` and everything below it were removed.
    fn forget_tree(&mut self, rel: &Path) {
        let removed: Vec<(PathBuf, u64)> = self
            .by_path
            .range(rel.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(rel))
            .map(|(p, &inode)| (p.clone(), inode))
            .collect();
        for (path, inode) in removed {
            self.by_path.remove(&path);
            if self.by_inode.get(&inode) == Some(&path) {
                self.by_inode.remove(&inode);
            }
        }
    }

    fn remove_path_if(&mut self, rel: &Path, inode: u64) {
        if self.by_path.get(rel) == Some(&inode) {
            self.by_path.remove(rel);
        }
    }

    /// The recorded paths, parents first, that still lead without a symlink to the
    /// directory recorded there. One removed through another name is not (it is
    /// gone, or something else took its place), and neither is one created
    /// through a symlink: overlayfs would not look for the lower metadata there.
    fn still_implicit(self, root: &OwnedFd) -> Result<Vec<PathBuf>, UnpackError> {
        let mut paths = Vec::with_capacity(self.by_path.len());
        for (rel, inode) in self.by_path {
            match resolve_without_symlinks(root, &rel) {
                Ok(dir) => {
                    let stat = rustix::fs::fstat(&dir)
                        .map_err(io_error(&shown(rel.as_os_str().as_bytes()), "inspect implicit directory"))?;
                    if stat.st_ino == inode {
                        paths.push(rel);
                    }
                }
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {}
                Err(e) => return Err(io_error(&shown(rel.as_os_str().as_bytes()), "open implicit directory")(e)),
            }
        }
        Ok(paths)
    }
}

/// `dest` or one of the lower layers, for `adopt_lower_metadata`.
struct Tree<'a> {
    root: OwnedFd,
    path: &'a Path,
    /// `UnpackError::Destination` or `UnpackError::LowerLayer`.
    error: fn(PathBuf, io::Error) -> UnpackError,
}

/// What one tree has at a path, as overlayfs would find it there.
enum Presence {
    /// `under_opaque`: an ancestor is an opaque directory, so the trees below this
    /// one show nothing at the path.
    Directory { under_opaque: bool, opaque: bool, meta: DirMeta },
    Absent { under_opaque: bool },
    /// A non-directory (a symlink included) at the path or on the way to it; it
    /// hides the same path in the trees below.
    Blocked,
}

/// The metadata an implicit directory adopts.
struct DirMeta {
    uid: Uid,
    gid: Gid,
    mode: Mode,
    mtime: Timestamp,
}

impl Tree<'_> {
    fn presence_of_root(&self) -> Result<Presence, UnpackError> {
        let meta = dir_meta(&self.root).map_err(|e| self.error(Path::new(""), e))?;
        Ok(Presence::Directory { under_opaque: false, opaque: false, meta })
    }

    /// The presence at `rel`, given the presence `parent` at its parent.
    fn presence(&self, rel: &Path, parent: &Presence) -> Result<Presence, UnpackError> {
        let under_opaque = match *parent {
            Presence::Blocked => return Ok(Presence::Blocked),
            Presence::Absent { under_opaque } => return Ok(Presence::Absent { under_opaque }),
            Presence::Directory { under_opaque, opaque, .. } => under_opaque || opaque,
        };
        match resolve_without_symlinks(&self.root, rel) {
            Ok(dir) => {
                let opaque = is_opaque(&dir).map_err(|e| self.error(rel, e))?;
                let meta = dir_meta(&dir).map_err(|e| self.error(rel, e))?;
                Ok(Presence::Directory { under_opaque, opaque, meta })
            }
            Err(Errno::NOENT) => Ok(Presence::Absent { under_opaque }),
            Err(Errno::NOTDIR | Errno::LOOP) => Ok(Presence::Blocked),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    fn error(&self, rel: &Path, source: Errno) -> UnpackError {
        (self.error)(self.path.join(rel), source.into())
    }
}

fn dir_meta(dir: &OwnedFd) -> Result<DirMeta, Errno> {
    let stat = rustix::fs::fstat(dir)?;
    Ok(DirMeta {
        uid: Uid::from_raw(stat.st_uid),
        gid: Gid::from_raw(stat.st_gid),
        mode: Mode::from_raw_mode(stat.st_mode & 0o7777),
        mtime: Timestamp { secs: stat.st_mtime, nanos: u32::try_from(stat.st_mtime_nsec).unwrap_or(0) },
    })
}

/// overlayfs takes a directory for opaque only when the xattr is exactly "y".
fn is_opaque(dir: &OwnedFd) -> Result<bool, Errno> {
    let mut value = [0u8; 1];
    match rustix::fs::fgetxattr(dir, OVERLAY_OPAQUE_XATTR, &mut value[..]) {
        Ok(len) => Ok(len == 1 && value[0] == b'y'),
        Err(Errno::NODATA | Errno::RANGE | Errno::OPNOTSUPP) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The components of `rel` if all are plain names, as unpack records paths.
fn plain_components(rel: &Path) -> Option<Vec<&OsStr>> {
    let components = rel
        .components()
        .map(|component| match component {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    (!components.is_empty()).then_some(components)
}

/// The entry name as a path relative to `dest`. Leading `/` and `./` are dropped, so
/// an absolute name lands inside `dest`. A name with a `..` component gives `None`
/// and the layer is refused rather than the name clamped: no layer writer emits
/// `..`, so one is a sign of a broken or hostile archive, and clamping would put the
/// file somewhere the archive does not say, yielding a tree that differs from what
/// the image's author and other runtimes see while the pull looks successful.
fn contained_path(raw: &[u8]) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(name) => rel.push(name),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(rel)
}

fn entry_meta<R: Read>(entry: &mut tar::Entry<'_, R>, path: &str) -> Result<EntryMeta, UnpackError> {
    let header = entry.header();
    let field = |field: &'static str| move |source| UnpackError::Header { path: path.to_owned(), field, source };
    // The tar reader has already folded PAX uid and gid records into the header.
    let uid = id_in_range(header.uid().map_err(field("uid"))?, "uid", path)?;
    let gid = id_in_range(header.gid().map_err(field("gid"))?, "gid", path)?;
    let mode = header.mode().map_err(field("mode"))? & 0o7777;
    let seconds = header.mtime().map_err(field("mtime"))?;
    let secs = i64::try_from(seconds).map_err(|_| UnpackError::OutOfRange {
        path: path.to_owned(),
        field: "mtime",
        value: seconds,
    })?;
    let mut mtime = Timestamp { secs, nanos: 0 };
    let mut xattrs = Vec::new();
    if let Some(records) = entry.pax_extensions().map_err(field("PAX header"))? {
        for record in records {
            let record = record.map_err(field("PAX header"))?;
            let key = record.key_bytes();
            if key == b"mtime" {
                mtime = parse_pax_time(record.value_bytes()).ok_or_else(|| UnpackError::Pax {
                    path: path.to_owned(),
                    key: "mtime".to_owned(),
                    reason: "not a decimal timestamp",
                })?;
            } else if key.starts_with(PAX_GNU_SPARSE_PREFIX) {
                // A PAX sparse file looks like a regular entry whose data starts
                // with a sparse map; writing it out as is would corrupt the file.
                return Err(UnpackError::Pax {
                    path: path.to_owned(),
                    key: shown(key),
                    reason: "GNU sparse files are not supported",
                });
            } else if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                if OVERLAY_XATTR_PREFIXES.iter().any(|prefix| name.starts_with(prefix)) {
                    tracing::warn!(entry = %path, xattr = %shown(name), "dropping an overlayfs xattr carried by a layer");
                    continue;
                }
                xattrs.push((OsString::from_vec(name.to_vec()), record.value_bytes().to_vec()));
            }
        }
    }
    Ok(EntryMeta { uid: Uid::from_raw(uid), gid: Gid::from_raw(gid), mode: Mode::from_raw_mode(mode), mtime, xattrs })
}

/// u32::MAX is excluded too: as -1 it tells chown to leave the id unchanged.
fn id_in_range(id: u64, field: &'static str, path: &str) -> Result<u32, UnpackError> {
    u32::try_from(id).ok().filter(|&id| id != u32::MAX).ok_or_else(|| UnpackError::OutOfRange {
        path: path.to_owned(),
        field,
        value: id,
    })
}

/// A PAX time: decimal seconds since the epoch with an optional fraction and sign.
/// Digits finer than a nanosecond are dropped, as other tar readers do.
fn parse_pax_time(value: &[u8]) -> Option<Timestamp> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if whole.is_empty() || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let nanos =
        fraction.bytes().chain(std::iter::repeat(b'0')).take(9).fold(0u32, |n, digit| n * 10 + u32::from(digit - b'0'));
    Some(match (negative, nanos) {
        (false, _) => Timestamp { secs, nanos },
        (true, 0) => Timestamp { secs: -secs, nanos: 0 },
        (true, _) => Timestamp { secs: -secs - 1, nanos: 1_000_000_000 - nanos },
    })
}

fn set_owner_and_mode(fd: BorrowedFd<'_>, meta: &EntryMeta, path: &str) -> Result<(), UnpackError> {
    rustix::fs::fchown(fd, Some(meta.uid), Some(meta.gid)).map_err(io_error(path, "set owner"))?;
    rustix::fs::fchmod(fd, meta.mode).map_err(io_error(path, "set mode"))
}

/// Sets the mode of the device or fifo `name` without opening it for I/O (opening a
/// fifo blocks, opening a device can have side effects) and without following a
/// symlink: fchmodat has no working AT_SYMLINK_NOFOLLOW before Linux 6.6 (rustix
/// refuses the flag), and fchmod rejects O_PATH descriptors. The node is opened
/// O_PATH|O_NOFOLLOW and changed through its /proc/self/fd entry, a magic link that
/// resolves to exactly that inode.
fn chmod_without_opening(parent: BorrowedFd<'_>, name: &OsStr, mode: Mode) -> Result<(), Errno> {
    let node = rustix::fs::openat(parent, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    rustix::fs::chmod(format!("/proc/self/fd/{}", node.as_raw_fd()), mode)
}

/// Where an entry's xattrs go: an open file or directory, or a name in `parent` for
/// the node types that cannot be opened for I/O safely (symlinks, devices, fifos).
#[derive(Clone, Copy)]
enum Node<'a> {
    Open(BorrowedFd<'a>),
    Named { parent: BorrowedFd<'a>, name: &'a OsStr },
}

fn set_xattrs(node: Node<'_>, xattrs: &[(OsString, Vec<u8>)], path: &str) -> Result<(), UnpackError> {
    for (name, value) in xattrs {
        let result = match node {
            Node::Open(fd) => rustix::fs::fsetxattr(fd, name.as_os_str(), value, XattrFlags::empty()),
            // lsetxattr takes only a path. /proc/self/fd/<parent> is the directory
            // already resolved inside `dest`; the one component after it is the
            // entry's own name, which lsetxattr does not follow.
            Node::Named { parent, name: node_name } => {
                let mut proc_path = PathBuf::from(format!("/proc/self/fd/{}", parent.as_raw_fd()));
                proc_path.push(node_name);
                rustix::fs::lsetxattr(&proc_path, name.as_os_str(), value, XattrFlags::empty())
            }
        };
        match result {
            Ok(()) => {}
            // The filesystem under the snapshot store cannot hold this namespace
            // (e.g. user.* on some tmpfs or overlay upper dirs). The image still runs
            // everywhere else Docker and containerd would run it, which skip it too.
            Err(Errno::OPNOTSUPP) => {
                tracing::warn!(entry = %path, xattr = %shown(name.as_bytes()), "filesystem does not support this xattr; skipped");
            }
            Err(source) => {
                return Err(UnpackError::Xattr {
                    path: path.to_owned(),
                    name: shown(name.as_bytes()),
                    source: source.into(),
                });
            }
        }
    }
    Ok(())
}

/// Removes the directory `name` in `parent` with everything below it, never
/// following a symlink. Iterative, holding one fd per level: a hostile layer can
/// build a tree deeper than any stack (each symlink hop restarts the path length
/// limit), and running out of descriptors is an error where stack exhaustion would
/// abort the daemon.
fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    struct Level {
        name: CString,
        dir: OwnedFd,
        children: Vec<CString>,
    }
    fn open_level(parent: BorrowedFd<'_>, name: CString) -> io::Result<Level> {
        let dir = rustix::fs::openat(
            parent,
            name.as_c_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut children = Vec::new();
        for child in rustix::fs::Dir::read_from(&dir)? {
            let child = child?;
            let child_name = child.file_name();
            if child_name != c"." && child_name != c".." {
                children.push(child_name.to_owned());
            }
        }
        Ok(Level { name, dir, children })
    }

    let top = CString::new(name.as_bytes()).map_err(io::Error::other)?;
    let mut stack = vec![open_level(parent, top)?];
    while let Some(level) = stack.last_mut() {
        match level.children.pop() {
            Some(child) => match rustix::fs::unlinkat(&level.dir, child.as_c_str(), AtFlags::empty()) {
                Ok(()) => {}
                Err(Errno::ISDIR) => {
                    let deeper = open_level(level.dir.as_fd(), child)?;
                    stack.push(deeper);
                }
                Err(e) => return Err(e.into()),
            },
            None => {
                let name = level.name.clone();
                stack.pop();
                let above = stack.last().map_or(parent, |level| level.dir.as_fd());
                rustix::fs::unlinkat(above, name.as_c_str(), AtFlags::REMOVEDIR)?;
            }
        }
    }
    Ok(())
}

fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn invalid(path: &str, reason: &'static str) -> UnpackError {
    UnpackError::Invalid { path: path.to_owned(), reason }
}

fn io_error<'a, E: Into<io::Error>>(path: &'a str, op: &'static str) -> impl FnOnce(E) -> UnpackError + 'a {
    move |error| UnpackError::Io { path: path.to_owned(), op, source: error.into() }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    use tar::{Builder, Header};

    use super::*;
    use crate::images::compression::Compression;

    const MTIME: u64 = 1_600_000_000;

    /// `dest` plus a sentinel directory next to it that no layer may ever touch.
    struct Sandbox {
        tmp: tempfile::TempDir,
        dest: PathBuf,
        sentinel: PathBuf,
    }

    impl Sandbox {
        fn new() -> Sandbox {
            let tmp = tempfile::tempdir().unwrap();
            let dest = tmp.path().join("dest");
            let sentinel = tmp.path().join("sentinel");
            fs::create_dir(&dest).unwrap();
            fs::create_dir(&sentinel).unwrap();
            Sandbox { tmp, dest, sentinel }
        }

        fn unpack(&self, tar: &[u8]) -> Result<UnpackStats, UnpackError> {
            unpack_layer(tar, &self.dest)
        }

        fn at(&self, rel: &str) -> PathBuf {
            self.dest.join(rel)
        }

        fn meta(&self, rel: &str) -> fs::Metadata {
            fs::symlink_metadata(self.at(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
        }

        fn exists(&self, rel: &str) -> bool {
            fs::symlink_metadata(self.at(rel)).is_ok()
        }

        fn assert_contained(&self) {
            let escaped: Vec<_> = fs::read_dir(&self.sentinel).unwrap().map(|e| e.unwrap().path()).collect();
            assert!(escaped.is_empty(), "written outside dest: {escaped:?}");
            let mut beside: Vec<_> = fs::read_dir(self.tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            beside.sort();
            assert_eq!(beside, ["dest", "sentinel"], "written next to dest");
        }
    }

    fn new_header(kind: EntryType, mode: u32) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        header
    }

    fn file(builder: &mut Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
        let mut header = new_header(EntryType::Regular, mode);
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, path, data).unwrap();
    }

    fn dir(builder: &mut Builder<Vec<u8>>, path: &str, mode: u32) {
        builder.append_data(&mut new_header(EntryType::Directory, mode), path, io::empty()).unwrap();
    }

    fn link(builder: &mut Builder<Vec<u8>>, kind: EntryType, path: &str, target: &str) {
        builder.append_link(&mut new_header(kind, 0o777), path, target).unwrap();
    }

    /// Writes name and link name byte for byte, past the tar crate's own path
    /// checks, as a hostile registry would.
    fn raw(builder: &mut Builder<Vec<u8>>, kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) {
        let mut header = new_header(kind, 0o644);
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }

    fn tar(build: impl FnOnce(&mut Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().unwrap()
    }

    fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let mut buf = [0u8; 1024];
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(Errno::NODATA) => None,
            Err(e) => panic!("lgetxattr {}: {e}", path.display()),
        }
    }

    #[test]
    fn files_directories_owners_modes_and_times() {
        let sandbox = Sandbox::new();
        let layer = tar(|b| {
            dir(b, "etc", 0o755);
            let mut header = new_header(EntryType::Regular, 0o640);
            header.set_uid(1234);
            header.set_gid(5678);
            header.set_size(5);
            b.append_data(&mut header, "etc/shadow", &b"root:"[..]).unwrap();
            let mut header = new_header(EntryType::Regular, 0o4755);
            header.set_uid(1000);
            header.set_size(3);
            b.append_data(&mut header, "usr/bin/su", &b"ELF"[..]).unwrap();
            let mut header = new_header(EntryType::Directory, 0o3777);
            header.set_gid(50);
            header.set_mtime(1_500_000_000);
            b.append_data(&mut header, "var/tmp", io::empty()).unwrap();
            // Written after its directory, so the directory's mtime must be
            // restored at the end.
            file(b, "var/tmp/later", 0o600, b"x");
        });
        let stats = sandbox.unpack(&layer).unwrap();

        assert_eq!(fs::read(sandbox.at("etc/shadow")).unwrap(), b"root:");
        let shadow = sandbox.meta("etc/shadow");
        assert_eq!((shadow.uid(), shadow.gid(), shadow.mode() & 0o7777), (1234, 5678, 0o640));
        assert_eq!(shadow.mtime(), MTIME as i64);
        assert_eq!(sandbox.meta("usr/bin/su").mode() & 0o7777, 0o4755, "setuid survives the chown");
        assert_eq!(sandbox.meta("usr/bin/su").uid(), 1000);
        assert_eq!(sandbox.meta("usr").mode() & 0o7777, IMPLICIT_DIR_MODE, "implicit parent");
        let tmp = sandbox.meta("var/tmp");
        assert!(tmp.is_dir());
        assert_eq!((tmp.mode() & 0o7777, tmp.gid()), (0o3777, 50));
        assert_eq!(tmp.mtime(), 1_500_000_000, "directory mtime applied after its children");
        assert_eq!(sandbox.meta("etc").mtime(), MTIME as i64);
        // etc, etc/shadow, usr, usr/bin, usr/bin/su, var, var/tmp, var/tmp/later
        let implicit_dirs = paths(&["usr", "usr/bin", "var"]);
        assert_eq!(stats, UnpackStats { bytes: 9, inodes: 8, implicit_dirs });
        sandbox.assert_contained();
    }

    #[test]
    fn pax_mtime_keeps_nanoseconds() {
        let sandbox = Sandbox::new();
        let layer = tar(|b| {
            b.append_pax_extensions([("mtime", &b"1700000000.123456789"[..])]).unwrap();
            file(b, "precise", 0o644, b"");
            b.append_pax_extensions([("mtime", &b"-1.5"[..])]).unwrap();
            file(b, "before-epoch", 0o644, b"");
        });
        sandbox.unpack(&layer).unwrap();
        let precise = sandbox.meta("precise");
        assert_eq!((precise.mtime(), precise.mtime_nsec()), (1_700_000_000, 123_456_789));
        assert_eq!((precise.atime(), precise.atime_nsec()), (1_700_000_000, 123_456_789));
        let before = sandbox.meta("before-epoch");
        assert_eq!((before.mtime(), before.mtime_nsec()), (-2, 500_000_000));
    }

    #[test]
    fn malformed_pax_mtime_is_refused() {
        let sandbox = Sandbox::new();
        let layer = tar(|b| {
            b.append_pax_extensions([("mtime", &b"soon"[..])]).unwrap();
            file(b, "f", 0o644, b"");
        });
        let err = sandbox.unpack(&layer).unwrap_err();
        assert!(matches!(&err, UnpackError::Pax { path, key, .. } if path == "f" && key == "mtime"), "{err}");
    }

    #[test]
    fn symlinks_and_hardlinks() {
        let sandbox = Sandbox::new();
        let layer = tar(|b| {
            file(b, "bin/busybox", 0o755, b"busybox");
            link(b, EntryType::Symlink, "bin/sh", "busybox");
            link(b, EntryType::Symlink, "etc/mtab", "/proc/self/mounts");
            link(b, EntryType::Link, "bin/ls", "bin/busybox");
            raw(b, EntryType::Link, b"/bin/cat", b"./bin/busybox", b"");
            link(b, EntryType::Link, "bin/sh-again", "bin/sh");
        });
        let stats = sandbox.unpack(&layer).unwrap();
        assert_eq!(fs::read_link(sandbox.at("bin/sh")).unwrap(), Path::new("busybox"));
        assert_eq!(fs::read_link(sandbox.at("etc/mtab")).unwrap(), Path::new("/proc/self/mounts"), "stored verbatim");
        assert_eq!(sandbox.meta("etc/mtab").mtime(), MTIME as i64, "symlink mtime set without following");
        let busybox = sandbox.meta("bin/busybox");
        assert_eq!(busybox.nlink(), 3);
        assert_eq!(sandbox.meta("bin/ls").ino(), busybox.ino());
        assert_eq!(sandbox.meta("bin/cat").ino(), busybox.ino());
        let sh_again = sandbox.meta("bin/sh-again");
        assert!(sh_again.file_type().is_symlink(), "a link to a symlink links the symlink");
        assert_eq!(sh_again.ino(), sandbox.meta("bin/sh").ino());
        // bin, bin/busybox, bin/sh, etc, etc/mtab
        let implicit_dirs = paths(&["bin", "etc"]);
        assert_eq!(stats, UnpackStats { bytes: 7, inodes: 5, implicit_dirs });
    }

    #[test]
    fn symlink_owner_is_set_on_the_link_itself() {
        let sandbox = Sandbox::new();
        let layer = tar(|b| {
            file(b, "target", 0o644, b"");
            let mut header = new_header(EntryType::Symlink, 0o777);
            header.set_uid(42);
            header.set_gid(43);
            b.append_link(&mut header, "link", "target").unwrap();
        });
        sandbox.unpack(&layer).unwrap();
        assert_eq!((sandbox.meta("link").uid(), sandbox.meta("link").gid()), (42, 43));
        assert_eq!((sandbox.meta("target").uid(), sandbox.meta("target").gid()), (0, 0));
    }

    #[test]
    fn devices_and_fifos() {
        let sandbox = Sandbox::new();
        let layer = tar(|b| {
            let mut null = new_header(EntryType::Char, 0o666);
            null.set_device_major(1).unwrap();
            null.set_device_minor(3).unwrap();
            b.append_data(&mut null, "dev/null", io::empty()).unwrap();
            let mut disk = new_header(EntryType::Block, 0o660);
            disk.set_device_major(8).unwrap();
            disk.set_device_minor(1).unwrap();
            disk.set_gid(6);
            b.append_data(&mut disk, "dev/sda1", io::empty()).unwrap();
            b.append_data(&mut new_header(EntryType::Fifo, 0o1622), "run/initctl", io::empty()).unwrap();
        });
        sandbox.unpack(&layer).unwrap();
        let null = sandbox.meta("dev/null");
        assert!(null.file_type().is_char_device());
        assert_eq!((null.rdev(), null.mode() & 0o7777), (rustix::fs::makedev(1, 3), 0o666));
        let disk = sandbox.meta("dev/sda1");
        assert!(disk.file_type().is_block_device());
        assert_eq!((disk.rdev(), disk.mode() & 0o7777, disk.gid()), (rustix::fs::makedev(8, 1), 0o660, 6));
        let fifo = sandbox.meta("run/initctl");
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o1622);
        assert_eq!(fifo.mtime(), MTIME as i64);
    }

    #[test]
    fn xattrs_are_applied_and_overlay_ones_dropped() {
        // VFS_CAP_REVISION_2 with the effective bit, permitting CAP_NET_BIND_SERVICE.
        let mut capability = Vec::new();
        for word in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
            capability.extend(word.to_le_bytes());
        }
        let sandbox = Sandbox::new();
        let layer = tar(|b| {
            b.append_pax_extensions([
                ("SCHILY.xattr.user.comment", &b"from the layer"[..]),
                ("SCHILY.xattr.security.capability", &capability[..]),
            ])
            .unwrap();
            let mut header = new_header(EntryType::Regular, 0o755);
            header.set_uid(1000);
            header.set_size(3);
            b.append_data(&mut header, "usr/bin/ping", &b"ELF"[..]).unwrap();
            b.append_pax_extensions([
                ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
                ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
                ("SCHILY.xattr.user.overlay.opaque", &b"y"[..]),
                ("SCHILY.xattr.user.kept", &b"1"[..]),
            ])
            .unwrap();
            dir(b, "forged", 0o755);
            b.append_pax_extensions([("SCHILY.xattr.trusted.label", &b"on-the-link"[..])]).unwrap();
            link(b, EntryType::Symlink, "forged/link", "/nowhere");
        });
        sandbox.unpack(&layer).unwrap();
        let ping = sandbox.at("usr/bin/ping");
        assert_eq!(xattr(&ping, "user.comment").as_deref(), Some(&b"from the layer"[..]));
        assert_eq!(xattr(&ping, "security.capability"), Some(capability), "set after chown, which clears it");
        let forged = sandbox.at("forged");
        assert_eq!(xattr(&forged, "trusted.overlay.opaque"), None);
        assert_eq!(xattr(&forged, "trusted.overlay.redirect"), None);
        assert_eq!(xattr(&forged, "user.overlay.opaque"), None);
        assert_eq!(xattr(&forged, "user.kept").as_deref(), Some(&b"1"[..]));
        assert_eq!(xattr(&sandbox.at("forged/link"), "trusted.label").as_deref(), Some(&b"on-the-link"[..]));
    }

    #[test]
    fn long_names_and_long_link_names() {
        let deep = format!("{}/{}", "d".repeat(120), "f".repeat(150));
        let pax_name = format!("{}/{}", "p".repeat(200), "q".repeat(200));
        let target = format!("/{}", "t".repeat(220));
        let sandbox = Sandbox::new();
        let layer = tar(|b| {
            file(b, &deep, 0o644, b"gnu long name");
            b.append_pax_extensions([("path", pax_name.as_bytes())]).unwrap();
            file(b, "short-name-overridden-by-pax", 0o644, b"pax long name");
            link(b, EntryType::Symlink, "long-link", &target);
            link(b, EntryType::Link, "hard-to-deep", &deep);
        });
        sandbox.unpack(&layer).unwrap();
        assert_eq!(fs::read(sandbox.at(&deep)).unwrap(), b"gnu long name");
        assert_eq!(fs::read(sandbox.at(&pax_name)).unwrap(), b"pax long name");
        assert!(!sandbox.exists("short-name-overridden-by-pax"));
        assert_eq!(fs::read_link(sandbox.at("long-link")).unwrap(), Path::new(&target));
        assert_eq!(sandbox.meta("hard-to-deep").ino(), sandbox.meta(&deep).ino());
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let sandbox = Sandbox::new();
        let layer = tar(|b| {
            dir(b, "etc", 0o755);
            file(b, "etc/.wh.motd", 0o644, b"");
            file(b, "var/lib/apt/lists/.wh..wh..opq", 0o644, b"");
            file(b, "aufs/.wh..wh.plnk", 0o644, b"");
            file(b, "same-layer", 0o644, b"stays");
            file(b, ".wh.same-layer", 0o644, b"");
        });
        let stats = sandbox.unpack(&layer).unwrap();
        let whiteout = sandbox.meta("etc/motd");
        assert!(whiteout.file_type().is_char_device());
        assert_eq!(whiteout.rdev(), 0);
        assert!(!sandbox.exists("etc/.wh.motd"), "the OCI marker itself is not kept");
        assert_eq!(xattr(&sandbox.at("var/lib/apt/lists"), OVERLAY_OPAQUE_XATTR).as_deref(), Some(&b"y"[..]));
        assert!(!sandbox.exists("var/lib/apt/lists/.wh..wh..opq"));
        assert!(!sandbox.exists("aufs"), "AUFS metadata is skipped");
        assert_eq!(fs::read(sandbox.at("same-layer")).unwrap(), b"stays", "whiteouts hide lower layers only");
        // etc, etc/motd, var, var/lib, var/lib/apt, var/lib/apt/lists, same-layer
        assert_eq!(stats.inodes, 7);
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let sandbox = Sandbox::new();
        let layer = tar(|b| {
            file(b, "was-file", 0o644, b"old");
            dir(b, "was-file", 0o750);
            file(b, "was-file/child", 0o644, b"new");
            dir(b, "was-dir", 0o755);
            dir(b, "was-dir/sub", 0o755);
            file(b, "was-dir/sub/deep", 0o644, b"gone");
            link(b, EntryType::Symlink, "was-dir/link", "/etc");
            file(b, "was-dir", 0o600, b"now a file");
            file(b, "twice", 0o644, b"first");
            file(b, "twice", 0o644, b"second");
            link(b, EntryType::Symlink, "was-link", "twice");
            file(b, "was-link", 0o644, b"not through the link");
            link(b, EntryType::Symlink, "dir-was-link", "etc");
            dir(b, "dir-was-link", 0o755);
            dir(b, "kept", 0o755);
            file(b, "kept/inside", 0o644, b"");
            dir(b, "kept", 0o700);
        });
        sandbox.unpack(&layer).unwrap();
        assert!(sandbox.meta("was-file").is_dir());
        assert_eq!(sandbox.meta("was-file").mode() & 0o7777, 0o750);
        assert_eq!(fs::read(sandbox.at("was-file/child")).unwrap(), b"new");
        assert!(sandbox.meta("was-dir").is_file());
        assert_eq!(fs::read(sandbox.at("was-dir")).unwrap(), b"now a file");
        assert_eq!(fs::read(sandbox.at("twice")).unwrap(), b"second");
        assert!(sandbox.meta("was-link").is_file());
        assert_eq!(fs::read(sandbox.at("was-link")).unwrap(), b"not through the link");
        assert_eq!(fs::read(sandbox.at("twice")).unwrap(), b"second", "the old symlink target is untouched");
        assert!(sandbox.meta("dir-was-link").is_dir());
        assert!(sandbox.exists("kept/inside"), "a repeated directory entry keeps its contents");
        assert_eq!(sandbox.meta("kept").mode() & 0o7777, 0o700);
    }

    #[test]
    fn directory_replaced_under_another_name_keeps_the_later_entry() {
        let sandbox = Sandbox::new();
        let layer = tar(|b| {
            dir(b, "usr/lib", 0o755);
            link(b, EntryType::Symlink, "lib", "usr/lib");
            dir(b, "lib/x", 0o755);
            file(b, "usr/lib/x", 0o644, b"the later entry");
        });
        sandbox.unpack(&layer).unwrap();
        assert_eq!(fs::read(sandbox.at("lib/x")).unwrap(), b"the later entry");
        assert_eq!(sandbox.meta("usr/lib/x").mtime(), MTIME as i64);
    }

    fn dir_owned(builder: &mut Builder<Vec<u8>>, path: &str, mode: u32, owner: u64, mtime: u64) {
        let mut header = new_header(EntryType::Directory, mode);
        header.set_uid(owner);
        header.set_gid(owner);
        header.set_mtime(mtime);
        builder.append_data(&mut header, path, io::empty()).unwrap();
    }

    /// Mode, owner and group of `rel` in `sandbox`.
    fn mode_and_owner(sandbox: &Sandbox, rel: &str) -> (u32, u32, u32) {
        let meta = sandbox.meta(rel);
        (meta.mode() & 0o7777, meta.uid(), meta.gid())
    }

    const IMPLICIT: (u32, u32, u32) = (IMPLICIT_DIR_MODE, 0, 0);

    fn paths(paths: &[&str]) -> Vec<PathBuf> {
        paths.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn implicit_parents_take_metadata_from_the_layers_below() {
        let base = Sandbox::new();
        base.unpack(&tar(|b| {
            dir_owned(b, "tmp", 0o1777, 0, 1_111_111_111);
            dir_owned(b, "home/user", 0o750, 1000, MTIME);
            dir(b, "var", 0o700);
        }))
        .unwrap();
        let middle = Sandbox::new();
        middle.unpack(&tar(|b| file(b, ".wh.var", 0o644, b""))).unwrap();

        let top = Sandbox::new();
        let stats = top
            .unpack(&tar(|b| {
                file(b, "tmp/scratch", 0o644, b"");
                file(b, "home/user/.profile", 0o644, b"");
                file(b, "var/new", 0o644, b"");
                file(b, "opt/fresh", 0o644, b"");
            }))
            .unwrap();
        assert_eq!(stats.implicit_dirs, paths(&["home", "home/user", "opt", "tmp", "var"]));
        assert_eq!(mode_and_owner(&top, "tmp"), IMPLICIT, "unpack alone cannot know the lower layers");

        adopt_lower_metadata(&top.dest, &stats.implicit_dirs, &[&middle.dest, &base.dest]).unwrap();
        assert_eq!(mode_and_owner(&top, "tmp"), (0o1777, 0, 0));
        assert_eq!(top.meta("tmp").mtime(), 1_111_111_111);
        assert_eq!(mode_and_owner(&top, "home/user"), (0o750, 1000, 1000));
        assert_eq!(mode_and_owner(&top, "var"), IMPLICIT, "hidden below by a whiteout");
        assert_eq!(mode_and_owner(&top, "opt"), IMPLICIT, "in no lower layer");
        assert!(top.meta("tmp/scratch").is_file());
        top.assert_contained();
    }

    #[test]
    fn a_symlink_in_a_lower_layer_is_not_followed_and_hides_the_layers_below() {
        let base = Sandbox::new();
        base.unpack(&tar(|b| {
            dir_owned(b, "tmp", 0o1777, 0, MTIME);
            dir_owned(b, "opt/app", 0o700, 7, MTIME);
        }))
        .unwrap();
        let middle = Sandbox::new();
        fs::create_dir(middle.sentinel.join("app")).unwrap();
        for outside in [middle.sentinel.clone(), middle.sentinel.join("app")] {
            std::os::unix::fs::chown(&outside, Some(4242), Some(4242)).unwrap();
            fs::set_permissions(&outside, fs::Permissions::from_mode(0o1733)).unwrap();
        }
        let sentinel = middle.sentinel.to_str().unwrap().to_owned();
        middle
            .unpack(&tar(|b| {
                dir_owned(b, "realtmp", 0o1733, 4242, MTIME);
                link(b, EntryType::Symlink, "tmp", "realtmp");
                link(b, EntryType::Symlink, "opt", &sentinel);
            }))
            .unwrap();

        let top = Sandbox::new();
        let stats = top
            .unpack(&tar(|b| {
                file(b, "tmp/scratch", 0o644, b"");
                file(b, "opt/app/bin", 0o755, b"");
            }))
            .unwrap();
        adopt_lower_metadata(&top.dest, &stats.implicit_dirs, &[&middle.dest, &base.dest]).unwrap();
        assert_eq!(mode_and_owner(&top, "tmp"), IMPLICIT, "neither the symlink's target nor the layer below it");
        assert_eq!(mode_and_owner(&top, "opt"), IMPLICIT);
        assert_eq!(mode_and_owner(&top, "opt/app"), IMPLICIT, "a symlinked ancestor hides the path too");
        top.assert_contained();
    }

    #[test]
    fn a_file_in_a_lower_layer_hides_the_directories_below_it() {
        let base = Sandbox::new();
        base.unpack(&tar(|b| {
            dir_owned(b, "var", 0o700, 5, MTIME);
            dir_owned(b, "srv/www", 0o750, 33, MTIME);
        }))
        .unwrap();
        let middle = Sandbox::new();
        middle
            .unpack(&tar(|b| {
                file(b, "var", 0o644, b"a file now");
                file(b, "srv", 0o644, b"a file now");
            }))
            .unwrap();

        let top = Sandbox::new();
        let stats = top
            .unpack(&tar(|b| {
                file(b, "var/new", 0o644, b"");
                file(b, "srv/www/index.html", 0o644, b"");
            }))
            .unwrap();
        adopt_lower_metadata(&top.dest, &stats.implicit_dirs, &[&middle.dest, &base.dest]).unwrap();
        assert_eq!(mode_and_owner(&top, "var"), IMPLICIT);
        assert_eq!(mode_and_owner(&top, "srv"), IMPLICIT);
        assert_eq!(mode_and_owner(&top, "srv/www"), IMPLICIT, "a file as an ancestor hides the path too");

        // Without the middle layer, the same directories come from the base.
        let top = Sandbox::new();
        let stats = top.unpack(&tar(|b| file(b, "srv/www/index.html", 0o644, b""))).unwrap();
        adopt_lower_metadata(&top.dest, &stats.implicit_dirs, &[&base.dest]).unwrap();
        assert_eq!(mode_and_owner(&top, "srv/www"), (0o750, 33, 33));
    }

    #[test]
    fn opaque_directories_hide_the_layers_below() {
        let base = Sandbox::new();
        base.unpack(&tar(|b| {
            dir_owned(b, "opt/app", 0o700, 7, MTIME);
            dir_owned(b, "srv", 0o750, 8, MTIME);
            dir_owned(b, "srv/data", 0o700, 9, MTIME);
        }))
        .unwrap();
        let middle = Sandbox::new();
        middle
            .unpack(&tar(|b| {
                dir_owned(b, "opt", 0o711, 0, MTIME);
                file(b, "opt/.wh..wh..opq", 0o644, b"");
            }))
            .unwrap();

        let top = Sandbox::new();
        let stats = top
            .unpack(&tar(|b| {
                file(b, "opt/app/bin", 0o755, b"");
                file(b, "srv/.wh..wh..opq", 0o644, b"");
                file(b, "srv/data/f", 0o644, b"");
            }))
            .unwrap();
        adopt_lower_metadata(&top.dest, &stats.implicit_dirs, &[&middle.dest, &base.dest]).unwrap();
        assert_eq!(mode_and_owner(&top, "opt"), (0o711, 0, 0));
        assert_eq!(mode_and_owner(&top, "opt/app"), IMPLICIT, "the middle layer emptied opt");
        assert_eq!(mode_and_owner(&top, "srv"), (0o750, 8, 8));
        assert_eq!(mode_and_owner(&top, "srv/data"), IMPLICIT, "this layer emptied srv");
    }

    #[test]
    fn implicit_dirs_leave_out_those_listed_replaced_or_reached_through_a_symlink() {
        let sandbox = Sandbox::new();
        let stats = sandbox
            .unpack(&tar(|b| {
                file(b, "listed/later/f", 0o644, b"");
                dir(b, "listed", 0o750);
                file(b, "gone/sub/f", 0o644, b"");
                file(b, "gone", 0o644, b"a file now");
                file(b, "usr/lib/x/f", 0o644, b"");
                link(b, EntryType::Symlink, "lib", "/usr/lib");
                // The same directory as usr/lib/x, listed under its other name.
                dir(b, "lib/x", 0o700);
                file(b, "lib/y/f", 0o644, b"");
            }))
            .unwrap();
        assert_eq!(stats.implicit_dirs, paths(&["listed/later", "usr", "usr/lib"]));
        assert!(sandbox.meta("usr/lib/y").is_dir());

        let base = Sandbox::new();
        base.unpack(&tar(|b| {
            dir_owned(b, "listed", 0o700, 3, MTIME);
            dir_owned(b, "usr/lib/x", 0o755, 4, MTIME);
        }))
        .unwrap();
        adopt_lower_metadata(&sandbox.dest, &stats.implicit_dirs, &[&base.dest]).unwrap();
        assert_eq!(mode_and_owner(&sandbox, "listed"), (0o750, 0, 0), "the layer's own entry stands");
        assert_eq!(mode_and_owner(&sandbox, "usr/lib/x"), (0o700, 0, 0), "the layer's own entry stands");
    }

    #[test]
    fn adopting_refuses_paths_that_leave_the_layer_and_skips_missing_ones() {
        let top = Sandbox::new();
        let base = Sandbox::new();
        base.unpack(&tar(|b| dir(b, "etc", 0o700))).unwrap();
        for rel in ["../sentinel", "/etc", "a/../etc", ""] {
            let err = adopt_lower_metadata(&top.dest, &[PathBuf::from(rel)], &[&base.dest]).unwrap_err();
            assert!(matches!(err, UnpackError::Invalid { .. }), "{rel:?}: {err}");
        }
        adopt_lower_metadata(&top.dest, &paths(&["etc"]), &[&base.dest]).unwrap();
        assert!(!top.exists("etc"));
        top.assert_contained();
    }

    #[test]
    fn root_entry_sets_metadata_of_dest() {
        let sandbox = Sandbox::new();
        let layer = tar(|b| {
            let mut root = new_header(EntryType::Directory, 0o711);
            root.set_mtime(1_234_567_890);
            root.set_path("./").unwrap();
            root.set_cksum();
            b.append(&root, io::empty()).unwrap();
            file(b, "./child", 0o644, b"");
        });
        sandbox.unpack(&layer).unwrap();
        let dest = fs::metadata(&sandbox.dest).unwrap();
        assert_eq!((dest.mode() & 0o7777, dest.mtime()), (0o711, 1_234_567_890));
        assert!(sandbox.exists("child"));
    }

    #[test]
    fn root_entry_that_is_not_a_directory_is_refused() {
        let sandbox = Sandbox::new();
        let layer = tar(|b| raw(b, EntryType::Regular, b"./", b"", b""));
        // An old-style regular entry ending in a slash is a directory; a
        // ustar-typed one ending in a slash is not.
        let err = sandbox.unpack(&layer).unwrap_err();
        assert!(matches!(err, UnpackError::Invalid { .. }), "{err}");
    }

    #[test]
    fn old_style_directory_entries() {
        let sandbox = Sandbox::new();
        let mut layer = tar(|b| raw(b, EntryType::Regular, b"olddir/", b"", b""));
        layer[156] = b'\0';
        let header = tar::Header::from_byte_slice(&layer[..512]);
        let mut fixed = header.clone();
        fixed.set_cksum();
        layer[..512].copy_from_slice(fixed.as_bytes());
        sandbox.unpack(&layer).unwrap();
        assert!(sandbox.meta("olddir").is_dir());
    }

    fn assert_refused(layer: &[u8], check: impl Fn(&UnpackError) -> bool) -> Sandbox {
        let sandbox = Sandbox::new();
        let err = sandbox.unpack(layer).expect_err("hostile layer accepted");
        assert!(check(&err), "unexpected error: {err}");
        sandbox.assert_contained();
        sandbox
    }

    #[test]
    fn parent_components_are_refused() {
        for name in [&b"../escape"[..], b"a/../../escape", b"./../sentinel/x", b"/../sentinel/x"] {
            let layer = tar(|b| raw(b, EntryType::Regular, name, b"", b"pwned"));
            assert_refused(&layer, |e| matches!(e, UnpackError::ParentComponent { .. }));
        }
        let layer = tar(|b| raw(b, EntryType::Regular, b"../.wh.x", b"", b""));
        assert_refused(&layer, |e| matches!(e, UnpackError::ParentComponent { .. }));
        let layer = tar(|b| raw(b, EntryType::Directory, b"../sentinel/dir/", b"", b""));
        assert_refused(&layer, |e| matches!(e, UnpackError::ParentComponent { .. }));
    }

    #[test]
    fn absolute_names_stay_inside() {
        let sandbox = Sandbox::new();
        let outside = sandbox.sentinel.join("abs");
        let layer = tar(|b| {
            raw(b, EntryType::Regular, b"/abs/path", b"", b"contained");
            raw(b, EntryType::Regular, outside.as_os_str().as_bytes(), b"", b"contained too");
        });
        sandbox.unpack(&layer).unwrap();
        assert_eq!(fs::read(sandbox.at("abs/path")).unwrap(), b"contained");
        let inside = sandbox.dest.join(outside.strip_prefix("/").unwrap());
        assert_eq!(fs::read(inside).unwrap(), b"contained too");
        sandbox.assert_contained();
    }

    #[test]
    fn symlink_to_an_outside_directory_is_not_followed_out() {
        let sandbox = Sandbox::new();
        let sentinel = sandbox.sentinel.to_str().unwrap().to_owned();
        let layer = tar(|b| {
            link(b, EntryType::Symlink, "evil", &sentinel);
            file(b, "evil/file", 0o644, b"pwned");
        });
        // Resolved inside dest, `evil` names dest/<sentinel path>, which this layer
        // does not have: refused rather than created.
        let err = sandbox.unpack(&layer).unwrap_err();
        assert!(matches!(err, UnpackError::Invalid { .. }), "{err}");
        sandbox.assert_contained();

        // When the layer does have that path, the entry lands there, inside.
        let sandbox = Sandbox::new();
        let sentinel = sandbox.sentinel.to_str().unwrap().to_owned();
        let layer = tar(|b| {
            dir(b, sentinel.trim_start_matches('/'), 0o755);
            link(b, EntryType::Symlink, "evil", &sentinel);
            file(b, "evil/file", 0o644, b"contained");
            dir(b, "evil/subdir", 0o755);
        });
        sandbox.unpack(&layer).unwrap();
        let inside = sandbox.dest.join(sentinel.trim_start_matches('/'));
        assert_eq!(fs::read(inside.join("file")).unwrap(), b"contained");
        assert!(inside.join("subdir").is_dir());
        sandbox.assert_contained();
    }

    #[test]
    fn relative_symlink_climbing_out_stops_at_dest() {
        let sandbox = Sandbox::new();
        let layer = tar(|b| {
            link(b, EntryType::Symlink, "up", "../../..");
            file(b, "up/x", 0o644, b"at the root of dest");
            link(b, EntryType::Symlink, "deeper/up", "../../sentinel");
            dir(b, "sentinel", 0o755);
            file(b, "deeper/up/y", 0o644, b"in dest/sentinel");
        });
        sandbox.unpack(&layer).unwrap();
        assert_eq!(fs::read(sandbox.at("x")).unwrap(), b"at the root of dest");
        assert_eq!(fs::read(sandbox.at("sentinel/y")).unwrap(), b"in dest/sentinel");
        sandbox.assert_contained();
    }

    #[test]
    fn symlink_in_the_final_component_is_never_written_through() {
        let sandbox = Sandbox::new();
        let target = sandbox.sentinel.join("owned");
        let layer = tar(|b| {
            link(b, EntryType::Symlink, "passwd", target.to_str().unwrap());
            file(b, "passwd", 0o644, b"replaces the link");
            link(b, EntryType::Symlink, "d", sandbox.sentinel.to_str().unwrap());
            dir(b, "d", 0o777);
        });
        sandbox.unpack(&layer).unwrap();
        assert!(sandbox.meta("passwd").is_file());
        assert!(sandbox.meta("d").is_dir());
        assert_eq!(fs::metadata(&sandbox.sentinel).unwrap().mode() & 0o777, 0o755, "sentinel mode untouched");
        sandbox.assert_contained();
    }

    #[test]
    fn hardlinks_never_reach_host_files() {
        let layer = tar(|b| raw(b, EntryType::Link, b"h", b"../../etc/passwd", b""));
        assert_refused(&layer, |e| matches!(e, UnpackError::HardlinkTargetEscapes { .. }));

        let layer = tar(|b| raw(b, EntryType::Link, b"h", b"/etc/passwd", b""));
        let sandbox = assert_refused(&layer, |e| matches!(e, UnpackError::HardlinkTargetMissing { .. }));
        assert!(!sandbox.exists("h"));

        // Through a symlinked directory pointing outside: resolved inside dest, where
        // the target does not exist.
        let sandbox = Sandbox::new();
        let secret = sandbox.sentinel.join("secret");
        fs::write(&secret, "host data").unwrap();
        let layer = tar(|b| {
            link(b, EntryType::Symlink, "sym", sandbox.sentinel.to_str().unwrap());
            link(b, EntryType::Link, "h", "sym/secret");
        });
        let err = sandbox.unpack(&layer).unwrap_err();
        assert!(matches!(err, UnpackError::HardlinkTargetMissing { .. }), "{err}");
        assert!(!sandbox.exists("h"));
        assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);

        // To a symlink that points outside: the symlink itself is linked.
        let sandbox = Sandbox::new();
        let secret = sandbox.sentinel.join("secret");
        fs::write(&secret, "host data").unwrap();
        let layer = tar(|b| {
            link(b, EntryType::Symlink, "evil", secret.to_str().unwrap());
            link(b, EntryType::Link, "h", "evil");
        });
        sandbox.unpack(&layer).unwrap();
        assert!(sandbox.meta("h").file_type().is_symlink());
        assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);
    }

    #[test]
    fn hostile_whiteouts_are_refused() {
        for name in [&b".wh."[..], b"dir/.wh..", b"dir/.wh..."] {
            let layer = tar(|b| raw(b, EntryType::Regular, name, b"", b""));
            assert_refused(&layer, |e| matches!(e, UnpackError::Invalid { .. }));
        }
        let sandbox = Sandbox::new();
        let layer = tar(|b| {
            link(b, EntryType::Symlink, "out", sandbox.sentinel.to_str().unwrap());
            file(b, "out/.wh.x", 0o644, b"");
            file(b, "out/.wh..wh..opq", 0o644, b"");
        });
        assert!(sandbox.unpack(&layer).is_err());
        sandbox.assert_contained();
        assert_eq!(xattr(&sandbox.sentinel, OVERLAY_OPAQUE_XATTR), None);
    }

    #[test]
    fn truncated_and_malformed_streams_are_errors() {
        let layer = tar(|b| file(b, "big", 0o644, &[7u8; 5000]));
        let sandbox = Sandbox::new();
        let err = sandbox.unpack(&layer[..512 + 1000]).unwrap_err();
        assert!(matches!(err, UnpackError::TruncatedData { expected: 5000, written: 1000, .. }), "{err}");

        // Cut exactly between entries: only the missing end marker tells.
        let sandbox = Sandbox::new();
        let err = sandbox.unpack(&layer[..layer.len() - 1024]).unwrap_err();
        assert!(matches!(err, UnpackError::MissingEndOfArchive), "{err}");
        let sandbox = Sandbox::new();
        assert!(matches!(sandbox.unpack(&[]).unwrap_err(), UnpackError::MissingEndOfArchive));

        let sandbox = Sandbox::new();
        let mut corrupt = layer.clone();
        corrupt[10] ^= 0x55;
        assert!(matches!(sandbox.unpack(&corrupt).unwrap_err(), UnpackError::Malformed(_)));

        let sandbox = Sandbox::new();
        let err = sandbox.unpack(&layer[..300]).unwrap_err();
        assert!(matches!(err, UnpackError::Malformed(_)), "{err}");
    }

    #[test]
    fn an_empty_layer_is_fine() {
        let sandbox = Sandbox::new();
        assert_eq!(sandbox.unpack(&tar(|_| {})).unwrap(), UnpackStats::default());
    }

    #[test]
    fn unsupported_entry_types_are_named() {
        let layer = tar(|b| {
            let mut header = new_header(EntryType::GNUSparse, 0o644);
            header.as_gnu_mut().unwrap().set_real_size(0);
            header.set_path("sparse").unwrap();
            header.set_cksum();
            b.append(&header, io::empty()).unwrap();
        });
        let sandbox = Sandbox::new();
        let err = sandbox.unpack(&layer).unwrap_err();
        assert!(matches!(&err, UnpackError::UnsupportedType { path, type_flag: 'S' } if path == "sparse"), "{err}");

        let layer = tar(|b| {
            b.append_pax_extensions([("GNU.sparse.major", &b"1"[..]), ("GNU.sparse.minor", &b"0"[..])]).unwrap();
            file(b, "GNUSparseFile.0/disk.img", 0o644, b"1\n0\n4096\n");
        });
        let err = Sandbox::new().unpack(&layer).unwrap_err();
        assert!(matches!(&err, UnpackError::Pax { key, .. } if key == "GNU.sparse.major"), "{err}");

        let layer = tar(|b| raw(b, EntryType::new(b'V'), b"volume-label", b"", b""));
        let err = Sandbox::new().unpack(&layer).unwrap_err();
        assert!(matches!(err, UnpackError::UnsupportedType { type_flag: 'V', .. }), "{err}");
    }

    #[test]
    fn oversized_extension_headers_are_refused() {
        let layer = tar(|b| {
            let name = "n".repeat(5 << 20);
            file(b, &name, 0o644, b"");
        });
        let err = Sandbox::new().unpack(&layer).unwrap_err();
        assert!(matches!(err, UnpackError::MetadataTooLarge), "{err}");
    }

    #[test]
    fn compressed_layers_unpack_through_their_decoder() {
        let layer = tar(|b| {
            file(b, "etc/os-release", 0o644, b"ID=berth\n");
            link(b, EntryType::Symlink, "etc/localtime", "/usr/share/zoneinfo/UTC");
        });
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&layer).unwrap();
        let gzip = gzip.finish().unwrap();
        let zstd = zstd::encode_all(&layer[..], 3).unwrap();
        for blob in [gzip, zstd, layer.clone()] {
            let sandbox = Sandbox::new();
            let compression = Compression::detect(&blob);
            let stats = unpack_layer(compression.decoder(&blob[..]).unwrap(), &sandbox.dest).unwrap();
            assert_eq!(stats.bytes, 9, "{compression:?}");
            assert_eq!(fs::read(sandbox.at("etc/os-release")).unwrap(), b"ID=berth\n");
        }
    }

    #[test]
    fn the_whole_stream_is_consumed() {
        let mut layer = tar(|b| file(b, "f", 0o644, b"data"));
        layer.extend([0u8; 10240]);
        let reader = CountingReader { inner: &layer[..], read: 0 };
        let sandbox = Sandbox::new();
        let mut reader = reader;
        unpack_layer(&mut reader, &sandbox.dest).unwrap();
        assert_eq!(reader.read, layer.len());
    }

    struct CountingReader<'a> {
        inner: &'a [u8],
        read: usize,
    }

    impl Read for CountingReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n;
            Ok(n)
        }
    }
}
