//! Throwaway database servers for tests and benchmarks: PostgreSQL and MariaDB on loopback, each with its
//! own data directory, a `k3rs`/`k3rs` superuser, stopped (by PID) and removed when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::util::{self, Daemon};

/// The environment variables tests read the server URLs from.
pub const POSTGRES_ENV: &str = "K3RS_TEST_POSTGRES_URL";
pub const MYSQL_ENV: &str = "K3RS_TEST_MYSQL_URL";

#[derive(Debug)]
pub struct Fixtures {
    pub postgres_url: String,
    pub mysql_url: String,
    // Dropped in reverse order of declaration: servers stop before their directory goes.
    _postgres: Daemon,
    _mariadb: Daemon,
    dir: PathBuf,
}

impl Drop for Fixtures {
    fn drop(&mut self) {
        // Daemons are dropped after this body runs; stop them first so the directory can go.
        self._postgres.stop();
        self._mariadb.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fixtures {
    pub fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("k3rs-fixtures-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (postgres, postgres_url) = start_postgres(&dir).context("starting PostgreSQL")?;
        let (mariadb, mysql_url) = start_mariadb(&dir).context("starting MariaDB")?;
        Ok(Self {
            postgres_url,
            mysql_url,
            _postgres: postgres,
            _mariadb: mariadb,
            dir,
        })
    }

    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            (POSTGRES_ENV, self.postgres_url.clone()),
            (MYSQL_ENV, self.mysql_url.clone()),
        ]
    }
}

fn postgres_bin(name: &str) -> Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (run `cargo xtask deps`)")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|v| v.join("bin").join(name))
        .find(|p| p.exists())
        .with_context(|| {
            format!("no PostgreSQL {name} under /usr/lib/postgresql (run `cargo xtask deps`)")
        })
}

/// PostgreSQL refuses to run as root: run it as the `postgres` user the package creates.
fn as_postgres(program: &Path) -> Command {
    if crate::deps::is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn start_postgres(dir: &Path) -> Result<(Daemon, String)> {
    let data = dir.join("postgres");
    std::fs::create_dir_all(&data)?;
    if crate::deps::is_root() {
        util::output(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data),
        )?;
    }
    let pwfile = dir.join("pgpass");
    std::fs::write(&pwfile, "k3rs\n")?;
    if crate::deps::is_root() {
        util::output(Command::new("chown").arg("postgres").arg(&pwfile))?;
    }
    util::output(
        as_postgres(&postgres_bin("initdb")?)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "k3rs",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C.UTF-8"]),
    )
    .context("initdb")?;
    let port = util::free_port()?;
    let daemon = Daemon::spawn(
        "postgres",
        as_postgres(&postgres_bin("postgres")?)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&data)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=64MB",
            ]),
        &dir.join("postgres.log"),
    )?;
    util::wait_port(port, Duration::from_secs(60), "PostgreSQL")?;
    eprintln!(
        "fixtures: PostgreSQL on 127.0.0.1:{port} (pid {})",
        daemon.pid()
    );
    Ok((
        daemon,
        format!("postgres://k3rs:k3rs@127.0.0.1:{port}/postgres"),
    ))
}

fn start_mariadb(dir: &Path) -> Result<(Daemon, String)> {
    let data = dir.join("mariadb");
    std::fs::create_dir_all(&data)?;
    let user = if crate::deps::is_root() { "root" } else { "" };
    let mut install = Command::new("mariadb-install-db");
    install
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
    if !user.is_empty() {
        install.arg(format!("--user={user}"));
    }
    util::output(&mut install).context("mariadb-install-db (run `cargo xtask deps`)")?;
    let port = util::free_port()?;
    let socket = dir.join("mariadb.sock");
    let mut cmd = Command::new("mariadbd");
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--pid-file={}", dir.join("mariadb.pid").display()))
        .arg(format!("--port={port}"))
        .args([
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=128M",
            "--max-connections=400",
            "--innodb-flush-log-at-trx-commit=1",
        ]);
    if !user.is_empty() {
        cmd.arg(format!("--user={user}"));
    }
    let daemon = Daemon::spawn("mariadb", &mut cmd, &dir.join("mariadb.log"))?;
    util::wait_port(port, Duration::from_secs(60), "MariaDB")?;
    let sql = "CREATE USER IF NOT EXISTS 'k3rs'@'%' IDENTIFIED BY 'k3rs'; \
               GRANT ALL PRIVILEGES ON *.* TO 'k3rs'@'%' WITH GRANT OPTION; FLUSH PRIVILEGES;";
    let mut last = None;
    for _ in 0..50 {
        match util::output(
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", socket.display()))
                .args(["-uroot", "-e", sql]),
        ) {
            Ok(_) => {
                last = None;
                break;
            }
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    if let Some(e) = last {
        bail!("creating the k3rs MariaDB user: {e:#}");
    }
    eprintln!(
        "fixtures: MariaDB on 127.0.0.1:{port} (pid {})",
        daemon.pid()
    );
    Ok((daemon, format!("mysql://k3rs:k3rs@127.0.0.1:{port}/")))
}

/// `cargo xtask fixtures`: starts the servers, prints the environment for `cargo nextest run`, waits for Ctrl-C.
pub fn interactive() -> Result<()> {
    crate::deps::install()?;
    let f = Fixtures::start()?;
    println!("# database fixtures are up; in another shell:");
    for (k, v) in f.env() {
        println!("export {k}={v}");
    }
    println!("# press Enter to stop them");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(f);
    Ok(())
}
