//! `swrepl registry export|diff|apply` end to end: the real binary on real .reg files.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

const GLOBAL: &str =
    r"HKEY_LOCAL_MACHINE\Software\Hornbill\Core Services\Applications\_Global\HttpAliases";
const SERVER: &str = r"HKEY_LOCAL_MACHINE\Software\Hornbill\Core Services\Applications\Supportworks Server\HttpAliases";

fn swrepl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_swrepl"))
        .args(args)
        .env("SWREPL_LOG", "warn")
        .output()
        .expect("run swrepl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A .reg file in UTF-16LE with BOM and CRLF, as regedit writes them.
fn write_utf16(path: &Path, text: &str) {
    let text = text.replace("\r\n", "\n").replace('\n', "\r\n");
    let mut bytes = vec![0xFF, 0xFE];
    bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    fs::write(path, bytes).unwrap();
}

fn master_text() -> String {
    format!(
        "Windows Registry Editor Version 5.00\n\n\
         [{SERVER}]\n\"webclient\"=\"C:\\\\Hornbill\\\\webclient\"\n\n\
         [{GLOBAL}]\n@=\"default\"\n\"sw\"=\"C:\\\\Program Files\\\\Hornbill\\\\sw\"\n\"Port\"=dword:00000050\n\
         \"Hosts\"=hex(7):61,00,00,00,62,00,00,00,00,00\n\n\
         [{GLOBAL}\\Sub]\n\"x\"=hex(b):01,00,00,00,00,00,00,00\n\n\
         [HKEY_LOCAL_MACHINE\\Software\\Other]\n\"secret\"=\"do not copy\"\n\n"
    )
}

#[test]
fn export_writes_a_regedit_file_of_the_configured_keys_only() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("master.reg");
    write_utf16(&src, &master_text());
    let out_file = dir.path().join("out.reg");
    let out = swrepl(&[
        "registry",
        "export",
        "--registry-file",
        p(&src),
        "--out",
        p(&out_file),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let bytes = fs::read(&out_file).unwrap();
    assert_eq!(&bytes[..2], &[0xFF, 0xFE]);
    let units: Vec<u16> = bytes[2..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let text = String::from_utf16(&units).unwrap();
    assert!(
        text.starts_with("Windows Registry Editor Version 5.00\r\n\r\n["),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n"));
    assert!(text.contains("\"Port\"=dword:00000050\r\n"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    // The export compares equal to the source over the exported keys.
    let same = swrepl(&[
        "registry",
        "diff",
        p(&src),
        p(&out_file),
        "--key",
        GLOBAL,
        "--key",
        SERVER,
    ]);
    assert_eq!(code(&same), 0, "{}{}", stdout(&same), stderr(&same));
}

#[test]
fn export_only_some_keys_with_key_flag() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("master.reg");
    write_utf16(&src, &master_text());
    let out_file = dir.path().join("out.reg");
    let out = swrepl(&[
        "registry",
        "export",
        "--registry-file",
        p(&src),
        "--key",
        r"HKLM\Software\Other",
        "--out",
        p(&out_file),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf16_lossy(
        &fs::read(&out_file).unwrap()[2..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect::<Vec<_>>(),
    );
    assert!(text.contains("\"secret\"=\"do not copy\""), "{text}");
    assert!(!text.contains("HttpAliases"), "{text}");
}

#[test]
fn export_without_a_registry_file_off_windows_is_an_error() {
    if cfg!(windows) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = swrepl(&["registry", "export", "--out", p(&dir.path().join("x.reg"))]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("--registry-file"), "{}", stderr(&out));
}

#[test]
fn diff_exits_0_when_equal_and_1_with_one_line_per_difference() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.reg");
    let b = dir.path().join("b.reg");
    write_utf16(&a, &master_text());
    // Same content in UTF-8, other value order and other case: still equal.
    let reordered = master_text().replace(
        "\"sw\"=\"C:\\\\Program Files\\\\Hornbill\\\\sw\"\n\"Port\"=dword:00000050",
        "\"PORT\"=dword:00000050\n\"SW\"=\"C:\\\\Program Files\\\\Hornbill\\\\sw\"",
    );
    fs::write(&b, &reordered).unwrap();
    let out = swrepl(&["registry", "diff", p(&a), p(&b)]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out), "");

    let changed = master_text()
        .replace("dword:00000050", "dword:00000051")
        .replace("\"webclient\"", "\"webclient2\"")
        .replace(
            &format!("[{GLOBAL}\\Sub]\n\"x\"=hex(b):01,00,00,00,00,00,00,00\n\n"),
            "",
        );
    fs::write(&b, changed).unwrap();
    let out = swrepl(&["registry", "diff", p(&a), p(&b)]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(
        lines.contains(&format!(
            "~ value [{GLOBAL}] \"Port\"=dword:00000050 -> dword:00000051"
        )),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&format!(
            "- value [{SERVER}] \"webclient\"=\"C:\\\\Hornbill\\\\webclient\""
        )),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&format!(
            "+ value [{SERVER}] \"webclient2\"=\"C:\\\\Hornbill\\\\webclient\""
        )),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&format!("- key [{GLOBAL}\\Sub]")),
        "{lines:#?}"
    );
}

#[test]
fn diff_of_a_malformed_file_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.reg");
    let bad = dir.path().join("bad.reg");
    write_utf16(&a, &master_text());
    fs::write(
        &bad,
        "Windows Registry Editor Version 5.00\n\n[HKLM\\X]\n\"n\"=dword:xyz\n",
    )
    .unwrap();
    let out = swrepl(&["registry", "diff", p(&a), p(&bad)]);
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("bad.reg") && err.contains("line 4"),
        "{err}"
    );
}

#[test]
fn apply_changes_the_keys_archives_the_previous_state_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let slave = dir.path().join("slave.reg");
    write_utf16(&slave, &master_text());
    let archive = dir.path().join("archive");
    let patch = dir.path().join("patch.reg");
    fs::write(
        &patch,
        format!(
            "Windows Registry Editor Version 5.00\n\n[{GLOBAL}]\n\"Port\"=dword:00000051\n\"sw\"=-\n\n[-{GLOBAL}\\Sub]\n\n[{SERVER}\\New]\n\"n\"=\"v\"\n"
        ),
    )
    .unwrap();
    let before = fs::read(&slave).unwrap();

    let dry = swrepl(&[
        "registry",
        "apply",
        p(&patch),
        "--registry-file",
        p(&slave),
        "--dry-run",
    ]);
    assert_eq!(code(&dry), 0, "{}", stderr(&dry));
    assert!(
        stdout(&dry).contains("dry run: 5 changes"),
        "{}",
        stdout(&dry)
    );
    assert_eq!(fs::read(&slave).unwrap(), before);

    let out = swrepl(&[
        "registry",
        "apply",
        p(&patch),
        "--registry-file",
        p(&slave),
        "--archive",
        p(&archive),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("previous state saved to"),
        "{}",
        stdout(&out)
    );
    let archived: Vec<_> = fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(archived.len(), 1);

    // The slave now differs from the original exactly by the patch.
    let original = dir.path().join("original.reg");
    fs::write(&original, &before).unwrap();
    let out = swrepl(&["registry", "diff", p(&original), p(&slave)]);
    assert_eq!(code(&out), 1);
    assert_eq!(stdout(&out).lines().count(), 5, "{}", stdout(&out));
    assert!(!stdout(&out).contains("secret"));

    // Again: nothing to change, nothing archived.
    let again = swrepl(&[
        "registry",
        "apply",
        p(&patch),
        "--registry-file",
        p(&slave),
        "--archive",
        p(&archive),
    ]);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert!(
        stdout(&again).contains("nothing to change"),
        "{}",
        stdout(&again)
    );
    assert_eq!(fs::read_dir(&archive).unwrap().count(), 1);

    // The archive restores the previous state.
    let restore = swrepl(&[
        "registry",
        "apply",
        p(&archived[0]),
        "--registry-file",
        p(&slave),
        "--no-archive",
    ]);
    assert_eq!(code(&restore), 0, "{}", stderr(&restore));
    let out = swrepl(&["registry", "diff", p(&original), p(&slave)]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
}

#[test]
fn apply_touching_another_key_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let slave = dir.path().join("slave.reg");
    write_utf16(&slave, &master_text());
    let before = fs::read(&slave).unwrap();
    let patch = dir.path().join("forged.reg");
    fs::write(
        &patch,
        format!("Windows Registry Editor Version 5.00\n\n[{GLOBAL}]\n\"ok\"=\"1\"\n\n[HKEY_LOCAL_MACHINE\\Software\\Other]\n\"secret\"=\"changed\"\n"),
    )
    .unwrap();
    let out = swrepl(&[
        "registry",
        "apply",
        p(&patch),
        "--registry-file",
        p(&slave),
        "--no-archive",
    ]);
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    assert!(
        err.contains(r"HKEY_LOCAL_MACHINE\Software\Other") && err.contains("nothing was applied"),
        "{err}"
    );
    assert_eq!(fs::read(&slave).unwrap(), before);
}

#[test]
fn apply_without_archive_choice_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let slave = dir.path().join("slave.reg");
    write_utf16(&slave, &master_text());
    let patch = dir.path().join("patch.reg");
    fs::write(
        &patch,
        format!("Windows Registry Editor Version 5.00\n\n[{GLOBAL}]\n\"a\"=\"b\"\n"),
    )
    .unwrap();
    let before = fs::read(&slave).unwrap();
    let out = swrepl(&["registry", "apply", p(&patch), "--registry-file", p(&slave)]);
    assert_eq!(code(&out), 2);
    assert_eq!(fs::read(&slave).unwrap(), before);
    assert!(stderr(&out).contains("--archive"), "{}", stderr(&out));
}
