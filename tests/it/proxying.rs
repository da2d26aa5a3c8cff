//! The front end between clients and the instance: headers, limits, timeouts, streaming,
//! upgrades and protocols, checked with real clients against the test app.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn headers_are_added_and_removed_as_cloud_run_does() {
    let emulator = Emulator::start(&service_name("headers"), &[testapp_image()]).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = request(
        "GET",
        &emulator.url("/echo?x=1"),
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-google-internal", "spoofed"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "dropped"),
            ("keep-alive", "timeout=5"),
            ("traceparent", traceparent),
            ("x-kept", "yes"),
        ],
        Vec::new(),
        false,
    )
    .await;
    let echo = reply.json();
    let headers = &echo["headers"];
    assert_eq!(headers["x-forwarded-for"][0], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"][0], "http");
    assert_eq!(headers["forwarded"][0], "for=127.0.0.1;proto=http");
    assert_eq!(headers["traceparent"][0], traceparent);
    assert_eq!(
        headers["x-cloud-trace-context"][0],
        format!(
            "4bf92f3577b34da6a3ce929d0e0e4736/{};o=1",
            0x00f067aa0ba902b7u64
        )
    );
    assert_eq!(headers["x-kept"][0], "yes");
    assert_eq!(headers["host"][0], emulator.addr.to_string());
    for gone in ["x-google-internal", "x-hop", "keep-alive"] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} reached the container: {headers}"
        );
    }
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["version"], "HTTP/1.1");

    // Without an incoming trace, a new one is started and both headers carry it.
    let headers = get(&emulator.url("/echo")).await.json()["headers"].clone();
    let parent = headers["traceparent"][0].as_str().unwrap();
    let trace_id = parent.split('-').nth(1).unwrap();
    assert!(headers["x-cloud-trace-context"][0]
        .as_str()
        .unwrap()
        .starts_with(&format!("{trace_id}/")));
}

#[tokio::test]
async fn bodies_over_32_mib_get_413_and_smaller_ones_stream_through() {
    let emulator = Emulator::start(&service_name("limit"), &[testapp_image()]).await;
    let reply = request(
        "POST",
        &emulator.url("/upload"),
        &[],
        vec![7u8; 4 << 20],
        false,
    )
    .await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "received 4194304 bytes\n")
    );

    // Declared too large: refused before anything reaches the container.
    let mut stream = std::net::TcpStream::connect(emulator.addr).unwrap();
    write!(
        stream,
        "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        (32u64 << 20) + 1
    )
    .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");

    // Chunked, with no length given: cut off once 32 MiB have passed.
    let (sender, body) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        let chunk = bytes::Bytes::from(vec![1u8; 1 << 20]);
        for _ in 0..40 {
            if sender
                .send(Ok(http_body::Frame::data(chunk.clone())))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let request = http::Request::post(emulator.url("/upload"))
        .body(http_body_util::StreamBody::new(tokio_stream_from(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 413);
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[tokio::test]
async fn a_request_past_the_timeout_gets_504_and_its_connection_closed() {
    let emulator = Emulator::start(
        &service_name("timeout"),
        &[testapp_image(), "--timeout", "1"],
    )
    .await;
    let mut stream = std::net::TcpStream::connect(emulator.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let began = Instant::now();
    stream
        .write_all(b"GET /sleep?ms=5000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap(); // Ends only because the proxy closes.
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 504"), "{response}");
    assert!(response.ends_with("upstream request timeout"), "{response}");
    // The app answers after 5 s: anything before that is the proxy's timeout (1 s), with room
    // for a loaded machine.
    assert!(
        began.elapsed() < Duration::from_millis(4500),
        "took {:?}",
        began.elapsed()
    );
    // The instance was not killed: it still answers.
    assert_eq!(get(&emulator.url("/")).await.status, 200);
}

#[tokio::test]
async fn websockets_round_trip() {
    let emulator = Emulator::start(&service_name("ws"), &[testapp_image()]).await;
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", emulator.addr))
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hello", "again"] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = socket.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    socket
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn streamed_responses_arrive_as_they_are_sent() {
    let emulator = Emulator::start(&service_name("stream"), &[testapp_image()]).await;
    for (path, first, rest_expected) in [
        (
            "/stream?chunks=3&interval_ms=800",
            "chunk 0\n",
            "chunk 1\nchunk 2\n",
        ),
        (
            "/sse?events=3&interval_ms=800",
            "data: 0\n\n",
            "data: 1\n\ndata: 2\n\n",
        ),
    ] {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let began = Instant::now();
        let response = client
            .get(emulator.url(path).parse().unwrap())
            .await
            .unwrap();
        let mut body = response.into_body();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let first_at = began.elapsed();
        assert_eq!(frame, first.as_bytes());
        let rest = body.collect().await.unwrap().to_bytes();
        let total = began.elapsed();
        assert_eq!(rest, rest_expected.as_bytes(), "{path}");
        // The app sends the other pieces 0.8 s and 1.6 s after the first. A proxy that
        // buffered would hand over the first piece with the last; load on the machine delays
        // both ends alike, so the gap between them is what tells.
        assert!(
            total.saturating_sub(first_at) >= Duration::from_millis(1200),
            "{path}: first piece after {first_at:?}, whole body after {total:?}"
        );
    }
}

#[tokio::test]
async fn http2_clients_are_served_and_h2c_reaches_the_container_only_when_asked() {
    let plain = Emulator::start(&service_name("h2"), &[testapp_image()]).await;
    let echo = request("GET", &plain.url("/echo"), &[], Vec::new(), true)
        .await
        .json();
    assert_eq!(
        echo["version"], "HTTP/1.1",
        "the container speaks HTTP/1 by default"
    );
    assert_eq!(echo["headers"]["host"][0], plain.addr.to_string());

    let h2c = Emulator::start(&service_name("h2c"), &[testapp_image(), "--use-http2"]).await;
    let echo = request("GET", &h2c.url("/echo"), &[], Vec::new(), true)
        .await
        .json();
    assert_eq!(echo["version"], "HTTP/2.0");
    let echo = request("POST", &h2c.url("/echo"), &[], b"abc".to_vec(), false)
        .await
        .json();
    assert_eq!(
        (echo["version"].as_str(), echo["body_len"].as_u64()),
        (Some("HTTP/2.0"), Some(3))
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let emulator = Emulator::start(
        &service_name("slowloris"),
        &[testapp_image(), "--header-read-timeout", "1s"],
    )
    .await;
    let mut stream = std::net::TcpStream::connect(emulator.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .unwrap();
    let began = Instant::now();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "still connected after {:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn a_crash_mid_request_is_503_then_a_new_instance_serves() {
    let emulator = Emulator::start(&service_name("midcrash"), &[testapp_image()]).await;
    let reply = get(&emulator.url("/crash?code=7")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "The request failed because either the HTTP response was malformed or connection to the instance had an error.");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = request("GET", &emulator.url("/"), &[], Vec::new(), false).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503);
        assert!(
            Instant::now() < deadline,
            "no new instance: {}",
            emulator.stdout()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        emulator.stdout().contains("Container called exit(7)."),
        "{}",
        emulator.stdout()
    );
    assert_eq!(
        running_containers_of(&emulator.service),
        1,
        "the crashed container was not removed, or no new one runs:\n{}\n{}",
        emulator.stdout(),
        emulator.stderr()
    );
}
