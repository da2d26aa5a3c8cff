//! The metadata server every instance can reach, as Cloud Run's (offline mode): the project,
//! the region, the instance and its service account with an opaque access token, under
//! `/computeMetadata/v1/`. Google's client libraries find it through `GCE_METADATA_HOST`.
//!
//! The rules are the real server's (Compute Engine's "About VM metadata" and Cloud Run's
//! "Container runtime contract"; google-auth-library-python's `compute_engine/_metadata.py` as
//! the client): `Metadata-Flavor: Google` is required under `/computeMetadata/v1/` (403
//! otherwise) and carried by every answer; a request with `X-Forwarded-For` is refused;
//! unknown paths are 404; `?recursive=true` answers a directory as JSON (camelCase keys) and
//! `?alt=json|text` picks the format; text answers are `application/text`, JSON ones
//! `application/json` (the client parses JSON on that content type only).
//!
//! `identity?audience=AUD` answers an ID token signed with the emulator's key
//! (`identity.rs`); that key's certs are served at `/oauth2/v3/certs` (JWKS) and
//! `/oauth2/v1/certs` (PEM), so apps that verify tokens can be pointed there.
//!
//! Access tokens are opaque (offline, the default) or, with `--credentials adc`, real ones
//! from the host's Application Default Credentials (`adc.rs`); both are cached the same way.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::FieldError;
use crate::events::{Event, Events};

pub mod adc;
pub mod identity;
pub use adc::{AdcFile, AdcTokens};
pub use identity::IdentityKey;

/// The project id used when neither `--project` nor the environment names one.
pub const LOCAL_PROJECT: &str = "emulate-local";
/// The region used when `--region` is not given.
pub const DEFAULT_REGION: &str = "us-central1";
/// The env vars every container gets, naming the server's `host:port` (google-auth reads
/// both: `GCE_METADATA_HOST` for requests, `GCE_METADATA_IP` for its "am I on Google" ping).
pub const HOST_ENV: [&str; 2] = ["GCE_METADATA_HOST", "GCE_METADATA_IP"];

/// How long an access token lives, and how close to its expiry the server hands out a new
/// one (until then every request gets the same token, its `expires_in` counting down).
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Cloud Run's default scope for the service account's tokens.
const SCOPES: &[&str] = &["https://www.googleapis.com/auth/cloud-platform"];

/// What the server says about the project and its one identity: plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataConfig {
    pub project_id: String,
    pub region: String,
    /// The service account's email; `None` means the credential's own (a service account
    /// key's, with `--credentials adc`), else the project's default compute account.
    pub service_account: Option<String>,
    /// Where access tokens come from.
    pub credentials: Credentials,
}

/// Where the access tokens come from (`--credentials`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Credentials {
    /// Opaque tokens made here, which Google's local emulators accept.
    #[default]
    Offline,
    /// Real tokens from the host's Application Default Credentials, in this file.
    Adc(AdcFile),
}

/// Where the project id came from, for messages about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectSource {
    Flag,
    Env(&'static str),
    /// gcloud's active configuration, in this file.
    Gcloud(PathBuf),
    Local,
}

impl std::fmt::Display for ProjectSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProjectSource::Flag => f.write_str("--project"),
            ProjectSource::Env(name) => write!(f, "{name}"),
            ProjectSource::Gcloud(path) => write!(f, "gcloud's configuration {}", path.display()),
            ProjectSource::Local => f.write_str("the local default"),
        }
    }
}

impl MetadataConfig {
    /// The settings from `--project`, `--region`, `--service-account` and the credentials,
    /// checked; `env` and `read` (a file's text, `None` when it cannot be read) give the
    /// project's defaults.
    pub fn from_flags(
        project: Option<String>,
        region: String,
        service_account: Option<String>,
        credentials: Credentials,
        env: impl Fn(&str) -> Option<String>,
        read: impl Fn(&Path) -> Option<String>,
    ) -> Result<Self, FieldError> {
        let (project_id, source) = Self::project_from(project, env, read);
        // Google's project id rules: 6 to 30 lowercase letters, digits and hyphens, starting
        // with a letter and not ending with a hyphen.
        let project_ok = (6..=30).contains(&project_id.len())
            && project_id.starts_with(|c: char| c.is_ascii_lowercase())
            && !project_id.ends_with('-')
            && project_id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !project_ok {
            let from = match source {
                ProjectSource::Flag => String::new(),
                other => format!(" (from {other}; pass --project to choose another)"),
            };
            return Err(FieldError::new(
                "--project",
                format!("'{project_id}'{from} is not a project id: 6 to 30 lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen"),
            ));
        }
        let region_ok = !region.is_empty()
            && region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !region_ok {
            return Err(FieldError::new(
                "--region",
                format!("'{region}' is not a region (e.g. us-central1)"),
            ));
        }
        if let Some(email) = &service_account {
            let valid = email.split_once('@').is_some_and(|(name, domain)| {
                !name.is_empty()
                    && domain.contains('.')
                    && email
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "@.-_".contains(c))
            });
            if !valid {
                return Err(FieldError::new(
                    "--service-account",
                    format!("'{email}' is not a service account email (e.g. NAME@PROJECT.iam.gserviceaccount.com)"),
                ));
            }
            // The tokens are the credential's: a server must not name another identity.
            if let Credentials::Adc(file) = &credentials {
                if let Some(own) = file.email().filter(|own| own != email) {
                    return Err(FieldError::new(
                        "--service-account",
                        format!("'{email}' is not the identity of --credentials adc: its tokens are {own}'s ({}). Leave --service-account out, or give {own}", file.path.display()),
                    ));
                }
            }
        }
        Ok(MetadataConfig {
            project_id,
            region,
            service_account,
            credentials,
        })
    }

    /// The project id and where it came from: `--project`, else `GOOGLE_CLOUD_PROJECT`, else
    /// `CLOUDSDK_CORE_PROJECT`, else gcloud's active configuration (`gcloud config set
    /// project`), else [`LOCAL_PROJECT`]. Empty values are skipped.
    pub fn project_from(
        flag: Option<String>,
        env: impl Fn(&str) -> Option<String>,
        read: impl Fn(&Path) -> Option<String>,
    ) -> (String, ProjectSource) {
        let set = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
        if let Some(project) = set(flag) {
            return (project, ProjectSource::Flag);
        }
        for name in ["GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT"] {
            if let Some(project) = set(env(name)) {
                return (project, ProjectSource::Env(name));
            }
        }
        if let Some((project, path)) = gcloud_project(&env, &read) {
            return (project, ProjectSource::Gcloud(path));
        }
        (LOCAL_PROJECT.to_string(), ProjectSource::Local)
    }

    /// A stable 12-digit project number derived from the id (the real one is assigned by
    /// Google; apps only see it in `numeric-project-id` and resource names).
    pub fn project_number(&self) -> u64 {
        // FNV-1a: the same id gives the same number on every run and machine.
        let hash = self
            .project_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        100_000_000_000 + hash % 900_000_000_000
    }

    /// The service account's email: the configured one, else the credential's own (with
    /// `--credentials adc` and a service account), else Cloud Run's default, the project's
    /// Compute Engine default service account.
    pub fn email(&self) -> String {
        let own = match &self.credentials {
            Credentials::Adc(file) => file.email(),
            Credentials::Offline => None,
        };
        match (&self.service_account, own) {
            (Some(email), _) => email.clone(),
            (None, Some(email)) => email.to_string(),
            (None, None) => format!(
                "{}-compute@developer.gserviceaccount.com",
                self.project_number()
            ),
        }
    }
}

/// The project of gcloud's active configuration: `$CLOUDSDK_CONFIG` (else `~/.config/gcloud`)
/// `/configurations/config_NAME`, where NAME is `$CLOUDSDK_ACTIVE_CONFIG_NAME`, else the
/// `active_config` file's text, else `default`; the file is INI, the project `[core]`'s
/// `project` (https://cloud.google.com/sdk/docs/configurations; google-auth reads
/// `configurations/config_default`'s `[core] project` the same way). A file that is not INI is
/// ignored (and said at debug level).
fn gcloud_project(
    env: &impl Fn(&str) -> Option<String>,
    read: &impl Fn(&Path) -> Option<String>,
) -> Option<(String, PathBuf)> {
    let dir = adc::gcloud_config_dir(env)?;
    let set = |value: Option<String>| {
        value
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let name = set(env("CLOUDSDK_ACTIVE_CONFIG_NAME"))
        .or_else(|| set(read(&dir.join("active_config"))))
        .unwrap_or_else(|| "default".to_string());
    // gcloud's configuration names: lowercase letters, digits and hyphens.
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        tracing::debug!("gcloud's active configuration name '{name}' is not one; ignored");
        return None;
    }
    let path = dir.join("configurations").join(format!("config_{name}"));
    let text = read(&path)?;
    match ini_value(&text, "core", "project") {
        Ok(project) => project.map(|p| (p, path)),
        Err(line) => {
            tracing::debug!(
                "{}: line {line} is not INI; the file is ignored",
                path.display()
            );
            None
        }
    }
}

/// `key`'s value in `[section]` of an INI text as Python's configparser (gcloud's) reads it:
/// `key = value` or `key: value`, keys without regard to case, `#` and `;` comment lines.
/// `Err(line number)` for a line that is none of these.
fn ini_value(text: &str, section: &str, key: &str) -> Result<Option<String>, usize> {
    let mut current: Option<&str> = None;
    let mut found = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim());
            continue;
        }
        let split = line.find(['=', ':']).ok_or(number + 1)?;
        if current.is_none() {
            return Err(number + 1);
        }
        let (name, value) = (line[..split].trim(), line[split + 1..].trim());
        if current == Some(section) && name.eq_ignore_ascii_case(key) {
            found = Some(value.to_string()).filter(|v| !v.is_empty());
        }
    }
    Ok(found)
}

/// One node of the metadata tree.
#[derive(Clone, Debug)]
enum Node {
    /// Entries in the order the listing shows them (kebab-case names).
    Dir(Vec<(String, Node)>),
    Text(String),
    Number(u64),
    List(Vec<String>),
    /// The access token, fetched (and cached) only when asked for; never in a recursive
    /// answer, as on the real server.
    Token,
    /// An ID token, made for the audience asked for; never in a recursive answer.
    Identity,
}

/// The metadata server's state: its settings, the instance id and its access tokens.
#[derive(Debug)]
pub struct Metadata {
    config: MetadataConfig,
    instance_id: String,
    tokens: Tokens,
    key: Arc<IdentityKey>,
    events: Events,
}

/// Where a server's access tokens come from.
#[derive(Debug)]
enum Tokens {
    /// Opaque tokens, each server its own.
    Offline(TokenCache),
    /// The host's credentials, shared by every server of the emulator.
    Adc(Arc<AdcTokens>),
}

/// One access token at a time, as the real server keeps it: the same token while it has more
/// than the refresh margin left, then a new one; its remaining lifetime counts down.
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    /// Held across a fetch, so that requests arriving meanwhile wait for its token.
    cached: tokio::sync::Mutex<Option<CachedToken>>,
}

#[derive(Clone, Debug)]
struct CachedToken {
    value: String,
    expires: Instant,
}

impl TokenCache {
    /// The cached token and its remaining lifetime, or `fetch`'s (a token and its lifetime),
    /// which is kept.
    pub(crate) async fn get<F, E>(&self, fetch: impl FnOnce() -> F) -> Result<(String, Duration), E>
    where
        F: Future<Output = Result<(String, Duration), E>>,
    {
        let mut cached = self.cached.lock().await;
        let now = Instant::now();
        if let Some(token) = cached.as_ref() {
            let left = token.expires.saturating_duration_since(now);
            if left > TOKEN_REFRESH_MARGIN {
                return Ok((token.value.clone(), left));
            }
        }
        let (value, lifetime) = fetch().await?;
        *cached = Some(CachedToken {
            value: value.clone(),
            expires: Instant::now() + lifetime,
        });
        Ok((value, lifetime))
    }
}

/// One answer of the server, before it becomes an HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Metadata {
    /// A server whose access tokens come from `config.credentials` (its own, unshared).
    pub fn new(config: MetadataConfig, key: Arc<IdentityKey>) -> Self {
        let tokens = match &config.credentials {
            Credentials::Offline => None,
            Credentials::Adc(file) => Some(AdcTokens::new(file.clone())),
        };
        Self::with_tokens(config, key, tokens, Events::new())
    }

    /// A server handing out `adc`'s tokens when given (else opaque ones of its own); it says
    /// on `events` when it cannot get one.
    fn with_tokens(
        config: MetadataConfig,
        key: Arc<IdentityKey>,
        adc: Option<Arc<AdcTokens>>,
        events: Events,
    ) -> Self {
        Metadata {
            config,
            instance_id: hex(&rand::random::<[u8; 32]>()),
            tokens: match adc {
                Some(adc) => Tokens::Adc(adc),
                None => Tokens::Offline(TokenCache::default()),
            },
            key,
            events,
        }
    }

    pub fn config(&self) -> &MetadataConfig {
        &self.config
    }

    /// The access token and its remaining lifetime (see [`TokenCache`]), or the answer that
    /// says why there is none.
    async fn access_token(&self) -> Result<(String, Duration), Answer> {
        match &self.tokens {
            Tokens::Offline(cache) => {
                cache
                    .get(|| async {
                        // Opaque, in the shape of Google's access tokens: Google's local
                        // emulators (Pub/Sub, Firestore, Datastore, Spanner) accept any
                        // bearer token.
                        let token = format!("ya29.emulate.{}", hex(&rand::random::<[u8; 24]>()));
                        Ok::<_, Infallible>((token, TOKEN_LIFETIME))
                    })
                    .await
                    .map_err(|never| match never {})
            }
            Tokens::Adc(adc) => adc.token().await.map_err(|why| {
                let message = format!(
                    "--credentials adc: no access token from {}: {why}. {}.",
                    adc.file().path.display(),
                    adc::FIX
                );
                self.events.publish(Event::warning(message.clone()));
                Answer {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    content_type: "text/plain; charset=utf-8",
                    body: format!("{message}\n"),
                }
            }),
        }
    }

    fn account(&self) -> Node {
        Node::Dir(vec![
            ("aliases".into(), Node::List(vec!["default".into()])),
            ("email".into(), Node::Text(self.config.email())),
            ("identity".into(), Node::Identity),
            (
                "scopes".into(),
                Node::List(SCOPES.iter().map(|s| s.to_string()).collect()),
            ),
            ("token".into(), Node::Token),
        ])
    }

    /// The tree under `/computeMetadata/v1/`.
    fn tree(&self) -> Node {
        let number = self.config.project_number();
        let region = &self.config.region;
        Node::Dir(vec![
            (
                "instance".into(),
                Node::Dir(vec![
                    ("id".into(), Node::Text(self.instance_id.clone())),
                    (
                        "region".into(),
                        Node::Text(format!("projects/{number}/regions/{region}")),
                    ),
                    (
                        "service-accounts".into(),
                        Node::Dir(vec![
                            ("default".into(), self.account()),
                            (self.config.email(), self.account()),
                        ]),
                    ),
                    (
                        "zone".into(),
                        Node::Text(format!("projects/{number}/zones/{region}-1")),
                    ),
                ]),
            ),
            (
                "project".into(),
                Node::Dir(vec![
                    ("numeric-project-id".into(), Node::Number(number)),
                    (
                        "project-id".into(),
                        Node::Text(self.config.project_id.clone()),
                    ),
                ]),
            ),
        ])
    }

    /// Answers one request from its method, path, query and headers.
    pub async fn answer(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        headers: &HeaderMap,
    ) -> Answer {
        if headers.contains_key("x-forwarded-for") {
            // "Any requests that contain the header X-Forwarded-For are automatically rejected
            // by the metadata server" (https://cloud.google.com/compute/docs/metadata/querying-metadata);
            // the status and the second sentence are ours (the real answer is not documented).
            return google_error(
                StatusCode::FORBIDDEN,
                &format!("Your client does not have permission to get URL <code>{path}</code> from this server."),
                Some("Requests with an X-Forwarded-For header are refused."),
            );
        }
        if method != Method::GET && method != Method::HEAD {
            return google_error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("The request method <code>{method}</code> is inappropriate for the URL <code>{path}</code>."),
                None,
            );
        }
        // The two directories above v1 list without the header, as on the real server; the
        // certs are googleapis.com's, which need none either.
        match path {
            "/" => return text("computeMetadata/\n"),
            "/computeMetadata" | "/computeMetadata/" => return text("v1/\n"),
            "/oauth2/v3/certs" => return json_answer(&self.key.jwks()),
            "/oauth2/v1/certs" => return json_answer(&self.key.pem_certs()),
            _ => {}
        }
        let Some(rest) = path
            .strip_prefix("/computeMetadata/v1")
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        else {
            return not_found(path);
        };
        let flavored = headers
            .get("metadata-flavor")
            .is_some_and(|value| value.as_bytes() == b"Google");
        if !flavored {
            return google_error(
                StatusCode::FORBIDDEN,
                &format!("Your client does not have permission to get URL <code>{path}</code> from this server."),
                Some("Missing Metadata-Flavor:Google header."),
            );
        }
        let params = parse_query(query);
        let recursive = params.get("recursive").is_some_and(|v| v == "true");
        let alt = params.get("alt").map(String::as_str);
        if alt.is_some_and(|alt| alt != "json" && alt != "text") {
            return google_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "Invalid alt value <code>{}</code>: json or text.",
                    alt.unwrap_or("")
                ),
                None,
            );
        }
        let trailing = rest.ends_with('/');
        let mut node = self.tree();
        for segment in rest.split('/').filter(|s| !s.is_empty()) {
            let Node::Dir(entries) = node else {
                return not_found(path);
            };
            match entries.into_iter().find(|(name, _)| name == segment) {
                Some((_, child)) => node = child,
                None => return not_found(path),
            }
        }
        match node {
            Node::Dir(entries) => {
                if recursive {
                    let value = to_json(&Node::Dir(entries.clone()));
                    match alt {
                        Some("text") => text(&flatten(&value)),
                        _ => json_answer(&value),
                    }
                } else if alt == Some("json") {
                    json_answer(&Value::from(listing(&entries)))
                } else {
                    text(&listing(&entries).concat())
                }
            }
            _ if trailing => not_found(path),
            Node::Token => match self.access_token().await {
                Ok((token, left)) => json_answer(&json!({
                    "access_token": token,
                    "expires_in": left.as_secs(),
                    "token_type": "Bearer",
                })),
                Err(answer) => answer,
            },
            Node::Identity => self.identity(&params),
            leaf => match alt {
                Some("json") => json_answer(&to_json(&leaf)),
                _ => text(&leaf_text(&leaf)),
            },
        }
    }
}

impl Metadata {
    /// `identity?audience=AUD[&format=full[&licenses=TRUE]]`: an ID token for the account.
    fn identity(&self, params: &HashMap<String, String>) -> Answer {
        let audience = params.get("audience").map(|a| percent_decode(a));
        let Some(audience) = audience.filter(|a| !a.is_empty()) else {
            return Answer {
                status: StatusCode::BAD_REQUEST,
                content_type: "text/plain; charset=utf-8",
                body: "non-empty audience parameter required\n".to_string(),
            };
        };
        let extra = (params.get("format").map(String::as_str) == Some("full")).then(|| {
            let number = self.config.project_number();
            let mut engine = json!({
                "instance_id": self.instance_id,
                "project_id": self.config.project_id,
                "project_number": number,
                "zone": format!("{}-1", self.config.region),
            });
            if params
                .get("licenses")
                .is_some_and(|l| l.eq_ignore_ascii_case("true"))
            {
                engine["license_id"] = json!([]);
            }
            json!({"google": {"compute_engine": engine}})
        });
        let email = self.config.email();
        let token = self.key.id_token(
            &email,
            &identity::subject(&email),
            &audience,
            unix_now(),
            extra,
        );
        text(&token)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `%XX` escapes decoded (an audience is a URL, sent escaped); bad escapes kept as they are.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| value.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A directory's listing: one entry a line, directories with a trailing slash.
fn listing(entries: &[(String, Node)]) -> Vec<String> {
    entries
        .iter()
        .map(|(name, node)| match node {
            Node::Dir(_) => format!("{name}/\n"),
            _ => format!("{name}\n"),
        })
        .collect()
}

fn leaf_text(node: &Node) -> String {
    match node {
        Node::Text(text) => text.clone(),
        Node::Number(n) => n.to_string(),
        Node::List(items) => items.iter().map(|i| format!("{i}\n")).collect(),
        Node::Dir(_) | Node::Token | Node::Identity => String::new(),
    }
}

/// A node as recursive JSON: keys in camelCase, as the real server writes them; the token
/// left out.
fn to_json(node: &Node) -> Value {
    match node {
        Node::Dir(entries) => Value::Object(
            entries
                .iter()
                .filter(|(_, node)| !matches!(node, Node::Token | Node::Identity))
                .map(|(name, node)| (camel(name), to_json(node)))
                .collect(),
        ),
        Node::Text(text) => Value::from(text.clone()),
        Node::Number(n) => Value::from(*n),
        Node::List(items) => Value::from(items.clone()),
        Node::Token | Node::Identity => Value::Null,
    }
}

/// `numeric-project-id` → `numericProjectId`; an email key is kept as it is.
fn camel(name: &str) -> String {
    if name.contains('@') {
        return name.to_string();
    }
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `?recursive=true&alt=text`: one `path value` line per leaf.
fn flatten(value: &Value) -> String {
    fn walk(prefix: &str, value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}/{key}")
                    };
                    walk(&path, value, out);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(&format!("{prefix}/{i}"), item, out);
                }
            }
            Value::String(s) => out.push_str(&format!("{prefix} {s}\n")),
            other => out.push_str(&format!("{prefix} {other}\n")),
        }
    }
    let mut out = String::new();
    walk("", value, &mut out);
    out
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            (key.to_string(), value.to_string())
        })
        .collect()
}

fn text(body: &str) -> Answer {
    Answer {
        status: StatusCode::OK,
        content_type: "application/text",
        body: body.to_string(),
    }
}

fn json_answer(value: &Value) -> Answer {
    Answer {
        status: StatusCode::OK,
        content_type: "application/json",
        body: value.to_string(),
    }
}

fn not_found(path: &str) -> Answer {
    google_error(
        StatusCode::NOT_FOUND,
        &format!("The requested URL <code>{path}</code> was not found on this server."),
        None,
    )
}

/// The style of Google's error pages, as served.
const GOOGLE_ERROR_STYLE: &str = "*{margin:0;padding:0}html,code{font:15px/22px arial,sans-serif}html{background:#fff;color:#222;padding:15px}body{margin:7% auto 0;max-width:390px;min-height:180px;padding:30px 0 15px}* > body{background:url(//www.google.com/images/errors/robot.png) 100% 5px no-repeat;padding-right:205px}p{margin:11px 0 22px;overflow:hidden}ins{color:#777;text-decoration:none}a img{border:0}@media screen and (max-width:772px){body{background:none;margin-top:0;max-width:none;padding-right:0}}#logo{background:url(//www.google.com/images/branding/googlelogo/1x/googlelogo_color_150x54dp.png) no-repeat;margin-left:-5px}@media only screen and (min-resolution:192dpi){#logo{background:url(//www.google.com/images/branding/googlelogo/2x/googlelogo_color_150x54dp.png) no-repeat 0% 0%/100% 100%;-moz-border-image:url(//www.google.com/images/branding/googlelogo/2x/googlelogo_color_150x54dp.png) 0}}@media only screen and (-webkit-min-device-pixel-ratio:2){#logo{background:url(//www.google.com/images/branding/googlelogo/2x/googlelogo_color_150x54dp.png) no-repeat;-webkit-background-size:100% 100%}}#logo{display:inline-block;height:54px;width:150px}";

/// Google's error page, byte for byte as Compute Engine's metadata server sends it: `message`,
/// then `detail` after one space, then "That’s all we know." (two spaces after a message
/// alone). Checked against real answers' Content-Length: the 404 for
/// `/computeMetadata/v1/universe/universe_domain` is 1604 bytes
/// (https://github.com/googleapis/gcp-metadata/issues/657) and the 403 without the flavor
/// header for `/computeMetadata/v1/instance/name` 1649
/// (https://github.com/salrashid123/gce_metadata_server/pull/11); both pages come out so here.
fn google_error(status: StatusCode, message: &str, detail: Option<&str>) -> Answer {
    let code = status.as_u16();
    let reason = status.canonical_reason().unwrap_or("Error");
    let text = match detail {
        Some(detail) => format!("{message} {detail} "),
        None => format!("{message}  "),
    };
    Answer {
        status,
        content_type: "text/html; charset=UTF-8",
        body: format!(
            "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <meta name=viewport content=\"initial-scale=1, minimum-scale=1, width=device-width\">\n  <title>Error {code} ({reason})!!1</title>\n  <style>\n    {GOOGLE_ERROR_STYLE}\n  </style>\n  <a href=//www.google.com/><span id=logo aria-label=Google></span></a>\n  <p><b>{code}.</b> <ins>That’s an error.</ins>\n  <p>{text}<ins>That’s all we know.</ins>\n"
        ),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The metadata servers of one emulator: one per service account, each on its own port of
/// the same address, so a container's identity is the server its `GCE_METADATA_HOST` names
/// (service.yaml's `serviceAccountName` sets a service's; the others get `--service-account`'s).
#[derive(Clone, Debug)]
pub struct Servers {
    inner: Arc<ServersInner>,
}

#[derive(Debug)]
struct ServersInner {
    /// Where the servers listen.
    ip: std::net::IpAddr,
    /// How containers name that address (the IP, or `host.docker.internal`).
    host: String,
    settings: MetadataConfig,
    key: Arc<IdentityKey>,
    /// With `--credentials adc`, the host's tokens, which every server hands out.
    adc: Option<Arc<AdcTokens>>,
    events: Events,
    tasks: tokio_util::task::TaskTracker,
    stop: CancellationToken,
    /// `host:port` by service account email.
    endpoints: tokio::sync::Mutex<HashMap<String, String>>,
}

impl Servers {
    /// Starts the default account's server, so a bad address fails at start. The servers say
    /// on `events` when they cannot get an access token.
    pub async fn start(
        ip: std::net::IpAddr,
        host: String,
        settings: MetadataConfig,
        key: Arc<IdentityKey>,
        events: Events,
        tasks: tokio_util::task::TaskTracker,
        stop: CancellationToken,
    ) -> std::io::Result<Servers> {
        let adc = match &settings.credentials {
            Credentials::Adc(file) => Some(AdcTokens::new(file.clone())),
            Credentials::Offline => None,
        };
        let servers = Servers {
            inner: Arc::new(ServersInner {
                ip,
                host,
                settings,
                key,
                adc,
                events,
                tasks,
                stop,
                endpoints: tokio::sync::Mutex::new(HashMap::new()),
            }),
        };
        servers.endpoint(None).await?;
        Ok(servers)
    }

    /// The key ID tokens are signed with.
    pub fn key(&self) -> &Arc<IdentityKey> {
        &self.inner.key
    }

    /// The settings of the default account's server.
    pub fn settings(&self) -> &MetadataConfig {
        &self.inner.settings
    }

    /// The `host:port` of the server for `account` (an email, or a bare name, which Cloud Run
    /// reads as `NAME@PROJECT.iam.gserviceaccount.com`); `None` is the default account. The
    /// server starts on first use.
    pub async fn endpoint(&self, account: Option<&str>) -> std::io::Result<String> {
        let settings = &self.inner.settings;
        let email = match account.filter(|a| !a.is_empty()) {
            Some(name) if !name.contains('@') => {
                format!("{name}@{}.iam.gserviceaccount.com", settings.project_id)
            }
            Some(email) => email.to_string(),
            None => settings.email(),
        };
        let mut endpoints = self.inner.endpoints.lock().await;
        if let Some(endpoint) = endpoints.get(&email) {
            return Ok(endpoint.clone());
        }
        let listener = TcpListener::bind(std::net::SocketAddr::new(self.inner.ip, 0)).await?;
        let port = listener.local_addr()?.port();
        if let Some(adc) = &self.inner.adc {
            let own = adc.file().email().map(str::to_string);
            if own.as_ref().is_none_or(|own| *own != email) {
                let whose = own.unwrap_or_else(|| "the signed-in user".to_string());
                self.inner.events.publish(Event::warning(format!(
                    "service account {email}: with --credentials adc its containers get the access tokens of {whose} ({}), not {email}'s",
                    adc.file().path.display()
                )));
            }
        }
        let server = Metadata::with_tokens(
            MetadataConfig {
                service_account: Some(email.clone()),
                ..settings.clone()
            },
            self.inner.key.clone(),
            self.inner.adc.clone(),
            self.inner.events.clone(),
        );
        self.inner
            .tasks
            .spawn(serve(listener, Arc::new(server), self.inner.stop.clone()));
        let endpoint = format!("{}:{port}", self.inner.host);
        endpoints.insert(email, endpoint.clone());
        Ok(endpoint)
    }
}

/// The env that points a container at the server at `endpoint` (`host:port`).
pub fn container_env(endpoint: &str) -> Vec<(String, String)> {
    HOST_ENV
        .iter()
        .map(|name| (name.to_string(), endpoint.to_string()))
        .collect()
}

/// Serves the metadata server on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, metadata: Arc<Metadata>, shutdown: CancellationToken) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!("metadata server: accept failed: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let metadata = metadata.clone();
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let metadata = metadata.clone();
            async move {
                let answer = metadata
                    .answer(
                        request.method(),
                        request.uri().path(),
                        request.uri().query().unwrap_or(""),
                        request.headers(),
                    )
                    .await;
                Ok::<_, Infallible>(response(answer))
            }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = connection => if let Err(e) = result {
                    tracing::debug!("metadata server connection ended: {e}");
                },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn response(answer: Answer) -> Response<Full<Bytes>> {
    let html = answer.content_type.starts_with("text/html");
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    headers.insert("metadata-flavor", http::HeaderValue::from_static("Google"));
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(answer.content_type),
    );
    // Cloud Run's server names itself so (Compute Engine's "Metadata Server for VM", GKE's
    // "GKE Metadata Server"); agents such as Datadog's serverless one tell Cloud Run and
    // Cloud Functions apart from Compute Engine by this value.
    headers.insert(
        "server",
        http::HeaderValue::from_static("Metadata Server for Serverless"),
    );
    if html {
        // Compute Engine's error pages carry these (https://github.com/googleapis/gcp-metadata/issues/657).
        headers.insert("x-xss-protection", http::HeaderValue::from_static("0"));
        headers.insert(
            "x-frame-options",
            http::HeaderValue::from_static("SAMEORIGIN"),
        );
    }
    response
}

#[cfg(test)]
mod tests;
