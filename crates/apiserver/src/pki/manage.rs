//! `certificate check` and `certificate rotate` (K3s's commands): a table of every certificate under
//! `server/tls` with its expiry, and setting leaves aside (into `tls/expired-<time>/`) so the next start
//! issues new ones under the same CAs. CAs are never rotated here.

use std::path::Path;

use super::PkiError;
use super::certs::{cert_info, io};

/// The services `rotate --service` knows, with the certificate files each owns.
pub const SERVICES: &[(&str, &[&str])] = &[
    ("admin", &["client-admin"]),
    (
        "api-server",
        &["serving-kube-apiserver", "client-kube-apiserver"],
    ),
    ("controller-manager", &["client-controller"]),
    ("scheduler", &["client-scheduler"]),
    ("kube-proxy", &["client-kube-proxy"]),
    ("deployer", &["client-deployer"]),
    ("lb", &["client-lb"]),
    ("dns", &["client-dns"]),
    ("supervisor", &["client-supervisor"]),
    ("auth-proxy", &["client-auth-proxy"]),
];

/// One certificate's line in `certificate check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRow {
    pub file: String,
    pub subject: String,
    pub issuer: String,
    /// RFC 3339.
    pub not_after: String,
    pub days_left: i64,
    /// OK, WARNING (renewed at next start), EXPIRED.
    pub status: &'static str,
    pub is_ca: bool,
}

/// Every certificate in `<data_dir>/server/tls`, sorted by file name.
pub fn check(data_dir: &Path) -> Result<Vec<CertRow>, PkiError> {
    let tls = data_dir.join("server/tls");
    let mut rows = Vec::new();
    let entries = std::fs::read_dir(&tls).map_err(io(&tls))?;
    let now = crate::meta::unix_now();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("crt") {
            continue;
        }
        let pem = std::fs::read_to_string(&path).map_err(io(&path))?;
        let Some(info) = cert_info(&pem) else {
            return Err(PkiError::Invalid(format!(
                "{}: not a PEM certificate",
                path.display()
            )));
        };
        let days_left = (info.not_after - now).div_euclid(86_400);
        let status = if info.not_after <= now {
            "EXPIRED"
        } else if !info.is_ca && days_left < super::RENEW_DAYS {
            "WARNING"
        } else {
            "OK"
        };
        rows.push(CertRow {
            file: e.file_name().to_string_lossy().into_owned(),
            subject: info.common_name,
            issuer: cert_info(&pem).map(|i| i.issuer).unwrap_or_default(),
            not_after: crate::meta::rfc3339(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(info.not_after.max(0) as u64),
            ),
            days_left,
            status,
            is_ca: info.is_ca,
        });
    }
    rows.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(rows)
}

/// Moves the leaf certificates of `service` (all when `None`) aside; returns the files moved. The
/// server must be restarted to issue new ones.
pub fn rotate(data_dir: &Path, service: Option<&str>) -> Result<Vec<String>, PkiError> {
    let tls = data_dir.join("server/tls");
    let files: Vec<&str> = match service {
        None => SERVICES
            .iter()
            .flat_map(|(_, f)| f.iter().copied())
            .collect(),
        Some(s) => SERVICES
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, f)| f.to_vec())
            .ok_or_else(|| {
                let known: Vec<&str> = SERVICES.iter().map(|(n, _)| *n).collect();
                PkiError::Invalid(format!(
                    "unknown service {s:?} (known: {})",
                    known.join(", ")
                ))
            })?,
    };
    let stamp = crate::meta::now_rfc3339().replace([':', '-'], "");
    let backup = tls.join(format!("expired-{stamp}"));
    std::fs::create_dir_all(&backup).map_err(io(&backup))?;
    let mut moved = Vec::new();
    for f in files {
        for ext in ["crt", "key"] {
            let from = tls.join(format!("{f}.{ext}"));
            if from.exists() {
                let to = backup.join(format!("{f}.{ext}"));
                std::fs::rename(&from, &to).map_err(io(&from))?;
                moved.push(format!("{f}.{ext}"));
            }
        }
    }
    Ok(moved)
}

/// `certificate check` as a table.
pub fn table(rows: &[CertRow]) -> String {
    let mut out = format!(
        "{:<34} {:<40} {:<22} {:>9} {}\n",
        "FILENAME", "SUBJECT", "EXPIRES", "DAYS LEFT", "STATUS"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<34} {:<40} {:<22} {:>9} {}\n",
            r.file, r.subject, r.not_after, r.days_left, r.status
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_lists_and_rotate_sets_leaves_aside() {
        let dir = tempfile::tempdir().unwrap();
        let names = super::super::ServingNames {
            hostname: "n".into(),
            ips: vec![],
            dns: vec![],
        };
        let a = super::super::ensure(dir.path(), &names, "https://127.0.0.1:6443").unwrap();
        let rows = check(dir.path()).unwrap();
        let ca = rows.iter().find(|r| r.file == "server-ca.crt").unwrap();
        assert!(ca.is_ca && ca.days_left > 3000 && ca.status == "OK");
        let admin = rows.iter().find(|r| r.file == "client-admin.crt").unwrap();
        assert!(admin.days_left >= 364 && admin.subject == "system:admin");
        assert!(table(&rows).contains("client-admin.crt"));
        assert!(rotate(dir.path(), Some("nope")).is_err());
        let moved = rotate(dir.path(), None).unwrap();
        assert!(moved.contains(&"client-admin.crt".to_string()));
        let b = super::super::ensure(dir.path(), &names, "https://127.0.0.1:6443").unwrap();
        assert_eq!(a.server_ca_pem, b.server_ca_pem, "CAs stay");
        assert_ne!(a.serving_cert_pem, b.serving_cert_pem, "leaves are new");
    }
}
