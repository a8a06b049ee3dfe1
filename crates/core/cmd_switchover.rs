//! `swrepl switchover`: promote this Slave. Pre-checks (files caught up, database lag, old
//! Master probe), confirmation, fencing, database promotion, then the services in the runbook's
//! order; before and after tables on stdout, every attempt appended to the event log.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use swrepl_switchover::{
    assess, execute, Assessment, Backend, DbLag, Event, EventLog, EventOutcome, ExecuteOptions,
    FilesState, Hooks, Precheck, PrecheckError, ProbeVerdict, Role, ServiceSet, ServicesConfig,
    StateTable, SwitchoverConfig, SwitchoverError,
};

use crate::config;

/// Arguments of `swrepl switchover`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Config file with the [services] and [switchover] tables.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Show the tables, the checks and the plan; change nothing. Exit 0 if a real run would
    /// proceed, 1 if it would refuse.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Switch over despite files not caught up, database lag, an unknown replication state, a
    /// failed fencing hook or a probe that says the old Master is up. Risks data loss and split
    /// brain: use only when the old Master is known to be down.
    #[arg(long)]
    pub force: bool,
    /// Switch over despite database lag (or a lag that cannot be measured), but not despite
    /// the other checks: changes the replica has not received yet are lost.
    #[arg(long)]
    pub accept_data_loss: bool,
}

/// How a switch-over is asked for: by an operator (`swrepl switchover`) or by the receiver's
/// monitor (`Request::automatic`).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub dry_run: bool,
    /// Skip the confirmation question.
    pub yes: bool,
    pub force: bool,
    /// Override only the database-lag refusals.
    pub accept_data_loss: bool,
    /// The receiver's root, when the caller knows it better than `[switchover] receiver_root`.
    pub receiver_root: Option<PathBuf>,
    /// Asked for by the monitor, not an operator (noted in the event log).
    pub automatic: bool,
}

impl Request {
    fn from_args(args: &Args) -> Self {
        Self {
            dry_run: args.dry_run,
            yes: args.yes,
            force: args.force,
            accept_data_loss: args.accept_data_loss,
            receiver_root: None,
            automatic: false,
        }
    }
}

/// How a switch-over run ended, when it did not fail or refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Switched over now; `matches` tells whether every service matches the active table.
    Completed { matches: bool },
    /// A completed switch-over was found and every service runs: nothing done.
    AlreadyDone,
    /// A dry run: whether a real run would proceed.
    DryRun { would_proceed: bool },
}

impl Finished {
    fn exit_code(self) -> ExitCode {
        let ok = match self {
            Finished::Completed { matches } => matches,
            Finished::AlreadyDone => true,
            Finished::DryRun { would_proceed } => would_proceed,
        };
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

const ACTION: &str = "switchover";

/// Everything the command needs, read from the config file.
struct Setup {
    control: Backend,
    set: ServiceSet,
    settings: SwitchoverConfig,
    hooks: Hooks,
    log: EventLog,
    precheck: ReplicationPrecheck,
    /// Where the promoted marker goes (`None`: no receiver root known).
    receiver_root: Option<PathBuf>,
}

pub(crate) fn load_services(path: &Path) -> anyhow::Result<(Backend, ServiceSet)> {
    let services: ServicesConfig = config::section(path, "services")?.unwrap_or_default();
    let control = services.backend()?;
    let set = services.service_set()?;
    Ok((control, set))
}

fn load(path: &Path, receiver_root: Option<&Path>) -> anyhow::Result<Setup> {
    let (control, set) = load_services(path)?;
    let mut settings: SwitchoverConfig = config::section(path, "switchover")?.unwrap_or_default();
    if let Some(root) = receiver_root {
        settings.receiver_root = Some(root.to_owned());
    }
    let hooks = settings.hooks()?;
    let log_path = event_log_path(path, &settings);
    let slave_db = settings
        .slave_db
        .as_deref()
        .map(swrepl_db::ServerUrl::parse)
        .transpose()
        .context("[switchover] slave_db")?;
    let precheck = ReplicationPrecheck {
        status_path: settings.status_path(),
        slave_db,
    };
    Ok(Setup {
        control,
        set,
        hooks,
        log: EventLog::new(log_path),
        precheck,
        receiver_root: settings.receiver_root.clone(),
        settings,
    })
}

/// The event log: `[switchover] event_log`, else `switchover-events.jsonl` beside the config.
pub(crate) fn event_log_path(config: &Path, settings: &SwitchoverConfig) -> PathBuf {
    settings.event_log.clone().unwrap_or_else(|| {
        config
            .parent()
            .unwrap_or(Path::new("."))
            .join("switchover-events.jsonl")
    })
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let request = Request::from_args(&args);
    Ok(switch_over(&args.config, &request).await?.exit_code())
}

/// The whole switch-over as `swrepl switchover` runs it: pre-checks, refusals, confirmation
/// (unless `yes`), fencing, promotion, services in order, event log, and the promoted marker
/// under the receiver's root. Refusals and failures are errors (already logged as events).
pub async fn switch_over(config_path: &Path, request: &Request) -> anyhow::Result<Finished> {
    let setup = load(config_path, request.receiver_root.as_deref())?;
    let args = request;
    if let Some(finished) = already_done(&setup, args).await? {
        return Ok(finished);
    }
    let assessment = match assess(&setup.control, &setup.set, &setup.precheck, &setup.hooks).await {
        Ok(a) => a,
        Err(e) => {
            record(
                &setup.log,
                EventOutcome::Refused,
                args,
                &e.to_string(),
                None,
            );
            return Err(e.into());
        }
    };
    print_assessment(&setup, &assessment);
    let (effective, accepted) = accept_data_loss(&assessment, &setup.settings, args);
    let refusals = effective.refusals(setup.settings.max_db_lag(), setup.hooks.fence.is_some());
    if args.dry_run {
        return Ok(dry_run_verdict(&setup, args, &assessment, &refusals));
    }
    if !refusals.is_empty() && !args.force {
        let error = SwitchoverError::Refused(refusals);
        record(
            &setup.log,
            EventOutcome::Refused,
            args,
            &error.to_string(),
            Some(&assessment),
        );
        return Err(error.into());
    }
    if !args.yes {
        if let Err(e) = confirm("Switch this server over to the active role?") {
            record(
                &setup.log,
                EventOutcome::Cancelled,
                args,
                &format!("{e:#}"),
                Some(&assessment),
            );
            return Err(e);
        }
    }
    if let Some(note) = &accepted {
        println!("{note}");
        tracing::warn!("{note}");
    }
    carry_out(&setup, args, &assessment, &effective).await
}

/// With `accept_data_loss`, a database lag over the limit (or one that cannot be measured) no
/// longer refuses: returns the assessment to decide with and a note of what was accepted. The
/// real assessment is still what the event log records.
fn accept_data_loss(
    assessment: &Assessment,
    settings: &SwitchoverConfig,
    request: &Request,
) -> (Assessment, Option<String>) {
    let mut effective = assessment.clone();
    if !request.accept_data_loss {
        return (effective, None);
    }
    let note = match &assessment.db {
        DbLag::Measured { lag } if *lag > settings.max_db_lag() => format!(
            "accepting data loss: the database replica is {:.1} s behind",
            lag.as_secs_f64()
        ),
        DbLag::Unknown { reason } => {
            format!("accepting data loss: the database lag is unknown ({reason})")
        }
        _ => return (effective, None),
    };
    effective.db = DbLag::Measured {
        lag: Duration::ZERO,
    };
    (effective, Some(note))
}

/// A re-run after a completed switch-over, with the services still matching the active table,
/// does nothing.
async fn already_done(setup: &Setup, args: &Request) -> anyhow::Result<Option<Finished>> {
    let Some(last) = setup.log.last_decisive(ACTION)? else {
        return Ok(None);
    };
    if last.outcome != EventOutcome::Completed {
        return Ok(None);
    }
    let table = StateTable::query(&setup.control, &setup.set, Role::Active).await;
    if !table.matches() {
        return Ok(None);
    }
    println!("Services (expected: active)\n{}", table.render());
    let message = format!(
        "already switched over (event log {}, time_unix_ms {}) and every service is running: nothing to do",
        setup.log.path().display(),
        last.time_unix_ms
    );
    println!("{message}");
    if !args.dry_run {
        record(&setup.log, EventOutcome::AlreadyDone, args, &message, None);
        mark_promoted(setup, args);
    }
    Ok(Some(Finished::AlreadyDone))
}

/// Writes the promoted marker so the receiver no longer accepts the old Master's changes.
fn mark_promoted(setup: &Setup, request: &Request) {
    let Some(root) = &setup.receiver_root else {
        tracing::warn!("[switchover] receiver_root is not set: cannot mark this Slave promoted; stop `swrepl receive` by hand so the old Master cannot overwrite it");
        return;
    };
    let how = if request.automatic {
        "automatic switch-over by the monitor"
    } else {
        "swrepl switchover"
    };
    if let Err(e) = crate::monitor::write_promoted_marker(root, how) {
        tracing::warn!(
            "{e:#}; stop `swrepl receive` by hand so the old Master cannot overwrite this server"
        );
    }
}

async fn carry_out(
    setup: &Setup,
    args: &Request,
    assessment: &Assessment,
    effective: &Assessment,
) -> anyhow::Result<Finished> {
    let options = ExecuteOptions {
        force: args.force,
        max_db_lag: setup.settings.max_db_lag(),
        start_wait: setup.settings.start_wait()?,
    };
    let result = execute(
        &setup.control,
        &setup.set,
        &setup.precheck,
        &setup.hooks,
        effective,
        options,
    )
    .await;
    let after = StateTable::query(&setup.control, &setup.set, Role::Active).await;
    println!("After (expected: active)\n{}", after.render());
    match result {
        Ok(outcome) => {
            for risk in &outcome.overridden {
                println!("overridden with --force: {risk}");
            }
            let message = format!(
                "switched over: started {} service(s){}",
                outcome.started.len(),
                if outcome.db_promoted {
                    ", database promoted"
                } else {
                    ""
                }
            );
            println!("{message}");
            let details = serde_json::json!({
                "assessment": assessment,
                "outcome": outcome,
                "after": after,
            });
            append(
                &setup.log,
                event(EventOutcome::Completed, args, &message, details),
            );
            mark_promoted(setup, args);
            if !after.matches() {
                println!("warning: the services do not all match the active table (marked !)");
            }
            Ok(Finished::Completed {
                matches: after.matches(),
            })
        }
        Err(error) => {
            let outcome = match error {
                SwitchoverError::Refused(_) | SwitchoverError::NotFenced { .. } => {
                    EventOutcome::Refused
                }
                _ => EventOutcome::Failed,
            };
            let details = serde_json::json!({ "assessment": assessment, "after": after });
            append(
                &setup.log,
                event(outcome, args, &error.to_string(), details),
            );
            Err(error.into())
        }
    }
}

fn dry_run_verdict(
    setup: &Setup,
    args: &Request,
    assessment: &Assessment,
    refusals: &[swrepl_switchover::Refusal],
) -> Finished {
    println!("Plan:");
    if let Some(fence) = &setup.hooks.fence {
        println!("  fence the old Master: {fence}");
    }
    if assessment.db != DbLag::NotConfigured {
        println!("  promote the database (stop replication, clear it, read_only=0)");
    }
    let order: Vec<&str> = setup.set.all().collect();
    println!("  start, in order, waiting for each: {}", order.join(", "));
    let (message, code) = if refusals.is_empty() {
        (
            "dry run: a switch-over would proceed; nothing was changed".to_owned(),
            0,
        )
    } else {
        let reasons: Vec<String> = refusals.iter().map(ToString::to_string).collect();
        let verdict = if args.force {
            "would proceed with --force despite"
        } else {
            "would refuse"
        };
        (
            format!(
                "dry run: a switch-over {verdict}: {}; nothing was changed",
                reasons.join("; ")
            ),
            if args.force { 0 } else { 1 },
        )
    };
    println!("{message}");
    record(
        &setup.log,
        EventOutcome::DryRun,
        args,
        &message,
        Some(assessment),
    );
    Finished::DryRun {
        would_proceed: code == 0,
    }
}

fn print_assessment(setup: &Setup, assessment: &Assessment) {
    println!("Before (expected: standby)\n{}", assessment.before.render());
    let files = match &assessment.files {
        FilesState::CaughtUp { .. } => "caught up".to_owned(),
        FilesState::Behind { pending } => format!("{pending} acknowledged change(s) not applied"),
        FilesState::Unknown { reason } => format!("unknown: {reason}"),
    };
    let db = match &assessment.db {
        DbLag::NotConfigured => "not configured ([switchover] slave_db unset)".to_owned(),
        DbLag::Measured { lag } => format!(
            "{:.1} s behind (allowed {} s)",
            lag.as_secs_f64(),
            setup.settings.max_db_lag_seconds
        ),
        DbLag::Unknown { reason } => format!("unknown: {reason}"),
    };
    let probe = match &assessment.probe {
        None => "not configured".to_owned(),
        Some(ProbeVerdict::MasterRunning) => "old Master still running".to_owned(),
        Some(ProbeVerdict::MasterDown) => "old Master down".to_owned(),
        Some(ProbeVerdict::Unknown { reason }) => format!("unknown: {reason}"),
    };
    let fencing = match &setup.hooks.fence {
        None => "not configured".to_owned(),
        Some(fence) => fence.to_string(),
    };
    println!("Checks:\n  files:         {files}\n  database:      {db}\n  master probe:  {probe}\n  fencing:       {fencing}\n");
}

/// Asks on the terminal; refuses when stdin is not one.
pub(crate) fn confirm(question: &str) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!(
            "refusing without confirmation: stdin is not a terminal; re-run with --yes to confirm"
        );
    }
    eprint!("{question} Type yes to continue: ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .context("cannot read the confirmation")?;
    if answer.trim() != "yes" {
        anyhow::bail!("not confirmed: nothing was changed");
    }
    Ok(())
}

fn event(
    outcome: EventOutcome,
    args: &Request,
    message: &str,
    details: serde_json::Value,
) -> Event {
    let message = if args.automatic {
        format!("automatic (monitor): {message}")
    } else {
        message.to_owned()
    };
    let mut event = Event::now(ACTION, outcome, args.force, message);
    event.details = details;
    event
}

fn record(
    log: &EventLog,
    outcome: EventOutcome,
    args: &Request,
    message: &str,
    assessment: Option<&Assessment>,
) {
    let details = assessment.map_or(
        serde_json::Value::Null,
        |a| serde_json::json!({ "assessment": a }),
    );
    append(log, event(outcome, args, message, details));
}

/// A log that cannot be written must not stop a switch-over in a disaster: warn instead.
pub(crate) fn append(log: &EventLog, event: Event) {
    if let Err(e) = log.append(&event) {
        tracing::warn!("{e}");
    }
}

/// The receiver's status file, as the receiver writes it (`<root>/.swrepl/status.json`).
#[derive(Debug, Deserialize)]
struct ReceiverStatus {
    #[serde(default)]
    connected: bool,
    #[serde(default)]
    last_ack_seq: u64,
    pending: u64,
    last_applied_unix_ms: Option<u64>,
}

/// The pre-checks against this host's receiver status file and database.
struct ReplicationPrecheck {
    status_path: Option<PathBuf>,
    slave_db: Option<swrepl_db::ServerUrl>,
}

impl ReplicationPrecheck {
    fn read_status(path: &Path) -> Result<ReceiverStatus, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!("the receiver status file {} does not exist (is `swrepl receive` running on this host?)", path.display())
            } else {
                format!("cannot read the receiver status file {}: {e}", path.display())
            }
        })?;
        serde_json::from_str(&text).map_err(|e| {
            format!(
                "the receiver status file {} is not valid: {e}",
                path.display()
            )
        })
    }
}

/// Lag measured by the replica: the larger of Seconds_Behind_Master and the heartbeat's age.
pub(crate) fn lag_from_report(report: &swrepl_db::LagReport) -> DbLag {
    if !report.sql_running || !report.io_running {
        let thread = if report.sql_running { "IO" } else { "SQL" };
        let error = report.last_error.as_deref().unwrap_or("no error reported");
        return DbLag::Unknown {
            reason: format!("the replica's {thread} thread is not running ({error}), so the lag cannot be measured"),
        };
    }
    let behind = report.seconds_behind.map(Duration::from_secs);
    match behind.into_iter().chain(report.true_lag).max() {
        Some(lag) => DbLag::Measured { lag },
        None => DbLag::Unknown {
            reason: "the replica reports no lag (Seconds_Behind_Master is NULL and no heartbeat)"
                .to_owned(),
        },
    }
}

impl Precheck for ReplicationPrecheck {
    async fn files_caught_up(&self) -> Result<FilesState, PrecheckError> {
        let Some(path) = &self.status_path else {
            return Ok(FilesState::Unknown {
                reason: "[switchover] sets neither receiver_root nor status_file".to_owned(),
            });
        };
        let status = match Self::read_status(path) {
            Ok(status) => status,
            Err(reason) => return Ok(FilesState::Unknown { reason }),
        };
        tracing::info!(
            connected = status.connected,
            last_ack_seq = status.last_ack_seq,
            pending = status.pending,
            "receiver status"
        );
        Ok(match status.pending {
            0 => FilesState::CaughtUp {
                last_applied_unix_ms: status.last_applied_unix_ms,
            },
            pending => FilesState::Behind { pending },
        })
    }

    async fn db_lag(&self) -> Result<DbLag, PrecheckError> {
        let Some(url) = &self.slave_db else {
            return Ok(DbLag::NotConfigured);
        };
        let report = swrepl_db::replica_lag(url)
            .await
            .map_err(|e| PrecheckError(e.to_string()))?;
        Ok(lag_from_report(&report))
    }

    async fn promote_db(&self) -> Result<(), PrecheckError> {
        let Some(url) = &self.slave_db else {
            return Ok(());
        };
        swrepl_db::promote(url)
            .await
            .map_err(|e| PrecheckError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(
        io: bool,
        sql: bool,
        behind: Option<u64>,
        heartbeat: Option<u64>,
    ) -> swrepl_db::LagReport {
        swrepl_db::LagReport {
            io_running: io,
            sql_running: sql,
            seconds_behind: behind,
            true_lag: heartbeat.map(Duration::from_secs),
            last_error: Some("error reconnecting to master".to_owned()),
        }
    }

    #[test]
    fn lag_is_the_larger_of_seconds_behind_and_heartbeat_age() {
        let lag = |r| match lag_from_report(&r) {
            DbLag::Measured { lag } => lag.as_secs(),
            other => panic!("{other:?}"),
        };
        assert_eq!(lag(report(true, true, Some(0), Some(3))), 3);
        assert_eq!(lag(report(true, true, Some(9), Some(1))), 9);
        assert_eq!(lag(report(true, true, Some(2), None)), 2);
    }

    #[test]
    fn stopped_replication_threads_make_the_lag_unknown() {
        match lag_from_report(&report(false, true, None, Some(1))) {
            DbLag::Unknown { reason } => {
                assert!(
                    reason.contains("IO thread") && reason.contains("reconnecting"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            lag_from_report(&report(true, true, None, None)),
            DbLag::Unknown { .. }
        ));
    }
}
