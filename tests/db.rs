//! `swrepl db …` end to end: the real binary against real MariaDB Master/Slave pairs.

#[path = "../crates/db/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::Pair;

fn swrepl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_swrepl"))
        .args(args)
        .env("SWREPL_LOG", "warn")
        .output()
        .expect("run swrepl")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn setup_args<'a>(pair: &'a Pair, master: &'a str, slave: &'a str, pw: &'a str) -> Vec<&'a str> {
    let _ = pair;
    vec![
        "--master",
        master,
        "--slave",
        slave,
        "--repl-user",
        "repl",
        "--repl-password-file",
        pw,
    ]
}

/// plan → setup → rows flow → check healthy (text, JSON, config file) → a stopped IO thread is
/// reported with exit 1.
#[tokio::test(flavor = "multi_thread")]
async fn plan_setup_check() {
    if !support::mariadb_available() {
        return;
    }
    let pair = Pair::start().await;
    let (m, s) = (pair.master.url_text(), pair.slave.url_text());
    let pw = pair.password_file().display().to_string();
    let conn = setup_args(&pair, &m, &s, &pw);

    let out = swrepl(&[&["db", "plan"][..], &conn].concat());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'repl'@'127.0.0.1'"),
        "{stdout}"
    );
    assert!(!stdout.to_uppercase().contains("GRANT ALL"), "{stdout}");
    assert!(
        stdout.contains("replicate-wild-ignore-table=%.swsystag"),
        "{stdout}"
    );
    assert!(stdout.contains("read_only=1"), "{stdout}");
    for secret in ["repl-S3cret", support::ROOT_PASSWORD] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "password printed:\n{stdout}"
        );
    }
    // Plan changed nothing.
    assert_eq!(pair.slave.value("SHOW SLAVE STATUS").await, None);

    // A wildcard host is refused before anything changes.
    let out = swrepl(&[&["db", "setup"][..], &conn, &["--repl-host", "%"]].concat());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: refused") && stderr.lines().count() == 1,
        "{stderr}"
    );

    let out = swrepl(&[&["db", "setup"][..], &conn].concat());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("healthy"), "{stdout}");
    let out = swrepl(&[&["db", "setup"][..], &conn].concat());
    assert_eq!(out.status.code(), Some(0), "second setup: {:?}", text(&out));

    pair.master
        .exec(&[
            "CREATE DATABASE sw",
            "CREATE TABLE sw.opencall (callref INT PRIMARY KEY, summary TEXT)",
            "INSERT INTO sw.opencall VALUES (1, 'hello')",
        ])
        .await;
    let got = pair
        .slave_eventually(
            "SELECT summary FROM sw.opencall WHERE callref=1",
            Some("hello"),
        )
        .await;
    assert_eq!(got.as_deref(), Some("hello"));

    let config = pair.files.path().join("swrepl.toml");
    std::fs::write(
        &config,
        format!("[db]\nmaster = \"{m}\"\nslave = \"{s}\"\nmax_lag = 30\n"),
    )
    .unwrap();
    let config = config.display().to_string();
    let out = swrepl(&["db", "check", "--config", &config, "--json"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(
        report["problems"].as_array().map(Vec::len),
        Some(0),
        "{stdout}"
    );
    assert!(report["true_lag_ms"].is_u64(), "{stdout}");

    pair.slave.exec(&["STOP SLAVE IO_THREAD"]).await;
    let out = swrepl(&["db", "check", "--config", &config]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("PROBLEM: slave: IO thread not running")),
        "{stdout}"
    );
}

/// seed copies existing data (not swsystag's rows) and replication continues from the dump's
/// position; checksums agree, then find a row changed on the Slave.
#[tokio::test(flavor = "multi_thread")]
async fn seed_then_replicate_and_checksums() {
    if !support::mariadb_available() {
        return;
    }
    let pair = Pair::start().await;
    pair.master
        .exec(&[
            "CREATE DATABASE sw",
            "CREATE TABLE sw.opencall (callref INT PRIMARY KEY, summary TEXT) ENGINE=InnoDB",
            "CREATE TABLE sw.swsystag (tag VARCHAR(40) PRIMARY KEY) ENGINE=InnoDB",
            "INSERT INTO sw.swsystag VALUES ('master-only')",
            "CREATE TABLE sw.legacy (id INT, note TEXT) ENGINE=MyISAM",
            "INSERT INTO sw.legacy VALUES (1,'a'),(2,'b')",
        ])
        .await;
    let rows: Vec<String> = (1..=500).map(|i| format!("({i}, 'call {i}')")).collect();
    pair.master
        .exec(&[&format!(
            "INSERT INTO sw.opencall VALUES {}",
            rows.join(",")
        )])
        .await;

    let (m, s) = (pair.master.url_text(), pair.slave.url_text());
    let pw = pair.password_file().display().to_string();
    let conn = setup_args(&pair, &m, &s, &pw);
    // setup refuses: the Slave lacks the data.
    let out = swrepl(&[&["db", "setup"][..], &conn].concat());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("swrepl db seed"), "{stderr}");

    let out = swrepl(&[&["db", "seed"][..], &conn].concat());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("seeded 1 database(s) (sw)"), "{stdout}");
    assert_eq!(
        pair.slave
            .value("SELECT COUNT(*) FROM sw.opencall")
            .await
            .as_deref(),
        Some("500")
    );
    assert_eq!(
        pair.slave
            .value("SELECT COUNT(*) FROM sw.swsystag")
            .await
            .as_deref(),
        Some("0")
    );

    pair.master
        .exec(&["INSERT INTO sw.opencall VALUES (501, 'after seed')"])
        .await;
    let got = pair
        .slave_eventually(
            "SELECT summary FROM sw.opencall WHERE callref=501",
            Some("after seed"),
        )
        .await;
    assert_eq!(got.as_deref(), Some("after seed"));

    let out = swrepl(&[
        "db",
        "check",
        "--master",
        &m,
        "--slave",
        &s,
        "--checksum",
        "--chunk-rows",
        "64",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("checksums: 2 tables compared, 0 differ"),
        "{stdout}"
    );

    pair.slave
        .exec(&["UPDATE sw.opencall SET summary='edited on the slave' WHERE callref=300"])
        .await;
    let out = swrepl(&[
        "db",
        "check",
        "--master",
        &m,
        "--slave",
        &s,
        "--checksum",
        "--chunk-rows",
        "64",
    ]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("PROBLEM: checksum: table sw.opencall differs"),
        "{stdout}"
    );
}

/// A Master without the binary log: setup refuses with the lines to add and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn setup_refuses_a_master_without_binlog() {
    if !support::mariadb_available() {
        return;
    }
    let pair = Pair::start_with(false).await;
    let (m, s) = (pair.master.url_text(), pair.slave.url_text());
    let pw = pair.password_file().display().to_string();
    let out = swrepl(&[&["db", "setup"][..], &setup_args(&pair, &m, &s, &pw)].concat());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("log-bin=swrepl-bin") && stderr.contains("[mysqld]"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(
        pair.master
            .value("SELECT COUNT(*) FROM mysql.user WHERE User='repl'")
            .await
            .as_deref(),
        Some("0")
    );
    assert_eq!(pair.slave.value("SHOW SLAVE STATUS").await, None);
}

/// Bad URLs and unreachable servers: one line on stderr, exit 2. Needs no server.
#[test]
fn bad_input_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "x\n").unwrap();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("mysql://root:hunter2@127.0.0.1:{closed_port}");
    let cases: Vec<Vec<String>> = vec![
        vec![
            "check".into(),
            "--master".into(),
            "http://nope".into(),
            "--slave".into(),
            "mysql://root@h".into(),
        ],
        vec![
            "check".into(),
            "--master".into(),
            unreachable.clone(),
            "--slave".into(),
            unreachable.clone(),
        ],
        vec![
            "plan".into(),
            "--master".into(),
            unreachable.clone(),
            "--slave".into(),
            unreachable.clone(),
            "--repl-user".into(),
            "repl".into(),
        ],
        vec![
            "promote".into(),
            "--slave".into(),
            "mysql://root:hunter2@127.0.0.1:notaport".into(),
        ],
        vec![
            "setup".into(),
            "--master".into(),
            unreachable.clone(),
            "--slave".into(),
            unreachable,
            "--repl-user".into(),
            "repl".into(),
            "--repl-password-file".into(),
            missing(dir.path()),
        ],
    ];
    for case in cases {
        let args: Vec<&str> = std::iter::once("db")
            .chain(case.iter().map(String::as_str))
            .collect();
        let out = swrepl(&args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.lines().count() == 1,
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}

fn missing(dir: &Path) -> String {
    dir.join("no-such-password-file").display().to_string()
}

/// The long-running services do the database's routine work: `send` writes the heartbeat on the
/// Master every second, `receive` runs `db check` periodically and `status` reports its verdict.
#[tokio::test(flavor = "multi_thread")]
async fn services_write_the_heartbeat_and_check_replication() {
    if !support::mariadb_available() {
        return;
    }
    let pair = Pair::start().await;
    let (m, s) = (pair.master.url_text(), pair.slave.url_text());
    let pw = pair.password_file().display().to_string();
    let out = swrepl(&[&["db", "setup"][..], &setup_args(&pair, &m, &s, &pw)].concat());
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name).display().to_string();
    let fingerprint = |id: &str| {
        let out = swrepl(&["init", "--dir", &dir(id)]);
        text(&out).0.lines().last().unwrap().trim().to_string()
    };
    let (master_fp, slave_fp) = (fingerprint("master-id"), fingerprint("slave-id"));
    std::fs::create_dir_all(dir("master")).unwrap();
    std::fs::create_dir_all(dir("slave")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let slave_toml = tmp.path().join("slave.toml");
    std::fs::write(
        &slave_toml,
        format!(
            "[receive]\nroot = '{}'\nlisten = '127.0.0.1:{port}'\nidentity = '{}'\ntrust = ['{master_fp}']\n\n[db]\nmaster = '{m}'\nslave = '{s}'\n",
            dir("slave"),
            dir("slave-id")
        ),
    )
    .unwrap();
    let master_toml = tmp.path().join("master.toml");
    std::fs::write(
        &master_toml,
        format!(
            "[send]\nroot = '{}'\nconnect = '127.0.0.1:{port}'\nidentity = '{}'\ntrust = ['{slave_fp}']\n\n[db]\nmaster = '{m}'\n",
            dir("master"),
            dir("master-id")
        ),
    )
    .unwrap();
    let spawn = |args: &[&str]| {
        KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_swrepl"))
                .args(args)
                .env("SWREPL_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let _receiver = spawn(&["receive", "--config", slave_toml.to_str().unwrap()]);
    let _sender = spawn(&["send", "--config", master_toml.to_str().unwrap()]);

    let check_file = Path::new(&dir("slave")).join(".swrepl/db-check.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let record: serde_json::Value = loop {
        if let Ok(text) = std::fs::read_to_string(&check_file) {
            break serde_json::from_str(&text).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no periodic database check was recorded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(record["healthy"], true, "{record}");

    // The sender keeps the Master's heartbeat fresh: it advances while we watch.
    let first = pair
        .master
        .value("SELECT MAX(ts) FROM swrepl.heartbeat")
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = pair
            .master
            .value("SELECT MAX(ts) FROM swrepl.heartbeat")
            .await;
        if now.is_some() && now != first {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the heartbeat does not advance"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }

    let out = swrepl(&["status", "--config", slave_toml.to_str().unwrap(), "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("periodic_check"), "{stdout}{stderr}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[path = "common/services.rs"]
mod services;

/// `swrepl switchover` with `[switchover] slave_db` against a real pair: the database is promoted
/// (replication stopped and cleared, the Slave writable) and the services start in the runbook's
/// order.
#[tokio::test(flavor = "multi_thread")]
async fn switchover_promotes_a_real_replica() {
    if !support::mariadb_available() {
        return;
    }
    let pair = Pair::start().await;
    let (m, s) = (pair.master.url_text(), pair.slave.url_text());
    let pw = pair.password_file().display().to_string();
    let out = swrepl(&[&["db", "setup"][..], &setup_args(&pair, &m, &s, &pw)].concat());
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(
        pair.slave.value("SELECT @@read_only").await.as_deref(),
        Some("1")
    );

    let tmp = tempfile::tempdir().unwrap();
    let lab = services::Services::standby(&tmp.path().join("lab"));
    let root = tmp.path().join("slave");
    std::fs::create_dir_all(root.join(".swrepl")).unwrap();
    // The receiver has applied everything it was sent.
    std::fs::write(
        root.join(".swrepl/status.json"),
        r#"{"connected":false,"peer":null,"last_ack_seq":7,"pending":0,"last_applied_unix_ms":1,"last_heartbeat_unix_ms":1,"master_service":null,"last_pass_pruned":0,"last_pass_held":0}"#,
    )
    .unwrap();
    let config = tmp.path().join("slave.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[switchover]\nreceiver_root = \"{}\"\nslave_db = \"{s}\"\nmax_db_lag_seconds = 30\nstart_timeout_seconds = 20\n",
            lab.table(),
            services::toml_str(&root)
        ),
    )
    .unwrap();

    let out = swrepl(&["switchover", "--config", config.to_str().unwrap(), "--yes"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(lab.order_log(), services::starts(&services::ORDER));
    assert_eq!(
        pair.slave.value("SELECT @@read_only").await.as_deref(),
        Some("0")
    );
    assert_eq!(
        pair.slave.value("SHOW SLAVE STATUS").await,
        None,
        "replica configuration cleared"
    );
    pair.slave
        .exec(&["CREATE DATABASE IF NOT EXISTS after_switchover"])
        .await;

    // A second run is a no-op.
    let again = swrepl(&["switchover", "--config", config.to_str().unwrap(), "--yes"]);
    assert_eq!(again.status.code(), Some(0), "{:?}", text(&again));
    assert_eq!(lab.order_log().len(), services::ORDER.len());
}
