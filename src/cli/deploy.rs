//! `emulate deploy SERVICE --image IMG [...]`: what `gcloud run deploy` does, against the
//! running emulator. As gcloud does, the new Service is computed here from the current one
//! (a flag not given keeps the template's value) and sent whole; the emulator makes the
//! revision, waits for it to be ready, and only then lets traffic reach it.

use clap::Args;

use super::control::{self, Format, Target};
use super::documents::print_deployed;
use super::revision_flags::{new_service, plain_env, RevisionFlags};
use super::Exit;
use crate::cloudrun;
use crate::config;
use crate::control::knative;
use crate::control::traffic::{self, TagUpdate, TargetKey};

/// `deploy`'s revision flags change only what they name. Its env flags edit the service's
/// env vars: `--set-env-vars` and `--env-vars-file` replace them all, so they cannot be
/// combined with each other or with the flags that edit them one by one.
#[derive(Debug, Args)]
#[command(
    // One list here: a second would only replace the first.
    mut_arg("set_env_vars", |a| a
        .action(clap::ArgAction::Set)
        .help("Replace all env vars: `NAME=VALUE,...`.")),
    mut_arg("env_vars_file", |a| a
        .conflicts_with("set_env_vars")
        .help("Replace all env vars with those of a YAML or .env file.")),
)]
pub struct DeployArgs {
    /// The service to deploy to (created if it does not exist).
    #[arg(value_parser = control::service_arg)]
    pub service: String,
    /// The image to deploy (required for a new service).
    #[arg(long)]
    pub image: Option<String>,
    #[command(flatten)]
    pub revision: RevisionFlags,
    #[command(flatten)]
    pub access: super::access_flags::AccessFlags,
    #[command(flatten)]
    pub source: super::source_flags::SourceFlags,
    /// Add or change env vars: `NAME=VALUE,...`.
    #[arg(long, value_name = "KEY=VALUE,...", conflicts_with = "set_env_vars")]
    pub update_env_vars: Option<String>,
    /// Remove env vars: `NAME,...`.
    #[arg(long, value_name = "KEY,...", conflicts_with = "set_env_vars")]
    pub remove_env_vars: Option<String>,
    /// Remove all env vars.
    #[arg(long, conflicts_with = "set_env_vars")]
    pub clear_env_vars: bool,
    /// Do not move traffic to the new revision (traffic following LATEST is pinned to the
    /// current revision).
    #[arg(long)]
    pub no_traffic: bool,
    /// Tag the new revision; it is reachable at http://TAG---SERVICE.localhost:PORT.
    #[arg(long)]
    pub tag: Option<String>,
    /// Name the revision SERVICE-SUFFIX instead of SERVICE-NNNNN-xxx.
    #[arg(long)]
    pub revision_suffix: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(flatten)]
    pub target: Target,
}

pub async fn run(args: DeployArgs) -> Exit {
    match deploy(args).await {
        Ok(()) => Exit::Success,
        Err(exit) => exit,
    }
}

fn usage(message: String) -> Exit {
    eprintln!("ERROR: {message}");
    Exit::Usage
}

async fn deploy(mut args: DeployArgs) -> Result<(), Exit> {
    cloudrun::validate_service_name(&args.service).map_err(|m| usage(format!("SERVICE: {m}")))?;
    if let Some(tag) = &args.tag {
        traffic::validate_tag(tag).map_err(|e| usage(format!("--tag: {e}")))?;
        cloudrun::validate_tag_for_service(tag, &args.service)
            .map_err(|m| usage(format!("--tag: {m}")))?;
    }
    if let Some(suffix) = &args.revision_suffix {
        cloudrun::validate_revision_suffix(&args.service, suffix)
            .map_err(|m| usage(format!("--revision-suffix: {m}")))?;
    }
    let source = args.source.check().map_err(|e| usage(e.to_string()))?;
    let client = args.target.client().await?;
    if let Some(source) = source {
        // Built here, as gcloud builds before it deploys; the emulator runs the image.
        args.image = Some(build_source(&args.service, source).await?);
    }
    let existing = client
        .get_service(&args.service)
        .await
        .map_err(|e| control::fail(&e))?;
    let creating = existing.is_none();
    if creating && args.no_traffic {
        return Err(usage(
            "--no-traffic not supported when creating a new service.".to_string(),
        ));
    }
    let mut service = match existing {
        Some(service) => service,
        None => {
            let image = args.image.clone().ok_or_else(|| {
                usage("--image: required when creating a new service".to_string())
            })?;
            new_service(&args.service, &image)
        }
    };
    let latest_ready = service
        .status
        .as_ref()
        .and_then(|s| s.latest_ready_revision_name.clone());
    service.status = None;
    apply_flags(&mut service, &args).map_err(usage)?;

    // Name the revision here, as gcloud does when it needs to refer to it (a tag).
    let revisions = client
        .list_revisions(Some(&args.service))
        .await
        .map_err(|e| control::fail(&e))?;
    let generation = revisions
        .iter()
        .filter_map(|r| {
            r.metadata
                .labels
                .get("serving.knative.dev/configurationGeneration")?
                .parse::<u32>()
                .ok()
        })
        .max()
        .unwrap_or(0)
        + 1;
    let revision = match &args.revision_suffix {
        Some(suffix) => format!("{}-{suffix}", args.service),
        None => cloudrun::revision_name(&args.service, generation, &mut rand::rng()),
    };
    service.spec.template.metadata.name = Some(revision.clone());

    let current = knative::traffic_from_doc(&service.spec.traffic)
        .map_err(|e| usage(e.to_string()))?
        .map(|t| traffic::normalize(&t))
        .unwrap_or_default();
    let mut targets = if current.is_empty() {
        vec![traffic::TrafficTarget {
            key: TargetKey::Latest,
            percent: 100,
            tag: None,
        }]
    } else {
        current
    };
    if args.no_traffic {
        // What followed LATEST stays on the revision serving now.
        if let Some(pinned) = &latest_ready {
            for target in &mut targets {
                if target.key == TargetKey::Latest {
                    target.key = TargetKey::Revision(pinned.clone());
                }
            }
            targets = traffic::normalize(&targets);
        }
    }
    if let Some(tag) = &args.tag {
        let tags = TagUpdate {
            update: vec![(tag.clone(), TargetKey::Revision(revision.clone()))],
            ..TagUpdate::default()
        };
        targets = traffic::update(&targets, &tags, None).map_err(|e| usage(e.to_string()))?;
    }
    service.spec.traffic = knative::traffic_to_doc(&targets);

    eprintln!(
        "Deploying container to Cloud Run service [{}] (emulated)",
        args.service
    );
    let answer = client
        .put_service(&service)
        .await
        .map_err(|e| control::fail(&e))?;
    control::print_notes(&answer.notes);
    match args.format {
        Format::Table => print_deployed(&answer.value, Some(&revision)),
        format => control::print_document(format, &answer.value),
    }
    Ok(())
}

/// Builds `--source` on the engine the emulator uses (`DOCKER_HOST`, else the local socket).
async fn build_source(service: &str, source: crate::source::SourceConfig) -> Result<String, Exit> {
    let runtime = crate::runtime::Runtime::connect().await.map_err(|e| {
        eprintln!("ERROR: {e}");
        Exit::DockerUnavailable
    })?;
    let events = crate::events::Events::with_sink(crate::logs::LogPrinter::stderr());
    let mut builder = crate::source::Builder::new(runtime, events, service, source);
    super::source_flags::announce(builder.config(), service);
    super::source_flags::build(&mut builder)
        .await
        .map(|built| built.image)
}

/// Changes the template as the flags say; what a flag does not mention stays. The env vars
/// are replaced (`--set-env-vars`, `--env-vars-file`, `--clear-env-vars`), then removed, then
/// updated, as gcloud orders them.
fn apply_flags(service: &mut knative::Service, args: &DeployArgs) -> Result<(), String> {
    let mut changes = args.revision.check().map_err(|e| e.to_string())?;
    if args.clear_env_vars && changes.env.is_none() {
        changes.env = Some(Vec::new());
    }
    changes.apply(&mut service.spec.template);
    args.access.apply(service);
    let container = &mut service.spec.template.spec.containers[0];
    if let Some(image) = &args.image {
        container.image = image.clone();
    }
    if let Some(remove) = &args.remove_env_vars {
        let names = config::split_list(remove);
        container.env.retain(|e| !names.contains(&e.name));
    }
    if let Some(update) = &args.update_env_vars {
        for (name, value) in
            config::parse_env_vars("--update-env-vars", update).map_err(|e| e.to_string())?
        {
            match container.env.iter_mut().find(|e| e.name == name) {
                Some(existing) => *existing = plain_env(name, value),
                None => container.env.push(plain_env(name, value)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn deploy_args(argv: &[&str]) -> DeployArgs {
        let mut full = vec!["emulate", "deploy"];
        full.extend_from_slice(argv);
        match crate::cli::Cli::try_parse_from(full).unwrap().command {
            crate::cli::Command::Deploy(args) => args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_not_given_keep_the_templates_values() {
        let mut service = new_service("hello", "img:1");
        apply_flags(
            &mut service,
            &deploy_args(&[
                "hello",
                "--set-env-vars",
                "A=1,B=2",
                "--memory",
                "1Gi",
                "--concurrency",
                "5",
            ]),
        )
        .unwrap();
        apply_flags(
            &mut service,
            &deploy_args(&[
                "hello",
                "--image",
                "img:2",
                "--update-env-vars",
                "B=3,C=4",
                "--remove-env-vars",
                "A",
            ]),
        )
        .unwrap();
        let spec = &service.spec.template.spec;
        let container = &spec.containers[0];
        assert_eq!(container.image, "img:2");
        let env: Vec<(&str, &str)> = container
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap()))
            .collect();
        assert_eq!(env, [("B", "3"), ("C", "4")]);
        assert_eq!(
            container.resources.as_ref().unwrap().limits["memory"],
            "1Gi"
        );
        assert_eq!(spec.container_concurrency, Some(5));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let mut service = new_service("hello", "img");
        let error =
            apply_flags(&mut service, &deploy_args(&["hello", "--memory", "lots"])).unwrap_err();
        assert!(error.starts_with("--memory:"), "{error}");
        let error = apply_flags(
            &mut service,
            &deploy_args(&["hello", "--update-env-vars", "K_SERVICE=x"]),
        )
        .unwrap_err();
        assert!(error.contains("'K_SERVICE' is reserved"), "{error}");
    }
}
