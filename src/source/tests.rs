//! The build context's rules and hash, over real directories.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::context::{self, OUTSIDE_DOCKERFILE};
use super::dockerignore::{clean, DockerIgnore};
use super::rules::{Rules, UploadRules};
use super::watch::relevant;
use super::*;

/// A fresh directory holding `files` (path, content); removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(files: &[(&str, &str)]) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "emulate-source-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let temp = TempDir(dir);
        for (path, content) in files {
            temp.write(path, content);
        }
        temp
    }

    fn write(&self, path: &str, content: &str) {
        let full = self.0.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }

    fn config(&self) -> SourceConfig {
        SourceConfig {
            dir: self.0.clone(),
            dockerfile: None,
            build_args: Vec::new(),
            target: None,
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn make(config: &SourceConfig) -> context::Context {
    match prepare(config).unwrap() {
        Some((context, _)) => context,
        None => panic!("no Dockerfile in {}", config.dir.display()),
    }
}

fn files(config: &SourceConfig) -> Vec<String> {
    make(config).files
}

/// The paths in a tar archive, in order.
fn archive_paths(archive: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(archive);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn dockerignore(text: &str) -> DockerIgnore {
    DockerIgnore::parse(text).unwrap()
}

#[test]
fn dockerignore_patterns_are_anchored_at_the_context_root() {
    let ignore = dockerignore("*.log\n/tmp\n**/*.bak\nbuild/\n");
    assert!(ignore.excludes("a.log"));
    // Unlike .gitignore, `*.log` does not reach into directories.
    assert!(!ignore.excludes("dir/a.log"));
    assert!(ignore.excludes("tmp"));
    assert!(ignore.excludes("tmp/x/y"), "a directory takes its contents");
    assert!(ignore.excludes("x.bak") && ignore.excludes("a/b/x.bak"));
    assert!(
        ignore.excludes("build/out"),
        "a trailing slash is cleaned away"
    );
    assert!(!ignore.excludes("src/build/out"));
}

#[test]
fn dockerignore_exceptions_reach_into_excluded_directories_and_the_last_match_wins() {
    let ignore = dockerignore("docs\n!docs/keep.md\n*.md\n!README.md\n");
    assert!(ignore.excludes("docs/other.txt"));
    // Unlike .gitignore, an exception re-includes a file of an excluded directory...
    assert!(!ignore.excludes("docs/keep.md"));
    // ...and a later pattern still wins over it (`*.md` is anchored: not docs/keep.md).
    assert!(ignore.excludes("CHANGES.md"));
    assert!(!ignore.excludes("README.md"));
    assert!(ignore.has_exceptions());
}

#[test]
fn dockerignore_reads_as_docker_reads() {
    // A comment only at the line's start, whitespace trimmed, `./` and `//` cleaned.
    let ignore = dockerignore("\u{feff}# comment\n  ./secret//key  \n #not-a-comment\n\n");
    assert!(ignore.excludes("secret/key"));
    assert!(ignore.excludes("#not-a-comment"));
    assert!(!ignore.excludes("# comment"));
    let ignore = dockerignore("a/**\n**\n");
    assert!(ignore.excludes("anything/at/all"));
    let ignore = dockerignore("src/**/test?.rs\n[ab].txt\n");
    assert!(ignore.excludes("src/test1.rs") && ignore.excludes("src/x/y/test2.rs"));
    assert!(!ignore.excludes("src/test10.rs"));
    assert!(ignore.excludes("a.txt") && !ignore.excludes("c.txt"));
    let error = DockerIgnore::parse("ok\n!\n").unwrap_err();
    assert!(error.starts_with("line 2:"), "{error}");
    assert!(DockerIgnore::parse("[unclosed\n").is_err());
}

#[test]
fn paths_are_cleaned_as_go_cleans_them() {
    assert_eq!(clean("./a//b/"), "a/b");
    assert_eq!(clean("a/../../b"), "../b");
    assert_eq!(clean("/../a"), "/a");
    assert_eq!(clean(""), ".");
}

#[test]
fn gcloudignore_decides_the_upload_and_can_include_gitignore() {
    let dir = TempDir::new(&[
        ("Dockerfile", "FROM scratch\n"),
        (".gcloudignore", "*.tmp\n#!include:.gitignore\n!keep.tmp\n"),
        (".gitignore", "target/\n"),
        ("a.tmp", ""),
        ("keep.tmp", ""),
        ("sub/b.tmp", ""),
        ("target/out", ""),
        ("src/main.rs", ""),
        (".git/HEAD", ""),
    ]);
    let rules = Rules::load(&dir.0, Some("Dockerfile")).unwrap();
    assert_eq!(rules.upload_rules, UploadRules::GcloudIgnore);
    // gitignore semantics: `*.tmp` anywhere, `target/` a directory at any depth.
    assert_eq!(
        files(&dir.config()),
        [
            ".gcloudignore",
            ".git/HEAD",
            ".gitignore",
            "Dockerfile",
            "keep.tmp",
            "src/main.rs"
        ],
        ".gcloudignore replaces gcloud's default, which would leave .git out"
    );
    dir.write(".gcloudignore", "#!include:missing\n");
    let error = Rules::load(&dir.0, None).unwrap_err().to_string();
    assert!(error.contains("#!include:missing"), "{error}");
}

#[test]
fn without_gcloudignore_a_git_directory_gets_gclouds_default() {
    let dir = TempDir::new(&[
        ("Dockerfile", "FROM scratch\n"),
        (".gitignore", "*.log\n/node_modules\n"),
        ("app.log", ""),
        ("logs/deep.log", ""),
        ("node_modules/x/index.js", ""),
        ("index.js", ""),
        (".git/config", ""),
    ]);
    assert_eq!(files(&dir.config()), ["Dockerfile", "index.js"]);
    let plain = TempDir::new(&[("Dockerfile", "FROM scratch\n"), ("app.log", "")]);
    let rules = Rules::load(&plain.0, Some("Dockerfile")).unwrap();
    assert_eq!(rules.upload_rules, UploadRules::Everything);
    assert_eq!(files(&plain.config()), ["Dockerfile", "app.log"]);
}

#[test]
fn dockerignore_applies_to_what_is_uploaded_and_never_drops_the_dockerfile() {
    let dir = TempDir::new(&[
        ("Dockerfile", "FROM scratch\n"),
        (".gitignore", "secret.txt\n"),
        (
            ".dockerignore",
            "Dockerfile\n.dockerignore\n*.md\ndocs\n!docs/api.md\n",
        ),
        ("secret.txt", ""),
        ("README.md", ""),
        ("docs/api.md", ""),
        ("docs/draft.txt", ""),
        ("content.txt", "hello"),
    ]);
    let context = make(&dir.config());
    assert_eq!(
        context.files,
        [".dockerignore", "Dockerfile", "content.txt", "docs/api.md"]
    );
    // The excluded directory's entry is not sent; the re-included file is.
    let paths = archive_paths(&context.archive);
    assert!(!paths.iter().any(|p| p == "docs/"), "{paths:?}");
    assert!(paths.iter().any(|p| p == "docs/api.md"), "{paths:?}");
}

#[test]
fn the_hash_follows_content_not_timestamps_nor_ignored_files() {
    let dir = TempDir::new(&[
        ("Dockerfile", "FROM scratch\nCOPY . /\n"),
        (".dockerignore", "ignored.txt\n"),
        ("content.txt", "one"),
        ("ignored.txt", "a"),
    ]);
    let config = dir.config();
    let first = make(&config).hash;
    assert_eq!(make(&config).hash, first, "stable");
    // Same content, new modification time.
    let file = dir.0.join("content.txt");
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_eq!(
        make(&config).hash,
        first,
        "touching a file does not rebuild"
    );
    dir.write("ignored.txt", "b");
    assert_eq!(make(&config).hash, first, "an ignored file does not count");
    dir.write("content.txt", "two");
    let second = make(&config).hash;
    assert_ne!(second, first, "content counts");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
    let third = make(&config).hash;
    assert_ne!(third, second, "the mode counts");
    dir.write("new.txt", "");
    assert_ne!(make(&config).hash, third, "a new file counts");
}

#[test]
fn build_args_target_and_dockerfile_are_part_of_the_hash() {
    let dir = TempDir::new(&[
        ("Dockerfile", "FROM scratch\n"),
        ("other.Dockerfile", "FROM scratch\n"),
    ]);
    let base = dir.config();
    let hash = make(&base).hash;
    let with_args = SourceConfig {
        build_args: vec![("B".into(), "2".into()), ("A".into(), "1".into())],
        ..base.clone()
    };
    assert_ne!(make(&with_args).hash, hash);
    let reordered = SourceConfig {
        build_args: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
        ..base.clone()
    };
    assert_eq!(
        make(&reordered).hash,
        make(&with_args).hash,
        "the args' order does not matter"
    );
    let target = SourceConfig {
        target: Some("runtime".into()),
        ..base.clone()
    };
    assert_ne!(make(&target).hash, hash);
    let other = SourceConfig {
        dockerfile: Some(dir.0.join("other.Dockerfile")),
        ..base
    };
    let context = make(&other);
    assert_eq!(context.dockerfile, "other.Dockerfile");
    assert_ne!(context.hash, hash);
}

#[test]
fn a_dockerfile_outside_the_directory_is_added_to_the_context() {
    let outside = TempDir::new(&[("build.Dockerfile", "FROM scratch\nCOPY . /\n")]);
    let dir = TempDir::new(&[("app.txt", "x")]);
    let config = SourceConfig {
        dockerfile: Some(outside.0.join("build.Dockerfile")),
        ..dir.config()
    };
    let context = make(&config);
    assert_eq!(context.dockerfile, OUTSIDE_DOCKERFILE);
    assert_eq!(context.files, [OUTSIDE_DOCKERFILE, "app.txt"]);
    let missing = SourceConfig {
        dockerfile: Some(outside.0.join("nope")),
        ..dir.config()
    };
    let error = prepare(&missing).unwrap_err().to_string();
    assert!(error.starts_with("--dockerfile:"), "{error}");
}

#[test]
fn no_dockerfile_means_buildpacks_and_an_unuploaded_one_is_refused() {
    let dir = TempDir::new(&[("main.py", "")]);
    assert!(prepare(&dir.config()).unwrap().is_none());
    dir.write("Dockerfile", "FROM scratch\n");
    dir.write(".gcloudignore", "Dockerfile\n");
    let error = prepare(&dir.config()).unwrap_err().to_string();
    assert!(
        error.contains("Dockerfile is excluded by .gcloudignore"),
        "{error}"
    );
}

#[test]
fn watch_ignores_changes_the_context_leaves_out() {
    let dir = TempDir::new(&[
        ("Dockerfile", "FROM scratch\n"),
        (".gitignore", "target/\n"),
        (".dockerignore", "notes.txt\n"),
    ]);
    let rules = current_rules(&dir.config()).unwrap();
    assert!(relevant(Some(&rules), "src/main.rs", false));
    assert!(!relevant(Some(&rules), "target/debug/app", false));
    assert!(!relevant(Some(&rules), ".git/index", false));
    assert!(!relevant(Some(&rules), "notes.txt", false));
    // The rules' own files always count: editing them can bring files in.
    assert!(relevant(Some(&rules), ".gitignore", false));
    assert!(relevant(Some(&rules), ".dockerignore", false));
    assert!(relevant(None, "anything", false));
}

#[test]
fn build_output_is_told_from_steps_and_bookkeeping() {
    assert_eq!(classify("Step 2/4 : COPY . /"), Line::Step);
    assert_eq!(classify(" ---> Running in 3f2a"), Line::Bookkeeping);
    assert_eq!(classify(" ---> 9c1e"), Line::Bookkeeping);
    assert_eq!(
        classify("Removing intermediate container 3f2a"),
        Line::Bookkeeping
    );
    assert_eq!(classify("Successfully tagged x:y"), Line::Bookkeeping);
    assert_eq!(classify("compiling main.rs"), Line::Output);
    assert_eq!(classify("Step by step"), Line::Output);
}

#[test]
fn a_failed_build_names_the_step_and_shows_its_last_lines() {
    let error = BuildError::Failed {
        image: "emulate-source/app:1".into(),
        step: Some("Step 3/4 : RUN [\"/app\", \"fail\"]".into()),
        message: "The command '/app fail' returned a non-zero code: 1".into(),
        output: vec!["warming up".into(), "boom".into()],
    };
    assert_eq!(
        error.to_string(),
        "The build failed at Step 3/4 : RUN [\"/app\", \"fail\"]\n  The command '/app fail' returned a non-zero code: 1\n  Its last output lines:\n    | warming up\n    | boom"
    );
}

#[test]
fn service_names_come_from_the_directory() {
    assert_eq!(service_name_from_dir(Path::new("/x/My_App")), "my-app");
}

#[tokio::test]
async fn the_watcher_reports_settled_changes_the_context_keeps() {
    use std::time::Duration;
    let dir = TempDir::new(&[
        ("Dockerfile", "FROM scratch\n"),
        (".dockerignore", "ignored.txt\n"),
        ("a.txt", "1"),
    ]);
    let mut watcher = watch::Watcher::start(&dir.config()).unwrap();
    let limit = Duration::from_secs(10);
    for round in 0..3 {
        dir.write("ignored.txt", &format!("{round}"));
        dir.write("a.txt", &format!("{round}"));
        let changes = tokio::time::timeout(limit, watcher.changes())
            .await
            .unwrap_or_else(|_| panic!("round {round}: no change seen"));
        assert_eq!(changes.paths, ["a.txt"], "round {round}");
    }
    // A burst of saves settles into one batch.
    dir.write("Dockerfile", "FROM scratch\nCOPY . /\n");
    dir.write("sub/b.txt", "x");
    let changes = tokio::time::timeout(limit, watcher.changes())
        .await
        .unwrap();
    assert!(
        changes.paths.contains(&"Dockerfile".to_string()),
        "{changes:?}"
    );
    // A file made with its directory may be seen as the directory alone (it is watched
    // once seen): either way the build reads the tree as it is.
    assert!(
        changes.paths.iter().any(|p| p == "sub" || p == "sub/b.txt"),
        "{changes:?}"
    );
}
