//! The `switch` measurement: a new revision deployed under a fixed-rate load, and whether any
//! request failed across the switch.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::Instant;

use crate::harness::{spawn_emulator, Cleanup};
use crate::load::{paced_path, wait_until_serving};
use crate::{ms, verdict};

/// The `switch` measurement: `emulate deploy --update-env-vars` 2 s into a fixed-rate load on
/// `/echo`; its report, and false when a request failed.
pub async fn switch(
    emulate: &Path,
    image: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<(String, bool)> {
    const SWITCH: &str = "bench-switch";
    const RATE: u32 = 300;
    const CONNECTIONS: usize = 8;
    const LOAD: Duration = Duration::from_secs(6);
    eprintln!("switch: starting emulate run --service {SWITCH}...");
    let emulator = spawn_emulator(emulate, image, SWITCH, &[], cleanup).await?;
    wait_until_serving(emulator.addr).await?;
    eprintln!(
        "switch: {RATE} req/s of GET /echo over {CONNECTIONS} connections for {} s, deploying 2 s in...",
        LOAD.as_secs()
    );
    let load = tokio::spawn(paced_path(emulator.addr, "/echo", CONNECTIONS, RATE, LOAD));
    // The load's window opens 200 ms after it is spawned.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let started = Instant::now();
    let deployed = tokio::process::Command::new(emulate)
        .args([
            "deploy",
            SWITCH,
            "--update-env-vars",
            "V=2",
            "--admin",
            &emulator.admin,
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let deploy_time = started.elapsed();
    let run = load.await.expect("the switch load panicked");
    let deployed = deployed.context("cannot run emulate deploy")?;
    if !deployed.status.success() {
        bail!(
            "emulate deploy failed: {}",
            String::from_utf8_lossy(&deployed.stderr).trim()
        );
    }
    tokio::task::block_in_place(|| cleanup.stop_emulator(emulator.pid));

    let failed = run.errors + run.non_200;
    let mut out = String::new();
    line!(
        out,
        "switch: emulate deploy --update-env-vars V=2 2 s into {RATE} req/s of GET /echo over {CONNECTIONS} connections for {} s",
        LOAD.as_secs()
    );
    line!(
        out,
        "  requests sent: {}  failed: {failed} (non-200: {}, errors: {})  (target 0) {}",
        run.latencies.len() as u64 + run.errors,
        run.non_200,
        run.errors,
        verdict(failed == 0)
    );
    line!(
        out,
        "  deploy took {:.0} ms; p50 {} µs, p99 {} µs, max {} µs",
        ms(deploy_time),
        run.percentile(50.0),
        run.percentile(99.0),
        run.latencies.last().copied().unwrap_or(0)
    );
    for (revision, count) in &run.revisions {
        line!(out, "  answered by {revision}: {count}");
    }
    Ok((out, failed == 0))
}
