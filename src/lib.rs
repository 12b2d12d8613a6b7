//! berth: a Kubernetes node runtime. See `docs/architecture.md` for the rooms of
//! this crate and how requests flow between them.

pub mod builder;
pub mod config;
pub mod cri;
pub mod durable;
pub mod images;
pub mod inroot;
pub mod oci;
pub mod sandbox;
pub mod shim;
pub mod store;
