//! `swrepl service …` off Windows: one line pointing at systemd, exit code 2.
#![cfg(not(windows))]

use std::process::Command;

fn swrepl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_swrepl"))
        .args(args)
        .output()
        .expect("run swrepl")
}

fn assert_windows_only(args: &[&str]) {
    let out = swrepl(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line expected: {stderr}");
    assert!(
        lines[0].contains("Windows service hosting is only available on Windows")
            && lines[0].contains("systemd"),
        "{args:?}: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
}

#[test]
fn service_install_off_windows_says_it_is_windows_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("master.toml");
    std::fs::write(&config, "[send]\n").unwrap();
    let config = config.to_str().unwrap();
    assert_windows_only(&["service", "install", "--role", "master", "--config", config]);
    assert!(
        !dir.path().join("swrepl-master.log").exists(),
        "no service log is created off Windows"
    );
}

#[test]
fn service_uninstall_and_run_off_windows_say_it_is_windows_only() {
    assert_windows_only(&["service", "uninstall", "--name", "swrepl-slave"]);
    assert_windows_only(&[
        "service",
        "run",
        "--role",
        "slave",
        "--config",
        "slave.toml",
    ]);
}
