//! Service-to-service calls: from inside any instance, every service and tag of the emulator
//! answers at the URL `services describe` shows (`http://SERVICE.localhost:PORT`), services
//! deployed later included; a private one wants an identity token from the metadata server;
//! `host.docker.internal` is the host.

use crate::support::*;

fn port(emulator: &Emulator) -> String {
    emulator.url("").rsplit(':').next().unwrap().to_string()
}

/// What the caller's instance got for `GET url` (its `/call` route), as the raw response.
async fn call_from(emulator: &Emulator, caller: &str, url: &str, extra: &str) -> String {
    let path = format!(
        "/call?url={}{extra}",
        url.replace(':', "%3A").replace('/', "%2F")
    );
    let host = format!("{caller}.localhost:{}", port(emulator));
    let reply = request(
        "GET",
        &emulator.url(&path),
        &[("host", host.as_str())],
        Vec::new(),
        false,
    )
    .await;
    assert_eq!(
        reply.status, 200,
        "the caller's /call failed: {}",
        reply.body
    );
    reply.body
}

/// The status of a raw HTTP/1.1 response.
fn status_of(raw: &str) -> &str {
    raw.split(' ').nth(1).unwrap_or("")
}

/// A header of a raw response (lower-case name).
fn header_of<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let head = raw.split("\r\n\r\n").next()?;
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.eq_ignore_ascii_case(name)).then(|| value.trim())
    })
}

/// A service's latest ready revision, from `services describe`.
async fn latest_ready(emulator: &Emulator, service: &str) -> String {
    let done = emulator
        .cli_ok(&["services", "describe", service, "--format", "json"])
        .await;
    let doc: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
    doc["status"]["latestReadyRevisionName"]
        .as_str()
        .expect("a ready revision")
        .to_string()
}

fn yaml_file(name: &str, annotations: &str) -> std::path::PathBuf {
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  annotations:\n{annotations}    run.googleapis.com/ingress: all\nspec:\n  template:\n    spec:\n      containers:\n      - image: {}\n",
        testapp_image()
    );
    let file = std::env::temp_dir().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    file
}

/// The whole pattern under `emulate run -f a.yaml -f b.yaml`: `a` (started first, so
/// before `b` existed) reads its project from the metadata server and calls the private `b`
/// by its URL, with a token for it from the metadata server; without the token `b` refuses.
#[tokio::test]
async fn a_service_calls_a_private_service_by_its_url_with_a_token_from_the_metadata_server() {
    let a = service_name("caller");
    let b = format!("{a}-private");
    let a_file = yaml_file(&a, "");
    let b_file = yaml_file(&b, "    run.googleapis.com/invoker-iam-disabled: 'false'\n");
    let emulator = Emulator::start_with_env(
        &a,
        &[
            "-f",
            a_file.to_str().unwrap(),
            "-f",
            b_file.to_str().unwrap(),
        ],
        &[("GOOGLE_CLOUD_PROJECT", "calls-project")],
    )
    .await;
    let b_url = format!("http://{b}.localhost:{}", port(&emulator));
    let b_revision = latest_ready(&emulator, &b).await;

    // The project, as the app reads it.
    let host = format!("{a}.localhost:{}", port(&emulator));
    let project = request(
        "GET",
        &emulator.url("/metadata?path=/computeMetadata/v1/project/project-id"),
        &[("host", host.as_str())],
        Vec::new(),
        false,
    )
    .await;
    assert!(project.body.ends_with("calls-project"), "{}", project.body);

    // Anonymous: Cloud Run's 403, from the emulator, not b.
    let anonymous = call_from(&emulator, &a, &format!("{b_url}/echo"), "").await;
    assert_eq!(status_of(&anonymous), "403", "{anonymous}");
    assert_eq!(header_of(&anonymous, "x-k-revision"), None, "{anonymous}");

    // With a token for b's URL, in either header: b's revision answers.
    for header in ["Authorization", "X-Serverless-Authorization"] {
        let extra = format!(
            "&audience={}&header={header}",
            b_url.replace(':', "%3A").replace('/', "%2F")
        );
        let served = call_from(&emulator, &a, &format!("{b_url}/echo"), &extra).await;
        assert_eq!(status_of(&served), "200", "{header}: {served}");
        assert_eq!(
            header_of(&served, "x-k-revision"),
            Some(b_revision.as_str()),
            "{served}"
        );
    }

    // A token for another audience is refused (401).
    let wrong = call_from(
        &emulator,
        &a,
        &format!("{b_url}/echo"),
        "&audience=https%3A%2F%2Fsomewhere.example.com",
    )
    .await;
    assert_eq!(status_of(&wrong), "401", "{wrong}");
    for file in [a_file, b_file] {
        std::fs::remove_file(file).unwrap();
    }
}

/// A service deployed after the caller's instance started, and a tag set later still, are
/// reachable from it at their URLs; an unknown service gets Cloud Run's 404; the host is
/// `host.docker.internal` (here the emulator's own front end, which serves the only service
/// for a host it does not know).
#[tokio::test]
async fn services_and_tags_deployed_later_and_the_host_are_reachable_from_an_instance() {
    let a = service_name("early");
    let emulator = Emulator::start(&a, &[testapp_image()]).await;
    let port = port(&emulator);
    let a_containers = started_containers_of(&a);

    let host_url = format!("http://host.docker.internal:{port}/echo");
    let via_host = call_from(&emulator, &a, &host_url, "").await;
    assert_eq!(status_of(&via_host), "200", "{via_host}");

    let late = format!("{a}-late");
    emulator
        .cli_ok(&["deploy", &late, "--image", testapp_image()])
        .await;
    let late_revision = latest_ready(&emulator, &late).await;
    emulator
        .cli_ok(&[
            "services",
            "update-traffic",
            &late,
            "--update-tags",
            &format!("blue={late_revision}"),
        ])
        .await;

    for url in [
        format!("http://{late}.localhost:{port}/echo"),
        format!("http://blue---{late}.localhost:{port}/echo"),
    ] {
        let served = call_from(&emulator, &a, &url, "").await;
        assert_eq!(status_of(&served), "200", "{url}: {served}");
        assert_eq!(
            header_of(&served, "x-k-revision"),
            Some(late_revision.as_str()),
            "{url}: {served}"
        );
    }
    let unknown = call_from(
        &emulator,
        &a,
        &format!("http://nothing-{late}.localhost:{port}/"),
        "",
    )
    .await;
    assert_eq!(status_of(&unknown), "404", "{unknown}");
    // The same instance made every call: the caller was started before `late` existed.
    assert_eq!(started_containers_of(&a), a_containers);
}
