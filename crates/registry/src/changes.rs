//! Change sets: the difference between two snapshots, and applying one to a tree.

use std::fmt;

use crate::model::{walk_key, Key, Snapshot, Tree, Value};
use crate::path::KeyPath;
use crate::regfile::entry_summary;

/// The data after `=` in a `"name"=data` summary.
fn data_part(summary: &str) -> &str {
    // The name part is `@=` or a quoted name whose quotes and backslashes are escaped, so the
    // first `=` after the closing quote is the separator.
    let end_of_name = if summary.starts_with('@') {
        1
    } else {
        let mut escaped = false;
        summary
            .char_indices()
            .skip(1)
            .find(|&(_, c)| {
                let close = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                close
            })
            .map(|(i, _)| i + 1)
            .unwrap_or(0)
    };
    summary[end_of_name..].strip_prefix('=').unwrap_or(summary)
}

/// One change. Every operation is idempotent: applying it to a registry already in the wanted
/// state changes nothing (so a change set resent after a reconnect is harmless).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the key (and missing parents) if it does not exist.
    CreateKey(KeyPath),
    /// Delete the key and everything below it, if it exists.
    DeleteKey(KeyPath),
    /// Create or replace a value (creating the key if needed).
    SetValue {
        key: KeyPath,
        name: String,
        value: Value,
    },
    /// Delete a value, if it exists.
    DeleteValue { key: KeyPath, name: String },
}

impl Op {
    /// The key this operation writes.
    pub fn key(&self) -> &KeyPath {
        match self {
            Op::CreateKey(path) | Op::DeleteKey(path) => path,
            Op::SetValue { key, .. } | Op::DeleteValue { key, .. } => key,
        }
    }
}

fn value_label(name: &str) -> String {
    if name.is_empty() {
        "@ (default)".to_string()
    } else {
        format!("{name:?}")
    }
}

/// One line per operation, as `swrepl registry diff` prints them.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CreateKey(path) => write!(f, "+ key [{path}]"),
            Op::DeleteKey(path) => write!(f, "- key [{path}]"),
            Op::SetValue { key, name, value } => {
                write!(f, "= value [{key}] {} = {value:?}", value_label(name))
            }
            Op::DeleteValue { key, name } => write!(f, "- value [{key}] {}", value_label(name)),
        }
    }
}

/// An ordered list of operations, applied all-or-nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub ops: Vec<Op>,
}

impl ChangeSet {
    /// One line per operation for an operator, relative to the state `old` it applies to:
    /// `+ key [path]`, `- key [path]`, `+ value [path] "name"=data`, `~ value [path] "name"=old
    /// -> data`, `- value [path] "name"=old`. Data is shown in .reg syntax, cut when long.
    pub fn describe(&self, old: &Snapshot) -> Vec<String> {
        let tree = old.to_tree();
        let shown = |name: &str, value: Option<&Value>| entry_summary(name, value, 100);
        self.ops
            .iter()
            .map(|op| match op {
                Op::CreateKey(path) => format!("+ key [{path}]"),
                Op::DeleteKey(path) => format!("- key [{path}]"),
                Op::SetValue { key, name, value } => {
                    match tree.get(key).and_then(|k| k.value(name)) {
                        Some(before) => format!(
                            "~ value [{key}] {} -> {}",
                            shown(name, Some(before)),
                            data_part(&shown(name, Some(value)))
                        ),
                        None => format!("+ value [{key}] {}", shown(name, Some(value))),
                    }
                }
                Op::DeleteValue { key, name } => {
                    let before = tree.get(key).and_then(|k| k.value(name));
                    match before {
                        Some(before) => format!("- value [{key}] {}", shown(name, Some(before))),
                        None => format!("- value [{key}] {}", shown(name, None)),
                    }
                }
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// The changes that turn `old` into `new`, for every root of `new`. A root that exists in `old`
/// and not in `new` is deleted; roots `new` does not list are left alone.
pub fn diff(old: &Snapshot, new: &Snapshot) -> ChangeSet {
    let mut ops = Vec::new();
    for (path, new_key) in new.roots() {
        match (old.root(path), new_key) {
            (None, None) => {}
            (Some(_), None) => ops.push(Op::DeleteKey(path.clone())),
            (None, Some(key)) => create_subtree(path, key, &mut ops),
            (Some(before), Some(after)) => diff_key(path, before, after, &mut ops),
        }
    }
    ChangeSet { ops }
}

fn create_subtree(path: &KeyPath, key: &Key, ops: &mut Vec<Op>) {
    walk_key(path, key, &mut |path, key| {
        ops.push(Op::CreateKey(path.clone()));
        for v in key.values() {
            ops.push(Op::SetValue {
                key: path.clone(),
                name: v.name.clone(),
                value: v.value.clone(),
            });
        }
    });
}

fn diff_key(path: &KeyPath, old: &Key, new: &Key, ops: &mut Vec<Op>) {
    for v in old.values() {
        if new.value(&v.name).is_none() {
            ops.push(Op::DeleteValue {
                key: path.clone(),
                name: v.name.clone(),
            });
        }
    }
    for v in new.values() {
        if old.value(&v.name) != Some(&v.value) {
            ops.push(Op::SetValue {
                key: path.clone(),
                name: v.name.clone(),
                value: v.value.clone(),
            });
        }
    }
    for sub in old.subkeys() {
        if new.subkey(sub.name()).is_none() {
            ops.push(Op::DeleteKey(path.child(sub.name())));
        }
    }
    for sub in new.subkeys() {
        let sub_path = path.child(sub.name());
        match old.subkey(sub.name()) {
            None => create_subtree(&sub_path, sub, ops),
            Some(before) => diff_key(&sub_path, before, sub, ops),
        }
    }
}

impl Tree {
    /// Applies every operation in order. Cannot fail: operations are idempotent and create what
    /// they need. Callers wanting all-or-nothing apply to a clone and keep it only on success of
    /// everything else (writing it out).
    pub fn apply(&mut self, changes: &ChangeSet) {
        for op in &changes.ops {
            self.apply_op(op);
        }
    }

    fn apply_op(&mut self, op: &Op) {
        match op {
            Op::CreateKey(path) => {
                self.create(path);
            }
            Op::DeleteKey(path) => {
                self.remove(path);
            }
            Op::SetValue { key, name, value } => self.create(key).set_value(name, value.clone()),
            Op::DeleteValue { key, name } => {
                if let Some(key) = self.get_mut(key) {
                    key.remove_value(name);
                }
            }
        }
    }
}

impl Snapshot {
    /// This snapshot with `changes` applied, over the same roots.
    pub fn apply(&self, changes: &ChangeSet) -> Snapshot {
        let mut tree = self.to_tree();
        tree.apply(changes);
        tree.snapshot(&self.root_paths())
    }
}
