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
use crate::admin::gate::TOKEN_ENV;
use crate::admin::{self, AdminConfig, Announcement, Gate};
use crate::cloudrun;
use crate::config::{self, FieldError};
use crate::control::knative;
use crate::control::platform::{ApplyError, Platform, PlatformConfig};
use crate::control::template::Secrets;
use crate::instances::instance::{self, UpstreamMode};
use crate::instances::pool::InstanceContext;
use crate::logs::LogPrinter;
use crate::runtime::Runtime;
use crate::sample;
use crate::serve::proxy::{Proxy, ProxyConfig};
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
    /// Maximum concurrent requests per instance (1 to 1000; 0 or unset is Cloud Run's
    /// default: 80, or 1 with less than one CPU).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub concurrency: Option<u32>,
    /// Instances kept running even when idle.
    #[arg(long)]
    pub min_instances: Option<u32>,
    /// At most this many instances (Cloud Run's default is 100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_instances: Option<u32>,
    /// Remove an instance after it has been idle this long (Cloud Run keeps idle instances up
    /// to 15 minutes); e.g. 30s.
    #[arg(long, value_name = "DURATION")]
    pub scale_to_zero_after: Option<String>,
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
    /// Service YAML files (as `gcloud run services replace` takes) to run instead of IMAGE;
    /// repeat for several services.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "SERVICE_YAML",
        conflicts_with = "image"
    )]
    pub files: Vec<PathBuf>,
    /// Where `secretKeyRef` env vars are read from: DIR/NAME/VERSION files (else the env var
    /// EMULATE_SECRET_NAME).
    #[arg(long, value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Where the admin API (used by `emulate deploy`, `services`, `revisions`) listens; a
    /// loopback address unless --admin-allow-remote is given.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub admin_listen: String,
    /// Let --admin-listen be an address off loopback (e.g. 0.0.0.0:PORT). Whoever reaches it
    /// and holds the token (in the discovery file) can run containers on this machine.
    #[arg(long)]
    pub admin_allow_remote: bool,
    /// The service plain http://localhost:PORT reaches when several run.
    #[arg(long, value_name = "SERVICE")]
    pub default_service: Option<String>,
    /// Disconnect clients (of the proxy and of the admin API) that take longer than this to
    /// send a request head, from accept or from the end of the previous response.
    #[arg(long, default_value = "10s", hide = true)]
    pub header_read_timeout: String,
    /// Client connections open at once (default: half the open-file limit, at most 10000).
    #[arg(long, hide = true, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: Option<u64>,
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
    pub concurrency: Option<u32>,
    pub min_instances: Option<u32>,
    pub max_instances: Option<u32>,
    pub idle_timeout: Option<Duration>,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The admin API may listen off loopback (`--admin-allow-remote`).
    pub admin_allow_remote: bool,
    pub files: Vec<PathBuf>,
    pub secrets_dir: Option<PathBuf>,
    pub default_service: Option<String>,
    pub upstream: UpstreamChoice,
    pub header_read_timeout: Duration,
    pub max_connections: Option<usize>,
}

impl RunConfig {
    pub fn from_args(args: RunArgs) -> Result<Self, FieldError> {
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
        config::check_no_duplicate_env("--set-env-vars", &env)?;
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
        if let (Some(min), Some(max)) = (args.min_instances, args.max_instances) {
            if min > max {
                return Err(invalid(
                    "--min-instances",
                    format!("{min} is more than --max-instances {max}"),
                ));
            }
        }
        let admin_listen = parse_listen("--admin-listen", &args.admin_listen)?;
        if !admin_listen.ip().is_loopback() && !args.admin_allow_remote {
            return Err(invalid(
                "--admin-listen",
                format!(
                    "{admin_listen} is not a loopback address: whoever reaches the admin API can run containers on this machine. Add --admin-allow-remote to listen there anyway."
                ),
            ));
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
            concurrency: args.concurrency,
            min_instances: args.min_instances,
            max_instances: args.max_instances,
            idle_timeout: args
                .scale_to_zero_after
                .as_deref()
                .map(|t| config::parse_duration("--scale-to-zero-after", t))
                .transpose()?,
            listen: parse_listen("--listen", &args.listen)?,
            admin_listen,
            admin_allow_remote: args.admin_allow_remote,
            files: args.files,
            secrets_dir: args.secrets_dir,
            default_service: args.default_service,
            upstream: args.upstream,
            header_read_timeout: config::parse_duration(
                "--header-read-timeout",
                &args.header_read_timeout,
            )?,
            max_connections: args.max_connections.map(|n| n as usize),
        })
    }
}

fn invalid(field: &str, message: impl Into<String>) -> FieldError {
    FieldError::new(field, message)
}

/// `--listen` takes `HOST:PORT`, `:PORT` or `PORT` (on 127.0.0.1).
fn parse_listen(flag: &str, text: &str) -> Result<SocketAddr, FieldError> {
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
            flag,
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
    // Service files are read and checked before anything starts.
    let mut documents = match read_service_files(&config.files) {
        Ok(documents) => documents,
        Err(exit) => return exit,
    };
    let signals = Signals::install();
    let runtime = match connect_and_reap().await {
        Ok(runtime) => runtime,
        Err(exit) => return exit,
    };
    // Bind before starting anything, so a busy port fails fast and leaves nothing behind.
    let listener = match bind("--listen", config.listen).await {
        Ok(listener) => listener,
        Err(exit) => return exit,
    };
    let admin_listener = match bind("--admin-listen", config.admin_listen).await {
        Ok(listener) => listener,
        Err(exit) => return exit,
    };
    let listen = listener.local_addr().unwrap_or(config.listen);
    let admin = admin_listener.local_addr().unwrap_or(config.admin_listen);
    if !admin.ip().is_loopback() {
        eprintln!(
            "warning: the admin API listens off loopback, on {admin} (--admin-allow-remote): whoever reaches it with this run's token (in the discovery file under {}) can run containers on this machine.",
            admin::discovery_dir().display()
        );
    }

    if documents.is_empty() {
        let image = match resolve_image_flag(&runtime, &config.image).await {
            Ok(image) => image,
            Err(exit) => return exit,
        };
        documents.push(service_from_flags(&config, &image));
    }
    let mode = upstream_mode(&runtime, config.upstream).await;
    let platform = Platform::new(
        InstanceContext {
            runtime: runtime.clone(),
            mode,
            printer: LogPrinter::stdout(),
            shutdown: signals.graceful.clone(),
            immediate: signals.immediate.clone(),
        },
        PlatformConfig {
            port: listen.port(),
            secrets: Secrets {
                dir: config.secrets_dir.clone(),
            },
            default_service: config.default_service.clone(),
        },
    );

    let mut deployed = Vec::new();
    for doc in documents {
        let name = doc.metadata.name.clone().unwrap_or_default();
        eprintln!("Deploying container to Cloud Run service [{name}] (emulated)");
        match platform.apply(doc).await {
            Ok(applied) => {
                for note in &applied.notes {
                    eprintln!("note: {note}");
                }
                deployed.push(applied.service);
            }
            Err(e) => {
                let exit = if signals.graceful.is_cancelled() {
                    eprintln!("Interrupted; the container was removed.");
                    Exit::Interrupted
                } else {
                    eprintln!("ERROR: {e}");
                    apply_exit(&e)
                };
                platform.shutdown(true).await;
                return exit;
            }
        }
    }
    for service in &deployed {
        print_deployed(service);
    }
    if deployed.len() == 1 || config.default_service.is_some() {
        // Plain localhost reaches the only service, or the default one.
        eprintln!("Service URL: {}", service_url(listen));
    }
    let gate = Gate::new(admin, config.admin_allow_remote);
    // Announced before the address is printed, so a verb started on seeing it finds the token.
    let announcement = Announcement::write(admin, listen, &gate.token);
    eprintln!("Admin API: http://{admin} (emulate services list, emulate deploy ... find it by themselves)");
    if let Err(e) = &announcement {
        eprintln!(
            "warning: cannot write the discovery file ({e}); CLI verbs will need --admin {admin} and {TOKEN_ENV}={}",
            gate.token
        );
    }
    let stop_accepting = CancellationToken::new();
    let proxy = Proxy::new(
        Arc::new(platform.router()),
        ProxyConfig {
            header_read_timeout: config.header_read_timeout,
            max_connections: config
                .max_connections
                .unwrap_or(ProxyConfig::default().max_connections),
            ..ProxyConfig::default()
        },
    );
    let serving = tokio::spawn(proxy.serve(listener, stop_accepting.clone()));
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        platform.clone(),
        AdminConfig {
            gate,
            header_read_timeout: config.header_read_timeout,
        },
        stop_accepting.clone(),
    ));

    signals.graceful.cancelled().await;
    drop(announcement);
    eprintln!(
        "Shutting down: no new connections; in-flight requests may finish for up to {} s (press Ctrl-C again to stop at once).",
        ProxyConfig::default().drain_timeout.as_secs()
    );
    stop_accepting.cancel();
    let _ = admin_task.await;
    tokio::select! {
        report = serving => {
            if report.is_ok_and(|r| !r.drained) {
                eprintln!("Some requests were still in flight after the drain timeout; they were cut off.");
            }
        }
        _ = signals.immediate.cancelled() => {}
    }
    // A second Ctrl-C turns the stops in progress into kills (see Pool::stop_all).
    platform.shutdown(false).await;
    if signals.immediate.is_cancelled() {
        eprintln!("Stopped at once: instances were killed and removed.");
    }
    Exit::Success
}

/// Reads and checks the `-f` service files, naming the file and field of any error, and a
/// service that two files both define (exit 2).
pub(crate) fn read_service_files(paths: &[PathBuf]) -> Result<Vec<knative::Service>, Exit> {
    let usage = |message: String| {
        eprintln!("error: -f: {message}");
        Exit::Usage
    };
    let mut documents: Vec<(&PathBuf, knative::Service)> = Vec::new();
    for path in paths {
        let document = read_service_file(path).map_err(usage)?;
        let name = document.metadata.name.as_deref();
        if let Some((first, _)) = documents
            .iter()
            .find(|(_, d)| name.is_some() && d.metadata.name.as_deref() == name)
        {
            return Err(usage(format!(
                "{} and {} both define service '{}'; give each service one file",
                first.display(),
                path.display(),
                name.unwrap_or_default()
            )));
        }
        documents.push((path, document));
    }
    Ok(documents.into_iter().map(|(_, d)| d).collect())
}

/// Reaches Docker (exit 4 if it cannot) and removes containers a killed emulator left behind.
pub(crate) async fn connect_and_reap() -> Result<Runtime, Exit> {
    let runtime = Runtime::connect().await.map_err(|e| {
        eprintln!("error: {e}");
        Exit::DockerUnavailable
    })?;
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
    Ok(runtime)
}

/// How to reach containers: the choice, or for `auto` what the engine allows.
pub(crate) async fn upstream_mode(runtime: &Runtime, choice: UpstreamChoice) -> UpstreamMode {
    match choice {
        UpstreamChoice::ContainerIp => UpstreamMode::ContainerIp,
        UpstreamChoice::PublishedPort => UpstreamMode::PublishedPort,
        UpstreamChoice::Auto => match runtime.is_docker_desktop().await {
            Ok(true) => UpstreamMode::PublishedPort,
            _ => UpstreamMode::ContainerIp,
        },
    }
}

/// Exit code for a failed apply: the user's input (2; an image that is neither local nor
/// pullable is input too, as the admin API's 400 says for `services replace`), the revision
/// never ready (3), or anything else (1).
pub(crate) fn apply_exit(error: &ApplyError) -> Exit {
    match error {
        ApplyError::Invalid(_) | ApplyError::Traffic(_) | ApplyError::Image(_) => Exit::Usage,
        ApplyError::NotReady(_) | ApplyError::Unsupported { .. } => Exit::NotReady,
        ApplyError::Conflict(_) | ApplyError::Runtime(_) => Exit::Failure,
    }
}

pub(crate) async fn bind(flag: &str, addr: SocketAddr) -> Result<TcpListener, Exit> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                " Something else (another emulate?) is using it; pick another address with {flag}, e.g. {flag} 127.0.0.1:{}",
                addr.port().wrapping_add(1).max(1024)
            )
        } else {
            String::new()
        };
        eprintln!("error: {flag}: cannot listen on {addr}: {e}.{hint}");
        Exit::Failure
    })
}

/// Reads a service.yaml, naming the file and the field of any error; the names it gives
/// are checked too, so a bad file never reaches the emulator.
pub fn read_service_file(path: &std::path::Path) -> Result<knative::Service, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let service =
        knative::parse_service_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    knative::validate_names(&service).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(service)
}

/// The built-in sample is built here; a named image is left to the platform to find or pull.
pub(crate) async fn resolve_image_flag(
    runtime: &Runtime,
    choice: &ImageChoice,
) -> Result<String, Exit> {
    match choice {
        ImageChoice::User(image) => Ok(image.clone()),
        ImageChoice::Sample => {
            eprintln!("No image given: building and running the built-in hello sample.");
            sample::ensure_image(runtime).await.map_err(|e| {
                eprintln!("error: {e}");
                Exit::Failure
            })
        }
    }
}

/// The Service document `emulate run IMAGE --flags` describes, as gcloud would build it.
pub(crate) fn service_from_flags(config: &RunConfig, image: &str) -> knative::Service {
    let mut container = knative::Container {
        image: image.to_string(),
        command: config.command.clone(),
        args: config.args.clone(),
        ports: vec![knative::ContainerPort {
            container_port: config.port,
            name: Some(if config.http2 { "h2c" } else { "http1" }.to_string()),
            protocol: None,
        }],
        env: config
            .env
            .iter()
            .map(|(name, value)| knative::EnvVar {
                name: name.clone(),
                value: Some(value.clone()),
                value_from: None,
            })
            .collect(),
        resources: Some(knative::Resources {
            limits: [
                ("cpu".to_string(), format!("{}m", config.cpu_millis)),
                ("memory".to_string(), format_memory(config.memory_bytes)),
            ]
            .into(),
            extra: Default::default(),
        }),
        ..Default::default()
    };
    if config.startup_budget != cloudrun::DEFAULT_STARTUP_BUDGET {
        // One TCP attempt that may take the whole budget, like Cloud Run's default probe.
        let seconds = config.startup_budget.as_secs_f64().ceil() as u64;
        container.startup_probe = Some(knative::Probe {
            tcp_socket: Some(knative::ProbePort {
                port: Some(config.port),
                ..Default::default()
            }),
            timeout_seconds: Some(seconds),
            period_seconds: Some(seconds),
            failure_threshold: Some(1),
            ..Default::default()
        });
    }
    let mut annotations = std::collections::BTreeMap::new();
    if let Some(n) = config.min_instances {
        annotations.insert(knative::ANNOTATION_MIN_SCALE.to_string(), n.to_string());
    }
    if let Some(n) = config.max_instances {
        annotations.insert(knative::ANNOTATION_MAX_SCALE.to_string(), n.to_string());
    }
    if let Some(idle) = config.idle_timeout {
        annotations.insert(
            knative::ANNOTATION_IDLE_TIMEOUT.to_string(),
            format!("{}s", idle.as_secs().max(1)),
        );
    }
    knative::Service {
        api_version: knative::API_VERSION.to_string(),
        kind: "Service".to_string(),
        metadata: knative::ObjectMeta {
            name: Some(config.service.clone()),
            ..Default::default()
        },
        spec: knative::ServiceSpec {
            template: knative::RevisionTemplate {
                metadata: knative::ObjectMeta {
                    annotations,
                    ..Default::default()
                },
                spec: knative::RevisionSpec {
                    container_concurrency: config.concurrency,
                    timeout_seconds: Some(config.request_timeout.as_secs().max(1)),
                    containers: vec![container],
                    ..Default::default()
                },
            },
            ..Default::default()
        },
        status: None,
    }
}

/// `512Mi`-style when whole mebibytes, else bytes.
pub fn format_memory(bytes: u64) -> String {
    if bytes % (1 << 30) == 0 {
        format!("{}Gi", bytes >> 30)
    } else if bytes % (1 << 20) == 0 {
        format!("{}Mi", bytes >> 20)
    } else {
        bytes.to_string()
    }
}

/// gcloud's closing lines of a deploy.
pub fn print_deployed(service: &knative::Service) {
    let name = service.metadata.name.as_deref().unwrap_or("");
    let Some(status) = &service.status else {
        return;
    };
    let revision = status
        .latest_ready_revision_name
        .as_deref()
        .unwrap_or("(none)");
    let percent: u32 = status
        .traffic
        .iter()
        .filter(|t| t.revision_name.as_deref() == Some(revision))
        .filter_map(|t| t.percent)
        .sum();
    eprintln!("Service [{name}] revision [{revision}] has been deployed and is serving {percent} percent of traffic.");
    if let Some(url) = &status.url {
        eprintln!("Service URL: {url}");
    }
    for target in &status.traffic {
        if let (Some(tag), Some(url)) = (&target.tag, &target.url) {
            eprintln!("The revision can be reached directly at {url} (tag '{tag}')");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<RunConfig, FieldError> {
        let mut argv = vec!["emulate", "run"];
        argv.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(argv).expect("flags parse");
        let crate::cli::Command::Run(args) = cli.command else {
            unreachable!("parsed as run")
        };
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
        let cases: [(&[&str], &str); 8] = [
            (&["img", "--memory", "lots"], "--memory:"),
            (&["img", "--timeout", "2h"], "--timeout:"),
            (&["img", "--set-env-vars", "PORT=1"], "--set-env-vars:"),
            (&["img", "--service", "Bad_Name"], "--service:"),
            (&["img", "--listen", "nowhere"], "--listen:"),
            (&["img", "--cpu", "100"], "--cpu:"),
            (&["img", "--startup-timeout", "0"], "--startup-timeout:"),
            (
                &["img", "--min-instances", "3", "--max-instances", "2"],
                "--min-instances:",
            ),
        ];
        for (args, field) in cases {
            let error = config(args).unwrap_err().to_string();
            assert!(error.starts_with(field), "{args:?} gave {error}");
        }
    }

    #[test]
    fn listen_addresses_and_urls() {
        assert_eq!(
            parse_listen("--listen", ":9000").unwrap(),
            "127.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(
            parse_listen("--listen", "9000").unwrap(),
            "127.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(
            parse_listen("--listen", "localhost:1").unwrap(),
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
