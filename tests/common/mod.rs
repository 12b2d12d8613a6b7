//! Fixtures shared by berthd's end-to-end tests: a real registry (anonymous, basic or
//! bearer-token auth), images built from real tar streams and pushed through the
//! distribution HTTP API, misbehaving TCP proxies, and a berthd process driven only
//! through CRI gRPC on its unix socket.
//!
//! Every test runs in its own network namespace (see [`run`]): ports never collide
//! between tests, and a runtime that falls back from a mirror to the real docker.io
//! finds no route instead of reaching the internet.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code, unused_imports)]

pub mod berthd;
pub mod fs;
pub mod hostile;
pub mod image;
pub mod pods;
pub mod proxy;
pub mod registry;
pub mod token;

use std::future::Future;
use std::path::Path;

pub use berthd::{Berthd, BerthdConfig};
pub use image::{Compression, Entry, ManifestFormat, Platform, Pushed, PushedIndex, TestImage, TestLayer};
pub use hostile::HostileRegistry;
pub use proxy::TestProxy;
pub use registry::TestRegistry;

const REQUIRED_TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/docker-registry", "the CNCF distribution registry (Debian package docker-registry)"),
    ("/usr/bin/htpasswd", "htpasswd (Debian package apache2-utils)"),
];

/// Runs one end-to-end test: checks the real components are installed, moves the
/// calling thread into a fresh network namespace with only loopback up, and drives
/// `test` on a tokio runtime whose threads (and every child process) live there.
pub fn run<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    require_tools();
    enter_private_network();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build tokio runtime");
    runtime.block_on(test());
}

fn require_tools() {
    let missing: Vec<String> = REQUIRED_TOOLS
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(path, what)| format!("{path} ({what})"))
        .collect();
    assert!(
        missing.is_empty(),
        "berthd end-to-end tests need {}; deploy/install-deps.sh installs them",
        missing.join(", ")
    );
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "berthd end-to-end tests need root (network namespaces, device nodes, trusted.* xattrs)"
    );
}

/// Network namespaces belong to threads: unsharing here moves only the test's own
/// thread, and everything it spawns afterwards inherits the namespace.
fn enter_private_network() {
    // SAFETY: unshare(CLONE_NEWNET) only changes the calling thread's namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    bring_loopback_up();
}

fn bring_loopback_up() {
    // SAFETY: plain socket/ioctl calls on a zeroed, correctly sized ifreq; the
    // descriptor is closed on every path.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(sock >= 0, "socket for SIOCSIFFLAGS: {}", std::io::Error::last_os_error());
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        let got = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut request);
        let got_error = std::io::Error::last_os_error();
        if got == 0 {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        }
        let set = if got == 0 { libc::ioctl(sock, libc::SIOCSIFFLAGS, &request) } else { -1 };
        let set_error = std::io::Error::last_os_error();
        libc::close(sock);
        assert_eq!(got, 0, "SIOCGIFFLAGS on lo: {got_error}");
        assert_eq!(set, 0, "SIOCSIFFLAGS on lo: {set_error}");
    }
}

/// A port nobody listens on right now in this test's namespace.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// The hex part of a `sha256:<hex>` digest.
pub fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("not a sha256 digest: {digest}"))
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub async fn wait_until(timeout: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
