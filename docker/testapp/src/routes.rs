//! Request routing and the per-path behaviours the emulator's tests rely on.

use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::background;
use crate::lifecycle::InFlight;
use crate::output;
use crate::query::Query;
use crate::websocket;

/// Response bodies: a plain buffer for ordinary answers, so that the benchmark's
/// `GET /` allocates as little as possible, and a boxed stream for streamed ones.
pub type Body = Either<Full<Bytes>, UnsyncBoxBody<Bytes, Infallible>>;

/// Memory handed out by `/alloc`, kept here forever so it stays resident.
static LEAKED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Set by `/sick`: from then on `/healthz` and the gRPC health check fail, so tests can watch
/// liveness probes restart the instance.
pub static SICK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The size of a page; `/alloc` writes one byte per page to make it resident.
const PAGE: usize = 4096;

/// `K_REVISION` as a header value, read once.
fn revision_header() -> Option<&'static HeaderValue> {
    static REVISION: std::sync::OnceLock<Option<HeaderValue>> = std::sync::OnceLock::new();
    REVISION
        .get_or_init(|| {
            std::env::var("K_REVISION")
                .ok()
                .and_then(|r| HeaderValue::from_str(&r).ok())
        })
        .as_ref()
}

/// Dispatches one request on its path.
pub async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/" {
        return Ok(ok());
    }
    let _in_flight = InFlight::start();
    // Seen when the request started: tests of concurrency limits check it never exceeds them.
    let in_flight_at_start = InFlight::count();
    let query = Query::parse(req.uri().query());
    let resp = match req.uri().path() {
        "/echo" => echo(req).await,
        "/sleep" => sleep(&query).await,
        "/together" => together(&query).await,
        "/stream" => ticker(&query, "chunks", "text/plain", |i| format!("chunk {i}\n")),
        "/sse" => ticker(&query, "events", "text/event-stream", |i| {
            format!("data: {i}\n\n")
        }),
        "/ws" => Ok(websocket::upgrade(req)),
        "/alloc" => alloc(&query).await,
        "/status" => status(&query),
        "/crash" => crash(&query),
        "/upload" => upload(req).await,
        "/metadata" => metadata(&query).await,
        "/call" => call(&query).await,
        "/file" => file(&query),
        "/healthz" if SICK.load(std::sync::atomic::Ordering::SeqCst) => {
            Ok(text(StatusCode::SERVICE_UNAVAILABLE, "sick\n"))
        }
        "/healthz" => Ok(text(StatusCode::OK, "healthy\n")),
        "/sick" => {
            SICK.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(text(StatusCode::OK, "sick from now on\n"))
        }
        "/grpc.health.v1.Health/Check" => Ok(grpc_health()),
        "/log" => {
            let severity = query.get("severity").unwrap_or("INFO");
            output::json(severity, query.get("message").unwrap_or(""));
            Ok(text(StatusCode::OK, "logged\n"))
        }
        "/work" => work(&query).await,
        "/log-later" => log_later(&query),
        "/write" => write(&query).await,
        "/print" => {
            output::line(query.get("text").unwrap_or(""));
            Ok(text(StatusCode::OK, "printed\n"))
        }
        _ => Ok(text(StatusCode::NOT_FOUND, "not found\n")),
    };
    let mut resp = resp.unwrap_or_else(|failure| text(failure.status, failure.message));
    // Tests of traffic splitting tell revisions apart by this header, on every path but `/`.
    if let Some(revision) = revision_header() {
        resp.headers_mut().insert("x-k-revision", revision.clone());
    }
    resp.headers_mut()
        .insert("x-in-flight", HeaderValue::from(in_flight_at_start));
    Ok(resp)
}

/// Why a request could not be served, turned into a plain-text response at the end.
struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }
}

/// What a handler returns: its response, or the failure to report instead.
type Handled = Result<Response<Body>, Failure>;

/// The benchmark's target: a static body with no per-request formatting.
fn ok() -> Response<Body> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from_static(b"ok\n"))));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// A complete `text/plain` response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Either::Left(Full::new(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// Reads a numeric query parameter; a missing one takes `default`, and a malformed
/// one is a 400 so that a typo in a test shows up instead of silently defaulting.
fn number<T: FromStr>(query: &Query, key: &str, default: T) -> Result<T, Failure> {
    match query.get(key) {
        None => Ok(default),
        Some(raw) => raw.parse().map_err(|_| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                format!("invalid value for {key}: {raw:?}\n"),
            )
        }),
    }
}

/// Reads the whole body frame by frame and returns its length in bytes.
async fn body_len(mut body: Incoming) -> Result<u64, Failure> {
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                format!("failed to read the body: {err}\n"),
            )
        })?;
        if let Some(data) = frame.data_ref() {
            total += data.len() as u64;
        }
    }
    Ok(total)
}

/// Describes the request as the container saw it, plus the process environment.
async fn echo(req: Request<Incoming>) -> Handled {
    let (parts, body) = req.into_parts();
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        let values = headers
            .entry(name.as_str())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(values) = values {
            values.push(value.into());
        }
    }
    let env: serde_json::Map<String, serde_json::Value> = std::env::vars_os()
        .map(|(k, v)| {
            let value = v.to_string_lossy().into_owned();
            (k.to_string_lossy().into_owned(), value.into())
        })
        .collect();
    let body_len = body_len(body).await?;
    let report = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        // HTTP/2 carries the host as the `:authority` pseudo-header, not as `host`.
        "authority": parts.uri.authority().map(|a| a.as_str()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "env": env,
        "args": std::env::args().collect::<Vec<_>>(),
        "body_len": body_len,
    });
    let mut resp = text(StatusCode::OK, report.to_string());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Holds the request open for a while, to test timeouts and concurrency.
async fn sleep(query: &Query) -> Handled {
    let ms: u64 = number(query, "ms", 0)?;
    // Tests wait for this line to know the request has reached the instance.
    println!("sleeping {ms} ms");
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(text(StatusCode::OK, format!("slept {ms} ms\n")))
}

/// Requests waiting at `/together`, and how many groups have been let through.
struct Gate {
    waiting: u64,
    opened: u64,
}

static GATE: Mutex<Gate> = Mutex::new(Gate {
    waiting: 0,
    opened: 0,
});

/// Answers only once `n` requests wait here at the same time (then all of them at once), or
/// 504 after `ms`: a test of concurrency passes only if the requests really overlapped.
async fn together(query: &Query) -> Handled {
    let n: u64 = number(query, "n", 2)?;
    let ms: u64 = number(query, "ms", 10_000)?;
    static OPENED: std::sync::OnceLock<tokio::sync::watch::Sender<u64>> =
        std::sync::OnceLock::new();
    let opened = OPENED.get_or_init(|| tokio::sync::watch::channel(0).0);
    let mut watching = opened.subscribe();
    let group = {
        let mut gate = GATE.lock().unwrap_or_else(|e| e.into_inner());
        gate.waiting += 1;
        if gate.waiting >= n {
            gate.waiting = 0;
            gate.opened += 1;
            opened.send_replace(gate.opened);
            return Ok(text(StatusCode::OK, format!("{n} together\n")));
        }
        gate.opened
    };
    let wait = watching.wait_for(|opened| *opened > group);
    if tokio::time::timeout(Duration::from_millis(ms), wait)
        .await
        .is_ok()
    {
        return Ok(text(StatusCode::OK, format!("{n} together\n")));
    }
    let mut gate = GATE.lock().unwrap_or_else(|e| e.into_inner());
    // Opened between the timeout and the lock.
    if gate.opened > group {
        return Ok(text(StatusCode::OK, format!("{n} together\n")));
    }
    let arrived = gate.waiting;
    gate.waiting -= 1;
    Err(Failure::new(
        StatusCode::GATEWAY_TIMEOUT,
        format!("only {arrived} of {n} requests were here together within {ms} ms\n"),
    ))
}

/// Streams `count` pieces `interval_ms` apart, each as its own body frame, so that a
/// test can see whether a proxy passes them on as they come or buffers them.
fn ticker(
    query: &Query,
    count_key: &str,
    content_type: &'static str,
    render: fn(u64) -> String,
) -> Handled {
    let count: u64 = number(query, count_key, 5)?;
    let interval = Duration::from_millis(number(query, "interval_ms", 100)?);
    // The body outlives the handler, so it carries its own in-flight mark for the drain.
    let state = (0u64, InFlight::start());
    let stream = futures_util::stream::unfold(state, move |(i, in_flight)| async move {
        if i >= count {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let frame = Frame::data(Bytes::from(render(i)));
        Some((Ok::<_, Infallible>(frame), (i + 1, in_flight)))
    });
    let mut resp = Response::new(Either::Right(StreamBody::new(stream).boxed_unsync()));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// `grpc.health.v1.Health/Check`: SERVING (1), or NOT_SERVING (2) once `/sick` was called,
/// as a length-prefixed gRPC message followed by `grpc-status: 0` trailers.
fn grpc_health() -> Response<Body> {
    let status = if SICK.load(std::sync::atomic::Ordering::SeqCst) {
        2
    } else {
        1
    };
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = vec![
        Ok::<_, Infallible>(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
    let mut resp = Response::new(Either::Right(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// Grows the process's resident memory by `mib` MiB for good, to test memory limits.
async fn alloc(query: &Query) -> Handled {
    let mib: usize = number(query, "mib", 0)?;
    let Some(len) = mib.checked_mul(1 << 20) else {
        return Err(Failure::new(StatusCode::BAD_REQUEST, "mib is too large\n"));
    };
    // Touching many pages takes a while, so it runs off the async worker threads.
    let touched = tokio::task::spawn_blocking(move || {
        let mut block = vec![0u8; len];
        for byte in block.iter_mut().step_by(PAGE) {
            *byte = 1;
        }
        LEAKED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(block);
    })
    .await;
    match touched {
        Ok(()) => Ok(text(StatusCode::OK, format!("allocated {mib} MiB\n"))),
        Err(err) => Err(Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("allocation failed: {err}\n"),
        )),
    }
}

/// `units` units of CPU work: during the request (the answer says how long they took), or
/// with `after=1` on a thread of its own once the answer has gone (a log line says).
async fn work(query: &Query) -> Handled {
    let units: u64 = number(query, "units", 100)?;
    if query.get("after").is_some_and(|v| v == "1") {
        background::work_after_response(units);
        return Ok(text(
            StatusCode::OK,
            format!("working on {units} units after the response\n"),
        ));
    }
    let took = tokio::task::spawn_blocking(move || background::work(units))
        .await
        .unwrap_or_default();
    Ok(text(
        StatusCode::OK,
        format!("worked {units} units in {} ms\n", took.as_millis()),
    ))
}

/// Answers, then logs `lines` lines `delay_ms` later (default 200).
fn log_later(query: &Query) -> Handled {
    let lines: u64 = number(query, "lines", 1)?;
    let delay: u64 = number(query, "delay_ms", 200)?;
    background::log_after_response(lines, Duration::from_millis(delay));
    Ok(text(StatusCode::OK, format!("will log {lines} lines\n")))
}

/// Writes `mib` MiB into a file in `dir` (default /tmp).
async fn write(query: &Query) -> Handled {
    let mib: usize = number(query, "mib", 1)?;
    let dir = query.get("dir").unwrap_or("/tmp").to_string();
    let written = tokio::task::spawn_blocking(move || background::write_file(&dir, mib)).await;
    match written {
        Ok(Ok(path)) => Ok(text(StatusCode::OK, format!("wrote {mib} MiB to {path}\n"))),
        Ok(Err(err)) => Err(Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("write failed: {err}\n"),
        )),
        Err(err) => Err(Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("write failed: {err}\n"),
        )),
    }
}

/// Answers with the requested status code.
fn status(query: &Query) -> Handled {
    let code: u16 = number(query, "code", 200)?;
    let Ok(status) = StatusCode::from_u16(code) else {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid status code\n",
        ));
    };
    // These statuses must not carry a body, so none is sent with them.
    let body = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        String::new()
    } else {
        format!("status {code}\n")
    };
    Ok(text(status, body))
}

/// Kills the process mid-request, to test how the emulator reports a crash.
fn crash(query: &Query) -> Handled {
    let code: i32 = number(query, "code", 1)?;
    eprintln!("crashing on request with code {code}");
    std::process::exit(code);
}

/// Consumes an upload and reports its size.
async fn upload(req: Request<Incoming>) -> Handled {
    let len = body_len(req.into_body()).await?;
    Ok(text(StatusCode::OK, format!("received {len} bytes\n")))
}

/// `/file?path=P`: the content of the file P of the image (404 when it has none), so that
/// tests of images built from source can tell what went into them.
fn file(query: &Query) -> Handled {
    let path = query
        .get("path")
        .ok_or_else(|| Failure::new(StatusCode::BAD_REQUEST, "path= is required\n"))?;
    match std::fs::read(path) {
        Ok(content) => Ok(text(StatusCode::OK, content)),
        Err(e) => Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!("{path}: {e}\n"),
        )),
    }
}

/// `/metadata?path=P[&flavor=0]`: asks the metadata server at `$GCE_METADATA_HOST` for `P`
/// (with `Metadata-Flavor: Google` unless `flavor=0`), as Google's libraries do from inside
/// a container, and answers with the raw HTTP response it got.
async fn metadata(query: &Query) -> Handled {
    let host = std::env::var("GCE_METADATA_HOST")
        .map_err(|_| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "no GCE_METADATA_HOST\n"))?;
    let path = query.get("path").unwrap_or("/computeMetadata/v1/");
    let flavor = if query.get("flavor") == Some("0") {
        ""
    } else {
        "Metadata-Flavor: Google\r\n"
    };
    let response = http_get(&host, path, "metadata.google.internal", flavor).await?;
    Ok(text(StatusCode::OK, response))
}

/// `GET url` from inside the container, as a service calls another: the host is resolved by
/// the container's resolver (its /etc/hosts and name server). With `audience`, an identity
/// token for it is fetched from the metadata server first and sent in `header` (default
/// `Authorization`) as `Bearer TOKEN`. Answers the raw response it got.
async fn call(query: &Query) -> Handled {
    let url = query
        .get("url")
        .ok_or_else(|| Failure::new(StatusCode::BAD_REQUEST, "no url\n"))?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Failure::new(StatusCode::BAD_REQUEST, "only http:// urls\n"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let mut headers = String::new();
    if let Some(audience) = query.get("audience") {
        let metadata = std::env::var("GCE_METADATA_HOST").map_err(|_| {
            Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "no GCE_METADATA_HOST\n")
        })?;
        let identity = format!(
            "/computeMetadata/v1/instance/service-accounts/default/identity?audience={}",
            audience.replace(':', "%3A").replace('/', "%2F")
        );
        let answer = http_get(
            &metadata,
            &identity,
            "metadata.google.internal",
            "Metadata-Flavor: Google\r\n",
        )
        .await?;
        let answer = String::from_utf8_lossy(&answer);
        let (head, token) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        if !head.starts_with("HTTP/1.1 200") {
            return Err(Failure::new(
                StatusCode::BAD_GATEWAY,
                format!("identity token: {answer}\n"),
            ));
        }
        let header = query.get("header").unwrap_or("Authorization");
        headers = format!("{header}: Bearer {}\r\n", token.trim());
    }
    let response = http_get(authority, path, authority, &headers).await?;
    Ok(text(StatusCode::OK, response))
}

/// One HTTP/1.1 GET over a new connection to `address` (resolved here), with `headers`
/// (complete lines); the whole raw response.
async fn http_get(
    address: &str,
    path: &str,
    host: &str,
    headers: &str,
) -> Result<Vec<u8>, Failure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let failed =
        |e: std::io::Error| Failure::new(StatusCode::BAD_GATEWAY, format!("{address}: {e}\n"));
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(failed)?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(failed)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.map_err(failed)?;
    Ok(response)
}
