//! What the emulator says, as events: instances starting and stopping, probe results, exits
//! and OOM kills, deploy and build progress, warnings, orphans reaped, and the containers' own log
//! lines. Deep modules publish [`Event`]s on an [`Events`] handle and never write to the
//! terminal themselves; the terminal printer (`logs::LogPrinter`) is the handle's sink, and
//! later observers (a dashboard, request logs, `--format json`) subscribe to its broadcast.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

/// How many events a slow subscriber may fall behind before it misses some (it is told how
/// many: `RecvError::Lagged`). The sink never misses any.
const BACKLOG: usize = 1024;

/// One thing the emulator says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A line in Cloud Run's name about a revision's instances (`SYSTEM` lines), its text
    /// in Cloud Run's words.
    System {
        kind: SystemKind,
        service: String,
        revision: String,
        /// The instance's short id, when the line is about one that exists.
        instance: Option<String>,
        text: String,
    },
    /// A line a container wrote (stdout or stderr).
    ContainerLog {
        service: String,
        revision: String,
        instance: String,
        /// Written to stderr (else stdout).
        stderr: bool,
        line: String,
    },
    /// A request the front end answered (by an instance, or itself: a 429, 503, 404...),
    /// once its response ended: Cloud Run's request log.
    Request(Arc<RequestLog>),
    /// A deploy creates a revision (its first instance starts next).
    CreatingRevision {
        service: String,
        revision: String,
        image: String,
    },
    /// A deploy's image is not present locally and is being pulled.
    PullingImage { image: String, platform: String },
    /// What the engine reports while pulling (each line once).
    PullProgress { image: String, line: String },
    /// A build from source starts: its context (what the ignore files leave of the
    /// directory) is sent to the engine.
    BuildStarted {
        service: String,
        image: String,
        files: usize,
        bytes: u64,
        /// Where the upload rules came from (`.gcloudignore`, gcloud's default for Git...).
        rules: String,
    },
    /// A build step begins (`Step 2/4 : COPY . /`).
    BuildStep { service: String, step: String },
    /// A line a build step printed.
    BuildOutput { service: String, line: String },
    /// A build ended: built, or failed (the caller says why).
    BuildFinished {
        service: String,
        image: String,
        took: Duration,
        ok: bool,
    },
    /// The build context has not changed since its image was built: the image is reused.
    BuildReused { service: String, image: String },
    /// A start in the background (for a request, or the autoscaler) failed: Cloud Run's text,
    /// the container's last lines and the local diagnosis.
    StartFailed { revision: String, report: String },
    /// A starting instance will not become ready as it stands (it listens on loopback or on
    /// another port), said before the startup probe gives up.
    WillNotBecomeReady {
        revision: String,
        why: String,
        /// How long the startup probe keeps waiting.
        budget: Duration,
    },
    /// Containers left behind by an emulator that was killed were removed (their names).
    OrphansReaped { containers: Vec<String> },
    /// Something the user should know that went wrong outside any request.
    Problem { level: Level, text: String },
}

/// One request as Cloud Run's request log records it (Cloud Logging's `HttpRequest`, with
/// where it went). Made for every request on the proxy's hot path, so it holds what is cheap
/// to take there (shared names, addresses, numbers) and is formatted only when read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLog {
    /// When the request arrived.
    pub received: SystemTime,
    pub method: http::Method,
    /// The URL as the client asked for it: `http://HOST/PATH?QUERY`.
    pub url: String,
    /// `HTTP/1.1`, `HTTP/2`...
    pub protocol: &'static str,
    pub status: u16,
    /// The request's head and (declared) body, in bytes.
    pub request_size: u64,
    /// The response's head and body as sent, in bytes.
    pub response_size: u64,
    /// From arrival until the response's last byte (or the client went away).
    pub latency: Duration,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    pub remote_ip: IpAddr,
    /// The service the host named (a 404 names one that does not exist).
    pub service: Option<Arc<str>>,
    /// The revision and instance that answered; `None` when the emulator answered itself
    /// (no instance free: 429; no service: 404; a private service's 403...).
    pub revision: Option<Arc<str>>,
    pub instance: Option<Arc<str>>,
    /// The instance's `IP:PORT`.
    pub server_ip: Option<SocketAddr>,
    /// The trace forwarded to the instance (or the client's, for a request never forwarded).
    pub trace: Option<TraceIds>,
}

/// A request's trace and span ids, as Cloud Logging's `trace` and `spanId` name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_id: u128,
    pub span_id: u64,
}

impl TraceIds {
    /// The trace id as 32 lower-case hex digits.
    pub fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }
}

/// Which `SYSTEM` line an [`Event::System`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemKind {
    /// An instance is starting (and why: autoscaling, min instances).
    Starting,
    /// An instance passed its startup probe.
    ProbePassed,
    /// An instance failed its liveness probe and is restarted.
    LivenessFailed,
    /// An instance was killed for exceeding its memory limit.
    OutOfMemory,
    /// An instance exited by itself (`Container called exit(N).`).
    Exited,
    /// The emulator stopped an instance (scale down, retire, shutdown).
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Warning,
    Error,
}

impl Event {
    pub fn system(
        kind: SystemKind,
        service: &str,
        revision: &str,
        instance: Option<&str>,
        text: String,
    ) -> Self {
        Event::System {
            kind,
            service: service.to_string(),
            revision: revision.to_string(),
            instance: instance.map(str::to_string),
            text,
        }
    }

    pub fn warning(text: impl Into<String>) -> Self {
        Event::Problem {
            level: Level::Warning,
            text: text.into(),
        }
    }

    pub fn error(text: impl Into<String>) -> Self {
        Event::Problem {
            level: Level::Error,
            text: text.into(),
        }
    }
}

/// Where events are shown as they happen: called in the publisher's task, in publish order,
/// before `publish` returns, so it can neither lag nor lose an event, and what the CLI
/// prints after an action always comes after what the action said.
pub trait Sink: Send + Sync + 'static {
    fn show(&self, event: &Event);
}

/// The emulator's event stream. Cheap to clone; every clone publishes to the same sink and
/// subscribers.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    sink: Option<Box<dyn Sink>>,
    /// Observers that see every event in the publisher's task, after the sink: the recent
    /// log and the request metrics. Each must be cheap (a short lock, a push); unlike a
    /// subscriber they cost no task wake-up per request and never fall behind.
    taps: std::sync::RwLock<Vec<Arc<dyn Sink>>>,
    broadcast: broadcast::Sender<Event>,
}

impl Events {
    /// A stream nobody shows: events reach subscribers only.
    pub fn new() -> Self {
        Events::build(None)
    }

    /// A stream shown by `sink` (the terminal printer) as well as broadcast.
    pub fn with_sink(sink: impl Sink) -> Self {
        Events::build(Some(Box::new(sink)))
    }

    fn build(sink: Option<Box<dyn Sink>>) -> Self {
        Events {
            inner: Arc::new(Inner {
                sink,
                taps: std::sync::RwLock::default(),
                broadcast: broadcast::channel(BACKLOG).0,
            }),
        }
    }

    /// Shows the event on the sink, then broadcasts it to the subscribers (if any).
    pub fn publish(&self, event: Event) {
        if let Some(sink) = &self.inner.sink {
            sink.show(&event);
        }
        for tap in self
            .inner
            .taps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            tap.show(&event);
        }
        if self.inner.broadcast.receiver_count() > 0 {
            // Fails only when every subscriber went away meanwhile.
            let _ = self.inner.broadcast.send(event);
        }
    }

    /// Shows every event published from now on to `tap` too, in the publisher's task.
    pub fn tap(&self, tap: Arc<dyn Sink>) {
        self.inner
            .taps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(tap);
    }

    /// Every event published from now on. A subscriber that falls more than 1024 events
    /// behind misses the oldest (and is told so); the sink never does.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.broadcast.subscribe()
    }
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("sink", &self.inner.sink.is_some())
            .field("subscribers", &self.inner.broadcast.receiver_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Keeps what it is shown.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Event>>>);

    impl Sink for Recorder {
        fn show(&self, event: &Event) {
            self.0.lock().unwrap().push(event.clone());
        }
    }

    fn numbered(n: usize) -> Event {
        Event::warning(format!("event {n}"))
    }

    #[test]
    fn the_sink_sees_every_event_in_order_before_publish_returns() {
        let recorder = Recorder::default();
        let events = Events::with_sink(recorder.clone());
        events.publish(numbered(1));
        assert_eq!(*recorder.0.lock().unwrap(), [numbered(1)]);
        events.clone().publish(numbered(2));
        assert_eq!(*recorder.0.lock().unwrap(), [numbered(1), numbered(2)]);
    }

    #[test]
    fn subscribers_get_what_is_published_after_they_subscribe() {
        let events = Events::new();
        events.publish(numbered(0));
        let mut first = events.subscribe();
        let mut second = events.subscribe();
        events.publish(numbered(1));
        events.publish(numbered(2));
        for receiver in [&mut first, &mut second] {
            assert_eq!(receiver.try_recv().unwrap(), numbered(1));
            assert_eq!(receiver.try_recv().unwrap(), numbered(2));
            assert!(receiver.try_recv().is_err());
        }
    }

    #[test]
    fn a_lagging_subscriber_never_costs_the_sink_a_line() {
        let recorder = Recorder::default();
        let events = Events::with_sink(recorder.clone());
        let mut slow = events.subscribe();
        let total = BACKLOG + 10;
        for n in 0..total {
            events.publish(numbered(n));
        }
        assert_eq!(recorder.0.lock().unwrap().len(), total);
        assert_eq!(
            slow.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(10))
        );
        assert_eq!(slow.try_recv().unwrap(), numbered(10));
    }
}
