//! End-to-end file replication: real `swrepl` processes, real TLS on loopback, real files.

mod common;

use std::path::Path;

use common::*;

fn data_sent(out: &std::process::Output) -> u64 {
    number_before(&stdout(out), " bytes of file data sent")
}

fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
}

fn small_tree(root: &Path) {
    write(
        root,
        "Supportworks Server/conf/swserver.xml",
        b"<server/>\n",
    );
    write(root, "Supportworks Server/html/index.php", b"<?php ?>\n");
    for i in 0..20 {
        let rel = format!("Supportworks Server/data/mime/call-{i}.eml");
        write(root, &rel, &noise(&rel, 1000 + i * 997));
    }
    std::fs::create_dir_all(root.join("Supportworks Server/temp/empty")).unwrap();
}

#[test]
fn init_prints_fingerprint_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("id");
    let fp = init_identity(&dir);
    assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{fp}");
    assert!(fp[7..]
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));

    let again = run(&["init", "--dir", dir.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert_eq!(stderr(&again).lines().count(), 1, "{}", stderr(&again));

    let printed = run(&["fingerprint", "--dir", dir.to_str().unwrap()]);
    assert_ok(&printed);
    assert_eq!(stdout(&printed).trim(), fp);

    let forced = run(&["init", "--dir", dir.to_str().unwrap(), "--force"]);
    assert_ok(&forced);
    assert_ne!(stdout(&forced).lines().last().unwrap().trim(), fp);
}

#[test]
fn initial_sync_makes_trees_identical() {
    let pair = Pair::new();
    small_tree(&pair.master);
    let _receiver = pair.start_receiver(&[]);
    let out = pair.send_once(&[]);
    assert_ok(&out);
    pair.assert_identical();
    assert!(
        pair.slave.join("Supportworks Server/temp/empty").is_dir(),
        "empty directories replicate"
    );
    assert!(
        stdout(&out).contains("replicated: 22 files"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn data_folder_is_never_copied_in_any_spelling() {
    let pair = Pair::new();
    small_tree(&pair.master);
    for spelling in [
        "Core Services/SwSqlServer/data",
        "core services/swsqlserver/DATA",
        "CORE SERVICES/SWSQLSERVER/Data",
    ] {
        write(
            &pair.master,
            &format!("{spelling}/swdata/opencall.MYD"),
            b"live table",
        );
    }
    write(
        &pair.master,
        "Core Services/SwSqlServer/Bin/Swsql.ini",
        b"[mysqld]\n",
    );
    let _receiver = pair.start_receiver(&[]);
    assert_ok(&pair.send_once(&[]));
    assert!(pair
        .slave
        .join("Core Services/SwSqlServer/Bin/Swsql.ini")
        .exists());
    for spelling in [
        "Core Services/SwSqlServer/data",
        "core services/swsqlserver/DATA",
        "CORE SERVICES/SWSQLSERVER/Data",
    ] {
        assert!(!pair.slave.join(spelling).exists(), "{spelling} was copied");
    }

    // Even a sender told to drop the default excludes cannot write into the Slave's data folder.
    let out = pair.send_once(&["--no-default-excludes"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused by the receiver"),
        "{}",
        stderr(&out)
    );
    assert!(!pair
        .slave
        .join("Core Services/SwSqlServer/data/swdata/opencall.MYD")
        .exists());
}

#[test]
fn live_edits_are_applied_and_deletes_archived() {
    let pair = Pair::new();
    small_tree(&pair.master);
    let _receiver = pair.start_receiver(&[]);
    let _sender = pair.spawn_sender(&[]);
    wait_until("initial sync", || {
        pair.slave
            .join("Supportworks Server/conf/swserver.xml")
            .exists()
    });

    write(
        &pair.master,
        "Supportworks Server/data/mime/new.eml",
        b"fresh",
    );
    wait_until("new file replicated", || {
        std::fs::read(pair.slave.join("Supportworks Server/data/mime/new.eml"))
            .ok()
            .as_deref()
            == Some(b"fresh")
    });

    write(
        &pair.master,
        "Supportworks Server/conf/swserver.xml",
        b"<server port='5015'/>\n",
    );
    wait_until("edit replicated", || {
        std::fs::read(pair.slave.join("Supportworks Server/conf/swserver.xml"))
            .ok()
            .as_deref()
            == Some(b"<server port='5015'/>\n")
    });

    std::fs::remove_file(pair.master.join("Supportworks Server/data/mime/new.eml")).unwrap();
    wait_until("delete replicated", || {
        !pair
            .slave
            .join("Supportworks Server/data/mime/new.eml")
            .exists()
    });
    let archived = find_in_archive(&pair.slave, "new.eml");
    assert_eq!(archived.len(), 1, "deleted file archived once");
    assert_eq!(std::fs::read(&archived[0]).unwrap(), b"fresh");
    let old_conf = find_in_archive(&pair.slave, "swserver.xml");
    assert_eq!(
        std::fs::read(&old_conf[0]).unwrap(),
        b"<server/>\n",
        "replaced version archived"
    );
    pair.assert_identical();
}

fn find_in_archive(slave: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![slave.join(".swrepl/archive")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else if entry.file_name() == name {
                found.push(entry.path());
            }
        }
    }
    found
}

#[test]
fn edit_inside_a_large_file_sends_only_a_few_chunks() {
    let pair = Pair::new();
    let size = 8 * 1024 * 1024;
    write(
        &pair.master,
        "Supportworks Server/data/index/calls.idx",
        &noise("big", size),
    );
    let _receiver = pair.start_receiver(&[]);
    let first = pair.send_once(&[]);
    assert_ok(&first);
    assert!(data_sent(&first) >= size as u64);

    let path = pair.master.join("Supportworks Server/data/index/calls.idx");
    let mut content = std::fs::read(&path).unwrap();
    content[size / 2..size / 2 + 10].copy_from_slice(b"0123456789");
    std::fs::write(&path, &content).unwrap();
    let second = pair.send_once(&[]);
    assert_ok(&second);
    let sent = data_sent(&second);
    assert!(
        sent > 0 && sent <= 4 * 256 * 1024,
        "an edit of 10 bytes sent {sent} bytes"
    );
    pair.assert_identical();
}

#[test]
fn renaming_a_folder_sends_no_file_data() {
    let pair = Pair::new();
    for i in 0..50 {
        write(
            &pair.master,
            &format!("Supportworks Server/html/page-{i}.php"),
            &noise(&i.to_string(), 20_000),
        );
    }
    let _receiver = pair.start_receiver(&[]);
    assert_ok(&pair.send_once(&[]));
    let inode_before = file_id(&pair.slave.join("Supportworks Server/html/page-7.php"));

    std::fs::rename(
        pair.master.join("Supportworks Server/html"),
        pair.master.join("Supportworks Server/portal"),
    )
    .unwrap();
    let out = pair.send_once(&[]);
    assert_ok(&out);
    assert_eq!(data_sent(&out), 0, "{}", stdout(&out));
    assert!(!pair.slave.join("Supportworks Server/html").exists());
    assert_eq!(
        file_id(&pair.slave.join("Supportworks Server/portal/page-7.php")),
        inode_before,
        "applied as a rename"
    );
    pair.assert_identical();
}

#[test]
fn case_only_rename_replicates() {
    let pair = Pair::new();
    write(&pair.master, "Logs/Server.LOG", b"log");
    let _receiver = pair.start_receiver(&[]);
    assert_ok(&pair.send_once(&[]));
    std::fs::rename(
        pair.master.join("Logs/Server.LOG"),
        pair.master.join("Logs/server.log"),
    )
    .unwrap();
    let out = pair.send_once(&[]);
    assert_ok(&out);
    assert_eq!(data_sent(&out), 0);
    assert!(pair.slave.join("Logs/server.log").exists());
    assert!(!pair.slave.join("Logs/Server.LOG").exists());
}

#[cfg(unix)]
fn file_id(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// The NTFS file index (the low 64 bits of swrepl's file id; the high ones are the volume's).
#[cfg(windows)]
fn file_id(path: &Path) -> u64 {
    // Truncation keeps the low half.
    u128::from(swrepl_tree::file_id_of(path).expect("a file id")) as u64
}

#[test]
fn wrong_fingerprint_is_refused_on_both_sides() {
    let pair = Pair::new();
    small_tree(&pair.master);
    let stranger = init_identity(&pair.tmp.path().join("stranger"));
    let mut receiver = pair.spawn_receiver(&[], &stranger);
    wait_until("receiver listening", || {
        std::net::TcpStream::connect(pair.addr()).is_ok()
    });
    let out = pair.send_once(&["--timeout", "20"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("refused our certificate") || err.contains("not trusted"),
        "{err}"
    );
    assert!(
        err.lines().filter(|l| l.starts_with("error:")).count() == 1,
        "{err}"
    );
    wait_until("receiver logs the refusal", || {
        receiver.log_text().contains("not trusted")
    });
    assert!(receiver.is_running(), "the receiver keeps running");
    assert_eq!(
        std::fs::read_dir(&pair.slave)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != ".swrepl")
            .count(),
        0
    );
}

#[test]
fn mass_delete_is_held_until_confirmed() {
    let pair = Pair::new();
    small_tree(&pair.master);
    let _receiver = pair.start_receiver(&[]);
    assert_ok(&pair.send_once(&[]));
    std::fs::remove_dir_all(pair.master.join("Supportworks Server/data")).unwrap();

    let held = pair.send_once(&[]);
    assert_eq!(held.status.code(), Some(1), "{}", stderr(&held));
    assert!(
        stderr(&held).contains("--allow-mass-delete"),
        "{}",
        stderr(&held)
    );
    assert!(
        pair.slave
            .join("Supportworks Server/data/mime/call-3.eml")
            .exists(),
        "nothing deleted"
    );

    assert_ok(&pair.send_once(&["--allow-mass-delete"]));
    assert!(!pair.slave.join("Supportworks Server/data").exists());
    assert_eq!(find_in_archive(&pair.slave, "call-3.eml").len(), 1);
    pair.assert_identical();
}

fn wire_sent(out: &std::process::Output) -> u64 {
    number_before(&stdout(out), " bytes on the wire")
}

#[test]
fn a_resync_describes_only_what_differs_from_the_receivers_summary() {
    let pair = Pair::new();
    for i in 0..600 {
        let rel = format!("Supportworks Server/data/mime/{:02}/call-{i}.eml", i % 40);
        write(&pair.master, &rel, &noise(&rel, 200 + i));
    }
    let _receiver = pair.start_receiver(&[]);
    let first = pair.send_once(&[]);
    assert_ok(&first);
    // The whole manifest of 640 entries is tens of kB; a summary exchange is a few hundred bytes.
    let manifest = wire_sent(&first) - data_sent(&first);
    assert!(manifest > 40_000, "{manifest} bytes of manifest");

    let unchanged = pair.send_once(&[]);
    assert_ok(&unchanged);
    assert!(
        wire_sent(&unchanged) < 4_000,
        "an unchanged tree sent {} bytes",
        wire_sent(&unchanged)
    );

    write(
        &pair.master,
        "Supportworks Server/data/mime/07/call-7.eml",
        b"edited",
    );
    std::fs::remove_file(
        pair.master
            .join("Supportworks Server/data/mime/08/call-8.eml"),
    )
    .unwrap();
    write(
        &pair.slave,
        "Supportworks Server/data/mime/09/stray.eml",
        b"Slave only",
    );
    let changed = pair.send_once(&[]);
    assert_ok(&changed);
    assert!(
        wire_sent(&changed) < manifest / 4,
        "three differences sent {} bytes",
        wire_sent(&changed)
    );
    pair.assert_identical();
    assert_eq!(find_in_archive(&pair.slave, "stray.eml").len(), 1);
}

#[test]
fn changes_made_on_the_slave_are_reverted_and_archived() {
    let pair = Pair::new();
    small_tree(&pair.master);
    let _receiver = pair.start_receiver(&[]);
    assert_ok(&pair.send_once(&[]));
    // A session that changes nothing leaves the receiver a summary it may give again while its
    // watcher sees no change: the edits below must be seen all the same.
    assert_ok(&pair.send_once(&[]));
    write(
        &pair.slave,
        "Supportworks Server/conf/swserver.xml",
        b"edited on the slave",
    );
    write(
        &pair.slave,
        "Supportworks Server/stray.txt",
        b"added on the slave",
    );

    assert_ok(&pair.send_once(&[]));
    pair.assert_identical();
    assert_eq!(find_in_archive(&pair.slave, "stray.txt").len(), 1);
    let archived = find_in_archive(&pair.slave, "swserver.xml");
    assert_eq!(std::fs::read(&archived[0]).unwrap(), b"edited on the slave");
}

#[test]
fn a_precopied_slave_is_seeded_by_hashes() {
    let pair = Pair::new();
    for i in 0..30 {
        write(
            &pair.master,
            &format!("attachments/{i}.bin"),
            &noise(&format!("seed{i}"), 100_000),
        );
    }
    // The operator pre-copied the tree (as the runbook's xcopy would), then one file changed.
    for i in 0..30 {
        let rel = format!("attachments/{i}.bin");
        std::fs::create_dir_all(pair.slave.join("attachments")).unwrap();
        std::fs::copy(pair.master.join(&rel), pair.slave.join(&rel)).unwrap();
    }
    let total = 30 * 100_000u64;
    let _receiver = pair.start_receiver(&[]);
    let out = pair.send_once(&[]);
    assert_ok(&out);
    assert!(
        data_sent(&out) * 100 < total,
        "seeding sent {} of {total} bytes",
        data_sent(&out)
    );
    pair.assert_identical();
}

#[test]
fn a_file_being_written_never_appears_half_written() {
    let pair = Pair::new();
    let piece = 256 * 1024;
    let pieces = 24;
    let full = noise("growing", piece * pieces);
    write(&pair.master, "log/growing.log", &full[..piece]);
    let _receiver = pair.start_receiver(&[]);
    let _sender = pair.spawn_sender(&[]);

    let master_file = pair.master.join("log/growing.log");
    let writer = std::thread::spawn({
        let full = full.clone();
        move || {
            use std::io::Write;
            for i in 1..pieces {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&master_file)
                    .unwrap();
                f.write_all(&full[i * piece..(i + 1) * piece]).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(15));
            }
        }
    });
    let slave_file = pair.slave.join("log/growing.log");
    let mut observed = 0;
    wait_until("growing file replicated in full", || {
        if let Ok(content) = std::fs::read(&slave_file) {
            observed += 1;
            assert!(
                content.len() % piece == 0 && content[..] == full[..content.len()],
                "half-written content seen ({} bytes)",
                content.len()
            );
            return content.len() == full.len();
        }
        false
    });
    writer.join().unwrap();
    assert!(observed > 0);
}

#[test]
fn receiver_restart_mid_transfer_resumes() {
    let pair = Pair::new();
    let files = 300;
    for i in 0..files {
        write(
            &pair.master,
            &format!("mime/{i:04}.eml"),
            &noise(&format!("r{i}"), 256 * 1024),
        );
    }
    let mut receiver = pair.start_receiver(&[]);
    let mut sender = pair.spawn_sender(&["--once"]);
    let applied = || {
        std::fs::read_dir(pair.slave.join("mime"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    wait_until("some files applied", || applied() >= 10);
    receiver.kill();
    assert!(
        sender.is_running(),
        "the transfer finished before the receiver could be stopped: make the tree bigger"
    );
    let before: Vec<(String, u64)> = std::fs::read_dir(pair.slave.join("mime"))
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                file_id(&e.path()),
            )
        })
        .collect();
    assert!(before.len() < files);

    let _receiver = pair.start_receiver(&[]);
    assert_eq!(sender.wait_exit(), 0, "sender log:\n{}", sender.log_text());
    pair.assert_identical();
    for (name, id) in before {
        assert_eq!(
            file_id(&pair.slave.join("mime").join(&name)),
            id,
            "{name} was transferred again"
        );
    }
}

#[test]
fn verify_takes_the_masters_config_file() {
    let pair = Pair::new();
    small_tree(&pair.master);
    write(&pair.master, "Supportworks Server/temp/x.tmp", b"scratch");
    let _receiver = pair.start_receiver(&["--exclude", "**/*.tmp"]);
    assert_ok(&pair.send_once(&["--exclude", "**/*.tmp"]));
    let config = pair.tmp.path().join("master.toml");
    std::fs::write(
        &config,
        format!(
            "[send]\nroot = '{}'\nconnect = '{}'\nidentity = '{}'\ntrust = ['{}']\nexclude = ['**/*.tmp']\n",
            pair.master.display(),
            pair.addr(),
            pair.master_id.display(),
            pair.slave_fp
        ),
    )
    .unwrap();
    let verify = || run(&["verify", "--config", config.to_str().unwrap()]);
    let same = verify();
    assert_ok(&same);
    assert!(
        stdout(&same).starts_with("identical: 22 files"),
        "{}",
        stdout(&same)
    );

    write(
        &pair.master,
        "Supportworks Server/conf/swserver.xml",
        b"changed, not yet sent",
    );
    let differs = verify();
    assert_eq!(differs.status.code(), Some(1), "{}", stderr(&differs));
    assert!(
        stdout(&differs).contains("swserver.xml"),
        "{}",
        stdout(&differs)
    );
}

#[test]
fn remote_verify_compares_with_a_running_receiver() {
    let pair = Pair::new();
    small_tree(&pair.master);
    let _receiver = pair.start_receiver(&[]);
    assert_ok(&pair.send_once(&[]));
    let remote = |root: &Path| {
        run(&[
            "verify",
            "--root",
            root.to_str().unwrap(),
            "--connect",
            &pair.addr(),
            "--identity",
            pair.master_id.to_str().unwrap(),
            "--trust",
            &pair.slave_fp,
        ])
    };
    let same = remote(&pair.master);
    assert_ok(&same);
    assert!(
        stdout(&same).starts_with("identical: 22 files"),
        "{}",
        stdout(&same)
    );

    write(
        &pair.master,
        "Supportworks Server/conf/swserver.xml",
        b"changed, not yet sent",
    );
    let differs = remote(&pair.master);
    assert_eq!(differs.status.code(), Some(1));
    assert!(
        stdout(&differs).contains("swserver.xml"),
        "{}",
        stdout(&differs)
    );
}

#[test]
fn operator_mistakes_get_one_clear_line() {
    let pair = Pair::new();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["send".into(), "--bogus".into()], "unexpected argument"),
        (
            vec![
                "send",
                "--root",
                pair.master.to_str().unwrap(),
                "--connect",
                &pair.addr(),
                "--identity",
                "/nonexistent/id",
                "--trust",
                &pair.slave_fp,
                "--once",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            "swrepl init",
        ),
        (
            vec![
                "send",
                "--root",
                "/nonexistent/root",
                "--connect",
                &pair.addr(),
                "--identity",
                pair.master_id.to_str().unwrap(),
                "--trust",
                &pair.slave_fp,
                "--once",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            "/nonexistent/root",
        ),
        (
            vec![
                "send",
                "--root",
                pair.master.to_str().unwrap(),
                "--connect",
                &pair.addr(),
                "--identity",
                pair.master_id.to_str().unwrap(),
                "--trust",
                "sha256:nothex",
                "--once",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            "sha256:nothex",
        ),
        (
            vec![
                "send",
                "--root",
                pair.master.to_str().unwrap(),
                "--connect",
                &pair.addr(),
                "--identity",
                pair.master_id.to_str().unwrap(),
                "--trust",
                &pair.slave_fp,
                "--once",
                "--timeout",
                "2",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            "cannot reach",
        ),
    ];
    for (args, expected) in cases {
        let out = swrepl().args(&args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(expected),
            "{args:?}: expected {expected:?} in {err:?}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }

    // Port in use: a second receiver on the same port.
    let _receiver = pair.start_receiver(&[]);
    let mut second = pair.spawn_receiver(&[], &pair.master_fp);
    assert_eq!(second.wait_exit(), 2);
    assert!(
        second.log_text().contains("cannot listen"),
        "{}",
        second.log_text()
    );
}
