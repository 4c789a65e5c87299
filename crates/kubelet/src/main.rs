//! `k3rs-kubelet`: the thin binary over [`k3rs_kubelet::cli`] (the `k3rs kubelet` subcommand shares its flags).

use std::process::ExitCode;

fn main() -> ExitCode {
    k3rs_kubelet::cli::main(clap::Parser::parse())
}
