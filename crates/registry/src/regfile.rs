//! The `.reg` file format exactly as regedit writes it ("Windows Registry Editor Version 5.00").
//!
//! Writing matches regedit byte for byte: UTF-16LE with a BOM, CRLF line ends, a blank line
//! before every `[key]`, one more at the end; strings between quotes with `\\` and `\"` escaped;
//! `dword:%08x`; everything else as `hex:` / `hex(N):` bytes, wrapped with `,\` and a two-space
//! indent once a line reaches 77 columns (regedit's rule, so lines stay within 80 columns).
//! Values that regedit's quoted or `dword:` forms would not reproduce exactly (a `REG_SZ` without
//! its terminator, with a line break or an interior NUL; a `REG_DWORD` that is not 4 bytes) are
//! written as `hex(1):` / `hex(4):`, so every value survives a round trip.
//!
//! Reading accepts UTF-16LE (with BOM) and UTF-8 (with or without BOM), CRLF or LF, comments
//! (`;`), continuation lines, key deletions `[-key]` and value deletions `"name"=-`. Any error
//! names the line and what is wrong; nothing is returned from a file with an error in it.

use crate::changes::{ChangeSet, Op};
use crate::model::{kind, Snapshot, Tree, Value};
use crate::path::KeyPath;
use crate::Error;

/// The first line of every file regedit writes.
pub const HEADER: &str = "Windows Registry Editor Version 5.00";
/// Column at which regedit breaks a hex line.
const HEX_WRAP_COLUMN: usize = 77;

/// A parsed `.reg` file: its sections in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegFile {
    pub sections: Vec<Section>,
}

/// One `[key]` section with its lines, or a `[-key]` deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Section {
    Key { path: KeyPath, entries: Vec<Entry> },
    DeleteKey(KeyPath),
}

/// One value line: `"name"=data` (or `@=data`); `value: None` is a deletion (`"name"=-`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub value: Option<Value>,
}

/// How a `.reg` file's text is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// What regedit writes: UTF-16LE with the BOM `FF FE`.
    Utf16Le,
    /// UTF-8 without BOM (read by regedit too; handy for hand-written files).
    Utf8,
}

impl RegFile {
    /// Parses the bytes of a `.reg` file in any encoding regedit reads.
    pub fn parse(bytes: &[u8]) -> Result<RegFile, Error> {
        parse_text(&decode(bytes)?)
    }

    /// A regedit-style export of the snapshot's existing roots: every key, parents first.
    pub fn export(snapshot: &Snapshot) -> RegFile {
        let mut sections = Vec::new();
        for (path, key) in snapshot.roots() {
            if let Some(key) = key {
                crate::model::walk_key(path, key, &mut |path, key| {
                    sections.push(key_section(path, key));
                });
            }
        }
        RegFile { sections }
    }

    /// A file that, imported by regedit or `swrepl registry apply`, puts the roots back exactly
    /// as they are in `snapshot`: a `[-root]` for each root, then the export of those that exist.
    pub fn restore_point(snapshot: &Snapshot) -> RegFile {
        let mut sections: Vec<Section> = snapshot
            .root_paths()
            .into_iter()
            .map(Section::DeleteKey)
            .collect();
        sections.extend(RegFile::export(snapshot).sections);
        RegFile { sections }
    }

    /// The whole tree as a file: a section for every key named explicitly or holding values.
    /// Keys that exist only as parents of others are implied, as in a regedit export of a subkey.
    pub fn from_tree(tree: &Tree) -> RegFile {
        let mut sections = Vec::new();
        tree.walk(|path, key| {
            if key.is_explicit() || !key.values().is_empty() || key.subkeys().next().is_none() {
                sections.push(key_section(path, key));
            }
        });
        RegFile { sections }
    }

    /// The file's effect when imported, as a change set (sections in order).
    pub fn to_changes(&self) -> ChangeSet {
        let mut ops = Vec::new();
        for section in &self.sections {
            match section {
                Section::DeleteKey(path) => ops.push(Op::DeleteKey(path.clone())),
                Section::Key { path, entries } => {
                    ops.push(Op::CreateKey(path.clone()));
                    ops.extend(entries.iter().map(|entry| match &entry.value {
                        Some(value) => Op::SetValue {
                            key: path.clone(),
                            name: entry.name.clone(),
                            value: value.clone(),
                        },
                        None => Op::DeleteValue {
                            key: path.clone(),
                            name: entry.name.clone(),
                        },
                    }));
                }
            }
        }
        ChangeSet { ops }
    }

    /// The registry this file describes: its import into an empty registry.
    pub fn to_tree(&self) -> Tree {
        let mut tree = Tree::new();
        tree.apply(&self.to_changes());
        tree
    }

    /// The file's text with CRLF line ends, exactly as regedit lays it out.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(HEADER);
        out.push_str("\r\n");
        for section in &self.sections {
            match section {
                Section::DeleteKey(path) => push_line(&mut out, &format!("\r\n[-{path}]")),
                Section::Key { path, entries } => {
                    push_line(&mut out, &format!("\r\n[{path}]"));
                    for entry in entries {
                        push_line(&mut out, &entry_text(entry));
                    }
                }
            }
        }
        out.push_str("\r\n");
        out
    }

    /// The file's bytes in `encoding`.
    pub fn to_bytes(&self, encoding: Encoding) -> Vec<u8> {
        encode(&self.to_text(), encoding)
    }

    /// Writes the file to `path` through a temporary file and a rename.
    pub fn write(&self, path: &std::path::Path, encoding: Encoding) -> Result<(), Error> {
        crate::backend::write_atomically(path, &self.to_bytes(encoding))
    }
}

fn key_section(path: &KeyPath, key: &crate::model::Key) -> Section {
    Section::Key {
        path: path.clone(),
        entries: key
            .values()
            .iter()
            .map(|v| Entry {
                name: v.name.clone(),
                value: Some(v.value.clone()),
            })
            .collect(),
    }
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line);
    out.push_str("\r\n");
}

/// Text in the given encoding (UTF-16LE gets regedit's BOM).
pub fn encode(text: &str, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Utf8 => text.as_bytes().to_vec(),
        Encoding::Utf16Le => [0xFF, 0xFE]
            .into_iter()
            .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Escapes a quoted name or string: `\\` and `\"` as regedit does, and line breaks as `\r` /
/// `\n` as Wine's regedit does (only value names can hold them: such string data goes as hex).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn entry_text(entry: &Entry) -> String {
    entry_line(entry, true)
}

/// `"name"=data` on one line (hex not wrapped), cut to about `max` characters; for messages.
pub(crate) fn entry_summary(name: &str, value: Option<&Value>, max: usize) -> String {
    let entry = Entry {
        name: name.to_string(),
        value: value.cloned(),
    };
    let line = entry_line(&entry, false);
    if line.chars().count() <= max {
        return line;
    }
    let cut: String = line.chars().take(max).collect();
    match value {
        Some(v) => format!("{cut}… ({} bytes)", v.data.len()),
        None => format!("{cut}…"),
    }
}

fn entry_line(entry: &Entry, wrap: bool) -> String {
    let mut line = if entry.name.is_empty() {
        "@=".to_string()
    } else {
        format!("\"{}\"=", escape(&entry.name))
    };
    match &entry.value {
        None => line.push('-'),
        Some(value) => {
            if let Some(text) = value.as_plain_string() {
                line.push('"');
                line.push_str(&escape(&text));
                line.push('"');
            } else if let Some(n) = value.as_dword() {
                line.push_str(&format!("dword:{n:08x}"));
            } else {
                push_hex(&mut line, value, wrap);
            }
        }
    }
    line
}

/// Appends `hex…:` and the bytes, breaking lines where regedit does. Regedit counts columns in
/// UTF-16 units from the start of the line (the name part included), adds 3 per `xx,`, and after
/// a comma that brings the count to 77 or more writes `\`, CRLF and a two-space indent.
fn push_hex(line: &mut String, value: &Value, wrap: bool) {
    let prefix = if value.kind == kind::REG_BINARY {
        "hex:".to_string()
    } else {
        format!("hex({:x}):", value.kind)
    };
    line.push_str(&prefix);
    let mut column = line.encode_utf16().count();
    let last = value.data.len().saturating_sub(1);
    for (i, byte) in value.data.iter().enumerate() {
        line.push_str(&format!("{byte:02x}"));
        if i == last {
            break;
        }
        line.push(',');
        column += 3;
        if wrap && column >= HEX_WRAP_COLUMN {
            line.push_str("\\\r\n  ");
            column = 2;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

fn decode(bytes: &[u8]) -> Result<String, Error> {
    let encoding_error = |message: String| Error::Encoding { message };
    if let Some(body) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        if body.len() % 2 != 0 {
            return Err(encoding_error(
                "UTF-16 file has an odd number of bytes (truncated?)".into(),
            ));
        }
        let units: Vec<u16> = body
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        return String::from_utf16(&units)
            .map_err(|_| encoding_error("UTF-16 file contains an unpaired surrogate".into()));
    }
    if bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(encoding_error(
            "file is UTF-16 big-endian; save it as regedit does (UTF-16LE) or as UTF-8".into(),
        ));
    }
    let body = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    String::from_utf8(body.to_vec()).map_err(|e| {
        encoding_error(format!(
            "file is neither UTF-16LE with a BOM nor valid UTF-8 (bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

fn syntax(line: usize, message: impl Into<String>) -> Error {
    Error::Syntax {
        line,
        message: message.into(),
    }
}

fn parse_text(text: &str) -> Result<RegFile, Error> {
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let mut index = 0;
    parse_header(&lines, &mut index)?;
    let mut sections: Vec<Section> = Vec::new();
    while index < lines.len() {
        let number = index + 1;
        let line = lines[index].trim();
        index += 1;
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            sections.push(parse_section_header(line, number)?);
            continue;
        }
        let entry = parse_entry(&lines, &mut index, number)?;
        match sections.last_mut() {
            Some(Section::Key { entries, .. }) => entries.push(entry),
            Some(Section::DeleteKey(path)) => {
                return Err(syntax(
                    number,
                    format!("value line under a key deletion [-{path}]"),
                ))
            }
            None => return Err(syntax(number, "value line before any [key] line")),
        }
    }
    Ok(RegFile { sections })
}

fn parse_header(lines: &[&str], index: &mut usize) -> Result<(), Error> {
    while *index < lines.len() && lines[*index].trim().is_empty() {
        *index += 1;
    }
    let number = *index + 1;
    let first = lines.get(*index).map(|l| l.trim()).unwrap_or_default();
    *index += 1;
    if first == HEADER {
        Ok(())
    } else if first == "REGEDIT4" {
        Err(syntax(
            number,
            "REGEDIT4 (ANSI) files are not supported: export with regedit's default \
             \"Registration Files (*.reg)\" format",
        ))
    } else {
        Err(syntax(
            number,
            format!("not a .reg file: expected the header {HEADER:?}"),
        ))
    }
}

fn parse_section_header(line: &str, number: usize) -> Result<Section, Error> {
    let inner = line
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .ok_or_else(|| syntax(number, "key line must end with ']'"))?;
    let (delete, path) = match inner.strip_prefix('-') {
        Some(path) => (true, path),
        None => (false, inner),
    };
    let path = KeyPath::parse(path).map_err(|e| syntax(number, e.to_string()))?;
    Ok(if delete {
        Section::DeleteKey(path)
    } else {
        Section::Key {
            path,
            entries: Vec::new(),
        }
    })
}

/// Parses a value line starting at `lines[*index - 1]`, consuming continuation lines.
fn parse_entry(lines: &[&str], index: &mut usize, number: usize) -> Result<Entry, Error> {
    let line = lines[*index - 1].trim_start();
    let (name, rest) = if let Some(rest) = line.strip_prefix('@') {
        (String::new(), rest)
    } else if line.starts_with('"') {
        parse_quoted(line, number)?
    } else {
        return Err(syntax(
            number,
            "expected a [key] line, a value line starting with '\"' or '@', or a ';' comment",
        ));
    };
    let data = rest
        .trim_start()
        .strip_prefix('=')
        .ok_or_else(|| syntax(number, "expected '=' after the value name"))?
        .trim_start();
    let value = parse_data(data, lines, index, number)?;
    Ok(Entry { name, value })
}

/// Parses `"…"` at the start of `text`; returns the unescaped string and the rest of the line.
fn parse_quoted(text: &str, number: usize) -> Result<(String, &str), Error> {
    let mut out = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                // Wine's regedit writes line breaks this way; Windows' never does.
                Some((_, 'n')) => out.push('\n'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, other)) => {
                    return Err(syntax(
                        number,
                        format!(
                        "unknown escape \\{other} in a quoted string (write \\\\ for a backslash)"
                    ),
                    ))
                }
                None => break,
            },
            _ => out.push(c),
        }
    }
    Err(syntax(number, "quoted string has no closing '\"'"))
}

fn parse_data(
    data: &str,
    lines: &[&str],
    index: &mut usize,
    number: usize,
) -> Result<Option<Value>, Error> {
    if data == "-" {
        return Ok(None);
    }
    if data.starts_with('"') {
        let (text, rest) = parse_quoted(data, number)?;
        if !rest.trim().is_empty() {
            return Err(syntax(
                number,
                format!("unexpected {:?} after the closing quote", rest.trim()),
            ));
        }
        return Ok(Some(Value::string(&text)));
    }
    if let Some(digits) = data.strip_prefix("dword:") {
        let digits = digits.trim();
        if digits.is_empty() || digits.len() > 8 {
            return Err(syntax(number, "dword: needs 1 to 8 hex digits"));
        }
        let n = u32::from_str_radix(digits, 16)
            .map_err(|_| syntax(number, format!("dword:{digits} is not hexadecimal")))?;
        return Ok(Some(Value::dword(n)));
    }
    if let Some((kind, bytes)) = split_hex(data, number)? {
        let bytes = join_continuations(bytes, lines, index);
        let data = parse_hex_bytes(&bytes, number)?;
        return Ok(Some(Value::raw(kind, data)));
    }
    Err(syntax(
        number,
        format!(
            "unrecognised value data {:?}: expected \"string\", dword:, hex:, hex(N): or -",
            data.chars().take(40).collect::<String>()
        ),
    ))
}

/// `hex:…` → (REG_BINARY, "…"); `hex(N):…` → (N, "…"); anything else → None.
fn split_hex(data: &str, number: usize) -> Result<Option<(u32, &str)>, Error> {
    if let Some(rest) = data.strip_prefix("hex:") {
        return Ok(Some((kind::REG_BINARY, rest)));
    }
    let Some(rest) = data.strip_prefix("hex(") else {
        return Ok(None);
    };
    let (digits, rest) = rest
        .split_once("):")
        .ok_or_else(|| syntax(number, "hex( must be followed by a type number and \"):\""))?;
    let kind = u32::from_str_radix(digits, 16)
        .ok()
        .filter(|_| !digits.is_empty() && digits.len() <= 8)
        .ok_or_else(|| syntax(number, format!("hex({digits}): has a bad type number")))?;
    Ok(Some((kind, rest)))
}

/// The hex text of a value with its continuation lines joined (each line ending in `\`
/// continues on the next, whose leading blanks are dropped).
fn join_continuations(first: &str, lines: &[&str], index: &mut usize) -> String {
    let mut text = String::new();
    let mut current = first.trim_end();
    while let Some(head) = current.strip_suffix('\\') {
        text.push_str(head);
        match lines.get(*index) {
            Some(next) => {
                *index += 1;
                current = next.trim();
            }
            None => return text,
        }
    }
    text.push_str(current);
    text
}

fn parse_hex_bytes(text: &str, number: usize) -> Result<Vec<u8>, Error> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let text = text.strip_suffix(',').unwrap_or(text);
    text.split(',')
        .map(|pair| {
            let pair = pair.trim();
            if pair.is_empty() || pair.len() > 2 {
                return Err(syntax(
                    number,
                    format!("bad hex byte {pair:?} (want two hex digits between commas)"),
                ));
            }
            u8::from_str_radix(pair, 16)
                .map_err(|_| syntax(number, format!("bad hex byte {pair:?}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(value: Value, name: &str) -> String {
        entry_text(&Entry {
            name: name.into(),
            value: Some(value),
        })
    }

    #[test]
    fn hex_wraps_where_regedit_does() {
        // `"Settings"=hex:` is 15 columns: 21 bytes fit on the first line (78 columns + `\`),
        // then 25 per continuation line.
        let line = line_of(Value::binary(vec![0xab; 50]), "Settings");
        let lines: Vec<&str> = line.split("\r\n").collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), 15 + 21 * 3 + 1);
        assert!(lines[0].ends_with(",\\"));
        assert_eq!(lines[1], format!("  {}\\", "ab,".repeat(25)));
        assert_eq!(lines[2], format!("  {}ab", "ab,".repeat(3)));
    }

    #[test]
    fn every_line_stays_within_80_columns() {
        for name_len in 0..90 {
            let name = "n".repeat(name_len);
            let text = line_of(Value::raw(0x7, vec![1; 300]), &name);
            for (i, l) in text.split("\r\n").enumerate().skip(1) {
                assert!(l.len() <= 80, "name {name_len}, line {i}: {l}");
            }
        }
    }

    #[test]
    fn odd_strings_and_dwords_stay_exact() {
        let no_terminator = Value::raw(kind::REG_SZ, vec![0x61, 0x00]);
        assert_eq!(line_of(no_terminator, "a"), "\"a\"=hex(1):61,00");
        let newline = Value::string("a\nb");
        assert!(line_of(newline, "a").starts_with("\"a\"=hex(1):61,00,0a,00"));
        let short_dword = Value::raw(kind::REG_DWORD, vec![1, 2]);
        assert_eq!(line_of(short_dword, "d"), "\"d\"=hex(4):01,02");
        assert_eq!(line_of(Value::raw(0, vec![]), ""), "@=hex(0):");
        assert_eq!(
            line_of(Value::string("C:\\\"x\""), "q\""),
            r#""q\""="C:\\\"x\"""#
        );
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (
                "Windows Registry Editor Version 5.00\n\n[HKLM\\A]\n\"x\"=dword:zz\n",
                4,
                "hexadecimal",
            ),
            (
                "Windows Registry Editor Version 5.00\n\"x\"=\"y\"\n",
                2,
                "before any",
            ),
            ("Windows Registry Editor Version 5.00\n[HKLM\\A\n", 2, "']'"),
            (
                "Windows Registry Editor Version 5.00\n[Software\\A]\n",
                2,
                "hive",
            ),
            (
                "Windows Registry Editor Version 5.00\n[HKLM\\A]\n\"x\"=hex:0g\n",
                3,
                "hex byte",
            ),
            (
                "Windows Registry Editor Version 5.00\n[HKLM\\A]\n\"x\"=\"a\\qb\"\n",
                3,
                "escape",
            ),
            (
                "Windows Registry Editor Version 5.00\n[HKLM\\A]\n\"x\"=\"abc\n",
                3,
                "closing",
            ),
            (
                "Windows Registry Editor Version 5.00\n[HKLM\\A]\n\"x\" \"y\"\n",
                3,
                "'='",
            ),
            (
                "Windows Registry Editor Version 5.00\n[HKLM\\A]\n\"x\"=wat\n",
                3,
                "unrecognised",
            ),
            (
                "Windows Registry Editor Version 5.00\n[HKLM\\A]\n\"x\"=hex(zz):00\n",
                3,
                "type number",
            ),
            (
                "Windows Registry Editor Version 5.00\n[-HKLM\\A]\n\"x\"=-\n",
                3,
                "deletion",
            ),
            ("REGEDIT4\n", 1, "REGEDIT4"),
            ("hello\n", 1, "header"),
        ];
        for (text, line, words) in cases {
            match RegFile::parse(text.as_bytes()) {
                Err(Error::Syntax { line: got, message }) => {
                    assert_eq!(got, line, "{text:?}: {message}");
                    assert!(message.contains(words), "{text:?}: {message}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_bad_encodings() {
        assert!(matches!(
            RegFile::parse(&[0xFF, 0xFE, 0x41]),
            Err(Error::Encoding { .. })
        ));
        assert!(matches!(
            RegFile::parse(&[0xFE, 0xFF, 0, 0x41]),
            Err(Error::Encoding { .. })
        ));
        assert!(matches!(
            RegFile::parse(&[0xC3, 0x28]),
            Err(Error::Encoding { .. })
        ));
    }
}
