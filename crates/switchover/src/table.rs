//! The state table: each service's expected and actual state for a role.

use serde::Serialize;

use crate::control::ServiceControl;
use crate::runbook::ServiceSet;
use crate::state::{Expected, Role, ServiceState};

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub service: String,
    pub expected: Expected,
    /// `None` when the query failed; `error` then says why.
    pub actual: Option<ServiceState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Row {
    /// Whether the actual state is not the expected one (a failed query is a deviation).
    pub fn deviates(&self) -> bool {
        !self.actual.is_some_and(|a| self.expected.is_met_by(a))
    }
}

/// Expected against actual for every service of a role, in table order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateTable {
    pub role: Role,
    pub rows: Vec<Row>,
}

impl StateTable {
    /// Queries every service of `set` (one at a time: service managers serialise anyway, and
    /// the output order is the runbook's). A failed query becomes a row with its error.
    pub async fn query<S: ServiceControl>(control: &S, set: &ServiceSet, role: Role) -> Self {
        let mut rows = Vec::new();
        for (service, expected) in set.expected(role) {
            let (actual, error) = match control.query(&service).await {
                Ok(state) => (Some(state), None),
                Err(e) => (None, Some(e.to_string())),
            };
            rows.push(Row {
                service,
                expected,
                actual,
                error,
            });
        }
        Self { role, rows }
    }

    /// Whether every service is in its expected state.
    pub fn matches(&self) -> bool {
        self.rows.iter().all(|r| !r.deviates())
    }

    /// Rows whose query failed.
    pub fn query_errors(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| r.error.is_some())
    }

    /// The table as aligned text, one service per line; deviations are marked with `!` in the
    /// first column and the word DEVIATION at the end, so they survive copy-paste and grep.
    pub fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|r| r.service.len())
            .chain([7])
            .max()
            .unwrap_or(7);
        let mut out = format!(
            "  {:<width$}  {:<13}  {}\n",
            "SERVICE", "EXPECTED", "ACTUAL"
        );
        for row in &self.rows {
            let actual = match row.actual {
                Some(state) => state.to_string(),
                None => "query failed".to_owned(),
            };
            let (mark, note) = if row.deviates() {
                ("!", "  DEVIATION")
            } else {
                (" ", "")
            };
            let line = format!(
                "{mark} {:<width$}  {:<13}  {actual:<13}{note}",
                row.service,
                row.expected.to_string()
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(expected: Expected, actual: Option<ServiceState>) -> Row {
        Row {
            service: "S".into(),
            expected,
            actual,
            error: None,
        }
    }

    #[test]
    fn deviations() {
        assert!(!row(Expected::Running, Some(ServiceState::Running)).deviates());
        assert!(row(Expected::Running, Some(ServiceState::StartPending)).deviates());
        assert!(row(Expected::Stopped, None).deviates());
        assert!(!row(Expected::Any, Some(ServiceState::Paused)).deviates());
    }

    #[test]
    fn render_marks_deviations() {
        let table = StateTable {
            role: Role::Standby,
            rows: vec![
                row(Expected::Running, Some(ServiceState::Running)),
                row(Expected::Stopped, Some(ServiceState::Running)),
            ],
        };
        let text = table.render();
        let lines: Vec<_> = text.lines().collect();
        assert!(lines[1].starts_with("  S"), "{text}");
        assert!(
            lines[2].starts_with("! S") && lines[2].ends_with("DEVIATION"),
            "{text}"
        );
        assert!(!table.matches());
    }
}
