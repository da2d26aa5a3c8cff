//! The request log: what the proxy notes about a request (when it arrived, its method, URL and
//! sizes, where it went, its trace) and publishes as an `Event::Request` when its response has
//! been sent, or the client went away.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use http::{header, HeaderMap, Method, Request, Response, Version};
use tokio::time::Instant;

use crate::events::{Event, Events, RequestLog, TraceIds};
use crate::serve::proxy::headers::{self, Trace};
use crate::serve::router::{self, ServedBy};

/// What the proxy learns while it handles a request, for its log line.
#[derive(Debug, Default)]
pub struct Seen {
    /// The instance that answered (`None`: the proxy answered itself).
    pub served_by: Option<ServedBy>,
    /// The trace forwarded to the instance.
    pub trace: Option<Trace>,
}

/// A request as it arrived, until its response is known.
pub struct Arrival {
    received: SystemTime,
    started: Instant,
    method: Method,
    /// `http://HOST/PATH?QUERY`.
    url: String,
    /// Where the host ends in `url`.
    host_end: usize,
    protocol: &'static str,
    request_size: u64,
    user_agent: Option<String>,
    referer: Option<String>,
    remote_ip: IpAddr,
    /// The trace the client sent, for a request never forwarded.
    client_trace: Option<Trace>,
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The bytes of a header block as HTTP/1 writes it (`name: value\r\n` each).
fn headers_size(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().len() + value.len() + 4) as u64)
        .sum()
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

const SCHEME: &str = "http://";

impl Arrival {
    pub fn of<B>(request: &Request<B>, client: SocketAddr) -> Arrival {
        let headers = request.headers();
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        // The one allocation of the record's text: the URL.
        let mut url = String::with_capacity(SCHEME.len() + host.len() + path.len());
        url.push_str(SCHEME);
        url.push_str(host);
        let host_end = url.len();
        url.push_str(path);
        let declared_body = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let method = request.method().clone();
        // The request line (`METHOD PATH HTTP/1.1\r\n`), the headers, the blank line.
        let head = (method.as_str().len() + path.len() + 12) as u64 + headers_size(headers) + 2;
        Arrival {
            received: SystemTime::now(),
            started: Instant::now(),
            url,
            host_end,
            method,
            protocol: protocol(request.version()),
            request_size: head + declared_body,
            user_agent: header_text(headers, header::USER_AGENT),
            referer: header_text(headers, header::REFERER),
            remote_ip: client.ip(),
            client_trace: headers::client_trace(headers),
        }
    }

    /// The log line's data, once the response head is known; published by the returned
    /// [`PendingLog`] when the body has been sent.
    pub fn answered<B>(self, seen: Seen, response: &Response<B>, events: Events) -> PendingLog {
        let (service, revision, instance, server) = match seen.served_by {
            Some(ServedBy {
                service,
                revision,
                instance,
                server,
            }) => (Some(service), Some(revision), Some(instance), Some(server)),
            None => {
                let host = self.url[SCHEME.len()..self.host_end].to_ascii_lowercase();
                let service = router::service_of_host(&host).map(Arc::from);
                (service, None, None, None)
            }
        };
        let trace = seen.trace.or(self.client_trace).map(|trace| TraceIds {
            trace_id: trace.trace_id,
            span_id: trace.span_id,
        });
        // The status line (`HTTP/1.1 200 OK\r\n`), the headers, the blank line.
        let head = 17 + headers_size(response.headers()) + 2;
        PendingLog {
            events,
            started: self.started,
            head,
            body: 0,
            record: Some(RequestLog {
                received: self.received,
                method: self.method,
                url: self.url,
                protocol: self.protocol,
                status: response.status().as_u16(),
                request_size: self.request_size,
                response_size: 0,
                latency: Default::default(),
                user_agent: self.user_agent,
                referer: self.referer,
                remote_ip: self.remote_ip,
                service,
                revision,
                instance,
                server_ip: server,
                trace,
            }),
        }
    }
}

/// A request whose response is being sent: counts the body's bytes and publishes the log
/// line when dropped (the body ended, or the client went away).
pub struct PendingLog {
    events: Events,
    started: Instant,
    head: u64,
    body: u64,
    record: Option<RequestLog>,
}

impl PendingLog {
    pub fn sent(&mut self, bytes: usize) {
        self.body += bytes as u64;
    }
}

impl Drop for PendingLog {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.latency = self.started.elapsed();
            record.response_size = self.head + self.body;
            self.events.publish(Event::Request(Arc::new(record)));
        }
    }
}
