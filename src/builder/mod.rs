//! The builder room: Dockerfiles into the node's image store. `dockerfile`
//! parses and plans, `dockerignore` decides which context files the CLI sends,
//! `service` is the gRPC edge (`berth.build.v1.Builder`), `executor` runs a
//! build's steps, `run` runs RUN steps as containers on the pods' shim/runc
//! path, `copy` places COPY/ADD files, `cache` remembers what steps produced,
//! `context` receives the uploaded build context. The image side: layers
//! diffed out of directories, images assembled from a base and new layers,
//! container commits, and image archives.

pub mod archive;
pub mod cache;
pub mod commit;
pub mod context;
pub mod copy;
pub mod dockerfile;
pub mod dockerignore;
pub mod executor;
pub mod image;
pub mod layer;
pub mod run;
pub mod service;
pub mod verbs;

mod build_error;
mod error;

pub use build_error::BuildError;
pub use error::BuilderError;

/// The generated protocol types and service traits of `berth.build.v1`.
pub mod proto {
    tonic::include_proto!("berth.build.v1");
}
