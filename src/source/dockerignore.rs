//! `.dockerignore` as Docker applies it, which is not `.gitignore`: every pattern is anchored
//! at the context's root (`*.log` matches `a.log` but not `dir/a.log`; `**/*.log` matches
//! both), a pattern that matches a directory excludes everything in it, yet a later `!`
//! exception re-includes a file inside an excluded directory, and the last pattern that
//! matches decides. Patterns are Go `filepath.Match` globs plus `**`, cleaned the way Go's
//! `filepath.Clean` cleans paths; a leading `/` is dropped. This follows moby/patternmatcher
//! (`MatchesOrParentMatches`) and its ignore file reader, which the docker CLI uses to filter
//! the context it sends.

use regex::Regex;

/// The patterns of one `.dockerignore` file, in order.
#[derive(Clone, Debug, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Clone, Debug)]
struct Pattern {
    /// A `!` pattern: re-includes what it matches.
    exception: bool,
    matcher: Matcher,
}

/// How a pattern matches, as patternmatcher compiles it: plain text is compared, a trailing
/// `**` is a prefix, a leading `**` a suffix, anything else a regular expression.
#[derive(Clone, Debug)]
enum Matcher {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(Regex),
}

impl DockerIgnore {
    /// Reads a `.dockerignore` file's text. A pattern Docker would refuse (a lone `!`, a
    /// malformed `[` class) is an error naming its line.
    pub fn parse(text: &str) -> Result<DockerIgnore, String> {
        let mut patterns = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = match number {
                0 => line.trim_start_matches('\u{feff}'),
                _ => line,
            };
            // A comment only when `#` is the line's very first character.
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
                if pattern.is_empty() {
                    return Err(format!(
                        "line {}: illegal exclusion pattern: \"!\"",
                        number + 1
                    ));
                }
            }
            let mut cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let matcher = compile(&cleaned)
                .map_err(|e| format!("line {}: bad pattern '{line}': {e}", number + 1))?;
            patterns.push(Pattern { exception, matcher });
        }
        Ok(DockerIgnore { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether some pattern is an exception (`!`): then an excluded directory may still hold
    /// files that are sent, and must be walked.
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out of the context:
    /// the last pattern matching it or one of its parent directories decides.
    pub fn excludes(&self, path: &str) -> bool {
        let path = clean(path);
        if path == "." {
            return false;
        }
        let parents: Vec<&str> = match path.rfind('/') {
            Some(end) => path[..end].split('/').collect(),
            None => Vec::new(),
        };
        let mut excluded = false;
        for pattern in &self.patterns {
            // An exception matters only once something excluded the path, and an exclusion
            // only while nothing has.
            if pattern.exception != excluded {
                continue;
            }
            let mut matched = pattern.matcher.matches(&path);
            let mut depth = 0;
            while !matched && depth < parents.len() {
                matched = pattern.matcher.matches(&parents[..=depth].join("/"));
                depth += 1;
            }
            if matched {
                excluded = !pattern.exception;
            }
        }
        excluded
    }
}

impl Matcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            Matcher::Exact(text) => path == text,
            Matcher::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Matcher::Suffix(suffix) => {
                // `**/foo` also matches `foo` itself.
                suffix.is_empty()
                    || path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/') == Some(path)
            }
            Matcher::Regex(regex) => regex.is_match(path),
        }
    }
}

/// Characters that mean something to a regular expression but nothing to a glob.
const REGEX_ONLY: &str = ".+()|{}$";

/// patternmatcher's translation of a glob into a matcher.
fn compile(pattern: &str) -> Result<Matcher, String> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut kind = Kind::Exact;
    let mut regex = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut at = 0;
    let mut first = true;
    while at < chars.len() {
        let ch = chars[at];
        at += 1;
        match ch {
            '*' if chars.get(at) == Some(&'*') => {
                at += 1;
                // `**/` is `**`.
                if chars.get(at) == Some(&'/') {
                    at += 1;
                }
                if at == chars.len() {
                    // A trailing `**` matches everything below, as in .gitignore.
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        regex.push_str(".*");
                        kind = Kind::Regex;
                    }
                } else {
                    // Any number of directories, none included.
                    regex.push_str("(.*/)?");
                    kind = Kind::Regex;
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                regex.push_str("[^/]*");
                kind = Kind::Regex;
            }
            '?' => {
                regex.push_str("[^/]");
                kind = Kind::Regex;
            }
            '\\' => match chars.get(at) {
                Some(next) => {
                    regex.push('\\');
                    regex.push(*next);
                    at += 1;
                    kind = Kind::Regex;
                }
                None => regex.push_str("\\\\"),
            },
            '[' | ']' => {
                regex.push(ch);
                kind = Kind::Regex;
            }
            c if REGEX_ONLY.contains(c) => {
                regex.push('\\');
                regex.push(c);
            }
            c => regex.push(c),
        }
        first = false;
    }
    Ok(match kind {
        Kind::Exact => Matcher::Exact(pattern.to_string()),
        Kind::Prefix => Matcher::Prefix(pattern[..pattern.len() - 2].to_string()),
        Kind::Suffix => Matcher::Suffix(pattern[2..].to_string()),
        Kind::Regex => {
            regex.push('$');
            Matcher::Regex(Regex::new(&regex).map_err(|e| e.to_string())?)
        }
    })
}

/// Go's `filepath.Clean` for `/`-separated paths: no empty or `.` elements, `..` resolved
/// where it can be, no trailing slash; the empty path is `.`.
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(last) if *last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}
