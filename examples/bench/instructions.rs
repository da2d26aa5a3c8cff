//! User-space instructions per request, counted by valgrind's callgrind: unlike CPU time,
//! the count hardly moves with what else the machine is doing, so a lever worth a few percent
//! shows. emulate, nginx and the forwarders of `floor.rs` (hyper, by hand, and hyper's server
//! with the instance side by hand) each run under callgrind in front of the same container;
//! after a warm-up their counters are zeroed, wrk runs (`-t1 -c8`), the counters are dumped,
//! and the dump's total is divided by the requests wrk carried. Skipped, with a note, when
//! valgrind is not installed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail};

use crate::floor::{Floor, Kind};
use crate::harness::{container_ip, spawn_emulator_under, tool, Cleanup, APP_PORT};
use crate::load::wait_until_serving;
use crate::nginx::{self, Nginx};
use crate::{wrk, Options};

/// The service the emulator runs the test app as here.
const SERVICE: &str = "bench-instructions";

/// One process counted: its name, where it serves, its pid (valgrind's is its client's).
struct Counted {
    name: &'static str,
    addr: SocketAddr,
    pid: u32,
}

/// The `instructions` measurement: its report, and false when any request failed.
pub async fn instructions(
    options: &Options,
    emulate: &Path,
    image: &str,
    cleanup: &mut Cleanup,
) -> anyhow::Result<(String, bool)> {
    let mut out = String::new();
    if !valgrind_available() {
        line!(
            out,
            "instructions: skipped, valgrind is not installed (Debian/Ubuntu: apt-get install valgrind)"
        );
        return Ok((out, true));
    }
    wrk::require()?;
    let dumps = Dumps::create()?;
    let (rows, clean) = count_all(options, emulate, image, cleanup, &dumps.0).await?;

    line!(
        out,
        "instructions: user-space instructions per request, counted by callgrind (valgrind) over wrk -t1 -c8 for {:.1} s after a warm-up; unlike CPU time, this does not move with the machine's load",
        options.duration
    );
    let nginx = rows
        .iter()
        .find(|(name, _)| name.starts_with("nginx"))
        .map(|r| r.1);
    for (name, count) in &rows {
        let ratio = nginx.map_or(String::new(), |nginx| {
            format!("{:.2}× nginx", count / nginx)
        });
        line!(out, "  {name:<40} {count:>8.0}  {ratio}");
    }
    Ok((out, clean))
}

/// The directory callgrind writes its dumps in; removed when dropped, on errors and Ctrl-C
/// too.
struct Dumps(PathBuf);

impl Dumps {
    fn create() -> anyhow::Result<Dumps> {
        let dir =
            std::env::temp_dir().join(format!("emulate-bench-callgrind-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Dumps(dir))
    }
}

impl Drop for Dumps {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether valgrind and callgrind_control are on PATH.
fn valgrind_available() -> bool {
    let runs = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    runs("valgrind", "--version") && runs("callgrind_control", "--help")
}

/// valgrind's command line for a process named `name`, its dumps written in `dir`.
fn callgrind(dir: &Path, name: &str) -> Vec<String> {
    vec![
        "valgrind".to_string(),
        "--tool=callgrind".to_string(),
        "-q".to_string(),
        format!(
            "--callgrind-out-file={}",
            dir.join(format!("{name}.%p")).display()
        ),
    ]
}

/// Starts every process under callgrind and counts each in turn: (name, instructions per
/// request) rows, and whether every request succeeded.
async fn count_all(
    options: &Options,
    emulate: &Path,
    image: &str,
    cleanup: &mut Cleanup,
    dir: &Path,
) -> anyhow::Result<(Vec<(&'static str, f64)>, bool)> {
    eprintln!("instructions: starting emulate run {image} under callgrind (slow)...");
    let emulator = spawn_emulator_under(
        &callgrind(dir, "emulate"),
        emulate,
        image,
        SERVICE,
        &["--request-log", "off", "--no-cpu-throttling"],
        cleanup,
    )
    .await?;
    let counted = async {
        wait_until_serving(emulator.addr).await?;
        let container = emulator
            .instances()
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                anyhow!("emulate serves, but no container of {SERVICE} belongs to it")
            })?;
        let upstream = SocketAddr::new(container_ip(&container).await?, APP_PORT);

        let mut processes = vec![Counted {
            name: "emulate",
            addr: emulator.addr,
            pid: emulator.pid,
        }];
        let nginx = match nginx::available() {
            true => Some(Nginx::start_under(&callgrind(dir, "nginx"), upstream)?),
            false => None,
        };
        if let Some(nginx) = &nginx {
            processes.push(Counted {
                name: "nginx (1 worker, keepalive 64)",
                addr: nginx.addr,
                pid: nginx.pids()[0],
            });
        }
        let hyper = Floor::start(upstream, Kind::Hyper, &callgrind(dir, "hyper"))?;
        let raw = Floor::start(upstream, Kind::Raw, &callgrind(dir, "raw"))?;
        let hybrid = Floor::start(upstream, Kind::Hybrid, &callgrind(dir, "hybrid"))?;
        processes.push(Counted {
            name: "bare hyper forwarder",
            addr: hyper.addr,
            pid: hyper.pid(),
        });
        processes.push(Counted {
            name: "hand-written HTTP/1 forwarder",
            addr: raw.addr,
            pid: raw.pid(),
        });
        processes.push(Counted {
            name: "hyper server, instance side by hand",
            addr: hybrid.addr,
            pid: hybrid.pid(),
        });

        let mut rows = Vec::new();
        let mut clean = true;
        for process in &processes {
            eprintln!("instructions: counting {} under callgrind...", process.name);
            wait_until_serving(process.addr).await?;
            let (count, ok) = count(process, dir, options.duration()).await?;
            rows.push((process.name, count));
            clean &= ok;
        }
        drop((nginx, hyper, raw, hybrid));
        anyhow::Ok((rows, clean))
    }
    .await;
    tokio::task::block_in_place(|| cleanup.stop_emulator(emulator.pid));
    counted
}

/// One process's instructions per request, and whether all its requests succeeded.
async fn count(process: &Counted, dir: &Path, duration: Duration) -> anyhow::Result<(f64, bool)> {
    // Warm: connections open, caches and lazily made state in place.
    wrk::run(process.addr, 1, 8, Duration::from_secs(1)).await?;
    let pid = process.pid.to_string();
    tool("callgrind_control", &["-z", &pid]).await?;
    let run = wrk::run(process.addr, 1, 8, duration).await?;
    tool("callgrind_control", &["-d", &pid]).await?;
    if run.requests == 0 {
        bail!("{} answered no request under callgrind", process.name);
    }
    let total = dumped_total(dir, process.pid).await?;
    Ok((
        total as f64 / run.requests as f64,
        run.errors == 0 && run.non_2xx == 0,
    ))
}

/// The total of instructions in process `pid`'s first dump (`NAME.PID.1`: zeroing writes
/// none), once callgrind has written it whole (its `summary:` line).
async fn dumped_total(dir: &Path, pid: u32) -> anyhow::Result<u64> {
    let suffix = format!(".{pid}.1");
    for _ in 0..100 {
        let dump = std::fs::read_dir(dir)?
            .flatten()
            .map(|entry| entry.path())
            .find(|path| path.to_string_lossy().ends_with(&suffix));
        if let Some(dump) = dump {
            let text = tokio::fs::read_to_string(&dump).await.unwrap_or_default();
            let total = text
                .lines()
                .find_map(|line| line.strip_prefix("summary: "))
                .and_then(|total| total.trim().parse().ok());
            if let Some(total) = total {
                return Ok(total);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "callgrind wrote no complete dump for process {pid} in {}",
        dir.display()
    )
}
