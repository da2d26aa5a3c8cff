//! Tests that must not run beside other emulators: cargo runs test binaries one after
//! another, so nothing of `tests/it` runs while these do.
//!
//! Every `emulate run` reaps the containers of dead emulators on the whole host, so the
//! reaper's own test could see another test's emulator reap its orphan first.

// Not the emulator but tests of it: wall-clock time and printing are what they measure and
// report, so clippy.toml's rules for the emulator's code do not apply.
#![allow(clippy::disallowed_methods, clippy::disallowed_macros)]

#[path = "../common/emulator.rs"]
#[allow(dead_code)]
mod emulator;
#[path = "../common/images.rs"]
mod images;
#[path = "../it/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn containers_of_a_killed_emulator_are_reaped_by_the_next_one() {
    let mut killed = Emulator::start(&service_name("orphan"), &[testapp_image()]).await;
    // Killed once its spare container (made ahead for the next cold start) exists: a create
    // still in flight in the engine when the emulator dies would only appear after the next
    // emulator's reaper has looked.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while containers_of(&killed.service).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no spare container was made"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    killed.signal("KILL");
    killed.wait(Duration::from_secs(10)).await;
    assert_eq!(
        running_containers_of(&killed.service),
        1,
        "the killed emulator's container should still be there"
    );

    let next = Emulator::start(&service_name("reaper"), &[testapp_image()]).await;
    assert!(
        containers_of(&killed.service).is_empty(),
        "the orphan was not reaped"
    );
    assert!(
        next.stderr()
            .contains("left behind by an emulator that was killed"),
        "{}",
        next.stderr()
    );
    // The reaper's own container is untouched.
    assert_eq!(running_containers_of(&next.service), 1);
}
