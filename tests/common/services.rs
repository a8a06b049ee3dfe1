//! A lab service manager for end-to-end tests: `mysvc`, a small shell script that keeps each
//! service's state in `state/NAME` and appends every start and stop to `order.log`, driven by
//! swrepl's `command` backend. Include with `#[path = "common/services.rs"] mod services;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The script (the same protocol as the one in `tests/switchover.rs`).
pub const MYSVC: &str = r#"#!/bin/sh
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
    cat "$state"
    ;;
start)
    echo "start $name" >> "$dir/order.log"
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

pub const ALWAYS: [&str; 2] = ["SwSqlServer", "SwHttpServer"];
pub const ORDER: [&str; 9] = [
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

/// One host's services in a directory of its own.
pub struct Services {
    pub dir: PathBuf,
}

impl Services {
    /// The runbook's standby state (only SwSqlServer and SwHttpServer running).
    pub fn standby(dir: &Path) -> Self {
        Self::with(dir, "stopped")
    }

    /// All eleven running (the Master, or a Slave after a switch-over).
    pub fn active(dir: &Path) -> Self {
        Self::with(dir, "running")
    }

    fn with(dir: &Path, switched: &str) -> Self {
        std::fs::create_dir_all(dir.join("state")).expect("lab dirs");
        std::fs::write(dir.join("mysvc"), MYSVC).expect("write mysvc");
        let services = Self {
            dir: dir.to_owned(),
        };
        for name in ALWAYS {
            services.set_state(name, "running");
        }
        for name in ORDER {
            services.set_state(name, switched);
        }
        services
    }

    pub fn set_state(&self, name: &str, state: &str) {
        std::fs::write(self.dir.join("state").join(name), format!("{state}\n")).expect("state");
    }

    /// The `[services]` table that drives this lab.
    pub fn table(&self) -> String {
        let script = toml_str(&self.dir.join("mysvc"));
        format!(
            "[services]\nbackend = \"command\"\nstart = \"sh '{script}' start {{name}}\"\nstop = \"sh '{script}' stop {{name}}\"\nquery = \"sh '{script}' query {{name}}\"\n"
        )
    }

    /// The starts and stops seen, in order.
    pub fn order_log(&self) -> Vec<String> {
        match std::fs::read_to_string(self.dir.join("order.log")) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// A path as a TOML basic-string body.
pub fn toml_str(path: &Path) -> String {
    path.display().to_string().replace('\\', "\\\\")
}

pub fn starts(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("start {n}")).collect()
}
