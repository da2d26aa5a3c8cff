use super::*;
use std::time::Duration;

fn resource() -> Resource {
    Resource {
        project_id: "my-project".into(),
        location: "europe-west1".into(),
    }
}

/// 2025-12-01T14:00:00.123Z
fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(1_764_597_600, 123_000_000)
}

fn request(status: u16) -> RequestLog {
    RequestLog {
        received: at(),
        method: http::Method::POST,
        url: "http://hello.localhost:8080/api?x=1".into(),
        protocol: "HTTP/1.1",
        status,
        request_size: 321,
        response_size: 1234,
        latency: Duration::from_micros(12_500),
        user_agent: Some("curl/8.1".into()),
        referer: Some("http://example.com/".into()),
        remote_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        service: Some("hello".into()),
        revision: Some("hello-00001-abc".into()),
        instance: Some("0123abcd".into()),
        server_ip: Some("172.17.0.3:8080".parse().unwrap()),
        trace: Some(crate::events::TraceIds {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0x00f067aa0ba902b7,
        }),
    }
}

#[test]
fn a_request_is_cloud_runs_request_log_entry_with_every_field() {
    let entry = request_entry(&request(200), &resource());
    assert_eq!(
        entry,
        json!({
            "httpRequest": {
                "requestMethod": "POST",
                "requestUrl": "http://hello.localhost:8080/api?x=1",
                "requestSize": "321",
                "status": 200,
                "responseSize": "1234",
                "userAgent": "curl/8.1",
                "remoteIp": "127.0.0.1",
                "serverIp": "172.17.0.3:8080",
                "referer": "http://example.com/",
                "latency": "0.0125s",
                "protocol": "HTTP/1.1",
            },
            "resource": {
                "type": "cloud_run_revision",
                "labels": {
                    "service_name": "hello",
                    "revision_name": "hello-00001-abc",
                    "configuration_name": "hello",
                    "location": "europe-west1",
                    "project_id": "my-project",
                }
            },
            "labels": {"instanceId": "0123abcd"},
            "timestamp": "2025-12-01T14:00:00.123000000Z",
            "severity": "INFO",
            "logName": "projects/my-project/logs/run.googleapis.com%2Frequests",
            "trace": "projects/my-project/traces/4bf92f3577b34da6a3ce929d0e0e4736",
            "spanId": "00f067aa0ba902b7",
        })
    );
}

#[test]
fn request_severity_follows_the_status_and_front_end_answers_say_so() {
    assert_eq!(request_severity(200), "INFO");
    assert_eq!(request_severity(304), "INFO");
    assert_eq!(request_severity(404), "WARNING");
    assert_eq!(request_severity(429), "WARNING");
    assert_eq!(request_severity(503), "ERROR");
    let mut refused = request(429);
    refused.revision = None;
    refused.instance = None;
    refused.server_ip = None;
    let entry = request_entry(&refused, &resource());
    assert_eq!(entry["severity"], "WARNING");
    assert!(entry.get("labels").is_none());
    assert!(entry["httpRequest"].get("serverIp").is_none());
    assert!(entry["textPayload"]
        .as_str()
        .unwrap()
        .contains("never reached an instance"));
}

#[test]
fn durations_are_written_as_protobuf_json_does() {
    assert_eq!(duration_json(Duration::from_millis(12)), "0.012s");
    assert_eq!(duration_json(Duration::from_secs(3)), "3s");
    assert_eq!(duration_json(Duration::new(1, 5)), "1.000000005s");
}

#[test]
fn a_plain_line_is_text_with_default_severity_and_its_stream_names_the_log() {
    let entry = container_entry("s", "s-1", "abcd1234", true, "boom", at(), &resource());
    assert_eq!(entry["textPayload"], "boom");
    assert_eq!(entry["severity"], "DEFAULT");
    assert_eq!(
        entry["logName"],
        "projects/my-project/logs/run.googleapis.com%2Fstderr"
    );
    assert_eq!(entry["labels"]["instanceId"], "abcd1234");
    assert_eq!(entry["resource"]["labels"]["revision_name"], "s-1");
    let stdout = container_entry("s", "s-1", "abcd1234", false, "ok", at(), &resource());
    assert_eq!(
        stdout["logName"],
        "projects/my-project/logs/run.googleapis.com%2Fstdout"
    );
}

#[test]
fn a_json_line_has_its_special_fields_lifted_as_the_agent_does() {
    let line = json!({
        "severity": "warning",
        "message": "slow",
        "time": "2026-12-01T10:00:00.5Z",
        "logging.googleapis.com/trace": "abc123",
        "logging.googleapis.com/spanId": "000000000000004a",
        "logging.googleapis.com/trace_sampled": true,
        "logging.googleapis.com/labels": {"user": "u1", "n": 3},
        "logging.googleapis.com/sourceLocation": {"file": "main.go", "line": "42", "function": "main"},
        "httpRequest": {"requestMethod": "GET", "status": 200},
        "component": "db",
    })
    .to_string();
    let entry = container_entry("s", "s-1", "i", false, &line, at(), &resource());
    assert_eq!(entry["severity"], "WARNING");
    assert_eq!(entry["timestamp"], "2026-12-01T10:00:00.5Z");
    assert_eq!(entry["trace"], "projects/my-project/traces/abc123");
    assert_eq!(entry["spanId"], "000000000000004a");
    assert_eq!(entry["traceSampled"], true);
    assert_eq!(entry["labels"], json!({"instanceId": "i", "user": "u1"}));
    assert_eq!(entry["sourceLocation"]["line"], "42");
    assert_eq!(entry["httpRequest"]["status"], 200);
    assert_eq!(
        entry["jsonPayload"],
        json!({"message": "slow", "component": "db"})
    );
    assert!(entry.get("textPayload").is_none());
}

#[test]
fn timestamps_in_seconds_and_nanos_are_read_and_bad_times_stay_in_the_payload() {
    let line = r#"{"message":"m","timestampSeconds":1764597600,"timestampNanos":5}"#;
    let structured = Structured::parse(line, &resource()).unwrap();
    assert_eq!(
        structured.timestamp.as_deref(),
        Some("2025-12-01T14:00:00.000000005Z")
    );
    assert!(structured.payload.get("timestampSeconds").is_none());
    let line = r#"{"message":"m","time":"yesterday"}"#;
    let structured = Structured::parse(line, &resource()).unwrap();
    assert_eq!(structured.timestamp, None);
    assert_eq!(structured.payload["time"], "yesterday");
}

#[test]
fn lines_that_would_not_parse_as_meant_are_doubted() {
    let level = Structured::parse(r#"{"level":"info","msg":"x"}"#, &resource()).unwrap();
    assert_eq!(level.severity, "DEFAULT");
    assert!(level.doubt.unwrap().contains("\"level\""));
    let unknown = Structured::parse(r#"{"severity":"verbose"}"#, &resource()).unwrap();
    assert_eq!(unknown.severity, "DEFAULT");
    assert!(unknown.doubt.unwrap().contains("verbose"));
    let fine = Structured::parse(r#"{"severity":"WARN","message":"x"}"#, &resource()).unwrap();
    assert_eq!((fine.severity, fine.doubt), ("WARNING", None));
    assert!(Structured::parse("not json {", &resource()).is_none());
    assert!(Structured::parse("[1,2]", &resource()).is_none());
}

#[test]
fn system_lines_and_warnings_are_the_system_log() {
    let event = Event::system(
        SystemKind::OutOfMemory,
        "s",
        "s-1",
        Some("i"),
        "Memory limit of 512 MiB exceeded with 530 MiB used.".into(),
    );
    let entry = event_entry(&event, at(), &resource()).unwrap();
    assert_eq!(entry["severity"], "ERROR");
    assert_eq!(
        entry["logName"],
        "projects/my-project/logs/run.googleapis.com%2Fvarlog%2Fsystem"
    );
    assert_eq!(entry["labels"]["instanceId"], "i");
    let warning = event_entry(&Event::warning("careful"), at(), &resource()).unwrap();
    assert_eq!(warning["severity"], "WARNING");
    assert_eq!(warning["textPayload"], "careful");
    assert!(event_entry(
        &Event::PullingImage {
            image: "x".into(),
            platform: "linux/amd64".into()
        },
        at(),
        &resource()
    )
    .is_none());
}
