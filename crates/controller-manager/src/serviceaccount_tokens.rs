//! The `serviceaccount-token` controller, after upstream's tokens controller: a Secret of type
//! `kubernetes.io/service-account-token` naming a ServiceAccount (`kubernetes.io/service-account.name`)
//! gets a legacy token signed with `--service-account-private-key-file` (issuer
//! `kubernetes/serviceaccount`, which the apiserver accepts while the Secret holds it), the CA bundle
//! and the namespace; a token Secret whose ServiceAccount is gone (or was recreated with another uid) is
//! deleted, and deleting a ServiceAccount deletes its token Secrets. Without a key the controller does
//! not run, as upstream's.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use k3rs_common::jwt::Signer;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Error as KubeError, ResourceExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::informers::{Change, Informer, key_of, split_key};
use crate::queue::{Outcome, Queue, run_workers};

pub const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
pub const ANN_NAME: &str = "kubernetes.io/service-account.name";
pub const ANN_UID: &str = "kubernetes.io/service-account.uid";

/// Reads the signing key (PKCS#8 PEM, as `server/tls/service.key`).
pub fn load_signer(path: &Path) -> Result<Signer, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Signer::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
}

struct Tokens {
    client: kube::Client,
    signer: Signer,
    ca: Arc<String>,
    secrets: Informer<Secret>,
    accounts: Informer<ServiceAccount>,
}

fn is_token(s: &Secret) -> bool {
    s.type_.as_deref() == Some(TOKEN_TYPE)
}

/// Work keys: `secret:<ns>/<name>`, and `account:<ns>/<name>/<uid>` for a deleted ServiceAccount.
pub fn start(
    ctx: &Ctx,
    signer: Signer,
    ca: Arc<String>,
    shutdown: &CancellationToken,
) -> JoinSet<()> {
    let secrets: Informer<Secret> = ctx.informers.get();
    let accounts: Informer<ServiceAccount> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let q = queue.clone();
    secrets.on_event(move |c| {
        let s = c.object();
        if is_token(s) && !matches!(c, Change::Deleted(_)) {
            q.add(format!("secret:{}", key_of(s)));
        }
    });
    let (q, all) = (queue.clone(), secrets.clone());
    accounts.on_event(move |c| {
        let sa = c.object();
        let ns = sa.namespace().unwrap_or_default();
        if let Change::Deleted(_) = c {
            q.add(format!(
                "account:{}/{}",
                key_of(sa),
                sa.uid().unwrap_or_default()
            ));
            return;
        }
        // A new ServiceAccount may be what a waiting Secret names.
        for s in all.list_in(&ns) {
            if is_token(&s) && s.annotations().get(ANN_NAME) == Some(&sa.name_any()) {
                q.add(format!("secret:{}", key_of(s.as_ref())));
            }
        }
    });
    let t = Arc::new(Tokens {
        client: ctx.client.clone(),
        signer,
        ca,
        secrets,
        accounts,
    });
    run_workers(
        "serviceaccount-token",
        queue,
        3,
        shutdown.clone(),
        move |key: String| {
            let t = t.clone();
            async move {
                match key.split_once(':') {
                    Some(("secret", k)) => t.sync_secret(k).await,
                    Some(("account", k)) => t.account_deleted(k).await,
                    _ => Ok(None),
                }
            }
        },
    )
}

impl Tokens {
    async fn delete_secret(&self, secret: &Secret) -> Result<(), crate::Error> {
        let api: Api<Secret> =
            Api::namespaced(self.client.clone(), &secret.namespace().unwrap_or_default());
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: secret.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&secret.name_any(), &dp).await {
            Ok(_) => {
                tracing::info!(secret = %key_of(secret), "deleted the token of a gone service account");
                Ok(())
            }
            Err(KubeError::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    async fn sync_secret(&self, key: &str) -> Outcome {
        self.secrets.synced().await;
        self.accounts.synced().await;
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(secret) = self.secrets.get(Some(ns), name) else {
            return Ok(None);
        };
        if !is_token(&secret) || secret.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let annotations = secret.annotations();
        let Some(sa_name) = annotations.get(ANN_NAME).cloned() else {
            return Ok(None);
        };
        let wanted_uid = annotations.get(ANN_UID).cloned();
        // The cache may lag a just-created account: ask the API before deleting anything.
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let account = match self.accounts.get(Some(ns), &sa_name) {
            Some(sa) => Some((*sa).clone()),
            None => accounts.get_opt(&sa_name).await?,
        };
        let account = account.filter(|sa| {
            wanted_uid
                .as_deref()
                .is_none_or(|u| u.is_empty() || Some(u) == sa.uid().as_deref())
        });
        let Some(account) = account else {
            // A Secret naming an account that never existed waits for it, as upstream's; one whose
            // account was deleted (the uid it recorded is gone) goes.
            if wanted_uid.is_some_and(|u| !u.is_empty()) {
                self.delete_secret(&secret).await?;
            }
            return Ok(None);
        };
        let data = secret.data.clone().unwrap_or_default();
        let has = |k: &str| data.get(k).is_some_and(|v| !v.0.is_empty());
        let uid = account.uid().unwrap_or_default();
        if has("token")
            && has("ca.crt")
            && has("namespace")
            && annotations.get(ANN_UID) == Some(&uid)
        {
            return Ok(None);
        }
        let mut fill: BTreeMap<&str, ByteString> = BTreeMap::new();
        if !has("token") {
            let claims = json!({
                "iss": "kubernetes/serviceaccount",
                "sub": format!("system:serviceaccount:{ns}:{sa_name}"),
                "kubernetes.io/serviceaccount/namespace": ns,
                "kubernetes.io/serviceaccount/secret.name": name,
                "kubernetes.io/serviceaccount/service-account.name": sa_name,
                "kubernetes.io/serviceaccount/service-account.uid": uid,
            });
            let token = self
                .signer
                .sign(&claims)
                .map_err(|e| crate::Error::Sync(format!("signing a token for {key}: {e}")))?;
            fill.insert("token", ByteString(token.into_bytes()));
        }
        if !has("ca.crt") {
            fill.insert("ca.crt", ByteString(self.ca.as_bytes().to_vec()));
        }
        if !has("namespace") {
            fill.insert("namespace", ByteString(ns.as_bytes().to_vec()));
        }
        let patch = json!({
            "metadata": {"resourceVersion": secret.resource_version(),
                "annotations": {ANN_NAME: sa_name, ANN_UID: uid}},
            "data": fill,
        });
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(secret = %key, account = %sa_name, "populated a service-account token");
                Ok(None)
            }
            Err(KubeError::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// A deleted ServiceAccount's token Secrets go with it.
    async fn account_deleted(&self, key: &str) -> Outcome {
        let mut parts = key.splitn(3, '/');
        let (Some(ns), Some(name), Some(uid)) = (parts.next(), parts.next(), parts.next()) else {
            return Ok(None);
        };
        for s in self.secrets.list_in(ns) {
            let a = s.annotations();
            if is_token(&s)
                && a.get(ANN_NAME).map(String::as_str) == Some(name)
                && a.get(ANN_UID).is_none_or(|u| u.is_empty() || u == uid)
            {
                self.delete_secret(&s).await?;
            }
        }
        Ok(None)
    }
}
