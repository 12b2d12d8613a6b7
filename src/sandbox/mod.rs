//! The pod sandbox room: network namespaces, CNI, the pod's files, container root
//! filesystems, and the lifecycle of pods and their containers (`PodService`).

pub mod cni;
pub mod events;
pub mod files;
pub mod model;
pub mod netns;
pub mod rootfs;

mod error;
mod intent;
mod names;
mod service;

pub use error::SandboxError;
pub use service::PodService;
pub(crate) use service::find_in_path;
