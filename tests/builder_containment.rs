//! The builder against hostile inputs: base images whose symlinks point at host
//! directories (absolute and relative), contexts whose symlinks and device nodes
//! name host files, heredoc names that climb, `COPY --from` through a stage's
//! links, `RUN --mount=type=bind` of a link, `ADD <url>` bodies that never end or
//! stall, and a running container that swaps its files for symlinks while it is
//! committed. Every case checks the host: a victim directory outside every root
//! must keep exactly its one file, and its secret must show up in no snapshot.
//! Real berthd, berth CLI, runc and registry. Needs root.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Berthd, BerthdConfig, Compression, Entry, TestImage, TestLayer, TestRegistry};
use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BERTH_BINARY: &str = env!("CARGO_BIN_EXE_berth");

/// A host directory no build may touch, holding one secret file.
struct Victim {
    dir: tempfile::TempDir,
    secret: String,
}

impl Victim {
    fn new() -> Victim {
        let dir = tempfile::Builder::new().prefix("berth-victim-").tempdir_in("/tmp").expect("victim dir");
        let secret = format!("HOST-SECRET-{:016x}", rand_u64());
        std::fs::write(dir.path().join("secret"), &secret).unwrap();
        Victim { dir, secret }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The victim's path without its leading `/`, as a layer names it.
    fn rel(&self) -> String {
        self.path().to_str().unwrap().trim_start_matches('/').to_string()
    }

    /// Fails unless the victim holds exactly its secret, unchanged.
    fn assert_untouched(&self, case: &str) {
        let names: Vec<String> =
            std::fs::read_dir(self.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["secret"], "{case}: the build wrote into the host directory {}", self.path().display());
        assert_eq!(std::fs::read_to_string(self.path().join("secret")).unwrap(), self.secret, "{case}");
    }

    /// Fails if the secret is in any file below `root` (snapshots, content).
    fn assert_not_leaked(&self, root: &Path, case: &str) {
        let found = common::fs::regular_files(root)
            .into_iter()
            .filter(|f| !f.ends_with("meta.redb"))
            .filter(|f| std::fs::read(f).is_ok_and(|bytes| contains(&bytes, self.secret.as_bytes())))
            .collect::<Vec<_>>();
        assert!(found.is_empty(), "{case}: the host secret leaked into {found:?}");
    }
}

fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)).unwrap();
    u64::from_le_bytes(bytes)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// busybox plus a layer whose links lead at the victim: `/app/conf.d` absolute,
/// `/app/relconf` climbing with `..`, `/etc/hostfile` at the secret itself. The
/// image also holds an (empty) directory at the victim's path, so that the links
/// resolve inside the image to somewhere real.
fn hostile_image(victim: &Victim) -> TestImage {
    let mut image = TestImage::busybox();
    let climb = "../".repeat(12);
    image.layers.push(TestLayer::new(
        &[
            Entry::dir("app"),
            Entry::symlink("app/conf.d", victim.path().to_str().unwrap()),
            Entry::symlink("app/relconf", &format!("{climb}{}", victim.rel())),
            Entry::symlink("etc/hostfile", &format!("{}/secret", victim.path().display())),
            Entry::dir(&victim.rel()),
        ],
        Compression::Gzip,
    ));
    image
}

async fn start(victim: &Victim, config: impl FnOnce(BerthdConfig) -> BerthdConfig) -> (TestRegistry, Berthd) {
    let registry = TestRegistry::start().await;
    registry.push("library/busybox", "latest", &TestImage::busybox()).await;
    registry.push("library/pause", "containment", &TestImage::busybox().cmd(&["/bin/sleep", "3600"])).await;
    registry.push("library/hostile", "latest", &hostile_image(victim)).await;
    let berthd =
        Berthd::start(config(BerthdConfig::for_registry(&registry).sandbox_image("docker.io/library/pause:containment"))).await;
    (registry, berthd)
}

async fn berth(berthd: &Berthd, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(BERTH_BINARY).arg("--socket").arg(berthd.socket()).args(args).kill_on_drop(true).output();
    match tokio::time::timeout(Duration::from_secs(120), run).await {
        Ok(output) => output.expect("run the berth CLI"),
        Err(_) => panic!("berth {args:?} did not finish in 120 s\n{}", berthd.log()),
    }
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A context directory with `Dockerfile` and `files`; `links` are symlinks
/// (name, target) made in it.
fn context(dockerfile: &str, files: &[(&str, &str)], links: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("context dir");
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    for (name, target) in links {
        std::os::unix::fs::symlink(target, dir.path().join(name)).unwrap();
    }
    dir
}

async fn build(berthd: &Berthd, dir: &Path) -> (bool, String) {
    let output = berth(berthd, &["build", dir.to_str().unwrap()]).await;
    (output.status.success(), text(&output))
}

#[test]
fn builds_never_write_or_read_host_files_through_links() {
    common::run(|| async {
        let victim = Victim::new();
        let (_registry, berthd) = start(&victim, |c| c).await;
        let v = victim.path().display().to_string();

        // 1. COPY into the base image's links: the files land in the image at the
        // link's target inside the rootfs, and a RUN after it finds them there.
        let dockerfile = format!(
            "FROM hostile\n\
             COPY app/ /app/\n\
             COPY app/ /app/conf.d/\n\
             COPY app/ /app/relconf/sub/\n\
             COPY app/new.conf /app/conf.d/single.conf\n\
             WORKDIR /app/conf.d\n\
             COPY app/new.conf ./viaworkdir.conf\n\
             COPY <<EOF /app/relconf/heredoc.conf\nfrom a heredoc\nEOF\n\
             RUN test -f {v}/escaped.conf && test -f {v}/climbed.conf && test -f {v}/new.conf && test -f {v}/sub/nested/deep.conf && test -f {v}/single.conf && test -f {v}/viaworkdir.conf && test -f {v}/heredoc.conf\n"
        );
        // The context's app/conf.d/ and app/relconf/ meet the image's links of
        // those names below the destination: the writes follow them inside the
        // rootfs, to the image's own copy of the victim's path.
        let files = [
            ("app/new.conf", "conf"),
            ("app/nested/deep.conf", "deep"),
            ("app/conf.d/escaped.conf", "through the absolute link"),
            ("app/relconf/climbed.conf", "through the climbing link"),
        ];
        let dir = context(&dockerfile, &files, &[]);
        let (ok, out) = build(&berthd, dir.path()).await;
        assert!(ok, "COPY through the image's links must land inside the image:\n{out}\n{}", berthd.log());
        victim.assert_untouched("COPY through image links");

        // 2. A heredoc's name is a file name, not a path.
        let climb = format!("{}{}/heredoc", "../".repeat(12), victim.rel());
        let dir = context(&format!("FROM hostile\nCOPY <<{climb} /d/\nx\n{climb}\n"), &[], &[]);
        let (ok, out) = build(&berthd, dir.path()).await;
        assert!(!ok && out.contains("heredoc name"), "a climbing heredoc name must be refused:\n{out}");
        victim.assert_untouched("heredoc name");

        // 3. Context links naming host files: refused, never followed on the host.
        let links = [("hostdir", v.as_str()), ("hostfile", &*format!("{v}/secret")), ("updir", "../../../../../../../..")];
        for (case, instruction) in [
            ("COPY of a link to a host file", "COPY hostfile /leak"),
            ("COPY through a link to a host directory", "COPY hostdir/secret /leak"),
            ("COPY of a link to a host directory", "COPY hostdir /leak/"),
            ("COPY through a climbing link", &*format!("COPY updir/{}/secret /leak", victim.rel())),
            ("ADD of a link to a host file", "ADD hostfile /leak"),
            ("glob through a link", "COPY hostdir/* /leak/"),
            ("RUN --mount of a link to a host directory", "RUN --mount=type=bind,source=hostdir,target=/m cat /m/secret"),
            ("RUN --mount through a link", "RUN --mount=type=bind,source=hostdir/secret,target=/m cat /m"),
        ] {
            let dir = context(&format!("FROM busybox\n{instruction}\n"), &[], &links);
            let (ok, out) = build(&berthd, dir.path()).await;
            assert!(!ok, "{case}: must fail, the link leads outside the context:\n{out}");
            assert!(!out.contains(&victim.secret), "{case}: {out}");
            victim.assert_untouched(case);
            victim.assert_not_leaked(berthd.root(), case);
        }

        // Links that stay inside the context are followed there.
        let dockerfile = "FROM busybox\nCOPY inlink /copied\nCOPY absin/new.conf /abs.conf\n\
                          RUN --mount=type=bind,source=absin,target=/m test -f /m/new.conf\n\
                          RUN grep -q conf /copied && grep -q conf /abs.conf\n";
        let dir = context(dockerfile, &[("app/new.conf", "conf")], &[("inlink", "app/new.conf"), ("absin", "/app")]);
        let (ok, out) = build(&berthd, dir.path()).await;
        assert!(ok, "links inside the context resolve inside it:\n{out}\n{}", berthd.log());

        // 4. COPY --from a stage through that stage's links.
        for (case, source) in [("COPY --from of a link to a host file", "/etc/hostfile"), ("COPY --from through a link", "/app/conf.d/secret")] {
            let dir = context(&format!("FROM hostile AS stage\nFROM busybox\nCOPY --from=stage {source} /leak\n"), &[], &[]);
            let (ok, out) = build(&berthd, dir.path()).await;
            assert!(!ok, "{case}: the link resolves inside the stage, where nothing is:\n{out}");
            victim.assert_untouched(case);
            victim.assert_not_leaked(berthd.root(), case);
        }

        victim.assert_untouched("all cases");
    });
}

/// An HTTP server on 127.0.0.1 for ADD: `/endless` never ends, `/stall` sends a
/// few bytes and then nothing, `/big` sends `big` bytes with a Content-Length.
async fn http_server(big: u64) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let n = socket.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..n]).into_owned();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                let chunk = vec![b'z'; 1 << 20];
                match path.as_str() {
                    "/endless" => {
                        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").await;
                        while socket.write_all(&chunk).await.is_ok() {}
                    }
                    "/stall" => {
                        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nfirst bytes").await;
                        tokio::time::sleep(Duration::from_secs(600)).await;
                    }
                    _ => {
                        let header = format!("HTTP/1.1 200 OK\r\nContent-Length: {big}\r\nConnection: close\r\n\r\n");
                        let _ = socket.write_all(header.as_bytes()).await;
                        let mut left = big;
                        while left > 0 {
                            let n = left.min(chunk.len() as u64) as usize;
                            if socket.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                            left -= n as u64;
                        }
                    }
                }
            });
        }
    });
    format!("http://{address}")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or(0)
}

#[test]
fn add_of_a_url_streams_to_disk_within_its_bounds() {
    common::run(|| async {
        let victim = Victim::new();
        let big: u64 = std::env::var("BERTH_TEST_ADD_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(256 << 20);
        let (_registry, berthd) = start(&victim, |c| {
            c.set("builder", "max_download_bytes", (big + (1 << 20)) as i64).set("builder", "download_stall_timeout_seconds", 2)
        })
        .await;
        let url = http_server(big).await;
        let pid = berthd.pid();

        // A large body goes to disk: berthd's memory stays flat while it streams.
        let before = rss_kib(pid);
        let peak = Arc::new(AtomicU64::new(before));
        let sampler = {
            let peak = Arc::clone(&peak);
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let dir = context(&format!("FROM busybox\nADD {url}/big /big\nRUN test $(wc -c < /big) -eq {big}\n"), &[], &[]);
        let started = Instant::now();
        let (ok, out) = build(&berthd, dir.path()).await;
        let took = started.elapsed();
        sampler.abort();
        let peak = peak.load(Ordering::Relaxed);
        assert!(ok, "ADD of a {big}-byte URL:\n{out}\n{}", berthd.log());
        eprintln!("ADD of {} MiB: berthd RSS {} MiB before, peak {} MiB while streaming; build took {:.1} s", big >> 20, before >> 10, peak >> 10, took.as_secs_f64());
        assert!(peak < before + (64 << 10), "berthd RSS grew from {before} KiB to {peak} KiB while ADD streamed {big} bytes");

        // An endless body stops at the bound, and nothing of it stays behind.
        let dir = context(&format!("FROM busybox\nADD {url}/endless /endless\n"), &[], &[]);
        let (ok, out) = build(&berthd, dir.path()).await;
        assert!(!ok && out.contains("max_download_bytes"), "an endless ADD must stop at the bound:\n{out}");

        // A stalled body fails after the stall timeout.
        let dir = context(&format!("FROM busybox\nADD {url}/stall /stall\n"), &[], &[]);
        let started = Instant::now();
        let (ok, out) = build(&berthd, dir.path()).await;
        assert!(!ok && out.contains("no data for 2 s"), "a stalled ADD must time out:\n{out}");
        assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());

        // --checksum is checked.
        let dir = context(&format!("FROM busybox\nADD --checksum=sha256:{} {url}/small /small\n", "0".repeat(64)), &[], &[]);
        let (ok, out) = build(&berthd, dir.path()).await;
        assert!(!ok && out.contains("digest mismatch"), "a wrong --checksum must fail the step:\n{out}");
        let spool = berthd.state().join("build-contexts");
        let spooled: u64 = common::fs::bytes_below(&spool);
        assert!(spooled < 1 << 20, "{spooled} bytes left in {}", spool.display());
    });
}

/// A pod with a container of `image` that runs `script`.
async fn run_container(berthd: &Berthd, image: &str, script: &str) -> (String, String) {
    let mut client = berthd.runtime_client().await;
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata { name: "swapper".into(), uid: "uid-swapper".into(), namespace: "containment".into(), attempt: 0 }),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption { network: cri::NamespaceMode::Node as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = match client.run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() }).await {
        Ok(response) => response.into_inner().pod_sandbox_id,
        Err(status) => panic!("RunPodSandbox: {status:?}\n{}", berthd.log()),
    };
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "swapper".into(), attempt: 0 }),
        image: Some(common::berthd::spec(image)),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    let request = cri::CreateContainerRequest { pod_sandbox_id: pod.clone(), config: Some(config), sandbox_config: None };
    let id = match client.create_container(request).await {
        Ok(response) => response.into_inner().container_id,
        Err(status) => panic!("CreateContainer: {status:?}\n{}", berthd.log()),
    };
    client.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.expect("StartContainer");
    (pod, id)
}

#[test]
fn commit_of_a_container_that_swaps_its_files_for_links_reads_nothing_of_the_host() {
    common::run(|| async {
        let victim = Victim::new();
        let (_registry, berthd) = start(&victim, |c| c).await;
        berthd.pull("docker.io/library/busybox:latest").await.expect("pull busybox");
        // The container keeps turning /w/d (and /w/f) from a directory (file) into
        // a symlink to the victim, the moment CVE-2018-15664 exploited: a commit
        // that checks a name and then opens it by path follows the link on the host.
        let v = victim.path().display();
        let script = format!(
            "mkdir -p /w; while :; do for n in 1 2 3 4 5 6; do rm -rf /w/d$n /w/f$n; mkdir /w/d$n; echo x > /w/d$n/secret; \
             echo y > /w/f$n; done; for n in 1 2 3 4 5 6; do rm -rf /w/d$n /w/f$n; ln -s {v} /w/d$n; ln -s {v}/secret /w/f$n; done; done"
        );
        let (pod, container) = run_container(&berthd, "busybox", &script).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut committed = 0;
        for round in 0..40 {
            let output = berth(&berthd, &["commit", &container, &format!("berth.test/swapped:{round}")]).await;
            if output.status.success() {
                committed += 1;
            } else {
                eprintln!("commit {round}: {}", text(&output));
            }
        }
        // The looping container must not outlive the test (its shim would).
        let mut client = berthd.runtime_client().await;
        client.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("StopPodSandbox");
        client.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.expect("RemovePodSandbox");
        assert!(committed >= 30, "commits of a busy container should succeed ({committed}/40)\n{}", berthd.log());
        victim.assert_untouched("commit");
        victim.assert_not_leaked(berthd.root(), "commit of a container swapping in links");
    });
}
