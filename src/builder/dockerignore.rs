//! `.dockerignore`: which build-context paths a build leaves out.
