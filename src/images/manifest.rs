//! OCI image-spec and Docker image manifest v2 schema 2 documents, and choosing
//! a platform from an index (manifest list) the way containerd does.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::images::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_NONDISTRIBUTABLE: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_NONDISTRIBUTABLE_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_LAYER_NONDISTRIBUTABLE_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_FOREIGN_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Schema 1 manifests (signed and unsigned); recognised only to refuse them by name.
pub const DOCKER_MANIFEST_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_MANIFEST_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Marks the manifests BuildKit adds to an index for provenance/SBOM attestations.
const ANNOTATION_REFERENCE_TYPE: &str = "vnd.docker.reference.type";

pub fn is_index_media_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

pub fn is_manifest_media_type(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

pub fn is_config_media_type(media_type: &str) -> bool {
    media_type == OCI_CONFIG || media_type == DOCKER_CONFIG
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_as_default")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_as_default")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_as_default")]
    pub os_features: Vec<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// An image manifest, OCI or Docker schema 2 (the two share this layout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default, deserialize_with = "null_as_default")]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_as_default")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image index or Docker manifest list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_as_default")]
    pub annotations: BTreeMap<String, String>,
}

/// The image configuration blob. Keys berth does not model (`container`,
/// `docker_version`, `container_config`, ...) are kept in `extra` so that a
/// config read and written again is unchanged apart from key order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_as_default")]
    pub history: Vec<History>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub fs_type: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<Digest>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// The run-time defaults of an image, with Docker's PascalCase keys. `Entrypoint`
/// and `Cmd` stay `Option` because an explicit empty list (`ENTRYPOINT []`)
/// means something different from an absent one. Keys not modelled here
/// (`Healthcheck`, `OnBuild`, `Shell`, `ArgsEscaped`, ...) are kept in `extra`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_as_default")]
    pub exposed_ports: BTreeMap<String, EmptyObject>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_as_default")]
    pub volumes: BTreeMap<String, EmptyObject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The `{}` value of `ExposedPorts` and `Volumes` entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyObject {}

/// Docker writes `null` for empty lists and maps (`"Volumes": null`).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The platform of this host, with Go's architecture names as images use them.
pub fn host_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" if cfg!(target_feature = "v7") => ("arm", Some("v7")),
        "arm" => ("arm", Some("v6")),
        "x86" => ("386", None),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "loongarch64" => ("loong64", None),
        "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
        other => (other, None),
    };
    Platform {
        architecture: architecture.to_string(),
        os: std::env::consts::OS.to_string(),
        variant: variant.map(str::to_string),
        ..Platform::default()
    }
}

/// containerd's normal form: Go architecture names, and the variant that is the
/// architecture's baseline written as none (`arm64/v8` is `arm64`, `amd64/v1` is
/// `amd64`) except for 32-bit arm where no variant means v7.
fn normalise(os: &str, architecture: &str, variant: Option<&str>) -> (String, String, String) {
    let variant = variant.unwrap_or("");
    let (architecture, variant) = match architecture {
        "i386" | "i686" => ("386", ""),
        "x86_64" | "x86-64" | "amd64" => ("amd64", if variant == "v1" { "" } else { variant }),
        "aarch64" | "arm64" => ("arm64", if matches!(variant, "8" | "v8" | "v8.0") { "" } else { variant }),
        "armhf" => ("arm", "v7"),
        "armel" => ("arm", "v6"),
        "arm" => (
            "arm",
            match variant {
                "" | "7" => "v7",
                "5" => "v5",
                "6" => "v6",
                "8" => "v8",
                other => other,
            },
        ),
        other => (other, variant),
    };
    (os.to_ascii_lowercase(), architecture.to_string(), variant.to_string())
}

/// The platforms `want` can run, best first, as containerd orders them: the exact
/// platform, then older variants of the same architecture (amd64/v3 → v2 → v1,
/// arm/v7 → v6 → v5), then the 32-bit sibling (amd64 → 386, arm64 → arm/v8...).
fn compatible_platforms(want: &Platform) -> Vec<(String, String, String)> {
    let (os, architecture, variant) = normalise(&want.os, &want.architecture, want.variant.as_deref());
    let numeric_variant = variant.strip_prefix('v').and_then(|v| v.parse::<u32>().ok());
    let mut out = vec![(os.clone(), architecture.clone(), variant.clone())];
    match architecture.as_str() {
        "amd64" => {
            for older in (1..numeric_variant.unwrap_or(1)).rev() {
                let older = if older == 1 { String::new() } else { format!("v{older}") };
                out.push((os.clone(), architecture.clone(), older));
            }
            out.push((os, "386".into(), String::new()));
        }
        "arm" => {
            for older in (5..numeric_variant.unwrap_or(5)).rev() {
                out.push((os.clone(), architecture.clone(), format!("v{older}")));
            }
        }
        "arm64" => {
            let arm_variant = if variant.is_empty() { "v8".to_string() } else { variant };
            let arm = Platform { os, architecture: "arm".into(), variant: Some(arm_variant), ..Platform::default() };
            out.extend(compatible_platforms(&arm));
        }
        _ => {}
    }
    out
}

fn is_attestation(desc: &Descriptor) -> bool {
    desc.annotations.get(ANNOTATION_REFERENCE_TYPE).is_some_and(|t| t == "attestation-manifest")
        || desc.platform.as_ref().is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
}

/// The index entry to run on `want`: the best of the compatible platforms, the
/// first such entry when several are equal. A nested index is a candidate too
/// (the caller follows it): at its platform's rank after the manifests of that
/// rank, or, without a platform, after every platform match. Manifests without a
/// platform and attestation manifests are never chosen.
pub fn select_platform<'a>(index: &'a Index, want: &Platform) -> Option<&'a Descriptor> {
    let preference = compatible_platforms(want);
    index
        .manifests
        .iter()
        .filter(|desc| {
            (is_manifest_media_type(&desc.media_type) || is_index_media_type(&desc.media_type)) && !is_attestation(desc)
        })
        .filter_map(|desc| {
            let nested = is_index_media_type(&desc.media_type);
            let rank = match desc.platform.as_ref() {
                Some(platform) => {
                    let candidate = normalise(&platform.os, &platform.architecture, platform.variant.as_deref());
                    preference.iter().position(|p| *p == candidate)?
                }
                None if nested => preference.len(),
                None => return None,
            };
            Some(((rank, nested), desc))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, desc)| desc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
            ..Platform::default()
        }
    }

    fn entry(n: u8, media_type: &str, p: Option<Platform>) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: Digest::of(&[n]),
            size: 100 + u64::from(n),
            urls: vec![],
            annotations: BTreeMap::new(),
            platform: p,
        }
    }

    fn index_of(entries: Vec<Descriptor>) -> Index {
        Index { schema_version: 2, media_type: Some(OCI_INDEX.into()), manifests: entries, annotations: BTreeMap::new() }
    }

    fn chosen(index: &Index, want: Platform) -> Option<u64> {
        select_platform(index, &want).map(|d| d.size - 100)
    }

    #[test]
    fn exact_platform_wins_and_attestations_are_skipped() {
        let mut attestation = entry(0, OCI_MANIFEST, Some(platform("unknown", "unknown", None)));
        attestation.annotations.insert(ANNOTATION_REFERENCE_TYPE.into(), "attestation-manifest".into());
        let index = index_of(vec![
            attestation,
            entry(1, OCI_MANIFEST, Some(platform("linux", "arm64", Some("v8")))),
            entry(2, OCI_MANIFEST, Some(platform("linux", "amd64", None))),
            entry(3, OCI_MANIFEST, Some(platform("linux", "arm", Some("v7")))),
            entry(4, OCI_MANIFEST, Some(platform("windows", "amd64", None))),
        ]);
        assert_eq!(chosen(&index, platform("linux", "amd64", None)), Some(2));
        assert_eq!(chosen(&index, platform("linux", "arm64", Some("v8"))), Some(1));
        assert_eq!(chosen(&index, platform("linux", "arm64", None)), Some(1));
        assert_eq!(chosen(&index, platform("linux", "aarch64", None)), Some(1));
        assert_eq!(chosen(&index, platform("linux", "arm", None)), Some(3));
        assert_eq!(chosen(&index, platform("windows", "amd64", None)), Some(4));
        assert_eq!(chosen(&index, platform("linux", "s390x", None)), None);
        assert_eq!(chosen(&index, platform("unknown", "unknown", None)), None);
    }

    #[test]
    fn variant_rules() {
        let index = index_of(vec![
            entry(1, DOCKER_MANIFEST, Some(platform("linux", "arm", Some("v6")))),
            entry(2, DOCKER_MANIFEST, Some(platform("linux", "arm64", None))),
            entry(3, DOCKER_MANIFEST, Some(platform("linux", "386", None))),
        ]);
        // arm/v7 runs v6 images; arm/v5 does not.
        assert_eq!(chosen(&index, platform("linux", "arm", Some("v7"))), Some(1));
        assert_eq!(chosen(&index, platform("linux", "arm", Some("v5"))), None);
        // An arm64 entry without a variant is v8.
        assert_eq!(chosen(&index, platform("linux", "arm64", Some("v8"))), Some(2));
        // amd64 falls back to 386, as containerd does.
        assert_eq!(chosen(&index, platform("linux", "amd64", None)), Some(3));

        let only_arm32 = index_of(vec![entry(1, OCI_MANIFEST, Some(platform("linux", "arm", Some("v7"))))]);
        assert_eq!(chosen(&only_arm32, platform("linux", "arm64", Some("v8"))), Some(1));

        let amd64_levels = index_of(vec![
            entry(1, OCI_MANIFEST, Some(platform("linux", "amd64", Some("v1")))),
            entry(2, OCI_MANIFEST, Some(platform("linux", "amd64", Some("v2")))),
            entry(3, OCI_MANIFEST, Some(platform("linux", "amd64", Some("v4")))),
        ]);
        assert_eq!(chosen(&amd64_levels, platform("linux", "amd64", Some("v3"))), Some(2));
        assert_eq!(chosen(&amd64_levels, platform("linux", "amd64", None)), Some(1));
    }

    #[test]
    fn first_of_equals_wins_and_unusable_entries_are_ignored() {
        let index = index_of(vec![
            entry(1, OCI_MANIFEST, None),
            entry(2, OCI_INDEX, Some(platform("linux", "amd64", None))),
            entry(3, OCI_MANIFEST, Some(platform("linux", "amd64", None))),
            entry(4, OCI_MANIFEST, Some(platform("linux", "amd64", None))),
        ]);
        assert_eq!(chosen(&index, platform("linux", "amd64", None)), Some(3));
    }

    #[test]
    fn a_nested_index_is_chosen_when_no_manifest_matches_as_well() {
        let nested = index_of(vec![
            entry(1, OCI_INDEX, None),
            entry(2, OCI_MANIFEST, Some(platform("linux", "arm64", None))),
            entry(3, OCI_INDEX, Some(platform("linux", "amd64", None))),
        ]);
        assert_eq!(chosen(&nested, platform("linux", "amd64", None)), Some(3));
        assert_eq!(chosen(&nested, platform("linux", "s390x", None)), Some(1));
    }

    #[test]
    fn host_platform_uses_go_names() {
        let host = host_platform();
        assert_eq!(host.os, "linux");
        assert!(!["x86_64", "aarch64"].contains(&host.architecture.as_str()), "{host}");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.to_string(), "linux/amd64");
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host.to_string(), "linux/arm64/v8");
        }
    }

    #[test]
    fn docker_index_and_manifest_parse() {
        let list = r#"{
          "schemaVersion": 2,
          "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
          "manifests": [{
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "size": 527,
            "platform": {"architecture": "arm", "os": "linux", "variant": "v7", "os.features": ["x"]}
          }]
        }"#;
        let index: Index = serde_json::from_str(list).unwrap();
        let p = index.manifests[0].platform.as_ref().unwrap();
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert_eq!(p.os_features, vec!["x"]);

        let manifest = r#"{
          "schemaVersion": 2,
          "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
          "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023,
                     "digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
          "layers": [{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "size": 32654,
                      "digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                      "urls": ["https://example.invalid/layer"]}]
        }"#;
        let m: Manifest = serde_json::from_str(manifest).unwrap();
        assert_eq!(m.config.media_type, DOCKER_CONFIG);
        assert_eq!(m.layers[0].urls, vec!["https://example.invalid/layer"]);
        let again: Manifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn image_config_round_trips_unmodelled_keys_and_tolerates_nulls() {
        let text = r#"{
          "architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
          "docker_version": "24.0.7",
          "config": {
            "User": "1000", "Env": ["PATH=/bin"], "Entrypoint": null, "Cmd": ["sh"],
            "ExposedPorts": {"80/tcp": {}}, "Volumes": null, "WorkingDir": "/srv",
            "Labels": {"a": "b"}, "StopSignal": "SIGQUIT",
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 1000000000},
            "OnBuild": null, "ArgsEscaped": true
          },
          "rootfs": {"type": "layers", "diff_ids": ["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]},
          "history": [{"created_by": "/bin/sh -c #(nop) CMD [\"sh\"]", "empty_layer": true}]
        }"#;
        let config: ImageConfig = serde_json::from_str(text).unwrap();
        let c = config.config.as_ref().unwrap();
        assert_eq!(c.user.as_deref(), Some("1000"));
        assert_eq!(c.entrypoint, None);
        assert_eq!(c.cmd.as_deref(), Some(&["sh".to_string()][..]));
        assert!(c.exposed_ports.contains_key("80/tcp"));
        assert!(c.volumes.is_empty());
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(c.extra["Healthcheck"]["Test"][1], "true");
        assert_eq!(c.extra["ArgsEscaped"], true);
        assert_eq!(config.extra["docker_version"], "24.0.7");
        assert_eq!(config.rootfs.diff_ids.len(), 1);
        assert!(config.history[0].empty_layer);

        let written = serde_json::to_value(&config).unwrap();
        assert_eq!(written["docker_version"], "24.0.7");
        assert_eq!(written["config"]["Healthcheck"]["Interval"], 1000000000);
        assert_eq!(written["config"]["ExposedPorts"]["80/tcp"], serde_json::json!({}));
        assert_eq!(written["rootfs"]["type"], "layers");
        let reread: ImageConfig = serde_json::from_value(written).unwrap();
        assert_eq!(reread, config);
    }

    #[test]
    fn explicit_empty_entrypoint_survives() {
        let c: ContainerConfig = serde_json::from_str(r#"{"Entrypoint": [], "Cmd": null}"#).unwrap();
        assert_eq!(c.entrypoint, Some(vec![]));
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"Entrypoint":[]}"#);
    }
}
