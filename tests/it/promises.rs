//! What the README promises and no other test covered: `--command`/`--args`,
//! `--clear-env-vars`, secrets from the environment, the tag verbs, `--format yaml|table`, a
//! gRPC startup probe, and a revision that can no longer start (its 503 and its back-off).

use std::time::{Duration, Instant};

use crate::support::*;

fn host(emulator: &Emulator) -> String {
    format!("{}.localhost", emulator.service)
}

/// The test app's `/echo` report of the instance that answers plain localhost.
async fn echo(emulator: &Emulator) -> serde_json::Value {
    let reply = get(&emulator.url("/echo")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// The service's tags as (tag, revision), sorted by tag.
async fn tags(emulator: &Emulator) -> Vec<(String, String)> {
    let service = emulator.describe_service().await;
    let mut tags: Vec<(String, String)> = service["spec"]["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| {
            Some((
                t["tag"].as_str()?.to_string(),
                t["revisionName"].as_str().unwrap_or("").to_string(),
            ))
        })
        .collect();
    tags.sort();
    tags
}

/// The percent of traffic each revision gets (summed over its targets), by revision name.
async fn percents(emulator: &Emulator) -> std::collections::BTreeMap<String, u64> {
    let service = emulator.describe_service().await;
    let mut percents = std::collections::BTreeMap::new();
    for target in service["spec"]["traffic"].as_array().unwrap() {
        let revision = target["revisionName"]
            .as_str()
            .unwrap_or("LATEST")
            .to_string();
        *percents.entry(revision).or_insert(0) += target["percent"].as_u64().unwrap_or(0);
    }
    percents.retain(|_, percent| *percent > 0);
    percents
}

#[tokio::test]
async fn command_and_args_replace_the_images_entrypoint_and_arguments() {
    let emulator = Emulator::start(
        &service_name("cmdargs"),
        &[
            testapp_image(),
            "--command",
            "/testapp",
            "--args",
            "first,second",
        ],
    )
    .await;
    let report = echo(&emulator).await;
    assert_eq!(
        report["args"],
        serde_json::json!(["/testapp", "first", "second"])
    );
}

#[tokio::test]
async fn clear_env_vars_makes_a_revision_without_the_users_variables() {
    let emulator = Emulator::start(
        &service_name("clearenv"),
        &[testapp_image(), "--set-env-vars", "KEEP=1,ALSO=2"],
    )
    .await;
    let env = &echo(&emulator).await["env"];
    assert_eq!(
        (env["KEEP"].as_str(), env["ALSO"].as_str()),
        (Some("1"), Some("2"))
    );
    emulator
        .cli_ok(&["deploy", &emulator.service, "--clear-env-vars"])
        .await;
    let env = &echo(&emulator).await["env"];
    assert!(
        env.get("KEEP").is_none() && env.get("ALSO").is_none(),
        "{env}"
    );
    // Cloud Run's own variables are not the user's to clear.
    assert_eq!(env["K_SERVICE"], emulator.service.as_str());
    assert_eq!(env["PORT"], "8080");
}

#[tokio::test]
async fn a_secret_is_read_from_the_emulate_secret_variable() {
    let service = service_name("secretenv");
    let file = service_yaml(
        &service,
        "        env:\n        - name: DB_PASS\n          valueFrom: {secretKeyRef: {name: db-pass, key: latest}}\n",
    );
    let emulator = Emulator::start_with_env(
        &service,
        &["-f", file.to_str().unwrap()],
        &[("EMULATE_SECRET_DB_PASS", "from-the-environment")],
    )
    .await;
    assert_eq!(
        echo(&emulator).await["env"]["DB_PASS"],
        "from-the-environment"
    );
    std::fs::remove_file(file).unwrap();
}

#[tokio::test]
async fn the_tag_verbs_set_update_remove_and_clear_tags_and_route_by_tag() {
    let emulator = Emulator::start(&service_name("tagverbs"), &[testapp_image()]).await;
    let first = emulator.revision_list().await[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    emulator
        .cli_ok(&["deploy", &emulator.service, "--update-env-vars", "V=2"])
        .await;
    let second = emulator.revision_list().await[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let update = |args: Vec<String>| {
        let mut all = vec![
            "services".to_string(),
            "update-traffic".to_string(),
            emulator.service.clone(),
        ];
        all.extend(args);
        all
    };
    let run = |args: Vec<String>| async {
        let args = update(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        emulator.cli_ok(&args).await
    };

    run(vec![
        "--set-tags".into(),
        format!("old={first},new={second}"),
    ])
    .await;
    assert_eq!(
        tags(&emulator).await,
        [
            ("new".to_string(), second.clone()),
            ("old".to_string(), first.clone())
        ]
    );
    let at_tag = |tag: &str| format!("{tag}---{}", host(&emulator));
    assert_eq!(emulator.revision_for(&at_tag("old"), "/echo").await, first);
    assert_eq!(emulator.revision_for(&at_tag("new"), "/echo").await, second);

    // --to-tags moves the percentages by tag.
    run(vec!["--to-tags".into(), "old=100".into()]).await;
    assert_eq!(
        emulator.revision_for(&host(&emulator), "/echo").await,
        first
    );

    // --update-tags moves one tag and keeps the other.
    run(vec!["--update-tags".into(), format!("new={first}")]).await;
    assert_eq!(emulator.revision_for(&at_tag("new"), "/echo").await, first);
    assert_eq!(
        tags(&emulator).await,
        [
            ("new".to_string(), first.clone()),
            ("old".to_string(), first.clone())
        ]
    );
    assert_eq!(percents(&emulator).await, [(first.clone(), 100)].into());

    run(vec!["--remove-tags".into(), "new".into()]).await;
    assert_eq!(tags(&emulator).await, [("old".to_string(), first.clone())]);
    let gone = request(
        "GET",
        &emulator.url("/echo"),
        &[("host", &at_tag("new"))],
        Vec::new(),
        false,
    )
    .await;
    assert_eq!(gone.status, 404, "a removed tag has no URL");

    run(vec!["--clear-tags".into()]).await;
    assert_eq!(tags(&emulator).await, []);
    assert_eq!(percents(&emulator).await, [(first.clone(), 100)].into());
    // The traffic stays where the tag had put it.
    assert_eq!(
        emulator.revision_for(&host(&emulator), "/echo").await,
        first
    );
}

#[tokio::test]
async fn format_yaml_and_table_print_the_same_service() {
    let emulator = Emulator::start(&service_name("formats"), &[testapp_image()]).await;
    let json = emulator.describe_service().await;
    let yaml = emulator
        .cli_ok(&[
            "services",
            "describe",
            &emulator.service,
            "--format",
            "yaml",
        ])
        .await;
    let from_yaml: serde_json::Value = serde_yaml_ng::from_str(&yaml.stdout).unwrap();
    assert_eq!(from_yaml, json, "YAML and JSON describe the same document");

    let table = emulator
        .cli_ok(&["revisions", "list", "--service", &emulator.service])
        .await;
    let revision = json["status"]["latestReadyRevisionName"].as_str().unwrap();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "a header and one revision:\n{}",
        table.stdout
    );
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert!(header.contains(&"REVISION"), "{}", lines[0]);
    assert!(row.contains(&revision), "{}", lines[1]);
    assert!(row.contains(&"100%"), "{}", lines[1]);
}

#[tokio::test]
async fn a_grpc_startup_probe_passes_on_serving_and_fails_on_not_serving() {
    let service = service_name("grpcstart");
    let probe = "        startupProbe:\n          grpc: {}\n          periodSeconds: 1\n          failureThreshold: 2\n";
    let file = service_yaml(&service, probe);
    let emulator = Emulator::start(&service, &["-f", file.to_str().unwrap()]).await;
    // The attempt credited depends on how long the app took to start (one per second).
    assert!(
        emulator
            .stdout()
            .contains("STARTUP gRPC probe succeeded after"),
        "{}",
        emulator.stdout()
    );
    drop(emulator);

    // An app whose health service answers NOT_SERVING never passes.
    let sick = format!("{probe}        env:\n        - {{name: START_SICK, value: '1'}}\n");
    let file = service_yaml(&service, &sick);
    let done = Emulator::run_to_exit(
        &service,
        &["-f", file.to_str().unwrap()],
        &[],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(done.status.code(), Some(3), "{done:?}");
    assert!(
        done.stderr
            .contains("STARTUP gRPC probe failed 2 times consecutively"),
        "{}",
        done.stderr
    );
    assert!(containers_of(&service).is_empty());
    std::fs::remove_file(file).unwrap();
}

#[tokio::test]
async fn a_revision_that_can_no_longer_start_answers_503_and_backs_off() {
    // It starts now, scales to zero, and from `broken_at` on every start crashes.
    let broken_at = unix_now() + 20;
    let env = format!("CRASH_AT_START_AFTER_UNIX={broken_at}");
    let emulator = Emulator::start(
        &service_name("nostart"),
        &[
            testapp_image(),
            "--scale-to-zero-after",
            "1s",
            "--set-env-vars",
            &env,
        ],
    )
    .await;
    let service = emulator.service.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(started_containers_of(&service).is_empty() && unix_now() > broken_at) {
        assert!(Instant::now() < deadline, "{}", emulator.stdout());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let reply = get(&emulator.url("/echo")).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        reply
            .body
            .contains("The request failed because the instance could not start successfully."),
        "{}",
        reply.body
    );

    // Requests keep coming for 8 s. Without a back-off every one would start a container;
    // with Cloud Run's (1 s, 2 s, 4 s...) there are at most a handful of starts.
    let began = Instant::now();
    let mut answered = 0;
    while began.elapsed() < Duration::from_secs(8) {
        let reply = get(&emulator.url("/echo")).await;
        assert_ne!(reply.status, 200, "a crashing revision cannot answer");
        answered += 1;
    }
    // The container's own line, once per start (stdout; the failure reports on stderr quote
    // it again).
    let starts = emulator.stdout().matches("crashing at start").count();
    assert!(answered >= 2, "only {answered} requests in 8 s");
    assert!(
        (2..=6).contains(&starts),
        "{starts} crashed starts for {answered} requests in 8 s:\n{}",
        emulator.stdout()
    );
}

#[tokio::test]
async fn verbs_find_the_one_running_emulator_by_themselves() {
    // A discovery directory of this test's own (TMPDIR), so other tests' emulators are not
    // candidates.
    let dir = std::env::temp_dir().join(service_name("discovery"));
    std::fs::create_dir_all(&dir).unwrap();
    let tmpdir = dir.to_str().unwrap();
    let emulator = Emulator::start_with_env(
        &service_name("found"),
        &[testapp_image(), "--admin-listen", "127.0.0.1:0"],
        &[("TMPDIR", tmpdir)],
    )
    .await;
    let verb = |dir: &str| {
        emulate_command()
            .args(["services", "list", "--format", "json"])
            .env("TMPDIR", dir)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let out = verb(tmpdir);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        list[0]["metadata"]["name"],
        emulator.service.as_str(),
        "{list}"
    );
    // With no emulator announced there, the verb says so instead of guessing.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = verb(empty.to_str().unwrap());
    assert_eq!(out.status.code(), Some(1));
    drop(emulator);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn services_delete_removes_the_service_and_its_containers() {
    let emulator = Emulator::start(&service_name("deleted"), &[testapp_image()]).await;
    assert_eq!(running_containers_of(&emulator.service), 1);
    emulator
        .cli_ok(&["services", "delete", &emulator.service])
        .await;
    // The instances drain and stop in the background; the spare container goes too.
    let deadline = Instant::now() + Duration::from_secs(40);
    while !containers_of(&emulator.service).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left after the delete: {:?}",
            containers_of(&emulator.service)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let described = emulator
        .cli(&["services", "describe", &emulator.service])
        .await;
    assert_ne!(described.status.code(), Some(0));
    assert!(
        described.stderr.contains("could not be found"),
        "{}",
        described.stderr
    );
    let reply = get(&emulator.url("/echo")).await;
    assert_eq!(reply.status, 404, "{}", reply.body);
}
