//! The `cold` measurement: the first `GET /` at zero instances through `emulate run`, against
//! a bare `docker run` polled until it answers.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::harness::{container_ip, docker_run, spawn_emulator, Cleanup, APP_PORT};
use crate::load::{connect, host, poll_until_answer, send};
use crate::{median, ms, rounds_ms, verdict, Options};

/// The `cold` measurement: the first `GET /` at zero instances through emulate, against a
/// bare `docker run` polled until it answers; its report, and false when a request failed.
pub async fn cold(
    options: &Options,
    emulate: &Path,
    image: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<(String, bool)> {
    const COLD: &str = "bench-cold";
    eprintln!("cold: starting emulate run --service {COLD} --scale-to-zero-after 1s...");
    let emulator = spawn_emulator(
        emulate,
        image,
        COLD,
        &["--scale-to-zero-after", "1s"],
        cleanup,
    )
    .await?;
    let host = host(emulator.addr);
    let (mut emulated, mut bare, mut ip_known) = (Vec::new(), Vec::new(), Vec::new());
    let mut clean = true;
    for round in 0..options.cold_rounds {
        emulator.wait_for_zero().await?;
        // Connected ahead: the clock covers the request, from send to the response's head.
        let mut sender = connect(emulator.addr).await?;
        let sent = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(60), send(&mut sender, &host, "/"))
            .await
            .context("the cold request through emulate took over 60 s")??;
        let elapsed = sent.elapsed();
        let status = response.status();
        response.into_body().collect().await?;
        drop(sender);
        clean &= status == StatusCode::OK;
        emulated.push(ms(elapsed));

        // The bare container starts while emulate's instance idles towards zero again.
        let started = Instant::now();
        let id = docker_run(image, &[], cleanup).await?;
        let ip = container_ip(&id).await?;
        ip_known.push(ms(started.elapsed()));
        poll_until_answer(SocketAddr::new(ip, APP_PORT), |_| true).await?;
        bare.push(ms(started.elapsed()));
        tokio::task::block_in_place(|| cleanup.remove_container(&id));
        eprintln!(
            "cold round {}/{}: emulate {:.0} ms ({status}), docker run + poll {:.0} ms",
            round + 1,
            options.cold_rounds,
            emulated[round],
            bare[round]
        );
    }
    tokio::task::block_in_place(|| cleanup.stop_emulator(emulator.pid));

    let (emulated_median, bare_median) = (
        median(emulated.iter().copied()),
        median(bare.iter().copied()),
    );
    let ratio = emulated_median / bare_median;
    let mut out = String::new();
    line!(
        out,
        "cold: first GET / at zero instances, {} round(s) (medians; ms per round after them)",
        options.cold_rounds
    );
    line!(
        out,
        "  {:<44} {:>6.0} ms   {}",
        "emulate (send → first byte)",
        emulated_median,
        rounds_ms(&emulated)
    );
    line!(
        out,
        "  {:<44} {:>6.0} ms   {}",
        "docker run -d + poll every 2 ms (first byte)",
        bare_median,
        rounds_ms(&bare)
    );
    line!(
        out,
        "  {:<44} {:>6.0} ms   {}",
        "  of which docker run + docker inspect (IP)",
        median(ip_known.iter().copied()),
        rounds_ms(&ip_known)
    );
    line!(
        out,
        "emulate/docker cold start = {ratio:.2}×  (target ≤ 1.0×) {}",
        verdict(ratio <= 1.0)
    );
    Ok((out, clean))
}
