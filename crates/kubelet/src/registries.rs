//! K3s's `registries.yaml` (`--private-registry`, default `/etc/k3rs/registries.yaml`) for the supervised
//! containerd: each `mirrors.<registry>.endpoint` list becomes containerd's
//! `certs.d/<registry>/hosts.toml` (tried in order, then the registry itself; `"*"` is every registry),
//! with the TLS settings of `configs.<endpoint host>.tls`; `configs.<host>.auth` becomes the CRI
//! plugin's registry auth. `rewrite` rules need K3s's containerd fork and are refused with a message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file as K3s documents it.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
pub struct Registries {
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    #[serde(default)]
    pub configs: BTreeMap<String, RegistryConfig>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
pub struct Mirror {
    #[serde(default)]
    pub endpoint: Vec<String>,
    #[serde(default)]
    pub rewrite: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
pub struct RegistryConfig {
    pub auth: Option<Auth>,
    pub tls: Option<Tls>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
pub struct Auth {
    pub username: Option<String>,
    pub password: Option<String>,
    pub auth: Option<String>,
    pub identity_token: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
pub struct Tls {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub ca_file: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A bad `registries.yaml`.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RegistriesError {
    pub path: PathBuf,
    pub message: String,
}

/// Reads the file; a missing file is no configuration.
pub fn load(path: &Path) -> Result<Registries, RegistriesError> {
    let err = |message: String| RegistriesError {
        path: path.to_path_buf(),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registries::default()),
        Err(e) => return Err(err(e.to_string())),
    };
    let r: Registries = serde_yaml_ng::from_str(&text).map_err(|e| err(e.to_string()))?;
    for (name, m) in &r.mirrors {
        if !m.rewrite.is_empty() {
            return Err(err(format!(
                "mirrors.{name}.rewrite needs K3s's patched containerd; Debian's containerd cannot rewrite image names"
            )));
        }
        for e in &m.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(err(format!(
                    "mirrors.{name}.endpoint {e:?}: an endpoint is an http:// or https:// URL"
                )));
            }
        }
    }
    Ok(r)
}

/// The host part (`host[:port]`) of an endpoint URL.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// `hosts.toml` of one mirrored registry.
pub fn hosts_toml(
    registry: &str,
    mirror: &Mirror,
    configs: &BTreeMap<String, RegistryConfig>,
) -> String {
    let mut out =
        String::from("# Written by k3rs from registries.yaml; changes are overwritten at start.\n");
    if registry != "*" {
        let server = if registry == "docker.io" {
            "https://registry-1.docker.io".to_string()
        } else {
            format!("https://{registry}")
        };
        out.push_str(&format!("server = {}\n", toml_str(&server)));
    }
    for endpoint in &mirror.endpoint {
        let trimmed = endpoint.trim_end_matches('/');
        let has_path = trimmed
            .split_once("://")
            .is_some_and(|(_, r)| r.contains('/'));
        let url = if has_path {
            format!("{trimmed}/v2")
        } else {
            trimmed.to_string()
        };
        out.push_str(&format!(
            "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
            toml_str(&url)
        ));
        if has_path {
            out.push_str("  override_path = true\n");
        }
        if let Some(tls) = configs.get(host_of(endpoint)).and_then(|c| c.tls.as_ref()) {
            if let Some(ca) = &tls.ca_file {
                out.push_str(&format!("  ca = {}\n", toml_str(ca)));
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                out.push_str(&format!(
                    "  client = [[{}, {}]]\n",
                    toml_str(cert),
                    toml_str(key)
                ));
            }
            if tls.insecure_skip_verify {
                out.push_str("  skip_verify = true\n");
            }
        }
    }
    out
}

/// What goes into containerd's `config.toml`: the hosts directory and the registries' credentials.
pub fn config_toml(r: &Registries, certs_dir: &Path) -> String {
    let mut out = format!(
        "\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = {}\n",
        toml_str(&certs_dir.to_string_lossy())
    );
    for (host, c) in &r.configs {
        let Some(a) = &c.auth else { continue };
        out.push_str(&format!(
            "\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.{}.auth]\n",
            toml_str(host)
        ));
        for (k, v) in [
            ("username", &a.username),
            ("password", &a.password),
            ("auth", &a.auth),
            ("identitytoken", &a.identity_token),
        ] {
            if let Some(v) = v {
                out.push_str(&format!("  {k} = {}\n", toml_str(v)));
            }
        }
    }
    out
}

/// Writes `certs.d/<registry>/hosts.toml` for every mirror (and removes directories of mirrors no longer
/// configured).
pub fn write_hosts(r: &Registries, certs_dir: &Path) -> std::io::Result<()> {
    if certs_dir.exists() {
        for e in std::fs::read_dir(certs_dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let wanted = r.mirrors.keys().any(|m| {
                if m == "*" {
                    name == "_default"
                } else {
                    *m == name
                }
            });
            if !wanted {
                std::fs::remove_dir_all(e.path())?;
            }
        }
    }
    for (registry, mirror) in &r.mirrors {
        let dir = certs_dir.join(if registry == "*" {
            "_default"
        } else {
            registry
        });
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("hosts.toml"),
            hosts_toml(registry, mirror, &r.configs),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
mirrors:
  docker.io:
    endpoint:
      - "http://172.31.240.20:5000"
      - "https://mirror.example.com/prefix"
  "*":
    endpoint: ["https://all.example.com"]
configs:
  "mirror.example.com":
    auth: {username: u, password: "p\"w"}
    tls: {ca_file: /etc/ca.pem, insecure_skip_verify: true}
"#;

    #[test]
    fn mirrors_become_hosts_files_and_auth_goes_to_the_cri_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registries.yaml");
        std::fs::write(&path, YAML).unwrap();
        let r = load(&path).unwrap();
        let hosts = hosts_toml("docker.io", &r.mirrors["docker.io"], &r.configs);
        assert!(hosts.contains("server = \"https://registry-1.docker.io\""));
        assert!(hosts.contains("[host.\"http://172.31.240.20:5000\"]"));
        assert!(hosts.contains("[host.\"https://mirror.example.com/prefix/v2\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n  ca = \"/etc/ca.pem\"\n  skip_verify = true"));
        let certs = dir.path().join("certs.d");
        std::fs::create_dir_all(certs.join("stale.example")).unwrap();
        write_hosts(&r, &certs).unwrap();
        assert!(certs.join("docker.io/hosts.toml").exists());
        assert!(certs.join("_default/hosts.toml").exists());
        assert!(!certs.join("stale.example").exists());
        let c = config_toml(&r, &certs);
        assert!(c.contains("config_path = "));
        assert!(c.contains("[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"mirror.example.com\".auth]\n  username = \"u\"\n  password = \"p\\\"w\""));
        assert_eq!(
            load(&dir.path().join("missing.yaml")).unwrap(),
            Registries::default()
        );
        std::fs::write(
            &path,
            "mirrors:\n  docker.io:\n    rewrite: {\"^a/(.*)\": \"b/$1\"}\n",
        )
        .unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("rewrite"));
        std::fs::write(
            &path,
            "mirrors:\n  docker.io:\n    endpoint: [\"mirror:5000\"]\n",
        )
        .unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("http://"));
    }
}
