//! `--watch`: the source directory's changes, as settled batches of the paths that can change
//! the image. A debouncer (notify-debouncer-full) folds each burst of file system events (an
//! editor's save is several) into one batch once the directory has been quiet for a moment;
//! changes to files the build context leaves out are dropped, with the ignore rules as they
//! are when the batch arrives. Events that arrive while the caller builds wait in the
//! channel, so a change made during a build is never lost: it makes the next batch.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::event::{AccessKind, AccessMode, EventKind};
use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use tokio::sync::mpsc;

use super::context::slash_path;
use super::rules::Rules;
use super::{current_rules, SourceConfig, SourceError};

/// How long the directory must be quiet before a burst of changes counts as done.
pub const SETTLE: Duration = Duration::from_millis(75);
/// How many more settle periods a burst may extend the wait.
const MORE_SETTLES: usize = 10;

/// Watches one source directory (recursively) for as long as it lives.
pub struct Watcher {
    // Kept for its drop, which stops watching.
    _debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    batches: mpsc::UnboundedReceiver<Result<Vec<PathBuf>, String>>,
    /// The directory as the events name it (canonical).
    root: PathBuf,
    config: SourceConfig,
}

/// One settled batch of changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The paths changed, relative to the directory, sorted.
    pub paths: Vec<String>,
    /// Why watching had trouble, if it did (the watch goes on).
    pub problems: Vec<String>,
}

impl Changes {
    /// `src/main.rs`, `a, b`, or `a, b and 3 more`, for the cycle's line.
    pub fn summary(&self) -> String {
        match self.paths.len() {
            0 => "nothing".to_string(),
            1..=3 => self.paths.join(", "),
            n => format!("{} and {} more", self.paths[..2].join(", "), n - 2),
        }
    }
}

impl Watcher {
    pub fn start(config: &SourceConfig) -> Result<Watcher, SourceError> {
        let root = std::fs::canonicalize(&config.dir).map_err(|source| SourceError::Read {
            path: config.dir.clone(),
            source,
        })?;
        let (sender, batches) = mpsc::unbounded_channel();
        let handler = move |result: DebounceEventResult| {
            let batch: Result<Vec<PathBuf>, String> = match result {
                Ok(events) => Ok(events
                    .into_iter()
                    .filter(|e| changes_content(&e.event.kind))
                    .flat_map(|e| e.event.paths)
                    .collect()),
                Err(errors) => Err(errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")),
            };
            // Reads are no news (the build's own, and the rules' reload, would otherwise wake
            // the watch forever). The receiver is gone only when the watch has ended.
            if batch.as_ref().is_ok_and(Vec::is_empty) {
                return;
            }
            let _ = sender.send(batch);
        };
        let watch_error = |e: notify_debouncer_full::notify::Error| SourceError::Read {
            path: config.dir.clone(),
            source: std::io::Error::other(format!("cannot watch it: {e}")),
        };
        let mut debouncer = new_debouncer(SETTLE, None, handler).map_err(watch_error)?;
        debouncer
            .watch(&root, RecursiveMode::Recursive)
            .map_err(watch_error)?;
        Ok(Watcher {
            _debouncer: debouncer,
            batches,
            root,
            config: config.clone(),
        })
    }

    /// Waits for the next changes that can change the image, then for the directory to be
    /// quiet, and returns them all.
    pub async fn changes(&mut self) -> Changes {
        let mut changes = Changes::default();
        let mut paths = BTreeSet::new();
        loop {
            let Some(batch) = self.batches.recv().await else {
                // The debouncer is gone: nothing will ever change again.
                return std::future::pending().await;
            };
            self.take(batch, &mut paths, &mut changes.problems);
            if paths.is_empty() {
                continue;
            }
            // More may be on their way (a save of several files, a checkout): they join this
            // batch if they come within another settle period, for a few periods at most, so
            // a file written without pause cannot hold the build back for ever.
            for _ in 0..MORE_SETTLES {
                match tokio::time::timeout(SETTLE, self.batches.recv()).await {
                    Ok(Some(batch)) => self.take(batch, &mut paths, &mut changes.problems),
                    _ => break,
                }
            }
            changes.paths = paths.into_iter().collect();
            return changes;
        }
    }

    /// Drops the batch's paths the build context leaves out, with the rules as they are now.
    fn take(
        &self,
        batch: Result<Vec<PathBuf>, String>,
        paths: &mut BTreeSet<String>,
        problems: &mut Vec<String>,
    ) {
        let batch = match batch {
            Ok(batch) => batch,
            Err(problem) => {
                problems.push(problem);
                return;
            }
        };
        let rules = current_rules(&self.config);
        for path in batch {
            let Some(relative) = relative(&self.root, &self.config.dir, &path) else {
                continue;
            };
            if relevant(rules.as_ref().ok(), &relative, path.is_dir()) {
                paths.insert(relative);
            }
        }
    }
}

/// Whether a change to `path` can change the image: it is in the context, or it is one of the
/// rules' own files (a rule change may bring files in). With rules that cannot be read, every
/// change counts, and the build says what is wrong with them.
pub fn relevant(rules: Option<&Rules>, path: &str, is_dir: bool) -> bool {
    if Rules::is_rules_file(path) {
        return true;
    }
    match rules {
        Some(rules) => !rules.excluded(path, is_dir),
        None => true,
    }
}

/// Whether an event can change a file's content or the tree: reads (opening a file, closing
/// it unwritten) cannot, and the build's own reads must not trigger a build.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
        _ => true,
    }
}

/// The event's path relative to the watched directory (events name it canonically).
fn relative(root: &Path, dir: &Path, path: &Path) -> Option<String> {
    let inside = path
        .strip_prefix(root)
        .or_else(|_| path.strip_prefix(dir))
        .ok()?;
    let text = slash_path(inside);
    (!text.is_empty()).then_some(text)
}
