//! The Dockerfile builder: parsing a Dockerfile into stages and instructions,
//! planning which stages a build target needs with Docker's ARG/ENV scoping, and
//! deciding which context files `.dockerignore` leaves out.

pub mod dockerfile;
pub mod dockerignore;
