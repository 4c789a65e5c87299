//! The cluster's shared secrets in the datastore, as K3s keeps its bootstrap data: the CAs (server,
//! client, request-header), the service-account signing key and the Secrets encryption configuration,
//! encrypted with a key derived from the join token (PBKDF2-HMAC-SHA256, AES-256-GCM) under
//! `/bootstrap/<hash of the token>`. The first server stores them once its apiserver made them; a server
//! joining the same datastore takes them before its apiserver starts, so every server signs and
//! verifies with the same keys. A server with another token is refused: the data is the cluster's.

use std::num::NonZeroU32;
use std::path::Path;

use base64::Engine;
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Map, Value, json};
use sha2::Digest;

use crate::Error;

/// The files shared, relative to `<data-dir>/server/`.
const FILES: &[&str] = &[
    "tls/server-ca.crt",
    "tls/server-ca.key",
    "tls/client-ca.crt",
    "tls/client-ca.key",
    "tls/request-header-ca.crt",
    "tls/request-header-ca.key",
    "tls/service.key",
    "cred/encryption-config.json",
];

const PREFIX: &str = "/bootstrap/";
const ITERATIONS: u32 = 10_000;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The secret part of a token (`K10<hash>::<user>:<secret>` or bare).
pub fn secret_of(token: &str) -> &str {
    let t = token.trim();
    match t.strip_prefix("K10").and_then(|r| r.split_once("::")) {
        Some((_, creds)) => creds.split_once(':').map_or(creds, |(_, s)| s),
        None => t,
    }
}

fn key_name(secret: &str) -> String {
    let h = sha2::Sha256::digest(secret.as_bytes());
    let hex: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}{hex}")
}

fn cipher(secret: &str, salt: &[u8]) -> Result<LessSafeKey, Error> {
    let mut key = [0u8; 32];
    let iterations = NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        secret.as_bytes(),
        &mut key,
    );
    UnboundKey::new(&AES_256_GCM, &key)
        .map(LessSafeKey::new)
        .map_err(|_| Error::Config("bootstrap: building the cipher".into()))
}

fn seal(secret: &str, plain: &[u8]) -> Result<Value, Error> {
    let rng = SystemRandom::new();
    let (mut salt, mut nonce) = ([0u8; 16], [0u8; 12]);
    rng.fill(&mut salt)
        .and_then(|()| rng.fill(&mut nonce))
        .map_err(|_| Error::Config("bootstrap: no random numbers".into()))?;
    let mut data = plain.to_vec();
    let tag = cipher(secret, &salt)?
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
        .map_err(|_| Error::Config("bootstrap: encrypting".into()))?;
    data.extend_from_slice(tag.as_ref());
    Ok(
        json!({"salt": b64().encode(salt), "nonce": b64().encode(nonce), "data": b64().encode(data)}),
    )
}

fn open(secret: &str, sealed: &Value) -> Option<Vec<u8>> {
    let field = |k: &str| sealed[k].as_str().and_then(|s| b64().decode(s).ok());
    let (salt, nonce, mut data) = (field("salt")?, field("nonce")?, field("data")?);
    let nonce: [u8; 12] = nonce.try_into().ok()?;
    if data.len() < 16 {
        return None;
    }
    let tag_bytes = data.split_off(data.len() - 16);
    let tag: [u8; 16] = tag_bytes.try_into().ok()?;
    cipher(secret, &salt)
        .ok()?
        .open_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            Tag::from(tag),
            &mut data,
            0..,
        )
        .ok()
        .map(|plain| plain.to_vec())
}

/// What the datastore holds for this cluster.
pub enum Found {
    /// Nothing yet: this is the first server.
    Nothing,
    /// The shared files were written into this server's directory.
    Restored(usize),
}

/// Before the apiserver starts: takes the cluster's shared files from the datastore (writing those this
/// server lacks; refusing when a file it has differs), or reports that there are none yet. `token` is
/// this server's (None: it has none yet and will generate one, which only a first server may).
pub async fn restore(
    client: &mut etcd_client::Client,
    server_dir: &Path,
    token: Option<&str>,
) -> Result<Found, Error> {
    let err = |e: etcd_client::Error| Error::Config(format!("bootstrap data: {e}"));
    let all = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(err)?;
    if all.kvs().is_empty() {
        return Ok(Found::Nothing);
    }
    let Some(token) = token else {
        return Err(Error::Config(
            "this datastore already holds a cluster: start this server with that cluster's --token"
                .into(),
        ));
    };
    let secret = secret_of(token);
    let name = key_name(secret);
    let Some(kv) = all.kvs().iter().find(|kv| kv.key() == name.as_bytes()) else {
        return Err(Error::Config(
            "bootstrap data already found and encrypted with a different token: this datastore holds another cluster's; pass that cluster's --token".into(),
        ));
    };
    let sealed: Value = serde_json::from_slice(kv.value())
        .map_err(|e| Error::Config(format!("bootstrap data: {e}")))?;
    let plain = open(secret, &sealed).ok_or_else(|| {
        Error::Config("bootstrap data cannot be decrypted with this token".into())
    })?;
    let files: Map<String, Value> = serde_json::from_slice(&plain)
        .map_err(|e| Error::Config(format!("bootstrap data: {e}")))?;
    let mut written = 0;
    for (rel, content) in &files {
        if !FILES.contains(&rel.as_str()) {
            continue;
        }
        let content = content.as_str().unwrap_or_default();
        let path = server_dir.join(rel);
        match std::fs::read_to_string(&path) {
            Ok(have) if have == content => {}
            // Keys rotated on this server (`secrets-encrypt rotate-keys`) stay this server's.
            Ok(_) if rel.starts_with("cred/") => {
                tracing::warn!(file = %path.display(), "differs from the cluster's bootstrap data; keeping this server's");
            }
            Ok(_) => {
                return Err(Error::Config(format!(
                    "{} differs from the cluster's (in the datastore): this server was set up for another cluster; move {} aside to join this one",
                    path.display(),
                    server_dir.join("tls").display()
                )));
            }
            Err(_) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(Error::io(dir.display().to_string()))?;
                }
                crate::agent::write_private(&path, content)?;
                written += 1;
            }
        }
    }
    Ok(Found::Restored(written))
}

/// After the first server's apiserver made them: stores the shared files under this token's key, unless
/// another server stored them first.
pub async fn save(
    client: &mut etcd_client::Client,
    server_dir: &Path,
    token: &str,
) -> Result<(), Error> {
    let mut files = Map::new();
    for rel in FILES {
        if let Ok(text) = std::fs::read_to_string(server_dir.join(rel)) {
            files.insert((*rel).to_string(), Value::String(text));
        }
    }
    let secret = secret_of(token);
    let plain = serde_json::to_vec(&files).map_err(|e| Error::Config(e.to_string()))?;
    let sealed = seal(secret, &plain)?.to_string();
    let name = key_name(secret);
    let txn = Txn::new()
        .when([Compare::create_revision(name.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(name.as_str(), sealed, None)]);
    let resp = client
        .txn(txn)
        .await
        .map_err(|e| Error::Config(format!("storing the bootstrap data: {e}")))?;
    if resp.succeeded() {
        tracing::info!(
            files = files.len(),
            "stored the cluster's bootstrap data in the datastore"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_token() {
        let sealed = seal("s3cret", b"the cluster's keys").unwrap();
        assert_eq!(open("s3cret", &sealed).unwrap(), b"the cluster's keys");
        assert!(open("other", &sealed).is_none());
        assert_eq!(secret_of("K10abcd::server:s3cret"), "s3cret");
        assert_eq!(secret_of("s3cret"), "s3cret");
        assert_eq!(
            key_name("s3cret"),
            key_name(secret_of("K10ff::node:s3cret"))
        );
    }
}
