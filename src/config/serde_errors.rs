//! Serde's errors in the words of the user's YAML or JSON: the field's path, "a list" rather
//! than "a sequence", a range rather than a Rust type, and a "did you mean" for every unknown
//! key. Service documents and checks files both go through here.

use super::FieldError;

/// A serde error as a field error: the path it found (`(document)` at the top, where a YAML
/// error's line and column are the only "where"), and its message in the user's words.
pub fn field_error(path: &str, inner: &str) -> FieldError {
    // serde_yaml_ng starts some messages with its own notion of the path.
    let message = match inner.split_once(": ") {
        Some((head, tail))
            if !head.contains(' ')
                && (path == head
                    || path
                        .strip_prefix(head)
                        .is_some_and(|rest| rest.starts_with(['.', '[']))) =>
        {
            tail
        }
        _ => inner,
    };
    if path == "." || path == "?" || path.is_empty() {
        return FieldError::new("(document)", friendly(message));
    }
    // Elsewhere the path says where better than a line and column.
    let message = match message.rsplit_once(" at line ") {
        Some((message, location))
            if location
                .split_once(" column ")
                .is_some_and(|(line, column)| {
                    line.parse::<u64>().is_ok() && column.parse::<u64>().is_ok()
                }) =>
        {
            message
        }
        _ => message,
    };
    FieldError::new(path, friendly(message))
}

/// Serde's messages speak Rust ("expected u16", "invalid type: sequence"); users wrote YAML.
fn friendly(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, allowed)) = rest.split_once('`') {
            return unknown_key(key, allowed);
        }
    }
    if let Some(key) = message.strip_prefix("missing field ") {
        return format!("missing required key {key}");
    }
    if let Some(key) = message.strip_prefix("duplicate field ") {
        return format!("key {key} is given twice");
    }
    // An integer out of its type's range: the range, not the type.
    if let Some((found, int)) = message
        .strip_prefix("invalid value: integer `")
        .and_then(|m| m.split_once("`, expected "))
    {
        let max = match int {
            "u16" => Some(u64::from(u16::MAX)),
            "u32" => Some(u64::from(u32::MAX)),
            "i32" => Some(i32::MAX as u64),
            "i64" => Some(i64::MAX as u64),
            "u64" | "usize" => Some(u64::MAX),
            _ => None,
        };
        if let Some(max) = max {
            return if found.starts_with('-') {
                format!("{found} is out of range: it must be 0 or more")
            } else {
                format!("{found} is out of range: it must be at most {max}")
            };
        }
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((found, expected)) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.rsplit_once(", expected "))
        {
            return format!(
                "expected {}, found {}",
                yaml_expected(expected),
                yaml_found(found)
            );
        }
    }
    message.to_string()
}

fn yaml_expected(expected: &str) -> &str {
    match expected {
        "i64" | "u64" | "i32" | "u32" | "u16" | "usize" => "an integer",
        "a sequence" => "a list",
        "a map" => "a mapping",
        other => other,
    }
}

fn yaml_found(found: &str) -> String {
    match found {
        "unit value" => "nothing (null)".to_string(),
        "sequence" => "a list".to_string(),
        "map" => "a mapping".to_string(),
        other => {
            // `integer `5``, `boolean `true``, `integer `1e20` as u128`: the value alone.
            match other.split('`').nth(1) {
                Some(value) => value.to_string(),
                None => other.strip_prefix("string ").unwrap_or(other).to_string(),
            }
        }
    }
}

/// "unknown key `expct`, did you mean `expect`? ..." from serde's list of the keys it knows.
fn unknown_key(key: &str, allowed: &str) -> String {
    let known: Vec<&str> = allowed.split('`').skip(1).step_by(2).collect();
    let mut message = format!("unknown key `{key}`");
    if let Some(near) = closest(key, known.iter().copied()) {
        message.push_str(&format!(", did you mean `{near}`?"));
    }
    if !known.is_empty() {
        let known: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        message.push_str(&format!(" (the keys here are {})", known.join(", ")));
    }
    message
}

/// The known name closest to a misspelt one, if it is close enough to be a typo: the same
/// name in another case or with `_` or `-` (`latency_below` for `latencyBelow`), or at most
/// a third of its letters changed.
pub fn closest<'a>(key: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    names
        .map(|name| {
            let distance = if squash(name) == squash(key) {
                0
            } else {
                edit_distance(&key.to_lowercase(), &name.to_lowercase())
            };
            (distance, name)
        })
        .filter(|(distance, name)| *distance <= (name.chars().count() / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_suggest_the_closest_known_name() {
        let names = ["containerConcurrency", "timeoutSeconds", "containers"];
        assert_eq!(
            closest("containerConcurency", names.iter().copied()),
            Some("containerConcurrency")
        );
        assert_eq!(
            closest("container_concurrency", names.iter().copied()),
            Some("containerConcurrency")
        );
        assert_eq!(
            closest("TIMEOUTSECONDS", names.iter().copied()),
            Some("timeoutSeconds")
        );
        assert_eq!(closest("zzzzzzzzzz", names.iter().copied()), None);
        assert_eq!(closest("x", ["y"].into_iter()), Some("y"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn serde_messages_are_said_in_yaml_words() {
        let cases = [
            (
                "unknown field `expct`, expected one of `name`, `expect`",
                "unknown key `expct`, did you mean `expect`? (the keys here are `name`, `expect`)",
            ),
            ("missing field `name`", "missing required key `name`"),
            (
                "invalid value: integer `-1`, expected u16",
                "-1 is out of range: it must be 0 or more",
            ),
            (
                "invalid value: integer `70000`, expected u16",
                "70000 is out of range: it must be at most 65535",
            ),
            (
                "invalid type: string \"many\", expected u32",
                "expected an integer, found \"many\"",
            ),
            (
                "invalid type: sequence, expected a map",
                "expected a mapping, found a list",
            ),
        ];
        for (serde, ours) in cases {
            assert_eq!(field_error("a.b", serde).message, ours, "{serde}");
        }
    }

    #[test]
    fn a_location_is_kept_only_where_there_is_no_path() {
        let inner = "did not find expected node content at line 2 column 3";
        assert_eq!(
            field_error(".", inner).to_string(),
            format!("(document): {inner}")
        );
        assert_eq!(
            field_error("checks[0]", &format!("checks[0]: {inner}")).to_string(),
            "checks[0]: did not find expected node content"
        );
    }
}
