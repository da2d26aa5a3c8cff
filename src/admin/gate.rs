//! Who may drive the admin API. It deploys containers with commands of the caller's choice,
//! so a request must name a host the emulator answers to (no DNS rebinding), come from no
//! web page but the API's own (`Origin`, `Sec-Fetch-Site`), carry this run's token, and send
//! a write as a document type no HTML form or no-preflight `fetch` can send.
//!
//! The dashboard is a page in a browser, which cannot send the token as a header. It has a
//! token of its own, good for reads only: the URL printed at start carries it once
//! (`/?token=...`), which the page trades for an HttpOnly, SameSite=Strict cookie; the cookie
//! is accepted for GET and HEAD only, so a write still needs the run's token.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;

use super::status;
use crate::serve::proxy::headers::ADMIN_COOKIE_PREFIX;

/// How the verbs present the run's token: `Authorization: Bearer TOKEN`.
pub const TOKEN_SCHEME: &str = "Bearer";
/// The env var that gives the verbs a token when `--admin ADDR` names an emulator whose
/// discovery file they cannot read.
pub const TOKEN_ENV: &str = "EMULATE_ADMIN_TOKEN";

/// The media types a write may carry: JSON, or YAML (of which JSON is a subset). None of
/// them is a CORS "simple" type, so a web page cannot send one without a preflight.
const DOCUMENT_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
];

/// Whether a request's body is YAML by its Content-Type (else it is JSON).
pub fn is_yaml<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|text| text.split(';').next().unwrap_or("").trim())
        .is_some_and(|essence| {
            DOCUMENT_TYPES[1..]
                .iter()
                .any(|t| t.eq_ignore_ascii_case(essence))
        })
}

/// The admin API's gate: plain data, checked before any request is dispatched.
#[derive(Clone, Debug)]
pub struct Gate {
    /// This run's secret, written only to the discovery file (mode 0600).
    pub token: String,
    /// The dashboard's secret, good for reads only (GET, HEAD): printed at start in the
    /// dashboard's URL and kept by the browser as a cookie.
    pub dashboard_token: String,
    /// The address the API listens on: its port makes the API's own origin.
    pub bound: SocketAddr,
    /// The user bound the API off loopback on purpose (`--admin-allow-remote`): the bound
    /// address is a host the API answers to too.
    pub remote: bool,
}

impl Gate {
    /// A gate with a fresh random token (256 bits from the thread's CSPRNG).
    pub fn new(bound: SocketAddr, remote: bool) -> Gate {
        let secret = || {
            rand::random::<[u8; 32]>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        Gate {
            token: secret(),
            dashboard_token: secret(),
            bound,
            remote,
        }
    }

    /// The dashboard's cookie: one per admin port, since browsers keep cookies by host only.
    pub fn cookie_name(&self) -> String {
        format!("{ADMIN_COOKIE_PREFIX}{}", self.bound.port())
    }

    /// The `Set-Cookie` value that lets a browser read the API (the dashboard): HttpOnly (no
    /// script reads it), SameSite=Strict (no other site's page sends it).
    pub fn dashboard_cookie(&self) -> String {
        format!(
            "{}={}; HttpOnly; SameSite=Strict; Path=/",
            self.cookie_name(),
            self.dashboard_token
        )
    }

    /// The dashboard's URL with its token, as printed at start.
    pub fn dashboard_url(&self) -> String {
        format!(
            "http://{}/?{DASHBOARD_TOKEN_PARAM}={}",
            super::connectable(self.bound),
            self.dashboard_token
        )
    }

    /// Lets the request through, or says why not.
    /// The checks run cheapest-to-explain first: a page on a foreign host or origin is told
    /// so even when it has no token.
    pub fn admit<B: Body>(&self, request: &Request<B>) -> Result<(), Refusal> {
        self.check_host(request)?;
        self.check_origin(request.headers())?;
        self.check_token(request)?;
        check_content_type(request)
    }

    /// DNS rebinding: a page on `evil.example` whose name now resolves to 127.0.0.1 sends
    /// `Host: evil.example`. Only loopback names and addresses are answered (and the bound
    /// address when bound off loopback on purpose).
    fn check_host<B>(&self, request: &Request<B>) -> Result<(), Refusal> {
        let hosts = request.headers().get_all(header::HOST);
        if hosts.iter().count() > 1 {
            return Err(forbidden(
                "the request has several Host headers".to_string(),
            ));
        }
        let from_header = hosts
            .iter()
            .next()
            .map(|h| h.to_str().unwrap_or("\u{fffd}"));
        let from_uri = request.uri().authority().map(|a| a.as_str());
        if from_header.is_none() && from_uri.is_none() {
            return Err(forbidden("the request has no Host header".to_string()));
        }
        for authority in [from_header, from_uri].into_iter().flatten() {
            if !self.answers_to(authority) {
                return Err(forbidden(format!(
                    "Host '{authority}' is not a loopback name or address: the admin API answers only to localhost, 127.0.0.1 or [::1] (a page on another name could reach it through DNS rebinding){}",
                    if self.remote {
                        "; off loopback, address it by IP"
                    } else {
                        ""
                    }
                )));
            }
        }
        Ok(())
    }

    /// Whether `authority` (`HOST[:PORT]`, any port) names this API.
    fn answers_to(&self, authority: &str) -> bool {
        let host = host_of(authority).to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        match host.parse::<IpAddr>() {
            Ok(ip) => {
                let ip = ip.to_canonical();
                ip.is_loopback()
                    || (self.remote && (self.bound.ip().is_unspecified() || ip == self.bound.ip()))
            }
            // Names resolve through DNS, which a page's owner controls; `localhost` and
            // `*.localhost` never leave the machine (RFC 6761).
            Err(_) => host == "localhost" || host.ends_with(".localhost"),
        }
    }

    /// A web page's requests carry its `Origin` (always for writes, for CORS reads) and, in
    /// current browsers, `Sec-Fetch-Site`. Only the API's own origin is let through: reads
    /// are refused too, since a service's env and the token-free parts of its state are
    /// nobody else's business.
    fn check_origin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if let Some(site) = headers.get("sec-fetch-site") {
            let site = site.to_str().unwrap_or("");
            // `same-site` is refused too: a service on http://localhost:8080 is same-site.
            if !matches!(site, "same-origin" | "none") {
                return Err(forbidden(format!(
                    "requests from web pages are refused (Sec-Fetch-Site: {site})"
                )));
            }
        }
        for origin in headers.get_all(header::ORIGIN) {
            let text = origin.to_str().unwrap_or("\u{fffd}");
            if !self.is_own_origin(text) {
                return Err(forbidden(format!(
                    "requests from web pages are refused (Origin: {text})"
                )));
            }
        }
        Ok(())
    }

    fn is_own_origin(&self, origin: &str) -> bool {
        let Ok(uri) = origin.parse::<http::Uri>() else {
            return false;
        };
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return false;
        };
        scheme == "http"
            && matches!(uri.path(), "" | "/")
            && authority.port_u16().unwrap_or(80) == self.bound.port()
            && self.answers_to(authority.as_str())
    }

    /// The run's token as `Authorization: Bearer`, for anything; else, for reads only, the
    /// dashboard's token: as its cookie, or in the query of the dashboard's URL (`GET /`),
    /// which the page trades for the cookie.
    fn check_token<B>(&self, request: &Request<B>) -> Result<(), Refusal> {
        let headers = request.headers();
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix(TOKEN_SCHEME))
            .and_then(|v| v.strip_prefix(' '));
        if presented.is_some_and(|t| same_secret(t.trim().as_bytes(), self.token.as_bytes())) {
            return Ok(());
        }
        let dashboard = |t: &str| same_secret(t.as_bytes(), self.dashboard_token.as_bytes());
        let read = matches!(*request.method(), Method::GET | Method::HEAD);
        if read && cookie(headers, &self.cookie_name()).is_some_and(dashboard) {
            return Ok(());
        }
        if *request.method() == Method::GET
            && request.uri().path() == "/"
            && dashboard_token_param(request.uri().query()).is_some_and(dashboard)
        {
            return Ok(());
        }
        Err(Refusal {
            code: StatusCode::UNAUTHORIZED,
            reason: "Unauthorized",
            message: format!(
                "the admin API needs this run's token (`Authorization: {TOKEN_SCHEME} TOKEN`): the verbs read it from the emulator's discovery file in {}; else set {TOKEN_ENV}. In a browser, open the Dashboard URL `emulate run` printed (it carries a read-only token).",
                super::discovery_dir().display()
            ),
        })
    }
}

/// The query parameter of the dashboard's URL that carries its token.
pub const DASHBOARD_TOKEN_PARAM: &str = "token";

/// The dashboard's token in a query string (`token=...`), if there.
pub fn dashboard_token_param(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(DASHBOARD_TOKEN_PARAM)?.strip_prefix('='))
}

/// The value of cookie `name` in the request's `Cookie` headers, if there.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

/// Why a request was not let through: answered as a Kubernetes `Status`, like every error of
/// the API.
#[derive(Debug)]
pub struct Refusal {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl Refusal {
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = status(self.code, self.reason, self.message);
        if self.code == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"emulate\""),
            );
        }
        response
    }
}

/// A write must be a document: an HTML form or a no-preflight `fetch` can only send
/// `text/plain`, `multipart/form-data` or `application/x-www-form-urlencoded`. A DELETE
/// may leave the type out when it has no body.
fn check_content_type<B: Body>(request: &Request<B>) -> Result<(), Refusal> {
    if request.method().is_safe() {
        return Ok(());
    }
    let media_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    match media_type {
        Some(text) => {
            let essence = text.split(';').next().unwrap_or("").trim();
            if DOCUMENT_TYPES
                .iter()
                .any(|t| t.eq_ignore_ascii_case(essence))
            {
                return Ok(());
            }
            Err(unsupported(format!(
                "Content-Type '{text}' is not accepted: send the document as application/json (or YAML: {})",
                DOCUMENT_TYPES[1..].join(", ")
            )))
        }
        None if request.method() == Method::DELETE && is_empty(request.body()) => Ok(()),
        None => Err(unsupported(format!(
            "{} needs a Content-Type: send the document as application/json",
            request.method()
        ))),
    }
}

fn is_empty<B: Body>(body: &B) -> bool {
    body.is_end_stream() || body.size_hint().exact() == Some(0)
}

/// The host part of `HOST[:PORT]` or `[V6]:PORT`.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Compares secrets in time that depends on their length only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn forbidden(message: String) -> Refusal {
    Refusal {
        code: StatusCode::FORBIDDEN,
        reason: "Forbidden",
        message,
    }
}

fn unsupported(message: String) -> Refusal {
    Refusal {
        code: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        reason: "UnsupportedMediaType",
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(bound: &str, remote: bool) -> Gate {
        Gate {
            token: "secret".to_string(),
            dashboard_token: "reader".to_string(),
            bound: bound.parse().unwrap(),
            remote,
        }
    }

    fn request(method: &str, headers: &[(&str, &str)], body: &'static str) -> Request<Full<Bytes>> {
        request_to(method, "/apis/x", headers, body)
    }

    fn request_to(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &'static str,
    ) -> Request<Full<Bytes>> {
        let mut builder = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    fn code(gate: &Gate, request: &Request<Full<Bytes>>) -> u16 {
        match gate.admit(request) {
            Ok(()) => 200,
            Err(refusal) => refusal.code.as_u16(),
        }
    }

    const OK: &[(&str, &str)] = &[
        ("host", "127.0.0.1:4000"),
        ("authorization", "Bearer secret"),
        ("content-type", "application/json"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut headers: Vec<_> = OK
            .iter()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .copied()
            .collect();
        headers.extend(extra.iter().filter(|(_, v)| !v.is_empty()));
        headers
    }

    #[test]
    fn loopback_names_and_addresses_are_answered_with_any_port() {
        let gate = gate("127.0.0.1:4000", false);
        for host in [
            "127.0.0.1:4000",
            "127.1.2.3",
            "localhost:9",
            "LOCALHOST",
            "localhost.",
            "svc.localhost:4000",
            "[::1]:4000",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(
                code(&gate, &request("GET", &with(&[("host", host)]), "")),
                200,
                "{host}"
            );
        }
        for host in [
            "evil.example",
            "evil.example:4000",
            "localhost.evil.example",
            "10.0.0.1:4000",
            "0.0.0.0:4000",
            "[::]:4000",
            "a b<>\"@evil",
            "",
        ] {
            assert_eq!(
                code(&gate, &request("GET", &with(&[("host", host)]), "")),
                403,
                "{host}"
            );
        }
        assert_eq!(
            code(&gate, &request("GET", &with(&[("host", "")]), "")),
            403,
            "no Host"
        );
    }

    #[test]
    fn an_address_bound_on_purpose_is_answered_but_names_still_are_not() {
        let specific = gate("192.168.1.5:4000", true);
        let wildcard = gate("0.0.0.0:4000", true);
        for (gate, host, expect) in [
            (&specific, "192.168.1.5:4000", 200),
            (&specific, "10.0.0.1:4000", 403),
            (&specific, "localhost:4000", 200),
            (&specific, "evil.example:4000", 403),
            (&wildcard, "10.0.0.1:4000", 200),
            (&wildcard, "evil.example:4000", 403),
        ] {
            assert_eq!(
                code(gate, &request("GET", &with(&[("host", host)]), "")),
                expect,
                "{host}"
            );
        }
    }

    #[test]
    fn only_the_apis_own_origin_is_let_through() {
        let gate = gate("127.0.0.1:4000", false);
        for (origin, expect) in [
            ("http://127.0.0.1:4000", 200),
            ("http://localhost:4000", 200),
            ("http://evil.example", 403),
            ("http://localhost:8080", 403),
            ("https://127.0.0.1:4000", 403),
            ("null", 403),
        ] {
            for method in ["GET", "POST"] {
                let r = request(method, &with(&[("origin", origin)]), "{}");
                assert_eq!(code(&gate, &r), expect, "{method} Origin: {origin}");
            }
        }
        for (site, expect) in [
            ("cross-site", 403),
            ("same-site", 403),
            ("same-origin", 200),
            ("none", 200),
        ] {
            let r = request("GET", &with(&[("sec-fetch-site", site)]), "");
            assert_eq!(code(&gate, &r), expect, "Sec-Fetch-Site: {site}");
        }
    }

    #[test]
    fn the_token_must_be_this_runs() {
        let gate = gate("127.0.0.1:4000", false);
        for (auth, expect) in [
            ("Bearer secret", 200),
            ("Bearer secreT", 401),
            ("Bearer secret2", 401),
            ("Basic secret", 401),
            ("secret", 401),
            ("", 401),
        ] {
            let r = request("GET", &with(&[("authorization", auth)]), "");
            assert_eq!(code(&gate, &r), expect, "Authorization: {auth}");
        }
        let refused = gate
            .admit(&request("GET", &with(&[("authorization", "")]), ""))
            .unwrap_err()
            .into_response();
        assert!(refused.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn writes_must_be_documents() {
        let gate = gate("127.0.0.1:4000", false);
        for (method, content_type, body, expect) in [
            ("POST", "application/json", "{}", 200),
            ("PUT", "application/json; charset=utf-8", "{}", 200),
            ("PUT", "Application/YAML", "{}", 200),
            ("PUT", "text/yaml", "{}", 200),
            ("PUT", "application/x-yaml", "{}", 200),
            ("POST", "text/plain", "{}", 415),
            ("POST", "application/x-www-form-urlencoded", "a=b", 415),
            ("POST", "multipart/form-data; boundary=x", "", 415),
            ("PATCH", "text/plain", "{}", 415),
            ("POST", "", "{}", 415),
            ("PUT", "", "", 415),
            ("DELETE", "", "", 200),
            ("DELETE", "", "{}", 415),
            ("DELETE", "text/plain", "", 415),
            ("GET", "text/plain", "", 200),
        ] {
            let r = request(method, &with(&[("content-type", content_type)]), body);
            assert_eq!(
                code(&gate, &r),
                expect,
                "{method} {content_type:?} {body:?}"
            );
        }
    }

    #[test]
    fn tokens_are_fresh_and_long() {
        let a = Gate::new("127.0.0.1:0".parse().unwrap(), false);
        let b = Gate::new("127.0.0.1:0".parse().unwrap(), false);
        assert_eq!(a.token.len(), 64);
        assert_eq!(a.dashboard_token.len(), 64);
        assert_ne!(a.token, b.token);
        assert_ne!(a.token, a.dashboard_token);
        assert_ne!(a.dashboard_token, b.dashboard_token);
    }

    /// A browser's request: loopback Host, no Authorization, a document type for writes.
    fn browser(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        with(&[("authorization", ""), ("sec-fetch-site", "same-origin")])
            .into_iter()
            .chain(extra.iter().copied())
            .collect()
    }

    #[test]
    fn the_dashboard_cookie_lets_a_browser_read_but_never_write() {
        let gate = gate("127.0.0.1:4000", false);
        let cookie = ("cookie", "other=1; emulate_admin_4000=reader");
        for (method, uri, headers, expect) in [
            ("GET", "/", browser(&[cookie]), 200),
            ("HEAD", "/emulate/v1/state", browser(&[cookie]), 200),
            ("GET", "/emulate/v1/events", browser(&[cookie]), 200),
            ("GET", "/apis/x", browser(&[cookie]), 200),
            // Writes need the run's token, whatever the cookie.
            ("POST", "/apis/x", browser(&[cookie]), 401),
            ("PUT", "/apis/x", browser(&[cookie]), 401),
            ("DELETE", "/apis/x", browser(&[cookie]), 401),
            // Another emulator's cookie, a wrong value, the run's token as a cookie.
            (
                "GET",
                "/",
                browser(&[("cookie", "emulate_admin_4001=reader")]),
                401,
            ),
            (
                "GET",
                "/",
                browser(&[("cookie", "emulate_admin_4000=readers")]),
                401,
            ),
            (
                "GET",
                "/",
                browser(&[("cookie", "emulate_admin_4000=secret")]),
                401,
            ),
            ("GET", "/", browser(&[]), 401),
            // The cookie does not lift the origin checks.
            (
                "GET",
                "/",
                browser(&[cookie, ("sec-fetch-site", "cross-site")]),
                403,
            ),
            (
                "GET",
                "/",
                browser(&[cookie, ("origin", "http://evil.example")]),
                403,
            ),
        ] {
            let mut headers = headers;
            // The last Sec-Fetch-Site given wins.
            if headers
                .iter()
                .filter(|(k, _)| *k == "sec-fetch-site")
                .count()
                > 1
            {
                headers.retain(|h| *h != ("sec-fetch-site", "same-origin"));
            }
            let r = request_to(method, uri, &headers, "{}");
            assert_eq!(code(&gate, &r), expect, "{method} {uri} {headers:?}");
        }
        // The run's token still works with or without a cookie.
        let r = request_to("POST", "/apis/x", &with(&[cookie]), "{}");
        assert_eq!(code(&gate, &r), 200);
    }

    #[test]
    fn the_dashboards_url_token_is_taken_on_get_slash_only() {
        let gate = gate("127.0.0.1:4000", false);
        for (method, uri, expect) in [
            ("GET", "/?token=reader", 200),
            ("GET", "/?x=1&token=reader", 200),
            ("GET", "/?token=readerx", 401),
            ("GET", "/?token=secret", 401),
            ("GET", "/?tokens=reader", 401),
            ("HEAD", "/?token=reader", 401),
            ("POST", "/?token=reader", 401),
            ("GET", "/emulate/v1/state?token=reader", 401),
            ("GET", "/apis/x?token=reader", 401),
        ] {
            let r = request_to(method, uri, &browser(&[]), "{}");
            assert_eq!(code(&gate, &r), expect, "{method} {uri}");
        }
    }

    #[test]
    fn the_cookie_is_http_only_same_site_strict_and_named_by_port() {
        let gate = gate("0.0.0.0:4000", true);
        assert_eq!(
            gate.dashboard_cookie(),
            "emulate_admin_4000=reader; HttpOnly; SameSite=Strict; Path=/"
        );
        assert_eq!(gate.dashboard_url(), "http://127.0.0.1:4000/?token=reader");
    }
}
