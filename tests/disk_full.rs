//! Disk full on the Slave: a size-limited file system (tmpfs) as the Slave's root. A sync that
//! does not fit gives one clear error line on the receiver naming the path and "no space left",
//! leaves no partial visible file and no staging junk, the sender keeps the changes and retries,
//! and once space is freed replication completes.
//!
//! Needs `mount` (root). Skipped with a loud notice where mounting fails, except under `CI=true`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        let failure = match out {
            Ok(out) if out.status.success() => {
                return Some(Tmpfs {
                    dir: dir.to_path_buf(),
                })
            }
            Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
            Err(e) => e.to_string(),
        };
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but a tmpfs cannot be mounted: {failure}"
        );
        eprintln!(
            "\n*** SKIPPED: disk-full test needs `mount -t tmpfs` (run as root): {failure} ***\n"
        );
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Every visible Slave file is byte-identical to the Master's file of the same path.
fn assert_no_partial_file(pair: &Pair) {
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(pair.slave.join(&dir)).unwrap().flatten() {
            let rel = dir.join(entry.file_name());
            if rel == Path::new(".swrepl") {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                stack.push(rel);
                continue;
            }
            let slave = std::fs::read(pair.slave.join(&rel)).unwrap();
            let master = std::fs::read(pair.master.join(&rel)).unwrap_or_default();
            assert!(
                slave == master,
                "{} on the Slave is partial or foreign ({} bytes, Master has {})",
                rel.display(),
                slave.len(),
                master.len()
            );
        }
    }
}

fn staging_files(pair: &Pair) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(pair.slave.join(".swrepl/staging"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

#[test]
fn a_full_slave_disk_is_reported_retried_and_recovered_from() {
    let mut pair = Pair::new();
    let Some(_tmpfs) = Tmpfs::mount(&pair.tmp.path().join("small"), "8m") else {
        return;
    };
    pair.slave = pair.tmp.path().join("small/slave");
    std::fs::create_dir_all(&pair.slave).unwrap();
    // Ballast beside the Slave's root on the same small file system.
    let ballast = pair.tmp.path().join("small/ballast.bin");
    std::fs::write(&ballast, noise("ballast", 4 * 1024 * 1024)).unwrap();

    write(&pair.master, "conf/small.xml", b"<small/>");
    write(&pair.master, "data/big1.bin", &noise("big1", 2_500_000));
    write(&pair.master, "data/big2.bin", &noise("big2", 2_500_000));

    let mut receiver = pair.start_receiver(&[]);
    let mut sender = pair.spawn_sender(&[]);
    wait_until("the receiver reports the full disk", || {
        receiver.log_text().to_lowercase().contains("no space left")
    });
    let log = receiver.log_text();
    let line = log
        .lines()
        .find(|l| l.to_lowercase().contains("no space left"))
        .unwrap();
    assert!(
        line.contains("data/big"),
        "the error line names the path: {line}"
    );
    assert_no_partial_file(&pair);

    // The sender keeps the change and retries: a second failure shows up, and both processes live.
    let failures = |r: &Proc| r.log_text().to_lowercase().matches("no space left").count();
    wait_until("the sender retries", || failures(&receiver) >= 2);
    // ... ever more slowly, not several times a second (each retry resends the data).
    wait_until("the sender slows its retries down", || {
        sender.log_text().contains("reconnecting in 1.0s")
    });
    assert!(receiver.is_running(), "the receiver survives a full disk");
    assert!(sender.is_running(), "the sender keeps the changes queued");
    assert_no_partial_file(&pair);

    // Space returns: replication completes.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = pair.verify();
        if out.status.success() && stdout(&out).starts_with("identical: ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after space returned:\n{}{}\nreceiver log:\n{}",
            stdout(&out),
            stderr(&out),
            receiver.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        staging_files(&pair).is_empty(),
        "staging junk left behind: {:?}",
        staging_files(&pair)
    );
    sender.kill();
    receiver.kill();
}
