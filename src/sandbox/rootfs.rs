//! Container root filesystems: an overlay of the image's layer snapshots under
//! the container's writable snapshot, mounted at the bundle's `rootfs/`.

use std::io;
use std::path::Path;

use rustix::mount::{MountFlags, UnmountFlags, mount as sys_mount, unmount as umount2};

use super::error::SandboxError;
use crate::images::RootfsLayers;

/// The kernel reads mount options from one page.
const MAX_MOUNT_DATA: usize = 4095;

pub fn mount(layers: &RootfsLayers, target: &Path) -> Result<(), SandboxError> {
    let lower: Vec<String> = layers.lowerdirs.iter().map(|p| p.display().to_string()).collect();
    // `index=off`: snapshots are shared between containers and may be renamed by
    // GC; overlay's inode index would tie an upper dir to the lower dirs' inodes.
    let data = format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        lower.join(":"),
        layers.upperdir.display(),
        layers.workdir.display()
    );
    if data.len() > MAX_MOUNT_DATA {
        return Err(SandboxError::FailedPrecondition(format!(
            "image has too many layers ({}) for one overlay mount",
            layers.lowerdirs.len()
        )));
    }
    let data = std::ffi::CString::new(data)
        .map_err(|_| SandboxError::FailedPrecondition("a layer path contains a NUL byte".into()))?;
    sys_mount("overlay", target, "overlay", MountFlags::empty(), Some(data.as_c_str()))
        .map_err(|e| SandboxError::Io { context: format!("mounting the overlay rootfs at {}", target.display()), source: e.into() })
}

/// Detaches the rootfs mount; a target that is not mounted (or gone) is fine,
/// so removal can be retried.
pub fn unmount(target: &Path) -> Result<(), SandboxError> {
    match umount2(target, UnmountFlags::DETACH) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOENT => Ok(()),
        Err(e) => Err(SandboxError::Io {
            context: format!("unmounting {}", target.display()),
            source: io::Error::from(e),
        }),
    }
}
