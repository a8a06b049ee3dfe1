//! Key paths and the case-insensitive name comparison Windows uses.

use std::fmt;

use swrepl_proto::registry::{validate_registry_path, REGISTRY_HIVES};

use crate::Error;

/// The short hive names operators type, and the full names regedit writes.
const HIVE_ABBREVIATIONS: [(&str, &str); 5] = [
    ("HKLM", "HKEY_LOCAL_MACHINE"),
    ("HKCU", "HKEY_CURRENT_USER"),
    ("HKCR", "HKEY_CLASSES_ROOT"),
    ("HKU", "HKEY_USERS"),
    ("HKCC", "HKEY_CURRENT_CONFIG"),
];

/// The key `name` as Windows compares it: each character upper-cased when that gives exactly one
/// character (Windows upcases UTF-16 units one by one; it never turns `ß` into `SS`).
pub fn fold(name: &str) -> String {
    name.chars()
        .map(|c| {
            let mut upper = c.to_uppercase();
            match (upper.next(), upper.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// Whether two names are the same name to Windows.
pub fn same_name(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.eq_ignore_ascii_case(b) || fold(a) == fold(b)
}

/// A full registry key path such as `HKEY_LOCAL_MACHINE\Software\Hornbill`: the hive spelled in
/// full (abbreviations such as `HKLM` are expanded when parsing), then `\`-separated key names
/// in the case they were given. Equality and ordering ignore case, as Windows does.
#[derive(Clone, Debug)]
pub struct KeyPath {
    text: String,
    folded: String,
}

impl KeyPath {
    /// Parses a path typed by an operator or read from a file: accepts `HKLM`-style hive
    /// abbreviations and any hive case; refuses empty components and anything the wire refuses.
    pub fn parse(text: &str) -> Result<KeyPath, Error> {
        let (hive, rest) = match text.split_once('\\') {
            Some((hive, rest)) => (hive, Some(rest)),
            None => (text, None),
        };
        let full_hive = HIVE_ABBREVIATIONS
            .iter()
            .find(|(short, _)| short.eq_ignore_ascii_case(hive))
            .map(|(_, full)| *full)
            .or_else(|| {
                REGISTRY_HIVES
                    .iter()
                    .copied()
                    .find(|h| h.eq_ignore_ascii_case(hive))
            })
            .ok_or_else(|| Error::BadKeyPath {
                path: text.to_string(),
                reason: "it must start with a hive such as HKEY_LOCAL_MACHINE (or HKLM)".into(),
            })?;
        let normalized = match rest {
            Some(rest) => format!("{full_hive}\\{rest}"),
            None => full_hive.to_string(),
        };
        validate_registry_path(&normalized).map_err(|e| Error::BadKeyPath {
            path: text.to_string(),
            reason: e.to_string(),
        })?;
        // A `.reg` file names a key on one `[…]` line, with no escapes: a key name holding a
        // line break cannot be written to one (the receiver's restore points, the lab's
        // registry file), so such a key could be replicated but never archived or read back.
        if normalized.contains(['\r', '\n']) {
            return Err(Error::BadKeyPath {
                path: text.to_string(),
                reason: "a key name holds a line break, which a .reg file cannot represent".into(),
            });
        }
        Ok(KeyPath::from_valid(normalized))
    }

    fn from_valid(text: String) -> KeyPath {
        let folded = fold(&text);
        KeyPath { text, folded }
    }

    /// The path as written, hive in full.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The hive name followed by each key name.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.text.split('\\')
    }

    /// Number of components, hive included.
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// The path of subkey `name` of this key.
    pub fn child(&self, name: &str) -> KeyPath {
        KeyPath::from_valid(format!("{}\\{name}", self.text))
    }

    /// The parent key, or `None` for a hive.
    pub fn parent(&self) -> Option<KeyPath> {
        self.text
            .rsplit_once('\\')
            .map(|(parent, _)| KeyPath::from_valid(parent.to_string()))
    }

    /// The last component.
    pub fn name(&self) -> &str {
        self.text.rsplit('\\').next().unwrap_or(&self.text)
    }

    /// Whether this path is `root` or lies below it (case-insensitively).
    pub fn is_within(&self, root: &KeyPath) -> bool {
        self.folded == root.folded
            || (self.folded.starts_with(&root.folded)
                && self.folded[root.folded.len()..].starts_with('\\'))
    }
}

impl PartialEq for KeyPath {
    fn eq(&self, other: &Self) -> bool {
        self.folded == other.folded
    }
}

impl Eq for KeyPath {}

impl PartialOrd for KeyPath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KeyPath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.folded.cmp(&other.folded)
    }
}

impl std::hash::Hash for KeyPath {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.folded.hash(state)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for KeyPath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyPath::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_abbreviations_and_compares_without_case() {
        let a = KeyPath::parse(r"HKLM\Software\Hornbill").unwrap();
        let b = KeyPath::parse(r"hkey_local_machine\SOFTWARE\hornbill").unwrap();
        assert_eq!(a.as_str(), r"HKEY_LOCAL_MACHINE\Software\Hornbill");
        assert_eq!(a, b);
        assert!(a.child("HttpAliases").is_within(&b));
        assert!(a.is_within(&a));
        assert!(!KeyPath::parse(r"HKLM\Software\HornbillX")
            .unwrap()
            .is_within(&a));
        assert!(!a.is_within(&a.child("x")));
        assert_eq!(a.parent().unwrap().as_str(), r"HKEY_LOCAL_MACHINE\Software");
        assert_eq!(a.name(), "Hornbill");
    }

    #[test]
    fn refuses_bad_paths_with_the_reason() {
        for bad in [
            "",
            r"Software\Hornbill",
            r"HKLM\",
            r"HKLM\\x",
            "C:\\x",
            "HKLM\\a\nb",
            "HKLM\\a\rb",
        ] {
            let err = KeyPath::parse(bad).unwrap_err().to_string();
            assert!(err.contains("key path"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn folds_like_windows() {
        assert!(same_name("HttpAliases", "HTTPALIASES"));
        assert!(same_name("Größe", "GRÖßE"));
        assert!(!same_name("a", "b"));
        assert_eq!(fold("ß"), "ß");
    }
}
