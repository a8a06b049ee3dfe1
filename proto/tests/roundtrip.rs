//! Property tests: every message survives encode → frame → split delivery → decode, and no
//! sequence of bytes makes the decoder panic or buffer more than it was given.

use proptest::collection::vec;
use proptest::prelude::*;
use swrepl_proto::limits::{FRAME_HEADER_LEN, MAX_FRAME_LEN};
use swrepl_proto::registry::{
    RegistryChangeSet, RegistryKeyState, RegistryOp, RegistrySnapshot, RegistryValue,
};
use swrepl_proto::{
    decode_message, encode_frame, encode_message, Attributes, ChunkRef, EntryKind, ErrorCode,
    FileEntry, FrameDecoder, Heartbeat, Hello, Message, ProtoError, Prune, Role, ServiceState,
    ServiceStatus, Welcome,
};

fn text() -> impl Strategy<Value = String> {
    // Any unicode, including control characters: the encoding must not care.
    any::<String>().prop_map(|s| s.chars().take(40).collect())
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Sender),
        Just(Role::Receiver),
        Just(Role::Verifier)
    ]
}

fn entry_kind() -> impl Strategy<Value = EntryKind> {
    prop_oneof![
        Just(EntryKind::File),
        Just(EntryKind::Dir),
        text().prop_map(|target| EntryKind::Symlink { target }),
    ]
}

fn file_entry() -> impl Strategy<Value = FileEntry> {
    (
        text(),
        entry_kind(),
        any::<u64>(),
        any::<i64>(),
        (any::<u32>(), any::<u32>()),
        vec((any::<[u8; 32]>(), any::<u32>()), 0..20),
        any::<[u8; 32]>(),
    )
        .prop_map(
            |(path, kind, size, mtime_ns, (unix_mode, windows), chunks, file_hash)| FileEntry {
                path,
                kind,
                size,
                mtime_ns,
                attributes: Attributes { unix_mode, windows },
                chunks: chunks
                    .into_iter()
                    .map(|(hash, len)| ChunkRef { hash, len })
                    .collect(),
                file_hash,
            },
        )
}

fn prune() -> impl Strategy<Value = Prune> {
    prop_oneof![
        Just(Prune::Never),
        any::<u16>().prop_map(Prune::UpToPermille),
        Just(Prune::All)
    ]
}

fn service_state() -> impl Strategy<Value = ServiceState> {
    prop_oneof![
        Just(ServiceState::Running),
        Just(ServiceState::Stopped),
        Just(ServiceState::StartPending),
        Just(ServiceState::StopPending),
        Just(ServiceState::Paused),
        Just(ServiceState::Unknown),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::VersionMismatch),
        Just(ErrorCode::ProtocolViolation),
        Just(ErrorCode::RoleRejected),
        Just(ErrorCode::ReceiverUnavailable),
        Just(ErrorCode::Other),
    ]
}

fn registry_value() -> impl Strategy<Value = RegistryValue> {
    (text(), any::<u32>(), vec(any::<u8>(), 0..40)).prop_map(|(name, kind, data)| RegistryValue {
        name,
        kind,
        data,
    })
}

fn registry_snapshot() -> impl Strategy<Value = RegistrySnapshot> {
    (
        vec(text(), 0..3),
        vec((text(), vec(registry_value(), 0..4)), 0..4),
    )
        .prop_map(|(roots, keys)| RegistrySnapshot {
            roots,
            keys: keys
                .into_iter()
                .map(|(path, values)| RegistryKeyState { path, values })
                .collect(),
        })
}

fn registry_op() -> impl Strategy<Value = RegistryOp> {
    prop_oneof![
        text().prop_map(|path| RegistryOp::CreateKey { path }),
        text().prop_map(|path| RegistryOp::DeleteKey { path }),
        (text(), registry_value()).prop_map(|(key, value)| RegistryOp::SetValue { key, value }),
        (text(), text()).prop_map(|(key, name)| RegistryOp::DeleteValue { key, name }),
    ]
}

/// Every variant of [`Message`] with arbitrary field values.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<[u8; 8]>(), any::<u16>(), any::<u16>(), role(), text()).prop_map(
            |(magic, min_version, max_version, role, software)| Message::Hello(Hello {
                magic,
                min_version,
                max_version,
                role,
                software,
            })
        ),
        (any::<u16>(), role(), text()).prop_map(|(version, role, software)| Message::Welcome(
            Welcome {
                version,
                role,
                software
            }
        )),
        (any::<u64>(), any::<bool>()).prop_map(|(pass, full)| Message::PassBegin { pass, full }),
        (any::<u64>(), file_entry()).prop_map(|(seq, entry)| Message::Upsert { seq, entry }),
        (any::<u64>(), text()).prop_map(|(seq, path)| Message::Delete { seq, path }),
        (any::<u64>(), text(), file_entry()).prop_map(|(seq, from, entry)| Message::Rename {
            seq,
            from,
            entry
        }),
        (any::<u64>(), vec(any::<u32>(), 0..50))
            .prop_map(|(seq, indices)| Message::NeedChunks { seq, indices }),
        (any::<u64>(), any::<u32>(), vec(any::<u8>(), 0..300))
            .prop_map(|(seq, index, data)| Message::ChunkData { seq, index, data }),
        (any::<u64>(), text()).prop_map(|(seq, reason)| Message::FileUnavailable { seq, reason }),
        (any::<u64>(), any::<u64>(), prune()).prop_map(|(pass, entries, prune)| Message::PassEnd {
            pass,
            entries,
            prune
        }),
        any::<u64>().prop_map(|seq| Message::Ack { seq }),
        (any::<u64>(), text(), text()).prop_map(|(seq, path, reason)| Message::Refused {
            seq,
            path,
            reason
        }),
        (any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(pass, pruned, held)| Message::PassDone { pass, pruned, held }),
        (
            any::<u64>(),
            proptest::option::of((text(), service_state()))
        )
            .prop_map(|(unix_ms, service)| Message::Heartbeat(Heartbeat {
                unix_ms,
                service: service.map(|(name, state)| ServiceStatus { name, state }),
            })),
        Just(Message::ListRequest),
        file_entry().prop_map(Message::ListEntry),
        any::<u64>().prop_map(|entries| Message::ListEnd { entries }),
        (error_code(), text()).prop_map(|(code, message)| Message::Error { code, message }),
        registry_snapshot().prop_map(Message::RegistrySnapshot),
        (any::<u64>(), vec(registry_op(), 0..6)).prop_map(|(seq, ops)| Message::RegistryChanges {
            seq,
            changes: RegistryChangeSet { ops },
        }),
        Just(Message::RegistryRequest),
    ]
}

/// Feeds `stream` to `decoder` in pieces of the given sizes (cycled), popping every complete
/// message after each piece.
fn feed_in_pieces(
    decoder: &mut FrameDecoder,
    stream: &[u8],
    sizes: &[usize],
) -> Result<Vec<Message>, ProtoError> {
    let mut out = Vec::new();
    let mut rest = stream;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at((*size).clamp(1, rest.len()));
        rest = tail;
        decoder.push(piece);
        while let Some(msg) = decoder.next_message()? {
            out.push(msg);
        }
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn message_body_round_trips(msg in message()) {
        prop_assert_eq!(decode_message(&encode_message(&msg)), Ok(msg));
    }

    #[test]
    fn messages_round_trip_through_frames_in_random_splits(
        msgs in vec(message(), 1..8),
        sizes in vec(1usize..64, 1..16),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(|m| encode_frame(m).unwrap()).collect();
        let mut decoder = FrameDecoder::default();
        let decoded = feed_in_pieces(&mut decoder, &stream, &sizes);
        prop_assert_eq!(decoded, Ok(msgs));
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(
        bytes in vec(any::<u8>(), 0..512),
        sizes in vec(1usize..64, 1..16),
        limit in 0usize..1024,
    ) {
        let mut decoder = FrameDecoder::new(limit);
        let mut rest = &bytes[..];
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            decoder.push(piece);
            match decoder.next_message() {
                // A decoded message re-encodes to something that decodes to the same message.
                Ok(Some(msg)) => prop_assert_eq!(decode_message(&encode_message(&msg)), Ok(msg)),
                Ok(None) | Err(ProtoError::Malformed(_)) => {}
                Err(ProtoError::FrameTooLarge { len, limit: l }) => {
                    prop_assert!(len > l);
                    prop_assert_eq!(l, limit);
                    break;
                }
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
            prop_assert!(decoder.buffered() <= bytes.len());
        }
    }

    /// Well-framed garbage whose first byte is a real tag, so decoding gets past the tag.
    #[test]
    fn decoder_never_panics_on_framed_garbage(
        bodies in vec((0u8..21, vec(any::<u8>(), 0..200)), 1..6),
        sizes in vec(1usize..64, 1..16),
    ) {
        let stream: Vec<u8> = bodies
            .iter()
            .flat_map(|(tag, rest)| {
                let len = (rest.len() as u32 + 1).to_be_bytes();
                len.into_iter().chain([*tag]).chain(rest.iter().copied())
            })
            .collect();
        let mut decoder = FrameDecoder::default();
        let mut rest = &stream[..];
        let mut frames_seen = 0;
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            decoder.push(piece);
            loop {
                match decoder.next_message() {
                    Ok(None) => break,
                    Ok(Some(msg)) => {
                        frames_seen += 1;
                        prop_assert_eq!(decode_message(&encode_message(&msg)), Ok(msg));
                    }
                    Err(ProtoError::Malformed(_)) => frames_seen += 1,
                    Err(other) => prop_assert!(false, "unexpected error {other:?}"),
                }
            }
        }
        // Every frame is consumed exactly once, whether it decoded or not.
        prop_assert_eq!(frames_seen, bodies.len());
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn decode_message_never_panics(bytes in vec(any::<u8>(), 0..512)) {
        if let Ok(msg) = decode_message(&bytes) {
            prop_assert_eq!(decode_message(&encode_message(&msg)), Ok(msg));
        }
    }

    /// Postcard is self-delimiting, so no proper prefix of a body decodes.
    #[test]
    fn truncated_bodies_are_rejected(msg in message(), cut in any::<prop::sample::Index>()) {
        let body = encode_message(&msg);
        let cut = cut.index(body.len());
        prop_assert!(decode_message(&body[..cut]).is_err());
    }

    #[test]
    fn oversize_prefix_is_rejected_with_only_the_header(
        limit in 0usize..(MAX_FRAME_LEN + 10),
        excess in 1u64..1_000_000,
    ) {
        let effective = limit.min(MAX_FRAME_LEN);
        let Ok(announced) = u32::try_from(effective as u64 + excess) else { return Ok(()) };
        let mut decoder = FrameDecoder::new(limit);
        let header = announced.to_be_bytes();
        decoder.push(&header[..3]);
        prop_assert_eq!(decoder.announced_len(), Ok(None));
        prop_assert_eq!(decoder.next_message(), Ok(None));
        decoder.push(&header[3..]);
        let expected = ProtoError::FrameTooLarge { len: announced as usize, limit: effective };
        prop_assert_eq!(decoder.announced_len(), Err(expected.clone()));
        prop_assert_eq!(decoder.next_message(), Err(expected.clone()));
        // The error is sticky: the stream cannot be resynchronised after a bad length.
        decoder.push(&[0; 16]);
        prop_assert_eq!(decoder.next_message(), Err(expected));
    }
}

#[test]
fn largest_u32_prefix_is_rejected_by_default_decoder() {
    let mut decoder = FrameDecoder::default();
    decoder.push(&u32::MAX.to_be_bytes());
    assert_eq!(
        decoder.next_message(),
        Err(ProtoError::FrameTooLarge {
            len: u32::MAX as usize,
            limit: MAX_FRAME_LEN
        })
    );
    assert_eq!(decoder.buffered(), FRAME_HEADER_LEN);
}

#[test]
fn frame_at_exactly_the_limit_is_accepted() {
    let msg = Message::ChunkData {
        seq: 1,
        index: 0,
        data: vec![7; 100],
    };
    let frame = encode_frame(&msg).unwrap();
    let body_len = frame.len() - FRAME_HEADER_LEN;
    let mut at_limit = FrameDecoder::new(body_len);
    at_limit.push(&frame);
    assert_eq!(at_limit.next_message(), Ok(Some(msg)));
    let mut below = FrameDecoder::new(body_len - 1);
    below.push(&frame);
    assert_eq!(
        below.announced_len(),
        Err(ProtoError::FrameTooLarge {
            len: body_len,
            limit: body_len - 1
        })
    );
}

#[test]
fn encode_frame_refuses_bodies_over_the_limit() {
    let msg = Message::ChunkData {
        seq: 1,
        index: 0,
        data: vec![0; MAX_FRAME_LEN],
    };
    assert!(matches!(
        encode_frame(&msg),
        Err(ProtoError::FrameTooLarge {
            limit: MAX_FRAME_LEN,
            ..
        })
    ));
}

#[test]
fn a_malformed_body_is_consumed_and_the_next_frame_still_decodes() {
    let mut decoder = FrameDecoder::default();
    decoder.push(&[0, 0, 0, 1, 0xff]); // tag 255: no such message
    decoder.push(&encode_frame(&Message::Ack { seq: 5 }).unwrap());
    assert!(matches!(
        decoder.next_message(),
        Err(ProtoError::Malformed(_))
    ));
    assert_eq!(decoder.next_message(), Ok(Some(Message::Ack { seq: 5 })));
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn many_small_frames_in_one_push_all_decode() {
    let frames: Vec<u8> = (1..=10_000u64)
        .flat_map(|seq| encode_frame(&Message::Ack { seq }).unwrap())
        .collect();
    let mut decoder = FrameDecoder::default();
    decoder.push(&frames);
    for seq in 1..=10_000u64 {
        assert_eq!(decoder.next_message(), Ok(Some(Message::Ack { seq })));
    }
    assert_eq!(decoder.next_message(), Ok(None));
}

/// Hand-made hostile bodies: each must be refused with `Malformed`, never panic or allocate
/// what it claims.
#[test]
fn hostile_bodies_are_malformed() {
    let cases: &[(&str, &[u8])] = &[
        ("empty body", &[]),
        ("unknown tag 21", &[21]),
        (
            "tag as an overlong varint past u32",
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        ),
        ("bool 2 in PassBegin.full", &[2, 7, 2]),
        ("option tag 2 in Heartbeat.service", &[13, 1, 2]),
        (
            "u16 varint above 65535 in Hello.min_version",
            b"\x00SWREPL\r\n\xff\xff\x04\x01\x00\x00",
        ),
        (
            "ack seq varint of 11 bytes",
            &[
                10, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
            ],
        ),
        ("trailing byte after ListRequest", &[14, 0]),
        (
            "string claims 4 GiB",
            &[4, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, b'a'],
        ),
        (
            "ChunkData claims 2^60 bytes",
            &[
                7, 1, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10,
            ],
        ),
        (
            "NeedChunks claims 2^32 indices",
            &[6, 1, 0x80, 0x80, 0x80, 0x80, 0x10, 0],
        ),
        ("invalid UTF-8 in Delete.path", &[4, 1, 2, 0xc3, 0x28]),
        ("unknown Role 3", b"\x00SWREPL\r\n\x01\x01\x03\x00"),
        ("unknown Prune 3", &[9, 1, 1, 3]),
        ("unknown EntryKind 3", &[15, 1, b'a', 3]),
    ];
    for (what, body) in cases {
        assert!(
            matches!(decode_message(body), Err(ProtoError::Malformed(_))),
            "{what}: {:?}",
            decode_message(body)
        );
    }
}
