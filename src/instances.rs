//! Instances: one revision's containers and the leases requests hold on them (`pool`), one
//! instance's start, probe and stop (`instance`, `probe`), and the scaling decision
//! (`autoscaler`, pure).

pub mod autoscaler;
pub mod instance;
pub mod pool;
pub mod probe;
