//! Images through a registry mirror (K3s's registries.yaml): a real registry (Debian's docker-registry)
//! in its own namespace on the testbed bridge holds an image that exists nowhere else; the node's
//! registries.yaml mirrors docker.io to it, and a pod of `docker.io/library/busybox:via-mirror` runs.
//! Then a gzipped `docker save` archive dropped into the air-gap directory of the running node is
//! imported, and a pod of its image runs with `imagePullPolicy: Never`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use k3rs_tests::Proc;
use k3rs_tests::process::host_tool;
use k3rs_tests::testbed::{Testbed, images_dir, netns_http_get};

use crate::pods::Env;

#[test]
fn images_pull_through_a_registry_mirror() {
    k3rs_tests::run_test(Duration::from_secs(300), async {
        let mut tb = Testbed::create()?;
        let (ns, addr) = tb.add_netns("registry")?;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: \"0.0.0.0:5000\"}}\n",
                dir.path().join("data").display()
            ),
        )?;
        let mut cmd = Testbed::in_netns(&ns, host_tool("docker-registry", "docker-registry")?);
        cmd.arg("serve").arg(&config);
        let mut registry = Proc::spawn(
            "docker-registry",
            &mut cmd,
            &dir.path().join("registry.log"),
        )?;
        let start = Instant::now();
        while netns_http_get(&ns, 5000, "/v2/").ok() != Some(200) {
            if !registry.alive() || start.elapsed() > Duration::from_secs(30) {
                bail!("the registry did not come up:\n{}", registry.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The image exists only in the registry, under a tag the air-gap tarballs do not have.
        let out = Command::new(host_tool("skopeo", "skopeo")?)
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .arg(format!(
                "oci-archive:{}",
                images_dir().join("busybox.tar").display()
            ))
            .arg(format!("docker://{addr}:5000/library/busybox:via-mirror"))
            .output()?;
        ensure!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let registries = dir.path().join("registries.yaml");
        std::fs::write(
            &registries,
            format!("mirrors:\n  docker.io:\n    endpoint:\n      - \"http://{addr}:5000\"\n"),
        )?;
        let reg_arg = format!("--private-registry={}", registries.display());
        let env = Env::start_with(tb, &[&reg_arg]).await?;
        let hosts = env
            .node
            .data_dir()
            .join("agent/etc/containerd/certs.d/docker.io/hosts.toml");
        ensure!(
            std::fs::read_to_string(&hosts)?.contains(&format!("[host.\"http://{addr}:5000\"]")),
            "{} does not name the mirror",
            hosts.display()
        );
        env.apply(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: mirrored}
spec:
  nodeName: node1
  restartPolicy: Never
  containers:
  - name: main
    image: docker.io/library/busybox:via-mirror
    command: ["sh", "-c", "echo pulled through the mirror"]
"#,
        )?;
        env.wait_phase("mirrored", "Succeeded").await?;
        let logs = env.kubectl(&["logs", "mirrored"])?;
        ensure!(logs.trim() == "pulled through the mirror", "{logs:?}");

        // A gzipped `docker save` archive dropped into the air-gap directory is imported while the
        // node runs (skopeo writes the docker-archive; gzip compresses it).
        let archive = dir.path().join("saved.tar");
        let out = Command::new(host_tool("skopeo", "skopeo")?)
            .args(["--insecure-policy", "copy", "--quiet"])
            .arg(format!(
                "oci-archive:{}",
                images_dir().join("busybox.tar").display()
            ))
            .arg(format!(
                "docker-archive:{}:docker.io/library/busybox:docker-saved",
                archive.display()
            ))
            .output()?;
        ensure!(
            out.status.success(),
            "skopeo copy to a docker-archive: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = Command::new("gzip").arg("-f").arg(&archive).status()?;
        ensure!(status.success(), "gzip failed");
        std::fs::copy(
            dir.path().join("saved.tar.gz"),
            env.node.data_dir().join("agent/images/saved.tar.gz"),
        )?;
        env.apply(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: saved}
spec:
  nodeName: node1
  restartPolicy: Never
  containers:
  - name: main
    image: docker.io/library/busybox:docker-saved
    imagePullPolicy: Never
    command: ["sh", "-c", "echo from a docker archive"]
"#,
        )?;
        env.wait_phase("saved", "Succeeded").await?;
        let logs = env.kubectl(&["logs", "saved"])?;
        ensure!(logs.trim() == "from a docker archive", "{logs:?}");
        drop(env);
        drop(registry);
        Ok(())
    });
}
