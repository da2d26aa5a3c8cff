//! Benchmark of the emulator: throughput and latency of `GET /` on the test app straight to
//! the container, through `emulate run` and through Docker's published port (`proxy`); a cold
//! start against a bare `docker run` (`cold`); a thundering herd at zero instances (`herd`); a
//! revision switch under load (`switch`); `emulate smoke` against doing it by hand
//! (`smoke`); the inner loop of `emulate run --source DIR --watch` against `docker build`
//! by hand, under load (`loop`); what restoring a throttled instance's CPU adds to a request
//! (`throttle`); and the instructions each proxy executes per request, under valgrind
//! (`instructions`).
//!
//! Run it with `cargo run --release --example bench` (flags after `--`, e.g.
//! `-- --duration 5 --connections 32 --rounds 3 --only cold,herd`). It needs a running Docker
//! engine. Every container it starts is removed at the end, on errors, panics and Ctrl-C too.
//!
//! This file holds the flags, the order of the measurements and the report's shared pieces;
//! each measurement has a file of its own, `load.rs` is the load generator and `harness.rs`
//! what they all stand on (the cleanup guard, the docker CLI, `emulate run` children). The
//! `emulate` process itself and the test app image are handled by `tests/common/`, the same
//! code the integration tests use.

// Not the emulator but a benchmark of it: wall-clock time and printing are what they measure and
// report, so clippy.toml's rules for the emulator's code do not apply.
#![allow(clippy::disallowed_methods, clippy::disallowed_macros)]

// The integration tests use more of it (waiting for an exit).
#[allow(dead_code)]
#[path = "../../tests/common/emulator.rs"]
mod emulator;
#[path = "../../tests/common/images.rs"]
mod images;

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

mod cold;
mod floor;
mod harness;
mod herd;
mod inner_loop;
mod instructions;
mod load;
mod nginx;
mod procstat;
mod proxy;
mod smoke;
mod switch;
mod throttle;
mod wrk;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Parser;

use harness::Cleanup;

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
    /// Edits (redeploys) in the `loop` measurement, at least 5; medians are reported.
    #[arg(long, default_value_t = 5)]
    loop_rounds: usize,
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
    /// `emulate run --source --watch`: edit to first response, against `docker build`.
    #[value(name = "loop")]
    Loop,
    /// What restoring a throttled instance's CPU adds to a request.
    Throttle,
    /// User-space instructions per request under callgrind: emulate, nginx, the forwarders.
    Instructions,
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
    // The bare forwarder yardstick is this binary run again as a child (see `floor`).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(floor::ARG) {
        return floor::serve(&args[2..]);
    }
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

/// Runs the selected measurements and prints their reports together at the end; false when
/// any request failed.
async fn bench(
    options: &Options,
    emulate: &std::path::Path,
    image: &'static str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<bool> {
    harness::remove_leftovers().await?;
    let mut reports = Vec::new();
    let mut clean = true;
    if options.runs(Section::Proxy) {
        let (report, ok) = proxy::proxy(options, emulate, image, cleanup).await?;
        reports.push(report);
        clean &= ok;
    }
    if options.runs(Section::Cold) {
        let (report, ok) = cold::cold(options, emulate, image, cleanup).await?;
        reports.push(report);
        clean &= ok;
    }
    if options.runs(Section::Herd) {
        let (report, ok) = herd::herd(emulate, image, cleanup).await?;
        reports.push(report);
        clean &= ok;
    }
    if options.runs(Section::Switch) {
        let (report, ok) = switch::switch(emulate, image, cleanup).await?;
        reports.push(report);
        clean &= ok;
    }
    if options.runs(Section::Smoke) {
        let (report, ok) = smoke::smoke(options, emulate, image, cleanup).await?;
        reports.push(report);
        clean &= ok;
    }
    if options.runs(Section::Loop) {
        let (report, ok) = inner_loop::inner_loop(emulate, options.loop_rounds, cleanup).await?;
        reports.push(report);
        clean &= ok;
    }
    if options.runs(Section::Throttle) {
        let (report, ok) = throttle::throttle(options, emulate, image, cleanup).await?;
        reports.push(report);
        clean &= ok;
    }
    if options.runs(Section::Instructions) {
        let (report, ok) = instructions::instructions(options, emulate, image, cleanup).await?;
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

/// Milliseconds, for reports.
fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Rounds' values in milliseconds, for reports.
fn rounds_ms(values: &[f64]) -> String {
    let values: Vec<String> = values.iter().map(|v| format!("{v:.0}")).collect();
    values.join(" ")
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
