//! The server's maintenance commands that go through the API with the admin kubeconfig
//! (`<data-dir>/server/cred/admin.kubeconfig`), as K3s's: `k3rs token create|list|delete` (bootstrap
//! tokens, Secrets `kube-system/bootstrap-token-<id>`, printed as `K10<CA hash>::<id>.<secret>` so the
//! joining agent can check the server) and `k3rs secrets-encrypt status|rotate-keys` (the server's
//! `/v1-k3rs/encrypt/` endpoints).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

/// `k3rs token …`.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenAction {
    /// Create a bootstrap token that joins agents (printed as K10<hash>::<id>.<secret>)
    Create {
        /// The token itself ([a-z0-9]{6}.[a-z0-9]{16}); generated when omitted
        token: Option<String>,
        /// How long it is valid (0 = forever)
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// A description shown by `token list`
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the bootstrap tokens
    List,
    /// Delete bootstrap tokens by id (or whole token)
    Delete {
        #[arg(required = true)]
        tokens: Vec<String>,
    },
}

/// `k3rs secrets-encrypt …`.
#[derive(Debug, Clone, Subcommand)]
pub enum EncryptAction {
    /// Whether Secrets are encrypted, and with which keys
    Status,
    /// Add a new key and re-encrypt every Secret with it
    RotateKeys,
}

fn kubeconfig(data_dir: &Path) -> PathBuf {
    data_dir.join("server/cred/admin.kubeconfig")
}

/// The admin credential's client configuration.
pub(crate) async fn admin_config(data_dir: &Path) -> Result<kube::Config, String> {
    let path = kubeconfig(data_dir);
    let kc = kube::config::Kubeconfig::read_from(&path)
        .map_err(|e| format!("{}: {e} (is this a server's --data-dir?)", path.display()))?;
    kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| e.to_string())
}

async fn client(data_dir: &Path) -> Result<kube::Client, String> {
    kube::Client::try_from(admin_config(data_dir).await?).map_err(|e| e.to_string())
}

fn run<F: std::future::Future<Output = Result<(), String>>>(f: F) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("k3rs: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("k3rs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn random_token() -> String {
    use ring::rand::SecureRandom;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut b = [0u8; 22];
    // The system RNG failing is not something to continue after.
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random number generator");
    let s: String = b
        .iter()
        .map(|x| ALPHABET[*x as usize % ALPHABET.len()] as char)
        .collect();
    format!("{}.{}", &s[..6], &s[6..])
}

fn valid_token(t: &str) -> bool {
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    t.split_once('.')
        .is_some_and(|(id, secret)| ok(id, 6) && ok(secret, 16))
}

/// `24h`, `90m`, `30s`, `2h30m`, `0`.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("--ttl {s:?}: not a duration"))?;
        num.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(format!("--ttl {s:?}: units are h, m and s")),
        };
    }
    if !num.is_empty() {
        return Err(format!("--ttl {s:?}: a number needs a unit (h, m, s)"));
    }
    Ok(Duration::from_secs(total))
}

fn rfc3339_in(d: Duration) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::try_from(d).unwrap_or_default();
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `k3rs token …`.
pub fn token(data_dir: &Path, action: TokenAction) -> ExitCode {
    run(async move {
        let c = client(data_dir).await?;
        let secrets: Api<Secret> = Api::namespaced(c, "kube-system");
        match action {
            TokenAction::Create {
                token,
                ttl,
                description,
            } => {
                let token = token.unwrap_or_else(random_token);
                if !valid_token(&token) {
                    return Err(format!(
                        "{token:?} is not a bootstrap token ([a-z0-9]{{6}}.[a-z0-9]{{16}})"
                    ));
                }
                let ttl = parse_ttl(&ttl)?;
                let (id, secret) = token.split_once('.').unwrap_or_default();
                let mut data = json!({
                    "token-id": id,
                    "token-secret": secret,
                    "usage-bootstrap-authentication": "true",
                    "usage-bootstrap-signing": "true",
                    "auth-extra-groups": "system:bootstrappers:k3rs:default-node-token",
                });
                if !description.is_empty() {
                    data["description"] = json!(description);
                }
                if !ttl.is_zero() {
                    data["expiration"] = json!(rfc3339_in(ttl));
                }
                let s: Secret = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
                    "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
                    "stringData": data,
                }))
                .map_err(|e| e.to_string())?;
                secrets
                    .create(&PostParams::default(), &s)
                    .await
                    .map_err(|e| format!("creating the token: {e}"))?;
                let ca = std::fs::read_to_string(data_dir.join("server/tls/server-ca.crt"))
                    .map_err(|e| format!("the server CA: {e}"))?;
                println!("K10{}::{token}", k3rs_common::join::ca_hash(&ca));
                Ok(())
            }
            TokenAction::List => {
                let list = secrets
                    .list(&ListParams::default().fields("type=bootstrap.kubernetes.io/token"))
                    .await
                    .map_err(|e| format!("listing tokens: {e}"))?;
                println!(
                    "{:<8} {:<22} {:<28} {:<20} DESCRIPTION",
                    "TOKEN", "EXPIRES", "USAGES", "EXTRA GROUPS"
                );
                for s in list.items {
                    let d = |k: &str| {
                        s.data
                            .as_ref()
                            .and_then(|d| d.get(k))
                            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                            .unwrap_or_default()
                    };
                    let usages: Vec<&str> = ["authentication", "signing"]
                        .into_iter()
                        .filter(|u| d(&format!("usage-bootstrap-{u}")) == "true")
                        .collect();
                    let expires = d("expiration");
                    println!(
                        "{:<8} {:<22} {:<28} {:<20} {}",
                        d("token-id"),
                        if expires.is_empty() {
                            "<forever>".into()
                        } else {
                            expires
                        },
                        usages.join(","),
                        d("auth-extra-groups"),
                        d("description")
                    );
                }
                Ok(())
            }
            TokenAction::Delete { tokens } => {
                for t in tokens {
                    let id = t
                        .rsplit("::")
                        .next()
                        .unwrap_or(&t)
                        .split('.')
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    secrets
                        .delete(&format!("bootstrap-token-{id}"), &DeleteParams::default())
                        .await
                        .map_err(|e| format!("deleting token {id}: {e}"))?;
                    println!("bootstrap token {id:?} deleted");
                }
                Ok(())
            }
        }
    })
}

/// `k3rs secrets-encrypt …`.
pub fn secrets_encrypt(data_dir: &Path, action: EncryptAction) -> ExitCode {
    run(async move {
        let c = client(data_dir).await?;
        let (method, path) = match action {
            EncryptAction::Status => ("GET", "/v1-k3rs/encrypt/status"),
            EncryptAction::RotateKeys => ("POST", "/v1-k3rs/encrypt/rotate-keys"),
        };
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        let text = c.request_text(req).await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        println!(
            "Encryption Status: {}",
            if v["enabled"] == true {
                "Enabled"
            } else {
                "Disabled"
            }
        );
        if let Some(n) = v["reencrypted"].as_u64() {
            println!("Re-encrypted Secrets: {n}");
        }
        println!("Active Key: {}", v["activeKey"].as_str().unwrap_or("none"));
        println!(
            "Keys: {}",
            v["keys"]
                .as_array()
                .map(|k| k
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
        println!(
            "Secrets: {} ({} unencrypted)",
            v["secrets"].as_u64().unwrap_or(0),
            v["unencrypted"].as_u64().unwrap_or(0)
        );
        if let Some(by) = v["encryptedByKey"].as_object() {
            for (k, n) in by {
                println!("  {k}: {n}");
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_ttls() {
        assert!(valid_token(&random_token()));
        assert!(!valid_token("ABCDEF.0123456789abcdef"));
        assert!(!valid_token("abcdef0123456789abcdef"));
        assert_eq!(parse_ttl("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_ttl("2h30m").unwrap(), Duration::from_secs(9000));
        assert_eq!(parse_ttl("0").unwrap(), Duration::ZERO);
        assert!(parse_ttl("5").is_err());
        assert!(parse_ttl("5d").is_err());
    }
}
