//! The admin API of a running emulator: Cloud Run's v1 API (Knative `serving.knative.dev/v1`
//! Services and Revisions as JSON) on loopback, which the CLI verbs (`deploy`, `services`,
//! `revisions`) talk to. A discovery file lets those verbs find the emulator without flags.

pub mod client;
pub mod dashboard;
pub mod gate;
pub mod logs;
pub mod metrics;

use std::convert::Infallible;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use self::gate::Gate;
use crate::control::knative;
use crate::control::platform::{ApplyError, LookupError, Platform};

/// The API's path prefix, as Cloud Run's v1 API and Knative spell it.
pub const API_PREFIX: &str = "/apis/serving.knative.dev/v1/namespaces/";
/// Response header carrying one-line notes about accepted settings with no local effect.
pub const NOTE_HEADER: &str = "x-emulate-note";

/// The admin API's settings: plain data.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// Who may drive the API (host, origin, token, content type).
    pub gate: Gate,
    /// From accept, and again from the end of each response, a client must send a whole
    /// request head within this, so idle and half-open sockets do not pile up.
    pub header_read_timeout: Duration,
}

/// An admin response's body: whole (documents, errors) or streamed (`logs --follow`).
pub type AdminBody = BoxBody<Bytes, Infallible>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> AdminBody {
    Full::new(bytes.into()).boxed()
}

/// What the admin API serves besides the control plane: the emulator's observers.
#[derive(Clone)]
pub struct Observers {
    /// The recent log entries (`emulate logs`), and the live stream after them.
    pub logs: crate::logs::buffer::LogBuffer,
    /// What `GET /metrics` reads.
    pub metrics: metrics::Scraper,
}

/// How long the accept loop waits after a failed accept (out of file descriptors...).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the admin API until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    platform: Platform,
    observers: Observers,
    config: AdminConfig,
    shutdown: CancellationToken,
) {
    let gate = Arc::new(config.gate);
    // HTTP/1 only (the verbs speak it): hyper's HTTP/1 header-read timer runs from accept
    // and restarts when a connection goes idle, so it bounds both a silent client and an
    // idle keep-alive connection. (hyper-util's auto builder has no timer while it tells
    // the protocols apart.)
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let mut failing = false;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    failing = false;
                    stream
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning,
                    // and say so once per bout rather than thousands of times a second.
                    if !failing {
                        tracing::warn!("admin API: accept failed: {e}; retrying every {} ms", ACCEPT_BACKOFF.as_millis());
                        failing = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let platform = platform.clone();
        let observers = observers.clone();
        let gate = gate.clone();
        let service = hyper::service::service_fn(move |request| {
            let platform = platform.clone();
            let observers = observers.clone();
            let gate = gate.clone();
            async move {
                // Nothing is dispatched before the gate lets the request through.
                let response = match gate.admit(&request) {
                    Ok(()) => dispatch(&gate, &platform, &observers, request).await,
                    Err(refusal) => refusal.into_response().map(BodyExt::boxed),
                };
                Ok::<_, Infallible>(response)
            }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("admin API connection ended: {e}");
            }
        });
    }
}

/// The observers' paths (the log, the metrics, the dashboard), else the control plane's API.
async fn dispatch(
    gate: &Gate,
    platform: &Platform,
    observers: &Observers,
    request: Request<Incoming>,
) -> Response<AdminBody> {
    let path = request.uri().path();
    let observed = path == logs::PATH || path == metrics::PATH || dashboard::serves(path);
    // The observers only read: one method check for all of them.
    if observed && !matches!(*request.method(), Method::GET | Method::HEAD) {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{path} answers GET only"),
        )
        .map(BodyExt::boxed);
    }
    match request.uri().path() {
        logs::PATH => logs::handle(&observers.logs, request).await,
        path if dashboard::serves(path) => {
            dashboard::handle(gate, platform, &observers.logs, request).await
        }
        metrics::PATH => metrics::handle(&observers.metrics, platform).await,
        _ => handle(platform, request).await.map(BodyExt::boxed),
    }
}

async fn handle(platform: &Platform, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let method = request.method().clone();
    if path == "/healthz" {
        return json(
            StatusCode::OK,
            &serde_json::json!({"ok": true, "port": platform.port()}),
        );
    }
    let Some(rest) = path.strip_prefix(API_PREFIX) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no such API path: {path}"),
        );
    };
    // namespaces/{ns}/{collection}[/{name}]; the namespace (a project id in Cloud Run) is
    // accepted and ignored: the emulator has one.
    let parts: Vec<&str> = rest.split('/').collect();
    let (collection, name) = match parts.as_slice() {
        [_, collection] => (*collection, None),
        [_, collection, name] => (*collection, Some(*name)),
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no such API path: {path}"),
            )
        }
    };
    // A name in the path is checked first, with Cloud Run's rules, as the real API does.
    let bad_name = match (collection, name) {
        ("services", Some(name)) => crate::cloudrun::validate_service_name(name).err(),
        ("revisions", Some(name)) => crate::cloudrun::validate_revision_lookup(name).err(),
        _ => None,
    };
    if let Some(message) = bad_name {
        return status(StatusCode::BAD_REQUEST, "BadRequest", message);
    }
    match (collection, name, &method) {
        ("services", None, &Method::GET) => json(
            StatusCode::OK,
            &list("ServiceList", platform.list_services()),
        ),
        ("services", Some(name), &Method::GET) => lookup(platform.describe_service(name)),
        ("services", _, &Method::POST | &Method::PUT) => {
            let yaml = gate::is_yaml(&request);
            let body = match read_body(request).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            let parsed = if yaml {
                match std::str::from_utf8(&body) {
                    Ok(text) => knative::parse_service_yaml(text),
                    Err(_) => Err(crate::config::FieldError::new(
                        "(document)",
                        "a YAML body must be UTF-8",
                    )),
                }
            } else {
                knative::parse_service_json(&body)
            };
            let mut doc = match parsed {
                Ok(doc) => doc,
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
            };
            if let Some(name) = name {
                match &doc.metadata.name {
                    Some(n) if n != name => {
                        return status(
                            StatusCode::BAD_REQUEST,
                            "BadRequest",
                            format!("metadata.name: '{n}' does not match the URL's '{name}'"),
                        )
                    }
                    _ => doc.metadata.name = Some(name.to_string()),
                }
            }
            match platform.apply(doc).await {
                Ok(applied) => {
                    let mut response = json(StatusCode::OK, &applied.service);
                    for note in applied.notes {
                        if let Ok(value) = http::HeaderValue::from_str(&note) {
                            response.headers_mut().append(NOTE_HEADER, value);
                        }
                    }
                    response
                }
                Err(e) => apply_error(e),
            }
        }
        ("services", Some(name), &Method::DELETE) => {
            deleted(platform.delete_service(name).await, "service", name)
        }
        ("revisions", None, &Method::GET) => {
            let service = label_selector_service(&query);
            json(
                StatusCode::OK,
                &list("RevisionList", platform.list_revisions(service.as_deref())),
            )
        }
        ("revisions", Some(name), &Method::GET) => lookup(platform.describe_revision(name)),
        ("revisions", Some(name), &Method::DELETE) => {
            deleted(platform.delete_revision(name).await, "revision", name)
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} {path} is not supported"),
        ),
    }
}

/// `labelSelector=serving.knative.dev/service=NAME`, the one selector gcloud uses.
fn label_selector_service(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("labelSelector=")?;
        let value = value.replace("%3D", "=").replace("%2F", "/");
        value
            .strip_prefix(&format!("{}=", knative::LABEL_SERVICE))
            .map(str::to_string)
    })
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    match Limited::new(request.into_body(), 4 << 20).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) => Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("cannot read the request body: {e}"),
        )),
    }
}

fn list<T: serde::Serialize>(kind: &str, items: Vec<T>) -> knative::List<T> {
    knative::List {
        api_version: knative::API_VERSION.to_string(),
        kind: kind.to_string(),
        items,
    }
}

fn lookup<T: serde::Serialize>(result: Result<T, LookupError>) -> Response<Full<Bytes>> {
    match result {
        Ok(doc) => json(StatusCode::OK, &doc),
        Err(e) => lookup_error(e),
    }
}

/// A delete's answer: Cloud Run's `Deleted KIND [NAME].`, or why not.
fn deleted(result: Result<(), LookupError>, kind: &str, name: &str) -> Response<Full<Bytes>> {
    match result {
        Ok(()) => status(
            StatusCode::OK,
            "Deleted",
            format!("Deleted {kind} [{name}]."),
        ),
        Err(e) => lookup_error(e),
    }
}

fn lookup_error(error: LookupError) -> Response<Full<Bytes>> {
    match error {
        LookupError::Refused(m) => status(StatusCode::CONFLICT, "Conflict", m),
        other => status(StatusCode::NOT_FOUND, "NotFound", other.to_string()),
    }
}

/// Maps whose fault an apply failure is to a status: the document's (400), the revision's
/// (422: it did not become ready), a conflict (409), or the emulator's/Docker's (500).
fn apply_error(error: ApplyError) -> Response<Full<Bytes>> {
    let (code, reason) = match &error {
        ApplyError::Invalid(_) | ApplyError::Traffic(_) | ApplyError::Image(_) => {
            (StatusCode::BAD_REQUEST, "BadRequest")
        }
        ApplyError::Unsupported { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "UnsupportedPlatform"),
        ApplyError::NotReady(_) => (StatusCode::UNPROCESSABLE_ENTITY, "RevisionFailed"),
        ApplyError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
        ApplyError::Runtime(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    };
    status(code, reason, error.to_string())
}

/// A Kubernetes `Status` object, the API's error (and delete) response.
pub(crate) fn status(code: StatusCode, reason: &str, message: String) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Status",
        "status": if code.is_success() { "Success" } else { "Failure" },
        "reason": reason,
        "message": message,
        "code": code.as_u16(),
    });
    json(code, &body)
}

fn json<T: serde::Serialize>(code: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Where running emulators announce their admin address: one file per process.
/// Whether process `pid` has ended: no such process, or a zombie nobody has waited for yet.
/// False where /proc cannot tell (not Linux): a file is then never removed on a guess.
pub(crate) fn process_is_gone(pid: u32) -> bool {
    if !std::path::Path::new("/proc/self/stat").exists() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses and may contain any
        // character: read it after the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| matches!(state, "Z" | "X")),
    }
}

/// Removes the discovery files of emulators that are gone (killed before they could remove
/// their own), so that none of them can announce a port a live emulator now uses.
fn remove_stale_announcements(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let pid = entry.file_name().to_str().and_then(|n| {
            n.strip_prefix("admin-")?
                .strip_suffix(".json")?
                .parse::<u32>()
                .ok()
        });
        if pid.is_some_and(process_is_gone) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

pub fn discovery_dir() -> PathBuf {
    std::env::temp_dir().join("emulate")
}

/// The discovery file of this process; removed when dropped. It holds the run's token, so
/// only its owner may read it (0600, in a directory created 0700).
pub struct Announcement {
    path: PathBuf,
}

impl Announcement {
    pub fn write(
        admin: SocketAddr,
        listen: SocketAddr,
        token: &str,
    ) -> std::io::Result<Announcement> {
        let dir = discovery_dir();
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir)?;
        remove_stale_announcements(&dir);
        let path = dir.join(format!("admin-{}.json", std::process::id()));
        let body = serde_json::json!({
            "pid": std::process::id(),
            "admin": connectable(admin).to_string(),
            "listen": listen.to_string(),
            "token": token,
        });
        // A file left by an earlier process with this pid goes; `create_new` then refuses
        // to follow a link someone else planted in its place.
        let _ = std::fs::remove_file(&path);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(&path)?
            .write_all(body.to_string().as_bytes())?;
        Ok(Announcement { path })
    }
}

/// The address a verb dials: a wildcard bind is reached on loopback.
pub(crate) fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

impl Drop for Announcement {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
