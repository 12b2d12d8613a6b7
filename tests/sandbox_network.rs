//! A pod's network end to end with the real CNI plugins from Debian
//! (containernetworking-plugins in /usr/lib/cni) and the real kernel: persistent
//! namespaces, the default bridge network, port mappings through portmap/iptables,
//! and idempotent teardown. Needs root.
//!
//! Every test attaches to its own bridge and /24 (`berthtestN`, 10.237.N.0/24) under
//! its own network name, so tests run in parallel and never touch a real `berth0`.
//! Traffic goes only to 127.0.0.1 and to addresses inside the namespaces and on the
//! bridges these tests create.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth::sandbox::cni::{self, Cni, CniSettings, NetworkStatus, PodNetwork, PortMapping, Protocol};
use berth::sandbox::netns;
use serde_json::Value;

const PLUGIN_DIR: &str = "/usr/lib/cni";
const HOST_LOCAL_STORE: &str = "/var/lib/cni/networks";
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// portmap's top-level nat chains, shared by every portmap user on the host; the
/// first holds one rule per mapped container.
const PORTMAP_CHAINS: [&str; 3] = ["CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ"];

/// One test's private network: the default network's config, renamed onto its own
/// bridge and subnet. Dropping it deletes the bridge, host-local's store for the
/// network and, for a network that maps ports, the portmap chains it brought when
/// no one else uses them.
struct TestNetwork {
    dir: tempfile::TempDir,
    name: String,
    bridge: String,
    subnet_third_octet: u8,
    cleans_portmap_chains: bool,
}

impl TestNetwork {
    fn new(index: u8) -> TestNetwork {
        Self::create(index, false)
    }

    /// Only one test maps ports: another test's teardown must not race its ADD.
    fn mapping_ports(index: u8) -> TestNetwork {
        Self::create(index, !chain_exists(PORTMAP_CHAINS[0]))
    }

    fn create(index: u8, cleans_portmap_chains: bool) -> TestNetwork {
        let network = TestNetwork {
            dir: tempfile::tempdir().unwrap(),
            name: format!("berthtest-{index}"),
            bridge: format!("berthtest{index}"),
            subnet_third_octet: index,
            cleans_portmap_chains,
        };
        // A previous run killed midway may have left the bridge behind.
        network.delete_bridge();
        network
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 237, self.subnet_third_octet, 1)
    }

    /// Writes the default network with this test's name, bridge and subnet into a
    /// config dir of its own and loads it, so the test exercises exactly what berthd
    /// writes on a fresh node.
    fn load(&self) -> Cni {
        self.load_with_plugin_after(None)
    }

    fn load_with_plugin_after(&self, extra_plugin: Option<Value>) -> Cni {
        let mut config = cni::default_network();
        config["name"] = Value::String(self.name.clone());
        config["plugins"][0]["bridge"] = Value::String(self.bridge.clone());
        config["plugins"][0]["ipam"]["ranges"][0][0]["subnet"] =
            Value::String(format!("10.237.{}.0/24", self.subnet_third_octet));
        if let Some(plugin) = extra_plugin {
            config["plugins"].as_array_mut().unwrap().push(plugin);
        }
        let conf_dir = self.dir.path().join("net.d");
        fs::create_dir(&conf_dir).unwrap();
        fs::write(conf_dir.join("10-test.conflist"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let cni = Cni::load(&settings(&conf_dir)).unwrap();
        assert_eq!(cni.network_name(), self.name);
        cni
    }

    fn netns_path(&self, pod: &str) -> PathBuf {
        self.dir.path().join(format!("{pod}.netns"))
    }

    fn lease_file(&self, ip: IpAddr) -> PathBuf {
        Path::new(HOST_LOCAL_STORE).join(&self.name).join(ip.to_string())
    }

    fn delete_bridge(&self) {
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        self.delete_bridge();
        let _ = fs::remove_dir_all(Path::new(HOST_LOCAL_STORE).join(&self.name));
        // The chains are shared with any other portmap user on this host: only remove
        // them when they were not there before and hold no container's rules now.
        if self.cleans_portmap_chains && chain_exists(PORTMAP_CHAINS[0]) && chain_rules(PORTMAP_CHAINS[0]).is_empty() {
            for chain in PORTMAP_CHAINS {
                for rule in nat_rules().iter().filter(|r| r.starts_with("-A ") && r.ends_with(&format!("-j {chain}"))) {
                    // `iptables -S` quotes comments for a shell; a shell splits them back.
                    let delete = format!("iptables -w -t nat -D {}", &rule["-A ".len()..]);
                    let _ = Command::new("sh").args(["-c", &delete]).output();
                }
            }
            for chain in PORTMAP_CHAINS {
                let _ = Command::new("iptables").args(["-w", "-t", "nat", "-F", chain]).output();
                let _ = Command::new("iptables").args(["-w", "-t", "nat", "-X", chain]).output();
            }
        }
    }
}

fn settings(conf_dir: &Path) -> CniSettings {
    CniSettings { conf_dir: conf_dir.to_path_buf(), bin_dirs: vec![PathBuf::from(PLUGIN_DIR)] }
}

fn nat_rules() -> Vec<String> {
    let out = Command::new("iptables").args(["-w", "-t", "nat", "-S"]).output().unwrap();
    assert!(out.status.success(), "iptables -t nat -S: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

fn chain_exists(chain: &str) -> bool {
    nat_rules().iter().any(|r| r == &format!("-N {chain}"))
}

fn chain_rules(chain: &str) -> Vec<String> {
    nat_rules().into_iter().filter(|r| r.starts_with(&format!("-A {chain} "))).collect()
}

fn pod<'a>(id: &'a str, netns: &'a Path, port_mappings: &'a [PortMapping]) -> PodNetwork<'a> {
    PodNetwork {
        id,
        name: "web",
        namespace: "berth-test",
        uid: "c0ffee00-0000-4000-8000-000000000001",
        netns,
        port_mappings,
    }
}

fn pod_ipv4(status: &NetworkStatus) -> Ipv4Addr {
    match status.ips.first() {
        Some(IpAddr::V4(ip)) => *ip,
        other => panic!("expected an IPv4 pod address first, got {other:?} in {status:?}"),
    }
}

/// A listener on `addr` inside the pod's namespace that answers each connection
/// with "pong from the pod" after reading a line; returns once it is listening.
fn serve_in_pod(netns_path: &Path, addr: SocketAddr) -> std::thread::JoinHandle<()> {
    // The socket is created inside the namespace and stays there; accepting on it
    // from an ordinary thread afterwards is fine.
    let listener = netns::run_in(netns_path, || TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut line = [0u8; 5];
        conn.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"ping\n");
        conn.write_all(b"pong from the pod").unwrap();
    })
}

fn ping_pong(target: SocketAddr) -> String {
    let mut conn =
        TcpStream::connect_timeout(&target, IO_TIMEOUT).unwrap_or_else(|e| panic!("connecting to {target}: {e}"));
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    conn.write_all(b"ping\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn an_empty_config_dir_gets_a_default_network_without_masquerade() {
    let dir = tempfile::tempdir().unwrap();
    let cni = Cni::load(&settings(dir.path())).unwrap();
    assert_eq!(cni.network_name(), cni::DEFAULT_NETWORK_NAME);
    let written: Value = serde_json::from_slice(&fs::read(dir.path().join(cni::DEFAULT_CONFIG_FILE)).unwrap()).unwrap();
    let bridge = &written["plugins"][0];
    assert_eq!(bridge["type"], "bridge");
    assert_eq!(bridge["bridge"], cni::DEFAULT_BRIDGE);
    assert_eq!(bridge["ipMasq"], false, "the default network must not masquerade: {written}");
    assert_eq!(bridge["isGateway"], true);
    assert_eq!(bridge["ipam"]["type"], "host-local");
    assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], cni::DEFAULT_SUBNET);
    assert_eq!(written["plugins"][1]["type"], "portmap");
    assert_eq!(written["plugins"][1]["capabilities"]["portMappings"], true);
}

#[test]
fn a_missing_plugin_makes_the_network_not_ready_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let settings = CniSettings { conf_dir: dir.path().to_path_buf(), bin_dirs: vec![dir.path().join("bin")] };
    let err = Cni::load(&settings).unwrap_err();
    assert!(err.to_string().contains("plugin \"bridge\" not found in"), "{err}");
}

#[tokio::test]
async fn a_pod_gets_an_address_on_the_bridge_and_answers_there() {
    let network = TestNetwork::new(0);
    let cni = network.load();
    let netns_path = network.netns_path("pod0");
    netns::create(&netns_path).unwrap();
    let pod = pod("berthtestpod0", &netns_path, &[]);

    let status = cni.add(&pod).await.unwrap();
    let ip = pod_ipv4(&status);
    assert_eq!(status.interface, "eth0");
    assert_eq!(ip.octets()[..3], [10, 237, network.subnet_third_octet], "{ip} in the test subnet");
    assert_ne!(ip, network.gateway());
    assert!(network.lease_file(IpAddr::V4(ip)).exists(), "host-local holds the lease");

    // From the host to the pod's address, which lives in the namespace we created.
    let server = serve_in_pod(&netns_path, SocketAddr::new(ip.into(), 8080));
    assert_eq!(ping_pong(SocketAddr::new(ip.into(), 8080)), "pong from the pod");
    server.join().unwrap();

    // From the pod to its gateway, the bridge on the host, through the default route.
    let gateway = network.gateway().to_string();
    let ping = netns::run_in(&netns_path, || Command::new("busybox").args(["ping", "-c1", "-W3", &gateway]).output())
        .unwrap()
        .unwrap();
    assert!(ping.status.success(), "ping {gateway} from the pod: {}", String::from_utf8_lossy(&ping.stdout));

    cni.check(&pod, &status).await.unwrap();

    cni.del(&pod, Some(&status)).await.unwrap();
    assert!(!network.lease_file(IpAddr::V4(ip)).exists(), "DEL released the address");
    cni.del(&pod, Some(&status)).await.unwrap();
    cni.del(&pod, None).await.unwrap();
    let err = cni.check(&pod, &status).await.unwrap_err();
    assert!(err.to_string().starts_with("CNI plugin bridge CHECK failed"), "{err}");

    netns::remove(&netns_path).unwrap();
    netns::remove(&netns_path).unwrap();
    assert!(!netns_path.exists());
}

#[tokio::test]
async fn a_host_port_on_localhost_reaches_the_pod_until_del() {
    let network = TestNetwork::mapping_ports(1);
    let cni = network.load();
    let netns_path = network.netns_path("pod1");
    netns::create(&netns_path).unwrap();
    let host_port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mappings =
        [PortMapping { protocol: Protocol::Tcp, container_port: 8080, host_port, host_ip: "127.0.0.1".into() }];
    let pod = pod("berthtestpod1", &netns_path, &mappings);

    let status = cni.add(&pod).await.unwrap();
    let ip = pod_ipv4(&status);
    let dnat = chain_rules("CNI-HOSTPORT-DNAT");
    assert!(
        dnat.iter().any(|r| r.contains(&format!("--dports {host_port}"))),
        "portmap rule for {host_port}: {dnat:?}"
    );

    // 127.0.0.1 is DNATed across the bridge: portmap turns on route_localnet for the
    // bridge and masquerades the loopback source, so nothing in the config is needed.
    let server = serve_in_pod(&netns_path, SocketAddr::new(ip.into(), 8080));
    let localhost = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), host_port);
    assert_eq!(ping_pong(localhost), "pong from the pod");
    server.join().unwrap();

    cni.del(&pod, Some(&status)).await.unwrap();
    let rules = nat_rules();
    assert!(
        !rules.iter().any(|r| r.contains(pod.id) || r.contains(&format!("--dports {host_port}"))),
        "DEL removed the mapping: {rules:?}"
    );
    assert!(TcpStream::connect_timeout(&localhost, IO_TIMEOUT).is_err(), "nothing answers on {localhost} after DEL");
    cni.del(&pod, Some(&status)).await.unwrap();

    netns::remove(&netns_path).unwrap();
}

#[tokio::test]
async fn del_after_the_namespace_is_gone_still_releases_the_address() {
    let network = TestNetwork::new(2);
    let cni = network.load();
    let netns_path = network.netns_path("pod2");
    netns::create(&netns_path).unwrap();
    let mappings = [PortMapping { protocol: Protocol::Udp, container_port: 53, host_port: 0, host_ip: String::new() }];
    let pod = pod("berthtestpod2", &netns_path, &mappings);
    let status = cni.add(&pod).await.unwrap();
    let lease = network.lease_file(status.ips[0]);
    assert!(lease.exists());

    // The order of a crash or an impatient cleanup: the namespace first. An empty
    // file stays at its path, as after a crash between creating a mount point and
    // mounting on it.
    netns::remove(&netns_path).unwrap();
    fs::write(&netns_path, b"").unwrap();
    cni.del(&pod, None).await.unwrap();
    assert!(!lease.exists(), "the address went back to the pool");
    cni.del(&pod, Some(&status)).await.unwrap();
    netns::remove(&netns_path).unwrap();
}

#[tokio::test]
async fn a_failing_add_rolls_back_what_earlier_plugins_did() {
    let network = TestNetwork::new(3);
    // tuning fails inside the pod after bridge has created the veth and host-local
    // has leased an address: a sysctl that does not exist.
    let cni = network.load_with_plugin_after(Some(serde_json::json!({
        "type": "tuning",
        "sysctl": { "net.core.berth_no_such_sysctl": "1" }
    })));
    let netns_path = network.netns_path("pod3");
    netns::create(&netns_path).unwrap();
    let pod = pod("berthtestpod3", &netns_path, &[]);

    let err = cni.add(&pod).await.unwrap_err();
    assert!(err.to_string().starts_with("CNI plugin tuning ADD failed"), "{err}");
    let store = Path::new(HOST_LOCAL_STORE).join(&network.name);
    let leases: Vec<_> = fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.parse::<IpAddr>().is_ok())
        .collect();
    assert!(leases.is_empty(), "leases left behind: {leases:?}");
    let links = netns::run_in(&netns_path, || Command::new("ip").args(["-o", "link"]).output()).unwrap().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("eth0"), "the pod's veth was deleted again: {links}");

    netns::remove(&netns_path).unwrap();
}
