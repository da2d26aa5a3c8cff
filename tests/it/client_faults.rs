//! Hostile or broken clients, written as raw bytes on a TCP socket (an HTTP client library
//! would refuse to send them): a malformed request is the client's fault (400) and never the
//! instance's, idle connections are closed, and the Host a request is routed by is the one
//! the app sees.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

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

/// Waits for the proxy to close `stream` (EOF or reset) and says after how long; `None` if it
/// was still open after `limit`.
fn closed_within(mut stream: TcpStream, limit: Duration) -> Option<Duration> {
    let began = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(began.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(began.elapsed()),
        }
    }
}

/// Reads one whole response (with a `content-length`), leaving the connection open.
fn read_response(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no content-length: {head}"));
            if body.len() >= length {
                return text;
            }
        }
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "closed: {text}");
        answer.extend_from_slice(&buffer[..n]);
    }
}

#[tokio::test]
async fn idle_connections_are_closed_from_accept_and_between_requests() {
    let emulator = Emulator::start(&service_name("idle"), &[testapp_image()]).await;
    let addr = emulator.addr;
    // Silent from accept.
    let silent = TcpStream::connect(addr).unwrap();
    // An HTTP/1.1 keep-alive connection after one answered request.
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    assert_eq!(status_of(&read_response(&mut kept)), "200");
    // HTTP/2 with prior knowledge: the preface and an empty SETTINGS frame, then nothing.
    let mut h2 = TcpStream::connect(addr).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let limit = Duration::from_secs(30);
    let waits = [silent, kept, h2].map(|s| std::thread::spawn(move || closed_within(s, limit)));
    let closed: Vec<Option<Duration>> = waits.into_iter().map(|w| w.join().unwrap()).collect();
    println!("closed after (silent, HTTP/1.1 keep-alive, HTTP/2): {closed:?}");
    for (what, after) in ["silent", "HTTP/1.1 keep-alive", "HTTP/2"]
        .iter()
        .zip(&closed)
    {
        let after =
            after.unwrap_or_else(|| panic!("the {what} connection is open after {limit:?}"));
        // The 10 s of the README, not some other cause.
        assert!(
            after >= Duration::from_secs(8),
            "{what} closed after {after:?}"
        );
    }
    // The service still answers on a new connection.
    assert_eq!(get(&emulator.url("/")).await.status, 200);
}

#[tokio::test]
async fn connections_past_the_cap_wait_and_the_cap_is_logged_once() {
    let emulator = Emulator::start(
        &service_name("conncap"),
        &[testapp_image(), "--max-connections", "3"],
    )
    .await;
    let open: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(emulator.addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
            assert_eq!(status_of(&read_response(&mut s)), "200");
            s
        })
        .collect();
    // Past the cap: connected by the kernel, but not served while the three stay open.
    let mut waiting: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(emulator.addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
            s
        })
        .collect();
    waiting[0]
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buffer = [0u8; 64];
    assert!(
        waiting[0].read(&mut buffer).is_err(),
        "served past the connection cap"
    );
    let notice = "client connections are open, the limit";
    assert_eq!(
        emulator.stderr().matches(notice).count(),
        1,
        "{}",
        emulator.stderr()
    );
    drop(open);
    for s in &mut waiting {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(status_of(&read_response(s)), "200");
    }
    assert_eq!(
        emulator.stderr().matches(notice).count(),
        1,
        "{}",
        emulator.stderr()
    );
}

#[tokio::test]
async fn out_of_file_descriptors_accepts_back_off_and_say_so_once() {
    let emulator = Emulator::start(
        &service_name("emfile"),
        &[testapp_image(), "--max-connections", "1000"],
    )
    .await;
    let pid = emulator.pid().to_string();
    // The soft limit only: it can be raised back without privileges.
    let set_limit = |n: &str| {
        run_checked(std::process::Command::new("prlimit").args([
            "--pid",
            &pid,
            &format!("--nofile={n}:"),
        ]))
    };
    set_limit("64");
    // More silent connections than descriptors: accepts fail with EMFILE.
    let flood: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect(emulator.addr).ok())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !emulator.stderr().contains("accept failed") {
        assert!(
            Instant::now() < deadline,
            "no accept failed:\n{}",
            emulator.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Failures keep coming while the flood stays; they are said once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed = emulator.stderr().matches("accept failed").count();
    drop(flood);
    set_limit("20000");
    assert_eq!(failed, 1, "{}", emulator.stderr());
    assert_eq!(get(&emulator.url("/")).await.status, 200);
}
