//! `swrepl failback --config F`: the script that makes the repaired old Master the new Slave of
//! the promoted one, and the planned switch back. Run on the promoted Slave with its config; it
//! prints the steps, host by host, with this pair's paths filled in, and changes nothing. Fail-back
//! is operator-driven by design: it happens in a planned window, on two hosts, after a human has
//! decided the old Master is repaired; each step is a swrepl command to run and check.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Deserialize;
use swrepl_switchover::SwitchoverConfig;

use crate::config;
use crate::monitor::{promoted_marker_path, read_promoted_marker};

/// Arguments of `swrepl failback`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The promoted Slave's config file (`[receive]`, `[services]`, `[switchover]`).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Accepted for symmetry with `switchover`: `failback` only ever prints its plan.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Default, Deserialize)]
struct ReceiveKeys {
    root: Option<PathBuf>,
    listen: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let receive: ReceiveKeys = config::section(&args.config, "receive")?.unwrap_or_default();
    let settings: SwitchoverConfig =
        config::section(&args.config, "switchover")?.unwrap_or_default();
    let root = receive
        .root
        .clone()
        .or(settings.receiver_root.clone())
        .unwrap_or_else(|| PathBuf::from("<this Slave's root>"));
    match read_promoted_marker(&root)? {
        Some(marker) => println!(
            "This host was promoted on {} ({}): it is the active server now.\n",
            marker.time_utc, marker.how
        ),
        None => println!(
            "note: this host has no promoted marker ({}): it was not switched over by swrepl; the plan below assumes it was.\n",
            promoted_marker_path(&root).display()
        ),
    }
    let old_master = settings
        .master_ports
        .first()
        .and_then(|p| p.rsplit_once(':').map(|(host, _)| host.to_owned()))
        .unwrap_or_else(|| "<old-master>".to_owned());
    print!(
        "{}",
        plan(&args.config, &root, &old_master, receive.listen.as_deref())
    );
    let _ = args.dry_run;
    Ok(ExitCode::SUCCESS)
}

fn plan(config: &Path, root: &Path, old_master: &str, listen: Option<&str>) -> String {
    let config = config.display();
    let root = root.display();
    let marker = promoted_marker_path(Path::new(&root.to_string()))
        .display()
        .to_string();
    let port = listen
        .and_then(|l| l.rsplit_once(':').map(|(_, p)| p.to_owned()))
        .unwrap_or_else(|| crate::cmd_files::DEFAULT_PORT.to_string());
    format!(
        r#"Fail-back plan (this host = NEW MASTER, {old_master} = OLD MASTER, to become the new Slave)

Phase A: make the repaired old Master the Slave of this host
  A1. On {old_master}: stop its `swrepl send` service (it must never push to anyone again as Master).
  A2. On {old_master}: swrepl services standby --config <old-master.toml> --yes
        stops its nine switched services in reverse order; SwSqlServer and SwHttpServer keep running.
  A3. Database, reversed: on {old_master} its SwSQL becomes the replica of this host's (port 5002).
        Its data diverged after the crash, so re-seed rather than resume:
        swrepl db plan  --config <reverse-db.toml>     ([db] master = this host, slave = {old_master})
        swrepl db seed  --config <reverse-db.toml>
        swrepl db setup --config <reverse-db.toml>
        swrepl db check --config <reverse-db.toml>     (must report caught up)
  A4. Files, reversed: on {old_master}, a [receive] config with its Hornbill folder as root, trusting
        this host's fingerprint; start `swrepl receive --config <old-master-slave.toml>`.
        (Its root has no promoted marker: only this host has one, at {marker}.)
      On this host, a [send] config: root = {root}, connect = {old_master}:{port}, trust the old Master's
        fingerprint, plus the [services] table so heartbeats report SwServerService;
        start `swrepl send --config <this-host-master.toml>`.
        The first full pass makes the old Master's tree equal to this one; what it replaces goes to
        its archive (<root>/.swrepl/archive), so nothing the old Master held is lost.
  A5. Registry: the sender replicates the HttpAliases keys; check with `swrepl verify --registry`.
  A6. Check: swrepl status --config <old-master-slave.toml>   (on {old_master}: exit 0)
             swrepl verify --root {root} --connect {old_master}:{port} --identity … --trust …
  The pair now runs reversed. Keep [switchover] policy = "manual" on {old_master} until you trust it.

Phase B (optional): switch back in a planned window
  B1. Announce the window; wait until `swrepl status` on {old_master} shows pending=0 and no DB lag.
  B2. On this host: swrepl services standby --config {config} --yes   (users are cut off here)
  B3. On {old_master}: swrepl switchover --config <old-master-slave.toml> --yes
        (pre-checks, database promotion, services in the runbook's order; marks {old_master} promoted)
  B4. On this host: stop `swrepl send`; make this host the Slave again:
        swrepl db setup (this host as replica of {old_master}, re-seed if it took writes after B2);
        only now delete the promoted marker {marker}
        and start `swrepl receive --config {config}` again.
  B5. On {old_master}: start its original `swrepl send`; delete its promoted marker only when it
        is to become a Slave again. Check `swrepl status` on both hosts (exit 0).
"#
    )
}
