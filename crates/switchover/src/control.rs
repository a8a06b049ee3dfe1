//! The service-control trait, its errors, and the waits built on it.
//!
//! The trait is async because two of its three backends run external programs, which must be
//! bounded by a timeout without blocking a runtime thread, and because its callers (the
//! switch-over and the receiver's monitor) live on the tokio runtime and poll services while
//! other work continues. The Windows backend's blocking SCM calls run on `spawn_blocking`.
//! The methods return `impl Future + Send` so the futures can be spawned; dispatch between
//! backends is static, through [`crate::Backend`], not `dyn`.

use std::future::Future;
use std::time::Duration;

use crate::command::CommandError;
use crate::state::ServiceState;

/// Reads and changes the state of services on this host.
pub trait ServiceControl: Send + Sync {
    /// Short name for messages: `windows`, `systemd`, `command`.
    fn backend_name(&self) -> &'static str;

    /// The current state of `name`. An unknown service is [`ServiceError::NotInstalled`].
    fn query(&self, name: &str) -> impl Future<Output = Result<ServiceState, ServiceError>> + Send;

    /// Asks the service manager to start `name`. May return before it is running: use
    /// [`start_and_wait`] to wait. Starting a running service is not an error.
    fn start(&self, name: &str) -> impl Future<Output = Result<(), ServiceError>> + Send;

    /// Asks the service manager to stop `name`. Stopping a stopped service is not an error.
    fn stop(&self, name: &str) -> impl Future<Output = Result<(), ServiceError>> + Send;
}

/// A service operation that failed. Every variant names the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("service {service} is not installed on this host (check the name in [services])")]
    NotInstalled { service: String },
    #[error("the query for service {service} printed {output:?}, which is not a state: the query command must print one of running, stopped, start_pending, stop_pending, paused")]
    UnrecognisedState { service: String, output: String },
    #[error("cannot {action} service {service}: `{command}` failed with {summary}")]
    CommandFailed {
        service: String,
        action: &'static str,
        command: String,
        summary: String,
    },
    #[error("cannot {action} service {service}: {source}")]
    Command {
        service: String,
        action: &'static str,
        #[source]
        source: CommandError,
    },
    #[error("service {service} did not reach running within {seconds} s (last state: {last}); see its log, start it by hand, then re-run")]
    StartTimeout {
        service: String,
        seconds: u64,
        last: ServiceState,
    },
    #[error("service {service} stopped again while starting; see its log, fix it, then re-run")]
    StoppedWhileStarting { service: String },
    #[error("service {service} did not stop within {seconds} s (last state: {last})")]
    StopTimeout {
        service: String,
        seconds: u64,
        last: ServiceState,
    },
    #[error("cannot {action} service {service} through the Windows service manager: {message}")]
    Windows {
        service: String,
        action: &'static str,
        message: String,
    },
}

impl ServiceError {
    /// The service the error is about.
    pub fn service(&self) -> &str {
        match self {
            ServiceError::NotInstalled { service }
            | ServiceError::UnrecognisedState { service, .. }
            | ServiceError::CommandFailed { service, .. }
            | ServiceError::Command { service, .. }
            | ServiceError::StartTimeout { service, .. }
            | ServiceError::StoppedWhileStarting { service }
            | ServiceError::StopTimeout { service, .. }
            | ServiceError::Windows { service, .. } => service,
        }
    }
}

/// How long to wait for state changes and how often to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    /// Longest wait for one service (the default: 120 s).
    pub timeout: Duration,
    /// Pause between queries.
    pub poll: Duration,
}

impl Default for WaitPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            poll: Duration::from_millis(500),
        }
    }
}

/// Starts `name` unless it is running, then waits until it reports running.
///
/// Start-pending is honoured: the wait goes on while the service is starting, up to
/// `wait.timeout`. A service seen starting and then stopped fails at once instead of waiting out
/// the timeout. Returns `Ok(false)` when the service was already running (nothing done).
pub async fn start_and_wait<S: ServiceControl>(
    control: &S,
    name: &str,
    wait: WaitPolicy,
) -> Result<bool, ServiceError> {
    if control.query(name).await? == ServiceState::Running {
        return Ok(false);
    }
    tracing::info!(service = name, "starting");
    control.start(name).await?;
    wait_for_running(control, name, wait).await?;
    tracing::info!(service = name, "running");
    Ok(true)
}

async fn wait_for_running<S: ServiceControl>(
    control: &S,
    name: &str,
    wait: WaitPolicy,
) -> Result<(), ServiceError> {
    let deadline = tokio::time::Instant::now() + wait.timeout;
    let mut seen_pending = false;
    loop {
        let state = control.query(name).await?;
        match state {
            ServiceState::Running => return Ok(()),
            ServiceState::StartPending => seen_pending = true,
            ServiceState::Stopped if seen_pending => {
                return Err(ServiceError::StoppedWhileStarting {
                    service: name.to_owned(),
                })
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ServiceError::StartTimeout {
                service: name.to_owned(),
                seconds: wait.timeout.as_secs(),
                last: state,
            });
        }
        tokio::time::sleep(wait.poll).await;
    }
}

/// Stops `name` unless it is stopped, then waits until it reports stopped.
/// Returns `Ok(false)` when it was already stopped.
pub async fn stop_and_wait<S: ServiceControl>(
    control: &S,
    name: &str,
    wait: WaitPolicy,
) -> Result<bool, ServiceError> {
    if control.query(name).await? == ServiceState::Stopped {
        return Ok(false);
    }
    tracing::info!(service = name, "stopping");
    control.stop(name).await?;
    let deadline = tokio::time::Instant::now() + wait.timeout;
    loop {
        let state = control.query(name).await?;
        if state == ServiceState::Stopped {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ServiceError::StopTimeout {
                service: name.to_owned(),
                seconds: wait.timeout.as_secs(),
                last: state,
            });
        }
        tokio::time::sleep(wait.poll).await;
    }
}
