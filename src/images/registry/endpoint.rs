//! Where requests for a registry host go: its configured mirrors in order, then
//! the registry itself.

use reqwest::Url;

use super::RegistryError;

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoint {
    /// `<scheme>://<authority>[/prefix]/v2`, without a trailing slash.
    pub api_base: String,
    /// `host[:port]`, as it appears in `insecure` and in errors.
    pub authority: String,
    /// An https endpoint on a host listed as insecure: TLS without certificate checks.
    pub skip_tls_verify: bool,
    pub is_mirror: bool,
}

impl Endpoint {
    /// A configured mirror URL; a path prefix is kept and `/v2` is appended unless
    /// the URL already ends with it.
    pub fn mirror(registry: &str, url: &str, insecure: &[String]) -> Result<Endpoint, RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidEndpoint {
            registry: registry.to_string(),
            endpoint: url.to_string(),
            reason,
        };
        let parsed = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https".into()));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid("a mirror URL may not carry a query or fragment".into()));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid("credentials in a mirror URL would be sent with every request; remove them".into()));
        }
        let Some(host) = parsed.host_str() else {
            return Err(invalid("the URL has no host".into()));
        };
        let authority = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let prefix = parsed.path().trim_end_matches('/');
        let prefix = prefix.strip_suffix("/v2").unwrap_or(prefix);
        let skip_tls_verify = parsed.scheme() == "https" && is_insecure(insecure, &authority);
        Ok(Endpoint {
            api_base: format!("{}://{authority}{prefix}/v2", parsed.scheme()),
            authority,
            skip_tls_verify,
            is_mirror: true,
        })
    }

    /// The registry itself: https, or plain http when the host is listed as insecure.
    pub fn upstream(registry: &str, insecure: &[String]) -> Endpoint {
        let authority = if registry == DOCKER_HUB { DOCKER_HUB_API_HOST } else { registry };
        let scheme = if is_insecure(insecure, registry) { "http" } else { "https" };
        Endpoint {
            api_base: format!("{scheme}://{authority}/v2"),
            authority: authority.to_string(),
            skip_tls_verify: false,
            is_mirror: false,
        }
    }

    /// `<scheme>://<authority>[/prefix]`, for logs and errors.
    pub fn url(&self) -> &str {
        self.api_base.strip_suffix("/v2").unwrap_or(&self.api_base)
    }

    pub fn manifest_url(&self, repository: &str, tag_or_digest: &str) -> String {
        format!("{}/{repository}/manifests/{tag_or_digest}", self.api_base)
    }

    pub fn blob_url(&self, repository: &str, digest: &str) -> String {
        format!("{}/{repository}/blobs/{digest}", self.api_base)
    }
}

/// An `insecure` entry names either `host:port` exactly or a bare host, which
/// then covers every port of that host.
pub(super) fn is_insecure(insecure: &[String], authority: &str) -> bool {
    let host = host_of(authority);
    insecure.iter().any(|entry| entry == authority || (entry == host && host_of(entry) == entry))
}

fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |end| &authority[..=end]);
    }
    authority.rsplit_once(':').map_or(authority, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insecure(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn mirror_urls_get_one_v2_and_keep_their_prefix() {
        let none = insecure(&[]);
        let cases = [
            ("http://127.0.0.1:5000", "http://127.0.0.1:5000/v2"),
            ("http://127.0.0.1:5000/", "http://127.0.0.1:5000/v2"),
            ("http://127.0.0.1:5000/v2", "http://127.0.0.1:5000/v2"),
            ("http://127.0.0.1:5000/v2/", "http://127.0.0.1:5000/v2"),
            ("https://mirror.example/cache/docker", "https://mirror.example/cache/docker/v2"),
            ("https://mirror.example/cache/v2", "https://mirror.example/cache/v2"),
            ("https://mirror.example:443/x", "https://mirror.example/x/v2"),
            ("https://[::1]:8443", "https://[::1]:8443/v2"),
        ];
        for (url, want) in cases {
            assert_eq!(Endpoint::mirror("docker.io", url, &none).unwrap().api_base, want, "{url}");
        }
        let e = Endpoint::mirror("docker.io", "http://127.0.0.1:5000/p/", &none).unwrap();
        assert_eq!(e.manifest_url("library/busybox", "latest"), "http://127.0.0.1:5000/p/v2/library/busybox/manifests/latest");
        assert_eq!(e.blob_url("a/b", "sha256:00"), "http://127.0.0.1:5000/p/v2/a/b/blobs/sha256:00");
        assert_eq!(e.url(), "http://127.0.0.1:5000/p");
        assert_eq!(e.authority, "127.0.0.1:5000");
        assert!(e.is_mirror);
    }

    #[test]
    fn bad_mirror_urls_are_refused_with_the_url_named() {
        for url in ["127.0.0.1:5000", "ftp://h/", "http://h/?x=1", "http://user:pw@h/", "http://"] {
            let err = Endpoint::mirror("docker.io", url, &[]).unwrap_err().to_string();
            assert!(err.contains(url) || err.contains("docker.io"), "{url}: {err}");
        }
    }

    #[test]
    fn upstream_endpoints() {
        let none = insecure(&[]);
        assert_eq!(Endpoint::upstream("docker.io", &none).api_base, "https://registry-1.docker.io/v2");
        assert_eq!(Endpoint::upstream("quay.io", &none).api_base, "https://quay.io/v2");
        let local = insecure(&["127.0.0.1:5000"]);
        assert_eq!(Endpoint::upstream("127.0.0.1:5000", &local).api_base, "http://127.0.0.1:5000/v2");
        assert_eq!(Endpoint::upstream("127.0.0.1:5001", &local).api_base, "https://127.0.0.1:5001/v2");
        assert!(!Endpoint::upstream("127.0.0.1:5000", &local).is_mirror);
    }

    #[test]
    fn insecure_https_mirrors_skip_verification() {
        let list = insecure(&["mirror.local", "10.0.0.1:8443"]);
        assert!(Endpoint::mirror("docker.io", "https://mirror.local:9000", &list).unwrap().skip_tls_verify);
        assert!(Endpoint::mirror("docker.io", "https://10.0.0.1:8443", &list).unwrap().skip_tls_verify);
        assert!(!Endpoint::mirror("docker.io", "https://10.0.0.1:9443", &list).unwrap().skip_tls_verify);
        assert!(!Endpoint::mirror("docker.io", "http://mirror.local", &list).unwrap().skip_tls_verify);
        assert!(!Endpoint::mirror("docker.io", "https://other.local", &list).unwrap().skip_tls_verify);
    }

    #[test]
    fn insecure_matching() {
        let list = insecure(&["a.example", "b.example:5000", "[::1]"]);
        assert!(is_insecure(&list, "a.example"));
        assert!(is_insecure(&list, "a.example:8080"));
        assert!(is_insecure(&list, "b.example:5000"));
        assert!(!is_insecure(&list, "b.example"));
        assert!(!is_insecure(&list, "b.example:5001"));
        assert!(is_insecure(&list, "[::1]:5000"));
        assert!(!is_insecure(&list, "c.example"));
    }
}
