//! Cloud Logging's shape: every line the emulator shows (a request, a container's stdout or
//! stderr, a system line) as the `LogEntry` Cloud Run would write, and a container's JSON line
//! read as Cloud Run's logging agent reads it (its special fields lifted out of the payload).

use std::sync::OnceLock;
use std::time::SystemTime;

use serde_json::{json, Map, Value};

use crate::config::rfc3339;
use crate::events::{Event, Level, RequestLog, SystemKind};

/// Where the entries say they come from: the `cloud_run_revision` resource's project and
/// location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub project_id: String,
    pub location: String,
}

impl Default for Resource {
    fn default() -> Self {
        Resource {
            project_id: "emulate-local".to_string(),
            location: "us-central1".to_string(),
        }
    }
}

/// Cloud Logging's severities, in order.
pub const SEVERITIES: [&str; 9] = [
    "DEFAULT",
    "DEBUG",
    "INFO",
    "NOTICE",
    "WARNING",
    "ERROR",
    "CRITICAL",
    "ALERT",
    "EMERGENCY",
];

/// A severity's rank in [`SEVERITIES`] (DEFAULT 0 ... EMERGENCY 8).
pub fn severity_rank(severity: &str) -> usize {
    SEVERITIES.iter().position(|s| *s == severity).unwrap_or(0)
}

/// The severity a name written by an app means to Cloud Logging: its own names in any case,
/// and the common aliases its agent maps (`WARN`, `FATAL`, `TRACE`). `None` for anything
/// else (which Cloud Logging stores as DEFAULT).
pub fn known_severity(name: &str) -> Option<&'static str> {
    let upper = name.trim().to_ascii_uppercase();
    if let Some(known) = SEVERITIES.iter().find(|s| **s == upper) {
        return Some(known);
    }
    match upper.as_str() {
        "WARN" => Some("WARNING"),
        "FATAL" => Some("CRITICAL"),
        "TRACE" => Some("DEBUG"),
        _ => None,
    }
}

/// The request log's severity, as Cloud Run sets it: 5xx ERROR, 4xx WARNING, else INFO.
pub fn request_severity(status: u16) -> &'static str {
    match status {
        500.. => "ERROR",
        400..=499 => "WARNING",
        _ => "INFO",
    }
}

/// A duration as protobuf's JSON writes it: seconds with up to nine decimals, `"0.012s"`.
pub fn duration_json(duration: std::time::Duration) -> String {
    let nanos = duration.subsec_nanos();
    if nanos == 0 {
        return format!("{}s", duration.as_secs());
    }
    let fraction = format!("{nanos:09}");
    format!("{}.{}s", duration.as_secs(), fraction.trim_end_matches('0'))
}

fn log_name(resource: &Resource, log: &str) -> String {
    format!(
        "projects/{}/logs/run.googleapis.com%2F{log}",
        resource.project_id
    )
}

fn monitored_resource(resource: &Resource, service: &str, revision: &str) -> Value {
    json!({
        "type": "cloud_run_revision",
        "labels": {
            "service_name": service,
            "revision_name": revision,
            "configuration_name": service,
            "location": resource.location,
            "project_id": resource.project_id,
        }
    })
}

/// A request's entry: Cloud Run's `requests` log, with `httpRequest`, trace and span.
pub fn request_entry(request: &RequestLog, resource: &Resource) -> Value {
    let service = request.service.as_deref().unwrap_or("");
    let revision = request.revision.as_deref().unwrap_or("");
    let mut http = json!({
        "requestMethod": request.method.as_str(),
        "requestUrl": request.url,
        "requestSize": request.request_size.to_string(),
        "status": request.status,
        "responseSize": request.response_size.to_string(),
        "remoteIp": request.remote_ip.to_string(),
        "latency": duration_json(request.latency),
        "protocol": request.protocol,
    });
    let fields = http.as_object_mut().expect("an object");
    if let Some(agent) = &request.user_agent {
        fields.insert("userAgent".into(), agent.clone().into());
    }
    if let Some(referer) = &request.referer {
        fields.insert("referer".into(), referer.clone().into());
    }
    if let Some(server) = &request.server_ip {
        fields.insert("serverIp".into(), server.to_string().into());
    }
    let mut entry = json!({
        "httpRequest": http,
        "resource": monitored_resource(resource, service, revision),
        "timestamp": rfc3339(request.received, true),
        "severity": request_severity(request.status),
        "logName": log_name(resource, "requests"),
    });
    let fields = entry.as_object_mut().expect("an object");
    if let Some(instance) = &request.instance {
        fields.insert("labels".into(), json!({ "instanceId": &**instance }));
    }
    if let Some(trace) = &request.trace {
        fields.insert(
            "trace".into(),
            format!(
                "projects/{}/traces/{}",
                resource.project_id,
                trace.trace_hex()
            )
            .into(),
        );
        fields.insert("spanId".into(), trace.span_hex().into());
    }
    if request.revision.is_none() {
        // The emulator answered without an instance: say so, as Cloud Run's front end does in
        // the entry's text.
        fields.insert(
            "textPayload".into(),
            "The request was answered by the front end; it never reached an instance.".into(),
        );
    }
    entry
}

/// A line of a container's output: `stdout` or `stderr`, read as the logging agent reads it.
pub fn container_entry(
    service: &str,
    revision: &str,
    instance: &str,
    stderr: bool,
    line: &str,
    at: SystemTime,
    resource: &Resource,
) -> Value {
    let mut entry = Map::new();
    entry.insert(
        "resource".into(),
        monitored_resource(resource, service, revision),
    );
    entry.insert("timestamp".into(), rfc3339(at, true).into());
    entry.insert(
        "logName".into(),
        log_name(resource, if stderr { "stderr" } else { "stdout" }).into(),
    );
    let mut labels = Map::new();
    labels.insert("instanceId".into(), instance.into());
    let structured = Structured::parse(line, resource);
    match structured {
        None => {
            entry.insert("severity".into(), "DEFAULT".into());
            entry.insert("textPayload".into(), line.into());
        }
        Some(structured) => {
            entry.insert("severity".into(), structured.severity.into());
            if let Some(timestamp) = structured.timestamp {
                entry.insert("timestamp".into(), timestamp.into());
            }
            for (key, value) in structured.labels {
                labels.insert(key, value);
            }
            for (key, value) in structured.lifted {
                entry.insert(key, value);
            }
            entry.insert("jsonPayload".into(), Value::Object(structured.payload));
        }
    }
    entry.insert("labels".into(), Value::Object(labels));
    Value::Object(entry)
}

/// A system line (`varlog/system`) or one of the emulator's warnings.
pub fn system_entry(
    service: &str,
    revision: &str,
    instance: Option<&str>,
    severity: &str,
    text: &str,
    at: SystemTime,
    resource: &Resource,
) -> Value {
    let mut entry = json!({
        "textPayload": text,
        "resource": monitored_resource(resource, service, revision),
        "timestamp": rfc3339(at, true),
        "severity": severity,
        "logName": log_name(resource, "varlog%2Fsystem"),
    });
    if let Some(instance) = instance {
        entry["labels"] = json!({ "instanceId": instance });
    }
    entry
}

/// The severity of a system line: Cloud Run writes failures as ERROR, the rest as INFO.
pub fn system_severity(kind: SystemKind) -> &'static str {
    match kind {
        SystemKind::LivenessFailed | SystemKind::OutOfMemory => "ERROR",
        SystemKind::Exited => "WARNING",
        SystemKind::Starting | SystemKind::ProbePassed | SystemKind::Stopped => "INFO",
    }
}

/// The entry of an event shown in the log, if it is one: requests, container lines, system
/// lines and the emulator's warnings and errors.
pub fn event_entry(event: &Event, at: SystemTime, resource: &Resource) -> Option<Value> {
    Some(match event {
        Event::Request(request) => request_entry(request, resource),
        Event::ContainerLog {
            service,
            revision,
            instance,
            stderr,
            line,
        } => container_entry(service, revision, instance, *stderr, line, at, resource),
        Event::System {
            kind,
            service,
            revision,
            instance,
            text,
        } => system_entry(
            service,
            revision,
            instance.as_deref(),
            system_severity(*kind),
            text,
            at,
            resource,
        ),
        Event::StartFailed { revision, report } => {
            system_entry("", revision, None, "ERROR", report, at, resource)
        }
        Event::Problem { level, text } => {
            let severity = match level {
                Level::Warning => "WARNING",
                Level::Error => "ERROR",
            };
            system_entry("", "", None, severity, text, at, resource)
        }
        _ => return None,
    })
}

/// A container's JSON line, taken apart as the logging agent does.
#[derive(Debug, Default, PartialEq)]
pub struct Structured {
    pub severity: &'static str,
    /// `time` or `timestamp` (RFC 3339), or `timestampSeconds` + `timestampNanos`.
    pub timestamp: Option<String>,
    /// `logging.googleapis.com/labels`.
    pub labels: Map<String, Value>,
    /// Fields moved to the entry: `trace`, `spanId`, `traceSampled`, `sourceLocation`,
    /// `httpRequest`, `insertId`, `operation`.
    pub lifted: Map<String, Value>,
    /// What stays in `jsonPayload` (`message` included).
    pub payload: Map<String, Value>,
    /// Why the line may not mean what its writer meant (a `level` field, an unknown
    /// severity), for the once-per-service warning.
    pub doubt: Option<String>,
}

fn rfc3339_pattern() -> &'static regex::Regex {
    static PATTERN: OnceLock<regex::Regex> = OnceLock::new();
    PATTERN.get_or_init(|| {
        regex::Regex::new(
            r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$",
        )
        .expect("a valid pattern")
    })
}

impl Structured {
    /// The line as a structured entry, if it is a JSON object.
    pub fn parse(line: &str, resource: &Resource) -> Option<Structured> {
        if !line.trim_start().starts_with('{') {
            return None;
        }
        let Ok(Value::Object(mut payload)) = serde_json::from_str::<Value>(line) else {
            return None;
        };
        let mut structured = Structured {
            severity: "DEFAULT",
            ..Structured::default()
        };
        match payload.remove("severity") {
            Some(Value::String(name)) => match known_severity(&name) {
                Some(severity) => structured.severity = severity,
                None => {
                    structured.doubt = Some(format!(
                        "\"severity\": \"{name}\" is not a severity Cloud Logging knows ({}); the entry gets DEFAULT",
                        SEVERITIES[1..].join(", ")
                    ));
                }
            },
            Some(other) => {
                structured.doubt = Some(format!(
                    "\"severity\": {other} is not a string; the entry gets DEFAULT"
                ));
            }
            None => {
                if let Some(key) = ["level", "levelname", "loglevel", "log.level"]
                    .into_iter()
                    .find(|key| payload.contains_key(*key))
                {
                    structured.doubt = Some(format!(
                        "it has \"{key}\" but no \"severity\": Cloud Logging reads the severity from \"severity\" only, so the entry gets DEFAULT"
                    ));
                }
            }
        }
        for key in ["timestamp", "time"] {
            let taken = match payload.get(key) {
                Some(Value::String(time)) if rfc3339_pattern().is_match(time) => Some(time.clone()),
                _ => None,
            };
            if let Some(time) = taken {
                payload.remove(key);
                structured.timestamp.get_or_insert(time);
            }
        }
        if let (Some(Value::Number(seconds)), nanos) = (
            payload.get("timestampSeconds").cloned(),
            payload.get("timestampNanos").cloned(),
        ) {
            if let Some(seconds) = seconds.as_u64() {
                let nanos = nanos.and_then(|n| n.as_u64()).unwrap_or(0).min(999_999_999);
                let at = SystemTime::UNIX_EPOCH
                    + std::time::Duration::from_secs(seconds)
                    + std::time::Duration::from_nanos(nanos);
                payload.remove("timestampSeconds");
                payload.remove("timestampNanos");
                structured.timestamp.get_or_insert(rfc3339(at, true));
            }
        }
        if let Some(Value::Object(labels)) = payload.remove("logging.googleapis.com/labels") {
            structured.labels = labels
                .into_iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k, Value::String(s))),
                    _ => None,
                })
                .collect();
        }
        if let Some(Value::String(trace)) = payload.remove("logging.googleapis.com/trace") {
            // A bare trace id is completed with the project, as the agent does.
            let trace = match trace.starts_with("projects/") {
                true => trace,
                false => format!("projects/{}/traces/{trace}", resource.project_id),
            };
            structured.lifted.insert("trace".into(), trace.into());
        }
        let moved = [
            ("logging.googleapis.com/spanId", "spanId"),
            ("logging.googleapis.com/trace_sampled", "traceSampled"),
            ("logging.googleapis.com/sourceLocation", "sourceLocation"),
            ("logging.googleapis.com/insertId", "insertId"),
            ("logging.googleapis.com/operation", "operation"),
            ("httpRequest", "httpRequest"),
        ];
        for (from, to) in moved {
            if let Some(value) = payload.remove(from) {
                structured.lifted.insert(to.into(), value);
            }
        }
        structured.payload = payload;
        Some(structured)
    }
}

#[cfg(test)]
mod tests;
