//! Cloud Run's invoker check for a private service: a request needs an ID token signed by the
//! emulator's key, not expired, whose audience is the service's URL (with or without a trailing
//! slash), one of its tag URLs, or one of its custom audiences.
//!
//! The token is read from `X-Serverless-Authorization` when the request has one (then
//! `Authorization` is the app's own and left alone), else from `Authorization`; both as
//! `Bearer TOKEN` ("If both headers are provided, only the X-Serverless-Authorization header is
//! checked": https://cloud.google.com/run/docs/authenticating/service-to-service). The checked
//! header reaches the container with the token's signature replaced by
//! `SIGNATURE_REMOVED_BY_GOOGLE`, as Cloud Run forwards it
//! (https://cloud.google.com/run/docs/troubleshooting#signature-removed). A public service has
//! no `Invoker`: no work per request.

use std::sync::Arc;

use http::header::{HeaderName, AUTHORIZATION};
use http::{HeaderMap, HeaderValue};

use crate::metadata::IdentityKey;

pub const SERVERLESS_AUTHORIZATION: &str = "x-serverless-authorization";

/// Who may invoke a private service.
#[derive(Clone, Debug)]
pub struct Invoker {
    /// The key tokens must be signed with; `None` (no metadata server) refuses every token.
    key: Option<Arc<IdentityKey>>,
    /// Accepted audiences, without a trailing slash.
    audiences: Vec<String>,
}

/// Why a request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token at all: 403.
    Missing,
    /// A token that is not a valid ID token for this service: 401.
    Invalid,
}

impl Invoker {
    pub fn new(key: Option<Arc<IdentityKey>>, audiences: Vec<String>) -> Self {
        let audiences = audiences
            .into_iter()
            .map(|a| a.trim_end_matches('/').to_string())
            .collect();
        Invoker { key, audiences }
    }

    /// Checks a request's headers at `now` (Unix seconds); on success, the header the token
    /// came from, whose signature the proxy strips before forwarding.
    pub fn check(&self, headers: &HeaderMap, now: u64) -> Result<HeaderName, Denied> {
        let serverless = HeaderName::from_static(SERVERLESS_AUTHORIZATION);
        let name = if headers.contains_key(&serverless) {
            serverless
        } else if headers.contains_key(AUTHORIZATION) {
            AUTHORIZATION
        } else {
            return Err(Denied::Missing);
        };
        let token = headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or(Denied::Invalid)?;
        let key = self.key.as_ref().ok_or(Denied::Invalid)?;
        let claims = key.verify(token, now).map_err(|_| Denied::Invalid)?;
        let matches = |aud: &serde_json::Value| {
            aud.as_str().is_some_and(|aud| {
                let aud = aud.strip_suffix('/').unwrap_or(aud);
                self.audiences.iter().any(|a| a == aud)
            })
        };
        let accepted = match &claims["aud"] {
            serde_json::Value::Array(auds) => auds.iter().any(matches),
            aud => matches(aud),
        };
        match accepted {
            true => Ok(name),
            false => Err(Denied::Invalid),
        }
    }
}

/// The token of a `Bearer TOKEN` value (the scheme in any case).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// What Cloud Run puts where a forwarded token's signature was.
pub const SIGNATURE_REMOVED: &str = "SIGNATURE_REMOVED_BY_GOOGLE";

/// `Bearer HEADER.PAYLOAD.SIGNATURE` → `Bearer HEADER.PAYLOAD.SIGNATURE_REMOVED_BY_GOOGLE`:
/// what the container gets.
pub fn without_signature(value: &HeaderValue) -> HeaderValue {
    let Ok(text) = value.to_str() else {
        return value.clone();
    };
    match text.rsplit_once('.') {
        Some((signed, _)) => HeaderValue::from_str(&format!("{signed}.{SIGNATURE_REMOVED}"))
            .unwrap_or_else(|_| value.clone()),
        None => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::identity::test_key;

    const NOW: u64 = 10_000;

    fn invoker() -> Invoker {
        Invoker::new(
            Some(test_key()),
            vec![
                "http://b.localhost:8080".into(),
                "http://green---b.localhost:8080".into(),
                "https://api.example.com/".into(),
            ],
        )
    }

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        headers
    }

    fn token(aud: &str, iat: u64) -> String {
        test_key().id_token("a@b.c", "1", aud, iat, None)
    }

    #[test]
    fn audiences_are_the_service_and_tag_urls_and_custom_ones() {
        let invoker = invoker();
        for aud in [
            "http://b.localhost:8080",
            "http://b.localhost:8080/",
            "http://green---b.localhost:8080",
            "https://api.example.com",
            "https://api.example.com/",
        ] {
            let headers = with("authorization", &format!("Bearer {}", token(aud, NOW)));
            assert_eq!(invoker.check(&headers, NOW), Ok(AUTHORIZATION), "{aud}");
        }
        for aud in ["http://c.localhost:8080", "http://b.localhost:8081", ""] {
            let headers = with("authorization", &format!("Bearer {}", token(aud, NOW)));
            assert_eq!(invoker.check(&headers, NOW), Err(Denied::Invalid), "{aud}");
        }
    }

    #[test]
    fn missing_expired_forged_and_malformed_tokens_are_refused() {
        let invoker = invoker();
        assert_eq!(invoker.check(&HeaderMap::new(), NOW), Err(Denied::Missing));
        let good = token("http://b.localhost:8080", NOW);
        let expired = with("authorization", &format!("Bearer {good}"));
        assert_eq!(invoker.check(&expired, NOW + 3600), Err(Denied::Invalid));
        for value in ["Basic abc", "Bearer", "Bearer x.y.z", "bearer "] {
            let headers = with("authorization", value);
            assert_eq!(
                invoker.check(&headers, NOW),
                Err(Denied::Invalid),
                "{value}"
            );
        }
        let keyless = Invoker::new(None, vec!["http://b.localhost:8080".into()]);
        let headers = with("authorization", &format!("Bearer {good}"));
        assert_eq!(keyless.check(&headers, NOW), Err(Denied::Invalid));
        assert_eq!(
            invoker.check(&with("authorization", &format!("bearer {good}")), NOW),
            Ok(AUTHORIZATION)
        );
    }

    #[test]
    fn x_serverless_authorization_wins_and_leaves_authorization_to_the_app() {
        let invoker = invoker();
        let good = token("http://b.localhost:8080", NOW);
        let mut headers = with(SERVERLESS_AUTHORIZATION, &format!("Bearer {good}"));
        headers.insert(AUTHORIZATION, "Bearer app-token".parse().unwrap());
        assert_eq!(
            invoker.check(&headers, NOW).unwrap().as_str(),
            SERVERLESS_AUTHORIZATION
        );
        // A bad X-Serverless-Authorization is not saved by a good Authorization.
        let mut headers = with(SERVERLESS_AUTHORIZATION, "Bearer nope");
        headers.insert(AUTHORIZATION, format!("Bearer {good}").parse().unwrap());
        assert_eq!(invoker.check(&headers, NOW), Err(Denied::Invalid));
    }

    #[test]
    fn the_signature_is_stripped_for_the_container() {
        let value = HeaderValue::from_static("Bearer aaa.bbb.ccc");
        assert_eq!(
            without_signature(&value),
            "Bearer aaa.bbb.SIGNATURE_REMOVED_BY_GOOGLE"
        );
    }
}
