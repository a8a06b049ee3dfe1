//! The persistent index: what the last scan saw, so that a rescan is stat-only, and where each
//! chunk's bytes can be found locally.
//!
//! Paths are stored case-sensitively, exactly as the file system reported them. The file format is
//! plain sqlite (inspect it with `sqlite3`); the index holds nothing that a full rescan cannot
//! rebuild, so deleting it is always safe.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, Row};

use crate::fsmeta::is_same_or_below;
use crate::{
    compare_paths, Attributes, ChunkRef, EntryKind, FileEntry, FileId, Hash, ScannedEntry,
    TreeError,
};

/// Schema version stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;
/// Bytes per chunk record in `entries.chunks`: 32 hash bytes then the length as u32 little-endian.
const CHUNK_RECORD: usize = 36;
/// How many candidate locations [`Index::find_chunk`] returns at most.
const CHUNK_CANDIDATES: usize = 8;

const KIND_FILE: i64 = 0;
const KIND_DIR: i64 = 1;
const KIND_SYMLINK: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    path        TEXT PRIMARY KEY NOT NULL,
    kind        INTEGER NOT NULL,
    link_target TEXT,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    unix_mode   INTEGER NOT NULL,
    win_attr    INTEGER NOT NULL,
    file_hash   BLOB NOT NULL,
    file_id     BLOB,
    chunks      BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    hash   BLOB NOT NULL,
    path   TEXT NOT NULL,
    offset INTEGER NOT NULL,
    len    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_hash ON chunks(hash);
CREATE INDEX IF NOT EXISTS chunks_by_path ON chunks(path);
CREATE TABLE IF NOT EXISTS segments (
    path      TEXT PRIMARY KEY NOT NULL,
    file_hash BLOB NOT NULL,
    cvs       BLOB NOT NULL
) WITHOUT ROWID;
";

/// Tables keyed by path, which follow an entry when it is removed or renamed.
const PATH_TABLES: [&str; 3] = ["entries", "chunks", "segments"];

const ENTRY_COLUMNS: &str =
    "path, kind, link_target, size, mtime_ns, unix_mode, win_attr, file_hash, file_id, chunks";

/// Where the bytes of a chunk can be read locally (they must be re-hashed before use: the file
/// may have changed since it was indexed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    pub path: String,
    pub offset: u64,
    pub len: u32,
}

/// The sqlite index (WAL mode).
pub struct Index {
    conn: Connection,
    /// Present after [`Index::track_chunks`]: answers "no such chunk here" without a query.
    chunk_filter: Option<ChunkFilter>,
    /// After [`Index::defer_commits`]: single writes join one open transaction until
    /// [`Index::commit`] (or [`MAX_DEFERRED_WRITES`] of them).
    defer: bool,
    /// Writes in the open deferred transaction (0: none open).
    deferred_writes: usize,
    /// How many of a file's chunks get a row in `chunks` (see [`Index::locate_first_chunks_only`]).
    located_chunks: usize,
}

/// Single writes one deferred transaction holds at most before it commits by itself.
const MAX_DEFERRED_WRITES: usize = 4096;

/// The first 8 bytes of every chunk hash recorded in this index (and of some that were since
/// forgotten), so that a lookup of a chunk this side never held costs no sqlite query. A hit is
/// only a "maybe": the caller still queries. blake3 output is uniformly distributed, so the
/// prefix itself is the set's hash.
struct ChunkFilter {
    keys: HashSet<u64, BuildHasherDefault<PrefixHasher>>,
    /// Forgotten chunks are never taken out (that would need a query per removed chunk); when the
    /// set grows past this, it is rebuilt from the table, so it stays within about twice the
    /// live chunks.
    rebuild_above: usize,
}

/// Smallest growth allowed before the filter is rebuilt: below this (8–16 MiB) stale keys cost
/// less than a rebuild.
const CHUNK_FILTER_SLACK: usize = 1 << 20;

impl ChunkFilter {
    fn load(conn: &Connection) -> Result<ChunkFilter, TreeError> {
        let mut keys: HashSet<u64, BuildHasherDefault<PrefixHasher>> = HashSet::default();
        let mut stmt = conn.prepare("SELECT hash FROM chunks")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            // A value that is not a blob (a damaged row) never equals the blob a lookup binds,
            // so leaving it out loses nothing.
            if let rusqlite::types::ValueRef::Blob(hash) = row.get_ref(0)? {
                keys.insert(chunk_key(hash));
            }
        }
        let rebuild_above = keys.len().saturating_mul(2).max(CHUNK_FILTER_SLACK);
        Ok(ChunkFilter {
            keys,
            rebuild_above,
        })
    }

    fn may_hold(&self, hash: &Hash) -> bool {
        self.keys.contains(&chunk_key(hash))
    }

    fn add(&mut self, entry: &FileEntry) {
        self.keys
            .extend(entry.chunks.iter().map(|chunk| chunk_key(&chunk.hash)));
    }

    fn needs_rebuild(&self) -> bool {
        self.keys.len() > self.rebuild_above
    }
}

/// The filter key of a chunk hash: its first 8 bytes (a shorter, i.e. damaged, stored hash is
/// zero-padded; it matches no real hash either way).
fn chunk_key(hash: &[u8]) -> u64 {
    let mut key = [0u8; 8];
    let n = hash.len().min(8);
    key[..n].copy_from_slice(&hash[..n]);
    u64::from_le_bytes(key)
}

/// A `Hasher` that passes a `u64` key (already uniformly distributed) through unchanged.
#[derive(Default)]
struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for u64 keys; kept correct for any other use.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        if let Err(e) = self.commit() {
            tracing::warn!(
                "index: the last writes were not saved ({e}); the next scan redoes them"
            );
        }
    }
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("path", &self.conn.path())
            .finish()
    }
}

impl Index {
    /// Opens (or creates, with its parent directory) the index at `db_path`.
    pub fn open(db_path: &Path) -> Result<Index, TreeError> {
        if let Some(parent) = db_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| TreeError::io(parent, e))?;
        }
        let conn = Connection::open(db_path)?;
        // WAL: readers never block the scan's writer; NORMAL sync is enough for data that a
        // rescan rebuilds (a lost last transaction only means some files are hashed again).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Index::init(conn)
    }

    /// Like [`Index::open`], but when the file is damaged (not a database, or rows that do not
    /// decode) it is deleted and created afresh: the index only saves rereading files, so losing
    /// it costs one full hashing scan, never data. Returns whether it was recreated. An index
    /// written by a newer swrepl is not touched.
    pub fn open_or_recreate(db_path: &Path) -> Result<(Index, bool), TreeError> {
        let damage = match Index::open(db_path).and_then(|index| index.all().map(|_| index)) {
            Ok(index) => return Ok((index, false)),
            Err(e @ (TreeError::Index(_) | TreeError::IndexCorrupt { .. })) => e,
            Err(e) => return Err(e),
        };
        tracing::warn!(path = %db_path.display(), error = %damage, "index unusable; recreating it");
        for suffix in ["", "-wal", "-shm"] {
            let mut name = db_path.as_os_str().to_os_string();
            name.push(suffix);
            match std::fs::remove_file(&name) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(TreeError::io(name, e)),
            }
        }
        Ok((Index::open(db_path)?, true))
    }

    /// An index that lives in memory only (tests, one-off listings).
    pub fn open_in_memory() -> Result<Index, TreeError> {
        Index::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Index, TreeError> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(TreeError::IndexTooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Index {
            conn,
            chunk_filter: None,
            defer: false,
            deferred_writes: 0,
            located_chunks: usize::MAX,
        })
    }

    /// From now on only each file's first chunk gets a location row: enough for
    /// [`Index::files_starting_with`], while [`Index::has_chunk`] and [`Index::find_chunk`] no
    /// longer see the other chunks. For an index that is never asked where a chunk's bytes are
    /// (the sender's): a large file has tens of thousands of chunks, and writing their rows was
    /// most of the cost of recording a small edit of it. Rows written before stay until their
    /// file is recorded again.
    pub fn locate_first_chunks_only(&mut self) {
        self.located_chunks = 1;
    }

    /// From now on single writes ([`Index::put`], [`Index::remove_tree`],
    /// [`Index::rename_tree`]) share one transaction until [`Index::commit`]: a commit per
    /// applied file was a sixth of the receiver's CPU on an initial sync. What a crash (or a
    /// failed write, which rolls the batch back) loses only costs rehashing: a rescan compares
    /// the index with the disk. Never data.
    pub fn defer_commits(&mut self) {
        self.defer = true;
    }

    /// Commits the deferred writes, if any.
    pub fn commit(&mut self) -> Result<(), TreeError> {
        if self.deferred_writes > 0 {
            self.deferred_writes = 0;
            if let Err(e) = self.conn.execute_batch("COMMIT") {
                // Leave no transaction open behind a failed commit, or every later write fails
                // to begin one; what is lost is redone by the next scan.
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Runs one write: in its own transaction, or in the deferred one.
    fn write<T>(
        &mut self,
        work: impl FnOnce(&Connection) -> Result<T, TreeError>,
    ) -> Result<T, TreeError> {
        if !self.defer {
            let tx = self.conn.transaction()?;
            let out = work(&tx)?;
            tx.commit()?;
            return Ok(out);
        }
        if self.deferred_writes == 0 {
            self.conn.execute_batch("BEGIN")?;
        }
        self.deferred_writes += 1;
        let out = match work(&self.conn) {
            Ok(out) => out,
            Err(e) => {
                // A write that failed halfway must not be committed with the rest: the whole
                // batch goes (a savepoint per write would cost more than the batch saves; what
                // is lost is only recomputed by the next scan, which compares with the disk).
                self.deferred_writes = 0;
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        if self.deferred_writes >= MAX_DEFERRED_WRITES {
            self.commit()?;
        }
        Ok(out)
    }

    /// From now on keeps an in-memory set of every recorded chunk hash's first 8 bytes (loaded
    /// here with one pass over the chunk table, then updated by every write), so that
    /// [`Index::has_chunk`] and [`Index::find_chunk`] answer "not here" without a query: the
    /// receiver asks that for every chunk of every announced file, and on an initial sync the
    /// answer is always no. Costs about 16–32 bytes per distinct chunk.
    pub fn track_chunks(&mut self) -> Result<(), TreeError> {
        self.chunk_filter = Some(ChunkFilter::load(&self.conn)?);
        Ok(())
    }

    /// Adds `entry`'s chunks to the filter (if tracked), rebuilding it when forgotten chunks
    /// have piled up. Call only after the entry is committed.
    fn note_chunks(&mut self, entry: &FileEntry) {
        let Some(filter) = self.chunk_filter.as_mut() else {
            return;
        };
        filter.add(entry);
        if filter.needs_rebuild() {
            self.chunk_filter = match ChunkFilter::load(&self.conn) {
                Ok(fresh) => Some(fresh),
                Err(e) => {
                    // Never a wrong answer: without the filter every lookup queries sqlite.
                    tracing::warn!(error = %e, "cannot rebuild the in-memory chunk filter; chunk lookups query the index from now on");
                    None
                }
            };
        }
    }

    /// Whether this filter says the chunk cannot be in the index (false: it may be).
    fn surely_lacks(&self, hash: &Hash) -> bool {
        self.chunk_filter
            .as_ref()
            .is_some_and(|filter| !filter.may_hold(hash))
    }

    /// The entry recorded for `rel`.
    pub fn get(&self, rel: &str) -> Result<Option<ScannedEntry>, TreeError> {
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE path = ?1");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query([rel])?;
        rows.next()?.map(entry_from_row).transpose()
    }

    /// Records `entry` (replacing what was recorded for its path).
    pub fn put(&mut self, entry: &ScannedEntry) -> Result<(), TreeError> {
        let located = self.located_chunks;
        self.write(|conn| put_entry(conn, entry, located))?;
        self.note_chunks(&entry.entry);
        Ok(())
    }

    /// Forgets `rel` and everything below it (`"a"` covers `"a/b"`, not `"ab"`).
    pub fn remove_tree(&mut self, rel: &str) -> Result<(), TreeError> {
        self.write(|conn| remove_tree_in(conn, rel))
    }

    /// Moves `from` and everything below it to `to`, keeping chunks and file ids; whatever was
    /// recorded at or below `to` is forgotten first.
    pub fn rename_tree(&mut self, from: &str, to: &str) -> Result<(), TreeError> {
        if from == to {
            return Ok(());
        }
        if is_same_or_below(to, from) || is_same_or_below(from, to) {
            return Err(TreeError::InvalidPath {
                path: to.to_string(),
                reason: format!("cannot move {from:?} to {to:?}: one contains the other"),
            });
        }
        self.write(|conn| {
            remove_tree_in(conn, to)?;
            let (lo, hi) = subtree_bounds(from);
            for table in PATH_TABLES {
                // length() and substr() both count characters, so the prefix cut is exact.
                let sql = format!(
                    "UPDATE {table} SET path = ?1 || substr(path, length(?2) + 1)
                     WHERE path = ?2 OR (path >= ?3 AND path < ?4)"
                );
                conn.execute(&sql, params![to, from, lo, hi])?;
            }
            Ok(())
        })
    }

    /// Records the segment chaining values of the file at `rel` with content `file_hash` (see
    /// [`crate::Chunked::segment_cvs`]), replacing what was recorded for `rel`.
    pub fn put_segments(
        &mut self,
        rel: &str,
        file_hash: &Hash,
        cvs: &[Hash],
    ) -> Result<(), TreeError> {
        self.write(|conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO segments (path, file_hash, cvs) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![rel, &file_hash[..], cvs.concat()])?;
            Ok(())
        })
    }

    /// The segment chaining values recorded for `rel`, if they were recorded for content
    /// `file_hash` (the file's current entry); empty otherwise.
    pub fn segments(&self, rel: &str, file_hash: &Hash) -> Result<Vec<Hash>, TreeError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT file_hash, cvs FROM segments WHERE path = ?1")?;
        let mut rows = stmt.query([rel])?;
        let Some(row) = rows.next()? else {
            return Ok(Vec::new());
        };
        if blob_at(row, 0)? != Some(&file_hash[..]) {
            return Ok(Vec::new());
        }
        let cvs = blob_at(row, 1)?.unwrap_or_default();
        if cvs.len() % 32 != 0 {
            return Err(corrupt("segment values not a multiple of 32 bytes"));
        }
        Ok(cvs
            .chunks_exact(32)
            .map(|cv| cv.try_into().expect("32-byte chunks"))
            .collect())
    }

    /// Whether a chunk with `hash` was seen anywhere (cheaper than [`Index::find_chunk`]: no
    /// query at all for a chunk the index never held, once [`Index::track_chunks`] was called).
    pub fn has_chunk(&self, hash: &Hash) -> Result<bool, TreeError> {
        if self.surely_lacks(hash) {
            return Ok(false);
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM chunks WHERE hash = ?1 LIMIT 1")?;
        Ok(stmt.exists(params![&hash[..]])?)
    }

    /// Up to a few places where a chunk with `hash` was seen.
    pub fn find_chunk(&self, hash: &Hash) -> Result<Vec<ChunkLocation>, TreeError> {
        if self.surely_lacks(hash) {
            return Ok(Vec::new());
        }
        // The limit is written into the statement: SQLite recompiles a statement every time a
        // parameter that its plan may depend on (as a LIMIT does) is bound again.
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT path, offset, len FROM chunks WHERE hash = ?1 LIMIT {CHUNK_CANDIDATES}"
        ))?;
        let rows = stmt.query_map(params![&hash[..]], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut found = Vec::new();
        for row in rows {
            let (path, offset, len) = row?;
            let offset = u64::try_from(offset).map_err(|_| corrupt("negative chunk offset"))?;
            let len = u32::try_from(len).map_err(|_| corrupt("chunk length out of range"))?;
            found.push(ChunkLocation { path, offset, len });
        }
        Ok(found)
    }

    /// Paths of the files whose first chunk has `hash`, all of them: where a file went when it
    /// was renamed (its chunks move with it), and its identical copies.
    pub fn files_starting_with(&self, hash: &Hash) -> Result<Vec<String>, TreeError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT path FROM chunks WHERE hash = ?1 AND offset = 0")?;
        let rows = stmt.query_map(params![&hash[..]], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every recorded entry, in no particular order.
    pub fn all(&self) -> Result<Vec<ScannedEntry>, TreeError> {
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM entries");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        // Sized exactly: grown by doubling, a million entries would leave up to a million
        // entries' worth of spare room (about 170 bytes each) for as long as the tree is held.
        let count: i64 = self
            .conn
            .query_row("SELECT count(*) FROM entries", [], |row| row.get(0))?;
        let mut all = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            all.push(entry_from_row(row)?);
        }
        Ok(all)
    }

    /// The path of every recorded entry, in no particular order.
    pub fn paths(&self) -> Result<Vec<String>, TreeError> {
        let mut stmt = self.conn.prepare_cached("SELECT path FROM entries")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many entries are recorded.
    pub fn len(&self) -> Result<u64, TreeError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM entries", [], |row| row.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> Result<bool, TreeError> {
        Ok(self.len()? == 0)
    }

    /// Brings the index from `before` to `after` (both in [`compare_paths`] order, each path
    /// once) in one transaction, touching only what differs.
    pub(crate) fn replace_state(
        &mut self,
        before: &[ScannedEntry],
        after: &[ScannedEntry],
    ) -> Result<(), TreeError> {
        self.commit()?;
        let tx = self.conn.transaction()?;
        // Both lists are sorted the same way: one merge walk instead of a lookup per entry.
        let mut old = before.iter().peekable();
        let mut written = Vec::new();
        for entry in after {
            let path = entry.entry.path.as_str();
            while let Some(gone) = old.next_if(|k| compare_paths(&k.entry.path, path).is_lt()) {
                remove_exact(&tx, &gone.entry.path)?;
            }
            match old.next_if(|k| k.entry.path == path) {
                Some(known) if known == entry => {}
                _ => {
                    put_entry(&tx, entry, self.located_chunks)?;
                    written.push(&entry.entry);
                }
            }
        }
        for gone in old {
            remove_exact(&tx, &gone.entry.path)?;
        }
        tx.commit()?;
        for entry in written {
            self.note_chunks(entry);
        }
        Ok(())
    }
}

/// `[lo, hi)` holds exactly the paths strictly below `rel`: those starting with `rel/`
/// (`'0'` is the byte after `'/'`).
fn subtree_bounds(rel: &str) -> (String, String) {
    (format!("{rel}/"), format!("{rel}0"))
}

fn remove_tree_in(conn: &Connection, rel: &str) -> Result<(), TreeError> {
    let (lo, hi) = subtree_bounds(rel);
    for table in PATH_TABLES {
        let sql = format!("DELETE FROM {table} WHERE path = ?1 OR (path >= ?2 AND path < ?3)");
        conn.prepare_cached(&sql)?.execute(params![rel, lo, hi])?;
    }
    Ok(())
}

fn remove_exact(conn: &Connection, rel: &str) -> Result<(), TreeError> {
    for table in PATH_TABLES {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE path = ?1"))?
            .execute([rel])?;
    }
    Ok(())
}

/// Records `scanned`, with location rows for its first `located` chunks.
fn put_entry(conn: &Connection, scanned: &ScannedEntry, located: usize) -> Result<(), TreeError> {
    let e = &scanned.entry;
    let (kind, link_target) = match &e.kind {
        EntryKind::File => (KIND_FILE, None),
        EntryKind::Dir => (KIND_DIR, None),
        EntryKind::Symlink { target } => (KIND_SYMLINK, Some(target.as_str())),
    };
    let mut chunk_blob = Vec::with_capacity(e.chunks.len() * CHUNK_RECORD);
    for chunk in &e.chunks {
        chunk_blob.extend_from_slice(&chunk.hash);
        chunk_blob.extend_from_slice(&chunk.len.to_le_bytes());
    }
    let size = i64::try_from(e.size).map_err(|_| corrupt("file size beyond 2^63 bytes"))?;
    let file_id = scanned.file_id.map(|id| id.to_be_bytes().to_vec());
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO entries ({ENTRY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))?
    .execute(params![
        e.path,
        kind,
        link_target,
        size,
        e.mtime_ns,
        e.attributes.unix_mode,
        e.attributes.windows,
        &e.file_hash[..],
        file_id,
        chunk_blob,
    ])?;
    let mut wanted = Vec::with_capacity(e.chunks.len().min(located));
    let mut offset = 0u64;
    for chunk in e.chunks.iter().take(located) {
        let at = i64::try_from(offset).map_err(|_| corrupt("chunk offset beyond 2^63"))?;
        wanted.push((at, chunk));
        offset += u64::from(chunk.len);
    }
    if wanted.len() < KEPT_ROWS_MIN {
        conn.prepare_cached("DELETE FROM chunks WHERE path = ?1")?
            .execute([&e.path])?;
    } else {
        wanted = drop_stale_chunk_rows(conn, &e.path, wanted)?;
    }
    let mut insert = conn
        .prepare_cached("INSERT INTO chunks (hash, path, offset, len) VALUES (?1, ?2, ?3, ?4)")?;
    for (at, chunk) in wanted {
        insert.execute(params![&chunk.hash[..], e.path, at, chunk.len])?;
    }
    Ok(())
}

/// Files with at least this many chunks keep the location rows that are still right when they
/// are recorded again, instead of all of them being deleted and inserted anew.
const KEPT_ROWS_MIN: usize = 64;

/// Deletes the location rows recorded for `path` that are not in `wanted` (offset, chunk) and
/// returns those of `wanted` still to insert. An edit of a large file leaves most of its chunks
/// where they were: rewriting all of its tens of thousands of rows (three B-trees each) was most
/// of the cost of recording it.
fn drop_stale_chunk_rows<'c>(
    conn: &Connection,
    path: &str,
    wanted: Vec<(i64, &'c ChunkRef)>,
) -> Result<Vec<(i64, &'c ChunkRef)>, TreeError> {
    let mut stmt =
        conn.prepare_cached("SELECT rowid, offset, hash, len FROM chunks WHERE path = ?1")?;
    let mut rows = stmt.query([path])?;
    let mut recorded: HashMap<(i64, Hash, u32), i64> = HashMap::new();
    let mut stale = Vec::new();
    while let Some(row) = rows.next()? {
        let rowid: i64 = row.get(0)?;
        let hash: Option<Hash> = blob_at(row, 2)?.and_then(|b| b.try_into().ok());
        match (hash, row.get::<_, u32>(3)) {
            (Some(hash), Ok(len)) => {
                // A second row for the same chunk at the same place is one too many.
                if let Some(twin) = recorded.insert((row.get(1)?, hash, len), rowid) {
                    stale.push(twin);
                }
            }
            _ => stale.push(rowid),
        }
    }
    let missing: Vec<(i64, &ChunkRef)> = wanted
        .into_iter()
        .filter(|(at, chunk)| recorded.remove(&(*at, chunk.hash, chunk.len)).is_none())
        .collect();
    stale.extend(recorded.into_values());
    let mut delete = conn.prepare_cached("DELETE FROM chunks WHERE rowid = ?1")?;
    for rowid in stale {
        delete.execute([rowid])?;
    }
    Ok(missing)
}

fn corrupt(reason: &str) -> TreeError {
    TreeError::IndexCorrupt {
        reason: reason.to_string(),
    }
}

/// Decodes one `entries` row (columns in [`ENTRY_COLUMNS`] order), reading the blobs in place:
/// only the path, a link's target and a non-empty chunk list are copied out of sqlite (a full
/// load of the index decodes every row, so each copy saved counts).
fn entry_from_row(row: &Row<'_>) -> Result<ScannedEntry, TreeError> {
    let path: String = row.get(0)?;
    let bad = |what: &str| corrupt(&format!("entry {path:?} has {what}"));
    let kind = match row.get::<_, i64>(1)? {
        KIND_FILE => EntryKind::File,
        KIND_DIR => EntryKind::Dir,
        KIND_SYMLINK => match row.get::<_, Option<String>>(2)? {
            Some(target) => EntryKind::Symlink { target },
            None => return Err(bad("a link without a target")),
        },
        _ => return Err(bad("an unknown kind")),
    };
    let size = u64::try_from(row.get::<_, i64>(3)?).map_err(|_| bad("a negative size"))?;
    let file_hash: Hash = blob_at(row, 7)?
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("a bad file hash"))?;
    let file_id = match row.get_ref(8)? {
        ValueRef::Null => None,
        ValueRef::Blob(bytes) => {
            FileId::from_be_bytes(bytes.try_into().map_err(|_| bad("a bad file id"))?)
        }
        _ => return Err(bad("a bad file id")),
    };
    let chunk_blob = blob_at(row, 9)?.ok_or_else(|| bad("no chunk list"))?;
    if chunk_blob.len() % CHUNK_RECORD != 0 {
        return Err(bad("a truncated chunk list"));
    }
    let chunks = chunk_blob
        .chunks_exact(CHUNK_RECORD)
        .map(|record| {
            let (hash, len) = record.split_at(32);
            ChunkRef {
                hash: hash.try_into().expect("32 bytes"),
                len: u32::from_le_bytes(len.try_into().expect("4 bytes")),
            }
        })
        .collect();
    Ok(ScannedEntry {
        entry: FileEntry {
            kind,
            size,
            mtime_ns: row.get(4)?,
            attributes: Attributes {
                unix_mode: row.get(5)?,
                windows: row.get(6)?,
            },
            chunks,
            file_hash,
            path,
        },
        file_id,
    })
}

/// The blob in column `column`, borrowed from sqlite; `None` when the value is not a blob.
fn blob_at<'r>(row: &'r Row<'_>, column: usize) -> Result<Option<&'r [u8]>, TreeError> {
    Ok(match row.get_ref(column)? {
        ValueRef::Blob(bytes) => Some(bytes),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash_bytes;

    fn file(path: &str, id: u128, chunks: &[(u8, u32)]) -> ScannedEntry {
        ScannedEntry {
            entry: FileEntry {
                path: path.to_string(),
                kind: EntryKind::File,
                size: chunks.iter().map(|c| u64::from(c.1)).sum(),
                mtime_ns: -5,
                attributes: Attributes {
                    unix_mode: 0o644,
                    windows: 0x20,
                },
                chunks: chunks
                    .iter()
                    .map(|&(h, len)| ChunkRef { hash: [h; 32], len })
                    .collect(),
                file_hash: hash_bytes(path.as_bytes()),
            },
            file_id: FileId::from_u128(id << 70 | 3),
        }
    }

    fn dir(path: &str) -> ScannedEntry {
        ScannedEntry {
            entry: FileEntry {
                path: path.to_string(),
                kind: EntryKind::Dir,
                size: 0,
                mtime_ns: 1,
                attributes: Attributes::default(),
                chunks: vec![],
                file_hash: hash_bytes(b""),
            },
            file_id: None,
        }
    }

    fn paths(index: &Index) -> Vec<String> {
        let mut p: Vec<String> = index
            .all()
            .unwrap()
            .into_iter()
            .map(|e| e.entry.path)
            .collect();
        p.sort();
        p
    }

    #[test]
    fn entries_round_trip() {
        let mut index = Index::open_in_memory().unwrap();
        let f = file("a/b.txt", 7, &[(1, 10), (2, 20)]);
        let mut link = dir("a/l");
        link.entry.kind = EntryKind::Symlink {
            target: "b.txt".into(),
        };
        for e in [&f, &dir("a"), &link] {
            index.put(e).unwrap();
        }
        assert_eq!(index.get("a/b.txt").unwrap().as_ref(), Some(&f));
        assert_eq!(index.get("a/l").unwrap().as_ref(), Some(&link));
        assert_eq!(index.get("missing").unwrap(), None);
        assert_eq!(index.len().unwrap(), 3);
        assert_eq!(
            index.find_chunk(&[2; 32]).unwrap(),
            vec![ChunkLocation {
                path: "a/b.txt".into(),
                offset: 10,
                len: 20
            }]
        );
    }

    #[test]
    fn rows_that_do_not_decode_are_reported_as_corrupt() {
        let insert = "INSERT INTO entries (path, kind, link_target, size, mtime_ns, unix_mode, win_attr, file_hash, file_id, chunks)";
        let good_hash = "x'0000000000000000000000000000000000000000000000000000000000000000'";
        for values in [
            format!("('a', 7, NULL, 0, 0, 0, 0, {good_hash}, NULL, x'')"),
            format!("('a', 2, NULL, 0, 0, 0, 0, {good_hash}, NULL, x'')"),
            "('a', 0, NULL, 0, 0, 0, 0, x'00', NULL, x'')".to_string(),
            format!("('a', 0, NULL, 0, 0, 0, 0, {good_hash}, x'0102', x'')"),
            format!("('a', 0, NULL, 0, 0, 0, 0, {good_hash}, 'text', x'')"),
            format!("('a', 0, NULL, 0, 0, 0, 0, {good_hash}, NULL, x'0102')"),
            format!("('a', 0, NULL, -1, 0, 0, 0, {good_hash}, NULL, x'')"),
        ] {
            let index = Index::open_in_memory().unwrap();
            index
                .conn
                .execute(&format!("{insert} VALUES {values}"), [])
                .unwrap();
            assert!(
                matches!(index.all(), Err(TreeError::IndexCorrupt { .. })),
                "{values}"
            );
            assert!(matches!(
                index.get("a"),
                Err(TreeError::IndexCorrupt { .. })
            ));
        }
        let index = Index::open_in_memory().unwrap();
        let values = format!("('a', 0, NULL, 3, 0, 0, 0, {good_hash}, NULL, x'')");
        index
            .conn
            .execute(&format!("{insert} VALUES {values}"), [])
            .unwrap();
        let entry = index.get("a").unwrap().expect("a plain file without an id");
        assert_eq!((entry.file_id, entry.entry.size), (None, 3));
    }

    #[test]
    fn persists_across_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("state").join("index.db");
        let f = file("x", 1, &[(9, 5)]);
        Index::open(&db).unwrap().put(&f).unwrap();
        let index = Index::open(&db).unwrap();
        assert_eq!(index.get("x").unwrap(), Some(f));
    }

    #[test]
    fn damaged_file_is_recreated() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("index.db");
        std::fs::write(&db, vec![0x5a; 8192]).unwrap();
        assert!(Index::open(&db).is_err());
        let (index, recreated) = Index::open_or_recreate(&db).unwrap();
        assert!(recreated);
        assert_eq!(index.len().unwrap(), 0);
        drop(index);
        let (_, recreated) = Index::open_or_recreate(&db).unwrap();
        assert!(!recreated);
    }

    #[test]
    fn deferred_writes_are_visible_at_once_and_saved_by_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("index.db");
        let mut index = Index::open(&db).unwrap();
        let other = Index::open(&db).unwrap();
        index.defer_commits();
        index.put(&file("a/one", 1, &[(1, 10)])).unwrap();
        index.put(&file("a/two", 2, &[(2, 10)])).unwrap();
        index.rename_tree("a", "b").unwrap();
        assert!(
            index.get("b/one").unwrap().is_some(),
            "the writer sees its own writes"
        );
        assert!(other.get("b/one").unwrap().is_none(), "not committed yet");
        index.commit().unwrap();
        assert_eq!(other.paths().unwrap().len(), 2);
        index.remove_tree("b").unwrap();
        drop(index);
        assert!(
            other.paths().unwrap().is_empty(),
            "dropping the index commits"
        );
    }

    #[test]
    fn remove_tree_spares_siblings_with_the_same_prefix() {
        let mut index = Index::open_in_memory().unwrap();
        for p in ["a", "a/x", "a/y/z", "ab", "a b", "a.txt"] {
            index.put(&file(p, 1, &[(p.len() as u8, 1)])).unwrap();
        }
        index.remove_tree("a").unwrap();
        assert_eq!(paths(&index), ["a b", "a.txt", "ab"]);
        assert!(index.find_chunk(&[1; 32]).unwrap().is_empty());
    }

    /// Every way an index gains or moves chunks, on a tracked and an untracked index alike: both
    /// must give the same answers (the filter may only save queries, never hide a chunk).
    #[test]
    fn chunk_filter_never_hides_a_recorded_chunk() {
        let mut plain = Index::open_in_memory().unwrap();
        let mut tracked = Index::open_in_memory().unwrap();
        // Recorded before tracking starts: loaded from the table.
        for index in [&mut plain, &mut tracked] {
            index.put(&file("old", 1, &[(1, 10)])).unwrap();
        }
        tracked.track_chunks().unwrap();
        let before: Vec<ScannedEntry> = Vec::new();
        let after = vec![file("scanned", 2, &[(2, 10), (3, 5)])];
        for index in [&mut plain, &mut tracked] {
            index.put(&file("put", 3, &[(4, 10)])).unwrap();
            index.replace_state(&before, &after).unwrap();
            index.put(&file("gone", 4, &[(5, 10)])).unwrap();
            index.remove_tree("gone").unwrap();
            index.rename_tree("put", "moved").unwrap();
        }
        for h in 0..8u8 {
            let hash = [h; 32];
            let expected = plain.find_chunk(&hash).unwrap();
            assert_eq!(tracked.find_chunk(&hash).unwrap(), expected, "chunk {h}");
            assert_eq!(tracked.has_chunk(&hash).unwrap(), !expected.is_empty());
            assert_eq!(plain.has_chunk(&hash).unwrap(), !expected.is_empty());
        }
        assert_eq!(tracked.find_chunk(&[4; 32]).unwrap()[0].path, "moved");
        // A hash sharing the first 8 bytes with a known one passes the filter, then the query
        // says no.
        let mut lookalike = [3u8; 32];
        lookalike[31] = 0;
        assert!(!tracked.has_chunk(&lookalike).unwrap());
    }

    #[test]
    fn rename_tree_moves_children_and_chunks() {
        let mut index = Index::open_in_memory().unwrap();
        index.put(&dir("Logs")).unwrap();
        index.put(&file("Logs/A.txt", 1, &[(4, 8)])).unwrap();
        index.put(&file("Logsx", 2, &[(5, 8)])).unwrap();
        index.rename_tree("Logs", "Älogs").unwrap();
        assert_eq!(paths(&index), ["Logsx", "Älogs", "Älogs/A.txt"]);
        let moved = index.get("Älogs/A.txt").unwrap().unwrap();
        assert_eq!(moved.entry.path, "Älogs/A.txt");
        assert_eq!(moved.file_id, FileId::from_u128(1 << 70 | 3));
        assert_eq!(index.find_chunk(&[4; 32]).unwrap()[0].path, "Älogs/A.txt");
        index.rename_tree("Älogs/A.txt", "Älogs/a.txt").unwrap();
        assert!(index.get("Älogs/a.txt").unwrap().is_some());
        assert!(index.get("Älogs/A.txt").unwrap().is_none());
        assert!(index.rename_tree("Älogs", "Älogs/inner").is_err());
    }

    #[test]
    fn an_index_locating_first_chunks_only_still_finds_files_by_their_first_chunk() {
        let mut index = Index::open_in_memory().unwrap();
        index.locate_first_chunks_only();
        let chunks = [(4, 8), (5, 8), (6, 8)];
        index.put(&file("a.bin", 1, &chunks)).unwrap();
        index
            .replace_state(
                &[],
                &[file("b.bin", 2, &chunks), file("c.bin", 3, &[(7, 8)])],
            )
            .unwrap();
        let rows: i64 = index
            .conn
            .query_row("SELECT count(*) FROM chunks", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 3, "one row per file");
        assert_eq!(index.files_starting_with(&[4; 32]).unwrap().len(), 2);
        assert_eq!(index.files_starting_with(&[7; 32]).unwrap(), ["c.bin"]);
        assert!(index.find_chunk(&[5; 32]).unwrap().is_empty());
        assert_eq!(index.get("b.bin").unwrap().unwrap().entry.chunks.len(), 3);
    }

    /// (offset, hash, len) of every location row of `path`, in offset order, with its rowid.
    fn location_rows(index: &Index, path: &str) -> Vec<(i64, i64, Vec<u8>, u32)> {
        let mut stmt = index
            .conn
            .prepare("SELECT rowid, offset, hash, len FROM chunks WHERE path = ?1 ORDER BY offset")
            .unwrap();
        let rows = stmt
            .query_map([path], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn a_large_file_recorded_again_keeps_the_location_rows_still_right() {
        let chunks: Vec<(u8, u32)> = (0..100).map(|i| (i, 1000 + u32::from(i))).collect();
        let mut edited = chunks.clone();
        edited[40] = (200, 1040); // an overwrite: same length, new bytes
        let mut inserted = chunks.clone();
        inserted[70] = (201, 1170); // an insert: the chunks after it move
        let versions = [edited, inserted, chunks[..70].to_vec(), chunks.clone()];

        let mut index = Index::open_in_memory().unwrap();
        index.put(&file("big.bin", 1, &chunks)).unwrap();
        index.put(&file("later.bin", 2, &[(250, 9)])).unwrap();
        for (k, version) in versions.iter().enumerate() {
            let before = location_rows(&index, "big.bin");
            index.put(&file("big.bin", 1, version)).unwrap();
            let after = location_rows(&index, "big.bin");
            let mut fresh = Index::open_in_memory().unwrap();
            fresh.put(&file("big.bin", 1, version)).unwrap();
            let without_rowid = |rows: &[(i64, i64, Vec<u8>, u32)]| {
                rows.iter()
                    .map(|(_, at, hash, len)| (*at, hash.clone(), *len))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                without_rowid(&after),
                without_rowid(&location_rows(&fresh, "big.bin")),
                "version {k}"
            );
            // Rows that were right are the same rows (a rewrite would give them rowids above
            // later.bin's).
            let kept = after.iter().filter(|row| before.contains(row)).count();
            let unmoved = version
                .iter()
                .zip(versions.get(k.wrapping_sub(1)).unwrap_or(&chunks))
                .take_while(|(a, b)| a.1 == b.1)
                .filter(|(a, b)| a == b)
                .count();
            assert!(
                kept >= unmoved,
                "version {k}: {kept} rows kept, {unmoved} unmoved"
            );
        }
        assert_eq!(location_rows(&index, "later.bin").len(), 1);
    }

    #[test]
    fn segment_values_are_given_for_their_content_only_and_follow_their_path() {
        let mut index = Index::open_in_memory().unwrap();
        let cvs = [[1u8; 32], [2; 32], [3; 32]];
        index.put(&file("Logs/big.bin", 1, &[(4, 8)])).unwrap();
        index.put_segments("Logs/big.bin", &[9; 32], &cvs).unwrap();
        assert_eq!(index.segments("Logs/big.bin", &[9; 32]).unwrap(), cvs);
        assert!(index.segments("Logs/big.bin", &[8; 32]).unwrap().is_empty());
        assert!(index
            .segments("Logs/other.bin", &[9; 32])
            .unwrap()
            .is_empty());
        index
            .put_segments("Logs/big.bin", &[8; 32], &cvs[..1])
            .unwrap();
        assert!(index.segments("Logs/big.bin", &[9; 32]).unwrap().is_empty());
        assert_eq!(index.segments("Logs/big.bin", &[8; 32]).unwrap(), cvs[..1]);

        index.rename_tree("Logs", "Old logs").unwrap();
        assert!(index.segments("Logs/big.bin", &[8; 32]).unwrap().is_empty());
        assert_eq!(
            index.segments("Old logs/big.bin", &[8; 32]).unwrap(),
            cvs[..1]
        );
        index.remove_tree("Old logs").unwrap();
        assert!(index
            .segments("Old logs/big.bin", &[8; 32])
            .unwrap()
            .is_empty());
    }
}
