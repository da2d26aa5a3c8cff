//! The saturating load generator: `wrk` (Debian's package), which one thread of which keeps a
//! 2-core machine's proxies busy where the benchmark's own tokio client could not (it topped
//! out near 20k req/s direct). Its report is parsed for requests, errors and latency.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

/// What one wrk run reported.
#[derive(Clone, Debug, Default)]
pub struct WrkRun {
    pub requests: u64,
    pub throughput: f64,
    /// Socket errors (connect, read, write, timeout) and non-2xx/3xx answers.
    pub errors: u64,
    pub non_2xx: u64,
    /// Latency percentiles in microseconds: 50, 90, 99.
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// Whether wrk is on PATH, with a message saying how to get it when not.
pub fn require() -> anyhow::Result<()> {
    match std::process::Command::new("wrk").arg("--version").output() {
        Ok(_) => Ok(()),
        Err(_) => bail!(
            "the proxy measurement drives load with wrk, which is not on PATH: install it (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)"
        ),
    }
}

/// `wrk -t THREADS -c CONNECTIONS -d DURATION --latency http://ADDR/`.
pub async fn run(
    addr: SocketAddr,
    threads: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<WrkRun> {
    let output = tokio::process::Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{}s", duration.as_secs_f64().ceil() as u64),
            "--latency",
            &format!("http://{addr}/"),
        ])
        .output()
        .await
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse(&text).with_context(|| format!("cannot read wrk's report:\n{text}"))
}

/// A latency as wrk prints it (`123.45us`, `1.20ms`, `2.00s`), in microseconds.
fn micros(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

fn parse(text: &str) -> anyhow::Result<WrkRun> {
    let mut run = WrkRun::default();
    let percentile = |label: &str| -> Option<f64> {
        text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == label).then(|| micros(words.next()?))?
        })
    };
    run.p50 = percentile("50%").ok_or_else(|| anyhow!("no 50% latency"))?;
    run.p90 = percentile("90%").ok_or_else(|| anyhow!("no 90% latency"))?;
    run.p99 = percentile("99%").ok_or_else(|| anyhow!("no 99% latency"))?;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            run.throughput = rest.trim().parse()?;
        } else if line.contains(" requests in ") {
            run.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow!("no request count"))?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            run.errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.non_2xx = rest.trim().parse()?;
        }
    }
    if run.throughput == 0.0 {
        bail!("no Requests/sec line");
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_read() {
        let report = "Running 5s test @ http://127.0.0.1:8080/\n  2 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   402.11us  300.00us   8.00ms   90.00%\n    Req/Sec    40.00k     2.00k   45.00k    70.00%\n  Latency Distribution\n     50%  350.00us\n     75%  450.00us\n     90%    1.20ms\n     99%    2.00s\n  400000 requests in 5.00s, 40.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 7\nRequests/sec:  80000.50\nTransfer/sec:      8.00MB\n";
        let run = parse(report).unwrap();
        assert_eq!(run.requests, 400_000);
        assert_eq!(run.throughput, 80000.5);
        assert_eq!((run.errors, run.non_2xx), (3, 7));
        assert_eq!((run.p50, run.p90, run.p99), (350.0, 1200.0, 2_000_000.0));
    }
}
