//! berthd's configuration: a TOML file whose every key has an embedded default.
//! `docs/configuration.md` documents each key; keep the two together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::sandbox::cni::CniSettings;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";
/// A config file is a few kilobytes; a larger one is a mistake (or an attack on
/// the parser), refused before it is read. The toml crate bounds nesting itself.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent data: content store, snapshots, metadata database.
    pub root: PathBuf,
    /// Volatile state: the socket's default home, per-pod and per-container state.
    pub state: PathBuf,
    /// The unix socket serving CRI v1 and the builder service.
    pub socket: PathBuf,
    /// The image that holds a pod's namespaces; pinned, so never garbage-collected.
    pub sandbox_image: String,
    /// How many layer downloads one pull runs at once (as containerd's
    /// `max_concurrent_downloads`): per pull, so that a stuck registry holding
    /// one pull's downloads never blocks a pull from another.
    pub max_concurrent_downloads: usize,
    pub registry: RegistryConfig,
    pub cni: CniSettings,
    pub runtime: RuntimeConfig,
    pub streaming: StreamingConfig,
    pub builder: BuilderSettings,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BuilderSettings {
    /// The largest body an `ADD <url>` takes; it streams to disk, never to memory.
    pub max_download_bytes: u64,
    /// An `ADD <url>` whose server sends nothing for this long fails its step.
    pub download_stall_timeout_seconds: u64,
}

impl Default for BuilderSettings {
    fn default() -> Self {
        BuilderSettings { max_download_bytes: 8 << 30, download_stall_timeout_seconds: 60 }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Where the exec/attach/port-forward server listens. Port 0 picks a free
    /// port; loopback by default because its URLs carry no authentication but
    /// their tokens.
    pub address: std::net::SocketAddr,
    /// How long a URL returned by Exec/Attach/PortForward stays usable if unused.
    pub token_ttl_seconds: u64,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig { address: std::net::SocketAddr::from(([127, 0, 0, 1], 0)), token_ttl_seconds: 60 }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The handler used when a pod names none.
    pub default_handler: String,
    /// Seconds between the stop signal and SIGKILL when StopContainer's timeout
    /// is 0, as `docker stop` waits.
    pub stop_grace_period: u64,
    /// The shim binary started once per pod. Default: `berth-shim` beside berthd.
    pub shim: Option<PathBuf>,
    /// OCI runtimes by CRI runtime handler name. `runc` is always present unless
    /// overridden here.
    pub handlers: BTreeMap<String, RuntimeHandler>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeHandler {
    /// The OCI runtime binary (runc, crun, youki: anything with runc's CLI).
    pub path: PathBuf,
    /// The runtime's state directory (`--root`). Default: `<state>/runtime/<name>`.
    pub root: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { default_handler: "runc".into(), stop_grace_period: 10, shim: None, handlers: BTreeMap::new() }
    }
}

impl RuntimeConfig {
    /// The configured handlers plus the built-in `runc`.
    pub fn effective_handlers(&self) -> BTreeMap<String, RuntimeHandler> {
        let mut handlers = self.handlers.clone();
        handlers.entry("runc".into()).or_insert(RuntimeHandler { path: PathBuf::from("runc"), root: None });
        handlers
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registry host (as it appears in references, e.g. `docker.io`) to a list of
    /// endpoint URLs tried in order before the registry itself.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Hosts (`host` or `host:port`) reached over plain http, or over https without
    /// certificate verification.
    pub insecure: Vec<String>,
    /// Credentials per endpoint host (`host` or `host:port`, as berthd connects to
    /// it), used when a request brings none of its own: pulls without a CRI
    /// `AuthConfig`, and `berth push`.
    pub auths: BTreeMap<String, RegistryAuth>,
    /// A download (manifest, config or layer) that receives less than 1 KiB in
    /// this many seconds is stalled and fails, so that a stuck registry does not
    /// hold a pull forever.
    pub download_stall_timeout_seconds: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            mirrors: BTreeMap::new(),
            insecure: Vec::new(),
            auths: BTreeMap::new(),
            download_stall_timeout_seconds: 60,
        }
    }
}

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

/// The password stays out of logs and error messages.
impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/berth"),
            state: PathBuf::from("/run/berth"),
            socket: PathBuf::from("/run/berth/berth.sock"),
            sandbox_image: "registry.k8s.io/pause:3.10".to_string(),
            max_concurrent_downloads: 3,
            registry: RegistryConfig::default(),
            cni: CniSettings::default(),
            runtime: RuntimeConfig::default(),
            streaming: StreamingConfig::default(),
            builder: BuilderSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing config {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("config {path}: {field}: {reason}")]
    Invalid { path: PathBuf, field: &'static str, reason: String },
}

/// Reads at most [`MAX_CONFIG_BYTES`] (whatever the file's size claims: it may be
/// a pipe or grow while read).
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        let message = format!("larger than {MAX_CONFIG_BYTES} bytes: not a berthd config");
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, message));
    }
    Ok(text)
}

impl Config {
    /// Loads `path`, or the default path when it exists, or the embedded defaults.
    /// An explicitly named file that is missing is an error; the default one is optional.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let text = match read_bounded(&path) {
            Ok(text) => text,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.clone(), source })?;
        config.validate().map_err(|(field, reason)| ConfigError::Invalid { path, field, reason })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_concurrent_downloads == 0 {
            return Err(("max_concurrent_downloads", "must be at least 1".into()));
        }
        for (field, p) in [("root", &self.root), ("state", &self.state), ("socket", &self.socket)] {
            if !p.is_absolute() {
                return Err((field, format!("{} is not an absolute path", p.display())));
            }
        }
        if !self.runtime.effective_handlers().contains_key(&self.runtime.default_handler) {
            return Err(("runtime.default_handler", format!("{:?} is not a configured handler", self.runtime.default_handler)));
        }
        if self.streaming.token_ttl_seconds == 0 {
            return Err(("streaming.token_ttl_seconds", "must be at least 1".into()));
        }
        if self.registry.download_stall_timeout_seconds == 0 {
            return Err(("registry.download_stall_timeout_seconds", "must be at least 1".into()));
        }
        for (host, endpoints) in &self.registry.mirrors {
            for endpoint in endpoints {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(("registry.mirrors", format!("{host}: endpoint {endpoint:?} must start with http:// or https://")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(toml::from_str::<Config>("").unwrap(), Config::default());
    }

    #[test]
    fn registry_credentials_parse_and_never_print() {
        let c: Config = toml::from_str(
            r#"
            [registry.auths."127.0.0.1:5000"]
            username = "ci"
            password = "s3cret"
            "#,
        )
        .unwrap();
        let auth = &c.registry.auths["127.0.0.1:5000"];
        assert_eq!((auth.username.as_str(), auth.password.as_str()), ("ci", "s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(toml::from_str::<Config>("[registry.auths.h]\nusername = \"u\"\n").is_err(), "a password is required");
    }

    #[test]
    fn parses_the_test_mirror_example() {
        let c: Config = toml::from_str(
            r#"
            [registry.mirrors]
            "registry.k8s.io" = ["http://127.0.0.1:5000"]
            "docker.io" = ["http://127.0.0.1:5000"]
            [registry]
            insecure = ["127.0.0.1:5000"]
            "#,
        )
        .unwrap();
        assert_eq!(c.registry.mirrors["docker.io"], vec!["http://127.0.0.1:5000"]);
        assert_eq!(c.registry.insecure, vec!["127.0.0.1:5000"]);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn hostile_files_are_errors_not_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, format!("sandbox_image = \"{}\"\n", "x".repeat(MAX_CONFIG_BYTES as usize))).unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("larger than 1048576 bytes"), "{error}");
        // Deep nesting within the size limit: the toml crate refuses it (it bounds
        // its recursion) instead of overflowing the stack.
        for deep in [format!("a = {}1{}", "[".repeat(500_000), "]".repeat(500_000)), format!("a = {}1{}", "{b = ".repeat(100_000), "}".repeat(100_000))] {
            std::fs::write(&path, &deep).unwrap();
            assert!(Config::load(Some(&path)).is_err(), "a {}-byte nest must be refused", deep.len());
        }
        let many_tables = (0..20_000).map(|i| format!("[runtime.handlers.h{i}]\npath = \"/x\"\n")).collect::<String>();
        std::fs::write(&path, many_tables).unwrap();
        assert!(Config::load(Some(&path)).is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_field() {
        assert!(toml::from_str::<Config>("rooot = \"/x\"").unwrap_err().to_string().contains("rooot"));
        let c: Config = toml::from_str("max_concurrent_downloads = 0").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "max_concurrent_downloads");
        let c: Config = toml::from_str("[registry.mirrors]\n\"docker.io\" = [\"127.0.0.1:5000\"]").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "registry.mirrors");
        let c: Config = toml::from_str("[registry]\ndownload_stall_timeout_seconds = 0").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "registry.download_stall_timeout_seconds");
    }
}
