//! What plugins print: results (spec 0.3.x/0.4.0 and 1.0.0 share the shape berth
//! reads) and error objects.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
struct RawResult {
    #[serde(default)]
    interfaces: Vec<RawInterface>,
    #[serde(default)]
    ips: Vec<RawIp>,
}

#[derive(Debug, Deserialize)]
struct RawInterface {
    name: String,
    /// Set for interfaces inside the container; empty or absent on the host side.
    #[serde(default)]
    sandbox: String,
}

#[derive(Debug, Deserialize)]
struct RawIp {
    /// CIDR notation: the address and its subnet's prefix length.
    address: String,
    /// Index into `interfaces`; absent when the plugin does not say.
    interface: Option<usize>,
}

/// The pod's addresses on `ifname` in a result: IPv4 first (CRI takes the first as
/// the pod IP, and Kubernetes clusters default to IPv4 primary), then IPv6, each
/// family in the plugin's order. Returns them with the interface's name.
pub(super) fn pod_ips(result: &Value, ifname: &str) -> Result<(Vec<IpAddr>, String), String> {
    let raw = RawResult::deserialize(result).map_err(|e| format!("malformed result: {e}"))?;
    let mut ips = Vec::new();
    for (i, ip) in raw.ips.iter().enumerate() {
        let on_pod_interface = match ip.interface {
            None => true,
            Some(index) => {
                let interface = raw
                    .interfaces
                    .get(index)
                    .ok_or_else(|| format!("ips[{i}].interface {index}: no such interface in the result"))?;
                !interface.sandbox.is_empty() && interface.name == ifname
            }
        };
        if on_pod_interface {
            ips.push(parse_cidr_address(&ip.address).map_err(|reason| format!("ips[{i}].address: {reason}"))?);
        }
    }
    if ips.is_empty() {
        return Err(format!("no IP address for the pod's interface {ifname}"));
    }
    ips.sort_by_key(|ip| ip.is_ipv6());
    Ok((ips, ifname.to_string()))
}

fn parse_cidr_address(cidr: &str) -> Result<IpAddr, String> {
    let (address, prefix) = cidr.split_once('/').ok_or_else(|| format!("{cidr:?} is not in CIDR notation"))?;
    let ip: IpAddr = address.parse().map_err(|_| format!("{cidr:?}: {address:?} is not an IP address"))?;
    let max_prefix = if ip.is_ipv4() { 32 } else { 128 };
    match prefix.parse::<u8>() {
        Ok(len) if len <= max_prefix => Ok(ip),
        _ => Err(format!("{cidr:?}: bad prefix length {prefix:?}")),
    }
}

/// The spec's error object, printed on stdout by a failing plugin.
#[derive(Debug, Deserialize, PartialEq)]
pub(super) struct PluginError {
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

pub(super) fn plugin_error(stdout: &[u8]) -> Option<PluginError> {
    serde_json::from_slice(stdout).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// As the bridge plugin prints it for cniVersion 0.4.0: `version` per IP.
    fn result_0_4_0() -> Value {
        json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                { "name": "cni0", "mac": "ee:11:22:33:44:55" },
                { "name": "veth1a2b3c4d", "mac": "ee:11:22:33:44:66" },
                { "name": "eth0", "mac": "ee:11:22:33:44:77", "sandbox": "/run/berth/pods/abc/netns" }
            ],
            "ips": [
                { "version": "4", "interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1" }
            ],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dns": {}
        })
    }

    /// Spec 1.0.0: no `version`; here dual-stack with IPv6 listed first.
    fn result_1_0_0() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                { "name": "berth0", "mac": "ee:11:22:33:44:55" },
                { "name": "eth0", "mac": "ee:11:22:33:44:77", "sandbox": "/run/berth/pods/abc/netns" }
            ],
            "ips": [
                { "interface": 1, "address": "fd00:88::5/64", "gateway": "fd00:88::1" },
                { "interface": 0, "address": "10.88.0.1/16" },
                { "interface": 1, "address": "10.88.0.5/16", "gateway": "10.88.0.1" }
            ],
            "dns": {}
        })
    }

    #[test]
    fn reads_the_pod_ip_of_a_0_4_0_result() {
        let (ips, ifname) = pod_ips(&result_0_4_0(), "eth0").unwrap();
        assert_eq!(ips, vec!["10.88.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(ifname, "eth0");
    }

    #[test]
    fn reads_a_dual_stack_1_0_0_result_ipv4_first_and_skips_host_side_addresses() {
        let (ips, _) = pod_ips(&result_1_0_0(), "eth0").unwrap();
        let expected: Vec<IpAddr> = vec!["10.88.0.5".parse().unwrap(), "fd00:88::5".parse().unwrap()];
        assert_eq!(ips, expected);
    }

    #[test]
    fn an_ip_without_interface_index_belongs_to_the_pod() {
        let result = json!({ "cniVersion": "0.3.1", "ips": [{ "version": "4", "address": "192.168.1.9/24" }] });
        assert_eq!(pod_ips(&result, "eth0").unwrap().0, vec!["192.168.1.9".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn unusable_results_say_why() {
        let cases = [
            (json!({ "cniVersion": "1.0.0" }), "no IP address for the pod's interface eth0"),
            (json!({ "ips": [{ "address": "10.0.0.1" }] }), "ips[0].address: \"10.0.0.1\" is not in CIDR notation"),
            (json!({ "ips": [{ "address": "10.0.0.1/33" }] }), "bad prefix length"),
            (json!({ "ips": [{ "address": "ten/8" }] }), "is not an IP address"),
            (json!({ "ips": [{ "interface": 3, "address": "10.0.0.1/8" }] }), "ips[0].interface 3: no such interface"),
            (json!({ "ips": "none" }), "malformed result"),
        ];
        for (result, expected) in cases {
            let err = pod_ips(&result, "eth0").unwrap_err();
            assert!(err.contains(expected), "{err:?} should contain {expected:?}");
        }
    }

    #[test]
    fn parses_the_spec_error_object() {
        let printed = br#"{"cniVersion":"1.0.0","code":7,"msg":"invalid network config","details":"bridge: missing"}"#;
        assert_eq!(
            plugin_error(printed),
            Some(PluginError { code: 7, msg: "invalid network config".into(), details: "bridge: missing".into() })
        );
        assert_eq!(plugin_error(br#"{"code":11}"#).unwrap().msg, "");
        assert_eq!(plugin_error(b"panic: runtime error"), None);
    }
}
