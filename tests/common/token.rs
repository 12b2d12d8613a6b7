//! A bearer-token server for the registry's `auth: token:` mode: checks HTTP basic
//! credentials and issues ES256 JWTs whose `x5c` header carries the self-signed
//! signing certificate, which the registry trusts through its `rootcertbundle`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::json;

pub const ISSUER: &str = "berth-test-token-issuer";
pub const SERVICE: &str = "berth-test-registry";
const TOKEN_LIFETIME_SECONDS: u64 = 600;

struct Issuer {
    username: String,
    password: String,
    signing_key: EcdsaKeyPair,
    certificate_der: Vec<u8>,
    authenticated_tokens: AtomicUsize,
}

pub struct TokenServer {
    address: SocketAddr,
    certificate_pem: String,
    issuer: Arc<Issuer>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl TokenServer {
    pub async fn start(username: &str, password: &str) -> TokenServer {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate P-256 key");
        let params = rcgen::CertificateParams::new(vec!["berth-test-token-issuer".to_owned()])
            .expect("certificate parameters");
        let certificate = params.self_signed(&key_pair).expect("self-sign token certificate");
        let signing_key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .expect("load P-256 key into ring");
        let issuer = Arc::new(Issuer {
            username: username.to_owned(),
            password: password.to_owned(),
            signing_key,
            certificate_der: certificate.der().to_vec(),
            authenticated_tokens: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind token server");
        let address = listener.local_addr().expect("token server address");
        let accept_loop = tokio::spawn(serve(listener, issuer.clone()));
        TokenServer { address, certificate_pem: certificate.pem(), issuer, accept_loop }
    }

    /// The realm the registry names in its `WWW-Authenticate: Bearer` challenge.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.address)
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Tokens issued to clients that presented the right credentials.
    pub fn authenticated_tokens(&self) -> usize {
        self.issuer.authenticated_tokens.load(Ordering::SeqCst)
    }

    /// A token for `scope` (e.g. `repository:foo:pull,push`), as a client with the
    /// right credentials would get it.
    pub fn token_for(&self, scope: &str) -> String {
        let access = parse_scopes(std::iter::once(scope));
        self.issuer.sign(&self.issuer.username, access)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

async fn serve(listener: tokio::net::TcpListener, issuer: Arc<Issuer>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let issuer = issuer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let issuer = issuer.clone();
                async move { Ok::<_, Infallible>(issuer.answer(&request)) }
            });
            // A client hanging up mid-request is its own business.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

impl Issuer {
    fn answer(&self, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() != "/token" {
            return plain(StatusCode::NOT_FOUND, "no such endpoint");
        }
        let query = request.uri().query().unwrap_or("");
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let service = pairs.iter().find(|(k, _)| k == "service").map(|(_, v)| v.as_str());
        if service.is_some_and(|s| s != SERVICE) {
            return plain(StatusCode::BAD_REQUEST, "unknown service");
        }
        let scopes = pairs.iter().filter(|(k, _)| k == "scope").flat_map(|(_, v)| v.split(' '));
        let (subject, access) = match basic_credentials(request) {
            Some((user, password)) if user == self.username && password == self.password => {
                self.authenticated_tokens.fetch_add(1, Ordering::SeqCst);
                (user, parse_scopes(scopes))
            }
            Some(_) => return plain(StatusCode::UNAUTHORIZED, "bad credentials"),
            // Like Docker Hub: anonymous callers get a token, but it grants nothing.
            None => (String::new(), Vec::new()),
        };
        let token = self.sign(&subject, access);
        let body = json!({ "token": token, "access_token": token, "expires_in": TOKEN_LIFETIME_SECONDS });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("token response")
    }

    fn sign(&self, subject: &str, access: Vec<serde_json::Value>) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs();
        let header = json!({ "typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.certificate_der)] });
        let claims = json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + TOKEN_LIFETIME_SECONDS,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("{now}-{}", rand::random::<u64>()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .signing_key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .expect("sign token");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// `repository:<name>:<actions>` scopes as JWT `access` claims; a repository name
/// never holds `:`, so type and actions are split off the ends.
fn parse_scopes<'a>(scopes: impl Iterator<Item = &'a str>) -> Vec<serde_json::Value> {
    scopes
        .filter_map(|scope| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }))
        })
        .collect()
}

fn basic_credentials<B>(request: &Request<B>) -> Option<(String, String)> {
    let value = request.headers().get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    Response::builder().status(status).body(Full::new(Bytes::from_static(text.as_bytes()))).expect("plain response")
}
