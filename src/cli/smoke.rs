//! `emulate smoke`: a pre-deploy smoke test for CI. It runs the image (or service.yaml) in an
//! emulator of its own on a free loopback port, reports Cloud Run's preflight findings and the
//! requested checks one line each, writes JSON or JUnit for machines, removes everything it
//! started on every path, and exits with a code that says what went wrong.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::time::Instant;

use super::run::{self, ImageChoice, RunArgs, RunConfig};
use super::source_flags;
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
use crate::smoke::checks::{self, Check, Expect, RequestSpec, Scenario, StatusExpect};
use crate::smoke::report::{CheckResult, Outcome, Report, CHECKS, PREFLIGHT};
use crate::smoke::scenarios::{self, Prober, Verdict};
use crate::source::Builder;

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
    /// Fail on findings that are otherwise warnings (work done after a response).
    #[arg(long)]
    pub strict: bool,
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
    if args.service.watch {
        eprintln!("error: --watch: smoke builds and checks once; watching is `emulate run --source DIR --watch`");
        return Exit::Usage;
    }
    // Its own emulator on free loopback ports, so parallel CI jobs never collide.
    args.service.listen = "127.0.0.1:0".to_string();
    args.service.admin_listen = "127.0.0.1:0".to_string();
    let target = match (
        &args.service.image,
        &args.service.source.source,
        args.service.files.first(),
    ) {
        (Some(image), _, _) => image.clone(),
        (None, Some(dir), _) => format!("--source {}", dir.display()),
        (None, None, Some(file)) => file.display().to_string(),
        (None, None, None) => "the built-in hello sample".to_string(),
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
        strict: args.strict,
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
    if let Err(e) = run::check_source_documents(&config, &documents) {
        eprintln!("error: {e}");
        return Exit::Usage;
    }
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
    if let ImageChoice::Source(source) = &config.image {
        // The build comes first: a source that does not build fails the preflight.
        let service = run::source_service(&config, &documents);
        let mut builder = Builder::new(
            emulator.runtime().clone(),
            emulator.events().clone(),
            &service,
            source.clone(),
        );
        let began = Instant::now();
        source_flags::announce(source, &service);
        let built = tokio::select! {
            built = builder.build() => built,
            _ = signals.graceful.cancelled() => {
                eprintln!("Interrupted: the build was stopped; removing everything this smoke test started.");
                emulator.shutdown(Shutdown::Immediate).await;
                return Exit::Interrupted;
            }
        };
        match built {
            Ok(built) => {
                smoke.pass(PREFLIGHT, "the source builds", built.took);
                run::set_source_image(&config, &mut documents, &built.image);
            }
            Err(error) => {
                let exit = source_flags::build_exit(&error);
                let text = error.to_string();
                let mut lines = text.lines().map(|l| l.trim().to_string());
                let headline = lines.next().unwrap_or_default();
                smoke.fail(
                    PREFLIGHT,
                    "the source builds",
                    began.elapsed(),
                    headline,
                    lines.filter(|l| !l.is_empty()).collect(),
                );
                emulator.shutdown(Shutdown::Immediate).await;
                return smoke.finish(exit);
            }
        }
    } else if documents.is_empty() {
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
        exit = {
            for doc in &mut documents {
                config.access.apply(doc);
            }
            smoke.deploy_and_check(&platform, &documents, &checks, port)
        } => exit,
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
    strict: bool,
}

/// How long smoke keeps watching after the last check for work done after the responses
/// (with the CPU throttled, enough for a few milliseconds of it, or a line, to show).
const BACKGROUND_WATCH: Duration = Duration::from_millis(300);

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
        let probe = Prober::new(port, service.clone());
        let mut failed = false;
        for check in checks {
            let began = Instant::now();
            let verdict = scenarios::run(platform, &probe, documents, check).await;
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

    /// Stops everything (SIGTERM, 10 s, SIGKILL) and reports the crash and shutdown findings.
    async fn shut_down(&mut self, emulator: Running) {
        let pools: Vec<Pool> = emulator.platform().all_pools();
        if self.report.failure_text.is_none() {
            tokio::time::sleep(BACKGROUND_WATCH).await;
        }
        let began = Instant::now();
        emulator.shutdown(Shutdown::Graceful).await;
        if self.report.failure_text.is_some() {
            return;
        }
        self.background_work(&pools);
        let (crashes, ooms, killed, deaf) =
            pools
                .iter()
                .map(|p| p.status())
                .fold((0, 0, 0, 0), |(c, o, k, d), s| {
                    (
                        c + s.crashes,
                        o + s.oom_kills,
                        k + s.killed_after_grace,
                        d + s.ignores_sigterm,
                    )
                });
        if crashes == 0 {
            self.pass(PREFLIGHT, "no crash or OOM kill", Duration::ZERO);
        } else {
            let message = if ooms > 0 {
                let (limit, peak) =
                    pools
                        .iter()
                        .find(|p| p.status().oom_kills > 0)
                        .map_or((0, 0), |p| {
                            let limit = p.spec().config.container.memory_bytes;
                            (
                                limit >> 20,
                                (p.last_oom_peak().unwrap_or(limit) + (1 << 19)) >> 20,
                            )
                        });
                format!(
                    "{crashes} instance(s) exited during the run, {ooms} killed for exceeding the memory limit: {} Raise --memory, or use less.",
                    cloudrun::memory_limit_exceeded(limit, peak)
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
        if deaf > 0 {
            // Found at start: the shutdown killed them at once instead of waiting 10 s.
            self.record(
                PREFLIGHT,
                "shuts down within 10 s of SIGTERM",
                began.elapsed(),
                Outcome::Warning {
                    message: format!("{deaf} instance(s): the container's PID 1 does not handle SIGTERM (found at start), so Cloud Run would SIGKILL it 10 s after SIGTERM; handle SIGTERM, `exec` the server in an entrypoint script, or run it under an init such as tini"),
                },
            );
        } else if killed == 0 {
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

    /// Work an instance did after a response (CPU or log lines with no request in flight),
    /// which Cloud Run throttles: a warning, or a failure with --strict. Read once the
    /// instances are stopped, which closes their last idle period.
    fn background_work(&mut self, pools: &[Pool]) {
        const NAME: &str = "no work after responses";
        let Some((pool, finding)) = pools
            .iter()
            .find_map(|p| p.background_work().map(|f| (p, f)))
        else {
            self.pass(PREFLIGHT, NAME, Duration::ZERO);
            return;
        };
        let message = finding.warning(&pool.spec().revision);
        let outcome = match self.strict {
            true => Outcome::Failed {
                message,
                details: Vec::new(),
            },
            false => Outcome::Warning { message },
        };
        self.record(PREFLIGHT, NAME, Duration::ZERO, outcome);
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
            strict: false,
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
}
