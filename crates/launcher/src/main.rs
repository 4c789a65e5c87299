//! `k3rs`: the thin binary over [`k3rs_launcher`] (also answers as `kubectl`, `ctr` and `crictl` when
//! called by those names, as K3s's multicall binary does).

use std::process::ExitCode;

fn main() -> ExitCode {
    k3rs_launcher::main(std::env::args_os().collect())
}
