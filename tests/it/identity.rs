//! Private services (`--no-allow-unauthenticated`) and the ID tokens that open them:
//! `emulate auth print-identity-token` and the metadata server's `identity`.

use crate::support::*;

/// The service URL the tokens name: `http://SERVICE.localhost:PORT`.
fn service_url(emulator: &Emulator, service: &str) -> String {
    format!(
        "http://{service}.localhost:{}",
        emulator.url("").rsplit(':').next().unwrap()
    )
}

async fn call(emulator: &Emulator, service: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let host = service_url(emulator, service);
    let host = host.trim_start_matches("http://").to_string();
    let mut all = vec![("host", host.as_str())];
    all.extend_from_slice(headers);
    request("GET", &emulator.url(path), &all, Vec::new(), false).await
}

async fn print_token(emulator: &Emulator, audience: &str) -> String {
    let done = emulator
        .cli_ok(&["auth", "print-identity-token", "--audiences", audience])
        .await;
    done.stdout.trim().to_string()
}

#[tokio::test]
async fn a_private_service_wants_an_id_token_for_its_url() {
    let service = service_name("private");
    let emulator =
        Emulator::start(&service, &[testapp_image(), "--no-allow-unauthenticated"]).await;
    let url = service_url(&emulator, &service);

    // Anonymous: Cloud Run's 403 page, and the app never sees the request.
    let anonymous = call(&emulator, &service, "/echo", &[]).await;
    assert_eq!(anonymous.status, 403, "{}", anonymous.body);
    assert!(
        anonymous.body.contains(
            "<h2>Your client does not have permission to get URL <code>/echo</code> from this server.</h2>"
        ),
        "{}",
        anonymous.body
    );
    assert_eq!(anonymous.revision, "");

    // A token for the service URL (with or without a trailing slash): served, and the app gets
    // the header with the token's signature replaced, as Cloud Run forwards it.
    for audience in [url.clone(), format!("{url}/")] {
        let token = print_token(&emulator, &audience).await;
        let bearer = format!("Bearer {token}");
        let served = call(&emulator, &service, "/echo", &[("authorization", &bearer)]).await;
        assert_eq!(served.status, 200, "{audience}: {}", served.body);
        let seen = served.json()["headers"]["authorization"][0]
            .as_str()
            .unwrap()
            .to_string();
        let (signed, _) = bearer.rsplit_once('.').unwrap();
        assert_eq!(seen, format!("{signed}.SIGNATURE_REMOVED_BY_GOOGLE"));
    }

    // X-Serverless-Authorization is checked instead, and Authorization left to the app.
    let token = print_token(&emulator, &url).await;
    let served = call(
        &emulator,
        &service,
        "/echo",
        &[
            ("x-serverless-authorization", &format!("Bearer {token}")),
            ("authorization", "Bearer the-apps-own"),
        ],
    )
    .await;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(
        served.json()["headers"]["authorization"][0],
        "Bearer the-apps-own"
    );

    // Another service's audience, a forged signature, garbage: Cloud Run's 401 page.
    let other = print_token(&emulator, "http://other.localhost:8080").await;
    let (signed, _) = token.rsplit_once('.').unwrap();
    let (_, other_signature) = other.rsplit_once('.').unwrap();
    let forged = format!("{signed}.{other_signature}");
    for bad in [other.as_str(), forged.as_str(), "not-a-token"] {
        let refused = call(
            &emulator,
            &service,
            "/echo",
            &[("authorization", &format!("Bearer {bad}"))],
        )
        .await;
        assert_eq!(refused.status, 401, "{bad}: {}", refused.body);
        assert!(
            refused.body.contains(
                "<h2>Your client does not have permission to the requested URL <code>/echo</code>.</h2>"
            ),
            "{}",
            refused.body
        );
    }
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    // A token issued two hours ago, signed with the tests' key (the state directory every
    // emulator of the tests shares).
    let service = service_name("private-exp");
    let emulator =
        Emulator::start(&service, &[testapp_image(), "--no-allow-unauthenticated"]).await;
    let url = service_url(&emulator, &service);
    let dir = std::env::temp_dir().join("emulate-test-state");
    let key = emulate::metadata::IdentityKey::load_or_create(&dir).unwrap();
    let now = unix_now();
    let expired = key.id_token("a@b.c", "1", &url, now - 7200, None);
    let fresh = key.id_token("a@b.c", "1", &url, now, None);
    let refused = call(
        &emulator,
        &service,
        "/",
        &[("authorization", &format!("Bearer {expired}"))],
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    let served = call(
        &emulator,
        &service,
        "/",
        &[("authorization", &format!("Bearer {fresh}"))],
    )
    .await;
    assert_eq!(served.status, 200, "{}", served.body);
}

#[tokio::test]
async fn a_token_from_the_metadata_server_opens_a_private_service() {
    let service = service_name("private-md");
    let emulator =
        Emulator::start(&service, &[testapp_image(), "--no-allow-unauthenticated"]).await;
    let url = service_url(&emulator, &service);
    // The app asks its metadata server for a token (the request itself needs one too).
    let token = print_token(&emulator, &url).await;
    let bearer = format!("Bearer {token}");
    let path = format!(
        "/metadata?path=/computeMetadata/v1/instance/service-accounts/default/identity?audience={url}"
    );
    let reply = call(&emulator, &service, &path, &[("authorization", &bearer)]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (head, from_container) = reply.body.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let served = call(
        &emulator,
        &service,
        "/",
        &[(
            "authorization",
            &format!("Bearer {}", from_container.trim()),
        )],
    )
    .await;
    assert_eq!(served.status, 200, "{}", served.body);
}

#[tokio::test]
async fn a_public_service_needs_no_token_and_deploy_can_make_it_private() {
    let service = service_name("public");
    let emulator = Emulator::start(&service, &[testapp_image()]).await;
    assert_eq!(call(&emulator, &service, "/", &[]).await.status, 200);
    emulator
        .cli_ok(&["deploy", &service, "--no-allow-unauthenticated"])
        .await;
    assert_eq!(call(&emulator, &service, "/", &[]).await.status, 403);
    emulator
        .cli_ok(&["deploy", &service, "--allow-unauthenticated"])
        .await;
    assert_eq!(call(&emulator, &service, "/", &[]).await.status, 200);
}

/// service.yaml says it with Cloud Run's own annotations: `invoker-iam-disabled: "false"`
/// makes the service private, `custom-audiences` adds audiences; a tag URL is one too.
#[tokio::test]
async fn service_yaml_makes_a_service_private_with_custom_audiences_and_tags() {
    let service = service_name("private-yaml");
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {service}\n  annotations:\n    run.googleapis.com/invoker-iam-disabled: 'false'\n    run.googleapis.com/custom-audiences: '[\"https://api.example.com\"]'\nspec:\n  template:\n    spec:\n      containers:\n      - image: {}\n  traffic:\n  - latestRevision: true\n    percent: 100\n    tag: green\n",
        testapp_image()
    );
    let file = std::env::temp_dir().join(format!("{service}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let emulator = Emulator::start(&service, &["-f", file.to_str().unwrap()]).await;
    assert_eq!(call(&emulator, &service, "/", &[]).await.status, 403);
    let port = emulator.url("").rsplit(':').next().unwrap().to_string();
    for audience in [
        "https://api.example.com".to_string(),
        format!("http://green---{service}.localhost:{port}"),
    ] {
        let token = print_token(&emulator, &audience).await;
        let reply = call(
            &emulator,
            &service,
            "/",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(reply.status, 200, "{audience}: {}", reply.body);
    }
    std::fs::remove_file(file).unwrap();
}

/// `emulate smoke` can check that a private service refuses anonymous requests.
#[tokio::test]
async fn smoke_checks_that_a_private_service_refuses_anonymous_requests() {
    let service = service_name("private-smoke");
    let output = tokio::task::spawn_blocking(move || {
        emulate_command()
            .args([
                "smoke",
                testapp_image(),
                "--service",
                &service,
                "--no-allow-unauthenticated",
            ])
            .args(["--request", "GET /echo", "--expect-status", "403"])
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("PASS GET /echo"), "{stdout}");
}

/// A bad access annotation in service.yaml is refused naming it, exit 2, nothing started.
#[tokio::test]
async fn a_bad_custom_audiences_annotation_is_refused() {
    let service = service_name("private-bad");
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {service}\n  annotations:\n    run.googleapis.com/custom-audiences: 'https://api.example.com'\nspec:\n  template:\n    spec:\n      containers:\n      - image: {}\n",
        testapp_image()
    );
    let file = std::env::temp_dir().join(format!("{service}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let done = Emulator::run_to_exit(
        &service,
        &["-f", file.to_str().unwrap()],
        &[],
        std::time::Duration::from_secs(30),
    )
    .await;
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr
            .contains("metadata.annotations[run.googleapis.com/custom-audiences]"),
        "{}",
        done.stderr
    );
    assert!(containers_of(&service).is_empty());
    std::fs::remove_file(file).unwrap();
}
