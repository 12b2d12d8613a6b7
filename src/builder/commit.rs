//! Committing a container: its writable layer becomes a new layer on top of its
//! image, with the image's run defaults changed by `docker commit -c`-style
//! instructions. A running container is not paused (Docker's `--pause=false`):
//! files it writes while the layer is read may be taken half-written, but every
//! entry stays consistent with its header.

use std::path::PathBuf;

use super::error::BuilderError;
use super::image::{BaseImage, HistoryStep, ImageDraft, write_image};
use super::layer::{LayerOptions, TreeKind, create_layer};
use crate::images::ImageService;
use crate::images::manifest::{ContainerConfig, EmptyObject};

/// One `--change` instruction, already parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Exec form; shell form is the caller's `["/bin/sh", "-c", line]`.
    Cmd(Vec<String>),
    Entrypoint(Vec<String>),
    Env {
        name: String,
        value: String,
    },
    Workdir(String),
    User(String),
    /// `80`, `80/tcp` or `53/udp`.
    Expose(String),
    Label {
        key: String,
        value: String,
    },
}

#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    pub changes: Vec<Change>,
    /// The history entry's comment (`docker commit -m`).
    pub message: Option<String>,
    pub author: Option<String>,
    /// The history entry's `created_by`; the container's command is a good one.
    pub created_by: Option<String>,
    /// References to name the new image by.
    pub names: Vec<String>,
    pub source_date_epoch: Option<i64>,
}

/// Commits the container whose root filesystem lease is `container_id`, running
/// or stopped, on top of `image_id` (the image it was created from). Returns the
/// new image's id. Blocking.
pub fn commit_container(
    images: &ImageService,
    container_id: &str,
    image_id: &str,
    options: CommitOptions,
) -> Result<String, BuilderError> {
    let upper: PathBuf = images
        .writable_dir(container_id)?
        .ok_or_else(|| BuilderError::NoWritableLayer { id: container_id.to_string() })?;
    let mut draft = ImageDraft::new(BaseImage::stored(images, image_id)?);
    for change in &options.changes {
        apply_change(&mut draft.config, change)?;
    }
    let layer = create_layer(
        images,
        &upper,
        TreeKind::OverlayUpper,
        &LayerOptions { source_date_epoch: options.source_date_epoch },
    )?;
    draft.author = options.author;
    draft.source_date_epoch = options.source_date_epoch;
    draft.steps.push(HistoryStep {
        created_by: options.created_by.unwrap_or_else(|| format!("berth commit {container_id}")),
        comment: options.message,
        layer,
    });
    let id = write_image(images, draft, &options.names)?;
    tracing::info!(container = container_id, image = %id, "committed container");
    Ok(id)
}

/// Applies one instruction to the run defaults, as a Dockerfile would.
pub fn apply_change(config: &mut ContainerConfig, change: &Change) -> Result<(), BuilderError> {
    match change {
        Change::Cmd(args) => config.cmd = Some(args.clone()),
        Change::Entrypoint(args) => {
            config.entrypoint = Some(args.clone());
            // As in a Dockerfile, a new ENTRYPOINT drops an inherited CMD.
            config.cmd = None;
        }
        Change::Env { name, value } => {
            if name.is_empty() || name.contains('=') {
                return Err(BuilderError::invalid("ENV", format!("invalid variable name {name:?}")));
            }
            let entry = format!("{name}={value}");
            match config.env.iter_mut().find(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) == name) {
                Some(existing) => *existing = entry,
                None => config.env.push(entry),
            }
        }
        Change::Workdir(dir) => {
            let base = config.working_dir.clone().unwrap_or_else(|| "/".into());
            config.working_dir =
                Some(if dir.starts_with('/') { dir.clone() } else { format!("{}/{dir}", base.trim_end_matches('/')) });
        }
        Change::User(user) => config.user = Some(user.clone()),
        Change::Expose(port) => {
            config.exposed_ports.insert(normalise_port(port)?, EmptyObject {});
        }
        Change::Label { key, value } => {
            if key.is_empty() {
                return Err(BuilderError::invalid("LABEL", "empty label key"));
            }
            config.labels.insert(key.clone(), value.clone());
        }
    }
    Ok(())
}

fn normalise_port(port: &str) -> Result<String, BuilderError> {
    let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
    let protocol = protocol.to_ascii_lowercase();
    let valid_number = number.parse::<u16>().is_ok_and(|n| n > 0);
    if !valid_number || !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(BuilderError::invalid("EXPOSE", format!("{port:?} is not PORT or PORT/tcp|udp|sctp")));
    }
    Ok(format!("{number}/{protocol}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply_as_a_dockerfile_would() {
        let mut config = ContainerConfig {
            env: vec!["PATH=/bin".into(), "A=1".into()],
            cmd: Some(vec!["sh".into()]),
            working_dir: Some("/srv".into()),
            ..ContainerConfig::default()
        };
        for change in [
            Change::Env { name: "A".into(), value: "2=x".into() },
            Change::Env { name: "B".into(), value: String::new() },
            Change::Workdir("app".into()),
            Change::Expose("8080".into()),
            Change::Expose("53/UDP".into()),
            Change::Label { key: "k".into(), value: "v".into() },
            Change::User("1000:1000".into()),
            Change::Entrypoint(vec!["/bin/app".into()]),
        ] {
            apply_change(&mut config, &change).unwrap();
        }
        assert_eq!(config.env, ["PATH=/bin", "A=2=x", "B="]);
        assert_eq!(config.working_dir.as_deref(), Some("/srv/app"));
        assert_eq!(config.exposed_ports.keys().collect::<Vec<_>>(), ["53/udp", "8080/tcp"]);
        assert_eq!(config.labels["k"], "v");
        assert_eq!(config.user.as_deref(), Some("1000:1000"));
        assert_eq!(config.entrypoint, Some(vec!["/bin/app".to_string()]));
        assert_eq!(config.cmd, None);
        apply_change(&mut config, &Change::Cmd(vec!["--serve".into()])).unwrap();
        assert_eq!(config.cmd, Some(vec!["--serve".to_string()]));
    }

    #[test]
    fn bad_changes_name_the_instruction() {
        let mut config = ContainerConfig::default();
        for (change, field) in [
            (Change::Expose("http".into()), "EXPOSE"),
            (Change::Expose("80/icmp".into()), "EXPOSE"),
            (Change::Env { name: "A=B".into(), value: "x".into() }, "ENV"),
            (Change::Label { key: String::new(), value: "x".into() }, "LABEL"),
        ] {
            let error = apply_change(&mut config, &change).unwrap_err();
            assert!(error.to_string().starts_with(field), "{error}");
        }
    }
}
