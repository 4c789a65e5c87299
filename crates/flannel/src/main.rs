//! `k3rs-flannel`: the thin binary over [`k3rs_flannel::cli`] (the `k3rs flannel` subcommand shares its flags).

use std::process::ExitCode;

fn main() -> ExitCode {
    k3rs_flannel::cli::main(clap::Parser::parse())
}
