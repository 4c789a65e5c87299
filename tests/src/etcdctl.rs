//! Runs Debian's `etcdctl` (v3 API) against a server, and masks what legitimately differs between two
//! servers (member, cluster and lease ids, versions, sizes) so outputs can be compared with etcd's.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::process::host_tool;

/// What one etcdctl invocation printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

impl Output {
    /// The error line etcdctl printed (`Error: …`), if any.
    pub fn error(&self) -> Option<&str> {
        self.stderr.lines().find(|l| l.starts_with("Error:"))
    }
}

/// `etcdctl --endpoints=<endpoint> <args>` with `stdin` piped in.
pub fn run(endpoint: &str, args: &[&str], stdin: &str) -> Result<Output> {
    let bin = host_tool("etcdctl", "etcd-client")?;
    let mut child = Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(["--dial-timeout=5s", "--command-timeout=20s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting etcdctl")?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok(Output {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        success: out.status.success(),
    })
}

/// Replaces runs of at least 12 hex digits (member, cluster and lease ids as etcdctl prints them) with `<ID>`.
pub fn mask_hex_ids(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        let boundary_before = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        let run = bytes[i..]
            .iter()
            .take_while(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            .count();
        let boundary_after = bytes
            .get(i + run)
            .is_none_or(|b| !b.is_ascii_alphanumeric());
        if boundary_before
            && run >= 12
            && boundary_after
            && bytes[i..i + run]
                .iter()
                .any(|b| b.is_ascii_alphabetic() || run >= 15)
        {
            out.push_str("<ID>");
            i += run;
        } else {
            let ch = s[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Replaces the numeric value of `"key":<n>` in JSON output with `<N>`.
pub fn mask_json_number(s: &str, key: &str) -> String {
    let pat = format!("\"{key}\":");
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(&pat) {
        out.push_str(&rest[..pos + pat.len()]);
        rest = &rest[pos + pat.len()..];
        let n = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'-')
            .count();
        if n > 0 {
            out.push_str("<N>");
            rest = &rest[n..];
        }
    }
    out.push_str(rest);
    out
}

/// Replaces what follows `prefix` up to `suffix` (e.g. `remaining(` … `s)`) with `<N>`.
pub fn mask_between(s: &str, prefix: &str, suffix: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(prefix) {
        out.push_str(&rest[..pos + prefix.len()]);
        rest = &rest[pos + prefix.len()..];
        match rest.find(suffix) {
            Some(end) => {
                out.push_str("<N>");
                rest = &rest[end..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

/// Masks everything two correct servers may print differently: ids, raft terms, lease TTL countdowns,
/// and the endpoint address.
pub fn normalize(s: &str, endpoint: &str) -> String {
    let mut s = s.replace(endpoint, "<ENDPOINT>");
    for key in ["cluster_id", "member_id", "raft_term", "ID", "id"] {
        s = mask_json_number(&s, key);
    }
    s = mask_between(&s, "remaining(", "s)");
    s = mask_between(&s, "\"RaftTerm\" : ", "\n");
    mask_hex_ids(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(
            mask_hex_ids("lease 694d77aa9e38260f granted"),
            "lease <ID> granted"
        );
        assert_eq!(
            mask_hex_ids("revision 123456789012"),
            "revision 123456789012"
        );
        assert_eq!(
            mask_json_number(r#"{"cluster_id":1234,"x":5}"#, "cluster_id"),
            r#"{"cluster_id":<N>,"x":5}"#
        );
        assert_eq!(
            mask_between("TTL(60s), remaining(59s), x", "remaining(", "s)"),
            "TTL(60s), remaining(<N>s), x"
        );
    }
}
