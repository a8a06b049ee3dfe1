//! `swrepl demo`: the whole file pipeline on loopback, in a temporary directory.
//!
//! Builds a small Supportworks-like tree (with a SwSQL data folder that must not travel), creates
//! two identities, runs a receiver and a watching sender over mutual TLS, makes live edits (new
//! file, edit inside a large file, rename, delete, a new HTTP alias in the registry keys kept in a
//! `.reg` file), shows each one applied, verifies the trees and the keys, and cleans up.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use swrepl_net::Identity;
use swrepl_registry::Scope;
use swrepl_sync::{ReceiverEvent, ReceiverOptions, RegistrySource, SenderOptions};
use swrepl_tree::Excludes;
use tokio::sync::mpsc;

/// Arguments of `swrepl demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Keep the temporary directory for inspection instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

const LARGE_FILE: &str = "Supportworks Server/data/index/calls.idx";
const LARGE_SIZE: usize = 16 * 1024 * 1024;

/// Deterministic pseudo-random bytes (blake3 in XOF mode), so the demo is the same every time.
fn pseudo_random(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn write(root: &Path, rel: &str, content: &[u8]) -> anyhow::Result<()> {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("relative path has a parent"))?;
    std::fs::write(&path, content).with_context(|| format!("cannot write {}", path.display()))
}

fn build_master_tree(root: &Path) -> anyhow::Result<()> {
    write(
        root,
        "Supportworks Server/conf/swserver.xml",
        b"<server><port>5015</port></server>\n",
    )?;
    write(
        root,
        "Supportworks Server/html/index.php",
        b"<?php include 'portal.php'; ?>\n",
    )?;
    for i in 0..40 {
        let rel = format!("Supportworks Server/data/mime/2026/11/call-{i:04}.eml");
        write(root, &rel, &pseudo_random(&rel, 2_000 + i * 300))?;
    }
    write(root, LARGE_FILE, &pseudo_random("calls.idx", LARGE_SIZE))?;
    write(
        root,
        "Supportworks Server/log/swserver.log",
        b"2026-11-26 05:00:00 server started\n",
    )?;
    write(
        root,
        "Core Services/SwSqlServer/Bin/Swsql.ini",
        b"[mysqld]\nport=5002\n",
    )?;
    write(
        root,
        "Core Services/SwSqlServer/Data/swdata/opencall.MYD",
        &pseudo_random("opencall", 100_000),
    )?;
    std::fs::create_dir_all(root.join("Supportworks Server/temp"))?;
    Ok(())
}

struct Demo {
    events: mpsc::UnboundedReceiver<ReceiverEvent>,
    /// Registry change sets applied so far (counted even while waiting for something else).
    registry_applied: usize,
}

impl Demo {
    /// Waits for the receiver event that `want` picks, printing it with its latency.
    async fn expect<T>(
        &mut self,
        what: &str,
        started: Instant,
        want: impl Fn(&ReceiverEvent) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .with_context(|| format!("timed out waiting for: {what}"))?
                .context("the receiver stopped")?;
            if matches!(event, ReceiverEvent::RegistryApplied { .. }) {
                self.registry_applied += 1;
            }
            if let Some(found) = want(&event) {
                println!(
                    "  applied on the Slave in {:>5} ms: {what}",
                    started.elapsed().as_millis()
                );
                return Ok(found);
            }
        }
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::Builder::new().prefix("swrepl-demo-").tempdir()?;
    let base = tmp.path().to_path_buf();
    let (master, slave) = (base.join("master/Hornbill"), base.join("slave/Hornbill"));
    std::fs::create_dir_all(&master)?;
    std::fs::create_dir_all(&slave)?;
    println!("swrepl demo in {}", base.display());
    build_master_tree(&master)?;
    println!("1. built a Supportworks-like tree on the 'Master' (with a SwSQL Data folder that must not be copied)");

    let master_fp = swrepl_net::init_identity(&base.join("master/identity"), false)?;
    let slave_fp = swrepl_net::init_identity(&base.join("slave/identity"), false)?;
    let master_reg = base.join("master/registry.reg");
    write_reg(&master_reg, MASTER_ALIASES)?;
    println!("2. created two identities: Master {master_fp}");
    println!("                           Slave  {slave_fp}");

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let receiver_options = ReceiverOptions {
        root: slave.clone(),
        listen: "127.0.0.1:0".into(),
        identity: Identity::load(&base.join("slave/identity"))?,
        trusted: vec![master_fp],
        archive: None,
        archive_retention: None,
        excludes: Excludes::new(&[], true)?,
        registry: Some(RegistrySource::reg_file(
            base.join("slave/registry.reg"),
            Scope::default_keys(),
            true,
        )),
    };
    let mut stop = stop_rx.clone();
    let receiver = tokio::spawn(swrepl_sync::run_receiver(
        receiver_options,
        Some(events_tx),
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    ));
    let mut demo = Demo {
        events: events_rx,
        registry_applied: 0,
    };
    let ReceiverEvent::Listening(addr) = demo
        .events
        .recv()
        .await
        .context("the receiver did not start")?
    else {
        bail!("unexpected first receiver event");
    };
    println!("3. receiver listening on {addr} (mutual TLS 1.3, pinned fingerprints)");

    let sender_options = SenderOptions {
        root: master.clone(),
        state_dir: None,
        connect: addr.to_string(),
        identity: Identity::load(&base.join("master/identity"))?,
        trusted: vec![slave_fp],
        excludes: Excludes::new(&[], true)?,
        once: false,
        connect_timeout: Duration::from_secs(10),
        allow_mass_delete: false,
        mass_delete_permille: 200,
        rescan_interval: Duration::from_secs(30),
        full_pass_interval: Duration::from_secs(3600),
        service_probe: None,
        registry: Some(RegistrySource::reg_file(
            &master_reg,
            Scope::default_keys(),
            false,
        )),
    };
    let mut stop = stop_rx.clone();
    let sender = tokio::spawn(swrepl_sync::run_sender(sender_options, async move {
        let _ = stop.wait_for(|s| *s).await;
    }));

    let started = Instant::now();
    println!("4. initial sync (sender watching the Master's tree):");
    demo.expect("initial full pass", started, |e| {
        matches!(e, ReceiverEvent::PassDone { .. }).then_some(())
    })
    .await?;
    if demo.registry_applied == 0 {
        demo.expect("the HttpAliases registry keys", started, |e| {
            matches!(e, ReceiverEvent::RegistryApplied { .. }).then_some(())
        })
        .await?;
    }

    println!("5. live edits on the Master:");
    let t = Instant::now();
    write(
        &master,
        "Supportworks Server/data/mime/2026/11/call-9999.eml",
        b"From: user@example.com\nSubject: printer\n\nIt is on fire.\n",
    )?;
    demo.expect("new attachment call-9999.eml", t, |e| {
        applied(e, "call-9999.eml")
    })
    .await?;

    let t = Instant::now();
    edit_in_place(&master.join(LARGE_FILE), LARGE_SIZE as u64 / 2, b"EDITED")?;
    let bytes = demo
        .expect("6-byte edit inside the 16 MiB calls.idx", t, |e| match e {
            ReceiverEvent::Applied {
                path,
                bytes_received,
                ..
            } if path == LARGE_FILE => Some(*bytes_received),
            _ => None,
        })
        .await?;
    println!(
        "     ... which sent {} KiB of chunk data, not 16 MiB",
        bytes / 1024
    );

    let t = Instant::now();
    std::fs::rename(
        master.join("Supportworks Server/html"),
        master.join("Supportworks Server/portal"),
    )?;
    demo.expect(
        "folder html renamed to portal (no file data sent)",
        t,
        |e| matches!(e, ReceiverEvent::Renamed { .. }).then_some(()),
    )
    .await?;

    let t = Instant::now();
    std::fs::remove_file(master.join("Supportworks Server/log/swserver.log"))?;
    demo.expect(
        "swserver.log deleted (kept in the Slave's archive)",
        t,
        |e| matches!(e, ReceiverEvent::Deleted(p) if p.ends_with("swserver.log")).then_some(()),
    )
    .await?;

    let t = Instant::now();
    write_reg(&master_reg, &format!("{MASTER_ALIASES}{NEW_ALIAS}"))?;
    demo.expect(
        "new HTTP alias in the registry (previous keys archived as .reg)",
        t,
        |e| matches!(e, ReceiverEvent::RegistryApplied { .. }).then_some(()),
    )
    .await?;

    println!("6. verify (every file compared by blake3):");
    let excludes = Excludes::new(&[], true)?;
    let (m, s) = (master.clone(), slave.clone());
    let summary =
        tokio::task::spawn_blocking(move || swrepl_tree::verify_trees(&m, &s, &excludes, &|_| {}))
            .await??;
    let data_copied = slave.join("Core Services/SwSqlServer/Data").exists();
    let _ = stop_tx.send(true);
    let _ = sender.await;
    let _ = receiver.await;

    if summary.differences.is_empty() {
        println!(
            "  identical: {} files, {} bytes",
            summary.files, summary.bytes
        );
    } else {
        for d in &summary.differences {
            println!("  {d}");
        }
    }
    println!(
        "  SwSQL Data folder on the Slave: {}",
        if data_copied {
            "PRESENT (wrong!)"
        } else {
            "absent, as it must be"
        }
    );
    let registry_same = registry_in_step(&master_reg, &base.join("slave/registry.reg"));
    println!(
        "  registry keys on the Slave: {}",
        if registry_same {
            "identical to the Master's"
        } else {
            "DIFFERENT (wrong!)"
        }
    );
    let archived = count_files(&slave.join(".swrepl/archive"));
    println!("  archive on the Slave holds {archived} replaced or deleted files");
    if args.keep {
        println!("kept {}", tmp.keep().display());
    }
    let ok = summary.differences.is_empty() && !data_copied && registry_same;
    println!(
        "{}",
        if ok {
            "demo finished: the Slave is in step with the Master"
        } else {
            "demo FAILED"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The Master's HttpAliases keys, as a regedit export (UTF-8 is read too).
const MASTER_ALIASES: &str = r#"Windows Registry Editor Version 5.00

[HKEY_LOCAL_MACHINE\Software\Hornbill\Core Services\Applications\_Global\HttpAliases]
"sw"="C:\\Program Files\\Hornbill\\Supportworks Server\\html"

[HKEY_LOCAL_MACHINE\Software\Hornbill\Core Services\Applications\Supportworks Server\HttpAliases]
"portal"="C:\\Program Files\\Hornbill\\Supportworks Server\\portal"
"#;

/// A live edit: one more alias in the second key (its section is the file's last).
const NEW_ALIAS: &str = r#""selfservice"="C:\\Program Files\\Hornbill\\Supportworks Server\\selfservice"
"#;

/// Writes a .reg file the way an editor saving safely does: a temporary file, then a rename.
fn write_reg(path: &Path, text: &str) -> anyhow::Result<()> {
    let temp = path.with_extension("reg.tmp");
    std::fs::write(&temp, text).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Whether two .reg files hold the same HttpAliases keys.
fn registry_in_step(master: &Path, slave: &Path) -> bool {
    let scope = Scope::default_keys();
    let read = |path: &Path| RegistrySource::reg_file(path, scope.clone(), false).snapshot();
    matches!((read(master), read(slave)), (Ok(a), Ok(b)) if a == b)
}

fn applied(event: &ReceiverEvent, suffix: &str) -> Option<()> {
    matches!(event, ReceiverEvent::Applied { path, .. } if path.ends_with(suffix)).then_some(())
}

fn edit_in_place(path: &Path, offset: u64, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(bytes)?;
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    walk_count(dir).unwrap_or(0)
}

fn walk_count(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            n += walk_count(&entry.path())?;
        } else {
            n += 1;
        }
    }
    Ok(n)
}
