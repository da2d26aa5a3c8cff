//! The autoscaler of one revision: from observed concurrency over time to how many instances to start and which idle ones to stop.
//!
//! It follows Knative's KPA, which Cloud Run's scaling resembles. Each
//! instance is aimed at a utilisation below 100% of `containerConcurrency`
//! (70%), so a small rise in traffic finds room before a new instance is up.
//! Demand is averaged over a stable window (60 s) so that a quiet second does
//! not shed instances that the next second needs, and over a short panic
//! window (6 s) so that a burst is met within seconds rather than a minute.
//! While panicking it never scales down. An instance is removed only when the
//! revision does not need it and it has been idle for the idle timeout, which
//! is how Cloud Run keeps idle instances warm for up to 15 minutes.
//!
//! Everything here is a pure function of the observations, the pool's view and
//! `tokio::time::Instant`, so tests pause time instead of sleeping.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::instances::revision::ScalingConfig;

/// Knative's default target utilisation: 70% of `containerConcurrency`.
const DEFAULT_TARGET_UTILIZATION: f64 = 0.7;
/// Knative's default stable window.
const DEFAULT_STABLE_WINDOW: Duration = Duration::from_secs(60);
/// Knative's default panic window, 10% of the stable window.
const DEFAULT_PANIC_WINDOW: Duration = Duration::from_secs(6);
/// Knative's default panic threshold: 200% of the current instances.
const DEFAULT_PANIC_THRESHOLD: f64 = 2.0;
/// The shortest window averaged over, so that a zero idle timeout still
/// averages at least one observation instead of none.
const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Observations closer together than this share one bucket, so a caller that
/// observes on every request does not outweigh the once-a-second ticks.
const BUCKET: Duration = Duration::from_secs(1);
/// Ratios within this of a whole number count as that number, so that
/// a steady `6.3` with concurrency 3 (`6.3 / 2.0999999999999996`) asks for 3
/// instances and not 4.
const EPSILON: f64 = 1e-9;

/// The autoscaler's tuning: Knative's KPA constants, the same for every revision.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// The share of `concurrency` each instance is aimed at.
    pub target_utilization: f64,
    pub stable_window: Duration,
    pub panic_window: Duration,
    /// Panic when the panic-window demand is at least this many times the
    /// current instances.
    pub panic_threshold: f64,
}

impl Tuning {
    /// Knative's defaults for the target, the windows and the panic threshold.
    pub const KNATIVE: Tuning = Tuning {
        target_utilization: DEFAULT_TARGET_UTILIZATION,
        stable_window: DEFAULT_STABLE_WINDOW,
        panic_window: DEFAULT_PANIC_WINDOW,
        panic_threshold: DEFAULT_PANIC_THRESHOLD,
    };
}

/// How one revision scales: its scaling configuration and the tuning.
#[derive(Clone, Debug, PartialEq)]
struct Settings {
    scaling: ScalingConfig,
    tuning: Tuning,
}

impl Settings {
    /// The stable window actually used. It is capped by the idle timeout so
    /// that with a short idle timeout an idle revision reaches zero after that
    /// timeout, not after a minute of remembered traffic.
    fn stable(&self) -> Duration {
        self.tuning
            .stable_window
            .min(self.scaling.idle_timeout)
            .max(MIN_WINDOW)
    }

    /// The panic window actually used, never longer than the stable one.
    fn panic(&self) -> Duration {
        self.tuning.panic_window.min(self.stable()).max(MIN_WINDOW)
    }

    /// The window over which demand must last before the metrics alone start an instance:
    /// the panic window even when a short idle timeout has shrunk the others, so that a
    /// one-second burst is left to the on-demand starts for its waiting requests
    /// (ceil(waiting / concurrency), the pool's job) instead of also buying headroom.
    fn sustained(&self) -> Duration {
        self.tuning.panic_window.max(self.stable())
    }

    /// The concurrency one instance is aimed at. At least one request, since
    /// an instance cannot serve 0.7 of a request.
    fn per_instance(&self) -> f64 {
        (f64::from(self.scaling.concurrency) * self.tuning.target_utilization).max(1.0)
    }

    /// Instances needed for an average concurrency, rounded up.
    fn instances_for(&self, average: f64) -> u32 {
        let ratio = average / self.per_instance();
        if ratio <= EPSILON {
            0
        } else {
            // `as` saturates, so an absurd average asks for u32::MAX and the
            // max-instances clamp takes care of it.
            (ratio - EPSILON).ceil() as u32
        }
    }
}

/// What the pool looks like now.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub starting: u32,
    /// One entry per ready instance (not draining): Some(how long it has been idle) when it has no request in flight, None when busy.
    pub idle_for: Vec<Option<Duration>>,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Decision {
    pub desired: u32,
    pub start: u32,
    /// Indices into `View::idle_for` of instances to drain and stop, longest idle first.
    pub stop: Vec<usize>,
    pub panicking: bool,
    /// True when `start` is (at least partly) due to min instances rather than traffic, so the caller logs Cloud Run's reason MANUAL_OR_CUSTOMER_MIN_INSTANCE instead of AUTOSCALING.
    pub for_min_instances: bool,
}

/// The observations of one second (or less), averaged so that how often the
/// caller observes does not change the weight of that second.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    at: Instant,
    sum: f64,
    count: u32,
}

impl Bucket {
    fn mean(&self) -> f64 {
        self.sum / f64::from(self.count)
    }
}

/// The scaling state of one revision.
#[derive(Debug)]
pub struct Autoscaler {
    settings: Settings,
    /// Observations in the stable window, oldest first.
    buckets: VecDeque<Bucket>,
    /// The last time the panic condition held, while panicking.
    panic_held_at: Option<Instant>,
    /// The highest desired count seen during the current panic, so that a
    /// burst that fades from the panic window does not shrink the pool.
    panic_peak: u32,
}

impl Autoscaler {
    /// An autoscaler for a revision that scales as `scaling` says, with Knative's tuning.
    pub fn new(scaling: &ScalingConfig) -> Self {
        Autoscaler {
            settings: Settings {
                scaling: scaling.clone(),
                tuning: Tuning::KNATIVE,
            },
            buckets: VecDeque::new(),
            panic_held_at: None,
            panic_peak: 0,
        }
    }

    /// Records the concurrency seen now (in flight + waiting). Called about once a second, and may be called more often.
    pub fn observe(&mut self, now: Instant, concurrency: f64) {
        // A negative or NaN reading is a caller bug; counting it as no demand
        // is safer than letting it cancel out real demand.
        let concurrency = concurrency.max(0.0);
        match self.buckets.back_mut() {
            Some(last) if now.saturating_duration_since(last.at) < BUCKET => {
                last.sum += concurrency;
                last.count += 1;
            }
            _ => self.buckets.push_back(Bucket {
                at: now,
                sum: concurrency,
                count: 1,
            }),
        }
        self.forget_before(now);
    }

    pub fn decide(&mut self, now: Instant, view: &View) -> Decision {
        self.forget_before(now);
        let settings = &self.settings;
        let stable_window = settings.stable();

        let desired_stable = settings.instances_for(self.average(now, stable_window));
        let desired_panic = settings.instances_for(self.average(now, settings.panic()));

        let ready = u32::try_from(view.idle_for.len()).unwrap_or(u32::MAX);
        let current = ready.saturating_add(view.starting);

        let burst = f64::from(desired_panic)
            >= settings.tuning.panic_threshold * f64::from(current.max(1))
            && desired_panic > current;
        if burst {
            self.panic_held_at = Some(now);
        }
        if let Some(held_at) = self.panic_held_at {
            if now.saturating_duration_since(held_at) >= stable_window {
                self.panic_held_at = None;
                self.panic_peak = 0;
            }
        }
        let panicking = self.panic_held_at.is_some();

        let unclamped = if panicking {
            let desired = desired_panic.max(self.panic_peak).max(current);
            self.panic_peak = desired;
            desired
        } else {
            desired_stable
        };
        // Min instances are a promise to keep instances up, so they win over a
        // max that is (wrongly) set below them.
        let min = settings.scaling.min_instances;
        let desired = unclamped
            .min(settings.scaling.max_instances.max(min))
            .max(min);

        let desired_sustained = settings.instances_for(self.average(now, settings.sustained()));
        let start = desired
            .min(desired_sustained.max(min))
            .saturating_sub(current);
        let for_min_instances = unclamped < min && start > 0;

        let stop = if panicking || ready <= desired {
            Vec::new()
        } else {
            let surplus = (ready - desired) as usize;
            let mut idle: Vec<(usize, Duration)> = view
                .idle_for
                .iter()
                .enumerate()
                .filter_map(|(index, idle)| idle.map(|idle| (index, idle)))
                .filter(|&(_, idle)| idle >= settings.scaling.idle_timeout)
                .collect();
            // A stable sort keeps equally idle instances in index order, so the
            // choice is deterministic.
            idle.sort_by_key(|&(_, idle)| std::cmp::Reverse(idle));
            idle.into_iter()
                .take(surplus)
                .map(|(index, _)| index)
                .collect()
        };

        Decision {
            desired,
            start,
            stop,
            panicking,
            for_min_instances,
        }
    }

    /// The mean of the buckets younger than `window`, or 0 with none. Seconds
    /// without an observation are left out rather than counted as zero, as in
    /// Knative, because a missed tick says nothing about demand.
    fn average(&self, now: Instant, window: Duration) -> f64 {
        let (sum, count) = self
            .buckets
            .iter()
            .rev()
            .take_while(|b| now.saturating_duration_since(b.at) < window)
            .fold((0.0, 0u32), |(sum, count), b| (sum + b.mean(), count + 1));
        if count == 0 {
            0.0
        } else {
            sum / f64::from(count)
        }
    }

    /// Drops buckets that have left the stable window, which bounds memory to
    /// about one bucket per second of the window.
    fn forget_before(&mut self, now: Instant) {
        let window = self.settings.sustained();
        while let Some(first) = self.buckets.front() {
            if now.saturating_duration_since(first.at) < window {
                break;
            }
            self.buckets.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const SECOND: Duration = Duration::from_secs(1);
    const FIFTEEN_MINUTES: Duration = Duration::from_secs(15 * 60);

    /// Observes `concurrency` once a second for `seconds` seconds, advancing
    /// paused time first so that the last observation is at `Instant::now()`.
    async fn run(scaler: &mut Autoscaler, concurrency: f64, seconds: u64) {
        for _ in 0..seconds {
            advance(SECOND).await;
            scaler.observe(Instant::now(), concurrency);
        }
    }

    fn decide(scaler: &mut Autoscaler, view: &View) -> Decision {
        scaler.decide(Instant::now(), view)
    }

    fn ready(idle_for: &[Option<Duration>]) -> View {
        View {
            starting: 0,
            idle_for: idle_for.to_vec(),
        }
    }

    fn idle(seconds: u64) -> Option<Duration> {
        Some(Duration::from_secs(seconds))
    }

    /// An autoscaler for a revision that scales as these settings say.
    fn autoscaler(
        concurrency: u32,
        min_instances: u32,
        max_instances: u32,
        idle_timeout: Duration,
    ) -> Autoscaler {
        Autoscaler::new(&ScalingConfig {
            concurrency,
            min_instances,
            max_instances,
            idle_timeout,
        })
    }

    #[test]
    fn new_uses_knative_defaults() {
        // Only what `new` decides by itself: Knative's KPA defaults.
        let tuning = autoscaler(80, 1, 100, FIFTEEN_MINUTES).settings.tuning;
        assert_eq!(tuning.target_utilization, 0.7);
        assert_eq!(tuning.stable_window, Duration::from_secs(60));
        assert_eq!(tuning.panic_window, Duration::from_secs(6));
        assert_eq!(tuning.panic_threshold, 2.0);
    }

    #[tokio::test(start_paused = true)]
    async fn burst_at_zero_panics_and_starts_enough() {
        let mut scaler = autoscaler(80, 0, 100, FIFTEEN_MINUTES);
        scaler.observe(Instant::now(), 100.0);
        let decision = decide(&mut scaler, &View::default());
        // ceil(100 / (80 * 0.7)) = ceil(100 / 56) = 2.
        assert_eq!(
            decision,
            Decision {
                desired: 2,
                start: 2,
                stop: vec![],
                panicking: true,
                for_min_instances: false,
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_idle_timeout_does_not_turn_a_burst_into_extra_instances() {
        // The herd: idle at zero, then 100 requests at once with concurrency 10. The pool
        // starts ceil(100 / 10) = 10 for the waiting requests; the metrics add none.
        let mut scaler = autoscaler(10, 0, 100, SECOND);
        run(&mut scaler, 0.0, 5).await;
        run(&mut scaler, 100.0, 1).await;
        let view = View {
            starting: 10,
            idle_for: vec![],
        };
        assert_eq!(decide(&mut scaler, &view).start, 0);
        // The same demand lasting the panic window is lasting demand: 70% of 10 per
        // instance asks for ceil(100 / 7) = 15.
        run(&mut scaler, 100.0, 6).await;
        let busy = ready(&[None; 10]);
        assert_eq!(decide(&mut scaler, &busy).start, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn starting_instances_count_toward_current() {
        let mut scaler = autoscaler(80, 0, 100, FIFTEEN_MINUTES);
        scaler.observe(Instant::now(), 100.0);
        assert_eq!(decide(&mut scaler, &View::default()).start, 2);
        let view = View {
            starting: 2,
            idle_for: vec![],
        };
        let decision = decide(&mut scaler, &view);
        assert_eq!(decision.desired, 2);
        assert_eq!(decision.start, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn steady_load_holds_the_current_instances() {
        let mut scaler = autoscaler(80, 0, 100, FIFTEEN_MINUTES);
        let view = ready(&[None, None]);
        for _ in 0..120 {
            run(&mut scaler, 112.0, 1).await;
            let decision = decide(&mut scaler, &view);
            // 112 / (80 * 0.7) = 2: the target is reached, not exceeded.
            assert_eq!(
                decision,
                Decision {
                    desired: 2,
                    start: 0,
                    stop: vec![],
                    panicking: false,
                    for_min_instances: false,
                }
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn floating_noise_does_not_add_an_instance() {
        let mut scaler = autoscaler(3, 0, 100, FIFTEEN_MINUTES);
        run(&mut scaler, 6.3, 60).await;
        // 6.3 / (3 * 0.7) is 3.0000000000000004 in floating point.
        let decision = decide(&mut scaler, &ready(&[None, None, None]));
        assert_eq!(decision.desired, 3);
        assert_eq!(decision.start, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn rising_load_scales_up_without_panic() {
        let mut scaler = autoscaler(80, 0, 100, FIFTEEN_MINUTES);
        run(&mut scaler, 112.0, 60).await;
        run(&mut scaler, 168.0, 60).await;
        let decision = decide(&mut scaler, &ready(&[None, None]));
        assert!(!decision.panicking);
        assert_eq!(decision.desired, 3);
        assert_eq!(decision.start, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_instances_stop_only_after_idle_timeout_and_only_down_to_min() {
        let timeout = Duration::from_secs(5);
        let mut scaler = autoscaler(80, 1, 10, timeout);
        run(&mut scaler, 150.0, 10).await;
        // Traffic stops; for 4 s the instances are idle but not long enough.
        run(&mut scaler, 0.0, 4).await;
        let decision = decide(&mut scaler, &ready(&[idle(4), idle(4), idle(4)]));
        assert!(decision.stop.is_empty(), "{decision:?}");
        assert_eq!(decision.start, 0);

        run(&mut scaler, 0.0, 1).await;
        let decision = decide(&mut scaler, &ready(&[idle(5), idle(6), idle(5)]));
        assert_eq!(decision.desired, 1);
        assert!(!decision.panicking);
        // Longest idle first, then in index order; one is kept for min 1.
        assert_eq!(decision.stop, vec![1, 0]);

        // Once down to min, nothing more is stopped however long it idles.
        run(&mut scaler, 0.0, 600).await;
        let decision = decide(&mut scaler, &ready(&[idle(605)]));
        assert_eq!(decision.desired, 1);
        assert!(decision.stop.is_empty());
        assert_eq!(decision.start, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn scales_to_zero_after_idle_timeout_with_min_zero() {
        let timeout = Duration::from_secs(5);
        let mut scaler = autoscaler(80, 0, 10, timeout);
        run(&mut scaler, 40.0, 10).await;
        assert_eq!(decide(&mut scaler, &ready(&[None])).desired, 1);

        run(&mut scaler, 0.0, 4).await;
        let decision = decide(&mut scaler, &ready(&[idle(4)]));
        assert_eq!(decision.desired, 1, "the 40 is still in the window");
        assert!(decision.stop.is_empty());

        run(&mut scaler, 0.0, 1).await;
        let decision = decide(&mut scaler, &ready(&[idle(5)]));
        assert_eq!(
            decision,
            Decision {
                desired: 0,
                start: 0,
                stop: vec![0],
                panicking: false,
                for_min_instances: false,
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stable_window_caps_at_a_long_idle_timeout() {
        let mut scaler = autoscaler(80, 0, 10, FIFTEEN_MINUTES);
        run(&mut scaler, 40.0, 10).await;
        run(&mut scaler, 0.0, 59).await;
        assert_eq!(decide(&mut scaler, &ready(&[idle(59)])).desired, 1);
        run(&mut scaler, 0.0, 1).await;
        // Demand is gone after 60 s, but the instance stays until 15 min idle.
        let decision = decide(&mut scaler, &ready(&[idle(60)]));
        assert_eq!(decision.desired, 0);
        assert!(decision.stop.is_empty());
        run(&mut scaler, 0.0, 840).await;
        assert_eq!(decide(&mut scaler, &ready(&[idle(900)])).stop, vec![0]);
    }

    #[tokio::test(start_paused = true)]
    async fn max_instances_bounds_start() {
        let mut scaler = autoscaler(80, 0, 3, FIFTEEN_MINUTES);
        scaler.observe(Instant::now(), 10_000.0);
        let decision = decide(&mut scaler, &View::default());
        assert_eq!(decision.desired, 3);
        assert_eq!(decision.start, 3);
        assert!(decision.panicking);
        assert!(!decision.for_min_instances);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_one_needs_one_instance_per_request() {
        let mut scaler = autoscaler(1, 0, 100, FIFTEEN_MINUTES);
        run(&mut scaler, 10.0, 120).await;
        let decision = decide(&mut scaler, &ready(&[None; 10]));
        assert_eq!(decision.desired, 10);
        assert_eq!(decision.start, 0);
        assert!(!decision.panicking);

        let mut scaler = autoscaler(1, 0, 100, FIFTEEN_MINUTES);
        scaler.observe(Instant::now(), 10.0);
        let decision = decide(&mut scaler, &View::default());
        assert_eq!(decision.desired, 10);
        assert_eq!(decision.start, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn no_scale_down_while_panicking() {
        let mut scaler = autoscaler(80, 0, 100, FIFTEEN_MINUTES);
        let long_idle = Some(Duration::from_secs(20 * 60));
        scaler.observe(Instant::now(), 1000.0);
        let decision = decide(&mut scaler, &ready(&[long_idle, long_idle]));
        // ceil(1000 / 56) = 18 >= 2 * 2.
        assert!(decision.panicking);
        assert_eq!(decision.desired, 18);
        assert_eq!(decision.start, 16);

        // The burst has left the panic window and the two ready instances are
        // idle, but the panic holds the pool until a stable window passes.
        run(&mut scaler, 0.0, 59).await;
        let view = View {
            starting: 0,
            idle_for: vec![long_idle; 18],
        };
        let decision = decide(&mut scaler, &view);
        assert!(decision.panicking);
        assert_eq!(decision.desired, 18);
        assert!(decision.stop.is_empty());

        run(&mut scaler, 0.0, 1).await;
        let decision = decide(&mut scaler, &view);
        assert!(!decision.panicking);
        assert_eq!(decision.desired, 0);
        assert_eq!(decision.stop, (0..18).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn panic_keeps_its_peak_as_the_burst_fades() {
        let mut scaler = autoscaler(80, 0, 100, FIFTEEN_MINUTES);
        scaler.observe(Instant::now(), 1000.0);
        assert_eq!(decide(&mut scaler, &View::default()).desired, 18);
        // The 18 came up and the burst is over: the peak holds, none is stopped, yet none
        // is started either, as the demand did not last.
        run(&mut scaler, 0.0, 10).await;
        let decision = decide(&mut scaler, &ready(&[idle(10); 18]));
        assert!(decision.panicking);
        assert_eq!(decision.desired, 18);
        assert!(decision.stop.is_empty());
        let decision = decide(&mut scaler, &ready(&[idle(10); 10]));
        assert_eq!(decision.desired, 18);
        assert_eq!(decision.start, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_instance_is_never_stopped() {
        let mut scaler = autoscaler(80, 0, 10, Duration::from_secs(5));
        run(&mut scaler, 0.0, 10).await;
        let decision = decide(&mut scaler, &ready(&[None, idle(600), None]));
        assert_eq!(decision.desired, 0);
        assert_eq!(decision.stop, vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn min_instances_start_is_flagged_at_zero_traffic() {
        let mut scaler = autoscaler(80, 2, 10, FIFTEEN_MINUTES);
        let decision = decide(&mut scaler, &View::default());
        assert_eq!(
            decision,
            Decision {
                desired: 2,
                start: 2,
                stop: vec![],
                panicking: false,
                for_min_instances: true,
            }
        );
        // Once they are up there is nothing more to start or flag.
        let decision = decide(&mut scaler, &ready(&[idle(0), idle(0)]));
        assert_eq!(decision.start, 0);
        assert!(!decision.for_min_instances);
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_above_min_is_not_flagged() {
        let mut scaler = autoscaler(80, 2, 10, FIFTEEN_MINUTES);
        // ceil(300 / 56) = 6, above min 2.
        scaler.observe(Instant::now(), 300.0);
        let decision = decide(&mut scaler, &View::default());
        assert_eq!(decision.start, 6);
        assert!(!decision.for_min_instances);
    }

    #[tokio::test(start_paused = true)]
    async fn observations_within_a_second_share_one_bucket() {
        let mut scaler = autoscaler(80, 0, 100, FIFTEEN_MINUTES);
        // One 112 tick, then a caller that observes 0 ten times in the next
        // second: two seconds averaging 56, not eleven samples averaging 10.
        scaler.observe(Instant::now(), 112.0);
        advance(SECOND).await;
        for _ in 0..10 {
            scaler.observe(Instant::now(), 0.0);
            advance(Duration::from_millis(50)).await;
        }
        let decision = decide(&mut scaler, &ready(&[None]));
        assert_eq!(decision.desired, 1);
        assert_eq!(scaler.buckets.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn old_samples_are_dropped() {
        let mut scaler = autoscaler(80, 0, 100, FIFTEEN_MINUTES);
        run(&mut scaler, 10.0, 300).await;
        assert_eq!(scaler.buckets.len(), 60);
    }

    #[tokio::test(start_paused = true)]
    async fn no_samples_means_no_demand() {
        let mut scaler = autoscaler(80, 0, 100, FIFTEEN_MINUTES);
        assert_eq!(decide(&mut scaler, &View::default()), Decision::default());
    }
}
