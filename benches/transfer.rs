//! End-to-end loopback transfer over mutual TLS, in-process: `swrepl_sync::run_receiver` on a
//! fresh, empty Slave root and `swrepl_sync::run_sender` with `once: true`, timed from the start
//! of the sender until every change is applied and durable on the receiver.
//!
//! Two trees: (a) 2 000 small files of 4–64 KiB (many-file overhead: per-file round trips,
//! fsync, rename) and (b) one 256 MiB file (streaming throughput). Each is measured
//! - `cold`: the sender's index is fresh too, so its scan reads and hashes everything (a first
//!   sync of a new pair);
//! - `warm`: the sender's index already knows the tree (a resync to an empty Slave), so only the
//!   transfer and the receiver's work are timed.
//!
//! Trees live in tmpfs (`/dev/shm`) when there is one (`SWREPL_BENCH_DIR` picks another place,
//! e.g. a disk), so what is measured is swrepl, not the shared disk. Receiver start-up and the
//! removal of the Slave tree happen outside the timed part.
//!
//! Run: `cargo bench --bench transfer` (about 2–4 minutes).

mod common;

use common::{noise, scratch_dir};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use swrepl_net::{Fingerprint, Identity};
use swrepl_sync::{ReceiverEvent, ReceiverOptions, SenderOptions};
use swrepl_tree::Excludes;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};

const SMALL_FILES: usize = 2_000;
const LARGE_FILE_BYTES: usize = 256 * 1024 * 1024;

/// 2 000 files of 4–64 KiB in 20 folders; returns the bytes written.
fn build_small_files(root: &Path) -> u64 {
    let mut total = 0;
    for i in 0..SMALL_FILES {
        let dir = root.join(format!("Supportworks Server/data/mime/2026/{:02}", i % 20));
        std::fs::create_dir_all(&dir).expect("cannot create a bench folder");
        let len = 4096 + (i * 7919) % (60 * 1024 + 1);
        std::fs::write(dir.join(format!("call-{i:05}.eml")), noise(i as u64, len))
            .expect("cannot write a bench file");
        total += len as u64;
    }
    total
}

fn build_large_file(root: &Path) -> u64 {
    let dir = root.join("Supportworks Server/data/index");
    std::fs::create_dir_all(&dir).expect("cannot create a bench folder");
    std::fs::write(dir.join("calls.idx"), noise(7, LARGE_FILE_BYTES))
        .expect("cannot write the large bench file");
    LARGE_FILE_BYTES as u64
}

/// Both identities, made once: key generation is not what is measured.
struct Peers {
    master: Identity,
    master_fp: Fingerprint,
    slave: Identity,
    slave_fp: Fingerprint,
}

fn peers(base: &Path) -> Peers {
    let master_fp = swrepl_net::init_identity(&base.join("id-master"), false)
        .expect("cannot create the Master identity");
    let slave_fp = swrepl_net::init_identity(&base.join("id-slave"), false)
        .expect("cannot create the Slave identity");
    Peers {
        master: Identity::load(&base.join("id-master")).expect("cannot load the Master identity"),
        master_fp,
        slave: Identity::load(&base.join("id-slave")).expect("cannot load the Slave identity"),
        slave_fp,
    }
}

/// One tree to send, and where the sender keeps its index between warm iterations.
struct Case {
    base: PathBuf,
    master: PathBuf,
    warm_state: PathBuf,
}

/// Starts a receiver on a fresh Slave root, runs one `once` sender pass against it and returns
/// the time the sender took. Receiver start-up and clean-up are not timed.
async fn one_transfer(case: &Case, peers: &Peers, state_dir: &Path, iteration: u64) -> Duration {
    let slave = case.base.join(format!("slave-{iteration}"));
    std::fs::create_dir_all(&slave).expect("cannot create the Slave root");
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let receiver = tokio::spawn(swrepl_sync::run_receiver(
        ReceiverOptions {
            root: slave.clone(),
            listen: "127.0.0.1:0".into(),
            identity: peers.slave.clone(),
            trusted: vec![peers.master_fp],
            archive: None,
            archive_retention: None,
            excludes: Excludes::new(&[], true).expect("default excludes are valid"),
            registry: None,
        },
        Some(events_tx),
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        },
    ));
    let addr = loop {
        match events_rx.recv().await {
            Some(ReceiverEvent::Listening(addr)) => break addr,
            Some(_) => continue,
            None => panic!(
                "the receiver stopped before listening: {:?}",
                receiver.await
            ),
        }
    };
    // Drain events so the channel does not grow without bound during the pass.
    let drain = tokio::spawn(async move { while events_rx.recv().await.is_some() {} });

    let options = SenderOptions {
        root: case.master.clone(),
        state_dir: Some(state_dir.to_path_buf()),
        connect: addr.to_string(),
        identity: peers.master.clone(),
        trusted: vec![peers.slave_fp],
        excludes: Excludes::new(&[], true).expect("default excludes are valid"),
        once: true,
        connect_timeout: Duration::from_secs(30),
        allow_mass_delete: false,
        mass_delete_permille: 200,
        rescan_interval: Duration::from_secs(3600),
        full_pass_interval: Duration::from_secs(3600),
        service_probe: None,
        registry: None,
    };
    let started = Instant::now();
    let summary = swrepl_sync::run_sender(options, std::future::pending())
        .await
        .expect("the sender failed");
    let elapsed = started.elapsed();
    assert!(summary.is_complete(), "incomplete transfer: {summary}");

    let _ = stop_tx.send(true);
    let _ = receiver.await;
    let _ = drain.await;
    std::fs::remove_dir_all(&slave).expect("cannot remove the Slave root");
    elapsed
}

fn bench_case(c: &mut Criterion, rt: &Runtime, peers: &Peers, name: &str, build: fn(&Path) -> u64) {
    let scratch = scratch_dir("transfer");
    let case = Case {
        base: scratch.path().to_path_buf(),
        master: scratch.path().join("master"),
        warm_state: scratch.path().join("state-warm"),
    };
    let bytes = build(&case.master);

    let mut group = c.benchmark_group("transfer");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Bytes(bytes));
    let mut iteration = 0u64;
    group.bench_function(BenchmarkId::new(name, "cold"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                iteration += 1;
                let state = case.base.join(format!("state-cold-{iteration}"));
                total += rt.block_on(one_transfer(&case, peers, &state, iteration));
                std::fs::remove_dir_all(&state).expect("cannot remove the sender state");
            }
            total
        })
    });
    group.bench_function(BenchmarkId::new(name, "warm"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                iteration += 1;
                total += rt.block_on(one_transfer(&case, peers, &case.warm_state, iteration));
            }
            total
        })
    });
    group.finish();
}

fn transfer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    let ids = tempfile::tempdir().expect("cannot create a temporary directory");
    let peers = peers(ids.path());
    bench_case(c, &rt, &peers, "2000 small files", build_small_files);
    bench_case(c, &rt, &peers, "one 256 MiB file", build_large_file);
}

criterion_group!(benches, transfer);
criterion_main!(benches);
