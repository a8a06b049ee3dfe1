//! The Windows service control manager backend against a real SCM (Windows only; CI runs it
//! under Wine with `.ci/wine-test`, whose services.exe implements the same API).
//!
//! Under Wine this exercises: connecting to the SCM, opening a service, mapping
//! ERROR_SERVICE_DOES_NOT_EXIST, querying the state, and starting and stopping Wine's own print
//! spooler service (`Spooler`, a demand-start service that Wine ships) with the waits the
//! switch-over uses. Wine's SCM does not enforce access rights, dependencies or recovery
//! actions, so those error paths are only type-checked.
#![cfg(windows)]

use std::time::Duration;

use swrepl_switchover::{
    start_and_wait, stop_and_wait, ServiceControl, ServiceError, ServiceState, WaitPolicy,
    WindowsBackend,
};

/// A demand-start service present on Windows and in every Wine prefix.
const SPOOLER: &str = "Spooler";

fn patient() -> WaitPolicy {
    WaitPolicy {
        timeout: Duration::from_secs(60),
        poll: Duration::from_millis(200),
    }
}

#[tokio::test]
async fn a_service_that_does_not_exist_is_reported_as_not_installed() {
    let scm = WindowsBackend::new();
    let err = scm.query("swrepl-no-such-service").await.unwrap_err();
    assert!(
        matches!(&err, ServiceError::NotInstalled { service } if service == "swrepl-no-such-service"),
        "{err:?}"
    );
    assert!(err.to_string().contains("is not installed"), "{err}");

    let err = scm.start("swrepl-no-such-service").await.unwrap_err();
    assert!(matches!(err, ServiceError::NotInstalled { .. }), "{err:?}");
    let err = scm.stop("swrepl-no-such-service").await.unwrap_err();
    assert!(matches!(err, ServiceError::NotInstalled { .. }), "{err:?}");
}

#[tokio::test]
async fn an_installed_service_is_queried_started_and_stopped() {
    let scm = WindowsBackend::new();
    let initial = scm.query(SPOOLER).await.expect("query the spooler");

    start_and_wait(&scm, SPOOLER, patient())
        .await
        .expect("start the spooler");
    assert_eq!(scm.query(SPOOLER).await.unwrap(), ServiceState::Running);
    // Starting a running service is not an error.
    scm.start(SPOOLER).await.expect("start it again");

    let stopped = stop_and_wait(&scm, SPOOLER, patient())
        .await
        .expect("stop the spooler");
    assert!(stopped, "it was running, so it was stopped");
    assert_eq!(scm.query(SPOOLER).await.unwrap(), ServiceState::Stopped);
    // Stopping a stopped service is not an error.
    scm.stop(SPOOLER).await.expect("stop it again");

    // Leave it as it was found.
    if initial == ServiceState::Running {
        start_and_wait(&scm, SPOOLER, patient()).await.unwrap();
    }
}
