//! The `[switchover]` table of the config file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::command::{CommandTemplate, TemplateError};
use crate::control::WaitPolicy;
use crate::monitor::{MonitorConfig, Policy};
use crate::procedure::Hooks;

/// `[switchover]`: the manual switch-over and the receiver's monitor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverConfig {
    /// The receiver's root; its status is read from `<root>/.swrepl/status.json`.
    pub receiver_root: Option<PathBuf>,
    /// The receiver's status file, if not under `receiver_root`.
    pub status_file: Option<PathBuf>,
    /// The Slave's database (`mysql://user:password@host:5002`). Unset: no database check or
    /// promotion.
    pub slave_db: Option<String>,
    /// Largest database lag a switch-over accepts without `--force` (default 5: the lag is the
    /// larger of Seconds_Behind_Master and the heartbeat's age, which includes the heartbeat
    /// interval).
    #[serde(default = "default_max_db_lag")]
    pub max_db_lag_seconds: u64,
    /// Per-service wait for "running" (default 120).
    #[serde(default = "default_start_timeout")]
    pub start_timeout_seconds: u64,
    /// Fencing hook for the old Master; exit 0 = fenced.
    pub fence: Option<String>,
    /// Probe of the old Master; exit 0 = still running, 1 = down.
    pub master_probe: Option<String>,
    /// Limit on each hook (default 60).
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout_seconds: u64,
    /// The JSON-lines event log (default: `switchover-events.jsonl` beside the config file).
    pub event_log: Option<PathBuf>,
    /// Monitor: `manual` (alert only, default) or `auto`.
    #[serde(default)]
    pub policy: Policy,
    /// Monitor: how long the Master must look down (default 30).
    #[serde(default = "default_confirm")]
    pub confirm_seconds: u64,
    /// Monitor: no second automatic switch-over within this many minutes (default 60).
    #[serde(default = "default_rearm")]
    pub rearm_minutes: u64,
    /// Monitor: alert hook run on every alert.
    pub alert: Option<String>,
    /// Monitor: the Master's TCP ports (`host:port`) probed when it goes silent; reachable if
    /// any answers. Default: the sender's address on 5002 and 80.
    #[serde(default)]
    pub master_ports: Vec<String>,
    /// Monitor: a command run from a third vantage point; exit 0 = it reaches the Master.
    pub witness: Option<String>,
    /// Monitor: let an automatic switch-over go ahead despite database lag (or a lag that
    /// cannot be measured). Changes made on the Master after the lag are lost.
    #[serde(default)]
    pub accept_data_loss: bool,
}

fn default_max_db_lag() -> u64 {
    5
}
fn default_start_timeout() -> u64 {
    120
}
fn default_hook_timeout() -> u64 {
    60
}
fn default_confirm() -> u64 {
    30
}
fn default_rearm() -> u64 {
    60
}

impl Default for SwitchoverConfig {
    fn default() -> Self {
        Self {
            receiver_root: None,
            status_file: None,
            slave_db: None,
            max_db_lag_seconds: default_max_db_lag(),
            start_timeout_seconds: default_start_timeout(),
            fence: None,
            master_probe: None,
            hook_timeout_seconds: default_hook_timeout(),
            event_log: None,
            policy: Policy::default(),
            confirm_seconds: default_confirm(),
            rearm_minutes: default_rearm(),
            alert: None,
            master_ports: Vec::new(),
            witness: None,
            accept_data_loss: false,
        }
    }
}

/// A `[switchover]` value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("[switchover] {key}: {source}")]
    Template {
        key: &'static str,
        #[source]
        source: TemplateError,
    },
    #[error("[switchover] {key} must be at least 1")]
    Zero { key: &'static str },
}

impl SwitchoverConfig {
    /// Where the receiver's status file is: `status_file`, else `<receiver_root>/.swrepl/status.json`.
    pub fn status_path(&self) -> Option<PathBuf> {
        self.status_file.clone().or_else(|| {
            self.receiver_root
                .as_ref()
                .map(|root| root.join(".swrepl").join("status.json"))
        })
    }

    pub fn max_db_lag(&self) -> Duration {
        Duration::from_secs(self.max_db_lag_seconds)
    }

    pub fn start_wait(&self) -> Result<WaitPolicy, SettingsError> {
        Ok(WaitPolicy {
            timeout: Duration::from_secs(nonzero(
                "start_timeout_seconds",
                self.start_timeout_seconds,
            )?),
            ..WaitPolicy::default()
        })
    }

    pub fn hooks(&self) -> Result<Hooks, SettingsError> {
        Ok(Hooks {
            fence: hook("fence", &self.fence)?,
            master_probe: hook("master_probe", &self.master_probe)?,
            timeout: Duration::from_secs(nonzero(
                "hook_timeout_seconds",
                self.hook_timeout_seconds,
            )?),
        })
    }

    /// The witness hook, for the receiver's monitor.
    pub fn witness_hook(&self) -> Result<Option<CommandTemplate>, SettingsError> {
        hook("witness", &self.witness)
    }

    /// The alert hook, for the receiver's monitor.
    pub fn alert_hook(&self) -> Result<Option<CommandTemplate>, SettingsError> {
        hook("alert", &self.alert)
    }

    pub fn monitor(&self) -> MonitorConfig {
        MonitorConfig {
            rearm_after: Duration::from_secs(self.rearm_minutes.saturating_mul(60)),
            ..MonitorConfig::new(self.policy, self.confirm_seconds)
        }
    }
}

fn nonzero(key: &'static str, value: u64) -> Result<u64, SettingsError> {
    if value == 0 {
        return Err(SettingsError::Zero { key });
    }
    Ok(value)
}

fn hook(
    key: &'static str,
    value: &Option<String>,
) -> Result<Option<CommandTemplate>, SettingsError> {
    value
        .as_deref()
        .map(CommandTemplate::parse)
        .transpose()
        .map_err(|source| SettingsError::Template { key, source })
}
