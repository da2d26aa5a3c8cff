//! The `proxy` measurement: `GET /` on the test app straight to the container, through
//! `emulate run` and through Docker's published port, at saturation and at a fixed rate (the
//! latency the proxy adds).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail};

use crate::harness::{
    container_ip, docker, docker_run, spawn_emulator, Cleanup, Emulator, APP_PORT,
};
use crate::load::{paced, saturate, wait_until_serving, Run};
use crate::{median, verdict, Options};

/// The service name the emulator runs the test app as; its container carries it as a label.
const SERVICE: &str = "bench";

/// The `proxy` measurement: `GET /` direct, through emulate and through a published port;
/// its report, and false when any request failed.
pub async fn proxy(
    options: &Options,
    emulate: &Path,
    image: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<(String, bool)> {
    eprintln!("Starting emulate run {image}...");
    let (emulator, container) = start_emulator(emulate, image, cleanup).await?;
    let emulator_direct = SocketAddr::new(container_ip(&container).await?, APP_PORT);

    eprintln!("Starting a second container with a published port...");
    let published_container = docker_run(image, &["-p", "127.0.0.1::8080"], cleanup).await?;
    let published_direct = SocketAddr::new(container_ip(&published_container).await?, APP_PORT);
    let published = published_port(&published_container).await?;
    wait_until_serving(published_direct).await?;
    wait_until_serving(published).await?;
    let published_by = if docker_proxy_serves(published.port()) {
        "docker-proxy, userland"
    } else {
        "no docker-proxy process found: iptables NAT?"
    };

    let targets = [
        Target {
            name: "direct (emulate's container)",
            addr: emulator_direct,
        },
        Target {
            name: "emulate proxy",
            addr: emulator.addr,
        },
        Target {
            name: "direct (published container)",
            addr: published_direct,
        },
        Target {
            name: "published port",
            addr: published,
        },
    ];
    let duration = options.duration();

    // A short unrecorded run per target fills the proxy's upstream pool and the caches.
    eprintln!("Warming up...");
    for target in &targets {
        saturate(target.addr, options.connections, Duration::from_secs(1)).await;
    }

    let mut saturation: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 0..options.rounds {
        // Rotating the order spreads any drift (thermal, background work) over all targets.
        for i in 0..targets.len() {
            let index = (i + round) % targets.len();
            let target = &targets[index];
            eprintln!(
                "round {}/{}: {} at saturation ({} connections, {:.1} s)",
                round + 1,
                options.rounds,
                target.name,
                options.connections,
                options.duration
            );
            saturation[index].push(saturate(target.addr, options.connections, duration).await);
        }
    }
    // The autoscaler may add instances under load; then emulate's numbers are not comparable
    // with one container's, and the table must say so.
    let instances = emulator.instances().await?.len();

    let paced_targets = [&targets[0], &targets[1]];
    let mut fixed: Vec<Vec<Run>> = vec![Vec::new(); paced_targets.len()];
    for round in 0..options.rounds {
        for i in 0..paced_targets.len() {
            let index = (i + round) % paced_targets.len();
            let target = paced_targets[index];
            eprintln!(
                "round {}/{}: {} at {} req/s ({} connections, {:.1} s)",
                round + 1,
                options.rounds,
                target.name,
                options.rate,
                options.rate_connections,
                options.duration
            );
            fixed[index].push(
                paced(
                    target.addr,
                    options.rate_connections,
                    options.rate,
                    duration,
                )
                .await,
            );
        }
    }

    let mut out = String::new();
    line!(
        out,
        "proxy: GET / on {image} (both containers 512Mi, 1 CPU), {} CPUs on the host, {} round(s) of {:.1} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        options.rounds,
        options.duration
    );
    line!(
        out,
        "emulate listens on {}; published port via {published_by}",
        emulator.addr
    );
    line!(out);
    line!(
        out,
        "Saturation, {} keep-alive connections (medians across rounds):",
        options.connections
    );
    let summaries: Vec<Summary> = saturation.iter().map(|runs| Summary::of(runs)).collect();
    print_table(&mut out, &targets, &summaries, true);
    line!(out);
    line!(
        out,
        "Fixed rate, {} req/s over {} connections (medians across rounds):",
        options.rate,
        options.rate_connections
    );
    let fixed_summaries: Vec<Summary> = fixed.iter().map(|runs| Summary::of(runs)).collect();
    print_table(&mut out, &targets[..2], &fixed_summaries, false);

    let emulate_ratio = summaries[1].throughput / summaries[0].throughput;
    let published_ratio = summaries[3].throughput / summaries[2].throughput;
    let added_p50 = fixed_summaries[1].p50 as i64 - fixed_summaries[0].p50 as i64;
    line!(out);
    line!(
        out,
        "emulate/direct throughput = {emulate_ratio:.2}×  (target ≥ 0.45×) {}",
        verdict(emulate_ratio >= 0.45)
    );
    line!(out, "published/direct throughput = {published_ratio:.2}×");
    if instances > 1 {
        line!(out, "note: emulate ran {instances} instances after the saturation runs, so its load was spread over more than the one container the direct runs measure");
    }
    line!(
        out,
        "added p50 at {} req/s = {added_p50} µs  (target ≤ 100 µs) {}",
        options.rate,
        verdict(added_p50 <= 100)
    );

    let clean = summaries
        .iter()
        .chain(&fixed_summaries)
        .all(|s| s.errors == 0 && s.non_200 == 0);
    tokio::task::block_in_place(|| {
        cleanup.stop_emulator(emulator.pid);
        cleanup.remove_container(&published_container);
    });
    Ok((out, clean))
}

/// Starts `emulate run` for the `proxy` measurement and waits until it serves through exactly
/// one instance; the emulator and that instance's container, the one the direct runs target.
async fn start_emulator(
    binary: &Path,
    image: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<(Emulator, String)> {
    // Instance-based billing: the direct runs reach the container behind emulate's back, so
    // a throttled (idle, as emulate sees it) container would make the baseline slow. What
    // request-based billing adds is the `throttle` measurement.
    let emulator =
        spawn_emulator(binary, image, SERVICE, &["--no-cpu-throttling"], cleanup).await?;
    // A request through the proxy makes sure an instance runs even if the service scaled to
    // zero (or never started one) before the first request.
    wait_until_serving(emulator.addr).await?;
    let instances = emulator.instances().await?;
    let container = match instances.as_slice() {
        [only] => only.clone(),
        [] => bail!("emulate serves, but no container of service {SERVICE} belongs to it"),
        many => bail!(
            "emulate runs {} instances of {SERVICE} ({}); the direct runs need exactly one",
            many.len(),
            many.join(", ")
        ),
    };
    Ok((emulator, container))
}

/// Where Docker published the container's port 8080 on 127.0.0.1.
async fn published_port(id: &str) -> anyhow::Result<SocketAddr> {
    let mapping = docker(&["port", id, &format!("{APP_PORT}/tcp")]).await?;
    mapping
        .lines()
        .find_map(|line| line.trim().parse::<SocketAddr>().ok())
        .ok_or_else(|| anyhow!("container {id} has no published port 8080 ({mapping:?})"))
}

/// Whether a docker-proxy process forwards this host port, i.e. the published port goes
/// through Docker's userland proxy rather than only through NAT rules.
fn docker_proxy_serves(port: u16) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    let wanted = port.to_string();
    entries.flatten().any(|entry| {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            return false;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        args.first().is_some_and(|a| a.ends_with(b"docker-proxy"))
            && args
                .windows(2)
                .any(|w| w[0] == b"-host-port" && w[1] == wanted.as_bytes())
    })
}

/// One place requests are sent.
struct Target {
    name: &'static str,
    addr: SocketAddr,
}

/// One target's results across rounds.
struct Summary {
    throughput: f64,
    throughputs: Vec<f64>,
    p50: u32,
    p90: u32,
    p99: u32,
    requests: u64,
    errors: u64,
    non_200: u64,
}

impl Summary {
    fn of(runs: &[Run]) -> Summary {
        let throughputs: Vec<f64> = runs.iter().map(Run::throughput).collect();
        let percentile = |p: f64| median(runs.iter().map(|r| f64::from(r.percentile(p))));
        Summary {
            throughput: median(throughputs.iter().copied()),
            throughputs,
            p50: percentile(50.0) as u32,
            p90: percentile(90.0) as u32,
            p99: percentile(99.0) as u32,
            requests: runs.iter().map(|r| r.latencies.len() as u64).sum(),
            errors: runs.iter().map(|r| r.errors).sum(),
            non_200: runs.iter().map(|r| r.non_200).sum(),
        }
    }
}

fn print_table(out: &mut String, targets: &[Target], summaries: &[Summary], with_throughput: bool) {
    if with_throughput {
        line!(
            out,
            "  {:<30} {:>8}  {:<22} {:>7} {:>7} {:>7} {:>9} {:>6} {:>7}",
            "path",
            "req/s",
            "rounds",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "requests",
            "errors",
            "non-200"
        );
    } else {
        line!(
            out,
            "  {:<30} {:>7} {:>7} {:>7} {:>9} {:>6} {:>7}",
            "path",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "requests",
            "errors",
            "non-200"
        );
    }
    for (target, s) in targets.iter().zip(summaries) {
        if with_throughput {
            let rounds: Vec<String> = s.throughputs.iter().map(|t| format!("{t:.0}")).collect();
            line!(
                out,
                "  {:<30} {:>8.0}  {:<22} {:>7} {:>7} {:>7} {:>9} {:>6} {:>7}",
                target.name,
                s.throughput,
                rounds.join(" "),
                s.p50,
                s.p90,
                s.p99,
                s.requests,
                s.errors,
                s.non_200
            );
        } else {
            line!(
                out,
                "  {:<30} {:>7} {:>7} {:>7} {:>9} {:>6} {:>7}",
                target.name,
                s.p50,
                s.p90,
                s.p99,
                s.requests,
                s.errors,
                s.non_200
            );
        }
    }
}
