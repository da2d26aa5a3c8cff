use super::*;

use futures_util::FutureExt;

/// Offline answers never wait: polled once, they are ready.
trait Now {
    fn now(self) -> Answer;
}

impl<F: Future<Output = Answer>> Now for F {
    fn now(self) -> Answer {
        self.now_or_never()
            .expect("an offline answer is ready at once")
    }
}

fn server() -> Metadata {
    Metadata::new(
        MetadataConfig {
            project_id: "my-project".into(),
            region: "europe-west1".into(),
            service_account: None,
            credentials: Credentials::Offline,
        },
        crate::metadata::identity::test_key(),
    )
}

fn flavored() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("metadata-flavor", "Google".parse().unwrap());
    headers
}

fn get(server: &Metadata, path_and_query: &str) -> Answer {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    server.answer(&Method::GET, path, query, &flavored()).now()
}

#[test]
fn the_project_region_and_account_are_served_as_text() {
    let server = server();
    let number = server.config().project_number();
    let project = get(&server, "/computeMetadata/v1/project/project-id");
    assert_eq!(project.status, StatusCode::OK);
    assert_eq!(project.content_type, "application/text");
    assert_eq!(project.body, "my-project");
    assert_eq!(
        get(&server, "/computeMetadata/v1/project/numeric-project-id").body,
        number.to_string()
    );
    assert_eq!(
        get(&server, "/computeMetadata/v1/instance/region").body,
        format!("projects/{number}/regions/europe-west1")
    );
    assert_eq!(
        get(&server, "/computeMetadata/v1/instance/zone").body,
        format!("projects/{number}/zones/europe-west1-1")
    );
    let email = format!("{number}-compute@developer.gserviceaccount.com");
    assert_eq!(
        get(
            &server,
            "/computeMetadata/v1/instance/service-accounts/default/email"
        )
        .body,
        email
    );
    assert_eq!(
        get(
            &server,
            &format!("/computeMetadata/v1/instance/service-accounts/{email}/email")
        )
        .body,
        email
    );
    assert_eq!(
        get(
            &server,
            "/computeMetadata/v1/instance/service-accounts/default/aliases"
        )
        .body,
        "default\n"
    );
    assert_eq!(
        get(&server, "/computeMetadata/v1/instance/id").body.len(),
        64
    );
}

#[test]
fn the_project_number_is_stable_and_twelve_digits() {
    let a = server().config().project_number();
    assert_eq!(a, server().config().project_number());
    assert_eq!(a.to_string().len(), 12);
}

#[test]
fn a_configured_service_account_replaces_the_default_one() {
    let server = Metadata::new(
        MetadataConfig {
            project_id: "p".into(),
            region: "us-central1".into(),
            service_account: Some("api@p.iam.gserviceaccount.com".into()),
            credentials: Credentials::Offline,
        },
        crate::metadata::identity::test_key(),
    );
    assert_eq!(
        get(
            &server,
            "/computeMetadata/v1/instance/service-accounts/default/email"
        )
        .body,
        "api@p.iam.gserviceaccount.com"
    );
    assert_eq!(
        get(&server, "/computeMetadata/v1/instance/service-accounts/").body,
        "default/\napi@p.iam.gserviceaccount.com/\n"
    );
}

/// An environment of `vars`.
fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).cloned()
}

/// A file system of `files` (path → text).
fn files(files: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
    let files: HashMap<PathBuf, String> = files
        .iter()
        .map(|(k, v)| (PathBuf::from(k), v.to_string()))
        .collect();
    move |path| files.get(path).cloned()
}

#[test]
fn the_project_comes_from_the_flag_then_the_environment_then_gcloud_then_a_local_id() {
    let gcloud = files(&[(
        "/home/u/.config/gcloud/configurations/config_default",
        "[core]\naccount = u@example.com\nproject = from-gcloud\n",
    )]);
    let home = [("HOME", "/home/u")];
    let all = env(&[
        ("HOME", "/home/u"),
        ("GOOGLE_CLOUD_PROJECT", "a"),
        ("CLOUDSDK_CORE_PROJECT", "b"),
    ]);
    let project = |flag: Option<&str>, env: &dyn Fn(&str) -> Option<String>| {
        MetadataConfig::project_from(flag.map(String::from), env, &gcloud)
    };
    assert_eq!(project(Some("f"), &all), ("f".into(), ProjectSource::Flag));
    assert_eq!(
        project(None, &all),
        ("a".into(), ProjectSource::Env("GOOGLE_CLOUD_PROJECT"))
    );
    let sdk = env(&[("HOME", "/home/u"), ("CLOUDSDK_CORE_PROJECT", "b")]);
    assert_eq!(
        project(None, &sdk),
        ("b".into(), ProjectSource::Env("CLOUDSDK_CORE_PROJECT"))
    );
    // Empty values are skipped.
    let empty = env(&[("HOME", "/home/u"), ("GOOGLE_CLOUD_PROJECT", "")]);
    assert_eq!(project(Some(""), &empty).0, "from-gcloud");
    assert_eq!(
        project(None, &env(&home)),
        (
            "from-gcloud".into(),
            ProjectSource::Gcloud("/home/u/.config/gcloud/configurations/config_default".into())
        )
    );
    assert_eq!(
        project(None, &env(&[("HOME", "/elsewhere")])),
        (LOCAL_PROJECT.into(), ProjectSource::Local)
    );
    assert_eq!(project(None, &env(&[])).0, LOCAL_PROJECT);
}

#[test]
fn gcloud_s_active_configuration_is_cloudsdk_config_s_and_can_be_chosen() {
    let fs = files(&[
        ("/cfg/active_config", "work\n"),
        ("/cfg/configurations/config_default", "[core]\nproject = default-one\n"),
        (
            "/cfg/configurations/config_work",
            "# gcloud writes comments too\n[compute]\nproject = not-this\n\n[core]\nPROJECT: work-one\n",
        ),
        ("/cfg/configurations/config_ci", "[core]\nproject = ci-one\n"),
        ("/home/u/.config/gcloud/configurations/config_default", "[core]\nproject = home-one\n"),
    ]);
    let project = |vars: &[(&str, &str)]| MetadataConfig::project_from(None, env(vars), &fs).0;
    // CLOUDSDK_CONFIG wins over ~/.config/gcloud; active_config names the configuration.
    assert_eq!(
        project(&[("HOME", "/home/u"), ("CLOUDSDK_CONFIG", "/cfg")]),
        "work-one"
    );
    // CLOUDSDK_ACTIVE_CONFIG_NAME overrides active_config.
    assert_eq!(
        project(&[
            ("CLOUDSDK_CONFIG", "/cfg"),
            ("CLOUDSDK_ACTIVE_CONFIG_NAME", "ci")
        ]),
        "ci-one"
    );
    // No active_config: "default".
    assert_eq!(project(&[("HOME", "/home/u")]), "home-one");
    // A configuration that does not exist, or a name that is not one: no project from gcloud.
    for name in ["nope", "../../etc", "Work"] {
        assert_eq!(
            project(&[
                ("CLOUDSDK_CONFIG", "/cfg"),
                ("CLOUDSDK_ACTIVE_CONFIG_NAME", name)
            ]),
            LOCAL_PROJECT,
            "{name}"
        );
    }
}

#[test]
fn a_malformed_gcloud_configuration_is_ignored() {
    for text in [
        "project = before-any-section\n",
        "[core]\nthis line is not ini\nproject = p-one\n",
        "\u{0}\u{1}binary",
    ] {
        let fs = files(&[("/cfg/configurations/config_default", text)]);
        assert_eq!(
            MetadataConfig::project_from(None, env(&[("CLOUDSDK_CONFIG", "/cfg")]), fs).0,
            LOCAL_PROJECT,
            "{text:?}"
        );
    }
    // No project in [core], or an empty one: none.
    for text in ["[core]\naccount = a@b.c\n", "[core]\nproject =\n", ""] {
        assert_eq!(ini_value(text, "core", "project"), Ok(None), "{text:?}");
    }
}

#[test]
fn the_gcloud_configuration_is_read_from_disk() {
    let dir = std::env::temp_dir().join(format!(
        "emulate-gcloud-{}",
        hex(&rand::random::<[u8; 6]>())
    ));
    std::fs::create_dir_all(dir.join("configurations")).unwrap();
    std::fs::write(dir.join("active_config"), "dev").unwrap();
    std::fs::write(
        dir.join("configurations/config_dev"),
        "[core]\nproject = disk-project\n",
    )
    .unwrap();
    let config = MetadataConfig::from_flags(
        None,
        "us-east1".into(),
        None,
        Credentials::Offline,
        env(&[("CLOUDSDK_CONFIG", dir.to_str().unwrap())]),
        |path| std::fs::read_to_string(path).ok(),
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(config.project_id, "disk-project");
}

#[test]
fn a_bad_project_from_elsewhere_says_where_it_came_from() {
    let error = MetadataConfig::from_flags(
        None,
        "us-east1".into(),
        None,
        Credentials::Offline,
        env(&[("CLOUDSDK_CONFIG", "/cfg")]),
        files(&[(
            "/cfg/configurations/config_default",
            "[core]\nproject = example.com:legacy\n",
        )]),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("--project"), "{error}");
    assert!(
        error.contains("from gcloud's configuration /cfg/configurations/config_default"),
        "{error}"
    );
}

#[test]
fn without_the_flavor_header_v1_is_forbidden_with_the_real_text() {
    let server = server();
    let answer = server
        .answer(
            &Method::GET,
            "/computeMetadata/v1/project/project-id",
            "",
            &HeaderMap::new(),
        )
        .now();
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(
        answer
            .body
            .contains("Missing Metadata-Flavor:Google header."),
        "{}",
        answer.body
    );
    let mut wrong = HeaderMap::new();
    wrong.insert("metadata-flavor", "google".parse().unwrap());
    let answer = server
        .answer(&Method::GET, "/computeMetadata/v1/", "", &wrong)
        .now();
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    // The root listings do not need it (google-auth's ping sends it anyway).
    let root = server
        .answer(&Method::GET, "/", "", &HeaderMap::new())
        .now();
    assert_eq!(
        (root.status, root.body.as_str()),
        (StatusCode::OK, "computeMetadata/\n")
    );
    assert_eq!(
        server
            .answer(&Method::GET, "/computeMetadata/", "", &HeaderMap::new())
            .now()
            .body,
        "v1/\n"
    );
}

#[test]
fn a_request_through_a_proxy_is_refused() {
    let server = server();
    let mut headers = flavored();
    headers.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
    let answer = server
        .answer(
            &Method::GET,
            "/computeMetadata/v1/project/project-id",
            "",
            &headers,
        )
        .now();
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(!answer.body.contains("my-project"));
}

#[test]
fn unknown_paths_are_not_found() {
    let server = server();
    for path in [
        "/computeMetadata/v1/nope",
        "/computeMetadata/v1/project/project-id/",
        "/computeMetadata/v1/project/project-id/x",
        "/computeMetadata/v1/instance/service-accounts/other@x.com/email",
        "/computeMetadata/v2/project/project-id",
        "/computeMetadata/v1x",
        "/other",
    ] {
        let answer = get(&server, path);
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            answer.body.contains("was not found on this server"),
            "{path}"
        );
    }
}

#[test]
fn directories_list_their_entries_and_recursive_answers_json() {
    let server = server();
    assert_eq!(
        get(&server, "/computeMetadata/v1/").body,
        "instance/\nproject/\n"
    );
    assert_eq!(
        get(&server, "/computeMetadata/v1").body,
        "instance/\nproject/\n"
    );
    assert_eq!(
        get(&server, "/computeMetadata/v1/project/").body,
        "numeric-project-id\nproject-id\n"
    );
    let project = get(&server, "/computeMetadata/v1/project/?recursive=true");
    assert_eq!(project.content_type, "application/json");
    let value: Value = serde_json::from_str(&project.body).unwrap();
    assert_eq!(value["projectId"], "my-project");
    assert_eq!(value["numericProjectId"], server.config().project_number());
    // google-auth's get_service_account_info: email, aliases and scopes, never the token.
    let account = get(
        &server,
        "/computeMetadata/v1/instance/service-accounts/default/?recursive=true",
    );
    let value: Value = serde_json::from_str(&account.body).unwrap();
    assert_eq!(value["email"], server.config().email());
    assert_eq!(value["aliases"], json!(["default"]));
    assert_eq!(value["scopes"], json!(SCOPES));
    assert!(value.get("token").is_none(), "{value}");
}

#[test]
fn alt_picks_json_or_text() {
    let server = server();
    let id = get(&server, "/computeMetadata/v1/project/project-id?alt=json");
    assert_eq!(
        (id.content_type, id.body.as_str()),
        ("application/json", "\"my-project\"")
    );
    let number = get(
        &server,
        "/computeMetadata/v1/project/numeric-project-id?alt=json",
    );
    assert_eq!(number.body, server.config().project_number().to_string());
    let flat = get(
        &server,
        "/computeMetadata/v1/project/?recursive=true&alt=text",
    );
    assert_eq!(flat.content_type, "application/text");
    assert!(
        flat.body.contains("projectId my-project\n"),
        "{}",
        flat.body
    );
    assert_eq!(
        get(&server, "/computeMetadata/v1/project/project-id?alt=yaml").status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(start_paused = true)]
async fn the_token_is_cached_until_close_to_expiry_and_counts_down() {
    let server = server();
    let path = "/computeMetadata/v1/instance/service-accounts/default/token";
    let token = |answer: Answer| -> (String, u64, String) {
        assert_eq!(answer.content_type, "application/json");
        let value: Value = serde_json::from_str(&answer.body).unwrap();
        (
            value["access_token"].as_str().unwrap().to_string(),
            value["expires_in"].as_u64().unwrap(),
            value["token_type"].as_str().unwrap().to_string(),
        )
    };
    let (first, expires, kind) = token(get(&server, path));
    assert_eq!((expires, kind.as_str()), (3600, "Bearer"));
    assert!(first.starts_with("ya29."));
    tokio::time::advance(Duration::from_secs(100)).await;
    let (again, expires, _) = token(get(&server, path));
    assert_eq!((again.as_str(), expires), (first.as_str(), 3500));
    // The same account under its email gets the same token.
    let email = server.config().email();
    let by_email = format!("/computeMetadata/v1/instance/service-accounts/{email}/token");
    assert_eq!(token(get(&server, &by_email)).0, first);
    // Close to expiry: a new token, a full hour again.
    tokio::time::advance(Duration::from_secs(3500 - 300)).await;
    let (renewed, expires, _) = token(get(&server, path));
    assert_ne!(renewed, first);
    assert_eq!(expires, 3600);
}

#[test]
fn only_reads_are_served() {
    let server = server();
    let answer = server
        .answer(
            &Method::POST,
            "/computeMetadata/v1/project/project-id",
            "",
            &flavored(),
        )
        .now();
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn every_answer_carries_the_flavor_header() {
    let answer = server()
        .answer(&Method::GET, "/nope", "", &HeaderMap::new())
        .now();
    let response = response(answer);
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["metadata-flavor"], "Google");
}

#[test]
fn bad_settings_name_their_flag() {
    let none = |_: &str| None;
    let no_file = |_: &Path| None;
    let ok = MetadataConfig::from_flags(
        Some("my-project".into()),
        "us-east1".into(),
        None,
        Credentials::Offline,
        none,
        no_file,
    );
    assert_eq!(ok.unwrap().project_id, "my-project");
    let error = |project: &str, region: &str, account: Option<&str>| {
        MetadataConfig::from_flags(
            Some(project.into()),
            region.into(),
            account.map(String::from),
            Credentials::Offline,
            none,
            no_file,
        )
        .unwrap_err()
        .to_string()
    };
    assert!(error("My_Project", "us-east1", None).contains("--project"));
    assert!(error("abc", "us-east1", None).contains("--project"));
    assert!(error("my-project", "US East", None).contains("--region"));
    assert!(error("my-project", "us-east1", Some("nobody")).contains("--service-account"));
    assert!(error("my-project", "us-east1", Some("a/b@x.com")).contains("--service-account"));
}

#[test]
fn identity_answers_an_id_token_for_the_audience() {
    let server = server();
    let answer = get(
        &server,
        "/computeMetadata/v1/instance/service-accounts/default/identity?audience=http%3A%2F%2Fb.localhost%3A8080",
    );
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type, "application/text");
    let claims = identity::test_key()
        .verify(&answer.body, unix_now())
        .unwrap();
    assert_eq!(claims["aud"], "http://b.localhost:8080");
    assert_eq!(claims["email"], server.config().email());
    assert_eq!(claims["email_verified"], true);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    assert!(claims.get("google").is_none());
    let email = server.config().email();
    let full = get(
        &server,
        &format!("/computeMetadata/v1/instance/service-accounts/{email}/identity?audience=a&format=full&licenses=TRUE"),
    );
    let claims = identity::test_key().verify(&full.body, unix_now()).unwrap();
    assert_eq!(
        claims["google"]["compute_engine"]["project_id"],
        "my-project"
    );
    assert_eq!(claims["google"]["compute_engine"]["license_id"], json!([]));
}

#[test]
fn identity_without_an_audience_is_400() {
    let server = server();
    for query in ["", "?audience=", "?format=full"] {
        let answer = get(
            &server,
            &format!("/computeMetadata/v1/instance/service-accounts/default/identity{query}"),
        );
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(answer.body, "non-empty audience parameter required\n");
    }
    // Never in a recursive answer.
    let all = get(
        &server,
        "/computeMetadata/v1/instance/service-accounts/default/?recursive=true",
    );
    assert!(!all.body.contains("identity"), "{}", all.body);
}

#[test]
fn the_certs_are_served_without_the_flavor_header() {
    let server = server();
    let jwks = server
        .answer(&Method::GET, "/oauth2/v3/certs", "", &HeaderMap::new())
        .now();
    assert_eq!(jwks.status, StatusCode::OK);
    let jwks: Value = serde_json::from_str(&jwks.body).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], identity::test_key().kid());
    let pem = server
        .answer(&Method::GET, "/oauth2/v1/certs", "", &HeaderMap::new())
        .now();
    let pem: Value = serde_json::from_str(&pem.body).unwrap();
    assert!(pem[identity::test_key().kid()].is_string());
}

/// Real answers' sizes (Content-Length seen on Compute Engine): the pages are byte for byte
/// Google's.
#[test]
fn error_pages_are_google_s_to_the_byte() {
    let server = server();
    let missing = get(&server, "/computeMetadata/v1/universe/universe_domain");
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body.len(), 1604, "{}", missing.body);
    assert!(missing.body.ends_with("<p>The requested URL <code>/computeMetadata/v1/universe/universe_domain</code> was not found on this server.  <ins>That’s all we know.</ins>\n"));
    let unflavored = server
        .answer(
            &Method::GET,
            "/computeMetadata/v1/instance/name",
            "",
            &HeaderMap::new(),
        )
        .now();
    assert_eq!(unflavored.status, StatusCode::FORBIDDEN);
    assert_eq!(unflavored.body.len(), 1649, "{}", unflavored.body);
    assert!(unflavored
        .body
        .starts_with("<!DOCTYPE html>\n<html lang=en>\n"));
    assert!(unflavored
        .body
        .contains("<title>Error 403 (Forbidden)!!1</title>"));
    let page = response(unflavored);
    assert_eq!(page.headers()["content-type"], "text/html; charset=UTF-8");
    assert_eq!(page.headers()["x-frame-options"], "SAMEORIGIN");
    assert_eq!(page.headers()["x-xss-protection"], "0");
    // Answers that are not error pages do not carry the page headers.
    let ok = response(get(&server, "/computeMetadata/v1/project/project-id"));
    assert_eq!(ok.headers()["content-type"], "application/text");
    assert_eq!(ok.headers()["server"], "Metadata Server for Serverless");
    assert!(ok.headers().get("x-frame-options").is_none());
}
