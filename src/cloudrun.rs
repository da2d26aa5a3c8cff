//! Cloud Run's contract as data: defaults, reserved names, naming rules and the exact texts
//! Cloud Run prints, so every user-facing failure starts with the words the cloud would use.

use std::time::Duration;

use rand::Rng;

/// The container port when none is given (`containerPort` default).
pub const DEFAULT_PORT: u16 = 8080;
/// Default memory limit: 512Mi.
pub const DEFAULT_MEMORY_BYTES: u64 = 512 * 1024 * 1024;
/// Default CPU limit: one vCPU (1000m).
pub const DEFAULT_CPU_MILLIS: u64 = 1000;
/// Default request timeout; the maximum is one hour.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// The default startup probe is a single TCP attempt with a 240 s timeout.
pub const DEFAULT_STARTUP_BUDGET: Duration = Duration::from_secs(240);
/// Shutdown sends SIGTERM, waits this long, then SIGKILLs.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// HTTP/1 request bodies larger than this get 413.
pub const MAX_HTTP1_REQUEST_BODY: u64 = 32 * 1024 * 1024;
/// Service names are at most 49 characters (revision names at most 63).
pub const MAX_SERVICE_NAME_LEN: usize = 49;

/// Env names Cloud Run sets itself; a user who sets one gets an error.
pub const RESERVED_ENV: [&str; 4] = ["PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"];

/// 503 body: the instance could not be reached or answered garbage.
pub const MALFORMED_OR_UNREACHABLE: &str = "The request failed because either the HTTP response was malformed or connection to the instance had an error.";
/// 429 body: no instance could take the request.
pub const NO_AVAILABLE_INSTANCE: &str =
    "The request was aborted because there was no available instance.";
/// 503 body: the instance meant for this request failed to start.
pub const INSTANCE_COULD_NOT_START: &str =
    "The request failed because the instance could not start successfully.";

/// 504 body: no response within the request timeout.
pub const UPSTREAM_REQUEST_TIMEOUT: &str = "upstream request timeout";
/// 413 body: an HTTP/1 request body over 32 MiB.
pub const REQUEST_TOO_LARGE: &str = "Your client issued a request that was too large.";
/// 400: Google's front end on a request it cannot parse (a bad chunk size, a bad or missing
/// `Host`).
pub const MALFORMED_REQUEST: &str = "Your client has issued a malformed or illegal request.";

/// The reason Cloud Run logs when an instance starts because of traffic.
pub const REASON_AUTOSCALING: &str = "AUTOSCALING - Instance started due to traffic scaling.";
/// The reason Cloud Run logs when an instance starts to keep min instances.
pub const REASON_MIN_INSTANCES: &str = "MANUAL_OR_CUSTOMER_MIN_INSTANCE - Instance started because of customer-configured min-instances or manual scaling.";
/// Cloud Run keeps an idle instance up to 15 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Cloud Run's refusal of an image that is not linux/amd64.
pub fn unsupported_platform(image: &str, media_type: &str) -> String {
    format!(
        "Cloud Run does not support image '{image}': Container manifest type '{media_type}' must support amd64/linux."
    )
}

/// Cloud Run's text for a revision whose container never listened on $PORT in time.
pub fn revision_not_ready(revision: &str, port: u16) -> String {
    format!(
        "Revision '{revision}' is not ready and cannot serve traffic. The user-provided container failed to start and listen on the port defined provided by the PORT={port} environment variable within the allocated timeout. This can happen when the container port is misconfigured or if the timeout is too short. The health check timeout can be extended. Logs for this revision might contain more information."
    )
}

pub fn starting_new_instance(reason: &str) -> String {
    format!("Starting new instance. Reason: {reason}")
}

pub fn container_called_exit(code: i64) -> String {
    format!("Container called exit({code}).")
}

pub fn startup_probe_succeeded(attempts: u32, container: &str, port: u16) -> String {
    let noun = if attempts == 1 { "attempt" } else { "attempts" };
    format!("Default STARTUP TCP probe succeeded after {attempts} {noun} for container \"{container}\" on port {port}.")
}

pub fn startup_probe_failed(container: &str, port: u16) -> String {
    format!("Default STARTUP TCP probe failed 1 time consecutively for container \"{container}\" on port {port}. The instance was not started.")
}

/// The success line of a user's startup probe, after the default probe's pattern; `target` is
/// `on port 8080 path /ready` or `on port 8080`.
pub fn user_startup_probe_succeeded(
    kind: &str,
    attempts: u32,
    container: &str,
    target: &str,
) -> String {
    let noun = if attempts == 1 { "attempt" } else { "attempts" };
    format!("STARTUP {kind} probe succeeded after {attempts} {noun} for container \"{container}\" {target}.")
}

pub fn user_startup_probe_failed(
    kind: &str,
    failures: u32,
    container: &str,
    target: &str,
) -> String {
    let noun = if failures == 1 { "time" } else { "times" };
    format!("STARTUP {kind} probe failed {failures} {noun} consecutively for container \"{container}\" {target}. The instance was not started.")
}

pub fn memory_limit_exceeded(limit_mib: u64, used_mib: u64) -> String {
    format!("Memory limit of {limit_mib} MiB exceeded with {used_mib} MiB used.")
}

/// The local hint printed under an architecture failure.
pub const AMD64_HINT: &str = "Cloud Run runs linux/amd64 only. Docker on Apple Silicon (and other arm64 machines) builds arm64 images by default; rebuild for amd64:\n    docker build --platform linux/amd64 -t IMAGE .\nor with buildx: docker buildx build --platform linux/amd64 -t IMAGE .";

/// Checks a service name the way Cloud Run does: lower-case letters, digits and hyphens,
/// starting with a letter, not ending with a hyphen, at most 49 characters.
pub fn validate_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_SERVICE_NAME_LEN {
        return Err(format!(
            "service name '{name}' must be 1 to {MAX_SERVICE_NAME_LEN} characters long"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "service name '{name}' must start with a lower-case letter"
        ));
    }
    if name.ends_with('-') {
        return Err(format!("service name '{name}' must not end with a hyphen"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "service name '{name}' may only contain lower-case letters, digits and hyphens (found '{c}')"
        ));
    }
    Ok(())
}

/// Derives a service name from an image reference, as `gcloud run deploy` suggests one:
/// the last path component without tag or digest, lower-cased, other characters as hyphens.
pub fn service_name_from_image(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let repo = last.split(':').next().unwrap_or(last);
    let mut name: String = repo
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    let name = name.trim_start_matches(|c: char| !c.is_ascii_lowercase());
    let mut name: String = name.chars().take(MAX_SERVICE_NAME_LEN).collect();
    while name.ends_with('-') {
        name.pop();
    }
    if name.is_empty() {
        "service".to_string()
    } else {
        name
    }
}

/// A revision name, `SERVICE-NNNNN-xxx`: the 5-digit generation and three random characters.
pub fn revision_name(service: &str, generation: u32, rng: &mut impl Rng) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let suffix: String = (0..3)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{service}-{generation:05}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn revision_names_follow_cloud_runs_pattern() {
        let mut rng = StdRng::seed_from_u64(7);
        let name = revision_name("hello", 2, &mut rng);
        let (prefix, suffix) = name.split_at("hello-00002-".len());
        assert_eq!(prefix, "hello-00002-");
        assert_eq!(suffix.len(), 3);
        assert!(suffix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }

    #[test]
    fn service_names_are_derived_from_image_references() {
        assert_eq!(service_name_from_image("hello"), "hello");
        assert_eq!(
            service_name_from_image("us-docker.pkg.dev/cloudrun/container/hello:latest"),
            "hello"
        );
        assert_eq!(
            service_name_from_image("localhost:5000/My_App@sha256:abc"),
            "my-app"
        );
        assert_eq!(service_name_from_image("ghcr.io/x/9lives"), "lives");
        assert_eq!(service_name_from_image("___"), "service");
        assert_eq!(service_name_from_image(&"a".repeat(80)).len(), 49);
    }

    #[test]
    fn service_names_are_validated() {
        assert!(validate_service_name("hello-world2").is_ok());
        for bad in ["", "Hello", "1abc", "abc-", "a_b", &"a".repeat(50)] {
            assert!(validate_service_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn probe_texts_match_cloud_run() {
        assert_eq!(
            startup_probe_succeeded(1, "hello-1", 8080),
            "Default STARTUP TCP probe succeeded after 1 attempt for container \"hello-1\" on port 8080."
        );
        assert!(revision_not_ready("r", 8080).contains("PORT=8080 environment variable"));
    }
}
