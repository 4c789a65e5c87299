//! `k3rs-apiserver`: the thin binary over [`k3rs_apiserver::cli`] (the `k3rs apiserver` subcommand shares its flags).

use std::process::ExitCode;

fn main() -> ExitCode {
    k3rs_apiserver::cli::main(clap::Parser::parse())
}
