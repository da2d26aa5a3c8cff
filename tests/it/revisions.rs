//! Revisions, traffic and tags on a running emulator, driven like gcloud: deploy, split,
//! tag, roll back, and switch revisions under load without failing a request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

/// Revision names of a service, newest first.
async fn revisions(emulator: &Emulator) -> Vec<String> {
    emulator
        .revision_list()
        .await
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn host(emulator: &Emulator) -> String {
    format!("{}.localhost", emulator.service)
}

#[tokio::test]
async fn a_70_30_split_sends_each_revision_its_share() {
    let emulator = Emulator::start(&service_name("split"), &[testapp_image()]).await;
    let deployed = emulator
        .cli_ok(&[
            "deploy",
            &emulator.service,
            "--update-env-vars",
            "COLOR=blue",
        ])
        .await;
    assert!(
        deployed
            .stderr
            .contains("is serving 100 percent of traffic"),
        "{}",
        deployed.stderr
    );
    let names = revisions(&emulator).await;
    let (new, old) = (&names[0], &names[1]);
    assert!(
        new.starts_with(&format!("{}-00002-", emulator.service)),
        "{new}"
    );
    let split = format!("{old}=70,{new}=30");
    emulator
        .cli_ok(&[
            "services",
            "update-traffic",
            &emulator.service,
            "--to-revisions",
            &split,
        ])
        .await;
    let mut on_new = 0;
    for _ in 0..2000 {
        if emulator.revision_for(&host(&emulator), "/echo").await == *new {
            on_new += 1;
        }
    }
    // Binomial(2000, 0.3): mean 600, standard deviation 20.5, and the bound is about ±4σ, so a
    // correct split fails it with probability about 6e-5. A split off by ten points (40% or 20%
    // on the new revision: means 800 and 400, deviations 22 and 18) passes it with probability
    // below 1e-7, and a swapped or even split never does.
    assert!(
        (518..=682).contains(&on_new),
        "{on_new} of 2000 went to the new revision, which has 30%"
    );
}

#[tokio::test]
async fn no_traffic_with_a_tag_reaches_the_new_revision_only_at_its_tag_url() {
    let emulator = Emulator::start(&service_name("tag"), &[testapp_image()]).await;
    let first = revisions(&emulator).await[0].clone();
    let done = emulator
        .cli_ok(&[
            "deploy",
            &emulator.service,
            "--update-env-vars",
            "COLOR=green",
            "--no-traffic",
            "--tag",
            "candidate",
        ])
        .await;
    assert!(
        done.stderr.contains("is serving 0 percent of traffic"),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr.contains(&format!(
            "http://candidate---{}.localhost:",
            emulator.service
        )),
        "{}",
        done.stderr
    );
    let candidate = revisions(&emulator).await[0].clone();
    for _ in 0..30 {
        assert_eq!(
            emulator.revision_for(&host(&emulator), "/echo").await,
            first
        );
        assert_eq!(emulator.revision_for("localhost", "/echo").await, first);
        assert_eq!(
            emulator
                .revision_for(&format!("candidate---{}", host(&emulator)), "/echo")
                .await,
            candidate
        );
    }
    // An unknown tag is a 404, not someone else's revision.
    let reply = request(
        "GET",
        &emulator.url("/echo"),
        &[("host", &format!("nope---{}", host(&emulator)))],
        Vec::new(),
        false,
    )
    .await;
    assert_eq!(reply.status, 404);
    // --no-traffic on a new service is gcloud's error.
    let done = emulator
        .cli(&[
            "deploy",
            "brand-new",
            "--image",
            testapp_image(),
            "--no-traffic",
        ])
        .await;
    assert_eq!(done.status.code(), Some(2));
    assert!(
        done.stderr
            .contains("--no-traffic not supported when creating a new service."),
        "{}",
        done.stderr
    );
}

#[tokio::test]
async fn a_failing_revision_leaves_traffic_where_it_was() {
    let emulator = Emulator::start(&service_name("failing"), &[testapp_image()]).await;
    let good = revisions(&emulator).await[0].clone();
    let done = emulator
        .cli(&[
            "deploy",
            &emulator.service,
            "--update-env-vars",
            "CRASH_AT_START=4",
        ])
        .await;
    assert_eq!(done.status.code(), Some(3), "{}", done.stderr);
    assert!(
        done.stderr.contains("Container called exit(4)."),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr
            .contains("is not ready and cannot serve traffic"),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr.contains("crashing at start with code 4"),
        "the container's last log lines: {}",
        done.stderr
    );
    for _ in 0..20 {
        assert_eq!(emulator.revision_for(&host(&emulator), "/echo").await, good);
    }
    let service = emulator.describe_service().await;
    let status = &service["status"];
    assert_eq!(status["latestReadyRevisionName"], good.as_str());
    assert_ne!(status["latestCreatedRevisionName"], good.as_str());
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "False");
}

#[tokio::test]
async fn rollback_moves_traffic_back_and_stops_the_abandoned_revision() {
    let emulator = Emulator::start(&service_name("rollback"), &[testapp_image()]).await;
    let first = revisions(&emulator).await[0].clone();
    emulator
        .cli_ok(&["deploy", &emulator.service, "--update-env-vars", "V=2"])
        .await;
    let second = revisions(&emulator).await[0].clone();
    assert_eq!(
        emulator.revision_for(&host(&emulator), "/echo").await,
        second
    );
    // The first revision lost its traffic: drained and stopped, its record kept.
    wait_for_containers(&emulator, 1).await;
    assert_eq!(
        running_revisions_of(&emulator.service),
        std::slice::from_ref(&second)
    );
    let to_first = format!("{first}=100");
    emulator
        .cli_ok(&[
            "services",
            "update-traffic",
            &emulator.service,
            "--to-revisions",
            &to_first,
        ])
        .await;
    assert_eq!(
        emulator.revision_for(&host(&emulator), "/echo").await,
        first
    );
    // Now the second one is abandoned, and it is the one stopped.
    wait_for_containers(&emulator, 1).await;
    assert_eq!(
        running_revisions_of(&emulator.service),
        std::slice::from_ref(&first)
    );
    emulator
        .cli_ok(&[
            "services",
            "update-traffic",
            &emulator.service,
            "--to-latest",
        ])
        .await;
    assert_eq!(
        emulator.revision_for(&host(&emulator), "/echo").await,
        second
    );
    // A revision with traffic cannot be deleted; one without can.
    let done = emulator.cli(&["revisions", "delete", &second]).await;
    assert_eq!(done.status.code(), Some(1));
    assert!(
        done.stderr
            .contains("cannot be deleted because it receives 100% of the traffic"),
        "{}",
        done.stderr
    );
    emulator.cli_ok(&["revisions", "delete", &first]).await;
    assert_eq!(revisions(&emulator).await, [second]);
}

async fn wait_for_containers(emulator: &Emulator, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while running_containers_of(&emulator.service) != count {
        assert!(
            std::time::Instant::now() < deadline,
            "expected {count} containers: {}",
            emulator.stdout()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_revision_switch_under_load_fails_no_request_and_lets_long_ones_finish() {
    let emulator = Arc::new(Emulator::start(&service_name("switch"), &[testapp_image()]).await);
    let old = revisions(&emulator).await[0].clone();
    let long = {
        let emulator = emulator.clone();
        tokio::spawn(async move {
            request(
                "GET",
                &emulator.url("/sleep?ms=4000"),
                &[],
                Vec::new(),
                false,
            )
            .await
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut loaders = Vec::new();
    for _ in 0..4 {
        let (emulator, stop, sent, failed) =
            (emulator.clone(), stop.clone(), sent.clone(), failed.clone());
        loaders.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let reply = request("GET", &emulator.url("/echo"), &[], Vec::new(), false).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if reply.status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    emulator
        .wait_for_output("sleeping 4000 ms", Duration::from_secs(10))
        .await;
    let wait_for_requests = |at_least: u64| {
        let sent = sent.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while sent.load(Ordering::Relaxed) < at_least {
                assert!(std::time::Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for_requests(20).await;
    emulator
        .cli_ok(&["deploy", &emulator.service, "--update-env-vars", "V=2"])
        .await;
    let new = revisions(&emulator).await[0].clone();
    // The deploy returns once the new routes are published: from then on, the new revision.
    assert_eq!(emulator.revision_for("localhost", "/echo").await, new);
    let after_deploy = sent.load(Ordering::Relaxed);
    wait_for_requests(after_deploy + 20).await;
    stop.store(true, Ordering::Relaxed);
    for loader in loaders {
        loader.await.unwrap();
    }
    let reply = long.await.unwrap();
    assert_eq!(
        (reply.status, reply.revision.as_str()),
        (200, old.as_str()),
        "the long request must finish on the old revision"
    );
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent >= 40, "only {sent} requests were sent");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the switch"
    );
}

#[tokio::test]
async fn describe_then_replace_round_trips_without_a_new_revision() {
    let emulator = Emulator::start(&service_name("roundtrip"), &[testapp_image()]).await;
    emulator
        .cli_ok(&[
            "deploy",
            &emulator.service,
            "--update-env-vars",
            "A=1",
            "--no-traffic",
            "--tag",
            "blue",
        ])
        .await;
    let before = emulator
        .cli_ok(&[
            "services",
            "describe",
            &emulator.service,
            "--format",
            "yaml",
        ])
        .await
        .stdout;
    let file = std::env::temp_dir().join(format!("{}.yaml", emulator.service));
    std::fs::write(&file, &before).unwrap();
    emulator
        .cli_ok(&["services", "replace", file.to_str().unwrap()])
        .await;
    let after = emulator
        .cli_ok(&[
            "services",
            "describe",
            &emulator.service,
            "--format",
            "yaml",
        ])
        .await
        .stdout;
    assert_eq!(before, after);
    assert_eq!(revisions(&emulator).await.len(), 2);

    // A bad field: its path, exit 2, and nothing changes.
    let bad = before.replace("containerPort: 8080", "containerPort: eighty");
    std::fs::write(&file, bad).unwrap();
    let done = emulator
        .cli(&["services", "replace", file.to_str().unwrap()])
        .await;
    assert_eq!(done.status.code(), Some(2));
    assert!(
        done.stderr.contains(
            "spec.template.spec.containers[0].ports[0].containerPort: expected an integer"
        ),
        "{}",
        done.stderr
    );
    let bad = before.replace("percent: 100", "percent: 90");
    std::fs::write(&file, bad).unwrap();
    let done = emulator
        .cli(&["services", "replace", file.to_str().unwrap()])
        .await;
    assert_eq!(done.status.code(), Some(2));
    assert!(
        done.stderr.contains("Traffic targets sum to 90, want 100"),
        "{}",
        done.stderr
    );
    let unchanged = emulator
        .cli_ok(&[
            "services",
            "describe",
            &emulator.service,
            "--format",
            "yaml",
        ])
        .await
        .stdout;
    assert_eq!(unchanged, before);
    std::fs::remove_file(file).unwrap();
}

#[tokio::test]
async fn run_takes_a_service_yaml_with_secrets_and_notes() {
    let service = service_name("yaml");
    let dir = std::env::temp_dir().join(format!("{service}-secrets"));
    std::fs::create_dir_all(dir.join("db-pass")).unwrap();
    std::fs::write(dir.join("db-pass").join("latest"), "hunter2\n").unwrap();
    let yaml = format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {service}
spec:
  template:
    metadata:
      name: {service}-first
      annotations:
        run.googleapis.com/vpc-access-connector: my-connector
    spec:
      serviceAccountName: sa@project.iam.gserviceaccount.com
      containerConcurrency: 10
      containers:
      - image: {image}
        ports: [{{containerPort: 9000, name: http1}}]
        env:
        - {{name: GREETING, value: hi}}
        - name: DB_PASS
          valueFrom: {{secretKeyRef: {{name: db-pass, key: latest}}}}
"#,
        image = testapp_image()
    );
    let file = dir.join("service.yaml");
    std::fs::write(&file, yaml).unwrap();
    let emulator = Emulator::start(
        &service,
        &[
            "-f",
            file.to_str().unwrap(),
            "--secrets-dir",
            dir.to_str().unwrap(),
        ],
    )
    .await;
    let echo = get(&emulator.url("/echo")).await.json();
    assert_eq!(echo["env"]["DB_PASS"], "hunter2");
    assert_eq!(echo["env"]["PORT"], "9000");
    assert_eq!(echo["env"]["K_REVISION"], format!("{service}-first"));
    // The service account is the identity the metadata server gives the containers.
    let email =
        get(&emulator
            .url("/metadata?path=/computeMetadata/v1/instance/service-accounts/default/email"))
        .await
        .body;
    assert!(
        email.ends_with("\r\n\r\nsa@project.iam.gserviceaccount.com"),
        "{email}"
    );
    let stderr = emulator.stderr();
    assert!(!stderr.contains("serviceAccountName"), "{stderr}");
    assert!(
        stderr.contains(
            "note: spec.template.metadata.annotations[run.googleapis.com/vpc-access-connector]"
        ),
        "{stderr}"
    );
    drop(emulator);

    // A missing secret fails before anything starts, naming the field and where it looked.
    std::fs::remove_file(dir.join("db-pass").join("latest")).unwrap();
    let done = Emulator::run_to_exit(
        &service,
        &[
            "-f",
            file.to_str().unwrap(),
            "--secrets-dir",
            dir.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(done.stderr.contains("spec.template.spec.containers[0].env[1].valueFrom.secretKeyRef: secret 'db-pass' version 'latest' not found"), "{}", done.stderr);
    assert!(containers_of(&service).is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn verbs_without_an_emulator_say_how_to_start_one() {
    // A port that was just free: nothing listens on it (port 1 might be taken on some hosts).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let output = emulate_command()
        .args(["services", "list", "--admin", &closed])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot reach the emulator's admin API at {closed}"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn several_services_run_in_one_emulator_and_route_by_host() {
    let (first, second) = (service_name("multi-a"), service_name("multi-b"));
    let dir = std::env::temp_dir();
    let file = |name: &str| {
        let path = dir.join(format!("{name}.yaml"));
        let yaml = format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  template:\n    spec:\n      containers:\n      - image: {}\n",
            testapp_image()
        );
        std::fs::write(&path, yaml).unwrap();
        path
    };
    let (a, b) = (file(&first), file(&second));
    let emulator = Emulator::start(
        &first,
        &[
            "-f",
            a.to_str().unwrap(),
            "-f",
            b.to_str().unwrap(),
            "--default-service",
            &second,
        ],
    )
    .await;
    for name in [&first, &second] {
        let revision = emulator
            .revision_for(&format!("{name}.localhost"), "/echo")
            .await;
        assert!(
            revision.starts_with(name.as_str()),
            "{name}.localhost reached {revision}"
        );
    }
    // Plain localhost reaches the default service when several run.
    assert!(emulator
        .revision_for("localhost", "/echo")
        .await
        .starts_with(second.as_str()));
    let listed = emulator.cli_ok(&["services", "list"]).await.stdout;
    assert!(
        listed.contains(&first) && listed.contains(&second),
        "{listed}"
    );
    // A new service can be deployed into the running emulator too.
    let third = service_name("multi-c");
    emulator
        .cli_ok(&["deploy", &third, "--image", testapp_image()])
        .await;
    let revision = emulator
        .revision_for(&format!("{third}.localhost"), "/echo")
        .await;
    assert!(revision.starts_with(third.as_str()), "{revision}");
    drop(emulator);
    for name in [&first, &second, &third] {
        assert!(containers_of(name).is_empty(), "{name} left containers");
    }
    std::fs::remove_file(a).unwrap();
    std::fs::remove_file(b).unwrap();
}

#[tokio::test]
async fn traffic_back_to_a_draining_revision_keeps_the_instance_started_for_it() {
    let emulator = Arc::new(Emulator::start(&service_name("comeback"), &[testapp_image()]).await);
    let first = revisions(&emulator).await[0].clone();
    let old_instance = running_container_ids(&emulator.service);
    assert_eq!(old_instance.len(), 1);
    // A long request keeps the first revision's instance draining after the deploy.
    let long = {
        let url = emulator.url("/sleep?ms=6000");
        tokio::spawn(async move { get(&url).await })
    };
    emulator
        .wait_for_output("sleeping 6000 ms", Duration::from_secs(10))
        .await;
    emulator
        .cli_ok(&["deploy", &emulator.service, "--update-env-vars", "V=2"])
        .await;
    let to_first = format!("{first}=100");
    emulator
        .cli_ok(&[
            "services",
            "update-traffic",
            &emulator.service,
            "--to-revisions",
            &to_first,
        ])
        .await;
    // The draining instance cannot take requests: a new one was started for the traffic.
    let started_for_it: Vec<String> = running_container_ids(&emulator.service)
        .into_iter()
        .filter(|id| !old_instance.iter().any(|old| id.starts_with(old.as_str())))
        .filter(|id| inspect(id)["Config"]["Labels"]["dev.emulate.revision"] == first.as_str())
        .collect();
    assert_eq!(started_for_it.len(), 1, "{}", emulator.stdout());
    let reply = long.await.unwrap();
    assert_eq!(
        (reply.status, reply.revision.as_str()),
        (200, first.as_str())
    );
    // The old instance goes once its request is done; the new one stays and serves.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while running_container_ids(&emulator.service)
        .iter()
        .any(|id| old_instance.contains(id))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            emulator.stdout()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        running_container_ids(&emulator.service).contains(&started_for_it[0]),
        "the instance started for the returning traffic was stopped by the old drain:\n{}",
        emulator.stdout()
    );
    assert_eq!(emulator.revision_for("localhost", "/echo").await, first);
}
