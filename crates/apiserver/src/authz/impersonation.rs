//! Impersonation (`kubectl --as`, `--as-group`, `--as-uid`): the `Impersonate-*` headers make a request act
//! as another user, when the caller may `impersonate` that user (or service account), each group, the uid
//! and each extra value, as upstream's impersonation filter.

use std::collections::BTreeMap;

use hyper::HeaderMap;

use super::{Attributes, Decision, authorize, forbidden};
use crate::api::Api;
use crate::auth::{ANONYMOUS, AUTHENTICATED, UNAUTHENTICATED, UserInfo};
use crate::status::ApiError;

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA: &str = "impersonate-extra-";

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .collect()
}

/// Percent-decoding of an extra key as upstream unescapes it (`%2F` → `/`).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        if bytes[i] == b'%'
            && i + 3 <= bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The user the request acts as: `user` itself without impersonation headers, else the impersonated
/// user once every part is authorized.
pub fn impersonate(api: &Api, headers: &HeaderMap, user: UserInfo) -> Result<UserInfo, ApiError> {
    let target_user = values(headers, USER).into_iter().next();
    let groups = values(headers, GROUP);
    let uid = values(headers, UID).into_iter().next();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix(EXTRA)
            && let Ok(v) = value.to_str()
        {
            extra.entry(unescape(key)).or_default().push(v.to_string());
        }
    }
    let Some(name) = target_user else {
        if !groups.is_empty() || uid.is_some() || !extra.is_empty() {
            let what = if !groups.is_empty() {
                "groups"
            } else if uid.is_some() {
                "uid"
            } else {
                "extra"
            };
            return Err(ApiError::bad_request(format!(
                "requested {what} without impersonating a user"
            )));
        }
        return Ok(user);
    };
    let check =
        |resource: &str, sub: &str, namespace: &str, object: &str| -> Result<(), ApiError> {
            let attrs = Attributes {
                user: user.clone(),
                verb: "impersonate".into(),
                resource_request: true,
                group: if resource == "userextras" || resource == "uids" {
                    "authentication.k8s.io".into()
                } else {
                    String::new()
                },
                version: "v1".into(),
                resource: resource.into(),
                subresource: sub.into(),
                namespace: namespace.into(),
                name: object.into(),
                path: String::new(),
            };
            match authorize(api, &attrs) {
                Decision::Allow => Ok(()),
                Decision::Deny(reason) => Err(forbidden(&attrs, &reason)),
            }
        };
    let mut out_groups = groups.clone();
    match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((ns, sa)) => {
            check("serviceaccounts", "", ns, sa)?;
            if groups.is_empty() {
                out_groups = vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                ];
            }
        }
        None => check("users", "", "", &name)?,
    }
    for g in &groups {
        check("groups", "", "", g)?;
    }
    if let Some(u) = &uid {
        check("uids", "", "", u)?;
    }
    for (k, vs) in &extra {
        for v in vs {
            check("userextras", k, "", v)?;
        }
    }
    if name == ANONYMOUS {
        if !out_groups.iter().any(|g| g == UNAUTHENTICATED) {
            out_groups.push(UNAUTHENTICATED.into());
        }
    } else if !out_groups.iter().any(|g| g == AUTHENTICATED) {
        out_groups.push(AUTHENTICATED.into());
    }
    tracing::debug!(by = %user.name, as_user = %name, "impersonating");
    Ok(UserInfo {
        name,
        uid: uid.unwrap_or_default(),
        groups: out_groups,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn extra_keys_are_unescaped() {
        assert_eq!(unescape("example.com%2fteam"), "example.com/team");
        assert_eq!(unescape("plain"), "plain");
        assert_eq!(unescape("bad%zz"), "bad%zz");
        assert_eq!(unescape("end%2"), "end%2");
    }
}
