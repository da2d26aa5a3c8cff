//! Cloud Run's CPU allocation for one instance, and what the instance does while it has no
//! request. With request-based billing (the default, `run.googleapis.com/cpu-throttling`
//! unset or `"true"`) an instance has its CPU only while a request is in flight (and while
//! it starts): [`Activity::begin`] restores the full limit before a request is forwarded
//! and [`Activity::end`] throttles to [`IDLE_MILLICPU`] when the last one ends. Where the
//! container's cgroup can be written (a Linux engine) that is one write to its CPU limit,
//! on the request path; elsewhere the engine's update API is called by a task, off it.
//! Startup CPU boost doubles the limit until 10 s after the instance is ready.
//!
//! Between requests it counts what Cloud Run would throttle: CPU used (sampled from the
//! cgroup, in samples above a floor so an idle runtime's ticks do not count) and log lines
//! written after the last response. A period with such work becomes a [`Finding`], which
//! the pool reports once per revision.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use http::uri::PathAndQuery;
use http::Method;
use tokio::time::Instant;

use crate::instances::cgroup::{Cgroup, CpuLimit};
use crate::instances::revision::ContainerConfig;

/// What an idle instance keeps of its CPU under request-based billing: 5% of one CPU (Cloud
/// Run says only that it is "disabled or severely limited").
pub const IDLE_MILLICPU: u64 = 50;
/// How long after a start the startup CPU boost lasts (Cloud Run: during startup and for
/// 10 seconds after).
pub const BOOST_AFTER_READY: Duration = Duration::from_secs(10);
/// The most CPU a boost gives, in millicpu (Cloud Run's largest boost is 8 CPUs).
const MAX_BOOST_MILLICPU: u64 = 8000;
/// A log line stamped within this of the response's end belongs to the request: the
/// engine stamps lines when it reads them, a little after the app wrote them.
const LOG_SLACK: Duration = Duration::from_millis(50);
/// CPU used between two samples counts as work only above this rate (per second of the
/// sample), so a runtime's idle timers and collectors are not mistaken for work.
const ACTIVE_CPU_PER_SECOND: Duration = Duration::from_millis(5);
/// CPU that makes an idle period worth a warning.
const SIGNIFICANT_CPU: Duration = Duration::from_millis(10);
/// An idle period with work is reported once it is this old, even if the work goes on.
const REPORT_AFTER: Duration = Duration::from_secs(10);

/// How a revision's instances get their CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuPolicy {
    /// Request-based billing: throttled while no request is in flight.
    pub throttling: bool,
    /// The revision's CPU limit, in millicpu.
    pub full_millicpu: u64,
    /// The limit during startup and [`BOOST_AFTER_READY`] after, with startup CPU boost.
    pub boost_millicpu: Option<u64>,
}

impl CpuPolicy {
    pub fn of(container: &ContainerConfig, host_millicpu: u64) -> Self {
        let full = container.cpu_millis;
        CpuPolicy {
            throttling: container.cpu_throttling,
            full_millicpu: full,
            // Double the CPU, within Cloud Run's largest boost and what the host has (the
            // engine refuses a limit above the host's CPUs).
            boost_millicpu: container
                .startup_cpu_boost
                .then(|| {
                    (full * 2)
                        .min(MAX_BOOST_MILLICPU)
                        .min(host_millicpu.max(full))
                })
                .filter(|&boost| boost > full),
        }
    }

    /// The limit a container is created with: the boost, if any.
    pub fn startup_millicpu(&self) -> u64 {
        self.boost_millicpu.unwrap_or(self.full_millicpu)
    }

    /// Whether the emulator ever changes the limit after the start.
    pub fn changes_cpu(&self) -> bool {
        self.throttling || self.boost_millicpu.is_some()
    }
}

/// How an instance's CPU limit is changed.
#[derive(Debug)]
pub enum Control {
    /// The cgroup's limit file, written at once (on the request path).
    Direct(CpuLimit),
    /// The wanted limit in millicpu, which a task applies through the engine's API.
    Engine(tokio::sync::watch::Sender<u64>),
    /// Nothing changes (instance-based billing without a boost).
    Fixed,
}

/// A request as the background-work warning names it (`GET /report`). Taken on the request
/// path for every request without formatting (the method and the request target are shared
/// buffers); written out only when a warning names it.
#[derive(Clone, Debug)]
pub enum RequestName {
    Seen {
        method: Method,
        target: PathAndQuery,
    },
    Text(&'static str),
}

impl From<&'static str> for RequestName {
    fn from(text: &'static str) -> Self {
        RequestName::Text(text)
    }
}

impl std::fmt::Display for RequestName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestName::Seen { method, target } => write!(f, "{method} {}", target.path()),
            RequestName::Text(text) => f.write_str(text),
        }
    }
}

/// Work an instance did with no request in flight, after a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The request whose response came before the work (`GET /report`).
    pub after: String,
    pub lines: u64,
    pub cpu: Duration,
}

impl Finding {
    /// `2 log lines and 180 ms of CPU after the response to GET /report`.
    pub fn what(&self) -> String {
        let lines = match self.lines {
            0 => None,
            1 => Some("1 log line".to_string()),
            n => Some(format!("{n} log lines")),
        };
        let cpu =
            (self.cpu >= SIGNIFICANT_CPU).then(|| format!("{} ms of CPU", self.cpu.as_millis()));
        let did = match (lines, cpu) {
            (Some(lines), Some(cpu)) => format!("{lines} and {cpu}"),
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => "work".to_string(),
        };
        format!("{did} after the response to {}", self.after)
    }

    /// The warning: what it did, what Cloud Run does to it, and what to do instead.
    pub fn warning(&self, revision: &str) -> String {
        format!(
            "revision {revision}: {}; on Cloud Run this work is throttled (CPU is allocated only while a request is processed), so it may stall or never finish. Finish the work before responding, run it as a Cloud Run job, or use instance-based billing (--no-cpu-throttling).",
            self.what()
        )
    }

    fn significant(&self) -> bool {
        self.lines > 0 || self.cpu >= SIGNIFICANT_CPU
    }
}

/// One instance's CPU allocation and its activity between requests. Shared by the pool's
/// member, its leases, its log stream and its watchers.
#[derive(Debug)]
pub struct Activity {
    policy: CpuPolicy,
    control: Control,
    cgroup: Option<Cgroup>,
    state: Mutex<State>,
    /// The highest memory peak read from the cgroup so far, in bytes (0: none read): the
    /// cgroup is gone once the container exits, so an OOM kill is reported with this.
    memory_peak: AtomicU64,
}

#[derive(Debug)]
struct State {
    /// Requests (and probes) in flight.
    busy: u32,
    /// The limit last set, in millicpu (None: as created).
    applied: Option<u64>,
    boost_until: Option<Instant>,
    /// The last request answered (`GET /path`); None before the first one.
    last_request: Option<RequestName>,
    idle: Option<Idle>,
    findings: Vec<Finding>,
}

/// Since the last response, with no request in flight.
#[derive(Debug)]
struct Idle {
    after: RequestName,
    since: Instant,
    since_wall: SystemTime,
    last_cpu: Option<Duration>,
    last_sample: Instant,
    cpu: Duration,
    lines: u64,
    worked: bool,
    /// A sample with no work after some: the work seems over.
    quiet: bool,
}

impl Idle {
    /// Counts the CPU used since the last sample, if it is above the idle floor.
    fn sample(&mut self, now: Instant, cpu_now: Option<Duration>) {
        let elapsed = now.saturating_duration_since(self.last_sample);
        self.last_sample = now;
        let (Some(before), Some(after)) = (self.last_cpu, cpu_now) else {
            self.last_cpu = cpu_now;
            return;
        };
        self.last_cpu = cpu_now;
        let used = after.saturating_sub(before);
        let floor = ACTIVE_CPU_PER_SECOND.mul_f64(elapsed.as_secs_f64().max(1.0));
        if used >= floor {
            self.cpu += used;
            self.worked = true;
            self.quiet = false;
        } else if self.worked {
            self.quiet = true;
        }
    }

    fn finding(&self) -> Finding {
        Finding {
            after: self.after.to_string(),
            lines: self.lines,
            cpu: self.cpu,
        }
    }
}

impl Activity {
    /// An instance that just became ready, with its CPU as created (boosted, if the policy
    /// boosts, until [`BOOST_AFTER_READY`] from now).
    pub fn new(policy: CpuPolicy, control: Control, cgroup: Option<Cgroup>) -> Self {
        let boost_until = policy
            .boost_millicpu
            .map(|_| Instant::now() + BOOST_AFTER_READY);
        Activity {
            policy,
            control,
            cgroup,
            state: Mutex::new(State {
                busy: 0,
                applied: None,
                boost_until,
                last_request: None,
                idle: None,
                findings: Vec::new(),
            }),
            memory_peak: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether CPU is throttled between requests (request-based billing).
    pub fn throttling(&self) -> bool {
        self.policy.throttling
    }

    /// Whether the limit is written directly to the cgroup (else through the engine, later).
    pub fn direct(&self) -> bool {
        matches!(self.control, Control::Direct(_))
    }

    fn cpu_used(&self) -> Option<Duration> {
        self.cgroup.as_ref()?.cpu_used().ok()
    }

    /// The limit while busy: the boost during its window, else the revision's CPU.
    fn busy_millicpu(&self, state: &State) -> u64 {
        match (state.boost_until, self.policy.boost_millicpu) {
            (Some(until), Some(boost)) if Instant::now() < until => boost,
            _ => self.policy.full_millicpu,
        }
    }

    fn apply(&self, state: &mut State, millicpu: u64) {
        if state.applied == Some(millicpu) {
            return;
        }
        match &self.control {
            Control::Direct(limit) => {
                if let Err(e) = limit.set(millicpu) {
                    // The container is going away (its cgroup with it), or the file is not
                    // ours to write: nothing to do but not pretend it was set.
                    tracing::debug!("could not set the CPU limit to {millicpu}m: {e}");
                    return;
                }
            }
            Control::Engine(wanted) => {
                wanted.send_replace(millicpu);
            }
            Control::Fixed => return,
        }
        state.applied = Some(millicpu);
    }

    /// A request (or a probe) reaches the instance: full CPU before it is forwarded, and the
    /// idle period before it ends.
    pub fn begin(&self) {
        let mut state = self.lock();
        state.busy += 1;
        if state.busy > 1 {
            return;
        }
        if let Some(mut idle) = state.idle.take() {
            idle.sample(Instant::now(), self.cpu_used());
            let finding = idle.finding();
            if finding.significant() {
                state.findings.push(finding);
            }
        }
        let full = self.busy_millicpu(&state);
        self.apply(&mut state, full);
    }

    /// A request's response ended (`request`: `GET /path`), or a probe did (None): with
    /// nothing else in flight, the CPU is throttled and an idle period begins (after a
    /// response only: the work of the startup phase is not counted).
    pub fn end(&self, request: Option<RequestName>) {
        let mut state = self.lock();
        state.busy = state.busy.saturating_sub(1);
        if let Some(request) = request {
            state.last_request = Some(request);
        }
        if state.busy > 0 || !self.policy.throttling {
            return;
        }
        self.apply(&mut state, IDLE_MILLICPU);
        if let Some(after) = state.last_request.clone() {
            let now = Instant::now();
            state.idle = Some(Idle {
                after,
                since: now,
                since_wall: SystemTime::now(),
                last_cpu: self.cpu_used(),
                last_sample: now,
                cpu: Duration::ZERO,
                lines: 0,
                worked: false,
                quiet: false,
            });
        }
    }

    /// The container wrote a line (stamped `at` by the engine, if known).
    pub fn log_line(&self, at: Option<SystemTime>) {
        let mut state = self.lock();
        if state.busy > 0 {
            return;
        }
        if let Some(idle) = &mut state.idle {
            let at = at.unwrap_or_else(SystemTime::now);
            if at > idle.since_wall + LOG_SLACK {
                idle.lines += 1;
                idle.worked = true;
                idle.quiet = false;
            }
        }
    }

    /// The pool's periodic look: ends the boost when its window is over, throttles an
    /// instance that has been idle since its start, and samples the idle period's CPU.
    /// Returns the idle periods with work that are over (or old enough to report).
    pub fn tick(&self) -> Vec<Finding> {
        let mut state = self.lock();
        let now = Instant::now();
        if state.boost_until.is_some_and(|until| now >= until) {
            state.boost_until = None;
            let wanted = match state.busy > 0 || !self.policy.throttling {
                true => self.policy.full_millicpu,
                false => IDLE_MILLICPU,
            };
            self.apply(&mut state, wanted);
        }
        if state.busy == 0
            && self.policy.throttling
            && state.applied.is_none()
            && state.boost_until.is_none()
        {
            // Ready and never asked for: throttled as any idle instance.
            self.apply(&mut state, IDLE_MILLICPU);
        }
        let cpu = self.cpu_used();
        if let Some(idle) = &mut state.idle {
            idle.sample(now, cpu);
            let finding = idle.finding();
            let over = idle.quiet || now.duration_since(idle.since) >= REPORT_AFTER;
            if finding.significant() && over {
                state.idle = None;
                state.findings.push(finding);
            }
        }
        std::mem::take(&mut state.findings)
    }

    /// Before a stop: the idle period so far, closed.
    pub fn settle(&self) -> Vec<Finding> {
        let mut state = self.lock();
        if let Some(mut idle) = state.idle.take() {
            idle.sample(Instant::now(), self.cpu_used());
            let finding = idle.finding();
            if finding.significant() {
                state.findings.push(finding);
            }
        }
        std::mem::take(&mut state.findings)
    }

    /// Reads the cgroup's memory peak and keeps the highest seen; returns it (bytes).
    pub fn sample_memory_peak(&self) -> Option<u64> {
        if let Some(peak) = self.cgroup.as_ref().and_then(|c| c.memory_peak().ok()) {
            self.memory_peak.fetch_max(peak, Ordering::Relaxed);
        }
        self.memory_peak()
    }

    /// The highest memory peak read so far, if any.
    pub fn memory_peak(&self) -> Option<u64> {
        Some(self.memory_peak.load(Ordering::Relaxed)).filter(|&p| p > 0)
    }

    /// Memory in use that the kernel cannot drop (tmpfs files included), if the cgroup can
    /// be read.
    pub fn memory_in_use(&self) -> Option<u64> {
        self.cgroup.as_ref()?.memory_in_use().ok()
    }

    /// The CPU limit last set, in millicpu (None: as created).
    #[cfg(test)]
    fn applied(&self) -> Option<u64> {
        self.lock().applied
    }
}

#[cfg(test)]
mod tests;
