//! Benchmark of the emulator: throughput and latency of `GET /` on the test app straight to
//! the container, through `emulate run` and through Docker's published port (`proxy`); a cold
//! start against a bare `docker run` (`cold`); a thundering herd at zero instances (`herd`); a
//! revision switch under load (`switch`); and `emulate smoke` against doing it by hand
//! (`smoke`).
//!
//! Run it with `cargo run --release --example bench` (flags after `--`, e.g.
//! `-- --duration 5 --connections 32 --rounds 3 --only cold,herd`). It needs a running Docker
//! engine. Every container it starts is removed at the end, on errors, panics and Ctrl-C too.

#[path = "../tests/common/images.rs"]
mod images;

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::Parser;
use http::header::{HeaderValue, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The service name the emulator runs the test app as; its container carries it as a label.
const SERVICE: &str = "bench";
/// The label on the published-port container, so a run that was killed can be cleaned up.
const BENCH_LABEL: &str = "emulate-bench=1";
/// The port the test app listens on in both containers.
const APP_PORT: u16 = 8080;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks GET / direct, through emulate, and through a published port")]
struct Options {
    /// Seconds each measurement runs (saturation runs and the fixed-rate runs alike).
    #[arg(long, env = "BENCH_DURATION", default_value_t = 5.0)]
    duration: f64,
    /// Concurrent keep-alive connections in the saturation runs.
    #[arg(long, env = "BENCH_CONNECTIONS", default_value_t = 32)]
    connections: usize,
    /// Rounds of alternating runs; the medians across rounds are reported.
    #[arg(long, env = "BENCH_ROUNDS", default_value_t = 3)]
    rounds: usize,
    /// Requests per second of the fixed-rate runs that measure the added latency.
    #[arg(long, env = "BENCH_RATE", default_value_t = 500)]
    rate: u32,
    /// Connections the fixed-rate runs spread their requests over.
    #[arg(long, env = "BENCH_RATE_CONNECTIONS", default_value_t = 4)]
    rate_connections: usize,
    /// The measurements to run, comma-separated (default: all of them).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// Cold starts measured per side in the `cold` measurement; medians are reported.
    #[arg(long, default_value_t = 5)]
    cold_rounds: usize,
    /// Runs per side in the `smoke` measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    smoke_rounds: usize,
}

/// One measurement the benchmark can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    /// `GET /` direct, through emulate and through a published port.
    Proxy,
    /// A cold start through emulate against a bare `docker run`.
    Cold,
    /// 100 concurrent requests at zero instances.
    Herd,
    /// A revision switch under a fixed-rate load.
    Switch,
    /// `emulate smoke` against `docker run` plus polling by hand.
    Smoke,
}

impl Options {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }

    /// Whether the user asked for this measurement.
    fn runs(&self, section: Section) -> bool {
        self.only.is_empty() || self.only.contains(&section)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !(self.duration.is_finite() && self.duration > 0.0) {
            bail!("--duration must be a positive number of seconds");
        }
        if self.connections == 0
            || self.rate_connections == 0
            || self.rounds == 0
            || self.cold_rounds == 0
            || self.smoke_rounds == 0
        {
            bail!("--connections, --rate-connections, --rounds, --cold-rounds and --smoke-rounds must be at least 1");
        }
        if self.rate == 0 {
            bail!("--rate must be at least 1 request per second");
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let options = Options::parse();
    if let Err(e) = options.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // Both are blocking builds with nothing to clean up yet, so they run before Ctrl-C is
    // taken over: an interrupt here simply ends the process.
    let emulate = match emulate_binary() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("Building the test app image...");
    let image = images::testapp_image();

    // Declared before the runtime so it is dropped after it: by then every client connection
    // is closed, and the emulator can drain at once.
    let mut cleanup = Cleanup::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = bench(&options, &emulate, image, &mut cleanup) => Some(outcome),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    drop(runtime);
    let code = match outcome {
        Some(Ok(true)) if MISSED_ANY.load(std::sync::atomic::Ordering::Relaxed) => {
            eprintln!("error: at least one target above was MISSED");
            ExitCode::FAILURE
        }
        Some(Ok(true)) => ExitCode::SUCCESS,
        Some(Ok(false)) => {
            eprintln!("error: some requests failed or were not 200; the numbers above are not trustworthy");
            ExitCode::FAILURE
        }
        Some(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("Interrupted; cleaning up.");
            ExitCode::from(130)
        }
    };
    drop(cleanup);
    code
}

/// The `emulate` binary of the same profile, next to the examples directory. When run by
/// cargo it is (re)built first, so the benchmark never measures a stale proxy.
fn emulate_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the benchmark's own path")?;
    let profile_dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .ok_or_else(|| anyhow!("unexpected benchmark path {}", exe.display()))?;
    let binary = profile_dir.join("emulate");
    if let Ok(cargo) = std::env::var("CARGO") {
        let release = profile_dir
            .file_name()
            .is_some_and(|name| name == "release");
        let mut build = Command::new(cargo);
        build
            .current_dir(images::ROOT)
            .args(["build", "--quiet", "--bin", "emulate"]);
        if release {
            build.arg("--release");
        }
        eprintln!("Building the emulate binary...");
        let built = build.status().map(|s| s.success()).unwrap_or(false);
        if !built {
            // Never measure a stale binary: the numbers would describe code that is not there.
            bail!("building emulate failed; fix the build and run the benchmark again");
        }
    }
    if !binary.exists() {
        bail!(
            "{} is missing: run `cargo build --release` first",
            binary.display()
        );
    }
    Ok(binary)
}

/// Everything the benchmark started, undone on drop: on success, errors, panics and Ctrl-C.
#[derive(Default)]
struct Cleanup {
    /// `emulate` processes (`run` and `smoke`), each with the service it runs.
    emulators: Vec<(Child, &'static str)>,
    /// Containers the benchmark started itself.
    containers: Vec<String>,
    /// Set before `docker run` starts: an interrupted `docker run` may have created a
    /// container whose ID never arrived, so the label is swept too.
    sweep_label: bool,
}

impl Cleanup {
    /// Stops emulator `pid` now (SIGINT, then waits) and removes any container it left.
    fn stop_emulator(&mut self, pid: u32) {
        if let Some(index) = self.emulators.iter().position(|(c, _)| c.id() == pid) {
            let (child, service) = self.emulators.remove(index);
            for id in stop_child(child, service) {
                docker_sync(&["rm", "-f", &id]);
            }
        }
    }

    /// The exit status of `emulate` process `pid` once it has ended by itself (it is then
    /// forgotten, and any container it left is removed); `None` while it runs.
    fn reap(&mut self, pid: u32) -> Option<std::process::ExitStatus> {
        let index = self.emulators.iter().position(|(c, _)| c.id() == pid)?;
        let status = self.emulators[index].0.try_wait().ok()??;
        let (child, service) = self.emulators.remove(index);
        for id in stop_child(child, service) {
            docker_sync(&["rm", "-f", &id]);
        }
        Some(status)
    }

    /// Removes a container the benchmark started, now.
    fn remove_container(&mut self, id: &str) {
        docker_sync(&["rm", "-f", id]);
        self.containers.retain(|c| c != id);
    }
}

/// Stops an `emulate` child with SIGINT (its Ctrl-C: it drains, stops its containers and
/// removes them), killing it if it takes over 30 s; the containers it left behind.
fn stop_child(mut child: Child, service: &str) -> Vec<String> {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(child.try_wait(), Ok(None)) {
            eprintln!("warning: emulate did not stop within 30 s of SIGINT; killing it");
            let _ = child.kill();
        }
    }
    let _ = child.wait();
    // The emulator removes its own containers; any left here mean it had to be killed.
    let listing = docker_sync(&instances_listing(service, true));
    owned_by(&listing, child.id())
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (child, service) in std::mem::take(&mut self.emulators) {
            let leftovers = stop_child(child, service);
            self.containers.extend(leftovers);
        }
        if self.sweep_label {
            let listing = docker_sync(&["ps", "-aq", "--filter", &format!("label={BENCH_LABEL}")]);
            self.containers
                .extend(listing.split_whitespace().map(str::to_string));
        }
        for id in self.containers.drain(..) {
            docker_sync(&["rm", "-f", &id]);
        }
    }
}

/// Runs the docker CLI from the cleanup guard, where nothing is async and failures can only
/// be ignored; its stdout.
fn docker_sync<S: AsRef<str>>(args: &[S]) -> String {
    Command::new("docker")
        .args(args.iter().map(AsRef::as_ref))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// `docker ps` arguments listing a service's containers with their owner labels: running
/// ones (instances), or `all`, which includes the spare container the emulator creates ahead
/// of the next cold start.
fn instances_listing(service: &str, all: bool) -> Vec<String> {
    let mut args = vec!["ps".to_string()];
    if all {
        args.push("-a".to_string());
    }
    args.extend([
        "--filter".to_string(),
        format!("label=dev.emulate.service={service}"),
        "--format".to_string(),
        "{{.ID}} {{.Label \"dev.emulate.owner\"}}".to_string(),
    ]);
    args
}

/// The containers in an [`instances_listing`] that emulator process `pid` started: another
/// emulator may run a service of the same name, and the owner label tells them apart.
fn owned_by(listing: &str, pid: u32) -> Vec<String> {
    let marker = format!(":{pid}:");
    listing
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, owner)| owner.contains(&marker))
        .map(|(id, _)| id.to_string())
        .collect()
}

/// Appends a formatted line to a report `String`.
macro_rules! line {
    ($out:expr) => {
        $out.push('\n')
    };
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        writeln!($out, $($arg)*).expect("writing to a String cannot fail");
    }};
}

/// Runs the selected measurements and prints their reports together at the end; false when
/// any request failed.
async fn bench(
    options: &Options,
    emulate: &std::path::Path,
    image: &'static str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<bool> {
    remove_leftovers().await?;
    let mut reports = Vec::new();
    let mut clean = true;
    if options.runs(Section::Proxy) {
        let (report, ok) = proxy(options, emulate, image, cleanup).await?;
        reports.push(report);
        clean &= ok;
    }
    if options.runs(Section::Cold) {
        let (report, ok) = cold(options, emulate, image, cleanup).await?;
        reports.push(report);
        clean &= ok;
    }
    if options.runs(Section::Herd) {
        let (report, ok) = herd(emulate, image, cleanup).await?;
        reports.push(report);
        clean &= ok;
    }
    if options.runs(Section::Switch) {
        let (report, ok) = switch(emulate, image, cleanup).await?;
        reports.push(report);
        clean &= ok;
    }
    if options.runs(Section::Smoke) {
        let (report, ok) = smoke(options, emulate, image, cleanup).await?;
        reports.push(report);
        clean &= ok;
    }
    println!();
    println!(
        "{} CPUs on the host; test app image {image}, every container 512Mi, 1 CPU",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for report in reports {
        println!();
        print!("{report}");
    }
    Ok(clean)
}

/// The `proxy` measurement: `GET /` direct, through emulate and through a published port;
/// its report, and false when any request failed.
async fn proxy(
    options: &Options,
    emulate: &std::path::Path,
    image: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<(String, bool)> {
    eprintln!("Starting emulate run {image}...");
    let emulator = start_emulator(emulate, image, cleanup).await?;
    let emulator_direct = SocketAddr::new(container_ip(&emulator.container).await?, APP_PORT);

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

/// Milliseconds, for reports.
fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Rounds' values in milliseconds, for reports.
fn rounds_ms(values: &[f64]) -> String {
    let values: Vec<String> = values.iter().map(|v| format!("{v:.0}")).collect();
    values.join(" ")
}

/// Starts a bare test app container (512 MiB, 1 CPU, `PORT=8080`, plus `extra` flags) with the
/// benchmark's label and records it in `cleanup`; its ID.
async fn docker_run(image: &str, extra: &[&str], cleanup: &mut Cleanup) -> anyhow::Result<String> {
    cleanup.sweep_label = true;
    let mut args = vec![
        "run",
        "-d",
        "--memory",
        "512m",
        "--cpus",
        "1",
        "-e",
        "PORT=8080",
        "--label",
        BENCH_LABEL,
    ];
    args.extend_from_slice(extra);
    args.push(image);
    let id = docker(&args).await?;
    cleanup.containers.push(id.clone());
    Ok(id)
}

/// Polls `GET /` on `addr` every 2 ms, each time on a fresh connection, until the response
/// head (its first bytes) arrives with a status `accept` takes; gives up after 60 s.
async fn poll_until_answer(
    addr: SocketAddr,
    accept: impl Fn(StatusCode) -> bool,
) -> anyhow::Result<StatusCode> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let host = host(addr);
    loop {
        let attempt = async {
            let mut sender = connect(addr).await?;
            let response = send(&mut sender, &host, "/").await?;
            anyhow::Ok(response.status())
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(status)) if accept(status) => return Ok(status),
            outcome if Instant::now() > deadline => {
                bail!("{addr} did not answer GET / within 60 s (last: {outcome:?})")
            }
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// The `cold` measurement: the first `GET /` at zero instances through emulate, against a
/// bare `docker run` polled until it answers; its report, and false when a request failed.
async fn cold(
    options: &Options,
    emulate: &std::path::Path,
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

/// The `coldStarts` counter of a service's newest revision, from `emulate revisions list`.
async fn cold_starts(emulate: &std::path::Path, emulator: &Emulator) -> anyhow::Result<u64> {
    let json = instances_status(emulate, emulator).await?;
    json["coldStarts"]
        .as_u64()
        .ok_or_else(|| anyhow!("no [0].status.instances.coldStarts in {json}"))
}

/// Waits until no instance of the emulator's revision is starting: a start still under way
/// when the last response arrived counts too.
async fn wait_for_starts(emulate: &std::path::Path, emulator: &Emulator) -> anyhow::Result<()> {
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
    emulate: &std::path::Path,
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

/// The `herd` measurement: 100 concurrent `GET /sleep?ms=200` at zero instances with a
/// concurrency of 10; its report, and false when a request failed.
async fn herd(
    emulate: &std::path::Path,
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

/// The `switch` measurement: `emulate deploy --update-env-vars` 2 s into a fixed-rate load on
/// `/echo`; its report, and false when a request failed.
async fn switch(
    emulate: &std::path::Path,
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

/// The `smoke` measurement: `emulate smoke IMAGE` end to end against `docker run` + polling
/// `GET /` + `docker stop -t 10` + `docker rm` by hand; its report, and false when smoke did
/// not pass.
async fn smoke(
    options: &Options,
    emulate: &std::path::Path,
    image: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<(String, bool)> {
    const SMOKE: &str = "bench-smoke";
    let (mut smoked, mut by_hand) = (Vec::new(), Vec::new());
    let mut verdict_line = String::new();
    for round in 0..options.smoke_rounds {
        let started = Instant::now();
        let mut child = Command::new(emulate)
            .args([
                "smoke",
                image,
                "--service",
                SMOKE,
                "--listen",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot run {}", emulate.display()))?;
        let stdout = collect(child.stdout.take().expect("stdout is piped"));
        let stderr = collect(child.stderr.take().expect("stderr is piped"));
        let pid = child.id();
        cleanup.emulators.push((child, SMOKE));
        let (status, ended) = loop {
            let checked = Instant::now();
            if let Some(status) = tokio::task::block_in_place(|| cleanup.reap(pid)) {
                break (status, checked);
            }
            if checked > started + Duration::from_secs(120) {
                bail!(
                    "emulate smoke did not end within 120 s:\n{}",
                    output(&stdout, &stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        if !status.success() {
            bail!(
                "emulate smoke exited with {status}:\n{}",
                output(&stdout, &stderr)
            );
        }
        smoked.push(ms(ended - started));
        verdict_line = stdout
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(" | ");

        let started = Instant::now();
        let id = docker_run(image, &[], cleanup).await?;
        let ip = container_ip(&id).await?;
        poll_until_answer(SocketAddr::new(ip, APP_PORT), |s| s.as_u16() < 500).await?;
        docker(&["stop", "-t", "10", &id]).await?;
        docker(&["rm", &id]).await?;
        by_hand.push(ms(started.elapsed()));
        cleanup.containers.retain(|c| *c != id);
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

/// Set when any target is missed, so that the benchmark exits non-zero.
static MISSED_ANY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn verdict(met: bool) -> &'static str {
    if met {
        "ok"
    } else {
        MISSED_ANY.store(true, std::sync::atomic::Ordering::Relaxed);
        "MISSED"
    }
}

/// Removes containers of an earlier benchmark run that was killed before it could clean up.
async fn remove_leftovers() -> anyhow::Result<()> {
    let leftovers = docker(&["ps", "-aq", "--filter", &format!("label={BENCH_LABEL}")]).await?;
    for id in leftovers.lines() {
        eprintln!("Removing container {id} left behind by an earlier benchmark run");
        docker(&["rm", "-f", id]).await?;
    }
    Ok(())
}

/// A running `emulate run`.
struct Emulator {
    addr: SocketAddr,
    pid: u32,
    /// The service it runs.
    service: &'static str,
    /// Its admin API's address, as `--admin` takes it.
    admin: String,
    /// Its instance's container, the one the direct runs target (`proxy` only).
    container: String,
}

impl Emulator {
    /// The containers this emulator runs now.
    async fn instances(&self) -> anyhow::Result<Vec<String>> {
        let listing = docker(&instances_listing(self.service, false)).await?;
        Ok(owned_by(&listing, self.pid))
    }

    /// Waits until the service has scaled to zero: none of its containers runs (the spare
    /// one the emulator keeps is created, not running).
    async fn wait_for_zero(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.instances().await?.is_empty() {
            if Instant::now() > deadline {
                bail!("{} did not scale to zero within 60 s", self.service);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// Starts `emulate run` for the `proxy` measurement and waits until it serves through exactly
/// one instance.
async fn start_emulator(
    binary: &std::path::Path,
    image: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Emulator> {
    let mut emulator = spawn_emulator(binary, image, SERVICE, &[], cleanup).await?;
    // A request through the proxy makes sure an instance runs even if the service scaled to
    // zero (or never started one) before the first request.
    wait_until_serving(emulator.addr).await?;
    let instances = emulator.instances().await?;
    emulator.container = match instances.as_slice() {
        [only] => only.clone(),
        [] => bail!("emulate serves, but no container of service {SERVICE} belongs to it"),
        many => bail!(
            "emulate runs {} instances of {SERVICE} ({}); the direct runs need exactly one",
            many.len(),
            many.join(", ")
        ),
    };
    Ok(emulator)
}

/// Starts `emulate run IMAGE --service SERVICE --listen 127.0.0.1:0 EXTRA...` and waits for
/// its "Service URL" and "Admin API" lines; the child goes into `cleanup` first, so it is
/// stopped even if it never gets ready.
async fn spawn_emulator(
    binary: &std::path::Path,
    image: &str,
    service: &'static str,
    extra: &[&str],
    cleanup: &mut Cleanup,
) -> anyhow::Result<Emulator> {
    let mut command = Command::new(binary);
    command
        .args([
            "run",
            image,
            "--service",
            service,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        // Its own process group keeps a terminal Ctrl-C away from it, so only the cleanup
        // guard decides when and how it stops.
        .process_group(0);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let stdout = collect(child.stdout.take().expect("stdout is piped"));
    let stderr = collect(child.stderr.take().expect("stderr is piped"));
    let pid = child.id();
    cleanup.emulators.push((child, service));

    let deadline = Instant::now() + Duration::from_secs(60);
    let (port, admin) = loop {
        let (port, admin) = {
            let lines = stderr.lock().unwrap();
            let port = lines
                .iter()
                .find_map(|line| line.strip_prefix("Service URL: http://localhost:"))
                .and_then(|port| port.trim().parse::<u16>().ok());
            let admin = lines
                .iter()
                .find_map(|line| line.strip_prefix("Admin API: http://"))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string);
            (port, admin)
        };
        if let (Some(port), Some(admin)) = (port, admin) {
            break (port, admin);
        }
        if let Some(status) = cleanup.reap(pid) {
            bail!(
                "emulate exited with {status} before serving:\n{}",
                output(&stdout, &stderr)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "emulate did not serve within 60 s:\n{}",
                output(&stdout, &stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(Emulator {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        pid,
        service,
        admin,
        container: String::new(),
    })
}

/// What a child printed last, stdout then stderr, for error messages.
fn output(stdout: &Lines, stderr: &Lines) -> String {
    let lines = |buffer: &Lines| buffer.lock().unwrap().iter().cloned().collect::<Vec<_>>();
    format!("{}\n{}", lines(stdout).join("\n"), lines(stderr).join("\n"))
}

/// The last lines a child printed.
type Lines = Arc<Mutex<VecDeque<String>>>;

/// Keeps reading a child's output (so it never blocks on a full pipe), holding the last lines
/// for error messages.
fn collect(stream: impl std::io::Read + Send + 'static) -> Lines {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut sink = sink.lock().unwrap();
            if sink.len() == 200 {
                sink.pop_front();
            }
            sink.push_back(line);
        }
    });
    lines
}

/// Runs the docker CLI; its trimmed stdout, or its stderr as the error.
async fn docker<S: AsRef<str>>(args: &[S]) -> anyhow::Result<String> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let output = tokio::process::Command::new("docker")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run the docker CLI")?;
    if !output.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// A container's IP address on its Docker network (the default bridge here).
async fn container_ip(id: &str) -> anyhow::Result<std::net::IpAddr> {
    let ip = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        id,
    ])
    .await?;
    ip.parse()
        .with_context(|| format!("container {id} has no usable IP address ({ip:?})"))
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

/// Waits until `GET /` answers 200: docker-proxy accepts connections before the app listens.
async fn wait_until_serving(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut sender = connect(addr).await?;
            request(&mut sender, &host(addr)).await
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(StatusCode::OK)) => return Ok(()),
            outcome if Instant::now() > deadline => {
                bail!("{addr} did not answer GET / with 200 within 30 s (last: {outcome:?})")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One place requests are sent.
struct Target {
    name: &'static str,
    addr: SocketAddr,
}

/// One measurement of one target.
#[derive(Clone, Debug, Default)]
struct Run {
    /// Requests answered 200 within the measured window.
    completed: u64,
    errors: u64,
    non_200: u64,
    window: Duration,
    /// Per-request latency in microseconds, sorted.
    latencies: Vec<u32>,
    /// Responses per revision, by the test app's `x-k-revision` header (absent on `/`).
    revisions: BTreeMap<String, u64>,
}

impl Run {
    fn throughput(&self) -> f64 {
        self.completed as f64 / self.window.as_secs_f64()
    }

    /// Nearest-rank percentile, in microseconds.
    fn percentile(&self, p: f64) -> u32 {
        if self.latencies.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    fn merge(workers: Vec<Run>, window: Duration) -> Run {
        let mut run = Run {
            window,
            ..Run::default()
        };
        for worker in workers {
            run.completed += worker.completed;
            run.errors += worker.errors;
            run.non_200 += worker.non_200;
            run.latencies.extend(worker.latencies);
            for (revision, count) in worker.revisions {
                *run.revisions.entry(revision).or_default() += count;
            }
        }
        run.latencies.sort_unstable();
        run
    }
}

/// When a worker sends its requests.
#[derive(Clone, Copy)]
enum Pace {
    /// Back to back until the window ends.
    Saturate,
    /// At `offset + k * interval` from the start of the window.
    Fixed {
        offset: Duration,
        interval: Duration,
    },
}

/// `connections` workers sending requests back to back for `duration`.
async fn saturate(addr: SocketAddr, connections: usize, duration: Duration) -> Run {
    load(addr, "/", connections, duration, |_| Pace::Saturate).await
}

/// `rate` requests a second for `duration`, spread evenly over `connections` workers so that
/// together they send one request every 1/rate seconds.
async fn paced(addr: SocketAddr, connections: usize, rate: u32, duration: Duration) -> Run {
    paced_path(addr, "/", connections, rate, duration).await
}

/// [`paced`] with `GET path`.
async fn paced_path(
    addr: SocketAddr,
    path: &'static str,
    connections: usize,
    rate: u32,
    duration: Duration,
) -> Run {
    let gap = Duration::from_secs_f64(1.0 / f64::from(rate));
    load(addr, path, connections, duration, |worker| Pace::Fixed {
        offset: gap * worker as u32,
        interval: gap * connections as u32,
    })
    .await
}

async fn load(
    addr: SocketAddr,
    path: &'static str,
    connections: usize,
    duration: Duration,
    pace: impl Fn(usize) -> Pace,
) -> Run {
    // A common start a little ahead lets every worker connect first, so handshakes stay out
    // of the measured window.
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + duration;
    let workers: Vec<_> = (0..connections)
        .map(|worker| tokio::spawn(self::worker(addr, path, start, end, pace(worker))))
        .collect();
    let mut runs = Vec::with_capacity(connections);
    for worker in workers {
        runs.push(worker.await.expect("a load worker panicked"));
    }
    Run::merge(runs, duration)
}

/// One keep-alive connection sending `GET path` per `pace` between `start` and `end`. A
/// failed request counts as an error and the worker reconnects.
async fn worker(
    addr: SocketAddr,
    path: &'static str,
    start: Instant,
    end: Instant,
    pace: Pace,
) -> Run {
    let host = host(addr);
    let mut run = Run::default();
    let mut sender = None;
    let mut next = match pace {
        Pace::Saturate => start,
        Pace::Fixed { offset, .. } => start + offset,
    };
    while next < end {
        if sender.is_none() {
            match connect(addr).await {
                Ok(connected) => sender = Some(connected),
                Err(_) => {
                    run.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        tokio::time::sleep_until(next).await;
        let connection = sender.as_mut().expect("connected above");
        let sent = Instant::now();
        match exchange(connection, &host, path).await {
            Ok((status, revision)) => {
                if let Some(revision) = revision {
                    *run.revisions.entry(revision).or_default() += 1;
                }
                let done = Instant::now();
                if status != StatusCode::OK {
                    run.non_200 += 1;
                } else if done <= end {
                    run.completed += 1;
                }
                let micros = done.duration_since(sent).as_micros();
                run.latencies
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
                next = match pace {
                    Pace::Saturate => done,
                    Pace::Fixed { interval, .. } => next + interval,
                };
            }
            Err(_) => {
                run.errors += 1;
                sender = None;
            }
        }
    }
    run
}

/// Sends one `GET /` and reads the whole response.
async fn request(
    sender: &mut SendRequest<Empty<Bytes>>,
    host: &HeaderValue,
) -> anyhow::Result<StatusCode> {
    Ok(exchange(sender, host, "/").await?.0)
}

/// Sends one `GET path` and reads the whole response; its status and `x-k-revision` header.
async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    host: &HeaderValue,
    path: &str,
) -> anyhow::Result<(StatusCode, Option<String>)> {
    let response = send(sender, host, path).await?;
    let status = response.status();
    let revision = response
        .headers()
        .get("x-k-revision")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Reading the whole body is part of the exchange the latency covers.
    response.into_body().collect().await?;
    Ok((status, revision))
}

/// Sends one `GET path`; it resolves with the response head, i.e. at its first bytes.
async fn send(
    sender: &mut SendRequest<Empty<Bytes>>,
    host: &HeaderValue,
    path: &str,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    sender.ready().await?;
    let request = Request::get(path)
        .header(HOST, host.clone())
        .body(Empty::new())
        .expect("a valid request");
    Ok(sender.send_request(request).await?)
}

/// The Host header for an address, built once per connection rather than per request.
fn host(addr: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&addr.to_string()).expect("an address is a valid Host")
}

/// An HTTP/1.1 keep-alive connection with Nagle off, as the emulator's own client uses.
async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The connection ends when the worker drops its sender; errors show up on requests.
        let _ = connection.await;
    });
    Ok(sender)
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

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
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
