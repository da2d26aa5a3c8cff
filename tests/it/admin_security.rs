//! The admin API runs containers with commands of the caller's choice, so a web page must not
//! be able to drive it: writes need a document Content-Type, foreign origins and hosts (DNS
//! rebinding) are refused, every request needs the run's token, binding it off loopback needs
//! a flag, and idle connections are closed. Requests here are written on raw sockets, so the
//! tests control every header.

use std::time::Duration;

use crate::support::*;

const SERVICES: &str = "/apis/serving.knative.dev/v1/namespaces/default/services";

/// A raw request to the admin API: `headers` are whole lines (`Host` included, or not).
async fn admin_request(
    emulator: &Emulator,
    method: &str,
    path: &str,
    headers: &[String],
    body: &str,
) -> RawReply {
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    raw_http(emulator.admin_addr(), &request).await
}

/// The headers the verbs send: loopback Host, the run's token.
fn proper(emulator: &Emulator) -> Vec<String> {
    vec![
        format!("Host: {}", emulator.admin_addr()),
        format!("Authorization: Bearer {}", emulator.admin_token()),
    ]
}

fn with(mut headers: Vec<String>, extra: &[&str]) -> Vec<String> {
    headers.extend(extra.iter().map(|h| h.to_string()));
    headers
}

/// A service document running the test app with a command of the caller's choice.
fn payload(service: &str) -> String {
    serde_json::json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": service},
        "spec": {"template": {"spec": {"containers": [{"image": testapp_image()}]}}},
    })
    .to_string()
}

fn assert_status(reply: &RawReply, code: u16, reason: &str) {
    assert_eq!(reply.status, code, "{reply:?}");
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["kind"], "Status", "{reply:?}");
    assert_eq!(body["reason"], reason, "{reply:?}");
}

#[tokio::test]
async fn a_write_that_is_not_a_document_is_refused_and_deploys_nothing() {
    let emulator = Emulator::start(&service_name("adm-ct"), &[testapp_image()]).await;
    let victim = service_name("adm-ct-victim");
    let body = payload(&victim);
    for content_type in [
        "Content-Type: text/plain",
        "Content-Type: application/x-www-form-urlencoded",
        "Content-Type: multipart/form-data; boundary=x",
    ] {
        let reply = admin_request(
            &emulator,
            "POST",
            SERVICES,
            &with(proper(&emulator), &[content_type]),
            &body,
        )
        .await;
        assert_status(&reply, 415, "UnsupportedMediaType");
    }
    let reply = admin_request(
        &emulator,
        "PUT",
        &format!("{SERVICES}/{victim}"),
        &proper(&emulator),
        &body,
    )
    .await;
    assert_status(&reply, 415, "UnsupportedMediaType");
    assert!(
        containers_of(&victim).is_empty(),
        "a refused write started a container"
    );
    let list = emulator
        .cli_ok(&["services", "list", "--format", "json"])
        .await;
    assert!(!list.stdout.contains(&victim), "{}", list.stdout);

    // A DELETE with a body must say what it is; one without needs no type.
    let path = format!("{SERVICES}/{victim}");
    let reply = admin_request(&emulator, "DELETE", &path, &proper(&emulator), "{}").await;
    assert_status(&reply, 415, "UnsupportedMediaType");
    let reply = admin_request(&emulator, "DELETE", &path, &proper(&emulator), "").await;
    assert_status(&reply, 404, "NotFound");

    // The same document as JSON is a deploy.
    let reply = admin_request(
        &emulator,
        "POST",
        SERVICES,
        &with(proper(&emulator), &["Content-Type: application/json"]),
        &body,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(running_containers_of(&victim), 1);
    let reply = admin_request(&emulator, "DELETE", &path, &proper(&emulator), "").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    for id in containers_of(&victim) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &id])
            .output();
    }
}

#[tokio::test]
async fn foreign_web_pages_and_rebound_hosts_are_refused() {
    let emulator = Emulator::start(&service_name("adm-origin"), &[testapp_image()]).await;
    let victim = service_name("adm-origin-victim");
    let json = "Content-Type: application/json";
    let token = format!("Authorization: Bearer {}", emulator.admin_token());
    let own_host = format!("Host: {}", emulator.admin_addr());
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "a foreign Origin",
            with(proper(&emulator), &["Origin: http://evil.example"]),
        ),
        ("Origin: null", with(proper(&emulator), &["Origin: null"])),
        (
            "the proxy's origin",
            with(
                proper(&emulator),
                &[&format!("Origin: {}", emulator.url(""))],
            ),
        ),
        (
            "Sec-Fetch-Site: cross-site",
            with(proper(&emulator), &["Sec-Fetch-Site: cross-site"]),
        ),
        (
            "a rebound Host",
            vec!["Host: evil.example".to_string(), token.clone()],
        ),
        (
            "a rebound Host with the API's port",
            vec![
                format!("Host: evil.example:{}", emulator.admin_addr().port()),
                token.clone(),
            ],
        ),
        ("no Host", vec![token.clone()]),
        (
            "two Hosts",
            vec![
                own_host.clone(),
                "Host: evil.example".to_string(),
                token.clone(),
            ],
        ),
    ];
    for (case, headers) in cases {
        let read = admin_request(&emulator, "GET", SERVICES, &headers, "").await;
        assert_eq!(read.status, 403, "GET with {case}: {read:?}");
        let write = admin_request(
            &emulator,
            "POST",
            SERVICES,
            &with(headers, &[json]),
            &payload(&victim),
        )
        .await;
        assert_status(&write, 403, "Forbidden");
        assert!(containers_of(&victim).is_empty(), "{case} deployed");
    }
    // The API's own origin, and loopback names with any port, are fine.
    for headers in [
        with(
            proper(&emulator),
            &[&format!("Origin: http://{}", emulator.admin_addr())],
        ),
        vec!["Host: localhost".to_string(), token.clone()],
        vec!["Host: api.localhost:1".to_string(), token.clone()],
        vec!["Host: [::1]:80".to_string(), token.clone()],
    ] {
        let reply = admin_request(&emulator, "GET", SERVICES, &headers, "").await;
        assert_eq!(reply.status, 200, "{headers:?}: {reply:?}");
    }
}

#[tokio::test]
async fn every_request_needs_the_runs_token_and_the_verbs_send_it() {
    let emulator = Emulator::start(&service_name("adm-token"), &[testapp_image()]).await;
    let host = format!("Host: {}", emulator.admin_addr());
    let token = emulator.admin_token();
    assert!(token.len() >= 32, "a token of {} characters", token.len());
    for path in [SERVICES, "/healthz"] {
        for auth in [
            None,
            Some("Authorization: Bearer wrong".to_string()),
            Some(format!("Authorization: Bearer {token}x")),
            Some(format!("Authorization: Basic {token}")),
        ] {
            let headers: Vec<String> = [Some(host.clone()), auth.clone()]
                .into_iter()
                .flatten()
                .collect();
            let reply = admin_request(&emulator, "GET", path, &headers, "").await;
            assert_status(&reply, 401, "Unauthorized");
            assert!(
                reply.body.contains("EMULATE_ADMIN_TOKEN"),
                "{auth:?}: {reply:?}"
            );
            assert!(
                reply
                    .head
                    .to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{reply:?}"
            );
        }
    }

    // Only this user may read the token.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(emulator.discovery_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "discovery file mode {mode:o}");

    // The verbs find the token in the discovery file announcing EMULATE_ADMIN ...
    let described = emulator
        .cli_ok(&[
            "services",
            "describe",
            &emulator.service,
            "--format",
            "json",
        ])
        .await;
    assert!(described.stdout.contains(&emulator.service));
    emulator
        .cli_ok(&["revisions", "list", "--service", &emulator.service])
        .await;
    // ... or take it from EMULATE_ADMIN_TOKEN, which wins.
    let given = emulator
        .cli_env(&["services", "list"], &[("EMULATE_ADMIN_TOKEN", &token)])
        .await;
    assert_eq!(given.status.code(), Some(0), "{given:?}");
    let wrong = emulator
        .cli_env(&["services", "list"], &[("EMULATE_ADMIN_TOKEN", "wrong")])
        .await;
    assert_eq!(wrong.status.code(), Some(1), "{wrong:?}");
    assert!(
        wrong.stderr.contains("needs this run's token"),
        "{}",
        wrong.stderr
    );
    let unusable = emulator
        .cli_env(
            &["services", "list"],
            &[("EMULATE_ADMIN_TOKEN", "a\tb\u{7f}")],
        )
        .await;
    assert_eq!(unusable.status.code(), Some(2), "{unusable:?}");
    assert!(
        unusable.stderr.contains("EMULATE_ADMIN_TOKEN"),
        "{}",
        unusable.stderr
    );
}

#[tokio::test]
async fn idle_admin_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let emulator = Emulator::start(
        &service_name("adm-idle"),
        &[testapp_image(), "--header-read-timeout", "1s"],
    )
    .await;
    // A client that never sends a byte ...
    let mut silent = tokio::net::TcpStream::connect(emulator.admin_addr())
        .await
        .unwrap();
    // ... and one that keeps its connection open after a request.
    let mut idle = tokio::net::TcpStream::connect(emulator.admin_addr())
        .await
        .unwrap();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
        emulator.admin_addr(),
        emulator.admin_token()
    );
    idle.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    for (name, stream) in [("silent", &mut silent), ("idle", &mut idle)] {
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "the {name} connection was still open 10 s after a 1 s header-read timeout"
        );
    }
}

#[tokio::test]
async fn an_admin_api_off_loopback_needs_the_flag() {
    let service = service_name("adm-remote");
    let done = Emulator::run_to_exit(
        &service,
        &[testapp_image(), "--admin-listen", "0.0.0.0:0"],
        &[],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(
        done.stderr.contains("--admin-listen") && done.stderr.contains("--admin-allow-remote"),
        "{}",
        done.stderr
    );
    assert!(containers_of(&service).is_empty(), "a container was left");
}

#[tokio::test]
async fn an_admin_api_off_loopback_on_purpose_warns_and_stays_gated() {
    let emulator = Emulator::start(
        &service_name("adm-remote-ok"),
        &[
            testapp_image(),
            "--admin-listen",
            "0.0.0.0:0",
            "--admin-allow-remote",
        ],
    )
    .await;
    assert!(
        emulator
            .stderr()
            .contains("warning: the admin API listens off loopback, on 0.0.0.0:"),
        "{}",
        emulator.stderr()
    );
    emulator.cli_ok(&["services", "list"]).await;
    let token = format!("Authorization: Bearer {}", emulator.admin_token());
    let rebound = admin_request(
        &emulator,
        "GET",
        SERVICES,
        &["Host: evil.example".to_string(), token.clone()],
        "",
    )
    .await;
    assert_status(&rebound, 403, "Forbidden");
    let no_token = admin_request(
        &emulator,
        "GET",
        SERVICES,
        &[format!("Host: {}", emulator.admin_addr())],
        "",
    )
    .await;
    assert_status(&no_token, 401, "Unauthorized");
}

#[tokio::test]
async fn a_yaml_document_is_read_as_yaml() {
    let emulator = Emulator::start(&service_name("yamlbody"), &[testapp_image()]).await;
    let other = service_name("yamlnew");
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {other}\nspec:\n  template:\n    spec:\n      containers:\n      - image: {}\n",
        testapp_image()
    );
    let reply = admin_request(
        &emulator,
        "POST",
        SERVICES,
        &with(proper(&emulator), &["Content-Type: application/yaml"]),
        &yaml,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let service: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(service["metadata"]["name"], other.as_str());
    assert_eq!(running_containers_of(&other), 1);
    // A YAML error names its field, as for files.
    let bad = yaml.replace("      - image:", "      - imagee:");
    let reply = admin_request(
        &emulator,
        "PUT",
        &format!("{SERVICES}/{other}"),
        &with(proper(&emulator), &["Content-Type: text/yaml"]),
        &bad,
    )
    .await;
    assert_status(&reply, 400, "BadRequest");
    assert!(reply.body.contains("imagee"), "{reply:?}");
    let reply = admin_request(
        &emulator,
        "DELETE",
        &format!("{SERVICES}/{other}"),
        &proper(&emulator),
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn a_killed_emulators_file_announcing_the_same_port_is_not_used() {
    let emulator = Emulator::start(&service_name("stalefile"), &[testapp_image()]).await;
    // Files as a killed emulator leaves them: the same (reused) admin port, another token,
    // and a pid that is gone. Several, so that one of them comes before the live file in the
    // directory's order.
    let dir = emulator.discovery_file().parent().unwrap().to_path_buf();
    let mut stale = Vec::new();
    for _ in 0..20 {
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let pid = gone.id();
        gone.wait().unwrap();
        let file = dir.join(format!("admin-{pid}.json"));
        let body = serde_json::json!({
            "pid": pid,
            "admin": emulator.admin_addr().to_string(),
            "listen": "127.0.0.1:1",
            "token": "not-this-runs-token",
        });
        std::fs::write(&file, body.to_string()).unwrap();
        stale.push(file);
    }
    let done = emulator.cli(&["services", "list"]).await;
    assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
    assert!(done.stdout.contains(&emulator.service), "{}", done.stdout);
    for file in stale {
        let _ = std::fs::remove_file(file);
    }
}

/// The value of header `name` in a raw reply's head, if there.
fn header_of(reply: &RawReply, name: &str) -> Option<String> {
    reply.head.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

#[tokio::test]
async fn the_dashboard_cookie_reads_but_never_writes_and_never_reaches_an_instance() {
    let emulator = Emulator::start(&service_name("adm-cookie"), &[testapp_image()]).await;
    let url = emulator.dashboard_url();
    let path = url
        .strip_prefix(&format!("http://{}", emulator.admin_addr()))
        .unwrap_or_else(|| panic!("the dashboard is on the admin address: {url}"));
    assert!(path.starts_with("/?token="), "{url}");
    let host = vec![format!("Host: {}", emulator.admin_addr())];

    // Without the token, or with the run's own token in the URL, no cookie.
    let reply = admin_request(&emulator, "GET", "/", &host, "").await;
    assert_status(&reply, 401, "Unauthorized");
    let wrong = format!("/?token={}", emulator.admin_token());
    let reply = admin_request(&emulator, "GET", &wrong, &host, "").await;
    assert_status(&reply, 401, "Unauthorized");

    // The printed URL trades its token for the cookie, and sends the browser to `/`.
    let reply = admin_request(&emulator, "GET", path, &host, "").await;
    assert_eq!(reply.status, 303, "{reply:?}");
    assert_eq!(header_of(&reply, "location").as_deref(), Some("/"));
    let set_cookie = header_of(&reply, "set-cookie").expect("a cookie");
    let port = emulator.admin_addr().port();
    assert!(
        set_cookie.starts_with(&format!("emulate_admin_{port}="))
            && set_cookie.contains("; HttpOnly")
            && set_cookie.contains("; SameSite=Strict")
            && set_cookie.contains("; Path=/"),
        "{set_cookie}"
    );
    let cookie = format!("Cookie: {}", set_cookie.split(';').next().unwrap());
    assert_ne!(
        cookie,
        format!("Cookie: emulate_admin_{port}={}", emulator.admin_token()),
        "the cookie is not the run's token"
    );

    // With the cookie, a browser reads: the page, the state, the control plane's documents.
    let browser = with(host.clone(), &[&cookie, "Sec-Fetch-Site: same-origin"]);
    let page = admin_request(&emulator, "GET", "/", &browser, "").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("/dashboard/app.js"), "{}", page.body);
    assert!(header_of(&page, "content-security-policy").is_some());
    let state = admin_request(&emulator, "GET", "/emulate/v1/state", &browser, "").await;
    assert_eq!(state.status, 200, "{state:?}");
    let state: serde_json::Value = serde_json::from_str(&state.body).unwrap();
    assert_eq!(state["services"][0]["name"], emulator.service.as_str());
    let services = admin_request(&emulator, "GET", SERVICES, &browser, "").await;
    assert_eq!(services.status, 200, "{services:?}");

    // It never writes: a deploy and a delete with the cookie alone are refused, and change
    // nothing.
    let victim = service_name("adm-cookie-victim");
    let json = with(browser.clone(), &["Content-Type: application/json"]);
    let reply = admin_request(&emulator, "POST", SERVICES, &json, &payload(&victim)).await;
    assert_status(&reply, 401, "Unauthorized");
    let own = format!("{SERVICES}/{}", emulator.service);
    let reply = admin_request(&emulator, "DELETE", &own, &browser, "").await;
    assert_status(&reply, 401, "Unauthorized");
    assert!(containers_of(&victim).is_empty());
    let list = emulator
        .cli_ok(&["services", "list", "--format", "json"])
        .await;
    assert!(list.stdout.contains(&emulator.service), "{}", list.stdout);
    assert!(!list.stdout.contains(&victim), "{}", list.stdout);

    // Cookies are not kept apart by port: a service on the same host would get it, so the
    // front end removes it (and keeps the service's own cookies).
    let echoed = request(
        "GET",
        &emulator.url("/echo"),
        &[(
            "cookie",
            &format!("mine=1; {}", &cookie["Cookie: ".len()..]),
        )],
        Vec::new(),
        false,
    )
    .await;
    assert_eq!(echoed.status, 200, "{}", echoed.body);
    assert_eq!(
        echoed.json()["headers"]["cookie"],
        serde_json::json!(["mine=1"])
    );
}
