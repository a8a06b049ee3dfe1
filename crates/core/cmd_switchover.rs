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
}

pub(crate) fn load_services(path: &Path) -> anyhow::Result<(Backend, ServiceSet)> {
    let services: ServicesConfig = config::section(path, "services")?.unwrap_or_default();
    let control = services.backend()?;
    let set = services.service_set()?;
    Ok((control, set))
}

fn load(path: &Path) -> anyhow::Result<Setup> {
    let (control, set) = load_services(path)?;
    let settings: SwitchoverConfig = config::section(path, "switchover")?.unwrap_or_default();
    let hooks = settings.hooks()?;
    let log_path = settings.event_log.clone().unwrap_or_else(|| {
        path.parent()
            .unwrap_or(Path::new("."))
            .join("switchover-events.jsonl")
    });
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
        settings,
    })
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let setup = load(&args.config)?;
    if let Some(code) = already_done(&setup, &args).await? {
        return Ok(code);
    }
    let assessment = match assess(&setup.control, &setup.set, &setup.precheck, &setup.hooks).await {
        Ok(a) => a,
        Err(e) => {
            record(
                &setup.log,
                EventOutcome::Refused,
                &args,
                &e.to_string(),
                None,
            );
            return Err(e.into());
        }
    };
    print_assessment(&setup, &assessment);
    let refusals = assessment.refusals(setup.settings.max_db_lag(), setup.hooks.fence.is_some());
    if args.dry_run {
        return Ok(dry_run_verdict(&setup, &args, &assessment, &refusals));
    }
    if !refusals.is_empty() && !args.force {
        let error = SwitchoverError::Refused(refusals);
        record(
            &setup.log,
            EventOutcome::Refused,
            &args,
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
                &args,
                &format!("{e:#}"),
                Some(&assessment),
            );
            return Err(e);
        }
    }
    carry_out(&setup, &args, &assessment).await
}

/// A re-run after a completed switch-over, with the services still matching the active table,
/// does nothing.
async fn already_done(setup: &Setup, args: &Args) -> anyhow::Result<Option<ExitCode>> {
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
    }
    Ok(Some(ExitCode::SUCCESS))
}

async fn carry_out(
    setup: &Setup,
    args: &Args,
    assessment: &Assessment,
) -> anyhow::Result<ExitCode> {
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
        assessment,
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
            if !after.matches() {
                println!("warning: the services do not all match the active table (marked !)");
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
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
    args: &Args,
    assessment: &Assessment,
    refusals: &[swrepl_switchover::Refusal],
) -> ExitCode {
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
    ExitCode::from(code)
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

fn event(outcome: EventOutcome, args: &Args, message: &str, details: serde_json::Value) -> Event {
    let mut event = Event::now(ACTION, outcome, args.force, message.to_owned());
    event.details = details;
    event
}

fn record(
    log: &EventLog,
    outcome: EventOutcome,
    args: &Args,
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
fn append(log: &EventLog, event: Event) {
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
fn lag_from_report(report: &swrepl_db::LagReport) -> DbLag {
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
