//! Building a service's image from a source directory, as `gcloud run deploy --source` would:
//! the directory is filtered as gcloud uploads it and Docker sends it (`source/rules.rs`,
//! `source/dockerignore.rs`), packed into a tar context in-process (`source/context.rs`) and
//! built through the engine for linux/amd64. The image is tagged
//! `emulate-source/SERVICE:HASH`, HASH being the context's content hash, so an unchanged
//! tree is not built again. Without a Dockerfile, gcloud would use Google Cloud's buildpacks:
//! `pack` does that here if it is installed (`source/pack.rs`). `source/watch.rs` watches the
//! directory for `--watch`.

pub mod context;
pub mod dockerignore;
pub mod pack;
pub mod rules;
pub mod watch;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use crate::events::{Event, Events};
use crate::logs::LineSplitter;
use crate::runtime::{BuildRequest, Runtime, RuntimeError};

use context::DockerfileLocation;
use rules::{Rules, UploadRules};

/// The repository of images built from source; the tag is the context's hash.
pub const REPOSITORY: &str = "emulate-source";

/// How many of a failed build's last output lines are shown.
const LAST_LINES: usize = 10;

/// What to build: `--source DIR` and the flags that go with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceConfig {
    pub dir: PathBuf,
    /// `--dockerfile`: relative to the working directory; default `DIR/Dockerfile`.
    pub dockerfile: Option<PathBuf>,
    /// `--build-arg KEY=VALUE`, in the order given.
    pub build_args: Vec<(String, String)>,
    /// `--target STAGE`.
    pub target: Option<String>,
}

/// The source directory cannot be used as it is: the user's to fix.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", file.display())]
    IgnoreFile { file: PathBuf, message: String },
    #[error("--dockerfile: {} is not a file", path.display())]
    NoDockerfile { path: PathBuf },
    #[error("{dockerfile} is excluded by {rules}, so gcloud would not upload it and the build would find no Dockerfile; remove it from {rules}")]
    DockerfileNotUploaded { dockerfile: String, rules: String },
}

/// Why no image came out of a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A step of the Dockerfile failed: which, the engine's message and the step's last lines.
    #[error("{}", failed_text(step.as_deref(), message, output))]
    Failed {
        image: String,
        step: Option<String>,
        message: String,
        output: Vec<String>,
    },
    /// No Dockerfile and no `pack`: what gcloud would do, and how to go on locally.
    #[error("{} has no Dockerfile. gcloud run deploy --source would build it with Google Cloud's buildpacks (Cloud Build, builder gcr.io/buildpacks/builder). To build it here, install pack (https://buildpacks.io/docs/tools/pack/; it is not on PATH), or add a Dockerfile to {}.", dir.display(), dir.display())]
    NoDockerfile { dir: PathBuf },
    /// `pack build` failed.
    #[error("pack build failed: {message}{}", last_lines(output))]
    Pack {
        message: String,
        output: Vec<String>,
    },
    /// The engine could not be used (unreachable, refused the request).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

fn failed_text(step: Option<&str>, message: &str, output: &[String]) -> String {
    let at = match step {
        Some(step) => format!("The build failed at {step}\n"),
        None => "The build failed.\n".to_string(),
    };
    format!("{at}  {message}{}", last_lines(output))
}

fn last_lines(output: &[String]) -> String {
    if output.is_empty() {
        return String::new();
    }
    let lines: Vec<String> = output.iter().map(|l| format!("    | {l}")).collect();
    format!("\n  Its last output lines:\n{}", lines.join("\n"))
}

/// An image built (or found already built) from source.
#[derive(Clone, Debug)]
pub struct Built {
    /// The image's reference, `emulate-source/SERVICE:HASH`.
    pub image: String,
    /// The tag existed: nothing was built.
    pub reused: bool,
    pub took: Duration,
}

/// Builds one service's source, time after time (`--watch`); the note that the engine
/// emulates amd64 is said once.
#[derive(Debug)]
pub struct Builder {
    runtime: Runtime,
    events: Events,
    service: String,
    config: SourceConfig,
    emulation_noted: bool,
}

impl Builder {
    pub fn new(runtime: Runtime, events: Events, service: &str, config: SourceConfig) -> Self {
        Builder {
            runtime,
            events,
            service: service.to_string(),
            config,
            emulation_noted: false,
        }
    }

    pub fn config(&self) -> &SourceConfig {
        &self.config
    }

    /// The image of the directory as it is now: built, or reused when the engine already
    /// has the tag for its content. Dropping the future cancels a build in progress.
    pub async fn build(&mut self) -> Result<Built, BuildError> {
        let began = Instant::now();
        let config = self.config.clone();
        let prepared = tokio::task::spawn_blocking(move || prepare(&config))
            .await
            .map_err(|e| SourceError::Read {
                path: self.config.dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        let Some((context, upload_rules)) = prepared else {
            return self.build_with_pack(began).await;
        };
        let image = format!("{REPOSITORY}/{}:{}", self.service, &context.hash[..20]);
        if self.runtime.inspect_image(&image).await?.is_some() {
            self.events.publish(Event::BuildReused {
                service: self.service.clone(),
                image: image.clone(),
            });
            return Ok(Built {
                image,
                reused: true,
                took: began.elapsed(),
            });
        }
        self.note_emulation().await;
        self.events.publish(Event::BuildStarted {
            service: self.service.clone(),
            image: image.clone(),
            files: context.files.len(),
            bytes: context.bytes,
            rules: describe(&upload_rules),
        });
        let request = BuildRequest {
            tag: image.clone(),
            dockerfile: context.dockerfile.clone(),
            build_args: self.config.build_args.clone(),
            target: self.config.target.clone(),
        };
        let mut progress = Progress::new(&self.events, &self.service);
        let result = self
            .runtime
            .build_from_context(&request, context.archive, |chunk| progress.push(chunk))
            .await;
        progress.finish();
        let took = began.elapsed();
        self.events.publish(Event::BuildFinished {
            service: self.service.clone(),
            image: image.clone(),
            took,
            ok: result.is_ok(),
        });
        match result {
            Ok(()) => Ok(Built {
                image,
                reused: false,
                took,
            }),
            Err(RuntimeError::Failed { message, .. }) => Err(BuildError::Failed {
                image,
                step: progress.step,
                message,
                output: progress.last.into_iter().collect(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// No Dockerfile: buildpacks, as gcloud would, through `pack` if it is installed.
    async fn build_with_pack(&mut self, began: Instant) -> Result<Built, BuildError> {
        let Some(pack) = pack::find() else {
            return Err(BuildError::NoDockerfile {
                dir: self.config.dir.clone(),
            });
        };
        // pack's image has no content hash of ours: it is tagged by time, and pack's own
        // cache makes an unchanged rebuild quick.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let image = format!("{REPOSITORY}/{}:pack-{stamp}", self.service);
        self.note_emulation().await;
        self.events.publish(Event::BuildStarted {
            service: self.service.clone(),
            image: image.clone(),
            files: 0,
            bytes: 0,
            rules: "no Dockerfile: Google Cloud's buildpacks, through pack".to_string(),
        });
        let result = pack::build(&pack, &self.config, &image, &self.events, &self.service).await;
        let took = began.elapsed();
        self.events.publish(Event::BuildFinished {
            service: self.service.clone(),
            image: image.clone(),
            took,
            ok: result.is_ok(),
        });
        result.map(|()| Built {
            image,
            reused: false,
            took,
        })
    }

    /// Cloud Run runs amd64 only, so an engine of another architecture emulates it.
    async fn note_emulation(&mut self) {
        if self.emulation_noted {
            return;
        }
        self.emulation_noted = true;
        if let Ok(arch) = self.runtime.engine_architecture().await {
            if !matches!(arch.as_str(), "x86_64" | "amd64" | "") {
                self.events.publish(Event::warning(format!(
                    "the Docker engine runs on {arch}: the image is built for linux/amd64 (the only platform Cloud Run runs) under emulation, which is slower than a native build"
                )));
            }
        }
    }
}

/// The rules and the context, or None when there is no Dockerfile (a buildpacks build).
fn prepare(config: &SourceConfig) -> Result<Option<(context::Context, UploadRules)>, SourceError> {
    let Some(dockerfile) = context::locate_dockerfile(config)? else {
        return Ok(None);
    };
    let rules = load_rules(config, &dockerfile)?;
    if dockerfile.outside.is_none() && rules.not_uploaded(&dockerfile.in_context, false) {
        return Err(SourceError::DockerfileNotUploaded {
            dockerfile: dockerfile.in_context.clone(),
            rules: describe(&rules.upload_rules),
        });
    }
    let context = context::make(config, &rules, &dockerfile)?;
    Ok(Some((context, rules.upload_rules)))
}

fn load_rules(
    config: &SourceConfig,
    dockerfile: &DockerfileLocation,
) -> Result<Rules, SourceError> {
    let in_context = dockerfile
        .outside
        .is_none()
        .then_some(dockerfile.in_context.as_str());
    Rules::load(&config.dir, in_context)
}

/// The rules currently in force for the directory (for `--watch`'s filter).
pub fn current_rules(config: &SourceConfig) -> Result<Rules, SourceError> {
    match context::locate_dockerfile(config)? {
        Some(dockerfile) => load_rules(config, &dockerfile),
        None => Rules::load(&config.dir, None),
    }
}

fn describe(rules: &UploadRules) -> String {
    match rules {
        UploadRules::GcloudIgnore => ".gcloudignore",
        UploadRules::GitDefault => "gcloud's default for Git files: .git and .gitignore's patterns",
        UploadRules::Everything => "no .gcloudignore or Git files: everything uploaded",
    }
    .to_string()
}

/// The engine's build output, line by line: step headers are published as steps, the
/// steps' output as output (the last lines kept for a failure); the builder's bookkeeping
/// (` ---> id`, removed intermediate containers, `Successfully ...`) is left out.
struct Progress<'a> {
    events: &'a Events,
    service: &'a str,
    splitter: LineSplitter,
    step: Option<String>,
    last: VecDeque<String>,
}

impl<'a> Progress<'a> {
    fn new(events: &'a Events, service: &'a str) -> Self {
        Progress {
            events,
            service,
            splitter: LineSplitter::default(),
            step: None,
            last: VecDeque::new(),
        }
    }

    fn push(&mut self, chunk: &str) {
        let mut lines = Vec::new();
        self.splitter
            .push(chunk.as_bytes(), |line| lines.push(line.to_string()));
        for line in lines {
            self.line(&line);
        }
    }

    fn finish(&mut self) {
        let mut lines = Vec::new();
        self.splitter.finish(|line| lines.push(line.to_string()));
        for line in lines {
            self.line(&line);
        }
    }

    fn line(&mut self, line: &str) {
        match classify(line) {
            Line::Step => {
                self.step = Some(line.trim().to_string());
                self.last.clear();
                self.events.publish(Event::BuildStep {
                    service: self.service.to_string(),
                    step: line.trim().to_string(),
                });
            }
            Line::Output => {
                if self.last.len() == LAST_LINES {
                    self.last.pop_front();
                }
                self.last.push_back(line.to_string());
                self.events.publish(Event::BuildOutput {
                    service: self.service.to_string(),
                    line: line.to_string(),
                });
            }
            Line::Bookkeeping => {}
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    Step,
    Output,
    Bookkeeping,
}

/// What a line of the classic builder's output is.
fn classify(line: &str) -> Line {
    let trimmed = line.trim();
    if trimmed.is_empty()
        || trimmed.starts_with("---> ")
        || trimmed == "--->"
        || trimmed.starts_with("Removing intermediate container ")
        || trimmed.starts_with("Successfully built ")
        || trimmed.starts_with("Successfully tagged ")
    {
        Line::Bookkeeping
    } else if is_step(trimmed) {
        Line::Step
    } else {
        Line::Output
    }
}

/// `Step 2/4 : ...`.
fn is_step(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("Step ") else {
        return false;
    };
    let Some((numbers, _)) = rest.split_once(" : ") else {
        return false;
    };
    numbers
        .split_once('/')
        .is_some_and(|(n, m)| n.parse::<u32>().is_ok() && m.parse::<u32>().is_ok())
}

/// A service name from a source directory's name, as gcloud proposes one.
pub fn service_name_from_dir(dir: &std::path::Path) -> String {
    let absolute = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let name = absolute
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::cloudrun::service_name_from_image(&name)
}
