//! Integration tests: the real `emulate` binary, a real Docker engine, real HTTP clients.
//! Images are built from the sources in `docker/` (nothing is pulled).

// Not the emulator but tests of it: wall-clock time and printing are what they measure and
// report, so clippy.toml's rules for the emulator's code do not apply.
#![allow(clippy::disallowed_methods, clippy::disallowed_macros)]

#[path = "../common/emulator.rs"]
mod emulator;
#[path = "../common/images.rs"]
mod images;
mod support;

mod admin_security;
mod calls;
mod client_faults;
mod control;
mod dashboard;
mod failures;
mod faults;
mod identity;
mod lifecycle;
mod logging;
mod metadata;
mod metrics;
mod promises;
mod proxying;
mod revisions;
mod running;
mod scaling;
mod smoke;
mod source;
mod throttling;
mod validation;
