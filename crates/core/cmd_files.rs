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

/// Flags that choose the registry keys replicated with the files.
#[derive(clap::Args, Debug, Default)]
pub struct RegistryArgs {
    /// Use the registry keys kept in this regedit .reg file instead of the live registry (the
    /// lab backend). Off Windows, registry keys are replicated (and verified) only with this.
    #[arg(long, value_name = "FILE.reg")]
    pub registry_file: Option<PathBuf>,
    /// A replicated registry key (repeat for several; `HKLM\…` is accepted). Default: the two
    /// Supportworks HttpAliases keys.
    #[arg(long = "registry-key", value_name = "KEY")]
    pub registry_keys: Vec<String>,
    /// Replicate no registry keys (on Windows the live registry is replicated by default).
    #[arg(long, conflicts_with = "registry_file")]
    pub no_registry: bool,
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
    /// Serve Prometheus metrics on HOST:PORT (plain HTTP; bind a management address).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
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
    /// Serve Prometheus metrics on HOST:PORT (plain HTTP; bind a management address).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `swrepl verify`: compare two trees by hash.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The Master's config file: its `[send]` table gives --root, --connect, --identity,
    /// --trust, the excludes and the registry settings (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
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
    /// Also compare the registry keys of two .reg files, the Master's then the Slave's (local
    /// mode; alone, without trees, compares only the registry).
    #[arg(long = "registry", num_args = 2, value_names = ["MASTER.reg", "SLAVE.reg"])]
    pub registry_pair: Vec<PathBuf>,
    /// With --connect: the local keys to compare with the receiver's (--registry-file, or the
    /// live registry on Windows) and which keys (--registry-key).
    #[command(flatten)]
    pub registry: RegistryArgs,
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
    registry_file: Option<PathBuf>,
    #[serde(default)]
    registry_keys: Vec<String>,
    no_registry: Option<bool>,
    /// Read by `crate::monitor::service_probe`; listed so the key is accepted.
    #[allow(dead_code)]
    monitor_service: Option<String>,
    metrics: Option<String>,
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
    registry_file: Option<PathBuf>,
    #[serde(default)]
    registry_keys: Vec<String>,
    no_registry: Option<bool>,
    metrics: Option<String>,
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

/// The registry settings of a config file table.
#[derive(Default)]
struct RegistryConfig {
    file: Option<PathBuf>,
    keys: Vec<String>,
    off: Option<bool>,
}

/// Which side a registry source is for: a receiver's `.reg` file is created when missing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Sender,
    Receiver,
}

/// The configured registry keys (flags, else config file, else the HttpAliases keys).
fn registry_scope(flags: &[String], config: &[String]) -> anyhow::Result<swrepl_registry::Scope> {
    let texts: Vec<&str> = match (flags.is_empty(), config.is_empty()) {
        (false, _) => flags.iter().map(String::as_str).collect(),
        (true, false) => config.iter().map(String::as_str).collect(),
        (true, true) => swrepl_registry::DEFAULT_KEYS.to_vec(),
    };
    let roots = texts
        .into_iter()
        .map(|k| {
            swrepl_registry::KeyPath::parse(k).with_context(|| format!("--registry-key {k:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(swrepl_registry::Scope::new(roots))
}

/// Where the replicated registry keys live: `--registry-file`, else the live registry on
/// Windows, else nowhere (registry replication off). The source is read once here so that a
/// missing or malformed `.reg` file stops the service at start with its line number.
fn registry_source(
    args: RegistryArgs,
    config: RegistryConfig,
    side: Side,
) -> anyhow::Result<Option<swrepl_sync::RegistrySource>> {
    let file = args.registry_file.or(config.file);
    if args.no_registry || (file.is_none() && config.off.unwrap_or(false)) {
        return Ok(None);
    }
    let scope = registry_scope(&args.registry_keys, &config.keys)?;
    let source = match file {
        Some(path) => swrepl_sync::RegistrySource::reg_file(path, scope, side == Side::Receiver),
        None => match live_registry(scope) {
            Some(source) => source,
            None => return Ok(None),
        },
    };
    source.snapshot().with_context(|| {
        format!(
            "cannot read the replicated registry keys from {}",
            source.describe()
        )
    })?;
    Ok(Some(source))
}

#[cfg(windows)]
fn live_registry(scope: swrepl_registry::Scope) -> Option<swrepl_sync::RegistrySource> {
    Some(swrepl_sync::RegistrySource::live(scope))
}

#[cfg(not(windows))]
fn live_registry(_scope: swrepl_registry::Scope) -> Option<swrepl_sync::RegistrySource> {
    None
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
        registry: registry_source(
            args.registry,
            RegistryConfig {
                file: cfg.registry_file,
                keys: cfg.registry_keys,
                off: cfg.no_registry,
            },
            Side::Sender,
        )?,
    })
}

pub async fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    send_until(args, shutdown_signal()).await
}

/// `send`, stopping when `shutdown` resolves (the Windows service's Stop) instead of on Ctrl-C.
pub async fn send_until(
    args: SendArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let config = args.config.clone();
    let metrics = match &args.metrics {
        Some(addr) => Some(addr.clone()),
        None => load_section::<SendConfig>(config.as_deref(), "send")?.metrics,
    };
    let options = sender_options(args)?;
    let once = options.once;
    if !once {
        crate::cmd_db::spawn_service_heartbeat(config.as_deref())?;
        if let Some(addr) = metrics {
            crate::metrics::serve(&addr, crate::metrics::Source::Sender).await?;
        }
    }
    let summary = swrepl_sync::run_sender(options, shutdown).await?;
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
    if let Some(problem) = &summary.registry_problem {
        eprintln!("registry keys not replicated: {problem}");
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
        registry: registry_source(
            args.registry,
            RegistryConfig {
                file: cfg.registry_file,
                keys: cfg.registry_keys,
                off: cfg.no_registry,
            },
            Side::Receiver,
        )?,
    })
}

pub async fn receive(args: ReceiveArgs) -> anyhow::Result<ExitCode> {
    receive_until(args, shutdown_signal()).await
}

/// `receive`, stopping when `shutdown` resolves (the Windows service's Stop) instead of on Ctrl-C.
pub async fn receive_until(
    args: ReceiveArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let config = args.config.clone();
    let metrics = match &args.metrics {
        Some(addr) => Some(addr.clone()),
        None => load_section::<ReceiveConfig>(config.as_deref(), "receive")?.metrics,
    };
    let options = receiver_options(args)?;
    let guard = crate::monitor::ReceiverGuard::start(config.as_deref(), &options.root)?;
    crate::cmd_db::spawn_service_check(config.as_deref(), &options.root)?;
    if let Some(addr) = metrics {
        let source = crate::metrics::Source::Receiver {
            root: options.root.clone(),
        };
        crate::metrics::serve(&addr, source).await?;
    }
    swrepl_sync::run_receiver(options, None, guard.until_shutdown(shutdown)).await?;
    guard.finish()
}

const VERIFY_USAGE: &str = "usage: `swrepl verify A B` for two local trees, or \
    `swrepl verify --root A --connect HOST:PORT --identity DIR --trust FP` for a running receiver \
    (add `--registry MASTER.reg SLAVE.reg`, or `--registry-file F.reg` with --connect, to compare \
    the registry keys too)";

/// Fills what the flags leave open from the Master's `[send]` table (never for two local trees).
fn verify_with_config(mut args: VerifyArgs) -> anyhow::Result<(VerifyArgs, Excludes)> {
    let config: SendConfig = load_section(args.config.as_deref(), "send")?;
    let excludes = excludes(
        std::mem::take(&mut args.excludes),
        config.exclude,
        config.no_default_excludes,
    )?;
    if args.config.is_none() || args.b.is_some() {
        return Ok((args, excludes));
    }
    if args.a.is_none() {
        args.root = args.root.or(config.root);
    }
    args.connect = args.connect.or(config.connect);
    args.peer.identity = args.peer.identity.or(config.identity);
    if args.peer.trust.is_empty() {
        args.peer.trust = config.trust;
    }
    let registry = &mut args.registry;
    if registry.registry_file.is_none() && !registry.no_registry {
        registry.registry_file = config.registry_file;
        registry.no_registry =
            config.no_registry.unwrap_or(false) && registry.registry_file.is_none();
    }
    if registry.registry_keys.is_empty() {
        registry.registry_keys = config.registry_keys;
    }
    Ok((args, excludes))
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let (args, excludes) = verify_with_config(args)?;
    let registry = verify_registry(
        &args.registry_pair,
        &args.registry,
        args.connect.as_deref(),
        &args.peer,
    )
    .await?;
    let trees_given = args.a.is_some() || args.b.is_some() || args.root.is_some();
    if let (Some(verdict), false) = (&registry, trees_given) {
        return Ok(verdict.print_alone(args.json));
    }
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
            "identical": differences.is_empty() && registry.as_ref().is_none_or(RegistryVerdict::identical),
            "registry": registry.as_ref().map(RegistryVerdict::json),
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
    if let (Some(verdict), false) = (&registry, args.json) {
        verdict.print();
    }
    let registry_differs = registry.as_ref().is_some_and(|r| !r.differences.is_empty());
    let registry_unverified = registry.as_ref().is_some_and(|r| r.problem.is_some());
    Ok(
        match (
            report.differences.is_empty() && !registry_differs,
            report.problems.is_empty() && !registry_unverified,
        ) {
            (false, _) => ExitCode::from(1),
            (true, false) => ExitCode::from(2),
            (true, true) => ExitCode::SUCCESS,
        },
    )
}

/// What comparing the registry keys found.
struct RegistryVerdict {
    /// One line per difference: the change that would bring the Slave in line with the Master.
    differences: Vec<String>,
    /// Keys compared (the Master's).
    keys: usize,
    /// Why the registry could not be compared, when it could not.
    problem: Option<String>,
}

impl RegistryVerdict {
    fn compare(master: &swrepl_registry::Snapshot, slave: &swrepl_registry::Snapshot) -> Self {
        let changes = swrepl_registry::diff(slave, master);
        RegistryVerdict {
            differences: changes.describe(slave),
            keys: master.key_count(),
            problem: None,
        }
    }

    fn identical(&self) -> bool {
        self.differences.is_empty() && self.problem.is_none()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "identical": self.identical(),
            "keys": self.keys,
            "differences": self.differences,
            "unverified": self.problem,
        })
    }

    fn print(&self) {
        if let Some(problem) = &self.problem {
            eprintln!("registry not verified: {problem}");
        } else if self.differences.is_empty() {
            println!("registry identical: {} keys", self.keys);
        } else {
            for line in &self.differences {
                println!("registry: {line}");
            }
            eprintln!("{} registry differences", self.differences.len());
        }
    }

    /// Prints the verdict of a registry-only verify and returns its exit code.
    fn print_alone(&self, json: bool) -> ExitCode {
        if json {
            println!("{}", self.json());
        } else {
            self.print();
        }
        match (self.differences.is_empty(), self.problem.is_none()) {
            (false, _) => ExitCode::from(1),
            (true, false) => ExitCode::from(2),
            (true, true) => ExitCode::SUCCESS,
        }
    }
}

fn read_reg_snapshot(
    path: &Path,
    scope: &swrepl_registry::Scope,
) -> anyhow::Result<swrepl_registry::Snapshot> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = swrepl_registry::RegFile::parse(&bytes)
        .with_context(|| format!("{} is not a valid .reg file", path.display()))?;
    Ok(file.to_tree().snapshot(scope.roots()))
}

/// The registry part of `verify`: two .reg files (`--registry M.reg S.reg`), or with
/// `--connect` the local keys against the receiver's; `None` when there is nothing to compare.
async fn verify_registry(
    pair: &[PathBuf],
    flags: &RegistryArgs,
    connect: Option<&str>,
    peer: &PeerArgs,
) -> anyhow::Result<Option<RegistryVerdict>> {
    let scope = registry_scope(&flags.registry_keys, &[])?;
    match (pair, connect) {
        ([master, slave], None) => {
            let master = read_reg_snapshot(master, &scope)?;
            let slave = read_reg_snapshot(slave, &scope)?;
            Ok(Some(RegistryVerdict::compare(&master, &slave)))
        }
        ([], Some(addr)) => {
            let local_flags = RegistryArgs {
                registry_file: flags.registry_file.clone(),
                registry_keys: flags.registry_keys.clone(),
                no_registry: flags.no_registry,
            };
            let Some(source) = registry_source(local_flags, RegistryConfig::default(), Side::Sender)?
            else {
                return Ok(None);
            };
            let master = tokio::task::spawn_blocking(move || source.snapshot()).await??;
            let identity = load_identity(peer.identity.clone())?;
            let trusted = parse_trust(peer.trust.clone(), Vec::new())?;
            let remote =
                swrepl_sync::remote_registry(addr, &identity, &trusted, Duration::from_secs(30))
                    .await?;
            Ok(Some(match remote {
                Some(slave) => RegistryVerdict::compare(&master, &slave),
                None => RegistryVerdict {
                    differences: Vec::new(),
                    keys: master.key_count(),
                    problem: Some("the receiver replicates no registry keys (start it with --registry-file, or on Windows without --no-registry)".into()),
                },
            }))
        }
        ([], None) => Ok(None),
        (_, Some(_)) => bail!("--registry MASTER.reg SLAVE.reg compares two local files; with --connect give the Master's keys with --registry-file"),
        _ => bail!("--registry takes two .reg files: the Master's, then the Slave's"),
    }
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
