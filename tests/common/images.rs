//! Building the test app image (docker/testapp) once per run: a static binary in a
//! `FROM scratch` image. Shared by the integration tests and the benchmark (`#[path]`), so
//! both run exactly the same app.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Fails the test run, with how to fix it, when Docker is not reachable: a test of Docker
/// behaviour must never pass silently without Docker.
pub fn require_docker() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECKED.get_or_init(|| {
        let output = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output();
        match output {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
            Err(e) => Err(format!("cannot run the docker CLI: {e}")),
        }
    });
    if let Err(e) = result {
        panic!("These tests need a running Docker engine and the docker CLI, and Docker is not reachable: {e}\nStart it (`sudo systemctl start docker`, or `sudo dockerd &`), or run `bash .ci/run`, which starts it.");
    }
}

pub fn run_checked(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A scratch build context directory holding the given files.
pub fn context(name: &str, files: &[(&str, &[u8], u32)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new(ROOT)
        .join("target")
        .join("it-contexts")
        // Per process: a test run and a benchmark may build at the same time.
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, data, mode) in files {
        let path = dir.join(file);
        std::fs::write(&path, data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    dir
}

/// A hash of some byte strings: stable for the same contents within one build of the tests.
fn content_hash(parts: &[&[u8]]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

/// The test app's static binary (built with its image), for build contexts of tests that
/// build images from source (the serial tests build none).
#[allow(dead_code)]
pub fn testapp_binary() -> PathBuf {
    testapp_image();
    Path::new(ROOT)
        .join("target")
        .join("testapp")
        .join("x86_64-unknown-linux-gnu/release/testapp")
}

/// The test app image (docker/testapp), built once per test run: a static binary in a
/// `FROM scratch` image.
pub fn testapp_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        require_docker();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let target_dir = Path::new(ROOT).join("target").join("testapp");
        run_checked(
            Command::new(cargo)
                .current_dir(ROOT)
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .env("CARGO_TARGET_DIR", &target_dir)
                .args([
                    "build",
                    "--release",
                    "-p",
                    "emulate-testapp",
                    "--target",
                    "x86_64-unknown-linux-gnu",
                ]),
        );
        let binary =
            std::fs::read(target_dir.join("x86_64-unknown-linux-gnu/release/testapp")).unwrap();
        let dockerfile = std::fs::read(Path::new(ROOT).join("docker/testapp/Dockerfile")).unwrap();
        let dir = context(
            "testapp",
            &[
                ("Dockerfile", &dockerfile, 0o644),
                ("testapp", &binary, 0o755),
            ],
        );
        // Tagged by content, so that another checkout's test run or the benchmark, building a
        // different test app at the same time, never swaps the image under this run.
        let image = format!(
            "emulate-testapp:{:016x}",
            content_hash(&[&binary, &dockerfile])
        );
        run_checked(
            Command::new("docker")
                .args(["build", "-q", "-t", &image])
                .arg(&dir),
        );
        image
    })
}
