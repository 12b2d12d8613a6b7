//! Capability sets as containerd computes them: a default set, `ALL` on the add
//! or drop side first, then the individual names.

use std::collections::BTreeSet;
use std::str::FromStr;

use oci_spec::runtime::{Capabilities, Capability};

use super::SpecError;

/// Every capability with its kernel number (linux/capability.h), so that "all"
/// can be matched against the capabilities berthd holds.
const KNOWN_CAPABILITIES: [(&str, u32); 41] = [
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("DAC_READ_SEARCH", 2),
    ("FOWNER", 3),
    ("FSETID", 4),
    ("KILL", 5),
    ("SETGID", 6),
    ("SETUID", 7),
    ("SETPCAP", 8),
    ("LINUX_IMMUTABLE", 9),
    ("NET_BIND_SERVICE", 10),
    ("NET_BROADCAST", 11),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("IPC_LOCK", 14),
    ("IPC_OWNER", 15),
    ("SYS_MODULE", 16),
    ("SYS_RAWIO", 17),
    ("SYS_CHROOT", 18),
    ("SYS_PTRACE", 19),
    ("SYS_PACCT", 20),
    ("SYS_ADMIN", 21),
    ("SYS_BOOT", 22),
    ("SYS_NICE", 23),
    ("SYS_RESOURCE", 24),
    ("SYS_TIME", 25),
    ("SYS_TTY_CONFIG", 26),
    ("MKNOD", 27),
    ("LEASE", 28),
    ("AUDIT_WRITE", 29),
    ("AUDIT_CONTROL", 30),
    ("SETFCAP", 31),
    ("MAC_OVERRIDE", 32),
    ("MAC_ADMIN", 33),
    ("SYSLOG", 34),
    ("WAKE_ALARM", 35),
    ("BLOCK_SUSPEND", 36),
    ("AUDIT_READ", 37),
    ("PERFMON", 38),
    ("BPF", 39),
    ("CHECKPOINT_RESTORE", 40),
];

/// containerd's (and Docker's) default set for containers.
const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// A capability set under construction, by canonical name (no `CAP_`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CapabilitySet(BTreeSet<&'static str>);

impl CapabilitySet {
    pub(crate) fn default_set() -> CapabilitySet {
        CapabilitySet(DEFAULT_CAPABILITIES.into_iter().collect())
    }

    pub(crate) fn empty() -> CapabilitySet {
        CapabilitySet(BTreeSet::new())
    }

    /// Every capability in `held` (a mask by capability number).
    pub(crate) fn all(held: u64) -> CapabilitySet {
        CapabilitySet(
            KNOWN_CAPABILITIES.iter().filter(|(_, number)| held & (1 << number) != 0).map(|(name, _)| *name).collect(),
        )
    }

    /// `ALL` in `add` grants every capability and `ALL` in `drop` removes every
    /// one, before the named ones are added and then dropped; so
    /// add `[ALL]`, drop `[CHOWN]` is everything but CHOWN.
    pub(crate) fn apply(mut self, add: &[String], drop: &[String], held: u64) -> Result<CapabilitySet, SpecError> {
        let is_all = |name: &String| name.eq_ignore_ascii_case("ALL");
        if add.iter().any(is_all) {
            self = CapabilitySet::all(held);
        }
        if drop.iter().any(is_all) {
            self = CapabilitySet::empty();
        }
        for (index, name) in add.iter().enumerate().filter(|(_, name)| !is_all(name)) {
            self.0.insert(canonical_name(name, &format!("security.capabilities_add[{index}]"))?);
        }
        for (index, name) in drop.iter().enumerate().filter(|(_, name)| !is_all(name)) {
            self.0.remove(canonical_name(name, &format!("security.capabilities_drop[{index}]"))?);
        }
        Ok(self)
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.0.contains(name.strip_prefix("CAP_").unwrap_or(name))
    }

    pub(crate) fn to_oci(&self) -> Capabilities {
        self.0.iter().filter_map(|name| Capability::from_str(name).ok()).collect()
    }
}

fn canonical_name(name: &str, field: &str) -> Result<&'static str, SpecError> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    KNOWN_CAPABILITIES
        .iter()
        .map(|(known, _)| *known)
        .find(|known| *known == bare)
        .ok_or_else(|| SpecError::invalid(field, format!("unknown capability {name:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_HELD: u64 = (1 << 41) - 1;

    fn names(set: &CapabilitySet) -> Vec<&'static str> {
        set.0.iter().copied().collect()
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn every_known_capability_maps_to_an_oci_capability() {
        let all = CapabilitySet::all(u64::MAX);
        assert_eq!(all.0.len(), 41);
        assert_eq!(all.to_oci().len(), 41);
        let without_sys_resource = CapabilitySet::all(((1 << 41) - 1) & !(1 << 24));
        assert_eq!(without_sys_resource.0.len(), 40);
        assert!(!without_sys_resource.contains("SYS_RESOURCE"));
    }

    #[test]
    fn default_set_is_containerds() {
        let set = CapabilitySet::default_set();
        assert_eq!(set.0.len(), 14);
        for name in ["CHOWN", "NET_RAW", "SETPCAP", "AUDIT_WRITE", "KILL", "SYS_CHROOT"] {
            assert!(set.contains(name), "{name}");
        }
        assert!(!set.contains("SYS_ADMIN"));
        assert!(!set.contains("NET_ADMIN"));
    }

    #[test]
    fn add_and_drop_accept_names_with_or_without_prefix() {
        let set = CapabilitySet::default_set()
            .apply(&strings(&["NET_ADMIN", "cap_sys_time"]), &strings(&["CAP_NET_RAW", "chown"]), ALL_HELD)
            .unwrap();
        assert!(set.contains("NET_ADMIN") && set.contains("SYS_TIME"));
        assert!(!set.contains("NET_RAW") && !set.contains("CHOWN"));
        assert!(set.contains("CAP_KILL"));
    }

    #[test]
    fn all_is_applied_before_individual_names() {
        let everything_but_chown =
            CapabilitySet::default_set().apply(&strings(&["ALL"]), &strings(&["CHOWN"]), ALL_HELD).unwrap();
        assert_eq!(everything_but_chown.0.len(), 40);
        assert!(!everything_but_chown.contains("CHOWN"));

        let only_kill = CapabilitySet::default_set().apply(&strings(&["KILL"]), &strings(&["all"]), ALL_HELD).unwrap();
        assert_eq!(names(&only_kill), vec!["KILL"]);

        let nothing = CapabilitySet::default_set().apply(&strings(&["ALL"]), &strings(&["ALL"]), ALL_HELD).unwrap();
        assert!(nothing.0.is_empty());
    }

    #[test]
    fn unknown_names_are_refused_naming_the_entry() {
        let error = CapabilitySet::default_set().apply(&strings(&["NET_ADMIN", "FLY"]), &[], ALL_HELD).unwrap_err();
        assert!(
            matches!(&error, SpecError::Invalid { field, .. } if field == "security.capabilities_add[1]"),
            "{error}"
        );
        let error = CapabilitySet::default_set().apply(&[], &strings(&["NOPE"]), ALL_HELD).unwrap_err();
        assert!(matches!(&error, SpecError::Invalid { field, .. } if field == "security.capabilities_drop[0]"));
    }
}
