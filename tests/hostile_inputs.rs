//! No input may abort berthd. Hostile Dockerfiles go through the real `berth build`
//! CLI into a real berthd, hostile image references through CRI; each must come
//! back as a clear error (a Dockerfile's at its line and column) from a berthd that
//! keeps serving. Needs root.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{Berthd, BerthdConfig};

const BERTH_BINARY: &str = env!("CARGO_BIN_EXE_berth");

/// Builds a context holding only `dockerfile` with the berth CLI.
async fn build(berthd: &Berthd, dockerfile: &str) -> Output {
    let context = tempfile::tempdir().expect("context dir");
    std::fs::write(context.path().join("Dockerfile"), dockerfile).expect("write the Dockerfile");
    tokio::process::Command::new(BERTH_BINARY)
        .arg("--socket")
        .arg(berthd.socket())
        .args(["build", context.path().to_str().unwrap()])
        .output()
        .await
        .expect("run the berth CLI")
}

/// Asserts the build failed with `expected` in its output, quickly and briefly,
/// and that berthd still answers.
async fn assert_refused(berthd: &Berthd, dockerfile: &str, expected: &str) {
    let started = Instant::now();
    let output = build(berthd, dockerfile).await;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "the build succeeded:\n{text}");
    assert!(text.contains(expected), "expected {expected:?} in:\n{}\nberthd:\n{}", &text[..text.len().min(2000)], berthd.log());
    assert!(text.len() < 4096, "an error of {} bytes", text.len());
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert_alive(berthd).await;
}

async fn assert_alive(berthd: &Berthd) {
    let version = berthd.runtime_client().await.version(k8s_cri::v1::VersionRequest { version: "v1".into() }).await;
    assert!(version.is_ok(), "berthd stopped answering: {version:?}\n{}", berthd.log());
}

#[test]
fn hostile_dockerfiles_get_an_error_at_line_and_column_and_berthd_lives_on() {
    common::run(|| async {
        let berthd = Berthd::start(BerthdConfig::default()).await;

        let depth = 10_000;
        let nested = format!("{}x{}", "${a:-".repeat(depth), "}".repeat(depth));
        let column = "ENV a=".len() + 64 * "${a:-".len() + 1;
        assert_refused(&berthd, &format!("FROM busybox\nENV a={nested}\n"), &format!("Dockerfile:2:{column}: substitutions nested more than 64 deep")).await;
        assert_refused(&berthd, &format!("FROM busybox\nCOPY <<EOF /x\n{nested}\nEOF\n"), "Dockerfile:3:321: heredoc EOF: substitutions nested more than 64 deep").await;

        let many = format!("FROM busybox\n{}", (0..100_000).map(|i| format!("ENV v{i}={i}\n")).collect::<String>());
        assert_refused(&berthd, &many, "Dockerfile:10001:1: too many instructions: a Dockerfile may have at most 10000").await;

        let long = format!("FROM busybox\nRUN echo {}\n", "x".repeat(2 << 20));
        assert_refused(&berthd, &long, &format!("Dockerfile:2:1: instruction is {} bytes long, the limit is 1048576", (2 << 20) + 9)).await;

        let unterminated = format!("FROM busybox\nRUN cat <<EOF\n{}", "line\n".repeat(100_000));
        assert_refused(&berthd, &unterminated, "Dockerfile:2:9: heredoc EOF is not terminated").await;

        let name = "N".repeat(1_000_000);
        assert_refused(&berthd, &format!("FROM busybox\nENV a=${{{name}:?}}\n"), "is not allowed to be unset").await;
    });
}

#[test]
fn hostile_image_references_are_invalid_arguments_and_berthd_lives_on() {
    common::run(|| async {
        let berthd = Berthd::start(BerthdConfig::default()).await;
        for reference in ["a".repeat(3 << 20), "a/".repeat(500_000), format!("busybox:{}", "t".repeat(1 << 20)), "[".repeat(100_000)] {
            let status = berthd.pull(&reference).await.expect_err("a hostile reference pulls");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(status.message().len() < 1024 && status.message().contains("the limit is 512"), "{}", &status.message()[..status.message().len().min(500)]);
            assert_alive(&berthd).await;
        }
    });
}
