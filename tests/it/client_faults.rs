//! Hostile or broken clients, written as raw bytes on a TCP socket (an HTTP client library
//! would refuse to send them): a malformed request is the client's fault (400) and never the
//! instance's, idle connections are closed, and the Host a request is routed by is the one
//! the app sees.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::*;

/// Writes `request` on a new connection and reads what comes back until the proxy closes
/// the connection or `limit` passes.
fn exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> &str {
    answer.get(9..12).unwrap_or(answer)
}

#[tokio::test]
async fn a_malformed_request_body_is_400_and_the_instance_is_not_blamed() {
    let emulator = Emulator::start(
        &service_name("badchunk"),
        &[testapp_image(), "--max-instances", "1"],
    )
    .await;
    // (Leading zeros are valid, `000000000000000004` is 4; eighteen `f`s overflow.)
    let bad_chunks: [&[u8]; 5] = [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"-4\r\nhell\r\n0\r\n\r\n",
        b"0x4\r\nhell\r\n0\r\n\r\n",
        b"ffffffffffffffffff\r\nhell\r\n0\r\n\r\n",
        b"4\nhell\n0\n\n",
    ];
    let mut wrong = Vec::new();
    for round in 0..5 {
        for chunk in bad_chunks {
            let mut request =
                b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            request.extend_from_slice(b"5\r\nhello\r\n");
            request.extend_from_slice(chunk);
            let answer = exchange(emulator.addr, &request, Duration::from_secs(5));
            if status_of(&answer) != "400" {
                wrong.push(format!(
                    "round {round}, chunk {:?}: {answer}",
                    String::from_utf8_lossy(chunk)
                ));
            }
        }
    }
    // Max instances holds whatever happened, and no instance was started for the client's
    // mistakes; the one there still serves.
    assert_eq!(
        running_containers_of(&emulator.service),
        1,
        "{}",
        emulator.stdout()
    );
    assert_eq!(
        emulator.stdout().matches("Starting new instance").count(),
        1,
        "an instance was started for a client's malformed body:\n{}",
        emulator.stdout()
    );
    assert!(wrong.is_empty(), "not 400:\n{}", wrong.join("\n"));
    assert_eq!(get(&emulator.url("/")).await.status, 200);
}

#[tokio::test]
async fn the_host_is_one_valid_authority_routed_by_and_forwarded_to_the_app() {
    let emulator = Emulator::start(&service_name("host"), &[testapp_image()]).await;
    let service_host = format!("{}.localhost:{}", emulator.service, emulator.addr.port());
    let send =
        |request: String| exchange(emulator.addr, request.as_bytes(), Duration::from_secs(5));
    let invalid = [
        "GET /echo HTTP/1.1\r\nhost: a.localhost\r\nhost: b.localhost\r\nconnection: close\r\n\r\n".to_string(),
        "GET /echo HTTP/1.1\r\nconnection: close\r\n\r\n".to_string(),
        "GET /echo HTTP/1.1\r\nhost: a b<>\"@evil\r\nconnection: close\r\n\r\n".to_string(),
        "GET /echo HTTP/1.1\r\nhost: user@a.localhost\r\nconnection: close\r\n\r\n".to_string(),
        format!("GET http://user@{service_host}/echo HTTP/1.1\r\nhost: {service_host}\r\nconnection: close\r\n\r\n"),
    ];
    for request in invalid {
        let answer = send(request.clone());
        assert_eq!(status_of(&answer), "400", "{request:?}: {answer}");
        assert!(
            answer.ends_with("Your client has issued a malformed or illegal request."),
            "{answer}"
        );
    }
    // HTTP/1.0 needs no Host.
    let answer = send("GET / HTTP/1.0\r\n\r\n".to_string());
    assert_eq!(status_of(&answer), "200", "{answer}");

    // Absolute-form: the URI's authority routes the request and is the Host the app sees.
    let answer = send(format!(
        "GET http://nope.localhost/echo HTTP/1.1\r\nhost: {service_host}\r\nconnection: close\r\n\r\n"
    ));
    assert_eq!(status_of(&answer), "404", "{answer}");
    let answer = send(format!(
        "GET http://{service_host}/echo HTTP/1.1\r\nhost: nope.localhost\r\nconnection: close\r\n\r\n"
    ));
    assert_eq!(status_of(&answer), "200", "{answer}");
    let echo: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(echo["headers"]["host"], serde_json::json!([service_host]));

    // HTTP/2: a host header that disagrees with :authority is malformed.
    let reply = request(
        "GET",
        &emulator.url("/echo"),
        &[("host", "nope.localhost")],
        Vec::new(),
        true,
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
}
