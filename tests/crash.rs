//! Crash consistency: the receiver (and, separately, the sender) is killed with SIGKILL at random
//! points during an initial sync and during live changes, then restarted. After every kill each
//! visible file on the Slave must equal some version the Master had (never partial), no temporary
//! file may sit in the visible tree, and the pair must finally converge to `verify` identical.
//!
//! Seeded and repeatable: `SWREPL_CRASH_SEED` (default fixed) picks the tree and the kill points,
//! `SWREPL_CRASH_KILLS` (default 8) how many kills each test makes. The long run:
//!
//! ```text
//! SWREPL_CRASH_KILLS=300 SWREPL_CRASH_SEED=$RANDOM cargo nextest run --test crash --no-capture
//! ```

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// Every content each path has ever had on the Master (blake3 hashes).
#[derive(Default, Clone)]
struct Versions(Arc<Mutex<HashMap<String, HashSet<[u8; 32]>>>>);

impl Versions {
    fn record(&self, rel: &str, content: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .entry(rel.to_string())
            .or_default()
            .insert(*blake3::hash(content).as_bytes());
    }

    fn paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.0.lock().unwrap().keys().cloned().collect();
        paths.sort();
        paths
    }

    fn knows(&self, rel: &str, hash: &[u8; 32]) -> bool {
        self.0
            .lock()
            .unwrap()
            .get(rel)
            .is_some_and(|seen| seen.contains(hash))
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number"))
        }
        Err(_) => default,
    }
}

/// The seed and kill count for this run, printed so a failure can be replayed.
fn settings(test: &str) -> (StdRng, u64) {
    let seed = env_u64("SWREPL_CRASH_SEED", 0x5eed_c0de);
    let kills = env_u64("SWREPL_CRASH_KILLS", 8);
    eprintln!("{test}: SWREPL_CRASH_SEED={seed} SWREPL_CRASH_KILLS={kills}");
    (StdRng::seed_from_u64(seed), kills)
}

/// A file size: mostly small, some medium, a few of several chunks.
fn random_size(rng: &mut StdRng) -> usize {
    match rng.random_range(0..100) {
        0..=59 => rng.random_range(0..4096),
        60..=89 => rng.random_range(4096..65_536),
        90..=98 => rng.random_range(65_536..400_000),
        _ => rng.random_range(1_000_000..2_000_000),
    }
}

fn random_content(rng: &mut StdRng) -> Vec<u8> {
    let mut content = vec![0u8; random_size(rng)];
    rng.fill_bytes(&mut content);
    content
}

/// Writes a new version of `root/rel` atomically (written beside the tree, then renamed in), so
/// every state the Master's tree ever shows is a recorded version.
fn write_version(
    scratch: &Path,
    root: &Path,
    rel: &str,
    content: &[u8],
    versions: &Versions,
    n: u64,
) {
    versions.record(rel, content);
    let tmp = scratch.join(format!("v{n}"));
    std::fs::write(&tmp, content).unwrap();
    let target = root.join(rel);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::rename(&tmp, &target).unwrap();
}

/// Builds a Master tree of `files` files of varied sizes in nested folders; about one in
/// twenty is a copy of an earlier file, so local chunk reuse is exercised too.
fn build_tree(pair: &Pair, rng: &mut StdRng, files: usize, versions: &Versions) -> PathBuf {
    let scratch = pair.tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut written: Vec<Vec<u8>> = Vec::new();
    for i in 0..files {
        let rel = format!(
            "d{}/s{}/f{i}.bin",
            rng.random_range(0..8),
            rng.random_range(0..4)
        );
        let content = if !written.is_empty() && rng.random_range(0..20) == 0 {
            written[rng.random_range(0..written.len())].clone()
        } else {
            random_content(rng)
        };
        write_version(&scratch, &pair.master, &rel, &content, versions, i as u64);
        written.push(content);
    }
    scratch
}

/// Checks the Slave's visible tree: every file is a version the Master had, nothing else is
/// there. Returns how many files were checked. Files that vanish while being read (the receiver
/// may still be running) are skipped.
fn check_slave(slave: &Path, versions: &Versions) -> Result<usize, String> {
    let mut checked = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(slave.join(&dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let rel_path = dir.join(entry.file_name());
            let rel = rel_path.to_string_lossy().replace('\\', "/");
            if rel == ".swrepl" {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(rel_path);
                continue;
            }
            let content = match std::fs::read(entry.path()) {
                Ok(content) => content,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("{rel}: cannot read: {e}")),
            };
            let hash = *blake3::hash(&content).as_bytes();
            if !versions.knows(&rel, &hash) {
                return Err(format!(
                    "{rel} ({} bytes) is not any version the Master had: partial, corrupt or a \
                     temporary file",
                    content.len()
                ));
            }
            checked += 1;
        }
    }
    Ok(checked)
}

fn assert_slave_consistent(pair: &Pair, versions: &Versions, when: &str) -> usize {
    check_slave(&pair.slave, versions).unwrap_or_else(|e| panic!("after {when}: {e}"))
}

/// The receiver's log shows a connected sender.
fn sender_connected(receiver: &Proc) -> bool {
    receiver.log_text().contains("sender connected")
}

/// Nothing left in the staging area once the pair is idle and converged.
fn assert_staging_empty(pair: &Pair) {
    let staging = pair.slave.join(".swrepl/staging");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "staging files left behind: {left:?}");
}

/// Polls `verify` (it is a process run: throttled) until the trees are identical.
fn wait_identical(pair: &Pair, deadline: Duration) {
    let end = Instant::now() + deadline;
    loop {
        let out = pair.verify();
        if out.status.success() && stdout(&out).starts_with("identical: ") {
            return;
        }
        assert!(
            Instant::now() < end,
            "the pair did not converge:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Kills the receiver at random points while a watching sender replicates a fresh tree (with a
/// few Master files rewritten between kills so later kills still land mid-transfer).
#[test]
fn receiver_killed_at_random_points_never_leaves_a_partial_file() {
    let (mut rng, kills) = settings("receiver kills");
    let pair = Pair::new();
    let versions = Versions::default();
    let scratch = build_tree(&pair, &mut rng, 300, &versions);
    let mut sender = pair.spawn_sender(&[]);
    let mut n = 1_000_000;
    for kill in 0..kills {
        let mut receiver = pair.start_receiver(&[]);
        wait_until("the sender connects", || sender_connected(&receiver));
        std::thread::sleep(Duration::from_millis(rng.random_range(0..700)));
        receiver.kill();
        let files = assert_slave_consistent(&pair, &versions, &format!("receiver kill {kill}"));
        eprintln!("receiver kill {kill}: {files} files consistent");
        assert!(
            sender.is_running(),
            "the sender survives the receiver's death"
        );
        for _ in 0..rng.random_range(0..6) {
            let paths = versions.paths();
            let rel = paths[rng.random_range(0..paths.len())].clone();
            n += 1;
            let content = random_content(&mut rng);
            write_version(&scratch, &pair.master, &rel, &content, &versions, n);
        }
    }
    sender.kill();
    let _receiver = pair.start_receiver(&[]);
    let out = pair.send_once(&[]);
    assert!(out.status.success(), "final sync failed: {}", stderr(&out));
    pair.assert_identical();
    assert_slave_consistent(&pair, &versions, "convergence");
    assert_staging_empty(&pair);
}

/// Kills `send --once` at random points; the receiver keeps serving and the Slave stays
/// consistent while it does.
#[test]
fn sender_killed_at_random_points_never_leaves_a_partial_file() {
    let (mut rng, kills) = settings("sender kills");
    let pair = Pair::new();
    let versions = Versions::default();
    let scratch = build_tree(&pair, &mut rng, 300, &versions);
    let mut receiver = pair.start_receiver(&[]);
    let mut n = 1_000_000;
    for kill in 0..kills {
        let mut sender = pair.spawn_sender(&["--once"]);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..800)));
        sender.kill();
        let files = assert_slave_consistent(&pair, &versions, &format!("sender kill {kill}"));
        eprintln!("sender kill {kill}: {files} files consistent");
        assert!(
            receiver.is_running(),
            "a dying sender does not stop the receiver"
        );
        // New versions for the next sender to transfer (and be killed in the middle of).
        for _ in 0..rng.random_range(10..60) {
            let paths = versions.paths();
            let rel = paths[rng.random_range(0..paths.len())].clone();
            n += 1;
            let content = random_content(&mut rng);
            write_version(&scratch, &pair.master, &rel, &content, &versions, n);
        }
    }
    let out = pair.send_once(&[]);
    assert!(out.status.success(), "final sync failed: {}", stderr(&out));
    pair.assert_identical();
    assert_slave_consistent(&pair, &versions, "convergence");
    assert!(receiver.is_running());
}

/// A writer keeps rewriting Master files while a watching sender replicates them and the
/// receiver is killed and restarted at random points; at the end the pair converges.
#[test]
fn receiver_killed_during_live_changes_never_leaves_a_partial_file() {
    let (mut rng, kills) = settings("live kills");
    let pair = Pair::new();
    let versions = Versions::default();
    let scratch = build_tree(&pair, &mut rng, 120, &versions);
    let mut sender = pair.spawn_sender(&[]);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let versions = versions.clone();
        let master = pair.master.clone();
        let mut rng = StdRng::seed_from_u64(rng.random());
        std::thread::spawn(move || {
            let mut n = 2_000_000;
            while !stop.load(Ordering::Relaxed) {
                let paths = versions.paths();
                // Mostly rewrites; now and then a new file.
                let rel = if rng.random_range(0..10) == 0 {
                    format!("live/new{n}.bin")
                } else {
                    paths[rng.random_range(0..paths.len())].clone()
                };
                n += 1;
                let content = random_content(&mut rng);
                write_version(&scratch, &master, &rel, &content, &versions, n);
                std::thread::sleep(Duration::from_millis(rng.random_range(5..60)));
            }
        })
    };

    for kill in 0..kills {
        let mut receiver = pair.start_receiver(&[]);
        wait_until("the sender connects", || sender_connected(&receiver));
        std::thread::sleep(Duration::from_millis(rng.random_range(0..900)));
        receiver.kill();
        let files = assert_slave_consistent(&pair, &versions, &format!("live kill {kill}"));
        eprintln!("live kill {kill}: {files} files consistent");
        assert!(
            sender.is_running(),
            "the sender survives the receiver's death"
        );
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    let _receiver = pair.start_receiver(&[]);
    wait_identical(&pair, Duration::from_secs(120));
    sender.kill();
    assert_slave_consistent(&pair, &versions, "convergence");
    assert_staging_empty(&pair);
}
