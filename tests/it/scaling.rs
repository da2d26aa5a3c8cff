//! Autoscaling like Cloud Run: cold starts that hold requests, herds, concurrency limits,
//! max instances and 429s, min instances, scale to zero, and drains before SIGTERM.

use std::time::{Duration, Instant};

use crate::support::*;

/// The revision's status from the admin API (`status.instances` of the Revision).
async fn pool_status(emulator: &Emulator) -> serde_json::Value {
    emulator.revision_list().await[0]["status"]["instances"].clone()
}

async fn wait_until(
    what: &str,
    emulator: &Emulator,
    limit: Duration,
    mut check: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}\n{}",
            emulator.stdout(),
            emulator.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_idle_service_scales_to_zero_and_the_next_request_cold_starts() {
    let emulator = Emulator::start(
        &service_name("zero"),
        &[testapp_image(), "--scale-to-zero-after", "2s"],
    )
    .await;
    assert_eq!(get(&emulator.url("/echo")).await.status, 200);
    let service = emulator.service.clone();
    // The log line comes once the stopped container is removed, a moment after it exits.
    wait_until("scale to zero", &emulator, Duration::from_secs(20), || {
        started_containers_of(&service).is_empty()
            && emulator.stdout().contains("idle for 2s; scaling down")
    })
    .await;
    let status = pool_status(&emulator).await;
    assert_eq!(status["instances"].as_array().unwrap().len(), 0, "{status}");

    let began = Instant::now();
    let reply = get(&emulator.url("/echo")).await;
    let waited = began.elapsed();
    assert_eq!(reply.status, 200, "the request at zero is held, not failed");
    assert!(waited < Duration::from_secs(10));
    assert_eq!(running_containers_of(&service), 1);
    let status = pool_status(&emulator).await;
    assert_eq!(status["coldStarts"], 1, "{status}");
    // The cold start is part of what the held request waited for.
    let cold_start_ms = status["lastColdStartMs"].as_u64().expect("lastColdStartMs");
    assert!(
        cold_start_ms > 0 && u128::from(cold_start_ms) <= waited.as_millis(),
        "cold start {cold_start_ms} ms, request waited {waited:?}: {status}"
    );
}

#[tokio::test]
async fn a_herd_at_zero_starts_ceil_n_over_concurrency_instances() {
    let emulator = Emulator::start(
        &service_name("herd"),
        &[
            testapp_image(),
            "--scale-to-zero-after",
            "1s",
            "--concurrency",
            "10",
        ],
    )
    .await;
    let service = emulator.service.clone();
    wait_until("scale to zero", &emulator, Duration::from_secs(20), || {
        started_containers_of(&service).is_empty()
    })
    .await;
    let url = emulator.url("/sleep?ms=300");
    let herd: Vec<_> = (0..25)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await.status })
        })
        .collect();
    for request in herd {
        assert_eq!(request.await.unwrap(), 200);
    }
    let status = pool_status(&emulator).await;
    assert_eq!(
        status["coldStarts"], 3,
        "25 requests at concurrency 10 need 3 instances: {status}"
    );
    // And the autoscaler added none for headroom on top: one start at deploy, three for the herd.
    // Counted once the herd's instances have scaled back to zero, so that every tick the
    // autoscaler made while they lived is in the count, not only those before the herd ended.
    wait_until(
        "scale back to zero",
        &emulator,
        Duration::from_secs(30),
        || started_containers_of(&service).is_empty(),
    )
    .await;
    let stdout = emulator.stdout();
    assert_eq!(
        stdout.matches("Starting new instance").count(),
        4,
        "{stdout}"
    );
}

#[tokio::test]
async fn concurrency_1_never_overlaps_requests_in_an_instance() {
    let emulator = Emulator::start(
        &service_name("single"),
        &[
            testapp_image(),
            "--concurrency",
            "1",
            "--max-instances",
            "3",
        ],
    )
    .await;
    let url = emulator.url("/sleep?ms=400");
    let requests: Vec<_> = (0..9)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(
            reply.in_flight, 1,
            "two requests overlapped in one instance"
        );
    }
    assert!(running_containers_of(&emulator.service) <= 3);
}

#[tokio::test]
async fn max_instances_all_busy_gives_429_after_10_s_and_at_once_past_the_queue_bound() {
    let emulator = Emulator::start(
        &service_name("busy"),
        &[
            testapp_image(),
            "--concurrency",
            "1",
            "--max-instances",
            "1",
        ],
    )
    .await;
    let busy = {
        let url = emulator.url("/sleep?ms=14000");
        tokio::spawn(async move { get(&url).await.status })
    };
    emulator
        .wait_for_output("sleeping 14000 ms", Duration::from_secs(10))
        .await;
    let began = Instant::now();
    let url = emulator.url("/echo");
    // The waiting bound is 10 for one instance of concurrency 1: the 11th is refused at once.
    let waiting: Vec<_> = (0..11)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let reply = get(&url).await;
                (reply.status, reply.body, Instant::now())
            })
        })
        .collect();
    let mut quick = 0;
    for request in waiting {
        let (status, body, at) = request.await.unwrap();
        assert_eq!(status, 429);
        assert_eq!(
            body,
            "The request was aborted because there was no available instance."
        );
        // Refused at once (well under 5 s even on a loaded machine) or after the 10 s wait.
        if at.duration_since(began) < Duration::from_secs(5) {
            quick += 1;
        } else {
            assert!(
                at.duration_since(began) >= Duration::from_secs(9),
                "a 429 after {:?}",
                at.duration_since(began)
            );
        }
    }
    assert_eq!(quick, 1, "exactly one request is past the waiting bound");
    assert_eq!(busy.await.unwrap(), 200);
    assert_eq!(pool_status(&emulator).await["rejected"], 11);
}

#[tokio::test]
async fn min_instances_are_started_and_kept() {
    let emulator = Emulator::start(
        &service_name("min"),
        &[
            testapp_image(),
            "--min-instances",
            "2",
            "--scale-to-zero-after",
            "1s",
        ],
    )
    .await;
    let service = emulator.service.clone();
    wait_until("two instances", &emulator, Duration::from_secs(20), || {
        running_containers_of(&service) == 2
    })
    .await;
    assert!(
        emulator
            .stdout()
            .contains("Reason: MANUAL_OR_CUSTOMER_MIN_INSTANCE"),
        "{}",
        emulator.stdout()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        running_containers_of(&service),
        2,
        "min instances must be kept while idle"
    );
}

#[tokio::test]
async fn scaling_down_drains_an_instance_before_sigterm() {
    let emulator = Emulator::start(
        &service_name("drainscale"),
        &[
            testapp_image(),
            "--concurrency",
            "1",
            "--scale-to-zero-after",
            "1s",
        ],
    )
    .await;
    // Two overlapping requests need two instances; the long one keeps its instance busy well
    // past the idle timeout of the other.
    let long = {
        let url = emulator.url("/sleep?ms=4000");
        tokio::spawn(async move { get(&url).await })
    };
    emulator
        .wait_for_output("sleeping 4000 ms", Duration::from_secs(10))
        .await;
    let short = get(&emulator.url("/sleep?ms=100")).await;
    assert_eq!(short.status, 200);
    // The short request had an instance to itself: a second one was started for it.
    assert_eq!(short.in_flight, 1);
    assert_eq!(
        emulator.stdout().matches("Starting new instance").count(),
        2,
        "{}",
        emulator.stdout()
    );
    let reply = long.await.unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "slept 4000 ms\n"),
        "the busy instance must not be stopped under its request"
    );
    let service = emulator.service.clone();
    wait_until("scale to zero", &emulator, Duration::from_secs(20), || {
        started_containers_of(&service).is_empty()
    })
    .await;
}

#[tokio::test]
async fn failing_liveness_probes_restart_the_instance() {
    for (kind, probe) in [("HTTP", "httpGet: {path: /healthz}"), ("gRPC", "grpc: {}")] {
        let service = service_name("liveness");
        let file = service_yaml(
            &service,
            &format!("        livenessProbe:\n          {probe}\n          periodSeconds: 1\n          failureThreshold: 2\n"),
        );
        let emulator = Emulator::start(&service, &["-f", file.to_str().unwrap()]).await;
        let first = running_container_ids(&service);
        assert_eq!(first.len(), 1);
        // Healthy instances are left alone.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(running_container_ids(&service), first);
        assert_eq!(get(&emulator.url("/sick")).await.status, 200);
        wait_until("a restart", &emulator, Duration::from_secs(30), || {
            let now = running_container_ids(&service);
            now.len() == 1 && now != first
        })
        .await;
        let stdout = emulator.stdout();
        assert!(
            stdout.contains(&format!(
                "LIVENESS {kind} probe failed 2 times consecutively"
            )),
            "{stdout}"
        );
        assert_eq!(
            get(&emulator.url("/healthz")).await.body,
            "healthy\n",
            "the new instance is healthy"
        );
        std::fs::remove_file(file).unwrap();
    }
}
