//! Golden vectors: the exact bytes of one frame (length prefix + postcard body) per message.
//!
//! These freeze the wire format of protocol version 1. A failing test here means the bytes on the
//! wire changed: that is a new protocol version (see SPEC.md, "Versioning"), never a test to
//! update. Every `Message` variant has at least one vector, and every variant of the enums it
//! carries (`Role`, `EntryKind`, `Prune`, `ServiceState`, `ErrorCode`, `Option`) appears in one.

use swrepl_proto::{
    decode_message, encode_frame, Attributes, ChunkRef, EntryKind, ErrorCode, FileEntry,
    FrameDecoder, Hash, Heartbeat, Hello, Message, Prune, Role, ServiceState, ServiceStatus,
    Welcome, MAGIC,
};

/// A recognisable fake blake3 hash: `first, first+1, …, first+31`.
fn hash_from(first: u8) -> Hash {
    std::array::from_fn(|i| first.wrapping_add(i as u8))
}

/// `Core Services/SwSqlServer/Bin/Swsql.ini`, 71 234 bytes in two chunks.
fn ini_file() -> FileEntry {
    FileEntry {
        path: "Core Services/SwSqlServer/Bin/Swsql.ini".into(),
        kind: EntryKind::File,
        size: 71_234,
        mtime_ns: 1_700_000_000_123_456_789,
        attributes: Attributes {
            unix_mode: 0o644,
            windows: 0x20,
        },
        chunks: vec![
            ChunkRef {
                hash: hash_from(0x00),
                len: 70_000,
            },
            ChunkRef {
                hash: hash_from(0x20),
                len: 1_234,
            },
        ],
        file_hash: hash_from(0xa0),
    }
}

fn blake3_of_empty() -> Hash {
    // blake3("") = af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262
    [
        0xaf, 0x13, 0x49, 0xb9, 0xf5, 0xf9, 0xa1, 0xa6, 0xa0, 0x40, 0x4d, 0xea, 0x36, 0xdc, 0xc9,
        0x49, 0x9b, 0xcb, 0x25, 0xc9, 0xad, 0xc1, 0x12, 0xb7, 0xcc, 0x9a, 0x93, 0xca, 0xe4, 0x1f,
        0x32, 0x62,
    ]
}

/// A directory entry with a Windows-only attribute set and a unicode name.
fn dir_entry() -> FileEntry {
    FileEntry {
        path: "Übersicht/日本".into(),
        kind: EntryKind::Dir,
        size: 0,
        mtime_ns: 1_600_000_000_000_000_000,
        attributes: Attributes {
            unix_mode: 0,
            windows: 0x10 | 0x02,
        },
        chunks: vec![],
        file_hash: blake3_of_empty(),
    }
}

/// A link inside the root, with a modification time before 1970 (negative: zigzag encoded).
fn symlink_entry() -> FileEntry {
    FileEntry {
        path: "html/current".into(),
        kind: EntryKind::Symlink {
            target: "../releases/7.2".into(),
        },
        size: 0,
        mtime_ns: -86_400_000_000_000,
        attributes: Attributes {
            unix_mode: 0o777,
            windows: 0,
        },
        chunks: vec![],
        file_hash: blake3_of_empty(),
    }
}

fn heartbeat(state: Option<ServiceState>) -> Message {
    Message::Heartbeat(Heartbeat {
        unix_ms: 1_700_000_000_123,
        service: state.map(|state| ServiceStatus {
            name: "SwServerService".into(),
            state,
        }),
    })
}

fn error(code: ErrorCode, message: &str) -> Message {
    Message::Error {
        code,
        message: message.into(),
    }
}

/// (name, message, frame as lowercase hex)
fn vectors() -> Vec<(&'static str, Message, &'static str)> {
    vec![
        (
            "hello_sender",
            Message::Hello(Hello {
                magic: MAGIC,
                min_version: 1,
                max_version: 1,
                role: Role::Sender,
                software: "swrepl 0.1.0".into(),
            }),
            "000000190053575245504c0d0a0101000c73777265706c20302e312e30",
        ),
        (
            "hello_verifier",
            Message::Hello(Hello {
                magic: MAGIC,
                min_version: 1,
                max_version: 300,
                role: Role::Verifier,
                software: "swrepl 0.1.0".into(),
            }),
            "0000001a0053575245504c0d0a01ac02020c73777265706c20302e312e30",
        ),
        (
            "welcome_receiver",
            Message::Welcome(Welcome { version: 1, role: Role::Receiver, software: "swrepl 0.1.0".into() }),
            "000000100101010c73777265706c20302e312e30",
        ),
        ("pass_begin_full", Message::PassBegin { pass: 7, full: true }, "00000003020701"),
        ("pass_begin_incremental", Message::PassBegin { pass: 8, full: false }, "00000003020800"),
        ("upsert_file", Message::Upsert { seq: 42, entry: ini_file() }, "000000a0032a27436f72652053657276696365732f537753716c5365727665722f42696e2f537773716c2e696e6900c2ac04aab4aed8c7bfce972fa4032002000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1ff0a204202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3fd209a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"),
        ("upsert_symlink", Message::Upsert { seq: 300, entry: symlink_entry() }, "0000004d03ac020c68746d6c2f63757272656e74020f2e2e2f72656c65617365732f372e3200fffff79492a527ff030000af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"),
        ("delete", Message::Delete { seq: 43, path: "Supportworks Server/log/old.log".into() }, "00000022042b1f537570706f7274776f726b73205365727665722f6c6f672f6f6c642e6c6f67"),
        (
            "rename",
            Message::Rename {
                seq: 44,
                from: "Core Services/SwSqlServer/Bin/Swsql.ini.new".into(),
                entry: ini_file(),
            },
            "000000cc052c2b436f72652053657276696365732f537753716c5365727665722f42696e2f537773716c2e696e692e6e657727436f72652053657276696365732f537753716c5365727665722f42696e2f537773716c2e696e6900c2ac04aab4aed8c7bfce972fa4032002000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1ff0a204202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3fd209a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf",
        ),
        ("need_chunks", Message::NeedChunks { seq: 42, indices: vec![0, 1, 200] }, "00000007062a030001c801"),
        (
            "chunk_data",
            Message::ChunkData { seq: 42, index: 1, data: b"[mysqld]\r\nport=5002\r\n".to_vec() },
            "00000019072a01155b6d7973716c645d0d0a706f72743d353030320d0a",
        ),
        (
            "file_unavailable",
            Message::FileUnavailable { seq: 45, reason: "file changed while being read".into() },
            "00000020082d1d66696c65206368616e676564207768696c65206265696e672072656164",
        ),
        ("pass_end_never", Message::PassEnd { pass: 7, entries: 12_345, prune: Prune::Never }, "000000050907b96000"),
        (
            "pass_end_permille",
            Message::PassEnd { pass: 7, entries: 12_345, prune: Prune::UpToPermille(200) },
            "000000070907b96001c801",
        ),
        ("pass_end_all", Message::PassEnd { pass: 9, entries: 3, prune: Prune::All }, "0000000409090302"),
        ("ack", Message::Ack { seq: 44 }, "000000020a2c"),
        (
            "refused",
            Message::Refused {
                seq: 46,
                path: "../Windows/win.ini".into(),
                reason: "path has a '.' or '..' component".into(),
            },
            "000000360b2e122e2e2f57696e646f77732f77696e2e696e69207061746820686173206120272e27206f7220272e2e2720636f6d706f6e656e74",
        ),
        ("pass_done", Message::PassDone { pass: 7, pruned: 3, held: 0 }, "000000040c070300"),
        ("heartbeat_none", heartbeat(None), "000000080dfbd095ffbc3100"),
        ("heartbeat_running", heartbeat(Some(ServiceState::Running)), "000000190dfbd095ffbc31010f53775365727665725365727669636500"),
        ("heartbeat_stopped", heartbeat(Some(ServiceState::Stopped)), "000000190dfbd095ffbc31010f53775365727665725365727669636501"),
        ("heartbeat_start_pending", heartbeat(Some(ServiceState::StartPending)), "000000190dfbd095ffbc31010f53775365727665725365727669636502"),
        ("heartbeat_stop_pending", heartbeat(Some(ServiceState::StopPending)), "000000190dfbd095ffbc31010f53775365727665725365727669636503"),
        ("heartbeat_paused", heartbeat(Some(ServiceState::Paused)), "000000190dfbd095ffbc31010f53775365727665725365727669636504"),
        ("heartbeat_unknown", heartbeat(Some(ServiceState::Unknown)), "000000190dfbd095ffbc31010f53775365727665725365727669636505"),
        ("list_request", Message::ListRequest, "000000010e"),
        ("list_entry_dir", Message::ListEntry(dir_entry()), "000000410f11c39c62657273696368742fe697a5e69cac01008080808abbe1abb42c001200af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"),
        ("list_entry_symlink", Message::ListEntry(symlink_entry()), "0000004b0f0c68746d6c2f63757272656e74020f2e2e2f72656c65617365732f372e3200fffff79492a527ff030000af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"),
        ("list_end", Message::ListEnd { entries: 12_345 }, "0000000310b960"),
        (
            "error_version_mismatch",
            error(ErrorCode::VersionMismatch, "no common protocol version"),
            "0000001d11001a6e6f20636f6d6d6f6e2070726f746f636f6c2076657273696f6e",
        ),
        ("error_protocol_violation", error(ErrorCode::ProtocolViolation, "unknown seq 9"), "0000001011010d756e6b6e6f776e207365712039"),
        ("error_role_rejected", error(ErrorCode::RoleRejected, "a sender is already connected"), "0000002011021d612073656e64657220697320616c726561647920636f6e6e6563746564"),
        ("error_receiver_unavailable", error(ErrorCode::ReceiverUnavailable, "disk full"), "0000000c1103096469736b2066756c6c"),
        ("error_other", error(ErrorCode::Other, ""), "00000003110400"),
    ]
}

fn frame_of(name: &str, hex_frame: &str) -> Vec<u8> {
    hex::decode(hex_frame).unwrap_or_else(|e| panic!("golden {name}: bad hex: {e}"))
}

#[test]
fn every_vector_encodes_to_its_golden_bytes() {
    for (name, msg, golden) in vectors() {
        let frame = encode_frame(&msg).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(hex::encode(&frame), golden, "{name}: encoding changed");
    }
}

#[test]
fn every_golden_frame_decodes_to_its_message() {
    for (name, msg, golden) in vectors() {
        let frame = frame_of(name, golden);
        let announced = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(announced, frame.len() - 4, "{name}: length prefix");
        assert_eq!(
            decode_message(&frame[4..]),
            Ok(msg.clone()),
            "{name}: body decode"
        );

        let mut decoder = FrameDecoder::default();
        for byte in &frame {
            assert_eq!(
                decoder.next_message(),
                Ok(None),
                "{name}: message before its last byte"
            );
            decoder.push(std::slice::from_ref(byte));
        }
        assert_eq!(
            decoder.next_message(),
            Ok(Some(msg)),
            "{name}: frame decode"
        );
        assert_eq!(decoder.buffered(), 0, "{name}: leftover bytes");
    }
}

#[test]
fn every_golden_message_is_valid() {
    for (name, msg, _) in vectors() {
        assert_eq!(swrepl_proto::validate_message(&msg), Ok(()), "{name}");
    }
}

#[test]
fn every_message_variant_has_a_golden_vector() {
    // The body's first byte is the variant tag; version 1 has tags 0..=17.
    let mut tags: Vec<u8> = vectors()
        .iter()
        .map(|(name, _, golden)| frame_of(name, golden)[4])
        .collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(tags, (0..=17).collect::<Vec<u8>>());
}

#[test]
fn golden_names_are_unique() {
    let mut names: Vec<&str> = vectors().iter().map(|(name, _, _)| *name).collect();
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count);
}

/// One frame with several messages back to back decodes in order.
#[test]
fn concatenated_golden_frames_decode_in_order() {
    let all = vectors();
    let stream: Vec<u8> = all
        .iter()
        .flat_map(|(name, _, golden)| frame_of(name, golden))
        .collect();
    let mut decoder = FrameDecoder::default();
    decoder.push(&stream);
    for (name, msg, _) in all {
        assert_eq!(decoder.next_message(), Ok(Some(msg)), "{name}");
    }
    assert_eq!(decoder.next_message(), Ok(None));
    assert_eq!(decoder.buffered(), 0);
}

// ---- Registry replication (tags 18–20) ----

use swrepl_proto::registry::{
    RegistryChangeSet, RegistryKeyState, RegistryOp, RegistrySnapshot, RegistryValue,
};

const ALIASES: &str =
    r"HKEY_LOCAL_MACHINE\Software\Hornbill\Core Services\Applications\_Global\HttpAliases";

/// UTF-16LE with the terminating NUL, as `RegQueryValueExW` returns a `REG_SZ`.
fn utf16z(text: &str) -> Vec<u8> {
    text.encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect()
}

fn value(name: &str, kind: u32, data: Vec<u8>) -> RegistryValue {
    RegistryValue {
        name: name.into(),
        kind,
        data,
    }
}

/// (name, message, frame as lowercase hex) for the registry messages.
fn registry_vectors() -> Vec<(&'static str, Message, &'static str)> {
    vec![
        (
            "registry_snapshot",
            Message::RegistrySnapshot(RegistrySnapshot {
                roots: vec![ALIASES.into()],
                keys: vec![
                    RegistryKeyState {
                        path: ALIASES.into(),
                        values: vec![
                            value("", 1, utf16z("sw")),
                            value("port", 4, 5015u32.to_le_bytes().to_vec()),
                        ],
                    },
                    RegistryKeyState {
                        path: format!(r"{ALIASES}\portal"),
                        values: vec![],
                    },
                ],
            }),
            "0000011c120153484b45595f4c4f43414c5f4d414348494e455c536f6674776172655c486f726e62696c6c5c436f72652053657276696365735c4170706c69636174696f6e735c5f476c6f62616c5c48747470416c69617365730253484b45595f4c4f43414c5f4d414348494e455c536f6674776172655c486f726e62696c6c5c436f72652053657276696365735c4170706c69636174696f6e735c5f476c6f62616c5c48747470416c69617365730200010673007700000004706f72740404971300005a484b45595f4c4f43414c5f4d414348494e455c536f6674776172655c486f726e62696c6c5c436f72652053657276696365735c4170706c69636174696f6e735c5f476c6f62616c5c48747470416c69617365735c706f7274616c00",
        ),
        (
            "registry_snapshot_none",
            Message::RegistrySnapshot(RegistrySnapshot::default()),
            "00000003120000",
        ),
        (
            "registry_changes",
            Message::RegistryChanges {
                seq: 47,
                changes: RegistryChangeSet {
                    ops: vec![
                        RegistryOp::CreateKey {
                            path: format!(r"{ALIASES}\portal"),
                        },
                        RegistryOp::SetValue {
                            key: format!(r"{ALIASES}\portal"),
                            value: value("root", 2, utf16z("%SW%")),
                        },
                        RegistryOp::SetValue {
                            key: ALIASES.into(),
                            value: value("odd", 0xdead_beef, vec![1, 2, 3]),
                        },
                        RegistryOp::DeleteValue {
                            key: ALIASES.into(),
                            name: "old".into(),
                        },
                        RegistryOp::DeleteKey {
                            path: format!(r"{ALIASES}\gone"),
                        },
                    ],
                },
            },
            "000001e1132f05005a484b45595f4c4f43414c5f4d414348494e455c536f6674776172655c486f726e62696c6c5c436f72652053657276696365735c4170706c69636174696f6e735c5f476c6f62616c5c48747470416c69617365735c706f7274616c025a484b45595f4c4f43414c5f4d414348494e455c536f6674776172655c486f726e62696c6c5c436f72652053657276696365735c4170706c69636174696f6e735c5f476c6f62616c5c48747470416c69617365735c706f7274616c04726f6f74020a250053005700250000000253484b45595f4c4f43414c5f4d414348494e455c536f6674776172655c486f726e62696c6c5c436f72652053657276696365735c4170706c69636174696f6e735c5f476c6f62616c5c48747470416c6961736573036f6464effdb6f50d030102030353484b45595f4c4f43414c5f4d414348494e455c536f6674776172655c486f726e62696c6c5c436f72652053657276696365735c4170706c69636174696f6e735c5f476c6f62616c5c48747470416c6961736573036f6c640158484b45595f4c4f43414c5f4d414348494e455c536f6674776172655c486f726e62696c6c5c436f72652053657276696365735c4170706c69636174696f6e735c5f476c6f62616c5c48747470416c69617365735c676f6e65",
        ),
        (
            "registry_changes_small",
            Message::RegistryChanges {
                seq: 5,
                changes: RegistryChangeSet {
                    ops: vec![RegistryOp::DeleteValue {
                        key: r"HKEY_USERS\x".into(),
                        name: "a".into(),
                    }],
                },
            },
            "0000001313050103 0c484b45595f55534552535c78 0161",
        ),
        ("registry_request", Message::RegistryRequest, "0000000114"),
    ]
}

fn registry_frame_of(name: &str, spaced_hex: &str) -> Vec<u8> {
    frame_of(name, &spaced_hex.replace(' ', ""))
}

#[test]
fn every_registry_vector_encodes_to_its_golden_bytes() {
    for (name, msg, golden) in registry_vectors() {
        let frame = encode_frame(&msg).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            hex::encode(&frame),
            golden.replace(' ', ""),
            "{name}: encoding changed"
        );
    }
}

#[test]
fn every_registry_golden_frame_decodes_and_validates() {
    for (name, msg, golden) in registry_vectors() {
        let frame = registry_frame_of(name, golden);
        let announced = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(announced, frame.len() - 4, "{name}: length prefix");
        let mut decoder = FrameDecoder::default();
        decoder.push(&frame);
        assert_eq!(decoder.next_message(), Ok(Some(msg.clone())), "{name}");
        assert_eq!(decoder.buffered(), 0, "{name}: leftover bytes");
        assert_eq!(swrepl_proto::validate_message(&msg), Ok(()), "{name}");
    }
}

#[test]
fn every_message_variant_including_registry_has_a_golden_vector() {
    let mut tags: Vec<u8> = vectors()
        .iter()
        .map(|(name, _, golden)| frame_of(name, golden)[4])
        .chain(
            registry_vectors()
                .iter()
                .map(|(name, _, golden)| registry_frame_of(name, golden)[4]),
        )
        .collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(tags, (0..=20).collect::<Vec<u8>>());
}

#[test]
fn registry_golden_names_are_unique_and_distinct_from_the_others() {
    let mut names: Vec<&str> = vectors()
        .iter()
        .chain(registry_vectors().iter())
        .map(|(name, _, _)| *name)
        .collect();
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count);
}

/// A hostile change set is caught by `validate_message`, not only by the registry crate.
#[test]
fn registry_messages_with_bad_paths_are_invalid() {
    let bad = Message::RegistryChanges {
        seq: 1,
        changes: RegistryChangeSet {
            ops: vec![RegistryOp::DeleteKey {
                path: r"C:\Windows".into(),
            }],
        },
    };
    assert!(swrepl_proto::validate_message(&bad).is_err());
    let bad = Message::RegistrySnapshot(RegistrySnapshot {
        roots: vec!["HKLM".into()],
        keys: vec![],
    });
    assert!(swrepl_proto::validate_message(&bad).is_err());
}

// ---------------------------------------------------------------------------------------------
// Version 2: tree summaries (SPEC.md 6.3). The messages and the digest definitions are frozen.

fn summary_vectors() -> Vec<(&'static str, Message, &'static str)> {
    vec![
        (
            "summary_request",
            Message::SummaryRequest { id: 300 },
            "0000000315ac02",
        ),
        (
            "tree_summary_one_bit",
            Message::TreeSummary {
                id: 1,
                bits: 1,
                digests: (0..32).collect(),
            },
            "0000002416010120000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        ),
        (
            "pass_skips_four_bits",
            Message::PassSkips {
                pass: 2,
                bits: 4,
                unchanged: vec![0b1010_0101, 0xff],
            },
            "0000000617020402a5ff",
        ),
    ]
}

#[test]
fn every_summary_vector_encodes_decodes_and_validates() {
    for (name, msg, golden) in summary_vectors() {
        let frame = encode_frame(&msg).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(hex::encode(&frame), golden, "{name}: encoding changed");
        assert_eq!(decode_message(&frame[4..]), Ok(msg.clone()), "{name}");
        assert_eq!(swrepl_proto::validate_message(&msg), Ok(()), "{name}");
    }
    let tags: Vec<u8> = summary_vectors()
        .iter()
        .map(|(name, _, golden)| frame_of(name, golden)[4])
        .collect();
    assert_eq!(tags, [21, 22, 23]);
}

#[test]
fn summary_digests_and_buckets_are_frozen() {
    use swrepl_proto::summary::{bucket_of, entry_digest};
    let digests = [
        entry_digest(&ini_file()),
        entry_digest(&dir_entry()),
        entry_digest(&symlink_entry()),
    ];
    let hex_digests: Vec<String> = digests
        .iter()
        .map(|d| hex::encode(d.to_le_bytes()))
        .collect();
    assert_eq!(
        hex_digests,
        [
            "e82d398de23671436ec339aaf7223cfc",
            "79b14fb3fb53d760162642921baaf0ea",
            "b6a667ce183392dd841b27c34bfe19a6"
        ]
    );
    let buckets: Vec<usize> = [0u8, 1, 8, 16]
        .iter()
        .map(|bits| bucket_of(&ini_file().path, *bits))
        .collect();
    assert_eq!(buckets, [0, 0, 23, 5901]);
    assert_eq!(bucket_of(&ini_file().path.to_uppercase(), 16), buckets[3]);
}

#[test]
fn summary_messages_with_inconsistent_lengths_are_invalid() {
    let bad = [
        Message::TreeSummary {
            id: 1,
            bits: 2,
            digests: vec![0; 63],
        },
        Message::TreeSummary {
            id: 1,
            bits: 17,
            digests: vec![0; 16 << 17],
        },
        Message::PassSkips {
            pass: 1,
            bits: 4,
            unchanged: vec![0; 3],
        },
    ];
    for msg in bad {
        assert!(swrepl_proto::validate_message(&msg).is_err(), "{msg:?}");
    }
}
