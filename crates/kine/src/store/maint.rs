//! Maintenance and cluster RPCs: status, hashes, defragmentation, snapshots, alarms and membership.

use super::Store;
use crate::error::EtcdError;
use crate::pb::{
    self, AlarmMember, AlarmRequest, AlarmResponse, StatusResponse, alarm_action, alarm_type,
};
use crate::util::Crc32c;

/// The etcd version kine reports (≥ 3.5.13, so the apiserver uses progress notifications).
pub const ETCD_VERSION: &str = "3.5.16";
/// etcd's storage version string for 3.5.
pub const STORAGE_VERSION: &str = "3.5.0";
/// How long a kine process stays in the member list without a heartbeat.
pub const MEMBER_TTL_MS: i64 = 15_000;

fn alarm_name(alarm: i32) -> &'static str {
    match alarm {
        alarm_type::NOSPACE => "NOSPACE",
        alarm_type::CORRUPT => "CORRUPT",
        _ => "NONE",
    }
}

impl Store {
    pub async fn status(&self) -> Result<StatusResponse, EtcdError> {
        let (size, in_use) = self.db.size().await?;
        self.metrics.db_size_bytes.set(size);
        let rev = self.rev();
        let errors = self
            .alarms
            .lock()
            .iter()
            .map(|(m, a)| format!("memberID:{m} alarm:{} ", alarm_name(*a)))
            .collect();
        Ok(StatusResponse {
            header: Some(self.header(rev)),
            version: ETCD_VERSION.into(),
            db_size: size,
            leader: self.member.id,
            raft_index: rev as u64,
            raft_term: super::RAFT_TERM,
            raft_applied_index: rev as u64,
            errors,
            db_size_in_use: in_use,
            is_learner: false,
            storage_version: STORAGE_VERSION.into(),
            db_size_quota: self.config.quota_backend_bytes as i64,
            downgrade_info: None,
        })
    }

    /// CRC-32C of every stored log row.
    pub async fn hash(&self) -> Result<pb::HashResponse, EtcdError> {
        let rev = self.rev();
        let mut crc = Crc32c::default();
        self.db
            .scan_log(rev, |row| {
                crc.update(&row.rev.to_le_bytes());
                crc.update(&row.sub.to_le_bytes());
                crc.update(&row.key);
                crc.update(&[u8::from(row.deleted)]);
                crc.update(&row.value);
            })
            .await?;
        Ok(pb::HashResponse {
            header: Some(self.header(rev)),
            hash: crc.value(),
        })
    }

    /// CRC-32C of the key-value state at `revision` (0 = now): the same on every kine serving the database,
    /// and unchanged by compaction.
    pub async fn hash_kv(&self, revision: i64) -> Result<pb::HashKvResponse, EtcdError> {
        self.linearize().await?;
        let req = pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision,
            ..Default::default()
        };
        let resp = self.read_range(&req, None).await?;
        let at = if revision > 0 { revision } else { self.rev() };
        let mut crc = Crc32c::default();
        for kv in &resp.kvs {
            crc.update(&kv.key);
            crc.update(&kv.value);
            for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
                crc.update(&n.to_le_bytes());
            }
        }
        Ok(pb::HashKvResponse {
            header: Some(self.header(self.rev())),
            hash: crc.value(),
            compact_revision: self.compact_rev(),
            hash_revision: at,
        })
    }

    pub async fn defragment(&self) -> Result<(), EtcdError> {
        let before = self.db.size().await?.0;
        self.db.defrag().await?;
        let after = self.db.size().await?.0;
        self.metrics.db_size_bytes.set(after);
        tracing::info!(before, after, "defragmented the datastore");
        Ok(())
    }

    /// Writes a consistent snapshot (a SQLite file with kine's schema) and returns its path; the caller
    /// streams and removes it.
    pub async fn snapshot_file(&self) -> Result<crate::util::TempPath, EtcdError> {
        let dir = self.db.scratch_dir();
        let path = dir.join(format!(
            "kine-snapshot-{}-{}.db",
            std::process::id(),
            crate::util::random_id()
        ));
        let guard = crate::util::TempPath(path.clone());
        self.db.snapshot_to(&path).await?;
        Ok(guard)
    }

    pub async fn alarm(&self, req: AlarmRequest) -> Result<AlarmResponse, EtcdError> {
        if !(alarm_type::NONE..=alarm_type::CORRUPT).contains(&req.alarm) {
            return Err(EtcdError::InvalidArgument(format!(
                "etcdserver: unknown alarm type {}",
                req.alarm
            )));
        }
        let member = |m: u64, a: i32| AlarmMember {
            member_id: m,
            alarm: a,
        };
        let alarms = match req.action {
            alarm_action::GET => {
                self.refresh_alarms().await?;
                self.alarms
                    .lock()
                    .iter()
                    .filter(|(_, a)| req.alarm == alarm_type::NONE || *a == req.alarm)
                    .map(|(m, a)| member(*m, *a))
                    .collect()
            }
            alarm_action::ACTIVATE => {
                if req.alarm == alarm_type::NONE {
                    Vec::new()
                } else {
                    self.db.alarm_set(req.member_id, req.alarm, true).await?;
                    self.refresh_alarms().await?;
                    vec![member(req.member_id, req.alarm)]
                }
            }
            alarm_action::DEACTIVATE => {
                self.refresh_alarms().await?;
                let existed = self
                    .alarms
                    .lock()
                    .iter()
                    .any(|(m, a)| *m == req.member_id && *a == req.alarm);
                if existed {
                    self.db.alarm_set(req.member_id, req.alarm, false).await?;
                    self.refresh_alarms().await?;
                    vec![member(req.member_id, req.alarm)]
                } else {
                    Vec::new()
                }
            }
            other => {
                return Err(EtcdError::InvalidArgument(format!(
                    "etcdserver: unknown alarm action {other}"
                )));
            }
        };
        Ok(AlarmResponse {
            header: Some(self.header(self.rev())),
            alarms,
        })
    }

    /// Reloads the raised alarms (another kine process may have raised or cleared one).
    pub(crate) async fn refresh_alarms(&self) -> Result<(), EtcdError> {
        let list = self.db.alarm_list().await?;
        let nospace = list.iter().any(|(_, a)| *a == alarm_type::NOSPACE);
        self.nospace
            .store(nospace, std::sync::atomic::Ordering::Relaxed);
        *self.alarms.lock() = list;
        Ok(())
    }

    pub async fn member_list(&self) -> Result<pb::MemberListResponse, EtcdError> {
        let mut members = if self.db.dialect.shared() {
            self.db
                .member_list(crate::util::now_ms() - MEMBER_TTL_MS)
                .await?
        } else {
            Vec::new()
        };
        if !members.iter().any(|m| m.id == self.member.id) {
            members.push(self.member.clone());
        }
        members.sort_by_key(|m| m.id);
        Ok(pb::MemberListResponse {
            header: Some(self.header(self.rev())),
            members: members
                .into_iter()
                .map(|m| pb::Member {
                    id: m.id,
                    name: m.name,
                    peer_ur_ls: Vec::new(),
                    client_ur_ls: m.client_urls,
                    is_learner: false,
                })
                .collect(),
        })
    }
}
