//! Faults injected from outside under a light load: an instance's container is killed,
//! removed or paused with the docker CLI while a client sends about 20 requests a second.
//! Each test prints its figures (failed/total, how long until requests succeed again),
//! asserts them loosely, and checks that no container of the service outlives the emulator.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// One request of the load: when it was sent, whether it got a 200, and how long it took.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    sent: Instant,
    ok: bool,
    took: Duration,
}

/// A request slower than this did not get through promptly (the test app answers `/` at
/// once).
const SLOW: Duration = Duration::from_secs(2);

impl Outcome {
    fn prompt(&self) -> bool {
        self.ok && self.took < SLOW
    }
}

/// A client sending `GET /` every 50 ms (each request on its own task, so a hanging one does
/// not hold the others back), bounded in time.
struct Load {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    sent: Arc<AtomicUsize>,
    stop: CancellationToken,
    sender: Option<tokio::task::JoinHandle<()>>,
}

/// A request that gets no answer within this counts as failed.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// No load runs longer than this, whatever happens to the test.
const LOAD_LIMIT: Duration = Duration::from_secs(120);

impl Load {
    fn start(url: String) -> Load {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let sender = tokio::spawn({
            let (outcomes, sent, stop) = (outcomes.clone(), sent.clone(), stop.clone());
            async move {
                let began = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                while began.elapsed() < LOAD_LIMIT {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.cancelled() => return,
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                    let (client, url, outcomes) = (client.clone(), url.clone(), outcomes.clone());
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let exchange = async {
                            let response = client.get(url.parse().unwrap()).await.ok()?;
                            let status = response.status();
                            response.into_body().collect().await.ok()?;
                            Some(status == 200)
                        };
                        let ok = tokio::time::timeout(REQUEST_LIMIT, exchange)
                            .await
                            .ok()
                            .flatten()
                            .unwrap_or(false);
                        let took = sent.elapsed();
                        outcomes.lock().unwrap().push(Outcome { sent, ok, took });
                    });
                }
            }
        });
        Load {
            outcomes,
            sent,
            stop,
            sender: Some(sender),
        }
    }

    /// Stops sending and waits for every request sent to end (each is bounded by
    /// `REQUEST_LIMIT`); returns the outcomes in the order sent.
    async fn finish(&mut self) -> Vec<Outcome> {
        self.stop.cancel();
        if let Some(sender) = self.sender.take() {
            sender.await.unwrap();
        }
        let deadline = Instant::now() + REQUEST_LIMIT + Duration::from_secs(5);
        while self.outcomes.lock().unwrap().len() < self.sent.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "requests still running");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.outcomes()
    }

    fn outcomes(&self) -> Vec<Outcome> {
        let mut outcomes = self.outcomes.lock().unwrap().clone();
        outcomes.sort_by_key(|o| o.sent);
        outcomes
    }

    /// Waits until the last `n` requests that ended, all sent after `since`, succeeded
    /// promptly.
    async fn succeeding_since(&self, since: Instant, n: usize, emulator: &Emulator) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let outcomes = self.outcomes();
            let streak = outcomes
                .iter()
                .rev()
                .take_while(|o| o.sent > since && o.prompt())
                .count();
            if streak >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "requests did not succeed again within 60 s of the fault:\n{}\n{}",
                emulator.stdout(),
                emulator.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a fault cost: requests sent after it, those that failed and those that succeeded
/// only slowly, and the time from the fault to the last request that did not get through
/// promptly (zero when all did).
#[derive(Debug)]
struct Figures {
    failed: usize,
    slow: usize,
    total: usize,
    recovery: Duration,
}

fn figures(outcomes: &[Outcome], fault: Instant) -> Figures {
    let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.sent >= fault).collect();
    Figures {
        failed: after.iter().filter(|o| !o.ok).count(),
        slow: after.iter().filter(|o| o.ok && !o.prompt()).count(),
        total: after.len(),
        recovery: after
            .iter()
            .filter(|o| !o.prompt())
            .map(|o| o.sent.duration_since(fault))
            .max()
            .unwrap_or(Duration::ZERO),
    }
}

/// The running instance of the service (found by the emulator's labels).
fn the_instance(service: &str) -> String {
    let out = run_checked(Command::new("docker").args([
        "ps",
        "-q",
        "--filter",
        "label=dev.emulate.managed=true",
        "--filter",
        &format!("label=dev.emulate.service={service}"),
    ]));
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 1, "expected one running instance: {ids:?}");
    ids[0].to_string()
}

/// Unpauses a paused container when dropped, so a failing test leaves none frozen.
struct Unpause(String);

impl Drop for Unpause {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["unpause", &self.0]).output();
    }
}

/// Runs the load against a new emulator, applies `fault` to its instance, waits for requests
/// to succeed again, prints and checks the figures, then stops the emulator and checks that
/// nothing of the service is left.
async fn under_load(name: &str, fault: &[&str]) -> Figures {
    let mut emulator = Emulator::start(&service_name(name), &[testapp_image()]).await;
    let mut load = Load::start(emulator.url("/"));
    load.succeeding_since(Instant::now(), 20, &emulator).await;

    let instance = the_instance(&emulator.service);
    let paused = (fault[0] == "pause").then(|| Unpause(instance.clone()));
    let at = Instant::now();
    let mut command = Command::new("docker");
    command.args(fault).arg(&instance);
    run_checked(&mut command);
    load.succeeding_since(at, 40, &emulator).await;
    let recovered = at.elapsed();
    // Requests that hung on a paused instance are answered once it runs again.
    drop(paused);
    let figures = figures(&load.finish().await, at);
    println!(
        "docker {}: {}/{} requests failed, {} more took over {SLOW:?}; the last of those was sent {:?} after the fault; 40 in a row got through {:?} after it",
        fault.join(" "),
        figures.failed,
        figures.total,
        figures.slow,
        figures.recovery,
        recovered
    );

    emulator.signal("INT");
    let finished = emulator.wait(Duration::from_secs(60)).await;
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    assert_eq!(
        containers_of(&emulator.service),
        Vec::<String>::new(),
        "containers left after the emulator stopped:\n{}",
        finished.stdout
    );
    assert!(
        figures.recovery < Duration::from_secs(30),
        "took {:?} to recover",
        figures.recovery
    );
    assert!(
        figures.failed * 2 < figures.total,
        "most requests failed: {figures:?}"
    );
    figures
}

#[tokio::test]
async fn a_killed_instance_is_replaced_under_load() {
    under_load("kill", &["kill"]).await;
}

#[tokio::test]
async fn a_removed_instance_is_replaced_under_load() {
    under_load("rm", &["rm", "-f"]).await;
}

#[tokio::test]
async fn a_paused_instance_is_worked_around_under_load() {
    under_load("pause", &["pause"]).await;
}
