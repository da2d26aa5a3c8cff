//! The emulator as one object: `Emulator::start(config)` reaches Docker, binds the front end
//! and the admin API, and builds the platform; the `Running` it returns serves them and shuts
//! everything down. `emulate run`, `emulate smoke` and tests all start the emulator here; the
//! CLI keeps only flags, printing and exit codes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminConfig, Gate};
use crate::control::platform::{Platform, PlatformConfig, Reach};
use crate::control::template::Secrets;
use crate::dns;
use crate::events::{Event, Events};
use crate::instances::instance::{self, UpstreamMode};
use crate::instances::pool::InstanceContext;
use crate::logs::buffer::LogBuffer;
use crate::logs::{LogPrinter, Resource};
use crate::metadata::{self, MetadataConfig};
use crate::metrics::RequestMetrics;
use crate::runtime::{Runtime, RuntimeError};
use crate::serve::proxy::{DrainReport, Proxy, ProxyConfig};
use crate::shutdown::Signals;

/// What an emulator is made of: plain data, so a test can build one with
/// `EmulatorConfig::default()` (free loopback ports, no admin API).
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Where the front end listens.
    pub listen: SocketAddr,
    /// The admin API, if there is one (`emulate smoke` runs without).
    pub admin: Option<AdminListen>,
    /// How the proxy reaches containers; `None` picks what the engine allows.
    pub upstream: Option<UpstreamMode>,
    /// Where `secretKeyRef` env vars are read from.
    pub secrets_dir: Option<PathBuf>,
    /// The service plain `http://localhost:PORT` reaches when several exist.
    pub default_service: Option<String>,
    /// Clients of the front end and the admin API must send a request head within this.
    pub header_read_timeout: Duration,
    /// Client connections of the front end open at once.
    pub max_connections: usize,
    /// What the emulator says (instances starting and stopping, deploy progress, warnings,
    /// containers' logs) is published here; its sink is the terminal printer.
    pub events: Events,
    /// The first is cancelled to stop gracefully (starts in progress give up), the second
    /// to stop at once (stops in progress turn into kills).
    pub signals: Signals,
    /// What the metadata server says (project, region, service account); `None` runs
    /// without one.
    pub metadata: Option<MetadataConfig>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        let proxy = ProxyConfig::default();
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            upstream: None,
            secrets_dir: None,
            default_service: None,
            header_read_timeout: proxy.header_read_timeout,
            max_connections: proxy.max_connections,
            events: Events::with_sink(LogPrinter::stderr()),
            signals: Signals::default(),
            metadata: Some(MetadataConfig {
                project_id: metadata::LOCAL_PROJECT.to_string(),
                region: metadata::DEFAULT_REGION.to_string(),
                service_account: None,
                credentials: metadata::Credentials::Offline,
            }),
        }
    }
}

/// Where the admin API listens.
#[derive(Clone, Debug)]
pub struct AdminListen {
    pub listen: SocketAddr,
    /// The address may be off loopback (`--admin-allow-remote`).
    pub allow_remote: bool,
}

/// Which of the emulator's listeners could not be bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Proxy,
    Admin,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Docker engine could not be reached.
    #[error(transparent)]
    Docker(RuntimeError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        listener: Listener,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Requests in flight may finish (up to the drain timeout, cut short by the immediate
    /// signal), then instances get SIGTERM and 10 s before SIGKILL.
    Graceful,
    /// No drain; instances are killed.
    Immediate,
}

/// How the front end's drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// Every request in flight finished.
    Finished,
    /// The drain timeout passed with requests still in flight; they were cut off.
    TimedOut,
    /// The immediate signal came first.
    Interrupted,
}

/// The emulator's entry point: see [`Emulator::start`].
pub struct Emulator;

impl Emulator {
    /// Reaches Docker (removing containers a killed emulator left behind), binds the
    /// listeners and builds the platform. Nothing is served until [`Running::serve`], so
    /// the caller may deploy first: a request never meets a service still deploying.
    pub async fn start(config: EmulatorConfig) -> Result<Running, StartError> {
        let runtime = Runtime::connect().await.map_err(StartError::Docker)?;
        reap_orphans(&runtime, &config.events).await;
        // Bound before anything starts, so a busy port fails fast and leaves nothing behind.
        let listener = bind(Listener::Proxy, config.listen).await?;
        let admin = match &config.admin {
            Some(admin) => {
                let listener = bind(Listener::Admin, admin.listen).await?;
                let addr = listener.local_addr().unwrap_or(admin.listen);
                Some((listener, Gate::new(addr, admin.allow_remote)))
            }
            None => None,
        };
        let listen = listener.local_addr().unwrap_or(config.listen);
        let mode = match config.upstream {
            Some(mode) => mode,
            None => match runtime.is_docker_desktop().await {
                Ok(true) => UpstreamMode::PublishedPort,
                _ => UpstreamMode::ContainerIp,
            },
        };
        // Every task of the emulator (the front end, the admin API, every pool's) is counted
        // here, so a shutdown returns only once they have all ended.
        let tasks = TaskTracker::new();
        // Where containers reach the host: the metadata server, the front end's second
        // listener and the name server listen there.
        let host_side = match HostSide::find(&runtime, mode).await {
            Ok(host_side) => Some(host_side),
            Err(why) => {
                config.events.publish(Event::warning(format!(
                    "containers cannot reach the emulator (no metadata server, no service URLs inside them): {why}"
                )));
                None
            }
        };
        // The metadata server answers from now on: instances ask it while they start.
        let metadata_stop = CancellationToken::new();
        // The recent log (`emulate logs`) keeps what the emulator says from now on.
        let resource = match &config.metadata {
            Some(settings) => Resource {
                project_id: settings.project_id.clone(),
                location: settings.region.clone(),
            },
            None => Resource::default(),
        };
        let logs = LogBuffer::new(resource.clone());
        config.events.tap(Arc::new(logs.clone()));
        // Cloud Run's request metrics count from now on too (the rest is read when scraped).
        let requests = RequestMetrics::new();
        config.events.tap(Arc::new(requests.clone()));
        let metrics = admin::metrics::Scraper::new(requests, runtime.clone(), resource);
        let metadata = match (&config.metadata, &host_side) {
            (Some(settings), Some(host_side)) => {
                start_metadata(host_side, settings, &config.events, &tasks, &metadata_stop).await
            }
            _ => None,
        };
        let (container_listener, reach) = match &host_side {
            Some(host_side) => {
                reach_from_containers(host_side, listen, &config.events, &tasks, &metadata_stop)
                    .await
            }
            None => (None, Reach::default()),
        };
        let metadata_host = match &metadata {
            Some(servers) => servers.endpoint(None).await.ok(),
            None => None,
        };
        let platform = Platform::new(
            InstanceContext {
                runtime: runtime.clone(),
                mode,
                events: config.events.clone(),
                shutdown: config.signals.graceful.clone(),
                immediate: config.signals.immediate.clone(),
                tasks: tasks.clone(),
            },
            PlatformConfig {
                port: listen.port(),
                secrets: Secrets {
                    dir: config.secrets_dir.clone(),
                },
                default_service: config.default_service.clone(),
                metadata,
                reach,
            },
        );
        Ok(Running {
            config,
            runtime,
            platform,
            listen,
            admin_addr: admin.as_ref().map(|(_, gate)| gate.bound),
            admin_token: admin.as_ref().map(|(_, gate)| gate.token.clone()),
            dashboard_url: admin.as_ref().map(|(_, gate)| gate.dashboard_url()),
            waiting: Some(Waiting {
                listeners: std::iter::once(listener)
                    .chain(container_listener)
                    .collect(),
                admin,
            }),
            tasks,
            stop_accepting: CancellationToken::new(),
            proxy: None,
            admin_task: None,
            drain: None,
            metadata_host,
            metadata_stop,
            logs,
            metrics,
        })
    }
}

/// The listeners bound at start, until [`Running::serve`] takes them.
struct Waiting {
    /// The front end's: the address asked for, and the one containers reach, if apart.
    listeners: Vec<TcpListener>,
    admin: Option<(TcpListener, Gate)>,
}

/// A started emulator. Call [`Running::shutdown`] before dropping it: that is what stops and
/// removes the containers.
pub struct Running {
    config: EmulatorConfig,
    runtime: Runtime,
    platform: Platform,
    listen: SocketAddr,
    admin_addr: Option<SocketAddr>,
    admin_token: Option<String>,
    dashboard_url: Option<String>,
    waiting: Option<Waiting>,
    tasks: TaskTracker,
    stop_accepting: CancellationToken,
    proxy: Option<JoinHandle<DrainReport>>,
    admin_task: Option<JoinHandle<()>>,
    drain: Option<Drain>,
    /// The metadata server's `host:port` as containers reach it, if it runs.
    metadata_host: Option<String>,
    /// Stops the metadata and name servers, once the instances are gone.
    metadata_stop: CancellationToken,
    /// The recent log, for the admin API.
    logs: LogBuffer,
    /// What the admin API's `/metrics` reads.
    metrics: admin::metrics::Scraper,
}

impl Running {
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// What the emulator says, for observers to subscribe to.
    pub fn events(&self) -> &Events {
        &self.config.events
    }

    /// The front end's address (the port bound, when the config asked for port 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The admin API's address, if it has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The token the admin API asks for, if it has one.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// The dashboard's address with its read-only token (`http://ADMIN/?token=...`), if
    /// there is an admin API.
    pub fn dashboard_url(&self) -> Option<&str> {
        self.dashboard_url.as_deref()
    }

    /// The metadata server's `host:port` as containers reach it (`GCE_METADATA_HOST`), if it
    /// runs.
    pub fn metadata_host(&self) -> Option<&str> {
        self.metadata_host.as_deref()
    }

    /// Starts serving: the front end and the admin API accept connections from now on.
    pub fn serve(&mut self) {
        let Some(Waiting { listeners, admin }) = self.waiting.take() else {
            return;
        };
        let proxy = Proxy::new(
            Arc::new(self.platform.router()),
            ProxyConfig {
                header_read_timeout: self.config.header_read_timeout,
                max_connections: self.config.max_connections,
                request_log: Some(self.config.events.clone()),
                ..ProxyConfig::default()
            },
        );
        self.proxy = Some(
            self.tasks
                .spawn(proxy.serve(listeners, self.stop_accepting.clone())),
        );
        if let Some((listener, gate)) = admin {
            self.admin_task = Some(self.tasks.spawn(admin::serve(
                listener,
                self.platform.clone(),
                admin::Observers {
                    logs: self.logs.clone(),
                    metrics: self.metrics.clone(),
                },
                AdminConfig {
                    gate,
                    header_read_timeout: self.config.header_read_timeout,
                },
                self.stop_accepting.clone(),
            )));
        }
    }

    /// How long requests in flight may finish after the emulator stops accepting.
    pub fn drain_timeout(&self) -> Duration {
        ProxyConfig::default().drain_timeout
    }

    /// Stops accepting connections and lets the requests in flight finish: the admin API's
    /// first, then the front end's, for up to the drain timeout or until the immediate signal.
    pub async fn close(&mut self) -> Drain {
        if let Some(drain) = self.drain {
            return drain;
        }
        self.waiting = None;
        self.stop_accepting.cancel();
        if let Some(admin) = self.admin_task.take() {
            let _ = admin.await;
        }
        let drain = match self.proxy.take() {
            None => Drain::Finished,
            Some(mut proxy) => tokio::select! {
                report = &mut proxy => match report {
                    Ok(report) if !report.drained => Drain::TimedOut,
                    _ => Drain::Finished,
                },
                _ = self.config.signals.immediate.cancelled() => {
                    // The stop is immediate: connections still open are cut off.
                    proxy.abort();
                    Drain::Interrupted
                }
            },
        };
        self.drain = Some(drain);
        drain
    }

    /// Stops everything and waits for it: the listeners close, instances (starting ones
    /// included) are stopped and removed, and every task of the emulator has ended.
    pub async fn shutdown(mut self, how: Shutdown) {
        match how {
            Shutdown::Graceful => {
                self.close().await;
                self.platform.shutdown(false).await;
            }
            Shutdown::Immediate => {
                self.waiting = None;
                self.stop_accepting.cancel();
                if let Some(proxy) = self.proxy.take() {
                    proxy.abort();
                }
                if let Some(admin) = self.admin_task.take() {
                    admin.abort();
                }
                self.platform.shutdown(true).await;
            }
        }
        self.metadata_stop.cancel();
        self.logs.close();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Where the host is, seen from containers: the bridge gateway (a host address only the host
/// and its containers use, never a public interface), or, on Docker Desktop, the host's
/// loopback, which containers reach as `host.docker.internal`.
struct HostSide {
    /// The host address the emulator listens on for containers.
    ip: IpAddr,
    /// That address as containers name it (`GCE_METADATA_HOST`'s host).
    name: String,
    /// Docker Desktop: containers reach the host's loopback, by name only.
    desktop: bool,
}

impl HostSide {
    async fn find(runtime: &Runtime, mode: UpstreamMode) -> Result<HostSide, String> {
        // Docker Desktop's containers reach the host's loopback as host.docker.internal;
        // elsewhere (`--upstream published-port` on Linux included) the bridge gateway is
        // the way.
        let desktop = mode == UpstreamMode::PublishedPort
            && runtime.is_docker_desktop().await.unwrap_or(false);
        if desktop {
            return Ok(HostSide {
                ip: IpAddr::from([127, 0, 0, 1]),
                name: "host.docker.internal".to_string(),
                desktop,
            });
        }
        match runtime.bridge_gateway().await {
            Ok(Some(gateway)) => Ok(HostSide {
                ip: gateway.into(),
                name: gateway.to_string(),
                desktop,
            }),
            Ok(None) => Err("the default bridge network has no gateway".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Starts the metadata servers (one per service account) on the host side. Without them the
/// emulator runs on, and says so.
async fn start_metadata(
    host_side: &HostSide,
    settings: &MetadataConfig,
    events: &Events,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Option<metadata::Servers> {
    let unavailable = |why: String| {
        events.publish(Event::warning(format!(
            "no metadata server for the containers: {why}"
        )));
        None
    };
    let dir = metadata::identity::state_dir(|name| std::env::var(name).ok());
    let Some(dir) = dir else {
        return unavailable(
            "no state directory for its signing key (set EMULATE_STATE_DIR)".into(),
        );
    };
    let key = match tokio::task::spawn_blocking(move || metadata::IdentityKey::load_or_create(&dir))
        .await
    {
        Ok(Ok(key)) => std::sync::Arc::new(key),
        Ok(Err(e)) => return unavailable(format!("its signing key: {e}")),
        Err(e) => return unavailable(format!("its signing key: {e}")),
    };
    let ip = host_side.ip;
    let servers = metadata::Servers::start(
        ip,
        host_side.name.clone(),
        settings.clone(),
        key,
        events.clone(),
        tasks.clone(),
        stop.clone(),
    );
    match servers.await {
        Ok(servers) => Some(servers),
        Err(e) => unavailable(format!("cannot listen on {ip}: {e}")),
    }
}

/// Makes every service URL (`http://SERVICE.localhost:PORT`) work inside containers: the front
/// end also listens on the host side at the same port, and the name server there resolves
/// `*.localhost` to it (services deployed later included). Where the name server cannot run
/// (port 53 needs root), the platform writes the names it knows into each new container's
/// `/etc/hosts`. Returns the extra listener and what the platform tells containers.
async fn reach_from_containers(
    host_side: &HostSide,
    listen: SocketAddr,
    events: &Events,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> (Option<TcpListener>, Reach) {
    if host_side.desktop {
        // Desktop's containers reach the host's loopback, where the front end already is;
        // the engine's `host-gateway` is that host.
        return (
            None,
            Reach {
                dns: None,
                front_end: Some("host-gateway".to_string()),
            },
        );
    }
    let ip = host_side.ip;
    let (listener, front_end) = if listen.ip().is_unspecified() || listen.ip() == ip {
        (None, Some(ip.to_string()))
    } else {
        let addr = SocketAddr::new(ip, listen.port());
        match TcpListener::bind(addr).await {
            Ok(listener) => (Some(listener), Some(ip.to_string())),
            Err(e) => {
                events.publish(Event::warning(format!(
                    "service URLs do not work inside containers: cannot listen on {addr}: {e}"
                )));
                return (None, Reach::default());
            }
        }
    };
    let IpAddr::V4(local) = ip else {
        return (
            listener,
            Reach {
                dns: None,
                front_end,
            },
        );
    };
    let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut upstream = dns::upstream_servers(&resolv_conf);
    if upstream.is_empty() {
        // Docker's own fallback when the host names no server.
        upstream = vec![
            SocketAddr::from(([8, 8, 8, 8], dns::PORT)),
            SocketAddr::from(([8, 8, 4, 4], dns::PORT)),
        ];
    }
    let server = dns::Dns::start(
        SocketAddr::new(ip, dns::PORT),
        dns::DnsConfig { local, upstream },
        tasks,
        stop.clone(),
    )
    .await;
    let dns = match server {
        Ok(server) => Some(server.addr.ip()),
        Err(e) => {
            events.publish(Event::warning(format!(
                "no name server for the containers ({ip}:{} needs root: {e}); an instance reaches the services that existed when it started, by URL, through its /etc/hosts",
                dns::PORT
            )));
            None
        }
    };
    (listener, Reach { dns, front_end })
}

/// Removes containers an emulator that was killed left behind, and says so.
async fn reap_orphans(runtime: &Runtime, events: &Events) {
    match instance::reap_orphans(runtime).await {
        Ok(reaped) if !reaped.is_empty() => events.publish(Event::OrphansReaped {
            containers: reaped.into_iter().map(|c| c.name).collect(),
        }),
        Ok(_) => {}
        Err(e) => events.publish(Event::warning(format!(
            "could not look for leftover containers: {e}"
        ))),
    }
}

async fn bind(listener: Listener, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            listener,
            addr,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_takes_free_loopback_ports_and_no_admin_api() {
        let config = EmulatorConfig::default();
        assert_eq!(config.listen, "127.0.0.1:0".parse().unwrap());
        assert!(config.admin.is_none());
        assert!(config.upstream.is_none());
    }
}
