//! `check`: one verdict on the replication link, plus [`replica_lag`] and [`promote`] for the
//! switch-over.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::checksum::{compare_checksums, TableChecksum};
use crate::heartbeat::{age, read_heartbeat, server_now, write_heartbeat};
use crate::plan::SWSYSTAG_FILTER;
use crate::server::{BinlogPosition, ReplicaStatus, Server, ServerInfo};
use crate::{DbError, ServerUrl};

/// What makes the link unhealthy, and optional extras.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Largest acceptable lag (Seconds_Behind_Master and heartbeat), beyond any configured delay.
    pub max_lag: Duration,
    /// How long to wait for the heartbeat written by the check to reach the Slave.
    pub heartbeat_wait: Duration,
    /// Compare per-table checksums of Master and Slave (excluding swsystag).
    pub checksums: bool,
    /// Rows per checksum chunk.
    pub chunk_rows: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_lag: Duration::from_secs(60),
            heartbeat_wait: Duration::from_secs(5),
            checksums: false,
            chunk_rows: 1000,
        }
    }
}

/// The result of [`check`]: facts, and one line per problem. Healthy when `problems` is empty.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub master: ServerInfo,
    pub slave: ServerInfo,
    pub master_position: Option<BinlogPosition>,
    pub replica: Option<ReplicaStatus>,
    /// Age of the newest heartbeat on the Slave, by the Master's clock (milliseconds).
    pub true_lag_ms: Option<u64>,
    pub checksums: Vec<TableChecksum>,
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }

    /// A short human summary (the problems are listed separately).
    pub fn summary_lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "master: {} server_id={} binlog={}",
            self.master.version_text,
            self.master.server_id,
            self.master_position
                .as_ref()
                .map(|p| format!("{}:{}", p.file, p.position))
                .unwrap_or_else(|| "-".into())
        )];
        lines.push(format!(
            "slave:  {} server_id={} read_only={}",
            self.slave.version_text,
            self.slave.server_id,
            if self.slave.read_only { "ON" } else { "OFF" }
        ));
        if let Some(r) = &self.replica {
            let pos = |p: &Option<BinlogPosition>| {
                p.as_ref()
                    .map(|p| format!("{}:{}", p.file, p.position))
                    .unwrap_or_else(|| "-".into())
            };
            lines.push(format!(
                "replication from {}: io={} sql={} read={} executed={} seconds_behind={} delay={}s",
                r.source_address(),
                r.io_state,
                if r.sql_running { "Yes" } else { "No" },
                pos(&r.read_position),
                pos(&r.exec_position),
                r.seconds_behind
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "NULL".into()),
                r.sql_delay
            ));
        }
        lines.push(format!(
            "true lag (heartbeat): {}",
            self.true_lag_ms
                .map(|ms| format!("{:.3}s", ms as f64 / 1000.0))
                .unwrap_or_else(|| "unknown".into())
        ));
        if !self.checksums.is_empty() {
            let differing = self.checksums.iter().filter(|c| !c.matches).count();
            lines.push(format!(
                "checksums: {} tables compared, {differing} differ",
                self.checksums.len()
            ));
        }
        lines
    }
}

/// Checks the link between `master` and `slave`. `Err` only when a server cannot be checked
/// (unreachable, refused login); everything wrong with replication is in `problems`.
pub async fn check(
    master: &ServerUrl,
    slave: &ServerUrl,
    opts: &CheckOptions,
) -> Result<CheckReport, DbError> {
    let mut m = Server::connect(master).await?;
    let mut s = Server::connect(slave).await?;
    let report = check_connected(&mut m, &mut s, opts).await;
    m.close().await;
    s.close().await;
    report
}

pub(crate) async fn check_connected(
    m: &mut Server,
    s: &mut Server,
    opts: &CheckOptions,
) -> Result<CheckReport, DbError> {
    let mut problems = Vec::new();
    if !m.info.log_bin {
        problems.push(
            "master: the binary log is off (log-bin missing from its option file)".to_string(),
        );
    }
    if m.info.server_id == 0 || s.info.server_id == 0 {
        problems.push(format!(
            "server ids are not set (master={}, slave={}): set server-id in both option files",
            m.info.server_id, s.info.server_id
        ));
    } else if m.info.server_id == s.info.server_id {
        problems.push(format!(
            "server ids are not unique: both servers have server_id={}",
            m.info.server_id
        ));
    }
    if !s.info.read_only {
        problems.push(
            "slave: read_only is OFF, so applications can write to it and break replication".into(),
        );
    }
    let master_position = if m.info.log_bin {
        m.master_status().await?
    } else {
        None
    };
    let replica = s.replica_status().await?;
    match &replica {
        None => problems.push("slave: not configured as a replica (run `swrepl db setup`)".into()),
        Some(r) => replica_problems(r, m, opts, &mut problems),
    }
    let true_lag = match &replica {
        Some(r) if m.info.log_bin => measure_true_lag(m, s, r, opts, &mut problems).await?,
        _ => None,
    };
    let checksums = if opts.checksums {
        let applying = replica
            .as_ref()
            .is_some_and(|r| r.io_running && r.sql_running);
        let sums = compare_checksums(m, s, opts.chunk_rows, applying).await?;
        for c in sums.iter().filter(|c| !c.matches) {
            problems.push(format!(
                "checksum: table {} differs between Master and Slave ({})",
                c.table, c.detail
            ));
        }
        sums
    } else {
        Vec::new()
    };
    Ok(CheckReport {
        master: m.info.clone(),
        slave: s.info.clone(),
        master_position,
        replica,
        true_lag_ms: true_lag.map(|d| d.as_millis() as u64),
        checksums,
        problems,
    })
}

fn replica_problems(
    r: &ReplicaStatus,
    m: &Server,
    opts: &CheckOptions,
    problems: &mut Vec<String>,
) {
    if r.master_port != m.url.port || !same_host(&r.master_host, &m.url.host) {
        problems.push(format!(
            "slave: replicates from {}, not from the Master {} (if the Slave reaches the Master under another address, ignore this)",
            r.source_address(),
            m.url.address()
        ));
    }
    if let Some(id) = r
        .master_server_id
        .filter(|id| *id != 0 && *id != m.info.server_id)
    {
        problems.push(format!(
            "slave: its source has server_id={id}, the Master has server_id={}",
            m.info.server_id
        ));
    }
    if !r.io_running {
        problems.push(format!(
            "slave: IO thread not running (state {}){}",
            if r.io_state.is_empty() {
                "No"
            } else {
                &r.io_state
            },
            r.last_io_error
                .as_ref()
                .map(|e| format!("; last IO error: {e}"))
                .unwrap_or_default()
        ));
    } else if let Some(e) = &r.last_io_error {
        problems.push(format!("slave: last IO error: {e}"));
    }
    if !r.sql_running {
        problems.push(format!(
            "slave: SQL thread not running{}",
            r.last_sql_error
                .as_ref()
                .map(|e| format!("; last SQL error: {e}"))
                .unwrap_or_default()
        ));
    } else if let Some(e) = &r.last_sql_error {
        problems.push(format!("slave: last SQL error: {e}"));
    }
    match r.seconds_behind {
        None if r.io_running && r.sql_running => {
            problems.push("slave: Seconds_Behind_Master is NULL".into())
        }
        Some(secs) if secs > r.sql_delay + opts.max_lag.as_secs() => problems.push(format!(
            "slave: {secs}s behind the Master (Seconds_Behind_Master), more than the allowed {}s{}",
            opts.max_lag.as_secs(),
            delay_note(r.sql_delay)
        )),
        _ => {}
    }
    if !r.wild_ignore_tables.iter().any(|f| f == SWSYSTAG_FILTER) {
        problems.push(format!(
            "slave: the swsystag filter is not active (replicate_wild_ignore_table={:?}); run `swrepl db setup`",
            r.wild_ignore_tables.join(",")
        ));
    }
}

fn delay_note(delay: u64) -> String {
    if delay > 0 {
        format!(" beyond the configured delay of {delay}s")
    } else {
        String::new()
    }
}

fn same_host(a: &str, b: &str) -> bool {
    let local = |h: &str| matches!(h, "127.0.0.1" | "localhost" | "::1");
    a.eq_ignore_ascii_case(b) || (local(a) && local(b))
}

/// Writes a heartbeat on the Master and waits (up to `heartbeat_wait`) to see it on the Slave.
/// The lag is the time it took, or, when it did not arrive, the age of the Slave's newest
/// heartbeat by the Master's clock.
async fn measure_true_lag(
    m: &mut Server,
    s: &mut Server,
    r: &ReplicaStatus,
    opts: &CheckOptions,
    problems: &mut Vec<String>,
) -> Result<Option<Duration>, DbError> {
    let written = match write_heartbeat(m).await {
        Ok(ts) => ts,
        Err(e) => {
            problems.push(format!(
                "master: cannot write the heartbeat ({e}); run `swrepl db setup`"
            ));
            return Ok(None);
        }
    };
    let started = Instant::now();
    // A delayed replica will not show a fresh heartbeat for `sql_delay` seconds: do not wait.
    let wait = if r.sql_delay > 0 {
        Duration::ZERO
    } else {
        opts.heartbeat_wait
    };
    loop {
        let seen = read_heartbeat(s, Some(m.info.server_id)).await?;
        match seen {
            Some(ts) if ts >= written => return Ok(Some(started.elapsed())),
            _ if started.elapsed() < wait => tokio::time::sleep(Duration::from_millis(100)).await,
            // A delayed replica has not applied its first heartbeat yet: the delay explains it.
            None if r.sql_delay > 0 && r.io_running => return Ok(None),
            None => {
                problems.push("slave: no heartbeat from this Master has arrived (the link is down or setup has not run)".into());
                return Ok(None);
            }
            Some(ts) => {
                let lag = age(ts, server_now(m).await?);
                if lag > opts.max_lag + Duration::from_secs(r.sql_delay) {
                    problems.push(format!(
                        "slave: true lag {:.1}s by the heartbeat, more than the allowed {}s{}",
                        lag.as_secs_f64(),
                        opts.max_lag.as_secs(),
                        delay_note(r.sql_delay)
                    ));
                }
                return Ok(Some(lag));
            }
        }
    }
}

/// The state of a replica, for the switch-over's pre-checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LagReport {
    pub io_running: bool,
    pub sql_running: bool,
    /// Seconds_Behind_Master (NULL when a thread is stopped).
    pub seconds_behind: Option<u64>,
    /// Age of the newest heartbeat on the Slave by the Slave's own clock; `None` when the Slave
    /// has no heartbeat. Assumes the two clocks agree (NTP); it grows while the link is dead.
    pub true_lag: Option<Duration>,
    /// The last IO or SQL error, if any.
    pub last_error: Option<String>,
}

/// Reads the replica's state from the Slave alone (the Master may be down during a switch-over).
///
/// Errors: the Slave is unreachable, or it is not configured as a replica
/// ([`DbError::Unsupported`]).
pub async fn replica_lag(slave: &ServerUrl) -> Result<LagReport, DbError> {
    let mut s = Server::connect(slave).await?;
    let result = replica_lag_connected(&mut s).await;
    s.close().await;
    result
}

async fn replica_lag_connected(s: &mut Server) -> Result<LagReport, DbError> {
    let r = s
        .replica_status()
        .await?
        .ok_or_else(|| DbError::Unsupported {
            server: s.url.to_string(),
            what: "is not configured as a replica".into(),
        })?;
    let newest = read_heartbeat(s, r.master_server_id.filter(|id| *id != 0)).await?;
    let true_lag = match newest {
        Some(ts) => Some(age(ts, server_now(s).await?)),
        None => None,
    };
    Ok(LagReport {
        io_running: r.io_running,
        sql_running: r.sql_running,
        seconds_behind: r.seconds_behind,
        true_lag,
        last_error: r.last_sql_error.clone().or_else(|| r.last_io_error.clone()),
    })
}

/// Promotes the Slave: stops replication, forgets the replica configuration (`RESET SLAVE ALL`
/// / `RESET REPLICA ALL`, which also clears any MASTER_DELAY), and makes it writable
/// (`SET GLOBAL read_only=0`). Idempotent: promoting a server that is not a replica only clears
/// read_only. The option file still says `read-only=1`; the switch-over must remove it (or the
/// operator) before the next restart.
pub async fn promote(slave: &ServerUrl) -> Result<(), DbError> {
    let mut s = Server::connect(slave).await?;
    let result = async {
        if s.replica_status().await?.is_some() {
            let stop = s.info.stop_replica();
            s.exec(stop).await?;
            let reset = s.info.reset_replica_all();
            s.exec(reset).await?;
        }
        s.exec("SET GLOBAL read_only=0").await?;
        tracing::info!(server = %s.url, "promoted: replication stopped and cleared, read_only=0");
        Ok(())
    }
    .await;
    s.close().await;
    result
}
