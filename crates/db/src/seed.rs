//! `seed`: copy the Master's data to the Slave from a consistent snapshot and start replication
//! at the snapshot's binlog position (the online path).
//!
//! The dump is `mariadb-dump` (or `mysqldump`) with `--master-data=2`: the binlog position is
//! written into the dump as a comment at the moment of the snapshot, under `--single-transaction`
//! when every table is transactional (no lock held on the Master) or `--lock-all-tables`
//! otherwise (MyISAM tables, as old SwSQL uses, are only consistent under a global lock). The
//! dump is piped through swrepl (which counts bytes for the progress bar and reads the position)
//! into `mariadb` (or `mysql`) connected to the Slave. Credentials reach both programs through
//! 0600 option files in a private temporary directory, never on their command lines.
//!
//! The offline path is the runbook's: stop both database services, copy the Master's Data
//! folder to the Slave (keeping the Slave's own `server-id` in its option file), start both, and
//! run `swrepl db setup`, which starts replication at the Master's current position.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::heartbeat::HEARTBEAT_SCHEMA;
use crate::plan::{build_plan, survey, user_databases, ReplicationConfig};
use crate::server::{quote, quote_ident, BinlogPosition, Server};
use crate::setup::{execute_master, execute_slave, wait_until_running, SetupReport};
use crate::{DbError, ServerUrl};

/// Which programs to run (found on PATH when not given).
#[derive(Clone, Debug, Default)]
pub struct SeedOptions {
    /// `mariadb-dump` or `mysqldump`.
    pub dump_program: Option<PathBuf>,
    /// `mariadb` or `mysql`.
    pub client_program: Option<PathBuf>,
}

/// Progress of the copy.
#[derive(Clone, Copy, Debug)]
pub struct SeedProgress {
    /// Dump bytes loaded into the Slave so far.
    pub bytes: u64,
    /// Estimated total (the Master's data size; the dump's text is usually near it).
    pub estimate: u64,
}

/// What seed did.
#[derive(Debug)]
pub struct SeedReport {
    pub databases: Vec<String>,
    pub bytes: u64,
    /// Whether the Master's tables were locked for the dump (non-transactional tables present).
    pub locked_tables: bool,
    pub setup: SetupReport,
}

/// Seeds the Slave from the Master and starts replication at the snapshot's position.
///
/// Refuses (changing nothing) for the same reasons as setup, except that the Slave lacking the
/// Master's databases is expected here. Seeding a Slave that already replicates from this Master
/// starts it over from the new snapshot. Tables named `swsystag` keep the Slave's own content
/// (created empty when missing).
pub async fn seed(
    cfg: &ReplicationConfig,
    opts: &SeedOptions,
    progress: &mut (dyn FnMut(SeedProgress) + Send),
) -> Result<SeedReport, DbError> {
    let mut m = Server::connect(&cfg.master).await?;
    let mut s = Server::connect(&cfg.slave).await?;
    let result = seed_connected(cfg, opts, progress, &mut m, &mut s).await;
    m.close().await;
    s.close().await;
    result
}

async fn seed_connected(
    cfg: &ReplicationConfig,
    opts: &SeedOptions,
    progress: &mut (dyn FnMut(SeedProgress) + Send),
    m: &mut Server,
    s: &mut Server,
) -> Result<SeedReport, DbError> {
    let dump = find_program(opts.dump_program.as_deref(), &["mariadb-dump", "mysqldump"])?;
    let client = find_program(opts.client_program.as_deref(), &["mariadb", "mysql"])?;
    let mut found = survey(m, s, cfg).await?;
    let checked = build_plan(cfg, &found);
    if let Some(blocker) = checked
        .blockers
        .into_iter()
        .find(|b| !matches!(b, DbError::SlaveNotSeeded { .. }))
    {
        return Err(blocker);
    }
    // Plan as for a fresh Slave: a new position replaces whatever it had from this Master.
    found.replica = None;
    found.missing_on_slave.clear();
    let plan = build_plan(cfg, &found);

    let mut databases = user_databases(m).await?;
    // The account and heartbeat table first, so they are part of the snapshot (or not logged).
    let mut setup = SetupReport::default();
    execute_master(cfg, &plan, m, &mut setup).await?;
    let stop = s.info.stop_replica();
    s.exec(stop).await?;
    if master_has_schema(m, HEARTBEAT_SCHEMA).await? {
        databases.push(HEARTBEAT_SCHEMA.to_string());
    }
    let locked_tables = has_non_transactional_tables(m, &databases).await?;
    let swsystags = swsystag_tables(m, &databases).await?;
    let estimate = data_size(m, &databases).await?;
    let (position, bytes) = if databases.is_empty() {
        (crate::setup::consistent_position(m).await?, 0)
    } else {
        let dir = tempfile::tempdir().map_err(|e| {
            DbError::file(
                "cannot create a temporary directory in",
                std::env::temp_dir(),
                e,
            )
        })?;
        let master_cnf = write_client_options(dir.path(), "master.cnf", &cfg.master)?;
        let slave_cnf = write_client_options(dir.path(), "slave.cnf", &cfg.slave)?;
        let mut args = vec![
            format!("--defaults-extra-file={}", master_cnf.display()),
            "--master-data=2".into(),
            if locked_tables {
                "--lock-all-tables".into()
            } else {
                "--single-transaction".into()
            },
            "--routines".into(),
            "--events".into(),
            "--triggers".into(),
            "--hex-blob".into(),
        ];
        args.extend(
            swsystags
                .iter()
                .map(|(db, t)| format!("--ignore-table={db}.{t}")),
        );
        args.push("--databases".into());
        args.extend(databases.iter().cloned());
        pipe_dump(&dump, &args, &client, &slave_cnf, estimate, progress).await?
    };
    create_missing_swsystags(m, s, &swsystags).await?;
    execute_slave(cfg, &plan, m, s, Some(position), &mut setup).await?;
    wait_until_running(s).await?;
    databases.retain(|d| d != HEARTBEAT_SCHEMA);
    Ok(SeedReport {
        databases,
        bytes,
        locked_tables,
        setup,
    })
}

fn find_program(given: Option<&Path>, names: &[&str]) -> Result<PathBuf, DbError> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            for candidate in [dir.join(name), dir.join(format!("{name}.exe"))] {
                if candidate.is_file() {
                    return Ok(candidate);
                }
            }
        }
    }
    Err(DbError::Tool {
        program: names.join(" / "),
        reason: "not found on PATH; install the MariaDB or MySQL client programs or name them with --dump-program / --client-program".into(),
    })
}

async fn master_has_schema(m: &mut Server, schema: &str) -> Result<bool, DbError> {
    let n: Option<i64> = m
        .scalar(&format!(
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME={}",
            quote(schema)
        ))
        .await?;
    Ok(n.unwrap_or(0) > 0)
}

fn in_list(databases: &[String]) -> String {
    if databases.is_empty() {
        return "''".into();
    }
    databases
        .iter()
        .map(|d| quote(d))
        .collect::<Vec<_>>()
        .join(",")
}

async fn has_non_transactional_tables(
    m: &mut Server,
    databases: &[String],
) -> Result<bool, DbError> {
    let n: Option<i64> = m
        .scalar(&format!(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA IN ({}) \
             AND TABLE_TYPE='BASE TABLE' AND UPPER(ENGINE) NOT IN ('INNODB','XTRADB')",
            in_list(databases)
        ))
        .await?;
    Ok(n.unwrap_or(0) > 0)
}

async fn swsystag_tables(
    m: &mut Server,
    databases: &[String],
) -> Result<Vec<(String, String)>, DbError> {
    m.rows(&format!(
        "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA IN ({}) \
         AND LOWER(TABLE_NAME)='swsystag'",
        in_list(databases)
    ))
    .await
}

async fn data_size(m: &mut Server, databases: &[String]) -> Result<u64, DbError> {
    let n: Option<String> = m
        .scalar(&format!(
            "SELECT CAST(COALESCE(SUM(DATA_LENGTH),0) AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA IN ({})",
            in_list(databases)
        ))
        .await?;
    Ok(n.and_then(|n| n.parse().ok()).unwrap_or(0))
}

/// swsystag is not copied; where the Slave lacks one, it gets the Master's structure, empty.
async fn create_missing_swsystags(
    m: &mut Server,
    s: &mut Server,
    tables: &[(String, String)],
) -> Result<(), DbError> {
    for (db, table) in tables {
        let exists: Option<i64> = s
            .scalar(&format!(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA={} AND TABLE_NAME={}",
                quote(db),
                quote(table)
            ))
            .await?;
        if exists.unwrap_or(0) > 0 {
            continue;
        }
        let full = format!("{}.{}", quote_ident(db), quote_ident(table));
        let rows: Vec<(String, String)> = m.rows(&format!("SHOW CREATE TABLE {full}")).await?;
        if let Some((_, ddl)) = rows.into_iter().next() {
            s.exec(&format!("USE {}", quote_ident(db))).await?;
            s.exec(&ddl).await?;
        }
    }
    Ok(())
}

/// A `[client]` option file with the login, readable only by us.
fn write_client_options(dir: &Path, name: &str, url: &ServerUrl) -> Result<PathBuf, DbError> {
    let path = dir.join(name);
    let value = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
    let mut text = format!(
        "[client]\nhost={}\nport={}\nprotocol=TCP\nuser={}\n",
        value(&url.host),
        url.port,
        value(&url.user)
    );
    if let Some(pw) = url.password() {
        text.push_str(&format!("password={}\n", value(pw)));
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .map_err(|e| DbError::file("cannot create", &path, e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| DbError::file("cannot write", &path, e))?;
    Ok(path)
}

/// Runs `dump … | client`, passing the bytes through to count them and to read the binlog
/// position from the dump's `-- CHANGE MASTER TO …` comment.
async fn pipe_dump(
    dump: &Path,
    dump_args: &[String],
    client: &Path,
    slave_cnf: &Path,
    estimate: u64,
    progress: &mut (dyn FnMut(SeedProgress) + Send),
) -> Result<(BinlogPosition, u64), DbError> {
    let tool_err = |program: &Path, reason: String| DbError::Tool {
        program: program.display().to_string(),
        reason,
    };
    let mut dumper = Command::new(dump)
        .args(dump_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| tool_err(dump, format!("cannot start: {e}")))?;
    let mut loader = Command::new(client)
        .arg(format!("--defaults-extra-file={}", slave_cnf.display()))
        .arg("--max-allowed-packet=1G")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| tool_err(client, format!("cannot start: {e}")))?;
    let mut from = dumper
        .stdout
        .take()
        .ok_or_else(|| tool_err(dump, "no stdout".into()))?;
    let mut to = loader
        .stdin
        .take()
        .ok_or_else(|| tool_err(client, "no stdin".into()))?;
    let dump_stderr = read_all_later(dumper.stderr.take());
    let load_stderr = read_all_later(loader.stderr.take());

    let mut head = Vec::new();
    let mut position = None;
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let copy: Result<(), String> = async {
        loop {
            let n = from
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading the dump: {e}"))?;
            if n == 0 {
                break;
            }
            if position.is_none() && head.len() < 1 << 20 {
                head.extend_from_slice(&buf[..n]);
                position = parse_dump_position(&String::from_utf8_lossy(&head));
            }
            to.write_all(&buf[..n])
                .await
                .map_err(|e| format!("loading into the Slave: {e}"))?;
            bytes += n as u64;
            progress(SeedProgress { bytes, estimate });
        }
        to.shutdown()
            .await
            .map_err(|e| format!("loading into the Slave: {e}"))?;
        Ok(())
    }
    .await;
    drop(to);
    let dump_status = dumper
        .wait()
        .await
        .map_err(|e| tool_err(dump, e.to_string()))?;
    let load_status = loader
        .wait()
        .await
        .map_err(|e| tool_err(client, e.to_string()))?;
    let dump_err = dump_stderr.await.unwrap_or_default();
    let load_err = load_stderr.await.unwrap_or_default();
    if !dump_status.success() {
        return Err(tool_err(
            dump,
            format!("failed ({dump_status}): {}", first_line(&dump_err)),
        ));
    }
    if !load_status.success() {
        return Err(tool_err(
            client,
            format!(
                "loading into the Slave failed ({load_status}): {}",
                first_line(&load_err)
            ),
        ));
    }
    copy.map_err(|e| tool_err(client, e))?;
    let position = position.ok_or_else(|| {
        tool_err(
            dump,
            "the dump has no `CHANGE MASTER TO` position; is the Master's binary log on?".into(),
        )
    })?;
    Ok((position, bytes))
}

fn read_all_later<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    reader: Option<R>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut text = String::new();
        if let Some(mut r) = reader {
            let mut bytes = Vec::new();
            let _ = r.read_to_end(&mut bytes).await;
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.contains("Deprecated program name"))
        .unwrap_or("(no message)")
        .to_string()
}

/// Finds `CHANGE MASTER TO MASTER_LOG_FILE='f', MASTER_LOG_POS=n` (or the SOURCE_ spelling).
pub(crate) fn parse_dump_position(head: &str) -> Option<BinlogPosition> {
    head.lines()
        .filter(|l| l.contains("CHANGE MASTER TO") || l.contains("CHANGE REPLICATION SOURCE TO"))
        .find_map(|line| {
            let file_at = line.find("_LOG_FILE='")? + "_LOG_FILE='".len();
            let file_end = file_at + line[file_at..].find('\'')?;
            let pos_at = line.find("_LOG_POS=")? + "_LOG_POS=".len();
            let digits: String = line[pos_at..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            Some(BinlogPosition {
                file: line[file_at..file_end].to_string(),
                position: digits.parse().ok()?,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_position_comment() {
        let head = "-- MariaDB dump\n--\n-- Position to start replication or point-in-time recovery from\n--\n\n-- CHANGE MASTER TO MASTER_LOG_FILE='swrepl-bin.000002', MASTER_LOG_POS=1234;\n";
        assert_eq!(
            parse_dump_position(head),
            Some(BinlogPosition {
                file: "swrepl-bin.000002".into(),
                position: 1234
            })
        );
        assert_eq!(parse_dump_position("-- nothing here\n"), None);
    }
}
