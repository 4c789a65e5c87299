//! K3s's configuration file for `k3rs server` and `k3rs agent`: `/etc/k3rs/config.yaml` (or `--config`,
//! `K3RS_CONFIG_FILE`) and then `config.yaml.d/*.yaml` in name order. Each key is a flag's long name;
//! a later file replaces a key's value and `key+:` appends to it. The values become flags placed right
//! after the subcommand, so flags given on the command line win (or, for repeatable flags, add), and
//! values from a file win over `K3RS_*` environment variables (which fill only flags still unset), as in
//! K3s.

use std::path::{Path, PathBuf};

use clap::ArgAction;

/// Where `k3rs` looks when neither `--config` nor `K3RS_CONFIG_FILE` says.
pub const DEFAULT_PATH: &str = "/etc/k3rs/config.yaml";

/// The config file named by `K3RS_CONFIG_FILE` or `--config`/`-c`, else the default; and whether it was
/// named (a named file must exist, the default one may not).
fn locate(args: &[String]) -> (PathBuf, bool) {
    if let Ok(p) = std::env::var("K3RS_CONFIG_FILE")
        && !p.is_empty()
    {
        return (PathBuf::from(p), true);
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" || a == "-c" {
            if let Some(v) = it.next() {
                return (PathBuf::from(v), true);
            }
        } else if let Some(v) = a.strip_prefix("--config=") {
            return (PathBuf::from(v), true);
        }
    }
    (PathBuf::from(DEFAULT_PATH), false)
}

/// The YAML files in the order they apply: the file, then its drop-in directory's `*.yaml`/`*.yml`.
fn files(path: &Path, named: bool) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    if path.exists() {
        out.push(path.to_path_buf());
    } else if named {
        return Err(format!("config file {}: not found", path.display()));
    }
    let dropins = PathBuf::from(format!("{}.d", path.display()));
    if let Ok(rd) = std::fs::read_dir(&dropins) {
        let mut more: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        more.sort();
        out.extend(more);
    }
    Ok(out)
}

fn scalar(v: &serde_yaml_ng::Value) -> Option<String> {
    match v {
        serde_yaml_ng::Value::String(s) => Some(s.clone()),
        serde_yaml_ng::Value::Bool(b) => Some(b.to_string()),
        serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
        serde_yaml_ng::Value::Null => Some(String::new()),
        _ => None,
    }
}

/// Merges the files into (key, values) in first-seen key order.
pub fn merge(files: &[PathBuf]) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("config file {}: {e}", f.display()))?;
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
            .map_err(|e| format!("config file {}: {e}", f.display()))?;
        let map = match doc {
            serde_yaml_ng::Value::Mapping(m) => m,
            serde_yaml_ng::Value::Null => continue,
            _ => {
                return Err(format!(
                    "config file {}: not a mapping of flags",
                    f.display()
                ));
            }
        };
        for (k, v) in map {
            let key = scalar(&k)
                .ok_or_else(|| format!("config file {}: a key is not a string", f.display()))?;
            let values = match &v {
                serde_yaml_ng::Value::Sequence(items) => items
                    .iter()
                    .map(|i| {
                        scalar(i).ok_or_else(|| {
                            format!(
                                "config file {}: {key}: lists hold plain values",
                                f.display()
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                other => vec![scalar(other).ok_or_else(|| {
                    format!(
                        "config file {}: {key}: expected a value or a list",
                        f.display()
                    )
                })?],
            };
            let (name, append) = match key.strip_suffix('+') {
                Some(n) => (n.to_string(), true),
                None => (key.clone(), false),
            };
            match out.iter_mut().find(|(k, _)| *k == name) {
                Some((_, existing)) if append => existing.extend(values),
                Some((_, existing)) => *existing = values,
                None => out.push((name, values)),
            }
        }
    }
    Ok(out)
}

/// Inserts the config file's values as flags right after the `server`/`agent` subcommand of `args`.
/// `command` is the clap command of that subcommand (to know its flags); unknown keys are skipped with a
/// warning, as a file shared by servers and agents holds keys for both.
pub fn expand(args: Vec<String>, command: &clap::Command) -> Result<Vec<String>, String> {
    let Some(pos) = args.iter().position(|a| a == "server" || a == "agent") else {
        return Ok(args);
    };
    let (path, named) = locate(&args[pos + 1..]);
    let merged = merge(&files(&path, named)?)?;
    let mut flags = Vec::new();
    for (key, values) in merged {
        if key == "config" {
            continue;
        }
        let Some(arg) = command.get_arguments().find(|a| {
            a.get_long() == Some(key.as_str())
                || a.get_all_aliases()
                    .is_some_and(|al| al.contains(&key.as_str()))
        }) else {
            eprintln!(
                "k3rs: config file: ignoring {key:?}: not a flag of `k3rs {}`",
                args[pos]
            );
            continue;
        };
        let long = arg.get_long().unwrap_or(&key).to_string();
        match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => {
                // A switch: `true` turns it on; `false` leaves the default.
                if values.last().is_some_and(|v| v == "true") {
                    flags.push(format!("--{long}"));
                }
            }
            ArgAction::Append => {
                flags.extend(values.iter().map(|v| format!("--{long}={v}")));
            }
            _ => flags.push(format!("--{long}={}", values.join(","))),
        }
    }
    let mut out = args[..=pos].to_vec();
    out.extend(flags);
    out.extend_from_slice(&args[pos + 1..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_files_replace_and_plus_appends() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.yaml");
        std::fs::write(
            &main,
            "node-label: [a=1]\ntoken: one\nwrite-kubeconfig-mode: 644\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("config.yaml.d")).unwrap();
        std::fs::write(
            dir.path().join("config.yaml.d/20-b.yaml"),
            "node-label+: [c=3]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("config.yaml.d/10-a.yaml"),
            "node-label+: [b=2]\ntoken: two\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("config.yaml.d/ignored.txt"), "token: x\n").unwrap();
        let merged = merge(&files(&main, true).unwrap()).unwrap();
        assert_eq!(
            merged,
            vec![
                (
                    "node-label".to_string(),
                    vec!["a=1".into(), "b=2".into(), "c=3".into()]
                ),
                ("token".to_string(), vec!["two".to_string()]),
                ("write-kubeconfig-mode".to_string(), vec!["644".to_string()]),
            ]
        );
        std::fs::write(
            dir.path().join("config.yaml.d/30-c.yaml"),
            "node-label: [z=9]\n",
        )
        .unwrap();
        let merged = merge(&files(&main, true).unwrap()).unwrap();
        assert_eq!(merged[0].1, vec!["z=9".to_string()]);
    }

    #[test]
    fn a_named_file_must_exist() {
        assert!(files(Path::new("/nonexistent/k3rs.yaml"), true).is_err());
        assert!(
            files(Path::new("/nonexistent/k3rs.yaml"), false)
                .unwrap()
                .is_empty()
        );
    }
}
