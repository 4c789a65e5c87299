//! Project automation: `cargo xtask deps|test|bench|cluster-up|cluster-down|codegen` (see README.md).

mod bench;
mod bench_apiserver;
mod bench_controllers;
mod bench_footprint;
mod bench_kubelet;
mod bench_scheduler;
mod cluster;
mod codegen;
mod deps;
mod fixtures;
mod guard;
mod images;
mod test;
mod util;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  deps                    install the host packages builds and tests need (idempotent)
  test [FILTER...]        what CI runs: deps, database fixtures, fmt, clippy, every test
                          (FILTERs narrow the test run, e.g. `cargo xtask test kine`)
  bench <name>            run a benchmark beside its peer; writes docs/benchmarks/<name>.md
                          (names: kine, apiserver, controllers, scheduler, kubelet, footprint)
  cluster-up [--agents N] [--datastore sqlite|postgres://…|mysql://…|http(s)://etcd] [--single-process]
             [--profile release|dev]
                          a dev cluster in network namespaces (a server, N agents) on bridge k3tb15;
                          prints the kubeconfig (.k3rs/kubeconfig); re-running while it is up only prints it
  cluster-down            stop everything cluster-up started and remove its namespaces, bridge and rules
  images                  build the pause and busybox images as OCI tarballs under target/images/
                          (the air-gap form a node imports from <data-dir>/agent/images/)
  codegen                 regenerate crates/apiserver/src/schema/k8s.schema from k8s-pb and k8s-openapi
  fixtures                start PostgreSQL and MariaDB for running tests by hand; prints the env to export";

fn main() {
    if let Err(err) = run() {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        println!("{USAGE}");
        return Ok(());
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "deps" => deps::install(),
        "test" => test::run(rest),
        "bench" => bench::run(rest),
        "cluster-up" => cluster::up(rest),
        "cluster-down" => cluster::down(),
        "images" => images::build(),
        "codegen" => codegen::run(),
        "fixtures" => fixtures::interactive(),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}
