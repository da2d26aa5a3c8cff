//! From a Knative revision template to what the emulator runs: every field checked the way
//! Cloud Run checks it, errors naming the field's path, secrets resolved from local files or
//! env vars, and fields that mean nothing locally reported as notes.

use std::path::PathBuf;
use std::time::Duration;

use crate::cloudrun::{self, resources};
use crate::config::{self, FieldError};
use crate::control::knative::{self, RevisionTemplate};
use crate::instances::probe::{HealthCheck, HealthProbe};
use crate::instances::revision::{ContainerConfig, RevisionConfig, ScalingConfig};

/// Instance-based billing when "false": CPU always allocated (Cloud Run's default is "true").
const CPU_THROTTLING_ANNOTATION: &str = "run.googleapis.com/cpu-throttling";

/// Cloud Run's default maximum number of instances.
pub const DEFAULT_MAX_INSTANCES: u32 = 100;
/// Cloud Run's default and maximum `containerConcurrency`.
pub const DEFAULT_CONCURRENCY: u32 = 80;
pub const MAX_CONCURRENCY: u32 = 1000;

/// Where `secretKeyRef`s are looked up: `DIR/NAME/VERSION` files, then the env var
/// `EMULATE_SECRET_<NAME>` (upper-cased, `-` as `_`).
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    pub dir: Option<PathBuf>,
}

impl Secrets {
    fn resolve(&self, path: &str, name: &str, version: &str) -> Result<String, FieldError> {
        let file = self.dir.as_ref().map(|d| d.join(name).join(version));
        if let Some(file) = &file {
            if let Ok(value) = std::fs::read_to_string(file) {
                return Ok(value.trim_end_matches(['\n', '\r']).to_string());
            }
        }
        let var = format!(
            "EMULATE_SECRET_{}",
            name.to_ascii_uppercase().replace(['-', '.'], "_")
        );
        if let Ok(value) = std::env::var(&var) {
            return Ok(value);
        }
        let looked = match &file {
            Some(f) => format!("the file {} and the env var {var}", f.display()),
            None => format!("the env var {var} (no --secrets-dir was given)"),
        };
        Err(FieldError::new(
            path,
            format!("secret '{name}' version '{version}' not found: looked for {looked}. Create one of them, e.g. `mkdir -p DIR/{name} && printf %s VALUE > DIR/{name}/{version}` and start the emulator with --secrets-dir DIR"),
        ))
    }
}

/// Checks a template and resolves it. `notes` collects one-line notes about settings that
/// are accepted but have no local effect.
pub fn resolve(
    template: &RevisionTemplate,
    secrets: &Secrets,
    notes: &mut Vec<String>,
) -> Result<RevisionConfig, FieldError> {
    const SPEC: &str = "spec.template.spec";
    let spec = &template.spec;
    let container = match spec.containers.as_slice() {
        [] => return Err(FieldError::new(format!("{SPEC}.containers"), "exactly one container is required")),
        [one] => one,
        [..] => {
            return Err(FieldError::new(
                format!("{SPEC}.containers"),
                "more than one container (sidecars) is not emulated yet; keep only the ingress container",
            ))
        }
    };
    let at = format!("{SPEC}.containers[0]");
    if container.image.trim().is_empty() {
        return Err(FieldError::new(
            format!("{at}.image"),
            "an image is required",
        ));
    }
    let (port, http2) = match container.ports.as_slice() {
        [] => (cloudrun::DEFAULT_PORT, false),
        [port] => {
            if port.container_port == 0 {
                return Err(FieldError::new(
                    format!("{at}.ports[0].containerPort"),
                    "must be between 1 and 65535",
                ));
            }
            let http2 = match port.name.as_deref() {
                None | Some("http1") => false,
                Some("h2c") => true,
                Some(other) => {
                    return Err(FieldError::new(
                        format!("{at}.ports[0].name"),
                        format!("'{other}' is not a port name Cloud Run knows; use http1 or h2c"),
                    ))
                }
            };
            (port.container_port, http2)
        }
        [..] => {
            return Err(FieldError::new(
                format!("{at}.ports"),
                "Cloud Run allows one container port",
            ))
        }
    };
    let mut env = Vec::new();
    for (i, var) in container.env.iter().enumerate() {
        let path = format!("{at}.env[{i}]");
        config::check_env_name(&format!("{path}.name"), &var.name)?;
        let value = match (&var.value, &var.value_from) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(path, "set value or valueFrom, not both"));
            }
            (value, None) => value.clone().unwrap_or_default(),
            (None, Some(from)) => match &from.secret_key_ref {
                Some(secret) => secrets.resolve(
                    &format!("{path}.valueFrom.secretKeyRef"),
                    &secret.name,
                    &secret.key,
                )?,
                None => {
                    return Err(FieldError::new(
                        format!("{path}.valueFrom"),
                        "only secretKeyRef is supported",
                    ))
                }
            },
        };
        config::check_env_value(&format!("{path}.value"), &var.name, &value)?;
        if let Some(first) = container.env[..i].iter().position(|e| e.name == var.name) {
            return Err(FieldError::new(
                format!("{path}.name"),
                format!(
                    "the env var '{}' is already set by {at}.env[{first}]; set each name once",
                    var.name
                ),
            ));
        }
        env.push((var.name.clone(), value));
    }
    for (field, list) in [("command", &container.command), ("args", &container.args)] {
        if let Some(i) = list.iter().flatten().position(|item| item.contains('\0')) {
            return Err(FieldError::new(
                format!("{at}.{field}[{i}]"),
                "contains a NUL character, which a process's arguments cannot hold",
            ));
        }
    }
    let limits = container
        .resources
        .as_ref()
        .map(|r| r.limits.clone())
        .unwrap_or_default();
    let memory_bytes = match limits.get("memory") {
        Some(m) => config::parse_memory(&format!("{at}.resources.limits.memory"), m)?,
        None => cloudrun::DEFAULT_MEMORY_BYTES,
    };
    let cpu_millis = match limits.get("cpu") {
        Some(c) => config::parse_cpu(&format!("{at}.resources.limits.cpu"), c)?,
        None => cloudrun::DEFAULT_CPU_MILLIS,
    };
    let concurrency = match spec.container_concurrency {
        // Cloud Run's v1 API: "If not specified or 0, defaults to 80 when requested CPU >= 1
        // and defaults to 1 when requested CPU < 1." (Knative's 0, no limit, is not Cloud
        // Run's.)
        None | Some(0) if cpu_millis < 1000 => 1,
        None | Some(0) => DEFAULT_CONCURRENCY,
        Some(n) if n > MAX_CONCURRENCY => {
            return Err(FieldError::new(
                format!("{SPEC}.containerConcurrency"),
                format!("{n} is more than Cloud Run's maximum of {MAX_CONCURRENCY}"),
            ))
        }
        Some(n) => n,
    };
    let annotations = &template.metadata.annotations;
    let environment = match annotations.get(resources::EXECUTION_ENVIRONMENT_ANNOTATION) {
        None => resources::ExecutionEnvironment::Default,
        Some(value) => resources::ExecutionEnvironment::parse(value).ok_or_else(|| {
            FieldError::new(
                format!(
                    "spec.template.metadata.annotations[{}]",
                    resources::EXECUTION_ENVIRONMENT_ANNOTATION
                ),
                format!("'{value}' is not an execution environment; use gen1 or gen2"),
            )
        })?,
    };
    let cpu_always_allocated = annotations
        .get(CPU_THROTTLING_ANNOTATION)
        .is_some_and(|v| v.trim() == "false");
    let explicit_concurrency = spec.container_concurrency.filter(|n| *n != 0);
    resources::check(
        cpu_millis,
        memory_bytes,
        explicit_concurrency,
        environment,
        cpu_always_allocated,
    )
    .map_err(|refusal| {
        FieldError::new(
            format!("{at}.resources.limits.{}", refusal.field),
            refusal.message,
        )
    })?;
    if container.env.len() > resources::MAX_ENV_VARS {
        return Err(FieldError::new(
            format!("{at}.env"),
            format!(
                "{} environment variables are set; Cloud Run allows at most {}",
                container.env.len(),
                resources::MAX_ENV_VARS
            ),
        ));
    }
    let timeout = match spec.timeout_seconds {
        None => cloudrun::DEFAULT_REQUEST_TIMEOUT,
        Some(s) if (1..=3600).contains(&s) => Duration::from_secs(s),
        Some(s) => {
            return Err(FieldError::new(
                format!("{SPEC}.timeoutSeconds"),
                format!("{s} is not between 1 and 3600"),
            ))
        }
    };
    let scale = |key: &str, default: u32| -> Result<u32, FieldError> {
        match annotations.get(key) {
            None => Ok(default),
            Some(v) => v.trim().parse::<u32>().map_err(|_| {
                FieldError::new(
                    format!("spec.template.metadata.annotations[{key}]"),
                    format!("expected a whole number, found '{v}'"),
                )
            }),
        }
    };
    let min_instances = scale(knative::ANNOTATION_MIN_SCALE, 0)?;
    let max_instances = scale(knative::ANNOTATION_MAX_SCALE, DEFAULT_MAX_INSTANCES)?;
    if max_instances == 0 || min_instances > max_instances {
        return Err(FieldError::new(
            format!("spec.template.metadata.annotations[{}]", knative::ANNOTATION_MAX_SCALE),
            format!("max instances ({max_instances}) must be at least 1 and at least min instances ({min_instances})"),
        ));
    }
    let idle_timeout = match annotations.get(knative::ANNOTATION_IDLE_TIMEOUT) {
        None => cloudrun::DEFAULT_IDLE_TIMEOUT,
        // "0s" is Knative's own default: an idle instance goes at the next decision.
        Some(v) => config::parse_duration("", v).ok().ok_or_else(|| {
            FieldError::new(
                format!(
                    "spec.template.metadata.annotations[{}]",
                    knative::ANNOTATION_IDLE_TIMEOUT
                ),
                format!("expected a duration such as 30s or 15m, found '{v}'"),
            )
        })?,
    };
    let startup_probe = match &container.startup_probe {
        None => None,
        Some(probe) => health_probe(probe, port, &format!("{at}.startupProbe"), true)?,
    };
    let startup_budget = match &container.startup_probe {
        None => cloudrun::DEFAULT_STARTUP_BUDGET,
        Some(probe) => {
            let delay = probe.initial_delay_seconds.unwrap_or(0);
            let period = probe.period_seconds.unwrap_or(10);
            let failures = u64::from(probe.failure_threshold.unwrap_or(3).max(1));
            let timeout = probe.timeout_seconds.unwrap_or(1);
            // Cloud Run's last attempt starts after the delay and failures - 1 periods, and
            // may take its timeout.
            Duration::from_secs((delay + period * (failures - 1) + timeout).clamp(1, 3600))
        }
    };
    let liveness = match &container.liveness_probe {
        None => None,
        Some(probe) => health_probe(probe, port, &format!("{at}.livenessProbe"), false)?,
    };
    let (cpu_throttling, startup_cpu_boost) = cpu_allocation(annotations)?;
    for key in annotations.keys() {
        if key.starts_with("run.googleapis.com/") && !EMULATED_ANNOTATIONS.contains(&key.as_str()) {
            notes.push(format!(
                "spec.template.metadata.annotations[{key}]: accepted; it has no local effect"
            ));
        }
    }
    Ok(RevisionConfig {
        container: ContainerConfig {
            image: container.image.trim().to_string(),
            port,
            http2,
            env,
            command: container.command.clone(),
            args: container.args.clone(),
            memory_bytes,
            cpu_millis,
            cpu_throttling,
            startup_cpu_boost,
            startup_budget,
            startup_probe,
            liveness,
        },
        scaling: ScalingConfig {
            concurrency,
            min_instances,
            max_instances,
            idle_timeout,
        },
        request_timeout: timeout,
    })
}

/// Revision annotations the emulator acts on (the rest of `run.googleapis.com/` is noted as
/// having no local effect).
const EMULATED_ANNOTATIONS: &[&str] = &[
    knative::ANNOTATION_CPU_THROTTLING,
    knative::ANNOTATION_STARTUP_CPU_BOOST,
];

/// `run.googleapis.com/cpu-throttling` (default `"true"`: request-based billing) and
/// `run.googleapis.com/startup-cpu-boost` (default `"false"`), each `"true"` or `"false"`.
fn cpu_allocation(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<(bool, bool), FieldError> {
    let flag = |key: &str, default: bool| match annotations.get(key).map(|v| v.trim()) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(FieldError::new(
            format!("spec.template.metadata.annotations[{key}]"),
            format!("expected \"true\" or \"false\", found '{other}'"),
        )),
    };
    Ok((
        flag(knative::ANNOTATION_CPU_THROTTLING, true)?,
        flag(knative::ANNOTATION_STARTUP_CPU_BOOST, false)?,
    ))
}

/// An HTTP or gRPC probe with Cloud Run's field defaults (period 10 s, timeout 1 s, 3
/// failures). A startup probe may also be `tcpSocket`, which is the default probe's kind: None.
fn health_probe(
    probe: &knative::Probe,
    port: u16,
    at: &str,
    startup: bool,
) -> Result<Option<HealthProbe>, FieldError> {
    let (check, probe_port) = match (&probe.http_get, &probe.grpc, &probe.tcp_socket) {
        (Some(http), None, None) => (
            HealthCheck::Http {
                path: http.path.clone().unwrap_or_else(|| "/".to_string()),
            },
            http.port,
        ),
        (None, Some(grpc), None) => (
            HealthCheck::Grpc {
                service: grpc.service.clone().unwrap_or_default(),
            },
            grpc.port,
        ),
        (None, None, Some(_)) if startup => return Ok(None),
        (None, None, Some(_)) => {
            return Err(FieldError::new(
                format!("{at}.tcpSocket"),
                "Cloud Run liveness probes are httpGet or grpc",
            ))
        }
        _ if startup => {
            return Err(FieldError::new(
                at,
                "set exactly one of httpGet, grpc or tcpSocket",
            ))
        }
        _ => return Err(FieldError::new(at, "set exactly one of httpGet or grpc")),
    };
    let seconds = |v: Option<u64>, default: u64| Duration::from_secs(v.unwrap_or(default));
    Ok(Some(HealthProbe {
        check,
        port: probe_port.unwrap_or(port),
        initial_delay: seconds(probe.initial_delay_seconds, 0),
        period: seconds(probe.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
        failure_threshold: probe.failure_threshold.unwrap_or(3).max(1),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::knative::parse_service_yaml;

    fn template(extra_container: &str, extra_spec: &str) -> RevisionTemplate {
        let text = format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nspec:\n  template:\n    spec:\n{extra_spec}      containers:\n      - image: hello\n{extra_container}"
        );
        parse_service_yaml(&text).unwrap().spec.template
    }

    fn resolve_ok(t: &RevisionTemplate) -> RevisionConfig {
        resolve(t, &Secrets::default(), &mut Vec::new()).unwrap()
    }

    fn resolve_err(t: &RevisionTemplate) -> FieldError {
        resolve(t, &Secrets::default(), &mut Vec::new()).unwrap_err()
    }

    #[test]
    fn startup_probes_keep_their_kind_and_cloud_runs_budget() {
        let http = resolve_ok(&template(
            "        startupProbe:\n          httpGet: {path: /ready}\n          initialDelaySeconds: 2\n          periodSeconds: 5\n          failureThreshold: 3\n",
            "",
        ));
        let probe = http.container.startup_probe.expect("an HTTP startup probe");
        assert_eq!(probe.kind(), "HTTP");
        assert_eq!(probe.target(), "on port 8080 path /ready");
        // Attempts at 2, 7 and 12 s, the last allowed its 1 s timeout.
        assert_eq!(http.container.startup_budget, Duration::from_secs(13));
        let tcp = resolve_ok(&template(
            "        startupProbe:\n          tcpSocket: {port: 8080}\n          periodSeconds: 240\n          timeoutSeconds: 240\n          failureThreshold: 1\n",
            "",
        ));
        assert_eq!(
            tcp.container.startup_probe, None,
            "TCP is the default probe's kind"
        );
        assert_eq!(tcp.container.startup_budget, Duration::from_secs(240));
        let both = resolve_err(&template(
            "        startupProbe:\n          httpGet: {path: /}\n          grpc: {}\n",
            "",
        ));
        assert!(both.to_string().contains("startupProbe"), "{both}");
    }

    #[test]
    fn defaults_are_cloud_runs() {
        let config = resolve_ok(&template("", ""));
        let (container, scaling) = (&config.container, &config.scaling);
        assert_eq!(container.port, 8080);
        assert!(!container.http2);
        assert_eq!(scaling.concurrency, 80);
        assert_eq!(config.request_timeout, Duration::from_secs(300));
        assert_eq!((scaling.min_instances, scaling.max_instances), (0, 100));
        assert_eq!(container.memory_bytes, 512 << 20);
        assert_eq!(container.startup_budget, Duration::from_secs(240));
    }

    #[test]
    fn cpu_allocation_annotations_are_read_and_not_noted() {
        let config = resolve_ok(&template("", ""));
        assert!(
            config.container.cpu_throttling,
            "request-based billing by default"
        );
        assert!(!config.container.startup_cpu_boost);
        let mut t = template("", "");
        let annotations = &mut t.metadata.annotations;
        annotations.insert(knative::ANNOTATION_CPU_THROTTLING.into(), "false".into());
        annotations.insert(knative::ANNOTATION_STARTUP_CPU_BOOST.into(), "true".into());
        let mut notes = Vec::new();
        let config = resolve(&t, &Secrets::default(), &mut notes).unwrap();
        assert!(!config.container.cpu_throttling);
        assert!(config.container.startup_cpu_boost);
        assert_eq!(notes, Vec::<String>::new());
        t.metadata
            .annotations
            .insert(knative::ANNOTATION_CPU_THROTTLING.into(), "yes".into());
        let e = resolve_err(&t);
        assert_eq!(
            e.to_string(),
            "spec.template.metadata.annotations[run.googleapis.com/cpu-throttling]: expected \"true\" or \"false\", found 'yes'"
        );
    }

    #[test]
    fn h2c_ports_limits_and_scaling_are_read() {
        let mut t = template(
            "        ports: [{containerPort: 9000, name: h2c}]\n        resources: {limits: {memory: 1Gi, cpu: '2'}}\n",
            "      containerConcurrency: 1\n      timeoutSeconds: 60\n",
        );
        t.metadata
            .annotations
            .insert(knative::ANNOTATION_MAX_SCALE.into(), "3".into());
        let config = resolve_ok(&t);
        let (container, scaling) = (&config.container, &config.scaling);
        assert_eq!((container.port, container.http2), (9000, true));
        assert_eq!(
            (container.memory_bytes, container.cpu_millis),
            (1 << 30, 2000)
        );
        assert_eq!((scaling.concurrency, scaling.max_instances), (1, 3));
        assert_eq!(config.request_timeout, Duration::from_secs(60));
    }

    #[test]
    fn bad_fields_name_their_path() {
        let e = resolve_err(&template("        env: [{name: PORT, value: '1'}]\n", ""));
        assert_eq!(e.field, "spec.template.spec.containers[0].env[0].name");
        let e = resolve_err(&template(
            "        resources: {limits: {memory: lots}}\n",
            "",
        ));
        assert_eq!(
            e.field,
            "spec.template.spec.containers[0].resources.limits.memory"
        );
        let e = resolve_err(&template("", "      timeoutSeconds: 4000\n"));
        assert_eq!(e.field, "spec.template.spec.timeoutSeconds");
        let e = resolve_err(&template(
            "        ports: [{containerPort: 80, name: grpc}]\n",
            "",
        ));
        assert_eq!(e.field, "spec.template.spec.containers[0].ports[0].name");
        let mut t = template("", "");
        t.metadata
            .annotations
            .insert(knative::ANNOTATION_MIN_SCALE.into(), "many".into());
        assert!(resolve_err(&t).field.contains("minScale"));
    }

    #[test]
    fn env_duplicates_and_nul_characters_are_refused() {
        let e = resolve_err(&template(
            "        env: [{name: A, value: '1'}, {name: A, value: '2'}]\n",
            "",
        ));
        assert_eq!(e.field, "spec.template.spec.containers[0].env[1].name");
        assert!(
            e.message
                .contains("already set by spec.template.spec.containers[0].env[0]"),
            "{e}"
        );
        let e = resolve_err(&template(
            "        env: [{name: A, value: \"x\\0y\"}]\n",
            "",
        ));
        assert_eq!(e.field, "spec.template.spec.containers[0].env[0].value");
        let e = resolve_err(&template("        args: [ok, \"x\\0\"]\n", ""));
        assert_eq!(e.field, "spec.template.spec.containers[0].args[1]");
    }

    #[test]
    fn concurrency_zero_is_cloud_runs_default() {
        let zero = resolve_ok(&template("", "      containerConcurrency: 0\n"));
        assert_eq!(zero.scaling.concurrency, 80);
        let small_cpu = resolve_ok(&template(
            "        resources: {limits: {cpu: 500m}}\n",
            "      containerConcurrency: 0\n",
        ));
        assert_eq!(small_cpu.scaling.concurrency, 1);
    }

    #[test]
    fn secrets_come_from_files_or_env_vars_or_say_where_they_looked() {
        let dir = std::env::temp_dir().join(format!("emulate-secrets-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("db-pass")).unwrap();
        std::fs::write(dir.join("db-pass/latest"), "s3cret\n").unwrap();
        let t = template(
            "        env: [{name: DB, valueFrom: {secretKeyRef: {name: db-pass, key: latest}}}]\n",
            "",
        );
        let secrets = Secrets {
            dir: Some(dir.clone()),
        };
        let config = resolve(&t, &secrets, &mut Vec::new()).unwrap();
        assert_eq!(
            config.container.env,
            vec![("DB".to_string(), "s3cret".to_string())]
        );
        let missing = template(
            "        env: [{name: DB, valueFrom: {secretKeyRef: {name: nope-x, key: '2'}}}]\n",
            "",
        );
        let e = resolve(&missing, &secrets, &mut Vec::new()).unwrap_err();
        assert_eq!(
            e.field,
            "spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef"
        );
        assert!(e.message.contains("EMULATE_SECRET_NOPE_X"), "{e}");
        // Or from `EMULATE_SECRET_<NAME>` (a name no other test uses: tests share the env).
        std::env::set_var("EMULATE_SECRET_FROM_ENV_UNIT", "from-env");
        let from_env = template(
            "        env: [{name: DB, valueFrom: {secretKeyRef: {name: from-env-unit, key: latest}}}]\n",
            "",
        );
        let config = resolve(&from_env, &Secrets::default(), &mut Vec::new()).unwrap();
        std::env::remove_var("EMULATE_SECRET_FROM_ENV_UNIT");
        assert_eq!(
            config.container.env,
            vec![("DB".to_string(), "from-env".to_string())]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_service_account_is_emulated_so_not_noted() {
        // The metadata server hands the revision's containers that account's identity.
        let mut notes = Vec::new();
        let t = template(
            "",
            "      serviceAccountName: sa@p.iam.gserviceaccount.com\n",
        );
        resolve(&t, &Secrets::default(), &mut notes).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
    }
}
