//! The monitor end to end: a Master (`swrepl send`) whose heartbeats report its lab
//! SwServerService, and a Slave (`swrepl receive` with `[switchover]`) that watches them and
//! switches over, alerts, or does nothing. Real processes, real sockets, the `mysvc` lab
//! service manager; `swrepl status` exit codes on both sides.

#![cfg(unix)]

mod common;
#[path = "common/services.rs"]
mod services;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{stderr, stdout, swrepl, wait_until, write, Pair, Proc};
use services::{starts, toml_str, Services, ALWAYS, ORDER};

/// A Master/Slave pair with lab services on both sides and a config file for each.
struct Lab {
    pair: Pair,
    master_services: Services,
    slave_services: Services,
}

impl Lab {
    /// `switchover` is the Slave's `[switchover]` table body.
    fn new(switchover: &str) -> Lab {
        let pair = Pair::new();
        let base = pair.tmp.path().to_owned();
        let lab = Lab {
            master_services: Services::active(&base.join("master-host")),
            slave_services: Services::standby(&base.join("slave-host")),
            pair,
        };
        lab.write_configs(switchover);
        lab
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.pair.tmp.path().join(rel)
    }

    fn write_configs(&self, switchover: &str) {
        let p = &self.pair;
        let master = format!(
            "[send]\nroot = \"{}\"\nconnect = \"{}\"\nidentity = \"{}\"\ntrust = [\"{}\"]\n\n{}",
            toml_str(&p.master),
            p.addr(),
            toml_str(&p.master_id),
            p.slave_fp,
            self.master_services.table()
        );
        std::fs::write(self.path("master.toml"), master).expect("master config");
        let slave = format!(
            "[receive]\nroot = \"{}\"\nlisten = \"{}\"\nidentity = \"{}\"\ntrust = [\"{}\"]\n\n{}\n[switchover]\nevent_log = \"{}\"\nstart_timeout_seconds = 30\n{switchover}\n",
            toml_str(&p.slave),
            p.addr(),
            toml_str(&p.slave_id),
            p.master_fp,
            self.slave_services.table(),
            toml_str(&self.path("events.jsonl")),
        );
        std::fs::write(self.path("slave.toml"), slave).expect("slave config");
    }

    fn spawn(&self, args: &[&str], name: &str) -> Proc {
        let log = self.path(&format!("{name}-{}.log", common::free_port()));
        let file = std::fs::File::create(&log).expect("log");
        let child = swrepl()
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("spawn swrepl");
        Proc { child, log }
    }

    fn start_receiver(&self) -> Proc {
        let config = self.path("slave.toml");
        self.spawn(
            &["receive", "--config", config.to_str().unwrap()],
            "receiver",
        )
    }

    fn start_sender(&self) -> Proc {
        let config = self.path("master.toml");
        self.spawn(&["send", "--config", config.to_str().unwrap()], "sender")
    }

    /// Starts both sides and waits until the Slave has heard the Master report its service
    /// running; returns (receiver, sender, the heartbeat time of that report).
    fn start_pair(&self) -> (Proc, Proc, u64) {
        write(
            &self.pair.master,
            "config/swserver.cfg",
            b"before the switch-over",
        );
        let receiver = self.start_receiver();
        let sender = self.start_sender();
        let mut first = 0;
        wait_until(
            "the Slave hears the Master's SwServerService running",
            || {
                let status = self.slave_status();
                if status["master_service"] == "SwServerService: Running" {
                    first = status["last_heartbeat_unix_ms"].as_u64().unwrap_or(0);
                    return true;
                }
                false
            },
        );
        (receiver, sender, first)
    }

    fn slave_status(&self) -> serde_json::Value {
        std::fs::read_to_string(self.pair.slave.join(".swrepl/status.json"))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits until the Slave records a heartbeat sent at or after `unix_ms` and returns the
    /// status then.
    fn wait_for_heartbeat_after(&self, unix_ms: u64, what: &str) -> serde_json::Value {
        let mut seen = serde_json::Value::Null;
        wait_until(what, || {
            seen = self.slave_status();
            seen["last_heartbeat_unix_ms"].as_u64().unwrap_or(0) >= unix_ms
        });
        seen
    }

    fn swrepl_with(&self, args: &[&str], config: &str) -> Output {
        swrepl()
            .args(args)
            .arg("--config")
            .arg(self.path(config))
            .stdin(Stdio::null())
            .output()
            .expect("run swrepl")
    }

    fn events(&self) -> String {
        std::fs::read_to_string(self.path("events.jsonl")).unwrap_or_default()
    }
}

fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

fn marker(root: &Path) -> PathBuf {
    root.join(".swrepl/promoted")
}

#[test]
fn auto_policy_switches_over_in_runbook_order_and_refuses_the_old_master() {
    let lab = Lab::new("policy = \"auto\"\nconfirm_seconds = 2\n");
    let (mut receiver, mut sender, _) = lab.start_pair();
    assert!(lab.slave_services.order_log().is_empty());

    lab.master_services.set_state("SwServerService", "stopped");
    let code = receiver.wait_exit();
    assert_eq!(code, 0, "receiver log:\n{}", receiver.log_text());
    assert_eq!(
        lab.slave_services.order_log(),
        starts(&ORDER),
        "receiver log:\n{}",
        receiver.log_text()
    );
    assert!(marker(&lab.pair.slave).exists());
    assert!(
        lab.events().contains("\"outcome\":\"completed\""),
        "{}",
        lab.events()
    );
    let active = lab.swrepl_with(&["services", "status", "--role", "active"], "slave.toml");
    assert_exit(&active, 0);
    for name in ALWAYS.iter().chain(&ORDER) {
        assert!(stdout(&active).contains(name), "{}", stdout(&active));
    }
    let status = lab.swrepl_with(&["status"], "slave.toml");
    assert_exit(&status, 0);
    assert!(stdout(&status).contains("promoted"), "{}", stdout(&status));

    // The promoted Slave refuses to receive again, so the old Master's changes cannot land.
    let mut again = lab.start_receiver();
    assert_eq!(again.wait_exit(), 2);
    assert!(
        again.log_text().contains("this Slave was promoted on"),
        "{}",
        again.log_text()
    );
    sender.kill();
    write(
        &lab.pair.master,
        "config/after.cfg",
        b"written after the switch-over",
    );
    let master = lab.path("master.toml");
    let late = swrepl()
        .args(["send", "--once", "--timeout", "2", "--config"])
        .arg(master)
        .stdin(Stdio::null())
        .output()
        .expect("run sender");
    assert_ne!(late.status.code(), Some(0), "{}", stderr(&late));
    assert!(!lab.pair.slave.join("config/after.cfg").exists());
    assert!(lab.pair.slave.join("config/swserver.cfg").exists());

    let plan = lab.swrepl_with(&["failback", "--dry-run"], "slave.toml");
    assert_exit(&plan, 0);
    assert!(stdout(&plan).contains("Phase A"), "{}", stdout(&plan));
}

#[test]
fn no_switch_over_while_the_master_reports_its_service_running() {
    let lab = Lab::new("policy = \"auto\"\nconfirm_seconds = 2\n");
    let (mut receiver, _sender, first) = lab.start_pair();
    // Healthy heartbeats spanning well over twice the confirmation window.
    let status = lab.wait_for_heartbeat_after(first + 9_000, "two more heartbeats");
    assert_eq!(status["master_service"], "SwServerService: Running");
    assert!(lab.slave_services.order_log().is_empty());
    assert!(receiver.is_running(), "{}", receiver.log_text());
    assert!(!marker(&lab.pair.slave).exists());

    let slave = lab.swrepl_with(&["status"], "slave.toml");
    assert_exit(&slave, 0);
    let json = lab.swrepl_with(&["status", "--json"], "slave.toml");
    let report: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("JSON");
    assert_eq!(report["role"], "slave");
    assert_eq!(report["healthy"], true);
    assert_eq!(report["files"]["connected"], true);
    let master = lab.swrepl_with(&["status"], "master.toml");
    assert_exit(&master, 0);
    assert!(stdout(&master).contains("role:        master"));
}

#[test]
fn a_blip_shorter_than_the_window_does_nothing() {
    let lab = Lab::new("policy = \"auto\"\nconfirm_seconds = 4\n");
    let (mut receiver, _sender, _) = lab.start_pair();
    lab.master_services.set_state("SwServerService", "stopped");
    let mut stopped_at = 0;
    wait_until("the Slave sees the blip", || {
        let status = lab.slave_status();
        stopped_at = status["last_heartbeat_unix_ms"].as_u64().unwrap_or(0);
        status["master_service"] == "SwServerService: Stopped"
    });
    lab.master_services.set_state("SwServerService", "running");
    // Past the window (and a heartbeat more) with the service running again.
    let status = lab.wait_for_heartbeat_after(stopped_at + 9_000, "heartbeats after the blip");
    assert_eq!(status["master_service"], "SwServerService: Running");
    assert!(
        lab.slave_services.order_log().is_empty(),
        "{}",
        receiver.log_text()
    );
    assert!(receiver.is_running(), "{}", receiver.log_text());
}

#[test]
fn manual_policy_runs_the_alert_hook_and_starts_nothing() {
    let lab = Lab::new("");
    let alert = lab.path("alert-master_down");
    let switchover = format!(
        "policy = \"manual\"\nconfirm_seconds = 2\nalert = \"touch '{}'\"\n",
        toml_str(&lab.path("alert-{name}"))
    );
    lab.write_configs(&switchover);
    let (mut receiver, _sender, _) = lab.start_pair();
    lab.master_services.set_state("SwServerService", "stopped");
    wait_until("the alert hook runs", || alert.exists());
    assert!(lab.slave_services.order_log().is_empty());
    assert!(receiver.is_running(), "{}", receiver.log_text());
    assert!(
        lab.events().contains("\"action\":\"alert\""),
        "{}",
        lab.events()
    );

    let status = lab.swrepl_with(&["status"], "slave.toml");
    assert_exit(&status, 1);
    assert!(
        stdout(&status).contains("the Master reports SwServerService: Stopped"),
        "{}",
        stdout(&status)
    );
}
