//! End-to-end registry replication: real `swrepl send` and `swrepl receive` processes, each with
//! its own `.reg` file standing in for the registry (`--registry-file`), over mutual TLS.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{run, stderr, stdout, wait_until, Pair};

const GLOBAL: &str =
    r"HKEY_LOCAL_MACHINE\Software\Hornbill\Core Services\Applications\_Global\HttpAliases";
const SERVER: &str = r"HKEY_LOCAL_MACHINE\Software\Hornbill\Core Services\Applications\Supportworks Server\HttpAliases";

/// The `_Global` key with a value of every type regedit writes, in two versions: `changed`
/// gives every value a new content.
fn global_key(changed: bool) -> String {
    let values = if changed {
        [
            r#"@="default two""#,
            r#""sw"="C:\\Hornbill\\portal""#,
            r#""path"=hex(2):25,00,53,00,58,00,25,00,00,00"#,
            r#""hosts"=hex(7):61,00,00,00,62,00,00,00,63,00,00,00,00,00"#,
            r#""port"=dword:00000002"#,
            r#""big"=hex(b):02,00,00,00,00,00,00,00"#,
            r#""blob"=hex:be,ef"#,
            r#""none"=hex(0):01"#,
        ]
    } else {
        [
            r#"@="default""#,
            r#""sw"="C:\\Hornbill\\html""#,
            r#""path"=hex(2):25,00,53,00,57,00,25,00,00,00"#,
            r#""hosts"=hex(7):61,00,00,00,62,00,00,00,00,00"#,
            r#""port"=dword:00001397"#,
            r#""big"=hex(b):01,00,00,00,00,00,00,00"#,
            r#""blob"=hex:de,ad,be,ef"#,
            r#""none"=hex(0):"#,
        ]
    };
    format!("[{GLOBAL}]\n{}\n", values.join("\n"))
}

fn portal_subkey() -> String {
    format!("[{GLOBAL}\\portal]\n\"dir\"=\"C:\\\\Hornbill\\\\portal\"\n")
}

fn server_key(extra: &str) -> String {
    format!("[{SERVER}]\n\"selfservice\"=\"C:\\\\Hornbill\\\\ss\"\n{extra}")
}

fn reg_text(sections: &[String]) -> String {
    format!(
        "Windows Registry Editor Version 5.00\n\n{}",
        sections.join("\n")
    )
}

/// Replaces `path` in one step (temporary file, then rename), as a careful editor saves.
fn write_reg(path: &Path, text: &str) {
    let temp = path.with_extension("reg.tmp");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `swrepl registry diff a b` (exit 0 equal, 1 different).
fn reg_diff(a: &Path, b: &Path) -> std::process::Output {
    run(&["registry", "diff", path_str(a), path_str(b)])
}

fn same_keys(a: &Path, b: &Path) -> bool {
    b.exists() && reg_diff(a, b).status.code() == Some(0)
}

/// Polls until the Slave's file holds exactly the Master's keys (throttled: each check is a
/// process).
fn wait_in_step(what: &str, master: &Path, slave: &Path) {
    wait_until(what, || {
        let same = same_keys(master, slave);
        if !same {
            std::thread::sleep(Duration::from_millis(200));
        }
        same
    });
}

/// The registry archives the receiver wrote (`registry-<UTC>.reg`).
fn registry_archives(archive: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(archive) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("registry-") && name.ends_with(".reg")
        })
        .collect()
}

/// Whether one of the archives restores exactly the state in `previous`.
fn archived(archive: &Path, previous: &Path) -> bool {
    registry_archives(archive)
        .iter()
        .any(|a| reg_diff(a, previous).status.code() == Some(0))
}

struct Lab {
    pair: Pair,
    master_reg: PathBuf,
    slave_reg: PathBuf,
}

impl Lab {
    fn new(master_text: &str) -> Lab {
        let pair = Pair::new();
        common::write(&pair.master, "conf/swserver.xml", b"<server/>\n");
        let master_reg = pair.tmp.path().join("master.reg");
        let slave_reg = pair.tmp.path().join("slave.reg");
        write_reg(&master_reg, master_text);
        Lab {
            pair,
            master_reg,
            slave_reg,
        }
    }

    fn archive(&self) -> PathBuf {
        self.pair.slave.join(".swrepl/archive")
    }

    fn registry_flag<'a>(&self, path: &'a Path) -> [&'a str; 2] {
        ["--registry-file", path_str(path)]
    }
}

#[test]
fn initial_replication_writes_the_keys_on_the_slave_and_archives_the_old_state() {
    let lab = Lab::new(&reg_text(&[
        global_key(false),
        portal_subkey(),
        server_key(""),
    ]));
    // The Slave starts with a stale alias that the Master no longer has.
    write_reg(
        &lab.slave_reg,
        &reg_text(&[format!("[{SERVER}]\n\"stale\"=\"old\"\n")]),
    );
    let before = lab.pair.tmp.path().join("slave-before.reg");
    std::fs::copy(&lab.slave_reg, &before).unwrap();
    let _receiver = lab.pair.start_receiver(&lab.registry_flag(&lab.slave_reg));

    let out = lab.pair.send_once(&lab.registry_flag(&lab.master_reg));
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("registry changes"),
        "{}",
        stdout(&out)
    );

    let diff = reg_diff(&lab.master_reg, &lab.slave_reg);
    assert_eq!(diff.status.code(), Some(0), "{}", stdout(&diff));
    assert!(
        archived(&lab.archive(), &before),
        "no archive restores the Slave's previous keys: {:?}",
        registry_archives(&lab.archive())
    );
    lab.pair.assert_identical();

    // A second run has nothing to change and archives nothing more.
    let archives = registry_archives(&lab.archive()).len();
    let out = lab.pair.send_once(&lab.registry_flag(&lab.master_reg));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(registry_archives(&lab.archive()).len(), archives);
}

#[test]
fn watched_registry_edits_replicate_value_by_value_and_key_by_key() {
    let lab = Lab::new(&reg_text(&[
        global_key(false),
        portal_subkey(),
        server_key(""),
    ]));
    let _receiver = lab.pair.start_receiver(&lab.registry_flag(&lab.slave_reg));
    let _sender = lab.pair.spawn_sender(&lab.registry_flag(&lab.master_reg));
    wait_in_step(
        "initial registry replication",
        &lab.master_reg,
        &lab.slave_reg,
    );

    let previous = lab.pair.tmp.path().join("previous.reg");
    let steps = [
        (
            "a value added",
            reg_text(&[
                global_key(false),
                portal_subkey(),
                server_key("\"helpdesk\"=\"C:\\\\Hornbill\\\\hd\"\n"),
            ]),
        ),
        (
            "a value of every type changed",
            reg_text(&[
                global_key(true),
                portal_subkey(),
                server_key("\"helpdesk\"=\"C:\\\\Hornbill\\\\hd\"\n"),
            ]),
        ),
        (
            "a value deleted",
            reg_text(&[global_key(true), portal_subkey(), server_key("")]),
        ),
        (
            "a subkey deleted",
            reg_text(&[global_key(true), server_key("")]),
        ),
    ];
    for (what, text) in steps {
        std::fs::copy(&lab.master_reg, &previous).unwrap();
        write_reg(&lab.master_reg, &text);
        wait_in_step(what, &lab.master_reg, &lab.slave_reg);
        assert!(
            archived(&lab.archive(), &previous),
            "{what}: the Slave's previous keys were not archived"
        );
    }
}

#[test]
fn a_change_outside_the_receivers_keys_is_refused_and_nothing_is_written() {
    let lab = Lab::new(&reg_text(&[global_key(false), server_key("")]));
    let slave_text = reg_text(&[
        "[HKEY_LOCAL_MACHINE\\Software\\Hornbill\\Other]\n\"keep\"=\"me\"\n".to_string(),
    ]);
    write_reg(&lab.slave_reg, &slave_text);
    let before = std::fs::read(&lab.slave_reg).unwrap();
    let mut receiver_args = lab.registry_flag(&lab.slave_reg).to_vec();
    receiver_args.extend([
        "--registry-key",
        r"HKEY_LOCAL_MACHINE\Software\Hornbill\Other",
    ]);
    let _receiver = lab.pair.start_receiver(&receiver_args);

    let out = lab.pair.send_once(&lab.registry_flag(&lab.master_reg));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("refused by the receiver"), "{err}");
    assert!(err.contains("HttpAliases"), "{err}");
    assert_eq!(std::fs::read(&lab.slave_reg).unwrap(), before);
    assert!(registry_archives(&lab.archive()).is_empty());
    // The files went through all the same.
    lab.pair.assert_identical();
}

#[test]
fn a_receiver_without_registry_replication_is_reported_by_the_sender() {
    let lab = Lab::new(&reg_text(&[global_key(false)]));
    let _receiver = lab.pair.start_receiver(&[]);
    let out = lab.pair.send_once(&lab.registry_flag(&lab.master_reg));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("replicates no registry keys"),
        "{}",
        stderr(&out)
    );
    lab.pair.assert_identical();
}

#[test]
fn a_malformed_registry_file_stops_the_sender_at_start_naming_the_line() {
    let lab = Lab::new(
        "Windows Registry Editor Version 5.00\n\n[HKEY_LOCAL_MACHINE\\Software]\n\"x\"=hex:0g\n",
    );
    let out = lab.pair.send_once(&lab.registry_flag(&lab.master_reg));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("master.reg") && err.contains("line 4"),
        "{err}"
    );
}

#[test]
fn verify_compares_two_registry_files() {
    let lab = Lab::new(&reg_text(&[global_key(false), server_key("")]));
    write_reg(
        &lab.slave_reg,
        &reg_text(&[global_key(true), server_key("")]),
    );
    let out = run(&[
        "verify",
        "--registry",
        path_str(&lab.master_reg),
        path_str(&lab.slave_reg),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    // Eight values differ: one line each, naming the key.
    assert_eq!(lines.len(), 8, "{lines:?}");
    assert!(
        lines.iter().all(|l| l.starts_with("registry: ~ value [")),
        "{lines:?}"
    );

    std::fs::copy(&lab.master_reg, &lab.slave_reg).unwrap();
    let out = run(&[
        "verify",
        path_str(&lab.pair.master),
        path_str(&lab.pair.master),
        "--registry",
        path_str(&lab.master_reg),
        path_str(&lab.slave_reg),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("registry identical: 2 keys"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn verify_connect_compares_the_local_keys_with_the_receivers() {
    let lab = Lab::new(&reg_text(&[global_key(false), server_key("")]));
    write_reg(
        &lab.slave_reg,
        &reg_text(&[server_key("\"extra\"=\"x\"\n")]),
    );
    let _receiver = lab.pair.start_receiver(&lab.registry_flag(&lab.slave_reg));
    let verify = || {
        run(&[
            "verify",
            "--root",
            path_str(&lab.pair.master),
            "--connect",
            &lab.pair.addr(),
            "--identity",
            path_str(&lab.pair.master_id),
            "--trust",
            &lab.pair.slave_fp,
            "--registry-file",
            path_str(&lab.master_reg),
        ])
    };

    let out = verify();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(
        text.contains(&format!("registry: + key [{GLOBAL}]")),
        "{text}"
    );
    assert!(
        text.contains(&format!("registry: - value [{SERVER}] \"extra\"")),
        "{text}"
    );

    let out = lab.pair.send_once(&lab.registry_flag(&lab.master_reg));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = verify();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("registry identical"),
        "{}",
        stdout(&out)
    );
}
