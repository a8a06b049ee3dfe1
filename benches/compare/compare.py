#!/usr/bin/env python3
"""swrepl against rsync (daemon and over ssh) and cp -a, on the same tree, in one run.

Usage (normally through run.sh, which builds swrepl first):

    python3 benches/compare/compare.py --swrepl target/release/swrepl [options]

What it does, in order, and everything on 127.0.0.1 only:

1. Installs what is missing (rsync, openssh-server, GNU time) with apt-get and prints how long
   that took.
2. Generates a deterministic Supportworks-like tree in tmpfs (default /dev/shm; ~1 GiB in ~20 k
   files): MIME attachments (base64 text, mostly 4-64 KiB, a tail up to 2 MiB), growing logs,
   config files, portal pages, a few large binaries, some duplicate attachments, and a
   `Core Services/SwSqlServer/data` folder that must not be sent (every tool excludes it; the run
   checks that swrepl did not send it).
3. Starts its own rsync daemon (own config in a temp dir, free port), its own sshd (own config,
   host key and client key, free port, key auth only) and its own `swrepl receive` (own identities).
4. Measures, each tool into its own destination:
   - initial sync: `swrepl send --once` vs `rsync -a` to the daemon vs `rsync -a` over ssh vs
     `cp -a` (local reference);
   - resync after 1 % of the files changed (new, edited, appended, deleted files and one renamed
     folder; other files and another folder in each round); every `swrepl send --once` is a new
     process, so only its index saves work;
   - no-change resync;
   - a large file (default 1 GiB) added, then a 4 KiB overwrite in its middle, then a 100-byte
     insert in its middle: time and bytes on the wire (swrepl's summary line; rsync --stats
     "Total bytes sent"). After each swrepl run it waits until the receiver is idle (it prepares
     the next session's tree summary just after a session), so the peers measured next have the
     CPU to themselves;
   - live latency: 200 small writes with `swrepl send` watching; time from the write to the file
     holding the right content on the Slave, p50/p99;
   - `swrepl verify MASTER SLAVE` vs `rsync -rcn` (full re-hash of both trees);
   - peak RSS of the swrepl sender and receiver (GNU time -v);
   - CPU seconds of both ends of every transfer: the client command (GNU time) and the receiving
     side for that run (swrepl's receiver from /proc; the rsync daemon's and sshd's connection
     processes, counted when the daemon reaps them).
   With --disk DIR it repeats the initial and no-change syncs with the trees under DIR.
   Then an initial and a no-change sync of --small-files N small files (default 1 M, folders of
   1 000 files of 0-255 bytes) against the rsync daemon, with the swrepl sender's peak RSS.
5. Prints a Markdown table (and writes it to --out) with swrepl/peer time ratios (below 1 means
   swrepl is faster) and the date and machine.

Everything it starts is stopped and every tree removed on exit (also on Ctrl-C), unless --keep.
Options: --files N, --size-mib N, --big-mib N, --latency-writes N, --base DIR, --disk DIR,
--small-files N, --seed N, --rounds N (of the 1 %, no-change and big-file edit phases, each with a
fresh change; the median round is shown), --out FILE, --keep, --no-install. Env: SWREPL (binary path) when --swrepl is
not given; COMPARE_SWREPL_LOG (swrepl's log level, default warn: with --keep, debug logs of every run
stay in the work directory's svc-swrepl/).
Before each timed run that writes a new copy of data, it writes and removes about as much again
in --base, untimed: on a VM, memory the guest has not used lately is several times slower to get
(measured here: 2.6-2.8 s against 0.35 s to keep 1 GiB more in tmpfs), and that cost fell on
whichever tool happened to grow first after a pause.
Note: rsync does not fsync; swrepl fsyncs every file before renaming it in (on tmpfs fsync is
nearly free, on disk it is not: compare the disk run with that in mind).
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import hashlib
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

EXCLUDED = "Core Services/SwSqlServer/data"
B64 = bytes((b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/" * 4)[i] for i in range(256))
POOL_BYTES = 16 << 20
PIECE = 8192
MARK = 12

STARTED: list[subprocess.Popen] = []
CLEANUP_DIRS: list[Path] = []
KEEP = False


# ---------------------------------------------------------------------------------------------
# process and clean-up helpers


# swrepl's log level for its runs (`COMPARE_SWREPL_LOG=debug` and `--keep` leave timelines in the
# work directory's svc-swrepl/: receiver.log and send-<phase>.log).
SWREPL_LOG = os.environ.get("COMPARE_SWREPL_LOG", "warn")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start(cmd: list[str], **kw) -> subprocess.Popen:
    """Starts a background process in its own process group, remembered for clean-up."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    STARTED.append(proc)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM to the process group we created for `proc`, SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def stop_timed(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stops a command run under GNU time by signalling the command itself (the child of `time`),
    so that `time` outlives it and writes its report; falls back to `stop`."""
    if proc.poll() is None:
        for child in child_pids(proc.pid):
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    stop(proc)


def cleanup() -> None:
    for proc in reversed(STARTED):
        try:
            stop(proc, 10)
        except Exception as e:  # noqa: BLE001 - clean-up must go on
            log(f"could not stop pid {proc.pid}: {e}")
    if not KEEP:
        for d in CLEANUP_DIRS:
            shutil.rmtree(d, ignore_errors=True)
    elif CLEANUP_DIRS:
        log("kept: " + ", ".join(str(d) for d in CLEANUP_DIRS))


def on_signal(signum, _frame):
    log(f"signal {signum}: cleaning up")
    sys.exit(130)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


def run(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and res.returncode != 0:
        raise SystemExit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stdout}\n{res.stderr}")
    return res


def timed(cmd: list[str], ok_codes=(0,)) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if res.returncode not in ok_codes:
        raise SystemExit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return elapsed, res


def timed_cpu(cmd: list[str]) -> tuple[float, float | None, subprocess.CompletedProcess]:
    """Like `timed`, also returning the command's user + system CPU seconds (GNU time)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        secs, res = timed(["/usr/bin/time", "-f", "%U %S", "-o", tf.name, *cmd])
        try:
            user, sys_ = map(float, Path(tf.name).read_text().split()[-2:])
            return secs, user + sys_, res
        except (OSError, ValueError):
            return secs, None, res


WARMED = {"bytes": 0, "seconds": 0.0}


def warm_memory(base: Path, nbytes: int) -> None:
    """Writes and removes `nbytes` in `base` just before a timed run that will take about that much
    new memory. On a VM, memory the guest has not used lately is slow to get back (host faults):
    here, keeping 1 GiB more in tmpfs took 2.6-2.8 s, or 0.35 s right after 2 GiB had been written
    and freed. Without this, whichever tool grew first after a pause paid for it: swrepl (whose
    archive keeps the replaced 1 GiB version) in its first rounds of the big-file edits, 3.0-3.7 s
    against 0.7-0.9 s. It is the same for every tool, untimed; `nbytes` 0 does nothing."""
    nbytes = min(nbytes, int(shutil.disk_usage(base).free * 0.8))
    if nbytes <= 0:
        return
    block = b"\0" * (64 << 20)
    path = base / "swrepl-compare-warm"
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(-(-nbytes // len(block))):
            os.write(fd, block)
    finally:
        os.close(fd)
        os.unlink(path)
    WARMED["bytes"] += nbytes
    WARMED["seconds"] += time.perf_counter() - t


def drop_caches_hint() -> None:
    """Makes dirty pages of the previous step durable so a disk run does not bill them to the next."""
    os.sync()


# ---------------------------------------------------------------------------------------------
# installation


def ensure_tools(install: bool) -> str:
    need = {"rsync": "rsync", "/usr/sbin/sshd": "openssh-server", "ssh": "openssh-client",
            "/usr/bin/time": "time", "ssh-keygen": "openssh-client"}
    missing = sorted({pkg for tool, pkg in need.items() if not shutil.which(tool) and not Path(tool).exists()})
    if not missing:
        return "nothing to install"
    if not install:
        raise SystemExit(f"missing packages {missing}; install them or drop --no-install")
    log(f"installing {missing}")
    t = time.perf_counter()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    res = subprocess.run(["apt-get", "install", "-y", "-q", *missing], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        run(["apt-get", "update", "-q"], env=env)
        run(["apt-get", "install", "-y", "-q", *missing], env=env)
    return f"apt-get install {' '.join(missing)}: {time.perf_counter() - t:.1f} s"


# ---------------------------------------------------------------------------------------------
# the deterministic Supportworks-like tree


class Content:
    """Deterministic incompressible bytes: slices of one pseudo-random pool, with a unique mark
    every 8 KiB (half the smallest chunk) so no two files (and no two places of one file) share a chunk by accident."""

    def __init__(self, seed: int):
        self.pool = hashlib.shake_256(f"swrepl-compare-{seed}".encode()).digest(POOL_BYTES)
        self.serial = 0

    def make(self, n: int, rng: random.Random, text: bool = False) -> bytes:
        self.serial += 1
        out = []
        pos = rng.randrange(POOL_BYTES)
        piece_no = 0
        written = 0
        body = PIECE - MARK
        while written < n:
            out.append(struct.pack("<IQ", self.serial, piece_no))
            if pos + body > POOL_BYTES:
                pos = rng.randrange(POOL_BYTES - body)
            out.append(self.pool[pos : pos + body])
            pos += body
            piece_no += 1
            written += PIECE
        data = b"".join(out)[:n]
        return data.translate(B64) if text else data


@dataclass
class Tree:
    root: Path
    files: list[str] = field(default_factory=list)  # replicated files, relative
    attachments: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    day_dirs: list[str] = field(default_factory=list)
    bytes: int = 0
    excluded_bytes: int = 0


def write_file(root: Path, rel: str, data: bytes) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def eml(content: Content, rng: random.Random, n: int, call: int) -> bytes:
    head = (f"From: user{call % 977}@example.com\nTo: helpdesk@example.com\nSubject: call {call}\n"
            f"MIME-Version: 1.0\nContent-Type: application/octet-stream\n"
            f"Content-Transfer-Encoding: base64\n\n").encode()
    return head + content.make(max(0, n - len(head)), rng, text=True)


def log_lines(rng: random.Random, n: int, start: int = 0) -> bytes:
    lines = []
    size = 0
    i = start
    while size < n:
        line = f"2026-11-24 {i // 3600 % 24:02}:{i // 60 % 60:02}:{i % 60:02} [{rng.randrange(9999):04}] call {rng.randrange(10**6)} updated by analyst{rng.randrange(40)}\n"
        lines.append(line)
        size += len(line)
        i += 1
    return "".join(lines).encode()[:n]


def generate(root: Path, files: int, total: int, seed: int) -> Tree:
    """~`files` files of ~`total` bytes in all (the excluded SwSQL folder comes on top)."""
    rng = random.Random(seed)
    content = Content(seed)
    tree = Tree(root)
    sw = "Supportworks Server"

    def put(rel: str, data: bytes, kind: list[str] | None = None) -> None:
        write_file(root, rel, data)
        tree.files.append(rel)
        tree.bytes += len(data)
        if kind is not None:
            kind.append(rel)

    n_conf = max(5, files // 100)
    n_html = max(10, files // 10)
    n_logs = max(5, files // 200)
    n_big = 6
    n_dups = max(2, files // 50)
    n_att = max(10, files - n_conf - n_html - n_logs - n_big - n_dups)

    for i in range(n_conf):
        svc = ["Supportworks Server/conf", "Core Services/SwMailServer/conf", "Core Services/SwCalendarServer/conf",
               "Core Services/SwSqlServer/Bin", "Core Services/SwHttpServer/conf"][i % 5]
        ext = ["xml", "ini", "cfg", "xml", "conf"][i % 5]
        body = "".join(f"<setting name=\"opt{j}\" value=\"{rng.randrange(10**6)}\"/>\n" for j in range(rng.randrange(5, 150)))
        put(f"{svc}/settings-{i:04}.{ext}", body.encode(), tree.texts)
    for i in range(n_html):
        ext = ["php", "js", "css", "html", "xml"][i % 5]
        put(f"{sw}/html/_selfservice/module{i % 40:02}/page-{i:05}.{ext}",
            content.make(rng.randrange(1024, 30 * 1024), rng, text=True), tree.texts)
    # Large binaries: ~20 % of the budget.
    big_budget = total // 5
    for i in range(n_big):
        name = [f"{sw}/bin/swserver.dll", f"{sw}/bin/swreports.dll", f"{sw}/data/index/calls.idx",
                f"{sw}/data/index/kb.idx", f"{sw}/bin/swphp.dll", "Core Services/SwHttpServer/bin/httpd.exe"][i]
        put(name, content.make(big_budget // n_big, rng))
    # Logs: ~8 % of the budget.
    for i in range(n_logs):
        folder = f"{sw}/log" if i % 2 == 0 else f"Core Services/SwMailServer/log"
        put(f"{folder}/sw-{i:04}.log", log_lines(rng, (total * 8 // 100) // n_logs, i * 1000), tree.logs)
    # Attachments: the rest, lognormal sizes (median ~24 KiB) scaled to the remaining budget.
    remaining = max(0, total - tree.bytes - n_dups * 20 * 1024)
    raw = [min(2 << 20, max(1024, rng.lognormvariate(10.1, 1.0))) for _ in range(n_att)]
    scale = remaining / sum(raw)
    per_dir = 100
    for i, r in enumerate(raw):
        d = i // per_dir
        day_dir = f"{sw}/data/mime/{2020 + d // 360}/{d // 30 % 12 + 1:02}/{d % 30 + 1:02}"
        if i % per_dir == 0:
            tree.day_dirs.append(day_dir)
        size = max(512, min(2 << 20, int(r * scale)))
        put(f"{day_dir}/call-{i:06}.eml", eml(content, rng, size, i), tree.attachments)
    # Duplicates: the same attachment forwarded to other calls.
    for i in range(n_dups):
        src = tree.attachments[rng.randrange(len(tree.attachments))]
        put(f"{sw}/data/mime/forwarded/fwd-{i:05}.eml", (root / src).read_bytes())
    # The SwSQL data folder (MySQL replication carries it; swrepl and the peers must not send it).
    for i in range(12):
        data = content.make(max(4096, total // 20 // 12), rng)
        write_file(root, f"{EXCLUDED}/swdata/table{i:02}.{['MYD', 'MYI', 'frm'][i % 3]}", data)
        tree.excluded_bytes += len(data)
    (root / f"{sw}/temp").mkdir(parents=True, exist_ok=True)
    return tree


def bump_mtime(path: Path, old_ns: int | None) -> None:
    """Gives a changed file a modification time at least 2 s past the old one, so rsync's
    size+mtime quick check sees every change whatever the time-stamp granularity."""
    now = time.time_ns()
    new = max(now, (old_ns or 0) + 2_000_000_000)
    os.utime(path, ns=(new, new))


def change_one_percent(tree: Tree, seed: int, round_: int = 0) -> dict[str, int]:
    """Deterministic 1 % change: 1 % of the files new, rewritten, appended, edited or deleted, plus
    one renamed attachment folder. Each `round_` changes other files and another folder (`tree`
    forgets the folder and the files deleted or rewritten, so no later round picks them)."""
    rng = random.Random(seed + 1 + 1000 * round_)
    content = Content(seed + 1 + 1000 * round_)
    content.serial = 10_000_000 * (round_ + 1)
    n = max(10, len(tree.files) // 100)
    counts = dict(new=0, rewritten=0, appended=0, edited=0, deleted=0, renamed_dir_files=0)
    root = tree.root
    # One renamed day folder (its files count toward the 1 %).
    victim = tree.day_dirs.pop(len(tree.day_dirs) // 2)
    moved = [f for f in tree.attachments if f.startswith(victim + "/")]
    os.rename(root / victim, root / (victim + "-archived"))
    counts["renamed_dir_files"] = len(moved)
    moved_set = set(moved)
    budget = n  # file changes; the renamed folder comes on top
    pool = [f for f in tree.attachments if f not in moved_set]
    rng.shuffle(pool)
    for i in range(budget):
        kind = i % 10
        if kind < 3:  # new attachments
            write_file(root, f"Supportworks Server/data/mime/2026/11/24/new-{round_}-{i:05}.eml",
                       eml(content, rng, int(rng.lognormvariate(10.1, 1.0)), 900_000 + i))
            counts["new"] += 1
        elif kind < 5 and tree.logs:  # growing logs
            rel = tree.logs[i % len(tree.logs)]
            p = root / rel
            old = p.stat().st_mtime_ns
            with open(p, "ab") as f:
                f.write(log_lines(rng, rng.randrange(1024, 16 * 1024), 10**6 + i))
            bump_mtime(p, old)
            counts["appended"] += 1
        elif kind < 7 and tree.texts:  # edited config / portal file (a few bytes)
            rel = tree.texts[rng.randrange(len(tree.texts))]
            p = root / rel
            old = p.stat().st_mtime_ns
            with open(p, "r+b") as f:
                f.seek(p.stat().st_size // 2)
                f.write(b"EDITED-%05d" % i)
            bump_mtime(p, old)
            counts["edited"] += 1
        elif kind < 9:  # attachment rewritten whole
            rel = pool.pop()
            p = root / rel
            old = p.stat().st_mtime_ns
            p.write_bytes(eml(content, rng, p.stat().st_size, 800_000 + i))
            bump_mtime(p, old)
            counts["rewritten"] += 1
        else:
            (root / pool.pop()).unlink()
            counts["deleted"] += 1
    tree.attachments = pool  # what is left unmoved, undeleted and not rewritten
    return counts


def write_big_file(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed + 2)
    content = Content(seed + 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 64 << 20)
            f.write(content.make(n, rng))
            left -= n


def overwrite_middle(path: Path, n: int, round_: int = 0) -> None:
    """Overwrites n bytes near the middle; each round elsewhere (1 MiB further) with other bytes."""
    old = path.stat().st_mtime_ns
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2 + round_ * (1 << 20))
        f.write(hashlib.shake_256(b"overwrite %d" % round_).digest(n))
    bump_mtime(path, old)


def insert_middle(path: Path, n: int, round_: int = 0) -> None:
    """Inserts n bytes at the middle, in place (the tail is rewritten, as an editor would); each
    round 1 MiB further, with other bytes."""
    old = path.stat().st_mtime_ns
    mid = path.stat().st_size // 2 + round_ * (1 << 20)
    with open(path, "r+b") as f:
        f.seek(mid)
        tail = f.read()
        f.seek(mid)
        f.write(hashlib.shake_256(b"insert %d" % round_).digest(n))
        f.write(tail)
    del tail
    bump_mtime(path, old)


# ---------------------------------------------------------------------------------------------
# the peers


@dataclass
class Services:
    work: Path
    rsyncd_port: int = 0
    ssh_port: int = 0
    ssh_key: Path = Path()
    swrepl: str = ""
    recv_port: int = 0
    master_id: Path = Path()
    slave_fp: str = ""
    master_fp: str = ""
    receiver: subprocess.Popen | None = None
    receiver_time: Path = Path()
    rsyncd: subprocess.Popen | None = None
    sshd: subprocess.Popen | None = None

    def ssh_cmd(self) -> str:
        return (f"ssh -p {self.ssh_port} -i {self.ssh_key} -o BatchMode=yes -o StrictHostKeyChecking=no "
                f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")


def start_rsyncd(s: Services) -> None:
    d = s.work / "svc-rsyncd"
    d.mkdir()
    s.rsyncd_port = free_port()
    conf = d / "rsyncd.conf"
    conf.write_text(
        f"pid file = {d}/rsyncd.pid\nlog file = {d}/rsyncd.log\nuse chroot = no\n"
        f"uid = {os.getuid()}\ngid = {os.getgid()}\n"
        f"[fs]\npath = /\nread only = no\nlist = no\nhosts allow = 127.0.0.1\n")
    s.rsyncd = start(["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={s.rsyncd_port}",
                      "--address=127.0.0.1"], stdout=subprocess.DEVNULL, stderr=open(d / "stderr", "w"))
    wait_port(s.rsyncd_port, s.rsyncd, "rsync daemon")


def start_sshd(s: Services) -> None:
    d = s.work / "svc-sshd"
    d.mkdir()
    s.ssh_port = free_port()
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")])
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")])
    s.ssh_key = d / "client_key"
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    conf = d / "sshd_config"
    conf.write_text(
        f"Port {s.ssh_port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"Subsystem sftp internal-sftp\n")
    s.sshd = start(["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)], stdout=subprocess.DEVNULL,
                   stderr=open(d / "stderr", "w"))
    wait_port(s.ssh_port, s.sshd, "sshd")
    user = os.environ.get("USER") or "root"
    res = run(["ssh", *s.ssh_cmd().split()[1:], f"{user}@127.0.0.1", "true"], check=False)
    if res.returncode != 0:
        raise SystemExit(f"ssh to our sshd failed: {res.stderr}\n{(d / 'stderr').read_text()}")


def init_identity(s: Services, d: Path) -> str:
    out = run([s.swrepl, "init", "--dir", str(d)]).stdout
    return next(line.strip() for line in out.splitlines() if line.startswith("sha256:"))


def start_receiver(s: Services, slave: Path) -> None:
    d = s.work / "svc-swrepl"
    d.mkdir(exist_ok=True)
    s.master_id = d / "id-master"
    s.master_fp = init_identity(s, s.master_id)
    s.slave_fp = init_identity(s, d / "id-slave")
    s.recv_port = free_port()
    s.receiver_time = d / "receiver.time"
    s.receiver = start(["/usr/bin/time", "-v", "-o", str(s.receiver_time), s.swrepl, "receive",
                        "--root", str(slave), "--listen", f"127.0.0.1:{s.recv_port}",
                        "--identity", str(d / "id-slave"), "--trust", s.master_fp],
                       stdout=subprocess.DEVNULL, stderr=open(d / "receiver.log", "w"),
                       env=dict(os.environ, SWREPL_LOG=SWREPL_LOG))
    wait_port(s.recv_port, s.receiver, "swrepl receive")


def peak_rss_mib(time_file: Path) -> float:
    try:
        text = time_file.read_text()
    except OSError:
        return float("nan")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return int(m.group(1)) / 1024 if m else float("nan")


# ---------------------------------------------------------------------------------------------
# measurements


@dataclass
class Result:
    seconds: float
    wire: int | None = None  # bytes sent by the sending side
    rss_mib: float | None = None
    cpu: float | None = None  # user + system seconds of the client command (and its children)
    data: int | None = None  # swrepl only: chunk payload bytes sent
    server_cpu: float | None = None  # user + system seconds of the receiving side, for this run only


def swrepl_send_once(s: Services, master: Path, state: Path, tag: str) -> Result:
    tfile = s.work / "svc-swrepl" / f"send-{tag}.time"
    cmd = ["/usr/bin/time", "-v", "-o", str(tfile), s.swrepl, "send", "--once", "--root", str(master),
           "--connect", f"127.0.0.1:{s.recv_port}", "--identity", str(s.master_id), "--trust", s.slave_fp,
           "--state", str(state), "--timeout", "60"]
    env = dict(os.environ, SWREPL_LOG=SWREPL_LOG)
    receiver = receiver_pid(s)
    before = process_cpu(receiver) if receiver else None
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t
    # Read as the sender exits: it waits for the last acknowledgement, so the receiver's work for
    # the run is done, and the summary it prepares for the next session (later) is not counted.
    after = process_cpu(receiver) if receiver else None
    (s.work / "svc-swrepl" / f"send-{tag}.log").write_text(res.stderr)
    if res.returncode != 0:
        raise SystemExit(f"swrepl send failed ({res.returncode}):\n{res.stdout}\n{res.stderr[-3000:]}")
    m = re.search(r"(\d+) bytes on the wire", res.stdout)
    d = re.search(r"(\d+) bytes of file data sent", res.stdout)
    return Result(elapsed, wire=int(m.group(1)) if m else None, rss_mib=peak_rss_mib(tfile),
                  cpu=cpu_seconds(tfile), data=int(d.group(1)) if d else None,
                  server_cpu=cpu_delta(before, after))


def process_cpu(pid: int, reaped_children: bool = False) -> float | None:
    """User + system CPU seconds of a running process (all its threads), from /proc; with
    `reaped_children`, plus those of its descendants it has waited for (proc(5): cutime, cstime)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        if reaped_children:
            ticks += int(fields[13]) + int(fields[14])
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_delta(before: float | None, after: float | None) -> float | None:
    return after - before if before is not None and after is not None else None


def child_pids(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def receiver_pid(s: Services) -> int | None:
    """The swrepl receiver's pid (s.receiver is /usr/bin/time; swrepl is its child)."""
    if s.receiver is None:
        return None
    children = child_pids(s.receiver.pid)
    return children[0] if children else None


def daemon_run_cpu(daemon: subprocess.Popen | None, before: float | None) -> float | None:
    """CPU the daemon (rsyncd, sshd) spent on the connection that just ended: each connection is
    a child process (sshd's run the remote `rsync --server`), counted once the daemon has reaped
    it; waits for that (a few ms after the client exits), at most 5 s."""
    if daemon is None or before is None:
        return None
    deadline = time.monotonic() + 5
    while child_pids(daemon.pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    return cpu_delta(before, process_cpu(daemon.pid, reaped_children=True))


def settle_receiver(s: Services, quiet: float = 0.5, limit: float = 15.0) -> None:
    """Waits until the swrepl receiver has used no CPU for `quiet` seconds (at most `limit`): it
    prepares the next session's tree summary shortly after a session ends (200 ms), and the peer
    measured next should not share the CPU with that."""
    pid = receiver_pid(s)
    if pid is None:
        return
    deadline = time.monotonic() + limit
    last, still_since = process_cpu(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = process_cpu(pid)
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            return


def empty_archive(slave: Path) -> None:
    """Removes what the swrepl receiver archived (outside the timed runs): every replaced version
    of the 1 GiB file would otherwise stay in tmpfs, and the memory it takes slowed the runs after
    it, rsync's more than swrepl's (page allocation stalling in direct reclaim)."""
    archive = slave / ".swrepl" / "archive"
    if archive.is_dir():
        for generation in archive.iterdir():
            shutil.rmtree(generation, ignore_errors=True)


def cpu_seconds(time_file: Path) -> float | None:
    try:
        text = time_file.read_text()
    except OSError:
        return None
    found = re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text)
    return sum(map(float, found)) if len(found) == 2 else None


def rsync_stats_sent(out: str) -> int | None:
    m = re.search(r"Total bytes sent: ([\d,.]+)", out)
    return int(re.sub(r"[,.]", "", m.group(1))) if m else None


RSYNC_BASE = ["rsync", "-a", "--delete", "--stats", f"--exclude=/{EXCLUDED}"]


def rsync_daemon(s: Services, master: Path, dest: Path) -> Result:
    dest.mkdir(parents=True, exist_ok=True)
    url = f"rsync://127.0.0.1:{s.rsyncd_port}/fs/{str(dest).lstrip('/')}/"
    before = process_cpu(s.rsyncd.pid, reaped_children=True) if s.rsyncd else None
    secs, cpu, res = timed_cpu([*RSYNC_BASE, f"{master}/", url])
    return Result(secs, rsync_stats_sent(res.stdout), cpu=cpu, server_cpu=daemon_run_cpu(s.rsyncd, before))


def rsync_ssh(s: Services, master: Path, dest: Path) -> Result:
    dest.mkdir(parents=True, exist_ok=True)
    user = os.environ.get("USER") or "root"
    before = process_cpu(s.sshd.pid, reaped_children=True) if s.sshd else None
    secs, cpu, res = timed_cpu([*RSYNC_BASE, "-e", s.ssh_cmd(), f"{master}/", f"{user}@127.0.0.1:{dest}/"])
    return Result(secs, rsync_stats_sent(res.stdout), cpu=cpu, server_cpu=daemon_run_cpu(s.sshd, before))


def median_run(runs: list[Result]) -> Result:
    """The run of median time (the lower middle one of an even count)."""
    return sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]


def cp_a(master: Path, dest: Path) -> Result:
    """cp -a of the tree without the excluded folder (moved aside for the copy, untimed)."""
    aside = master.parent / "excluded-aside"
    dest.mkdir(parents=True, exist_ok=True)
    os.rename(master / EXCLUDED, aside)
    try:
        secs, cpu, _ = timed_cpu(["cp", "-a", f"{master}/.", str(dest)])
    finally:
        os.rename(aside, master / EXCLUDED)
    return Result(secs, cpu=cpu)


def latency(s: Services, master: Path, slave: Path, state: Path, writes: int) -> tuple[list[float], int, float]:
    """200 small writes with the sender watching; returns latencies (ms), misses, sender RSS."""
    tfile = s.work / "svc-swrepl" / "send-watch.time"
    env = dict(os.environ, SWREPL_LOG="warn")
    sender = start(["/usr/bin/time", "-v", "-o", str(tfile), s.swrepl, "send", "--root", str(master),
                    "--connect", f"127.0.0.1:{s.recv_port}", "--identity", str(s.master_id),
                    "--trust", s.slave_fp, "--state", str(state)],
                   stdout=subprocess.DEVNULL, stderr=open(s.work / "svc-swrepl" / "send-watch.log", "w"), env=env)
    live = "Supportworks Server/data/mime/live"
    (master / live).mkdir(parents=True, exist_ok=True)
    # The first full pass is done when a marker written now has arrived.
    if wait_for(master, slave, f"{live}/ready.txt", b"ready\n", 120.0) is None:
        stop(sender)
        raise SystemExit("the watching sender did not replicate its first marker within 120 s")
    lat, misses = [], 0
    for i in range(writes):
        data = (f"From: live{i}@example.com\nSubject: live write {i}\n\n".encode()
                + hashlib.shake_256(b"live%d" % i).hexdigest(1000).encode())
        got = wait_for(master, slave, f"{live}/live-{i:04}.eml", data, 10.0)
        if got is None:
            misses += 1
        else:
            lat.append(got * 1000)
    stop_timed(sender)
    return lat, misses, peak_rss_mib(tfile)


def wait_for(master: Path, slave: Path, rel: str, data: bytes, timeout: float) -> float | None:
    """Writes `data` to master/rel and returns the seconds until slave/rel holds exactly it."""
    target = slave / rel
    t = time.perf_counter()
    (master / rel).write_bytes(data)
    deadline = t + timeout
    while True:
        try:
            if target.stat().st_size == len(data) and target.read_bytes() == data:
                return time.perf_counter() - t
        except OSError:
            pass
        if time.perf_counter() > deadline:
            return None
        time.sleep(0.0005)


# ---------------------------------------------------------------------------------------------
# report


def fmt_s(r: Result | float | None) -> str:
    if r is None:
        return "—"
    v = r.seconds if isinstance(r, Result) else r
    return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"


def fmt_b(n: int | None) -> str:
    if n is None:
        return "—"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def ratio(a: Result | None, b: Result | None) -> str:
    if a is None or b is None or b.seconds <= 0:
        return "—"
    r = a.seconds / b.seconds
    return f"{r:.2f} ({1 / r:.1f}× {'faster' if r < 1 else 'slower'})" if r < 1 else f"{r:.2f} ({r:.1f}× slower)"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    rs = run(["rsync", "--version"]).stdout.splitlines()[0]
    ssh = run(["ssh", "-V"], check=False).stderr.strip()
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} × {cpu}, {mem:.0f} GiB RAM, Linux {platform.release()}; {rs}; {ssh}; "
            f"load average at the end {load} (other work on the machine inflates wall times)")


def main() -> int:
    global KEEP
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--swrepl", default=os.environ.get("SWREPL"))
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--latency-writes", type=int, default=200)
    ap.add_argument("--base", default="/dev/shm", help="where the trees go (tmpfs by default)")
    ap.add_argument("--disk", help="also run initial + no-change sync with trees under this directory")
    ap.add_argument("--small-files", type=int, default=1_000_000,
                    help="files of the many-small-files run (initial and no-change sync; 0 skips it)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of the 1 %%, no-change and big-file edit phases (each a fresh change); the median is shown")
    ap.add_argument("--out", help="also write the Markdown report here")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-install", action="store_true")
    a = ap.parse_args()
    KEEP = a.keep
    if not a.swrepl or not Path(a.swrepl).exists():
        raise SystemExit("pass --swrepl PATH (or SWREPL=PATH) to a release build of swrepl")
    atexit.register(cleanup)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    install_note = ensure_tools(not a.no_install)
    log(install_note)
    total, big = a.size_mib << 20, a.big_mib << 20
    need = total * 5 + big * 6
    avail = shutil.disk_usage(a.base).free
    log(f"trees need about {need / 2**30:.1f} GiB in {a.base} ({avail / 2**30:.1f} GiB free)")
    if need > avail:
        raise SystemExit(f"not enough room in {a.base}: lower --size-mib / --big-mib")

    work = Path(tempfile.mkdtemp(prefix="swrepl-compare-", dir=a.base))
    CLEANUP_DIRS.append(work)
    s = Services(work=work, swrepl=str(Path(a.swrepl).resolve()))
    master = work / "master"
    dests = {k: work / f"dest-{k}" for k in ("swrepl", "rsyncd", "ssh", "cp")}
    state = work / "swrepl-state"

    t = time.perf_counter()
    tree = generate(master, a.files, total, a.seed)
    log(f"generated {len(tree.files)} files, {tree.bytes / 2**20:.0f} MiB "
        f"(+{tree.excluded_bytes / 2**20:.0f} MiB excluded SwSQL data) in {time.perf_counter() - t:.1f} s")

    start_rsyncd(s)
    start_sshd(s)
    dests["swrepl"].mkdir()
    start_receiver(s, dests["swrepl"])
    log(f"rsyncd :{s.rsyncd_port}, sshd :{s.ssh_port}, swrepl receive :{s.recv_port}")

    rows: list[tuple[str, dict[str, Result | None], str]] = []
    swrepl_runs: list[Result] = []  # every swrepl run, for its peak memory (rows keep medians)

    def phase(name: str, with_cp: bool, goal: str, tag: str, rounds: int = 1,
              change=None, describe=None, grows: int = 0) -> dict[str, Result | None]:
        """Times each tool on the same change of the master; with `rounds` > 1, `change(k)` makes
        a fresh change before each round and the row shows each tool's median round (one sample
        was not enough: on this shared machine the same 1 GiB rewrite took the rsync daemon
        anywhere from 1.3 to 3.8 s, page allocation in tmpfs stalling now and then). `describe()`
        adds what the changes turned out to be to the row's name; `grows` is about how much new
        data a run writes, warmed before each tool's run (see `warm_memory`)."""
        log(name)
        runs: dict[str, list[Result]] = {"swrepl": [], "rsyncd": [], "ssh": []}
        # Room for what a run may take (a new copy of what it writes), warmed before each run.
        warm = grows + grows // 4 + (256 << 20) if grows else 0

        def ready() -> None:
            drop_caches_hint()
            warm_memory(Path(a.base), warm)

        for k in range(rounds):
            if change is not None:
                change(k)
            ready()
            runs["swrepl"].append(swrepl_send_once(s, master, state, f"{tag}-{k}" if rounds > 1 else tag))
            settle_receiver(s)
            empty_archive(dests["swrepl"])
            ready()
            runs["rsyncd"].append(rsync_daemon(s, master, dests["rsyncd"]))
            ready()
            runs["ssh"].append(rsync_ssh(s, master, dests["ssh"]))
            for tool, done in runs.items():
                log(f"  {tool:7} {done[-1].seconds:8.3f} s  wire {fmt_b(done[-1].wire)}")
        swrepl_runs.extend(runs["swrepl"])
        r: dict[str, Result | None] = {tool: median_run(done) for tool, done in runs.items()}
        if with_cp:
            ready()
            r["cp"] = cp_a(master, dests["cp"])
            log(f"  cp      {r['cp'].seconds:8.3f} s")
        else:
            r["cp"] = None
        name += describe() if describe is not None else ""
        rows.append((f"{name} (median of {rounds})" if rounds > 1 else name, r, goal))
        return r

    init = phase(f"initial sync ({len(tree.files)} files, {tree.bytes / 2**20:.0f} MiB)", True,
                 "≤ 0.67 vs rsyncd, ≤ 0.33 vs ssh", "initial", grows=tree.bytes)
    shutil.rmtree(dests["cp"])  # cp -a only has an initial copy to offer; give the RAM back
    if (dests["swrepl"] / EXCLUDED).exists():
        raise SystemExit(f"swrepl sent {EXCLUDED}: the default exclude failed")
    changes: list[dict[str, int]] = []

    def change_one_percent_round(k: int) -> None:
        changes.append(change_one_percent(tree, a.seed, k))
        log(f"1 % change: {changes[-1]}")

    def files_changed() -> str:
        return " (" + "–".join(map(str, sorted({sum(c.values()) for c in changes}))) + " files)"

    phase("resync after 1 % changed", False, "≤ 0.20 vs rsyncd, ≤ 1 MB", "one-percent",
          rounds=a.rounds, change=change_one_percent_round, describe=files_changed)
    counts = changes[0]
    phase("no-change resync", False, "≤ 0.20 vs rsyncd, ≤ 1 MB", "nochange", rounds=a.rounds)

    bigfile = master / "Supportworks Server/data/index/big-calls.idx"
    write_big_file(bigfile, big, a.seed)
    phase(f"{a.big_mib} MiB file added", False, "—", "big-add", grows=big)
    phase(f"4 KiB overwritten in the {a.big_mib} MiB file", False, "≤ 0.50 vs rsyncd; ≤ 2 chunks + manifest",
          "big-4k", rounds=a.rounds, change=lambda k: overwrite_middle(bigfile, 4096, k), grows=big)
    phase(f"100 B inserted in the {a.big_mib} MiB file", False, "≤ 2 chunks + manifest", "big-insert",
          rounds=a.rounds, change=lambda k: insert_middle(bigfile, 100, k), grows=big)

    log("verify")
    v_sw, c_sw, res = timed_cpu([s.swrepl, "verify", str(master), str(dests["swrepl"])])
    v_rs, c_rs, res_rs = timed_cpu(["rsync", "-rcn", "--delete", "-i", f"--exclude=/{EXCLUDED}", f"{master}/", f"{dests['rsyncd']}/"])
    rs_diffs = len([l for l in res_rs.stdout.splitlines() if l.strip()])
    log(f"  swrepl verify {v_sw:.3f} s ({res.stdout.strip()}); rsync -rcn {v_rs:.3f} s ({rs_diffs} differences)")
    rows.append(("full re-hash verify", {"swrepl": Result(v_sw, cpu=c_sw), "rsyncd": Result(v_rs, cpu=c_rs), "ssh": None, "cp": None},
                 "≤ 0.67 vs rsync -rcn"))

    log(f"live latency ({a.latency_writes} writes)")
    lat, misses, watch_rss = latency(s, master, dests["swrepl"], state, a.latency_writes)
    p50 = statistics.median(lat) if lat else float("nan")
    p99 = sorted(lat)[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")

    disk_rows = []
    if a.disk:
        disk_rows = disk_run(s, a, tree)

    stop_timed(s.receiver)
    recv_rss = peak_rss_mib(s.receiver_time)
    small_rows = []
    if a.small_files > 0:
        for done in (master, *dests.values()):  # room for the small files
            shutil.rmtree(done, ignore_errors=True)
        small_rows = small_files_run(s, a)
    send_rss = max((r.rss_mib or 0) for r in swrepl_runs)

    report = render(a, install_note, tree, rows, init, p50, p99, lat, misses, send_rss, watch_rss, recv_rss,
                    disk_rows + small_rows, counts)
    print(report)
    if a.out:
        Path(a.out).write_text(report)
    return 0


def disk_run(s: Services, a, tree: Tree) -> list[tuple[str, dict[str, Result | None]]]:
    """Initial and no-change sync with master and destinations on disk (swrepl into its own
    receiver started on a disk root)."""
    Path(a.disk).mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="swrepl-compare-disk-", dir=a.disk))
    CLEANUP_DIRS.append(base)
    log(f"disk run in {base}")
    master = base / "master"
    shutil.copytree(s.work / "master", master, symlinks=True)
    os.sync()
    disk = Services(work=base, swrepl=s.swrepl, rsyncd_port=s.rsyncd_port, ssh_port=s.ssh_port, ssh_key=s.ssh_key)
    (base / "slave").mkdir()
    start_receiver(disk, base / "slave")
    rows = []
    for name, tag in (("initial sync (disk)", "disk-initial"), ("no-change resync (disk)", "disk-nochange")):
        log(name)
        grows = tree.bytes + tree.bytes // 4 if tag == "disk-initial" else 0  # the page cache's share

        def ready() -> None:
            os.sync()
            warm_memory(Path(a.base), grows)

        ready()
        r = {"swrepl": swrepl_send_once(disk, master, base / "state", tag)}
        settle_receiver(disk)
        ready()
        r["rsyncd"] = rsync_daemon(s, master, base / "rsyncd")
        ready()
        r["ssh"] = rsync_ssh(s, master, base / "ssh")
        ready()
        r["cp"] = cp_a(master, base / "cp") if tag == "disk-initial" else None
        os.sync()
        rows.append((name, r))
    stop_timed(disk.receiver)
    return rows


def write_small_files(root: Path, n: int) -> None:
    """A MIME store of `n` small files: folders of 1 000 messages of 0-255 bytes (deterministic;
    identical contents recur, as duplicate attachments do)."""
    for d in range(n // 1000 + (1 if n % 1000 else 0)):
        folder = root / "Supportworks Server/data/mime" / f"{d // 100:02}" / f"{d:04}"
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(min(1000, n - d * 1000)):
            body = bytes([(d * 1000 + f) % 251]) * ((d * 7 + f) % 256)
            fd = os.open(folder / f"msg-{f:04}.eml", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, body)
            finally:
                os.close(fd)


def small_files_run(s: Services, a) -> list[tuple[str, dict[str, Result | None]]]:
    """Initial and no-change sync of many small files (issue 7: the rescan of an unchanged tree of
    1 M small files, and the sender's memory there): swrepl into its own receiver, then the rsync
    daemon (rsync over ssh and cp -a are left out to keep the run short). Two copies of the tree
    exist at a time; each small file takes a 4 KiB page in tmpfs, so the count is lowered to what
    the free space allows."""
    per_file = 4096 + 1024  # a page of data, and the inode and name
    fits = int(shutil.disk_usage(a.base).free * 0.8) // (2 * per_file)
    n = min(a.small_files, fits)
    if n < a.small_files:
        log(f"small files: room for {n} of {a.small_files} in {a.base}")
    base = Path(tempfile.mkdtemp(prefix="swrepl-compare-small-", dir=a.base))
    CLEANUP_DIRS.append(base)
    master = base / "master"
    t = time.perf_counter()
    write_small_files(master, n)
    log(f"small files: {n} files written in {time.perf_counter() - t:.1f} s")
    small = Services(work=base, swrepl=s.swrepl, rsyncd_port=s.rsyncd_port)
    (base / "slave").mkdir()
    start_receiver(small, base / "slave")
    label = f"{n:,}".replace(",", " ") + " small files"
    names = [f"initial sync ({label})", f"no-change resync ({label})"]
    grows = (n * per_file, 0)  # a new copy of the tree, then nothing
    swrepl = []
    for tag, grown in zip(("small-initial", "small-nochange"), grows):
        warm_memory(Path(a.base), grown)
        swrepl.append(swrepl_send_once(small, master, base / "state", tag))
    stop_timed(small.receiver)
    shutil.rmtree(base / "slave", ignore_errors=True)
    rsyncd = []
    for grown in grows:
        warm_memory(Path(a.base), grown)
        rsyncd.append(rsync_daemon(s, master, base / "rsyncd"))
    rows = []
    for name, sw, rs in zip(names, swrepl, rsyncd):
        log(f"{name}: swrepl {sw.seconds:.3f} s (sender peak RSS {sw.rss_mib:.0f} MiB), rsyncd {rs.seconds:.3f} s")
        rows.append((f"{name}; swrepl sender peak RSS {sw.rss_mib:.0f} MiB",
                     {"swrepl": sw, "rsyncd": rs, "ssh": None, "cp": None}))
    shutil.rmtree(base, ignore_errors=True)  # give the RAM back
    return rows


def render(a, install_note, tree, rows, init, p50, p99, lat, misses, send_rss, watch_rss, recv_rss, disk_rows, counts) -> str:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    out = [f"### swrepl vs rsync vs cp — {now}", "",
           f"Machine: {machine()}. Trees in {a.base} (tmpfs). {install_note}.", "",
           f"Tree: {len(tree.files)} files, {tree.bytes / 2**20:.0f} MiB (+{tree.excluded_bytes / 2**20:.0f} MiB "
           f"in `{EXCLUDED}`, excluded by all); big file {a.big_mib} MiB; seed {a.seed}. 1 % change (first round; "
           f"each round changes other files): {counts}.", "",
           "Times are wall clock of the whole client command (process start, handshake, scan, transfer). "
           "Wire = bytes sent by the sending side (swrepl summary; rsync `Total bytes sent`). "
           "(cpu C + S) = user + system CPU seconds of the client command (for swrepl the sender; for rsync the "
           "client, plus the ssh client over ssh) and of the receiving side for that run (swrepl's receiver; the "
           "rsync daemon's process for the connection; sshd's processes for the connection, with the rsync server "
           "they run); (cpu C) alone where there is no receiving side. "
           "Ratio = swrepl time / peer time (below 1: swrepl is faster). swrepl fsyncs every file; rsync does not. "
           f"Before each run that writes a new copy of data, the harness wrote and removed about as much again in "
           f"{a.base}, untimed ({WARMED['bytes'] / 2**30:.0f} GiB in {WARMED['seconds']:.0f} s in all): memory this VM "
           f"has not used lately is several times slower to get, and it would fall on whichever tool ran first.", "",
           "| measurement | swrepl | rsync daemon | rsync ssh | cp -a | swrepl/rsyncd | swrepl/ssh | swrepl/cp | goal |",
           "|---|---|---|---|---|---|---|---|---|"]

    def cell(r: Result | None) -> str:
        if r is None:
            return "—"
        cpu = f" (cpu {r.cpu:.2f}" if r.cpu is not None else ""
        if cpu:
            cpu += f" + {r.server_cpu:.2f})" if r.server_cpu is not None else ")"
        data = f" (file data {fmt_b(r.data)})" if r.data is not None else ""
        return fmt_s(r) + cpu + (f", {fmt_b(r.wire)}" if r.wire is not None else "") + data

    for name, r, goal in rows + [(n, r, "") for n, r in disk_rows]:
        out.append(f"| {name} | {cell(r['swrepl'])} | {cell(r['rsyncd'])} | {cell(r['ssh'])} | {cell(r['cp'])} | "
                   f"{ratio(r['swrepl'], r['rsyncd'])} | {ratio(r['swrepl'], r['ssh'])} | {ratio(r['swrepl'], r['cp'])} | {goal} |")
    out.append(f"| live latency, {len(lat)} writes ({misses} missed 10 s) | p50 {p50:.1f} ms, p99 {p99:.1f} ms | — | — | — | — | — | — | p50 ≤ 20 ms, p99 ≤ 100 ms |")
    out.append(f"| peak RSS | sender {send_rss:.0f} MiB (`--once`), {watch_rss:.0f} MiB (watching); receiver {recv_rss:.0f} MiB | — | — | — | — | — | — | sender ≤ 300 MB at 1 M files |")
    out.append("")
    out.append("(verify row: the rsync daemon column is `rsync -rcn --delete` between the master and the rsync copy.)")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
