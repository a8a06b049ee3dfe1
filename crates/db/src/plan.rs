//! Planning: look at both servers ([`survey`]) and decide every statement and option-file line
//! ([`build_plan`], pure). `plan` prints the result; `setup` executes the very same steps, so the
//! printed plan is exactly what setup does.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::heartbeat::{HEARTBEAT_SCHEMA, HEARTBEAT_TABLE_DDL};
use crate::ini::IniLine;
use crate::server::{quote, BinlogPosition, ReplicaStatus, Server, ServerInfo};
use crate::{DbError, ServerUrl};

/// The table that must never replicate (Supportworks' per-server tag).
pub const SWSYSTAG_FILTER: &str = "%.swsystag";

/// Schemas that belong to the server itself and are neither seeded nor compared.
pub const SYSTEM_SCHEMAS: &[&str] = &["mysql", "information_schema", "performance_schema", "sys"];

/// What the operator asked for: both servers and the replication account.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    pub master: ServerUrl,
    pub slave: ServerUrl,
    /// The replication account's user name (never the admin user).
    pub repl_user: String,
    /// Its password (read from a file; never printed).
    pub repl_password: String,
    /// Host part of the account: the address the Master sees the Slave connect from.
    /// Defaults to the Slave URL's host. Wildcards (`%`, `_`) are refused.
    pub repl_host: Option<String>,
    /// Host and port the Slave uses to reach the Master. Defaults to the Master URL's.
    pub master_address: Option<(String, u16)>,
    /// `MASTER_DELAY` in seconds: a delayed replica.
    pub delay: Option<u64>,
    /// The Master's option file, edited in place (with a backup) when given.
    pub master_ini: Option<PathBuf>,
    /// The Slave's option file, edited in place (with a backup) when given.
    pub slave_ini: Option<PathBuf>,
}

impl ReplicationConfig {
    pub fn account_host(&self) -> &str {
        self.repl_host.as_deref().unwrap_or(&self.slave.host)
    }

    pub fn source(&self) -> (String, u16) {
        self.master_address
            .clone()
            .unwrap_or_else(|| (self.master.host.clone(), self.master.port))
    }

    /// The account as SQL: `'user'@'host'`.
    pub fn account(&self) -> String {
        format!("{}@{}", quote(&self.repl_user), quote(self.account_host()))
    }

    /// Refuses settings that would weaken the replication set-up.
    pub fn validate(&self) -> Result<(), DbError> {
        let host = self.account_host();
        if host.is_empty() || host.contains('%') || host.contains('_') {
            return Err(DbError::Refused(format!(
                "the replication account's host {host:?} is empty or a wildcard; give the Slave's address with --repl-host"
            )));
        }
        if self.repl_user.is_empty() || self.repl_user.len() > 32 {
            return Err(DbError::Refused(
                "--repl-user must be 1 to 32 characters".into(),
            ));
        }
        if self.repl_user.eq_ignore_ascii_case(&self.master.user)
            || self.repl_user.eq_ignore_ascii_case("root")
        {
            return Err(DbError::Refused(format!(
                "--repl-user {:?} is an administrative login; use a dedicated replication account such as `repl`",
                self.repl_user
            )));
        }
        if self.repl_password.is_empty() {
            return Err(DbError::Refused("the replication password is empty".into()));
        }
        Ok(())
    }
}

/// What the survey of both servers, before a plan is built, learned about them.
#[derive(Clone, Debug)]
pub struct Survey {
    pub master: ServerInfo,
    pub slave: ServerInfo,
    pub master_position: Option<BinlogPosition>,
    pub replica: Option<ReplicaStatus>,
    /// Grants of the replication account on the Master; `None` when it does not exist.
    pub account_grants: Option<Vec<String>>,
    /// The Slave's current `replicate_wild_ignore_table` value.
    pub slave_wild_ignore: Vec<String>,
    /// Non-system databases on the Master that the Slave does not have.
    pub missing_on_slave: Vec<String>,
}

/// Reads everything [`build_plan`] needs. Changes nothing.
pub async fn survey(
    master: &mut Server,
    slave: &mut Server,
    cfg: &ReplicationConfig,
) -> Result<Survey, DbError> {
    let master_position = if master.info.log_bin {
        master.master_status().await?
    } else {
        None
    };
    let replica = slave.replica_status().await?;
    let account_grants = account_grants(master, cfg).await?;
    let slave_wild_ignore = slave
        .variables(&["replicate_wild_ignore_table"])
        .await?
        .get("replicate_wild_ignore_table")
        .map(|v| split_list(v))
        .unwrap_or_default();
    let master_dbs = user_databases(master).await?;
    let slave_dbs = user_databases(slave).await?;
    let missing_on_slave = master_dbs
        .into_iter()
        .filter(|d| !slave_dbs.contains(d))
        .collect();
    Ok(Survey {
        master: master.info.clone(),
        slave: slave.info.clone(),
        master_position,
        replica,
        account_grants,
        slave_wild_ignore,
        missing_on_slave,
    })
}

async fn account_grants(
    master: &mut Server,
    cfg: &ReplicationConfig,
) -> Result<Option<Vec<String>>, DbError> {
    let exists: Option<i64> = master
        .scalar(&format!(
            "SELECT COUNT(*) FROM mysql.user WHERE User={} AND Host={}",
            quote(&cfg.repl_user),
            quote(cfg.account_host())
        ))
        .await?;
    if exists.unwrap_or(0) == 0 {
        return Ok(None);
    }
    let grants: Vec<String> = master
        .rows(&format!("SHOW GRANTS FOR {}", cfg.account()))
        .await?;
    Ok(Some(grants))
}

/// Databases other than the server's own and swrepl's, sorted.
pub async fn user_databases(server: &mut Server) -> Result<Vec<String>, DbError> {
    let mut dbs: Vec<String> = server.rows("SHOW DATABASES").await?;
    dbs.retain(|d| {
        !SYSTEM_SCHEMAS.contains(&d.to_ascii_lowercase().as_str()) && d != HEARTBEAT_SCHEMA
    });
    dbs.sort();
    Ok(dbs)
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Which server a step runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Master,
    Slave,
}

/// One thing setup does.
#[derive(Clone, Debug)]
pub enum Step {
    /// A statement to run. `shown` is the same statement with secrets masked.
    Sql {
        sql: String,
        shown: String,
        why: String,
    },
    /// Take a consistent binlog position on the Master (FLUSH TABLES WITH READ LOCK, SHOW MASTER
    /// STATUS, UNLOCK TABLES) and point the Slave at it with this statement template, where
    /// `{file}` and `{pos}` are filled in.
    ChangeMasterAtCurrentPosition { template: String, shown: String },
    /// Lines for the option file; written when its path is given, otherwise printed.
    Ini { lines: Vec<IniLine>, why: String },
    /// Something only the operator can do (restart a service, copy data).
    Manual(String),
}

/// Everything setup will do, per server, and what stops it.
#[derive(Debug, Default)]
pub struct Plan {
    pub master: Vec<Step>,
    pub slave: Vec<Step>,
    /// Reasons setup must not run; each is one line for the operator.
    pub blockers: Vec<DbError>,
    /// Facts worth knowing (nothing to do).
    pub notes: Vec<String>,
}

impl Plan {
    fn sql(&mut self, target: Target, sql: String, why: &str) {
        let shown = crate::server::redact_for_display(&sql);
        self.steps(target).push(Step::Sql {
            sql,
            shown,
            why: why.to_string(),
        });
    }

    fn steps(&mut self, target: Target) -> &mut Vec<Step> {
        match target {
            Target::Master => &mut self.master,
            Target::Slave => &mut self.slave,
        }
    }

    /// The plan as text for an operator; passwords are masked.
    pub fn render(&self, cfg: &ReplicationConfig, survey: &Survey) -> String {
        let mut out = String::new();
        let describe = |info: &ServerInfo| {
            format!(
                "{} (server_id={}, log_bin={}, binlog_format={}, read_only={})",
                info.version_text,
                info.server_id,
                on_off(info.log_bin),
                info.binlog_format.as_deref().unwrap_or("-"),
                on_off(info.read_only)
            )
        };
        let _ = writeln!(out, "Master {}: {}", cfg.master, describe(&survey.master));
        render_steps(&mut out, &self.master, cfg.master_ini.as_ref());
        let _ = writeln!(out, "\nSlave {}: {}", cfg.slave, describe(&survey.slave));
        render_steps(&mut out, &self.slave, cfg.slave_ini.as_ref());
        for note in &self.notes {
            let _ = writeln!(out, "\nnote: {note}");
        }
        for blocker in &self.blockers {
            let _ = writeln!(out, "\nBLOCKED: {blocker}");
        }
        out
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "ON"
    } else {
        "OFF"
    }
}

fn render_steps(out: &mut String, steps: &[Step], ini: Option<&PathBuf>) {
    if steps.is_empty() {
        let _ = writeln!(out, "  (nothing to change)");
    }
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        match step {
            Step::Sql { shown, why, .. } => {
                let _ = writeln!(out, "  {n}. {shown};\n     -- {why}");
            }
            Step::ChangeMasterAtCurrentPosition { shown, .. } => {
                let _ = writeln!(
                    out,
                    "  {n}. {shown};\n     -- at the Master's position read under FLUSH TABLES WITH READ LOCK (held for milliseconds)"
                );
            }
            Step::Ini { lines, why } => {
                let whereto = match ini {
                    Some(p) => format!("written under [mysqld] in {} (backup kept)", p.display()),
                    None => "to add under [mysqld] in the option file (Swsql.ini or my.cnf): pass its path to write them".into(),
                };
                let _ = writeln!(out, "  {n}. option file lines, {whereto} -- {why}:");
                for line in lines {
                    let shown = if line.key.contains("password") {
                        format!("{}=***", line.key)
                    } else {
                        line.render()
                    };
                    let _ = writeln!(out, "       {shown}");
                }
            }
            Step::Manual(text) => {
                let _ = writeln!(out, "  {n}. YOU: {text}");
            }
        }
    }
}

/// Decides every step from the survey. Pure: the same survey gives the same plan.
pub fn build_plan(cfg: &ReplicationConfig, s: &Survey) -> Plan {
    let mut plan = Plan::default();
    if let Err(e) = cfg.validate() {
        plan.blockers.push(e);
    }
    plan_master(cfg, s, &mut plan);
    plan_slave(cfg, s, &mut plan);
    plan
}

fn plan_master(cfg: &ReplicationConfig, s: &Survey, plan: &mut Plan) {
    let m = &s.master;
    let mut ini = Vec::new();
    if !m.log_bin || m.server_id == 0 {
        if !m.log_bin {
            ini.push(IniLine::new("log-bin", "swrepl-bin"));
        }
        if m.server_id == 0 {
            ini.push(IniLine::new("server-id", "1"));
        }
        if m.supports_row_format() {
            ini.push(IniLine::new("binlog-format", "ROW"));
        }
        let what = match (m.log_bin, m.server_id) {
            (false, 0) => "no binary log and no server id",
            (false, _) => "the binary log off",
            _ => "no server id",
        };
        let lines = ini
            .iter()
            .map(IniLine::render)
            .collect::<Vec<_>>()
            .join(" ");
        plan.blockers.push(DbError::MasterNotReady {
            server: cfg.master.to_string(),
            what: what.to_string(),
            lines,
        });
        plan.master.push(Step::Ini {
            lines: ini,
            why: "binary log and server id (then restart the Master's SwSqlServer service)".into(),
        });
        plan.master.push(Step::Manual(
            "restart the Master's database service so the binary log starts, then run setup again"
                .into(),
        ));
        return;
    }
    if m.supports_row_format() && m.binlog_format.as_deref().is_some_and(|f| f != "ROW") {
        plan.sql(
            Target::Master,
            "SET GLOBAL binlog_format='ROW'".into(),
            "row-based logging: the Slave applies exactly the Master's rows (new sessions)",
        );
        ini.push(IniLine::new("binlog-format", "ROW"));
    }
    plan_account(cfg, s, plan);
    plan.sql(
        Target::Master,
        format!("CREATE DATABASE IF NOT EXISTS {HEARTBEAT_SCHEMA}"),
        "swrepl's own schema for the heartbeat (true lag)",
    );
    plan.sql(
        Target::Master,
        HEARTBEAT_TABLE_DDL.into(),
        "heartbeat table, one row per Master server id",
    );
    if !ini.is_empty() {
        plan.master.push(Step::Ini {
            lines: ini,
            why: "keep the runtime settings across a restart".into(),
        });
    }
}

fn plan_account(cfg: &ReplicationConfig, s: &Survey, plan: &mut Plan) {
    let m = &s.master;
    let account = cfg.account();
    let password = quote(&cfg.repl_password);
    plan.sql(
        Target::Master,
        "SET SESSION sql_log_bin=0".into(),
        "the account stays on the Master: its statements must not replicate",
    );
    match &s.account_grants {
        Some(grants) => {
            if grants
                .iter()
                .any(|g| g.to_ascii_uppercase().contains("ALL PRIVILEGES"))
            {
                plan.blockers.push(DbError::Refused(format!(
                    "the account {account} already has ALL PRIVILEGES (the runbook's GRANT ALL); drop it (`DROP USER {account}`) or choose another --repl-user"
                )));
            }
            let sql = if m.create_user_if_not_exists() {
                format!("ALTER USER {account} IDENTIFIED BY {password}")
            } else {
                format!("SET PASSWORD FOR {account} = PASSWORD({password})")
            };
            plan.sql(
                Target::Master,
                sql,
                "the account exists: make its password the one in the password file",
            );
        }
        None if m.create_user_if_not_exists() => {
            plan.sql(
                Target::Master,
                format!("CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {password}"),
                "replication account, only from the Slave's address",
            );
        }
        None => {}
    }
    let grant = format!("GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {account}");
    let grant = if s.account_grants.is_none() && !m.create_user_if_not_exists() {
        format!("{grant} IDENTIFIED BY {password}")
    } else {
        grant
    };
    plan.sql(
        Target::Master,
        grant,
        "least privilege: read the binary log and the replication status, nothing else",
    );
    plan.sql(
        Target::Master,
        "SET SESSION sql_log_bin=1".into(),
        "log this session's statements again",
    );
}

fn plan_slave(cfg: &ReplicationConfig, s: &Survey, plan: &mut Plan) {
    let sl = &s.slave;
    if sl.server_id != 0 && sl.server_id == s.master.server_id {
        plan.blockers
            .push(DbError::DuplicateServerId { id: sl.server_id });
    }
    let mut ini = Vec::new();
    if sl.server_id == 0 {
        ini.push(IniLine::new(
            "server-id",
            (s.master.server_id.max(1) + 1).to_string(),
        ));
        plan.blockers.push(DbError::Unsupported {
            server: cfg.slave.to_string(),
            what: format!(
                "has no server id; add `server-id={}` under [mysqld] in its option file and restart it",
                s.master.server_id.max(1) + 1
            ),
        });
    }
    let (source_host, source_port) = cfg.source();
    let already_ours = match &s.replica {
        Some(r) if !r.master_host.is_empty() => {
            if r.master_host.eq_ignore_ascii_case(&source_host) && r.master_port == source_port {
                true
            } else {
                plan.blockers.push(DbError::ReplicatingElsewhere {
                    server: cfg.slave.to_string(),
                    current: r.source_address(),
                });
                false
            }
        }
        _ => false,
    };
    if !already_ours && !s.missing_on_slave.is_empty() {
        plan.blockers.push(DbError::SlaveNotSeeded {
            server: cfg.slave.to_string(),
            missing: s.missing_on_slave.join(", "),
        });
    }

    if !sl.accepts_change_master() {
        plan_slave_ini_only(cfg, s, plan, ini);
        return;
    }

    let filter_missing = !s.slave_wild_ignore.iter().any(|f| f == SWSYSTAG_FILTER);
    let delay_change = cfg
        .delay
        .filter(|d| !already_ours || s.replica.as_ref().is_some_and(|r| r.sql_delay != *d));
    if cfg.delay.is_some() && !sl.supports_delay() {
        plan.blockers.push(DbError::Unsupported {
            server: cfg.slave.to_string(),
            what: "does not support a delayed replica (MASTER_DELAY needs MariaDB 10.2.3+ or MySQL 5.6+)".into(),
        });
    }
    let needs_stop =
        already_ours && (filter_missing && sl.runtime_filters() || delay_change.is_some());
    if !already_ours || needs_stop {
        plan.sql(
            Target::Slave,
            sl.stop_replica().into(),
            "filters and the source can only change while replication is stopped",
        );
    }
    if filter_missing {
        if sl.runtime_filters() {
            let mut filters = s.slave_wild_ignore.clone();
            filters.push(SWSYSTAG_FILTER.into());
            let sql = if sl.flavor == crate::server::Flavor::MariaDb {
                format!(
                    "SET GLOBAL replicate_wild_ignore_table={}",
                    quote(&filters.join(","))
                )
            } else {
                let list = filters
                    .iter()
                    .map(|f| quote(f))
                    .collect::<Vec<_>>()
                    .join(",");
                format!("CHANGE REPLICATION FILTER REPLICATE_WILD_IGNORE_TABLE=({list})")
            };
            plan.sql(Target::Slave, sql, "never replicate table swsystag (a table-level filter, safe under any binlog format)");
        } else {
            plan.notes.push("this Slave cannot set replication filters at runtime: the swsystag filter takes effect after the option-file line is in place and the server restarted".into());
        }
    }
    ini.push(IniLine::new("replicate-wild-ignore-table", SWSYSTAG_FILTER));
    if !sl.read_only {
        plan.sql(
            Target::Slave,
            "SET GLOBAL read_only=1".into(),
            "nothing but replication writes on the Slave",
        );
    }
    ini.push(IniLine::new("read-only", "1"));
    ini.push(IniLine::new("relay-log-recovery", "1"));
    plan.sql(
        Target::Slave,
        format!("CREATE DATABASE IF NOT EXISTS {HEARTBEAT_SCHEMA}"),
        "heartbeat schema, so the Master's heartbeat rows apply",
    );
    plan.sql(Target::Slave, HEARTBEAT_TABLE_DDL.into(), "heartbeat table");

    let (change, p) = sl.change_source();
    if already_ours {
        plan.notes.push(format!(
            "the Slave already replicates from {source_host}:{source_port}; its position is kept (use `swrepl db seed` to start over from a fresh copy)"
        ));
        if let Some(d) = delay_change {
            plan.sql(
                Target::Slave,
                format!("{change} {p}DELAY={d}"),
                "delayed replica",
            );
        }
    } else {
        let mut opts = format!(
            "{p}HOST={}, {p}PORT={source_port}, {p}USER={}, {p}PASSWORD={}",
            quote(&source_host),
            quote(&cfg.repl_user),
            quote(&cfg.repl_password)
        );
        if let Some(d) = cfg.delay {
            let _ = write!(opts, ", {p}DELAY={d}");
        }
        let template = format!("{change} {opts}, {p}LOG_FILE={{file}}, {p}LOG_POS={{pos}}");
        let shown = crate::server::redact_for_display(&template);
        plan.slave
            .push(Step::ChangeMasterAtCurrentPosition { template, shown });
    }
    if !already_ours
        || needs_stop
        || s.replica
            .as_ref()
            .is_some_and(|r| !r.io_running || !r.sql_running)
    {
        plan.sql(
            Target::Slave,
            sl.start_replica().into(),
            "start the IO and SQL threads",
        );
    }
    plan.slave.push(Step::Ini {
        lines: ini,
        why: "keep the filter and read_only across a restart; recover relay logs after a crash"
            .into(),
    });
}

/// Very old builds: replication is configured only through `master-*` option-file lines.
fn plan_slave_ini_only(
    cfg: &ReplicationConfig,
    s: &Survey,
    plan: &mut Plan,
    mut ini: Vec<IniLine>,
) {
    let (host, port) = cfg.source();
    ini.extend([
        IniLine::new("master-host", host),
        IniLine::new("master-user", cfg.repl_user.clone()),
        IniLine::new("master-password", cfg.repl_password.clone()),
        IniLine::new("master-port", port.to_string()),
        IniLine::new("replicate-wild-ignore-table", SWSYSTAG_FILTER),
        IniLine::new("read-only", "1"),
    ]);
    if s.slave.server_id == 0 {
        plan.notes
            .push("server-id for the Slave is among the option-file lines".into());
    }
    plan.slave.push(Step::Ini {
        lines: ini,
        why: format!(
            "this server ({}) takes the Master's address only from its option file",
            s.slave.version_text
        ),
    });
    plan.slave.push(Step::Manual(
        "stop both database services, copy the Master's Data folder to the Slave, start both, then run `FLUSH SLAVE` (or `SLAVE START`) on the Slave".into(),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{Flavor, Version};

    fn info(server_id: u64, log_bin: bool) -> ServerInfo {
        ServerInfo {
            version_text: "10.11.6-MariaDB".into(),
            version: Version(10, 11, 6),
            flavor: Flavor::MariaDb,
            server_id,
            log_bin,
            binlog_format: Some("ROW".into()),
            read_only: false,
        }
    }

    fn cfg() -> ReplicationConfig {
        ReplicationConfig {
            master: ServerUrl::parse("mysql://root:pw@10.0.0.1").unwrap(),
            slave: ServerUrl::parse("mysql://root:pw@10.0.0.2").unwrap(),
            repl_user: "repl".into(),
            repl_password: "secret".into(),
            repl_host: None,
            master_address: None,
            delay: None,
            master_ini: None,
            slave_ini: None,
        }
    }

    fn survey() -> Survey {
        Survey {
            master: info(1, true),
            slave: info(2, true),
            master_position: None,
            replica: None,
            account_grants: None,
            slave_wild_ignore: vec![],
            missing_on_slave: vec![],
        }
    }

    fn blockers(plan: &Plan) -> Vec<String> {
        plan.blockers.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn fresh_pair_has_no_blockers_and_never_prints_the_password() {
        let plan = build_plan(&cfg(), &survey());
        assert!(plan.blockers.is_empty(), "{:?}", blockers(&plan));
        let text = plan.render(&cfg(), &survey());
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("'repl'@'10.0.0.2'"), "{text}");
        assert!(
            text.contains("MASTER_HOST='10.0.0.1', MASTER_PORT=5002"),
            "{text}"
        );
    }

    #[test]
    fn refuses_unsafe_or_conflicting_set_ups() {
        let mut s = survey();
        s.slave.server_id = 1;
        s.account_grants = Some(vec![
            "GRANT ALL PRIVILEGES ON *.* TO `repl`@`10.0.0.2`".into()
        ]);
        s.replica = Some(ReplicaStatus {
            master_host: "10.9.9.9".into(),
            master_port: 3306,
            ..ReplicaStatus::default()
        });
        let all = blockers(&build_plan(&cfg(), &s)).join("\n");
        assert!(all.contains("both have server_id=1"), "{all}");
        assert!(all.contains("ALL PRIVILEGES"), "{all}");
        assert!(
            all.contains("already replicates from 10.9.9.9:3306"),
            "{all}"
        );

        let mut c = cfg();
        c.repl_host = Some("%".into());
        assert!(blockers(&build_plan(&c, &survey()))[0].contains("wildcard"));
        c.repl_host = None;
        c.repl_user = "root".into();
        assert!(blockers(&build_plan(&c, &survey()))[0].contains("administrative"));
    }

    #[test]
    fn master_without_binlog_gets_the_ini_lines() {
        let mut s = survey();
        s.master = info(0, false);
        let all = blockers(&build_plan(&cfg(), &s)).join("\n");
        assert!(
            all.contains("log-bin=swrepl-bin server-id=1 binlog-format=ROW"),
            "{all}"
        );
    }

    #[test]
    fn already_replicating_from_this_master_keeps_the_position() {
        let mut s = survey();
        s.slave.read_only = true;
        s.slave_wild_ignore = vec![SWSYSTAG_FILTER.into()];
        s.replica = Some(ReplicaStatus {
            master_host: "10.0.0.1".into(),
            master_port: 5002,
            io_running: true,
            sql_running: true,
            ..ReplicaStatus::default()
        });
        let plan = build_plan(&cfg(), &s);
        assert!(plan.blockers.is_empty());
        assert!(!plan.slave.iter().any(|st| matches!(
            st,
            Step::ChangeMasterAtCurrentPosition { .. }
        ) || matches!(st, Step::Sql { sql, .. } if sql.contains("STOP"))));
    }
}
