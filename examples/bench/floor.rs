//! More yardsticks: the least a forwarder costs on this machine, built on hyper and tokio
//! (`hyper`), built on tokio with HTTP/1 by hand (`raw`), and hyper's server with the
//! instance side by hand (`hybrid`). The benchmark runs itself again as a child process
//! (`bench --floor-forwarder LISTEN UPSTREAM [hyper|raw|hybrid]`)
//! that forwards every request as it came, on one worker thread, over one instance
//! connection per client connection: no routing, no header rules, no request log, no
//! timeouts. What emulate costs above the hyper row is its features; what that row costs
//! above the raw one is hyper's two HTTP/1 state machines and the hop between them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;

use anyhow::Context;
use bytes::{Buf, BufMut, BytesMut};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The argument that makes the benchmark binary the forwarder.
pub const ARG: &str = "--floor-forwarder";

/// How the forwarder speaks HTTP/1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// hyper's HTTP/1 server and client.
    Hyper,
    /// hyper's HTTP/1 server; the instance connection by hand, in the client connection's
    /// task (the request head written from hyper's, the response read whole with httparse,
    /// Content-Length bodies only): what hyper's client side costs, as the difference.
    Hybrid,
    /// By hand: httparse for the heads, bodies framed by Content-Length only (the test app's
    /// `GET /` answers; anything else ends the connection). Not a proxy: a lower bound.
    Raw,
}

impl Kind {
    fn arg(self) -> &'static str {
        match self {
            Kind::Hyper => "hyper",
            Kind::Raw => "raw",
            Kind::Hybrid => "hybrid",
        }
    }
}

/// The forwarder, running as a child of the benchmark; killed when dropped.
pub struct Floor {
    child: Child,
    pub addr: SocketAddr,
}

impl Floor {
    /// Starts the forwarder on 127.0.0.1:PORT (a free port), forwarding to `upstream`;
    /// `wrapper` is a command line it runs under (valgrind), if any.
    pub fn start(upstream: SocketAddr, kind: Kind, wrapper: &[String]) -> anyhow::Result<Floor> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut command = Command::new(std::env::current_exe()?);
        command.args([ARG, &addr.to_string(), &upstream.to_string(), kind.arg()]);
        let child = crate::harness::wrapped(wrapper, command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the bare forwarder")?;
        Ok(Floor { child, addr })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The forwarder's process: `args` are LISTEN, UPSTREAM and the kind (`hyper`, the default,
/// `raw` or `hybrid`). Serves until killed.
pub fn serve(args: &[String]) -> ExitCode {
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1)) else {
        eprintln!("usage: bench {ARG} LISTEN UPSTREAM [hyper|raw|hybrid]");
        return ExitCode::from(2);
    };
    let kind = match args.get(2).map(String::as_str) {
        None | Some("hyper") => Kind::Hyper,
        Some("raw") => Kind::Raw,
        Some("hybrid") => Kind::Hybrid,
        Some(other) => {
            eprintln!("error: the forwarder is hyper, raw or hybrid, not {other:?}");
            return ExitCode::from(2);
        }
    };
    let (Ok(listen), Ok(upstream)) = (listen.parse::<SocketAddr>(), upstream.parse()) else {
        eprintln!("error: LISTEN and UPSTREAM are IP:PORT");
        return ExitCode::from(2);
    };
    // The same runtime as emulate's: one worker thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    match runtime.block_on(forward(listen, upstream, kind)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: the bare forwarder failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn forward(listen: SocketAddr, upstream: SocketAddr, kind: Kind) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let served = match kind {
                Kind::Hyper => connection(client, upstream).await,
                Kind::Raw => raw_connection(client, upstream).await,
                Kind::Hybrid => hybrid_connection(client, upstream).await,
            };
            // wrk resets its connections when a run ends: not worth a line.
            let reset = |e: &anyhow::Error| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
            };
            if let Err(e) = &served {
                if !reset(e) {
                    eprintln!("{} forwarder: {e}", kind.arg());
                }
            }
        });
    }
}

/// One client connection and its own instance connection, for its whole life.
async fn connection(client: TcpStream, upstream: SocketAddr) -> anyhow::Result<()> {
    client.set_nodelay(true)?;
    let instance = TcpStream::connect(upstream).await?;
    instance.set_nodelay(true)?;
    let (sender, driver) =
        hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(instance)).await?;
    tokio::spawn(driver);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let mut sender = sender.lock().await;
            sender.ready().await?;
            // Origin form: the instance connection is already to the one upstream.
            let target = request.uri().path_and_query().cloned();
            *request.uri_mut() = target.map_or_else(|| "/".parse().expect("a path"), Into::into);
            let response: Response<Incoming> = sender.send_request(request).await?;
            Ok::<_, hyper::Error>(response)
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await?;
    Ok(())
}

/// One client connection forwarded by hand: each request head is parsed and written again
/// (as hyper does), its Content-Length body copied, then the same for the response.
async fn raw_connection(mut client: TcpStream, upstream: SocketAddr) -> anyhow::Result<()> {
    client.set_nodelay(true)?;
    let mut instance = TcpStream::connect(upstream).await?;
    instance.set_nodelay(true)?;
    let mut from_client = BytesMut::with_capacity(8192);
    let mut from_instance = BytesMut::with_capacity(8192);
    let mut out = BytesMut::with_capacity(8192);
    loop {
        if !raw_message::<RequestHead>(&mut client, &mut from_client, &mut out).await? {
            return Ok(());
        }
        instance.write_all(&out).await?;
        if !raw_message::<ResponseHead>(&mut instance, &mut from_instance, &mut out).await? {
            anyhow::bail!("the instance closed the connection");
        }
        client.write_all(&out).await?;
    }
}

/// A request or a response head, as the raw forwarder reads and writes it.
trait Head {
    /// Parses a head at the start of `bytes` and writes it again to `out`: its length and its
    /// body's (Content-Length); `None` while incomplete.
    fn parse(bytes: &[u8], out: &mut BytesMut) -> anyhow::Result<Option<(usize, usize)>>;
}

struct RequestHead;
struct ResponseHead;

impl Head for RequestHead {
    fn parse(bytes: &[u8], out: &mut BytesMut) -> anyhow::Result<Option<(usize, usize)>> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(length) = request.parse(bytes)? else {
            return Ok(None);
        };
        let (Some(method), Some(path)) = (request.method, request.path) else {
            anyhow::bail!("a request head without a method or a path");
        };
        out.put_slice(method.as_bytes());
        out.put_u8(b' ');
        out.put_slice(path.as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        Ok(Some((length, write_headers(request.headers, out)?)))
    }
}

impl Head for ResponseHead {
    fn parse(bytes: &[u8], out: &mut BytesMut) -> anyhow::Result<Option<(usize, usize)>> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(length) = response.parse(bytes)? else {
            return Ok(None);
        };
        let Some(code) = response.code else {
            anyhow::bail!("a response head without a status");
        };
        write!(out, "HTTP/1.1 {code} {}\r\n", response.reason.unwrap_or(""))?;
        Ok(Some((length, write_headers(response.headers, out)?)))
    }
}

/// Writes the header lines and the blank line; the body's Content-Length (0 without one).
fn write_headers(headers: &[httparse::Header<'_>], out: &mut BytesMut) -> anyhow::Result<usize> {
    let mut body = 0;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            anyhow::bail!("the raw forwarder forwards Content-Length bodies only");
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(header.value)?.trim().parse()?;
        }
        out.put_slice(header.name.as_bytes());
        out.put_slice(b": ");
        out.put_slice(header.value);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    Ok(body)
}

/// Reads one message from `stream` (after the bytes already read into `buffer`) and writes it
/// again to `out`: false when the stream ended before a message began.
async fn raw_message<H: Head>(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    out: &mut BytesMut,
) -> anyhow::Result<bool> {
    let (head, body) = loop {
        out.clear();
        if let Some(lengths) = H::parse(buffer, out)? {
            break lengths;
        }
        if stream.read_buf(buffer).await? == 0 {
            if buffer.is_empty() {
                return Ok(false);
            }
            anyhow::bail!("the connection ended inside a message head");
        }
    };
    while buffer.len() < head + body {
        if stream.read_buf(buffer).await? == 0 {
            anyhow::bail!("the connection ended inside a message body");
        }
    }
    buffer.advance(head);
    out.put_slice(&buffer.split_to(body));
    Ok(true)
}

/// One client connection served by hyper, its requests forwarded by hand over its instance
/// connection (bodiless requests, Content-Length responses: the test app's `GET /`).
async fn hybrid_connection(client: TcpStream, upstream: SocketAddr) -> anyhow::Result<()> {
    client.set_nodelay(true)?;
    let instance = TcpStream::connect(upstream).await?;
    instance.set_nodelay(true)?;
    let state = Arc::new(tokio::sync::Mutex::new(HandMade {
        instance,
        from_instance: BytesMut::with_capacity(8192),
        out: BytesMut::with_capacity(8192),
    }));
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let state = state.clone();
        async move {
            let mut guard = state.lock().await;
            let HandMade {
                instance,
                from_instance: buffer,
                out,
            } = &mut *guard;
            out.clear();
            out.put_slice(request.method().as_str().as_bytes());
            out.put_u8(b' ');
            out.put_slice(
                request
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .as_bytes(),
            );
            out.put_slice(b" HTTP/1.1\r\n");
            for (name, value) in request.headers() {
                out.put_slice(name.as_str().as_bytes());
                out.put_slice(b": ");
                out.put_slice(value.as_bytes());
                out.put_slice(b"\r\n");
            }
            out.put_slice(b"\r\n");
            instance.write_all(out).await?;
            let (head, body, response) = loop {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut parsed = httparse::Response::new(&mut headers);
                if let httparse::Status::Complete(head) = parsed.parse(buffer)? {
                    let Some(code) = parsed.code else {
                        anyhow::bail!("a response head without a status");
                    };
                    let mut builder = http::Response::builder().status(code);
                    let mut body = 0usize;
                    for header in parsed.headers.iter() {
                        if header.name.eq_ignore_ascii_case("content-length") {
                            body = std::str::from_utf8(header.value)?.trim().parse()?;
                        }
                        builder = builder.header(header.name, header.value);
                    }
                    break (head, body, builder);
                }
                if instance.read_buf(buffer).await? == 0 {
                    anyhow::bail!("the instance closed the connection");
                }
            };
            while buffer.len() < head + body {
                if instance.read_buf(buffer).await? == 0 {
                    anyhow::bail!("the instance closed the connection");
                }
            }
            buffer.advance(head);
            let body = buffer.split_to(body).freeze();
            anyhow::Ok(response.body(http_body_util::Full::new(body))?)
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await?;
    Ok(())
}

/// The hybrid forwarder's instance connection and buffers.
struct HandMade {
    instance: TcpStream,
    from_instance: BytesMut,
    out: BytesMut,
}
