//! CPU only during requests (request-based billing) and files that live in memory: work after
//! a response is throttled and reported, not with `--no-cpu-throttling`; a well-behaved app
//! gets no warning; files written to /tmp count toward the memory limit (Cloud Run's OOM
//! line), and files elsewhere are measured and warned about.

use std::time::Duration;

use crate::support::*;

/// Work units: some tens of milliseconds of CPU for the test app.
const UNITS: u64 = 200;

/// `worked N units in M ms` → M.
fn foreground_ms(body: &str) -> u64 {
    body.trim()
        .rsplit_once(" in ")
        .and_then(|(_, ms)| ms.trim_end_matches(" ms").parse().ok())
        .unwrap_or_else(|| panic!("not a work answer: {body:?}"))
}

/// Waits for the test app's `background work of N units took M ms` line → M.
async fn background_ms(emulator: &Emulator) -> u64 {
    let needle = format!("background work of {UNITS} units took ");
    emulator
        .wait_for_output(&needle, Duration::from_secs(60))
        .await;
    let stdout = emulator.stdout();
    let line = stdout.lines().find(|l| l.contains(&needle)).unwrap();
    line.split_once(&needle)
        .and_then(|(_, rest)| rest.trim().trim_end_matches(" ms").parse().ok())
        .unwrap_or_else(|| panic!("not a work line: {line:?}"))
}

/// The same work during a request (slowest of three) and after its response.
async fn foreground_and_background(emulator: &Emulator) -> (u64, u64) {
    let mut foreground = 0;
    for _ in 0..3 {
        let reply = get(&emulator.url(&format!("/work?units={UNITS}"))).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        foreground = foreground.max(foreground_ms(&reply.body));
    }
    let reply = get(&emulator.url(&format!("/work?units={UNITS}&after=1"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    (foreground, background_ms(emulator).await)
}

const THROTTLED: &str = "on Cloud Run this work is throttled";

#[tokio::test]
async fn work_after_the_response_is_throttled_and_reported_once() {
    let emulator = Emulator::start(&service_name("throttled"), &[testapp_image()]).await;
    let (foreground, background) = foreground_and_background(&emulator).await;
    assert!(
        background > 4 * foreground.max(5),
        "the same work took {foreground} ms during a request and {background} ms after it"
    );
    let warning = "1 log line and ";
    emulator
        .wait_for_output(THROTTLED, Duration::from_secs(15))
        .await;
    let output = format!("{}{}", emulator.stdout(), emulator.stderr());
    let line = output.lines().find(|l| l.contains(THROTTLED)).unwrap();
    assert!(
        line.contains(warning) && line.contains("ms of CPU after the response to GET /work"),
        "{line}"
    );
    assert!(line.contains("--no-cpu-throttling"), "{line}");
    // Once per revision: more of the same says nothing new.
    let reply = get(&emulator.url("/log-later?lines=1&delay_ms=100")).await;
    assert_eq!(reply.status, 200);
    emulator
        .wait_for_output("background line 1 of 1", Duration::from_secs(10))
        .await;
    let reply = get(&emulator.url("/")).await;
    assert_eq!(reply.status, 200);
    let output = format!("{}{}", emulator.stdout(), emulator.stderr());
    assert_eq!(output.matches(THROTTLED).count(), 1, "{output}");
}

#[tokio::test]
async fn with_no_cpu_throttling_work_after_the_response_runs_at_full_speed_unreported() {
    let emulator = Emulator::start(
        &service_name("unthrottled"),
        &[testapp_image(), "--no-cpu-throttling"],
    )
    .await;
    let (foreground, background) = foreground_and_background(&emulator).await;
    assert!(
        background < 4 * foreground.max(5),
        "the same work took {foreground} ms during a request and {background} ms after it"
    );
    // A throttled revision reports this within a tick (1 s) of the work's end; nothing can
    // be waited for when nothing is to come, so wait out two ticks.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let output = format!("{}{}", emulator.stdout(), emulator.stderr());
    assert!(!output.contains(THROTTLED), "{output}");
}

fn line_of<'a>(done: &'a Finished, start: &str) -> &'a str {
    done.stdout
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no {start:?} line in:\n{}\n{}", done.stdout, done.stderr))
}

#[tokio::test]
async fn smoke_warns_of_log_lines_after_a_response_and_fails_with_strict() {
    let service = service_name("smokebg");
    let request = "/log-later?lines=2&delay_ms=100";
    let args = [testapp_image(), "--service", &service, "--request", request];
    let done = smoke(&args, &[]).await;
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}\n{}",
        done.stdout,
        done.stderr
    );
    let line = line_of(&done, "WARN no work after responses");
    assert!(
        line.contains("2 log lines after the response to GET /log-later"),
        "{line}"
    );
    let strict = [&args[..], &["--strict"]].concat();
    let done = smoke(&strict, &[]).await;
    assert_eq!(
        done.status.code(),
        Some(1),
        "{}\n{}",
        done.stdout,
        done.stderr
    );
    let line = line_of(&done, "FAIL no work after responses");
    assert!(line.contains(THROTTLED), "{line}");
    assert!(containers_of(&service).is_empty());
}

#[tokio::test]
async fn smoke_of_a_well_behaved_app_finds_no_work_after_responses() {
    let service = service_name("smokequiet");
    let done = smoke(
        &[
            testapp_image(),
            "--service",
            &service,
            "--strict",
            "--request",
            "/log?message=during",
            "--request",
            &format!("/work?units={UNITS}"),
            "--request",
            "/sleep?ms=100",
        ],
        &[],
    )
    .await;
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}\n{}",
        done.stdout,
        done.stderr
    );
    line_of(&done, "PASS no work after responses");
    assert!(containers_of(&service).is_empty());
}

#[tokio::test]
async fn files_written_to_tmp_are_charged_to_the_memory_limit() {
    let emulator = Emulator::start(
        &service_name("tmpoom"),
        &[testapp_image(), "--memory", "128Mi"],
    )
    .await;
    // In memory, as on Cloud Run: 200 MiB in /tmp cannot fit in 128 MiB.
    let reply = get(&emulator.url("/write?mib=200&dir=/tmp")).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    emulator
        .wait_for_output("Container called exit(137).", Duration::from_secs(30))
        .await;
    let stdout = emulator.stdout();
    // The figure is the cgroup's recorded peak: the kernel kills at the limit.
    assert!(
        stdout.contains("Memory limit of 128 MiB exceeded with 128 MiB used."),
        "{stdout}"
    );
}

#[tokio::test]
async fn files_written_elsewhere_are_measured_and_warned_about_by_directory() {
    let emulator = Emulator::start(
        &service_name("diskfiles"),
        &[testapp_image(), "--memory", "128Mi"],
    )
    .await;
    // Outside the tmpfs mounts: the writable layer, measured every 5 s.
    let reply = get(&emulator.url("/write?mib=150&dir=/data/cache")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let needle = "Memory limit of 128 MiB exceeded with ";
    emulator
        .wait_for_output(needle, Duration::from_secs(20))
        .await;
    let output = format!("{}{}", emulator.stdout(), emulator.stderr());
    let line = output.lines().find(|l| l.contains(needle)).unwrap();
    assert!(line.contains("150 MiB of files written"), "{line}");
    assert!(line.contains("under /data/cache"), "{line}");
    // It goes on running here.
    assert_eq!(get(&emulator.url("/")).await.status, 200);
}
