//! The library against a real MariaDB Master/Slave pair.

mod support;

use std::time::Duration;

use support::Pair;
use swrepl_db::{check, promote, replica_lag, setup, CheckOptions, ReplicationConfig};

fn config(pair: &Pair) -> ReplicationConfig {
    ReplicationConfig {
        master: pair.master.url(),
        slave: pair.slave.url(),
        repl_user: "repl".into(),
        repl_password: "repl-S3cret!".into(),
        repl_host: None,
        master_address: None,
        delay: None,
        master_ini: None,
        slave_ini: Some(pair.files.path().join("slave.cnf")),
    }
}

fn opts(checksums: bool) -> CheckOptions {
    CheckOptions {
        checksums,
        chunk_rows: 3,
        heartbeat_wait: Duration::from_secs(20),
        ..CheckOptions::default()
    }
}

/// One pair, the life of a replication link: setup (twice), rows flow, swsystag does not,
/// healthy check, a divergence found by checksums, a stopped thread found, promotion.
#[tokio::test(flavor = "multi_thread")]
async fn replication_lifecycle() {
    if !support::mariadb_available() {
        return;
    }
    let pair = Pair::start().await;
    std::fs::write(pair.files.path().join("slave.cnf"), "[mysqld]\nport=5002\n").unwrap();
    let cfg = config(&pair);

    let report = setup(&cfg).await.expect("setup");
    assert!(report.position.is_some());
    assert!(report.ini_edits[0].1.backup.is_some());
    let ini = std::fs::read_to_string(pair.files.path().join("slave.cnf")).unwrap();
    assert!(
        ini.contains("replicate-wild-ignore-table=%.swsystag"),
        "{ini}"
    );
    // Idempotent: the second run keeps the position and changes nothing on disk.
    let again = setup(&cfg).await.expect("second setup");
    assert!(again.position.is_none());
    assert!(again.ini_edits[0].1.backup.is_none());

    // The account is least-privilege and host-restricted.
    let grants = pair
        .master
        .value("SELECT GROUP_CONCAT(Host) FROM mysql.user WHERE User='repl'")
        .await;
    assert_eq!(grants.as_deref(), Some("127.0.0.1"));

    pair.master
        .exec(&[
            "CREATE DATABASE sw",
            "CREATE TABLE sw.opencall (callref INT PRIMARY KEY, summary VARCHAR(100)) ENGINE=InnoDB",
            "CREATE TABLE sw.swsystag (tag VARCHAR(50) PRIMARY KEY) ENGINE=InnoDB",
            "INSERT INTO sw.opencall VALUES (1,'printer'),(2,'email'),(3,'vpn'),(4,'disk'),(5,'login'),(6,'wifi'),(7,'x')",
            "INSERT INTO sw.swsystag VALUES ('master-tag')",
        ])
        .await;
    let got = pair
        .slave_eventually(
            "SELECT summary FROM sw.opencall WHERE callref=5",
            Some("login"),
        )
        .await;
    assert_eq!(got.as_deref(), Some("login"));
    // The CREATE TABLE of swsystag is filtered too: the table must not exist, or be empty.
    let tag = pair
        .slave
        .value("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA='sw' AND TABLE_NAME='swsystag'")
        .await;
    assert_eq!(tag.as_deref(), Some("0"), "swsystag replicated");

    let healthy = check(&cfg.master, &cfg.slave, &opts(true)).await.unwrap();
    assert!(healthy.healthy(), "{:?}", healthy.problems);
    assert!(healthy.true_lag_ms.is_some());
    assert!(healthy
        .checksums
        .iter()
        .any(|c| c.table == "sw.opencall" && c.matches && c.rows == 7));

    let lag = replica_lag(&cfg.slave).await.unwrap();
    assert!(lag.io_running && lag.sql_running && lag.last_error.is_none());
    assert!(lag.true_lag.is_some());

    // A divergence made on the Slave behind replication's back.
    pair.slave
        .exec(&["UPDATE sw.opencall SET summary='tampered' WHERE callref=6"])
        .await;
    let diverged = check(&cfg.master, &cfg.slave, &opts(true)).await.unwrap();
    assert!(
        diverged
            .problems
            .iter()
            .any(|p| p.contains("sw.opencall differs")),
        "{:?}",
        diverged.problems
    );

    pair.slave.exec(&["STOP SLAVE SQL_THREAD"]).await;
    let stopped = check(&cfg.master, &cfg.slave, &opts(false)).await.unwrap();
    assert!(
        stopped
            .problems
            .iter()
            .any(|p| p.contains("SQL thread not running")),
        "{:?}",
        stopped.problems
    );
    assert!(!replica_lag(&cfg.slave).await.unwrap().sql_running);

    promote(&cfg.slave).await.expect("promote");
    assert_eq!(
        pair.slave.value("SELECT @@read_only").await.as_deref(),
        Some("0")
    );
    let status = pair.slave.value("SHOW SLAVE STATUS").await;
    assert_eq!(status, None, "replica configuration should be gone");
    pair.slave
        .exec(&["INSERT INTO sw.opencall VALUES (100,'after promotion')"])
        .await;
    promote(&cfg.slave).await.expect("promote is idempotent");
}
