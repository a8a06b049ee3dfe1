//! The receiver's side of the file system: turning validated changes into files under the root,
//! atomically, confined to the root, archiving whatever is replaced or removed.
//!
//! Every write goes through a `cap_std::fs::Dir` opened on the root, so no path, `..` or link can
//! reach outside it. New file content is assembled in a staging file inside the root's state
//! directory (same volume), verified against the whole-file hash, fsynced, and only then renamed
//! over the target: a crash at any instant leaves each file either old or new.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use cap_std::fs::{Dir, OpenOptions};
use swrepl_proto::summary::{summary_bits, BucketSet, TreeDigest};
use swrepl_proto::{ChunkRef, EntryKind, FileEntry, Hash, Prune};
use swrepl_tree::{Excludes, Index, ScannedEntry, Scanner, STATE_DIR_NAME};

use crate::archive::Archive;
pub use crate::session::{Completion, PruneOutcome};
use crate::session::{PendingContent, ReceiverStore};
use crate::watch::TreeWatch;

/// What the receiver does with an incoming upsert.
pub type Prepared = crate::session::Prepared<PendingFile>;
use crate::SyncError;

/// Where the receiver keeps staging files, relative to the root.
const STAGING_REL: &str = ".swrepl/staging";

/// A file being assembled in the staging area.
pub struct PendingFile {
    entry: FileEntry,
    /// Created on the first write and open only while being written (a few recent ones stay in
    /// [`Applier`]'s handle cache): thousands of files may wait for data at once, more than a
    /// process may hold open.
    staging_name: String,
    /// Whether the staging file exists yet (not to be confused with [`Applier`]'s staged files,
    /// which are complete and wait to be installed).
    staging_created: bool,
    offsets: Vec<u64>,
    /// Chunk hash → indices still waiting for the peer's bytes.
    awaiting: HashMap<Hash, Vec<u32>>,
    /// Indices to fill from copies already on this machine.
    local: Vec<u32>,
    /// Bytes of chunk data received from the peer for this file.
    received_bytes: u64,
    /// The whole-file hash of the staged prefix, fed as chunks are written.
    digest: PrefixDigest,
    /// Chunks copied from the previous version without checking their hashes (it was as
    /// indexed): the whole-file hash vouches for them, and only if it fails are they checked one
    /// by one, so that just the altered ones are asked for.
    unchecked: Vec<u32>,
}

impl PendingFile {
    /// Writes `data`, already checked against chunk `index`'s hash, into the staging file.
    fn put_chunk(&mut self, file: &mut File, index: u32, data: &[u8]) -> io::Result<()> {
        let i = index as usize;
        write_at(file, self.offsets[i], data)?;
        self.digest
            .written(file, &self.offsets, &self.entry.chunks, i, data)
    }

    /// Copies the chunks `run` (consecutive here, and consecutive in `previous`) from the
    /// previous version with one read and one write. When the previous version is not as indexed
    /// (or the file is a single chunk, whose hash is the whole-file hash), each chunk is checked
    /// against its hash; otherwise the whole-file hash checks them all at the end
    /// ([`PendingFile::unchecked`]). A large run is checked and fed to the whole-file hash on a
    /// second thread while the main one writes it: the staging file is not visible, and a chunk
    /// that does not match is neither counted as written nor hashed. Returns the chunks that did
    /// not match (or could not be read).
    fn copy_run(
        &mut self,
        file: &mut File,
        previous: &mut PreviousVersion,
        run: &[u32],
        buf: &mut Vec<u8>,
    ) -> io::Result<Vec<u32>> {
        let chunks: Vec<ChunkRef> = run.iter().map(|&i| self.entry.chunks[i as usize]).collect();
        let total: usize = chunks.iter().map(|c| c.len as usize).sum();
        let Some(&(source, _)) = previous.chunks.get(&chunks[0].hash) else {
            return Ok(run.to_vec());
        };
        buf.resize(total, 0);
        if read_exact_at(&previous.file, source, buf).is_err() {
            return Ok(run.to_vec()); // shorter than indexed: every chunk is found elsewhere
        }
        self.digest
            .catch_up(file, &self.offsets, &self.entry.chunks)?;
        let mut hasher = self.digest.continuing_at(run[0] as usize);
        let each_chunk_checked = !previous.as_indexed || self.entry.chunks.len() == 1;
        let data = &buf[..];
        let check = |hasher: Option<&mut blake3::Hasher>| -> Vec<bool> {
            let mut pos = 0;
            let matches = chunks
                .iter()
                .map(|chunk| {
                    let bytes = &data[pos..pos + chunk.len as usize];
                    pos += bytes.len();
                    !each_chunk_checked || *blake3::hash(bytes).as_bytes() == chunk.hash
                })
                .collect();
            if let Some(hasher) = hasher {
                hasher.update(data);
            }
            matches
        };
        let offset = self.offsets[run[0] as usize];
        let (written, matches) = if total >= PARALLEL_RUN_MIN {
            std::thread::scope(|scope| {
                let checker = scope.spawn(|| check(hasher.as_deref_mut()));
                let written = write_at(file, offset, data);
                // The checker does not panic; should it, no chunk counts as matching.
                (written, checker.join().unwrap_or_default())
            })
        } else {
            let matches = check(hasher.as_deref_mut());
            (write_at(file, offset, data), matches)
        };
        written?;
        let all_match = matches.len() == run.len() && matches.iter().all(|&m| m);
        if all_match {
            if let Some(hasher) = hasher {
                self.digest.adopt(hasher, run.len());
            }
        }
        let mut unfilled = Vec::new();
        for (k, &i) in run.iter().enumerate() {
            if matches.get(k) == Some(&true) {
                self.digest.filled[i as usize] = true;
            } else {
                unfilled.push(i);
            }
        }
        if !each_chunk_checked {
            self.unchecked.extend_from_slice(run);
        }
        Ok(unfilled)
    }

    /// Copies every chunk of `local` that sits in `previous` (a large file's previous version, as
    /// indexed) in runs, through the kernel where it can (`copy_file_range`: no copy through this
    /// process, a block clone on file systems that share extents), without checking them one by
    /// one: the whole-file hash vouches for them all, as [`PendingFile::copy_run`]'s does. When
    /// these runs complete the file, a second thread hashes the staging file right behind the
    /// copy (writes to one file do not run in parallel, reads of what is written do); otherwise
    /// the hash waits until the file is complete ([`PrefixDigest::defer`]). Returns the chunks
    /// still to fill (not in `previous`, or not readable there), ascending.
    fn copy_unchecked(
        &mut self,
        file: &File,
        previous: &PreviousVersion,
        local: &[u32],
    ) -> io::Result<Vec<u32>> {
        self.digest.defer();
        let mut runs = Vec::new();
        let mut left = Vec::new();
        let mut at = 0;
        while at < local.len() {
            let taken = previous.run_len(&self.entry.chunks, &local[at..]);
            if taken == 0 {
                left.push(local[at]);
                at += 1;
                continue;
            }
            let indices = &local[at..at + taken];
            let first = self.entry.chunks[indices[0] as usize];
            runs.push(CopyRun {
                source: previous.chunks[&first.hash].0,
                target: self.offsets[indices[0] as usize],
                len: indices
                    .iter()
                    .map(|&i| u64::from(self.entry.chunks[i as usize].len))
                    .sum(),
                chunks: at..at + taken,
            });
            at += taken;
        }
        let in_runs: usize = runs.iter().map(|run| run.chunks.len()).sum();
        let already = self.digest.filled.iter().filter(|&&f| f).count();
        let completes = in_runs + already == self.entry.chunks.len();
        let (copied, whole) = copy_runs(
            &previous.file,
            file,
            &runs,
            completes.then_some(self.entry.size),
        );
        for (run, copied) in runs.iter().zip(copied) {
            let indices = &local[run.chunks.clone()];
            if copied? {
                for &i in indices {
                    self.digest.filled[i as usize] = true;
                }
                self.unchecked.extend_from_slice(indices);
            } else {
                left.extend_from_slice(indices);
            }
        }
        left.sort_unstable();
        if left.is_empty() {
            self.digest.whole = whole;
        }
        Ok(left)
    }

    /// After the whole-file hash failed: checks each chunk copied unchecked, as it is in the
    /// staging file. Those that do not match are awaited from the peer again (the previous
    /// version had changed without its size or time showing it) and the whole-file hash starts
    /// over. Returns them; empty when every copied chunk was right after all.
    fn recheck_copied(&mut self, file: &mut File) -> io::Result<Vec<u32>> {
        let mut altered = Vec::new();
        let mut buf = Vec::new();
        for i in std::mem::take(&mut self.unchecked) {
            let chunk = self.entry.chunks[i as usize];
            buf.resize(chunk.len as usize, 0);
            read_exact_at(file, self.offsets[i as usize], &mut buf)?;
            if *blake3::hash(&buf).as_bytes() != chunk.hash {
                self.awaiting.entry(chunk.hash).or_default().push(i);
                altered.push(i);
            }
        }
        if !altered.is_empty() {
            self.digest.restart_without(&altered);
        }
        Ok(altered)
    }
}

impl PendingContent for PendingFile {
    fn entry(&self) -> &FileEntry {
        &self.entry
    }

    fn has_all_remote(&self) -> bool {
        self.awaiting.is_empty()
    }

    fn received_bytes(&self) -> u64 {
        self.received_bytes
    }
}

/// The receiver's file system state: root, staging area, archive and index.
pub struct Applier {
    root_path: PathBuf,
    root: Dir,
    staging: Dir,
    archive: Archive,
    scanner: Scanner,
    excludes: Excludes,
    staging_counter: u64,
    /// Directories whose entries changed since the last [`Applier::sync_dirs`]: fsynced once
    /// each before the next acknowledgement rather than once per file installed in them.
    unsynced_dirs: BTreeSet<String>,
    /// Files verified and complete in the staging area, waiting to be made durable together and
    /// renamed into place (see [`Applier::install_staged`]).
    staged: Vec<StagedFile>,
    /// Staging files opened recently, most recent last: a file's chunks usually arrive together
    /// and its completion follows, so one open serves them all.
    open_staging: Vec<(String, File)>,
    /// When the index was last committed.
    index_saved: Instant,
    /// Whether to watch the root (see [`Applier::watch_tree`]).
    watching: bool,
    /// Counts changes under the root from a summary's scan until the tree is next changed here:
    /// only then can a summary stand, and a watch while this receiver writes thousands of files
    /// would cost it a kernel event for each.
    watch: Option<TreeWatch>,
    /// The last summary, while nothing under the root has changed since its scan began.
    summary: Option<KnownSummary>,
    /// Scans made to give a summary (tests tell a reused summary from a new one by it).
    summary_scans: u64,
}

/// A tree summary and the watcher's change count when the scan behind it began.
struct KnownSummary {
    digest: TreeDigest,
    changes: u64,
    scanned: Instant,
}

/// How long a summary is reused at most, however quiet the watcher: a safety net under it.
const SUMMARY_REUSE_MAX: Duration = Duration::from_secs(600);

/// How long [`Applier::summary`] waits for the watcher to report its marker before scanning.
const WATCH_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// How many staging files [`Applier`] keeps open between writes.
const OPEN_STAGING_MAX: usize = 8;

/// Largest run of a previous version's chunks read (and written) in one go while rebuilding.
const LOCAL_RUN_MAX: usize = 4 * 1024 * 1024;

/// Runs at least this long are checked on a second thread while the first writes them.
const PARALLEL_RUN_MIN: usize = 1024 * 1024;

/// Read size of the thread hashing a rebuilt file behind its copy: large enough for blake3's
/// SIMD paths, small enough to stay in the core's cache.
const HASH_BEHIND_BLOCK: usize = 256 * 1024;

/// How often the index is saved while a burst of changes is being applied (see
/// [`ReceiverStore::checkpoint`]); it is always saved once the burst is over.
const INDEX_SAVE_INTERVAL: Duration = Duration::from_secs(1);

impl Applier {
    /// Opens the receiver's root (which must exist), its state directory, index and archive, and
    /// brings the index up to date with what is on disk (a stat-only walk for unchanged files).
    pub fn open(
        root: &Path,
        archive: &Path,
        retention: Option<Duration>,
        excludes: Excludes,
    ) -> Result<Applier, SyncError> {
        let meta = std::fs::metadata(root).map_err(|e| SyncError::Root {
            path: root.to_path_buf(),
            source: e,
        })?;
        if !meta.is_dir() {
            return Err(SyncError::Root {
                path: root.to_path_buf(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        let root_dir = Dir::open_ambient_dir(root, cap_std::ambient_authority()).map_err(|e| {
            SyncError::Root {
                path: root.to_path_buf(),
                source: e,
            }
        })?;
        let state_err = |e| SyncError::State {
            path: root.join(STATE_DIR_NAME),
            source: e,
        };
        root_dir.create_dir_all(STAGING_REL).map_err(state_err)?;
        // Leftovers from an interrupted session are incomplete by definition.
        root_dir.remove_dir_all(STAGING_REL).map_err(state_err)?;
        root_dir.create_dir_all(STAGING_REL).map_err(state_err)?;
        let staging = root_dir.open_dir(STAGING_REL).map_err(state_err)?;
        let archive = Archive::open(archive, retention).map_err(|e| SyncError::State {
            path: archive.to_path_buf(),
            source: e,
        })?;
        if let Err(e) = archive.expire() {
            tracing::warn!(archive = %archive.path().display(), "cannot expire old archive generations: {e}");
        }
        let mut index = Index::open(&root.join(STATE_DIR_NAME).join("receiver-index.db"))?;
        // `start_file` asks about every chunk of every announced file; on an initial sync the
        // answer is always "not here", which the in-memory filter gives without a query.
        index.track_chunks()?;
        // One index commit per acknowledgement (`checkpoint`), not one per applied file.
        index.defer_commits();
        let mut scanner = Scanner::new(root, excludes.clone(), index);
        let outcome = scanner.scan()?;
        tracing::info!(
            entries = outcome.entries.len(),
            files_hashed = outcome.files_hashed,
            "receiver tree indexed"
        );
        Ok(Applier {
            root_path: root.to_path_buf(),
            root: root_dir,
            staging,
            archive,
            scanner,
            excludes,
            staging_counter: 0,
            unsynced_dirs: BTreeSet::new(),
            staged: Vec::new(),
            open_staging: Vec::new(),
            index_saved: Instant::now(),
            watching: false,
            watch: None,
            summary: None,
            summary_scans: 0,
        })
    }

    /// Watches the root from each prepared summary's scan ([`Applier::prepare_summary`]) until
    /// the tree is next changed, so that a summary can be given again without a scan while
    /// nothing under the root changed (a reconnecting sender's full pass then costs the Slave no
    /// walk). False where this system has no such watch (only Linux has: see the `watch`
    /// module); without one (or once it fails: too many directories for the OS's limit) every
    /// summary scans, as before.
    pub fn watch_tree(&mut self) -> bool {
        self.watching = TreeWatch::AVAILABLE;
        self.watching
    }

    /// Whether preparing a summary now would spare the next session a scan: the root is
    /// watched here, and no summary known still stands. Cheap: it does not wait for the watch.
    pub fn summary_worth_preparing(&self) -> bool {
        self.watching && self.reusable_summary().is_none()
    }

    fn reusable_summary(&self) -> Option<&KnownSummary> {
        let watch = self.watch.as_ref()?;
        self.summary.as_ref().filter(|known| {
            known.changes == watch.changes() && known.scanned.elapsed() < SUMMARY_REUSE_MAX
        })
    }

    /// Forgets the last summary, and stops watching until the next one: the tree is being
    /// changed.
    fn tree_changing(&mut self) {
        self.summary = None;
        self.watch = None;
    }

    /// Prepares the summary the next session will ask for, between sessions: starts watching
    /// the root first, so that the summary can stand until something changes. (A summary asked
    /// for within a session does not start the watch: reading every directory to set it up
    /// would come on top of the scan, while the sender waits.)
    pub fn prepare_summary(&mut self) -> Result<(), SyncError> {
        self.start_watch();
        self.summary().map(drop)
    }

    /// Starts watching the root, when it should be and is not yet watched.
    fn start_watch(&mut self) {
        if !self.watching || self.watch.is_some() {
            return;
        }
        let markers = self.root_path.join(STATE_DIR_NAME).join("watch");
        let started = std::fs::create_dir_all(&markers)
            .map_err(|e| SyncError::Watch(format!("cannot create {}: {e}", markers.display())))
            .and_then(|()| TreeWatch::start(&self.root_path, self.excludes.clone(), &markers));
        match started {
            Ok(watch) => self.watch = Some(watch),
            Err(e) => {
                tracing::warn!(root = %self.root_path.display(), "{e}: every sender connection will rescan the Slave's tree");
                self.watching = false;
            }
        }
    }

    /// Commits the index's pending writes: at the end of a burst (see
    /// [`ReceiverStore::checkpoint`]) and of a session, which may have ended in the middle of one.
    pub fn save_index(&mut self) {
        self.index_saved = Instant::now();
        if let Err(e) = self.scanner.index_mut().commit() {
            // Only a cache: the next scan compares it with the disk and rehashes what it lost.
            tracing::warn!("receiver index not saved ({e}); the next scan rehashes what it missed");
        }
    }

    /// The archive, for messages.
    pub fn archive_path(&self) -> &Path {
        self.archive.path()
    }

    /// Whether this receiver refuses to touch `rel` (its own excludes: the SwSQL data folder and
    /// swrepl's state, whatever the sender thinks).
    pub fn is_excluded(&self, rel: &str) -> bool {
        rel.split('/')
            .next()
            .is_some_and(|first| first.eq_ignore_ascii_case(STATE_DIR_NAME))
            || self.excludes.is_excluded(rel)
    }

    /// The index's view of `rel`, re-checked against the disk (a stale entry is rehashed).
    fn current(&mut self, rel: &str) -> Result<Option<ScannedEntry>, SyncError> {
        // Most often, on an initial sync above all, nothing is there yet (often not even the
        // directory, which is created when the changes before this one are applied).
        #[cfg(target_os = "linux")]
        let parents_are_real_dirs = match self.open_parent(rel) {
            Ok((parent, name)) if is_free(&parent, name) => return self.forget_if_indexed(rel),
            Err(rustix::io::Errno::NOENT) => return self.forget_if_indexed(rel),
            Ok(_) => true, // so nothing on the way is a link: no second check
            Err(_) => false,
        };
        #[cfg(not(target_os = "linux"))]
        let parents_are_real_dirs = false;
        if !parents_are_real_dirs && self.under_link(rel) {
            // Not an entry of this tree: whatever sits behind the link is never read or touched.
            return Ok(None);
        }
        let on_disk = std::fs::symlink_metadata(self.root_path.join(rel));
        let indexed = self.scanner.index().get(rel)?;
        match (on_disk, indexed) {
            (Err(_), None) => Ok(None),
            (Err(_), Some(_)) => {
                self.scanner.index_mut().remove_tree(rel)?;
                Ok(None)
            }
            (Ok(meta), Some(known))
                if known.entry.size == meta.len()
                    && known.entry.mtime_ns == swrepl_tree::mtime_ns(&meta)
                    && kind_matches(&known.entry.kind, &meta) =>
            {
                Ok(Some(known))
            }
            (Ok(_), _) => Ok(self.scanner.refresh(rel)?),
        }
    }

    /// Nothing is at `rel`: the index forgets whatever it recorded there.
    #[cfg(target_os = "linux")]
    fn forget_if_indexed(&mut self, rel: &str) -> Result<Option<ScannedEntry>, SyncError> {
        if self.scanner.index().get(rel)?.is_some() {
            self.scanner.index_mut().remove_tree(rel)?;
        }
        Ok(None)
    }

    /// Decides what an upsert needs. `requested` holds chunk hashes already asked for in this
    /// session: a second copy of new content is filled locally once the first is installed.
    pub fn prepare_upsert(
        &mut self,
        entry: FileEntry,
        requested: &mut HashSet<Hash>,
    ) -> Result<Prepared, SyncError> {
        self.tree_changing();
        if self
            .staged
            .iter()
            .any(|s| overlaps(&s.entry.path, &entry.path))
        {
            self.install_staged()?;
        }
        if !matches!(entry.kind, EntryKind::File) {
            return Ok(Prepared::Structural(entry));
        }
        let current = self.current(&entry.path)?;
        if let Some(current) = &current {
            if current.entry.kind == EntryKind::File
                && current.entry.size == entry.size
                && current.entry.file_hash == entry.file_hash
            {
                self.refresh_metadata(current, &entry)?;
                return Ok(Prepared::UpToDate(entry));
            }
        }
        // An edited file mostly holds its own previous chunks: those need no index query (for a
        // large file, tens of thousands of them before the first chunk can be asked for).
        let previous_chunks: HashSet<Hash> = current
            .map(|current| current.entry.chunks.iter().map(|c| c.hash).collect())
            .unwrap_or_default();
        let (pending, need) = self.start_file(entry, &previous_chunks, requested)?;
        Ok(Prepared::File {
            pending: Box::new(pending),
            need,
        })
    }

    fn start_file(
        &mut self,
        entry: FileEntry,
        previous_chunks: &HashSet<Hash>,
        requested: &mut HashSet<Hash>,
    ) -> Result<(PendingFile, Vec<u32>), SyncError> {
        self.staging_counter += 1;
        let staging_name = format!("{}.part", self.staging_counter);
        let mut offsets = Vec::with_capacity(entry.chunks.len());
        let mut offset = 0u64;
        for chunk in &entry.chunks {
            offsets.push(offset);
            offset += u64::from(chunk.len);
        }
        if offset != entry.size {
            // The session validates this; the whole-file hash covers the chunks only, so a file
            // longer than its chunks must never get this far.
            return Err(SyncError::Protocol(format!(
                "chunk lengths of {:?} sum to {offset} bytes but its size is {}",
                entry.path, entry.size
            )));
        }
        let mut awaiting: HashMap<Hash, Vec<u32>> = HashMap::new();
        let mut local = Vec::new();
        let mut need = Vec::new();
        for (i, chunk) in entry.chunks.iter().enumerate() {
            let i = i as u32;
            if let Some(waiting) = awaiting.get_mut(&chunk.hash) {
                waiting.push(i);
            } else if previous_chunks.contains(&chunk.hash)
                || requested.contains(&chunk.hash)
                || self.scanner.index().has_chunk(&chunk.hash)?
            {
                local.push(i);
            } else {
                awaiting.insert(chunk.hash, vec![i]);
                requested.insert(chunk.hash);
                need.push(i);
            }
        }
        let digest = PrefixDigest::new(entry.chunks.len());
        let pending = PendingFile {
            unchecked: Vec::new(),
            entry,
            staging_name,
            staging_created: false,
            offsets,
            awaiting,
            local,
            received_bytes: 0,
            digest,
        };
        Ok((pending, need))
    }

    /// Writes the peer's bytes for chunk `index` into the staging file (every index of the file
    /// with that content). The bytes must hash to what the entry says.
    pub fn write_chunk(
        &mut self,
        pending: &mut PendingFile,
        index: u32,
        data: &[u8],
    ) -> Result<(), SyncError> {
        let chunk = pending
            .entry
            .chunks
            .get(index as usize)
            .ok_or_else(|| SyncError::Protocol(format!("chunk index {index} out of range")))?;
        if data.len() != chunk.len as usize || *blake3::hash(data).as_bytes() != chunk.hash {
            return Err(SyncError::Protocol(format!(
                "chunk {index} of {:?} does not match its hash",
                pending.entry.path
            )));
        }
        let Some(indices) = pending.awaiting.remove(&chunk.hash) else {
            tracing::debug!(path = %pending.entry.path, index, "chunk not awaited; ignored");
            return Ok(());
        };
        let mut file = self
            .take_staging(pending)
            .map_err(|e| self.io_err(&pending.entry.path, e))?;
        for i in indices {
            pending
                .put_chunk(&mut file, i, data)
                .map_err(|e| self.io_err(&pending.entry.path, e))?;
        }
        self.keep_staging(&pending.staging_name, file);
        pending.received_bytes += data.len() as u64;
        Ok(())
    }

    /// Fills local chunks, verifies the whole file, and installs it. Call when
    /// [`PendingFile::has_all_remote`].
    pub fn complete(&mut self, pending: &mut PendingFile) -> Result<Completion, SyncError> {
        self.tree_changing();
        let path = pending.entry.path.clone();
        let mut file = self
            .take_staging(pending)
            .map_err(|e| self.io_err(&path, e))?;
        if !pending.local.is_empty() {
            // Local copies may come from a staged file: it must be in place (and indexed) first.
            self.install_staged()?;
        }
        let late = self.fill_local(pending, &mut file)?;
        if !late.is_empty() {
            self.keep_staging(&pending.staging_name, file);
            return Ok(Completion::NeedMore(late));
        }
        let actual = pending
            .digest
            .finish(&mut file, &pending.offsets, &pending.entry.chunks)
            .map_err(|e| self.io_err(&path, e))?;
        match actual {
            Some(actual) if actual == pending.entry.file_hash => {}
            Some(_) if !pending.unchecked.is_empty() => {
                let altered = pending
                    .recheck_copied(&mut file)
                    .map_err(|e| self.io_err(&path, e))?;
                if altered.is_empty() {
                    return Err(SyncError::Protocol(format!(
                        "assembled {path:?} does not match its whole-file hash"
                    )));
                }
                tracing::info!(
                    path = %path,
                    chunks = altered.len(),
                    "the Slave's previous version had changed since indexed: asking for its altered chunks"
                );
                self.keep_staging(&pending.staging_name, file);
                return Ok(Completion::NeedMore(altered));
            }
            Some(_) => {
                return Err(SyncError::Protocol(format!(
                    "assembled {path:?} does not match its whole-file hash"
                )))
            }
            None => {
                return Err(SyncError::Protocol(format!(
                    "{path:?} was completed before all of its chunks arrived"
                )))
            }
        }
        // Times and permissions before the fsync, which then makes them durable with the data.
        set_file_metadata(&file, &pending.entry).map_err(|e| self.io_err(&path, e))?;
        if self.staged.iter().any(|s| overlaps(&s.entry.path, &path)) {
            self.install_staged()?; // two versions of one path go in in order
        }
        self.staged.push(StagedFile {
            staging_name: pending.staging_name.clone(),
            entry: pending.entry.clone(),
            file,
        });
        if self.staged.len() >= STAGED_MAX {
            self.install_staged()?;
        }
        Ok(Completion::Installed)
    }

    /// Makes the staged files durable and renames them into place: all of them fsynced first,
    /// on several threads (a file system commits concurrent fsyncs together; one after another,
    /// each waits for its own), then each renamed over its target in order. Every operation that
    /// looks at the tree calls this first, so a staged file is, to the session, already installed;
    /// the acknowledgement waits for it ([`ReceiverStore::checkpoint`]).
    pub fn install_staged(&mut self) -> Result<(), SyncError> {
        let staged = std::mem::take(&mut self.staged);
        if staged.is_empty() {
            return Ok(());
        }
        self.tree_changing();
        let synced = fsync_all(&staged);
        for (staged, synced) in staged.into_iter().zip(synced) {
            let StagedFile {
                staging_name,
                entry,
                file,
            } = staged;
            synced.map_err(|e| self.io_err(&entry.path, e))?;
            // The index records the installed file as this stat shows it: a rename keeps the
            // modification time and the file's identity, so no stat by path is needed after it.
            let meta = file.metadata().map_err(|e| self.io_err(&entry.path, e))?;
            drop(file);
            self.install(&staging_name, entry, &meta)?;
        }
        Ok(())
    }

    /// Fills the chunks this machine already holds. Returns those it could not find (or whose
    /// copy no longer matches its hash), now awaited from the peer.
    fn fill_local(
        &self,
        pending: &mut PendingFile,
        file: &mut File,
    ) -> Result<Vec<u32>, SyncError> {
        let local = std::mem::take(&mut pending.local);
        if local.is_empty() {
            return Ok(Vec::new());
        }
        // An edited file mostly consists of its own previous version's chunks, in the same order:
        // look there first, a run of neighbours at a time (one read, one write, no index query).
        let mut sources = LocalSources {
            previous: self.previous_version(&pending.entry.path)?,
            ..LocalSources::default()
        };
        let mut local = local;
        if let Some(previous) = sources.previous.as_ref() {
            if previous.as_indexed
                && pending.entry.size >= swrepl_tree::PARALLEL_MIN_LEN
                && pending.entry.chunks.len() > 1
            {
                local = pending
                    .copy_unchecked(file, previous, &local)
                    .map_err(|e| self.io_err(&pending.entry.path, e))?;
            }
        }
        let mut buf = Vec::new();
        let mut late = Vec::new();
        let mut rest = &local[..];
        while !rest.is_empty() {
            let run = sources
                .previous
                .as_ref()
                .map_or(0, |previous| previous.run_len(&pending.entry.chunks, rest));
            let (unfilled, taken) = if run > 0 {
                let previous = sources
                    .previous
                    .as_mut()
                    .expect("a run implies a previous version");
                let unfilled = pending
                    .copy_run(file, previous, &rest[..run], &mut buf)
                    .map_err(|e| self.io_err(&pending.entry.path, e))?;
                (unfilled, run)
            } else {
                (vec![rest[0]], 1)
            };
            rest = &rest[taken..];
            for i in unfilled {
                let chunk = pending.entry.chunks[i as usize];
                match self.read_local_chunk(&mut sources, &chunk.hash, chunk.len)? {
                    Some(data) => pending
                        .put_chunk(file, i, &data)
                        .map_err(|e| self.io_err(&pending.entry.path, e))?,
                    None => {
                        pending.awaiting.entry(chunk.hash).or_default().push(i);
                        late.push(i);
                    }
                }
            }
        }
        Ok(late)
    }

    /// A pending file's staging copy, open for reading and writing: from the handle cache, else
    /// opened, or created on its first use.
    fn take_staging(&mut self, pending: &mut PendingFile) -> io::Result<File> {
        if let Some(at) = self
            .open_staging
            .iter()
            .position(|(name, _)| *name == pending.staging_name)
        {
            return Ok(self.open_staging.remove(at).1);
        }
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if !pending.staging_created {
            options.create(true).truncate(true);
        }
        let file = self
            .staging
            .open_with(&pending.staging_name, &options)?
            .into_std();
        pending.staging_created = true;
        Ok(file)
    }

    /// Keeps a staging file open for its next write (closing the least recently used one).
    fn keep_staging(&mut self, name: &str, file: File) {
        if self.open_staging.len() >= OPEN_STAGING_MAX {
            self.open_staging.remove(0);
        }
        self.open_staging.push((name.to_string(), file));
    }

    /// Drops a pending file's staging copy (the change was withdrawn or the session ended).
    pub fn discard(&mut self, pending: PendingFile) {
        self.open_staging
            .retain(|(name, _)| *name != pending.staging_name);
        if pending.staging_created {
            let _ = self.staging.remove_file(&pending.staging_name);
        }
    }

    /// The file now at `rel` with its chunk offsets by hash, when the index knows it.
    fn previous_version(&self, rel: &str) -> Result<Option<PreviousVersion>, SyncError> {
        let Some(known) = self.scanner.index().get(rel)? else {
            return Ok(None);
        };
        let Ok(file) = self.root.open(rel) else {
            return Ok(None);
        };
        let file = file.into_std();
        let as_indexed = file.metadata().is_ok_and(|meta| {
            meta.len() == known.entry.size && swrepl_tree::mtime_ns(&meta) == known.entry.mtime_ns
        });
        let mut chunks = HashMap::new();
        let mut offset = 0u64;
        for chunk in &known.entry.chunks {
            chunks.entry(chunk.hash).or_insert((offset, chunk.len));
            offset += u64::from(chunk.len);
        }
        Ok(Some(PreviousVersion {
            file,
            chunks,
            as_indexed,
        }))
    }

    /// A chunk's bytes from a copy already on this machine, checked against its hash.
    fn read_local_chunk(
        &self,
        sources: &mut LocalSources,
        hash: &Hash,
        len: u32,
    ) -> Result<Option<Vec<u8>>, SyncError> {
        if let Some(previous) = sources.previous.as_mut() {
            if let Some(&(offset, chunk_len)) = previous.chunks.get(hash) {
                if chunk_len == len {
                    if let Some(data) = read_verified(&mut previous.file, offset, len, hash) {
                        return Ok(Some(data));
                    }
                }
            }
        }
        for location in self.scanner.index().find_chunk(hash)? {
            if location.len != len {
                continue;
            }
            let file = match sources.open.entry(location.path.clone()) {
                std::collections::hash_map::Entry::Occupied(slot) => slot.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    match self.root.open(&location.path) {
                        Ok(file) => slot.insert(file.into_std()),
                        Err(_) => continue,
                    }
                }
            };
            if let Some(data) = read_verified(file, location.offset, len, hash) {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }

    /// Renames a finished staging file over its target, archiving what was there. `meta` is the
    /// staging file's own metadata, taken just before.
    fn install(
        &mut self,
        staging_name: &str,
        entry: FileEntry,
        meta: &std::fs::Metadata,
    ) -> Result<(), SyncError> {
        let rel = entry.path.as_str();
        if !self.rename_into_free_slot(staging_name, rel) {
            self.ensure_parent(rel)?;
            self.archive_existing(rel, false)?;
            #[cfg(windows)]
            windows_attributes::clear_readonly(&self.root_path.join(rel));
            self.staging
                .rename(staging_name, &self.root, rel)
                .map_err(|e| self.io_err(rel, e))?;
        }
        #[cfg(windows)]
        windows_attributes::apply(&self.root_path.join(rel), entry.attributes.windows)
            .map_err(|e| self.io_err(rel, e))?;
        self.sync_parent(rel);
        let file_id = swrepl_tree::file_id_from(&self.root_path.join(rel), meta);
        let mut entry = entry;
        entry.mtime_ns = swrepl_tree::mtime_ns(meta);
        self.scanner
            .index_mut()
            .put(&ScannedEntry { entry, file_id })?;
        Ok(())
    }

    /// The common case of [`Applier::install`] made cheap: the target's parent is a real
    /// directory and nothing is at the target yet, so there is nothing to create, replace or
    /// archive: one open, one stat and the rename. False when the general path must run, which
    /// then also reports any error.
    #[cfg(target_os = "linux")]
    fn rename_into_free_slot(&self, staging_name: &str, rel: &str) -> bool {
        use std::os::fd::AsFd;
        let Ok((parent, name)) = self.open_parent(rel) else {
            return false;
        };
        is_free(&parent, name)
            && rustix::fs::renameat(self.staging.as_fd(), staging_name, &parent, name).is_ok()
    }

    #[cfg(not(target_os = "linux"))]
    fn rename_into_free_slot(&self, _staging_name: &str, _rel: &str) -> bool {
        false
    }

    /// Opens the directory holding `rel` when every component on the way is a real directory:
    /// the kernel refuses links while resolving it, confined to the root, in one call (the
    /// general paths check one component at a time). An error when a component is missing
    /// (`NOENT`: nothing is at `rel` then), a link or not a directory, or without openat2
    /// (Linux < 5.6): the general path decides then.
    #[cfg(target_os = "linux")]
    fn open_parent<'r>(
        &self,
        rel: &'r str,
    ) -> Result<(std::os::fd::OwnedFd, &'r str), rustix::io::Errno> {
        let (parent, name) = rel.rsplit_once('/').unwrap_or((".", rel));
        let dir = self.open_real_dir(parent, rustix::fs::OFlags::PATH)?;
        Ok((dir, name))
    }

    /// Opens directory `rel` (with `access`: `PATH` or `RDONLY`) in one resolution, confined to
    /// the root, any link on the way refused by the kernel.
    #[cfg(target_os = "linux")]
    fn open_real_dir(
        &self,
        rel: &str,
        access: rustix::fs::OFlags,
    ) -> Result<std::os::fd::OwnedFd, rustix::io::Errno> {
        use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
        use std::os::fd::AsFd;
        openat2(
            self.root.as_fd(),
            rel,
            access | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// Moves whatever sits at `rel` out of the way: a file being replaced is kept as a copy
    /// (hard link) so the rename over it stays atomic; anything else is moved to the archive.
    fn archive_existing(&mut self, rel: &str, remove_files: bool) -> Result<(), SyncError> {
        let Ok(meta) = self.root.symlink_metadata(rel) else {
            return Ok(());
        };
        let result = if meta.is_file() && !remove_files {
            self.archive.keep_copy(&self.root, rel)
        } else {
            self.archive.move_in(&self.root, rel)
        };
        let slot = result.map_err(|e| self.io_err(rel, e))?;
        tracing::debug!(path = rel, archived = %slot.display(), "archived");
        if meta.is_dir() {
            self.scanner.index_mut().remove_tree(rel)?;
        }
        Ok(())
    }

    /// Creates the parent directories of `rel`, archiving any non-directory in the way.
    fn ensure_parent(&mut self, rel: &str) -> Result<(), SyncError> {
        let Some((parent, _)) = rel.rsplit_once('/') else {
            return Ok(());
        };
        self.ensure_dir(parent)
    }

    fn ensure_dir(&mut self, rel: &str) -> Result<(), SyncError> {
        // Component by component, without following links: a link planted or replicated in the
        // way (e.g. `x -> .` or `x -> .swrepl`) is archived and replaced by a real directory, so
        // nothing is ever written through a link into the state directory or an excluded folder.
        let mut prefix = String::new();
        for component in rel.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(component);
            match self.root.symlink_metadata(&prefix) {
                Ok(meta) if meta.is_dir() => continue,
                Ok(_) => {
                    self.archive_existing(&prefix.clone(), true)?;
                    self.scanner.index_mut().remove_tree(&prefix)?;
                }
                Err(_) => {}
            }
            match self.root.create_dir(&prefix) {
                Ok(()) => self.sync_parent(&prefix),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(self.io_err(&prefix, e)),
            }
        }
        Ok(())
    }

    /// Applies a directory or link entry.
    pub fn apply_structural(&mut self, entry: FileEntry) -> Result<(), SyncError> {
        self.tree_changing();
        self.install_staged()?;
        let rel = entry.path.clone();
        match &entry.kind {
            EntryKind::Dir => {
                self.ensure_dir(&rel)?;
                #[cfg(unix)]
                if entry.attributes.unix_mode != 0 {
                    use std::os::unix::fs::PermissionsExt;
                    let perm = std::fs::Permissions::from_mode(entry.attributes.unix_mode);
                    self.root
                        .set_permissions(&rel, cap_std::fs::Permissions::from_std(perm))
                        .map_err(|e| self.io_err(&rel, e))?;
                }
            }
            EntryKind::Symlink { target } => {
                if let Ok(current) = self.root.read_link_contents(&rel) {
                    if current == Path::new(target) {
                        return self.record(entry);
                    }
                }
                self.ensure_parent(&rel)?;
                self.archive_existing(&rel, true)?;
                self.create_symlink(target, &rel)?;
                self.sync_parent(&rel);
            }
            EntryKind::File => unreachable!("files go through prepare_upsert"),
        }
        self.record(entry)
    }

    #[cfg(unix)]
    fn create_symlink(&self, target: &str, rel: &str) -> Result<(), SyncError> {
        // The target was checked to resolve inside the root (proto::check_link_target); cap-std
        // would refuse to follow it out of the root anyway.
        self.root
            .symlink_contents(target, rel)
            .map_err(|e| self.io_err(rel, e))
    }

    #[cfg(not(unix))]
    fn create_symlink(&self, target: &str, rel: &str) -> Result<(), SyncError> {
        let is_dir = self.root.is_dir(
            Path::new(rel)
                .parent()
                .unwrap_or(Path::new(""))
                .join(target),
        );
        let result = if is_dir {
            self.root.symlink_dir(target, rel)
        } else {
            self.root.symlink_file(target, rel)
        };
        result.map_err(|e| self.io_err(rel, e))
    }

    /// Removes `rel` (a file, link or whole tree) into the archive. Returns false when there was
    /// nothing to remove.
    pub fn delete(&mut self, rel: &str) -> Result<bool, SyncError> {
        self.tree_changing();
        self.install_staged()?;
        if self.under_link(rel)
            || self.root.symlink_metadata(rel).is_err()
            || !self.has_exact_name(rel)
        {
            self.scanner.index_mut().remove_tree(rel)?;
            return Ok(false);
        }
        let slot = self
            .archive
            .move_in(&self.root, rel)
            .map_err(|e| self.io_err(rel, e))?;
        tracing::debug!(path = rel, archived = %slot.display(), "deleted into archive");
        self.sync_parent(rel);
        self.scanner.index_mut().remove_tree(rel)?;
        Ok(true)
    }

    /// Whether a parent component of `rel` is a link (or not a directory): such a path names
    /// something behind a link, never an entry of this tree, and is neither read nor removed.
    fn under_link(&self, rel: &str) -> bool {
        let mut prefix = String::new();
        let Some((parents, _)) = rel.rsplit_once('/') else {
            return false;
        };
        #[cfg(target_os = "linux")]
        if let Ok(_) | Err(rustix::io::Errno::NOENT) = self.open_parent(rel) {
            return false; // all real directories, or one missing: nothing behind a link
        }
        for component in parents.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(component);
            match self.root.symlink_metadata(&prefix) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return true,
                Err(_) => return false,
            }
        }
        false
    }

    /// Whether a link at `link` pointing to `target` (already checked to stay inside the root)
    /// resolves into swrepl's state directory or an excluded folder, which a sender may not
    /// reach through a link any more than by name.
    pub fn link_reaches_excluded(&self, link: &str, target: &str) -> bool {
        let mut resolved: Vec<&str> = link.split('/').collect();
        resolved.pop();
        for component in target.split('/') {
            match component {
                "" | "." => {}
                ".." => {
                    resolved.pop();
                }
                name => resolved.push(name),
            }
        }
        !resolved.is_empty() && self.is_excluded(&resolved.join("/"))
    }

    /// Removes every staging file (none is in use between sessions): a file whose session
    /// failed half way, e.g. on a full disk, must not keep holding space.
    pub fn clear_staging(&mut self) {
        // Staged files were never acknowledged: the sender describes them again.
        self.staged.clear();
        self.open_staging.clear();
        let Ok(entries) = self.staging.entries() else {
            return;
        };
        for entry in entries.flatten() {
            let _ = self.staging.remove_file(entry.file_name());
        }
    }

    /// Whether `rel`'s last component exists with exactly this spelling. On a case-insensitive
    /// volume, after a case-only rename arrived as an upsert of `log.txt`, a delete of `LOG.txt`
    /// would otherwise remove the new file.
    fn has_exact_name(&self, rel: &str) -> bool {
        if !cfg!(any(windows, target_os = "macos")) {
            return true; // case-sensitive file systems: the lookup already was exact
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or((".", rel));
        self.root
            .read_dir(parent)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name() == std::ffi::OsStr::new(name))
            })
            .unwrap_or(false)
    }

    /// Renames `from` to `entry.path` when this side holds `from` with the same content (or, for
    /// a directory, as a directory). Returns false when it cannot, and the caller falls back to
    /// an upsert of `entry`.
    pub fn rename(&mut self, from: &str, entry: &FileEntry) -> Result<bool, SyncError> {
        self.tree_changing();
        self.install_staged()?;
        let to = entry.path.as_str();
        let Some(source) = self.current(from)? else {
            return Ok(false);
        };
        let same = match (&source.entry.kind, &entry.kind) {
            (EntryKind::File, EntryKind::File) => source.entry.file_hash == entry.file_hash,
            (EntryKind::Dir, EntryKind::Dir) => true,
            (EntryKind::Symlink { target: a }, EntryKind::Symlink { target: b }) => a == b,
            _ => false,
        };
        if !same {
            return Ok(false);
        }
        // A case-only rename on a case-insensitive volume finds the target "present": it is
        // the source itself, and must not be archived.
        let target_is_source = from.eq_ignore_ascii_case(to)
            && swrepl_tree::file_id_of(&self.root_path.join(to))
                == swrepl_tree::file_id_of(&self.root_path.join(from));
        if !target_is_source {
            self.ensure_parent(to)?;
            self.archive_existing(to, true)?;
            self.scanner.index_mut().remove_tree(to)?;
        }
        self.root
            .rename(from, &self.root, to)
            .map_err(|e| self.io_err(to, e))?;
        self.sync_parent(from);
        self.sync_parent(to);
        self.scanner.index_mut().rename_tree(from, to)?;
        if let Some(moved) = self.scanner.index().get(to)? {
            self.refresh_metadata(&moved, entry)?;
        }
        Ok(true)
    }

    /// Ends a full pass: every entry of this tree that the pass did not mention is an extra,
    /// removed into the archive unless the mass-delete guard holds them.
    /// Entries in `skipped` buckets count as named (the sender left them out as equal).
    pub fn prune(
        &mut self,
        seen: &HashSet<String>,
        skipped: Option<&BucketSet>,
        policy: Prune,
    ) -> Result<PruneOutcome, SyncError> {
        self.install_staged()?;
        if seen.is_empty() && skipped.is_some_and(|s| s.len() == s.capacity()) {
            // Every bucket was equal: there is nothing the pass did not cover.
            return Ok(PruneOutcome::default());
        }
        let present = if skipped.is_some() {
            // The pass was cut by this session's summary, whose rescan brought the index up to
            // date with the disk; since then only this session changed the tree, recording each
            // change. The index lists the tree without a second walk.
            self.scanner.index().paths()?
        } else {
            let outcome = self.scanner.scan()?;
            outcome.entries.into_iter().map(|e| e.entry.path).collect()
        };
        let total = present.len() as u64;
        let extras: Vec<&str> = present
            .iter()
            .map(String::as_str)
            .filter(|p| !seen.contains(*p))
            .filter(|p| !skipped.is_some_and(|s| s.contains_path(p)))
            .collect();
        if extras.is_empty() {
            return Ok(PruneOutcome::default());
        }
        let count = extras.len() as u64;
        let allowed = match policy {
            Prune::All => true,
            Prune::Never => false,
            Prune::UpToPermille(permille) => count * 1000 <= u64::from(permille) * total,
        };
        if !allowed {
            return Ok(PruneOutcome {
                pruned: 0,
                held: count,
            });
        }
        let top_most = top_most_paths(&extras);
        for rel in &top_most {
            self.delete(rel)?;
        }
        Ok(PruneOutcome {
            pruned: count,
            held: 0,
        })
    }

    /// The tree as it is on disk now, as bucket digests for the sender: the last summary again
    /// when the watcher has counted no change under the root since its scan began (once every
    /// change made before this call has reached it), else a stat-only rescan.
    pub fn summary(&mut self) -> Result<TreeDigest, SyncError> {
        self.install_staged()?;
        if let (Some(watch), Some(_)) = (&self.watch, &self.summary) {
            if !watch.catch_up(WATCH_CATCH_UP_TIMEOUT) {
                tracing::warn!(root = %self.root_path.display(), "the watcher on the Slave's root does not report changes: stopped; every sender connection will rescan the tree");
                self.watch = None;
                self.watching = false;
            } else if let Some(known) = self.reusable_summary() {
                tracing::debug!("tree unchanged since its last summary: no rescan");
                return Ok(known.digest.clone());
            }
        }
        // Counted before the scan: a change while it runs makes the result stale.
        let changes = self.watch.as_ref().map(TreeWatch::changes);
        let scanned = Instant::now();
        self.summary_scans += 1;
        let outcome = self.scanner.scan()?;
        // A few blake3 compressions per entry: spread over every core.
        let keys = crate::summary_keys::entry_keys(&outcome.entries, |s| &s.entry);
        let digest = TreeDigest::from_keys(summary_bits(keys.len() as u64), &keys);
        self.summary = changes.map(|changes| KnownSummary {
            digest: digest.clone(),
            changes,
            scanned,
        });
        Ok(digest)
    }

    /// Applies mtime and permissions of `wanted` to the file that already has its content.
    fn refresh_metadata(
        &mut self,
        current: &ScannedEntry,
        wanted: &FileEntry,
    ) -> Result<(), SyncError> {
        let rel = wanted.path.as_str();
        let attrs_differ = cfg!(unix)
            && wanted.attributes.unix_mode != 0
            && wanted.attributes.unix_mode != current.entry.attributes.unix_mode;
        if current.entry.mtime_ns == wanted.mtime_ns && !attrs_differ {
            return Ok(());
        }
        if wanted.kind == EntryKind::File {
            let file = self
                .root
                .open(rel)
                .map_err(|e| self.io_err(rel, e))?
                .into_std();
            set_file_metadata(&file, wanted).map_err(|e| self.io_err(rel, e))?;
        }
        let mut updated = wanted.clone();
        updated.path = rel.to_string();
        self.record(updated)
    }

    /// Records `entry` as now present on disk.
    fn record(&mut self, entry: FileEntry) -> Result<(), SyncError> {
        let path = self.root_path.join(&entry.path);
        let mut entry = entry;
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            entry.mtime_ns = swrepl_tree::mtime_ns(&meta);
        }
        let file_id = swrepl_tree::file_id_of(&path);
        self.scanner
            .index_mut()
            .put(&ScannedEntry { entry, file_id })?;
        Ok(())
    }

    /// The whole tree, every file hashed afresh (not from the index), for remote verify.
    pub fn listing(&mut self) -> Result<Vec<FileEntry>, SyncError> {
        self.install_staged()?;
        Ok(swrepl_tree::list_tree(&self.root_path, &self.excludes, &|_| {})?.entries)
    }

    /// Notes that a rename or creation in `rel`'s directory must be made durable (by
    /// [`Applier::sync_dirs`], before the change is acknowledged).
    fn sync_parent(&mut self, rel: &str) {
        if cfg!(unix) {
            let parent = rel.rsplit_once('/').map_or(".", |(p, _)| p);
            self.unsynced_dirs.insert(parent.to_string());
        }
    }

    /// Makes the renames and creations since the last call durable: each directory they touched
    /// is fsynced once (a file installed is fsynced by `complete` itself). Best effort, as a
    /// directory may be gone again (deleted, renamed: its parent is in the set then).
    pub fn sync_dirs(&mut self) {
        for dir in std::mem::take(&mut self.unsynced_dirs) {
            if let Some(dir) = self.open_dir_to_sync(&dir) {
                let _ = dir.sync_all();
            }
        }
    }

    /// A directory opened so that it can be fsynced: cap-std opens directories with `O_PATH` on
    /// Linux, a handle fsync refuses (EBADF), so there it is opened for reading instead, with
    /// links refused and confined to the root like any other open.
    #[cfg(target_os = "linux")]
    fn open_dir_to_sync(&self, rel: &str) -> Option<File> {
        let dir = self.open_real_dir(rel, rustix::fs::OFlags::RDONLY).ok()?;
        Some(File::from(dir))
    }

    #[cfg(not(target_os = "linux"))]
    fn open_dir_to_sync(&self, rel: &str) -> Option<File> {
        Some(self.root.open_dir(rel).ok()?.into_std_file())
    }

    fn io_err(&self, rel: &str, source: io::Error) -> SyncError {
        SyncError::Apply {
            path: rel.to_string(),
            source,
        }
    }
}

/// The session's view of the receiver's file system: the real one, confined to the root.
impl ReceiverStore for Applier {
    type Pending = PendingFile;

    fn is_excluded(&self, rel: &str) -> bool {
        Applier::is_excluded(self, rel)
    }

    fn link_reaches_excluded(&self, link: &str, target: &str) -> bool {
        Applier::link_reaches_excluded(self, link, target)
    }

    fn prepare_upsert(
        &mut self,
        entry: FileEntry,
        requested: &mut HashSet<Hash>,
    ) -> Result<Prepared, SyncError> {
        Applier::prepare_upsert(self, entry, requested)
    }

    fn write_chunk(
        &mut self,
        pending: &mut PendingFile,
        index: u32,
        data: &[u8],
    ) -> Result<(), SyncError> {
        Applier::write_chunk(self, pending, index, data)
    }

    fn complete(&mut self, pending: &mut PendingFile) -> Result<Completion, SyncError> {
        Applier::complete(self, pending)
    }

    fn discard(&mut self, pending: PendingFile) {
        Applier::discard(self, pending)
    }

    fn apply_structural(&mut self, entry: FileEntry) -> Result<(), SyncError> {
        Applier::apply_structural(self, entry)
    }

    fn delete(&mut self, rel: &str) -> Result<bool, SyncError> {
        Applier::delete(self, rel)
    }

    fn rename(&mut self, from: &str, entry: &FileEntry) -> Result<bool, SyncError> {
        Applier::rename(self, from, entry)
    }

    fn prune(
        &mut self,
        seen: &HashSet<String>,
        skipped: Option<&BucketSet>,
        prune: Prune,
    ) -> Result<PruneOutcome, SyncError> {
        Applier::prune(self, seen, skipped, prune)
    }

    fn summary(&mut self) -> Result<TreeDigest, SyncError> {
        Applier::summary(self)
    }

    fn checkpoint(&mut self, more_expected: bool) -> Result<(), SyncError> {
        self.install_staged()?;
        self.sync_dirs();
        // The index is only a cache (the next scan compares it with the disk and rehashes what
        // it lost): during a burst it is saved now and then, not at every acknowledgement, since
        // each commit rewrites every index page touched since the last one.
        if !more_expected || self.index_saved.elapsed() >= INDEX_SAVE_INTERVAL {
            self.save_index();
        }
        Ok(())
    }

    fn clear_staging(&mut self) {
        Applier::clear_staging(self)
    }
}

/// A complete, verified file in the staging area, not yet durable nor in place.
struct StagedFile {
    staging_name: String,
    entry: FileEntry,
    file: File,
}

/// Staged files installed together, at most (a batch also ends at every acknowledgement).
const STAGED_MAX: usize = 256;
/// Threads that fsync a batch of staged files.
const FSYNC_THREADS: usize = 8;

/// An fsync quicker than this had nothing slow to wait for (tmpfs, a write-back cache): the
/// next one is done on this thread too, rather than on threads started for it.
const QUICK_FSYNC: Duration = Duration::from_micros(200);

/// fsyncs every staged file; one result per file, in order. They are synced one after another
/// while each is quick; once one is slow (a disk to wait for), the rest are shared out over
/// [`fsync_in_parallel`].
fn fsync_all(staged: &[StagedFile]) -> Vec<io::Result<()>> {
    let mut results = Vec::with_capacity(staged.len());
    let mut rest = staged;
    while let Some((first, tail)) = rest.split_first() {
        let started = Instant::now();
        results.push(first.file.sync_all());
        rest = tail;
        if started.elapsed() >= QUICK_FSYNC {
            break;
        }
    }
    results.extend(fsync_in_parallel(rest));
    results
}

/// fsyncs `staged`, a share of them on each of up to [`FSYNC_THREADS`] threads: a file system
/// commits concurrent fsyncs together, whereas one after another each waits for its own.
fn fsync_in_parallel(staged: &[StagedFile]) -> Vec<io::Result<()>> {
    if staged.len() <= 1 {
        return staged.iter().map(|s| s.file.sync_all()).collect();
    }
    let per_thread = staged.len().div_ceil(FSYNC_THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = staged
            .chunks(per_thread)
            .map(|share| {
                let worker = scope
                    .spawn(move || share.iter().map(|s| s.file.sync_all()).collect::<Vec<_>>());
                (share.len(), worker)
            })
            .collect();
        let mut results = Vec::with_capacity(staged.len());
        for (len, worker) in workers {
            match worker.join() {
                Ok(synced) => results.extend(synced),
                Err(_) => results.extend((0..len).map(|_| Err(io::Error::other("fsync failed")))),
            }
        }
        results
    })
}

/// Whether nothing at all (not even a dangling link) is at `name` in `dir`.
#[cfg(target_os = "linux")]
fn is_free(dir: &std::os::fd::OwnedFd, name: &str) -> bool {
    matches!(
        rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW),
        Err(rustix::io::Errno::NOENT)
    )
}

/// Whether one of two paths is the other or lies below it.
fn overlaps(a: &str, b: &str) -> bool {
    let below = |inner: &str, outer: &str| {
        inner.len() > outer.len()
            && inner.starts_with(outer)
            && inner.as_bytes()[outer.len()] == b'/'
    };
    a == b || below(a, b) || below(b, a)
}

fn kind_matches(kind: &EntryKind, meta: &std::fs::Metadata) -> bool {
    match kind {
        EntryKind::File => meta.is_file(),
        EntryKind::Dir => meta.is_dir(),
        EntryKind::Symlink { .. } => meta.file_type().is_symlink(),
    }
}

/// Where `complete` finds chunks on this machine: the target's previous version first, then any
/// file the index names, each opened once.
#[derive(Default)]
struct LocalSources {
    previous: Option<PreviousVersion>,
    open: HashMap<String, File>,
}

/// The file being replaced, and where each of its chunks sits in it.
struct PreviousVersion {
    file: File,
    chunks: HashMap<Hash, (u64, u32)>,
    /// Whether its size and modification time are what the index recorded with its chunks.
    as_indexed: bool,
}

impl PreviousVersion {
    /// How many of `wanted` (ascending chunk indices of `chunks`, the new version) form a run
    /// that sits unbroken in this version too, starting with `wanted[0]`: 0 when this version
    /// does not hold `wanted[0]`. A run stays under [`LOCAL_RUN_MAX`] bytes (one chunk at least).
    fn run_len(&self, chunks: &[ChunkRef], wanted: &[u32]) -> usize {
        let Some(&first) = wanted.first() else {
            return 0;
        };
        let chunk = chunks[first as usize];
        let Some(&(start, len)) = self.chunks.get(&chunk.hash) else {
            return 0;
        };
        if len != chunk.len {
            return 0;
        }
        let mut end = start + u64::from(len);
        let mut taken = 1;
        while let Some(&next) = wanted.get(taken) {
            if next != wanted[taken - 1] + 1 {
                break;
            }
            let chunk = chunks[next as usize];
            match self.chunks.get(&chunk.hash) {
                Some(&(at, len))
                    if at == end
                        && len == chunk.len
                        && end + u64::from(len) - start <= LOCAL_RUN_MAX as u64 =>
                {
                    end += u64::from(len);
                    taken += 1;
                }
                _ => break,
            }
        }
        taken
    }
}

/// Consecutive chunks of a new version that sit, in the same order, in its previous version.
struct CopyRun {
    /// Where they start in the previous version.
    source: u64,
    /// Where they start in the new one.
    target: u64,
    len: u64,
    /// Their positions in the list of chunks being filled.
    chunks: std::ops::Range<usize>,
}

/// Copies `runs` (in ascending target order) from `source` to `target`. For each run:
/// `Ok(true)` copied, `Ok(false)` not readable in full (`source` is shorter than indexed), or the
/// error writing `target`. With `hash_len`, every byte of `target` outside the runs is already in
/// place and `target` is also hashed, on a second thread following the copy: the whole-file
/// hash, when every run was copied and read back.
fn copy_runs(
    source: &File,
    target: &File,
    runs: &[CopyRun],
    hash_len: Option<u64>,
) -> (Vec<io::Result<bool>>, Option<Hash>) {
    let Some(len) = hash_len else {
        return (
            runs.iter()
                .map(|run| copy_range(source, target, run))
                .collect(),
            None,
        );
    };
    let copied_to = Watermark::new(runs.first().map_or(len, |run| run.target));
    std::thread::scope(|scope| {
        let hasher = scope.spawn(|| hash_behind(target, len, &copied_to));
        // Whatever happens here, the hasher must not wait for a copy that will not come.
        let release = ReleaseOnDrop(&copied_to, len);
        let mut results = Vec::with_capacity(runs.len());
        for (k, run) in runs.iter().enumerate() {
            let result = copy_range(source, target, run);
            if matches!(result, Ok(true)) {
                copied_to.advance(runs.get(k + 1).map_or(len, |next| next.target));
            } else {
                copied_to.abandon();
            }
            results.push(result);
        }
        drop(release);
        let whole = hasher.join().unwrap_or(None);
        (results, whole)
    })
}

/// How far a file is in place, for a thread that reads it behind the one writing it.
struct Watermark {
    /// Bytes before this offset are in place; `None` once the writer gave up.
    at: std::sync::Mutex<Option<u64>>,
    moved: std::sync::Condvar,
}

impl Watermark {
    fn new(at: u64) -> Watermark {
        Watermark {
            at: std::sync::Mutex::new(Some(at)),
            moved: std::sync::Condvar::new(),
        }
    }

    fn set(&self, to: impl FnOnce(Option<u64>) -> Option<u64>) {
        let mut at = self
            .at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *at = to(*at);
        self.moved.notify_all();
    }

    fn advance(&self, to: u64) {
        self.set(|at| at.map(|_| to));
    }

    fn abandon(&self) {
        self.set(|_| None);
    }

    /// Waits until more than `done` bytes are in place; `None` if they never will be.
    fn beyond(&self, done: u64) -> Option<u64> {
        let mut at = self
            .at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            match *at {
                Some(to) if to > done => return Some(to),
                Some(_) => {
                    at = self
                        .moved
                        .wait(at)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                }
                None => return None,
            }
        }
    }
}

/// Gives up a [`Watermark`] that has not reached `.1` when dropped (the writer stopped early).
struct ReleaseOnDrop<'a>(&'a Watermark, u64);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        let end = self.1;
        self.0.set(|at| at.filter(|&at| at >= end));
    }
}

/// The blake3 of `file`'s first `len` bytes, read as [`Watermark`] says they are in place.
fn hash_behind(file: &File, len: u64, copied_to: &Watermark) -> Option<Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; HASH_BEHIND_BLOCK];
    let mut done = 0u64;
    while done < len {
        let ready = copied_to.beyond(done)?.min(len);
        while done < ready {
            let n = (ready - done).min(buf.len() as u64) as usize;
            read_exact_at(file, done, &mut buf[..n]).ok()?;
            hasher.update(&buf[..n]);
            done += n as u64;
        }
    }
    Some(*hasher.finalize().as_bytes())
}

/// Copies one run in the kernel (`copy_file_range`), or, where that is not possible (another
/// file system, an old kernel, an error to tell apart), through a buffer.
fn copy_range(source: &File, target: &File, run: &CopyRun) -> io::Result<bool> {
    let done = match copy_in_kernel(source, target, run) {
        Some(done) if done == run.len => return Ok(true),
        Some(done) => done,
        None => return Ok(false), // the end of `source`
    };
    let mut buf = vec![0u8; usize::try_from(run.len - done).unwrap_or(usize::MAX)];
    if buf.is_empty() {
        return Ok(true);
    }
    if read_exact_at(source, run.source + done, &mut buf).is_err() {
        return Ok(false);
    }
    write_at(target, run.target + done, &buf)?;
    Ok(true)
}

/// Copies what it can of `run` with `copy_file_range`: how many bytes (the rest is for a
/// buffered copy to do, or to fail clearly), or `None` when `source` ended before the run did.
#[cfg(target_os = "linux")]
fn copy_in_kernel(source: &File, target: &File, run: &CopyRun) -> Option<u64> {
    let mut done = 0u64;
    while done < run.len {
        let mut from = run.source + done;
        let mut to = run.target + done;
        let left = usize::try_from(run.len - done).unwrap_or(usize::MAX);
        match rustix::fs::copy_file_range(source, Some(&mut from), target, Some(&mut to), left) {
            Ok(0) => return None,
            Ok(n) => done += n as u64,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    Some(done)
}

#[cfg(not(target_os = "linux"))]
fn copy_in_kernel(_source: &File, _target: &File, _run: &CopyRun) -> Option<u64> {
    Some(0)
}

/// Reads `buf.len()` bytes at `offset`, on a shared handle (several threads may read one file).
fn read_exact_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        // seek_read passes the offset with the read, so concurrent calls do not interfere.
        let len = buf.len();
        all_at(len, io::ErrorKind::UnexpectedEof, |done| {
            std::os::windows::fs::FileExt::seek_read(file, &mut buf[done..], offset + done as u64)
        })
    }
}

/// Writes `data` at `offset`, on a shared handle (several threads may write disjoint ranges of
/// one file).
fn write_at(file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, data, offset)
    }
    #[cfg(windows)]
    {
        all_at(data.len(), io::ErrorKind::WriteZero, |done| {
            std::os::windows::fs::FileExt::seek_write(file, &data[done..], offset + done as u64)
        })
    }
}

/// Repeats `step(done)` (a positional read or write from `done` bytes on) until `len` bytes are
/// done; a step that does nothing is the error `stuck`.
#[cfg(windows)]
fn all_at(
    len: usize,
    stuck: io::ErrorKind,
    mut step: impl FnMut(usize) -> io::Result<usize>,
) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        match step(done) {
            Ok(0) => return Err(stuck.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The whole-file hash of a staging file's leading chunks, fed as chunks are written, so that a
/// file whose chunks arrive (or are filled) in order is never read back; a chunk written ahead of
/// its turn is read back from the staging file when its turn comes. Once [deferred], the hash is
/// computed only when the file is complete, by reading it back on all cores.
///
/// [deferred]: PrefixDigest::defer
struct PrefixDigest {
    /// Created on first use: thousands of announced files may be waiting for data.
    hasher: Option<Box<blake3::Hasher>>,
    /// Chunks `0..hashed` are in `hasher`.
    hashed: usize,
    /// Which chunks are in the staging file.
    filled: Vec<bool>,
    /// Nothing is hashed until the file is complete.
    deferred: bool,
    /// The whole-file hash, taken as the last chunks were copied in (see
    /// [`PendingFile::copy_unchecked`]); dropped by any later write.
    whole: Option<Hash>,
}

impl PrefixDigest {
    fn new(chunks: usize) -> PrefixDigest {
        PrefixDigest {
            hasher: None,
            hashed: 0,
            filled: vec![false; chunks],
            deferred: false,
            whole: None,
        }
    }

    /// From now on nothing is hashed as it is written: [`PrefixDigest::finish`] reads the whole
    /// file back, on all cores. For a large file mostly copied from its previous version, whose
    /// copies go through the kernel and never pass through this process.
    fn defer(&mut self) {
        self.hasher = None;
        self.hashed = 0;
        self.deferred = true;
    }

    /// Chunk `index`, with bytes `data` (checked against its hash), is now in the staging file.
    fn written(
        &mut self,
        file: &mut File,
        offsets: &[u64],
        chunks: &[ChunkRef],
        index: usize,
        data: &[u8],
    ) -> io::Result<()> {
        self.whole = None;
        self.catch_up(file, offsets, chunks)?;
        if self.hashed == index && !self.deferred {
            self.feed(data);
        }
        self.filled[index] = true;
        Ok(())
    }

    /// Feeds the chunks already in the staging file that follow the hashed prefix.
    fn catch_up(
        &mut self,
        file: &mut File,
        offsets: &[u64],
        chunks: &[ChunkRef],
    ) -> io::Result<()> {
        if self.deferred {
            return Ok(());
        }
        let mut buf = Vec::new();
        while self.filled.get(self.hashed) == Some(&true) {
            buf.resize(chunks[self.hashed].len as usize, 0);
            read_exact_at(file, offsets[self.hashed], &mut buf)?;
            self.feed(&buf);
        }
        Ok(())
    }

    /// A copy of the whole-file hash to go on with from chunk `index`, when the hashed prefix
    /// ends right before it (and the file has more than one chunk).
    fn continuing_at(&self, index: usize) -> Option<Box<blake3::Hasher>> {
        if self.hashed != index || self.filled.len() <= 1 || self.deferred {
            return None;
        }
        Some(
            self.hasher
                .clone()
                .unwrap_or_else(|| Box::new(blake3::Hasher::new())),
        )
    }

    /// Starts over, with the chunks `missing` no longer in the staging file.
    fn restart_without(&mut self, missing: &[u32]) {
        self.whole = None;
        self.hasher = None;
        self.hashed = 0;
        for &i in missing {
            self.filled[i as usize] = false;
        }
    }

    /// Takes `hasher`, a copy from [`PrefixDigest::continuing_at`] fed `chunks` more chunks.
    fn adopt(&mut self, hasher: Box<blake3::Hasher>, chunks: usize) {
        self.hasher = Some(hasher);
        self.hashed += chunks;
    }

    fn feed(&mut self, data: &[u8]) {
        // A file of one chunk is that chunk: its hash is the chunk's, already checked.
        if self.filled.len() > 1 {
            self.hasher
                .get_or_insert_with(|| Box::new(blake3::Hasher::new()))
                .update(data);
        }
        self.hashed += 1;
    }

    /// The whole-file hash, or `None` while chunks are missing.
    fn finish(
        &mut self,
        file: &mut File,
        offsets: &[u64],
        chunks: &[ChunkRef],
    ) -> io::Result<Option<Hash>> {
        if self.deferred {
            if self.filled.contains(&false) {
                return Ok(None);
            }
            if let Some(whole) = self.whole {
                return Ok(Some(whole));
            }
            let len =
                offsets.last().map_or(0, |&at| at) + chunks.last().map_or(0, |c| u64::from(c.len));
            return swrepl_tree::hash_file_exact(file, len)?
                .map(Some)
                .ok_or_else(|| io::Error::other("the staging file changed length while hashed"));
        }
        self.catch_up(file, offsets, chunks)?;
        if self.hashed < self.filled.len() {
            return Ok(None);
        }
        Ok(Some(match (chunks, &self.hasher) {
            ([only], _) => only.hash,
            (_, Some(hasher)) => *hasher.finalize().as_bytes(),
            (_, None) => *blake3::hash(&[]).as_bytes(),
        }))
    }
}

/// `len` bytes at `offset`, if they hash to `hash` (a local copy may have changed since indexed).
fn read_verified(file: &mut File, offset: u64, len: u32, hash: &Hash) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    read_exact_at(file, offset, &mut buf).ok()?;
    (blake3::hash(&buf).as_bytes() == hash).then_some(buf)
}

/// Of a set of paths, those with no ancestor in the set.
fn top_most_paths<'a>(paths: &[&'a str]) -> Vec<&'a str> {
    let set: HashSet<&str> = paths.iter().copied().collect();
    paths
        .iter()
        .copied()
        .filter(|p| {
            let mut cur = *p;
            while let Some((parent, _)) = cur.rsplit_once('/') {
                if set.contains(parent) {
                    return false;
                }
                cur = parent;
            }
            true
        })
        .collect()
}

fn set_file_metadata(file: &File, entry: &FileEntry) -> io::Result<()> {
    #[cfg(unix)]
    if entry.attributes.unix_mode != 0 {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(entry.attributes.unix_mode))?;
    }
    let mtime = if entry.mtime_ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(entry.mtime_ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(entry.mtime_ns.unsigned_abs())
    };
    file.set_modified(mtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_most_keeps_only_roots_of_subtrees() {
        let paths = ["a", "a/b", "a/b/c", "ab", "x/y", "x/y/z"];
        assert_eq!(top_most_paths(&paths), vec!["a", "ab", "x/y"]);
    }

    /// Deterministic, incompressible bytes (splitmix64).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// The entry a sender would announce for `data` at `path`.
    fn entry_for(path: &str, data: &[u8]) -> FileEntry {
        let chunked = swrepl_tree::chunk_reader(data).expect("chunking from memory cannot fail");
        entry_with(path, data, chunked.chunks)
    }

    /// An entry for `data` cut into `chunks` (any cut: the receiver does not re-cut).
    fn entry_with(path: &str, data: &[u8], chunks: Vec<ChunkRef>) -> FileEntry {
        FileEntry {
            path: path.to_string(),
            kind: EntryKind::File,
            size: data.len() as u64,
            mtime_ns: 1_700_000_000_000_000_000,
            attributes: swrepl_proto::Attributes {
                unix_mode: 0o644,
                windows: 0,
            },
            chunks,
            file_hash: *blake3::hash(data).as_bytes(),
        }
    }

    /// The bytes of chunk `index` of `entry`, cut from `data`.
    fn chunk_bytes<'a>(entry: &FileEntry, data: &'a [u8], index: u32) -> &'a [u8] {
        let start: usize = entry.chunks[..index as usize]
            .iter()
            .map(|c| c.len as usize)
            .sum();
        &data[start..start + entry.chunks[index as usize].len as usize]
    }

    struct Slave {
        _dir: tempfile::TempDir,
        root: PathBuf,
        archive: PathBuf,
        applier: Applier,
    }

    /// A Slave root holding `files`, opened (and so indexed) by an [`Applier`].
    fn slave_with(files: &[(&str, &[u8])]) -> Slave {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let root = dir.path().join("slave");
        for (rel, data) in files {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().expect("a file has a parent"))
                .expect("cannot create a folder");
            std::fs::write(&path, data).expect("cannot write a file");
        }
        std::fs::create_dir_all(&root).expect("cannot create the root");
        let archive = dir.path().join("archive");
        let excludes = Excludes::new(&[], true).expect("default excludes are valid");
        let applier = Applier::open(&root, &archive, None, excludes).expect("cannot open the root");
        Slave {
            _dir: dir,
            root,
            archive,
            applier,
        }
    }

    /// Announces `entry`; returns its pending file and the chunks asked of the peer.
    fn announce(applier: &mut Applier, entry: &FileEntry) -> (Box<PendingFile>, Vec<u32>) {
        match applier
            .prepare_upsert(entry.clone(), &mut HashSet::new())
            .expect("prepare_upsert failed")
        {
            Prepared::File { pending, need } => (pending, need),
            _ => panic!("{:?} must need content", entry.path),
        }
    }

    /// Plays the peer: sends what is asked until the file is installed (or an error).
    fn deliver(
        applier: &mut Applier,
        pending: &mut PendingFile,
        mut need: Vec<u32>,
        data: &[u8],
    ) -> Result<Vec<Vec<u32>>, SyncError> {
        let entry = pending.entry.clone();
        let mut asked = vec![need.clone()];
        loop {
            for &i in &need {
                applier.write_chunk(pending, i, chunk_bytes(&entry, data, i))?;
            }
            match applier.complete(pending)? {
                Completion::Installed => {
                    applier.install_staged()?;
                    return Ok(asked);
                }
                Completion::NeedMore(more) => {
                    assert!(asked.len() < 4, "the receiver keeps asking: {asked:?}");
                    asked.push(more.clone());
                    need = more;
                }
            }
        }
    }

    /// Every regular file under `dir`, read.
    fn files_under(dir: &Path) -> Vec<Vec<u8>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(files_under(&path));
            } else {
                found.push(std::fs::read(&path).expect("cannot read an archived file"));
            }
        }
        found
    }

    /// 10 MiB with 4 KiB overwritten and 100 bytes inserted: chunks far apart, runs longer than
    /// [`LOCAL_RUN_MAX`].
    fn edited(old: &[u8]) -> Vec<u8> {
        let mut new = old.to_vec();
        new[3_000_000..3_004_096].copy_from_slice(&noise(2, 4096));
        new.splice(7_000_000..7_000_000, noise(3, 100));
        new
    }

    /// Sizes of the edited files in the tests below: one rebuilt through this process, a run at
    /// a time ([`PendingFile::copy_run`]), one copied in the kernel and hashed behind the copy
    /// ([`PendingFile::copy_unchecked`]).
    const EDITED_SIZES: [usize; 2] = [10 << 20, swrepl_tree::PARALLEL_MIN_LEN as usize + (3 << 20)];

    #[test]
    fn an_edited_file_is_rebuilt_from_its_previous_version_and_the_old_one_archived() {
        for size in EDITED_SIZES {
            rebuild_edited_file(size);
        }
    }

    fn rebuild_edited_file(size: usize) {
        let old = noise(1, size);
        let new = edited(&old);
        let mut slave = slave_with(&[("data/big.bin", &old)]);
        let entry = entry_for("data/big.bin", &new);
        let (mut pending, need) = announce(&mut slave.applier, &entry);
        assert!(
            !need.is_empty() && need.len() <= 6,
            "only the edited chunks are asked for, not {} of {}",
            need.len(),
            entry.chunks.len()
        );
        let asked = deliver(&mut slave.applier, &mut pending, need, &new).expect("install failed");
        assert_eq!(
            asked.len(),
            1,
            "nothing beyond the edit is asked for: {asked:?}"
        );
        assert!(std::fs::read(slave.root.join("data/big.bin")).unwrap() == new);
        assert!(files_under(&slave.archive).contains(&old));
        assert!(files_under(&slave.root.join(STAGING_REL)).is_empty());
    }

    #[test]
    fn a_previous_version_altered_since_indexed_has_its_altered_chunks_asked_for() {
        for size in EDITED_SIZES {
            rebuild_from_altered_version(size);
        }
    }

    fn rebuild_from_altered_version(size: usize) {
        let old = noise(4, size);
        let new = edited(&old);
        let mut slave = slave_with(&[("big.bin", &old)]);
        // Someone on the Slave alters the old version without changing its size or time, so
        // the index still vouches for it.
        let path = slave.root.join("big.bin");
        let mtime = filetime::FileTime::from_last_modification_time(&path.metadata().unwrap());
        let mut altered = old.clone();
        altered[5_000_000..5_000_010].copy_from_slice(b"tampered!!");
        std::fs::write(&path, &altered).unwrap();
        filetime::set_file_mtime(&path, mtime).unwrap();

        let entry = entry_for("big.bin", &new);
        let (mut pending, need) = announce(&mut slave.applier, &entry);
        let asked = deliver(&mut slave.applier, &mut pending, need, &new).expect("install failed");
        assert_eq!(
            asked.len(),
            2,
            "the altered chunk is asked for late: {asked:?}"
        );
        assert_eq!(asked[1].len(), 1, "only the altered chunk: {asked:?}");
        assert!(std::fs::read(&path).unwrap() == new);
    }

    #[test]
    fn a_summary_is_given_again_without_a_scan_until_something_under_the_root_changes() {
        let mut slave = slave_with(&[
            ("mail/a.eml", b"a"),
            ("Core Services/SwSqlServer/swsql.ini", b"[mysqld]"),
        ]);
        if !slave.applier.watch_tree() {
            return; // no tree watch on this system: every summary scans (the test below)
        }
        let first = slave.applier.summary().unwrap();
        assert_eq!(slave.applier.summary_scans, 1);
        assert!(
            slave.applier.summary_worth_preparing(),
            "a summary within a session does not start the watch"
        );
        slave.applier.prepare_summary().unwrap();
        assert_eq!(slave.applier.summary_scans, 2);
        assert_eq!(slave.applier.summary().unwrap(), first);
        assert_eq!(
            slave.applier.summary_scans, 2,
            "nothing changed: no third scan"
        );

        // swrepl's own state and excluded paths are not the tree.
        std::fs::write(slave.root.join(".swrepl/notes.txt"), b"x").unwrap();
        let excluded = slave.root.join("Core Services/SwSqlServer/data");
        std::fs::create_dir_all(&excluded).unwrap();
        std::fs::write(excluded.join("t.MYD"), b"rows").unwrap();
        std::fs::read(slave.root.join("mail/a.eml")).unwrap();
        assert_eq!(slave.applier.summary().unwrap(), first);
        assert_eq!(
            slave.applier.summary_scans, 2,
            "nothing of the tree changed"
        );

        // A change by someone else is seen at once (the watcher is caught up first).
        std::fs::write(slave.root.join("mail/b.eml"), b"b").unwrap();
        let second = slave.applier.summary().unwrap();
        assert_ne!(second, first);
        assert_eq!(slave.applier.summary_scans, 3);
        assert_eq!(slave.applier.summary().unwrap(), second);
        assert_eq!(slave.applier.summary_scans, 3);

        // A change of the receiver's own stops the watch until the next prepared summary.
        slave.applier.delete("mail/b.eml").unwrap();
        assert!(slave.applier.summary_worth_preparing());
        assert_eq!(slave.applier.summary().unwrap(), first);
        assert_eq!(slave.applier.summary_scans, 4);
        slave.applier.prepare_summary().unwrap();
        assert_eq!(slave.applier.summary().unwrap(), first);
        assert_eq!(slave.applier.summary_scans, 5);
    }

    #[test]
    fn without_a_watcher_every_summary_scans() {
        let mut slave = slave_with(&[("mail/a.eml", b"a")]);
        let first = slave.applier.summary().unwrap();
        assert_eq!(slave.applier.summary().unwrap(), first);
        assert_eq!(slave.applier.summary_scans, 2);
        assert!(
            !slave.applier.summary_worth_preparing(),
            "nothing to prepare without a watch"
        );
    }

    #[test]
    fn runs_copied_with_the_hash_behind_give_the_file_and_its_hash_or_no_hash() {
        let dir = tempfile::tempdir().unwrap();
        let source_data = noise(7, 3 << 20);
        std::fs::write(dir.path().join("source"), &source_data).unwrap();
        let source = File::open(dir.path().join("source")).unwrap();
        // The target: 1 MiB of its own, then the source's second and first MiB.
        let mut expected = noise(8, 1 << 20);
        expected.extend_from_slice(&source_data[1 << 20..2 << 20]);
        expected.extend_from_slice(&source_data[..1 << 20]);
        let run = |source: u64, target: u64, len: u64, k: usize| CopyRun {
            source,
            target,
            len,
            chunks: k..k + 1,
        };
        let runs = [
            run(1 << 20, 1 << 20, 1 << 20, 0),
            run(0, 2 << 20, 1 << 20, 1),
        ];
        let open_target = |name: &str| {
            let target = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.path().join(name))
                .unwrap();
            write_at(&target, 0, &expected[..1 << 20]).unwrap();
            target
        };

        let target = open_target("complete");
        let (copied, whole) = copy_runs(&source, &target, &runs, Some(3 << 20));
        assert!(copied.iter().all(|c| matches!(c, Ok(true))), "{copied:?}");
        assert_eq!(
            std::fs::read(dir.path().join("complete")).unwrap(),
            expected
        );
        assert_eq!(whole, Some(*blake3::hash(&expected).as_bytes()));

        // A source shorter than its index said: that run is not copied, and no hash is given
        // (the hashing thread must not wait forever for it).
        let short = [
            run(2 << 20, 1 << 20, 2 << 20, 0),
            run(0, 2 << 20, 1 << 20, 1),
        ];
        let target = open_target("short");
        let (copied, whole) = copy_runs(&source, &target, &short, Some(3 << 20));
        assert!(matches!(copied[0], Ok(false)), "{copied:?}");
        assert!(matches!(copied[1], Ok(true)), "{copied:?}");
        assert_eq!(whole, None);

        // Without a length to hash, nothing is hashed.
        let target = open_target("unhashed");
        let (copied, whole) = copy_runs(&source, &target, &runs, None);
        assert!(copied.iter().all(|c| matches!(c, Ok(true))), "{copied:?}");
        assert_eq!(whole, None);
        assert_eq!(
            std::fs::read(dir.path().join("unhashed")).unwrap(),
            expected
        );
    }

    #[test]
    fn chunks_arriving_out_of_order_or_twice_in_a_file_still_make_the_right_file() {
        let block = noise(5, 40_000);
        let other = noise(6, 50_000);
        let data = [&block[..], &other[..], &block[..], &other[..30_000]].concat();
        let cut = |bytes: &[u8]| ChunkRef {
            hash: *blake3::hash(bytes).as_bytes(),
            len: bytes.len() as u32,
        };
        let chunks = vec![cut(&block), cut(&other), cut(&block), cut(&other[..30_000])];
        let entry = entry_with("mail/a.eml", &data, chunks);
        let mut slave = slave_with(&[]);
        let (mut pending, need) = announce(&mut slave.applier, &entry);
        assert_eq!(need, vec![0, 1, 3], "a repeated chunk is asked for once");
        for i in [3, 1, 0] {
            let bytes = chunk_bytes(&entry, &data, i);
            slave.applier.write_chunk(&mut pending, i, bytes).unwrap();
        }
        assert!(matches!(
            slave.applier.complete(&mut pending),
            Ok(Completion::Installed)
        ));
        slave.applier.install_staged().unwrap();
        assert!(std::fs::read(slave.root.join("mail/a.eml")).unwrap() == data);
    }

    #[test]
    fn completed_files_are_in_place_by_the_checkpoint_and_in_order_for_one_path() {
        let mut slave = slave_with(&[("a.txt", b"old")]);
        for content in [&b"first"[..], &b"second"[..]] {
            let entry = entry_for("a.txt", content);
            let (mut pending, need) = announce(&mut slave.applier, &entry);
            for i in need {
                let bytes = chunk_bytes(&entry, content, i);
                slave.applier.write_chunk(&mut pending, i, bytes).unwrap();
            }
            assert!(matches!(
                slave.applier.complete(&mut pending),
                Ok(Completion::Installed)
            ));
        }
        let b = entry_for("b.txt", b"b");
        let (mut pending, need) = announce(&mut slave.applier, &b);
        slave
            .applier
            .write_chunk(&mut pending, need[0], b"b")
            .unwrap();
        slave.applier.complete(&mut pending).unwrap();
        assert!(
            !slave.root.join("b.txt").exists(),
            "staged, not yet durable nor in place"
        );
        ReceiverStore::checkpoint(&mut slave.applier, false).unwrap();
        assert_eq!(std::fs::read(slave.root.join("a.txt")).unwrap(), b"second");
        assert_eq!(std::fs::read(slave.root.join("b.txt")).unwrap(), b"b");
        assert_eq!(files_under(&slave.root.join(STAGING_REL)).len(), 0);
        // Both replaced versions are archived.
        let mut archived = files_under(&slave.archive);
        archived.sort();
        assert_eq!(archived, [b"first".to_vec(), b"old".to_vec()]);
    }

    #[test]
    fn the_index_is_saved_by_the_checkpoint_that_ends_a_burst() {
        let mut slave = slave_with(&[]);
        let entry = entry_for("a.txt", b"applied");
        let (mut pending, need) = announce(&mut slave.applier, &entry);
        deliver(&mut slave.applier, &mut pending, need, b"applied").unwrap();
        // What a reader in another process sees: committed rows only.
        let saved = |root: &Path| -> Option<Vec<u8>> {
            let db = root.join(STATE_DIR_NAME).join("receiver-index.db");
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
            let conn = rusqlite::Connection::open_with_flags(db, flags).unwrap();
            let sql = "SELECT file_hash FROM entries WHERE path = 'a.txt'";
            let mut rows = conn.prepare(sql).unwrap();
            let mut rows = rows.query([]).unwrap();
            rows.next().unwrap().map(|row| row.get(0).unwrap())
        };
        assert_eq!(saved(&slave.root), None, "not saved before a checkpoint");
        ReceiverStore::checkpoint(&mut slave.applier, false).unwrap();
        let indexed = saved(&slave.root).expect("saved once nothing more is queued");
        assert_eq!(indexed, entry.file_hash);
    }

    #[test]
    fn a_file_whose_chunks_do_not_make_its_whole_file_hash_is_never_installed() {
        let mut slave = slave_with(&[("keep.txt", b"the old version")]);
        for data in [noise(7, 300_000), b"one small chunk".to_vec()] {
            let mut entry = entry_for("keep.txt", &data);
            entry.file_hash = *blake3::hash(b"something else").as_bytes();
            let (mut pending, need) = announce(&mut slave.applier, &entry);
            let outcome = deliver(&mut slave.applier, &mut pending, need, &data);
            assert!(
                matches!(outcome, Err(SyncError::Protocol(_))),
                "{outcome:?}"
            );
            slave.applier.discard(*pending);
            assert_eq!(
                std::fs::read(slave.root.join("keep.txt")).unwrap(),
                b"the old version"
            );
            assert!(files_under(&slave.root.join(STAGING_REL)).is_empty());
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_link_planted_where_a_directory_belongs_is_replaced_never_written_through() {
        let mut slave = slave_with(&[("keep.txt", b"k")]);
        // Behind swrepl's back, `mail` becomes a link into swrepl's own state directory.
        std::os::unix::fs::symlink(".swrepl", slave.root.join("mail")).unwrap();
        let data = b"an attachment";
        let entry = entry_for("mail/note.eml", data);
        let (mut pending, need) = announce(&mut slave.applier, &entry);
        deliver(&mut slave.applier, &mut pending, need, data).expect("install failed");

        assert!(
            !slave.root.join(".swrepl/note.eml").exists(),
            "written through the link"
        );
        let mail = std::fs::symlink_metadata(slave.root.join("mail")).unwrap();
        assert!(mail.is_dir(), "the link is replaced by a real directory");
        assert_eq!(
            std::fs::read(slave.root.join("mail/note.eml")).unwrap(),
            data
        );
        let archived = std::fs::read_dir(&slave.archive)
            .unwrap()
            .flat_map(|generation| std::fs::read_dir(generation.unwrap().path()).unwrap())
            .any(|e| e.unwrap().path().ends_with("mail"));
        assert!(archived, "the planted link is kept in the archive");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn directories_touched_by_installs_are_opened_in_a_way_that_can_be_fsynced() {
        let mut slave = slave_with(&[("a/b/old.txt", b"old")]);
        for dir in [".", "a", "a/b"] {
            let handle = slave
                .applier
                .open_dir_to_sync(dir)
                .unwrap_or_else(|| panic!("{dir:?} not opened"));
            // cap-std's O_PATH handles made this fail with EBADF, unnoticed.
            handle.sync_all().unwrap_or_else(|e| panic!("{dir:?}: {e}"));
        }
        assert!(slave.applier.open_dir_to_sync("a/b/old.txt").is_none());
        assert!(slave.applier.open_dir_to_sync("missing").is_none());
        let data = b"new";
        let entry = entry_for("a/b/new.txt", data);
        let (mut pending, need) = announce(&mut slave.applier, &entry);
        deliver(&mut slave.applier, &mut pending, need, data).expect("install failed");
        assert!(slave.applier.unsynced_dirs.contains("a/b"));
        slave.applier.sync_dirs();
        assert!(slave.applier.unsynced_dirs.is_empty());
    }

    #[test]
    fn an_empty_file_and_a_copy_of_a_local_file_are_installed_without_data() {
        let content = noise(8, 200_000);
        let mut slave = slave_with(&[("a/original.bin", &content)]);
        for (rel, data) in [("a/empty", Vec::new()), ("b/copy.bin", content.clone())] {
            let entry = entry_for(rel, &data);
            let (mut pending, need) = announce(&mut slave.applier, &entry);
            assert!(need.is_empty(), "{rel}: nothing to ask for, not {need:?}");
            assert!(matches!(
                slave.applier.complete(&mut pending),
                Ok(Completion::Installed)
            ));
            slave.applier.install_staged().unwrap();
            assert!(std::fs::read(slave.root.join(rel)).unwrap() == data);
        }
    }
}

/// The attributes the runbook's `xcopy /h /r /k` carries (read-only, hidden, system, archive),
/// applied to files the receiver installs on Windows.
#[cfg(windows)]
mod windows_attributes {
    use std::io;
    use std::os::windows::ffi::OsStrExt;
    use std::path::Path;

    use windows_sys::Win32::Storage::FileSystem::{
        GetFileAttributesW, SetFileAttributesW, FILE_ATTRIBUTE_NORMAL, FILE_ATTRIBUTE_READONLY,
        INVALID_FILE_ATTRIBUTES,
    };

    /// READONLY | HIDDEN | SYSTEM | ARCHIVE: the bits `FileEntry.attributes.windows` carries.
    const CARRIED: u32 = 0x1 | 0x2 | 0x4 | 0x20;

    fn wide(path: &Path) -> Vec<u16> {
        path.as_os_str().encode_wide().chain(Some(0)).collect()
    }

    /// A read-only target cannot be replaced by a rename; the new version brings its own bits.
    pub fn clear_readonly(path: &Path) {
        let name = wide(path);
        // SAFETY: `name` is a NUL-terminated UTF-16 string that outlives both calls.
        unsafe {
            let current = GetFileAttributesW(name.as_ptr());
            if current != INVALID_FILE_ATTRIBUTES && current & FILE_ATTRIBUTE_READONLY != 0 {
                SetFileAttributesW(name.as_ptr(), current & !FILE_ATTRIBUTE_READONLY);
            }
        }
    }

    /// Sets the carried bits as the sender saw them; 0 means a sender that does not know them
    /// (a Unix Master), and the file keeps what it has.
    pub fn apply(path: &Path, carried: u32) -> io::Result<()> {
        if carried == 0 {
            return Ok(());
        }
        let bits = carried & CARRIED;
        let value = if bits == 0 {
            FILE_ATTRIBUTE_NORMAL
        } else {
            bits
        };
        let name = wide(path);
        // SAFETY: `name` is a NUL-terminated UTF-16 string that outlives the call.
        if unsafe { SetFileAttributesW(name.as_ptr(), value) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
