//! The CLI's side of the admin API: finds the running emulator (`--admin`, `EMULATE_ADMIN`,
//! else the discovery files) and its token (`EMULATE_ADMIN_TOKEN`, else the discovery file
//! announcing that address), and sends it Cloud Run v1 API requests.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use super::gate::{TOKEN_ENV, TOKEN_SCHEME};
use super::{discovery_dir, process_is_gone, API_PREFIX, NOTE_HEADER};
use crate::control::knative;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("No emulator is running. Start one with `emulate run IMAGE` (or `emulate run -f service.yaml`), or point at one with --admin ADDR / EMULATE_ADMIN.")]
    NoEmulator,
    #[error("Several emulators are running (admin APIs at {0}); choose one with --admin ADDR or EMULATE_ADMIN.")]
    Ambiguous(String),
    #[error("--admin: '{0}' is not an address (HOST:PORT)")]
    BadAddress(String),
    #[error("{TOKEN_ENV}: not a token (it holds characters an HTTP header cannot carry)")]
    BadToken,
    #[error("cannot reach the emulator's admin API at {addr}: {cause}")]
    Unreachable { addr: SocketAddr, cause: String },
    /// The API answered with an error: its status code, reason and message.
    #[error("{message}")]
    Api {
        code: StatusCode,
        reason: String,
        message: String,
    },
}

pub struct AdminClient {
    addr: SocketAddr,
    /// The run's token; without it every request is answered 401, which says how to get it.
    token: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// One emulator's discovery file.
struct Announced {
    file: std::path::PathBuf,
    /// The emulator process that wrote the file.
    pid: Option<u32>,
    admin: SocketAddr,
    token: Option<String>,
}

fn is_header_safe(token: &str) -> bool {
    http::HeaderValue::from_str(&format!("{TOKEN_SCHEME} {token}")).is_ok()
}

/// The discovery files this user can read (others' are 0600).
fn announced() -> Vec<Announced> {
    let Ok(entries) = std::fs::read_dir(discovery_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let text = std::fs::read_to_string(entry.path()).ok()?;
            let value = serde_json::from_str::<serde_json::Value>(&text).ok()?;
            Some(Announced {
                file: entry.path(),
                pid: value["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
                admin: value["admin"].as_str()?.parse().ok()?,
                token: value["token"]
                    .as_str()
                    .filter(|t| is_header_safe(t))
                    .map(str::to_string),
            })
        })
        .collect()
}

/// A response's body and the notes the emulator attached to it.
pub struct Answer<T> {
    pub value: T,
    pub notes: Vec<String>,
}

impl AdminClient {
    /// Finds the emulator to talk to: an explicit address wins; else exactly one live
    /// emulator announced in the discovery directory. The token is `token` when given, else
    /// the one in the discovery file announcing the address.
    pub async fn find(
        explicit: Option<&str>,
        token: Option<String>,
    ) -> Result<AdminClient, ClientError> {
        let http = Client::builder(TokioExecutor::new()).build_http();
        let token = token.filter(|t| !t.is_empty());
        if token.as_deref().is_some_and(|t| !is_header_safe(t)) {
            return Err(ClientError::BadToken);
        }
        if let Some(addr) = explicit.filter(|a| !a.is_empty()) {
            let text = addr.trim_start_matches("http://").trim_end_matches('/');
            let addr: SocketAddr = text
                .replace("localhost:", "127.0.0.1:")
                .parse()
                .map_err(|_| ClientError::BadAddress(addr.to_string()))?;
            let addr = super::connectable(addr);
            // A file left by a killed emulator may announce the same (reused) port: only a
            // live emulator's file counts.
            let token = token.or_else(|| {
                announced()
                    .into_iter()
                    .filter(|a| !a.pid.is_some_and(process_is_gone))
                    .find(|a| a.admin == addr)
                    .and_then(|a| a.token)
            });
            return Ok(AdminClient { addr, token, http });
        }
        let mut live = Vec::new();
        for announced in announced() {
            let client = AdminClient {
                addr: announced.admin,
                token: token.clone().or(announced.token),
                http: http.clone(),
            };
            if client.healthy().await {
                live.push(client);
            } else if announced.pid.is_some_and(process_is_gone) {
                // The emulator that wrote it is gone. One that is only slow to answer (a
                // loaded machine) keeps its file.
                let _ = std::fs::remove_file(&announced.file);
            }
        }
        match live.len() {
            0 => Err(ClientError::NoEmulator),
            1 => Ok(live.remove(0)),
            _ => Err(ClientError::Ambiguous(
                live.iter()
                    .map(|c| c.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    async fn healthy(&self) -> bool {
        let request = tokio::time::timeout(
            Duration::from_secs(2),
            self.send::<serde_json::Value>(Method::GET, "/healthz".to_string(), None),
        );
        matches!(request.await, Ok(Ok(_)))
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> http::Request<Full<Bytes>> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.token {
            request = request.header(
                http::header::AUTHORIZATION,
                format!("{TOKEN_SCHEME} {token}"),
            );
        }
        request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("a valid request")
    }

    fn unreachable(&self, cause: String) -> ClientError {
        ClientError::Unreachable {
            addr: self.addr,
            cause,
        }
    }

    /// An error answer's `Status` document as a [`ClientError::Api`].
    fn api_error(code: StatusCode, bytes: &[u8]) -> ClientError {
        let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        ClientError::Api {
            code,
            reason: value["reason"].as_str().unwrap_or("").to_string(),
            message: value["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned()),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
    ) -> Result<Answer<T>, ClientError> {
        let request = self.request(method, &path, body);
        let unreachable = |cause: String| self.unreachable(cause);
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| unreachable(format!("{e}")))?;
        let code = response.status();
        let notes = response
            .headers()
            .get_all(NOTE_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        if !code.is_success() {
            return Err(Self::api_error(code, &bytes));
        }
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| unreachable(format!("unexpected answer: {e}")))?;
        Ok(Answer { value, notes })
    }

    fn path(collection: &str, name: Option<&str>) -> String {
        match name {
            Some(name) => format!("{API_PREFIX}default/{collection}/{name}"),
            None => format!("{API_PREFIX}default/{collection}"),
        }
    }

    /// The service, or None when it does not exist.
    pub async fn get_service(&self, name: &str) -> Result<Option<knative::Service>, ClientError> {
        match self
            .send(Method::GET, Self::path("services", Some(name)), None)
            .await
        {
            Ok(answer) => Ok(Some(answer.value)),
            Err(ClientError::Api {
                code: StatusCode::NOT_FOUND,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn list_services(&self) -> Result<Vec<knative::Service>, ClientError> {
        let list: Answer<knative::List<knative::Service>> = self
            .send(Method::GET, Self::path("services", None), None)
            .await?;
        Ok(list.value.items)
    }

    /// Creates or replaces a service; returns when its new revision is ready (or failed).
    pub async fn put_service(
        &self,
        service: &knative::Service,
    ) -> Result<Answer<knative::Service>, ClientError> {
        let name = service.metadata.name.clone().unwrap_or_default();
        let body = serde_json::to_vec(service).expect("a Service serializes");
        self.send(Method::PUT, Self::path("services", Some(&name)), Some(body))
            .await
    }

    pub async fn delete_service(&self, name: &str) -> Result<(), ClientError> {
        self.send::<serde_json::Value>(Method::DELETE, Self::path("services", Some(name)), None)
            .await
            .map(|_| ())
    }

    pub async fn list_revisions(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<knative::Revision>, ClientError> {
        let mut path = Self::path("revisions", None);
        if let Some(service) = service {
            path.push_str(&format!(
                "?labelSelector={}={service}",
                knative::LABEL_SERVICE
            ));
        }
        let list: Answer<knative::List<knative::Revision>> =
            self.send(Method::GET, path, None).await?;
        Ok(list.value.items)
    }

    pub async fn get_revision(&self, name: &str) -> Result<knative::Revision, ClientError> {
        Ok(self
            .send(Method::GET, Self::path("revisions", Some(name)), None)
            .await?
            .value)
    }

    /// Reads the recent log (`query` as `/emulate/v1/logs` takes it), calling `each` with
    /// every line (a Cloud Logging entry as JSON) as it arrives; with `follow=true` until the
    /// emulator stops.
    pub async fn logs(&self, query: &str, mut each: impl FnMut(&str)) -> Result<(), ClientError> {
        let path = format!("{}?{query}", super::logs::PATH);
        let request = self.request(Method::GET, &path, None);
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| self.unreachable(format!("{e}")))?;
        let code = response.status();
        let mut body = response.into_body();
        if !code.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| self.unreachable(e.to_string()))?
                .to_bytes();
            return Err(Self::api_error(code, &bytes));
        }
        let mut lines = crate::logs::LineSplitter::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.unreachable(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                lines.push(data, &mut each);
            }
        }
        lines.finish(&mut each);
        Ok(())
    }

    pub async fn delete_revision(&self, name: &str) -> Result<(), ClientError> {
        self.send::<serde_json::Value>(Method::DELETE, Self::path("revisions", Some(name)), None)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::process_is_gone;

    #[test]
    fn live_processes_are_not_gone_and_reaped_or_zombie_ones_are() {
        assert!(!process_is_gone(std::process::id()));
        // A child that exited but was not waited for is a zombie: gone, though its pid exists.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !process_is_gone(pid) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "pid {pid} never ended"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        child.wait().unwrap();
        assert!(process_is_gone(pid));
    }
}
