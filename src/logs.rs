//! How the emulator shows what it says: the terminal printer, the sink of the event stream
//! (`events.rs`) and the only writer to the terminal besides the CLI's own messages.
//! Container output line by line, prefixed with the revision and instance it came from,
//! structured (JSON) lines shown as severity and message, and Cloud Run's own system lines,
//! coloured on a terminal and plain when piped; deploy progress and warnings on stderr.

use std::io::{IsTerminal, Write};

use crate::events::{Event, Level, Sink};

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
}

impl LogPrinter {
    pub fn stdout() -> Self {
        LogPrinter {
            color: Self::stdout_is_colored(),
            stderr: false,
            progress: Default::default(),
        }
    }

    #[allow(clippy::disallowed_methods)] // The printer is the terminal's.
    pub fn stderr() -> Self {
        LogPrinter {
            color: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            stderr: true,
            progress: Default::default(),
        }
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
            } => return (Stream::Log, self.container(revision, instance, line)),
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

    /// A line the container wrote.
    fn container(&self, revision: &str, instance: &str, line: &str) -> String {
        let entry = parse_line(line);
        let prefix = self.paint("2", &format!("{revision}/{instance}"));
        let severity = entry.severity.as_deref().unwrap_or("");
        let code = match severity {
            "EMERGENCY" | "ALERT" | "CRITICAL" | "ERROR" => "31",
            "WARNING" => "33",
            "NOTICE" | "INFO" => "32",
            _ => "2",
        };
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
        let (stream, line) = self.render(event);
        self.write(stream, &line);
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
        LogPrinter {
            color: false,
            stderr,
            progress: Default::default(),
        }
    }

    #[test]
    fn log_and_system_lines_go_to_the_log_stream_and_the_rest_to_stderr() {
        use crate::events::SystemKind;
        let printer = plain(false);
        let system = Event::system(
            SystemKind::Exited,
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
            revision: "r".into(),
            instance: "0123abcd".into(),
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
        let terminal = LogPrinter {
            color: true,
            stderr: false,
            progress: Default::default(),
        };
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
        let printer = LogPrinter {
            color: true,
            stderr: false,
            progress: Default::default(),
        };
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
}
