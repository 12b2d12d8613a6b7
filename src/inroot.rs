//! Paths resolved inside a root that somebody else controls: an image's layers, a
//! build context a client uploaded, a stage's root filesystem, a container's
//! writable layer. The one way berth touches a path below such a root.
//!
//! The root is opened once; every later path is resolved from that fd with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so the kernel treats the root
//! as `/` for absolute symlinks and `..` alike: nothing the root holds can lead a
//! lookup outside it. The last component of anything created or replaced is
//! handled with a `*at` call on its parent's fd that never follows a symlink, and
//! what is read is opened `O_PATH | O_NOFOLLOW` first and checked with `fstat`
//! before its data is touched, so a tree that changes under the walk (a running
//! container's upper dir) can swap names but never make berth read or write a file
//! outside it, nor open a device.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

/// openat2 with RESOLVE_IN_ROOT answers EAGAIN when a rename anywhere on the system
/// raced with a `..` step, because it then cannot prove the walk stayed inside; the
/// walk is simply retried.
const RESOLVE_RETRIES: usize = 32;

/// How deep a tree berth walks below a root (COPY sources, layers of a container).
/// Linux paths stop at 4096 bytes, so ordinary trees stay far below this; a tree
/// built deeper on purpose (relative mkdir in a loop) gets an error, not a walk
/// that exhausts the stack or the descriptor table.
pub const MAX_WALK_DEPTH: usize = 512;

/// Opens the directory at `path`, a path of berth's own (never below a root it
/// does not control).
pub fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
}

/// Opens the directory `rel` inside `root`, following symlinks as if `root` were
/// `/`.
pub fn resolve_dir(root: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    resolve(root, rel, OFlags::RDONLY | OFlags::DIRECTORY, ResolveFlags::empty())
}

/// Opens the directory `rel` inside `root` only if none of its components, the last
/// included, is a symlink: overlayfs merges the layers path by path and never
/// follows a symlink of one layer, so a directory reached only through one is not
/// the directory the overlay shows at `rel`.
pub fn resolve_without_symlinks(root: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    resolve(root, rel, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW, ResolveFlags::NO_SYMLINKS)
}

/// Opens `rel` with `root` as the root of the walk: absolute symlinks and `..`
/// cannot climb above it, and magic links (/proc/*/fd) are refused.
pub fn resolve(root: &OwnedFd, rel: &Path, flags: OFlags, extra_resolve: ResolveFlags) -> Result<OwnedFd, Errno> {
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let flags = flags | OFlags::CLOEXEC;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | extra_resolve;
    let mut attempts = 0;
    loop {
        match rustix::fs::openat2(root, rel, flags, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if attempts < RESOLVE_RETRIES => attempts += 1,
            result => return result,
        }
    }
}

/// Opens the directory `name` directly inside `parent`, refusing a symlink there.
pub fn open_child_dir(parent: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(parent, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
}

/// `name` inside `parent` as an `O_PATH` handle of the entry itself (a symlink is
/// not followed), with what it is.
pub fn open_child_node(parent: BorrowedFd<'_>, name: &OsStr) -> Result<(OwnedFd, Stat), Errno> {
    let node = rustix::fs::openat(parent, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    let stat = rustix::fs::fstat(&node)?;
    Ok((node, stat))
}

/// Opens an `O_PATH` handle for reading. Only a handle whose `fstat` said regular
/// file may be passed: reopening goes through the handle's /proc/self/fd entry, a
/// magic link that names exactly that inode, so no path is looked up again.
pub fn reopen_file(node: BorrowedFd<'_>) -> Result<File, Errno> {
    let fd = rustix::fs::open(proc_fd_path(node), OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY, Mode::empty())?;
    Ok(File::from(fd))
}

/// The /proc/self/fd path of an open descriptor.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The names in the directory `dir`, without `.` and `..`, in byte order.
pub fn list_dir(dir: BorrowedFd<'_>) -> Result<Vec<OsString>, Errno> {
    // Dir::read_from reads from a duplicate so that `dir` keeps its offset.
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// `path` (absolute or not, as an image, a context or a Dockerfile names it) as a
/// path relative to the root, `..` stopping at it, `.` and empty components gone.
/// The empty path is the root itself.
pub fn relative(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// What an entry below a root is, from its `fstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
    Symlink,
    /// Character or block device, fifo or socket: recreated, never opened.
    Special,
}

impl Kind {
    pub fn of(stat: &Stat) -> Kind {
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => Kind::Directory,
            FileType::RegularFile => Kind::File,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Special,
        }
    }
}

/// An open root directory: every path below it resolves inside it.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Opens `path`, a directory of berth's own (a snapshot, a mounted rootfs, an
    /// unpacked context), as a root.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = open_dir(path).map_err(|e| with_path(e.into(), path))?;
        Ok(Root { fd, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The directory at `path` inside the root, symlinks followed inside it.
    pub fn open_dir(&self, path: &Path) -> io::Result<OwnedFd> {
        resolve_dir(&self.fd, &relative(path)).map_err(|e| self.error(e, path))
    }

    /// An `O_PATH` handle of whatever `path` names, every symlink on the way (the
    /// last one included) followed inside the root, with what it is.
    pub fn open_node(&self, path: &Path) -> io::Result<(OwnedFd, Stat)> {
        let node = resolve(&self.fd, &relative(path), OFlags::PATH, ResolveFlags::empty()).map_err(|e| self.error(e, path))?;
        let stat = rustix::fs::fstat(&node).map_err(|e| self.error(e, path))?;
        Ok((node, stat))
    }

    /// The parent directory of `path` (resolved inside the root) and its last
    /// component, which is not looked up. `None` for the root itself.
    pub fn parent_of(&self, path: &Path) -> io::Result<Option<(OwnedFd, OsString)>> {
        let rel = relative(path);
        let Some(name) = rel.file_name().map(OsStr::to_os_string) else { return Ok(None) };
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok(Some((self.open_dir(parent)?, name)))
    }

    /// What `path` itself is (a final symlink not followed), `None` if nothing is
    /// there.
    pub fn entry_kind(&self, path: &Path) -> io::Result<Option<Kind>> {
        let Some((parent, name)) = self.parent_of(path)? else { return Ok(Some(Kind::Directory)) };
        match open_child_node(parent.as_fd(), &name) {
            Ok((_, stat)) => Ok(Some(Kind::of(&stat))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.error(e, path)),
        }
    }

    /// The host path of `path` inside the root, free of symlinks, for an API that
    /// takes nothing but a path (a bind mount source handed to runc). The answer
    /// is checked to lie below the root; it stays true as long as nobody changes
    /// the tree in between, which holds for a build context while a step runs.
    pub fn host_path(&self, path: &Path) -> io::Result<PathBuf> {
        let (node, _) = self.open_node(path)?;
        let resolved = std::fs::read_link(proc_fd_path(node.as_fd()))?;
        let root = std::fs::read_link(proc_fd_path(self.fd.as_fd()))?;
        if resolved.starts_with(&root) {
            Ok(resolved)
        } else {
            Err(io::Error::other(format!("{} resolves outside {}", path.display(), self.path.display())))
        }
    }

    /// Creates the directory `path` and every missing parent, each component
    /// resolved inside the root (an existing symlink to a directory is followed
    /// there, as Docker does for a destination), new ones with `mode` and owned by
    /// `owner`. Returns the directory.
    pub fn create_dir_all(&self, path: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<OwnedFd> {
        let rel = relative(path);
        match resolve_dir(&self.fd, &rel) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(self.error(e, path)),
        }
        let mut dir = resolve_dir(&self.fd, Path::new("")).map_err(|e| self.error(e, path))?;
        let mut prefix = PathBuf::new();
        for component in rel.components() {
            prefix.push(component);
            dir = match resolve_dir(&self.fd, &prefix) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    let name = component.as_os_str();
                    match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
                        Ok(()) => {}
                        // The name exists, yet nothing resolved: a symlink whose
                        // target is missing. Creating its target would be a guess.
                        Err(Errno::EXIST) => {
                            return Err(self.error(Errno::NOENT, &prefix).kind_message(format!(
                                "{} is a symlink to a directory that does not exist",
                                Path::new("/").join(&prefix).display()
                            )));
                        }
                        Err(e) => return Err(self.error(e, &prefix)),
                    }
                    let created = open_child_dir(dir.as_fd(), name).map_err(|e| self.error(e, &prefix))?;
                    set_owner_and_mode(created.as_fd(), owner, mode).map_err(|e| self.error(e, &prefix))?;
                    created
                }
                Err(e) => return Err(self.error(e, &prefix)),
            };
        }
        Ok(dir)
    }

    fn error(&self, errno: Errno, path: &Path) -> io::Error {
        with_path(errno.into(), &Path::new("/").join(relative(path)))
    }
}

/// One entry a [`walk`] visits.
pub struct WalkEntry<'a> {
    /// Relative to the walk's top; empty for the top itself.
    pub rel: &'a Path,
    /// The directory holding the entry, and its name there (`None` for a top the
    /// walk was given as a handle).
    pub parent: Option<(BorrowedFd<'a>, &'a OsStr)>,
    /// `O_PATH` handle of the entry itself (a symlink is not followed).
    pub node: BorrowedFd<'a>,
    pub stat: &'a Stat,
}

impl WalkEntry<'_> {
    pub fn kind(&self) -> Kind {
        Kind::of(self.stat)
    }

    /// The entry's data; only for a regular file.
    pub fn open_file(&self) -> Result<File, Errno> {
        reopen_file(self.node)
    }

    /// A symlink's target.
    pub fn link_target(&self) -> Result<PathBuf, Errno> {
        let target = rustix::fs::readlinkat(self.node, c"", Vec::new())?;
        Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
    }

    /// A path naming the entry for the l*xattr calls, which take nothing else: its
    /// parent's /proc/self/fd entry (already resolved) and its own name, which those
    /// calls do not follow.
    pub fn xattr_path(&self) -> PathBuf {
        match self.parent {
            Some((parent, name)) => proc_fd_path(parent).join(name),
            None => proc_fd_path(self.node),
        }
    }
}

/// Visits `top` and everything below it, parents before children, names in byte
/// order, never following a symlink below `top` and never opening anything but
/// directories and regular files. `visit` says whether to descend into a
/// directory. A name that vanishes between listing and opening is skipped (a
/// running container's tree changes meanwhile). Deeper than [`MAX_WALK_DEPTH`] is
/// an error.
pub fn walk<E: From<io::Error>>(
    top: BorrowedFd<'_>,
    visit: &mut dyn FnMut(&WalkEntry<'_>) -> Result<bool, E>,
) -> Result<(), E> {
    let stat = rustix::fs::fstat(top).map_err(io::Error::from)?;
    let entry = WalkEntry { rel: Path::new(""), parent: None, node: top, stat: &stat };
    if visit(&entry)? && Kind::of(&stat) == Kind::Directory {
        if let Some(dir) = open_listable(top, Path::new(""))? {
            walk_children(dir, Path::new(""), 1, visit)?;
        }
    }
    Ok(())
}

/// The directory behind an `O_PATH` handle, opened so it can be listed ("." below
/// the handle is the same directory); `None` if it vanished.
fn open_listable(node: BorrowedFd<'_>, rel: &Path) -> io::Result<Option<OwnedFd>> {
    match rustix::fs::openat(node, c".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(dir) => Ok(Some(dir)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(with_path(e.into(), rel)),
    }
}

/// One descriptor per level is held while deeper levels are walked.
fn walk_children<E: From<io::Error>>(
    dir: OwnedFd,
    rel: &Path,
    depth: usize,
    visit: &mut dyn FnMut(&WalkEntry<'_>) -> Result<bool, E>,
) -> Result<(), E> {
    if depth > MAX_WALK_DEPTH {
        return Err(io::Error::other(format!("{}: the tree is deeper than {MAX_WALK_DEPTH} levels", rel.display())).into());
    }
    let names = list_dir(dir.as_fd()).map_err(|e| with_path(e.into(), rel))?;
    for name in names {
        let (node, stat) = match open_child_node(dir.as_fd(), &name) {
            Ok(found) => found,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(with_path(e.into(), &rel.join(&name)).into()),
        };
        let child_rel = rel.join(&name);
        let entry = WalkEntry { rel: &child_rel, parent: Some((dir.as_fd(), &name)), node: node.as_fd(), stat: &stat };
        if visit(&entry)? && Kind::of(&stat) == Kind::Directory {
            let child = open_listable(node.as_fd(), &child_rel)?;
            drop(node);
            if let Some(child) = child {
                walk_children(child, &child_rel, depth + 1, visit)?;
            }
        }
    }
    Ok(())
}

/// Sets owner (when given) and mode on an open file or directory.
pub fn set_owner_and_mode(fd: BorrowedFd<'_>, owner: Option<(u32, u32)>, mode: u32) -> Result<(), Errno> {
    if let Some((uid, gid)) = owner {
        let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
        rustix::fs::fchown(fd, Some(uid), Some(gid))?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))
}

/// Sets the owner of `name` in `parent` without following it (a symlink keeps its
/// target's owner).
pub fn chown_entry(parent: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> Result<(), Errno> {
    let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
    rustix::fs::chownat(parent, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
}

/// Makes room for a new non-directory `name` in `parent`: an existing file,
/// symlink or special file is removed (never followed); a directory is an error.
pub fn clear_for_file(parent: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the regular file `name` in `parent` for writing; whatever was there
/// (not a directory) is replaced, a symlink there is replaced, not written through.
pub fn create_file(parent: BorrowedFd<'_>, name: &OsStr, mode: u32) -> Result<File, Errno> {
    clear_for_file(parent, name)?;
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    Ok(File::from(fd))
}

fn with_path(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

trait KindMessage {
    fn kind_message(self, message: String) -> io::Error;
}

impl KindMessage for io::Error {
    fn kind_message(self, message: String) -> io::Error {
        io::Error::new(self.kind(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root_with_links() -> (tempfile::TempDir, tempfile::TempDir, Root) {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("real")).unwrap();
        symlink(outside.path(), dir.path().join("abs")).unwrap();
        symlink("../../../../../../..", dir.path().join("real/up")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        (outside, dir, root)
    }

    #[test]
    fn creating_through_symlinks_stays_inside_the_root() {
        let (outside, dir, root) = root_with_links();
        // An absolute link names a path inside the root, which is missing here.
        let error = root.create_dir_all(Path::new("/abs/made/deeper"), 0o755, None).unwrap_err();
        assert!(error.to_string().contains("/abs is a symlink to a directory that does not exist"), "{error}");
        assert!(!outside.path().join("made").exists(), "nothing created outside");
        symlink("/real", dir.path().join("inside")).unwrap();
        root.create_dir_all(Path::new("/inside/made/deeper"), 0o755, None).unwrap();
        assert!(dir.path().join("real/made/deeper").is_dir());
        let fd = root.create_dir_all(Path::new("real/up/etc"), 0o755, None).unwrap();
        let file = create_file(fd.as_fd(), OsStr::new("f"), 0o644);
        drop(file.unwrap());
        assert!(dir.path().join("etc/f").is_file());
    }

    #[test]
    fn a_symlink_as_last_component_is_replaced_not_written_through() {
        let (outside, dir, root) = root_with_links();
        std::fs::write(outside.path().join("victim"), "host").unwrap();
        symlink(outside.path().join("victim"), dir.path().join("link")).unwrap();
        let (parent, name) = root.parent_of(Path::new("/link")).unwrap().unwrap();
        std::io::Write::write_all(&mut create_file(parent.as_fd(), &name, 0o644).unwrap(), b"image").unwrap();
        assert_eq!(std::fs::read_to_string(outside.path().join("victim")).unwrap(), "host");
        assert_eq!(std::fs::read_to_string(dir.path().join("link")).unwrap(), "image");
    }

    #[test]
    fn host_paths_of_links_point_inside() {
        let (_outside, dir, root) = root_with_links();
        assert_eq!(root.host_path(Path::new("real/up")).unwrap(), dir.path().canonicalize().unwrap());
        let abs = root.host_path(Path::new("abs"));
        // The absolute link names a path that does not exist inside the root.
        assert!(abs.is_err(), "{abs:?}");
    }

    #[test]
    fn relative_paths_never_climb() {
        assert_eq!(relative(Path::new("/a/../../b/./c")), PathBuf::from("b/c"));
        assert_eq!(relative(Path::new("../..")), PathBuf::new());
    }
}
