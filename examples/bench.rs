//! Benchmark of the emulator's proxy: throughput and latency of `GET /` on the test app,
//! straight to the container, through `emulate run`, and through Docker's published port.
//!
//! Run it with `cargo run --release --example bench` (flags after `--`, e.g.
//! `-- --duration 5 --connections 32 --rounds 3`). It needs a running Docker engine. Every
//! container it starts is removed at the end, on errors, panics and Ctrl-C too.

#[path = "../tests/it/images.rs"]
mod images;

use std::collections::VecDeque;
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
}

impl Options {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !(self.duration.is_finite() && self.duration > 0.0) {
            bail!("--duration must be a positive number of seconds");
        }
        if self.connections == 0 || self.rate_connections == 0 || self.rounds == 0 {
            bail!("--connections, --rate-connections and --rounds must be at least 1");
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
        if !built && binary.exists() {
            eprintln!(
                "warning: building emulate failed; benchmarking the existing (possibly stale) {}",
                binary.display()
            );
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
    emulator: Option<Child>,
    /// Containers the benchmark started itself.
    containers: Vec<String>,
    /// Set before `docker run` starts: an interrupted `docker run` may have created a
    /// container whose ID never arrived, so the label is swept too.
    sweep_label: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut child) = self.emulator.take() {
            if matches!(child.try_wait(), Ok(None)) {
                // SIGINT is the emulator's Ctrl-C: it drains, stops its container and removes it.
                let _ = Command::new("kill")
                    .args(["-INT", &child.id().to_string()])
                    .status();
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if matches!(child.try_wait(), Ok(None)) {
                    eprintln!("warning: emulate did not stop within 30 s of SIGINT; killing it");
                    let _ = child.kill();
                }
            }
            let _ = child.wait();
            // The emulator removes its own containers; any left here mean it had to be killed.
            let listing = docker_sync(&instances_listing(true));
            self.containers.extend(owned_by(&listing, child.id()));
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

/// `docker ps` arguments listing the bench service's containers with their owner labels:
/// running ones (instances), or `all`, which includes the spare container the emulator
/// creates ahead of the next cold start.
fn instances_listing(all: bool) -> Vec<String> {
    let mut args = vec!["ps".to_string()];
    if all {
        args.push("-a".to_string());
    }
    args.extend([
        "--filter".to_string(),
        format!("label=dev.emulate.service={SERVICE}"),
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

/// Runs the whole benchmark; false when any request failed.
async fn bench(
    options: &Options,
    emulate: &std::path::Path,
    image: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<bool> {
    remove_leftovers().await?;

    eprintln!("Starting emulate run {image}...");
    let emulator = start_emulator(emulate, image, cleanup).await?;
    let emulator_direct = SocketAddr::new(container_ip(&emulator.container).await?, APP_PORT);

    eprintln!("Starting a second container with a published port...");
    cleanup.sweep_label = true;
    let published_container = docker(&[
        "run",
        "-d",
        "--rm=false",
        "--memory",
        "512m",
        "--cpus",
        "1",
        "-p",
        "127.0.0.1::8080",
        "-e",
        "PORT=8080",
        "--label",
        BENCH_LABEL,
        image,
    ])
    .await?;
    cleanup.containers.push(published_container.clone());
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

    println!();
    println!(
        "GET / on {image} (both containers 512Mi, 1 CPU), {} CPUs on the host, {} round(s) of {:.1} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        options.rounds,
        options.duration
    );
    println!(
        "emulate listens on {}; published port via {published_by}",
        emulator.addr
    );
    println!();
    println!(
        "Saturation, {} keep-alive connections (medians across rounds):",
        options.connections
    );
    let summaries: Vec<Summary> = saturation.iter().map(|runs| Summary::of(runs)).collect();
    print_table(&targets, &summaries, true);
    println!();
    println!(
        "Fixed rate, {} req/s over {} connections (medians across rounds):",
        options.rate, options.rate_connections
    );
    let fixed_summaries: Vec<Summary> = fixed.iter().map(|runs| Summary::of(runs)).collect();
    print_table(&targets[..2], &fixed_summaries, false);

    let emulate_ratio = summaries[1].throughput / summaries[0].throughput;
    let published_ratio = summaries[3].throughput / summaries[2].throughput;
    let added_p50 = fixed_summaries[1].p50 as i64 - fixed_summaries[0].p50 as i64;
    println!();
    println!(
        "emulate/direct throughput = {emulate_ratio:.2}×  (target ≥ 0.45×) {}",
        verdict(emulate_ratio >= 0.45)
    );
    println!("published/direct throughput = {published_ratio:.2}×");
    if instances > 1 {
        println!("note: emulate ran {instances} instances after the saturation runs, so its load was spread over more than the one container the direct runs measure");
    }
    println!(
        "added p50 at {} req/s = {added_p50} µs  (target ≤ 100 µs) {}",
        options.rate,
        verdict(added_p50 <= 100)
    );

    let clean = summaries
        .iter()
        .chain(&fixed_summaries)
        .all(|s| s.errors == 0 && s.non_200 == 0);
    Ok(clean)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "ok"
    } else {
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
    /// Its instance's container, the one the direct runs target.
    container: String,
}

impl Emulator {
    /// The containers this emulator runs now.
    async fn instances(&self) -> anyhow::Result<Vec<String>> {
        let listing = docker(&instances_listing(false)).await?;
        Ok(owned_by(&listing, self.pid))
    }
}

/// Starts `emulate run` and waits for its "Service URL" line; the child goes into `cleanup`
/// first, so it is stopped even if it never gets ready.
async fn start_emulator(
    binary: &std::path::Path,
    image: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Emulator> {
    let mut command = Command::new(binary);
    command
        .args([
            "run",
            image,
            "--service",
            SERVICE,
            "--listen",
            "127.0.0.1:0",
        ])
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
    let child = cleanup.emulator.insert(child);

    let deadline = Instant::now() + Duration::from_secs(60);
    let port = loop {
        let port = stderr
            .lock()
            .unwrap()
            .iter()
            .find_map(|line| line.strip_prefix("Service URL: http://localhost:"))
            .and_then(|port| port.trim().parse::<u16>().ok());
        if let Some(port) = port {
            break port;
        }
        let output = || {
            let lines = |buffer: &Lines| buffer.lock().unwrap().iter().cloned().collect::<Vec<_>>();
            format!(
                "{}\n{}",
                lines(&stdout).join("\n"),
                lines(&stderr).join("\n")
            )
        };
        if let Some(status) = child.try_wait()? {
            bail!("emulate exited with {status} before serving:\n{}", output());
        }
        if Instant::now() > deadline {
            bail!("emulate did not serve within 60 s:\n{}", output());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let mut emulator = Emulator {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        pid,
        container: String::new(),
    };
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
    load(addr, connections, duration, |_| Pace::Saturate).await
}

/// `rate` requests a second for `duration`, spread evenly over `connections` workers so that
/// together they send one request every 1/rate seconds.
async fn paced(addr: SocketAddr, connections: usize, rate: u32, duration: Duration) -> Run {
    let gap = Duration::from_secs_f64(1.0 / f64::from(rate));
    load(addr, connections, duration, |worker| Pace::Fixed {
        offset: gap * worker as u32,
        interval: gap * connections as u32,
    })
    .await
}

async fn load(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    pace: impl Fn(usize) -> Pace,
) -> Run {
    // A common start a little ahead lets every worker connect first, so handshakes stay out
    // of the measured window.
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + duration;
    let workers: Vec<_> = (0..connections)
        .map(|worker| tokio::spawn(self::worker(addr, start, end, pace(worker))))
        .collect();
    let mut runs = Vec::with_capacity(connections);
    for worker in workers {
        runs.push(worker.await.expect("a load worker panicked"));
    }
    Run::merge(runs, duration)
}

/// One keep-alive connection sending `GET /` per `pace` between `start` and `end`. A failed
/// request counts as an error and the worker reconnects.
async fn worker(addr: SocketAddr, start: Instant, end: Instant, pace: Pace) -> Run {
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
        match request(connection, &host).await {
            Ok(status) => {
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
    sender.ready().await?;
    let request = Request::get("/")
        .header(HOST, host.clone())
        .body(Empty::new())
        .expect("a valid request");
    let response = sender.send_request(request).await?;
    let status = response.status();
    // Reading the whole body is part of the exchange the latency covers.
    response.into_body().collect().await?;
    Ok(status)
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

fn print_table(targets: &[Target], summaries: &[Summary], with_throughput: bool) {
    if with_throughput {
        println!(
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
        println!(
            "  {:<30} {:>7} {:>7} {:>7} {:>9} {:>6} {:>7}",
            "path", "p50 µs", "p90 µs", "p99 µs", "requests", "errors", "non-200"
        );
    }
    for (target, s) in targets.iter().zip(summaries) {
        if with_throughput {
            let rounds: Vec<String> = s.throughputs.iter().map(|t| format!("{t:.0}")).collect();
            println!(
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
            println!(
                "  {:<30} {:>7} {:>7} {:>7} {:>9} {:>6} {:>7}",
                target.name, s.p50, s.p90, s.p99, s.requests, s.errors, s.non_200
            );
        }
    }
}
