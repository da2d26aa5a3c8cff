//! What an app does after it has answered, which Cloud Run throttles: CPU work (`/work`),
//! log lines (`/log-later`), and files written to its in-memory filesystem (`/write`).

use std::time::{Duration, Instant};

use crate::output;

/// One unit of CPU work: a fixed computation (about a millisecond on a current core), so
/// the same work can be timed during a request and after it.
fn unit(seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..200_000 {
        // xorshift: cheap, and the compiler cannot fold it away.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// Runs `units` units of work and returns how long they took.
pub fn work(units: u64) -> Duration {
    let began = Instant::now();
    let mut x = 0;
    for i in 0..units {
        x ^= unit(i + x);
    }
    std::hint::black_box(x);
    began.elapsed()
}

/// The same work on a thread of its own once the response has gone, logging how long it
/// took: `background work of N units took M ms`.
pub fn work_after_response(units: u64) {
    std::thread::spawn(move || {
        // The response leaves first.
        std::thread::sleep(Duration::from_millis(50));
        let took = work(units);
        output::line(&format!(
            "background work of {units} units took {} ms",
            took.as_millis()
        ));
    });
}

/// Prints `lines` lines `delay` after the response.
pub fn log_after_response(lines: u64, delay: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        for i in 1..=lines {
            output::line(&format!("background line {i} of {lines}"));
        }
    });
}

/// Writes a file of `mib` MiB into `dir` (made if missing), touching every page, and
/// returns its path.
pub fn write_file(dir: &str, mib: usize) -> std::io::Result<String> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let path = format!(
        "{}/written-{}",
        dir.trim_end_matches('/'),
        std::process::id()
    );
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..mib {
        file.write_all(&chunk)?;
    }
    file.flush()?;
    Ok(path)
}
