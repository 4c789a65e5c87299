//! The secrets-encryption endpoints of the server (K3s's `secrets-encrypt` commands call the same):
//! `GET /v1-k3rs/encrypt/status` and `POST /v1-k3rs/encrypt/rotate-keys` (a new key first, then every
//! Secret re-encrypted with it; older keys stay to read anything missed). Authorized as non-resource
//! URLs, so only cluster admins reach them.

use hyper::Response;
use serde_json::{Value, json};

use super::{Body, json_response};
use crate::api::Api;
use crate::status::ApiError;
use crate::storage::Guarded;
use crate::storage::encryption::{self, Key, Keys, Transformer};

pub const PREFIX: &str = "/v1-k3rs/encrypt/";

/// What is encrypted with what.
async fn status(api: &Api) -> Result<Value, ApiError> {
    let keys = api.storage.transformer.keys();
    let raw = api.storage.raw_values("/registry/secrets/").await?;
    let active = keys
        .as_ref()
        .and_then(|k| k.keys.first())
        .map(|k| k.name.clone());
    let mut by_key = serde_json::Map::new();
    let mut plain = 0;
    for (_, value, _) in &raw {
        match Transformer::key_of(value) {
            Some(name) => {
                let n = by_key.get(&name).and_then(Value::as_u64).unwrap_or(0);
                by_key.insert(name, json!(n + 1));
            }
            None => plain += 1,
        }
    }
    Ok(json!({
        "enabled": keys.is_some(),
        "activeKey": active,
        "keys": keys.map(|k| k.keys.iter().map(|k| k.name.clone()).collect::<Vec<_>>()).unwrap_or_default(),
        "secrets": raw.len(),
        "encryptedByKey": by_key,
        "unencrypted": plain,
    }))
}

/// Rewrites every Secret whose stored value is not under the active key (each guarded by its revision).
async fn reencrypt(api: &Api, active: &str) -> Result<usize, ApiError> {
    let mut done = 0;
    for _ in 0..5 {
        let raw = api.storage.raw_values("/registry/secrets/").await?;
        let stale: Vec<_> = raw
            .into_iter()
            .filter(|(_, v, _)| Transformer::key_of(v).as_deref() != Some(active))
            .collect();
        if stale.is_empty() {
            return Ok(done);
        }
        let total = stale.len();
        for (i, (key, value, rev)) in stale.into_iter().enumerate() {
            let plain = api
                .storage
                .transformer
                .from_storage(&value)
                .map_err(|e| ApiError::internal(format!("{key}: {e}")))?;
            if let Guarded::Done(_) = api.storage.update(&key, plain, rev).await? {
                done += 1;
            }
            if (i + 1) % 500 == 0 {
                tracing::info!(done = i + 1, total, "re-encrypting secrets");
            }
        }
    }
    Err(ApiError::internal(
        "secrets kept changing while they were re-encrypted; run rotate-keys again",
    ))
}

pub async fn serve(
    api: &Api,
    method: &hyper::Method,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    match (method.as_str(), path.strip_prefix(PREFIX).unwrap_or("")) {
        ("GET", "status") => Ok(json_response(200, &status(api).await?)),
        ("POST" | "PUT", "rotate-keys") => {
            let Some(path) = api.encryption_config.as_ref() else {
                return Err(ApiError::bad_request(
                    "secrets encryption is not enabled (start the server with --secrets-encryption)",
                ));
            };
            // One rotation at a time; every older key is kept so nothing written under it is lost.
            static ROTATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
            let _one = ROTATING.lock().await;
            let current = api.storage.transformer.keys().unwrap_or_default();
            let stamp = crate::meta::now_rfc3339().replace([':', '-'], "");
            let fresh = Key::generate(&format!("aescbckey-{stamp}-{}", crate::meta::name_suffix()));
            if current.keys.iter().any(|k| k.name == fresh.name) {
                return Err(ApiError::internal(
                    "a key with the new key's name exists; try again",
                ));
            }
            let mut keys = current.keys;
            keys.insert(0, fresh);
            let next = Keys {
                keys,
                write_plain: false,
            };
            encryption::save(path, &next).map_err(ApiError::internal)?;
            let active = next.keys[0].name.clone();
            api.storage.transformer.set(next);
            tracing::info!(key = %active, "secrets encryption key rotated; re-encrypting");
            let rewritten = reencrypt(api, &active).await?;
            tracing::info!(rewritten, "secrets re-encrypted");
            let mut out = status(api).await?;
            out["reencrypted"] = json!(rewritten);
            Ok(json_response(200, &out))
        }
        _ => Err(ApiError::route_not_found()),
    }
}
