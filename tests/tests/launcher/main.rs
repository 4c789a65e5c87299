//! The `k3rs` launcher end to end (issue 8): `k3rs server` as one process in a testbed namespace runs a
//! workload and survives its own restart; agents join with a token (and bad tokens, another CA's hash
//! and a taken node name are refused); the configuration file, its drop-ins, `K3RS_*` variables and
//! flags take precedence as in K3s; servers sharing a datastore refuse mismatched critical settings.

mod config;
mod ha;
mod join;
mod single;
mod units;

use std::time::Duration;

/// Each test's overall limit.
pub const TIMEOUT: Duration = Duration::from_secs(300);
