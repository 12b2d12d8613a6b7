//! berthd stopping, cleanly or not: SIGTERM mid-life, SIGKILL mid-pull. What a node
//! relies on afterwards is that completed images are intact, half-pulled ones are
//! neither listed nor left on disk, and pulling again works.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::fs::{bytes_below, has_blob, regular_files, snapshot_dirs, verified_blobs};
use common::*;

#[test]
fn sigterm_exits_cleanly_and_images_survive_a_restart() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let pushed = registry.push("durable/app", "v1", &TestImage::small("durable").user("1000")).await;
        let mut berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
        let reference = format!("{}/durable/app:v1", registry.host());
        berthd.pull(&reference).await.expect("pull");
        let before = berthd.image_status(&reference).await.expect("status before restart");

        berthd.terminate().await;
        berthd.restart().await;

        let after = berthd.image_status(&reference).await.expect("the image survives a clean restart");
        assert_eq!(after, before, "ImageStatus changed across a restart");
        let listed: Vec<String> = berthd.list_images(None).await.into_iter().map(|i| i.id).collect();
        assert_eq!(listed, vec![pushed.image_id.clone()]);
        for digest in &pushed.layer_digests {
            assert!(has_blob(berthd.root(), digest));
        }
        assert_eq!(berthd.pull(&reference).await.expect("pull again after restart"), pushed.image_id);
        berthd.terminate().await;
    });
}

/// Regular files under the root that no completed image accounts for: anything but
/// the metadata database, the completed image's blobs, and files inside its snapshots.
fn stray_files(root: &Path, kept_digests: &BTreeSet<String>) -> Vec<String> {
    let blob_dir = common::fs::blob_dir(root);
    let snapshots: Vec<_> = snapshot_dirs(root);
    regular_files(root)
        .into_iter()
        .filter(|path| {
            let is_database = path.parent() == Some(root)
                && path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("meta.redb"));
            let is_kept_blob = path.parent() == Some(blob_dir.as_path())
                && path.file_name().is_some_and(|n| kept_digests.contains(&format!("sha256:{}", n.to_string_lossy())));
            let is_in_snapshot = snapshots.iter().any(|s| path.starts_with(s));
            !(is_database || is_kept_blob || is_in_snapshot)
        })
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn sigkill_mid_pull_leaves_no_trace_and_the_pull_can_be_redone() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let completed_image = TestImage::small("completed-before-the-crash");
        let completed = registry.push("done/app", "v1", &completed_image).await;
        let big = TestImage::new(vec![
            TestLayer::random("one.bin", 16 << 20, 31, Compression::None),
            TestLayer::random("two.bin", 16 << 20, 32, Compression::None),
            TestLayer::random("three.bin", 16 << 20, 33, Compression::None),
        ]);
        let interrupted = registry.push("big/app", "v1", &big).await;
        let slow = TestProxy::throttled(&registry.host(), 16 << 20).await;
        // One download at a time: the kill then always lands with layers still to come.
        let config = BerthdConfig::default()
            .insecure(&registry.host())
            .insecure(&slow.host())
            .max_concurrent_downloads(1);
        let mut berthd = Berthd::start(config).await;
        let completed_ref = format!("{}/done/app:v1", registry.host());
        berthd.pull(&completed_ref).await.expect("pull the image completed before the crash");
        let completed_status = berthd.image_status(&completed_ref).await.expect("completed image status");

        let root = berthd.root().to_path_buf();
        let stored = |root: &Path| bytes_below(root).saturating_sub(bytes_below_named(root, "meta.redb"));
        let baseline = stored(&root);
        let big_ref = format!("{}/big/app:v1", slow.host());
        let pull = {
            let mut client = berthd.image_client().await;
            let request = k8s_cri::v1::PullImageRequest {
                image: Some(common::berthd::spec(&big_ref)),
                auth: None,
                sandbox_config: None,
            };
            tokio::spawn(async move { client.pull_image(request).await })
        };
        let growing = wait_until(Duration::from_secs(60), || stored(&root) > baseline + (2 << 20)).await;
        assert!(growing, "berthd's root never grew while pulling {big_ref}:\n{}", berthd.log());
        berthd.kill9();
        let cut = pull.await.expect("pull task");
        assert!(cut.is_err(), "the kill must land mid-pull, yet the pull finished: {cut:?}");

        berthd.restart().await;
        assert!(berthd.image_status(&big_ref).await.is_none(), "a half-pulled image must not exist after restart");
        let listed: Vec<String> = berthd.list_images(None).await.into_iter().map(|i| i.id).collect();
        assert_eq!(listed, vec![completed.image_id.clone()], "only the completed image may be listed");
        assert_eq!(
            berthd.image_status(&completed_ref).await.as_ref(),
            Some(&completed_status),
            "the completed image changed across the crash"
        );

        let kept: BTreeSet<String> = completed
            .layer_digests
            .iter()
            .cloned()
            .chain([completed.image_id.clone(), completed.repo_digest.clone()])
            .collect();
        let blobs = verified_blobs(&root);
        for digest in &completed.layer_digests {
            assert!(blobs.contains(digest), "the completed image lost layer {digest}");
        }
        let strays: Vec<_> = blobs.difference(&kept).collect();
        assert!(strays.is_empty(), "blobs of the interrupted pull survived the restart: {strays:?}");
        assert_eq!(
            snapshot_dirs(&root).len(),
            completed.layer_digests.len(),
            "only the completed image's snapshots may remain: {:?}",
            snapshot_dirs(&root)
        );
        let stray_files = stray_files(&root, &kept);
        assert!(stray_files.is_empty(), "files of the interrupted pull survived the restart: {stray_files:#?}");

        let image_ref = berthd.pull(&big_ref).await.unwrap_or_else(|s| panic!("pull again after the crash: {s:?}"));
        assert_eq!(image_ref, interrupted.image_id);
        for digest in &interrupted.layer_digests {
            assert!(has_blob(&root, digest));
        }
    });
}

fn bytes_below_named(root: &Path, prefix: &str) -> u64 {
    regular_files(root)
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}
