//! The decision half of the monitor, as a pure state machine (no I/O, no clock): the receiver
//! feeds it what it knows about the Master and acts on the [`Decision`]s it returns.
//!
//! The receiver calls [`Monitor::observe`] on every heartbeat and on a regular tick (say once a
//! second) with what it currently knows: the state of the Master's SwServerService from a fresh
//! heartbeat, or [`MasterView::Silent`] when no heartbeat arrived within the heartbeat timeout.
//!
//! Rules (issue 6, part 4):
//! - The Master is *suspect* from the first observation that is not "running"; any observation
//!   of "running" ends the suspicion (a blip shorter than the window does nothing).
//! - Suspect for the whole confirmation window, with every observation a report of "not
//!   running": confirmed down.
//! - Suspect for the whole window with silence in it: the caller must run the independent
//!   checks ([`Decision::ProbeMaster`]: the TCP probe of the Master's ports and, if configured,
//!   the witness) and report with [`Monitor::probe_result`]. Unreachable: confirmed down.
//!   Reachable (a broken link, not a dead Master): a warning, and a fresh window starts.
//! - Confirmed down: `auto` policy and armed gives [`Decision::SwitchOver`], exactly once;
//!   otherwise [`Decision::Alert`], once per episode.
//! - After a switch-over the monitor is disarmed until [`Monitor::acknowledge`]; even then, no
//!   second automatic switch-over within the re-arm window of the first (anti-flapping).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::state::ServiceState;

/// What the receiver does when the Master is confirmed down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Alert only (the default): an operator runs `swrepl switchover`.
    #[default]
    Manual,
    /// Switch over automatically.
    Auto,
}

/// What the receiver currently knows about the Master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterView {
    /// A fresh heartbeat reported this state of the monitored service.
    Reported(ServiceState),
    /// No heartbeat within the heartbeat timeout (or no connection).
    Silent,
}

/// Why the Master is thought to be down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownReason {
    /// The Master reported its service not running (the state last reported).
    ServiceNotRunning(ServiceState),
    /// The Master went silent (and, once confirmed, the probes could not reach it).
    MasterSilent,
}

/// What the caller must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", content = "reason", rename_all = "snake_case")]
pub enum Decision {
    NoAction,
    /// The Master became suspect, or the probes reached a silent Master: log a warning (once
    /// per episode, or per probe round).
    Warn(DownReason),
    /// Silent for the whole window: run the port probe and witness, then call
    /// [`Monitor::probe_result`]. Returned once per probe round.
    ProbeMaster,
    /// Confirmed down but no automatic switch-over (manual policy, or disarmed): run the alert
    /// hook and log. Once per episode.
    Alert(DownReason),
    /// Confirmed down, policy auto: run the switch-over now (which still refuses on database
    /// lag). Returned at most once until [`Monitor::acknowledge`].
    SwitchOver(DownReason),
}

/// The monitor's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorConfig {
    pub policy: Policy,
    /// How long the Master must look down before anything is done (default 30 s).
    pub confirm: Duration,
    /// No second automatic switch-over within this time of the first (default 60 min).
    pub rearm_after: Duration,
}

impl MonitorConfig {
    pub fn new(policy: Policy, confirm_seconds: u64) -> Self {
        Self {
            policy,
            confirm: Duration::from_secs(confirm_seconds),
            rearm_after: Duration::from_secs(60 * 60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Healthy,
    Suspect {
        /// Start of the current window.
        since: Instant,
        /// Silence seen in this window: confirmation needs the probes.
        silent: bool,
        last_reason: DownReason,
        probe_requested: bool,
    },
    /// Decided (alerted or switched over) for this episode; waits for "running" or ack.
    Decided,
}

/// The monitor state machine. See the module documentation for the rules.
#[derive(Debug, Clone)]
pub struct Monitor {
    config: MonitorConfig,
    phase: Phase,
    armed: bool,
    last_switchover: Option<Instant>,
}

impl Monitor {
    pub fn new(config: MonitorConfig) -> Self {
        Self {
            config,
            phase: Phase::Healthy,
            armed: true,
            last_switchover: None,
        }
    }

    pub fn config(&self) -> MonitorConfig {
        self.config
    }

    /// Whether an automatic switch-over may fire (auto policy, not fired since the last
    /// acknowledgement, outside the re-arm window).
    pub fn armed(&self, now: Instant) -> bool {
        let outside_window = self
            .last_switchover
            .is_none_or(|at| now.saturating_duration_since(at) >= self.config.rearm_after);
        self.config.policy == Policy::Auto && self.armed && outside_window
    }

    /// Feeds one observation made at `now`.
    pub fn observe(&mut self, view: MasterView, now: Instant) -> Decision {
        let reason = match view {
            MasterView::Reported(ServiceState::Running) => {
                if self.phase != Phase::Healthy {
                    tracing::info!("the Master reports its service running again");
                }
                self.phase = Phase::Healthy;
                return Decision::NoAction;
            }
            MasterView::Reported(state) => DownReason::ServiceNotRunning(state),
            MasterView::Silent => DownReason::MasterSilent,
        };
        let silent_now = view == MasterView::Silent;
        match &mut self.phase {
            Phase::Decided => Decision::NoAction,
            Phase::Healthy => {
                self.phase = Phase::Suspect {
                    since: now,
                    silent: silent_now,
                    last_reason: reason,
                    probe_requested: false,
                };
                if self.config.confirm.is_zero() {
                    return self.window_elapsed(now);
                }
                Decision::Warn(reason)
            }
            Phase::Suspect {
                since,
                silent,
                last_reason,
                ..
            } => {
                *silent |= silent_now;
                *last_reason = reason;
                if now.saturating_duration_since(*since) >= self.config.confirm {
                    self.window_elapsed(now)
                } else {
                    Decision::NoAction
                }
            }
        }
    }

    /// The result of the checks asked for with [`Decision::ProbeMaster`]: `reachable` is true
    /// when the port probe reached the Master or the witness could. Ignored when no probe was
    /// asked for (a late result after the Master came back).
    pub fn probe_result(&mut self, reachable: bool, now: Instant) -> Decision {
        let Phase::Suspect {
            probe_requested: true,
            ..
        } = self.phase
        else {
            return Decision::NoAction;
        };
        if reachable {
            // The link is down, not the Master: start a fresh window before probing again.
            self.phase = Phase::Suspect {
                since: now,
                silent: false,
                last_reason: DownReason::MasterSilent,
                probe_requested: false,
            };
            return Decision::Warn(DownReason::MasterSilent);
        }
        self.confirmed(DownReason::MasterSilent, now)
    }

    /// An operator acknowledged the last alert or switch-over: re-arm (subject to the re-arm
    /// window) and forget the current episode.
    pub fn acknowledge(&mut self) {
        self.armed = true;
        self.phase = Phase::Healthy;
    }

    fn window_elapsed(&mut self, now: Instant) -> Decision {
        let Phase::Suspect {
            silent,
            last_reason,
            probe_requested,
            ..
        } = &mut self.phase
        else {
            return Decision::NoAction;
        };
        if !*silent {
            let reason = *last_reason;
            return self.confirmed(reason, now);
        }
        if *probe_requested {
            return Decision::NoAction; // waiting for probe_result
        }
        *probe_requested = true;
        Decision::ProbeMaster
    }

    fn confirmed(&mut self, reason: DownReason, now: Instant) -> Decision {
        self.phase = Phase::Decided;
        if self.armed(now) {
            self.armed = false;
            self.last_switchover = Some(now);
            Decision::SwitchOver(reason)
        } else {
            Decision::Alert(reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake clock: seconds since an arbitrary start.
    struct Clock(Instant);
    impl Clock {
        fn at(&self, seconds: u64) -> Instant {
            self.0 + Duration::from_secs(seconds)
        }
    }

    const RUNNING: MasterView = MasterView::Reported(ServiceState::Running);
    const STOPPED: MasterView = MasterView::Reported(ServiceState::Stopped);
    const DOWN: DownReason = DownReason::ServiceNotRunning(ServiceState::Stopped);

    fn auto() -> (Monitor, Clock) {
        (
            Monitor::new(MonitorConfig::new(Policy::Auto, 30)),
            Clock(Instant::now()),
        )
    }

    /// Observes `view` every second from `from` to `to` inclusive; returns the non-NoAction
    /// decisions with their times.
    fn feed(
        m: &mut Monitor,
        c: &Clock,
        view: MasterView,
        from: u64,
        to: u64,
    ) -> Vec<(u64, Decision)> {
        (from..=to)
            .map(|t| (t, m.observe(view, c.at(t))))
            .filter(|(_, d)| *d != Decision::NoAction)
            .collect()
    }

    #[test]
    fn stopped_for_the_whole_window_switches_over_once() {
        let (mut m, c) = auto();
        assert!(feed(&mut m, &c, RUNNING, 0, 10).is_empty());
        let decisions = feed(&mut m, &c, STOPPED, 11, 200);
        assert_eq!(
            decisions,
            [(11, Decision::Warn(DOWN)), (41, Decision::SwitchOver(DOWN))]
        );
    }

    #[test]
    fn never_while_running() {
        let (mut m, c) = auto();
        assert!(feed(&mut m, &c, RUNNING, 0, 10_000).is_empty());
    }

    #[test]
    fn a_blip_shorter_than_the_window_does_nothing() {
        let (mut m, c) = auto();
        for cycle in 0..20 {
            let start = cycle * 40;
            let stopped = feed(&mut m, &c, STOPPED, start, start + 28);
            assert_eq!(stopped, [(start, Decision::Warn(DOWN))]);
            assert!(feed(&mut m, &c, RUNNING, start + 29, start + 39).is_empty());
        }
    }

    #[test]
    fn manual_policy_alerts_once_per_episode() {
        let mut m = Monitor::new(MonitorConfig::new(Policy::Manual, 30));
        let c = Clock(Instant::now());
        let first = feed(&mut m, &c, STOPPED, 0, 100);
        assert_eq!(
            first,
            [(0, Decision::Warn(DOWN)), (30, Decision::Alert(DOWN))]
        );
        assert!(feed(&mut m, &c, RUNNING, 101, 101).is_empty());
        let second = feed(&mut m, &c, STOPPED, 102, 200);
        assert_eq!(
            second,
            [(102, Decision::Warn(DOWN)), (132, Decision::Alert(DOWN))]
        );
    }

    #[test]
    fn silence_needs_the_probes_to_fail() {
        let (mut m, c) = auto();
        let decisions = feed(&mut m, &c, MasterView::Silent, 0, 100);
        assert_eq!(
            decisions,
            [
                (0, Decision::Warn(DownReason::MasterSilent)),
                (30, Decision::ProbeMaster)
            ]
        );
        assert_eq!(
            m.probe_result(false, c.at(101)),
            Decision::SwitchOver(DownReason::MasterSilent)
        );
    }

    #[test]
    fn a_reachable_master_restarts_the_window() {
        let (mut m, c) = auto();
        feed(&mut m, &c, MasterView::Silent, 0, 30);
        assert_eq!(
            m.probe_result(true, c.at(31)),
            Decision::Warn(DownReason::MasterSilent)
        );
        let decisions = feed(&mut m, &c, MasterView::Silent, 32, 70);
        assert_eq!(decisions, [(61, Decision::ProbeMaster)]);
    }

    #[test]
    fn stop_report_then_silence_needs_the_probes() {
        let (mut m, c) = auto();
        feed(&mut m, &c, STOPPED, 0, 10);
        let decisions = feed(&mut m, &c, MasterView::Silent, 11, 40);
        assert_eq!(decisions, [(30, Decision::ProbeMaster)]);
    }

    #[test]
    fn late_probe_results_are_ignored() {
        let (mut m, c) = auto();
        feed(&mut m, &c, MasterView::Silent, 0, 30);
        m.observe(RUNNING, c.at(31));
        assert_eq!(m.probe_result(false, c.at(32)), Decision::NoAction);
    }

    #[test]
    fn disarmed_after_firing_until_acknowledged_and_outside_the_rearm_window() {
        let (mut m, c) = auto();
        feed(&mut m, &c, STOPPED, 0, 30);
        // The Master flaps back and down again: alert only, no second switch-over.
        feed(&mut m, &c, RUNNING, 31, 31);
        let again = feed(&mut m, &c, STOPPED, 32, 100);
        assert_eq!(
            again,
            [(32, Decision::Warn(DOWN)), (62, Decision::Alert(DOWN))]
        );
        // Acknowledged, but within the hour of the first switch-over: still alert only.
        m.acknowledge();
        let within = feed(&mut m, &c, STOPPED, 200, 240);
        assert_eq!(
            within,
            [(200, Decision::Warn(DOWN)), (230, Decision::Alert(DOWN))]
        );
        // Acknowledged after the re-arm window: armed again.
        m.acknowledge();
        let later = feed(&mut m, &c, STOPPED, 4000, 4040);
        assert_eq!(
            later,
            [
                (4000, Decision::Warn(DOWN)),
                (4030, Decision::SwitchOver(DOWN))
            ]
        );
    }

    #[test]
    fn zero_window_decides_on_the_first_observation() {
        let mut m = Monitor::new(MonitorConfig::new(Policy::Auto, 0));
        let c = Clock(Instant::now());
        assert_eq!(m.observe(STOPPED, c.at(0)), Decision::SwitchOver(DOWN));
    }
}
