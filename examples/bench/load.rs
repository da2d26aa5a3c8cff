//! The load generator: keep-alive HTTP/1.1 workers sending `GET` back to back (saturation) or
//! at a fixed rate, the latency of every request, and the probes that wait until an address
//! answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One measurement of one target.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// Requests answered 200 within the measured window.
    pub completed: u64,
    pub errors: u64,
    pub non_200: u64,
    /// Per-request latency in microseconds, sorted.
    pub latencies: Vec<u32>,
    /// Responses per revision, by the test app's `x-k-revision` header (absent on `/`).
    pub revisions: BTreeMap<String, u64>,
}

impl Run {
    /// Nearest-rank percentile, in microseconds.
    pub fn percentile(&self, p: f64) -> u32 {
        if self.latencies.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    fn merge(workers: Vec<Run>) -> Run {
        let mut run = Run::default();
        for worker in workers {
            run.completed += worker.completed;
            run.errors += worker.errors;
            run.non_200 += worker.non_200;
            run.latencies.extend(worker.latencies);
            for (revision, count) in worker.revisions {
                *run.revisions.entry(revision).or_default() += count;
            }
        }
        run.latencies.sort_unstable();
        run
    }
}

/// When a worker sends its requests: at `offset + k * interval` from the start of the
/// window. (Saturating runs use wrk: this client did not saturate a 2-core machine.)
#[derive(Clone, Copy)]
enum Pace {
    Fixed {
        offset: Duration,
        interval: Duration,
    },
}

/// `rate` requests a second for `duration`, spread evenly over `connections` workers so that
/// together they send one request every 1/rate seconds.
pub async fn paced(addr: SocketAddr, connections: usize, rate: u32, duration: Duration) -> Run {
    paced_path(addr, "/", connections, rate, duration).await
}

/// [`paced`] with `GET path`.
pub async fn paced_path(
    addr: SocketAddr,
    path: &'static str,
    connections: usize,
    rate: u32,
    duration: Duration,
) -> Run {
    let gap = Duration::from_secs_f64(1.0 / f64::from(rate));
    load(addr, path, connections, duration, |worker| Pace::Fixed {
        offset: gap * worker as u32,
        interval: gap * connections as u32,
    })
    .await
}

async fn load(
    addr: SocketAddr,
    path: &'static str,
    connections: usize,
    duration: Duration,
    pace: impl Fn(usize) -> Pace,
) -> Run {
    // A common start a little ahead lets every worker connect first, so handshakes stay out
    // of the measured window.
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + duration;
    let workers: Vec<_> = (0..connections)
        .map(|worker| tokio::spawn(self::worker(addr, path, start, end, pace(worker))))
        .collect();
    let mut runs = Vec::with_capacity(connections);
    for worker in workers {
        runs.push(worker.await.expect("a load worker panicked"));
    }
    Run::merge(runs)
}

/// One keep-alive connection sending `GET path` per `pace` between `start` and `end`. A
/// failed request counts as an error and the worker reconnects.
async fn worker(
    addr: SocketAddr,
    path: &'static str,
    start: Instant,
    end: Instant,
    pace: Pace,
) -> Run {
    let host = host(addr);
    let mut run = Run::default();
    let mut sender = None;
    let Pace::Fixed { offset, interval } = pace;
    let mut next = start + offset;
    while next < end {
        if sender.is_none() {
            match connect(addr).await {
                Ok(connected) => sender = Some(connected),
                Err(_) => {
                    run.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        tokio::time::sleep_until(next).await;
        let connection = sender.as_mut().expect("connected above");
        let sent = Instant::now();
        match exchange(connection, &host, path).await {
            Ok((status, revision)) => {
                if let Some(revision) = revision {
                    *run.revisions.entry(revision).or_default() += 1;
                }
                let done = Instant::now();
                if status != StatusCode::OK {
                    run.non_200 += 1;
                } else if done <= end {
                    run.completed += 1;
                }
                let micros = done.duration_since(sent).as_micros();
                run.latencies
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
                next += interval;
            }
            Err(_) => {
                run.errors += 1;
                sender = None;
            }
        }
    }
    run
}

/// Sends one `GET /` and reads the whole response.
async fn request(
    sender: &mut SendRequest<Empty<Bytes>>,
    host: &HeaderValue,
) -> anyhow::Result<StatusCode> {
    Ok(exchange(sender, host, "/").await?.0)
}

/// Sends one `GET path` and reads the whole response; its status and `x-k-revision` header.
pub async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    host: &HeaderValue,
    path: &str,
) -> anyhow::Result<(StatusCode, Option<String>)> {
    let response = send(sender, host, path).await?;
    let status = response.status();
    let revision = response
        .headers()
        .get("x-k-revision")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Reading the whole body is part of the exchange the latency covers.
    response.into_body().collect().await?;
    Ok((status, revision))
}

/// Sends one `GET path`; it resolves with the response head, i.e. at its first bytes.
pub async fn send(
    sender: &mut SendRequest<Empty<Bytes>>,
    host: &HeaderValue,
    path: &str,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    sender.ready().await?;
    let request = Request::get(path)
        .header(HOST, host.clone())
        .body(Empty::new())
        .expect("a valid request");
    Ok(sender.send_request(request).await?)
}

/// The Host header for an address, built once per connection rather than per request.
pub fn host(addr: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&addr.to_string()).expect("an address is a valid Host")
}

/// An HTTP/1.1 keep-alive connection with Nagle off, as the emulator's own client uses.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The connection ends when the worker drops its sender; errors show up on requests.
        let _ = connection.await;
    });
    Ok(sender)
}

/// Waits until `GET /` answers 200: docker-proxy accepts connections before the app listens.
pub async fn wait_until_serving(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut sender = connect(addr).await?;
            request(&mut sender, &host(addr)).await
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(StatusCode::OK)) => return Ok(()),
            outcome if Instant::now() > deadline => {
                bail!("{addr} did not answer GET / with 200 within 30 s (last: {outcome:?})")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Polls `GET /` on `addr` every 2 ms, each time on a fresh connection, until the response
/// head (its first bytes) arrives with a status `accept` takes; gives up after 60 s.
pub async fn poll_until_answer(
    addr: SocketAddr,
    accept: impl Fn(StatusCode) -> bool,
) -> anyhow::Result<StatusCode> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let host = host(addr);
    loop {
        let attempt = async {
            let mut sender = connect(addr).await?;
            let response = send(&mut sender, &host, "/").await?;
            anyhow::Ok(response.status())
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(status)) if accept(status) => return Ok(status),
            outcome if Instant::now() > deadline => {
                bail!("{addr} did not answer GET / within 60 s (last: {outcome:?})")
            }
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}
