//! Parsers for the values users type in flags and files (memory, CPU, durations, env vars),
//! each failing with a message that names the flag and says what was expected.

use std::path::Path;
use std::time::Duration;

use crate::cloudrun::RESERVED_ENV;

pub mod serde_errors;

/// A bad value in a flag, a file or a document: where (the flag, or the dotted path of the
/// document's field), and why. Every layer reports bad input with it, from flags to the admin
/// API's documents.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
    /// What kind of mistake, for callers that treat one apart (smoke reports a reserved env
    /// name as one of Cloud Run's preflight findings, not as a usage error).
    pub problem: Problem,
}

/// The kinds of bad value a caller may treat apart from the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Problem {
    #[default]
    Invalid,
    /// An env var name Cloud Run sets itself (`PORT`, `K_SERVICE`...).
    ReservedEnvName { name: String },
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
            problem: Problem::Invalid,
        }
    }

    /// The same error, its message prefixed with where it was found (a file's path).
    fn within(self, place: impl std::fmt::Display) -> Self {
        FieldError {
            message: format!("{place}: {}", self.message),
            ..self
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> FieldError {
    FieldError::new(field, message)
}

/// Parses a Kubernetes quantity of memory (`512Mi`, `1Gi`, `1G`, `268435456`) into bytes.
pub fn parse_memory(field: &str, text: &str) -> Result<u64, FieldError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit {
        "" => 1,
        "k" | "K" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "T" => 1000u64.pow(4),
        "P" => 1000u64.pow(5),
        "E" => 1000u64.pow(6),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => {
            return Err(invalid(
                field,
                format!("'{text}' is not a memory size; use a number with Mi or Gi, e.g. 512Mi"),
            ))
        }
    };
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| {
            invalid(
                field,
                format!("'{text}' is not a memory size; use a number with Mi or Gi, e.g. 512Mi"),
            )
        })?;
    // Saturates on overflow: anything that large is out of range anyway.
    let bytes = (value * multiplier as f64) as u64;
    let (min, max) = (128u64 << 20, 32u64 << 30);
    if bytes > max {
        return Err(invalid(
            field,
            format!("'{text}' is out of range: Cloud Run's maximum memory is 32Gi"),
        ));
    }
    if bytes < min {
        return Err(invalid(
            field,
            format!("'{text}' is out of range: Cloud Run's minimum memory is 128Mi"),
        ));
    }
    Ok(bytes)
}

/// Parses a CPU limit (`1`, `2`, `0.5`, `1000m`) into millicores.
pub fn parse_cpu(field: &str, text: &str) -> Result<u64, FieldError> {
    let text = text.trim();
    let millis = if let Some(m) = text.strip_suffix('m') {
        m.parse::<u64>().ok()
    } else {
        text.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| (v * 1000.0).round() as u64)
    };
    let millis = millis.ok_or_else(|| {
        invalid(
            field,
            format!("'{text}' is not a CPU amount; use e.g. 1, 2, 0.5 or 1000m"),
        )
    })?;
    if !(80..=8000).contains(&millis) {
        return Err(invalid(
            field,
            format!("'{text}' is outside Cloud Run's range of 0.08 to 8 CPUs"),
        ));
    }
    Ok(millis)
}

/// Parses a duration flag or setting: plain seconds as gcloud takes them (`300`), or units
/// (`5m`, `1h`, `1m30s`, `500ms`, `1.5s`); see [`duration`].
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, FieldError> {
    duration(text).map_err(|e| match e {
        DurationError::Malformed => invalid(
            field,
            format!("'{text}' is not a duration; use seconds (300) or units (5m, 1h, 30s, 500ms)"),
        ),
        DurationError::OutOfRange => invalid(field, format!("'{}' is out of range", text.trim())),
    })
}

/// Why a text is not a duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurationError {
    Malformed,
    /// Too large for a duration.
    OutOfRange,
}

/// The one duration grammar, of flags, documents and checks files: a bare number of seconds
/// (gcloud's `300`, optionally `+300`), or one or more numbers each with a unit (`ms`, `s`,
/// `m`, `h`) that add up (`1m30s`), with spaces allowed around units (`3 s`). A number may have
/// up to nine decimals (`1.5s`, `.25s`): nanoseconds.
pub fn duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Malformed);
    }
    if is_bare_number(text) {
        let number = text.strip_prefix('+').unwrap_or(text);
        return to_duration(nanos(number, 1_000_000_000)?);
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or(DurationError::Malformed)?;
        let (number, after) = rest.split_at(number_len);
        let after = after.trim_start();
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let nanos_per_unit: u128 = match &after[..unit_len] {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(DurationError::Malformed),
        };
        total = total
            .checked_add(nanos(number, nanos_per_unit)?)
            .ok_or(DurationError::OutOfRange)?;
        rest = after[unit_len..].trim_start();
    }
    to_duration(total)
}

/// A number without a unit (`300`, `1.5`), which [`duration`] reads as seconds.
pub fn is_bare_number(text: &str) -> bool {
    let number = text.trim();
    let number = number.strip_prefix('+').unwrap_or(number);
    !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// `number` (digits, at most one `.`, at most nine decimals) of units of `per_unit` ns.
fn nanos(number: &str, per_unit: u128) -> Result<u128, DurationError> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty())
        || !digits_only(whole)
        || !digits_only(fraction)
        || fraction.len() > 9
    {
        return Err(DurationError::Malformed);
    }
    // Digits only: a failed parse is an overflow.
    let parse = |s: &str| match s.is_empty() {
        true => Ok(0u128),
        false => s.parse::<u128>().map_err(|_| DurationError::OutOfRange),
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let (whole, fraction) = (parse(whole)?, parse(fraction)?);
    whole
        .checked_mul(per_unit)
        .and_then(|n| n.checked_add(fraction * per_unit / scale))
        .ok_or(DurationError::OutOfRange)
}

fn to_duration(nanos: u128) -> Result<Duration, DurationError> {
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| DurationError::OutOfRange)?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Splits a gcloud list flag value: comma-separated, or with another delimiter chosen by a
/// `^DELIM^` prefix (`^:^a,b:c` is `["a,b", "c"]`), as `gcloud topic escaping` describes.
pub fn split_list(text: &str) -> Vec<String> {
    let (delimiter, body) = match text.strip_prefix('^').and_then(|t| t.split_once('^')) {
        Some((d, body)) if !d.is_empty() => (d.to_string(), body),
        _ => (",".to_string(), text),
    };
    if body.is_empty() {
        return Vec::new();
    }
    body.split(delimiter.as_str()).map(str::to_string).collect()
}

/// Parses `--set-env-vars K=V,K2=V2` into pairs, checking names and values; a name given
/// twice is refused.
pub fn parse_env_vars(field: &str, text: &str) -> Result<Vec<(String, String)>, FieldError> {
    let pairs = split_list(text)
        .into_iter()
        .map(|item| {
            let (name, value) = item.split_once('=').ok_or_else(|| {
                invalid(
                    field,
                    format!("'{}' is not of the form NAME=VALUE", printable(&item)),
                )
            })?;
            check_env_name(field, name)?;
            check_env_value(field, name, value)?;
            Ok((name.to_string(), value.to_string()))
        })
        .collect::<Result<Vec<_>, FieldError>>()?;
    check_no_duplicate_env(field, &pairs)?;
    Ok(pairs)
}

/// Env names and values are at most 32768 characters (Cloud Run's limit).
pub const MAX_ENV_LEN: usize = 32768;

/// Checks an env var name as Cloud Run's API does: non-empty, at most 32768 characters,
/// printable ASCII without `=` (Kubernetes' relaxed rule, which Cloud Run's API follows since
/// it dropped the C_IDENTIFIER requirement), and not one Cloud Run reserves.
pub fn check_env_name(field: &str, name: &str) -> Result<(), FieldError> {
    let printable_ascii = name
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'=');
    if name.is_empty() || name.len() > MAX_ENV_LEN || !printable_ascii {
        return Err(invalid(
            field,
            format!(
                "'{}' is not a valid env var name: a name is 1 to {MAX_ENV_LEN} printable ASCII characters other than '='",
                printable(name)
            ),
        ));
    }
    if RESERVED_ENV.contains(&name) {
        return Err(FieldError {
            problem: Problem::ReservedEnvName {
                name: name.to_string(),
            },
            ..invalid(
                field,
                format!(
                    "the env var name '{name}' is reserved: Cloud Run sets {} itself. Remove it from your settings (use --port to change PORT)",
                    RESERVED_ENV.join(", ")
                ),
            )
        });
    }
    Ok(())
}

/// Checks an env var value: no NUL byte (a process environment cannot carry one) and at most
/// 32768 bytes.
pub fn check_env_value(field: &str, name: &str, value: &str) -> Result<(), FieldError> {
    if value.contains('\0') {
        return Err(invalid(
            field,
            format!("the value of env var '{name}' contains a NUL character, which a process environment cannot hold"),
        ));
    }
    if value.len() > MAX_ENV_LEN {
        return Err(invalid(
            field,
            format!(
                "the value of env var '{name}' is {} bytes long; Cloud Run's maximum is {MAX_ENV_LEN}",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Refuses a name given twice in one list.
pub fn check_no_duplicate_env(field: &str, pairs: &[(String, String)]) -> Result<(), FieldError> {
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in pairs {
        if !seen.insert(name.as_str()) {
            return Err(invalid(
                field,
                format!("the env var '{name}' is set more than once; set each name once"),
            ));
        }
    }
    Ok(())
}

/// A user's text shown in a message: control characters escaped, long text cut.
fn printable(text: &str) -> String {
    crate::cloudrun::printable(text)
}

/// The largest file of user input read (service YAML, env files, checks files): 4 MiB, the
/// admin API's limit on request bodies.
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;
/// The deepest flow nesting (`[`, `{`) accepted in a YAML or JSON document. The YAML parser
/// takes quadratic time on deep flow nesting (100k levels: minutes), and no Cloud Run document
/// nests anywhere near this deep; serde_json's own limit is 128.
pub const MAX_DOCUMENT_DEPTH: usize = 100;

/// Checks a document read from a file before it is parsed: its size and nesting depth.
pub fn check_document(text: &str) -> Result<(), String> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "the document is {} bytes; the limit is {} MiB",
            text.len(),
            MAX_DOCUMENT_BYTES >> 20
        ));
    }
    let depth = flow_depth(text);
    if depth > MAX_DOCUMENT_DEPTH {
        return Err(format!(
            "the document nests more than {MAX_DOCUMENT_DEPTH} levels deep"
        ));
    }
    Ok(())
}

/// The deepest nesting of `[`/`{` outside quoted strings and comments: an estimate, never
/// less than the truth for well-formed YAML or JSON.
fn flow_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quote: Option<u8> = None;
    let mut previous = b'\n';
    let mut bytes = text.bytes().peekable();
    while let Some(b) = bytes.next() {
        match quote {
            Some(b'"') if b == b'\\' => {
                bytes.next();
            }
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None => match b {
                b'"' | b'\'' if b" \t\n[{,:".contains(&previous) => quote = Some(b),
                b'#' if b" \t\n".contains(&previous) => {
                    for c in bytes.by_ref() {
                        if c == b'\n' {
                            break;
                        }
                    }
                    previous = b'\n';
                    continue;
                }
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        previous = b;
    }
    deepest
}

/// Reads an env vars file: YAML (`NAME: value`, what `gcloud --env-vars-file` takes) or a
/// `.env` file (`NAME=value` lines, `#` comments, optional quotes).
pub fn read_env_file(field: &str, path: &Path) -> Result<Vec<(String, String)>, FieldError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))?;
    check_document(&text).map_err(|m| invalid(field, format!("{}: {m}", path.display())))?;
    let is_yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let looks_like_dotenv = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .all(|l| {
            l.split_once('=')
                .is_some_and(|(k, _)| !k.contains(':') && !k.trim().is_empty())
        });
    let pairs = if !is_yaml && looks_like_dotenv {
        parse_dotenv(&text)
    } else {
        parse_env_yaml(&text).map_err(|m| invalid(field, format!("{}: {m}", path.display())))?
    };
    let in_file = |e: FieldError| e.within(path.display());
    for (name, value) in &pairs {
        check_env_name(field, name).map_err(in_file)?;
        check_env_value(field, name, value).map_err(in_file)?;
    }
    check_no_duplicate_env(field, &pairs).map_err(in_file)?;
    Ok(pairs)
}

fn parse_dotenv(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let k = k.trim().trim_start_matches("export ").trim();
            let v = v.trim();
            let v = ['"', '\'']
                .iter()
                .find_map(|q| v.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(v);
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn parse_env_yaml(text: &str) -> Result<Vec<(String, String)>, String> {
    let map: serde_yaml_ng::Mapping = serde_yaml_ng::from_str(text)
        .map_err(|e| format!("expected a YAML map of NAME: value ({e})"))?;
    map.into_iter()
        .map(|(k, v)| {
            let name = k
                .as_str()
                .ok_or_else(|| format!("key {k:?} is not a string"))?
                .to_string();
            let value = match v {
                serde_yaml_ng::Value::String(s) => s,
                serde_yaml_ng::Value::Number(n) => n.to_string(),
                serde_yaml_ng::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "{name}: expected a string, number or boolean, found {other:?}"
                    ))
                }
            };
            Ok((name, value))
        })
        .collect()
}

/// RFC 3339 UTC time (`2026-12-01T14:00:00Z`), with nanoseconds when `fraction` is set
/// (`2026-12-01T14:00:00.123456789Z`, as Cloud Logging writes timestamps).
pub fn rfc3339(time: std::time::SystemTime, fraction: bool) -> String {
    let since = time
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let fraction = match fraction {
        true => format!(".{:09}", since.subsec_nanos()),
        false => String::new(),
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities() {
        assert_eq!(parse_memory("--memory", "512Mi").unwrap(), 512 << 20);
        assert_eq!(parse_memory("--memory", "1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_memory("--memory", "1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_memory("--memory", "0.5Gi").unwrap(), 512 << 20);
        let err = parse_memory("--memory", "lots").unwrap_err().to_string();
        assert!(err.starts_with("--memory: 'lots'"), "{err}");
        assert_eq!(
            parse_memory("--memory", "64Mi").unwrap_err().to_string(),
            "--memory: '64Mi' is out of range: Cloud Run's minimum memory is 128Mi"
        );
        let err = parse_memory("--memory", "1Ti").unwrap_err().to_string();
        assert_eq!(
            err,
            "--memory: '1Ti' is out of range: Cloud Run's maximum memory is 32Gi"
        );
        assert_eq!(
            parse_memory("--memory", "99999999999Ei")
                .unwrap_err()
                .to_string(),
            "--memory: '99999999999Ei' is out of range: Cloud Run's maximum memory is 32Gi"
        );
    }

    #[test]
    fn env_names_values_and_duplicates() {
        for good in ["A", "_a1", "1A", "A B", "a.b-c"] {
            assert!(check_env_name("--set-env-vars", good).is_ok(), "{good:?}");
        }
        for bad in ["", "A=B", "A\0B", "A\nB", "\u{e9}"] {
            let err = check_env_name("--set-env-vars", bad).unwrap_err();
            assert!(err.message.contains("not a valid env var name"), "{err}");
        }
        let err = parse_env_vars("--set-env-vars", "A=x\0y").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--set-env-vars: the value of env var 'A' contains a NUL"),
            "{err}"
        );
        let err = parse_env_vars("--set-env-vars", "A=1,B=2,A=3").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--set-env-vars: the env var 'A' is set more than once; set each name once"
        );
    }

    #[test]
    fn huge_durations_are_out_of_range_not_a_panic() {
        let err = parse_duration("--timeout", "99999999999999999h").unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = parse_duration("--timeout", "18446744073709551615s18446744073709551615s")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--timeout: '1844") && err.ends_with("is out of range"),
            "{err}"
        );
    }

    #[test]
    fn documents_are_limited_in_size_and_depth() {
        assert!(check_document("a: [1, {b: '[[[['}]\n# [[[[[\n").is_ok());
        let deep = format!("{}{}", "[".repeat(101), "]".repeat(101));
        assert!(check_document(&deep)
            .unwrap_err()
            .contains("nests more than 100"));
        let dir = std::env::temp_dir().join(format!("emulate-deepenv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("env.yaml");
        std::fs::write(
            &file,
            format!("A: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
        )
        .unwrap();
        let err = read_env_file("--env-vars-file", &file)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--env-vars-file: "), "{err}");
        assert!(err.contains("env.yaml: the document nests"), "{err}");
        let dotenv = dir.join("vars.env");
        std::fs::write(&dotenv, "A=1\nA=2\n").unwrap();
        let err = read_env_file("--env-vars-file", &dotenv)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'A' is set more than once"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cpu_amounts() {
        assert_eq!(parse_cpu("--cpu", "1").unwrap(), 1000);
        assert_eq!(parse_cpu("--cpu", "0.5").unwrap(), 500);
        assert_eq!(parse_cpu("--cpu", "2000m").unwrap(), 2000);
        assert_eq!(
            parse_cpu("--cpu", "9").unwrap_err().to_string(),
            "--cpu: '9' is outside Cloud Run's range of 0.08 to 8 CPUs"
        );
        assert_eq!(
            parse_cpu("--cpu", "one").unwrap_err().to_string(),
            "--cpu: 'one' is not a CPU amount; use e.g. 1, 2, 0.5 or 1000m"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("t", "300").unwrap(),
            Duration::from_secs(300)
        );
        assert_eq!(parse_duration("t", "5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("t", "1m30s").unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_duration("t", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        // One grammar with checks files: fractions, hours and spaced units too.
        assert_eq!(
            parse_duration("t", "5 m").unwrap(),
            Duration::from_secs(300)
        );
        assert_eq!(
            parse_duration("t", "1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_duration("t", "+300").unwrap(),
            Duration::from_secs(300)
        );
        for bad in ["", "m", "5x", "-1", "1m30", "1.2.3s", "1e3ms", "s5", "."] {
            let err = parse_duration("--timeout", bad).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("--timeout: '{bad}' is not a duration; use seconds (300) or units (5m, 1h, 30s, 500ms)")
            );
        }
    }

    #[test]
    fn env_vars_and_escaping() {
        assert_eq!(
            parse_env_vars("--set-env-vars", "A=1,B=x=y").unwrap(),
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(
            parse_env_vars("--set-env-vars", "^:^LIST=a,b:C=3").unwrap(),
            vec![("LIST".into(), "a,b".into()), ("C".into(), "3".into())]
        );
        let err = parse_env_vars("--set-env-vars", "K_REVISION=x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("'K_REVISION' is reserved"), "{err}");
        assert_eq!(
            parse_env_vars("--set-env-vars", "K_REVISION=x")
                .unwrap_err()
                .problem,
            Problem::ReservedEnvName {
                name: "K_REVISION".into()
            }
        );
        assert_eq!(
            parse_env_vars("--set-env-vars", "A=1,A=2")
                .unwrap_err()
                .problem,
            Problem::Invalid
        );
        assert_eq!(
            parse_env_vars("--set-env-vars", "NOVALUE")
                .unwrap_err()
                .to_string(),
            "--set-env-vars: 'NOVALUE' is not of the form NAME=VALUE"
        );
    }

    #[test]
    fn env_files_in_yaml_and_dotenv() {
        let dir = std::env::temp_dir().join(format!("emulate-envfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = dir.join("env.yaml");
        std::fs::write(&yaml, "GREETING: hi there\nCOUNT: 3\n").unwrap();
        assert_eq!(
            read_env_file("--env-vars-file", &yaml).unwrap(),
            vec![
                ("GREETING".into(), "hi there".into()),
                ("COUNT".into(), "3".into())
            ]
        );
        let dotenv = dir.join(".env");
        std::fs::write(&dotenv, "# comment\nexport A=1\nB=\"two words\"\n").unwrap();
        assert_eq!(
            read_env_file("--env-vars-file", &dotenv).unwrap(),
            vec![("A".into(), "1".into()), ("B".into(), "two words".into())]
        );
        std::fs::write(&dotenv, "PORT=9000\n").unwrap();
        assert!(read_env_file("--env-vars-file", &dotenv)
            .unwrap_err()
            .to_string()
            .contains("'PORT' is reserved"));
        // A reserved name is told by its kind, in a file as on the command line.
        let in_file = read_env_file("--env-vars-file", &dotenv).unwrap_err();
        assert_eq!(
            in_file.problem,
            Problem::ReservedEnvName {
                name: "PORT".into()
            }
        );
        assert_eq!(in_file.field, "--env-vars-file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
