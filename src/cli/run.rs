//! `emulate run`: deploy one image as a one-revision service and serve it on localhost until
//! Ctrl-C, or fail the way Cloud Run would fail the deploy, in Cloud Run's words.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::access_flags::AccessFlags;
use super::documents::{print_deployed, read_service_files};
use super::invalid;
use super::revision_flags::{new_service, RevisionChanges, RevisionFlags};
use super::source_flags::{self, SourceFlags};
use super::Exit;
use crate::admin::gate::TOKEN_ENV;
use crate::admin::{self, Announcement};
use crate::app::{AdminListen, Drain, Emulator, EmulatorConfig, Listener, Shutdown, StartError};
use crate::cloudrun;
use crate::config::{self, FieldError};
use crate::control::knative;
use crate::control::platform::ApplyError;
use crate::events::Events;
use crate::instances::instance::UpstreamMode;
use crate::logs::{LogFormat, LogPrinter, Resource};
use crate::metadata::{adc, AdcFile, Credentials, MetadataConfig};
use crate::runtime::Runtime;
use crate::sample;
use crate::shutdown::Signals;
use crate::source::{self, Builder, SourceConfig};

/// `run` gives the revision flags that have one Cloud Run's default.
#[derive(Debug, Args)]
#[command(
    mut_arg("port", |a| a.default_value("8080")),
    mut_arg("memory", |a| a.default_value("512Mi")),
    mut_arg("cpu", |a| a.default_value("1")),
    mut_arg("timeout", |a| a.default_value("300")),
)]
pub struct RunArgs {
    /// The image to run, as you would pass it to `gcloud run deploy --image`. Without one,
    /// the built-in hello sample is built locally and run.
    pub image: Option<String>,
    /// The service name (default: derived from the image name).
    #[arg(long)]
    pub service: Option<String>,
    #[command(flatten)]
    pub revision: RevisionFlags,
    #[command(flatten)]
    pub access: AccessFlags,
    #[command(flatten)]
    pub source: SourceFlags,
    /// With --source: rebuild and redeploy on every change to DIR (files left out of the
    /// build context excepted), each time as a new revision that gets the traffic once it
    /// passes its startup probe, while the old one drains.
    #[arg(long, requires = "source")]
    pub watch: bool,
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
    #[command(flatten)]
    pub google: GoogleArgs,
    /// How log lines are printed: `text` for people, `json` for one Cloud Logging LogEntry
    /// per line (requests, containers' output, system lines).
    #[arg(long, value_enum, default_value_t = LogFormatChoice::Text)]
    pub log_format: LogFormatChoice,
    /// One line per request on the terminal; `off` silences them (`emulate logs` still has
    /// them).
    #[arg(long, value_enum, default_value_t = Toggle::On, value_name = "on|off")]
    pub request_log: Toggle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormatChoice {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    On,
    Off,
}

/// What the metadata server tells the containers about where they run.
#[derive(Debug, Args)]
pub struct GoogleArgs {
    /// The project the metadata server names (default: GOOGLE_CLOUD_PROJECT, else
    /// CLOUDSDK_CORE_PROJECT, else the project of gcloud's active configuration, else
    /// emulate-local).
    #[arg(long, value_name = "PROJECT_ID")]
    pub project: Option<String>,
    /// The region the metadata server names.
    #[arg(long, default_value = crate::metadata::DEFAULT_REGION, value_name = "REGION")]
    pub region: String,
    /// The service account the metadata server hands tokens for (default: the project's
    /// Compute Engine default service account, PROJECT_NUMBER-compute@developer.gserviceaccount.com,
    /// as on Cloud Run; with --credentials adc and a service account key, the key's).
    #[arg(long, value_name = "EMAIL")]
    pub service_account: Option<String>,
    /// Where the metadata server's access tokens come from: `offline` (opaque tokens, which
    /// Google's local emulators accept) or `adc` (real tokens from this machine's Application
    /// Default Credentials: the GOOGLE_APPLICATION_CREDENTIALS file, else gcloud's
    /// application_default_credentials.json). ID tokens are signed by emulate either way.
    #[arg(long, value_enum, default_value_t = CredentialsChoice::Offline, value_name = "SOURCE")]
    pub credentials: CredentialsChoice,
}

/// `--credentials`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CredentialsChoice {
    Offline,
    Adc,
}

impl GoogleArgs {
    /// The metadata server's settings, checked; the project's defaults come from the env and
    /// gcloud's files, and `--credentials adc` must find a usable credential.
    pub fn check(self) -> Result<MetadataConfig, FieldError> {
        let env = |name: &str| std::env::var(name).ok();
        let credentials = match self.credentials {
            CredentialsChoice::Offline => Credentials::Offline,
            CredentialsChoice::Adc => {
                let file = AdcFile::find(env, |path| std::fs::read_to_string(path))
                    .map_err(|e| invalid("--credentials", format!("adc: {e}. {}.", adc::FIX)))?;
                Credentials::Adc(file)
            }
        };
        MetadataConfig::from_flags(
            self.project,
            self.region,
            self.service_account,
            credentials,
            env,
            |path| std::fs::read_to_string(path).ok(),
        )
    }
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
    /// Built from a source directory (`--source`).
    Source(SourceConfig),
    Sample,
}

/// `emulate run`'s validated settings.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub image: ImageChoice,
    pub service: String,
    /// The revision flags, checked; those with a default always have a value.
    pub revision: RevisionChanges,
    /// Who may invoke the services (the service.yaml's own setting unless a flag is given).
    pub access: AccessFlags,
    /// `--watch`: rebuild and redeploy the source on every change.
    pub watch: bool,
    pub startup_budget: Duration,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The admin API may listen off loopback (`--admin-allow-remote`).
    pub admin_allow_remote: bool,
    pub files: Vec<PathBuf>,
    pub secrets_dir: Option<PathBuf>,
    pub default_service: Option<String>,
    pub upstream: UpstreamChoice,
    pub log_format: LogFormatChoice,
    pub request_log: bool,
    pub header_read_timeout: Duration,
    pub max_connections: Option<usize>,
    pub metadata: MetadataConfig,
}

impl RunConfig {
    pub fn from_args(args: RunArgs) -> Result<Self, FieldError> {
        let image = match (args.image, args.source.check()?) {
            (Some(image), _) if image.trim().is_empty() => {
                return Err(invalid("IMAGE", "the image name is empty"))
            }
            (Some(image), _) => ImageChoice::User(image),
            (None, Some(source)) => ImageChoice::Source(source),
            (None, None) => ImageChoice::Sample,
        };
        let service = match (&args.service, &image) {
            (Some(name), _) => name.clone(),
            (None, ImageChoice::User(image)) => cloudrun::service_name_from_image(image),
            // As gcloud proposes: the directory's name.
            (None, ImageChoice::Source(source)) => source::service_name_from_dir(&source.dir),
            (None, ImageChoice::Sample) => "hello".to_string(),
        };
        cloudrun::validate_service_name(&service).map_err(|m| invalid("--service", m))?;
        let revision = args.revision.check()?;
        let startup_budget = config::parse_duration("--startup-timeout", &args.startup_timeout)?;
        if startup_budget.is_zero() {
            return Err(invalid("--startup-timeout", "must be more than zero"));
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
        Ok(RunConfig {
            image,
            service,
            revision,
            access: args.access,
            watch: args.watch,
            startup_budget,
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
            metadata: args.google.check()?,
            log_format: args.log_format,
            request_log: args.request_log == Toggle::On,
        })
    }

    /// The emulator these flags describe; `printer` says where containers' logs go.
    pub fn emulator(&self, signals: &Signals, printer: LogPrinter) -> EmulatorConfig {
        let defaults = EmulatorConfig::default();
        EmulatorConfig {
            listen: self.listen,
            admin: Some(AdminListen {
                listen: self.admin_listen,
                allow_remote: self.admin_allow_remote,
            }),
            upstream: match self.upstream {
                UpstreamChoice::Auto => None,
                UpstreamChoice::ContainerIp => Some(UpstreamMode::ContainerIp),
                UpstreamChoice::PublishedPort => Some(UpstreamMode::PublishedPort),
            },
            secrets_dir: self.secrets_dir.clone(),
            default_service: self.default_service.clone(),
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            events: Events::with_sink(
                printer
                    .with_format(match self.log_format {
                        LogFormatChoice::Text => LogFormat::Text,
                        LogFormatChoice::Json => LogFormat::Json(Resource {
                            project_id: self.metadata.project_id.clone(),
                            location: self.metadata.region.clone(),
                        }),
                    })
                    .with_request_log(self.request_log),
            ),
            signals: signals.clone(),
            metadata: Some(self.metadata.clone()),
        }
    }
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
    if let Err(e) = check_source_documents(&config, &documents) {
        eprintln!("error: {e}");
        return Exit::Usage;
    }
    let signals = Signals::install();
    let mut emulator = match Emulator::start(config.emulator(&signals, LogPrinter::stdout())).await
    {
        Ok(emulator) => emulator,
        Err(e) => return start_failed(&e),
    };
    let listen = emulator.listen_addr();
    let admin = emulator.admin_addr().unwrap_or(config.admin_listen);
    if !admin.ip().is_loopback() {
        eprintln!(
            "warning: the admin API listens off loopback, on {admin} (--admin-allow-remote): whoever reaches it with this run's token (in the discovery file under {}) can run containers on this machine.",
            admin::discovery_dir().display()
        );
    }

    let mut builder = None;
    if let ImageChoice::Source(source) = &config.image {
        let service = source_service(&config, &documents);
        let mut source_builder = Builder::new(
            emulator.runtime().clone(),
            emulator.events().clone(),
            &service,
            source.clone(),
        );
        match build_source(&mut source_builder, &service, &signals).await {
            Ok(image) => set_source_image(&config, &mut documents, &image),
            Err(exit) => {
                emulator.shutdown(Shutdown::Immediate).await;
                return exit;
            }
        }
        builder = Some((source_builder, service));
    } else if documents.is_empty() {
        let image = match resolve_image_flag(emulator.runtime(), &config.image).await {
            Ok(image) => image,
            Err(exit) => {
                emulator.shutdown(Shutdown::Immediate).await;
                return exit;
            }
        };
        documents.push(service_from_flags(&config, &image));
    }

    for doc in &mut documents {
        config.access.apply(doc);
    }
    let mut deployed = Vec::new();
    for doc in documents {
        let name = doc.metadata.name.clone().unwrap_or_default();
        eprintln!("Deploying container to Cloud Run service [{name}] (emulated)");
        match emulator.platform().apply(doc).await {
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
                emulator.shutdown(Shutdown::Immediate).await;
                return exit;
            }
        }
    }
    for service in &deployed {
        print_deployed(service, None);
    }
    if deployed.len() == 1 || config.default_service.is_some() {
        // Plain localhost reaches the only service, or the default one.
        eprintln!("Service URL: {}", service_url(listen));
    }
    let token = emulator.admin_token().unwrap_or_default().to_string();
    // Announced before the address is printed, so a verb started on seeing it finds the token.
    let announcement = Announcement::write(admin, listen, &token);
    eprintln!("Admin API: http://{admin} (emulate services list, emulate deploy ... find it by themselves)");
    if let Some(url) = emulator.dashboard_url() {
        eprintln!("Dashboard: {url}");
    }
    if let Some(host) = emulator.metadata_host() {
        eprintln!(
            "Metadata server: http://{host} (project {}, GCE_METADATA_HOST in every container)",
            config.metadata.project_id
        );
    }
    if let Err(e) = &announcement {
        eprintln!(
            "warning: cannot write the discovery file ({e}); CLI verbs will need --admin {admin} and {TOKEN_ENV}={token}"
        );
    }
    emulator.serve();

    match builder {
        Some((builder, service)) if config.watch => {
            // Ctrl-C ends the watch, cancelling a build in progress.
            tokio::select! {
                _ = super::watch::watch(emulator.platform(), builder, &service) => {}
                _ = signals.graceful.cancelled() => {}
            }
        }
        _ => signals.graceful.cancelled().await,
    }
    drop(announcement);
    eprintln!(
        "Shutting down: no new connections; in-flight requests may finish for up to {} s (press Ctrl-C again to stop at once).",
        emulator.drain_timeout().as_secs()
    );
    if emulator.close().await == Drain::TimedOut {
        eprintln!("Some requests were still in flight after the drain timeout; they were cut off.");
    }
    // A second Ctrl-C turns the stops in progress into kills (see Pool::stop_all).
    emulator.shutdown(Shutdown::Graceful).await;
    if signals.immediate.is_cancelled() {
        eprintln!("Stopped at once: instances were killed and removed.");
    }
    Exit::Success
}

/// Prints why the emulator could not start: Docker unreachable (exit 4) or a busy address
/// (exit 1, naming the flag that chose it).
pub(crate) fn start_failed(error: &StartError) -> Exit {
    match error {
        StartError::Docker(e) => {
            eprintln!("error: {e}");
            Exit::DockerUnavailable
        }
        StartError::Bind {
            listener,
            addr,
            source,
        } => {
            let flag = match listener {
                Listener::Proxy => "--listen",
                Listener::Admin => "--admin-listen",
            };
            let hint = if source.kind() == std::io::ErrorKind::AddrInUse {
                format!(
                    " Something else (another emulate?) is using it; pick another address with {flag}, e.g. {flag} 127.0.0.1:{}",
                    addr.port().wrapping_add(1).max(1024)
                )
            } else {
                String::new()
            };
            eprintln!("error: {flag}: cannot listen on {addr}: {source}.{hint}");
            Exit::Failure
        }
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

/// `--source` builds one service: the one `-f` names, if a file is given.
pub(crate) fn check_source_documents(
    config: &RunConfig,
    documents: &[knative::Service],
) -> Result<(), FieldError> {
    match (&config.image, documents.len()) {
        (ImageChoice::Source(_), n) if n > 1 => Err(invalid(
            "--source",
            format!("builds the image of one service, but the -f files describe {n}; run one of them with --source"),
        )),
        _ => Ok(()),
    }
}

/// The service `--source` builds for: the `-f` file's, else `--service` (or the directory's
/// name).
pub(crate) fn source_service(config: &RunConfig, documents: &[knative::Service]) -> String {
    documents
        .first()
        .and_then(|d| d.metadata.name.clone())
        .unwrap_or_else(|| config.service.clone())
}

/// Builds the source (gcloud's line first), or stops at Ctrl-C, which cancels the build.
pub(crate) async fn build_source(
    builder: &mut Builder,
    service: &str,
    signals: &Signals,
) -> Result<String, Exit> {
    source_flags::announce(builder.config(), service);
    tokio::select! {
        built = source_flags::build(builder) => built.map(|b| b.image),
        _ = signals.graceful.cancelled() => {
            eprintln!("Interrupted: the build was stopped.");
            Err(Exit::Interrupted)
        }
    }
}

/// The built image goes into the `-f` file's service, else into the one the flags describe.
pub(crate) fn set_source_image(
    config: &RunConfig,
    documents: &mut Vec<knative::Service>,
    image: &str,
) {
    match documents.first_mut() {
        Some(doc) => match doc.spec.template.spec.containers.first_mut() {
            Some(container) => container.image = image.to_string(),
            None => doc.spec.template.spec.containers.push(knative::Container {
                image: image.to_string(),
                ..Default::default()
            }),
        },
        None => documents.push(service_from_flags(config, image)),
    }
}

/// The built-in sample is built here; a named image is left to the platform to find or pull.
pub(crate) async fn resolve_image_flag(
    runtime: &Runtime,
    choice: &ImageChoice,
) -> Result<String, Exit> {
    match choice {
        ImageChoice::User(image) => Ok(image.clone()),
        // `run` and `smoke` build a source first (build_source) and never ask here.
        ImageChoice::Source(_) => Err(Exit::Failure),
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
    let mut service = new_service(&config.service, image);
    let template = &mut service.spec.template;
    // The port is named for its protocol, and the limits are written in Cloud Run's form
    // (1000m, 512Mi), as its defaults read.
    template.spec.containers[0]
        .ports
        .push(knative::ContainerPort {
            container_port: cloudrun::DEFAULT_PORT,
            name: Some("http1".to_string()),
            protocol: None,
        });
    let mut revision = config.revision.clone();
    if let Some(memory) = &mut revision.memory {
        memory.text = format_memory(memory.amount);
    }
    if let Some(cpu) = &mut revision.cpu {
        cpu.text = format!("{}m", cpu.amount);
    }
    revision.apply(template);
    let container = &mut template.spec.containers[0];
    if config.startup_budget != cloudrun::DEFAULT_STARTUP_BUDGET {
        // One TCP attempt that may take the whole budget, like Cloud Run's default probe.
        let seconds = config.startup_budget.as_secs_f64().ceil() as u64;
        container.startup_probe = Some(knative::Probe {
            tcp_socket: Some(knative::ProbePort {
                port: revision.port,
                ..Default::default()
            }),
            timeout_seconds: Some(seconds),
            period_seconds: Some(seconds),
            failure_threshold: Some(1),
            ..Default::default()
        });
    }
    service
}

/// `512Mi`-style when whole mebibytes, else bytes.
pub fn format_memory(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{}Gi", bytes >> 30)
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{}Mi", bytes >> 20)
    } else {
        bytes.to_string()
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
        assert_eq!(c.revision.port, Some(8080));
        assert_eq!(c.revision.memory.unwrap().amount, 512 << 20);
        assert_eq!(c.revision.cpu.unwrap().amount, 1000);
        assert_eq!(c.revision.request_timeout, Some(Duration::from_secs(300)));
        assert_eq!(c.startup_budget, Duration::from_secs(240));
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(matches!(config(&[]).unwrap().image, ImageChoice::Sample));
    }

    #[test]
    fn the_document_spells_out_cloud_runs_defaults() {
        let c = config(&["img", "--cpu", "2", "--startup-timeout", "20s"]).unwrap();
        let service = service_from_flags(&c, "the-image");
        let spec = &service.spec.template.spec;
        assert_eq!(spec.timeout_seconds, Some(300));
        let container = &spec.containers[0];
        assert_eq!(container.image, "the-image");
        assert_eq!(container.ports[0].container_port, 8080);
        assert_eq!(container.ports[0].name.as_deref(), Some("http1"));
        // Limits in Cloud Run's form, whatever form the flag took.
        let limits = &container.resources.as_ref().unwrap().limits;
        assert_eq!(
            (limits["memory"].as_str(), limits["cpu"].as_str()),
            ("512Mi", "2000m")
        );
        let probe = container.startup_probe.as_ref().unwrap();
        assert_eq!(probe.tcp_socket.as_ref().unwrap().port, Some(8080));
        assert_eq!(probe.timeout_seconds, Some(20));
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
