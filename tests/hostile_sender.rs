//! A hostile (or broken) sender speaking the protocol by hand against a real receiver process:
//! every path it should not write is refused, and nothing lands outside the root.

mod common;

use std::time::Duration;

use common::*;
use swrepl_net::{FramedStream, Identity};
use swrepl_proto::{Attributes, ChunkRef, EntryKind, FileEntry, Message, Role};

fn file_entry(path: &str, content: &[u8]) -> FileEntry {
    let hash = *blake3::hash(content).as_bytes();
    FileEntry {
        path: path.to_string(),
        kind: EntryKind::File,
        size: content.len() as u64,
        mtime_ns: 1_700_000_000_000_000_000,
        attributes: Attributes {
            unix_mode: 0o644,
            windows: 0,
        },
        chunks: vec![ChunkRef {
            hash,
            len: content.len() as u32,
        }],
        file_hash: hash,
    }
}

async fn connect_as_sender(pair: &Pair) -> FramedStream {
    let identity = Identity::load(&pair.master_id).unwrap();
    let trusted = [pair.slave_fp.parse().unwrap()];
    let mut stream =
        swrepl_net::connect(&pair.addr(), &identity, &trusted, Duration::from_secs(30))
            .await
            .unwrap();
    stream
        .send(&Message::Hello(swrepl_proto::hello(
            Role::Sender,
            "hostile test",
        )))
        .await
        .unwrap();
    match stream.recv().await.unwrap() {
        Some(Message::Welcome(_)) => stream,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

/// The next message that is neither a heartbeat nor an acknowledgement.
async fn next_verdict(stream: &mut FramedStream) -> Option<Message> {
    loop {
        let msg = next(stream).await;
        if !matches!(msg, Some(Message::Ack { .. })) {
            return msg;
        }
    }
}

/// The next message that is not a heartbeat.
async fn next(stream: &mut FramedStream) -> Option<Message> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), stream.recv())
            .await
            .expect("receiver answered")
            .ok()?;
        if !matches!(msg, Some(Message::Heartbeat(_))) {
            return msg;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_outside_the_root_or_excluded_are_refused() {
    let pair = Pair::new();
    let outside = pair.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&outside, pair.slave.join("evil")).unwrap();
    let _receiver = pair.start_receiver(&[]);
    let mut stream = connect_as_sender(&pair).await;

    let hostile = [
        "../escape.txt",
        "a/../../escape.txt",
        "/etc/escape.txt",
        "C:/escape.txt",
        "a\\..\\..\\escape.txt",
        "file.txt:stream",
        "CON",
        "Core Services/SwSqlServer/data/opencall.MYD",
        "core services/swsqlserver/DATA/opencall.MYD",
        ".swrepl/receiver-index.db",
    ];
    let mut seq = 0;
    for path in hostile {
        seq += 1;
        stream
            .send(&Message::Upsert {
                seq,
                entry: file_entry(path, b"pwned"),
            })
            .await
            .unwrap();
        match next_verdict(&mut stream).await {
            Some(Message::Refused {
                seq: s,
                path: p,
                reason,
            }) => {
                assert_eq!((s, p.as_str()), (seq, path), "{reason}");
            }
            other => panic!("{path:?} was not refused: {other:?}"),
        }
    }
    seq += 1;
    stream
        .send(&Message::Delete {
            seq,
            path: "../outside".into(),
        })
        .await
        .unwrap();
    assert!(matches!(
        next_verdict(&mut stream).await,
        Some(Message::Refused { .. })
    ));
    seq += 1;
    let mut link = file_entry("link", b"");
    link.kind = EntryKind::Symlink {
        target: "../../outside".into(),
    };
    link.chunks.clear();
    link.size = 0;
    stream
        .send(&Message::Upsert { seq, entry: link })
        .await
        .unwrap();
    assert!(matches!(
        next_verdict(&mut stream).await,
        Some(Message::Refused { .. })
    ));

    // Through a link planted on the Slave behind swrepl's back: written inside the root or not at all.
    seq += 1;
    stream
        .send(&Message::Upsert {
            seq,
            entry: file_entry("evil/x.txt", b"inside"),
        })
        .await
        .unwrap();
    loop {
        match next(&mut stream).await {
            Some(Message::NeedChunks { seq: s, indices }) => {
                assert_eq!((s, indices), (seq, vec![0]));
                stream
                    .send(&Message::ChunkData {
                        seq,
                        index: 0,
                        data: b"inside".to_vec(),
                    })
                    .await
                    .unwrap();
            }
            Some(Message::Ack { seq: s }) if s == seq => break,
            Some(Message::Ack { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside the root"
    );
    assert_eq!(
        std::fs::read(pair.slave.join("evil/x.txt")).unwrap(),
        b"inside"
    );
    assert!(!pair.tmp.path().join("escape.txt").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn chunk_data_that_does_not_match_its_hash_ends_the_session_and_writes_nothing() {
    let pair = Pair::new();
    let mut receiver = pair.start_receiver(&[]);
    let mut stream = connect_as_sender(&pair).await;
    stream
        .send(&Message::Upsert {
            seq: 1,
            entry: file_entry("ok.txt", b"hello"),
        })
        .await
        .unwrap();
    assert_eq!(
        next(&mut stream).await,
        Some(Message::NeedChunks {
            seq: 1,
            indices: vec![0]
        })
    );
    stream
        .send(&Message::ChunkData {
            seq: 1,
            index: 0,
            data: b"HELLO".to_vec(),
        })
        .await
        .unwrap();
    match next(&mut stream).await {
        Some(Message::Error { code, .. }) => {
            assert_eq!(code, swrepl_proto::ErrorCode::ProtocolViolation)
        }
        other => panic!("expected a protocol violation, got {other:?}"),
    }
    assert!(!pair.slave.join("ok.txt").exists());
    assert!(
        receiver.is_running(),
        "one bad session does not stop the receiver"
    );

    // Out-of-order sequence numbers are a violation too.
    let mut stream = connect_as_sender(&pair).await;
    stream
        .send(&Message::Upsert {
            seq: 5,
            entry: file_entry("ok.txt", b"hello"),
        })
        .await
        .unwrap();
    assert!(matches!(
        next(&mut stream).await,
        Some(Message::Error { .. }) | None
    ));
    assert!(!pair.slave.join("ok.txt").exists());
}

// ---------------------------------------------------------------------------------------------
// The campaign of issue 8 part 3: many path vectors, inconsistent lengths, type changes, forged
// registry changes. After each, nothing is outside the root and a real sender still replicates.

/// What the receiver made of one upsert.
#[derive(Debug)]
enum Verdict {
    Refused(String),
    Applied,
}

/// Sends `entry` as change `seq`, supplies the chunks asked for, and reports the verdict.
async fn offer(stream: &mut FramedStream, seq: u64, entry: FileEntry, content: &[u8]) -> Verdict {
    stream.send(&Message::Upsert { seq, entry }).await.unwrap();
    loop {
        match next(stream).await {
            Some(Message::Refused { seq: s, reason, .. }) if s == seq => {
                return Verdict::Refused(reason)
            }
            Some(Message::NeedChunks { seq: s, indices }) if s == seq => {
                for index in indices {
                    stream
                        .send(&Message::ChunkData {
                            seq,
                            index,
                            data: content.to_vec(),
                        })
                        .await
                        .unwrap();
                }
            }
            Some(Message::Ack { seq: s }) if s >= seq => return Verdict::Applied,
            Some(Message::Ack { .. }) | Some(Message::RegistrySnapshot(_)) => {}
            other => panic!("unexpected answer to change {seq}: {other:?}"),
        }
    }
}

/// Every file under `dir` (recursively), as paths relative to it.
fn all_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out
}

/// Nothing in the temp dir outside the Slave and Master trees but what the harness made.
fn assert_nothing_outside(pair: &Pair) {
    for rel in all_files(pair.tmp.path()) {
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let expected = [
            "master",
            "slave",
            "master-id",
            "slave-id",
            "outside",
            "slave.reg",
        ]
        .contains(&first.as_ref())
            || first.ends_with(".log");
        assert!(expected, "written outside the root: {}", rel.display());
    }
    if let Ok(entries) = std::fs::read_dir(pair.tmp.path().join("outside")) {
        assert_eq!(entries.count(), 0, "written into the outside folder");
    }
}

/// A legitimate `send --once` still replicates after the hostile session.
fn assert_real_sender_replicates(pair: &Pair) {
    write(&pair.master, "after/legit.txt", b"still serving");
    // The hostile session left entries the Master does not have: the pass may remove them all.
    let out = pair.send_once(&["--allow-mass-delete"]);
    assert!(
        out.status.success(),
        "legit sender failed: {}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(pair.slave.join("after/legit.txt")).unwrap(),
        b"still serving"
    );
}

/// Paths every receiver must refuse, whatever the platform.
fn refused_paths() -> Vec<String> {
    let mut paths: Vec<String> = [
        "\\\\?\\C:\\escape.txt",
        "\\\\?\\UNC\\server\\share\\x",
        "\\\\server\\share\\escape.txt",
        "//server/share/escape.txt",
        "C:escape.txt",
        "c:",
        "C:\\Windows\\escape.txt",
        "a:b",
        "dir/file.txt:Zone.Identifier",
        "file.txt::$DATA",
        "con.txt",
        "NUL.tar.gz",
        "COM1",
        "LPT1.log",
        "dir/aux",
        "prn.",
        "Com\u{b9}.txt",
        "CONIN$",
        "trailing.",
        "trailing ",
        "dir./x.txt",
        "dir /x.txt",
        "nul\0byte.txt",
        "\0",
        "tab\there",
        "new\nline",
        "a|b",
        "a*b",
        "what?",
        "<x>",
        "\"quoted\"",
        "",
        "/",
        "a//b",
        "a/./b",
        "./a",
        "a/",
        "..",
        "a/..",
        ".SWREPL/archive/x",
        ".swrepl/staging/1.part",
        ".Swrepl/receiver-index.db",
        ".swrepl/state",
        ".swrepl",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    paths.push("x".repeat(256));
    paths.push(format!("{}/f", "d".repeat(255)).repeat(20)); // 5 140 bytes, each name legal
    paths.push(format!("{}f.txt", "d/".repeat(2100)));
    paths
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_and_more_hostile_paths_are_refused_with_a_logged_reason() {
    let pair = Pair::new();
    std::fs::create_dir_all(pair.tmp.path().join("outside")).unwrap();
    let receiver = pair.start_receiver(&[]);
    let mut stream = connect_as_sender(&pair).await;
    let paths = refused_paths();
    assert!(paths.len() >= 30);
    let mut seq = 0;
    for path in &paths {
        seq += 1;
        match offer(&mut stream, seq, file_entry(path, b"pwned"), b"pwned").await {
            Verdict::Refused(reason) => assert!(!reason.is_empty()),
            Verdict::Applied => panic!("{path:?} was applied"),
        }
    }
    // Deletes and renames are held to the same rules, on both of their paths.
    for path in ["../outside", ".SWREPL", "C:x", "a:b"] {
        seq += 1;
        stream
            .send(&Message::Delete {
                seq,
                path: path.into(),
            })
            .await
            .unwrap();
        assert!(
            matches!(
                next_verdict(&mut stream).await,
                Some(Message::Refused { .. })
            ),
            "delete of {path:?}"
        );
    }
    seq += 1;
    stream
        .send(&Message::Rename {
            seq,
            from: ".swrepl/receiver-index.db".into(),
            entry: file_entry("stolen.db", b"x"),
        })
        .await
        .unwrap();
    assert!(matches!(
        next_verdict(&mut stream).await,
        Some(Message::Refused { .. })
    ));
    drop(stream);
    wait_until("every refusal logged", || {
        receiver.log_text().matches("refused").count() >= paths.len() + 5
    });
    assert!(receiver.log_text().contains("reserved Windows device name"));
    assert!(std::fs::read_dir(&pair.slave)
        .unwrap()
        .flatten()
        .all(|e| e.file_name() == ".swrepl"));
    assert_nothing_outside(&pair);
    assert_real_sender_replicates(&pair);
}

#[tokio::test(flavor = "multi_thread")]
async fn unicode_look_alikes_and_collisions_stay_inside_the_root_under_their_own_names() {
    let pair = Pair::new();
    let _receiver = pair.start_receiver(&[]);
    let mut stream = connect_as_sender(&pair).await;
    let look_alikes = [
        "\u{2024}\u{2024}/one-dot-leaders.txt",
        "\u{ff0e}\u{ff0e}\u{ff0f}fullwidth.txt",
        "a\u{2215}..\u{2215}division-slash.txt",
        "\u{2025}/two-dot-leader.txt",
        "caf\u{e9}.txt",
        "cafe\u{301}.txt",
        "Readme.txt",
        "README.txt",
        "\u{17f}wrepl/long-s.txt",
    ];
    let mut seq = 0;
    for path in look_alikes {
        seq += 1;
        let content = format!("content of {path}");
        match offer(
            &mut stream,
            seq,
            file_entry(path, content.as_bytes()),
            content.as_bytes(),
        )
        .await
        {
            Verdict::Refused(_) => assert!(!pair.slave.join(path).exists()),
            Verdict::Applied => assert_eq!(
                std::fs::read(pair.slave.join(path)).unwrap(),
                content.as_bytes(),
                "{path:?} written under its own name"
            ),
        }
    }
    drop(stream);
    assert_nothing_outside(&pair);
    assert_real_sender_replicates(&pair);
}

fn link_entry(path: &str, target: &str) -> FileEntry {
    let mut link = file_entry(path, b"");
    link.kind = EntryKind::Symlink {
        target: target.into(),
    };
    link.chunks.clear();
    link.size = 0;
    link
}

fn dir_entry(path: &str) -> FileEntry {
    let mut dir = file_entry(path, b"");
    dir.kind = EntryKind::Dir;
    dir.chunks.clear();
    dir.size = 0;
    dir.attributes.unix_mode = 0o755;
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn links_out_of_the_root_or_into_its_state_are_refused_and_never_written_through() {
    let pair = Pair::new();
    std::fs::create_dir_all(pair.tmp.path().join("outside")).unwrap();
    let _receiver = pair.start_receiver(&[]);
    let index_before = std::fs::read(pair.slave.join(".swrepl/receiver-index.db")).ok();
    let mut stream = connect_as_sender(&pair).await;
    let mut seq = 0;
    for (path, target) in [
        ("out1", "/etc"),
        ("out2", "C:\\Windows"),
        ("out3", "C:/Windows"),
        ("a/out4", "../../outside"),
        ("out5", "a/../../outside"),
        ("out6", "..\\outside"),
        ("out7", "\\\\server\\share"),
        ("out8", "nul\0"),
        ("state1", ".swrepl"),
        ("state2", ".SWREPL/archive"),
        ("a/state3", "../.swrepl/staging"),
    ] {
        seq += 1;
        match offer(&mut stream, seq, link_entry(path, target), b"").await {
            Verdict::Refused(_) => {}
            Verdict::Applied => panic!("link {path:?} -> {target:?} was applied"),
        }
    }
    // A link to the root itself is harmless, but nothing may be written through it into the
    // state directory.
    seq += 1;
    let verdict = offer(&mut stream, seq, link_entry("root", "."), b"").await;
    eprintln!("link to the root: {verdict:?}");
    for path in [
        "root/.swrepl/receiver-index.db",
        "root/.swrepl/archive/planted.txt",
        "state1/receiver-index.db",
    ] {
        seq += 1;
        let verdict = offer(&mut stream, seq, file_entry(path, b"pwned"), b"pwned").await;
        eprintln!("{path:?}: {verdict:?}");
    }
    drop(stream);
    // Whatever was accepted went into real directories inside the tree, not through the links.
    for dir in ["root", "state1"] {
        if let Ok(meta) = pair.slave.join(dir).symlink_metadata() {
            assert!(
                meta.is_dir(),
                "{dir} is still a link that was written through"
            );
        }
    }
    assert!(!pair.slave.join(".swrepl/archive/planted.txt").exists());
    let index_after = std::fs::read(pair.slave.join(".swrepl/receiver-index.db")).ok();
    assert!(index_after.is_some() && index_after != Some(b"pwned".to_vec()));
    let _ = index_before;
    assert_nothing_outside(&pair);
    assert_real_sender_replicates(&pair);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_path_changing_type_file_dir_link_file_ends_as_the_last_message_says() {
    let pair = Pair::new();
    let _receiver = pair.start_receiver(&[]);
    let mut stream = connect_as_sender(&pair).await;
    let mut seq = 1;
    assert!(matches!(
        offer(&mut stream, seq, file_entry("morph", b"v1"), b"v1").await,
        Verdict::Applied
    ));
    assert!(pair.slave.join("morph").is_file());
    seq += 1;
    assert!(matches!(
        offer(&mut stream, seq, dir_entry("morph"), b"").await,
        Verdict::Applied
    ));
    seq += 1;
    offer(&mut stream, seq, file_entry("morph/child", b"c"), b"c").await;
    assert!(pair.slave.join("morph").is_dir());
    seq += 1;
    assert!(matches!(
        offer(&mut stream, seq, link_entry("morph", "target.txt"), b"").await,
        Verdict::Applied
    ));
    assert!(pair
        .slave
        .join("morph")
        .symlink_metadata()
        .unwrap()
        .is_symlink());
    // A link turned into a directory, then a file written inside it: into a real directory.
    seq += 1;
    offer(&mut stream, seq, link_entry("morph2", "morph"), b"").await;
    seq += 1;
    offer(&mut stream, seq, file_entry("morph2/inner", b"in"), b"in").await;
    assert!(!pair
        .slave
        .join("morph2")
        .symlink_metadata()
        .unwrap()
        .is_symlink());
    seq += 1;
    assert!(matches!(
        offer(&mut stream, seq, file_entry("morph", b"v2"), b"v2").await,
        Verdict::Applied
    ));
    assert_eq!(std::fs::read(pair.slave.join("morph")).unwrap(), b"v2");
    drop(stream);
    assert_nothing_outside(&pair);
    assert_real_sender_replicates(&pair);
}

#[tokio::test(flavor = "multi_thread")]
async fn inconsistent_lengths_are_refused_and_the_session_or_receiver_survives() {
    let pair = Pair::new();
    let mut receiver = pair.start_receiver(&[]);
    let mut stream = connect_as_sender(&pair).await;
    // Chunk lengths that do not sum to the size, an empty chunk, an oversized chunk: refused.
    let mut short = file_entry("short.txt", b"hello");
    short.size = 1 << 40;
    let mut empty_chunk = file_entry("empty-chunk.txt", b"hello");
    empty_chunk.chunks[0].len = 0;
    empty_chunk.size = 0;
    let mut huge_chunk = file_entry("huge-chunk.txt", b"hello");
    huge_chunk.chunks[0].len = 64 * 1024 * 1024;
    huge_chunk.size = 64 * 1024 * 1024;
    let mut dir_with_content = dir_entry("dir-with-content");
    dir_with_content.size = 5;
    for (seq, entry) in [short, empty_chunk, huge_chunk, dir_with_content]
        .into_iter()
        .enumerate()
    {
        let path = entry.path.clone();
        match offer(&mut stream, seq as u64 + 1, entry, b"hello").await {
            Verdict::Refused(_) => {}
            Verdict::Applied => panic!("{path:?} was applied"),
        }
    }
    drop(stream);

    // Session-ending violations: each gets an Error, writes nothing, and the receiver goes on.
    let violations: Vec<(&str, Vec<Message>)> = vec![
        (
            "chunk index out of range",
            vec![
                Message::Upsert {
                    seq: 1,
                    entry: file_entry("idx.txt", b"hello"),
                },
                Message::ChunkData {
                    seq: 1,
                    index: 7,
                    data: b"hello".to_vec(),
                },
            ],
        ),
        (
            "chunk data of the wrong length",
            vec![
                Message::Upsert {
                    seq: 1,
                    entry: file_entry("len.txt", b"hello"),
                },
                Message::ChunkData {
                    seq: 1,
                    index: 0,
                    data: b"hello, and more".to_vec(),
                },
            ],
        ),
        (
            "chunk data over the limit",
            vec![Message::ChunkData {
                seq: 1,
                index: 0,
                data: vec![0; 2 * 1024 * 1024],
            }],
        ),
        (
            "NeedChunks from the sender side",
            vec![Message::NeedChunks {
                seq: 1,
                indices: vec![0, u32::MAX],
            }],
        ),
        (
            "chunk data for a change never announced",
            vec![Message::ChunkData {
                seq: 99,
                index: 0,
                data: b"hello".to_vec(),
            }],
        ),
        ("an Ack from the sender side", vec![Message::Ack { seq: 1 }]),
    ];
    for (what, messages) in violations {
        let mut stream = connect_as_sender(&pair).await;
        for msg in messages {
            let _ = stream.send(&msg).await;
        }
        loop {
            match next(&mut stream).await {
                Some(Message::Error { code, message }) => {
                    assert_eq!(
                        code,
                        swrepl_proto::ErrorCode::ProtocolViolation,
                        "{what}: {message}"
                    );
                    break;
                }
                Some(Message::NeedChunks { .. }) => {}
                other => panic!("{what}: expected a protocol violation, got {other:?}"),
            }
        }
        assert!(receiver.is_running(), "{what} stopped the receiver");
    }
    // Chunks that match their hashes but assemble into something other than the whole-file
    // hash: refused, and the staging copy does not outlive the session.
    let mut stream = connect_as_sender(&pair).await;
    let mut lying = file_entry("lying.txt", b"hello");
    lying.file_hash = *blake3::hash(b"something else").as_bytes();
    stream
        .send(&Message::Upsert {
            seq: 1,
            entry: lying,
        })
        .await
        .unwrap();
    stream
        .send(&Message::ChunkData {
            seq: 1,
            index: 0,
            data: b"hello".to_vec(),
        })
        .await
        .unwrap();
    loop {
        match next(&mut stream).await {
            Some(Message::Error { code, .. }) => {
                assert_eq!(code, swrepl_proto::ErrorCode::ProtocolViolation);
                break;
            }
            Some(Message::NeedChunks { .. }) => {}
            other => panic!("a lying whole-file hash was not refused: {other:?}"),
        }
    }
    drop(stream);
    let staging = pair.slave.join(".swrepl/staging");
    wait_until("the failed change's staging file is removed", || {
        std::fs::read_dir(&staging).unwrap().count() == 0
    });
    for name in [
        "short.txt",
        "idx.txt",
        "len.txt",
        "huge-chunk.txt",
        "lying.txt",
    ] {
        assert!(!pair.slave.join(name).exists(), "{name} was written");
    }
    assert_nothing_outside(&pair);
    assert_real_sender_replicates(&pair);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_registry_change_outside_the_receivers_keys_is_refused() {
    use swrepl_proto::registry::{RegistryChangeSet, RegistryOp, RegistryValue};
    let pair = Pair::new();
    let slave_reg = pair.tmp.path().join("slave.reg");
    let receiver = pair.start_receiver(&["--registry-file", slave_reg.to_str().unwrap()]);
    let mut stream = connect_as_sender(&pair).await;
    let run_key = "HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run";
    let forged = [
        RegistryOp::SetValue {
            key: run_key.into(),
            value: RegistryValue {
                name: "pwned".into(),
                kind: 1,
                data: "c:\\evil.exe\0"
                    .encode_utf16()
                    .flat_map(|u| u.to_le_bytes())
                    .collect(),
            },
        },
        RegistryOp::DeleteKey {
            path: "HKEY_LOCAL_MACHINE\\SOFTWARE".into(),
        },
        RegistryOp::CreateKey {
            path: "HKEY_CURRENT_USER\\Software\\Evil".into(),
        },
    ];
    for (i, op) in forged.into_iter().enumerate() {
        let seq = i as u64 + 1;
        stream
            .send(&Message::RegistryChanges {
                seq,
                changes: RegistryChangeSet { ops: vec![op] },
            })
            .await
            .unwrap();
        loop {
            match next(&mut stream).await {
                Some(Message::Refused { seq: s, reason, .. }) if s == seq => {
                    assert!(!reason.is_empty());
                    break;
                }
                Some(Message::RegistrySnapshot(_)) | Some(Message::Ack { .. }) => {}
                other => panic!("forged registry change {seq} not refused: {other:?}"),
            }
        }
    }
    drop(stream);
    let reg = std::fs::read(&slave_reg).unwrap_or_default();
    let text = String::from_utf16_lossy(
        &reg.chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect::<Vec<_>>(),
    ) + &String::from_utf8_lossy(&reg);
    assert!(!text.contains("pwned") && !text.contains("Evil"), "{text}");
    wait_until("the refusal is logged", || {
        receiver.log_text().matches("refused").count() >= 3
    });
    assert_real_sender_replicates(&pair);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_announced_file_reserves_nothing_and_leaves_nothing_behind() {
    let pair = Pair::new();
    let mut receiver = pair.start_receiver(&[]);
    let mut stream = connect_as_sender(&pair).await;
    // 100 000 chunks of 1 MiB (the largest chunk allowed): a 100 GiB file, announced in a
    // 3.5 MB frame, whose data never comes.
    let chunks: Vec<ChunkRef> = (0..100_000u32)
        .map(|i| ChunkRef {
            hash: *blake3::hash(&i.to_le_bytes()).as_bytes(),
            len: 1024 * 1024,
        })
        .collect();
    let mut entry = file_entry("huge.bin", b"");
    entry.size = 100_000 * 1024 * 1024;
    entry.chunks = chunks;
    stream
        .send(&Message::Upsert { seq: 1, entry })
        .await
        .unwrap();
    match next(&mut stream).await {
        Some(Message::NeedChunks { seq: 1, indices }) => assert_eq!(indices.len(), 100_000),
        Some(Message::Refused { .. }) => {}
        other => panic!("unexpected answer: {other:?}"),
    }
    drop(stream);
    let staging = pair.slave.join(".swrepl/staging");
    wait_until("the abandoned file's staging copy is removed", || {
        std::fs::read_dir(&staging).unwrap().count() == 0
    });
    assert!(!pair.slave.join("huge.bin").exists());
    assert!(receiver.is_running());
    assert_real_sender_replicates(&pair);
}
