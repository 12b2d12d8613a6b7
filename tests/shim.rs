//! berth-shim end to end: the real shim binary, real runc, busybox containers.
//! Needs root (runc, cgroups).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth::shim::{CreateTask, ShimClient, ShimError, SpawnOptions, TaskStatus};
use serde_json::{Value, json};

const RUNC: &str = "/usr/sbin/runc";
const APPLETS: &[&str] = &["sh", "echo", "sleep", "head", "tr", "cat", "tty", "printf", "true", "stty"];

/// Where a test pod's files go, and the cgroup parent of its containers.
struct Layout {
    dir: PathBuf,
    cgroup_parent: String,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        Layout { dir: dir.to_path_buf(), cgroup_parent: format!("berth-test-{:08x}", rand::random::<u32>()) }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    fn cgroup_path(&self, id: &str) -> String {
        format!("/{}/{id}", self.cgroup_parent)
    }

    /// A busybox bundle running `args`; `adjust` edits its config.json.
    fn bundle(&self, id: &str, args: &[&str], adjust: impl FnOnce(&mut Value)) -> PathBuf {
        let bundle = self.dir.join("bundles").join(id);
        let bin = bundle.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let status = Command::new(RUNC).arg("spec").arg("--bundle").arg(&bundle).status().unwrap();
        assert!(status.success(), "runc spec");
        let config_path = bundle.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        config["linux"]["cgroupsPath"] = json!(self.cgroup_path(id));
        adjust(&mut config);
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        bundle
    }
}

/// One pod: a shim with its own state dir, runc root and cgroup parent.
struct Pod {
    layout: Layout,
    shim: ShimClient,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Pod {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.layout
    }
}

impl Pod {
    async fn new() -> Pod {
        let dir = tempfile::tempdir().unwrap();
        let shim = ShimClient::spawn(&spawn_options(dir.path())).await.expect("spawning the shim");
        Pod { layout: Layout::new(dir.path()), shim, _dir: dir }
    }

    async fn run(&self, id: &str, args: &[&str], adjust: impl FnOnce(&mut Value)) -> u32 {
        let bundle = self.bundle(id, args, adjust);
        let task = CreateTask { id: id.into(), bundle, terminal: false, stdin: false, log_path: Some(self.log_path(id)) };
        self.shim.create(task).await.expect("create");
        self.shim.start(id).await.expect("start")
    }

    fn log_entries(&self, id: &str) -> Vec<(String, String, String)> {
        read_log(&self.log_path(id))
    }
}

/// Whatever a failed test left behind goes: containers, the shim, cgroups.
impl Drop for Layout {
    fn drop(&mut self) {
        let root = self.dir.join("runc");
        if let Ok(listed) = Command::new(RUNC).arg("--root").arg(&root).args(["list", "-q"]).output() {
            for id in String::from_utf8_lossy(&listed.stdout).lines() {
                let _ = Command::new(RUNC).arg("--root").arg(&root).args(["delete", "--force", id]).status();
            }
        }
        if let Some(pid) = std::fs::read_to_string(self.state_dir().join("shim.pid")).ok().and_then(|pid| pid.trim().parse::<i32>().ok()) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        remove_cgroups(&self.cgroup_parent);
    }
}

fn spawn_options(dir: &Path) -> SpawnOptions {
    SpawnOptions {
        // BERTH_SHIM_BINARY measures another build, e.g. the release one, with these tests.
        shim_binary: std::env::var_os("BERTH_SHIM_BINARY").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_BIN_EXE_berth-shim").into()),
        pod_id: "test-pod".into(),
        state_dir: dir.join("state"),
        runtime_binary: RUNC.into(),
        runtime_root: dir.join("runc"),
    }
}

fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Removes a test's cgroup parent and its children in every hierarchy.
fn remove_cgroups(parent: &str) {
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if !cgroup_v2() {
        roots = std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten().map(|entry| entry.path()).collect();
    }
    for root in roots {
        let parent = root.join(parent);
        if let Ok(children) = std::fs::read_dir(&parent) {
            for child in children.flatten().filter(|entry| entry.path().is_dir()) {
                let _ = std::fs::remove_dir(child.path());
            }
        }
        let _ = std::fs::remove_dir(&parent);
    }
}

/// A CRI log as (stream, tag, message) triples, checking every line's shape.
fn read_log(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut fields = line.splitn(4, ' ');
            let (time, stream, tag) = (fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap());
            let message = fields.next().unwrap_or("");
            assert!(time.ends_with('Z') && time.contains('T') && time.len() >= 20, "timestamp {time:?} in {line:?}");
            assert!(stream == "stdout" || stream == "stderr", "stream in {line:?}");
            assert!(tag == "F" || tag == "P", "tag in {line:?}");
            (stream.to_string(), tag.to_string(), message.to_string())
        })
        .collect()
}

fn entry(stream: &str, tag: &str, message: &str) -> (String, String, String) {
    (stream.into(), tag.into(), message.into())
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn process(args: &[&str]) -> oci_spec::runtime::Process {
    let mut process = oci_spec::runtime::Process::default();
    process.set_args(Some(args.iter().map(|arg| arg.to_string()).collect()));
    process.set_env(Some(vec!["PATH=/bin".into()]));
    process.set_cwd("/".into());
    process.set_capabilities(None);
    process.set_rlimits(None);
    process.set_apparmor_profile(None);
    process
}

#[tokio::test]
async fn exit_code_and_both_streams_reach_the_cri_log() {
    let pod = Pod::new().await;
    pod.run("exits", &["sh", "-c", "echo hi; echo err >&2; exit 3"], |_| {}).await;
    let exit = pod.shim.wait("exits").await.unwrap();
    assert_eq!((exit.code, exit.oom_killed), (3, false));
    let mut entries = pod.log_entries("exits");
    entries.sort();
    assert_eq!(entries, [entry("stderr", "F", "err"), entry("stdout", "F", "hi")]);

    let state = pod.shim.state("exits").await.unwrap();
    assert_eq!((state.status, state.exit.map(|exit| exit.code)), (TaskStatus::Stopped, Some(3)));
    let deleted = pod.shim.delete("exits").await.unwrap().expect("an exit");
    assert_eq!(deleted.code, 3);
    assert!(matches!(pod.shim.state("exits").await, Err(ShimError::NotFound(_))));
    assert!(!pod.state_dir().join("tasks/exits").exists(), "the container's shim files are removed");
}

#[tokio::test]
async fn long_lines_are_split_and_an_unterminated_tail_is_partial() {
    let pod = Pod::new().await;
    pod.run("long", &["sh", "-c", "head -c 40000 /dev/zero | tr '\\0' a; echo; printf tail"], |_| {}).await;
    assert_eq!(pod.shim.wait("long").await.unwrap().code, 0);
    let entries = pod.log_entries("long");
    let shape: Vec<(&str, usize)> = entries.iter().map(|(_, tag, message)| (tag.as_str(), message.len())).collect();
    assert_eq!(shape, [("P", 16384), ("P", 16384), ("F", 40000 - 2 * 16384), ("P", 4)]);
    assert_eq!(entries[3].2, "tail");
    assert!(entries[..3].iter().all(|(stream, _, message)| stream == "stdout" && message.bytes().all(|b| b == b'a')));
}

#[tokio::test]
async fn kill_reaches_the_container() {
    let pod = Pod::new().await;
    let trapping = "trap 'echo terminated; exit 143' TERM; echo ready; while true; do sleep 1; done";
    pod.run("trap", &["sh", "-c", trapping], |_| {}).await;
    // Until its trap is set, a pid namespace's init ignores SIGTERM.
    eventually("the trap to be set", || pod.log_entries("trap").contains(&entry("stdout", "F", "ready"))).await;
    pod.run("sleeper", &["sleep", "1000"], |_| {}).await;
    assert_eq!(pod.shim.state("sleeper").await.unwrap().status, TaskStatus::Running);

    pod.shim.kill("trap", libc::SIGTERM as u32, false).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(5), pod.shim.wait("trap")).await.expect("exits on SIGTERM").unwrap();
    assert_eq!(exit.code, 143);
    assert!(pod.log_entries("trap").contains(&entry("stdout", "F", "terminated")));

    // As a pid namespace's init, sleep ignores SIGTERM; SIGKILL to all ends it.
    pod.shim.kill("sleeper", libc::SIGKILL as u32, true).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(5), pod.shim.wait("sleeper")).await.expect("exits on SIGKILL").unwrap();
    assert_eq!(exit.code, 137);
    assert!(matches!(pod.shim.kill("sleeper", libc::SIGTERM as u32, false).await, Err(ShimError::NotFound(_))));
    for id in ["trap", "sleeper"] {
        pod.shim.delete(id).await.unwrap();
    }
    pod.shim.clone().shutdown().await.expect("an empty shim shuts down");
    assert!(!pod.state_dir().join("shim.sock").exists());
}

#[tokio::test]
async fn exec_sync_collects_output_and_exit_codes() {
    let pod = Pod::new().await;
    pod.run("box", &["sleep", "1000"], |_| {}).await;

    let output = pod.shim.exec_sync("box", &process(&["echo", "x"]), Some(Duration::from_secs(10))).await.unwrap();
    assert_eq!((output.stdout.as_slice(), output.stderr.as_slice(), output.exit_code, output.timed_out), (&b"x\n"[..], &b""[..], 0, false));

    let output = pod.shim.exec_sync("box", &process(&["sh", "-c", "echo oops >&2; exit 7"]), None).await.unwrap();
    assert_eq!((output.stderr.as_slice(), output.exit_code), (&b"oops\n"[..], 7));

    let started = Instant::now();
    let output = pod.shim.exec_sync("box", &process(&["sh", "-c", "echo begun; sleep 100"]), Some(Duration::from_secs(1))).await.unwrap();
    assert!(output.timed_out);
    assert_eq!((output.stdout.as_slice(), output.exit_code), (&b"begun\n"[..], 137));
    assert!(started.elapsed() < Duration::from_secs(8), "a timed-out exec ends promptly, took {:?}", started.elapsed());

    let leftovers: Vec<_> = std::fs::read_dir(pod.state_dir().join("io")).unwrap().flatten().map(|entry| entry.file_name()).collect();
    assert!(leftovers.is_empty(), "exec FIFOs are removed: {leftovers:?}");
    assert!(matches!(pod.shim.exec_sync("nope", &process(&["true"]), None).await, Err(ShimError::NotFound(_))));
    match pod.shim.exec_sync("box", &process(&["no-such-command"]), None).await {
        Err(ShimError::Shim { message, .. }) => assert!(message.contains("no-such-command"), "the runtime's reason is passed on: {message}"),
        other => panic!("{other:?}"),
    }
    pod.shim.kill_and_shutdown().await.unwrap();
    assert!(!pod.state_dir().join("shim.pid").exists());
}

#[tokio::test]
async fn stats_and_live_resource_updates_use_the_container_cgroup() {
    let pod = Pod::new().await;
    pod.run("stats", &["sh", "-c", "sleep 1000 & sleep 1000"], |_| {}).await;
    // The shell forks its background sleep a moment after the start.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = pod.shim.stats("stats").await.unwrap();
        if stats.pids == 2 || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(stats.memory_usage > 0 && stats.memory_working_set <= stats.memory_usage, "{stats:?}");
    assert_eq!(stats.pids, 2, "{stats:?}");
    assert!(stats.timestamp_nanos > 0);

    let mut resources = oci_spec::runtime::LinuxResources::default();
    let mut memory = oci_spec::runtime::LinuxMemory::default();
    memory.set_limit(Some(64 * 1024 * 1024));
    resources.set_memory(Some(memory));
    pod.shim.update("stats", &resources).await.unwrap();
    let limit_file = if cgroup_v2() {
        format!("/sys/fs/cgroup{}/memory.max", pod.cgroup_path("stats"))
    } else {
        format!("/sys/fs/cgroup/memory{}/memory.limit_in_bytes", pod.cgroup_path("stats"))
    };
    assert_eq!(std::fs::read_to_string(limit_file).unwrap().trim(), "67108864");
    eprintln!("cgroup {}: {stats:?}", if cgroup_v2() { "v2" } else { "v1" });
}

#[tokio::test]
async fn a_container_over_its_memory_limit_is_oom_killed() {
    let pod = Pod::new().await;
    let limit = 8 * 1024 * 1024;
    pod.run("hog", &["sh", "-c", "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived"], |config| {
        config["linux"]["resources"]["memory"] = json!({ "limit": limit, "swap": limit });
    })
    .await;
    let exit = tokio::time::timeout(Duration::from_secs(30), pod.shim.wait("hog")).await.expect("the hog ends").unwrap();
    assert!(exit.oom_killed, "{exit:?}");
    assert_ne!(exit.code, 0);
    let deleted = pod.shim.delete("hog").await.unwrap().unwrap();
    assert!(deleted.oom_killed);
}

#[tokio::test]
async fn a_terminal_goes_to_the_log_and_stdin_and_log_reopening_work() {
    let pod = Pod::new().await;
    let bundle = pod.bundle("tty", &["sh", "-c", "tty; read line; echo got $line"], |config| {
        config["process"]["terminal"] = json!(true);
    });
    let task = CreateTask { id: "tty".into(), bundle, terminal: true, stdin: true, log_path: Some(pod.log_path("tty")) };
    pod.shim.create(task).await.unwrap();
    pod.shim.start("tty").await.unwrap();
    eventually("the terminal's name in the log", || pod.log_entries("tty").iter().any(|(_, _, message)| message.starts_with("/dev/pts/"))).await;

    let rotated = pod.log_path("tty").with_extension("log.1");
    std::fs::rename(pod.log_path("tty"), &rotated).unwrap();
    pod.shim.reopen_log("tty").await.unwrap();
    std::fs::write(pod.shim.stdin_path("tty"), "ping\n").unwrap();
    assert_eq!(pod.shim.wait("tty").await.unwrap().code, 0);
    let after: Vec<String> = pod.log_entries("tty").into_iter().map(|(stream, _, message)| format!("{stream} {message}")).collect();
    assert!(after.contains(&"stdout got ping".to_string()), "{after:?}");
    assert!(read_log(&rotated).iter().all(|(_, _, message)| !message.contains("got")), "nothing after the rotation goes to the old file");
}

#[tokio::test]
async fn stdin_closes_terminals_resize_and_pids_list_the_container() {
    let pod = Pod::new().await;
    let with_stdin = |id: &str, bundle: PathBuf, terminal: bool| CreateTask { id: id.into(), bundle, terminal, stdin: true, log_path: Some(pod.log_path(id)) };

    let bundle = pod.bundle("cat", &["cat"], |_| {});
    pod.shim.create(with_stdin("cat", bundle, false)).await.unwrap();
    pod.shim.start("cat").await.unwrap();
    std::fs::write(pod.shim.stdin_path("cat"), "hello\n").unwrap();
    eventually("cat to echo its input", || !pod.log_entries("cat").is_empty()).await;
    pod.shim.close_stdin("cat").await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(5), pod.shim.wait("cat")).await.expect("cat ends at end of input").unwrap();
    assert_eq!(exit.code, 0);
    assert_eq!(pod.log_entries("cat"), [entry("stdout", "F", "hello")]);

    let bundle = pod.bundle("tty", &["sh", "-c", "read go; stty size"], |config| config["process"]["terminal"] = json!(true));
    pod.shim.create(with_stdin("tty", bundle, true)).await.unwrap();
    pod.shim.start("tty").await.unwrap();
    pod.shim.resize_pty("tty", 123, 45).await.unwrap();
    std::fs::write(pod.shim.stdin_path("tty"), "go\n").unwrap();
    assert_eq!(pod.shim.wait("tty").await.unwrap().code, 0);
    assert!(pod.log_entries("tty").contains(&entry("stdout", "F", "45 123")), "{:?}", pod.log_entries("tty"));
    assert!(matches!(pod.shim.resize_pty("cat", 80, 24).await, Err(ShimError::FailedPrecondition(_))), "no terminal to resize");

    let init = pod.run("pair", &["sh", "-c", "sleep 1000 & sleep 1000"], |_| {}).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let pids = loop {
        let pids = pod.shim.pids("pair").await.unwrap();
        if pids.len() == 2 || Instant::now() > deadline {
            break pids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(pids.contains(&init) && pids.len() == 2, "{pids:?}");
}

#[tokio::test]
async fn the_task_api_answers_under_containerds_v2_name() {
    use containerd_shim_protos::{api, protobuf::Message, ttrpc};
    let pod = Pod::new().await;
    let init = pod.run("box", &["sleep", "1000"], |_| {}).await;
    let socket = format!("unix://{}", pod.state_dir().join("shim.sock").display());
    let client = ttrpc::r#async::Client::connect(&socket).await.unwrap();
    let mut request = ttrpc::Request::new();
    request.set_service("containerd.task.v2.Task".into());
    request.set_method("Connect".into());
    request.payload = api::ConnectRequest { id: "box".into(), ..Default::default() }.write_to_bytes().unwrap();
    let response = client.request(request).await.unwrap();
    let connected = api::ConnectResponse::parse_from_bytes(&response.payload).unwrap();
    assert_eq!((connected.shim_pid, connected.task_pid), (pod.shim.shim_pid(), init));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(pod.state_dir().join("shim.sock")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "only root may talk to the shim");
}

#[tokio::test]
async fn bad_requests_are_refused_by_name() {
    let pod = Pod::new().await;
    let missing = CreateTask { id: "ghost".into(), bundle: "/nonexistent".into(), terminal: false, stdin: false, log_path: None };
    match pod.shim.create(missing).await {
        Err(ShimError::InvalidArgument(message)) => assert!(message.contains("bundle"), "{message}"),
        other => panic!("{other:?}"),
    }
    let bundle = pod.bundle("valid", &["true"], |_| {});
    for id in ["../escape", "spaced out", ""] {
        let task = CreateTask { id: id.into(), bundle: bundle.clone(), terminal: false, stdin: false, log_path: None };
        assert!(matches!(pod.shim.create(task).await, Err(ShimError::InvalidArgument(message)) if message.contains("id")), "{id:?}");
    }

    pod.run("twice", &["sleep", "1000"], |_| {}).await;
    let again = CreateTask { id: "twice".into(), bundle: pod.bundle("twice-again", &["true"], |_| {}), terminal: false, stdin: false, log_path: None };
    assert!(matches!(pod.shim.create(again).await, Err(ShimError::AlreadyExists(_))));
    assert!(matches!(pod.shim.delete("twice").await, Err(ShimError::FailedPrecondition(_))), "a running container is not deleted");
    assert!(matches!(pod.shim.wait("nobody").await, Err(ShimError::NotFound(_))));
    assert!(matches!(pod.shim.clone().shutdown().await, Err(ShimError::FailedPrecondition(_))), "a shim with containers stays");
    assert_eq!(pod.shim.state("twice").await.unwrap().status, TaskStatus::Running);
}

#[tokio::test]
async fn a_created_container_can_be_deleted_without_starting() {
    let pod = Pod::new().await;
    let bundle = pod.bundle("unstarted", &["sleep", "1000"], |_| {});
    let task = CreateTask { id: "unstarted".into(), bundle, terminal: false, stdin: false, log_path: None };
    let pid = pod.shim.create(task).await.unwrap();
    let state = pod.shim.state("unstarted").await.unwrap();
    assert_eq!((state.status, state.pid), (TaskStatus::Created, pid));
    pod.shim.delete("unstarted").await.unwrap();
    let listed = Command::new(RUNC).arg("--root").arg(pod.dir.join("runc")).args(["list", "-q"]).output().unwrap();
    assert!(listed.stdout.is_empty(), "runc still lists {:?}", String::from_utf8_lossy(&listed.stdout));
}

/// Variables through which `helper_acting_as_berthd` learns what to run.
const HELPER_DIR: &str = "BERTH_SHIM_TEST_HELPER_DIR";
const HELPER_BUNDLE: &str = "BERTH_SHIM_TEST_HELPER_BUNDLE";

/// Plays berthd for `the_shim_outlives_its_parent`, in a process of its own:
/// spawns a shim, runs a container, reports, and waits to be killed. Without
/// its environment variables (an ordinary test run) it has nothing to do.
#[tokio::test]
async fn helper_acting_as_berthd() {
    let (Ok(dir), Ok(bundle)) = (std::env::var(HELPER_DIR), std::env::var(HELPER_BUNDLE)) else {
        return;
    };
    let shim = ShimClient::spawn(&spawn_options(Path::new(&dir))).await.unwrap();
    let log_path = Some(Path::new(&dir).join("survivor.log"));
    let task = CreateTask { id: "survivor".into(), bundle: bundle.into(), terminal: false, stdin: false, log_path };
    shim.create(task).await.unwrap();
    let pid = shim.start("survivor").await.unwrap();
    println!("started {pid}");
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

#[tokio::test]
async fn the_shim_outlives_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let bundle = layout.bundle("survivor", &["sh", "-c", "echo alive; sleep 1000"], |_| {});
    let mut helper = Helper(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "helper_acting_as_berthd", "--nocapture", "--test-threads=1"])
            .env(HELPER_DIR, dir.path())
            .env(HELPER_BUNDLE, &bundle)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(helper.0.stdout.take().unwrap()).lines();
    // The harness prints the test's name on the same line, before the report.
    let started = lines.find_map(|line| Some(line.ok()?.split_once("started ")?.1.to_string())).expect("the helper started a container");
    let container_pid: u32 = started.trim().parse().unwrap();
    drop(helper);

    let shim = ShimClient::connect(&layout.state_dir()).await.expect("the shim outlived the helper");
    let state = shim.state("survivor").await.unwrap();
    assert_eq!((state.status, state.pid), (TaskStatus::Running, container_pid));
    let session = std::fs::read_to_string(format!("/proc/{}/stat", shim.shim_pid())).unwrap();
    let fields: Vec<&str> = session.rsplit(')').next().unwrap().split_whitespace().collect();
    assert_eq!(fields[3], shim.shim_pid().to_string(), "the shim leads its own session");

    // Rss counts the binary's clean pages, which every shim on the node shares; Pss
    // splits them among their users and Pss_Anon is the shim's own memory.
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", shim.shim_pid())).unwrap();
    let kilobytes = |key: &str| rollup.lines().find_map(|line| line.strip_prefix(key)?.split_whitespace().next().map(String::from)).unwrap_or_default();
    eprintln!(
        "berth-shim with one running container: Rss {} kB, Pss {} kB, Pss_Anon {} kB ({})",
        kilobytes("Rss:"),
        kilobytes("Pss:"),
        kilobytes("Pss_Anon:"),
        std::env::var("BERTH_SHIM_BINARY").unwrap_or_else(|_| "debug build".into())
    );

    shim.kill_and_shutdown().await.unwrap();
    assert!(read_log(&layout.log_path("survivor")).contains(&entry("stdout", "F", "alive")));
    assert!(matches!(ShimClient::connect(&layout.state_dir()).await, Err(ShimError::Gone(_))));
}

/// The helper process, killed with SIGKILL when dropped, as berthd would die.
struct Helper(std::process::Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pid file outlives its shim, and after a reboot or a long time its number may
/// belong to any process. Connecting through it must not adopt that process, and
/// nothing berthd does to a shim it gave up on may reach it.
#[tokio::test]
async fn a_process_that_reused_the_shims_pid_is_left_alone() {
    let pod = Pod::new().await;
    let mut bystander = Command::new("sleep").arg("600").spawn().unwrap();
    // A state directory whose socket still answers (the live shim's) but whose
    // pid file names an unrelated process: the pid was reused.
    let reused = pod.dir.join("reused");
    std::fs::create_dir_all(&reused).unwrap();
    std::os::unix::fs::symlink(pod.state_dir().join("shim.sock"), reused.join("shim.sock")).unwrap();
    std::fs::write(reused.join("shim.pid"), bystander.id().to_string()).unwrap();
    match ShimClient::connect(&reused).await {
        Err(ShimError::Gone(message)) => assert!(message.contains("reused"), "{message}"),
        Err(other) => panic!("expected Gone, got {other:?}"),
        Ok(client) => {
            // Shutting the shim down waits for the pid to exit, then SIGKILLs it.
            let _ = client.kill_and_shutdown().await;
        }
    }
    let alive = bystander.try_wait().unwrap().is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(alive, "the process that took the shim's pid was killed");
    pod.shim.kill_and_shutdown().await.unwrap();
}
