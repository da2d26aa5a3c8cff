use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;

fn request(service: &str, revision: Option<&str>, status: u16, millis: u64) -> RequestLog {
    RequestLog {
        received: SystemTime::UNIX_EPOCH,
        method: http::Method::GET,
        url: "http://x.localhost/".into(),
        protocol: "HTTP/1.1",
        status,
        request_size: 10,
        response_size: 20,
        latency: Duration::from_millis(millis),
        user_agent: None,
        referer: None,
        remote_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        service: Some(service.into()).filter(|s: &Arc<str>| !s.is_empty()),
        revision: revision.map(Arc::from),
        instance: None,
        server_ip: None,
        trace: None,
    }
}

#[test]
fn a_histogram_counts_each_value_in_the_first_bucket_that_holds_it() {
    let mut h = Histogram::new(&[1.0, 10.0]);
    for v in [0.5, 1.0, 1.5, 10.0, 11.0, 1e9] {
        h.observe(v);
    }
    assert_eq!(h.count(), 6);
    assert_eq!(h.sum(), 0.5 + 1.0 + 1.5 + 10.0 + 11.0 + 1e9);
    let buckets: Vec<(String, u64)> = h.cumulative().collect();
    assert_eq!(
        buckets,
        [
            ("1".to_string(), 2),
            ("10".to_string(), 4),
            ("+Inf".to_string(), 6)
        ],
        "cumulative, a bound's own value included"
    );
}

#[test]
fn the_text_format_has_help_type_then_samples_with_escaped_labels() {
    let mut family = Family::new("m_total", Kind::Counter, "Line one\nback\\slash");
    family.sample(&[("a", "x\"y"), ("b", "p\\q\nr")], 3.0);
    family.sample(&[], 0.25);
    assert_eq!(
        family.into_text(),
        "# HELP m_total Line one\\nback\\\\slash\n\
         # TYPE m_total counter\n\
         m_total{a=\"x\\\"y\",b=\"p\\\\q\\nr\"} 3\n\
         m_total 0.25\n"
    );
}

#[test]
fn a_histogram_family_writes_buckets_sum_and_count() {
    let mut h = Histogram::new(&[5.0, 50.0]);
    h.observe(3.0);
    h.observe(30.0);
    h.observe(300.0);
    let mut family = Family::new("lat", Kind::Histogram, "h");
    family.histogram(&[("r", "one")], &h);
    let text = family.into_text();
    let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        samples,
        [
            "lat_bucket{r=\"one\",le=\"5\"} 1",
            "lat_bucket{r=\"one\",le=\"50\"} 2",
            "lat_bucket{r=\"one\",le=\"+Inf\"} 3",
            "lat_sum{r=\"one\"} 333",
            "lat_count{r=\"one\"} 3",
        ]
    );
    assert!(text.contains("# TYPE lat histogram\n"));
}

#[test]
fn numbers_are_written_as_prometheus_reads_them() {
    assert_eq!(number(2.0), "2");
    assert_eq!(number(0.125), "0.125");
    assert_eq!(number(-3.0), "-3");
    assert_eq!(number(f64::INFINITY), "+Inf");
    assert_eq!(number(f64::NEG_INFINITY), "-Inf");
    assert_eq!(number(f64::NAN), "NaN");
    assert_eq!(number(1e20), "100000000000000000000");
}

#[test]
fn requests_are_counted_by_revision_and_status_and_their_latency_observed() {
    let metrics = RequestMetrics::new();
    for _ in 0..3 {
        metrics.count(&request("s", Some("s-1"), 200, 4));
    }
    metrics.count(&request("s", Some("s-2"), 200, 40));
    metrics.count(&request("s", Some("s-2"), 500, 400));
    metrics.count(&request("s", None, 429, 10_000));
    metrics.count(&request("", None, 404, 1));
    let counts = metrics.snapshot();
    let count = |service: &str, revision: Option<&str>, status| {
        counts.requests[&RequestKey {
            service: service.into(),
            revision: revision.map(Arc::from),
            status,
        }]
    };
    assert_eq!(count("s", Some("s-1"), 200), 3);
    assert_eq!(count("s", Some("s-2"), 200), 1);
    assert_eq!(count("s", Some("s-2"), 500), 1);
    assert_eq!(count("s", None, 429), 1);
    assert_eq!(count("", None, 404), 1);
    assert_eq!(counts.requests.len(), 5);
    let latency = |revision: &str| {
        counts.latencies[&RevisionKey {
            service: "s".into(),
            revision: Some(revision.into()),
        }]
            .clone()
    };
    assert_eq!(latency("s-1").count(), 3);
    assert_eq!(latency("s-1").sum(), 12.0);
    assert_eq!(latency("s-2").sum(), 440.0);
    assert_eq!(code_class(204), "2xx");
    assert_eq!(code_class(503), "5xx");
}

#[test]
fn as_a_tap_the_counters_count_every_request_as_it_is_published() {
    let events = crate::events::Events::new();
    let metrics = RequestMetrics::new();
    events.tap(Arc::new(metrics.clone()));
    events.publish(Event::warning("not a request"));
    for _ in 0..5 {
        events.publish(Event::Request(Arc::new(request("s", Some("s-2"), 503, 1))));
    }
    let counts = metrics.snapshot();
    let on_two = counts.requests.get(&RequestKey {
        service: "s".into(),
        revision: Some("s-2".into()),
        status: 503,
    });
    assert_eq!(on_two, Some(&5));
    assert_eq!(
        counts.requests.values().sum::<u64>(),
        5,
        "only requests count"
    );
}
