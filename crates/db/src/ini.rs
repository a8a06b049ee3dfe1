//! Editing a server's option file (Swsql.ini or my.cnf) in place: a timestamped backup first,
//! then an atomic replace. Only the lines swrepl manages are touched; comments, other sections,
//! and the file's line endings (CRLF on Windows) are kept.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::DbError;

/// Sections a server reads its options from, in order of preference.
const SERVER_SECTIONS: &[&str] = &["mysqld", "swsql", "swsqlserver", "mariadb", "server"];

/// Options that may appear several times (each line adds a value).
const MULTI_VALUED: &[&str] = &["replicate-wild-ignore-table"];

/// One `key=value` line to ensure under the server's section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IniLine {
    pub key: String,
    pub value: String,
}

impl IniLine {
    pub fn new(key: &str, value: impl Into<String>) -> IniLine {
        IniLine {
            key: key.to_string(),
            value: value.into(),
        }
    }

    /// The line as it goes into the file.
    pub fn render(&self) -> String {
        format!("{}={}", self.key, self.value)
    }
}

/// What [`apply_ini_lines`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct IniEdit {
    /// Where the original was copied, when the file changed.
    pub backup: Option<PathBuf>,
    /// Lines added or changed.
    pub changed: Vec<String>,
}

/// Ensures every line in `lines` is set under the server section of the option file at `path`.
///
/// The server reads every server section (`[mysqld]`, `[mariadb]`, `[server]`, … however often
/// they appear) top to bottom and keeps an option's last value, so a single-valued key is set on
/// its last line in any of them, and added to the preferred section only when absent; a
/// multi-valued key (`replicate-wild-ignore-table`) gains a line unless the value is already
/// there. `-` and `_` in
/// keys are equivalent and keys are case-insensitive, as the server treats them. When nothing
/// changes, the file is not rewritten and no backup is made.
pub fn apply_ini_lines(path: &Path, lines: &[IniLine]) -> Result<IniEdit, DbError> {
    let original = std::fs::read_to_string(path)
        .map_err(|e| DbError::file("cannot read option file", path, e))?;
    let (edited, changed) = edit_text(&original, lines);
    if changed.is_empty() {
        return Ok(IniEdit {
            backup: None,
            changed,
        });
    }
    let backup = backup_path(path);
    std::fs::copy(path, &backup)
        .map_err(|e| DbError::file("cannot back up option file to", &backup, e))?;
    write_atomically(path, &edited)?;
    tracing::info!(file = %path.display(), backup = %backup.display(), "option file updated");
    Ok(IniEdit {
        backup: Some(backup),
        changed,
    })
}

/// The pure edit: new text and the lines that changed.
pub fn edit_text(original: &str, lines: &[IniLine]) -> (String, Vec<String>) {
    let eol = if original.contains("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let mut file: Vec<String> = original
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    let mut changed = Vec::new();
    let section = find_server_section(&file).unwrap_or_else(|| {
        if file.last().is_some_and(|l| !l.trim().is_empty()) {
            file.push(String::new());
        }
        file.push("[mysqld]".to_string());
        file.len() - 1
    });
    for line in lines {
        let key = normalize_key(&line.key);
        let value_of = |i: usize| parse_option(&file[i]).map(|(_, v)| v.to_string());
        let present: Vec<usize> = server_lines(&file)
            .into_iter()
            .filter(|&i| parse_option(&file[i]).is_some_and(|(k, _)| normalize_key(k) == key))
            .collect();
        if MULTI_VALUED.contains(&key.as_str()) {
            if present
                .iter()
                .any(|&i| value_of(i).as_ref() == Some(&line.value))
            {
                continue;
            }
        } else if let Some(&last) = present.last() {
            // The server keeps the last value it reads, so that is the line to set; earlier
            // ones are overridden and stay as the operator wrote them.
            if value_of(last).as_ref() != Some(&line.value) {
                file[last] = line.render();
                changed.push(line.render());
            }
            continue;
        }
        // Insert after the section's last non-blank line, so a blank separator stays last.
        let end = section_end(&file, section);
        let mut at = end;
        while at > section + 1 && file[at - 1].trim().is_empty() {
            at -= 1;
        }
        file.insert(at, line.render());
        changed.push(line.render());
    }
    let mut text = file.join(eol);
    text.push_str(eol);
    (text, changed)
}

fn find_server_section(file: &[String]) -> Option<usize> {
    SERVER_SECTIONS.iter().find_map(|want| {
        file.iter()
            .position(|l| section_name(l).is_some_and(|name| name.eq_ignore_ascii_case(want)))
    })
}

/// The name in a `[name]` header line.
fn section_name(line: &str) -> Option<&str> {
    let t = line.trim();
    t.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .map(str::trim)
}

/// Indices of the lines the server reads options from: every line under any of
/// [`SERVER_SECTIONS`], however often and wherever such a section appears. The server reads the
/// file top to bottom and keeps the last value of an option, so all of them count.
fn server_lines(file: &[String]) -> Vec<usize> {
    let mut in_server = false;
    let mut lines = Vec::new();
    for (i, line) in file.iter().enumerate() {
        if line.trim_start().starts_with('[') {
            in_server = section_name(line).is_some_and(|name| {
                SERVER_SECTIONS
                    .iter()
                    .any(|want| name.eq_ignore_ascii_case(want))
            });
        } else if in_server {
            lines.push(i);
        }
    }
    lines
}

fn section_end(file: &[String], section: usize) -> usize {
    (section + 1..file.len())
        .find(|&i| file[i].trim_start().starts_with('['))
        .unwrap_or(file.len())
}

fn parse_option(line: &str) -> Option<(&str, &str)> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') || t.starts_with(';') || t.starts_with('[') {
        return None;
    }
    match t.split_once('=') {
        Some((k, v)) => Some((k.trim(), v.trim())),
        None => Some((t, "")),
    }
}

fn normalize_key(key: &str) -> String {
    key.trim().to_ascii_lowercase().replace('_', "-")
}

fn backup_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut candidate = path.with_file_name(format!("{name}.swrepl-{}.bak", utc_stamp()));
    let mut n = 1;
    while candidate.exists() {
        candidate = path.with_file_name(format!("{name}.swrepl-{}-{n}.bak", utc_stamp()));
        n += 1;
    }
    candidate
}

fn write_atomically(path: &Path, text: &str) -> Result<(), DbError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| DbError::file("cannot create a temporary file in", dir, e))?;
    tmp.write_all(text.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| DbError::file("cannot write", tmp.path().to_path_buf(), e))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(tmp.path(), meta.permissions());
    }
    tmp.persist(path)
        .map_err(|e| DbError::file("cannot replace option file", path, e.error))?;
    Ok(())
}

/// `YYYYMMDDTHHMMSSZ` for now, in UTC.
fn utc_stamp() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
}

// The `option_file` fuzz target's check, and the replay of its inputs (`fuzz/checks/`).
#[cfg(test)]
#[path = "../../../fuzz/checks/option_file.rs"]
mod option_file_check;
#[cfg(test)]
#[path = "../../../fuzz/checks/replay.rs"]
mod replay;

#[cfg(test)]
mod tests {
    use super::*;

    fn lines() -> Vec<IniLine> {
        vec![
            IniLine::new("server-id", "2"),
            IniLine::new("read-only", "1"),
            IniLine::new("replicate-wild-ignore-table", "%.swsystag"),
        ]
    }

    #[test]
    fn adds_to_existing_section_and_keeps_crlf_and_other_sections() {
        let before =
            "# SwSQL\r\n[mysqld]\r\nport=5002\r\nserver_id=1\r\n\r\n[client]\r\nport=5002\r\n";
        let (after, changed) = edit_text(before, &lines());
        assert_eq!(
            after,
            "# SwSQL\r\n[mysqld]\r\nport=5002\r\nserver-id=2\r\nread-only=1\r\nreplicate-wild-ignore-table=%.swsystag\r\n\r\n[client]\r\nport=5002\r\n"
        );
        assert_eq!(changed.len(), 3);
        let (again, changed) = edit_text(&after, &lines());
        assert_eq!(again, after);
        assert!(changed.is_empty());
    }

    #[test]
    fn creates_the_section_when_missing_and_keeps_other_filters() {
        let before = "[client]\nport=5002\n";
        let (after, _) = edit_text(before, &lines());
        assert!(
            after.starts_with("[client]\nport=5002\n\n[mysqld]\nserver-id=2\n"),
            "{after}"
        );
        let with_filter = "[mysqld]\nreplicate-wild-ignore-table=audit.%\n";
        let (after, _) = edit_text(with_filter, &lines()[2..]);
        assert_eq!(
            after,
            "[mysqld]\nreplicate-wild-ignore-table=audit.%\nreplicate-wild-ignore-table=%.swsystag\n"
        );
    }

    #[test]
    fn file_edit_makes_a_backup_only_when_changing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Swsql.ini");
        std::fs::write(&path, "[mysqld]\nport=5002\n").unwrap();
        let edit = apply_ini_lines(&path, &lines()).unwrap();
        let backup = edit.backup.expect("backup");
        assert_eq!(
            std::fs::read_to_string(&backup).unwrap(),
            "[mysqld]\nport=5002\n"
        );
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("server-id=2"));
        let edit = apply_ini_lines(&path, &lines()).unwrap();
        assert_eq!(edit.backup, None);
        assert!(apply_ini_lines(&dir.path().join("missing.ini"), &lines()).is_err());
    }

    /// Fuzzing finding (`option_file`): the value was set on the first line of the key in the
    /// first server section, while the server keeps the last value it reads, from any server
    /// section. Each case left the server reading the old value.
    #[test]
    fn sets_the_value_the_server_reads_last() {
        let cases = [
            // Duplicate key in one section.
            (
                "[mysqld]\nserver-id=1\nport=5002\nserver_id=3\n",
                "[mysqld]\nserver-id=1\nport=5002\nserver-id=2\n",
            ),
            // A later section the server also reads.
            (
                "[mariadb]\nserver_id = 3\n[server]\nserver-id=4\n",
                "[mariadb]\nserver_id = 3\n[server]\nserver-id=2\n",
            ),
            // The preferred section repeated.
            (
                "[mysqld]\nport=5002\n[client]\nport=5002\n[mysqld]\nserver-id=9\n",
                "[mysqld]\nport=5002\n[client]\nport=5002\n[mysqld]\nserver-id=2\n",
            ),
        ];
        let want = [IniLine::new("server-id", "2")];
        for (before, after) in cases {
            let (edited, changed) = edit_text(before, &want);
            assert_eq!(edited, after, "{before:?}");
            assert_eq!(changed, ["server-id=2"]);
            assert_eq!(edit_text(&edited, &want), (edited.clone(), vec![]));
        }
        // Already right where it counts: nothing changes, the overridden line stays.
        let fine = "[mysqld]\nserver-id=1\n[server]\nserver-id=2\n";
        assert_eq!(edit_text(fine, &want), (fine.to_string(), vec![]));
        // A filter already present in another server section is not added again.
        let filter = [IniLine::new("replicate-wild-ignore-table", "%.swsystag")];
        let elsewhere = "[mysqld]\nport=5002\n[mariadb]\nreplicate_wild_ignore_table=%.swsystag\n";
        assert_eq!(edit_text(elsewhere, &filter).1, Vec::<String>::new());
    }

    #[test]
    fn fuzz_corpus_replays_clean() {
        let edit = |original: &str, wanted: &[(&str, &str)]| {
            let wanted: Vec<IniLine> = wanted.iter().map(|(k, v)| IniLine::new(k, *v)).collect();
            edit_text(original, &wanted)
        };
        let fuzz = replay::fuzz_dir(env!("CARGO_MANIFEST_DIR"), 2);
        let n = replay::replay(&fuzz, "option_file", |bytes| {
            let (pick, text) = option_file_check::split_input(bytes);
            option_file_check::check(pick, text, &edit);
        });
        eprintln!("{n} option_file inputs replayed");
    }

    #[test]
    fn stamp_shape() {
        let s = utc_stamp();
        assert_eq!(s.len(), 16);
        assert!(s.starts_with("20"));
    }
}
