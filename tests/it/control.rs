//! The control plane's promises: a rejected change changes nothing (records, routes,
//! containers), status says where requests go, an apply outlives the client that asked for
//! it, and a delete or shutdown stops everything, starting instances included.

use std::time::Duration;

use tokio::time::Instant;

use crate::support::*;

const API: &str = "/apis/serving.knative.dev/v1/namespaces/default/services";

/// What a rejected change must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    /// status.traffic, latestReady/latestCreated, the Ready condition, spec.
    service: serde_json::Value,
    /// (name, traffic percent, Ready) of every revision, newest first.
    revisions: Vec<(String, u64, String)>,
    /// The revision that answers the service's URL.
    routed: String,
    /// Running containers (the spare ones, created ahead of time, may come and go; a
    /// rejected change must create none, which [`assert_unchanged`] checks).
    running: Vec<String>,
}

async fn snapshot(emulator: &Emulator) -> Snapshot {
    let service = emulator.describe_service().await;
    let status = &service["status"];
    let revisions = emulator
        .revision_list()
        .await
        .iter()
        .map(|r| {
            (
                r["metadata"]["name"].as_str().unwrap().to_string(),
                r["status"]["instances"]["trafficPercent"].as_u64().unwrap(),
                r["status"]["conditions"][0]["status"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    let host = format!("{}.localhost", emulator.service);
    let mut running = running_container_ids(&emulator.service);
    running.sort();
    Snapshot {
        service: serde_json::json!({
            "traffic": status["traffic"],
            "latestReady": status["latestReadyRevisionName"],
            "latestCreated": status["latestCreatedRevisionName"],
            "ready": status["conditions"][0],
            "spec": service["spec"],
        }),
        revisions,
        routed: emulator.revision_for(&host, "/echo").await,
        running,
    }
}

/// Waits (up to 20 s) for the snapshot to equal `before`, then asserts it does: a start that
/// was refused may still be removing its container.
async fn assert_unchanged(emulator: &Emulator, before: &Snapshot, existing: &[String], case: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = snapshot(emulator).await;
        if now == *before || Instant::now() > deadline {
            assert_eq!(now, *before, "{case} changed the service");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let created: Vec<String> = containers_of(&emulator.service)
        .into_iter()
        .filter(|c| !existing.contains(c))
        .collect();
    assert!(
        created.is_empty(),
        "{case} left containers behind: {created:?}"
    );
}

/// The service's containers once every running instance has its spare (created ahead of
/// time, in the background, after a start).
async fn settled_containers(service: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = containers_of(service);
        if all.len() == 2 * running_containers_of(service) {
            return all;
        }
        assert!(Instant::now() < deadline, "spares never settled: {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The service's document as describe gives it, without status: what `replace` takes.
async fn document(emulator: &Emulator) -> serde_json::Value {
    let mut doc = emulator.describe_service().await;
    doc.as_object_mut().unwrap().remove("status");
    doc
}

/// A change of the template (so an apply would make a revision), plus `edit`.
fn changed(
    doc: &serde_json::Value,
    edit: impl FnOnce(&mut serde_json::Value),
) -> serde_json::Value {
    let mut doc = doc.clone();
    // The described template names its revision; a new one gets a new name.
    if let Some(metadata) = doc["spec"]["template"]["metadata"].as_object_mut() {
        metadata.remove("name");
    }
    doc["spec"]["template"]["spec"]["containers"][0]["env"] =
        serde_json::json!([{"name": "CHANGED", "value": "1"}]);
    edit(&mut doc);
    doc
}

async fn replace(emulator: &Emulator, doc: &serde_json::Value) -> Finished {
    // JSON is YAML.
    let file = std::env::temp_dir().join(format!(
        "{}-{:08x}.yaml",
        emulator.service,
        rand::random::<u32>()
    ));
    std::fs::write(&file, doc.to_string()).unwrap();
    let done = emulator
        .cli(&["services", "replace", file.to_str().unwrap()])
        .await;
    std::fs::remove_file(file).unwrap();
    done
}

fn api_url(emulator: &Emulator, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("http://{}{API}/{name}", emulator.admin),
        None => format!("http://{}{API}", emulator.admin),
    }
}

/// A request to the admin API with this run's token; `doc` is the JSON body, if any.
async fn send(token: &str, method: &str, url: &str, doc: Option<&serde_json::Value>) -> Reply {
    let authorization = format!("Bearer {token}");
    let mut headers = vec![("authorization", authorization.as_str())];
    if doc.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let body = doc.map(|d| d.to_string().into_bytes()).unwrap_or_default();
    request(method, url, &headers, body, false).await
}

fn assert_refused(done: &Finished, code: i32, text: &str, case: &str) {
    assert_eq!(done.status.code(), Some(code), "{case}: {}", done.stderr);
    assert!(done.stderr.contains(text), "{case}: {}", done.stderr);
}

#[tokio::test]
async fn a_rejected_change_leaves_records_routes_and_containers_as_they_were() {
    let emulator = Emulator::start(&service_name("reject"), &[testapp_image()]).await;
    let service = emulator.service.clone();
    // A second revision with a tag, so traffic and tags are not trivial.
    emulator
        .cli_ok(&[
            "deploy",
            &service,
            "--update-env-vars",
            "A=1",
            "--no-traffic",
            "--tag",
            "blue",
        ])
        .await;
    let existing = settled_containers(&service).await;
    let before = snapshot(&emulator).await;
    let good = before.routed.clone();
    let doc = document(&emulator).await;
    let ghost = format!("{service}-99999-zzz");

    // services replace: each kind of invalid document.
    let cases: Vec<(&str, serde_json::Value, i32, String)> = vec![
        (
            "traffic naming a revision that does not exist",
            changed(&doc, |d| {
                d["spec"]["traffic"] = serde_json::json!([{"revisionName": ghost, "percent": 100}])
            }),
            2,
            format!("Revision [{ghost}] could not be found."),
        ),
        (
            "traffic summing to 90",
            changed(&doc, |d| {
                d["spec"]["traffic"] = serde_json::json!([{"latestRevision": true, "percent": 90}])
            }),
            2,
            "Traffic targets sum to 90, want 100".to_string(),
        ),
        (
            "a tag used twice",
            changed(&doc, |d| {
                d["spec"]["traffic"] = serde_json::json!([
                    {"latestRevision": true, "percent": 100, "tag": "dup"},
                    {"revisionName": good, "percent": 0, "tag": "dup"},
                ])
            }),
            2,
            "tag \"dup\" is used more than once".to_string(),
        ),
        (
            "an entry with both revisionName and latestRevision",
            changed(&doc, |d| {
                d["spec"]["traffic"] = serde_json::json!([
                    {"latestRevision": true, "revisionName": good, "percent": 100},
                ])
            }),
            2,
            "spec.traffic[0]".to_string(),
        ),
        (
            "a bad template field",
            changed(&doc, |d| {
                d["spec"]["template"]["spec"]["containerConcurrency"] = serde_json::json!(5000)
            }),
            2,
            "containerConcurrency".to_string(),
        ),
        (
            "a revision name of another service",
            changed(&doc, |d| {
                d["spec"]["template"]["metadata"]["name"] = serde_json::json!("other-00001-abc")
            }),
            2,
            "spec.template.metadata.name".to_string(),
        ),
        (
            "a revision name in use",
            changed(&doc, |d| {
                d["spec"]["template"]["metadata"]["name"] = serde_json::json!(good)
            }),
            1,
            "already exists".to_string(),
        ),
    ];
    for (case, bad, code, text) in &cases {
        let done = replace(&emulator, bad).await;
        assert_refused(&done, *code, text, case);
        assert_unchanged(&emulator, &before, &existing, case).await;
    }

    // The admin API, PUT and POST, with the document.
    let (_, bad, _, text) = &cases[0];
    for (method, url) in [
        ("PUT", api_url(&emulator, Some(&service))),
        ("POST", api_url(&emulator, None)),
    ] {
        let reply = send(&emulator.admin_token(), method, &url, Some(bad)).await;
        assert_eq!(reply.status, 400, "{method}: {}", reply.body);
        assert!(
            reply.body.contains(text.as_str()),
            "{method}: {}",
            reply.body
        );
        assert_unchanged(&emulator, &before, &existing, method).await;
    }

    // update-traffic and deploy.
    let done = emulator
        .cli(&[
            "services",
            "update-traffic",
            &service,
            "--to-revisions",
            &format!("{ghost}=100"),
        ])
        .await;
    assert_refused(
        &done,
        2,
        &format!("Revision [{ghost}] could not be found."),
        "update-traffic",
    );
    assert_unchanged(&emulator, &before, &existing, "update-traffic").await;
    let blue = before.revisions[0].0.clone();
    let suffix = blue.strip_prefix(&format!("{service}-")).unwrap();
    let done = emulator
        .cli(&[
            "deploy",
            &service,
            "--update-env-vars",
            "B=2",
            "--revision-suffix",
            suffix,
        ])
        .await;
    assert_refused(&done, 1, "already exists", "deploy with a suffix in use");
    assert_unchanged(&emulator, &before, &existing, "deploy with a suffix in use").await;

    // A revision that fails its startup probe: recorded as failed (as Cloud Run records it),
    // but traffic, routes and containers stay as they were.
    let done = replace(
        &emulator,
        &changed(&doc, |d| {
            d["spec"]["template"]["spec"]["containers"][0]["env"] =
                serde_json::json!([{"name": "CRASH_AT_START", "value": "4"}])
        }),
    )
    .await;
    assert_refused(&done, 3, "Container called exit(4).", "a crashing revision");
    let after = snapshot(&emulator).await;
    assert_eq!(after.service["traffic"], before.service["traffic"]);
    assert_eq!(after.service["latestReady"], before.service["latestReady"]);
    assert_eq!(after.routed, good);
    assert_eq!(after.running, before.running);
    assert_eq!(after.revisions.len(), before.revisions.len() + 1);
    assert_eq!(after.revisions[0].1, 0);
    assert_eq!(after.revisions[0].2, "False");

    // Neither the serving revision nor the tagged one may be deleted.
    for (revision, text) in [
        (&good, "receives 100% of the traffic"),
        (&blue, "tagged 'blue'"),
    ] {
        let done = emulator.cli(&["revisions", "delete", revision]).await;
        assert_ne!(done.status.code(), Some(0), "{revision}: {}", done.stderr);
        assert!(done.stderr.contains(text), "{revision}: {}", done.stderr);
    }
    assert_eq!(
        emulator
            .revision_for(&format!("{service}.localhost"), "/echo")
            .await,
        good
    );
}

#[tokio::test]
async fn run_f_with_a_rejected_document_starts_nothing() {
    let service = service_name("runf");
    let file = service_yaml(
        &service,
        &format!("  traffic:\n  - revisionName: {service}-99999-zzz\n    percent: 100\n"),
    );
    let done = Emulator::run_to_exit(
        &service,
        &["-f", file.to_str().unwrap()],
        &[],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr.contains(&format!(
            "Revision [{service}-99999-zzz] could not be found."
        )),
        "{}",
        done.stderr
    );
    assert!(
        !done.stderr.contains("Creating revision"),
        "nothing is created: {}",
        done.stderr
    );
    assert!(containers_of(&service).is_empty());
    std::fs::remove_file(file).unwrap();
}

/// The service's document with the test app taking `delay_ms` to listen (a new template).
async fn slow_document(emulator: &Emulator, delay_ms: u32) -> serde_json::Value {
    changed(&document(emulator).await, |d| {
        d["spec"]["template"]["spec"]["containers"][0]["env"] =
            serde_json::json!([{"name": "STARTUP_DELAY_MS", "value": delay_ms.to_string()}])
    })
}

/// A PUT whose client gives up after 1 s, while the instance takes 4 s to listen.
async fn abandoned_put(emulator: &Emulator, doc: &serde_json::Value) {
    let url = api_url(emulator, Some(&emulator.service));
    let token = emulator.admin_token();
    let gave_up =
        tokio::time::timeout(Duration::from_secs(1), send(&token, "PUT", &url, Some(doc))).await;
    assert!(gave_up.is_err(), "the PUT answered within 1 s");
}

async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_abandoned_put_completes_and_a_delete_then_stops_everything() {
    let mut emulator = Emulator::start(&service_name("abandon"), &[testapp_image()]).await;
    let doc = slow_document(&emulator, 4000).await;
    abandoned_put(&emulator, &doc).await;
    // The apply goes on without its client: the new revision becomes ready and takes traffic.
    let host = format!("{}.localhost", emulator.service);
    wait_for(
        "the abandoned apply completes",
        Duration::from_secs(30),
        async || {
            let status = emulator.describe_service().await["status"].clone();
            status["conditions"][0]["status"] == "True"
                && status["latestReadyRevisionName"] == status["latestCreatedRevisionName"]
                && status["latestCreatedRevisionName"].as_str()
                    == Some(emulator.revision_for(&host, "/echo").await.as_str())
        },
    )
    .await;
    emulator
        .cli_ok(&["services", "delete", &emulator.service])
        .await;
    let service = emulator.service.clone();
    wait_for(
        "the deleted service's containers are gone",
        Duration::from_secs(30),
        async || containers_of(&service).is_empty(),
    )
    .await;
    emulator.signal("INT");
    let done = emulator.wait(Duration::from_secs(30)).await;
    assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
    assert!(containers_of(&service).is_empty());
}

#[tokio::test]
async fn a_delete_while_an_abandoned_put_starts_its_instance_removes_it() {
    let mut emulator = Emulator::start(&service_name("delstart"), &[testapp_image()]).await;
    let service = emulator.service.clone();
    let doc = slow_document(&emulator, 4000).await;
    abandoned_put(&emulator, &doc).await;
    // Deleted while the new instance is still starting.
    emulator.cli_ok(&["services", "delete", &service]).await;
    wait_for(
        "the deleted service's containers are gone",
        Duration::from_secs(30),
        async || containers_of(&service).is_empty(),
    )
    .await;
    // Nothing comes back once the start would have finished.
    let reply = send(
        &emulator.admin_token(),
        "GET",
        &api_url(&emulator, Some(&service)),
        None,
    )
    .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            assert!(containers_of(&service).is_empty(), "a container came back");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .unwrap_err();
    emulator.signal("INT");
    let done = emulator.wait(Duration::from_secs(30)).await;
    assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
}

#[tokio::test]
async fn ctrl_c_while_an_abandoned_put_starts_its_instance_leaves_nothing() {
    let mut emulator = Emulator::start(&service_name("intstart"), &[testapp_image()]).await;
    let service = emulator.service.clone();
    let doc = slow_document(&emulator, 4000).await;
    abandoned_put(&emulator, &doc).await;
    emulator.signal("INT");
    let done = emulator.wait(Duration::from_secs(30)).await;
    assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
    assert!(
        containers_of(&service).is_empty(),
        "left behind: {:?}",
        containers_of(&service)
    );
}

#[tokio::test]
async fn a_put_racing_a_delete_does_not_answer_ready_for_a_deleted_service() {
    let emulator = Emulator::start(&service_name("race"), &[testapp_image()]).await;
    let service = emulator.service.clone();
    let doc = slow_document(&emulator, 3000).await;
    let url = api_url(&emulator, Some(&service));
    let token = emulator.admin_token();
    let put = {
        let token = token.clone();
        tokio::spawn(async move { send(&token, "PUT", &url, Some(&doc)).await })
    };
    // The DELETE comes while the PUT's instance starts: the emulator has said so. (Counting
    // containers would not tell: the spare container made ahead of time counts too.)
    let second = format!("{service}-00002-");
    wait_for(
        "the PUT starts an instance",
        Duration::from_secs(20),
        async || {
            emulator
                .stdout()
                .lines()
                .any(|l| l.starts_with(&second) && l.contains("Starting new instance"))
        },
    )
    .await;
    let delete = send(&token, "DELETE", &api_url(&emulator, Some(&service)), None).await;
    assert_eq!(delete.status, 200, "{}", delete.body);
    let put = put.await.unwrap();
    assert_eq!(put.status, 409, "{}", put.body);
    assert!(put.body.contains("was deleted"), "{}", put.body);
    let reply = send(
        &emulator.admin_token(),
        "GET",
        &api_url(&emulator, Some(&service)),
        None,
    )
    .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    wait_for(
        "the deleted service's containers are gone",
        Duration::from_secs(30),
        async || containers_of(&service).is_empty(),
    )
    .await;
}
