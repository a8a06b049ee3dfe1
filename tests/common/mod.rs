//! Test harness: a Master/Slave pair of real `swrepl` processes in a temp dir, on free ports.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test, logging at `info`, or at `SWREPL_TEST_LOG` when set (e.g. `debug`
/// to diagnose a test that failed: the logs tests print on failure then say why).
pub fn swrepl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swrepl"));
    let level = std::env::var("SWREPL_TEST_LOG").unwrap_or_else(|_| "info".into());
    cmd.env("SWREPL_LOG", level);
    cmd
}

/// Runs `swrepl` with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    swrepl().args(args).output().expect("run swrepl")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it holds, or panics with `what` after a generous deadline.
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for: {what}");
}

/// A child process killed and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit (generous deadline) and returns its exit code.
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes `content` to `root/rel`, creating parents.
pub fn write(root: &Path, rel: &str, content: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Deterministic pseudo-random bytes.
pub fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Number in `text` just before `marker`, e.g. "123 bytes of file data sent".
pub fn number_before(text: &str, marker: &str) -> u64 {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not in {text:?}"));
    let digits: String = text[..at]
        .trim_end()
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.chars().rev().collect::<String>().parse().unwrap()
}

/// A Master tree, a Slave tree and an identity for each, in one temp dir.
pub struct Pair {
    pub tmp: tempfile::TempDir,
    pub master: PathBuf,
    pub slave: PathBuf,
    pub master_id: PathBuf,
    pub slave_id: PathBuf,
    pub master_fp: String,
    pub slave_fp: String,
    pub port: u16,
}

/// Runs `swrepl init` and returns the fingerprint from the last line of stdout.
pub fn init_identity(dir: &Path) -> String {
    let out = run(&["init", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "init failed: {}", stderr(&out));
    stdout(&out).lines().last().unwrap().trim().to_string()
}

impl Pair {
    pub fn new() -> Pair {
        let tmp = tempfile::tempdir().unwrap();
        let master = tmp.path().join("master");
        let slave = tmp.path().join("slave");
        std::fs::create_dir_all(&master).unwrap();
        std::fs::create_dir_all(&slave).unwrap();
        let master_id = tmp.path().join("master-id");
        let slave_id = tmp.path().join("slave-id");
        let master_fp = init_identity(&master_id);
        let slave_fp = init_identity(&slave_id);
        Pair {
            tmp,
            master,
            slave,
            master_id,
            slave_id,
            master_fp,
            slave_fp,
            port: free_port(),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts a receiver on the Slave tree and waits until it accepts connections.
    pub fn start_receiver(&self, extra: &[&str]) -> Proc {
        let proc = self.spawn_receiver(extra, &self.master_fp.clone());
        wait_until("receiver listening", || {
            TcpStream::connect(self.addr()).is_ok()
        });
        proc
    }

    /// Starts a receiver that trusts `trusted` (without waiting).
    pub fn spawn_receiver(&self, extra: &[&str], trusted: &str) -> Proc {
        let log = self
            .tmp
            .path()
            .join(format!("receiver-{}.log", free_port()));
        let mut cmd = swrepl();
        cmd.args([
            "receive",
            "--root",
            self.slave.to_str().unwrap(),
            "--listen",
            &self.addr(),
        ])
        .args([
            "--identity",
            self.slave_id.to_str().unwrap(),
            "--trust",
            trusted,
        ])
        .args(extra);
        spawn_logged(cmd, log)
    }

    fn sender_args(&self) -> Vec<String> {
        vec![
            "send".into(),
            "--root".into(),
            self.master.to_str().unwrap().into(),
            "--connect".into(),
            self.addr(),
            "--identity".into(),
            self.master_id.to_str().unwrap().into(),
            "--trust".into(),
            self.slave_fp.clone(),
        ]
    }

    /// Runs `swrepl send --once` to completion.
    pub fn send_once(&self, extra: &[&str]) -> Output {
        let mut cmd = swrepl();
        cmd.args(self.sender_args()).arg("--once").args(extra);
        cmd.output().expect("run sender")
    }

    /// Starts `swrepl send` (watching, or with `--once` in `extra`) in the background.
    pub fn spawn_sender(&self, extra: &[&str]) -> Proc {
        let log = self.tmp.path().join(format!("sender-{}.log", free_port()));
        let mut cmd = swrepl();
        cmd.args(self.sender_args()).args(extra);
        spawn_logged(cmd, log)
    }

    /// `swrepl verify master slave`.
    pub fn verify(&self) -> Output {
        run(&[
            "verify",
            self.master.to_str().unwrap(),
            self.slave.to_str().unwrap(),
        ])
    }

    pub fn assert_identical(&self) {
        let out = self.verify();
        assert!(
            out.status.success(),
            "trees differ:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(stdout(&out).starts_with("identical: "), "{}", stdout(&out));
    }
}

fn spawn_logged(mut cmd: Command, log: PathBuf) -> Proc {
    let file = std::fs::File::create(&log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("spawn swrepl");
    Proc { child, log }
}
