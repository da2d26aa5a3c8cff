//! `emulate`: a local Cloud Run emulator. The binary is a thin shell over this library.
#![forbid(unsafe_code)]

pub mod admin;
pub mod autoscaler;
pub mod cli;
pub mod cloudrun;
pub mod config;
pub mod instance;
pub mod knative;
pub mod logs;
pub mod platform;
pub mod pool;
pub mod probe;
pub mod proxy;
pub mod runtime;
pub mod sample;
pub mod shutdown;
pub mod smoke;
pub mod template;
pub mod traffic;
