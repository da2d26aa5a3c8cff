//! JSON paths in `expect.json` (`$.items[0].id`, `["odd.key"]`) and JSON equality as a
//! reader sees it.

use serde_json::Value;

/// Equality as a JSON reader sees it: `3` and `3.0` are the same number, though serde_json
/// keeps integers and floats apart.
pub(super) fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, x)| y.get(key).is_some_and(|y| json_equal(x, y)))
        }
        _ => a == b,
    }
}

/// One step of a JSON path.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    Key(String),
    Index(usize),
}

const JSON_PATH_HINT: &str = "expected a JSON path like $.items[0].id";

/// Reads `$.a.b[0]`, `a.b[0]`, `$[0]`, `$["key.with.dots"]` and `$` (the whole document).
pub(super) fn parse_json_path(path: &str) -> Result<Vec<Step>, String> {
    let rest = match path.strip_prefix('$') {
        Some(rest) => rest.to_string(),
        None if path.is_empty() => return Err(format!("{JSON_PATH_HINT}, found an empty path")),
        None if path.starts_with('[') || path.starts_with('.') => path.to_string(),
        // "$." is optional: `a.b` is `$.a.b`.
        None => format!(".{path}"),
    };
    let mut steps = Vec::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                let mut key = String::new();
                while let Some(&c) = chars.peek() {
                    if c == '.' || c == '[' {
                        break;
                    }
                    key.push(c);
                    chars.next();
                }
                if key.is_empty() {
                    return Err(format!("{JSON_PATH_HINT}, found an empty key in {path:?}"));
                }
                steps.push(Step::Key(key));
            }
            '[' => {
                let mut inner = String::new();
                let quote = chars.next_if(|&c| c == '"' || c == '\'');
                loop {
                    match chars.next() {
                        Some(c) if Some(c) == quote => {
                            if chars.next() != Some(']') {
                                return Err(format!(
                                    "{JSON_PATH_HINT}, found no ] after a quoted key in {path:?}"
                                ));
                            }
                            break;
                        }
                        Some(']') if quote.is_none() => break,
                        Some(c) => inner.push(c),
                        None => {
                            return Err(format!(
                                "{JSON_PATH_HINT}, found an unclosed [ in {path:?}"
                            ))
                        }
                    }
                }
                if quote.is_some() {
                    steps.push(Step::Key(inner));
                } else {
                    match inner.trim().parse::<usize>() {
                        Ok(index) => steps.push(Step::Index(index)),
                        Err(_) => {
                            return Err(format!(
                                "{JSON_PATH_HINT}, found [{inner}] in {path:?}: an index is a number from 0, a key is quoted"
                            ))
                        }
                    }
                }
            }
            other => {
                return Err(format!(
                    "{JSON_PATH_HINT}, found {other:?} where . or [ should be in {path:?}"
                ))
            }
        }
    }
    Ok(steps)
}

/// Looks up a JSON path ("$.a.b[0]", leading "$." optional) in a value. A path that does
/// not parse finds nothing; [`parse_checks_file`] rejects such paths up front.
pub fn json_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    parse_json_path(path)
        .ok()?
        .iter()
        .try_fold(value, |value, step| match step {
            Step::Key(key) => value.as_object()?.get(key),
            Step::Index(index) => value.as_array()?.get(*index),
        })
}
