//! Signalling an exec'd process with everything it started. A process without
//! a terminal takes its children along only if someone signals them too: SIGKILL
//! of `sh` leaves `sh -c 'sleep 1000 & wait'`'s sleep running, reparented to the
//! container's init. (A terminal's session gets SIGHUP from the kernel instead.)
//! runc makes each exec'd process the leader of its own session and process
//! group, so the group reaches what stayed in it, and the walk of /proc reaches
//! descendants that left it.

use std::collections::{HashMap, HashSet};

/// (parent pid, process group) of `pid`, from /proc/PID/stat.
fn parent_and_group(pid: i32) -> Option<(i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is parenthesised and may hold spaces or parentheses.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let _state = fields.next()?;
    let parent = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    Some((parent, group))
}

/// Every live descendant of `pid`, parents before their children.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
        if let Some((parent, _)) = parent_and_group(child) {
            children.entry(parent).or_default().push(child);
        }
    }
    let mut found = Vec::new();
    let mut seen = HashSet::from([pid]);
    let mut next = vec![pid];
    while let Some(parent) = next.pop() {
        for &child in children.get(&parent).into_iter().flatten() {
            if seen.insert(child) {
                found.push(child);
                next.push(child);
            }
        }
    }
    found
}

fn kill(pid: i32, signal: i32) -> bool {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Sends `signal` to `pid`, to its process group if it leads one, and to every
/// descendant. Returns whether `pid` itself was signalled (false: it is gone).
pub fn signal_tree(pid: i32, signal: i32) -> bool {
    if pid <= 1 {
        return false;
    }
    // Collected first: once the leader dies its children are no longer its own.
    let tree = descendants(pid);
    if parent_and_group(pid).is_some_and(|(_, group)| group == pid) {
        kill(-pid, signal);
    }
    for &process in &tree {
        kill(process, signal);
    }
    kill(pid, signal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_tree_is_killed_with_its_root() {
        // A group leader (as runc makes exec'd processes) with a child in its group
        // and a grandchild that left for a session of its own.
        let mut root = std::process::Command::new("sh")
            .args(["-c", "sleep 600 & setsid sleep 601 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = root.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while descendants(pid).len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let tree = descendants(pid);
        assert_eq!(tree.len(), 2, "{tree:?}");
        assert!(signal_tree(pid, libc::SIGKILL));
        root.wait().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let running = |p: &i32| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next()))
                .is_some_and(|state| state != Some('Z'))
        };
        while tree.iter().any(running) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!tree.iter().any(running), "descendants outlived the kill: {tree:?}");
        assert!(!signal_tree(pid, libc::SIGKILL), "a reaped root is gone");
    }
}
