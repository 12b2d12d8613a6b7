//! Images built from real tar streams: layers from entries (including whiteouts and
//! deliberately hostile raw headers), gzip/zstd/uncompressed blobs, image configs with
//! correct diff_ids, and OCI or Docker schema 2 manifests and indexes.

use std::io::Write;

use serde_json::json;

use super::sha256_digest;

/// Fixed so that the same entries always give the same layer digest.
const ENTRY_MTIME: u64 = 1_700_000_000;
const CREATED: &str = "2024-01-01T00:00:00Z";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestFormat {
    Oci,
    DockerSchema2,
}

impl ManifestFormat {
    pub fn manifest_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => "application/vnd.oci.image.manifest.v1+json",
            ManifestFormat::DockerSchema2 => "application/vnd.docker.distribution.manifest.v2+json",
        }
    }

    pub fn index_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => "application/vnd.oci.image.index.v1+json",
            ManifestFormat::DockerSchema2 => "application/vnd.docker.distribution.manifest.list.v2+json",
        }
    }

    fn config_media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => "application/vnd.oci.image.config.v1+json",
            ManifestFormat::DockerSchema2 => "application/vnd.docker.container.image.v1+json",
        }
    }

    fn layer_media_type(self, compression: Compression) -> &'static str {
        match (self, compression) {
            (ManifestFormat::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
            (ManifestFormat::Oci, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (ManifestFormat::Oci, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (ManifestFormat::DockerSchema2, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
            (ManifestFormat::DockerSchema2, Compression::Gzip) => {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            }
            (ManifestFormat::DockerSchema2, Compression::Zstd) => {
                panic!("Docker schema 2 has no zstd layer media type; use ManifestFormat::Oci")
            }
        }
    }
}

/// One member of a layer's tar stream.
#[derive(Clone, Debug)]
pub enum Entry {
    File { path: String, data: Vec<u8>, mode: u32 },
    Dir { path: String, mode: u32 },
    Symlink { path: String, target: String },
    Hardlink { path: String, target: String },
    /// Deletes `path` from the layers below (`<dir>/.wh.<name>`).
    Whiteout { path: String },
    /// Hides everything the layers below have in `dir` (`<dir>/.wh..wh..opq`).
    Opaque { dir: String },
    /// A header written byte for byte, bypassing every check of the tar crate: this is
    /// how hostile layers carry `../x`, `/x` or link names pointing anywhere.
    Raw { name: Vec<u8>, link_name: Vec<u8>, kind: tar::EntryType, data: Vec<u8> },
}

impl Entry {
    pub fn file(path: &str, data: impl Into<Vec<u8>>) -> Entry {
        Entry::File { path: path.to_owned(), data: data.into(), mode: 0o644 }
    }

    pub fn dir(path: &str) -> Entry {
        Entry::Dir { path: path.to_owned(), mode: 0o755 }
    }

    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink { path: path.to_owned(), target: target.to_owned() }
    }

    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::Hardlink { path: path.to_owned(), target: target.to_owned() }
    }

    pub fn whiteout(path: &str) -> Entry {
        Entry::Whiteout { path: path.to_owned() }
    }

    pub fn opaque(dir: &str) -> Entry {
        Entry::Opaque { dir: dir.to_owned() }
    }

    pub fn raw_file(name: &str, data: impl Into<Vec<u8>>) -> Entry {
        Entry::Raw { name: name.into(), link_name: Vec::new(), kind: tar::EntryType::Regular, data: data.into() }
    }

    pub fn raw_symlink(name: &str, target: &str) -> Entry {
        Entry::Raw { name: name.into(), link_name: target.into(), kind: tar::EntryType::Symlink, data: Vec::new() }
    }

    pub fn raw_hardlink(name: &str, target: &str) -> Entry {
        Entry::Raw { name: name.into(), link_name: target.into(), kind: tar::EntryType::Link, data: Vec::new() }
    }
}

/// A layer: its uncompressed tar stream and the blob the registry serves.
#[derive(Clone, Debug)]
pub struct TestLayer {
    tar: Vec<u8>,
    blob: Vec<u8>,
    compression: Compression,
}

impl TestLayer {
    pub fn new(entries: &[Entry], compression: Compression) -> TestLayer {
        TestLayer::from_tar(build_tar(entries), compression)
    }

    /// A layer holding one file `path` of `size` bytes that no codec can shrink; `seed`
    /// makes different layers differ.
    pub fn random(path: &str, size: usize, seed: u64, compression: Compression) -> TestLayer {
        TestLayer::new(&[Entry::file(path, incompressible_bytes(size, seed))], compression)
    }

    pub fn from_tar(tar: Vec<u8>, compression: Compression) -> TestLayer {
        let blob = match compression {
            Compression::None => tar.clone(),
            Compression::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(&tar).expect("gzip into memory");
                encoder.finish().expect("gzip into memory")
            }
            Compression::Zstd => zstd::encode_all(tar.as_slice(), 3).expect("zstd into memory"),
        };
        TestLayer { tar, blob, compression }
    }

    /// Digest of the uncompressed tar stream (the image config's rootfs.diff_ids).
    pub fn diff_id(&self) -> String {
        sha256_digest(&self.tar)
    }

    /// Digest of the blob as the registry serves it (the manifest's layer digest).
    pub fn digest(&self) -> String {
        sha256_digest(&self.blob)
    }

    pub fn blob(&self) -> &[u8] {
        &self.blob
    }
}

/// Fast deterministic bytes with no structure for gzip or zstd to exploit.
pub fn incompressible_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(size + 8);
    while data.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(size);
    data
}

fn build_tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (header, data) = entry_header(entry);
        builder.append(&header, data).expect("append tar entry in memory");
    }
    builder.into_inner().expect("finish tar in memory")
}

fn entry_header(entry: &Entry) -> (tar::Header, &[u8]) {
    let mut header = tar::Header::new_ustar();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(ENTRY_MTIME);
    header.set_size(0);
    let data: &[u8] = match entry {
        Entry::File { path, data, mode } => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_path(path).expect("file path fits a ustar header");
            header.set_mode(*mode);
            header.set_size(data.len() as u64);
            data
        }
        Entry::Dir { path, mode } => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_path(format!("{}/", path.trim_end_matches('/'))).expect("dir path fits");
            header.set_mode(*mode);
            &[]
        }
        Entry::Symlink { path, target } => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_path(path).expect("symlink path fits");
            header.set_link_name(target).expect("symlink target fits");
            header.set_mode(0o777);
            &[]
        }
        Entry::Hardlink { path, target } => {
            header.set_entry_type(tar::EntryType::Link);
            header.set_path(path).expect("hardlink path fits");
            header.set_link_name(target).expect("hardlink target fits");
            header.set_mode(0o644);
            &[]
        }
        Entry::Whiteout { path } => {
            let marker = match path.rsplit_once('/') {
                Some((dir, name)) => format!("{dir}/.wh.{name}"),
                None => format!(".wh.{path}"),
            };
            header.set_entry_type(tar::EntryType::Regular);
            header.set_path(marker).expect("whiteout path fits");
            header.set_mode(0o644);
            &[]
        }
        Entry::Opaque { dir } => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_path(format!("{}/.wh..wh..opq", dir.trim_end_matches('/'))).expect("opaque path fits");
            header.set_mode(0o644);
            &[]
        }
        Entry::Raw { name, link_name, kind, data } => {
            let old = header.as_old_mut();
            assert!(name.len() <= old.name.len(), "raw entry name longer than a ustar name field");
            assert!(link_name.len() <= old.linkname.len(), "raw link name longer than a ustar field");
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name);
            old.linkname = [0; 100];
            old.linkname[..link_name.len()].copy_from_slice(link_name);
            header.set_entry_type(*kind);
            header.set_mode(if *kind == tar::EntryType::Symlink { 0o777 } else { 0o644 });
            header.set_size(data.len() as u64);
            data
        }
    };
    header.set_cksum();
    (header, data)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

impl Platform {
    pub fn linux(architecture: &str) -> Platform {
        Platform { os: "linux".into(), architecture: architecture.into() }
    }

    /// The platform a runtime on this machine must pick from an index.
    pub fn host() -> Platform {
        Platform::linux(host_architecture())
    }

    /// A platform this machine is not, for the decoy entry of an index.
    pub fn foreign() -> Platform {
        Platform::linux(if host_architecture() == "arm64" { "amd64" } else { "arm64" })
    }
}

fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An image: layers (bottom first) plus the config fields the CRI reports on.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub layers: Vec<TestLayer>,
    pub user: Option<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub format: ManifestFormat,
    pub platform: Platform,
}

impl TestImage {
    pub fn new(layers: Vec<TestLayer>) -> TestImage {
        TestImage {
            layers,
            user: None,
            cmd: vec!["/bin/sh".into()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            format: ManifestFormat::Oci,
            platform: Platform::host(),
        }
    }

    /// A one-layer image whose single file carries `marker`, so that images built with
    /// different markers never share a digest.
    pub fn small(marker: &str) -> TestImage {
        TestImage::new(vec![TestLayer::new(
            &[Entry::dir("etc"), Entry::file("etc/marker", marker.as_bytes())],
            Compression::Gzip,
        )])
        .env(&format!("BERTH_TEST_MARKER={marker}"))
    }

    /// A busybox image from the host's busybox-static: the binary, a link per
    /// applet, root's account files and a sticky /tmp, as the crictl tests make it.
    pub fn busybox() -> TestImage {
        let binary = std::fs::read("/bin/busybox").expect("read /bin/busybox (Debian package busybox-static)");
        let applets = std::process::Command::new("/bin/busybox").arg("--list-full").output().expect("busybox --list-full");
        let mut entries = vec![Entry::File { path: "bin/busybox".into(), data: binary, mode: 0o755 }];
        for dir in ["sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "proc", "sys", "dev"] {
            entries.push(Entry::dir(dir));
        }
        entries.push(Entry::Dir { path: "tmp".into(), mode: 0o1777 });
        for applet in String::from_utf8_lossy(&applets.stdout).lines().filter(|a| *a != "bin/busybox") {
            entries.push(Entry::symlink(applet, "/bin/busybox"));
        }
        entries.push(Entry::file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"));
        entries.push(Entry::file("etc/group", "root:x:0:\nnogroup:x:65534:\n"));
        TestImage::new(vec![TestLayer::new(&entries, Compression::Gzip)]).cmd(&["sh"])
    }

    pub fn user(mut self, user: &str) -> TestImage {
        self.user = Some(user.to_owned());
        self
    }

    pub fn cmd(mut self, cmd: &[&str]) -> TestImage {
        self.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn env(mut self, variable: &str) -> TestImage {
        self.env.push(variable.to_owned());
        self
    }

    pub fn format(mut self, format: ManifestFormat) -> TestImage {
        self.format = format;
        self
    }

    pub fn platform(mut self, platform: Platform) -> TestImage {
        self.platform = platform;
        self
    }

    /// The image config JSON; its digest is the image ID.
    pub fn config_json(&self) -> Vec<u8> {
        let mut config = serde_json::Map::new();
        if let Some(user) = &self.user {
            config.insert("User".into(), json!(user));
        }
        config.insert("Cmd".into(), json!(self.cmd));
        config.insert("Env".into(), json!(self.env));
        let document = json!({
            "created": CREATED,
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": config,
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().map(TestLayer::diff_id).collect::<Vec<_>>(),
            },
            "history": self.layers.iter().enumerate().map(|(index, _)| json!({
                "created": CREATED,
                "created_by": format!("berth test layer {index}"),
            })).collect::<Vec<_>>(),
        });
        serde_json::to_vec(&document).expect("serialise image config")
    }

    /// The manifest bytes exactly as pushed; their digest is the repo digest.
    pub fn manifest_json(&self) -> Vec<u8> {
        let config = self.config_json();
        let document = json!({
            "schemaVersion": 2,
            "mediaType": self.format.manifest_media_type(),
            "config": {
                "mediaType": self.format.config_media_type(),
                "digest": sha256_digest(&config),
                "size": config.len(),
            },
            "layers": self.layers.iter().map(|layer| json!({
                "mediaType": self.format.layer_media_type(layer.compression),
                "digest": layer.digest(),
                "size": layer.blob.len(),
            })).collect::<Vec<_>>(),
        });
        serde_json::to_vec(&document).expect("serialise manifest")
    }
}

/// What a push left in the registry, as a CRI user would name it.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// Digest of the image's manifest.
    pub repo_digest: String,
    /// Digest of the image config: the image ID.
    pub image_id: String,
    pub layer_digests: Vec<String>,
    /// Manifest, config and compressed layers together, as the registry stores them.
    pub size: u64,
}

/// A pushed index and the per-platform images it lists.
#[derive(Clone, Debug)]
pub struct PushedIndex {
    pub index_digest: String,
    pub images: Vec<(Platform, Pushed)>,
}

impl PushedIndex {
    pub fn for_platform(&self, platform: &Platform) -> &Pushed {
        &self.images.iter().find(|(p, _)| p == platform).expect("platform in index").1
    }
}

pub fn index_json(format: ManifestFormat, entries: &[(Platform, &TestImage)]) -> Vec<u8> {
    let document = json!({
        "schemaVersion": 2,
        "mediaType": format.index_media_type(),
        "manifests": entries.iter().map(|(platform, image)| {
            let manifest = image.manifest_json();
            json!({
                "mediaType": image.format.manifest_media_type(),
                "digest": sha256_digest(&manifest),
                "size": manifest.len(),
                "platform": { "architecture": platform.architecture, "os": platform.os },
            })
        }).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&document).expect("serialise index")
}
