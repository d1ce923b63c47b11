//! What the simulator tells people: live updates through a [`ProgressSink`] (terminal
//! progress bars with indicatif, or the demo's own view), and the end-of-run
//! [`SimReport`] with one [`PhoneReport`] per phone, as a table or JSON.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::fetch::HeaderCheck;
use super::url::UrlSource;

/// Where a phone is in its journey (phone-behaviour.md §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    PowerOn,
    Dhcp,
    Leased,
    /// Bricked: DHCP and TFTP 66/67 only.
    Recovery,
    FirmwareCheck,
    FirmwareDownload,
    Burning,
    Rebooting,
    ConfigDownload,
    /// Waiting for the next periodic check.
    Running,
    /// Final states.
    Provisioned,
    ConfigRejected,
    NoProvisioningUrl,
    Bricked,
    Failed,
}

impl Phase {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Provisioned
                | Phase::ConfigRejected
                | Phase::NoProvisioningUrl
                | Phase::Bricked
                | Phase::Failed
        )
    }
    pub fn label(self) -> &'static str {
        match self {
            Phase::PowerOn => "power on",
            Phase::Dhcp => "dhcp",
            Phase::Leased => "leased",
            Phase::Recovery => "recovery",
            Phase::FirmwareCheck => "firmware check",
            Phase::FirmwareDownload => "firmware download",
            Phase::Burning => "burning",
            Phase::Rebooting => "rebooting",
            Phase::ConfigDownload => "config download",
            Phase::Running => "running",
            Phase::Provisioned => "provisioned",
            Phase::ConfigRejected => "config rejected",
            Phase::NoProvisioningUrl => "no provisioning URL",
            Phase::Bricked => "bricked",
            Phase::Failed => "failed",
        }
    }
}

/// One live update from one phone. Sent on every phase change and, during a
/// transfer, at most every 100 ms.
#[derive(Debug, Clone, Serialize)]
pub struct PhoneUpdate {
    /// Index in the fleet.
    pub index: usize,
    /// `00:90:8f:…`, lowercase.
    pub mac: String,
    pub model: String,
    pub phase: Phase,
    pub ip: Option<Ipv4Addr>,
    /// Bytes of the current transfer.
    pub bytes: u64,
    /// Its size, when known.
    pub total: Option<u64>,
    /// A short note (the file, an error).
    pub detail: String,
}

/// Receives live updates. Implementations must be cheap: phones call it from their
/// tasks.
pub trait ProgressSink: Send + Sync {
    fn update(&self, u: &PhoneUpdate);
    /// Called once when every phone has finished.
    fn finish(&self) {}
}

/// Discards updates.
#[derive(Debug, Default)]
pub struct NoProgress;
impl ProgressSink for NoProgress {
    fn update(&self, _u: &PhoneUpdate) {}
}

/// A timeline entry.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Milliseconds since the phone powered on.
    pub at_ms: u64,
    pub phase: Phase,
    pub detail: String,
}

/// The end state of one phone.
#[derive(Debug, Clone, Serialize)]
pub struct PhoneReport {
    pub mac: String,
    pub model: String,
    /// `2.x` or `uc`.
    pub family: String,
    pub ip: Option<Ipv4Addr>,
    /// The final phase: provisioned, config_rejected, no_provisioning_url, bricked, failed.
    pub outcome: Phase,
    pub provisioned: bool,
    pub initial_version: String,
    pub final_version: String,
    pub elapsed_ms: u64,
    /// Every byte the phone received over file protocols.
    pub bytes: u64,
    pub firmware_bytes: u64,
    pub config_bytes: u64,
    pub boots: u32,
    pub dhcp_exchanges: u32,
    pub firmware_checks: u32,
    pub firmware_downloads: u32,
    pub burns: u32,
    pub crc_errors: u32,
    pub power_losses: u32,
    pub recoveries: u32,
    pub configs_applied: u32,
    pub url_source: Option<UrlSource>,
    pub firmware_url: Option<String>,
    pub config_url: Option<String>,
    pub config_hash: Option<String>,
    pub header_check: HeaderCheck,
    pub faults: Vec<String>,
    pub errors: Vec<String>,
    pub timeline: Vec<Step>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub phones: Vec<PhoneReport>,
    pub elapsed_ms: u64,
    pub provisioned: usize,
    pub total: usize,
    pub bytes: u64,
    /// Count per outcome.
    pub outcomes: HashMap<String, usize>,
}

impl SimReport {
    pub fn new(phones: Vec<PhoneReport>, elapsed: Duration) -> Self {
        let mut outcomes = HashMap::new();
        for p in &phones {
            *outcomes
                .entry(p.outcome.label().replace(' ', "_"))
                .or_insert(0) += 1;
        }
        SimReport {
            provisioned: phones.iter().filter(|p| p.provisioned).count(),
            total: phones.len(),
            bytes: phones.iter().map(|p| p.bytes).sum(),
            elapsed_ms: elapsed.as_millis() as u64,
            outcomes,
            phones,
        }
    }

    /// Every phone provisioned?
    pub fn all_provisioned(&self) -> bool {
        self.provisioned == self.total
    }

    /// The phone with this MAC (any spelling).
    pub fn phone(&self, mac: &str) -> Option<&PhoneReport> {
        let want: String = mac
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .collect::<String>()
            .to_ascii_lowercase();
        self.phones.iter().find(|p| p.mac.replace(':', "") == want)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A table, one line per phone, then a summary line.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<17}  {:<6}  {:<15}  {:<19}  {:>8}  {:>10}  {:<11}  {:<11}  NOTE",
            "MAC", "MODEL", "IP", "OUTCOME", "TIME", "BYTES", "FROM", "TO"
        );
        for p in &self.phones {
            let note = p
                .errors
                .last()
                .cloned()
                .unwrap_or_else(|| p.faults.join(","));
            let _ = writeln!(
                s,
                "{:<17}  {:<6}  {:<15}  {:<19}  {:>7.1}s  {:>10}  {:<11}  {:<11}  {}",
                p.mac,
                p.model,
                p.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                p.outcome.label(),
                p.elapsed_ms as f64 / 1000.0,
                human_bytes(p.bytes),
                p.initial_version,
                p.final_version,
                note
            );
        }
        let _ = writeln!(
            s,
            "{} of {} phones provisioned in {:.1}s, {} received",
            self.provisioned,
            self.total,
            self.elapsed_ms as f64 / 1000.0,
            human_bytes(self.bytes)
        );
        s
    }
}

use crate::tracker::state::human_bytes;

/// Terminal progress: an overall bar (phones finished) and, for small fleets, one bar
/// per phone showing its phase and transfer. Draws to stderr so `--json` on stdout
/// stays clean.
pub struct TerminalProgress {
    multi: MultiProgress,
    overall: ProgressBar,
    phones: Mutex<HashMap<usize, ProgressBar>>,
    per_phone: bool,
    finished: Mutex<HashMap<usize, bool>>,
    /// A phone moving bytes: a bar with byte counts.
    transfer_style: ProgressStyle,
    /// Any other phase: just the phase.
    phase_style: ProgressStyle,
}

impl std::fmt::Debug for TerminalProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TerminalProgress")
    }
}

impl TerminalProgress {
    /// `per_phone_limit`: show one bar per phone when the fleet has at most this many.
    pub fn new(phones: usize, per_phone_limit: usize) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let overall = multi.add(ProgressBar::new(phones as u64));
        overall.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30.green/white}] {pos}/{len} phones done {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        TerminalProgress {
            multi,
            overall,
            phones: Mutex::new(HashMap::new()),
            per_phone: phones <= per_phone_limit,
            finished: Mutex::new(HashMap::new()),
            transfer_style: ProgressStyle::with_template(
                "{prefix} {wide_msg} [{bar:20.cyan/blue}] {bytes}/{total_bytes}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
            phase_style: ProgressStyle::with_template("{prefix} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        }
    }

    fn bar(&self, u: &PhoneUpdate) -> Option<ProgressBar> {
        if !self.per_phone {
            return None;
        }
        let mut g = self.phones.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            g.entry(u.index)
                .or_insert_with(|| {
                    let b = self.multi.add(ProgressBar::new(0));
                    b.set_style(
                        ProgressStyle::with_template(
                            "{prefix} {wide_msg} [{bar:20.cyan/blue}] {bytes}/{total_bytes}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    b.set_prefix(format!("{} {:<6}", u.mac, u.model));
                    b
                })
                .clone(),
        )
    }
}

impl ProgressSink for TerminalProgress {
    fn update(&self, u: &PhoneUpdate) {
        if u.phase.is_final() {
            let mut f = self.finished.lock().unwrap_or_else(|p| p.into_inner());
            if f.insert(u.index, true).is_none() {
                self.overall.inc(1);
            }
        } else if matches!(u.phase, Phase::PowerOn | Phase::Dhcp) {
            // A phone that comes back (periodic re-check) is no longer "done".
            let mut f = self.finished.lock().unwrap_or_else(|p| p.into_inner());
            if f.remove(&u.index).is_some() {
                self.overall
                    .set_position(self.overall.position().saturating_sub(1));
            }
        }
        if let Some(b) = self.bar(u) {
            if u.bytes > 0 || u.total.is_some() {
                b.set_style(self.transfer_style.clone());
                b.set_length(u.total.unwrap_or(u.bytes));
                b.set_position(u.bytes);
            } else {
                b.set_style(self.phase_style.clone());
            }
            let ip = u.ip.map(|i| i.to_string()).unwrap_or_default();
            b.set_message(format!("{:<15} {:<18} {}", ip, u.phase.label(), u.detail));
        }
    }

    fn finish(&self) {
        self.overall.finish();
        let g = self.phones.lock().unwrap_or_else(|p| p.into_inner());
        for b in g.values() {
            b.finish();
        }
    }
}
