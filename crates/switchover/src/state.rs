//! The vocabulary of the runbook's tables: what state a service is in, what state the table
//! expects, and which table (role) applies to a host.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The state of one service as the service manager reports it.
///
/// The five states are the ones an operator's `query` command prints (see the `command` backend);
/// Windows' `ContinuePending` and `PausePending` are folded into `StartPending` and `StopPending`
/// because both mean "in transition, not serving yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    Running,
    Stopped,
    StartPending,
    StopPending,
    Paused,
}

impl ServiceState {
    /// Every state, in the order they are listed in messages.
    pub const ALL: [ServiceState; 5] = [
        ServiceState::Running,
        ServiceState::Stopped,
        ServiceState::StartPending,
        ServiceState::StopPending,
        ServiceState::Paused,
    ];

    /// The word used on the command line, in `query` output and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Running => "running",
            ServiceState::Stopped => "stopped",
            ServiceState::StartPending => "start_pending",
            ServiceState::StopPending => "stop_pending",
            ServiceState::Paused => "paused",
        }
    }

    pub fn is_running(self) -> bool {
        self == ServiceState::Running
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text that is not one of the five state words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a service state (expected one of running, stopped, start_pending, stop_pending, paused)")]
pub struct ParseStateError {
    pub text: String,
}

impl FromStr for ServiceState {
    type Err = ParseStateError;

    /// Accepts the five words, case-insensitively, with `-` or `_` (`START-PENDING` too), and
    /// surrounding whitespace ignored. Anything else is an error, never a guess.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let normalised = text.trim().to_ascii_lowercase().replace('-', "_");
        ServiceState::ALL
            .into_iter()
            .find(|state| state.as_str() == normalised)
            .ok_or_else(|| ParseStateError {
                text: text.trim().to_owned(),
            })
    }
}

/// What a state table expects of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    Running,
    Stopped,
    /// The runbook's "Any": the old Master after a switch-over.
    Any,
}

impl Expected {
    /// Whether `actual` satisfies this expectation.
    pub fn is_met_by(self, actual: ServiceState) -> bool {
        match self {
            Expected::Running => actual == ServiceState::Running,
            Expected::Stopped => actual == ServiceState::Stopped,
            Expected::Any => true,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Expected::Running => "running",
            Expected::Stopped => "stopped",
            Expected::Any => "any",
        }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of the runbook's tables applies to a host.
///
/// `Standby` is the Slave before a switch-over (only SwSqlServer and SwHttpServer running);
/// `Active` is the Master in normal running and the Slave after a switch-over (all eleven).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Standby,
    Active,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Active => "active",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_five_words_leniently_in_case_and_separator() {
        assert_eq!("running".parse(), Ok(ServiceState::Running));
        assert_eq!(" Stopped\r\n".parse(), Ok(ServiceState::Stopped));
        assert_eq!("START-PENDING".parse(), Ok(ServiceState::StartPending));
        assert_eq!("stop_pending".parse(), Ok(ServiceState::StopPending));
        assert_eq!("paused".parse(), Ok(ServiceState::Paused));
    }

    #[test]
    fn rejects_anything_else() {
        for text in ["", "run", "active", "running stopped", "RUNNING!"] {
            assert!(text.parse::<ServiceState>().is_err(), "{text:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for state in ServiceState::ALL {
            assert_eq!(state.to_string().parse(), Ok(state));
        }
    }

    #[test]
    fn expectations() {
        assert!(Expected::Running.is_met_by(ServiceState::Running));
        assert!(!Expected::Running.is_met_by(ServiceState::StartPending));
        assert!(Expected::Stopped.is_met_by(ServiceState::Stopped));
        assert!(!Expected::Stopped.is_met_by(ServiceState::Paused));
        assert!(Expected::Any.is_met_by(ServiceState::Paused));
    }
}
