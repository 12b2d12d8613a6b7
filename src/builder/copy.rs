//! COPY and ADD: placing files from the context, another stage or an image
//! (or an ADD URL) into a step's mounted root filesystem, whose overlay upper
//! dir then becomes the layer. Paths in the image are resolved as if its root
//! were `/`, so symlinks it holds never lead a write outside it.

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::BuildError;

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

/// `path` inside `root`, with every symlink on the way resolved as if `root`
/// were `/`, so nothing the image planted leads outside it.
fn resolve_in(root: &Path, path: &Path) -> PathBuf {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<std::ffi::OsString> = path.components().rev().filter_map(|c| match c {
        std::path::Component::Normal(p) => Some(p.to_os_string()),
        std::path::Component::ParentDir => Some("..".into()),
        _ => None,
    }).collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = root.join(&resolved).join(&part);
        match std::fs::read_link(&candidate) {
            Ok(target) if hops < 40 => {
                hops += 1;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                pending.extend(target.components().rev().filter_map(|c| match c {
                    std::path::Component::Normal(p) => Some(p.to_os_string()),
                    std::path::Component::ParentDir => Some("..".into()),
                    _ => None,
                }));
            }
            _ => resolved.push(part),
        }
    }
    root.join(resolved)
}

/// `--chown=user[:group]` by name or number, resolved in the image's account
/// files as a container's user is. Docker: without a group, the gid is the uid.
fn owner(rootfs: &Path, chown: &str) -> Result<(u32, u32), BuildError> {
    let resolved = crate::oci::resolve_user(rootfs, chown, &Default::default())
        .map_err(|e| BuildError::Invalid(format!("--chown={chown}: {e}")))?;
    let gid = if chown.contains(':') { resolved.gid } else { resolved.uid };
    Ok((resolved.uid, gid))
}

/// Copies `sources` (host paths) and downloads `urls` to the destination.
pub async fn copy_into(spec: &CopySpec, sources: &[PathBuf], urls: &[String]) -> Result<(), BuildError> {
    let owner = spec.chown.as_deref().map(|c| owner(&spec.rootfs, c)).transpose()?;
    let mut downloaded = Vec::new();
    for url in urls {
        let response = reqwest::get(url).await.map_err(|e| BuildError::Invalid(format!("ADD {url}: {e}")))?;
        if !response.status().is_success() {
            return Err(BuildError::Invalid(format!("ADD {url}: {}", response.status())));
        }
        let name = url.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("download").to_string();
        let bytes = response.bytes().await.map_err(|e| BuildError::Invalid(format!("ADD {url}: {e}")))?;
        downloaded.push((name, bytes));
    }
    let spec_dest = resolve_in(&spec.rootfs, &spec.dest);
    let (sources, dest_is_dir, extract, chmod) = (sources.to_vec(), spec.dest_is_dir, spec.extract_archives, spec.chmod);
    tokio::task::spawn_blocking(move || -> Result<(), BuildError> {
        let io = |p: &Path| BuildError::io(format!("copying to {}", p.display()));
        for source in &sources {
            let meta = std::fs::symlink_metadata(source).map_err(io(source))?;
            if meta.is_dir() {
                copy_tree(source, &spec_dest, owner, chmod)?;
            } else if extract && meta.is_file() && is_archive(source) {
                std::fs::create_dir_all(&spec_dest).map_err(io(&spec_dest))?;
                let file = File::open(source).map_err(io(source))?;
                let reader = crate::images::compression::Compression::detect(&std::fs::read(source).map_err(io(source))?[..8.min(meta.len() as usize)])
                    .decoder(BufReader::new(file))
                    .map_err(io(source))?;
                crate::images::unpack::unpack_layer(reader, &spec_dest).map_err(|e| BuildError::Invalid(format!("ADD {}: {e}", source.display())))?;
            } else {
                let target = if dest_is_dir { spec_dest.join(source.file_name().unwrap_or_default()) } else { spec_dest.clone() };
                copy_entry(source, &target, owner, chmod)?;
            }
        }
        for (name, bytes) in &downloaded {
            let target = if dest_is_dir { spec_dest.join(name) } else { spec_dest.clone() };
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::write(&target, bytes).map_err(io(&target))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(chmod.unwrap_or(0o600))).map_err(io(&target))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(io(&target))?;
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| BuildError::Internal(format!("copy task: {e}")))?
}

/// Writes COPY/ADD heredocs as files named after their delimiter.
pub fn write_heredocs(spec: &CopySpec, heredocs: &[(String, String)]) -> Result<(), BuildError> {
    let dest = resolve_in(&spec.rootfs, &spec.dest);
    for (name, content) in heredocs {
        let target = if spec.dest_is_dir || heredocs.len() > 1 { dest.join(name) } else { dest.clone() };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(BuildError::io(format!("creating {}", parent.display())))?;
        }
        std::fs::write(&target, content).map_err(BuildError::io(format!("writing {}", target.display())))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(spec.chmod.unwrap_or(0o644)))
            .map_err(BuildError::io(format!("writing {}", target.display())))?;
    }
    Ok(())
}

fn is_archive(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else { return false };
    let compression = crate::images::compression::Compression::detect(&bytes[..bytes.len().min(8)]);
    let Ok(mut reader) = compression.decoder(&bytes[..]) else { return false };
    let mut block = [0u8; 512];
    std::io::Read::read_exact(&mut reader, &mut block).is_ok() && &block[257..262] == b"ustar"
}

fn copy_tree(source: &Path, dest: &Path, owner: Option<(u32, u32)>, chmod: Option<u32>) -> Result<(), BuildError> {
    let io = |p: &Path| BuildError::io(format!("copying {}", p.display()));
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let mut entries: Vec<_> = std::fs::read_dir(source).map_err(io(source))?.collect::<Result<_, _>>().map_err(io(source))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        copy_entry(&entry.path(), &dest.join(entry.file_name()), owner, chmod)?;
    }
    Ok(())
}

fn copy_entry(source: &Path, target: &Path, owner: Option<(u32, u32)>, chmod: Option<u32>) -> Result<(), BuildError> {
    let io = |p: &Path| BuildError::io(format!("copying {}", p.display()));
    let meta = std::fs::symlink_metadata(source).map_err(io(source))?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    if meta.is_dir() {
        std::fs::create_dir_all(target).map_err(io(target))?;
        copy_tree(source, target, owner, chmod)?;
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(chmod.unwrap_or(meta.mode() & 0o7777))).map_err(io(target))?;
    } else if meta.file_type().is_symlink() {
        let _ = std::fs::remove_file(target);
        std::os::unix::fs::symlink(std::fs::read_link(source).map_err(io(source))?, target).map_err(io(target))?;
    } else {
        if std::fs::symlink_metadata(target).is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(target).map_err(io(target))?;
        }
        std::fs::copy(source, target).map_err(io(target))?;
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(chmod.unwrap_or(meta.mode() & 0o7777))).map_err(io(target))?;
    }
    let (uid, gid) = owner.unwrap_or((0, 0));
    std::os::unix::fs::lchown(target, Some(uid), Some(gid)).map_err(io(target))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn symlinks_in_the_image_resolve_inside_its_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("real")).unwrap();
        std::os::unix::fs::symlink("/real", root.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.path().join("real/up")).unwrap();
        assert_eq!(resolve_in(root.path(), Path::new("/abs/file")), root.path().join("real/file"));
        assert_eq!(resolve_in(root.path(), Path::new("/real/up/etc")), root.path().join("etc"));
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
        copy_into(&spec, &[source.path().join("dir")], &[]).await.unwrap();
        let copied = rootfs.path().join("target/nested/f");
        assert_eq!(std::fs::read_to_string(&copied).unwrap(), "content", "a directory's contents, not the directory");
        let meta = std::fs::metadata(&copied).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (1000, 1001, 0o600));
        let spec = CopySpec { chown: Some("nobody".into()), ..spec };
        let error = copy_into(&spec, &[source.path().join("dir")], &[]).await.unwrap_err();
        assert!(error.to_string().contains("--chown=nobody"), "{error}");
    }
}
