//! Instances: one revision's containers and the leases requests hold on them (`pool`), one
//! instance's start, probe and stop (`instance`, `probe`), the scaling decision
//! (`autoscaler`, pure), the configuration they share (`revision`), and Cloud Run's CPU
//! allocation and in-memory files: `throttle` (CPU only during requests, work after a
//! response), `cgroup` (the container's cgroup files) and `files` (what it wrote).

pub mod autoscaler;
pub mod cgroup;
pub mod files;
pub mod instance;
pub mod pool;
pub mod probe;
pub mod revision;
pub mod throttle;
