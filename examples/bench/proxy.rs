//! The `proxy` measurement: `GET /` on the test app straight to the container, through
//! `emulate run` and through Docker's published port, at saturation and at a fixed rate (the
//! latency the proxy adds).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail};

use crate::floor::{Floor, Kind};
use crate::harness::{
    container_ip, docker, docker_run, spawn_emulator, Cleanup, Emulator, APP_PORT,
};
use crate::load::{paced, wait_until_serving, Run};
use crate::nginx::{self, Nginx};
use crate::procstat;
use crate::wrk::{self, WrkRun};
use crate::{median, verdict, Options};

/// The service name the emulator runs the test app as; its container carries it as a label.
const SERVICE: &str = "bench";

/// The `proxy` measurement: `GET /` direct, through emulate, through a published port and
/// through nginx; its report, and false when any request failed.
pub async fn proxy(
    options: &Options,
    emulate: &Path,
    image: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<(String, bool)> {
    wrk::require()?;
    eprintln!("Starting emulate run {image}...");
    let (emulator, container) = start_emulator(emulate, image, cleanup).await?;
    let emulator_direct = SocketAddr::new(container_ip(&container).await?, APP_PORT);
    let rss_idle = procstat::rss(emulator.pid);

    eprintln!("Starting a second container with a published port...");
    let published_container = docker_run(image, &["-p", "127.0.0.1::8080"], cleanup).await?;
    let published = published_port(&published_container).await?;
    wait_until_serving(published).await?;
    let published_by = if docker_proxy_serves(published.port()) {
        "docker-proxy, userland"
    } else {
        "no docker-proxy process found: iptables NAT?"
    };
    let mut nginx = match nginx::available() {
        true => {
            eprintln!("Starting nginx in front of emulate's container...");
            let mut nginx = Nginx::start(emulator_direct)?;
            wait_until_serving(nginx.addr).await?;
            nginx.check_running()?;
            Some(nginx)
        }
        false => {
            eprintln!(
                "nginx is not installed: the yardstick rows are skipped (apt-get install nginx)"
            );
            None
        }
    };

    eprintln!("Starting the bare hyper forwarder in front of emulate's container...");
    let floor = Floor::start(emulator_direct, Kind::Hyper, &[])?;
    wait_until_serving(floor.addr).await?;
    // Measured for its CPU per request only: the least a forwarder on tokio costs here.
    let raw = Floor::start(emulator_direct, Kind::Raw, &[])?;
    wait_until_serving(raw.addr).await?;

    let mut targets = vec![
        Target {
            name: "direct (container IP)",
            addr: emulator_direct,
        },
        Target {
            name: "emulate",
            addr: emulator.addr,
        },
        Target {
            name: "published port",
            addr: published,
        },
    ];
    if let Some(nginx) = &nginx {
        targets.push(Target {
            name: "nginx (1 worker, keepalive 64)",
            addr: nginx.addr,
        });
    }
    targets.push(Target {
        name: "bare hyper forwarder",
        addr: floor.addr,
    });
    const DIRECT: usize = 0;
    const EMULATE: usize = 1;
    const NGINX: usize = 3;
    let floor_index = targets.len() - 1;
    let duration = options.duration();

    // A short unrecorded run per target fills the proxies' upstream pools and the caches.
    eprintln!("Warming up...");
    for target in &targets {
        wrk::run(target.addr, 1, 8, Duration::from_secs(1)).await?;
    }

    // Saturation: wrk with two threads, rounds interleaved; emulate's RSS sampled meanwhile.
    let mut saturation: Vec<Vec<WrkRun>> = vec![Vec::new(); targets.len()];
    let mut rss_loaded = 0u64;
    for round in 0..options.rounds {
        // Rotating the order spreads any drift (thermal, background work) over all targets.
        for i in 0..targets.len() {
            let index = (i + round) % targets.len();
            let target = &targets[index];
            eprintln!(
                "round {}/{}: {} at saturation (wrk -t2 -c{}, {:.1} s)",
                round + 1,
                options.rounds,
                target.name,
                options.connections,
                options.duration
            );
            let sampling = (index == EMULATE).then(|| sample_rss(emulator.pid));
            saturation[index].push(wrk::run(target.addr, 2, options.connections, duration).await?);
            if let Some(sampling) = sampling {
                rss_loaded = rss_loaded.max(sampling.stop().await);
            }
        }
    }
    // The autoscaler may add instances under load; then emulate's numbers are not comparable
    // with one container's, and the report must say so.
    let instances = emulator.instances().await?.len();

    // CPU per request: the proxy process's user + system time over a run at moderate load
    // (wrk -t1 -c8), divided by the requests it carried.
    let raw_target = Target {
        name: "hand-written HTTP/1 forwarder",
        addr: raw.addr,
    };
    let mut cpu: Vec<(&Target, Vec<u32>, Vec<f64>)> =
        vec![(&targets[EMULATE], vec![emulator.pid], Vec::new())];
    if let Some(nginx) = &nginx {
        cpu.push((&targets[NGINX], nginx.pids(), Vec::new()));
    }
    cpu.push((&targets[floor_index], vec![floor.pid()], Vec::new()));
    let floor_slot = cpu.len() - 1;
    cpu.push((&raw_target, vec![raw.pid()], Vec::new()));
    for round in 0..options.rounds {
        for i in 0..cpu.len() {
            let slot = (i + round) % cpu.len();
            let (target, pids, runs) = &mut cpu[slot];
            eprintln!(
                "round {}/{}: CPU per request of {} (wrk -t1 -c8, {:.1} s)",
                round + 1,
                options.rounds,
                target.name,
                options.duration
            );
            let before = procstat::cpu_time_of(pids);
            let run = wrk::run(target.addr, 1, 8, duration).await?;
            let after = procstat::cpu_time_of(pids);
            if let (Some(before), Some(after)) = (before, after) {
                let micros = (after - before).as_secs_f64() * 1e6 / run.requests.max(1) as f64;
                runs.push(micros);
            }
        }
    }

    // Added latency at a fixed moderate rate, with the benchmark's own paced client (µs
    // resolution; wrk cannot pace).
    let mut paced_targets = vec![DIRECT, EMULATE];
    if nginx.is_some() {
        paced_targets.push(NGINX);
    }
    paced_targets.push(floor_index);
    let mut fixed: Vec<Vec<Run>> = vec![Vec::new(); paced_targets.len()];
    for round in 0..options.rounds {
        for i in 0..paced_targets.len() {
            let slot = (i + round) % paced_targets.len();
            let target = &targets[paced_targets[slot]];
            eprintln!(
                "round {}/{}: {} at {} req/s ({} connections, {:.1} s)",
                round + 1,
                options.rounds,
                target.name,
                options.rate,
                options.rate_connections,
                options.duration
            );
            fixed[slot].push(
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
    if let Some(nginx) = &mut nginx {
        nginx.check_running()?;
    }

    let mut out = String::new();
    line!(
        out,
        "proxy: GET / on {image} (containers 512Mi, 1 CPU), {} CPUs on the host, {} round(s) of {:.1} s; emulate with --request-log off and --no-cpu-throttling, nginx with access_log off",
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
        "Saturation, wrk -t2 -c{} (medians across rounds):",
        options.connections
    );
    let summaries: Vec<Saturation> = saturation.iter().map(|runs| Saturation::of(runs)).collect();
    let direct = summaries[DIRECT].throughput;
    line!(
        out,
        "  {:<32} {:>8} {:>8}  {:<24} {:>7} {:>7} {:>7} {:>7}",
        "path",
        "req/s",
        "×direct",
        "rounds",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "errors"
    );
    for (target, s) in targets.iter().zip(&summaries) {
        let rounds: Vec<String> = s.throughputs.iter().map(|t| format!("{t:.0}")).collect();
        line!(
            out,
            "  {:<32} {:>8.0} {:>8.2}  {:<24} {:>7.0} {:>7.0} {:>7.0} {:>7}",
            target.name,
            s.throughput,
            s.throughput / direct,
            rounds.join(" "),
            s.p50,
            s.p90,
            s.p99,
            s.errors
        );
    }
    line!(out);
    line!(
        out,
        "Fixed rate, {} req/s over {} connections (medians across rounds):",
        options.rate,
        options.rate_connections
    );
    let fixed_summaries: Vec<Summary> = fixed.iter().map(|runs| Summary::of(runs)).collect();
    let paced_rows: Vec<&Target> = paced_targets.iter().map(|i| &targets[*i]).collect();
    print_table(&mut out, &paced_rows, &fixed_summaries);

    let emulate_ratio = summaries[EMULATE].throughput / direct;
    let added = |slot: usize| fixed_summaries[slot].p50 as i64 - fixed_summaries[0].p50 as i64;
    let cpu_of = |slot: usize| median(cpu[slot].2.iter().copied());
    line!(out);
    line!(
        out,
        "CPU per request (wrk -t1 -c8, user+system time of the proxy process / requests, medians):"
    );
    for (slot, (target, _, runs)) in cpu.iter().enumerate() {
        let rounds: Vec<String> = runs.iter().map(|c| format!("{c:.1}")).collect();
        line!(
            out,
            "  {:<32} {:>6.1} µs  (rounds: {})",
            target.name,
            cpu_of(slot),
            rounds.join(" ")
        );
    }
    line!(out);
    line!(
        out,
        "emulate RSS: {} idle, {} under the saturating load (targets ≤ 15 MB, ≤ 50 MB) {}",
        mb(rss_idle.unwrap_or(0)),
        mb(rss_loaded),
        verdict(rss_idle.unwrap_or(u64::MAX) <= 15 << 20 && rss_loaded <= 50 << 20)
    );
    line!(out, "emulate/direct throughput = {emulate_ratio:.2}×");
    line!(
        out,
        "published/direct throughput = {:.2}×",
        summaries[2].throughput / direct
    );
    line!(
        out,
        "added p50 at {} req/s: emulate {} µs",
        options.rate,
        added(1)
    );
    if nginx.is_some() {
        let nginx_ratio = summaries[NGINX].throughput / direct;
        line!(
            out,
            "nginx/direct throughput = {nginx_ratio:.2}×; emulate/nginx = {:.2}×  (target ≥ 1.00×, stretch 1.15×) {}",
            emulate_ratio / nginx_ratio,
            verdict(emulate_ratio >= nginx_ratio)
        );
        line!(
            out,
            "CPU per request emulate/nginx = {:.2}×  (target ≤ 1.00×, stretch 0.80×) {}",
            cpu_of(0) / cpu_of(1),
            verdict(cpu_of(0) <= cpu_of(1))
        );
        line!(
            out,
            "added p50 at {} req/s: emulate {} µs, nginx {} µs  (target: emulate ≤ nginx) {}",
            options.rate,
            added(1),
            added(2),
            verdict(added(1) <= added(2))
        );
    }
    line!(
        out,
        "CPU per request emulate/bare hyper forwarder = {:.2}×: emulate's features (routing, leases, Cloud Run's headers, the request record, timeouts) over hyper and tokio{}",
        cpu_of(0) / cpu_of(floor_slot),
        match nginx.is_some() {
            true => format!(
                "; bare forwarder/nginx = {:.2}×: hyper and tokio over nginx",
                cpu_of(floor_slot) / cpu_of(1)
            ),
            false => String::new(),
        }
    );
    line!(
        out,
        "CPU per request hand-written HTTP/1 forwarder (httparse on tokio, no features){}: the least a tokio forwarder costs here",
        match nginx.is_some() {
            true => format!("/nginx = {:.2}×", cpu_of(cpu.len() - 1) / cpu_of(1)),
            false => format!(" = {:.1} µs", cpu_of(cpu.len() - 1)),
        }
    );
    line!(
        out,
        "added p50 at {} req/s: bare hyper forwarder {} µs",
        options.rate,
        added(paced_targets.len() - 1)
    );
    if instances > 1 {
        line!(out, "note: emulate ran {instances} instances after the saturation runs, so its load was spread over more than the one container the direct runs measure");
    }

    let clean = summaries.iter().all(|s| s.errors == 0)
        && fixed_summaries
            .iter()
            .all(|s| s.errors == 0 && s.non_200 == 0);
    drop(nginx);
    drop(floor);
    drop(raw);
    tokio::task::block_in_place(|| {
        cleanup.stop_emulator(emulator.pid);
        cleanup.remove_container(&published_container);
    });
    Ok((out, clean))
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Samples a process's RSS every 50 ms until stopped; the largest seen.
struct RssSampling {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u64>,
}

fn sample_rss(pid: u32) -> RssSampling {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            peak = peak.max(procstat::rss(pid).unwrap_or(0));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = &mut stopped => return peak,
            }
        }
    });
    RssSampling { stop, task }
}

impl RssSampling {
    async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}

/// One target's saturation runs across rounds.
struct Saturation {
    throughput: f64,
    throughputs: Vec<f64>,
    p50: f64,
    p90: f64,
    p99: f64,
    errors: u64,
}

impl Saturation {
    fn of(runs: &[WrkRun]) -> Saturation {
        let throughputs: Vec<f64> = runs.iter().map(|r| r.throughput).collect();
        Saturation {
            throughput: median(throughputs.iter().copied()),
            throughputs,
            p50: median(runs.iter().map(|r| r.p50)),
            p90: median(runs.iter().map(|r| r.p90)),
            p99: median(runs.iter().map(|r| r.p99)),
            errors: runs.iter().map(|r| r.errors + r.non_2xx).sum(),
        }
    }
}

/// Starts `emulate run` for the `proxy` measurement and waits until it serves through exactly
/// one instance; the emulator and that instance's container, the one the direct runs target.
async fn start_emulator(
    binary: &Path,
    image: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<(Emulator, String)> {
    // The direct runs reach the container behind emulate's back: a throttled (idle, as far
    // as emulate knows) container would make that baseline meaningless.
    let emulator = spawn_emulator(
        binary,
        image,
        SERVICE,
        &["--request-log", "off", "--no-cpu-throttling"],
        cleanup,
    )
    .await?;
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

/// One target's fixed-rate results across rounds.
struct Summary {
    p50: u32,
    p90: u32,
    p99: u32,
    requests: u64,
    errors: u64,
    non_200: u64,
}

impl Summary {
    fn of(runs: &[Run]) -> Summary {
        let percentile = |p: f64| median(runs.iter().map(|r| f64::from(r.percentile(p))));
        Summary {
            p50: percentile(50.0) as u32,
            p90: percentile(90.0) as u32,
            p99: percentile(99.0) as u32,
            requests: runs.iter().map(|r| r.latencies.len() as u64).sum(),
            errors: runs.iter().map(|r| r.errors).sum(),
            non_200: runs.iter().map(|r| r.non_200).sum(),
        }
    }
}

fn print_table(out: &mut String, targets: &[&Target], summaries: &[Summary]) {
    line!(
        out,
        "  {:<32} {:>7} {:>7} {:>7} {:>9} {:>6} {:>7}",
        "path",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "requests",
        "errors",
        "non-200"
    );
    for (target, s) in targets.iter().zip(summaries) {
        line!(
            out,
            "  {:<32} {:>7} {:>7} {:>7} {:>9} {:>6} {:>7}",
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
