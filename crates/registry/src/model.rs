//! The registry model: values (type number + raw bytes), keys, a whole tree, and snapshots of
//! configured root keys.

use std::collections::BTreeMap;
use std::fmt;

use crate::path::{fold, same_name, KeyPath};

/// Registry type numbers regedit knows by name.
pub mod kind {
    pub const REG_NONE: u32 = 0;
    pub const REG_SZ: u32 = 1;
    pub const REG_EXPAND_SZ: u32 = 2;
    pub const REG_BINARY: u32 = 3;
    pub const REG_DWORD: u32 = 4;
    pub const REG_DWORD_BIG_ENDIAN: u32 = 5;
    pub const REG_LINK: u32 = 6;
    pub const REG_MULTI_SZ: u32 = 7;
    pub const REG_RESOURCE_LIST: u32 = 8;
    pub const REG_FULL_RESOURCE_DESCRIPTOR: u32 = 9;
    pub const REG_RESOURCE_REQUIREMENTS_LIST: u32 = 10;
    pub const REG_QWORD: u32 = 11;

    /// The symbolic name of a type number, or `REG_<n>` for numbers Windows does not name.
    pub fn name(kind: u32) -> String {
        let known = match kind {
            REG_NONE => "REG_NONE",
            REG_SZ => "REG_SZ",
            REG_EXPAND_SZ => "REG_EXPAND_SZ",
            REG_BINARY => "REG_BINARY",
            REG_DWORD => "REG_DWORD",
            REG_DWORD_BIG_ENDIAN => "REG_DWORD_BIG_ENDIAN",
            REG_LINK => "REG_LINK",
            REG_MULTI_SZ => "REG_MULTI_SZ",
            REG_RESOURCE_LIST => "REG_RESOURCE_LIST",
            REG_FULL_RESOURCE_DESCRIPTOR => "REG_FULL_RESOURCE_DESCRIPTOR",
            REG_RESOURCE_REQUIREMENTS_LIST => "REG_RESOURCE_REQUIREMENTS_LIST",
            REG_QWORD => "REG_QWORD",
            other => return format!("REG_{other}"),
        };
        known.to_string()
    }
}

/// A value's data: the registry type number and the raw bytes, exactly as Windows stores them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Value {
    pub kind: u32,
    pub data: Vec<u8>,
}

fn utf16z(text: &str) -> Vec<u8> {
    text.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

impl Value {
    /// Raw data of any type.
    pub fn raw(kind: u32, data: impl Into<Vec<u8>>) -> Value {
        Value {
            kind,
            data: data.into(),
        }
    }

    /// `REG_SZ`: UTF-16LE with its terminator, as Windows stores it.
    pub fn string(text: &str) -> Value {
        Value::raw(kind::REG_SZ, utf16z(text))
    }

    /// `REG_EXPAND_SZ`.
    pub fn expand_string(text: &str) -> Value {
        Value::raw(kind::REG_EXPAND_SZ, utf16z(text))
    }

    /// `REG_MULTI_SZ`: each string terminated, then an empty string ending the list.
    pub fn multi_string<S: AsRef<str>>(items: &[S]) -> Value {
        let mut data: Vec<u8> = items.iter().flat_map(|s| utf16z(s.as_ref())).collect();
        data.extend_from_slice(&[0, 0]);
        Value::raw(kind::REG_MULTI_SZ, data)
    }

    /// `REG_DWORD` (little-endian).
    pub fn dword(n: u32) -> Value {
        Value::raw(kind::REG_DWORD, n.to_le_bytes())
    }

    /// `REG_QWORD` (little-endian).
    pub fn qword(n: u64) -> Value {
        Value::raw(kind::REG_QWORD, n.to_le_bytes())
    }

    /// `REG_BINARY`.
    pub fn binary(data: impl Into<Vec<u8>>) -> Value {
        Value::raw(kind::REG_BINARY, data)
    }

    /// The string a `REG_SZ` holds when it is a plain, terminated UTF-16 string that regedit can
    /// write between quotes (no interior NUL, no line break, nothing after the terminator).
    /// `None` means the data must be written as `hex(1):` to stay exact.
    pub fn as_plain_string(&self) -> Option<String> {
        if self.kind != kind::REG_SZ || self.data.len() < 2 || self.data.len() % 2 != 0 {
            return None;
        }
        let units: Vec<u16> = self
            .data
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        let (last, body) = units.split_last()?;
        if *last != 0 || body.contains(&0) {
            return None;
        }
        let text = String::from_utf16(body).ok()?;
        if text.contains(['\r', '\n']) {
            return None;
        }
        Some(text)
    }

    /// The number a `REG_DWORD` holds when its data is exactly 4 bytes.
    pub fn as_dword(&self) -> Option<u32> {
        match (self.kind, <[u8; 4]>::try_from(self.data.as_slice())) {
            (kind::REG_DWORD, Ok(bytes)) => Some(u32::from_le_bytes(bytes)),
            _ => None,
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", kind::name(self.kind))?;
        if let Some(text) = self.as_plain_string() {
            return write!(f, "{text:?}");
        }
        if let Some(n) = self.as_dword() {
            return write!(f, "{n:#010x}");
        }
        for byte in &self.data {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A value with its name (the empty name is the default value, regedit's `@`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedValue {
    pub name: String,
    pub value: Value,
}

/// One registry key: its name (case preserved), its values in their stored order, and its
/// subkeys ordered as Windows enumerates them (by upper-cased name).
#[derive(Clone, Debug, Default)]
pub struct Key {
    name: String,
    values: Vec<NamedValue>,
    subkeys: BTreeMap<String, Key>,
    /// Whether the key was named itself (a `[section]` in a .reg file, or created) rather than
    /// only implied as the parent of one. Only affects how a .reg file is written back.
    explicit: bool,
}

impl Key {
    /// An empty key named `name`.
    pub fn new(name: &str) -> Key {
        Key {
            name: name.to_string(),
            values: Vec::new(),
            subkeys: BTreeMap::new(),
            explicit: true,
        }
    }

    pub(crate) fn implied(name: &str) -> Key {
        Key {
            explicit: false,
            ..Key::new(name)
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn is_explicit(&self) -> bool {
        self.explicit
    }

    pub(crate) fn mark_explicit(&mut self) {
        self.explicit = true;
    }

    /// Values in their stored order.
    pub fn values(&self) -> &[NamedValue] {
        &self.values
    }

    /// The value named `name` (case-insensitively).
    pub fn value(&self, name: &str) -> Option<&Value> {
        self.values
            .iter()
            .find(|v| same_name(&v.name, name))
            .map(|v| &v.value)
    }

    /// Creates or replaces a value. A replaced value keeps its place and its name's case, as
    /// `RegSetValueExW` does.
    pub fn set_value(&mut self, name: &str, value: Value) {
        match self.values.iter_mut().find(|v| same_name(&v.name, name)) {
            Some(existing) => existing.value = value,
            None => self.values.push(NamedValue {
                name: name.to_string(),
                value,
            }),
        }
    }

    /// Removes a value; returns whether it existed.
    pub fn remove_value(&mut self, name: &str) -> bool {
        let before = self.values.len();
        self.values.retain(|v| !same_name(&v.name, name));
        before != self.values.len()
    }

    /// Subkeys in Windows enumeration order.
    pub fn subkeys(&self) -> impl Iterator<Item = &Key> {
        self.subkeys.values()
    }

    /// The subkey named `name` (case-insensitively).
    pub fn subkey(&self, name: &str) -> Option<&Key> {
        self.subkeys.get(&fold(name))
    }

    pub(crate) fn subkey_mut(&mut self, name: &str) -> Option<&mut Key> {
        self.subkeys.get_mut(&fold(name))
    }

    /// Adds or replaces the subkey with the same name (case-insensitively).
    pub fn insert_subkey(&mut self, key: Key) {
        self.subkeys.insert(fold(&key.name), key);
    }

    /// Opens subkey `name`, creating it (implied, not explicit) if missing.
    pub(crate) fn subkey_or_implied(&mut self, name: &str) -> &mut Key {
        self.subkeys
            .entry(fold(name))
            .or_insert_with(|| Key::implied(name))
    }

    /// Removes a subkey and everything below it.
    pub fn remove_subkey(&mut self, name: &str) -> Option<Key> {
        self.subkeys.remove(&fold(name))
    }

    /// Number of keys in this subtree, this one included.
    pub fn key_count(&self) -> usize {
        1 + self.subkeys().map(Key::key_count).sum::<usize>()
    }
}

/// Keys are equal when Windows would see the same thing: same names (ignoring case), same
/// values by name (ignoring their order), same subkeys recursively.
impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        same_name(&self.name, &other.name)
            && self.values.len() == other.values.len()
            && self
                .values
                .iter()
                .all(|v| other.value(&v.name) == Some(&v.value))
            && self.subkeys == other.subkeys
    }
}

impl Eq for Key {}

/// A whole registry (or the part of it a .reg file describes): hives at the top.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    hives: Key,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// The hive keys (`HKEY_LOCAL_MACHINE`, …) that exist in this tree.
    pub fn hives(&self) -> impl Iterator<Item = &Key> {
        self.hives.subkeys()
    }

    /// The key at `path`, if it exists.
    pub fn get(&self, path: &KeyPath) -> Option<&Key> {
        path.components()
            .try_fold(&self.hives, |key, name| key.subkey(name))
    }

    /// The key at `path`, if it exists, for changing.
    pub fn get_mut(&mut self, path: &KeyPath) -> Option<&mut Key> {
        path.components()
            .try_fold(&mut self.hives, |key, name| key.subkey_mut(name))
    }

    /// The key at `path`, created if missing (marked explicit, parents implied).
    pub fn create(&mut self, path: &KeyPath) -> &mut Key {
        let key = path
            .components()
            .fold(&mut self.hives, |key, name| key.subkey_or_implied(name));
        key.mark_explicit();
        key
    }

    /// Puts `key` at `path` (replacing whatever was there), creating implied parents.
    pub fn insert(&mut self, path: &KeyPath, mut key: Key) {
        let parent = match path.parent() {
            Some(parent) => path
                .components()
                .take(parent.depth())
                .fold(&mut self.hives, |k, name| k.subkey_or_implied(name)),
            None => &mut self.hives,
        };
        key.name = path.name().to_string();
        parent.insert_subkey(key);
    }

    /// Removes the key at `path` with everything below it.
    pub fn remove(&mut self, path: &KeyPath) -> Option<Key> {
        match path.parent() {
            Some(parent) => self.get_mut(&parent)?.remove_subkey(path.name()),
            None => self.hives.remove_subkey(path.name()),
        }
    }

    /// The part of this tree at the given roots.
    pub fn snapshot(&self, roots: &[KeyPath]) -> Snapshot {
        Snapshot {
            roots: roots
                .iter()
                .map(|root| (root.clone(), self.get(root).cloned()))
                .collect(),
        }
    }

    /// Visits every key depth-first, parents before children, with its full path.
    pub fn walk(&self, mut visit: impl FnMut(&KeyPath, &Key)) {
        for hive in self.hives() {
            if let Ok(path) = KeyPath::parse(hive.name()) {
                walk_key(&path, hive, &mut visit);
            }
        }
    }
}

pub(crate) fn walk_key(path: &KeyPath, key: &Key, visit: &mut impl FnMut(&KeyPath, &Key)) {
    visit(path, key);
    for sub in key.subkeys() {
        walk_key(&path.child(sub.name()), sub, visit);
    }
}

/// The state of the configured root keys: for each root, its whole subtree, or `None` when the
/// key does not exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    roots: Vec<(KeyPath, Option<Key>)>,
}

impl Snapshot {
    /// A snapshot from its parts (each root with its subtree, or `None` when absent). Each root
    /// key takes its name from its path.
    pub fn new(roots: Vec<(KeyPath, Option<Key>)>) -> Snapshot {
        let roots = roots
            .into_iter()
            .map(|(path, key)| {
                let key = key.map(|mut key| {
                    key.name = path.name().to_string();
                    key
                });
                (path, key)
            })
            .collect();
        Snapshot { roots }
    }

    /// Each configured root with its subtree, or `None` when it does not exist.
    pub fn roots(&self) -> &[(KeyPath, Option<Key>)] {
        &self.roots
    }

    /// The configured root paths.
    pub fn root_paths(&self) -> Vec<KeyPath> {
        self.roots.iter().map(|(path, _)| path.clone()).collect()
    }

    /// The subtree of `root`, when `root` is one of this snapshot's roots and exists.
    pub fn root(&self, root: &KeyPath) -> Option<&Key> {
        self.roots
            .iter()
            .find(|(path, _)| path == root)
            .and_then(|(_, key)| key.as_ref())
    }

    /// A tree holding only the existing roots (and implied parents).
    pub fn to_tree(&self) -> Tree {
        let mut tree = Tree::new();
        for (path, key) in &self.roots {
            if let Some(key) = key {
                tree.insert(path, key.clone());
            }
        }
        tree
    }

    /// Number of existing keys over all roots.
    pub fn key_count(&self) -> usize {
        self.roots
            .iter()
            .filter_map(|(_, key)| key.as_ref())
            .map(Key::key_count)
            .sum()
    }
}
