//! `emulate`: a local Cloud Run emulator. The binary is a thin shell over this library.
#![forbid(unsafe_code)]

pub mod cli;
pub mod cloudrun;
pub mod config;
pub mod instance;
pub mod logs;
pub mod probe;
pub mod proxy;
pub mod runtime;
pub mod sample;
pub mod shutdown;
