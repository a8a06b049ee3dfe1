//! `swrepl-switchover`: service control and the switch-over of a Supportworks Slave.
//!
//! What it owns:
//! - **Service control** behind one async trait, [`ServiceControl`] (`query`, `start`, `stop`),
//!   with three backends chosen by the `[services]` table ([`ServicesConfig::backend`]): the
//!   Windows SCM (Windows only), systemd, and operator command templates (run without a shell).
//!   [`start_and_wait`] and [`stop_and_wait`] add timeouts that honour start-pending.
//! - **The runbook's tables**: [`ServiceSet`] (the eleven services, the start order, both
//!   configurable), [`Role`] (`standby`, `active`) and [`StateTable`] (expected against actual).
//! - **The switch-over** ([`procedure`]): [`assess`] (read-only pre-checks through the
//!   [`Precheck`] trait, which the binary implements for files and database), then [`execute`]
//!   (fencing, split-brain check, database promotion, services in order), plus the [`EventLog`].
//! - **The monitor's decisions** ([`Monitor`]): a pure state machine the receiver feeds with
//!   heartbeats and ticks; it answers with a [`Decision`].
//!
//! It does not know about files, the wire protocol or SQL: the binary wires those in.

mod backend;
pub mod command;
mod control;
mod events;
pub mod monitor;
pub mod procedure;
mod runbook;
mod settings;
mod state;
mod table;
#[cfg(windows)]
mod windows;

pub use backend::{
    Backend, BackendKind, CommandBackend, ConfigError, ServicesConfig, SystemdBackend,
    DEFAULT_COMMAND_TIMEOUT,
};
pub use command::{CommandError, CommandOutput, CommandTemplate, TemplateError};
pub use control::{start_and_wait, stop_and_wait, ServiceControl, ServiceError, WaitPolicy};
pub use events::{Event, EventLog, EventLogError, EventOutcome};
pub use monitor::{Decision, DownReason, MasterView, Monitor, MonitorConfig, Policy};
pub use procedure::{
    assess, execute, Assessment, DbLag, ExecuteOptions, FenceResult, FilesState, Hooks, Outcome,
    Precheck, PrecheckError, ProbeVerdict, Refusal, SwitchoverError,
};
pub use runbook::{
    validate_name, NameError, ServiceSet, RUNBOOK_ALWAYS_RUNNING, RUNBOOK_MONITORED,
    RUNBOOK_START_ORDER,
};
pub use settings::{SettingsError, SwitchoverConfig};
pub use state::{Expected, ParseStateError, Role, ServiceState};
pub use table::{Row, StateTable};
#[cfg(windows)]
pub use windows::WindowsBackend;
