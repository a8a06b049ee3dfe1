//! Conversions between this crate's model and the wire types of `swrepl_proto::registry`.
//!
//! Incoming data is untrusted: `from_wire_*` run the protocol's shape and limit checks, parse
//! every path, and refuse keys listed before their parents, outside the snapshot's roots, or
//! twice. The scope check (which keys may be written) is [`crate::Scope::check`], run by
//! [`crate::apply_changes`].

use swrepl_proto::registry::{
    validate_registry_changes, validate_registry_snapshot, RegistryChangeSet, RegistryKeyState,
    RegistryOp, RegistrySnapshot, RegistryValue,
};

use crate::changes::{ChangeSet, Op};
use crate::model::{walk_key, Snapshot, Tree, Value};
use crate::path::KeyPath;
use crate::{Error, Result};

fn wire_value(name: &str, value: &Value) -> RegistryValue {
    RegistryValue {
        name: name.to_string(),
        kind: value.kind,
        data: value.data.clone(),
    }
}

fn parse_path(path: &str) -> Result<KeyPath> {
    KeyPath::parse(path).map_err(|e| Error::Wire(e.to_string()))
}

/// A change set as the wire carries it.
pub fn to_wire_changes(changes: &ChangeSet) -> RegistryChangeSet {
    let ops = changes
        .ops
        .iter()
        .map(|op| match op {
            Op::CreateKey(path) => RegistryOp::CreateKey {
                path: path.to_string(),
            },
            Op::DeleteKey(path) => RegistryOp::DeleteKey {
                path: path.to_string(),
            },
            Op::SetValue { key, name, value } => RegistryOp::SetValue {
                key: key.to_string(),
                value: wire_value(name, value),
            },
            Op::DeleteValue { key, name } => RegistryOp::DeleteValue {
                key: key.to_string(),
                name: name.clone(),
            },
        })
        .collect();
    RegistryChangeSet { ops }
}

/// A change set received from a peer, checked.
pub fn from_wire_changes(wire: &RegistryChangeSet) -> Result<ChangeSet> {
    validate_registry_changes(wire).map_err(|e| Error::Wire(e.to_string()))?;
    let ops = wire
        .ops
        .iter()
        .map(|op| {
            Ok(match op {
                RegistryOp::CreateKey { path } => Op::CreateKey(parse_path(path)?),
                RegistryOp::DeleteKey { path } => Op::DeleteKey(parse_path(path)?),
                RegistryOp::SetValue { key, value } => Op::SetValue {
                    key: parse_path(key)?,
                    name: value.name.clone(),
                    value: Value::raw(value.kind, value.data.clone()),
                },
                RegistryOp::DeleteValue { key, name } => Op::DeleteValue {
                    key: parse_path(key)?,
                    name: name.clone(),
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ChangeSet { ops })
}

/// A snapshot as the wire carries it: roots, then every existing key, parents first.
pub fn to_wire_snapshot(snapshot: &Snapshot) -> RegistrySnapshot {
    let mut keys = Vec::new();
    for (root, key) in snapshot.roots() {
        if let Some(key) = key {
            walk_key(root, key, &mut |path, key| {
                keys.push(RegistryKeyState {
                    path: path.to_string(),
                    values: key
                        .values()
                        .iter()
                        .map(|v| wire_value(&v.name, &v.value))
                        .collect(),
                });
            });
        }
    }
    RegistrySnapshot {
        roots: snapshot
            .root_paths()
            .iter()
            .map(|r| r.to_string())
            .collect(),
        keys,
    }
}

/// A snapshot received from a peer, checked.
pub fn from_wire_snapshot(wire: &RegistrySnapshot) -> Result<Snapshot> {
    validate_registry_snapshot(wire).map_err(|e| Error::Wire(e.to_string()))?;
    let roots = wire
        .roots
        .iter()
        .map(|r| parse_path(r))
        .collect::<Result<Vec<_>>>()?;
    let mut tree = Tree::new();
    for state in &wire.keys {
        let path = parse_path(&state.path)?;
        let is_root = roots.contains(&path);
        if !is_root && !roots.iter().any(|root| path.is_within(root)) {
            return Err(Error::Wire(format!(
                "key {path} is not under any of the snapshot's roots"
            )));
        }
        if tree.get(&path).is_some() {
            return Err(Error::Wire(format!("key {path} is listed twice")));
        }
        let parent_known = path.parent().is_some_and(|p| tree.get(&p).is_some());
        if !is_root && !parent_known {
            return Err(Error::Wire(format!(
                "key {path} is listed before its parent"
            )));
        }
        let key = tree.create(&path);
        for value in &state.values {
            if key.value(&value.name).is_some() {
                return Err(Error::Wire(format!(
                    "value {:?} of key {path} is listed twice",
                    value.name
                )));
            }
            key.set_value(&value.name, Value::raw(value.kind, value.data.clone()));
        }
    }
    Ok(tree.snapshot(&roots))
}
