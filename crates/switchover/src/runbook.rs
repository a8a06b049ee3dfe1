//! The runbook's service names, start order and state tables, with operator overrides.

use std::collections::HashSet;

use serde::Serialize;

use crate::state::{Expected, Role};

/// `SwitchOver.cmd`'s `net start` lines, in the runbook's order.
pub const RUNBOOK_START_ORDER: [&str; 9] = [
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

/// The services that run on both servers in every table.
pub const RUNBOOK_ALWAYS_RUNNING: [&str; 2] = ["SwSqlServer", "SwHttpServer"];

/// The service whose state on the Master decides a switch-over.
pub const RUNBOOK_MONITORED: &str = "SwServerService";

/// Longest service name Windows accepts.
const MAX_NAME_LEN: usize = 256;

/// A service name or list that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty service name in the [services] lists: remove it")]
    Empty,
    #[error("service name {name:?} is not usable: use letters, digits and . _ @ - only, not starting with '-' (at most 256 characters)")]
    Invalid { name: String },
    #[error("service {name:?} is listed twice in [services] start_order/always_running: list each service once")]
    Duplicate { name: String },
    #[error("[services] start_order is empty: list the services a switch-over starts, or remove the key to use the runbook's nine")]
    EmptyStartOrder,
}

/// Checks that `name` can be passed to any backend as one argument without being taken for an
/// option or a path: letters, digits, `.`, `_`, `@`, `-`, not starting with `-`.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    if name.len() > MAX_NAME_LEN || name.starts_with('-') || !name.chars().all(allowed) {
        return Err(NameError::Invalid {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// The services of one Supportworks server: those a switch-over starts (in order) and those that
/// always run on both servers. Build with [`ServiceSet::runbook`] or [`ServiceSet::new`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSet {
    always_running: Vec<String>,
    start_order: Vec<String>,
    monitored: String,
}

impl Default for ServiceSet {
    fn default() -> Self {
        Self::runbook()
    }
}

impl ServiceSet {
    /// The runbook's eleven services and order.
    pub fn runbook() -> Self {
        Self {
            always_running: RUNBOOK_ALWAYS_RUNNING.map(str::to_owned).to_vec(),
            start_order: RUNBOOK_START_ORDER.map(str::to_owned).to_vec(),
            monitored: RUNBOOK_MONITORED.to_owned(),
        }
    }

    /// An operator's lists; every name is validated, no name may appear twice, and the start
    /// order may not be empty. The monitored service is the first of `start_order` (the runbook
    /// starts SwServerService first because every other service depends on it).
    pub fn new(always_running: Vec<String>, start_order: Vec<String>) -> Result<Self, NameError> {
        let mut seen = HashSet::new();
        for name in always_running.iter().chain(&start_order) {
            validate_name(name)?;
            if !seen.insert(name.as_str()) {
                return Err(NameError::Duplicate { name: name.clone() });
            }
        }
        let monitored = start_order
            .first()
            .ok_or(NameError::EmptyStartOrder)?
            .clone();
        Ok(Self {
            always_running,
            start_order,
            monitored,
        })
    }

    /// Services that run on both servers whatever the role (SwSqlServer, SwHttpServer).
    pub fn always_running(&self) -> &[String] {
        &self.always_running
    }

    /// Services a switch-over starts, in order.
    pub fn start_order(&self) -> &[String] {
        &self.start_order
    }

    /// The service whose state on the Master is watched (SwServerService).
    pub fn monitored(&self) -> &str {
        &self.monitored
    }

    /// Every service, in the runbook's table order: always-running first, then the start order.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.always_running
            .iter()
            .chain(&self.start_order)
            .map(String::as_str)
    }

    /// Whether `name` is one of this set's services.
    pub fn contains(&self, name: &str) -> bool {
        self.all().any(|n| n == name)
    }

    /// The runbook's table for `role`: (service, expected state), in table order.
    pub fn expected(&self, role: Role) -> Vec<(String, Expected)> {
        let for_switched = match role {
            Role::Standby => Expected::Stopped,
            Role::Active => Expected::Running,
        };
        self.always_running
            .iter()
            .map(|name| (name.clone(), Expected::Running))
            .chain(
                self.start_order
                    .iter()
                    .map(|name| (name.clone(), for_switched)),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn runbook_tables_match_the_seed() {
        let set = ServiceSet::runbook();
        let standby = set.expected(Role::Standby);
        assert_eq!(standby.len(), 11);
        assert_eq!(standby[0], ("SwSqlServer".into(), Expected::Running));
        assert_eq!(standby[1], ("SwHttpServer".into(), Expected::Running));
        assert!(standby[2..].iter().all(|(_, e)| *e == Expected::Stopped));
        assert_eq!(standby[2].0, "SwServerService");
        assert_eq!(standby[10].0, "SwFileService");
        let active = set.expected(Role::Active);
        assert!(active.iter().all(|(_, e)| *e == Expected::Running));
        assert_eq!(set.monitored(), "SwServerService");
    }

    #[test]
    fn custom_lists_are_validated() {
        assert!(ServiceSet::new(strings(&["db"]), strings(&["app", "web@1"])).is_ok());
        assert_eq!(
            ServiceSet::new(strings(&["a"]), strings(&["a"])),
            Err(NameError::Duplicate { name: "a".into() })
        );
        assert_eq!(
            ServiceSet::new(strings(&[]), strings(&[])),
            Err(NameError::EmptyStartOrder)
        );
        for bad in ["", "-rf", "a b", "a;b", "a/b", "ä"] {
            assert!(ServiceSet::new(vec![], strings(&[bad])).is_err(), "{bad:?}");
        }
    }
}
