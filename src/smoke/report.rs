//! The results of `emulate smoke` and their three renderings: text for people, JSON for
//! scripts, and JUnit XML for the test views of CI systems.

// `write!` into a String cannot fail, so its Result is dropped with `let _ =`.
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

/// The group of the checks `emulate smoke` makes of the image itself, before any request.
pub const PREFLIGHT: &str = "preflight";
/// The group of the checks of the checks file and the quick flags.
pub const CHECKS: &str = "checks";

/// How one check ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// `message` says what failed; `details` are the evidence, a line each.
    Failed {
        message: String,
        details: Vec<String>,
    },
    /// Passed, but with something the user should know before deploying.
    Warning {
        message: String,
    },
    /// Not run, usually because an earlier failure made it meaningless.
    Skipped {
        reason: String,
    },
}

impl Outcome {
    /// `passed`, `failed`, `warning` or `skipped`, as the JSON form names it.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed { .. } => "failed",
            Outcome::Warning { .. } => "warning",
            Outcome::Skipped { .. } => "skipped",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub name: String,
    /// [`PREFLIGHT`] or [`CHECKS`].
    pub group: &'static str,
    pub outcome: Outcome,
    pub duration: Duration,
    /// What the check saw that proves its verdict (a scenario's instance counts, requests in
    /// flight at once, the revision that served), a line each; empty for most checks.
    pub evidence: Vec<String>,
}

/// Everything one `emulate smoke` run found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The image or file that was tested.
    pub target: String,
    pub results: Vec<CheckResult>,
    pub total: Duration,
    pub exit_code: u8,
    /// Cloud Run's text, the diagnosis and the logs when the service never became ready.
    pub failure_text: Option<String>,
}

/// `812 ms` below a second, `3.1 s` from there. Tenths are cut, not rounded, so a time shown
/// as over a limit never reads as under it.
pub fn format_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{} ms", duration.as_millis())
    } else {
        format!(
            "{}.{} s",
            duration.as_secs(),
            duration.subsec_millis() / 100
        )
    }
}

/// The groups in the order they ran; a group that is neither known one goes last.
fn group_order(group: &str) -> u8 {
    match group {
        PREFLIGHT => 0,
        CHECKS => 1,
        _ => 2,
    }
}

fn heading(group: &str) -> String {
    let mut chars = group.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

impl Report {
    pub fn passed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Passed))
    }

    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed { .. }))
    }

    pub fn warnings(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Warning { .. }))
    }

    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped { .. }))
    }

    fn count(&self, which: impl Fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|r| which(&r.outcome)).count()
    }

    /// The results grouped, groups in the order they run and results in the order given.
    fn groups(&self) -> Vec<(&'static str, Vec<&CheckResult>)> {
        let mut groups: Vec<(&'static str, Vec<&CheckResult>)> = Vec::new();
        for result in &self.results {
            match groups.iter_mut().find(|(group, _)| *group == result.group) {
                Some((_, results)) => results.push(result),
                None => groups.push((result.group, vec![result])),
            }
        }
        groups.sort_by_key(|(group, _)| group_order(group));
        groups
    }

    /// The human form: one line per check under a "Preflight" or "Checks" heading, details
    /// indented under a failure, then "N passed, M failed in 4.2 s" and the failure text.
    /// Without `color` the marks are the words PASS, FAIL, WARN and SKIP, which survive any
    /// CI log viewer.
    pub fn render_text(&self, color: bool) -> String {
        let paint = |code: &str, text: &str| -> String {
            if color {
                format!("{code}{text}{RESET}")
            } else {
                text.to_string()
            }
        };
        let mut out = String::new();
        for (i, (group, results)) in self.groups().into_iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&paint(BOLD, &heading(group)));
            out.push('\n');
            for result in results {
                let (mark, code) = match (&result.outcome, color) {
                    (Outcome::Passed, true) => ("✔", GREEN),
                    (Outcome::Failed { .. }, true) => ("✘", RED),
                    (Outcome::Warning { .. }, true) => ("!", YELLOW),
                    (Outcome::Skipped { .. }, true) => ("-", DIM),
                    (Outcome::Passed, false) => ("PASS", ""),
                    (Outcome::Failed { .. }, false) => ("FAIL", ""),
                    (Outcome::Warning { .. }, false) => ("WARN", ""),
                    (Outcome::Skipped { .. }, false) => ("SKIP", ""),
                };
                // Continuation lines and details line up under the check's name.
                let indent = " ".repeat(2 + mark.chars().count() + 1);
                let took = format_duration(result.duration);
                let line = match &result.outcome {
                    Outcome::Passed => format!("{} ({took})", result.name),
                    Outcome::Failed { message, .. } => {
                        format!("{} ({took}): {message}", result.name)
                    }
                    Outcome::Warning { message } => format!("{}: {message}", result.name),
                    Outcome::Skipped { reason } => format!("{}: {reason}", result.name),
                };
                let _ = writeln!(out, "  {} {}", paint(code, mark), indented(&line, &indent));
                if let Outcome::Failed { details, .. } = &result.outcome {
                    for detail in details {
                        let _ = writeln!(out, "{indent}{}", indented(detail, &indent));
                    }
                }
                for line in &result.evidence {
                    let _ = writeln!(out, "{indent}{}", indented(line, &indent));
                }
            }
        }
        if !self.results.is_empty() {
            out.push('\n');
        }
        out.push_str(&self.summary(color));
        out.push('\n');
        if let Some(text) = &self.failure_text {
            out.push('\n');
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }

    /// "N passed, M failed, K warnings, S skipped in 4.2 s": passed and failed always come
    /// first, in that shape, because CI log scrapers look for exactly that; the others only
    /// when there are some.
    fn summary(&self, color: bool) -> String {
        let failed = self.failed();
        let warnings = self.warnings();
        let skipped = self.skipped();
        let mut summary = format!("{} passed, ", self.passed());
        let failed_text = format!("{failed} failed");
        if color && failed > 0 {
            let _ = write!(summary, "{RED}{failed_text}{RESET}");
        } else {
            summary.push_str(&failed_text);
        }
        if warnings > 0 {
            let text = format!("{warnings} warning{}", if warnings == 1 { "" } else { "s" });
            if color {
                let _ = write!(summary, ", {YELLOW}{text}{RESET}");
            } else {
                let _ = write!(summary, ", {text}");
            }
        }
        if skipped > 0 {
            let _ = write!(summary, ", {skipped} skipped");
        }
        let _ = write!(summary, " in {}", format_duration(self.total));
        summary
    }

    /// The machine form: `{"target", "passed", "failed", "warnings", "skipped", "exitCode",
    /// "durationMs", "checks": [{"name", "group", "outcome", "message", "details",
    /// "evidence", "durationMs"}], "failureText"}`. `message` is null for a check that passed,
    /// and the reason of one that was skipped.
    pub fn to_json(&self) -> Value {
        let checks: Vec<Value> = self
            .results
            .iter()
            .map(|result| {
                let (message, details) = match &result.outcome {
                    Outcome::Passed => (None, &[][..]),
                    Outcome::Failed { message, details } => (Some(message), &details[..]),
                    Outcome::Warning { message } => (Some(message), &[][..]),
                    Outcome::Skipped { reason } => (Some(reason), &[][..]),
                };
                json!({
                    "name": result.name,
                    "group": result.group,
                    "outcome": result.outcome.label(),
                    "message": message,
                    "details": details,
                    "evidence": result.evidence,
                    "durationMs": millis(result.duration),
                })
            })
            .collect();
        json!({
            "target": self.target,
            "passed": self.passed(),
            "failed": self.failed(),
            "warnings": self.warnings(),
            "skipped": self.skipped(),
            "exitCode": self.exit_code,
            "durationMs": millis(self.total),
            "checks": checks,
            "failureText": self.failure_text,
        })
    }

    /// JUnit XML, in the dialect that GitHub Actions' reporters (dorny/test-reporter,
    /// mikepenz/action-junit-report) and GitLab's `artifacts:reports:junit` read: one suite,
    /// one testcase per check with classname `emulate.smoke.<group>`. A warning is a passing
    /// testcase with the warning in its `system-out`; the failure text is the suite's
    /// `system-err`.
    pub fn to_junit(&self) -> String {
        let counts = format!(
            r#"tests="{}" failures="{}" errors="0" skipped="{}" time="{}""#,
            self.results.len(),
            self.failed(),
            self.skipped(),
            seconds(self.total)
        );
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(xml, r#"<testsuites name="emulate smoke" {counts}>"#);
        let _ = writeln!(xml, r#"  <testsuite name="emulate smoke" {counts}>"#);
        xml.push_str("    <properties>\n");
        let _ = writeln!(
            xml,
            r#"      <property name="target" value="{}"/>"#,
            attribute(&self.target)
        );
        let _ = writeln!(
            xml,
            r#"      <property name="exitCode" value="{}"/>"#,
            self.exit_code
        );
        xml.push_str("    </properties>\n");
        for result in &self.results {
            let open = format!(
                r#"    <testcase classname="emulate.smoke.{}" name="{}" time="{}""#,
                attribute(result.group),
                attribute(&result.name),
                seconds(result.duration)
            );
            match &result.outcome {
                Outcome::Passed => {
                    let _ = writeln!(xml, "{open}/>");
                }
                Outcome::Failed { message, details } if details.is_empty() => {
                    let _ = writeln!(xml, "{open}>");
                    let _ = writeln!(xml, r#"      <failure message="{}"/>"#, attribute(message));
                    xml.push_str("    </testcase>\n");
                }
                Outcome::Failed { message, details } => {
                    let _ = writeln!(xml, "{open}>");
                    let _ = writeln!(
                        xml,
                        r#"      <failure message="{}">{}</failure>"#,
                        attribute(message),
                        text(&details.join("\n"))
                    );
                    xml.push_str("    </testcase>\n");
                }
                Outcome::Warning { message } => {
                    let _ = writeln!(xml, "{open}>");
                    let _ = writeln!(
                        xml,
                        "      <system-out>warning: {}</system-out>",
                        text(message)
                    );
                    xml.push_str("    </testcase>\n");
                }
                Outcome::Skipped { reason } => {
                    let _ = writeln!(xml, "{open}>");
                    let _ = writeln!(xml, r#"      <skipped message="{}"/>"#, attribute(reason));
                    xml.push_str("    </testcase>\n");
                }
            }
        }
        if let Some(failure) = &self.failure_text {
            let _ = writeln!(xml, "    <system-err>{}</system-err>", text(failure));
        }
        xml.push_str("  </testsuite>\n</testsuites>\n");
        xml
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// JUnit's times: seconds with three decimals.
fn seconds(duration: Duration) -> String {
    format!("{}.{:03}", duration.as_secs(), duration.subsec_millis())
}

/// Text after the first line moves right by `indent`, so a multi-line message stays under
/// its check.
fn indented(text: &str, indent: &str) -> String {
    text.replace('\n', &format!("\n{indent}"))
}

/// Element text: markup escaped, and what XML 1.0 cannot hold removed.
fn text(value: &str) -> String {
    escape(value, false)
}

/// An attribute value: as [`text`], and line breaks and tabs as character references,
/// because a parser turns raw ones in an attribute into spaces.
fn attribute(value: &str) -> String {
    escape(value, true)
}

fn escape(value: &str, in_attribute: bool) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' if in_attribute => out.push_str("&#10;"),
            '\t' if in_attribute => out.push_str("&#9;"),
            '\n' | '\t' => out.push(c),
            // Container logs are often coloured; an escape sequence is dropped whole, since
            // dropping only the ESC would leave "[31m" in the report.
            '\x1b' => {
                if chars.next_if_eq(&'[').is_some() {
                    while chars.next_if(|c| !('\x40'..='\x7e').contains(c)).is_some() {}
                    chars.next();
                }
            }
            // XML 1.0 has no way to write other control characters, nor these two.
            c if c.is_control() || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, group: &'static str, outcome: Outcome, millis: u64) -> CheckResult {
        CheckResult {
            name: name.to_string(),
            group,
            outcome,
            duration: Duration::from_millis(millis),
            evidence: Vec::new(),
        }
    }

    /// Preflight and checks, every outcome, a multi-line detail and a failure text.
    fn mixed() -> Report {
        Report {
            target: "my-app:v1".to_string(),
            results: vec![
                result("image runs as linux/amd64", PREFLIGHT, Outcome::Passed, 12),
                result(
                    "listens on $PORT",
                    PREFLIGHT,
                    Outcome::Warning {
                        message: "the container also listens on 9090".to_string(),
                    },
                    3,
                ),
                result("home page", CHECKS, Outcome::Passed, 48),
                result(
                    "burst",
                    CHECKS,
                    Outcome::Failed {
                        message: "3 of 50 requests failed".to_string(),
                        details: vec![
                            "status 503, expected 2xx".to_string(),
                            "body does not contain \"Hello\"\nbody: \"oops\"".to_string(),
                        ],
                    },
                    3_140,
                ),
                result(
                    "cold start",
                    CHECKS,
                    Outcome::Skipped {
                        reason: "an earlier check failed".to_string(),
                    },
                    0,
                ),
            ],
            total: Duration::from_millis(4_230),
            exit_code: 1,
            failure_text: None,
        }
    }

    #[test]
    fn text_without_color_is_plain_and_grouped() {
        let expected = "\
Preflight
  PASS image runs as linux/amd64 (12 ms)
  WARN listens on $PORT: the container also listens on 9090

Checks
  PASS home page (48 ms)
  FAIL burst (3.1 s): 3 of 50 requests failed
       status 503, expected 2xx
       body does not contain \"Hello\"
       body: \"oops\"
  SKIP cold start: an earlier check failed

2 passed, 1 failed, 1 warning, 1 skipped in 4.2 s
";
        assert_eq!(mixed().render_text(false), expected);
    }

    #[test]
    fn text_ends_with_the_failure_text() {
        let mut report = mixed();
        report.results.retain(|r| r.group == PREFLIGHT);
        report.results[1].outcome = Outcome::Passed;
        report.failure_text = Some(
            "Revision 'my-app-00001' is not ready.\n\nThe container exited with code 1.\n"
                .to_string(),
        );
        let expected = "\
Preflight
  PASS image runs as linux/amd64 (12 ms)
  PASS listens on $PORT (3 ms)

2 passed, 0 failed in 4.2 s

Revision 'my-app-00001' is not ready.

The container exited with code 1.
";
        assert_eq!(report.render_text(false), expected);
    }

    #[test]
    fn text_with_color_uses_marks_and_keeps_the_summary_shape() {
        let text = mixed().render_text(true);
        assert!(
            text.contains(&format!("  {GREEN}✔{RESET} home page (48 ms)\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("  {RED}✘{RESET} burst (3.1 s): 3 of 50")),
            "{text}"
        );
        assert!(text.contains("\n    status 503, expected 2xx\n"), "{text}");
        assert!(
            text.contains(&format!("  {YELLOW}!{RESET} listens on $PORT: ")),
            "{text}"
        );
        assert!(text.contains(&format!(
            "2 passed, {RED}1 failed{RESET}, {YELLOW}1 warning{RESET}, 1 skipped in 4.2 s"
        )));
        let plain = mixed().render_text(false);
        assert!(plain.is_ascii(), "{plain}");
    }

    #[test]
    fn an_empty_report_still_has_its_summary() {
        let report = Report {
            total: Duration::from_millis(5),
            ..Report::default()
        };
        assert_eq!(report.render_text(false), "0 passed, 0 failed in 5 ms\n");
    }

    #[test]
    fn counts_and_durations() {
        let report = mixed();
        assert_eq!(
            (
                report.passed(),
                report.failed(),
                report.warnings(),
                report.skipped()
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(format_duration(Duration::from_millis(812)), "812 ms");
        assert_eq!(format_duration(Duration::from_millis(999)), "999 ms");
        assert_eq!(format_duration(Duration::from_millis(1_000)), "1.0 s");
        assert_eq!(format_duration(Duration::from_millis(3_199)), "3.1 s");
        assert_eq!(format_duration(Duration::from_secs(75)), "75.0 s");
    }

    #[test]
    fn evidence_is_shown_under_its_check() {
        let mut report = mixed();
        report.results[0].evidence = vec!["in flight at once: 30 of 30".to_string()];
        let text = report.render_text(false);
        assert!(
            text.contains(
                "  PASS image runs as linux/amd64 (12 ms)\n       in flight at once: 30 of 30\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn json_has_every_field() {
        let mut report = mixed();
        report.failure_text = Some("logs".to_string());
        report.results[0].evidence = vec!["instances before the request: 0".to_string()];
        let value = report.to_json();
        assert_eq!(value["target"], "my-app:v1");
        assert_eq!(value["passed"], 2);
        assert_eq!(value["failed"], 1);
        assert_eq!(value["warnings"], 1);
        assert_eq!(value["skipped"], 1);
        assert_eq!(value["exitCode"], 1);
        assert_eq!(value["durationMs"], 4230);
        assert_eq!(value["failureText"], "logs");
        let checks = value["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 5);
        assert_eq!(
            checks[0],
            json!({"name": "image runs as linux/amd64", "group": "preflight", "outcome": "passed",
                   "message": null, "details": [], "durationMs": 12,
                   "evidence": ["instances before the request: 0"]})
        );
        assert_eq!(checks[1]["outcome"], "warning");
        assert_eq!(checks[1]["message"], "the container also listens on 9090");
        assert_eq!(
            checks[3],
            json!({"name": "burst", "group": "checks", "outcome": "failed",
                   "message": "3 of 50 requests failed",
                   "details": ["status 503, expected 2xx", "body does not contain \"Hello\"\nbody: \"oops\""],
                   "evidence": [], "durationMs": 3140})
        );
        assert_eq!(checks[4]["outcome"], "skipped");
        assert_eq!(checks[4]["message"], "an earlier check failed");
        assert_eq!(Report::default().to_json()["failureText"], Value::Null);
    }

    /// An element of the report, as an XML parser read it: its name, its attributes
    /// (unescaped) and its own text.
    #[derive(Debug)]
    struct Element {
        name: String,
        attributes: Vec<(String, String)>,
        text: String,
    }

    impl Element {
        fn get(&self, name: &str) -> Option<&str> {
            self.attributes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Parses the report with a real XML parser (which refuses anything malformed, control
    /// characters included) and lists its elements in document order.
    fn read_xml(xml: &str) -> Result<Vec<Element>, String> {
        if !xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>") {
            return Err("no XML declaration".to_string());
        }
        let document = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
        Ok(document
            .descendants()
            .filter(|node| node.is_element())
            .map(|node| Element {
                name: node.tag_name().name().to_string(),
                attributes: node
                    .attributes()
                    .map(|a| (a.name().to_string(), a.value().to_string()))
                    .collect(),
                text: node
                    .children()
                    .filter(|child| child.is_text())
                    .filter_map(|child| child.text())
                    .collect(),
            })
            .collect())
    }

    #[test]
    fn junit_counts_and_shapes_every_outcome() {
        let mut report = mixed();
        report.failure_text =
            Some("Revision is not ready.\n\x1b[31mpanic\x1b[0m: boom".to_string());
        let xml = report.to_junit();
        let elements = read_xml(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        let named = |name: &'static str| elements.iter().filter(move |e| e.name == name);

        let suites: Vec<&Element> = named("testsuite").collect();
        assert_eq!(suites.len(), 1);
        let suite = suites[0];
        assert_eq!(suite.get("name"), Some("emulate smoke"));
        assert_eq!(suite.get("tests"), Some("5"));
        assert_eq!(suite.get("failures"), Some("1"));
        assert_eq!(suite.get("skipped"), Some("1"));
        assert_eq!(suite.get("time"), Some("4.230"));
        assert_eq!(
            named("testsuites").next().unwrap().get("failures"),
            Some("1")
        );

        let cases: Vec<&Element> = named("testcase").collect();
        assert_eq!(cases.len(), 5);
        assert_eq!(cases[0].get("classname"), Some("emulate.smoke.preflight"));
        assert_eq!(cases[0].get("name"), Some("image runs as linux/amd64"));
        assert_eq!(cases[0].get("time"), Some("0.012"));
        assert_eq!(cases[3].get("classname"), Some("emulate.smoke.checks"));
        assert_eq!(cases[3].get("time"), Some("3.140"));

        let failures: Vec<&Element> = named("failure").collect();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].get("message"), Some("3 of 50 requests failed"));
        assert_eq!(
            failures[0].text,
            "status 503, expected 2xx\nbody does not contain \"Hello\"\nbody: \"oops\""
        );
        assert_eq!(
            named("skipped").next().unwrap().get("message"),
            Some("an earlier check failed")
        );
        assert_eq!(
            named("system-out").next().unwrap().text,
            "warning: the container also listens on 9090"
        );
        assert_eq!(
            named("system-err").next().unwrap().text,
            "Revision is not ready.\npanic: boom"
        );
        assert_eq!(
            named("property")
                .find(|p| p.get("name") == Some("target"))
                .unwrap()
                .get("value"),
            Some("my-app:v1")
        );
    }

    #[test]
    fn junit_escapes_markup_and_drops_what_xml_cannot_hold() {
        let report = Report {
            target: "a&b".to_string(),
            results: vec![result(
                "<&\"'> name",
                CHECKS,
                Outcome::Failed {
                    message: "body <html> & \"quotes\"\nline two\u{0}\u{7}".to_string(),
                    details: vec!["</failure><x>&amp;".to_string()],
                },
                1,
            )],
            ..Report::default()
        };
        let xml = report.to_junit();
        assert!(
            xml.contains(r#"name="&lt;&amp;&quot;&apos;&gt; name""#),
            "{xml}"
        );
        assert!(
            xml.contains("&lt;/failure&gt;&lt;x&gt;&amp;amp;</failure>"),
            "{xml}"
        );
        let elements = read_xml(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        assert_eq!(elements.iter().filter(|e| e.name == "testcase").count(), 1);
        let case = elements.iter().find(|e| e.name == "testcase").unwrap();
        assert_eq!(case.get("name"), Some("<&\"'> name"));
        let failure = elements.iter().find(|e| e.name == "failure").unwrap();
        assert_eq!(
            failure.get("message"),
            Some("body <html> & \"quotes\"\nline two")
        );
        assert_eq!(failure.text, "</failure><x>&amp;");
    }

    #[test]
    fn junit_without_failures_has_only_passing_cases() {
        let report = Report {
            results: vec![result("a", CHECKS, Outcome::Passed, 1500)],
            total: Duration::from_millis(1500),
            ..Report::default()
        };
        let xml = report.to_junit();
        assert_eq!(xml.matches("<testcase").count(), 1);
        assert_eq!(xml.matches("<failure").count(), 0);
        assert!(xml.contains(r#"tests="1" failures="0" errors="0" skipped="0" time="1.500""#));
        assert!(!xml.contains("<system-err>"));
        read_xml(&xml).unwrap();
    }
}
