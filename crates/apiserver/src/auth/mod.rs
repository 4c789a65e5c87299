//! Authentication: who a request acts as. In upstream's order: an x509 client certificate verified against
//! the client CA, else a bearer token (the static `--token-auth-file`, a bootstrap token, a ServiceAccount
//! JWT); a token that is presented but not valid is a 401 even where anonymous access is allowed. Requests
//! without credentials act as `system:anonymous`, and only for the public health and version paths
//! (upstream's anonymous-auth limited to those endpoints); elsewhere they get 401.

pub use k3rs_common::jwt;
pub mod serviceaccount;
pub mod x509;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use hyper::HeaderMap;
use serde_json::Value;
use sha2::Digest;

use crate::api::Api;
use serviceaccount::{Authenticated, ServiceAccounts};

/// An authenticated user (upstream's `user.Info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

pub const ANONYMOUS: &str = "system:anonymous";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
pub const AUTHENTICATED: &str = "system:authenticated";
pub const MASTERS: &str = "system:masters";

impl UserInfo {
    pub fn anonymous() -> Self {
        Self {
            name: ANONYMOUS.into(),
            groups: vec![UNAUTHENTICATED.into()],
            ..Self::default()
        }
    }

    /// Adds `system:authenticated` (upstream's group adder, applied to every authenticated user).
    fn authenticated(mut self) -> Self {
        if !self.groups.iter().any(|g| g == AUTHENTICATED) {
            self.groups.push(AUTHENTICATED.into());
        }
        self
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The `authentication.k8s.io/v1` UserInfo (reviews, audit events).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = serde_json::json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = serde_json::json!(self.extra);
        }
        v
    }
}

/// Paths anonymous requests may reach (RBAC's `system:public-info-viewer` still decides).
pub fn is_public_path(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/livez" | "/readyz" | "/version" | "/version/"
    ) || ["/healthz/", "/livez/", "/readyz/"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// One line of a `--token-auth-file`: `token,user,uid,"group1,group2"`.
#[derive(Debug, Clone)]
struct StaticToken {
    user: UserInfo,
}

/// A failure reading the token file.
#[derive(Debug, thiserror::Error)]
#[error("--token-auth-file {path}: {message}")]
pub struct TokenFileError {
    path: String,
    message: String,
}

/// Parses a static token file (upstream's CSV format; the groups column is optional).
fn parse_token_file(path: &Path) -> Result<HashMap<String, StaticToken>, TokenFileError> {
    let err = |message: String| TokenFileError {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_csv(line);
        if fields.len() < 3 {
            return Err(err(format!(
                "line {}: want token,user,uid[,\"groups\"], got {} fields",
                i + 1,
                fields.len()
            )));
        }
        let groups = fields
            .get(3)
            .map(|g| {
                g.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let token = fields[0].clone();
        if token.is_empty() {
            return Err(err(format!("line {}: empty token", i + 1)));
        }
        out.insert(
            token,
            StaticToken {
                user: UserInfo {
                    name: fields[1].clone(),
                    uid: fields[2].clone(),
                    groups,
                    extra: BTreeMap::new(),
                },
            },
        );
    }
    Ok(out)
}

/// Splits one CSV line, honouring double quotes (`""` inside quotes is a quote).
fn split_csv(line: &str) -> Vec<String> {
    let (mut fields, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    fields.push(cur);
    fields.into_iter().map(|f| f.trim().to_string()).collect()
}

/// How long a successful token authentication is remembered (upstream's token cache: 10 s).
const TOKEN_TTL: Duration = Duration::from_secs(10);
const TOKEN_CACHE_MAX: usize = 4096;

/// The authenticators the apiserver was started with.
#[derive(Debug)]
pub struct Authenticator {
    static_tokens: HashMap<String, StaticToken>,
    pub service_accounts: ServiceAccounts,
    /// `--requestheader-allowed-names`: front-proxy certificates whose headers are trusted.
    pub proxy_names: Vec<String>,
    cache: parking_lot::Mutex<HashMap<[u8; 32], (Instant, Authenticated)>>,
}

/// Why a request is not authenticated (always answered with 401).
#[derive(Debug)]
pub struct Unauthorized(pub String);

impl Authenticator {
    pub fn new(
        token_file: Option<&Path>,
        service_accounts: ServiceAccounts,
    ) -> Result<Self, TokenFileError> {
        let static_tokens = match token_file {
            Some(p) => parse_token_file(p)?,
            None => HashMap::new(),
        };
        Ok(Self {
            static_tokens,
            service_accounts,
            proxy_names: vec!["system:auth-proxy".into()],
            cache: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// The user of a request: its verified certificate's, its bearer token's, or anonymous on a public path.
    pub async fn authenticate(
        &self,
        api: &Api,
        headers: &HeaderMap,
        peer: Option<&x509::PeerCert>,
        path: &str,
    ) -> Result<UserInfo, Unauthorized> {
        match peer {
            Some(x509::PeerCert::User(user)) => return Ok(user.clone().authenticated()),
            Some(x509::PeerCert::Proxy(cn))
                if self.proxy_names.is_empty() || self.proxy_names.contains(cn) =>
            {
                if let Some(user) = x509::from_request_headers(headers) {
                    return Ok(user.authenticated());
                }
            }
            _ => {}
        }
        if let Some(token) = bearer(headers) {
            return self
                .token(api, token, &[])
                .await
                .map(|a| a.user.authenticated());
        }
        if is_public_path(path) {
            return Ok(UserInfo::anonymous());
        }
        Err(Unauthorized("no credentials".into()))
    }

    /// Authenticates a bearer token for `audiences` (the API audiences when empty), as TokenReview does.
    pub async fn token(
        &self,
        api: &Api,
        token: &str,
        audiences: &[String],
    ) -> Result<Authenticated, Unauthorized> {
        let digest: [u8; 32] = {
            let mut h = sha2::Sha256::new();
            h.update(token.as_bytes());
            for a in audiences {
                h.update([0]);
                h.update(a.as_bytes());
            }
            h.finalize().into()
        };
        if let Some((at, hit)) = self.cache.lock().get(&digest)
            && at.elapsed() < TOKEN_TTL
        {
            return Ok(hit.clone());
        }
        let found = self.token_uncached(api, token, audiences).await?;
        let mut cache = self.cache.lock();
        if cache.len() >= TOKEN_CACHE_MAX {
            cache.retain(|_, (at, _)| at.elapsed() < TOKEN_TTL);
            if cache.len() >= TOKEN_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(digest, (Instant::now(), found.clone()));
        Ok(found)
    }

    async fn token_uncached(
        &self,
        api: &Api,
        token: &str,
        audiences: &[String],
    ) -> Result<Authenticated, Unauthorized> {
        let api_audiences = &self.service_accounts.audiences;
        // Tokens that carry no audience are valid only for the API's own audiences (upstream's
        // audience-agnostic wrapper): a review for another audience does not authenticate them.
        let agnostic: Vec<String> = if audiences.is_empty() {
            api_audiences.clone()
        } else {
            audiences
                .iter()
                .filter(|a| api_audiences.contains(a))
                .cloned()
                .collect()
        };
        let agnostic_ok = !agnostic.is_empty();
        if let Some(st) = self.static_tokens.get(token) {
            if !agnostic_ok {
                return Err(Unauthorized("token audiences is invalid".into()));
            }
            return Ok(Authenticated {
                user: st.user.clone(),
                audiences: agnostic,
            });
        }
        if let Some((id, secret)) = bootstrap_token(token) {
            if !agnostic_ok {
                return Err(Unauthorized("token audiences is invalid".into()));
            }
            return bootstrap_user(api, id, secret)
                .await
                .map(|user| Authenticated {
                    user,
                    audiences: agnostic,
                })
                .map_err(Unauthorized);
        }
        if jwt::looks_like_jwt(token) {
            return match self
                .service_accounts
                .authenticate(api, token, audiences)
                .await
            {
                Ok(Some(a)) => Ok(a),
                Ok(None) => Err(Unauthorized("token issuer is not trusted".into())),
                Err(why) => Err(Unauthorized(why)),
            };
        }
        Err(Unauthorized("invalid bearer token".into()))
    }
}

/// The bearer token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `<id>.<secret>` of a bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`).
pub fn bootstrap_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// The user of a bootstrap token: its `kube-system/bootstrap-token-<id>` Secret must hold the secret, be
/// usable for authentication and not have expired.
async fn bootstrap_user(api: &Api, id: &str, secret: &str) -> Result<UserInfo, String> {
    let info = api
        .registry
        .get("", "v1", "secrets")
        .ok_or("secrets are not served")?;
    let key = info.key(Some("kube-system"), &format!("bootstrap-token-{id}"));
    let stored = api
        .storage
        .get(&key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("bootstrap token not found")?;
    let obj: Value = serde_json::from_slice(&stored.value).map_err(|e| e.to_string())?;
    if obj["type"] != "bootstrap.kubernetes.io/token"
        || obj["metadata"]["deletionTimestamp"].is_string()
    {
        return Err("bootstrap token not usable".into());
    }
    let field = |k: &str| {
        obj["data"][k]
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default()
    };
    let stored_secret = field("token-secret");
    if !constant_time_eq(stored_secret.as_bytes(), secret.as_bytes()) || field("token-id") != id {
        return Err("bootstrap token does not match".into());
    }
    if field("usage-bootstrap-authentication") != "true" {
        return Err("bootstrap token is not for authentication".into());
    }
    let expiration = field("expiration");
    if !expiration.is_empty() {
        match crate::printers::parse_rfc3339(&expiration) {
            Some(exp) if exp > crate::meta::unix_now() => {}
            _ => return Err("bootstrap token has expired".into()),
        }
    }
    let mut groups = vec!["system:bootstrappers".to_string()];
    for g in field("auth-extra-groups").split(',').map(str::trim) {
        if g.starts_with("system:bootstrappers:") && !groups.iter().any(|x| x == g) {
            groups.push(g.to_string());
        }
    }
    Ok(UserInfo {
        name: format!("system:bootstrap:{id}"),
        uid: String::new(),
        groups,
        extra: BTreeMap::new(),
    })
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_lines_parse_as_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.csv");
        std::fs::write(
            &p,
            "# comment\nt1,alice,1,\"dev,ops\"\nt2,bob,2\n\"t,3\",carol,3,\"\"\n",
        )
        .unwrap();
        let m = parse_token_file(&p).unwrap();
        assert_eq!(m["t1"].user.groups, vec!["dev", "ops"]);
        assert_eq!(m["t2"].user.name, "bob");
        assert!(m["t2"].user.groups.is_empty());
        assert_eq!(m["t,3"].user.uid, "3");
        std::fs::write(&p, "only,two\n").unwrap();
        assert!(
            parse_token_file(&p)
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
    }

    #[test]
    fn bearer_and_bootstrap_shapes() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        assert_eq!(
            bootstrap_token("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        assert_eq!(bootstrap_token("ABCDEF.0123456789abcdef"), None);
        assert_eq!(bootstrap_token("abcdef.0123"), None);
        assert!(is_public_path("/readyz/ping"));
        assert!(!is_public_path("/api"));
    }
}
