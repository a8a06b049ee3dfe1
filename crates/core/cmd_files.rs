//! File replication commands: `init`, `fingerprint`, `send`, `receive`, `verify`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use swrepl_net::{Fingerprint, Identity};
use swrepl_sync::{ReceiverOptions, SenderOptions};
use swrepl_tree::Excludes;

use crate::config;

/// The receiver's default port (SwSQL owns 5002).
pub const DEFAULT_PORT: u16 = 7171;

/// `swrepl init`: create this machine's identity.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Directory for the key and certificate (created; the key is readable by its owner only).
    #[arg(long)]
    pub dir: PathBuf,
    /// Replace an existing identity (peers that pinned the old fingerprint must be updated).
    #[arg(long)]
    pub force: bool,
}

/// `swrepl fingerprint`: print an identity's fingerprint.
#[derive(clap::Args, Debug)]
pub struct FingerprintArgs {
    /// Directory holding the identity created by `swrepl init`.
    #[arg(long)]
    pub dir: PathBuf,
}

/// Flags shared by every command that talks to a peer.
#[derive(clap::Args, Debug, Default)]
pub struct PeerArgs {
    /// This machine's identity directory (from `swrepl init`).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// The peer's certificate fingerprint, `sha256:<hex>` (repeatable).
    #[arg(long = "trust", value_name = "FINGERPRINT")]
    pub trust: Vec<String>,
}

/// Flags that choose what part of the tree is replicated.
#[derive(clap::Args, Debug, Default)]
pub struct ExcludeArgs {
    /// Exclude paths matching this glob (relative to the root, `/` separators, any case).
    #[arg(long = "exclude", value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Do not exclude `Core Services/SwSqlServer/data` (replicate it only if the database is stopped!).
    #[arg(long)]
    pub no_default_excludes: bool,
}

/// `swrepl send`: the Master's side.
#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// TOML file with a `[send]` table; flags given here override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The tree to replicate, e.g. `C:\Program Files\Hornbill`.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// The receiver, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: Option<String>,
    #[command(flatten)]
    pub peer: PeerArgs,
    #[command(flatten)]
    pub excludes: ExcludeArgs,
    /// One full pass; exit 0 once the receiver has applied and made durable every change.
    #[arg(long)]
    pub once: bool,
    /// Seconds to keep trying to reach the receiver before giving up (with --once).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Confirm that a pass may delete more than the mass-delete threshold on the Slave.
    #[arg(long)]
    pub allow_mass_delete: bool,
    /// Share of the tree (percent) above which one pass's deletes are held for confirmation.
    #[arg(long, value_name = "PERCENT")]
    pub mass_delete_threshold: Option<f64>,
    /// Where the sender keeps its index (default `<root>/.swrepl`).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Seconds between safety-net rescans while watching.
    #[arg(long, value_name = "SECONDS")]
    pub rescan_interval: Option<u64>,
    /// Seconds between full passes while watching.
    #[arg(long, value_name = "SECONDS")]
    pub full_pass_interval: Option<u64>,
}

/// `swrepl receive`: the Slave's side.
#[derive(clap::Args, Debug)]
pub struct ReceiveArgs {
    /// TOML file with a `[receive]` table; flags given here override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The Slave's tree, written only by swrepl.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Address to listen on, HOST:PORT (default 0.0.0.0:7171).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    #[command(flatten)]
    pub peer: PeerArgs,
    #[command(flatten)]
    pub excludes: ExcludeArgs,
    /// Where replaced and deleted files are kept (default `<root>/.swrepl/archive`).
    #[arg(long)]
    pub archive: Option<PathBuf>,
    /// Days to keep archived files (0 keeps them forever).
    #[arg(long, value_name = "DAYS")]
    pub archive_days: Option<u64>,
}

/// `swrepl verify`: compare two trees by hash.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// First tree (the Master's), or use --root.
    pub a: Option<PathBuf>,
    /// Second tree (the Slave's); omit with --connect.
    pub b: Option<PathBuf>,
    /// The local tree when comparing with a running receiver (--connect).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// A running receiver to compare with, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: Option<String>,
    #[command(flatten)]
    pub peer: PeerArgs,
    #[command(flatten)]
    pub excludes: ExcludeArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The `[send]` table of the config file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct SendConfig {
    root: Option<PathBuf>,
    connect: Option<String>,
    identity: Option<PathBuf>,
    #[serde(default)]
    trust: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    no_default_excludes: Option<bool>,
    timeout: Option<u64>,
    mass_delete_threshold: Option<f64>,
    state: Option<PathBuf>,
    rescan_interval: Option<u64>,
    full_pass_interval: Option<u64>,
    /// Read by `crate::monitor::service_probe`; listed so the key is accepted.
    #[allow(dead_code)]
    monitor_service: Option<String>,
}

/// The `[receive]` table of the config file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ReceiveConfig {
    root: Option<PathBuf>,
    listen: Option<String>,
    identity: Option<PathBuf>,
    #[serde(default)]
    trust: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    no_default_excludes: Option<bool>,
    archive: Option<PathBuf>,
    archive_days: Option<u64>,
}

fn load_section<T: serde::de::DeserializeOwned + Default>(
    path: Option<&Path>,
    name: &str,
) -> anyhow::Result<T> {
    match path {
        Some(path) => Ok(config::section(path, name)?.unwrap_or_default()),
        None => Ok(T::default()),
    }
}

fn required<T>(value: Option<T>, flag: &str) -> anyhow::Result<T> {
    value.with_context(|| format!("{flag} is required (on the command line or in the config file)"))
}

fn load_identity(dir: Option<PathBuf>) -> anyhow::Result<Identity> {
    let dir = required(dir, "--identity")?;
    Ok(Identity::load(&dir)?)
}

fn parse_trust(flags: Vec<String>, config: Vec<String>) -> anyhow::Result<Vec<Fingerprint>> {
    let all = if flags.is_empty() { config } else { flags };
    if all.is_empty() {
        bail!("no peer is trusted: pass --trust sha256:<fingerprint of the peer> (printed by `swrepl init` on the peer)");
    }
    all.iter()
        .map(|s| s.parse::<Fingerprint>().map_err(anyhow::Error::from))
        .collect()
}

fn excludes(
    args: ExcludeArgs,
    config_extra: Vec<String>,
    config_no_defaults: Option<bool>,
) -> anyhow::Result<Excludes> {
    let mut globs = config_extra;
    globs.extend(args.exclude);
    let defaults = !(args.no_default_excludes || config_no_defaults.unwrap_or(false));
    Ok(Excludes::new(&globs, defaults)?)
}

fn threshold_permille(percent: f64) -> anyhow::Result<u16> {
    if !(0.0..=100.0).contains(&percent) {
        bail!("--mass-delete-threshold must be a percentage between 0 and 100, not {percent}");
    }
    Ok((percent * 10.0).round() as u16)
}

pub fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let fingerprint = swrepl_net::init_identity(&args.dir, args.force)?;
    println!("identity created in {}", args.dir.display());
    println!("give this fingerprint to the peer (its --trust):");
    println!("{fingerprint}");
    Ok(ExitCode::SUCCESS)
}

pub fn fingerprint(args: FingerprintArgs) -> anyhow::Result<ExitCode> {
    let identity = Identity::load(&args.dir)?;
    println!("{}", identity.fingerprint());
    Ok(ExitCode::SUCCESS)
}

pub fn sender_options(args: SendArgs) -> anyhow::Result<SenderOptions> {
    let cfg: SendConfig = load_section(args.config.as_deref(), "send")?;
    let root = required(args.root.or(cfg.root), "--root")?;
    let connect = required(args.connect.or(cfg.connect), "--connect")?;
    let identity = load_identity(args.peer.identity.or(cfg.identity))?;
    let trusted = parse_trust(args.peer.trust, cfg.trust)?;
    let excludes = excludes(args.excludes, cfg.exclude, cfg.no_default_excludes)?;
    let threshold = args
        .mass_delete_threshold
        .or(cfg.mass_delete_threshold)
        .unwrap_or(20.0);
    Ok(SenderOptions {
        root,
        state_dir: args.state.or(cfg.state),
        connect,
        identity,
        trusted,
        excludes,
        once: args.once,
        connect_timeout: Duration::from_secs(args.timeout.or(cfg.timeout).unwrap_or(30).max(1)),
        allow_mass_delete: args.allow_mass_delete,
        mass_delete_permille: threshold_permille(threshold)?,
        rescan_interval: Duration::from_secs(
            args.rescan_interval
                .or(cfg.rescan_interval)
                .unwrap_or(60)
                .max(1),
        ),
        full_pass_interval: Duration::from_secs(
            args.full_pass_interval
                .or(cfg.full_pass_interval)
                .unwrap_or(3600)
                .max(1),
        ),
        service_probe: crate::monitor::service_probe(args.config.as_deref())?,
    })
}

pub async fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    let options = sender_options(args)?;
    let once = options.once;
    let summary = swrepl_sync::run_sender(options, shutdown_signal()).await?;
    if !once {
        return Ok(ExitCode::SUCCESS);
    }
    println!("{summary}");
    for (path, reason) in &summary.refused {
        eprintln!("refused by the receiver: {path}: {reason}");
    }
    for problem in &summary.unreadable {
        eprintln!(
            "not replicated (could not be read cleanly): {}: {}",
            problem.path, problem.reason
        );
    }
    if summary.held_deletes > 0 {
        eprintln!(
            "mass-delete guard: {} deletes were held on the Slave; if the Master's tree really shrank, rerun with --allow-mass-delete",
            summary.held_deletes
        );
    }
    Ok(if summary.is_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn receiver_options(args: ReceiveArgs) -> anyhow::Result<ReceiverOptions> {
    let cfg: ReceiveConfig = load_section(args.config.as_deref(), "receive")?;
    let root = required(args.root.or(cfg.root), "--root")?;
    let identity = load_identity(args.peer.identity.or(cfg.identity))?;
    let trusted = parse_trust(args.peer.trust, cfg.trust)?;
    let excludes = excludes(args.excludes, cfg.exclude, cfg.no_default_excludes)?;
    let days = args.archive_days.or(cfg.archive_days).unwrap_or(30);
    Ok(ReceiverOptions {
        root,
        listen: args
            .listen
            .or(cfg.listen)
            .unwrap_or_else(|| format!("0.0.0.0:{DEFAULT_PORT}")),
        identity,
        trusted,
        archive: args.archive.or(cfg.archive),
        archive_retention: (days > 0).then(|| Duration::from_secs(days * 86_400)),
        excludes,
    })
}

pub async fn receive(args: ReceiveArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.clone();
    let options = receiver_options(args)?;
    let guard = crate::monitor::ReceiverGuard::start(config.as_deref(), &options.root)?;
    swrepl_sync::run_receiver(options, None, guard.until_shutdown(shutdown_signal())).await?;
    guard.finish()
}

const VERIFY_USAGE: &str = "usage: `swrepl verify A B` for two local trees, or \
    `swrepl verify --root A --connect HOST:PORT --identity DIR --trust FP` for a running receiver";

pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let excludes = excludes(args.excludes, Vec::new(), None)?;
    let report = match (args.a.or(args.root), args.b, args.connect) {
        (Some(a), Some(b), None) => {
            let progress = crate::progress::bytes_bar("hashing");
            let (pa, pb, ex) = (a.clone(), b.clone(), excludes.clone());
            let bar = progress.clone();
            let summary = tokio::task::spawn_blocking(move || {
                swrepl_tree::verify_trees(&pa, &pb, &ex, &|n| bar.inc(n))
            })
            .await??;
            progress.finish_and_clear();
            summary
        }
        (Some(a), None, Some(addr)) => {
            let identity = load_identity(args.peer.identity)?;
            let trusted = parse_trust(args.peer.trust, Vec::new())?;
            let remote =
                swrepl_sync::remote_listing(&addr, &identity, &trusted, Duration::from_secs(30))
                    .await?;
            let (pa, ex) = (a.clone(), excludes.clone());
            let local =
                tokio::task::spawn_blocking(move || swrepl_tree::list_tree(&pa, &ex, &|_| {}))
                    .await??;
            let differences = swrepl_tree::compare(&local.entries, &remote);
            let files = local
                .entries
                .iter()
                .filter(|e| e.kind == swrepl_tree::EntryKind::File);
            swrepl_tree::VerifySummary {
                files: files.clone().count() as u64,
                bytes: files.map(|e| e.size).sum(),
                differences,
                problems: local.problems,
            }
        }
        _ => bail!(VERIFY_USAGE),
    };
    for problem in &report.problems {
        eprintln!("not verified: {}: {}", problem.path, problem.reason);
    }
    if args.json {
        let differences: Vec<String> = report.differences.iter().map(|d| d.to_string()).collect();
        let json = serde_json::json!({
            "identical": differences.is_empty(),
            "files": report.files,
            "bytes": report.bytes,
            "differences": differences,
            "unverified": report.problems.iter().map(|p| format!("{}: {}", p.path, p.reason)).collect::<Vec<_>>(),
        });
        println!("{json}");
    } else if report.differences.is_empty() && report.problems.is_empty() {
        println!("identical: {} files, {} bytes", report.files, report.bytes);
    } else {
        for difference in &report.differences {
            println!("{difference}");
        }
        eprintln!("{} differences", report.differences.len());
    }
    Ok(
        match (report.differences.is_empty(), report.problems.is_empty()) {
            (false, _) => ExitCode::from(1),
            (true, false) => ExitCode::from(2),
            (true, true) => ExitCode::SUCCESS,
        },
    )
}

/// Resolves on Ctrl-C (and SIGTERM on Unix), so services stop cleanly.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down");
}
