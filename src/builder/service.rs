//! The gRPC edge of the builder: `berth.build.v1.Builder` on berthd's socket.
//! Requests are checked and turned into the builder's own calls here, and
//! `BuildError`s become gRPC statuses here, once.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{BuildError, BuilderError};
use super::context::BuildContext;
use super::executor::{BuildEvent, BuildOptions, Builder};
use super::proto::{self, build_event, build_request, builder_server};
use super::run::{OutputStream, StepNetwork};

/// How many progress events may wait for a slow client before the build waits.
const EVENT_BUFFER: usize = 256;

pub use builder_server::BuilderServer;

pub struct BuilderService {
    builder: Builder,
}

impl BuilderService {
    pub fn new(builder: Builder) -> BuilderService {
        BuilderService { builder }
    }

    pub fn server(builder: Builder) -> BuilderServer<BuilderService> {
        BuilderServer::new(BuilderService::new(builder))
    }
}

impl From<BuildError> for Status {
    fn from(error: BuildError) -> Status {
        let code = match error {
            // A full disk is no bug of berth's: the client may free space and retry.
            BuildError::Io { ref source, .. } | BuildError::Builder(BuilderError::Io { ref source, .. })
                if source.kind() == std::io::ErrorKind::StorageFull =>
            {
                Code::ResourceExhausted
            }
            // The image room's errors keep the codes the CRI edge gives them.
            BuildError::Image(e) | BuildError::Builder(BuilderError::Image(e)) => return Status::from(e),
            BuildError::Invalid(_) => Code::InvalidArgument,
            BuildError::NotFound(_) => Code::NotFound,
            BuildError::Precondition(_) | BuildError::RunFailed { .. } => Code::FailedPrecondition,
            BuildError::Builder(ref e) => match e {
                BuilderError::InvalidArgument { .. } | BuilderError::InvalidArchive { .. } => Code::InvalidArgument,
                BuilderError::NotFound(_) => Code::NotFound,
                BuilderError::NoWritableLayer { .. } => Code::FailedPrecondition,
                BuilderError::Image(_) | BuilderError::Content(_) | BuilderError::Io { .. } | BuilderError::Snapshot { .. } => Code::Internal,
            },
            BuildError::Shim(_) => Code::Unavailable,
            BuildError::Store(_) | BuildError::Io { .. } | BuildError::Internal(_) => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::BuildEvent, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<proto::Chunk, Status>> + Send>>;

fn event(event: build_event::Event) -> proto::BuildEvent {
    proto::BuildEvent { event: Some(event) }
}

fn to_proto(e: BuildEvent) -> proto::BuildEvent {
    event(match e {
        BuildEvent::Step { number, total, instruction } => build_event::Event::Step(proto::StepStarted { number, total, instruction }),
        BuildEvent::Output(stream, data) => build_event::Event::Output(proto::StepOutput {
            stream: match stream {
                OutputStream::Stdout => proto::step_output::Stream::Stdout,
                OutputStream::Stderr => proto::step_output::Stream::Stderr,
            } as i32,
            data: data.to_vec(),
        }),
        BuildEvent::Cached => build_event::Event::Cached(proto::StepCached {}),
        BuildEvent::StepDone(id) => build_event::Event::Done(proto::StepDone { id }),
        BuildEvent::Built { image_id, tags } => build_event::Event::Built(proto::BuildDone { image_id, tags }),
    })
}

fn options(options: proto::BuildOptions) -> Result<BuildOptions, Status> {
    let dockerfile = String::from_utf8(options.dockerfile).map_err(|_| Status::invalid_argument("options.dockerfile: not UTF-8"))?;
    let network = match proto::Network::try_from(options.network) {
        Ok(proto::Network::Host) => StepNetwork::Host,
        Ok(proto::Network::None) => StepNetwork::None,
        Err(_) => return Err(Status::invalid_argument(format!("options.network: unknown value {}", options.network))),
    };
    Ok(BuildOptions {
        dockerfile,
        dockerfile_name: if options.dockerfile_name.is_empty() { "Dockerfile".into() } else { options.dockerfile_name },
        tags: options.tags,
        build_args: options.build_args.into_iter().collect::<BTreeMap<_, _>>(),
        target: (!options.target.is_empty()).then_some(options.target),
        no_cache: options.no_cache,
        network,
        source_date_epoch: options.source_date_epoch,
    })
}

#[tonic::async_trait]
impl builder_server::Builder for BuilderService {
    type BuildStream = EventStream;

    async fn build(&self, request: Request<Streaming<proto::BuildRequest>>) -> Result<Response<EventStream>, Status> {
        let mut incoming = request.into_inner();
        let first = incoming.message().await?.ok_or_else(|| Status::invalid_argument("options: the request stream is empty"))?;
        let Some(build_request::Part::Options(first)) = first.part else {
            return Err(Status::invalid_argument("options: must be the first message of Build"));
        };
        let options = options(first)?;
        let mut context = BuildContext::receive_start(self.builder.context_dir()).map_err(Status::from)?;
        while let Some(message) = incoming.message().await? {
            match message.part {
                Some(build_request::Part::Context(chunk)) => context.write(&chunk).map_err(Status::from)?,
                _ => return Err(Status::invalid_argument("options: sent more than once")),
            }
        }
        let context = context.finish().await.map_err(Status::from)?;

        let (events, receiver) = mpsc::channel(EVENT_BUFFER);
        let (sender, output) = mpsc::channel(EVENT_BUFFER);
        let builder = self.builder.clone();
        tokio::spawn(async move {
            let forward = tokio::spawn(async move {
                let mut receiver = ReceiverStream::new(receiver);
                while let Some(e) = receiver.next().await {
                    if sender.send(Ok(to_proto(e))).await.is_err() {
                        break;
                    }
                }
                sender
            });
            let result = builder.build(options, context, events).await;
            let Ok(sender) = forward.await else { return };
            if let Err(error) = result {
                tracing::info!(%error, "build failed");
                let exit_code = match &error {
                    BuildError::RunFailed { code, .. } => *code,
                    _ => 0,
                };
                let failed = event(build_event::Event::Failed(proto::BuildFailed { message: error.to_string(), exit_code }));
                let _ = sender.send(Ok(failed)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(output))))
    }

    async fn commit(&self, request: Request<proto::CommitRequest>) -> Result<Response<proto::CommitResponse>, Status> {
        let request = request.into_inner();
        if request.container.is_empty() {
            return Err(Status::invalid_argument("container is required"));
        }
        let image_id = self.builder.commit(&request.container, &request.reference, &request.changes, &request.message).await?;
        Ok(Response::new(proto::CommitResponse { image_id }))
    }

    async fn tag(&self, request: Request<proto::TagRequest>) -> Result<Response<proto::TagResponse>, Status> {
        let request = request.into_inner();
        for (field, value) in [("source", &request.source), ("target", &request.target)] {
            if value.is_empty() {
                return Err(Status::invalid_argument(format!("{field} is required")));
            }
        }
        self.builder.tag(&request.source, &request.target)?;
        Ok(Response::new(proto::TagResponse {}))
    }

    async fn list_images(&self, _: Request<proto::ListImagesRequest>) -> Result<Response<proto::ListImagesResponse>, Status> {
        let images = self.builder.list_images()?;
        Ok(Response::new(proto::ListImagesResponse { images }))
    }

    async fn remove_image(&self, request: Request<proto::RemoveImageRequest>) -> Result<Response<proto::RemoveImageResponse>, Status> {
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        self.builder.remove_image(&name).await?;
        Ok(Response::new(proto::RemoveImageResponse {}))
    }

    async fn push(&self, request: Request<proto::PushRequest>) -> Result<Response<proto::PushResponse>, Status> {
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        let credentials = (!request.username.is_empty())
            .then_some(crate::images::registry::Credentials::Basic { username: request.username, password: request.password });
        let digest = self.builder.push(&request.name, credentials).await?;
        Ok(Response::new(proto::PushResponse { digest }))
    }

    type SaveStream = ChunkStream;

    async fn save(&self, request: Request<proto::SaveRequest>) -> Result<Response<ChunkStream>, Status> {
        let names = request.into_inner().names;
        if names.is_empty() {
            return Err(Status::invalid_argument("names: at least one image is required"));
        }
        let chunks = self.builder.save(names);
        Ok(Response::new(Box::pin(ReceiverStream::new(chunks).map(|chunk| match chunk {
            Ok(data) => Ok(proto::Chunk { data: data.to_vec() }),
            Err(e) => Err(Status::from(e)),
        }))))
    }

    async fn load(&self, request: Request<Streaming<proto::Chunk>>) -> Result<Response<proto::LoadResponse>, Status> {
        let mut incoming = request.into_inner();
        let mut archive = BuildContext::receive_start(self.builder.context_dir())?;
        while let Some(chunk) = incoming.message().await? {
            archive.write(&chunk.data)?;
        }
        let (image_ids, names) = self.builder.load(archive.into_file()?).await?;
        Ok(Response::new(proto::LoadResponse { image_ids, names }))
    }

    async fn inspect(&self, request: Request<proto::InspectRequest>) -> Result<Response<proto::InspectResponse>, Status> {
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        let json = self.builder.inspect(&name)?;
        Ok(Response::new(proto::InspectResponse { json }))
    }

    async fn history(&self, request: Request<proto::HistoryRequest>) -> Result<Response<proto::HistoryResponse>, Status> {
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        let entries = self.builder.history(&name)?;
        Ok(Response::new(proto::HistoryResponse { entries }))
    }

    async fn prune_cache(&self, _: Request<proto::PruneCacheRequest>) -> Result<Response<proto::PruneCacheResponse>, Status> {
        let entries_removed = self.builder.prune_cache()?;
        Ok(Response::new(proto::PruneCacheResponse { entries_removed }))
    }
}
