//! End-to-end tests of the kubelet's parts against the real containerd (Debian's, started by the
//! kubelet's supervisor with its own root, state and socket — never the system's).

mod admission;
mod images;
mod pods;

use std::time::{Duration, Instant};

use anyhow::bail;
use k3rs_kubelet::containerd::{Settings, Supervisor};
use k3rs_kubelet::cri::Cri;
use tokio_util::sync::CancellationToken;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
}

/// The image tarballs `cargo xtask images` builds (the test run builds them first).
fn image_tarballs() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/images");
    let files: Vec<_> = ["pause.tar", "busybox.tar"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    for f in &files {
        assert!(
            f.exists(),
            "{} is missing: run `cargo xtask images` (cargo xtask test does)",
            f.display()
        );
    }
    files
}

#[test]
fn built_images_import_under_their_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(
        dir.path(),
        &dir.path().join("run"),
        "docker.io/rancher/mirrored-pause:3.6",
    );
    runtime().block_on(async {
        let mut sup = Supervisor::start(settings.clone())
            .await
            .expect("containerd");
        let result = async {
            let names = import_images(&settings).await?;
            if names
                != [
                    "docker.io/rancher/mirrored-pause:3.6",
                    "docker.io/library/busybox:1.35",
                ]
            {
                bail!("imported {names:?}");
            }
            // Importing the same tarballs again changes nothing and does not fail.
            import_images(&settings).await?;
            let mut cri = Cri::connect(&settings.endpoint()).await?;
            for name in [
                "docker.io/rancher/mirrored-pause:3.6",
                "docker.io/library/busybox:1.35",
            ] {
                let image = cri
                    .image_status(name)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("CRI does not know {name}"))?;
                if !image.repo_tags.iter().any(|t| t == name) {
                    bail!("{name}: tags {:?}", image.repo_tags);
                }
                if image.size == 0 {
                    bail!("{name}: size 0");
                }
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        sup.stop().await;
        result.expect("importing the built images");
    });
}

/// Imports the built images into the supervised containerd as the agent's air-gap loader does
/// (containerd's content and images services; CRI unpacks on first use).
async fn import_images(settings: &Settings) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for tar in image_tarballs() {
        names.extend(k3rs_kubelet::images::import(&settings.socket, &tar).await?);
    }
    Ok(names)
}

#[test]
fn a_host_network_sandbox_runs_busybox_to_completion() {
    use k3rs_kubelet::cri::api;
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(
        dir.path(),
        &dir.path().join("run"),
        "docker.io/rancher/mirrored-pause:3.6",
    );
    let logs = dir.path().join("pods/p1");
    std::fs::create_dir_all(&logs).expect("log dir");
    runtime().block_on(async {
        let mut sup = Supervisor::start(settings.clone())
            .await
            .expect("containerd");
        let mut sandbox_id = None;
        let result = async {
            import_images(&settings).await?;
            let mut cri = Cri::connect(&settings.endpoint()).await?;
            // The host's network: no CNI and nothing sent anywhere.
            let config = api::PodSandboxConfig {
                metadata: Some(api::PodSandboxMetadata {
                    name: "p1".into(),
                    uid: "uid-p1".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                // The host's UTS namespace comes with its network: no hostname of its own.
                hostname: String::new(),
                log_directory: logs.to_string_lossy().into_owned(),
                linux: Some(api::LinuxPodSandboxConfig {
                    cgroup_parent: "/k3rs-test".into(),
                    security_context: Some(api::LinuxSandboxSecurityContext {
                        namespace_options: Some(api::NamespaceOption {
                            network: api::NamespaceMode::Node as i32,
                            pid: api::NamespaceMode::Pod as i32,
                            ipc: api::NamespaceMode::Pod as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let id = cri
                .runtime
                .run_pod_sandbox(api::RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                })
                .await?
                .into_inner()
                .pod_sandbox_id;
            sandbox_id = Some(id.clone());
            let container = cri
                .runtime
                .create_container(api::CreateContainerRequest {
                    pod_sandbox_id: id.clone(),
                    config: Some(api::ContainerConfig {
                        metadata: Some(api::ContainerMetadata {
                            name: "hello".into(),
                            attempt: 0,
                        }),
                        image: Some(api::ImageSpec {
                            image: "docker.io/library/busybox:1.35".into(),
                            ..Default::default()
                        }),
                        command: vec![
                            "sh".into(),
                            "-c".into(),
                            "echo hello from $(id -un); exit 3".into(),
                        ],
                        log_path: "hello.log".into(),
                        ..Default::default()
                    }),
                    sandbox_config: Some(config),
                })
                .await?
                .into_inner()
                .container_id;
            cri.runtime
                .start_container(api::StartContainerRequest {
                    container_id: container.clone(),
                })
                .await?;
            let start = Instant::now();
            let status = loop {
                let s = cri
                    .runtime
                    .container_status(api::ContainerStatusRequest {
                        container_id: container.clone(),
                        verbose: false,
                    })
                    .await?
                    .into_inner()
                    .status
                    .ok_or_else(|| anyhow::anyhow!("no container status"))?;
                if s.state == api::ContainerState::ContainerExited as i32 {
                    break s;
                }
                if start.elapsed() > Duration::from_secs(30) {
                    bail!("the container did not exit: {s:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if status.exit_code != 3 {
                bail!("exit code {} (want 3): {status:?}", status.exit_code);
            }
            // CRI's log format: `<time> stdout F <line>`.
            let log = std::fs::read_to_string(logs.join("hello.log"))?;
            if !log.lines().any(|l| l.contains(" stdout F hello from root")) {
                bail!("log: {log:?}");
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        // The sandbox's pause exits on SIGTERM at once; everything is removed, mounts included.
        if let Some(id) = sandbox_id
            && let Ok(mut cri) = Cri::connect(&settings.endpoint()).await
        {
            let t = Instant::now();
            let stopped = cri
                .runtime
                .stop_pod_sandbox(api::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            let removed = cri
                .runtime
                .remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await;
            assert!(
                stopped.is_ok() && removed.is_ok(),
                "{stopped:?} {removed:?}"
            );
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "stopping the sandbox took {:?}: pause ignored SIGTERM?",
                t.elapsed()
            );
        }
        sup.stop().await;
        if let Err(e) = result {
            let log = std::fs::read_to_string(dir.path().join("agent/containerd/containerd.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "running busybox in a sandbox: {e:#}\ncontainerd log (newest first):\n{}",
                tail.join("\n")
            );
        }
    });
}

#[test]
fn tarballs_dropped_into_the_images_dir_are_imported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings::new(
        dir.path(),
        &dir.path().join("run"),
        "docker.io/rancher/mirrored-pause:3.6",
    );
    let images_dir = dir.path().join("agent/images");
    std::fs::create_dir_all(&images_dir).expect("images dir");
    let tars = image_tarballs();
    // One is there at start, the other arrives later.
    std::fs::copy(&tars[0], images_dir.join("pause.tar")).expect("copy");
    runtime().block_on(async {
        let mut sup = Supervisor::start(settings.clone())
            .await
            .expect("containerd");
        let shutdown = CancellationToken::new();
        let loader = tokio::spawn(k3rs_kubelet::images::preload(
            settings.socket.clone(),
            images_dir.clone(),
            Duration::from_millis(200),
            shutdown.clone(),
            None,
        ));
        let result = async {
            let cri = Cri::connect(&settings.endpoint()).await?;
            let known = |name: &'static str| {
                let mut cri = cri.clone();
                async move { Ok::<_, anyhow::Error>(cri.image_status(name).await?.is_some()) }
            };
            let start = Instant::now();
            while !known("docker.io/rancher/mirrored-pause:3.6").await? {
                if start.elapsed() > Duration::from_secs(20) {
                    bail!("the tarball present at start was not imported");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if known("docker.io/library/busybox:1.35").await? {
                bail!("busybox known before its tarball arrived");
            }
            std::fs::copy(&tars[1], images_dir.join("busybox.tar"))?;
            let start = Instant::now();
            while !known("docker.io/library/busybox:1.35").await? {
                if start.elapsed() > Duration::from_secs(20) {
                    bail!("the tarball added later was not imported");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        shutdown.cancel();
        let _ = loader.await;
        sup.stop().await;
        result.expect("the air-gap preload");
    });
}

#[test]
fn supervised_containerd_answers_cri_and_comes_back_after_dying() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("run");
    let settings = Settings::new(dir.path(), &state, "docker.io/rancher/mirrored-pause:3.6");
    runtime().block_on(async {
        let run = async {
            let sup = Supervisor::start(settings.clone()).await?;
            let config = std::fs::read_to_string(settings.config_path())?;
            assert!(config.contains("SystemdCgroup = false"), "{config}");
            let mut cri = Cri::connect(&settings.endpoint()).await?;
            let v = cri.version().await?;
            assert_eq!(v.runtime_name, "containerd");
            assert_eq!(v.runtime_api_version, "v1");
            assert!(v.runtime_version.starts_with("1."), "{v:?}");
            let images = cri
                .images
                .list_images(k3rs_kubelet::cri::api::ListImagesRequest::default())
                .await?
                .into_inner();
            assert!(
                images.images.is_empty(),
                "a fresh root has no images: {images:?}"
            );
            // containerd dies: the supervisor starts it again and CRI answers again.
            let first = sup.pid().expect("pid");
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(sup.supervise(shutdown.clone()));
            let pid = rustix::process::Pid::from_raw(first as i32).expect("pid");
            rustix::process::kill_process(pid, rustix::process::Signal::KILL)?;
            let start = Instant::now();
            while alive(first) {
                if start.elapsed() > Duration::from_secs(10) {
                    bail!("containerd {first} survived SIGKILL");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Only a new containerd can answer now.
            loop {
                if let Ok(mut c) = Cri::connect(&settings.endpoint()).await
                    && c.version().await.is_ok()
                {
                    break;
                }
                if start.elapsed() > Duration::from_secs(30) {
                    bail!("containerd did not come back after SIGKILL");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Stopping ends containerd.
            shutdown.cancel();
            task.await??;
            if let Ok(mut c) = Cri::connect(&settings.endpoint()).await
                && c.version().await.is_ok()
            {
                bail!("containerd still answers after stop");
            }
            Ok::<_, anyhow::Error>(())
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r)
        {
            let log = std::fs::read_to_string(dir.path().join("agent/containerd/containerd.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{e:#}\ncontainerd log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
    });
}
