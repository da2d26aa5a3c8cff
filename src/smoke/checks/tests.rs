//! The checks file's unit tests: parsing, errors with their paths, and verdicts.

use super::*;

/// The example in this module's documentation, so the documented format cannot drift
/// from the parsed one.
fn doc_example() -> String {
    let source = include_str!("../checks.rs");
    let lines: Vec<&str> = source
        .lines()
        .map_while(|line| line.strip_prefix("//!"))
        .skip_while(|line| line.trim() != "```yaml")
        .skip(1)
        .take_while(|line| line.trim() != "```")
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .collect();
    lines.join("\n")
}

fn error(text: &str) -> String {
    parse_checks_file(text).unwrap_err().to_string()
}

fn observed(status: u16, body: &str) -> Observed {
    Observed {
        status,
        body: bytes::Bytes::from(body.to_string()),
        ..Observed::default()
    }
}

fn expect(text: &str) -> Expect {
    let file = parse_checks_file(&format!("checks:\n  - name: x\n    expect: {text}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    file.checks.into_iter().next().unwrap().expect
}

#[test]
fn the_documented_example_parses_into_the_right_values() {
    let example = doc_example();
    assert!(example.starts_with("checks:"), "{example}");
    let file = parse_checks_file(&example).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = file.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "home page",
            "items API",
            "create an item",
            "cold start",
            "burst",
            "survives a revision switch"
        ]
    );

    let home = &file.checks[0];
    assert_eq!(home.scenario, Scenario::Request);
    assert_eq!(home.request.method, Method::GET);
    assert_eq!(home.request.path, "/");
    assert_eq!(
        home.request.headers,
        [(http::header::ACCEPT, HeaderValue::from_static("text/html"))]
    );
    assert_eq!(home.request.body, None);
    assert_eq!(home.request.tag, None);
    assert_eq!(home.expect.status, StatusExpect::Exact(vec![200]));
    assert_eq!(home.expect.body_contains, ["Hello"]);
    let patterns: Vec<&str> = home.expect.body_matches.iter().map(Regex::as_str).collect();
    assert_eq!(patterns, [r"K_REVISION=\w+"]);
    assert_eq!(
        home.expect.headers,
        [(http::header::CONTENT_TYPE, "text/html".to_string())]
    );
    assert_eq!(home.expect.latency_below, Some(Duration::from_millis(500)));
    assert!(home.expect.json.is_empty());

    let items = &file.checks[1];
    assert_eq!(items.request.to_string(), "GET /api/items?limit=1");
    assert_eq!(items.expect.status, StatusExpect::Exact(vec![200, 203]));
    assert_eq!(
        items.expect.json,
        [
            ("$.service".to_string(), serde_json::json!("hello")),
            ("$.items[0].id".to_string(), serde_json::json!(3)),
        ]
    );
    assert_eq!(items.expect.latency_below, None);

    let create = &file.checks[2];
    assert_eq!(create.request.method, Method::POST);
    assert_eq!(create.request.path, "/api/items");
    assert_eq!(
        create.request.body.as_deref(),
        Some(r#"{"name": "widget"}"#)
    );
    assert_eq!(create.expect.status, StatusExpect::Class(2));
    assert_eq!(create.expect.body_contains, ["widget", "\"id\""]);

    let cold = &file.checks[3];
    assert_eq!(
        cold.scenario,
        Scenario::ColdStart {
            first_byte_below: Some(Duration::from_secs(3))
        }
    );
    assert_eq!(cold.request, RequestSpec::default());
    assert_eq!(cold.expect.status, StatusExpect::Below(500));

    let burst = &file.checks[4];
    assert_eq!(burst.scenario, Scenario::Concurrent { requests: 50 });
    assert_eq!(burst.request.path, "/api");
    assert_eq!(burst.expect.status, StatusExpect::Class(2));

    let switch = &file.checks[5];
    assert_eq!(
        switch.scenario,
        Scenario::RevisionSwitch {
            image: "my-app:v2".to_string(),
            requests_per_second: 50
        }
    );
    assert_eq!(switch.request, RequestSpec::default());
}

#[test]
fn defaults_fill_what_a_check_leaves_out() {
    let file = parse_checks_file(
        "checks:\n  - name: bare\n  - name: switch\n    revisionSwitch: {image: app:v2}\n  - name: cold\n    coldStart:\n",
    )
    .unwrap();
    let bare = &file.checks[0];
    assert_eq!(bare.scenario, Scenario::Request);
    assert_eq!(bare.request, RequestSpec::default());
    assert_eq!(bare.expect.status, StatusExpect::Below(500));
    assert!(bare.expect.body_contains.is_empty() && bare.expect.latency_below.is_none());
    assert_eq!(
        file.checks[1].scenario,
        Scenario::RevisionSwitch {
            image: "app:v2".to_string(),
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND
        }
    );
    // `coldStart:` with nothing after it still asks for a cold start.
    assert_eq!(
        file.checks[2].scenario,
        Scenario::ColdStart {
            first_byte_below: None
        }
    );
}

#[test]
fn a_bad_status_names_its_path() {
    assert_eq!(
        error("checks:\n  - name: a\n  - name: b\n    expect: {status: 2xz}\n"),
        r#"checks[1].expect.status: expected a status code like 200 or a class like 2xx, found "2xz""#
    );
    assert_eq!(
        error("checks:\n  - name: a\n    expect: {status: 600}\n"),
        "checks[0].expect.status: expected a status code from 100 to 599, found 600"
    );
    assert_eq!(
        error("checks:\n  - name: a\n    expect: {status: [200, 2xx]}\n"),
        r#"checks[0].expect.status[1]: a list holds status codes only, found "2xx"; write status: 2xx on its own"#
    );
    assert_eq!(
        error("checks:\n  - name: a\n    expect: {status: {code: 200}}\n"),
        "checks[0].expect.status: expected a status code like 200, a class like 2xx or a list like [200, 204], found a mapping"
    );
}

#[test]
fn an_unknown_key_is_an_error_that_suggests_the_right_one() {
    assert_eq!(
        error("checks:\n  - name: a\n    expct: {status: 200}\n"),
        "checks[0].expct: unknown key `expct`, did you mean `expect`? (the keys here are \
         `name`, `request`, `expect`, `coldStart`, `concurrent`, `revisionSwitch`)"
    );
    let message = error("checks:\n  - name: a\n    expect: {latency_below: 1s}\n");
    assert!(
        message.starts_with("checks[0].expect.latency_below: unknown key `latency_below`, did you mean `latencyBelow`?"),
        "{message}"
    );
    let message = error("checks:\n  - name: a\n    request: {path: /, verb: GET}\n");
    assert!(
        message
            .starts_with("checks[0].request.verb: unknown key `verb` (the keys here are `method`"),
        "{message}"
    );
    assert_eq!(
        error("check:\n  - name: a\n"),
        "check: unknown key `check`, did you mean `checks`? (the keys here are `checks`)"
    );
}

#[test]
fn names_are_required_and_unique() {
    assert_eq!(
        error("checks:\n  - name: home\n  - name: api\n  - name: home\n"),
        r#"checks[2].name: duplicate name "home": checks[0] has it too; names must be unique"#
    );
    assert_eq!(
        error("checks:\n  - request: GET /\n"),
        "checks[0]: missing required key `name`"
    );
    assert_eq!(
        error("checks:\n  - name: ' '\n"),
        "checks[0].name: must not be empty"
    );
}

#[test]
fn a_check_runs_at_most_one_scenario() {
    assert_eq!(
        error("checks:\n  - name: a\n    coldStart: {}\n    concurrent: {requests: 5}\n"),
        "checks[0]: a check runs one scenario, found coldStart and concurrent; split it into one check each"
    );
}

#[test]
fn a_bad_regex_names_its_path_and_the_regex_error() {
    let message = error("checks:\n  - name: a\n    expect: {bodyMatches: [ok, 'K_REVISION=(']}\n");
    assert!(
        message
            .starts_with("checks[0].expect.bodyMatches[1]: not a valid regex: regex parse error:"),
        "{message}"
    );
    assert!(message.contains("unclosed group"), "{message}");
    let message = error("checks:\n  - name: a\n    expect: {bodyMatches: '['}\n");
    assert!(
        message.starts_with("checks[0].expect.bodyMatches: not a valid regex:"),
        "{message}"
    );
}

#[test]
fn a_bad_duration_names_its_path() {
    assert_eq!(
        error("checks:\n  - name: a\n    expect: {latencyBelow: 5 parsecs}\n"),
        r#"checks[0].expect.latencyBelow: expected a duration like 500ms, 2s or 1m, found "5 parsecs""#
    );
    assert_eq!(
        error("checks:\n  - name: a\n    expect: {latencyBelow: 500}\n"),
        r#"checks[0].expect.latencyBelow: expected a duration like 500ms, 2s or 1m, found "500" (add a unit: ms, s or m)"#
    );
    assert_eq!(
        error("checks:\n  - name: a\n    coldStart: {firstByteBelow: 0s}\n"),
        r#"checks[0].coldStart.firstByteBelow: "0s" is a limit no request can meet; give more than 0"#
    );
}

#[test]
fn requests_are_checked() {
    assert_eq!(
        error("checks:\n  - name: a\n    request: {path: api}\n"),
        r#"checks[0].request.path: expected a path that starts with /, found "api""#
    );
    assert_eq!(
        error("checks:\n  - name: a\n    request: 'GET api'\n"),
        r#"checks[0].request: expected a path that starts with /, found "api""#
    );
    assert_eq!(
        error("checks:\n  - name: a\n    request: {method: 'GE T'}\n"),
        r#"checks[0].request.method: expected an HTTP method like GET or POST, found "GE T""#
    );
    assert_eq!(
        error("checks:\n  - name: a\n    request: {headers: {'Bad Name': x}}\n"),
        r#"checks[0].request.headers.Bad Name: "Bad Name" is not a valid header name"#
    );
    let message = error("checks:\n  - name: a\n    request: {headers: {X-A: \"a\\nb\"}}\n");
    assert!(
        message.starts_with(r#"checks[0].request.headers.X-A: "a\nb" is not a valid header value"#),
        "{message}"
    );
    let file = parse_checks_file(
        "checks:\n  - name: a\n    request: {method: post, headers: {Content-Length: 5}}\n",
    )
    .unwrap();
    assert_eq!(file.checks[0].request.method, Method::POST);
    assert_eq!(file.checks[0].request.headers[0].1, "5");
}

#[test]
fn scenario_numbers_are_checked() {
    assert_eq!(
        error("checks:\n  - name: a\n    concurrent: {requests: 0}\n"),
        "checks[0].concurrent.requests: expected 1 to 10000, found 0"
    );
    assert_eq!(
        error("checks:\n  - name: a\n    concurrent: {requests: many}\n"),
        r#"checks[0].concurrent.requests: expected an integer, found "many""#
    );
    assert_eq!(
        error("checks:\n  - name: a\n    concurrent:\n"),
        "checks[0].concurrent.requests: missing: say how many requests to send at once, like {requests: 50}"
    );
    assert_eq!(
        error("checks:\n  - name: a\n    revisionSwitch: {image: b, requestsPerSecond: 5000}\n"),
        "checks[0].revisionSwitch.requestsPerSecond: expected 1 to 1000, found 5000"
    );
    assert_eq!(
        error("checks:\n  - name: a\n    revisionSwitch: {requestsPerSecond: 5}\n"),
        "checks[0].revisionSwitch.image: missing: name the image of the second revision, like {image: my-app:v2}"
    );
}

#[test]
fn deep_documents_are_refused_before_parsing() {
    let deep = format!("checks: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let started = tokio::time::Instant::now();
    assert_eq!(
        error(&deep),
        "(document): the document nests more than 100 levels deep"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn document_level_errors_are_explained() {
    assert_eq!(error(""), "(document): missing required key `checks`");
    assert_eq!(
        error("checks: []\n"),
        "checks: the list is empty; a smoke test that checks nothing would always pass"
    );
    assert_eq!(
        error("- name: a\n"),
        "(document): expected a mapping with a `checks:` list, found a list"
    );
    // A syntax error keeps its line and column, the only way to find it.
    assert_eq!(
        error("checks: [\n"),
        "checks: did not find expected node content at line 2 column 1, while parsing a flow node"
    );
    assert_eq!(
        error("checks:\n  - name: a\n    concurrent: {requests: 99999999999999999999}\n"),
        "checks[0].concurrent.requests: expected an integer, found 99999999999999999999"
    );
    assert_eq!(
        error("checks:\n  - name: a\n    expect: {json: {\"$.items[x]\": 1}}\n"),
        r#"checks[0].expect.json["$.items[x]"]: expected a JSON path like $.items[0].id, found [x] in "$.items[x]": an index is a number from 0, a key is quoted"#
    );
    assert_eq!(
        error("checks:\n  - name: a\n    expect: {headers: {A: 1, A: 2}}\n"),
        "checks[0].expect.headers: key `A` is given twice"
    );
}

#[test]
fn status_expectations_parse_match_and_describe() {
    let cases = [
        ("200", StatusExpect::Exact(vec![200]), "200"),
        ("2xx", StatusExpect::Class(2), "2xx"),
        ("5XX", StatusExpect::Class(5), "5xx"),
        (
            "200, 204",
            StatusExpect::Exact(vec![200, 204]),
            "200 or 204",
        ),
        (
            "200,201,204",
            StatusExpect::Exact(vec![200, 201, 204]),
            "200, 201 or 204",
        ),
        ("<500", StatusExpect::Below(500), "< 500"),
        ("< 400", StatusExpect::Below(400), "< 400"),
    ];
    for (text, parsed, described) in cases {
        let status = StatusExpect::parse(text).unwrap();
        assert_eq!(status, parsed, "{text}");
        assert_eq!(status.describe(), described, "{text}");
        assert_eq!(
            StatusExpect::parse(&status.describe().replace(" or ", ",")).unwrap(),
            status
        );
    }
    for bad in ["2xz", "", "6xx", "0xx", "abc", "20"] {
        assert!(StatusExpect::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        StatusExpect::parse("2xz").unwrap_err(),
        r#"expected a status code like 200 or a class like 2xx, found "2xz""#
    );
    assert!(StatusExpect::Class(2).matches(204));
    assert!(!StatusExpect::Class(2).matches(301));
    assert!(StatusExpect::Exact(vec![200, 204]).matches(204));
    assert!(!StatusExpect::Exact(vec![200, 204]).matches(201));
    assert!(StatusExpect::Below(500).matches(404));
    assert!(!StatusExpect::Below(500).matches(500));
}

#[test]
fn verify_passes_a_matching_response() {
    let expect = expect(
        r#"{status: 2xx, bodyContains: [hello, '"id": 3'], bodyMatches: 'K_REVISION=\w+',
           json: {"$.service": hello, "$.items[0].id": 3.0, "$.revision": "K_REVISION=app-1"},
           headers: {Content-Type: json, X-Request-Id: ""}, latencyBelow: 500ms}"#,
    );
    let mut response = observed(
        200,
        r#"{"service": "hello", "items": [{"id": 3}], "revision": "K_REVISION=app-1"}"#,
    );
    response.headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers
        .insert("x-request-id", HeaderValue::from_static("abc"));
    response.latency = Duration::from_millis(120);
    assert_eq!(expect.verify(&response), Vec::<String>::new());
}

#[test]
fn verify_reports_each_mismatch_on_its_own_line() {
    let expect = expect(
        r#"{status: 2xx, bodyContains: Hello, bodyMatches: 'K_REVISION=\w+',
           json: {"$.service": hello, "$.items[1].id": 3},
           headers: {Content-Type: text/html, X-Request-Id: "", Cache-Control: no-store},
           latencyBelow: 500ms}"#,
    );
    let mut response = observed(503, r#"{"service": "x", "items": [{"id": 3}]}"#);
    response.headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response.latency = Duration::from_millis(812);
    assert_eq!(
        expect.verify(&response),
        [
            "status 503, expected 2xx",
            r#"body does not contain "Hello""#,
            r"body does not match /K_REVISION=\w+/",
            r#"$.service is "x", expected "hello""#,
            "$.items[1].id is missing, expected 3",
            r#"header content-type is "application/json", expected it to contain "text/html""#,
            "header x-request-id is missing",
            r#"header cache-control is missing, expected it to contain "no-store""#,
            "latency 812 ms, expected below 500 ms",
        ]
    );
}

#[test]
fn verify_says_when_a_body_is_not_json() {
    let expect = expect(r#"{json: {"$.a": 1, b: 2}}"#);
    let unmet = expect.verify(&observed(200, "<html>"));
    assert_eq!(unmet.len(), 1, "{unmet:?}");
    assert!(unmet[0].starts_with("body is not JSON ("), "{unmet:?}");
    assert!(
        unmet[0].ends_with("so $.a, b cannot be checked"),
        "{unmet:?}"
    );
}

#[test]
fn a_cold_start_check_also_verifies_the_first_byte() {
    let file = parse_checks_file("checks:\n  - name: cold\n    coldStart: {firstByteBelow: 3s}\n")
        .unwrap();
    let mut response = observed(200, "ok");
    response.first_byte = Duration::from_millis(3400);
    response.latency = Duration::from_millis(3500);
    assert_eq!(
        file.checks[0].verify(&response),
        ["first byte after 3.4 s, expected below 3.0 s"]
    );
    response.first_byte = Duration::from_millis(900);
    assert!(file.checks[0].verify(&response).is_empty());
}

#[test]
fn json_paths_find_values_in_objects_and_arrays() {
    let doc = serde_json::json!({
        "service": "hello",
        "items": [{"id": 3, "tags": ["a", "b"]}, {"id": 4}],
        "odd.key": {"x": true},
        "matrix": [[1, 2], [3, 4]],
    });
    assert_eq!(
        json_path(&doc, "$.service"),
        Some(&serde_json::json!("hello"))
    );
    assert_eq!(
        json_path(&doc, "service"),
        Some(&serde_json::json!("hello"))
    );
    assert_eq!(
        json_path(&doc, "$.items[0].id"),
        Some(&serde_json::json!(3))
    );
    assert_eq!(json_path(&doc, "items[1].id"), Some(&serde_json::json!(4)));
    assert_eq!(
        json_path(&doc, "$.items[0].tags[1]"),
        Some(&serde_json::json!("b"))
    );
    assert_eq!(
        json_path(&doc, "$.matrix[1][0]"),
        Some(&serde_json::json!(3))
    );
    assert_eq!(
        json_path(&doc, r#"$["odd.key"].x"#),
        Some(&serde_json::json!(true))
    );
    assert_eq!(
        json_path(&doc, "$['odd.key']['x']"),
        Some(&serde_json::json!(true))
    );
    assert_eq!(json_path(&doc, "$"), Some(&doc));
    assert_eq!(json_path(&doc, "$.items[2]"), None);
    assert_eq!(json_path(&doc, "$.service.name"), None);
    assert_eq!(json_path(&doc, "$.items.id"), None);
    assert_eq!(json_path(&doc, "$.items[x]"), None);
    assert_eq!(json_path(&doc, "$..service"), None);
    assert_eq!(
        json_path(&serde_json::json!([5, 6]), "$[1]"),
        Some(&serde_json::json!(6))
    );
}

#[test]
fn json_values_compare_as_json_readers_see_them() {
    use serde_json::json;
    assert!(json_equal(&json!(3), &json!(3.0)));
    assert!(json_equal(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
    assert!(!json_equal(&json!(3), &json!("3")));
    assert!(!json_equal(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    assert!(json_equal(&json!(-1), &json!(-1.0)));
}

#[test]
fn quick_flags_parse() {
    assert_eq!(parse_request_line("/"), Ok((Method::GET, "/".to_string())));
    assert_eq!(
        parse_request_line("  post /api/items?x=1 "),
        Ok((Method::POST, "/api/items?x=1".to_string()))
    );
    assert_eq!(
        parse_request_line("PURGE /cache"),
        Ok((Method::from_bytes(b"PURGE").unwrap(), "/cache".to_string()))
    );
    assert_eq!(
        parse_request_line("GET / extra"),
        Err(r#"expected a request like "GET /" or "/api", found "GET / extra""#.to_string())
    );
    assert!(parse_request_line("").is_err());
    assert!(parse_request_line("GET api").is_err());
    assert!(parse_request_line("GET /a#b")
        .unwrap_err()
        .contains("fragment"));
    assert!(parse_request_line("G(T /").is_err());

    assert_eq!(
        parse_header_line("Content-Type: text/html; charset=utf-8"),
        Ok((
            http::header::CONTENT_TYPE,
            "text/html; charset=utf-8".to_string()
        ))
    );
    assert_eq!(
        parse_header_line("X-Empty:"),
        Ok((HeaderName::from_static("x-empty"), String::new()))
    );
    assert_eq!(
        parse_header_line("no colon"),
        Err(r#"expected a header like "Accept: text/html", found "no colon""#.to_string())
    );
    assert!(parse_header_line("Bad Name: x").is_err());
    assert!(parse_header_line(": x").is_err());

    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration(".25s"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
    assert_eq!(parse_duration(" 3 s "), Ok(Duration::from_secs(3)));
    assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
    // One grammar with the flags: hours and sums too.
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    for bad in [
        "",
        "ms",
        "5",
        "-1s",
        "1.2.3s",
        "1e3ms",
        "1.0000000001s",
        "s5",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    // Too large for a Duration: an error, not a panic.
    assert!(parse_duration("99999999999999999999999999999999999999m").is_err());
    assert!(parse_duration("999999999999999999999999999999999999999999m").is_err());
}
