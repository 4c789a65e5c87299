//! Air-gap image import, as K3s preloads `<data-dir>/agent/images/`: an OCI image-layout tarball or a
//! `docker save` archive (`.tar`, or compressed: `.tar.gz`/`.tgz`, `.tar.zst`/`.tzst`) is streamed into
//! containerd's content store and its images are created, through containerd's own gRPC services (CRI
//! has no import call in containerd 1.6), under a lease so nothing is collected half-way, with the
//! garbage-collection labels that keep a manifest's config and layers. A docker archive's images get a
//! Docker schema-2 manifest made here from its config and layers, as containerd's own importer does. The
//! CRI plugin sees the images through containerd's events and unpacks them on first use.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    CreateImageRequest, CreateRequest, DeleteRequest, Image, InfoRequest, UpdateImageRequest,
    WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use serde_json::Value;
use tonic::transport::Channel;

/// The containerd namespace the CRI plugin keeps Kubernetes' images in.
pub const NAMESPACE: &str = "k8s.io";
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("containerd {call}: {status}")]
    Call {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("connecting to containerd at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
}

/// A regular file inside the tarball: where its data starts and how long it is.
#[derive(Debug, Clone, Copy)]
struct Member {
    offset: u64,
    size: u64,
}

fn octal(field: &[u8]) -> u64 {
    let s: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    u64::from_str_radix(s.trim(), 8).unwrap_or(0)
}

fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(&field[..field.iter().position(|b| *b == 0).unwrap_or(field.len())])
        .into_owned()
}

/// The regular files of a tar archive by path (ustar, with PAX `path` and GNU long names).
fn index_tar(file: &mut std::fs::File) -> std::io::Result<HashMap<String, Member>> {
    let mut out = HashMap::new();
    let mut pos = 0u64;
    let mut long_name: Option<String> = None;
    loop {
        let mut h = [0u8; 512];
        file.seek(SeekFrom::Start(pos))?;
        if file.read_exact(&mut h).is_err() || h.iter().all(|b| *b == 0) {
            break;
        }
        let size = octal(&h[124..136]);
        let data = pos + 512;
        let kind = h[156];
        let mut name = text(&h[0..100]);
        let prefix = text(&h[345..500]);
        if &h[257..262] == b"ustar" && !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
        match kind {
            b'x' | b'L' => {
                let mut buf = vec![0u8; size as usize];
                file.seek(SeekFrom::Start(data))?;
                file.read_exact(&mut buf)?;
                let body = String::from_utf8_lossy(&buf);
                long_name = if kind == b'L' {
                    Some(body.trim_end_matches('\0').to_string())
                } else {
                    // PAX records: "<len> path=<value>\n".
                    body.lines()
                        .find_map(|l| {
                            l.split_once(' ')
                                .and_then(|(_, kv)| kv.strip_prefix("path="))
                        })
                        .map(str::to_string)
                };
            }
            b'0' | 0 => {
                let name = long_name.take().unwrap_or(name);
                let name = name.trim_start_matches("./").to_string();
                out.insert(name, Member { offset: data, size });
            }
            _ => long_name = None,
        }
        pos = data + size.div_ceil(512) * 512;
    }
    Ok(out)
}

fn read_member(file: &mut std::fs::File, m: Member) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; m.size as usize];
    file.seek(SeekFrom::Start(m.offset))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

fn with_headers<T>(msg: T, lease: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    let md = req.metadata_mut();
    md.insert(
        "containerd-namespace",
        NAMESPACE.parse().expect("ascii namespace"),
    );
    if let Some(l) = lease.and_then(|l| l.parse().ok()) {
        md.insert("containerd-lease", l);
    }
    req
}

/// The garbage-collection labels of a manifest or index: what it references.
fn gc_labels(blob: &[u8]) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    let Ok(v) = serde_json::from_slice::<Value>(blob) else {
        return labels;
    };
    if let Some(d) = v["config"]["digest"].as_str() {
        labels.insert("containerd.io/gc.ref.content.config".into(), d.into());
    }
    for (i, l) in v["layers"].as_array().into_iter().flatten().enumerate() {
        if let Some(d) = l["digest"].as_str() {
            labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), d.into());
        }
    }
    for (i, m) in v["manifests"].as_array().into_iter().flatten().enumerate() {
        if let Some(d) = m["digest"].as_str() {
            labels.insert(format!("containerd.io/gc.ref.content.m.{i}"), d.into());
        }
    }
    labels
}

/// The compression of an air-gap file, by its name; None when it is not an image archive.
fn archive_kind(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with('.') {
        return None;
    }
    [
        (".tar", "tar"),
        (".tar.gz", "gzip"),
        (".tgz", "gzip"),
        (".tar.zst", "zstd"),
        (".tzst", "zstd"),
    ]
    .into_iter()
    .find(|(ext, _)| name.ends_with(ext))
    .map(|(_, k)| k)
}

/// Decompresses `path` next to itself (a hidden file, removed by the caller) so it can be read at random.
fn decompress(path: &Path, kind: &str) -> Result<PathBuf, Error> {
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let out = path.with_file_name(format!(".{name}.k3rs-decompressed"));
    let input = std::io::BufReader::new(std::fs::File::open(path).map_err(read_err)?);
    let mut output = std::fs::File::create(&out).map_err(read_err)?;
    let copied = match kind {
        "gzip" => std::io::copy(&mut flate2::read::MultiGzDecoder::new(input), &mut output),
        _ => match ruzstd::decoding::StreamingDecoder::new(input) {
            Ok(mut d) => std::io::copy(&mut d, &mut output),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        },
    };
    if let Err(source) = copied {
        let _ = std::fs::remove_file(&out);
        return Err(Error::Format {
            path: path.to_path_buf(),
            message: format!("decompressing ({kind}): {source}"),
        });
    }
    Ok(out)
}

/// Imports one air-gap archive; returns the names of the images created or updated.
pub async fn import(socket: &Path, tarball: &Path) -> Result<Vec<String>, Error> {
    match archive_kind(tarball) {
        Some("tar") | None => import_tar(socket, tarball, tarball).await,
        Some(kind) => {
            let plain = decompress(tarball, kind)?;
            let r = import_tar(socket, &plain, tarball).await;
            let _ = std::fs::remove_file(&plain);
            r
        }
    }
}

/// Imports the uncompressed tarball `tarball` (named `shown` in errors).
async fn import_tar(socket: &Path, tarball: &Path, shown: &Path) -> Result<Vec<String>, Error> {
    let path = shown.to_path_buf();
    let read_err = |source| Error::Read {
        path: path.clone(),
        source,
    };
    let format = |message: String| Error::Format {
        path: path.clone(),
        message,
    };
    let mut file = std::fs::File::open(tarball).map_err(read_err)?;
    let members = index_tar(&mut file).map_err(read_err)?;
    let layout = if let Some(index) = members.get("index.json") {
        let index: Value =
            serde_json::from_slice(&read_member(&mut file, *index).map_err(read_err)?)
                .map_err(|e| format(format!("index.json: {e}")))?;
        Layout::Oci(index)
    } else if let Some(m) = members.get("manifest.json") {
        let manifest: Value =
            serde_json::from_slice(&read_member(&mut file, *m).map_err(read_err)?)
                .map_err(|e| format(format!("manifest.json: {e}")))?;
        Layout::Docker(manifest)
    } else {
        return Err(format(
            "neither index.json (an OCI image layout) nor manifest.json (a `docker save` archive)"
                .into(),
        ));
    };
    let channel = containerd_client::connect(socket)
        .await
        .map_err(|source| Error::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let mut leases = LeasesClient::new(channel.clone());
    let lease_id = format!(
        "k3rs-import-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    leases
        .create(with_headers(
            CreateRequest {
                id: lease_id.clone(),
                labels: HashMap::new(),
            },
            None,
        ))
        .await
        .map_err(|status| Error::Call {
            call: "Leases.Create",
            status,
        })?;
    let result = match &layout {
        Layout::Oci(index) => {
            import_with_lease(&channel, &mut file, &members, index, &lease_id, &path).await
        }
        Layout::Docker(manifest) => {
            import_docker(&channel, &mut file, &members, manifest, &lease_id, &path).await
        }
    };
    // A synchronous delete runs containerd's garbage collection now: what survives is referenced by
    // an image (through the labels above), so a broken reference shows at import, not at first use.
    let _ = leases
        .delete(with_headers(
            DeleteRequest {
                id: lease_id,
                sync: true,
            },
            None,
        ))
        .await;
    result
}

async fn import_with_lease(
    channel: &Channel,
    file: &mut std::fs::File,
    members: &HashMap<String, Member>,
    index: &Value,
    lease: &str,
    path: &Path,
) -> Result<Vec<String>, Error> {
    let mut content = ContentClient::new(channel.clone());
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    // Every blob, children before the manifests and indexes that reference them.
    let blobs: Vec<(&String, &Member)> = members
        .iter()
        .filter(|(n, _)| n.starts_with("blobs/"))
        .collect();
    let mut parents = Vec::new();
    for (name, member) in blobs {
        let Some((algo, hex)) = name.strip_prefix("blobs/").and_then(|r| r.split_once('/')) else {
            continue;
        };
        let digest = format!("{algo}:{hex}");
        // Small JSON blobs may be manifests or indexes: written last, with their labels.
        if member.size < (4 << 20) {
            let data = read_member(file, *member).map_err(read_err)?;
            let labels = gc_labels(&data);
            if !labels.is_empty() {
                parents.push((digest, data, labels));
                continue;
            }
        }
        write_blob(
            &mut content,
            file,
            &digest,
            *member,
            HashMap::new(),
            lease,
            path,
        )
        .await?;
    }
    for (digest, data, labels) in parents {
        let member = Member {
            offset: 0,
            size: data.len() as u64,
        };
        write_bytes(&mut content, &digest, &data, member, labels, lease).await?;
    }
    // Images: one per named entry of index.json.
    let mut images = ImagesClient::new(channel.clone());
    let mut names = Vec::new();
    for m in index["manifests"].as_array().into_iter().flatten() {
        let ann = &m["annotations"];
        let name = ann["io.containerd.image.name"]
            .as_str()
            .or_else(|| {
                ann["org.opencontainers.image.ref.name"]
                    .as_str()
                    .filter(|n| n.contains('/') || n.contains(':'))
            })
            .map(str::to_string);
        let Some(name) = name else {
            tracing::warn!(tarball = %path.display(), "an image without a name is skipped");
            continue;
        };
        let target = Descriptor {
            media_type: m["mediaType"].as_str().unwrap_or_default().into(),
            digest: m["digest"].as_str().unwrap_or_default().into(),
            size: m["size"].as_i64().unwrap_or(0),
            annotations: ann
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
        };
        put_image(&mut images, &name, target, lease).await?;
        names.push(name);
    }
    Ok(names)
}

/// Creates image `name` pointing at `target`, or points the existing one there.
async fn put_image(
    images: &mut ImagesClient<Channel>,
    name: &str,
    target: Descriptor,
    lease: &str,
) -> Result<(), Error> {
    let image = Image {
        name: name.to_string(),
        labels: HashMap::new(),
        target: Some(target),
        created_at: None,
        updated_at: None,
    };
    let created = images
        .create(with_headers(
            CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            },
            Some(lease),
        ))
        .await;
    match created {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            images
                .update(with_headers(
                    UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    },
                    Some(lease),
                ))
                .await
                .map_err(|status| Error::Call {
                    call: "Images.Update",
                    status,
                })?;
        }
        Err(status) => {
            return Err(Error::Call {
                call: "Images.Create",
                status,
            });
        }
    }
    Ok(())
}

/// What an archive holds.
enum Layout {
    /// An OCI image layout's `index.json`.
    Oci(Value),
    /// A `docker save` archive's `manifest.json`.
    Docker(Value),
}

/// `busybox:1.36` → `docker.io/library/busybox:1.36`, `ghcr.io/x/y:1` stays (Docker's normalisation).
pub fn normalize_image_name(name: &str) -> String {
    let first = name.split('/').next().unwrap_or("");
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_registry {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    }
}

/// Imports a `docker save` archive: its configs and layers as they are, and for every image a Docker
/// schema-2 manifest made from them, then the images by their `RepoTags`.
async fn import_docker(
    channel: &Channel,
    file: &mut std::fs::File,
    members: &HashMap<String, Member>,
    manifest: &Value,
    lease: &str,
    path: &Path,
) -> Result<Vec<String>, Error> {
    use sha2::Digest;
    let mut content = ContentClient::new(channel.clone());
    let mut images = ImagesClient::new(channel.clone());
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let format = |message: String| Error::Format {
        path: path.to_path_buf(),
        message,
    };
    let member = |name: &str| {
        members
            .get(name.trim_start_matches("./"))
            .copied()
            .ok_or_else(|| {
                format(format!(
                    "manifest.json names {name}, which the archive lacks"
                ))
            })
    };
    // sha256 of a member, read in chunks.
    let digest_of = |file: &mut std::fs::File, m: Member| -> std::io::Result<String> {
        let mut h = sha2::Sha256::new();
        file.seek(SeekFrom::Start(m.offset))?;
        let mut left = m.size;
        let mut buf = vec![0u8; CHUNK];
        while left > 0 {
            let n = (left as usize).min(CHUNK);
            file.read_exact(&mut buf[..n])?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        Ok(format!("sha256:{}", hex(&h.finalize())))
    };
    let mut names = Vec::new();
    for entry in manifest.as_array().into_iter().flatten() {
        let config_name = entry["Config"]
            .as_str()
            .ok_or_else(|| format("a manifest.json entry has no Config".into()))?;
        let config_member = member(config_name)?;
        let config = read_member(file, config_member).map_err(read_err)?;
        let config_digest = format!("sha256:{}", hex(&sha2::Sha256::digest(&config)));
        write_bytes(
            &mut content,
            &config_digest,
            &config,
            config_member,
            HashMap::new(),
            lease,
        )
        .await?;
        let mut layers = Vec::new();
        for l in entry["Layers"].as_array().into_iter().flatten() {
            let lname = l.as_str().unwrap_or_default();
            let m = member(lname)?;
            let digest = digest_of(file, m).map_err(read_err)?;
            write_blob(&mut content, file, &digest, m, HashMap::new(), lease, path).await?;
            layers.push(serde_json::json!({
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar",
                "size": m.size,
                "digest": digest,
            }));
        }
        let docker_manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": config.len(),
                "digest": config_digest,
            },
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&docker_manifest).map_err(|e| format(e.to_string()))?;
        let digest = format!("sha256:{}", hex(&sha2::Sha256::digest(&bytes)));
        let m = Member {
            offset: 0,
            size: bytes.len() as u64,
        };
        write_bytes(&mut content, &digest, &bytes, m, gc_labels(&bytes), lease).await?;
        for tag in entry["RepoTags"].as_array().into_iter().flatten() {
            let Some(tag) = tag.as_str() else { continue };
            let name = normalize_image_name(tag);
            let target = Descriptor {
                media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
                digest: digest.clone(),
                size: bytes.len() as i64,
                annotations: HashMap::new(),
            };
            put_image(&mut images, &name, target, lease).await?;
            names.push(name);
        }
    }
    Ok(names)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn exists(content: &mut ContentClient<Channel>, digest: &str) -> bool {
    content
        .info(with_headers(
            InfoRequest {
                digest: digest.into(),
            },
            None,
        ))
        .await
        .is_ok()
}

/// Streams one blob from the tarball into the content store (skipped when already there).
async fn write_blob(
    content: &mut ContentClient<Channel>,
    file: &mut std::fs::File,
    digest: &str,
    member: Member,
    labels: HashMap<String, String>,
    lease: &str,
    path: &Path,
) -> Result<(), Error> {
    if exists(content, digest).await {
        return Ok(());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
    let reference = format!("k3rs-import-{digest}");
    let mut f = file.try_clone().map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (d, r) = (digest.to_string(), reference.clone());
    // A blocking reader feeds the stream a chunk at a time (layers may be large).
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        f.seek(SeekFrom::Start(member.offset))?;
        let mut offset = 0u64;
        loop {
            let want = (member.size - offset).min(CHUNK as u64) as usize;
            let mut buf = vec![0u8; want];
            f.read_exact(&mut buf)?;
            let last = offset + want as u64 >= member.size;
            let msg = WriteContentRequest {
                action: if last {
                    WriteAction::Commit as i32
                } else {
                    WriteAction::Write as i32
                },
                r#ref: r.clone(),
                total: member.size as i64,
                expected: d.clone(),
                offset: offset as i64,
                data: buf,
                labels: if last { labels.clone() } else { HashMap::new() },
            };
            offset += want as u64;
            if tx.blocking_send(msg).is_err() || last {
                return Ok(());
            }
        }
    });
    let outcome = write_stream(
        content,
        tokio_stream::wrappers::ReceiverStream::new(rx),
        lease,
    )
    .await;
    match reader.await {
        Ok(Ok(())) => outcome,
        Ok(Err(source)) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) => Err(Error::Format {
            path: path.to_path_buf(),
            message: format!("reader task: {e}"),
        }),
    }
}

/// Writes a blob already in memory (a manifest or index, with its labels).
async fn write_bytes(
    content: &mut ContentClient<Channel>,
    digest: &str,
    data: &[u8],
    member: Member,
    labels: HashMap<String, String>,
    lease: &str,
) -> Result<(), Error> {
    if exists(content, digest).await {
        return Ok(());
    }
    let msg = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: format!("k3rs-import-{digest}"),
        total: member.size as i64,
        expected: digest.into(),
        offset: 0,
        data: data.to_vec(),
        labels,
    };
    write_stream(content, futures_util::stream::iter([msg]), lease).await
}

/// Sends one blob's write messages and waits for containerd's answers; a blob that is already
/// there counts as written.
async fn write_stream<S>(
    content: &mut ContentClient<Channel>,
    stream: S,
    lease: &str,
) -> Result<(), Error>
where
    S: futures_util::Stream<Item = WriteContentRequest> + Send + 'static,
{
    let call = |status| Error::Call {
        call: "Content.Write",
        status,
    };
    let mut inbound = match content.write(with_headers(stream, Some(lease))).await {
        Ok(resp) => resp.into_inner(),
        Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
        Err(s) => return Err(call(s)),
    };
    loop {
        match inbound.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(call(s)),
        }
    }
}

/// K3s's air-gap preload: imports every archive in `dir` (`*.tar`, `*.tar.gz`, `*.tgz`, `*.tar.zst`,
/// `*.tzst`) now and again whenever one is added or
/// changed, until `shutdown`. A file that fails is reported and retried when it changes.
pub async fn preload(
    socket: PathBuf,
    dir: PathBuf,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
    first_pass: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut first_pass = first_pass;
    let mut seen: HashMap<PathBuf, (std::time::SystemTime, u64)> = HashMap::new();
    loop {
        let mut found: Vec<(PathBuf, (std::time::SystemTime, u64))> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| archive_kind(&e.path()).is_some())
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((e.path(), (m.modified().ok()?, m.len())))
            })
            .collect();
        found.sort();
        for (path, stamp) in found {
            if seen.get(&path) == Some(&stamp) {
                continue;
            }
            // A file still being copied in changes size between looks: wait until it holds still.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let now = std::fs::metadata(&path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            if now != Some(stamp) {
                continue;
            }
            let start = std::time::Instant::now();
            match import(&socket, &path).await {
                Ok(names) => tracing::info!(file = %path.display(), images = ?names,
                    took = ?start.elapsed(), "imported air-gap images"),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "importing air-gap images failed")
                }
            }
            seen.insert(path, stamp);
        }
        if let Some(done) = first_pass.take() {
            let _ = done.send(());
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_by_name_and_names_as_docker_normalises_them() {
        assert_eq!(archive_kind(Path::new("/i/a.tar")), Some("tar"));
        assert_eq!(archive_kind(Path::new("/i/a.tar.gz")), Some("gzip"));
        assert_eq!(archive_kind(Path::new("/i/a.tgz")), Some("gzip"));
        assert_eq!(archive_kind(Path::new("/i/a.tar.zst")), Some("zstd"));
        assert_eq!(archive_kind(Path::new("/i/a.tzst")), Some("zstd"));
        assert_eq!(archive_kind(Path::new("/i/a.txt")), None);
        assert_eq!(archive_kind(Path::new("/i/.a.tar.k3rs-decompressed")), None);
        assert_eq!(
            normalize_image_name("busybox:1.36"),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            normalize_image_name("rancher/pause:3.6"),
            "docker.io/rancher/pause:3.6"
        );
        assert_eq!(normalize_image_name("ghcr.io/a/b:1"), "ghcr.io/a/b:1");
        assert_eq!(normalize_image_name("localhost/a:1"), "localhost/a:1");
        assert_eq!(normalize_image_name("reg:5000/a:1"), "reg:5000/a:1");
    }

    #[test]
    fn compressed_archives_decompress() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let gz = dir.path().join("x.tar.gz");
        let mut e = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        e.write_all(&data).unwrap();
        e.finish().unwrap();
        let out = decompress(&gz, "gzip").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        let zst = dir.path().join("x.tar.zst");
        std::fs::write(
            &zst,
            ruzstd::encoding::compress_to_vec(
                &data[..],
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
        )
        .unwrap();
        let out = decompress(&zst, "zstd").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        std::fs::write(&zst, b"not zstd").unwrap();
        assert!(decompress(&zst, "zstd").is_err());
        assert!(!dir.path().join(".x.tar.zst.k3rs-decompressed").exists());
    }

    #[test]
    fn manifests_reference_their_config_and_layers() {
        let m = br#"{"config":{"digest":"sha256:c"},"layers":[{"digest":"sha256:l0"},{"digest":"sha256:l1"}]}"#;
        let l = gc_labels(m);
        assert_eq!(l["containerd.io/gc.ref.content.config"], "sha256:c");
        assert_eq!(l["containerd.io/gc.ref.content.l.1"], "sha256:l1");
        assert!(gc_labels(b"\x00binary").is_empty());
    }
}
