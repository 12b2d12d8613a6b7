//! berthd against registries that misbehave on purpose (see
//! `common::hostile`): bodies longer than their descriptors declare, downloads a
//! client cancels, registries that trickle or stall, and a disk that fills up.
//! What a user relies on: a pull ends, with an error naming the cause, and
//! leaves nothing behind; a stuck registry holds no other pull.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::fs::{bytes_below, snapshot_dirs, verified_blobs};
use common::hostile::{Behaviour, HostileRegistry, Part};
use common::*;
use tonic::Code;

const REPO: &str = "hostile/app";

fn ingest(root: &Path) -> Vec<std::path::PathBuf> {
    common::fs::walk(&root.join("content").join("ingest")).into_iter().filter(|p| p.is_file()).collect()
}

/// Pulls `reference`, which must fail within 30 s: the error and how long it took.
async fn failing_pull(berthd: &Berthd, reference: &str, what: &str) -> (tonic::Status, Duration) {
    let started = Instant::now();
    let failed = tokio::time::timeout(Duration::from_secs(30), berthd.pull(reference))
        .await
        .unwrap_or_else(|_| panic!("a pull of {what} must end:\n{}", berthd.log()))
        .expect_err(&format!("{what} must fail the pull"));
    (failed, started.elapsed())
}

/// Samples the bytes below `root` every few milliseconds until dropped; the peak is
/// what a pull wrote at most.
struct DiskWatch {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl DiskWatch {
    fn start(root: &Path) -> DiskWatch {
        let peak = Arc::new(AtomicU64::new(0));
        let (root, seen) = (root.to_path_buf(), peak.clone());
        let task = tokio::task::spawn_blocking(move || {
            while Arc::strong_count(&seen) > 1 {
                seen.fetch_max(bytes_below(&root), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        DiskWatch { peak, task }
    }

    async fn peak(self) -> u64 {
        let peak = self.peak.load(Ordering::SeqCst);
        drop(self.peak);
        let _ = self.task.await;
        peak
    }
}

#[test]
fn bodies_longer_than_declared_fail_at_the_declared_size_and_leave_nothing() {
    common::run(|| async {
        let image = TestImage::new(vec![TestLayer::random("payload.bin", 1 << 20, 3, Compression::None)]);
        let layer = image.layers[0].digest();
        let declared = image.layers[0].blob().len() as u64;
        let config = sha256_digest(&image.config_json());
        let hostile = HostileRegistry::start(REPO, "v1", &image, Part::Config, Behaviour::Endless).await;
        let berthd = Berthd::start(BerthdConfig::default().insecure(&hostile.host())).await;
        let reference = format!("{}/{REPO}:v1", hostile.host());

        // A config longer than declared (checked first: a pull that got further
        // keeps the config for the next one), and a manifest by tag beyond 4 MiB.
        let refused = berthd.pull(&reference).await.expect_err("a config longer than declared must fail the pull");
        assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
        assert!(refused.message().contains(&config) && refused.message().contains("more than"), "{refused:?}");
        hostile.set_behaviour(Part::Manifest, Behaviour::Endless);
        let refused = berthd.pull(&reference).await.expect_err("an endless manifest must fail the pull");
        assert!(refused.message().contains(&(4u64 << 20).to_string()), "the error must name the limit: {refused:?}");

        hostile.set_behaviour(Part::Layers, Behaviour::Endless);
        let before = bytes_below(berthd.root());

        let watch = DiskWatch::start(berthd.root());
        let (refused, elapsed) = failing_pull(&berthd, &reference, "an endless layer").await;
        let peak = watch.peak().await;
        eprintln!(
            "endless layer: failed after {elapsed:?}; peak bytes below root {} over {before} before, declared {declared}; \
             the registry sent {}",
            peak.saturating_sub(before),
            hostile.hostile_bytes_sent()
        );
        assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
        for wanted in [layer.as_str(), &declared.to_string(), "more than"] {
            assert!(refused.message().contains(wanted), "the error must name {wanted:?}: {refused:?}");
        }
        assert!(elapsed < Duration::from_secs(10), "an endless body must fail at once, took {elapsed:?}");
        assert!(
            peak.saturating_sub(before) < declared + (512 << 10),
            "berthd wrote {} bytes below its root for a {declared}-byte layer",
            peak.saturating_sub(before)
        );
        assert!(ingest(berthd.root()).is_empty(), "ingest keeps {:?}", ingest(berthd.root()));
        assert!(snapshot_dirs(berthd.root()).is_empty());
        assert!(verified_blobs(berthd.root()).iter().all(|d| *d != layer));

        hostile.set_behaviour(Part::Layers, Behaviour::Honest);
        let image_ref = berthd.pull(&reference).await.unwrap_or_else(|s| panic!("pull from the recovered registry: {s:?}"));
        assert_eq!(image_ref, config);
    });
}

#[test]
fn a_cancelled_pull_stops_its_download_and_a_retry_succeeds() {
    common::run(|| async {
        let image = TestImage::new(vec![TestLayer::random("slow.bin", 64 << 10, 5, Compression::Gzip)]);
        let hostile = HostileRegistry::start(REPO, "v1", &image, Part::Layers, Behaviour::Trickle).await;
        let berthd = Berthd::start(BerthdConfig::default().insecure(&hostile.host())).await;
        let reference = format!("{}/{REPO}:v1", hostile.host());

        let client = tokio::spawn(berthd.pull_future(&reference));
        assert!(
            wait_until(Duration::from_secs(10), || hostile.hostile_bodies_started() > 0).await,
            "the pull never reached the layer:\n{}",
            berthd.log()
        );
        // The client goes away, as kubelet does when its deadline passes or crictl is killed.
        client.abort();
        let cancelled = Instant::now();
        let stopped = wait_until(Duration::from_secs(5), || hostile.hostile_bodies_open() == 0).await;
        eprintln!("cancelled pull: the registry saw the download's connection closed after {:?}", cancelled.elapsed());
        assert!(stopped, "the download went on after its only client left:\n{}", berthd.log());
        assert!(
            wait_until(Duration::from_secs(5), || ingest(berthd.root()).is_empty()).await,
            "ingest keeps {:?}",
            ingest(berthd.root())
        );

        hostile.set_behaviour(Part::Layers, Behaviour::Honest);
        let retried = tokio::time::timeout(Duration::from_secs(20), berthd.pull(&reference))
            .await
            .expect("a retry after the registry recovered must not wait on the cancelled download");
        let image_ref = retried.unwrap_or_else(|s| panic!("retry after the registry recovered: {s:?}\n{}", berthd.log()));
        assert_eq!(image_ref, sha256_digest(&image.config_json()));
    });
}

#[test]
fn trickling_layers_do_not_hold_a_pull_from_another_registry() {
    common::run(|| async {
        let stuck = TestImage::new(
            (0..3).map(|n| TestLayer::random(&format!("stuck{n}.bin"), 32 << 10, 40 + n, Compression::Gzip)).collect(),
        );
        let hostile = HostileRegistry::start(REPO, "v1", &stuck, Part::Layers, Behaviour::Trickle).await;
        let healthy = TestRegistry::start().await;
        let pushed = healthy.push("healthy/app", "v1", &TestImage::small("healthy")).await;
        let config = BerthdConfig::default().insecure(&hostile.host()).insecure(&healthy.host()).max_concurrent_downloads(3);
        let berthd = Berthd::start(config).await;

        let stuck_pull = tokio::spawn(berthd.pull_future(&format!("{}/{REPO}:v1", hostile.host())));
        assert!(
            wait_until(Duration::from_secs(10), || hostile.hostile_bodies_open() == 3).await,
            "the stuck pull never had its three layers trickling:\n{}",
            berthd.log()
        );
        let started = Instant::now();
        let pulled = tokio::time::timeout(Duration::from_secs(15), berthd.pull(&format!("{}/healthy/app:v1", healthy.host())))
            .await
            .expect("three trickling layers of another registry must not hold this pull");
        eprintln!("healthy pull beside three trickling layers: {:?}", started.elapsed());
        assert_eq!(pulled.unwrap_or_else(|s| panic!("healthy pull: {s:?}")), pushed.image_id);
        assert!(!stuck_pull.is_finished(), "the trickling pull should still be running");
        stuck_pull.abort();
    });
}

#[test]
fn a_stalled_download_fails_after_the_stall_timeout() {
    common::run(|| async {
        let image = TestImage::new(vec![TestLayer::random("stalled.bin", 256 << 10, 9, Compression::None)]);
        let layer = image.layers[0].digest();
        let hostile = HostileRegistry::start(REPO, "v1", &image, Part::Layers, Behaviour::Stall).await;
        let config = BerthdConfig::default().insecure(&hostile.host()).download_stall_timeout_seconds(3);
        let berthd = Berthd::start(config).await;
        let reference = format!("{}/{REPO}:v1", hostile.host());

        let (failed, elapsed) = failing_pull(&berthd, &reference, "a stalled layer").await;
        eprintln!("stalled layer (download_stall_timeout_seconds = 3): the pull failed after {elapsed:?}: {}", failed.message());
        assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
        for wanted in ["stalled", "download_stall_timeout_seconds", layer.as_str()] {
            assert!(failed.message().contains(wanted), "the error must say {wanted:?}: {failed:?}");
        }
        assert!(elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(6), "took {elapsed:?}");
        assert!(wait_until(Duration::from_secs(3), || hostile.hostile_bodies_open() == 0).await, "the connection stays open");
        assert!(ingest(berthd.root()).is_empty(), "ingest keeps {:?}", ingest(berthd.root()));

        // A manifest that stalls after its headers fails the same way.
        hostile.set_behaviour(Part::Manifest, Behaviour::Stall);
        let (failed, elapsed) = failing_pull(&berthd, &reference, "a stalled manifest").await;
        eprintln!("stalled manifest (download_stall_timeout_seconds = 3): the pull failed after {elapsed:?}: {}", failed.message());
        assert!(elapsed < Duration::from_secs(6), "took {elapsed:?}");
    });
}

#[test]
fn a_full_disk_fails_the_pull_as_resource_exhausted() {
    common::run(|| async {
        let registry = TestRegistry::start().await;
        let image = TestImage::new(vec![TestLayer::random("big.bin", 24 << 20, 13, Compression::None)]);
        registry.push("full/app", "v1", &image).await;
        let config = BerthdConfig::default().insecure(&registry.host()).root_on_tmpfs(16 << 20);
        let berthd = Berthd::start(config).await;
        let reference = format!("{}/full/app:v1", registry.host());

        let failed = berthd.pull(&reference).await.expect_err("a pull that fills the disk must fail");
        assert_eq!(failed.code(), Code::ResourceExhausted, "{failed:?}");
        assert!(failed.message().contains("no space left on device"), "{failed:?}");
        assert!(!failed.message().contains("malformed"), "a full disk is not a malformed layer: {failed:?}");
        assert!(
            wait_until(Duration::from_secs(5), || ingest(berthd.root()).is_empty()).await,
            "ingest keeps {:?}",
            ingest(berthd.root())
        );
        assert!(snapshot_dirs(berthd.root()).is_empty());
        assert!(berthd.list_images(None).await.is_empty());
    });
}
