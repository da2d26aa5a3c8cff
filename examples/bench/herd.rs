//! The `herd` measurement: 100 concurrent requests at zero instances, and how many cold
//! starts they cause (the emulator's own `coldStarts` counter).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use http::StatusCode;
use tokio::time::Instant;

use crate::harness::{spawn_emulator, Cleanup, Emulator};
use crate::load::{connect, exchange, host};
use crate::{ms, verdict};

/// The `herd` measurement: 100 concurrent `GET /sleep?ms=200` at zero instances with a
/// concurrency of 10; its report, and false when a request failed.
pub async fn herd(
    emulate: &Path,
    image: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<(String, bool)> {
    const HERD: &str = "bench-herd";
    const REQUESTS: usize = 100;
    const CONCURRENCY: u64 = 10;
    eprintln!("herd: starting emulate run --service {HERD} --concurrency {CONCURRENCY}...");
    let emulator = spawn_emulator(
        emulate,
        image,
        HERD,
        &[
            "--concurrency",
            &CONCURRENCY.to_string(),
            "--scale-to-zero-after",
            "1s",
        ],
        cleanup,
    )
    .await?;
    emulator.wait_for_zero().await?;
    let before = cold_starts(emulate, &emulator).await?;
    eprintln!("herd: {REQUESTS} concurrent GET /sleep?ms=200 at zero instances...");
    // Every request connects first and then waits for the others, so they are sent together.
    let barrier = Arc::new(tokio::sync::Barrier::new(REQUESTS + 1));
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let barrier = barrier.clone();
            let addr = emulator.addr;
            tokio::spawn(async move {
                let connected = connect(addr).await;
                barrier.wait().await;
                let mut sender = connected?;
                let exchanged = tokio::time::timeout(Duration::from_secs(60), async {
                    exchange(&mut sender, &host(addr), "/sleep?ms=200").await
                })
                .await
                .context("no answer within 60 s")??;
                anyhow::Ok(exchanged.0)
            })
        })
        .collect();
    barrier.wait().await;
    let start = Instant::now();
    let (mut non_200, mut errors) = (0, 0);
    for task in tasks {
        match task.await.expect("a herd request panicked") {
            Ok(StatusCode::OK) => {}
            Ok(_) => non_200 += 1,
            Err(_) => errors += 1,
        }
    }
    let wall = start.elapsed();
    wait_for_starts(emulate, &emulator).await?;
    let after = cold_starts(emulate, &emulator).await?;
    tokio::task::block_in_place(|| cleanup.stop_emulator(emulator.pid));

    let expected = (REQUESTS as u64).div_ceil(CONCURRENCY);
    let mut out = String::new();
    line!(
        out,
        "herd: {REQUESTS} concurrent GET /sleep?ms=200 at zero instances, --concurrency {CONCURRENCY}"
    );
    line!(
        out,
        "  all 200: {}  (non-200: {non_200}, errors: {errors})",
        if non_200 + errors == 0 { "yes" } else { "NO" }
    );
    line!(out, "  wall time: {:.0} ms", ms(wall));
    line!(
        out,
        "  coldStarts: {after}  (expected {expected}) {}{}",
        verdict(after == expected),
        if before > 0 {
            format!("; it was {before} before the herd")
        } else {
            String::new()
        }
    );
    Ok((out, non_200 + errors == 0))
}

/// The `coldStarts` counter of a service's newest revision, from `emulate revisions list`.
async fn cold_starts(emulate: &Path, emulator: &Emulator) -> anyhow::Result<u64> {
    let json = instances_status(emulate, emulator).await?;
    json["coldStarts"]
        .as_u64()
        .ok_or_else(|| anyhow!("no [0].status.instances.coldStarts in {json}"))
}

/// Waits until no instance of the emulator's revision is starting: a start still under way
/// when the last response arrived counts too.
async fn wait_for_starts(emulate: &Path, emulator: &Emulator) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let json = instances_status(emulate, emulator).await?;
        let starting = json["instances"]
            .as_array()
            .is_some_and(|all| all.iter().any(|i| i["state"] == "starting"));
        if !starting {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("instances still starting after 30 s: {json}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `status.instances` of the emulator's (only) revision, from `emulate revisions list`.
async fn instances_status(
    emulate: &Path,
    emulator: &Emulator,
) -> anyhow::Result<serde_json::Value> {
    let output = tokio::process::Command::new(emulate)
        .args([
            "revisions",
            "list",
            "--service",
            emulator.service,
            "--format",
            "json",
            "--admin",
            &emulator.admin,
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run emulate revisions list")?;
    if !output.status.success() {
        bail!(
            "emulate revisions list failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("emulate revisions list printed no JSON")?;
    Ok(json[0]["status"]["instances"].clone())
}
