//! `swrepl db plan|setup|seed|check|heartbeat|promote`: SwSQL/MySQL/MariaDB binlog replication
//! between the Master and the Slave (port 5002). The work is in `swrepl-db`; this file turns
//! flags and the config file's `[db]` table into its calls and its results into output and
//! exit codes (0 healthy, 1 a problem found, 2 could not do it).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use swrepl_db::{
    CheckOptions, CheckReport, ReplicationConfig, SeedOptions, ServerUrl, SetupReport, Target,
};

/// Arguments of `swrepl db`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Config file; its `[db]` table supplies any flag not given (keys as the flag names with
    /// `_`, e.g. `repl_password_file`).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: DbCommand,
}

#[derive(clap::Subcommand, Debug)]
enum DbCommand {
    /// Print what setup would do on both servers; change nothing. Exit 1 when setup would refuse.
    Plan(SetupFlags),
    /// Create the replication account, configure and start the Slave, then check. Idempotent.
    Setup {
        #[command(flatten)]
        flags: SetupFlags,
        /// Only print the plan (same as `swrepl db plan`).
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy the Master's data to the Slave from a consistent online dump and replicate from there.
    Seed {
        #[command(flatten)]
        flags: SetupFlags,
        /// The dump program (default: mariadb-dump or mysqldump on PATH).
        #[arg(long, value_name = "PATH")]
        dump_program: Option<PathBuf>,
        /// The client program that loads the dump (default: mariadb or mysql on PATH).
        #[arg(long, value_name = "PATH")]
        client_program: Option<PathBuf>,
    },
    /// One verdict on the link: exit 0 healthy, 1 unhealthy (one line per reason), 2 cannot check.
    Check(CheckFlags),
    /// Write the heartbeat on the Master every interval until interrupted (the services do this too).
    Heartbeat {
        #[command(flatten)]
        conn: ConnFlags,
        /// Seconds between heartbeats.
        #[arg(long, default_value_t = 1)]
        interval: u64,
    },
    /// Make the Slave a standalone writable server: stop and clear replication, read_only=0.
    Promote {
        #[command(flatten)]
        conn: ConnFlags,
    },
}

/// How to reach both servers.
#[derive(clap::Args, Debug, Default)]
struct ConnFlags {
    /// The Master, mysql://USER[:PASSWORD]@HOST[:PORT] (port 5002 by default).
    #[arg(long, value_name = "URL")]
    master: Option<String>,
    /// The Slave, mysql://USER[:PASSWORD]@HOST[:PORT].
    #[arg(long, value_name = "URL")]
    slave: Option<String>,
    /// File whose first line is the Master login's password (instead of one in the URL).
    #[arg(long, value_name = "FILE")]
    master_password_file: Option<PathBuf>,
    /// File whose first line is the Slave login's password (instead of one in the URL).
    #[arg(long, value_name = "FILE")]
    slave_password_file: Option<PathBuf>,
}

/// What plan, setup and seed need.
#[derive(clap::Args, Debug)]
struct SetupFlags {
    #[command(flatten)]
    conn: ConnFlags,
    /// The replication account's user (never root).
    #[arg(long, value_name = "USER")]
    repl_user: Option<String>,
    /// File whose first line is the replication account's password.
    #[arg(long, value_name = "FILE")]
    repl_password_file: Option<PathBuf>,
    /// The address the Master sees the Slave connect from (default: the Slave URL's host).
    #[arg(long, value_name = "HOST")]
    repl_host: Option<String>,
    /// HOST[:PORT] the Slave uses to reach the Master (default: the Master URL's).
    #[arg(long, value_name = "HOST[:PORT]")]
    master_address: Option<String>,
    /// Delayed replica: apply events this many seconds after the Master (MASTER_DELAY).
    #[arg(long, value_name = "SECONDS")]
    delay: Option<u64>,
    /// The Master's option file (Swsql.ini / my.cnf), edited in place with a backup.
    #[arg(long, value_name = "FILE")]
    master_ini: Option<PathBuf>,
    /// The Slave's option file (Swsql.ini / my.cnf), edited in place with a backup.
    #[arg(long, value_name = "FILE")]
    slave_ini: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct CheckFlags {
    #[command(flatten)]
    conn: ConnFlags,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also compare per-table checksums of Master and Slave (excluding swsystag), in chunks.
    #[arg(long, alias = "checksums")]
    checksum: bool,
    /// Lag (seconds, beyond any configured delay) above which the link is unhealthy.
    #[arg(long, value_name = "SECONDS")]
    max_lag: Option<u64>,
    /// Rows per checksum chunk.
    #[arg(long, value_name = "ROWS")]
    chunk_rows: Option<u64>,
}

/// The `[db]` table of the config file: every flag, by its name with `_`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct DbConfig {
    master: Option<String>,
    slave: Option<String>,
    master_password_file: Option<PathBuf>,
    slave_password_file: Option<PathBuf>,
    repl_user: Option<String>,
    repl_password_file: Option<PathBuf>,
    repl_host: Option<String>,
    master_address: Option<String>,
    delay: Option<u64>,
    master_ini: Option<PathBuf>,
    slave_ini: Option<PathBuf>,
    max_lag: Option<u64>,
    chunk_rows: Option<u64>,
    dump_program: Option<PathBuf>,
    client_program: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(path) => crate::config::section::<DbConfig>(path, "db")?.unwrap_or_default(),
        None => DbConfig::default(),
    };
    match args.command {
        DbCommand::Plan(flags) => plan(&setup_config(&flags, &file)?).await,
        DbCommand::Setup {
            flags,
            dry_run: true,
        } => plan(&setup_config(&flags, &file)?).await,
        DbCommand::Setup {
            flags,
            dry_run: false,
        } => setup(&setup_config(&flags, &file)?).await,
        DbCommand::Seed {
            flags,
            dump_program,
            client_program,
        } => {
            let opts = SeedOptions {
                dump_program: dump_program.or(file.dump_program.clone()),
                client_program: client_program.or(file.client_program.clone()),
            };
            seed(&setup_config(&flags, &file)?, &opts).await
        }
        DbCommand::Check(flags) => check(&flags, &file).await,
        DbCommand::Heartbeat { conn, interval } => {
            let master = master_url(&conn, &file)?;
            eprintln!("writing a heartbeat to {master} every {interval}s; Ctrl-C stops");
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            swrepl_db::run_heartbeat(&master, Duration::from_secs(interval.max(1)), stop).await?;
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Promote { conn } => {
            let slave = slave_url(&conn, &file)?;
            swrepl_db::promote(&slave).await?;
            println!("{slave}: replication stopped and cleared, read_only=0; remove `read-only=1` from its option file before the next restart");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn url_with_password(
    flag: &Option<String>,
    file_value: &Option<String>,
    password_file: Option<&Path>,
    which: &str,
) -> anyhow::Result<ServerUrl> {
    let Some(text) = flag.as_ref().or(file_value.as_ref()) else {
        bail!("--{which} URL is required (or `{which} = \"mysql://…\"` in the [db] table of --config)");
    };
    let url = ServerUrl::parse(text)?;
    Ok(match password_file {
        Some(p) => url.with_password(swrepl_db::read_password_file(p)?),
        None => url,
    })
}

fn master_url(conn: &ConnFlags, file: &DbConfig) -> anyhow::Result<ServerUrl> {
    let pw = conn
        .master_password_file
        .as_deref()
        .or(file.master_password_file.as_deref());
    url_with_password(&conn.master, &file.master, pw, "master")
}

fn slave_url(conn: &ConnFlags, file: &DbConfig) -> anyhow::Result<ServerUrl> {
    let pw = conn
        .slave_password_file
        .as_deref()
        .or(file.slave_password_file.as_deref());
    url_with_password(&conn.slave, &file.slave, pw, "slave")
}

fn setup_config(flags: &SetupFlags, file: &DbConfig) -> anyhow::Result<ReplicationConfig> {
    let master = master_url(&flags.conn, file)?;
    let slave = slave_url(&flags.conn, file)?;
    let repl_user = flags
        .repl_user
        .clone()
        .or(file.repl_user.clone())
        .context("--repl-user is required (or `repl_user` in the [db] table of --config)")?;
    let password_file = flags
        .repl_password_file
        .clone()
        .or(file.repl_password_file.clone())
        .context("--repl-password-file is required (or `repl_password_file` in the [db] table of --config)")?;
    let repl_password = swrepl_db::read_password_file(&password_file)?;
    let master_address = match flags
        .master_address
        .as_ref()
        .or(file.master_address.as_ref())
    {
        None => None,
        Some(text) => Some(parse_host_port(text)?),
    };
    Ok(ReplicationConfig {
        master,
        slave,
        repl_user,
        repl_password,
        repl_host: flags.repl_host.clone().or(file.repl_host.clone()),
        master_address,
        delay: flags.delay.or(file.delay),
        master_ini: flags.master_ini.clone().or(file.master_ini.clone()),
        slave_ini: flags.slave_ini.clone().or(file.slave_ini.clone()),
    })
}

fn parse_host_port(text: &str) -> anyhow::Result<(String, u16)> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.starts_with('[') => {
            let port = port
                .parse()
                .with_context(|| format!("--master-address {text:?}: the port is not a number"))?;
            Ok((
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port,
            ))
        }
        _ => Ok((text.to_string(), swrepl_db::DEFAULT_PORT)),
    }
}

async fn plan(cfg: &ReplicationConfig) -> anyhow::Result<ExitCode> {
    let (plan, survey) = swrepl_db::plan(cfg).await?;
    print!("{}", plan.render(cfg, &survey));
    Ok(if plan.blockers.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn setup(cfg: &ReplicationConfig) -> anyhow::Result<ExitCode> {
    let report = swrepl_db::setup(cfg).await?;
    print_setup_report(&report);
    println!("setup done; checking the link:");
    run_check(&cfg.master, &cfg.slave, &CheckOptions::default(), false).await
}

async fn seed(cfg: &ReplicationConfig, opts: &SeedOptions) -> anyhow::Result<ExitCode> {
    let bar = seed_bar();
    let mut on_progress = |p: swrepl_db::SeedProgress| {
        if p.estimate > 0 && bar.length() != Some(p.estimate.max(p.bytes)) {
            bar.set_length(p.estimate.max(p.bytes));
        }
        bar.set_position(p.bytes);
    };
    let result = swrepl_db::seed(cfg, opts, &mut on_progress).await;
    bar.finish_and_clear();
    let report = result?;
    println!(
        "seeded {} database(s) ({}) with {} bytes of dump{}",
        report.databases.len(),
        report.databases.join(", "),
        report.bytes,
        if report.locked_tables {
            "; the Master's tables were locked during the dump (non-transactional tables)"
        } else {
            ""
        }
    );
    print_setup_report(&report.setup);
    run_check(&cfg.master, &cfg.slave, &CheckOptions::default(), false).await
}

fn seed_bar() -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "seeding {bar:40} {bytes}/{total_bytes} (estimate) {bytes_per_sec} {elapsed}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn print_setup_report(report: &SetupReport) {
    if let Some(p) = &report.position {
        println!("Slave replicates from {}:{}", p.file, p.position);
    }
    for (path, edit) in &report.ini_edits {
        match &edit.backup {
            Some(backup) => println!(
                "{}: set {} (backup: {})",
                path.display(),
                edit.changed.join(", "),
                backup.display()
            ),
            None => println!("{}: already up to date", path.display()),
        }
    }
    for (target, lines) in &report.ini_to_add {
        let who = match target {
            Target::Master => "Master",
            Target::Slave => "Slave",
        };
        println!(
            "ADD to the {who}'s option file under [mysqld] (or pass --{}-ini to let swrepl do it):",
            who.to_ascii_lowercase()
        );
        for line in lines {
            if line.key.contains("password") {
                println!("  {}=<the replication password>", line.key);
            } else {
                println!("  {}", line.render());
            }
        }
    }
    for text in &report.manual {
        println!("YOU: {text}");
    }
}

async fn check(flags: &CheckFlags, file: &DbConfig) -> anyhow::Result<ExitCode> {
    let master = master_url(&flags.conn, file)?;
    let slave = slave_url(&flags.conn, file)?;
    let defaults = CheckOptions::default();
    let opts = CheckOptions {
        max_lag: flags
            .max_lag
            .or(file.max_lag)
            .map(Duration::from_secs)
            .unwrap_or(defaults.max_lag),
        checksums: flags.checksum,
        chunk_rows: flags
            .chunk_rows
            .or(file.chunk_rows)
            .unwrap_or(defaults.chunk_rows),
        ..defaults
    };
    run_check(&master, &slave, &opts, flags.json).await
}

async fn run_check(
    master: &ServerUrl,
    slave: &ServerUrl,
    opts: &CheckOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let report = swrepl_db::check(master, slave, opts).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_check(&report);
    }
    Ok(if report.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_check(report: &CheckReport) {
    for line in report.summary_lines() {
        println!("{line}");
    }
    if report.healthy() {
        println!("healthy");
    }
    for problem in &report.problems {
        println!("PROBLEM: {problem}");
    }
}

/// What the receiver's periodic database check last found, kept in
/// `<root>/.swrepl/db-check.json` for `swrepl status`.
#[derive(serde::Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DbCheckRecord {
    pub checked_unix_ms: u64,
    pub healthy: bool,
    /// One line per problem (or the reason the check could not run).
    pub problems: Vec<String>,
    pub true_lag_ms: Option<u64>,
}

/// How often the receiver checks database replication.
const SERVICE_CHECK_INTERVAL: Duration = Duration::from_secs(30);

fn db_check_path(root: &Path) -> PathBuf {
    root.join(swrepl_tree::STATE_DIR_NAME).join("db-check.json")
}

/// The last periodic check recorded under `root`, if any.
pub fn read_db_check(root: &Path) -> Option<DbCheckRecord> {
    let text = std::fs::read_to_string(db_check_path(root)).ok()?;
    serde_json::from_str(&text).ok()
}

fn service_db_config(config: Option<&Path>) -> anyhow::Result<Option<DbConfig>> {
    match config {
        Some(path) => crate::config::section::<DbConfig>(path, "db"),
        None => Ok(None),
    }
}

/// On the Master: with a `[db]` table naming the Master, `swrepl send` writes the replication
/// heartbeat every second for as long as it runs, so `check` measures true lag.
pub fn spawn_service_heartbeat(config: Option<&Path>) -> anyhow::Result<()> {
    let Some(file) = service_db_config(config)? else {
        return Ok(());
    };
    if file.master.is_none() {
        return Ok(());
    }
    let master = master_url(&ConnFlags::default(), &file)?;
    tracing::info!(%master, "writing the database replication heartbeat every second");
    tokio::spawn(async move {
        if let Err(e) =
            swrepl_db::run_heartbeat(&master, Duration::from_secs(1), std::future::pending()).await
        {
            tracing::error!("database heartbeat stopped: {e}");
        }
    });
    Ok(())
}

/// On the Slave: with a `[db]` table naming both servers, `swrepl receive` runs `db check` every
/// 30 s and records the verdict for `swrepl status`; an unhealthy result is logged as a warning.
pub fn spawn_service_check(config: Option<&Path>, root: &Path) -> anyhow::Result<()> {
    let Some(file) = service_db_config(config)? else {
        return Ok(());
    };
    if file.master.is_none() || file.slave.is_none() {
        return Ok(());
    }
    let master = master_url(&ConnFlags::default(), &file)?;
    let slave = slave_url(&ConnFlags::default(), &file)?;
    let defaults = CheckOptions::default();
    let options = CheckOptions {
        max_lag: file
            .max_lag
            .map(Duration::from_secs)
            .unwrap_or(defaults.max_lag),
        ..defaults
    };
    let path = db_check_path(root);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(SERVICE_CHECK_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let record = match swrepl_db::check(&master, &slave, &options).await {
                Ok(report) => DbCheckRecord {
                    checked_unix_ms: unix_ms(),
                    healthy: report.healthy(),
                    problems: report.problems.clone(),
                    true_lag_ms: report.true_lag_ms,
                },
                Err(e) => DbCheckRecord {
                    checked_unix_ms: unix_ms(),
                    healthy: false,
                    problems: vec![format!("could not check: {e}")],
                    true_lag_ms: None,
                },
            };
            for problem in &record.problems {
                tracing::warn!("database replication: {problem}");
            }
            if let Err(e) = write_record(&path, &record) {
                tracing::warn!(path = %path.display(), "cannot record the database check: {e}");
            }
        }
    });
    Ok(())
}

fn write_record(path: &Path, record: &DbCheckRecord) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
