use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;

use super::*;
use crate::metadata::{Credentials, Metadata, MetadataConfig};

/// An environment of `vars`.
fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned()
}

/// A file system of `files` (path → text); other paths are not found.
fn files(files: &[(&str, String)]) -> impl Fn(&Path) -> io::Result<String> {
    let files: HashMap<PathBuf, String> = files
        .iter()
        .map(|(k, v)| (PathBuf::from(k), v.clone()))
        .collect();
    move |path| {
        files
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

/// One RSA key for every test here (2048 bits, as Google's keys and ring require).
fn private_key() -> &'static rsa::RsaPrivateKey {
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("a key is generated")
    })
}

/// A service account key file's JSON, its token endpoint at `token_uri`.
fn service_account_key(token_uri: &str) -> String {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let pem = private_key().to_pkcs8_pem(LineEnding::LF).unwrap();
    json!({
        "type": "service_account",
        "project_id": "key-project",
        "private_key_id": "abc123",
        "private_key": pem.as_str(),
        "client_email": "runner@key-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
}

fn authorized_user() -> String {
    json!({
        "type": "authorized_user",
        "client_id": "764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com",
        "client_secret": "d-FL95Q19q7MQmFpd7hHD0Ty",
        "refresh_token": "1//secret-refresh-token",
        "quota_project_id": "quota-project",
    })
    .to_string()
}

fn impersonated(source: &str) -> String {
    json!({
        "type": "impersonated_service_account",
        "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/deployer@p-123.iam.gserviceaccount.com:generateAccessToken",
        "delegates": [],
        "source_credentials": serde_json::from_str::<Value>(source).unwrap(),
    })
    .to_string()
}

#[test]
fn google_application_credentials_wins_and_does_not_fall_back() {
    let fs = files(&[
        (
            "/keys/sa.json",
            service_account_key("https://oauth2.googleapis.com/token"),
        ),
        (
            "/home/u/.config/gcloud/application_default_credentials.json",
            authorized_user(),
        ),
    ]);
    let named = env(&[
        ("GOOGLE_APPLICATION_CREDENTIALS", "/keys/sa.json"),
        ("HOME", "/home/u"),
    ]);
    let file = AdcFile::find(named, &fs).unwrap();
    assert_eq!(file.path, PathBuf::from("/keys/sa.json"));
    assert_eq!(file.kind(), "service_account");
    assert_eq!(
        file.email(),
        Some("runner@key-project.iam.gserviceaccount.com")
    );
    // A named file that is missing is an error, as in Google's libraries: no fallback.
    let missing = env(&[
        ("GOOGLE_APPLICATION_CREDENTIALS", "/keys/gone.json"),
        ("HOME", "/home/u"),
    ]);
    let error = AdcFile::find(missing, &fs).unwrap_err();
    assert!(
        matches!(
            &error,
            AdcError::Unreadable {
                named_by_env: true,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "cannot read /keys/gone.json (named by GOOGLE_APPLICATION_CREDENTIALS): entity not found"
    );
}

#[test]
fn gcloud_s_file_is_in_cloudsdk_config_else_home() {
    let fs = files(&[
        (
            "/cfg/application_default_credentials.json",
            impersonated(&authorized_user()),
        ),
        (
            "/home/u/.config/gcloud/application_default_credentials.json",
            authorized_user(),
        ),
    ]);
    let home = AdcFile::find(env(&[("HOME", "/home/u")]), &fs).unwrap();
    assert_eq!(home.kind(), "authorized_user");
    assert_eq!(home.email(), None);
    let cfg = AdcFile::find(
        env(&[("HOME", "/home/u"), ("CLOUDSDK_CONFIG", "/cfg")]),
        &fs,
    )
    .unwrap();
    assert_eq!(cfg.kind(), "impersonated_service_account");
    assert_eq!(cfg.email(), Some("deployer@p-123.iam.gserviceaccount.com"));
}

#[test]
fn without_credentials_the_error_names_where_it_looked() {
    let none = files(&[]);
    let error = AdcFile::find(env(&[("HOME", "/home/u")]), &none).unwrap_err();
    assert_eq!(
        error.to_string(),
        "no Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS is not set and /home/u/.config/gcloud/application_default_credentials.json does not exist"
    );
    let error = AdcFile::find(env(&[]), &none).unwrap_err();
    assert!(
        matches!(error, AdcError::NotFound { gcloud_file: None }),
        "{error:?}"
    );
    // An empty variable is not set.
    let error = AdcFile::find(
        env(&[("GOOGLE_APPLICATION_CREDENTIALS", ""), ("HOME", "/h")]),
        &none,
    )
    .unwrap_err();
    assert!(matches!(error, AdcError::NotFound { .. }), "{error:?}");
}

#[test]
fn broken_files_are_refused_with_the_reason() {
    let good = service_account_key("https://oauth2.googleapis.com/token");
    let mut no_email: Value = serde_json::from_str(&good).unwrap();
    no_email.as_object_mut().unwrap().remove("client_email");
    let mut bad_key: Value = serde_json::from_str(&good).unwrap();
    bad_key["private_key"] =
        json!("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n");
    let mut no_refresh: Value = serde_json::from_str(&authorized_user()).unwrap();
    no_refresh.as_object_mut().unwrap().remove("refresh_token");
    let bad_url = impersonated(&authorized_user()).replace(":generateAccessToken", "");
    let cases = [
        ("{", "not JSON"),
        ("{\"client_email\": \"a@b.c\"}", "no \"type\" field"),
        (
            &no_email.to_string(),
            "not a service account key (missing field `client_email`",
        ),
        (
            &bad_key.to_string(),
            "its private_key is not an RSA private key in PEM",
        ),
        (
            &no_refresh.to_string(),
            "not an authorized user's credentials (missing field `refresh_token`",
        ),
        (&bad_url, "does not name a service account"),
    ];
    for (text, why) in cases {
        let error = AdcFile::parse("/k.json".into(), text).unwrap_err();
        assert!(
            matches!(error, AdcError::Invalid { .. }),
            "{text}: {error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("/k.json is not a usable credential file: "),
            "{message}"
        );
        assert!(message.contains(why), "{message}");
    }
    for (text, kind) in [
        (
            json!({"type": "external_account", "audience": "x"}).to_string(),
            "'external_account'",
        ),
        (
            impersonated(&good),
            "'impersonated_service_account from 'service_account''",
        ),
    ] {
        let message = AdcFile::parse("/k.json".into(), &text)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&format!("credentials of type {kind} are not supported")),
            "{message}"
        );
    }
}

#[test]
fn debug_never_shows_the_secrets() {
    let sa = AdcFile::parse("/k.json".into(), &service_account_key("https://t")).unwrap();
    let user = AdcFile::parse("/u.json".into(), &authorized_user()).unwrap();
    let shown = format!("{sa:?} {user:?} {:?}", Credentials::Adc(sa.clone()));
    assert!(
        shown.contains("runner@key-project.iam.gserviceaccount.com"),
        "{shown}"
    );
    for secret in [
        "PRIVATE KEY",
        "secret-refresh-token",
        "d-FL95Q19q7MQmFpd7hHD0Ty",
    ] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

#[test]
fn the_metadata_server_names_the_key_s_account_and_refuses_another() {
    let file = AdcFile::parse("/k.json".into(), &service_account_key("https://t")).unwrap();
    let config = |account: Option<&str>, credentials: Credentials| {
        MetadataConfig::from_flags(
            Some("my-project".into()),
            "us-east1".into(),
            account.map(String::from),
            credentials,
            |_| None,
            |_| None,
        )
    };
    let own = config(None, Credentials::Adc(file.clone())).unwrap();
    assert_eq!(own.email(), "runner@key-project.iam.gserviceaccount.com");
    let same = config(
        Some("runner@key-project.iam.gserviceaccount.com"),
        Credentials::Adc(file.clone()),
    );
    assert!(same.is_ok());
    let other = config(
        Some("api@my-project.iam.gserviceaccount.com"),
        Credentials::Adc(file),
    )
    .unwrap_err()
    .to_string();
    assert!(other.starts_with("--service-account"), "{other}");
    assert!(
        other.contains("its tokens are runner@key-project.iam.gserviceaccount.com's"),
        "{other}"
    );
    // A user's credentials name no account: the flag (or Cloud Run's default) stands.
    let user = AdcFile::parse("/u.json".into(), &authorized_user()).unwrap();
    let named = config(
        Some("api@my-project.iam.gserviceaccount.com"),
        Credentials::Adc(user.clone()),
    );
    assert_eq!(
        named.unwrap().email(),
        "api@my-project.iam.gserviceaccount.com"
    );
    assert!(config(None, Credentials::Adc(user))
        .unwrap()
        .email()
        .ends_with("-compute@developer.gserviceaccount.com"));
}

/// A token endpoint on loopback answering every request with `status` and `body`; it keeps
/// the request bodies it got.
async fn fake_token_endpoint(status: u16, body: Value) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
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
                        let mut response = http::Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
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

/// The form fields of a request body.
fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), crate::metadata::percent_decode(v)))
        .collect()
}

#[tokio::test]
async fn a_service_account_key_s_token_comes_from_its_token_uri_once_then_from_the_cache() {
    let (addr, seen) = fake_token_endpoint(
        200,
        json!({"access_token": "ya29.from-the-fake", "expires_in": 3599, "token_type": "Bearer"}),
    )
    .await;
    let token_uri = format!("http://{addr}/token");
    let file = AdcFile::parse("/k.json".into(), &service_account_key(&token_uri)).unwrap();
    let tokens = AdcTokens::new(file);
    let (token, left) = tokens.token().await.unwrap();
    assert_eq!(token, "ya29.from-the-fake");
    assert!((3590..=3599).contains(&left.as_secs()), "{left:?}");
    let (again, _) = tokens.token().await.unwrap();
    assert_eq!(again, token);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    // A JWT-bearer grant, signed with the key, for the cloud-platform scope, to token_uri.
    let fields = form(&seen[0]);
    assert_eq!(
        fields["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let assertion = &fields["assertion"];
    let (signed, signature) = assertion.rsplit_once('.').unwrap();
    let claims: Value = {
        use base64::Engine;
        let part = signed.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE
            .decode(part)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part))
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    assert_eq!(claims["iss"], "runner@key-project.iam.gserviceaccount.com");
    assert_eq!(claims["aud"], token_uri.as_str());
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    {
        use base64::Engine;
        use rsa::signature::Verifier;
        let signature = base64::engine::general_purpose::URL_SAFE
            .decode(signature)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature))
            .unwrap();
        let key = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(private_key().to_public_key());
        let signature = rsa::pkcs1v15::Signature::try_from(signature.as_slice()).unwrap();
        key.verify(signed.as_bytes(), &signature)
            .expect("signed with the key");
    }
}

#[tokio::test]
async fn a_short_lived_token_is_fetched_again() {
    // Inside the refresh margin from the start: every request fetches.
    let (addr, seen) = fake_token_endpoint(
        200,
        json!({"access_token": "ya29.short", "expires_in": 120}),
    )
    .await;
    let file = AdcFile::parse(
        "/k.json".into(),
        &service_account_key(&format!("http://{addr}/t")),
    )
    .unwrap();
    let tokens = AdcTokens::new(file);
    tokens.token().await.unwrap();
    tokens.token().await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_refused_grant_is_a_503_that_says_what_to_do() {
    let (addr, _) = fake_token_endpoint(
        400,
        json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
    )
    .await;
    let file = AdcFile::parse(
        "/k.json".into(),
        &service_account_key(&format!("http://{addr}/t")),
    )
    .unwrap();
    let events = crate::events::Events::new();
    let mut said = events.subscribe();
    let server = Metadata::with_tokens(
        MetadataConfig {
            project_id: "my-project".into(),
            region: "us-east1".into(),
            service_account: None,
            credentials: Credentials::Adc(file.clone()),
        },
        crate::metadata::identity::test_key(),
        Some(AdcTokens::new(file)),
        events,
    );
    let mut headers = http::HeaderMap::new();
    headers.insert("metadata-flavor", http::HeaderValue::from_static("Google"));
    let answer = server
        .answer(
            &http::Method::GET,
            "/computeMetadata/v1/instance/service-accounts/default/token",
            "",
            &headers,
        )
        .await;
    assert_eq!(answer.status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        answer
            .body
            .starts_with("--credentials adc: no access token from /k.json: "),
        "{}",
        answer.body
    );
    assert!(answer.body.contains("invalid_grant"), "{}", answer.body);
    assert!(
        answer
            .body
            .contains("gcloud auth application-default login"),
        "{}",
        answer.body
    );
    let event = said.try_recv().expect("a warning was published");
    assert!(format!("{event:?}").contains("invalid_grant"), "{event:?}");
    // The email is still the key's.
    let email = server
        .answer(
            &http::Method::GET,
            "/computeMetadata/v1/instance/service-accounts/default/email",
            "",
            &headers,
        )
        .await;
    assert_eq!(email.body, "runner@key-project.iam.gserviceaccount.com");
}
