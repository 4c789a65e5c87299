//! End-to-end tests of the kubelet's parts against the real containerd (Debian's, started by the
//! kubelet's supervisor with its own root, state and socket — never the system's).

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
