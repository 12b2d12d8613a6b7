//! `berth build` end to end: the real CLI against a real berthd whose RUN steps
//! run through the shim and runc, with a busybox base image pulled from a real
//! registry through a mirror. Needs root.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::{Berthd, BerthdConfig, TestImage, TestRegistry};

const BERTH_BINARY: &str = env!("CARGO_BIN_EXE_berth");

const LESSON: &str = r#"FROM busybox
RUN echo "installing..." && mkdir -p /data && echo 5 > /data/mynumber
CMD ["sh", "-c", "cat /data/mynumber; sleep 3600"]
"#;

async fn start() -> (TestRegistry, Berthd) {
    let registry = TestRegistry::start().await;
    registry.push("library/busybox", "latest", &TestImage::busybox()).await;
    let berthd = Berthd::start(BerthdConfig::for_registry(&registry)).await;
    (registry, berthd)
}

/// Runs the berth CLI against `berthd`, with `env` added to its environment.
async fn berth(berthd: &Berthd, args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::process::Command::new(BERTH_BINARY)
        .arg("--socket")
        .arg(berthd.socket())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run the berth CLI")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A build context with these files.
fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("context dir");
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

fn built_id(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix("Successfully built "))
        .unwrap_or_else(|| panic!("no 'Successfully built' in:\n{output}"))
        .to_string()
}

fn cached_count(output: &str) -> usize {
    output.lines().filter(|l| *l == " ---> Using cache").count()
}

/// Mounts, build state directories and cgroups a build may have left.
fn build_leftovers(berthd: &Berthd) -> Vec<PathBuf> {
    let builds = berthd.state().join("builds");
    let mut left: Vec<PathBuf> = std::fs::read_dir(&builds).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    left.extend(mounts.lines().filter(|l| l.contains(builds.to_str().unwrap())).map(PathBuf::from));
    left
}

#[test]
fn the_lesson_builds_then_rebuilds_from_cache_and_crictl_sees_the_tag() {
    common::run(|| async {
        let (_registry, berthd) = start().await;
        let dir = context(&[("Dockerfile", LESSON)]);
        let path = dir.path().to_str().unwrap();

        let first = berth(&berthd, &["build", path], &[]).await;
        let out = text(&first);
        assert!(first.status.success(), "first build failed:\n{out}\n{}", berthd.log());
        assert!(out.contains("Step 1/3 : FROM busybox"), "{out}");
        assert!(out.contains("Step 2/3 : RUN echo \"installing...\""), "{out}");
        assert!(out.lines().any(|l| l == "installing..."), "RUN output not streamed:\n{out}");
        assert_eq!(cached_count(&out), 0, "{out}");
        let id = built_id(&out);
        assert_eq!(id.len(), 12);

        let second = berth(&berthd, &["build", "-t", "me/redis:latest", path], &[]).await;
        let out = text(&second);
        assert!(second.status.success(), "{out}");
        assert_eq!(cached_count(&out), 2, "every step after FROM should be cached:\n{out}");
        assert!(!out.lines().any(|l| l == "installing..."), "a cached RUN ran again:\n{out}");
        assert_eq!(built_id(&out), id, "a fully cached rebuild gives the same image");
        assert!(out.lines().any(|l| l == "Successfully tagged me/redis:latest"), "{out}");

        let image = berthd.image_status("me/redis:latest").await.expect("CRI sees the built image by tag");
        assert!(image.id.starts_with(&format!("sha256:{id}")), "{} vs {id}", image.id);
        assert!(berthd.image_status(&id).await.is_some(), "CRI finds the image by id prefix");
        assert!(build_leftovers(&berthd).is_empty(), "{:?}", build_leftovers(&berthd));
    });
}

#[test]
fn the_cache_survives_a_restart_and_a_changed_step_reruns_it_and_what_follows() {
    common::run(|| async {
        let (_registry, mut berthd) = start().await;
        let dockerfile = "FROM busybox\nRUN echo one > /one\nCOPY file /file\nRUN echo two > /two\n";
        let dir = context(&[("Dockerfile", dockerfile), ("file", "content")]);
        let path = dir.path().to_str().unwrap();
        let out = text(&berth(&berthd, &["build", path], &[]).await);
        assert_eq!(cached_count(&out), 0, "{out}");

        berthd.restart().await;
        let out = text(&berth(&berthd, &["build", path], &[]).await);
        assert_eq!(cached_count(&out), 3, "the cache is kept across restarts:\n{out}\n{}", berthd.log());

        std::fs::write(dir.path().join("file"), "changed").unwrap();
        let out = text(&berth(&berthd, &["build", path], &[]).await);
        assert_eq!(cached_count(&out), 1, "a changed COPY source reruns it and the RUN after it:\n{out}");

        let out = text(&berth(&berthd, &["builder", "prune"], &[]).await);
        assert!(out.contains("Deleted build cache entries:"), "{out}");
        let out = text(&berth(&berthd, &["build", path], &[]).await);
        assert_eq!(cached_count(&out), 0, "prune empties the cache:\n{out}");
    });
}

#[test]
fn a_failing_run_exits_with_its_code_and_leaves_nothing_behind() {
    common::run(|| async {
        let (_registry, berthd) = start().await;
        let dockerfile = "FROM busybox\nRUN echo fine > /fine\nRUN echo about to fail && exit 7\n";
        let dir = context(&[("Dockerfile", dockerfile)]);
        let path = dir.path().to_str().unwrap();
        berthd.pull("busybox").await.expect("pull the base image");
        let images_before = berthd.list_images(None).await.len();

        let failed = berth(&berthd, &["build", "-t", "me/failing:1", path], &[]).await;
        let out = text(&failed);
        assert_eq!(failed.status.code(), Some(7), "{out}");
        assert!(out.lines().any(|l| l == "about to fail"), "{out}");
        assert!(out.contains("returned a non-zero code: 7"), "{out}");
        assert_eq!(berthd.list_images(None).await.len(), images_before, "a failed build registers no image");
        assert!(build_leftovers(&berthd).is_empty(), "{:?}", build_leftovers(&berthd));

        let again = text(&berth(&berthd, &["build", path], &[]).await);
        assert_eq!(cached_count(&again), 1, "the step before the failure stays cached:\n{again}");
    });
}

#[test]
fn source_date_epoch_makes_uncached_builds_reproducible() {
    common::run(|| async {
        let (_registry, berthd) = start().await;
        let dockerfile = "FROM busybox\nRUN mkdir -p /out && echo same > /out/file\nCOPY data /data\nENV MODE=test\n";
        let dir = context(&[("Dockerfile", dockerfile), ("data", "payload")]);
        let path = dir.path().to_str().unwrap();
        let epoch = [("SOURCE_DATE_EPOCH", "1700000000")];
        let first = text(&berth(&berthd, &["build", "--no-cache", path], &epoch).await);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let second = text(&berth(&berthd, &["build", "--no-cache", path], &epoch).await);
        assert_eq!(built_id(&first), built_id(&second), "the same content gives the same image:\n{first}\n{second}");
    });
}

#[test]
fn dockerignore_keeps_files_out_of_the_context() {
    common::run(|| async {
        let (_registry, berthd) = start().await;
        let dir = context(&[
            ("Dockerfile", "FROM busybox\nCOPY . /ctx/\nRUN find /ctx -type f | sort\n"),
            (".dockerignore", "secret.txt\nlogs/*\n!logs/keep.log\n"),
            ("secret.txt", "secret"),
            ("logs/a.log", "a"),
            ("logs/keep.log", "keep"),
            ("src/main.c", "int main;"),
        ]);
        let out = text(&berth(&berthd, &["build", dir.path().to_str().unwrap()], &[]).await);
        assert!(out.lines().any(|l| l == "/ctx/src/main.c"), "{out}");
        assert!(out.lines().any(|l| l == "/ctx/logs/keep.log"), "{out}");
        assert!(!out.contains("secret.txt") && !out.contains("a.log"), "ignored files reached the build:\n{out}");
    });
}

#[test]
fn bad_input_is_refused_with_a_message_naming_it() {
    common::run(|| async {
        let (_registry, berthd) = start().await;
        let dir = context(&[("Dockerfile", "FROM busybox\nFROBNICATE now\n")]);
        let out = berth(&berthd, &["build", dir.path().to_str().unwrap()], &[]).await;
        assert!(!out.status.success());
        assert!(text(&out).contains("Dockerfile:2"), "the error names the line:\n{}", text(&out));

        let dir = context(&[("Dockerfile", "FROM busybox\nCOPY missing.txt /\n")]);
        let out = berth(&berthd, &["build", dir.path().to_str().unwrap()], &[]).await;
        assert!(text(&out).contains("missing.txt"), "{}", text(&out));

        let out = berth(&berthd, &["build", "--target", "nope", dir.path().to_str().unwrap()], &[]).await;
        assert!(text(&out).contains("nope"), "{}", text(&out));
    });
}

#[test]
fn a_build_cut_short_by_a_crash_is_cleaned_up_at_restart() {
    common::run(|| async {
        let (_registry, mut berthd) = start().await;
        let dir = context(&[("Dockerfile", "FROM busybox\nRUN echo started && sleep 3071\n")]);
        let mut build = tokio::process::Command::new(BERTH_BINARY)
            .arg("--socket")
            .arg(berthd.socket())
            .args(["build", dir.path().to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start berth build");
        let mut stdout = tokio::io::BufReader::new(build.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let read = tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line).await.unwrap();
            assert!(read > 0, "the build ended before its RUN started:\n{}", berthd.log());
            if line.trim() == "started" {
                break;
            }
        }
        assert!(!build_leftovers(&berthd).is_empty(), "the running step has its state");
        berthd.kill9();
        let _ = build.wait().await;
        berthd.restart().await;
        assert!(build_leftovers(&berthd).is_empty(), "left after restart: {:?}\n{}", build_leftovers(&berthd), berthd.log());
        let sleeping = std::process::Command::new("pgrep").args(["-f", "sleep 3071"]).output().unwrap();
        assert!(sleeping.stdout.is_empty(), "the step's process survived: {}", String::from_utf8_lossy(&sleeping.stdout));
    });
}

/// Serves `body` to every HTTP request on 127.0.0.1 (inside the test's network
/// namespace); returns the URL.
async fn serve_file(body: &'static [u8]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body).await;
            });
        }
    });
    format!("http://{address}/downloaded.txt")
}

fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, name, content.as_bytes()).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn copy_and_add_place_files_as_docker_does_and_run_sees_the_stage_settings() {
    common::run(|| async {
        let (_registry, berthd) = start().await;
        let url = serve_file(b"from the network\n").await;
        let dir = context(&[("a.txt", "a"), ("b.txt", "b"), ("c.md", "c"), ("tree/inner/deep.txt", "deep")]);
        std::fs::write(dir.path().join("bundle.tar"), tar_of(&[("unpacked/one.txt", "one\n")])).unwrap();
        let dockerfile = [
            "FROM busybox",
            r#"RUN echo "app:x:1000:1000::/home/app:/bin/sh" >> /etc/passwd && echo "app:x:1000:" >> /etc/group"#,
            "COPY *.txt /globbed/",
            "COPY tree /copied-tree",
            "COPY --chown=app:app --chmod=600 a.txt /owned",
            "ADD bundle.tar /extracted/",
            // Docker gives downloads mode 600; the user below reads it.
            &format!("ADD --chmod=644 {url} /net/"),
            "COPY --from=busybox /bin/busybox /from-image/busybox",
            "COPY <<DOC /heredoc.txt",
            "written by a heredoc",
            "DOC",
            "ENV GREETING=hello",
            "WORKDIR /work/dir",
            "USER app",
            r#"RUN ls /globbed /copied-tree/inner && stat -c '%U %a' /owned && cat /extracted/unpacked/one.txt /net/downloaded.txt /heredoc.txt && test -x /from-image/busybox && echo "$GREETING from $(pwd) as $(id -un)""#,
        ]
        .join("\n");
        std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
        let out = berth(&berthd, &["build", "-t", "me/files:1", dir.path().to_str().unwrap()], &[]).await;
        let text = text(&out);
        assert!(out.status.success(), "{text}\n{}", berthd.log());
        for expected in ["a.txt", "b.txt", "deep.txt", "app 600", "one", "from the network", "written by a heredoc", "hello from /work/dir as app"] {
            assert!(text.lines().any(|l| l.trim() == expected), "missing line {expected:?} in:\n{text}");
        }
        assert!(!text.lines().any(|l| l.trim() == "c.md"), "the glob took c.md:\n{text}");
    });
}

#[test]
fn run_steps_get_the_network_asked_for() {
    common::run(|| async {
        let (_registry, berthd) = start().await;
        let host = std::fs::read_link("/proc/thread-self/ns/net").unwrap().display().to_string();
        let dockerfile = "FROM busybox\nRUN echo \"default $(readlink /proc/self/ns/net)\"\nRUN --network=none echo \"none $(readlink /proc/self/ns/net) $(ls /sys/class/net)\"\n";
        let dir = context(&[("Dockerfile", dockerfile)]);
        let path = dir.path().to_str().unwrap();
        let out = text(&berth(&berthd, &["build", path], &[]).await);
        assert!(out.lines().any(|l| l == format!("default {host}")), "a default RUN uses the host's network ({host}):\n{out}");
        let none = out.lines().find(|l| l.starts_with("none ")).unwrap_or_else(|| panic!("{out}"));
        assert!(!none.contains(&host) && none.ends_with(" lo"), "RUN --network=none gets its own namespace with only lo:\n{out}");

        let out = text(&berth(&berthd, &["build", "--no-cache", "--network", "none", path], &[]).await);
        assert!(!out.lines().any(|l| l == format!("default {host}")), "--network none applies to every RUN:\n{out}");
    });
}

#[test]
fn push_uses_the_credentials_given_and_the_image_comes_back_after_rmi() {
    common::run(|| async {
        let base = TestRegistry::start().await;
        base.push("library/busybox", "latest", &TestImage::busybox()).await;
        let private = TestRegistry::start_basic("builder", "s3cret").await;
        let config = BerthdConfig::for_registry(&base).insecure(&private.host());
        let berthd = Berthd::start(config).await;
        let target = format!("{}/me/pushed:1", private.host());
        let dir = context(&[("Dockerfile", "FROM busybox\nRUN echo pushed > /marker\n")]);
        let built = berth(&berthd, &["build", "-t", &target, dir.path().to_str().unwrap()], &[]).await;
        assert!(built.status.success(), "{}", text(&built));

        let anonymous = berth(&berthd, &["push", &target], &[]).await;
        assert!(!anonymous.status.success(), "an anonymous push to a registry with auth must fail");
        let pushed = berth(&berthd, &["push", "--creds", "builder:s3cret", &target], &[]).await;
        let out = text(&pushed);
        assert!(pushed.status.success(), "{out}\n{}", berthd.log());
        assert!(out.contains(&format!("{target}: digest: sha256:")), "{out}");

        let removed = berth(&berthd, &["rmi", &target], &[]).await;
        assert!(removed.status.success(), "{}", text(&removed));
        assert!(berthd.image_status(&target).await.is_none());
        let auth = k8s_cri::v1::AuthConfig { username: "builder".into(), password: "s3cret".into(), ..Default::default() };
        berthd.pull_with_auth(&target, Some(auth)).await.expect("pull the pushed image back");
        let listed = text(&berth(&berthd, &["images"], &[]).await);
        assert!(listed.lines().any(|l| l.contains("me/pushed") && l.contains(" 1 ")), "{listed}");
    });
}

#[test]
fn onbuild_triggers_of_the_base_run_in_the_next_build() {
    common::run(|| async {
        let (_registry, berthd) = start().await;
        let base = context(&[("Dockerfile", "FROM busybox\nONBUILD RUN echo triggered > /trigger\nONBUILD COPY input /input\n")]);
        let built = berth(&berthd, &["build", "-t", "me/onbuild-base:1", base.path().to_str().unwrap()], &[]).await;
        assert!(built.status.success(), "{}", text(&built));
        let child = context(&[("Dockerfile", "FROM me/onbuild-base:1\nRUN cat /trigger /input\n"), ("input", "from the child's context\n")]);
        let out = text(&berth(&berthd, &["build", child.path().to_str().unwrap()], &[]).await);
        assert!(out.contains("Step 1/2 : FROM me/onbuild-base:1\n# Executing 2 build triggers\n"), "the triggers run with FROM:\n{out}");
        assert!(out.lines().any(|l| l == "triggered") && out.lines().any(|l| l == "from the child's context"), "{out}");
    });
}

#[test]
fn an_image_from_scratch_holds_only_what_was_copied() {
    common::run(|| async {
        let (_registry, berthd) = start().await;
        let dir = context(&[
            ("Dockerfile", "FROM busybox AS tools\nFROM scratch\nCOPY --from=tools /bin/busybox /busybox\nCOPY hello.txt /\nCMD [\"/busybox\", \"cat\", \"/hello.txt\"]\n"),
            ("hello.txt", "hello from scratch\n"),
        ]);
        let built = berth(&berthd, &["build", "-t", "me/scratch:1", dir.path().to_str().unwrap()], &[]).await;
        assert!(built.status.success(), "{}\n{}", text(&built), berthd.log());
        let history = text(&berth(&berthd, &["history", "me/scratch:1"], &[]).await);
        assert!(history.contains("COPY hello.txt /"), "{history}");
        let image = berthd.image_status("me/scratch:1").await.expect("the scratch image is stored");
        assert!(image.size < 4 * 1024 * 1024, "two files, not a base image: {} bytes", image.size);
    });
}

#[test]
fn run_mounts_give_caches_that_persist_context_binds_and_tmpfs() {
    common::run(|| async {
        let (_registry, berthd) = start().await;
        let dockerfile = [
            "FROM busybox",
            "RUN --mount=type=cache,target=/cache echo run >> /cache/log && echo \"cache runs: $(wc -l < /cache/log)\"",
            "RUN --mount=type=bind,source=data.txt,target=/mnt/data.txt cat /mnt/data.txt",
            "RUN --mount=type=tmpfs,target=/scratch touch /scratch/x && ls /scratch",
            "RUN test ! -s /cache/log && test ! -e /scratch/x && echo mounts left nothing in the image",
        ]
        .join("\n");
        let dir = context(&[("Dockerfile", &dockerfile), ("data.txt", "bound from the context\n")]);
        let path = dir.path().to_str().unwrap();
        let first = text(&berth(&berthd, &["build", path], &[]).await);
        for expected in ["cache runs: 1", "bound from the context", "x", "mounts left nothing in the image"] {
            assert!(first.lines().any(|l| l == expected), "missing {expected:?}:\n{first}\n{}", berthd.log());
        }
        let again = text(&berth(&berthd, &["build", "--no-cache", path], &[]).await);
        assert!(again.lines().any(|l| l == "cache runs: 2"), "the cache mount keeps its files between builds:\n{again}");

        std::fs::write(dir.path().join("data.txt"), "changed\n").unwrap();
        let changed = text(&berth(&berthd, &["build", path], &[]).await);
        assert_eq!(cached_count(&changed), 1, "a changed bound file reruns its RUN and what follows:\n{changed}");
        assert!(changed.lines().any(|l| l == "changed"), "{changed}");
    });
}
