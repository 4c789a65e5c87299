//! ServiceAccount tokens: bound tokens issued by `serviceaccounts/token` (audience, expiry, optional binding
//! to a Pod, Secret or Node) and legacy Secret-based tokens, both verified as upstream's
//! `serviceaccount` token authenticator: signature, issuer, audience, expiry, then the ServiceAccount (and
//! the bound object) must still exist with the same uid.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::UserInfo;
use super::jwt::Signer;
use crate::api::Api;

/// The issuer of legacy Secret-based tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// Signing and verification of service-account tokens.
#[derive(Debug)]
pub struct ServiceAccounts {
    pub signer: Signer,
    /// `--service-account-issuer`.
    pub issuer: String,
    /// `--api-audiences`: what a token's audience must include (the issuer when unset).
    pub audiences: Vec<String>,
}

/// What a bound token is bound to.
#[derive(Debug, Clone)]
pub struct BoundObject {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// A token request after validation.
#[derive(Debug, Clone)]
pub struct Request {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
    pub bound: Option<BoundObject>,
    /// For a Pod binding: the node the pod runs on (name, uid), as upstream embeds it.
    pub node: Option<(String, String)>,
}

/// A user authenticated by a token, with the audiences it is valid for.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user: UserInfo,
    pub audiences: Vec<String>,
}

pub fn username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

fn sa_groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{namespace}"),
    ]
}

impl ServiceAccounts {
    /// Signs a bound token; returns it with its expiry (unix seconds).
    pub fn issue(&self, req: &Request) -> Result<(String, i64), String> {
        let iat = crate::meta::unix_now();
        let exp = iat + req.expiration_seconds;
        let mut k8s = json!({
            "namespace": req.namespace,
            "serviceaccount": {"name": req.name, "uid": req.uid},
        });
        if let Some(b) = &req.bound {
            k8s[b.kind.to_ascii_lowercase()] = json!({"name": b.name, "uid": b.uid});
        }
        if let Some((node, uid)) = &req.node {
            k8s["node"] = json!({"name": node, "uid": uid});
        }
        let claims = json!({
            "aud": req.audiences,
            "exp": exp,
            "iat": iat,
            "nbf": iat,
            "iss": self.issuer,
            "jti": crate::meta::new_uid(),
            "sub": username(&req.namespace, &req.name),
            "kubernetes.io": k8s,
        });
        Ok((self.signer.sign(&claims)?, exp))
    }

    /// The user a service-account token names, or `Err` with why it is not valid. `Ok(None)`: the token
    /// is not one of ours (another issuer), so other authenticators may try it.
    pub async fn authenticate(
        &self,
        api: &Api,
        token: &str,
        audiences: &[String],
    ) -> Result<Option<Authenticated>, String> {
        let claims = match self.signer.verify(token) {
            Ok(c) => c,
            Err(why) => return Err(why.to_string()),
        };
        let iss = claims["iss"].as_str().unwrap_or("");
        if iss == LEGACY_ISSUER {
            let mut found = self.legacy(api, &claims, token).await?;
            if !audiences.is_empty() {
                // Legacy tokens carry no audience: valid only for the API's own.
                found.audiences = audiences
                    .iter()
                    .filter(|a| self.audiences.contains(a))
                    .cloned()
                    .collect();
                if found.audiences.is_empty() {
                    return Err("token audiences is invalid".into());
                }
            }
            return Ok(Some(found));
        }
        if iss != self.issuer {
            return Ok(None);
        }
        let token_aud: Vec<String> = match &claims["aud"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let wanted = if audiences.is_empty() {
            &self.audiences
        } else {
            audiences
        };
        let matched: Vec<String> = wanted
            .iter()
            .filter(|a| token_aud.contains(a))
            .cloned()
            .collect();
        if matched.is_empty() {
            return Err("token audiences is invalid".into());
        }
        let t = crate::meta::unix_now();
        match claims["exp"].as_i64() {
            Some(exp) if exp > t => {}
            _ => return Err("service account token has expired".into()),
        }
        if claims["nbf"].as_i64().is_some_and(|nbf| nbf > t + 60) {
            return Err("service account token is not valid yet".into());
        }
        let k8s = &claims["kubernetes.io"];
        let ns = k8s["namespace"].as_str().unwrap_or("");
        let sa_name = k8s["serviceaccount"]["name"].as_str().unwrap_or("");
        let sa_uid = k8s["serviceaccount"]["uid"].as_str().unwrap_or("");
        if ns.is_empty() || sa_name.is_empty() {
            return Err("service account token claims are incomplete".into());
        }
        let sa = self.live(api, "serviceaccounts", ns, sa_name).await?;
        if sa["metadata"]["uid"] != sa_uid {
            return Err(format!(
                "service account UID ({sa_uid}) does not match claim ({})",
                sa["metadata"]["uid"].as_str().unwrap_or("")
            ));
        }
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (kind, plural) in [("pod", "pods"), ("secret", "secrets")] {
            let Some(bound) = k8s.get(kind) else { continue };
            let name = bound["name"].as_str().unwrap_or("");
            let obj = self.live(api, plural, ns, name).await?;
            if obj["metadata"]["uid"] != bound["uid"] {
                return Err(format!(
                    "the {kind} the token is bound to has been recreated"
                ));
            }
            // A terminating object keeps its tokens for a minute past its deletion time (upstream's
            // grace, so pods can still talk to the API while they shut down).
            let deleting = obj["metadata"]["deletionTimestamp"]
                .as_str()
                .and_then(crate::printers::parse_rfc3339);
            if deleting.is_some_and(|at| at + 60 < t) {
                return Err(format!("the {kind} the token is bound to is being deleted"));
            }
            if kind == "pod" {
                extra.insert(
                    "authentication.kubernetes.io/pod-name".into(),
                    vec![name.into()],
                );
                extra.insert(
                    "authentication.kubernetes.io/pod-uid".into(),
                    vec![bound["uid"].as_str().unwrap_or("").into()],
                );
            }
        }
        // A token bound to a Node (alone) dies with that Node.
        if k8s.get("pod").is_none()
            && let Some(node) = k8s.get("node")
        {
            let name = node["name"].as_str().unwrap_or("");
            let Some(info) = api.registry.get("", "v1", "nodes") else {
                return Err("nodes are not served".into());
            };
            let stored = api
                .storage
                .get(&info.key(None, name))
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("nodes \"{name}\" not found"))?;
            let obj: Value = serde_json::from_slice(&stored.value).map_err(|e| e.to_string())?;
            if obj["metadata"]["uid"] != node["uid"] {
                return Err("the node the token is bound to has been recreated".into());
            }
        }
        if let Some(node) = k8s.get("node") {
            for (field, key) in [("name", "node-name"), ("uid", "node-uid")] {
                if let Some(v) = node[field].as_str() {
                    extra.insert(
                        format!("authentication.kubernetes.io/{key}"),
                        vec![v.into()],
                    );
                }
            }
        }
        if let Some(jti) = claims["jti"].as_str() {
            extra.insert(
                "authentication.kubernetes.io/credential-id".into(),
                vec![format!("JTI={jti}")],
            );
        }
        Ok(Some(Authenticated {
            user: UserInfo {
                name: username(ns, sa_name),
                uid: sa_uid.to_string(),
                groups: sa_groups(ns),
                extra,
            },
            audiences: matched,
        }))
    }

    /// A legacy token: its Secret must still hold it and its ServiceAccount must still exist.
    async fn legacy(
        &self,
        api: &Api,
        claims: &Value,
        token: &str,
    ) -> Result<Authenticated, String> {
        let c = |k: &str| {
            claims[format!("kubernetes.io/serviceaccount/{k}")]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        let (ns, secret, sa_name, sa_uid) = (
            c("namespace"),
            c("secret.name"),
            c("service-account.name"),
            c("service-account.uid"),
        );
        if ns.is_empty() || secret.is_empty() || sa_name.is_empty() {
            return Err("service account token claims are incomplete".into());
        }
        let sa = self.live(api, "serviceaccounts", &ns, &sa_name).await?;
        if sa["metadata"]["uid"] != sa_uid.as_str() {
            return Err("service account UID does not match claim".into());
        }
        let secret_obj = self.live(api, "secrets", &ns, &secret).await?;
        if secret_obj["metadata"]["annotations"]["kubernetes.io/service-account.uid"]
            != sa_uid.as_str()
        {
            return Err("the token's Secret no longer belongs to its service account".into());
        }
        let stored_token = secret_obj["data"]["token"].as_str().and_then(|b| {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).ok()
        });
        if stored_token.as_deref() != Some(token.as_bytes()) {
            return Err("the token no longer matches its Secret".into());
        }
        Ok(Authenticated {
            user: UserInfo {
                name: username(&ns, &sa_name),
                uid: sa_uid,
                groups: sa_groups(&ns),
                extra: BTreeMap::new(),
            },
            audiences: self.audiences.clone(),
        })
    }

    /// The stored object, or why the token cannot name it.
    async fn live(&self, api: &Api, plural: &str, ns: &str, name: &str) -> Result<Value, String> {
        let Some(info) = api.registry.get("", "v1", plural) else {
            return Err(format!("{plural} are not served"));
        };
        match api.storage.get(&info.key(Some(ns), name)).await {
            Ok(Some(stored)) => serde_json::from_slice(&stored.value)
                .map_err(|e| format!("decoding {plural} {ns}/{name}: {e}")),
            Ok(None) => Err(format!(
                "{} \"{name}\" not found",
                crate::status::qualified(plural, "")
            )),
            Err(err) => Err(format!("looking up {plural} {ns}/{name}: {err}")),
        }
    }
}
