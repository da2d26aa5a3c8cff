//! `GET /metrics` on the admin API: Cloud Run's metrics in Prometheus' text format, counted
//! from the requests the front end really answered.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::*;

/// `GET /metrics` with the run's token: (status, content type, body).
async fn scrape(emulator: &Emulator) -> (u16, String, String) {
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        emulator.admin_addr(),
        emulator.admin_token()
    );
    let reply = raw_http(emulator.admin_addr(), &request).await;
    let content_type = reply
        .head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    (reply.status, content_type, reply.body)
}

/// The samples of `metric` whose labels include every `(name, value)` of `having`, keyed by
/// the value of label `by`.
fn samples_by(
    text: &str,
    metric: &str,
    having: &[(&str, &str)],
    by: &str,
) -> BTreeMap<String, f64> {
    let mut found = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.rsplit_once("} ")) else {
            continue;
        };
        let labels: BTreeMap<&str, &str> = labels
            .split("\",")
            .filter_map(|pair| {
                let (k, v) = pair.split_once("=\"")?;
                Some((k, v.trim_end_matches('"')))
            })
            .collect();
        if having.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            if let Some(key) = labels.get(by) {
                found.insert(key.to_string(), value.parse().unwrap());
            }
        }
    }
    found
}

#[tokio::test]
async fn metrics_count_requests_by_revision_after_a_traffic_split() {
    let emulator = Emulator::start(&service_name("metrics"), &[testapp_image()]).await;
    emulator
        .cli_ok(&["deploy", &emulator.service, "--update-env-vars", "V=2"])
        .await;
    let names: Vec<String> = emulator
        .revision_list()
        .await
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let (new, old) = (&names[0], &names[1]);
    emulator
        .cli_ok(&[
            "services",
            "update-traffic",
            &emulator.service,
            "--to-revisions",
            &format!("{old}=50,{new}=50"),
        ])
        .await;

    let mut sent: BTreeMap<String, f64> = BTreeMap::new();
    for _ in 0..40 {
        let reply = get(&emulator.url("/echo")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        *sent.entry(reply.revision).or_default() += 1.0;
    }
    // Both revisions answered (each with 1 - 2^-39 certainty at 50%).
    assert_eq!(sent.len(), 2, "{sent:?}");
    // A request the front end answers by itself: an unknown path on no service is a 404
    // without a revision.
    let missing = request(
        "GET",
        &emulator.url("/"),
        &[("host", "no-such-service.localhost")],
        Vec::new(),
        false,
    )
    .await;
    assert_eq!(missing.status, 404);

    // The counters follow the event stream: wait for them to catch up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, content_type, text) = loop {
        let (status, content_type, text) = scrape(&emulator).await;
        assert_eq!(status, 200, "{text}");
        let counted = samples_by(
            &text,
            "run_googleapis_com:request_count",
            &[
                ("service_name", &emulator.service),
                ("response_code_class", "2xx"),
            ],
            "revision_name",
        );
        if counted == sent {
            break (status, content_type, text);
        }
        assert!(
            Instant::now() < deadline,
            "counted {counted:?}, sent {sent:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    // The latency histogram saw the same requests.
    let latencies = samples_by(
        &text,
        "run_googleapis_com:request_latencies_count",
        &[("service_name", &emulator.service)],
        "revision_name",
    );
    assert_eq!(latencies, sent, "{text}");
    // The 404 is counted, with no service and no revision.
    assert!(
        text.lines()
            .any(|l| l.starts_with("run_googleapis_com:request_count{")
                && l.contains("response_code=\"404\"")
                && !l.contains("revision_name")),
        "{text}"
    );
    // Each revision has one ready instance and its startups observed; billable time includes
    // them.
    for revision in [old, new] {
        let states = samples_by(
            &text,
            "run_googleapis_com:container_instance_count",
            &[("revision_name", revision)],
            "state",
        );
        assert_eq!(
            states.get("active").unwrap() + states.get("idle").unwrap(),
            1.0,
            "{revision}: {states:?}"
        );
        let startups = samples_by(
            &text,
            "run_googleapis_com:container_startup_latencies_count",
            &[("revision_name", revision)],
            "service_name",
        );
        // One per instance that passed its startup probe (the old revision started twice: it
        // was retired when the new one took all traffic, and started again for the split).
        let passed = emulator
            .stdout()
            .lines()
            .filter(|l| {
                l.starts_with(revision.as_str()) && l.contains("STARTUP") && l.contains("succeeded")
            })
            .count();
        assert!(passed >= 1);
        assert_eq!(
            startups.values().sum::<f64>(),
            passed as f64,
            "{revision}: {text}"
        );
        let billable = samples_by(
            &text,
            "run_googleapis_com:container_billable_instance_time",
            &[("revision_name", revision)],
            "service_name",
        );
        assert!(billable.values().sum::<f64>() > 0.0, "{text}");
        // The engine's stats: memory in use, within the 512 MiB limit.
        let memory = samples_by(
            &text,
            "run_googleapis_com:container_memory_utilizations",
            &[("revision_name", revision)],
            "instance_id",
        );
        assert_eq!(memory.len(), 1, "{text}");
        let fraction = *memory.values().next().unwrap();
        assert!(fraction > 0.0 && fraction < 1.0, "{fraction}");
        let cpu = samples_by(
            &text,
            "emulate_container_cpu_seconds_total",
            &[("revision_name", revision)],
            "instance_id",
        );
        assert_eq!(cpu.len(), 1, "{text}");
    }

    // Without the token, nothing.
    let anonymous = raw_http(
        emulator.admin_addr(),
        &format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            emulator.admin_addr()
        ),
    )
    .await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
}
