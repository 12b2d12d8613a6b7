//! Layers and images from build steps: an overlay upper dir becomes a sorted,
//! gzipped tar layer (overlay whiteouts become OCI ones, times clamped to
//! SOURCE_DATE_EPOCH when set) stored and unpacked through the image room; a
//! final config and its layers become a registered image. COPY/ADD's file
//! placement into a mounted step rootfs lives here too.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::BuildError;
use super::dockerfile::{CommandForm, Healthcheck};
use crate::images::ImageService;
use crate::images::digest::Digest;
use crate::images::manifest::{Descriptor, ImageConfig, Manifest, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST};
use crate::store::{ImageRecord, LayerRecord};

/// RFC 3339 time of a step: SOURCE_DATE_EPOCH when given, else now.
pub fn timestamp(source_date_epoch: Option<i64>) -> String {
    let seconds = source_date_epoch.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
    });
    let days = seconds.div_euclid(86400);
    let rest = seconds.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest / 60 % 60, rest % 60)
}

/// Whether a cached layer is still stored and unpacked.
pub fn is_present(images: &ImageService, layer: &LayerRecord) -> bool {
    let Ok(digest) = layer.digest.parse::<Digest>() else { return false };
    let Ok(diff_id) = layer.diff_id.parse::<Digest>() else { return false };
    images.content().contains(&digest) && matches!(images.unpacked_size(&diff_id), Ok(Some(_)))
}

pub fn healthcheck_json(check: &Healthcheck, shell: &[String]) -> serde_json::Value {
    match check {
        Healthcheck::None => serde_json::json!({ "Test": ["NONE"] }),
        Healthcheck::Cmd { test, interval, timeout, start_period, start_interval, retries } => {
            let test: Vec<String> = match test {
                CommandForm::Exec(argv) => std::iter::once("CMD".to_string()).chain(argv.iter().cloned()).collect(),
                CommandForm::Shell(text) => {
                    let _ = shell;
                    vec!["CMD-SHELL".to_string(), text.clone()]
                }
            };
            let nanos = |d: &Option<std::time::Duration>| d.map(|d| d.as_nanos() as u64);
            serde_json::json!({
                "Test": test,
                "Interval": nanos(interval),
                "Timeout": nanos(timeout),
                "StartPeriod": nanos(start_period),
                "StartInterval": nanos(start_interval),
                "Retries": retries,
            })
        }
    }
}

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

/// Turns a step's upper dir into a stored, unpacked layer.
pub fn commit_upper(images: &ImageService, upper: &Path, _lowers: &[PathBuf], epoch: Option<i64>) -> Result<LayerRecord, BuildError> {
    let io = |what: &str| BuildError::io(format!("making a layer: {what}"));
    let mut tar_file = tempfile_in(upper.parent().unwrap_or(upper))?;
    let diff_id = {
        let mut hashing = HashingWriter { inner: &mut tar_file, hasher: Sha256::new() };
        {
            let mut builder = tar::Builder::new(&mut hashing);
            builder.follow_symlinks(false);
            append_tree(&mut builder, upper, Path::new(""), epoch)?;
            builder.finish().map_err(io("finishing the tar"))?;
        }
        Digest::from_hasher(hashing.hasher)
    };
    tar_file.seek(SeekFrom::Start(0)).map_err(io("rewinding"))?;
    let mut gz_file = tempfile_in(upper.parent().unwrap_or(upper))?;
    let (digest, size) = {
        let mut hashing = HashingWriter { inner: &mut gz_file, hasher: Sha256::new() };
        let mut encoder = flate2::write::GzEncoder::new(&mut hashing, flate2::Compression::fast());
        std::io::copy(&mut tar_file, &mut encoder).map_err(io("compressing"))?;
        encoder.finish().map_err(io("compressing"))?;
        (Digest::from_hasher(hashing.hasher), gz_file.metadata().map_err(io("sizing"))?.len())
    };
    gz_file.seek(SeekFrom::Start(0)).map_err(io("rewinding"))?;
    let descriptor = Descriptor { media_type: OCI_LAYER_GZIP.into(), digest: digest.clone(), size, urls: Vec::new(), annotations: Default::default(), platform: None };
    images.import_layer(BufReader::new(gz_file), &descriptor, &diff_id)?;
    Ok(LayerRecord { digest: digest.to_string(), media_type: OCI_LAYER_GZIP.into(), size, diff_id: diff_id.to_string() })
}

fn tempfile_in(dir: &Path) -> Result<File, BuildError> {
    let path = dir.join(format!(".layer-{:016x}", rand::random::<u64>()));
    let file = File::options().read(true).write(true).create_new(true).open(&path).map_err(BuildError::io(format!("creating {}", path.display())))?;
    let _ = std::fs::remove_file(&path);
    Ok(file)
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Appends `dir`'s entries in name order; overlay whiteouts (0/0 character
/// devices) become `.wh.` files and opaque directories get `.wh..wh..opq`.
fn append_tree<W: Write>(builder: &mut tar::Builder<W>, dir: &Path, relative: &Path, epoch: Option<i64>) -> Result<(), BuildError> {
    let io = |p: &Path| BuildError::io(format!("reading {}", p.display()));
    let mut entries: Vec<_> = std::fs::read_dir(dir).map_err(io(dir))?.collect::<Result<_, _>>().map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = relative.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata(&meta);
        if let Some(epoch) = epoch {
            header.set_mtime(meta.mtime().min(epoch).max(0) as u64);
        }
        let kind = meta.file_type();
        use std::os::unix::fs::FileTypeExt;
        if kind.is_char_device() && meta.rdev() == 0 {
            let whiteout = relative.join(format!(".wh.{}", entry.file_name().to_string_lossy()));
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(0);
            header.set_mode(0o644);
            header.set_mtime(epoch.unwrap_or(0).max(0) as u64);
            builder.append_data(&mut header, &whiteout, std::io::empty()).map_err(io(&path))?;
        } else if kind.is_dir() {
            header.set_size(0);
            builder.append_data(&mut header, &name, std::io::empty()).map_err(io(&path))?;
            if is_opaque(&path) {
                let mut marker = tar::Header::new_gnu();
                marker.set_entry_type(tar::EntryType::Regular);
                marker.set_size(0);
                marker.set_mode(0o644);
                builder.append_data(&mut marker, name.join(".wh..wh..opq"), std::io::empty()).map_err(io(&path))?;
            }
            append_tree(builder, &path, &name, epoch)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io(&path))?;
            header.set_size(0);
            builder.append_link(&mut header, &name, &target).map_err(io(&path))?;
        } else if kind.is_file() {
            let file = File::open(&path).map_err(io(&path))?;
            builder.append_data(&mut header, &name, file).map_err(io(&path))?;
        }
    }
    Ok(())
}

fn is_opaque(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    let mut value = [0u8; 4];
    for name in [c"trusted.overlay.opaque", c"user.overlay.opaque"] {
        // SAFETY: both strings are NUL-terminated and the buffer outlives the call.
        let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        if n == 1 && value[0] == b'y' {
            return true;
        }
    }
    false
}

/// Stores `config` and a manifest for `layers` and records the image under `tags`.
pub fn register_image(images: &ImageService, config: &ImageConfig, layers: &[LayerRecord], tags: &[String]) -> Result<(String, Vec<String>), BuildError> {
    let mut config = config.clone();
    config.rootfs.fs_type = "layers".into();
    let config_bytes = serde_json::to_vec(&config).map_err(|e| BuildError::Internal(format!("image config: {e}")))?;
    let config_digest = Digest::of(&config_bytes);
    images.content().put(&config_digest, &config_bytes).map_err(crate::images::ImageError::from)?;
    let mut descriptors = Vec::new();
    for layer in layers {
        let digest = layer.digest.parse().map_err(|e| BuildError::Internal(format!("layer digest: {e}")))?;
        descriptors.push(Descriptor { media_type: layer.media_type.clone(), digest, size: layer.size, urls: Vec::new(), annotations: Default::default(), platform: None });
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: Descriptor { media_type: OCI_CONFIG.into(), digest: config_digest.clone(), size: config_bytes.len() as u64, urls: Vec::new(), annotations: Default::default(), platform: None },
        layers: descriptors,
        annotations: Default::default(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| BuildError::Internal(format!("manifest: {e}")))?;
    let manifest_digest = Digest::of(&manifest_bytes);
    images.content().put(&manifest_digest, &manifest_bytes).map_err(crate::images::ImageError::from)?;
    let record = ImageRecord {
        id: config_digest.to_string(),
        manifest: manifest_digest.to_string(),
        index: None,
        config: config_digest.to_string(),
        layers: layers.to_vec(),
        size: config_bytes.len() as u64 + layers.iter().map(|l| l.size).sum::<u64>(),
        user: config.config.as_ref().and_then(|c| c.user.clone()).filter(|u| !u.is_empty()),
        created_unix_nanos: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64),
    };
    let names = images.register_image(&record, tags)?;
    Ok((record.id, names))
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

fn owner(rootfs: &Path, chown: &str) -> Result<(u32, u32), BuildError> {
    let (user, group) = chown.split_once(':').unwrap_or((chown, ""));
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        let text = std::fs::read_to_string(resolve_in(rootfs, Path::new(file))).ok()?;
        text.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name) && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => lookup("/etc/passwd", user).ok_or_else(|| BuildError::Invalid(format!("--chown={chown}: no user {user:?} in the image")))?,
    };
    let gid = if group.is_empty() {
        if user.parse::<u32>().is_ok() { uid } else { primary }
    } else {
        match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup("/etc/group", group).map(|(gid, _)| gid).ok_or_else(|| BuildError::Invalid(format!("--chown={chown}: no group {group:?} in the image")))?,
        }
    };
    Ok((uid, gid))
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
    let rootfs = spec.rootfs.clone();
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
        let _ = rootfs;
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
