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
