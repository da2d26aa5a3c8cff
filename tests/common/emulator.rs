//! The real `emulate` binary as a child process, shared by the integration tests
//! (`tests/it/support.rs`) and the benchmark (`examples/bench/`) through `#[path]`: starting it
//! with a clean environment, keeping what it prints, reading the addresses `emulate run`
//! announces, stopping it the way a user does (Ctrl-C), and finding the containers it left.
//!
//! Nothing here panics or decides what a failure means: the tests turn failures into panics,
//! the benchmark into errors.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `emulate` binary at `binary` as a command, with no `EMULATE_*` variable of the outer
/// environment (an admin address, a secret, a log level) nor Google credentials or gcloud
/// settings reaching it unless the caller sets them.
pub fn emulate_command(binary: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(binary);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("EMULATE_") {
            command.env_remove(name);
        }
    }
    // One signing key for every test run, never the user's own state directory.
    command.env(
        "EMULATE_STATE_DIR",
        std::env::temp_dir().join("emulate-test-state"),
    );
    // Nor the machine's Google credentials and gcloud settings (a project, a key file): a test
    // that wants them sets them. CLOUDSDK_CONFIG names a directory that does not exist, so
    // gcloud's files under ~/.config/gcloud are not read either.
    for name in [
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_CLOUD_PROJECT",
        "CLOUDSDK_CORE_PROJECT",
        "CLOUDSDK_ACTIVE_CONFIG_NAME",
    ] {
        command.env_remove(name);
    }
    command.env(
        "CLOUDSDK_CONFIG",
        std::env::temp_dir().join("emulate-test-no-gcloud-config"),
    );
    command
}

/// `emulate run --service SERVICE --listen 127.0.0.1:0 ARGS...` (ARGS names the image), without
/// colours, so that its lines can be read.
pub fn run_command(binary: impl AsRef<OsStr>, service: &str, args: &[&str]) -> Command {
    let mut command = emulate_command(binary);
    command
        .arg("run")
        .args(["--service", service, "--listen", "127.0.0.1:0"])
        .args(args)
        .env("NO_COLOR", "1");
    command
}

/// The addresses `emulate run` prints on stderr once it serves: `Service URL:
/// http://localhost:PORT`, then `Admin API: http://ADDR ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// Where the proxy listens, on loopback.
    pub addr: SocketAddr,
    /// The admin API's address as printed (what `--admin` and `EMULATE_ADMIN` take).
    pub admin: String,
}

impl Announcement {
    /// The announcement in what the emulator printed on stderr so far, once both lines are in.
    pub fn find(stderr: &str) -> Option<Announcement> {
        // `http://localhost:PORT` for one service, `http://SERVICE.localhost:PORT` for each
        // of several.
        let port = stderr
            .lines()
            .find_map(|l| l.strip_prefix("Service URL: http://"))
            .and_then(|url| url.rsplit_once(':'))
            .and_then(|(_, p)| p.trim().parse::<u16>().ok())?;
        let admin = stderr
            .lines()
            .find_map(|l| l.strip_prefix("Admin API: http://"))
            .and_then(|rest| rest.split_whitespace().next())?;
        Some(Announcement {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: admin.to_string(),
        })
    }
}

/// Why an emulator never announced that it serves.
#[derive(Debug)]
pub enum NotServing {
    /// It ended first, with this status.
    Exited(ExitStatus),
    /// It still ran, silent, when the limit passed.
    TimedOut,
}

/// What a child printed on one stream: its last `keep` lines.
#[derive(Clone)]
struct Output {
    lines: Arc<Mutex<VecDeque<String>>>,
    keep: usize,
}

impl Output {
    /// Reads `stream` to its end on a thread of its own, so that the child never blocks on a
    /// full pipe.
    fn collect(
        stream: impl std::io::Read + Send + 'static,
        keep: usize,
    ) -> (Output, JoinHandle<()>) {
        let output = Output {
            lines: Arc::default(),
            keep,
        };
        let sink = output.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let mut lines = sink.lines.lock().unwrap();
                if lines.len() == sink.keep {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
        (output, reader)
    }

    /// The lines kept, each ending with a newline.
    fn text(&self) -> String {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .flat_map(|line| [line.as_str(), "\n"])
            .collect()
    }
}

/// A running `emulate` process (`run`, `smoke`...) whose output is being read.
pub struct Process {
    child: Child,
    stdout: Output,
    stderr: Output,
    /// The threads reading stdout and stderr: they end when the process closes its pipes.
    readers: Vec<JoinHandle<()>>,
}

impl Process {
    /// Spawns `command` with stdin closed and its stdout and stderr read as it prints, keeping
    /// the last `keep` lines of each (`usize::MAX`: all of them).
    pub fn spawn(command: &mut Command, keep: usize) -> std::io::Result<Process> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (stdout, out_reader) = Output::collect(child.stdout.take().expect("piped"), keep);
        let (stderr, err_reader) = Output::collect(child.stderr.take().expect("piped"), keep);
        Ok(Process {
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed on stdout so far, each line ending with a newline.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// What it printed on stderr so far, each line ending with a newline.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Its exit status once it has ended; `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until `emulate run` has announced its service URL and admin API (it prints the
    /// admin API after the service URL), it ends, or `limit` passes.
    pub async fn announced(&mut self, limit: Duration) -> Result<Announcement, NotServing> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(announcement) = Announcement::find(&self.stderr()) {
                return Ok(announcement);
            }
            if let Some(status) = self.exit_status() {
                return Err(NotServing::Exited(status));
            }
            if Instant::now() >= deadline {
                return Err(NotServing::TimedOut);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the process to end, then for its output to be read, so that nothing it
    /// printed is missed; `None` if it still runs after `limit`.
    pub async fn exited(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.exit_status() {
                break status;
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let readers = std::mem::take(&mut self.readers);
        tokio::task::spawn_blocking(move || readers.into_iter().for_each(|r| drop(r.join())))
            .await
            .expect("joining the output readers");
        Some(status)
    }

    /// Stops the process the way a user would: Ctrl-C (SIGINT), a second one if it lingers,
    /// then SIGKILL; true when it had to be killed. A drain (10 s) plus a container's SIGTERM
    /// grace period (10 s) fit in the first wait, with room to spare. Once it has ended, its
    /// output is read to the end (`emulate` starts no process that could hold its pipes), so
    /// that nothing it printed is missed.
    pub fn stop(&mut self) -> bool {
        if self.running() {
            self.interrupt();
            self.wait_while_running(Duration::from_secs(40));
            if self.running() {
                self.interrupt();
                self.wait_while_running(Duration::from_secs(15));
            }
        }
        let lingered = self.running();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
        lingered
    }

    fn interrupt(&self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.pid().to_string())
            .status();
    }

    fn wait_while_running(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `docker ps` arguments listing the containers `filter` selects (e.g.
/// `label=dev.emulate.service=NAME`), one `ID OWNER` line each, OWNER being the
/// `dev.emulate.owner` label (HOST:PID:STARTTIME). `all` includes containers that do not run:
/// the spare one created ahead of the next cold start, and any that exited.
pub fn owner_listing(filter: &str, all: bool) -> Vec<String> {
    let mut args = vec!["ps".to_string()];
    if all {
        args.push("-a".to_string());
    }
    args.extend([
        "--filter".to_string(),
        filter.to_string(),
        "--format".to_string(),
        "{{.ID}} {{.Label \"dev.emulate.owner\"}}".to_string(),
    ]);
    args
}

/// The containers in an [`owner_listing`] that emulator process `pid` started: another emulator
/// may run a service of the same name, and the owner label tells them apart.
pub fn owned_by(listing: &str, pid: u32) -> Vec<String> {
    let pid = pid.to_string();
    listing
        .lines()
        .filter_map(|line| {
            let (id, owner) = line.split_once(' ')?;
            // HOST:PID:STARTTIME
            let owner_pid = owner.rsplit(':').nth(1)?;
            (owner_pid == pid).then(|| id.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_needs_both_lines() {
        let url = "Deploying...\nService URL: http://localhost:40123\n";
        assert_eq!(Announcement::find(url), None);
        let both = format!("{url}Admin API: http://127.0.0.1:40124 (token in /tmp/x)\n");
        assert_eq!(
            Announcement::find(&both),
            Some(Announcement {
                addr: "127.0.0.1:40123".parse().unwrap(),
                admin: "127.0.0.1:40124".to_string(),
            })
        );
    }

    #[test]
    fn a_port_that_is_not_a_number_is_no_announcement() {
        let text = "Service URL: http://localhost:x\nAdmin API: http://127.0.0.1:1\n";
        assert_eq!(Announcement::find(text), None);
    }

    #[test]
    fn owned_by_matches_the_pid_field_of_the_owner_label_only() {
        let listing = "aaa host:12:999\nbbb host:123:12\nccc 12:34:56\nddd\n";
        assert_eq!(owned_by(listing, 12), ["aaa"]);
        assert_eq!(owned_by(listing, 123), ["bbb"]);
        assert_eq!(owned_by(listing, 34), ["ccc"]);
        assert!(owned_by(listing, 56).is_empty());
    }

    #[test]
    fn the_listing_includes_stopped_containers_only_when_asked() {
        let filter = "label=dev.emulate.service=s";
        assert_eq!(
            owner_listing(filter, false)[..3],
            ["ps", "--filter", filter]
        );
        assert_eq!(owner_listing(filter, true)[..2], ["ps", "-a"]);
    }

    #[test]
    fn output_keeps_the_last_lines() {
        let (output, reader) = Output::collect(&b"one\ntwo\nthree\n"[..], 2);
        reader.join().unwrap();
        assert_eq!(output.text(), "two\nthree\n");
    }
}
