//! `emulate run` on healthy images: env injection, limits, labels, the built-in sample, and
//! the usage errors that stop before anything starts.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn injects_cloud_runs_env_then_the_users() {
    let service = service_name("env");
    let dir = std::env::temp_dir().join(format!("{service}.yaml"));
    std::fs::write(&dir, "FROM_FILE: yes please\n").unwrap();
    let emulator = Emulator::start(
        &service,
        &[
            testapp_image(),
            // gcloud's escaping: `^:^` makes `:` the separator, so a value may hold commas.
            "--set-env-vars",
            "^:^GREETING=hi:LIST=a,b",
            "--env-vars-file",
            dir.to_str().unwrap(),
        ],
    )
    .await;
    let env = get(&emulator.url("/echo")).await.json()["env"].clone();
    assert_eq!(env["PORT"], "8080");
    assert_eq!(env["K_SERVICE"], service.as_str());
    assert_eq!(env["K_CONFIGURATION"], service.as_str());
    let revision = env["K_REVISION"].as_str().unwrap();
    let suffix = revision
        .strip_prefix(&format!("{service}-00001-"))
        .unwrap_or_else(|| panic!("{revision}"));
    assert!(
        suffix.len() == 3
            && suffix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    );
    assert_eq!(env["GREETING"], "hi");
    assert_eq!(env["LIST"], "a,b");
    assert_eq!(env["FROM_FILE"], "yes please");
    // The system lines Cloud Run prints, in its words.
    let stdout = emulator.stdout();
    assert!(
        stdout.contains(
            "Starting new instance. Reason: AUTOSCALING - Instance started due to traffic scaling."
        ),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("Default STARTUP TCP probe succeeded after 1 attempt for container \"{service}\" on port 8080.")), "{stdout}");
    // Container output is prefixed with its revision and shown by severity.
    assert!(
        stdout.contains(&format!("{revision}/"))
            && stdout.contains("INFO     testapp listening on 0.0.0.0:8080"),
        "{stdout}"
    );
    std::fs::remove_file(dir).unwrap();
}

#[tokio::test]
async fn port_flag_sets_port_and_container_gets_limits_and_labels_only() {
    let service = service_name("limits");
    let emulator = Emulator::start(
        &service,
        &[
            testapp_image(),
            "--port",
            "9000",
            "--memory",
            "256Mi",
            "--cpu",
            "0.5",
        ],
    )
    .await;
    assert_eq!(
        get(&emulator.url("/echo")).await.json()["env"]["PORT"],
        "9000"
    );
    let ids = running_container_ids(&service);
    assert_eq!(ids.len(), 1);
    let container = inspect(&ids[0]);
    let host = &container["HostConfig"];
    assert_eq!(host["Memory"], 256 << 20);
    assert_eq!(host["MemorySwap"], 256 << 20);
    assert_eq!(host["NanoCpus"], 500_000_000);
    // Nothing published (the proxy dials the bridge IP) and nothing mounted.
    assert!(
        host["PortBindings"]
            .as_object()
            .is_none_or(|p| p.is_empty()),
        "{host}"
    );
    assert!(container["Mounts"].as_array().unwrap().is_empty());
    assert_eq!(container["Config"]["Labels"]["dev.emulate.managed"], "true");
    assert!(container["Config"]["Labels"]["dev.emulate.revision"]
        .as_str()
        .unwrap()
        .starts_with(&service));
}

#[tokio::test]
async fn runs_the_built_in_sample_without_an_image() {
    let service = service_name("hello");
    let emulator = Emulator::start(&service, &[]).await;
    let reply = get(&emulator.url("/")).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("It's running!"), "{}", reply.body);
    assert!(
        reply.body.contains(&format!("Service: <b>{service}</b>")),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn reserved_env_names_are_refused_before_anything_starts() {
    for reserved in ["PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"] {
        let service = service_name("reserved");
        let setting = format!("{reserved}=x");
        let done = Emulator::run_to_exit(
            &service,
            &["some-image", "--set-env-vars", &setting],
            &[],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(done.status.code(), Some(2), "{done:?}");
        assert!(
            done.stderr.contains(&format!(
                "--set-env-vars: the env var name '{reserved}' is reserved"
            )),
            "{}",
            done.stderr
        );
        assert!(containers_of(&service).is_empty());
    }
}

#[tokio::test]
async fn unreachable_docker_is_one_clear_line_and_exit_4() {
    let done = Emulator::run_to_exit(
        &service_name("nodocker"),
        &["some-image"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(done.status.code(), Some(4), "{done:?}");
    assert!(
        done.stderr
            .contains("Cannot reach the Docker engine at unix:///nonexistent/docker.sock"),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains("Start Docker"), "{}", done.stderr);
}

#[tokio::test]
async fn a_busy_listen_port_is_a_clear_error_and_starts_nothing() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let service = service_name("busy");
    let mut command = emulate_command();
    let out = command
        .args([
            "run",
            testapp_image(),
            "--service",
            &service,
            "--listen",
            &addr,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("--listen: cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("--listen 127.0.0.1:"), "{stderr}");
    assert!(containers_of(&service).is_empty());
}

#[tokio::test]
async fn the_published_port_fallback_serves_through_127_0_0_1_only() {
    let service = service_name("published");
    let emulator =
        Emulator::start(&service, &[testapp_image(), "--upstream", "published-port"]).await;
    let reply = get(&emulator.url("/echo")).await;
    assert_eq!(reply.status, 200);
    let ids = running_container_ids(&service);
    let bindings = &inspect(&ids[0])["HostConfig"]["PortBindings"]["8080/tcp"];
    assert_eq!(bindings[0]["HostIp"], "127.0.0.1", "{bindings}");
    // The proxy really dials the published port: its pooled connection to 127.0.0.1:HOSTPORT
    // is still open after the request (nothing else knows that port).
    let published = inspect(&ids[0])["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
        .as_str()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    let established = established_to_loopback(published);
    assert!(
        established > 0,
        "no connection to the published port 127.0.0.1:{published}"
    );
}

/// How many ESTABLISHED TCP connections on this host go to 127.0.0.1:`port`
/// (from /proc/net/tcp: addresses are little-endian hex, state 01 is ESTABLISHED).
fn established_to_loopback(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[2] == remote && fields[3] == "01"
        })
        .count()
}
