//! The dashboard: a page on the admin address (`GET /`) showing services, revisions with their
//! traffic split, instances, cold starts, the last requests and the live log. Its assets are
//! compiled into the binary (plain HTML, CSS and JS; no CDN, no build step). It reads
//! `GET /emulate/v1/state` (a JSON snapshot) and follows `GET /emulate/v1/events`
//! (server-sent events: the state whenever it changes, at most twice a second, and every log
//! entry as Cloud Logging's JSON), so it is live within a second and costs nothing while no
//! page is open. The browser authenticates with the gate's read-only cookie (`gate.rs`).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::{AdminBody, Gate};
use crate::control::knative;
use crate::control::platform::Platform;
use crate::logs::buffer::{Filter, LogBuffer};

pub const PAGE: &str = "/";
pub const STATE: &str = "/emulate/v1/state";
pub const EVENTS: &str = "/emulate/v1/events";
const SCRIPT: &str = "/dashboard/app.js";
const STYLE: &str = "/dashboard/app.css";

const HTML: &str = include_str!("dashboard/index.html");
const JS: &str = include_str!("dashboard/app.js");
const CSS: &str = include_str!("dashboard/app.css");

/// How many recent log entries a page gets when it connects.
pub const RECENT: usize = 300;
/// How often an open page's state is compared with what it was last sent.
const STATE_EVERY: Duration = Duration::from_millis(500);
/// A comment line this often keeps proxies and the browser from timing the stream out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Whether this module answers `path`.
pub fn serves(path: &str) -> bool {
    matches!(path, PAGE | STATE | EVENTS | SCRIPT | STYLE)
}

pub async fn handle<B>(
    gate: &Gate,
    platform: &Platform,
    logs: &LogBuffer,
    request: Request<B>,
) -> Response<AdminBody> {
    match request.uri().path() {
        PAGE if super::gate::dashboard_token_param(request.uri().query()).is_some() => {
            // The gate checked the token: trade it for the cookie, and drop it from the
            // address bar (and from what a reload or a bookmark would send).
            let mut response = Response::new(super::full(""));
            *response.status_mut() = StatusCode::SEE_OTHER;
            let headers = response.headers_mut();
            headers.insert(header::LOCATION, HeaderValue::from_static("/"));
            if let Ok(cookie) = HeaderValue::from_str(&gate.dashboard_cookie()) {
                headers.insert(header::SET_COOKIE, cookie);
            }
            secure(headers);
            response
        }
        PAGE => asset(HTML, "text/html; charset=utf-8"),
        SCRIPT => asset(JS, "text/javascript; charset=utf-8"),
        STYLE => asset(CSS, "text/css; charset=utf-8"),
        STATE => {
            let mut response = Response::new(super::full(state(platform, logs).to_string()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            secure(response.headers_mut());
            response
        }
        _ => events(platform.clone(), logs.clone()),
    }
}

/// Headers every dashboard answer carries: nothing cached, no page of another origin may
/// frame it, nothing but its own assets loads, no Referer leaves it.
fn secure(headers: &mut http::HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
}

fn asset(body: &'static str, content_type: &'static str) -> Response<AdminBody> {
    let mut response = Response::new(super::full(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(response.headers_mut());
    response
}

/// The condition `kind`'s status: true, false, or null while unknown.
fn condition(conditions: &[knative::Condition], kind: &str) -> Value {
    match conditions.iter().find(|c| c.kind == kind) {
        Some(c) if c.status == "True" => json!(true),
        Some(c) if c.status == "False" => json!(false),
        _ => Value::Null,
    }
}

/// What the page draws: every service with its URL, traffic and revisions (readiness, share,
/// tags, instances, cold starts).
pub fn state(platform: &Platform, logs: &LogBuffer) -> Value {
    let services: Vec<Value> = platform
        .list_services()
        .into_iter()
        .map(|service| {
            let name = service.metadata.name.clone().unwrap_or_default();
            let status = service.status.unwrap_or_default();
            let traffic: Vec<Value> = status
                .traffic
                .iter()
                .map(|t| {
                    json!({
                        "revision": t.revision_name,
                        "percent": t.percent.unwrap_or(0),
                        "tag": t.tag,
                        "url": t.url,
                        "latest": t.latest_revision.unwrap_or(false),
                    })
                })
                .collect();
            let revisions: Vec<Value> = platform
                .list_revisions(Some(&name))
                .into_iter()
                .map(|revision| {
                    let revision_name = revision.metadata.name.clone().unwrap_or_default();
                    let status = revision.status.unwrap_or_default();
                    let ready = status.conditions.iter().find(|c| c.kind == "Ready");
                    let tags: Vec<&str> = service_tags(&traffic, &revision_name);
                    let pool = status.instances.unwrap_or(Value::Null);
                    json!({
                        "name": revision_name,
                        "created": revision.metadata.creation_timestamp,
                        "image": revision.spec.containers.first().map(|c| c.image.clone()),
                        "ready": condition(&status.conditions, "Ready"),
                        "message": ready.and_then(|c| c.message.clone()),
                        "percent": pool["trafficPercent"],
                        "tags": tags,
                        "instances": pool["instances"],
                        "waiting": pool["waiting"],
                        "requests": pool["requests"],
                        "coldStarts": pool["coldStarts"],
                        "lastColdStartMs": pool["lastColdStartMs"],
                        "averageColdStartMs": pool["averageColdStartMs"],
                        "lastStartupMs": pool["lastStartupMs"],
                        "rejected": pool["rejected"],
                        "crashes": pool["crashes"],
                    })
                })
                .collect();
            json!({
                "name": name,
                "url": status.url,
                "ready": condition(&status.conditions, "Ready"),
                "latestReady": status.latest_ready_revision_name,
                "traffic": traffic,
                "revisions": revisions,
            })
        })
        .collect();
    let resource = logs.resource();
    json!({
        "project": resource.project_id,
        "region": resource.location,
        "port": platform.port(),
        "services": services,
    })
}

/// The tags the service's traffic gives `revision`.
fn service_tags<'a>(traffic: &'a [Value], revision: &str) -> Vec<&'a str> {
    traffic
        .iter()
        .filter(|t| t["revision"] == revision)
        .filter_map(|t| t["tag"].as_str())
        .collect()
}

fn sse(event: &str, data: &str) -> Bytes {
    // `data` is one line of JSON (serde_json never writes a raw newline).
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// `GET /emulate/v1/events`: the state, the recent log, then what happens, until the client
/// goes away or the emulator stops.
fn events(platform: Platform, logs: LogBuffer) -> Response<AdminBody> {
    let (recent, live) = logs.recent(&Filter::default(), RECENT);
    let first_state = state(&platform, &logs).to_string();
    let mut first = Vec::new();
    first.extend_from_slice(&sse("state", &first_state));
    for (_, entry) in &recent {
        first.extend_from_slice(&sse("log", &entry.to_string()));
    }
    let first =
        futures_util::stream::once(
            async move { Ok::<_, Infallible>(Frame::data(Bytes::from(first))) },
        );
    let closed = logs.closed();
    let follow = futures_util::stream::unfold(
        Follow {
            platform,
            logs,
            live,
            last_state: first_state,
            closed,
            state_tick: tokio::time::interval(STATE_EVERY),
            keep_alive: tokio::time::interval(KEEP_ALIVE),
        },
        |mut follow| async move {
            let bytes = follow.next().await?;
            Some((Ok(Frame::data(bytes)), follow))
        },
    );
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(first.chain(follow))));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    secure(headers);
    response
}

/// An open page's stream, after what it got at first.
struct Follow {
    platform: Platform,
    logs: LogBuffer,
    live: crate::logs::buffer::Live,
    last_state: String,
    closed: tokio_util::sync::CancellationToken,
    state_tick: tokio::time::Interval,
    keep_alive: tokio::time::Interval,
}

impl Follow {
    /// The next bytes to send; None when the emulator stops.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            tokio::select! {
                kept = self.live.recv() => match kept {
                    Ok(kept) => {
                        if let Some(entry) = kept.entry(self.logs.resource()) {
                            return Some(sse("log", &entry.to_string()));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let note = json!({
                            "severity": "WARNING",
                            "textPayload": format!("{missed} entries were skipped: this page fell behind"),
                        });
                        return Some(sse("log", &note.to_string()));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.state_tick.tick() => {
                    let now = state(&self.platform, &self.logs).to_string();
                    if now != self.last_state {
                        self.last_state = now;
                        return Some(sse("state", &self.last_state));
                    }
                }
                _ = self.keep_alive.tick() => return Some(Bytes::from_static(b": keep-alive\n\n")),
                _ = self.closed.cancelled() => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_sent_event_is_one_event_line_one_data_line_and_a_blank_line() {
        let data = json!({"a": "line\nbreak"}).to_string();
        let bytes = sse("log", &data);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            "event: log\ndata: {\"a\":\"line\\nbreak\"}\n\n"
        );
    }

    #[test]
    fn tags_are_those_the_traffic_gives_the_revision() {
        let traffic = vec![
            json!({"revision": "s-1", "percent": 100, "tag": null}),
            json!({"revision": "s-2", "percent": 0, "tag": "blue"}),
            json!({"revision": "s-2", "percent": 0, "tag": "green"}),
        ];
        assert_eq!(service_tags(&traffic, "s-2"), ["blue", "green"]);
        assert!(service_tags(&traffic, "s-1").is_empty());
    }

    #[test]
    fn the_assets_are_embedded_and_load_nothing_from_elsewhere() {
        assert!(HTML.contains(SCRIPT) && HTML.contains(STYLE));
        for asset in [HTML, JS, CSS] {
            assert!(!asset.contains("http://") && !asset.contains("https://"));
        }
        assert!(serves("/") && serves(EVENTS) && serves(STATE) && !serves("/metrics"));
    }
}
