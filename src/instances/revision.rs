//! One revision's configuration, typed once: what its containers run (`ContainerConfig`),
//! how it scales (`ScalingConfig`) and how long a request may take. `control/template.rs`
//! produces it from a Knative template; instances, the pool and the autoscaler read it.

use std::time::Duration;

use crate::instances::probe::HealthProbe;

/// A revision's settings, validated. Frozen when the revision is made.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionConfig {
    pub container: ContainerConfig,
    pub scaling: ScalingConfig,
    /// How long a request may take (`timeoutSeconds`); it also bounds how long a drain waits.
    pub request_timeout: Duration,
}

/// What one instance's container runs, and how it is probed.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerConfig {
    /// The image as the user named it (the revision runs the id it resolved to).
    pub image: String,
    pub port: u16,
    /// The port speaks HTTP/2 cleartext (h2c) end to end.
    pub http2: bool,
    pub env: Vec<(String, String)>,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub memory_bytes: u64,
    pub cpu_millis: u64,
    /// Request-based billing (`run.googleapis.com/cpu-throttling`, default true): CPU only
    /// while a request is in flight.
    pub cpu_throttling: bool,
    /// `run.googleapis.com/startup-cpu-boost`: more CPU during startup and 10 s after.
    pub startup_cpu_boost: bool,
    /// How long a start may take until the startup probe passes.
    pub startup_budget: Duration,
    /// A user's HTTP or gRPC startup probe, run once the port accepts connections; None is a
    /// TCP connect (the default, or tcpSocket).
    pub startup_probe: Option<HealthProbe>,
    pub liveness: Option<HealthProbe>,
}

/// How a revision scales.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingConfig {
    /// `containerConcurrency` (1..=1000): requests one instance serves at once.
    pub concurrency: u32,
    pub min_instances: u32,
    pub max_instances: u32,
    /// An instance with no request for this long is removed (Cloud Run: up to 15 minutes).
    pub idle_timeout: Duration,
}
