//! The heartbeat: swrepl writes the Master's clock into `swrepl.heartbeat` (like pt-heartbeat);
//! the row replicates, and its age on the Slave is the true replication lag. Unlike
//! Seconds_Behind_Master it keeps growing when the link is dead, even while that column reads
//! 0 or NULL.

use std::time::Duration;

use crate::server::Server;
use crate::{DbError, ServerUrl};

/// swrepl's own schema on both servers.
pub const HEARTBEAT_SCHEMA: &str = "swrepl";

/// The heartbeat table: one row per Master server id, `ts` = UNIX time on the Master (µs).
pub const HEARTBEAT_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS swrepl.heartbeat (\
server_id INT UNSIGNED NOT NULL PRIMARY KEY, \
ts DECIMAL(20,6) NOT NULL COMMENT 'UNIX time on the Master when written') ENGINE=InnoDB";

/// Writes one heartbeat on the Master; returns the UNIX time written (seconds).
///
/// The row is logged statement-based with literal values, so it applies on a Slave whose
/// heartbeat table was created empty (a row-based update of a missing row would stop the SQL
/// thread).
pub async fn write_heartbeat(master: &mut Server) -> Result<f64, DbError> {
    let now: String = master
        .scalar("SELECT CAST(UNIX_TIMESTAMP(NOW(6)) AS CHAR)")
        .await?
        .unwrap_or_default();
    let ts: f64 = now.parse().map_err(|_| DbError::Unsupported {
        server: master.url.to_string(),
        what: format!("UNIX_TIMESTAMP(NOW(6)) returned {now:?}"),
    })?;
    // Older servers without per-session binlog_format log statements anyway.
    let statement_format = master
        .exec("SET SESSION binlog_format='STATEMENT'")
        .await
        .is_ok();
    let write = master
        .exec(&format!(
            "REPLACE INTO swrepl.heartbeat (server_id, ts) VALUES ({}, {now})",
            master.info.server_id
        ))
        .await;
    if statement_format {
        master.exec("SET SESSION binlog_format=DEFAULT").await?;
    }
    write?;
    Ok(ts)
}

/// Writes a heartbeat on the Master every `interval` until `stop` resolves. Connection errors
/// are logged and retried: the heartbeat must outlive a Master restart.
pub async fn run_heartbeat(
    master: &ServerUrl,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), DbError> {
    tokio::pin!(stop);
    let mut conn: Option<Server> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {}
        }
        if conn.is_none() {
            match Server::connect(master).await {
                Ok(s) => conn = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat: cannot reach the Master; retrying");
                    continue;
                }
            }
        }
        if let Some(server) = conn.as_mut() {
            if let Err(e) = write_heartbeat(server).await {
                tracing::warn!(error = %e, "heartbeat write failed; reconnecting");
                conn = None;
            }
        }
    }
    if let Some(s) = conn {
        s.close().await;
    }
    Ok(())
}

/// The newest heartbeat the Slave holds from `master_server_id` (any Master when `None`), as
/// UNIX seconds; `Ok(None)` when the table or row is missing.
pub async fn read_heartbeat(
    slave: &mut Server,
    master_server_id: Option<u64>,
) -> Result<Option<f64>, DbError> {
    let exists: Option<i64> = slave
        .scalar("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA='swrepl' AND TABLE_NAME='heartbeat'")
        .await?;
    if exists.unwrap_or(0) == 0 {
        return Ok(None);
    }
    let filter = master_server_id
        .map(|id| format!(" WHERE server_id={id}"))
        .unwrap_or_default();
    let ts: Option<String> = slave
        .scalar(&format!(
            "SELECT CAST(MAX(ts) AS CHAR) FROM swrepl.heartbeat{filter}"
        ))
        .await?;
    Ok(ts.and_then(|t| t.parse().ok()))
}

/// The server's clock as UNIX seconds.
pub async fn server_now(server: &mut Server) -> Result<f64, DbError> {
    let now: Option<String> = server
        .scalar("SELECT CAST(UNIX_TIMESTAMP(NOW(6)) AS CHAR)")
        .await?;
    Ok(now.and_then(|n| n.parse().ok()).unwrap_or(0.0))
}

/// `later - earlier` seconds as a duration, zero when negative (clock skew).
pub fn age(earlier: f64, later: f64) -> Duration {
    Duration::from_secs_f64((later - earlier).max(0.0))
}
