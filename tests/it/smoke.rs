//! `emulate smoke`: every exit code and preflight finding, the checks file, JSON and JUnit
//! output, and nothing left behind.

use std::time::Duration;

use crate::support::*;

/// Asserts the exit code, showing `context` and all the output when it differs.
fn assert_exit(done: &Finished, code: i32, context: &str) {
    assert_eq!(
        done.status.code(),
        Some(code),
        "{context}\n{}\n{}",
        done.stdout,
        done.stderr
    );
}

fn assert_line(done: &Finished, line: &str) {
    assert!(
        done.stdout
            .lines()
            .any(|l| l.trim_start().starts_with(line)),
        "no line starting with {line:?} in:\n{}\n{}",
        done.stdout,
        done.stderr
    );
}

fn nothing_left(service: &str) {
    assert!(
        containers_of(service).is_empty(),
        "emulate smoke left containers of {service} behind"
    );
}

#[tokio::test]
async fn a_good_image_passes_with_exit_0_and_a_junit_report() {
    let service = service_name("smokeok");
    let junit = std::env::temp_dir().join(format!("{service}.xml"));
    let done = smoke(
        &[
            testapp_image(),
            "--service",
            &service,
            "--request",
            "GET /echo",
            "--request",
            "/status?code=204",
            "--expect-status",
            "2xx",
            "--junit",
            junit.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_exit(&done, 0, "");
    for check in [
        "PASS image is linux/amd64",
        "PASS no reserved env names",
        "PASS listens on 0.0.0.0:$PORT",
        "PASS starts within the startup probe's budget",
        "PASS no crash or OOM kill",
        "PASS shuts down within 10 s of SIGTERM",
        "PASS no work after responses",
        "PASS GET /echo",
        "PASS GET /status?code=204",
    ] {
        assert_line(&done, check);
    }
    assert!(
        done.stdout.contains("9 passed, 0 failed"),
        "{}",
        done.stdout
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).expect("the JUnit file is XML");
    let suite = doc
        .descendants()
        .find(|n| n.has_tag_name("testsuite"))
        .unwrap();
    assert_eq!(suite.attribute("tests"), Some("9"));
    assert_eq!(suite.attribute("failures"), Some("0"));
    let cases: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .filter_map(|n| n.attribute("name"))
        .collect();
    assert!(cases.contains(&"GET /echo"), "{cases:?}");
    std::fs::remove_file(junit).unwrap();
    nothing_left(&service);
}

#[tokio::test]
async fn a_failing_check_exits_1_with_its_reason_in_json_and_junit() {
    let service = service_name("smoke500");
    let junit = std::env::temp_dir().join(format!("{service}.xml"));
    let done = smoke(
        &[
            testapp_image(),
            "--service",
            &service,
            "--request",
            "/status?code=500",
            "--format",
            "json",
            "--junit",
            junit.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_exit(&done, 1, "");
    let report: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(report["exitCode"], 1);
    assert_eq!(report["failed"], 1);
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "GET /status?code=500")
        .unwrap();
    assert_eq!(check["outcome"], "failed");
    // The message must quote the status the app answered, not only the check's own name.
    assert!(
        check["message"]
            .as_str()
            .unwrap()
            .starts_with("status 500, expected "),
        "{check}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let failures: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("failure"))
        .collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(
        failures[0].parent().unwrap().attribute("name"),
        Some("GET /status?code=500")
    );
    std::fs::remove_file(junit).unwrap();
    nothing_left(&service);
}

#[tokio::test]
async fn preflight_findings_fail_with_cloud_runs_words() {
    struct Case {
        args: Vec<&'static str>,
        exit: i32,
        line: &'static str,
        text: &'static str,
    }
    let cases = [
        Case {
            args: vec![arm64_labelled_image()],
            exit: 3,
            line: "FAIL image is linux/amd64",
            text: "must support amd64/linux",
        },
        Case {
            args: vec![testapp_image(), "--set-env-vars", "K_SERVICE=x"],
            exit: 1,
            line: "FAIL no reserved env names",
            text: "'K_SERVICE' is reserved",
        },
        Case {
            args: vec![
                testapp_image(),
                "--set-env-vars",
                "LISTEN_HOST=127.0.0.1",
                // Long enough for the app to be listening (on the wrong address) when the
                // budget runs out and the diagnosis is made, on a loaded machine too.
                "--startup-timeout",
                "8s",
            ],
            exit: 3,
            line: "FAIL listens on 0.0.0.0:$PORT",
            text: "The app listens on 127.0.0.1:8080",
        },
        Case {
            args: vec![testapp_image(), "--set-env-vars", "CRASH_AT_START=5"],
            exit: 3,
            line: "FAIL no crash or OOM kill",
            text: "Container called exit(5).",
        },
        Case {
            args: vec![
                testapp_image(),
                "--set-env-vars",
                "STARTUP_DELAY_MS=6000",
                "--startup-timeout",
                "2s",
            ],
            exit: 3,
            line: "FAIL starts within the startup probe's budget",
            text: "is not ready and cannot serve traffic",
        },
        Case {
            args: vec![
                testapp_image(),
                "--memory",
                "128Mi",
                "--request",
                "/alloc?mib=400",
            ],
            exit: 1,
            line: "FAIL no crash or OOM kill",
            text: "killed for exceeding the memory limit: Memory limit of 128 MiB exceeded with 128 MiB used.",
        },
    ];
    for case in cases {
        let service = service_name("preflight");
        let mut args = case.args.clone();
        args.extend(["--service", service.as_str()]);
        let done = smoke(&args, &[]).await;
        assert_exit(&done, case.exit, &format!("{args:?}"));
        assert_line(&done, case.line);
        assert!(
            done.stdout.contains(case.text),
            "{args:?}: no {:?} in\n{}",
            case.text,
            done.stdout
        );
        nothing_left(&service);
    }
}

#[tokio::test]
async fn ignoring_sigterm_is_a_warning_not_a_failure() {
    let service = service_name("smoketerm");
    let done = smoke(
        &[
            testapp_image(),
            "--service",
            &service,
            "--set-env-vars",
            "IGNORE_SIGTERM=1",
        ],
        &[],
    )
    .await;
    assert_exit(&done, 0, "");
    assert_line(&done, "WARN shuts down within 10 s of SIGTERM");
    assert!(done.stdout.contains("were SIGKILLed"), "{}", done.stdout);
    nothing_left(&service);
}

/// A PID 1 without a SIGTERM handler is found at start: the finding is a warning, and the
/// smoke does not wait out the 10 s grace to learn it (`IGNORE_SIGTERM`, a handler that does
/// nothing, still takes the 10 s: that cannot be known in advance).
#[tokio::test]
async fn a_pid_1_without_a_sigterm_handler_is_reported_without_waiting_10_s() {
    let service = service_name("smokedeaf");
    let started = std::time::Instant::now();
    let done = smoke(
        &[
            testapp_image(),
            "--service",
            &service,
            "--set-env-vars",
            "NO_SIGNAL_HANDLERS=1",
        ],
        &[],
    )
    .await;
    let took = started.elapsed();
    assert_exit(&done, 0, "");
    assert_line(&done, "WARN shuts down within 10 s of SIGTERM");
    assert!(
        done.stdout
            .contains("does not handle SIGTERM (found at start)"),
        "{}",
        done.stdout
    );
    assert!(took < Duration::from_secs(8), "the smoke took {took:?}");
    nothing_left(&service);
}

/// The named check of a JSON report.
fn check_of<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

/// A check's evidence lines.
fn evidence(check: &serde_json::Value) -> Vec<&str> {
    check["evidence"]
        .as_array()
        .unwrap_or_else(|| panic!("no evidence in {check}"))
        .iter()
        .map(|line| line.as_str().unwrap())
        .collect()
}

/// Asserts a check passed, showing it and the emulator's output when it did not.
fn assert_passed(done: &Finished, check: &serde_json::Value) {
    assert_eq!(check["outcome"], "passed", "{check:#}\n{}", done.stderr);
}

#[tokio::test]
async fn a_checks_file_runs_requests_and_scenarios() {
    let service = service_name("smokefile");
    let file = std::env::temp_dir().join(format!("{service}-checks.yaml"));
    let image = testapp_image();
    // The limits are far above what the checks take, even on a loaded machine: these checks
    // prove the scenarios work; their failing paths have tests of their own.
    std::fs::write(
        &file,
        format!(
            r#"checks:
  - name: echo knows the service
    request: {{path: /echo, headers: {{X-Test: yes}}}}
    expect:
      status: 200
      json: {{"$.env.K_SERVICE": "{service}", "$.headers.x-test[0]": "yes"}}
      headers: {{Content-Type: application/json}}
      bodyMatches: 'K_REVISION'
      latencyBelow: 60s
  - name: cold start
    coldStart: {{firstByteBelow: 60s}}
    request: {{path: /echo}}
  - name: burst
    concurrent: {{requests: 30}}
    request: {{path: "/together?n=30&ms=20000"}}
    expect: {{status: 200, bodyContains: 30 together}}
  - name: survives a revision switch
    revisionSwitch: {{image: {image}, requestsPerSecond: 40}}
    request: {{path: /echo}}
    expect: {{status: 200}}
"#
        ),
    )
    .unwrap();
    let done = smoke(
        &[
            image,
            "--service",
            &service,
            // One instance serves everything, so the burst meets at one `/together`.
            "--max-instances",
            "1",
            "--checks",
            file.to_str().unwrap(),
            "--format",
            "json",
        ],
        &[],
    )
    .await;
    assert_exit(&done, 0, "");
    let report: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
    assert_passed(&done, check_of(&report, "echo knows the service"));

    // The cold start: nothing ran before the request, and one instance was started for it.
    let cold = check_of(&report, "cold start");
    assert_passed(&done, cold);
    let lines = evidence(cold);
    assert_eq!(lines[0], "instances before the request: 0", "{cold}");
    assert!(
        lines[1].starts_with("instances started for it: 1, first byte after "),
        "{cold}"
    );
    // And the emulator's own log says the instance was stopped for it.
    assert!(
        done.stderr
            .contains("stopped (scaled to zero for a cold-start check)"),
        "{}",
        done.stderr
    );

    // `/together` answers 200 only when all 30 are in the app at once.
    let burst = check_of(&report, "burst");
    assert_passed(&done, burst);
    assert_eq!(evidence(burst), ["in flight at once: 30 of 30"], "{burst}");

    // The switch: from revision 1 to revision 2, which then served every request.
    let switch = check_of(&report, "survives a revision switch");
    assert_passed(&done, switch);
    let lines = evidence(switch);
    assert!(
        lines[0].starts_with("requests during the switch: "),
        "{switch}"
    );
    assert!(lines[0].ends_with(", failed: 0"), "{switch}");
    let (old, new) = lines[1]
        .strip_prefix("the switch from ")
        .and_then(|rest| rest.split_once(" to "))
        .unwrap_or_else(|| panic!("{switch}"));
    assert!(old.starts_with(&format!("{service}-00001-")), "{switch}");
    assert!(new.starts_with(&format!("{service}-00002-")), "{switch}");
    let during: u64 = lines[2]
        .strip_prefix(&format!("{new} served "))
        .and_then(|rest| rest.strip_suffix(" requests while the load went on"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{switch}"));
    assert!(during >= 40, "{switch}");
    assert_eq!(
        lines[3],
        format!("{new} served 5 of 5 requests after the switch"),
        "{switch}"
    );
    nothing_left(&service);

    // A bad field in the checks file: its path, exit 2, nothing started.
    std::fs::write(&file, "checks:\n  - name: x\n    expect: {status: 2xz}\n").unwrap();
    let done = smoke(
        &[
            image,
            "--service",
            &service,
            "--checks",
            file.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr.contains("checks[0].expect.status"),
        "{}",
        done.stderr
    );
    nothing_left(&service);
    std::fs::remove_file(file).unwrap();
}

#[tokio::test]
async fn docker_unavailable_exits_4() {
    let done = smoke(
        &["some-image"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    )
    .await;
    assert_eq!(done.status.code(), Some(4), "{}", done.stderr);
    assert!(
        done.stderr.contains("Cannot reach the Docker engine"),
        "{}",
        done.stderr
    );
}

#[tokio::test]
async fn an_http_startup_probe_must_pass_before_traffic() {
    // Attempts are a second apart: the passing probe has 20, so a slow start on a loaded
    // machine still passes; the failing one 5, so the app listens (and answers 503) by the
    // last one.
    for (path, exit, attempts) in [("/healthz", 0, 20), ("/status?code=503", 3, 5)] {
        let service = service_name("startupprobe");
        let file = service_yaml(
            &service,
            &format!("        startupProbe:\n          httpGet: {{path: \"{path}\"}}\n          periodSeconds: 1\n          failureThreshold: {attempts}\n"),
        );
        let done = smoke(&["-f", file.to_str().unwrap()], &[]).await;
        assert_exit(&done, exit, path);
        if exit == 0 {
            // Cloud Run's first attempt is at start, before the app listens, so it is
            // credited to the first or the second, 1 s later.
            let line = done
                .stderr
                .lines()
                .find(|l| l.contains("STARTUP HTTP probe succeeded after"))
                .unwrap_or_else(|| panic!("no probe line in\n{}", done.stderr));
            assert!(
                line.ends_with(&format!(
                    "for container \"{service}\" on port 8080 path {path}."
                )),
                "{line}"
            );
        } else {
            // The app listens; it is the probe that never passed, 5 times 1 s apart.
            assert_line(&done, "PASS listens on 0.0.0.0:$PORT");
            assert_line(&done, "FAIL starts within the startup probe's budget");
            for text in [
                "STARTUP HTTP probe failed 5 times consecutively",
                "is not ready and cannot serve traffic",
                "the last attempt answered 503 Service Unavailable",
            ] {
                assert!(
                    done.stdout.contains(text),
                    "no {text:?} in\n{}",
                    done.stdout
                );
            }
        }
        std::fs::remove_file(file).unwrap();
        nothing_left(&service);
    }
}

#[tokio::test]
async fn a_junit_file_that_cannot_be_written_is_refused_before_the_run() {
    let service = service_name("smokejunit");
    let done = smoke(
        &[
            testapp_image(),
            "--service",
            &service,
            "--junit",
            "/nonexistent-emulate-dir/report.xml",
        ],
        &[],
    )
    .await;
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(
        done.stderr
            .contains("--junit: cannot write /nonexistent-emulate-dir/report.xml"),
        "{}",
        done.stderr
    );
    nothing_left(&service);
}

#[tokio::test]
async fn the_quick_flags_send_headers_and_a_body_and_check_body_and_headers() {
    // --header and --data reach the app (its /echo reports them), and the expectations hold.
    let service = service_name("smokeflags");
    let request = [
        "--request",
        "POST /echo",
        "--header",
        "X-Smoke: hello",
        "--data",
        "twelve bytes",
    ];
    let mut args = vec![testapp_image(), "--service", &service, "--format", "json"];
    args.extend(request);
    args.extend([
        "--expect-body-contains",
        r#""x-smoke":["hello"]"#,
        "--expect-body-contains",
        r#""body_len":12"#,
        "--expect-header",
        "Content-Type: application/json",
    ]);
    let done = smoke(&args, &[]).await;
    assert_exit(&done, 0, "");
    let report: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
    assert_passed(&done, check_of(&report, "POST /echo"));
    nothing_left(&service);

    // The same request against expectations it does not meet: each says what it found.
    let service = service_name("smokeflags");
    let mut args = vec![testapp_image(), "--service", &service, "--format", "json"];
    args.extend(request);
    args.extend([
        "--expect-body-contains",
        r#""x-smoke":["bye"]"#,
        "--expect-body-contains",
        r#""body_len":13"#,
        "--expect-header",
        "Content-Type: text/html",
        "--expect-header",
        "X-Missing: anything",
    ]);
    let done = smoke(&args, &[]).await;
    assert_exit(&done, 1, "");
    let report: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
    let check = check_of(&report, "POST /echo");
    assert_eq!(check["outcome"], "failed", "{check}");
    assert_eq!(
        check["message"], r#"body does not contain "\"x-smoke\":[\"bye\"]""#,
        "{check}"
    );
    assert_eq!(
        check["details"],
        serde_json::json!([
            r#"body does not contain "\"body_len\":13""#,
            r#"header content-type is "application/json", expected it to contain "text/html""#,
            r#"header x-missing is missing, expected it to contain "anything""#,
        ]),
        "{check}"
    );
    nothing_left(&service);
}

#[tokio::test]
async fn the_failing_paths_of_a_checks_file_say_what_they_found() {
    let service = service_name("smokefails");
    let file = std::env::temp_dir().join(format!("{service}-checks.yaml"));
    std::fs::write(
        &file,
        r#"checks:
  - name: regex
    request: /echo
    expect: {bodyMatches: 'K_REVISION=nope'}
  - name: json value
    request: /echo
    expect: {json: {"$.env.K_SERVICE": "other"}}
  - name: json path
    request: /echo
    expect: {json: {"$.nothing.here": 1}}
  - name: json of text
    request: /sleep?ms=0
    expect: {json: {"$.x": 1}}
  - name: too slow
    request: /sleep?ms=400
    expect: {latencyBelow: 100ms}
"#,
    )
    .unwrap();
    let done = smoke(
        &[
            testapp_image(),
            "--service",
            &service,
            "--checks",
            file.to_str().unwrap(),
            "--format",
            "json",
        ],
        &[],
    )
    .await;
    assert_exit(&done, 1, "");
    let report: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(report["failed"], 5, "{report:#}");
    let message = |name: &str| {
        let check = check_of(&report, name);
        assert_eq!(check["outcome"], "failed", "{check}");
        check["message"].as_str().unwrap().to_string()
    };
    assert_eq!(message("regex"), "body does not match /K_REVISION=nope/");
    assert_eq!(
        message("json value"),
        format!(r#"$.env.K_SERVICE is "{service}", expected "other""#)
    );
    assert_eq!(
        message("json path"),
        "$.nothing.here is missing, expected 1"
    );
    let not_json = message("json of text");
    assert!(
        not_json.starts_with("body is not JSON (")
            && not_json.ends_with("), so $.x cannot be checked"),
        "{not_json}"
    );
    // The app sleeps 400 ms, so the latency is over 100 ms however loaded the machine is.
    let slow = message("too slow");
    assert!(
        slow.starts_with("latency ") && slow.ends_with(", expected below 100 ms"),
        "{slow}"
    );
    std::fs::remove_file(file).unwrap();
    nothing_left(&service);
}

#[tokio::test]
async fn a_junit_file_that_cannot_be_written_after_the_run_turns_a_pass_into_exit_1() {
    // The path is a directory: it passes the check before the run (its parent exists), and
    // the write after it fails.
    let service = service_name("smokejunitdir");
    let dir = std::env::temp_dir().join(format!("{service}-report.xml"));
    std::fs::create_dir(&dir).unwrap();
    let done = smoke(
        &[
            testapp_image(),
            "--service",
            &service,
            "--junit",
            dir.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_exit(&done, 1, "");
    // Every check passed: it is the report that failed.
    assert!(
        done.stdout.contains("8 passed, 0 failed"),
        "{}",
        done.stdout
    );
    assert!(
        done.stderr
            .contains(&format!("error: --junit: cannot write {}: ", dir.display())),
        "{}",
        done.stderr
    );
    std::fs::remove_dir(dir).unwrap();
    nothing_left(&service);
}

/// Kills the process and removes the service's containers if a test fails before it ends.
struct Running {
    child: std::process::Child,
    service: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for id in containers_of(&self.service) {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &id])
                .output();
        }
    }
}

#[tokio::test]
async fn ctrl_c_during_a_check_exits_130_and_removes_everything() {
    use std::io::BufRead;
    require_docker();
    let service = service_name("smokeint");
    let child = emulate_command()
        .args(["smoke", testapp_image(), "--service", &service])
        .args(["--request", "/sleep?ms=120000"])
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running {
        child,
        service: service.clone(),
    };
    // The check is under way once the app says it sleeps (its log goes to stderr).
    let stderr = running.child.stderr.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("sleeping 120000 ms") {
                let _ = lines.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let reached = tokio::task::spawn_blocking(move || seen.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(reached.is_ok(), "the check never reached the app");
    let status = std::process::Command::new("kill")
        .args(["-INT", &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Stopping the instance takes its SIGTERM grace (10 s) at most.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let exit = loop {
        if let Some(exit) = running.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "emulate smoke still running 40 s after Ctrl-C"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stderr = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("Interrupted: removing everything this smoke test started."),
        "{stderr}"
    );
    nothing_left(&service);
}
