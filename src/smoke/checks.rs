//! The checks of `emulate smoke`: reading a checks file (`--checks smoke.yaml`) and the quick
//! flags into requests and expectations, and judging what a request got back.
//!
//! A checks file is YAML (JSON is YAML too):
//!
//! ```yaml
//! checks:
//!   - name: home page
//!     request: {method: GET, path: /, headers: {Accept: text/html}}
//!     expect:
//!       status: 200                       # or a class like 2xx, or a list like [200, 204]
//!       bodyContains: Hello               # a string or a list of strings
//!       bodyMatches: 'K_REVISION=\w+'     # a regex or a list of regexes
//!       headers: {Content-Type: text/html}
//!       latencyBelow: 500ms               # units ms, s, m and h (1m30s, 1.5s)
//!   - name: items API
//!     request: GET /api/items?limit=1     # "METHOD /path" is short for {method, path}
//!     expect:
//!       status: [200, 203]
//!       json: {"$.service": "hello", "$.items[0].id": 3}
//!   - name: create an item
//!     request:
//!       method: POST
//!       path: /api/items
//!       headers: {Content-Type: application/json}
//!       body: '{"name": "widget"}'
//!     expect: {status: 2xx, bodyContains: [widget, '"id"']}
//!   - name: cold start
//!     coldStart: {firstByteBelow: 3s}
//!     request: {path: /}
//!   - name: burst
//!     concurrent: {requests: 50}
//!     request: {path: /api}
//!     expect: {status: 2xx}
//!   - name: survives a revision switch
//!     revisionSwitch: {image: my-app:v2, requestsPerSecond: 50}
//!     expect: {status: 2xx}
//! ```
//!
//! The keys, all optional but `checks`, `name` and the scenarios' own required keys:
//!
//! ```text
//! checks              the list of checks, run in order
//!   name              required and unique: the check's name in reports
//!   request           what to send, as a mapping or as "METHOD /path"; default GET /
//!     method          default GET; written in any case, sent upper-cased
//!     path            default /; it may carry a query string
//!     headers         {Name: value}
//!     body            text sent as the body
//!     tag             send through this traffic tag's URL instead of the service's
//!   expect            what must come back; default: any status below 500
//!     status          200, a class like 2xx, or a list like [200, 204]; default < 500
//!     bodyContains    text that must occur in the body; or a list, all of which must
//!     bodyMatches     a regex that must match somewhere in the body; or a list
//!     json            {JSON path: value}: the body is JSON holding that value at that path;
//!                     paths look like $.items[0].id ("$." is optional, ["odd.key"] quotes)
//!     headers         {Name: text}: the header is present and a value contains the text
//!                     (the name in any case; "" only asks that the header is present)
//!     latencyBelow    the whole request, sent to last byte received, takes less than this
//!   scenarios, at most one per check; without one a check sends its request once:
//!   coldStart         {firstByteBelow: 3s}: scale to zero, then send the request once
//!   concurrent        {requests: 50}: send the request 1 to 10000 times at once; all must pass
//!   revisionSwitch    {image: my-app:v2, requestsPerSecond: 20}: deploy a second revision
//!                     while requests flow (20 a second unless told); none may fail
//! ```
//!
//! Unknown keys are errors, so a typo fails the CI run instead of silently checking less.
//! Every error names the field it is about, like
//! `checks[1].expect.status: expected a status code like 200 or a class like 2xx, found "2xz"`.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

mod json_path;
mod raw;

use super::report::format_duration;
use crate::config::{self, serde_errors, DurationError, FieldError};
pub use json_path::json_path;
use json_path::{json_equal, parse_json_path};
use raw::RawFile;

/// The most requests a `concurrent` check may send at once. More would measure the machine
/// running CI rather than the service.
pub const MAX_CONCURRENT_REQUESTS: u32 = 10_000;
/// The most requests a second a `revisionSwitch` check may send, for the same reason.
pub const MAX_REQUESTS_PER_SECOND: u32 = 1_000;
/// The rate of a `revisionSwitch` check that does not give one: enough that a switch which
/// drops requests for even a tenth of a second is caught.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 20;

/// A parsed checks file.
#[derive(Clone, Debug)]
pub struct ChecksFile {
    pub checks: Vec<Check>,
}

/// One named check: what to do, what to send and what must come back.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub scenario: Scenario,
    pub request: RequestSpec,
    pub expect: Expect,
}

/// How a check's request is sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Scenario {
    /// Once, to a service that is already up.
    #[default]
    Request,
    /// Once, after the service has scaled to zero, so an instance must start to answer it.
    ColdStart { first_byte_below: Option<Duration> },
    /// `requests` copies at once; every response must meet the expectations.
    Concurrent { requests: u32 },
    /// Steadily while a second revision of `image` is deployed and takes the traffic; every
    /// response must meet the expectations.
    RevisionSwitch {
        image: String,
        requests_per_second: u32,
    },
}

/// The request a check sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSpec {
    pub method: Method,
    /// The path and query, always starting with `/`.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<String>,
    /// A traffic tag whose URL the request goes through.
    pub tag: Option<String>,
}

impl Default for RequestSpec {
    fn default() -> Self {
        RequestSpec {
            method: Method::GET,
            path: "/".to_string(),
            headers: Vec::new(),
            body: None,
            tag: None,
        }
    }
}

impl fmt::Display for RequestSpec {
    /// `GET /api`, as a report names the request.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// The statuses a check accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusExpect {
    /// Any of these codes.
    Exact(Vec<u16>),
    /// Any code of this class: 2 is 2xx.
    Class(u8),
    /// Any code below this one; the default is `Below(500)`, "the server did not fail".
    Below(u16),
}

const STATUS_HINT: &str = "expected a status code like 200 or a class like 2xx";

impl StatusExpect {
    /// Reads `200`, `2xx`, `200,204` or `<500`, the forms a flag can carry.
    pub fn parse(text: &str) -> Result<StatusExpect, String> {
        let text = text.trim();
        if let Some(below) = text.strip_prefix('<') {
            return status_code(below.trim()).map(StatusExpect::Below);
        }
        if text.contains(',') {
            return text
                .split(',')
                .map(|code| status_code(code.trim()))
                .collect::<Result<Vec<_>, _>>()
                .map(StatusExpect::Exact);
        }
        if let Some(class) = status_class(text) {
            return Ok(StatusExpect::Class(class));
        }
        status_code(text).map(|code| StatusExpect::Exact(vec![code]))
    }

    pub fn matches(&self, status: u16) -> bool {
        match self {
            StatusExpect::Exact(codes) => codes.contains(&status),
            StatusExpect::Class(class) => status / 100 == u16::from(*class),
            StatusExpect::Below(limit) => status < *limit,
        }
    }

    /// `200`, `200 or 204`, `2xx`, `< 500`: the words after "expected".
    pub fn describe(&self) -> String {
        match self {
            StatusExpect::Exact(codes) => {
                let codes: Vec<String> = codes.iter().map(u16::to_string).collect();
                match codes.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        format!("{} or {last}", rest.join(", "))
                    }
                    _ => codes.join(""),
                }
            }
            StatusExpect::Class(class) => format!("{class}xx"),
            StatusExpect::Below(limit) => format!("< {limit}"),
        }
    }
}

fn status_class(text: &str) -> Option<u8> {
    match text.as_bytes() {
        [digit @ b'1'..=b'5', x1, x2]
            if x1.eq_ignore_ascii_case(&b'x') && x2.eq_ignore_ascii_case(&b'x') =>
        {
            Some(digit - b'0')
        }
        _ => None,
    }
}

fn status_code(text: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{STATUS_HINT}, found {text:?}"));
    }
    match text.parse::<u16>() {
        Ok(code @ 100..=599) => Ok(code),
        _ => Err(format!(
            "expected a status code from 100 to 599, found {text}"
        )),
    }
}

/// What a check expects of each response.
#[derive(Clone, Debug)]
pub struct Expect {
    pub status: StatusExpect,
    pub body_contains: Vec<String>,
    pub body_matches: Vec<Regex>,
    /// JSON paths, as written, and the values they must hold.
    pub json: Vec<(String, Value)>,
    /// Headers that must be present with a value containing the text.
    pub headers: Vec<(HeaderName, String)>,
    pub latency_below: Option<Duration>,
}

impl Default for Expect {
    fn default() -> Self {
        Expect {
            status: StatusExpect::Below(500),
            body_contains: Vec::new(),
            body_matches: Vec::new(),
            json: Vec::new(),
            headers: Vec::new(),
            latency_below: None,
        }
    }
}

/// What a request got back.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
    /// From sending the request to receiving the last byte of the body.
    pub latency: Duration,
    /// From sending the request to receiving the response head.
    pub first_byte: Duration,
}

/// How much of a JSON value a message quotes; a whole document would bury the point.
const MAX_QUOTED_CHARS: usize = 120;

impl Expect {
    /// Every unmet expectation as one readable line ("status 503, expected 2xx"; "body does
    /// not contain \"Hello\""; "$.service is \"x\", expected \"hello\""; "latency 812 ms,
    /// expected below 500 ms"; a header missing or not containing its text). Empty = passed.
    pub fn verify(&self, observed: &Observed) -> Vec<String> {
        let mut unmet = Vec::new();
        if !self.status.matches(observed.status) {
            unmet.push(format!(
                "status {}, expected {}",
                observed.status,
                self.status.describe()
            ));
        }
        // Bodies are matched as text; bytes that are not UTF-8 cannot match any pattern.
        let body = String::from_utf8_lossy(&observed.body);
        for text in &self.body_contains {
            if !body.contains(text.as_str()) {
                unmet.push(format!("body does not contain {text:?}"));
            }
        }
        for regex in &self.body_matches {
            if !regex.is_match(&body) {
                unmet.push(format!("body does not match /{}/", regex.as_str()));
            }
        }
        if !self.json.is_empty() {
            self.verify_json(&observed.body, &mut unmet);
        }
        for (name, text) in &self.headers {
            verify_header(&observed.headers, name, text, &mut unmet);
        }
        if let Some(limit) = self.latency_below {
            if observed.latency >= limit {
                unmet.push(format!(
                    "latency {}, expected below {}",
                    format_duration(observed.latency),
                    format_duration(limit)
                ));
            }
        }
        unmet
    }

    fn verify_json(&self, body: &[u8], unmet: &mut Vec<String>) {
        let document: Value = match serde_json::from_slice(body) {
            Ok(document) => document,
            Err(e) => {
                let paths: Vec<&str> = self.json.iter().map(|(path, _)| path.as_str()).collect();
                unmet.push(format!(
                    "body is not JSON ({e}), so {} cannot be checked",
                    paths.join(", ")
                ));
                return;
            }
        };
        for (path, expected) in &self.json {
            match json_path(&document, path) {
                None => unmet.push(format!(
                    "{path} is missing, expected {}",
                    quote_json(expected)
                )),
                Some(found) if !json_equal(found, expected) => unmet.push(format!(
                    "{path} is {}, expected {}",
                    quote_json(found),
                    quote_json(expected)
                )),
                Some(_) => {}
            }
        }
    }
}

/// A header must be present, and one of its values contain `text`.
fn verify_header(headers: &HeaderMap, name: &HeaderName, text: &str, unmet: &mut Vec<String>) {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .collect();
    if values.is_empty() {
        unmet.push(if text.is_empty() {
            format!("header {name} is missing")
        } else {
            format!("header {name} is missing, expected it to contain {text:?}")
        });
    } else if !values.iter().any(|value| value.contains(text)) {
        unmet.push(format!(
            "header {name} is {:?}, expected it to contain {text:?}",
            values.join(", ")
        ));
    }
}

impl Check {
    /// [`Expect::verify`], plus the first-byte limit of a cold start.
    pub fn verify(&self, observed: &Observed) -> Vec<String> {
        let mut unmet = self.expect.verify(observed);
        if let Scenario::ColdStart {
            first_byte_below: Some(limit),
        } = self.scenario
        {
            if observed.first_byte >= limit {
                unmet.push(format!(
                    "first byte after {}, expected below {}",
                    format_duration(observed.first_byte),
                    format_duration(limit)
                ));
            }
        }
        unmet
    }
}

/// The start of a body as quotable text, for a report that wants to show what came back.
pub fn body_excerpt(body: &[u8], max_chars: usize) -> String {
    truncate(&String::from_utf8_lossy(body), max_chars)
}

fn quote_json(value: &Value) -> String {
    truncate(&value.to_string(), MAX_QUOTED_CHARS)
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

const DURATION_HINT: &str = "expected a duration like 500ms, 2s or 1m";

/// Reads a duration in the grammar of [`config::duration`] (`500ms`, `2s`, `1.5s`, `1m`,
/// `1m30s`), but with a unit: a bare `500` in a latency limit is more likely meant as
/// milliseconds than as the seconds it would be in a flag.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if config::is_bare_number(text) {
        return Err(format!(
            "{DURATION_HINT}, found {text:?} (add a unit: ms, s or m)"
        ));
    }
    config::duration(text).map_err(|e| match e {
        DurationError::Malformed => format!("{DURATION_HINT}, found {text:?}"),
        DurationError::OutOfRange => format!("{text:?} is too long a duration"),
    })
}

/// Reads `--request 'METHOD /path'`, or just `/path` for a GET.
pub fn parse_request_line(text: &str) -> Result<(Method, String), String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (method, path) = match words.as_slice() {
        [path] => (Method::GET, *path),
        [method, path] => (parse_method(method)?, *path),
        _ => {
            return Err(format!(
                "expected a request like \"GET /\" or \"/api\", found {:?}",
                text.trim()
            ))
        }
    };
    check_path(path)?;
    Ok((method, path.to_string()))
}

/// Reads `--header 'Name: value'` and `--expect-header 'Name: value'`.
pub fn parse_header_line(text: &str) -> Result<(HeaderName, String), String> {
    let Some((name, value)) = text.split_once(':') else {
        return Err(format!(
            "expected a header like \"Accept: text/html\", found {:?}",
            text.trim()
        ));
    };
    let value = value.trim();
    parse_header_value(value)?;
    Ok((parse_header_name(name.trim())?, value.to_string()))
}

/// Methods are tokens; they are upper-cased because `get` is, to HTTP, a method of its own
/// that no server implements.
fn parse_method(text: &str) -> Result<Method, String> {
    Method::from_bytes(text.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("expected an HTTP method like GET or POST, found {text:?}"))
}

fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "expected a path that starts with /, found {path:?}"
        ));
    }
    if path.contains('#') {
        return Err(format!(
            "{path:?} has a #fragment, which is never sent to a server; remove it"
        ));
    }
    path.parse::<http::uri::PathAndQuery>()
        .map(|_| ())
        .map_err(|e| format!("{path:?} is not a valid request path: {e}"))
}

fn parse_header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))
}

fn parse_header_value(value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value).map_err(|_| {
        format!("{value:?} is not a valid header value (printable ASCII only, no line breaks)")
    })
}

/// Parses a checks file, naming the field of any error.
pub fn parse_checks_file(text: &str) -> Result<ChecksFile, FieldError> {
    // Size and nesting first: the YAML parser is slow on deep flow nesting.
    crate::config::check_document(text).map_err(|m| FieldError::new("(document)", m))?;
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    let raw: RawFile = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        serde_errors::field_error(&path, &e.into_inner().to_string())
    })?;
    if raw.checks.is_empty() {
        return Err(FieldError::new(
            "checks",
            "the list is empty; a smoke test that checks nothing would always pass",
        ));
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut checks = Vec::with_capacity(raw.checks.len());
    for (i, raw) in raw.checks.into_iter().enumerate() {
        let at = format!("checks[{i}]");
        if raw.name.trim().is_empty() {
            return Err(FieldError::new(format!("{at}.name"), "must not be empty"));
        }
        if let Some(&first) = names.get(&raw.name) {
            return Err(FieldError::new(
                format!("{at}.name"),
                format!(
                    "duplicate name {:?}: checks[{first}] has it too; names must be unique",
                    raw.name
                ),
            ));
        }
        names.insert(raw.name.clone(), i);
        checks.push(raw.build(&at)?);
    }
    Ok(ChecksFile { checks })
}

#[cfg(test)]
mod tests;
