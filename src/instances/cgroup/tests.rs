use super::*;

/// A fake cgroupfs in a temporary directory, removed when dropped.
struct FakeFs(PathBuf);

impl FakeFs {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "emulate-cgroup-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        FakeFs(dir)
    }

    fn write(&self, path: &str, text: &str) {
        let path = self.0.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.0.join(path)).unwrap()
    }

    fn mountinfo(&self, mounts: &[(&str, &str, &str, &str)]) -> String {
        mounts
            .iter()
            .enumerate()
            .map(|(i, (root, point, fstype, options))| {
                format!(
                    "{} 31 0:{} {root} {}/{point} rw,relatime shared:9 - {fstype} cgroup {options}\n",
                    40 + i,
                    29 + i,
                    self.0.display()
                )
            })
            .collect()
    }
}

impl Drop for FakeFs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const ID: &str = "d734f243d5337a9cd48710e4b7073bf24fa0c940e232a4d87d203ac8b19f3854";

/// A cgroup v1 host with cpu and cpuacct on separate hierarchies (as this engine's host
/// has them), plus an unrelated ext4 mount.
fn v1_host(fs: &FakeFs) -> (String, String) {
    let mut mountinfo = String::from("25 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n");
    mountinfo.push_str(&fs.mountinfo(&[
        ("/", "cpu", "cgroup", "rw,cpu"),
        ("/", "cpuacct", "cgroup", "rw,cpuacct"),
        ("/", "memory", "cgroup", "rw,memory"),
        ("/", "unified", "cgroup2", "rw"),
    ]));
    let proc_cgroup = format!(
        "9:name=systemd:/docker/{ID}\n4:memory:/docker/{ID}\n2:cpuacct:/docker/{ID}\n1:cpu:/docker/{ID}\n0::/docker/{ID}\n"
    );
    fs.write(&format!("cpu/docker/{ID}/cpu.cfs_period_us"), "100000\n");
    fs.write(&format!("cpu/docker/{ID}/cpu.cfs_quota_us"), "100000\n");
    fs.write(&format!("cpuacct/docker/{ID}/cpuacct.usage"), "35939948\n");
    fs.write(
        &format!("memory/docker/{ID}/memory.max_usage_in_bytes"),
        "555745280\n",
    );
    fs.write(
        &format!("memory/docker/{ID}/memory.usage_in_bytes"),
        "300000000\n",
    );
    fs.write(
        &format!("memory/docker/{ID}/memory.stat"),
        "cache 1000\nrss 2000\ntotal_cache 150000000\ntotal_shmem 50000000\n",
    );
    (proc_cgroup, mountinfo)
}

#[test]
fn a_v1_containers_cgroup_is_found_per_controller() {
    let fs = FakeFs::new("v1");
    let (proc_cgroup, mountinfo) = v1_host(&fs);
    let cgroup = Cgroup::find(&proc_cgroup, &mountinfo, ID).expect("found");
    assert_eq!(
        cgroup.cpu,
        (Version::V1, fs.0.join(format!("cpu/docker/{ID}")))
    );
    assert_eq!(
        cgroup.cpu_usage,
        (Version::V1, fs.0.join(format!("cpuacct/docker/{ID}")))
    );
    assert_eq!(
        cgroup.memory,
        (Version::V1, fs.0.join(format!("memory/docker/{ID}")))
    );
    assert_eq!(cgroup.cpu_used().unwrap(), Duration::from_nanos(35_939_948));
    assert_eq!(cgroup.memory_peak().unwrap(), 555_745_280);
    assert_eq!(cgroup.memory_in_use().unwrap(), 200_000_000);
}

#[test]
fn a_v1_cpu_limit_is_written_as_a_quota_of_the_period() {
    let fs = FakeFs::new("v1-limit");
    let (proc_cgroup, mountinfo) = v1_host(&fs);
    let cgroup = Cgroup::find(&proc_cgroup, &mountinfo, ID).unwrap();
    let limit = cgroup.cpu_limit().unwrap();
    let quota = format!("cpu/docker/{ID}/cpu.cfs_quota_us");
    limit.set(50).unwrap();
    assert_eq!(fs.read(&quota).lines().next(), Some("5000"));
    limit.set(2000).unwrap();
    assert_eq!(fs.read(&quota).lines().next(), Some("200000"));
    // Below the kernel's minimum of 1 ms per period: the minimum.
    limit.set(1).unwrap();
    assert_eq!(fs.read(&quota).lines().next(), Some("1000"));
}

#[test]
fn a_combined_cpu_cpuacct_hierarchy_serves_both() {
    let fs = FakeFs::new("v1-combined");
    let mountinfo = fs.mountinfo(&[
        ("/", "cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"),
        ("/", "memory", "cgroup", "rw,memory"),
    ]);
    let proc_cgroup = format!(
        "5:cpu,cpuacct:/system.slice/docker-{ID}.scope\n3:memory:/system.slice/docker-{ID}.scope\n"
    );
    let cgroup = Cgroup::find(&proc_cgroup, &mountinfo, ID).expect("found");
    let dir =
        fs.0.join(format!("cpu,cpuacct/system.slice/docker-{ID}.scope"));
    assert_eq!(cgroup.cpu, (Version::V1, dir.clone()));
    assert_eq!(cgroup.cpu_usage, (Version::V1, dir));
}

#[test]
fn a_v2_containers_cgroup_uses_the_unified_files() {
    let fs = FakeFs::new("v2");
    let mountinfo = fs.mountinfo(&[("/", "cg", "cgroup2", "rw,nsdelegate")]);
    let proc_cgroup = format!("0::/system.slice/docker-{ID}.scope\n");
    let dir = format!("cg/system.slice/docker-{ID}.scope");
    fs.write(
        &format!("{dir}/cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    );
    fs.write(&format!("{dir}/cpu.max"), "100000 100000\n");
    fs.write(
        &format!("{dir}/cpu.stat"),
        "usage_usec 180000\nuser_usec 170000\nsystem_usec 10000\n",
    );
    fs.write(&format!("{dir}/memory.peak"), "555745280\n");
    fs.write(&format!("{dir}/memory.current"), "300000000\n");
    fs.write(
        &format!("{dir}/memory.stat"),
        "anon 1\nfile 1000\nshmem 0\n",
    );
    let cgroup = Cgroup::find(&proc_cgroup, &mountinfo, ID).expect("found");
    assert_eq!(cgroup.cpu.0, Version::V2);
    assert_eq!(cgroup.cpu_used().unwrap(), Duration::from_millis(180));
    assert_eq!(cgroup.memory_peak().unwrap(), 555_745_280);
    assert_eq!(cgroup.memory_in_use().unwrap(), 300_000_000 - 1000);
    let limit = cgroup.cpu_limit().unwrap();
    limit.set(50).unwrap();
    assert_eq!(
        fs.read(&format!("{dir}/cpu.max")).lines().next(),
        Some("5000 100000")
    );
    // A kernel before 5.19 has no memory.peak: the current usage is the best it has.
    std::fs::remove_file(fs.0.join(format!("{dir}/memory.peak"))).unwrap();
    assert_eq!(cgroup.memory_peak().unwrap(), 300_000_000);
}

#[test]
fn a_v2_hierarchy_without_the_cpu_controller_is_not_used() {
    let fs = FakeFs::new("v2-nocpu");
    let mountinfo = fs.mountinfo(&[("/", "cg", "cgroup2", "rw")]);
    let proc_cgroup = format!("0::/docker/{ID}\n");
    fs.write(
        &format!("cg/docker/{ID}/cgroup.controllers"),
        "memory pids\n",
    );
    assert_eq!(Cgroup::find(&proc_cgroup, &mountinfo, ID), None);
}

#[test]
fn a_mount_of_a_sub_tree_is_mapped_and_paths_outside_it_are_refused() {
    let fs = FakeFs::new("ns");
    let (_, _) = v1_host(&fs);
    // Inside a cgroup namespace the mount shows /docker as its root.
    let mountinfo = fs.mountinfo(&[
        ("/docker", "cpu/docker", "cgroup", "rw,cpu"),
        ("/docker", "cpuacct/docker", "cgroup", "rw,cpuacct"),
        ("/docker", "memory/docker", "cgroup", "rw,memory"),
    ]);
    let proc_cgroup =
        format!("4:memory:/docker/{ID}\n2:cpuacct:/docker/{ID}\n1:cpu:/docker/{ID}\n");
    let cgroup = Cgroup::find(&proc_cgroup, &mountinfo, ID).expect("found");
    assert_eq!(cgroup.cpu.1, fs.0.join(format!("cpu/docker/{ID}")));
    let elsewhere = format!("4:memory:/other/{ID}\n2:cpuacct:/other/{ID}\n1:cpu:/other/{ID}\n");
    assert_eq!(Cgroup::find(&elsewhere, &mountinfo, ID), None);
}

#[test]
fn another_process_is_never_taken_for_the_container() {
    let fs = FakeFs::new("other");
    let (_, mountinfo) = v1_host(&fs);
    // A pid from Docker Desktop's VM may name a host process in another cgroup.
    let host_process = "4:memory:/user.slice\n2:cpuacct:/user.slice\n1:cpu:/user.slice\n";
    assert_eq!(Cgroup::find(host_process, &mountinfo, ID), None);
    assert_eq!(Cgroup::find("garbage", &mountinfo, ID), None);
    assert_eq!(Cgroup::find("", "", ID), None);
}

#[test]
fn mount_points_with_escaped_characters_are_read() {
    assert_eq!(unescape(r"/sys/fs/my\040cgroup"), "/sys/fs/my cgroup");
    assert_eq!(unescape(r"/a\\b"), r"/a\\b");
    assert_eq!(unescape(r"/a\134b"), r"/a\b");
}
