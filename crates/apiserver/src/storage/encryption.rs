//! Encryption at rest for Secrets (`--secrets-encryption`), in upstream's `aescbc` format: a stored value is
//! `k8s:enc:aescbc:v1:<key name>:` + a random 16-byte IV + AES-CBC(PKCS#7-padded JSON). The first key of
//! the configuration encrypts; every key decrypts; values without the prefix (written before encryption
//! was turned on) are read as they are. The configuration is upstream's EncryptionConfiguration, kept at
//! `<data-dir>/server/cred/encryption-config.json` as K3s keeps it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use parking_lot::RwLock;
use serde_json::{Value, json};

/// The key prefixes whose values are encrypted.
pub const ENCRYPTED_PREFIXES: &[&str] = &["/registry/secrets/"];
const PREFIX: &str = "k8s:enc:aescbc:v1:";

/// An encryption failure (configuration or a stored value).
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{0}")]
    Value(String),
}

/// One named AES key.
#[derive(Clone)]
pub struct Key {
    pub name: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("name", &self.name).finish()
    }
}

/// The keys in use: the first encrypts (unless the configuration lists `identity` first: then values
/// are written in the clear and the keys only read, upstream's way of turning encryption off).
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub keys: Vec<Key>,
    pub write_plain: bool,
}

type Enc128 = cbc::Encryptor<aes::Aes128>;
type Enc192 = cbc::Encryptor<aes::Aes192>;
type Enc256 = cbc::Encryptor<aes::Aes256>;
type Dec128 = cbc::Decryptor<aes::Aes128>;
type Dec192 = cbc::Decryptor<aes::Aes192>;
type Dec256 = cbc::Decryptor<aes::Aes256>;

fn random(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut out = vec![0u8; n];
    // The system RNG failing is not something to continue after.
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("system random number generator");
    out
}

impl Key {
    pub fn generate(name: &str) -> Self {
        Self {
            name: name.to_string(),
            secret: random(32),
        }
    }

    fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let iv = random(16);
        let ct = match self.secret.len() {
            16 => Enc128::new_from_slices(&self.secret, &iv)
                .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(plain)),
            24 => Enc192::new_from_slices(&self.secret, &iv)
                .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(plain)),
            _ => Enc256::new_from_slices(&self.secret, &iv)
                .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(plain)),
        }
        .unwrap_or_default();
        let mut out = format!("{PREFIX}{}:", self.name).into_bytes();
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ct);
        out
    }

    fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        if data.len() < 32 || !(data.len() - 16).is_multiple_of(16) {
            return Err(EncryptionError::Value(
                "the data is not a whole number of blocks".into(),
            ));
        }
        let (iv, ct) = data.split_at(16);
        let bad = |_| EncryptionError::Value("invalid padding on input".into());
        match self.secret.len() {
            16 => Dec128::new_from_slices(&self.secret, iv)
                .map_err(|e| EncryptionError::Value(e.to_string()))?
                .decrypt_padded_vec_mut::<Pkcs7>(ct)
                .map_err(bad),
            24 => Dec192::new_from_slices(&self.secret, iv)
                .map_err(|e| EncryptionError::Value(e.to_string()))?
                .decrypt_padded_vec_mut::<Pkcs7>(ct)
                .map_err(bad),
            _ => Dec256::new_from_slices(&self.secret, iv)
                .map_err(|e| EncryptionError::Value(e.to_string()))?
                .decrypt_padded_vec_mut::<Pkcs7>(ct)
                .map_err(bad),
        }
    }
}

impl Keys {
    /// The EncryptionConfiguration document for these keys (aescbc, then identity so plain values read).
    pub fn to_config(&self) -> Value {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|k| json!({"name": k.name, "secret": B64.encode(&k.secret)}))
            .collect();
        let (aescbc, identity) = (json!({"aescbc": {"keys": keys}}), json!({"identity": {}}));
        let providers = if self.write_plain {
            vec![identity, aescbc]
        } else {
            vec![aescbc, identity]
        };
        json!({
            "kind": "EncryptionConfiguration",
            "apiVersion": "apiserver.config.k8s.io/v1",
            "resources": [{"resources": ["secrets"], "providers": providers}],
        })
    }

    /// Reads the aescbc keys of an EncryptionConfiguration.
    pub fn from_config(path: &Path, doc: &Value) -> Result<Self, EncryptionError> {
        let err = |message: String| EncryptionError::Config {
            path: path.to_path_buf(),
            message,
        };
        let mut keys = Vec::new();
        let mut write_plain = false;
        // As upstream, the first entry that covers secrets decides; its first provider writes.
        for res in doc["resources"].as_array().into_iter().flatten() {
            let covers_secrets = res["resources"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x == "secrets" || x == "*.*" || x == "*."));
            if !covers_secrets {
                continue;
            }
            for (i, provider) in res["providers"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let Some(aescbc) = provider.get("aescbc") else {
                    if provider.get("identity").is_some() {
                        write_plain |= i == 0;
                        continue;
                    }
                    return Err(err(format!(
                        "unsupported provider {provider}; aescbc and identity are supported"
                    )));
                };
                for k in aescbc["keys"].as_array().into_iter().flatten() {
                    let name = k["name"].as_str().unwrap_or("").to_string();
                    let secret = B64
                        .decode(k["secret"].as_str().unwrap_or(""))
                        .map_err(|e| err(format!("key {name:?}: {e}")))?;
                    if !matches!(secret.len(), 16 | 24 | 32) {
                        return Err(err(format!(
                            "key {name:?}: an AES key is 16, 24 or 32 bytes, not {}",
                            secret.len()
                        )));
                    }
                    if name.is_empty() || name.contains(':') {
                        return Err(err(format!("key name {name:?} is empty or has a colon")));
                    }
                    keys.push(Key { name, secret });
                }
            }
            break;
        }
        if keys.is_empty() {
            return Err(err("no aescbc key for secrets".into()));
        }
        Ok(Self { keys, write_plain })
    }
}

/// Encrypts and decrypts stored values; shared by every storage handle and swapped on key rotation.
#[derive(Debug, Clone, Default)]
pub struct Transformer {
    keys: Arc<RwLock<Option<Keys>>>,
}

impl Transformer {
    pub fn new(keys: Option<Keys>) -> Self {
        Self {
            keys: Arc::new(RwLock::new(keys)),
        }
    }

    pub fn keys(&self) -> Option<Keys> {
        self.keys.read().clone()
    }

    pub fn set(&self, keys: Keys) {
        *self.keys.write() = Some(keys);
    }

    fn applies(key: &str) -> bool {
        ENCRYPTED_PREFIXES.iter().any(|p| key.starts_with(p))
    }

    /// The bytes to store for `value` at `key`.
    pub fn to_storage(&self, key: &str, value: Vec<u8>) -> Vec<u8> {
        if !Self::applies(key) {
            return value;
        }
        match self
            .keys
            .read()
            .as_ref()
            .filter(|k| !k.write_plain)
            .and_then(|k| k.keys.first())
        {
            Some(k) => k.encrypt(&value),
            None => value,
        }
    }

    /// The plain value of stored bytes (unencrypted values pass through).
    pub fn from_storage(&self, data: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let Some(rest) = data.strip_prefix(PREFIX.as_bytes()) else {
            if data.starts_with(b"k8s:enc:") {
                return Err(EncryptionError::Value(
                    "the value was encrypted with a provider this server does not have".into(),
                ));
            }
            return Ok(data.to_vec());
        };
        let colon = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| EncryptionError::Value("no key name in the encrypted value".into()))?;
        let name = String::from_utf8_lossy(&rest[..colon]).into_owned();
        let guard = self.keys.read();
        let key = guard
            .as_ref()
            .and_then(|k| k.keys.iter().find(|k| k.name == name))
            .ok_or_else(|| {
                EncryptionError::Value(format!("no key named {name:?} to decrypt with"))
            })?;
        key.decrypt(&rest[colon + 1..])
    }

    /// The name of the key a stored value was encrypted with (`None`: not encrypted).
    pub fn key_of(data: &[u8]) -> Option<String> {
        let rest = data.strip_prefix(PREFIX.as_bytes())?;
        let colon = rest.iter().position(|b| *b == b':')?;
        Some(String::from_utf8_lossy(&rest[..colon]).into_owned())
    }
}

/// Where K3s keeps the encryption configuration.
pub fn config_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server/cred/encryption-config.json")
}

/// Loads the configuration, creating one with a fresh key when there is none.
pub fn load_or_create(path: &Path) -> Result<Keys, EncryptionError> {
    let err = |message: String| EncryptionError::Config {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let doc: Value = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
            Keys::from_config(path, &doc)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keys = Keys {
                keys: vec![Key::generate("aescbckey")],
                write_plain: false,
            };
            save(path, &keys)?;
            Ok(keys)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Writes the configuration (mode 0600, replaced atomically).
pub fn save(path: &Path, keys: &Keys) -> Result<(), EncryptionError> {
    let err = |message: String| EncryptionError::Config {
        path: path.to_path_buf(),
        message,
    };
    if let Some(dir) = path.parent() {
        crate::pki::private_dir(dir).map_err(|e| err(e.to_string()))?;
    }
    let body = serde_json::to_string_pretty(&keys.to_config()).map_err(|e| err(e.to_string()))?;
    crate::pki::write_private(path, &body, 0o600).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_rotation_and_plain_values() {
        let old = Key::generate("k1");
        let t = Transformer::new(Some(Keys {
            keys: vec![old.clone()],
            write_plain: false,
        }));
        let stored = t.to_storage("/registry/secrets/ns/s", b"{\"data\":1}".to_vec());
        assert!(stored.starts_with(b"k8s:enc:aescbc:v1:k1:"));
        assert!(!stored.windows(8).any(|w| w == b"\"data\":1"));
        assert_eq!(t.from_storage(&stored).unwrap(), b"{\"data\":1}");
        assert_eq!(
            t.to_storage("/registry/configmaps/ns/c", b"x".to_vec()),
            b"x"
        );
        assert_eq!(
            t.from_storage(b"{\"plain\":true}").unwrap(),
            b"{\"plain\":true}"
        );
        // Rotation: the new key encrypts, the old one still decrypts.
        t.set(Keys {
            keys: vec![Key::generate("k2"), old],
            write_plain: false,
        });
        assert_eq!(t.from_storage(&stored).unwrap(), b"{\"data\":1}");
        let again = t.to_storage("/registry/secrets/ns/s", b"y".to_vec());
        assert_eq!(Transformer::key_of(&again).as_deref(), Some("k2"));
        // Config documents round-trip.
        let keys = t.keys().unwrap();
        let back = Keys::from_config(Path::new("x"), &keys.to_config()).unwrap();
        assert_eq!(back.keys.len(), 2);
        assert!(
            t.from_storage(b"k8s:enc:aescbc:v1:nope:0123456789abcdef0123456789abcdef")
                .is_err()
        );
    }
}
