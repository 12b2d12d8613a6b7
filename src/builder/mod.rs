//! The Dockerfile builder. Its front end parses a Dockerfile into stages and
//! instructions, plans which stages a build target needs with Docker's ARG/ENV
//! scoping, and decides which context files `.dockerignore` leaves out. Its image
//! side diffs layers out of directories, assembles images from a base and new
//! layers, commits containers, and reads and writes image archives.

pub mod archive;
pub mod commit;
pub mod dockerfile;
pub mod dockerignore;
pub mod image;
pub mod layer;

mod error;

pub use error::BuilderError;
