//! The `/ws` endpoint: a hand-made HTTP/1.1 WebSocket upgrade followed by an echo loop.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::routes::{text, Body};

/// Answers a WebSocket upgrade with 101 and echoes messages on the upgraded
/// connection; anything that is not a proper upgrade gets a 400.
pub fn upgrade(mut req: Request<Incoming>) -> Response<Body> {
    let key = match handshake_key(&req) {
        Some(key) => key,
        None => return text(StatusCode::BAD_REQUEST, "websocket upgrade required\n"),
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                echo(ws).await;
            }
            Err(err) => eprintln!("websocket upgrade failed: {err}"),
        }
    });
    let mut resp = Response::new(Body::Left(Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    resp
}

/// Returns the client's key when the request is a well-formed HTTP/1.1 upgrade;
/// HTTP/2 extended CONNECT is not supported, so those requests are refused.
fn handshake_key(req: &Request<Incoming>) -> Option<String> {
    let headers = req.headers();
    let ok = req.method() == hyper::Method::GET
        && req.version() == Version::HTTP_11
        && has_token(headers, header::CONNECTION, "upgrade")
        && has_token(headers, header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13");
    if !ok {
        return None;
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)?
        .to_str()
        .ok()?
        .trim();
    (!key.is_empty()).then(|| key.to_owned())
}

/// Whether a comma-separated header contains `token`, ignoring case.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// Sends every text and binary message back; pings and closes are answered by
/// tungstenite itself, and the loop ends when the peer goes away.
async fn echo(mut ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>) {
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}
