//! Writing whole log lines to stdout, flushed at once because stdout may be a pipe.

use std::io::Write;

/// Prints one line to stdout and flushes it, so that a log reader sees it immediately.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not take the server down, so write errors are ignored.
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Prints one structured log line in the shape Cloud Run's logging understands.
/// It is assembled by hand so that `severity` comes first, as readers of raw logs expect.
pub fn json(severity: &str, message: &str) {
    let severity = serde_json::Value::from(severity);
    let message = serde_json::Value::from(message);
    line(&format!(r#"{{"severity":{severity},"message":{message}}}"#));
}
