//! The host's Application Default Credentials, for `--credentials adc`: where they are
//! (Google's search order), what they hold, and real access tokens from them.
//!
//! Finding and checking the file is ours (plain data, done before anything starts, so a
//! missing or broken credential fails the command); the OAuth exchanges are yup-oauth2's (a
//! service account key's JWT-bearer grant posted to the key's own `token_uri`, an authorized
//! user's refresh token, an impersonated service account's `generateAccessToken`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use yup_oauth2::authenticator::DefaultAuthenticator;

use super::{TokenCache, SCOPES, TOKEN_LIFETIME};

/// The env var naming a credential file, which wins over gcloud's.
pub const CREDENTIALS_ENV: &str = "GOOGLE_APPLICATION_CREDENTIALS";
/// gcloud's file, in its configuration directory
/// (`gcloud auth application-default login` writes it).
const GCLOUD_FILE: &str = "application_default_credentials.json";
/// How long one token request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// What to do when no credential is found or it is unusable.
pub const FIX: &str = "Run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file";

/// gcloud's configuration directory: `$CLOUDSDK_CONFIG`, else `~/.config/gcloud`, as
/// google-auth finds it (`get_config_path` in
/// https://github.com/googleapis/google-auth-library-python/blob/main/google/auth/_cloud_sdk.py).
pub fn gcloud_config_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("CLOUDSDK_CONFIG").or_else(|| set("HOME").map(|home| home.join(".config/gcloud")))
}

/// A credential file, found, read and checked: plain data (its secrets are not printed by
/// `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct AdcFile {
    pub path: PathBuf,
    pub credential: Credential,
}

/// What a credential file holds, in the JSON yup-oauth2 reads.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// `"type": "service_account"`: a key file.
    ServiceAccount { email: String, key: Value },
    /// `"type": "authorized_user"`: gcloud's user login.
    AuthorizedUser { secret: Value },
    /// `"type": "impersonated_service_account"` with an authorized user as its source
    /// (`gcloud auth application-default login --impersonate-service-account EMAIL`).
    Impersonated { email: String, source: Value },
}

impl std::fmt::Debug for AdcFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdcFile")
            .field("path", &self.path)
            .field("kind", &self.kind())
            .field("email", &self.email())
            .finish()
    }
}

/// Why there are no usable credentials.
#[derive(Debug, thiserror::Error)]
pub enum AdcError {
    #[error("no Application Default Credentials: {CREDENTIALS_ENV} is not set and {} does not exist", .gcloud_file.as_deref().map_or_else(|| "gcloud's file (no HOME or CLOUDSDK_CONFIG to find it)".to_string(), |p| p.display().to_string()))]
    NotFound { gcloud_file: Option<PathBuf> },
    #[error("cannot read {}{}: {source}", .path.display(), from_env(*.named_by_env))]
    Unreadable {
        path: PathBuf,
        named_by_env: bool,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a usable credential file: {why}", .path.display())]
    Invalid { path: PathBuf, why: String },
    #[error("{}: credentials of type '{kind}' are not supported (service_account, authorized_user and impersonated_service_account are)", .path.display())]
    Unsupported { path: PathBuf, kind: String },
}

fn from_env(named_by_env: bool) -> String {
    if named_by_env {
        format!(" (named by {CREDENTIALS_ENV})")
    } else {
        String::new()
    }
}

impl AdcFile {
    /// The credential Google's libraries would use: the file `GOOGLE_APPLICATION_CREDENTIALS`
    /// names (which must exist: it does not fall back), else gcloud's
    /// `application_default_credentials.json` in `$CLOUDSDK_CONFIG` or `~/.config/gcloud`.
    pub fn find(
        env: impl Fn(&str) -> Option<String>,
        read: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<AdcFile, AdcError> {
        if let Some(path) = env(CREDENTIALS_ENV).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            let text = read(&path).map_err(|source| AdcError::Unreadable {
                path: path.clone(),
                named_by_env: true,
                source,
            })?;
            return AdcFile::parse(path, &text);
        }
        let gcloud_file = gcloud_config_dir(&env).map(|dir| dir.join(GCLOUD_FILE));
        let Some(path) = gcloud_file.clone() else {
            return Err(AdcError::NotFound { gcloud_file });
        };
        match read(&path) {
            Ok(text) => AdcFile::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(AdcError::NotFound { gcloud_file })
            }
            Err(source) => Err(AdcError::Unreadable {
                path,
                named_by_env: false,
                source,
            }),
        }
    }

    /// A credential file's text, checked the way yup-oauth2 will read it (and a service
    /// account's private key parsed), so that a broken file fails at start.
    pub fn parse(path: PathBuf, text: &str) -> Result<AdcFile, AdcError> {
        let invalid = |why: String| AdcError::Invalid {
            path: path.clone(),
            why,
        };
        let json: Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not JSON ({e})")))?;
        let kind = json
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no \"type\" field".into()))?
            .to_string();
        let credential = match kind.as_str() {
            "service_account" => {
                let key: yup_oauth2::ServiceAccountKey = serde_json::from_value(json.clone())
                    .map_err(|e| invalid(format!("not a service account key ({e})")))?;
                check_private_key(&key.private_key).map_err(invalid)?;
                if key.client_email.is_empty() || key.token_uri.is_empty() {
                    return Err(invalid(
                        "client_email and token_uri must not be empty".into(),
                    ));
                }
                Credential::ServiceAccount {
                    email: key.client_email,
                    key: json,
                }
            }
            "authorized_user" => {
                authorized_user(&json).map_err(invalid)?;
                Credential::AuthorizedUser { secret: json }
            }
            "impersonated_service_account" => {
                let url = json
                    .get("service_account_impersonation_url")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let email = impersonated_email(url).ok_or_else(|| {
                    invalid(format!(
                        "service_account_impersonation_url '{url}' does not name a service account (…/serviceAccounts/EMAIL:generateAccessToken)"
                    ))
                })?;
                let source = json.get("source_credentials").cloned().unwrap_or_default();
                let source_kind = source.get("type").and_then(Value::as_str).unwrap_or("");
                if source_kind != "authorized_user" {
                    return Err(AdcError::Unsupported {
                        path,
                        kind: format!("impersonated_service_account from '{source_kind}'"),
                    });
                }
                authorized_user(&source).map_err(invalid)?;
                Credential::Impersonated { email, source }
            }
            _ => return Err(AdcError::Unsupported { path, kind }),
        };
        Ok(AdcFile { path, credential })
    }

    /// The identity the tokens are for, when the file says: a service account's email.
    pub fn email(&self) -> Option<&str> {
        match &self.credential {
            Credential::ServiceAccount { email, .. } | Credential::Impersonated { email, .. } => {
                Some(email)
            }
            Credential::AuthorizedUser { .. } => None,
        }
    }

    /// The file's `type`.
    pub fn kind(&self) -> &'static str {
        match &self.credential {
            Credential::ServiceAccount { .. } => "service_account",
            Credential::AuthorizedUser { .. } => "authorized_user",
            Credential::Impersonated { .. } => "impersonated_service_account",
        }
    }

    /// The authenticator for this credential (no request is made yet).
    async fn authenticator(&self) -> Result<DefaultAuthenticator, String> {
        let built = match &self.credential {
            Credential::ServiceAccount { key, .. } => {
                let key = serde_json::from_value(key.clone()).map_err(|e| e.to_string())?;
                yup_oauth2::ServiceAccountAuthenticator::builder(key)
                    .with_timeout(FETCH_TIMEOUT)
                    .build()
                    .await
            }
            Credential::AuthorizedUser { secret } => {
                let secret = authorized_user(secret)?;
                yup_oauth2::AuthorizedUserAuthenticator::builder(secret)
                    .with_timeout(FETCH_TIMEOUT)
                    .build()
                    .await
            }
            Credential::Impersonated { email, source } => {
                let secret = authorized_user(source)?;
                yup_oauth2::ServiceAccountImpersonationAuthenticator::builder(secret, email)
                    .with_timeout(FETCH_TIMEOUT)
                    .build()
                    .await
            }
        };
        built.map_err(|e| e.to_string())
    }
}

fn authorized_user(
    json: &Value,
) -> Result<yup_oauth2::authorized_user::AuthorizedUserSecret, String> {
    serde_json::from_value(json.clone())
        .map_err(|e| format!("not an authorized user's credentials ({e})"))
}

/// A service account key's `private_key`: an RSA key in PEM (PKCS#8, as Google writes it, or
/// PKCS#1).
fn check_private_key(pem: &str) -> Result<(), String> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    rsa::RsaPrivateKey::from_pkcs8_pem(pem)
        .map(drop)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem).map(drop))
        .map_err(|e| format!("its private_key is not an RSA private key in PEM ({e})"))
}

/// `https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/EMAIL:generateAccessToken`
/// → `EMAIL`.
fn impersonated_email(url: &str) -> Option<String> {
    let (_, rest) = url.rsplit_once("/serviceAccounts/")?;
    let email = rest.strip_suffix(":generateAccessToken")?;
    email.contains('@').then(|| email.to_string())
}

/// Real access tokens from one credential file, shared by every metadata server of an
/// emulator: the authenticator is built on first use, and the tokens are cached as the real
/// server caches them (the same token until close to its expiry).
pub struct AdcTokens {
    file: AdcFile,
    authenticator: tokio::sync::OnceCell<DefaultAuthenticator>,
    cache: TokenCache,
}

impl std::fmt::Debug for AdcTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdcTokens")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl AdcTokens {
    pub fn new(file: AdcFile) -> Arc<Self> {
        Arc::new(AdcTokens {
            file,
            authenticator: tokio::sync::OnceCell::new(),
            cache: TokenCache::default(),
        })
    }

    pub fn file(&self) -> &AdcFile {
        &self.file
    }

    /// A token and its remaining lifetime: the cached one, else a new one from Google (or
    /// wherever the credential's token endpoint is). The error says why, in words.
    pub async fn token(&self) -> Result<(String, Duration), String> {
        self.cache.get(|| self.fetch()).await
    }

    async fn fetch(&self) -> Result<(String, Duration), String> {
        let authenticator = self
            .authenticator
            .get_or_try_init(|| self.file.authenticator())
            .await?;
        // Our cache decides when a token is due, so the authenticator's own is bypassed.
        let fetched =
            tokio::time::timeout(FETCH_TIMEOUT, authenticator.force_refreshed_token(SCOPES))
                .await
                .map_err(|_| format!("no answer within {} s", FETCH_TIMEOUT.as_secs()))?
                .map_err(|e| e.to_string())?;
        let token = fetched
            .token()
            .filter(|t| !t.is_empty())
            .ok_or("the answer held no access token")?
            .to_string();
        let lifetime = match fetched.expiration_time() {
            Some(at) => {
                let left = at.unix_timestamp() - super::unix_now() as i64;
                Duration::from_secs(left.max(0) as u64)
            }
            None => TOKEN_LIFETIME,
        };
        Ok((token, lifetime))
    }
}

#[cfg(test)]
mod tests;
