//! The files an instance wrote outside its tmpfs mounts, which on Cloud Run live in memory
//! and count toward its limit: measured from the container's writable layer on the host (the
//! overlay's upper directory), by directory, so a warning can name the one that grew.

use std::path::Path;

use crate::cloudrun;

/// What the writable layer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Bytes in regular files.
    pub total: u64,
    /// The directory holding the most (up to two levels deep, as `/var/log`), and its bytes.
    pub largest: Option<(String, u64)>,
}

/// Walks an upper directory: None when it cannot be read from here.
pub fn written(upper_dir: &str) -> Option<Written> {
    let root = Path::new(upper_dir);
    let mut by_dir: Vec<(String, u64)> = Vec::new();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    std::fs::read_dir(root).ok()?;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // Never followed: a link the container made points into the host's filesystem
            // when read from here.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let Ok(meta) = entry.metadata() else { continue };
                total += meta.len();
                let key = group(path.strip_prefix(root).ok()?);
                match by_dir.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, bytes)) => *bytes += meta.len(),
                    None => by_dir.push((key, meta.len())),
                }
            }
        }
    }
    let largest = by_dir.into_iter().max_by_key(|(_, bytes)| *bytes);
    Some(Written { total, largest })
}

/// The directory a file is counted under: its first two levels (`/var/log/app.log` →
/// `/var/log`, `/data/x/y` → `/data/x`), or `/` for a file at the top.
fn group(relative: &Path) -> String {
    let parts: Vec<_> = relative
        .parent()
        .map(|p| p.iter().map(|c| c.to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    format!(
        "/{}",
        parts.into_iter().take(2).collect::<Vec<_>>().join("/")
    )
}

/// The warning for an instance whose memory plus written files pass its limit: Cloud Run's
/// text with the total, what it is made of and the directory that grew, and what to do.
pub fn over_limit(
    revision: &str,
    instance: &str,
    limit: u64,
    memory: u64,
    written: &Written,
) -> String {
    let mib = |bytes: u64| bytes >> 20;
    let total = memory + written.total;
    let grew = match &written.largest {
        Some((dir, bytes)) => format!(", {} MiB of them under {dir}", mib(*bytes)),
        None => String::new(),
    };
    format!(
        "{} (revision {revision}, instance {instance}: {} MiB of memory and {} MiB of files written to its filesystem{grew}). On Cloud Run the filesystem is in memory, so this instance would be killed; here it goes on running. Delete files once done with them, write large data to Cloud Storage or a mounted volume, or raise --memory.",
        cloudrun::memory_limit_exceeded(mib(limit), mib(total)),
        mib(memory),
        mib(written.total),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_counted_by_the_directory_that_holds_them() {
        let dir = std::env::temp_dir().join(format!(
            "emulate-files-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let write = |path: &str, len: usize| {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, vec![0u8; len]).unwrap();
        };
        write("var/log/app/a.log", 1000);
        write("var/log/b.log", 500);
        write("data/x", 300);
        write("top", 7);
        // A link into the host's filesystem is not followed.
        std::os::unix::fs::symlink("/", dir.join("data/root")).unwrap();
        let found = written(dir.to_str().unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.total, 1807);
        assert_eq!(found.largest, Some(("/var/log".to_string(), 1500)));
        assert_eq!(written("/nonexistent/emulate/upper"), None);
    }

    #[test]
    fn the_warning_gives_cloud_runs_text_and_the_directory_that_grew() {
        let written = Written {
            total: 300 << 20,
            largest: Some(("/data".to_string(), 280 << 20)),
        };
        let text = over_limit("app-00001-abc", "0123abcd", 512 << 20, 250 << 20, &written);
        assert!(
            text.starts_with("Memory limit of 512 MiB exceeded with 550 MiB used."),
            "{text}"
        );
        assert!(text.contains("280 MiB of them under /data"), "{text}");
    }
}
