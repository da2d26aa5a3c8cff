//! The recent log, kept for `emulate logs`: the last entries (requests, container lines,
//! system lines, warnings) in a bounded ring, and the live stream after them. Events are kept
//! as they were published (a request is an `Arc`, so keeping it costs a pointer); they are
//! turned into Cloud Logging entries only when someone reads them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, Sink};
use crate::logs::entry::{self, Resource};

/// Entries kept: about the last few minutes of a busy service, a few MiB at most (a
/// request's record is about 400 bytes, a log line its length plus about 100).
pub const CAPACITY: usize = 10_000;

/// One kept entry: when it was seen, and what.
#[derive(Clone, Debug)]
pub struct Kept {
    pub at: SystemTime,
    pub event: Event,
}

/// What comes after the recent entries.
pub type Live = broadcast::Receiver<Arc<Kept>>;

/// Which entries a reader wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub service: Option<String>,
    pub revision: Option<String>,
    /// The lowest severity (a rank in `entry::SEVERITIES`).
    pub min_severity: usize,
}

impl Kept {
    /// Its Cloud Logging entry (`None` for events that are not log lines).
    pub fn entry(&self, resource: &Resource) -> Option<Value> {
        entry::event_entry(&self.event, self.at, resource)
    }

    fn names(&self) -> (Option<&str>, Option<&str>) {
        match &self.event {
            Event::Request(request) => (request.service.as_deref(), request.revision.as_deref()),
            Event::ContainerLog {
                service, revision, ..
            }
            | Event::System {
                service, revision, ..
            } => (Some(service), Some(revision)),
            Event::StartFailed { revision, .. } => (None, Some(revision)),
            _ => (None, None),
        }
    }
}

impl Filter {
    /// Whether `entry` (the kept event's Cloud Logging entry) passes.
    pub fn passes(&self, kept: &Kept, entry: &Value) -> bool {
        let (service, revision) = kept.names();
        if self.service.is_some() && self.service.as_deref() != service {
            return false;
        }
        if self.revision.is_some() && self.revision.as_deref() != revision {
            return false;
        }
        let severity = entry["severity"].as_str().unwrap_or("DEFAULT");
        entry::severity_rank(severity) >= self.min_severity
    }
}

/// The ring and its live stream. Cheap to clone.
#[derive(Clone)]
pub struct LogBuffer {
    inner: Arc<Inner>,
}

struct Inner {
    resource: Resource,
    /// Held by value: a request costs its slot here and its shared record, no allocation of
    /// its own (this runs for every request).
    ring: Mutex<VecDeque<Kept>>,
    live: broadcast::Sender<Arc<Kept>>,
    /// Cancelled when the emulator stops: live readers end.
    closed: CancellationToken,
}

/// Whether an event is a log line (what `emulate logs` shows).
fn is_log_line(event: &Event) -> bool {
    matches!(
        event,
        Event::Request(_)
            | Event::ContainerLog { .. }
            | Event::System { .. }
            | Event::StartFailed { .. }
            | Event::Problem { .. }
    )
}

impl LogBuffer {
    pub fn new(resource: Resource) -> Self {
        LogBuffer {
            inner: Arc::new(Inner {
                resource,
                ring: Mutex::new(VecDeque::with_capacity(1024)),
                live: broadcast::channel(1024).0,
                closed: CancellationToken::new(),
            }),
        }
    }

    pub fn resource(&self) -> &Resource {
        &self.inner.resource
    }

    /// Keeps an event if it is a log line, dropping the oldest past [`CAPACITY`].
    pub fn push(&self, event: Event, at: SystemTime) {
        if !is_log_line(&event) {
            return;
        }
        let kept = Kept { at, event };
        // The oldest entry is dropped after the lock is released.
        let _evicted = {
            let mut ring = self.inner.ring.lock().unwrap_or_else(|e| e.into_inner());
            // Followers are sent under the lock, so none sees an entry twice or misses one
            // between `recent` and its live receiver.
            if self.inner.live.receiver_count() > 0 {
                let _ = self.inner.live.send(Arc::new(kept.clone()));
            }
            let evicted = (ring.len() == CAPACITY).then(|| ring.pop_front()).flatten();
            ring.push_back(kept);
            evicted
        };
    }

    /// The last `limit` kept entries that pass `filter`, oldest first, with a live receiver
    /// taken at the same moment (so nothing falls between them).
    pub fn recent(&self, filter: &Filter, limit: usize) -> (Vec<(Arc<Kept>, Value)>, Live) {
        let (kept, live) = {
            let ring = self.inner.ring.lock().unwrap_or_else(|e| e.into_inner());
            (
                ring.iter().cloned().map(Arc::new).collect::<Vec<_>>(),
                self.inner.live.subscribe(),
            )
        };
        let mut passing: Vec<(Arc<Kept>, Value)> = kept
            .into_iter()
            .rev()
            .filter_map(|kept| {
                let entry = kept.entry(&self.inner.resource)?;
                filter.passes(&kept, &entry).then_some((kept, entry))
            })
            .take(limit)
            .collect();
        passing.reverse();
        (passing, live)
    }

    /// Ended when the emulator stops.
    pub fn closed(&self) -> CancellationToken {
        self.inner.closed.clone()
    }

    /// Ends the live readers: the emulator stops.
    pub fn close(&self) {
        self.inner.closed.cancel();
    }
}

/// The recent log keeps what the emulator says as it is published (an `Events` tap).
impl Sink for LogBuffer {
    fn show(&self, event: &Event) {
        if is_log_line(event) {
            // A request is logged when its response ended: no need to read the clock again.
            let at = match event {
                Event::Request(request) => request.received + request.latency,
                _ => SystemTime::now(),
            };
            self.push(event.clone(), at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::SystemKind;

    fn line(service: &str, text: &str) -> Event {
        Event::ContainerLog {
            service: service.into(),
            revision: format!("{service}-00001-abc"),
            instance: "i".into(),
            stderr: false,
            line: text.into(),
        }
    }

    #[test]
    fn the_ring_keeps_the_last_entries_and_filters_them() {
        let buffer = LogBuffer::new(Resource::default());
        for i in 0..CAPACITY + 5 {
            buffer.push(line("a", &format!("line {i}")), SystemTime::now());
        }
        buffer.push(
            line("b", r#"{"severity":"ERROR","message":"boom"}"#),
            SystemTime::now(),
        );
        buffer.push(
            Event::PullingImage {
                image: "x".into(),
                platform: "p".into(),
            },
            SystemTime::now(),
        );
        let (all, _) = buffer.recent(&Filter::default(), usize::MAX);
        assert_eq!(
            all.len(),
            CAPACITY,
            "bounded; the pull progress is no log line"
        );
        assert_eq!(all[0].1["textPayload"], "line 6", "the oldest were dropped");

        let (last, _) = buffer.recent(
            &Filter {
                service: Some("a".into()),
                ..Filter::default()
            },
            2,
        );
        let texts: Vec<_> = last.iter().map(|(_, e)| e["textPayload"].clone()).collect();
        assert_eq!(
            texts,
            vec![
                format!("line {}", CAPACITY + 3),
                format!("line {}", CAPACITY + 4)
            ]
        );

        let errors = Filter {
            min_severity: entry::severity_rank("ERROR"),
            ..Filter::default()
        };
        let (errors, _) = buffer.recent(&errors, 10);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].1["jsonPayload"]["message"], "boom");

        let by_revision = Filter {
            revision: Some("b-00001-abc".into()),
            ..Filter::default()
        };
        assert_eq!(buffer.recent(&by_revision, 10).0.len(), 1);
    }

    #[tokio::test]
    async fn as_a_tap_it_keeps_every_log_line_and_live_readers_see_what_comes_next() {
        let events = crate::events::Events::new();
        let buffer = LogBuffer::new(Resource::default());
        events.tap(Arc::new(buffer.clone()));
        events.publish(Event::system(
            SystemKind::Starting,
            "s",
            "s-1",
            None,
            "starting".into(),
        ));
        assert_eq!(
            buffer.recent(&Filter::default(), 10).0.len(),
            1,
            "kept at once"
        );
        let (_, mut live) = buffer.recent(&Filter::default(), 0);
        events.publish(line("s", "after"));
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), live.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            next.entry(buffer.resource()).unwrap()["textPayload"],
            "after"
        );
        buffer.close();
        assert!(buffer.closed().is_cancelled());
    }
}
