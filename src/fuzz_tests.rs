//! Property tests for every parser of user input: many seeded random inputs (random bytes,
//! and mutations of valid documents and flags), each run bounded in time. The properties: no
//! parser panics, and every error names the field, flag or path it is about.
//!
//! The seed is fixed so a failure reproduces; set `EMULATE_FUZZ_SEED` to explore others.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use tokio::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config;
use crate::control::knative;
use crate::control::template::{self, Secrets};
use crate::control::traffic;
use crate::smoke::checks;

/// Each parser gets at most this long (and at most `MAX_CASES` inputs).
const BUDGET: Duration = Duration::from_secs(2);
const MAX_CASES: usize = 5_000;

fn rng() -> StdRng {
    let seed = std::env::var("EMULATE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0008);
    StdRng::seed_from_u64(seed)
}

/// Runs `check` on generated inputs until the budget is spent; a panic is reported with the
/// input that caused it.
fn fuzz(name: &str, mut generate: impl FnMut(&mut StdRng) -> String, check: impl Fn(&str)) {
    let mut rng = rng();
    let started = Instant::now();
    let mut cases = 0;
    while cases < MAX_CASES && started.elapsed() < BUDGET {
        let input = generate(&mut rng);
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            panic!("{name}: panicked on input {input:?}");
        }
        cases += 1;
    }
    assert!(cases >= 50, "{name}: only {cases} cases ran");
}

/// Characters that matter to the parsers: YAML and flag syntax, digits, units, controls.
const INTERESTING: &[&str] = &[
    ":",
    "-",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "=",
    "'",
    "\"",
    "#",
    "\n",
    "\n  ",
    "\t",
    "\0",
    " ",
    "0",
    "1",
    "-1",
    "99999999999999999999",
    "1e400",
    ".",
    "Mi",
    "Gi",
    "Ti",
    "m",
    "s",
    "h",
    "ms",
    "^",
    "^:^",
    "---",
    "../",
    "/",
    "é",
    "\u{7f}",
    "~",
    "&a",
    "*a",
    "!!str",
    "|",
    ">",
    "null",
    "true",
    "LATEST",
    "latestRevision",
    "percent",
    "containerConcurrency",
    "env",
    "name",
];

fn random_bytes(rng: &mut StdRng) -> String {
    let len = rng.random_range(0..64);
    let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A few random edits of a valid text: deletions, insertions of interesting tokens,
/// duplicated or swapped lines.
fn mutate(rng: &mut StdRng, valid: &str) -> String {
    let mut text: Vec<char> = valid.chars().collect();
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(0..=text.len());
        match rng.random_range(0..5) {
            0 if at < text.len() => {
                let end = (at + rng.random_range(1..8)).min(text.len());
                text.drain(at..end);
            }
            1 | 2 => {
                let token = INTERESTING[rng.random_range(0..INTERESTING.len())];
                text.splice(at..at, token.chars());
            }
            3 => {
                let lines: Vec<String> = text
                    .iter()
                    .collect::<String>()
                    .lines()
                    .map(str::to_string)
                    .collect();
                if lines.len() > 1 {
                    let (a, b) = (
                        rng.random_range(0..lines.len()),
                        rng.random_range(0..lines.len()),
                    );
                    let mut lines = lines;
                    lines.swap(a, b);
                    text = lines.join("\n").chars().collect();
                }
            }
            _ => {
                let random = random_bytes(rng);
                text.splice(at..at, random.chars().take(4));
            }
        }
    }
    text.into_iter().collect()
}

fn input(rng: &mut StdRng, valid: &[&str]) -> String {
    if rng.random_bool(0.2) {
        random_bytes(rng)
    } else {
        let base = valid[rng.random_range(0..valid.len())];
        mutate(rng, base)
    }
}

const SERVICE_YAML: &str = r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  annotations:
    run.googleapis.com/ingress: all
spec:
  template:
    metadata:
      name: hello-00003-abc
      annotations:
        autoscaling.knative.dev/minScale: '0'
        autoscaling.knative.dev/maxScale: '100'
    spec:
      containerConcurrency: 80
      timeoutSeconds: 300
      containers:
      - image: hello
        ports:
        - containerPort: 8080
          name: http1
        env:
        - name: GREETING
          value: hi
        resources:
          limits: {cpu: 1000m, memory: 512Mi}
        startupProbe:
          httpGet: {path: /ready}
          periodSeconds: 5
  traffic:
  - latestRevision: true
    percent: 0
    tag: candidate
  - revisionName: hello-00001-abc
    percent: 100
"#;

const SERVICE_JSON: &str = r#"{"apiVersion":"serving.knative.dev/v1","kind":"Service","metadata":{"name":"hello"},"spec":{"template":{"spec":{"containerConcurrency":1,"containers":[{"image":"hello","env":[{"name":"A","value":"1"}],"ports":[{"containerPort":8080}]}]}},"traffic":[{"latestRevision":true,"percent":100}]}}"#;

/// A field path: the dotted path of the field (which may be the user's own unknown key), or
/// `(document)`; never empty.
fn is_field_path(path: &str) -> bool {
    !path.trim().is_empty()
}

fn check_service_document(service: Result<knative::Service, crate::config::FieldError>) {
    let service = match service {
        Ok(service) => service,
        Err(e) => {
            assert!(is_field_path(&e.field), "error without a field path: {e}");
            assert!(!e.message.is_empty(), "error without a message: {e}");
            return;
        }
    };
    if let Err(e) = knative::validate_names(&service) {
        assert!(is_field_path(&e.field), "{e}");
    }
    if let Err(e) = knative::traffic_from_doc(&service.spec.traffic) {
        assert!(e.field.starts_with("spec.traffic"), "{e}");
    }
    let mut notes = Vec::new();
    if let Err(e) = template::resolve(&service.spec.template, &Secrets::default(), &mut notes) {
        assert!(e.field.starts_with("spec.template"), "{e}");
        assert!(!e.message.is_empty(), "{e}");
    }
}

#[test]
fn service_yaml_never_panics_and_errors_name_a_field() {
    fuzz(
        "service yaml",
        |rng| input(rng, &[SERVICE_YAML, SERVICE_JSON]),
        |text| check_service_document(knative::parse_service_yaml(text)),
    );
}

#[test]
fn service_json_never_panics_and_errors_name_a_field() {
    fuzz(
        "service json",
        |rng| input(rng, &[SERVICE_JSON]),
        |text| check_service_document(knative::parse_service_json(text.as_bytes())),
    );
}

#[test]
fn traffic_flags_never_panic_and_errors_name_the_flag() {
    fuzz(
        "traffic flags",
        |rng| {
            input(
                rng,
                &["LATEST=10,hello-00001-abc=90", "candidate=100", "a=0"],
            )
        },
        |text| {
            for flag in ["--to-revisions", "--to-tags"] {
                match traffic::parse_percentages(flag, text) {
                    Ok(pairs) => {
                        let named: Vec<(traffic::TargetKey, u32)> = pairs
                            .iter()
                            .map(|(k, p)| (traffic::TargetKey::parse(k), *p))
                            .collect();
                        // The traffic math must not panic on whatever the flag held.
                        let _ = traffic::update(&[], &traffic::TagUpdate::default(), Some(&named));
                    }
                    Err(e) => {
                        let message = traffic::flag_error(flag, &e);
                        assert!(message.contains(flag), "{message}");
                    }
                }
            }
            for tag in config::split_list(text) {
                if traffic::validate_tag(&tag).is_ok() {
                    let _ = crate::cloudrun::validate_tag_for_service(&tag, "hello");
                }
            }
        },
    );
}

#[test]
fn env_flags_never_panic_and_errors_name_the_flag() {
    fuzz(
        "env flags",
        |rng| input(rng, &["A=1,B=x=y", "^:^LIST=a,b:C=3", "K_SERVICE=x"]),
        |text| {
            if let Err(e) = config::parse_env_vars("--set-env-vars", text) {
                assert_eq!(e.field, "--set-env-vars");
                assert!(!e.message.is_empty());
            }
        },
    );
}

#[test]
fn env_files_never_panic_and_errors_name_the_flag_and_file() {
    let dir = std::env::temp_dir().join(format!("emulate-fuzz-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (yaml, dotenv) = (dir.join("env.yaml"), dir.join("vars.env"));
    fuzz(
        "env files",
        |rng| {
            input(
                rng,
                &[
                    "GREETING: hi there\nCOUNT: 3\n",
                    "# c\nexport A=1\nB=\"two words\"\n",
                ],
            )
        },
        |text| {
            for path in [&yaml, &dotenv] {
                std::fs::write(path, text).unwrap();
                if let Err(e) = config::read_env_file("--env-vars-file", path) {
                    assert_eq!(e.field, "--env-vars-file");
                    assert!(e.message.contains(&path.display().to_string()), "{e}");
                }
            }
        },
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn durations_memory_and_cpu_never_panic_and_errors_name_the_flag() {
    fuzz(
        "quantities",
        |rng| {
            input(
                rng,
                &[
                    "300", "5m", "1m30s", "250ms", "512Mi", "1Gi", "0.5", "1000m", "2",
                ],
            )
        },
        |text| {
            if let Err(e) = config::parse_duration("--timeout", text) {
                assert_eq!(e.field, "--timeout");
            }
            if let Err(e) = config::parse_memory("--memory", text) {
                assert_eq!(e.field, "--memory");
                assert!(e.message.contains('\''), "{e}");
            }
            if let Err(e) = config::parse_cpu("--cpu", text) {
                assert_eq!(e.field, "--cpu");
            }
            if let Err(e) = checks::parse_duration(text) {
                assert!(e.contains("duration"), "{e}");
            }
        },
    );
}

const CHECKS_FILE: &str = r#"checks:
- name: home page
  request: GET /
  expect:
    status: 200
    bodyContains: hello
- name: api
  request:
    method: POST
    path: /api
    headers: {Accept: application/json}
  expect: {status: 2xx, headers: {content-type: application/json}}
"#;

#[test]
fn the_checks_file_never_panics_and_errors_name_a_field() {
    fuzz(
        "checks file",
        |rng| input(rng, &[CHECKS_FILE]),
        |text| {
            if let Err(e) = checks::parse_checks_file(text) {
                assert!(is_field_path(&e.field), "error without a field path: {e}");
            }
            let _ = checks::parse_request_line(text);
            let _ = checks::parse_header_line(text);
        },
    );
}

#[test]
fn metadata_requests_and_flags_never_panic() {
    use crate::metadata::{Metadata, MetadataConfig};
    let server = Metadata::new(
        MetadataConfig {
            project_id: "my-project".into(),
            region: "us-central1".into(),
            service_account: None,
            credentials: crate::metadata::Credentials::Offline,
        },
        crate::metadata::identity::test_key(),
    );
    let mut headers = http::HeaderMap::new();
    headers.insert("metadata-flavor", http::HeaderValue::from_static("Google"));
    fuzz(
        "metadata paths",
        |rng| {
            input(
                rng,
                &[
                    "/computeMetadata/v1/instance/service-accounts/default/?recursive=true&alt=text",
                    "/computeMetadata/v1/project/project-id?alt=json",
                    "/computeMetadata/v1//instance//",
                ],
            )
        },
        |text| {
            let (path, query) = text.split_once('?').unwrap_or((text, ""));
            let answer = futures_util::FutureExt::now_or_never(server.answer(
                &http::Method::GET,
                path,
                query,
                &headers,
            ))
            .expect("an offline answer is ready at once");
            assert!(answer.status.as_u16() < 500, "{text:?}: {answer:?}");
        },
    );
    fuzz(
        "metadata flags",
        |rng| {
            input(
                rng,
                &["my-project", "us-east1", "sa@p.iam.gserviceaccount.com"],
            )
        },
        |text| {
            if let Err(e) = MetadataConfig::from_flags(
                Some(text.to_string()),
                text.to_string(),
                Some(text.to_string()),
                crate::metadata::Credentials::Offline,
                |_| None,
                |_| None,
            ) {
                assert!(e.field.starts_with("--"), "{e}");
            }
        },
    );
}
