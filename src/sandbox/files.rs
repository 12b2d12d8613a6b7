//! The files a pod's containers share, kept in the pod's state directory
//! (`/run/berth/pods/<id>/`) and bind-mounted into each container: `hostname`,
//! `hosts`, `resolv.conf`, and the `shm` tmpfs behind `/dev/shm`.
//!
//! Files are replaced atomically (temporary file, fsync, rename), so a container
//! started concurrently sees the old or the new content, never a torn one. They are
//! world-readable: containers often run as a non-root user and must resolve names.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::netns::{detach, mount};

/// `/dev/shm` size when the pod asks for nothing else, as Docker and containerd use.
pub const DEFAULT_SHM_SIZE: u64 = 64 * 1024 * 1024;

const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// The upstream servers systemd-resolved knows, for hosts whose /etc/resolv.conf
/// points at its 127.0.0.53 stub.
const RESOLVED_UPSTREAM_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// The kernel's limit on a hostname (`__NEW_UTS_LEN`).
const MAX_HOSTNAME_LEN: usize = 64;
const MAX_LABEL_LEN: usize = 63;

/// The DNS settings of a pod (CRI `DNSConfig`), written as its `resolv.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

fn invalid(field: &str, value: &str, reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{field} {value:?}: {reason}"))
}

/// Writes `pod_dir/hostname`, the container's `/etc/hostname`.
pub fn write_hostname(pod_dir: &Path, hostname: &str) -> io::Result<PathBuf> {
    validate_hostname(hostname)?;
    write_atomic(&pod_dir.join("hostname"), format!("{hostname}\n").as_bytes())
}

/// Writes `pod_dir/hosts`: localhost for IPv4 and IPv6, the usual IPv6 names, and
/// the pod's own IP under its hostname when the network gave it one.
pub fn write_hosts(pod_dir: &Path, hostname: &str, ip: Option<IpAddr>) -> io::Result<PathBuf> {
    validate_hostname(hostname)?;
    let mut hosts = String::from(
        "# hosts file managed by berth for this pod\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = ip {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    write_atomic(&pod_dir.join("hosts"), hosts.as_bytes())
}

/// Writes `pod_dir/resolv.conf` from the pod's DNS settings, or, without any, from
/// the host's resolver configuration.
pub fn write_resolv_conf(pod_dir: &Path, dns: Option<&DnsConfig>) -> io::Result<PathBuf> {
    let contents = match dns {
        Some(dns) => render_resolv_conf(dns)?.into_bytes(),
        None => host_resolv_conf(Path::new(HOST_RESOLV_CONF), Path::new(RESOLVED_UPSTREAM_CONF))?,
    };
    write_atomic(&pod_dir.join("resolv.conf"), &contents)
}

fn render_resolv_conf(dns: &DnsConfig) -> io::Result<String> {
    for (i, server) in dns.servers.iter().enumerate() {
        validate_nameserver(&format!("dns_config.servers[{i}]"), server)?;
    }
    for (i, search) in dns.searches.iter().enumerate() {
        validate_resolv_word(&format!("dns_config.searches[{i}]"), search)?;
    }
    for (i, option) in dns.options.iter().enumerate() {
        validate_resolv_word(&format!("dns_config.options[{i}]"), option)?;
    }
    let mut conf = String::new();
    if !dns.searches.is_empty() {
        conf.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        conf.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        conf.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(conf)
}

/// The host's resolv.conf, as containerd copies it. When its only nameservers are
/// loopback addresses (systemd-resolved's stub, a local dnsmasq), they would point at
/// the pod's own loopback; systemd-resolved's list of upstream servers replaces it
/// when that exists, as Docker does.
fn host_resolv_conf(host_conf: &Path, resolved_upstream: &Path) -> io::Result<Vec<u8>> {
    let read = |path: &Path| {
        fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("reading the host's {}: {e}", path.display())))
    };
    let contents = read(host_conf)?;
    let text = String::from_utf8_lossy(&contents);
    let mut nameservers = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        .peekable();
    let only_loopback = nameservers.peek().is_some()
        && nameservers.all(|server| {
            server.split('%').next().and_then(|ip| ip.parse::<IpAddr>().ok()).is_some_and(|ip| ip.is_loopback())
        });
    if only_loopback && resolved_upstream.exists() {
        return read(resolved_upstream);
    }
    Ok(contents)
}

fn validate_hostname(hostname: &str) -> io::Result<()> {
    let fail = |reason: &str| Err(invalid("hostname", hostname, reason));
    if hostname.is_empty() {
        return fail("must not be empty");
    }
    if hostname.len() > MAX_HOSTNAME_LEN {
        return fail(&format!("longer than {MAX_HOSTNAME_LEN} bytes"));
    }
    for label in hostname.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return fail(&format!("each dot-separated label must have 1 to {MAX_LABEL_LEN} characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return fail("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return fail("a label must not start or end with '-'");
        }
    }
    Ok(())
}

fn validate_nameserver(field: &str, server: &str) -> io::Result<()> {
    // A link-local IPv6 server may carry its zone (`fe80::1%eth0`), as resolv.conf allows.
    let parsed = match server.split_once('%') {
        Some((ip, zone)) if !zone.is_empty() && zone.bytes().all(|b| b.is_ascii_graphic()) => {
            ip.parse::<Ipv6Addr>().is_ok()
        }
        Some(_) => false,
        None => server.parse::<IpAddr>().is_ok(),
    };
    if parsed { Ok(()) } else { Err(invalid(field, server, "not an IP address")) }
}

/// Each search domain and option is one word of a resolv.conf line: a space would
/// split it, a newline would inject a directive of its own.
fn validate_resolv_word(field: &str, word: &str) -> io::Result<()> {
    if word.is_empty() {
        return Err(invalid(field, word, "must not be empty"));
    }
    if word.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(field, word, "must not contain whitespace or control characters"));
    }
    Ok(())
}

/// Mounts a tmpfs of `size_bytes` at `pod_dir/shm` (mode 1777, nosuid, nodev,
/// noexec) for the containers' `/dev/shm`. Already mounted is success, so a retried
/// sandbox creation does not stack a second tmpfs.
pub fn mount_shm(pod_dir: &Path, size_bytes: u64) -> io::Result<PathBuf> {
    if size_bytes == 0 {
        // tmpfs reads size=0 as "unlimited": half of the host's memory for one pod.
        return Err(invalid("shm size", "0", "must be positive"));
    }
    let shm = pod_dir.join("shm");
    match fs::create_dir(&shm) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(with_path(&shm, "creating", e)),
        _ => {}
    }
    if is_tmpfs_mount(pod_dir, &shm)? {
        return Ok(shm);
    }
    let options = format!("mode=1777,size={size_bytes}");
    mount(
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(&options),
    )
    .map_err(|e| with_path(&shm, "mounting tmpfs on", e))?;
    Ok(shm)
}

/// Unmounts `pod_dir/shm` and removes the directory; nothing mounted or nothing
/// there at all is success.
pub fn unmount_shm(pod_dir: &Path) -> io::Result<()> {
    let shm = pod_dir.join("shm");
    // Lazily: a container process still using /dev/shm keeps its memory until it
    // exits, and the pod can be torn down meanwhile.
    detach(&shm).map_err(|e| with_path(&shm, "unmounting", e))?;
    match fs::remove_dir(&shm) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(with_path(&shm, "removing", e)),
        _ => Ok(()),
    }
}

/// A tmpfs root mounted on `shm` has another device than its parent directory, even
/// when that directory lives on a tmpfs too (/run).
fn is_tmpfs_mount(parent: &Path, shm: &Path) -> io::Result<bool> {
    let parent_dev = fs::metadata(parent).map_err(|e| with_path(parent, "inspecting", e))?.dev();
    let shm_dev = fs::metadata(shm).map_err(|e| with_path(shm, "inspecting", e))?.dev();
    if parent_dev == shm_dev {
        return Ok(false);
    }
    let stats = rustix::fs::statfs(shm).map_err(|e| with_path(shm, "inspecting", e.into()))?;
    Ok(stats.f_type == libc::TMPFS_MAGIC)
}

fn with_path(path: &Path, action: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{action} {}: {e}", path.display()))
}

/// Replaces `path` with `contents` atomically (see [`crate::durable`]).
pub(super) fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<PathBuf> {
    crate::durable::write_file(path, contents, 0o644).map_err(|e| with_path(path, "writing", e))?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn hostname_is_written_with_a_newline_and_readable_by_all() {
        let pod = tempfile::tempdir().unwrap();
        let path = write_hostname(pod.path(), "web-0.cluster").unwrap();
        assert_eq!(path, pod.path().join("hostname"));
        assert_eq!(fs::read_to_string(&path).unwrap(), "web-0.cluster\n");
        assert_eq!(mode(&path), 0o644);
        write_hostname(pod.path(), "web-1").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "web-1\n");
        let leftovers: Vec<_> = fs::read_dir(pod.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec!["hostname"], "no temporary file stays behind");
    }

    #[test]
    fn bad_hostnames_are_refused_naming_the_field() {
        let pod = tempfile::tempdir().unwrap();
        let long = "a".repeat(65);
        let long_label = format!("{}.b", "a".repeat(64));
        for bad in
            ["", "web\nnameserver 1.1.1.1", "web_0", "-web", "web-", "a..b", ".", long.as_str(), long_label.as_str()]
        {
            let err = write_hostname(pod.path(), bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            assert!(err.to_string().starts_with("hostname "), "{err}");
            assert!(write_hosts(pod.path(), bad, None).is_err(), "{bad:?}");
        }
        assert!(fs::read_dir(pod.path()).unwrap().next().is_none(), "nothing written for bad input");
        write_hostname(pod.path(), &"a".repeat(63)).unwrap();
    }

    #[test]
    fn hosts_has_localhost_for_both_families_and_the_pod_ip_when_known() {
        let pod = tempfile::tempdir().unwrap();
        let path = write_hosts(pod.path(), "web", None).unwrap();
        let without_ip = fs::read_to_string(&path).unwrap();
        assert!(without_ip.lines().any(|l| l == "127.0.0.1\tlocalhost"));
        assert!(without_ip.lines().any(|l| l.starts_with("::1\tlocalhost ")));
        assert!(!without_ip.contains("web"));

        write_hosts(pod.path(), "web", Some("10.88.0.7".parse().unwrap())).unwrap();
        let with_ip = fs::read_to_string(&path).unwrap();
        assert_eq!(with_ip.lines().last(), Some("10.88.0.7\tweb"));
        assert_eq!(mode(&path), 0o644);
    }

    #[test]
    fn resolv_conf_from_dns_config() {
        let pod = tempfile::tempdir().unwrap();
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into(), "fd00::a".into(), "fe80::1%eth0".into()],
            searches: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into(), "edns0".into()],
        };
        let path = write_resolv_conf(pod.path(), Some(&dns)).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "search default.svc.cluster.local svc.cluster.local\n\
             nameserver 10.96.0.10\nnameserver fd00::a\nnameserver fe80::1%eth0\n\
             options ndots:5 edns0\n"
        );
        let only_server = DnsConfig { servers: vec!["10.96.0.10".into()], ..DnsConfig::default() };
        write_resolv_conf(pod.path(), Some(&only_server)).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "nameserver 10.96.0.10\n");
    }

    #[test]
    fn resolv_conf_refuses_values_that_would_break_lines_naming_the_entry() {
        let pod = tempfile::tempdir().unwrap();
        let cases = [
            (
                DnsConfig { servers: vec!["10.0.0.1".into(), "10.0.0.2\noptions debug".into()], ..Default::default() },
                "dns_config.servers[1]",
            ),
            (DnsConfig { servers: vec!["dns.example".into()], ..Default::default() }, "dns_config.servers[0]"),
            (DnsConfig { servers: vec!["10.0.0.1%eth0".into()], ..Default::default() }, "dns_config.servers[0]"),
            (DnsConfig { searches: vec!["a b".into()], ..Default::default() }, "dns_config.searches[0]"),
            (DnsConfig { searches: vec!["".into()], ..Default::default() }, "dns_config.searches[0]"),
            (
                DnsConfig { options: vec!["ndots:5".into(), "x\ny".into()], ..Default::default() },
                "dns_config.options[1]",
            ),
        ];
        for (dns, field) in cases {
            let err = write_resolv_conf(pod.path(), Some(&dns)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(err.to_string().starts_with(field), "{err} should name {field}");
        }
        assert!(!pod.path().join("resolv.conf").exists());
    }

    #[test]
    fn resolv_conf_without_dns_config_copies_the_host() {
        let pod = tempfile::tempdir().unwrap();
        let path = write_resolv_conf(pod.path(), None).unwrap();
        let host = host_resolv_conf(Path::new(HOST_RESOLV_CONF), Path::new(RESOLVED_UPSTREAM_CONF)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), host);
    }

    #[test]
    fn a_loopback_only_host_resolver_is_replaced_by_systemd_resolved_upstreams() {
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("stub.conf");
        let upstream = dir.path().join("upstream.conf");
        let missing = dir.path().join("missing.conf");
        fs::write(&stub, "# stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\n").unwrap();
        fs::write(&upstream, "nameserver 192.0.2.53\n").unwrap();
        assert_eq!(host_resolv_conf(&stub, &upstream).unwrap(), b"nameserver 192.0.2.53\n");
        assert_eq!(host_resolv_conf(&stub, &missing).unwrap(), fs::read(&stub).unwrap(), "nothing better to offer");

        let mixed = dir.path().join("mixed.conf");
        fs::write(&mixed, "nameserver 127.0.0.1\nnameserver 192.0.2.1\n").unwrap();
        assert_eq!(host_resolv_conf(&mixed, &upstream).unwrap(), fs::read(&mixed).unwrap());
        let empty = dir.path().join("empty.conf");
        fs::write(&empty, "").unwrap();
        assert_eq!(host_resolv_conf(&empty, &upstream).unwrap(), b"");

        let err = host_resolv_conf(&missing, &upstream).unwrap_err();
        assert!(err.to_string().contains("missing.conf"), "{err}");
    }

    #[test]
    fn shm_is_a_sized_tmpfs_mounted_once_and_unmounted_idempotently() {
        let pod = tempfile::tempdir().unwrap();
        assert_eq!(mount_shm(pod.path(), 0).unwrap_err().kind(), io::ErrorKind::InvalidInput);

        let shm = mount_shm(pod.path(), 8 * 1024 * 1024).unwrap();
        assert_eq!(shm, pod.path().join("shm"));
        assert_eq!(mount_shm(pod.path(), DEFAULT_SHM_SIZE).unwrap(), shm, "a retry is not stacked");
        let mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4) == shm.to_str())
            .map(str::to_string)
            .collect();
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        let options = mounts[0].split(' ').nth(5).unwrap();
        for flag in ["nosuid", "nodev", "noexec"] {
            assert!(options.split(',').any(|o| o == flag), "{flag} in {options}");
        }
        assert!(mounts[0].contains(" - tmpfs shm "), "{}", mounts[0]);
        assert!(mounts[0].contains("size=8192k"), "{}", mounts[0]);
        assert_eq!(mode(&shm), 0o1777);

        unmount_shm(pod.path()).unwrap();
        assert!(!shm.exists());
        unmount_shm(pod.path()).unwrap();
    }
}
