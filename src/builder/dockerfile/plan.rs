//! Build plans: build args and `--target` applied to a parsed Dockerfile, and
//! the `Scope` in which a stage's words are expanded.

use std::collections::{BTreeMap, BTreeSet};

use super::ast::*;
use super::expand::{ExpandError, expand_heredoc, expand_word, expand_words};
use super::limits::{clip, clip_message};

/// Build args Docker accepts without a matching ARG; they reach RUN but,
/// unless declared, stay out of cache keys and image history.
pub const PROXY_ARGS: [&str; 10] = ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{file}:{line}: {error}")]
    Expand {
        file: String,
        line: usize,
        #[source]
        error: ExpandError,
    },
    #[error("{file}:{line}: {message}")]
    Invalid { file: String, line: usize, message: String },
    #[error("build target {target:?} is not a stage of {file}; its named stages are: {names}")]
    UnknownTarget { file: String, target: String, names: String },
}

/// What a stage starts from, or what `COPY --from` copies out of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    /// An empty filesystem.
    Scratch,
    /// An earlier stage, by its index in the Dockerfile.
    Stage(usize),
    /// An image reference, not yet normalised.
    Image(String),
}

/// The stages a build target needs.
#[derive(Clone, Debug)]
pub struct BuildPlan {
    pub file_name: String,
    /// In Dockerfile order; the last is the target. A stage's base and
    /// dependencies always come before it.
    pub stages: Vec<PlannedStage>,
    /// Build args that no ARG of a needed stage (or of the global scope)
    /// declares and that are not proxy args; Docker warns about them.
    pub unused_build_args: Vec<String>,
    /// Every stage's name by Dockerfile index, to resolve `--from`.
    stage_names: Vec<Option<String>>,
}

#[derive(Clone, Debug)]
pub struct PlannedStage {
    /// The stage's index in the Dockerfile (what `COPY --from=N` means).
    pub index: usize,
    pub name: Option<String>,
    pub base: Base,
    /// `--platform` after substitution.
    pub platform: Option<String>,
    pub line: usize,
    pub source: String,
    pub instructions: Vec<Instruction>,
    /// Indexes of the earlier stages whose files this one reads through
    /// `COPY --from` or `RUN --mount from=`, in first-use order.
    pub dependencies: Vec<usize>,
    scope: Scope,
}

impl PlannedStage {
    /// The scope the stage's first instruction is expanded in; apply the
    /// base image's env to it first.
    pub fn scope(&self) -> Scope {
        self.scope.clone()
    }
}

/// One instruction as it takes effect at its point in the build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    pub source: String,
    /// The instruction with its words substituted (ARG defaults resolved to the
    /// values that apply; RUN, CMD, ENTRYPOINT, SHELL, HEALTHCHECK, ONBUILD as written).
    pub instruction: InstructionKind,
    /// ARGs in scope with a value, ordered by name: part of a RUN's cache key
    /// and of its history entry. Undeclared proxy args are never here.
    pub build_args: Vec<(String, String)>,
    /// The image's env after this step, `KEY=value`, in definition order.
    pub env: Vec<String>,
    /// The environment a RUN at this point gets: the image env, then ARGs and
    /// given proxy args that no env entry shadows.
    pub run_env: Vec<String>,
}

/// Names and values visible at one point of a build: the image env (base
/// image, then ENV), the stage's declared ARGs, and what they may import.
#[derive(Clone, Debug)]
pub struct Scope {
    file_name: String,
    escape: char,
    build_args: BTreeMap<String, String>,
    /// Global ARGs after build args, plus the automatic platform ARGs: what
    /// a stage's `ARG NAME` imports.
    globals: BTreeMap<String, Option<String>>,
    /// Declared in this stage; None when declared without any value.
    args: BTreeMap<String, Option<String>>,
    env: Vec<(String, String)>,
}

impl Scope {
    fn stage(file_name: &str, escape: char, build_args: &BTreeMap<String, String>, globals: &BTreeMap<String, Option<String>>) -> Scope {
        Scope { file_name: file_name.to_string(), escape, build_args: build_args.clone(), globals: globals.clone(), args: BTreeMap::new(), env: Vec::new() }
    }

    /// Adds a base image's env (`KEY=value` entries, as in an image config).
    pub fn apply_base_env<S: AsRef<str>>(&mut self, env: &[S]) {
        for entry in env {
            let (key, value) = entry.as_ref().split_once('=').unwrap_or((entry.as_ref(), ""));
            self.set_env(key, value);
        }
    }

    /// The value `$name` has here: env first, then a declared ARG, then an
    /// undeclared proxy build arg.
    pub fn lookup(&self, name: &str) -> Option<String> {
        if let Some((_, value)) = self.env.iter().find(|(k, _)| k == name) {
            return Some(value.clone());
        }
        if let Some(declared) = self.args.get(name) {
            return declared.clone();
        }
        if PROXY_ARGS.contains(&name) {
            return self.build_args.get(name).cloned();
        }
        None
    }

    pub fn expand(&self, word: &str) -> Result<String, ExpandError> {
        expand_word(word, self.escape, &|name| self.lookup(name))
    }

    /// The image env, `KEY=value`, in definition order.
    pub fn env(&self) -> Vec<String> {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Declared ARGs that have a value, ordered by name.
    pub fn build_args(&self) -> Vec<(String, String)> {
        self.args.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone()))).collect()
    }

    pub fn run_env(&self) -> Vec<String> {
        let mut run_env = self.env();
        let shadowed = |name: &str| self.env.iter().any(|(k, _)| k == name);
        for (name, value) in self.build_args() {
            if !shadowed(&name) {
                run_env.push(format!("{name}={value}"));
            }
        }
        for name in PROXY_ARGS {
            if let Some(value) = self.build_args.get(name)
                && !self.args.contains_key(name)
                && !shadowed(name)
            {
                run_env.push(format!("{name}={value}"));
            }
        }
        run_env
    }

    /// Expands `instruction` in this scope and applies what it declares (ENV,
    /// ARG) so the next instruction sees it.
    pub fn step(&mut self, instruction: &Instruction) -> Result<Step, PlanError> {
        let expanded = self.advance(instruction)?;
        Ok(Step { line: instruction.line, source: instruction.source.clone(), instruction: expanded, build_args: self.build_args(), env: self.env(), run_env: self.run_env() })
    }

    /// `step` without the copies of env and args: what planning needs, in time
    /// that does not grow with the environment's size.
    fn advance(&mut self, instruction: &Instruction) -> Result<InstructionKind, PlanError> {
        let expanded = self.expand_kind(&instruction.kind).map_err(|error| PlanError::Expand { file: self.file_name.clone(), line: instruction.line, error })?;
        match &expanded {
            InstructionKind::Env(pairs) => {
                for pair in pairs {
                    self.set_env(&pair.key, &pair.value);
                }
            }
            InstructionKind::Arg(decls) => {
                for decl in decls {
                    self.args.insert(decl.name.clone(), decl.default.clone());
                }
            }
            _ => {}
        }
        Ok(expanded)
    }

    fn set_env(&mut self, key: &str, value: &str) {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => self.env.push((key.to_string(), value.to_string())),
        }
    }

    fn expand_opt(&self, word: &Option<String>) -> Result<Option<String>, ExpandError> {
        word.as_deref().map(|w| self.expand(w)).transpose()
    }

    fn expand_all(&self, words: &[String]) -> Result<Vec<String>, ExpandError> {
        words.iter().map(|w| self.expand(w)).collect()
    }

    /// Every word of one instruction is expanded against the scope before
    /// it, so `ENV A=1 B=$A` gives B the previous A, as in Docker.
    fn expand_kind(&self, kind: &InstructionKind) -> Result<InstructionKind, ExpandError> {
        let pairs = |pairs: &[KeyValue]| -> Result<Vec<KeyValue>, ExpandError> {
            pairs.iter().map(|p| Ok(KeyValue { key: self.expand(&p.key)?, value: self.expand(&p.value)? })).collect()
        };
        Ok(match kind {
            InstructionKind::Env(p) => InstructionKind::Env(pairs(p)?),
            InstructionKind::Label(p) => InstructionKind::Label(pairs(p)?),
            InstructionKind::Arg(decls) => InstructionKind::Arg(decls.iter().map(|d| self.resolve_arg(d)).collect::<Result<_, _>>()?),
            InstructionKind::Expose(ports) => {
                let mut expanded = Vec::new();
                for port in ports {
                    expanded.extend(expand_words(port, self.escape, &|name| self.lookup(name))?);
                }
                InstructionKind::Expose(expanded)
            }
            InstructionKind::Workdir(w) => InstructionKind::Workdir(self.expand(w)?),
            InstructionKind::User(u) => InstructionKind::User(self.expand(u)?),
            InstructionKind::Stopsignal(s) => InstructionKind::Stopsignal(self.expand(s)?),
            InstructionKind::Volume(paths) => InstructionKind::Volume(self.expand_all(paths)?),
            InstructionKind::Copy(copy) => InstructionKind::Copy(self.expand_copy(copy)?),
            InstructionKind::Add(copy) => InstructionKind::Add(self.expand_copy(copy)?),
            InstructionKind::Run { command, heredocs, mounts, network } => InstructionKind::Run {
                command: command.clone(),
                heredocs: heredocs.clone(),
                mounts: mounts
                    .iter()
                    .map(|m| {
                        Ok(RunMount { target: self.expand(&m.target)?, source: self.expand_opt(&m.source)?, from: self.expand_opt(&m.from)?, id: self.expand_opt(&m.id)?, ..m.clone() })
                    })
                    .collect::<Result<_, ExpandError>>()?,
                network: *network,
            },
            other => other.clone(),
        })
    }

    fn expand_copy(&self, copy: &FileCopy) -> Result<FileCopy, ExpandError> {
        let heredocs = copy
            .heredocs
            .iter()
            .map(|h| {
                let content = if h.expand { expand_heredoc(&h.content, self.escape, &|name| self.lookup(name))? } else { h.content.clone() };
                Ok(Heredoc { content, ..h.clone() })
            })
            .collect::<Result<_, ExpandError>>()?;
        Ok(FileCopy {
            sources: self.expand_all(&copy.sources)?,
            dest: self.expand(&copy.dest)?,
            from: self.expand_opt(&copy.from)?,
            chown: self.expand_opt(&copy.chown)?,
            chmod: self.expand_opt(&copy.chmod)?,
            link: copy.link,
            checksum: self.expand_opt(&copy.checksum)?,
            heredocs,
        })
    }

    /// The value an `ARG` declaration takes: a build arg, else its default,
    /// else (without a default) the global ARG of that name.
    fn resolve_arg(&self, decl: &ArgDecl) -> Result<ArgDecl, ExpandError> {
        let value = match (self.build_args.get(&decl.name), &decl.default) {
            (Some(given), _) => Some(given.clone()),
            (None, Some(default)) => Some(self.expand(default)?),
            (None, None) => self.globals.get(&decl.name).cloned().flatten(),
        };
        Ok(ArgDecl { name: decl.name.clone(), default: value, line: decl.line })
    }
}

/// Resolves build args, the target and each needed stage's base. `target`
/// names a stage (case-insensitively); without it the last stage is built.
pub fn plan(dockerfile: &Dockerfile, build_args: &BTreeMap<String, String>, target: Option<&str>) -> Result<BuildPlan, PlanError> {
    let file = dockerfile.file_name.as_str();
    let invalid = |line: usize, message: String| PlanError::Invalid { file: file.to_string(), line, message: clip_message(message) };
    if dockerfile.stages.is_empty() {
        return Err(invalid(1, "no build stage: a Dockerfile needs a FROM".to_string()));
    }

    // The global scope is a stage scope whose declared ARGs are the
    // automatic platform ARGs and the global ones.
    let automatic = platform_args();
    let mut global_scope = Scope::stage(file, dockerfile.escape, build_args, &automatic);
    global_scope.args = automatic;
    for decl in &dockerfile.global_args {
        let resolved = global_scope.resolve_arg(decl).map_err(|error| PlanError::Expand { file: file.to_string(), line: decl.line, error })?;
        global_scope.args.insert(resolved.name, resolved.default);
    }
    let globals = global_scope.args.clone();
    let expand_global = |word: &str, line: usize| global_scope.expand(word).map_err(|error| PlanError::Expand { file: file.to_string(), line, error });

    let stage_names: Vec<Option<String>> = dockerfile.stages.iter().map(|s| s.name.clone()).collect();
    let mut planned = Vec::with_capacity(dockerfile.stages.len());
    for stage in &dockerfile.stages {
        let base_name = expand_global(&stage.base, stage.line)?;
        if base_name.is_empty() {
            return Err(invalid(stage.line, format!("FROM {} expands to an empty image name", stage.base)));
        }
        let base = if base_name.eq_ignore_ascii_case("scratch") {
            Base::Scratch
        } else {
            let lower = base_name.to_ascii_lowercase();
            match stage_names[..stage.index].iter().position(|n| n.as_deref() == Some(lower.as_str())) {
                Some(index) => Base::Stage(index),
                None => Base::Image(base_name),
            }
        };
        let platform = stage.platform.as_deref().map(|p| expand_global(p, stage.line)).transpose()?;
        let scope = Scope::stage(file, dockerfile.escape, build_args, &globals);

        // Walk the stage once without the base image's env to find the stages
        // it copies from; `--from` values rarely depend on that env.
        let mut walk = scope.clone();
        let mut dependencies = Vec::new();
        for instruction in &stage.instructions {
            let expanded = walk.advance(instruction)?;
            let froms: Vec<&str> = match &expanded {
                InstructionKind::Copy(copy) => copy.from.as_deref().into_iter().collect(),
                InstructionKind::Run { mounts, .. } => mounts.iter().filter_map(|m| m.from.as_deref()).collect(),
                _ => Vec::new(),
            };
            for from in froms {
                if let Base::Stage(index) = resolve_from(&stage_names, stage.index, from).map_err(|m| invalid(instruction.line, m))?
                    && !dependencies.contains(&index)
                {
                    dependencies.push(index);
                }
            }
        }
        planned.push(PlannedStage {
            index: stage.index,
            name: stage.name.clone(),
            base,
            platform,
            line: stage.line,
            source: stage.source.clone(),
            instructions: stage.instructions.clone(),
            dependencies,
            scope,
        });
    }

    let target_index = match target {
        None => planned.len() - 1,
        Some(target) => {
            let lower = target.to_ascii_lowercase();
            stage_names.iter().position(|n| n.as_deref() == Some(lower.as_str())).ok_or_else(|| PlanError::UnknownTarget {
                file: file.to_string(),
                target: clip(target).into_owned(),
                names: clip_message(stage_names.iter().flatten().cloned().collect::<Vec<_>>().join(", ")),
            })?
        }
    };
    let mut needed = BTreeSet::new();
    let mut pending = vec![target_index];
    while let Some(index) = pending.pop() {
        if needed.insert(index) {
            let stage = &planned[index];
            if let Base::Stage(base) = stage.base {
                pending.push(base);
            }
            pending.extend(stage.dependencies.iter().copied());
        }
    }
    let stages: Vec<PlannedStage> = planned.into_iter().filter(|s| needed.contains(&s.index)).collect();

    let mut declared: BTreeSet<&str> = dockerfile.global_args.iter().map(|a| a.name.as_str()).collect();
    for stage in &stages {
        for instruction in &stage.instructions {
            if let InstructionKind::Arg(decls) = &instruction.kind {
                declared.extend(decls.iter().map(|d| d.name.as_str()));
            }
        }
    }
    let unused_build_args = build_args.keys().filter(|k| !declared.contains(k.as_str()) && !PROXY_ARGS.contains(&k.as_str())).cloned().collect();
    Ok(BuildPlan { file_name: file.to_string(), stages, unused_build_args, stage_names })
}

impl BuildPlan {
    /// What an expanded `COPY --from=`/`--mount from=` value in stage
    /// `stage_index` refers to: an earlier stage by name or index, or an image.
    pub fn resolve_from(&self, stage_index: usize, from: &str) -> Result<Base, String> {
        resolve_from(&self.stage_names, stage_index, from)
    }

    /// The target stage: the last of the plan.
    pub fn target(&self) -> &PlannedStage {
        self.stages.last().expect("a plan always has its target stage")
    }
}

fn resolve_from(stage_names: &[Option<String>], current: usize, from: &str) -> Result<Base, String> {
    let lower = from.to_ascii_lowercase();
    if let Some(index) = stage_names.iter().position(|n| n.as_deref() == Some(lower.as_str())) {
        if index >= current {
            return Err(format!("--from={from} names stage {index}, which is not before this stage ({current}): a stage can only read earlier stages"));
        }
        return Ok(Base::Stage(index));
    }
    if !from.is_empty() && from.bytes().all(|b| b.is_ascii_digit()) {
        return match from.parse::<usize>() {
            Ok(index) if index < current => Ok(Base::Stage(index)),
            _ => Err(format!("--from={from} is not the index of an earlier stage (this is stage {current})")),
        };
    }
    if from.eq_ignore_ascii_case("scratch") {
        return Ok(Base::Scratch);
    }
    if from.is_empty() {
        return Err("--from is empty".to_string());
    }
    Ok(Base::Image(from.to_string()))
}

/// Docker's automatic platform ARGs, describing this host.
fn platform_args() -> BTreeMap<String, Option<String>> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    let variant = if arch == "arm64" { "v8" } else { "" };
    let platform = if variant.is_empty() { format!("linux/{arch}") } else { format!("linux/{arch}/{variant}") };
    let mut args = BTreeMap::new();
    for prefix in ["BUILD", "TARGET"] {
        args.insert(format!("{prefix}PLATFORM"), Some(platform.clone()));
        args.insert(format!("{prefix}OS"), Some("linux".to_string()));
        args.insert(format!("{prefix}ARCH"), Some(arch.to_string()));
        args.insert(format!("{prefix}VARIANT"), Some(variant.to_string()));
    }
    args
}
