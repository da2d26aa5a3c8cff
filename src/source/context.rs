//! The build context: the source directory's files that the rules (`rules.rs`) keep, as the
//! tar archive the engine's build API takes, and a content hash of what the build depends on
//! (paths, file modes and contents, the Dockerfile's path, build args and target stage; not
//! modification times, so touching a file does not rebuild).

use std::path::Path;

use sha2::{Digest, Sha256};

use super::rules::Rules;
use super::{SourceConfig, SourceError};

/// Where a Dockerfile from outside the directory is put in the context (the docker CLI does
/// the same with a name of its own).
pub const OUTSIDE_DOCKERFILE: &str = ".dockerfile.emulate";

/// A build context, ready to send.
#[derive(Clone, Debug)]
pub struct Context {
    /// The tar archive.
    pub archive: Vec<u8>,
    /// The hex SHA-256 of what the image depends on.
    pub hash: String,
    /// The files in it (relative paths, sorted).
    pub files: Vec<String>,
    /// Their total size.
    pub bytes: u64,
    /// The Dockerfile's path in the context.
    pub dockerfile: String,
}

/// Where the Dockerfile is: its path in the context, and its own path when it lies outside
/// the directory (so it is added under [`OUTSIDE_DOCKERFILE`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerfileLocation {
    pub in_context: String,
    pub outside: Option<std::path::PathBuf>,
}

/// Finds the Dockerfile: `--dockerfile` (relative to the working directory, as `docker build
/// -f` takes it), else `DIR/Dockerfile`. None when there is none (a buildpacks build).
pub fn locate_dockerfile(config: &SourceConfig) -> Result<Option<DockerfileLocation>, SourceError> {
    let Some(given) = &config.dockerfile else {
        return Ok(config
            .dir
            .join("Dockerfile")
            .is_file()
            .then(|| DockerfileLocation {
                in_context: "Dockerfile".to_string(),
                outside: None,
            }));
    };
    if !given.is_file() {
        return Err(SourceError::NoDockerfile {
            path: given.clone(),
        });
    }
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (file, dir) = (absolute(given), absolute(&config.dir));
    Ok(Some(match file.strip_prefix(&dir) {
        Ok(relative) => DockerfileLocation {
            in_context: slash_path(relative),
            outside: None,
        },
        Err(_) => DockerfileLocation {
            in_context: OUTSIDE_DOCKERFILE.to_string(),
            outside: Some(file),
        },
    }))
}

/// Walks the directory, keeping what the rules keep, and makes the archive and the hash.
/// Files are read once, for both.
pub fn make(
    config: &SourceConfig,
    rules: &Rules,
    dockerfile: &DockerfileLocation,
) -> Result<Context, SourceError> {
    let mut walk = Walk {
        rules,
        archive: tar::Builder::new(Vec::new()),
        hasher: Sha256::new(),
        files: Vec::new(),
        bytes: 0,
    };
    walk.dir(&config.dir, "")?;
    if let Some(outside) = &dockerfile.outside {
        let data = std::fs::read(outside).map_err(|source| SourceError::Read {
            path: outside.clone(),
            source,
        })?;
        walk.file(OUTSIDE_DOCKERFILE, &data, 0o644, 0)?;
    }
    // What else decides the image: the Dockerfile named, the build args and the stage.
    walk.hasher.update(b"\0dockerfile\0");
    walk.hasher.update(dockerfile.in_context.as_bytes());
    let mut args = config.build_args.clone();
    args.sort();
    for (key, value) in &args {
        walk.hasher
            .update(format!("\0arg\0{key}\0{value}").as_bytes());
    }
    if let Some(target) = &config.target {
        walk.hasher.update(format!("\0target\0{target}").as_bytes());
    }
    let archive = walk
        .archive
        .into_inner()
        .map_err(|source| SourceError::Read {
            path: config.dir.clone(),
            source,
        })?;
    let hash = walk
        .hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut files = walk.files;
    files.sort();
    Ok(Context {
        archive,
        hash,
        files,
        bytes: walk.bytes,
        dockerfile: dockerfile.in_context.clone(),
    })
}

struct Walk<'a> {
    rules: &'a Rules,
    archive: tar::Builder<Vec<u8>>,
    hasher: Sha256,
    files: Vec<String>,
    bytes: u64,
}

impl Walk<'_> {
    /// One directory, its entries in name order (so the archive and the hash are stable).
    /// A directory Docker excludes is walked only when an exception may re-include a file in
    /// it.
    fn dir(&mut self, path: &Path, relative: &str) -> Result<(), SourceError> {
        let read_error = |source| SourceError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(read_error)?
            .collect::<Result<_, _>>()
            .map_err(read_error)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = match relative {
                "" => name,
                parent => format!("{parent}/{name}"),
            };
            let full = entry.path();
            let meta = std::fs::symlink_metadata(&full).map_err(|source| SourceError::Read {
                path: full.clone(),
                source,
            })?;
            let kind = meta.file_type();
            if self.rules.not_uploaded(&child, kind.is_dir()) {
                continue;
            }
            let not_sent = self.rules.not_sent(&child);
            if kind.is_dir() {
                if !not_sent {
                    self.directory(&child, &meta)?;
                }
                if !not_sent || self.rules.walk_excluded_dirs() {
                    self.dir(&full, &child)?;
                }
            } else if not_sent {
                continue;
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&full).map_err(|source| SourceError::Read {
                    path: full.clone(),
                    source,
                })?;
                self.symlink(&child, &target)?;
            } else if kind.is_file() {
                let data = std::fs::read(&full).map_err(|source| SourceError::Read {
                    path: full.clone(),
                    source,
                })?;
                self.file(&child, &data, mode(&meta), mtime(&meta))?;
            }
            // Sockets, FIFOs and devices are not sent, as the docker CLI does not send them.
        }
        Ok(())
    }

    fn record(&mut self, kind: &str, path: &str, mode: u32) {
        self.hasher
            .update(format!("\0{kind}\0{path}\0{mode:o}\0").as_bytes());
    }

    fn directory(&mut self, path: &str, meta: &std::fs::Metadata) -> Result<(), SourceError> {
        self.record("dir", path, mode(meta));
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(mode(meta));
        header.set_mtime(mtime(meta));
        header.set_size(0);
        self.append(header, &format!("{path}/"), &[][..])
    }

    fn symlink(&mut self, path: &str, target: &Path) -> Result<(), SourceError> {
        let target_text = target.to_string_lossy();
        self.record("link", path, 0o777);
        self.hasher.update(target_text.as_bytes());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        self.archive
            .append_link(&mut header, path, target)
            .map_err(|source| SourceError::Read {
                path: path.into(),
                source,
            })?;
        self.files.push(path.to_string());
        Ok(())
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32, mtime: u64) -> Result<(), SourceError> {
        self.record("file", path, mode);
        self.hasher.update((data.len() as u64).to_le_bytes());
        self.hasher.update(data);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(mode);
        header.set_mtime(mtime);
        header.set_size(data.len() as u64);
        self.append(header, path, data)?;
        self.files.push(path.to_string());
        self.bytes += data.len() as u64;
        Ok(())
    }

    fn append(
        &mut self,
        mut header: tar::Header,
        path: &str,
        data: &[u8],
    ) -> Result<(), SourceError> {
        self.archive
            .append_data(&mut header, path, data)
            .map_err(|source| SourceError::Read {
                path: path.into(),
                source,
            })
    }
}

/// The permission bits, as the archive keeps them.
fn mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

fn mtime(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// A relative path with `/` separators.
pub fn slash_path(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}
