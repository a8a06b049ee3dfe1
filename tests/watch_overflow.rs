//! A burst of changes the file-system watcher does not deliver (as notify's Windows backend
//! drops events when its 16 KiB buffer overflows): the periodic reconciliation rescan alone
//! must bring the Slave up to date.
//!
//! The sender is run with `SWREPL_TEST_DROP_WATCH_EVENTS`, a test-only knob that makes it ignore
//! file-system watch signals, so the only way changes can reach the Slave is the rescan.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Starts a watching sender that ignores every `drop_every`th watch signal (1 = all), with a
/// one-second safety-net rescan and no timed full pass.
fn spawn_lossy_sender(pair: &Pair, drop_every: u32) -> Proc {
    let log = pair.tmp.path().join(format!("sender-{}.log", free_port()));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd: Command = swrepl();
    cmd.env("SWREPL_TEST_DROP_WATCH_EVENTS", drop_every.to_string())
        .args(["send", "--root", pair.master.to_str().unwrap()])
        .args(["--connect", &pair.addr()])
        .args(["--identity", pair.master_id.to_str().unwrap()])
        .args(["--trust", &pair.slave_fp])
        .args(["--rescan-interval", "1", "--full-pass-interval", "86400"])
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    Proc {
        child: cmd.spawn().expect("spawn swrepl send"),
        log,
    }
}

fn identical(pair: &Pair) -> bool {
    let out = pair.verify();
    out.status.success() && stdout(&out).starts_with("identical: ")
}

/// Waits until the trees are identical; if they never are, fails with what `verify` finds and
/// both processes' logs.
fn wait_until_identical(pair: &Pair, what: &str, sender: &Proc, receiver: &Proc) {
    let converged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(what, || identical(pair))
    }));
    if converged.is_err() {
        panic!(
            "no convergence\nverify: {}\nsender:\n{}\nreceiver:\n{}",
            stdout(&pair.verify()),
            sender.log_text(),
            receiver.log_text()
        );
    }
}

/// The Master's tree before the burst: 40 directories of 10 files.
fn seed(root: &Path) {
    for d in 0..40 {
        for f in 0..10 {
            let rel = format!("Core Services/dir{d:02}/file{f}.dat");
            write(root, &rel, &noise(&rel, 200 + f * 37));
        }
    }
}

/// Thousands of changes as fast as the file system takes them: creates (new files and new
/// directories), overwrites (other sizes, and same size), deletes (files and a whole
/// directory), renames (files within and across directories, and a directory).
fn burst(root: &Path) -> usize {
    let mut changes = 0;
    for i in 0..2000 {
        let rel = format!("Burst/batch{:02}/new{i:04}.eml", i / 100);
        write(root, &rel, &noise(&rel, 100 + i % 500));
        changes += 1;
    }
    for d in 0..40 {
        for f in 0..10 {
            let path = root.join(format!("Core Services/dir{d:02}/file{f}.dat"));
            match (d + f) % 4 {
                0 => std::fs::write(&path, noise(&format!("v2 {d} {f}"), 300 + f * 37)).unwrap(),
                1 => std::fs::write(&path, noise(&format!("same size {d} {f}"), 200 + f * 37))
                    .unwrap(),
                2 if d < 20 => std::fs::remove_file(&path).unwrap(),
                2 => std::fs::rename(
                    &path,
                    root.join(format!("Core Services/dir{:02}/moved{f}.dat", d - 20)),
                )
                .unwrap(),
                _ => std::fs::rename(&path, path.with_extension("renamed")).unwrap(),
            }
            changes += 1;
        }
    }
    // Rewrite some of the new files right away, rename a directory full of them, delete another.
    for i in (0..2000).step_by(7) {
        let rel = format!("Burst/batch{:02}/new{i:04}.eml", i / 100);
        if i / 100 != 5 && i / 100 != 6 {
            write(root, &rel, &noise(&format!("again {rel}"), 50 + i % 300));
            changes += 1;
        }
    }
    std::fs::rename(root.join("Burst/batch05"), root.join("Burst/renamed05")).unwrap();
    std::fs::remove_dir_all(root.join("Burst/batch06")).unwrap();
    std::fs::remove_dir_all(root.join("Core Services/dir39")).unwrap();
    changes + 3
}

#[test]
fn a_burst_the_watcher_never_delivers_is_caught_up_by_the_rescan() {
    let pair = Pair::new();
    seed(&pair.master);
    let receiver = pair.start_receiver(&[]);
    let mut sender = spawn_lossy_sender(&pair, 1);
    wait_until("the initial full pass replicated the seed tree", || {
        identical(&pair)
    });

    let changes = burst(&pair.master);
    assert!(changes > 2000, "{changes} changes");
    wait_until_identical(&pair, "the rescan replicated the burst", &sender, &receiver);
    pair.assert_identical();
    assert!(sender.is_running(), "sender died:\n{}", sender.log_text());
    assert!(
        sender
            .log_text()
            .contains("SWREPL_TEST_DROP_WATCH_EVENTS=1: ignoring one in 1 "),
        "the knob did not drop the watch signals, so this test proved nothing:\n{}",
        sender.log_text()
    );
    let slave = |rel: &str| pair.slave.join(rel);
    assert!(slave("Burst/renamed05/new0500.eml").is_file());
    assert!(!slave("Burst/batch06").exists());
    assert!(!slave("Core Services/dir39").exists());
}

/// The same burst with the watcher delivering every other signal: what the watcher reports and
/// what only the rescan finds mix, and the result is still an exact copy.
#[test]
fn a_burst_with_half_the_watch_signals_lost_converges() {
    let pair = Pair::new();
    seed(&pair.master);
    let receiver = pair.start_receiver(&[]);
    let mut sender = spawn_lossy_sender(&pair, 2);
    wait_until("the initial full pass replicated the seed tree", || {
        identical(&pair)
    });

    burst(&pair.master);
    let what = "the watcher and the rescan replicated the burst";
    wait_until_identical(&pair, what, &sender, &receiver);
    assert!(sender.is_running(), "sender died:\n{}", sender.log_text());
    assert!(
        sender
            .log_text()
            .contains("SWREPL_TEST_DROP_WATCH_EVENTS=2"),
        "{}",
        sender.log_text()
    );
}
