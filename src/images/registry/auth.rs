//! Registry authentication: `WWW-Authenticate` challenges, credentials, and the
//! bearer-token exchange with its cache.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{RegistryError, endpoint, read_capped, send_with_retries, snippet};
use crate::images::digest::Digest;

/// What the kubelet (or the CLI) hands over for one pull.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic { username: String, password: String },
    /// A refresh token from `docker login` to an OAuth2 token server, exchanged for access tokens.
    IdentityToken(String),
    /// A bearer token sent to the registry as is.
    RegistryToken(String),
}

impl Credentials {
    /// Tells credentials apart in the token cache without keeping them readable there.
    fn fingerprint(&self) -> Digest {
        let text = match self {
            Credentials::Basic { username, password } => format!("basic\0{username}\0{password}"),
            Credentials::IdentityToken(token) => format!("identity\0{token}"),
            Credentials::RegistryToken(token) => format!("registry\0{token}"),
        };
        Digest::of(text.as_bytes())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic {{ username: {username:?}, password: <redacted> }}"),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Credentials::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

/// One challenge of a `WWW-Authenticate` header; scheme and parameter names lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses every challenge in the given header values (RFC 7235: a header may
/// hold several challenges, parameters may be quoted strings holding commas).
pub(super) fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let is_space = |c: char| c == ' ' || c == '\t';
    let mut challenges: Vec<Challenge> = Vec::new();
    for value in values {
        let mut current: Option<usize> = None;
        let mut rest = value;
        loop {
            rest = rest.trim_start_matches(|c: char| c == ',' || is_space(c));
            if rest.is_empty() {
                break;
            }
            let token_end = rest.find(|c: char| c == '=' || c == ',' || is_space(c)).unwrap_or(rest.len());
            let token = &rest[..token_end];
            let after = rest[token_end..].trim_start_matches(is_space);
            if let Some(value_part) = after.strip_prefix('=') {
                let (param_value, remaining) = parse_param_value(value_part.trim_start_matches(is_space));
                if let (Some(i), false) = (current, token.is_empty()) {
                    challenges[i].params.insert(token.to_ascii_lowercase(), param_value);
                }
                rest = remaining;
            } else {
                challenges.push(Challenge { scheme: token.to_ascii_lowercase(), params: BTreeMap::new() });
                current = Some(challenges.len() - 1);
                rest = after;
            }
        }
    }
    challenges
}

/// A quoted string (with backslash escapes) or a bare token; returns the value
/// and what follows it.
fn parse_param_value(s: &str) -> (String, &str) {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => return (value, &quoted[i + 1..]),
                c => value.push(c),
            }
        }
        (value, "")
    } else {
        let end = s.find(',').unwrap_or(s.len());
        (s[..end].trim_end().to_string(), &s[end..])
    }
}

/// How a registry endpoint wants to be authenticated, as learned from its 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scheme {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

/// Bearer is preferred when a registry offers both; challenges berth cannot
/// answer (Negotiate, Bearer without a realm) are passed over.
pub(super) fn usable_scheme(challenges: &[Challenge]) -> Option<Scheme> {
    let bearer = challenges.iter().find_map(|c| {
        let realm = c.params.get("realm").filter(|r| !r.is_empty())?;
        (c.scheme == "bearer").then(|| Scheme::Bearer { realm: realm.clone(), service: c.params.get("service").cloned() })
    });
    bearer.or_else(|| challenges.iter().any(|c| c.scheme == "basic").then_some(Scheme::Basic))
}

/// What goes into the `Authorization` header of a registry request.
#[derive(Clone)]
pub(super) enum Authorization {
    Basic { username: String, password: String },
    Bearer(String),
}

impl Authorization {
    pub fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Authorization::Basic { username, password } => request.basic_auth(username, Some(password)),
            Authorization::Bearer(token) => request.bearer_auth(token),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct TokenKey {
    pub realm: String,
    pub service: Option<String>,
    pub scope: String,
    /// Tokens are specific to who asked: one pull's credentials must never
    /// authorise another pull that brought different (or no) credentials.
    pub credentials: Option<Digest>,
}

impl TokenKey {
    pub fn new(realm: &str, service: Option<&str>, scope: &str, credentials: Option<&Credentials>) -> TokenKey {
        TokenKey {
            realm: realm.to_string(),
            service: service.map(str::to_string),
            scope: scope.to_string(),
            credentials: credentials.map(Credentials::fingerprint),
        }
    }
}

#[derive(Default)]
pub(super) struct TokenCache {
    tokens: Mutex<HashMap<TokenKey, (String, Instant)>>,
}

impl TokenCache {
    pub fn get(&self, key: &TokenKey) -> Option<String> {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        tokens.retain(|_, (_, valid_until)| *valid_until > now);
        tokens.get(key).map(|(token, _)| token.clone())
    }

    pub fn insert(&self, key: TokenKey, token: String, valid_for: Duration) {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens.insert(key, (token, Instant::now() + valid_for));
    }

    pub fn remove(&self, key: &TokenKey) {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }
}

const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
const TOKEN_RESPONSE_LIMIT: u64 = 1 << 20;
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CLIENT_ID: &str = "berth";

/// How long a token may be reused: its lifetime minus a margin (a quarter, at most
/// 30 s) so that it does not expire between the cache lookup and the request.
pub(super) fn reuse_window(expires_in: Option<u64>) -> Duration {
    let lifetime = expires_in.filter(|s| *s > 0).map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
    lifetime - (lifetime / 4).min(Duration::from_secs(30))
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Asks the token server named by a Bearer challenge for a token with `scope`.
/// `registry` is the host that challenged, for errors.
pub(super) async fn request_token(
    http: &reqwest::Client,
    registry: &str,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    credentials: Option<&Credentials>,
) -> Result<(String, Duration), RegistryError> {
    let unauthorized = |detail: String| RegistryError::Unauthorized { registry: registry.to_string(), detail };
    let realm_url = reqwest::Url::parse(realm)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| unauthorized(format!("the token realm {realm:?} is not an http(s) URL")))?;
    let mut params = vec![("scope", scope)];
    if let Some(service) = service {
        params.push(("service", service));
    }
    tracing::debug!(registry, realm, ?service, scope, "requesting a bearer token");
    let response = send_with_retries(realm, || {
        let request = match credentials {
            Some(Credentials::IdentityToken(refresh_token)) => {
                let mut form = params.clone();
                form.extend([("grant_type", "refresh_token"), ("refresh_token", refresh_token), ("client_id", CLIENT_ID)]);
                http.post(realm_url.clone()).form(&form)
            }
            Some(Credentials::Basic { username, password }) => {
                http.get(realm_url.clone()).query(&params).basic_auth(username, Some(password))
            }
            Some(Credentials::RegistryToken(_)) | None => http.get(realm_url.clone()).query(&params),
        };
        request.timeout(TOKEN_REQUEST_TIMEOUT)
    })
    .await?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        let body = snippet(response).await;
        return Err(unauthorized(format!("the token server {realm} refused the credentials (HTTP {status}): {body}")));
    }
    if !status.is_success() {
        let body = snippet(response).await;
        return Err(RegistryError::Http { url: realm.to_string(), status: status.as_u16(), body });
    }
    let body = read_capped(response, TOKEN_RESPONSE_LIMIT, realm).await?;
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| unauthorized(format!("the token server {realm} sent an unreadable answer: {e}")))?;
    let token = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized(format!("the token server {realm} answered without a token")))?;
    Ok((token, reuse_window(parsed.expires_in)))
}

/// The http client for talking to the token realm: certificate checks are skipped
/// only for hosts listed as insecure, as for registry endpoints.
pub(super) fn realm_needs_insecure_tls(realm: &str, insecure: &[String]) -> bool {
    reqwest::Url::parse(realm).ok().is_some_and(|u| {
        let Some(host) = u.host_str() else { return false };
        let authority = match u.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        u.scheme() == "https" && endpoint::is_insecure(insecure, &authority)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_docker_hub_style_bearer() {
        let got = parse_challenges([
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        ]);
        assert_eq!(
            got,
            vec![Challenge {
                scheme: "bearer".into(),
                params: params(&[
                    ("realm", "https://auth.docker.io/token"),
                    ("service", "registry.docker.io"),
                    ("scope", "repository:library/busybox:pull"),
                ]),
            }]
        );
    }

    #[test]
    fn parses_quoted_commas_escapes_and_several_challenges() {
        let got = parse_challenges([
            r#"Basic realm="Registry Realm", Bearer realm="http://127.0.0.1:1/t?a=b", scope="repository:a:pull,push", error="say \"hi\"""#,
            "Negotiate, NTLM",
            r#"bearer REALM=bare-token , service = svc"#,
        ]);
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], Challenge { scheme: "basic".into(), params: params(&[("realm", "Registry Realm")]) });
        assert_eq!(got[1].scheme, "bearer");
        assert_eq!(got[1].params["realm"], "http://127.0.0.1:1/t?a=b");
        assert_eq!(got[1].params["scope"], "repository:a:pull,push");
        assert_eq!(got[1].params["error"], r#"say "hi""#);
        assert_eq!(got[2].scheme, "negotiate");
        assert_eq!(got[3].scheme, "ntlm");
        assert_eq!(got[4], Challenge { scheme: "bearer".into(), params: params(&[("realm", "bare-token"), ("service", "svc")]) });
    }

    #[test]
    fn tolerates_garbage() {
        for junk in ["", ",,,", "=", "=x", "Bearer realm=\"unterminated", "Bearer =,=", "\"", "Basic ==="] {
            let _ = parse_challenges([junk]);
        }
        assert_eq!(parse_challenges(["Bearer realm=\"unterminated"])[0].params["realm"], "unterminated");
        assert!(parse_challenges(["=x, realm=y"]).is_empty());
    }

    #[test]
    fn scheme_choice_prefers_bearer_and_needs_a_realm() {
        let both = parse_challenges([r#"Basic realm="r", Bearer realm="https://t/token",service="s""#]);
        assert_eq!(usable_scheme(&both), Some(Scheme::Bearer { realm: "https://t/token".into(), service: Some("s".into()) }));
        assert_eq!(usable_scheme(&parse_challenges(["Bearer service=s, Basic realm=x"])), Some(Scheme::Basic));
        assert_eq!(usable_scheme(&parse_challenges(["Negotiate"])), None);
        assert_eq!(usable_scheme(&parse_challenges(["Bearer service=s"])), None);
    }

    #[test]
    fn token_cache_expires_and_separates_credentials() {
        let cache = TokenCache::default();
        let alice = Credentials::Basic { username: "alice".into(), password: "a".into() };
        let bob = Credentials::Basic { username: "bob".into(), password: "b".into() };
        let key = |c: Option<&Credentials>| TokenKey::new("https://t/token", Some("s"), "repository:x:pull", c);
        cache.insert(key(Some(&alice)), "alice-token".into(), Duration::from_secs(30));
        cache.insert(key(None), "anonymous-token".into(), Duration::ZERO);
        assert_eq!(cache.get(&key(Some(&alice))).as_deref(), Some("alice-token"));
        assert_eq!(cache.get(&key(Some(&bob))), None);
        assert_eq!(cache.get(&key(None)), None, "an expired token is not reused");
        cache.remove(&key(Some(&alice)));
        assert_eq!(cache.get(&key(Some(&alice))), None);
    }

    #[test]
    fn reuse_window_leaves_a_margin() {
        assert_eq!(reuse_window(None), Duration::from_secs(45));
        assert_eq!(reuse_window(Some(0)), Duration::from_secs(45));
        assert_eq!(reuse_window(Some(300)), Duration::from_secs(270));
        assert_eq!(reuse_window(Some(8)), Duration::from_secs(6));
    }

    #[test]
    fn credentials_debug_hides_secrets() {
        let shown = format!(
            "{:?} {:?} {:?}",
            Credentials::Basic { username: "u".into(), password: "hunter2".into() },
            Credentials::IdentityToken("refresh-secret".into()),
            Credentials::RegistryToken("bearer-secret".into())
        );
        assert!(shown.contains("\"u\""));
        assert!(!shown.contains("hunter2") && !shown.contains("secret"), "{shown}");
    }
}
