//! `swrepl status --config F [--json]`: one view of this host's role, the replication link, file
//! replication, the database replica and the services table; exit 0 when healthy, 1 when
//! something needs attention (each listed), 2 when the config cannot be used.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use swrepl_switchover::{DbLag, Role, StateTable, SwitchoverConfig};
use swrepl_sync::status::SenderStatus;
use swrepl_sync::ReceiverStatus;

use crate::cmd_switchover::{lag_from_report, load_services};
use crate::config;
use crate::monitor::{parse_master_service, read_promoted_marker, PromotedMarker};

/// Arguments of `swrepl status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// This host's config file (`[send]` on the Master, `[receive]` on the Slave, plus
    /// `[services]` and `[switchover]`).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A heartbeat older than this means the link or the Master is in trouble.
const HEARTBEAT_STALE: Duration =
    Duration::from_secs(3 * swrepl_sync::HEARTBEAT_INTERVAL.as_secs());

/// The keys of `[send]`/`[receive]` this command reads (the rest belongs to `cmd_files`).
#[derive(Debug, Default, Deserialize)]
struct SideConfig {
    root: Option<PathBuf>,
    connect: Option<String>,
    listen: Option<String>,
    /// The sender's state directory (default `<root>/.swrepl`), which holds its status file.
    state: Option<PathBuf>,
}

/// Everything `status` reports.
#[derive(Debug, Serialize)]
struct Report {
    role: &'static str,
    root: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    promoted: Option<PromotedMarker>,
    peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<ReceiverStatus>,
    /// On the Master: what the sender cannot replicate right now (locked files).
    #[serde(skip_serializing_if = "Option::is_none")]
    sender: Option<SenderStatus>,
    database: serde_json::Value,
    services: Option<StateTable>,
    healthy: bool,
    attention: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let report = build(&args.config).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn build(path: &Path) -> anyhow::Result<Report> {
    let receive: Option<SideConfig> = config::section(path, "receive")?;
    let send: Option<SideConfig> = config::section(path, "send")?;
    let mut attention = Vec::new();
    let mut report = match (receive, send) {
        (Some(receive), _) => slave(receive, &mut attention)?,
        (None, Some(send)) => Report {
            role: "master",
            sender: sender_status(&send, &mut attention),
            root: send.root,
            promoted: None,
            peer: send.connect,
            files: None,
            database: serde_json::json!({ "state": "not_checked_on_the_master" }),
            services: None,
            healthy: true,
            attention: Vec::new(),
        },
        (None, None) => anyhow::bail!(
            "config file {} has neither a [send] nor a [receive] table: cannot tell this host's role",
            path.display()
        ),
    };
    let settings: Option<SwitchoverConfig> = config::section(path, "switchover")?;
    if report.role != "master" {
        report.database = database(settings.as_ref(), &mut attention).await?;
        if let Some(record) = report
            .root
            .as_deref()
            .and_then(crate::cmd_db::read_db_check)
        {
            periodic_check(&record, &mut attention);
            report.database =
                serde_json::json!({ "lag": report.database, "periodic_check": record });
        }
    }
    if config::section::<toml::Table>(path, "services")?.is_some() {
        let (control, set) = load_services(path)?;
        let role = if report.role == "slave" {
            Role::Standby
        } else {
            Role::Active
        };
        let table = StateTable::query(&control, &set, role).await;
        if !table.matches() {
            let deviating: Vec<&str> = table
                .rows
                .iter()
                .filter(|r| r.deviates())
                .map(|r| r.service.as_str())
                .collect();
            attention.push(format!(
                "services deviate from the {role} table: {}",
                deviating.join(", ")
            ));
        }
        report.services = Some(table);
    }
    report.healthy = attention.is_empty();
    report.attention = attention;
    Ok(report)
}

fn slave(receive: SideConfig, attention: &mut Vec<String>) -> anyhow::Result<Report> {
    let root = receive.root.clone();
    let promoted = match &root {
        Some(root) => read_promoted_marker(root)?,
        None => None,
    };
    let role = if promoted.is_some() {
        "promoted_slave"
    } else {
        "slave"
    };
    let files = match &root {
        None => {
            attention.push("[receive] root is not set: no replication figures".to_owned());
            None
        }
        Some(root) => match swrepl_sync::read_status(root) {
            Ok(status) => Some(status),
            Err(e) => {
                attention.push(format!(
                    "cannot read the receiver status under {} ({e}): is `swrepl receive` running?",
                    root.display()
                ));
                None
            }
        },
    };
    if let (Some(status), None) = (&files, &promoted) {
        check_link(status, attention);
    }
    Ok(Report {
        role,
        root,
        promoted,
        peer: files
            .as_ref()
            .and_then(|s| s.peer.clone())
            .or(receive.listen.map(|l| format!("listening on {l}"))),
        files,
        sender: None,
        database: serde_json::Value::Null,
        services: None,
        healthy: true,
        attention: Vec::new(),
    })
}

/// The sender's status file on the Master, when the sender has written one; each locked file
/// needs attention (the Slave keeps an older version of it until it can be read).
fn sender_status(send: &SideConfig, attention: &mut Vec<String>) -> Option<SenderStatus> {
    let state = send.state.clone().or_else(|| {
        send.root
            .as_ref()
            .map(|root| root.join(swrepl_tree::STATE_DIR_NAME))
    })?;
    let status = swrepl_sync::status::read_sender_status(&state).ok()?;
    for file in &status.locked {
        attention.push(format!(
            "{} is locked by another process on the Master (since {}, {} attempts): the Slave keeps its previous version until it can be read",
            file.path,
            crate::monitor::utc_text(file.since_unix_ms),
            file.attempts
        ));
    }
    Some(status)
}

/// What the receiver's periodic `db check` found (written every 30 s when `[db]` is configured).
fn periodic_check(record: &crate::cmd_db::DbCheckRecord, attention: &mut Vec<String>) {
    for problem in &record.problems {
        attention.push(format!("database replication: {problem}"));
    }
    let age_ms = crate_now_ms().saturating_sub(record.checked_unix_ms);
    if age_ms > 120_000 {
        attention.push(format!(
            "the last database check is {} s old: is `swrepl receive` running?",
            age_ms / 1000
        ));
    }
}

/// What needs attention on the link from the Master, judged from the receiver's status file.
fn check_link(status: &ReceiverStatus, attention: &mut Vec<String>) {
    if !status.connected {
        attention.push("no sender is connected: the Master is not replicating".to_owned());
    }
    let age = crate_now_ms().saturating_sub(status.last_heartbeat_unix_ms);
    if status.connected && u128::from(age) > HEARTBEAT_STALE.as_millis() {
        attention.push(format!(
            "last heartbeat from the Master {} s ago",
            age / 1000
        ));
    }
    if status.pending > 0 {
        attention.push(format!(
            "{} change(s) received but not applied yet",
            status.pending
        ));
    }
    if status.last_pass_held > 0 {
        attention.push(format!(
            "the mass-delete guard holds {} delete(s): confirm on the Master with --allow-mass-delete if the tree really shrank",
            status.last_pass_held
        ));
    }
    match status.master_service.as_deref() {
        None => {}
        Some(text) if parse_master_service(text).is_some_and(|s| s.is_running()) => {}
        Some(text) => attention.push(format!("the Master reports {text}")),
    }
}

fn crate_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The replica's lag, when `[switchover] slave_db` is set.
async fn database(
    settings: Option<&SwitchoverConfig>,
    attention: &mut Vec<String>,
) -> anyhow::Result<serde_json::Value> {
    let Some(url) = settings.and_then(|s| s.slave_db.as_deref()) else {
        return Ok(serde_json::json!({ "state": "not_configured" }));
    };
    let url = swrepl_db::ServerUrl::parse(url)
        .map_err(|e| anyhow::anyhow!("[switchover] slave_db: {e}"))?;
    let max = settings.map(|s| s.max_db_lag()).unwrap_or_default();
    let lag = match swrepl_db::replica_lag(&url).await {
        Ok(report) => lag_from_report(&report),
        Err(e) => DbLag::Unknown {
            reason: e.to_string(),
        },
    };
    match &lag {
        DbLag::Measured { lag } if *lag > max => attention.push(format!(
            "the database replica is {:.1} s behind (allowed {} s)",
            lag.as_secs_f64(),
            max.as_secs()
        )),
        DbLag::Unknown { reason } => {
            attention.push(format!("database replication lag unknown: {reason}"))
        }
        _ => {}
    }
    Ok(serde_json::to_value(&lag)?)
}

fn print_text(report: &Report) {
    println!("role:        {}", report.role.replace('_', " "));
    if let Some(marker) = &report.promoted {
        println!(
            "promoted:    {} ({}); no longer accepts changes from the old Master",
            marker.time_utc, marker.how
        );
    }
    if let Some(root) = &report.root {
        println!("root:        {}", root.display());
    }
    if let Some(peer) = &report.peer {
        println!("peer:        {peer}");
    }
    if let Some(files) = &report.files {
        let applied = match files.last_applied_unix_ms {
            0 => "never".to_owned(),
            ms => crate::monitor::utc_text(ms),
        };
        println!(
            "files:       connected={} pending={} last_ack_seq={} last applied {applied}",
            files.connected, files.pending, files.last_ack_seq
        );
        if let Some(service) = &files.master_service {
            println!("master:      {service}");
        }
    }
    if let Some(sender) = &report.sender {
        println!("locked:      {} file(s)", sender.locked.len());
        for file in &sender.locked {
            println!(
                "  {} since {}, {} attempts: {}",
                file.path,
                crate::monitor::utc_text(file.since_unix_ms),
                file.attempts,
                file.error
            );
        }
    }
    println!("database:    {}", report.database);
    if let Some(table) = &report.services {
        println!("services (expected: {})\n{}", table.role, table.render());
    }
    if report.healthy {
        println!("healthy");
    } else {
        for item in &report.attention {
            println!("attention: {item}");
        }
    }
}
