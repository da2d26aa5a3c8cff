//! What a process costs, read from `/proc`: CPU time (user + system, all threads) and resident
//! memory, for the proxy CPU per request and the RSS figures.

use std::time::Duration;

/// The kernel's clock ticks per second for `/proc/PID/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU time of process `pid` (all its threads) so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; 1 and 2 (pid, comm) are cut off.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / TICKS_PER_SECOND))
}

/// The summed CPU time of several processes (nginx's master and workers).
pub fn cpu_time_of(pids: &[u32]) -> Option<Duration> {
    pids.iter().map(|pid| cpu_time(*pid)).sum()
}

/// Resident memory of process `pid`, in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let kb: u64 = line
            .strip_prefix("VmRSS:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    })
}

/// The processes whose parent is `pid` (nginx's workers).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let fields: Vec<String> = stat
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .map(str::to_string)
                        .collect();
                    fields.get(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        assert!(cpu_time(me).is_some());
        assert!(rss(me).unwrap() > 1 << 20);
    }
}
