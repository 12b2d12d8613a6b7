//! Who may look into berthd's root and state directories.
//!
//! Layers hold setuid-root binaries and world-writable directories exactly as the
//! image has them, and the database and the bundles' `config.json` hold the
//! environment of every container (often secrets). If other local users could reach
//! them, any of them could run a setuid binary straight from a snapshot (euid 0),
//! plant files in a layer a running container sees, or read those secrets. berthd
//! therefore does what containerd does since CVE-2021-41103:
//!
//! * root and state are [`TRAVERSE_ONLY`] (0711): nobody else may list them, but
//!   the CRI socket's group can still reach `<state>/berth.sock`;
//! * everything below them that is berthd's alone is [`PRIVATE_DIR`] (0700):
//!   content, snapshots (and each snapshot), the cache-mount directories, pods,
//!   containers (and each bundle), shims, builds, build contexts;
//! * the database and every file holding a container spec are [`PRIVATE_FILE`] (0600).
//!
//! Nothing run inside a container needs these paths: runc resolves the bundle and
//! its rootfs as root before `pivot_root`, and overlayfs checks the lower and
//! upper layers with the mounter's (root's) credentials, so a container running
//! as any uid keeps using its rootfs. The files bind-mounted into containers
//! (hosts, resolv.conf, hostname) keep their own 0644.
//!
//! [`prepare`] runs first at startup and also repairs the modes of a root and
//! state that an older berthd left world-readable (0755, 0644).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Root and state: others may pass through (to reach the socket) but not list.
pub const TRAVERSE_ONLY: u32 = 0o711;
/// Directories only berthd (root) enters.
pub const PRIVATE_DIR: u32 = 0o700;
/// Files only berthd (root) reads: the database, container specs.
pub const PRIVATE_FILE: u32 = 0o600;

/// The directories under root that are berthd's alone.
const PRIVATE_ROOT_DIRS: [&str; 3] = ["content", "snapshots", "build-cache-mounts"];
/// The directories under state that are berthd's alone. `runtime/` is absent: the
/// OCI runtime creates its own state directory (runc: 0700).
const PRIVATE_STATE_DIRS: [&str; 5] = ["pods", "containers", "shims", "builds", "build-contexts"];

#[derive(Debug, thiserror::Error)]
#[error("setting up {path}: {source}")]
pub struct LayoutError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn layout_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError { path: path.to_path_buf(), source }
}

/// Creates `root` and `state` and the private directories below them with the
/// modes above, and repairs the modes of whatever an older berthd created.
pub fn prepare(root: &Path, state: &Path) -> Result<(), LayoutError> {
    for (top, private) in [(root, &PRIVATE_ROOT_DIRS[..]), (state, &PRIVATE_STATE_DIRS[..])] {
        ensure_dir(top, TRAVERSE_ONLY).map_err(layout_err(top))?;
        for name in private {
            let dir = top.join(name);
            ensure_dir(&dir, PRIVATE_DIR).map_err(layout_err(&dir))?;
        }
    }
    // Below the private directories nothing is reachable any more; these are
    // repaired too so that each stays private on its own (a snapshot or a bundle
    // moved, or a parent's mode loosened by hand).
    let snapshots = root.join("snapshots");
    for entry in fs::read_dir(&snapshots).map_err(layout_err(&snapshots))? {
        let path = entry.map_err(layout_err(&snapshots))?.path();
        if path.is_dir() {
            set_mode(&path, PRIVATE_DIR).map_err(layout_err(&path))?;
        }
    }
    let containers = state.join("containers");
    for entry in fs::read_dir(&containers).map_err(layout_err(&containers))? {
        let bundle = entry.map_err(layout_err(&containers))?.path().join("bundle");
        if bundle.is_dir() {
            set_mode(&bundle, PRIVATE_DIR).map_err(layout_err(&bundle))?;
            let spec = bundle.join("config.json");
            if spec.is_file() {
                set_mode(&spec, PRIVATE_FILE).map_err(layout_err(&spec))?;
            }
        }
    }
    let database = root.join("meta.redb");
    if database.is_file() {
        set_mode(&database, PRIVATE_FILE).map_err(layout_err(&database))?;
    }
    Ok(())
}

/// Creates `path` (its missing parents with the default mode) directly with
/// `mode`, so that it is never reachable with a wider one, or sets `mode` on an
/// existing directory.
pub fn ensure_dir(path: &Path, mode: u32) -> io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match DirBuilder::new().mode(mode).create(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    // Explicitly: the umask may have narrowed the mode above, and an existing
    // directory keeps whatever mode it had.
    set_mode(path, mode)
}

/// A private directory (0700), created or repaired.
pub fn private_dir(path: &Path) -> io::Result<()> {
    ensure_dir(path, PRIVATE_DIR)
}

/// Creates a new file that only root may read (a spec, a record) and returns it
/// open for writing; `create_new`, so a name that exists is an error.
pub fn create_private_file(path: &Path) -> io::Result<fs::File> {
    let file = OpenOptions::new().write(true).create_new(true).mode(PRIVATE_FILE).open(path)?;
    file.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE))?;
    Ok(file)
}

/// Opens `path` for writing, created or truncated, as a file only root may read.
pub fn open_private_file(path: &Path) -> io::Result<fs::File> {
    let file = OpenOptions::new().write(true).create(true).truncate(true).mode(PRIVATE_FILE).open(path)?;
    // An existing file keeps its mode through open(2).
    file.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE))?;
    Ok(file)
}

/// Writes `bytes` to `path` (replacing it) as a file only root may read.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    open_private_file(path)?.write_all(bytes)
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    let current = fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
    if current != mode {
        if current & 0o077 & !mode != 0 {
            tracing::info!(path = %path.display(), "narrowing the mode from {current:o} to {mode:o}");
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_fresh_layout_has_the_documented_modes() {
        let base = tempfile::tempdir().unwrap();
        let (root, state) = (base.path().join("root"), base.path().join("state"));
        prepare(&root, &state).unwrap();
        assert_eq!((mode(&root), mode(&state)), (0o711, 0o711));
        for name in PRIVATE_ROOT_DIRS {
            assert_eq!(mode(&root.join(name)), 0o700, "{name}");
        }
        for name in PRIVATE_STATE_DIRS {
            assert_eq!(mode(&state.join(name)), 0o700, "{name}");
        }
    }

    #[test]
    fn an_old_world_readable_layout_is_repaired() {
        let base = tempfile::tempdir().unwrap();
        let (root, state) = (base.path().join("root"), base.path().join("state"));
        let open = |p: &Path, m| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        for dir in [root.join("snapshots/7/fs"), state.join("containers/c1/bundle/rootfs")] {
            fs::create_dir_all(&dir).unwrap();
        }
        fs::write(root.join("meta.redb"), b"").unwrap();
        fs::write(state.join("containers/c1/bundle/config.json"), b"{}").unwrap();
        for (path, m) in [(&root, 0o755), (&root.join("snapshots"), 0o755), (&root.join("snapshots/7"), 0o755)] {
            open(path, m);
        }
        open(&root.join("snapshots/7/fs"), 0o1777);
        open(&root.join("meta.redb"), 0o644);
        open(&state.join("containers/c1/bundle/config.json"), 0o644);

        prepare(&root, &state).unwrap();
        assert_eq!(mode(&root), 0o711);
        assert_eq!(mode(&root.join("snapshots")), 0o700);
        assert_eq!(mode(&root.join("snapshots/7")), 0o700);
        assert_eq!(mode(&root.join("snapshots/7/fs")), 0o1777, "a layer's own root keeps the image's mode");
        assert_eq!(mode(&root.join("meta.redb")), 0o600);
        assert_eq!(mode(&state.join("containers")), 0o700);
        assert_eq!(mode(&state.join("containers/c1/bundle")), 0o700);
        assert_eq!(mode(&state.join("containers/c1/bundle/config.json")), 0o600);
    }

    #[test]
    fn private_files_are_0600_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private_file(&path, b"new").unwrap();
        assert_eq!((mode(&path), fs::read(&path).unwrap()), (0o600, b"new".to_vec()));
        let fresh = dir.path().join("fresh");
        create_private_file(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);
    }
}
