//! `k3rs-kine`: the thin binary over [`k3rs_kine::cli`] (the `k3rs kine` subcommand shares its flags).

use std::process::ExitCode;

fn main() -> ExitCode {
    k3rs_kine::cli::main(clap::Parser::parse())
}
