//! `emulate`: a local Cloud Run emulator. The binary is a thin shell over this library.
#![forbid(unsafe_code)]

// Nothing here writes to the terminal but the terminal printer (`logs.rs`) and the CLI
// (`cli.rs` shadows `println!`, `print!` and `eprintln!` for `cli/` alone); `clippy.toml`
// forbids std's printing macros and `std::io::{stdout, stderr}` everywhere else.

pub mod admin;
pub mod app;
pub mod cli;
pub mod cloudrun;
pub mod config;
pub mod control;
pub mod dns;
pub mod events;
pub mod instances;
pub mod logs;
pub mod metadata;
pub mod metrics;
pub mod runtime;
pub mod sample;
pub mod serve;
pub mod shutdown;
pub mod smoke;
pub mod source;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod layers_tests;
