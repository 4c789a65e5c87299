//! Joining: one server (without its own agent) and two `k3rs agent`s that join with the server's token
//! and become Ready; a wrong secret, a token with another CA's hash and a node name another machine
//! holds are each refused, and the agent exits with the reason.

use std::time::Duration;

use anyhow::{Result, ensure};
use k3rs_tests::launcher::{K3rsNode, node_ready};
use k3rs_tests::testbed::Testbed;
use k3rs_tests::{run_test, target_bin};

#[test]
fn agents_join_with_the_token_and_bad_joins_are_refused() {
    run_test(super::TIMEOUT, async {
        let mut tb = Testbed::create()?;
        let mut server = K3rsNode::new(&mut tb, "server")?;
        server.spawn(server.server_args(&["--disable-agent"]), &[])?;
        server
            .wait("the API", Duration::from_secs(60), |s| {
                Ok(s.kubectl_out(&["get", "--raw", "/readyz"], None)?.0)
            })
            .await?;
        let token = server.token()?;
        ensure!(
            token.starts_with("K10") && token.contains("::server:"),
            "{token}"
        );

        let mut agents = Vec::new();
        for name in ["agent1", "agent2"] {
            let mut a = K3rsNode::new(&mut tb, name)?;
            a.spawn(a.agent_args(&server.url(), &token, &[]), &[])?;
            agents.push(a);
        }
        for a in &mut agents {
            let name = a.name.clone();
            a.wait(&format!("{name} Ready"), Duration::from_secs(90), |_| {
                node_ready(&server, &name)
            })
            .await?;
        }

        let (hash, _) = token.split_once("::").unwrap_or_default();
        let refusals = [
            (
                "wrong secret",
                format!("{hash}::server:not-the-secret"),
                "intruder1",
                "refused the join (401)",
            ),
            (
                "another CA's hash",
                format!("K10{}::server:whatever", "0".repeat(64)),
                "intruder2",
                "does not match the token",
            ),
            (
                "a taken node name",
                token.clone(),
                "agent1",
                "node password rejected",
            ),
        ];
        for (i, (what, bad_token, name, expect)) in refusals.into_iter().enumerate() {
            let mut n = K3rsNode::new(&mut tb, &format!("bad{i}"))?;
            let mut args = n.agent_args(&server.url(), &bad_token, &[]);
            args.retain(|a| !a.starts_with("--node-name="));
            args.push(format!("--node-name={name}"));
            let (ok, log) = n.run_to_end(args, Duration::from_secs(60))?;
            ensure!(!ok, "an agent with {what} was not refused:\n{log}");
            ensure!(
                log.contains(expect),
                "the refusal for {what} does not say {expect:?}:\n{log}"
            );
        }
        // The taken name still belongs to the first agent.
        ensure!(node_ready(&server, "agent1")?, "agent1 lost its node");

        // `k3rs token create` on the server: a bootstrap token (with the CA hash) joins an agent too.
        let k3rs_on_server = |args: &[&str]| -> Result<String> {
            let out = Testbed::in_netns(&server.netns, target_bin("k3rs"))
                .args(args)
                .arg(format!("--data-dir={}", server.data_dir().display()))
                .output()?;
            ensure!(
                out.status.success(),
                "k3rs {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let boot = k3rs_on_server(&["token", "create", "--description", "e2e"])?;
        let boot = boot.trim();
        let (hash_part, id_secret) = boot.split_once("::").unwrap_or_default();
        ensure!(
            hash_part == hash && id_secret.len() == 23,
            "token create printed {boot:?}"
        );
        let listed = k3rs_on_server(&["token", "list"])?;
        ensure!(
            listed.contains(&id_secret[..6]) && listed.contains("e2e"),
            "token list:\n{listed}"
        );
        let mut a3 = K3rsNode::new(&mut tb, "agent3")?;
        a3.spawn(a3.agent_args(&server.url(), boot, &[]), &[])?;
        a3.wait("agent3 Ready", Duration::from_secs(90), |_| {
            node_ready(&server, "agent3")
        })
        .await?;
        k3rs_on_server(&["token", "delete", &id_secret[..6]])?;
        ensure!(
            !k3rs_on_server(&["token", "list"])?.contains(&id_secret[..6]),
            "the token was not deleted"
        );
        Ok(())
    });
}
