//! Test harness: real `mariadbd` servers in temp dirs on free ports, killed and reaped on drop.
//! Shared by `crates/db/tests/*.rs` and the root package's `tests/db.rs`.
//!
//! When `mariadbd` is not installed, [`mariadb_available`] prints a loud notice and the test
//! returns early — except under `CI=true`, where it fails.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use swrepl_db::{Server, ServerUrl};

/// The root password of every test server.
pub const ROOT_PASSWORD: &str = "root-pw";
/// How long a server may take to start on a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(90);

/// `true` when tests can start servers; prints the skip notice otherwise (panics under CI).
pub fn mariadb_available() -> bool {
    if find("mariadbd").is_some() && find("mariadb-install-db").is_some() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("mariadbd / mariadb-install-db not found but CI=true: install mariadb-server");
    }
    eprintln!("\n**********************************************************");
    eprintln!("SKIPPED: mariadbd not found; install mariadb-server");
    eprintln!("**********************************************************\n");
    false
}

fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/usr/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A fresh data directory, made once per test process and copied for each server.
fn template_datadir() -> &'static Path {
    static TEMPLATE: OnceLock<tempfile::TempDir> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let data = dir.path().join("data");
            let extra = dir.path().join("init.sql");
            std::fs::write(
                &extra,
                // Bootstrap mode refuses CREATE USER; give the existing root@127.0.0.1 a password.
                format!(
                    "UPDATE mysql.global_priv SET Priv=JSON_SET(Priv, '$.plugin', 'mysql_native_password', \
                     '$.authentication_string', PASSWORD('{ROOT_PASSWORD}')) WHERE Host='127.0.0.1' AND User='root';\n"
                ),
            )
            .unwrap();
            let mut cmd = Command::new(find("mariadb-install-db").expect("mariadb-install-db"));
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg("--auth-root-authentication-method=normal")
                .arg("--skip-test-db")
                .arg(format!("--extra-file={}", extra.display()));
            if running_as_root() {
                cmd.arg("--user=root");
            }
            let out = cmd.output().expect("run mariadb-install-db");
            assert!(
                out.status.success(),
                "mariadb-install-db failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            dir
        })
        .path()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// One running `mariadbd`.
pub struct MariaDb {
    pub port: u16,
    pub server_id: u32,
    pub dir: tempfile::TempDir,
    child: Child,
}

/// How to start a server.
#[derive(Clone, Copy)]
pub struct Options {
    pub server_id: u32,
    pub binlog: bool,
    /// Try SwSQL's port 5002 first (when free).
    pub prefer_5002: bool,
}

impl MariaDb {
    /// Starts a server and waits until it accepts logins.
    pub async fn start(opts: Options) -> MariaDb {
        let mut last_error = String::new();
        for attempt in 0..4 {
            let port = if opts.prefer_5002 && attempt == 0 && port_is_free(5002) {
                5002
            } else {
                free_port()
            };
            match Self::try_start(opts, port).await {
                Ok(server) => return server,
                // Another test may have taken the port between our probe and the server's bind.
                Err(e) => last_error = e,
            }
        }
        panic!("mariadbd did not start: {last_error}");
    }

    async fn try_start(opts: Options, port: u16) -> Result<MariaDb, String> {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        copy_dir(&template_datadir().join("data"), &data);
        let mut cmd = Command::new(find("mariadbd").expect("mariadbd"));
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!(
                "--log-error={}",
                dir.path().join("error.log").display()
            ))
            .arg(format!("--tmpdir={}", dir.path().display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--skip-name-resolve")
            .arg(format!("--server-id={}", opts.server_id))
            .arg("--innodb-buffer-pool-size=16M")
            .arg("--innodb-log-file-size=8M")
            .arg("--skip-slave-start")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if opts.binlog {
            cmd.arg(format!("--log-bin={}", dir.path().join("binlog").display()));
        }
        if running_as_root() {
            cmd.arg("--user=root");
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run mariadbd: {e}"))?;
        let mut server = MariaDb {
            port,
            server_id: opts.server_id,
            dir,
            child,
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = std::fs::read_to_string(server.dir.path().join("error.log"))
                    .unwrap_or_default();
                return Err(format!("mariadbd exited ({status}) on port {port}:\n{log}"));
            }
            if let Ok(mut conn) = Server::connect(&server.url()).await {
                // Another test's server may hold the port we were racing for: make sure this
                // one is ours.
                let datadir: Option<String> = conn.scalar("SELECT @@datadir").await.ok().flatten();
                conn.close().await;
                let ours = datadir.is_some_and(|d| Path::new(d.trim_end_matches('/')) == data);
                if ours {
                    return Ok(server);
                }
                let _ = server.child.kill();
                let _ = server.child.wait();
                return Err(format!("port {port} is served by another mariadbd"));
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(server.dir.path().join("error.log"))
                    .unwrap_or_default();
                return Err(format!(
                    "mariadbd on port {port} not ready after {START_DEADLINE:?}:\n{log}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The root login URL (TCP).
    pub fn url_text(&self) -> String {
        format!("mysql://root:{ROOT_PASSWORD}@127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> ServerUrl {
        ServerUrl::parse(&self.url_text()).unwrap()
    }

    /// A root connection for the test's own statements.
    pub async fn conn(&self) -> Server {
        Server::connect(&self.url()).await.expect("connect as root")
    }

    /// Runs statements as root.
    pub async fn exec(&self, statements: &[&str]) {
        let mut conn = self.conn().await;
        for sql in statements {
            conn.exec(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        conn.close().await;
    }

    /// A single value as text (`None` for no row or NULL).
    pub async fn value(&self, sql: &str) -> Option<String> {
        let mut conn = self.conn().await;
        let v = conn
            .scalar::<String>(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        conn.close().await;
        v
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Master (binlog on, server id 1, port 5002 when free) and a Slave (server id 2).
pub struct Pair {
    pub master: MariaDb,
    pub slave: MariaDb,
    /// Holds the replication password file.
    pub files: tempfile::TempDir,
}

impl Pair {
    pub async fn start() -> Pair {
        Self::start_with(true).await
    }

    /// `master_binlog: false` gives a Master that cannot replicate.
    pub async fn start_with(master_binlog: bool) -> Pair {
        let (master, slave) = tokio::join!(
            MariaDb::start(Options {
                server_id: 1,
                binlog: master_binlog,
                prefer_5002: true,
            }),
            MariaDb::start(Options {
                server_id: 2,
                binlog: true,
                prefer_5002: false,
            })
        );
        let files = tempfile::tempdir().unwrap();
        std::fs::write(files.path().join("repl.pw"), "repl-S3cret!\n").unwrap();
        Pair {
            master,
            slave,
            files,
        }
    }

    pub fn password_file(&self) -> PathBuf {
        self.files.path().join("repl.pw")
    }

    /// Waits until `sql` on the Slave returns `want` (generous deadline); returns the last value.
    pub async fn slave_eventually(&self, sql: &str, want: Option<&str>) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.slave.value(sql).await;
            if got.as_deref() == want || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
