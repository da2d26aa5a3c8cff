//! Integration tests: the real `emulate` binary, a real Docker engine, real HTTP clients.
//! Images are built from the sources in `docker/` (nothing is pulled).

#[path = "../common/emulator.rs"]
mod emulator;
#[path = "../common/images.rs"]
mod images;
mod support;

mod admin_security;
mod client_faults;
mod control;
mod failures;
mod faults;
mod lifecycle;
mod promises;
mod proxying;
mod revisions;
mod running;
mod scaling;
mod smoke;
mod validation;
