//! `--source DIR` and `--watch`: real builds of `FROM scratch` Dockerfiles over the test app's
//! static binary, the ignore files honoured, failed and interrupted builds leaving nothing,
//! and the watch loop switching revisions with no failed request.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

/// The Dockerfile most tests build: the test app, its content file, and the whole context
/// under /ctx so a test can tell what the context held.
const DOCKERFILE: &str = "FROM scratch\nCOPY testapp /testapp\nCOPY content.txt /content.txt\nCOPY . /ctx/\nENTRYPOINT [\"/testapp\"]\n";

/// A source directory (removed when dropped) with the test app's binary and `files`.
struct Source {
    dir: PathBuf,
    service: String,
}

impl Source {
    fn new(service: &str, files: &[(&str, &str)]) -> Source {
        let dir = Path::new(crate::images::ROOT)
            .join("target")
            .join("it-sources")
            .join(service);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let binary = crate::images::testapp_binary();
        if std::fs::hard_link(&binary, dir.join("testapp")).is_err() {
            std::fs::copy(&binary, dir.join("testapp")).unwrap();
        }
        let source = Source {
            dir,
            service: service.to_string(),
        };
        for (path, content) in files {
            source.write(path, content);
        }
        source
    }

    fn write(&self, path: &str, content: &str) {
        let full = self.dir.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        // Written whole and renamed into place, as editors save: a build never sees half a file.
        let temp = self.dir.join(format!(".{}.saving", path.replace('/', "_")));
        std::fs::write(&temp, content).unwrap();
        std::fs::rename(&temp, &full).unwrap();
    }

    fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }
}

impl Drop for Source {
    /// Removes the directory and the tags built from it. Only the tags: tests building at the
    /// same time share the build cache (the same layers, even the same image under another
    /// tag), which removing an image by id, or its untagged parents, would pull from under them.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let listing = Command::new("docker")
            .args([
                "images",
                "--format",
                "{{.Repository}}:{{.Tag}}",
                "--filter",
                &format!("reference=emulate-source/{}", self.service),
            ])
            .output();
        if let Ok(listing) = listing {
            for tag in String::from_utf8_lossy(&listing.stdout).split_whitespace() {
                let _ = Command::new("docker")
                    .args(["rmi", "--no-prune", tag])
                    .output();
            }
        }
    }
}

/// The image tag a `Building image [TAG]` or `reusing` line names.
fn built_tag(stderr: &str, service: &str) -> Option<String> {
    let prefix = format!("emulate-source/{service}:");
    stderr.lines().rev().find_map(|line| {
        let start = line.find(&prefix)?;
        let rest = &line[start..];
        Some(rest[..rest.find(']')?].to_string())
    })
}

async fn file(emulator: &Emulator, path: &str) -> Reply {
    get(&emulator.url(&format!("/file?path={path}"))).await
}

#[tokio::test]
async fn a_source_build_serves_what_the_ignore_files_leave_in_and_deploy_rebuilds() {
    let service = service_name("src-serve");
    let source = Source::new(
        &service,
        &[
            ("Dockerfile", DOCKERFILE),
            ("content.txt", "v1"),
            (".gitignore", "secret.txt\nbuild/\n"),
            (".dockerignore", "notes.txt\n"),
            ("secret.txt", "not uploaded"),
            ("build/out.bin", "not uploaded"),
            ("notes.txt", "not sent"),
            ("sub/notes.txt", "sent: .dockerignore patterns are anchored"),
        ],
    );
    let emulator = Emulator::start(&service, &["--source", source.path()]).await;
    let stderr = emulator.stderr();
    assert!(
        stderr.contains("Building using Dockerfile and deploying container to Cloud Run service"),
        "{stderr}"
    );
    assert!(built_tag(&stderr, &service).is_some(), "{stderr}");
    assert_eq!(file(&emulator, "/content.txt").await.body, "v1");
    for (path, status) in [
        ("/ctx/content.txt", 200),
        ("/ctx/sub/notes.txt", 200),
        ("/ctx/secret.txt", 404),
        ("/ctx/build/out.bin", 404),
        ("/ctx/.gitignore", 404),
        ("/ctx/notes.txt", 404),
    ] {
        assert_eq!(file(&emulator, path).await.status, status, "{path}");
    }

    // `emulate deploy --source` builds the changed tree and deploys it as a new revision.
    source.write("content.txt", "v2");
    let done = emulator
        .cli_ok(&["deploy", &service, "--source", source.path()])
        .await;
    assert!(done.stderr.contains("Building image ["), "{}", done.stderr);
    assert_eq!(file(&emulator, "/content.txt").await.body, "v2");
    assert_eq!(emulator.revision_list().await.len(), 2);
}

#[tokio::test]
async fn smoke_builds_first_and_a_change_to_an_ignored_file_reuses_the_image() {
    let service = service_name("src-smoke");
    let source = Source::new(
        &service,
        &[
            ("Dockerfile", DOCKERFILE),
            ("content.txt", "v1"),
            (".dockerignore", "notes.txt\n"),
            ("notes.txt", "one"),
        ],
    );
    let smoke = |expect: &'static str| {
        let args = vec![
            "smoke".to_string(),
            "--service".to_string(),
            service.clone(),
            "--source".to_string(),
            source.path().to_string(),
            "--request".to_string(),
            "/file?path=/content.txt".to_string(),
            "--expect-body-contains".to_string(),
            expect.to_string(),
        ];
        async move {
            let output = tokio::task::spawn_blocking(move || {
                emulate_command()
                    .args(&args)
                    .env("NO_COLOR", "1")
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
            assert!(stdout.contains("the source builds"), "{stdout}");
            stderr
        }
    };
    let first = smoke("v1").await;
    let tag = built_tag(&first, &service).expect("a tag");
    assert!(first.contains("Building image ["), "{first}");

    source.write("notes.txt", "two");
    let second = smoke("v1").await;
    assert!(
        second.contains(&format!("has not changed since image [{tag}]")),
        "an ignored file's change must not rebuild:\n{second}"
    );

    source.write("content.txt", "v2");
    let third = smoke("v2").await;
    assert!(third.contains("Building image ["), "{third}");
    assert_ne!(built_tag(&third, &service).unwrap(), tag);
    assert!(containers_of(&service).is_empty());
}

#[tokio::test]
async fn a_broken_dockerfile_fails_with_its_step_and_leaves_nothing() {
    let service = service_name("src-broken");
    let source = Source::new(
        &service,
        &[
            (
                "Dockerfile",
                &format!("FROM scratch\nCOPY testapp /testapp\nRUN [\"/testapp\", \"step\", \"3\", \"warming up\", \"boom {service}\"]\nENTRYPOINT [\"/testapp\"]\n"),
            ),
            ("content.txt", "v1"),
        ],
    );
    let done = Emulator::run_to_exit(
        &service,
        &["--source", source.path()],
        &[],
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(done.status.code(), Some(3), "{}", done.stderr);
    assert!(
        done.stderr
            .contains("The build failed at Step 3/4 : RUN [\"/testapp\", \"step\", \"3\""),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr.contains("returned a non-zero code: 3"),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr.contains(&format!("| boom {service}")),
        "{}",
        done.stderr
    );
    assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
    assert!(containers_of(&service).is_empty());
    assert!(
        build_containers(&service).is_empty(),
        "the step's container was left"
    );
}

/// Containers (any state) whose command names `marker`: a build step's.
fn build_containers(marker: &str) -> Vec<String> {
    let out = run_checked(Command::new("docker").args([
        "ps",
        "-a",
        "--no-trunc",
        "--format",
        "{{.ID}} {{.Command}}",
    ]));
    out.lines()
        .filter(|l| l.contains(marker))
        .map(|l| l.split(' ').next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn ctrl_c_during_a_build_stops_it_and_leaves_nothing() {
    let service = service_name("src-interrupt");
    let source = Source::new(
        &service,
        &[
            (
                "Dockerfile",
                &format!("FROM scratch\nCOPY testapp /testapp\nRUN [\"/testapp\", \"step\", \"sleep\", \"120\", \"{service}\"]\nENTRYPOINT [\"/testapp\"]\n"),
            ),
            ("content.txt", "v1"),
        ],
    );
    let mut emulator = Emulator::spawn_run(&service, &["--source", source.path()]);
    emulator
        .wait_for_output("sleeping 120 s", Duration::from_secs(120))
        .await;
    assert_eq!(build_containers(&service).len(), 1, "the step runs");
    emulator.signal("INT");
    let done = emulator.wait(Duration::from_secs(30)).await;
    assert_eq!(done.status.code(), Some(130), "{}", done.stderr);
    assert!(
        done.stderr.contains("the build was stopped"),
        "{}",
        done.stderr
    );
    // The engine stops the step when the build's connection closes: its container goes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !build_containers(&service).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the build step's container was left: {:?}",
            build_containers(&service)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let images = run_checked(Command::new("docker").args([
        "images",
        "-q",
        "--filter",
        &format!("reference=emulate-source/{service}"),
    ]));
    assert!(images.trim().is_empty(), "no image was tagged: {images}");
}

#[tokio::test]
async fn watch_redeploys_each_edit_with_no_failed_request_and_keeps_serving_through_bad_ones() {
    let service = service_name("src-watch");
    let source = Source::new(
        &service,
        &[("Dockerfile", DOCKERFILE), ("content.txt", "v1")],
    );
    let emulator = Emulator::start(&service, &["--source", source.path(), "--watch"]).await;
    emulator
        .wait_for_output("Watching", Duration::from_secs(10))
        .await;
    let first_revision = file(&emulator, "/content.txt").await.revision;

    // A client asks all along; every answer must be a 200.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = tokio::spawn({
        let (url, stop, sent, failed) = (
            emulator.url("/file?path=/content.txt"),
            stop.clone(),
            sent.clone(),
            failed.clone(),
        );
        async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let reply = get(&url).await;
                sent.fetch_add(1, Ordering::SeqCst);
                if reply.status != 200 {
                    failed.fetch_add(1, Ordering::SeqCst);
                    failures.push(format!("{} {}", reply.status, reply.body));
                }
            }
            failures
        }
    });
    let serves = |expected: &'static str| {
        let url = emulator.url("/file?path=/content.txt");
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let reply = get(&url).await;
                if reply.body == expected {
                    return reply.revision;
                }
                assert!(Instant::now() < deadline, "never served {expected}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    source.write("content.txt", "v2");
    let second_revision = serves("v2").await;
    assert_ne!(second_revision, first_revision);
    emulator
        .wait_for_output(
            "[watch] content.txt changed: built in",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        emulator.stderr().contains(&format!(
            "revision {second_revision} serves 100% of traffic"
        )),
        "{}",
        emulator.stderr()
    );

    // A build that fails: the revision serving goes on serving.
    source.write(
        "Dockerfile",
        "FROM scratch\nCOPY testapp /testapp\nRUN [\"/testapp\", \"step\", \"1\", \"broken\"]\n",
    );
    emulator
        .wait_for_output(
            "[watch] Dockerfile changed: build failed after",
            Duration::from_secs(60),
        )
        .await;
    assert!(
        emulator
            .stderr()
            .contains(&format!("revision {second_revision} keeps serving")),
        "{}",
        emulator.stderr()
    );
    assert_eq!(file(&emulator, "/content.txt").await.body, "v2");

    // A revision that builds but crashes at start: still the old one serves.
    source.write(
        "Dockerfile",
        &DOCKERFILE.replace("ENTRYPOINT", "ENV CRASH_AT_START=1\nENTRYPOINT"),
    );
    emulator
        .wait_for_output(
            "but the new revision did not start",
            Duration::from_secs(60),
        )
        .await;
    let reply = file(&emulator, "/content.txt").await;
    assert_eq!(
        (reply.body.as_str(), reply.revision.as_str()),
        ("v2", second_revision.as_str())
    );

    // The fix recovers.
    source.write("Dockerfile", DOCKERFILE);
    source.write("content.txt", "v3");
    let third_revision = serves("v3").await;
    assert_ne!(third_revision, second_revision);

    stop.store(true, Ordering::SeqCst);
    let failures = client.await.unwrap();
    assert!(sent.load(Ordering::SeqCst) > 10, "the client kept asking");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during the switches: {failures:?}"
    );
    // The old revisions drained and stopped (the new one may run more than one instance).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut running = running_revisions_of(&service);
        running.dedup();
        if running == [third_revision.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old revisions still run: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_directory_without_a_dockerfile_says_what_gcloud_would_do() {
    let service = service_name("src-nodockerfile");
    let source = Source::new(&service, &[("main.py", "print('hi')\n")]);
    // A PATH without pack (the docker CLI is not needed by emulate itself).
    let done = Emulator::run_to_exit(
        &service,
        &["--source", source.path()],
        &[("PATH", "/nonexistent")],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr.contains("Building using Buildpacks"),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr
            .contains("has no Dockerfile. gcloud run deploy --source would build it with Google Cloud's buildpacks"),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains("install pack"), "{}", done.stderr);
}

#[tokio::test]
async fn a_service_yaml_runs_with_the_image_built_from_source() {
    let service = service_name("src-yaml");
    let source = Source::new(
        &service,
        &[("Dockerfile", DOCKERFILE), ("content.txt", "v1")],
    );
    let yaml = source.dir.join("service.yaml");
    std::fs::write(
        &yaml,
        format!("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: {service}}}\nspec:\n  template:\n    spec:\n      containers:\n      - image: replaced-by-the-build\n        env:\n        - {{name: FROM_YAML, value: kept}}\n"),
    )
    .unwrap();
    let yaml = yaml.to_str().unwrap();
    let emulator = Emulator::start(&service, &["-f", yaml, "--source", source.path()]).await;
    assert_eq!(file(&emulator, "/content.txt").await.body, "v1");
    let described = emulator.describe_service().await;
    let container = &described["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["image"]
            .as_str()
            .unwrap()
            .starts_with(&format!("emulate-source/{service}:")),
        "{container}"
    );
    assert_eq!(container["env"][0]["value"], "kept");
    drop(emulator);

    // Two services and one source: which one would the image be for?
    let other = service_yaml(&service_name("src-yaml-other"), "");
    let done = Emulator::run_to_exit(
        &service,
        &[
            "-f",
            yaml,
            "-f",
            other.to_str().unwrap(),
            "--source",
            source.path(),
        ],
        &[],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr.contains(
            "error: --source: builds the image of one service, but the -f files describe 2"
        ),
        "{}",
        done.stderr
    );
}
