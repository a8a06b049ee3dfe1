//! `swrepl services …`: the runbook's service tables on this host, and the way back to the
//! standby state (for fail-back).

use std::path::PathBuf;
use std::process::ExitCode;

use swrepl_switchover::{stop_and_wait, Role, StateTable, SwitchoverConfig, WaitPolicy};

use crate::cmd_switchover::{confirm, load_services};
use crate::config;

/// Arguments of `swrepl services`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Expected against actual state of every service for this host's role; exit 0 when all
    /// match, 1 when any deviates (marked `!`), 2 when a service cannot be queried.
    Status(StatusArgs),
    /// Stop the switched services in reverse start order, leaving the always-running ones
    /// (SwSqlServer, SwHttpServer): the standby state, e.g. to make a repaired old Master the
    /// new Slave.
    Standby(StandbyArgs),
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Config file with the [services] table.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The table to compare with: `standby` (the Slave before a switch-over) or `active` (the
    /// Master, or the Slave after one).
    #[arg(long, value_enum, default_value = "standby")]
    pub role: RoleArg,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct StandbyArgs {
    /// Config file with the [services] table.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum RoleArg {
    Standby,
    Active,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Standby => Role::Standby,
            RoleArg::Active => Role::Active,
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Status(args) => status(args).await,
        Command::Standby(args) => standby(args).await,
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (control, set) = load_services(&args.config)?;
    let table = StateTable::query(&control, &set, args.role.into()).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&table_json(&table))?);
    } else {
        println!("Services (expected: {})\n{}", table.role, table.render());
    }
    if let Some(row) = table.query_errors().next() {
        let count = table.query_errors().count();
        anyhow::bail!(
            "cannot query {count} service(s); first: {}",
            row.error.as_deref().unwrap_or("unknown error")
        );
    }
    Ok(if table.matches() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn table_json(table: &StateTable) -> serde_json::Value {
    let rows: Vec<_> = table
        .rows
        .iter()
        .map(|row| {
            serde_json::json!({
                "service": row.service,
                "expected": row.expected,
                "actual": row.actual,
                "deviation": row.deviates(),
                "error": row.error,
            })
        })
        .collect();
    serde_json::json!({ "role": table.role, "matches": table.matches(), "services": rows })
}

async fn standby(args: StandbyArgs) -> anyhow::Result<ExitCode> {
    let (control, set) = load_services(&args.config)?;
    let settings: SwitchoverConfig =
        config::section(&args.config, "switchover")?.unwrap_or_default();
    let wait = WaitPolicy {
        timeout: settings.start_wait()?.timeout,
        ..WaitPolicy::default()
    };
    let before = StateTable::query(&control, &set, Role::Standby).await;
    println!("Before (expected: standby)\n{}", before.render());
    if let Some(row) = before.query_errors().next() {
        anyhow::bail!(
            "cannot query service {}: {}; no service was touched",
            row.service,
            row.error.as_deref().unwrap_or("unknown error")
        );
    }
    if !args.yes {
        confirm("Stop this server's Supportworks services (standby role)?")?;
    }
    for service in set.start_order().iter().rev() {
        stop_and_wait(&control, service, wait).await?;
    }
    let after = StateTable::query(&control, &set, Role::Standby).await;
    println!("After (expected: standby)\n{}", after.render());
    Ok(if after.matches() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
