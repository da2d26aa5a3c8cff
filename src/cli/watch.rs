//! `emulate run --source DIR --watch`: the inner loop. Each settled change to the build
//! context rebuilds the image and deploys it as a new revision of the same service through the
//! platform, as `emulate deploy` does: traffic moves only once the new revision passes its
//! startup probe, and the old one drains and stops. A failed build or a revision that fails
//! to start leaves the previous revision serving. Each cycle ends with one line: what
//! changed, the build time, the deploy time, the new revision and whether it serves.

use std::time::Duration;

use tokio::time::Instant;

use crate::control::platform::Platform;
use crate::source::watch::Watcher;
use crate::source::Builder;

/// Watches and redeploys until the caller stops awaiting (Ctrl-C): dropping the future
/// cancels a build in progress.
pub async fn watch(platform: &Platform, mut builder: Builder, service: &str) {
    let mut watcher = match Watcher::start(builder.config()) {
        Ok(watcher) => watcher,
        Err(e) => {
            eprintln!("warning: --watch: {e}; serving without watching.");
            return std::future::pending().await;
        }
    };
    eprintln!(
        "Watching {} for changes (files left out of the build context excepted): each change is built and deployed as a new revision.",
        builder.config().dir.display()
    );
    loop {
        let changes = watcher.changes().await;
        for problem in &changes.problems {
            eprintln!("warning: watching: {problem}");
        }
        let what = format!("[watch] {} changed", changes.summary());
        let serving = serving_revision(platform, service);
        let began = Instant::now();
        let built = match builder.build().await {
            Ok(built) => built,
            Err(error) => {
                eprintln!("ERROR: {error}");
                eprintln!(
                    "{what}: build failed after {}; {serving} keeps serving.",
                    seconds(began.elapsed())
                );
                continue;
            }
        };
        let build_time = seconds(built.took);
        let mut doc = match platform.describe_service(service) {
            Ok(doc) => doc,
            Err(e) => {
                eprintln!("{what}: built in {build_time}, but not deployed: {e}");
                continue;
            }
        };
        let container = &mut doc.spec.template.spec.containers[0];
        if container.image == built.image {
            eprintln!("{what}: the build context is unchanged; {serving} keeps serving.");
            continue;
        }
        container.image = built.image.clone();
        doc.status = None;
        // The platform names the new revision (a name from a service.yaml would be taken).
        doc.spec.template.metadata.name = None;
        let deploying = Instant::now();
        match platform.apply(doc).await {
            Ok(applied) => {
                for note in &applied.notes {
                    eprintln!("note: {note}");
                }
                let deploy_time = seconds(deploying.elapsed());
                let revision = applied.created_revision.unwrap_or_else(|| serving.clone());
                let serves = match percent_of(&applied.service, &revision) {
                    Some(percent) if percent > 0 => format!("serves {percent}% of traffic"),
                    _ => "is ready, without traffic (the service's traffic is pinned)".to_string(),
                };
                eprintln!(
                    "{what}: built in {build_time}, deployed in {deploy_time}: revision {revision} {serves}."
                );
            }
            Err(error) => {
                eprintln!("ERROR: {error}");
                eprintln!(
                    "{what}: built in {build_time}, but the new revision did not start; {serving} keeps serving."
                );
            }
        }
    }
}

/// The revision serving the service now (the one with the most traffic), for the lines.
fn serving_revision(platform: &Platform, service: &str) -> String {
    let doc = platform.describe_service(service).ok();
    let name = doc.as_ref().and_then(|d| d.status.as_ref()).and_then(|s| {
        s.traffic
            .iter()
            .filter(|t| t.percent.unwrap_or(0) > 0)
            .max_by_key(|t| t.percent.unwrap_or(0))
            .and_then(|t| t.revision_name.clone())
    });
    match name {
        Some(name) => format!("revision {name}"),
        None => "the previous revision".to_string(),
    }
}

/// The percent of traffic the service's status gives `revision`.
fn percent_of(service: &crate::control::knative::Service, revision: &str) -> Option<u32> {
    let status = service.status.as_ref()?;
    let percent = status
        .traffic
        .iter()
        .filter(|t| t.revision_name.as_deref() == Some(revision))
        .map(|t| t.percent.unwrap_or(0))
        .sum();
    Some(percent)
}

fn seconds(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}
