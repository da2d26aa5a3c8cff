//! Instances: one container of a revision, started the way Cloud Run starts one (env, limits,
//! labels, the default TCP startup probe while watching for an early exit) and stopped the way
//! Cloud Run stops one (SIGTERM, 10 s, SIGKILL), always removed afterwards. Also the reaper
//! of containers left behind by an emulator that was killed.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cloudrun;
use crate::events::{Event, Events, SystemKind};
use crate::instances::cgroup::Cgroup;
use crate::instances::probe::{self, ListenDiagnosis};
use crate::instances::revision::RevisionConfig;
use crate::instances::throttle::{Activity, Control, CpuPolicy};
use crate::logs::LineSplitter;
use crate::runtime::{
    ContainerInfo, ContainerSpec, ManagedContainer, Runtime, RuntimeError, LABEL_MANAGED,
    LABEL_OWNER, LABEL_REVISION, LABEL_SERVICE,
};

/// How the proxy reaches a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamMode {
    /// Dial the container's address on Docker's bridge network (Linux; fastest).
    ContainerIp,
    /// Dial a port published on 127.0.0.1 (Docker Desktop, where container addresses are in a
    /// VM the host cannot route to).
    PublishedPort,
}

/// What every pool needs to start and stop containers.
#[derive(Clone, Debug)]
pub struct InstanceContext {
    pub runtime: Runtime,
    pub mode: UpstreamMode,
    /// Where instances say what happens to them.
    pub events: Events,
    /// Cancelled when the emulator shuts down: starts in progress give up.
    pub shutdown: CancellationToken,
    /// Cancelled by a second Ctrl-C: stops in progress turn into kills.
    pub immediate: CancellationToken,
    /// The emulator's tasks: every task a pool spawns is counted here too, so the emulator's
    /// shutdown waits for those of pools already gone from the records (a deleted revision).
    pub tasks: TaskTracker,
}

/// Where a pool's background tasks run: each is counted by the pool's tracker (a pool's
/// stop waits for its own) and by the emulator's (its shutdown waits for every one, those
/// of pools already gone from the records included).
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    pub pool: TaskTracker,
    pub emulator: TaskTracker,
}

impl Tasks {
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.emulator.spawn(self.pool.track_future(task))
    }
}

/// One revision as its instances and pool run it: its names, the image id it resolved to,
/// and its configuration. Frozen when the revision is made.
#[derive(Clone, Debug)]
pub struct RevisionSpec {
    pub service: String,
    pub revision: String,
    /// The image id the revision runs, so a rebuilt tag does not change it.
    pub image_id: String,
    pub config: RevisionConfig,
    /// The emulator's env for the revision's containers (the metadata server of its service
    /// account); a user's variable of the same name wins.
    pub emulator_env: Vec<(String, String)>,
    /// How its containers find the emulator's services and the host.
    pub network: ContainerNetwork,
}

/// What the emulator adds to a container's name resolution (Docker's `--dns` and
/// `--add-host`), so service URLs and `host.docker.internal` work inside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerNetwork {
    /// Name servers (the emulator's own, which answers `*.localhost`).
    pub dns: Vec<std::net::IpAddr>,
    /// `NAME:ADDRESS` entries for `/etc/hosts` (`host-gateway` is the engine's name for the
    /// host).
    pub hosts: Vec<String>,
}

impl RevisionSpec {
    /// The container's env: Cloud Run's variables first, then the emulator's (those the user
    /// does not set), then the user's.
    pub fn container_env(&self) -> Vec<(String, String)> {
        let container = &self.config.container;
        let mut env = vec![
            ("PORT".to_string(), container.port.to_string()),
            ("K_SERVICE".to_string(), self.service.clone()),
            ("K_REVISION".to_string(), self.revision.clone()),
            ("K_CONFIGURATION".to_string(), self.service.clone()),
        ];
        env.extend(
            self.emulator_env
                .iter()
                .filter(|(name, _)| !container.env.iter().any(|(user, _)| user == name))
                .cloned(),
        );
        env.extend(container.env.iter().cloned());
        env
    }

    /// The name Cloud Run's probe lines give the container.
    fn container_display_name(&self) -> &str {
        &self.service
    }

    /// A revision of `service` with Cloud Run's defaults, for tests.
    #[cfg(test)]
    pub fn example(service: &str) -> Self {
        use crate::instances::revision::{ContainerConfig, ScalingConfig};
        RevisionSpec {
            service: service.into(),
            revision: format!("{service}-00001-abc"),
            image_id: "sha256:x".into(),
            emulator_env: Vec::new(),
            network: ContainerNetwork::default(),
            config: RevisionConfig {
                container: ContainerConfig {
                    image: service.into(),
                    port: 8080,
                    http2: false,
                    env: Vec::new(),
                    command: None,
                    args: None,
                    memory_bytes: 512 << 20,
                    cpu_millis: 1000,
                    cpu_throttling: true,
                    startup_cpu_boost: false,
                    startup_budget: Duration::from_secs(240),
                    startup_probe: None,
                    liveness: None,
                },
                scaling: ScalingConfig {
                    concurrency: 80,
                    min_instances: 0,
                    max_instances: 100,
                    idle_timeout: Duration::from_secs(15 * 60),
                },
                request_timeout: Duration::from_secs(300),
            },
        }
    }
}

/// A started, ready instance.
#[derive(Debug)]
pub struct Instance {
    pub container_id: String,
    /// The short id shown in logs (the container id's first 8 characters).
    pub id: String,
    pub revision: String,
    /// Where the proxy sends its requests.
    pub addr: SocketAddr,
    /// How long from container start until the probe succeeded.
    pub startup: Duration,
    /// Its PID 1 as seen from the host (None on engines whose processes are elsewhere).
    pub pid: Option<u32>,
    log_task: JoinHandle<()>,
    /// Its CPU allocation and what it does between requests.
    pub activity: Arc<Activity>,
    /// Where what it writes outside its tmpfs mounts lands on the host, if known.
    pub upper_dir: Option<String>,
}

/// Why an instance did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the container's binary is not for linux/amd64 (exec format error)")]
    ExecFormat { message: String },
    #[error("{}", cloudrun::container_called_exit(*code))]
    Exited { code: i64, oom_killed: bool },
    /// Nothing answered on the port within the startup budget; the listen diagnosis says
    /// what the app listens on instead, when it can be read.
    #[error("the startup probe timed out")]
    NotReady { diagnosis: Option<ListenDiagnosis> },
    /// The app listens, but the user's HTTP or gRPC startup probe never passed within the
    /// startup budget: why its last attempt failed.
    #[error("the startup probe timed out")]
    ProbeFailed { why: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("interrupted before the instance was ready")]
    Cancelled,
}

/// A failed start, with what the user needs to fix it. The container is already removed.
#[derive(Debug)]
pub struct StartFailure {
    pub error: StartError,
    pub last_logs: Vec<String>,
}

impl StartFailure {
    /// Cloud Run's text first, then the container's last lines, then the local diagnosis.
    pub fn report(&self, spec: &RevisionSpec) -> String {
        let port = spec.config.container.port;
        let mut out = String::new();
        match &self.error {
            StartError::Runtime(e) => return e.to_string(),
            StartError::Cancelled => return self.error.to_string(),
            StartError::Exited { code, .. } => {
                out.push_str(&cloudrun::container_called_exit(*code));
                out.push('\n');
            }
            StartError::ProbeFailed { .. } => {
                if let Some(line) = self.startup_probe_failed(spec) {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
            StartError::NotReady { .. } => {
                out.push_str(&cloudrun::startup_probe_failed(
                    spec.container_display_name(),
                    port,
                ));
                out.push('\n');
            }
            StartError::ExecFormat { .. } => {}
        }
        out.push_str(&cloudrun::revision_not_ready(&spec.revision, port));
        if !self.last_logs.is_empty() {
            out.push_str("\n\nLast log lines of the container:\n");
            for line in &self.last_logs {
                out.push_str("  | ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str("\nDiagnosis: ");
        out.push_str(&self.diagnosis(spec).unwrap_or_default());
        out
    }

    /// Cloud Run's line for a user's HTTP or gRPC startup probe that never passed on an app
    /// that listens; None for any other failure.
    pub fn startup_probe_failed(&self, spec: &RevisionSpec) -> Option<String> {
        match (&self.error, &spec.config.container.startup_probe) {
            (StartError::ProbeFailed { .. }, Some(startup)) => {
                Some(cloudrun::user_startup_probe_failed(
                    startup.kind(),
                    startup.failure_threshold,
                    spec.container_display_name(),
                    &startup.target(),
                ))
            }
            _ => None,
        }
    }

    /// The local diagnosis: why the start failed and what to do about it. None for a Docker
    /// failure or a cancelled start, which have none.
    pub fn diagnosis(&self, spec: &RevisionSpec) -> Option<String> {
        let container = &spec.config.container;
        Some(match &self.error {
            StartError::ExecFormat { message } => format!(
                "the container's binary is not for linux/amd64, so the kernel refused to run it ({message}).\n{}",
                cloudrun::AMD64_HINT.replace("IMAGE", &container.image)
            ),
            StartError::Exited { code, oom_killed: true } => format!(
                "the container was killed for exceeding its memory limit of {} MiB (exit code {code}). Raise it with --memory, or use less memory at startup.",
                container.memory_bytes >> 20
            ),
            StartError::Exited { code, .. } => format!(
                "the container exited with code {code} before listening on port {}. Its last log lines above usually say why; reproduce with: docker run --rm -e PORT={} {}",
                container.port, container.port, container.image
            ),
            StartError::ProbeFailed { why } => match &container.startup_probe {
                Some(startup) => format!(
                    "the app listens on port {}, but its {} startup probe {} never passed: the last attempt {why}. It passes on {}; fix the endpoint, or point startupProbe at one that answers once the app is ready.",
                    container.port,
                    startup.kind(),
                    startup.target(),
                    match startup.check {
                        probe::HealthCheck::Http { .. } => "HTTP 200-399",
                        probe::HealthCheck::Grpc { .. } => "a SERVING health check",
                    }
                ),
                None => String::new(),
            },
            StartError::NotReady { diagnosis: Some(d) } => d.explain(container.port),
            StartError::NotReady { diagnosis: None } => format!(
                "nothing answered on port {} within {:?}. Check that the app listens on 0.0.0.0:$PORT; if it only starts slowly, raise --startup-timeout.",
                container.port, container.startup_budget
            ),
            StartError::Runtime(_) | StartError::Cancelled => return None,
        })
    }
}

/// The owner label of this process: host, pid and the process's start time, so a later
/// emulator can tell a live owner from a dead one even when pids are reused.
pub fn owner_label() -> String {
    let pid = std::process::id();
    format!(
        "{}:{pid}:{}",
        hostname(),
        process_start_time(pid).unwrap_or_default()
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat)?.nth(19)?.parse().ok()
}

/// The fields of a `/proc/PID/stat` line after the command name (field 3 onwards): the
/// command name (field 2) may hold spaces and parens, the fields after its last paren are
/// plain.
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// When a live process started: None when it does not exist, or is a zombie (`Z`, killed
/// but not yet waited for by its parent) or dead (`X`), which hold no resources any more.
fn live_process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat_fields(&stat)?;
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Whether the emulator named in an owner label is gone. None when this host cannot tell
/// (another host, or no /proc), in which case the container is left alone.
fn owner_is_gone(owner: &str) -> Option<bool> {
    let mut parts = owner.rsplitn(3, ':');
    let start: u64 = parts.next()?.parse().ok()?;
    let pid: u32 = parts.next()?.parse().ok()?;
    let host = parts.next()?;
    if host != hostname() || !std::path::Path::new("/proc/self/stat").exists() {
        return None;
    }
    Some(live_process_start_time(pid) != Some(start))
}

/// Removes the containers of emulators that died without cleaning up (killed with SIGKILL,
/// say); containers of emulators still running are left alone.
pub async fn reap_orphans(runtime: &Runtime) -> Result<Vec<ManagedContainer>, RuntimeError> {
    let mut reaped = Vec::new();
    for container in runtime.list_managed().await? {
        let gone = container
            .labels
            .get(LABEL_OWNER)
            .and_then(|owner| owner_is_gone(owner));
        if gone == Some(true) {
            runtime.remove(&container.id).await?;
            reaped.push(container);
        }
    }
    Ok(reaped)
}

/// Creates (without starting) a container for an instance of the revision. A pool keeps one
/// created ahead of time, so a cold start only has to start it.
pub async fn create(
    runtime: &Runtime,
    spec: &RevisionSpec,
    mode: UpstreamMode,
) -> Result<String, RuntimeError> {
    let config = &spec.config.container;
    let container = ContainerSpec {
        name: container_name(&spec.revision, &mut rand::rng()),
        image: spec.image_id.clone(),
        env: spec.container_env(),
        labels: vec![
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_SERVICE.to_string(), spec.service.clone()),
            (LABEL_REVISION.to_string(), spec.revision.clone()),
            (LABEL_OWNER.to_string(), owner_label()),
        ],
        entrypoint: config.command.clone(),
        args: config.args.clone(),
        memory_bytes: config.memory_bytes,
        // Boosted from the start with startup CPU boost; the instance's `Activity` lowers it.
        cpu_millis: CpuPolicy::of(config, host_millicpu()).startup_millicpu(),
        port: config.port,
        publish_port: mode == UpstreamMode::PublishedPort,
        dns: spec.network.dns.iter().map(|ip| ip.to_string()).collect(),
        extra_hosts: spec.network.hosts.clone(),
        tmpfs: IN_MEMORY_DIRS.iter().map(|d| d.to_string()).collect(),
    };
    runtime.create(&container).await
}

/// Directories mounted in memory (tmpfs), where apps put scratch files: on Cloud Run the whole
/// filesystem is in memory, and these are where most writes go. Their pages are charged to
/// the container's memory cgroup, so they count toward the memory limit as on Cloud Run.
/// (`/dev/shm`, already tmpfs, is sized to the memory limit too.) Other directories are
/// measured from the writable layer instead (see the pool's file watcher).
pub const IN_MEMORY_DIRS: &[&str] = &["/tmp", "/var/tmp"];

/// The host's CPUs in millicpu: the engine refuses a limit above them.
fn host_millicpu() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64) * 1000
}

/// Says once per emulator that CPU throttling goes through the engine's API.
static APPROXIMATE_SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How a ready instance's CPU limit is changed: its cgroup's file when this host can write
/// it (a Linux engine), else the engine's update API from a task of the pool (Docker
/// Desktop), which is approximate and said once.
fn cpu_control(
    runtime: &Runtime,
    events: &Events,
    tasks: &Tasks,
    policy: &CpuPolicy,
    container_id: &str,
    cgroup: Option<&Cgroup>,
) -> Control {
    if !policy.changes_cpu() {
        return Control::Fixed;
    }
    if let Some(limit) = cgroup.and_then(|c| c.cpu_limit().ok()) {
        return Control::Direct(limit);
    }
    if policy.throttling && !APPROXIMATE_SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        events.publish(Event::warning(
            "CPU throttling between requests is approximate here: the containers' cgroups cannot be written from this host (Docker Desktop?), so their CPU limit is changed through the engine's API, a few milliseconds after a request starts or ends.",
        ));
    }
    let (wanted, mut seen) = tokio::sync::watch::channel(policy.startup_millicpu());
    let (runtime, container_id) = (runtime.clone(), container_id.to_string());
    // Ends when the instance's `Activity` (the sender) is dropped.
    tasks.spawn(async move {
        while seen.changed().await.is_ok() {
            let millicpu = *seen.borrow_and_update();
            if let Err(e) = runtime.update_cpu(&container_id, millicpu).await {
                tracing::debug!("{e}");
            }
        }
    });
    Control::Engine(wanted)
}

/// Starts one instance (in `created`, a container made by [`create`], or a new one) and waits
/// for Cloud Run's default startup probe. On any failure the container is removed before
/// returning.
pub async fn start(
    ctx: &InstanceContext,
    spec: &RevisionSpec,
    tasks: &Tasks,
    reason: &str,
    cancel: &CancellationToken,
    created: Option<String>,
) -> Result<Instance, StartFailure> {
    let (runtime, mode, events) = (&ctx.runtime, ctx.mode, &ctx.events);
    events.publish(Event::system(
        SystemKind::Starting,
        &spec.service,
        &spec.revision,
        None,
        cloudrun::starting_new_instance(reason),
    ));
    let container_id = match created {
        Some(id) => id,
        None => create(runtime, spec, mode)
            .await
            .map_err(|e| StartFailure {
                error: e.into(),
                last_logs: Vec::new(),
            })?,
    };
    match start_created(runtime, spec, mode, events, tasks, &container_id, cancel).await {
        Ok(instance) => Ok(instance),
        Err(error) => {
            let last_logs = runtime
                .tail_logs(&container_id, 20)
                .await
                .unwrap_or_default();
            // Some runtimes refuse the binary at start (an API error), others start the
            // container and log the refusal; both are the same mistake.
            let refusal = last_logs.iter().find(|l| l.contains("exec format error"));
            let error = match (error, refusal) {
                (StartError::Exited { .. } | StartError::Runtime(_), Some(line)) => {
                    StartError::ExecFormat {
                        message: line.trim().to_string(),
                    }
                }
                (other, _) => other,
            };
            if let Err(e) = runtime.remove(&container_id).await {
                tracing::warn!("{e}");
            }
            Err(StartFailure { error, last_logs })
        }
    }
}

async fn start_created(
    runtime: &Runtime,
    spec: &RevisionSpec,
    mode: UpstreamMode,
    events: &Events,
    tasks: &Tasks,
    container_id: &str,
    cancel: &CancellationToken,
) -> Result<Instance, StartError> {
    let started_at = Instant::now();
    runtime.start(container_id).await.map_err(|e| match e {
        RuntimeError::ExecFormat { message } => StartError::ExecFormat { message },
        other => StartError::Runtime(other),
    })?;
    let id = container_id[..8.min(container_id.len())].to_string();
    // Set once the instance is ready: lines of the startup phase are not counted.
    let counting: Arc<OnceLock<Arc<Activity>>> = Arc::default();
    let log_task = tasks.spawn(follow_logs(
        runtime.clone(),
        container_id.to_string(),
        spec.service.clone(),
        spec.revision.clone(),
        id.clone(),
        events.clone(),
        counting.clone(),
    ));
    let result = match probe_until_ready(runtime, spec, mode, events, container_id, cancel).await {
        Ok(ready) => still_running(runtime, container_id)
            .await
            .map(|info| (ready, info)),
        Err(e) => Err(e),
    };
    let ((addr, attempts), info) = match result {
        Ok(ready) => ready,
        Err(e) => {
            log_task.abort();
            return Err(e);
        }
    };
    // The cgroup is read and written directly only when the engine runs on this host (the
    // container's pid is one of ours): not through Docker Desktop's VM.
    let cgroup = match (mode, info.pid) {
        (UpstreamMode::ContainerIp, Some(pid)) => Cgroup::of_process(pid, container_id),
        _ => None,
    };
    let policy = CpuPolicy::of(&spec.config.container, host_millicpu());
    let control = cpu_control(
        runtime,
        events,
        tasks,
        &policy,
        container_id,
        cgroup.as_ref(),
    );
    let activity = Arc::new(Activity::new(policy, control, cgroup));
    let _ = counting.set(activity.clone());
    let container = &spec.config.container;
    let line = match &container.startup_probe {
        None => cloudrun::startup_probe_succeeded(1, spec.container_display_name(), container.port),
        Some(startup) => cloudrun::user_startup_probe_succeeded(
            startup.kind(),
            attempts,
            spec.container_display_name(),
            &startup.target(),
        ),
    };
    events.publish(Event::system(
        SystemKind::ProbePassed,
        &spec.service,
        &spec.revision,
        Some(&id),
        line,
    ));
    Ok(Instance {
        container_id: container_id.to_string(),
        id,
        revision: spec.revision.clone(),
        addr,
        startup: started_at.elapsed(),
        pid: info.pid,
        log_task,
        activity,
        upper_dir: info.upper_dir,
    })
}

/// Cloud Run's default startup probe: a single TCP attempt that may take up to the budget
/// (240 s), carried out here by dialling every few milliseconds. Meanwhile the container is
/// watched: an exit fails the probe at once, and a certain misconfiguration (listening on
/// loopback or another port) is reported as a warning without waiting out the budget.
///
/// A user's HTTP or gRPC startup probe is tried once the port accepts connections, after its
/// initial delay, then every [`STARTUP_RETRY`] (more often than Cloud Run's periodSeconds, so
/// a local start is never slower) until it passes or the budget (Cloud Run's last attempt)
/// runs out. Returns the address and the attempt Cloud Run would have passed on.
async fn probe_until_ready(
    runtime: &Runtime,
    spec: &RevisionSpec,
    mode: UpstreamMode,
    events: &Events,
    container_id: &str,
    cancel: &CancellationToken,
) -> Result<(SocketAddr, u32), StartError> {
    let container = &spec.config.container;
    let info = runtime.inspect(container_id).await?;
    let exit = runtime.wait_exit(container_id);
    tokio::pin!(exit);
    let addr = match mode {
        UpstreamMode::ContainerIp => info.ip.map(|ip| SocketAddr::new(ip, container.port)),
        UpstreamMode::PublishedPort => info
            .published_port
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
    };
    let deadline = Instant::now() + container.startup_budget;
    let mut next_check = Instant::now() + Duration::from_millis(300);
    let mut next_attempt = Instant::now()
        + container
            .startup_probe
            .as_ref()
            .map_or(Duration::ZERO, |p| p.initial_delay);
    let began = Instant::now();
    let mut probe_failure: Option<String> = None;
    let mut last_diagnosis: Option<ListenDiagnosis> = None;
    let mut warned = false;
    loop {
        if let Some(addr) = addr {
            if probe::tcp_connects(addr, mode == UpstreamMode::PublishedPort).await {
                let Some(startup) = &container.startup_probe else {
                    return Ok((addr, 1));
                };
                if Instant::now() >= next_attempt {
                    // Only the serving port is published; elsewhere the probe's own port.
                    let target = match mode {
                        UpstreamMode::ContainerIp => SocketAddr::new(addr.ip(), startup.port),
                        UpstreamMode::PublishedPort => addr,
                    };
                    match startup.check(target).await {
                        Ok(()) => return Ok((addr, startup.attempt_at(began.elapsed()))),
                        Err(why) => probe_failure = Some(why),
                    }
                    next_attempt = Instant::now() + STARTUP_RETRY;
                }
            }
        }
        tokio::select! {
            code = &mut exit => {
                // Exited before listening (or the container could not be waited on).
                let code = code?;
                let oom_killed = runtime.oom_killed(container_id, Some(code)).await;
                return Err(StartError::Exited { code, oom_killed });
            }
            _ = cancel.cancelled() => return Err(StartError::Cancelled),
            _ = tokio::time::sleep(probe::POLL_INTERVAL) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            let diagnosis = info
                .pid
                .and_then(probe::listening_sockets)
                .and_then(|s| probe::diagnose(&s, container.port));
            return Err(match probe_failure {
                Some(why) => StartError::ProbeFailed { why },
                None => StartError::NotReady { diagnosis },
            });
        }
        if !warned && now >= next_check {
            next_check = now + Duration::from_millis(500);
            let diagnosis = info
                .pid
                .and_then(probe::listening_sockets)
                .and_then(|s| probe::diagnose(&s, container.port))
                .filter(|d| *d != ListenDiagnosis::NotListening);
            // Warn once the same finding has been seen twice in a row, so an app that binds
            // an admin port just before its main one is not flagged.
            if diagnosis.is_some() && diagnosis == last_diagnosis {
                warned = true;
                if let Some(d) = &diagnosis {
                    events.publish(Event::WillNotBecomeReady {
                        revision: spec.revision.clone(),
                        why: d.explain(container.port),
                        budget: container.startup_budget,
                    });
                }
            }
            last_diagnosis = diagnosis;
        }
    }
}

/// Confirms that a container whose probe just passed is still the one that answered. A
/// container that died frees its bridge address, which Docker may give at once to another
/// container listening on the same port (every instance of a busy engine does), and a probe
/// dialling that address would then pass for the dead one. A container that is still
/// running kept its address all along, so the answer was its own. Returns what the engine
/// said of it (its pid and upper directory).
async fn still_running(runtime: &Runtime, container_id: &str) -> Result<ContainerInfo, StartError> {
    let info = runtime.inspect(container_id).await?;
    if info.running {
        return Ok(info);
    }
    let code = match info.exit_code {
        Some(code) => code,
        None => runtime.wait_exit(container_id).await?,
    };
    let oom_killed = runtime.oom_killed(container_id, Some(code)).await;
    Err(StartError::Exited { code, oom_killed })
}

/// How often a failing user startup probe is tried again.
const STARTUP_RETRY: Duration = Duration::from_millis(100);

/// Streams the container's output into the log until the container stops.
async fn follow_logs(
    runtime: Runtime,
    container_id: String,
    service: String,
    revision: String,
    instance: String,
    events: Events,
    counting: Arc<OnceLock<Arc<Activity>>>,
) {
    let mut stream = Box::pin(runtime.follow_logs(&container_id));
    let (mut out, mut err) = (LineSplitter::default(), LineSplitter::default());
    let publish = |stderr: bool| {
        let (service, revision, instance, events) = (&service, &revision, &instance, &events);
        move |line: &str| {
            events.publish(Event::ContainerLog {
                service: service.clone(),
                revision: revision.clone(),
                instance: instance.clone(),
                stderr,
                line: line.to_string(),
            })
        }
    };
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        let splitter = if chunk.stderr { &mut err } else { &mut out };
        let publish = publish(chunk.stderr);
        splitter.push(&chunk.bytes, |line| {
            // Counted between requests: work Cloud Run would throttle.
            if let Some(activity) = counting.get() {
                activity.log_line(chunk.time);
            }
            publish(line)
        });
    }
    out.finish(publish(false));
    err.finish(publish(true));
}

/// How an instance ended.
#[derive(Debug)]
pub struct StopReport {
    pub exit_code: Option<i64>,
    /// True when it ignored SIGTERM for the whole grace period and was SIGKILLed.
    pub killed: bool,
    pub took: Duration,
    /// It had already exited by itself (a crash the exit watcher had not reported yet), and
    /// whether the engine had OOM-killed it.
    pub already_exited: bool,
    pub oom_killed: bool,
}

impl Instance {
    /// What its PID 1 does with SIGTERM now, when that can be read.
    pub fn sigterm(&self) -> Option<probe::Sigterm> {
        self.pid.and_then(probe::read_sigterm)
    }

    /// SIGTERM, up to `grace`, SIGKILL; then the container is removed.
    pub async fn stop(
        self,
        runtime: &Runtime,
        grace: Duration,
    ) -> Result<StopReport, RuntimeError> {
        let before = runtime.inspect(&self.container_id).await.ok();
        let already_exited = before.as_ref().is_some_and(|i| !i.running);
        let began = Instant::now();
        let stopped = runtime.stop(&self.container_id, grace).await;
        let took = began.elapsed();
        let exit_code = runtime
            .inspect(&self.container_id)
            .await
            .ok()
            .and_then(|i| i.exit_code);
        // A SIGKILL before the grace ran out was not ours: the engine's view of a container
        // the OOM killer just hit can lag behind, so it looked running a moment ago.
        // Past the grace period it was our SIGKILL; the engine need not be asked.
        let oom_killed = took < grace && runtime.oom_killed(&self.container_id, exit_code).await;
        let already_exited = already_exited || (oom_killed && took < grace);
        self.finish(runtime).await?;
        stopped?;
        Ok(StopReport {
            exit_code,
            killed: !already_exited && took >= grace && exit_code == Some(137),
            took,
            already_exited,
            oom_killed,
        })
    }

    /// SIGKILL at once, then remove: for a second Ctrl-C.
    pub async fn kill(self, runtime: &Runtime) -> Result<(), RuntimeError> {
        runtime.kill(&self.container_id).await?;
        self.finish(runtime).await
    }

    async fn finish(self, runtime: &Runtime) -> Result<(), RuntimeError> {
        // Let the log stream print the container's last lines before it goes.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.log_task).await;
        runtime.remove(&self.container_id).await
    }

    /// Resolves when the container exits by itself, with its exit code and whether the engine
    /// killed it for memory.
    pub async fn exited(
        runtime: &Runtime,
        container_id: &str,
    ) -> Result<(i64, bool), RuntimeError> {
        let code = runtime.wait_exit(container_id).await?;
        Ok((code, runtime.oom_killed(container_id, Some(code)).await))
    }
}

/// `emulate-REVISION-xxxxx`: unique per instance, and says whose it is in `docker ps`.
fn container_name(revision: &str, rng: &mut impl Rng) -> String {
    format!("emulate-{revision}-{}", cloudrun::random_suffix(5, rng))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_puts_cloud_runs_variables_first() {
        let mut spec = RevisionSpec::example("hello");
        spec.config.container.port = 9000;
        spec.config.container.env = vec![("A".into(), "1".into())];
        let env = spec.container_env();
        assert_eq!(env[0], ("PORT".into(), "9000".into()));
        assert_eq!(env[2], ("K_REVISION".into(), "hello-00001-abc".into()));
        assert_eq!(env[3], ("K_CONFIGURATION".into(), "hello".into()));
        assert_eq!(env[4], ("A".into(), "1".into()));
    }

    #[test]
    fn env_gives_the_emulators_variables_unless_the_user_sets_them() {
        let mut spec = RevisionSpec::example("hello");
        spec.emulator_env = vec![
            ("GCE_METADATA_HOST".into(), "172.17.0.1:4000".into()),
            ("GCE_METADATA_IP".into(), "172.17.0.1:4000".into()),
        ];
        spec.config.container.env = vec![("GCE_METADATA_IP".into(), "mine".into())];
        let env = spec.container_env();
        let values = |name: &str| -> Vec<String> {
            env.iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .collect()
        };
        assert_eq!(values("GCE_METADATA_HOST"), ["172.17.0.1:4000"]);
        assert_eq!(values("GCE_METADATA_IP"), ["mine"]);
    }

    #[test]
    fn owners_of_this_process_are_alive_and_of_dead_processes_are_gone() {
        assert_eq!(owner_is_gone(&owner_label()), Some(false));
        let dead = format!("{}:{}:1", hostname(), u32::MAX - 1);
        assert_eq!(owner_is_gone(&dead), Some(true));
        assert_eq!(owner_is_gone("another-host:1:1"), None);
        assert_eq!(owner_is_gone("garbage"), None);
    }

    #[test]
    fn an_owner_that_is_a_zombie_is_gone() {
        // A child that exited and is not waited for stays a zombie with its start time.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = process_start_time(pid).expect("the child has a start time");
        let owner = format!("{}:{pid}:{start}", hostname());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            if stat_fields(&stat).unwrap().next() == Some("Z") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the child never exited"
            );
            std::thread::yield_now();
        }
        assert_eq!(owner_is_gone(&owner), Some(true));
        child.wait().unwrap();
    }
}
