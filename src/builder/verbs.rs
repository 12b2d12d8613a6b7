//! The image verbs beside build (tag, rmi, push, commit, save, load, inspect,
//! history) as the builder service offers them, on the image side of this room.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::BuildError;
use super::dockerfile::{self, CommandForm, InstructionKind};
use super::executor::{Builder, DEFAULT_SHELL, command_argv};

/// The image verbs beside build, on the image side of this room.
impl Builder {
    pub fn tag(&self, source: &str, target: &str) -> Result<String, BuildError> {
        Ok(self.inner.images.tag(source, target)?)
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

    pub async fn push(&self, name: &str, credentials: Option<crate::images::registry::Credentials>) -> Result<String, BuildError> {
        Ok(self.inner.images.push(name, name, credentials).await?.to_string())
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

