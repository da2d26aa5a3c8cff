//! Cloud Run's metrics, kept the cheap way: the request counters and latency histograms are
//! fed from the event stream (one map update per request, in a subscriber task of its own,
//! like the recent log), and everything else is read from the pools and the engine only when
//! someone scrapes `GET /metrics` (`admin/metrics.rs`). This module holds the counting and
//! the Prometheus text format (0.0.4); names follow Cloud Monitoring's PromQL spelling of
//! Cloud Run's metrics (`run.googleapis.com/request_count` is
//! `run_googleapis_com:request_count`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::events::{Event, RequestLog, Sink};

/// The prefix of every metric named after one of Cloud Run's.
pub const PREFIX: &str = "run_googleapis_com:";

/// Request latencies' bucket bounds, in milliseconds (Cloud Run reports them in ms).
pub const LATENCY_BUCKETS_MS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0,
    30_000.0, 60_000.0, 300_000.0,
];

/// Container startup latencies' bucket bounds, in milliseconds.
pub const STARTUP_BUCKETS_MS: &[f64] = &[
    50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 30_000.0, 60_000.0, 240_000.0,
];

/// A Prometheus histogram: counts per upper bound (not cumulative until rendered), the sum
/// and the count of what it observed.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, then one for what lies above the last (`+Inf`).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// `(le, cumulative count)` pairs, `+Inf` last.
    fn cumulative(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        let les = self
            .bounds
            .iter()
            .map(|b| number(*b))
            .chain(std::iter::once("+Inf".to_string()));
        les.zip(self.counts.iter().scan(0, |total, n| {
            *total += n;
            Some(*total)
        }))
    }
}

/// What kind of metric a family is (the `# TYPE` line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family in the text format: its `# HELP` and `# TYPE` lines, then its samples,
/// all together as the format asks.
pub struct Family {
    name: String,
    text: String,
}

/// Labels as `(name, value)` pairs, in the order they are written.
pub type Labels<'a> = [(&'a str, &'a str)];

impl Family {
    pub fn new(name: &str, kind: Kind, help: &str) -> Self {
        let mut text = String::new();
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} {}", kind.as_str());
        Family {
            name: name.to_string(),
            text,
        }
    }

    /// One sample of a counter or gauge.
    pub fn sample(&mut self, labels: &Labels, value: f64) {
        let name = self.name.clone();
        self.line(&name, labels, None, &number(value));
    }

    /// A histogram's `_bucket`, `_sum` and `_count` samples.
    pub fn histogram(&mut self, labels: &Labels, histogram: &Histogram) {
        let bucket = format!("{}_bucket", self.name);
        for (le, count) in histogram.cumulative() {
            self.line(&bucket, labels, Some(&le), &count.to_string());
        }
        let (sum, count) = (format!("{}_sum", self.name), format!("{}_count", self.name));
        self.line(&sum, labels, None, &number(histogram.sum));
        self.line(&count, labels, None, &histogram.count.to_string());
    }

    fn line(&mut self, name: &str, labels: &Labels, le: Option<&str>, value: &str) {
        self.text.push_str(name);
        let le = le.map(|le| ("le", le));
        let mut all = labels.iter().copied().chain(le).peekable();
        if all.peek().is_some() {
            self.text.push('{');
            for (i, (label, text)) in all.enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape(text));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

/// A label value as the text format writes it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value: whole numbers without a fraction, `+Inf`/`-Inf`/`NaN` as the format spells
/// them.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// The media type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `2xx`, `4xx`...: Cloud Run's `response_code_class`.
pub fn code_class(status: u16) -> String {
    format!("{}xx", status / 100)
}

/// Which revision a request counter is for (`None`: the front end answered by itself, with
/// no revision chosen: an unknown host's 404, a private service's 403...).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestKey {
    pub service: Arc<str>,
    pub revision: Option<Arc<str>>,
    pub status: u16,
}

/// Per revision: service and revision.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RevisionKey {
    pub service: Arc<str>,
    pub revision: Option<Arc<str>>,
}

/// What the event stream has counted so far.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub requests: BTreeMap<RequestKey, u64>,
    pub latencies: BTreeMap<RevisionKey, Histogram>,
}

/// The request counters, fed from the event stream. Cheap to clone.
#[derive(Clone, Default)]
pub struct RequestMetrics {
    counts: Arc<Mutex<Counts>>,
}

impl RequestMetrics {
    pub fn new() -> Self {
        RequestMetrics::default()
    }

    /// Counts one request the front end answered.
    pub fn count(&self, request: &RequestLog) {
        let service = request.service.clone().unwrap_or_else(|| Arc::from(""));
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts
            .requests
            .entry(RequestKey {
                service: service.clone(),
                revision: request.revision.clone(),
                status: request.status,
            })
            .or_default() += 1;
        counts
            .latencies
            .entry(RevisionKey {
                service,
                revision: request.revision.clone(),
            })
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS_MS))
            .observe(request.latency.as_secs_f64() * 1000.0);
    }

    /// A copy of the counts, for a scrape.
    pub fn snapshot(&self) -> Counts {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The counters count every request as it is published (an `Events` tap).
impl Sink for RequestMetrics {
    fn show(&self, event: &Event) {
        if let Event::Request(request) = event {
            self.count(request);
        }
    }
}

#[cfg(test)]
mod tests;
