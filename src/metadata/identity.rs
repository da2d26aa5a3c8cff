//! ID tokens (offline): RS256 JWTs in Google's shape, signed with an RSA key `emulate`
//! generates once and keeps in its state directory; the public half served as Google serves
//! its certs (JWKS at `/oauth2/v3/certs`, PEM by key id at `/oauth2/v1/certs`).
//!
//! The crypto is RustCrypto's (`rsa` with `sha2`): PKCS#1 v1.5 signatures over SHA-256, the
//! key kept as PKCS#8 PEM.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The issuer of Google's ID tokens, which verifiers check.
pub const ISSUER: &str = "https://accounts.google.com";
/// The audience of `gcloud auth print-identity-token` without `--audiences` (gcloud's
/// OAuth client id), which Cloud Run accepts for every private service.
pub const GCLOUD_AUDIENCE: &str = "32555940559.apps.googleusercontent.com";
/// How long an ID token lives, as Google's.
pub const ID_TOKEN_LIFETIME_SECS: u64 = 3600;
/// The env var naming the state directory (tests point it at a temporary one).
pub const STATE_DIR_ENV: &str = "EMULATE_STATE_DIR";
const KEY_FILE: &str = "identity-key.pem";

/// The state directory: `$EMULATE_STATE_DIR`, else `$XDG_STATE_HOME/emulate`, else
/// `~/.local/state/emulate`.
pub fn state_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    set(STATE_DIR_ENV)
        .or_else(|| set("XDG_STATE_HOME").map(|d| d.join("emulate")))
        .or_else(|| set("HOME").map(|d| d.join(".local/state/emulate")))
}

/// The signing key and its id.
pub struct IdentityKey {
    key: RsaPrivateKey,
    kid: String,
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Why a token is not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not a JWT")]
    Malformed,
    #[error("the signature does not verify")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("the audience '{0}' is not this service's")]
    Audience(String),
}

impl IdentityKey {
    /// A new 2048-bit key.
    pub fn generate() -> Self {
        let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
            .expect("a 2048-bit RSA key can be generated");
        Self::from_key(key)
    }

    fn from_key(key: RsaPrivateKey) -> Self {
        let der = key
            .to_public_key()
            .to_public_key_der()
            .expect("a public key encodes");
        let kid = hex(&Sha256::digest(der.as_bytes())[..20]);
        IdentityKey { key, kid }
    }

    /// The key kept in `dir`, made (0600, the directory 0700) on first use.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let key = RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: not an RSA private key: {e}", path.display()),
                    )
                })?;
                Ok(Self::from_key(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let made = Self::generate();
                let pem = made
                    .key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                create_private(dir, &path, pem.as_bytes())?;
                // Another emulator may have written the file first: keep the one on disk.
                let pem = std::fs::read_to_string(&path)?;
                match RsaPrivateKey::from_pkcs8_pem(&pem) {
                    Ok(key) => Ok(Self::from_key(key)),
                    Err(_) => Ok(made),
                }
            }
            Err(e) => Err(e),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A signed ID token for `email` with audience `audience`, issued at `now` (Unix seconds);
    /// `extra` claims are added (the metadata server's `format=full`).
    pub fn id_token(
        &self,
        email: &str,
        subject: &str,
        audience: &str,
        now: u64,
        extra: Option<Value>,
    ) -> String {
        let mut claims = json!({
            "aud": audience,
            "azp": subject,
            "email": email,
            "email_verified": true,
            "exp": now + ID_TOKEN_LIFETIME_SECS,
            "iat": now,
            "iss": ISSUER,
            "sub": subject,
        });
        if let (Some(Value::Object(extra)), Value::Object(map)) = (extra, &mut claims) {
            map.extend(extra);
        }
        self.sign(&claims)
    }

    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "RS256", "kid": self.kid, "typ": "JWT"});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signer = SigningKey::<Sha256>::new(self.key.clone());
        let signature = signer.sign(signed.as_bytes()).to_bytes();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// The token's claims if it is signed by this key and not expired at `now`.
    pub fn verify(&self, token: &str, now: u64) -> Result<Value, Invalid> {
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Invalid::Malformed);
        };
        let decode = |part: &str| -> Result<Value, Invalid> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| Invalid::Malformed)?;
            serde_json::from_slice(&bytes).map_err(|_| Invalid::Malformed)
        };
        let header = decode(header)?;
        if header["alg"] != "RS256" || header["kid"] != self.kid.as_str() {
            return Err(Invalid::Signature);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .ok()
            .and_then(|bytes| Signature::try_from(bytes.as_slice()).ok())
            .ok_or(Invalid::Signature)?;
        let signed = &token[..token.len() - token.rsplit('.').next().unwrap_or("").len() - 1];
        VerifyingKey::<Sha256>::new(self.key.to_public_key())
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| Invalid::Signature)?;
        let claims = decode(claims)?;
        if claims["iss"] != ISSUER {
            return Err(Invalid::Signature);
        }
        match claims["exp"].as_u64() {
            Some(exp) if exp > now => Ok(claims),
            _ => Err(Invalid::Expired),
        }
    }

    fn public(&self) -> RsaPublicKey {
        self.key.to_public_key()
    }

    /// The JWKS, as `https://www.googleapis.com/oauth2/v3/certs` answers.
    pub fn jwks(&self) -> Value {
        let public = self.public();
        json!({"keys": [{
            "alg": "RS256",
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            "kid": self.kid,
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "use": "sig",
        }]})
    }

    /// The PEM certs by key id, as `https://www.googleapis.com/oauth2/v1/certs` answers (a
    /// public key PEM where Google has an X.509 certificate; google-auth's verifiers take
    /// either).
    pub fn pem_certs(&self) -> Value {
        let pem = self
            .public()
            .to_public_key_pem(LineEnding::LF)
            .expect("a public key encodes");
        json!({ self.kid.clone(): pem })
    }
}

/// Writes `bytes` to a new file at `path` readable by its owner only; an existing file is
/// left as it is.
fn create_private(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(dir)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    match options.open(path) {
        Ok(mut file) => file.write_all(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// A stable 21-digit numeric id for an account (Google's `sub` is the account's unique id).
pub fn subject(email: &str) -> String {
    let digest = Sha256::digest(email.as_bytes());
    let mut n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    n %= 1_000_000_000_000_000_000;
    format!("1{n:020}")
}

/// One key for every unit test (generating one takes a moment).
#[cfg(test)]
pub fn test_key() -> std::sync::Arc<IdentityKey> {
    static KEY: std::sync::OnceLock<std::sync::Arc<IdentityKey>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| std::sync::Arc::new(IdentityKey::generate()))
        .clone()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
