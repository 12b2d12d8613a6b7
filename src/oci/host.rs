//! What the host allows, read once at start-up. Specs depend on it (the lowest
//! oom_score_adj, the capabilities the kernel knows, the cgroup layout), and
//! tests build it by hand to pin a particular host.

use std::path::Path;

/// Facts about the host that decide how a spec is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The lowest oom_score_adj a container may ask for: berthd's own. Some
    /// hosts refuse lowering it (EACCES), and a child starts from its parent's
    /// value, so requests below it are clamped rather than failing in runc.
    pub oom_score_adj_min: i32,
    /// `/sys/fs/cgroup` is the unified hierarchy (not v1, not hybrid).
    pub cgroup_v2: bool,
    /// The capabilities berthd holds (its effective set, one bit per
    /// capability number). "All capabilities" means these: a container cannot
    /// be given one its runtime lacks, and some hosts withhold a few.
    pub capabilities: u64,
    /// The memory controller accounts swap, so memory+swap limits can be set.
    pub swap_accounting: bool,
    /// The hugetlb controller is mounted (v1) or enabled (v2).
    pub hugetlb_controller: bool,
    pub apparmor_enabled: bool,
    /// Kernel (major, minor), for seccomp rules that need a minimum kernel.
    pub kernel_version: (u32, u32),
}

const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// When /proc does not say: every capability up to CAP_CHECKPOINT_RESTORE (40).
const FALLBACK_CAPABILITIES: u64 = (1 << 41) - 1;

impl HostFacts {
    pub fn detect() -> HostFacts {
        let cgroup_v2 = rustix::fs::statfs("/sys/fs/cgroup")
            .map(|stat| u64::try_from(stat.f_type).is_ok_and(|fs_type| fs_type == CGROUP2_SUPER_MAGIC))
            .unwrap_or(false);
        let oom_score_adj_min = match read_trimmed("/proc/self/oom_score_adj").map(|v| v.parse()) {
            Some(Ok(value)) => value,
            _ => {
                tracing::warn!("cannot read /proc/self/oom_score_adj; containers keep oom_score_adj >= 0");
                0
            }
        };
        let capabilities = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| effective_capabilities(&status))
            .unwrap_or(FALLBACK_CAPABILITIES);
        let apparmor_enabled = read_trimmed("/sys/module/apparmor/parameters/enabled").is_some_and(|v| v == "Y");
        let kernel_version =
            read_trimmed("/proc/sys/kernel/osrelease").map(|release| parse_kernel_version(&release)).unwrap_or((0, 0));
        HostFacts {
            oom_score_adj_min,
            cgroup_v2,
            capabilities,
            swap_accounting: detect_swap_accounting(cgroup_v2),
            hugetlb_controller: detect_hugetlb(cgroup_v2),
            apparmor_enabled,
            kernel_version,
        }
    }
}

/// Whether an OCI runtime can make bind mounts read-only recursively (`rro`): its
/// `features` command lists the option and the kernel has `mount_setattr` (5.12).
/// A runtime without a `features` command (runc before 1.1) cannot.
pub fn runtime_supports_recursive_read_only(runtime: &Path, kernel_version: (u32, u32)) -> bool {
    if kernel_version < (5, 12) {
        return false;
    }
    match std::process::Command::new(runtime).arg("features").stderr(std::process::Stdio::null()).output() {
        Ok(output) if output.status.success() => features_list_mount_option(&output.stdout, "rro"),
        Ok(_) => false,
        Err(error) => {
            tracing::warn!(runtime = %runtime.display(), %error, "asking the OCI runtime for its features");
            false
        }
    }
}

/// Whether the JSON of an OCI runtime's `features` command names `option` in
/// `mountOptions`.
fn features_list_mount_option(features: &[u8], option: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Features {
        #[serde(rename = "mountOptions", default)]
        mount_options: Vec<String>,
    }
    serde_json::from_slice::<Features>(features).is_ok_and(|features| features.mount_options.iter().any(|o| o == option))
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|text| text.trim().to_string())
}

/// The `CapEff:` line of /proc/<pid>/status.
fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// "6.1.0-18-amd64" → (6, 1). Unparsable parts count as 0.
pub(crate) fn parse_kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

fn detect_swap_accounting(cgroup_v2: bool) -> bool {
    if !cgroup_v2 {
        return Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists();
    }
    // The v2 root has no memory.swap.max; our own cgroup has it when swap is
    // accounted.
    let Some(own) = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| text.lines().find_map(|line| line.strip_prefix("0::").map(str::to_string)))
    else {
        return false;
    };
    Path::new("/sys/fs/cgroup").join(own.trim_start_matches('/')).join("memory.swap.max").exists()
}

fn detect_hugetlb(cgroup_v2: bool) -> bool {
    if cgroup_v2 {
        std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "hugetlb"))
    } else {
        Path::new("/sys/fs/cgroup/hugetlb").is_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse_from_release_strings() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v595"), (6, 18));
        assert_eq!(parse_kernel_version("4.8"), (4, 8));
        assert_eq!(parse_kernel_version("garbage"), (0, 0));
    }

    #[test]
    fn recursive_read_only_needs_the_option_in_the_runtime_features() {
        assert!(features_list_mount_option(br#"{"ociVersionMin":"1.0.0","mountOptions":["ro","rro","rw"]}"#, "rro"));
        assert!(!features_list_mount_option(br#"{"mountOptions":["ro","rw"]}"#, "rro"));
        assert!(!features_list_mount_option(br#"{"ociVersionMin":"1.0.0"}"#, "rro"));
        assert!(!features_list_mount_option(b"flag provided but not defined: features", "rro"));
        assert!(!runtime_supports_recursive_read_only(Path::new("/no/such/runtime"), (6, 1)));
        assert!(!runtime_supports_recursive_read_only(Path::new("runc"), (5, 11)));
    }

    #[test]
    fn detection_matches_this_host() {
        let facts = HostFacts::detect();
        let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap().trim().parse().unwrap();
        assert_eq!(facts.oom_score_adj_min, own);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let effective = status.lines().find(|line| line.starts_with("CapEff:")).unwrap();
        assert_eq!(format!("CapEff:\t{:016x}", facts.capabilities), effective);
        let unified = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|line| line.contains(" /sys/fs/cgroup ") && line.contains(" - cgroup2 "));
        assert_eq!(facts.cgroup_v2, unified);
        assert!(facts.kernel_version.0 >= 4);
    }
}
