//! Seccomp profiles in Docker's JSON format (the format of containerd's and
//! Docker's default profile and of Kubernetes `Localhost` profiles), rendered
//! into the OCI `linux.seccomp` for one container: rules are kept or left out by
//! the container's capabilities, the host's architecture and kernel version.

use std::path::Path;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSyscall,
};
use serde::Deserialize;

use super::SpecError;
use super::caps::CapabilitySet;

/// berth's `RuntimeDefault`: deny by default with EPERM, allow the syscalls an
/// ordinary process needs, and allow the privileged ones only to containers
/// holding the capability that the kernel checks for them anyway.
const DEFAULT_PROFILE: &str = include_str!("seccomp_default.json");

const FIELD: &str = "security.seccomp";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Profile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<Arch>,
    #[serde(default)]
    arch_map: Vec<ArchMapEntry>,
    #[serde(default)]
    flags: Vec<LinuxSeccompFilterFlag>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMapEntry {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Vec<Arch>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    names: Vec<String>,
    /// The single-name form of older Docker profiles.
    #[serde(default)]
    name: Option<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<LinuxSeccompArg>,
    #[serde(default)]
    includes: Condition,
    #[serde(default)]
    excludes: Condition,
}

/// In `includes` every listed capability must be held and the architecture
/// listed; in `excludes` any listed capability or architecture rules the rule
/// out. Architectures use Go's names (`amd64`, `arm64`), as Docker's do.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// What a rendering depends on besides the profile.
pub(crate) struct Target<'a> {
    pub(crate) capabilities: &'a CapabilitySet,
    pub(crate) kernel_version: (u32, u32),
}

impl Profile {
    pub(crate) fn runtime_default() -> Result<Profile, SpecError> {
        serde_json::from_str(DEFAULT_PROFILE)
            .map_err(|error| SpecError::invalid(FIELD, format!("built-in default profile: {error}")))
    }

    pub(crate) fn load(path: &Path) -> Result<Profile, SpecError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| SpecError::invalid(FIELD, format!("localhost profile {}: {error}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|error| SpecError::invalid(FIELD, format!("localhost profile {}: {error}", path.display())))
    }

    pub(crate) fn render(&self, target: &Target) -> Result<LinuxSeccomp, SpecError> {
        let native = native_arch();
        let mut architectures: Vec<Arch> = Vec::new();
        if self.arch_map.is_empty() {
            architectures.extend(self.architectures.iter().copied());
        } else if let Some(native) = native.seccomp {
            for entry in self.arch_map.iter().filter(|entry| entry.architecture == native) {
                architectures.push(entry.architecture);
                architectures.extend(entry.sub_architectures.iter().copied());
            }
        }

        let mut syscalls = Vec::new();
        for (index, rule) in self.syscalls.iter().enumerate() {
            if !rule.applies(native.go_name, target)? {
                continue;
            }
            let mut names = rule.names.clone();
            names.extend(rule.name.iter().cloned());
            if names.is_empty() {
                return Err(SpecError::invalid(FIELD, format!("syscalls[{index}] names no syscall")));
            }
            let mut syscall = LinuxSyscall::default();
            syscall.set_names(names);
            syscall.set_action(rule.action);
            syscall.set_errno_ret(rule.errno_ret);
            syscall.set_args((!rule.args.is_empty()).then(|| rule.args.clone()));
            syscalls.push(syscall);
        }

        let mut seccomp = LinuxSeccomp::default();
        seccomp.set_default_action(self.default_action);
        seccomp.set_default_errno_ret(self.default_errno_ret);
        seccomp.set_architectures((!architectures.is_empty()).then_some(architectures));
        seccomp.set_flags((!self.flags.is_empty()).then(|| self.flags.clone()));
        seccomp.set_syscalls(Some(syscalls));
        Ok(seccomp)
    }
}

impl Rule {
    fn applies(&self, arch: &str, target: &Target) -> Result<bool, SpecError> {
        let includes = &self.includes;
        if !includes.caps.iter().all(|cap| target.capabilities.contains(cap)) {
            return Ok(false);
        }
        if !includes.arches.is_empty() && !includes.arches.iter().any(|listed| listed == arch) {
            return Ok(false);
        }
        if let Some(min_kernel) = &includes.min_kernel {
            let parsed = super::host::parse_kernel_version(min_kernel);
            if parsed == (0, 0) {
                return Err(SpecError::invalid(FIELD, format!("minKernel {min_kernel:?} is not a kernel version")));
            }
            if target.kernel_version < parsed {
                return Ok(false);
            }
        }
        let excludes = &self.excludes;
        if excludes.caps.iter().any(|cap| target.capabilities.contains(cap)) {
            return Ok(false);
        }
        Ok(!excludes.arches.iter().any(|listed| listed == arch))
    }
}

struct NativeArch {
    go_name: &'static str,
    seccomp: Option<Arch>,
}

fn native_arch() -> NativeArch {
    let (go_name, seccomp) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", Some(Arch::ScmpArchX86_64)),
        "x86" => ("386", Some(Arch::ScmpArchX86)),
        "aarch64" => ("arm64", Some(Arch::ScmpArchAarch64)),
        "arm" => ("arm", Some(Arch::ScmpArchArm)),
        "powerpc64" => ("ppc64le", Some(Arch::ScmpArchPpc64le)),
        "s390x" => ("s390x", Some(Arch::ScmpArchS390x)),
        "riscv64" => ("riscv64", Some(Arch::ScmpArchRiscv64)),
        "loongarch64" => ("loong64", Some(Arch::ScmpArchLoongarch64)),
        other => (other, None),
    };
    NativeArch { go_name, seccomp }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_default(capabilities: &CapabilitySet) -> LinuxSeccomp {
        Profile::runtime_default().unwrap().render(&Target { capabilities, kernel_version: (6, 1) }).unwrap()
    }

    fn allowed(seccomp: &LinuxSeccomp, name: &str) -> bool {
        seccomp.syscalls().as_ref().unwrap().iter().any(|rule| {
            rule.names().iter().any(|n| n == name)
                && rule.action() == LinuxSeccompAction::ScmpActAllow
                && rule.args().is_none()
        })
    }

    #[test]
    fn default_profile_denies_by_default_and_allows_ordinary_syscalls() {
        let seccomp = render_default(&CapabilitySet::default_set());
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(seccomp.default_errno_ret(), Some(1));
        for name in ["read", "write", "openat", "execve", "futex", "exit_group", "chmod", "fchmodat", "ptrace"] {
            assert!(allowed(&seccomp, name), "{name} must be allowed");
        }
        for name in ["mount", "unshare", "setns", "keyctl", "kexec_load", "reboot", "bpf", "sethostname", "userfaultfd"]
        {
            assert!(!allowed(&seccomp, name), "{name} must be denied without capabilities");
        }
        // The default set holds SYS_CHROOT, so chroot is allowed.
        assert!(allowed(&seccomp, "chroot"));
    }

    #[test]
    fn default_profile_lists_the_native_architecture_first() {
        let seccomp = render_default(&CapabilitySet::default_set());
        let architectures = seccomp.architectures().clone().unwrap();
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(architectures, vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]);
            assert!(allowed(&seccomp, "arch_prctl"));
        }
    }

    #[test]
    fn capabilities_unlock_their_syscalls() {
        let admin = CapabilitySet::default_set()
            .apply(&["SYS_ADMIN".to_string(), "SYS_PTRACE".to_string()], &[], u64::MAX)
            .unwrap();
        let seccomp = render_default(&admin);
        for name in ["mount", "unshare", "setns", "sethostname", "clone", "process_vm_readv"] {
            assert!(allowed(&seccomp, name), "{name} must be allowed with SYS_ADMIN/SYS_PTRACE");
        }
        // clone3 answers ENOSYS only to those without SYS_ADMIN.
        let rules = seccomp.syscalls().as_ref().unwrap();
        assert!(!rules.iter().any(|r| r.names().iter().any(|n| n == "clone3") && r.errno_ret() == Some(38)));

        let plain = render_default(&CapabilitySet::default_set());
        let rules = plain.syscalls().as_ref().unwrap();
        let clone3 = rules.iter().find(|r| r.names().iter().any(|n| n == "clone3")).unwrap();
        assert_eq!((clone3.action(), clone3.errno_ret()), (LinuxSeccompAction::ScmpActErrno, Some(38)));
        let clone = rules.iter().find(|r| r.names() == &vec!["clone".to_string()]).unwrap();
        assert_eq!(clone.args().as_ref().unwrap()[0].value(), 0x7E02_0000, "namespace flags are masked");
    }

    #[test]
    fn min_kernel_rules_drop_on_older_kernels() {
        let profile = Profile::runtime_default().unwrap();
        let caps = CapabilitySet::default_set();
        let old = profile.render(&Target { capabilities: &caps, kernel_version: (4, 4) }).unwrap();
        assert!(!allowed(&old, "ptrace"));
    }

    #[test]
    fn docker_format_localhost_profiles_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("block-chmod.json");
        std::fs::write(
            &path,
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"},
                             {"name": "sethostname", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                             {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_BPF"]}}]}"#,
        )
        .unwrap();
        let caps = CapabilitySet::default_set();
        let seccomp =
            Profile::load(&path).unwrap().render(&Target { capabilities: &caps, kernel_version: (6, 1) }).unwrap();
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(seccomp.architectures().clone().unwrap(), vec![Arch::ScmpArchX86_64]);
        let rules = seccomp.syscalls().clone().unwrap();
        assert_eq!(rules.len(), 2, "the CAP_BPF rule is left out without CAP_BPF");
        assert_eq!(rules[1].names(), &vec!["sethostname".to_string()]);
        assert_eq!(rules[1].errno_ret(), Some(13));
    }

    #[test]
    fn broken_localhost_profiles_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Profile::load(&dir.path().join("absent.json")).unwrap_err();
        assert!(matches!(&missing, SpecError::Invalid { field, .. } if field == FIELD), "{missing}");
        assert!(missing.to_string().contains("absent.json"));
        let path = dir.path().join("bad.json");
        std::fs::write(&path, r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#).unwrap();
        let invalid = Profile::load(&path).unwrap_err();
        assert!(matches!(&invalid, SpecError::Invalid { field, .. } if field == FIELD), "{invalid}");
    }
}
