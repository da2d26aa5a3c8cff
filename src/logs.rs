//! How the emulator shows what it says: the terminal printer, the sink of the event stream
//! (`events.rs`) and the only writer to the terminal besides the CLI's own messages.
//! Container output line by line, prefixed with the revision and instance it came from,
//! structured (JSON) lines shown as severity and message, and Cloud Run's own system lines,
//! coloured on a terminal and plain when piped; deploy progress and warnings on stderr.

pub mod buffer;
pub mod entry;

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::events::{Event, Level, RequestLog, Sink};
pub use entry::Resource;

/// One container log line as Cloud Logging would show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub severity: Option<String>,
    pub message: String,
}

/// Reads a log line: a JSON object is a structured entry (`severity`, `message`, as Cloud
/// Run's logging agent understands them); anything else is plain text.
pub fn parse_line(line: &str) -> Entry {
    let plain = || Entry {
        severity: None,
        message: line.to_string(),
    };
    if !line.trim_start().starts_with('{') {
        return plain();
    }
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str(line) else {
        return plain();
    };
    let severity = match object.remove("severity") {
        Some(serde_json::Value::String(s)) => Some(s.to_ascii_uppercase()),
        _ => None,
    };
    let message = match object.remove("message") {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => serde_json::Value::Object(object).to_string(),
    };
    Entry { severity, message }
}

/// Prints every event the emulator publishes: log and system lines to stdout (or stderr,
/// see [`LogPrinter::stderr`]), one whole line per write so lines from several instances
/// never interleave mid-line; everything else to stderr.
#[derive(Clone, Debug)]
pub struct LogPrinter {
    color: bool,
    /// Logs go to stderr when stdout carries a result (`emulate smoke`).
    stderr: bool,
    /// On a terminal, a build step's output is one line rewritten in place under the step;
    /// true while that line is on screen (unfinished), so the next write clears it first.
    progress: std::sync::Arc<std::sync::atomic::AtomicBool>,
    format: LogFormat,
    /// One line per request (`--request-log on`, the default).
    requests: bool,
    /// The services already warned about a JSON line that would not parse as meant.
    doubted: Arc<Mutex<HashSet<String>>>,
}

/// How log lines are printed (`--log-format`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: prefix, severity, message; colour on a terminal.
    #[default]
    Text,
    /// One Cloud Logging `LogEntry` JSON object per line, for this project and location.
    Json(Resource),
}

impl LogPrinter {
    pub fn stdout() -> Self {
        LogPrinter::new(Self::stdout_is_colored(), false)
    }

    #[allow(clippy::disallowed_methods)] // The printer is the terminal's.
    pub fn stderr() -> Self {
        let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        LogPrinter::new(color, true)
    }

    fn new(color: bool, stderr: bool) -> Self {
        LogPrinter {
            color,
            stderr,
            format: LogFormat::Text,
            requests: true,
            doubted: Arc::default(),
            progress: Default::default(),
        }
    }

    /// Prints log lines in `format`.
    pub fn with_format(mut self, format: LogFormat) -> Self {
        self.format = format;
        self
    }

    /// Prints a line per request, or not.
    pub fn with_request_log(mut self, on: bool) -> Self {
        self.requests = on;
        self
    }

    /// Colour only on a terminal, and never with NO_COLOR set.
    #[allow(clippy::disallowed_methods)] // The printer is the terminal's.
    pub fn stdout_is_colored() -> bool {
        std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
    }

    /// The event as printed, and where: the log stream, or stderr.
    fn render(&self, event: &Event) -> (Stream, String) {
        let text = match event {
            Event::System { revision, text, .. } => {
                return (Stream::Log, self.system(revision, text));
            }
            Event::ContainerLog {
                revision,
                instance,
                line,
                ..
            } => return (Stream::Log, self.container(revision, instance, line)),
            Event::Request(request) => return (Stream::Log, self.request(request)),
            Event::CreatingRevision {
                service,
                revision,
                image,
            } => {
                format!("Creating revision [{revision}] of service [{service}] from image [{image}]...")
            }
            Event::PullingImage { image, platform } => {
                format!("Image '{image}' is not present locally; pulling it for {platform}...")
            }
            Event::PullProgress { line, .. } => format!("  {line}"),
            Event::BuildStarted {
                service,
                image,
                files,
                bytes,
                rules,
            } => format!(
                "Building image [{image}] for service [{service}]: {files} file(s), {} sent ({rules})...",
                human_bytes(*bytes)
            ),
            Event::BuildStep { step, .. } => format!("  {step}"),
            Event::BuildOutput { line, .. } if self.color => {
                // One screen line, or rewriting it in place would scroll.
                let width = terminal_width().saturating_sub(5).max(20);
                let line: String = line.chars().take(width).collect();
                return (Stream::Progress, format!("    {}", self.paint("2", &line)));
            }
            Event::BuildOutput { line, .. } => format!("    | {line}"),
            Event::BuildFinished {
                image, took, ok, ..
            } => match ok {
                true => format!("Built image [{image}] in {:.1} s.", took.as_secs_f64()),
                false => format!("The build of [{image}] failed after {:.1} s.", took.as_secs_f64()),
            },
            Event::BuildReused { image, .. } => format!(
                "The build context has not changed since image [{image}] was built: reusing it."
            ),
            Event::StartFailed { report, .. } => format!("ERROR: {report}"),
            Event::WillNotBecomeReady {
                revision,
                why,
                budget,
            } => format!(
                "warning: revision {revision} is not ready yet and will not become ready as it stands: {why}\n         (the startup probe keeps waiting up to {budget:?}; --startup-timeout shortens it)"
            ),
            Event::OrphansReaped { containers } => format!(
                "Removed {} container(s) left behind by an emulator that was killed: {}",
                containers.len(),
                containers.join(", ")
            ),
            Event::Problem {
                level: Level::Warning,
                text,
            } => format!("warning: {text}"),
            Event::Problem {
                level: Level::Error,
                text,
            } => format!("error: {text}"),
        };
        (Stream::Stderr, text)
    }

    /// A line the emulator writes in Cloud Run's name (instance started, probe succeeded...).
    fn system(&self, revision: &str, message: &str) -> String {
        let prefix = self.paint("2", revision);
        format!("{prefix} {} {message}", self.paint("36", "SYSTEM  "))
    }

    /// A request, as Cloud Run's request log shows it: method, status, size, latency, user
    /// agent, URL; severity by status. A request the front end answered itself (no instance
    /// free, no such service...) says so.
    fn request(&self, request: &RequestLog) -> String {
        let prefix = match (&request.revision, &request.instance) {
            (Some(revision), Some(instance)) => format!("{revision}/{instance}"),
            _ => request.service.as_deref().unwrap_or("emulate").to_string(),
        };
        let severity = entry::request_severity(request.status);
        let code = severity_color(severity);
        let mut line = format!(
            "{} {} {} {} {} {} {} {}",
            self.paint("2", &prefix),
            self.paint(code, &format!("{severity:<8}")),
            request.method,
            self.paint(code, &request.status.to_string()),
            human_size(request.response_size),
            human_latency(request.latency),
            request.user_agent.as_deref().unwrap_or("-"),
            request.url,
        );
        if request.revision.is_none() {
            line.push_str(" (answered by the front end; it never reached an instance)");
        }
        line
    }

    /// A warning, once per service, about a JSON line that Cloud Logging would not read as
    /// its writer meant.
    fn doubt(&self, event: &Event) -> Option<String> {
        let Event::ContainerLog { service, line, .. } = event else {
            return None;
        };
        let resource = match &self.format {
            LogFormat::Json(resource) => resource.clone(),
            LogFormat::Text => Resource::default(),
        };
        let doubt = entry::Structured::parse(line, &resource)?.doubt?;
        let mut doubted = self.doubted.lock().unwrap_or_else(|e| e.into_inner());
        if !doubted.insert(service.clone()) {
            return None;
        }
        Some(format!(
            "warning: service [{service}] writes JSON log lines Cloud Logging will not read as meant: {doubt}. Line: {line}\n         (once per service; the fields Cloud Logging reads: https://cloud.google.com/logging/docs/structured-logging)"
        ))
    }

    /// A line the container wrote.
    fn container(&self, revision: &str, instance: &str, line: &str) -> String {
        let entry = parse_line(line);
        let prefix = self.paint("2", &format!("{revision}/{instance}"));
        let severity = entry.severity.as_deref().unwrap_or("");
        let code = severity_color(severity);
        let severity = self.paint(code, &format!("{severity:<8}"));
        format!("{prefix} {severity} {}", entry.message)
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Writes one line; a closed stdout or stderr is ignored (a panic would skip the shutdown
    /// that removes the containers).
    #[allow(clippy::disallowed_methods)] // The printer is the terminal's.
    fn write(&self, stream: Stream, line: &str) {
        use std::sync::atomic::Ordering;
        // A progress line is rewritten in place; whatever comes next replaces it for good.
        let open = self
            .progress
            .swap(stream == Stream::Progress, Ordering::SeqCst);
        if stream == Stream::Progress {
            let mut out = std::io::stderr().lock();
            let _ = write!(out, "\r\x1b[K{line}");
            let _ = out.flush();
            return;
        }
        if open {
            let mut out = std::io::stderr().lock();
            let _ = write!(out, "\r\x1b[K");
            let _ = out.flush();
        }
        if stream == Stream::Stderr || self.stderr {
            let mut out = std::io::stderr().lock();
            let _ = writeln!(out, "{line}");
        } else {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

impl Sink for LogPrinter {
    fn show(&self, event: &Event) {
        if matches!(event, Event::Request(_)) && !self.requests {
            return;
        }
        let json = match &self.format {
            LogFormat::Json(resource) => entry::event_entry(event, SystemTime::now(), resource),
            LogFormat::Text => None,
        };
        match json {
            Some(entry) => self.write(Stream::Log, &entry.to_string()),
            None => {
                let (stream, line) = self.render(event);
                self.write(stream, &line);
            }
        }
        if let Some(warning) = self.doubt(event) {
            self.write(Stream::Stderr, &warning);
        }
    }
}

/// The terminal colour of a severity: red for errors and worse, yellow for warnings, green
/// for info and notice, dim for the rest.
fn severity_color(severity: &str) -> &'static str {
    match severity {
        "EMERGENCY" | "ALERT" | "CRITICAL" | "ERROR" => "31",
        "WARNING" => "33",
        "NOTICE" | "INFO" => "32",
        _ => "2",
    }
}

/// A size as the request log shows it: `512 B`, `1.2 KiB`, `3.4 MiB`.
fn human_size(bytes: u64) -> String {
    match bytes {
        0..=1023 => format!("{bytes} B"),
        1024..=1_048_575 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

/// A latency as the request log shows it: `850 µs`, `12 ms`, `1.25 s`.
fn human_latency(latency: Duration) -> String {
    let micros = latency.as_micros();
    match micros {
        0..=999 => format!("{micros} µs"),
        1_000..=999_999 => format!("{} ms", micros / 1000),
        _ => format!("{:.2} s", latency.as_secs_f64()),
    }
}

/// Where a printed event goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    /// The printer's own stream: stdout, or stderr when stdout carries a result.
    Log,
    Stderr,
    /// A line on stderr rewritten in place (a terminal's build output).
    Progress,
}

/// The terminal's width, from `COLUMNS`, else 80.
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(80)
}

/// `1.2 MiB`-style sizes.
fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Splits a stream of output chunks into lines, keeping a partial last line until its end
/// arrives.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(&str)) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]);
            emit(text.trim_end_matches('\r'));
        }
    }

    pub fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.partial.is_empty() {
            let text = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            emit(&text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_lines_show_severity_and_message() {
        assert_eq!(
            parse_line(r#"{"severity":"error","message":"boom","x":1}"#),
            Entry {
                severity: Some("ERROR".into()),
                message: "boom".into()
            }
        );
        assert_eq!(
            parse_line(r#"{"severity":"INFO","count":2}"#),
            Entry {
                severity: Some("INFO".into()),
                message: r#"{"count":2}"#.into()
            }
        );
        assert_eq!(parse_line("plain {text}").message, "plain {text}");
        assert_eq!(parse_line("{not json").severity, None);
    }

    fn plain(stderr: bool) -> LogPrinter {
        LogPrinter::new(false, stderr)
    }

    #[test]
    fn log_and_system_lines_go_to_the_log_stream_and_the_rest_to_stderr() {
        use crate::events::SystemKind;
        let printer = plain(false);
        let system = Event::system(
            SystemKind::Exited,
            "hello",
            "hello-00001-abc",
            None,
            "Container called exit(1).".into(),
        );
        assert_eq!(
            printer.render(&system),
            (
                Stream::Log,
                "hello-00001-abc SYSTEM   Container called exit(1).".into()
            )
        );
        let log = Event::ContainerLog {
            service: "s".into(),
            revision: "r".into(),
            instance: "0123abcd".into(),
            stderr: false,
            line: r#"{"severity":"warning","message":"careful"}"#.into(),
        };
        assert_eq!(
            printer.render(&log),
            (Stream::Log, "r/0123abcd WARNING  careful".into())
        );
        assert_eq!(
            printer.render(&Event::warning("it wobbles")),
            (Stream::Stderr, "warning: it wobbles".into())
        );
        assert_eq!(
            printer
                .render(&Event::OrphansReaped {
                    containers: vec!["a".into(), "b".into()]
                })
                .1,
            "Removed 2 container(s) left behind by an emulator that was killed: a, b"
        );
    }

    #[test]
    fn builds_show_steps_and_output_plainly_when_piped() {
        let printer = plain(false);
        let step = Event::BuildStep {
            service: "s".into(),
            step: "Step 2/4 : COPY . /".into(),
        };
        assert_eq!(
            printer.render(&step),
            (Stream::Stderr, "  Step 2/4 : COPY . /".into())
        );
        let output = Event::BuildOutput {
            service: "s".into(),
            line: "compiling".into(),
        };
        assert_eq!(
            printer.render(&output),
            (Stream::Stderr, "    | compiling".into())
        );
        // On a terminal the output is one line rewritten in place.
        let terminal = LogPrinter::new(true, false);
        assert_eq!(terminal.render(&output).0, Stream::Progress);
        let started = Event::BuildStarted {
            service: "s".into(),
            image: "emulate-source/s:ab".into(),
            files: 3,
            bytes: 3 << 20,
            rules: ".gcloudignore".into(),
        };
        assert_eq!(
            printer.render(&started).1,
            "Building image [emulate-source/s:ab] for service [s]: 3 file(s), 3.0 MiB sent (.gcloudignore)..."
        );
    }

    #[test]
    fn colours_only_when_asked() {
        let printer = LogPrinter::new(true, false);
        assert_eq!(
            printer.system("r", "hi"),
            "\x1b[2mr\x1b[0m \x1b[36mSYSTEM  \x1b[0m hi"
        );
        assert_eq!(plain(true).system("r", "hi"), "r SYSTEM   hi");
    }

    #[test]
    fn lines_are_split_across_chunks() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        splitter.push(b"one\ntw", |l| lines.push(l.to_string()));
        splitter.push(b"o\r\nthree", |l| lines.push(l.to_string()));
        splitter.finish(|l| lines.push(l.to_string()));
        assert_eq!(lines, ["one", "two", "three"]);
    }

    fn request_log(status: u16, answered: bool) -> Event {
        Event::Request(Arc::new(RequestLog {
            received: SystemTime::UNIX_EPOCH,
            method: http::Method::GET,
            url: "http://hello.localhost:8080/a?b=1".into(),
            protocol: "HTTP/1.1",
            status,
            request_size: 80,
            response_size: 2048,
            latency: Duration::from_micros(12_400),
            user_agent: Some("curl/8.1".into()),
            referer: None,
            remote_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            service: Some("hello".into()),
            revision: answered.then(|| "hello-00001-abc".into()),
            instance: answered.then(|| "0123abcd".into()),
            server_ip: None,
            trace: None,
        }))
    }

    #[test]
    fn a_request_is_one_line_with_severity_by_status_and_front_end_answers_marked() {
        let printer = plain(false);
        assert_eq!(
            printer.render(&request_log(200, true)),
            (
                Stream::Log,
                "hello-00001-abc/0123abcd INFO     GET 200 2.0 KiB 12 ms curl/8.1 http://hello.localhost:8080/a?b=1".into()
            )
        );
        let (_, refused) = printer.render(&request_log(429, false));
        assert_eq!(
            refused,
            "hello WARNING  GET 429 2.0 KiB 12 ms curl/8.1 http://hello.localhost:8080/a?b=1 (answered by the front end; it never reached an instance)"
        );
        let (_, failed) = printer.render(&request_log(503, true));
        assert!(failed.contains(" ERROR    GET 503 "), "{failed}");
        assert_eq!(human_latency(Duration::from_micros(850)), "850 µs");
        assert_eq!(human_latency(Duration::from_millis(1250)), "1.25 s");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
    }

    #[test]
    fn a_doubtful_json_line_is_warned_about_once_per_service() {
        let printer = plain(false);
        let line = |service: &str| Event::ContainerLog {
            service: service.into(),
            revision: "r".into(),
            instance: "i".into(),
            stderr: false,
            line: r#"{"level":"info","msg":"hi"}"#.into(),
        };
        let first = printer.doubt(&line("a")).expect("warned");
        assert!(
            first.contains("service [a]") && first.contains("\"level\""),
            "{first}"
        );
        assert_eq!(printer.doubt(&line("a")), None, "once per service");
        assert!(printer.doubt(&line("b")).is_some());
        let fine = Event::ContainerLog {
            service: "c".into(),
            revision: "r".into(),
            instance: "i".into(),
            stderr: false,
            line: r#"{"severity":"INFO","message":"ok"}"#.into(),
        };
        assert_eq!(printer.doubt(&fine), None);
    }
}
