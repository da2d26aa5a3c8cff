//! The instances of one revision, scaled the way Cloud Run scales them, and the leases
//! requests hold on them. A request leases a slot on an instance (never more than
//! `containerConcurrency` per instance) for its whole life (response body and WebSocket tunnel
//! included); with no free slot it waits while instances start (a cold start at zero), gives
//! up after 10 s when max instances are all busy, and is refused at once past the waiting
//! bound ([`AcquireError`]: the front end answers Cloud Run's 429 or 503).
//! An autoscaler tick starts instances ahead of demand and removes idle ones after the idle
//! timeout (down to min instances, or zero). Removal drains first: no new leases, in-flight
//! requests finish, then SIGTERM, 10 s, SIGKILL.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use http::uri::Authority;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::cloudrun;
use crate::events::{Event, SystemKind};
use crate::instances::autoscaler::{self, Autoscaler};
use crate::instances::files;
pub use crate::instances::instance::InstanceContext;
use crate::instances::instance::{self, Instance, RevisionSpec, StartError, StartFailure, Tasks};
use crate::instances::probe::{self, HealthProbe};
use crate::instances::revision::ScalingConfig;
use crate::instances::throttle::{Activity, Finding, RequestName};
use crate::metrics::{Histogram, STARTUP_BUCKETS_MS};

/// How long a request waits for a free slot when no instance is starting for it.
pub const NO_CAPACITY_WAIT: Duration = Duration::from_secs(10);
/// How often the autoscaler looks at the pool.
const TICK: Duration = Duration::from_secs(1);

/// Requests that may wait for a slot: one full load's worth, within sane bounds.
fn waiting_bound(scaling: &ScalingConfig) -> usize {
    (scaling.concurrency as usize * scaling.max_instances as usize).clamp(10, 10_000)
}

/// The instances of one revision. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    spec: RevisionSpec,
    /// The service and revision names, shared by every request's log record.
    names: (Arc<str>, Arc<str>),
    ctx: InstanceContext,
    state: Mutex<State>,
    /// Signalled when a slot frees, an instance becomes ready, fails to start, or exits, and
    /// when a spare's creation ends.
    changed: Notify,
    /// Every task of this pool (starts, exit and liveness watchers, log streams, the
    /// autoscaler tick, spare creation, scale-down drains): a stop waits for them all.
    tasks: Tasks,
    /// Cancelled when the pool stops for good (`stop_all`, `kill_all`): its tick and
    /// watchers end at once instead of at their next wake-up.
    closed: CancellationToken,
}

struct State {
    members: Vec<Member>,
    /// Instances being started (counted from the decision, so others do not start more).
    starting: usize,
    /// Requests waiting for a slot.
    waiters: usize,
    next_key: u64,
    /// While retiring, no instance is started; existing ones are drained then stopped.
    retiring: bool,
    /// Cancelled when the pool retires or stops: starts in progress give up and remove their
    /// container. A child of the context's token; replaced when the pool serves again.
    cancel: CancellationToken,
    /// Counts failed starts, so a waiting request can tell that the start it waited for failed.
    failed_starts: u64,
    consecutive_failures: u32,
    last_failure_at: Option<Instant>,
    /// A container created ahead of time for the next start.
    spare: Option<String>,
    creating_spare: bool,
    autoscaler: Autoscaler,
    stats: Stats,
    /// The SIGTERM warning was given for this revision.
    warned_sigterm: bool,
    /// The first work an instance did between requests (reported once per revision).
    background_work: Option<Finding>,
    /// The measured memory peak of the last instance killed for memory, in bytes.
    last_oom_peak: Option<u64>,
}

#[derive(Clone, Debug)]
struct Stats {
    requests: u64,
    cold_starts: u64,
    cold_start_total: Duration,
    last_cold_start: Option<Duration>,
    rejected: u64,
    /// From container start to a passed startup probe, for the last instance that started.
    last_startup: Option<Duration>,
    /// Instances that exited by themselves, and how many of them the engine OOM-killed.
    crashes: u64,
    oom_kills: u64,
    /// Instances that ignored SIGTERM for the whole grace period and were SIGKILLed.
    killed_after_grace: u64,
    /// From container start to a passed startup probe, for every instance that started.
    startup_latencies: Histogram,
    /// Billable instance time of instances no longer in the pool, and of the busy spells
    /// that ended: startup, and time with at least one request in flight.
    billable: Duration,
    /// Instances whose PID 1 was found at start to ignore SIGTERM.
    ignores_sigterm: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: 0,
            cold_starts: 0,
            cold_start_total: Duration::ZERO,
            last_cold_start: None,
            rejected: 0,
            last_startup: None,
            crashes: 0,
            oom_kills: 0,
            killed_after_grace: 0,
            startup_latencies: Histogram::new(STARTUP_BUCKETS_MS),
            billable: Duration::ZERO,
            ignores_sigterm: 0,
        }
    }
}

struct Member {
    key: u64,
    instance: Instance,
    /// The instance's short id, shared with its leases (for the request log).
    id: Arc<str>,
    /// Its PID 1 was found to ignore SIGTERM (and counted).
    ignores_sigterm: bool,
    authority: Authority,
    in_flight: u32,
    draining: bool,
    /// A request could not reach it: no new leases until Docker says it still runs (its
    /// address may soon belong to another container).
    suspect: bool,
    started: Instant,
    idle_since: Instant,
    /// Since when it has had a request in flight (meaningful while `in_flight > 0`).
    busy_since: Instant,
    /// Ends the instance's watchers (exit, liveness) when it leaves the pool's hands.
    _watchers: DropGuard,
}

impl State {
    /// An instance leaves the pool: a busy spell it is in the middle of is billed now (its
    /// leases, when they end, no longer find it).
    fn bill_departure(&mut self, member: &Member) {
        if member.in_flight > 0 {
            self.stats.billable += member.busy_since.elapsed();
        }
    }
}

impl Member {
    /// Whether new requests may go to it.
    fn usable(&self) -> bool {
        !self.draining && !self.suspect
    }
}

/// A request's slot on an instance; dropping it frees the slot.
pub struct Lease {
    pool: Arc<PoolInner>,
    key: u64,
    /// Where to send the request: the instance's `IP:PORT`.
    pub authority: Authority,
    /// The same, as an address.
    pub addr: std::net::SocketAddr,
    /// The instance's short id.
    instance: Arc<str>,
    /// The instance's CPU allocation: restored when the lease is granted, throttled when the
    /// instance's last lease goes.
    activity: Arc<Activity>,
    /// `METHOD /path`, as the front end noted it (for the background-work warning).
    request: OnceLock<RequestName>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let request = self.request.take().unwrap_or("a request".into());
        self.activity.end(Some(request));
        let mut state = self.pool.lock();
        let waiters = state.waiters;
        let Some(member) = state.members.iter_mut().find(|m| m.key == self.key) else {
            return;
        };
        member.in_flight -= 1;
        let idle = member.in_flight == 0;
        let (busy_since, draining) = (member.busy_since, member.draining);
        if idle {
            let now = Instant::now();
            member.idle_since = now;
            // A busy spell ended: billable, as Cloud Run bills request time.
            state.stats.billable += now.duration_since(busy_since);
        }
        // Someone may be waiting for this slot, or for this instance to drain.
        let wake = waiters > 0 || (draining && idle);
        drop(state);
        if wake {
            self.pool.changed.notify_waiters();
        }
    }
}

impl Lease {
    /// The revision's spec (service and revision names).
    pub fn spec(&self) -> &RevisionSpec {
        &self.pool.spec
    }

    /// The short id of the instance holding the slot.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// What the request is (`GET /report`), named if the instance works after its response.
    pub fn note_request(&self, request: RequestName) {
        let _ = self.request.set(request);
    }

    /// The service and revision names, shared (for the request log).
    pub fn names(&self) -> (Arc<str>, Arc<str>) {
        self.pool.names.clone()
    }

    /// The short id of the instance holding the slot, shared.
    pub fn instance_id(&self) -> Arc<str> {
        self.instance.clone()
    }

    /// The request could not reach the instance (refused, reset, closed early). It gets no
    /// new requests until Docker confirms it still runs: if it died, its address is free and
    /// may soon belong to another container, which must never receive this revision's traffic.
    pub fn unreachable(&self) {
        {
            let mut state = self.pool.lock();
            let Some(member) = state.members.iter_mut().find(|m| m.key == self.key) else {
                return;
            };
            if member.suspect {
                return;
            }
            member.suspect = true;
        }
        let (pool, key) = (Pool::from_inner(self.pool.clone()), self.key);
        pool.clone().spawn(async move { pool.recheck(key).await });
    }
}

/// Counts a request among the waiters until it leases a slot or gives up (dropped, say, when
/// the client goes away).
struct Waiting {
    pool: Arc<PoolInner>,
    counted: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.counted {
            self.pool.lock().waiters -= 1;
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

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    /// Its container starts, or its startup probe has not passed yet.
    Starting,
    /// It takes requests.
    Ready,
    /// It takes no new request; those in flight finish, then it stops.
    Draining,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Draining => "draining",
        }
    }
}

/// One instance, as a pool's snapshot sees it.
#[derive(Clone, Debug)]
pub struct InstanceSnapshot {
    /// Its short id (empty while starting: the id comes with the container).
    pub id: String,
    /// The engine's container id (empty while starting), for its stats.
    pub container_id: String,
    pub state: InstanceState,
    pub in_flight: u32,
    /// Since it became ready (zero while starting).
    pub age: Duration,
}

/// A pool's instances and counters at one moment.
#[derive(Clone, Debug)]
pub struct PoolSnapshot {
    pub service: String,
    pub revision: String,
    pub instances: Vec<InstanceSnapshot>,
    /// Requests waiting for a slot.
    pub waiting: usize,
    pub requests: u64,
    pub cold_starts: u64,
    pub last_cold_start: Option<Duration>,
    pub average_cold_start: Option<Duration>,
    pub rejected: u64,
    pub last_startup: Option<Duration>,
    pub crashes: u64,
    pub oom_kills: u64,
    pub killed_after_grace: u64,
    /// From container start to a passed startup probe, in ms, for every instance started.
    pub startup_latencies: Histogram,
    /// Cloud Run's billable instance time (request-based billing): every instance's startup,
    /// and the time it had at least one request in flight.
    pub billable: Duration,
    /// The revision's CPU and memory limits, per instance.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Instances whose PID 1 was found at start to ignore SIGTERM (no handler).
    pub ignores_sigterm: u64,
}

/// A pool's instances and counters.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    pub instances: Vec<InstanceStatus>,
    pub waiting: usize,
    pub requests: u64,
    pub cold_starts: u64,
    pub last_cold_start_ms: Option<u64>,
    pub average_cold_start_ms: Option<u64>,
    /// Requests refused for want of an instance (none free in time, or past the waiting
    /// bound): Cloud Run's 429.
    pub rejected: u64,
    pub last_startup_ms: Option<u64>,
    pub crashes: u64,
    pub oom_kills: u64,
    pub killed_after_grace: u64,
    /// Instances whose PID 1 was found at start to ignore SIGTERM (no handler).
    pub ignores_sigterm: u64,
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn scaling(&self) -> &ScalingConfig {
        &self.spec.config.scaling
    }

    /// The request timeout, which also bounds how long a drain waits.
    fn request_timeout(&self) -> Duration {
        self.spec.config.request_timeout
    }
}

/// Why a request got no slot on an instance, as the pool sees it. The front end turns each
/// into Cloud Run's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    /// More requests are already waiting than the pool lets wait (one full load's worth):
    /// refused at once.
    #[error("too many requests are already waiting for an instance")]
    Overloaded,
    /// No slot freed in time: 10 s when no instance could start for the request (max
    /// instances, all busy), or the request timeout while one started.
    #[error("no instance had a free slot in time")]
    TimedOut,
    /// The start the request waited for failed, and no instance can serve it.
    #[error("the instance started for the request failed to start")]
    StartFailed,
    /// The revision is being retired: it takes no new requests.
    #[error("the revision is retiring")]
    Retiring,
}

/// How long a crash-looping revision waits before its next start: 1 s, doubling, up to 32 s.
fn backoff(consecutive_failures: u32) -> Duration {
    Duration::from_secs(1 << consecutive_failures.saturating_sub(1).min(5))
}

impl Pool {
    /// Makes the pool and starts its autoscaler tick (which ends with the pool).
    pub fn new(spec: RevisionSpec, ctx: InstanceContext) -> Self {
        let autoscaler = Autoscaler::new(&spec.config.scaling);
        let pool = Pool {
            inner: Arc::new(PoolInner {
                names: (
                    Arc::from(spec.service.as_str()),
                    Arc::from(spec.revision.as_str()),
                ),
                spec,
                state: Mutex::new(State {
                    members: Vec::new(),
                    starting: 0,
                    waiters: 0,
                    next_key: 0,
                    retiring: false,
                    cancel: ctx.shutdown.child_token(),
                    failed_starts: 0,
                    consecutive_failures: 0,
                    last_failure_at: None,
                    spare: None,
                    creating_spare: false,
                    autoscaler,
                    stats: Stats::default(),
                    warned_sigterm: false,
                    background_work: None,
                    last_oom_peak: None,
                }),
                changed: Notify::new(),
                tasks: Tasks {
                    pool: TaskTracker::new(),
                    emulator: ctx.tasks.clone(),
                },
                closed: CancellationToken::new(),
                ctx,
            }),
        };
        pool.spawn(tick(Arc::downgrade(&pool.inner)));
        pool
    }

    fn from_inner(inner: Arc<PoolInner>) -> Self {
        Pool { inner }
    }

    /// Runs a task of this pool, counted by the pool's tracker and the emulator's.
    fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.tasks.spawn(task);
    }

    pub fn spec(&self) -> &RevisionSpec {
        &self.inner.spec
    }

    /// Leases a slot, starting instances when every slot is taken (a cold start at zero): the
    /// request waits for them. Gives up after 10 s when no instance can be started (max
    /// instances, all busy), at once past the waiting bound, or when the start it waited for
    /// failed.
    pub async fn acquire(&self) -> Result<Lease, AcquireError> {
        let lease = self.acquire_slot().await?;
        // Full CPU before the request is forwarded (request-based billing throttles it while
        // the instance has nothing in flight): one write to the cgroup, on the request path.
        lease.activity.begin();
        Ok(lease)
    }

    async fn acquire_slot(&self) -> Result<Lease, AcquireError> {
        let inner = &self.inner;
        let arrived = Instant::now();
        let mut waiting = Waiting {
            pool: inner.clone(),
            counted: false,
        };
        let mut failed_before = 0;
        loop {
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            let deadline = {
                let mut state = inner.lock();
                if let Some(lease) = self.try_lease(&mut state) {
                    if waiting.counted {
                        state.waiters -= 1;
                        waiting.counted = false;
                    }
                    return Ok(lease);
                }
                if state.retiring {
                    return Err(AcquireError::Retiring);
                }
                if !waiting.counted {
                    if state.waiters >= waiting_bound(inner.scaling()) {
                        state.stats.rejected += 1;
                        return Err(AcquireError::Overloaded);
                    }
                    state.waiters += 1;
                    waiting.counted = true;
                    tracing::debug!(
                        waiters = state.waiters,
                        starting = state.starting,
                        "a request waits for an instance"
                    );
                    failed_before = state.failed_starts;
                }
                // The start this request waited for failed and nothing can serve it: Cloud Run
                // answers at once. This comes before starting more, since a crash-looping
                // revision always has a (backed-off) start coming, and the request would
                // otherwise wait through all of them.
                let usable = state.members.iter().any(Member::usable);
                if !usable && state.failed_starts != failed_before {
                    return Err(AcquireError::StartFailed);
                }
                self.start_for_waiters(&mut state);
                notified.as_mut().enable();
                // While an instance starts for it, a request waits as long as its timeout
                // allows (a cold start); with none coming, 10 s.
                if state.starting > 0 {
                    arrived + inner.request_timeout()
                } else {
                    arrived + NO_CAPACITY_WAIT.min(inner.request_timeout())
                }
            };
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let mut state = inner.lock();
                if let Some(lease) = self.try_lease(&mut state) {
                    state.waiters -= 1;
                    waiting.counted = false;
                    return Ok(lease);
                }
                state.stats.rejected += 1;
                return Err(AcquireError::TimedOut);
            }
        }
    }

    /// The least busy instance with a free slot.
    fn try_lease(&self, state: &mut State) -> Option<Lease> {
        let concurrency = self.inner.scaling().concurrency;
        let member = state
            .members
            .iter_mut()
            .filter(|m| m.usable() && m.in_flight < concurrency)
            .min_by_key(|m| m.in_flight)?;
        if member.in_flight == 0 {
            member.busy_since = Instant::now();
        }
        member.in_flight += 1;
        let lease = Lease {
            pool: self.inner.clone(),
            key: member.key,
            authority: member.authority.clone(),
            addr: member.instance.addr,
            instance: member.id.clone(),
            activity: member.instance.activity.clone(),
            request: OnceLock::new(),
        };
        state.stats.requests += 1;
        Some(lease)
    }

    /// Starts as many instances as the waiting requests need (ceil(waiting / concurrency),
    /// less those already starting), within max instances.
    fn start_for_waiters(&self, state: &mut State) {
        let concurrency = self.inner.scaling().concurrency as usize;
        let coming = state.starting * concurrency;
        if state.waiters <= coming {
            return;
        }
        let wanted = (state.waiters - coming).div_ceil(concurrency);
        for _ in 0..wanted {
            if !self.spawn_start(state, cloudrun::REASON_AUTOSCALING, true) {
                break;
            }
        }
    }

    /// How many more instances max instances allows. Every instance that exists counts:
    /// a suspect one (it may well be alive) and a draining one (it still runs) as much as
    /// one starting or serving.
    fn room(&self, state: &State) -> usize {
        (self.inner.scaling().max_instances as usize)
            .saturating_sub(state.members.len() + state.starting)
    }

    /// Starts one instance in the background, if max instances allows (every start but the
    /// deploy's goes through here); `cold` when a request is waiting for it.
    fn spawn_start(&self, state: &mut State, reason: &'static str, cold: bool) -> bool {
        if self.room(state) == 0 {
            return false;
        }
        state.starting += 1;
        let delay = match state.last_failure_at {
            Some(at) if state.consecutive_failures > 0 => {
                backoff(state.consecutive_failures).saturating_sub(at.elapsed())
            }
            _ => Duration::ZERO,
        };
        let spare = state.spare.take();
        let cancel = state.cancel.clone();
        let pool = self.clone();
        self.spawn(async move {
            // A crash-looping revision backs off instead of spinning (a retire cuts it short:
            // start_instance then gives up at once).
            if !delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => {}
                }
            }
            if let Err(failure) = pool.start_instance(reason, cold, spare).await {
                if !matches!(failure.error, StartError::Cancelled) {
                    let spec = &pool.inner.spec;
                    pool.inner.ctx.events.publish(Event::StartFailed {
                        revision: spec.revision.clone(),
                        report: failure.report(spec),
                    });
                }
            }
        });
        true
    }

    /// Makes sure one instance is ready, starting it here (not in the background) so the
    /// caller gets the failure report: a deploy shows it to the user.
    pub async fn ensure_ready(&self) -> Result<(), StartFailure> {
        let spare = loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            {
                let mut state = self.inner.lock();
                if state.retiring {
                    // Serving again (traffic moved back): starts may go on.
                    state.retiring = false;
                    state.cancel = self.inner.ctx.shutdown.child_token();
                }
                if state.members.iter().any(|m| !m.draining) {
                    return Ok(());
                }
                // Within max instances: with no room (an instance starting, or one still
                // draining), wait for it to become ready or to go.
                if self.room(&state) > 0 {
                    state.starting += 1;
                    break state.spare.take();
                }
                notified.as_mut().enable();
            }
            notified.await;
        };
        self.start_instance(cloudrun::REASON_AUTOSCALING, false, spare)
            .await
    }

    /// Starts one instance and adds it to the pool; `starting` was counted by the caller.
    async fn start_instance(
        &self,
        reason: &str,
        cold: bool,
        spare: Option<String>,
    ) -> Result<(), StartFailure> {
        let inner = &self.inner;
        let ctx = &inner.ctx;
        let began = Instant::now();
        let cancel = inner.lock().cancel.clone();
        let mut result = if cancel.is_cancelled() {
            if let Some(id) = spare {
                let _ = ctx.runtime.remove(&id).await;
            }
            Err(StartFailure {
                error: StartError::Cancelled,
                last_logs: Vec::new(),
            })
        } else {
            instance::start(ctx, &inner.spec, &inner.tasks, reason, &cancel, spare).await
        };
        let unwanted = result.is_ok() && (inner.lock().retiring || cancel.is_cancelled());
        if unwanted {
            // Ready just as the pool retired or stopped: it must not outlive the pool.
            // `starting` still counts it, so a stop waiting for starts waits for this too.
            if let Ok(started) = result {
                if let Err(e) = started.kill(&ctx.runtime).await {
                    ctx.events.publish(Event::error(e.to_string()));
                }
            }
            result = Err(StartFailure {
                error: StartError::Cancelled,
                last_logs: Vec::new(),
            });
        }
        let mut state = inner.lock();
        let outcome = match result {
            Ok(started) => {
                let key = state.next_key;
                state.next_key += 1;
                state.consecutive_failures = 0;
                state.last_failure_at = None;
                state.stats.last_startup = Some(started.startup);
                state
                    .stats
                    .startup_latencies
                    .observe(started.startup.as_secs_f64() * 1000.0);
                // Cloud Run bills an instance's startup.
                state.stats.billable += started.startup;
                if cold {
                    let took = began.elapsed();
                    state.stats.cold_starts += 1;
                    state.stats.cold_start_total += took;
                    state.stats.last_cold_start = Some(took);
                }
                let authority = Authority::try_from(started.addr.to_string().as_str())
                    .expect("a socket address is a valid authority");
                let container_id = started.container_id.clone();
                let now = Instant::now();
                let watchers = inner.closed.child_token();
                state.members.push(Member {
                    key,
                    authority,
                    id: Arc::from(started.id.as_str()),
                    ignores_sigterm: false,
                    instance: started,
                    in_flight: 0,
                    draining: false,
                    suspect: false,
                    started: now,
                    idle_since: now,
                    busy_since: now,
                    _watchers: watchers.clone().drop_guard(),
                });
                self.spawn(
                    self.clone()
                        .watch_exit(key, container_id.clone(), watchers.clone()),
                );
                if let Some(member) = state.members.last() {
                    let watch = self.clone().watch_memory(
                        member.instance.id.clone(),
                        container_id,
                        member.instance.activity.clone(),
                        member.instance.upper_dir.clone(),
                    );
                    let gone = watchers.clone();
                    self.spawn(async move {
                        gone.run_until_cancelled(watch).await;
                    });
                }
                self.spawn(self.clone().check_sigterm(key));
                if let Some(liveness) = &inner.spec.config.container.liveness {
                    // The probe port is the serving port unless the probe names another.
                    let target = match liveness.port == inner.spec.config.container.port {
                        true => state.members.last().map(|m| m.instance.addr),
                        false => state.members.last().map(|m| {
                            std::net::SocketAddr::new(m.instance.addr.ip(), liveness.port)
                        }),
                    };
                    if let Some(target) = target {
                        self.spawn(self.clone().watch_liveness(key, target, watchers));
                    }
                }
                self.keep_a_spare(&mut state);
                Ok(())
            }
            Err(failure) if matches!(failure.error, StartError::Cancelled) => Err(failure),
            Err(failure) => {
                state.failed_starts += 1;
                state.consecutive_failures += 1;
                state.last_failure_at = Some(Instant::now());
                Err(failure)
            }
        };
        state.starting -= 1;
        drop(state);
        inner.changed.notify_waiters();
        outcome
    }

    /// Says, once per revision, that an instance's PID 1 will ignore SIGTERM: read when it is
    /// ready and again a second later (some apps install their handler just after they
    /// listen).
    async fn check_sigterm(self, key: u64) {
        for wait in [Duration::ZERO, Duration::from_secs(1)] {
            tokio::time::sleep(wait).await;
            let pid = {
                let state = self.inner.lock();
                match state.members.iter().find(|m| m.key == key) {
                    Some(member) => member.instance.pid,
                    None => return,
                }
            };
            match pid.and_then(probe::read_sigterm) {
                Some(sigterm) if sigterm.certainly_ignored() => {}
                _ => return,
            }
        }
        let mut state = self.inner.lock();
        if let Some(member) = state.members.iter_mut().find(|m| m.key == key) {
            member.ignores_sigterm = true;
            self.found_ignoring_sigterm(state);
        }
    }

    /// Counts an instance found to ignore SIGTERM, and says so once per revision.
    fn found_ignoring_sigterm(&self, mut state: MutexGuard<'_, State>) {
        state.stats.ignores_sigterm += 1;
        let first = !std::mem::replace(&mut state.warned_sigterm, true);
        drop(state);
        if first {
            self.inner
                .ctx
                .events
                .publish(Event::warning(cloudrun::ignores_sigterm(
                    &self.inner.spec.revision,
                )));
        }
    }

    /// Creates the next instance's container ahead of time, so a cold start skips the create.
    fn keep_a_spare(&self, state: &mut State) {
        if state.spare.is_some() || state.creating_spare || state.retiring {
            return;
        }
        state.creating_spare = true;
        let pool = self.clone();
        self.spawn(async move {
            let ctx = &pool.inner.ctx;
            let created = instance::create(&ctx.runtime, &pool.inner.spec, ctx.mode).await;
            let unwanted = {
                let mut state = pool.inner.lock();
                match created {
                    Ok(id)
                        if state.spare.is_none()
                            && !state.retiring
                            && !ctx.shutdown.is_cancelled() =>
                    {
                        state.spare = Some(id);
                        None
                    }
                    Ok(id) => Some(id),
                    Err(e) => {
                        tracing::debug!("could not create a spare container: {e}");
                        None
                    }
                }
            };
            if let Some(id) = unwanted {
                let _ = ctx.runtime.remove(&id).await;
            }
            // Cleared only now: a retire waits on it, so no spare outlives the pool.
            pool.inner.lock().creating_spare = false;
            pool.inner.changed.notify_waiters();
        });
    }

    /// Removes an instance whose container exits by itself (a crash, an OOM kill) and says so
    /// in Cloud Run's words. An instance the emulator stops is taken out of the pool first, so
    /// its exit is not reported as a crash.
    async fn watch_exit(self, key: u64, container_id: String, gone: CancellationToken) {
        let ctx = &self.inner.ctx;
        let exited = tokio::select! {
            exited = Instance::exited(&ctx.runtime, &container_id) => exited,
            // Taken out of the pool (stopped by it): not a crash.
            _ = gone.cancelled() => return,
        };
        let member = {
            let mut state = self.inner.lock();
            let Some(index) = state.members.iter().position(|m| m.key == key) else {
                return;
            };
            let member = state.members.remove(index);
            state.bill_departure(&member);
            state.stats.crashes += 1;
            if matches!(exited, Ok((_, true))) {
                state.stats.oom_kills += 1;
            }
            // A crash soon after start counts toward the back-off, so a crash loop slows
            // down; an instance that ran a while is simply replaced on the next request.
            if member.started.elapsed() < Duration::from_secs(10) {
                state.consecutive_failures += 1;
                state.last_failure_at = Some(Instant::now());
            }
            member
        };
        self.inner.changed.notify_waiters();
        match exited {
            Ok((code, oom_killed)) => {
                let peak = member.instance.activity.sample_memory_peak();
                self.report_exit(&member.instance.id, code, oom_killed, peak);
            }
            Err(e) => ctx.events.publish(Event::warning(format!(
                "lost track of instance {}: {e}",
                member.instance.id
            ))),
        }
        if let Err(e) = member.instance.kill(&ctx.runtime).await {
            ctx.events.publish(Event::warning(e.to_string()));
        }
    }

    /// Runs the revision's liveness probe against one instance; after `failureThreshold`
    /// failures in a row the instance is taken out and restarted (replaced on demand).
    async fn watch_liveness(self, key: u64, target: std::net::SocketAddr, gone: CancellationToken) {
        let Some(liveness) = self.inner.spec.config.container.liveness.clone() else {
            return;
        };
        // Ends as soon as the instance leaves the pool, not at its next probe.
        gone.run_until_cancelled(self.probe_liveness(key, target, liveness))
            .await;
    }

    async fn probe_liveness(&self, key: u64, target: std::net::SocketAddr, liveness: HealthProbe) {
        tokio::time::sleep(liveness.initial_delay).await;
        let mut failures = 0;
        loop {
            // Only while it serves; the probe's CPU is not the app's background work.
            let Some(activity) = self
                .inner
                .lock()
                .members
                .iter()
                .find(|m| m.key == key && !m.draining)
                .map(|m| m.instance.activity.clone())
            else {
                return;
            };
            activity.begin();
            let passed = liveness.probe(target).await;
            activity.end(None);
            if passed {
                failures = 0;
            } else {
                failures += 1;
            }
            if failures >= liveness.failure_threshold {
                break;
            }
            tokio::time::sleep(liveness.period).await;
        }
        let member = {
            let mut state = self.inner.lock();
            let Some(index) = state.members.iter().position(|m| m.key == key) else {
                return;
            };
            let member = state.members.remove(index);
            state.bill_departure(&member);
            member
        };
        self.inner.changed.notify_waiters();
        let spec = &self.inner.spec;
        let what = liveness.target();
        let events = &self.inner.ctx.events;
        events.publish(Event::system(
            SystemKind::LivenessFailed,
            &spec.service,
            &spec.revision,
            Some(&member.instance.id),
            format!(
                "LIVENESS {} probe failed {failures} times consecutively for container \"{}\" {what}. The instance {} will be restarted.",
                liveness.kind(),
                spec.service,
                member.instance.id
            ),
        ));
        if let Err(e) = member.instance.kill(&self.inner.ctx.runtime).await {
            events.publish(Event::warning(e.to_string()));
        }
        // Cloud Run restarts the container: keep the revision's capacity.
        let mut state = self.inner.lock();
        if !state.retiring && state.members.iter().all(|m| m.draining) && state.starting == 0 {
            self.spawn_start(&mut state, cloudrun::REASON_AUTOSCALING, false);
        }
    }

    /// Clears a suspicion when the instance's container still runs; a dead one is removed by
    /// its exit watcher.
    async fn recheck(&self, key: u64) {
        let container_id = {
            let state = self.inner.lock();
            match state.members.iter().find(|m| m.key == key) {
                Some(m) => m.instance.container_id.clone(),
                None => return,
            }
        };
        let running = self
            .inner
            .ctx
            .runtime
            .inspect(&container_id)
            .await
            .is_ok_and(|info| info.running);
        if running {
            if let Some(m) = self.inner.lock().members.iter_mut().find(|m| m.key == key) {
                m.suspect = false;
            }
            self.inner.changed.notify_waiters();
        }
    }

    /// Cloud Run's lines for an instance that exited by itself: the memory limit when the
    /// engine OOM-killed it, then `Container called exit(N).`
    fn report_exit(&self, instance: &str, code: i64, oom_killed: bool, peak: Option<u64>) {
        let (events, spec) = (&self.inner.ctx.events, &self.inner.spec);
        let line =
            |kind, text| Event::system(kind, &spec.service, &spec.revision, Some(instance), text);
        if oom_killed {
            // The peak the cgroup recorded (sampled while it existed: it goes with the
            // container). The kernel kills at the limit, so without a reading the limit is
            // the best figure.
            let limit_bytes = self.inner.spec.config.container.memory_bytes;
            let used = peak.unwrap_or(limit_bytes);
            self.inner.lock().last_oom_peak = Some(used);
            events.publish(line(
                SystemKind::OutOfMemory,
                cloudrun::memory_limit_exceeded(limit_bytes >> 20, mib_rounded(used)),
            ));
        }
        events.publish(line(
            SystemKind::Exited,
            cloudrun::container_called_exit(code),
        ));
    }

    /// One autoscaler decision: observe the load, start what it asks for, drain and stop the
    /// idle instances it lets go.
    fn scale(&self) {
        let inner = &self.inner;
        let mut state = inner.lock();
        if state.retiring {
            return;
        }
        let now = Instant::now();
        let load: u32 = state.members.iter().map(|m| m.in_flight).sum();
        let observed = f64::from(load) + state.waiters as f64;
        state.autoscaler.observe(now, observed);
        let active: Vec<usize> = (0..state.members.len())
            .filter(|&i| !state.members[i].draining)
            .collect();
        let view = autoscaler::View {
            starting: state.starting as u32,
            idle_for: active
                .iter()
                .map(|&i| {
                    let m = &state.members[i];
                    (m.in_flight == 0).then(|| now.duration_since(m.idle_since))
                })
                .collect(),
        };
        let decision = state.autoscaler.decide(now, &view);
        let reason = if decision.for_min_instances {
            cloudrun::REASON_MIN_INSTANCES
        } else {
            cloudrun::REASON_AUTOSCALING
        };
        for _ in 0..decision.start {
            if !self.spawn_start(&mut state, reason, false) {
                break;
            }
        }
        let idle_timeout = inner.scaling().idle_timeout;
        let stopping: Vec<u64> = decision
            .stop
            .iter()
            .filter_map(|&i| active.get(i).copied())
            .map(|i| {
                state.members[i].draining = true;
                state.members[i].key
            })
            .collect();
        drop(state);
        for key in stopping {
            let pool = self.clone();
            self.spawn(async move {
                let reason = format!("idle for {}; scaling down", humantime(idle_timeout));
                pool.drain_and_stop(Some(key), &reason).await;
            });
        }
    }

    /// Waits until the instance `key` (or every instance, with None) has no request in
    /// flight, or the request timeout passes, then stops and removes it.
    async fn drain_and_stop(&self, key: Option<u64>, reason: &str) {
        let inner = &self.inner;
        // The instances there now: one started while this drain waits (traffic came back to a
        // retiring revision) is not this drain's to stop.
        let keys: Vec<u64> = match key {
            Some(key) => vec![key],
            None => inner.lock().members.iter().map(|m| m.key).collect(),
        };
        let selected = |m: &Member| keys.contains(&m.key);
        let deadline = Instant::now() + inner.request_timeout();
        loop {
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            {
                let mut state = inner.lock();
                for m in state.members.iter_mut().filter(|m| selected(m)) {
                    m.draining = true;
                }
                if state
                    .members
                    .iter()
                    .filter(|m| selected(m))
                    .all(|m| m.in_flight == 0)
                {
                    break;
                }
                notified.as_mut().enable();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let members: Vec<Member> = {
            let mut state = inner.lock();
            let (taken, kept): (Vec<Member>, Vec<Member>) = std::mem::take(&mut state.members)
                .into_iter()
                .partition(|m| selected(m));
            state.members = kept;
            for member in &taken {
                state.bill_departure(member);
            }
            taken
        };
        // Room under max instances for a deploy waiting in `ensure_ready`.
        inner.changed.notify_waiters();
        self.stop_members(members, cloudrun::SHUTDOWN_GRACE, reason)
            .await;
    }

    /// Stops serving: drains every instance, then stops them and removes the spare. The pool
    /// can be started again (traffic moved back).
    pub async fn retire(&self, reason: &str) {
        self.stop_starting().await;
        self.drain_and_stop(None, reason).await;
        self.remove_spare().await;
    }

    /// Stops starting instances: no new start, and those in progress give up (their container
    /// removed). Returns once none is starting, so nothing this pool began outlives the stop.
    async fn stop_starting(&self) {
        let inner = &self.inner;
        {
            let mut state = inner.lock();
            state.retiring = true;
            state.cancel.cancel();
        }
        loop {
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            {
                if inner.lock().starting == 0 {
                    return;
                }
                notified.as_mut().enable();
            }
            notified.await;
        }
    }

    /// Drains and stops every instance but keeps serving: the next request cold-starts. For a
    /// smoke test's cold-start check.
    pub async fn scale_to_zero(&self, reason: &str) {
        self.drain_and_stop(None, reason).await;
    }

    /// Removes the spare container, waiting first for one being created (which, seeing the
    /// pool retiring, removes itself): no spare outlives a retire.
    async fn remove_spare(&self) {
        let inner = &self.inner;
        let spare = loop {
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            {
                let mut state = inner.lock();
                if !state.creating_spare {
                    break state.spare.take();
                }
                notified.as_mut().enable();
            }
            notified.await;
        };
        if let Some(id) = spare {
            let _ = inner.ctx.runtime.remove(&id).await;
        }
    }

    /// Stops every instance now (no drain), in parallel, and removes the spare; for good:
    /// returns once every task of the pool has ended.
    pub async fn stop_all(&self, grace: Duration, reason: &str) {
        self.stop_starting().await;
        // One whose PID 1 ignores SIGTERM (read now) would only wait out the grace period:
        // it is killed at once. One that handles SIGTERM gets the grace, as on Cloud Run.
        let (deaf, members): (Vec<Member>, Vec<Member>) =
            self.take_members().into_iter().partition(|m| {
                m.instance
                    .sigterm()
                    .is_some_and(probe::Sigterm::certainly_ignored)
            });
        // Those stopped before the second look at start are found now.
        for _ in deaf.iter().filter(|m| !m.ignores_sigterm) {
            self.found_ignoring_sigterm(self.inner.lock());
        }
        let deaf_reason = format!("{reason}; its PID 1 ignores SIGTERM, so it is killed at once");
        tokio::join!(
            self.stop_members(deaf, Duration::ZERO, &deaf_reason),
            self.stop_members(members, grace, reason)
        );
        self.remove_spare().await;
        self.close().await;
    }

    /// Takes every instance out of the pool, to be stopped; drains waiting on them end.
    fn take_members(&self) -> Vec<Member> {
        let members = {
            let mut state = self.inner.lock();
            let members = std::mem::take(&mut state.members);
            for member in &members {
                state.bill_departure(member);
            }
            members
        };
        self.inner.changed.notify_waiters();
        members
    }

    /// Ends the pool's tick and watchers and waits for every task it spawned.
    async fn close(&self) {
        self.inner.closed.cancel();
        self.inner.tasks.pool.close();
        self.inner.tasks.pool.wait().await;
    }

    async fn stop_members(&self, members: Vec<Member>, grace: Duration, reason: &str) {
        let ctx = &self.inner.ctx;
        let (service, revision) = (&self.inner.spec.service, &self.inner.spec.revision);
        for member in &members {
            // What it did since its last response, before SIGTERM makes it do more.
            self.note_background_work(member.instance.activity.settle());
        }
        let stops = members.into_iter().map(|member| async move {
            let id = member.instance.id.clone();
            let activity = member.instance.activity.clone();
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
                        ctx.events.publish(Event::error(format!(
                            "{e}; remove it by hand: docker rm -f {container_id}"
                        )));
                    }
                    return;
                }
            };
            if let Ok(report) = &stopped {
                let mut state = self.inner.lock();
                state.stats.killed_after_grace += u64::from(report.killed && !grace.is_zero());
                // It died before the stop; the exit watcher had not caught up yet.
                state.stats.crashes += u64::from(report.already_exited);
                state.stats.oom_kills += u64::from(report.already_exited && report.oom_killed);
            }
            match stopped {
                Ok(report) if report.already_exited => {
                    let peak = activity.memory_peak();
                    self.report_exit(&id, report.exit_code.unwrap_or(-1), report.oom_killed, peak);
                }
                Ok(report) if report.killed => ctx.events.publish(Event::system(
                    SystemKind::Stopped,
                    service,
                    revision,
                    Some(&id),
                    format!("Instance {id} stopped ({reason}): it did not exit within {} s of SIGTERM and was sent SIGKILL.", grace.as_secs()),
                )),
                Ok(report) => ctx.events.publish(Event::system(
                    SystemKind::Stopped,
                    service,
                    revision,
                    Some(&id),
                    format!(
                        "Instance {id} stopped ({reason}): exited{} {:.1} s after SIGTERM.",
                        report.exit_code.map(|c| format!(" with code {c}")).unwrap_or_default(),
                        report.took.as_secs_f64()
                    ),
                )),
                Err(e) => {
                    // One more try: a container must never be left behind.
                    if ctx.runtime.remove(&container_id).await.is_err() {
                        ctx.events.publish(Event::error(format!("stopping instance {id}: {e}; remove it by hand: docker rm -f {container_id}")));
                    }
                }
            }
        });
        futures_util::future::join_all(stops).await;
    }

    /// Kills every instance at once and removes them (an apply that failed, or an emergency).
    pub async fn kill_all(&self) {
        self.stop_starting().await;
        let members = self.take_members();
        let runtime = &self.inner.ctx.runtime;
        let kills = members.into_iter().map(|m| m.instance.kill(runtime));
        for result in futures_util::future::join_all(kills).await {
            if let Err(e) = result {
                self.inner.ctx.events.publish(Event::error(e.to_string()));
            }
        }
        self.remove_spare().await;
        self.close().await;
    }

    /// What the pool holds now, instance by instance, with its counters: for `describe`,
    /// the metrics and the dashboard. One short lock; no Docker call.
    pub fn snapshot(&self) -> PoolSnapshot {
        let state = self.inner.lock();
        let now = Instant::now();
        let mut instances: Vec<InstanceSnapshot> = state
            .members
            .iter()
            .map(|m| InstanceSnapshot {
                id: m.instance.id.clone(),
                container_id: m.instance.container_id.clone(),
                state: if m.draining {
                    InstanceState::Draining
                } else {
                    InstanceState::Ready
                },
                in_flight: m.in_flight,
                age: now.duration_since(m.started),
            })
            .collect();
        instances.extend((0..state.starting).map(|_| InstanceSnapshot {
            id: String::new(),
            container_id: String::new(),
            state: InstanceState::Starting,
            in_flight: 0,
            age: Duration::ZERO,
        }));
        // Busy spells in progress count up to now.
        let busy: Duration = state
            .members
            .iter()
            .filter(|m| m.in_flight > 0)
            .map(|m| now.duration_since(m.busy_since))
            .sum();
        let stats = &state.stats;
        PoolSnapshot {
            service: self.inner.spec.service.clone(),
            revision: self.inner.spec.revision.clone(),
            instances,
            waiting: state.waiters,
            requests: stats.requests,
            cold_starts: stats.cold_starts,
            last_cold_start: stats.last_cold_start,
            average_cold_start: (stats.cold_starts > 0)
                .then(|| stats.cold_start_total / stats.cold_starts as u32),
            rejected: stats.rejected,
            last_startup: stats.last_startup,
            crashes: stats.crashes,
            oom_kills: stats.oom_kills,
            killed_after_grace: stats.killed_after_grace,
            startup_latencies: stats.startup_latencies.clone(),
            billable: stats.billable + busy,
            cpu_millis: self.inner.spec.config.container.cpu_millis,
            memory_bytes: self.inner.spec.config.container.memory_bytes,
            ignores_sigterm: stats.ignores_sigterm,
        }
    }

    pub fn status(&self) -> PoolStatus {
        let snapshot = self.snapshot();
        let millis = |d: Duration| d.as_millis() as u64;
        PoolStatus {
            instances: snapshot
                .instances
                .iter()
                .map(|i| InstanceStatus {
                    id: i.id.clone(),
                    state: i.state.as_str(),
                    in_flight: i.in_flight,
                    age_seconds: i.age.as_secs(),
                })
                .collect(),
            waiting: snapshot.waiting,
            requests: snapshot.requests,
            cold_starts: snapshot.cold_starts,
            last_cold_start_ms: snapshot.last_cold_start.map(millis),
            average_cold_start_ms: snapshot.average_cold_start.map(millis),
            rejected: snapshot.rejected,
            last_startup_ms: snapshot.last_startup.map(millis),
            crashes: snapshot.crashes,
            oom_kills: snapshot.oom_kills,
            killed_after_grace: snapshot.killed_after_grace,
            ignores_sigterm: snapshot.ignores_sigterm,
        }
    }
}

/// The autoscaler's clock: one decision a second while the pool exists, until it stops for
/// good (or its service is deleted, or the emulator stops).
async fn tick(pool: Weak<PoolInner>) {
    let (closed, shutdown) = match pool.upgrade() {
        Some(inner) => (inner.closed.clone(), inner.ctx.shutdown.clone()),
        None => return,
    };
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = closed.cancelled() => return,
            _ = shutdown.cancelled() => return,
        }
        let Some(inner) = pool.upgrade() else { return };
        let pool = Pool::from_inner(inner);
        pool.scale();
        pool.look_at_activity();
    }
}

/// Bytes as whole MiB, to the nearest (a peak a page under the limit reads as the limit).
fn mib_rounded(bytes: u64) -> u64 {
    (bytes + (1 << 19)) >> 20
}

/// How often an instance's memory peak is read from its cgroup, and how often its memory and
/// written files are compared with the limit.
const MEMORY_SAMPLE: Duration = Duration::from_millis(250);
const FILES_SAMPLE: Duration = Duration::from_secs(5);

impl Pool {
    /// The first work an instance of this revision did between requests, if any.
    pub fn background_work(&self) -> Option<Finding> {
        self.inner.lock().background_work.clone()
    }

    /// The measured memory peak of the last instance killed for memory, in bytes.
    pub fn last_oom_peak(&self) -> Option<u64> {
        self.inner.lock().last_oom_peak
    }

    /// Each instance's periodic CPU look (the boost's end, throttling, background work).
    fn look_at_activity(&self) {
        let activities: Vec<Arc<Activity>> = self
            .inner
            .lock()
            .members
            .iter()
            .map(|m| m.instance.activity.clone())
            .collect();
        for activity in activities {
            self.note_background_work(activity.tick());
        }
    }

    /// Keeps the first finding and warns about it: once per revision.
    fn note_background_work(&self, findings: Vec<Finding>) {
        let Some(finding) = findings.into_iter().next() else {
            return;
        };
        {
            let mut state = self.inner.lock();
            if state.background_work.is_some() {
                return;
            }
            state.background_work = Some(finding.clone());
        }
        let spec = &self.inner.spec;
        self.inner
            .ctx
            .events
            .publish(Event::warning(finding.warning(&spec.revision)));
    }

    /// Reads an instance's memory peak while its cgroup exists (an OOM report needs it after
    /// the container is gone), and compares its memory plus the files it wrote outside its
    /// tmpfs mounts with the limit: on Cloud Run those files live in memory too.
    async fn watch_memory(
        self,
        instance: String,
        container_id: String,
        activity: Arc<Activity>,
        upper_dir: Option<String>,
    ) {
        let limit = self.inner.spec.config.container.memory_bytes;
        let mut files_due = Instant::now() + FILES_SAMPLE;
        loop {
            tokio::time::sleep(MEMORY_SAMPLE).await;
            activity.sample_memory_peak();
            if Instant::now() < files_due {
                continue;
            }
            files_due = Instant::now() + FILES_SAMPLE;
            let Some(memory) = activity.memory_in_use() else {
                continue;
            };
            let written = match upper_dir.clone() {
                Some(dir) => tokio::task::spawn_blocking(move || files::written(&dir))
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            let written = match written {
                Some(written) => written,
                // Not readable from here: the engine's measure of the whole layer.
                None => match self.inner.ctx.runtime.written_bytes(&container_id).await {
                    Ok(Some(total)) => files::Written {
                        total,
                        largest: None,
                    },
                    _ => continue,
                },
            };
            if memory + written.total > limit {
                let spec = &self.inner.spec;
                self.inner
                    .ctx
                    .events
                    .publish(Event::warning(files::over_limit(
                        &spec.revision,
                        &instance,
                        limit,
                        memory,
                        &written,
                    )));
                // Once per instance: it goes on running here.
                return;
            }
        }
    }
}

/// `15m`, `30s`, `1m30s`: how people write durations.
fn humantime(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loops_back_off_up_to_32_seconds() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 32, 32]);
    }

    #[test]
    fn the_waiting_bound_is_one_full_load() {
        let scaling = |concurrency, max_instances| ScalingConfig {
            concurrency,
            min_instances: 0,
            max_instances,
            idle_timeout: Duration::from_secs(900),
        };
        assert_eq!(waiting_bound(&scaling(1, 1)), 10);
        assert_eq!(waiting_bound(&scaling(80, 100)), 8000);
        assert_eq!(waiting_bound(&scaling(1000, 100)), 10_000);
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(humantime(Duration::from_secs(900)), "15m");
        assert_eq!(humantime(Duration::from_secs(2)), "2s");
        assert_eq!(humantime(Duration::from_secs(90)), "1m30s");
    }
}
