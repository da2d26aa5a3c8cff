//! Stopping: Ctrl-C drains and removes, a container that ignores SIGTERM is killed after the
//! grace period, and a second Ctrl-C stops at once. (Reaping a killed emulator's containers is
//! tested in `tests/serial`, where no other emulator can reap them first.) The library's
//! `Emulator` is started and stopped in process too, as `run` and `smoke` start it.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test]
async fn ctrl_c_lets_in_flight_requests_finish_then_removes_the_container() {
    let mut emulator = Emulator::start(&service_name("drain"), &[testapp_image()]).await;
    let url = emulator.url("/sleep?ms=1500");
    let in_flight = tokio::spawn(async move { get(&url).await });
    emulator
        .wait_for_output("sleeping 1500 ms", Duration::from_secs(10))
        .await;
    emulator.signal("INT");
    let reply = in_flight.await.unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "slept 1500 ms\n")
    );
    let done = emulator.wait(Duration::from_secs(20)).await;
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    assert!(done.stderr.contains("Shutting down"), "{}", done.stderr);
    assert!(
        done.stdout.contains("exited with code 0"),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout.contains("received SIGTERM, shutting down"),
        "{}",
        done.stdout
    );
    assert!(containers_of(&emulator.service).is_empty());
}

#[tokio::test]
async fn a_container_ignoring_sigterm_is_killed_after_10_seconds() {
    let mut emulator = Emulator::start(
        &service_name("stubborn"),
        &[testapp_image(), "--set-env-vars", "IGNORE_SIGTERM=1"],
    )
    .await;
    let began = Instant::now();
    emulator.signal("TERM");
    let done = emulator.wait(Duration::from_secs(30)).await;
    let took = began.elapsed();
    // SIGTERM is a clean stop, as Ctrl-C is: exit 0 (README, "Exit codes").
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(30),
        "took {took:?}"
    );
    assert!(
        done.stdout
            .contains("did not exit within 10 s of SIGTERM and was sent SIGKILL"),
        "{}",
        done.stdout
    );
    assert!(containers_of(&emulator.service).is_empty());
}

#[tokio::test]
async fn a_second_ctrl_c_stops_at_once_and_still_removes_the_container() {
    let mut emulator = Emulator::start(
        &service_name("impatient"),
        &[testapp_image(), "--set-env-vars", "IGNORE_SIGTERM=1"],
    )
    .await;
    let began = Instant::now();
    emulator.signal("INT");
    // The second Ctrl-C must come while the first one's graceful stop is under way.
    emulator
        .wait_for_output("Shutting down:", Duration::from_secs(10))
        .await;
    emulator.signal("INT");
    let done = emulator.wait(Duration::from_secs(15)).await;
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "took {:?}",
        began.elapsed()
    );
    assert!(done.stderr.contains("Stopped at once"), "{}", done.stderr);
    assert!(containers_of(&emulator.service).is_empty());
}

#[tokio::test]
async fn ctrl_c_while_the_probe_waits_removes_the_container() {
    let service = service_name("early");
    let mut emulator = Emulator::spawn_run(
        &service,
        &[testapp_image(), "--set-env-vars", "NEVER_LISTEN=1"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !emulator.stdout().contains("never listening") {
        assert!(Instant::now() < deadline, "{}", emulator.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    emulator.signal("INT");
    let done = emulator.wait(Duration::from_secs(15)).await;
    assert_eq!(done.status.code(), Some(130), "{done:?}");
    assert!(
        done.stderr
            .contains("Interrupted; the container was removed."),
        "{}",
        done.stderr
    );
    assert!(containers_of(&service).is_empty());
}

#[tokio::test]
async fn an_instance_over_its_memory_limit_is_reported_and_replaced() {
    let emulator = Emulator::start(
        &service_name("oom"),
        &[testapp_image(), "--memory", "128Mi"],
    )
    .await;
    let reply = get(&emulator.url("/alloc?mib=400")).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&emulator.url("/")).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "no new instance: {}",
            emulator.stdout()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stdout = emulator.stdout();
    assert!(
        stdout.contains("Memory limit of 128 MiB exceeded with 128 MiB used."),
        "{stdout}"
    );
    assert!(stdout.contains("Container called exit(137)."), "{stdout}");
}

#[tokio::test]
async fn a_hangup_with_its_output_closed_still_removes_the_container() {
    use std::io::BufRead;
    require_docker();
    let service = service_name("hangup");
    let mut child = emulate_command()
        .args(["run", testapp_image(), "--service", &service])
        .args(["--listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env("NO_COLOR", "1")
        .spawn()
        .unwrap();
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    // Read until it serves, then close both pipes, as `emulate run IMAGE 2>&1 | head` does.
    let served = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.starts_with("Admin API:"))
    });
    let served = tokio::time::timeout(Duration::from_secs(60), served).await;
    assert!(matches!(served, Ok(Ok(true))), "emulate did not serve");
    drop(stdout);
    assert_eq!(running_containers_of(&service), 1);
    // The terminal it ran in closes: SIGHUP, and every line it writes now fails.
    let hangup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "emulate did not exit after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(status.code(), Some(101), "emulate panicked");
    assert!(
        containers_of(&service).is_empty(),
        "the container was left behind"
    );
}

#[tokio::test]
async fn the_library_starts_serves_and_stops_an_emulator_in_process() {
    use emulate::app::{Emulator, EmulatorConfig, Shutdown};
    use emulate::events::{Event, SystemKind};
    let service = service_name("inproc");
    let yaml = std::fs::read_to_string(service_yaml(&service, "")).unwrap();
    let document = emulate::control::knative::parse_service_yaml(&yaml).unwrap();
    let mut emulator = Emulator::start(EmulatorConfig::default())
        .await
        .expect("the emulator starts");
    let mut events = emulator.events().subscribe();
    let applied = emulator.platform().apply(document).await;
    assert!(applied.is_ok(), "the deploy failed: {:?}", applied.err());
    let revision = applied.unwrap().created_revision.expect("a revision");
    let said = received(&mut events);
    assert!(
        said.iter()
            .any(|e| matches!(e, Event::CreatingRevision { revision: r, .. } if *r == revision)),
        "{said:?}"
    );
    assert!(
        said.iter().any(|e| matches!(e, Event::System { kind: SystemKind::ProbePassed, revision: r, .. } if *r == revision)),
        "{said:?}"
    );
    emulator.serve();
    let url = format!("http://{}/echo", emulator.listen_addr());
    let host = format!("{service}.localhost");
    let reply = request("GET", &url, &[("host", host.as_str())], Vec::new(), false).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.revision.starts_with(&service), "{}", reply.revision);
    emulator.shutdown(Shutdown::Graceful).await;
    assert!(containers_of(&service).is_empty());
    // The shutdown returned after the instance's stop, which it said.
    let said = received(&mut events);
    assert!(
        said.iter().any(|e| matches!(e, Event::System { kind: SystemKind::Stopped, revision: r, .. } if *r == revision)),
        "{said:?}"
    );
}

/// The events published so far.
fn received(
    events: &mut tokio::sync::broadcast::Receiver<emulate::events::Event>,
) -> Vec<emulate::events::Event> {
    std::iter::from_fn(|| events.try_recv().ok()).collect()
}

/// An app whose PID 1 has no SIGTERM handler is found out when it becomes ready (once per
/// revision), and a Ctrl-C kills it at once instead of waiting Cloud Run's 10 s; one that
/// handles SIGTERM gets no such warning.
#[tokio::test]
async fn a_pid_1_without_a_sigterm_handler_is_found_at_start_and_killed_at_once_on_ctrl_c() {
    let service = service_name("deaf");
    let mut emulator = Emulator::start(
        &service,
        &[testapp_image(), "--set-env-vars", "NO_SIGNAL_HANDLERS=1"],
    )
    .await;
    emulator
        .wait_for_output("does not handle SIGTERM", Duration::from_secs(10))
        .await;
    assert_eq!(
        emulator.stderr().matches("does not handle SIGTERM").count(),
        1,
        "{}",
        emulator.stderr()
    );
    emulator.signal("INT");
    let started = Instant::now();
    let done = emulator.wait(Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        took < Duration::from_secs(8),
        "the stop waited for the grace period: {took:?}"
    );
    assert!(
        done.stdout
            .contains("its PID 1 ignores SIGTERM, so it is killed at once"),
        "{}",
        done.stdout
    );

    let handled = service_name("hears");
    let emulator = Emulator::start(&handled, &[testapp_image()]).await;
    assert_eq!(get(&emulator.url("/echo")).await.status, 200);
    // The second look comes a second after ready.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !emulator.stderr().contains("does not handle SIGTERM"),
        "{}",
        emulator.stderr()
    );
}
