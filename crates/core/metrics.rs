//! `--metrics HOST:PORT`: the figures of `swrepl status` in Prometheus' text format, served over
//! plain HTTP to whatever scrapes them (bind it to a management address or loopback).
//!
//! The receiver's figures come from its status file and the periodic database check, so a
//! scrape never touches the replication session. The server answers every request on the
//! port with the metrics page and closes the connection; it reads at most one small request.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Which side this process is, and where its figures are.
#[derive(Clone, Debug)]
pub enum Source {
    /// `swrepl receive` on the Slave: its root holds `.swrepl/status.json` and `db-check.json`.
    Receiver { root: PathBuf },
    /// `swrepl send` on the Master: liveness and the files it finds locked (its link is reported
    /// by the receiver).
    Sender,
}

/// Binds `addr` now (so a port in use is an error at start) and serves metrics in the background.
pub async fn serve(addr: &str, source: Source) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot serve metrics on {addr}: choose another --metrics address")
    })?;
    tracing::info!(%addr, "serving Prometheus metrics");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let source = source.clone();
            tokio::spawn(async move {
                // Read (and ignore) the request head; a slow client gets cut off.
                let mut buf = [0u8; 2048];
                let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
                let body = render(&source);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(())
}

/// The metrics page.
pub fn render(source: &Source) -> String {
    let mut out = String::new();
    metric(
        &mut out,
        "swrepl_up",
        "gauge",
        "1 while this swrepl process runs.",
        1.0,
    );
    match source {
        Source::Sender => {
            metric(
                &mut out,
                "swrepl_role_master",
                "gauge",
                "1 on the Master (swrepl send).",
                1.0,
            );
            metric(
                &mut out,
                "swrepl_locked_files",
                "gauge",
                "Files locked by another process that keep their previous version on the Slave until they can be read.",
                swrepl_sync::locked_file_count() as f64,
            );
        }
        Source::Receiver { root } => receiver_metrics(&mut out, root),
    }
    out
}

fn receiver_metrics(out: &mut String, root: &Path) {
    metric(
        out,
        "swrepl_role_master",
        "gauge",
        "1 on the Master (swrepl send).",
        0.0,
    );
    let promoted = crate::monitor::read_promoted_marker(root)
        .ok()
        .flatten()
        .is_some();
    metric(
        out,
        "swrepl_promoted",
        "gauge",
        "1 when this Slave was promoted by a switch-over.",
        flag(promoted),
    );
    if let Ok(status) = swrepl_sync::read_status(root) {
        let now_ms = swrepl_now_ms();
        metric(
            out,
            "swrepl_sender_connected",
            "gauge",
            "1 while a sender session is up.",
            flag(status.connected),
        );
        metric(
            out,
            "swrepl_pending_changes",
            "gauge",
            "Changes received but not yet applied.",
            status.pending as f64,
        );
        metric(
            out,
            "swrepl_last_ack_seq",
            "gauge",
            "Last change of the session acknowledged as durable.",
            status.last_ack_seq as f64,
        );
        metric(
            out,
            "swrepl_last_applied_timestamp_seconds",
            "gauge",
            "When the last change was applied (Unix time).",
            status.last_applied_unix_ms as f64 / 1000.0,
        );
        if status.last_heartbeat_unix_ms > 0 {
            metric(
                out,
                "swrepl_heartbeat_age_seconds",
                "gauge",
                "Seconds since the Master's last heartbeat.",
                now_ms.saturating_sub(status.last_heartbeat_unix_ms) as f64 / 1000.0,
            );
        }
        let running = status
            .master_service
            .as_deref()
            .and_then(crate::monitor::parse_master_service)
            .map(|state| flag(state == swrepl_switchover::ServiceState::Running));
        if let Some(running) = running {
            metric(
                out,
                "swrepl_master_service_running",
                "gauge",
                "1 when the Master reports its monitored service running.",
                running,
            );
        }
        metric(
            out,
            "swrepl_deletes_held",
            "gauge",
            "Deletes held by the mass-delete guard in the last full pass.",
            status.last_pass_held as f64,
        );
    }
    if let Some(check) = crate::cmd_db::read_db_check(root) {
        metric(
            out,
            "swrepl_db_healthy",
            "gauge",
            "1 when the last database replication check found no problem.",
            flag(check.healthy),
        );
        if let Some(lag) = check.true_lag_ms {
            metric(
                out,
                "swrepl_db_true_lag_seconds",
                "gauge",
                "Replication lag measured by the heartbeat row.",
                lag as f64 / 1000.0,
            );
        }
        metric(
            out,
            "swrepl_db_checked_timestamp_seconds",
            "gauge",
            "When the database was last checked (Unix time).",
            check.checked_unix_ms as f64 / 1000.0,
        );
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

fn flag(value: bool) -> f64 {
    if value {
        1.0
    } else {
        0.0
    }
}

fn swrepl_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_page_reports_the_status_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join(".swrepl")).unwrap();
        let status = swrepl_sync::ReceiverStatus {
            connected: true,
            pending: 3,
            last_ack_seq: 42,
            master_service: Some("SwServerService: Running".into()),
            ..Default::default()
        };
        std::fs::write(
            tmp.path().join(".swrepl/status.json"),
            serde_json::to_string(&status).unwrap(),
        )
        .unwrap();
        let page = render(&Source::Receiver {
            root: tmp.path().to_path_buf(),
        });
        assert!(page.contains("\nswrepl_sender_connected 1\n"), "{page}");
        assert!(page.contains("\nswrepl_pending_changes 3\n"), "{page}");
        assert!(page.contains("\nswrepl_last_ack_seq 42\n"), "{page}");
        assert!(
            page.contains("\nswrepl_master_service_running 1\n"),
            "{page}"
        );
        assert!(page.contains("# TYPE swrepl_up gauge"), "{page}");
    }

    #[test]
    fn sender_page_reports_locked_files() {
        let page = render(&Source::Sender);
        assert!(page.contains("# TYPE swrepl_locked_files gauge"), "{page}");
        assert!(page.contains("\nswrepl_locked_files "), "{page}");
    }
}
