//! `emulate`: a local Cloud Run emulator. The binary is a thin shell over this library.
#![forbid(unsafe_code)]

// `println!`, `print!` and `eprintln!` for the whole crate, shadowing std's: a closed stdout or stderr
// (`emulate run IMAGE 2>&1 | head`) is ignored instead of panicking, since a panic would skip
// the shutdown that removes the containers.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
macro_rules! print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod admin;
pub mod app;
pub mod cli;
pub mod cloudrun;
pub mod config;
pub mod control;
pub mod events;
pub mod instances;
pub mod logs;
pub mod runtime;
pub mod sample;
pub mod serve;
pub mod shutdown;
pub mod smoke;

#[cfg(test)]
mod fuzz_tests;
