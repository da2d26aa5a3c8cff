//! The scenarios of `emulate smoke` and what they prove: a check's request sent once, a cold
//! start after scaling to zero, many requests at once, and a revision switch under load; the
//! `Prober` that sends checks' requests to the emulator's front end, and the verdicts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::control::knative;
use crate::control::platform::Platform;
use crate::instances::pool::Pool;
use crate::smoke::checks::{Check, Expect, Observed, RequestSpec, Scenario};
use crate::smoke::report::Outcome;

/// Runs one check: its request once, or its scenario.
pub async fn run(
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

/// A check's outcome and what it saw that proves it.
pub struct Verdict {
    pub outcome: Outcome,
    pub evidence: Vec<String>,
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
pub struct Prober {
    client: Client<HttpConnector, Full<Bytes>>,
    port: u16,
    service: String,
}

impl Prober {
    /// A prober of `service` behind the front end on 127.0.0.1:`port`.
    pub fn new(port: u16, service: String) -> Self {
        Prober {
            client: Client::builder(TokioExecutor::new()).build_http(),
            port,
            service,
        }
    }

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
