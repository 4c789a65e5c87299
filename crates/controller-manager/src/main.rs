//! `k3rs-controller-manager`: the thin binary over [`k3rs_controller_manager::cli`] (the `k3rs controller-manager` subcommand shares its flags).

use std::process::ExitCode;

fn main() -> ExitCode {
    k3rs_controller_manager::cli::main(clap::Parser::parse())
}
