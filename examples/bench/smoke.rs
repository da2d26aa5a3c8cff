//! The `smoke` measurement: `emulate smoke IMAGE` end to end, against doing the same by hand
//! with `docker run`, polling and `docker stop`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use crate::emulator::emulate_command;
use crate::harness::{container_ip, docker, docker_run, output, Cleanup, APP_PORT};
use crate::load::poll_until_answer;
use crate::{median, ms, rounds_ms, Options};

/// The `smoke` measurement: `emulate smoke IMAGE` end to end against `docker run` + polling
/// `GET /` + `docker stop -t 10` + `docker rm` by hand; its report, and false when smoke did
/// not pass.
pub async fn smoke(
    options: &Options,
    emulate: &Path,
    image: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<(String, bool)> {
    const SMOKE: &str = "bench-smoke";
    let (mut smoked, mut by_hand) = (Vec::new(), Vec::new());
    let mut verdict_line = String::new();
    for round in 0..options.smoke_rounds {
        let started = Instant::now();
        let mut command = emulate_command(emulate);
        command
            .args([
                "smoke",
                image,
                "--service",
                SMOKE,
                "--listen",
                "127.0.0.1:0",
            ])
            .env("NO_COLOR", "1");
        let pid = cleanup.spawn(&mut command, SMOKE)?.pid();
        let (mut finished, ended) = loop {
            let checked = Instant::now();
            if let Some(finished) = tokio::task::block_in_place(|| cleanup.reap(pid)) {
                break (finished, checked);
            }
            if checked > started + Duration::from_secs(120) {
                bail!(
                    "emulate smoke did not end within 120 s:\n{}",
                    cleanup.emulator(pid).map(output).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let status = finished.exit_status().expect("a reaped process has ended");
        if !status.success() {
            bail!("emulate smoke exited with {status}:\n{}", output(&finished));
        }
        smoked.push(ms(ended - started));
        verdict_line = finished.stdout().lines().collect::<Vec<_>>().join(" | ");

        let started = Instant::now();
        let id = docker_run(image, &[], cleanup).await?;
        let ip = container_ip(&id).await?;
        poll_until_answer(SocketAddr::new(ip, APP_PORT), |s| s.as_u16() < 500).await?;
        docker(&["stop", "-t", "10", &id]).await?;
        docker(&["rm", &id]).await?;
        by_hand.push(ms(started.elapsed()));
        cleanup.forget_container(&id);
        eprintln!(
            "smoke round {}/{}: emulate smoke {:.0} ms, by hand {:.0} ms",
            round + 1,
            options.smoke_rounds,
            smoked[round],
            by_hand[round]
        );
    }
    let (smoked_median, by_hand_median) = (
        median(smoked.iter().copied()),
        median(by_hand.iter().copied()),
    );
    let mut out = String::new();
    line!(
        out,
        "smoke: GET / < 500 end to end, {} run(s) (medians; ms per run after them)",
        options.smoke_rounds
    );
    line!(
        out,
        "  {:<52} {:>6.0} ms   {}",
        "emulate smoke IMAGE (process start → exit)",
        smoked_median,
        rounds_ms(&smoked)
    );
    line!(
        out,
        "  {:<52} {:>6.0} ms   {}",
        "docker run -d + poll + docker stop -t 10 + docker rm",
        by_hand_median,
        rounds_ms(&by_hand)
    );
    line!(
        out,
        "smoke/baseline = {:.2}×  (smoke's verdict: {verdict_line})",
        smoked_median / by_hand_median
    );
    Ok((out, true))
}
