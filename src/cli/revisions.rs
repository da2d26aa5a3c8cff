//! `emulate revisions list | describe | delete`, against the running emulator.

use clap::Subcommand;

use super::control::{self, Format, Target};
use super::Exit;
use crate::control::knative;

#[derive(Debug, Subcommand)]
pub enum RevisionsCommand {
    /// List revisions, newest first.
    List {
        #[arg(long, value_parser = control::service_arg)]
        service: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[command(flatten)]
        target: Target,
    },
    /// Show a revision: its settings, image digest, readiness and instances.
    Describe {
        #[arg(value_parser = control::revision_arg)]
        revision: String,
        #[arg(long, value_enum, default_value_t = Format::Yaml)]
        format: Format,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a revision that serves no traffic and has no tag.
    Delete {
        #[arg(value_parser = control::revision_arg)]
        revision: String,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(command: RevisionsCommand) -> Exit {
    let result = match command {
        RevisionsCommand::List {
            service,
            format,
            target,
        } => list(service.as_deref(), format, &target).await,
        RevisionsCommand::Describe {
            revision,
            format,
            target,
        } => describe(&revision, format, &target).await,
        RevisionsCommand::Delete { revision, target } => delete(&revision, &target).await,
    };
    result.err().unwrap_or(Exit::Success)
}

async fn list(service: Option<&str>, format: Format, target: &Target) -> Result<(), Exit> {
    let revisions = target
        .client()
        .await?
        .list_revisions(service)
        .await
        .map_err(|e| control::fail(&e))?;
    if format != Format::Table {
        control::print_document(format, &revisions);
        return Ok(());
    }
    let mut rows = vec![header()];
    for revision in &revisions {
        rows.push(row(revision));
    }
    control::print_table(&rows);
    Ok(())
}

fn header() -> Vec<String> {
    [
        "REVISION",
        "READY",
        "TRAFFIC",
        "INSTANCES",
        "SERVICE",
        "DEPLOYED",
    ]
    .map(String::from)
    .to_vec()
}

fn row(revision: &knative::Revision) -> Vec<String> {
    let status = revision.status.clone().unwrap_or_default();
    let ready = control::ready_mark(&status.conditions);
    let view = status.instances.unwrap_or_default();
    let instances = view["instances"].as_array().map_or(0, Vec::len);
    vec![
        revision.metadata.name.clone().unwrap_or_default(),
        ready,
        format!("{}%", view["trafficPercent"].as_u64().unwrap_or(0)),
        instances.to_string(),
        revision
            .metadata
            .labels
            .get(knative::LABEL_SERVICE)
            .cloned()
            .unwrap_or_default(),
        revision
            .metadata
            .creation_timestamp
            .clone()
            .unwrap_or_default(),
    ]
}

async fn describe(name: &str, format: Format, target: &Target) -> Result<(), Exit> {
    let revision = target
        .client()
        .await?
        .get_revision(name)
        .await
        .map_err(|e| control::fail(&e))?;
    if format == Format::Table {
        let mut rows = vec![header()];
        rows.push(row(&revision));
        control::print_table(&rows);
    } else {
        control::print_document(format, &revision);
    }
    Ok(())
}

async fn delete(name: &str, target: &Target) -> Result<(), Exit> {
    target
        .client()
        .await?
        .delete_revision(name)
        .await
        .map_err(|e| control::fail(&e))?;
    eprintln!("Deleted revision [{name}].");
    Ok(())
}
