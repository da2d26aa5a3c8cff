//! Cloud Run's contract as data: defaults, reserved names, naming rules and the exact texts
//! Cloud Run prints, so every user-facing failure starts with the words the cloud would use.

use std::time::Duration;

use rand::Rng;

pub mod resources;

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
/// The Service annotation that turns Cloud Run's invoker IAM check off (`"true"`: public) or
/// keeps it (`"false"`: private). Without it a service is public, as `emulate` has always run
/// them (Cloud Run keeps invoker bindings in IAM, outside the YAML).
pub const INVOKER_IAM_DISABLED: &str = "run.googleapis.com/invoker-iam-disabled";
/// The Service annotation listing extra audiences a private service accepts (a JSON list).
pub const CUSTOM_AUDIENCES: &str = "run.googleapis.com/custom-audiences";

/// Whether a service with these annotations is public.
pub fn is_public(annotations: &std::collections::BTreeMap<String, String>) -> bool {
    annotations
        .get(INVOKER_IAM_DISABLED)
        .is_none_or(|v| v.trim() != "false")
}

/// The custom audiences of a service (`run.googleapis.com/custom-audiences`, a JSON list of
/// strings); none when absent or not such a list.
pub fn custom_audiences(annotations: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    annotations
        .get(CUSTOM_AUDIENCES)
        .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
        .unwrap_or_default()
}

/// The Service's access annotations checked: `invoker-iam-disabled` is `"true"` or
/// `"false"`, `custom-audiences` a JSON list of non-empty strings.
pub fn validate_access_annotations(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<(), crate::config::FieldError> {
    let field = |key: &str| format!("metadata.annotations[{key}]");
    if let Some(value) = annotations.get(INVOKER_IAM_DISABLED) {
        if value.trim() != "true" && value.trim() != "false" {
            return Err(crate::config::FieldError::new(
                field(INVOKER_IAM_DISABLED),
                format!("'{value}' is not a boolean: \"true\" (public) or \"false\" (private)"),
            ));
        }
    }
    if let Some(value) = annotations.get(CUSTOM_AUDIENCES) {
        let ok = serde_json::from_str::<Vec<String>>(value)
            .is_ok_and(|list| list.iter().all(|a| !a.trim().is_empty()));
        if !ok {
            return Err(crate::config::FieldError::new(
                field(CUSTOM_AUDIENCES),
                format!("'{value}' is not a JSON list of audiences, e.g. '[\"https://api.example.com\"]'"),
            ));
        }
    }
    Ok(())
}

/// A private service's answer to a request without an ID token (403): "Error: Forbidden", "Your
/// client does not have permission to get URL / from this server."
/// (https://github.com/googlecodelabs/feedback/issues/1587), in the same page as the 401.
pub fn forbidden_page(path: &str) -> String {
    google_page(
        "403 Forbidden",
        "Error: Forbidden",
        &format!(
            "Your client does not have permission to get URL <code>{path}</code> from this server."
        ),
    )
}

/// A private service's answer to a request whose token is not valid for it (401), as quoted
/// whole in https://github.com/google/adk-python/issues/3814.
pub fn unauthorized_page(path: &str) -> String {
    google_page(
        "401 Unauthorized",
        "Error: Unauthorized",
        &format!("Your client does not have permission to the requested URL <code>{path}</code>."),
    )
}

/// Google front end's HTML error page.
fn google_page(title: &str, heading: &str, message: &str) -> String {
    format!(
        "\n<html><head>\n<meta http-equiv=\"content-type\" content=\"text/html;charset=utf-8\">\n<title>{title}</title>\n</head>\n<body text=#000000 bgcolor=#ffffff>\n<h1>{heading}</h1>\n<h2>{message}</h2>\n<h2></h2>\n</body></html>\n"
    )
}

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

/// The finding, at start, that a revision's PID 1 will ignore SIGTERM, with the fixes.
pub fn ignores_sigterm(revision: &str) -> String {
    format!(
        "revision {revision}: the container's main process (PID 1) does not handle SIGTERM (read from /proc/PID/status when it became ready). A container's init ignores signals it has no handler for, so Cloud Run will SIGKILL it 10 seconds after asking it to stop (scale-in, a new revision, a shutdown), cutting in-flight work and cleanup short. Handle SIGTERM in the app, `exec` the server in an entrypoint script (a shell as PID 1 does not pass it on), or run it under an init such as tini. (`emulate` kills such instances at once when it stops.)"
    )
}

pub fn memory_limit_exceeded(limit_mib: u64, used_mib: u64) -> String {
    format!("Memory limit of {limit_mib} MiB exceeded with {used_mib} MiB used.")
}

/// The local hint printed under an architecture failure.
pub const AMD64_HINT: &str = "Cloud Run runs linux/amd64 only. Docker on Apple Silicon (and other arm64 machines) builds arm64 images by default; rebuild for amd64:\n    docker build --platform linux/amd64 -t IMAGE .\nor with buildx: docker buildx build --platform linux/amd64 -t IMAGE .";

/// Revision names are DNS labels: at most 63 characters.
pub const MAX_REVISION_NAME_LEN: usize = 63;
/// A tag URL's host starts with the label `TAG---SERVICE`, which must fit one DNS label.
pub const MAX_DNS_LABEL_LEN: usize = 63;

/// Cloud Run's text for a bad service name (its API's fieldViolation for `metadata.name`,
/// with today's 49-character limit).
pub fn service_name_rules() -> String {
    format!(
        "Service name must use only lowercase letters, numbers and '-'. Must begin with a letter and cannot end with a '-'. Maximum length is {MAX_SERVICE_NAME_LEN} characters."
    )
}

/// Cloud Run's text for a bad revision name (its API's fieldViolation for
/// `spec.template.metadata.name`).
pub const REVISION_NAME_RULES: &str = "only lowercase, digits, and hyphens; must begin with letter, and may not end with hyphen; must be less than 64 characters.";

/// A DNS-1035 label's characters: lower-case letters, digits and hyphens, starting with a
/// letter and not ending with a hyphen.
fn is_dns_label(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Checks a service name the way Cloud Run does: lower-case letters, digits and hyphens,
/// starting with a letter, not ending with a hyphen, at most 49 characters. `---` is refused
/// too: it separates the tag from the service in a tag's host (`TAG---SERVICE`), so such a
/// service could not be reached by its URL.
pub fn validate_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!(
            "a service name is required. {}",
            service_name_rules()
        ));
    }
    if name.len() > MAX_SERVICE_NAME_LEN || !is_dns_label(name) {
        return Err(format!(
            "'{}' is not a valid service name. {}",
            printable(name),
            service_name_rules()
        ));
    }
    if name.contains("---") {
        return Err(format!(
            "'{name}' is not a valid service name: '---' separates a tag from the service in a tag URL (TAG---SERVICE), so a service name may not contain it."
        ));
    }
    Ok(())
}

/// Checks a revision name: a DNS label of at most 63 characters that starts with
/// `SERVICE-`.
pub fn validate_revision_name(service: &str, name: &str) -> Result<(), String> {
    if name.len() > MAX_REVISION_NAME_LEN || !is_dns_label(name) {
        return Err(format!(
            "'{}' is not a valid revision name: {REVISION_NAME_RULES}",
            printable(name)
        ));
    }
    if !name.starts_with(&format!("{service}-")) {
        return Err(format!(
            "revision name '{name}' must start with the service name and a hyphen ('{service}-')"
        ));
    }
    Ok(())
}

/// Checks a name given to the API or a verb that looks a revision up (describe, delete):
/// only its form, since the service is not known.
pub fn validate_revision_lookup(name: &str) -> Result<(), String> {
    if name.len() > MAX_REVISION_NAME_LEN || !is_dns_label(name) {
        return Err(format!(
            "'{}' is not a valid revision name: {REVISION_NAME_RULES}",
            printable(name)
        ));
    }
    Ok(())
}

/// Checks `--revision-suffix`: the revision is `SERVICE-SUFFIX`, which must be a valid
/// revision name.
pub fn validate_revision_suffix(service: &str, suffix: &str) -> Result<String, String> {
    let name = format!("{service}-{suffix}");
    if suffix.is_empty()
        || !suffix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || suffix.ends_with('-')
        || suffix.starts_with('-')
    {
        return Err(format!(
            "'{}' is not a valid revision suffix: the revision name '{}' must be {REVISION_NAME_RULES}",
            printable(suffix),
            printable(&name)
        ));
    }
    if name.len() > MAX_REVISION_NAME_LEN {
        return Err(format!(
            "'{suffix}' is too long: the revision name '{name}' has {} characters; {REVISION_NAME_RULES}",
            name.len()
        ));
    }
    Ok(name)
}

/// Checks that a tag's host label `TAG---SERVICE` fits one DNS label (63 characters).
pub fn validate_tag_for_service(tag: &str, service: &str) -> Result<(), String> {
    let label = format!("{tag}---{service}");
    if label.len() > MAX_DNS_LABEL_LEN {
        return Err(format!(
            "tag '{tag}' is too long for service '{service}': the tag URL's host label '{label}' has {} characters, more than the {MAX_DNS_LABEL_LEN} a DNS label allows",
            label.len()
        ));
    }
    Ok(())
}

/// A user's text shown in a message: control characters escaped, at most 80 characters.
pub fn printable(text: &str) -> String {
    let escaped: String = text
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    if escaped.chars().count() > 80 {
        let cut: String = escaped.chars().take(77).collect();
        format!("{cut}...")
    } else {
        escaped
    }
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
    format!("{service}-{generation:05}-{}", random_suffix(3, rng))
}

/// `len` random lowercase letters and digits: the unique end of a generated name.
pub fn random_suffix(len: usize, rng: &mut impl Rng) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
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
        for bad in [
            "",
            "Hello",
            "1abc",
            "abc-",
            "a_b",
            "a---b",
            "a/b",
            "../x",
            &"a".repeat(50),
        ] {
            assert!(validate_service_name(bad).is_err(), "{bad} accepted");
        }
        assert!(validate_service_name("Bad")
            .unwrap_err()
            .contains("Must begin with a letter"));
        assert!(validate_service_name("a---b")
            .unwrap_err()
            .contains("'---'"));
    }

    #[test]
    fn revision_names_suffixes_and_tag_hosts_are_validated() {
        assert!(validate_revision_name("hello", "hello-00001-abc").is_ok());
        for bad in ["hello-", "hello-A", "hello-a/b", "hello-../x", "other-1"] {
            assert!(
                validate_revision_name("hello", bad).is_err(),
                "{bad} accepted"
            );
        }
        assert!(validate_revision_name("hello", &format!("hello-{}", "a".repeat(58))).is_err());
        assert_eq!(validate_revision_suffix("hello", "v2").unwrap(), "hello-v2");
        for bad in ["", "../x", "a/b", "BAD_SUFFIX", "-x", "x-", &"a".repeat(58)] {
            let error = validate_revision_suffix("hello", bad).unwrap_err();
            assert!(error.contains("revision"), "{bad}: {error}");
        }
        assert!(validate_revision_lookup("a/b").is_err());
        assert!(validate_revision_lookup("hello-1").is_ok());
        assert!(validate_tag_for_service("t", "hello").is_ok());
        assert!(validate_tag_for_service(&"t".repeat(40), &"s".repeat(30)).is_err());
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
