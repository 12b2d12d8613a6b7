//! Layers written to escape the snapshot they unpack into: `..` names, absolute names,
//! symlinks followed by writes through them, hard links to host files. Whatever berthd
//! does with each, no file may appear outside its root, and host files keep their link
//! counts.
//!
//! What a safe runtime must do, case by case:
//! * a name that climbs out with `..` has no meaning inside a layer: the pull fails,
//!   and the error names the entry;
//! * an absolute name is read relative to the layer root (as tar and every runtime
//!   do): the pull succeeds and the file lands inside the snapshot;
//! * a write through a symlink that points outside may be refused (the error names the
//!   entry) or resolved inside the snapshot; both are safe, so both pass;
//! * a hard link must name a file of the same layer; one aimed at the host's
//!   /etc/passwd (relative or absolute) has no such target: the pull fails, and the
//!   error names the entry or its target.

mod common;

use std::path::{Path, PathBuf};

use common::fs::{find_named, link_count};
use common::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Refused,
    Contained,
    RefusedOrContained,
}

struct Outcome {
    result: Result<String, tonic::Status>,
    /// The content of each file named like the marker, read before the fixture's
    /// directories go away.
    marker_contents: Vec<String>,
    /// Everything under `<root>/snapshots` after the pull, for failure messages.
    snapshot_tree: Vec<PathBuf>,
}

/// Pushes a one-layer image of `entries` (built by `layer(marker, sentinel)`), pulls it
/// and checks containment; `accepted_names` are the strings an error may name.
async fn pull_hostile(
    layer: impl FnOnce(&str, &Path) -> Vec<Entry>,
    verdict: Verdict,
    accepted_names: impl FnOnce(&str, &Path) -> Vec<String>,
) -> Outcome {
    let registry = TestRegistry::start().await;
    let berthd = Berthd::start(BerthdConfig::default().insecure(&registry.host())).await;
    let marker = format!("berth-escape-{:016x}", rand::random::<u64>());
    let entries = layer(&marker, berthd.sentinel());
    let names = accepted_names(&marker, berthd.sentinel());
    let mut all_entries = vec![Entry::file("benign", "an ordinary file first")];
    all_entries.extend(entries);
    let image = TestImage::new(vec![TestLayer::new(&all_entries, Compression::Gzip)]);
    let pushed = registry.push("hostile/app", "v1", &image).await;

    let passwd = Path::new("/etc/passwd");
    let passwd_links = link_count(passwd);
    let passwd_content = std::fs::read(passwd).expect("read /etc/passwd");
    let outside_before = berthd.paths_outside_root();

    let reference = format!("{}/hostile/app:v1", registry.host());
    let result = berthd.pull(&reference).await;

    let root = berthd.root();
    let snapshots = root.join("snapshots");
    let base_parent = berthd.base().parent().expect("tempdir has a parent").to_path_buf();
    let marker_hits = find_named(
        &[berthd.base()],
        &[Path::new("/"), Path::new("/tmp"), Path::new("/etc"), &base_parent, root, &snapshots],
        &marker,
    );
    let outside_after = berthd.paths_outside_root();
    let escaped: Vec<&PathBuf> = marker_hits
        .iter()
        .filter(|hit| !hit.strip_prefix(&snapshots).is_ok_and(|rest| rest.components().count() >= 2))
        .collect();
    for hit in &escaped {
        // Leave the machine as it was even when berthd let a file out.
        let _ = std::fs::remove_file(hit);
    }
    let log = berthd.log();
    assert!(escaped.is_empty(), "files escaped the snapshots: {escaped:?}\npull: {result:?}\nberthd log:\n{log}");
    assert_eq!(
        outside_before,
        outside_after,
        "paths appeared or vanished outside berthd's root (sentinel {}):\npull: {result:?}",
        berthd.sentinel().display()
    );
    assert_eq!(link_count(passwd), passwd_links, "/etc/passwd gained a hard link: {result:?}");
    assert_eq!(std::fs::read(passwd).expect("read /etc/passwd"), passwd_content, "/etc/passwd changed");

    match (&result, verdict) {
        (Err(status), Verdict::Refused | Verdict::RefusedOrContained) => {
            assert!(
                names.iter().any(|name| status.message().contains(name.as_str())),
                "the error must name the hostile entry (one of {names:?}): {status:?}"
            );
            assert!(berthd.image_status(&reference).await.is_none(), "a refused image must not be listed");
        }
        (Ok(image_ref), Verdict::Contained | Verdict::RefusedOrContained) => {
            assert_eq!(image_ref, &pushed.image_id);
        }
        (Ok(image_ref), Verdict::Refused) => {
            panic!("the pull must be refused, yet it gave {image_ref}; marker found at {marker_hits:?}\n{log}")
        }
        (Err(status), Verdict::Contained) => panic!("the pull must succeed with the file contained: {status:?}\n{log}"),
    }
    let marker_contents = marker_hits.iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect();
    Outcome { result, marker_contents, snapshot_tree: common::fs::walk(&snapshots) }
}

/// Enough `..` to climb from any snapshot directory to `/`.
fn climb_to_host_root() -> String {
    vec![".."; 24].join("/")
}

#[test]
fn a_parent_dir_name_is_refused() {
    common::run(|| async {
        pull_hostile(
            |marker, _| vec![Entry::raw_file(&format!("../{marker}"), "escaped")],
            Verdict::Refused,
            |marker, _| vec![format!("../{marker}")],
        )
        .await;
    });
}

#[test]
fn a_name_climbing_out_through_a_subdirectory_is_refused() {
    common::run(|| async {
        pull_hostile(
            |marker, _| vec![Entry::dir("a"), Entry::raw_file(&format!("a/../../{marker}"), "escaped")],
            Verdict::Refused,
            |marker, _| vec![format!("a/../../{marker}")],
        )
        .await;
    });
}

#[test]
fn an_absolute_name_lands_inside_the_snapshot() {
    common::run(|| async {
        let outcome = pull_hostile(
            |marker, _| vec![Entry::raw_file(&format!("/{marker}"), "contained")],
            Verdict::Contained,
            |marker, _| vec![format!("/{marker}")],
        )
        .await;
        assert!(outcome.result.is_ok());
        assert_eq!(
            outcome.marker_contents,
            vec!["contained".to_owned()],
            "the absolute-named file must be unpacked once, inside; snapshots hold {:#?}",
            outcome.snapshot_tree
        );
    });
}

#[test]
fn a_write_through_a_symlink_to_an_outside_directory_stays_inside() {
    common::run(|| async {
        pull_hostile(
            |marker, sentinel| {
                vec![
                    Entry::raw_symlink("evil", sentinel.to_str().expect("UTF-8 sentinel")),
                    Entry::raw_file(&format!("evil/{marker}"), "written through evil"),
                ]
            },
            Verdict::RefusedOrContained,
            |marker, _| vec![format!("evil/{marker}")],
        )
        .await;
    });
}

#[test]
fn a_write_through_a_symlink_climbing_up_the_tree_stays_inside() {
    common::run(|| async {
        pull_hostile(
            |marker, _| vec![Entry::raw_symlink("up", &climb_to_host_root()), Entry::raw_file(&format!("up/{marker}"), "up")],
            Verdict::RefusedOrContained,
            |marker, _| vec![format!("up/{marker}")],
        )
        .await;
    });
}

#[test]
fn a_hard_link_climbing_to_etc_passwd_is_refused() {
    common::run(|| async {
        pull_hostile(
            |marker, _| vec![Entry::raw_hardlink(marker, &format!("{}/etc/passwd", climb_to_host_root()))],
            Verdict::Refused,
            |marker, _| vec![marker.to_owned(), format!("{}/etc/passwd", climb_to_host_root())],
        )
        .await;
    });
}

#[test]
fn a_hard_link_to_absolute_etc_passwd_is_refused() {
    common::run(|| async {
        pull_hostile(
            |marker, _| vec![Entry::raw_hardlink(marker, "/etc/passwd")],
            Verdict::Refused,
            |marker, _| vec![marker.to_owned(), "/etc/passwd".to_owned()],
        )
        .await;
    });
}
