//! Runs a build: the stages the target needs, in order, each instruction after
//! the other. Every step first asks the cache; a miss runs it (RUN in a
//! container, COPY/ADD into a mounted overlay, the rest on the config alone)
//! and records its result. Layers come from the overlay's upper dir.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::BuildError;
use super::cache::{BuildCache, CacheEntry, sources_hash, step_key};
use super::context::BuildContext;
use super::dockerfile::{self, ArgDecl, CommandForm, Dockerfile, FileCopy, Healthcheck, Instruction, InstructionKind, Stage};
use super::copy::{self, CopySpec};
use super::image::{BaseImage, ImageDraft};
use super::layer::{Layer, LayerOptions, TreeKind};
use super::run::{OutputStream, RunProcess, StepNetwork, StepSandbox};
use crate::config::Config;
use crate::images::{ContentHold, ImageService};
use crate::images::manifest::{ContainerConfig, History, ImageConfig};
use crate::store::LayerRecord;

const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub dockerfile: String,
    pub dockerfile_name: String,
    pub tags: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub network: StepNetwork,
    pub source_date_epoch: Option<i64>,
}

/// What a build reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildEvent {
    Step { number: u32, total: u32, instruction: String },
    Output(OutputStream, Bytes),
    Cached,
    /// The short id of the image state after the step.
    StepDone(String),
    Built { image_id: String, tags: Vec<String> },
}

#[derive(Clone)]
pub struct Builder {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) config: Config,
    pub(super) images: ImageService,
    pods: crate::sandbox::PodService,
    pub(super) cache: BuildCache,
    contexts: PathBuf,
}

/// The image state a stage has reached.
#[derive(Debug, Clone)]
struct State {
    config: ImageConfig,
    layers: Vec<LayerRecord>,
    key: String,
    /// When the state was made (seconds since the epoch): the image's created
    /// time, so that a fully cached rebuild gives the same image id.
    created: i64,
}

/// One running build.
struct Run<'a> {
    builder: &'a Builder,
    options: &'a BuildOptions,
    dockerfile: &'a Dockerfile,
    context: &'a BuildContext,
    events: mpsc::Sender<BuildEvent>,
    sandbox: Option<StepSandbox>,
    build_id: String,
    step_count: u32,
    finished: HashMap<usize, State>,
    global_args: BTreeMap<String, String>,
    total: u32,
    /// New layers and the content of cached and base states, kept from garbage
    /// collection until the image that references them is written.
    new_layers: Vec<Layer>,
    holds: Vec<ContentHold>,
}

impl Builder {
    pub fn new(config: &Config, images: ImageService, pods: crate::sandbox::PodService, store: Arc<crate::store::Store>) -> Result<Builder, BuildError> {
        let contexts = config.state.join("build-contexts");
        if contexts.exists() {
            std::fs::remove_dir_all(&contexts).map_err(BuildError::io(format!("clearing {}", contexts.display())))?;
        }
        std::fs::create_dir_all(&contexts).map_err(BuildError::io(format!("creating {}", contexts.display())))?;
        Ok(Builder { inner: Arc::new(Inner { config: config.clone(), images, pods, cache: BuildCache::new(store), contexts }) })
    }

    /// Where uploads are spooled.
    pub fn context_dir(&self) -> &Path {
        &self.inner.contexts
    }

    /// Builds `options.dockerfile` in `context`; returns the image id.
    pub async fn build(&self, options: BuildOptions, context: BuildContext, events: mpsc::Sender<BuildEvent>) -> Result<String, BuildError> {
        let dockerfile = dockerfile::parse(&options.dockerfile, &options.dockerfile_name).map_err(|e| BuildError::Invalid(e.to_string()))?;
        let mut run = Run {
            builder: self,
            options: &options,
            dockerfile: &dockerfile,
            context: &context,
            events,
            sandbox: None,
            build_id: format!("{:016x}", rand::random::<u64>()),
            step_count: 0,
            finished: HashMap::new(),
            global_args: BTreeMap::new(),
            total: 0,
            new_layers: Vec::new(),
            holds: Vec::new(),
        };
        let result = run.all().await;
        if let Some(sandbox) = run.sandbox.take() {
            sandbox.close().await;
        }
        result
    }

    pub fn prune_cache(&self) -> Result<u32, BuildError> {
        self.inner.cache.prune()
    }
}

impl Run<'_> {
    async fn emit(&self, event: BuildEvent) {
        let _ = self.events.send(event).await;
    }

    async fn all(&mut self) -> Result<String, BuildError> {
        let dockerfile = self.dockerfile;
        for ArgDecl { name, default, .. } in &dockerfile.global_args {
            let value = match self.options.build_args.get(name) {
                Some(value) => Some(value.clone()),
                None => match default {
                    Some(word) => Some(self.expand_with(word, &|n| self.global_args.get(n).cloned(), 0)?),
                    None => None,
                },
            };
            if let Some(value) = value {
                self.global_args.insert(name.clone(), value);
            }
        }
        let target = match &self.options.target {
            Some(name) => dockerfile
                .stages
                .iter()
                .position(|s| s.name.as_deref() == Some(name.to_lowercase().as_str()))
                .ok_or_else(|| BuildError::Invalid(format!("target: no stage named {name:?} in {}", dockerfile.file_name)))?,
            None => dockerfile.stages.len().checked_sub(1).ok_or_else(|| {
                BuildError::Invalid(format!("{}: no FROM instruction; a Dockerfile needs at least one stage", dockerfile.file_name))
            })?,
        };
        let needed = self.needed_stages(target);
        self.total = needed.iter().map(|&i| 1 + dockerfile.stages[i].instructions.len() as u32).sum();
        let mut last = None;
        for index in needed {
            let state = self.stage(&dockerfile.stages[index]).await?;
            self.finished.insert(index, state.clone());
            last = Some(state);
        }
        let state = last.expect("the target stage was built");
        let draft = ImageDraft {
            config: state.config.config.clone().unwrap_or_default(),
            author: state.config.author.clone(),
            steps: Vec::new(),
            source_date_epoch: Some(state.created),
            base: BaseImage { id: None, config: state.config, layers: state.layers },
        };
        let (images, names) = (self.builder.inner.images.clone(), self.options.tags.clone());
        let image_id = tokio::task::spawn_blocking(move || super::image::write_image(&images, draft, &names))
            .await
            .map_err(|e| BuildError::Internal(format!("image write task: {e}")))??;
        let tags = self.options.tags.iter().map(|t| if t.rsplit('/').next().is_some_and(|last| last.contains(':')) { t.clone() } else { format!("{t}:latest") }).collect();
        self.emit(BuildEvent::Built { image_id: image_id.clone(), tags }).await;
        Ok(image_id)
    }

    /// The target and every stage it needs through `FROM <stage>` and
    /// `COPY --from=<stage>`, in Dockerfile order.
    fn needed_stages(&self, target: usize) -> Vec<usize> {
        let stages = &self.dockerfile.stages;
        let mut needed = HashSet::new();
        let mut pending = vec![target];
        while let Some(index) = pending.pop() {
            if !needed.insert(index) {
                continue;
            }
            let stage = &stages[index];
            let mut refs: Vec<&str> = vec![stage.base.as_str()];
            for instruction in &stage.instructions {
                if let InstructionKind::Copy(copy) | InstructionKind::Add(copy) = &instruction.kind
                    && let Some(from) = &copy.from
                {
                    refs.push(from);
                }
            }
            for name in refs {
                if let Some(found) = self.stage_index(name, index) {
                    pending.push(found);
                }
            }
        }
        let mut needed: Vec<usize> = needed.into_iter().collect();
        needed.sort();
        needed
    }

    /// The earlier stage `name` (an AS name or an index) refers to, if any.
    fn stage_index(&self, name: &str, before: usize) -> Option<usize> {
        let lower = name.to_lowercase();
        if let Ok(n) = lower.parse::<usize>() {
            return (n < before).then_some(n);
        }
        self.dockerfile.stages[..before].iter().position(|s| s.name.as_deref() == Some(lower.as_str()))
    }

    fn expand_with(&self, word: &str, lookup: &dyn Fn(&str) -> Option<String>, line: usize) -> Result<String, BuildError> {
        dockerfile::expand_word(word, self.dockerfile.escape, lookup)
            .map_err(|e| BuildError::Invalid(format!("{}:{line}: {e}", self.dockerfile.file_name)))
    }

    async fn begin_step(&mut self, text: &str) {
        self.step_count += 1;
        self.emit(BuildEvent::Step { number: self.step_count, total: self.total, instruction: text.to_string() }).await;
    }

    async fn stage(&mut self, stage: &Stage) -> Result<State, BuildError> {
        self.begin_step(&stage.source).await;
        let base = self.expand_with(&stage.base, &|n| self.global_args.get(n).cloned(), stage.line)?;
        let mut state = if let Some(index) = self.stage_index(&base, stage.index) {
            self.finished.get(&index).cloned().ok_or_else(|| BuildError::Internal(format!("stage {index} was not built")))?
        } else if base == "scratch" {
            let base = BaseImage::scratch();
            State { config: base.config, layers: base.layers, key: step_key("", "FROM scratch", &BTreeMap::new(), None), created: 0 }
        } else {
            self.base_image(&base).await?
        };
        self.emit(BuildEvent::StepDone(state_id(&state.config))).await;

        let mut scope = Scope::default();
        let triggers = take_onbuild(&mut state.config);
        let mut instructions: Vec<Instruction> = Vec::new();
        for trigger in triggers {
            let parsed = dockerfile::parse_trigger(&trigger, self.dockerfile.escape, &format!("ONBUILD trigger of {base}"))
                .map_err(|e| BuildError::Invalid(e.to_string()))?;
            instructions.push(parsed);
        }
        self.total += instructions.len() as u32;
        instructions.extend(stage.instructions.iter().cloned());
        for instruction in &instructions {
            self.begin_step(&instruction.source).await;
            state = self.step(state, &mut scope, instruction).await?;
            self.emit(BuildEvent::StepDone(state_id(&state.config))).await;
        }
        Ok(state)
    }

    async fn base_image(&mut self, reference: &str) -> Result<State, BuildError> {
        let images = &self.builder.inner.images;
        let id = match images.status(reference)? {
            Some(image) => image.id,
            None => images.pull(reference, None).await?,
        };
        let base = BaseImage::stored(images, &id)?;
        self.holds.push(images.hold(layer_keys(&base.layers)));
        let key = step_key("", &format!("FROM {id}"), &BTreeMap::new(), None);
        Ok(State { config: base.config, layers: base.layers, key, created: 0 })
    }

    /// One instruction: its cache key, then the cached result or a fresh one.
    async fn step(&mut self, state: State, scope: &mut Scope, instruction: &Instruction) -> Result<State, BuildError> {
        let line = instruction.line;
        // Declaring an ARG changes the scope before the key, so that the value a
        // later RUN sees is part of every later key.
        if let InstructionKind::Arg(decls) = &instruction.kind {
            for decl in decls {
                let value = match self.options.build_args.get(&decl.name) {
                    Some(v) => Some(v.clone()),
                    None => match &decl.default {
                        Some(word) => Some(self.expand_with(word, &|n| scope.lookup(&state.config, n), line)?),
                        None => self.global_args.get(&decl.name).cloned(),
                    },
                };
                scope.args.insert(decl.name.clone(), value);
            }
        }
        let sources = match &instruction.kind {
            InstructionKind::Copy(copy) | InstructionKind::Add(copy) => {
                let (root, paths) = self.copy_sources(copy, &state, scope, line)?;
                Some(sources_hash(&root, &paths)?)
            }
            _ => None,
        };
        let args = scope.values();
        let key = step_key(&state.key, &instruction.source, &args, sources.as_deref());
        let images = &self.builder.inner.images;
        if !self.options.no_cache
            && let Some(entry) = self.builder.inner.cache.get(&key, |l| super::cache::layer_present(images, l))?
        {
            self.holds.push(images.hold(layer_keys(&entry.layers)));
            self.emit(BuildEvent::Cached).await;
            return Ok(State { config: entry.config, layers: entry.layers, key, created: entry.created_seconds });
        }
        let mut next = self.execute(state, scope, instruction).await?;
        next.key = key.clone();
        let entry = CacheEntry { config: next.config.clone(), layers: next.layers.clone(), created_seconds: next.created };
        self.builder.inner.cache.put(&key, &entry)?;
        Ok(next)
    }

    /// A new step's time: SOURCE_DATE_EPOCH when set, else now.
    fn created(&self) -> i64 {
        self.options.source_date_epoch.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
        })
    }

    async fn execute(&mut self, mut state: State, scope: &mut Scope, instruction: &Instruction) -> Result<State, BuildError> {
        let line = instruction.line;
        let file = self.dockerfile.file_name.clone();
        let invalid = |what: String| BuildError::Invalid(format!("{file}:{line}: {what}"));
        let lookup = |config: &ImageConfig, scope: &Scope| {
            let (config, scope) = (config.clone(), scope.clone());
            move |n: &str| scope.lookup(&config, n)
        };
        let mut empty_layer = true;
        let created_by = format!("/bin/sh -c #(nop) {}", instruction.source);
        let mut history_by = created_by.clone();
        {
            let c = state.config.config.get_or_insert_with(ContainerConfig::default);
            match &instruction.kind {
                InstructionKind::Arg(_) | InstructionKind::Maintainer(_) => {
                    if let InstructionKind::Maintainer(who) = &instruction.kind {
                        state.config.author = Some(who.clone());
                    }
                }
                InstructionKind::Env(pairs) => {
                    for pair in pairs {
                        let look = lookup(&state.config, scope);
                        let value = self.expand_with(&pair.value, &look, line)?;
                        let c = state.config.config.get_or_insert_with(ContainerConfig::default);
                        set_env(&mut c.env, &pair.key, &value);
                    }
                }
                InstructionKind::Label(pairs) => {
                    for pair in pairs {
                        let look = lookup(&state.config, scope);
                        let key = self.expand_with(&pair.key, &look, line)?;
                        let value = self.expand_with(&pair.value, &look, line)?;
                        state.config.config.get_or_insert_with(ContainerConfig::default).labels.insert(key, value);
                    }
                }
                InstructionKind::Expose(ports) => {
                    for port in ports {
                        let look = lookup(&state.config, scope);
                        let port = self.expand_with(port, &look, line)?;
                        let port = if port.contains('/') { port } else { format!("{port}/tcp") };
                        state.config.config.get_or_insert_with(ContainerConfig::default).exposed_ports.insert(port, Default::default());
                    }
                }
                InstructionKind::Volume(paths) => {
                    for path in paths {
                        let look = lookup(&state.config, scope);
                        let path = self.expand_with(path, &look, line)?;
                        state.config.config.get_or_insert_with(ContainerConfig::default).volumes.insert(path, Default::default());
                    }
                }
                InstructionKind::Workdir(dir) => {
                    let current = c.working_dir.clone().unwrap_or_else(|| "/".into());
                    let look = lookup(&state.config, scope);
                    let dir = self.expand_with(dir, &look, line)?;
                    let joined = clean(&Path::new(&current).join(dir));
                    state.config.config.get_or_insert_with(ContainerConfig::default).working_dir = Some(joined.display().to_string());
                }
                InstructionKind::User(user) => {
                    let look = lookup(&state.config, scope);
                    let user = self.expand_with(user, &look, line)?;
                    state.config.config.get_or_insert_with(ContainerConfig::default).user = Some(user);
                }
                InstructionKind::Stopsignal(signal) => {
                    let look = lookup(&state.config, scope);
                    let signal = self.expand_with(signal, &look, line)?;
                    state.config.config.get_or_insert_with(ContainerConfig::default).stop_signal = Some(signal);
                }
                InstructionKind::Cmd(form) => {
                    let argv = command_argv(form, &shell(c));
                    c.cmd = Some(argv);
                }
                InstructionKind::Entrypoint(form) => {
                    let argv = command_argv(form, &shell(c));
                    c.entrypoint = Some(argv);
                    // Docker: a new ENTRYPOINT drops an inherited CMD.
                    c.cmd = None;
                }
                InstructionKind::Shell(argv) => {
                    c.extra.insert("Shell".into(), serde_json::json!(argv));
                }
                InstructionKind::OnBuild(trigger) => {
                    let list = c.extra.entry("OnBuild").or_insert_with(|| serde_json::json!([]));
                    if let Some(list) = list.as_array_mut() {
                        list.push(serde_json::Value::String(trigger.source.clone()));
                    }
                }
                InstructionKind::Healthcheck(check) => {
                    c.extra.insert("Healthcheck".into(), healthcheck_json(check));
                }
                InstructionKind::Run { command, heredocs, mounts, .. } => {
                    if !mounts.is_empty() {
                        return Err(invalid("RUN --mount is not supported by this builder".into()));
                    }
                    let argv = run_argv(command, heredocs, &shell(c));
                    history_by = match command {
                        CommandForm::Shell(_) => format!("|{} {}", scope.values().len(), argv.join(" ")),
                        CommandForm::Exec(_) => argv.join(" "),
                    };
                    let mut env = c.env.clone();
                    if !env.iter().any(|e| e.starts_with("PATH=")) {
                        env.insert(0, DEFAULT_PATH.to_string());
                    }
                    for (name, value) in scope.values() {
                        if !env.iter().any(|e| e.split_once('=').map(|(k, _)| k) == Some(name.as_str())) {
                            env.push(format!("{name}={value}"));
                        }
                    }
                    let process = RunProcess {
                        args: argv.clone(),
                        env,
                        working_dir: c.working_dir.clone().unwrap_or_default(),
                        user: c.user.clone().unwrap_or_default(),
                    };
                    if let Some(layer) = self.run_step(&state, &process, &argv).await? {
                        state.layers.push(layer.record());
                        self.new_layers.push(layer);
                        empty_layer = false;
                    }
                }
                InstructionKind::Copy(copy) | InstructionKind::Add(copy) => {
                    let is_add = matches!(instruction.kind, InstructionKind::Add(_));
                    if let Some(layer) = self.copy_step(&state, scope, copy, is_add, line).await? {
                        state.layers.push(layer.record());
                        self.new_layers.push(layer);
                        empty_layer = false;
                    }
                }
            }
        }
        if !empty_layer {
            let last = state.layers.last().expect("a layer was just added");
            state.config.rootfs.diff_ids.push(last.diff_id.parse().map_err(|e| BuildError::Internal(format!("layer diff id: {e}")))?);
        }
        state.created = self.created();
        state.config.created = Some(rfc3339(state.created));
        state.config.history.push(History {
            created: state.config.created.clone(),
            created_by: Some(if empty_layer { created_by } else { history_by }),
            empty_layer,
            ..Default::default()
        });
        Ok(state)
    }

    async fn sandbox(&mut self) -> Result<&StepSandbox, BuildError> {
        if self.sandbox.is_none() {
            let inner = &self.builder.inner;
            self.sandbox = Some(StepSandbox::open(&inner.config, inner.images.clone(), &self.build_id, self.options.network).await?);
        }
        Ok(self.sandbox.as_ref().expect("just opened"))
    }

    async fn run_step(&mut self, state: &State, process: &RunProcess, argv: &[String]) -> Result<Option<Layer>, BuildError> {
        let step = format!("step{}", self.step_count);
        let parents: Vec<String> = state.layers.iter().map(|l| l.diff_id.clone()).collect();
        let (sender, mut receiver) = mpsc::channel(64);
        let events = self.events.clone();
        let forward = tokio::spawn(async move {
            while let Some((stream, data)) = receiver.recv().await {
                let _ = events.send(BuildEvent::Output(stream, data)).await;
            }
        });
        let epoch = self.options.source_date_epoch;
        let images = self.builder.inner.images.clone();
        let sandbox = self.sandbox().await?;
        let outcome = sandbox.run(&step, &parents, process, &sender).await;
        drop(sender);
        let _ = forward.await;
        let result = match outcome {
            Ok(ran) if ran.exit_code != 0 => Err(BuildError::RunFailed { command: argv.join(" "), code: ran.exit_code }),
            Ok(ran) => match sandbox.unmount(&step) {
                Ok(()) => layer_of(images, ran.upper, epoch).await,
                Err(e) => Err(e),
            },
            Err(e) => return Err(e),
        };
        sandbox.release(&step).await;
        result
    }

    /// Where COPY/ADD take their files from (the context, or a stage's or an
    /// image's tree) and the source paths after expansion and globbing.
    fn copy_sources(&self, copy: &FileCopy, state: &State, scope: &Scope, line: usize) -> Result<(PathBuf, Vec<PathBuf>), BuildError> {
        let file = &self.dockerfile.file_name;
        if copy.from.is_some() {
            // A stage's or an image's files are hashed by their layers' ids.
            return Ok((PathBuf::new(), Vec::new()));
        }
        let root = self.context.root();
        let look = |n: &str| scope.lookup(&state.config, n);
        let mut paths = Vec::new();
        for source in &copy.sources {
            if copy.heredocs.iter().any(|h| &h.name == source) {
                continue;
            }
            let pattern = self.expand_with(source, &look, line)?;
            if pattern.starts_with("http://") || pattern.starts_with("https://") {
                continue;
            }
            let matched = glob_in(&root, &pattern)?;
            if matched.is_empty() {
                return Err(BuildError::Invalid(format!("{file}:{line}: COPY source {pattern:?}: no such file or directory in the build context")));
            }
            paths.extend(matched);
        }
        Ok((root, paths))
    }

    async fn copy_step(&mut self, state: &State, scope: &Scope, copy: &FileCopy, is_add: bool, line: usize) -> Result<Option<Layer>, BuildError> {
        let file = self.dockerfile.file_name.clone();
        let look = |n: &str| scope.lookup(&state.config, n);
        let dest = self.expand_with(&copy.dest, &look, line)?;
        let workdir = state.config.config.as_ref().and_then(|c| c.working_dir.clone()).unwrap_or_else(|| "/".into());
        let dest_is_dir = dest.ends_with('/') || dest.ends_with("/.") || dest == ".";
        let dest_path = clean(&Path::new(&workdir).join(&dest));
        let chown = copy.chown.as_ref().map(|c| self.expand_with(c, &look, line)).transpose()?;
        let chmod = match &copy.chmod {
            Some(mode) => Some(u32::from_str_radix(mode, 8).map_err(|_| BuildError::Invalid(format!("{file}:{line}: --chmod={mode}: not an octal mode")))?),
            None => None,
        };
        // Sources: context paths, or the tree of a stage or an image.
        let (root, sources, from_layers) = match &copy.from {
            Some(from) => {
                let from = self.expand_with(from, &look, line)?;
                let layers = match self.stage_index(&from, usize::MAX.min(self.dockerfile.stages.len())) {
                    Some(index) if self.finished.contains_key(&index) => self.finished[&index].layers.clone(),
                    _ => self.base_image(&from).await?.layers,
                };
                let mut patterns = Vec::new();
                for source in &copy.sources {
                    patterns.push(self.expand_with(source, &look, line)?);
                }
                (None, patterns, Some(layers))
            }
            None => {
                let (root, paths) = self.copy_sources(copy, state, scope, line)?;
                let urls: Vec<String> = copy
                    .sources
                    .iter()
                    .filter_map(|s| self.expand_with(s, &look, line).ok())
                    .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
                    .collect();
                let mut sources: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                sources.extend(urls);
                (Some(root), sources, None)
            }
        };
        let many = sources.len() + copy.heredocs.len() > 1 || sources.iter().any(|s| s.contains(['*', '?', '[']));
        if many && !dest_is_dir {
            return Err(BuildError::Invalid(format!("{file}:{line}: when copying more than one source, the destination must be a directory and end with a /")));
        }
        let step = format!("step{}", self.step_count);
        let parents: Vec<String> = state.layers.iter().map(|l| l.diff_id.clone()).collect();
        let epoch = self.options.source_date_epoch;
        let images = self.builder.inner.images.clone();
        let heredocs: Vec<(String, String)> = copy.heredocs.iter().map(|h| (h.name.clone(), h.content.clone())).collect();
        let sandbox = self.sandbox().await?;
        let mounted = sandbox.mount(&step, &parents).await?;
        let result = async {
            let from_root = match &from_layers {
                Some(layers) => {
                    let from_step = format!("{step}-from");
                    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
                    Some((from_step.clone(), sandbox.mount(&from_step, &diff_ids).await?))
                }
                None => None,
            };
            let spec = CopySpec {
                rootfs: mounted.rootfs.clone(),
                dest: dest_path.clone(),
                dest_is_dir,
                chown: chown.clone(),
                chmod,
                extract_archives: is_add,
            };
            let copied = match (&from_root, &root) {
                (Some((_, from)), _) => {
                    let mut paths = Vec::new();
                    for pattern in &sources {
                        let matched = glob_in(&from.rootfs, pattern)?;
                        if matched.is_empty() {
                            return Err(BuildError::Invalid(format!("{file}:{line}: COPY --from source {pattern:?}: not found")));
                        }
                        paths.extend(matched);
                    }
                    copy::copy_into(&spec, &paths, &[]).await
                }
                (None, Some(_)) => {
                    let paths: Vec<PathBuf> = sources.iter().filter(|s| !s.contains("://")).map(PathBuf::from).collect();
                    let urls: Vec<String> = sources.iter().filter(|s| s.contains("://")).cloned().collect();
                    copy::copy_into(&spec, &paths, &urls).await?;
                    copy::write_heredocs(&spec, &heredocs)
                }
                (None, None) => Ok(()),
            };
            if let Some((from_step, _)) = from_root {
                sandbox.release(&from_step).await;
            }
            copied?;
            sandbox.unmount(&step)?;
            layer_of(images, mounted.upper.clone(), epoch).await
        }
        .await;
        sandbox.release(&step).await;
        result
    }
}

/// ARGs declared in the stage so far, with the value each got (none when
/// declared without a default and not given).
#[derive(Debug, Clone, Default)]
struct Scope {
    args: BTreeMap<String, Option<String>>,
}

impl Scope {
    /// ENV wins over ARG of the same name, as Docker defines.
    fn lookup(&self, config: &ImageConfig, name: &str) -> Option<String> {
        let env = config.config.as_ref().map(|c| c.env.as_slice()).unwrap_or_default();
        if let Some(value) = env.iter().find_map(|e| e.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v.to_string())) {
            return Some(value);
        }
        self.args.get(name).cloned().flatten()
    }

    /// The build args in scope that have a value: part of every key.
    fn values(&self) -> BTreeMap<String, String> {
        self.args.iter().filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v))).collect()
    }
}

/// The short id Docker shows for an intermediate state.
fn state_id(config: &ImageConfig) -> String {
    let bytes = serde_json::to_vec(config).unwrap_or_default();
    crate::images::digest::Digest::of(&bytes).short().to_string()
}

fn take_onbuild(config: &mut ImageConfig) -> Vec<String> {
    let Some(c) = config.config.as_mut() else { return Vec::new() };
    match c.extra.remove("OnBuild") {
        Some(serde_json::Value::Array(list)) => list.into_iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

fn shell(c: &ContainerConfig) -> Vec<String> {
    c.extra
        .get("Shell")
        .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_SHELL.map(String::from).to_vec())
}

fn command_argv(form: &CommandForm, shell: &[String]) -> Vec<String> {
    match form {
        CommandForm::Exec(argv) => argv.clone(),
        CommandForm::Shell(text) => shell.iter().cloned().chain([text.clone()]).collect(),
    }
}

/// A RUN's argv. A heredoc that is the whole command becomes the script;
/// otherwise the shell reads the heredocs itself.
fn run_argv(command: &CommandForm, heredocs: &[dockerfile::Heredoc], shell: &[String]) -> Vec<String> {
    let CommandForm::Shell(text) = command else { return command_argv(command, shell) };
    if heredocs.is_empty() {
        return command_argv(command, shell);
    }
    let trimmed = text.trim();
    if heredocs.len() == 1 && trimmed.starts_with("<<") && !trimmed.contains(' ') {
        return shell.iter().cloned().chain([heredocs[0].content.clone()]).collect();
    }
    let mut script = text.clone();
    for heredoc in heredocs {
        script.push('\n');
        script.push_str(&heredoc.content);
        script.push_str(&heredoc.name);
    }
    shell.iter().cloned().chain([script]).collect()
}

fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match env.iter_mut().find(|e| e.split_once('=').map(|(k, _)| k) == Some(key)) {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
}

/// `path` made absolute and free of `.` and `..`, never above `/`.
fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// The paths under `root` that `pattern` names: a plain path, or one whose
/// components hold `*`, `?` or `[...]`, matched one directory level each.
/// Nothing matched outside `root`: `..` stops at it.
fn glob_in(root: &Path, pattern: &str) -> Result<Vec<PathBuf>, BuildError> {
    let relative = clean(Path::new("/").join(pattern).as_path());
    let mut current = vec![root.to_path_buf()];
    for component in relative.components().skip(1) {
        let part = component.as_os_str().to_string_lossy().to_string();
        let mut next = Vec::new();
        for dir in &current {
            if part.contains(['*', '?', '[']) {
                let Ok(entries) = std::fs::read_dir(dir) else { continue };
                let mut names: Vec<String> = entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect();
                names.sort();
                next.extend(names.into_iter().filter(|n| copy::wildcard_match(&part, n)).map(|n| dir.join(n)));
            } else {
                let candidate = dir.join(&part);
                if std::fs::symlink_metadata(&candidate).is_ok() {
                    next.push(candidate);
                }
            }
        }
        current = next;
    }
    Ok(current)
}

/// The image verbs beside build, on the image side of this room.
impl Builder {
    pub fn tag(&self, source: &str, target: &str) -> Result<String, BuildError> {
        Ok(super::image::tag(&self.inner.images, source, target)?)
    }

    pub fn list_images(&self) -> Result<Vec<super::proto::Image>, BuildError> {
        let images = self.inner.images.list(None)?;
        Ok(images
            .into_iter()
            .map(|i| super::proto::Image { id: i.id, repo_tags: i.repo_tags, repo_digests: i.repo_digests, size: i.size })
            .collect())
    }

    pub async fn remove_image(&self, name: &str) -> Result<(), BuildError> {
        if self.inner.images.status(name)?.is_none() {
            return Err(BuildError::NotFound(format!("No such image: {name}")));
        }
        Ok(self.inner.images.remove(name).await?)
    }

    pub async fn push(&self, name: &str) -> Result<String, BuildError> {
        Ok(self.inner.images.push(name, name, None).await?.to_string())
    }

    pub fn inspect(&self, name: &str) -> Result<String, BuildError> {
        let config = super::image::inspect(&self.inner.images, name)?;
        serde_json::to_string_pretty(&config).map_err(|e| BuildError::Internal(format!("image config: {e}")))
    }

    pub fn history(&self, name: &str) -> Result<Vec<super::proto::HistoryEntry>, BuildError> {
        let rows = super::image::history(&self.inner.images, name)?;
        let id = self.inner.images.status(name)?.map(|i| i.id).unwrap_or_default();
        Ok(rows
            .into_iter()
            .enumerate()
            .map(|(n, row)| super::proto::HistoryEntry {
                id: if n == 0 { id.clone() } else { "<missing>".into() },
                created: row.created.unwrap_or_default(),
                created_by: row.created_by,
                size: row.size,
                comment: row.comment,
            })
            .collect())
    }

    /// Commits a CRI container (by id or unique prefix) with `docker commit -c`
    /// style changes; returns the new image's id.
    pub async fn commit(&self, container: &str, reference: &str, changes: &[String], message: &str) -> Result<String, BuildError> {
        let record = self
            .inner
            .pods
            .container(container)
            .map_err(|e| BuildError::Internal(e.to_string()))?
            .ok_or_else(|| BuildError::NotFound(format!("No such container: {container}")))?;
        let mut parsed = Vec::new();
        for (index, change) in changes.iter().enumerate() {
            parsed.extend(commit_change(change).map_err(|e| BuildError::Invalid(format!("changes[{index}]: {e}")))?);
        }
        let options = super::commit::CommitOptions {
            changes: parsed,
            message: (!message.is_empty()).then(|| message.to_string()),
            created_by: Some(record.spec.command.iter().chain(&record.spec.args).cloned().collect::<Vec<_>>().join(" ")),
            names: if reference.is_empty() { Vec::new() } else { vec![reference.to_string()] },
            ..Default::default()
        };
        let images = self.inner.images.clone();
        tokio::task::spawn_blocking(move || super::commit::commit_container(&images, &record.id, &record.image_id, options))
            .await
            .map_err(|e| BuildError::Internal(format!("commit task: {e}")))?
            .map_err(BuildError::from)
    }

    /// Streams an archive of the named images.
    pub fn save(&self, names: Vec<String>) -> mpsc::Receiver<Result<Bytes, BuildError>> {
        let (sender, receiver) = mpsc::channel(8);
        let images = self.inner.images.clone();
        tokio::task::spawn_blocking(move || {
            let out = ChannelWriter { sender: sender.clone() };
            if let Err(e) = super::archive::save(&images, &names, std::io::BufWriter::with_capacity(1 << 20, out)) {
                let _ = sender.blocking_send(Err(e.into()));
            }
        });
        receiver
    }

    /// Loads an archive; returns the ids and the names of the images in it.
    pub async fn load(&self, archive: std::fs::File) -> Result<(Vec<String>, Vec<String>), BuildError> {
        let images = self.inner.images.clone();
        let loaded = tokio::task::spawn_blocking(move || super::archive::load(&images, std::io::BufReader::new(archive)))
            .await
            .map_err(|e| BuildError::Internal(format!("load task: {e}")))??;
        let ids = loaded.iter().map(|i| i.id.clone()).collect();
        let names = loaded.into_iter().flat_map(|i| i.names).collect();
        Ok((ids, names))
    }
}

/// One `-c` change of commit, written as a Dockerfile instruction.
fn commit_change(text: &str) -> Result<Vec<super::commit::Change>, String> {
    use super::commit::Change;
    let instruction = dockerfile::parse_trigger(text, '\\', "--change").map_err(|e| e.to_string())?;
    let none = |_: &str| None;
    let word = |w: &str| dockerfile::expand_word(w, '\\', &none).map_err(|e| e.to_string());
    let shell_form = |form: &CommandForm| command_argv(form, &DEFAULT_SHELL.map(String::from));
    Ok(match &instruction.kind {
        InstructionKind::Cmd(form) => vec![Change::Cmd(shell_form(form))],
        InstructionKind::Entrypoint(form) => vec![Change::Entrypoint(shell_form(form))],
        InstructionKind::Env(pairs) => pairs.iter().map(|p| Ok(Change::Env { name: p.key.clone(), value: word(&p.value)? })).collect::<Result<_, String>>()?,
        InstructionKind::Label(pairs) => pairs.iter().map(|p| Ok(Change::Label { key: word(&p.key)?, value: word(&p.value)? })).collect::<Result<_, String>>()?,
        InstructionKind::Expose(ports) => ports.iter().map(|p| Ok(Change::Expose(word(p)?))).collect::<Result<_, String>>()?,
        InstructionKind::Workdir(dir) => vec![Change::Workdir(word(dir)?)],
        InstructionKind::User(user) => vec![Change::User(word(user)?)],
        other => return Err(format!("{} cannot be applied by commit (CMD, ENTRYPOINT, ENV, WORKDIR, USER, EXPOSE, LABEL can)", other.keyword())),
    })
}

/// Hands what the archive writer writes to the gRPC stream, chunk by chunk.
struct ChannelWriter {
    sender: mpsc::Sender<Result<Bytes, BuildError>>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sender
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The digests and diff ids of `layers`, to hold them against garbage collection.
fn layer_keys(layers: &[LayerRecord]) -> Vec<String> {
    layers.iter().flat_map(|l| [l.digest.clone(), l.diff_id.clone()]).collect()
}

fn rfc3339(seconds: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.max(0) as u64);
    crate::shim::rfc3339_nano(time)
}

/// The layer of a step's upper dir; `None` when the step changed no file.
async fn layer_of(images: ImageService, upper: PathBuf, epoch: Option<i64>) -> Result<Option<Layer>, BuildError> {
    let options = LayerOptions { source_date_epoch: epoch };
    tokio::task::spawn_blocking(move || super::layer::create_layer(&images, &upper, TreeKind::OverlayUpper, &options))
        .await
        .map_err(|e| BuildError::Internal(format!("layer task: {e}")))?
        .map_err(BuildError::from)
}

/// HEALTHCHECK as Docker stores it in the image config (durations in nanoseconds).
fn healthcheck_json(check: &Healthcheck) -> serde_json::Value {
    match check {
        Healthcheck::None => serde_json::json!({ "Test": ["NONE"] }),
        Healthcheck::Cmd { test, interval, timeout, start_period, start_interval, retries } => {
            let test: Vec<String> = match test {
                CommandForm::Exec(argv) => std::iter::once("CMD".to_string()).chain(argv.iter().cloned()).collect(),
                CommandForm::Shell(text) => vec!["CMD-SHELL".to_string(), text.clone()],
            };
            let nanos = |d: &Option<std::time::Duration>| d.map(|d| d.as_nanos() as u64);
            serde_json::json!({
                "Test": test,
                "Interval": nanos(interval),
                "Timeout": nanos(timeout),
                "StartPeriod": nanos(start_period),
                "StartInterval": nanos(start_interval),
                "Retries": retries,
            })
        }
    }
}
