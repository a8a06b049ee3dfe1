//! Deterministic simulation of replication sessions, in the manner of TigerBeetle's VOPR.
//!
//! The real [`SenderMachine`] and [`ReceiverMachine`] — the same code the tokio drivers run over
//! TLS — are driven by a seeded scheduler over an in-memory world: the Master's tree changes
//! under the sender (writes, edits, duplicates, renames, deletes, whole directories), messages
//! travel as real protocol frames through byte pipes delivered in random short pieces, and the
//! scheduler injects faults: disconnects, crashes of either side (the receiver's staging area is
//! left behind, the sender forgets its index), and I/O errors on the Slave's file system.
//!
//! Invariants, checked after every step of every seed:
//! - every file on the Slave holds a version the Master had at that path (never partial, never
//!   another file's content, never a mix);
//! - the sender never believes more was applied than the receiver applied;
//! - nothing is ever written under an excluded path.
//!
//! After the faults stop, the pair must converge: the Slave's tree equals the Master's.
//!
//! `SWREPL_SIM_SEEDS=N` runs N seeds (default 1000); `SWREPL_SIM_SEED=S` replays one seed (a
//! failure names its seed); `SWREPL_SIM_STEPS=N` sets the steps per seed (default 400).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::io::Cursor;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use swrepl_proto::summary::{summary_bits, BucketSet, TreeDigest};
use swrepl_proto::{encode_frame, Attributes, EntryKind, FileEntry, FrameDecoder, Hash, Message};
use swrepl_sync::session::{
    check_message, read_chunk, Completion, KnownPaths, PendingContent, Prepared, PruneOutcome,
    Reaction, ReceiverMachine, ReceiverOutput, ReceiverStore, SenderConfig, SenderMachine,
};
use swrepl_sync::SyncError;
use swrepl_tree::{chunk_reader, compare_paths, hash_bytes, Change, Excludes, ScanOutcome};

const DEFAULT_SEEDS: u64 = 1000;
const DEFAULT_STEPS: u32 = 400;

#[test]
fn simulated_pairs_stay_consistent_under_faults_and_converge() {
    let steps = env_u64("SWREPL_SIM_STEPS").map_or(DEFAULT_STEPS, |n| n as u32);
    let seeds: Vec<u64> = match env_u64("SWREPL_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("SWREPL_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let mut totals = Totals::default();
    for seed in seeds {
        let outcome = std::panic::catch_unwind(|| run_seed(seed, steps));
        match outcome {
            Ok(Ok(stats)) => totals.add(&stats),
            Ok(Err(violation)) => panic!(
                "seed {seed}: {violation}\nreplay: SWREPL_SIM_SEED={seed} cargo nextest run -p swrepl-sync --test simulation"
            ),
            Err(_) => panic!(
                "seed {seed} panicked (message above)\nreplay: SWREPL_SIM_SEED={seed} cargo nextest run -p swrepl-sync --test simulation"
            ),
        }
    }
    eprintln!("simulation: {totals:?}");
    if totals.seeds < 100 {
        return; // a replay: one seed need not meet every fault
    }
    // The faults must really have happened, or the run proved nothing.
    assert!(totals.sessions > totals.seeds, "{totals:?}");
    assert!(
        totals.crashes > 0
            && totals.io_errors > 0
            && totals.withdrawals > 0
            && totals.skipping_passes > 0,
        "{totals:?}"
    );
}

/// `SWREPL_SIM_TRACE=1` prints every step of a replayed seed.
fn trace(what: impl FnOnce() -> String) {
    if std::env::var_os("SWREPL_SIM_TRACE").is_some() {
        eprintln!("{}", what());
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// What happened across seeds (to show the faults were exercised).
#[derive(Debug, Default)]
struct Totals {
    seeds: u64,
    sessions: u64,
    crashes: u64,
    io_errors: u64,
    withdrawals: u64,
    files_installed: u64,
    /// Full passes that left out buckets the receiver's summary showed equal.
    skipping_passes: u64,
}

impl Totals {
    fn add(&mut self, stats: &Stats) {
        self.seeds += 1;
        self.sessions += stats.sessions;
        self.crashes += stats.crashes;
        self.io_errors += stats.io_errors;
        self.withdrawals += stats.withdrawals;
        self.files_installed += stats.files_installed;
        self.skipping_passes += stats.skipping_passes;
    }
}

#[derive(Debug, Default)]
struct Stats {
    sessions: u64,
    crashes: u64,
    io_errors: u64,
    withdrawals: u64,
    files_installed: u64,
    skipping_passes: u64,
}

// ---------------------------------------------------------------------------------------------
// The Master: an in-memory tree and every version each path ever had.

#[derive(Default)]
struct Master {
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeSet<String>,
    /// Every content each path ever held.
    history: HashMap<String, HashSet<Hash>>,
    /// Entries of files unchanged since they were last described (the scanner's stat cache).
    described: HashMap<String, FileEntry>,
    /// Directory renames since the last scan (what file identities tell the real scanner).
    dir_renames: Vec<(String, String)>,
}

const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f"];
/// Top-level directories that may be renamed, and the names they may get.
const RENAMEABLE: &[&str] = &["x", "y", "u", "v", "w"];
const DIRS: &[&str] = &["x", "y", "x/z", "Core Services/SwSqlServer/data"];

impl Master {
    fn write(&mut self, path: &str, content: Vec<u8>) {
        if self.dirs.contains(path) {
            return;
        }
        self.make_parents(path);
        self.history
            .entry(path.to_string())
            .or_default()
            .insert(hash_bytes(&content));
        self.described.remove(path);
        self.files.insert(path.to_string(), content);
    }

    fn make_parents(&mut self, path: &str) {
        let mut parent = String::new();
        for part in path.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.remove_file(&parent);
            self.dirs.insert(parent.clone());
        }
    }

    fn remove_tree(&mut self, path: &str) {
        self.files.retain(|p, _| !is_same_or_under(p, path));
        self.dirs.retain(|p| !is_same_or_under(p, path));
    }

    fn remove_file(&mut self, path: &str) -> Option<Vec<u8>> {
        self.described.remove(path);
        self.files.remove(path)
    }

    /// One random change, as an operator's or Supportworks' activity would make.
    fn mutate(&mut self, rng: &mut StdRng) {
        let existing: Vec<String> = self.files.keys().cloned().collect();
        match rng.random_range(0..10) {
            0..=3 => {
                let path = random_path(rng);
                let content = random_content(rng);
                self.write(&path, content);
            }
            4 | 5 if !existing.is_empty() => {
                // An edit in place: most chunks stay the same.
                let path = &existing[rng.random_range(0..existing.len())];
                let mut content = self.files[path].clone();
                if content.is_empty() {
                    content = random_content(rng);
                } else {
                    let at = rng.random_range(0..content.len());
                    let len = rng.random_range(1..=64.min(content.len() - at));
                    rng.fill(&mut content[at..at + len]);
                    if rng.random_bool(0.3) {
                        content.extend((0..rng.random_range(1..5000)).map(|i| i as u8));
                    }
                }
                self.write(&path.clone(), content);
            }
            6 if !existing.is_empty() => {
                // A duplicate: the same content under another name.
                let from = &existing[rng.random_range(0..existing.len())];
                let content = self.files[from].clone();
                self.write(&random_path(rng), content);
            }
            7 if !existing.is_empty() => {
                let from = existing[rng.random_range(0..existing.len())].clone();
                let to = random_path(rng);
                if to != from && !self.dirs.contains(&to) {
                    let content = self.remove_file(&from).expect("exists");
                    self.write(&to, content);
                }
            }
            8 if !existing.is_empty() => {
                let path = &existing[rng.random_range(0..existing.len())];
                self.remove_file(&path.clone());
            }
            9 if rng.random_bool(0.3) => {
                let from = RENAMEABLE[rng.random_range(0..RENAMEABLE.len())];
                let to = RENAMEABLE[rng.random_range(0..RENAMEABLE.len())];
                self.rename_dir(from, to);
            }
            9 => {
                let dir = DIRS[rng.random_range(0..DIRS.len())];
                if rng.random_bool(0.5) {
                    self.remove_tree(dir);
                } else {
                    self.make_parents(&format!("{dir}/_"));
                }
            }
            _ => {}
        }
    }

    /// Renames top-level directory `from` (with everything below it) to the free name `to`.
    /// The paths below keep their history: a Slave may briefly hold an older version under the
    /// new name (its rename moves what it has), which is a version the Master had.
    fn rename_dir(&mut self, from: &str, to: &str) {
        let taken = self.files.contains_key(to) || self.dirs.contains(to);
        if from == to || !self.dirs.contains(from) || taken {
            return;
        }
        let moved = |p: &str| format!("{to}{}", &p[from.len()..]);
        let files: Vec<String> = self
            .files
            .keys()
            .filter(|p| is_same_or_under(p, from))
            .cloned()
            .collect();
        for old in files {
            let content = self.remove_file(&old).expect("listed");
            self.described.remove(&moved(&old));
            self.files.insert(moved(&old), content);
        }
        // Whatever a Slave still holds below `from` (older versions, files the Master deleted
        // there and the Slave has not yet) moves with the directory.
        let lineage: Vec<(String, HashSet<Hash>)> = self
            .history
            .iter()
            .filter(|(p, _)| is_same_or_under(p, from))
            .map(|(p, versions)| (moved(p), versions.clone()))
            .collect();
        for (path, versions) in lineage {
            self.history.entry(path).or_default().extend(versions);
        }
        let dirs: Vec<String> = self
            .dirs
            .iter()
            .filter(|p| is_same_or_under(p, from))
            .cloned()
            .collect();
        for old in dirs {
            self.dirs.remove(&old);
            self.dirs.insert(moved(&old));
        }
        self.dir_renames.push((from.to_string(), to.to_string()));
    }

    /// The whole tree as a scanner describes it, parents first.
    fn describe(&mut self) -> Vec<FileEntry> {
        let mut entries: Vec<FileEntry> = self.dirs.iter().map(|d| dir_entry(d)).collect();
        for (path, content) in &self.files {
            let entry = self
                .described
                .entry(path.clone())
                .or_insert_with(|| file_entry(path, content));
            entries.push(entry.clone());
        }
        entries.sort_by(|a, b| compare_paths(&a.path, &b.path));
        entries
    }
}

fn random_path(rng: &mut StdRng) -> String {
    let name = NAMES[rng.random_range(0..NAMES.len())];
    match rng.random_range(0..4) {
        0 => name.to_string(),
        n => format!("{}/{name}", DIRS[(n as usize - 1) % DIRS.len()]),
    }
}

fn random_content(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..10) {
        0 => 0,
        1..=5 => rng.random_range(1..4_000),
        _ => rng.random_range(20_000..120_000),
    };
    let mut content = vec![0u8; len];
    rng.fill(&mut content[..]);
    content
}

fn is_same_or_under(path: &str, dir: &str) -> bool {
    path == dir || path.starts_with(&format!("{dir}/"))
}

fn dir_entry(path: &str) -> FileEntry {
    FileEntry {
        path: path.to_string(),
        kind: EntryKind::Dir,
        size: 0,
        mtime_ns: 0,
        attributes: Attributes::default(),
        chunks: Vec::new(),
        file_hash: hash_bytes(b""),
    }
}

fn file_entry(path: &str, content: &[u8]) -> FileEntry {
    let chunked = chunk_reader(Cursor::new(content)).expect("in memory");
    FileEntry {
        path: path.to_string(),
        kind: EntryKind::File,
        size: chunked.size,
        mtime_ns: 0,
        attributes: Attributes::default(),
        chunks: chunked.chunks,
        file_hash: chunked.file_hash,
    }
}

// ---------------------------------------------------------------------------------------------
// The sender's scanner: what the last scan reported (its index), and the changes since.

#[derive(Default)]
struct SimScanner {
    known: BTreeMap<String, FileEntry>,
    /// Content whose known entries must not be trusted (a change was withdrawn): like the real
    /// sender, which forgets the file wherever its index holds that content (it may have been
    /// renamed since it was announced).
    stale: HashSet<Hash>,
}

impl SimScanner {
    /// Scans the Master; `unreadable` is a file that changes while being read this time (it
    /// keeps its last known entry, or is left out if it is new, and is reported as a problem).
    fn scan(&mut self, master: &mut Master, unreadable: Option<&str>) -> ScanOutcome {
        let mut entries = master.describe();
        let mut problems = Vec::new();
        if let Some(path) = unreadable {
            let known = self.known.get(path).cloned();
            entries.retain(|e| e.path != path);
            entries.extend(known);
            entries.sort_by(|a, b| compare_paths(&a.path, &b.path));
            problems.push(swrepl_tree::ScanProblem {
                path: path.to_string(),
                reason: "changed while being read; will retry".into(),
            });
        }
        let current: BTreeMap<&str, &FileEntry> =
            entries.iter().map(|e| (e.path.as_str(), e)).collect();
        // What the receiver holds as the changes are applied: directory renames first.
        let mut virt = self.known.clone();
        let mut renames = Vec::new();
        for (from, to) in std::mem::take(&mut master.dir_renames) {
            let was_dir = virt.get(&from).is_some_and(|e| e.kind == EntryKind::Dir);
            let now_dir = current
                .get(to.as_str())
                .is_some_and(|e| e.kind == EntryKind::Dir);
            if !was_dir || !now_dir || current.contains_key(from.as_str()) || virt.contains_key(&to)
            {
                continue; // the plain comparison below describes it
            }
            let moved: Vec<String> = virt
                .keys()
                .filter(|p| is_same_or_under(p, &from))
                .cloned()
                .collect();
            for old in moved {
                let mut entry = virt.remove(&old).expect("listed");
                entry.path = format!("{to}{}", &old[from.len()..]);
                virt.insert(entry.path.clone(), entry);
            }
            renames.push(Change::Rename {
                from,
                entry: current[to.as_str()].clone(),
            });
        }
        let mut gone: Vec<&FileEntry> = virt
            .values()
            .filter(|old| {
                current
                    .get(old.path.as_str())
                    .is_none_or(|new| new.kind != old.kind)
            })
            .collect();
        let mut structural = Vec::new();
        let mut upserts = Vec::new();
        for entry in &entries {
            let trusted = !(entry.kind == EntryKind::File && self.stale.contains(&entry.file_hash));
            if virt.get(&entry.path) == Some(entry) && trusted {
                continue;
            }
            let moved_from = (entry.kind == EntryKind::File && !virt.contains_key(&entry.path))
                .then(|| {
                    gone.iter().position(|old| {
                        old.kind == EntryKind::File && old.file_hash == entry.file_hash
                    })
                })
                .flatten();
            match (moved_from, &entry.kind) {
                (Some(i), _) => {
                    let from = gone.remove(i).path.clone();
                    renames.push(Change::Rename {
                        from,
                        entry: entry.clone(),
                    });
                }
                (None, EntryKind::Dir) => structural.push(Change::Upsert(entry.clone())),
                (None, _) => upserts.push(Change::Upsert(entry.clone())),
            }
        }
        let gone: Vec<String> = gone.iter().map(|e| e.path.clone()).collect();
        let deletes = gone
            .iter()
            .filter(|p| {
                !gone
                    .iter()
                    .any(|other| other != *p && is_same_or_under(p, other))
            })
            .map(|p| Change::Delete(p.clone()));
        // As the real scanner orders them: renames (directories first), upserts (parents
        // first), deletes.
        let changes = renames
            .into_iter()
            .chain(structural)
            .chain(upserts)
            .chain(deletes)
            .collect();
        self.known = entries
            .iter()
            .map(|e| (e.path.clone(), e.clone()))
            .collect();
        // Withdrawn content read again cleanly is trusted again; unreadable now, it stays stale.
        let still_unread = unreadable
            .and_then(|p| self.known.get(p))
            .map(|e| e.file_hash);
        self.stale.retain(|h| still_unread == Some(*h));
        ScanOutcome {
            entries: entries
                .into_iter()
                .map(|entry| swrepl_tree::ScannedEntry {
                    entry,
                    file_id: None,
                })
                .collect(),
            changes,
            problems,
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Slave's file system, in memory, behind the same trait the real Applier implements.

struct SimStore {
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeSet<String>,
    excludes: Excludes,
    /// Staging files alive (created by prepare, removed by complete/discard/clear).
    staging: BTreeSet<u64>,
    staging_counter: u64,
    /// The next I/O operation that fails, counted down (None: no fault planned).
    fail_in: Option<u32>,
    io_errors: u64,
    installed: u64,
    /// Paths ever written, to check that no excluded path was.
    written: BTreeSet<String>,
    /// Paths written since the invariants were last checked (a version once checked stays one
    /// the Master had: history only grows).
    unchecked: BTreeSet<String>,
    /// The chunks of each file (the real receiver's index): where local copies are found.
    chunk_index: BTreeMap<String, Vec<swrepl_proto::ChunkRef>>,
}

struct SimPending {
    entry: FileEntry,
    staging_id: u64,
    data: Vec<u8>,
    offsets: Vec<u64>,
    awaiting: HashMap<Hash, Vec<u32>>,
    local: Vec<u32>,
    received: u64,
}

impl PendingContent for SimPending {
    fn entry(&self) -> &FileEntry {
        &self.entry
    }
    fn has_all_remote(&self) -> bool {
        self.awaiting.is_empty()
    }
    fn received_bytes(&self) -> u64 {
        self.received
    }
}

impl SimStore {
    fn new() -> Self {
        SimStore {
            files: BTreeMap::new(),
            dirs: BTreeSet::new(),
            excludes: Excludes::new(&[], true).expect("default excludes"),
            staging: BTreeSet::new(),
            staging_counter: 0,
            fail_in: None,
            io_errors: 0,
            installed: 0,
            written: BTreeSet::new(),
            unchecked: BTreeSet::new(),
            chunk_index: BTreeMap::new(),
        }
    }

    /// Counts down to a planned I/O error (a full disk, a failing write).
    fn io(&mut self, path: &str) -> Result<(), SyncError> {
        match self.fail_in {
            Some(0) => {
                self.fail_in = None;
                self.io_errors += 1;
                Err(SyncError::Apply {
                    path: path.to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        "simulated: no space left on device",
                    ),
                })
            }
            Some(n) => {
                self.fail_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Where a chunk with this hash can be copied from on this machine: found through the
    /// index, then read and checked (the file may have changed since it was indexed).
    fn find_local(&self, hash: &Hash, len: u32) -> Option<Vec<u8>> {
        self.chunk_index.iter().find_map(|(path, chunks)| {
            let content = self.files.get(path)?;
            let mut offset = 0usize;
            for chunk in chunks {
                let end = offset + chunk.len as usize;
                if chunk.hash == *hash && chunk.len == len {
                    let bytes = content.get(offset..end)?;
                    return (hash_bytes(bytes) == *hash).then(|| bytes.to_vec());
                }
                offset = end;
            }
            None
        })
    }

    fn make_parents(&mut self, path: &str) {
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            let parent = parts[..i].join("/");
            self.files.remove(&parent);
            self.dirs.insert(parent);
        }
    }

    fn remove_tree(&mut self, path: &str) {
        self.files.retain(|p, _| !is_same_or_under(p, path));
        self.dirs.retain(|p| !is_same_or_under(p, path));
        self.chunk_index.retain(|p, _| !is_same_or_under(p, path));
    }

    fn install(&mut self, path: &str, content: Vec<u8>, chunks: Vec<swrepl_proto::ChunkRef>) {
        self.remove_tree(path);
        self.make_parents(path);
        self.chunk_index.insert(path.to_string(), chunks);
        self.written.insert(path.to_string());
        self.unchecked.insert(path.to_string());
        self.files.insert(path.to_string(), content);
        self.installed += 1;
    }
}

impl ReceiverStore for SimStore {
    type Pending = SimPending;

    fn is_excluded(&self, rel: &str) -> bool {
        self.excludes.is_excluded(rel)
    }

    fn link_reaches_excluded(&self, _link: &str, _target: &str) -> bool {
        false
    }

    fn prepare_upsert(
        &mut self,
        entry: FileEntry,
        requested: &mut HashSet<Hash>,
    ) -> Result<Prepared<SimPending>, SyncError> {
        if entry.kind != EntryKind::File {
            return Ok(Prepared::Structural(entry));
        }
        if self
            .files
            .get(&entry.path)
            .is_some_and(|c| hash_bytes(c) == entry.file_hash)
        {
            return Ok(Prepared::UpToDate(entry));
        }
        self.io(&entry.path)?;
        self.staging_counter += 1;
        self.staging.insert(self.staging_counter);
        let mut offsets = Vec::new();
        let mut offset = 0;
        let mut awaiting: HashMap<Hash, Vec<u32>> = HashMap::new();
        let (mut local, mut need) = (Vec::new(), Vec::new());
        for (i, chunk) in entry.chunks.iter().enumerate() {
            let i = i as u32;
            offsets.push(offset);
            offset += u64::from(chunk.len);
            if let Some(waiting) = awaiting.get_mut(&chunk.hash) {
                waiting.push(i);
            } else if requested.contains(&chunk.hash)
                || self.find_local(&chunk.hash, chunk.len).is_some()
            {
                local.push(i);
            } else {
                awaiting.insert(chunk.hash, vec![i]);
                requested.insert(chunk.hash);
                need.push(i);
            }
        }
        let pending = SimPending {
            data: vec![0; entry.size as usize],
            entry,
            staging_id: self.staging_counter,
            offsets,
            awaiting,
            local,
            received: 0,
        };
        Ok(Prepared::File {
            pending: Box::new(pending),
            need,
        })
    }

    fn write_chunk(
        &mut self,
        pending: &mut SimPending,
        index: u32,
        data: &[u8],
    ) -> Result<(), SyncError> {
        let chunk = pending
            .entry
            .chunks
            .get(index as usize)
            .ok_or_else(|| SyncError::Protocol(format!("chunk index {index} out of range")))?;
        if data.len() != chunk.len as usize || hash_bytes(data) != chunk.hash {
            return Err(SyncError::Protocol(format!("chunk {index} does not match")));
        }
        let Some(indices) = pending.awaiting.remove(&chunk.hash) else {
            return Ok(());
        };
        self.io(&pending.entry.path)?;
        for i in indices {
            let at = pending.offsets[i as usize] as usize;
            pending.data[at..at + data.len()].copy_from_slice(data);
        }
        pending.received += data.len() as u64;
        Ok(())
    }

    fn complete(&mut self, pending: &mut SimPending) -> Result<Completion, SyncError> {
        self.io(&pending.entry.path)?;
        let mut late = Vec::new();
        for i in std::mem::take(&mut pending.local) {
            let chunk = pending.entry.chunks[i as usize];
            match self.find_local(&chunk.hash, chunk.len) {
                Some(bytes) => {
                    let at = pending.offsets[i as usize] as usize;
                    pending.data[at..at + bytes.len()].copy_from_slice(&bytes);
                }
                None => {
                    pending.awaiting.entry(chunk.hash).or_default().push(i);
                    late.push(i);
                }
            }
        }
        if !late.is_empty() {
            return Ok(Completion::NeedMore(late));
        }
        if hash_bytes(&pending.data) != pending.entry.file_hash {
            return Err(SyncError::Protocol(format!(
                "assembled {:?} does not match its whole-file hash",
                pending.entry.path
            )));
        }
        self.staging.remove(&pending.staging_id);
        let content = std::mem::take(&mut pending.data);
        let (path, chunks) = (pending.entry.path.clone(), pending.entry.chunks.clone());
        self.install(&path, content, chunks);
        Ok(Completion::Installed)
    }

    fn discard(&mut self, pending: SimPending) {
        self.staging.remove(&pending.staging_id);
    }

    fn apply_structural(&mut self, entry: FileEntry) -> Result<(), SyncError> {
        self.io(&entry.path)?;
        if !self.dirs.contains(&entry.path) {
            self.files.remove(&entry.path);
            self.make_parents(&entry.path);
            self.written.insert(entry.path.clone());
            self.dirs.insert(entry.path);
        }
        Ok(())
    }

    fn delete(&mut self, rel: &str) -> Result<bool, SyncError> {
        if !self.files.contains_key(rel) && !self.dirs.contains(rel) {
            return Ok(false);
        }
        self.io(rel)?;
        self.remove_tree(rel);
        Ok(true)
    }

    fn rename(&mut self, from: &str, entry: &FileEntry) -> Result<bool, SyncError> {
        let same = match (&entry.kind, self.files.get(from)) {
            (EntryKind::File, Some(content)) => hash_bytes(content) == entry.file_hash,
            (EntryKind::Dir, None) => self.dirs.contains(from),
            _ => false,
        };
        if !same || is_same_or_under(&entry.path, from) {
            return Ok(false);
        }
        self.io(&entry.path)?;
        let moved: Vec<(String, Vec<u8>, Vec<swrepl_proto::ChunkRef>)> = self
            .files
            .iter()
            .filter(|(p, _)| is_same_or_under(p, from))
            .map(|(p, c)| {
                let chunks = self.chunk_index.get(p).cloned().unwrap_or_default();
                (
                    format!("{}{}", entry.path, &p[from.len()..]),
                    c.clone(),
                    chunks,
                )
            })
            .collect();
        let dirs: Vec<String> = self
            .dirs
            .iter()
            .filter(|p| is_same_or_under(p, from))
            .map(|p| format!("{}{}", entry.path, &p[from.len()..]))
            .collect();
        self.remove_tree(from);
        self.remove_tree(&entry.path);
        self.make_parents(&entry.path);
        self.dirs.extend(dirs);
        for (path, content, chunks) in moved {
            self.written.insert(path.clone());
            self.unchecked.insert(path.clone());
            self.chunk_index.insert(path.clone(), chunks);
            self.files.insert(path, content);
        }
        Ok(true)
    }

    fn prune(
        &mut self,
        seen: &HashSet<String>,
        skipped: Option<&BucketSet>,
        prune: swrepl_proto::Prune,
    ) -> Result<PruneOutcome, SyncError> {
        let all: Vec<String> = self
            .dirs
            .iter()
            .chain(self.files.keys())
            .filter(|p| !self.excludes.is_excluded(p))
            .cloned()
            .collect();
        let extras: Vec<&String> = all
            .iter()
            .filter(|p| !seen.contains(*p))
            .filter(|p| !skipped.is_some_and(|s| s.contains_path(p)))
            .collect();
        let allowed = match prune {
            swrepl_proto::Prune::All => true,
            swrepl_proto::Prune::Never => false,
            swrepl_proto::Prune::UpToPermille(permille) => {
                extras.len() as u64 * 1000 <= u64::from(permille) * all.len() as u64
            }
        };
        if !allowed {
            return Ok(PruneOutcome {
                pruned: 0,
                held: extras.len() as u64,
            });
        }
        for path in &extras {
            self.io(path)?;
            self.remove_tree(path);
        }
        Ok(PruneOutcome {
            pruned: extras.len() as u64,
            held: 0,
        })
    }

    fn clear_staging(&mut self) {
        self.staging.clear();
    }

    fn summary(&mut self) -> Result<TreeDigest, SyncError> {
        self.io(".")?;
        let count = (self.dirs.len() + self.files.len()) as u64;
        let mut digest = TreeDigest::new(summary_bits(count));
        for dir in self.dirs.iter().filter(|p| !self.excludes.is_excluded(p)) {
            digest.add(&dir_entry(dir));
        }
        for (path, content) in &self.files {
            if !self.excludes.is_excluded(path) {
                digest.add(&file_entry(path, content));
            }
        }
        Ok(digest)
    }
}

// ---------------------------------------------------------------------------------------------
// The network: frames in byte pipes, delivered in random short pieces.

/// One direction of a connection: whole frames queued, handed over in arbitrary pieces.
#[derive(Default)]
struct Pipe {
    frames: VecDeque<Vec<u8>>,
    /// How much of the front frame was already delivered.
    offset: usize,
    decoder: FrameDecoder,
}

impl Pipe {
    fn send(&mut self, msg: &Message) {
        trace(|| format!("    send {}", describe(msg)));
        let frame = encode_frame(msg).expect("messages we build are within the limits");
        self.frames.push_back(frame);
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Delivers up to `max` bytes; returns the messages they completed.
    fn deliver(&mut self, mut max: usize) -> Result<Vec<Message>, String> {
        while max > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let end = front.len().min(self.offset.saturating_add(max));
            self.decoder.push(&front[self.offset..end]);
            max -= end - self.offset;
            self.offset = end;
            if end == front.len() {
                self.frames.pop_front();
                self.offset = 0;
            }
        }
        let mut messages = Vec::new();
        while let Some(msg) = self.decoder.next_message().map_err(|e| e.to_string())? {
            messages.push(msg);
        }
        Ok(messages)
    }
}

struct Session {
    sender: SenderMachine,
    receiver: ReceiverMachine<SimStore>,
    to_receiver: Pipe,
    to_sender: Pipe,
}

// ---------------------------------------------------------------------------------------------
// The world and its scheduler.

struct World {
    rng: StdRng,
    /// This seed's sender settings (window size, mass-delete guard).
    config: SenderConfig,
    master: Master,
    scanner: SimScanner,
    /// The Slave's store while no session holds it.
    store: Option<SimStore>,
    session: Option<Session>,
    last_paths: Option<KnownPaths>,
    /// A rescan is due (watch event, withdrawal, unreadable file).
    dirty: bool,
    /// Faults have stopped.
    healing: bool,
    stats: Stats,
    /// The receiver speaks protocol version 2 (tree summaries) in this seed.
    summaries: bool,
    /// A full scan was started (the summary asked for) and has not finished yet.
    full_scan_running: bool,
}

/// How a session ends.
enum End {
    /// The connection dropped; both processes live on.
    Disconnect,
    /// The receiver process died: no clean-up of its session.
    ReceiverCrash,
    /// The sender process died: it forgets its index and the tree it last saw.
    SenderCrash,
}

fn run_seed(seed: u64, steps: u32) -> Result<Stats, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let config = SenderConfig {
        once: false,
        // Half the seeds keep the mass-delete guard on: the operator confirms at the end.
        allow_mass_delete: rng.random_bool(0.5),
        mass_delete_permille: 200,
        // Small windows exercise flow control; the real one is 4096.
        window: [1, 2, 3, 8, 64, swrepl_sync::session::WINDOW][rng.random_range(0..6)],
    };
    let mut world = World {
        config,
        rng,
        master: Master::default(),
        scanner: SimScanner::default(),
        store: Some(SimStore::new()),
        session: None,
        last_paths: None,
        dirty: false,
        healing: false,
        stats: Stats::default(),
        summaries: false,
        full_scan_running: false,
    };
    world.summaries = world.rng.random_bool(0.75);
    for _ in 0..world.rng.random_range(0..20) {
        world.master.mutate(&mut world.rng);
    }
    for _ in 0..steps {
        world.step()?;
        world.check_invariants()?;
    }
    world.heal()?;
    let store = world.store_ref();
    let (io_errors, installed) = (store.io_errors, store.installed);
    world.stats.io_errors = io_errors;
    world.stats.files_installed = installed;
    Ok(world.stats)
}

impl World {
    fn step(&mut self) -> Result<(), String> {
        trace(|| {
            format!(
                "step: master {:?}",
                self.master
                    .files
                    .iter()
                    .map(|(p, c)| (p, c.len()))
                    .collect::<Vec<_>>()
            )
        });
        if self.session.is_none() {
            if self.rng.random_bool(0.3) {
                self.connect()?;
            } else {
                self.master.mutate(&mut self.rng);
            }
            return Ok(());
        }
        match self.rng.random_range(0..100) {
            0..=24 => self.pump_to_receiver(),
            25..=49 => self.pump_to_sender(),
            50..=64 => {
                self.transmit();
                Ok(())
            }
            65..=79 => {
                self.master.mutate(&mut self.rng);
                self.dirty = true;
                Ok(())
            }
            80..=89 => {
                let full = self.rng.random_bool(0.1);
                self.scan(full)
            }
            90..=92 => {
                let countdown = self.rng.random_range(0..20);
                self.store_ref().fail_in = Some(countdown);
                Ok(())
            }
            93..=95 => {
                self.end_session(End::Disconnect);
                Ok(())
            }
            96..=97 => {
                self.end_session(End::ReceiverCrash);
                Ok(())
            }
            _ => {
                self.end_session(End::SenderCrash);
                Ok(())
            }
        }
    }

    fn store_ref(&mut self) -> &mut SimStore {
        match self.session.as_mut() {
            Some(session) => receiver_store(&mut session.receiver),
            None => self.store.as_mut().expect("store between sessions"),
        }
    }

    /// A new session: like the real sender, it opens with a full pass.
    fn connect(&mut self) -> Result<(), String> {
        let store = self.store.take().expect("store between sessions");
        self.session = Some(Session {
            sender: SenderMachine::new(self.config.clone(), self.last_paths.take()),
            receiver: ReceiverMachine::new(store),
            to_receiver: Pipe::default(),
            to_sender: Pipe::default(),
        });
        if self.summaries {
            self.session
                .as_mut()
                .expect("just made")
                .sender
                .enable_tree_summaries();
        }
        self.stats.sessions += 1;
        self.full_scan_running = false;
        self.scan(true)
    }

    fn end_session(&mut self, end: End) {
        trace(|| {
            let how = match end {
                End::Disconnect => "disconnect",
                End::ReceiverCrash => "receiver crash",
                End::SenderCrash => "sender crash",
            };
            format!("  end session: {how}")
        });
        let Some(mut session) = self.session.take() else {
            return;
        };
        self.last_paths = session.sender.take_last_paths();
        let store = match end {
            End::Disconnect => session.receiver.into_store(),
            End::ReceiverCrash => {
                self.stats.crashes += 1;
                // No clean-up ran: staging files stay until the next start clears them, as
                // `Applier::open` does.
                let mut store = receiver_store_owned(session.receiver);
                store.clear_staging();
                store
            }
            End::SenderCrash => {
                self.stats.crashes += 1;
                self.scanner = SimScanner::default();
                self.last_paths = None;
                session.receiver.into_store()
            }
        };
        self.store = Some(store);
    }

    /// A scan. A full one starts (the sender asks for the receiver's summary) and finishes
    /// either at once or at a later scan step, the Master changing meanwhile as it does under a
    /// real scan.
    fn scan(&mut self, full: bool) -> Result<(), String> {
        // A started full scan finishes as one, as the driver's does; now and then an incremental
        // scan completes while it runs (the driver never does this, the machine must cope).
        let full = full || (self.full_scan_running && self.rng.random_bool(0.7));
        trace(|| format!("  scan full={full}"));
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        if full && !self.full_scan_running {
            session.sender.full_scan_started();
            if self.rng.random_bool(0.5) {
                self.full_scan_running = true;
                trace(|| "  full scan running".to_string());
                return Ok(());
            }
        }
        self.full_scan_running &= !full;
        let count = self.master.files.len();
        let unreadable = (!self.healing && count > 0 && self.rng.random_bool(0.1))
            .then(|| self.rng.random_range(0..count))
            .and_then(|i| self.master.files.keys().nth(i).cloned());
        let outcome = self.scanner.scan(&mut self.master, unreadable.as_deref());
        self.dirty = false;
        if session.sender.scan_done(full, &outcome) {
            self.dirty = true;
        }
        Ok(())
    }

    fn transmit(&mut self) {
        let session = self.session.as_mut().expect("session");
        while let Some(msg) = session.sender.poll_transmit() {
            session.to_receiver.send(&msg);
        }
    }

    fn pump_to_receiver(&mut self) -> Result<(), String> {
        let max = self.piece_size();
        let session = self.session.as_mut().expect("session");
        let messages = session.to_receiver.deliver(max)?;
        trace(|| {
            format!(
                "  to receiver: {:?}",
                messages.iter().map(describe).collect::<Vec<_>>()
            )
        });
        let mut failed = false;
        for msg in messages {
            if matches!(&msg, Message::PassSkips { unchanged, .. } if unchanged.iter().any(|b| *b != 0))
            {
                self.stats.skipping_passes += 1;
            }
            let result = check_message(&msg)
                .and_then(|()| session.receiver.receive(msg))
                .and_then(|()| session.receiver.apply_ready());
            if let Err(e) = result {
                if !is_simulated_fault(&e) {
                    return Err(format!("receiver: {e}"));
                }
                failed = true;
                break;
            }
        }
        if !failed {
            if let Err(e) = session.receiver.acknowledge() {
                return Err(format!("receiver acknowledgement: {e}"));
            }
        }
        while let Some(output) = session.receiver.poll_output() {
            if let ReceiverOutput::Send(msg) = output {
                session.to_sender.send(&msg);
            }
        }
        if failed {
            // The receiver told the sender why and ended the session (see `tell_peer`).
            self.end_session(End::Disconnect);
        }
        Ok(())
    }

    fn pump_to_sender(&mut self) -> Result<(), String> {
        let max = self.piece_size();
        let session = self.session.as_mut().expect("session");
        for msg in session.to_sender.deliver(max)? {
            trace(|| format!("  to sender: {}", describe(&msg)));
            let reaction = match session.sender.handle(msg) {
                Ok(reaction) => reaction,
                Err(SyncError::PeerError { message, .. }) if message.contains("simulated") => {
                    self.end_session(End::Disconnect);
                    return Ok(());
                }
                Err(e) => return Err(format!("sender: {e}")),
            };
            if let Reaction::ServeChunks(request) = reaction {
                let content = self.master.files.get(&request.entry.path);
                trace(|| {
                    format!(
                        "  serve {:?} seq {} found {} in {:?}",
                        request.entry.path,
                        request.seq,
                        content.is_some(),
                        self.master.files.keys().collect::<Vec<_>>()
                    )
                });
                let mut file = Cursor::new(content.cloned().unwrap_or_default());
                for &index in &request.indices {
                    let read = match content {
                        Some(_) => read_chunk(&mut file, &request.entry, &request.offsets, index),
                        None => Err("cannot open: not found".to_string()),
                    };
                    match read {
                        Ok(data) => session.sender.chunk_read(request.seq, index, data),
                        Err(reason) => {
                            let withdrawn = session.sender.withdraw(request.seq, reason);
                            // Like the real sender: the index entry is made stale, not
                            // dropped, so the next scan sends the file again or its delete.
                            self.scanner.stale.extend(withdrawn.map(|e| e.file_hash));
                            self.dirty = true;
                            self.stats.withdrawals += 1;
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Short reads: the network hands over anything from one byte to a few frames.
    fn piece_size(&mut self) -> usize {
        match self.rng.random_range(0..4) {
            0 => self.rng.random_range(1..16),
            1 => self.rng.random_range(1..4096),
            _ => usize::MAX,
        }
    }

    fn check_invariants(&mut self) -> Result<(), String> {
        if let Some(session) = &self.session {
            if session.sender.acked() > session.receiver.applied_seq() {
                return Err(format!(
                    "sender believes {} applied, receiver applied {}",
                    session.sender.acked(),
                    session.receiver.applied_seq()
                ));
            }
        }
        let master_history = std::mem::take(&mut self.master.history);
        let store = self.store_ref();
        let mut problem = None;
        for path in std::mem::take(&mut store.unchecked) {
            let Some(content) = store.files.get(&path) else {
                continue;
            };
            let had = master_history
                .get(&path)
                .is_some_and(|versions| versions.contains(&hash_bytes(content)));
            if !had {
                problem = Some(format!(
                    "the Slave's {path:?} ({} bytes) is no version the Master ever had there",
                    content.len()
                ));
                break;
            }
        }
        if let Some(path) = store.written.iter().find(|p| store.excludes.is_excluded(p)) {
            problem = Some(format!("wrote under an excluded path: {path:?}"));
        }
        self.master.history = master_history;
        problem.map_or(Ok(()), Err)
    }

    /// Runs the session (connecting if need be) until everything is sent, applied and
    /// acknowledged and no rescan is due.
    fn settle(&mut self) -> Result<(), String> {
        if self.session.is_none() {
            self.connect()?;
        }
        for round in 0.. {
            if round > 10_000 {
                return Err("no convergence: the session keeps working after 10 000 rounds".into());
            }
            if self.full_scan_running {
                self.scan(true)?;
            }
            self.transmit();
            self.pump_to_receiver()?;
            self.pump_to_sender()?;
            let session = self.session.as_ref().expect("no faults while healing");
            let quiet = session.to_receiver.is_empty() && session.to_sender.is_empty();
            if quiet && session.sender.is_settled() {
                if !self.dirty {
                    return Ok(());
                }
                self.scan(false)?;
            }
            self.check_invariants()?;
        }
        unreachable!("the loop returns")
    }

    /// Faults and changes stop: the pair must converge.
    fn heal(&mut self) -> Result<(), String> {
        self.healing = true;
        if let Some(session) = self.session.as_mut() {
            receiver_store(&mut session.receiver).fail_in = None;
        } else if let Some(store) = self.store.as_mut() {
            store.fail_in = None;
        }
        self.settle()?;
        let held = self
            .session
            .as_ref()
            .is_some_and(|s| s.sender.summary().held_deletes > 0);
        if held && !self.config.allow_mass_delete {
            // The operator reads the warning and confirms: `send --allow-mass-delete`.
            trace(|| "  operator confirms the mass delete".to_string());
            self.end_session(End::Disconnect);
            self.config.allow_mass_delete = true;
            self.settle()?;
        }
        let expected = self.master.files.clone();
        let expected_dirs = self.master.dirs.clone();
        let store = self.store_ref();
        let visible = |p: &String| !store.excludes.is_excluded(p);
        let want: BTreeMap<_, _> = expected.iter().filter(|(p, _)| visible(p)).collect();
        let have: BTreeMap<_, _> = store.files.iter().collect();
        if want != have {
            let missing: Vec<_> = want.keys().filter(|p| !have.contains_key(*p)).collect();
            let extra: Vec<_> = have.keys().filter(|p| !want.contains_key(*p)).collect();
            let differ: Vec<_> = want
                .iter()
                .filter(|(p, c)| have.get(*p).is_some_and(|h| h != *c))
                .map(|(p, _)| p)
                .collect();
            return Err(format!(
                "no convergence: files differ (missing {missing:?}, extra {extra:?}, content {differ:?})"
            ));
        }
        let want_dirs: BTreeSet<_> = expected_dirs.iter().filter(|p| visible(p)).collect();
        let have_dirs: BTreeSet<_> = store.dirs.iter().collect();
        if want_dirs != have_dirs {
            return Err(format!(
                "no convergence: directories differ: Master {want_dirs:?}, Slave {have_dirs:?}"
            ));
        }
        if !store.staging.is_empty() {
            return Err(format!(
                "{} staging files left after the session settled",
                store.staging.len()
            ));
        }
        Ok(())
    }
}

fn describe(msg: &Message) -> String {
    let text = match msg {
        Message::ChunkData { seq, index, data } => {
            format!(
                "ChunkData {{ seq: {seq}, index: {index}, {} bytes }}",
                data.len()
            )
        }
        Message::Upsert { seq, entry } | Message::Rename { seq, entry, .. } => format!(
            "{} {{ seq: {seq}, path: {:?}, kind: {:?}, size: {} }}",
            if matches!(msg, Message::Upsert { .. }) {
                "Upsert"
            } else {
                "Rename"
            },
            entry.path,
            entry.kind,
            entry.size
        ),
        other => format!("{other:?}"),
    };
    text.chars().take(160).collect()
}

fn is_simulated_fault(e: &SyncError) -> bool {
    e.to_string().contains("simulated")
}

fn receiver_store(machine: &mut ReceiverMachine<SimStore>) -> &mut SimStore {
    machine.store_mut()
}

fn receiver_store_owned(machine: ReceiverMachine<SimStore>) -> SimStore {
    machine.abandon()
}
