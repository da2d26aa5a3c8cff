//! `emulate smoke`: a pre-deploy smoke test for CI. It runs the image (or service.yaml) in an
//! emulator of its own on a free loopback port, reports Cloud Run's preflight findings and the
//! requested checks one line each, writes JSON or JUnit for machines, removes everything it
//! started on every path, and exits with a code that says what went wrong.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::run::{self, RunArgs, RunConfig};
use super::Exit;
use crate::app::{Emulator, EmulatorConfig, Running, Shutdown};
use crate::cloudrun;
use crate::config::Problem;
use crate::control::knative;
use crate::control::platform::{ApplyError, NotReady, Platform, RevisionFailure};
use crate::instances::instance::StartError;
use crate::instances::pool::Pool;
use crate::logs::LogPrinter;
use crate::shutdown::Signals;
use crate::smoke::checks::{self, Check, Expect, Observed, RequestSpec, Scenario, StatusExpect};
use crate::smoke::report::{CheckResult, Outcome, Report, CHECKS, PREFLIGHT};

#[derive(Debug, Args)]
pub struct SmokeArgs {
    /// The service to test: IMAGE or -f service.yaml, with `emulate run`'s flags.
    #[command(flatten)]
    pub service: RunArgs,
    /// A checks file (YAML): named requests with expectations, and scenarios (cold start,
    /// concurrent requests, a revision switch). See the README for the format.
    #[arg(long, value_name = "FILE")]
    pub checks: Option<PathBuf>,
    /// A request to check, 'METHOD /path' or '/path' (repeatable). Default: GET /.
    #[arg(long = "request", value_name = "'METHOD /path'")]
    pub requests: Vec<String>,
    /// Expected status of --request checks: a code (200) or a class (2xx). Default: below 500.
    #[arg(long, value_name = "STATUS")]
    pub expect_status: Option<String>,
    /// Text the body of --request checks must contain (repeatable).
    #[arg(long, value_name = "TEXT")]
    pub expect_body_contains: Vec<String>,
    /// A header --request checks must return: 'Name: value' (repeatable).
    #[arg(long, value_name = "'Name: value'")]
    pub expect_header: Vec<String>,
    /// A header to send with --request checks: 'Name: value' (repeatable).
    #[arg(long, value_name = "'Name: value'")]
    pub header: Vec<String>,
    /// A body to send with --request checks.
    #[arg(long, value_name = "BODY")]
    pub data: Option<String>,
    /// How to print the verdict.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    /// Also write the results as JUnit XML (for GitHub Actions and GitLab test reports).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

/// The checks to run: from the checks file, else from the quick flags, else the default
/// (GET / answers below 500).
fn build_checks(args: &SmokeArgs) -> Result<Vec<Check>, String> {
    if let Some(path) = &args.checks {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--checks: {}: {e}", path.display()))?;
        let file = checks::parse_checks_file(&text)
            .map_err(|e| format!("--checks: {}: {e}", path.display()))?;
        for (i, check) in file.checks.iter().enumerate() {
            if let Some(tag) = &check.request.tag {
                crate::control::traffic::validate_tag(tag).map_err(|e| {
                    format!("--checks: {}: checks[{i}].request.tag: {e}", path.display())
                })?;
            }
        }
        return Ok(file.checks);
    }
    let mut expect = Expect::default();
    if let Some(status) = &args.expect_status {
        expect.status = StatusExpect::parse(status).map_err(|e| format!("--expect-status: {e}"))?;
    }
    expect.body_contains = args.expect_body_contains.clone();
    for header in &args.expect_header {
        expect
            .headers
            .push(checks::parse_header_line(header).map_err(|e| format!("--expect-header: {e}"))?);
    }
    let mut headers = Vec::new();
    for header in &args.header {
        let (name, value) =
            checks::parse_header_line(header).map_err(|e| format!("--header: {e}"))?;
        let value = http::HeaderValue::from_str(&value)
            .map_err(|_| format!("--header: '{header}' has an invalid value"))?;
        headers.push((name, value));
    }
    let lines = if args.requests.is_empty() {
        vec!["GET /".to_string()]
    } else {
        args.requests.clone()
    };
    lines
        .iter()
        .map(|line| {
            let (method, path) =
                checks::parse_request_line(line).map_err(|e| format!("--request: {e}"))?;
            Ok(Check {
                name: format!("{method} {path}"),
                scenario: Scenario::Request,
                request: RequestSpec {
                    method,
                    path,
                    headers: headers.clone(),
                    body: args.data.clone(),
                    tag: None,
                },
                expect: expect.clone(),
            })
        })
        .collect()
}

pub async fn run(mut args: SmokeArgs) -> Exit {
    let began = Instant::now();
    let checks = match build_checks(&args) {
        Ok(checks) => checks,
        Err(message) => {
            eprintln!("error: {message}");
            return Exit::Usage;
        }
    };
    // A report that cannot be written is found out now, not after the run.
    if let Some(path) = &args.junit {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => std::path::Path::new("."),
        };
        if !dir.is_dir() {
            eprintln!(
                "error: --junit: cannot write {}: the directory {} does not exist",
                path.display(),
                dir.display()
            );
            return Exit::Usage;
        }
    }
    // Its own emulator on free loopback ports, so parallel CI jobs never collide.
    args.service.listen = "127.0.0.1:0".to_string();
    args.service.admin_listen = "127.0.0.1:0".to_string();
    let target = match (&args.service.image, args.service.files.first()) {
        (Some(image), _) => image.clone(),
        (None, Some(file)) => file.display().to_string(),
        (None, None) => "the built-in hello sample".to_string(),
    };
    let mut smoke = Smoke {
        report: Report {
            target,
            results: Vec::new(),
            total: Duration::ZERO,
            exit_code: 0,
            failure_text: None,
        },
        format: args.format,
        junit: args.junit.clone(),
        began,
    };
    let config = match RunConfig::from_args(args.service) {
        Ok(config) => config,
        // A reserved name is one of Cloud Run's preflight findings, not a usage error.
        Err(e) if matches!(e.problem, Problem::ReservedEnvName { .. }) => {
            smoke.fail(
                PREFLIGHT,
                "no reserved env names",
                Duration::ZERO,
                e.to_string(),
                Vec::new(),
            );
            return smoke.finish(Exit::Failure);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage;
        }
    };
    let mut documents = match super::documents::read_service_files(&config.files) {
        Ok(documents) => documents,
        Err(exit) => return exit,
    };
    let reserved = reserved_env_names(&documents);
    if !reserved.is_empty() {
        smoke.fail(
            PREFLIGHT,
            "no reserved env names",
            Duration::ZERO,
            format!(
                "the env var names {} are reserved: Cloud Run sets {} itself",
                reserved.join(", "),
                cloudrun::RESERVED_ENV.join(", ")
            ),
            Vec::new(),
        );
        return smoke.finish(Exit::Failure);
    }
    let signals = Signals::install();
    let emulator = EmulatorConfig {
        // No admin API: nothing but this smoke test drives its emulator.
        admin: None,
        default_service: None,
        ..config.emulator(&signals, LogPrinter::stderr())
    };
    let mut emulator = match Emulator::start(emulator).await {
        Ok(emulator) => emulator,
        Err(e) => return run::start_failed(&e),
    };
    let port = emulator.listen_addr().port();
    if documents.is_empty() {
        match run::resolve_image_flag(emulator.runtime(), &config.image).await {
            Ok(image) => documents.push(run::service_from_flags(&config, &image)),
            Err(exit) => {
                emulator.shutdown(Shutdown::Immediate).await;
                return exit;
            }
        }
    }
    emulator.serve();
    let platform = emulator.platform().clone();

    let exit = tokio::select! {
        exit = smoke.deploy_and_check(&platform, &documents, &checks, port) => exit,
        _ = signals.graceful.cancelled() => {
            eprintln!("Interrupted: removing everything this smoke test started.");
            emulator.shutdown(Shutdown::Immediate).await;
            return Exit::Interrupted;
        }
    };
    emulator.close().await;
    smoke.shut_down(emulator).await;
    smoke.finish(exit)
}

/// Env names in the documents that Cloud Run reserves.
fn reserved_env_names(documents: &[knative::Service]) -> Vec<String> {
    documents
        .iter()
        .flat_map(|d| &d.spec.template.spec.containers)
        .flat_map(|c| &c.env)
        .filter(|e| cloudrun::RESERVED_ENV.contains(&e.name.as_str()))
        .map(|e| e.name.clone())
        .collect()
}

struct Smoke {
    report: Report,
    format: ReportFormat,
    junit: Option<PathBuf>,
    began: Instant,
}

impl Smoke {
    fn record(&mut self, group: &'static str, name: &str, duration: Duration, outcome: Outcome) {
        self.record_verdict(group, name, duration, outcome.into());
    }

    fn record_verdict(
        &mut self,
        group: &'static str,
        name: &str,
        duration: Duration,
        verdict: Verdict,
    ) {
        self.report.results.push(CheckResult {
            name: name.to_string(),
            group,
            outcome: verdict.outcome,
            duration,
            evidence: verdict.evidence,
        });
    }

    fn pass(&mut self, group: &'static str, name: &str, duration: Duration) {
        self.record(group, name, duration, Outcome::Passed);
    }

    fn fail(
        &mut self,
        group: &'static str,
        name: &str,
        duration: Duration,
        message: String,
        details: Vec<String>,
    ) {
        self.record(group, name, duration, Outcome::Failed { message, details });
    }

    /// Deploys the services, then runs the checks against the first one.
    async fn deploy_and_check(
        &mut self,
        platform: &Platform,
        documents: &[knative::Service],
        checks: &[Check],
        port: u16,
    ) -> Exit {
        let deploying = Instant::now();
        for document in documents {
            match platform.apply(document.clone()).await {
                Ok(applied) => {
                    for note in &applied.notes {
                        eprintln!("note: {note}");
                    }
                }
                Err(error) => return self.not_ready(error, deploying.elapsed()),
            }
        }
        let service = documents[0].metadata.name.clone().unwrap_or_default();
        self.pass(PREFLIGHT, "image is linux/amd64", Duration::ZERO);
        self.pass(PREFLIGHT, "no reserved env names", Duration::ZERO);
        let startup = platform
            .serving_pools(&service)
            .first()
            .and_then(|p| p.status().last_startup_ms)
            .map(Duration::from_millis)
            .unwrap_or_else(|| deploying.elapsed());
        self.pass(PREFLIGHT, "listens on 0.0.0.0:$PORT", startup);
        self.record(
            PREFLIGHT,
            "starts within the startup probe's budget",
            startup,
            Outcome::Passed,
        );
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let probe = Prober {
            client,
            port,
            service: service.clone(),
        };
        let mut failed = false;
        for check in checks {
            let began = Instant::now();
            let verdict = self.run_check(platform, &probe, documents, check).await;
            failed |= matches!(verdict.outcome, Outcome::Failed { .. });
            self.record_verdict(CHECKS, &check.name, began.elapsed(), verdict);
        }
        if failed {
            Exit::Failure
        } else {
            Exit::Success
        }
    }

    /// The deploy failed: which preflight finding that is, and Cloud Run's text.
    fn not_ready(&mut self, error: ApplyError, took: Duration) -> Exit {
        let text = error.to_string();
        let headline = text.lines().next().unwrap_or("").to_string();
        match &error {
            ApplyError::Unsupported { .. } => {
                self.fail(
                    PREFLIGHT,
                    "image is linux/amd64",
                    took,
                    headline,
                    Vec::new(),
                );
            }
            ApplyError::NotReady(not_ready) => {
                self.pass(PREFLIGHT, "image is linux/amd64", Duration::ZERO);
                self.pass(PREFLIGHT, "no reserved env names", Duration::ZERO);
                let failure = match not_ready {
                    NotReady::Failed(failure) => Some(failure),
                    NotReady::NoLatestRevision => None,
                };
                // The diagnosis's first line: its hints follow on lines of their own.
                let diagnosis: Vec<String> = failure
                    .and_then(RevisionFailure::diagnosis)
                    .map(|d| format!("Diagnosis: {}", d.lines().next().unwrap_or("")))
                    .into_iter()
                    .collect();
                let start_error = failure.map(RevisionFailure::error);
                // A user's HTTP or gRPC startup probe that never passed, on an app that listens.
                let probe_failed = matches!(start_error, Some(StartError::ProbeFailed { .. }));
                let timed_out =
                    probe_failed || matches!(start_error, Some(StartError::NotReady { .. }));
                if probe_failed {
                    self.pass(PREFLIGHT, "listens on 0.0.0.0:$PORT", took);
                } else {
                    self.fail(
                        PREFLIGHT,
                        "listens on 0.0.0.0:$PORT",
                        took,
                        headline,
                        diagnosis,
                    );
                }
                if timed_out {
                    self.fail(
                        PREFLIGHT,
                        "starts within the startup probe's budget",
                        took,
                        failure
                            .and_then(RevisionFailure::startup_probe_failed)
                            .unwrap_or_else(|| "the startup probe's budget ran out".to_string()),
                        Vec::new(),
                    );
                }
                if let Some(StartError::Exited { code, .. }) = start_error {
                    self.fail(
                        PREFLIGHT,
                        "no crash or OOM kill",
                        took,
                        cloudrun::container_called_exit(*code),
                        Vec::new(),
                    );
                }
            }
            ApplyError::Invalid(_) | ApplyError::Traffic(_) => {
                eprintln!("error: {text}");
                return Exit::Usage;
            }
            _ => {
                self.fail(
                    PREFLIGHT,
                    "the image can be run",
                    took,
                    headline,
                    Vec::new(),
                );
            }
        }
        self.report.failure_text = Some(text);
        Exit::NotReady
    }

    async fn run_check(
        &mut self,
        platform: &Platform,
        probe: &Prober,
        documents: &[knative::Service],
        check: &Check,
    ) -> Verdict {
        match &check.scenario {
            Scenario::Request => verdict(&check.expect, probe.send(&check.request).await).into(),
            Scenario::ColdStart { .. } => cold_start(platform, probe, check).await,
            Scenario::Concurrent { requests } => concurrent(probe, check, *requests).await,
            Scenario::RevisionSwitch {
                image,
                requests_per_second,
            } => {
                revision_switch(
                    platform,
                    probe,
                    documents,
                    check,
                    image,
                    *requests_per_second,
                )
                .await
            }
        }
    }

    /// Stops everything (SIGTERM, 10 s, SIGKILL) and reports the crash and shutdown findings.
    async fn shut_down(&mut self, emulator: Running) {
        let pools: Vec<Pool> = emulator.platform().all_pools();
        let began = Instant::now();
        emulator.shutdown(Shutdown::Graceful).await;
        if self.report.failure_text.is_some() {
            return;
        }
        let (crashes, ooms, killed) = pools
            .iter()
            .map(|p| p.status())
            .fold((0, 0, 0), |(c, o, k), s| {
                (c + s.crashes, o + s.oom_kills, k + s.killed_after_grace)
            });
        if crashes == 0 {
            self.pass(PREFLIGHT, "no crash or OOM kill", Duration::ZERO);
        } else {
            let message = if ooms > 0 {
                let limit = pools
                    .iter()
                    .find(|p| p.status().oom_kills > 0)
                    .map_or(0, |p| p.spec().config.container.memory_bytes >> 20);
                format!(
                    "{crashes} instance(s) exited during the run, {ooms} killed for exceeding the memory limit: {} Raise --memory, or use less.",
                    cloudrun::memory_limit_exceeded(limit, limit)
                )
            } else {
                format!("{crashes} instance(s) exited during the run (Container called exit)")
            };
            self.fail(
                PREFLIGHT,
                "no crash or OOM kill",
                Duration::ZERO,
                message,
                Vec::new(),
            );
        }
        if killed == 0 {
            self.pass(
                PREFLIGHT,
                "shuts down within 10 s of SIGTERM",
                began.elapsed(),
            );
        } else {
            self.record(
                PREFLIGHT,
                "shuts down within 10 s of SIGTERM",
                began.elapsed(),
                Outcome::Warning {
                    message: format!("{killed} instance(s) ignored SIGTERM for 10 s and were SIGKILLed, as Cloud Run would; handle SIGTERM to shut down cleanly"),
                },
            );
        }
    }

    /// Prints the verdict, writes JUnit, and picks the exit code (a failed check is 1 unless
    /// something worse happened).
    fn finish(mut self, exit: Exit) -> Exit {
        let exit = if exit == Exit::Success && self.report.failed() > 0 {
            Exit::Failure
        } else {
            exit
        };
        self.report.exit_code = exit as u8;
        self.report.total = self.began.elapsed();
        match self.format {
            ReportFormat::Text => print!(
                "{}",
                self.report.render_text(LogPrinter::stdout_is_colored())
            ),
            ReportFormat::Json => println!(
                "{}",
                serde_json::to_string_pretty(&self.report.to_json()).unwrap_or_default()
            ),
        }
        if let Some(path) = &self.junit {
            if let Err(e) = std::fs::write(path, self.report.to_junit()) {
                eprintln!("error: --junit: cannot write {}: {e}", path.display());
                // CI must not read a pass without the report it was asked for.
                if matches!(exit, Exit::Success) {
                    return Exit::Failure;
                }
            }
        }
        exit
    }
}

/// A check's outcome and what it saw that proves it.
struct Verdict {
    outcome: Outcome,
    evidence: Vec<String>,
}

impl From<Outcome> for Verdict {
    fn from(outcome: Outcome) -> Self {
        Verdict {
            outcome,
            evidence: Vec::new(),
        }
    }
}

impl Verdict {
    fn failed(message: String, evidence: Vec<String>) -> Self {
        Verdict {
            outcome: Outcome::Failed {
                message,
                details: Vec::new(),
            },
            evidence,
        }
    }
}

/// Instances of `pools`, counting those starting.
fn instance_count(pools: &[Pool]) -> usize {
    pools.iter().map(|p| p.status().instances.len()).sum()
}

/// Scales the service to zero, proves nothing runs, then sends the request: it must wait
/// for a new instance (a cold start) and pass within `firstByteBelow`.
async fn cold_start(platform: &Platform, probe: &Prober, check: &Check) -> Verdict {
    let pools = platform.serving_pools(&probe.service);
    for pool in &pools {
        pool.scale_to_zero("scaled to zero for a cold-start check")
            .await;
    }
    let running = instance_count(&pools);
    if running > 0 {
        return Verdict::failed(
            format!("the service did not scale to zero: {running} instance(s) still there before the request"),
            Vec::new(),
        );
    }
    let cold_starts = |pools: &[Pool]| pools.iter().map(|p| p.status().cold_starts).sum::<u64>();
    let before = cold_starts(&pools);
    let observed = match probe.send(&check.request).await {
        Err(message) => return Verdict::failed(message, Vec::new()),
        Ok(observed) => observed,
    };
    let started = cold_starts(&pools) - before;
    let evidence = vec![
        "instances before the request: 0".to_string(),
        format!(
            "instances started for it: {started}, first byte after {}",
            crate::smoke::report::format_duration(observed.first_byte)
        ),
    ];
    // Check::verify also holds the first byte to `firstByteBelow`.
    let mut problems = check.verify(&observed);
    if started == 0 {
        problems.insert(
            0,
            "the request was served without a cold start: no instance was started for it"
                .to_string(),
        );
    }
    Verdict {
        outcome: problems_outcome(problems),
        evidence,
    }
}

/// Counts requests in flight and the most there were at once.
#[derive(Clone, Default)]
struct InFlight {
    now: Arc<AtomicU64>,
    peak: Arc<AtomicU64>,
}

impl InFlight {
    async fn around<T>(&self, request: impl std::future::Future<Output = T>) -> T {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let result = request.await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
}

/// Sends `requests` copies of the request at once: all of them must be in flight together,
/// and all must pass.
async fn concurrent(probe: &Prober, check: &Check, requests: u32) -> Verdict {
    let in_flight = InFlight::default();
    let all = futures_util::future::join_all(
        (0..requests).map(|_| in_flight.around(probe.send(&check.request))),
    )
    .await;
    let peak = in_flight.peak();
    let evidence = vec![format!("in flight at once: {peak} of {requests}")];
    let mut failures: Vec<String> = Vec::new();
    if peak < u64::from(requests) {
        failures.push(format!(
            "only {peak} of {requests} requests were in flight at once"
        ));
    }
    let failed: Vec<String> = all
        .into_iter()
        .enumerate()
        .filter_map(|(i, observed)| match verdict(&check.expect, observed) {
            Outcome::Failed { message, details } => Some(format!(
                "request {}: {message}{}",
                i + 1,
                details
                    .first()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            )),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        failures.push(format!(
            "{} of {requests} concurrent requests failed",
            failed.len()
        ));
    }
    let outcome = match failures.split_first() {
        None => Outcome::Passed,
        Some((message, rest)) => Outcome::Failed {
            message: message.clone(),
            details: rest
                .iter()
                .cloned()
                .chain(failed.into_iter().take(5))
                .collect(),
        },
    };
    Verdict { outcome, evidence }
}

/// How long the revision switch waits for requests to be answered, before and after it.
const SWITCH_WAIT: Duration = Duration::from_secs(10);
/// Requests sent one at a time after the switch's load has stopped: the new revision must
/// serve every one.
const AFTER_SWITCH: u64 = 5;

/// A steady stream of check requests, `rate` a second, each judged on its own.
struct Load {
    stop: CancellationToken,
    tally: Arc<Tally>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    first_failure: std::sync::Mutex<Option<String>>,
}

impl Load {
    fn start(probe: &Prober, check: &Check, rate: u32) -> Load {
        let stop = CancellationToken::new();
        let tally = Arc::new(Tally::default());
        let (probe, request, expect) = (probe.clone(), check.request.clone(), check.expect.clone());
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let task = tokio::spawn({
            let (stop, tally) = (stop.clone(), tally.clone());
            async move {
                let mut tick = tokio::time::interval(period);
                let mut in_flight = tokio::task::JoinSet::new();
                while !stop.is_cancelled() {
                    tick.tick().await;
                    let (probe, request, expect, tally) = (
                        probe.clone(),
                        request.clone(),
                        expect.clone(),
                        tally.clone(),
                    );
                    tally.sent.fetch_add(1, Ordering::SeqCst);
                    in_flight.spawn(async move {
                        let outcome = verdict(&expect, probe.send(&request).await);
                        if let Outcome::Failed { message, .. } = outcome {
                            tally.failed.fetch_add(1, Ordering::SeqCst);
                            tally
                                .first_failure
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(message);
                        }
                        tally.answered.fetch_add(1, Ordering::SeqCst);
                    });
                }
                let mut panicked = Ok(());
                while let Some(joined) = in_flight.join_next().await {
                    if let Err(e) = joined {
                        panicked = Err(join_failure("a request of the load", e));
                    }
                }
                panicked
            }
        });
        Load { stop, tally, task }
    }

    /// Waits until `enough()` holds, for at most [`SWITCH_WAIT`]; false if it never did.
    async fn wait_for(&self, enough: impl Fn(&Tally) -> bool) -> bool {
        let deadline = Instant::now() + SWITCH_WAIT;
        while !enough(&self.tally) {
            if Instant::now() >= deadline || self.task.is_finished() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops sending and waits for the requests in flight; a panic in the load is an error.
    async fn finish(self) -> Result<Arc<Tally>, String> {
        self.stop.cancel();
        match self.task.await {
            Ok(Ok(())) => Ok(self.tally),
            Ok(Err(panicked)) => Err(panicked),
            Err(e) => Err(join_failure("the load generator", e)),
        }
    }
}

/// A task that panicked or was cancelled, as a failure message.
fn join_failure(what: &str, error: tokio::task::JoinError) -> String {
    if error.is_panic() {
        let panic = error.into_panic();
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        format!("{what} panicked: {text}")
    } else {
        format!("{what} was cancelled")
    }
}

/// Requests the pools of `platform` have served, by revision.
fn served(platform: &Platform) -> Vec<(String, u64)> {
    platform
        .all_pools()
        .iter()
        .map(|p| (p.spec().revision.clone(), p.status().requests))
        .collect()
}

fn served_by(counts: &[(String, u64)], revision: &str) -> u64 {
    counts
        .iter()
        .filter(|(r, _)| r == revision)
        .map(|(_, n)| n)
        .sum()
}

/// Deploys a second revision with `image` while requests flow at a steady rate; none may
/// fail, and the new revision must serve afterwards: while the load goes on, and every one
/// of [`AFTER_SWITCH`] requests sent once it has stopped.
async fn revision_switch(
    platform: &Platform,
    probe: &Prober,
    documents: &[knative::Service],
    check: &Check,
    image: &str,
    rate: u32,
) -> Verdict {
    let Some(mut document) = documents.first().cloned() else {
        return Outcome::Skipped {
            reason: "no service".to_string(),
        }
        .into();
    };
    if let Some(container) = document.spec.template.spec.containers.first_mut() {
        container.image = image.to_string();
    }
    document.spec.template.metadata.name = None;
    // A changed template makes a new revision even when the image is the same one.
    document
        .spec
        .template
        .metadata
        .annotations
        .insert("emulate.dev/smoke-switch".to_string(), "second".to_string());
    let old: Vec<String> = platform
        .serving_pools(&probe.service)
        .iter()
        .map(|p| p.spec().revision.clone())
        .collect();
    // Half a second's worth of requests before the switch, a second's worth after it.
    let (before, after) = (u64::from(rate.div_ceil(2)).max(1), u64::from(rate).max(1));
    let load = Load::start(probe, check, rate);
    load.wait_for(|t| t.answered.load(Ordering::SeqCst) >= before)
        .await;
    let applied = platform.apply(document).await;
    let new = match &applied {
        Ok(applied) => applied.created_revision.clone().unwrap_or_default(),
        Err(_) => String::new(),
    };
    let at_switch = served(platform);
    let new_served = || served_by(&served(platform), &new) - served_by(&at_switch, &new);
    let serving = applied.is_ok() && load.wait_for(|_| new_served() >= after).await;
    let during = new_served();
    let tally = match load.finish().await {
        Ok(tally) => tally,
        Err(panicked) => return Verdict::failed(panicked, Vec::new()),
    };
    let (sent, failed) = (
        tally.sent.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
    );
    let mut evidence = vec![format!(
        "requests during the switch: {sent}, failed: {failed}"
    )];
    if let Err(e) = applied {
        return Verdict::failed(
            format!(
                "the second revision did not become ready: {}",
                e.to_string().lines().next().unwrap_or("")
            ),
            evidence,
        );
    }
    evidence.push(format!(
        "the switch from {} to {new}",
        if old.is_empty() {
            "nothing".to_string()
        } else {
            old.join(", ")
        }
    ));
    evidence.push(format!(
        "{new} served {during} requests while the load went on"
    ));
    if failed > 0 {
        return Verdict {
            outcome: Outcome::Failed {
                message: format!("{failed} of {sent} requests failed during the switch"),
                details: tally
                    .first_failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .into_iter()
                    .collect(),
            },
            evidence,
        };
    }
    if !serving {
        return Verdict::failed(
            format!(
                "the new revision {new} served {during} of the requests sent in {} s after the switch; expected at least {after}",
                SWITCH_WAIT.as_secs()
            ),
            evidence,
        );
    }
    // With the load stopped, only these requests reach the service.
    let counted = served(platform);
    for i in 1..=AFTER_SWITCH {
        if let Outcome::Failed { message, .. } =
            verdict(&check.expect, probe.send(&check.request).await)
        {
            return Verdict::failed(format!("request {i} after the switch: {message}"), evidence);
        }
    }
    let now = served(platform);
    let by_new = served_by(&now, &new) - served_by(&counted, &new);
    evidence.push(format!(
        "{new} served {by_new} of {AFTER_SWITCH} requests after the switch"
    ));
    if by_new < AFTER_SWITCH {
        let by_old: Vec<String> = old
            .iter()
            .map(|r| format!("{r}: {}", served_by(&now, r) - served_by(&counted, r)))
            .collect();
        return Verdict::failed(
            format!(
                "the new revision {new} served {by_new} of {AFTER_SWITCH} requests after the switch (the others: {})",
                by_old.join(", ")
            ),
            evidence,
        );
    }
    Verdict {
        outcome: Outcome::Passed,
        evidence,
    }
}

fn verdict(expect: &Expect, observed: Result<Observed, String>) -> Outcome {
    match observed {
        Err(message) => Outcome::Failed {
            message,
            details: Vec::new(),
        },
        Ok(observed) => problems_outcome(expect.verify(&observed)),
    }
}

/// No problems is a pass; otherwise the first is the message and the rest are details.
fn problems_outcome(problems: Vec<String>) -> Outcome {
    match problems.split_first() {
        None => Outcome::Passed,
        Some((first, rest)) => Outcome::Failed {
            message: first.clone(),
            details: rest.to_vec(),
        },
    }
}

/// Sends check requests to the smoke emulator's front end.
#[derive(Clone)]
struct Prober {
    client: Client<HttpConnector, Full<Bytes>>,
    port: u16,
    service: String,
}

impl Prober {
    async fn send(&self, spec: &RequestSpec) -> Result<Observed, String> {
        let host = match &spec.tag {
            Some(tag) => format!("{tag}---{}.localhost:{}", self.service, self.port),
            None => format!("{}.localhost:{}", self.service, self.port),
        };
        let mut builder = http::Request::builder()
            .method(spec.method.clone())
            .uri(format!("http://127.0.0.1:{}{}", self.port, spec.path))
            .header(http::header::HOST, host);
        for (name, value) in &spec.headers {
            builder = builder.header(name, value);
        }
        let body = Full::new(Bytes::from(spec.body.clone().unwrap_or_default()));
        let request = builder
            .body(body)
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let began = Instant::now();
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("the request failed: {e}"))?;
        let first_byte = began.elapsed();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("the response body failed: {e}"))?
            .to_bytes();
        Ok(Observed {
            status,
            headers,
            body,
            latency: began.elapsed(),
            first_byte,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instances::instance::{RevisionSpec, StartFailure};
    use crate::instances::probe::{HealthCheck, HealthProbe};

    fn spec(startup_probe: Option<HealthProbe>) -> RevisionSpec {
        let mut spec = RevisionSpec::example("app");
        spec.config.container.startup_probe = startup_probe;
        spec
    }

    /// The preflight results smoke records for a deploy that failed with `error`: name and
    /// message of each, "ok" for a pass.
    fn preflight(error: StartError, startup_probe: Option<HealthProbe>) -> Vec<(String, String)> {
        let mut smoke = Smoke {
            report: Report {
                target: "app".into(),
                results: Vec::new(),
                total: Duration::ZERO,
                exit_code: 0,
                failure_text: None,
            },
            format: ReportFormat::Text,
            junit: None,
            began: Instant::now(),
        };
        let failure = StartFailure {
            error,
            last_logs: vec!["Container called exit(9) in a log line is no crash".into()],
        };
        let failure = RevisionFailure::new(failure, &spec(startup_probe));
        let exit = smoke.not_ready(NotReady::Failed(failure).into(), Duration::ZERO);
        assert_eq!(exit, Exit::NotReady);
        smoke
            .report
            .results
            .iter()
            .map(|r| match &r.outcome {
                Outcome::Failed { message, .. } => (r.name.clone(), message.clone()),
                _ => (r.name.clone(), "ok".into()),
            })
            .collect()
    }

    fn results(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, message)| (name.to_string(), message.to_string()))
            .collect()
    }

    #[test]
    fn a_crash_at_start_is_told_from_its_exit_not_from_its_text() {
        let found = preflight(
            StartError::Exited {
                code: 3,
                oom_killed: false,
            },
            None,
        );
        assert_eq!(
            found,
            results(&[
                ("image is linux/amd64", "ok"),
                ("no reserved env names", "ok"),
                ("listens on 0.0.0.0:$PORT", "Container called exit(3)."),
                ("no crash or OOM kill", "Container called exit(3)."),
            ])
        );
    }

    #[test]
    fn a_startup_that_never_listens_runs_out_of_budget() {
        let found = preflight(StartError::NotReady { diagnosis: None }, None);
        assert_eq!(found[2].0, "listens on 0.0.0.0:$PORT");
        assert!(
            found[2].1.starts_with("Default STARTUP TCP probe failed"),
            "{found:?}"
        );
        assert_eq!(
            found[3],
            (
                "starts within the startup probe's budget".to_string(),
                "the startup probe's budget ran out".to_string()
            )
        );
        assert_eq!(found.len(), 4, "{found:?}");
    }

    #[test]
    fn a_user_probe_that_never_passes_on_an_app_that_listens() {
        let probe = HealthProbe {
            check: HealthCheck::Http {
                path: "/ready".into(),
            },
            port: 8080,
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
        };
        let found = preflight(
            StartError::ProbeFailed {
                why: "got 500".into(),
            },
            Some(probe),
        );
        let line = "STARTUP HTTP probe failed 3 times consecutively for container \"app\" on port 8080 path /ready. The instance was not started.";
        assert_eq!(
            found,
            results(&[
                ("image is linux/amd64", "ok"),
                ("no reserved env names", "ok"),
                ("listens on 0.0.0.0:$PORT", "ok"),
                ("starts within the startup probe's budget", line),
            ])
        );
    }

    #[tokio::test]
    async fn a_panic_in_the_load_is_a_failure_that_quotes_it() {
        let panicked = tokio::spawn(async { panic!("boom") }).await.unwrap_err();
        assert_eq!(
            join_failure("the load generator", panicked),
            "the load generator panicked: boom"
        );
        let owned = tokio::spawn(async { panic!("{} {}", "request", 7) })
            .await
            .unwrap_err();
        assert_eq!(
            join_failure("a request of the load", owned),
            "a request of the load panicked: request 7"
        );
    }
}
