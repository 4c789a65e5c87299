//! Starting and stopping one container the way upstream's `kuberuntime_container.go` does: the image
//! (present, or pulled per `imagePullPolicy` with the pod's pull secrets), the environment, mounts
//! (volumes, the managed `/etc/hosts`, the termination-message file), create and start, the postStart
//! hook; and on stop the preStop hook within the grace period, then SIGTERM and SIGKILL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, Secret};
use kube::Api;

use super::env::{EnvError, Source};
use super::spec::{self, ContainerInputs};
use super::{Shared, pod_key};
use crate::cri::{Cri, api};
use crate::runtime;

/// Why a container did not start: the waiting reason upstream reports, and its message.
#[derive(Debug, Clone)]
pub struct StartError {
    pub reason: &'static str,
    pub message: String,
}

fn fail(reason: &'static str, message: impl Into<String>) -> StartError {
    StartError {
        reason,
        message: message.into(),
    }
}

/// Reads ConfigMaps and Secrets through the API (the node authorizer allows those of its pods).
pub struct ApiSource<'a>(pub &'a kube::Client);

use crate::volumes::not_found as missing;

impl Source for ApiSource<'_> {
    async fn config_map(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<k8s_openapi::api::core::v1::ConfigMap>, EnvError> {
        match Api::namespaced(self.0.clone(), ns).get(name).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(EnvError(format!("getting configmap {ns}/{name}: {e}"))),
        }
    }

    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, EnvError> {
        match Api::namespaced(self.0.clone(), ns).get(name).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(EnvError(format!("getting secret {ns}/{name}: {e}"))),
        }
    }
}

/// Upstream's default pull policy: `Always` for `:latest` or no tag, else `IfNotPresent`.
fn pull_policy(c: &Container) -> String {
    if let Some(p) = &c.image_pull_policy {
        return p.clone();
    }
    let image = c.image.as_deref().unwrap_or("");
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent".into();
    }
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always".into(),
        _ => "IfNotPresent".into(),
    }
}

/// Registry credentials for `image` from the pod's `imagePullSecrets` (`.dockerconfigjson`/`.dockercfg`).
async fn pull_auth(sh: &Shared, pod: &Pod, image: &str) -> Option<api::AuthConfig> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let registry = image
        .split_once('/')
        .map(|(r, _)| r)
        .filter(|r| r.contains('.') || r.contains(':'))
        .unwrap_or("docker.io");
    for s in pod.spec.as_ref()?.image_pull_secrets.iter().flatten() {
        let Ok(secret) = Api::<Secret>::namespaced(sh.client.clone(), ns)
            .get(&s.name)
            .await
        else {
            continue;
        };
        let data = secret.data.unwrap_or_default();
        let json: serde_json::Value = match (data.get(".dockerconfigjson"), data.get(".dockercfg"))
        {
            (Some(d), _) => serde_json::from_slice::<serde_json::Value>(&d.0)
                .map(|v| v["auths"].clone())
                .unwrap_or_default(),
            (None, Some(d)) => serde_json::from_slice(&d.0).unwrap_or_default(),
            _ => continue,
        };
        for (host, entry) in json.as_object().into_iter().flatten() {
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let host = host.split('/').next().unwrap_or(host);
            let matches =
                host == registry || (registry == "docker.io" && host == "index.docker.io");
            if matches {
                return Some(api::AuthConfig {
                    username: entry["username"].as_str().unwrap_or("").into(),
                    password: entry["password"].as_str().unwrap_or("").into(),
                    auth: entry["auth"].as_str().unwrap_or("").into(),
                    server_address: host.into(),
                    ..Default::default()
                });
            }
        }
    }
    None
}

/// Makes sure the container's image is there; returns the reference to run.
pub async fn ensure_image(
    sh: &Shared,
    cri: &mut Cri,
    pod: &Pod,
    c: &Container,
) -> Result<String, StartError> {
    let image = c.image.clone().unwrap_or_default();
    if image.is_empty() {
        return Err(fail("InvalidImageName", "the container has no image"));
    }
    let policy = pull_policy(c);
    let present = cri
        .image_status(&image)
        .await
        .map_err(|e| fail("ErrImagePull", e.to_string()))?
        .is_some();
    if present && policy != "Always" {
        sh.events.normal(
            pod,
            "Pulled",
            format!("Container image \"{image}\" already present on machine"),
        );
        return Ok(image);
    }
    if policy == "Never" {
        return Err(fail(
            "ErrImageNeverPull",
            format!("Container image \"{image}\" is not present with pull policy of Never"),
        ));
    }
    sh.events
        .normal(pod, "Pulling", format!("Pulling image \"{image}\""));
    let started = Instant::now();
    let auth = pull_auth(sh, pod, &image).await;
    match runtime::pull_image(cri, &image, auth).await {
        Ok(_) => {
            sh.events.normal(
                pod,
                "Pulled",
                format!(
                    "Successfully pulled image \"{image}\" in {:.3}s",
                    started.elapsed().as_secs_f64()
                ),
            );
            Ok(image)
        }
        // An image already here that could not be refreshed is still usable (upstream fails; K3s's air
        // gap would then never start a `:latest` image it imported).
        Err(_) if present => Ok(image),
        Err(e) => {
            let msg = format!("Failed to pull image \"{image}\": {e}");
            sh.events.warning(pod, "Failed", msg.clone());
            Err(fail("ErrImagePull", msg))
        }
    }
}

/// The managed `/etc/hosts` of a pod (upstream `managedHostsFileContent`).
pub fn hosts_file(pod: &Pod, pod_ips: &[String], domain: &str) -> String {
    let spec = spec::pod_spec(pod);
    let mut out = String::new();
    if spec::host_network(pod) {
        out.push_str(&std::fs::read_to_string("/etc/hosts").unwrap_or_default());
    } else {
        out.push_str("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
        let hostname = spec
            .hostname
            .clone()
            .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
        for ip in pod_ips {
            match &spec.subdomain {
                Some(sub) if !sub.is_empty() => {
                    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                    out.push_str(&format!(
                        "{ip}\t{hostname}.{sub}.{ns}.svc.{domain}\t{hostname}\n"
                    ));
                }
                _ => out.push_str(&format!("{ip}\t{hostname}\n")),
            }
        }
    }
    if let Some(aliases) = spec.host_aliases.as_ref().filter(|a| !a.is_empty()) {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            out.push_str(&format!(
                "{}\t{}\n",
                a.ip,
                a.hostnames.clone().unwrap_or_default().join("\t")
            ));
        }
    }
    out
}

/// Where a container's termination message is kept on the host.
pub fn termination_file(pod_dir: &Path, c: &Container, restart_count: i32) -> PathBuf {
    pod_dir
        .join("containers")
        .join(&c.name)
        .join(restart_count.to_string())
}

/// Reads a container's termination message (at most 4096 bytes); with `FallbackToLogsOnError`, the log's
/// tail for a failed container that wrote none.
pub fn termination_message(
    pod_dir: &Path,
    log: &Path,
    c: &Container,
    restart_count: i32,
    exit: i32,
) -> Option<String> {
    let mut msg = std::fs::read(termination_file(pod_dir, c, restart_count)).unwrap_or_default();
    msg.truncate(4096);
    if msg.is_empty()
        && exit != 0
        && c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
    {
        let lines = crate::logs::tail_messages(log, 80, 2048);
        return (!lines.is_empty()).then_some(lines);
    }
    (!msg.is_empty()).then(|| String::from_utf8_lossy(&msg).into_owned())
}

/// Everything about a start besides the container itself.
pub struct StartSpec<'a> {
    pub pod: &'a Pod,
    pub c: &'a Container,
    pub kind: &'static str,
    pub sandbox_id: &'a str,
    pub sandbox_config: &'a api::PodSandboxConfig,
    pub restart_count: i32,
    pub volume_paths: &'a BTreeMap<String, PathBuf>,
    pub pod_dir: &'a Path,
    pub pod_ips: &'a [String],
}

/// Creates and starts the container; returns its ID.
pub async fn start(sh: &Shared, cri: &mut Cri, s: StartSpec<'_>) -> Result<String, StartError> {
    let (pod, c) = (s.pod, s.c);
    let image = ensure_image(sh, cri, pod, c).await?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut services: Vec<k8s_openapi::api::core::v1::Service> = sh
        .services
        .state()
        .iter()
        .filter(|svc| {
            let sns = svc.metadata.namespace.as_deref();
            sns == Some(ns)
                || (sns == Some("default") && svc.metadata.name.as_deref() == Some("kubernetes"))
        })
        .map(|s| (**s).clone())
        .collect();
    services.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    // The addresses the pod has now (its API object may not show them yet).
    let mut known = pod.clone();
    {
        use k8s_openapi::api::core::v1::{HostIP, PodIP};
        let st = known.status.get_or_insert_with(Default::default);
        if let Some(ip) = s.pod_ips.first() {
            st.pod_ip = Some(ip.clone());
            st.pod_ips = Some(
                s.pod_ips
                    .iter()
                    .map(|ip| PodIP { ip: ip.clone() })
                    .collect(),
            );
        }
        if let Some(ip) = sh.host_ips.first() {
            st.host_ip = Some(ip.clone());
            st.host_ips = Some(
                sh.host_ips
                    .iter()
                    .map(|ip| HostIP { ip: ip.clone() })
                    .collect(),
            );
        }
    }
    let env = super::env::build(
        &ApiSource(&sh.client),
        &known,
        c,
        &services,
        &sh.allocatable,
    )
    .await
    .map_err(|e| fail("CreateContainerConfigError", e.0))?;
    let mut mounts =
        spec::mounts(c, s.volume_paths, &env).map_err(|m| fail("CreateContainerConfigError", m))?;
    let user_mounts: Vec<String> = mounts.iter().map(|m| m.container_path.clone()).collect();
    if !user_mounts.iter().any(|p| p == "/etc/hosts") {
        let hosts = s.pod_dir.join("etc-hosts");
        std::fs::write(&hosts, hosts_file(pod, s.pod_ips, &sh.node.cluster_domain)).map_err(
            |e| {
                fail(
                    "CreateContainerConfigError",
                    format!("writing the hosts file: {e}"),
                )
            },
        )?;
        mounts.push(api::Mount {
            container_path: "/etc/hosts".into(),
            host_path: hosts.to_string_lossy().into_owned(),
            ..Default::default()
        });
    }
    let term_path = c
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());
    if !term_path.is_empty() && !user_mounts.contains(&term_path) {
        let f = termination_file(s.pod_dir, c, s.restart_count);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| fail("CreateContainerConfigError", e.to_string()))?;
        }
        std::fs::write(&f, b"").map_err(|e| fail("CreateContainerConfigError", e.to_string()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666));
        }
        mounts.push(api::Mount {
            container_path: term_path,
            host_path: f.to_string_lossy().into_owned(),
            ..Default::default()
        });
    }
    let config = spec::container_config(
        &sh.node,
        pod,
        c,
        ContainerInputs {
            kind: s.kind,
            attempt: s.restart_count as u32,
            restart_count: s.restart_count,
            env,
            mounts,
            image: &image,
        },
    );
    let id = runtime::create_container(cri, s.sandbox_id, config, s.sandbox_config.clone())
        .await
        .map_err(|e| {
            let msg = e.to_string();
            sh.events.warning(pod, "Failed", format!("Error: {msg}"));
            fail("CreateContainerError", msg)
        })?;
    sh.events
        .normal(pod, "Created", format!("Created container: {}", c.name));
    if let Err(e) = runtime::start_container(cri, &id).await {
        let msg = e.to_string();
        sh.events.warning(pod, "Failed", format!("Error: {msg}"));
        sh.metrics
            .started_container_errors
            .get_or_create(&vec![("code", "RunContainerError".to_string())])
            .inc();
        return Err(fail("RunContainerError", msg));
    }
    sh.events
        .normal(pod, "Started", format!("Started container {}", c.name));
    sh.metrics.started_containers.inc();
    if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref())
        && let Err(msg) = run_hook(
            cri,
            &id,
            h,
            s.pod_ips.first().map(String::as_str),
            c,
            Duration::from_secs(30),
        )
        .await
    {
        sh.events.warning(pod, "FailedPostStartHook", msg.clone());
        let _ = runtime::stop_container(cri, &id, grace_of(pod)).await;
        return Err(fail("PostStartHookError", msg));
    }
    tracing::debug!(pod = %pod_key(pod), container = %c.name, id = %id, "started container");
    Ok(id)
}

/// The pod's grace period in seconds: the deletion's, else the spec's (30).
pub fn grace_of(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or(pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
        .max(0)
}

/// Runs a lifecycle hook (exec, httpGet or sleep) within `limit`.
pub async fn run_hook(
    cri: &mut Cri,
    id: &str,
    h: &LifecycleHandler,
    pod_ip: Option<&str>,
    c: &Container,
    limit: Duration,
) -> Result<(), String> {
    let work = async {
        if let Some(e) = &h.exec {
            let r = runtime::exec_sync(
                cri,
                id,
                e.command.clone().unwrap_or_default(),
                limit.as_secs() as i64,
            )
            .await
            .map_err(|e| e.to_string())?;
            if r.exit_code != 0 {
                return Err(format!(
                    "Exec lifecycle hook ({:?}) for Container \"{}\" failed - error: command exited with {}, message: {:?}",
                    e.command.clone().unwrap_or_default(),
                    c.name,
                    r.exit_code,
                    String::from_utf8_lossy(&r.stdout)
                ));
            }
        } else if let Some(g) = &h.http_get {
            let probe = k8s_openapi::api::core::v1::Probe {
                http_get: Some(g.clone()),
                ..Default::default()
            };
            let target = super::probe::Target {
                container_id: id.into(),
                pod_ip: pod_ip.unwrap_or("127.0.0.1").into(),
                container: c.clone(),
            };
            super::probe::check_once(&probe, &target, cri, limit)
                .await
                .map_err(|m| {
                    format!(
                        "HTTP lifecycle hook ({:?}) for Container \"{}\" failed - error: {m}",
                        g.path, c.name
                    )
                })?;
        } else if let Some(s) = &h.sleep {
            tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
        }
        Ok(())
    };
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(format!(
            "lifecycle hook for Container \"{}\" did not finish in {limit:?}",
            c.name
        ))
    })
}

/// Stops a running container: its preStop hook, then SIGTERM and SIGKILL when `grace` runs out.
pub async fn kill(
    sh: &Shared,
    cri: &mut Cri,
    pod: &Pod,
    c: Option<&Container>,
    id: &str,
    grace: i64,
    reason: &str,
) {
    let started = Instant::now();
    if let Some(c) = c {
        sh.events.normal(
            pod,
            "Killing",
            format!("Stopping container {}{reason}", c.name),
        );
        if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            if let Err(msg) = run_hook(
                cri,
                id,
                h,
                ip.as_deref(),
                c,
                Duration::from_secs(grace.max(1) as u64),
            )
            .await
            {
                sh.events.warning(pod, "FailedPreStopHook", msg);
            }
        }
    }
    let left = (grace - started.elapsed().as_secs() as i64).max(if grace > 0 { 2 } else { 0 });
    if let Err(e) = runtime::stop_container(cri, id, left).await {
        tracing::warn!(pod = %pod_key(pod), container = id, error = %e, "stopping a container");
    }
}
