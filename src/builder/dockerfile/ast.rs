//! The syntax tree of a Dockerfile. Words are kept exactly as written (quotes,
//! escapes and `$VARIABLES` intact) because what they expand to depends on the
//! scope at the point of the build where they are used; `Scope` expands them.

use std::time::Duration;

use serde::Serialize;

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    /// The name errors and plans refer to the file by.
    pub file_name: String,
    /// The escape character: `\` unless a `# escape=` directive chose `` ` ``.
    pub escape: char,
    /// The `# syntax=` directive, recorded but not acted on: berth has one frontend.
    pub syntax: Option<String>,
    /// `ARG`s before the first `FROM`: usable only in `FROM` lines, and imported
    /// into a stage by an `ARG NAME` without a default.
    pub global_args: Vec<ArgDecl>,
    pub stages: Vec<Stage>,
}

/// One `FROM` and the instructions up to the next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// Position among the Dockerfile's stages, as `COPY --from=N` counts them.
    pub index: usize,
    /// The `AS` name, lowercased as Docker compares stage names.
    pub name: Option<String>,
    /// The base as written, before global ARGs are substituted.
    pub base: String,
    /// `--platform` as written, before substitution.
    pub platform: Option<String>,
    /// The `FROM` line's number (1-based).
    pub line: usize,
    /// The `FROM` instruction's text, continuation lines joined.
    pub source: String,
    pub instructions: Vec<Instruction>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Instruction {
    /// The line the instruction starts on (1-based).
    pub line: usize,
    /// The instruction as written, continuation lines joined with their escape
    /// and newline removed (as Docker shows it in `Step N/M` and history),
    /// heredoc bodies excluded.
    pub source: String,
    pub kind: InstructionKind,
}

/// `ARG NAME[=default]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
    /// The line of the ARG instruction, for errors about global ARGs.
    pub line: usize,
}

/// `KEY=value` of ENV and LABEL (and the legacy `ENV KEY value`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// How RUN, CMD, ENTRYPOINT and HEALTHCHECK give their command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum CommandForm {
    /// Run through the stage's SHELL (`/bin/sh -c` by default).
    Shell(String),
    /// A JSON array run as the argv itself.
    Exec(Vec<String>),
}

/// A `<<NAME` here-document of RUN, COPY or ADD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word; for COPY/ADD also the name of the file it becomes.
    pub name: String,
    /// The body, every line ending in `\n`, tabs already stripped for `<<-`.
    pub content: String,
    /// False when the delimiter was quoted (`<<'EOF'`, `<<"EOF"`): the body is
    /// then taken literally instead of having variables expanded.
    pub expand: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MountKind {
    /// Files of the context or of another stage/image, read-only by default.
    Bind,
    /// A directory kept between builds, shared by every build with the same id.
    Cache,
    /// An empty tmpfs.
    Tmpfs,
}

/// How concurrent builds share one cache mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

/// `RUN --mount=type=...,target=...`; option values are unexpanded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunMount {
    pub kind: MountKind,
    pub target: String,
    /// Path inside `from` (or the context) to mount; the root when absent.
    pub source: Option<String>,
    /// Stage name/index or image whose files a bind or cache mount starts from.
    pub from: Option<String>,
    /// The cache's identity; the target path when absent.
    pub id: Option<String>,
    pub sharing: CacheSharing,
    pub read_only: bool,
    /// Permission bits of a new cache directory.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Size limit of a tmpfs mount in bytes.
    pub size: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum RunNetwork {
    /// The build's ordinary network (Docker's `default`).
    Default,
    /// Only a loopback interface.
    None,
    /// The host's network namespace.
    Host,
}

/// Sources and destination of COPY and ADD; every word unexpanded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileCopy {
    /// Context paths or globs, stage paths with `from`, URLs for ADD; heredoc
    /// names for sources given as `<<NAME`.
    pub sources: Vec<String>,
    pub dest: String,
    /// `--from=`: a stage name or index, or an image reference (COPY only).
    pub from: Option<String>,
    /// `--chown=user[:group]`.
    pub chown: Option<String>,
    /// `--chmod=` octal mode.
    pub chmod: Option<String>,
    /// `--link`: the copied files form a layer independent of the ones below.
    pub link: bool,
    /// `--checksum=sha256:...` of an ADD URL.
    pub checksum: Option<String>,
    /// The heredocs among `sources`, in order.
    pub heredocs: Vec<Heredoc>,
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [options] CMD ...`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Healthcheck {
    /// Disable any health check inherited from the base image.
    None,
    Cmd {
        test: CommandForm,
        interval: Option<Duration>,
        timeout: Option<Duration>,
        start_period: Option<Duration>,
        start_interval: Option<Duration>,
        retries: Option<u32>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum InstructionKind {
    Run {
        command: CommandForm,
        heredocs: Vec<Heredoc>,
        mounts: Vec<RunMount>,
        network: Option<RunNetwork>,
    },
    Cmd(CommandForm),
    Entrypoint(CommandForm),
    Env(Vec<KeyValue>),
    Arg(Vec<ArgDecl>),
    Label(Vec<KeyValue>),
    Expose(Vec<String>),
    Workdir(String),
    User(String),
    Volume(Vec<String>),
    Copy(FileCopy),
    Add(FileCopy),
    Stopsignal(String),
    Healthcheck(Healthcheck),
    /// The argv SHELL replaces `/bin/sh -c` with.
    Shell(Vec<String>),
    /// A trigger stored in the image and run when another build uses it as base.
    OnBuild(Box<Instruction>),
    /// Deprecated, but still sets the image's author.
    Maintainer(String),
}

impl InstructionKind {
    /// The keyword as Docker spells it in messages and history.
    pub fn keyword(&self) -> &'static str {
        match self {
            InstructionKind::Run { .. } => "RUN",
            InstructionKind::Cmd(_) => "CMD",
            InstructionKind::Entrypoint(_) => "ENTRYPOINT",
            InstructionKind::Env(_) => "ENV",
            InstructionKind::Arg(_) => "ARG",
            InstructionKind::Label(_) => "LABEL",
            InstructionKind::Expose(_) => "EXPOSE",
            InstructionKind::Workdir(_) => "WORKDIR",
            InstructionKind::User(_) => "USER",
            InstructionKind::Volume(_) => "VOLUME",
            InstructionKind::Copy(_) => "COPY",
            InstructionKind::Add(_) => "ADD",
            InstructionKind::Stopsignal(_) => "STOPSIGNAL",
            InstructionKind::Healthcheck(_) => "HEALTHCHECK",
            InstructionKind::Shell(_) => "SHELL",
            InstructionKind::OnBuild(_) => "ONBUILD",
            InstructionKind::Maintainer(_) => "MAINTAINER",
        }
    }
}
