//! Request parsing: the resource path (upstream's `RequestInfo`), the verb and the query parameters.

use std::collections::HashMap;

use hyper::Method;

/// What a resource request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// For `…/proxy/<path>`: the path after `proxy` (with its leading `/`; empty for none).
    pub proxy_path: Option<String>,
    /// get, list, watch, create, update, patch, delete, deletecollection
    pub verb: &'static str,
}

/// Parses `/api/v1/...` or `/apis/<group>/<version>/...` (None for other paths).
pub fn parse(method: &Method, path: &str, query: &Query) -> Option<RequestInfo> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let mut rest: Vec<&str> = rest.to_vec();
    let mut watch_path = false;
    if rest.first() == Some(&"watch") {
        watch_path = true;
        rest.remove(0);
    }
    if rest.is_empty() || rest.iter().any(|p| p.is_empty()) {
        return None;
    }
    let mut namespace = None;
    // `namespaces/<ns>/<resource>…`; `namespaces/<name>[/status|finalize]` addresses the namespace itself.
    let own_subresource = rest.len() == 3 && matches!(rest[2], "status" | "finalize");
    if rest[0] == "namespaces" && rest.len() >= 3 && !own_subresource {
        namespace = Some(rest[1].to_string());
        rest.drain(..2);
    }
    let (resource, name, subresource) = match rest.as_slice() {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(*n), None),
        [r, n, s] => (*r, Some(*n), Some(*s)),
        [r, n, "proxy", ..] => (*r, Some(*n), Some("proxy")),
        _ => return None,
    };
    let proxy_path = (subresource == Some("proxy")).then(|| {
        let marker = format!("/{}/proxy", name.unwrap_or(""));
        path.find(&marker)
            .map(|i| path[i + marker.len()..].to_string())
            .unwrap_or_default()
    });
    let watching = watch_path || query.flag("watch");
    let verb = match *method {
        Method::GET | Method::HEAD if watching => "watch",
        Method::GET | Method::HEAD if name.is_some() => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name.is_some() => "delete",
        Method::DELETE => "deletecollection",
        _ => return None,
    };
    Some(RequestInfo {
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        resource: resource.to_string(),
        name: name.map(str::to_string),
        subresource: subresource.map(str::to_string),
        proxy_path,
        verb,
    })
}

/// Decoded query parameters.
#[derive(Debug, Clone, Default)]
pub struct Query {
    params: HashMap<String, String>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let params = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        Self { params }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// A boolean parameter (`true`/`1`; upstream also accepts a bare key).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1" | "True" | ""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: Method, path: &str, q: &str) -> Option<RequestInfo> {
        parse(&method, path, &Query::parse(Some(q)))
    }

    #[test]
    fn paths_resolve_like_upstream() {
        let i = info(Method::GET, "/api/v1/namespaces/default/pods/p", "").unwrap();
        assert_eq!(
            (
                i.namespace.as_deref(),
                i.resource.as_str(),
                i.name.as_deref(),
                i.verb
            ),
            (Some("default"), "pods", Some("p"), "get")
        );
        let i = info(Method::GET, "/apis/apps/v1/deployments", "watch=true").unwrap();
        assert_eq!(
            (i.group.as_str(), i.verb, i.namespace),
            ("apps", "watch", None)
        );
        let i = info(Method::GET, "/api/v1/namespaces/kube-system", "").unwrap();
        assert_eq!(
            (i.resource.as_str(), i.name.as_deref(), i.namespace),
            ("namespaces", Some("kube-system"), None)
        );
        let i = info(Method::PUT, "/api/v1/namespaces/x/status", "").unwrap();
        assert_eq!(
            (
                i.resource.as_str(),
                i.name.as_deref(),
                i.subresource.as_deref()
            ),
            ("namespaces", Some("x"), Some("status"))
        );
        let i = info(Method::GET, "/api/v1/watch/namespaces/d/configmaps", "").unwrap();
        assert_eq!((i.verb, i.namespace.as_deref()), ("watch", Some("d")));
        let i = info(Method::DELETE, "/apis/apps/v1/namespaces/d/deployments", "").unwrap();
        assert_eq!(i.verb, "deletecollection");
        let i = info(
            Method::PATCH,
            "/apis/apps/v1/namespaces/d/deployments/x/scale",
            "",
        )
        .unwrap();
        assert_eq!(i.subresource.as_deref(), Some("scale"));
        assert!(info(Method::GET, "/version", "").is_none());
        let i = info(Method::GET, "/api/v1/nodes/n1/proxy/configz/x", "").unwrap();
        assert_eq!(
            (i.subresource.as_deref(), i.proxy_path.as_deref()),
            (Some("proxy"), Some("/configz/x"))
        );
        let i = info(Method::GET, "/api/v1/nodes/n1/proxy", "").unwrap();
        assert_eq!(i.proxy_path.as_deref(), Some(""));
    }
}
