//! Parsers for the values users type in flags and files (memory, CPU, durations, env vars),
//! each failing with a message that names the flag and says what was expected.

use std::path::Path;
use std::time::Duration;

use crate::cloudrun::RESERVED_ENV;

/// A bad value in a flag or file: which one, and why.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidValue {
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> InvalidValue {
    InvalidValue {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Parses a Kubernetes quantity of memory (`512Mi`, `1Gi`, `1G`, `268435456`) into bytes.
pub fn parse_memory(field: &str, text: &str) -> Result<u64, InvalidValue> {
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
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => {
            return Err(invalid(
                field,
                format!("'{text}' is not a memory size; use a number with Mi or Gi, e.g. 512Mi"),
            ))
        }
    };
    let value: f64 = number.parse().map_err(|_| {
        invalid(
            field,
            format!("'{text}' is not a memory size; use a number with Mi or Gi, e.g. 512Mi"),
        )
    })?;
    let bytes = (value * multiplier as f64) as u64;
    let (min, max) = (128u64 << 20, 32u64 << 30);
    if !(min..=max).contains(&bytes) {
        return Err(invalid(
            field,
            format!("'{text}' is outside Cloud Run's range of 128Mi to 32Gi"),
        ));
    }
    Ok(bytes)
}

/// Parses a CPU limit (`1`, `2`, `0.5`, `1000m`) into millicores.
pub fn parse_cpu(field: &str, text: &str) -> Result<u64, InvalidValue> {
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

/// Parses a duration as gcloud does: plain seconds (`300`) or with units (`5m`, `1h`, `1m30s`,
/// `500ms`).
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, InvalidValue> {
    let bad = || {
        invalid(
            field,
            format!("'{text}' is not a duration; use seconds (300) or units (5m, 1h, 30s, 500ms)"),
        )
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value * 60),
            "h" => Duration::from_secs(value * 3600),
            _ => return Err(bad()),
        };
        total += unit;
        rest = &rest[unit_len..];
    }
    Ok(total)
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

/// Parses `--set-env-vars K=V,K2=V2` into pairs, checking names.
pub fn parse_env_vars(field: &str, text: &str) -> Result<Vec<(String, String)>, InvalidValue> {
    split_list(text)
        .into_iter()
        .map(|item| {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| invalid(field, format!("'{item}' is not of the form NAME=VALUE")))?;
            check_env_name(field, name)?;
            Ok((name.to_string(), value.to_string()))
        })
        .collect()
}

/// Checks an env var name: non-empty, no `=`, and not one Cloud Run reserves.
pub fn check_env_name(field: &str, name: &str) -> Result<(), InvalidValue> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(invalid(
            field,
            format!("'{name}' is not a valid env var name"),
        ));
    }
    if RESERVED_ENV.contains(&name) {
        return Err(invalid(
            field,
            format!(
                "the env var name '{name}' is reserved: Cloud Run sets {} itself. Remove it from your settings (use --port to change PORT)",
                RESERVED_ENV.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Reads an env vars file: YAML (`NAME: value`, what `gcloud --env-vars-file` takes) or a
/// `.env` file (`NAME=value` lines, `#` comments, optional quotes).
pub fn read_env_file(field: &str, path: &Path) -> Result<Vec<(String, String)>, InvalidValue> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))?;
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
    for (name, _) in &pairs {
        check_env_name(field, name)?;
    }
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
        assert!(parse_memory("--memory", "64Mi").is_err());
    }

    #[test]
    fn cpu_amounts() {
        assert_eq!(parse_cpu("--cpu", "1").unwrap(), 1000);
        assert_eq!(parse_cpu("--cpu", "0.5").unwrap(), 500);
        assert_eq!(parse_cpu("--cpu", "2000m").unwrap(), 2000);
        assert!(parse_cpu("--cpu", "9").is_err());
        assert!(parse_cpu("--cpu", "one").is_err());
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
        for bad in ["", "m", "5 m", "5x", "-1"] {
            assert!(parse_duration("t", bad).is_err(), "{bad:?} accepted");
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
        assert!(parse_env_vars("--set-env-vars", "NOVALUE").is_err());
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
