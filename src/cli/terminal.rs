//! The CLI's own way to the terminal, behind its `println!`, `print!` and `eprintln!`
//! (`cli.rs`): a closed stdout or stderr is ignored. Everything else the emulator says goes
//! through the event stream to the terminal printer (`logs.rs`).
#![allow(clippy::disallowed_methods)] // The one place the CLI reaches stdout and stderr.

use std::fmt;
use std::io::Write;

pub fn stdout(text: fmt::Arguments<'_>) {
    let _ = std::io::stdout().write_fmt(text);
}

pub fn stderr(text: fmt::Arguments<'_>) {
    let _ = std::io::stderr().write_fmt(text);
}

/// Where tracing's diagnostics (`EMULATE_LOG`) are written.
pub fn tracing_writer() -> std::io::Stderr {
    std::io::stderr()
}
