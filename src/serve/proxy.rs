//! The front end: a hyper server that takes HTTP/1.1 and HTTP/2 from clients and forwards each
//! request to an instance as Cloud Run's front end does, streaming bodies both ways, passing
//! protocol upgrades (WebSocket) through, and enforcing the request timeout and body limit.

pub mod body;
pub mod connection;
pub mod headers;
pub mod request_log;
pub mod upstream;

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cloudrun;
use crate::events::Events;
use crate::instances::pool::AcquireError;
use crate::instances::throttle::RequestName;
use crate::serve::invoker::{self, Denied};
use crate::serve::router::{Backend, Route, RouteError, Slot};
pub use body::ProxyBody;
use body::{BodyTooLarge, CappedBody, ClientBodyError};
use connection::{AcceptBackoff, Activity, LimitNotice, Tracked};
use request_log::{Arrival, PendingLog, Seen};
use upstream::SendError;

/// Settings of the front end itself (per-revision settings travel in each
/// [`Route`](crate::serve::router::Route)).
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// HTTP/1 request bodies over this get 413.
    pub max_http1_body: u64,
    /// A client that has not sent its whole request head by then (from accept, or from its
    /// previous response) is disconnected.
    pub header_read_timeout: Duration,
    /// A keep-alive connection (HTTP/1 or HTTP/2) with no request in progress for this long
    /// is closed.
    pub idle_timeout: Duration,
    /// Connections open at once; past it, new ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests and tunnels.
    pub drain_timeout: Duration,
    /// Where each request's log line is published when its response ends (`None`: no
    /// request log, and none of its cost).
    pub request_log: Option<Events>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_http1_body: cloudrun::MAX_HTTP1_REQUEST_BODY,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            max_connections: connection::default_max_connections(),
            drain_timeout: Duration::from_secs(10),
            request_log: None,
        }
    }
}

type RequestBody = CappedBody;

/// How long the rest of a refused (too large) request body is read before the connection is
/// closed.
const DRAIN_REFUSED_BODY: Duration = Duration::from_secs(2);

pub struct Proxy<B> {
    backend: Arc<B>,
    config: ProxyConfig,
    http1: Client<HttpConnector, RequestBody>,
    http2: Client<HttpConnector, RequestBody>,
    /// Upgraded connections (WebSockets) outlive their request; shutdown waits for them too.
    tunnels: TaskTracker,
}

/// The next connection on any of the listeners (the host's address and the one containers
/// reach), taken in turn so a busy one cannot starve the others.
async fn accept_any(listeners: &[TcpListener]) -> std::io::Result<(TcpStream, SocketAddr)> {
    let start = rand::random_range(0..listeners.len().max(1));
    std::future::poll_fn(|cx| {
        for i in 0..listeners.len() {
            let listener = &listeners[(start + i) % listeners.len()];
            if let std::task::Poll::Ready(accepted) = listener.poll_accept(cx) {
                return std::task::Poll::Ready(accepted);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// A client connection, as each of its requests needs it.
struct Peer {
    addr: SocketAddr,
    /// The forwarding headers for its requests, made once.
    forwarding: headers::Forwarding,
    /// Its instance connection, while no request of its own uses it.
    upstream: Arc<upstream::Pinned>,
}

/// How client connections are served: HTTP/1 straight with hyper's HTTP/1 server (the common
/// case, recognised by its first bytes), anything else (HTTP/2 prior knowledge) by hyper-util's
/// protocol-detecting server.
struct Builders {
    http1: hyper::server::conn::http1::Builder,
    auto: auto::Builder<TokioExecutor>,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Builders {
    fn new(header_read_timeout: Duration) -> Builders {
        // No header-read timer here: the connection's activity watcher cuts off a client that
        // never finishes its request head (see `serve`).
        let http1 = hyper::server::conn::http1::Builder::new();
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        auto.http2().timer(TokioTimer::new());
        Builders { http1, auto }
    }

    /// Serves one client connection until it closes; once `shutdown` is cancelled, the
    /// request in progress finishes and the connection closes (HTTP/2: GOAWAY).
    async fn serve<S, B>(
        &self,
        stream: TcpStream,
        service: S,
        shutdown: &CancellationToken,
    ) -> Result<(), body::BoxError>
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<body::BoxError>,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<body::BoxError>,
    {
        let mut first = [0u8; H2_PREFACE.len()];
        let http1 = match stream.peek(&mut first).await {
            Ok(n) => n > 0 && first[..n] != H2_PREFACE[..n],
            Err(_) => false,
        };
        if http1 {
            let connection = self
                .http1
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let stop = |c: Pin<&mut _>| {
                hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(c)
            };
            until_drained(connection, shutdown, stop)
                .await
                .map_err(Into::into)
        } else {
            // The HTTP/2 preface (or a part of it, or nothing yet): hyper-util reads and
            // decides.
            let connection = self
                .auto
                .serve_connection_with_upgrades(TokioIo::new(stream), service);
            let stop = |c: Pin<&mut _>| auto::UpgradeableConnection::graceful_shutdown(c);
            until_drained(connection, shutdown, stop).await
        }
    }
}

/// Runs a connection to its end; once `shutdown` is cancelled, `stop` asks it to finish what
/// is in progress and close.
async fn until_drained<C: Future>(
    connection: C,
    shutdown: &CancellationToken,
    stop: impl FnOnce(Pin<&mut C>),
) -> C::Output {
    tokio::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => return ended,
        _ = shutdown.cancelled() => {}
    }
    stop(connection.as_mut());
    connection.await
}

/// How serving ended.
#[derive(Debug)]
pub struct DrainReport {
    /// False when the drain timeout cut off requests still in flight.
    pub drained: bool,
}

impl<B: Backend> Proxy<B> {
    pub fn new(backend: Arc<B>, config: ProxyConfig) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let http1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
        Arc::new(Proxy {
            backend,
            config,
            http1,
            http2,
            tunnels: TaskTracker::new(),
        })
    }

    /// Accepts connections until `shutdown` is cancelled, then stops accepting and drains:
    /// requests in flight finish (bounded by the drain timeout).
    pub async fn serve(
        self: Arc<Self>,
        listeners: Vec<TcpListener>,
        shutdown: CancellationToken,
    ) -> DrainReport {
        let builders = Arc::new(Builders::new(self.config.header_read_timeout));
        let connections = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let mut limit_notice = LimitNotice::default();
        let mut backoff = AcceptBackoff::default();
        loop {
            // A free connection slot first: at the cap, new connections wait in the backlog.
            let permit = match limit.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    if limit_notice.due(Instant::now()) {
                        tracing::warn!(
                            "{} client connections are open, the limit; new connections wait until one closes",
                            self.config.max_connections
                        );
                    }
                    tokio::select! {
                        permit = limit.clone().acquire_owned() => {
                            permit.expect("the connection limit is never closed")
                        }
                        _ = shutdown.cancelled() => break,
                    }
                }
            };
            let (stream, peer) = tokio::select! {
                accepted = accept_any(&listeners) => match accepted {
                    Ok(accepted) => {
                        backoff.succeeded();
                        accepted
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning,
                        // and say so once a minute at most.
                        let (log, wait) = backoff.failed(Instant::now());
                        if log {
                            tracing::warn!("accept failed: {e}; retrying with back-off (up to 1 s; further failures within a minute are not logged)");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = shutdown.cancelled() => break,
                        }
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            // The watcher is the HTTP/1 header-read timeout too (hyper's own would arm a timer
            // for every request): a connection gets no complete request head within the
            // header-read timeout of its accept, or within the shorter of the two timeouts of
            // its previous response, and it is closed.
            let activity = Activity::new(
                self.config.header_read_timeout,
                self.config
                    .idle_timeout
                    .min(self.config.header_read_timeout),
            );
            let proxy = self.clone();
            let client = Arc::new(Peer {
                addr: peer,
                forwarding: headers::Forwarding::new(peer.ip(), "http"),
                upstream: Arc::default(),
            });
            let service = hyper::service::service_fn({
                let activity = activity.clone();
                move |request| {
                    let proxy = proxy.clone();
                    let client = client.clone();
                    let busy = activity.begin();
                    async move {
                        let (response, log) = proxy.handle_logged(request, &client).await;
                        Ok::<_, Infallible>(response.map(|inner| Tracked { inner, busy, log }))
                    }
                }
            });
            let builders = builders.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                // Held for the connection's life: its slot under the connection cap.
                let _permit = permit;
                tokio::select! {
                    ended = builders.serve(stream, service, &shutdown) => {
                        if let Err(e) = ended {
                            tracing::debug!("connection from {peer} ended: {e}");
                        }
                    }
                    // No request in progress for too long: dropping the connection closes it.
                    _ = activity.idle() => {
                        tracing::debug!("closed an idle connection from {peer}");
                    }
                }
            });
        }
        drop(listeners);
        connections.close();
        self.tunnels.close();
        // Each connection saw `shutdown` too: it finishes the request in progress and closes.
        let drain = async {
            connections.wait().await;
            self.tunnels.wait().await;
        };
        let drained = tokio::time::timeout(self.config.drain_timeout, drain)
            .await
            .is_ok();
        DrainReport { drained }
    }

    /// Handles a request, noting what its log line needs when there is a request log.
    async fn handle_logged(
        &self,
        request: Request<Incoming>,
        client: &Peer,
    ) -> (Response<ProxyBody>, Option<PendingLog>) {
        let Some(events) = &self.config.request_log else {
            return (self.handle(request, client, None).await, None);
        };
        let arrival = Arrival::of(&request, client.addr);
        let mut seen = Seen::default();
        let response = self.handle(request, client, Some(&mut seen)).await;
        let log = arrival.answered(seen, &response, events.clone());
        (response, Some(log))
    }

    async fn handle(
        &self,
        mut request: Request<Incoming>,
        client: &Peer,
        mut seen: Option<&mut Seen>,
    ) -> Response<ProxyBody> {
        let client_http1 = request.version() < Version::HTTP_2;
        if client_http1
            && content_length(request.headers()).is_some_and(|n| n > self.config.max_http1_body)
        {
            // Refused unread; the body is drained so the client gets to read the 413.
            tokio::spawn(body::drain(request.into_body(), DRAIN_REFUSED_BODY));
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                cloudrun::REQUEST_TOO_LARGE,
                false,
            );
        }
        // One authority, checked, routes the request and is the Host the app sees.
        match headers::request_authority(request.version(), request.uri(), request.headers()) {
            // Most requests: the one Host header already is the authority.
            Ok(authority) if request.headers().get(header::HOST) == authority.as_ref() => {}
            Ok(authority) => {
                let headers = request.headers_mut();
                headers.remove(header::HOST);
                if let Some(authority) = authority {
                    headers.insert(header::HOST, authority);
                }
            }
            Err(e) => {
                tracing::debug!("refused a request from {}: {e}", client.addr);
                let close = client_http1;
                return refusal(StatusCode::BAD_REQUEST, cloudrun::MALFORMED_REQUEST, close);
            }
        }
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        let route = match self.backend.route(host, request.headers()).await {
            Ok(route) => route,
            Err(RouteError::Denied(denied)) => {
                return denial(denied, request.uri().path());
            }
            Err(error) => {
                let (status, text) = not_routed(&error);
                return refusal(status, text, false);
            }
        };
        route.slot.note_request(RequestName::Seen {
            method: request.method().clone(),
            target: request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        });
        // One timer bounds the whole exchange: waiting for the response head, then streaming
        // its body (and a tunnel's life for upgrades).
        let deadline = Instant::now() + route.request_timeout;
        let mut timer = Box::pin(tokio::time::sleep_until(deadline));

        let upgrade = client_http1 && !route.http2 && wants_upgrade(request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        // An HTTP/2 client's :authority is the Host an HTTP/1 app gets (set above).
        let (mut parts, body) = request.into_parts();
        headers::remove_client_only(&mut parts.headers, upgrade, route.http2);
        if let Some(name) = &route.token_header {
            if let Some(value) = parts.headers.get(name) {
                let stripped = invoker::without_signature(value);
                parts.headers.insert(name.clone(), stripped);
            }
        }
        headers::set_forwarding(&mut parts.headers, &client.forwarding);
        let trace = headers::set_trace(&mut parts.headers, &mut rand::rng());
        if let Some(seen) = seen.as_deref_mut() {
            seen.trace = Some(trace);
        }
        let target = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.version = if route.http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        // Cloud Run caps HTTP/1 request bodies only.
        let limit = if client_http1 {
            self.config.max_http1_body
        } else {
            u64::MAX
        };
        let (body, overflow) = CappedBody::new(body, limit);

        let forwarded = Request::from_parts(parts, body);
        // An HTTP/1 client's requests come one at a time: they share one instance connection,
        // kept with the client connection. Upgrades (the connection becomes a tunnel) and
        // HTTP/2 (many requests at once) go through the shared pools.
        let pinned = client_http1 && !route.http2 && !upgrade;
        let sent = tokio::select! {
            sent = self.forward(client, &route, target, forwarded, pinned) => sent,
            _ = &mut timer => {
                return refusal(StatusCode::GATEWAY_TIMEOUT, cloudrun::UPSTREAM_REQUEST_TIMEOUT, client_http1);
            }
        };
        let (mut response, checkout) = match sent {
            Ok(sent) => sent,
            Err(e) if caused_by::<BodyTooLarge>(&*e.error) => {
                let rest = overflow.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(rest) = rest {
                    tokio::spawn(body::drain(rest, DRAIN_REFUSED_BODY));
                }
                return refusal(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    cloudrun::REQUEST_TOO_LARGE,
                    false,
                );
            }
            // The client's body broke off or was malformed: its fault, not the instance's,
            // which must not be taken out of service (nor a new one started) for it.
            Err(e) if caused_by::<ClientBodyError>(&*e.error) => {
                tracing::debug!("the client's request body failed: {:?}", e.error);
                return refusal(StatusCode::BAD_REQUEST, cloudrun::MALFORMED_REQUEST, true);
            }
            Err(e) => {
                tracing::debug!("forwarding to {} failed: {:?}", route.authority, e.error);
                if e.connect
                    || caused_by::<std::io::Error>(&*e.error)
                    || caused_by::<hyper::Error>(&*e.error)
                {
                    route.slot.unreachable();
                }
                return refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    cloudrun::MALFORMED_OR_UNREACHABLE,
                    false,
                );
            }
        };
        if let Some(seen) = seen {
            seen.served_by = route.slot.served_by();
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    cloudrun::MALFORMED_OR_UNREACHABLE,
                    false,
                );
            };
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            self.tunnels.spawn(tunnel(
                client_upgrade,
                upstream_upgrade,
                deadline,
                route.slot,
            ));
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, ProxyBody::empty());
        }
        let (mut parts, body) = response.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers, false, false);
        Response::from_parts(
            parts,
            ProxyBody::Upstream {
                inner: body,
                deadline: timer,
                _slot: route.slot,
                _connection: checkout,
            },
        )
    }
}

impl<B: Backend> Proxy<B> {
    /// Sends a request to its instance: its response head and, when `pinned`, the client
    /// connection's instance connection, lent for the response's life.
    async fn forward(
        &self,
        client: &Peer,
        route: &Route,
        target: PathAndQuery,
        mut request: Request<CappedBody>,
        pinned: bool,
    ) -> Result<(Response<Incoming>, Option<upstream::Checkout>), SendError> {
        if pinned {
            *request.uri_mut() = Uri::from(target);
            let (response, checkout) = client.upstream.send(&route.authority, request).await?;
            return Ok((response, Some(checkout)));
        }
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(route.authority.clone());
        uri.path_and_query = Some(target);
        *request.uri_mut() =
            Uri::from_parts(uri).expect("scheme, authority and path make a valid URI");
        let pool = if route.http2 {
            &self.http2
        } else {
            &self.http1
        };
        match pool.request(request).await {
            Ok(response) => Ok((response, None)),
            Err(e) => Err(SendError {
                connect: e.is_connect(),
                error: e.into(),
            }),
        }
    }
}

/// Copies bytes both ways between an upgraded client and instance connection until either
/// side closes or the request timeout expires.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    deadline: Instant,
    // Held for the tunnel's life: the instance is busy until the WebSocket closes.
    _slot: Box<dyn Slot>,
) {
    let (client, upstream) = tokio::join!(client, upstream);
    let (Ok(client), Ok(upstream)) = (client, upstream) else {
        return;
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    let _ = tokio::time::timeout_at(
        deadline,
        tokio::io::copy_bidirectional(&mut client, &mut upstream),
    )
    .await;
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Cloud Run's answer to a request that reached no instance: status and text.
fn not_routed(error: &RouteError) -> (StatusCode, Cow<'static, str>) {
    match error {
        RouteError::NoService { .. } | RouteError::NoTag(_) => (
            StatusCode::NOT_FOUND,
            format!("404 page not found: {error}\n").into(),
        ),
        RouteError::Denied(_) => (StatusCode::FORBIDDEN, "Forbidden\n".into()),
        RouteError::NoTraffic | RouteError::Acquire(AcquireError::Retiring) => (
            StatusCode::SERVICE_UNAVAILABLE,
            cloudrun::MALFORMED_OR_UNREACHABLE.into(),
        ),
        RouteError::Acquire(AcquireError::StartFailed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            cloudrun::INSTANCE_COULD_NOT_START.into(),
        ),
        RouteError::Acquire(AcquireError::Overloaded | AcquireError::TimedOut) => (
            StatusCode::TOO_MANY_REQUESTS,
            cloudrun::NO_AVAILABLE_INSTANCE.into(),
        ),
    }
}

/// Cloud Run's answer to a request a private service refuses: 403 without a token, 401 with
/// one that is not valid for the service; Google's HTML error page.
fn denial(denied: Denied, path: &str) -> Response<ProxyBody> {
    let (status, page) = match denied {
        Denied::Missing => (StatusCode::FORBIDDEN, cloudrun::forbidden_page(path)),
        Denied::Invalid => (StatusCode::UNAUTHORIZED, cloudrun::unauthorized_page(path)),
    };
    let mut response = Response::new(ProxyBody::text(page.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=UTF-8"),
    );
    response
}

/// A response of the proxy's own. `close` ends an HTTP/1 connection after it (the client may
/// still be sending a body we will not read, or Cloud Run closes it, as on a timeout).
fn refusal(
    status: StatusCode,
    text: impl Into<Cow<'static, str>>,
    close: bool,
) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::text(text.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_requests_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!wants_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(wants_upgrade(&h));
    }

    #[test]
    fn causes_are_found_down_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] BodyTooLarge);
        let e = Outer(BodyTooLarge);
        assert!(caused_by::<BodyTooLarge>(&e));
        assert!(!caused_by::<std::io::Error>(&e));
    }
}

/// The proxy against a fake router and a plain hyper server standing in for an instance: no
/// Docker, no pool. What a request is forwarded with, and what the proxy answers when routing
/// fails or the instance cannot be reached.
#[cfg(test)]
mod with_a_fake_router {
    use super::*;
    use crate::serve::router::Route;
    use bytes::Bytes;
    use http::uri::Authority;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::mpsc;

    /// What happened to the slots the fake handed out.
    #[derive(Debug, PartialEq)]
    enum SlotEvent {
        Unreachable,
        Freed,
    }

    struct FakeSlot(mpsc::UnboundedSender<SlotEvent>);

    impl Slot for FakeSlot {
        fn unreachable(&self) {
            let _ = self.0.send(SlotEvent::Unreachable);
        }
    }

    impl Drop for FakeSlot {
        fn drop(&mut self) {
            let _ = self.0.send(SlotEvent::Freed);
        }
    }

    /// Routes `app.localhost` to the app, `broken.localhost` to a server that hangs up on
    /// every request, and every other host to the routing failure it names.
    struct FakeRouter {
        app: Authority,
        broken: Authority,
        /// More apps, by host label.
        apps: Vec<(&'static str, Authority)>,
        slots: mpsc::UnboundedSender<SlotEvent>,
    }

    impl Backend for FakeRouter {
        async fn route(&self, host: &str, _: &HeaderMap) -> Result<Route, RouteError> {
            let label = host.split('.').next().unwrap_or_default();
            let authority = match label {
                "app" => self.app.clone(),
                "broken" => self.broken.clone(),
                _ if let Some((_, authority)) =
                    self.apps.iter().find(|(name, _)| *name == label) =>
                {
                    authority.clone()
                }
                "nowhere" => {
                    return Err(RouteError::NoService {
                        host: host.to_string(),
                        services: vec!["http://app.localhost:8080".to_string()],
                    })
                }
                "green---app" => return Err(RouteError::NoTag("green".to_string())),
                "notraffic" => return Err(RouteError::NoTraffic),
                "retiring" => return Err(AcquireError::Retiring.into()),
                "startfailed" => return Err(AcquireError::StartFailed.into()),
                "overloaded" => return Err(AcquireError::Overloaded.into()),
                "timedout" => return Err(AcquireError::TimedOut.into()),
                other => panic!("the test sent an unexpected host {other}"),
            };
            Ok(Route {
                authority,
                http2: false,
                request_timeout: Duration::from_secs(30),
                slot: Box::new(FakeSlot(self.slots.clone())),
                token_header: None,
            })
        }
    }

    /// An app that answers with the Host and path it was sent.
    async fn app() -> Authority {
        TestApp::start("", Keep::Alive).await.authority
    }

    /// How a [`TestApp`] treats its connections.
    #[derive(Clone, Copy)]
    enum Keep {
        Alive,
        /// `Connection: close` on every response.
        Close,
        /// Keep-alive announced, but the connection is dropped this long after it opened.
        DropAfter(Duration),
    }

    /// An app answering `NAME host=HOST path=PATH`, counting the connections it accepted.
    struct TestApp {
        authority: Authority,
        connections: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl TestApp {
        async fn start(name: &'static str, keep: Keep) -> TestApp {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
            let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counted = connections.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let service =
                        hyper::service::service_fn(move |request: Request<Incoming>| async move {
                            let host = request.headers().get(header::HOST).cloned();
                            let host = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
                            let prefix = match name {
                                "" => String::new(),
                                name => format!("{name} "),
                            };
                            let text = format!("{prefix}host={host} path={}", request.uri());
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                        });
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.keep_alive(!matches!(keep, Keep::Close));
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::spawn(async move {
                        match keep {
                            Keep::DropAfter(life) => {
                                let _ = tokio::time::timeout(life, connection).await;
                            }
                            _ => {
                                let _ = connection.await;
                            }
                        }
                    });
                }
            });
            TestApp {
                authority,
                connections,
            }
        }

        fn connections(&self) -> usize {
            self.connections.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// A server that accepts connections and closes them at once.
    async fn hang_up() -> Authority {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        tokio::spawn(async move { while let Ok((_stream, _)) = listener.accept().await {} });
        authority
    }

    struct Running {
        addr: SocketAddr,
        slots: mpsc::UnboundedReceiver<SlotEvent>,
        stop: CancellationToken,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    async fn proxy() -> Running {
        proxy_with(Vec::new()).await
    }

    async fn proxy_with(apps: Vec<(&'static str, Authority)>) -> Running {
        let (tx, slots) = mpsc::unbounded_channel();
        let router = FakeRouter {
            app: app().await,
            broken: hang_up().await,
            apps,
            slots: tx,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let proxy = Proxy::new(Arc::new(router), ProxyConfig::default());
        tokio::spawn(proxy.serve(vec![listener], stop.clone()));
        Running { addr, slots, stop }
    }

    /// Sends one HTTP/1.1 GET and returns the status line, the headers (lower case) and the
    /// body, read until the proxy closes the connection.
    async fn get(addr: SocketAddr, host: &str, path: &str) -> (String, String, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (
            status.to_string(),
            headers.to_ascii_lowercase(),
            body.to_string(),
        )
    }

    #[tokio::test]
    async fn a_request_is_forwarded_to_the_routed_instance_and_its_slot_freed_after() {
        let mut running = proxy().await;
        let (status, _, body) = get(running.addr, "app.localhost:8080", "/hello?x=1").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "host=app.localhost:8080 path=/hello?x=1");
        assert_eq!(running.slots.recv().await, Some(SlotEvent::Freed));
    }

    #[tokio::test]
    async fn an_instance_that_hangs_up_is_503_and_reported_unreachable() {
        let mut running = proxy().await;
        let (status, _, body) = get(running.addr, "broken.localhost", "/").await;
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        assert_eq!(body, cloudrun::MALFORMED_OR_UNREACHABLE);
        assert_eq!(running.slots.recv().await, Some(SlotEvent::Unreachable));
        assert_eq!(running.slots.recv().await, Some(SlotEvent::Freed));
    }

    /// Sends GETs one after another on one keep-alive client connection, with `gap` between
    /// them; each answer's status and body.
    async fn keep_alive_gets(
        addr: SocketAddr,
        requests: &[(&str, &str)],
        gap: Duration,
    ) -> Vec<(u16, String)> {
        use http_body_util::{BodyExt, Empty};
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let mut answers = Vec::new();
        for (host, path) in requests {
            sender
                .ready()
                .await
                .expect("the proxy kept the connection open");
            let request = Request::get(*path)
                .header(header::HOST, *host)
                .body(Empty::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            answers.push((status, String::from_utf8_lossy(&body).into_owned()));
            tokio::time::sleep(gap).await;
        }
        answers
    }

    #[tokio::test]
    async fn a_client_connections_requests_share_one_instance_connection() {
        let one = TestApp::start("one", Keep::Alive).await;
        let two = TestApp::start("two", Keep::Alive).await;
        let running = proxy_with(vec![
            ("one", one.authority.clone()),
            ("two", two.authority.clone()),
        ])
        .await;
        let hosts = [
            ("one.localhost", "/a"),
            ("one.localhost", "/b"),
            ("one.localhost", "/c"),
            ("two.localhost", "/d"),
            ("one.localhost", "/e"),
        ];
        let answers = keep_alive_gets(running.addr, &hosts, Duration::ZERO).await;
        let bodies: Vec<&str> = answers.iter().map(|(_, body)| body.as_str()).collect();
        assert_eq!(
            bodies,
            [
                "one host=one.localhost path=/a",
                "one host=one.localhost path=/b",
                "one host=one.localhost path=/c",
                "two host=two.localhost path=/d",
                "one host=one.localhost path=/e",
            ]
        );
        assert!(answers.iter().all(|(status, _)| *status == 200));
        // Three requests in a row on one connection; a switch to another instance and back
        // opens one each.
        assert_eq!((one.connections(), two.connections()), (2, 1));
    }

    #[tokio::test]
    async fn instance_connections_that_close_are_replaced_without_failing_a_request() {
        let closing = TestApp::start("closing", Keep::Close).await;
        let dropping = TestApp::start("dropping", Keep::DropAfter(Duration::from_millis(30))).await;
        let running = proxy_with(vec![
            ("closing", closing.authority.clone()),
            ("dropping", dropping.authority.clone()),
        ])
        .await;
        let requests = [("closing.localhost", "/"); 3];
        let answers = keep_alive_gets(running.addr, &requests, Duration::ZERO).await;
        assert!(
            answers.iter().all(|(status, _)| *status == 200),
            "{answers:?}"
        );
        assert_eq!(closing.connections(), 3);
        // Each request comes after the instance dropped the previous connection.
        let requests = [("dropping.localhost", "/"); 3];
        let answers = keep_alive_gets(running.addr, &requests, Duration::from_millis(80)).await;
        assert!(
            answers.iter().all(|(status, _)| *status == 200),
            "{answers:?}"
        );
        assert_eq!(dropping.connections(), 3);
    }

    #[tokio::test]
    async fn routing_failures_get_cloud_runs_status_and_text() {
        let running = proxy().await;
        let cases = [
            (
                "nowhere.localhost:8080",
                "HTTP/1.1 404 Not Found",
                "404 page not found: no service answers at 'nowhere.localhost:8080'. Services here: http://app.localhost:8080\n",
            ),
            (
                "green---app.localhost:8080",
                "HTTP/1.1 404 Not Found",
                "404 page not found: no revision is tagged 'green'\n",
            ),
            (
                "notraffic.localhost",
                "HTTP/1.1 503 Service Unavailable",
                cloudrun::MALFORMED_OR_UNREACHABLE,
            ),
            (
                "retiring.localhost",
                "HTTP/1.1 503 Service Unavailable",
                cloudrun::MALFORMED_OR_UNREACHABLE,
            ),
            (
                "startfailed.localhost",
                "HTTP/1.1 503 Service Unavailable",
                cloudrun::INSTANCE_COULD_NOT_START,
            ),
            (
                "overloaded.localhost",
                "HTTP/1.1 429 Too Many Requests",
                cloudrun::NO_AVAILABLE_INSTANCE,
            ),
            (
                "timedout.localhost",
                "HTTP/1.1 429 Too Many Requests",
                cloudrun::NO_AVAILABLE_INSTANCE,
            ),
        ];
        for (host, want_status, want_body) in cases {
            let (status, headers, body) = get(running.addr, host, "/").await;
            assert_eq!(
                (status.as_str(), body.as_str()),
                (want_status, want_body),
                "{host}"
            );
            assert!(
                headers.contains("content-type: text/plain; charset=utf-8"),
                "{host}: {headers}"
            );
        }
    }
}
