//! A sender that runs ahead without bound (changes announced, no data ever sent) is cut off
//! before the receiver runs out of file handles; the receiver keeps serving.

mod common;

use std::time::Duration;

use common::*;
use swrepl_net::Identity;
use swrepl_proto::{Attributes, ChunkRef, EntryKind, FileEntry, Message, Role};

#[tokio::test(flavor = "multi_thread")]
async fn unbounded_changes_in_flight_end_the_session() {
    let pair = Pair::new();
    let mut receiver = pair.start_receiver(&[]);
    let identity = Identity::load(&pair.master_id).unwrap();
    let trusted = [pair.slave_fp.parse().unwrap()];
    let mut stream =
        swrepl_net::connect(&pair.addr(), &identity, &trusted, Duration::from_secs(30))
            .await
            .unwrap();
    stream
        .send(&Message::Hello(swrepl_proto::hello(Role::Sender, "flood")))
        .await
        .unwrap();
    assert!(matches!(
        stream.recv().await.unwrap(),
        Some(Message::Welcome(_))
    ));

    let (reader, mut writer) = stream.split();
    let flood = tokio::spawn(async move {
        for seq in 1..=20_000u64 {
            let content = seq.to_le_bytes();
            let hash = *blake3::hash(&content).as_bytes();
            let entry = FileEntry {
                path: format!("flood/{seq}.bin"),
                kind: EntryKind::File,
                size: 8,
                mtime_ns: 0,
                attributes: Attributes::default(),
                chunks: vec![ChunkRef { hash, len: 8 }],
                file_hash: hash,
            };
            if writer.feed(&Message::Upsert { seq, entry }).await.is_err() {
                return seq;
            }
        }
        let _ = writer.flush().await;
        20_000
    });
    let mut reader = reader;
    let verdict = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match reader.recv().await {
                Ok(Some(Message::Error { message, .. })) => return Some(message),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the receiver answered");
    let message = verdict.expect("the receiver reported why it ended the session");
    assert!(message.contains("not yet applied"), "{message}");
    let _ = flood.await;
    assert!(receiver.is_running(), "the receiver keeps serving");

    // A legitimate sender still replicates.
    write(&pair.master, "ok.txt", b"fine");
    let out = pair.send_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(pair.slave.join("ok.txt")).unwrap(), b"fine");
}
