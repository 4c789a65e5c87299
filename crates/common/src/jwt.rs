//! Compact JWS tokens signed with ES256 (ECDSA P-256, SHA-256): the service-account signing key signs
//! claims (the apiserver's bound tokens, the controller-manager's legacy Secret tokens); verification
//! checks the algorithm and signature before any claim is read.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};
use sha2::Digest;

/// Tokens larger than this are refused before any parsing.
const MAX_TOKEN: usize = 16 * 1024;

/// An ES256 key pair.
pub struct Signer {
    key: EcdsaKeyPair,
    public: Vec<u8>,
    /// The key id: base64url of the SHA-256 of the public key, as upstream derives `kid`.
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

impl Signer {
    /// From a PKCS#8 DER ECDSA P-256 private key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| format!("service-account key is not an ECDSA P-256 PKCS#8 key: {e}"))?;
        let public = key.public_key().as_ref().to_vec();
        let kid = B64.encode(sha2::Sha256::digest(&public));
        Ok(Self {
            key,
            public,
            kid,
            rng,
        })
    }

    /// From a PKCS#8 PEM ECDSA P-256 private key (as `server/tls/service.key`).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        use rustls::pki_types::PrivatePkcs8KeyDer;
        use rustls::pki_types::pem::PemObject;
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("service-account key is not a PKCS#8 PEM key: {e}"))?;
        Self::from_pkcs8(der.secret_pkcs8_der())
    }

    /// The signed token for `claims`.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let mut input = B64.encode(header.to_string());
        input.push('.');
        input.push_str(&B64.encode(claims.to_string()));
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| "signing failed".to_string())?;
        input.push('.');
        input.push_str(&B64.encode(sig.as_ref()));
        Ok(input)
    }

    /// The claims of a token this key signed; `Err` says why it is not one.
    pub fn verify(&self, token: &str) -> Result<Value, &'static str> {
        if token.len() > MAX_TOKEN {
            return Err("token too large");
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a compact JWS");
        };
        let header: Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("malformed header")?;
        if header["alg"] != "ES256" {
            return Err("unexpected signing algorithm");
        }
        let sig = B64.decode(s).map_err(|_| "malformed signature")?;
        let signed = &token[..h.len() + 1 + c.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| "invalid signature")?;
        let claims: Value = B64
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("malformed claims")?;
        if !claims.is_object() {
            return Err("malformed claims");
        }
        Ok(claims)
    }
}

/// Whether `s` looks like a compact JWS (three base64url parts).
pub fn looks_like_jwt(s: &str) -> bool {
    s.split('.').count() == 3
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        let kp = rcgen::KeyPair::generate().unwrap();
        Signer::from_pkcs8(&kp.serialize_der()).unwrap()
    }

    #[test]
    fn reads_a_pem_key() {
        let kp = rcgen::KeyPair::generate().unwrap();
        let s = Signer::from_pem(&kp.serialize_pem()).unwrap();
        let t = s.sign(&json!({"sub": "x"})).unwrap();
        assert_eq!(s.verify(&t).unwrap()["sub"], "x");
        assert!(Signer::from_pem("not a key").is_err());
    }

    #[test]
    fn signs_and_verifies_and_refuses_tampering() {
        let s = signer();
        let t = s.sign(&json!({"sub": "x", "exp": 1})).unwrap();
        assert!(looks_like_jwt(&t));
        assert_eq!(s.verify(&t).unwrap()["sub"], "x");
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = B64.encode(json!({"sub": "admin", "exp": 1}).to_string());
        parts[1] = &forged;
        assert_eq!(s.verify(&parts.join(".")), Err("invalid signature"));
        assert!(signer().verify(&t).is_err(), "another key's token");
        let none = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none"}"#),
            B64.encode(r#"{"sub":"x"}"#)
        );
        assert_eq!(s.verify(&none), Err("unexpected signing algorithm"));
        assert!(s.verify("a.b").is_err());
    }
}
