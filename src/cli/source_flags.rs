//! `--source DIR` and the build flags that go with it (`run`, `deploy`, `smoke`): declared
//! once, checked into a `SourceConfig`, and the build as the CLI shows it (gcloud's line
//! first, failures with their exit code).

use std::path::PathBuf;

use clap::Args;

use super::{invalid, Exit};
use crate::config::FieldError;
use crate::runtime::RuntimeError;
use crate::source::{BuildError, Builder, Built, SourceConfig};

#[derive(Clone, Debug, Default, Args)]
pub struct SourceFlags {
    /// Build the image from DIR, as `gcloud run deploy --source` would: its Dockerfile (for
    /// linux/amd64), with the files .gcloudignore (else .gitignore) and .dockerignore leave
    /// out left out. Tagged emulate-source/SERVICE:CONTENT-HASH, so an unchanged tree is not
    /// rebuilt.
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    pub source: Option<PathBuf>,
    /// The Dockerfile to build with (default: DIR/Dockerfile).
    #[arg(long, value_name = "PATH", requires = "source")]
    pub dockerfile: Option<PathBuf>,
    /// A build-time variable for the Dockerfile's ARG (repeatable); KEY alone takes the
    /// value of the environment variable KEY.
    #[arg(long = "build-arg", value_name = "KEY=VALUE", requires = "source")]
    pub build_args: Vec<String>,
    /// The Dockerfile stage to build (default: the last).
    #[arg(long, value_name = "STAGE", requires = "source")]
    pub target: Option<String>,
}

impl SourceFlags {
    /// The build these flags ask for, checked; None without `--source`.
    pub fn check(&self) -> Result<Option<SourceConfig>, FieldError> {
        let Some(dir) = &self.source else {
            return Ok(None);
        };
        if !dir.is_dir() {
            return Err(invalid(
                "--source",
                format!("{} is not a directory", dir.display()),
            ));
        }
        let mut build_args = Vec::new();
        for arg in &self.build_args {
            match arg.split_once('=') {
                Some((key, _)) if key.trim().is_empty() => {
                    return Err(invalid(
                        "--build-arg",
                        format!("'{arg}' has no name; use KEY=VALUE"),
                    ))
                }
                Some((key, value)) => build_args.push((key.to_string(), value.to_string())),
                // As docker build: KEY alone takes the environment's value, if it has one.
                None => {
                    if let Ok(value) = std::env::var(arg) {
                        build_args.push((arg.clone(), value));
                    }
                }
            }
        }
        if let Some(target) = &self.target {
            if target.trim().is_empty() {
                return Err(invalid("--target", "the stage name is empty"));
            }
        }
        Ok(Some(SourceConfig {
            dir: dir.clone(),
            dockerfile: self.dockerfile.clone(),
            build_args,
            target: self.target.clone(),
        }))
    }
}

/// gcloud's first line for a deploy from source.
pub fn announce(config: &SourceConfig, service: &str) {
    let how = match crate::source::context::locate_dockerfile(config) {
        Ok(None) => "Buildpacks",
        _ => "Dockerfile",
    };
    eprintln!(
        "Building using {how} and deploying container to Cloud Run service [{service}] (emulated)"
    );
}

/// Builds, printing why a build failed; the exit code says whose fault it is: the source's
/// (2: unreadable, malformed ignore file, no Dockerfile and no pack), the image's (3: a step
/// failed, as a bad image does), or Docker's (4 unreachable, else 1).
pub async fn build(builder: &mut Builder) -> Result<Built, Exit> {
    builder.build().await.map_err(|error| {
        eprintln!("ERROR: {error}");
        build_exit(&error)
    })
}

pub fn build_exit(error: &BuildError) -> Exit {
    match error {
        BuildError::Source(_) | BuildError::NoDockerfile { .. } => Exit::Usage,
        BuildError::Failed { .. } | BuildError::Pack { .. } => Exit::NotReady,
        BuildError::Runtime(RuntimeError::Unreachable { .. }) => Exit::DockerUnavailable,
        BuildError::Runtime(_) => Exit::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(dir: &str, args: &[&str]) -> SourceFlags {
        SourceFlags {
            source: Some(dir.into()),
            build_args: args.iter().map(|a| a.to_string()).collect(),
            ..SourceFlags::default()
        }
    }

    #[test]
    fn build_args_are_key_value_pairs() {
        let here = env!("CARGO_MANIFEST_DIR");
        let config = flags(here, &["A=1", "B=", "C=x=y"])
            .check()
            .unwrap()
            .unwrap();
        assert_eq!(
            config.build_args,
            [
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), String::new()),
                ("C".to_string(), "x=y".to_string())
            ]
        );
        let error = flags(here, &["=1"]).check().unwrap_err().to_string();
        assert!(error.starts_with("--build-arg:"), "{error}");
        let unset = flags(here, &["EMULATE_SURELY_UNSET_VARIABLE"]).check();
        assert!(unset.unwrap().unwrap().build_args.is_empty());
    }

    #[test]
    fn the_source_must_be_a_directory() {
        let error = flags("/surely/not/here", &[])
            .check()
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("--source:"), "{error}");
        assert!(SourceFlags::default().check().unwrap().is_none());
    }
}
