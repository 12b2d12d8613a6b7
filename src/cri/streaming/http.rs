//! The HTTP/1.1 side: one request per connection, which either upgrades to a
//! stream protocol or gets a short error answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::channel::ChannelProtocol;
use super::tokens::TokenCache;
use super::{PendingStream, over_spdy, websocket};
use crate::sandbox::PodService;

/// Largest request head accepted; upgrade requests are a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADERS: usize = 64;

pub async fn accept_loop(listener: TcpListener, tokens: Arc<TokenCache<PendingStream>>, pods: PodService) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (tokens, pods) = (tokens.clone(), pods.clone());
                tokio::spawn(async move {
                    if let Err(error) = serve_connection(stream, &tokens, pods).await {
                        tracing::debug!(%peer, %error, "streaming connection");
                    }
                });
            }
            Err(error) => {
                // Out of descriptors, typically: wait instead of spinning.
                tracing::warn!(%error, "accepting a streaming connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The parts of a request head the routes look at.
#[derive(Debug, PartialEq)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a header that may repeat or list values with commas.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(n, _)| n == name).flat_map(|(_, v)| v.split(',')).map(str::trim)
    }

    fn upgrades_to(&self, protocol: &str) -> bool {
        self.header("upgrade").is_some_and(|value| value.split(',').any(|p| p.trim().eq_ignore_ascii_case(protocol)))
    }

}

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("reading the request: {0}")]
    Io(#[from] std::io::Error),
    #[error("the request head did not arrive within {HEAD_TIMEOUT:?}")]
    Timeout,
    #[error("the request head exceeds {MAX_HEAD} bytes")]
    TooLarge,
    #[error("the connection closed before the request head ended")]
    Truncated,
    #[error("malformed request head: {0}")]
    Malformed(String),
}

/// Parses a complete head; `Ok(None)` while more bytes are needed. Returns the
/// head and its length in `buffer`.
pub fn parse_head(buffer: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(buffer).map_err(|error| HeadError::Malformed(error.to_string()))? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(length) => length,
    };
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = request
        .headers
        .iter()
        .map(|h| Ok((h.name.to_ascii_lowercase(), String::from_utf8(h.value.to_vec()).map_err(|_| HeadError::Malformed(format!("header {}: not UTF-8", h.name)))?)))
        .collect::<Result<_, HeadError>>()?;
    let head = RequestHead { method: request.method.unwrap_or_default().to_string(), path: path.to_string(), query: query.to_string(), headers };
    Ok(Some((head, length)))
}

/// Reads up to the end of the request head; the bytes after it are returned too.
async fn read_head(stream: &mut TcpStream) -> Result<(RequestHead, Vec<u8>), HeadError> {
    let mut buffer = Vec::with_capacity(1024);
    let read = async {
        loop {
            let mut chunk = [0u8; 1024];
            let count = stream.read(&mut chunk).await?;
            if count == 0 {
                return Err(HeadError::Truncated);
            }
            buffer.extend_from_slice(&chunk[..count]);
            if let Some((head, length)) = parse_head(&buffer)? {
                return Ok((head, buffer[length..].to_vec()));
            }
            if buffer.len() > MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
        }
    };
    tokio::time::timeout(HEAD_TIMEOUT, read).await.map_err(|_| HeadError::Timeout)?
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let response = format!("HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Exec,
    Attach,
    PortForward,
}

fn route(path: &str) -> Option<(Route, &str)> {
    let (kind, token) = path.strip_prefix('/')?.split_once('/')?;
    let route = match kind {
        "exec" => Route::Exec,
        "attach" => Route::Attach,
        "portforward" => Route::PortForward,
        _ => return None,
    };
    (!token.is_empty() && !token.contains('/')).then_some((route, token))
}

async fn serve_connection(mut stream: TcpStream, tokens: &TokenCache<PendingStream>, pods: PodService) -> Result<(), HeadError> {
    let (head, leftover) = match read_head(&mut stream).await {
        Ok(request) => request,
        Err(error) => {
            respond(&mut stream, "400 Bad Request", "malformed request\n").await?;
            return Err(error);
        }
    };
    // Whatever is wrong with the path or token, the answer is the same bare 404.
    let pending = route(&head.path).and_then(|(route, token)| Some((route, tokens.take(token)?)));
    let pending = match pending {
        Some((Route::Exec, pending @ PendingStream::Exec(_))) => pending,
        Some((Route::Attach, pending @ PendingStream::Attach(_))) => pending,
        Some((Route::PortForward, pending @ PendingStream::PortForward { .. })) => pending,
        _ => return Ok(respond(&mut stream, "404 Not Found", "404 page not found\n").await?),
    };
    if head.upgrades_to("SPDY/3.1") {
        return upgrade_to_spdy(stream, &head, &leftover, pending, pods).await;
    }
    if !head.upgrades_to("websocket") {
        return Ok(respond(&mut stream, "400 Bad Request", "this endpoint serves SPDY/3.1 and WebSocket upgrades only\n").await?);
    }
    if head.method != "GET" || head.header("sec-websocket-version") != Some("13") || head.header("sec-websocket-key").is_none() {
        return Ok(respond(&mut stream, "400 Bad Request", "a WebSocket upgrade is a GET with Sec-WebSocket-Version 13 and a Sec-WebSocket-Key\n").await?);
    }
    let offered = head.header("sec-websocket-protocol");
    match pending {
        PendingStream::Exec(request) | PendingStream::Attach(request) => {
            let Some(protocol) = ChannelProtocol::negotiate(offered) else {
                return Ok(respond(&mut stream, "400 Bad Request", &no_subprotocol(offered)).await?);
            };
            let socket = accept_websocket(stream, &head, leftover, offered.map(|_| protocol.name())).await?;
            websocket::serve_exec(socket, protocol, pods, request).await;
        }
        PendingStream::PortForward { pod_id } => {
            if head.header_values("sec-websocket-protocol").any(|offer| offer == websocket::PORT_FORWARD_TUNNEL_PROTOCOL) {
                let socket = accept_websocket(stream, &head, leftover, Some(websocket::PORT_FORWARD_TUNNEL_PROTOCOL)).await?;
                over_spdy::serve_port_forward(websocket::tunnel(socket), pods, pod_id).await;
                return Ok(());
            }
            let Some(protocol) = ChannelProtocol::negotiate_port_forward(offered) else {
                return Ok(respond(&mut stream, "400 Bad Request", &no_subprotocol(offered)).await?);
            };
            let ports = match websocket::requested_ports(&head.query) {
                Ok(ports) => ports,
                Err(message) => return Ok(respond(&mut stream, "400 Bad Request", &format!("{message}\n")).await?),
            };
            let socket = accept_websocket(stream, &head, leftover, offered.map(|_| protocol.name())).await?;
            websocket::serve_port_forward(socket, protocol, pods, pod_id, ports).await;
        }
    }
    Ok(())
}

fn no_subprotocol(offered: Option<&str>) -> String {
    format!("no supported WebSocket subprotocol among {:?}\n", offered.unwrap_or(""))
}

/// Answers a checked WebSocket upgrade with 101, naming `protocol` when the
/// client offered subprotocols.
async fn accept_websocket(mut stream: TcpStream, head: &RequestHead, leftover: Vec<u8>, protocol: Option<&str>) -> std::io::Result<WebSocketStream<TcpStream>> {
    let key = head.header("sec-websocket-key").unwrap_or_default();
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if let Some(protocol) = protocol {
        response.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    response.push_str("\r\n");
    stream.write_all(response.as_bytes()).await?;
    Ok(WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(websocket::socket_config())).await)
}

async fn upgrade_to_spdy(mut stream: TcpStream, head: &RequestHead, leftover: &[u8], pending: PendingStream, pods: PodService) -> Result<(), HeadError> {
    let wanted = match pending {
        PendingStream::Exec(_) | PendingStream::Attach(_) => over_spdy::EXEC_PROTOCOL,
        PendingStream::PortForward { .. } => over_spdy::PORT_FORWARD_PROTOCOL,
    };
    if !head.header_values("x-stream-protocol-version").any(|offered| offered == wanted) {
        let body = format!("no supported X-Stream-Protocol-Version: this server speaks {wanted}\n");
        return Ok(respond(&mut stream, "400 Bad Request", &body).await?);
    }
    // A SPDY client waits for the 101 before its first frame.
    if !leftover.is_empty() {
        return Ok(respond(&mut stream, "400 Bad Request", "data before the upgrade was answered\n").await?);
    }
    let response = format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {wanted}\r\n\r\n");
    stream.write_all(response.as_bytes()).await?;
    match pending {
        PendingStream::Exec(request) | PendingStream::Attach(request) => over_spdy::serve_exec(stream, pods, request).await,
        PendingStream::PortForward { pod_id } => over_spdy::serve_port_forward(stream, pods, pod_id).await,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_with_query_and_lowercased_headers() {
        let raw = b"GET /portforward/abc?port=80&port=8080 HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n\r\nrest";
        let (head, length) = parse_head(raw).unwrap().unwrap();
        assert_eq!(&raw[length..], b"rest");
        assert_eq!(head.path, "/portforward/abc");
        assert_eq!(head.query, "port=80&port=8080");
        assert!(head.upgrades_to("websocket"));
        assert_eq!(head.header("host"), Some("x"));
        let raw = b"POST /exec/t HTTP/1.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Stream-Protocol-Version: v3.channel.k8s.io, channel.k8s.io\r\n\r\n";
        let (head, _) = parse_head(raw).unwrap().unwrap();
        let versions: Vec<_> = head.header_values("x-stream-protocol-version").collect();
        assert_eq!(versions, ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"]);
        assert!(parse_head(b"GET /exec/abc HTTP/1.1\r\nHost:").unwrap().is_none());
        assert!(matches!(parse_head(b"\x00\x01 nonsense\r\n\r\n"), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn routes_need_a_kind_and_one_token_segment() {
        assert_eq!(route("/exec/tok"), Some((Route::Exec, "tok")));
        assert_eq!(route("/attach/tok"), Some((Route::Attach, "tok")));
        assert_eq!(route("/portforward/tok"), Some((Route::PortForward, "tok")));
        assert_eq!(route("/exec/"), None);
        assert_eq!(route("/exec/a/b"), None);
        assert_eq!(route("/logs/tok"), None);
        assert_eq!(route("/"), None);
    }
}
