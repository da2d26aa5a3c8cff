//! The `loop` measurement: the inner loop of `emulate run --source DIR --watch`. An edit of a
//! file the test app serves, to the first response from the new revision, split into the
//! build (as the watch line reports it) and the rest (noticing the change, the context, the
//! deploy and the switch); beside it `docker build` of the same change run by hand, in a
//! copy of the directory. All the while a fixed-rate load runs, which must see no failed
//! request across the redeploys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::emulator::run_command;
use crate::harness::{docker, Cleanup};
use crate::load::{connect, host, paced_path, send};
use crate::{median, ms, rounds_ms, verdict};

const SERVICE: &str = "bench-loop";
const DOCKERFILE: &str =
    "FROM scratch\nCOPY testapp /testapp\nCOPY content.txt /content.txt\nENTRYPOINT [\"/testapp\"]\n";
/// The overhead beyond `docker build` the issue asks for.
const TARGET: Duration = Duration::from_millis(500);

/// A build context like a small app's: the test app's binary and the file it serves.
fn source_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = Path::new(crate::images::ROOT)
        .join("target")
        .join("bench-sources")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(crate::images::testapp_binary(), dir.join("testapp"))
        .context("copying the test app's binary")?;
    std::fs::write(dir.join("Dockerfile"), DOCKERFILE)?;
    std::fs::write(dir.join("content.txt"), "start")?;
    Ok(dir)
}

/// The `loop` measurement; its report, and false when a request failed.
pub async fn inner_loop(
    emulate: &Path,
    rounds: usize,
    cleanup: &mut Cleanup,
) -> anyhow::Result<(String, bool)> {
    const RATE: u32 = 100;
    const CONNECTIONS: usize = 4;
    let rounds = rounds.max(5);
    let watched = source_dir("watched")?;
    let by_hand = source_dir("by-hand")?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();

    eprintln!(
        "loop: starting emulate run --source {} --watch...",
        watched.display()
    );
    let args = ["--source", watched.to_str().unwrap_or_default(), "--watch"];
    let process = cleanup.spawn(&mut run_command(emulate, SERVICE, &args), SERVICE)?;
    let pid = process.pid();
    let addr = match process.announced(Duration::from_secs(120)).await {
        Ok(announcement) => announcement.addr,
        Err(e) => bail!(
            "emulate run --source did not serve: {e:?}\n{}",
            process.stderr()
        ),
    };
    wait_for_body(addr, "start").await?;

    // The load spans every round: a redeploy every few seconds.
    let load_time = Duration::from_secs(8 * rounds as u64);
    eprintln!(
        "loop: {RATE} req/s of GET /file over {CONNECTIONS} connections for {} s, editing content.txt {rounds} times...",
        load_time.as_secs()
    );
    let load = tokio::spawn(paced_path(
        addr,
        "/file?path=/content.txt",
        CONNECTIONS,
        RATE,
        load_time,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut totals, mut builds) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let content = format!("edit {stamp}-{round}");
        let edited = Instant::now();
        std::fs::write(watched.join("content.txt"), &content)?;
        wait_for_body(addr, &content).await?;
        totals.push(ms(edited.elapsed()));
        let stderr = cleanup
            .emulator(pid)
            .map(|p| p.stderr())
            .unwrap_or_default();
        builds.push(last_build_ms(&stderr).context("no [watch] line for the round")?);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let run = load.await.expect("the loop's load panicked");
    tokio::task::block_in_place(|| cleanup.stop_emulator(pid));

    // The same change, built by hand as the inner loop was before: `docker build`.
    eprintln!("loop: docker build of the same change by hand, {rounds} times...");
    let mut by_hand_ms = Vec::new();
    let dir = by_hand.to_str().unwrap_or_default().to_string();
    for round in 0..rounds {
        std::fs::write(by_hand.join("content.txt"), format!("hand {stamp}-{round}"))?;
        let began = Instant::now();
        docker(&[
            "build",
            "-q",
            "--platform",
            "linux/amd64",
            "-t",
            "bench-loop-by-hand:latest",
            &dir,
        ])
        .await?;
        by_hand_ms.push(ms(began.elapsed()));
    }
    let _ = docker(&["rmi", "--no-prune", "bench-loop-by-hand:latest"]).await;
    for tag in docker(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "--filter",
        &format!("reference=emulate-source/{SERVICE}"),
    ])
    .await?
    .split_whitespace()
    {
        let _ = docker(&["rmi", "--no-prune", tag]).await;
    }

    let total = median(totals.iter().copied());
    let build = median(builds.iter().copied());
    let hand = median(by_hand_ms.iter().copied());
    let overhead = total - hand;
    let failed = run.errors + run.non_200;
    let mut out = String::new();
    line!(
        out,
        "loop: emulate run --source DIR --watch, an edit of the served file -> its first response from the new revision, {rounds} rounds"
    );
    line!(
        out,
        "  edit -> first response: median {total:.0} ms (rounds: {})",
        rounds_ms(&totals)
    );
    line!(
        out,
        "    build (the watch line's): median {build:.0} ms; the rest (notice, context, deploy, switch): {:.0} ms",
        total - build
    );
    line!(
        out,
        "  docker build of the same change by hand: median {hand:.0} ms (rounds: {})",
        rounds_ms(&by_hand_ms)
    );
    line!(
        out,
        "  overhead beyond docker build: {overhead:.0} ms (target < {} ms) {}",
        TARGET.as_millis(),
        verdict(overhead < ms(TARGET))
    );
    line!(
        out,
        "  load: {RATE} req/s over {CONNECTIONS} connections across {rounds} redeploys: {} sent, {failed} failed (non-200: {}, errors: {}) (target 0) {}",
        run.latencies.len() as u64 + run.errors,
        run.non_200,
        run.errors,
        verdict(failed == 0)
    );
    line!(out, "  revisions that answered: {}", run.revisions.len());
    Ok((out, failed == 0))
}

/// Polls `GET /file?path=/content.txt` every 5 ms until its body is `expected`.
async fn wait_for_body(addr: SocketAddr, expected: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let host = host(addr);
    loop {
        let attempt = async {
            let mut sender = connect(addr).await?;
            let response = send(&mut sender, &host, "/file?path=/content.txt").await?;
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok(body)
        };
        if let Ok(Ok(body)) = tokio::time::timeout(Duration::from_secs(5), attempt).await {
            if body == expected.as_bytes() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{addr} never served {expected:?} within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The build time of the last `[watch] ... built in N s` line, in milliseconds.
fn last_build_ms(stderr: &str) -> Option<f64> {
    let line = stderr.lines().rev().find(|l| l.starts_with("[watch]"))?;
    let rest = &line[line.find("built in ")? + "built in ".len()..];
    let seconds: f64 = rest.split(' ').next()?.parse().ok()?;
    Some(seconds * 1000.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_build_time_is_read_from_the_last_watch_line() {
        let stderr = "[watch] a changed: built in 1.00 s, deployed in 0.30 s: ...\nother\n[watch] b changed: built in 2.25 s, deployed in 0.31 s: revision r serves 100% of traffic.\n";
        assert_eq!(super::last_build_ms(stderr), Some(2250.0));
        assert_eq!(super::last_build_ms("nothing"), None);
    }
}
