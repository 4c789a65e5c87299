//! `cargo xtask test`: what CI runs. Installs host packages, starts the database fixtures once, installs the
//! network guard, then fmt, clippy and every test (nextest, in parallel), and reports each phase's time.

use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::fixtures::Fixtures;
use crate::guard::Guard;
use crate::util;

pub fn run(filters: &[String]) -> Result<()> {
    let total = Instant::now();
    let mut times = Vec::new();
    let mut phase = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let t = Instant::now();
        eprintln!("==> {name}");
        let r = f();
        times.push((name.to_string(), t.elapsed()));
        r
    };

    phase("deps", &mut crate::deps::install)?;
    phase("fmt", &mut || {
        util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))
    })?;
    phase("clippy", &mut || {
        util::run(util::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    phase("build tests", &mut || {
        util::run(util::cargo().args(["build", "--workspace", "--bins"]))?;
        util::run(nextest().args(["--no-run"]))
    })?;
    phase("images", &mut crate::images::build)?;

    let guard = Guard::install()?;
    let fixtures = Fixtures::start()?;
    let tests = phase("tests", &mut || {
        let mut cmd = nextest();
        cmd.args(["--no-fail-fast"]).args(filters);
        for (k, v) in fixtures.env() {
            cmd.env(k, v);
        }
        cmd.env("K3RS_TEST_PYTHON", crate::deps::python_client()?);
        util::run(&mut cmd)
    });
    drop(fixtures);
    // cluster-up/cluster-down from this checkout, on a full run.
    let cluster = if filters.is_empty() {
        phase("cluster-up", &mut crate::cluster::smoke)
    } else {
        Ok(())
    };
    let leaked = guard.leaked()?;
    drop(guard);

    eprintln!("==> timings");
    for (name, d) in &times {
        eprintln!("    {name:<12} {:>7.1}s", d.as_secs_f64());
    }
    eprintln!(
        "    {:<12} {:>7.1}s",
        "total",
        total.elapsed().as_secs_f64()
    );
    tests?;
    cluster?;
    if leaked > 0 {
        bail!(
            "the network guard caught {leaked} packet(s) to cluster/testbed addresses leaving this machine"
        );
    }
    eprintln!("==> all checks passed");
    Ok(())
}

/// `cargo nextest run` when nextest is installed, else `cargo test` (same tests, less parallelism).
fn nextest() -> Command {
    let has_nextest = Command::new("cargo-nextest")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut c = util::cargo();
    if has_nextest {
        c.args(["nextest", "run", "--workspace"]);
    } else {
        eprintln!("test: cargo-nextest not found, using cargo test");
        c.args(["test", "--workspace"]);
    }
    c
}
