//! The builder room: Dockerfiles into the node's image store. `dockerfile`
//! parses and plans, `dockerignore` decides which context files the CLI sends,
//! `service` is the gRPC edge (`berth.build.v1.Builder`), `executor` runs a
//! build's steps, `run` runs RUN steps as containers on the pods' shim/runc
//! path, `cache` remembers what steps produced, `context` receives the
//! uploaded build context.

pub mod cache;
pub mod context;
pub mod dockerfile;
pub mod dockerignore;
pub mod executor;
pub mod layer;
pub mod run;
pub mod service;

mod error;
pub use error::BuildError;

/// The generated protocol types and service traits of `berth.build.v1`.
pub mod proto {
    tonic::include_proto!("berth.build.v1");
}
