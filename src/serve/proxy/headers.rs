//! Request and response header rules of Cloud Run's front end: the one authority a request is
//! routed by (RFC 9110 §7.2, RFC 9112 §3.2), hop-by-hop headers removed (RFC 9110 §7.6.1),
//! `X-Google-*` removed, forwarding and trace headers set.

use std::fmt::Write;
use std::net::IpAddr;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};
use rand::Rng;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_CLOUD_TRACE_CONTEXT: HeaderName = HeaderName::from_static("x-cloud-trace-context");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Why a request's authority (its `Host`) is refused with 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("more than one Host header")]
    Duplicate,
    #[error("an HTTP/1.1 request without a Host header")]
    Missing,
    #[error("a Host or authority that is not host[:port]")]
    Invalid,
    #[error("the Host header differs from the :authority")]
    Conflict,
}

/// The one authority a request is routed by and forwarded with as `Host`, or what makes the
/// request invalid (RFC 9112 §3.2: one Host, required in HTTP/1.1, `host[:port]` syntax).
/// A target URI's authority (HTTP/1 absolute-form, HTTP/2 `:authority`) wins over `Host`
/// (RFC 9112 §3.2.2); on HTTP/2 a `Host` that differs from `:authority` is malformed
/// (RFC 9113 §8.3.1). `None`: an HTTP/1.0 request without Host, or HTTP/2 without either.
pub fn request_authority(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, HostError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Duplicate);
    }
    if let Some(host) = host {
        if !is_host_port(host.as_bytes()) {
            return Err(HostError::Invalid);
        }
    }
    let authority = match uri.authority() {
        Some(authority) if !is_host_port(authority.as_str().as_bytes()) => {
            return Err(HostError::Invalid)
        }
        Some(authority) => {
            Some(HeaderValue::from_str(authority.as_str()).map_err(|_| HostError::Invalid)?)
        }
        None => None,
    };
    match (version, authority, host) {
        (Version::HTTP_2, Some(authority), Some(host))
            if !authority.as_bytes().eq_ignore_ascii_case(host.as_bytes()) =>
        {
            Err(HostError::Conflict)
        }
        (Version::HTTP_2, authority, host) => Ok(authority.or_else(|| host.cloned())),
        (version, _, None) if version >= Version::HTTP_11 => Err(HostError::Missing),
        (_, authority, host) => Ok(authority.or_else(|| host.cloned())),
    }
}

/// `uri-host [ ":" port ]` (RFC 3986 §3.2.2-3): a bracketed IP literal or a reg-name
/// (unreserved, percent-encoded, sub-delims), no userinfo. Empty is valid: a Host for a URI
/// without an authority.
fn is_host_port(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &value[1..end];
        let literal_ok = !literal.is_empty()
            && literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b":.vV".contains(&b));
        if !literal_ok {
            return false;
        }
        (&value[..0], &value[end + 1..])
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &value[value.len()..]),
        }
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    let mut rest = host;
    let host_ok = loop {
        match rest {
            [] => break true,
            [b'%', a, b, tail @ ..] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => {
                rest = tail
            }
            [b, tail @ ..] if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(b) => {
                rest = tail
            }
            _ => break false,
        }
    };
    port_ok && host_ok
}

/// The fixed hop-by-hop headers; those named in `Connection` are hop-by-hop too.
fn fixed_hop_by_hop() -> [&'static HeaderName; 9] {
    [
        &header::CONNECTION,
        &PROXY_CONNECTION,
        &KEEP_ALIVE,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

/// Removes what a client's request may carry but an instance must not get: hop-by-hop
/// headers ([`remove_hop_by_hop`]), `X-Google-*` ([`remove_google_headers`]) and the
/// dashboard's cookies ([`remove_admin_cookies`]). One pass over the names finds which of
/// them a request has; most have none.
pub fn remove_client_only(headers: &mut HeaderMap, keep_upgrade: bool, keep_te_trailers: bool) {
    let hop_by_hop = fixed_hop_by_hop();
    let (mut hop, mut google, mut cookie) = (false, false, false);
    for name in headers.keys() {
        hop |= hop_by_hop.contains(&name);
        google |= is_google(name);
        cookie |= name == header::COOKIE;
    }
    if hop {
        remove_hop_by_hop(headers, keep_upgrade, keep_te_trailers);
    }
    if google {
        remove_google_headers(headers);
    }
    if cookie {
        remove_admin_cookies(headers);
    }
}

/// Removes hop-by-hop headers. With `keep_upgrade` (a protocol upgrade such as WebSocket
/// being forwarded) `Upgrade` survives and `Connection: upgrade` is set again. With
/// `keep_te_trailers` (an HTTP/2 hop, where gRPC needs it) `TE: trailers` survives.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool, keep_te_trailers: bool) {
    // Most requests and responses carry none: one pass over the names instead of a lookup
    // per hop-by-hop name.
    let hop_by_hop = fixed_hop_by_hop();
    if !headers.keys().any(|name| hop_by_hop.contains(&name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    let upgrade = keep_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    let te_trailers = keep_te_trailers
        && headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    for name in named {
        headers.remove(name);
    }
    for name in hop_by_hop {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes every `X-Google-*` header: clients may not inject what Google's front end sets.
pub fn remove_google_headers(headers: &mut HeaderMap) {
    if !headers.keys().any(is_google) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|k| is_google(k)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// The emulator's dashboard cookies (`emulate_admin_PORT`, set by the admin API). Cookies are
/// not kept apart by port, so a browser sends them to services on the same host too: they are
/// removed before a request reaches an instance.
pub const ADMIN_COOKIE_PREFIX: &str = "emulate_admin_";

/// Removes the dashboard's cookies from `Cookie` headers, keeping every other cookie.
pub fn remove_admin_cookies(headers: &mut HeaderMap) {
    let carries = |v: &HeaderValue| {
        v.as_bytes()
            .windows(ADMIN_COOKIE_PREFIX.len())
            .any(|w| w == ADMIN_COOKIE_PREFIX.as_bytes())
    };
    if !headers.get_all(header::COOKIE).iter().any(carries) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| {
            if !carries(value) {
                return Some(value.clone());
            }
            let text = String::from_utf8_lossy(value.as_bytes());
            let rest: Vec<&str> = text
                .split(';')
                .map(str::trim)
                .filter(|pair| !pair.is_empty() && !pair.starts_with(ADMIN_COOKIE_PREFIX))
                .collect();
            (!rest.is_empty())
                .then(|| HeaderValue::from_str(&rest.join("; ")).ok())
                .flatten()
        })
        .collect();
    headers.remove(header::COOKIE);
    for value in kept {
        headers.append(header::COOKIE, value);
    }
}

fn is_google(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-google-")
}

/// The forwarding headers for one client connection's requests, made once per connection:
/// a request that carries none of its own gets these values as they are (no formatting, no
/// allocation per request).
#[derive(Clone, Debug)]
pub struct Forwarding {
    client: String,
    node: String,
    proto: &'static str,
    x_forwarded_for: HeaderValue,
    forwarded: HeaderValue,
}

impl Forwarding {
    pub fn new(client: IpAddr, proto: &'static str) -> Forwarding {
        let client = client.to_string();
        let node = match client.contains(':') {
            false => format!("for={client};proto={proto}"),
            true => format!("for=\"[{client}]\";proto={proto}"),
        };
        let value = |text: &str| {
            HeaderValue::from_str(text).expect("an IP address and a scheme are header text")
        };
        Forwarding {
            x_forwarded_for: value(&client),
            forwarded: value(&node),
            client,
            node,
            proto,
        }
    }
}

/// Appends the client to `X-Forwarded-For` and `Forwarded` and sets `X-Forwarded-Proto`.
/// A client-sent chain is kept but never trusted as the whole chain: the real peer is always
/// appended.
pub fn set_forwarding(headers: &mut HeaderMap, forwarding: &Forwarding) {
    append_list(
        headers,
        &X_FORWARDED_FOR,
        &forwarding.client,
        &forwarding.x_forwarded_for,
    );
    append_list(headers, &FORWARDED, &forwarding.node, &forwarding.forwarded);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(forwarding.proto),
    );
}

/// Appends `item` to a list header; `alone` is the header's value when there was none.
fn append_list(headers: &mut HeaderMap, name: &HeaderName, item: &str, alone: &HeaderValue) {
    let joined = match headers.get(name).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => {
            HeaderValue::from_str(&format!("{existing}, {item}")).ok()
        }
        _ => Some(alone.clone()),
    };
    if let Some(value) = joined {
        headers.insert(name.clone(), value);
    }
}

/// A trace: the W3C trace id, the parent span id and whether it is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trace {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl Trace {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid per W3C.
    pub fn from_traceparent(value: &str) -> Option<Trace> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2
            || version == "ff"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Trace {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// Parses `TRACE_ID/SPAN_ID;o=OPTIONS` (span id decimal, options optional).
    pub fn from_cloud_trace_context(value: &str) -> Option<Trace> {
        let (trace, rest) = value.trim().split_once('/')?;
        let (span, options) = match rest.split_once(';') {
            Some((span, options)) => (span, Some(options)),
            None => (rest, None),
        };
        if trace.len() != 32 {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = span.parse::<u64>().ok()?;
        let sampled = options.is_none_or(|o| o.trim() == "o=1");
        Some(Trace {
            trace_id,
            span_id,
            sampled,
        })
    }

    pub fn random(rng: &mut impl Rng) -> Trace {
        Trace {
            trace_id: rng.random_range(1..=u128::MAX),
            span_id: rng.random_range(1..=u64::MAX),
            sampled: true,
        }
    }

    pub fn traceparent(&self) -> String {
        let mut s = String::with_capacity(55);
        let _ = write!(
            s,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.sampled as u8
        );
        s
    }

    pub fn cloud_trace_context(&self) -> String {
        format!(
            "{:032x}/{};o={}",
            self.trace_id, self.span_id, self.sampled as u8
        )
    }

    /// Both header values in one buffer (one allocation, shared by the two values):
    /// `traceparent`, then `X-Cloud-Trace-Context`.
    fn header_values(&self) -> (HeaderValue, HeaderValue) {
        let mut buffer = BytesMut::with_capacity(55 + 58);
        buffer.extend_from_slice(b"00-");
        push_hex(&mut buffer, self.trace_id, 32);
        buffer.extend_from_slice(b"-");
        push_hex(&mut buffer, u128::from(self.span_id), 16);
        buffer.extend_from_slice(if self.sampled { b"-01" } else { b"-00" });
        let split = buffer.len();
        push_hex(&mut buffer, self.trace_id, 32);
        buffer.extend_from_slice(b"/");
        push_decimal(&mut buffer, self.span_id);
        buffer.extend_from_slice(if self.sampled { b";o=1" } else { b";o=0" });
        let bytes = buffer.freeze();
        let value = |bytes| {
            HeaderValue::from_maybe_shared(bytes)
                .expect("hex digits and punctuation are header text")
        };
        (value(bytes.slice(..split)), value(bytes.slice(split..)))
    }
}

/// Appends `n`'s lowest `digits` (at most 32) hex digits, lower case, zero-padded.
fn push_hex(buffer: &mut BytesMut, n: u128, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (i, digit) in text[..digits].iter_mut().rev().enumerate() {
        *digit = HEX[((n >> (4 * i)) & 0xf) as usize];
    }
    buffer.extend_from_slice(&text[..digits]);
}

/// Appends `n` in decimal.
fn push_decimal(buffer: &mut BytesMut, mut n: u64) {
    let mut text = [0u8; 20];
    let mut start = text.len();
    loop {
        start -= 1;
        text[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buffer.extend_from_slice(&text[start..]);
}

/// Sets `traceparent` and `X-Cloud-Trace-Context` so both carry the same trace: an incoming
/// `traceparent` is kept (and wins), else an incoming `X-Cloud-Trace-Context` is continued,
/// else a new trace starts.
pub fn set_trace(headers: &mut HeaderMap, rng: &mut impl Rng) -> Trace {
    if let Some(trace) = client_trace_parent(headers) {
        insert(
            headers,
            &X_CLOUD_TRACE_CONTEXT,
            &trace.cloud_trace_context(),
        );
        return trace;
    }
    let from_cloud = client_cloud_trace(headers);
    let trace = from_cloud.unwrap_or_else(|| Trace::random(rng));
    let (traceparent, cloud_trace_context) = trace.header_values();
    headers.insert(TRACEPARENT.clone(), traceparent);
    if from_cloud.is_none() {
        headers.insert(X_CLOUD_TRACE_CONTEXT.clone(), cloud_trace_context);
    }
    trace
}

/// The trace a client sent (`traceparent` first, as [`set_trace`] reads them), if any.
pub fn client_trace(headers: &HeaderMap) -> Option<Trace> {
    client_trace_parent(headers).or_else(|| client_cloud_trace(headers))
}

fn client_trace_parent(headers: &HeaderMap) -> Option<Trace> {
    headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(Trace::from_traceparent)
}

fn client_cloud_trace(headers: &HeaderMap) -> Option<Trace> {
    headers
        .get(&X_CLOUD_TRACE_CONTEXT)
        .and_then(|v| v.to_str().ok())
        .and_then(Trace::from_cloud_trace_context)
}

fn insert(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn the_authority_is_one_valid_host_and_the_target_uri_wins() {
        let origin: Uri = "/echo".parse().unwrap();
        let absolute: Uri = "http://b.localhost:8080/echo".parse().unwrap();
        let value = |s: &'static str| Ok(Some(HeaderValue::from_static(s)));
        let h11 = Version::HTTP_11;
        assert_eq!(
            request_authority(h11, &origin, &map(&[("host", "a.localhost:8080")])),
            value("a.localhost:8080")
        );
        let mut two = map(&[("host", "a.localhost")]);
        two.append(header::HOST, HeaderValue::from_static("b.localhost"));
        assert_eq!(
            request_authority(h11, &origin, &two),
            Err(HostError::Duplicate)
        );
        assert_eq!(
            request_authority(h11, &origin, &map(&[])),
            Err(HostError::Missing)
        );
        assert_eq!(
            request_authority(Version::HTTP_10, &origin, &map(&[])),
            Ok(None)
        );
        assert_eq!(
            request_authority(h11, &origin, &map(&[("host", "")])),
            value("")
        );
        for bad in [
            "a b<>\"@evil",
            "user@a.localhost",
            "a:b:c",
            "a:80x",
            "[::1",
            "a%zz",
            "a/b",
        ] {
            assert_eq!(
                request_authority(h11, &origin, &map(&[("host", bad)])),
                Err(HostError::Invalid),
                "{bad}"
            );
        }
        for good in ["[::1]:8080", "127.0.0.1", "a.localhost:", "x%41y"] {
            assert!(
                request_authority(h11, &origin, &map(&[("host", good)])).is_ok(),
                "{good}"
            );
        }
        // Absolute-form: the URI's authority wins over Host; Host is still required.
        assert_eq!(
            request_authority(h11, &absolute, &map(&[("host", "a.localhost")])),
            value("b.localhost:8080")
        );
        assert_eq!(
            request_authority(h11, &absolute, &map(&[])),
            Err(HostError::Missing)
        );
        let userinfo: Uri = "http://u@b.localhost/".parse().unwrap();
        assert_eq!(
            request_authority(h11, &userinfo, &map(&[("host", "b.localhost")])),
            Err(HostError::Invalid)
        );
        // HTTP/2: :authority and a differing host are malformed; either alone is enough.
        let h2 = Version::HTTP_2;
        assert_eq!(
            request_authority(h2, &absolute, &map(&[("host", "a.localhost")])),
            Err(HostError::Conflict)
        );
        assert_eq!(
            request_authority(h2, &absolute, &map(&[("host", "B.localhost:8080")])),
            value("b.localhost:8080")
        );
        assert_eq!(
            request_authority(h2, &absolute, &map(&[])),
            value("b.localhost:8080")
        );
        assert_eq!(
            request_authority(h2, &origin, &map(&[("host", "a.localhost")])),
            value("a.localhost")
        );
        assert_eq!(request_authority(h2, &origin, &map(&[])), Ok(None));
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers, deflate"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h, false, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn upgrades_keep_upgrade_and_h2_keeps_te_trailers() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        remove_hop_by_hop(&mut h, true, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn google_headers_are_removed() {
        let mut h = map(&[
            ("x-google-internal", "1"),
            ("X-Google-Foo", "2"),
            ("x-goog-api", "3"),
        ]);
        remove_google_headers(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-goog-api"));
    }

    #[test]
    fn the_dashboards_cookies_never_reach_an_instance() {
        let mut headers = map(&[
            ("cookie", "a=1; emulate_admin_4000=secret; b=2"),
            ("cookie", "emulate_admin_5000=other"),
            ("cookie", "c=3"),
        ]);
        remove_admin_cookies(&mut headers);
        let cookies: Vec<&str> = headers
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["a=1; b=2", "c=3"]);
        let mut untouched = map(&[("cookie", "session=x")]);
        remove_admin_cookies(&mut untouched);
        assert_eq!(untouched.get(header::COOKIE).unwrap(), "session=x");
    }

    #[test]
    fn client_only_headers_are_removed_in_one_pass_and_others_kept() {
        let mut h = map(&[
            ("connection", "x-private"),
            ("x-private", "1"),
            ("x-google-internal", "2"),
            ("cookie", "a=1; emulate_admin_8080=t"),
            ("x-kept", "3"),
        ]);
        remove_client_only(&mut h, false, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["cookie", "x-kept"]);
        assert_eq!(h["cookie"], "a=1");
        let plain = map(&[("x-kept", "3"), ("accept", "*/*")]);
        let mut untouched = plain.clone();
        remove_client_only(&mut untouched, false, false);
        assert_eq!(untouched, plain);
    }

    #[test]
    fn trace_header_values_are_the_formatted_texts() {
        let mut rng = StdRng::seed_from_u64(7);
        let traces = [
            Trace {
                trace_id: 1,
                span_id: 1,
                sampled: false,
            },
            Trace {
                trace_id: u128::MAX,
                span_id: u64::MAX,
                sampled: true,
            },
            Trace::random(&mut rng),
            Trace::random(&mut rng),
        ];
        for trace in traces {
            let (traceparent, cloud) = trace.header_values();
            assert_eq!(traceparent, trace.traceparent().as_str());
            assert_eq!(cloud, trace.cloud_trace_context().as_str());
            assert_eq!(
                Trace::from_traceparent(traceparent.to_str().unwrap()),
                Some(trace)
            );
        }
    }

    #[test]
    fn forwarding_appends_the_real_client() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarding(
            &mut h,
            &Forwarding::new("127.0.0.1".parse().unwrap(), "http"),
        );
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["forwarded"], "for=127.0.0.1;proto=http");
        let mut h = HeaderMap::new();
        set_forwarding(&mut h, &Forwarding::new("::1".parse().unwrap(), "http"));
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
        assert_eq!(h["x-forwarded-for"], "::1");
    }

    #[test]
    fn an_incoming_traceparent_is_kept_and_shared() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = map(&[("traceparent", parent)]);
        set_trace(&mut h, &mut StdRng::seed_from_u64(1));
        assert_eq!(h["traceparent"], parent);
        assert_eq!(
            h["x-cloud-trace-context"],
            format!(
                "4bf92f3577b34da6a3ce929d0e0e4736/{};o=1",
                0x00f067aa0ba902b7u64
            )
        );
    }

    #[test]
    fn a_cloud_trace_context_is_continued_and_a_new_trace_made_otherwise() {
        let mut h = map(&[(
            "x-cloud-trace-context",
            "105445aa7843bc8bf206b12000100000/1;o=1",
        )]);
        set_trace(&mut h, &mut StdRng::seed_from_u64(1));
        assert_eq!(
            h["traceparent"],
            "00-105445aa7843bc8bf206b12000100000-0000000000000001-01"
        );
        let mut h = HeaderMap::new();
        set_trace(&mut h, &mut StdRng::seed_from_u64(1));
        let tp = Trace::from_traceparent(h["traceparent"].to_str().unwrap()).unwrap();
        let ct =
            Trace::from_cloud_trace_context(h["x-cloud-trace-context"].to_str().unwrap()).unwrap();
        assert_eq!(tp, ct);
        assert!(tp.sampled);
        assert!(
            Trace::from_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01")
                .is_none()
        );
    }
}
