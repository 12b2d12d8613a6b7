//! COPY and ADD: placing files from the context, another stage or an image
//! (or an ADD URL) into a step's mounted root filesystem, whose overlay upper
//! dir then becomes the layer. Paths in the image are resolved as if its root
//! were `/`, so symlinks it holds never lead a write outside it.

use std::ffi::OsStr;
use std::fs::File;
use std::io::BufReader;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;

use super::BuildError;
use crate::inroot::{self, Kind, Root, WalkEntry};

/// Shell-style wildcard match of one path component: `*`, `?`, `[...]`.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(end) = p.iter().position(|&c| c == ']') else { return !n.is_empty() && n[0] == '[' && go(&p[1..], &n[1..]) };
                let Some(&c) = n.first() else { return false };
                let set = &p[1..end];
                let (negate, set) = match set.first() {
                    Some('!') | Some('^') => (true, &set[1..]),
                    _ => (false, set),
                };
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= set[i] <= c && c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == c;
                        i += 1;
                    }
                }
                hit != negate && go(&p[end + 1..], &n[1..])
            }
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    go(&pattern.chars().collect::<Vec<_>>(), &name.chars().collect::<Vec<_>>())
}

/// Where and how COPY/ADD place files into a mounted step rootfs.
pub struct CopySpec {
    pub rootfs: PathBuf,
    /// Absolute in the image.
    pub dest: PathBuf,
    pub dest_is_dir: bool,
    pub chown: Option<String>,
    pub chmod: Option<u32>,
    pub extract_archives: bool,
}

/// How far an ADD of a URL may go: it streams to a file, never to memory.
#[derive(Debug, Clone, Copy)]
pub struct DownloadLimits {
    /// The largest body taken; a longer one fails the step.
    pub max_bytes: u64,
    /// A body that sends nothing for this long fails the step.
    pub stall_timeout: std::time::Duration,
}

/// An ADD URL's body, spooled to an unlinked file.
pub struct Download {
    /// The file name the URL gives (its last path segment).
    pub name: String,
    file: File,
}

/// Streams `url` into an anonymous file below `spool` (berthd's own state), at
/// most `limits.max_bytes`, checking `checksum` (`sha256:<hex>`) when given.
pub async fn download(url: &str, checksum: Option<&str>, spool: &Path, limits: DownloadLimits) -> Result<Download, BuildError> {
    use sha2::Digest as _;
    use tokio::io::AsyncWriteExt as _;
    let fail = |message: String| BuildError::Invalid(format!("ADD {url}: {message}"));
    let expected = match checksum {
        None => None,
        Some(sum) => match sum.strip_prefix("sha256:") {
            Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Some(hex.to_ascii_lowercase()),
            _ => return Err(fail(format!("--checksum={sum}: expected sha256:<64 hex digits>"))),
        },
    };
    let client = reqwest::Client::builder()
        .connect_timeout(limits.stall_timeout)
        .build()
        .map_err(|e| BuildError::Internal(format!("HTTP client: {e}")))?;
    let mut response = tokio::time::timeout(limits.stall_timeout, client.get(url).send())
        .await
        .map_err(|_| fail(format!("no response within {} s", limits.stall_timeout.as_secs())))?
        .map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(response.status().to_string()));
    }
    if let Some(length) = response.content_length().filter(|&l| l > limits.max_bytes) {
        return Err(fail(format!("the body is {length} bytes, more than the {} bytes ADD takes ([builder] max_download_bytes)", limits.max_bytes)));
    }
    let name = url.split(['?', '#']).next().unwrap_or(url).rsplit('/').next().filter(|n| !n.is_empty() && *n != "." && *n != "..").unwrap_or("download").to_string();
    // O_TMPFILE: the spool has no name, so a crash leaves nothing to clean up.
    let spooled = rustix::fs::open(spool, OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC, rustix::fs::Mode::from_raw_mode(0o600))
        .map_err(|e| BuildError::io(format!("spooling ADD {url} in {}", spool.display()))(e.into()))?;
    let file = File::from(spooled);
    let mut writer = tokio::fs::File::from_std(file.try_clone().map_err(BuildError::io("spooling ADD"))?);
    let mut hasher = sha2::Sha256::new();
    let mut written = 0u64;
    loop {
        let chunk = tokio::time::timeout(limits.stall_timeout, response.chunk())
            .await
            .map_err(|_| fail(format!("no data for {} s after {written} bytes", limits.stall_timeout.as_secs())))?
            .map_err(|e| fail(e.to_string()))?;
        let Some(chunk) = chunk else { break };
        written += chunk.len() as u64;
        if written > limits.max_bytes {
            return Err(fail(format!("the body exceeds the {} bytes ADD takes ([builder] max_download_bytes)", limits.max_bytes)));
        }
        hasher.update(&chunk);
        writer.write_all(&chunk).await.map_err(BuildError::io(format!("spooling ADD {url}")))?;
    }
    writer.flush().await.map_err(BuildError::io(format!("spooling ADD {url}")))?;
    if let Some(expected) = expected {
        let got = hex::encode(hasher.finalize());
        if got != expected {
            return Err(fail(format!("digest mismatch: --checksum wants sha256:{expected}, the body is sha256:{got}")));
        }
    }
    Ok(Download { name, file })
}

/// Copies `sources` (paths inside `from`, symlinks on the way followed inside it)
/// and `downloads` to the destination. Everything is written inside the rootfs:
/// the destination and every directory below it are resolved there, and a file
/// replaces whatever name it lands on rather than writing through a symlink.
pub async fn copy_into(spec: &CopySpec, from: Option<&Path>, sources: &[PathBuf], downloads: Vec<Download>) -> Result<(), BuildError> {
    let owner = spec.chown.as_deref().map(|c| owner(&spec.rootfs, c)).transpose()?;
    let target = Target {
        rootfs: spec.rootfs.clone(),
        dest: inroot::relative(&spec.dest),
        dest_is_dir: spec.dest_is_dir,
        owner,
        chmod: spec.chmod,
    };
    let (from, sources, extract) = (from.map(Path::to_path_buf), sources.to_vec(), spec.extract_archives);
    tokio::task::spawn_blocking(move || -> Result<(), BuildError> {
        let rootfs = Root::open(&target.rootfs).map_err(BuildError::io("opening the step's root filesystem"))?;
        if let Some(from) = &from {
            let from = Root::open(from).map_err(BuildError::io("opening the copy's source"))?;
            for source in &sources {
                target.copy_source(&rootfs, &from, source, extract)?;
            }
        }
        for download in downloads {
            let name = target.file_name(&rootfs, OsStr::new(&download.name))?;
            target.place_file(&rootfs, &name, download.file, 0o600)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| BuildError::Internal(format!("copy task: {e}")))?
}

/// Writes COPY/ADD heredocs as files named after their delimiter, which must be
/// a plain file name: it is joined to the destination.
pub fn write_heredocs(spec: &CopySpec, heredocs: &[(String, String)]) -> Result<(), BuildError> {
    if heredocs.is_empty() {
        return Ok(());
    }
    let target = Target {
        rootfs: spec.rootfs.clone(),
        dest: inroot::relative(&spec.dest),
        dest_is_dir: spec.dest_is_dir || heredocs.len() > 1,
        owner: spec.chown.as_deref().map(|c| owner(&spec.rootfs, c)).transpose()?,
        chmod: spec.chmod,
    };
    let rootfs = Root::open(&spec.rootfs).map_err(BuildError::io("opening the step's root filesystem"))?;
    for (name, content) in heredocs {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
            return Err(BuildError::Invalid(format!("heredoc name {name:?}: a file name is one path component, without '/' or '..'")));
        }
        let path = target.file_name(&rootfs, OsStr::new(name))?;
        let mut file = tempfile_in_memory(content.as_bytes())?;
        std::io::Seek::rewind(&mut file).map_err(BuildError::io("heredoc"))?;
        target.place_file(&rootfs, &path, file, 0o644)?;
    }
    Ok(())
}

/// An anonymous file holding `bytes`, so heredocs take the path files take.
fn tempfile_in_memory(bytes: &[u8]) -> Result<File, BuildError> {
    let fd = rustix::fs::memfd_create("heredoc", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| BuildError::io("heredoc")(e.into()))?;
    let mut file = File::from(fd);
    std::io::Write::write_all(&mut file, bytes).map_err(BuildError::io("heredoc"))?;
    Ok(file)
}

/// Where one COPY/ADD writes, resolved inside the step's rootfs.
struct Target {
    rootfs: PathBuf,
    /// Relative to the rootfs.
    dest: PathBuf,
    dest_is_dir: bool,
    owner: Option<(u32, u32)>,
    chmod: Option<u32>,
}

impl Target {
    /// Where a file source named `name` lands: inside the destination when it ends
    /// with `/` or is an existing directory (as Docker does), else the destination.
    fn file_name(&self, rootfs: &Root, name: &OsStr) -> Result<PathBuf, BuildError> {
        let into_dir = self.dest_is_dir
            || matches!(rootfs.open_node(&self.dest), Ok((_, stat)) if Kind::of(&stat) == Kind::Directory);
        Ok(if into_dir { self.dest.join(name) } else { self.dest.clone() })
    }

    fn copy_source(&self, rootfs: &Root, from: &Root, source: &Path, extract: bool) -> Result<(), BuildError> {
        let shown = Path::new("/").join(source);
        let (node, stat) = from.open_node(source).map_err(BuildError::io(format!("COPY source {}", shown.display())))?;
        match Kind::of(&stat) {
            Kind::Directory => {
                let dest = rootfs.create_dir_all(&self.dest, 0o755, None).map_err(BuildError::io("creating the destination"))?;
                drop(dest);
                let dest_root = self.dest.clone();
                inroot::walk(node.as_fd(), &mut |entry: &WalkEntry<'_>| -> Result<bool, BuildError> {
                    if entry.rel.as_os_str().is_empty() {
                        return Ok(true);
                    }
                    self.place(rootfs, &dest_root.join(entry.rel), entry)?;
                    Ok(true)
                })
            }
            Kind::File if extract && is_archive(node.as_fd()) => {
                let dest = rootfs.create_dir_all(&self.dest, 0o755, None).map_err(BuildError::io("creating the destination"))?;
                let file = inroot::reopen_file(node.as_fd()).map_err(|e| BuildError::io(format!("ADD {}", shown.display()))(e.into()))?;
                let mut reader = BufReader::new(file);
                let prefix = std::io::BufRead::fill_buf(&mut reader).map_err(BuildError::io(format!("ADD {}", shown.display())))?;
                let compression = crate::images::compression::Compression::detect(&prefix[..prefix.len().min(8)]);
                let decoder = compression.decoder(reader).map_err(BuildError::io(format!("ADD {}", shown.display())))?;
                crate::images::unpack::unpack_layer_at(decoder, dest, &Path::new("/").join(&self.dest))
                    .map_err(|e| BuildError::Invalid(format!("ADD {}: {e}", shown.display())))?;
                Ok(())
            }
            _ => {
                let name = source.file_name().unwrap_or(OsStr::new("."));
                let path = self.file_name(rootfs, name)?;
                let entry = WalkEntry { rel: source, parent: None, node: node.as_fd(), stat: &stat };
                self.place(rootfs, &path, &entry)
            }
        }
    }

    /// Places one entry of a source tree at `path` (relative to the rootfs).
    fn place(&self, rootfs: &Root, path: &Path, entry: &WalkEntry<'_>) -> Result<(), BuildError> {
        let shown = Path::new("/").join(path);
        let io = |e: Errno| BuildError::io(format!("copying to {}", shown.display()))(e.into());
        let mode = self.chmod.unwrap_or(entry.stat.st_mode & 0o7777);
        let (uid, gid) = self.owner.unwrap_or((0, 0));
        match entry.kind() {
            Kind::Directory => {
                let dir = rootfs.create_dir_all(path, mode, Some((uid, gid))).map_err(BuildError::io("creating a directory"))?;
                inroot::set_owner_and_mode(dir.as_fd(), Some((uid, gid)), mode).map_err(io)?;
            }
            Kind::File => {
                let file = entry.open_file().map_err(io)?;
                return self.place_file(rootfs, path, file, mode);
            }
            Kind::Symlink => {
                let link = entry.link_target().map_err(io)?;
                let (parent, name) = self.parent(rootfs, path)?;
                inroot::clear_for_file(parent.as_fd(), &name).map_err(io)?;
                rustix::fs::symlinkat(&link, &parent, &name).map_err(io)?;
                inroot::chown_entry(parent.as_fd(), &name, uid, gid).map_err(io)?;
            }
            Kind::Special => {
                let (parent, name) = self.parent(rootfs, path)?;
                let file_type = FileType::from_raw_mode(entry.stat.st_mode);
                if file_type == FileType::Socket {
                    tracing::debug!(path = %shown.display(), "sockets are not copied");
                    return Ok(());
                }
                inroot::clear_for_file(parent.as_fd(), &name).map_err(io)?;
                // Recreated, never opened: a device node in a context is copied as
                // a node, not read.
                rustix::fs::mknodat(&parent, &name, file_type, rustix::fs::Mode::from_raw_mode(mode & 0o777), entry.stat.st_rdev)
                    .map_err(io)?;
                inroot::chown_entry(parent.as_fd(), &name, uid, gid).map_err(io)?;
            }
        }
        Ok(())
    }

    fn parent(&self, rootfs: &Root, path: &Path) -> Result<(std::os::fd::OwnedFd, std::ffi::OsString), BuildError> {
        let parent = path.parent().unwrap_or(Path::new(""));
        let name = path.file_name().ok_or_else(|| BuildError::Invalid(format!("cannot copy onto {}", Path::new("/").join(path).display())))?;
        let dir = rootfs.create_dir_all(parent, 0o755, None).map_err(BuildError::io("creating a parent directory"))?;
        Ok((dir, name.to_os_string()))
    }

    fn place_file(&self, rootfs: &Root, path: &Path, mut data: File, mode: u32) -> Result<(), BuildError> {
        let shown = Path::new("/").join(path);
        let io = |e: std::io::Error| BuildError::io(format!("copying to {}", shown.display()))(e);
        let (parent, name) = self.parent(rootfs, path)?;
        let mut file = inroot::create_file(parent.as_fd(), &name, 0o600).map_err(|e| io(e.into()))?;
        std::io::Seek::rewind(&mut data).map_err(io)?;
        std::io::copy(&mut data, &mut file).map_err(io)?;
        let (uid, gid) = self.owner.unwrap_or((0, 0));
        inroot::set_owner_and_mode(file.as_fd(), Some((uid, gid)), self.chmod.unwrap_or(mode)).map_err(|e| io(e.into()))?;
        Ok(())
    }
}

/// A regular file whose content (after gzip/zstd/xz detection) starts like a tar.
fn is_archive(node: std::os::fd::BorrowedFd<'_>) -> bool {
    let Ok(file) = inroot::reopen_file(node) else { return false };
    let mut reader = BufReader::new(file);
    let Ok(prefix) = std::io::BufRead::fill_buf(&mut reader) else { return false };
    let compression = crate::images::compression::Compression::detect(&prefix[..prefix.len().min(8)]);
    let Ok(mut decoder) = compression.decoder(reader) else { return false };
    let mut block = [0u8; 512];
    std::io::Read::read_exact(&mut decoder, &mut block).is_ok() && &block[257..262] == b"ustar"
}

/// The paths inside `root` that `pattern` names: a plain path, or one whose
/// components hold `*`, `?` or `[...]`, matched one directory level each. Paths
/// come back relative to the root; nothing outside it is looked at (`..` stops
/// at the root, and directories are listed through the root's own resolution).
pub fn glob_in(root: &Root, pattern: &str) -> Vec<PathBuf> {
    let relative = inroot::relative(Path::new(pattern));
    let mut current = vec![PathBuf::new()];
    for component in relative.components() {
        let part = component.as_os_str().to_string_lossy().to_string();
        let mut next = Vec::new();
        for dir in &current {
            if part.contains(['*', '?', '[']) {
                let Ok(fd) = root.open_dir(dir) else { continue };
                let Ok(names) = inroot::list_dir(fd.as_fd()) else { continue };
                next.extend(
                    names.into_iter().filter(|n| wildcard_match(&part, &n.to_string_lossy())).map(|n| dir.join(n)),
                );
            } else {
                let candidate = dir.join(&part);
                if root.entry_kind(&candidate).is_ok_and(|kind| kind.is_some()) {
                    next.push(candidate);
                }
            }
        }
        current = next;
    }
    current
}

/// `--chown=user[:group]` by name or number, resolved in the image's account
/// files as a container's user is. Docker: without a group, the gid is the uid.
fn owner(rootfs: &Path, chown: &str) -> Result<(u32, u32), BuildError> {
    let resolved = crate::oci::resolve_user(rootfs, chown, &Default::default())
        .map_err(|e| BuildError::Invalid(format!("--chown={chown}: {e}")))?;
    let gid = if chown.contains(':') { resolved.gid } else { resolved.uid };
    Ok((resolved.uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn wildcards_follow_shell_rules() {
        assert!(wildcard_match("*.txt", "a.txt"));
        assert!(!wildcard_match("*.txt", "a.md"));
        assert!(wildcard_match("?.c", "x.c"));
        assert!(wildcard_match("[a-c]x", "bx"));
        assert!(!wildcard_match("[!a-c]x", "bx"));
        assert!(wildcard_match("a*b*c", "aXXbYc"));
    }

    #[test]
    fn globs_match_within_the_root_only() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.txt", "b.txt", "c.md", "sub/d.txt"] {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, name).unwrap();
        }
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        let names = |pattern: &str| -> Vec<String> { glob_in(&root, pattern).iter().map(|p| p.display().to_string()).collect() };
        assert_eq!(names("*.txt"), ["a.txt", "b.txt"]);
        assert_eq!(names("*/d.[tx]xt"), ["sub/d.txt"]);
        assert_eq!(names("sub"), ["sub"]);
        assert_eq!(names("../../../etc/passwd"), Vec::<String>::new());
        assert_eq!(names("etc/passwd"), Vec::<String>::new(), "a link in the context leads inside it");
        assert_eq!(names("etc/*"), Vec::<String>::new());
        assert_eq!(names("missing"), Vec::<String>::new());
    }

    #[tokio::test]
    async fn sources_through_links_and_destinations_through_links_stay_inside() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), "host secret").unwrap();
        let context = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(context.path().join("app")).unwrap();
        std::fs::write(context.path().join("app/new.conf"), "conf").unwrap();
        std::os::unix::fs::symlink(host.path(), context.path().join("hostdir")).unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(rootfs.path().join("app")).unwrap();
        std::os::unix::fs::symlink(host.path(), rootfs.path().join("app/conf.d")).unwrap();
        std::os::unix::fs::symlink("../../../../..", rootfs.path().join("app/up")).unwrap();
        let spec = |dest: &str| CopySpec {
            rootfs: rootfs.path().to_path_buf(),
            dest: PathBuf::from(dest),
            dest_is_dir: dest.ends_with('/'),
            chown: None,
            chmod: None,
            extract_archives: false,
        };
        copy_into(&spec("/app/conf.d/"), Some(context.path()), &[PathBuf::from("app")], Vec::new()).await.unwrap_err();
        copy_into(&spec("/app/up/x/"), Some(context.path()), &[PathBuf::from("app")], Vec::new()).await.unwrap();
        assert!(rootfs.path().join("x/new.conf").is_file(), "`..` stops at the rootfs");
        assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 1, "nothing written on the host");
        let error = copy_into(&spec("/leak"), Some(context.path()), &[PathBuf::from("hostdir/secret")], Vec::new()).await.unwrap_err();
        assert!(error.to_string().contains("/hostdir/secret"), "{error}");
        let heredoc = write_heredocs(&spec("/d/"), &[("../../../../tmp/X".into(), "x".into())]).unwrap_err();
        assert!(heredoc.to_string().contains("heredoc name"), "{heredoc}");
    }

    #[tokio::test]
    async fn device_nodes_are_recreated_never_read() {
        let context = tempfile::tempdir().unwrap();
        // /dev/zero's numbers: reading it would never end.
        rustix::fs::mknodat(rustix::fs::CWD, context.path().join("zero"), FileType::CharacterDevice, rustix::fs::Mode::from_raw_mode(0o666), rustix::fs::makedev(1, 5)).unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        let spec = CopySpec { rootfs: rootfs.path().to_path_buf(), dest: PathBuf::from("/dev-copy/"), dest_is_dir: true, chown: None, chmod: None, extract_archives: true };
        let sources = [PathBuf::from("zero"), PathBuf::new()];
        let copy = copy_into(&spec, Some(context.path()), &sources, Vec::new());
        tokio::time::timeout(std::time::Duration::from_secs(10), copy).await.expect("a device is never read").unwrap();
        for copied in ["dev-copy/zero", "dev-copy/zero"] {
            let meta = std::fs::symlink_metadata(rootfs.path().join(copied)).unwrap();
            assert!(std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()));
            assert_eq!(meta.rdev(), rustix::fs::makedev(1, 5));
        }
    }

    #[tokio::test]
    async fn copies_take_directory_contents_modes_and_owners() {
        let source = tempfile::tempdir().unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(source.path().join("dir/nested")).unwrap();
        std::fs::write(source.path().join("dir/nested/f"), "content").unwrap();
        std::fs::create_dir_all(rootfs.path().join("etc")).unwrap();
        std::fs::write(rootfs.path().join("etc/passwd"), "app:x:1000:1001::/app:/bin/sh\n").unwrap();
        let spec = CopySpec {
            rootfs: rootfs.path().to_path_buf(),
            dest: PathBuf::from("/target"),
            dest_is_dir: true,
            chown: Some("app:1001".into()),
            chmod: Some(0o600),
            extract_archives: false,
        };
        copy_into(&spec, Some(source.path()), &[PathBuf::from("dir")], Vec::new()).await.unwrap();
        let copied = rootfs.path().join("target/nested/f");
        assert_eq!(std::fs::read_to_string(&copied).unwrap(), "content", "a directory's contents, not the directory");
        let meta = std::fs::metadata(&copied).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (1000, 1001, 0o600));
        let spec = CopySpec { chown: Some("nobody".into()), ..spec };
        let error = copy_into(&spec, Some(source.path()), &[PathBuf::from("dir")], Vec::new()).await.unwrap_err();
        assert!(error.to_string().contains("--chown=nobody"), "{error}");
    }
}
