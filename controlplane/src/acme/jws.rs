//! The ACME account key and what is made from it: the JWK (ECDSA P-256), its RFC 7638
//! thumbprint, the flattened JWS of every ACME POST (ES256, RFC 8555 §6.2) and the HTTP-01 key
//! authorization (RFC 8555 §8.1).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// base64url without padding, as JOSE writes everything.
pub(crate) fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// The account key: ECDSA P-256, kept as PKCS#8 so it can be persisted and reused.
pub(crate) struct AccountKey {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountKey")
            .field("thumbprint", &self.thumbprint())
            .finish_non_exhaustive()
    }
}

impl AccountKey {
    pub(crate) fn generate() -> Result<AccountKey, String> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| "cannot generate an ECDSA P-256 key".to_string())?;
        let pkcs8 = pair
            .to_pkcs8v1()
            .map_err(|_| "cannot serialize the account key".to_string())?
            .as_ref()
            .to_vec();
        Ok(AccountKey { pair, pkcs8 })
    }

    pub(crate) fn from_pkcs8(der: &[u8]) -> Result<AccountKey, String> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| format!("not an ECDSA P-256 PKCS#8 key: {e}"))?;
        Ok(AccountKey {
            pair,
            pkcs8: der.to_vec(),
        })
    }

    pub(crate) fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// `x` and `y`, base64url: the public key is the uncompressed point `04 || x || y`.
    fn coordinates(&self) -> (String, String) {
        let p = self.pair.public_key().as_ref();
        let (x, y) = p
            .get(1..)
            .unwrap_or_default()
            .split_at(p.len().saturating_sub(1) / 2);
        (b64(x), b64(y))
    }

    /// The public JWK (`{"crv","kty","x","y"}`).
    pub(crate) fn jwk(&self) -> Value {
        let (x, y) = self.coordinates();
        json!({"crv": "P-256", "kty": "EC", "x": x, "y": y})
    }

    /// RFC 7638 thumbprint of [`AccountKey::jwk`].
    pub(crate) fn thumbprint(&self) -> String {
        let (x, y) = self.coordinates();
        thumbprint(&[("crv", "P-256"), ("kty", "EC"), ("x", &x), ("y", &y)])
    }

    /// ES256: the fixed 64-byte `r || s` form JWS uses (RFC 7518 §3.4).
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let sig = self
            .pair
            .sign(&SystemRandom::new(), msg)
            .map_err(|_| "cannot sign with the account key".to_string())?;
        Ok(sig.as_ref().to_vec())
    }
}

/// RFC 7638 §3: SHA-256 over the required members in lexicographic order, no whitespace,
/// base64url.
pub(crate) fn thumbprint(members: &[(&str, &str)]) -> String {
    let mut m = members.to_vec();
    m.sort_by(|a, b| a.0.cmp(b.0));
    let mut s = String::from("{");
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&Value::from(*k).to_string());
        s.push(':');
        s.push_str(&Value::from(*v).to_string());
    }
    s.push('}');
    b64(&Sha256::digest(s.as_bytes()))
}

/// The flattened JSON JWS of one ACME request (RFC 8555 §6.2): `jwk` for newAccount (no
/// `kid` yet), `kid` (the account URL) for everything else; `payload: None` is POST-as-GET
/// (an empty payload).
pub(crate) fn jws(
    key: &AccountKey,
    kid: Option<&str>,
    nonce: &str,
    url: &str,
    payload: Option<&Value>,
) -> Result<String, String> {
    let mut protected = Map::new();
    protected.insert("alg".into(), "ES256".into());
    match kid {
        Some(k) => protected.insert("kid".into(), k.into()),
        None => protected.insert("jwk".into(), key.jwk()),
    };
    protected.insert("nonce".into(), nonce.into());
    protected.insert("url".into(), url.into());
    let protected = b64(Value::Object(protected).to_string().as_bytes());
    let payload = payload.map_or_else(String::new, |p| b64(p.to_string().as_bytes()));
    let sig = key.sign(format!("{protected}.{payload}").as_bytes())?;
    Ok(json!({"protected": protected, "payload": payload, "signature": b64(&sig)}).to_string())
}

/// RFC 8555 §8.1: what the HTTP-01 responder serves for `token`.
pub(crate) fn key_authorization(token: &str, thumbprint: &str) -> String {
    format!("{token}.{thumbprint}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        // RFC 7638 §3.1: the RSA key of RFC 7517 appendix A.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        // Member order in the input does not matter.
        assert_eq!(
            thumbprint(&[("n", n), ("kty", "RSA"), ("e", "AQAB")]),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn ec_jwk_and_its_thumbprint() {
        let k = AccountKey::generate().unwrap();
        let jwk = k.jwk();
        let x = jwk["x"].as_str().unwrap();
        let y = jwk["y"].as_str().unwrap();
        assert_eq!((x.len(), y.len()), (43, 43), "32-byte coordinates");
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        assert_eq!(k.thumbprint(), b64(&Sha256::digest(canonical.as_bytes())));
        // Persisted and reloaded: the same key.
        let again = AccountKey::from_pkcs8(k.pkcs8()).unwrap();
        assert_eq!(again.thumbprint(), k.thumbprint());
        assert!(AccountKey::from_pkcs8(b"not a key").is_err());
    }

    fn decode(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    #[test]
    fn jws_shape_and_signature() {
        let k = AccountKey::generate().unwrap();
        let payload = json!({"termsOfServiceAgreed": true});
        let body: Value =
            serde_json::from_str(&jws(&k, None, "n0nce", "https://ca/new-acct", Some(&payload)).unwrap())
                .unwrap();
        let obj = body.as_object().unwrap();
        assert_eq!(obj.len(), 3, "flattened JWS: protected, payload, signature");
        let protected: Value = serde_json::from_slice(&decode(body["protected"].as_str().unwrap())).unwrap();
        assert_eq!(protected["alg"], "ES256");
        assert_eq!(protected["nonce"], "n0nce");
        assert_eq!(protected["url"], "https://ca/new-acct");
        assert_eq!(protected["jwk"], k.jwk());
        assert!(protected.get("kid").is_none(), "jwk and kid are exclusive");
        let p: Value = serde_json::from_slice(&decode(body["payload"].as_str().unwrap())).unwrap();
        assert_eq!(p, payload);
        let sig = decode(body["signature"].as_str().unwrap());
        assert_eq!(sig.len(), 64, "ES256 is r || s, not DER");
        let signed = format!(
            "{}.{}",
            body["protected"].as_str().unwrap(),
            body["payload"].as_str().unwrap()
        );
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, k.pair.public_key().as_ref())
            .verify(signed.as_bytes(), &sig)
            .unwrap();

        // With an account: kid, no jwk; POST-as-GET has an empty payload.
        let body: Value = serde_json::from_str(
            &jws(&k, Some("https://ca/acct/1"), "n2", "https://ca/order/1", None).unwrap(),
        )
        .unwrap();
        let protected: Value = serde_json::from_slice(&decode(body["protected"].as_str().unwrap())).unwrap();
        assert_eq!(protected["kid"], "https://ca/acct/1");
        assert!(protected.get("jwk").is_none());
        assert_eq!(body["payload"], "");
    }

    #[test]
    fn key_authorization_is_token_dot_thumbprint() {
        assert_eq!(
            key_authorization("evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA", "abc_-9"),
            "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.abc_-9"
        );
    }
}
