//! `k3rs-scheduler`: the thin binary over [`k3rs_scheduler::cli`] (the `k3rs scheduler` subcommand shares its flags).

use std::process::ExitCode;

fn main() -> ExitCode {
    k3rs_scheduler::cli::main(clap::Parser::parse())
}
