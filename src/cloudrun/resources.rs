//! Cloud Run's resource rules: which CPU values exist, which memory goes with which CPU (per
//! execution environment), and what a fractional CPU allows. Pure data and checks, tested
//! table-first from the documented limits:
//! - CPU: 1, 2, 4, 6 or 8, or from 0.08 to less than 1 in steps of 0.01; below 1 CPU,
//!   concurrency must be 1 and CPU is only allocated during requests
//!   (firebaseapphosting v1 `RunConfig.cpu`, quoting Cloud Run's docs);
//! - memory needs a minimum CPU: more than 4 GiB 2, more than 8 GiB 4, more than 16 GiB 6,
//!   more than 24 GiB 8 (cloud.google.com/run/docs/configuring/services/memory-limits); and
//!   below 1 CPU: 128 MiB .083, 256 MiB .167, 512 MiB .333, 1 GiB .583, 2 GiB 1
//!   (cloud.google.com/functions/docs/configuring/memory);
//! - CPU needs a minimum memory: 4 CPUs at least 2 GiB, 6 and 8 CPUs at least 4 GiB;
//! - memory is at least 128 MiB (first generation) or 512 MiB (second), at most 32 GiB.

/// Which execution environment a revision asks for (`run.googleapis.com/execution-environment`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExecutionEnvironment {
    /// No annotation: Cloud Run picks; the first generation's limits apply.
    #[default]
    Default,
    Gen1,
    Gen2,
}

pub const EXECUTION_ENVIRONMENT_ANNOTATION: &str = "run.googleapis.com/execution-environment";

const MI: u64 = 1 << 20;
const GI: u64 = 1 << 30;

impl ExecutionEnvironment {
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "gen1" => Some(ExecutionEnvironment::Gen1),
            "gen2" => Some(ExecutionEnvironment::Gen2),
            _ => None,
        }
    }

    fn minimum_memory(self) -> u64 {
        match self {
            ExecutionEnvironment::Gen2 => 512 * MI,
            _ => 128 * MI,
        }
    }
}

/// Which field a rule refuses, and Cloud Run's words for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `cpu` or `memory` (under the container's `resources.limits`).
    pub field: &'static str,
    pub message: String,
}

/// A CPU amount as Cloud Run writes it: `1.0`, `2.0`, `0.5`, `0.08`.
pub fn cpu_text(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}.0", millis / 1000)
    } else {
        let text = format!("{:.3}", millis as f64 / 1000.0);
        text.trim_end_matches('0').to_string()
    }
}

/// A memory amount as Cloud Run writes it: `512Mi`, `4Gi`.
pub fn memory_text(bytes: u64) -> String {
    if bytes.is_multiple_of(GI) {
        format!("{}Gi", bytes / GI)
    } else {
        format!("{}Mi", bytes.div_ceil(MI))
    }
}

/// Whether Cloud Run offers this CPU amount.
pub fn cpu_is_offered(millis: u64) -> bool {
    matches!(millis, 1000 | 2000 | 4000 | 6000 | 8000)
        || ((80..1000).contains(&millis) && millis.is_multiple_of(10))
}

/// The memory a CPU amount allows: (least, most).
pub fn memory_range(cpu_millis: u64, environment: ExecutionEnvironment) -> (u64, u64) {
    let most = match cpu_millis {
        0..=166 => 128 * MI,
        167..=332 => 256 * MI,
        333..=582 => 512 * MI,
        583..=999 => GI,
        1000..=1999 => 4 * GI,
        2000..=3999 => 8 * GI,
        4000..=5999 => 16 * GI,
        6000..=7999 => 24 * GI,
        _ => 32 * GI,
    };
    let for_cpu = match cpu_millis {
        4000..=5999 => 2 * GI,
        6000.. => 4 * GI,
        _ => 0,
    };
    (environment.minimum_memory().max(for_cpu), most)
}

/// Checks a revision's resources as Cloud Run does at deploy. `concurrency` is the value the
/// user set (`None`: the default, which follows the CPU); `cpu_always_allocated` is
/// instance-based billing (`run.googleapis.com/cpu-throttling: "false"`).
pub fn check(
    cpu_millis: u64,
    memory_bytes: u64,
    concurrency: Option<u32>,
    environment: ExecutionEnvironment,
    cpu_always_allocated: bool,
) -> Result<(), Refusal> {
    let cpu = cpu_text(cpu_millis);
    if !cpu_is_offered(cpu_millis) {
        return Err(Refusal {
            field: "cpu",
            message: format!(
                "Invalid value specified for cpu. {cpu} is not offered: CPU is 1, 2, 4, 6 or 8, or from 0.08 to less than 1 in steps of 0.01."
            ),
        });
    }
    if cpu_millis < 1000 && concurrency.is_some_and(|n| n > 1) {
        return Err(Refusal {
            field: "cpu",
            message: "Invalid value specified for cpu. Total cpu < 1 is not supported with concurrency > 1.".into(),
        });
    }
    if cpu_millis < 1000 && cpu_always_allocated {
        return Err(Refusal {
            field: "cpu",
            message: "Invalid value specified for cpu. Total cpu < 1 is not supported with CPU always allocated (run.googleapis.com/cpu-throttling: \"false\"): below 1 CPU, CPU is only allocated during requests.".into(),
        });
    }
    let (least, most) = memory_range(cpu_millis, environment);
    if least > most {
        return Err(Refusal {
            field: "cpu",
            message: format!(
                "Invalid value specified for cpu with gen2 execution environment. {cpu} CPU allows at most {} of memory, below the {} the second generation needs; use at least 0.333 CPU.",
                memory_text(most),
                memory_text(least)
            ),
        });
    }
    if !(least..=most).contains(&memory_bytes) {
        let environment = match environment {
            ExecutionEnvironment::Gen2 => " with gen2 execution environment",
            _ => "",
        };
        return Err(Refusal {
            field: "memory",
            message: format!(
                "Invalid value specified for memory{environment}. For {cpu} CPU, memory must be between {} and {} inclusive.",
                memory_text(least),
                memory_text(most)
            ),
        });
    }
    Ok(())
}

/// Cloud Run's maximum number of environment variables per container
/// (cloud.google.com/run/docs/configuring/services/overview-environment-variables).
pub const MAX_ENV_VARS: usize = 1000;

#[cfg(test)]
mod tests {
    use super::ExecutionEnvironment::{Default as Any, Gen1, Gen2};
    use super::*;

    /// (cpu millis, memory, concurrency, environment, always allocated) → refused field.
    #[test]
    fn the_documented_combinations() {
        type Case = (
            u64,
            u64,
            Option<u32>,
            ExecutionEnvironment,
            bool,
            Option<&'static str>,
        );
        let cases: &[Case] = &[
            // Defaults, and the documented edges of 1 CPU.
            (1000, 512 * MI, None, Any, false, None),
            (1000, 128 * MI, None, Any, false, None),
            (1000, 4 * GI, Some(80), Any, false, None),
            (1000, 4 * GI + MI, None, Any, false, Some("memory")),
            // More than 4 GiB needs 2 CPUs, more than 8 GiB 4, more than 16 GiB 6, more than 24 GiB 8.
            (2000, 8 * GI, None, Any, false, None),
            (2000, 9 * GI, None, Any, false, Some("memory")),
            (4000, 16 * GI, None, Any, false, None),
            (4000, 17 * GI, None, Any, false, Some("memory")),
            (6000, 24 * GI, None, Any, false, None),
            (8000, 32 * GI, None, Any, false, None),
            // 4 CPUs need at least 2 GiB, 6 and 8 at least 4 GiB.
            (4000, GI, None, Any, false, Some("memory")),
            (4000, 2 * GI, None, Any, false, None),
            (6000, 2 * GI, None, Any, false, Some("memory")),
            (8000, 4 * GI, None, Any, false, None),
            // Offered CPU values.
            (3000, 4 * GI, None, Any, false, Some("cpu")),
            (1500, GI, None, Any, false, Some("cpu")),
            (505, 512 * MI, None, Any, false, Some("cpu")),
            (500, 512 * MI, None, Any, false, None),
            (80, 128 * MI, None, Any, false, None),
            // Below 1 CPU: concurrency 1, CPU during requests only, little memory.
            (500, 512 * MI, Some(1), Any, false, None),
            (500, 512 * MI, Some(2), Any, false, Some("cpu")),
            (500, 512 * MI, None, Any, true, Some("cpu")),
            (500, GI, None, Any, false, Some("memory")),
            (600, GI, None, Any, false, None),
            (200, 256 * MI, None, Any, false, None),
            // The execution environment's minimum memory.
            (1000, 256 * MI, None, Gen1, false, None),
            (1000, 256 * MI, None, Gen2, false, Some("memory")),
            (1000, 512 * MI, None, Gen2, false, None),
            (200, 256 * MI, None, Gen2, false, Some("cpu")),
        ];
        for &(cpu, memory, concurrency, environment, always, refused) in cases {
            let result = check(cpu, memory, concurrency, environment, always);
            assert_eq!(
                result.as_ref().err().map(|r| r.field),
                refused,
                "cpu {cpu}m, memory {}, concurrency {concurrency:?}, {environment:?}, always allocated {always}: {result:?}",
                memory_text(memory)
            );
        }
    }

    #[test]
    fn refusals_read_as_cloud_runs() {
        assert_eq!(
            check(1000, 8 * GI, None, Any, false).unwrap_err().message,
            "Invalid value specified for memory. For 1.0 CPU, memory must be between 128Mi and 4Gi inclusive."
        );
        assert_eq!(
            check(1000, 256 * MI, None, Gen2, false).unwrap_err().message,
            "Invalid value specified for memory with gen2 execution environment. For 1.0 CPU, memory must be between 512Mi and 4Gi inclusive."
        );
        assert_eq!(
            check(500, 512 * MI, Some(80), Any, false)
                .unwrap_err()
                .message,
            "Invalid value specified for cpu. Total cpu < 1 is not supported with concurrency > 1."
        );
        assert_eq!(cpu_text(500), "0.5");
        assert_eq!(cpu_text(80), "0.08");
        assert_eq!(memory_text(768 * MI), "768Mi");
        assert_eq!(
            ExecutionEnvironment::parse("gen2"),
            Some(ExecutionEnvironment::Gen2)
        );
        assert_eq!(ExecutionEnvironment::parse("gen3"), None);
    }
}
