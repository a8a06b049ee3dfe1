//! `swrepl services status` and `swrepl switchover` against a lab service manager: a small
//! shell script (`mysvc`, written into a temp dir) that keeps each service's state in a file and
//! logs every start and stop, driven through the `command` backend. Real processes, real files.

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

/// The lab service manager. State per service in `state/NAME`; `fail/NAME` makes a start fail;
/// `slow/NAME` makes a start go through start_pending for a moment (a background process
/// finishes it); `nonsense/NAME` makes the query print garbage. Starts and stops are appended
/// to `order.log`.
const MYSVC: &str = r#"#!/bin/sh
dir=$(dirname "$0")
action=$1
name=$2
state="$dir/state/$name"
if [ ! -f "$state" ]; then
    echo "mysvc: no such service: $name" >&2
    exit 4
fi
case "$action" in
query)
    if [ -f "$dir/nonsense/$name" ]; then echo "banana"; exit 0; fi
    cat "$state"
    ;;
start)
    echo "start $name" >> "$dir/order.log"
    if [ -f "$dir/fail/$name" ]; then
        echo "$name: could not start (lab failure)" >&2
        exit 1
    fi
    if [ -f "$dir/slow/$name" ]; then
        echo start_pending > "$state"
        (sleep 1; echo running > "$state") >/dev/null 2>&1 &
        exit 0
    fi
    echo running > "$state"
    ;;
stop)
    echo "stop $name" >> "$dir/order.log"
    echo stopped > "$state"
    ;;
*)
    echo "mysvc: unknown action $action" >&2
    exit 2
    ;;
esac
"#;

const ALWAYS: [&str; 2] = ["SwSqlServer", "SwHttpServer"];
const ORDER: [&str; 9] = [
    "SwServerService",
    "SwCalendarService",
    "SwSchedulerService",
    "SwMessengerService",
    "SwMailService",
    "SwMailSchedule",
    "SwLogService",
    "SwIndexServer",
    "SwFileService",
];

/// A Slave host in the runbook's standby state, with its config file and receiver status file.
struct Lab {
    dir: TempDir,
}

impl Lab {
    fn standby() -> Self {
        let lab = Lab {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for sub in ["state", "fail", "slow", "nonsense", "receiver/.swrepl"] {
            std::fs::create_dir_all(lab.path(sub)).expect("lab dirs");
        }
        std::fs::write(lab.path("mysvc"), MYSVC).expect("write mysvc");
        for name in ALWAYS {
            lab.set_state(name, "running");
        }
        for name in ORDER {
            lab.set_state(name, "stopped");
        }
        lab.write_receiver_status(0);
        lab.write_config("");
        lab
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn set_state(&self, name: &str, state: &str) {
        std::fs::write(self.path(&format!("state/{name}")), format!("{state}\n")).expect("state");
    }

    fn state(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("state/{name}")))
            .expect("state")
            .trim()
            .to_owned()
    }

    fn mark(&self, kind: &str, name: &str) {
        std::fs::write(self.path(&format!("{kind}/{name}")), "").expect("mark");
    }

    fn write_receiver_status(&self, pending: u64) {
        let status = format!(
            r#"{{"connected": false, "last_ack_seq": 41, "pending": {pending}, "last_applied_unix_ms": 1700000000000}}"#
        );
        std::fs::write(self.path("receiver/.swrepl/status.json"), status).expect("status");
    }

    /// Writes the config; `switchover_extra` is appended to the [switchover] table.
    fn write_config(&self, switchover_extra: &str) {
        self.write_config_with("", switchover_extra);
    }

    fn write_config_with(&self, services_extra: &str, switchover_extra: &str) {
        let script = toml_str(&self.path("mysvc"));
        let root = toml_str(&self.path("receiver"));
        let log = toml_str(&self.path("events.jsonl"));
        let config = format!(
            r#"[services]
backend = "command"
start = "sh '{script}' start {{name}}"
stop = "sh '{script}' stop {{name}}"
query = "sh '{script}' query {{name}}"
timeout_seconds = 60
{services_extra}

[switchover]
receiver_root = "{root}"
event_log = "{log}"
start_timeout_seconds = 60
{switchover_extra}
"#
        );
        std::fs::write(self.path("config.toml"), config).expect("config");
    }

    /// Runs swrepl with `args` and the lab's config, stdin closed.
    fn swrepl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_swrepl"))
            .args(args)
            .arg("--config")
            .arg(self.path("config.toml"))
            .stdin(Stdio::null())
            .output()
            .expect("run swrepl")
    }

    /// The starts and stops the lab service manager saw, in order.
    fn order_log(&self) -> Vec<String> {
        match std::fs::read_to_string(self.path("order.log")) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("event log line is JSON"))
            .collect()
    }
}

fn toml_str(path: &Path) -> String {
    path.display().to_string().replace('\\', "\\\\")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn starts(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("start {n}")).collect()
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

// ---- services status ----

#[test]
fn status_of_a_standby_host_matches_the_standby_table() {
    let lab = Lab::standby();
    let out = lab.swrepl(&["services", "status", "--role", "standby"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    for name in ALWAYS.iter().chain(&ORDER) {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    assert!(!text.contains("DEVIATION"), "{text}");
}

#[test]
fn status_marks_every_deviation_and_exits_1() {
    let lab = Lab::standby();
    lab.set_state("SwMailService", "running");
    lab.set_state("SwHttpServer", "stopped");
    let out = lab.swrepl(&["services", "status", "--role", "standby"]);
    assert_exit(&out, 1);
    let text = stdout(&out);
    let marked: Vec<&str> = text.lines().filter(|l| l.starts_with('!')).collect();
    assert_eq!(marked.len(), 2, "{text}");
    assert!(marked
        .iter()
        .any(|l| l.contains("SwMailService") && l.ends_with("DEVIATION")));
    assert!(marked
        .iter()
        .any(|l| l.contains("SwHttpServer") && l.ends_with("DEVIATION")));
}

#[test]
fn status_against_the_active_table_in_json() {
    let lab = Lab::standby();
    let out = lab.swrepl(&["services", "status", "--role", "active", "--json"]);
    assert_exit(&out, 1);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(json["role"], "active");
    assert_eq!(json["matches"], false);
    let services = json["services"].as_array().expect("services");
    assert_eq!(services.len(), 11);
    let deviating: Vec<&str> = services
        .iter()
        .filter(|s| s["deviation"] == true)
        .map(|s| s["service"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(deviating, ORDER);
    assert_eq!(services[0]["actual"], "running");
}

#[test]
fn status_names_a_service_that_does_not_exist() {
    let lab = Lab::standby();
    lab.write_config_with(
        r#"start_order = ["SwServerService", "SwNoSuchService"]"#,
        "",
    );
    let out = lab.swrepl(&["services", "status"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("SwNoSuchService"), "{}", stderr(&out));
    assert!(stdout(&out).contains("query failed"), "{}", stdout(&out));
}

#[test]
fn status_reports_a_query_that_prints_nonsense() {
    let lab = Lab::standby();
    lab.mark("nonsense", "SwLogService");
    let out = lab.swrepl(&["services", "status"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("SwLogService") && err.contains("banana"),
        "{err}"
    );
}

#[test]
fn windows_backend_on_this_host_is_a_clear_error() {
    let lab = Lab::standby();
    std::fs::write(
        lab.path("config.toml"),
        "[services]\nbackend = \"windows\"\n",
    )
    .expect("config");
    let out = lab.swrepl(&["services", "status"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("only available on Windows"),
        "{}",
        stderr(&out)
    );
}

// ---- switchover ----

#[test]
fn switchover_starts_the_nine_services_in_the_runbook_order() {
    let lab = Lab::standby();
    let out = lab.swrepl(&["switchover", "--yes"]);
    assert_exit(&out, 0);
    assert_eq!(lab.order_log(), starts(&ORDER));
    for name in ALWAYS.iter().chain(&ORDER) {
        assert_eq!(lab.state(name), "running", "{name}");
    }
    let text = stdout(&out);
    assert!(
        text.contains("Before (expected: standby)") && text.contains("After (expected: active)")
    );
    let after = text
        .split("After (expected: active)")
        .nth(1)
        .unwrap_or_default();
    assert!(!after.contains("DEVIATION"), "{text}");
    let events = lab.events();
    assert_eq!(
        events.last().map(|e| e["outcome"].clone()),
        Some("completed".into())
    );

    let status = lab.swrepl(&["services", "status", "--role", "active"]);
    assert_exit(&status, 0);
}

#[test]
fn a_rerun_after_a_completed_switchover_does_nothing() {
    let lab = Lab::standby();
    assert_exit(&lab.swrepl(&["switchover", "--yes"]), 0);
    let before = lab.order_log();
    let again = lab.swrepl(&["switchover", "--yes"]);
    assert_exit(&again, 0);
    assert!(
        stdout(&again).contains("already switched over"),
        "{}",
        stdout(&again)
    );
    assert_eq!(lab.order_log(), before);
}

#[test]
fn switchover_honours_start_pending() {
    let lab = Lab::standby();
    lab.mark("slow", "SwCalendarService");
    let out = lab.swrepl(&["switchover", "--yes"]);
    assert_exit(&out, 0);
    assert_eq!(lab.order_log(), starts(&ORDER));
}

#[test]
fn switchover_refuses_while_files_are_not_caught_up() {
    let lab = Lab::standby();
    lab.write_receiver_status(3);
    let out = lab.swrepl(&["switchover", "--yes"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("3 acknowledged changes") && err.contains("--force"),
        "{err}"
    );
    assert!(lab.order_log().is_empty());
    assert_eq!(
        lab.events().last().map(|e| e["outcome"].clone()),
        Some("refused".into())
    );

    let forced = lab.swrepl(&["switchover", "--yes", "--force"]);
    assert_exit(&forced, 0);
    assert_eq!(lab.order_log(), starts(&ORDER));
    assert!(
        stdout(&forced).contains("overridden with --force"),
        "{}",
        stdout(&forced)
    );
}

#[test]
fn switchover_refuses_without_a_receiver_status_file() {
    let lab = Lab::standby();
    std::fs::remove_file(lab.path("receiver/.swrepl/status.json")).expect("remove status");
    let out = lab.swrepl(&["switchover", "--yes"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(lab.order_log().is_empty());
}

#[test]
fn a_service_that_fails_to_start_stops_the_sequence_and_is_named() {
    let lab = Lab::standby();
    lab.mark("fail", "SwMailService");
    let out = lab.swrepl(&["switchover", "--yes"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("stopped at service SwMailService"), "{err}");
    assert!(err.contains("lab failure"), "{err}");
    assert_eq!(lab.order_log(), starts(&ORDER[..5]));
    assert_eq!(lab.state("SwMailSchedule"), "stopped");
    assert_eq!(
        lab.events().last().map(|e| e["outcome"].clone()),
        Some("failed".into())
    );

    // Fixed, a re-run continues with the services not yet running.
    std::fs::remove_file(lab.path("fail/SwMailService")).expect("unmark");
    std::fs::remove_file(lab.path("order.log")).expect("reset log");
    assert_exit(&lab.swrepl(&["switchover", "--yes"]), 0);
    assert_eq!(lab.order_log(), starts(&ORDER[4..]));
}

#[test]
fn dry_run_changes_nothing() {
    let lab = Lab::standby();
    let out = lab.swrepl(&["switchover", "--dry-run"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("would proceed"), "{}", stdout(&out));
    assert!(lab.order_log().is_empty());
    for name in ORDER {
        assert_eq!(lab.state(name), "stopped");
    }

    lab.write_receiver_status(2);
    let refusing = lab.swrepl(&["switchover", "--dry-run"]);
    assert_exit(&refusing, 1);
    assert!(
        stdout(&refusing).contains("would refuse"),
        "{}",
        stdout(&refusing)
    );
    assert!(lab.order_log().is_empty());
}

#[test]
fn without_yes_and_without_a_terminal_it_refuses() {
    let lab = Lab::standby();
    let out = lab.swrepl(&["switchover"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert!(lab.order_log().is_empty());
    assert_eq!(
        lab.events().last().map(|e| e["outcome"].clone()),
        Some("cancelled".into())
    );
}

#[test]
fn an_unknown_service_touches_nothing() {
    let lab = Lab::standby();
    lab.write_config_with(
        r#"start_order = ["SwServerService", "SwNoSuchService", "SwFileService"]"#,
        "",
    );
    let out = lab.swrepl(&["switchover", "--yes", "--force"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("SwNoSuchService") && err.contains("no service was touched"),
        "{err}"
    );
    assert!(lab.order_log().is_empty());
}

#[test]
fn a_running_old_master_blocks_the_switchover() {
    let lab = Lab::standby();
    lab.write_config("master_probe = \"sh -c 'exit 0'\"");
    let out = lab.swrepl(&["switchover", "--yes"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("old Master still running"),
        "{}",
        stderr(&out)
    );
    assert!(lab.order_log().is_empty());
}

#[test]
fn a_successful_fence_allows_the_switchover_despite_the_probe() {
    let lab = Lab::standby();
    let fenced = lab.path("fenced");
    lab.write_config(&format!(
        "master_probe = \"sh -c 'exit 0'\"\nfence = \"touch '{}'\"",
        toml_str(&fenced)
    ));
    let out = lab.swrepl(&["switchover", "--yes"]);
    assert_exit(&out, 0);
    assert!(fenced.exists());
    assert_eq!(lab.order_log(), starts(&ORDER));
}

#[test]
fn a_failed_fence_needs_the_probe_to_show_the_master_down() {
    let lab = Lab::standby();
    lab.write_config(
        "master_probe = \"sh -c 'exit 0'\"\nfence = \"sh -c 'echo unreachable >&2; exit 1'\"",
    );
    let out = lab.swrepl(&["switchover", "--yes"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("fencing the old Master failed") && err.contains("unreachable"),
        "{err}"
    );
    assert!(lab.order_log().is_empty());

    lab.write_config("master_probe = \"sh -c 'exit 1'\"\nfence = \"sh -c 'exit 1'\"");
    assert_exit(&lab.swrepl(&["switchover", "--yes"]), 0);
    assert_eq!(lab.order_log(), starts(&ORDER));
}

#[test]
fn standby_stops_the_switched_services_in_reverse_order() {
    let lab = Lab::standby();
    assert_exit(&lab.swrepl(&["switchover", "--yes"]), 0);
    std::fs::remove_file(lab.path("order.log")).expect("reset log");
    let out = lab.swrepl(&["services", "standby", "--yes"]);
    assert_exit(&out, 0);
    let expected: Vec<String> = ORDER.iter().rev().map(|n| format!("stop {n}")).collect();
    assert_eq!(lab.order_log(), expected);
    assert_eq!(lab.state("SwSqlServer"), "running");
    assert_exit(&lab.swrepl(&["services", "status", "--role", "standby"]), 0);
}
