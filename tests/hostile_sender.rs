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
