//! The dashboard in a real browser: Debian's chromium, headless, driven over the DevTools
//! protocol (a WebSocket, with tokio-tungstenite). The page is loaded from the URL `emulate run`
//! prints; what it shows is read from its DOM with `Runtime.evaluate`. `.ci/run` installs
//! chromium; without it the test fails and says so.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// The browser: `$CHROMIUM`, else `chromium` on the PATH.
fn chromium_binary() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_string())
}

/// A headless chromium of this test's own: its process group is killed and its profile
/// directory removed when dropped, however the test ends.
struct Browser {
    child: Child,
    profile: PathBuf,
    /// The DevTools endpoint, `127.0.0.1:PORT`.
    devtools: String,
}

impl Browser {
    fn start() -> Browser {
        use std::os::unix::process::CommandExt;
        let binary = chromium_binary();
        let profile = std::env::temp_dir().join(format!(
            "emulate-it-chromium-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        // Everything chromium writes goes under the profile directory, removed with it: its
        // temporary files, cache and configuration included.
        let private = |name: &str| {
            let dir = profile.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            dir
        };
        let (tmp, cache, config) = (private("tmp"), private("cache"), private("config"));
        let spawned = Command::new(&binary)
            .args([
                "--headless",
                // The tests may run as root, where chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,860",
            ])
            .arg(format!(
                "--user-data-dir={}",
                profile.join("data").display()
            ))
            .env("TMPDIR", tmp)
            .env("XDG_CACHE_HOME", cache)
            .env("XDG_CONFIG_HOME", config)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A group of its own, so that its helper processes go with it.
            .process_group(0)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&profile);
                panic!(
                    "cannot start {binary} ({e}): the dashboard's browser test needs Chromium. Install Debian's package (`apt-get install chromium`; .ci/run does), or point CHROMIUM at a Chromium or Chrome binary."
                );
            }
        };
        let mut browser = Browser {
            child,
            profile,
            devtools: String::new(),
        };
        // Chromium writes the port it took, then the browser's path, to this file.
        let port_file = browser.profile.join("data").join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                if let Some(port) = text.lines().next().filter(|p| !p.is_empty()) {
                    browser.devtools = format!("127.0.0.1:{}", port.trim());
                    break;
                }
            }
            if let Ok(Some(status)) = browser.child.try_wait() {
                panic!("{binary} exited with {status} before its DevTools endpoint was up");
            }
            assert!(
                Instant::now() < deadline,
                "{binary} did not open its DevTools endpoint within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        browser
    }

    /// The WebSocket of the browser's first page.
    async fn page(&self) -> Page {
        let deadline = Instant::now() + Duration::from_secs(15);
        let url = loop {
            let list = get(&format!("http://{}/json/list", self.devtools)).await;
            let targets: Value = serde_json::from_str(&list.body).unwrap_or(Value::Null);
            let page = targets.as_array().and_then(|targets| {
                targets
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(str::to_string)
            });
            if let Some(url) = page {
                break url;
            }
            assert!(Instant::now() < deadline, "no page target: {}", list.body);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("DevTools WebSocket {url}: {e}"));
        Page { socket, next_id: 0 }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: the browser and its renderer, GPU and zygote processes.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One page, driven over the DevTools protocol.
struct Page {
    socket: Socket,
    next_id: u64,
}

impl Page {
    /// Sends a command and waits for its answer (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(Message::text(message)).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let message = self
                    .socket
                    .next()
                    .await
                    .expect("the browser closed its DevTools socket")
                    .unwrap();
                let Message::Text(text) = message else {
                    continue;
                };
                let value: Value = serde_json::from_str(text.as_str()).unwrap();
                if value["id"] == id {
                    return value;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within 30 s"));
        assert!(answer["error"].is_null(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is `expected` in the page, failing after `limit` with what it
    /// was and the page's text.
    async fn wait_for(&mut self, expression: &str, expected: Value, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.eval(expression).await;
            if value == expected {
                return;
            }
            if Instant::now() >= deadline {
                let text = self.eval("document.body.innerText").await;
                panic!(
                    "{expression} is {value}, not {expected}, after {limit:?}; the page:\n{text}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The split the page draws for `service`: `[[revision, percent], ...]`.
fn split_of(service: &str) -> String {
    format!(
        "Array.from(document.querySelectorAll('[data-split=\"{service}\"] .segment')).map(s => [s.dataset.revision, Number(s.dataset.percent)]).sort()"
    )
}

#[tokio::test]
async fn the_dashboard_shows_the_service_a_traffic_change_and_a_request_live() {
    let emulator = Emulator::start(&service_name("dash"), &[testapp_image()]).await;
    let service = emulator.service.clone();
    emulator
        .cli_ok(&["deploy", &service, "--update-env-vars", "V=2"])
        .await;
    let names: Vec<String> = emulator
        .revision_list()
        .await
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let (new, old) = (names[0].clone(), names[1].clone());

    let browser = Browser::start();
    let mut page = browser.page().await;
    page.call("Page.enable", json!({})).await;
    page.call("Page.navigate", json!({"url": emulator.dashboard_url()}))
        .await;

    // The page lists the service, with its URL, and all traffic on the new revision.
    let limit = Duration::from_secs(20);
    page.wait_for(
        &format!("document.querySelector('[data-service=\"{service}\"]') !== null"),
        json!(true),
        limit,
    )
    .await;
    // The token left the address bar: the page is `/`, reading with its cookie.
    assert_eq!(
        page.eval("location.pathname + location.search").await,
        json!("/")
    );
    let card = page
        .eval(&format!(
            "document.querySelector('[data-service=\"{service}\"]').innerText"
        ))
        .await;
    let card = card.as_str().unwrap();
    assert!(
        card.contains(&format!(
            "http://{service}.localhost:{}",
            emulator.addr.port()
        )),
        "{card}"
    );
    page.wait_for(&split_of(&service), json!([[new, 100]]), limit)
        .await;

    // A traffic change made with the CLI shows without a reload (the marker survives).
    page.eval("window.__notReloaded = true").await;
    let began = Instant::now();
    emulator
        .cli_ok(&[
            "services",
            "update-traffic",
            &service,
            "--to-revisions",
            &format!("{old}=40,{new}=60"),
        ])
        .await;
    let changed = Instant::now();
    page.wait_for(
        &split_of(&service),
        // Sorted by name: the old revision first.
        json!([[old.clone(), 40], [new.clone(), 60]]),
        limit,
    )
    .await;
    // Within a second of the change (plus one poll of this test).
    assert!(
        changed.elapsed() < Duration::from_millis(1500),
        "the split showed {:?} after the change ({:?} after the command started)",
        changed.elapsed(),
        began.elapsed()
    );
    page.wait_for(
        &format!("document.querySelector('tr[data-revision=\"{old}\"]').dataset.percent"),
        json!("40"),
        limit,
    )
    .await;
    assert_eq!(
        page.eval("window.__notReloaded === true").await,
        json!(true)
    );

    // A request made meanwhile appears in the last requests, with its status and revision.
    let marker = format!("browser-{:08x}", rand::random::<u32>());
    let reply = get(&emulator.url(&format!("/echo?from={marker}"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let row = format!("document.querySelector('#requests tr[data-url*=\"{marker}\"]')");
    page.wait_for(&format!("{row} !== null"), json!(true), limit)
        .await;
    let cells = page
        .eval(&format!("Array.from({row}.cells).map(c => c.textContent)"))
        .await;
    let cells: Vec<&str> = cells
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cells[1], "GET", "{cells:?}");
    assert_eq!(cells[2], format!("/echo?from={marker}"), "{cells:?}");
    assert_eq!(cells[3], "200", "{cells:?}");
    assert_eq!(cells[5], reply.revision, "{cells:?}");
    assert!(!cells[7].is_empty(), "a trace id: {cells:?}");
    assert_eq!(
        page.eval("window.__notReloaded === true").await,
        json!(true)
    );

    // The live log has the request's line, and the severity filter hides it at ERROR.
    let in_log = format!(
        "Array.from(document.querySelectorAll('#log li')).some(l => l.textContent.includes('{marker}'))"
    );
    page.wait_for(&in_log, json!(true), limit).await;
    page.eval(
        "(() => { const s = document.getElementById('severity'); s.value = 'ERROR'; s.dispatchEvent(new Event('change')); })()",
    )
    .await;
    page.wait_for(&in_log, json!(false), limit).await;
    drop(page);
    drop(browser);
}
