//! The `swrepl` binary: parse the command line, dispatch, and turn errors into one line and an
//! exit code. The work lives in the library crates; this crate owns only the operator's surface.
//!
//! Exit codes: 0 success; 1 a check found a difference (verify, status, db check, registry diff);
//! 2 an error, printed as one line on stderr saying what happened and what to do.

// The doc comments of the command-line types are clap's `--help` texts, written for the
// operator: `[services]` names a TOML table, `HOST[:PORT]` and `swrepl-<role>` a syntax; they
// are neither intra-doc links nor HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod cmd_db;
mod cmd_failback;
mod cmd_files;
mod cmd_registry;
mod cmd_service;
mod cmd_services;
mod cmd_status;
mod cmd_switchover;
mod config;
mod demo;
mod metrics;
mod monitor;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Replication engine for a warm-standby Hornbill Supportworks ESP 7.x server.
#[derive(Parser, Debug)]
#[command(name = "swrepl", version, about, propagate_version = true)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `swrepl_sync=debug`.
    #[arg(long, global = true, env = "SWREPL_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create this machine's identity (key + self-signed certificate); prints its fingerprint.
    Init(cmd_files::InitArgs),
    /// Print the fingerprint of an identity.
    Fingerprint(cmd_files::FingerprintArgs),
    /// The Master's side: replicate a tree to a receiver, then keep watching it.
    Send(cmd_files::SendArgs),
    /// The Slave's side: accept a sender and apply its changes atomically, archiving what they replace.
    Receive(cmd_files::ReceiveArgs),
    /// Compare two trees by hash (or a local tree with a running receiver's).
    Verify(cmd_files::VerifyArgs),
    /// The whole pipeline on loopback in a temporary directory, for a first look.
    Demo(demo::DemoArgs),
    /// SwSQL/MySQL binlog replication on port 5002: plan, setup, seed, check.
    Db(cmd_db::Args),
    /// The runbook's service tables: expected against actual.
    Services(cmd_services::Args),
    /// The HttpAliases registry keys as regedit .reg files: export, diff, apply.
    Registry(cmd_registry::Args),
    /// Promote this Slave: pre-checks, database promotion, fencing, services in the runbook's order.
    Switchover(cmd_switchover::Args),
    /// The way back after a switch-over: the plan that makes the old Master the new Slave.
    Failback(cmd_failback::Args),
    /// One view of role, replication link, files, database and services; exit 1 if anything
    /// needs attention.
    Status(cmd_status::Args),
    /// Install, remove or run swrepl as a Windows service (send on the Master, receive on the Slave).
    Service(cmd_service::Args),
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates on stdout; its logs would only interleave, unless asked for.
    let quiet_demo = matches!(cli.command, Command::Demo(_))
        && std::env::var_os("SWREPL_LOG").is_none()
        && cli.log == "info";
    // A service logs to a file beside its config: it sets up its own logging.
    let log_filter = cli.log.clone();
    if !matches!(cli.command, Command::Service(_)) {
        init_logging(if quiet_demo { "warn" } else { &cli.log });
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Init(args) => cmd_files::init(args),
            Command::Fingerprint(args) => cmd_files::fingerprint(args),
            Command::Send(args) => cmd_files::send(args).await,
            Command::Receive(args) => cmd_files::receive(args).await,
            Command::Verify(args) => cmd_files::verify(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Db(args) => cmd_db::run(args).await,
            Command::Services(args) => cmd_services::run(args).await,
            Command::Registry(args) => cmd_registry::run(args).await,
            Command::Switchover(args) => cmd_switchover::run(args).await,
            Command::Failback(args) => cmd_failback::run(args),
            Command::Status(args) => cmd_status::run(args).await,
            Command::Service(args) => cmd_service::run(args, &log_filter).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
