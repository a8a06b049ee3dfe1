//! Scoped-thread pools for hashing: many files at once ([`parallel_map_costliest_first`]), and
//! the segments of one large file at once ([`for_each_segment`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex, MutexGuard};

/// Upper bound on hashing threads: beyond this the disk, not the CPU, is the limit.
const MAX_WORKERS: usize = 8;

/// `items.iter().map(work)`, spread over up to one thread per core; results keep `items`' order.
/// Items are handed out one at a time, costliest (e.g. the largest files) first: handed out in
/// list order, a large file that comes late would run alone on one core at the end while the
/// other cores have nothing left to do. Items of equal cost go in list order.
pub(crate) fn parallel_map_costliest_first<T, R, F>(
    items: &[T],
    cost: impl Fn(&T) -> u64,
    work: F,
) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(cost(&items[i])));
    map_in_order(items, &order, work)
}

/// Runs `work` on every item, handing them to the threads in `order` (a permutation of
/// `0..items.len()`); results keep `items`' order.
fn map_in_order<T, R, F>(items: &[T], order: &[usize], work: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    debug_assert_eq!(order.len(), items.len());
    let workers = cores().min(MAX_WORKERS).min(items.len());
    if workers <= 1 {
        return items.iter().map(work).collect();
    }
    let next = AtomicUsize::new(0);
    let work = &work;
    let next = &next;
    let per_worker: Vec<Vec<(usize, R)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(move || {
                    let mut done = Vec::new();
                    while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                        done.push((i, work(&items[i])));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut slots: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for (i, result) in per_worker.into_iter().flatten() {
        slots[i] = Some(result);
    }
    // `order` is a permutation: every index was claimed by exactly one worker, which pushed its
    // result.
    slots.into_iter().flatten().collect()
}

/// Threads that work on the segments of one file: one file is read from one device, and the
/// calling pool may already run other files on the other cores.
const MAX_SEGMENT_WORKERS: usize = 4;

/// How many threads [`for_each_segment`] would use: 1 means "do it sequentially" (always so
/// where files have no positional reads, whose emulation shares the file's cursor).
pub(crate) fn segment_workers() -> usize {
    if cfg!(any(unix, windows)) {
        cores().min(MAX_SEGMENT_WORKERS)
    } else {
        1
    }
}

/// The cores this process may use, asked once: `available_parallelism` reads cgroup files on
/// Linux, far too slow to ask for every file.
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs `analyse(k, buffer)` for every segment `k` in `0..segments` on `workers` threads and
/// hands the results to `consume` on the calling thread, strictly in segment order (stitching
/// needs the previous segment's outcome). `consume` returns the segment's buffer, which is
/// recycled for a later segment (no allocation or zeroing per segment).
///
/// Memory is bounded: a worker claims segment `k` only once fewer than `workers + 1` segments
/// are analysed or being analysed ahead of `consume`, so at most that many buffers exist.
/// The first error (from either side) stops the work; the workers are joined before returning.
pub(crate) fn for_each_segment<T: Send>(
    segments: usize,
    workers: usize,
    analyse: impl Fn(usize, Vec<u8>) -> std::io::Result<T> + Sync,
    mut consume: impl FnMut(usize, T) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<()> {
    let ahead = workers.max(1) + 1;
    let shared = SegmentQueue {
        next: AtomicUsize::new(0),
        consumed: Mutex::new(0),
        progressed: Condvar::new(),
        stop: AtomicBool::new(false),
        buffers: Mutex::new(Vec::new()),
    };
    std::thread::scope(|scope| {
        let (results, received) = mpsc::channel::<(usize, std::io::Result<T>)>();
        for _ in 0..workers.max(1) {
            let results = results.clone();
            let (shared, analyse) = (&shared, &analyse);
            scope.spawn(move || {
                while let Some(k) = shared.claim(segments, ahead) {
                    let buffer = lock(&shared.buffers).pop().unwrap_or_default();
                    let result = analyse(k, buffer);
                    if results.send((k, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(results);
        let outcome = consume_in_order(segments, &received, &shared, &mut consume);
        // Wakes workers waiting for room so that they see `stop` and end: the scope joins them.
        shared.stop.store(true, Ordering::SeqCst);
        shared.progressed.notify_all();
        outcome
    })
}

/// What the workers of [`for_each_segment`] and its consumer share.
struct SegmentQueue {
    /// The next segment no worker has claimed.
    next: AtomicUsize,
    /// Segments consumed so far (they are consumed in order).
    consumed: Mutex<usize>,
    progressed: Condvar,
    /// Set when the consumer is done (finished or failed): workers claim nothing more.
    stop: AtomicBool,
    /// Buffers of consumed segments, for reuse.
    buffers: Mutex<Vec<Vec<u8>>>,
}

impl SegmentQueue {
    /// The next segment to analyse, once it is fewer than `ahead` segments ahead of the
    /// consumer; `None` when all are claimed or the consumer stopped.
    fn claim(&self, segments: usize, ahead: usize) -> Option<usize> {
        let k = self.next.fetch_add(1, Ordering::SeqCst);
        if k >= segments {
            return None;
        }
        let mut consumed = lock(&self.consumed);
        while k >= *consumed + ahead && !self.stop.load(Ordering::SeqCst) {
            consumed = self
                .progressed
                .wait(consumed)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        (!self.stop.load(Ordering::SeqCst)).then_some(k)
    }
}

/// The consumer side of [`for_each_segment`]: waits for each segment in turn.
fn consume_in_order<T>(
    segments: usize,
    received: &mpsc::Receiver<(usize, std::io::Result<T>)>,
    shared: &SegmentQueue,
    consume: &mut impl FnMut(usize, T) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<()> {
    let mut early: BTreeMap<usize, std::io::Result<T>> = BTreeMap::new();
    for k in 0..segments {
        let result = loop {
            if let Some(result) = early.remove(&k) {
                break result;
            }
            match received.recv() {
                Ok((i, result)) => {
                    early.insert(i, result);
                }
                // Every worker ended without delivering segment k: only a panic does that, and
                // the scope re-raises it.
                Err(_) => {
                    return Err(std::io::Error::other(format!(
                        "internal error: segment {k} was never analysed"
                    )))
                }
            }
        };
        let buffer = consume(k, result?)?;
        lock(&shared.buffers).push(buffer);
        *lock(&shared.consumed) = k + 1;
        shared.progressed.notify_all();
    }
    Ok(())
}

/// Locks `mutex`; a panic elsewhere (re-raised by the scope anyway) does not make it unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_consumed_in_order_with_bounded_buffers() {
        for workers in [1, 2, 3] {
            let allocated = AtomicUsize::new(0);
            let mut seen = Vec::new();
            for_each_segment(
                50,
                workers,
                |k, mut buffer| {
                    if buffer.is_empty() {
                        allocated.fetch_add(1, Ordering::SeqCst);
                        buffer = vec![0; 16];
                    }
                    // Later segments finish first now and then: order must still hold.
                    if k % 7 == 0 {
                        std::thread::yield_now();
                    }
                    Ok((k * 3, buffer))
                },
                |k, (value, buffer)| {
                    assert_eq!(value, k * 3);
                    seen.push(k);
                    Ok(buffer)
                },
            )
            .unwrap();
            assert_eq!(seen, (0..50).collect::<Vec<_>>());
            let allocated = allocated.load(Ordering::SeqCst);
            assert!(
                allocated <= workers + 2,
                "{allocated} buffers for {workers} workers"
            );
        }
    }

    #[test]
    fn the_first_error_stops_the_work() {
        for fail_in_analysis in [true, false] {
            let analysed = AtomicUsize::new(0);
            let err = for_each_segment(
                10_000,
                2,
                |k, buffer| {
                    analysed.fetch_add(1, Ordering::SeqCst);
                    if fail_in_analysis && k == 5 {
                        return Err(std::io::Error::other("analysis failed"));
                    }
                    Ok(buffer)
                },
                |k, buffer| {
                    if !fail_in_analysis && k == 5 {
                        return Err(std::io::Error::other("consumer failed"));
                    }
                    Ok(buffer)
                },
            )
            .unwrap_err();
            assert!(err.to_string().contains("failed"), "{err}");
            assert!(analysed.load(Ordering::SeqCst) < 100);
        }
    }

    #[test]
    fn no_segments_is_fine() {
        for_each_segment(0, 2, |_, b| Ok(b), |_, b: Vec<u8>| Ok(b)).unwrap();
    }

    #[test]
    fn keeps_order() {
        let items: Vec<u64> = (0..1000).collect();
        let out = super::parallel_map_costliest_first(&items, |_| 1, |x| x * 2);
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
    }

    #[test]
    fn costliest_first_keeps_order() {
        let items: Vec<u64> = (0..1000).map(|i| (i * 7919) % 1000).collect();
        let out = super::parallel_map_costliest_first(&items, |&x| x, |x| x * 2);
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
    }
}
