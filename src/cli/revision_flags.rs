//! The revision flags `run`, `deploy` and `smoke` share (`--port`, `--memory`,
//! `--set-env-vars`...), declared once. Each is optional: `deploy` changes only what is given,
//! as gcloud does, while `run` gives Cloud Run's defaults to the flags that have one (see
//! `RunArgs`). `RevisionFlags::check` turns them into `RevisionChanges`, and
//! `RevisionChanges::apply` writes those into a revision template: the one flags → template
//! function.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::invalid;
use crate::cloudrun;
use crate::config::{self, FieldError};
use crate::control::knative;

#[derive(Clone, Debug, Default, Args)]
pub struct RevisionFlags {
    /// The port requests are sent to, set as $PORT in the container.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Env vars to set, `NAME=VALUE,NAME2=VALUE2` (gcloud's `^DELIM^` escaping works).
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub set_env_vars: Vec<String>,
    /// A file of env vars: YAML (`NAME: value`) or .env (`NAME=value`).
    #[arg(long, value_name = "FILE")]
    pub env_vars_file: Option<PathBuf>,
    /// Memory limit, e.g. 512Mi or 2Gi.
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit, e.g. 1, 2 or 1000m.
    #[arg(long)]
    pub cpu: Option<String>,
    /// Request timeout: seconds (300) or with units (5m); at most 1h.
    #[arg(long)]
    pub timeout: Option<String>,
    /// Replace the image's entrypoint: `cmd,arg,...`.
    #[arg(long, value_name = "COMMAND,...")]
    pub command: Option<String>,
    /// Replace the image's arguments (CMD): `arg,arg,...`.
    #[arg(long, value_name = "ARG,...")]
    pub args: Option<String>,
    /// Maximum concurrent requests per instance (1 to 1000; 0 or unset is Cloud Run's
    /// default: 80, or 1 with less than one CPU).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub concurrency: Option<u32>,
    /// Instances kept running even when idle.
    #[arg(long)]
    pub min_instances: Option<u32>,
    /// At most this many instances (Cloud Run's default is 100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_instances: Option<u32>,
    /// Remove an instance after it has been idle this long (Cloud Run keeps idle instances up
    /// to 15 minutes); e.g. 30s.
    #[arg(long, value_name = "DURATION")]
    pub scale_to_zero_after: Option<String>,
    /// Speak HTTP/2 cleartext (h2c) to the container end to end, as with a port named h2c.
    #[arg(long)]
    pub use_http2: bool,
    /// Request-based billing (Cloud Run's default): CPU only while a request is in flight,
    /// throttled between requests.
    #[arg(long, overrides_with = "no_cpu_throttling")]
    pub cpu_throttling: bool,
    /// Instance-based billing: full CPU between requests too.
    #[arg(long, overrides_with = "cpu_throttling")]
    pub no_cpu_throttling: bool,
    /// Startup CPU boost: double the CPU during startup and for 10 s after.
    #[arg(long, overrides_with = "no_cpu_boost")]
    pub cpu_boost: bool,
    /// No startup CPU boost.
    #[arg(long, overrides_with = "cpu_boost")]
    pub no_cpu_boost: bool,
}

/// `--x` / `--no-x`: Some(true), Some(false), or None when neither is given.
fn either(yes: bool, no: bool) -> Option<bool> {
    match (yes, no) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

/// A resource limit as the flag gave it, and its amount (bytes or millicpu).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub text: String,
    pub amount: u64,
}

/// The revision flags, checked: what each flag given sets. `None` leaves the template as it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RevisionChanges {
    pub port: Option<u16>,
    /// The port is named h2c.
    pub http2: bool,
    /// Replaces the env vars: `--env-vars-file`'s, then `--set-env-vars`'.
    pub env: Option<Vec<(String, String)>>,
    pub memory: Option<Limit>,
    pub cpu: Option<Limit>,
    pub request_timeout: Option<Duration>,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub concurrency: Option<u32>,
    pub min_instances: Option<u32>,
    pub max_instances: Option<u32>,
    pub idle_timeout: Option<Duration>,
    /// `run.googleapis.com/cpu-throttling`.
    pub cpu_throttling: Option<bool>,
    /// `run.googleapis.com/startup-cpu-boost`.
    pub cpu_boost: Option<bool>,
}

impl RevisionFlags {
    /// Parses and checks every flag given, naming the flag of any error.
    pub fn check(&self) -> Result<RevisionChanges, FieldError> {
        let env = if self.env_vars_file.is_some() || !self.set_env_vars.is_empty() {
            let mut env = Vec::new();
            if let Some(path) = &self.env_vars_file {
                env.extend(config::read_env_file("--env-vars-file", path)?);
            }
            for list in &self.set_env_vars {
                env.extend(config::parse_env_vars("--set-env-vars", list)?);
            }
            config::check_no_duplicate_env("--set-env-vars", &env)?;
            Some(env)
        } else {
            None
        };
        let request_timeout = match &self.timeout {
            None => None,
            Some(text) => {
                let timeout = config::parse_duration("--timeout", text)?;
                if timeout.is_zero() || timeout > cloudrun::MAX_REQUEST_TIMEOUT {
                    return Err(invalid(
                        "--timeout",
                        format!("'{text}' must be between 1 second and 1 hour"),
                    ));
                }
                Some(timeout)
            }
        };
        if let (Some(min), Some(max)) = (self.min_instances, self.max_instances) {
            if min > max {
                return Err(invalid(
                    "--min-instances",
                    format!("{min} is more than --max-instances {max}"),
                ));
            }
        }
        let command = self.command.as_deref().map(config::split_list);
        if command
            .as_ref()
            .is_some_and(|c| c.is_empty() || c[0].is_empty())
        {
            return Err(invalid("--command", "the command is empty"));
        }
        let limit =
            |text: &Option<String>, parse: fn(&str, &str) -> Result<u64, FieldError>, flag| {
                text.as_ref()
                    .map(|text| {
                        Ok(Limit {
                            text: text.clone(),
                            amount: parse(flag, text)?,
                        })
                    })
                    .transpose()
            };
        Ok(RevisionChanges {
            port: self.port,
            http2: self.use_http2,
            env,
            memory: limit(&self.memory, config::parse_memory, "--memory")?,
            cpu: limit(&self.cpu, config::parse_cpu, "--cpu")?,
            request_timeout,
            command,
            args: self.args.as_deref().map(config::split_list),
            concurrency: self.concurrency,
            min_instances: self.min_instances,
            max_instances: self.max_instances,
            idle_timeout: self
                .scale_to_zero_after
                .as_deref()
                .map(|t| config::parse_duration("--scale-to-zero-after", t))
                .transpose()?,
            cpu_throttling: either(self.cpu_throttling, self.no_cpu_throttling),
            cpu_boost: either(self.cpu_boost, self.no_cpu_boost),
        })
    }
}

impl RevisionChanges {
    /// Writes the changes into a revision template; what they do not mention stays.
    pub fn apply(&self, template: &mut knative::RevisionTemplate) {
        let annotations = &mut template.metadata.annotations;
        if let Some(n) = self.min_instances {
            annotations.insert(knative::ANNOTATION_MIN_SCALE.to_string(), n.to_string());
        }
        if let Some(n) = self.max_instances {
            annotations.insert(knative::ANNOTATION_MAX_SCALE.to_string(), n.to_string());
        }
        if let Some(idle) = self.idle_timeout {
            annotations.insert(
                knative::ANNOTATION_IDLE_TIMEOUT.to_string(),
                format!("{}s", idle.as_secs().max(1)),
            );
        }
        for (key, value) in [
            (knative::ANNOTATION_CPU_THROTTLING, self.cpu_throttling),
            (knative::ANNOTATION_STARTUP_CPU_BOOST, self.cpu_boost),
        ] {
            if let Some(value) = value {
                annotations.insert(key.to_string(), value.to_string());
            }
        }
        let spec = &mut template.spec;
        if let Some(n) = self.concurrency {
            spec.container_concurrency = Some(n);
        }
        if let Some(timeout) = self.request_timeout {
            spec.timeout_seconds = Some(timeout.as_secs().max(1));
        }
        if spec.containers.is_empty() {
            spec.containers.push(knative::Container::default());
        }
        let container = &mut spec.containers[0];
        if let Some(port) = self.port {
            match container.ports.first_mut() {
                Some(p) => p.container_port = port,
                None => container.ports.push(knative::ContainerPort {
                    container_port: port,
                    ..Default::default()
                }),
            }
        }
        if self.http2 {
            match container.ports.first_mut() {
                Some(p) => p.name = Some("h2c".to_string()),
                None => container.ports.push(knative::ContainerPort {
                    container_port: cloudrun::DEFAULT_PORT,
                    name: Some("h2c".to_string()),
                    protocol: None,
                }),
            }
        }
        if let Some(command) = &self.command {
            container.command = Some(command.clone());
        }
        if let Some(args) = &self.args {
            container.args = Some(args.clone());
        }
        let limits = &mut container
            .resources
            .get_or_insert_with(Default::default)
            .limits;
        if let Some(memory) = &self.memory {
            limits.insert("memory".to_string(), memory.text.clone());
        }
        if let Some(cpu) = &self.cpu {
            limits.insert("cpu".to_string(), cpu.text.clone());
        }
        if container
            .resources
            .as_ref()
            .is_some_and(|r| r.limits.is_empty() && r.extra.is_empty())
        {
            container.resources = None;
        }
        if let Some(env) = &self.env {
            container.env = env
                .iter()
                .map(|(name, value)| plain_env(name.clone(), value.clone()))
                .collect();
        }
    }
}

/// A new service whose template runs `image`, and nothing else set.
pub fn new_service(name: &str, image: &str) -> knative::Service {
    knative::Service {
        api_version: knative::API_VERSION.to_string(),
        kind: "Service".to_string(),
        metadata: knative::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: knative::ServiceSpec {
            template: knative::RevisionTemplate {
                metadata: Default::default(),
                spec: knative::RevisionSpec {
                    containers: vec![knative::Container {
                        image: image.to_string(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            },
            ..Default::default()
        },
        status: None,
    }
}

/// An env var with a plain value.
pub fn plain_env(name: String, value: String) -> knative::EnvVar {
    knative::EnvVar {
        name,
        value: Some(value),
        value_from: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The revision flags as `deploy` parses them: nothing has a default.
    fn flags(argv: &[&str]) -> RevisionFlags {
        let mut full = vec!["emulate", "deploy", "hello"];
        full.extend_from_slice(argv);
        match crate::cli::Cli::try_parse_from(full).unwrap().command {
            crate::cli::Command::Deploy(args) => args.revision,
            _ => unreachable!(),
        }
    }

    fn error(argv: &[&str]) -> String {
        flags(argv).check().unwrap_err().to_string()
    }

    #[test]
    fn no_flag_changes_nothing() {
        let changes = flags(&[]).check().unwrap();
        assert_eq!(changes, RevisionChanges::default());
        let mut service = new_service("hello", "img");
        let before = service.clone();
        changes.apply(&mut service.spec.template);
        assert_eq!(
            serde_json::to_value(&service).unwrap(),
            serde_json::to_value(&before).unwrap()
        );
    }

    #[test]
    fn the_checks_are_the_same_for_every_command() {
        assert_eq!(
            error(&["--min-instances", "3", "--max-instances", "2"]),
            "--min-instances: 3 is more than --max-instances 2"
        );
        assert_eq!(
            error(&["--timeout", "2h"]),
            "--timeout: '2h' must be between 1 second and 1 hour"
        );
        assert_eq!(error(&["--command", ""]), "--command: the command is empty");
        assert!(error(&["--set-env-vars", "A=1,A=2"]).starts_with("--set-env-vars:"));
        assert!(error(&["--memory", "lots"]).starts_with("--memory:"));
        assert!(error(&["--cpu", "100"]).starts_with("--cpu:"));
        assert!(error(&["--scale-to-zero-after", "soon"]).starts_with("--scale-to-zero-after:"));
        for range in [
            ["--max-instances", "0"],
            ["--concurrency", "1001"],
            ["--port", "0"],
        ] {
            let mut argv = vec!["emulate", "deploy", "hello"];
            argv.extend_from_slice(&range);
            assert!(crate::cli::Cli::try_parse_from(argv).is_err(), "{range:?}");
        }
    }

    #[test]
    fn the_last_of_a_flag_and_its_negation_wins() {
        let changes = flags(&["--no-cpu-throttling", "--cpu-throttling"])
            .check()
            .unwrap();
        assert_eq!(changes.cpu_throttling, Some(true));
        let changes = flags(&["--cpu-boost", "--no-cpu-boost"]).check().unwrap();
        assert_eq!(changes.cpu_boost, Some(false));
        assert_eq!(flags(&[]).check().unwrap().cpu_throttling, None);
    }

    #[test]
    fn the_flags_given_are_written_into_the_template() {
        let changes = flags(&[
            "--port",
            "9000",
            "--use-http2",
            "--memory",
            "1Gi",
            "--cpu",
            "2",
            "--timeout",
            "5m",
            "--command",
            "a,b",
            "--args",
            "c",
            "--concurrency",
            "7",
            "--min-instances",
            "1",
            "--max-instances",
            "3",
            "--scale-to-zero-after",
            "500ms",
            "--set-env-vars",
            "A=1",
            "--no-cpu-throttling",
            "--cpu-boost",
        ])
        .check()
        .unwrap();
        let mut service = new_service("hello", "img");
        changes.apply(&mut service.spec.template);
        let template = &service.spec.template;
        let annotations = &template.metadata.annotations;
        assert_eq!(annotations[knative::ANNOTATION_MIN_SCALE], "1");
        assert_eq!(annotations[knative::ANNOTATION_MAX_SCALE], "3");
        // Below a second is one second: the annotation counts whole seconds.
        assert_eq!(annotations[knative::ANNOTATION_IDLE_TIMEOUT], "1s");
        assert_eq!(annotations[knative::ANNOTATION_CPU_THROTTLING], "false");
        assert_eq!(annotations[knative::ANNOTATION_STARTUP_CPU_BOOST], "true");
        assert_eq!(template.spec.container_concurrency, Some(7));
        assert_eq!(template.spec.timeout_seconds, Some(300));
        let container = &template.spec.containers[0];
        assert_eq!(container.image, "img");
        assert_eq!(container.ports[0].container_port, 9000);
        assert_eq!(container.ports[0].name.as_deref(), Some("h2c"));
        assert_eq!(
            container.command,
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(container.args, Some(vec!["c".to_string()]));
        let limits = &container.resources.as_ref().unwrap().limits;
        assert_eq!(
            (limits["memory"].as_str(), limits["cpu"].as_str()),
            ("1Gi", "2")
        );
        assert_eq!(container.env[0].name, "A");
    }
}
