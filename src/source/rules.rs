//! Which files of a source directory reach the build, in the order gcloud and Docker decide
//! it. First what `gcloud run deploy --source` uploads: `.gcloudignore` at the top of the
//! directory (gitignore syntax, with `#!include:FILE` lines), else, when the directory has
//! `.git` or `.gitignore`, gcloud's generated default (`.gcloudignore`, `.git`, `.gitignore`
//! and the top-level `.gitignore`'s patterns), else everything. Then what Docker sends of
//! that: `.dockerignore`'s own rules (`dockerignore.rs`), the Dockerfile and `.dockerignore`
//! always included, as the docker CLI keeps them.

use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::dockerignore::DockerIgnore;
use super::SourceError;

pub const GCLOUDIGNORE: &str = ".gcloudignore";
pub const GITIGNORE: &str = ".gitignore";
pub const DOCKERIGNORE: &str = ".dockerignore";

/// gcloud's generated `.gcloudignore`, used when the directory has Git files and no
/// `.gcloudignore` (`gcloud topic gcloudignore`).
const GCLOUD_DEFAULT: &[&str] = &[".gcloudignore", ".git", ".gitignore"];

/// Where the upload rules came from, for the build's progress line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadRules {
    /// The directory's `.gcloudignore`.
    GcloudIgnore,
    /// gcloud's default for a Git directory (with the top `.gitignore`'s patterns if any).
    GitDefault,
    /// No ignore file: gcloud uploads everything.
    Everything,
}

/// The rules of one source directory, read once per build.
#[derive(Clone, Debug)]
pub struct Rules {
    upload: Gitignore,
    pub upload_rules: UploadRules,
    docker: DockerIgnore,
    /// The Dockerfile's path in the context (never excluded by `.dockerignore`).
    dockerfile: Option<String>,
}

impl Rules {
    /// Reads the ignore files of `dir`; `dockerfile` is the Dockerfile's path in the context,
    /// if it is there. A malformed ignore file is an error naming it.
    pub fn load(dir: &Path, dockerfile: Option<&str>) -> Result<Rules, SourceError> {
        let bad = |file: &str, message: String| SourceError::IgnoreFile {
            file: dir.join(file),
            message,
        };
        let mut builder = GitignoreBuilder::new(dir);
        let gcloudignore = dir.join(GCLOUDIGNORE);
        let upload_rules = if gcloudignore.is_file() {
            let text = read(&gcloudignore)?;
            for line in text.lines() {
                match line.strip_prefix("#!include:") {
                    Some(included) => {
                        let included = included.trim();
                        // gcloud includes only files of the top directory, and not recursively.
                        if included.contains('/') {
                            return Err(bad(
                                GCLOUDIGNORE,
                                format!("#!include:{included}: only a file of the top-level directory can be included"),
                            ));
                        }
                        let path = dir.join(included);
                        if !path.is_file() {
                            return Err(bad(
                                GCLOUDIGNORE,
                                format!("#!include:{included}: the included file does not exist"),
                            ));
                        }
                        add_lines(&mut builder, &read(&path)?).map_err(|m| bad(included, m))?;
                    }
                    None => add_lines(&mut builder, line).map_err(|m| bad(GCLOUDIGNORE, m))?,
                }
            }
            UploadRules::GcloudIgnore
        } else if dir.join(".git").exists() || dir.join(GITIGNORE).is_file() {
            add_lines(&mut builder, &GCLOUD_DEFAULT.join("\n"))
                .map_err(|m| bad(GCLOUDIGNORE, m))?;
            let gitignore = dir.join(GITIGNORE);
            if gitignore.is_file() {
                add_lines(&mut builder, &read(&gitignore)?).map_err(|m| bad(GITIGNORE, m))?;
            }
            UploadRules::GitDefault
        } else {
            UploadRules::Everything
        };
        let upload = builder
            .build()
            .map_err(|e| bad(GCLOUDIGNORE, e.to_string()))?;
        let dockerignore = dir.join(DOCKERIGNORE);
        let docker = match dockerignore.is_file() {
            true => DockerIgnore::parse(&read(&dockerignore)?).map_err(|m| bad(DOCKERIGNORE, m))?,
            false => DockerIgnore::default(),
        };
        Ok(Rules {
            upload,
            upload_rules,
            docker,
            dockerfile: dockerfile.map(str::to_string),
        })
    }

    /// Whether gcloud leaves `path` (relative, `/`-separated) out of the upload, by itself
    /// or through an excluded parent directory: gitignore's rule that nothing inside an
    /// excluded directory comes back.
    pub fn not_uploaded(&self, path: &str, is_dir: bool) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        (1..parts.len()).any(|n| self.upload.matched(parts[..n].join("/"), true).is_ignore())
            || self.upload.matched(path, is_dir).is_ignore()
    }

    /// Whether Docker leaves an uploaded `path` out of the build context.
    pub fn not_sent(&self, path: &str) -> bool {
        if path == DOCKERIGNORE || self.dockerfile.as_deref() == Some(path) {
            return false;
        }
        self.docker.excludes(path)
    }

    /// Whether `path` (relative to the directory) is left out of the build context: a change
    /// to it cannot change the image.
    pub fn excluded(&self, path: &str, is_dir: bool) -> bool {
        self.not_uploaded(path, is_dir) || self.not_sent(path)
    }

    /// Whether a directory Docker excludes must still be walked: an exception may
    /// re-include a file inside it.
    pub fn walk_excluded_dirs(&self) -> bool {
        self.docker.has_exceptions()
    }

    /// Whether `path` is one of the files these rules are read from.
    pub fn is_rules_file(path: &str) -> bool {
        matches!(path, GCLOUDIGNORE | GITIGNORE | DOCKERIGNORE)
    }
}

fn add_lines(builder: &mut GitignoreBuilder, text: &str) -> Result<(), String> {
    for line in text.lines() {
        builder
            .add_line(None::<PathBuf>, line)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, SourceError> {
    std::fs::read_to_string(path).map_err(|source| SourceError::Read {
        path: path.to_path_buf(),
        source,
    })
}
