//! `emulate run`: deploy one image as a one-revision service and serve it on localhost until
//! Ctrl-C, or fail the way Cloud Run would fail the deploy, in Cloud Run's words.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Exit;
use crate::cloudrun;
use crate::config::{self, InvalidValue};
use crate::instance::{self, Instance, RevisionSpec, StartError, UpstreamMode};
use crate::logs::LogPrinter;
use crate::proxy::{InstanceSlot, Proxy, ProxyConfig, Upstream};
use crate::runtime::{self, Runtime, RuntimeError};
use crate::sample;
use crate::shutdown::Signals;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The image to run, as you would pass it to `gcloud run deploy --image`. Without one,
    /// the built-in hello sample is built locally and run.
    pub image: Option<String>,
    /// The service name (default: derived from the image name).
    #[arg(long)]
    pub service: Option<String>,
    /// The port requests are sent to, set as $PORT in the container.
    #[arg(long, default_value_t = cloudrun::DEFAULT_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Env vars to set, `NAME=VALUE,NAME2=VALUE2` (gcloud's `^DELIM^` escaping works).
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub set_env_vars: Vec<String>,
    /// A file of env vars: YAML (`NAME: value`) or .env (`NAME=value`).
    #[arg(long, value_name = "FILE")]
    pub env_vars_file: Option<PathBuf>,
    /// Memory limit, e.g. 512Mi or 2Gi.
    #[arg(long, default_value = "512Mi")]
    pub memory: String,
    /// CPU limit, e.g. 1, 2 or 1000m.
    #[arg(long, default_value = "1")]
    pub cpu: String,
    /// Request timeout: seconds (300) or with units (5m); at most 1h.
    #[arg(long, default_value = "300")]
    pub timeout: String,
    /// Replace the image's entrypoint: `cmd,arg,...`.
    #[arg(long, value_name = "COMMAND,...")]
    pub command: Option<String>,
    /// Replace the image's arguments (CMD): `arg,arg,...`.
    #[arg(long, value_name = "ARG,...")]
    pub args: Option<String>,
    /// Speak HTTP/2 cleartext (h2c) to the container end to end, as with a port named h2c.
    #[arg(long)]
    pub use_http2: bool,
    /// Where the emulator serves requests.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: String,
    /// The startup probe's budget (Cloud Run's default probe allows 240 s).
    #[arg(long, default_value = "240s")]
    pub startup_timeout: String,
    /// How the proxy reaches containers: their bridge IP (fastest, Linux), a port published
    /// on 127.0.0.1 (Docker Desktop), or `auto` to pick.
    #[arg(long, value_enum, default_value_t = UpstreamChoice::Auto)]
    pub upstream: UpstreamChoice,
    /// Disconnect clients that take longer than this to send their request head.
    #[arg(long, default_value = "10s", hide = true)]
    pub header_read_timeout: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UpstreamChoice {
    Auto,
    ContainerIp,
    PublishedPort,
}

/// Which image to run.
#[derive(Clone, Debug)]
pub enum ImageChoice {
    User(String),
    Sample,
}

/// `emulate run`'s validated settings.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub image: ImageChoice,
    pub service: String,
    pub port: u16,
    pub env: Vec<(String, String)>,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub memory_bytes: u64,
    pub cpu_millis: u64,
    pub request_timeout: Duration,
    pub startup_budget: Duration,
    pub http2: bool,
    pub listen: SocketAddr,
    pub upstream: UpstreamChoice,
    pub header_read_timeout: Duration,
}

impl RunConfig {
    pub fn from_args(args: RunArgs) -> Result<Self, InvalidValue> {
        let image = match args.image {
            Some(image) if image.trim().is_empty() => {
                return Err(invalid("IMAGE", "the image name is empty"))
            }
            Some(image) => ImageChoice::User(image),
            None => ImageChoice::Sample,
        };
        let service = match (&args.service, &image) {
            (Some(name), _) => name.clone(),
            (None, ImageChoice::User(image)) => cloudrun::service_name_from_image(image),
            (None, ImageChoice::Sample) => "hello".to_string(),
        };
        cloudrun::validate_service_name(&service).map_err(|m| invalid("--service", m))?;
        let mut env = Vec::new();
        if let Some(path) = &args.env_vars_file {
            env.extend(config::read_env_file("--env-vars-file", path)?);
        }
        for list in &args.set_env_vars {
            env.extend(config::parse_env_vars("--set-env-vars", list)?);
        }
        let request_timeout = config::parse_duration("--timeout", &args.timeout)?;
        if request_timeout.is_zero() || request_timeout > cloudrun::MAX_REQUEST_TIMEOUT {
            return Err(invalid(
                "--timeout",
                format!("'{}' must be between 1 second and 1 hour", args.timeout),
            ));
        }
        let startup_budget = config::parse_duration("--startup-timeout", &args.startup_timeout)?;
        if startup_budget.is_zero() {
            return Err(invalid("--startup-timeout", "must be more than zero"));
        }
        let command = args.command.as_deref().map(config::split_list);
        if command
            .as_ref()
            .is_some_and(|c| c.is_empty() || c[0].is_empty())
        {
            return Err(invalid("--command", "the command is empty"));
        }
        Ok(RunConfig {
            image,
            service,
            port: args.port,
            env,
            command,
            args: args.args.as_deref().map(config::split_list),
            memory_bytes: config::parse_memory("--memory", &args.memory)?,
            cpu_millis: config::parse_cpu("--cpu", &args.cpu)?,
            request_timeout,
            startup_budget,
            http2: args.use_http2,
            listen: parse_listen(&args.listen)?,
            upstream: args.upstream,
            header_read_timeout: config::parse_duration(
                "--header-read-timeout",
                &args.header_read_timeout,
            )?,
        })
    }
}

fn invalid(field: &str, message: impl Into<String>) -> InvalidValue {
    InvalidValue {
        field: field.to_string(),
        message: message.into(),
    }
}

/// `--listen` takes `HOST:PORT`, `:PORT` or `PORT` (on 127.0.0.1).
fn parse_listen(text: &str) -> Result<SocketAddr, InvalidValue> {
    let text = text.trim();
    let with_host = if let Some(port) = text.strip_prefix(':') {
        format!("127.0.0.1:{port}")
    } else if text.parse::<u16>().is_ok() {
        format!("127.0.0.1:{text}")
    } else {
        text.replace("localhost:", "127.0.0.1:")
    };
    with_host.parse().map_err(|_| {
        invalid(
            "--listen",
            format!("'{text}' is not an address; use HOST:PORT, e.g. 127.0.0.1:8080"),
        )
    })
}

/// The URL users open: `localhost` for loopback and wildcard addresses.
fn service_url(addr: SocketAddr) -> String {
    match addr.ip() {
        ip if ip.is_loopback() || ip.is_unspecified() => {
            format!("http://localhost:{}", addr.port())
        }
        IpAddr::V6(ip) => format!("http://[{ip}]:{}", addr.port()),
        IpAddr::V4(ip) => format!("http://{ip}:{}", addr.port()),
    }
}

pub async fn run(args: RunArgs) -> Exit {
    let config = match RunConfig::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage;
        }
    };
    let signals = Signals::install();
    let runtime = match Runtime::connect().await {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::DockerUnavailable;
        }
    };
    match instance::reap_orphans(&runtime).await {
        Ok(reaped) if !reaped.is_empty() => {
            let names: Vec<&str> = reaped.iter().map(|c| c.name.as_str()).collect();
            eprintln!(
                "Removed {} container(s) left behind by an emulator that was killed: {}",
                reaped.len(),
                names.join(", ")
            );
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: could not look for leftover containers: {e}"),
    }
    // Bind before starting anything, so a busy port fails fast and leaves nothing behind.
    let listener = match TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                format!(
                    " Something else (another emulate?) is using it; pick another address with --listen, e.g. --listen 127.0.0.1:{}",
                    config.listen.port().wrapping_add(1).max(1024)
                )
            } else {
                String::new()
            };
            eprintln!(
                "error: --listen: cannot listen on {}: {e}.{hint}",
                config.listen
            );
            return Exit::Failure;
        }
    };
    let listen = listener.local_addr().unwrap_or(config.listen);

    let image = match resolve_image(&runtime, &config.image).await {
        Ok(image) => image,
        Err(exit) => return exit,
    };
    let info = match runtime.inspect_image(&image).await {
        Ok(Some(info)) => info,
        Ok(None) => {
            eprintln!("error: image '{image}' disappeared from the engine");
            return Exit::Failure;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Failure;
        }
    };
    if !info.is_amd64_linux() {
        // A local image is a single-platform manifest as `docker push` would upload it.
        eprintln!(
            "ERROR: {}\n(the local image is {}.)\n\n{}",
            cloudrun::unsupported_platform(
                &image,
                "application/vnd.docker.distribution.manifest.v2+json"
            ),
            info.platform(),
            cloudrun::AMD64_HINT.replace("IMAGE", &image)
        );
        return Exit::NotReady;
    }
    let mode = match config.upstream {
        UpstreamChoice::ContainerIp => UpstreamMode::ContainerIp,
        UpstreamChoice::PublishedPort => UpstreamMode::PublishedPort,
        UpstreamChoice::Auto => match runtime.is_docker_desktop().await {
            Ok(true) => UpstreamMode::PublishedPort,
            _ => UpstreamMode::ContainerIp,
        },
    };
    let spec = RevisionSpec {
        service: config.service.clone(),
        revision: cloudrun::revision_name(&config.service, 1, &mut rand::rng()),
        image: image.clone(),
        image_id: info.id.clone(),
        port: config.port,
        env: config.env.clone(),
        command: config.command.clone(),
        args: config.args.clone(),
        memory_bytes: config.memory_bytes,
        cpu_millis: config.cpu_millis,
        startup_budget: config.startup_budget,
    };
    eprintln!(
        "Deploying container to Cloud Run service [{}] (emulated), revision [{}]",
        spec.service, spec.revision
    );
    let printer = LogPrinter::stdout();
    let instance = match instance::start(
        &runtime,
        &spec,
        mode,
        &printer,
        cloudrun::REASON_AUTOSCALING,
        &signals.graceful,
    )
    .await
    {
        Ok(instance) => instance,
        Err(failure) => {
            if matches!(failure.error, StartError::Cancelled) {
                eprintln!("Interrupted; the container was removed.");
                return Exit::Interrupted;
            }
            let code = if matches!(failure.error, StartError::Runtime(_)) {
                Exit::Failure
            } else {
                Exit::NotReady
            };
            eprintln!("ERROR: {}", failure.report(&spec));
            return code;
        }
    };

    let slot = Arc::new(InstanceSlot::default());
    slot.set(Some(Upstream::new(
        instance.addr,
        config.http2,
        config.request_timeout,
    )));
    let proxy = Proxy::new(
        slot.clone(),
        ProxyConfig {
            header_read_timeout: config.header_read_timeout,
            ..ProxyConfig::default()
        },
    );
    let stop_accepting = CancellationToken::new();
    let serving = tokio::spawn(proxy.serve(listener, stop_accepting.clone()));
    eprintln!(
        "Service [{}] revision [{}] has been deployed and is serving 100 percent of traffic (ready {} ms after the container started).\nService URL: {}",
        spec.service,
        spec.revision,
        instance.startup.as_millis(),
        service_url(listen)
    );

    let serve = Serve {
        runtime: &runtime,
        spec: &spec,
        mode,
        printer: &printer,
        slot: &slot,
        http2: config.http2,
        request_timeout: config.request_timeout,
        signals: &signals,
    };
    let instance = serve.keep_instance(instance).await;

    eprintln!(
        "Shutting down: no new connections; in-flight requests may finish for up to {} s (press Ctrl-C again to stop at once).",
        ProxyConfig::default().drain_timeout.as_secs()
    );
    stop_accepting.cancel();
    tokio::select! {
        report = serving => {
            if report.is_ok_and(|r| !r.drained) {
                eprintln!("Some requests were still in flight after the drain timeout; they were cut off.");
            }
        }
        _ = signals.immediate.cancelled() => {}
    }
    if let Some(instance) = instance {
        stop_instance(&runtime, instance, &signals).await;
    }
    Exit::Success
}

/// Finds the image locally or pulls it for linux/amd64; builds the sample when none is named.
async fn resolve_image(runtime: &Runtime, choice: &ImageChoice) -> Result<String, Exit> {
    let image = match choice {
        ImageChoice::Sample => {
            eprintln!("No image given: building and running the built-in hello sample.");
            return sample::ensure_image(runtime).await.map_err(|e| {
                eprintln!("error: {e}");
                Exit::Failure
            });
        }
        ImageChoice::User(image) => image.clone(),
    };
    match runtime.inspect_image(&image).await {
        Ok(Some(_)) => return Ok(image),
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: {e}");
            return Err(Exit::Failure);
        }
    }
    eprintln!(
        "Image '{image}' is not present locally; pulling it for {}...",
        runtime::PLATFORM
    );
    let mut last = String::new();
    let pulled = runtime
        .pull_image(&image, |line| {
            if line != last {
                eprintln!("  {line}");
                last = line.to_string();
            }
        })
        .await;
    match pulled {
        Ok(()) => Ok(image),
        Err(e) => {
            eprintln!(
                "error: {e}\nThe image is neither present locally nor pullable (is the registry reachable, and are you logged in?). Build it locally: docker build --platform linux/amd64 -t {image} ."
            );
            Err(Exit::Failure)
        }
    }
}

/// What serving needs to keep the instance running.
struct Serve<'a> {
    runtime: &'a Runtime,
    spec: &'a RevisionSpec,
    mode: UpstreamMode,
    printer: &'a LogPrinter,
    slot: &'a InstanceSlot,
    http2: bool,
    request_timeout: Duration,
    signals: &'a Signals,
}

impl Serve<'_> {
    /// Serves until the first Ctrl-C. An instance that exits is replaced, as Cloud Run starts
    /// a new instance for the next requests, with growing back-off for a crash loop.
    async fn keep_instance(&self, mut instance: Instance) -> Option<Instance> {
        let mut backoff = Duration::from_secs(1);
        loop {
            let exited = tokio::select! {
                exited = Instance::exited(self.runtime, &instance.container_id) => exited,
                _ = self.signals.graceful.cancelled() => return Some(instance),
            };
            self.slot.set(None);
            match exited {
                Ok((code, oom_killed)) => {
                    if oom_killed {
                        self.printer.system(
                            &self.spec.revision,
                            &format!(
                                "Memory limit of {} MiB exceeded; the instance was killed.",
                                self.spec.memory_bytes >> 20
                            ),
                        );
                    }
                    self.printer
                        .system(&self.spec.revision, &cloudrun::container_called_exit(code));
                }
                Err(e) => eprintln!("warning: lost track of instance {}: {e}", instance.id),
            }
            if let Err(e) = instance.kill(self.runtime).await {
                eprintln!("warning: {e}");
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = self.signals.graceful.cancelled() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(32));
                match instance::start(
                    self.runtime,
                    self.spec,
                    self.mode,
                    self.printer,
                    cloudrun::REASON_AUTOSCALING,
                    &self.signals.graceful,
                )
                .await
                {
                    Ok(started) => {
                        self.slot.set(Some(Upstream::new(
                            started.addr,
                            self.http2,
                            self.request_timeout,
                        )));
                        instance = started;
                        break;
                    }
                    Err(failure) if matches!(failure.error, StartError::Cancelled) => return None,
                    Err(failure) => eprintln!("ERROR: {}", failure.report(self.spec)),
                }
            }
        }
    }
}

/// SIGTERM, 10 s, SIGKILL, remove; a second Ctrl-C kills at once. Says what happened.
async fn stop_instance(runtime: &Runtime, instance: Instance, signals: &Signals) {
    let container_id = instance.container_id.clone();
    let id = instance.id.clone();
    tokio::select! {
        report = instance.stop(runtime, cloudrun::SHUTDOWN_GRACE) => match report {
            Ok(report) if report.killed => eprintln!(
                "Instance {id} did not exit within {} s of SIGTERM; it was sent SIGKILL (as Cloud Run does) and removed.",
                cloudrun::SHUTDOWN_GRACE.as_secs()
            ),
            Ok(report) => eprintln!(
                "Instance {id} exited{} {:.1} s after SIGTERM and was removed.",
                report.exit_code.map(|c| format!(" with code {c}")).unwrap_or_default(),
                report.took.as_secs_f64()
            ),
            Err(e) => report_removal_failure(runtime, &container_id, e).await,
        },
        _ = signals.immediate.cancelled() => {
            let killed = async {
                runtime.kill(&container_id).await?;
                runtime.remove(&container_id).await
            };
            match killed.await {
                Ok(()) => eprintln!("Stopped at once: instance {id} was killed and removed."),
                Err(e) => report_removal_failure(runtime, &container_id, e).await,
            }
        }
    }
}

async fn report_removal_failure(runtime: &Runtime, container_id: &str, error: RuntimeError) {
    // One more try: a container must never be left behind.
    if runtime.remove(container_id).await.is_err() {
        eprintln!(
            "error: {error}; remove it by hand: docker rm -f {}",
            runtime::short(container_id)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<RunConfig, InvalidValue> {
        let mut argv = vec!["emulate", "run"];
        argv.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(argv).expect("flags parse");
        let crate::cli::Command::Run(args) = cli.command;
        RunConfig::from_args(args)
    }

    #[test]
    fn defaults_are_cloud_runs() {
        let c = config(&["us-docker.pkg.dev/p/r/my-app:v2"]).unwrap();
        assert_eq!(c.service, "my-app");
        assert_eq!(c.port, 8080);
        assert_eq!(c.memory_bytes, 512 << 20);
        assert_eq!(c.cpu_millis, 1000);
        assert_eq!(c.request_timeout, Duration::from_secs(300));
        assert_eq!(c.startup_budget, Duration::from_secs(240));
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(matches!(config(&[]).unwrap().image, ImageChoice::Sample));
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let cases: [(&[&str], &str); 7] = [
            (&["img", "--memory", "lots"], "--memory:"),
            (&["img", "--timeout", "2h"], "--timeout:"),
            (&["img", "--set-env-vars", "PORT=1"], "--set-env-vars:"),
            (&["img", "--service", "Bad_Name"], "--service:"),
            (&["img", "--listen", "nowhere"], "--listen:"),
            (&["img", "--cpu", "100"], "--cpu:"),
            (&["img", "--startup-timeout", "0"], "--startup-timeout:"),
        ];
        for (args, field) in cases {
            let error = config(args).unwrap_err().to_string();
            assert!(error.starts_with(field), "{args:?} gave {error}");
        }
    }

    #[test]
    fn listen_addresses_and_urls() {
        assert_eq!(
            parse_listen(":9000").unwrap(),
            "127.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(
            parse_listen("9000").unwrap(),
            "127.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(
            parse_listen("localhost:1").unwrap(),
            "127.0.0.1:1".parse().unwrap()
        );
        assert_eq!(
            service_url("127.0.0.1:8080".parse().unwrap()),
            "http://localhost:8080"
        );
        assert_eq!(
            service_url("0.0.0.0:8080".parse().unwrap()),
            "http://localhost:8080"
        );
    }
}
