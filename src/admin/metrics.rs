//! `GET /metrics`: Cloud Run's metrics in Prometheus' text format (0.0.4), named as Cloud
//! Monitoring's PromQL names them (`run_googleapis_com:request_count`...). Request counts and
//! latencies come from the event stream's counters (`metrics.rs`); instance counts, startup
//! latencies and billable time from the pools' snapshots; CPU and memory per instance from the
//! engine's stats, read only now, in parallel, each bounded in time. Nothing is computed
//! while nobody scrapes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Response;
use tokio::time::Instant;

use super::AdminBody;
use crate::control::platform::Platform;
use crate::instances::pool::{InstanceState, PoolSnapshot};
use crate::logs::Resource;
use crate::metrics::{self, code_class, Counts, Family, Kind, RequestMetrics, PREFIX};
use crate::runtime::{ContainerStats, Runtime};

pub const PATH: &str = "/metrics";

/// How long a scrape waits for the engine's stats of any one container; past it, that
/// instance's CPU and memory are left out of the answer.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// What a scrape reads. Cheap to clone.
#[derive(Clone)]
pub struct Scraper {
    requests: RequestMetrics,
    runtime: Runtime,
    resource: Resource,
    /// Each container's CPU time at the previous scrape, for its utilization since then.
    previous: Arc<Mutex<HashMap<String, CpuSample>>>,
}

#[derive(Clone, Copy, Debug)]
struct CpuSample {
    at: Instant,
    cpu_nanos: u64,
}

/// One instance's use of its limits, from the engine's stats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    /// The fraction of its CPU limit it used since the previous scrape (the first time:
    /// since it started).
    pub cpu_utilization: f64,
    pub memory_bytes: u64,
}

impl Scraper {
    pub fn new(requests: RequestMetrics, runtime: Runtime, resource: Resource) -> Self {
        Scraper {
            requests,
            runtime,
            resource,
            previous: Arc::default(),
        }
    }

    /// The engine's stats of every running instance, by container id; those that did not
    /// answer within [`STATS_TIMEOUT`] are missing.
    async fn usage(&self, pools: &[PoolSnapshot]) -> HashMap<String, Usage> {
        let deadline = Instant::now() + STATS_TIMEOUT;
        let wanted: Vec<(String, Duration, u64)> = pools
            .iter()
            .flat_map(|pool| {
                pool.instances
                    .iter()
                    .filter(|i| !i.container_id.is_empty())
                    .map(|i| (i.container_id.clone(), i.age, pool.cpu_millis))
            })
            .collect();
        let reads = wanted.iter().map(|(id, _, _)| async move {
            let stats = tokio::time::timeout_at(deadline, self.runtime.stats(id)).await;
            (id.clone(), stats.ok().and_then(Result::ok), Instant::now())
        });
        let read = futures_util::future::join_all(reads).await;
        let mut previous = self.previous.lock().unwrap_or_else(|e| e.into_inner());
        let mut usage = HashMap::new();
        let mut seen = HashMap::new();
        for ((id, stats, at), (_, age, cpu_millis)) in read.into_iter().zip(&wanted) {
            let Some(ContainerStats {
                cpu_nanos,
                memory_bytes,
            }) = stats
            else {
                continue;
            };
            let (used, over) = match previous.get(&id) {
                Some(before) if cpu_nanos >= before.cpu_nanos => {
                    (cpu_nanos - before.cpu_nanos, at.duration_since(before.at))
                }
                _ => (cpu_nanos, *age),
            };
            usage.insert(
                id.clone(),
                Usage {
                    cpu_seconds: cpu_nanos as f64 / 1e9,
                    cpu_utilization: utilization(used, over, *cpu_millis),
                    memory_bytes,
                },
            );
            seen.insert(id, CpuSample { at, cpu_nanos });
        }
        // Instances gone since are forgotten.
        *previous = seen;
        usage
    }
}

/// CPU time `used` over `over`, as a fraction of `cpu_millis` (a limit of 1000 is one CPU).
fn utilization(used_nanos: u64, over: Duration, cpu_millis: u64) -> f64 {
    let available = over.as_secs_f64() * cpu_millis as f64 / 1000.0;
    if available <= 0.0 {
        return 0.0;
    }
    (used_nanos as f64 / 1e9 / available).max(0.0)
}

pub async fn handle(scraper: &Scraper, platform: &Platform) -> Response<AdminBody> {
    let pools: Vec<PoolSnapshot> = platform.all_pools().iter().map(|p| p.snapshot()).collect();
    let usage = scraper.usage(&pools).await;
    let text = render(
        &scraper.resource,
        &scraper.requests.snapshot(),
        &pools,
        &usage,
    );
    let mut response = Response::new(super::full(text));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
}

/// The labels of Cloud Run's `cloud_run_revision` resource, as Cloud Monitoring's PromQL
/// names them.
fn resource_labels<'a>(
    resource: &'a Resource,
    service: &'a str,
    revision: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut labels = vec![
        ("project_id", resource.project_id.as_str()),
        ("location", resource.location.as_str()),
    ];
    if !service.is_empty() {
        labels.push(("service_name", service));
        labels.push(("configuration_name", service));
    }
    if let Some(revision) = revision {
        labels.push(("revision_name", revision));
    }
    labels
}

/// The whole answer: every family, each once.
pub fn render(
    resource: &Resource,
    counts: &Counts,
    pools: &[PoolSnapshot],
    usage: &HashMap<String, Usage>,
) -> String {
    let name = |metric: &str| format!("{PREFIX}{metric}");
    let mut requests = Family::new(
        &name("request_count"),
        Kind::Counter,
        "Requests the front end answered, by revision and response code (revision_name is absent when the emulator answered by itself, before choosing one).",
    );
    for (key, count) in &counts.requests {
        let mut labels = resource_labels(resource, &key.service, key.revision.as_deref());
        let (code, class) = (key.status.to_string(), code_class(key.status));
        labels.push(("response_code", &code));
        labels.push(("response_code_class", &class));
        requests.sample(&labels, *count as f64);
    }
    let mut latencies = Family::new(
        &name("request_latencies"),
        Kind::Histogram,
        "Request latency in milliseconds, from arrival to the response's last byte.",
    );
    for (key, histogram) in &counts.latencies {
        let labels = resource_labels(resource, &key.service, key.revision.as_deref());
        latencies.histogram(&labels, histogram);
    }
    let mut instances = Family::new(
        &name("container_instance_count"),
        Kind::Gauge,
        "Instances that exist, by state: active (ready, a request in flight), idle (ready, none), and the emulator's starting and draining.",
    );
    let mut startups = Family::new(
        &name("container_startup_latencies"),
        Kind::Histogram,
        "Time from an instance's container start to its passed startup probe, in milliseconds.",
    );
    let mut billable = Family::new(
        &name("container_billable_instance_time"),
        Kind::Counter,
        "Billable instance time in seconds, as request-based billing counts it: every instance's startup and the time it had at least one request in flight.",
    );
    let mut cpu = Family::new(
        &name("container_cpu_utilizations"),
        Kind::Gauge,
        "An instance's CPU use as a fraction of its CPU limit, since the previous scrape (the first time: since it started).",
    );
    let mut memory = Family::new(
        &name("container_memory_utilizations"),
        Kind::Gauge,
        "An instance's memory use (without the page cache) as a fraction of its memory limit.",
    );
    let mut cpu_seconds = Family::new(
        "emulate_container_cpu_seconds_total",
        Kind::Counter,
        "CPU time an instance used since it started, in seconds (the engine's stats).",
    );
    let mut memory_bytes = Family::new(
        "emulate_container_memory_bytes",
        Kind::Gauge,
        "Memory an instance uses, in bytes, without the page cache (the engine's stats).",
    );
    for pool in pools {
        let labels = resource_labels(resource, &pool.service, Some(&pool.revision));
        let count = |wanted: &dyn Fn(&crate::instances::pool::InstanceSnapshot) -> bool| {
            pool.instances.iter().filter(|i| wanted(i)).count() as f64
        };
        for (state, n) in [
            (
                "active",
                count(&|i| i.state == InstanceState::Ready && i.in_flight > 0),
            ),
            (
                "idle",
                count(&|i| i.state == InstanceState::Ready && i.in_flight == 0),
            ),
            ("starting", count(&|i| i.state == InstanceState::Starting)),
            ("draining", count(&|i| i.state == InstanceState::Draining)),
        ] {
            let mut labels = labels.clone();
            labels.push(("state", state));
            instances.sample(&labels, n);
        }
        startups.histogram(&labels, &pool.startup_latencies);
        billable.sample(&labels, pool.billable.as_secs_f64());
        for instance in &pool.instances {
            let Some(usage) = usage.get(&instance.container_id) else {
                continue;
            };
            let mut labels = labels.clone();
            labels.push(("instance_id", &instance.id));
            cpu.sample(&labels, usage.cpu_utilization);
            if pool.memory_bytes > 0 {
                memory.sample(
                    &labels,
                    usage.memory_bytes as f64 / pool.memory_bytes as f64,
                );
            }
            cpu_seconds.sample(&labels, usage.cpu_seconds);
            memory_bytes.sample(&labels, usage.memory_bytes as f64);
        }
    }
    [
        requests,
        latencies,
        instances,
        startups,
        billable,
        cpu,
        memory,
        cpu_seconds,
        memory_bytes,
    ]
    .into_iter()
    .map(Family::into_text)
    .collect()
}

#[cfg(test)]
mod tests;
