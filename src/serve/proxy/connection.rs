//! What keeps client connections from piling up: a connection with no request in progress
//! is closed once it has been idle too long (from accept: the first-byte/header timeout;
//! between requests: the keep-alive idle timeout, HTTP/1 and HTTP/2 alike), the number of
//! open connections is capped, and accept errors (out of file descriptors) back off.

use crate::serve::proxy::request_log::PendingLog;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// One connection's requests in progress and when the last one ended. Requests only count
/// themselves in and out (an atomic and a timestamp, no wake-up): the connection's watcher
/// ([`Activity::idle`]) looks when its own timer fires, so the hot path arms no timer.
pub struct Activity {
    busy: AtomicUsize,
    /// When the connection was accepted, then when its last request ended, and whether a
    /// request was ever started (which switches to the keep-alive timeout).
    last: Mutex<(Instant, bool)>,
    first_request_within: Duration,
    idle_timeout: Duration,
}

/// A request in progress on a connection; dropped when its response has been sent (or the
/// request abandoned).
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = (Instant::now(), true);
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Activity {
    pub fn new(first_request_within: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Activity {
            busy: AtomicUsize::new(0),
            last: Mutex::new((Instant::now(), false)),
            first_request_within,
            idle_timeout,
        })
    }

    pub fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Resolves once the connection has had no request in progress for its timeout.
    pub async fn idle(&self) {
        loop {
            let (since, served) = *self.last.lock().unwrap_or_else(|e| e.into_inner());
            let timeout = match served {
                true => self.idle_timeout,
                false => self.first_request_within,
            };
            let now = Instant::now();
            let due = since + timeout;
            if self.busy.load(Ordering::SeqCst) > 0 {
                // Busy: look again a keep-alive timeout from now. A request that ends
                // meanwhile moves `since`, which the next look sees.
                tokio::time::sleep_until(now + self.idle_timeout).await;
            } else if now < due {
                tokio::time::sleep_until(due).await;
            } else {
                return;
            }
        }
    }
}

/// A response body that keeps its request counted in progress until it has been sent, and
/// its request log line pending until then.
pub struct Tracked<B> {
    pub inner: B,
    pub busy: Busy,
    pub log: Option<PendingLog>,
}

impl<B: Body + Unpin> Body for Tracked<B>
where
    B::Data: bytes::Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Some(log), Poll::Ready(Some(Ok(frame)))) = (&mut this.log, &polled) {
            if let Some(data) = frame.data_ref() {
                log.sent(bytes::Buf::remaining(data));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Says once in a while (not once per connection) that the connection cap was reached.
#[derive(Default)]
pub struct LimitNotice {
    last: Option<Instant>,
}

/// How often the cap being reached is said again while it keeps being reached.
const NOTICE_EVERY: Duration = Duration::from_secs(60);

impl LimitNotice {
    /// Whether to log now that the cap was reached.
    pub fn due(&mut self, now: Instant) -> bool {
        let due = self.last.is_none_or(|at| now >= at + NOTICE_EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// Accept errors (out of file descriptors, say): each one in a row waits longer, up to 1 s,
/// and they are logged once a minute at most, since at the edge of the limit accepts fail
/// and succeed in turn.
#[derive(Default)]
pub struct AcceptBackoff {
    failures: u32,
    logged: Option<Instant>,
}

impl AcceptBackoff {
    /// Records a failure: whether to log it, and how long to wait before accepting again.
    pub fn failed(&mut self, now: Instant) -> (bool, Duration) {
        self.failures = self.failures.saturating_add(1);
        let wait = Duration::from_millis(10 << self.failures.saturating_sub(1).min(7))
            .min(Duration::from_secs(1));
        let log = self.logged.is_none_or(|at| now >= at + NOTICE_EVERY);
        if log {
            self.logged = Some(now);
        }
        (log, wait)
    }

    /// An accept succeeded: the next failure waits briefly again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// The connection cap to use when none is given: half the open-file limit (each proxied
/// connection may need a second descriptor towards the instance), within 64..=10 000.
pub fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))?
                .split_whitespace()
                .nth(3)?
                .parse::<usize>()
                .ok()
        });
    // Without /proc (macOS), assume the usual shell limit of 1024.
    (soft.unwrap_or(1024) / 2).clamp(64, 10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_and_are_logged_once_a_minute_at_most() {
        let mut backoff = AcceptBackoff::default();
        let now = Instant::now();
        let runs: Vec<(bool, u64)> = (0..10)
            .map(|_| {
                let (log, wait) = backoff.failed(now);
                (log, wait.as_millis() as u64)
            })
            .collect();
        assert_eq!(runs[0], (true, 10));
        assert_eq!(runs[1], (false, 20));
        assert!(runs[2..].iter().all(|(log, _)| !log));
        assert_eq!(runs[9].1, 1000);
        backoff.succeeded();
        let later = now + Duration::from_secs(1);
        assert_eq!(backoff.failed(later), (false, Duration::from_millis(10)));
        let (log, _) = backoff.failed(now + Duration::from_secs(61));
        assert!(log);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_notice_is_said_once_a_minute_at_most() {
        let mut notice = LimitNotice::default();
        let now = Instant::now();
        assert!(notice.due(now));
        assert!(!notice.due(now + Duration::from_secs(1)));
        assert!(notice.due(now + Duration::from_secs(61)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_after_its_timeout_with_no_request_in_progress() {
        let activity = Activity::new(Duration::from_secs(10), Duration::from_secs(30));
        let began = Instant::now();
        activity.idle().await;
        assert_eq!(began.elapsed(), Duration::from_secs(10));

        let busy = activity.begin();
        let idle = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle().await }
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!idle.is_finished(), "idle while a request is in progress");
        drop(busy);
        let ended = Instant::now();
        idle.await.unwrap();
        assert_eq!(ended.elapsed(), Duration::from_secs(30));
    }
}
