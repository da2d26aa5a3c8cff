//! What every measurement stands on: the cleanup guard that undoes everything the benchmark
//! started, the docker CLI, and `emulate run` children (started, read and stopped by
//! `tests/common/emulator.rs`, as the integration tests do).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::Instant;

use crate::emulator::{owned_by, owner_listing, run_command, Announcement, NotServing, Process};

/// The label on the containers the benchmark starts itself, so a run that was killed can be
/// cleaned up.
pub const BENCH_LABEL: &str = "emulate-bench=1";

/// The port the test app listens on in every container.
pub const APP_PORT: u16 = 8080;

/// The lines of an `emulate` child's output kept for error messages: it runs for minutes and
/// prints its container's lines, so not all of them.
const KEPT_LINES: usize = 200;

/// Everything the benchmark started, undone on drop: on success, errors, panics and Ctrl-C.
#[derive(Default)]
pub struct Cleanup {
    /// `emulate` processes (`run` and `smoke`), each with the service it runs.
    emulators: Vec<(Process, &'static str)>,
    /// Containers the benchmark started itself.
    containers: Vec<String>,
    /// Set before `docker run` starts: an interrupted `docker run` may have created a
    /// container whose ID never arrived, so the label is swept too.
    sweep_label: bool,
}

impl Cleanup {
    /// Spawns an `emulate` command (`run`, `smoke`) in a process group of its own, which keeps
    /// a terminal Ctrl-C away from it so that only this guard decides when and how it stops;
    /// the process, tracked from the start.
    pub fn spawn(
        &mut self,
        command: &mut Command,
        service: &'static str,
    ) -> anyhow::Result<&mut Process> {
        command.process_group(0);
        let process = Process::spawn(command, KEPT_LINES)
            .with_context(|| format!("cannot run {}", command.get_program().to_string_lossy()))?;
        self.emulators.push((process, service));
        Ok(&mut self.emulators.last_mut().expect("pushed above").0)
    }

    /// Emulator `pid`, while it is tracked.
    pub fn emulator(&self, pid: u32) -> Option<&Process> {
        self.emulators
            .iter()
            .find(|(p, _)| p.pid() == pid)
            .map(|(p, _)| p)
    }

    /// Stops emulator `pid` now (Ctrl-C, then waits) and removes any container it left.
    pub fn stop_emulator(&mut self, pid: u32) {
        if let Some(index) = self.emulators.iter().position(|(p, _)| p.pid() == pid) {
            let (mut process, service) = self.emulators.remove(index);
            for id in stop(&mut process, service) {
                docker_sync(&["rm", "-f", &id]);
            }
        }
    }

    /// `emulate` process `pid` once it has ended by itself, with all it printed (it is then
    /// forgotten, and any container it left is removed); `None` while it runs.
    pub fn reap(&mut self, pid: u32) -> Option<Process> {
        let index = self.emulators.iter().position(|(p, _)| p.pid() == pid)?;
        self.emulators[index].0.exit_status()?;
        let (mut process, service) = self.emulators.remove(index);
        for id in stop(&mut process, service) {
            docker_sync(&["rm", "-f", &id]);
        }
        Some(process)
    }

    /// Removes a container the benchmark started, now.
    pub fn remove_container(&mut self, id: &str) {
        docker_sync(&["rm", "-f", id]);
        self.forget_container(id);
    }

    /// Forgets a container the benchmark started and has removed itself.
    pub fn forget_container(&mut self, id: &str) {
        self.containers.retain(|c| c != id);
    }
}

/// Stops an `emulate` process with Ctrl-C (it drains, stops its containers and removes them),
/// a second one if it lingers, then SIGKILL; the containers it left behind.
fn stop(process: &mut Process, service: &str) -> Vec<String> {
    if process.stop() {
        eprintln!(
            "warning: emulate (pid {}) did not stop after two Ctrl-C; it was killed",
            process.pid()
        );
    }
    // The emulator removes its own containers; any left here mean it had to be killed.
    let filter = format!("label=dev.emulate.service={service}");
    owned_by(&docker_sync(&owner_listing(&filter, true)), process.pid())
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (mut process, service) in std::mem::take(&mut self.emulators) {
            let leftovers = stop(&mut process, service);
            self.containers.extend(leftovers);
        }
        if self.sweep_label {
            let listing = docker_sync(&["ps", "-aq", "--filter", &format!("label={BENCH_LABEL}")]);
            self.containers
                .extend(listing.split_whitespace().map(str::to_string));
        }
        for id in self.containers.drain(..) {
            docker_sync(&["rm", "-f", &id]);
        }
    }
}

/// Runs the docker CLI from the cleanup guard, where nothing is async and failures can only
/// be ignored; its stdout.
pub fn docker_sync<S: AsRef<str>>(args: &[S]) -> String {
    Command::new("docker")
        .args(args.iter().map(AsRef::as_ref))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Removes containers of an earlier benchmark run that was killed before it could clean up.
pub async fn remove_leftovers() -> anyhow::Result<()> {
    let leftovers = docker(&["ps", "-aq", "--filter", &format!("label={BENCH_LABEL}")]).await?;
    for id in leftovers.lines() {
        eprintln!("Removing container {id} left behind by an earlier benchmark run");
        docker(&["rm", "-f", id]).await?;
    }
    Ok(())
}

/// A running `emulate run`.
pub struct Emulator {
    pub addr: SocketAddr,
    pub pid: u32,
    /// The service it runs.
    pub service: &'static str,
    /// Its admin API's address, as `--admin` takes it.
    pub admin: String,
}

impl Emulator {
    /// The containers this emulator runs now.
    pub async fn instances(&self) -> anyhow::Result<Vec<String>> {
        let filter = format!("label=dev.emulate.service={}", self.service);
        let listing = docker(&owner_listing(&filter, false)).await?;
        Ok(owned_by(&listing, self.pid))
    }

    /// Waits until the service has scaled to zero: none of its containers runs (the spare
    /// one the emulator keeps is created, not running).
    pub async fn wait_for_zero(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.instances().await?.is_empty() {
            if Instant::now() > deadline {
                bail!("{} did not scale to zero within 60 s", self.service);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// Starts `emulate run IMAGE --service SERVICE --listen 127.0.0.1:0 EXTRA...` and waits for
/// its "Service URL" and "Admin API" lines; the child goes into `cleanup` first, so it is
/// stopped even if it never gets ready.
pub async fn spawn_emulator(
    binary: &Path,
    image: &str,
    service: &'static str,
    extra: &[&str],
    cleanup: &mut Cleanup,
) -> anyhow::Result<Emulator> {
    spawn_emulator_under(&[], binary, image, service, extra, cleanup).await
}

/// [`spawn_emulator`], run under `wrapper` (a command line such as valgrind's, the same
/// process) when it is not empty.
pub async fn spawn_emulator_under(
    wrapper: &[String],
    binary: &Path,
    image: &str,
    service: &'static str,
    extra: &[&str],
    cleanup: &mut Cleanup,
) -> anyhow::Result<Emulator> {
    let mut args = vec![image];
    args.extend_from_slice(extra);
    let mut command = wrapped(wrapper, run_command(binary, service, &args));
    let process = cleanup.spawn(&mut command, service)?;
    let pid = process.pid();
    // Under valgrind everything runs tens of times slower.
    let limit = match wrapper.is_empty() {
        true => 60,
        false => 300,
    };
    match process.announced(Duration::from_secs(limit)).await {
        Ok(Announcement { addr, admin }) => Ok(Emulator {
            addr,
            pid,
            service,
            admin,
        }),
        Err(NotServing::Exited(status)) => {
            let ended = tokio::task::block_in_place(|| cleanup.reap(pid));
            bail!(
                "emulate exited with {status} before serving:\n{}",
                ended.as_ref().map(output).unwrap_or_default()
            )
        }
        Err(NotServing::TimedOut) => bail!(
            "emulate did not serve within {limit} s:\n{}",
            cleanup.emulator(pid).map(output).unwrap_or_default()
        ),
    }
}

/// `command` run under `wrapper` (`valgrind --tool=callgrind` and its flags: it runs its
/// client in the same process): the wrapper's program and arguments first, then the command's
/// own, with the command's environment. `command` as it is when `wrapper` is empty.
pub fn wrapped(wrapper: &[String], command: Command) -> Command {
    let Some((program, flags)) = wrapper.split_first() else {
        return command;
    };
    let mut outer = Command::new(program);
    outer
        .args(flags)
        .arg(command.get_program())
        .args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => outer.env(name, value),
            None => outer.env_remove(name),
        };
    }
    outer
}

/// What an `emulate` child printed last, stdout then stderr, for error messages.
pub fn output(process: &Process) -> String {
    format!("{}\n{}", process.stdout(), process.stderr())
}

/// Runs the docker CLI; its trimmed stdout, or its stderr as the error.
pub async fn docker<S: AsRef<str>>(args: &[S]) -> anyhow::Result<String> {
    tool("docker", args).await
}

/// Runs a command-line tool; its trimmed stdout, or its stderr as the error.
pub async fn tool<S: AsRef<str>>(program: &str, args: &[S]) -> anyhow::Result<String> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let output = tokio::process::Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Starts a bare test app container (512 MiB, 1 CPU, `PORT=8080`, plus `extra` flags) with the
/// benchmark's label and records it in `cleanup`; its ID.
pub async fn docker_run(
    image: &str,
    extra: &[&str],
    cleanup: &mut Cleanup,
) -> anyhow::Result<String> {
    cleanup.sweep_label = true;
    let mut args = vec![
        "run",
        "-d",
        "--memory",
        "512m",
        "--cpus",
        "1",
        "-e",
        "PORT=8080",
        "--label",
        BENCH_LABEL,
    ];
    args.extend_from_slice(extra);
    args.push(image);
    let id = docker(&args).await?;
    cleanup.containers.push(id.clone());
    Ok(id)
}

/// A container's IP address on its Docker network (the default bridge here).
pub async fn container_ip(id: &str) -> anyhow::Result<std::net::IpAddr> {
    let ip = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        id,
    ])
    .await?;
    ip.parse()
        .with_context(|| format!("container {id} has no usable IP address ({ip:?})"))
}
