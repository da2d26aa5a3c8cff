//! Compiles the hello sample (docker/hello/main.rs, no dependencies) into a static
//! linux/amd64 binary that `emulate` embeds, so `emulate run` with no image works with nothing
//! but Rust and Docker. If it cannot be built here (another OS or target), the binary is
//! embedded empty and `emulate run` asks for an image instead.

// A build script talks to cargo on stdout: the crate's rule against printing is not for it.
#![allow(clippy::disallowed_macros)]

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=docker/hello/main.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("hello");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let status = Command::new(rustc)
        .args([
            "--edition=2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "strip=symbols",
            "--target",
            "x86_64-unknown-linux-gnu",
            "-o",
        ])
        .arg(&out)
        .arg("docker/hello/main.rs")
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        println!("cargo::warning=the hello sample could not be compiled for x86_64-unknown-linux-gnu; `emulate run` will need an IMAGE");
        std::fs::write(&out, b"").expect("OUT_DIR is writable");
    }
}
