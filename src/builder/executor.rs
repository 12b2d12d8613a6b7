//! Runs a build: the stages the target needs, in order, each instruction after
//! the other. Every step first asks the cache; a miss runs it (RUN in a
//! container, COPY/ADD into a mounted overlay, the rest on the config alone)
//! and records its result. Layers come from the overlay's upper dir.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::BuildError;
use super::cache::{BuildCache, CacheEntry, sources_hash, step_key};
use super::context::BuildContext;
use super::dockerfile::{self, Base, BuildPlan, CommandForm, Dockerfile, FileCopy, Healthcheck, InstructionKind, PlannedStage, Step};
use super::copy::{self, CopySpec};
use super::image::{BaseImage, ImageDraft};
use super::layer::{Layer, LayerOptions, TreeKind};
use super::run::{OutputStream, RunProcess, StepMount, StepNetwork, StepSandbox};
use crate::config::Config;
use crate::inroot::{self, Root};
use crate::images::{ContentHold, ImageService};
use crate::images::manifest::{ContainerConfig, History, ImageConfig};
use crate::store::LayerRecord;

/// Under berthd's root: the directories of `RUN --mount=type=cache`, by id.
const CACHE_MOUNTS_DIR: &str = "build-cache-mounts";
pub(super) const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];
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
    pub(super) pods: crate::sandbox::PodService,
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
    plan: &'a BuildPlan,
    context: &'a BuildContext,
    events: mpsc::Sender<BuildEvent>,
    sandbox: Option<StepSandbox>,
    build_id: String,
    step_count: u32,
    finished: HashMap<usize, State>,
    total: u32,
    /// New layers and the content of cached and base states, kept from garbage
    /// collection until the image that references them is written.
    new_layers: Vec<Layer>,
    holds: Vec<ContentHold>,
}

impl Builder {
    /// Opens the builder, first removing whatever builds a stopped berthd left.
    pub async fn open(config: &Config, images: ImageService, pods: crate::sandbox::PodService, store: Arc<crate::store::Store>) -> Result<Builder, BuildError> {
        StepSandbox::clean_up_after_crash(config, &images, &store).await?;
        let contexts = config.state.join("build-contexts");
        if contexts.exists() {
            std::fs::remove_dir_all(&contexts).map_err(BuildError::io(format!("clearing {}", contexts.display())))?;
        }
        // Private: contexts may hold anything a client builds from.
        crate::store::layout::private_dir(&contexts).map_err(BuildError::io(format!("creating {}", contexts.display())))?;
        Ok(Builder { inner: Arc::new(Inner { config: config.clone(), images, pods, cache: BuildCache::new(store), contexts }) })
    }

    /// Where uploads are spooled.
    pub fn context_dir(&self) -> &Path {
        &self.inner.contexts
    }

    /// Builds `options.dockerfile` in `context`; returns the image id.
    pub async fn build(&self, options: BuildOptions, context: BuildContext, events: mpsc::Sender<BuildEvent>) -> Result<String, BuildError> {
        let dockerfile = dockerfile::parse(&options.dockerfile, &options.dockerfile_name).map_err(|e| BuildError::Invalid(e.to_string()))?;
        let plan = dockerfile::plan(&dockerfile, &options.build_args, options.target.as_deref()).map_err(|e| BuildError::Invalid(e.to_string()))?;
        let mut run = Run {
            builder: self,
            options: &options,
            dockerfile: &dockerfile,
            plan: &plan,
            context: &context,
            events,
            sandbox: None,
            build_id: format!("{:016x}", rand::random::<u64>()),
            step_count: 0,
            finished: HashMap::new(),
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

    /// Drops the build cache and the `RUN --mount=type=cache` directories;
    /// returns how many cache entries there were.
    pub fn prune_cache(&self) -> Result<u32, BuildError> {
        let mounts = self.inner.config.root.join(CACHE_MOUNTS_DIR);
        if mounts.exists() {
            std::fs::remove_dir_all(&mounts).map_err(BuildError::io(format!("removing {}", mounts.display())))?;
        }
        self.inner.cache.prune()
    }
}

impl Run<'_> {
    async fn emit(&self, event: BuildEvent) {
        let _ = self.events.send(event).await;
    }

    async fn all(&mut self) -> Result<String, BuildError> {
        let plan = self.plan;
        self.total = plan.stages.iter().map(|s| 1 + s.instructions.len() as u32).sum();
        let mut last = None;
        for stage in &plan.stages {
            let state = self.stage(stage).await?;
            self.finished.insert(stage.index, state.clone());
            last = Some(state);
        }
        let state = last.expect("a plan always has its target stage");
        // Done with containers: the build's shim, namespace and cgroup go before
        // the client hears of success.
        if let Some(sandbox) = self.sandbox.take() {
            sandbox.close().await;
        }
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
        // Docker's wording: the name as given, with the tag it implies.
        let tags = self
            .options
            .tags
            .iter()
            .map(|t| if t.rsplit('/').next().is_some_and(|last| last.contains(':')) { t.clone() } else { format!("{t}:latest") })
            .collect();
        self.emit(BuildEvent::Built { image_id: image_id.clone(), tags }).await;
        Ok(image_id)
    }

    async fn begin_step(&mut self, text: &str) {
        self.step_count += 1;
        self.emit(BuildEvent::Step { number: self.step_count, total: self.total, instruction: text.to_string() }).await;
    }

    /// The state `base` names: an earlier stage's result, scratch, or an image
    /// (pulled when missing).
    async fn base_state(&mut self, base: &Base) -> Result<State, BuildError> {
        match base {
            Base::Stage(index) => {
                self.finished.get(index).cloned().ok_or_else(|| BuildError::Internal(format!("stage {index} was not built before its use")))
            }
            Base::Scratch => {
                let base = BaseImage::scratch();
                Ok(State { config: base.config, layers: base.layers, key: step_key("", "FROM scratch", &BTreeMap::new(), None), created: 0 })
            }
            Base::Image(reference) => {
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
        }
    }

    async fn stage(&mut self, stage: &PlannedStage) -> Result<State, BuildError> {
        self.begin_step(&stage.source).await;
        let mut state = self.base_state(&stage.base).await?;
        let mut scope = stage.scope();
        scope.apply_base_env(&state.config.config.as_ref().map(|c| c.env.clone()).unwrap_or_default());
        // The base's ONBUILD triggers run as part of FROM, as in Docker, and are
        // not handed down further.
        let triggers = take_onbuild(&mut state.config);
        if !triggers.is_empty() {
            let note = format!("# Executing {} build trigger{}\n", triggers.len(), if triggers.len() == 1 { "" } else { "s" });
            self.emit(BuildEvent::Output(OutputStream::Stdout, Bytes::from(note))).await;
        }
        for trigger in triggers {
            let file = format!("ONBUILD trigger of {}", stage.source);
            let instruction = dockerfile::parse_trigger(&trigger, self.dockerfile.escape, &file).map_err(|e| BuildError::Invalid(e.to_string()))?;
            let step = scope.step(&instruction).map_err(|e| BuildError::Invalid(e.to_string()))?;
            state = self.step(state, stage.index, &step).await?;
        }
        self.emit(BuildEvent::StepDone(state_id(&state.config))).await;
        for instruction in &stage.instructions {
            self.begin_step(&instruction.source).await;
            let step = scope.step(instruction).map_err(|e| BuildError::Invalid(e.to_string()))?;
            state = self.step(state, stage.index, &step).await?;
            self.emit(BuildEvent::StepDone(state_id(&state.config))).await;
        }
        Ok(state)
    }

    /// One instruction: its cache key, then the cached result or a fresh one.
    async fn step(&mut self, state: State, stage: usize, step: &Step) -> Result<State, BuildError> {
        let sources = match &step.instruction {
            InstructionKind::Copy(copy) | InstructionKind::Add(copy) if copy.from.is_none() => {
                let paths = self.context_sources(copy, step.line)?;
                Some(sources_hash(&self.context_root()?, &paths)?)
            }
            // A RUN sees the context files it binds: they are part of its key.
            InstructionKind::Run { mounts, .. } if mounts.iter().any(|m| m.kind == dockerfile::MountKind::Bind && m.from.is_none()) => {
                let root = self.context_root()?;
                // A source that does not resolve inside the context fails the step
                // when it runs; the key only needs the ones that do.
                let paths: Vec<PathBuf> = mounts
                    .iter()
                    .filter(|m| m.kind == dockerfile::MountKind::Bind && m.from.is_none())
                    .map(|m| self.bind_source(m))
                    .filter(|p| root.open_node(p).is_ok())
                    .collect();
                Some(sources_hash(&root, &paths)?)
            }
            _ => None,
        };
        let key = step_key(&state.key, &key_text(step), &key_args(step), sources.as_deref());
        let images = &self.builder.inner.images;
        if !self.options.no_cache
            && let Some(entry) = self.builder.inner.cache.get(&key, |l| super::cache::layer_present(images, l))?
        {
            self.holds.push(images.hold(layer_keys(&entry.layers)));
            self.emit(BuildEvent::Cached).await;
            return Ok(State { config: entry.config, layers: entry.layers, key, created: entry.created_seconds });
        }
        let mut next = self.execute(state, stage, step).await?;
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

    fn invalid(&self, line: usize, what: impl std::fmt::Display) -> BuildError {
        BuildError::Invalid(format!("{}:{line}: {what}", self.dockerfile.file_name))
    }

    async fn execute(&mut self, mut state: State, stage: usize, step: &Step) -> Result<State, BuildError> {
        let line = step.line;
        let mut layer = None;
        let mut created_by = format!("/bin/sh -c #(nop) {}", step.source);
        let c = state.config.config.get_or_insert_with(ContainerConfig::default);
        // ENV and ARG are already applied to the scope; the image keeps ENV.
        c.env = step.env.clone();
        match &step.instruction {
            InstructionKind::Arg(_) | InstructionKind::Env(_) => {}
            InstructionKind::Maintainer(who) => state.config.author = Some(who.clone()),
            InstructionKind::Label(pairs) => c.labels.extend(pairs.iter().map(|p| (p.key.clone(), p.value.clone()))),
            InstructionKind::Expose(ports) => {
                for port in ports {
                    let port = if port.contains('/') { port.clone() } else { format!("{port}/tcp") };
                    c.exposed_ports.insert(port, Default::default());
                }
            }
            InstructionKind::Volume(paths) => c.volumes.extend(paths.iter().map(|p| (p.clone(), Default::default()))),
            InstructionKind::Workdir(dir) => {
                let current = c.working_dir.clone().unwrap_or_else(|| "/".into());
                c.working_dir = Some(clean(&Path::new(&current).join(dir)).display().to_string());
            }
            InstructionKind::User(user) => c.user = Some(user.clone()),
            InstructionKind::Stopsignal(signal) => c.stop_signal = Some(signal.clone()),
            InstructionKind::Cmd(form) => c.cmd = Some(command_argv(form, &shell(c))),
            InstructionKind::Entrypoint(form) => {
                c.entrypoint = Some(command_argv(form, &shell(c)));
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
            InstructionKind::Run { command, heredocs, mounts, network } => {
                let working_dir = c.working_dir.clone().unwrap_or_else(|| "/".into());
                let mounts = self.run_mounts(mounts, &working_dir, line)?;
                let argv = run_argv(command, heredocs, &shell(c));
                created_by = match command {
                    CommandForm::Shell(_) if !step.build_args.is_empty() => {
                        let args: Vec<String> = step.build_args.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        format!("|{} {} {}", args.len(), args.join(" "), argv.join(" "))
                    }
                    _ => argv.join(" "),
                };
                let mut env = step.run_env.clone();
                if !env.iter().any(|e| e.starts_with("PATH=")) {
                    env.insert(0, DEFAULT_PATH.to_string());
                }
                let process = RunProcess {
                    args: argv.clone(),
                    env,
                    working_dir: c.working_dir.clone().unwrap_or_default(),
                    user: c.user.clone().unwrap_or_default(),
                    mounts,
                    network: match network {
                        Some(dockerfile::RunNetwork::None) => StepNetwork::None,
                        Some(dockerfile::RunNetwork::Host) => StepNetwork::Host,
                        Some(dockerfile::RunNetwork::Default) | None => self.options.network,
                    },
                };
                layer = self.run_step(&state, &process, &argv).await?;
            }
            InstructionKind::Copy(copy) | InstructionKind::Add(copy) => {
                let is_add = matches!(step.instruction, InstructionKind::Add(_));
                created_by = format!("/bin/sh -c #(nop) {}", step.source);
                layer = self.copy_step(&state, stage, copy, is_add, line).await?;
            }
        }
        let empty_layer = layer.is_none();
        if let Some(layer) = layer {
            state.layers.push(layer.record());
            state.config.rootfs.diff_ids.push(layer.diff_id.clone());
            self.new_layers.push(layer);
        }
        state.created = self.created();
        state.config.created = Some(rfc3339(state.created));
        state.config.history.push(History {
            created: state.config.created.clone(),
            created_by: Some(created_by),
            empty_layer,
            ..Default::default()
        });
        Ok(state)
    }

    /// `RUN --mount`s as host paths: a cache directory kept under berthd's root
    /// (by id, shared between builds), a file or directory of the context, or a
    /// tmpfs.
    fn run_mounts(&self, mounts: &[dockerfile::RunMount], working_dir: &str, line: usize) -> Result<Vec<StepMount>, BuildError> {
        let mut out = Vec::new();
        for mount in mounts {
            let target = clean(&Path::new(working_dir).join(&mount.target));
            out.push(match mount.kind {
                dockerfile::MountKind::Tmpfs => StepMount::Tmpfs { target, size: mount.size },
                dockerfile::MountKind::Cache => {
                    if mount.from.is_some() {
                        return Err(self.invalid(line, "RUN --mount=type=cache,from=... is not supported by this builder"));
                    }
                    let id = mount.id.clone().unwrap_or_else(|| target.display().to_string());
                    let source = self.builder.inner.config.root.join(CACHE_MOUNTS_DIR).join(step_key("", &id, &BTreeMap::new(), None));
                    if !source.exists() {
                        // Private parent: a cache directory may be 0777 (see store::layout).
                        let parent = self.builder.inner.config.root.join(CACHE_MOUNTS_DIR);
                        crate::store::layout::private_dir(&parent).map_err(BuildError::io(format!("creating {}", parent.display())))?;
                        std::fs::create_dir_all(&source).map_err(BuildError::io(format!("creating {}", source.display())))?;
                        let mode = mount.mode.unwrap_or(0o755);
                        std::fs::set_permissions(&source, std::os::unix::fs::PermissionsExt::from_mode(mode))
                            .map_err(BuildError::io(format!("setting the mode of {}", source.display())))?;
                        std::os::unix::fs::chown(&source, Some(mount.uid.unwrap_or(0)), Some(mount.gid.unwrap_or(0)))
                            .map_err(BuildError::io(format!("setting the owner of {}", source.display())))?;
                    }
                    StepMount::Bind { source, target, readonly: mount.read_only }
                }
                dockerfile::MountKind::Bind => {
                    if mount.from.is_some() {
                        return Err(self.invalid(line, "RUN --mount=type=bind,from=... is not supported by this builder; bind the context or COPY --from"));
                    }
                    // Followed inside the context: runc mounts whatever host path it
                    // is given, so it gets the one the context's own links lead to.
                    let source = self.context_root()?.host_path(&self.bind_source(mount)).map_err(|e| {
                        self.invalid(line, format!("--mount source {:?}: not in the build context ({e})", mount.source.as_deref().unwrap_or(".")))
                    })?;
                    StepMount::Bind { source, target, readonly: mount.read_only }
                }
            });
        }
        Ok(out)
    }

    /// The context path a bind mount takes, relative to the context (the whole
    /// context without `source`).
    fn bind_source(&self, mount: &dockerfile::RunMount) -> PathBuf {
        inroot::relative(Path::new(mount.source.as_deref().unwrap_or("/")))
    }

    async fn sandbox(&mut self) -> Result<&StepSandbox, BuildError> {
        if self.sandbox.is_none() {
            let inner = &self.builder.inner;
            self.sandbox = Some(StepSandbox::open(&inner.config, inner.images.clone(), &self.build_id).await?);
        }
        Ok(self.sandbox.as_ref().expect("just opened"))
    }

    /// Runs a RUN's container; its changes become the layer (none if it changed
    /// nothing). A non-zero exit fails the build, leaving nothing behind.
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
        let ran = outcome?;
        let result = if ran.exit_code != 0 {
            Err(BuildError::RunFailed { command: argv.join(" "), code: ran.exit_code })
        } else {
            match sandbox.unmount(&step) {
                Ok(()) => layer_of(images, ran.upper, epoch).await,
                Err(e) => Err(e),
            }
        };
        sandbox.release(&step).await;
        result
    }

    /// The context paths a COPY/ADD names, after globbing; URLs and heredocs
    /// are not paths.
    fn context_sources(&self, copy: &FileCopy, line: usize) -> Result<Vec<PathBuf>, BuildError> {
        let root = self.context_root()?;
        let mut paths = Vec::new();
        for source in &copy.sources {
            if copy.heredocs.iter().any(|h| &h.name == source) || is_url(source) {
                continue;
            }
            let matched = copy::glob_in(&root, source);
            if matched.is_empty() {
                return Err(self.invalid(line, format!("{source:?}: no such file or directory in the build context")));
            }
            paths.extend(matched);
        }
        Ok(paths)
    }

    /// The build context as a root that every source path resolves inside.
    fn context_root(&self) -> Result<Root, BuildError> {
        Root::open(&self.context.root()).map_err(BuildError::io("opening the build context"))
    }

    /// COPY/ADD into a mounted overlay of the state; the upper dir becomes the layer.
    async fn copy_step(&mut self, state: &State, stage: usize, copy: &FileCopy, is_add: bool, line: usize) -> Result<Option<Layer>, BuildError> {
        let workdir = state.config.config.as_ref().and_then(|c| c.working_dir.clone()).unwrap_or_else(|| "/".into());
        let dest_is_dir = copy.dest.ends_with('/') || copy.dest.ends_with("/.") || copy.dest == ".";
        let chmod = match &copy.chmod {
            Some(mode) => Some(u32::from_str_radix(mode, 8).map_err(|_| self.invalid(line, format!("--chmod={mode}: not an octal mode")))?),
            None => None,
        };
        let spec = |rootfs: PathBuf| CopySpec {
            rootfs,
            dest: clean(&Path::new(&workdir).join(&copy.dest)),
            dest_is_dir,
            chown: copy.chown.clone(),
            chmod,
            extract_archives: is_add,
        };
        let sources = copy.sources.len() + copy.heredocs.len();
        if (sources > 1 || copy.sources.iter().any(|s| s.contains(['*', '?', '[']))) && !dest_is_dir {
            return Err(self.invalid(line, "when copying more than one source, the destination must be a directory and end with a /"));
        }
        // Another stage's or an image's files are read from a mount of its layers.
        let from_layers = match &copy.from {
            Some(from) => match self.plan.resolve_from(stage, from).map_err(|e| self.invalid(line, e))? {
                Base::Stage(index) => Some(self.base_state(&Base::Stage(index)).await?.layers),
                base => Some(self.base_state(&base).await?.layers),
            },
            None => None,
        };
        let context_paths = if from_layers.is_none() { self.context_sources(copy, line)? } else { Vec::new() };
        let urls: Vec<String> = copy.sources.iter().filter(|s| is_url(s)).cloned().collect();
        if !urls.is_empty() && !is_add {
            return Err(self.invalid(line, "COPY takes no URLs; ADD does"));
        }
        let step = format!("step{}", self.step_count);
        let parents: Vec<String> = state.layers.iter().map(|l| l.diff_id.clone()).collect();
        let epoch = self.options.source_date_epoch;
        let images = self.builder.inner.images.clone();
        let heredocs: Vec<(String, String)> = copy.heredocs.iter().map(|h| (h.name.clone(), h.content.clone())).collect();
        let file_name = self.dockerfile.file_name.clone();
        let invalid_source = |source: &str| BuildError::Invalid(format!("{file_name}:{line}: COPY --from source {source:?}: not found"));
        let context_dir = self.context.root();
        let spool = self.builder.inner.contexts.clone();
        let limits = copy::DownloadLimits {
            max_bytes: self.builder.inner.config.builder.max_download_bytes,
            stall_timeout: std::time::Duration::from_secs(self.builder.inner.config.builder.download_stall_timeout_seconds.max(1)),
        };
        let sandbox = self.sandbox().await?;
        let mounted = sandbox.mount(&step, &parents).await?;
        let from_step = format!("{step}-from");
        let result = async {
            let spec = spec(mounted.rootfs.clone());
            match &from_layers {
                Some(layers) => {
                    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
                    let from = sandbox.mount(&from_step, &diff_ids).await?;
                    let from_root = Root::open(&from.rootfs).map_err(BuildError::io("opening the COPY --from root"))?;
                    let mut paths = Vec::new();
                    for source in &copy.sources {
                        let matched = copy::glob_in(&from_root, source);
                        if matched.is_empty() {
                            return Err(invalid_source(source));
                        }
                        paths.extend(matched);
                    }
                    copy::copy_into(&spec, Some(&from.rootfs), &paths, Vec::new()).await?;
                }
                None => {
                    let mut downloads = Vec::new();
                    for url in &urls {
                        downloads.push(copy::download(url, copy.checksum.as_deref(), &spool, limits).await?);
                    }
                    copy::copy_into(&spec, Some(&context_dir), &context_paths, downloads).await?;
                    copy::write_heredocs(&spec, &heredocs)?;
                }
            }
            sandbox.unmount(&step)?;
            layer_of(images, mounted.upper.clone(), epoch).await
        }
        .await;
        if from_layers.is_some() {
            sandbox.release(&from_step).await;
        }
        sandbox.release(&step).await;
        result
    }
}

fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
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

pub(super) fn command_argv(form: &CommandForm, shell: &[String]) -> Vec<String> {
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

/// `path` made absolute and free of `.` and `..`, never above `/`.
fn clean(path: &Path) -> PathBuf {
    Path::new("/").join(inroot::relative(path))
}

/// What of an instruction goes into its cache key. A RUN is keyed as written
/// (the shell expands it) plus the build args it sees; the others by what they
/// expand to; an ARG by its text alone, so that a changed build arg invalidates
/// the first step that uses it, not the declaration.
fn key_text(step: &Step) -> String {
    match &step.instruction {
        InstructionKind::Run { .. } | InstructionKind::Arg(_) => step.source.clone(),
        expanded => serde_json::to_string(expanded).unwrap_or_else(|_| step.source.clone()),
    }
}

fn key_args(step: &Step) -> BTreeMap<String, String> {
    match &step.instruction {
        InstructionKind::Run { .. } => step.build_args.iter().cloned().collect(),
        _ => BTreeMap::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn step_of(dockerfile: &str, build_args: &[(&str, &str)]) -> Vec<Step> {
        let parsed = dockerfile::parse(dockerfile, "Dockerfile").unwrap();
        let args = build_args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let plan = dockerfile::plan(&parsed, &args, None).unwrap();
        let stage = plan.target();
        let mut scope = stage.scope();
        stage.instructions.iter().map(|i| scope.step(i).unwrap()).collect()
    }

    #[test]
    fn keys_see_build_args_only_where_docker_does() {
        let text = "FROM scratch\nARG V=1\nENV E=$V\nRUN echo $V\n";
        let plain = step_of(text, &[]);
        let given = step_of(text, &[("V", "2")]);
        // ARG: the declaration alone; a new value does not invalidate it.
        assert_eq!(key_text(&plain[0]), key_text(&given[0]));
        assert!(key_args(&plain[0]).is_empty());
        // ENV: by what it expands to.
        assert_ne!(key_text(&plain[1]), key_text(&given[1]));
        // RUN: as written, plus the build args it sees.
        assert_eq!(key_text(&plain[2]), "RUN echo $V");
        assert_eq!(key_args(&given[2]).get("V").map(String::as_str), Some("2"));
    }

    #[test]
    fn run_heredocs_become_the_script_or_stay_for_the_shell() {
        let shell = DEFAULT_SHELL.map(String::from).to_vec();
        let heredoc = |name: &str, content: &str| dockerfile::Heredoc { name: name.into(), content: content.into(), expand: true };
        let alone = run_argv(&CommandForm::Shell("<<EOF".into()), &[heredoc("EOF", "echo hi\n")], &shell);
        assert_eq!(alone, ["/bin/sh", "-c", "echo hi\n"]);
        let piped = run_argv(&CommandForm::Shell("cat <<EOF > /f".into()), &[heredoc("EOF", "x\n")], &shell);
        assert_eq!(piped, ["/bin/sh", "-c", "cat <<EOF > /f\nx\nEOF"]);
        let exec = run_argv(&CommandForm::Exec(vec!["ls".into(), "-l".into()]), &[], &shell);
        assert_eq!(exec, ["ls", "-l"]);
    }

    #[test]
    fn paths_are_cleaned_and_never_climb_above_the_root() {
        assert_eq!(clean(Path::new("/app/./data/../x")), PathBuf::from("/app/x"));
        assert_eq!(clean(Path::new("../../etc")), PathBuf::from("/etc"));
        assert_eq!(clean(Path::new("relative/dir/")), PathBuf::from("/relative/dir"));
    }
}
