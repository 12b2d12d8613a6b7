//! The mount table of a container: containerd's default kernel filesystems,
//! the pod's files (/etc/hostname, /etc/hosts, /etc/resolv.conf, /dev/shm) and
//! the user's bind mounts with their propagation, ordered so that a parent is
//! mounted before anything below it.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount as OciMount;

use super::SpecError;
use super::types::{Mount, Propagation};

const SHM: &str = "/dev/shm";

/// A container's mounts and the rootfs propagation that their propagation
/// modes need (`rshared`/`rslave` mounts only propagate below a mount that is
/// itself shared or slave).
#[derive(Debug)]
pub(crate) struct MountTable {
    pub(crate) mounts: Vec<OciMount>,
    pub(crate) rootfs_propagation: Option<&'static str>,
}

/// Where the container's /dev/shm comes from.
#[derive(Debug, Clone)]
pub(crate) enum Shm {
    /// A tmpfs of the container's own.
    Private,
    /// A bind mount of the pod's (or, with host IPC, the host's).
    Bind(PathBuf),
}

/// The pod-provided files and the kind of container they go into.
#[derive(Debug)]
pub(crate) struct PodFiles<'a> {
    pub(crate) hostname: &'a Path,
    pub(crate) hosts: &'a Path,
    pub(crate) resolv_conf: &'a Path,
    pub(crate) files_readonly: bool,
    pub(crate) shm: Shm,
    pub(crate) shm_readonly: bool,
    /// Privileged containers get writable sysfs and cgroupfs.
    pub(crate) privileged: bool,
}

fn oci_mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> OciMount {
    let mut mount = OciMount::default();
    mount.set_destination(PathBuf::from(destination));
    mount.set_typ(Some(typ.to_string()));
    mount.set_source(Some(source.to_path_buf()));
    mount.set_options(Some(options.iter().map(|option| option.to_string()).collect()));
    mount
}

/// containerd's default kernel filesystems, without /run (CRI leaves the
/// image's /run alone) and with /sys/fs/cgroup added read-only.
fn default_mounts(privileged: bool, private_shm: bool) -> Vec<OciMount> {
    let sys_access = if privileged { "rw" } else { "ro" };
    let mut mounts = vec![
        oci_mount("/proc", "proc", Path::new("proc"), &["nosuid", "noexec", "nodev"]),
        oci_mount("/dev", "tmpfs", Path::new("tmpfs"), &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        oci_mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
    ];
    if private_shm {
        mounts.push(oci_mount(
            SHM,
            "tmpfs",
            Path::new("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ));
    }
    mounts.extend([
        oci_mount("/dev/mqueue", "mqueue", Path::new("mqueue"), &["nosuid", "noexec", "nodev"]),
        oci_mount("/sys", "sysfs", Path::new("sysfs"), &["nosuid", "noexec", "nodev", sys_access]),
        oci_mount(
            "/sys/fs/cgroup",
            "cgroup",
            Path::new("cgroup"),
            &["nosuid", "noexec", "nodev", "relatime", sys_access],
        ),
    ]);
    mounts
}

fn bind(destination: &Path, source: &Path, propagation: &str, readonly: bool) -> OciMount {
    let mut mount = oci_mount("/", "bind", source, &["rbind", propagation, if readonly { "ro" } else { "rw" }]);
    mount.set_destination(destination.to_path_buf());
    mount
}

/// The mounts of a container: defaults, then pod files and user mounts sorted
/// by depth. A user mount at a default's or pod file's path replaces it; a user
/// mount of /dev replaces every default below /dev.
pub(crate) fn mount_table(pod: &PodFiles, user_mounts: &[Mount]) -> Result<MountTable, SpecError> {
    let mut requested: Vec<(usize, &Mount, PathBuf)> = Vec::new();
    let mut user_destinations = HashSet::new();
    for (index, mount) in user_mounts.iter().enumerate() {
        let destination = clean_absolute(&mount.container_path)
            .ok_or_else(|| SpecError::invalid(format!("mounts[{index}].container_path"), "must be an absolute path"))?;
        if !user_destinations.insert(destination.clone()) {
            return Err(SpecError::invalid(
                format!("mounts[{index}].container_path"),
                format!("{} is mounted more than once", destination.display()),
            ));
        }
        requested.push((index, mount, destination));
    }
    let user_mounts_dev = user_destinations.contains(Path::new("/dev"));
    let replaced = |destination: &Path| {
        user_destinations.contains(destination) || (user_mounts_dev && destination.starts_with("/dev"))
    };

    let mut pod_mounts = Vec::new();
    for (destination, source) in
        [("/etc/hostname", pod.hostname), ("/etc/hosts", pod.hosts), ("/etc/resolv.conf", pod.resolv_conf)]
    {
        if !replaced(Path::new(destination)) {
            pod_mounts.push(bind(Path::new(destination), source, "rprivate", pod.files_readonly));
        }
    }
    if let Shm::Bind(source) = &pod.shm
        && !replaced(Path::new(SHM))
    {
        pod_mounts.push(bind(Path::new(SHM), source, "rprivate", pod.shm_readonly));
    }

    let mut mounts: Vec<OciMount> = default_mounts(pod.privileged, matches!(pod.shm, Shm::Private))
        .into_iter()
        .filter(|mount| mount.destination() != Path::new("/dev") || !user_mounts_dev)
        .filter(|mount| !replaced(mount.destination()))
        .collect();

    let mut rootfs_propagation = None;
    let mut ordered = pod_mounts;
    let mountinfo = MountInfo::lazy();
    for (index, mount, destination) in requested {
        ordered.push(user_bind(index, mount, &destination, &mountinfo, &mut rootfs_propagation)?);
    }
    // Stable: among equal depths the pod's files come first, then the user's
    // mounts in the order given.
    ordered.sort_by_key(|mount| mount.destination().components().count());
    mounts.extend(ordered);
    Ok(MountTable { mounts, rootfs_propagation })
}

fn user_bind(
    index: usize,
    mount: &Mount,
    destination: &Path,
    mountinfo: &MountInfo,
    rootfs_propagation: &mut Option<&'static str>,
) -> Result<OciMount, SpecError> {
    let field = |name: &str| format!("mounts[{index}].{name}");
    // The bind follows symlinks on the host, as the kernel would; the
    // resolved path is what gets checked and mounted.
    let source = std::fs::canonicalize(&mount.host_path)
        .map_err(|error| SpecError::invalid(field("host_path"), format!("{}: {error}", mount.host_path.display())))?;
    if mount.recursive_read_only {
        if !mount.readonly {
            return Err(SpecError::invalid(field("recursive_read_only"), "needs readonly"));
        }
        if mount.propagation != Propagation::Private {
            return Err(SpecError::invalid(field("recursive_read_only"), "needs private propagation"));
        }
    }
    let propagation = match mount.propagation {
        Propagation::Private => "rprivate",
        Propagation::HostToContainer => {
            let peer = mountinfo.propagation_of(&source)?;
            if !peer.shared && !peer.slave {
                return Err(SpecError::invalid(
                    field("propagation"),
                    format!(
                        "{} is on mount {}, which is neither shared nor slave: host mounts cannot reach the container",
                        source.display(),
                        peer.mount_point.display()
                    ),
                ));
            }
            if rootfs_propagation.is_none() {
                *rootfs_propagation = Some("rslave");
            }
            "rslave"
        }
        Propagation::Bidirectional => {
            let peer = mountinfo.propagation_of(&source)?;
            if !peer.shared {
                return Err(SpecError::invalid(
                    field("propagation"),
                    format!(
                        "{} is on mount {}, which is not shared: mounts cannot propagate both ways",
                        source.display(),
                        peer.mount_point.display()
                    ),
                ));
            }
            *rootfs_propagation = Some("rshared");
            "rshared"
        }
    };
    let mut bind = bind(destination, &source, propagation, mount.readonly);
    if mount.recursive_read_only
        && let Some(options) = bind.options_mut()
    {
        options.push("rro".to_string());
    }
    Ok(bind)
}

/// `/a/./b/../c` → `/a/c`; `None` unless absolute.
pub(crate) fn clean_absolute(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut clean = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::ParentDir => {
                clean.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(clean)
}

struct Peer {
    mount_point: PathBuf,
    shared: bool,
    slave: bool,
}

/// berthd's /proc/self/mountinfo, read on first need only (most pods use
/// private propagation).
struct MountInfo(std::cell::OnceCell<Result<String, String>>);

impl MountInfo {
    fn lazy() -> MountInfo {
        MountInfo(std::cell::OnceCell::new())
    }

    /// The propagation of the mount that holds `path`: the entry with the
    /// longest mount point containing it (the last one when stacked).
    fn propagation_of(&self, path: &Path) -> Result<Peer, SpecError> {
        let text = self
            .0
            .get_or_init(|| std::fs::read_to_string("/proc/self/mountinfo").map_err(|error| error.to_string()))
            .as_ref()
            .map_err(|error| SpecError::host("/proc/self/mountinfo", std::io::Error::other(error.clone())))?;
        let mut best: Option<Peer> = None;
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(separator) = fields.iter().position(|field| *field == "-") else { continue };
            let Some(mount_point) = fields.get(4).map(|raw| PathBuf::from(unescape_octal(raw))) else { continue };
            if !path.starts_with(&mount_point) {
                continue;
            }
            if best
                .as_ref()
                .is_some_and(|best| best.mount_point.components().count() > mount_point.components().count())
            {
                continue;
            }
            let optional = fields.get(6..separator).unwrap_or(&[]);
            best = Some(Peer {
                shared: optional.iter().any(|field| field.starts_with("shared:")),
                slave: optional.iter().any(|field| field.starts_with("master:")),
                mount_point,
            });
        }
        best.ok_or_else(|| {
            SpecError::host(
                format!("mount holding {}", path.display()),
                std::io::Error::new(std::io::ErrorKind::NotFound, "not in /proc/self/mountinfo"),
            )
        })
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes.get(index + 1..index + 4).filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        if bytes[index] == b'\\'
            && let Some(digits) = octal
        {
            out.push(digits.iter().fold(0u8, |value, digit| value.wrapping_mul(8).wrapping_add(digit - b'0')));
            index += 4;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_files<'a>(dir: &'a Path) -> PodFiles<'a> {
        PodFiles {
            hostname: dir,
            hosts: dir,
            resolv_conf: dir,
            files_readonly: false,
            shm: Shm::Bind(dir.to_path_buf()),
            shm_readonly: false,
            privileged: false,
        }
    }

    fn destinations(table: &MountTable) -> Vec<String> {
        table.mounts.iter().map(|m| m.destination().display().to_string()).collect()
    }

    fn user_mount(container_path: &str, host_path: &Path) -> Mount {
        Mount { container_path: container_path.into(), host_path: host_path.to_path_buf(), ..Default::default() }
    }

    fn options(table: &MountTable, destination: &str) -> Vec<String> {
        table
            .mounts
            .iter()
            .find(|m| m.destination() == Path::new(destination))
            .unwrap_or_else(|| panic!("no mount at {destination}"))
            .options()
            .clone()
            .unwrap()
    }

    #[test]
    fn defaults_then_pod_files_then_user_mounts_by_depth() {
        let dir = tempfile::tempdir().unwrap();
        let user = vec![
            user_mount("/data/cache/deep", dir.path()),
            user_mount("/data", dir.path()),
            user_mount("/data/cache", dir.path()),
        ];
        let table = mount_table(&pod_files(dir.path()), &user).unwrap();
        assert_eq!(
            destinations(&table),
            vec![
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/data",
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/dev/shm",
                "/data/cache",
                "/data/cache/deep",
            ]
        );
        assert_eq!(options(&table, "/sys"), vec!["nosuid", "noexec", "nodev", "ro"]);
        assert_eq!(options(&table, "/data"), vec!["rbind", "rprivate", "rw"]);
        assert_eq!(table.rootfs_propagation, None);
    }

    #[test]
    fn user_mounts_replace_defaults_and_pod_files() {
        let dir = tempfile::tempdir().unwrap();
        let user = vec![user_mount("/etc/hosts", dir.path()), user_mount("/dev/shm/", dir.path())];
        let table = mount_table(&pod_files(dir.path()), &user).unwrap();
        let all = destinations(&table);
        assert_eq!(all.iter().filter(|d| *d == "/etc/hosts").count(), 1);
        assert_eq!(all.iter().filter(|d| *d == "/dev/shm").count(), 1);

        let table = mount_table(&pod_files(dir.path()), &[user_mount("/dev", dir.path())]).unwrap();
        let all = destinations(&table);
        assert!(!all.iter().any(|d| d == "/dev/pts" || d == "/dev/mqueue" || d == "/dev/shm"), "{all:?}");
        assert_eq!(all.iter().filter(|d| *d == "/dev").count(), 1);
    }

    #[test]
    fn private_shm_and_readonly_pod_files() {
        let dir = tempfile::tempdir().unwrap();
        let pod = PodFiles { shm: Shm::Private, files_readonly: true, privileged: true, ..pod_files(dir.path()) };
        let table = mount_table(&pod, &[]).unwrap();
        assert!(options(&table, "/dev/shm").contains(&"mode=1777".to_string()));
        assert_eq!(options(&table, "/etc/resolv.conf"), vec!["rbind", "rprivate", "ro"]);
        assert!(options(&table, "/sys").contains(&"rw".to_string()), "privileged sysfs is writable");
        assert!(options(&table, "/sys/fs/cgroup").contains(&"rw".to_string()));
    }

    #[test]
    fn readonly_and_recursive_readonly() {
        let dir = tempfile::tempdir().unwrap();
        let readonly = Mount { readonly: true, ..user_mount("/ro", dir.path()) };
        let recursive = Mount { readonly: true, recursive_read_only: true, ..user_mount("/rro", dir.path()) };
        let table = mount_table(&pod_files(dir.path()), &[readonly, recursive]).unwrap();
        assert_eq!(options(&table, "/ro"), vec!["rbind", "rprivate", "ro"]);
        assert_eq!(options(&table, "/rro"), vec!["rbind", "rprivate", "ro", "rro"]);

        let writable = Mount { recursive_read_only: true, ..user_mount("/rro", dir.path()) };
        let error = mount_table(&pod_files(dir.path()), &[writable]).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "mounts[0].recursive_read_only"));
        let slave = Mount {
            readonly: true,
            recursive_read_only: true,
            propagation: Propagation::HostToContainer,
            ..user_mount("/rro", dir.path())
        };
        let error = mount_table(&pod_files(dir.path()), &[slave]).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "mounts[0].recursive_read_only"));
    }

    #[test]
    fn missing_host_path_and_bad_container_path_name_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let user = vec![user_mount("/ok", dir.path()), user_mount("/gone", &dir.path().join("absent"))];
        let error = mount_table(&pod_files(dir.path()), &user).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "mounts[1].host_path"), "{error}");
        assert!(error.to_string().contains("absent"));

        let error = mount_table(&pod_files(dir.path()), &[user_mount("relative", dir.path())]).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "mounts[0].container_path"));
        let twice = vec![user_mount("/x", dir.path()), user_mount("/x/", dir.path())];
        let error = mount_table(&pod_files(dir.path()), &twice).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "mounts[1].container_path"));
    }

    #[test]
    fn symlinked_host_paths_are_mounted_resolved() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let table = mount_table(&pod_files(dir.path()), &[user_mount("/data", &dir.path().join("link"))]).unwrap();
        let data = table.mounts.iter().find(|m| m.destination() == Path::new("/data")).unwrap();
        assert_eq!(data.source().as_deref(), Some(std::fs::canonicalize(dir.path().join("real")).unwrap().as_path()));
    }

    /// A bind mount of a temp dir onto itself, made shared or private, for
    /// the propagation checks (the host's own mounts are private here).
    struct SelfBind(tempfile::TempDir);

    impl SelfBind {
        fn new(propagation: &str) -> SelfBind {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().to_str().unwrap();
            let run = |args: &[&str]| {
                let status = std::process::Command::new("mount").args(args).status().unwrap();
                assert!(status.success(), "mount {args:?}");
            };
            run(&["--bind", path, path]);
            run(&[propagation, path]);
            SelfBind(dir)
        }
    }

    impl Drop for SelfBind {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }

    #[test]
    fn propagation_needs_a_matching_host_mount() {
        let shared = SelfBind::new("--make-shared");
        let private = SelfBind::new("--make-private");
        let pod_dir = tempfile::tempdir().unwrap();
        let pod = pod_files(pod_dir.path());

        let both_ways = Mount { propagation: Propagation::Bidirectional, ..user_mount("/shared", shared.0.path()) };
        let table = mount_table(&pod, std::slice::from_ref(&both_ways)).unwrap();
        assert_eq!(options(&table, "/shared"), vec!["rbind", "rshared", "rw"]);
        assert_eq!(table.rootfs_propagation, Some("rshared"));

        let inward = Mount { propagation: Propagation::HostToContainer, ..user_mount("/slave", shared.0.path()) };
        let table = mount_table(&pod, std::slice::from_ref(&inward)).unwrap();
        assert_eq!(options(&table, "/slave"), vec!["rbind", "rslave", "rw"]);
        assert_eq!(table.rootfs_propagation, Some("rslave"));
        let table = mount_table(&pod, &[inward, both_ways]).unwrap();
        assert_eq!(table.rootfs_propagation, Some("rshared"), "rshared wins over rslave");

        for propagation in [Propagation::Bidirectional, Propagation::HostToContainer] {
            let refused = Mount { propagation, ..user_mount("/private", private.0.path()) };
            let error = mount_table(&pod, &[refused]).unwrap_err();
            assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "mounts[0].propagation"), "{error}");
        }
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_octal(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape_octal(r"/plain"), "/plain");
        assert_eq!(unescape_octal(r"/trailing\04"), r"/trailing\04");
    }
}
