//! The control plane: services, immutable revisions and traffic, as Cloud Run's (Knative's)
//! documents describe them. `platform` applies documents, keeps the records and publishes
//! the routing table the data plane reads.

pub mod knative;
pub mod platform;
pub mod template;
pub mod traffic;
