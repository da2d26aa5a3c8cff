//! The instances of one revision and the leases requests hold on them. A request leases an
//! instance for its whole life (response body, WebSocket tunnel included) and the lease is
//! returned when dropped, so a revision that loses its traffic can be drained: no new leases,
//! in-flight ones finish, then its containers get SIGTERM, 10 s, SIGKILL.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use http::uri::Authority;
use http::StatusCode;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cloudrun;
use crate::instance::{self, Instance, RevisionSpec, StartFailure, UpstreamMode};
use crate::logs::LogPrinter;
use crate::proxy::Refusal;
use crate::runtime::Runtime;

/// What every pool needs to start and stop containers.
#[derive(Clone, Debug)]
pub struct InstanceContext {
    pub runtime: Runtime,
    pub mode: UpstreamMode,
    pub printer: LogPrinter,
    /// Cancelled when the emulator shuts down: starts in progress give up.
    pub shutdown: CancellationToken,
    /// Cancelled by a second Ctrl-C: stops in progress turn into kills.
    pub immediate: CancellationToken,
}

/// The instances of one revision. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    spec: RevisionSpec,
    ctx: InstanceContext,
    state: Mutex<State>,
    /// Signalled when an instance becomes ready, fails to start, exits, or goes idle.
    changed: Notify,
}

#[derive(Default)]
struct State {
    members: Vec<Member>,
    starting: usize,
    next_key: u64,
    /// While retiring, no instance is started; existing ones are drained then stopped.
    retiring: bool,
    /// Counts failed starts, so a waiting request can tell that the start it waited for failed.
    failed_starts: u64,
    consecutive_failures: u32,
    last_failure_at: Option<Instant>,
    requests: u64,
}

struct Member {
    key: u64,
    instance: Instance,
    authority: Authority,
    in_flight: u32,
    created: SystemTime,
}

/// A request's hold on an instance; dropping it returns the slot.
pub struct Lease {
    pool: Arc<PoolInner>,
    key: u64,
    /// Where to send the request: the instance's `IP:PORT`.
    pub authority: Authority,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        if let Some(member) = state.members.iter_mut().find(|m| m.key == self.key) {
            member.in_flight -= 1;
            if member.in_flight == 0 {
                drop(state);
                self.pool.changed.notify_waiters();
            }
        }
    }
}

/// One instance as `describe` shows it.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    pub id: String,
    pub state: &'static str,
    pub in_flight: u32,
    pub age_seconds: u64,
}

/// A pool's counters and instances.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    pub instances: Vec<InstanceStatus>,
    pub requests: u64,
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long a crash-looping revision waits before its next start: 1 s, doubling, up to 32 s.
fn backoff(consecutive_failures: u32) -> Duration {
    Duration::from_secs(1 << consecutive_failures.saturating_sub(1).min(5))
}

impl Pool {
    pub fn new(spec: RevisionSpec, ctx: InstanceContext) -> Self {
        Pool {
            inner: Arc::new(PoolInner {
                spec,
                ctx,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
        }
    }

    pub fn spec(&self) -> &RevisionSpec {
        &self.inner.spec
    }

    /// Leases an instance, starting one if none is running (a cold start: the request waits
    /// for it). Gives up at `deadline` with 429, or with 503 when the start fails.
    pub async fn acquire(&self, deadline: Instant) -> Result<Lease, Refusal> {
        let inner = &self.inner;
        loop {
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            let failed_before;
            {
                let mut state = inner.lock();
                if let Some(member) = state.members.iter_mut().min_by_key(|m| m.in_flight) {
                    member.in_flight += 1;
                    let lease = Lease {
                        pool: inner.clone(),
                        key: member.key,
                        authority: member.authority.clone(),
                    };
                    state.requests += 1;
                    return Ok(lease);
                }
                if state.retiring {
                    return Err(unavailable(cloudrun::MALFORMED_OR_UNREACHABLE));
                }
                if state.starting == 0 {
                    if let Some(at) = state.last_failure_at {
                        if at.elapsed() < backoff(state.consecutive_failures) {
                            return Err(unavailable(cloudrun::INSTANCE_COULD_NOT_START));
                        }
                    }
                    self.spawn_start(&mut state);
                }
                failed_before = state.failed_starts;
                notified.as_mut().enable();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    cloudrun::NO_AVAILABLE_INSTANCE,
                ));
            }
            let state = inner.lock();
            if state.members.is_empty()
                && state.starting == 0
                && state.failed_starts != failed_before
            {
                return Err(unavailable(cloudrun::INSTANCE_COULD_NOT_START));
            }
        }
    }

    fn spawn_start(&self, state: &mut State) {
        state.starting += 1;
        let pool = self.clone();
        tokio::spawn(async move {
            let result = pool.start_instance().await;
            if let Err(failure) = result {
                if !matches!(failure.error, instance::StartError::Cancelled) {
                    eprintln!("ERROR: {}", failure.report(&pool.inner.spec));
                }
            }
        });
    }

    /// Makes sure one instance is ready, starting it here (not in the background) so the
    /// caller gets the failure report: a deploy shows it to the user.
    pub async fn ensure_ready(&self) -> Result<(), StartFailure> {
        {
            let mut state = self.inner.lock();
            state.retiring = false;
            if !state.members.is_empty() {
                return Ok(());
            }
            state.starting += 1;
        }
        self.start_instance().await
    }

    /// Starts one instance and adds it to the pool; `starting` was counted by the caller.
    async fn start_instance(&self) -> Result<(), StartFailure> {
        let inner = &self.inner;
        let ctx = &inner.ctx;
        let result = instance::start(
            &ctx.runtime,
            &inner.spec,
            ctx.mode,
            &ctx.printer,
            cloudrun::REASON_AUTOSCALING,
            &ctx.shutdown,
        )
        .await;
        let mut state = inner.lock();
        state.starting -= 1;
        let outcome = match result {
            Ok(started) => {
                let key = state.next_key;
                state.next_key += 1;
                state.consecutive_failures = 0;
                state.last_failure_at = None;
                let container_id = started.container_id.clone();
                let authority = Authority::try_from(started.addr.to_string().as_str())
                    .expect("a socket address is a valid authority");
                state.members.push(Member {
                    key,
                    authority,
                    instance: started,
                    in_flight: 0,
                    created: SystemTime::now(),
                });
                tokio::spawn(self.clone().watch_exit(key, container_id));
                Ok(())
            }
            Err(failure) => {
                state.failed_starts += 1;
                state.consecutive_failures += 1;
                state.last_failure_at = Some(Instant::now());
                Err(failure)
            }
        };
        drop(state);
        inner.changed.notify_waiters();
        outcome
    }

    /// Removes an instance whose container exits by itself (a crash, an OOM kill) and says so
    /// in Cloud Run's words. An instance the emulator stops is taken out of the pool first, so
    /// its exit is not reported as a crash.
    async fn watch_exit(self, key: u64, container_id: String) {
        let ctx = &self.inner.ctx;
        let exited = Instance::exited(&ctx.runtime, &container_id).await;
        let member = {
            let mut state = self.inner.lock();
            let Some(index) = state.members.iter().position(|m| m.key == key) else {
                return;
            };
            let member = state.members.remove(index);
            // A crash soon after start counts toward the back-off, so a crash loop slows
            // down; an instance that ran a while is simply replaced on the next request.
            let lived = SystemTime::now()
                .duration_since(member.created)
                .unwrap_or_default();
            if lived < Duration::from_secs(10) {
                state.consecutive_failures += 1;
                state.last_failure_at = Some(Instant::now());
            }
            member
        };
        self.inner.changed.notify_waiters();
        let revision = &self.inner.spec.revision;
        match exited {
            Ok((code, oom_killed)) => {
                if oom_killed {
                    ctx.printer.system(
                        revision,
                        &format!(
                            "Memory limit of {} MiB exceeded; the instance was killed.",
                            self.inner.spec.memory_bytes >> 20
                        ),
                    );
                }
                ctx.printer
                    .system(revision, &cloudrun::container_called_exit(code));
            }
            Err(e) => eprintln!(
                "warning: lost track of instance {}: {e}",
                member.instance.id
            ),
        }
        if let Err(e) = member.instance.kill(&ctx.runtime).await {
            eprintln!("warning: {e}");
        }
    }

    /// Stops serving: waits (up to `drain_limit`) for in-flight requests to finish, then stops
    /// every instance (SIGTERM, grace, SIGKILL) and removes it. The pool can be started again.
    pub async fn retire(&self, drain_limit: Duration, reason: &str) {
        let inner = &self.inner;
        inner.lock().retiring = true;
        let deadline = Instant::now() + drain_limit;
        loop {
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            {
                let state = inner.lock();
                if state.members.iter().all(|m| m.in_flight == 0) {
                    break;
                }
                notified.as_mut().enable();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        self.stop_all(cloudrun::SHUTDOWN_GRACE, reason).await;
    }

    /// Stops every instance now (no drain), in parallel.
    pub async fn stop_all(&self, grace: Duration, reason: &str) {
        let members: Vec<Member> = std::mem::take(&mut self.inner.lock().members);
        let ctx = &self.inner.ctx;
        let revision = &self.inner.spec.revision;
        let stops = members.into_iter().map(|member| async move {
            let id = member.instance.id.clone();
            let container_id = member.instance.container_id.clone();
            let stopped = tokio::select! {
                stopped = member.instance.stop(&ctx.runtime, grace) => stopped,
                // A second Ctrl-C: kill now, but still remove the container.
                _ = ctx.immediate.cancelled() => {
                    let killed = async {
                        ctx.runtime.kill(&container_id).await?;
                        ctx.runtime.remove(&container_id).await
                    };
                    if let Err(e) = killed.await {
                        eprintln!("error: {e}; remove it by hand: docker rm -f {container_id}");
                    }
                    return;
                }
            };
            match stopped {
                Ok(report) if report.killed => ctx.printer.system(
                    revision,
                    &format!("Instance {id} stopped ({reason}): it did not exit within {} s of SIGTERM and was sent SIGKILL.", grace.as_secs()),
                ),
                Ok(report) => ctx.printer.system(
                    revision,
                    &format!(
                        "Instance {id} stopped ({reason}): exited{} {:.1} s after SIGTERM.",
                        report.exit_code.map(|c| format!(" with code {c}")).unwrap_or_default(),
                        report.took.as_secs_f64()
                    ),
                ),
                Err(e) => {
                    // One more try: a container must never be left behind.
                    if ctx.runtime.remove(&container_id).await.is_err() {
                        eprintln!("error: stopping instance {id}: {e}; remove it by hand: docker rm -f {container_id}");
                    }
                }
            }
        });
        futures_util::future::join_all(stops).await;
    }

    /// Kills every instance at once (a second Ctrl-C) and removes them.
    pub async fn kill_all(&self) {
        let members: Vec<Member> = std::mem::take(&mut self.inner.lock().members);
        let runtime = &self.inner.ctx.runtime;
        let kills = members.into_iter().map(|m| m.instance.kill(runtime));
        for result in futures_util::future::join_all(kills).await {
            if let Err(e) = result {
                eprintln!("error: {e}");
            }
        }
    }

    pub fn status(&self) -> PoolStatus {
        let state = self.inner.lock();
        let now = SystemTime::now();
        let mut instances: Vec<InstanceStatus> = state
            .members
            .iter()
            .map(|m| InstanceStatus {
                id: m.instance.id.clone(),
                state: "ready",
                in_flight: m.in_flight,
                age_seconds: now.duration_since(m.created).unwrap_or_default().as_secs(),
            })
            .collect();
        instances.extend((0..state.starting).map(|_| InstanceStatus {
            id: String::new(),
            state: "starting",
            in_flight: 0,
            age_seconds: 0,
        }));
        PoolStatus {
            instances,
            requests: state.requests,
        }
    }
}

fn unavailable(text: &'static str) -> Refusal {
    Refusal::new(StatusCode::SERVICE_UNAVAILABLE, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loops_back_off_up_to_32_seconds() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 32, 32]);
    }
}
