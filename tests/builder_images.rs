//! The builder's image side against real parts: layers diffed out of a real
//! overlayfs upper dir, images assembled on a busybox base and run by berthd
//! through runc, a running container committed, images pushed to and pulled
//! back from the real registry (anonymous and bearer-token), and save/load
//! round trips that skopeo reads. Needs root.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use berth::builder::archive;
use berth::builder::commit::{Change, CommitOptions, commit_container};
use berth::builder::image::{BaseImage, HistoryStep, ImageDraft, history, inspect, write_image};
use berth::builder::layer::{Layer, LayerOptions, TreeKind, create_layer};
use berth::config::Config;
use berth::images::ImageService;
use berth::images::manifest::OCI_LAYER_GZIP;
use berth::images::registry::Credentials;
use berth::store::Store;
use common::{Berthd, BerthdConfig, Compression, Entry, ManifestFormat, TestImage, TestLayer, TestRegistry};
use k8s_cri::v1 as cri;

const BUSYBOX_APPLETS: [&str; 10] = ["sh", "cat", "sleep", "ls", "echo", "rm", "mkdir", "test", "true", "env"];

/// busybox-static with the applets the tests use, and an /etc/passwd.
fn busybox_image() -> TestImage {
    let busybox = std::fs::read("/bin/busybox").expect("read /bin/busybox (Debian package busybox-static)");
    let mut entries = vec![Entry::dir("bin"), Entry::File { path: "bin/busybox".into(), data: busybox, mode: 0o755 }];
    for applet in BUSYBOX_APPLETS {
        entries.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    for dir in ["etc", "tmp", "proc", "sys", "dev", "data"] {
        entries.push(Entry::dir(dir));
    }
    entries.push(Entry::file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"));
    entries.push(Entry::file("data/base.txt", "from the base\n"));
    TestImage::new(vec![TestLayer::new(&entries, Compression::Gzip)])
}

/// The image room in this process, on `root`, reaching `registry` over plain HTTP.
fn open_images(root: &Path, registry: Option<&TestRegistry>) -> ImageService {
    std::fs::create_dir_all(root).unwrap();
    let mut config = Config { root: root.to_path_buf(), state: root.join("state"), ..Config::default() };
    if let Some(registry) = registry {
        config.registry.insecure.push(registry.host());
    }
    let store = Arc::new(Store::open(&root.join("meta.redb")).expect("open meta.redb"));
    ImageService::open(&config, store).expect("open the image service")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// A layer from a plain directory holding `files`.
fn layer_of_files(images: &ImageService, files: &[(&str, &str)]) -> Layer {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    create_layer(images, dir.path(), TreeKind::Plain, &LayerOptions::default()).unwrap().expect("a non-empty layer")
}

/// busybox plus one layer with /hello.txt, named `name`.
fn hello_image(images: &ImageService, base: &str, name: &str) -> String {
    let mut draft = ImageDraft::new(BaseImage::stored(images, base).unwrap());
    let layer = layer_of_files(images, &[("hello.txt", "hello from berth\n")]);
    draft.steps.push(HistoryStep { created_by: "COPY hello.txt /".into(), comment: None, layer: Some(layer) });
    draft.config.env.push("GREETING=hello".into());
    draft.steps.push(HistoryStep { created_by: "ENV GREETING=hello".into(), comment: None, layer: None });
    write_image(images, draft, &[name.to_string()]).unwrap()
}

/// An overlay mount that is undone however the test ends.
struct Overlay {
    merged: PathBuf,
}

impl Overlay {
    fn mount(lower: &Path, upper: &Path, work: &Path, merged: &Path) -> Overlay {
        let options = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        let status =
            Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(merged).status().unwrap();
        assert!(status.success(), "mount overlay: {status}");
        Overlay { merged: merged.to_path_buf() }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.merged).status();
    }
}

#[derive(Debug, PartialEq)]
struct TarEntry {
    path: String,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    mtime: u64,
    link: Option<String>,
    data: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn read_layer(images: &ImageService, layer: &Layer) -> Vec<TarEntry> {
    let blob = std::fs::File::open(images.content().path(&layer.descriptor.digest)).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(blob));
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut xattrs = BTreeMap::new();
        if let Some(extensions) = entry.pax_extensions().unwrap() {
            for extension in extensions {
                let extension = extension.unwrap();
                if let Some(name) = extension.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(name.to_string(), extension.value_bytes().to_vec());
                }
            }
        }
        let header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push(TarEntry {
            path: entry.path().unwrap().to_string_lossy().trim_end_matches('/').to_string(),
            kind: header.entry_type(),
            mode: header.mode().unwrap(),
            uid: header.uid().unwrap(),
            mtime: header.mtime().unwrap(),
            link: entry.link_name().unwrap().map(|l| l.to_string_lossy().into_owned()),
            data,
            xattrs,
        });
    }
    out
}

#[test]
fn overlay_upper_dir_diffs_into_whiteouts_deterministically() {
    common::run(|| async {
        let dir = tempfile::tempdir().unwrap();
        let images = open_images(&dir.path().join("root"), None);
        let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| {
            let path = dir.path().join(d);
            std::fs::create_dir_all(&path).unwrap();
            path
        });
        std::fs::write(lower.join("keep"), "kept").unwrap();
        std::fs::write(lower.join("gone"), "deleted").unwrap();
        std::fs::create_dir(lower.join("dir")).unwrap();
        std::fs::write(lower.join("dir/old"), "hidden by the opaque dir").unwrap();
        {
            let _overlay = Overlay::mount(&lower, &upper, &work, &merged);
            std::fs::remove_file(merged.join("gone")).unwrap();
            std::fs::remove_dir_all(merged.join("dir")).unwrap();
            std::fs::create_dir(merged.join("dir")).unwrap();
            std::fs::write(merged.join("dir/new"), "new in the replaced dir").unwrap();
            std::fs::write(merged.join("new"), "new file").unwrap();
            std::os::unix::fs::chown(merged.join("new"), Some(1000), Some(1000)).unwrap();
            rustix::fs::lsetxattr(merged.join("new"), "trusted.berth-test", b"kept", rustix::fs::XattrFlags::empty())
                .unwrap();
            std::fs::hard_link(merged.join("new"), merged.join("new2")).unwrap();
            std::os::unix::fs::symlink("keep", merged.join("link")).unwrap();
        }
        assert_eq!(
            common::fs::xattr(&upper.join("dir"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..]),
            "overlayfs marks the recreated dir opaque"
        );

        let options = LayerOptions { source_date_epoch: Some(1_000) };
        let first = create_layer(&images, &upper, TreeKind::OverlayUpper, &options).unwrap().unwrap();
        let second = create_layer(&images, &upper, TreeKind::OverlayUpper, &options).unwrap().unwrap();
        assert_eq!(first.diff_id, second.diff_id, "same changes, same diff id");
        assert_eq!(first.descriptor, second.descriptor, "same changes, byte-identical blob");

        let entries = read_layer(&images, &first);
        let summary: Vec<(&str, tar::EntryType, Option<&str>)> =
            entries.iter().map(|e| (e.path.as_str(), e.kind, e.link.as_deref())).collect();
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        assert_eq!(
            summary,
            [
                ("dir", Directory, None),
                ("dir/.wh..wh..opq", Regular, None),
                ("dir/new", Regular, None),
                (".wh.gone", Regular, None),
                ("link", Symlink, Some("keep")),
                ("new", Regular, None),
                ("new2", Link, Some("new")),
            ]
        );
        let new = entries.iter().find(|e| e.path == "new").unwrap();
        assert_eq!((new.uid, new.mode, new.data.as_slice()), (1000, 0o644, &b"new file"[..]));
        assert_eq!(new.xattrs, BTreeMap::from([("trusted.berth-test".to_string(), b"kept".to_vec())]));
        assert!(entries.iter().all(|e| e.mtime <= 1_000), "mtimes clamped to SOURCE_DATE_EPOCH");
        assert!(
            entries.iter().all(|e| !e.xattrs.keys().any(|k| k.starts_with("trusted.overlay."))),
            "overlayfs' own xattrs stay out of the layer"
        );
        assert!(images.unpacked_size(&first.diff_id).unwrap().is_some(), "the layer's snapshot is registered");

        let empty = tempfile::tempdir().unwrap();
        assert!(create_layer(&images, empty.path(), TreeKind::OverlayUpper, &options).unwrap().is_none());
    });
}

#[test]
fn push_then_remove_then_pull_back_gives_the_same_image() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        // A Docker schema 2 base: its layer goes into the new OCI manifest as OCI.
        registry.push("library/busybox", "latest", &busybox_image().format(ManifestFormat::DockerSchema2)).await;
        let dir = tempfile::tempdir().unwrap();
        let images = open_images(dir.path(), Some(&registry));
        let base = format!("{}/library/busybox:latest", registry.host());
        images.pull(&base, None).await.unwrap();
        let name = format!("{}/builder/hello:1", registry.host());
        let id = {
            let (images, base, name) = (images.clone(), base.clone(), name.clone());
            blocking(move || hello_image(&images, &base, &name)).await
        };

        let pushed = images.push(&name, &name, None).await.unwrap();
        let (served, manifest) = served_manifest(&registry, "builder/hello", "1").await;
        let layer_types: Vec<_> =
            manifest["layers"].as_array().unwrap().iter().map(|l| l["mediaType"].clone()).collect();
        assert_eq!(layer_types, [OCI_LAYER_GZIP, OCI_LAYER_GZIP], "{manifest}");
        assert_eq!(served, pushed.to_string(), "the registry serves the pushed manifest under the tag");
        // Pushing again finds every blob in place and uploads nothing.
        assert_eq!(images.push(&name, &name, None).await.unwrap(), pushed);

        images.remove(&id).await.unwrap();
        assert!(images.status(&name).unwrap().is_none());
        let pulled = images.pull(&name, None).await.unwrap();
        assert_eq!(pulled, id, "the pulled image has the pushed config");
        let status = images.status(&name).unwrap().unwrap();
        assert!(status.repo_digests.contains(&format!("{}/builder/hello@{pushed}", registry.host())), "{status:?}");
        let rows = {
            let (images, name) = (images.clone(), name.clone());
            blocking(move || history(&images, &name).unwrap()).await
        };
        assert_eq!(rows[0].created_by, "ENV GREETING=hello");
        assert!(rows[0].empty_layer);
        assert_eq!((rows[1].created_by.as_str(), rows[1].size), ("COPY hello.txt /", 17));
    });
}

#[test]
fn push_with_a_bearer_token_scoped_for_push() {
    common::run(|| async {
        let registry = TestRegistry::start_token("builder", "s3cret").await;
        let dir = tempfile::tempdir().unwrap();
        let images = open_images(dir.path(), Some(&registry));
        let name = format!("{}/builder/scratch:1", registry.host());
        let id = {
            let (images, name) = (images.clone(), name.clone());
            blocking(move || {
                let mut draft = ImageDraft::new(BaseImage::scratch());
                let layer = layer_of_files(&images, &[("etc/motd", "built on scratch\n")]);
                draft.steps.push(HistoryStep {
                    created_by: "COPY motd /etc/".into(),
                    comment: None,
                    layer: Some(layer),
                });
                write_image(&images, draft, &[name]).unwrap()
            })
            .await
        };
        let anonymous = images.push(&name, &name, None).await.unwrap_err();
        assert!(anonymous.to_string().contains("unauthorized"), "{anonymous}");
        let credentials = Credentials::Basic { username: "builder".into(), password: "s3cret".into() };
        images.push(&name, &name, Some(credentials.clone())).await.unwrap();

        let other = tempfile::tempdir().unwrap();
        let fresh = open_images(other.path(), Some(&registry));
        assert_eq!(fresh.pull(&name, Some(credentials)).await.unwrap(), id);
    });
}

#[test]
fn save_and_load_round_trip_and_skopeo_reads_the_archive() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        registry.push("library/busybox", "latest", &busybox_image()).await;
        let dir = tempfile::tempdir().unwrap();
        let images = open_images(&dir.path().join("a"), Some(&registry));
        let base = format!("{}/library/busybox:latest", registry.host());
        images.pull(&base, None).await.unwrap();
        let name = "berth.test/saved:v1".to_string();
        let archive_path = dir.path().join("saved.tar");
        let id = {
            let (images, archive_path, name) = (images.clone(), archive_path.clone(), name.clone());
            blocking(move || {
                let id = hello_image(&images, &base, &name);
                archive::save(&images, &[name], std::fs::File::create(&archive_path).unwrap()).unwrap();
                id
            })
            .await
        };

        let output = Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}", archive_path.display()))
            .output()
            .unwrap();
        assert!(output.status.success(), "skopeo inspect: {}", String::from_utf8_lossy(&output.stderr));
        let inspected: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(inspected["Layers"].as_array().unwrap().len(), 2, "{inspected}");
        assert!(inspected["Env"].as_array().unwrap().contains(&"GREETING=hello".into()), "{inspected}");

        // Loaded into another store: same id, same name, runnable layers.
        let other = open_images(&dir.path().join("b"), None);
        let loaded = {
            let (other, archive_path) = (other.clone(), archive_path.clone());
            blocking(move || archive::load(&other, std::fs::File::open(archive_path).unwrap()).unwrap()).await
        };
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].id, id);
        assert_eq!(loaded[0].names, ["berth.test/saved:v1"]);
        let status = other.status("berth.test/saved:v1").unwrap().expect("the loaded image is listed");
        assert_eq!(status.id, id);
        let rootfs = other.prepare_rootfs("round-trip", &id).unwrap();
        let hello: Vec<_> = rootfs.lowerdirs.iter().filter(|d| d.join("hello.txt").exists()).collect();
        assert_eq!(hello.len(), 1, "hello.txt is in one unpacked layer");
        other.release_rootfs("round-trip").unwrap();
        assert_eq!(inspect(&other, &id).unwrap()["config"]["Env"], inspect(&images, &id).unwrap()["config"]["Env"]);

        // docker-save format, as skopeo writes it, loads too.
        let docker_archive = dir.path().join("docker.tar");
        let status = Command::new("skopeo")
            .arg("copy")
            .arg("--quiet")
            .arg(format!("oci-archive:{}", archive_path.display()))
            .arg(format!("docker-archive:{}:berth.test/docker-saved:v2", docker_archive.display()))
            .status()
            .unwrap();
        assert!(status.success(), "skopeo copy to docker-archive");
        let third = open_images(&dir.path().join("c"), None);
        let loaded =
            blocking(move || archive::load(&third, std::fs::File::open(docker_archive).unwrap()).unwrap()).await;
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].id, id, "the config survives docker's format byte for byte");
        assert_eq!(loaded[0].names, ["berth.test/docker-saved:v2"]);
    });
}

/// The manifest the registry serves for `repo:tag`, and the digest it announces.
async fn served_manifest(registry: &TestRegistry, repo: &str, tag: &str) -> (String, serde_json::Value) {
    let response = reqwest::Client::new()
        .get(format!("{}/v2/{repo}/manifests/{tag}", registry.url()))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "GET manifest {repo}:{tag}: {}", response.status());
    let digest = response.headers()["docker-content-digest"].to_str().unwrap().to_string();
    (digest, response.json().await.unwrap())
}

// ---------------------------------------------------------------- through berthd

/// A pod on the host network (no CNI) whose pause process is busybox sleeping.
async fn run_pod(berthd: &Berthd, name: &str) -> String {
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "builder".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let request = cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
    match berthd.runtime_client().await.run_pod_sandbox(request).await {
        Ok(response) => response.into_inner().pod_sandbox_id,
        Err(status) => panic!("RunPodSandbox: {status:?}\n{}", berthd.log()),
    }
}

/// A started container of `image` sleeping in `pod`.
async fn run_sleeper(berthd: &Berthd, pod: &str, name: &str, image: &str) -> String {
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(common::berthd::spec(image)),
        command: vec!["/bin/sleep".into(), "3600".into()],
        ..Default::default()
    };
    let mut client = berthd.runtime_client().await;
    let request =
        cri::CreateContainerRequest { pod_sandbox_id: pod.into(), config: Some(config), sandbox_config: None };
    let id = match client.create_container(request).await {
        Ok(response) => response.into_inner().container_id,
        Err(status) => panic!("CreateContainer {image}: {status:?}\n{}", berthd.log()),
    };
    client.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.expect("StartContainer");
    id
}

async fn exec(berthd: &Berthd, container: &str, cmd: &[&str]) -> (i32, String) {
    let request = cri::ExecSyncRequest {
        container_id: container.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 10,
    };
    let response = berthd.runtime_client().await.exec_sync(request).await.expect("ExecSync").into_inner();
    (response.exit_code, String::from_utf8_lossy(&response.stdout).into_owned())
}

async fn remove_pod(berthd: &Berthd, pod: &str) {
    let mut client = berthd.runtime_client().await;
    client.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.into() }).await.expect("StopPodSandbox");
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.into() })
        .await
        .expect("RemovePodSandbox");
}

async fn berthd_with_busybox(registry: &TestRegistry) -> Berthd {
    registry.push("library/busybox", "latest", &busybox_image()).await;
    registry.push("library/pause", "builder", &busybox_image().cmd(&["/bin/sleep", "3600"])).await;
    let berthd =
        Berthd::start(BerthdConfig::for_registry(registry).sandbox_image("docker.io/library/pause:builder")).await;
    berthd.pull("docker.io/library/busybox:latest").await.expect("pull busybox");
    berthd
}

#[test]
fn assembled_and_committed_images_run_through_cri() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let mut berthd = berthd_with_busybox(&registry).await;
        let pod = run_pod(&berthd, "committer").await;
        let original = run_sleeper(&berthd, &pod, "original", "busybox").await;
        let (code, _) =
            exec(&berthd, &original, &["sh", "-c", "echo changed > /data/new.txt && rm /data/base.txt"]).await;
        assert_eq!(code, 0);
        let status = berthd
            .runtime_client()
            .await
            .container_status(cri::ContainerStatusRequest { container_id: original.clone(), verbose: false })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();

        // berthd holds the database; the builder's functions run while it is down
        // (the pod's shim and the container keep running).
        berthd.terminate().await;
        let (assembled, committed) = {
            let (root, original, image_id) = (berthd.root().to_path_buf(), original.clone(), status.image_ref.clone());
            blocking(move || {
                let images = open_images(&root, None);
                let assembled = hello_image(&images, "docker.io/library/busybox:latest", "berth.test/hello:1");
                let options = CommitOptions {
                    changes: vec![
                        Change::Env { name: "COMMITTED".into(), value: "yes".into() },
                        Change::Label { key: "origin".into(), value: "commit".into() },
                    ],
                    message: Some("a running container".into()),
                    names: vec!["berth.test/committed:1".into()],
                    ..CommitOptions::default()
                };
                let committed = commit_container(&images, &original, &image_id, options).unwrap();
                (assembled, committed)
            })
            .await
        };
        berthd.restart().await;

        let listed = berthd.list_images(None).await;
        for (id, tag) in
            [(&assembled, "docker.io/berth.test/hello:1"), (&committed, "docker.io/berth.test/committed:1")]
        {
            let image = listed.iter().find(|i| i.id == *id).unwrap_or_else(|| panic!("{id} not listed: {listed:?}"));
            assert!(image.repo_tags.iter().any(|t| t.ends_with(tag.trim_start_matches("docker.io/"))), "{image:?}");
            let by_prefix = berthd.image_status(&id["sha256:".len()..][..12]).await;
            assert_eq!(by_prefix.map(|i| i.id), Some(id.clone()), "ImageStatus by id prefix");
        }

        let hello = run_sleeper(&berthd, &pod, "hello", "berth.test/hello:1").await;
        assert_eq!(exec(&berthd, &hello, &["cat", "/hello.txt"]).await, (0, "hello from berth\n".into()));
        assert_eq!(exec(&berthd, &hello, &["sh", "-c", "echo $GREETING"]).await, (0, "hello\n".into()));

        let copy = run_sleeper(&berthd, &pod, "copy", "berth.test/committed:1").await;
        assert_eq!(exec(&berthd, &copy, &["cat", "/data/new.txt"]).await, (0, "changed\n".into()));
        assert_eq!(exec(&berthd, &copy, &["test", "-e", "/data/base.txt"]).await.0, 1, "the deletion is committed");
        assert_eq!(exec(&berthd, &copy, &["sh", "-c", "echo $COMMITTED"]).await, (0, "yes\n".into()));
        let verbose = berthd.image_status_response("berth.test/committed:1", true).await;
        let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
        let spec = &info["imageSpec"];
        assert_eq!(spec["config"]["Labels"]["origin"], "commit", "{spec}");
        let last = spec["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["comment"], "a running container", "{spec}");

        remove_pod(&berthd, &pod).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
}
