//! Instances: one revision's containers and the leases requests hold on them (`pool`), one
//! instance's start, probe and stop (`instance`, `probe`), the scaling decision
//! (`autoscaler`, pure), and the configuration they share (`revision`).

pub mod autoscaler;
pub mod cgroup;
pub mod files;
pub mod instance;
pub mod pool;
pub mod probe;
pub mod revision;
pub mod throttle;
