//! berthd's CRI ImageService end to end: a real registry on 127.0.0.1, images built
//! from real tar streams, and berthd reached only through CRI gRPC on its socket.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use common::fs::{find_named, has_blob, snapshot_dirs, verified_blobs, walk, xattr};
use common::*;
use k8s_cri::v1::{AuthConfig, StatusRequest, VersionRequest};
use tonic::Code;

const USER: &str = "alice";
const PASSWORD: &str = "correct horse";

fn fail_unless_empty(failures: Vec<String>, berthd: &Berthd) {
    assert!(failures.is_empty(), "{}\n\nberthd log:\n{}", failures.join("\n"), berthd.log());
}

#[test]
fn version_and_status_identify_a_ready_runtime() {
    common::run(|| async {
        let berthd = Berthd::start(BerthdConfig::default()).await;
        let mut runtime = berthd.runtime_client().await;
        let version = runtime.version(VersionRequest { version: "v1".into() }).await.expect("Version").into_inner();
        assert_eq!(version.runtime_name, "berth");
        assert_eq!(version.runtime_api_version, "v1");
        assert!(!version.runtime_version.is_empty(), "Version must report berthd's own version");

        let status = runtime.status(StatusRequest { verbose: false }).await.expect("Status").into_inner();
        let conditions = status.status.expect("Status carries a RuntimeStatus").conditions;
        // kubelet requires both conditions; until berthd runs containers RuntimeReady
        // may be false, but then it has to say why.
        for required in ["RuntimeReady", "NetworkReady"] {
            let condition = conditions
                .iter()
                .find(|c| c.r#type == required)
                .unwrap_or_else(|| panic!("Status has no {required} condition: {conditions:?}"));
            if !condition.status {
                assert!(
                    !condition.reason.is_empty() && !condition.message.is_empty(),
                    "a false {required} must carry a reason and a message: {condition:?}"
                );
            }
        }
    });
}

#[test]
fn docker_hub_reference_forms_resolve_through_the_mirror() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let pushed = registry.push("library/busybox", "latest", &TestImage::small("busybox").user("1000")).await;
        let berthd = Berthd::start(BerthdConfig::for_registry(&registry)).await;
        let digest = &pushed.repo_digest;

        let mut failures = Vec::new();
        for reference in [
            "busybox".to_owned(),
            "busybox:latest".to_owned(),
            "docker.io/library/busybox".to_owned(),
            format!("library/busybox@{digest}"),
            format!("busybox:latest@{digest}"),
        ] {
            match berthd.pull(&reference).await {
                Ok(image_ref) if image_ref == pushed.image_id => {}
                Ok(image_ref) => failures.push(format!("pull {reference}: image_ref {image_ref}, want {}", pushed.image_id)),
                Err(status) => failures.push(format!("pull {reference}: {status:?}")),
            }
        }
        fail_unless_empty(failures, &berthd);

        let canonical_tag = "docker.io/library/busybox:latest".to_owned();
        let canonical_digest = format!("docker.io/library/busybox@{digest}");
        let mut failures = Vec::new();
        for reference in ["busybox", "busybox:latest", pushed.image_id.as_str(), canonical_digest.as_str(), &canonical_tag] {
            let Some(image) = berthd.image_status(reference).await else {
                failures.push(format!("ImageStatus {reference}: not found"));
                continue;
            };
            if image.id != pushed.image_id {
                failures.push(format!("ImageStatus {reference}: id {}, want {}", image.id, pushed.image_id));
            }
            if !image.repo_tags.contains(&canonical_tag) {
                failures.push(format!("ImageStatus {reference}: repo_tags {:?} lack {canonical_tag}", image.repo_tags));
            }
            if !image.repo_digests.contains(&canonical_digest) {
                failures.push(format!("ImageStatus {reference}: repo_digests {:?} lack {canonical_digest}", image.repo_digests));
            }
            if image.size == 0 {
                failures.push(format!("ImageStatus {reference}: size 0"));
            }
            if image.uid.as_ref().map(|u| u.value) != Some(1000) || !image.username.is_empty() {
                failures.push(format!(
                    "ImageStatus {reference}: USER 1000 gave uid {:?} username {:?}",
                    image.uid, image.username
                ));
            }
        }
        fail_unless_empty(failures, &berthd);

        let listed = berthd.list_images(None).await;
        assert_eq!(listed.len(), 1, "five pulls of one image must list one image: {listed:?}");
    });
}

#[test]
fn a_direct_insecure_registry_reference_keeps_its_host() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let pushed = registry.push("foo/bar", "v1", &TestImage::small("foobar").user("nobody")).await;
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let reference = format!("{}/foo/bar:v1", registry.host());
        let image_ref = berthd.pull(&reference).await.unwrap_or_else(|s| panic!("pull {reference}: {s:?}\n{}", berthd.log()));
        assert_eq!(image_ref, pushed.image_id);

        let image = berthd.image_status(&reference).await.expect("ImageStatus by the pulled reference");
        assert_eq!(image.repo_tags, vec![reference.clone()]);
        assert_eq!(image.repo_digests, vec![format!("{}/foo/bar@{}", registry.host(), pushed.repo_digest)]);
        assert_eq!(image.uid, None, "a non-numeric USER has no uid");
        assert_eq!(image.username, "nobody");
        assert!(image.size > 0);
        assert!(!image.pinned, "only the sandbox image is pinned");
    });
}

#[test]
fn verbose_image_status_carries_the_image_config() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        registry.push("verbose/app", "v1", &TestImage::small("verbose-marker-5150").cmd(&["/bin/true"])).await;
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let reference = format!("{}/verbose/app:v1", registry.host());
        berthd.pull(&reference).await.expect("pull");

        let quiet = berthd.image_status_response(&reference, false).await;
        assert!(quiet.info.is_empty(), "info must be empty unless verbose: {:?}", quiet.info);
        let verbose = berthd.image_status_response(&reference, true).await;
        assert!(verbose.image.is_some());
        let carries_config = verbose.info.values().any(|value| {
            serde_json::from_str::<serde_json::Value>(value).is_ok()
                && value.contains("BERTH_TEST_MARKER=verbose-marker-5150")
                && value.contains("/bin/true")
        });
        assert!(carries_config, "verbose info has no JSON value holding the image config: {:?}", verbose.info);
    });
}

#[test]
fn list_images_with_and_without_a_filter() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let first = registry.push("list/one", "v1", &TestImage::small("one")).await;
        let second = registry.push("list/two", "v1", &TestImage::small("two")).await;
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let one = format!("{}/list/one:v1", registry.host());
        let two = format!("{}/list/two:v1", registry.host());
        berthd.pull(&one).await.expect("pull one");
        berthd.pull(&two).await.expect("pull two");

        let all: BTreeSet<String> = berthd.list_images(None).await.into_iter().map(|i| i.id).collect();
        assert_eq!(all, BTreeSet::from([first.image_id.clone(), second.image_id.clone()]));

        let by_tag = berthd.list_images(Some(&one)).await;
        assert_eq!(by_tag.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec![first.image_id.as_str()]);
        let by_id = berthd.list_images(Some(&second.image_id)).await;
        assert_eq!(by_id.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec![second.image_id.as_str()]);
        let unknown = berthd.list_images(Some(&format!("{}/list/three:v1", registry.host()))).await;
        assert!(unknown.is_empty(), "a filter naming no image lists nothing: {unknown:?}");
    });
}

#[test]
fn malformed_references_are_invalid_arguments_naming_the_reference() {
    common::run(|| async {
        let berthd = Berthd::start(BerthdConfig::default()).await;
        let mut failures = Vec::new();
        // `UPPER/case` would be a valid reference (an upper-case first component is a
        // registry host, as in Docker's grammar); upper case in the repository path is not.
        for reference in ["UPPER", "library/UPPERcase", "a::b", "x@sha256:short", "busybox:bad tag"] {
            match berthd.pull(reference).await {
                Err(status) if status.code() == Code::InvalidArgument && status.message().contains(reference) => {}
                other => failures.push(format!("pull {reference:?}: want InvalidArgument naming it, got {other:?}")),
            }
        }
        fail_unless_empty(failures, &berthd);
    });
}

#[test]
fn unknown_images_are_not_found() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        registry.push("known/app", "v1", &TestImage::small("known")).await;
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let mut failures = Vec::new();
        for reference in [format!("{}/unknown/app:v1", registry.host()), format!("{}/known/app:v2", registry.host())] {
            match berthd.pull(&reference).await {
                Err(status) if status.code() == Code::NotFound => {}
                other => failures.push(format!("pull {reference}: want NotFound, got {other:?}")),
            }
            if let Some(image) = berthd.image_status(&reference).await {
                failures.push(format!("ImageStatus {reference}: want no image, got {image:?}"));
            }
        }
        fail_unless_empty(failures, &berthd);
        assert!(berthd.list_images(None).await.is_empty());
    });
}

#[test]
fn basic_auth_credentials_from_the_pull_request() {
    common::run(|| async {
        let registry = TestRegistry::start_basic(USER, PASSWORD).await;
        let pushed = registry.push("private/app", "v1", &TestImage::small("basic")).await;
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let reference = format!("{}/private/app:v1", registry.host());

        let anonymous = berthd.pull(&reference).await.expect_err("pull without credentials must fail");
        assert!(
            anonymous.message().to_lowercase().contains("unauthorized"),
            "a refused pull must say unauthorized: {anonymous:?}"
        );
        let wrong = AuthConfig { username: USER.into(), password: "wrong".into(), ..Default::default() };
        berthd.pull_with_auth(&reference, Some(wrong)).await.expect_err("pull with a wrong password must fail");
        assert!(berthd.image_status(&reference).await.is_none());

        let right = AuthConfig { username: USER.into(), password: PASSWORD.into(), ..Default::default() };
        let image_ref = berthd
            .pull_with_auth(&reference, Some(right))
            .await
            .unwrap_or_else(|s| panic!("pull with username/password: {s:?}\n{}", berthd.log()));
        assert_eq!(image_ref, pushed.image_id);

        berthd.remove_image(&reference).await.expect("remove");
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        let as_auth_field = AuthConfig { auth: encoded, ..Default::default() };
        berthd
            .pull_with_auth(&reference, Some(as_auth_field))
            .await
            .unwrap_or_else(|s| panic!("pull with AuthConfig.auth (base64 user:password): {s:?}\n{}", berthd.log()));
    });
}

#[test]
fn credentials_from_the_config_when_the_request_has_none() {
    common::run(|| async {
        let registry = TestRegistry::start_basic(USER, PASSWORD).await;
        let pushed = registry.push("private/app", "v1", &TestImage::small("configured")).await;
        let berthd =
            Berthd::start(BerthdConfig::default().insecure(&registry.host()).auth(&registry.host(), USER, PASSWORD)).await;
        let reference = format!("{}/private/app:v1", registry.host());
        let image = berthd
            .pull(&reference)
            .await
            .unwrap_or_else(|s| panic!("pull with the config's credentials: {s:?}\n{}", berthd.log()));
        assert_eq!(image, pushed.image_id);

        berthd.remove_image(&reference).await.expect("remove");
        let wrong = AuthConfig { username: USER.into(), password: "wrong".into(), ..Default::default() };
        berthd.pull_with_auth(&reference, Some(wrong)).await.expect_err("the request's own credentials come first");
        assert!(!berthd.log().contains(PASSWORD), "the configured password must not reach the log");
    });
}

#[test]
fn bearer_token_auth_through_the_token_server() {
    common::run(|| async {
        let registry = TestRegistry::start_token(USER, PASSWORD).await;
        let pushed = registry.push("private/app", "v1", &TestImage::small("bearer")).await;
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let reference = format!("{}/private/app:v1", registry.host());

        let anonymous = berthd.pull(&reference).await.expect_err("pull without credentials must fail");
        assert!(
            anonymous.message().to_lowercase().contains("unauthorized"),
            "a refused pull must say unauthorized: {anonymous:?}"
        );
        let tokens_before = registry.authenticated_tokens_issued();
        let right = AuthConfig { username: USER.into(), password: PASSWORD.into(), ..Default::default() };
        let image_ref = berthd
            .pull_with_auth(&reference, Some(right))
            .await
            .unwrap_or_else(|s| panic!("pull with credentials via the token server: {s:?}\n{}", berthd.log()));
        assert_eq!(image_ref, pushed.image_id);
        assert!(
            registry.authenticated_tokens_issued() > tokens_before,
            "berthd must have fetched a token with the credentials"
        );
    });
}

#[test]
fn an_index_resolves_to_this_machines_platform() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let native = TestImage::small("native-platform").user("1000");
        let decoy = TestImage::new(vec![TestLayer::new(&[Entry::file("decoy", "other platform")], Compression::Gzip)])
            .user("2000");
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let mut failures = Vec::new();
        for (tag, format) in [("oci", ManifestFormat::Oci), ("docker", ManifestFormat::DockerSchema2)] {
            // The decoy comes first: taking the first entry is wrong.
            let index = registry
                .push_index(
                    "multi/app",
                    tag,
                    format,
                    &[(Platform::foreign(), decoy.clone().format(format)), (Platform::host(), native.clone().format(format))],
                )
                .await;
            let reference = format!("{}/multi/app:{tag}", registry.host());
            let wanted = index.for_platform(&Platform::host());
            let unwanted = index.for_platform(&Platform::foreign());
            match berthd.pull(&reference).await {
                Ok(image_ref) if image_ref == wanted.image_id => {}
                other => failures.push(format!("pull {reference}: want {}, got {other:?}", wanted.image_id)),
            }
            match berthd.image_status(&reference).await {
                Some(image) => {
                    if image.uid.as_ref().map(|u| u.value) != Some(1000) {
                        failures.push(format!("{reference}: uid {:?}, the native image has USER 1000", image.uid));
                    }
                    let index_digest = format!("{}/multi/app@{}", registry.host(), index.index_digest);
                    if !image.repo_digests.contains(&index_digest) {
                        failures.push(format!("{reference}: repo_digests {:?} lack {index_digest}", image.repo_digests));
                    }
                }
                None => failures.push(format!("ImageStatus {reference}: not found")),
            }
            if has_blob(berthd.root(), &unwanted.layer_digests[0]) {
                failures.push(format!("{reference}: the other platform's layer was downloaded"));
            }
        }
        fail_unless_empty(failures, &berthd);
    });
}

/// An index whose entry for this platform is itself an index (as some
/// multi-platform tools write them) is followed, a bounded number of levels deep.
#[test]
fn nested_indexes_are_followed_to_a_bounded_depth() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let native = TestImage::small("nested-index");
        let inner = registry
            .push_index("nested/app", "inner", ManifestFormat::Oci, &[(Platform::host(), native)])
            .await;
        let host = Platform::host();
        let wrap = |digest: &str, size: usize| {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": ManifestFormat::Oci.index_media_type(),
                "manifests": [{
                    "mediaType": ManifestFormat::Oci.index_media_type(),
                    "digest": digest,
                    "size": size,
                    "platform": { "architecture": host.architecture, "os": host.os },
                }],
            }))
            .expect("serialise index")
        };
        let inner_size = manifest_len(&registry, "nested/app", &inner.index_digest).await;
        // Levels of indexes above the inner one: 1 (two in all) and 4 (five in all).
        let (mut digest, mut size) = (inner.index_digest.clone(), inner_size);
        let mut tags = Vec::new();
        for level in 1..=4 {
            let outer = wrap(&digest, size);
            let tag = format!("level{level}");
            digest = registry.put_manifest("nested/app", &tag, ManifestFormat::Oci.index_media_type(), &outer).await;
            size = outer.len();
            tags.push(tag);
        }
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let wanted = &inner.for_platform(&Platform::host()).image_id;
        let two_deep = format!("{}/nested/app:level1", registry.host());
        let image_ref = berthd.pull(&two_deep).await.unwrap_or_else(|s| panic!("pull {two_deep}: {s:?}"));
        assert_eq!(&image_ref, wanted);
        let five_deep = format!("{}/nested/app:level4", registry.host());
        let refused = berthd.pull(&five_deep).await.expect_err("indexes nested five deep must be refused");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("nests indexes"), "the error must say the index is nested: {refused:?}");
    });
}

/// The size of the manifest `digest` as the registry serves it.
async fn manifest_len(registry: &TestRegistry, repo: &str, digest: &str) -> usize {
    let url = format!("{}/v2/{repo}/manifests/{digest}", registry.url());
    let response = reqwest::Client::new()
        .get(url)
        .header("accept", ManifestFormat::Oci.index_media_type())
        .send()
        .await
        .expect("GET manifest");
    response.bytes().await.expect("manifest body").len()
}

/// Every layer codec and both manifest formats, each checked by the unpacked file's
/// content (found by its unique name under `<root>/snapshots`).
#[test]
fn layer_codecs_and_manifest_formats() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let layer = |name: &str, compression| {
            TestLayer::new(&[Entry::dir("data"), Entry::file(&format!("data/{name}"), format!("content of {name}"))], compression)
        };
        let cases = [
            ("oci-gzip", TestImage::new(vec![layer("codec-gzip-7c1", Compression::Gzip)]), vec!["codec-gzip-7c1"]),
            ("oci-zstd", TestImage::new(vec![layer("codec-zstd-7c1", Compression::Zstd)]), vec!["codec-zstd-7c1"]),
            ("oci-plain", TestImage::new(vec![layer("codec-none-7c1", Compression::None)]), vec!["codec-none-7c1"]),
            (
                "oci-mixed",
                TestImage::new(vec![
                    layer("mixed-none-7c1", Compression::None),
                    layer("mixed-zstd-7c1", Compression::Zstd),
                    layer("mixed-gzip-7c1", Compression::Gzip),
                ]),
                vec!["mixed-none-7c1", "mixed-zstd-7c1", "mixed-gzip-7c1"],
            ),
            (
                "docker-gzip",
                TestImage::new(vec![layer("docker-gzip-7c1", Compression::Gzip)]).format(ManifestFormat::DockerSchema2),
                vec!["docker-gzip-7c1"],
            ),
        ];
        let mut failures = Vec::new();
        for (tag, image, files) in cases {
            let pushed = registry.push("codecs/app", tag, &image).await;
            let reference = format!("{}/codecs/app:{tag}", registry.host());
            match berthd.pull(&reference).await {
                Ok(image_ref) if image_ref == pushed.image_id => {}
                other => {
                    failures.push(format!("pull {reference}: want {}, got {other:?}", pushed.image_id));
                    continue;
                }
            }
            for name in files {
                let hits = find_named(&[&berthd.root().join("snapshots")], &[], name);
                let contents: Vec<_> = hits.iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect();
                if contents != vec![format!("content of {name}")] {
                    failures.push(format!("{reference}: unpacked {name} found as {hits:?} with {contents:?}"));
                }
            }
        }
        fail_unless_empty(failures, &berthd);
    });
}

#[test]
fn symlinks_and_hardlinks_unpack_faithfully() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let layer = TestLayer::new(
            &[
                Entry::dir("bin"),
                Entry::file("bin/multicall-3f9", "#!multicall"),
                Entry::hardlink("bin/sh-3f9", "bin/multicall-3f9"),
                Entry::symlink("bin/ls-3f9", "multicall-3f9"),
                Entry::symlink("absolute-3f9", "/bin/multicall-3f9"),
            ],
            Compression::Gzip,
        );
        registry.push("links/app", "v1", &TestImage::new(vec![layer])).await;
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        berthd.pull(&format!("{}/links/app:v1", registry.host())).await.expect("pull");

        let snapshots = [berthd.root().join("snapshots")];
        let one = |name: &str| {
            let hits = find_named(&[&snapshots[0]], &[], name);
            assert_eq!(hits.len(), 1, "want one {name} in the snapshots, found {hits:?}");
            hits.into_iter().next().expect("one hit")
        };
        let target = std::fs::symlink_metadata(one("multicall-3f9")).expect("stat link target");
        let hardlink = std::fs::symlink_metadata(one("sh-3f9")).expect("stat hard link");
        assert_eq!((hardlink.dev(), hardlink.ino()), (target.dev(), target.ino()), "a hard link must share its target's inode");
        assert_eq!(target.nlink(), 2);
        assert_eq!(std::fs::read_link(one("ls-3f9")).expect("relative symlink"), Path::new("multicall-3f9"));
        assert_eq!(std::fs::read_link(one("absolute-3f9")).expect("absolute symlink"), Path::new("/bin/multicall-3f9"));
    });
}

#[test]
fn a_registry_that_is_down_fails_the_pull_until_it_is_back() {
    common::run(|| async {
        let mut registry = TestRegistry::start().await;
        let pushed = registry.push("flaky/app", "v1", &TestImage::small("flaky")).await;
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let reference = format!("{}/flaky/app:v1", registry.host());

        registry.kill();
        let down = tokio::time::timeout(Duration::from_secs(60), berthd.pull(&reference))
            .await
            .expect("a pull from a registry that is down must end, not hang")
            .expect_err("a pull from a registry that is down must fail");
        assert!(down.message().contains(&registry.host()), "the error must name the registry: {down:?}");
        assert!(berthd.list_images(None).await.is_empty());

        registry.restart().await;
        let image_ref = berthd.pull(&reference).await.unwrap_or_else(|s| panic!("pull once the registry is back: {s:?}"));
        assert_eq!(image_ref, pushed.image_id);
    });
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let lower = TestLayer::new(
            &[
                Entry::file("gone", "deleted by the upper layer"),
                Entry::dir("dir"),
                Entry::file("dir/old", "hidden by the opaque marker"),
            ],
            Compression::Gzip,
        );
        let upper = TestLayer::new(
            &[Entry::whiteout("gone"), Entry::dir("dir"), Entry::opaque("dir"), Entry::file("dir/new", "fresh")],
            Compression::Gzip,
        );
        registry.push("whiteouts/app", "v1", &TestImage::new(vec![lower, upper])).await;
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        berthd.pull(&format!("{}/whiteouts/app:v1", registry.host())).await.expect("pull");

        let snapshots = berthd.root().join("snapshots");
        let everything = walk(&snapshots);
        let whiteout_devices: Vec<_> = everything
            .iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "gone"))
            .filter(|p| {
                std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
            })
            .collect();
        assert_eq!(whiteout_devices.len(), 1, "want one 0/0 char device named gone; snapshots hold {everything:#?}");
        let opaque_dirs: Vec<_> = everything
            .iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "dir"))
            .filter(|p| xattr(p, "trusted.overlay.opaque").as_deref() == Some(b"y".as_slice()))
            .collect();
        assert_eq!(opaque_dirs.len(), 1, "want one dir with trusted.overlay.opaque=y; snapshots hold {everything:#?}");
        let markers: Vec<_> =
            everything.iter().filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".wh."))).collect();
        assert!(markers.is_empty(), "whiteout marker files must not be unpacked as files: {markers:?}");
    });
}

#[test]
fn a_corrupted_layer_is_rejected_and_leaves_nothing() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let payload = image::incompressible_bytes(256 * 1024, 7);
        let image = TestImage::new(vec![
            TestLayer::new(&[Entry::file("payload.bin", payload)], Compression::None),
        ]);
        let pushed = registry.push("corrupt/app", "v1", &image).await;
        let layer = &pushed.layer_digests[0];
        let stored = registry.blob_path(layer);
        let original = std::fs::read(&stored).expect("read registry blob");
        let mut corrupted = original.clone();
        // Inside the file's data, past its tar header: the stream stays well formed
        // and only the digest can tell.
        corrupted[4096] ^= 0xff;
        std::fs::write(&stored, &corrupted).expect("corrupt registry blob");

        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let reference = format!("{}/corrupt/app:v1", registry.host());
        let refused = berthd.pull(&reference).await.expect_err("a layer that does not match its digest must fail the pull");
        assert!(
            refused.message().contains(&format!("digest mismatch: expected {layer}, got ")),
            "the error must say the layer's digest did not match: {refused:?}"
        );
        assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
        assert!(!has_blob(berthd.root(), layer), "the corrupted layer must not be in the content store");
        verified_blobs(berthd.root());
        assert!(snapshot_dirs(berthd.root()).is_empty(), "no snapshot may come of a failed pull");
        assert!(berthd.list_images(None).await.is_empty(), "a failed pull must not list an image");
        assert!(berthd.image_status(&reference).await.is_none());

        std::fs::write(&stored, &original).expect("restore registry blob");
        let image_ref = berthd.pull(&reference).await.unwrap_or_else(|s| panic!("pull after restore: {s:?}"));
        assert_eq!(image_ref, pushed.image_id);
        assert!(has_blob(berthd.root(), layer));
    });
}

/// A compressed layer altered in the registry no longer decompresses: the cause to
/// report is still its digest, not a malformed layer.
#[test]
fn a_corrupted_compressed_layer_is_a_digest_mismatch() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let image = TestImage::new(vec![TestLayer::random("payload.bin", 256 << 10, 8, Compression::Gzip)]);
        let pushed = registry.push("corrupt/gzip", "v1", &image).await;
        let layer = &pushed.layer_digests[0];
        let stored = registry.blob_path(layer);
        let mut corrupted = std::fs::read(&stored).expect("read registry blob");
        let middle = corrupted.len() / 2;
        corrupted[middle] ^= 0xff;
        std::fs::write(&stored, &corrupted).expect("corrupt registry blob");

        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let refused = berthd
            .pull(&format!("{}/corrupt/gzip:v1", registry.host()))
            .await
            .expect_err("a corrupted layer must fail the pull");
        assert!(
            refused.message().contains(&format!("digest mismatch: expected {layer}, got ")),
            "the error must say the layer's digest did not match: {refused:?}"
        );
        assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
        assert!(!has_blob(berthd.root(), layer));
        assert!(snapshot_dirs(berthd.root()).is_empty(), "no snapshot may come of a failed pull");
    });
}

#[test]
fn a_registry_dying_mid_layer_fails_the_pull_cleanly() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let image = TestImage::new(vec![
            TestLayer::new(&[Entry::file("small", "small layer")], Compression::Gzip),
            TestLayer::random("big.bin", 24 << 20, 11, Compression::None),
        ]);
        let pushed = registry.push("library/dying", "v1", &image).await;
        let dying = TestProxy::dying(&registry.host(), 256 * 1024).await;
        let config = BerthdConfig::default().mirror("docker.io", &dying.url()).insecure(&registry.host());
        let berthd = Berthd::start(config).await;

        let failed = tokio::time::timeout(Duration::from_secs(120), berthd.pull("docker.io/library/dying:v1"))
            .await
            .expect("a pull through a dying registry must end, not hang")
            .expect_err("a pull whose layer download is cut must fail");
        assert!(
            failed.message().contains(&pushed.layer_digests[1]),
            "the error must name the layer whose download broke: {failed:?}"
        );
        assert!(dying.connections() > 0, "the pull must have gone through the dying mirror");
        assert!(berthd.list_images(None).await.is_empty(), "a failed pull must not list an image");
        assert!(!has_blob(berthd.root(), &pushed.layer_digests[1]), "a cut layer must not be in the content store");
        verified_blobs(berthd.root());

        let direct = format!("{}/library/dying:v1", registry.host());
        let image_ref = berthd.pull(&direct).await.unwrap_or_else(|s| panic!("pull from the live registry: {s:?}"));
        assert_eq!(image_ref, pushed.image_id);
        for layer in &pushed.layer_digests {
            assert!(has_blob(berthd.root(), layer));
        }
    });
}

#[test]
fn images_sharing_a_base_layer_share_its_blob_and_snapshot() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let base = TestLayer::new(&[Entry::dir("base"), Entry::file("base/os-release", "shared base")], Compression::Gzip);
        let only_a = TestLayer::new(&[Entry::file("a", "image a")], Compression::Gzip);
        let only_b = TestLayer::new(&[Entry::file("b", "image b")], Compression::Zstd);
        let a = registry.push("shared/a", "v1", &TestImage::new(vec![base.clone(), only_a])).await;
        let b = registry.push("shared/b", "v1", &TestImage::new(vec![base.clone(), only_b])).await;
        assert_eq!(a.layer_digests[0], b.layer_digests[0]);
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let ref_a = format!("{}/shared/a:v1", registry.host());
        let ref_b = format!("{}/shared/b:v1", registry.host());
        berthd.pull(&ref_a).await.expect("pull a");
        berthd.pull(&ref_b).await.expect("pull b");

        let root = berthd.root();
        assert_eq!(snapshot_dirs(root).len(), 3, "base, a and b unpack once each: {:?}", snapshot_dirs(root));
        for digest in a.layer_digests.iter().chain(&b.layer_digests) {
            assert!(has_blob(root, digest), "layer {digest} missing");
        }

        berthd.remove_image(&ref_a).await.expect("remove a");
        assert!(berthd.image_status(&ref_a).await.is_none());
        let still_b = berthd.image_status(&ref_b).await.expect("b survives the removal of a");
        assert_eq!(still_b.id, b.image_id);
        for digest in &b.layer_digests {
            assert!(has_blob(root, digest), "removing a took b's layer {digest}");
        }
        assert!(!has_blob(root, &a.layer_digests[1]), "a's own layer must go with a");
        assert_eq!(snapshot_dirs(root).len(), 2, "a's own snapshot must go with a: {:?}", snapshot_dirs(root));

        berthd.remove_image(&ref_b).await.expect("remove b");
        assert!(berthd.list_images(None).await.is_empty());
        let left = verified_blobs(root);
        assert!(left.is_empty(), "no image left, yet the content store holds {left:?}");
        assert!(snapshot_dirs(root).is_empty(), "no image left, yet snapshots remain: {:?}", snapshot_dirs(root));
    });
}

#[test]
fn remove_image_by_tag_id_and_digest() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let image = TestImage::small("removable");
        let pushed = registry.push("rm/app", "v1", &image).await;
        registry.push("rm/app", "v2", &image).await;
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let v1 = format!("{}/rm/app:v1", registry.host());
        let v2 = format!("{}/rm/app:v2", registry.host());
        let by_digest = format!("{}/rm/app@{}", registry.host(), pushed.repo_digest);

        berthd.pull(&v1).await.expect("pull v1");
        berthd.pull(&v2).await.expect("pull v2");
        let both = berthd.image_status(&v1).await.expect("status v1");
        assert_eq!(both.repo_tags.iter().cloned().collect::<BTreeSet<_>>(), BTreeSet::from([v1.clone(), v2.clone()]));

        berthd.remove_image(&v1).await.expect("remove by tag");
        assert!(berthd.image_status(&v1).await.is_none(), "the removed tag must be gone");
        let survivor = berthd.image_status(&v2).await.expect("the other tag of the image survives");
        assert_eq!(survivor.repo_tags, vec![v2.clone()]);
        assert!(has_blob(berthd.root(), &pushed.layer_digests[0]), "untagging must keep the image's layers");

        berthd.remove_image(&pushed.image_id).await.expect("remove by id");
        assert!(berthd.image_status(&v2).await.is_none());
        assert!(berthd.image_status(&pushed.image_id).await.is_none());
        assert!(berthd.list_images(None).await.is_empty());

        berthd.pull(&v1).await.expect("pull again");
        berthd.remove_image(&by_digest).await.expect("remove by repo digest");
        assert!(berthd.image_status(&pushed.image_id).await.is_none(), "removal by repo digest removes the image");
        assert!(berthd.list_images(None).await.is_empty());

        let missing = [v1.clone(), format!("sha256:{}", "0".repeat(64))];
        for reference in missing {
            berthd
                .remove_image(&reference)
                .await
                .unwrap_or_else(|s| panic!("removing the absent image {reference} must succeed: {s:?}"));
        }
    });
}

#[test]
fn concurrent_pulls_of_one_image_download_each_layer_once() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let image = TestImage::new(vec![
            TestLayer::random("one.bin", 24 << 20, 21, Compression::None),
            TestLayer::random("two.bin", 24 << 20, 22, Compression::None),
        ]);
        let pushed = registry.push("big/app", "v1", &image).await;
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let reference = format!("{}/big/app:v1", registry.host());

        let pulls = (0..4).map(|_| berthd.pull(&reference));
        let results = futures::future::join_all(pulls).await;
        for (index, result) in results.iter().enumerate() {
            match result {
                Ok(image_ref) => assert_eq!(image_ref, &pushed.image_id, "pull {index}"),
                Err(status) => panic!("concurrent pull {index}: {status:?}\n{}", berthd.log()),
            }
        }
        for digest in &pushed.layer_digests {
            assert_eq!(
                registry.blob_get_count("big/app", digest),
                1,
                "four concurrent pulls must fetch layer {digest} once"
            );
        }
        assert_eq!(berthd.list_images(None).await.len(), 1);
    });
}

#[test]
fn image_fs_info_follows_pulls_and_removals() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let mut entries = vec![Entry::dir("files")];
        for index in 0..50 {
            entries.push(Entry::file(&format!("files/{index}"), image::incompressible_bytes(16 * 1024, index)));
        }
        registry.push("fsinfo/app", "v1", &TestImage::new(vec![TestLayer::new(&entries, Compression::Gzip)])).await;
        let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let reference = format!("{}/fsinfo/app:v1", registry.host());

        let usage = |response: k8s_cri::v1::ImageFsInfoResponse| {
            let fs = response.image_filesystems.first().cloned().expect("ImageFsInfo lists the image filesystem");
            assert!(fs.timestamp > 0, "timestamp must be set");
            let mountpoint = fs.fs_id.clone().expect("fs_id").mountpoint;
            (fs.used_bytes.expect("used_bytes").value, fs.inodes_used.expect("inodes_used").value, mountpoint)
        };
        let (bytes_empty, inodes_empty, mountpoint) = usage(berthd.image_fs_info().await);
        let root = berthd.root();
        let canonical_root = root.canonicalize().expect("canonical root");
        assert!(
            std::path::Path::new(&mountpoint).starts_with(root) || std::path::Path::new(&mountpoint).starts_with(&canonical_root),
            "mountpoint {mountpoint} is not under the root {}",
            root.display()
        );

        berthd.pull(&reference).await.expect("pull");
        let (bytes_pulled, inodes_pulled, _) = usage(berthd.image_fs_info().await);
        assert!(bytes_pulled >= bytes_empty + 800 * 1024, "used bytes {bytes_empty} -> {bytes_pulled} after an 800 KiB image");
        assert!(inodes_pulled >= inodes_empty + 50, "inodes {inodes_empty} -> {inodes_pulled} after 50 files");

        berthd.remove_image(&reference).await.expect("remove");
        let (bytes_removed, inodes_removed, _) = usage(berthd.image_fs_info().await);
        assert!(bytes_removed < bytes_pulled, "used bytes must shrink after removal: {bytes_pulled} -> {bytes_removed}");
        assert!(inodes_removed < inodes_pulled, "inodes must shrink after removal: {inodes_pulled} -> {inodes_removed}");
    });
}

#[test]
fn the_sandbox_image_is_pinned() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let pause = registry.push("pause", "3.10", &TestImage::small("pause")).await;
        let other = registry.push("other/app", "v1", &TestImage::small("other")).await;
        let pause_ref = format!("{}/pause:3.10", registry.host());
        let config = BerthdConfig::default().insecure(&registry.host()).sandbox_image(&pause_ref);
        let berthd = Berthd::start(config).await;
        berthd.pull(&pause_ref).await.expect("pull the sandbox image");
        berthd.pull(&format!("{}/other/app:v1", registry.host())).await.expect("pull another image");

        let listed = berthd.list_images(None).await;
        let pinned: Vec<(&str, bool)> = listed.iter().map(|i| (i.id.as_str(), i.pinned)).collect();
        assert!(pinned.contains(&(pause.image_id.as_str(), true)), "the sandbox image must be pinned: {pinned:?}");
        assert!(pinned.contains(&(other.image_id.as_str(), false)), "other images are not pinned: {pinned:?}");
        assert!(berthd.image_status(&pause_ref).await.expect("status").pinned);
    });
}
