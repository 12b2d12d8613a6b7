//! cgroup limits for `linux.resources`, shared by container creation and
//! `UpdateContainerResources`, and the host-bounded oom_score_adj.

use std::collections::HashMap;

use oci_spec::runtime::{LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxPids, LinuxResources};

use super::SpecError;
use super::host::HostFacts;
use super::types::Resources;

/// The cgroup limits of `resources`. Zero leaves a limit unset; hugepage
/// limits are skipped (with a warning) on hosts without the hugetlb
/// controller, as containerd does.
pub fn linux_resources(resources: &Resources, host: &HostFacts) -> Result<LinuxResources, SpecError> {
    let mut cpu = LinuxCpu::default();
    if resources.cpu_period != 0 {
        cpu.set_period(Some(non_negative(resources.cpu_period, "resources.cpu_period")?));
    }
    if resources.cpu_quota != 0 {
        cpu.set_quota(Some(resources.cpu_quota));
    }
    if resources.cpu_shares != 0 {
        cpu.set_shares(Some(non_negative(resources.cpu_shares, "resources.cpu_shares")?));
    }
    if !resources.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(resources.cpuset_cpus.clone()));
    }
    if !resources.cpuset_mems.is_empty() {
        cpu.set_mems(Some(resources.cpuset_mems.clone()));
    }

    let mut memory = LinuxMemory::default();
    if resources.memory_limit_bytes != 0 {
        non_negative(resources.memory_limit_bytes, "resources.memory_limit_bytes")?;
        memory.set_limit(Some(resources.memory_limit_bytes));
    }
    if resources.memory_swap_limit_bytes != 0 {
        memory.set_swap(Some(resources.memory_swap_limit_bytes));
    } else if resources.memory_limit_bytes != 0 && host.swap_accounting {
        // Equal limits: the container may not swap unless asked to.
        memory.set_swap(Some(resources.memory_limit_bytes));
    }

    let mut hugepage_limits = Vec::new();
    for (index, limit) in resources.hugepage_limits.iter().enumerate() {
        if limit.page_size.is_empty() {
            return Err(SpecError::invalid(format!("resources.hugepage_limits[{index}].page_size"), "is empty"));
        }
        let bytes = i64::try_from(limit.limit_bytes).map_err(|_| {
            SpecError::invalid(format!("resources.hugepage_limits[{index}].limit_bytes"), "exceeds i64")
        })?;
        let mut oci = LinuxHugepageLimit::default();
        oci.set_page_size(limit.page_size.clone());
        oci.set_limit(bytes);
        hugepage_limits.push(oci);
    }
    if !hugepage_limits.is_empty() && !host.hugetlb_controller {
        tracing::warn!("the host has no hugetlb cgroup controller; hugepage limits are not applied");
        hugepage_limits.clear();
    }

    if !resources.unified.is_empty() && !host.cgroup_v2 {
        return Err(SpecError::precondition(
            "resources.unified",
            "cgroup v2 files cannot be set on this cgroup v1 host",
        ));
    }

    let mut linux = LinuxResources::default();
    if cpu != LinuxCpu::default() {
        linux.set_cpu(Some(cpu));
    }
    if memory != LinuxMemory::default() {
        linux.set_memory(Some(memory));
    }
    if !hugepage_limits.is_empty() {
        linux.set_hugepage_limits(Some(hugepage_limits));
    }
    if !resources.unified.is_empty() {
        linux.set_unified(Some(
            resources.unified.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>(),
        ));
    }
    if let Some(limit) = resources.pids_limit {
        let mut pids = LinuxPids::default();
        pids.set_limit(limit);
        linux.set_pids(Some(pids));
    }
    Ok(linux)
}

fn non_negative(value: i64, field: &str) -> Result<u64, SpecError> {
    u64::try_from(value).map_err(|_| SpecError::invalid(field, format!("{value} is negative")))
}

/// `requested`, raised to what the host allows and bounded to the kernel's
/// range; a raise is logged, never an error.
pub(crate) fn clamp_oom_score_adj(requested: i64, host: &HostFacts) -> Result<i32, SpecError> {
    if !(-1000..=1000).contains(&requested) {
        return Err(SpecError::invalid("resources.oom_score_adj", format!("{requested} is outside -1000..=1000")));
    }
    let requested = requested as i32;
    if requested < host.oom_score_adj_min {
        tracing::warn!(
            requested,
            applied = host.oom_score_adj_min,
            "oom_score_adj below what this host allows; raised"
        );
        return Ok(host.oom_score_adj_min);
    }
    Ok(requested)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::test_support::hybrid_host;
    use crate::oci::types::HugepageLimit;

    #[test]
    fn limits_map_to_their_oci_fields() {
        let resources = Resources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_bytes: 64 << 20,
            cpuset_cpus: "0".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![HugepageLimit { page_size: "2MB".into(), limit_bytes: 4 << 20 }],
            pids_limit: Some(100),
            ..Default::default()
        };
        let linux = linux_resources(&resources, &hybrid_host()).unwrap();
        let cpu = linux.cpu().clone().unwrap();
        assert_eq!((cpu.period(), cpu.quota(), cpu.shares()), (Some(100_000), Some(50_000), Some(512)));
        assert_eq!((cpu.cpus().as_deref(), cpu.mems().as_deref()), (Some("0"), Some("0")));
        let memory = linux.memory().unwrap();
        assert_eq!(memory.limit(), Some(64 << 20));
        assert_eq!(memory.swap(), Some(64 << 20), "no swap unless asked for, where swap is accounted");
        let hugepages = linux.hugepage_limits().clone().unwrap();
        assert_eq!((hugepages[0].page_size().as_str(), hugepages[0].limit()), ("2MB", 4 << 20));
        assert_eq!(linux.pids().unwrap().limit(), 100);
        assert!(linux.devices().is_none(), "updates must not touch device rules");
    }

    #[test]
    fn unset_limits_stay_unset() {
        let linux = linux_resources(&Resources::default(), &hybrid_host()).unwrap();
        assert_eq!(linux, LinuxResources::default());
        let no_swap_accounting = HostFacts { swap_accounting: false, ..hybrid_host() };
        let limited = Resources { memory_limit_bytes: 1 << 30, ..Default::default() };
        assert_eq!(linux_resources(&limited, &no_swap_accounting).unwrap().memory().unwrap().swap(), None);
        let with_swap =
            Resources { memory_limit_bytes: 1 << 30, memory_swap_limit_bytes: 2 << 30, ..Default::default() };
        assert_eq!(linux_resources(&with_swap, &hybrid_host()).unwrap().memory().unwrap().swap(), Some(2 << 30));
    }

    #[test]
    fn host_capabilities_shape_the_result() {
        let hugepages = Resources {
            hugepage_limits: vec![HugepageLimit { page_size: "2MB".into(), limit_bytes: 1 << 21 }],
            ..Default::default()
        };
        let without_hugetlb = HostFacts { hugetlb_controller: false, ..hybrid_host() };
        assert!(linux_resources(&hugepages, &without_hugetlb).unwrap().hugepage_limits().is_none());

        let unified =
            Resources { unified: [("memory.high".to_string(), "1G".to_string())].into(), ..Default::default() };
        let error = linux_resources(&unified, &hybrid_host()).unwrap_err();
        assert!(matches!(&error, SpecError::Precondition { field, .. } if field == "resources.unified"), "{error}");
        let v2 = HostFacts { cgroup_v2: true, ..hybrid_host() };
        let linux = linux_resources(&unified, &v2).unwrap();
        assert_eq!(linux.unified().as_ref().unwrap()["memory.high"], "1G");
    }

    #[test]
    fn negative_values_name_the_field() {
        let error = linux_resources(&Resources { cpu_shares: -2, ..Default::default() }, &hybrid_host()).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "resources.cpu_shares"), "{error}");
        let error =
            linux_resources(&Resources { memory_limit_bytes: -1, ..Default::default() }, &hybrid_host()).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "resources.memory_limit_bytes"));
    }

    #[test]
    fn oom_score_adj_is_clamped_to_the_host_minimum() {
        let host = HostFacts { oom_score_adj_min: -500, ..hybrid_host() };
        assert_eq!(clamp_oom_score_adj(-998, &host).unwrap(), -500);
        assert_eq!(clamp_oom_score_adj(-100, &host).unwrap(), -100);
        assert_eq!(clamp_oom_score_adj(1000, &hybrid_host()).unwrap(), 1000);
        assert_eq!(clamp_oom_score_adj(-1000, &hybrid_host()).unwrap(), 0);
        let error = clamp_oom_score_adj(1001, &host).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "resources.oom_score_adj"));
    }
}
