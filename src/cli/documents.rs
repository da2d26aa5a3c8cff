//! Service documents on the command line: reading service.yaml files (`run -f`, `smoke -f`,
//! `services replace`) and gcloud's summary of a deploy.

use std::path::{Path, PathBuf};

use super::Exit;
use crate::control::knative;

/// Reads and checks the `-f` service files, naming the file and field of any error, and a
/// service that two files both define (exit 2).
pub fn read_service_files(paths: &[PathBuf]) -> Result<Vec<knative::Service>, Exit> {
    let usage = |message: String| {
        eprintln!("error: -f: {message}");
        Exit::Usage
    };
    let mut documents: Vec<(&PathBuf, knative::Service)> = Vec::new();
    for path in paths {
        let document = read_service_file(path).map_err(usage)?;
        let name = document.metadata.name.as_deref();
        if let Some((first, _)) = documents
            .iter()
            .find(|(_, d)| name.is_some() && d.metadata.name.as_deref() == name)
        {
            return Err(usage(format!(
                "{} and {} both define service '{}'; give each service one file",
                first.display(),
                path.display(),
                name.unwrap_or_default()
            )));
        }
        documents.push((path, document));
    }
    Ok(documents.into_iter().map(|(_, d)| d).collect())
}

/// Reads a service.yaml, naming the file and the field of any error; the names it gives
/// are checked too, so a bad file never reaches the emulator.
pub fn read_service_file(path: &Path) -> Result<knative::Service, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let service =
        knative::parse_service_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    knative::validate_names(&service).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(service)
}

/// gcloud's closing lines of a deploy, for `revision` (the one a deploy created, with its
/// tags) or, without one, for the latest ready revision of a whole document applied (with
/// every tag).
pub fn print_deployed(service: &knative::Service, revision: Option<&str>) {
    let name = service.metadata.name.as_deref().unwrap_or("");
    let Some(status) = &service.status else {
        return;
    };
    let shown = revision
        .or(status.latest_ready_revision_name.as_deref())
        .unwrap_or("(none)");
    let percent: u32 = status
        .traffic
        .iter()
        .filter(|t| t.revision_name.as_deref() == Some(shown))
        .filter_map(|t| t.percent)
        .sum();
    eprintln!("Service [{name}] revision [{shown}] has been deployed and is serving {percent} percent of traffic.");
    if let Some(url) = &status.url {
        eprintln!("Service URL: {url}");
    }
    for target in status
        .traffic
        .iter()
        .filter(|t| revision.is_none() || t.revision_name.as_deref() == revision)
    {
        if let (Some(tag), Some(url)) = (&target.tag, &target.url) {
            eprintln!("The revision can be reached directly at {url} (tag '{tag}')");
        }
    }
}
