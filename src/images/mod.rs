//! The image room: references, the registry client, the content store, layer
//! unpacking into snapshots, image metadata and garbage collection. CRI types never
//! reach here; `src/cri/` translates.

pub mod compression;
pub mod content;
pub mod digest;
pub mod manifest;
pub mod reference;
pub mod registry;
pub mod snapshots;
pub mod unpack;

mod error;
mod local;
mod pull;
mod service;

pub use error::ImageError;
pub use local::ContentHold;
pub use service::{FsUsage, ImageService, ImageSummary, RootfsLayers};
