//! `swrepl registry export|diff|apply`: the HttpAliases keys as regedit `.reg` files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use swrepl_registry::{
    apply_changes, diff, Encoding, KeyPath, RegFile, RegFileBackend, RegistryBackend, Scope,
    Snapshot, DEFAULT_KEYS,
};

/// Arguments of `swrepl registry`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write the keys to a .reg file, byte for byte as regedit exports them (UTF-16LE).
    Export(ExportArgs),
    /// Compare two .reg files: exit 0 when they describe the same keys, 1 (one line per
    /// difference) when not.
    Diff(DiffArgs),
    /// Import a .reg file (as regedit would: sets, [-key] and "name"=- deletions) into the
    /// replicated keys. A file touching any other key is refused whole.
    Apply(ApplyArgs),
}

/// The replicated keys.
#[derive(clap::Args, Debug)]
struct KeyArgs {
    /// A replicated key (repeat for several); `HKLM\…` abbreviations are accepted. Default: the
    /// two Supportworks HttpAliases keys.
    #[arg(long = "key", value_name = "KEY")]
    keys: Vec<String>,
}

impl KeyArgs {
    fn scope(&self) -> anyhow::Result<Scope> {
        let texts: Vec<&str> = if self.keys.is_empty() {
            DEFAULT_KEYS.to_vec()
        } else {
            self.keys.iter().map(String::as_str).collect()
        };
        let roots = texts
            .into_iter()
            .map(|k| KeyPath::parse(k).with_context(|| format!("--key {k:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Scope::new(roots))
    }
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    #[command(flatten)]
    keys: KeyArgs,
    /// The .reg file to write.
    #[arg(long, value_name = "F.reg")]
    out: PathBuf,
    /// Read the keys from this .reg file instead of the live registry (required off Windows).
    #[arg(long, value_name = "SRC.reg")]
    registry_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct DiffArgs {
    /// The old state.
    a: PathBuf,
    /// The new state.
    b: PathBuf,
    /// Compare only these keys (repeat for several); default: everything in either file.
    #[arg(long = "key", value_name = "KEY")]
    keys: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct ApplyArgs {
    /// The .reg file to import.
    file: PathBuf,
    #[command(flatten)]
    keys: KeyArgs,
    /// Print what would change and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Apply to this .reg file instead of the live registry (required off Windows; created if
    /// missing).
    #[arg(long, value_name = "TARGET.reg")]
    registry_file: Option<PathBuf>,
    /// Save the keys' previous state here first, as a .reg file that restores it.
    #[arg(long, value_name = "DIR", conflicts_with = "no_archive")]
    archive: Option<PathBuf>,
    /// Apply without saving the previous state.
    #[arg(long)]
    no_archive: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Registry calls are blocking and short; run them off the async workers.
    tokio::task::spawn_blocking(move || match args.command {
        Command::Export(a) => export(a),
        Command::Diff(a) => diff_files(a),
        Command::Apply(a) => apply(a),
    })
    .await
    .context("registry command panicked")?
}

/// The .reg file backend when a file is given, else the live registry (Windows only).
fn backend(registry_file: Option<&Path>, create: bool) -> anyhow::Result<Box<dyn RegistryBackend>> {
    match registry_file {
        Some(path) if create => Ok(Box::new(RegFileBackend::open_or_create(path)?)),
        Some(path) => Ok(Box::new(RegFileBackend::open(path)?)),
        None => live_registry(),
    }
}

#[cfg(windows)]
fn live_registry() -> anyhow::Result<Box<dyn RegistryBackend>> {
    Ok(Box::new(swrepl_registry::LiveRegistry::new()))
}

#[cfg(not(windows))]
fn live_registry() -> anyhow::Result<Box<dyn RegistryBackend>> {
    bail!("there is no live registry on this system: give --registry-file FILE.reg to use a .reg file instead")
}

fn read_reg_file(path: &Path) -> anyhow::Result<RegFile> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    RegFile::parse(&bytes).with_context(|| format!("{} is not a valid .reg file", path.display()))
}

fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let scope = args.keys.scope()?;
    let backend = backend(args.registry_file.as_deref(), false)?;
    let snapshot = backend.read(scope.roots())?;
    let missing: Vec<String> = snapshot
        .roots()
        .iter()
        .filter(|(_, key)| key.is_none())
        .map(|(path, _)| path.to_string())
        .collect();
    if missing.len() == snapshot.roots().len() {
        bail!(
            "nothing to export: none of the keys exists in {} ({})",
            backend.describe(),
            missing.join("; ")
        );
    }
    for path in &missing {
        eprintln!(
            "warning: key {path} does not exist in {}; not exported",
            backend.describe()
        );
    }
    RegFile::export(&snapshot).write(&args.out, Encoding::Utf16Le)?;
    println!(
        "exported {} keys to {}",
        snapshot.key_count(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Every hive either snapshot's trees hold, so a diff covers whole files.
fn whole_file_roots(a: &RegFile, b: &RegFile) -> Vec<KeyPath> {
    let mut roots: Vec<KeyPath> = Vec::new();
    for tree in [a.to_tree(), b.to_tree()] {
        for hive in tree.hives() {
            if let Ok(path) = KeyPath::parse(hive.name()) {
                if !roots.contains(&path) {
                    roots.push(path);
                }
            }
        }
    }
    roots
}

fn diff_files(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let a = read_reg_file(&args.a)?;
    let b = read_reg_file(&args.b)?;
    let roots = if args.keys.is_empty() {
        whole_file_roots(&a, &b)
    } else {
        KeyArgs { keys: args.keys }.scope()?.roots().to_vec()
    };
    let old: Snapshot = a.to_tree().snapshot(&roots);
    let new: Snapshot = b.to_tree().snapshot(&roots);
    let changes = diff(&old, &new);
    for line in changes.describe(&old) {
        println!("{line}");
    }
    Ok(if changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let scope = args.keys.scope()?;
    let file = read_reg_file(&args.file)?;
    let changes = file.to_changes();
    scope
        .check(&changes)
        .with_context(|| format!("cannot apply {}", args.file.display()))?;
    if !args.dry_run && args.archive.is_none() && !args.no_archive {
        bail!("give --archive DIR to save the keys' previous state before applying (or --no-archive to skip it)");
    }
    let mut backend = backend(args.registry_file.as_deref(), !args.dry_run)?;
    if args.dry_run {
        let before = backend.read(scope.roots())?;
        let effective = diff(&before, &before.apply(&changes));
        for line in effective.describe(&before) {
            println!("{line}");
        }
        println!(
            "dry run: {} changes would be applied to {}; nothing was written",
            effective.len(),
            backend.describe()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let before = backend.read(scope.roots())?;
    let outcome = apply_changes(backend.as_mut(), &scope, &changes, args.archive.as_deref())?;
    for line in outcome.applied.describe(&before) {
        println!("{line}");
    }
    match (&outcome.archived, outcome.applied.is_empty()) {
        (_, true) => println!(
            "nothing to change: the keys already match {}",
            args.file.display()
        ),
        (Some(archive), false) => println!(
            "applied {} changes to {}; previous state saved to {}",
            outcome.applied.len(),
            backend.describe(),
            archive.display()
        ),
        (None, false) => println!(
            "applied {} changes to {} (previous state not archived)",
            outcome.applied.len(),
            backend.describe()
        ),
    }
    Ok(ExitCode::SUCCESS)
}
