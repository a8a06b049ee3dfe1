//! A small scoped-thread pool for hashing many files at once.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Upper bound on hashing threads: beyond this the disk, not the CPU, is the limit.
const MAX_WORKERS: usize = 8;

/// `items.iter().map(work)`, spread over up to one thread per core; results keep `items`' order.
/// Items are handed out one at a time, so one large file does not hold up the others.
pub(crate) fn parallel_map<T, R, F>(items: &[T], work: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let order: Vec<usize> = (0..items.len()).collect();
    map_in_order(items, &order, work)
}

/// Like [`parallel_map`], but hands out the costliest items (e.g. the largest files) first:
/// handed out in list order, a large file that comes late runs alone on one core at the end
/// while the other cores have nothing left to do. Results still keep `items`' order, and
/// items of equal cost go in list order.
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
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = cores.min(MAX_WORKERS).min(items.len());
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

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order() {
        let items: Vec<u64> = (0..1000).collect();
        let out = super::parallel_map(&items, |x| x * 2);
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
    }

    #[test]
    fn costliest_first_keeps_order() {
        let items: Vec<u64> = (0..1000).map(|i| (i * 7919) % 1000).collect();
        let out = super::parallel_map_costliest_first(&items, |&x| x, |x| x * 2);
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
    }
}
