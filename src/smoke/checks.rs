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

use super::report::format_duration;
use crate::config::{self, serde_errors, DurationError, FieldError};

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

/// Equality as a JSON reader sees it: `3` and `3.0` are the same number, though serde_json
/// keeps integers and floats apart.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, x)| y.get(key).is_some_and(|y| json_equal(x, y)))
        }
        _ => a == b,
    }
}

/// One step of a JSON path.
#[derive(Debug, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

const JSON_PATH_HINT: &str = "expected a JSON path like $.items[0].id";

/// Reads `$.a.b[0]`, `a.b[0]`, `$[0]`, `$["key.with.dots"]` and `$` (the whole document).
fn parse_json_path(path: &str) -> Result<Vec<Step>, String> {
    let rest = match path.strip_prefix('$') {
        Some(rest) => rest.to_string(),
        None if path.is_empty() => return Err(format!("{JSON_PATH_HINT}, found an empty path")),
        None if path.starts_with('[') || path.starts_with('.') => path.to_string(),
        // "$." is optional: `a.b` is `$.a.b`.
        None => format!(".{path}"),
    };
    let mut steps = Vec::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                let mut key = String::new();
                while let Some(&c) = chars.peek() {
                    if c == '.' || c == '[' {
                        break;
                    }
                    key.push(c);
                    chars.next();
                }
                if key.is_empty() {
                    return Err(format!("{JSON_PATH_HINT}, found an empty key in {path:?}"));
                }
                steps.push(Step::Key(key));
            }
            '[' => {
                let mut inner = String::new();
                let quote = chars.next_if(|&c| c == '"' || c == '\'');
                loop {
                    match chars.next() {
                        Some(c) if Some(c) == quote => {
                            if chars.next() != Some(']') {
                                return Err(format!(
                                    "{JSON_PATH_HINT}, found no ] after a quoted key in {path:?}"
                                ));
                            }
                            break;
                        }
                        Some(']') if quote.is_none() => break,
                        Some(c) => inner.push(c),
                        None => {
                            return Err(format!(
                                "{JSON_PATH_HINT}, found an unclosed [ in {path:?}"
                            ))
                        }
                    }
                }
                if quote.is_some() {
                    steps.push(Step::Key(inner));
                } else {
                    match inner.trim().parse::<usize>() {
                        Ok(index) => steps.push(Step::Index(index)),
                        Err(_) => {
                            return Err(format!(
                                "{JSON_PATH_HINT}, found [{inner}] in {path:?}: an index is a number from 0, a key is quoted"
                            ))
                        }
                    }
                }
            }
            other => {
                return Err(format!(
                    "{JSON_PATH_HINT}, found {other:?} where . or [ should be in {path:?}"
                ))
            }
        }
    }
    Ok(steps)
}

/// Looks up a JSON path ("$.a.b[0]", leading "$." optional) in a value. A path that does
/// not parse finds nothing; [`parse_checks_file`] rejects such paths up front.
pub fn json_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    parse_json_path(path)
        .ok()?
        .iter()
        .try_fold(value, |value, step| match step {
            Step::Key(key) => value.as_object()?.get(key),
            Step::Index(index) => value.as_array()?.get(*index),
        })
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

// The document as written. Values are kept as text here and checked in `build`, where an
// error can say exactly which field holds the bad value.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with a `checks:` list")]
struct RawFile {
    checks: Vec<RawCheck>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a check like {name: home page, request: GET /, expect: {status: 200}}"
)]
struct RawCheck {
    name: String,
    #[serde(default)]
    request: Option<RawRequest>,
    #[serde(default)]
    expect: Option<RawExpect>,
    #[serde(default, deserialize_with = "present")]
    cold_start: Option<RawColdStart>,
    #[serde(default, deserialize_with = "present")]
    concurrent: Option<RawConcurrent>,
    #[serde(default, deserialize_with = "present")]
    revision_switch: Option<RawRevisionSwitch>,
}

/// A scenario key written with nothing after it (`coldStart:`) still asks for the scenario;
/// plain `Option` would read it as absent and quietly run a different test.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(
        Option::<T>::deserialize(deserializer)?.unwrap_or_default(),
    ))
}

#[derive(Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping like {firstByteBelow: 3s}"
)]
struct RawColdStart {
    first_byte_below: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping like {requests: 50}")]
struct RawConcurrent {
    requests: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping like {image: my-app:v2, requestsPerSecond: 20}"
)]
struct RawRevisionSwitch {
    image: Option<String>,
    requests_per_second: Option<i64>,
}

enum RawRequest {
    Line(String),
    Fields(RawRequestFields),
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a request like {method: GET, path: /}"
)]
struct RawRequestFields {
    method: Option<String>,
    path: Option<String>,
    headers: Option<Pairs<String>>,
    body: Option<String>,
    tag: Option<String>,
}

impl<'de> Deserialize<'de> for RawRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RequestVisitor;
        impl<'de> Visitor<'de> for RequestVisitor {
            type Value = RawRequest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a request like {method: GET, path: /} or \"GET /\"")
            }
            fn visit_str<E: de::Error>(self, line: &str) -> Result<RawRequest, E> {
                Ok(RawRequest::Line(line.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRequest, A::Error> {
                RawRequestFields::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawRequest::Fields)
            }
        }
        deserializer.deserialize_any(RequestVisitor)
    }
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "expectations like {status: 200, bodyContains: Hello}"
)]
struct RawExpect {
    status: Option<RawStatus>,
    body_contains: Option<OneOrMany>,
    body_matches: Option<OneOrMany>,
    json: Option<Pairs<Value>>,
    headers: Option<Pairs<String>>,
    latency_below: Option<String>,
}

/// `200`, `2xx` or `[200, 204]`, as text to be checked.
enum RawStatus {
    One(String),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for RawStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StatusVisitor;
        impl<'de> Visitor<'de> for StatusVisitor {
            type Value = RawStatus;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a status code like 200, a class like 2xx or a list like [200, 204]")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawStatus, E> {
                Ok(RawStatus::One(text.to_string()))
            }
            fn visit_u64<E: de::Error>(self, code: u64) -> Result<RawStatus, E> {
                Ok(RawStatus::One(code.to_string()))
            }
            fn visit_i64<E: de::Error>(self, code: i64) -> Result<RawStatus, E> {
                Ok(RawStatus::One(code.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawStatus, A::Error> {
                let mut codes = Vec::new();
                while let Some(code) = seq.next_element::<Text>()? {
                    codes.push(code.0);
                }
                Ok(RawStatus::List(codes))
            }
        }
        deserializer.deserialize_any(StatusVisitor)
    }
}

/// A scalar as the text it was written as. YAML reads `200` and `true` as a number and a
/// boolean; where text is wanted, they are the text.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Text)
    }
}

/// A string, or a list of strings: one `bodyContains` or several.
struct OneOrMany {
    items: Vec<String>,
    /// Whether it was written as a list, so an error can name the item.
    list: bool,
}

impl OneOrMany {
    fn paths<'a>(&'a self, at: &'a str) -> impl Iterator<Item = (String, &'a String)> + 'a {
        self.items.iter().enumerate().map(move |(i, item)| {
            let path = if self.list {
                format!("{at}[{i}]")
            } else {
                at.to_string()
            };
            (path, item)
        })
    }
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;
        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany {
                    items: vec![text.to_string()],
                    list: false,
                })
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<OneOrMany, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<OneOrMany, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<OneOrMany, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<OneOrMany, E> {
                self.visit_str(&b.to_string())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Text>()? {
                    items.push(item.0);
                }
                Ok(OneOrMany { items, list: true })
            }
        }
        deserializer.deserialize_any(OneOrManyVisitor)
    }
}

/// A mapping kept in the order it was written, which is the order its checks report in.
/// A key given twice is an error rather than YAML's silent "last one wins".
struct Pairs<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Pairs<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for PairsVisitor<V> {
            type Value = Pairs<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping like {Name: value}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs<V>, A::Error> {
                let mut pairs: Vec<(String, V)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if pairs.iter().any(|(seen, _)| *seen == key) {
                        return Err(de::Error::custom(format!("key `{key}` is given twice")));
                    }
                    let value = map.next_value()?;
                    pairs.push((key, value));
                }
                Ok(Pairs(pairs))
            }
        }
        deserializer.deserialize_map(PairsVisitor(PhantomData))
    }
}

impl RawCheck {
    fn build(self, at: &str) -> Result<Check, FieldError> {
        let scenario = self.scenario(at)?;
        let request = match self.request {
            None => RequestSpec::default(),
            Some(request) => request.build(&format!("{at}.request"))?,
        };
        let expect = match self.expect {
            None => Expect::default(),
            Some(expect) => expect.build(&format!("{at}.expect"))?,
        };
        Ok(Check {
            name: self.name,
            scenario,
            request,
            expect,
        })
    }

    fn scenario(&self, at: &str) -> Result<Scenario, FieldError> {
        let given: Vec<&str> = [
            ("coldStart", self.cold_start.is_some()),
            ("concurrent", self.concurrent.is_some()),
            ("revisionSwitch", self.revision_switch.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, given)| given.then_some(key))
        .collect();
        if given.len() > 1 {
            return Err(FieldError::new(
                at,
                format!(
                    "a check runs one scenario, found {}; split it into one check each",
                    given.join(" and ")
                ),
            ));
        }
        if let Some(cold) = &self.cold_start {
            let first_byte_below = cold
                .first_byte_below
                .as_deref()
                .map(|text| threshold(&format!("{at}.coldStart.firstByteBelow"), text))
                .transpose()?;
            return Ok(Scenario::ColdStart { first_byte_below });
        }
        if let Some(concurrent) = &self.concurrent {
            let path = format!("{at}.concurrent.requests");
            let Some(requests) = concurrent.requests else {
                return Err(FieldError::new(
                    path,
                    "missing: say how many requests to send at once, like {requests: 50}",
                ));
            };
            let requests = in_range(&path, requests, MAX_CONCURRENT_REQUESTS)?;
            return Ok(Scenario::Concurrent { requests });
        }
        if let Some(switch) = &self.revision_switch {
            let image = switch.image.as_deref().map(str::trim).unwrap_or_default();
            if image.is_empty() {
                return Err(FieldError::new(
                    format!("{at}.revisionSwitch.image"),
                    "missing: name the image of the second revision, like {image: my-app:v2}",
                ));
            }
            let image = image.to_string();
            let requests_per_second = match switch.requests_per_second {
                None => DEFAULT_REQUESTS_PER_SECOND,
                Some(rate) => in_range(
                    &format!("{at}.revisionSwitch.requestsPerSecond"),
                    rate,
                    MAX_REQUESTS_PER_SECOND,
                )?,
            };
            return Ok(Scenario::RevisionSwitch {
                image,
                requests_per_second,
            });
        }
        Ok(Scenario::Request)
    }
}

fn in_range(path: &str, value: i64, max: u32) -> Result<u32, FieldError> {
    u32::try_from(value)
        .ok()
        .filter(|value| (1..=max).contains(value))
        .ok_or_else(|| FieldError::new(path, format!("expected 1 to {max}, found {value}")))
}

/// A time limit: a duration, and not zero, which no request could beat.
fn threshold(path: &str, text: &str) -> Result<Duration, FieldError> {
    match parse_duration(text) {
        Ok(limit) if limit.is_zero() => Err(FieldError::new(
            path,
            format!("{text:?} is a limit no request can meet; give more than 0"),
        )),
        Ok(limit) => Ok(limit),
        Err(message) => Err(FieldError::new(path, message)),
    }
}

impl RawRequest {
    fn build(self, at: &str) -> Result<RequestSpec, FieldError> {
        let fields = match self {
            RawRequest::Line(line) => {
                let (method, path) =
                    parse_request_line(&line).map_err(|message| FieldError::new(at, message))?;
                return Ok(RequestSpec {
                    method,
                    path,
                    ..RequestSpec::default()
                });
            }
            RawRequest::Fields(fields) => fields,
        };
        let mut request = RequestSpec::default();
        if let Some(method) = fields.method {
            request.method = parse_method(method.trim())
                .map_err(|message| FieldError::new(format!("{at}.method"), message))?;
        }
        if let Some(path) = fields.path {
            check_path(&path).map_err(|message| FieldError::new(format!("{at}.path"), message))?;
            request.path = path;
        }
        for (name, value) in fields.headers.map(|h| h.0).unwrap_or_default() {
            let path = format!("{at}.headers.{name}");
            let header = parse_header_name(name.trim())
                .map_err(|message| FieldError::new(&path, message))?;
            let value = parse_header_value(value.trim())
                .map_err(|message| FieldError::new(&path, message))?;
            request.headers.push((header, value));
        }
        request.body = fields.body;
        if let Some(tag) = fields.tag {
            if tag.trim().is_empty() {
                return Err(FieldError::new(
                    format!("{at}.tag"),
                    "must not be empty; leave tag out to use the service's own URL",
                ));
            }
            request.tag = Some(tag.trim().to_string());
        }
        Ok(request)
    }
}

impl RawExpect {
    fn build(self, at: &str) -> Result<Expect, FieldError> {
        let mut expect = Expect::default();
        if let Some(status) = self.status {
            let path = format!("{at}.status");
            expect.status = match status {
                RawStatus::One(text) => {
                    parse_status_field(&text).map_err(|message| FieldError::new(&path, message))?
                }
                RawStatus::List(codes) if codes.is_empty() => {
                    return Err(FieldError::new(
                        path,
                        "the list is empty; give at least one status code",
                    ))
                }
                RawStatus::List(codes) => {
                    let mut exact = Vec::with_capacity(codes.len());
                    for (i, code) in codes.iter().enumerate() {
                        let path = format!("{path}[{i}]");
                        if status_class(code.trim()).is_some() {
                            let message = format!(
                                "a list holds status codes only, found {code:?}; \
                                 write status: {code} on its own"
                            );
                            return Err(FieldError::new(path, message));
                        }
                        exact.push(
                            status_code(code.trim())
                                .map_err(|message| FieldError::new(path, message))?,
                        );
                    }
                    StatusExpect::Exact(exact)
                }
            };
        }
        if let Some(texts) = &self.body_contains {
            expect.body_contains = texts.items.clone();
        }
        if let Some(patterns) = &self.body_matches {
            for (path, pattern) in patterns.paths(&format!("{at}.bodyMatches")) {
                let regex = Regex::new(pattern)
                    .map_err(|e| FieldError::new(path, format!("not a valid regex: {e}")))?;
                expect.body_matches.push(regex);
            }
        }
        for (path, value) in self.json.map(|j| j.0).unwrap_or_default() {
            parse_json_path(&path)
                .map_err(|message| FieldError::new(format!("{at}.json[{path:?}]"), message))?;
            expect.json.push((path, value));
        }
        for (name, text) in self.headers.map(|h| h.0).unwrap_or_default() {
            let path = format!("{at}.headers.{name}");
            let header = parse_header_name(name.trim())
                .map_err(|message| FieldError::new(&path, message))?;
            parse_header_value(&text).map_err(|message| FieldError::new(&path, message))?;
            expect.headers.push((header, text));
        }
        if let Some(text) = &self.latency_below {
            expect.latency_below = Some(threshold(&format!("{at}.latencyBelow"), text)?);
        }
        Ok(expect)
    }
}

/// A status as written in a file: the forms of [`StatusExpect::parse`], but a list is
/// written as a YAML list, so a comma here is a typo.
fn parse_status_field(text: &str) -> Result<StatusExpect, String> {
    if text.contains(',') {
        return Err(format!(
            "{STATUS_HINT}, found {text:?}; write several as a list like [200, 204]"
        ));
    }
    StatusExpect::parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in this module's documentation, so the documented format cannot drift
    /// from the parsed one.
    fn doc_example() -> String {
        let source = include_str!("checks.rs");
        let lines: Vec<&str> = source
            .lines()
            .map_while(|line| line.strip_prefix("//!"))
            .skip_while(|line| line.trim() != "```yaml")
            .skip(1)
            .take_while(|line| line.trim() != "```")
            .map(|line| line.strip_prefix(' ').unwrap_or(line))
            .collect();
        lines.join("\n")
    }

    fn error(text: &str) -> String {
        parse_checks_file(text).unwrap_err().to_string()
    }

    fn observed(status: u16, body: &str) -> Observed {
        Observed {
            status,
            body: bytes::Bytes::from(body.to_string()),
            ..Observed::default()
        }
    }

    fn expect(text: &str) -> Expect {
        let file = parse_checks_file(&format!("checks:\n  - name: x\n    expect: {text}\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        file.checks.into_iter().next().unwrap().expect
    }

    #[test]
    fn the_documented_example_parses_into_the_right_values() {
        let example = doc_example();
        assert!(example.starts_with("checks:"), "{example}");
        let file = parse_checks_file(&example).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = file.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "home page",
                "items API",
                "create an item",
                "cold start",
                "burst",
                "survives a revision switch"
            ]
        );

        let home = &file.checks[0];
        assert_eq!(home.scenario, Scenario::Request);
        assert_eq!(home.request.method, Method::GET);
        assert_eq!(home.request.path, "/");
        assert_eq!(
            home.request.headers,
            [(http::header::ACCEPT, HeaderValue::from_static("text/html"))]
        );
        assert_eq!(home.request.body, None);
        assert_eq!(home.request.tag, None);
        assert_eq!(home.expect.status, StatusExpect::Exact(vec![200]));
        assert_eq!(home.expect.body_contains, ["Hello"]);
        let patterns: Vec<&str> = home.expect.body_matches.iter().map(Regex::as_str).collect();
        assert_eq!(patterns, [r"K_REVISION=\w+"]);
        assert_eq!(
            home.expect.headers,
            [(http::header::CONTENT_TYPE, "text/html".to_string())]
        );
        assert_eq!(home.expect.latency_below, Some(Duration::from_millis(500)));
        assert!(home.expect.json.is_empty());

        let items = &file.checks[1];
        assert_eq!(items.request.to_string(), "GET /api/items?limit=1");
        assert_eq!(items.expect.status, StatusExpect::Exact(vec![200, 203]));
        assert_eq!(
            items.expect.json,
            [
                ("$.service".to_string(), serde_json::json!("hello")),
                ("$.items[0].id".to_string(), serde_json::json!(3)),
            ]
        );
        assert_eq!(items.expect.latency_below, None);

        let create = &file.checks[2];
        assert_eq!(create.request.method, Method::POST);
        assert_eq!(create.request.path, "/api/items");
        assert_eq!(
            create.request.body.as_deref(),
            Some(r#"{"name": "widget"}"#)
        );
        assert_eq!(create.expect.status, StatusExpect::Class(2));
        assert_eq!(create.expect.body_contains, ["widget", "\"id\""]);

        let cold = &file.checks[3];
        assert_eq!(
            cold.scenario,
            Scenario::ColdStart {
                first_byte_below: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(cold.request, RequestSpec::default());
        assert_eq!(cold.expect.status, StatusExpect::Below(500));

        let burst = &file.checks[4];
        assert_eq!(burst.scenario, Scenario::Concurrent { requests: 50 });
        assert_eq!(burst.request.path, "/api");
        assert_eq!(burst.expect.status, StatusExpect::Class(2));

        let switch = &file.checks[5];
        assert_eq!(
            switch.scenario,
            Scenario::RevisionSwitch {
                image: "my-app:v2".to_string(),
                requests_per_second: 50
            }
        );
        assert_eq!(switch.request, RequestSpec::default());
    }

    #[test]
    fn defaults_fill_what_a_check_leaves_out() {
        let file = parse_checks_file(
            "checks:\n  - name: bare\n  - name: switch\n    revisionSwitch: {image: app:v2}\n  - name: cold\n    coldStart:\n",
        )
        .unwrap();
        let bare = &file.checks[0];
        assert_eq!(bare.scenario, Scenario::Request);
        assert_eq!(bare.request, RequestSpec::default());
        assert_eq!(bare.expect.status, StatusExpect::Below(500));
        assert!(bare.expect.body_contains.is_empty() && bare.expect.latency_below.is_none());
        assert_eq!(
            file.checks[1].scenario,
            Scenario::RevisionSwitch {
                image: "app:v2".to_string(),
                requests_per_second: DEFAULT_REQUESTS_PER_SECOND
            }
        );
        // `coldStart:` with nothing after it still asks for a cold start.
        assert_eq!(
            file.checks[2].scenario,
            Scenario::ColdStart {
                first_byte_below: None
            }
        );
    }

    #[test]
    fn a_bad_status_names_its_path() {
        assert_eq!(
            error("checks:\n  - name: a\n  - name: b\n    expect: {status: 2xz}\n"),
            r#"checks[1].expect.status: expected a status code like 200 or a class like 2xx, found "2xz""#
        );
        assert_eq!(
            error("checks:\n  - name: a\n    expect: {status: 600}\n"),
            "checks[0].expect.status: expected a status code from 100 to 599, found 600"
        );
        assert_eq!(
            error("checks:\n  - name: a\n    expect: {status: [200, 2xx]}\n"),
            r#"checks[0].expect.status[1]: a list holds status codes only, found "2xx"; write status: 2xx on its own"#
        );
        assert_eq!(
            error("checks:\n  - name: a\n    expect: {status: {code: 200}}\n"),
            "checks[0].expect.status: expected a status code like 200, a class like 2xx or a list like [200, 204], found a mapping"
        );
    }

    #[test]
    fn an_unknown_key_is_an_error_that_suggests_the_right_one() {
        assert_eq!(
            error("checks:\n  - name: a\n    expct: {status: 200}\n"),
            "checks[0].expct: unknown key `expct`, did you mean `expect`? (the keys here are \
             `name`, `request`, `expect`, `coldStart`, `concurrent`, `revisionSwitch`)"
        );
        let message = error("checks:\n  - name: a\n    expect: {latency_below: 1s}\n");
        assert!(
            message.starts_with("checks[0].expect.latency_below: unknown key `latency_below`, did you mean `latencyBelow`?"),
            "{message}"
        );
        let message = error("checks:\n  - name: a\n    request: {path: /, verb: GET}\n");
        assert!(
            message.starts_with(
                "checks[0].request.verb: unknown key `verb` (the keys here are `method`"
            ),
            "{message}"
        );
        assert_eq!(
            error("check:\n  - name: a\n"),
            "check: unknown key `check`, did you mean `checks`? (the keys here are `checks`)"
        );
    }

    #[test]
    fn names_are_required_and_unique() {
        assert_eq!(
            error("checks:\n  - name: home\n  - name: api\n  - name: home\n"),
            r#"checks[2].name: duplicate name "home": checks[0] has it too; names must be unique"#
        );
        assert_eq!(
            error("checks:\n  - request: GET /\n"),
            "checks[0]: missing required key `name`"
        );
        assert_eq!(
            error("checks:\n  - name: ' '\n"),
            "checks[0].name: must not be empty"
        );
    }

    #[test]
    fn a_check_runs_at_most_one_scenario() {
        assert_eq!(
            error("checks:\n  - name: a\n    coldStart: {}\n    concurrent: {requests: 5}\n"),
            "checks[0]: a check runs one scenario, found coldStart and concurrent; split it into one check each"
        );
    }

    #[test]
    fn a_bad_regex_names_its_path_and_the_regex_error() {
        let message =
            error("checks:\n  - name: a\n    expect: {bodyMatches: [ok, 'K_REVISION=(']}\n");
        assert!(
            message.starts_with(
                "checks[0].expect.bodyMatches[1]: not a valid regex: regex parse error:"
            ),
            "{message}"
        );
        assert!(message.contains("unclosed group"), "{message}");
        let message = error("checks:\n  - name: a\n    expect: {bodyMatches: '['}\n");
        assert!(
            message.starts_with("checks[0].expect.bodyMatches: not a valid regex:"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_duration_names_its_path() {
        assert_eq!(
            error("checks:\n  - name: a\n    expect: {latencyBelow: 5 parsecs}\n"),
            r#"checks[0].expect.latencyBelow: expected a duration like 500ms, 2s or 1m, found "5 parsecs""#
        );
        assert_eq!(
            error("checks:\n  - name: a\n    expect: {latencyBelow: 500}\n"),
            r#"checks[0].expect.latencyBelow: expected a duration like 500ms, 2s or 1m, found "500" (add a unit: ms, s or m)"#
        );
        assert_eq!(
            error("checks:\n  - name: a\n    coldStart: {firstByteBelow: 0s}\n"),
            r#"checks[0].coldStart.firstByteBelow: "0s" is a limit no request can meet; give more than 0"#
        );
    }

    #[test]
    fn requests_are_checked() {
        assert_eq!(
            error("checks:\n  - name: a\n    request: {path: api}\n"),
            r#"checks[0].request.path: expected a path that starts with /, found "api""#
        );
        assert_eq!(
            error("checks:\n  - name: a\n    request: 'GET api'\n"),
            r#"checks[0].request: expected a path that starts with /, found "api""#
        );
        assert_eq!(
            error("checks:\n  - name: a\n    request: {method: 'GE T'}\n"),
            r#"checks[0].request.method: expected an HTTP method like GET or POST, found "GE T""#
        );
        assert_eq!(
            error("checks:\n  - name: a\n    request: {headers: {'Bad Name': x}}\n"),
            r#"checks[0].request.headers.Bad Name: "Bad Name" is not a valid header name"#
        );
        let message = error("checks:\n  - name: a\n    request: {headers: {X-A: \"a\\nb\"}}\n");
        assert!(
            message.starts_with(
                r#"checks[0].request.headers.X-A: "a\nb" is not a valid header value"#
            ),
            "{message}"
        );
        let file = parse_checks_file(
            "checks:\n  - name: a\n    request: {method: post, headers: {Content-Length: 5}}\n",
        )
        .unwrap();
        assert_eq!(file.checks[0].request.method, Method::POST);
        assert_eq!(file.checks[0].request.headers[0].1, "5");
    }

    #[test]
    fn scenario_numbers_are_checked() {
        assert_eq!(
            error("checks:\n  - name: a\n    concurrent: {requests: 0}\n"),
            "checks[0].concurrent.requests: expected 1 to 10000, found 0"
        );
        assert_eq!(
            error("checks:\n  - name: a\n    concurrent: {requests: many}\n"),
            r#"checks[0].concurrent.requests: expected an integer, found "many""#
        );
        assert_eq!(
            error("checks:\n  - name: a\n    concurrent:\n"),
            "checks[0].concurrent.requests: missing: say how many requests to send at once, like {requests: 50}"
        );
        assert_eq!(
            error(
                "checks:\n  - name: a\n    revisionSwitch: {image: b, requestsPerSecond: 5000}\n"
            ),
            "checks[0].revisionSwitch.requestsPerSecond: expected 1 to 1000, found 5000"
        );
        assert_eq!(
            error("checks:\n  - name: a\n    revisionSwitch: {requestsPerSecond: 5}\n"),
            "checks[0].revisionSwitch.image: missing: name the image of the second revision, like {image: my-app:v2}"
        );
    }

    #[test]
    fn deep_documents_are_refused_before_parsing() {
        let deep = format!("checks: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let started = tokio::time::Instant::now();
        assert_eq!(
            error(&deep),
            "(document): the document nests more than 100 levels deep"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn document_level_errors_are_explained() {
        assert_eq!(error(""), "(document): missing required key `checks`");
        assert_eq!(
            error("checks: []\n"),
            "checks: the list is empty; a smoke test that checks nothing would always pass"
        );
        assert_eq!(
            error("- name: a\n"),
            "(document): expected a mapping with a `checks:` list, found a list"
        );
        // A syntax error keeps its line and column, the only way to find it.
        assert_eq!(
            error("checks: [\n"),
            "checks: did not find expected node content at line 2 column 1, while parsing a flow node"
        );
        assert_eq!(
            error("checks:\n  - name: a\n    concurrent: {requests: 99999999999999999999}\n"),
            "checks[0].concurrent.requests: expected an integer, found 99999999999999999999"
        );
        assert_eq!(
            error("checks:\n  - name: a\n    expect: {json: {\"$.items[x]\": 1}}\n"),
            r#"checks[0].expect.json["$.items[x]"]: expected a JSON path like $.items[0].id, found [x] in "$.items[x]": an index is a number from 0, a key is quoted"#
        );
        assert_eq!(
            error("checks:\n  - name: a\n    expect: {headers: {A: 1, A: 2}}\n"),
            "checks[0].expect.headers: key `A` is given twice"
        );
    }

    #[test]
    fn status_expectations_parse_match_and_describe() {
        let cases = [
            ("200", StatusExpect::Exact(vec![200]), "200"),
            ("2xx", StatusExpect::Class(2), "2xx"),
            ("5XX", StatusExpect::Class(5), "5xx"),
            (
                "200, 204",
                StatusExpect::Exact(vec![200, 204]),
                "200 or 204",
            ),
            (
                "200,201,204",
                StatusExpect::Exact(vec![200, 201, 204]),
                "200, 201 or 204",
            ),
            ("<500", StatusExpect::Below(500), "< 500"),
            ("< 400", StatusExpect::Below(400), "< 400"),
        ];
        for (text, parsed, described) in cases {
            let status = StatusExpect::parse(text).unwrap();
            assert_eq!(status, parsed, "{text}");
            assert_eq!(status.describe(), described, "{text}");
            assert_eq!(
                StatusExpect::parse(&status.describe().replace(" or ", ",")).unwrap(),
                status
            );
        }
        for bad in ["2xz", "", "6xx", "0xx", "abc", "20"] {
            assert!(StatusExpect::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            StatusExpect::parse("2xz").unwrap_err(),
            r#"expected a status code like 200 or a class like 2xx, found "2xz""#
        );
        assert!(StatusExpect::Class(2).matches(204));
        assert!(!StatusExpect::Class(2).matches(301));
        assert!(StatusExpect::Exact(vec![200, 204]).matches(204));
        assert!(!StatusExpect::Exact(vec![200, 204]).matches(201));
        assert!(StatusExpect::Below(500).matches(404));
        assert!(!StatusExpect::Below(500).matches(500));
    }

    #[test]
    fn verify_passes_a_matching_response() {
        let expect = expect(
            r#"{status: 2xx, bodyContains: [hello, '"id": 3'], bodyMatches: 'K_REVISION=\w+',
               json: {"$.service": hello, "$.items[0].id": 3.0, "$.revision": "K_REVISION=app-1"},
               headers: {Content-Type: json, X-Request-Id: ""}, latencyBelow: 500ms}"#,
        );
        let mut response = observed(
            200,
            r#"{"service": "hello", "items": [{"id": 3}], "revision": "K_REVISION=app-1"}"#,
        );
        response.headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
            .headers
            .insert("x-request-id", HeaderValue::from_static("abc"));
        response.latency = Duration::from_millis(120);
        assert_eq!(expect.verify(&response), Vec::<String>::new());
    }

    #[test]
    fn verify_reports_each_mismatch_on_its_own_line() {
        let expect = expect(
            r#"{status: 2xx, bodyContains: Hello, bodyMatches: 'K_REVISION=\w+',
               json: {"$.service": hello, "$.items[1].id": 3},
               headers: {Content-Type: text/html, X-Request-Id: "", Cache-Control: no-store},
               latencyBelow: 500ms}"#,
        );
        let mut response = observed(503, r#"{"service": "x", "items": [{"id": 3}]}"#);
        response.headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response.latency = Duration::from_millis(812);
        assert_eq!(
            expect.verify(&response),
            [
                "status 503, expected 2xx",
                r#"body does not contain "Hello""#,
                r"body does not match /K_REVISION=\w+/",
                r#"$.service is "x", expected "hello""#,
                "$.items[1].id is missing, expected 3",
                r#"header content-type is "application/json", expected it to contain "text/html""#,
                "header x-request-id is missing",
                r#"header cache-control is missing, expected it to contain "no-store""#,
                "latency 812 ms, expected below 500 ms",
            ]
        );
    }

    #[test]
    fn verify_says_when_a_body_is_not_json() {
        let expect = expect(r#"{json: {"$.a": 1, b: 2}}"#);
        let unmet = expect.verify(&observed(200, "<html>"));
        assert_eq!(unmet.len(), 1, "{unmet:?}");
        assert!(unmet[0].starts_with("body is not JSON ("), "{unmet:?}");
        assert!(
            unmet[0].ends_with("so $.a, b cannot be checked"),
            "{unmet:?}"
        );
    }

    #[test]
    fn a_cold_start_check_also_verifies_the_first_byte() {
        let file =
            parse_checks_file("checks:\n  - name: cold\n    coldStart: {firstByteBelow: 3s}\n")
                .unwrap();
        let mut response = observed(200, "ok");
        response.first_byte = Duration::from_millis(3400);
        response.latency = Duration::from_millis(3500);
        assert_eq!(
            file.checks[0].verify(&response),
            ["first byte after 3.4 s, expected below 3.0 s"]
        );
        response.first_byte = Duration::from_millis(900);
        assert!(file.checks[0].verify(&response).is_empty());
    }

    #[test]
    fn json_paths_find_values_in_objects_and_arrays() {
        let doc = serde_json::json!({
            "service": "hello",
            "items": [{"id": 3, "tags": ["a", "b"]}, {"id": 4}],
            "odd.key": {"x": true},
            "matrix": [[1, 2], [3, 4]],
        });
        assert_eq!(
            json_path(&doc, "$.service"),
            Some(&serde_json::json!("hello"))
        );
        assert_eq!(
            json_path(&doc, "service"),
            Some(&serde_json::json!("hello"))
        );
        assert_eq!(
            json_path(&doc, "$.items[0].id"),
            Some(&serde_json::json!(3))
        );
        assert_eq!(json_path(&doc, "items[1].id"), Some(&serde_json::json!(4)));
        assert_eq!(
            json_path(&doc, "$.items[0].tags[1]"),
            Some(&serde_json::json!("b"))
        );
        assert_eq!(
            json_path(&doc, "$.matrix[1][0]"),
            Some(&serde_json::json!(3))
        );
        assert_eq!(
            json_path(&doc, r#"$["odd.key"].x"#),
            Some(&serde_json::json!(true))
        );
        assert_eq!(
            json_path(&doc, "$['odd.key']['x']"),
            Some(&serde_json::json!(true))
        );
        assert_eq!(json_path(&doc, "$"), Some(&doc));
        assert_eq!(json_path(&doc, "$.items[2]"), None);
        assert_eq!(json_path(&doc, "$.service.name"), None);
        assert_eq!(json_path(&doc, "$.items.id"), None);
        assert_eq!(json_path(&doc, "$.items[x]"), None);
        assert_eq!(json_path(&doc, "$..service"), None);
        assert_eq!(
            json_path(&serde_json::json!([5, 6]), "$[1]"),
            Some(&serde_json::json!(6))
        );
    }

    #[test]
    fn json_values_compare_as_json_readers_see_them() {
        use serde_json::json;
        assert!(json_equal(&json!(3), &json!(3.0)));
        assert!(json_equal(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
        assert!(!json_equal(&json!(3), &json!("3")));
        assert!(!json_equal(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(json_equal(&json!(-1), &json!(-1.0)));
    }

    #[test]
    fn quick_flags_parse() {
        assert_eq!(parse_request_line("/"), Ok((Method::GET, "/".to_string())));
        assert_eq!(
            parse_request_line("  post /api/items?x=1 "),
            Ok((Method::POST, "/api/items?x=1".to_string()))
        );
        assert_eq!(
            parse_request_line("PURGE /cache"),
            Ok((Method::from_bytes(b"PURGE").unwrap(), "/cache".to_string()))
        );
        assert_eq!(
            parse_request_line("GET / extra"),
            Err(r#"expected a request like "GET /" or "/api", found "GET / extra""#.to_string())
        );
        assert!(parse_request_line("").is_err());
        assert!(parse_request_line("GET api").is_err());
        assert!(parse_request_line("GET /a#b")
            .unwrap_err()
            .contains("fragment"));
        assert!(parse_request_line("G(T /").is_err());

        assert_eq!(
            parse_header_line("Content-Type: text/html; charset=utf-8"),
            Ok((
                http::header::CONTENT_TYPE,
                "text/html; charset=utf-8".to_string()
            ))
        );
        assert_eq!(
            parse_header_line("X-Empty:"),
            Ok((HeaderName::from_static("x-empty"), String::new()))
        );
        assert_eq!(
            parse_header_line("no colon"),
            Err(r#"expected a header like "Accept: text/html", found "no colon""#.to_string())
        );
        assert!(parse_header_line("Bad Name: x").is_err());
        assert!(parse_header_line(": x").is_err());

        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(".25s"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration(" 3 s "), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        // One grammar with the flags: hours and sums too.
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        for bad in [
            "",
            "ms",
            "5",
            "-1s",
            "1.2.3s",
            "1e3ms",
            "1.0000000001s",
            "s5",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // Too large for a Duration: an error, not a panic.
        assert!(parse_duration("99999999999999999999999999999999999999m").is_err());
        assert!(parse_duration("999999999999999999999999999999999999999999m").is_err());
    }
}
