//! `emulate logs [SERVICE]`: the running emulator's recent log, as `gcloud beta run services
//! logs read` (and, with `--follow`, `... logs tail`): requests, the containers' output and
//! system lines, as text or as Cloud Logging entries.

use clap::{Args, ValueEnum};

use super::control::{self, Target};
use super::Exit;
use crate::logs::entry;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The service whose log to read (default: every service).
    #[arg(value_parser = control::service_arg)]
    pub service: Option<String>,
    /// Only this revision's entries.
    #[arg(long, value_parser = control::revision_arg)]
    pub revision: Option<String>,
    /// Keep printing entries as they come, until the emulator stops or Ctrl-C.
    #[arg(long)]
    pub follow: bool,
    /// `text` for people, `json` for one Cloud Logging LogEntry per line.
    #[arg(long, value_enum, default_value_t = LogsFormat::Text)]
    pub format: LogsFormat,
    /// How many of the most recent entries to print first.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub limit: u64,
    /// Only entries at this severity or above (DEBUG, INFO, NOTICE, WARNING, ERROR, CRITICAL,
    /// ALERT, EMERGENCY).
    #[arg(long, value_name = "LEVEL", value_parser = severity_arg)]
    pub severity: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogsFormat {
    #[default]
    Text,
    Json,
}

fn severity_arg(text: &str) -> Result<String, String> {
    entry::known_severity(text)
        .map(str::to_string)
        .ok_or_else(|| format!("not one of {}", entry::SEVERITIES.join(", ")))
}

/// The query string the admin API's log path takes.
fn query(args: &LogsArgs) -> String {
    let mut pairs = vec![format!("limit={}", args.limit)];
    if let Some(service) = &args.service {
        pairs.push(format!("service={service}"));
    }
    if let Some(revision) = &args.revision {
        pairs.push(format!("revision={revision}"));
    }
    if let Some(severity) = &args.severity {
        pairs.push(format!("severity={severity}"));
    }
    if args.follow {
        pairs.push("follow=true".to_string());
    }
    pairs.join("&")
}

pub async fn run(args: LogsArgs) -> Exit {
    let client = match args.target.client().await {
        Ok(client) => client,
        Err(exit) => return exit,
    };
    let format = args.format;
    let query = query(&args);
    let reading = client.logs(&query, |line| match format {
        LogsFormat::Json => println!("{line}"),
        LogsFormat::Text => match serde_json::from_str(line) {
            Ok(entry) => println!("{}", text(&entry)),
            Err(_) => println!("{line}"),
        },
    });
    // Ctrl-C is how `--follow` ends. The handler is installed explicitly: a process started
    // in the background by a script inherits SIGINT ignored.
    let printed = tokio::select! {
        printed = reading => printed,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    match printed {
        Ok(()) => Exit::Success,
        Err(e) => control::fail(&e),
    }
}

/// An entry as a line: time, severity, where from, and what.
pub fn text(entry: &serde_json::Value) -> String {
    let labels = &entry["resource"]["labels"];
    let revision = labels["revision_name"].as_str().unwrap_or("");
    let service = labels["service_name"].as_str().unwrap_or("");
    let origin = match (revision, entry["labels"]["instanceId"].as_str()) {
        ("", _) if service.is_empty() => "emulate".to_string(),
        ("", _) => service.to_string(),
        (revision, Some(instance)) => format!("{revision}/{instance}"),
        (revision, None) => revision.to_string(),
    };
    let what = if let Some(http) = entry.get("httpRequest").filter(|_| {
        entry["logName"]
            .as_str()
            .is_some_and(|n| n.ends_with("%2Frequests"))
    }) {
        format!(
            "{} {} {} bytes {} {}",
            http["requestMethod"].as_str().unwrap_or(""),
            http["status"],
            http["responseSize"].as_str().unwrap_or("0"),
            http["latency"].as_str().unwrap_or(""),
            http["requestUrl"].as_str().unwrap_or(""),
        )
    } else if let Some(text) = entry["textPayload"].as_str() {
        text.to_string()
    } else if let Some(message) = entry["jsonPayload"]["message"].as_str() {
        message.to_string()
    } else {
        entry["jsonPayload"].to_string()
    };
    format!(
        "{} {:<8} {origin} {what}",
        entry["timestamp"].as_str().unwrap_or(""),
        entry["severity"].as_str().unwrap_or("DEFAULT"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_as_lines() {
        let request = serde_json::json!({
            "logName": "projects/p/logs/run.googleapis.com%2Frequests",
            "timestamp": "2026-12-01T14:00:00.1Z",
            "severity": "WARNING",
            "resource": {"labels": {"service_name": "hello", "revision_name": "hello-1"}},
            "labels": {"instanceId": "abcd"},
            "httpRequest": {"requestMethod": "GET", "status": 404, "responseSize": "12", "latency": "0.002s", "requestUrl": "http://hello.localhost:8080/x"},
        });
        assert_eq!(
            text(&request),
            "2026-12-01T14:00:00.1Z WARNING  hello-1/abcd GET 404 12 bytes 0.002s http://hello.localhost:8080/x"
        );
        let structured = serde_json::json!({
            "logName": "projects/p/logs/run.googleapis.com%2Fstdout",
            "timestamp": "t",
            "severity": "ERROR",
            "resource": {"labels": {"service_name": "", "revision_name": ""}},
            "jsonPayload": {"message": "boom"},
        });
        assert_eq!(text(&structured), "t ERROR    emulate boom");
    }

    #[test]
    fn severities_are_checked_and_the_query_carries_the_flags() {
        assert_eq!(severity_arg("warn").unwrap(), "WARNING");
        assert!(severity_arg("loud").is_err());
        let args = LogsArgs {
            service: Some("hello".into()),
            revision: None,
            follow: true,
            format: LogsFormat::Text,
            limit: 5,
            severity: Some("ERROR".into()),
            target: Target { admin: None },
        };
        assert_eq!(
            query(&args),
            "limit=5&service=hello&severity=ERROR&follow=true"
        );
    }
}
