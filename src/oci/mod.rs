//! OCI runtime specs from berth's container configuration and the image's
//! defaults, as containerd's CRI plugin writes them for runc: process (command
//! merge, env, working dir, user and groups from the image's account files,
//! capabilities, no-new-privileges, AppArmor), mounts, devices, namespaces,
//! cgroup resources, seccomp, masked and read-only paths, sysctls,
//! annotations. This room calls nothing else in the crate: `src/cri/` maps CRI
//! messages to these types and `src/images/` supplies [`ImageDefaults`].

mod caps;
mod devices;
mod host;
mod mounts;
mod resources;
mod seccomp;
mod spec;
mod types;
mod user;

pub use host::{HostFacts, runtime_supports_recursive_read_only};
pub use resources::linux_resources;
pub use spec::{SANDBOX_CGROUP_LEAF, annotations, container_spec, exec_process, sandbox_spec};
pub use types::{
    AppArmor, ContainerSpec, Device, HugepageLimit, ImageDefaults, Mount, NamespaceMode, NamespaceOptions,
    PidNamespace, Propagation, Resources, SandboxContext, Seccomp, SecurityContext, SupplementalGroupsPolicy,
};
pub use user::{ResolvedUser, resolve_user};

/// The OCI runtime-spec types the functions above produce.
pub use oci_spec::runtime::{LinuxResources, Process, Spec};

/// Why no spec could be written. `field` names the offending input the way
/// [`ContainerSpec`] and [`SandboxContext`] spell it (`mounts[2].host_path`,
/// `security.capabilities_add[0]`, `sysctls["kernel.foo"]`).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The request is wrong (CRI: InvalidArgument).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The request is fine but this host or pod cannot honour it now (CRI:
    /// FailedPrecondition).
    #[error("{field}: {reason}")]
    Precondition { field: String, reason: String },
    /// Reading the host or the image failed (CRI: Internal).
    #[error("{context}: {source}")]
    Host { context: String, source: std::io::Error },
}

impl SpecError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
        SpecError::Invalid { field: field.into(), reason: reason.into() }
    }

    pub(crate) fn precondition(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
        SpecError::Precondition { field: field.into(), reason: reason.into() }
    }

    pub(crate) fn host(context: impl Into<String>, source: std::io::Error) -> SpecError {
        SpecError::Host { context: context.into(), source }
    }
}

#[cfg(test)]
mod test_support {
    use super::HostFacts;

    /// A host like the project's test machines: cgroup v1 controllers, swap
    /// accounting, no AppArmor.
    pub(crate) fn hybrid_host() -> HostFacts {
        HostFacts {
            oom_score_adj_min: 0,
            cgroup_v2: false,
            capabilities: (1 << 41) - 1,
            swap_accounting: true,
            hugetlb_controller: true,
            apparmor_enabled: false,
            kernel_version: (6, 1),
        }
    }
}

#[cfg(test)]
mod spec_tests;

#[cfg(test)]
mod runc_tests;
