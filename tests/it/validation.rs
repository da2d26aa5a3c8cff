//! Input Cloud Run would refuse is refused here too, before anything changes: bad names,
//! unknown fields, duplicate or impossible env vars, out-of-range numbers, documents too
//! deep to parse. Each case exits 2 with a message naming the flag or field, and leaves the
//! running service's revisions and containers as they were.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::images::testapp_image;
use crate::support::{
    containers_of, request, running_container_ids, service_name, Emulator, Finished,
};

/// A service.yaml for `service` in a temp file; `spec` is the template's spec below
/// `containers`, `container` the lines of the one container after its image.
fn yaml_file(tag: &str, service: &str, spec: &str, container: &str) -> PathBuf {
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: '{service}'}}\nspec:\n  template:\n    spec:\n{spec}      containers:\n      - image: {}\n{container}",
        testapp_image()
    );
    let file = std::env::temp_dir().join(format!("{service}-{tag}.yaml").replace('/', "_"));
    std::fs::write(&file, yaml).unwrap();
    file
}

fn assert_refused(done: &Finished, words: &[&str], what: &str) {
    assert_eq!(
        done.status.code(),
        Some(2),
        "{what}: expected exit 2:\n{}\n{}",
        done.stdout,
        done.stderr
    );
    for word in words {
        assert!(
            done.stderr.contains(word),
            "{what}: stderr lacks {word:?}:\n{}",
            done.stderr
        );
    }
}

/// The state a refusal must leave alone: the service's revisions and its running
/// containers; beyond them there is at most the spare container the pool creates ahead of
/// time.
async fn state(emulator: &Emulator) -> (Vec<String>, Vec<String>) {
    let revisions = emulator
        .revision_list()
        .await
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    let mut running = running_container_ids(&emulator.service);
    running.sort();
    let all = containers_of(&emulator.service);
    assert!(
        all.len() <= running.len() + 1,
        "unexpected containers: {all:?}"
    );
    (revisions, running)
}

#[tokio::test]
async fn names_follow_cloud_runs_rules_at_the_cli_and_the_api() {
    let service = service_name("names");
    let emulator = Emulator::start(&service, &[testapp_image()]).await;
    let before = state(&emulator).await;
    let image = testapp_image();

    for suffix in ["../x", "a/b", "BAD_SUFFIX"] {
        let done = emulator
            .cli(&[
                "deploy",
                &service,
                "--image",
                image,
                "--revision-suffix",
                suffix,
            ])
            .await;
        assert_refused(
            &done,
            &[
                "--revision-suffix",
                "not a valid revision suffix",
                "lowercase",
            ],
            suffix,
        );
    }
    let done = emulator.cli(&["deploy", "a---b", "--image", image]).await;
    assert_refused(&done, &["'---'"], "a---b");
    for bad in ["a/b", "../x", "Upper"] {
        let done = emulator.cli(&["deploy", bad, "--image", image]).await;
        assert_refused(&done, &["Must begin with a letter"], bad);
        let done = emulator.cli(&["services", "describe", bad]).await;
        assert_refused(&done, &["is not a valid service name"], bad);
        let done = emulator.cli(&["revisions", "delete", bad]).await;
        assert_refused(&done, &["is not a valid revision name"], bad);
    }
    // A valid tag (46 characters) whose host label TAG---SERVICE is over 63 characters.
    let longer = format!("{service}-longer");
    let done = emulator
        .cli(&[
            "deploy",
            &longer,
            "--image",
            image,
            "--tag",
            &"t".repeat(46),
        ])
        .await;
    assert_refused(&done, &["--tag", "DNS label"], "long tag");
    assert!(containers_of(&longer).is_empty());
    let file = yaml_file("names", "a---b", "", "");
    let done = emulator
        .cli(&["services", "replace", file.to_str().unwrap()])
        .await;
    assert_refused(&done, &["metadata.name", "'---'"], "replace a---b");
    std::fs::remove_file(file).unwrap();

    // The API checks names in its paths and documents too, with the same texts.
    let api = format!(
        "http://{}/apis/serving.knative.dev/v1/namespaces/default",
        emulator.admin
    );
    let authorization = format!("Bearer {}", emulator.admin_token());
    let auth = ("authorization", authorization.as_str());
    let reply = request(
        "GET",
        &format!("{api}/services/a%2Fb"),
        &[auth],
        Vec::new(),
        false,
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body.contains("is not a valid service name"),
        "{}",
        reply.body
    );
    let reply = request(
        "DELETE",
        &format!("{api}/revisions/..%2Fx"),
        &[auth],
        Vec::new(),
        false,
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let body = format!(
        r#"{{"apiVersion":"serving.knative.dev/v1","kind":"Service","metadata":{{"name":"{service}"}},"spec":{{"template":{{"metadata":{{"name":"{service}-BAD_SUFFIX"}},"spec":{{"containers":[{{"image":"{image}"}}]}}}}}}}}"#
    );
    let reply = request(
        "PUT",
        &format!("{api}/services/{service}"),
        &[("content-type", "application/json"), auth],
        body.into_bytes(),
        false,
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body.contains("spec.template.metadata.name"),
        "{}",
        reply.body
    );

    assert_eq!(state(&emulator).await, before, "a refusal changed state");
    assert!(containers_of("a---b").is_empty());
}

#[tokio::test]
async fn input_cloud_run_would_refuse_exits_2_and_changes_nothing() {
    let service = service_name("input");
    // `run --concurrency 0` means Cloud Run's default, as containerConcurrency: 0 does.
    let emulator = Emulator::start(&service, &[testapp_image(), "--concurrency", "0"]).await;
    let described = emulator
        .cli_ok(&["services", "describe", &service, "--format", "json"])
        .await;
    assert!(
        described.stdout.contains("\"containerConcurrency\": 0"),
        "{}",
        described.stdout
    );
    let before = state(&emulator).await;

    let cases: [(&str, &str, &str, &[&str]); 6] = [
        (
            "typo",
            "      containerConcurency: 1\n",
            "",
            &[
                "spec.template.spec.containerConcurency",
                "did you mean containerConcurrency?",
            ],
        ),
        (
            "dup-env",
            "",
            "        env: [{name: A, value: '1'}, {name: A, value: '2'}]\n",
            &["env[1].name", "'A' is already set"],
        ),
        (
            "nul",
            "",
            "        env: [{name: A, value: \"x\\0y\"}]\n",
            &["env[0].value", "NUL"],
        ),
        (
            "negative",
            "      containerConcurrency: -1\n",
            "",
            &[
                "containerConcurrency",
                "-1 is out of range: it must be 0 or more",
            ],
        ),
        (
            "memory",
            "",
            "        resources: {limits: {memory: 1Ti}}\n",
            &["resources.limits.memory", "maximum memory is 32Gi"],
        ),
        (
            "env-name",
            "",
            "        env: [{name: \"A\\tB\", value: '1'}]\n",
            &["env[0].name", "not a valid env var name"],
        ),
    ];
    for (tag, spec, container, words) in cases {
        let file = yaml_file(tag, &service, spec, container);
        let done = emulator
            .cli(&["services", "replace", file.to_str().unwrap()])
            .await;
        assert_refused(&done, words, tag);
        std::fs::remove_file(file).unwrap();
    }
    let no_kind = std::env::temp_dir().join(format!("{service}-nokind.yaml"));
    std::fs::write(
        &no_kind,
        format!(
            "apiVersion: serving.knative.dev/v1\nmetadata: {{name: {service}}}\nspec: {{template: {{spec: {{containers: [{{image: {}}}]}}}}}}\n",
            testapp_image()
        ),
    )
    .unwrap();
    let done = emulator
        .cli(&["services", "replace", no_kind.to_str().unwrap()])
        .await;
    assert_refused(&done, &["kind: required"], "no kind");
    std::fs::remove_file(no_kind).unwrap();

    let flag_cases: [(&[&str], &[&str]); 3] = [
        (
            &["--set-env-vars", "A=1,A=2"],
            &["--set-env-vars", "'A' is set more than once"],
        ),
        (
            &["--memory", "1Ti"],
            &["--memory", "maximum memory is 32Gi"],
        ),
        (&["--update-env-vars", "1 A=x"], &[]),
    ];
    for (flags, words) in flag_cases {
        let mut args = vec!["deploy", service.as_str()];
        args.extend_from_slice(flags);
        let done = emulator.cli(&args).await;
        if words.is_empty() {
            // `1 A` is a valid name for Cloud Run's API (printable ASCII without '='): the
            // deploy goes through. Put the template back for the state comparison below.
            assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
            continue;
        }
        assert_refused(&done, words, flags[0]);
    }

    // The old revision may still be draining here, so only the revisions are compared.
    let revisions = emulator.revision_list().await;
    assert_eq!(
        revisions.len(),
        before.0.len() + 1,
        "only the valid deploy made a revision: {revisions:?}"
    );
}

#[tokio::test]
async fn deep_documents_in_files_are_refused_quickly_naming_the_file() {
    let service = service_name("deep");
    let deep = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: {service}}}\nspec: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let file = std::env::temp_dir().join(format!("{service}-deep.yaml"));
    std::fs::write(&file, deep).unwrap();
    let started = Instant::now();
    let done = Emulator::run_to_exit(
        &service,
        &["-f", file.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_refused(
        &done,
        &["-f", file.to_str().unwrap(), "nests more than 100 levels"],
        "deep -f",
    );
    let env_file = std::env::temp_dir().join(format!("{service}-deep-env.yaml"));
    std::fs::write(
        &env_file,
        format!("A: {}{}\n", "{a: ".repeat(50_000), "}".repeat(50_000)),
    )
    .unwrap();
    let done = Emulator::run_to_exit(
        &service,
        &[
            testapp_image(),
            "--env-vars-file",
            env_file.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(20),
    )
    .await;
    assert_refused(
        &done,
        &[
            "--env-vars-file",
            env_file.to_str().unwrap(),
            "nests more than",
        ],
        "deep env file",
    );
    assert!(containers_of(&service).is_empty());
    std::fs::remove_file(file).unwrap();
    std::fs::remove_file(env_file).unwrap();
}

/// Cloud Run's resource rules refuse a combination at deploy, in its words and naming the
/// field, with nothing started: memory for the CPU, offered CPU values, fractional CPU with
/// concurrency, the second generation's minimum memory.
#[tokio::test]
async fn cloud_runs_resource_rules_refuse_combinations_with_its_texts() {
    let service = service_name("resources");
    let gen2 = std::env::temp_dir().join(format!("{service}-gen2.yaml"));
    std::fs::write(
        &gen2,
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: {service}}}\nspec:\n  template:\n    metadata:\n      annotations: {{run.googleapis.com/execution-environment: gen2}}\n    spec:\n      containers:\n      - image: {}\n        resources: {{limits: {{memory: 256Mi}}}}\n",
            testapp_image()
        ),
    )
    .unwrap();
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec![testapp_image(), "--memory", "8Gi"],
            "spec.template.spec.containers[0].resources.limits.memory: Invalid value specified for memory. For 1.0 CPU, memory must be between 128Mi and 4Gi inclusive.",
        ),
        (
            vec![testapp_image(), "--cpu", "0.5", "--concurrency", "10"],
            "spec.template.spec.containers[0].resources.limits.cpu: Invalid value specified for cpu. Total cpu < 1 is not supported with concurrency > 1.",
        ),
        (
            vec![testapp_image(), "--cpu", "3", "--memory", "2Gi"],
            "spec.template.spec.containers[0].resources.limits.cpu: Invalid value specified for cpu. 3.0 is not offered",
        ),
        (
            vec!["-f", gen2.to_str().unwrap()],
            "Invalid value specified for memory with gen2 execution environment. For 1.0 CPU, memory must be between 512Mi and 4Gi inclusive.",
        ),
    ];
    for (args, words) in cases {
        let done = Emulator::run_to_exit(&service, &args, &[], Duration::from_secs(30)).await;
        assert_refused(&done, &[words], &format!("{args:?}"));
        assert!(
            containers_of(&service).is_empty(),
            "{args:?} started a container"
        );
    }
    std::fs::remove_file(gen2).unwrap();
}
