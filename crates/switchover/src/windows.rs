//! The Windows service control manager backend (compiled on Windows only).
//!
//! Every SCM call blocks, so each operation runs on tokio's blocking pool. A connection to the
//! SCM is opened per operation: operations are rare (a switch-over starts nine services) and a
//! fresh handle cannot go stale across an SCM restart.

use windows_service::service::{ServiceAccess, ServiceState as ScmState};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

use crate::control::{ServiceControl, ServiceError};
use crate::state::ServiceState;

// Win32 error codes the backend gives a meaning to (winerror.h).
const ERROR_ACCESS_DENIED: i32 = 5;
const ERROR_DEPENDENT_SERVICES_RUNNING: i32 = 1051;
const ERROR_SERVICE_ALREADY_RUNNING: i32 = 1056;
const ERROR_SERVICE_DISABLED: i32 = 1058;
const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
const ERROR_SERVICE_NOT_ACTIVE: i32 = 1062;
const ERROR_SERVICE_DEPENDENCY_FAIL: i32 = 1068;

/// Services of the local computer's SCM.
#[derive(Debug, Clone, Default)]
pub struct WindowsBackend {}

impl WindowsBackend {
    pub fn new() -> Self {
        Self {}
    }
}

fn map_state(state: ScmState) -> ServiceState {
    match state {
        ScmState::Running => ServiceState::Running,
        ScmState::Stopped => ServiceState::Stopped,
        ScmState::StartPending | ScmState::ContinuePending => ServiceState::StartPending,
        ScmState::StopPending | ScmState::PausePending => ServiceState::StopPending,
        ScmState::Paused => ServiceState::Paused,
    }
}

fn os_code(error: &windows_service::Error) -> Option<i32> {
    match error {
        windows_service::Error::Winapi(io) => io.raw_os_error(),
        _ => None,
    }
}

fn scm_error(service: &str, action: &'static str, error: windows_service::Error) -> ServiceError {
    let message = match os_code(&error) {
        Some(ERROR_SERVICE_DOES_NOT_EXIST) => {
            return ServiceError::NotInstalled {
                service: service.to_owned(),
            }
        }
        Some(ERROR_ACCESS_DENIED) => {
            "access denied: run swrepl as an administrator or as LocalSystem".to_owned()
        }
        Some(ERROR_SERVICE_DISABLED) => {
            "the service is disabled: set its start type to Manual in services.msc".to_owned()
        }
        Some(ERROR_SERVICE_DEPENDENCY_FAIL) => {
            "a service it depends on did not start: start that one first".to_owned()
        }
        Some(ERROR_DEPENDENT_SERVICES_RUNNING) => {
            "services that depend on it are running: stop them first".to_owned()
        }
        _ => match &error {
            windows_service::Error::Winapi(io) => io.to_string(),
            other => other.to_string(),
        },
    };
    ServiceError::Windows {
        service: service.to_owned(),
        action,
        message,
    }
}

/// Runs a blocking SCM operation on the blocking pool.
async fn blocking<T, F>(service: &str, action: &'static str, op: F) -> Result<T, ServiceError>
where
    T: Send + 'static,
    F: FnOnce(String) -> Result<T, ServiceError> + Send + 'static,
{
    let name = service.to_owned();
    tokio::task::spawn_blocking(move || op(name))
        .await
        .map_err(|join| ServiceError::Windows {
            service: service.to_owned(),
            action,
            message: format!("the SCM call did not complete: {join}"),
        })?
}

fn open(
    name: &str,
    action: &'static str,
    access: ServiceAccess,
) -> Result<windows_service::service::Service, ServiceError> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| scm_error(name, action, e))?;
    manager
        .open_service(name, access)
        .map_err(|e| scm_error(name, action, e))
}

impl ServiceControl for WindowsBackend {
    fn backend_name(&self) -> &'static str {
        "windows"
    }

    async fn query(&self, name: &str) -> Result<ServiceState, ServiceError> {
        blocking(name, "query", |name| {
            let service = open(&name, "query", ServiceAccess::QUERY_STATUS)?;
            let status = service
                .query_status()
                .map_err(|e| scm_error(&name, "query", e))?;
            Ok(map_state(status.current_state))
        })
        .await
    }

    async fn start(&self, name: &str) -> Result<(), ServiceError> {
        blocking(name, "start", |name| {
            let service = open(
                &name,
                "start",
                ServiceAccess::START | ServiceAccess::QUERY_STATUS,
            )?;
            match service.start::<&str>(&[]) {
                Ok(()) => Ok(()),
                Err(e) if os_code(&e) == Some(ERROR_SERVICE_ALREADY_RUNNING) => Ok(()),
                Err(e) => Err(scm_error(&name, "start", e)),
            }
        })
        .await
    }

    async fn stop(&self, name: &str) -> Result<(), ServiceError> {
        blocking(name, "stop", |name| {
            let service = open(
                &name,
                "stop",
                ServiceAccess::STOP | ServiceAccess::QUERY_STATUS,
            )?;
            match service.stop() {
                Ok(_) => Ok(()),
                Err(e) if os_code(&e) == Some(ERROR_SERVICE_NOT_ACTIVE) => Ok(()),
                Err(e) => Err(scm_error(&name, "stop", e)),
            }
        })
        .await
    }
}
