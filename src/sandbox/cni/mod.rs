//! CNI invocation: runs the plugins of the pod network's configuration list as the
//! CNI spec (1.0, and 0.4/0.3.x configs) describes, with no Rust crate and no result
//! cache of its own. The caller keeps the ADD result (`NetworkStatus::result`, e.g.
//! in the pod record) and hands it back to CHECK and DEL as the spec's `prevResult`;
//! plugins keep their own state (host-local's leases under /var/lib/cni).

mod config;
mod result;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

use super::netns;

pub use config::{DEFAULT_BRIDGE, DEFAULT_CONFIG_FILE, DEFAULT_NETWORK_NAME, DEFAULT_SUBNET, default_network};

/// The interface name of the pod network inside every sandbox.
pub const POD_IFNAME: &str = "eth0";

/// Where to find network configurations and plugin binaries (berthd config `[cni]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniSettings {
    pub conf_dir: PathBuf,
    /// Searched in order for each plugin; also the plugins' own CNI_PATH (bridge
    /// finds its IPAM plugin there).
    pub bin_dirs: Vec<PathBuf>,
}

impl Default for CniSettings {
    fn default() -> Self {
        CniSettings {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn as_cni(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A CRI port mapping. One with `host_port` 0 publishes nothing and is not passed to
/// the plugins, as in containerd.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: u16,
    pub host_port: u16,
    /// Empty: every host address.
    pub host_ip: String,
}

/// The pod as the plugins see it: its id is CNI's container id, the rest goes into
/// CNI_ARGS the way kubelet-era runtimes pass it.
#[derive(Debug, Clone, Copy)]
pub struct PodNetwork<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub netns: &'a Path,
    pub port_mappings: &'a [PortMapping],
}

/// The pod's place on the network after ADD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// IPv4 first, then IPv6; the first one is the pod IP.
    pub ips: Vec<IpAddr>,
    pub interface: String,
    /// The chain's final result as the last plugin printed it, for CHECK and DEL.
    pub result: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI config directory {dir}: {source}")]
    ConfDir { dir: PathBuf, source: io::Error },
    #[error("CNI config {file}: {reason}")]
    InvalidConfig { file: PathBuf, reason: String },
    #[error("CNI network {network}: plugin {plugin:?} not found in {}", DirList(.bin_dirs))]
    PluginNotFound { network: String, plugin: String, bin_dirs: Vec<PathBuf> },
    #[error("{field} {value:?}: {reason}")]
    InvalidArgument { field: String, value: String, reason: &'static str },
    #[error("CNI plugin {plugin} {command}: running {}: {source}", .binary.display())]
    Exec { plugin: String, command: &'static str, binary: PathBuf, source: io::Error },
    #[error("CNI plugin {plugin} {command} failed with code {code}: {msg}{}", Details(.details))]
    Plugin { plugin: String, command: &'static str, code: u32, msg: String, details: String },
    #[error("CNI plugin {plugin} {command} failed ({status}): {output}")]
    PluginFailed { plugin: String, command: &'static str, status: String, output: String },
    #[error("CNI plugin {plugin} {command}: unusable result: {reason}")]
    InvalidResult { plugin: String, command: &'static str, reason: String },
}

struct DirList<'a>(&'a [PathBuf]);

impl fmt::Display for DirList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dirs: Vec<_> = self.0.iter().map(|d| d.display().to_string()).collect();
        write!(f, "[{}]", dirs.join(", "))
    }
}

struct Details<'a>(&'a str);

impl fmt::Display for Details<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { Ok(()) } else { write!(f, " ({})", self.0) }
    }
}

/// A loaded pod network: the plugins of one configuration list, resolved to binaries.
/// Immutable; reload with [`Cni::load`] to pick up a changed config directory.
#[derive(Debug, Clone)]
pub struct Cni {
    config_file: PathBuf,
    name: String,
    cni_version: String,
    disable_check: bool,
    plugins: Vec<Plugin>,
    /// CNI_PATH for the plugins, joined once.
    cni_path: String,
}

#[derive(Debug, Clone)]
struct Plugin {
    kind: String,
    binary: PathBuf,
    config: Map<String, Value>,
    wants_port_mappings: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Add,
    Del,
    Check,
}

impl Command {
    fn as_cni(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

impl Cni {
    /// Loads the pod network from the lexically first `*.conf`, `*.conflist` or
    /// `*.json` of `settings.conf_dir`, writing the default bridge network there first
    /// when it has none. Every plugin binary must exist in `settings.bin_dirs`. The
    /// error explains why the node's network is not ready.
    pub fn load(settings: &CniSettings) -> Result<Cni, CniError> {
        let config_file = config::select_config_file(&settings.conf_dir)?;
        let list = config::read_network_list(&config_file)?;
        let plugins = list
            .plugins
            .into_iter()
            .map(|config| {
                let kind = config["type"].as_str().unwrap_or_default().to_string();
                let binary = find_plugin(&kind, &settings.bin_dirs).ok_or_else(|| CniError::PluginNotFound {
                    network: list.name.clone(),
                    plugin: kind.clone(),
                    bin_dirs: settings.bin_dirs.clone(),
                })?;
                let wants_port_mappings =
                    config.get("capabilities").and_then(|c| c.get("portMappings")) == Some(&Value::Bool(true));
                Ok(Plugin { kind, binary, config, wants_port_mappings })
            })
            .collect::<Result<Vec<_>, CniError>>()?;
        let cni_path = settings.bin_dirs.iter().map(|d| d.to_string_lossy()).collect::<Vec<_>>().join(":");
        tracing::debug!(file = %config_file.display(), network = %list.name, "loaded CNI network");
        Ok(Cni {
            config_file,
            name: list.name,
            cni_version: list.cni_version,
            disable_check: list.disable_check,
            plugins,
            cni_path,
        })
    }

    pub fn network_name(&self) -> &str {
        &self.name
    }

    /// The configuration file the network was loaded from.
    pub fn config_file(&self) -> &Path {
        &self.config_file
    }

    /// Attaches the pod: ADD through the chain in order, each plugin getting the
    /// previous one's result. When anything fails after the first plugin started,
    /// the chain is deleted again (best effort) so that no address or rule stays
    /// behind, and the ADD error is returned.
    pub async fn add(&self, pod: &PodNetwork<'_>) -> Result<NetworkStatus, CniError> {
        let args = Invocation::new(pod)?;
        let netns = path_str("netns", pod.netns)?;
        let mut previous: Option<Value> = None;
        match self.add_chain(&args, netns, &mut previous).await {
            Ok(status) => Ok(status),
            Err(error) => {
                if let Err(cleanup) = self.del_chain(&args, netns, previous.as_ref()).await {
                    tracing::warn!(pod = pod.id, %cleanup, "cleaning up after a failed CNI ADD");
                }
                Err(error)
            }
        }
    }

    /// The ADD chain proper; `previous` holds the latest result, for the rollback.
    async fn add_chain(
        &self,
        args: &Invocation<'_>,
        netns: &str,
        previous: &mut Option<Value>,
    ) -> Result<NetworkStatus, CniError> {
        let invalid_result = |plugin: &Plugin, reason| CniError::InvalidResult {
            plugin: plugin.kind.clone(),
            command: Command::Add.as_cni(),
            reason,
        };
        let mut last = None;
        for plugin in &self.plugins {
            let printed = self.run(plugin, Command::Add, args, netns, previous.as_ref()).await?;
            let result: Value =
                serde_json::from_slice(&printed).map_err(|e| invalid_result(plugin, format!("not JSON: {e}")))?;
            *previous = Some(result);
            last = Some(plugin);
        }
        let (Some(plugin), Some(result)) = (last, previous.as_ref()) else {
            // load() refuses empty plugin lists, so a chain always ran.
            return Err(CniError::InvalidConfig { file: self.config_file.clone(), reason: "no plugins".into() });
        };
        let (ips, interface) = result::pod_ips(result, POD_IFNAME).map_err(|reason| invalid_result(plugin, reason))?;
        Ok(NetworkStatus { ips, interface, result: result.clone() })
    }

    /// Detaches the pod: DEL through the chain in reverse. Idempotent, and works when
    /// no namespace is left at `pod.netns` (CNI_NETNS is then empty, as the spec
    /// allows for DEL). Every plugin gets its DEL even when an earlier one failed;
    /// "not found" failures count as already done. `previous` is the ADD status when
    /// the caller still has it (the spec's prevResult); None works for the plugins
    /// of the default network.
    pub async fn del(&self, pod: &PodNetwork<'_>, previous: Option<&NetworkStatus>) -> Result<(), CniError> {
        let args = Invocation::new(pod)?;
        // An unmounted leftover file is as gone as a missing one: handing it to the
        // plugins would make every retried DEL fail on "not a network namespace".
        let netns = if netns::is_namespace(pod.netns) { path_str("netns", pod.netns)? } else { "" };
        self.del_chain(&args, netns, previous.map(|p| &p.result)).await
    }

    async fn del_chain(&self, args: &Invocation<'_>, netns: &str, previous: Option<&Value>) -> Result<(), CniError> {
        let mut first_error = None;
        for plugin in self.plugins.iter().rev() {
            match self.run(plugin, Command::Del, args, netns, previous).await {
                Ok(_) => {}
                Err(error) if is_already_gone(&error, netns.is_empty()) => {
                    tracing::debug!(pod = args.id, %error, "CNI DEL: nothing left to delete");
                }
                Err(error) => {
                    tracing::warn!(pod = args.id, %error, "CNI DEL");
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Asks every plugin whether the pod's network is still as ADD left it. Networks
    /// of spec 0.3.x (no CHECK yet) and those with `disableCheck` pass without a call.
    pub async fn check(&self, pod: &PodNetwork<'_>, previous: &NetworkStatus) -> Result<(), CniError> {
        if self.disable_check || self.cni_version.starts_with("0.3.") {
            return Ok(());
        }
        let args = Invocation::new(pod)?;
        let netns = path_str("netns", pod.netns)?;
        for plugin in &self.plugins {
            self.run(plugin, Command::Check, &args, netns, Some(&previous.result)).await?;
        }
        Ok(())
    }

    /// Runs one plugin with the CNI environment and its config on stdin; returns its
    /// stdout on success. The child is killed if the caller gives up on the future.
    async fn run(
        &self,
        plugin: &Plugin,
        command: Command,
        args: &Invocation<'_>,
        netns: &str,
        previous: Option<&Value>,
    ) -> Result<Vec<u8>, CniError> {
        let stdin_config = self.plugin_config(plugin, args, previous);
        let exec_err = |source| CniError::Exec {
            plugin: plugin.kind.clone(),
            command: command.as_cni(),
            binary: plugin.binary.clone(),
            source,
        };
        // The plugins inherit berthd's environment: they run iptables and friends
        // through PATH. Every CNI_ variable is set, so none leaks in from outside.
        let mut child = tokio::process::Command::new(&plugin.binary)
            .env("CNI_COMMAND", command.as_cni())
            .env("CNI_CONTAINERID", args.id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", POD_IFNAME)
            .env("CNI_ARGS", &args.cni_args)
            .env("CNI_PATH", &self.cni_path)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(exec_err)?;
        let mut stdin = child.stdin.take().ok_or_else(|| exec_err(io::Error::other("no stdin pipe")))?;
        let feed = async move {
            stdin.write_all(&stdin_config).await?;
            // Dropping stdin closes it: the plugin reads to EOF before acting.
            drop(stdin);
            Ok::<_, io::Error>(())
        };
        // Fed and drained at once, so that neither pipe can fill up and stall both.
        let (fed, output) = tokio::join!(feed, child.wait_with_output());
        let output = output.map_err(exec_err)?;
        if output.status.success() {
            if !output.stderr.is_empty() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                tracing::debug!(plugin = %plugin.kind, command = command.as_cni(), %stderr, "CNI plugin output");
            }
            // A plugin that exits successfully without reading its config did not do
            // what was asked; a broken pipe otherwise just follows a failure below.
            fed.map_err(exec_err)?;
            return Ok(output.stdout);
        }
        if let Some(error) = result::plugin_error(&output.stdout) {
            return Err(CniError::Plugin {
                plugin: plugin.kind.clone(),
                command: command.as_cni(),
                code: error.code,
                msg: error.msg,
                details: error.details,
            });
        }
        let mut text = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if text.is_empty() {
            text = String::from_utf8_lossy(&output.stdout).trim().to_string();
        }
        Err(CniError::PluginFailed {
            plugin: plugin.kind.clone(),
            command: command.as_cni(),
            status: output.status.to_string(),
            output: truncate(text, 4096),
        })
    }

    /// The plugin's own config with what the runtime adds per the spec: the network's
    /// name and version, the previous result, and the runtime config for capabilities
    /// the plugin declares.
    fn plugin_config(&self, plugin: &Plugin, args: &Invocation<'_>, previous: Option<&Value>) -> Vec<u8> {
        let mut config = plugin.config.clone();
        config.insert("name".into(), Value::String(self.name.clone()));
        config.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        if let Some(previous) = previous {
            config.insert("prevResult".into(), previous.clone());
        }
        if plugin.wants_port_mappings && !args.port_mappings.is_empty() {
            let runtime = config.entry("runtimeConfig").or_insert_with(|| json!({}));
            if let Value::Object(runtime) = runtime {
                runtime.insert("portMappings".into(), Value::Array(args.port_mappings.clone()));
            }
        }
        serde_json::to_vec(&config).expect("a JSON map always serialises")
    }
}

/// The per-pod part of an invocation, validated once.
struct Invocation<'a> {
    id: &'a str,
    cni_args: String,
    port_mappings: Vec<Value>,
}

impl<'a> Invocation<'a> {
    fn new(pod: &PodNetwork<'a>) -> Result<Invocation<'a>, CniError> {
        validate_container_id(pod.id)?;
        for (field, value) in [("pod.name", pod.name), ("pod.namespace", pod.namespace), ("pod.uid", pod.uid)] {
            validate_cni_arg(field, value)?;
        }
        let cni_args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pod.namespace, pod.name, pod.id, pod.uid
        );
        let mut port_mappings = Vec::new();
        for (i, mapping) in pod.port_mappings.iter().enumerate() {
            if mapping.host_port == 0 {
                continue;
            }
            if mapping.container_port == 0 {
                return Err(invalid_argument(format!("port_mappings[{i}].container_port"), "0", "must be positive"));
            }
            let mut entry = json!({
                "hostPort": mapping.host_port,
                "containerPort": mapping.container_port,
                "protocol": mapping.protocol.as_cni(),
            });
            if !mapping.host_ip.is_empty() {
                if mapping.host_ip.parse::<IpAddr>().is_err() {
                    return Err(invalid_argument(
                        format!("port_mappings[{i}].host_ip"),
                        &mapping.host_ip,
                        "not an IP address",
                    ));
                }
                entry["hostIP"] = Value::String(mapping.host_ip.clone());
            }
            port_mappings.push(entry);
        }
        Ok(Invocation { id: pod.id, cni_args, port_mappings })
    }
}

fn invalid_argument(field: impl Into<String>, value: &str, reason: &'static str) -> CniError {
    CniError::InvalidArgument { field: field.into(), value: value.to_string(), reason }
}

/// The spec's container id: alphanumerics, then also `_`, `.` and `-`.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut bytes = id.bytes();
    let valid = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(invalid_argument("pod.id", id, "must be alphanumeric, '_', '.' or '-', starting alphanumeric"))
    }
}

/// CNI_ARGS is `KEY=VALUE;KEY=VALUE`: a separator inside a value would forge keys.
fn validate_cni_arg(field: &str, value: &str) -> Result<(), CniError> {
    if value.is_empty() {
        return Err(invalid_argument(field, value, "must not be empty"));
    }
    if value.chars().any(|c| c == ';' || c == '=' || c.is_control()) {
        return Err(invalid_argument(field, value, "must not contain ';', '=' or control characters"));
    }
    Ok(())
}

fn path_str<'p>(field: &str, path: &'p Path) -> Result<&'p str, CniError> {
    path.to_str().ok_or_else(|| invalid_argument(field, &path.to_string_lossy(), "not valid UTF-8"))
}

/// DEL failures that mean the thing to delete is already gone, as containerd treats
/// them: the spec's "container unknown" code, a "not found" message, and a missing
/// file when the namespace itself is gone.
fn is_already_gone(error: &CniError, netns_gone: bool) -> bool {
    let text = match error {
        CniError::Plugin { code: 3, .. } => return true,
        CniError::Plugin { msg, details, .. } => format!("{msg} {details}"),
        CniError::PluginFailed { output, .. } => output.clone(),
        _ => return false,
    };
    text.contains("not found") || (netns_gone && text.contains("no such file or directory"))
}

fn find_plugin(kind: &str, bin_dirs: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    bin_dirs
        .iter()
        .map(|dir| dir.join(kind))
        .find(|path| std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEM_BIN: &str = "/usr/lib/cni";

    fn settings(conf_dir: &Path) -> CniSettings {
        CniSettings {
            conf_dir: conf_dir.to_path_buf(),
            bin_dirs: vec![PathBuf::from("/nonexistent/cni"), PathBuf::from(SYSTEM_BIN)],
        }
    }

    fn pod<'a>(netns: &'a Path, port_mappings: &'a [PortMapping]) -> PodNetwork<'a> {
        PodNetwork { id: "0123abcd", name: "web", namespace: "default", uid: "uid-1", netns, port_mappings }
    }

    #[test]
    fn load_resolves_plugins_across_bin_dirs_and_writes_the_default_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let cni = Cni::load(&settings(dir.path())).unwrap();
        assert_eq!(cni.network_name(), DEFAULT_NETWORK_NAME);
        assert_eq!(cni.config_file(), dir.path().join(DEFAULT_CONFIG_FILE));
        let kinds: Vec<_> = cni.plugins.iter().map(|p| (p.kind.as_str(), p.wants_port_mappings)).collect();
        assert_eq!(kinds, [("bridge", false), ("portmap", true)]);
        assert_eq!(cni.plugins[0].binary, Path::new(SYSTEM_BIN).join("bridge"));
        assert_eq!(cni.cni_path, format!("/nonexistent/cni:{SYSTEM_BIN}"));
    }

    #[test]
    fn a_missing_plugin_binary_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("10-x.conflist"),
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"},{"type":"no-such-plugin"}]}"#,
        )
        .unwrap();
        let err = Cni::load(&settings(dir.path())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("CNI network x: plugin \"no-such-plugin\" not found in [/nonexistent/cni, {SYSTEM_BIN}]")
        );
    }

    #[test]
    fn plugin_config_carries_name_version_prev_result_and_port_mappings_by_capability() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("10-x.conflist"),
            r#"{"cniVersion":"0.4.0","name":"x","plugins":[
                {"type":"bridge","bridge":"b0"},
                {"type":"portmap","capabilities":{"portMappings":true},"runtimeConfig":{"other":1}}]}"#,
        )
        .unwrap();
        let cni = Cni::load(&settings(dir.path())).unwrap();
        let mappings = [
            PortMapping { protocol: Protocol::Udp, container_port: 53, host_port: 5353, host_ip: "127.0.0.1".into() },
            PortMapping { protocol: Protocol::Tcp, container_port: 80, host_port: 0, host_ip: String::new() },
            PortMapping { protocol: Protocol::Sctp, container_port: 9, host_port: 9009, host_ip: String::new() },
        ];
        let args = Invocation::new(&pod(Path::new("/x"), &mappings)).unwrap();
        assert_eq!(
            args.cni_args,
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=uid-1"
        );
        let previous = json!({"cniVersion":"0.4.0","ips":[]});
        let bridge: Value = serde_json::from_slice(&cni.plugin_config(&cni.plugins[0], &args, None)).unwrap();
        assert_eq!(bridge, json!({"type":"bridge","bridge":"b0","name":"x","cniVersion":"0.4.0"}));
        let portmap: Value =
            serde_json::from_slice(&cni.plugin_config(&cni.plugins[1], &args, Some(&previous))).unwrap();
        assert_eq!(portmap["prevResult"], previous);
        assert_eq!(
            portmap["runtimeConfig"],
            json!({"other": 1, "portMappings": [
                {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
                {"hostPort": 9009, "containerPort": 9, "protocol": "sctp"}
            ]})
        );
    }

    #[test]
    fn pod_values_that_would_corrupt_the_cni_environment_are_refused_by_field() {
        let netns = Path::new("/x");
        let ok = pod(netns, &[]);
        let cases = [
            (PodNetwork { id: "", ..ok }, "pod.id"),
            (PodNetwork { id: "-abc", ..ok }, "pod.id"),
            (PodNetwork { id: "abc/def", ..ok }, "pod.id"),
            (PodNetwork { name: "web;K8S_POD_NAMESPACE=kube-system", ..ok }, "pod.name"),
            (PodNetwork { namespace: "", ..ok }, "pod.namespace"),
            (PodNetwork { uid: "a\nb", ..ok }, "pod.uid"),
        ];
        for (pod, field) in cases {
            let err = Invocation::new(&pod).err().expect("refused");
            assert!(matches!(&err, CniError::InvalidArgument { field: f, .. } if f == field), "{err}");
        }
        let bad_ip =
            [PortMapping { protocol: Protocol::Tcp, container_port: 80, host_port: 8080, host_ip: "localhost".into() }];
        let err = Invocation::new(&pod(netns, &bad_ip)).err().unwrap();
        assert_eq!(err.to_string(), "port_mappings[0].host_ip \"localhost\": not an IP address");
        let no_container_port =
            [PortMapping { protocol: Protocol::Tcp, container_port: 0, host_port: 8080, host_ip: String::new() }];
        let err = Invocation::new(&pod(netns, &no_container_port)).err().unwrap();
        assert!(err.to_string().starts_with("port_mappings[0].container_port"), "{err}");
    }

    #[test]
    fn already_gone_errors_are_recognised_as_containerd_does() {
        let plugin = |code, msg: &str| CniError::Plugin {
            plugin: "p".into(),
            command: "DEL",
            code,
            msg: msg.into(),
            details: String::new(),
        };
        assert!(is_already_gone(&plugin(3, "container unknown"), false));
        assert!(is_already_gone(&plugin(999, "link \"eth0\" not found"), false));
        assert!(is_already_gone(&plugin(999, "open /x: no such file or directory"), true));
        assert!(!is_already_gone(&plugin(999, "open /x: no such file or directory"), false));
        assert!(!is_already_gone(&plugin(11, "try again later"), true));
    }

    #[tokio::test]
    async fn a_plugin_error_names_the_plugin_and_carries_the_spec_error() {
        let dir = tempfile::tempdir().unwrap();
        // The bridge plugin rejects a config it cannot decode before touching the host.
        std::fs::write(
            dir.path().join("10-bad.conflist"),
            r#"{"cniVersion":"1.0.0","name":"bad","plugins":[{"type":"bridge","mtu":"large"}]}"#,
        )
        .unwrap();
        let cni = Cni::load(&settings(dir.path())).unwrap();
        let netns = dir.path().join("no-netns");
        let err = cni.add(&pod(&netns, &[])).await.unwrap_err();
        match &err {
            CniError::Plugin { plugin, command, .. } => assert_eq!((plugin.as_str(), *command), ("bridge", "ADD")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().starts_with("CNI plugin bridge ADD failed with code "), "{err}");
    }
}
