//! The kubelet end to end: a cluster (kine, apiserver, controller-manager) in the root namespace
//! listening on a testbed bridge, and a node (kubelet with its containerd, flannel) in a network
//! namespace of its own, driven with kubectl as a user would.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k3rs_tests::testbed::{AgentNode, Testbed};
use k3rs_tests::{Backend, Cluster, Proc};
use serde_json::Value;

/// One cluster with one node. Fields drop in order: the node first, the bridge last.
pub struct Env {
    pub node: AgentNode,
    _cm: Proc,
    pub cluster: Cluster,
    pub tb: Testbed,
}

impl Env {
    pub async fn start() -> Result<Self> {
        Self::start_with(Testbed::create()?, &[]).await
    }

    /// A cluster and node on `tb` (which may hold other namespaces already), the kubelet with `args`.
    pub async fn start_with(mut tb: Testbed, args: &[&str]) -> Result<Self> {
        let cluster = Cluster::start_on(
            Backend::Sqlite,
            &tb.gateway.clone(),
            &["--enable-admission-plugins=ServiceAccount"],
        )
        .await?;
        let cm = cluster.start_controller_manager("*").await?;
        let node = AgentNode::start(&mut tb, &cluster, "node1", args).await?;
        let env = Self {
            node,
            _cm: cm,
            cluster,
            tb,
        };
        env.wait(
            "the node to be Ready with a podCIDR",
            Duration::from_secs(60),
            |e| {
                let n = e.get_json(&["get", "node", "node1"])?;
                let ready = n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                Ok(ready && n["spec"]["podCIDR"].is_string())
            },
        )
        .await?;
        // The default ServiceAccount exists before pods are made.
        env.wait("the default ServiceAccount", Duration::from_secs(30), |e| {
            Ok(e.cluster
                .run(&["get", "serviceaccount", "default"], None)?
                .ok)
        })
        .await?;
        Ok(env)
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.cluster.kubectl(args)
    }

    pub fn apply(&self, yaml: &str) -> Result<()> {
        self.cluster
            .kubectl_in(&["apply", "-f", "-"], yaml)
            .map(drop)
    }

    pub fn get_json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&a)?)?)
    }

    pub fn pod(&self, name: &str) -> Result<Value> {
        self.get_json(&["get", "pod", name])
    }

    /// Polls `check` every 200 ms until it holds; on timeout, fails with the kubelet's log tail.
    pub async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        let start = Instant::now();
        let mut last_err = String::new();
        loop {
            match check(self) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last_err = format!("{e:#}"),
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {what} ({last_err})\n{}",
                    self.node.log_tails(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn wait_phase(&self, name: &str, phase: &str) -> Result<Value> {
        let mut pod = Value::Null;
        self.wait(
            &format!("pod {name} {phase}"),
            Duration::from_secs(60),
            |e| {
                pod = e.pod(name)?;
                Ok(pod["status"]["phase"] == phase)
            },
        )
        .await
        .with_context(|| format!("last seen: {}", pod["status"]))?;
        Ok(pod)
    }

    pub async fn wait_ready(&self, name: &str) -> Result<Value> {
        let mut pod = Value::Null;
        self.wait(&format!("pod {name} Ready"), Duration::from_secs(60), |e| {
            pod = e.pod(name)?;
            Ok(pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .await
        .with_context(|| format!("last seen: {}", pod["status"]))?;
        Ok(pod)
    }
}

#[test]
fn pods_run_to_completion_and_crash_loops_back_off() {
    k3rs_tests::run_test(Duration::from_secs(300), async {
        let env = Env::start().await?;
        env.apply(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: hello}
spec:
  nodeName: node1
  restartPolicy: Never
  containers:
  - name: main
    image: docker.io/library/busybox:1.35
    command: ["sh", "-c", "echo hello from $(hostname); echo second line"]
"#,
        )?;
        let pod = env.wait_phase("hello", "Succeeded").await?;
        let cs = &pod["status"]["containerStatuses"][0];
        assert_eq!(cs["state"]["terminated"]["exitCode"], 0, "{cs}");
        assert_eq!(cs["state"]["terminated"]["reason"], "Completed", "{cs}");
        assert!(
            cs["containerID"]
                .as_str()
                .is_some_and(|s| s.starts_with("containerd://")),
            "{cs}"
        );
        assert!(
            pod["status"]["podIP"]
                .as_str()
                .is_some_and(|ip| ip.starts_with("10.42.")),
            "{}",
            pod["status"]
        );
        assert_eq!(pod["status"]["qosClass"], "BestEffort");
        let logs = env.kubectl(&["logs", "hello"])?;
        assert_eq!(logs, "hello from hello\nsecond line\n");

        env.apply(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: bad}
spec:
  nodeName: node1
  containers:
  - name: main
    image: docker.io/library/busybox:1.35
    command: ["/no/such/binary"]
"#,
        )?;
        // Each failed start counts; the container waits in CrashLoopBackOff between attempts, 10 s
        // after the first failure, 20 s after the second.
        let mut seen = std::collections::BTreeSet::new();
        env.wait("bad to back off twice", Duration::from_secs(120), |e| {
            let p = e.pod("bad")?;
            let cs = &p["status"]["containerStatuses"][0];
            let restarts = cs["restartCount"].as_i64().unwrap_or(0);
            if let (Some(r), Some(m)) = (
                cs["state"]["waiting"]["reason"].as_str(),
                cs["state"]["waiting"]["message"].as_str(),
            ) {
                let delay = m.split_whitespace().nth(1).unwrap_or("").to_string();
                seen.insert(format!("{r} {delay} at restartCount {restarts}"));
                if r == "CrashLoopBackOff" {
                    assert!(
                        m.contains(" restarting failed container=main pod=bad_default("),
                        "{m}"
                    );
                }
            }
            if let Some(r) = cs["lastState"]["terminated"]["reason"].as_str() {
                seen.insert(format!("last {r}"));
            }
            Ok(seen.contains("CrashLoopBackOff 10s at restartCount 0")
                && seen.contains("CrashLoopBackOff 20s at restartCount 1"))
        })
        .await
        .with_context(|| format!("seen: {seen:?}"))?;
        let p = env.pod("bad")?;
        assert_eq!(p["status"]["phase"], "Running", "{}", p["status"]);
        let events = env.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=bad",
        ])?;
        assert!(
            events.contains("BackOff") && events.contains("Failed"),
            "{events}"
        );
        Ok(())
    });
}

const WEB: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config}
data: {greeting: hello, mode: one}
---
apiVersion: v1
kind: Secret
metadata: {name: web-secret}
stringData: {password: s3cr3t}
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}, annotations: {note: from-annotations}}
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: docker.io/library/busybox:1.35
    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/healthz && echo hi > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{containerPort: 8080, name: http}]
    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: web-config, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: web-secret, key: password}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: MEM_LIMIT, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: COMBINED, value: "$(GREETING)-$(POD_NAME)"}
    resources: {limits: {memory: 64Mi, cpu: 200m}}
    readinessProbe: {httpGet: {path: /index.html, port: http}, periodSeconds: 1}
    livenessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 2}
    volumeMounts:
    - {name: config, mountPath: /etc/config}
    - {name: secret, mountPath: /etc/secret}
    - {name: podinfo, mountPath: /etc/podinfo}
  volumes:
  - name: config
    configMap: {name: web-config}
  - name: secret
    secret: {secretName: web-secret, defaultMode: 0400}
  - name: podinfo
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: annotations, fieldRef: {fieldPath: "metadata.annotations['note']"}}
"#;

#[test]
fn probes_env_and_volumes_reach_the_container() {
    k3rs_tests::run_test(Duration::from_secs(300), async {
        let env = Env::start().await?;
        env.apply(WEB)?;
        let pod = env.wait_ready("web").await?;
        let ip = pod["status"]["podIP"].as_str().unwrap_or("").to_string();
        assert_eq!(pod["status"]["qosClass"], "Guaranteed", "{}", pod["status"]);
        let exec = |args: &[&str]| -> Result<String> {
            let mut a = vec!["exec", "web", "--"];
            a.extend_from_slice(args);
            env.kubectl(&a)
        };
        let vars = exec(&["env"])?;
        for want in [
            "GREETING=hello".to_string(),
            "PASSWORD=s3cr3t".into(),
            "POD_NAME=web".into(),
            format!("POD_IP={ip}"),
            "MEM_LIMIT=64".into(),
            "COMBINED=hello-web".into(),
            "KUBERNETES_SERVICE_HOST=10.43.0.1".into(),
        ] {
            assert!(
                vars.lines().any(|l| l == want),
                "{want} missing from:\n{vars}"
            );
        }
        assert_eq!(exec(&["cat", "/etc/config/greeting"])?, "hello");
        assert_eq!(exec(&["cat", "/etc/secret/password"])?, "s3cr3t");
        assert_eq!(
            exec(&["stat", "-L", "-c", "%a", "/etc/secret/password"])?.trim(),
            "400"
        );
        assert_eq!(exec(&["cat", "/etc/podinfo/labels"])?, "app=\"web\"");
        assert_eq!(
            exec(&["cat", "/etc/podinfo/annotations"])?,
            "from-annotations"
        );
        let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
        assert_eq!(exec(&["cat", &format!("{sa}/namespace")])?, "default");
        let token = exec(&["cat", &format!("{sa}/token")])?;
        assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
        assert!(exec(&["cat", &format!("{sa}/ca.crt")])?.contains("BEGIN CERTIFICATE"));
        assert_eq!(
            exec(&["cat", "/etc/hosts"])?.lines().last(),
            Some(format!("{ip}\tweb").as_str())
        );

        // A ConfigMap update reaches the mounted file.
        env.kubectl(&[
            "patch",
            "configmap",
            "web-config",
            "-p",
            r#"{"data":{"greeting":"updated"}}"#,
        ])?;
        env.wait(
            "the updated ConfigMap in the volume",
            Duration::from_secs(60),
            |e| Ok(e.kubectl(&["exec", "web", "--", "cat", "/etc/config/greeting"])? == "updated"),
        )
        .await?;

        // Failing liveness restarts the container, which becomes Ready again.
        exec(&["rm", "/www/healthz"])?;
        env.wait(
            "web restarted after liveness failed",
            Duration::from_secs(60),
            |e| {
                let p = e.pod("web")?;
                Ok(p["status"]["containerStatuses"][0]["restartCount"] == 1)
            },
        )
        .await?;
        env.wait_ready("web").await?;
        let events = env.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web",
        ])?;
        assert!(events.contains("Liveness probe failed"), "{events}");
        assert!(
            events.contains("failed liveness probe, will be restarted"),
            "{events}"
        );
        Ok(())
    });
}

/// GET `http://<addr>:<port>/<path>` from inside `ns` (bash's /dev/tcp); returns the whole answer.
fn get_from(ns: &str, addr: &str, port: u16, path: &str) -> Result<String> {
    let script = format!(
        "exec 3<>/dev/tcp/{addr}/{port} && printf 'GET /{path} HTTP/1.0\\r\\nHost: {addr}\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"
    );
    let out = Testbed::in_netns(ns, "bash")
        .args(["-c", &script])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn pods_reach_each_other_and_host_ports_reach_pods() {
    k3rs_tests::run_test(Duration::from_secs(300), async {
        let mut env = Env::start().await?;
        env.apply(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: server}
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: docker.io/library/busybox:1.35
    command: ["sh", "-c", "mkdir /www && echo served-by-pod > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{containerPort: 8080, hostPort: 30080}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: docker.io/library/busybox:1.35
    command: ["sleep", "3600"]
"#,
        )?;
        let server = env.wait_ready("server").await?;
        env.wait_ready("client").await?;
        let ip = server["status"]["podIP"].as_str().unwrap_or("").to_string();
        // Pod to pod over the node's bridge.
        let body = env.kubectl(&[
            "exec",
            "client",
            "--",
            "wget",
            "-qO-",
            &format!("http://{ip}:8080/"),
        ])?;
        assert_eq!(body, "served-by-pod\n");
        // The hostPort from another machine on the testbed bridge.
        let (outside, _) = env.tb.add_netns("outside")?;
        let node_ip = env.node.ip.clone();
        let mut answer = String::new();
        env.wait("the hostPort to answer", Duration::from_secs(30), |_| {
            answer = get_from(&outside, &node_ip, 30080, "")?;
            Ok(answer.contains("served-by-pod"))
        })
        .await
        .with_context(|| format!("last answer: {answer:?}"))?;
        Ok(())
    });
}

#[test]
fn limits_deadlines_and_graceful_deletion() {
    k3rs_tests::run_test(Duration::from_secs(300), async {
        let env = Env::start().await?;
        let marks = env.node.data_dir().join("marks");
        std::fs::create_dir_all(&marks)?;
        env.apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  nodeName: node1
  restartPolicy: Never
  containers:
  - name: main
    image: docker.io/library/busybox:1.35
    command: ["tail", "/dev/zero"]
    resources: {{limits: {{memory: 32Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: deadline}}
spec:
  nodeName: node1
  activeDeadlineSeconds: 3
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: docker.io/library/busybox:1.35
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: graceful}}
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 20
  containers:
  - name: main
    image: docker.io/library/busybox:1.35
    command: ["sh", "-c", "trap 'echo TERM > /marks/term; sleep 2; echo done > /marks/done; exit 0' TERM; echo started > /marks/started; while true; do sleep 0.2; done"]
    lifecycle:
      preStop: {{exec: {{command: ["sh", "-c", "echo prestop > /marks/prestop"]}}}}
    volumeMounts: [{{name: marks, mountPath: /marks}}]
  volumes:
  - name: marks
    hostPath: {{path: {marks}, type: Directory}}
"#,
            marks = marks.display()
        ))?;
        let hog = env.wait_phase("hog", "Failed").await?;
        let t = &hog["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(t["reason"], "OOMKilled", "{t}");
        assert_eq!(t["exitCode"], 137, "{t}");

        let dl = env.wait_phase("deadline", "Failed").await?;
        assert_eq!(
            dl["status"]["reason"], "DeadlineExceeded",
            "{}",
            dl["status"]
        );
        assert_eq!(
            dl["status"]["message"],
            "Pod was active on the node longer than the specified deadline"
        );

        env.wait_ready("graceful").await?;
        env.wait("the graceful pod to start", Duration::from_secs(30), |_| {
            Ok(marks.join("started").exists())
        })
        .await?;
        let start = Instant::now();
        // kubectl waits for the pod to be gone: the kubelet stops it within its grace period, then
        // deletes it for good.
        env.kubectl(&["delete", "pod", "graceful", "--timeout=60s"])?;
        let took = start.elapsed();
        assert_eq!(std::fs::read_to_string(marks.join("prestop"))?, "prestop\n");
        assert_eq!(std::fs::read_to_string(marks.join("term"))?, "TERM\n");
        assert_eq!(
            std::fs::read_to_string(marks.join("done"))?,
            "done\n",
            "the container was killed before its grace period ended"
        );
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(20),
            "deletion took {took:?}"
        );
        Ok(())
    });
}

#[test]
fn running_containers_survive_kubelet_restarts() {
    k3rs_tests::run_test(Duration::from_secs(300), async {
        let mut env = Env::start().await?;
        env.apply(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: steady}
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: docker.io/library/busybox:1.35
    command: ["sh", "-c", "mkdir /www && echo up > /www/index.html && exec httpd -f -p 8080 -h /www"]
    readinessProbe: {httpGet: {path: /index.html, port: 8080}, periodSeconds: 1}
"#,
        )?;
        let before = env.wait_ready("steady").await?;
        let id = before["status"]["containerStatuses"][0]["containerID"].clone();
        for how in ["SIGTERM", "SIGKILL"] {
            if how == "SIGTERM" {
                env.node.stop_kubelet();
            } else {
                env.node.kill_kubelet();
            }
            env.node.start_kubelet().await?;
            // Give the restarted kubelet a few syncs; the pod must stay Ready throughout.
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                let p = env.pod("steady")?;
                let ready = p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                assert!(
                    ready,
                    "not Ready after the kubelet's {how} restart: {}",
                    p["status"]
                );
                let cs = &p["status"]["containerStatuses"][0];
                assert_eq!(cs["containerID"], id, "container replaced after {how}");
                assert_eq!(cs["restartCount"], 0, "restarted after {how}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok(())
    });
}

/// Runs kubectl with `envs`, feeding `stdin`; returns (exit code, stdout, stderr).
fn kubectl_with(
    env: &Env,
    envs: &[(&str, &str)],
    args: &[&str],
    stdin: &str,
) -> Result<(i32, String, String)> {
    use std::io::Write as _;
    let mut cmd = env.cluster.kubectl_cmd(args)?;
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn logs_exec_and_port_forward_over_websocket_and_spdy() {
    k3rs_tests::run_test(Duration::from_secs(300), async {
        let env = Env::start().await?;
        env.apply(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: shell}
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: docker.io/library/busybox:1.35
    command: ["sh", "-c", "mkdir /www && echo forwarded > /www/index.html && exec httpd -f -p 8080 -h /www"]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: counter}
spec:
  nodeName: node1
  restartPolicy: Never
  containers:
  - name: main
    image: docker.io/library/busybox:1.35
    command: ["sh", "-c", "sleep 2; for i in 1 2 3 4 5; do echo line $i; sleep 0.5; done"]
"#,
        )?;
        env.wait_ready("shell").await?;
        // `logs -f` follows the container until it ends.
        env.wait_phase("counter", "Running").await?;
        let followed = env.kubectl(&["logs", "-f", "counter"])?;
        assert_eq!(followed, "line 1\nline 2\nline 3\nline 4\nline 5\n");
        assert_eq!(
            env.kubectl(&["logs", "counter", "--tail=2"])?,
            "line 4\nline 5\n"
        );

        for (transport, envs) in [
            ("websocket", vec![]),
            ("spdy", vec![("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")]),
        ] {
            // stdin to the end (v5 closes it), stdout, and the exit code.
            let (code, out, err) = kubectl_with(
                &env,
                &envs,
                &[
                    "exec",
                    "-i",
                    "shell",
                    "--",
                    "sh",
                    "-c",
                    "cat; echo to-stderr >&2; exit 3",
                ],
                "piped\ninput\n",
            )?;
            assert_eq!(
                (code, out.as_str()),
                (3, "piped\ninput\n"),
                "{transport}: {err}"
            );
            assert!(err.contains("to-stderr"), "{transport}: {err}");
            // A terminal: `script` gives kubectl one, so the shell is interactive.
            let cmd = env.cluster.kubectl_cmd(&[])?;
            let kubectl = cmd.get_program().to_string_lossy().into_owned();
            let vars: Vec<String> = cmd
                .get_envs()
                .filter_map(|(k, v)| {
                    Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy()))
                })
                .collect();
            let line = format!(
                "env {} {} {kubectl} exec -it shell -- sh",
                vars.join(" "),
                envs.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            let mut script = std::process::Command::new("script");
            script
                .args(["-qec", &line, "/dev/null"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = script.spawn()?;
            {
                use std::io::Write as _;
                let mut stdin = child.stdin.take().context("stdin")?;
                std::thread::sleep(Duration::from_secs(2));
                stdin.write_all(b"echo tty-$((40+2)) $(tty)\n")?;
                std::thread::sleep(Duration::from_millis(500));
                stdin.write_all(b"exit 7\n")?;
                std::thread::sleep(Duration::from_millis(500));
            }
            let out = child.wait_with_output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("tty-42 /dev/pts/"), "{transport}: {text}");
            assert_eq!(out.status.code(), Some(7), "{transport}: {text}");
        }
        let log = env.node.kubelet_log();
        assert!(
            log.contains("bridging a WebSocket exec/attach to SPDY"),
            "kubectl's WebSocket exec was not bridged"
        );

        for (transport, envs) in [
            ("websocket", vec![]),
            ("spdy", vec![("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")]),
        ] {
            let mut cmd = env
                .cluster
                .kubectl_cmd(&["port-forward", "pod/shell", ":8080"])?;
            for (k, v) in &envs {
                cmd.env(k, v);
            }
            let log = env
                .node
                .data_dir()
                .join(format!("port-forward-{transport}.log"));
            let mut pf = Proc::spawn("kubectl port-forward", &mut cmd, &log)?;
            let mut port = 0u16;
            env.wait(
                "kubectl port-forward to listen",
                Duration::from_secs(20),
                |_| {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if let Some(p) = text
                        .split("Forwarding from 127.0.0.1:")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|p| p.parse().ok())
                    {
                        port = p;
                    }
                    Ok(port != 0 || !pf.alive())
                },
            )
            .await?;
            assert!(
                port != 0,
                "{transport}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            for _ in 0..2 {
                let (code, body) = k3rs_tests::http_get(port, "/index.html")?;
                assert_eq!((code, body.as_str()), (200, "forwarded\n"), "{transport}");
            }
        }
        assert!(
            env.node
                .kubelet_log()
                .contains("tunnelling a WebSocket port-forward to SPDY"),
            "kubectl's WebSocket port-forward was not tunnelled"
        );
        Ok(())
    });
}

#[test]
fn static_pods_run_from_manifests_with_mirror_pods() {
    k3rs_tests::run_test(Duration::from_secs(300), async {
        let env = Env::start().await?;
        let dir = env.node.data_dir().join("agent/pod-manifests");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("web.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: static-web, namespace: kube-system, labels: {tier: edge}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: web\n    image: docker.io/library/busybox:1.35\n    command: [\"sh\", \"-c\", \"echo static; exec sleep 3600\"]\n",
        )?;
        let mirror_of =
            |e: &Env| e.get_json(&["-n", "kube-system", "get", "pod", "static-web-node1"]);
        let mut mirror = Value::Null;
        env.wait("the mirror pod Running", Duration::from_secs(60), |e| {
            mirror = mirror_of(e)?;
            Ok(mirror["status"]["phase"] == "Running")
        })
        .await?;
        let annotations = &mirror["metadata"]["annotations"];
        assert_eq!(annotations["kubernetes.io/config.source"], "file");
        assert_eq!(
            annotations["kubernetes.io/config.mirror"],
            annotations["kubernetes.io/config.hash"]
        );
        assert_eq!(mirror["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(
            env.kubectl(&["-n", "kube-system", "logs", "static-web-node1"])?,
            "static\n"
        );
        let id = mirror["status"]["containerStatuses"][0]["containerID"].clone();
        let uid = mirror["metadata"]["uid"].clone();
        // Deleting the mirror does not stop the static pod: the mirror comes back, same container.
        env.kubectl(&[
            "-n",
            "kube-system",
            "delete",
            "pod",
            "static-web-node1",
            "--wait=false",
        ])?;
        env.wait("the mirror pod made again", Duration::from_secs(60), |e| {
            let m = mirror_of(e)?;
            Ok(m["metadata"]["uid"] != uid
                && m["status"]["containerStatuses"][0]["containerID"] == id)
        })
        .await?;
        // Removing the manifest stops the pod and removes the mirror.
        std::fs::remove_file(dir.join("web.yaml"))?;
        env.wait("the mirror pod gone", Duration::from_secs(60), |e| {
            Ok(!e
                .cluster
                .run(
                    &["-n", "kube-system", "get", "pod", "static-web-node1"],
                    None,
                )?
                .ok)
        })
        .await?;
        Ok(())
    });
}

#[test]
fn memory_pressure_evicts_best_effort_pods_first() {
    k3rs_tests::run_test(Duration::from_secs(300), async {
        let mut tb = Testbed::create()?;
        let cluster = Cluster::start_on(
            Backend::Sqlite,
            &tb.gateway.clone(),
            &["--enable-admission-plugins=ServiceAccount"],
        )
        .await?;
        let cm = cluster.start_controller_manager("*").await?;
        // A threshold of all the memory but 100Mi: the node is under pressure from the start, and its
        // allocatable memory (capacity minus the threshold) still admits the 64Mi pod.
        let total_kib: i64 = std::fs::read_to_string("/proc/meminfo")?
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let threshold = total_kib * 1024 - 100 * 1024 * 1024;
        let node = AgentNode::start(
            &mut tb,
            &cluster,
            "node1",
            &["--eviction-hard", &format!("memory.available<{threshold}")],
        )
        .await?;
        let env = Env {
            node,
            _cm: cm,
            cluster,
            tb,
        };
        env.apply(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: besteffort}
spec:
  nodeName: node1
  containers:
  - {name: main, image: docker.io/library/busybox:1.35, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: burstable}
spec:
  nodeName: node1
  containers:
  - name: main
    image: docker.io/library/busybox:1.35
    command: ["sleep", "3600"]
    resources: {requests: {memory: 64Mi}}
"#,
        )?;
        let evicted = env.wait_phase("besteffort", "Failed").await?;
        let st = &evicted["status"];
        assert_eq!(st["reason"], "Evicted", "{st}");
        assert!(
            st["message"].as_str().unwrap_or("").starts_with(&format!(
                "The node was low on resource: memory. Threshold quantity: {threshold}"
            )),
            "{st}"
        );
        assert!(
            st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "DisruptionTarget" && c["status"] == "True"),
            "{st}"
        );
        // The pod within its request goes second.
        assert_ne!(
            env.pod("burstable")?["status"]["phase"],
            "Failed",
            "evicted in the wrong order"
        );
        let node = env.get_json(&["get", "node", "node1"])?;
        assert!(
            node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "MemoryPressure" && c["status"] == "True"),
            "{}",
            node["status"]["conditions"]
        );
        env.wait_phase("burstable", "Failed").await?;
        Ok(())
    });
}
