//! Choosing and reading the network configuration, as containerd's CRI plugin does:
//! the lexically first `*.conf`, `*.conflist` or `*.json` of the config directory
//! is the pod network, and only that file is read. A broken first file is an error
//! naming it, not a reason to fall through to the next one (CRI-O's choice), since a
//! node silently on another network is harder to notice than a node that is not ready.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::CniError;
use crate::sandbox::files::write_atomic;

/// The network berthd writes when the config directory has none.
pub const DEFAULT_CONFIG_FILE: &str = "10-berth.conflist";
pub const DEFAULT_NETWORK_NAME: &str = "berth";
pub const DEFAULT_BRIDGE: &str = "berth0";
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";

const CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];
/// Spec versions whose configs and results berth reads. 0.3.x lacks CHECK.
pub(super) const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// A network configuration list, whatever file shape it came from.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    /// Each plugin's configuration object as written; `type` is known to be a plain
    /// binary name.
    pub plugins: Vec<Map<String, Value>>,
}

/// The default network: a bridge with the host as gateway, a private subnet handed
/// out by host-local, and no masquerade, so pods reach the host and each other but
/// nothing beyond the node on their own address. Loopback needs no plugin: the netns
/// module brings `lo` up when it creates the namespace.
pub fn default_network() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": DEFAULT_NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": DEFAULT_BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                // A pod reaching its own hostPort goes out and back in on its veth.
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": DEFAULT_SUBNET }]],
                    "routes": [{ "dst": "0.0.0.0/0" }]
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    })
}

/// The file that configures the pod network, writing the default network first when
/// `conf_dir` has no config at all (or does not exist).
pub(super) fn select_config_file(conf_dir: &Path) -> Result<PathBuf, CniError> {
    if let Some(first) = config_files(conf_dir)?.into_iter().next() {
        return Ok(first);
    }
    let dir_err = |source| CniError::ConfDir { dir: conf_dir.to_path_buf(), source };
    fs::create_dir_all(conf_dir).map_err(dir_err)?;
    let path = conf_dir.join(DEFAULT_CONFIG_FILE);
    let text = serde_json::to_string_pretty(&default_network()).expect("a JSON value always serialises");
    write_atomic(&path, format!("{text}\n").as_bytes()).map_err(dir_err)?;
    tracing::info!(file = %path.display(), "no CNI config found; wrote the default bridge network");
    Ok(path)
}

/// Config files of `conf_dir` in lexical order of their names; a missing directory
/// has none.
fn config_files(conf_dir: &Path) -> Result<Vec<PathBuf>, CniError> {
    let dir_err = |source| CniError::ConfDir { dir: conf_dir.to_path_buf(), source };
    let entries = match fs::read_dir(conf_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(dir_err(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(dir_err)?.path();
        let wanted = path.extension().and_then(|e| e.to_str()).is_some_and(|e| CONFIG_EXTENSIONS.contains(&e));
        // Symlinks count as files (ConfigMaps mount configs that way); a directory
        // named like a config does not.
        if wanted && !path.is_dir() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

pub(super) fn read_network_list(file: &Path) -> Result<NetworkList, CniError> {
    let invalid = |reason: String| CniError::InvalidConfig { file: file.to_path_buf(), reason };
    let text = fs::read(file).map_err(|e| invalid(format!("reading: {e}")))?;
    let is_list = file.extension().is_some_and(|e| e == "conflist");
    parse_network_list(&text, is_list).map_err(invalid)
}

/// Parses a `.conflist` (`is_list`) or a single-plugin `.conf`/`.json`, which becomes
/// a list of one plugin under the config's own name and version.
fn parse_network_list(text: &[u8], is_list: bool) -> Result<NetworkList, String> {
    let value: Value = serde_json::from_slice(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(mut top) = value else {
        return Err("not a JSON object".into());
    };
    let name = string_field(&top, "name")?;
    let cni_version = string_field(&top, "cniVersion")?;
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(format!(
            "cniVersion {cni_version:?} is not supported (supported: {})",
            SUPPORTED_VERSIONS.join(", ")
        ));
    }
    let (disable_check, plugins) = if is_list {
        let disable_check = match top.get("disableCheck") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("disableCheck: not a boolean".into()),
        };
        let Some(Value::Array(plugins)) = top.remove("plugins") else {
            return Err("plugins: missing or not an array".into());
        };
        let plugins = plugins
            .into_iter()
            .enumerate()
            .map(|(i, plugin)| match plugin {
                Value::Object(plugin) => Ok(plugin),
                _ => Err(format!("plugins[{i}]: not a JSON object")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        (disable_check, plugins)
    } else {
        // Also catches a conflist saved under a .conf name: it has no top-level type.
        if !top.contains_key("type") {
            return Err("type: missing (a network list belongs in a .conflist file)".into());
        }
        (false, vec![top])
    };
    if plugins.is_empty() {
        return Err("plugins: the list is empty".into());
    }
    for (i, plugin) in plugins.iter().enumerate() {
        let kind = string_field(plugin, "type").map_err(|e| format!("plugins[{i}].{e}"))?;
        // The type names a binary looked up in the plugin directories; a path
        // would escape them.
        if kind.contains('/') || kind == "." || kind == ".." {
            return Err(format!("plugins[{i}].type {kind:?}: must be a plain binary name"));
        }
    }
    Ok(NetworkList { name, cni_version, disable_check, plugins })
}

fn string_field(object: &Map<String, Value>, key: &str) -> Result<String, String> {
    match object.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(format!("{key}: must not be empty")),
        Some(_) => Err(format!("{key}: not a string")),
        None => Err(format!("{key}: missing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    const BRIDGE_CONF: &str = r#"{"cniVersion":"0.4.0","name":"single","type":"bridge","bridge":"cni0"}"#;
    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"listed",
        "plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn the_lexically_first_config_wins_whatever_its_extension() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "20-listed.conflist", LIST);
        write(dir.path(), "10-single.conf", BRIDGE_CONF);
        write(dir.path(), "05-notes.txt", "not a config");
        fs::create_dir(dir.path().join("00-dir.conf")).unwrap();
        let first = select_config_file(dir.path()).unwrap();
        assert_eq!(first, dir.path().join("10-single.conf"));

        write(dir.path(), "09-other.json", r#"{"cniVersion":"0.3.1","name":"json","type":"ptp"}"#);
        assert_eq!(select_config_file(dir.path()).unwrap(), dir.path().join("09-other.json"));
    }

    #[test]
    fn a_single_conf_becomes_a_list_of_one() {
        let list = parse_network_list(BRIDGE_CONF.as_bytes(), false).unwrap();
        assert_eq!(list.name, "single");
        assert_eq!(list.cni_version, "0.4.0");
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0]["bridge"], "cni0");
        assert!(!list.disable_check);
    }

    #[test]
    fn a_conflist_keeps_its_plugins_in_order() {
        let list = parse_network_list(LIST.as_bytes(), true).unwrap();
        assert_eq!(list.name, "listed");
        let kinds: Vec<_> = list.plugins.iter().map(|p| p["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["bridge", "portmap"]);
        let no_check = r#"{"cniVersion":"1.0.0","name":"n","disableCheck":true,"plugins":[{"type":"bridge"}]}"#;
        assert!(parse_network_list(no_check.as_bytes(), true).unwrap().disable_check);
    }

    #[test]
    fn invalid_configs_are_errors_that_say_what_is_wrong() {
        let cases: [(&str, bool, &str); 10] = [
            ("{not json", true, "not valid JSON"),
            ("[]", true, "not a JSON object"),
            (r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#, true, "name: missing"),
            (r#"{"name":"n","plugins":[{"type":"bridge"}]}"#, true, "cniVersion: missing"),
            (
                r#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"bridge"}]}"#,
                true,
                "cniVersion \"0.2.0\" is not supported",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#, true, "plugins: the list is empty"),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"bridge":"x"}]}"#, true, "plugins[0].type: missing"),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../../bin/sh"}]}"#, true, "plain binary name"),
            (LIST, false, "type: missing (a network list belongs in a .conflist file)"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":{"type":"bridge"}}"#,
                true,
                "plugins: missing or not an array",
            ),
        ];
        for (text, is_list, expected) in cases {
            let err = parse_network_list(text.as_bytes(), is_list).unwrap_err();
            assert!(err.contains(expected), "{text}: {err:?} should contain {expected:?}");
        }
    }

    #[test]
    fn a_broken_first_file_is_reported_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "10-broken.conflist", "{");
        write(dir.path(), "20-good.conflist", LIST);
        let first = select_config_file(dir.path()).unwrap();
        let err = read_network_list(&first).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("10-broken.conflist") && message.contains("not valid JSON"), "{message}");
    }

    #[test]
    fn an_empty_or_missing_dir_gets_the_default_network_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let conf_dir = dir.path().join("net.d");
        let path = select_config_file(&conf_dir).unwrap();
        assert_eq!(path, conf_dir.join(DEFAULT_CONFIG_FILE));
        let written: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(written, default_network());
        assert_eq!(written["plugins"][0]["ipMasq"], false);
        let list = read_network_list(&path).unwrap();
        assert_eq!(list.name, DEFAULT_NETWORK_NAME);

        fs::write(&path, LIST).unwrap();
        assert_eq!(select_config_file(&conf_dir).unwrap(), path);
        assert_eq!(fs::read_to_string(&path).unwrap(), LIST, "an existing config is never overwritten");
    }
}
