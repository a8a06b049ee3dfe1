//! The monitor of issue 6 as the binary wires it.
//!
//! - **Master side** ([`service_probe`]): `swrepl send` polls the monitored service
//!   (`[send] monitor_service`, default SwServerService when a `[services]` table exists) every
//!   [`POLL_INTERVAL`] through the configured backend; the sender puts the latest state in every
//!   heartbeat.
//! - **Slave side** ([`ReceiverGuard`]): `swrepl receive` refuses to start on a promoted Slave
//!   (the marker `<root>/.swrepl/promoted`), stops when the marker appears, and, with a
//!   `[switchover]` table, feeds the heartbeats it sees in `<root>/.swrepl/status.json` to the
//!   pure [`Monitor`] state machine and carries out its decisions: warn, probe the Master's
//!   ports and the witness, alert, or switch over (the same procedure as
//!   `swrepl switchover --yes`, which still refuses on database lag).
//!
//! The monitor observes once per new heartbeat, not once per tick: a state the Master reported
//! once is not repeated until the next heartbeat says otherwise, so a blip reported by a single
//! heartbeat never confirms a window. The effective window is therefore at least one heartbeat
//! interval (5 s).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use swrepl_proto::{ServiceState as WireState, ServiceStatus};
use swrepl_switchover::{
    command::run_argv, CommandTemplate, Decision, DownReason, Event, EventLog, EventOutcome,
    MasterView, Monitor, ServiceControl, ServiceState, ServicesConfig, SwitchoverConfig,
};
use swrepl_sync::{ReceiverStatus, ServiceProbe, HEARTBEAT_INTERVAL};
use tokio::sync::watch;

use crate::cmd_switchover::{self, Finished, Request};
use crate::config;

/// How often the Master's sender polls its monitored service.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How often the receiver's monitor looks at the status file.
const TICK: Duration = Duration::from_secs(1);
/// No new heartbeat for this long (two intervals and some slack): the Master is silent.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2 * HEARTBEAT_INTERVAL.as_secs() + 3);
/// Limit on one TCP probe of the Master.
const PORT_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

// ---- the promoted marker ----

/// What `<root>/.swrepl/promoted` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromotedMarker {
    pub time_unix_ms: u64,
    /// The same time for people (UTC).
    pub time_utc: String,
    /// What promoted this Slave.
    pub how: String,
}

/// Where a Slave rooted at `root` records that it was promoted.
pub fn promoted_marker_path(root: &Path) -> PathBuf {
    root.join(swrepl_tree::STATE_DIR_NAME).join("promoted")
}

/// Records that the Slave rooted at `root` was promoted; from now on `swrepl receive` refuses to
/// run there.
pub fn write_promoted_marker(root: &Path, how: &str) -> anyhow::Result<()> {
    let path = promoted_marker_path(root);
    let now = now_unix_ms();
    let marker = PromotedMarker {
        time_unix_ms: now,
        time_utc: utc_text(now),
        how: how.to_owned(),
    };
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&marker)?)?;
        std::fs::rename(&tmp, &path)
    };
    write().with_context(|| format!("cannot write the promoted marker {}", path.display()))?;
    tracing::info!(marker = %path.display(), "this Slave is marked promoted: it no longer accepts changes from the old Master");
    Ok(())
}

/// The marker, if this Slave was promoted. A marker that cannot be parsed still counts.
pub fn read_promoted_marker(root: &Path) -> anyhow::Result<Option<PromotedMarker>> {
    let path = promoted_marker_path(root);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            PromotedMarker {
                time_unix_ms: 0,
                time_utc: "an unknown date (unreadable marker)".to_owned(),
                how: "unknown".to_owned(),
            }
        }))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Fails with one line when the Slave rooted at `root` was promoted.
pub fn refuse_if_promoted(root: &Path) -> anyhow::Result<()> {
    if let Some(marker) = read_promoted_marker(root)? {
        anyhow::bail!(
            "this Slave was promoted on {} ({}); it no longer accepts changes from the old Master: see fail-back in README (`swrepl failback --dry-run`; the marker is {})",
            marker.time_utc,
            marker.how,
            promoted_marker_path(root).display()
        );
    }
    Ok(())
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a time in ms since the Unix epoch (no time-zone database).
pub fn utc_text(unix_ms: u64) -> String {
    let time = UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replacen('T', " ", 1)
        .replace('Z', " UTC")
}

// ---- the Master's side ----

/// The part of `[send]` this module reads (the rest belongs to `cmd_files`).
#[derive(Debug, Default, Deserialize)]
struct SendMonitorConfig {
    monitor_service: Option<String>,
}

/// The heartbeat probe for `swrepl send --config F`: `None` without a config file, or without a
/// `[services]` table and `[send] monitor_service`, or with `monitor_service = ""`. Spawns the
/// poller on the current tokio runtime.
pub fn service_probe(config_path: Option<&Path>) -> anyhow::Result<Option<ServiceProbe>> {
    let Some(path) = config_path else {
        return Ok(None);
    };
    let send: SendMonitorConfig = config::section(path, "send")?.unwrap_or_default();
    let services: Option<ServicesConfig> = config::section(path, "services")?;
    let Some(services) = services else {
        if send
            .monitor_service
            .as_deref()
            .is_some_and(|s| !s.is_empty())
        {
            anyhow::bail!(
                "[send] monitor_service needs a [services] table saying how to query services on this host"
            );
        }
        return Ok(None);
    };
    let set = services.service_set()?;
    let name = send
        .monitor_service
        .unwrap_or_else(|| set.monitored().to_owned());
    if name.is_empty() {
        return Ok(None);
    }
    swrepl_switchover::validate_name(&name).context("[send] monitor_service")?;
    let control = services.backend()?;
    let latest: Arc<Mutex<Option<ServiceStatus>>> = Arc::default();
    tokio::spawn(poll_service(control, name.clone(), latest.clone()));
    tracing::info!(service = %name, "reporting the monitored service in heartbeats");
    Ok(Some(Arc::new(move || {
        latest.lock().map(|guard| guard.clone()).unwrap_or(None)
    })))
}

/// Polls `name` forever, keeping the latest state in `latest`; logs each change once.
async fn poll_service(
    control: impl ServiceControl,
    name: String,
    latest: Arc<Mutex<Option<ServiceStatus>>>,
) {
    let mut previous: Option<WireState> = None;
    loop {
        let state = match control.query(&name).await {
            Ok(state) => wire_state(state),
            Err(e) => {
                if previous != Some(WireState::Unknown) {
                    tracing::warn!("cannot query the monitored service: {e}");
                }
                WireState::Unknown
            }
        };
        if previous != Some(state) {
            tracing::info!(service = %name, state = ?state, "monitored service");
            previous = Some(state);
        }
        if let Ok(mut guard) = latest.lock() {
            *guard = Some(ServiceStatus {
                name: name.clone(),
                state,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn wire_state(state: ServiceState) -> WireState {
    match state {
        ServiceState::Running => WireState::Running,
        ServiceState::Stopped => WireState::Stopped,
        ServiceState::StartPending => WireState::StartPending,
        ServiceState::StopPending => WireState::StopPending,
        ServiceState::Paused => WireState::Paused,
    }
}

/// Reads the state out of the status file's `master_service` ("SwServerService: Stopped").
/// `None` for `Unknown` (the Master could not query its service) and for anything unreadable.
pub fn parse_master_service(text: &str) -> Option<ServiceState> {
    let (_, state) = text.rsplit_once(": ")?;
    match state.trim() {
        "Running" => Some(ServiceState::Running),
        "Stopped" => Some(ServiceState::Stopped),
        "StartPending" => Some(ServiceState::StartPending),
        "StopPending" => Some(ServiceState::StopPending),
        "Paused" => Some(ServiceState::Paused),
        _ => None,
    }
}

// ---- the Slave's side ----

/// Guards a running `swrepl receive`: refuses a promoted root, stops the receiver when the
/// root gets promoted, and runs the monitor when `[switchover]` is configured.
pub struct ReceiverGuard {
    stop: watch::Receiver<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    root: PathBuf,
}

impl ReceiverGuard {
    /// Checks the marker and starts the watcher (and the monitor, with a `[switchover]` table).
    pub fn start(config_path: Option<&Path>, root: &Path) -> anyhow::Result<Self> {
        refuse_if_promoted(root)?;
        let (stop_tx, stop) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let mut tasks = vec![tokio::spawn(watch_marker(root.to_owned(), stop_tx.clone()))];
        if let Some(path) = config_path {
            if let Some(monitor) = MasterMonitor::load(path, root)? {
                tasks.push(tokio::spawn(monitor.run(stop_tx)));
            }
        }
        Ok(Self {
            stop,
            tasks,
            root: root.to_owned(),
        })
    }

    /// Resolves when `signal` does or when this Slave gets promoted: pass it to `run_receiver`.
    pub fn until_shutdown(&self, signal: impl Future<Output = ()>) -> impl Future<Output = ()> {
        let mut stop = self.stop.clone();
        async move {
            tokio::select! {
                _ = signal => {}
                _ = stop.wait_for(|promoted| *promoted) => {}
            }
        }
    }

    /// Stops the background tasks; says why the receiver stopped when it was a promotion.
    pub fn finish(self) -> anyhow::Result<ExitCode> {
        for task in &self.tasks {
            task.abort();
        }
        if *self.stop.borrow() {
            let why = refuse_if_promoted(&self.root)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "this Slave was promoted".to_owned());
            tracing::warn!("receiver stopped: {why}");
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Stops the receiver when a switch-over (manual or automatic) marks the root promoted.
async fn watch_marker(root: PathBuf, stop: Arc<watch::Sender<bool>>) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        if promoted_marker_path(&root).exists() {
            tracing::warn!("this Slave was promoted: no longer accepting changes from the old Master; stopping the receiver");
            let _ = stop.send(true);
            return;
        }
    }
}

/// Tracks heartbeats seen in the status file and turns them into observations.
#[derive(Debug, Default)]
struct HeartbeatTracker {
    /// The status file's `last_heartbeat_unix_ms` when it last changed, and when we saw that.
    last: Option<(u64, Instant)>,
    /// Whether the Master ever reported its service: the monitor is armed only from then on,
    /// so a Slave started while its Master is away does not promote itself.
    heard: bool,
    warned_no_service: bool,
}

impl HeartbeatTracker {
    /// The observation to feed the monitor now, or `None` when nothing new is known.
    fn view(&mut self, status: Option<&ReceiverStatus>, now: Instant) -> Option<MasterView> {
        if let Some(status) = status {
            let fresh = self
                .last
                .is_none_or(|(seen, _)| seen != status.last_heartbeat_unix_ms);
            if status.last_heartbeat_unix_ms != 0 && fresh {
                self.last = Some((status.last_heartbeat_unix_ms, now));
                return self.reported(status);
            }
        }
        let connected = status.is_some_and(|s| s.connected);
        let stale = self
            .last
            .is_none_or(|(_, at)| now.saturating_duration_since(at) > HEARTBEAT_TIMEOUT);
        (self.heard && (!connected || stale)).then_some(MasterView::Silent)
    }

    fn reported(&mut self, status: &ReceiverStatus) -> Option<MasterView> {
        let Some(text) = status.master_service.as_deref() else {
            if !self.warned_no_service {
                self.warned_no_service = true;
                tracing::warn!("the Master's heartbeats do not report its service: configure [services] (and [send] monitor_service) in the Master's config; the monitor cannot work until then");
            }
            return None;
        };
        self.heard = true;
        Some(match parse_master_service(text) {
            Some(state) => MasterView::Reported(state),
            // The Master could not query its own service: no better than silence.
            None => MasterView::Silent,
        })
    }
}

/// What the monitor did with one decision.
#[derive(Debug, PartialEq, Eq)]
enum Acted {
    Continue,
    /// Switched over: stop the receiver.
    Promoted,
}

/// The receiver's monitor: settings, hooks, and the state machine.
struct MasterMonitor {
    config_path: PathBuf,
    root: PathBuf,
    settings: SwitchoverConfig,
    alert: Option<CommandTemplate>,
    witness: Option<CommandTemplate>,
    hook_timeout: Duration,
    log: EventLog,
    monitor: Monitor,
}

impl MasterMonitor {
    /// `None` when the config has no `[switchover]` table. Validates everything the monitor
    /// will need, so a bad setting stops `swrepl receive` at start and not in a disaster.
    fn load(config_path: &Path, root: &Path) -> anyhow::Result<Option<Self>> {
        let Some(settings) = config::section::<SwitchoverConfig>(config_path, "switchover")? else {
            return Ok(None);
        };
        cmd_switchover::load_services(config_path)?;
        let hooks = settings.hooks()?;
        settings.start_wait()?;
        let monitor = Monitor::new(settings.monitor());
        tracing::info!(policy = ?settings.policy, confirm_seconds = settings.confirm_seconds, "monitoring the Master's service");
        Ok(Some(Self {
            config_path: config_path.to_owned(),
            root: root.to_owned(),
            alert: settings.alert_hook()?,
            witness: settings.witness_hook()?,
            hook_timeout: hooks.timeout,
            log: EventLog::new(cmd_switchover::event_log_path(config_path, &settings)),
            settings,
            monitor,
        }))
    }

    async fn run(mut self, stop: Arc<watch::Sender<bool>>) {
        let mut tracker = HeartbeatTracker::default();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            let status = swrepl_sync::read_status(&self.root).ok();
            let Some(view) = tracker.view(status.as_ref(), Instant::now()) else {
                continue;
            };
            let decision = self.monitor.observe(view, Instant::now());
            if self.act(decision, status.as_ref()).await == Acted::Promoted {
                let _ = stop.send(true);
                return;
            }
        }
    }

    async fn act(&mut self, decision: Decision, status: Option<&ReceiverStatus>) -> Acted {
        match decision {
            Decision::NoAction => Acted::Continue,
            Decision::Warn(reason) => {
                tracing::warn!(
                    "the Master looks down ({}); confirming for {} s before acting",
                    describe(reason),
                    self.settings.confirm_seconds
                );
                Acted::Continue
            }
            Decision::ProbeMaster => {
                let reachable = self.probe_master(status).await;
                let next = self.monitor.probe_result(reachable, Instant::now());
                Box::pin(self.act(next, status)).await
            }
            Decision::Alert(reason) => {
                let message = format!(
                    "the Master is down ({}); no automatic switch-over (policy {:?}, or one already happened): run `swrepl switchover` after checking",
                    describe(reason),
                    self.settings.policy
                );
                tracing::error!("{message}");
                self.record("alert", EventOutcome::Completed, &message);
                self.run_alert("master_down").await;
                Acted::Continue
            }
            Decision::SwitchOver(reason) => self.switch_over(reason).await,
        }
    }

    async fn switch_over(&mut self, reason: DownReason) -> Acted {
        tracing::error!(
            "the Master is down ({}): switching over automatically",
            describe(reason)
        );
        let request = Request {
            yes: true,
            accept_data_loss: self.settings.accept_data_loss,
            receiver_root: Some(self.root.clone()),
            automatic: true,
            ..Request::default()
        };
        match cmd_switchover::switch_over(&self.config_path, &request).await {
            Ok(Finished::Completed { .. } | Finished::AlreadyDone) => {
                self.run_alert("switched_over").await;
                Acted::Promoted
            }
            Ok(Finished::DryRun { .. }) => Acted::Continue,
            Err(e) => {
                tracing::error!("automatic switch-over did not complete: {e:#}; an operator must decide (`swrepl switchover`)");
                self.run_alert("switchover_failed").await;
                Acted::Continue
            }
        }
    }

    /// Whether the Master can still be reached: by any of its TCP ports, or by the witness.
    /// When nothing can be probed the answer is "reachable": silence alone never promotes.
    async fn probe_master(&self, status: Option<&ReceiverStatus>) -> bool {
        let targets = self.probe_targets(status);
        if targets.is_empty() && self.witness.is_none() {
            tracing::error!("the Master is silent but cannot be probed: set [switchover] master_ports (and a witness); not switching over on silence");
            return true;
        }
        for target in &targets {
            let connect = tokio::net::TcpStream::connect(target.as_str());
            if let Ok(Ok(_)) = tokio::time::timeout(PORT_PROBE_TIMEOUT, connect).await {
                tracing::warn!(%target, "the Master is silent but its port answers: a broken link, not a dead Master");
                return true;
            }
        }
        tracing::warn!(?targets, "none of the Master's ports answers");
        let Some(witness) = &self.witness else {
            return false;
        };
        match run_argv(witness.words(), self.hook_timeout).await {
            Ok(out) if out.success() => {
                tracing::warn!("the witness reaches the Master: not switching over");
                true
            }
            Ok(out) if out.code == Some(1) => false,
            Ok(out) => {
                tracing::error!(
                    "the witness `{witness}` ended with {}: cannot confirm the Master is down",
                    out.summary()
                );
                true
            }
            Err(e) => {
                tracing::error!("the witness cannot run: {e}; cannot confirm the Master is down");
                true
            }
        }
    }

    /// `[switchover] master_ports`, else the sender's host on 5002 and 80.
    fn probe_targets(&self, status: Option<&ReceiverStatus>) -> Vec<String> {
        if !self.settings.master_ports.is_empty() {
            return self.settings.master_ports.clone();
        }
        let host = status
            .and_then(|s| s.peer.as_deref())
            .and_then(|peer| peer.parse::<std::net::SocketAddr>().ok())
            .map(|addr| addr.ip());
        host.map(|ip| {
            [5002, 80]
                .iter()
                .map(|port| std::net::SocketAddr::new(ip, *port).to_string())
                .collect()
        })
        .unwrap_or_default()
    }

    /// Runs the alert hook with `{name}` replaced by `what`; failures are logged, not fatal.
    async fn run_alert(&self, what: &str) {
        let Some(alert) = &self.alert else {
            return;
        };
        match run_argv(&alert.argv(what), self.hook_timeout).await {
            Ok(out) if out.success() => tracing::info!(event = what, "alert hook ran"),
            Ok(out) => tracing::error!("the alert hook `{alert}` ended with {}", out.summary()),
            Err(e) => tracing::error!("the alert hook cannot run: {e}"),
        }
    }

    fn record(&self, action: &str, outcome: EventOutcome, message: &str) {
        cmd_switchover::append(
            &self.log,
            Event::now(action, outcome, false, message.to_owned()),
        );
    }
}

fn describe(reason: DownReason) -> String {
    match reason {
        DownReason::ServiceNotRunning(state) => format!("it reports its service {state}"),
        DownReason::MasterSilent => "no heartbeat".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(heartbeat: u64, service: Option<&str>, connected: bool) -> ReceiverStatus {
        ReceiverStatus {
            connected,
            last_heartbeat_unix_ms: heartbeat,
            master_service: service.map(str::to_owned),
            ..ReceiverStatus::default()
        }
    }

    #[test]
    fn parses_the_status_files_service_text() {
        assert_eq!(
            parse_master_service("SwServerService: Stopped"),
            Some(ServiceState::Stopped)
        );
        assert_eq!(
            parse_master_service("SwServerService: StartPending"),
            Some(ServiceState::StartPending)
        );
        assert_eq!(parse_master_service("SwServerService: Unknown"), None);
        assert_eq!(parse_master_service("garbage"), None);
    }

    #[test]
    fn one_observation_per_heartbeat_and_silence_only_after_hearing_the_master() {
        let t0 = Instant::now();
        let mut tracker = HeartbeatTracker::default();
        // Never heard: a disconnected receiver is not a silent Master.
        assert_eq!(tracker.view(Some(&status(0, None, false)), t0), None);
        let running = status(1000, Some("SwServerService: Running"), true);
        assert_eq!(
            tracker.view(Some(&running), t0),
            Some(MasterView::Reported(ServiceState::Running))
        );
        // The same heartbeat again is no new information.
        assert_eq!(
            tracker.view(Some(&running), t0 + Duration::from_secs(3)),
            None
        );
        // Too long without a new heartbeat: silent.
        assert_eq!(
            tracker.view(Some(&running), t0 + HEARTBEAT_TIMEOUT + TICK),
            Some(MasterView::Silent)
        );
        // A disconnected sender: silent at once.
        let gone = status(1000, Some("SwServerService: Running"), false);
        assert_eq!(
            tracker.view(Some(&gone), t0 + Duration::from_secs(1)),
            Some(MasterView::Silent)
        );
    }

    #[test]
    fn utc_text_is_the_civil_date() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_text(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc_text(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn the_marker_refuses_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        refuse_if_promoted(dir.path()).unwrap();
        write_promoted_marker(dir.path(), "test").unwrap();
        let err = refuse_if_promoted(dir.path()).unwrap_err().to_string();
        assert!(err.contains("this Slave was promoted on"), "{err}");
        assert!(err.contains("fail-back"), "{err}");
    }
}
