//! Device nodes: the ones a container asks for, and every host device for a
//! privileged container. Each becomes a node runc creates in the container's
//! /dev and a rule in the devices cgroup.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};
use rustix::fs::FileType;

use super::SpecError;
use super::types::Device;

/// Under the host's /dev, what a privileged container does not get as device
/// nodes: its own pts, shm and mqueue mounts replace these.
const HOST_DEV_SKIPPED_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

#[derive(Debug, Default)]
pub(crate) struct DeviceRules {
    pub(crate) nodes: Vec<LinuxDevice>,
    pub(crate) cgroup: Vec<LinuxDeviceCgroup>,
}

/// The container's requested devices. A directory on the host brings every
/// device below it, at the same relative path under `container_path`.
pub(crate) fn requested_devices(devices: &[Device]) -> Result<DeviceRules, SpecError> {
    let mut rules = DeviceRules::default();
    for (index, device) in devices.iter().enumerate() {
        let field = |name: &str| format!("devices[{index}].{name}");
        let permissions = if device.permissions.is_empty() { "rwm" } else { device.permissions.as_str() };
        if !permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(SpecError::invalid(
                field("permissions"),
                format!("{permissions:?} is not a combination of r, w, m"),
            ));
        }
        if !device.container_path.is_absolute() {
            return Err(SpecError::invalid(field("container_path"), "must be an absolute path"));
        }
        let stat = rustix::fs::stat(&device.host_path).map_err(|errno| {
            SpecError::invalid(field("host_path"), format!("{}: {errno}", device.host_path.display()))
        })?;
        let found = if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            let mut found = Vec::new();
            walk_devices(&device.host_path, &[], &mut found).map_err(|error| {
                SpecError::invalid(field("host_path"), format!("{}: {error}", device.host_path.display()))
            })?;
            found
                .into_iter()
                .filter_map(|(host, stat)| {
                    let relative = host.strip_prefix(&device.host_path).ok()?.to_path_buf();
                    Some((device.container_path.join(relative), stat))
                })
                .collect()
        } else {
            vec![(device.container_path.clone(), stat)]
        };
        if found.is_empty() {
            return Err(SpecError::invalid(
                field("host_path"),
                format!("{} is not a device and holds none", device.host_path.display()),
            ));
        }
        for (container_path, stat) in found {
            let Some(node) = device_node(&container_path, &stat) else {
                return Err(SpecError::invalid(
                    field("host_path"),
                    format!("{} is not a character or block device", device.host_path.display()),
                ));
            };
            rules.cgroup.push(allow_rule(&node, permissions));
            rules.nodes.push(node);
        }
    }
    Ok(rules)
}

/// Every character and block device under the host's /dev, at the same path.
pub(crate) fn host_devices() -> Result<Vec<LinuxDevice>, SpecError> {
    let mut found = Vec::new();
    walk_devices(Path::new("/dev"), &HOST_DEV_SKIPPED_DIRS, &mut found)
        .map_err(|error| SpecError::host("listing host devices under /dev", error))?;
    Ok(found
        .into_iter()
        .filter(|(path, _)| path != Path::new("/dev/console"))
        .filter_map(|(path, stat)| device_node(&path, &stat))
        .collect())
}

fn walk_devices(
    directory: &Path,
    skipped: &[&str],
    found: &mut Vec<(PathBuf, rustix::fs::Stat)>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(directory)? {
        let entry = entry?;
        let path = entry.path();
        // lstat: links under /dev (/dev/stdin, /dev/disk/by-id/...) are not
        // nodes of their own.
        let Ok(stat) = rustix::fs::lstat(&path) else { continue };
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory if !skipped.iter().any(|name| entry.file_name() == *name) => {
                walk_devices(&path, skipped, found)?;
            }
            FileType::CharacterDevice | FileType::BlockDevice => found.push((path, stat)),
            _ => {}
        }
    }
    Ok(())
}

fn device_node(container_path: &Path, stat: &rustix::fs::Stat) -> Option<LinuxDevice> {
    let typ = match FileType::from_raw_mode(stat.st_mode) {
        FileType::CharacterDevice => LinuxDeviceType::C,
        FileType::BlockDevice => LinuxDeviceType::B,
        _ => return None,
    };
    let mut node = LinuxDevice::default();
    node.set_path(container_path.to_path_buf());
    node.set_typ(typ);
    node.set_major(i64::from(rustix::fs::major(stat.st_rdev)));
    node.set_minor(i64::from(rustix::fs::minor(stat.st_rdev)));
    node.set_file_mode(Some(stat.st_mode & 0o7777));
    node.set_uid(Some(stat.st_uid));
    node.set_gid(Some(stat.st_gid));
    Some(node)
}

fn allow_rule(node: &LinuxDevice, access: &str) -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(true);
    rule.set_typ(Some(node.typ()));
    rule.set_major(Some(node.major()));
    rule.set_minor(Some(node.minor()));
    rule.set_access(Some(access.to_string()));
    rule
}

/// The first cgroup rule of every container: nothing but what is listed after
/// it (runc adds the standard /dev/null, /dev/zero, ... itself).
pub(crate) fn deny_all() -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(false);
    rule.set_access(Some("rwm".to_string()));
    rule
}

/// A privileged container may use any device.
pub(crate) fn allow_all() -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(true);
    rule.set_access(Some("rwm".to_string()));
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(container_path: &str, host_path: &str, permissions: &str) -> Device {
        Device { container_path: container_path.into(), host_path: host_path.into(), permissions: permissions.into() }
    }

    #[test]
    fn a_host_device_becomes_a_node_and_an_allow_rule() {
        let rules = requested_devices(&[device("/dev/mynull", "/dev/null", "rw")]).unwrap();
        assert_eq!(rules.nodes.len(), 1);
        let node = &rules.nodes[0];
        assert_eq!(node.path(), Path::new("/dev/mynull"));
        assert_eq!((node.typ(), node.major(), node.minor()), (LinuxDeviceType::C, 1, 3));
        assert_eq!(node.file_mode(), Some(0o666));
        let rule = &rules.cgroup[0];
        assert!(rule.allow());
        assert_eq!((rule.major(), rule.minor(), rule.access().as_deref()), (Some(1), Some(3), Some("rw")));

        let rules = requested_devices(&[device("/dev/zero", "/dev/zero", "")]).unwrap();
        assert_eq!(rules.cgroup[0].access().as_deref(), Some("rwm"));
    }

    #[test]
    fn a_directory_brings_the_devices_below_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for (name, device) in [("null", (1, 3)), ("sub/zero", (1, 5))] {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                dir.path().join(name),
                FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o600),
                rustix::fs::makedev(device.0, device.1),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("not-a-device"), "x").unwrap();
        let rules = requested_devices(&[device("/dev/set", dir.path().to_str().unwrap(), "r")]).unwrap();
        let mut paths: Vec<_> = rules.nodes.iter().map(|n| n.path().display().to_string()).collect();
        paths.sort();
        assert_eq!(paths, vec!["/dev/set/null", "/dev/set/sub/zero"]);
    }

    #[test]
    fn bad_devices_name_the_entry() {
        let error =
            requested_devices(&[device("/dev/null", "/dev/null", "rw"), device("/dev/x", "/dev/absent-device", "rw")])
                .unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "devices[1].host_path"), "{error}");
        let error = requested_devices(&[device("/dev/null", "/dev/null", "rwx")]).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "devices[0].permissions"));
        let error = requested_devices(&[device("/dev/passwd", "/etc/passwd", "r")]).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "devices[0].host_path"));
        let error = requested_devices(&[device("dev/null", "/dev/null", "r")]).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "devices[0].container_path"));
    }

    #[test]
    fn host_devices_cover_dev_but_not_pts_or_console() {
        let devices = host_devices().unwrap();
        assert!(devices.iter().any(|d| d.path() == Path::new("/dev/null")));
        assert!(!devices.iter().any(|d| d.path().starts_with("/dev/pts")));
        assert!(!devices.iter().any(|d| d.path() == Path::new("/dev/console")));
    }
}
