//! Each way an image fails on Cloud Run fails here too: Cloud Run's text, the container's
//! last log lines, a local diagnosis and hint, exit code 3, and no container left behind.

use std::time::{Duration, Instant};

use crate::support::*;

const NOT_READY: &str = "is not ready and cannot serve traffic. The user-provided container failed to start and listen on the port defined provided by the PORT=8080 environment variable";

async fn fails(service: &str, args: &[&str]) -> Finished {
    let done = Emulator::run_to_exit(service, args, &[], Duration::from_secs(60)).await;
    assert_eq!(done.status.code(), Some(3), "{done:?}");
    assert!(
        containers_of(service).is_empty(),
        "a container was left behind"
    );
    done
}

#[tokio::test]
async fn an_arm64_image_is_refused_with_cloud_runs_text_before_creating_anything() {
    let service = service_name("arm64");
    let image = arm64_labelled_image();
    let began = unix_now();
    let done = fails(&service, &[image]).await;
    assert_eq!(
        containers_created_since(&service, began),
        Vec::<String>::new(),
        "a container was created for an image that cannot run"
    );
    assert!(
        done.stderr.contains(&format!("Cloud Run does not support image '{image}': Container manifest type 'application/vnd.docker.distribution.manifest.v2+json' must support amd64/linux.")),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains("linux/arm64"), "{}", done.stderr);
    assert!(
        done.stderr
            .contains(&format!("docker build --platform linux/amd64 -t {image} .")),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains("Apple Silicon"), "{}", done.stderr);
}

#[tokio::test]
async fn an_arm64_binary_in_an_amd64_image_is_an_exec_format_error() {
    let service = service_name("execfmt");
    let done = fails(&service, &[arm64_binary_image()]).await;
    assert!(done.stderr.contains(NOT_READY), "{}", done.stderr);
    assert!(done.stderr.contains("exec format error"), "{}", done.stderr);
    assert!(
        done.stderr.contains("docker build --platform linux/amd64"),
        "{}",
        done.stderr
    );
}

#[tokio::test]
async fn a_loopback_listener_is_diagnosed_while_the_probe_waits() {
    let service = service_name("loopback");
    let began = Instant::now();
    let done = fails(
        &service,
        &[
            testapp_image(),
            "--set-env-vars",
            "LISTEN_HOST=127.0.0.1",
            "--startup-timeout",
            "4s",
        ],
    )
    .await;
    assert!(
        began.elapsed() >= Duration::from_secs(4),
        "failed before the probe budget"
    );
    assert!(
        done.stderr.contains("warning: revision"),
        "no early warning: {}",
        done.stderr
    );
    assert!(
        done.stderr.contains("The app listens on 127.0.0.1:8080"),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains(NOT_READY), "{}", done.stderr);
    assert!(done.stderr.contains(&format!("Default STARTUP TCP probe failed 1 time consecutively for container \"{service}\" on port 8080. The instance was not started.")), "{}", done.stderr);
    // The last log lines of the container are shown.
    assert!(
        done.stderr.contains("testapp listening on 127.0.0.1:8080"),
        "{}",
        done.stderr
    );
}

#[tokio::test]
async fn a_listener_on_another_port_is_diagnosed() {
    let service = service_name("wrongport");
    let done = fails(
        &service,
        &[
            testapp_image(),
            "--set-env-vars",
            "LISTEN_PORT=9090",
            "--startup-timeout",
            "3s",
        ],
    )
    .await;
    assert!(done.stderr.contains(NOT_READY), "{}", done.stderr);
    assert!(
        done.stderr
            .contains("The app listens on 0.0.0.0:9090, not on port 8080"),
        "{}",
        done.stderr
    );
}

#[tokio::test]
async fn a_crash_at_start_fails_at_once_with_its_exit_code() {
    let service = service_name("crash");
    let image = testapp_image();
    let began = Instant::now();
    // A long budget: the exit must end the wait, not the budget.
    let done = fails(
        &service,
        &[
            image,
            "--set-env-vars",
            "CRASH_AT_START=3",
            "--startup-timeout",
            "120s",
        ],
    )
    .await;
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "waited for the budget"
    );
    assert!(
        done.stderr.contains("Container called exit(3)."),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains(NOT_READY), "{}", done.stderr);
    assert!(
        done.stderr.contains("crashing at start with code 3"),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr.contains("exited with code 3"),
        "{}",
        done.stderr
    );
}

#[tokio::test]
async fn an_app_that_never_listens_times_out_with_the_probe_text() {
    let service = service_name("silent");
    let done = fails(
        &service,
        &[
            testapp_image(),
            "--set-env-vars",
            "NEVER_LISTEN=1",
            "--startup-timeout",
            "2s",
        ],
    )
    .await;
    assert!(done.stderr.contains(NOT_READY), "{}", done.stderr);
    assert!(
        done.stderr
            .contains("Nothing in the container listens on any TCP port"),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains("never listening"), "{}", done.stderr);
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_is_a_clear_error() {
    let service = service_name("nopull");
    let done = Emulator::run_to_exit(
        &service,
        &["registry.invalid/nobody/nothing:1"],
        &[],
        Duration::from_secs(60),
    )
    .await;
    // Bad input (2), as `services replace` and `deploy` say for the same image.
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(
        done.stderr.contains("pulling it for linux/amd64"),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr
            .contains("Docker could not pull 'registry.invalid/nobody/nothing:1' for linux/amd64"),
        "{}",
        done.stderr
    );
    assert!(containers_of(&service).is_empty());
}
