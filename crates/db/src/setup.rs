//! `plan` and `setup`: survey both servers, build the [`Plan`], and (setup) execute it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::ini::{apply_ini_lines, IniEdit, IniLine};
use crate::plan::{build_plan, survey, Plan, ReplicationConfig, Step, Survey, Target};
use crate::server::{BinlogPosition, Server};
use crate::DbError;

/// How long setup waits for the replica threads to report running.
const START_WAIT: Duration = Duration::from_secs(30);

/// What setup did beyond its statements.
#[derive(Debug, Default)]
pub struct SetupReport {
    /// Option files that were edited, with their backups.
    pub ini_edits: Vec<(PathBuf, IniEdit)>,
    /// Option-file lines the operator must add by hand (no path was given), per server.
    pub ini_to_add: Vec<(Target, Vec<IniLine>)>,
    /// Operator actions the plan lists.
    pub manual: Vec<String>,
    /// Where the Slave was pointed, when it was (re)positioned.
    pub position: Option<BinlogPosition>,
}

/// Connects to both servers, surveys them and builds the plan. Changes nothing.
pub async fn plan(cfg: &ReplicationConfig) -> Result<(Plan, Survey), DbError> {
    let mut m = Server::connect(&cfg.master).await?;
    let mut s = Server::connect(&cfg.slave).await?;
    let result = survey(&mut m, &mut s, cfg).await;
    m.close().await;
    s.close().await;
    let survey = result?;
    Ok((build_plan(cfg, &survey), survey))
}

/// Sets up replication: refuses (changing nothing) when the plan has a blocker, otherwise runs
/// every step of the plan and waits until both replica threads run.
pub async fn setup(cfg: &ReplicationConfig) -> Result<SetupReport, DbError> {
    let mut m = Server::connect(&cfg.master).await?;
    let mut s = Server::connect(&cfg.slave).await?;
    let result = async {
        let survey = survey(&mut m, &mut s, cfg).await?;
        let mut plan = build_plan(cfg, &survey);
        if !plan.blockers.is_empty() {
            return Err(plan.blockers.swap_remove(0));
        }
        let report = execute(cfg, &plan, &mut m, &mut s).await?;
        wait_until_running(&mut s).await?;
        Ok(report)
    }
    .await;
    m.close().await;
    s.close().await;
    result
}

/// Runs the plan's steps: the Master's, then the Slave's.
async fn execute(
    cfg: &ReplicationConfig,
    plan: &Plan,
    m: &mut Server,
    s: &mut Server,
) -> Result<SetupReport, DbError> {
    let mut report = SetupReport::default();
    execute_master(cfg, plan, m, &mut report).await?;
    execute_slave(cfg, plan, m, s, None, &mut report).await?;
    Ok(report)
}

/// Runs the plan's Master steps.
pub(crate) async fn execute_master(
    cfg: &ReplicationConfig,
    plan: &Plan,
    m: &mut Server,
    report: &mut SetupReport,
) -> Result<(), DbError> {
    for step in &plan.master {
        run_step(cfg, Target::Master, step, m, None, report).await?;
    }
    Ok(())
}

/// Runs the plan's Slave steps. `known_position` (from a seed) is used instead of reading the
/// Master's current position.
pub(crate) async fn execute_slave(
    cfg: &ReplicationConfig,
    plan: &Plan,
    m: &mut Server,
    s: &mut Server,
    known_position: Option<BinlogPosition>,
    report: &mut SetupReport,
) -> Result<(), DbError> {
    for step in &plan.slave {
        run_step(
            cfg,
            Target::Slave,
            step,
            s,
            Some((&mut *m, known_position.clone())),
            report,
        )
        .await?;
    }
    Ok(())
}

async fn run_step(
    cfg: &ReplicationConfig,
    target: Target,
    step: &Step,
    server: &mut Server,
    master: Option<(&mut Server, Option<BinlogPosition>)>,
    report: &mut SetupReport,
) -> Result<(), DbError> {
    match step {
        Step::Sql { sql, shown, .. } => {
            tracing::info!(server = %server.url, statement = %shown, "setup");
            server.exec(sql).await?;
        }
        Step::ChangeMasterAtCurrentPosition { template, shown } => {
            let position = match master {
                Some((_, Some(known))) => known,
                Some((m, None)) => consistent_position(m).await?,
                None => unreachable_step()?,
            };
            let sql = template
                .replace("{file}", &crate::server::quote(&position.file))
                .replace("{pos}", &position.position.to_string());
            tracing::info!(server = %server.url, statement = %shown, file = %position.file, pos = position.position, "setup");
            server.exec(&sql).await?;
            report.position = Some(position);
        }
        Step::Ini { lines, .. } => {
            let path = match target {
                Target::Master => &cfg.master_ini,
                Target::Slave => &cfg.slave_ini,
            };
            match path {
                Some(p) => report
                    .ini_edits
                    .push((p.clone(), apply_ini_lines(p, lines)?)),
                None => report.ini_to_add.push((target, lines.clone())),
            }
        }
        Step::Manual(text) => report.manual.push(text.clone()),
    }
    Ok(())
}

fn unreachable_step() -> Result<BinlogPosition, DbError> {
    Err(DbError::Refused(
        "internal: a Master step asked for a binlog position".into(),
    ))
}

/// The Master's binlog position with no transaction half-committed: read under a global read
/// lock that is held only for the duration of SHOW MASTER STATUS.
pub(crate) async fn consistent_position(m: &mut Server) -> Result<BinlogPosition, DbError> {
    m.exec("FLUSH TABLES WITH READ LOCK").await?;
    let position = m.master_status().await;
    m.exec("UNLOCK TABLES").await?;
    position?.ok_or_else(|| DbError::MasterNotReady {
        server: m.url.to_string(),
        what: "no binary log position (SHOW MASTER STATUS is empty)".into(),
        lines: "log-bin=swrepl-bin server-id=1".into(),
    })
}

/// Waits until both replica threads run, or one reports an error (then `check` says why).
pub(crate) async fn wait_until_running(s: &mut Server) -> Result<(), DbError> {
    let deadline = Instant::now() + START_WAIT;
    loop {
        match s.replica_status().await? {
            Some(r) if r.io_running && r.sql_running => return Ok(()),
            Some(r) if r.last_io_error.is_some() || r.last_sql_error.is_some() => return Ok(()),
            None => return Ok(()),
            _ if Instant::now() >= deadline => return Ok(()),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
