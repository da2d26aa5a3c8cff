//! The hello sample: Cloud Run's "hello" app in one dependency-free file. It answers on $PORT
//! with a page naming the service and revision it runs as (K_SERVICE, K_REVISION), and exits
//! promptly on SIGTERM. `emulate` compiles it into itself (see build.rs) so that `emulate run`
//! with no image has something to run without any registry.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

// A container's first process gets no default signal actions, so without a handler SIGTERM
// would be ignored and every stop would wait for SIGKILL. Static glibc provides signal().
extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(code: i32) -> !;
}

extern "C" fn on_terminate(_: i32) {
    // Only async-signal-safe calls here: write(2) through a raw fd is not needed; exit at once.
    unsafe { _exit(0) }
}

fn main() {
    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;
    unsafe {
        signal(SIGTERM, on_terminate);
        signal(SIGINT, on_terminate);
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_string());
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("{{\"severity\":\"ERROR\",\"message\":\"cannot listen on port {port}: {e}\"}}");
            std::process::exit(1);
        }
    };
    println!("{{\"severity\":\"INFO\",\"message\":\"Hello from Cloud Run! Listening on port {port}\"}}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve(stream));
    }
}

/// Serves one keep-alive connection: reads request heads (and discards bodies), answers each.
fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0u64;
        let mut close = request_line.ends_with("HTTP/1.0\r\n");
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => content_length = value.parse().unwrap_or(0),
                    "connection" => close = value.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        if std::io::copy(&mut (&mut reader).take(content_length), &mut std::io::sink()).is_err() {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let (status, body) = if path == "/" || path.starts_with("/?") {
            ("200 OK", page())
        } else {
            ("404 Not Found", "not found\n".to_string())
        };
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(body.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn page() -> String {
    let service = std::env::var("K_SERVICE").unwrap_or_else(|_| "???".to_string());
    let revision = std::env::var("K_REVISION").unwrap_or_else(|_| "???".to_string());
    format!(
        "<!doctype html>\n<html><head><title>Congratulations | Cloud Run</title></head>\n<body>\n<h1>It's running!</h1>\n<p>Congratulations, you successfully deployed a container image to Cloud Run (emulated by <code>emulate</code>).</p>\n<p>Service: <b>{service}</b><br>Revision: <b>{revision}</b></p>\n</body></html>\n"
    )
}
