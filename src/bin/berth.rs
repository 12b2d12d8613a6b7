//! berth: the CLI for what CRI has no verb for (build, commit, tag, push,
//! images, save/load), a client of berthd's `berth.build.v1.Builder` service on
//! the CRI socket. Output follows Docker's wording.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth::builder::dockerignore::DockerIgnore;
use berth::builder::proto::builder_client::BuilderClient;
use berth::builder::proto::{self, build_event, build_request};
use clap::{Parser, Subcommand, ValueEnum};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

const DEFAULT_SOCKET: &str = "/run/berth/berth.sock";
/// Context upload chunk: well below gRPC's default 4 MiB message limit.
const CHUNK: usize = 1024 * 1024;

#[derive(Debug, Parser)]
#[command(version, about = "Build, commit, tag and move images in berthd's image store")]
struct Args {
    /// berthd's socket. Default: CONTAINER_RUNTIME_ENDPOINT (unix://PATH), else /run/berth/berth.sock.
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NetworkArg {
    Host,
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Progress {
    /// Docker's classic step-by-step log.
    Plain,
    /// A live view of the steps with timers (when stdout is a terminal).
    Tty,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an image from a Dockerfile and a context directory.
    Build {
        /// Name and optionally tag (NAME[:TAG]); may repeat.
        #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
        tags: Vec<String>,
        /// The Dockerfile (default: CONTEXT/Dockerfile).
        #[arg(short = 'f', long = "file", value_name = "PATH")]
        file: Option<PathBuf>,
        /// Build-time variable KEY=VALUE; may repeat. KEY alone takes the value from the environment.
        #[arg(long = "build-arg", value_name = "KEY=VALUE")]
        build_args: Vec<String>,
        /// Build this stage and what it needs, not the last one.
        #[arg(long, value_name = "STAGE")]
        target: Option<String>,
        /// Run every step, ignoring the cache.
        #[arg(long)]
        no_cache: bool,
        /// RUN steps' network.
        #[arg(long, value_enum, default_value = "host")]
        network: NetworkArg,
        #[arg(long, value_enum, default_value = "plain")]
        progress: Progress,
        /// The build context directory.
        context: PathBuf,
    },
    /// Create an image from a container's changes.
    Commit {
        /// Apply a Dockerfile instruction (CMD, ENTRYPOINT, ENV, WORKDIR, USER, EXPOSE, LABEL); may repeat.
        #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
        changes: Vec<String>,
        #[arg(short = 'm', long = "message")]
        message: Option<String>,
        container: String,
        reference: String,
    },
    /// Give an image another name.
    Tag { source: String, target: String },
    /// List images.
    Images,
    /// Remove images (a tag, or the image by id).
    Rmi {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Push an image to its registry.
    Push {
        /// Registry credentials, as crictl pull takes them.
        #[arg(long, value_name = "USERNAME[:PASSWORD]")]
        creds: Option<String>,
        name: String,
    },
    /// Write images to an OCI image layout tar.
    Save {
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Load images from an OCI image layout tar.
    Load {
        #[arg(short = 'i', long = "input", value_name = "FILE")]
        input: PathBuf,
    },
    /// Show an image's details as JSON.
    Inspect { name: String },
    /// Show an image's history.
    History { name: String },
    /// Manage the build cache.
    Builder {
        #[command(subcommand)]
        command: BuilderCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BuilderCommand {
    /// Remove the build cache; its layers go unless an image uses them.
    Prune,
}

/// A failure the CLI reports, with the exit code it ends with.
struct Failure {
    message: String,
    code: u8,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure { message: e.to_string(), code: 1 }
    }
}

fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    if let Some(path) = flag {
        return path;
    }
    match std::env::var("CONTAINER_RUNTIME_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(&endpoint)),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

async fn connect(socket: PathBuf) -> Result<BuilderClient<Channel>, Failure> {
    // The URI is a placeholder: every connection goes to the unix socket.
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| Failure { message: format!("cannot reach berthd: {e}"), code: 1 })?;
    Ok(BuilderClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

fn status(e: tonic::Status) -> Failure {
    Failure { message: e.message().to_string(), code: 1 }
}

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let mut client = connect(socket_path(args.socket)).await?;
    match args.command {
        Command::Build { tags, file, build_args, target, no_cache, network, progress, context } => {
            let options = build_options(&context, file, tags, build_args, target, no_cache, network)?;
            let tty = matches!(progress, Progress::Tty) && std::io::stdout().is_terminal();
            build(&mut client, options, &context, tty).await
        }
        Command::Commit { changes, message, container, reference } => {
            let request = proto::CommitRequest { container, reference, changes, message: message.unwrap_or_default() };
            let response = client.commit(request).await.map_err(status)?.into_inner();
            println!("{}", response.image_id);
            Ok(())
        }
        Command::Tag { source, target } => {
            client.tag(proto::TagRequest { source, target }).await.map_err(status)?;
            Ok(())
        }
        Command::Images => {
            let images = client.list_images(proto::ListImagesRequest {}).await.map_err(status)?.into_inner().images;
            println!("{:<40} {:<16} {:<14} {:>10}", "REPOSITORY", "TAG", "IMAGE ID", "SIZE");
            for image in images {
                let names: Vec<(String, String)> = if image.repo_tags.is_empty() {
                    vec![("<none>".into(), "<none>".into())]
                } else {
                    image.repo_tags.iter().map(|t| split_tag(t)).collect()
                };
                for (repository, tag) in names {
                    println!("{repository:<40} {tag:<16} {:<14} {:>10}", short(&image.id), human_size(image.size));
                }
            }
            Ok(())
        }
        Command::Rmi { names } => {
            let mut failed = None;
            for name in names {
                match client.remove_image(proto::RemoveImageRequest { name: name.clone() }).await {
                    Ok(_) => println!("Untagged: {name}"),
                    Err(e) => {
                        eprintln!("Error: {name}: {}", e.message());
                        failed = Some(Failure { message: "some images could not be removed".into(), code: 1 });
                    }
                }
            }
            failed.map_or(Ok(()), Err)
        }
        Command::Push { creds, name } => {
            let (username, password) = match creds {
                Some(creds) => match creds.split_once(':') {
                    Some((user, password)) => (user.to_string(), password.to_string()),
                    None => (creds, String::new()),
                },
                None => (String::new(), String::new()),
            };
            let request = proto::PushRequest { name: name.clone(), username, password };
            let digest = client.push(request).await.map_err(status)?.into_inner().digest;
            println!("{name}: digest: {digest}");
            Ok(())
        }
        Command::Save { output, names } => {
            let mut stream = client.save(proto::SaveRequest { names }).await.map_err(status)?.into_inner();
            let partial = output.with_extension("partial");
            let mut file = std::fs::File::create(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
            while let Some(chunk) = stream.message().await.map_err(status)? {
                file.write_all(&chunk.data)?;
            }
            file.sync_all()?;
            std::fs::rename(&partial, &output).map_err(|e| format!("{}: {e}", output.display()))?;
            Ok(())
        }
        Command::Load { input } => {
            let mut file = std::fs::File::open(&input).map_err(|e| format!("{}: {e}", input.display()))?;
            let mut chunks = Vec::new();
            loop {
                let mut buffer = vec![0u8; CHUNK];
                let n = file.read(&mut buffer)?;
                if n == 0 {
                    break;
                }
                buffer.truncate(n);
                chunks.push(proto::Chunk { data: buffer });
            }
            let response = client.load(tokio_stream::iter(chunks)).await.map_err(status)?.into_inner();
            for name in &response.names {
                println!("Loaded image: {name}");
            }
            for id in response.image_ids.iter().filter(|_| response.names.is_empty()) {
                println!("Loaded image ID: {id}");
            }
            Ok(())
        }
        Command::Inspect { name } => {
            let json = client.inspect(proto::InspectRequest { name }).await.map_err(status)?.into_inner().json;
            println!("{json}");
            Ok(())
        }
        Command::History { name } => {
            let entries = client.history(proto::HistoryRequest { name }).await.map_err(status)?.into_inner().entries;
            println!("{:<14} {:<22} {:<60} {:>10}  COMMENT", "IMAGE", "CREATED", "CREATED BY", "SIZE");
            for entry in entries {
                let created_by: String = entry.created_by.chars().take(60).collect();
                println!(
                    "{:<14} {:<22} {created_by:<60} {:>10}  {}",
                    if entry.id.starts_with("sha256:") { short(&entry.id) } else { &entry.id },
                    entry.created,
                    human_size(entry.size),
                    entry.comment
                );
            }
            Ok(())
        }
        Command::Builder { command: BuilderCommand::Prune } => {
            let removed = client.prune_cache(proto::PruneCacheRequest {}).await.map_err(status)?.into_inner().entries_removed;
            println!("Deleted build cache entries: {removed}");
            Ok(())
        }
    }
}

fn split_tag(name: &str) -> (String, String) {
    match name.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
        Some((repository, tag)) => (repository.to_string(), tag.to_string()),
        None => (name.to_string(), "<none>".to_string()),
    }
}

fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < units.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes}B") } else { format!("{size:.3}{}", units[unit]) }
}

fn build_options(
    context: &Path,
    file: Option<PathBuf>,
    tags: Vec<String>,
    build_args: Vec<String>,
    target: Option<String>,
    no_cache: bool,
    network: NetworkArg,
) -> Result<proto::BuildOptions, Failure> {
    let dockerfile_path = file.unwrap_or_else(|| context.join("Dockerfile"));
    let dockerfile = std::fs::read(&dockerfile_path).map_err(|e| format!("reading {}: {e}", dockerfile_path.display()))?;
    let mut args = BTreeMap::new();
    for arg in build_args {
        match arg.split_once('=') {
            Some((key, value)) => args.insert(key.to_string(), value.to_string()),
            // Docker: `--build-arg KEY` takes KEY's value from the environment, if set.
            None => match std::env::var(&arg) {
                Ok(value) => args.insert(arg, value),
                Err(_) => continue,
            },
        };
    }
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) if !value.is_empty() => {
            Some(value.parse().map_err(|_| format!("SOURCE_DATE_EPOCH={value}: not a number of seconds"))?)
        }
        _ => None,
    };
    Ok(proto::BuildOptions {
        dockerfile,
        dockerfile_name: dockerfile_path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
        tags,
        build_args: args.into_iter().collect(),
        target: target.unwrap_or_default(),
        no_cache,
        network: match network {
            NetworkArg::Host => proto::Network::Host,
            NetworkArg::None => proto::Network::None,
        } as i32,
        source_date_epoch,
    })
}

/// The context as a tar: every file `.dockerignore` does not exclude, owned
/// by root (as Docker sends it), in name order.
fn context_tar(root: &Path) -> Result<Vec<u8>, Failure> {
    let ignore = match std::fs::read_to_string(root.join(".dockerignore")) {
        Ok(text) => DockerIgnore::parse(&text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DockerIgnore::default(),
        Err(e) => return Err(format!(".dockerignore: {e}").into()),
    };
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let path = root.join(&relative);
        let mut entries: Vec<_> = std::fs::read_dir(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries.into_iter().rev() {
            let name = relative.join(entry.file_name());
            let shown = name.to_string_lossy().to_string();
            let meta = entry.path().symlink_metadata().map_err(|e| format!("{}: {e}", entry.path().display()))?;
            // An excluded directory is still entered when an exception
            // (`!dir/keep`) may put back something inside it.
            if if meta.is_dir() { ignore.can_skip_dir(&shown) } else { ignore.matches(&shown) } {
                continue;
            }
            let mut header = tar::Header::new_gnu();
            header.set_metadata(&meta);
            header.set_uid(0);
            header.set_gid(0);
            if meta.is_dir() {
                builder.append_data(&mut header, &name, std::io::empty())?;
                pending.push(name);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                builder.append_link(&mut header, &name, &target)?;
            } else if meta.is_file() {
                let file = std::fs::File::open(entry.path()).map_err(|e| format!("{}: {e}", entry.path().display()))?;
                builder.append_data(&mut header, &name, file)?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

async fn build(client: &mut BuilderClient<Channel>, options: proto::BuildOptions, context: &Path, tty: bool) -> Result<(), Failure> {
    let root = context.to_path_buf();
    let tar = tokio::task::spawn_blocking(move || context_tar(&root)).await.map_err(|e| e.to_string())??;
    let mut requests = vec![proto::BuildRequest { part: Some(build_request::Part::Options(options)) }];
    requests.extend(tar.chunks(CHUNK).map(|chunk| proto::BuildRequest { part: Some(build_request::Part::Context(chunk.to_vec())) }));
    let mut events = client.build(tokio_stream::iter(requests)).await.map_err(status)?.into_inner();
    let mut view: Box<dyn Progressive> = if tty { Box::new(LiveView::default()) } else { Box::new(PlainView) };
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    loop {
        let event = tokio::select! {
            message = events.message() => match message.map_err(status)? {
                Some(event) => event,
                None => return Err("the build ended without a result".into()),
            },
            _ = ticker.tick(), if tty => {
                view.tick();
                continue;
            }
        };
        match event.event {
            Some(build_event::Event::Built(done)) => {
                view.finish();
                println!("Successfully built {}", short(&done.image_id));
                for tag in done.tags {
                    println!("Successfully tagged {tag}");
                }
                return Ok(());
            }
            Some(build_event::Event::Failed(failed)) => {
                view.finish();
                let code = if failed.exit_code > 0 { failed.exit_code.min(255) as u8 } else { 1 };
                return Err(Failure { message: failed.message, code });
            }
            Some(other) => view.show(other),
            None => {}
        }
    }
}

/// How build progress reaches the terminal.
trait Progressive {
    fn show(&mut self, event: build_event::Event);
    fn tick(&mut self) {}
    fn finish(&mut self) {}
}

/// Docker's classic builder output.
struct PlainView;

impl Progressive for PlainView {
    fn show(&mut self, event: build_event::Event) {
        let mut out = std::io::stdout().lock();
        let _ = match event {
            build_event::Event::Step(step) => writeln!(out, "Step {}/{} : {}", step.number, step.total, step.instruction),
            build_event::Event::Output(output) => {
                if output.stream == proto::step_output::Stream::Stderr as i32 {
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(&output.data);
                    err.flush()
                } else {
                    out.write_all(&output.data)
                }
            }
            build_event::Event::Cached(_) => writeln!(out, " ---> Using cache"),
            build_event::Event::Done(done) => writeln!(out, " ---> {}", short(&done.id)),
            _ => Ok(()),
        };
        let _ = out.flush();
    }
}

/// A BuildKit-like live view: the step list redrawn in place with timers, and
/// the last lines of the running step's output below it.
#[derive(Default)]
struct LiveView {
    started: Option<Instant>,
    /// Steps the build announced in all.
    total: u32,
    steps: Vec<LiveStep>,
    tail: Vec<String>,
    drawn_lines: usize,
}

struct LiveStep {
    label: String,
    started: Instant,
    finished: Option<Duration>,
    cached: bool,
}

/// Lines of a running step's output kept on screen.
const TAIL_LINES: usize = 6;

impl LiveView {
    fn draw(&mut self, final_frame: bool) {
        let started = *self.started.get_or_insert_with(Instant::now);
        let mut out = std::io::stdout().lock();
        let mut frame = String::new();
        if self.drawn_lines > 0 {
            frame.push_str(&format!("\x1b[{}A", self.drawn_lines));
        }
        let done = self.steps.iter().filter(|s| s.finished.is_some()).count();
        let mut lines = vec![format!("[+] Building {:.1}s ({done}/{})", started.elapsed().as_secs_f64(), self.total)];
        for step in &self.steps {
            let time = step.finished.unwrap_or_else(|| step.started.elapsed());
            let state = if step.cached { "CACHED".to_string() } else { format!("{:.1}s", time.as_secs_f64()) };
            lines.push(format!(" => {:<70} {state}", step.label.chars().take(70).collect::<String>()));
        }
        if !final_frame {
            lines.extend(self.tail.iter().map(|l| format!(" => => {}", l.chars().take(72).collect::<String>())));
        }
        for line in &lines {
            frame.push_str("\x1b[2K");
            frame.push_str(line);
            frame.push('\n');
        }
        // Clear lines a longer earlier frame left below this one.
        for _ in lines.len()..self.drawn_lines {
            frame.push_str("\x1b[2K\n");
        }
        let total = lines.len().max(self.drawn_lines);
        if total > lines.len() {
            frame.push_str(&format!("\x1b[{}A", total - lines.len()));
        }
        self.drawn_lines = lines.len();
        let _ = out.write_all(frame.as_bytes());
        let _ = out.flush();
    }

    fn close_running(&mut self) {
        if let Some(step) = self.steps.last_mut()
            && step.finished.is_none()
        {
            step.finished = Some(step.started.elapsed());
        }
    }
}

impl Progressive for LiveView {
    fn show(&mut self, event: build_event::Event) {
        match event {
            build_event::Event::Step(step) => {
                self.close_running();
                self.tail.clear();
                self.total = step.total;
                self.steps.push(LiveStep {
                    label: format!("[{}/{}] {}", step.number, step.total, step.instruction),
                    started: Instant::now(),
                    finished: None,
                    cached: false,
                });
            }
            build_event::Event::Output(output) => {
                for line in String::from_utf8_lossy(&output.data).lines() {
                    self.tail.push(line.to_string());
                }
                let excess = self.tail.len().saturating_sub(TAIL_LINES);
                self.tail.drain(..excess);
            }
            build_event::Event::Cached(_) => {
                if let Some(step) = self.steps.last_mut() {
                    step.cached = true;
                }
            }
            build_event::Event::Done(_) => self.close_running(),
            _ => {}
        }
        self.draw(false);
    }

    fn tick(&mut self) {
        self.draw(false);
    }

    fn finish(&mut self) {
        self.close_running();
        self.draw(true);
    }
}
