//! The `throttle` measurement: what restoring an idle instance's CPU adds to a request. With
//! request-based billing (the default) an instance's CPU is throttled between requests and
//! restored, on the request path, before the request is forwarded; with
//! `--no-cpu-throttling` nothing is written. Both serve one warm instance; each request
//! finds it idle (a pause before it lets the previous request's throttle land).

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::harness::{spawn_emulator, Cleanup};
use crate::load::{connect, host, send};
use crate::{median, verdict, Options};

/// Requests per side and round.
const REQUESTS: usize = 200;
/// The pause before each request: the instance is idle (throttled) when it arrives.
const PAUSE: Duration = Duration::from_millis(10);

/// Median latency (µs) of `REQUESTS` sequential `GET /`, each after a pause, on one
/// keep-alive connection; false when any answer was not 200.
async fn idle_requests(addr: std::net::SocketAddr) -> anyhow::Result<(f64, bool)> {
    let host = host(addr);
    let mut sender = connect(addr).await?;
    let mut latencies = Vec::with_capacity(REQUESTS);
    let mut clean = true;
    for _ in 0..REQUESTS {
        tokio::time::sleep(PAUSE).await;
        let sent = Instant::now();
        let response = send(&mut sender, &host, "/").await?;
        let status = response.status();
        response.into_body().collect().await?;
        latencies.push(sent.elapsed().as_secs_f64() * 1e6);
        clean &= status == StatusCode::OK;
    }
    Ok((median(latencies.into_iter()), clean))
}

pub async fn throttle(
    options: &Options,
    emulate: &Path,
    image: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<(String, bool)> {
    const THROTTLED: &str = "bench-throttled";
    const FULL: &str = "bench-full-cpu";
    eprintln!("throttle: starting emulate run --service {THROTTLED} and --service {FULL} --no-cpu-throttling...");
    let throttled = spawn_emulator(
        emulate,
        image,
        THROTTLED,
        &["--min-instances", "1"],
        cleanup,
    )
    .await?;
    let full = spawn_emulator(
        emulate,
        image,
        FULL,
        &["--min-instances", "1", "--no-cpu-throttling"],
        cleanup,
    )
    .await?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let mut clean = true;
    for round in 0..options.rounds {
        let (t, ok_t) = idle_requests(throttled.addr).await?;
        let (f, ok_f) = idle_requests(full.addr).await?;
        clean &= ok_t && ok_f;
        eprintln!(
            "throttle round {}/{}: median {t:.0} µs throttled, {f:.0} µs with --no-cpu-throttling",
            round + 1,
            options.rounds
        );
        with.push(t);
        without.push(f);
    }
    tokio::task::block_in_place(|| {
        cleanup.stop_emulator(throttled.pid);
        cleanup.stop_emulator(full.pid);
    });
    let (with, without) = (median(with.into_iter()), median(without.into_iter()));
    let added = with - without;
    let mut out = String::new();
    line!(
        out,
        "throttle: GET / to an idle instance, {REQUESTS} sequential requests {} ms apart per side and round (median of the rounds' medians)",
        PAUSE.as_millis()
    );
    line!(
        out,
        "  {:<44} {:>8.0} µs",
        "request-based billing (CPU restored first)",
        with
    );
    line!(out, "  {:<44} {:>8.0} µs", "--no-cpu-throttling", without);
    line!(
        out,
        "CPU restore adds {added:.0} µs at the median  (target ≤ 1000 µs) {}",
        verdict(added <= 1000.0)
    );
    Ok((out, clean))
}
