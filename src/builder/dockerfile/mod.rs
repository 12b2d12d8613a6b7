//! Dockerfiles: syntax, variable substitution and build plans.
//!
//! The work happens in three steps, each usable on its own:
//!
//! 1. [`parse`] turns text into a [`Dockerfile`]: global ARGs and stages, every
//!    instruction with its flags and arguments exactly as written. Nothing is
//!    expanded yet, because what `$NAME` means depends on where in the build it
//!    is used. Errors name the file, line and column. Hostile input is bounded
//!    here (see [`limits`]): nesting depth, instruction length and count.
//! 2. [`plan`] applies build args and `--target`: it resolves the global ARGs,
//!    expands each stage's `FROM` into a [`Base`] (scratch, an earlier stage or
//!    an image), follows `FROM <stage>`, `COPY --from` and `RUN --mount from=`
//!    to keep only the stages the target needs, and gives each kept stage the
//!    [`Scope`] its instructions start in.
//! 3. The executor, once it knows a stage's base image, walks its instructions
//!    through that scope:
//!
//!    ```text
//!    let mut scope = stage.scope();
//!    scope.apply_base_env(&base_image_config_env);   // "KEY=value" entries
//!    for trigger in base_image_onbuild { scope.step(&parse_trigger(trigger, ..)?)?; ... }
//!    for instruction in &stage.instructions {
//!        let step = scope.step(instruction)?;        // expanded instruction, env, args
//!        ...
//!    }
//!    ```
//!
//!    A [`Step`] carries the instruction with its words substituted as Docker
//!    substitutes them (RUN, CMD, ENTRYPOINT, SHELL, HEALTHCHECK and ONBUILD are
//!    left to the shell or to a later build), the image env after it, the build
//!    args in scope that belong in cache keys and history, and the environment
//!    a RUN gets (which adds undeclared proxy build args that never reach a
//!    cache key, as in Docker).
//!
//! Scoping follows Docker: global ARGs are visible only in `FROM` lines until
//! a stage re-declares them with `ARG NAME`; `--build-arg` overrides an ARG's
//! default; ENV shadows an ARG of the same name; the proxy variables
//! (`HTTP_PROXY` and friends) may be given as build args without an ARG; the
//! automatic platform ARGs (`TARGETPLATFORM`, `TARGETARCH`, `BUILDPLATFORM`...)
//! describe this host, the only platform berth builds for.

mod ast;
mod expand;
mod limits;
mod parse;
mod plan;

pub use ast::*;
pub use expand::{ExpandError, expand_heredoc, expand_word, expand_words};
pub use limits::{MAX_INSTRUCTION_BYTES, MAX_INSTRUCTIONS, MAX_NESTING};
pub use parse::{ParseError, parse, parse_trigger};
pub use plan::{Base, BuildPlan, PROXY_ARGS, PlanError, PlannedStage, Scope, Step, plan};

#[cfg(test)]
mod tests;
