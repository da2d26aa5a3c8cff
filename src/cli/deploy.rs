//! `emulate deploy SERVICE --image IMG [...]`: what `gcloud run deploy` does, against the
//! running emulator. As gcloud does, the new Service is computed here from the current one
//! (a flag not given keeps the template's value) and sent whole; the emulator makes the
//! revision, waits for it to be ready, and only then lets traffic reach it.

use std::path::PathBuf;

use clap::Args;

use super::control::{self, Format, Target};
use super::Exit;
use crate::cloudrun;
use crate::config;
use crate::control::knative;
use crate::control::traffic::{self, TagUpdate, TargetKey};

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The service to deploy to (created if it does not exist).
    #[arg(value_parser = control::service_arg)]
    pub service: String,
    /// The image to deploy (required for a new service).
    #[arg(long)]
    pub image: Option<String>,
    /// The container port, set as $PORT.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Replace all env vars: `NAME=VALUE,...`.
    #[arg(long, value_name = "KEY=VALUE,...", conflicts_with_all = ["update_env_vars", "remove_env_vars", "clear_env_vars"])]
    pub set_env_vars: Option<String>,
    /// Add or change env vars: `NAME=VALUE,...`.
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub update_env_vars: Option<String>,
    /// Remove env vars: `NAME,...`.
    #[arg(long, value_name = "KEY,...")]
    pub remove_env_vars: Option<String>,
    /// Remove all env vars.
    #[arg(long)]
    pub clear_env_vars: bool,
    /// Replace all env vars with those of a YAML or .env file.
    #[arg(long, value_name = "FILE", conflicts_with = "set_env_vars")]
    pub env_vars_file: Option<PathBuf>,
    /// Maximum concurrent requests per instance (1-1000; 0 is Cloud Run's default: 80, or 1
    /// with less than one CPU).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub concurrency: Option<u32>,
    /// Request timeout: seconds or with units (5m); at most 1h.
    #[arg(long)]
    pub timeout: Option<String>,
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long)]
    pub cpu: Option<String>,
    #[arg(long)]
    pub min_instances: Option<u32>,
    /// Remove an instance after it has been idle this long (e.g. 30s; Cloud Run: up to 15m).
    #[arg(long, value_name = "DURATION")]
    pub scale_to_zero_after: Option<String>,
    #[arg(long)]
    pub max_instances: Option<u32>,
    /// Replace the entrypoint: `cmd,arg,...`.
    #[arg(long)]
    pub command: Option<String>,
    /// Replace the arguments: `arg,...`.
    #[arg(long)]
    pub args: Option<String>,
    /// Speak h2c to the container end to end (names the port h2c).
    #[arg(long)]
    pub use_http2: bool,
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

async fn deploy(args: DeployArgs) -> Result<(), Exit> {
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
    let client = args.target.client().await?;
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
        Format::Table => print_result(&answer.value, &revision),
        format => control::print_document(format, &answer.value),
    }
    Ok(())
}

fn new_service(name: &str, image: &str) -> knative::Service {
    knative::Service {
        api_version: knative::API_VERSION.to_string(),
        kind: "Service".to_string(),
        metadata: knative::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: knative::ServiceSpec {
            template: knative::RevisionTemplate {
                metadata: Default::default(),
                spec: knative::RevisionSpec {
                    containers: vec![knative::Container {
                        image: image.to_string(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            },
            ..Default::default()
        },
        status: None,
    }
}

/// Changes the template as the flags say; what a flag does not mention stays.
fn apply_flags(service: &mut knative::Service, args: &DeployArgs) -> Result<(), String> {
    let template = &mut service.spec.template;
    let annotations = &mut template.metadata.annotations;
    if let (Some(min), Some(max)) = (args.min_instances, args.max_instances) {
        if min > max {
            return Err(format!(
                "--min-instances: {min} is more than --max-instances {max}"
            ));
        }
    }
    if let Some(n) = args.min_instances {
        annotations.insert(knative::ANNOTATION_MIN_SCALE.to_string(), n.to_string());
    }
    if let Some(n) = args.max_instances {
        annotations.insert(knative::ANNOTATION_MAX_SCALE.to_string(), n.to_string());
    }
    if let Some(text) = &args.scale_to_zero_after {
        let idle =
            config::parse_duration("--scale-to-zero-after", text).map_err(|e| e.to_string())?;
        annotations.insert(
            knative::ANNOTATION_IDLE_TIMEOUT.to_string(),
            format!("{}s", idle.as_secs().max(1)),
        );
    }
    let spec = &mut template.spec;
    if let Some(n) = args.concurrency {
        spec.container_concurrency = Some(n);
    }
    if let Some(t) = &args.timeout {
        let timeout = config::parse_duration("--timeout", t).map_err(|e| e.to_string())?;
        spec.timeout_seconds = Some(timeout.as_secs());
    }
    if spec.containers.is_empty() {
        spec.containers.push(knative::Container::default());
    }
    let container = &mut spec.containers[0];
    if let Some(image) = &args.image {
        container.image = image.clone();
    }
    if let Some(port) = args.port {
        match container.ports.first_mut() {
            Some(p) => p.container_port = port,
            None => container.ports.push(knative::ContainerPort {
                container_port: port,
                ..Default::default()
            }),
        }
    }
    if args.use_http2 {
        match container.ports.first_mut() {
            Some(p) => p.name = Some("h2c".to_string()),
            None => container.ports.push(knative::ContainerPort {
                container_port: cloudrun::DEFAULT_PORT,
                name: Some("h2c".to_string()),
                protocol: None,
            }),
        }
    }
    if let Some(command) = &args.command {
        container.command = Some(config::split_list(command));
    }
    if let Some(a) = &args.args {
        container.args = Some(config::split_list(a));
    }
    let limits = &mut container
        .resources
        .get_or_insert_with(Default::default)
        .limits;
    if let Some(memory) = &args.memory {
        config::parse_memory("--memory", memory).map_err(|e| e.to_string())?;
        limits.insert("memory".to_string(), memory.clone());
    }
    if let Some(cpu) = &args.cpu {
        config::parse_cpu("--cpu", cpu).map_err(|e| e.to_string())?;
        limits.insert("cpu".to_string(), cpu.clone());
    }
    if container
        .resources
        .as_ref()
        .is_some_and(|r| r.limits.is_empty() && r.extra.is_empty())
    {
        container.resources = None;
    }
    // Env: replace (set, file, clear), then remove, then update, as gcloud orders them.
    let mut replacement = None;
    if args.clear_env_vars {
        replacement = Some(Vec::new());
    }
    if let Some(path) = &args.env_vars_file {
        replacement =
            Some(config::read_env_file("--env-vars-file", path).map_err(|e| e.to_string())?);
    }
    if let Some(set) = &args.set_env_vars {
        replacement =
            Some(config::parse_env_vars("--set-env-vars", set).map_err(|e| e.to_string())?);
    }
    if let Some(pairs) = replacement {
        container.env = pairs
            .into_iter()
            .map(|(name, value)| plain_env(name, value))
            .collect();
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

fn plain_env(name: String, value: String) -> knative::EnvVar {
    knative::EnvVar {
        name,
        value: Some(value),
        value_from: None,
    }
}

fn print_result(service: &knative::Service, revision: &str) {
    let name = service.metadata.name.as_deref().unwrap_or("");
    let Some(status) = &service.status else {
        return;
    };
    let percent: u32 = status
        .traffic
        .iter()
        .filter(|t| t.revision_name.as_deref() == Some(revision))
        .filter_map(|t| t.percent)
        .sum();
    eprintln!("Service [{name}] revision [{revision}] has been deployed and is serving {percent} percent of traffic.");
    if let Some(url) = &status.url {
        eprintln!("Service URL: {url}");
    }
    for target in status
        .traffic
        .iter()
        .filter(|t| t.revision_name.as_deref() == Some(revision))
    {
        if let (Some(tag), Some(url)) = (&target.tag, &target.url) {
            eprintln!("The revision can be reached directly at {url} (tag '{tag}')");
        }
    }
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
