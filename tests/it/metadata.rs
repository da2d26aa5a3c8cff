//! The metadata server as an app on Cloud Run meets it: from inside its container, at
//! `$GCE_METADATA_HOST`.

use crate::support::*;

/// What the test app's `/metadata` got from the metadata server: status and body.
async fn ask(emulator: &Emulator, path: &str, flavor: bool) -> (u16, String, String) {
    let flag = if flavor { "" } else { "&flavor=0" };
    let reply = get(&emulator.url(&format!("/metadata?path={path}{flag}"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (head, body) = reply
        .body
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {}", reply.body));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {head}"));
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test]
async fn an_instance_finds_the_project_region_account_and_a_token() {
    let service = service_name("metadata");
    let emulator = Emulator::start(
        &service,
        &[
            testapp_image(),
            "--project",
            "my-project-42",
            "--region",
            "europe-west1",
        ],
    )
    .await;
    let env = get(&emulator.url("/echo")).await.json()["env"].clone();
    let host = env["GCE_METADATA_HOST"].as_str().unwrap().to_string();
    assert_eq!(env["GCE_METADATA_IP"], host.as_str());
    assert!(
        emulator
            .stderr()
            .contains(&format!("Metadata server: http://{host}")),
        "{}",
        emulator.stderr()
    );

    let (status, head, project) =
        ask(&emulator, "/computeMetadata/v1/project/project-id", true).await;
    assert_eq!((status, project.as_str()), (200, "my-project-42"));
    assert!(head.contains("metadata-flavor: google"), "{head}");
    let (_, _, number) = ask(
        &emulator,
        "/computeMetadata/v1/project/numeric-project-id",
        true,
    )
    .await;
    assert!(
        number.len() == 12 && number.chars().all(|c| c.is_ascii_digit()),
        "{number}"
    );
    let (_, _, region) = ask(&emulator, "/computeMetadata/v1/instance/region", true).await;
    assert_eq!(region, format!("projects/{number}/regions/europe-west1"));
    let (_, _, email) = ask(
        &emulator,
        "/computeMetadata/v1/instance/service-accounts/default/email",
        true,
    )
    .await;
    assert_eq!(
        email,
        format!("{number}-compute@developer.gserviceaccount.com")
    );
    let (status, head, token) = ask(
        &emulator,
        "/computeMetadata/v1/instance/service-accounts/default/token",
        true,
    )
    .await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    let token: serde_json::Value = serde_json::from_str(&token).unwrap();
    assert_eq!(token["token_type"], "Bearer");
    assert!(
        token["access_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{token}"
    );
    assert!(
        token["expires_in"].as_u64().is_some_and(|s| s > 3000),
        "{token}"
    );

    // Without the header: refused, in the real server's words.
    let (status, head, body) =
        ask(&emulator, "/computeMetadata/v1/project/project-id", false).await;
    assert_eq!(status, 403);
    assert!(head.contains("metadata-flavor: google"), "{head}");
    assert!(
        body.contains("Missing Metadata-Flavor:Google header."),
        "{body}"
    );
    assert!(!body.contains("my-project-42"), "{body}");
    // An ID token for the audience asked for, in Google's shape.
    let (status, _, token) = ask(
        &emulator,
        "/computeMetadata/v1/instance/service-accounts/default/identity?audience=http://b.localhost:8080",
        true,
    )
    .await;
    assert_eq!(status, 200, "{token}");
    let claims = jwt_claims(&token);
    assert_eq!(claims["aud"], "http://b.localhost:8080");
    assert_eq!(claims["iss"], "https://accounts.google.com");
    assert!(
        claims["email"]
            .as_str()
            .unwrap()
            .ends_with("-compute@developer.gserviceaccount.com"),
        "{claims}"
    );
    let (status, _, body) = ask(
        &emulator,
        "/computeMetadata/v1/instance/service-accounts/default/identity",
        true,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body, "non-empty audience parameter required\n");
}

/// A JWT's claims, undecoded and unverified.
fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let part = token
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a JWT: {token}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap_or_else(|e| panic!("not a JWT ({e}): {token}"));
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn a_users_gce_metadata_host_wins() {
    let service = service_name("metadata-user");
    let emulator = Emulator::start(
        &service,
        &[
            testapp_image(),
            "--service-account",
            "api@my-project.iam.gserviceaccount.com",
            "--set-env-vars",
            "GCE_METADATA_IP=10.9.9.9:80",
        ],
    )
    .await;
    let env = get(&emulator.url("/echo")).await.json()["env"].clone();
    assert_eq!(env["GCE_METADATA_IP"], "10.9.9.9:80");
    let (_, _, email) = ask(
        &emulator,
        "/computeMetadata/v1/instance/service-accounts/default/email",
        true,
    )
    .await;
    assert_eq!(email, "api@my-project.iam.gserviceaccount.com");
}

#[tokio::test]
async fn a_bad_project_is_refused_before_anything_starts() {
    let service = service_name("metadata-bad");
    let finished = Emulator::run_to_exit(
        &service,
        &[testapp_image(), "--project", "Not_A_Project"],
        &[],
        std::time::Duration::from_secs(30),
    )
    .await;
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(finished.stderr.contains("--project"), "{}", finished.stderr);
    assert!(containers_of(&service).is_empty());
}

/// Google's own client library, google-auth for Python (installed by `.ci/run`), finds the
/// server through `GCE_METADATA_HOST`/`GCE_METADATA_IP`, as an app on Cloud Run does:
/// `google.auth.default()` gives compute credentials and the project, and they refresh.
#[tokio::test]
async fn google_auth_for_python_gets_the_project_and_a_token() {
    let service = service_name("metadata-py");
    let emulator = Emulator::start(&service, &[testapp_image(), "--project", "py-project-7"]).await;
    let stderr = emulator.stderr();
    let host = stderr
        .lines()
        .find_map(|line| line.strip_prefix("Metadata server: http://"))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no metadata server line: {stderr}"))
        .to_string();
    let script = r#"
import google.auth, google.auth.transport.requests as transport
from google.auth import compute_engine
credentials, project = google.auth.default()
assert isinstance(credentials, compute_engine.Credentials), type(credentials)
credentials.refresh(transport.Request())
print(project)
print(credentials.service_account_email)
print(credentials.token)
import google.oauth2.id_token as id_token, os
token = id_token.fetch_id_token(transport.Request(), "http://b.localhost:8080")
claims = id_token.verify_token(token, transport.Request(), audience="http://b.localhost:8080",
    certs_url="http://" + os.environ["GCE_METADATA_HOST"] + "/oauth2/v1/certs")
print(claims["aud"])
"#;
    let home = std::env::temp_dir().join(format!("{service}-home"));
    std::fs::create_dir_all(&home).unwrap();
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        // Nothing else for google.auth.default() to find: no key file, no gcloud config.
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("GCE_METADATA_HOST", &host)
        .env("GCE_METADATA_IP", &host)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): install it and `pip install google-auth requests` (.ci/run does)"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "google-auth failed (is it installed? `python3 -m pip install google-auth requests`, as .ci/run does):\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0], "py-project-7");
    assert!(
        lines[1].ends_with("-compute@developer.gserviceaccount.com"),
        "{stdout}"
    );
    assert!(lines[2].starts_with("ya29."), "{stdout}");
    // fetch_id_token through the metadata server; verify_token with the emulator's certs.
    assert_eq!(lines[3], "http://b.localhost:8080");
    std::fs::remove_dir_all(home).unwrap();
}

/// service.yaml's `serviceAccountName` is the identity of that service's containers; a
/// service without one gets the default account, and each account its own token.
#[tokio::test]
async fn each_service_gets_its_own_service_account() {
    let service = service_name("md-sa");
    let other = format!("{service}-b");
    let dir = std::env::temp_dir().join(format!("{service}-files"));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = |name: &str, account: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  template:\n    spec:\n{account}      containers:\n      - image: {}\n",
            testapp_image()
        )
    };
    let a = dir.join("a.yaml");
    let b = dir.join("b.yaml");
    std::fs::write(&a, yaml(&service, "      serviceAccountName: api\n")).unwrap();
    std::fs::write(&b, yaml(&other, "")).unwrap();
    let emulator = Emulator::start(
        &service,
        &[
            "-f",
            a.to_str().unwrap(),
            "-f",
            b.to_str().unwrap(),
            "--project",
            "sa-project",
            "--default-service",
            &service,
        ],
    )
    .await;
    let email_path = "/computeMetadata/v1/instance/service-accounts/default/email";
    let (_, _, email) = ask(&emulator, email_path, true).await;
    assert_eq!(email, "api@sa-project.iam.gserviceaccount.com");
    let token_path = "/computeMetadata/v1/instance/service-accounts/default/token";
    let (_, _, token_a) = ask(&emulator, token_path, true).await;
    // The second service, by its host name.
    let host = format!("{other}.localhost");
    let ask_b = |path: &str| {
        let url = emulator.url(&format!("/metadata?path={path}"));
        let host = host.clone();
        async move { request("GET", &url, &[("host", &host)], Vec::new(), false).await }
    };
    let reply = ask_b(email_path).await;
    assert!(
        reply
            .body
            .ends_with("-compute@developer.gserviceaccount.com"),
        "{}",
        reply.body
    );
    let token_b = ask_b(token_path).await.body;
    let access = |body: &str| -> String {
        let json = body.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str::<serde_json::Value>(json).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(access(&format!("x\r\n\r\n{token_a}")), access(&token_b));
    std::fs::remove_dir_all(dir).unwrap();
}

/// A token endpoint served by the test on loopback (the emulator fetches tokens on the host
/// side): every request is answered with `body` and its form body kept.
async fn fake_token_endpoint(
    body: serde_json::Value,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            let body = body.to_string();
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    let body = body.clone();
                    async move {
                        let sent = request.into_body().collect().await?.to_bytes();
                        log.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&sent).into_owned());
                        let mut response = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(body),
                        ));
                        response.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, hyper::Error>(response)
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (addr, seen)
}

/// A service account key file (a fresh RSA key) in `dir`, its `token_uri` at `token_uri`.
fn write_service_account_key(dir: &std::path::Path, token_uri: &str) -> std::path::PathBuf {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "adc-project",
        "private_key_id": "0123456789abcdef",
        "private_key": pem.as_str(),
        "client_email": "runner@adc-project.iam.gserviceaccount.com",
        "client_id": "112233445566778899",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    });
    let path = dir.join("key.json");
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

/// `--credentials adc`: the token an instance gets is the one the key's `token_uri` handed
/// out for a JWT-bearer grant, fetched once and then served from the cache.
#[tokio::test]
async fn with_adc_an_instance_gets_the_credential_s_real_token() {
    let service = service_name("md-adc");
    let (addr, seen) = fake_token_endpoint(serde_json::json!({
        "access_token": "ya29.a0-from-the-fake-endpoint",
        "expires_in": 3599,
        "token_type": "Bearer",
    }))
    .await;
    let dir = std::env::temp_dir().join(format!("{service}-adc"));
    std::fs::create_dir_all(&dir).unwrap();
    let key = write_service_account_key(&dir, &format!("http://{addr}/token"));
    let emulator = Emulator::start_with_env(
        &service,
        &[
            testapp_image(),
            "--credentials",
            "adc",
            "--project",
            "adc-project",
        ],
        &[
            ("GOOGLE_APPLICATION_CREDENTIALS", key.to_str().unwrap()),
            ("HOME", dir.to_str().unwrap()),
        ],
    )
    .await;
    let token_path = "/computeMetadata/v1/instance/service-accounts/default/token";
    let (status, head, first) = ask(&emulator, token_path, true).await;
    assert_eq!(status, 200, "{first}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["access_token"], "ya29.a0-from-the-fake-endpoint");
    assert_eq!(first["token_type"], "Bearer");
    let expires = first["expires_in"].as_u64().unwrap();
    assert!((3500..=3599).contains(&expires), "{first}");
    let (_, _, second) = ask(&emulator, token_path, true).await;
    let second: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!(second["access_token"], first["access_token"]);
    assert!(
        second["expires_in"].as_u64().unwrap() <= expires,
        "{second}"
    );
    // The email is the key's account.
    let (_, _, email) = ask(
        &emulator,
        "/computeMetadata/v1/instance/service-accounts/default/email",
        true,
    )
    .await;
    assert_eq!(email, "runner@adc-project.iam.gserviceaccount.com");
    let grants = seen.lock().unwrap().clone();
    assert_eq!(
        grants.len(),
        1,
        "the second token came from the cache: {grants:?}"
    );
    assert!(
        grants[0].contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"),
        "{}",
        grants[0]
    );
    assert!(grants[0].contains("&assertion=ey"), "{}", grants[0]);
    drop(emulator);
    std::fs::remove_dir_all(dir).unwrap();
}

/// `--credentials adc` without credentials: refused before anything starts, saying how to
/// get some.
#[tokio::test]
async fn adc_without_credentials_is_refused_before_anything_starts() {
    let service = service_name("md-noadc");
    let home = std::env::temp_dir().join(format!("{service}-home"));
    std::fs::create_dir_all(&home).unwrap();
    let finished = Emulator::run_to_exit(
        &service,
        &[testapp_image(), "--credentials", "adc"],
        &[("HOME", home.to_str().unwrap())],
        std::time::Duration::from_secs(30),
    )
    .await;
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains("error: --credentials: adc: no Application Default Credentials"),
        "{}",
        finished.stderr
    );
    assert!(
        finished
            .stderr
            .contains("gcloud auth application-default login")
            && finished.stderr.contains("GOOGLE_APPLICATION_CREDENTIALS"),
        "{}",
        finished.stderr
    );
    assert!(
        !finished.stderr.contains("Deploying"),
        "{}",
        finished.stderr
    );
    assert!(containers_of(&service).is_empty());
    // An invalid file named by GOOGLE_APPLICATION_CREDENTIALS: the same, naming the file.
    let bad = home.join("bad.json");
    std::fs::write(&bad, "{\"type\": \"service_account\"}").unwrap();
    let finished = Emulator::run_to_exit(
        &service,
        &[testapp_image(), "--credentials", "adc"],
        &[("GOOGLE_APPLICATION_CREDENTIALS", bad.to_str().unwrap())],
        std::time::Duration::from_secs(30),
    )
    .await;
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains(&format!(
            "{} is not a usable credential file",
            bad.display()
        )),
        "{}",
        finished.stderr
    );
    assert!(containers_of(&service).is_empty());
    std::fs::remove_dir_all(home).unwrap();
}
