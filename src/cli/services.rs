//! `emulate services list | describe | delete | replace | update-traffic`, with gcloud's
//! names, flags and messages, against the running emulator.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::control::{self, Format, Target};
use super::Exit;
use crate::control::knative;
use crate::control::traffic::{self, TagUpdate, TargetKey};

#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// List the services.
    List {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[command(flatten)]
        target: Target,
    },
    /// Show a service: its URL, traffic and latest revision (or the whole document).
    Describe {
        #[arg(value_parser = control::service_arg)]
        service: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a service; its revisions are drained and stopped.
    Delete {
        #[arg(value_parser = control::service_arg)]
        service: String,
        #[command(flatten)]
        target: Target,
    },
    /// Create or replace a service from a service.yaml, as `gcloud run services replace`.
    Replace {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[command(flatten)]
        target: Target,
    },
    /// Move traffic between revisions and manage tags.
    UpdateTraffic(UpdateTrafficArgs),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("percentages").multiple(false))]
pub struct UpdateTrafficArgs {
    #[arg(value_parser = control::service_arg)]
    pub service: String,
    /// `REVISION=PERCENT,...` (LATEST names the latest ready revision).
    #[arg(long, group = "percentages", value_name = "REVISION=PERCENT,...")]
    pub to_revisions: Option<String>,
    /// Send all traffic to the latest ready revision, now and after every deploy.
    #[arg(long, group = "percentages")]
    pub to_latest: bool,
    /// `TAG=PERCENT,...`: traffic to tagged revisions.
    #[arg(long, group = "percentages", value_name = "TAG=PERCENT,...")]
    pub to_tags: Option<String>,
    /// Replace all tags: `TAG=REVISION,...`.
    #[arg(long, value_name = "TAG=REVISION,...", conflicts_with = "clear_tags")]
    pub set_tags: Option<String>,
    /// Add or move tags: `TAG=REVISION,...`.
    #[arg(long, value_name = "TAG=REVISION,...")]
    pub update_tags: Option<String>,
    /// Remove tags: `TAG,...`.
    #[arg(long, value_name = "TAG,...")]
    pub remove_tags: Option<String>,
    /// Remove all tags.
    #[arg(long)]
    pub clear_tags: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(flatten)]
    pub target: Target,
}

pub async fn run(command: ServicesCommand) -> Exit {
    let result = match command {
        ServicesCommand::List { format, target } => list(format, &target).await,
        ServicesCommand::Describe {
            service,
            format,
            target,
        } => describe(&service, format, &target).await,
        ServicesCommand::Delete { service, target } => delete(&service, &target).await,
        ServicesCommand::Replace {
            file,
            format,
            target,
        } => replace(&file, format, &target).await,
        ServicesCommand::UpdateTraffic(args) => update_traffic(args).await,
    };
    result.err().unwrap_or(Exit::Success)
}

async fn list(format: Format, target: &Target) -> Result<(), Exit> {
    let services = target
        .client()
        .await?
        .list_services()
        .await
        .map_err(|e| control::fail(&e))?;
    if format != Format::Table {
        control::print_document(format, &services);
        return Ok(());
    }
    let mut rows = vec![vec!["SERVICE", "READY", "URL", "LATEST READY", "TRAFFIC"]
        .into_iter()
        .map(String::from)
        .collect()];
    for service in &services {
        let status = service.status.clone().unwrap_or_default();
        rows.push(vec![
            service.metadata.name.clone().unwrap_or_default(),
            control::ready_mark(&status.conditions),
            status.url.clone().unwrap_or_default(),
            status
                .latest_ready_revision_name
                .clone()
                .unwrap_or_else(|| "-".to_string()),
            traffic_summary(&status.traffic),
        ]);
    }
    control::print_table(&rows);
    Ok(())
}

fn traffic_summary(traffic: &[knative::TrafficTarget]) -> String {
    traffic
        .iter()
        .filter(|t| t.percent.unwrap_or(0) > 0)
        .map(|t| {
            format!(
                "{}% {}",
                t.percent.unwrap_or(0),
                t.revision_name.as_deref().unwrap_or("LATEST")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn get(
    target: &Target,
    name: &str,
) -> Result<(crate::admin::client::AdminClient, knative::Service), Exit> {
    let client = target.client().await?;
    match client.get_service(name).await {
        Ok(Some(service)) => Ok((client, service)),
        Ok(None) => {
            eprintln!("ERROR: Service [{name}] could not be found.");
            Err(Exit::Failure)
        }
        Err(e) => Err(control::fail(&e)),
    }
}

async fn describe(name: &str, format: Format, target: &Target) -> Result<(), Exit> {
    let (_, service) = get(target, name).await?;
    if format != Format::Table {
        control::print_document(format, &service);
        return Ok(());
    }
    let status = service.status.clone().unwrap_or_default();
    println!(
        "{} Service {name} (emulated)",
        control::ready_mark(&status.conditions)
    );
    println!("URL:     {}", status.url.as_deref().unwrap_or("-"));
    if let Some(failed) = status
        .conditions
        .iter()
        .find(|c| c.status == "False" && c.message.is_some())
    {
        println!(
            "Not ready ({}): {}",
            failed.reason.as_deref().unwrap_or(""),
            failed.message.as_deref().unwrap_or("")
        );
    }
    println!();
    print_traffic(&status.traffic);
    let template = &service.spec.template;
    if let Some(container) = template.spec.containers.first() {
        println!();
        println!(
            "Latest revision: {}",
            status
                .latest_created_revision_name
                .as_deref()
                .unwrap_or("-")
        );
        println!("  Image:         {}", container.image);
        let port = container.ports.first();
        println!(
            "  Port:          {}{}",
            port.map_or(8080, |p| p.container_port),
            if port.and_then(|p| p.name.as_deref()) == Some("h2c") {
                " (h2c)"
            } else {
                ""
            }
        );
        let limits = container
            .resources
            .as_ref()
            .map(|r| r.limits.clone())
            .unwrap_or_default();
        println!(
            "  Memory:        {}   CPU: {}",
            limits.get("memory").map_or("512Mi", String::as_str),
            limits.get("cpu").map_or("1", String::as_str)
        );
        println!(
            "  Concurrency:   {}   Timeout: {}s",
            template.spec.container_concurrency.unwrap_or(80),
            template.spec.timeout_seconds.unwrap_or(300)
        );
        let annotation = |key: &str, default: &str| {
            template
                .metadata
                .annotations
                .get(key)
                .cloned()
                .unwrap_or_else(|| default.to_string())
        };
        println!(
            "  Min/Max:       {} / {}",
            annotation(knative::ANNOTATION_MIN_SCALE, "0"),
            annotation(knative::ANNOTATION_MAX_SCALE, "100")
        );
        for env in &container.env {
            let value = match (&env.value, &env.value_from) {
                (_, Some(from)) => from
                    .secret_key_ref
                    .as_ref()
                    .map(|s| format!("secret {}:{}", s.name, s.key))
                    .unwrap_or_default(),
                (Some(v), None) => v.clone(),
                (None, None) => String::new(),
            };
            println!("  Env:           {}={value}", env.name);
        }
    }
    Ok(())
}

fn print_traffic(traffic: &[knative::TrafficTarget]) {
    println!("Traffic:");
    for t in traffic {
        let revision = match (t.latest_revision, &t.revision_name) {
            (Some(true), Some(name)) => format!("LATEST (currently {name})"),
            (Some(true), None) => "LATEST (no ready revision)".to_string(),
            (_, Some(name)) => name.clone(),
            _ => "-".to_string(),
        };
        let tag = match (&t.tag, &t.url) {
            (Some(tag), Some(url)) => format!("  {tag}: {url}"),
            (Some(tag), None) => format!("  {tag}"),
            _ => String::new(),
        };
        println!("  {:>3}% {revision}{tag}", t.percent.unwrap_or(0));
    }
}

async fn delete(name: &str, target: &Target) -> Result<(), Exit> {
    let client = target.client().await?;
    client
        .delete_service(name)
        .await
        .map_err(|e| control::fail(&e))?;
    eprintln!("Deleted service [{name}].");
    Ok(())
}

async fn replace(file: &std::path::Path, format: Format, target: &Target) -> Result<(), Exit> {
    // Checked here first, so a bad file never reaches (or changes) the emulator.
    let service = super::documents::read_service_file(file).map_err(|message| {
        eprintln!("ERROR: {message}");
        Exit::Usage
    })?;
    let name = service.metadata.name.clone().unwrap_or_default();
    let client = target.client().await?;
    eprintln!("Applying new configuration to Cloud Run service [{name}] (emulated)");
    let answer = client
        .put_service(&service)
        .await
        .map_err(|e| control::fail(&e))?;
    control::print_notes(&answer.notes);
    match format {
        Format::Table => super::documents::print_deployed(&answer.value, None),
        format => control::print_document(format, &answer.value),
    }
    Ok(())
}

fn usage(message: impl std::fmt::Display) -> Exit {
    eprintln!("ERROR: {message}");
    Exit::Usage
}

/// `TAG=REVISION,...` pairs (LATEST allowed).
fn tag_pairs(flag: &str, text: &str) -> Result<Vec<(String, TargetKey)>, Exit> {
    crate::config::split_list(text)
        .into_iter()
        .map(|item| {
            let (tag, revision) = item
                .split_once('=')
                .filter(|(t, r)| !t.is_empty() && !r.is_empty())
                .ok_or_else(|| {
                    usage(format!("{flag}: '{item}' is not of the form TAG=REVISION"))
                })?;
            traffic::validate_tag(tag).map_err(|e| usage(format!("{flag}: {e}")))?;
            Ok((tag.to_string(), TargetKey::parse(revision)))
        })
        .collect()
}

async fn update_traffic(args: UpdateTrafficArgs) -> Result<(), Exit> {
    let tags = TagUpdate {
        set: args
            .set_tags
            .as_deref()
            .map(|t| tag_pairs("--set-tags", t))
            .transpose()?,
        update: args
            .update_tags
            .as_deref()
            .map(|t| tag_pairs("--update-tags", t))
            .transpose()?
            .unwrap_or_default(),
        remove: args
            .remove_tags
            .as_deref()
            .map(crate::config::split_list)
            .unwrap_or_default(),
        clear: args.clear_tags,
    };
    let no_change = tags == TagUpdate::default()
        && args.to_revisions.is_none()
        && !args.to_latest
        && args.to_tags.is_none();
    if no_change {
        return Err(usage("give at least one of --to-revisions, --to-latest, --to-tags, --set-tags, --update-tags, --remove-tags, --clear-tags"));
    }
    let (client, mut service) = get(&args.target, &args.service).await?;
    let current = knative::traffic_from_doc(&service.spec.traffic)
        .map_err(usage)?
        .map(|t| traffic::normalize(&t))
        .unwrap_or_default();
    // Tags first: --to-tags names tags as they are after this command's tag changes.
    let tagged = traffic::update(&current, &tags, None).map_err(usage)?;
    let percentages: Option<Vec<(TargetKey, u32)>> = if args.to_latest {
        Some(vec![(TargetKey::Latest, 100)])
    } else if let Some(text) = &args.to_revisions {
        let pairs = traffic::parse_percentages("--to-revisions", text)
            .map_err(|e| usage(traffic::flag_error("--to-revisions", &e)))?;
        Some(
            pairs
                .into_iter()
                .map(|(k, p)| (TargetKey::parse(&k), p))
                .collect(),
        )
    } else if let Some(text) = &args.to_tags {
        let pairs = traffic::parse_percentages("--to-tags", text)
            .map_err(|e| usage(traffic::flag_error("--to-tags", &e)))?;
        let mut resolved = Vec::new();
        for (tag, percent) in pairs {
            let key = tagged
                .iter()
                .find(|t| t.tag.as_deref() == Some(tag.as_str()))
                .map(|t| t.key.clone())
                .ok_or_else(|| {
                    usage(format!(
                        "--to-tags: there is no tag '{tag}' on service [{}]",
                        args.service
                    ))
                })?;
            resolved.push((key, percent));
        }
        Some(resolved)
    } else {
        None
    };
    let updated = traffic::update(&current, &tags, percentages.as_deref()).map_err(usage)?;
    service.spec.traffic = knative::traffic_to_doc(&updated);
    service.status = None;
    eprintln!(
        "Updating traffic of Cloud Run service [{}] (emulated)",
        args.service
    );
    let answer = client
        .put_service(&service)
        .await
        .map_err(|e| control::fail(&e))?;
    match args.format {
        Format::Table => {
            let status = answer.value.status.clone().unwrap_or_default();
            eprintln!("Traffic of service [{}] updated.", args.service);
            print_traffic(&status.traffic);
        }
        format => control::print_document(format, &answer.value),
    }
    Ok(())
}
