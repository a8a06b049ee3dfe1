//! What a peer refuses: wire paths, link targets, inconsistent entries, oversize fields, and the
//! handshake's version and role checks.

use swrepl_proto::limits::{
    MAX_CHUNKS_PER_ENTRY, MAX_CHUNK_LEN, MAX_COMPONENT_LEN, MAX_PATH_LEN, MAX_TEXT_LEN,
};
use swrepl_proto::{
    accept_hello, check_link_target, check_welcome, hello, negotiate, validate_entry,
    validate_message, validate_path, Attributes, ChunkRef, EntryKind, ErrorCode, FileEntry,
    Heartbeat, Hello, Message, PathError, ProtoError, Role, ServiceState, ServiceStatus, Welcome,
    MAGIC, MIN_VERSION, PROTOCOL_VERSION,
};

// ---------------------------------------------------------------------------------------------
// Paths

#[test]
fn accepted_paths() {
    let long_ok = vec!["a".repeat(MAX_COMPONENT_LEN); 16].join("/"); // 4 095 bytes
    assert!(long_ok.len() <= MAX_PATH_LEN);
    let accepted = [
        "a",
        "Core Services/SwSqlServer/Bin/Swsql.ini",
        "Supportworks Server/html/_wc/index.php",
        "Übersicht/日本.txt",
        "emoji 😀/file",
        ".hidden",
        "..double-dot-prefix",
        "a.b.c",
        "name with  inner  spaces.txt",
        " leading space",
        "CONSOLE", // only the exact device names are reserved
        "CON1",
        "COM10",
        "LPT",
        "xCON",
        "con_log.txt",
        "file$name",
        "100%/[x]{y}#~!@&',;=+",
        &long_ok,
    ];
    for path in accepted {
        assert_eq!(validate_path(path), Ok(()), "{path:?} should be accepted");
    }
}

#[test]
fn refused_paths() {
    use PathError::*;
    let too_long_path = vec!["a".repeat(200); 21].join("/");
    let too_long_component = "a".repeat(MAX_COMPONENT_LEN + 1);
    let too_long_unicode = "é".repeat(MAX_COMPONENT_LEN / 2 + 1); // 256 bytes, 128 chars
    let refused: Vec<(&str, PathError)> = vec![
        ("", Empty),
        ("..", DotComponent),
        (".", DotComponent),
        ("a/../b", DotComponent),
        ("a/./b", DotComponent),
        ("a/..", DotComponent),
        ("/etc", Absolute),
        ("/", Absolute),
        ("C:/x", ForbiddenCharacter),
        ("c:x", ForbiddenCharacter),
        ("C:", ForbiddenCharacter),
        ("\\\\server\\share", Backslash),
        ("a\\b", Backslash),
        ("..\\x", Backslash),
        ("file:stream", ForbiddenCharacter),
        ("file.txt::$DATA", ForbiddenCharacter),
        ("//server/share", Absolute),
        ("a//b", EmptyComponent),
        ("a/", EmptyComponent),
        ("a/b/", EmptyComponent),
        ("a\0b", ControlCharacter),
        ("\0", ControlCharacter),
        ("a\nb", ControlCharacter),
        ("tab\there", ControlCharacter),
        ("del\u{7f}", ControlCharacter),
        ("c1\u{85}", ControlCharacter),
        ("a<b", ForbiddenCharacter),
        ("a>b", ForbiddenCharacter),
        ("a\"b", ForbiddenCharacter),
        ("a|b", ForbiddenCharacter),
        ("a?b", ForbiddenCharacter),
        ("a*b", ForbiddenCharacter),
        ("trailing.", TrailingDotOrSpace),
        ("trailing ", TrailingDotOrSpace),
        ("dir./file", TrailingDotOrSpace),
        ("dir /file", TrailingDotOrSpace),
        ("...", TrailingDotOrSpace),
        (&too_long_path, TooLong),
        (&too_long_component, ComponentTooLong),
        (&too_long_unicode, ComponentTooLong),
    ];
    for (path, reason) in refused {
        assert_eq!(validate_path(path), Err(reason), "{path:?}");
    }
}

#[test]
fn reserved_device_names_are_refused_in_any_case_and_with_any_extension() {
    let reserved = [
        "CON",
        "con",
        "Con",
        "PRN",
        "AUX",
        "NUL",
        "nul",
        "COM1",
        "com9",
        "COM0",
        "LPT1",
        "lpt9",
        "LPT0",
        "COM¹",
        "LPT²",
        "lpt³",
        "CONIN$",
        "conout$",
        "CLOCK$",
        "con.txt",
        "CON.tar.gz",
        "NUL.",
        "con .txt",
        "LPT1.log",
        "AUX.h",
    ];
    for name in reserved {
        for path in [
            name.to_string(),
            format!("dir/{name}"),
            format!("{name}/file"),
        ] {
            let result = validate_path(&path);
            // "NUL." also ends with a dot; either reason refuses it.
            assert!(
                matches!(
                    result,
                    Err(PathError::ReservedName(_)) | Err(PathError::TrailingDotOrSpace)
                ),
                "{path:?}: {result:?}"
            );
        }
    }
}

#[test]
fn path_error_messages_name_the_problem() {
    let err = validate_path("dir/CON.txt").unwrap_err();
    assert_eq!(
        err.to_string(),
        "component \"CON.txt\" is a reserved Windows device name"
    );
}

// ---------------------------------------------------------------------------------------------
// Link targets

#[test]
fn link_targets_inside_the_root_are_accepted() {
    let accepted = [
        ("a/l", "../x"),
        ("a/l", "x"),
        ("a/l", "./x"),
        ("a/l", "b/c/d"),
        ("a/b/l", "../../x"),
        ("a/b/l", "../c/./d"),
        ("l", "x/y"),
        ("html/current", "../releases/7.2"),
        ("a/l", ".."), // the root itself
        ("a/l", "."),
        ("a/l", "Übersicht/日本.txt"),
    ];
    for (link, target) in accepted {
        assert_eq!(
            check_link_target(link, target),
            Ok(()),
            "{link} -> {target}"
        );
    }
}

#[test]
fn link_targets_that_leave_the_root_or_are_unsafe_are_refused() {
    let refused = [
        ("a/l", "../../x"),
        ("l", "../x"),
        ("l", ".."),
        ("a/b/l", "../../../etc/passwd"),
        ("a/l", "/etc/passwd"),
        ("a/l", "C:/Windows"),
        ("a/l", "c:x"),
        ("a/l", "\\\\server\\share"),
        ("a/l", "..\\..\\x"),
        ("a/l", ""),
        // `..` after a name: lexically inside, but `b` may itself be a link.
        ("a/l", "b/../x"),
        ("a/b/l", "c/../../x"),
        ("a/l", "x/.."),
        // Names inside the target follow the path rules.
        ("a/l", "CON"),
        ("a/l", "x\0y"),
        ("a/l", "x/trailing."),
        ("a/l", "file:stream"),
    ];
    for (link, target) in refused {
        assert!(
            matches!(
                check_link_target(link, target),
                Err(ProtoError::Malformed(_))
            ),
            "{link} -> {target}: {:?}",
            check_link_target(link, target)
        );
    }
}

#[test]
fn link_at_an_invalid_path_is_refused() {
    assert!(matches!(
        check_link_target("../l", "x"),
        Err(ProtoError::InvalidPath { .. })
    ));
}

#[test]
fn link_target_over_the_text_limit_is_refused() {
    let target = "a/".repeat(MAX_TEXT_LEN / 2 + 1);
    assert!(matches!(
        check_link_target("l", &target),
        Err(ProtoError::Limit(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Entries

fn file(size: u64, lens: &[u32]) -> FileEntry {
    FileEntry {
        path: "Supportworks Server/data/mail.eml".into(),
        kind: EntryKind::File,
        size,
        mtime_ns: 1_700_000_000_000_000_000,
        attributes: Attributes::default(),
        chunks: lens
            .iter()
            .map(|&len| ChunkRef {
                hash: [len as u8; 32],
                len,
            })
            .collect(),
        file_hash: [9; 32],
    }
}

fn with_kind(kind: EntryKind, size: u64, lens: &[u32]) -> FileEntry {
    FileEntry {
        kind,
        ..file(size, lens)
    }
}

#[test]
fn consistent_entries_are_accepted() {
    assert_eq!(validate_entry(&file(0, &[])), Ok(()));
    assert_eq!(validate_entry(&file(10, &[10])), Ok(()));
    assert_eq!(
        validate_entry(&file(3 * u64::from(MAX_CHUNK_LEN), &[MAX_CHUNK_LEN; 3])),
        Ok(())
    );
    assert_eq!(validate_entry(&with_kind(EntryKind::Dir, 0, &[])), Ok(()));
    let link = EntryKind::Symlink {
        target: "../x".into(),
    };
    assert_eq!(validate_entry(&with_kind(link, 0, &[])), Ok(()));
}

#[test]
fn chunk_sum_mismatch_is_refused() {
    assert!(matches!(
        validate_entry(&file(11, &[5, 5])),
        Err(ProtoError::Malformed(_))
    ));
    assert!(matches!(
        validate_entry(&file(9, &[5, 5])),
        Err(ProtoError::Malformed(_))
    ));
    assert!(matches!(
        validate_entry(&file(1, &[])),
        Err(ProtoError::Malformed(_))
    ));
    assert!(matches!(
        validate_entry(&file(u64::MAX, &[u32::MAX])),
        Err(ProtoError::Limit(_))
    ));
}

#[test]
fn zero_length_and_oversize_chunks_are_refused() {
    assert!(matches!(
        validate_entry(&file(5, &[5, 0])),
        Err(ProtoError::Limit(_))
    ));
    assert!(matches!(
        validate_entry(&file(u64::from(MAX_CHUNK_LEN) + 1, &[MAX_CHUNK_LEN + 1])),
        Err(ProtoError::Limit(_))
    ));
}

#[test]
fn too_many_chunks_are_refused() {
    let lens = vec![1; MAX_CHUNKS_PER_ENTRY + 1];
    let entry = file(lens.len() as u64, &lens);
    assert!(matches!(validate_entry(&entry), Err(ProtoError::Limit(_))));
}

#[test]
fn directories_and_links_with_content_are_refused() {
    let dir_cases = [
        with_kind(EntryKind::Dir, 5, &[5]),
        with_kind(EntryKind::Dir, 5, &[]),
        with_kind(EntryKind::Dir, 0, &[1]),
    ];
    for entry in dir_cases {
        assert!(
            matches!(validate_entry(&entry), Err(ProtoError::Malformed(_))),
            "{entry:?}"
        );
    }
    let link = || EntryKind::Symlink { target: "x".into() };
    for entry in [with_kind(link(), 3, &[3]), with_kind(link(), 3, &[])] {
        assert!(
            matches!(validate_entry(&entry), Err(ProtoError::Malformed(_))),
            "{entry:?}"
        );
    }
}

#[test]
fn entry_with_invalid_path_is_refused_with_the_reason() {
    let entry = FileEntry {
        path: "a/../../b".into(),
        ..file(0, &[])
    };
    assert_eq!(
        validate_entry(&entry),
        Err(ProtoError::InvalidPath {
            path: "a/../../b".into(),
            reason: PathError::DotComponent
        })
    );
}

#[test]
fn entry_with_escaping_link_is_refused() {
    let entry = with_kind(
        EntryKind::Symlink {
            target: "../../../x".into(),
        },
        0,
        &[],
    );
    assert!(matches!(
        validate_entry(&entry),
        Err(ProtoError::Malformed(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Whole messages

#[test]
fn message_level_checks() {
    let long = "x".repeat(MAX_TEXT_LEN + 1);
    let refused = [
        Message::Delete {
            seq: 1,
            path: "../x".into(),
        },
        Message::Rename {
            seq: 1,
            from: "/abs".into(),
            entry: file(0, &[]),
        },
        Message::Rename {
            seq: 1,
            from: "ok".into(),
            entry: file(1, &[]),
        },
        Message::Upsert {
            seq: 1,
            entry: file(1, &[2]),
        },
        Message::ListEntry(FileEntry {
            path: "C:/x".into(),
            ..file(0, &[])
        }),
        Message::ChunkData {
            seq: 1,
            index: 0,
            data: vec![0; MAX_CHUNK_LEN as usize + 1],
        },
        Message::NeedChunks {
            seq: 1,
            indices: vec![0; MAX_CHUNKS_PER_ENTRY + 1],
        },
        Message::FileUnavailable {
            seq: 1,
            reason: long.clone(),
        },
        Message::Refused {
            seq: 1,
            path: long.clone(),
            reason: "r".into(),
        },
        Message::Refused {
            seq: 1,
            path: "p".into(),
            reason: long.clone(),
        },
        Message::Error {
            code: ErrorCode::Other,
            message: long.clone(),
        },
        Message::Heartbeat(Heartbeat {
            unix_ms: 0,
            service: Some(ServiceStatus {
                name: long.clone(),
                state: ServiceState::Running,
            }),
        }),
        Message::Hello(Hello {
            software: long.clone(),
            ..hello(Role::Sender, "")
        }),
        Message::Welcome(Welcome {
            version: 1,
            role: Role::Receiver,
            software: long,
        }),
    ];
    for msg in refused {
        assert!(validate_message(&msg).is_err(), "{msg:?}");
    }
    // A refused path is echoed back as text: the sender never uses it as a path.
    assert_eq!(
        validate_message(&Message::Refused {
            seq: 1,
            path: "../etc".into(),
            reason: "dot".into()
        }),
        Ok(())
    );
}

// ---------------------------------------------------------------------------------------------
// Handshake

fn peer_hello(min_version: u16, max_version: u16, role: Role) -> Hello {
    Hello {
        magic: MAGIC,
        min_version,
        max_version,
        role,
        software: "peer".into(),
    }
}

#[test]
fn hello_truncates_long_software_to_a_valid_length_at_a_char_boundary() {
    let software = "é".repeat(MAX_TEXT_LEN); // 2 bytes each
    let ours = hello(Role::Sender, &software);
    assert!(ours.software.len() <= MAX_TEXT_LEN);
    assert!(ours.software.len() >= MAX_TEXT_LEN - 1);
    assert_eq!(validate_message(&Message::Hello(ours)), Ok(()));
}

#[test]
fn negotiation_picks_the_highest_common_version() {
    assert_eq!(negotiate(&hello(Role::Sender, "x")), Ok(PROTOCOL_VERSION));
    assert_eq!(
        negotiate(&peer_hello(MIN_VERSION, u16::MAX, Role::Sender)),
        Ok(PROTOCOL_VERSION)
    );
    assert_eq!(
        negotiate(&peer_hello(0, MIN_VERSION, Role::Sender)),
        Ok(MIN_VERSION)
    );
}

#[test]
fn negotiation_refuses_disjoint_or_inverted_ranges_and_bad_magic() {
    for (min, max) in [
        (PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 5),
        (0, MIN_VERSION - 1),
        (2, 1),
    ] {
        assert!(
            matches!(
                negotiate(&peer_hello(min, max, Role::Sender)),
                Err(ProtoError::VersionMismatch { .. })
            ),
            "{min}..={max}"
        );
    }
    let not_swrepl = Hello {
        magic: *b"GET / HT",
        ..hello(Role::Sender, "x")
    };
    assert_eq!(negotiate(&not_swrepl), Err(ProtoError::BadMagic));
}

#[test]
fn accept_hello_welcomes_an_acceptable_role() {
    let welcome = accept_hello(
        &hello(Role::Sender, "swrepl 0.1.0"),
        &[Role::Sender, Role::Verifier],
        Role::Receiver,
        "swrepl 0.1.0",
    );
    assert_eq!(
        welcome,
        Ok(Welcome {
            version: PROTOCOL_VERSION,
            role: Role::Receiver,
            software: "swrepl 0.1.0".into()
        })
    );
    let welcome = welcome.unwrap();
    assert_eq!(
        check_welcome(&welcome, Role::Receiver),
        Ok(PROTOCOL_VERSION)
    );
}

#[test]
fn accept_hello_refuses_a_wrong_role_with_role_rejected() {
    let err = accept_hello(
        &hello(Role::Receiver, "x"),
        &[Role::Sender, Role::Verifier],
        Role::Receiver,
        "me",
    )
    .unwrap_err();
    assert_eq!(
        err,
        ProtoError::RoleRejected {
            theirs: Role::Receiver,
            expected: vec![Role::Sender, Role::Verifier]
        }
    );
    assert!(matches!(
        err.to_message(),
        Message::Error {
            code: ErrorCode::RoleRejected,
            ..
        }
    ));
}

#[test]
fn accept_hello_refuses_version_mismatch_with_the_matching_error_code() {
    let future = peer_hello(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 1, Role::Sender);
    let err = accept_hello(&future, &[Role::Sender], Role::Receiver, "me").unwrap_err();
    assert!(matches!(err, ProtoError::VersionMismatch { .. }));
    let Message::Error { code, message } = err.to_message() else {
        panic!("not an Error message")
    };
    assert_eq!(code, ErrorCode::VersionMismatch);
    assert!(message.contains("upgrade"), "{message}");
}

#[test]
fn check_welcome_refuses_versions_we_did_not_offer_and_wrong_roles() {
    let welcome = |version, role| Welcome {
        version,
        role,
        software: "peer".into(),
    };
    assert!(matches!(
        check_welcome(
            &welcome(PROTOCOL_VERSION + 1, Role::Receiver),
            Role::Receiver
        ),
        Err(ProtoError::VersionMismatch { .. })
    ));
    assert!(matches!(
        check_welcome(&welcome(0, Role::Receiver), Role::Receiver),
        Err(ProtoError::VersionMismatch { .. })
    ));
    assert!(matches!(
        check_welcome(&welcome(PROTOCOL_VERSION, Role::Sender), Role::Receiver),
        Err(ProtoError::RoleRejected { .. })
    ));
}

#[test]
fn error_messages_fit_the_text_limit() {
    let err = ProtoError::Malformed("x".repeat(3 * MAX_TEXT_LEN));
    let Message::Error { code, message } = err.to_message() else {
        panic!("not an Error message")
    };
    assert_eq!(code, ErrorCode::ProtocolViolation);
    assert_eq!(message.len(), MAX_TEXT_LEN);
    assert_eq!(validate_message(&err.to_message()), Ok(()));
}
