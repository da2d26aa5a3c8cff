//! The default startup probe (one TCP attempt with a 240 s budget, polled every few
//! milliseconds) and the diagnosis of a container that does not listen where Cloud Run looks:
//! its listening sockets are read from `/proc/<pid>/net/tcp{,6}`, which works for images with
//! no shell.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How often the probe dials while the app starts: fast enough that readiness is noticed
/// within a few milliseconds, cheap because a refused connect costs one RST.
pub const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// Tries one TCP connect to the container. Through Docker's userland port proxy a connect
/// always succeeds (the proxy accepts, then closes when the app is not there), so in that
/// mode the connection must also stay open for a moment to count.
pub async fn tcp_connects(addr: SocketAddr, through_port_proxy: bool) -> bool {
    let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await;
    let Ok(Ok(mut stream)) = connect else {
        return false;
    };
    if !through_port_proxy {
        return true;
    }
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut byte)).await {
        Err(_) => true,     // Still open and silent: the app accepted.
        Ok(Ok(0)) => false, // Closed by the proxy: nothing listens behind it.
        Ok(Ok(_)) => true,  // The app spoke first.
        Ok(Err(_)) => false,
    }
}

/// A user's HTTP GET (200-399 passes) or gRPC health check (SERVING passes) probe. As a
/// liveness probe it runs every `period` after startup and `failure_threshold` failures in a
/// row restart the instance; as a startup probe it must pass before the instance gets traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthProbe {
    pub check: HealthCheck,
    pub port: u16,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HealthCheck {
    Http { path: String },
    Grpc { service: String },
}

impl HealthProbe {
    /// `HTTP` or `gRPC`, as Cloud Run names probes in its log lines.
    pub fn kind(&self) -> &'static str {
        match self.check {
            HealthCheck::Http { .. } => "HTTP",
            HealthCheck::Grpc { .. } => "gRPC",
        }
    }

    /// Which of Cloud Run's attempts (1-based, at the initial delay and then every period)
    /// would be the first to see an app that became healthy `elapsed` after its start.
    pub fn attempt_at(&self, elapsed: Duration) -> u32 {
        let after_delay = elapsed.saturating_sub(self.initial_delay);
        let periods = after_delay
            .as_nanos()
            .div_ceil(self.period.as_nanos().max(1));
        u32::try_from(periods)
            .unwrap_or(u32::MAX)
            .saturating_add(1)
            .min(self.failure_threshold.max(1))
    }

    /// Where it probes, as Cloud Run's probe lines say it: `on port 8080 path /healthz`.
    pub fn target(&self) -> String {
        match &self.check {
            HealthCheck::Http { path } => format!("on port {} path {path}", self.port),
            HealthCheck::Grpc { .. } => format!("on port {}", self.port),
        }
    }

    /// One probe of the instance at `addr`; true when it answered alive within the timeout.
    pub async fn probe(&self, addr: SocketAddr) -> bool {
        self.check(addr).await.is_ok()
    }

    /// One probe of the instance at `addr`, or what went wrong (`answered 503`, ...).
    pub async fn check(&self, addr: SocketAddr) -> Result<(), String> {
        tokio::time::timeout(self.timeout, self.check.run(addr))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", self.timeout.as_secs())))
    }
}

impl HealthCheck {
    async fn run(&self, addr: SocketAddr) -> Result<(), String> {
        use http_body_util::{BodyExt, Full};
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("could not connect ({e})"))?;
        let io = hyper_util::rt::TokioIo::new(stream);
        match self {
            HealthCheck::Http { path } => {
                let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| format!("HTTP/1 failed ({e})"))?;
                tokio::spawn(connection);
                let request = http::Request::get(path.as_str())
                    .header(http::header::HOST, addr.to_string())
                    .header(http::header::USER_AGENT, "emulate-probe")
                    .body(Full::new(bytes::Bytes::new()))
                    .map_err(|e| format!("invalid path ({e})"))?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| format!("no HTTP response ({e})"))?;
                let status = response.status();
                match (200..400).contains(&status.as_u16()) {
                    true => Ok(()),
                    false => Err(format!("answered {status}")),
                }
            }
            HealthCheck::Grpc { service } => {
                let executor = hyper_util::rt::TokioExecutor::new();
                let (mut sender, connection) = hyper::client::conn::http2::handshake(executor, io)
                    .await
                    .map_err(|e| format!("HTTP/2 failed ({e}); gRPC needs h2c"))?;
                tokio::spawn(connection);
                let request =
                    http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
                        .header(http::header::CONTENT_TYPE, "application/grpc")
                        .header(http::header::TE, "trailers")
                        .body(Full::new(grpc_health_request(service)))
                        .map_err(|e| format!("invalid request ({e})"))?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| format!("no gRPC response ({e})"))?;
                if response.status() != http::StatusCode::OK {
                    return Err(format!("answered HTTP {}", response.status()));
                }
                let collected = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("the response broke off ({e})"))?;
                let grpc_status = collected
                    .trailers()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|s| s.to_str().ok())
                    .unwrap_or("0")
                    .to_string();
                if grpc_status != "0" {
                    return Err(format!("answered grpc-status {grpc_status}"));
                }
                match grpc_health_serving(&collected.to_bytes()) {
                    true => Ok(()),
                    false => Err("answered NOT_SERVING".to_string()),
                }
            }
        }
    }
}

/// A `grpc.health.v1.HealthCheckRequest { service }`, length-prefixed as gRPC frames it.
fn grpc_health_request(service: &str) -> bytes::Bytes {
    let mut message = Vec::new();
    if !service.is_empty() {
        // Field 1, wire type 2 (length-delimited); a service name is far shorter than 128.
        message.push(0x0a);
        message.push(service.len().min(127) as u8);
        message.extend_from_slice(&service.as_bytes()[..service.len().min(127)]);
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame.into()
}

/// Whether a framed `HealthCheckResponse` says SERVING (field 1 = 1).
fn grpc_health_serving(frame: &[u8]) -> bool {
    frame.len() >= 5 && frame[5..].windows(2).any(|w| w == [0x08, 0x01])
}

/// Why a container is not reachable where Cloud Run sends traffic, when that can be told from
/// its listening sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenDiagnosis {
    /// It listens on $PORT but only on a loopback address.
    LoopbackOnly { addr: SocketAddr },
    /// It listens, but not on $PORT.
    OtherPorts { addrs: Vec<SocketAddr> },
    /// Nothing listens at all.
    NotListening,
}

impl ListenDiagnosis {
    pub fn explain(&self, port: u16) -> String {
        match self {
            ListenDiagnosis::LoopbackOnly { addr } => format!(
                "The app listens on {addr}, which only accepts connections from inside the container. Cloud Run (and this emulator) connect from outside: listen on 0.0.0.0:{port} (all interfaces), e.g. bind to \"0.0.0.0:\" + $PORT instead of \"localhost\" or \"127.0.0.1\"."
            ),
            ListenDiagnosis::OtherPorts { addrs } => {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                format!(
                    "The app listens on {}, not on port {port}. Read the port from the PORT environment variable (PORT={port}), or deploy with --port set to the port the app uses.",
                    list.join(", ")
                )
            }
            ListenDiagnosis::NotListening => format!(
                "Nothing in the container listens on any TCP port. The app must start an HTTP server on 0.0.0.0:{port} (the PORT environment variable)."
            ),
        }
    }
}

/// Judges the listening sockets against the port Cloud Run will dial. None means nothing is
/// wrong (something listens on all interfaces, or on a non-loopback address, on `port`).
pub fn diagnose(listening: &[SocketAddr], port: u16) -> Option<ListenDiagnosis> {
    let on_port: Vec<&SocketAddr> = listening.iter().filter(|a| a.port() == port).collect();
    if on_port.iter().any(|a| !a.ip().is_loopback()) {
        return None;
    }
    if let Some(addr) = on_port.first() {
        return Some(ListenDiagnosis::LoopbackOnly { addr: **addr });
    }
    if listening.is_empty() {
        return Some(ListenDiagnosis::NotListening);
    }
    let mut addrs = listening.to_vec();
    addrs.sort();
    addrs.dedup();
    Some(ListenDiagnosis::OtherPorts { addrs })
}

/// The listening TCP sockets in the network namespace of process `pid`, or None when they
/// cannot be read (not Linux, or the process is not on this host, as with Docker Desktop).
pub fn listening_sockets(pid: u32) -> Option<Vec<SocketAddr>> {
    let v4 = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    let v6 = std::fs::read_to_string(format!("/proc/{pid}/net/tcp6")).unwrap_or_default();
    let mut sockets = parse_proc_net_tcp(&v4);
    sockets.extend(parse_proc_net_tcp(&v6));
    Some(sockets)
}

/// What a container's PID 1 does with SIGTERM, read from `/proc/<pid>/status` at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sigterm {
    /// It has a handler: it may shut down (or not; only the stop tells).
    Handled,
    /// It ignores SIGTERM explicitly (`SigIgn`).
    Ignored,
    /// No handler: the kernel does not deliver a default-action signal to a namespace's init,
    /// so SIGTERM does nothing and Cloud Run SIGKILLs it after 10 s.
    Unhandled,
}

impl Sigterm {
    /// Whether SIGTERM will certainly do nothing.
    pub fn certainly_ignored(self) -> bool {
        matches!(self, Sigterm::Ignored | Sigterm::Unhandled)
    }
}

/// Reads `SigCgt` and `SigIgn` of a `/proc/<pid>/status` text.
pub fn sigterm_disposition(status: &str) -> Option<Sigterm> {
    let mask = |key: &str| {
        status.lines().find_map(|line| {
            let hex = line.strip_prefix(key)?.trim();
            u64::from_str_radix(hex, 16).ok()
        })
    };
    // SIGTERM is 15: bit 14 of the masks.
    let bit = 1u64 << 14;
    let (caught, ignored) = (mask("SigCgt:")?, mask("SigIgn:")?);
    Some(if caught & bit != 0 {
        Sigterm::Handled
    } else if ignored & bit != 0 {
        Sigterm::Ignored
    } else {
        Sigterm::Unhandled
    })
}

/// What process `pid` (a container's PID 1, as seen from the host) does with SIGTERM; None
/// when it cannot be read (not Linux, or the process is not on this host, as with Docker
/// Desktop).
pub fn read_sigterm(pid: u32) -> Option<Sigterm> {
    sigterm_disposition(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Parses the kernel's `/proc/net/tcp` or `tcp6` table, keeping sockets in state LISTEN (0A).
/// Addresses are printed as host-order 32-bit words (little-endian on x86).
pub fn parse_proc_net_tcp(table: &str) -> Vec<SocketAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            if state != "0A" {
                return None;
            }
            let (ip_hex, port_hex) = local.split_once(':')?;
            let port = u16::from_str_radix(port_hex, 16).ok()?;
            let ip = match ip_hex.len() {
                8 => IpAddr::V4(Ipv4Addr::from(
                    u32::from_str_radix(ip_hex, 16).ok()?.to_le_bytes(),
                )),
                32 => {
                    let mut bytes = [0u8; 16];
                    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                        let word = u32::from_str_radix(&ip_hex[i * 8..i * 8 + 8], 16).ok()?;
                        chunk.copy_from_slice(&word.to_le_bytes());
                    }
                    let v6 = Ipv6Addr::from(bytes);
                    // A v4-mapped loopback (::ffff:127.0.0.1) is still loopback.
                    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
                }
                _ => return None,
            };
            Some(SocketAddr::new(ip, port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0200A8C0:1F90 0100A8C0:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000
   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000
";

    #[test]
    fn listening_sockets_are_read_from_the_kernel_table() {
        let v4 = parse_proc_net_tcp(TCP);
        assert_eq!(
            v4,
            vec![
                "127.0.0.1:8080".parse().unwrap(),
                "0.0.0.0:3000".parse().unwrap()
            ]
        );
        let v6 = parse_proc_net_tcp(TCP6);
        assert_eq!(
            v6,
            vec!["[::1]:8080".parse().unwrap(), "[::]:80".parse().unwrap()]
        );
    }

    #[test]
    fn grpc_health_messages_are_framed() {
        assert_eq!(&grpc_health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_health_request("a")[..],
            &[0, 0, 0, 0, 3, 0x0a, 1, b'a']
        );
        assert!(grpc_health_serving(&[0, 0, 0, 0, 2, 0x08, 0x01]));
        assert!(!grpc_health_serving(&[0, 0, 0, 0, 2, 0x08, 0x02]));
    }

    #[test]
    fn diagnoses_loopback_wrong_port_and_silence() {
        let sock = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(diagnose(&[sock("0.0.0.0:8080")], 8080), None);
        assert_eq!(diagnose(&[sock("[::]:8080")], 8080), None);
        assert_eq!(diagnose(&[sock("172.17.0.2:8080")], 8080), None);
        assert_eq!(
            diagnose(&[sock("127.0.0.1:8080")], 8080),
            Some(ListenDiagnosis::LoopbackOnly {
                addr: sock("127.0.0.1:8080")
            })
        );
        assert_eq!(
            diagnose(&[sock("0.0.0.0:3000"), sock("127.0.0.1:9000")], 8080),
            Some(ListenDiagnosis::OtherPorts {
                addrs: vec![sock("0.0.0.0:3000"), sock("127.0.0.1:9000")]
            })
        );
        assert_eq!(diagnose(&[], 8080), Some(ListenDiagnosis::NotListening));
        let text = ListenDiagnosis::LoopbackOnly {
            addr: sock("127.0.0.1:8080"),
        }
        .explain(8080);
        assert!(text.contains("0.0.0.0:8080"), "{text}");
    }

    #[test]
    fn a_startup_pass_is_credited_to_cloud_runs_next_attempt() {
        let probe = HealthProbe {
            check: HealthCheck::Http {
                path: "/ready".into(),
            },
            port: 8080,
            initial_delay: Duration::from_secs(2),
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
        };
        let at = |ms| probe.attempt_at(Duration::from_millis(ms));
        // Attempts at 2 s, 12 s and 22 s.
        assert_eq!(at(500), 1);
        assert_eq!(at(2_000), 1);
        assert_eq!(at(2_001), 2);
        assert_eq!(at(12_000), 2);
        assert_eq!(at(15_000), 3);
        assert_eq!(at(40_000), 3, "never past the failure threshold");
        assert_eq!(probe.target(), "on port 8080 path /ready");
    }

    #[test]
    fn sigterm_is_read_from_the_signal_masks() {
        let status = |caught: &str, ignored: &str| {
            format!("Name:\ttestapp\nSigBlk:\t0000000000000000\nSigIgn:\t{ignored}\nSigCgt:\t{caught}\n")
        };
        // A tokio app with SIGTERM and SIGINT handlers: bits 14 and 1.
        assert_eq!(
            sigterm_disposition(&status("0000000000004002", "0000000000000000")),
            Some(Sigterm::Handled)
        );
        assert_eq!(
            sigterm_disposition(&status("0000000000000002", "0000000000004000")),
            Some(Sigterm::Ignored)
        );
        // A shell as PID 1 without a trap: SIGINT and others caught, SIGTERM not.
        assert_eq!(
            sigterm_disposition(&status("0000000000010002", "0000000000000004")),
            Some(Sigterm::Unhandled)
        );
        assert!(Sigterm::Unhandled.certainly_ignored() && !Sigterm::Handled.certainly_ignored());
        assert_eq!(sigterm_disposition("Name: x\n"), None);
        assert!(read_sigterm(std::process::id()).is_some());
    }
}
