//! What a developer sees of their service: one line per request (status, revision and
//! instance, or the front end's own answer), `--log-format json` as Cloud Logging entries, and
//! `emulate logs` reading the running emulator's log, live with `--follow`.

use std::time::{Duration, Instant};

use crate::emulator::Process;
use crate::support::*;

/// The lines of `text` that contain every one of `needles`.
fn lines_with<'a>(text: &'a str, needles: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .collect()
}

#[tokio::test]
async fn each_request_is_a_line_with_its_status_and_revision_and_front_end_answers_say_so() {
    let service = service_name("reqlog");
    let emulator = Emulator::start(&service, &[testapp_image()]).await;
    let created = get(&emulator.url("/status?code=201")).await;
    assert_eq!(created.status, 201);
    let failed = get(&emulator.url("/status?code=502")).await;
    let port = emulator.url("").rsplit(':').next().unwrap().to_string();
    let unknown_host = format!("nothing-{service}.localhost:{port}");
    let unknown = request(
        "GET",
        &emulator.url("/where"),
        &[("host", unknown_host.as_str())],
        Vec::new(),
        false,
    )
    .await;
    assert_eq!((failed.status, unknown.status), (502, 404));

    emulator
        .wait_for_output(
            &format!("http://{unknown_host}/where"),
            Duration::from_secs(10),
        )
        .await;
    emulator
        .wait_for_output("/status?code=502", Duration::from_secs(10))
        .await;
    let stdout = emulator.stdout();
    let revision = &created.revision;
    let ok = lines_with(&stdout, &[" GET 201 ", "/status?code=201"]);
    assert_eq!(ok.len(), 1, "{stdout}");
    assert!(
        ok[0].starts_with(&format!("{revision}/")) && ok[0].contains(" INFO "),
        "the revision/instance prefix and INFO: {}",
        ok[0]
    );
    let error = lines_with(&stdout, &[" GET 502 "]);
    assert!(error.len() == 1 && error[0].contains(" ERROR "), "{stdout}");
    let refused = lines_with(&stdout, &[" GET 404 ", &unknown_host]);
    assert_eq!(refused.len(), 1, "{stdout}");
    assert!(
        refused[0].starts_with(&format!("nothing-{service} WARNING "))
            && refused[0].contains("never reached an instance"),
        "{}",
        refused[0]
    );
}

#[tokio::test]
async fn request_log_off_prints_no_request_lines() {
    let service = service_name("reqlog-off");
    let emulator = Emulator::start(&service, &[testapp_image(), "--request-log", "off"]).await;
    assert_eq!(
        get(&emulator.url("/print?text=after-the-request"))
            .await
            .status,
        200
    );
    // The app's own line comes after the request began; the request's line would come at its
    // end, before the app's next line.
    assert_eq!(get(&emulator.url("/print?text=second")).await.status, 200);
    emulator
        .wait_for_output("second", Duration::from_secs(10))
        .await;
    let stdout = emulator.stdout();
    assert!(lines_with(&stdout, &[" GET 200 "]).is_empty(), "{stdout}");
    // `emulate logs` still has them.
    let logs = emulator.cli_ok(&["logs", &service, "--limit", "10"]).await;
    assert_eq!(
        lines_with(&logs.stdout, &["GET 200", "/print?text=second"]).len(),
        1,
        "{}",
        logs.stdout
    );
}

#[tokio::test]
async fn log_format_json_prints_cloud_logging_entries_with_http_request_and_trace() {
    let service = service_name("jsonlog");
    let emulator = Emulator::start_with_env(
        &service,
        &[testapp_image(), "--log-format", "json"],
        &[("GOOGLE_CLOUD_PROJECT", "json-project")],
    )
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let reply = request(
        "GET",
        &emulator.url("/log?severity=warning&message=structured"),
        &[
            ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
            ("user-agent", "logging-test/1"),
        ],
        Vec::new(),
        false,
    )
    .await;
    assert_eq!(reply.status, 200);
    emulator
        .wait_for_output("run.googleapis.com%2Frequests", Duration::from_secs(10))
        .await;
    // The app's own line comes through Docker's log stream, which may trail the response.
    emulator
        .wait_for_output("\"message\":\"structured\"", Duration::from_secs(10))
        .await;
    let stdout = emulator.stdout();
    let entries: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let request = entries
        .iter()
        .find(|e| e["logName"] == "projects/json-project/logs/run.googleapis.com%2Frequests")
        .expect("a request entry");
    let http = &request["httpRequest"];
    assert_eq!(http["requestMethod"], "GET");
    assert_eq!(http["status"], 200);
    assert_eq!(http["userAgent"], "logging-test/1");
    assert!(http["requestUrl"]
        .as_str()
        .unwrap()
        .ends_with("/log?severity=warning&message=structured"));
    assert!(http["latency"].as_str().unwrap().ends_with('s'));
    assert_eq!(request["severity"], "INFO");
    assert_eq!(request["resource"]["type"], "cloud_run_revision");
    assert_eq!(
        request["resource"]["labels"]["service_name"],
        service.as_str()
    );
    assert_eq!(
        request["resource"]["labels"]["revision_name"],
        reply.revision.as_str()
    );
    assert_eq!(request["resource"]["labels"]["project_id"], "json-project");
    assert_eq!(
        request["trace"],
        format!("projects/json-project/traces/{trace}")
    );
    let instance = request["labels"]["instanceId"].as_str().unwrap();
    assert_eq!(instance.len(), 8);

    // The app's structured line: severity lifted, message kept in jsonPayload, same instance.
    let structured = entries
        .iter()
        .find(|e| e["jsonPayload"]["message"] == "structured")
        .expect("the app's JSON line");
    assert_eq!(structured["severity"], "WARNING");
    assert_eq!(structured["labels"]["instanceId"], instance);
    assert!(structured["logName"]
        .as_str()
        .unwrap()
        .ends_with("%2Fstdout"));
    // The system lines are entries too.
    assert!(entries.iter().any(|e| e["logName"]
        .as_str()
        .unwrap()
        .ends_with("%2Fvarlog%2Fsystem")));
}

#[tokio::test]
async fn emulate_logs_follow_sees_new_requests_and_bad_flags_exit_2() {
    let service = service_name("follow");
    let emulator = Emulator::start(&service, &[testapp_image()]).await;
    let mut command = emulate_command();
    command
        .args([
            "logs", &service, "--follow", "--limit", "0", "--format", "json",
        ])
        .env("EMULATE_ADMIN", emulator.admin_addr().to_string());
    let mut follower = Process::spawn(&mut command, usize::MAX).unwrap();
    // The follower subscribes when its request arrives: ask until it shows one request, then
    // a marked one must follow.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !follower.stdout().contains("%2Frequests") {
        assert!(
            Instant::now() < deadline,
            "the follower saw nothing:\n{}",
            follower.stderr()
        );
        get(&emulator.url("/echo?warm")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    get(&emulator.url("/status?code=418&marker=followed")).await;
    while !follower.stdout().contains("marker=followed") {
        assert!(
            Instant::now() < deadline,
            "no marked request:\n{}",
            follower.stdout()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = follower
        .stdout()
        .lines()
        .find(|l| l.contains("marker=followed"))
        .unwrap()
        .to_string();
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["httpRequest"]["status"], 418);
    assert_eq!(entry["severity"], "WARNING");
    assert!(follower.exit_status().is_none(), "--follow keeps reading");
    assert!(!follower.stop(), "the follower ends on Ctrl-C");

    let bad = emulator.cli(&["logs", "--severity", "loud"]).await;
    assert_eq!(bad.status.code(), Some(2), "{}", bad.stderr);
    assert!(bad.stderr.contains("--severity"), "{}", bad.stderr);
}
