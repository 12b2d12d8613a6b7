//! The builder room's image side: layers diffed out of directories, images
//! assembled from a base and new layers, container commits, and image archives.

pub mod archive;
pub mod commit;
pub mod image;
pub mod layer;

mod error;

pub use error::BuilderError;
