//! Persistent network namespaces for pod sandboxes.
//!
//! A namespace lives as long as something references it. A pod's namespace must
//! outlive every process in it (the pause container may die and be recreated, berthd
//! restarts), so it is pinned by bind-mounting its nsfs inode onto a file in the pod's
//! state directory, exactly as `ip netns add` and containerd do.
//!
//! Namespace membership is per thread. Every switch happens on a short-lived OS thread
//! spawned for the purpose and never on a tokio worker: a worker that changed its
//! namespace would go back to the pool and run unrelated tasks in the pod's network.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::thread::{LinkNameSpaceType, UnshareFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {step}: {source}")]
    Io { path: PathBuf, step: &'static str, source: io::Error },
}

fn step_err(path: &Path, step: &'static str) -> impl FnOnce(io::Error) -> NetnsError {
    let path = path.to_path_buf();
    move |source| NetnsError::Io { path, step, source }
}

/// Makes `dir` (created if missing) a mount point with shared propagation, the way
/// iproute2 prepares `/run/netns`. Namespace bind mounts made below it, and above all
/// their unmounts, then propagate to mount namespaces copied from ours afterwards as
/// peers or slaves (systemd services with private mounts): without that, such a copy
/// would keep an unmounted namespace, its veth and its IP alive. Call it once at
/// start-up for the directory that holds the pods' state directories (where a
/// namespace's parent is not on a shared mount, every pod directory would otherwise
/// need to be one); idempotent, it never stacks a second mount on `dir`.
pub fn prepare_dir(dir: &Path) -> Result<(), NetnsError> {
    fs::create_dir_all(dir).map_err(step_err(dir, "creating the directory"))?;
    let make_shared = || mount(None, dir, None, libc::MS_SHARED | libc::MS_REC, None);
    match make_shared() {
        Ok(()) => Ok(()),
        // EINVAL: `dir` is not a mount point yet. Bind it onto itself to make it one;
        // MS_REC carries along whatever is already mounted below.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            mount(Some(dir), dir, None, libc::MS_BIND | libc::MS_REC, None)
                .map_err(step_err(dir, "bind-mounting the directory onto itself"))?;
            make_shared().map_err(step_err(dir, "making the mount shared"))
        }
        Err(e) => Err(step_err(dir, "making the mount shared")(e)),
    }
}

/// Creates a new network namespace with its loopback interface up and pins it by
/// bind-mounting it onto `path`, a file created here (its parent must exist). Fails if
/// `path` already exists, so that a live namespace is never mounted over. Blocks for
/// the few syscalls it makes; async callers run it on `spawn_blocking`.
pub fn create(path: &Path) -> Result<(), NetnsError> {
    // A mount point must exist before something can be mounted on it; create_new so
    // a stale or live namespace at `path` is reported rather than shadowed.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map_err(step_err(path, "creating the mount point"))?;
    let created = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("berth-netns-new".into())
            .spawn_scoped(scope, || unshare_and_pin(path))
            .map_err(step_err(path, "spawning the namespace thread"))?
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    if created.is_err() {
        // Nothing is mounted on the file when unshare_and_pin fails, and the
        // namespace itself died with the thread; only the empty file is left.
        let _ = fs::remove_file(path);
    }
    created
}

/// Runs on its own thread, which exits afterwards: the unshare below moves only this
/// thread, and no other code may ever run in the new namespace by accident.
fn unshare_and_pin(path: &Path) -> Result<(), NetnsError> {
    // SAFETY: unshare_unsafe is unsafe only for CLONE_FILES (descriptor tables split
    // between threads); CLONE_NEWNET touches nothing but this thread's network view.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }
        .map_err(|e| step_err(path, "unsharing the network namespace")(e.into()))?;
    // A fresh namespace has only `lo`, and down: 127.0.0.1 would not answer inside the
    // pod. The socket must be opened after the unshare so that the ioctl reaches this
    // namespace's `lo`, not the host's.
    bring_loopback_up().map_err(step_err(path, "bringing lo up"))?;
    // /proc/self/task/<tid>/ns/net names this thread's namespace (not the process
    // leader's, which stays on the host); bind-mounting that nsfs inode keeps the
    // namespace alive once the thread exits.
    let own_ns = PathBuf::from(format!("/proc/self/task/{}/ns/net", rustix::thread::gettid().as_raw_nonzero()));
    mount(Some(&own_ns), path, None, libc::MS_BIND, None).map_err(step_err(path, "bind-mounting the namespace"))
}

fn bring_loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2); the descriptor is owned by `socket` right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = socket.as_raw_fd();
    // SAFETY: ifreq is plain data; all-zero is a valid value (empty name, no flags).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // Read-modify-write so the other flags of lo (LOOPBACK, RUNNING) stay as they are.
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write an ifreq we own.
    if unsafe { libc::ioctl(raw, libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    if unsafe { libc::ioctl(raw, libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts and deletes the namespace file at `path`. Succeeds when it is already
/// gone, since CRI's StopPodSandbox and RemovePodSandbox are retried. The namespace
/// itself ends once no process is left in it.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    // MNT_DETACH: a process that still has the file open (a CNI plugin finishing, a
    // port-forward) must not make the removal fail; the kernel frees the namespace
    // once the last reference goes.
    detach(path).map_err(step_err(path, "unmounting the namespace"))?;
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(step_err(path, "deleting the mount point")(e)),
        _ => Ok(()),
    }
}

/// Whether a network namespace is pinned at `path`; false for a missing path or an
/// ordinary file (a mount point left behind by a crash between creating it and
/// mounting on it).
pub fn is_namespace(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|stats| stats.f_type == libc::NSFS_MAGIC)
}

/// Runs `f` on a thread that has joined the namespace pinned at `path`, and returns
/// its result. Sockets `f` opens belong to that namespace for their whole life, even
/// when used from other threads afterwards. A panic in `f` resumes in the caller.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let ns = File::open(path).map_err(step_err(path, "opening the namespace"))?;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("berth-netns-run".into())
            .spawn_scoped(scope, || {
                // Some(Network) makes the kernel refuse anything that is not a network
                // namespace (an ordinary file left at `path`, another namespace type).
                rustix::thread::move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(|e| step_err(path, "entering the namespace")(e.into()))?;
                Ok(f())
            })
            .map_err(step_err(path, "spawning the namespace thread"))?
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("path {} contains a NUL byte", path.display()))
    })
}

/// mount(2). Shared with the shm mount of `files`.
pub(super) fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(c_path).transpose()?;
    let target = c_path(target)?;
    let fstype = fstype.map(CString::new).transpose().map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let data = data.map(CString::new).transpose().map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string alive for the call.
    let rc = unsafe { libc::mount(ptr(&source), target.as_ptr(), ptr(&fstype), flags, ptr(&data).cast()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Lazily unmounts whatever is mounted on `target`. Ok(false) when nothing was
/// mounted there or `target` does not exist, which callers treat as already done.
pub(super) fn detach(target: &Path) -> io::Result<bool> {
    let target = c_path(target)?;
    // UMOUNT_NOFOLLOW: the pod directory is ours, but never follow a symlink planted
    // in it to unmount something else.
    // SAFETY: target is a NUL-terminated string alive for the call.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(false),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn net_ns_inode(path: &Path) -> u64 {
        fs::metadata(path).unwrap().ino()
    }

    fn is_mount_point(path: &Path) -> bool {
        let wanted = path.to_str().unwrap();
        fs::read_to_string("/proc/self/mountinfo").unwrap().lines().any(|line| line.split(' ').nth(4) == Some(wanted))
    }

    #[test]
    fn create_pins_a_new_namespace_with_loopback_up_and_remove_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netns");
        assert!(!is_namespace(&path));
        create(&path).unwrap();
        assert!(is_mount_point(&path));
        assert!(is_namespace(&path));
        let host_ns = net_ns_inode(Path::new("/proc/self/ns/net"));
        assert_ne!(net_ns_inode(&path), host_ns, "the file is the new namespace's nsfs inode");

        let (inside_ns, loopback_answers) = run_in(&path, || {
            let ns = net_ns_inode(Path::new("/proc/thread-self/ns/net"));
            // /sys shows the host's interfaces; the namespace's own view of lo comes
            // from a socket opened inside it.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let reached = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            (ns, reached)
        })
        .unwrap();
        assert_eq!(inside_ns, net_ns_inode(&path));
        assert!(loopback_answers, "127.0.0.1 answers inside the namespace, so lo is up");
        assert_eq!(net_ns_inode(Path::new("/proc/thread-self/ns/net")), host_ns, "the caller never moved");

        let err = create(&path).unwrap_err();
        assert!(err.to_string().contains("creating the mount point"), "{err}");
        assert!(is_mount_point(&path), "a failed create leaves the existing namespace alone");

        remove(&path).unwrap();
        assert!(!path.exists());
        assert!(!is_mount_point(&path));
        remove(&path).unwrap();
    }

    #[test]
    fn run_in_refuses_a_file_that_is_not_a_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain");
        fs::write(&path, b"").unwrap();
        assert!(!is_namespace(&path));
        let err = run_in(&path, || ()).unwrap_err();
        assert!(err.to_string().contains("entering the namespace"), "{err}");
        let missing = run_in(&dir.path().join("missing"), || ()).unwrap_err();
        assert!(missing.to_string().contains("opening the namespace"), "{missing}");
    }

    #[test]
    fn remove_unmounts_a_namespace_whose_file_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netns");
        create(&path).unwrap();
        let held = File::open(&path).unwrap();
        remove(&path).unwrap();
        assert!(!path.exists());
        drop(held);
    }

    #[test]
    fn prepare_dir_makes_a_shared_mount_point_once() {
        let dir = tempfile::tempdir().unwrap();
        let pods = dir.path().join("pods");
        let mounts_of = |p: &Path| {
            let wanted = p.to_str().unwrap().to_string();
            fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .filter(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        prepare_dir(&pods).unwrap();
        prepare_dir(&pods).unwrap();
        let mounts = mounts_of(&pods);
        assert_eq!(mounts.len(), 1, "one mount, not stacked: {mounts:?}");
        assert!(mounts[0].contains(" shared:"), "{}", mounts[0]);

        let netns = pods.join("netns");
        create(&netns).unwrap();
        remove(&netns).unwrap();
        assert!(detach(&pods).unwrap());
        assert!(mounts_of(&pods).is_empty());
    }
}
