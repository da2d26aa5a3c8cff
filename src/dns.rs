//! The containers' name server: `*.localhost` is the emulator, everything else is asked of
//! the host's own name servers. It is what makes a service's URL (`http://beta.localhost:8080`)
//! the same inside every instance as on the host, for services deployed after the instance
//! started too: the container's resolver asks this server (Docker's `--dns`), which answers
//! the bridge gateway, where the front end also listens.
//!
//! Docker's `--dns` takes an address, not a port, so the server needs port 53 on the bridge
//! gateway: root (or `CAP_NET_BIND_SERVICE`). Every emulator binds it with `SO_REUSEPORT` and
//! answers alike (the gateway for `*.localhost`, the host's servers' answers otherwise), so
//! emulators running side by side share it. Where it cannot be bound, the platform writes the
//! names it knows into the container's `/etc/hosts` instead, and says so.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// DNS's port: Docker's `--dns` cannot name another.
pub const PORT: u16 = 53;
/// How long an answer for `*.localhost` may be cached: the gateway does not move while the
/// emulator runs.
const LOCAL_TTL: u32 = 60;
/// How long the host's name servers get to answer a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Queries forwarded at once; past this, a query is dropped (its client retries).
const MAX_IN_FLIGHT: usize = 256;
/// The largest message a TCP client may send (a query is a few hundred bytes).
const MAX_TCP_QUERY: usize = 4096;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;

/// What the server answers itself, and where it asks for the rest.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// The address `*.localhost` resolves to (the bridge gateway).
    pub local: Ipv4Addr,
    /// The host's name servers, asked for every other name.
    pub upstream: Vec<SocketAddr>,
}

/// One parsed question (the only one of a query).
#[derive(Debug, PartialEq, Eq)]
struct Question {
    /// The name, lower-cased, without the final dot.
    name: String,
    qtype: u16,
    qclass: u16,
    /// Where the question section ends in the message.
    end: usize,
}

#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Answered here: the whole response.
    Local(Vec<u8>),
    /// Asked of the host's name servers, unchanged.
    Forward,
    /// Not a query this server can read: the response (FORMERR), if the message had a header.
    Malformed(Option<Vec<u8>>),
}

/// Whether `name` is one of the emulator's (`SERVICE.localhost`, `TAG---SERVICE.localhost`):
/// any name under `localhost`, as RFC 6761 reserves it for loopback-like use.
fn is_local(name: &str) -> bool {
    name.strip_suffix(".localhost")
        .is_some_and(|head| !head.is_empty())
}

/// Reads the question of a standard query with exactly one question.
fn question(message: &[u8]) -> Option<Question> {
    if message.len() < 12 {
        return None;
    }
    let flags = u16::from_be_bytes([message[2], message[3]]);
    let is_response = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xF;
    let qdcount = u16::from_be_bytes([message[4], message[5]]);
    if is_response || opcode != 0 || qdcount != 1 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *message.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        // No compression in a question; labels are at most 63 bytes.
        if len > 63 {
            return None;
        }
        let label = message.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
        if at > 12 + 255 {
            return None;
        }
    }
    let qtype = u16::from_be_bytes([*message.get(at)?, *message.get(at + 1)?]);
    let qclass = u16::from_be_bytes([*message.get(at + 2)?, *message.get(at + 3)?]);
    Some(Question {
        name: labels.join("."),
        qtype,
        qclass,
        end: at + 4,
    })
}

/// A response to `query` (whose question ends at `question_end`): the header and question
/// copied, then `answers` A records of `ip`.
fn response(query: &[u8], question_end: usize, rcode: u8, answer: Option<Ipv4Addr>) -> Vec<u8> {
    let mut out = Vec::with_capacity(question_end + 16);
    out.extend_from_slice(&query[..2]);
    // QR, the query's opcode and RD, AA, RA, the rcode.
    let rd = query[2] & 0x01;
    let opcode = query[2] & 0x78;
    out.push(0x80 | opcode | 0x04 | rd);
    out.push(0x80 | rcode);
    let qdcount = if question_end > 12 { 1u16 } else { 0 };
    out.extend_from_slice(&qdcount.to_be_bytes());
    out.extend_from_slice(&(answer.is_some() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..question_end]);
    if let Some(ip) = answer {
        // The name is the question's (a pointer to offset 12).
        out.extend_from_slice(&[0xC0, 0x0C]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&LOCAL_TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// What to do with one message from a container.
fn decide(message: &[u8], local: Ipv4Addr) -> Decision {
    let Some(question) = question(message) else {
        // A response is never answered (two servers would answer each other's errors).
        let is_query = message.len() >= 12 && message[2] & 0x80 == 0;
        return Decision::Malformed(is_query.then(|| response(message, 12, RCODE_FORMERR, None)));
    };
    if !is_local(&question.name) {
        return Decision::Forward;
    }
    // An A question gets the gateway; any other (AAAA included) an empty answer, so the
    // client uses IPv4.
    let answer = (question.qtype == TYPE_A && question.qclass == CLASS_IN).then_some(local);
    Decision::Local(response(message, question.end, 0, answer))
}

/// The host's name servers, from a resolv.conf's `nameserver` lines.
pub fn upstream_servers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(addr)) => {
                    // A scoped IPv6 address (fe80::1%eth0) is of no use from here.
                    addr.parse::<IpAddr>()
                        .ok()
                        .map(|ip| SocketAddr::new(ip, PORT))
                }
                _ => None,
            }
        })
        .collect()
}

/// The running name server. It stops when the token given to [`Dns::start`] is cancelled.
pub struct Dns {
    pub addr: SocketAddr,
}

impl Dns {
    /// Binds `addr` (UDP and TCP, shared with other emulators through `SO_REUSEPORT`) and
    /// serves until `stop`.
    pub async fn start(
        addr: SocketAddr,
        config: DnsConfig,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> std::io::Result<Dns> {
        // Port 0 (tests): TCP takes the port UDP got, which may be taken for TCP; then
        // another pair is tried.
        let mut attempts = 0;
        let (udp, tcp, addr) = loop {
            let udp = UdpSocket::from_std(shared_socket(addr, socket2::Type::DGRAM)?.into())?;
            let bound = udp.local_addr()?;
            let tcp = shared_socket(bound, socket2::Type::STREAM).and_then(|socket| {
                socket.listen(64)?;
                TcpListener::from_std(socket.into())
            });
            match tcp {
                Ok(tcp) => break (udp, tcp, bound),
                Err(_) if addr.port() == 0 && attempts < 10 => attempts += 1,
                Err(e) => return Err(e),
            }
        };
        let config = Arc::new(config);
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        tasks.spawn(serve_udp(
            Arc::new(udp),
            config.clone(),
            in_flight.clone(),
            tasks.clone(),
            stop.clone(),
        ));
        tasks.spawn(serve_tcp(tcp, config, in_flight, tasks.clone(), stop));
        Ok(Dns { addr })
    }
}

/// A non-blocking socket bound to `addr` that other emulators may bind too.
fn shared_socket(addr: SocketAddr, kind: socket2::Type) -> std::io::Result<socket2::Socket> {
    let protocol = match kind {
        socket2::Type::DGRAM => socket2::Protocol::UDP,
        _ => socket2::Protocol::TCP,
    };
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), kind, Some(protocol))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    config: Arc<DnsConfig>,
    in_flight: Arc<Semaphore>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, client) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    // An ICMP error of an earlier reply and the like: not fatal.
                    tracing::debug!("name server: {e}");
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let message = buf[..len].to_vec();
        match decide(&message, config.local) {
            Decision::Local(answer) | Decision::Malformed(Some(answer)) => {
                let _ = socket.send_to(&answer, client).await;
            }
            Decision::Malformed(None) => {}
            Decision::Forward => {
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    continue;
                };
                let socket = socket.clone();
                let config = config.clone();
                let stop = stop.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    let answer = tokio::select! {
                        answer = forward_udp(&message, &config.upstream) => answer,
                        _ = stop.cancelled() => return,
                    };
                    let answer = answer.unwrap_or_else(|| servfail(&message));
                    let _ = socket.send_to(&answer, client).await;
                });
            }
        }
    }
}

/// SERVFAIL for a query none of the host's servers answered.
fn servfail(query: &[u8]) -> Vec<u8> {
    let end = question(query).map_or(12, |q| q.end);
    response(query, end, RCODE_SERVFAIL, None)
}

/// Asks the host's servers in turn; the first answer with the query's id wins.
async fn forward_udp(query: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in upstream {
        let bind: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(socket) = UdpSocket::bind(bind).await else {
            continue;
        };
        if socket.connect(server).await.is_err() || socket.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65535];
        let received = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            loop {
                let len = socket.recv(&mut buf).await.ok()?;
                if len >= 2 && buf[..2] == query[..2] {
                    return Some(len);
                }
            }
        })
        .await;
        if let Ok(Some(len)) = received {
            buf.truncate(len);
            return Some(buf);
        }
    }
    None
}

async fn serve_tcp(
    listener: TcpListener,
    config: Arc<DnsConfig>,
    in_flight: Arc<Semaphore>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!("name server: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let config = config.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = serve_tcp_client(stream, &config) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// One TCP client: length-prefixed queries, answered in order, until it closes or idles.
async fn serve_tcp_client(mut stream: TcpStream, config: &DnsConfig) {
    loop {
        let query =
            match tokio::time::timeout(UPSTREAM_TIMEOUT, read_tcp_message(&mut stream)).await {
                Ok(Some(query)) => query,
                _ => return,
            };
        let answer = match decide(&query, config.local) {
            Decision::Local(answer) | Decision::Malformed(Some(answer)) => answer,
            Decision::Malformed(None) => return,
            Decision::Forward => forward_tcp(&query, &config.upstream)
                .await
                .unwrap_or_else(|| servfail(&query)),
        };
        if write_tcp_message(&mut stream, &answer).await.is_err() {
            return;
        }
    }
}

async fn read_tcp_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let len = stream.read_u16().await.ok()? as usize;
    if len > MAX_TCP_QUERY {
        return None;
    }
    let mut message = vec![0u8; len];
    stream.read_exact(&mut message).await.ok()?;
    Some(message)
}

async fn write_tcp_message(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(message.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    stream.write_all(&out).await
}

/// Asks the host's servers over TCP (the client came over TCP because UDP's answer was
/// truncated).
async fn forward_tcp(query: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in upstream {
        let exchange = async {
            let mut stream = TcpStream::connect(server).await.ok()?;
            write_tcp_message(&mut stream, query).await.ok()?;
            let len = stream.read_u16().await.ok()? as usize;
            let mut answer = vec![0u8; len];
            stream.read_exact(&mut answer).await.ok()?;
            Some(answer)
        };
        if let Ok(Some(answer)) = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
            return Some(answer);
        }
    }
    None
}

#[cfg(test)]
mod tests;
