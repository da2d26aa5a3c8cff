//! Test fixtures: the test images (built once per run from `docker/`), an `Emulator` that runs
//! the real binary and cleans up after itself, and small HTTP helpers.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::emulator::{owned_by, owner_listing, run_command, Announcement, NotServing, Process};
pub use crate::images::{context, require_docker, run_checked, testapp_image};

/// An amd64-labelled image whose binary is arm64: an ELF header with e_machine = 183
/// (AArch64) is enough, since the kernel refuses it before reading further.
pub fn arm64_binary_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        require_docker();
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little-endian
        elf[6] = 1; // ELF version
        elf[16] = 2; // ET_EXEC
        elf[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
        elf[20] = 1;
        let dockerfile = b"FROM scratch\nCOPY app /app\nENTRYPOINT [\"/app\"]\n";
        let dir = context(
            "arm64-binary",
            &[("Dockerfile", dockerfile, 0o644), ("app", &elf, 0o755)],
        );
        let image = "emulate-it-arm64-binary:it".to_string();
        run_checked(
            Command::new("docker")
                .args(["build", "-q", "-t", &image])
                .arg(&dir),
        );
        image
    })
}

/// An image labelled linux/arm64 (what `docker build` makes on Apple Silicon), loaded from a
/// hand-made image archive since nothing can be pulled or cross-built here.
pub fn arm64_labelled_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        require_docker();
        let image = "emulate-it-arm64-label:it".to_string();
        let mut layer = tar::Builder::new(Vec::new());
        append(&mut layer, "app", b"#!/bin/false\n", 0o755);
        let layer = layer.into_inner().unwrap();
        let config = format!(
            r#"{{"architecture":"arm64","os":"linux","config":{{"Entrypoint":["/app"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}}}}"#,
            sha256_hex(&layer)
        );
        let manifest = format!(r#"[{{"Config":"config.json","RepoTags":["{image}"],"Layers":["layer.tar"]}}]"#);
        let mut archive = tar::Builder::new(Vec::new());
        append(&mut archive, "config.json", config.as_bytes(), 0o644);
        append(&mut archive, "layer.tar", &layer, 0o644);
        append(&mut archive, "manifest.json", manifest.as_bytes(), 0o644);
        let archive = archive.into_inner().unwrap();
        let mut load = Command::new("docker")
            .args(["load", "-q"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        load.stdin.take().unwrap().write_all(&archive).unwrap();
        assert!(load.wait().unwrap().success(), "docker load failed");
        image
    })
}

fn append(archive: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_cksum();
    archive.append_data(&mut header, path, data).unwrap();
}

/// Docker checks each layer against the diff id in the config, so the digest must be real.
fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils) is installed");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A unique, valid service name, so parallel tests never share containers: 40 random bits make
/// a clash between two of the suite's few hundred names about as likely as one in 10^7.
pub fn service_name(prefix: &str) -> String {
    format!(
        "it-{prefix}-{:010x}",
        rand::random::<u64>() & 0xff_ffff_ffff
    )
}

/// The `emulate` binary as a command, with no `EMULATE_*` variable of the outer environment
/// (an admin address, a secret, a log level) reaching it unless the test sets it.
pub fn emulate_command() -> Command {
    crate::emulator::emulate_command(env!("CARGO_BIN_EXE_emulate"))
}

/// Containers (running or not) of a service, by the emulator's label.
pub fn containers_of(service: &str) -> Vec<String> {
    let out = run_checked(Command::new("docker").args([
        "ps",
        "-aq",
        "--filter",
        &format!("label=dev.emulate.service={service}"),
    ]));
    out.lines().map(str::to_string).collect()
}

/// Containers of a service in any state but `created`: everything but the spare container
/// made ahead of time for the next cold start. A stopped container that was never removed
/// counts here, as it should when a test checks that a service scaled to zero.
pub fn started_containers_of(service: &str) -> Vec<String> {
    let mut command = Command::new("docker");
    command.args([
        "ps",
        "-aq",
        "--filter",
        &format!("label=dev.emulate.service={service}"),
    ]);
    for status in [
        "restarting",
        "running",
        "removing",
        "paused",
        "exited",
        "dead",
    ] {
        command.args(["--filter", &format!("status={status}")]);
    }
    run_checked(&mut command)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The revisions (label `dev.emulate.revision`) of a service's running containers, sorted.
pub fn running_revisions_of(service: &str) -> Vec<String> {
    let out = run_checked(Command::new("docker").args([
        "ps",
        "--filter",
        &format!("label=dev.emulate.service={service}"),
        "--format",
        "{{.Label \"dev.emulate.revision\"}}",
    ]));
    let mut revisions: Vec<String> = out.lines().map(str::to_string).collect();
    revisions.sort();
    revisions
}

/// Seconds since the epoch, for `containers_created_since`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The engine's `create` events for a service's containers since `since` (from `unix_now`,
/// taken a second early since events have one-second resolution): proof that nothing was
/// created, which the end state alone cannot give.
pub fn containers_created_since(service: &str, since: u64) -> Vec<String> {
    let out = run_checked(Command::new("docker").args([
        "events",
        "--since",
        &since.saturating_sub(1).to_string(),
        "--until",
        &(unix_now() + 1).to_string(),
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--filter",
        &format!("label=dev.emulate.service={service}"),
        "--format",
        "{{.ID}}",
    ]));
    out.lines().map(str::to_string).collect()
}

/// Running containers of a service (not the spare one created ahead of time).
pub fn running_containers_of(service: &str) -> usize {
    running_container_ids(service).len()
}

pub fn running_container_ids(service: &str) -> Vec<String> {
    let out = run_checked(Command::new("docker").args([
        "ps",
        "-q",
        "--filter",
        &format!("label=dev.emulate.service={service}"),
    ]));
    out.lines().map(str::to_string).collect()
}

/// The real `emulate` binary, running one service. Dropping it kills the process and removes
/// any container of its service, so a failing test leaves nothing behind.
pub struct Emulator {
    process: Process,
    pub service: String,
    pub addr: SocketAddr,
    /// The admin API's address (`emulate deploy` etc. talk to it).
    pub admin: String,
    /// Whether the test sent SIGKILL: such an emulator cannot clean up, and its containers are
    /// left for the next one to reap.
    killed: std::sync::atomic::AtomicBool,
}

/// What a finished emulator printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Emulator {
    fn spawn(service: &str, args: &[&str], env: &[(&str, &str)]) -> Emulator {
        let mut command = run_command(env!("CARGO_BIN_EXE_emulate"), service, args);
        command.envs(env.iter().copied());
        let process = Process::spawn(&mut command, usize::MAX).expect("the emulate binary runs");
        Emulator {
            process,
            service: service.to_string(),
            addr: "127.0.0.1:0".parse().unwrap(),
            admin: String::new(),
            killed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Starts `emulate run` and waits until it serves and has announced its admin API (which
    /// it prints after the service URL).
    pub async fn start(service: &str, args: &[&str]) -> Emulator {
        Emulator::start_with_env(service, args, &[]).await
    }

    /// `start`, with environment variables for the emulator process.
    pub async fn start_with_env(service: &str, args: &[&str], env: &[(&str, &str)]) -> Emulator {
        require_docker();
        let mut emulator = Emulator::spawn(service, args, env);
        match emulator.process.announced(Duration::from_secs(60)).await {
            Ok(Announcement { addr, admin }) => {
                emulator.addr = addr;
                emulator.admin = admin;
                emulator
            }
            Err(NotServing::Exited(status)) => panic!(
                "emulate exited with {status} before serving:\n{}\n{}",
                emulator.stdout(),
                emulator.stderr()
            ),
            Err(NotServing::TimedOut) => {
                panic!("emulate did not serve within 60 s:\n{}", emulator.stderr())
            }
        }
    }

    /// Starts `emulate run` without waiting for anything.
    pub fn spawn_run(service: &str, args: &[&str]) -> Emulator {
        require_docker();
        Emulator::spawn(service, args, &[])
    }

    /// Runs `emulate run` expecting it to end by itself (a failure), within `limit`.
    pub async fn run_to_exit(
        service: &str,
        args: &[&str],
        env: &[(&str, &str)],
        limit: Duration,
    ) -> Finished {
        let mut emulator = Emulator::spawn(service, args, env);
        emulator.wait(limit).await
    }

    /// Runs a control-plane verb (`deploy ...`, `services ...`) against this emulator. It
    /// finds the run's token itself, in the discovery file announcing `EMULATE_ADMIN`.
    pub async fn cli(&self, args: &[&str]) -> Finished {
        self.cli_env(args, &[]).await
    }

    /// Like `cli`, with more env vars.
    pub async fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Finished {
        let admin = self.admin.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let output = emulate_command()
                .args(&args)
                .env("EMULATE_ADMIN", admin)
                .env("NO_COLOR", "1")
                .envs(env)
                .output()
                .expect("the emulate binary runs");
            Finished {
                status: output.status,
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        })
        .await
        .unwrap()
    }

    /// Like `cli`, asserting success.
    pub async fn cli_ok(&self, args: &[&str]) -> Finished {
        let done = self.cli(args).await;
        assert_eq!(
            done.status.code(),
            Some(0),
            "emulate {args:?} failed:\n{}\n{}",
            done.stdout,
            done.stderr
        );
        done
    }

    /// `emulate revisions list --service SERVICE --format json`: the service's Revision
    /// documents, newest first.
    pub async fn revision_list(&self) -> Vec<serde_json::Value> {
        let done = self
            .cli_ok(&[
                "revisions",
                "list",
                "--service",
                &self.service,
                "--format",
                "json",
            ])
            .await;
        let list: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
        list.as_array().cloned().unwrap_or_default()
    }

    /// The Service document, as `services describe SERVICE --format json` prints it.
    pub async fn describe_service(&self) -> serde_json::Value {
        let done = self
            .cli_ok(&["services", "describe", &self.service, "--format", "json"])
            .await;
        serde_json::from_str(&done.stdout).unwrap()
    }

    /// The revision that answers a request for `path` with the given Host header.
    pub async fn revision_for(&self, host: &str, path: &str) -> String {
        let reply = request("GET", &self.url(path), &[("host", host)], Vec::new(), false).await;
        assert_eq!(reply.status, 200, "{host}{path}: {}", reply.body);
        reply.revision
    }

    /// This emulator's discovery file (`$TMPDIR/emulate/admin-PID.json`).
    pub fn discovery_file(&self) -> std::path::PathBuf {
        std::env::temp_dir()
            .join("emulate")
            .join(format!("admin-{}.json", self.pid()))
    }

    /// The run's admin API token, read from its discovery file ("" if it has none), for
    /// tests that talk to the admin API directly.
    pub fn admin_token(&self) -> String {
        let text = std::fs::read_to_string(self.discovery_file()).unwrap_or_else(|e| {
            panic!("{}: {e}", self.discovery_file().display());
        });
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        value["token"].as_str().unwrap_or_default().to_string()
    }

    /// The dashboard's URL with its read-only token, as `emulate run` printed it.
    pub fn dashboard_url(&self) -> String {
        self.stderr()
            .lines()
            .find_map(|l| l.strip_prefix("Dashboard: "))
            .unwrap_or_else(|| panic!("no Dashboard line:\n{}", self.stderr()))
            .trim()
            .to_string()
    }

    /// The admin API's address, dialable (a wildcard bind is reached on loopback).
    pub fn admin_addr(&self) -> SocketAddr {
        let addr: SocketAddr = self.admin.parse().unwrap();
        if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn stdout(&self) -> String {
        self.process.stdout()
    }

    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// Waits until the emulator (or one of its containers, whose lines it prints) has printed
    /// `needle`, failing the test after `limit`.
    pub async fn wait_for_output(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stdout().contains(needle) && !self.stderr().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {limit:?}:\n{}\n{}",
                self.stdout(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a signal (`INT`, `TERM`, `KILL`) to the emulator process.
    pub fn signal(&self, signal: &str) {
        if signal == "KILL" {
            self.killed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to end, then for its output to be read.
    pub async fn wait(&mut self, limit: Duration) -> Finished {
        let Some(status) = self.process.exited(limit).await else {
            panic!(
                "emulate still running after {limit:?}:\n{}\n{}",
                self.stdout(),
                self.stderr()
            );
        };
        Finished {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Emulator {
    /// Stops the emulator the way a user would (Ctrl-C, then a second one if it lingers), then
    /// asserts that it removed every container it started: a leak fails the test. Forced
    /// removal follows the check, as cleanup only, so a leak is never masked.
    fn drop(&mut self) {
        let pid = self.pid();
        let lingered = self.process.stop();
        let mut leaked = containers_owned_by(pid);
        leaked.extend(containers_of(&self.service));
        leaked.sort();
        leaked.dedup();
        for id in &leaked {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
        if std::thread::panicking() {
            return;
        }
        assert!(
            !lingered,
            "emulate (pid {pid}) did not stop after two Ctrl-C:\n{}",
            self.stderr()
        );
        if !self.killed.load(std::sync::atomic::Ordering::Relaxed) {
            assert!(
                leaked.is_empty(),
                "emulate (pid {pid}) exited and left containers behind: {leaked:?}\n{}",
                self.stderr()
            );
        }
    }
}

/// The containers (running or not) whose owner label names process `pid` of this host.
pub fn containers_owned_by(pid: u32) -> Vec<String> {
    let listing = owner_listing("label=dev.emulate.managed=true", true);
    owned_by(&run_checked(Command::new("docker").args(listing)), pid)
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The test app's `x-k-revision` header: which revision answered.
    pub revision: String,
    /// The test app's `x-in-flight` header: requests in flight in its instance when this one
    /// started, itself included.
    pub in_flight: u32,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends one HTTP/1.1 request (or HTTP/2 with prior knowledge when `http2`).
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    http2: bool,
) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http();
    let mut builder = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = client
        .request(builder.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e:?}"));
    let status = response.status().as_u16();
    let in_flight = response
        .headers()
        .get("x-in-flight")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let revision = response
        .headers()
        .get("x-k-revision")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        revision,
        in_flight,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(url: &str) -> Reply {
    request("GET", url, &[], Vec::new(), false).await
}

/// `docker inspect` of a container as JSON.
pub fn inspect(id: &str) -> serde_json::Value {
    let out = run_checked(Command::new("docker").args(["inspect", id]));
    serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
}

/// Writes a service.yaml running the test app as `service`, with `container` (YAML lines at
/// the container's indentation, e.g. a probe) added to the container; returns its path.
pub fn service_yaml(service: &str, container: &str) -> std::path::PathBuf {
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: {service}}}\nspec:\n  template:\n    spec:\n      containers:\n      - image: {}\n{container}",
        testapp_image()
    );
    let file = std::env::temp_dir().join(format!("{service}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    file
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    pub body: String,
}

/// Sends `request` (a whole HTTP/1.1 request, written as is: tests control every header,
/// even a missing Host) and reads the answer until the server closes; send
/// `Connection: close`.
pub async fn raw_http(addr: SocketAddr, request: &str) -> RawReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the server answered and closed within 30 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    RawReply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Runs `emulate smoke ARGS` to completion.
pub async fn smoke(args: &[&str], env: &[(&str, &str)]) -> Finished {
    require_docker();
    let mut command = emulate_command();
    command.arg("smoke").args(args).env("NO_COLOR", "1");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || command.output().unwrap()),
    )
    .await
    .expect("emulate smoke finished within 2 minutes")
    .unwrap();
    Finished {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
