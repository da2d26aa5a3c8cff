use std::path::{Path, PathBuf};

use super::*;
use crate::instances::cgroup::Version;

/// A container's cgroup v1 directories on a fake cgroupfs, removed when dropped.
struct FakeCgroup {
    dir: PathBuf,
    cgroup: Cgroup,
}

impl FakeCgroup {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "emulate-throttle-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        for (sub, files) in [
            (
                "cpu",
                &[
                    ("cpu.cfs_period_us", "100000\n"),
                    ("cpu.cfs_quota_us", "100000\n"),
                ][..],
            ),
            ("cpuacct", &[("cpuacct.usage", "0\n")][..]),
            (
                "memory",
                &[("memory.max_usage_in_bytes", "536870912\n")][..],
            ),
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            for (name, text) in files {
                std::fs::write(dir.join(sub).join(name), text).unwrap();
            }
        }
        let cgroup = Cgroup {
            cpu: (Version::V1, dir.join("cpu")),
            cpu_usage: (Version::V1, dir.join("cpuacct")),
            memory: (Version::V1, dir.join("memory")),
        };
        FakeCgroup { dir, cgroup }
    }

    fn quota(&self) -> u64 {
        first(&self.dir.join("cpu/cpu.cfs_quota_us"))
    }

    /// The container has used `ms` more milliseconds of CPU.
    fn use_cpu(&self, ms: u64) {
        let path = self.dir.join("cpuacct/cpuacct.usage");
        let used = first(&path) + ms * 1_000_000;
        std::fs::write(path, format!("{used}\n")).unwrap();
    }

    fn activity(&self, policy: CpuPolicy) -> Activity {
        let limit = self.cgroup.cpu_limit().unwrap();
        Activity::new(policy, Control::Direct(limit), Some(self.cgroup.clone()))
    }
}

impl Drop for FakeCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn first(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().next().unwrap().trim().parse().unwrap()
}

const THROTTLED: CpuPolicy = CpuPolicy {
    throttling: true,
    full_millicpu: 1000,
    boost_millicpu: None,
};

#[tokio::test(start_paused = true)]
async fn the_cpu_is_throttled_between_requests_and_restored_for_one() {
    let fake = FakeCgroup::new();
    let activity = fake.activity(THROTTLED);
    // Ready, never asked: throttled at the next look.
    activity.tick();
    assert_eq!(fake.quota(), 5000);
    activity.begin();
    assert_eq!(fake.quota(), 100_000);
    // A second request in flight changes nothing; the first to end changes nothing.
    activity.begin();
    activity.end(Some("GET /a".into()));
    assert_eq!(fake.quota(), 100_000);
    activity.end(Some("GET /b".into()));
    assert_eq!(fake.quota(), 5000);
    assert_eq!(activity.applied(), Some(IDLE_MILLICPU));
}

#[tokio::test(start_paused = true)]
async fn instance_based_billing_never_changes_the_limit() {
    let fake = FakeCgroup::new();
    let activity = fake.activity(CpuPolicy {
        throttling: false,
        ..THROTTLED
    });
    activity.tick();
    activity.begin();
    activity.end(Some("GET /".into()));
    fake.use_cpu(500);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(activity.tick(), []);
    assert_eq!(fake.quota(), 100_000);
}

#[tokio::test(start_paused = true)]
async fn the_startup_boost_lasts_ten_seconds_after_ready() {
    let fake = FakeCgroup::new();
    let policy = CpuPolicy {
        boost_millicpu: Some(2000),
        ..THROTTLED
    };
    let activity = fake.activity(policy);
    // A request during the boost gets the boosted limit; idle is still throttled.
    activity.begin();
    assert_eq!(fake.quota(), 200_000);
    activity.end(Some("GET /".into()));
    assert_eq!(fake.quota(), 5000);
    activity.begin();
    assert_eq!(fake.quota(), 200_000);
    tokio::time::advance(BOOST_AFTER_READY).await;
    activity.tick();
    assert_eq!(
        fake.quota(),
        100_000,
        "busy after the boost: the revision's CPU"
    );
    activity.end(Some("GET /".into()));
    assert_eq!(fake.quota(), 5000);
}

#[test]
fn the_boost_doubles_the_cpu_within_cloud_runs_and_the_hosts_bounds() {
    let mut container = crate::instances::instance::RevisionSpec::example("a")
        .config
        .container;
    container.startup_cpu_boost = true;
    let mut boost = |cpu, host| {
        container.cpu_millis = cpu;
        CpuPolicy::of(&container, host).boost_millicpu
    };
    assert_eq!(boost(1000, 16_000), Some(2000));
    assert_eq!(boost(500, 16_000), Some(1000));
    assert_eq!(boost(8000, 16_000), None);
    assert_eq!(boost(6000, 16_000), Some(8000));
    assert_eq!(boost(1000, 2000), Some(2000));
    assert_eq!(boost(2000, 2000), None, "no more than the host has");
    container.startup_cpu_boost = false;
    assert_eq!(CpuPolicy::of(&container, 16_000).boost_millicpu, None);
}

#[tokio::test(start_paused = true)]
async fn cpu_used_after_a_response_is_a_finding_once_the_work_stops() {
    let fake = FakeCgroup::new();
    let activity = fake.activity(THROTTLED);
    activity.begin();
    activity.end(Some("GET /report".into()));
    tokio::time::advance(Duration::from_secs(1)).await;
    fake.use_cpu(120);
    assert_eq!(activity.tick(), [], "still working");
    tokio::time::advance(Duration::from_secs(1)).await;
    fake.use_cpu(60);
    assert_eq!(activity.tick(), []);
    tokio::time::advance(Duration::from_secs(1)).await;
    let findings = activity.tick();
    let expected = Finding {
        after: "GET /report".into(),
        lines: 0,
        cpu: Duration::from_millis(180),
    };
    assert_eq!(findings, std::slice::from_ref(&expected));
    assert_eq!(
        expected.what(),
        "180 ms of CPU after the response to GET /report"
    );
    assert!(expected
        .warning("app-00001-abc")
        .contains("on Cloud Run this work is throttled"));
}

#[tokio::test(start_paused = true)]
async fn an_idle_runtimes_trickle_of_cpu_is_not_work() {
    let fake = FakeCgroup::new();
    let activity = fake.activity(THROTTLED);
    activity.begin();
    activity.end(Some("GET /".into()));
    for _ in 0..30 {
        tokio::time::advance(Duration::from_secs(1)).await;
        fake.use_cpu(1);
        assert_eq!(activity.tick(), []);
    }
    assert_eq!(activity.settle(), []);
}

#[tokio::test(start_paused = true)]
async fn log_lines_count_after_the_response_only() {
    let fake = FakeCgroup::new();
    let activity = fake.activity(THROTTLED);
    // Before any request: the startup phase, not counted.
    activity.log_line(None);
    assert_eq!(activity.settle(), []);
    activity.begin();
    activity.log_line(None);
    activity.end(Some("GET /report".into()));
    let now = SystemTime::now();
    // Stamped just before the response ended: the request's own line, late.
    activity.log_line(Some(now - Duration::from_millis(5)));
    activity.log_line(Some(now + Duration::from_millis(300)));
    activity.log_line(Some(now + Duration::from_millis(400)));
    fake.use_cpu(200);
    let findings = activity.settle();
    assert_eq!(
        findings.iter().map(Finding::what).collect::<Vec<_>>(),
        ["2 log lines and 200 ms of CPU after the response to GET /report"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_is_not_the_apps_work() {
    let fake = FakeCgroup::new();
    let activity = fake.activity(THROTTLED);
    activity.begin();
    activity.end(Some("GET /".into()));
    tokio::time::advance(Duration::from_secs(1)).await;
    activity.tick();
    // A liveness probe: full CPU, its CPU and lines not counted.
    activity.begin();
    assert_eq!(fake.quota(), 100_000);
    fake.use_cpu(50);
    activity.log_line(None);
    activity.end(None);
    assert_eq!(fake.quota(), 5000);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(activity.tick(), []);
    assert_eq!(activity.settle(), []);
}

#[tokio::test(start_paused = true)]
async fn work_cut_short_by_the_next_request_is_reported_too() {
    let fake = FakeCgroup::new();
    let activity = fake.activity(THROTTLED);
    activity.begin();
    activity.end(Some("POST /jobs".into()));
    fake.use_cpu(40);
    activity.begin();
    let findings = activity.tick();
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].after, "POST /jobs");
    assert_eq!(findings[0].cpu, Duration::from_millis(40));
}

#[tokio::test(start_paused = true)]
async fn the_memory_peak_is_kept_after_the_cgroup_is_gone() {
    let fake = FakeCgroup::new();
    let activity = fake.activity(THROTTLED);
    assert_eq!(activity.memory_peak(), None);
    assert_eq!(activity.sample_memory_peak(), Some(512 << 20));
    std::fs::remove_dir_all(fake.dir.join("memory")).unwrap();
    assert_eq!(activity.sample_memory_peak(), Some(512 << 20));
}

#[tokio::test(start_paused = true)]
async fn through_the_engine_the_wanted_limit_is_handed_to_a_task() {
    let (wanted, mut seen) = tokio::sync::watch::channel(1000);
    let activity = Activity::new(THROTTLED, Control::Engine(wanted), None);
    activity.begin();
    activity.end(Some("GET /".into()));
    assert!(seen.has_changed().unwrap());
    assert_eq!(*seen.borrow_and_update(), IDLE_MILLICPU);
    activity.begin();
    assert_eq!(*seen.borrow_and_update(), 1000);
    assert!(!activity.direct());
}
