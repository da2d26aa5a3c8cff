use std::time::Duration;

use super::*;
use crate::instances::pool::InstanceSnapshot;
use crate::metrics::{Histogram, RequestKey, RevisionKey, STARTUP_BUCKETS_MS};

fn instance(id: &str, state: InstanceState, in_flight: u32) -> InstanceSnapshot {
    InstanceSnapshot {
        id: id.to_string(),
        container_id: format!("container-{id}"),
        state,
        in_flight,
        age: Duration::from_secs(10),
    }
}

fn pool(revision: &str, instances: Vec<InstanceSnapshot>) -> PoolSnapshot {
    let mut startup_latencies = Histogram::new(STARTUP_BUCKETS_MS);
    startup_latencies.observe(300.0);
    PoolSnapshot {
        service: "hello".into(),
        revision: revision.into(),
        instances,
        waiting: 0,
        requests: 0,
        cold_starts: 1,
        last_cold_start: None,
        average_cold_start: None,
        rejected: 0,
        last_startup: None,
        crashes: 0,
        oom_kills: 0,
        killed_after_grace: 0,
        startup_latencies,
        billable: Duration::from_millis(1500),
        cpu_millis: 1000,
        memory_bytes: 512 << 20,
        ignores_sigterm: 0,
    }
}

/// The value of the one sample line that starts with `prefix`.
fn value(text: &str, prefix: &str) -> f64 {
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(lines.len(), 1, "{prefix}:\n{text}");
    lines[0].rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn the_answer_counts_requests_by_revision_and_instances_by_state() {
    let mut counts = Counts::default();
    counts.requests.insert(
        RequestKey {
            service: "hello".into(),
            revision: Some("hello-00001-abc".into()),
            status: 200,
        },
        7,
    );
    counts.requests.insert(
        RequestKey {
            service: "hello".into(),
            revision: None,
            status: 429,
        },
        2,
    );
    let mut latency = Histogram::new(crate::metrics::LATENCY_BUCKETS_MS);
    latency.observe(12.0);
    counts.latencies.insert(
        RevisionKey {
            service: "hello".into(),
            revision: Some("hello-00001-abc".into()),
        },
        latency,
    );
    let pools = [
        pool(
            "hello-00001-abc",
            vec![
                instance("a", InstanceState::Ready, 2),
                instance("b", InstanceState::Ready, 0),
                instance("c", InstanceState::Draining, 1),
            ],
        ),
        pool(
            "hello-00002-def",
            vec![InstanceSnapshot {
                id: String::new(),
                container_id: String::new(),
                state: InstanceState::Starting,
                in_flight: 0,
                age: Duration::ZERO,
            }],
        ),
    ];
    let usage = HashMap::from([(
        "container-a".to_string(),
        Usage {
            cpu_seconds: 1.5,
            cpu_utilization: 0.25,
            memory_bytes: 128 << 20,
        },
    )]);
    let text = render(&Resource::default(), &counts, &pools, &usage);
    let revision = |name: &str| {
        format!(
            "project_id=\"emulate-local\",location=\"us-central1\",service_name=\"hello\",configuration_name=\"hello\",revision_name=\"{name}\""
        )
    };
    let one = revision("hello-00001-abc");
    let two = revision("hello-00002-def");
    assert_eq!(
        value(
            &text,
            &format!("run_googleapis_com:request_count{{{one},response_code=\"200\",response_code_class=\"2xx\"}}")
        ),
        7.0
    );
    // The front end's own 429, before any revision was chosen, has no revision_name.
    assert_eq!(
        value(
            &text,
            "run_googleapis_com:request_count{project_id=\"emulate-local\",location=\"us-central1\",service_name=\"hello\",configuration_name=\"hello\",response_code=\"429\",response_code_class=\"4xx\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            &format!("run_googleapis_com:request_latencies_bucket{{{one},le=\"25\"}}")
        ),
        1.0
    );
    for (labels, state, n) in [
        (&one, "active", 1.0),
        (&one, "idle", 1.0),
        (&one, "draining", 1.0),
        (&one, "starting", 0.0),
        (&two, "starting", 1.0),
        (&two, "active", 0.0),
    ] {
        assert_eq!(
            value(
                &text,
                &format!(
                    "run_googleapis_com:container_instance_count{{{labels},state=\"{state}\"}}"
                )
            ),
            n,
            "{state}"
        );
    }
    assert_eq!(
        value(
            &text,
            &format!("run_googleapis_com:container_billable_instance_time{{{one}}}")
        ),
        1.5
    );
    assert_eq!(
        value(
            &text,
            &format!("run_googleapis_com:container_startup_latencies_bucket{{{two},le=\"500\"}}")
        ),
        1.0
    );
    let a = format!("{one},instance_id=\"a\"");
    assert_eq!(
        value(
            &text,
            &format!("run_googleapis_com:container_cpu_utilizations{{{a}}}")
        ),
        0.25
    );
    assert_eq!(
        value(
            &text,
            &format!("run_googleapis_com:container_memory_utilizations{{{a}}}")
        ),
        0.25
    );
    assert_eq!(
        value(&text, &format!("emulate_container_memory_bytes{{{a}}}")),
        (128u64 << 20) as f64
    );
    // Instances without stats (no answer in time) have no CPU or memory samples.
    assert!(!text.contains("instance_id=\"b\""), "{text}");
    // Each family once, its HELP and TYPE before its samples.
    for family in [
        "run_googleapis_com:request_count",
        "run_googleapis_com:request_latencies",
        "run_googleapis_com:container_instance_count",
        "run_googleapis_com:container_startup_latencies",
        "run_googleapis_com:container_billable_instance_time",
        "run_googleapis_com:container_cpu_utilizations",
        "run_googleapis_com:container_memory_utilizations",
        "emulate_container_cpu_seconds_total",
        "emulate_container_memory_bytes",
    ] {
        let type_line = format!("# TYPE {family} ");
        assert_eq!(text.matches(&type_line).count(), 1, "{family}");
        let declared = text.find(&type_line).unwrap();
        let first_sample = text
            .lines()
            .position(|l| l.starts_with(family) && !l.starts_with('#'));
        if let Some(line) = first_sample {
            let offset: usize = text.lines().take(line).map(|l| l.len() + 1).sum();
            assert!(declared < offset, "{family} sampled before its TYPE");
        }
    }
}

#[test]
fn utilization_is_cpu_time_over_the_time_the_limit_allowed() {
    let second = Duration::from_secs(1);
    assert_eq!(utilization(500_000_000, second, 1000), 0.5);
    assert_eq!(utilization(500_000_000, second, 2000), 0.25);
    assert_eq!(utilization(1_000_000_000, 2 * second, 500), 1.0);
    assert_eq!(utilization(7, Duration::ZERO, 1000), 0.0);
}
