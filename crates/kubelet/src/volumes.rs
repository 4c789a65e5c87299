//! Pod volumes on the node, under `<root-dir>/pods/<uid>/volumes/<plugin>/<name>` as upstream lays them
//! out: emptyDir (disk, or tmpfs for `medium: Memory` with its sizeLimit), hostPath (with its type
//! checks), configMap, secret, downwardAPI and projected (written by the atomic writer, `..data`
//! swapped in one rename so a reader never sees half an update; secrets and projected volumes on tmpfs),
//! serviceAccountToken projections (TokenRequest, refreshed at 80% of their life) and
//! persistentVolumeClaim backed by a hostPath or local PersistentVolume.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use k3rs_common::quantity::Quantity;
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    Secret, Volume,
};
use kube::Api;
use serde_json::json;

use crate::pods::env::{field_value, resource_value};

/// Why a volume could not be set up (upstream's `FailedMount` event text).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume:?}: {message}")]
    Setup { volume: String, message: String },
    #[error("volume {volume:?}: {source}")]
    Io {
        volume: String,
        #[source]
        source: std::io::Error,
    },
}

fn setup(volume: &str, message: impl Into<String>) -> VolumeError {
    VolumeError::Setup {
        volume: volume.into(),
        message: message.into(),
    }
}

fn io(volume: &str) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        volume: volume.into(),
        source,
    }
}

/// A token projected into a volume: when to ask for a new one.
#[derive(Debug, Clone)]
pub struct TokenState {
    pub refresh_at: SystemTime,
}

/// The volumes of one pod: their host paths, and what must be refreshed.
#[derive(Debug, Default)]
pub struct PodVolumes {
    /// Volume name → host path.
    pub paths: BTreeMap<String, PathBuf>,
    /// Projected tokens by volume name.
    pub tokens: BTreeMap<String, TokenState>,
    /// tmpfs mounts made for this pod (unmounted on teardown).
    pub mounts: Vec<PathBuf>,
}

/// What setting volumes up reads from.
pub struct Context<'a> {
    pub client: &'a kube::Client,
    pub pod_dir: &'a Path,
    pub allocatable: &'a BTreeMap<String, Quantity>,
}

fn plugin_dir(pod_dir: &Path, plugin: &str, name: &str) -> PathBuf {
    pod_dir
        .join("volumes")
        .join(format!("kubernetes.io~{plugin}"))
        .join(name)
}

fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(m), Some(Ok(p))) => m.dev() != p.dev(),
        _ => false,
    }
}

fn mount_tmpfs(path: &Path, size: Option<i128>) -> std::io::Result<bool> {
    std::fs::create_dir_all(path)?;
    if is_mountpoint(path) {
        return Ok(false);
    }
    let data = match size {
        Some(bytes) if bytes > 0 => format!("mode=0755,size={bytes}"),
        _ => "mode=0755".to_string(),
    };
    let data = std::ffi::CString::new(data).map_err(std::io::Error::other)?;
    rustix::mount::mount(
        "tmpfs",
        path,
        "tmpfs",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        Some(data.as_c_str()),
    )?;
    Ok(true)
}

/// Unmounts everything under `dir` this kubelet mounted (tmpfs volumes), then removes the directory.
pub fn teardown(pod_dir: &Path) -> std::io::Result<()> {
    let volumes = pod_dir.join("volumes");
    if let Ok(plugins) = std::fs::read_dir(&volumes) {
        for plugin in plugins.flatten() {
            for vol in std::fs::read_dir(plugin.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let p = vol.path();
                if is_mountpoint(&p) {
                    rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH)?;
                }
            }
        }
    }
    match std::fs::remove_dir_all(pod_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// One file of a volume's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Writes `payload` (relative path → file) into `dir` as upstream's atomic writer: a fresh `..<time>`
/// directory, `..data` pointing at it (swapped by rename), and each top-level entry a symlink through
/// `..data`. Returns whether anything changed.
pub fn atomic_write(
    dir: &Path,
    payload: &BTreeMap<String, FileSpec>,
    fs_group: Option<u32>,
) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data_link) {
        let cur = dir.join(current);
        let same = payload.iter().all(|(rel, f)| {
            std::fs::read(cur.join(rel)).is_ok_and(|d| d == f.data)
                && std::fs::metadata(cur.join(rel))
                    .is_ok_and(|m| m.permissions().mode() & 0o7777 == f.mode)
        }) && count_files(&cur) == payload.len();
        if same {
            return Ok(false);
        }
    }
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let ts_name = format!("..{stamp}");
    let ts = dir.join(&ts_name);
    std::fs::create_dir(&ts)?;
    for (rel, f) in payload {
        let path = ts.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &f.data)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))?;
        if let Some(gid) = fs_group {
            rustix::fs::chown(&path, None, Some(rustix::fs::Gid::from_raw(gid)))?;
        }
    }
    std::fs::set_permissions(&ts, std::fs::Permissions::from_mode(0o755))?;
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts_name, &tmp)?;
    let old = std::fs::read_link(&data_link).ok();
    std::fs::rename(&tmp, &data_link)?;
    let tops: std::collections::BTreeSet<String> = payload
        .keys()
        .map(|k| k.split('/').next().unwrap_or(k).to_string())
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old
        && old != Path::new(&ts_name)
    {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => n += count_files(&e.path()),
            Ok(_) => n += 1,
            Err(_) => {}
        }
    }
    n
}

/// Keys (or `items`) of a ConfigMap/Secret as payload files.
fn project_keys(
    volume: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
    what: &str,
    out: &mut BTreeMap<String, FileSpec>,
) -> Result<(), VolumeError> {
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                match data.get(&it.key) {
                    Some(d) => {
                        out.insert(
                            it.path.clone(),
                            FileSpec {
                                data: d.clone(),
                                mode: it.mode.map_or(default_mode, |m| m as u32),
                            },
                        );
                    }
                    None if optional => {}
                    None => {
                        return Err(setup(
                            volume,
                            format!("configmap references non-existent {what} key: {}", it.key),
                        ));
                    }
                }
            }
        }
        _ => {
            for (k, d) in data {
                out.insert(
                    k.clone(),
                    FileSpec {
                        data: d.clone(),
                        mode: default_mode,
                    },
                );
            }
        }
    }
    Ok(())
}

/// Whether an API error is 404 Not Found.
pub fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

async fn config_map_data(
    client: &kube::Client,
    ns: &str,
    name: &str,
    volume: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
    match Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(name)
        .await
    {
        Ok(cm) => {
            let mut d: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in cm.binary_data.unwrap_or_default() {
                d.insert(k, v.0);
            }
            Ok(Some(d))
        }
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(setup(volume, format!("getting configmap {ns}/{name}: {e}"))),
    }
}

async fn secret_data(
    client: &kube::Client,
    ns: &str,
    name: &str,
    volume: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
    match Api::<Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
    {
        Ok(s) => {
            let mut d: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                d.insert(k, v.into_bytes());
            }
            Ok(Some(d))
        }
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(setup(volume, format!("getting secret {ns}/{name}: {e}"))),
    }
}

fn downward_files(
    volume: &str,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    allocatable: &BTreeMap<String, Quantity>,
    out: &mut BTreeMap<String, FileSpec>,
) -> Result<(), VolumeError> {
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            field_value(pod, &f.field_path).map_err(|e| setup(volume, e.0))?
        } else if let Some(r) = &it.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or("");
            let c = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == name))
                .ok_or_else(|| setup(volume, format!("container {name:?} not found")))?;
            resource_value(
                c,
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
                allocatable,
            )
            .map_err(|e| setup(volume, e.0))?
        } else {
            String::new()
        };
        out.insert(
            it.path.clone(),
            FileSpec {
                data: value.into_bytes(),
                mode: it.mode.map_or(default_mode, |m| m as u32),
            },
        );
    }
    Ok(())
}

/// Asks for a token bound to `pod` for its service account; returns it and its expiry.
async fn request_token(
    client: &kube::Client,
    pod: &Pod,
    audience: Option<&str>,
    expiration: Option<i64>,
    volume: &str,
) -> Result<(String, SystemTime), VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let body = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
            "expirationSeconds": expiration.unwrap_or(3607),
            "boundObjectRef": {
                "apiVersion": "v1", "kind": "Pod",
                "name": pod.metadata.name, "uid": pod.metadata.uid,
            },
        },
    });
    let req = http::Request::post(format!(
        "/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"
    ))
    .header("Content-Type", "application/json")
    .body(serde_json::to_vec(&body).unwrap_or_default())
    .map_err(|e| setup(volume, e.to_string()))?;
    let resp: serde_json::Value = client
        .request(req)
        .await
        .map_err(|e| setup(volume, format!("requesting a token for {ns}/{sa}: {e}")))?;
    let token = resp["status"]["token"]
        .as_str()
        .ok_or_else(|| setup(volume, "the TokenRequest answer has no token"))?
        .to_string();
    let expiry = resp["status"]["expirationTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t.as_second().max(0) as u64))
        .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(3600));
    Ok((token, expiry))
}

/// When to renew a token that expires at `expiry`: at 80% of its life from now, at most 24 h.
fn refresh_time(expiry: SystemTime) -> SystemTime {
    let now = SystemTime::now();
    let life = expiry.duration_since(now).unwrap_or_default();
    now + (life * 4 / 5).min(Duration::from_secs(24 * 3600))
}

fn fs_group(pod: &Pod) -> Option<u32> {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok())
}

/// Sets up (or refreshes) every volume of `pod`. `state` carries what earlier calls made, so a refresh
/// rewrites only what changed and renews only tokens near their end.
pub async fn setup_all(
    ctx: &Context<'_>,
    pod: &Pod,
    state: &mut PodVolumes,
) -> Result<(), VolumeError> {
    let Some(spec) = &pod.spec else { return Ok(()) };
    for v in spec.volumes.iter().flatten() {
        let path = setup_one(ctx, pod, v, state).await?;
        state.paths.insert(v.name.clone(), path);
    }
    Ok(())
}

async fn setup_one(
    ctx: &Context<'_>,
    pod: &Pod,
    v: &Volume,
    state: &mut PodVolumes,
) -> Result<PathBuf, VolumeError> {
    let name = v.name.as_str();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let fsg = fs_group(pod);
    if let Some(e) = &v.empty_dir {
        let dir = plugin_dir(ctx.pod_dir, "empty-dir", name);
        if e.medium.as_deref() == Some("Memory") {
            let size = e
                .size_limit
                .as_ref()
                .and_then(|q| Quantity::parse(&q.0))
                .map(|q| q.nanos / 1_000_000_000)
                .or_else(|| {
                    ctx.allocatable
                        .get("memory")
                        .map(|q| q.nanos / 1_000_000_000)
                });
            if mount_tmpfs(&dir, size).map_err(io(name))? {
                state.mounts.push(dir.clone());
            }
        } else {
            std::fs::create_dir_all(&dir).map_err(io(name))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(io(name))?;
        if let Some(g) = fsg {
            rustix::fs::chown(&dir, None, Some(rustix::fs::Gid::from_raw(g)))
                .map_err(|e| io(name)(e.into()))?;
        }
        return Ok(dir);
    }
    if let Some(h) = &v.host_path {
        let p = PathBuf::from(&h.path);
        check_host_path(name, &p, h.type_.as_deref().unwrap_or(""))?;
        return Ok(p);
    }
    if let Some(c) = &v.config_map {
        let dir = plugin_dir(ctx.pod_dir, "configmap", name);
        let optional = c.optional.unwrap_or(false);
        let mode = c.default_mode.map_or(0o644, |m| m as u32);
        let mut files = BTreeMap::new();
        match config_map_data(ctx.client, ns, &c.name, name).await? {
            Some(d) => project_keys(
                name,
                &d,
                c.items.as_deref(),
                mode,
                optional,
                "ConfigMap",
                &mut files,
            )?,
            None if optional => {}
            None => return Err(setup(name, format!("configmap \"{}\" not found", c.name))),
        }
        atomic_write(&dir, &files, fsg).map_err(io(name))?;
        return Ok(dir);
    }
    if let Some(s) = &v.secret {
        let dir = plugin_dir(ctx.pod_dir, "secret", name);
        if mount_tmpfs(&dir, None).map_err(io(name))? {
            state.mounts.push(dir.clone());
        }
        let optional = s.optional.unwrap_or(false);
        let mode = s.default_mode.map_or(0o644, |m| m as u32);
        let secret_name = s.secret_name.clone().unwrap_or_default();
        let mut files = BTreeMap::new();
        match secret_data(ctx.client, ns, &secret_name, name).await? {
            Some(d) => project_keys(
                name,
                &d,
                s.items.as_deref(),
                mode,
                optional,
                "Secret",
                &mut files,
            )?,
            None if optional => {}
            None => return Err(setup(name, format!("secret \"{secret_name}\" not found"))),
        }
        atomic_write(&dir, &files, fsg).map_err(io(name))?;
        return Ok(dir);
    }
    if let Some(d) = &v.downward_api {
        let dir = plugin_dir(ctx.pod_dir, "downward-api", name);
        let mode = d.default_mode.map_or(0o644, |m| m as u32);
        let mut files = BTreeMap::new();
        downward_files(
            name,
            pod,
            d.items.as_deref().unwrap_or(&[]),
            mode,
            ctx.allocatable,
            &mut files,
        )?;
        atomic_write(&dir, &files, fsg).map_err(io(name))?;
        return Ok(dir);
    }
    if let Some(p) = &v.projected {
        let dir = plugin_dir(ctx.pod_dir, "projected", name);
        if mount_tmpfs(&dir, None).map_err(io(name))? {
            state.mounts.push(dir.clone());
        }
        let mode = p.default_mode.map_or(0o644, |m| m as u32);
        let mut files = BTreeMap::new();
        // The token file as last written, kept until it is due for renewal.
        let current = std::fs::read_link(dir.join("..data"))
            .ok()
            .map(|l| dir.join(l));
        for src in p.sources.iter().flatten() {
            if let Some(c) = &src.config_map {
                let optional = c.optional.unwrap_or(false);
                match config_map_data(ctx.client, ns, &c.name, name).await? {
                    Some(d) => project_keys(
                        name,
                        &d,
                        c.items.as_deref(),
                        mode,
                        optional,
                        "ConfigMap",
                        &mut files,
                    )?,
                    None if optional => {}
                    None => return Err(setup(name, format!("configmap \"{}\" not found", c.name))),
                }
            }
            if let Some(s) = &src.secret {
                let optional = s.optional.unwrap_or(false);
                match secret_data(ctx.client, ns, &s.name, name).await? {
                    Some(d) => project_keys(
                        name,
                        &d,
                        s.items.as_deref(),
                        mode,
                        optional,
                        "Secret",
                        &mut files,
                    )?,
                    None if optional => {}
                    None => return Err(setup(name, format!("secret \"{}\" not found", s.name))),
                }
            }
            if let Some(d) = &src.downward_api {
                downward_files(
                    name,
                    pod,
                    d.items.as_deref().unwrap_or(&[]),
                    mode,
                    ctx.allocatable,
                    &mut files,
                )?;
            }
            if let Some(t) = &src.service_account_token {
                let key = format!("{name}/{}", t.path);
                let due = state
                    .tokens
                    .get(&key)
                    .is_none_or(|s| SystemTime::now() >= s.refresh_at);
                let existing = current
                    .as_ref()
                    .and_then(|c| std::fs::read(c.join(&t.path)).ok());
                let data = match existing {
                    Some(d) if !due => d,
                    _ => {
                        let (token, expiry) = request_token(
                            ctx.client,
                            pod,
                            t.audience.as_deref(),
                            t.expiration_seconds,
                            name,
                        )
                        .await?;
                        state.tokens.insert(
                            key,
                            TokenState {
                                refresh_at: refresh_time(expiry),
                            },
                        );
                        token.into_bytes()
                    }
                };
                // Upstream writes tokens 0600 when fsGroup is unset... and owner-readable otherwise.
                files.insert(
                    t.path.clone(),
                    FileSpec {
                        data,
                        mode: if p.default_mode.is_some() {
                            mode
                        } else {
                            0o644
                        },
                    },
                );
            }
        }
        atomic_write(&dir, &files, fsg).map_err(io(name))?;
        return Ok(dir);
    }
    if let Some(c) = &v.persistent_volume_claim {
        let pvc = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns)
            .get(&c.claim_name)
            .await
            .map_err(|e| {
                setup(
                    name,
                    format!("getting persistentvolumeclaim {ns}/{}: {e}", c.claim_name),
                )
            })?;
        let pv_name = pvc
            .spec
            .and_then(|s| s.volume_name)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                setup(
                    name,
                    format!("persistentvolumeclaim {:?} is not bound", c.claim_name),
                )
            })?;
        let pv = Api::<PersistentVolume>::all(ctx.client.clone())
            .get(&pv_name)
            .await
            .map_err(|e| setup(name, format!("getting persistentvolume {pv_name}: {e}")))?;
        let spec = pv.spec.unwrap_or_default();
        let path = if let Some(h) = spec.host_path {
            let p = PathBuf::from(&h.path);
            check_host_path(name, &p, h.type_.as_deref().unwrap_or("DirectoryOrCreate"))?;
            p
        } else if let Some(l) = spec.local {
            let p = PathBuf::from(&l.path);
            if !p.exists() {
                return Err(setup(
                    name,
                    format!("local volume path {:?} does not exist", l.path),
                ));
            }
            p
        } else {
            return Err(setup(
                name,
                format!(
                    "persistentvolume {pv_name}: only hostPath and local volumes are supported on this node"
                ),
            ));
        };
        return Ok(path);
    }
    Err(setup(name, "unsupported volume type on this node"))
}

/// hostPath's `type` checks (upstream `hostPathTypeChecker`).
fn check_host_path(volume: &str, p: &Path, kind: &str) -> Result<(), VolumeError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(p);
    let want = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(setup(
                volume,
                format!(
                    "hostPath type check failed: {} is not a {what}",
                    p.display()
                ),
            ))
        }
    };
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(p).map_err(io(volume))?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
                    .map_err(io(volume))?;
                return Ok(());
            }
            want(meta.is_ok_and(|m| m.is_dir()), "directory")
        }
        "Directory" => want(meta.is_ok_and(|m| m.is_dir()), "directory"),
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(io(volume))?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(io(volume))?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))
                    .map_err(io(volume))?;
                return Ok(());
            }
            want(meta.is_ok_and(|m| m.is_file()), "file")
        }
        "File" => want(meta.is_ok_and(|m| m.is_file()), "file"),
        "Socket" => want(meta.is_ok_and(|m| m.file_type().is_socket()), "socket"),
        "CharDevice" => want(
            meta.is_ok_and(|m| m.file_type().is_char_device()),
            "character device",
        ),
        "BlockDevice" => want(
            meta.is_ok_and(|m| m.file_type().is_block_device()),
            "block device",
        ),
        other => Err(setup(volume, format!("unknown hostPath type {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_swaps_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let f = |s: &str| FileSpec {
            data: s.as_bytes().to_vec(),
            mode: 0o644,
        };
        let mut p = BTreeMap::from([("a".to_string(), f("1")), ("d/b".to_string(), f("2"))]);
        assert!(atomic_write(dir.path(), &p, None).unwrap());
        assert_eq!(std::fs::read_to_string(dir.path().join("a")).unwrap(), "1");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("d/b")).unwrap(),
            "2"
        );
        assert!(!atomic_write(dir.path(), &p, None).unwrap());
        p.insert("a".into(), f("3"));
        p.remove("d/b");
        assert!(atomic_write(dir.path(), &p, None).unwrap());
        assert_eq!(std::fs::read_to_string(dir.path().join("a")).unwrap(), "3");
        assert!(std::fs::symlink_metadata(dir.path().join("d")).is_err());
        let stamps = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..1"))
            .count();
        assert_eq!(stamps, 1);
    }
}
