//! Ending a pod's cgroup subtree: every process in it killed, every directory
//! removed, in every mounted hierarchy (v2, or each v1 controller and the empty
//! v2 tree of a hybrid host). berthd needs this when a pod's shim is gone and so
//! can no longer kill what it supervised, and for the pod-level directory, which
//! runc never removes because it only creates the containers' ones below it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long killed processes get to leave their cgroups before removal is given up.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where each cgroup hierarchy is mounted, from /proc/self/mountinfo.
fn hierarchy_roots() -> io::Result<Vec<PathBuf>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mountinfo
        .lines()
        .filter_map(|line| {
            // Fields: id parent major:minor root mountpoint options ... - fstype source ...
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            let mountpoint = before.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(mountpoint))
        })
        .collect())
}

/// Directories of the subtree, children before parents.
fn subtree(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                subtree(&entry.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The directories of `path` (like `/berth/<pod>`) in every hierarchy, children
/// first.
fn directories(path: &str) -> io::Result<Vec<PathBuf>> {
    let relative = path.trim_start_matches('/');
    if relative.is_empty() || relative.split('/').any(|c| c == "..") {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("cgroup path {path:?} is not a pod's subtree")));
    }
    let mut dirs = Vec::new();
    for root in hierarchy_roots()? {
        let top = root.join(relative);
        if top.is_dir() {
            subtree(&top, &mut dirs);
        }
    }
    Ok(dirs)
}

/// SIGKILLs every process under the cgroupfs path `path`. Returns how many.
pub fn kill_all(path: &str) -> io::Result<usize> {
    let mut killed = 0;
    for dir in directories(path)? {
        for pid in procs(&dir) {
            // A pid read from cgroup.procs can exit and be reused before the kill;
            // within a pod's own cgroup that race only ever hits the pod's processes.
            let signalled = rustix::process::Pid::from_raw(pid)
                .is_some_and(|p| rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok());
            killed += usize::from(signalled);
        }
    }
    Ok(killed)
}

/// Kills what is left under `path` and removes its directories; a path that does
/// not exist is already done.
pub fn remove(path: &str) -> io::Result<()> {
    kill_all(path)?;
    let deadline = Instant::now() + EMPTY_TIMEOUT;
    for dir in directories(path)? {
        loop {
            match fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                // EBUSY: killed processes have not left yet.
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(io::Error::new(e.kind(), format!("removing cgroup {}: {e}", dir.display()))),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_outside_a_subtree() {
        assert!(remove("/").is_err());
        assert!(kill_all("/berth/../..").is_err());
    }

    #[test]
    fn kills_what_is_left_and_removes_every_hierarchy() {
        let path = format!("/berth-test-tree-{}", std::process::id());
        let roots = hierarchy_roots().unwrap();
        // The memory controller's hierarchy on v1 and hybrid hosts, the unified one on v2.
        let root = roots
            .iter()
            .find(|r| r.ends_with("memory"))
            .or_else(|| roots.iter().find(|r| r.join("cgroup.controllers").exists()))
            .expect("a mounted cgroup hierarchy")
            .clone();
        let leaf = root.join(path.trim_start_matches('/')).join("child");
        fs::create_dir_all(&leaf).unwrap();
        let mut child = std::process::Command::new("sleep").arg("600").spawn().unwrap();
        fs::write(leaf.join("cgroup.procs"), child.id().to_string()).unwrap();
        remove(&path).unwrap();
        assert!(!root.join(path.trim_start_matches('/')).exists());
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        assert_eq!(kill_all(&path).unwrap(), 0);
        remove(&path).unwrap();
    }
}
