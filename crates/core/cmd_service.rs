//! `swrepl service install|uninstall|run`: hosting `swrepl send` (Master) or `swrepl receive`
//! (Slave) as a Windows service.
//!
//! `install` registers a service that starts automatically, runs
//! `swrepl.exe service run --role R --config FILE --name NAME`, and is restarted by the SCM when it
//! fails. `run` is what the SCM starts: it answers Stop and Shutdown by resolving the same shutdown
//! future `send`/`receive` take from Ctrl-C, so the pass in flight finishes and state is flushed.
//! In service mode the log goes to `swrepl-<role>.log` beside the config file (renamed to
//! `.log.1` at start once over 10 MiB), and errors, switch-over steps and the service's own
//! start and stop also go to the Windows Event Log (Application log, source = service name,
//! registered by `install` and removed by `uninstall`; see [`event_log_kind`]).
//!
//! Off Windows every subcommand exits 2 with one line pointing at systemd.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tracing::field::{Field, Visit};
use tracing::Level;

/// `swrepl service`: install, remove or run swrepl as a Windows service.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: ServiceCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ServiceCommand {
    /// Register the service (automatic start, restart on failure). Run as an administrator.
    Install(InstallArgs),
    /// Stop and remove the service.
    Uninstall(UninstallArgs),
    /// The service's entry point, started by the service control manager (not by hand).
    Run(InstallArgs),
}

/// Which side this machine runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The live server: runs `swrepl send` with the config's `[send]` table.
    Master,
    /// The warm standby: runs `swrepl receive` with the config's `[receive]` table.
    Slave,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Slave => "slave",
        }
    }

    /// The service name used when `--name` is not given.
    fn default_service_name(self) -> String {
        format!("swrepl-{}", self.as_str())
    }

    #[cfg_attr(not(windows), allow(dead_code))]
    fn display_name(self) -> &'static str {
        match self {
            Role::Master => "swrepl Master sender",
            Role::Slave => "swrepl Slave receiver",
        }
    }
}

#[derive(clap::Args, Debug)]
struct InstallArgs {
    /// master (runs `send`) or slave (runs `receive`).
    #[arg(long, value_enum)]
    role: Role,
    /// The TOML config file the service runs with (its `[send]` or `[receive]` table).
    #[arg(long)]
    config: PathBuf,
    /// Service name (default swrepl-master or swrepl-slave).
    #[arg(long)]
    name: Option<String>,
}

impl InstallArgs {
    #[cfg_attr(not(windows), allow(dead_code))]
    fn service_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.role.default_service_name())
    }
}

#[derive(clap::Args, Debug)]
struct UninstallArgs {
    /// Service name (default: swrepl-<role> with --role, else whichever of swrepl-master and
    /// swrepl-slave is installed).
    #[arg(long)]
    name: Option<String>,
    /// The role the service was installed with (picks its default name).
    #[arg(long, value_enum, conflicts_with = "name")]
    role: Option<Role>,
}

/// The one line printed off Windows.
#[cfg(not(windows))]
const NOT_WINDOWS: &str = "Windows service hosting is only available on Windows; on Linux run \
    `swrepl send/receive` under systemd: see README";

/// Runs `swrepl service …`. Sets up logging itself (`log_filter` is `--log`): to stderr for
/// install/uninstall, to a file for the service.
pub async fn run(args: Args, log_filter: &str) -> anyhow::Result<ExitCode> {
    #[cfg(windows)]
    {
        windows::run(args, log_filter).await
    }
    #[cfg(not(windows))]
    {
        let _ = (args, log_filter);
        anyhow::bail!(NOT_WINDOWS)
    }
}

/// `swrepl-<role>.log` in the config file's directory.
#[cfg_attr(not(windows), allow(dead_code))]
fn log_path(config: &Path, role: Role) -> PathBuf {
    let dir = config.parent().unwrap_or_else(|| Path::new("."));
    dir.join(format!("swrepl-{}.log", role.as_str()))
}

/// Above this size the log is moved to `<name>.1` when the service starts.
#[cfg_attr(not(windows), allow(dead_code))]
const LOG_ROTATE_BYTES: u64 = 10 * 1024 * 1024;

/// Moves `path` to `path.1` (replacing an older one) when it is over `limit` bytes; then opens it
/// for appending.
#[cfg_attr(not(windows), allow(dead_code))]
fn open_rotated_log(path: &Path, limit: u64) -> std::io::Result<std::fs::File> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > limit) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        // rename replaces an existing `.1` on Windows too (MoveFileEx with REPLACE_EXISTING).
        std::fs::rename(path, &old)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The Event Log entry type of a log event that goes to the Windows Event Log.
#[cfg_attr(not(windows), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Error,
    Warning,
    Information,
}

impl EventKind {
    /// The event id written with it (the message file shows the text whatever the id).
    #[cfg_attr(not(windows), allow(dead_code))]
    fn event_id(self) -> u32 {
        match self {
            EventKind::Error => 1,
            EventKind::Warning => 2,
            EventKind::Information => 3,
        }
    }
}

/// Words that mark a log line an operator must find in the Event Log even when it is not an
/// error: switch-over and promotion steps, the service starting and stopping, and a file that
/// cannot be replicated because another process holds it locked (once when it is found locked,
/// once when it is replicated again).
#[cfg_attr(not(windows), allow(dead_code))]
const EVENT_LOG_WORDS: &[&str] = &[
    "switch-over",
    "switchover",
    "switched over",
    "promoted",
    "promoting",
    "fenced",
    "fencing",
    "service running",
    "service stopped",
    "stop requested",
    "locked by another process",
    "no longer locked",
];

/// Whether (and as what) a log event goes to the Windows Event Log: every error; warnings and
/// information about switch-overs and the service's life. The rest (per-file detail) stays in
/// the log file, so the Event Log is not flooded.
#[cfg_attr(not(windows), allow(dead_code))]
pub fn event_log_kind(level: Level, message: &str) -> Option<EventKind> {
    if level == Level::ERROR {
        return Some(EventKind::Error);
    }
    let lower = message.to_lowercase();
    if !EVENT_LOG_WORDS.iter().any(|word| lower.contains(word)) {
        return None;
    }
    match level {
        Level::WARN => Some(EventKind::Warning),
        Level::INFO => Some(EventKind::Information),
        _ => None,
    }
}

/// A log event's text: its message, then its other fields as `name=value`.
#[cfg_attr(not(windows), allow(dead_code))]
#[derive(Default)]
struct EventText {
    message: String,
    fields: String,
}

impl Visit for EventText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

/// A tracing layer that hands the events [`event_log_kind`] selects, with their text, to
/// `sink` (on Windows: `ReportEventW`).
#[cfg_attr(not(windows), allow(dead_code))]
pub struct EventLogLayer<F> {
    sink: F,
}

#[cfg_attr(not(windows), allow(dead_code))]
impl<F: Fn(EventKind, &str) + Send + Sync + 'static> EventLogLayer<F> {
    pub fn new(sink: F) -> Self {
        EventLogLayer { sink }
    }
}

impl<S, F> tracing_subscriber::Layer<S> for EventLogLayer<F>
where
    S: tracing::Subscriber,
    F: Fn(EventKind, &str) + Send + Sync + 'static,
{
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut text = EventText::default();
        event.record(&mut text);
        if let Some(kind) = event_log_kind(*event.metadata().level(), &text.message) {
            (self.sink)(kind, &format!("{}{}", text.message, text.fields));
        }
    }
}

/// `\\?\C:\x` → `C:\x` and `\\?\UNC\host\share` → `\\host\share`: the SCM stores the command
/// line verbatim and operators read it in services.msc.
#[cfg_attr(not(windows), allow(dead_code))]
fn strip_verbatim(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    if let Some(rest) = text.strip_prefix(r"\\?\UNC\") {
        PathBuf::from(format!(r"\\{rest}"))
    } else if let Some(rest) = text.strip_prefix(r"\\?\") {
        PathBuf::from(rest)
    } else {
        path.to_path_buf()
    }
}

#[cfg(windows)]
mod windows {
    //! The SCM side: install/uninstall through the service manager, and the dispatcher.

    use std::ffi::{OsStr, OsString};
    use std::process::ExitCode;
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    use anyhow::{bail, Context};
    use clap::{Args as _, FromArgMatches};
    use windows_service::service::{
        ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
        ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
        ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
    };
    use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
    use windows_service::{define_windows_service, service_dispatcher};

    use super::{
        log_path, open_rotated_log, strip_verbatim, Args, EventLogLayer, InstallArgs, Role,
        ServiceCommand, UninstallArgs, LOG_ROTATE_BYTES,
    };
    use crate::cmd_files;

    const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
    const ERROR_SERVICE_NOT_ACTIVE: i32 = 1062;
    const ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: i32 = 1063;
    const ERROR_INVALID_LEVEL: i32 = 124;
    /// How long a pass may take to wind down after Stop before the SCM gives up on us.
    const STOP_WAIT_HINT: Duration = Duration::from_secs(60);

    pub async fn run(args: Args, log_filter: &str) -> anyhow::Result<ExitCode> {
        match args.command {
            ServiceCommand::Install(args) => {
                init_stderr_logging(log_filter);
                install(&args)
            }
            ServiceCommand::Uninstall(args) => {
                init_stderr_logging(log_filter);
                uninstall(&args)
            }
            ServiceCommand::Run(args) => dispatch(args, log_filter),
        }
    }

    fn init_stderr_logging(filter: &str) {
        let filter = tracing_subscriber::EnvFilter::try_new(filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .init();
    }

    /// The log file (at the `--log` level) plus the Windows Event Log (see
    /// [`super::event_log_kind`]), whose source is the service name.
    fn init_file_logging(filter: &str, args: &InstallArgs) -> anyhow::Result<()> {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        use tracing_subscriber::Layer as _;

        let path = log_path(&args.config, args.role);
        let file = open_rotated_log(&path, LOG_ROTATE_BYTES)
            .with_context(|| format!("cannot open the service log {}", path.display()))?;
        let filter = tracing_subscriber::EnvFilter::try_new(filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let file_layer = tracing_subscriber::fmt::layer()
            .with_writer(Mutex::new(file))
            .with_ansi(false)
            .with_target(false)
            .with_filter(filter);
        let name = args.service_name();
        let source = event_log::EventSource::open(&name);
        let opened = source.is_ok();
        let event_layer = source.ok().map(|source| {
            EventLogLayer::new(move |kind, text| source.report(kind, text))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
        });
        tracing_subscriber::registry()
            .with(file_layer)
            .with(event_layer)
            .init();
        if !opened {
            tracing::warn!(service = %name, "cannot open the Windows Event Log: {}; logging to the file only", std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn absolute_config(config: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
        let full = std::fs::canonicalize(config)
            .with_context(|| format!("cannot find the config file {}", config.display()))?;
        Ok(strip_verbatim(&full))
    }

    /// Builds the `send`/`receive` arguments exactly as `swrepl send --config FILE` would.
    fn send_args(config: &std::path::Path) -> anyhow::Result<cmd_files::SendArgs> {
        let command = cmd_files::SendArgs::augment_args(clap::Command::new("send"));
        let matches = command.try_get_matches_from([
            OsStr::new("send"),
            "--config".as_ref(),
            config.as_os_str(),
        ])?;
        Ok(cmd_files::SendArgs::from_arg_matches(&matches)?)
    }

    fn receive_args(config: &std::path::Path) -> anyhow::Result<cmd_files::ReceiveArgs> {
        let command = cmd_files::ReceiveArgs::augment_args(clap::Command::new("receive"));
        let matches = command.try_get_matches_from([
            OsStr::new("receive"),
            "--config".as_ref(),
            config.as_os_str(),
        ])?;
        Ok(cmd_files::ReceiveArgs::from_arg_matches(&matches)?)
    }

    /// Reads the config as the service will, so a broken config fails the install, not the boot.
    fn check_config(role: Role, config: &std::path::Path) -> anyhow::Result<()> {
        match role {
            Role::Master => cmd_files::sender_options(send_args(config)?).map(drop),
            Role::Slave => cmd_files::receiver_options(receive_args(config)?).map(drop),
        }
        .with_context(|| {
            format!(
                "the config {} is not usable by the service",
                config.display()
            )
        })
    }

    fn scm(access: ServiceManagerAccess) -> anyhow::Result<ServiceManager> {
        ServiceManager::local_computer(None::<&str>, access).context(
            "cannot open the service control manager: run swrepl from an administrator prompt",
        )
    }

    fn install(args: &InstallArgs) -> anyhow::Result<ExitCode> {
        let config = absolute_config(&args.config)?;
        check_config(args.role, &config)?;
        let exe = std::env::current_exe().context("cannot find swrepl.exe's own path")?;
        let exe = strip_verbatim(&exe);
        let name = args.service_name();
        let info = ServiceInfo {
            name: OsString::from(&name),
            display_name: OsString::from(args.role.display_name()),
            service_type: ServiceType::OWN_PROCESS,
            start_type: ServiceStartType::AutoStart,
            error_control: ServiceErrorControl::Normal,
            executable_path: exe.clone(),
            launch_arguments: vec![
                "service".into(),
                "run".into(),
                "--role".into(),
                args.role.as_str().into(),
                "--config".into(),
                config.clone().into_os_string(),
                "--name".into(),
                OsString::from(&name),
            ],
            dependencies: vec![],
            account_name: None, // LocalSystem: it reads and writes the whole Supportworks tree.
            account_password: None,
        };
        let manager = scm(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
        let access = ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::DELETE;
        let service = manager
            .create_service(&info, access)
            .with_context(|| format!("cannot create the service {name} (is it already installed? `swrepl service uninstall --name {name}`)"))?;
        if let Err(e) = configure(&service, args.role, &name) {
            // Leave nothing half-installed: the operator fixes the cause and installs again.
            if let Err(undo) = service.delete() {
                tracing::warn!(service = %name, "cannot remove the half-installed service: {undo}");
            }
            return Err(e);
        }
        tracing::info!(service = %name, exe = %exe.display(), config = %config.display(), "installed");
        println!(
            "installed service {name} ({}), automatic start, restarted on failure; start it with `sc start {name}`; log: {} and the Event Log (Application, source {name})",
            args.role.display_name(),
            log_path(&config, args.role).display()
        );
        Ok(ExitCode::SUCCESS)
    }

    /// Description, recovery actions and the Event Log source of a service just created.
    fn configure(
        service: &windows_service::service::Service,
        role: Role,
        name: &str,
    ) -> anyhow::Result<()> {
        let description = match role {
            Role::Master => {
                "Replicates this Supportworks Master to its warm standby (swrepl send)."
            }
            Role::Slave => {
                "Applies the Supportworks Master's changes to this warm standby (swrepl receive)."
            }
        };
        service
            .set_description(description)
            .with_context(|| format!("cannot set the description of {name}"))?;
        service
            .update_failure_actions(restart_on_failure())
            .with_context(|| format!("cannot set the recovery actions of {name}"))?;
        // A stop with a non-zero exit code (a config or disk error) counts as a failure too.
        match service.set_failure_actions_on_non_crash_failures(true) {
            Ok(()) => {}
            // Windows has it since Vista; Wine's service manager does not.
            Err(e) if os_code(&e) == Some(ERROR_INVALID_LEVEL) => tracing::warn!(
                service = %name,
                "this service manager cannot treat a non-zero exit as a failure: the service is restarted after a crash only"
            ),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot make {name} restart after a non-zero exit")))
            }
        }
        event_log::register_source(name)
    }

    /// Restart after 10 s, 30 s, then every 60 s; the count resets after a day without failure.
    fn restart_on_failure() -> ServiceFailureActions {
        let restart = |secs| ServiceAction {
            action_type: ServiceActionType::Restart,
            delay: Duration::from_secs(secs),
        };
        ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart(10), restart(30), restart(60)]),
        }
    }

    fn os_code(error: &windows_service::Error) -> Option<i32> {
        match error {
            windows_service::Error::Winapi(io) => io.raw_os_error(),
            _ => None,
        }
    }

    fn uninstall(args: &UninstallArgs) -> anyhow::Result<ExitCode> {
        let manager = scm(ServiceManagerAccess::CONNECT)?;
        let names: Vec<String> = match (&args.name, args.role) {
            (Some(name), _) => vec![name.clone()],
            (None, Some(role)) => vec![role.default_service_name()],
            (None, None) => [Role::Master, Role::Slave]
                .iter()
                .map(|r| r.default_service_name())
                .filter(|n| manager.open_service(n, ServiceAccess::QUERY_STATUS).is_ok())
                .collect(),
        };
        match names.as_slice() {
            [] => bail!("neither swrepl-master nor swrepl-slave is installed; give the service's name with --name"),
            [name] => remove(&manager, name)?,
            _ => bail!("both swrepl-master and swrepl-slave are installed; say which with --role or --name"),
        }
        Ok(ExitCode::SUCCESS)
    }

    fn remove(manager: &ServiceManager, name: &str) -> anyhow::Result<()> {
        let access = ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE;
        let service = manager.open_service(name, access).map_err(|e| {
            if os_code(&e) == Some(ERROR_SERVICE_DOES_NOT_EXIST) {
                anyhow::anyhow!("the service {name} is not installed")
            } else {
                anyhow::Error::new(e).context(format!("cannot open the service {name}"))
            }
        })?;
        match service.stop() {
            Ok(_) => wait_stopped(&service, name),
            Err(e) if os_code(&e) == Some(ERROR_SERVICE_NOT_ACTIVE) => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot stop {name}"))),
        }
        service
            .delete()
            .with_context(|| format!("cannot delete the service {name}"))?;
        if let Err(e) = event_log::remove_source(name) {
            tracing::warn!(service = name, "{e:#}");
        }
        println!("uninstalled service {name}");
        Ok(())
    }

    /// Waits (up to the stop hint plus a margin) for the service to report Stopped, so the delete
    /// takes effect now rather than at the next reboot.
    fn wait_stopped(service: &windows_service::service::Service, name: &str) {
        let deadline = std::time::Instant::now() + STOP_WAIT_HINT + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            match service.query_status() {
                Ok(status) if status.current_state == ServiceState::Stopped => return,
                Ok(_) => std::thread::sleep(Duration::from_millis(250)),
                Err(_) => return,
            }
        }
        tracing::warn!(
            service = name,
            "still stopping; it is removed once it stops"
        );
    }

    mod event_log {
        //! The Windows Event Log: the source (a registry key under the Application log) and
        //! `ReportEventW`.

        use anyhow::Context;
        use windows_sys::Win32::Foundation::HANDLE;
        use windows_sys::Win32::System::EventLog::{
            DeregisterEventSource, RegisterEventSourceW, ReportEventW, EVENTLOG_ERROR_TYPE,
            EVENTLOG_INFORMATION_TYPE, EVENTLOG_WARNING_TYPE,
        };

        use super::super::EventKind;

        /// Where event sources of the Application log are registered (under HKLM).
        const APPLICATION_SOURCES: &str = r"SYSTEM\CurrentControlSet\Services\EventLog\Application";
        /// A message file whose every message is just "%1" (the one .NET's EventLog class
        /// uses), so Event Viewer shows our text as written.
        const MESSAGE_FILE: &str =
            r"%SystemRoot%\Microsoft.NET\Framework64\v4.0.30319\EventLogMessages.dll";
        /// Error, warning and information.
        const TYPES_SUPPORTED: u32 = 7;

        fn source_key(name: &str) -> String {
            format!(r"{APPLICATION_SOURCES}\{name}")
        }

        /// Registers `name` as an event source of the Application log (install).
        pub fn register_source(name: &str) -> anyhow::Result<()> {
            let path = source_key(name);
            let context = || format!("cannot register the Event Log source HKLM\\{path}");
            let key = windows_registry::LOCAL_MACHINE
                .create(&path)
                .with_context(context)?;
            key.set_expand_string("EventMessageFile", MESSAGE_FILE)
                .with_context(context)?;
            key.set_u32("TypesSupported", TYPES_SUPPORTED)
                .with_context(context)?;
            Ok(())
        }

        /// Removes the event source (uninstall); its past events stay in the log.
        pub fn remove_source(name: &str) -> anyhow::Result<()> {
            let path = source_key(name);
            if windows_registry::LOCAL_MACHINE.open(&path).is_err() {
                return Ok(()); // not registered (installed by an older swrepl)
            }
            windows_registry::LOCAL_MACHINE
                .remove_tree(&path)
                .with_context(|| format!("cannot remove the Event Log source HKLM\\{path}"))
        }

        /// An open event source. The handle may be used from any thread.
        pub struct EventSource(HANDLE);

        // SAFETY: an event log handle is not tied to the thread that opened it; ReportEventW may
        // be called on it from several threads at once.
        unsafe impl Send for EventSource {}
        unsafe impl Sync for EventSource {}

        impl EventSource {
            pub fn open(name: &str) -> std::io::Result<EventSource> {
                let wide: Vec<u16> = name.encode_utf16().chain([0]).collect();
                // SAFETY: `wide` is NUL-terminated and outlives the call; a null server name
                // means this machine.
                let handle = unsafe { RegisterEventSourceW(std::ptr::null(), wide.as_ptr()) };
                if handle.is_null() {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(EventSource(handle))
                }
            }

            /// Writes one event; failures are ignored (the log file has the same line).
            pub fn report(&self, kind: EventKind, text: &str) {
                let wtype = match kind {
                    EventKind::Error => EVENTLOG_ERROR_TYPE,
                    EventKind::Warning => EVENTLOG_WARNING_TYPE,
                    EventKind::Information => EVENTLOG_INFORMATION_TYPE,
                };
                // An event string is limited to 31,839 characters.
                let wide: Vec<u16> = text.encode_utf16().take(31_000).chain([0]).collect();
                let strings = [wide.as_ptr()];
                // SAFETY: the handle is open; `strings` holds one NUL-terminated string that
                // outlives the call; no SID and no raw data.
                unsafe {
                    ReportEventW(
                        self.0,
                        wtype,
                        0,
                        kind.event_id(),
                        std::ptr::null_mut(),
                        1,
                        0,
                        strings.as_ptr(),
                        std::ptr::null(),
                    );
                }
            }
        }

        impl Drop for EventSource {
            fn drop(&mut self) {
                // SAFETY: the handle came from RegisterEventSourceW and is closed once.
                unsafe { DeregisterEventSource(self.0) };
            }
        }
    }

    /// What `ffi_service_main` needs, set before the dispatcher starts.
    struct Launch {
        args: InstallArgs,
        runtime: tokio::runtime::Handle,
    }

    static LAUNCH: OnceLock<Launch> = OnceLock::new();
    /// The service's outcome, reported by `run` once the dispatcher returns.
    static OUTCOME: Mutex<Option<Result<ExitCode, String>>> = Mutex::new(None);

    define_windows_service!(ffi_service_main, service_main);

    /// Hands the process to the SCM. Blocks this (the main) thread until the service stops; the
    /// work runs on the tokio runtime's workers.
    fn dispatch(args: InstallArgs, log_filter: &str) -> anyhow::Result<ExitCode> {
        let args = InstallArgs {
            config: absolute_config(&args.config)?,
            ..args
        };
        init_file_logging(log_filter, &args)?;
        let name = args.service_name();
        let launch = Launch {
            args,
            runtime: tokio::runtime::Handle::current(),
        };
        if LAUNCH.set(launch).is_err() {
            bail!("the service dispatcher was started twice");
        }
        if let Err(e) = service_dispatcher::start(&name, ffi_service_main) {
            if os_code(&e) == Some(ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) {
                bail!("`swrepl service run` is started by the service control manager; to run by hand use `swrepl send` or `swrepl receive`");
            }
            return Err(anyhow::Error::new(e).context("the service dispatcher failed"));
        }
        let outcome = OUTCOME.lock().map(|mut o| o.take()).unwrap_or(None);
        match outcome {
            Some(Ok(code)) => Ok(code),
            Some(Err(message)) => bail!(message),
            None => Ok(ExitCode::SUCCESS),
        }
    }

    fn service_main(_scm_arguments: Vec<OsString>) {
        let Some(launch) = LAUNCH.get() else { return };
        let outcome = run_service(launch).map_err(|e| {
            tracing::error!("service failed: {e:#}");
            format!("{e:#}")
        });
        if let Ok(mut slot) = OUTCOME.lock() {
            *slot = Some(outcome);
        }
    }

    fn status(state: ServiceState, exit: ServiceExitCode, wait_hint: Duration) -> ServiceStatus {
        ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: if state == ServiceState::Running {
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
            } else {
                ServiceControlAccept::empty()
            },
            exit_code: exit,
            checkpoint: 0,
            wait_hint,
            process_id: None,
        }
    }

    fn run_service(launch: &Launch) -> anyhow::Result<ExitCode> {
        let args = &launch.args;
        let name = args.service_name();
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let handler = move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                stop_tx.send_replace(true);
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        let handle = service_control_handler::register(&name, handler)
            .context("cannot register with the service control manager")?;
        let ok = ServiceExitCode::Win32(0);
        handle
            .set_service_status(status(ServiceState::Running, ok, Duration::ZERO))
            .context("cannot report Running to the service control manager")?;
        tracing::info!(service = %name, role = args.role.as_str(), config = %args.config.display(), "service running");

        let shutdown = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
            tracing::info!("stop requested by the service control manager");
            let _ =
                handle.set_service_status(status(ServiceState::StopPending, ok, STOP_WAIT_HINT));
        };
        let result = launch.runtime.block_on(async {
            match args.role {
                Role::Master => cmd_files::send_until(send_args(&args.config)?, shutdown).await,
                Role::Slave => {
                    cmd_files::receive_until(receive_args(&args.config)?, shutdown).await
                }
            }
        });
        // A non-zero service-specific code makes the SCM apply the recovery actions.
        let exit = match &result {
            Ok(code) if *code == ExitCode::SUCCESS => ok,
            _ => ServiceExitCode::ServiceSpecific(2),
        };
        match &result {
            Ok(_) => tracing::info!(service = %name, "service stopped"),
            Err(e) => tracing::error!(service = %name, "service stopped with an error: {e:#}"),
        }
        let _ = handle.set_service_status(status(ServiceState::Stopped, exit, Duration::ZERO));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbatim_prefixes_are_stripped() {
        assert_eq!(
            strip_verbatim(Path::new(r"\\?\C:\Program Files\swrepl\swrepl.exe")),
            PathBuf::from(r"C:\Program Files\swrepl\swrepl.exe")
        );
        assert_eq!(
            strip_verbatim(Path::new(r"\\?\UNC\host\share\swrepl.exe")),
            PathBuf::from(r"\\host\share\swrepl.exe")
        );
        assert_eq!(
            strip_verbatim(Path::new(r"C:\swrepl.exe")),
            PathBuf::from(r"C:\swrepl.exe")
        );
    }

    #[test]
    fn errors_switch_overs_and_the_service_life_go_to_the_event_log() {
        use tracing::Level;
        let kind = |level, message| event_log_kind(level, message);
        assert_eq!(
            kind(Level::ERROR, "cannot apply \"x\": disk full"),
            Some(EventKind::Error)
        );
        assert_eq!(
            kind(
                Level::WARN,
                "this Slave was promoted: no longer accepting changes"
            ),
            Some(EventKind::Warning)
        );
        assert_eq!(
            kind(Level::INFO, "old Master fenced"),
            Some(EventKind::Information)
        );
        assert_eq!(
            kind(Level::INFO, "service running"),
            Some(EventKind::Information)
        );
        assert_eq!(
            kind(Level::WARN, "locked by another process (os error 32): ..."),
            Some(EventKind::Warning)
        );
        assert_eq!(kind(Level::WARN, "cannot replicate now, will retry"), None);
        assert_eq!(kind(Level::INFO, "connected to receiver"), None);
        assert_eq!(kind(Level::DEBUG, "switch-over step"), None);
    }

    #[test]
    fn the_event_log_layer_writes_message_and_fields() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt as _;

        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = written.clone();
        let layer = EventLogLayer::new(move |kind, text: &str| {
            sink.lock().unwrap().push((kind, text.to_owned()));
        });
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(path = "Mail/box.mbx", "cannot apply");
            tracing::info!(service = "swrepl-slave", "service stopped");
            tracing::info!("connected");
        });
        assert_eq!(
            *written.lock().unwrap(),
            [
                (
                    EventKind::Error,
                    "cannot apply path=Mail/box.mbx".to_owned()
                ),
                (
                    EventKind::Information,
                    "service stopped service=swrepl-slave".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn log_sits_beside_the_config() {
        let path = log_path(Path::new("/etc/swrepl/master.toml"), Role::Master);
        assert_eq!(path, Path::new("/etc/swrepl/swrepl-master.log"));
    }

    #[test]
    fn a_big_log_is_moved_aside_at_start_and_a_small_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("swrepl-slave.log");
        std::fs::write(&log, vec![b'x'; 100]).unwrap();

        drop(open_rotated_log(&log, 1_000).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 100, "kept");

        drop(open_rotated_log(&log, 50).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0, "fresh log");
        let rotated = dir.path().join("swrepl-slave.log.1");
        assert_eq!(
            std::fs::metadata(rotated).unwrap().len(),
            100,
            "moved to .1"
        );
    }
}
