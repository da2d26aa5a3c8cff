use super::*;

fn claims_of(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[test]
fn an_id_token_has_googles_header_and_claims() {
    let key = test_key();
    let token = key.id_token(
        "a@p.iam.gserviceaccount.com",
        "1234",
        "http://x.localhost:8080",
        1000,
        None,
    );
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        header,
        json!({"alg": "RS256", "kid": key.kid(), "typ": "JWT"})
    );
    assert_eq!(
        claims_of(&token),
        json!({
            "aud": "http://x.localhost:8080",
            "azp": "1234",
            "email": "a@p.iam.gserviceaccount.com",
            "email_verified": true,
            "exp": 4600,
            "iat": 1000,
            "iss": "https://accounts.google.com",
            "sub": "1234",
        })
    );
}

#[test]
fn a_token_verifies_until_it_expires_and_not_when_forged() {
    let key = test_key();
    let token = key.id_token("a@b.c", "1", "aud", 1000, None);
    assert_eq!(key.verify(&token, 1000).unwrap()["aud"], "aud");
    assert_eq!(key.verify(&token, 4599).unwrap()["aud"], "aud");
    assert_eq!(key.verify(&token, 4600), Err(Invalid::Expired));
    // Claims changed after signing.
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(
        claims_of(&token)
            .to_string()
            .replace("\"aud\":\"aud\"", "\"aud\":\"other\""),
    );
    assert_eq!(key.verify(&parts.join("."), 1000), Err(Invalid::Signature));
    // Signed by another key with the same kid.
    let other = IdentityKey {
        kid: key.kid().to_string(),
        ..IdentityKey::generate()
    };
    let forged = other.id_token("a@b.c", "1", "aud", 1000, None);
    assert_eq!(key.verify(&forged, 1000), Err(Invalid::Signature));
    assert_eq!(key.verify("not.a-token", 1000), Err(Invalid::Malformed));
    assert_eq!(key.verify("", 1000), Err(Invalid::Malformed));
}

#[test]
fn the_served_jwks_verifies_the_signature() {
    let key = test_key();
    let token = key.id_token("a@b.c", "1", "aud", 1000, None);
    let jwk = &key.jwks()["keys"][0];
    assert_eq!(jwk["kid"], key.kid());
    assert_eq!(jwk["alg"], "RS256");
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    let e = URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
    let public = RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&n),
        rsa::BigUint::from_bytes_be(&e),
    )
    .unwrap();
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let signature =
        Signature::try_from(URL_SAFE_NO_PAD.decode(signature).unwrap().as_slice()).unwrap();
    VerifyingKey::<Sha256>::new(public)
        .verify(signed.as_bytes(), &signature)
        .unwrap();
    let pem = key.pem_certs()[key.kid()].as_str().unwrap().to_string();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
}

#[test]
fn the_key_is_made_once_and_kept_private() {
    let dir = std::env::temp_dir().join(format!("emulate-key-{}", rand::random::<u64>()));
    let first = IdentityKey::load_or_create(&dir).unwrap();
    let second = IdentityKey::load_or_create(&dir).unwrap();
    assert_eq!(first.kid(), second.kid());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_state_dir_comes_from_the_env() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(
        state_dir(env(&[("EMULATE_STATE_DIR", "/s"), ("HOME", "/h")])),
        Some(PathBuf::from("/s"))
    );
    assert_eq!(
        state_dir(env(&[("XDG_STATE_HOME", "/x"), ("HOME", "/h")])),
        Some(PathBuf::from("/x/emulate"))
    );
    assert_eq!(
        state_dir(env(&[("HOME", "/h")])),
        Some(PathBuf::from("/h/.local/state/emulate"))
    );
    assert_eq!(state_dir(env(&[])), None);
}

#[test]
fn subjects_are_stable_21_digit_ids() {
    let sub = subject("a@b.c");
    assert_eq!(sub, subject("a@b.c"));
    assert_ne!(sub, subject("d@b.c"));
    assert_eq!(sub.len(), 21);
    assert!(sub.chars().all(|c| c.is_ascii_digit()));
}
