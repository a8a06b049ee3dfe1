//! The switch-over procedure on the Slave, in two halves so the caller can show the plan and
//! ask for confirmation in between:
//!
//! 1. [`assess`] (read-only): the services' states, files caught up, database lag, and the
//!    old-Master probe. [`Assessment::refusals`] lists what forbids a switch-over without
//!    `--force`.
//! 2. [`execute`]: fence the old Master (optional hook), decide split-brain safety, promote the
//!    database, start the services in order waiting for each.
//!
//! Fencing runs before the promotion (the issue lists it after): the old Master must stop
//! writing before the new one becomes writable, or both accept changes for a moment.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;

use crate::command::{display_argv, run_argv, CommandTemplate};
use crate::control::{start_and_wait, ServiceControl, ServiceError, WaitPolicy};
use crate::runbook::ServiceSet;
use crate::state::Role;
use crate::table::StateTable;

/// How far file replication has got, as the receiver reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FilesState {
    /// Every change the Master sent and the Slave acknowledged is applied.
    CaughtUp { last_applied_unix_ms: Option<u64> },
    /// Changes are acknowledged but not yet applied.
    Behind { pending: u64 },
    /// The receiver's status cannot be read (no status file, unreadable, …).
    Unknown { reason: String },
}

/// The database replica's delay behind the Master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DbLag {
    /// No database is replicated by swrepl on this pair: nothing to check or promote.
    NotConfigured,
    /// Measured lag.
    Measured {
        #[serde(rename = "lag_ms", serialize_with = "millis")]
        lag: Duration,
    },
    /// Replication is not running or the lag cannot be measured.
    Unknown { reason: String },
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A pre-check or the promotion could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PrecheckError(pub String);

/// The checks and the database promotion that the switch-over needs from the replication side.
/// Implemented by the binary (receiver status file, `swrepl-db`); tests use their own.
pub trait Precheck: Send + Sync {
    /// Whether the Slave applied every file change up to the last one it acknowledged.
    fn files_caught_up(&self) -> impl Future<Output = Result<FilesState, PrecheckError>> + Send;
    /// The database replica's lag.
    fn db_lag(&self) -> impl Future<Output = Result<DbLag, PrecheckError>> + Send;
    /// Stop replication, clear the replica configuration, make the database writable.
    /// Must be idempotent: a re-run after a partial switch-over calls it again.
    fn promote_db(&self) -> impl Future<Output = Result<(), PrecheckError>> + Send;
}

/// What the old-Master probe said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum ProbeVerdict {
    /// Exit 0: the old Master's services are still running.
    MasterRunning,
    /// Exit 1: the old Master is down.
    MasterDown,
    /// Any other exit, a timeout, or a probe that cannot run.
    Unknown { reason: String },
}

/// The operator's hooks for the old Master: an optional fencing command and an optional probe.
#[derive(Debug, Clone)]
pub struct Hooks {
    /// Stops the old Master (its services, a virtual IP, a DNS alias…). Exit 0 = fenced.
    pub fence: Option<CommandTemplate>,
    /// Exits 0 while the old Master's SwServerService is running, 1 when it is down.
    pub master_probe: Option<CommandTemplate>,
    /// Limit on each hook.
    pub timeout: Duration,
}

impl Hooks {
    /// Runs the probe, if one is configured.
    pub async fn probe(&self) -> Option<ProbeVerdict> {
        let probe = self.master_probe.as_ref()?;
        let verdict = match run_argv(probe.words(), self.timeout).await {
            Ok(out) if out.code == Some(0) => ProbeVerdict::MasterRunning,
            Ok(out) if out.code == Some(1) => ProbeVerdict::MasterDown,
            Ok(out) => ProbeVerdict::Unknown {
                reason: format!("`{probe}` ended with {}", out.summary()),
            },
            Err(e) => ProbeVerdict::Unknown {
                reason: e.to_string(),
            },
        };
        Some(verdict)
    }

    /// Runs the fencing hook, if one is configured.
    pub async fn fence(&self) -> Option<FenceResult> {
        let fence = self.fence.as_ref()?;
        let result = match run_argv(fence.words(), self.timeout).await {
            Ok(out) if out.success() => FenceResult::Fenced,
            Ok(out) => FenceResult::Failed {
                reason: format!(
                    "`{}` ended with {}",
                    display_argv(fence.words()),
                    out.summary()
                ),
            },
            Err(e) => FenceResult::Failed {
                reason: e.to_string(),
            },
        };
        Some(result)
    }
}

/// What the fencing hook did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum FenceResult {
    Fenced,
    Failed { reason: String },
}

/// The read-only picture taken before a switch-over.
#[derive(Debug, Clone, Serialize)]
pub struct Assessment {
    /// The services against the standby table.
    pub before: StateTable,
    pub files: FilesState,
    pub db: DbLag,
    /// `None` when no probe is configured.
    pub probe: Option<ProbeVerdict>,
}

/// A reason not to switch over; each can be overridden with `--force`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    FilesBehind { pending: u64 },
    FilesUnknown { reason: String },
    DbLagging { lag_ms: u64, max_ms: u64 },
    DbUnknown { reason: String },
    MasterRunning,
    MasterProbeUnknown { reason: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::FilesBehind { pending } => {
                write!(
                    f,
                    "files are not caught up ({pending} acknowledged changes not applied yet)"
                )
            }
            Refusal::FilesUnknown { reason } => {
                write!(f, "file replication state is unknown ({reason})")
            }
            Refusal::DbLagging { lag_ms, max_ms } => write!(
                f,
                "the database replica is {:.1} s behind the Master (allowed: {:.1} s)",
                *lag_ms as f64 / 1000.0,
                *max_ms as f64 / 1000.0
            ),
            Refusal::DbUnknown { reason } => {
                write!(f, "database replication lag is unknown ({reason})")
            }
            Refusal::MasterRunning => {
                write!(
                    f,
                    "the master probe reports the old Master still running (split-brain risk)"
                )
            }
            Refusal::MasterProbeUnknown { reason } => {
                write!(
                    f,
                    "the master probe could not tell whether the old Master is down ({reason})"
                )
            }
        }
    }
}

impl Assessment {
    /// What forbids a switch-over (empty: go ahead). The probe counts here only when no fencing
    /// hook is configured; otherwise [`execute`] judges it after fencing.
    pub fn refusals(&self, max_db_lag: Duration, fencing_configured: bool) -> Vec<Refusal> {
        let mut refusals = Vec::new();
        match &self.files {
            FilesState::CaughtUp { .. } => {}
            FilesState::Behind { pending } => {
                refusals.push(Refusal::FilesBehind { pending: *pending })
            }
            FilesState::Unknown { reason } => refusals.push(Refusal::FilesUnknown {
                reason: reason.clone(),
            }),
        }
        match &self.db {
            DbLag::NotConfigured => {}
            DbLag::Measured { lag } if *lag <= max_db_lag => {}
            DbLag::Measured { lag } => refusals.push(Refusal::DbLagging {
                lag_ms: millis_u64(*lag),
                max_ms: millis_u64(max_db_lag),
            }),
            DbLag::Unknown { reason } => refusals.push(Refusal::DbUnknown {
                reason: reason.clone(),
            }),
        }
        if !fencing_configured {
            refusals.extend(probe_refusal(self.probe.as_ref()));
        }
        refusals
    }
}

fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn probe_refusal(probe: Option<&ProbeVerdict>) -> Option<Refusal> {
    match probe? {
        ProbeVerdict::MasterDown => None,
        ProbeVerdict::MasterRunning => Some(Refusal::MasterRunning),
        ProbeVerdict::Unknown { reason } => Some(Refusal::MasterProbeUnknown {
            reason: reason.clone(),
        }),
    }
}

/// A switch-over that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    #[error("cannot read the state of service {service}: {error}; no service was touched")]
    ServicesUnreadable { service: String, error: String },
    #[error("refusing to switch over: {}; fix this, or re-run with --force to accept the risk", join(.0))]
    Refused(Vec<Refusal>),
    #[error("refusing to switch over: fencing the old Master failed ({reason}) and {why}; stop the old Master by hand, or re-run with --force")]
    NotFenced { reason: String, why: String },
    #[error(
        "database promotion failed: {0}; no service was started. Fix the database, then re-run"
    )]
    Promotion(PrecheckError),
    #[error("switch-over stopped at service {service}: {source}{}", started_note(.started))]
    ServiceFailed {
        service: String,
        #[source]
        source: ServiceError,
        /// Services started before the failure, in order.
        started: Vec<String>,
    },
}

fn join(refusals: &[Refusal]) -> String {
    refusals
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn started_note(started: &[String]) -> String {
    if started.is_empty() {
        String::new()
    } else {
        format!(" (already started: {})", started.join(", "))
    }
}

/// Reads everything a switch-over decision needs; changes nothing.
///
/// Fails when a service cannot be queried (an unknown name, a broken query command): starting
/// services that cannot be observed is never safe, so `--force` does not override it.
pub async fn assess<S: ServiceControl, P: Precheck>(
    control: &S,
    set: &ServiceSet,
    precheck: &P,
    hooks: &Hooks,
) -> Result<Assessment, SwitchoverError> {
    let before = StateTable::query(control, set, Role::Standby).await;
    if let Some(row) = before.query_errors().next() {
        return Err(SwitchoverError::ServicesUnreadable {
            service: row.service.clone(),
            error: row.error.clone().unwrap_or_default(),
        });
    }
    let files = precheck
        .files_caught_up()
        .await
        .unwrap_or_else(|e| FilesState::Unknown { reason: e.0 });
    let db = precheck
        .db_lag()
        .await
        .unwrap_or_else(|e| DbLag::Unknown { reason: e.0 });
    let probe = hooks.probe().await;
    Ok(Assessment {
        before,
        files,
        db,
        probe,
    })
}

/// What [`execute`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// `None` when no fencing hook is configured.
    pub fence: Option<FenceResult>,
    /// The probe's verdict when fencing did not succeed and a probe is configured.
    pub probe_after_fence: Option<ProbeVerdict>,
    pub db_promoted: bool,
    /// Services started, in order.
    pub started: Vec<String>,
    /// Services that were running already and were left alone.
    pub already_running: Vec<String>,
    /// Risks accepted with `--force`, in words.
    pub overridden: Vec<String>,
}

/// How [`execute`] behaves.
#[derive(Debug, Clone, Copy)]
pub struct ExecuteOptions {
    /// Go on despite refusals, a failed fencing hook or a probe that says the Master is up.
    pub force: bool,
    pub max_db_lag: Duration,
    /// Per-service start timeout and poll interval.
    pub start_wait: WaitPolicy,
}

/// Carries out the switch-over: refusals (unless forced), fencing, split-brain check, database
/// promotion, then the always-running services and the start order, each waited for.
///
/// Services already running are left alone, so a re-run after a failure continues where the
/// failed run stopped.
pub async fn execute<S: ServiceControl, P: Precheck>(
    control: &S,
    set: &ServiceSet,
    precheck: &P,
    hooks: &Hooks,
    assessment: &Assessment,
    options: ExecuteOptions,
) -> Result<Outcome, SwitchoverError> {
    let mut outcome = Outcome::default();
    let refusals = assessment.refusals(options.max_db_lag, hooks.fence.is_some());
    if !refusals.is_empty() {
        if !options.force {
            return Err(SwitchoverError::Refused(refusals));
        }
        outcome
            .overridden
            .extend(refusals.iter().map(ToString::to_string));
    }
    fence_old_master(hooks, options.force, &mut outcome).await?;
    if assessment.db != DbLag::NotConfigured {
        precheck
            .promote_db()
            .await
            .map_err(SwitchoverError::Promotion)?;
        outcome.db_promoted = true;
        tracing::info!("database promoted");
    }
    for service in set.always_running().iter().chain(set.start_order()) {
        match start_and_wait(control, service, options.start_wait).await {
            Ok(true) => outcome.started.push(service.clone()),
            Ok(false) => outcome.already_running.push(service.clone()),
            Err(source) => {
                return Err(SwitchoverError::ServiceFailed {
                    service: service.clone(),
                    source,
                    started: outcome.started,
                })
            }
        }
    }
    Ok(outcome)
}

/// Runs the fencing hook and decides whether the old Master may still be serving.
///
/// Safe to go on when: fencing succeeded; or it failed (or is not configured) and the probe says
/// the Master is down; or neither hook is configured (the operator's call, logged as a warning).
async fn fence_old_master(
    hooks: &Hooks,
    force: bool,
    outcome: &mut Outcome,
) -> Result<(), SwitchoverError> {
    let fence = hooks.fence().await;
    outcome.fence = fence.clone();
    let fence_failure = match fence {
        None => None,
        Some(FenceResult::Fenced) => {
            tracing::info!("old Master fenced");
            return Ok(());
        }
        Some(FenceResult::Failed { reason }) => {
            tracing::warn!(%reason, "fencing the old Master failed");
            Some(reason)
        }
    };
    let probe = match fence_failure {
        // Without fencing the assessment's probe already counted among the refusals.
        None if hooks.master_probe.is_none() => {
            tracing::warn!(
                "no fencing hook and no master probe configured: make sure the old Master is down"
            );
            return Ok(());
        }
        None => return Ok(()),
        Some(_) => hooks.probe().await,
    };
    outcome.probe_after_fence = probe.clone();
    let why = match probe_refusal(probe.as_ref()) {
        None if probe.is_some() => return Ok(()), // the probe says the Master is down
        None => "no master probe is configured to show that the old Master is down".to_owned(),
        Some(refusal) => refusal.to_string(),
    };
    let reason = fence_failure.unwrap_or_default();
    if force {
        outcome
            .overridden
            .push(format!("fencing failed ({reason}) and {why}"));
        return Ok(());
    }
    Err(SwitchoverError::NotFenced { reason, why })
}

#[cfg(test)]
mod tests {
    //! The procedure's decisions with an in-memory service manager and replication side; the
    //! real command backend, hooks and binary are exercised by `tests/switchover.rs`.

    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::state::ServiceState;

    /// Services in memory; every start and the promotion are recorded in one journal so their
    /// relative order can be checked.
    #[derive(Default)]
    struct Lab {
        states: Mutex<HashMap<String, ServiceState>>,
        journal: Mutex<Vec<String>>,
    }

    impl Lab {
        fn standby(set: &ServiceSet) -> Self {
            let lab = Lab::default();
            for name in set.always_running() {
                lab.set(name, ServiceState::Running);
            }
            for name in set.start_order() {
                lab.set(name, ServiceState::Stopped);
            }
            lab
        }
        fn set(&self, name: &str, state: ServiceState) {
            self.states.lock().unwrap().insert(name.to_owned(), state);
        }
        fn note(&self, entry: String) {
            self.journal.lock().unwrap().push(entry);
        }
        fn journal(&self) -> Vec<String> {
            self.journal.lock().unwrap().clone()
        }
    }

    impl ServiceControl for Lab {
        fn backend_name(&self) -> &'static str {
            "lab"
        }
        async fn query(&self, name: &str) -> Result<ServiceState, ServiceError> {
            self.states
                .lock()
                .unwrap()
                .get(name)
                .copied()
                .ok_or_else(|| ServiceError::NotInstalled {
                    service: name.to_owned(),
                })
        }
        async fn start(&self, name: &str) -> Result<(), ServiceError> {
            self.note(format!("start {name}"));
            self.set(name, ServiceState::Running);
            Ok(())
        }
        async fn stop(&self, name: &str) -> Result<(), ServiceError> {
            self.set(name, ServiceState::Stopped);
            Ok(())
        }
    }

    struct Replication<'a> {
        lab: &'a Lab,
        files: FilesState,
        db: Result<DbLag, PrecheckError>,
        promote: Result<(), PrecheckError>,
    }

    impl Precheck for Replication<'_> {
        async fn files_caught_up(&self) -> Result<FilesState, PrecheckError> {
            Ok(self.files.clone())
        }
        async fn db_lag(&self) -> Result<DbLag, PrecheckError> {
            self.db.clone()
        }
        async fn promote_db(&self) -> Result<(), PrecheckError> {
            self.lab.note("promote".to_owned());
            self.promote.clone()
        }
    }

    fn replication(lab: &Lab, db: Result<DbLag, PrecheckError>) -> Replication<'_> {
        Replication {
            lab,
            files: FilesState::CaughtUp {
                last_applied_unix_ms: None,
            },
            db,
            promote: Ok(()),
        }
    }

    fn no_hooks() -> Hooks {
        Hooks {
            fence: None,
            master_probe: None,
            timeout: Duration::from_secs(10),
        }
    }

    fn options(force: bool) -> ExecuteOptions {
        ExecuteOptions {
            force,
            max_db_lag: Duration::from_secs(5),
            start_wait: WaitPolicy {
                timeout: Duration::from_secs(10),
                poll: Duration::from_millis(10),
            },
        }
    }

    async fn switch_over(
        lab: &Lab,
        set: &ServiceSet,
        replication: &Replication<'_>,
        force: bool,
    ) -> Result<Outcome, SwitchoverError> {
        let hooks = no_hooks();
        let assessment = assess(lab, set, replication, &hooks).await?;
        execute(lab, set, replication, &hooks, &assessment, options(force)).await
    }

    fn lag(seconds: u64) -> Result<DbLag, PrecheckError> {
        Ok(DbLag::Measured {
            lag: Duration::from_secs(seconds),
        })
    }

    #[tokio::test]
    async fn promotes_the_database_before_starting_services_in_order() {
        let set = ServiceSet::runbook();
        let lab = Lab::standby(&set);
        let outcome = switch_over(&lab, &set, &replication(&lab, lag(2)), false)
            .await
            .unwrap();
        assert!(outcome.db_promoted);
        let mut expected = vec!["promote".to_owned()];
        expected.extend(set.start_order().iter().map(|n| format!("start {n}")));
        assert_eq!(lab.journal(), expected);
        assert_eq!(outcome.already_running, set.always_running());
    }

    #[tokio::test]
    async fn refuses_with_the_measured_lag_and_touches_nothing() {
        let set = ServiceSet::runbook();
        let lab = Lab::standby(&set);
        let err = switch_over(&lab, &set, &replication(&lab, lag(12)), false)
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("12.0 s behind") && message.contains("5.0 s"),
            "{message}"
        );
        assert!(lab.journal().is_empty());
    }

    #[tokio::test]
    async fn unknown_lag_refuses_unless_forced() {
        let set = ServiceSet::runbook();
        let lab = Lab::standby(&set);
        let unreachable = || Err(PrecheckError("cannot connect".to_owned()));
        let err = switch_over(&lab, &set, &replication(&lab, unreachable()), false)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SwitchoverError::Refused(r) if matches!(r[..], [Refusal::DbUnknown { .. }])),
            "{err}"
        );
        assert!(lab.journal().is_empty());
        let outcome = switch_over(&lab, &set, &replication(&lab, unreachable()), true)
            .await
            .unwrap();
        assert_eq!(outcome.overridden.len(), 1);
        assert_eq!(outcome.started.len(), 9);
    }

    #[tokio::test]
    async fn without_a_database_nothing_is_promoted() {
        let set = ServiceSet::runbook();
        let lab = Lab::standby(&set);
        let outcome = switch_over(
            &lab,
            &set,
            &replication(&lab, Ok(DbLag::NotConfigured)),
            false,
        )
        .await
        .unwrap();
        assert!(!outcome.db_promoted);
        assert!(!lab.journal().contains(&"promote".to_owned()));
    }

    #[tokio::test]
    async fn a_failed_promotion_starts_no_service() {
        let set = ServiceSet::runbook();
        let lab = Lab::standby(&set);
        let mut replication = replication(&lab, lag(0));
        replication.promote = Err(PrecheckError("read_only is locked".to_owned()));
        let err = switch_over(&lab, &set, &replication, false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("read_only is locked"), "{err}");
        assert_eq!(lab.journal(), ["promote"]);
        assert!(set
            .start_order()
            .iter()
            .all(|n| lab.states.lock().unwrap()[n] == ServiceState::Stopped));
    }

    #[tokio::test]
    async fn files_behind_refuse() {
        let set = ServiceSet::runbook();
        let lab = Lab::standby(&set);
        let mut replication = replication(&lab, Ok(DbLag::NotConfigured));
        replication.files = FilesState::Behind { pending: 7 };
        let err = switch_over(&lab, &set, &replication, false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("7 acknowledged changes"), "{err}");
        assert!(lab.journal().is_empty());
    }
}
