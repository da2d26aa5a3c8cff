//! The container runtime: the only module that talks to Docker (through bollard). The rest of
//! the crate speaks in its own nouns: a [`ContainerSpec`] to create, a container id, a
//! [`ContainerInfo`] with the address to dial, an exit code.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, CreateImageOptions, EventsOptions,
    KillContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions, StatsOptions,
    StopContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// Every container the emulator creates carries this label, so it can find its own.
pub const LABEL_MANAGED: &str = "dev.emulate.managed";
pub const LABEL_SERVICE: &str = "dev.emulate.service";
pub const LABEL_REVISION: &str = "dev.emulate.revision";
/// `HOST:PID:STARTTIME` of the emulator process that owns the container.
pub const LABEL_OWNER: &str = "dev.emulate.owner";

/// The only platform Cloud Run runs.
pub const PLATFORM: &str = "linux/amd64";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("Cannot reach the Docker engine at {endpoint} ({cause}). Start Docker (Linux: `sudo systemctl start docker` or `sudo dockerd &`; macOS/Windows: open Docker Desktop), or point DOCKER_HOST at a running engine.")]
    Unreachable { endpoint: String, cause: String },
    /// A Docker call failed: which operation, and bollard's error (the engine's message is
    /// shown, not bollard's wrapping of it).
    #[error("Docker could not {operation}: {}", engine_message(source))]
    Operation {
        operation: String,
        #[source]
        source: DockerError,
    },
    /// The engine answered, but with a failure in its stream (a build's error detail) or
    /// none at all (a stream that closed early).
    #[error("Docker could not {operation}: {message}")]
    Failed { operation: String, message: String },
    /// The container's binary is for another CPU (usually arm64): the kernel refused to run it.
    #[error("the container failed to start: exec format error ({message})")]
    ExecFormat { message: String },
}

impl RuntimeError {
    fn operation(operation: impl Into<String>, source: DockerError) -> Self {
        RuntimeError::Operation {
            operation: operation.into(),
            source,
        }
    }
}

/// The outcome of a call that puts a container in a state (stopped, killed, removed): Ok when
/// it did, or when the engine refused because the container is already there (`done` says
/// which status codes and messages mean that); else the error, naming the operation.
fn done_unless_failed(
    result: Result<(), DockerError>,
    done: impl Fn(u16, &str) -> bool,
    operation: impl FnOnce() -> String,
) -> Result<(), RuntimeError> {
    match result {
        Ok(()) => Ok(()),
        Err(DockerError::DockerResponseServerError {
            status_code,
            message,
        }) if done(status_code, &message) => Ok(()),
        Err(e) => Err(RuntimeError::operation(operation(), e)),
    }
}

/// What the engine said, without bollard's wrapping ("Docker responded with status code
/// 404: ..."): the engine's own text reads better after "Docker could not ...".
fn engine_message(error: &DockerError) -> String {
    match error {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        DockerError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// The facts about a local image the emulator needs.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    pub id: String,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub repo_digests: Vec<String>,
}

impl ImageInfo {
    pub fn platform(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }

    pub fn is_amd64_linux(&self) -> bool {
        self.os == "linux" && self.architecture == "amd64"
    }
}

/// An image build from a context (`build_from_context`).
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// The tag to give the image.
    pub tag: String,
    /// The Dockerfile's path in the context.
    pub dockerfile: String,
    pub build_args: Vec<(String, String)>,
    /// The stage to build (`--target`), if not the last.
    pub target: Option<String>,
}

/// What to create: one instance of a revision.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub name: String,
    /// An image id (`sha256:...`), so the container runs exactly the image that was checked.
    pub image: String,
    pub env: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
    pub entrypoint: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub memory_bytes: u64,
    pub cpu_millis: u64,
    pub port: u16,
    /// Publish the port on 127.0.0.1 (an ephemeral host port), for engines whose container
    /// addresses the host cannot reach (Docker Desktop).
    pub publish_port: bool,
    /// Name servers instead of the engine's default (`--dns`).
    pub dns: Vec<String>,
    /// `NAME:ADDRESS` lines added to `/etc/hosts` (`--add-host`).
    pub extra_hosts: Vec<String>,
    /// Directories mounted as tmpfs (in memory, charged to the container's memory limit),
    /// each as large as the memory limit; `/dev/shm` gets the same size.
    pub tmpfs: Vec<String>,
}

/// A container's state as the emulator needs it.
#[derive(Clone, Debug, Default)]
pub struct ContainerInfo {
    pub running: bool,
    /// The container's main process as seen from the host (None when not running).
    pub pid: Option<u32>,
    /// Its address on Docker's bridge network.
    pub ip: Option<IpAddr>,
    /// The host port on 127.0.0.1 its port is published on, if any.
    pub published_port: Option<u16>,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub error: Option<String>,
    /// The host directory holding what the container wrote outside its tmpfs mounts (the
    /// overlay's upper directory), when the storage driver says.
    pub upper_dir: Option<String>,
}

/// What a running container uses, as the engine measures it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerStats {
    /// CPU time used since the container started, in nanoseconds.
    pub cpu_nanos: u64,
    /// Memory in use, in bytes, without the page cache the kernel can drop (the number
    /// `docker stats` shows).
    pub memory_bytes: u64,
}

/// One piece of container output.
#[derive(Clone, Debug)]
pub struct LogChunk {
    pub stderr: bool,
    pub bytes: Bytes,
    /// When the engine read it from the container (followed logs only).
    pub time: Option<std::time::SystemTime>,
}

/// A container carrying the emulator's label.
#[derive(Clone, Debug)]
pub struct ManagedContainer {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
}

#[derive(Clone)]
pub struct Runtime {
    docker: Docker,
    endpoint: String,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Runtime {
    /// Connects with Docker's usual defaults (`DOCKER_HOST`, else the local socket) and
    /// negotiates the API version, so older engines (20.10, API 1.41) and current ones work.
    pub async fn connect() -> Result<Self, RuntimeError> {
        let endpoint = std::env::var("DOCKER_HOST")
            .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string());
        let unreachable = |cause: String| RuntimeError::Unreachable {
            endpoint: endpoint.clone(),
            cause,
        };
        let docker = Docker::connect_with_defaults()
            .map_err(|e| unreachable(e.to_string()))?
            .with_timeout(Duration::from_secs(120));
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| unreachable("no answer within 10 s".to_string()))?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Runtime { docker, endpoint })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// True when the engine is Docker Desktop, whose container addresses live in a VM the host
    /// cannot route to.
    pub async fn is_docker_desktop(&self) -> Result<bool, RuntimeError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| RuntimeError::operation("read the engine's info", e))?;
        Ok(info
            .operating_system
            .is_some_and(|os| os.contains("Docker Desktop")))
    }

    /// The gateway address of Docker's default bridge network (typically 172.17.0.1): the
    /// host's own address on the bridge, which every container on it can reach and which is
    /// not a public interface. None when the network has no IPv4 gateway. Engines that leave
    /// the gateway out of the IPAM config (20.10) use the subnet's first address.
    pub async fn bridge_gateway(&self) -> Result<Option<std::net::Ipv4Addr>, RuntimeError> {
        let network = self
            .docker
            .inspect_network(
                "bridge",
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .map_err(|e| RuntimeError::operation("inspect the default bridge network", e))?;
        Ok(network
            .ipam
            .and_then(|ipam| ipam.config)
            .unwrap_or_default()
            .into_iter()
            .find_map(|config| match config.gateway {
                Some(gateway) => gateway.parse().ok(),
                None => config.subnet.as_deref().and_then(first_address),
            }))
    }

    /// The local image, or None when the engine does not have it.
    pub async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => Ok(Some(ImageInfo {
                id: inspect.id.unwrap_or_default(),
                os: inspect.os.unwrap_or_default(),
                architecture: inspect.architecture.unwrap_or_default(),
                variant: inspect.variant,
                repo_digests: inspect.repo_digests.unwrap_or_default(),
            })),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(RuntimeError::operation(
                format!("inspect image '{image}'"),
                e,
            )),
        }
    }

    /// Pulls an image for linux/amd64, reporting each progress line to `progress`.
    pub async fn pull_image(
        &self,
        image: &str,
        mut progress: impl FnMut(&str),
    ) -> Result<(), RuntimeError> {
        let (from_image, tag) = split_reference(image);
        let options = CreateImageOptions {
            from_image: Some(from_image),
            tag,
            platform: PLATFORM.to_string(),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| {
                RuntimeError::operation(format!("pull '{image}' for {PLATFORM}"), e)
            })?;
            let line = match (info.id, info.status) {
                (Some(id), Some(status)) => format!("{id}: {status}"),
                (None, Some(status)) => status,
                _ => continue,
            };
            progress(&line);
        }
        Ok(())
    }

    /// Builds an image from a tar build context holding a Dockerfile.
    pub async fn build_image(&self, tag: &str, context: Vec<u8>) -> Result<(), RuntimeError> {
        let options = BuildImageOptions {
            dockerfile: "Dockerfile".to_string(),
            t: Some(tag.to_string()),
            rm: true,
            forcerm: true,
            platform: PLATFORM.to_string(),
            ..Default::default()
        };
        let body = http_body_util::Either::Left(http_body_util::Full::new(Bytes::from(context)));
        let mut stream = self.docker.build_image(options, None, Some(body));
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| RuntimeError::operation(format!("build '{tag}'"), e))?;
            if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                return Err(RuntimeError::Failed {
                    operation: format!("build '{tag}'"),
                    message: detail,
                });
            }
        }
        Ok(())
    }

    /// Builds an image for linux/amd64 from a tar build context, handing what the engine
    /// prints (step headers, the steps' output, in chunks that may hold several lines or part
    /// of one) to `output` as it arrives. A failing step is `RuntimeError::Failed` with the
    /// engine's message. The intermediate containers are removed, on failure too; dropping
    /// the future closes the connection, which cancels the build, and the engine then kills
    /// and removes the step's container.
    pub async fn build_from_context(
        &self,
        request: &BuildRequest,
        context: Vec<u8>,
        mut output: impl FnMut(&str),
    ) -> Result<(), RuntimeError> {
        let options = BuildImageOptions {
            dockerfile: request.dockerfile.clone(),
            t: Some(request.tag.clone()),
            rm: true,
            forcerm: true,
            platform: PLATFORM.to_string(),
            target: request.target.clone().unwrap_or_default(),
            buildargs: (!request.build_args.is_empty())
                .then(|| request.build_args.iter().cloned().collect()),
            ..Default::default()
        };
        let operation = || format!("build '{}'", request.tag);
        let body = http_body_util::Either::Left(http_body_util::Full::new(Bytes::from(context)));
        let mut stream = self.docker.build_image(options, None, Some(body));
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                // A failing step: bollard hands the engine's error detail over as an error.
                Err(DockerError::DockerStreamError { error }) => {
                    return Err(RuntimeError::Failed {
                        operation: operation(),
                        message: error,
                    })
                }
                Err(e) => return Err(RuntimeError::operation(operation(), e)),
            };
            if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                return Err(RuntimeError::Failed {
                    operation: operation(),
                    message: detail,
                });
            }
            if let Some(text) = info.stream {
                output(&text);
            } else if let Some(status) = info.status {
                output(&format!("{status}\n"));
            }
        }
        Ok(())
    }

    /// The engine's CPU architecture as Docker names it (`x86_64`, `aarch64`).
    pub async fn engine_architecture(&self) -> Result<String, RuntimeError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| RuntimeError::operation("read the engine's info", e))?;
        Ok(info.architecture.unwrap_or_default())
    }

    /// Creates (but does not start) a container for linux/amd64. Nothing is published on
    /// 0.0.0.0 and nothing of the host (the Docker socket included) is mounted.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let port_key = format!("{}/tcp", spec.port);
        let port_bindings = spec.publish_port.then(|| {
            HashMap::from([(
                port_key.clone(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".to_string()),
                    host_port: Some(String::new()),
                }]),
            )])
        });
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(spec.labels.iter().cloned().collect()),
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.args.clone(),
            exposed_ports: Some(vec![port_key]),
            host_config: Some(HostConfig {
                memory: Some(spec.memory_bytes as i64),
                // No swap: over the limit the engine OOM-kills, as Cloud Run does.
                memory_swap: Some(spec.memory_bytes as i64),
                nano_cpus: Some(spec.cpu_millis as i64 * 1_000_000),
                port_bindings,
                dns: (!spec.dns.is_empty()).then(|| spec.dns.clone()),
                extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
                tmpfs: (!spec.tmpfs.is_empty())
                    .then(|| tmpfs_mounts(&spec.tmpfs, spec.memory_bytes)),
                shm_size: (!spec.tmpfs.is_empty()).then_some(spec.memory_bytes as i64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            platform: PLATFORM.to_string(),
        };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| RuntimeError::operation(format!("create container '{}'", spec.name), e))?;
        Ok(created.id)
    }

    pub async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.docker.start_container(id, None).await.map_err(|e| {
            // The engine tells an exec format error only in its message's text.
            let message = engine_message(&e);
            match message.contains("exec format error") {
                true => RuntimeError::ExecFormat { message },
                false => RuntimeError::operation(format!("start container {}", short(id)), e),
            }
        })
    }

    pub async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let inspect =
            self.docker.inspect_container(id, None).await.map_err(|e| {
                RuntimeError::operation(format!("inspect container {}", short(id)), e)
            })?;
        let state = inspect.state.unwrap_or_default();
        let network = inspect.network_settings.unwrap_or_default();
        let ip = network.networks.as_ref().and_then(|n| {
            n.values()
                .find_map(|e| e.ip_address.as_deref()?.parse().ok())
        });
        let published_port = network.ports.as_ref().and_then(|ports| {
            ports
                .values()
                .flatten()
                .flatten()
                .find_map(|b| b.host_port.as_deref()?.parse().ok())
        });
        let running = state.running.unwrap_or(false);
        Ok(ContainerInfo {
            running,
            pid: state.pid.filter(|p| running && *p > 0).map(|p| p as u32),
            ip,
            published_port,
            exit_code: state.exit_code.filter(|_| !running),
            oom_killed: state.oom_killed.unwrap_or(false),
            error: state.error.filter(|e| !e.is_empty()),
            upper_dir: inspect
                .graph_driver
                .and_then(|driver| driver.data.get("UpperDir").cloned()),
        })
    }

    /// What the container has written to its writable layer (outside its tmpfs mounts), in
    /// bytes: the engine's `SizeRw`, which it computes by walking the layer (not cheap).
    pub async fn written_bytes(&self, id: &str) -> Result<Option<u64>, RuntimeError> {
        let options = bollard::query_parameters::InspectContainerOptions { size: true };
        let inspect = self
            .docker
            .inspect_container(id, Some(options))
            .await
            .map_err(|e| {
                RuntimeError::operation(
                    format!("measure the writable layer of container {}", short(id)),
                    e,
                )
            })?;
        Ok(inspect.size_rw.map(|s| s.max(0) as u64))
    }

    /// Changes a running container's CPU limit (thousandths of a CPU) through the engine.
    pub async fn update_cpu(&self, id: &str, millicpu: u64) -> Result<(), RuntimeError> {
        let body = bollard::models::ContainerUpdateBody {
            nano_cpus: Some(millicpu as i64 * 1_000_000),
            ..Default::default()
        };
        self.docker.update_container(id, body).await.map_err(|e| {
            RuntimeError::operation(
                format!("update the CPU limit of container {}", short(id)),
                e,
            )
        })
    }

    /// Whether the engine OOM-killed a container that exited with `exit_code`. The OOMKilled
    /// flag alone is not enough: on cgroup v1 the engine sets it only when the kernel's OOM
    /// notice reaches it before the exit, which it often does not. Its `oom` event is never
    /// lost, so a SIGKILL exit (137) nobody here sent is checked against the recent events,
    /// waiting a moment for one still on its way.
    pub async fn oom_killed(&self, id: &str, exit_code: Option<i64>) -> bool {
        const EVENT_WAIT: Duration = Duration::from_millis(750);
        if self.inspect(id).await.is_ok_and(|i| i.oom_killed) {
            return true;
        }
        if exit_code != Some(137) {
            return false;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let options = EventsOptions {
            since: Some((now.as_secs() - 60).to_string()),
            until: Some(format!("{:.3}", (now + EVENT_WAIT).as_secs_f64())),
            filters: Some(HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                ("container".to_string(), vec![id.to_string()]),
                ("event".to_string(), vec!["oom".to_string()]),
            ])),
        };
        let mut events = self.docker.events(Some(options));
        let first = tokio::time::timeout(EVENT_WAIT * 2, events.next()).await;
        matches!(first, Ok(Some(Ok(_))))
    }

    /// Resolves when the container has exited, with its exit code.
    pub async fn wait_exit(&self, id: &str) -> Result<i64, RuntimeError> {
        let options = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        let mut stream = self.docker.wait_container(id, Some(options));
        match stream.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(RuntimeError::operation(
                format!("wait for container {}", short(id)),
                e,
            )),
            None => Err(RuntimeError::Failed {
                operation: format!("wait for container {}", short(id)),
                message: "the engine closed the stream".to_string(),
            }),
        }
    }

    /// The container's output from its start, following it while it runs.
    pub fn follow_logs(
        &self,
        id: &str,
    ) -> impl Stream<Item = Result<LogChunk, RuntimeError>> + Send + 'static {
        self.logs(id, true, "all".to_string())
            .map(|chunk| chunk.map(stamped))
    }

    /// The last `lines` lines of the container's output.
    pub async fn tail_logs(&self, id: &str, lines: usize) -> Result<Vec<String>, RuntimeError> {
        let mut stream = Box::pin(self.logs(id, false, lines.to_string()));
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk?.bytes));
        }
        Ok(text.lines().map(str::to_string).collect())
    }

    fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: String,
    ) -> impl Stream<Item = Result<LogChunk, RuntimeError>> + Send + 'static {
        let options = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            // Followed lines carry the engine's time, so a line can be placed before or after
            // a response (each frame is one message with its stamp in front).
            timestamps: follow,
            tail,
            ..Default::default()
        };
        let operation = format!("read the logs of container {}", short(id));
        self.docker.logs(id, Some(options)).filter_map(move |item| {
            let result = match item {
                Ok(bollard::container::LogOutput::StdOut { message })
                | Ok(bollard::container::LogOutput::Console { message }) => Some(Ok(LogChunk {
                    stderr: false,
                    bytes: message,
                    time: None,
                })),
                Ok(bollard::container::LogOutput::StdErr { message }) => Some(Ok(LogChunk {
                    stderr: true,
                    bytes: message,
                    time: None,
                })),
                Ok(bollard::container::LogOutput::StdIn { .. }) => None,
                Err(e) => Some(Err(RuntimeError::operation(operation.clone(), e))),
            };
            std::future::ready(result)
        })
    }

    /// The container's CPU time and memory now: one sample (`one-shot`), without waiting
    /// for the engine's second CPU reading.
    pub async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let operation = || format!("read the stats of container {}", short(id));
        let mut stream = self.docker.stats(id, Some(options));
        let sample = match stream.next().await {
            Some(Ok(sample)) => sample,
            Some(Err(e)) => return Err(RuntimeError::operation(operation(), e)),
            None => {
                return Err(RuntimeError::Failed {
                    operation: operation(),
                    message: "the engine closed the stream".to_string(),
                })
            }
        };
        let cpu_nanos = sample
            .cpu_stats
            .and_then(|cpu| cpu.cpu_usage?.total_usage)
            .unwrap_or(0);
        let memory_bytes = sample
            .memory_stats
            .map(|memory| {
                let usage = memory.usage.unwrap_or(0);
                // As the docker CLI counts it: cgroup v1 reports the inactive page cache as
                // `total_inactive_file`, v2 as `inactive_file`.
                let cache = memory
                    .stats
                    .as_ref()
                    .and_then(|s| s.get("total_inactive_file").or(s.get("inactive_file")))
                    .copied()
                    .unwrap_or(0);
                usage.saturating_sub(cache)
            })
            .unwrap_or(0);
        Ok(ContainerStats {
            cpu_nanos,
            memory_bytes,
        })
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILL (Docker's stop does exactly this).
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let options = StopContainerOptions {
            t: Some(grace.as_secs() as i32),
            signal: None,
        };
        let result = self.docker.stop_container(id, Some(options)).await;
        // 304: already stopped; 404: already gone.
        let stopped = |code, _: &str| matches!(code, 304 | 404);
        done_unless_failed(result, stopped, || format!("stop container {}", short(id)))
    }

    pub async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        let options = KillContainerOptions {
            signal: "SIGKILL".to_string(),
        };
        let result = self.docker.kill_container(id, Some(options)).await;
        // 404: gone; 409: not running.
        let dead = |code, _: &str| matches!(code, 404 | 409);
        done_unless_failed(result, dead, || format!("kill container {}", short(id)))
    }

    /// Removes the container whatever its state; a container already gone is not an error.
    pub async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        let result = self.docker.remove_container(id, Some(options)).await;
        // 404: already gone; 409: removal already in progress.
        let gone = |code, message: &str| {
            code == 404 || (code == 409 && message.contains("already in progress"))
        };
        done_unless_failed(result, gone, || format!("remove container {}", short(id)))
    }

    /// Every container (running or not) that carries the emulator's label.
    pub async fn list_managed(&self) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_MANAGED}=true")])]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| RuntimeError::operation("list containers", e))?;
        Ok(list
            .into_iter()
            .map(|c| ManagedContainer {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                labels: c.labels.unwrap_or_default(),
            })
            .collect())
    }
}

/// tmpfs mounts as the engine takes them: each as large as the memory limit, so only the
/// limit bounds them (their pages are charged to the container's memory cgroup).
fn tmpfs_mounts(paths: &[String], memory_bytes: u64) -> HashMap<String, String> {
    paths
        .iter()
        .map(|path| (path.clone(), format!("rw,exec,size={memory_bytes}")))
        .collect()
}

/// A followed log frame with its stamp (`2024-05-01T10:00:00.123456789Z `) taken off the
/// front and parsed; a frame without one is left whole.
fn stamped(mut chunk: LogChunk) -> LogChunk {
    let Some(space) = chunk.bytes.iter().take(40).position(|&b| b == b' ') else {
        return chunk;
    };
    let Some(time) = std::str::from_utf8(&chunk.bytes[..space])
        .ok()
        .and_then(parse_rfc3339)
    else {
        return chunk;
    };
    chunk.bytes = chunk.bytes.slice(space + 1..);
    chunk.time = Some(time);
    chunk
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (the engine's log stamps, always UTC).
fn parse_rfc3339(text: &str) -> Option<std::time::SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (date.next()??, date.next()??, date.next()??);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock = clock.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (clock.next()??, clock.next()??, clock.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) || fraction.len() > 9 {
        return None;
    }
    let nanos: u32 = format!("{fraction:0<9}").parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Splits `repo:tag` / `repo@digest` for the pull API, which pulls *every* tag when none is
/// given; an untagged reference means `latest`, as `docker pull` does.
fn split_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => {
            let at = last_slash + colon;
            (image[..at].to_string(), Some(image[at + 1..].to_string()))
        }
        None => (image.to_string(), Some("latest".to_string())),
    }
}

/// The 12-character form of a container id, as `docker ps` shows it.
/// The first host address of an IPv4 subnet (`172.17.0.0/16` → 172.17.0.1), Docker's choice
/// of gateway.
fn first_address(subnet: &str) -> Option<std::net::Ipv4Addr> {
    let (network, _) = subnet.split_once('/')?;
    let network: std::net::Ipv4Addr = network.parse().ok()?;
    Some(std::net::Ipv4Addr::from(u32::from(network).checked_add(1)?))
}

pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_without_a_gateway_uses_its_subnets_first_address() {
        assert_eq!(first_address("172.17.0.0/16"), Some([172, 17, 0, 1].into()));
        assert_eq!(first_address("10.1.2.0/24"), Some([10, 1, 2, 1].into()));
        assert_eq!(first_address("fd00::/64"), None);
        assert_eq!(first_address("garbage"), None);
    }

    #[test]
    fn a_container_already_in_the_wanted_state_is_not_an_error() {
        let refused = |status_code: u16, message: &str| {
            Err(DockerError::DockerResponseServerError {
                status_code,
                message: message.to_string(),
            })
        };
        let gone = |code, message: &str| {
            code == 404 || (code == 409 && message.contains("already in progress"))
        };
        let remove = || "remove container abc".to_string();
        assert!(done_unless_failed(Ok(()), gone, remove).is_ok());
        assert!(done_unless_failed(refused(404, "no such container"), gone, remove).is_ok());
        assert!(
            done_unless_failed(refused(409, "removal already in progress"), gone, remove).is_ok()
        );
        let error =
            done_unless_failed(refused(409, "the container is paused"), gone, remove).unwrap_err();
        assert!(
            error.to_string().contains("remove container abc"),
            "{error}"
        );
        assert!(done_unless_failed(refused(500, "busy"), gone, remove).is_err());
    }

    #[test]
    fn a_docker_error_names_the_operation_and_keeps_bollards_error_as_its_source() {
        let error = RuntimeError::operation(
            "inspect image 'app'",
            DockerError::DockerResponseServerError {
                status_code: 500,
                message: "the engine is busy".to_string(),
            },
        );
        assert_eq!(
            error.to_string(),
            "Docker could not inspect image 'app': the engine is busy"
        );
        let source = std::error::Error::source(&error).expect("bollard's error is the source");
        assert!(
            matches!(
                source.downcast_ref::<DockerError>(),
                Some(DockerError::DockerResponseServerError {
                    status_code: 500,
                    ..
                })
            ),
            "{source:?}"
        );
    }

    #[test]
    fn followed_log_frames_lose_their_stamp_and_keep_its_time() {
        let chunk = |text: &'static str| LogChunk {
            stderr: false,
            bytes: Bytes::from_static(text.as_bytes()),
            time: None,
        };
        let stamped_line = stamped(chunk("2024-05-01T10:00:00.250000000Z hello world\n"));
        assert_eq!(&stamped_line.bytes[..], b"hello world\n");
        let expected = std::time::UNIX_EPOCH + Duration::from_millis(1_714_557_600_250);
        assert_eq!(stamped_line.time, Some(expected));
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:01Z"),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(1))
        );
        // No stamp: the frame is left whole.
        let plain = stamped(chunk("no stamp here\n"));
        assert_eq!(&plain.bytes[..], b"no stamp here\n");
        assert_eq!(plain.time, None);
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn tmpfs_mounts_are_bounded_by_the_memory_limit_only() {
        let mounts = tmpfs_mounts(&["/tmp".to_string()], 512 << 20);
        assert_eq!(mounts["/tmp"], "rw,exec,size=536870912");
    }

    #[test]
    fn references_are_split_for_pulls() {
        assert_eq!(
            split_reference("hello"),
            ("hello".into(), Some("latest".into()))
        );
        assert_eq!(
            split_reference("localhost:5000/app:v1"),
            ("localhost:5000/app".into(), Some("v1".into()))
        );
        assert_eq!(
            split_reference("localhost:5000/app"),
            ("localhost:5000/app".into(), Some("latest".into()))
        );
        assert_eq!(
            split_reference("app@sha256:ab"),
            ("app@sha256:ab".into(), None)
        );
    }
}
