//! A container's cgroup, as the shim reads it: statistics for `Stats` (in
//! containerd's `io.containerd.cgroups.v1.Metrics` / `v2.Metrics` shapes), the
//! processes for `Pids`, and the OOM-kill counter. The hierarchy (unified v2, or
//! v1 and hybrid) is detected by cgroups-rs from the host's mounts.

use std::collections::HashMap;
use std::path::Path;

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup, Controller, MaxValue, hierarchies};
use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use serde::Deserialize;

pub const V1_METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
pub const V2_METRICS_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}: {message}")]
    Config { path: String, message: String },
    #[error("linux.cgroupsPath {0:?}: only absolute cgroupfs paths are supported")]
    UnsupportedPath(String),
    #[error("cgroup {path}: {message}")]
    Read { path: String, message: String },
}

pub struct ContainerCgroup {
    path: String,
    cgroup: Cgroup,
}

impl ContainerCgroup {
    /// The cgroup named by `linux.cgroupsPath` of the bundle's config.json, if any.
    pub fn from_bundle(bundle: &Path) -> Result<Option<ContainerCgroup>, CgroupError> {
        #[derive(Deserialize)]
        struct Config {
            linux: Option<Linux>,
        }
        #[derive(Deserialize)]
        struct Linux {
            #[serde(rename = "cgroupsPath")]
            cgroups_path: Option<String>,
        }
        let config_path = bundle.join("config.json");
        let config_error = |message: String| CgroupError::Config { path: config_path.display().to_string(), message };
        let text = std::fs::read(&config_path).map_err(|error| config_error(error.to_string()))?;
        let config: Config = serde_json::from_slice(&text).map_err(|error| config_error(error.to_string()))?;
        match config.linux.and_then(|linux| linux.cgroups_path).filter(|path| !path.is_empty()) {
            Some(path) => ContainerCgroup::open(&path).map(Some),
            None => Ok(None),
        }
    }

    /// Opens an absolute cgroupfs path such as `/berth/POD/CTR`.
    pub fn open(path: &str) -> Result<ContainerCgroup, CgroupError> {
        // `slice:prefix:name` is the systemd driver's form, which berth does not use.
        let relative = path.strip_prefix('/').filter(|rest| !rest.contains(':')).ok_or_else(|| CgroupError::UnsupportedPath(path.to_string()))?;
        Ok(ContainerCgroup { path: path.to_string(), cgroup: Cgroup::load(hierarchies::auto(), relative) })
    }

    pub fn is_v2(&self) -> bool {
        self.cgroup.v2()
    }

    fn read_error(&self, message: impl Into<String>) -> CgroupError {
        CgroupError::Read { path: self.path.clone(), message: message.into() }
    }

    /// The processes in the cgroup (empty once it is gone).
    pub fn pids(&self) -> Vec<u32> {
        self.cgroup.procs().into_iter().map(|pid| pid.pid as u32).collect()
    }

    /// How many processes of the cgroup the kernel's OOM killer has killed.
    pub fn oom_kills(&self) -> u64 {
        let Some(memory) = self.cgroup.controller_of::<MemController>() else {
            return 0;
        };
        let (file, key) = if self.is_v2() { ("memory.events", "oom_kill") } else { ("memory.oom_control", "oom_kill") };
        std::fs::read_to_string(memory.path().join(file)).map(|text| flat_keyed(&text).get(key).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// The cgroup's statistics as containerd's shims report them.
    pub fn metrics(&self) -> Result<Any, CgroupError> {
        if !self.cgroup.exists() {
            return Err(self.read_error("the cgroup does not exist"));
        }
        let (type_url, value) = if self.is_v2() {
            (V2_METRICS_TYPE, self.metrics_v2().write_to_bytes())
        } else {
            (V1_METRICS_TYPE, self.metrics_v1().write_to_bytes())
        };
        let value = value.map_err(|error| self.read_error(error.to_string()))?;
        Ok(Any { type_url: type_url.into(), value, ..Default::default() })
    }

    fn pids_stat(&self) -> (u64, u64) {
        let Some(pids) = self.cgroup.controller_of::<PidController>() else {
            return (0, 0);
        };
        let current = pids.get_pid_current().unwrap_or(0);
        let limit = match pids.get_pid_max() {
            Ok(MaxValue::Value(limit)) => limit.max(0) as u64,
            _ => 0,
        };
        (current, limit)
    }

    fn read_in<C: Controller>(&self, controller: Option<&C>, file: &str) -> String {
        controller.and_then(|controller| std::fs::read_to_string(controller.path().join(file)).ok()).unwrap_or_default()
    }

    fn metrics_v1(&self) -> v1::Metrics {
        let mut metrics = v1::Metrics::new();

        let (current, limit) = self.pids_stat();
        metrics.pids = Some(v1::PidsStat { current, limit, ..Default::default() }).into();

        let cpuacct = self.cgroup.controller_of::<CpuAcctController>();
        let cpu_stat = self.read_in(self.cgroup.controller_of::<CpuController>(), "cpu.stat");
        let throttling = flat_keyed(&cpu_stat);
        if let Some(cpuacct) = cpuacct {
            let acct = cpuacct.cpuacct();
            let usage = v1::CPUUsage {
                total: acct.usage,
                kernel: acct.usage_sys,
                user: acct.usage_user,
                per_cpu: acct.usage_percpu.split_whitespace().filter_map(|n| n.parse().ok()).collect(),
                ..Default::default()
            };
            let throttle = v1::Throttle {
                periods: throttling.get("nr_periods").copied().unwrap_or(0),
                throttled_periods: throttling.get("nr_throttled").copied().unwrap_or(0),
                throttled_time: throttling.get("throttled_time").copied().unwrap_or(0),
                ..Default::default()
            };
            metrics.cpu = Some(v1::CPUStat { usage: Some(usage).into(), throttling: Some(throttle).into(), ..Default::default() }).into();
        }

        if let Some(memory) = self.cgroup.controller_of::<MemController>() {
            let stat = memory.memory_stat();
            let swap = memory.memswap();
            let kernel = memory.kmem_stat();
            let tcp = memory.kmem_tcp_stat();
            let s = &stat.stat;
            let entry = |limit: i64, usage: u64, max: u64, failcnt: u64| {
                Some(v1::MemoryEntry { limit: limit.max(0) as u64, usage, max, failcnt, ..Default::default() }).into()
            };
            metrics.memory = Some(v1::MemoryStat {
                cache: s.cache,
                rss: s.rss,
                rss_huge: s.rss_huge,
                mapped_file: s.mapped_file,
                dirty: s.dirty,
                writeback: s.writeback,
                pg_pg_in: s.pgpgin,
                pg_pg_out: s.pgpgout,
                pg_fault: s.pgfault,
                pg_maj_fault: s.pgmajfault,
                inactive_anon: s.inactive_anon,
                active_anon: s.active_anon,
                inactive_file: s.inactive_file,
                active_file: s.active_file,
                unevictable: s.unevictable,
                hierarchical_memory_limit: s.hierarchical_memory_limit.max(0) as u64,
                hierarchical_swap_limit: s.hierarchical_memsw_limit.max(0) as u64,
                total_cache: s.total_cache,
                total_rss: s.total_rss,
                total_rss_huge: s.total_rss_huge,
                total_mapped_file: s.total_mapped_file,
                total_dirty: s.total_dirty,
                total_writeback: s.total_writeback,
                total_pg_pg_in: s.total_pgpgin,
                total_pg_pg_out: s.total_pgpgout,
                total_pg_fault: s.total_pgfault,
                total_pg_maj_fault: s.total_pgmajfault,
                total_inactive_anon: s.total_inactive_anon,
                total_active_anon: s.total_active_anon,
                total_inactive_file: s.total_inactive_file,
                total_active_file: s.total_active_file,
                total_unevictable: s.total_unevictable,
                usage: entry(stat.limit_in_bytes, stat.usage_in_bytes, stat.max_usage_in_bytes, stat.fail_cnt),
                swap: entry(swap.limit_in_bytes, swap.usage_in_bytes, swap.max_usage_in_bytes, swap.fail_cnt),
                kernel: entry(kernel.limit_in_bytes, kernel.usage_in_bytes, kernel.max_usage_in_bytes, kernel.fail_cnt),
                kernel_tcp: entry(tcp.limit_in_bytes, tcp.usage_in_bytes, tcp.max_usage_in_bytes, tcp.fail_cnt),
                ..Default::default()
            })
            .into();
            let oom_control = self.read_in(Some(memory), "memory.oom_control");
            let oom = flat_keyed(&oom_control);
            metrics.memory_oom_control = Some(v1::MemoryOomControl {
                oom_kill_disable: oom.get("oom_kill_disable").copied().unwrap_or(0),
                under_oom: oom.get("under_oom").copied().unwrap_or(0),
                oom_kill: oom.get("oom_kill").copied().unwrap_or(0),
                ..Default::default()
            })
            .into();
        }
        metrics
    }

    fn metrics_v2(&self) -> v2::Metrics {
        let mut metrics = v2::Metrics::new();

        let (current, limit) = self.pids_stat();
        metrics.pids = Some(v2::PidsStat { current, limit, ..Default::default() }).into();

        let cpu_stat = self.read_in(self.cgroup.controller_of::<CpuController>(), "cpu.stat");
        let cpu = flat_keyed(&cpu_stat);
        let cpu_value = |key: &str| cpu.get(key).copied().unwrap_or(0);
        metrics.cpu = Some(v2::CPUStat {
            usage_usec: cpu_value("usage_usec"),
            user_usec: cpu_value("user_usec"),
            system_usec: cpu_value("system_usec"),
            nr_periods: cpu_value("nr_periods"),
            nr_throttled: cpu_value("nr_throttled"),
            throttled_usec: cpu_value("throttled_usec"),
            nr_bursts: cpu_value("nr_bursts"),
            burst_usec: cpu_value("burst_usec"),
            ..Default::default()
        })
        .into();

        if let Some(memory) = self.cgroup.controller_of::<MemController>() {
            let stat = memory.memory_stat();
            let swap = memory.memswap();
            let raw = |key: &str| stat.stat.raw.get(key).copied().unwrap_or(0);
            // An unlimited cgroup reports "max", which containerd turns into u64::MAX.
            let limit = |value: i64| if value < 0 { u64::MAX } else { value as u64 };
            metrics.memory = Some(v2::MemoryStat {
                anon: raw("anon"),
                file: raw("file"),
                kernel_stack: raw("kernel_stack"),
                slab: raw("slab"),
                sock: raw("sock"),
                shmem: raw("shmem"),
                file_mapped: raw("file_mapped"),
                file_dirty: raw("file_dirty"),
                file_writeback: raw("file_writeback"),
                anon_thp: raw("anon_thp"),
                inactive_anon: raw("inactive_anon"),
                active_anon: raw("active_anon"),
                inactive_file: raw("inactive_file"),
                active_file: raw("active_file"),
                unevictable: raw("unevictable"),
                slab_reclaimable: raw("slab_reclaimable"),
                slab_unreclaimable: raw("slab_unreclaimable"),
                pgfault: raw("pgfault"),
                pgmajfault: raw("pgmajfault"),
                workingset_refault: raw("workingset_refault"),
                workingset_activate: raw("workingset_activate"),
                workingset_nodereclaim: raw("workingset_nodereclaim"),
                pgrefill: raw("pgrefill"),
                pgscan: raw("pgscan"),
                pgsteal: raw("pgsteal"),
                pgactivate: raw("pgactivate"),
                pgdeactivate: raw("pgdeactivate"),
                pglazyfree: raw("pglazyfree"),
                pglazyfreed: raw("pglazyfreed"),
                thp_fault_alloc: raw("thp_fault_alloc"),
                thp_collapse_alloc: raw("thp_collapse_alloc"),
                usage: stat.usage_in_bytes,
                usage_limit: limit(stat.limit_in_bytes),
                max_usage: stat.max_usage_in_bytes,
                swap_usage: swap.usage_in_bytes,
                swap_limit: limit(swap.limit_in_bytes),
                ..Default::default()
            })
            .into();
            let events_text = self.read_in(Some(memory), "memory.events");
            let events = flat_keyed(&events_text);
            let event = |key: &str| events.get(key).copied().unwrap_or(0);
            metrics.memory_events = Some(v2::MemoryEvents {
                low: event("low"),
                high: event("high"),
                max: event("max"),
                oom: event("oom"),
                oom_kill: event("oom_kill"),
                oom_group_kill: event("oom_group_kill"),
                ..Default::default()
            })
            .into();
        }
        metrics
    }
}

/// Parses a flat-keyed cgroup file (`key value` per line); lines that are not
/// a key and a number are skipped.
fn flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let key = fields.next()?;
            let value = fields.next()?.parse().ok()?;
            Some((key, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_files_parse_into_numbers() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(flat_keyed(oom_control).get("oom_kill"), Some(&3));
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\nbogus line here\n";
        let parsed = flat_keyed(events);
        assert_eq!((parsed["max"], parsed["oom_kill"]), (12, 1));
    }

    #[test]
    fn only_absolute_cgroupfs_paths_are_accepted() {
        assert!(matches!(ContainerCgroup::open("berth/pod/ctr"), Err(CgroupError::UnsupportedPath(_))));
        assert!(matches!(ContainerCgroup::open("system.slice:berth:ctr"), Err(CgroupError::UnsupportedPath(_))));
        assert!(ContainerCgroup::open("/berth/pod/ctr").is_ok());
    }
}
