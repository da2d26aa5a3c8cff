//! A source directory without a Dockerfile: `gcloud run deploy --source` would build it with
//! Google Cloud's buildpacks; locally the buildpacks CLI, `pack`, does the same when it is
//! installed (its builder image must be available to the engine, pulled or local).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::{BuildError, SourceConfig, LAST_LINES};
use crate::events::{Event, Events};

/// The builder gcloud's buildpacks builds use.
pub const BUILDER: &str = "gcr.io/buildpacks/builder:latest";

/// `pack` on PATH, if it is there.
pub fn find() -> Option<PathBuf> {
    find_in(&std::env::var_os("PATH")?)
}

fn find_in(path: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join("pack"))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `pack build IMAGE --path DIR --builder gcr.io/buildpacks/builder:latest --platform
/// linux/amd64`, its output published line by line. Dropping the future kills pack.
pub async fn build(
    pack: &Path,
    config: &SourceConfig,
    image: &str,
    events: &Events,
    service: &str,
) -> Result<(), BuildError> {
    let failed = |message: String, output: &VecDeque<String>| BuildError::Pack {
        message,
        output: output.iter().cloned().collect(),
    };
    let mut last = VecDeque::new();
    let mut child = tokio::process::Command::new(pack)
        .arg("build")
        .arg(image)
        .arg("--path")
        .arg(&config.dir)
        .args(["--builder", BUILDER, "--platform", crate::runtime::PLATFORM])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("cannot run {}: {e}", pack.display()), &last))?;
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let line = tokio::select! {
            line = stdout.next_line(), if out_open => line.ok().flatten().or_else(|| { out_open = false; None }),
            line = stderr.next_line(), if err_open => line.ok().flatten().or_else(|| { err_open = false; None }),
        };
        let Some(line) = line else { continue };
        if last.len() == LAST_LINES {
            last.pop_front();
        }
        last.push_back(line.clone());
        events.publish(Event::BuildOutput {
            service: service.to_string(),
            line,
        });
    }
    let status = child
        .wait()
        .await
        .map_err(|e| failed(format!("waiting for pack: {e}"), &last))?;
    match status.success() {
        true => Ok(()),
        false => Err(failed(format!("pack exited with {status}"), &last)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_is_found_only_as_an_executable_on_path() {
        let dir = std::env::temp_dir().join(format!("emulate-pack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = std::env::join_paths([dir.clone()]).unwrap();
        assert_eq!(find_in(&path), None);
        let pack = dir.join("pack");
        std::fs::write(&pack, "#!/bin/sh\n").unwrap();
        assert_eq!(find_in(&path), None, "not executable");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pack, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_in(&path), Some(pack));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
