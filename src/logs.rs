//! How the emulator shows logs: container output line by line, prefixed with the revision
//! and instance it came from, structured (JSON) lines shown as severity and message, and
//! Cloud Run's own system lines. Coloured on a terminal, plain when piped.

use std::io::{IsTerminal, Write};

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

/// Writes log lines to stdout, one whole line per write so lines from several instances never
/// interleave mid-line.
#[derive(Clone, Debug)]
pub struct LogPrinter {
    color: bool,
    /// Logs go to stderr when stdout carries a result (`emulate smoke`).
    stderr: bool,
}

impl LogPrinter {
    pub fn stdout() -> Self {
        LogPrinter {
            color: Self::stdout_is_colored(),
            stderr: false,
        }
    }

    pub fn stderr() -> Self {
        LogPrinter {
            color: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            stderr: true,
        }
    }

    /// Colour only on a terminal, and never with NO_COLOR set.
    pub fn stdout_is_colored() -> bool {
        std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
    }

    /// A line the emulator writes in Cloud Run's name (instance started, probe succeeded...).
    pub fn system(&self, revision: &str, message: &str) {
        let prefix = self.paint("2", revision);
        self.write(&format!(
            "{prefix} {} {message}",
            self.paint("36", "SYSTEM  ")
        ));
    }

    /// A line the container wrote.
    pub fn container(&self, revision: &str, instance: &str, line: &str) {
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
        self.write(&format!("{prefix} {severity} {}", entry.message));
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn write(&self, line: &str) {
        if self.stderr {
            let mut out = std::io::stderr().lock();
            let _ = writeln!(out, "{line}");
        } else {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
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
