//! The data plane: what a request to a service meets. The proxy accepts connections, checks
//! and rewrites each request, and forwards it to the instance the router leases for it.

pub mod invoker;
pub mod proxy;
pub mod router;
