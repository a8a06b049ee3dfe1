//! The service-control backends and the `[services]` configuration that chooses one.

use std::time::Duration;

use serde::Deserialize;

use crate::command::{display_argv, run_argv, CommandTemplate, TemplateError};
use crate::control::{ServiceControl, ServiceError};
use crate::runbook::{NameError, ServiceSet};
use crate::state::ServiceState;

/// Default limit on one service-manager command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Which service manager to talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// The Windows service control manager (Windows only).
    Windows,
    /// `systemctl` (Linux hosts and labs).
    Systemd,
    /// Operator-supplied command templates.
    Command,
}

impl BackendKind {
    /// `windows` on Windows, `systemd` elsewhere.
    pub fn native() -> Self {
        if cfg!(windows) {
            BackendKind::Windows
        } else {
            BackendKind::Systemd
        }
    }
}

/// The `[services]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesConfig {
    /// Default: `windows` on Windows, `systemd` elsewhere.
    pub backend: Option<BackendKind>,
    /// `command` backend: template that starts `{name}`.
    pub start: Option<String>,
    /// `command` backend: template that stops `{name}`.
    pub stop: Option<String>,
    /// `command` backend: template that prints the state of `{name}`.
    pub query: Option<String>,
    /// Limit on each service-manager command, in seconds (default 60).
    pub timeout_seconds: Option<u64>,
    /// Services running on both servers (default SwSqlServer, SwHttpServer).
    pub always_running: Option<Vec<String>>,
    /// Services a switch-over starts, in order (default: the runbook's nine).
    pub start_order: Option<Vec<String>>,
}

/// A `[services]` table that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("[services] backend = \"windows\" is only available on Windows: use \"systemd\" or \"command\" on this host")]
    WindowsOnly,
    #[error("[services] backend = \"command\" needs `{key}`, a command template such as \"mysvc {key} {{name}}\"")]
    MissingTemplate { key: &'static str },
    #[error("[services] {key} = {template:?} does not contain {{name}}: the service name must be passed to the command")]
    TemplateWithoutName { key: &'static str, template: String },
    #[error("[services] {key}: {source}")]
    Template {
        key: &'static str,
        #[source]
        source: TemplateError,
    },
    #[error("[services] {key} is only used by backend = \"command\": remove it, or set backend = \"command\"")]
    TemplateNotUsed { key: &'static str },
    #[error("[services] timeout_seconds must be at least 1")]
    ZeroTimeout,
    #[error(transparent)]
    Names(#[from] NameError),
}

impl ServicesConfig {
    /// The service names and order: the operator's lists, or the runbook's defaults.
    pub fn service_set(&self) -> Result<ServiceSet, ConfigError> {
        let runbook = ServiceSet::runbook();
        let always = self
            .always_running
            .clone()
            .unwrap_or_else(|| runbook.always_running().to_vec());
        let order = self
            .start_order
            .clone()
            .unwrap_or_else(|| runbook.start_order().to_vec());
        Ok(ServiceSet::new(always, order)?)
    }

    /// The limit on each service-manager command.
    pub fn command_timeout(&self) -> Result<Duration, ConfigError> {
        match self.timeout_seconds {
            None => Ok(DEFAULT_COMMAND_TIMEOUT),
            Some(0) => Err(ConfigError::ZeroTimeout),
            Some(s) => Ok(Duration::from_secs(s)),
        }
    }

    /// Builds the configured backend; nothing is run yet.
    pub fn backend(&self) -> Result<Backend, ConfigError> {
        let timeout = self.command_timeout()?;
        let kind = self.backend.unwrap_or_else(BackendKind::native);
        if kind != BackendKind::Command {
            for (key, value) in [
                ("start", &self.start),
                ("stop", &self.stop),
                ("query", &self.query),
            ] {
                if value.is_some() {
                    return Err(ConfigError::TemplateNotUsed { key });
                }
            }
        }
        match kind {
            BackendKind::Command => Ok(Backend::Command(CommandBackend::new(
                template("start", &self.start)?,
                template("stop", &self.stop)?,
                template("query", &self.query)?,
                timeout,
            ))),
            BackendKind::Systemd => Ok(Backend::Systemd(SystemdBackend::new(timeout))),
            BackendKind::Windows => windows_backend(),
        }
    }
}

fn template(key: &'static str, value: &Option<String>) -> Result<CommandTemplate, ConfigError> {
    let text = value
        .as_deref()
        .ok_or(ConfigError::MissingTemplate { key })?;
    let parsed =
        CommandTemplate::parse(text).map_err(|source| ConfigError::Template { key, source })?;
    if !parsed.mentions_name() {
        return Err(ConfigError::TemplateWithoutName {
            key,
            template: text.to_owned(),
        });
    }
    Ok(parsed)
}

#[cfg(windows)]
fn windows_backend() -> Result<Backend, ConfigError> {
    Ok(Backend::Windows(crate::windows::WindowsBackend::new()))
}

#[cfg(not(windows))]
fn windows_backend() -> Result<Backend, ConfigError> {
    Err(ConfigError::WindowsOnly)
}

/// One of the backends, chosen by configuration.
#[derive(Debug, Clone)]
pub enum Backend {
    Command(CommandBackend),
    Systemd(SystemdBackend),
    #[cfg(windows)]
    Windows(crate::windows::WindowsBackend),
}

impl ServiceControl for Backend {
    fn backend_name(&self) -> &'static str {
        match self {
            Backend::Command(b) => b.backend_name(),
            Backend::Systemd(b) => b.backend_name(),
            #[cfg(windows)]
            Backend::Windows(b) => b.backend_name(),
        }
    }

    async fn query(&self, name: &str) -> Result<ServiceState, ServiceError> {
        match self {
            Backend::Command(b) => b.query(name).await,
            Backend::Systemd(b) => b.query(name).await,
            #[cfg(windows)]
            Backend::Windows(b) => b.query(name).await,
        }
    }

    async fn start(&self, name: &str) -> Result<(), ServiceError> {
        match self {
            Backend::Command(b) => b.start(name).await,
            Backend::Systemd(b) => b.start(name).await,
            #[cfg(windows)]
            Backend::Windows(b) => b.start(name).await,
        }
    }

    async fn stop(&self, name: &str) -> Result<(), ServiceError> {
        match self {
            Backend::Command(b) => b.stop(name).await,
            Backend::Systemd(b) => b.stop(name).await,
            #[cfg(windows)]
            Backend::Windows(b) => b.stop(name).await,
        }
    }
}

/// Runs `argv` for `action` on `service`; a non-zero exit is an error naming both.
async fn run_checked(
    service: &str,
    action: &'static str,
    argv: Vec<String>,
    timeout: Duration,
) -> Result<String, ServiceError> {
    let output = run_argv(&argv, timeout)
        .await
        .map_err(|source| ServiceError::Command {
            service: service.to_owned(),
            action,
            source,
        })?;
    if !output.success() {
        return Err(ServiceError::CommandFailed {
            service: service.to_owned(),
            action,
            command: display_argv(&argv),
            summary: output.summary(),
        });
    }
    Ok(output.stdout)
}

/// Services driven by the operator's command templates.
///
/// `start` and `stop` must exit 0 on success. `query` must print one state word; its exit code
/// is ignored when it prints a valid state (LSB-style status commands exit 3 for "stopped"), and
/// reported when it does not.
#[derive(Debug, Clone)]
pub struct CommandBackend {
    start: CommandTemplate,
    stop: CommandTemplate,
    query: CommandTemplate,
    timeout: Duration,
}

impl CommandBackend {
    pub fn new(
        start: CommandTemplate,
        stop: CommandTemplate,
        query: CommandTemplate,
        timeout: Duration,
    ) -> Self {
        Self {
            start,
            stop,
            query,
            timeout,
        }
    }
}

impl ServiceControl for CommandBackend {
    fn backend_name(&self) -> &'static str {
        "command"
    }

    async fn query(&self, name: &str) -> Result<ServiceState, ServiceError> {
        let argv = self.query.argv(name);
        let output =
            run_argv(&argv, self.timeout)
                .await
                .map_err(|source| ServiceError::Command {
                    service: name.to_owned(),
                    action: "query",
                    source,
                })?;
        match output.stdout.parse::<ServiceState>() {
            Ok(state) => Ok(state),
            Err(_) if !output.success() => Err(ServiceError::CommandFailed {
                service: name.to_owned(),
                action: "query",
                command: display_argv(&argv),
                summary: output.summary(),
            }),
            Err(_) => Err(ServiceError::UnrecognisedState {
                service: name.to_owned(),
                output: output.stdout.trim().chars().take(200).collect(),
            }),
        }
    }

    async fn start(&self, name: &str) -> Result<(), ServiceError> {
        run_checked(name, "start", self.start.argv(name), self.timeout).await?;
        Ok(())
    }

    async fn stop(&self, name: &str) -> Result<(), ServiceError> {
        run_checked(name, "stop", self.stop.argv(name), self.timeout).await?;
        Ok(())
    }
}

/// Services managed by systemd, through `systemctl`.
///
/// `query` reads `LoadState` and `ActiveState` with `systemctl show` (so an unknown unit is
/// reported as not installed rather than as "inactive"); `start` and `stop` run
/// `systemctl start|stop NAME`, which wait for the job and print systemd's reason on failure.
#[derive(Debug, Clone)]
pub struct SystemdBackend {
    program: String,
    timeout: Duration,
}

impl SystemdBackend {
    pub fn new(timeout: Duration) -> Self {
        Self {
            program: "systemctl".to_owned(),
            timeout,
        }
    }

    fn argv(&self, args: &[&str]) -> Vec<String> {
        std::iter::once(self.program.as_str())
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect()
    }
}

/// Maps `systemctl show -p LoadState -p ActiveState` output to a state.
fn parse_systemd_show(name: &str, output: &str) -> Result<ServiceState, ServiceError> {
    let value = |key: &str| {
        output
            .lines()
            .find_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
    };
    if value("LoadState") == Some("not-found") {
        return Err(ServiceError::NotInstalled {
            service: name.to_owned(),
        });
    }
    let state = match value("ActiveState") {
        Some("active" | "reloading" | "refreshing") => ServiceState::Running,
        Some("inactive" | "failed" | "dead") => ServiceState::Stopped,
        Some("activating") => ServiceState::StartPending,
        Some("deactivating" | "maintenance") => ServiceState::StopPending,
        _ => {
            return Err(ServiceError::UnrecognisedState {
                service: name.to_owned(),
                output: output.trim().chars().take(200).collect(),
            })
        }
    };
    Ok(state)
}

impl ServiceControl for SystemdBackend {
    fn backend_name(&self) -> &'static str {
        "systemd"
    }

    async fn query(&self, name: &str) -> Result<ServiceState, ServiceError> {
        let argv = self.argv(&[
            "show",
            "--property=LoadState",
            "--property=ActiveState",
            "--",
            name,
        ]);
        let output = run_checked(name, "query", argv, self.timeout).await?;
        parse_systemd_show(name, &output)
    }

    async fn start(&self, name: &str) -> Result<(), ServiceError> {
        run_checked(
            name,
            "start",
            self.argv(&["start", "--", name]),
            self.timeout,
        )
        .await?;
        Ok(())
    }

    async fn stop(&self, name: &str) -> Result<(), ServiceError> {
        run_checked(name, "stop", self.argv(&["stop", "--", name]), self.timeout).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> ServicesConfig {
        serde_json::from_value(toml_like(toml_text)).unwrap()
    }

    // The crate has no toml dependency; the tests write the table as JSON.
    fn toml_like(json: &str) -> serde_json::Value {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn systemd_show_output_is_mapped() {
        let show = |s: &str| parse_systemd_show("x", s);
        assert_eq!(
            show("LoadState=loaded\nActiveState=active\n").unwrap(),
            ServiceState::Running
        );
        assert_eq!(
            show("LoadState=loaded\nActiveState=failed").unwrap(),
            ServiceState::Stopped
        );
        assert_eq!(
            show("ActiveState=activating\nLoadState=loaded").unwrap(),
            ServiceState::StartPending
        );
        assert!(matches!(
            show("LoadState=not-found\nActiveState=inactive"),
            Err(ServiceError::NotInstalled { .. })
        ));
        assert!(matches!(
            show("garbage"),
            Err(ServiceError::UnrecognisedState { .. })
        ));
    }

    #[test]
    fn command_backend_needs_three_templates_with_name() {
        let err = config(r#"{"backend":"command","start":"s {name}","stop":"s {name}"}"#)
            .backend()
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::MissingTemplate { key: "query" }),
            "{err}"
        );
        let err =
            config(r#"{"backend":"command","start":"s","stop":"s {name}","query":"q {name}"}"#)
                .backend()
                .unwrap_err();
        assert!(
            matches!(err, ConfigError::TemplateWithoutName { key: "start", .. }),
            "{err}"
        );
        let ok = config(
            r#"{"backend":"command","start":"s {name}","stop":"s {name}","query":"q {name}"}"#,
        );
        assert_eq!(ok.backend().unwrap().backend_name(), "command");
    }

    #[test]
    fn templates_with_another_backend_are_refused() {
        let err = config(r#"{"backend":"systemd","start":"s {name}"}"#)
            .backend()
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::TemplateNotUsed { key: "start" }),
            "{err}"
        );
    }

    #[cfg(not(windows))]
    #[test]
    fn windows_backend_elsewhere_is_a_clear_error() {
        let err = config(r#"{"backend":"windows"}"#).backend().unwrap_err();
        assert!(
            err.to_string().contains("only available on Windows"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let result: Result<ServicesConfig, _> = serde_json::from_str(r#"{"bakend":"command"}"#);
        assert!(result.is_err());
    }

    #[test]
    fn names_default_to_the_runbook_and_can_be_overridden() {
        let set = config("{}").service_set().unwrap();
        assert_eq!(set.start_order().len(), 9);
        let set = config(r#"{"always_running":[],"start_order":["app"]}"#)
            .service_set()
            .unwrap();
        assert_eq!(set.all().collect::<Vec<_>>(), ["app"]);
        assert!(config(r#"{"start_order":["bad name"]}"#)
            .service_set()
            .is_err());
    }
}
