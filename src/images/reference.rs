//! Image references (`[registry/]repository[:tag][@digest]`), parsed by the
//! distribution reference grammar and normalised the way docker and containerd
//! normalise them, so that `busybox`, `docker.io/library/busybox:latest` and
//! `index.docker.io/library/busybox` all name the same image.

use std::fmt;
use std::str::FromStr;

use crate::images::digest::Digest;

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const DOCKER_HUB_OFFICIAL_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;
/// No valid reference is longer (a 255-character name, a 128-character tag and a
/// sha256 digest make 456); anything longer is refused before it is looked at, so
/// that errors, which quote the reference and its parts, stay short.
const MAX_REFERENCE_LEN: usize = 512;
/// Characters of an over-long reference shown in its error.
const SHOWN_LEN: usize = 64;

/// A fully normalised image reference: always a registry and a repository, and
/// a tag and/or a digest (a reference with neither gets the tag `latest`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let fail = |reason: String| ReferenceError { reference: s.to_string(), reason };
        if s.is_empty() {
            return Err(fail("reference is empty".into()));
        }
        if s.len() > MAX_REFERENCE_LEN {
            let shown: String = s.chars().take(SHOWN_LEN).collect();
            let reason = format!("reference is {} bytes long, the limit is {MAX_REFERENCE_LEN}", s.len());
            return Err(ReferenceError { reference: format!("{shown}…"), reason });
        }
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            // Docker refuses these so that an image id can never be mistaken for a name.
            return Err(fail("a 64-character hexadecimal string is an image id, not a repository name".into()));
        }

        let (name_and_tag, digest) = match s.split_once('@') {
            Some((left, digest)) => {
                let digest = digest.parse::<Digest>().map_err(|e| fail(e.to_string()))?;
                (left, Some(digest))
            }
            None => (s, None),
        };

        // A tag separator is a ':' after the last '/', so a registry port is never taken for a tag.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].find(':') {
            Some(i) => {
                let colon = last_slash + i;
                (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(fail)?;
        }
        if name.is_empty() {
            return Err(fail("repository name is empty".into()));
        }

        let (registry, remainder) = split_registry(name);
        check_domain(registry).map_err(fail)?;
        let registry = if registry == DOCKER_HUB_LEGACY { DOCKER_HUB } else { registry };
        if remainder.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(fail(format!("repository name {remainder:?} must be lowercase")));
        }
        let repository = if registry == DOCKER_HUB && !remainder.contains('/') {
            format!("{DOCKER_HUB_OFFICIAL_NAMESPACE}/{remainder}")
        } else {
            remainder.to_string()
        };
        check_path(&repository).map_err(fail)?;

        let full_name_len = registry.len() + 1 + repository.len();
        if full_name_len > MAX_NAME_LEN {
            return Err(fail(format!("name is {full_name_len} characters long, the limit is {MAX_NAME_LEN}")));
        }

        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference { registry: registry.to_string(), repository, tag, digest })
    }

    /// The registry host as written in references (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// Registry and repository without tag or digest (`docker.io/library/busybox`).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The repo-digest form `name@digest`; the tag is dropped because the digest
    /// alone identifies the content.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference { registry: self.registry.clone(), repository: self.repository.clone(), tag: None, digest: Some(digest) }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, ReferenceError> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Docker's rule for telling a registry from the first path component: it is a
/// registry when it contains '.' or ':', is `localhost`, or has uppercase letters
/// (which a repository may not have). Otherwise the image lives on Docker Hub.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

/// `host[:port]` where host is dot-separated components of letters, digits and
/// inner hyphens, or a bracketed IPv6 address.
fn check_domain(domain: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("registry {domain:?}: {why}"));
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return bad("unterminated '[' in IPv6 address");
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return bad("IPv6 address may hold only hexadecimal digits and ':'");
        }
        match after {
            "" => (None, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return bad("expected ':port' after the IPv6 address"),
            },
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        for component in host.split('.') {
            let bytes = component.as_bytes();
            let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
                return bad("empty domain component");
            };
            if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
                return bad("domain components must start and end with a letter or digit");
            }
            if !bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-') {
                return bad("domain components may hold only letters, digits and '-'");
            }
        }
    }
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("port must be a number");
    }
    Ok(())
}

/// Path components separated by '/', each `[a-z0-9]+` runs joined by one of the
/// separators '.', '_', '__' or any number of '-'.
fn check_path(path: &str) -> Result<(), String> {
    for component in path.split('/') {
        check_path_component(component).map_err(|why| format!("repository {path:?}: component {component:?} {why}"))?;
    }
    Ok(())
}

fn check_path_component(component: &str) -> Result<(), &'static str> {
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    match (bytes.first(), bytes.last()) {
        (None, _) | (_, None) => return Err("is empty"),
        (Some(&first), Some(&last)) if !is_alnum(first) || !is_alnum(last) => {
            return Err("must start and end with a lowercase letter or digit");
        }
        _ => {}
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let allowed = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !allowed {
            return Err("may join lowercase letters and digits only with '.', '_', '__' or dashes");
        }
    }
    Ok(())
}

/// `[\w][\w.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let Some(&first) = tag.as_bytes().first() else {
        return Err("tag is empty".into());
    };
    if tag.len() > MAX_TAG_LEN {
        return Err(format!("tag is {} characters long, the limit is {MAX_TAG_LEN}", tag.len()));
    }
    if !word(first) {
        return Err(format!("tag {tag:?} must start with a letter, digit or '_'"));
    }
    if !tag.bytes().all(|b| word(b) || b == b'.' || b == b'-') {
        return Err(format!("tag {tag:?} may hold only letters, digits, '_', '.' and '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7";

    fn normalised(s: &str) -> String {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).to_string()
    }

    fn rejected(s: &str) -> String {
        match Reference::parse(s) {
            Ok(r) => panic!("{s:?} parsed as {r}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn docker_hub_names_get_registry_namespace_and_tag() {
        assert_eq!(normalised("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalised("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalised("foo/bar"), "docker.io/foo/bar:latest");
        assert_eq!(normalised("foo/bar/baz:v1"), "docker.io/foo/bar/baz:v1");
        assert_eq!(normalised("docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalised("docker.io/library/busybox:latest"), "docker.io/library/busybox:latest");
        assert_eq!(normalised("index.docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalised("index.docker.io/foo/bar:x"), "docker.io/foo/bar:x");
    }

    #[test]
    fn other_registries_keep_their_host() {
        assert_eq!(normalised("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(normalised("localhost/x"), "localhost/x:latest");
        assert_eq!(normalised("127.0.0.1:5000/a/b:t"), "127.0.0.1:5000/a/b:t");
        assert_eq!(normalised("registry.k8s.io/pause:3.10"), "registry.k8s.io/pause:3.10");
        assert_eq!(normalised("quay.io/coreos/etcd"), "quay.io/coreos/etcd:latest");
        assert_eq!(normalised("[::1]:5000/x"), "[::1]:5000/x:latest");
        assert_eq!(normalised("[fe80::1]/x:t"), "[fe80::1]/x:t");
        assert_eq!(normalised("my-registry.example.com:443/team/app"), "my-registry.example.com:443/team/app:latest");
        // Uppercase in the first component marks it as a registry, as docker decides.
        let r = Reference::parse("Registry/app").unwrap();
        assert_eq!((r.registry(), r.repository()), ("Registry", "app"));
    }

    #[test]
    fn without_a_registry_a_port_like_suffix_is_a_tag() {
        assert_eq!(normalised("localhost:5000"), "docker.io/library/localhost:5000");
    }

    #[test]
    fn digests_with_and_without_tags() {
        assert_eq!(normalised(&format!("busybox@sha256:{HEX}")), format!("docker.io/library/busybox@sha256:{HEX}"));
        assert_eq!(
            normalised(&format!("busybox:1.36@sha256:{HEX}")),
            format!("docker.io/library/busybox:1.36@sha256:{HEX}")
        );
        assert_eq!(normalised(&format!("localhost:5000/x@sha256:{HEX}")), format!("localhost:5000/x@sha256:{HEX}"));
        let r = Reference::parse(&format!("busybox@sha256:{HEX}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().hex(), HEX);
    }

    #[test]
    fn accessors() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.digest(), None);
        let r = Reference::parse("127.0.0.1:5000/team/app:v2").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "team/app");
        assert_eq!(r.name(), "127.0.0.1:5000/team/app");
        assert_eq!(r.tag(), Some("v2"));
    }

    #[test]
    fn with_digest_drops_the_tag() {
        let digest: Digest = format!("sha256:{HEX}").parse().unwrap();
        let r = Reference::parse("busybox:1.36").unwrap().with_digest(digest.clone());
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@sha256:{HEX}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(&digest));
    }

    #[test]
    fn display_round_trips_and_equality_follows_normalisation() {
        for s in ["busybox", "foo/bar:1", "localhost:5000/x", &format!("a/b:c@sha256:{HEX}")] {
            let r = Reference::parse(s).unwrap();
            assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
        }
        assert_eq!(Reference::parse("busybox").unwrap(), "index.docker.io/library/busybox:latest".parse().unwrap());
    }

    #[test]
    fn path_component_separators() {
        for ok in ["a.b", "a_b", "a__b", "a-b", "a---b", "a1.b2_c3__d4-e5", "0", "x/y.z/w"] {
            assert!(Reference::parse(ok).is_ok(), "{ok} should parse");
        }
        for bad in ["a..b", "a___b", "a._b", "a-.b", ".a", "a.", "_a", "a_", "-a", "a-", "a//b", "a/", "/a", "a b"] {
            assert!(rejected(bad).contains("component"), "{bad}: {}", rejected(bad));
        }
    }

    #[test]
    fn rejects_uppercase_repositories() {
        assert!(rejected("Busybox").contains("lowercase"));
        assert!(rejected("foo/Bar").contains("lowercase"));
        assert!(rejected("localhost:5000/Foo").contains("lowercase"));
    }

    #[test]
    fn rejects_empty_and_malformed_names() {
        assert!(rejected("").contains("empty"));
        assert!(rejected(":tag").contains("empty"));
        assert!(rejected(&format!("@sha256:{HEX}")).contains("empty"));
        assert!(rejected(HEX).contains("image id"));
        rejected("busybox:");
        rejected("-bad.host/x");
        rejected("bad-.host/x");
        rejected("host..name/x");
        rejected("host:port/x");
        rejected("host:/x");
        rejected("[::1/x");
        rejected("[zz::1]/x");
        rejected("[::1]5000/x");
        rejected("a/b@c:d");
    }

    #[test]
    fn tags_follow_the_grammar() {
        assert_eq!(normalised("a:_x"), "docker.io/library/a:_x");
        assert_eq!(normalised("a:1.2-rc_3"), "docker.io/library/a:1.2-rc_3");
        assert_eq!(normalised(&format!("a:{}", "t".repeat(128))), format!("docker.io/library/a:{}", "t".repeat(128)));
        assert!(rejected(&format!("a:{}", "t".repeat(129))).contains("129 characters"));
        assert!(rejected("a:.x").contains("must start"));
        assert!(rejected("a:-x").contains("must start"));
        assert!(rejected("a:x+y").contains("may hold only"));
        assert!(rejected("a:x:y").contains("may hold only"));
    }

    #[test]
    fn rejects_bad_digests() {
        assert!(rejected("busybox@sha256:abc").contains("64"));
        assert!(rejected(&format!("busybox@sha512:{HEX}")).contains("sha256"));
        assert!(rejected(&format!("busybox@sha256:{}", HEX.to_uppercase())).contains("lowercase"));
        rejected("busybox@");
        rejected(&format!("busybox@sha256:{HEX}@sha256:{HEX}"));
    }

    #[test]
    fn hostile_lengths_are_refused_with_short_errors() {
        for hostile in [
            "a".repeat(10 << 20),
            "a/".repeat(100_000) + "a",
            format!("busybox:{}", "t".repeat(1 << 20)),
            format!("busybox@sha256:{}", "f".repeat(1 << 20)),
            format!("{}/x", "h.".repeat(100_000)),
            "[".repeat(100_000),
        ] {
            let error = rejected(&hostile);
            assert!(error.len() < 300 && error.contains("the limit is 512"), "{error}");
        }
        let longest = format!("localhost/{}:{}@sha256:{HEX}", "a".repeat(245), "t".repeat(128));
        assert!(longest.len() <= MAX_REFERENCE_LEN && Reference::parse(&longest).is_ok());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

        /// Any text, made of what references are made of, parses or fails without
        /// panicking, and an error never grows with the input.
        #[test]
        fn any_text_parses_or_fails_briefly(s in "[a-zA-Z0-9:/@._\\-\\[\\]]{0,2000}") {
            if let Err(e) = Reference::parse(&s) {
                proptest::prop_assert!(e.to_string().len() < 4 * MAX_REFERENCE_LEN + 200);
            }
        }

        /// Whatever parses prints as a reference that parses to itself.
        #[test]
        fn parsed_references_round_trip(s in "([a-z0-9]{1,8}\\.){0,2}[a-z0-9]{1,8}(:[0-9]{1,5})?/([a-z0-9]{1,8}[._-]?){1,4}(:[a-zA-Z0-9_.-]{1,20})?") {
            if let Ok(r) = Reference::parse(&s) {
                proptest::prop_assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
            }
        }
    }

    #[test]
    fn name_length_is_limited() {
        let long = format!("localhost/{}", "a".repeat(245));
        assert_eq!(long.len(), 255);
        assert!(Reference::parse(&long).is_ok());
        assert!(rejected(&format!("{long}a")).contains("256 characters"));
        // The limit applies to the normalised name, including the implicit registry.
        assert!(rejected(&"a".repeat(250)).contains("limit is 255"));
    }
}
