//! SPDY/3.1 as Kubernetes clients speak it (kubectl, crictl and kubelet's proxy all
//! use moby/spdystream): the frame codec (`frame`), compressed header blocks
//! (`headers`), and a server-side session (`session`).
//!
//! After an HTTP/1.1 `Upgrade: SPDY/3.1` request is answered with 101, the raw
//! connection carries SPDY frames: hand it to [`SpdySession::server`], spawn the
//! driver future, then `accept()` the streams the client opens (remotecommand: one per
//! `streamtype` header; port-forward: a data/error pair per `requestid`), `reply()` to
//! each, and exchange data with `read`/`write`/`close`.

pub mod frame;
#[cfg(test)]
mod fuzz;
pub mod headers;
pub mod session;

pub use headers::HeaderList;
pub use session::{SessionConfig, SessionError, SpdySession, SpdyStream};
