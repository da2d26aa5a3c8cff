//! A container's cgroup, read and written directly on the host's cgroupfs (Linux engine):
//! found from `/proc/<pid>/cgroup` and the host's cgroup mounts (`/proc/self/mountinfo`),
//! for cgroup v1 (one hierarchy per controller) and v2 (one unified hierarchy). It gives the
//! CPU limit as a file held open (a request's CPU restore is one `pwrite`), the CPU used so
//! far, and the memory in use and its peak. Pure file logic: the tests run it on a fake
//! cgroupfs in a temporary directory.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which cgroup interface a controller's files follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `cpu.cfs_quota_us`, `cpuacct.usage`, `memory.max_usage_in_bytes`...
    V1,
    /// `cpu.max`, `cpu.stat`, `memory.peak`...
    V2,
}

/// The directories of one container's cgroup that the emulator reads or writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// The CPU limit's directory, and its interface.
    pub cpu: (Version, PathBuf),
    /// Where the CPU used so far is read (`cpuacct` on v1, the same directory on v2).
    pub cpu_usage: (Version, PathBuf),
    /// The memory controller's directory.
    pub memory: (Version, PathBuf),
}

/// One cgroupfs mount of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mount {
    /// The cgroup path the mount shows at its mount point (`/` unless the mount is of a
    /// sub-tree, as inside a cgroup namespace).
    root: String,
    point: PathBuf,
    /// v1: the controllers of its hierarchy; v2: none (the unified hierarchy).
    controllers: Option<Vec<String>>,
}

/// The cgroupfs mounts in a `mountinfo` text: `ID PARENT MAJ:MIN ROOT POINT OPTIONS
/// [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS`.
fn mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mut fields = before.split_whitespace();
            let root = fields.nth(3)?.to_string();
            let point = PathBuf::from(unescape(fields.next()?));
            let mut after = after.split_whitespace();
            let fstype = after.next()?;
            let options = after.nth(1).unwrap_or("");
            let controllers = match fstype {
                "cgroup2" => None,
                "cgroup" => Some(options.split(',').map(str::to_string).collect()),
                _ => return None,
            };
            Some(Mount {
                root,
                point,
                controllers,
            })
        })
        .collect()
}

/// mountinfo escapes spaces, tabs, newlines and backslashes in paths as octal (`\040`).
fn unescape(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let digits = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a process's cgroup for `controller` is: its line in `/proc/<pid>/cgroup`
/// (`ID:CONTROLLERS:PATH`) mapped through the mount of that hierarchy. v1 first (a hybrid
/// host keeps its controllers there), then the unified hierarchy when it has the
/// controller (its `cgroup.controllers` file names it).
fn locate(proc_cgroup: &str, mounts: &[Mount], controller: &str) -> Option<(Version, PathBuf)> {
    let lines: Vec<(&str, &str)> = proc_cgroup
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?, parts.next()?))
        })
        .collect();
    let v1 = lines.iter().find_map(|(controllers, path)| {
        controllers
            .split(',')
            .any(|c| c == controller)
            .then_some(*path)
    });
    if let Some(path) = v1 {
        let mount = mounts.iter().find(|m| {
            m.controllers
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| c == controller))
        })?;
        return Some((Version::V1, under(mount, path)?));
    }
    let path = lines.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| *p)?;
    let mount = mounts.iter().find(|m| m.controllers.is_none())?;
    let dir = under(mount, path)?;
    let enabled = std::fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
    enabled
        .split_whitespace()
        .any(|c| c == controller)
        .then_some((Version::V2, dir))
}

/// The directory of cgroup `path` under a mount showing cgroup `mount.root`; None when the
/// path is outside what the mount shows.
fn under(mount: &Mount, path: &str) -> Option<PathBuf> {
    let relative = match mount.root.as_str() {
        "/" => path,
        root => path.strip_prefix(root)?,
    };
    let relative = relative.trim_start_matches('/');
    if relative.split('/').any(|part| part == "..") {
        return None;
    }
    Some(mount.point.join(relative))
}

impl Cgroup {
    /// The cgroup of a process on this host, from its `/proc` entry; None when it cannot be
    /// found or is not the container's (`container_id` must appear in its path: a pid from
    /// another machine, such as Docker Desktop's VM, names some other process here).
    pub fn of_process(pid: u32, container_id: &str) -> Option<Cgroup> {
        let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        Cgroup::find(&proc_cgroup, &mountinfo, container_id)
    }

    /// The cgroup a `/proc/<pid>/cgroup` text names, through the mounts of a `mountinfo` text.
    pub fn find(proc_cgroup: &str, mountinfo: &str, container_id: &str) -> Option<Cgroup> {
        let mounts = mounts(mountinfo);
        let cpu = locate(proc_cgroup, &mounts, "cpu")?;
        let cpu_usage = match cpu.0 {
            Version::V1 => locate(proc_cgroup, &mounts, "cpuacct")?,
            Version::V2 => cpu.clone(),
        };
        let memory = locate(proc_cgroup, &mounts, "memory")?;
        let ours = [&cpu.1, &cpu_usage.1, &memory.1]
            .iter()
            .all(|dir| dir.to_string_lossy().contains(container_id));
        (ours && !container_id.is_empty()).then_some(Cgroup {
            cpu,
            cpu_usage,
            memory,
        })
    }

    /// The CPU limit's file, opened for writing (and its period read) once.
    pub fn cpu_limit(&self) -> io::Result<CpuLimit> {
        let (version, dir) = &self.cpu;
        let (file, period) = match version {
            Version::V1 => {
                let period = first_number(&dir.join("cpu.cfs_period_us"))?;
                (dir.join("cpu.cfs_quota_us"), period)
            }
            Version::V2 => {
                // `max 100000` or `QUOTA PERIOD`.
                let text = std::fs::read_to_string(dir.join("cpu.max"))?;
                let period = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(100_000);
                (dir.join("cpu.max"), period)
            }
        };
        let file = std::fs::OpenOptions::new().write(true).open(file)?;
        Ok(CpuLimit {
            file,
            version: *version,
            period_us: period.max(1000),
        })
    }

    /// CPU time the cgroup has used since it was made.
    pub fn cpu_used(&self) -> io::Result<Duration> {
        let (version, dir) = &self.cpu_usage;
        match version {
            Version::V1 => first_number(&dir.join("cpuacct.usage")).map(Duration::from_nanos),
            Version::V2 => {
                let stat = std::fs::read_to_string(dir.join("cpu.stat"))?;
                keyed(&stat, "usage_usec")
                    .map(Duration::from_micros)
                    .ok_or_else(|| invalid("cpu.stat has no usage_usec"))
            }
        }
    }

    /// The most memory the cgroup has used (v2 `memory.peak`, else `memory.current` on
    /// kernels before 5.19; v1 `memory.max_usage_in_bytes`), in bytes.
    pub fn memory_peak(&self) -> io::Result<u64> {
        let (version, dir) = &self.memory;
        match version {
            Version::V1 => first_number(&dir.join("memory.max_usage_in_bytes")),
            Version::V2 => first_number(&dir.join("memory.peak"))
                .or_else(|_| first_number(&dir.join("memory.current"))),
        }
    }

    /// Memory in use as Cloud Run counts it, less the files on disk: the usage without the
    /// page cache, but with the files on tmpfs (shmem, which the page cache figure includes).
    /// The files written to the writable layer are measured apart.
    pub fn memory_in_use(&self) -> io::Result<u64> {
        let (version, dir) = &self.memory;
        let (usage, cache_key, shmem_key) = match version {
            Version::V1 => (
                first_number(&dir.join("memory.usage_in_bytes"))?,
                "total_cache",
                "total_shmem",
            ),
            Version::V2 => (first_number(&dir.join("memory.current"))?, "file", "shmem"),
        };
        let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        let cache = keyed(&stat, cache_key).unwrap_or(0);
        let shmem = keyed(&stat, shmem_key).unwrap_or(0).min(cache);
        Ok(usage.saturating_sub(cache - shmem))
    }
}

/// A container's CPU limit, held open so a change is a single write.
#[derive(Debug)]
pub struct CpuLimit {
    file: File,
    version: Version,
    period_us: u64,
}

impl CpuLimit {
    /// Limits the cgroup to `millicpu` thousandths of a CPU (at least 1 ms per period, the
    /// kernel's minimum quota).
    pub fn set(&self, millicpu: u64) -> io::Result<()> {
        let quota = (millicpu * self.period_us / 1000).max(1000);
        let text = match self.version {
            Version::V1 => format!("{quota}\n"),
            Version::V2 => format!("{quota} {}\n", self.period_us),
        };
        let written = self.file.write_at(text.as_bytes(), 0)?;
        if written != text.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to the CPU limit",
            ));
        }
        Ok(())
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

/// The number on a file's first line.
fn first_number(path: &Path) -> io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| invalid(&format!("{} holds no number", path.display())))
}

/// `KEY VALUE` lines (`cpu.stat`, `memory.stat`): the value of `key`.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests;
