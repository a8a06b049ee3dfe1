//! Link faults: the receiver runs in its own network namespace, joined to the host by a veth
//! pair. The pair converges over a bad link, and after a hard cut mid-transfer (link down and the
//! sender's connection aborted) the next session resumes without resending files already
//! installed.
//!
//! A bad link is made two ways:
//! - with `tc netem` (loss, delay, jitter, reordering, bandwidth), where the kernel has it;
//! - without netem (the CI kernel has only `tbf`, `htb` and `pfifo` among the qdiscs, no tc
//!   actions, but netfilter with the `statistic` match and `NFQUEUE`): `tbf` limits the bandwidth
//!   both ways, `iptables -m statistic --mode random` drops packets both ways, and a small
//!   userspace program in the namespace ([`USERSPACE_DELAY`], Python on a raw netlink socket)
//!   takes every packet crossing the namespace's end from `NFQUEUE` and accepts it after a seeded
//!   delay ± jitter, so packets are really delayed in the kernel's path and reordered where their
//!   delays cross. Only the delay is done in userspace.
//!
//! Needs root (`ip netns`, `tc`, `ss -K`; `iptables` and `python3` for the second kind). Skipped
//! with a loud notice where a namespace cannot be created or those tools are missing, except under
//! `CI=true`, where missing tools are installed with apt-get and nothing may skip (but the netem
//! variant, which needs a kernel module no package provides).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// Packet delay in userspace for kernels without netem (see the module doc). Arguments: delay
/// and jitter in ms, and a seed. Prints `nfqueue ready`, then a progress line every 100 packets.
const USERSPACE_DELAY: &str = r##"# Userspace packet delay for a network namespace whose kernel lacks netem: iptables sends the
# packets of each direction to its own NFQUEUE (0 in, 1 out); this holds each packet for
# delay +- jitter ms (uniform, seeded) before accepting it, so packets are delayed and, where
# their delays cross, reordered within their direction.
# Protocol: nfnetlink_queue over a raw netlink socket (no libraries).
import heapq, random, select, socket, struct, sys, time

delay_ms, jitter_ms, seed = (int(a) for a in sys.argv[1:4])
QUEUES = (0, 1)
rng = random.Random(seed)
NETLINK_NETFILTER, QUEUE = 12, 3 << 8
MSG_PACKET, MSG_VERDICT, MSG_CONFIG = QUEUE | 0, QUEUE | 1, QUEUE | 2
NLM_F_REQUEST, NLM_F_ACK, NLMSG_ERROR = 1, 4, 2
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
sock.bind((0, 0))
seq = 0

def attr(kind, payload):
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)

def send(kind, queue, payload, flags=NLM_F_REQUEST):
    global seq
    seq += 1
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", queue) + payload
    sock.send(struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body)

def config(queue, payload):
    send(MSG_CONFIG, queue, payload, NLM_F_REQUEST | NLM_F_ACK)
    data = sock.recv(65536)
    length, kind = struct.unpack_from("=IH", data)
    if kind == NLMSG_ERROR and struct.unpack_from("=i", data, 16)[0] != 0:
        sys.exit("nfqueue config refused: errno %d" % -struct.unpack_from("=i", data, 16)[0])

for queue in QUEUES:
    config(queue, attr(1, struct.pack("!BBH", 1, 0, socket.AF_INET)))  # NFQA_CFG_CMD: bind
    config(queue, attr(2, struct.pack("!IB", 0, 1)))  # NFQA_CFG_PARAMS: metadata only
print("nfqueue ready", flush=True)

held, count, released, reordered, last = [], 0, 0, 0, {q: -1 for q in QUEUES}
sock.setblocking(False)
while True:
    now = time.monotonic()
    while held and held[0][0] <= now:
        _, arrival, queue, packet_id = heapq.heappop(held)
        send(MSG_VERDICT, queue, attr(2, struct.pack("!II", 1, packet_id)))  # NF_ACCEPT
        released += 1
        if arrival < last[queue]:
            reordered += 1
        last[queue] = max(last[queue], arrival)
        if released % 100 == 0:
            print("delayed %d packets, %d overtaken" % (released, reordered), flush=True)
    timeout = max(0.0, held[0][0] - now) if held else 1.0
    if not select.select([sock], [], [], timeout)[0]:
        continue
    while True:
        try:
            data = sock.recv(1 << 17)
        except BlockingIOError:
            break
        except OSError:  # ENOBUFS: messages lost; TCP resends what they carried
            continue
        at = 0
        while at + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, at)
            if length < 16:
                break
            if kind == MSG_PACKET:
                queue = struct.unpack_from("!H", data, at + 18)[0]
                pos = at + 20
                while pos + 4 <= at + length:
                    size, attr_kind = struct.unpack_from("=HH", data, pos)
                    if size < 4:
                        break
                    if attr_kind & 0x7FFF == 1:  # NFQA_PACKET_HDR
                        packet_id = struct.unpack_from("!I", data, pos + 4)[0]
                        wait = (delay_ms + rng.uniform(-jitter_ms, jitter_ms)) / 1000
                        heapq.heappush(held, (time.monotonic() + wait, count, queue, packet_id))
                        count += 1
                    pos += (size + 3) & ~3
            at += (length + 3) & ~3
"##;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A namespace holding the receiver's end of a veth pair; deleted (with the pair) on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
    ns_ip: String,
}

impl Netns {
    /// Creates the namespace and link, or explains why it cannot (None: skip the test).
    fn create(tag: &str) -> Option<Netns> {
        // Unique per test even when several run in one process (`cargo test`): pid and a count.
        static CREATED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = std::process::id();
        let n = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = pid.wrapping_mul(8).wrapping_add(n);
        let net = format!("10.{}.{}", 100 + (id / 250) % 150, id % 250);
        let ns = Netns {
            name: format!("swrepl-{tag}-{pid}-{n}"),
            host_if: format!("sw{pid}x{n}h"),
            host_ip: format!("{net}.1"),
            ns_ip: format!("{net}.2"),
        };
        match ns.set_up() {
            Ok(()) => Some(ns),
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true but the link-fault namespace cannot be set up: {e}"
                );
                eprintln!(
                    "\n*** SKIPPED: link-fault tests need network namespaces (root): {e} ***\n"
                );
                None
            }
        }
    }

    fn ns_if(&self) -> String {
        self.host_if.replace('h', "n")
    }

    fn set_up(&self) -> Result<(), String> {
        let ns_if = self.ns_if();
        ip(&["netns", "add", &self.name])?;
        ip(&[
            "link",
            "add",
            &self.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &self.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.host_ip),
            "dev",
            &self.host_if,
        ])?;
        ip(&["link", "set", &self.host_if, "up"])?;
        self.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.ns_ip),
            "dev",
            &ns_if,
        ])?;
        self.exec(&["ip", "link", "set", &ns_if, "up"])?;
        self.exec(&["ip", "link", "set", "lo", "up"])
    }

    fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Puts queueing discipline `spec` (e.g. `netem delay 30ms`) on the host's end (traffic to
    /// the receiver), or on the namespace's end (traffic back) with `back`.
    fn shape(&self, spec: &str, back: bool) -> Result<(), String> {
        let dev = if back {
            self.ns_if()
        } else {
            self.host_if.clone()
        };
        let mut args = vec!["tc", "qdisc", "replace", "dev", &dev, "root"];
        args.extend(spec.split_whitespace());
        let mut cmd = if back {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &self.name]);
            cmd.args(&args);
            cmd
        } else {
            let mut cmd = Command::new(args[0]);
            cmd.args(&args[1..]);
            cmd
        };
        let out = cmd.output().map_err(|e| format!("tc: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tc qdisc {spec}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn receiver_addr(&self, pair: &Pair) -> String {
        format!("{}:{}", self.ns_ip, pair.port)
    }

    /// Starts the receiver inside the namespace and waits until it accepts connections.
    fn start_receiver(&self, pair: &Pair) -> Proc {
        let log = pair.tmp.path().join("receiver-netns.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, env!("CARGO_BIN_EXE_swrepl")])
            .args(["receive", "--root", pair.slave.to_str().unwrap()])
            .args(["--listen", &self.receiver_addr(pair)])
            .args(["--identity", pair.slave_id.to_str().unwrap()])
            .args(["--trust", &pair.master_fp])
            .env("SWREPL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let proc = Proc { child, log };
        wait_until("the receiver listens in its namespace", || {
            proc.log_text().contains("receiver ready")
        });
        proc
    }

    fn sender(&self, pair: &Pair, name: &str) -> Proc {
        let log = pair.tmp.path().join(name);
        let file = std::fs::File::create(&log).unwrap();
        let child = swrepl()
            .args(["send", "--once", "--timeout", "120"])
            .args(["--root", pair.master.to_str().unwrap()])
            .args(["--connect", &self.receiver_addr(pair)])
            .args(["--identity", pair.master_id.to_str().unwrap()])
            .args(["--trust", &pair.slave_fp])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc { child, log }
    }
}

/// What the netem-less bad link needs besides `ip` and `tc`: the iptables command (the legacy
/// back end: this kernel has xtables but not nf_tables) and python3. Under `CI=true` missing ones
/// are installed; elsewhere their absence skips the test loudly (None).
fn bad_link_tools() -> Option<&'static str> {
    let works = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let find = || {
        let iptables = ["iptables-legacy", "iptables"]
            .into_iter()
            .find(|cmd| works(cmd, "--version"));
        iptables.filter(|_| works("python3", "--version"))
    };
    if let Some(found) = find() {
        return Some(found);
    }
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if !ci {
        eprintln!(
            "\n*** SKIPPED: the netem-less bad link needs iptables and python3 \
             (apt-get install iptables python3) ***\n"
        );
        return None;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("apt-get")
    };
    let install = [
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "iptables",
        "python3",
    ];
    let mut installed = apt(&install);
    if !installed.status.success() {
        // A fresh image has no package lists yet.
        apt(&["update", "-qq"]);
        installed = apt(&install);
    }
    assert!(
        installed.status.success(),
        "CI=true: cannot install iptables and python3: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    Some(find().expect("iptables and python3 work after installing them"))
}

impl Netns {
    /// Runs `iptables` inside the namespace (its rules vanish with it).
    fn iptables(&self, iptables: &str, rule: &[&str]) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, iptables, "-w", "60"])
            .args(rule)
            .output()
            .map_err(|e| format!("{iptables}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{iptables} {}: {}",
                rule.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Drops `percent` % of the packets crossing the namespace's end, each way, at random; then
    /// hands every surviving packet to NFQUEUE 0 (in) or 1 (out), for [`USERSPACE_DELAY`].
    fn drop_and_queue(&self, iptables: &str, percent: u32) -> Result<(), String> {
        let ns_if = self.ns_if();
        let probability = format!("{:.2}", f64::from(percent) / 100.0);
        for (chain, dir, queue) in [("INPUT", "-i", "0"), ("OUTPUT", "-o", "1")] {
            self.iptables(
                iptables,
                &[
                    "-A",
                    chain,
                    dir,
                    &ns_if,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &probability,
                    "-j",
                    "DROP",
                ],
            )?;
            self.iptables(
                iptables,
                &[
                    "-A",
                    chain,
                    dir,
                    &ns_if,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    queue,
                ],
            )?;
        }
        Ok(())
    }

    /// Packets (dropped, queued) so far by the rules of [`Netns::drop_and_queue`], both ways.
    fn netfilter_counts(&self, iptables: &str) -> (u64, u64) {
        let mut counts = (0, 0);
        for chain in ["INPUT", "OUTPUT"] {
            let listing = self
                .iptables(iptables, &["-L", chain, "-v", "-x", "-n"])
                .unwrap();
            for line in listing.lines() {
                let packets: u64 = match line.split_whitespace().next().map(str::parse) {
                    Some(Ok(n)) => n,
                    _ => continue,
                };
                if line.contains("DROP") {
                    counts.0 += packets;
                } else if line.contains("NFQUEUE") {
                    counts.1 += packets;
                }
            }
        }
        counts
    }

    /// Starts [`USERSPACE_DELAY`] in the namespace and waits until it holds both queues.
    fn delay_in_userspace(&self, pair: &Pair, delay_ms: u32, jitter_ms: u32, seed: u64) -> Proc {
        let log = pair.tmp.path().join("userspace-delay.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "python3",
                "-c",
                USERSPACE_DELAY,
            ])
            .args([
                delay_ms.to_string(),
                jitter_ms.to_string(),
                seed.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut proc = Proc { child, log };
        wait_until("the userspace delay holds its queues", || {
            assert!(
                proc.is_running(),
                "userspace delay died: {}",
                proc.log_text()
            );
            proc.log_text().contains("nfqueue ready")
        });
        proc
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Bytes of the Slave files that already equal the Master's.
fn installed_bytes(pair: &Pair, names: &[String]) -> (usize, u64) {
    let mut count = 0;
    let mut bytes = 0;
    for name in names {
        let master = std::fs::read(pair.master.join(name)).unwrap();
        if std::fs::read(pair.slave.join(name)).ok().as_deref() == Some(&master[..]) {
            count += 1;
            bytes += master.len() as u64;
        }
    }
    (count, bytes)
}

fn write_files(root: &Path, prefix: &str, count: usize, size: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let name = format!("data/{prefix}{i}.bin");
            write(root, &name, &noise(&name, size));
            name
        })
        .collect()
}

#[test]
fn replication_converges_over_a_lossy_slow_reordering_link() {
    let pair = Pair::new();
    let Some(ns) = Netns::create("lossy") else {
        return;
    };
    let shaped = ns
        .shape(
            "netem delay 30ms 10ms loss 3% reorder 10% 50% rate 20mbit",
            false,
        )
        .and_then(|()| ns.shape("netem delay 30ms 10ms loss 3%", true));
    if let Err(e) = shaped {
        // Not a namespace problem: this kernel has no netem (sch_netem), so even CI cannot run it.
        eprintln!("\n*** SKIPPED: loss/delay/reordering need the kernel's netem qdisc: {e} ***\n");
        return;
    }
    write_files(&pair.master, "f", 40, 60_000);
    let _receiver = ns.start_receiver(&pair);
    let mut sender = ns.sender(&pair, "sender-lossy.log");
    assert_eq!(sender.wait_exit(), 0, "{}", sender.log_text());
    pair.assert_identical();
}

/// The last `delayed N packets, M overtaken` line of [`USERSPACE_DELAY`]'s log.
fn delay_progress(log: &str) -> (u64, u64) {
    log.lines()
        .rev()
        .find_map(|line| {
            let rest = line.strip_prefix("delayed ")?;
            let (delayed, rest) = rest.split_once(" packets, ")?;
            let overtaken = rest.strip_suffix(" overtaken")?;
            Some((delayed.parse().ok()?, overtaken.parse().ok()?))
        })
        .unwrap_or_default()
}

/// The same bad link where the kernel has no netem: `tbf` at 20 Mbit/s both ways, 3 % random
/// loss both ways (iptables `statistic`), and 30 ms ± 10 ms delay both ways in userspace
/// through NFQUEUE, which reorders packets whose delays cross. Runs on the CI kernel.
#[test]
fn replication_converges_over_a_lossy_delayed_reordering_slow_link_without_netem() {
    let pair = Pair::new();
    let Some(ns) = Netns::create("nfq") else {
        return;
    };
    let Some(iptables) = bad_link_tools() else {
        return;
    };
    for back in [false, true] {
        ns.shape("tbf rate 20mbit burst 32kbit latency 400ms", back)
            .unwrap();
    }
    ns.drop_and_queue(iptables, 3).unwrap();
    let delay = ns.delay_in_userspace(&pair, 30, 10, 0x5eed);
    write_files(&pair.master, "h", 30, 50_000);
    let _receiver = ns.start_receiver(&pair);
    let mut sender = ns.sender(&pair, "sender-nfq.log");
    assert_eq!(sender.wait_exit(), 0, "{}", sender.log_text());
    pair.assert_identical();

    // The link really was bad: packets were dropped, delayed and overtaken each other.
    let (dropped, queued) = ns.netfilter_counts(iptables);
    let (delayed, overtaken) = delay_progress(&delay.log_text());
    eprintln!(
        "{dropped} packets dropped, {queued} queued for delay (a GSO burst counts once); \
         {delayed} delayed (last report), {overtaken} of them overtaken"
    );
    assert!(dropped > 0, "no packet was dropped");
    assert!(
        delayed >= 100 && overtaken > 0,
        "the delay did not act: {}",
        delay.log_text()
    );
}

#[test]
fn a_hard_link_cut_mid_transfer_resumes_without_resending_installed_files() {
    let pair = Pair::new();
    let Some(ns) = Netns::create("cut") else {
        return;
    };
    // About 1 MB/s: 12 files of 400 kB take several seconds, time to cut in the middle.
    ns.shape("tbf rate 8mbit burst 32kbit latency 400ms", false)
        .unwrap();
    let names = write_files(&pair.master, "g", 12, 400_000);
    let total: u64 = 12 * 400_000;
    let _receiver = ns.start_receiver(&pair);
    let mut sender = ns.sender(&pair, "sender-cut.log");
    wait_until("a few files are installed", || {
        installed_bytes(&pair, &names).0 >= 3
    });
    assert!(sender.is_running(), "the transfer finished before the cut");

    // The cut: the link goes down and the sender's connection is aborted.
    ip(&["link", "set", &ns.host_if, "down"]).unwrap();
    let (installed, installed_before_cut) = installed_bytes(&pair, &names);
    let killed = Command::new("ss")
        .args(["-K", "dst", &ns.ns_ip])
        .output()
        .unwrap();
    assert!(killed.status.success(), "ss -K failed");
    std::thread::sleep(std::time::Duration::from_secs(2));
    ip(&["link", "set", &ns.host_if, "up"]).unwrap();

    assert_eq!(sender.wait_exit(), 0, "{}", sender.log_text());
    let log = sender.log_text();
    assert!(
        log.contains("reconnecting"),
        "the session did not break:\n{log}"
    );
    pair.assert_identical();
    // The resumed session sent at most what was not installed before the cut.
    let resent = number_before(&log, " bytes of file data sent");
    eprintln!("{installed} files ({installed_before_cut} bytes) installed before the cut; {resent} bytes sent after it");
    assert!(
        resent <= total - installed_before_cut,
        "{resent} bytes sent after the cut, but only {} were missing",
        total - installed_before_cut
    );
}
