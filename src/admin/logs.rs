//! `GET /emulate/v1/logs`: the recent log as Cloud Logging entries, one JSON object per line
//! (`application/x-ndjson`), filtered by service, revision and severity, and with
//! `follow=true` the live log after them until the client goes away or the emulator stops.
//! `emulate logs` reads it.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::broadcast;

use super::AdminBody;
use crate::logs::buffer::{Filter, LogBuffer};
use crate::logs::entry;

pub const PATH: &str = "/emulate/v1/logs";

/// How many entries a read without `limit` gets (as `gcloud logging read`'s default page).
pub const DEFAULT_LIMIT: usize = 100;

/// What a reader asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    pub filter: Filter,
    pub limit: usize,
    pub follow: bool,
}

/// Reads the query string; a bad value names its parameter.
pub fn parse_query(query: &str) -> Result<Query, String> {
    let mut parsed = Query {
        filter: Filter::default(),
        limit: DEFAULT_LIMIT,
        follow: false,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key {
            "service" if !value.is_empty() => parsed.filter.service = Some(value),
            "revision" if !value.is_empty() => parsed.filter.revision = Some(value),
            "severity" => {
                let known = entry::known_severity(&value).ok_or_else(|| {
                    format!(
                        "severity: '{value}' is not one of {}",
                        entry::SEVERITIES.join(", ")
                    )
                })?;
                parsed.filter.min_severity = entry::severity_rank(known);
            }
            "limit" => {
                parsed.limit = value
                    .parse()
                    .map_err(|_| format!("limit: '{value}' is not a whole number"))?;
            }
            "follow" => {
                parsed.follow = match value.as_str() {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("follow: '{value}' is not true or false")),
                }
            }
            "service" | "revision" => {}
            other => return Err(format!("unknown parameter '{other}'")),
        }
    }
    Ok(parsed)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn line(entry: &serde_json::Value) -> Bytes {
    let mut text = entry.to_string();
    text.push('\n');
    Bytes::from(text)
}

pub async fn handle(buffer: &LogBuffer, request: Request<Incoming>) -> Response<AdminBody> {
    let query = match parse_query(request.uri().query().unwrap_or("")) {
        Ok(query) => query,
        Err(message) => {
            return super::status(StatusCode::BAD_REQUEST, "BadRequest", message)
                .map(BodyExt::boxed)
        }
    };
    let (recent, live) = buffer.recent(&query.filter, query.limit);
    let mut first = Vec::new();
    for (_, entry) in &recent {
        first.extend_from_slice(&line(entry));
    }
    let first =
        futures_util::stream::once(
            async move { Ok::<_, Infallible>(Frame::data(Bytes::from(first))) },
        );
    let body = match query.follow {
        false => BodyExt::boxed(StreamBody::new(first)),
        true => BodyExt::boxed(StreamBody::new(first.chain(live_lines(
            buffer.clone(),
            live,
            query.filter,
        )))),
    };
    let mut response = Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// The entries published from now on that pass `filter`, until the emulator stops.
fn live_lines(
    buffer: LogBuffer,
    live: crate::logs::buffer::Live,
    filter: Filter,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    let closed = buffer.closed();
    futures_util::stream::unfold(
        (buffer, live, filter, closed),
        |(buffer, mut live, filter, closed)| async move {
            loop {
                let kept = tokio::select! {
                    kept = live.recv() => kept,
                    _ = closed.cancelled() => return None,
                };
                let entry = match kept {
                    Ok(kept) => match kept.entry(buffer.resource()) {
                        Some(entry) if filter.passes(&kept, &entry) => entry,
                        _ => continue,
                    },
                    Err(broadcast::error::RecvError::Lagged(missed)) => serde_json::json!({
                        "severity": "WARNING",
                        "textPayload": format!("{missed} entries were skipped: this reader fell behind"),
                    }),
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                let frame = Frame::data(line(&entry));
                return Some((Ok(frame), (buffer, live, filter, closed)));
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_service_revision_severity_limit_and_follow() {
        let query = parse_query(
            "service=hello&revision=hello-00002-xyz&severity=warning&limit=5&follow=true",
        )
        .unwrap();
        assert_eq!(query.filter.service.as_deref(), Some("hello"));
        assert_eq!(query.filter.revision.as_deref(), Some("hello-00002-xyz"));
        assert_eq!(query.filter.min_severity, entry::severity_rank("WARNING"));
        assert_eq!((query.limit, query.follow), (5, true));
        assert_eq!(parse_query("").unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(
            parse_query("service=a%2Db")
                .unwrap()
                .filter
                .service
                .as_deref(),
            Some("a-b")
        );
    }

    #[test]
    fn a_bad_value_names_its_parameter() {
        assert!(parse_query("severity=loud")
            .unwrap_err()
            .starts_with("severity:"));
        assert!(parse_query("limit=-1").unwrap_err().starts_with("limit:"));
        assert!(parse_query("follow=maybe")
            .unwrap_err()
            .starts_with("follow:"));
        assert!(parse_query("colour=red").unwrap_err().contains("colour"));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%é%41"), "%éA");
    }
}
