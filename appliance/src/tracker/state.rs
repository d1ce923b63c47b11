//! The per-phone state machine: wire events in, phone journeys out. Pure and
//! deterministic (time comes from the events and from `tick(now)`), so the journal can
//! rebuild it exactly and tests can drive it with recorded sequences.
//!
//! A phone's journey, as seen on the wire (phone-behaviour.md §5–§7):
//! `discovered` (DHCP seen) → `leased` (ACK) → `firmware_check` (a read of an image that
//! stayed under `firmware_check_bytes`: Range, early close, TFTP ERROR after two blocks)
//! → `firmware_download` (more than that) → `burning` (every byte of the image
//! delivered; the phone flashes it) → `rebooted` (DHCP again) → `config_download` →
//! `provisioned` (the config was delivered in full). Side states: `stalled` (no
//! progress for `stall_after`; it remembers where it stalled), `failed` (a download
//! aborted past the header, a config refused or aborted), `config_rejected` (the served
//! config's `system/type` names another model, so the phone discards it: §7.4; the
//! check is made by the runner, which reads the served file) and `recovery` (after a
//! burn the phone asks only for 66/67, or fetches the whole image again without
//! fetching its config: it is probably running its recovery loader, §6).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use provbox_config::TrackerConfig;
use provbox_protocols::events::{DhcpInfo, EventKind, Proto, WireEvent};
use provbox_storage::{FileKind, Index, names};
use serde::{Deserialize, Serialize};

use super::attribution::{ip_key, mac_in_path, peer_ip};
use super::ua::{self, normalize_mac};

/// Transfers tracked at once per device; a phone downloads one or two files at a time.
const MAX_ACTIVE: usize = 64;

/// Where a phone is on its journey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhoneState {
    Discovered,
    Leased,
    FirmwareCheck,
    FirmwareDownload,
    Burning,
    Rebooted,
    ConfigDownload,
    Provisioned,
    Stalled,
    Failed,
    ConfigRejected,
    Recovery,
}

impl PhoneState {
    pub const ALL: [PhoneState; 12] = [
        PhoneState::Discovered,
        PhoneState::Leased,
        PhoneState::FirmwareCheck,
        PhoneState::FirmwareDownload,
        PhoneState::Burning,
        PhoneState::Rebooted,
        PhoneState::ConfigDownload,
        PhoneState::Provisioned,
        PhoneState::Stalled,
        PhoneState::Failed,
        PhoneState::ConfigRejected,
        PhoneState::Recovery,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PhoneState::Discovered => "discovered",
            PhoneState::Leased => "leased",
            PhoneState::FirmwareCheck => "firmware_check",
            PhoneState::FirmwareDownload => "firmware_download",
            PhoneState::Burning => "burning",
            PhoneState::Rebooted => "rebooted",
            PhoneState::ConfigDownload => "config_download",
            PhoneState::Provisioned => "provisioned",
            PhoneState::Stalled => "stalled",
            PhoneState::Failed => "failed",
            PhoneState::ConfigRejected => "config_rejected",
            PhoneState::Recovery => "recovery",
        }
    }
}

impl std::fmt::Display for PhoneState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PhoneState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PhoneState::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown phone state `{s}`"))
    }
}

/// One transition, as journaled and streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    /// The wire event that caused it; 0 for a timer (stalled).
    pub seq: u64,
    pub at_ms: u64,
    pub key: String,
    pub mac: Option<String>,
    pub from: PhoneState,
    pub to: PhoneState,
    pub reason: Option<String>,
}

/// Where the shown firmware version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirmwareSource {
    /// The phone's own User-Agent said so.
    UserAgent,
    /// The name of the image it burned, or of the image whose header it read and then
    /// did not download (a phone skips the download only when the versions match).
    ImageName,
}

/// One line of a phone's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub seq: u64,
    pub at_ms: u64,
    /// `dhcp`, `tftp`, `ftp`, `http`, `https` or `tracker`. (Static names, borrowed
    /// rather than allocated for every entry of every request.)
    pub source: Cow<'static, str>,
    /// e.g. `dhcp_ack`, `transfer_started`, `state`.
    pub kind: Cow<'static, str>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PhoneState>,
}

/// One file served to a phone (the receipt's rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub transfer_id: u64,
    pub proto: Proto,
    /// As requested.
    pub path: String,
    /// The store file it resolved to.
    pub file: String,
    pub kind: FileKind,
    /// SHA-256 of the whole file that was served.
    pub sha256: String,
    pub version: Option<String>,
    pub offset: u64,
    pub bytes: u64,
    pub file_size: u64,
    pub started_ms: u64,
    pub duration_ms: u64,
    /// `finished` or `aborted` (borrowed when recorded: no copy per request).
    pub result: Cow<'static, str>,
    pub reason: Option<String>,
}

/// A transfer in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Active {
    id: u64,
    proto: Proto,
    path: String,
    file: String,
    kind: FileKind,
    sha256: String,
    version: Option<String>,
    offset: u64,
    size: u64,
    file_size: u64,
    started_ms: u64,
    bytes: u64,
    last_progress_ms: u64,
    /// Smoothed delivery rate, bytes/s.
    rate_bps: f64,
    /// Read past `firmware_check_bytes`: a download, not a header check.
    past_check: bool,
    /// TFTP: the server's smoothed round trip and packets sent again, as last reported.
    #[serde(default)]
    rtt_us: Option<u64>,
    #[serde(default)]
    retransmits: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StallKind {
    /// A transfer stopped progressing.
    Transfer,
    /// The phone did not come back after a burn.
    Burn,
    /// Nothing happened after a lease or a header check.
    Idle,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stall {
    from: PhoneState,
    kind: StallKind,
}

/// The burn in progress (or last done).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Burn {
    pub started_ms: u64,
    pub expected_ms: u64,
    pub image: String,
    pub version: Option<String>,
    pub sha256: String,
}

/// Everything known about one phone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    key: String,
    mac: Option<String>,
    ip: Option<IpAddr>,
    /// Known only by address (no lease seen).
    static_ip: bool,
    model: Option<String>,
    vendor: Option<String>,
    vendor_class: Option<String>,
    policy: Option<String>,
    requested_options: Vec<u8>,
    /// Some DHCP request of this phone asked for option 160.
    asked_160: bool,
    firmware: Option<String>,
    firmware_source: Option<FirmwareSource>,
    firmware_before: Option<String>,
    target_firmware: Option<String>,
    target_image: Option<String>,
    /// Directory of the last image fetched (targets are looked up there).
    firmware_dir: Option<String>,
    state: PhoneState,
    state_since_ms: u64,
    reason: Option<String>,
    stall: Option<Stall>,
    first_seen_ms: u64,
    last_seen_ms: u64,
    // The last event's text is the newest non-state timeline entry (see
    // `Device::last_event`), not a copy of it: a note per request is hot. Snapshots
    // written with a `last_event` key still load (serde ignores it).
    active: BTreeMap<u64, Active>,
    burn: Option<Burn>,
    /// This boot follows a burn, and no config was fetched in it yet.
    after_burn_boot: bool,
    config_since_boot: bool,
    /// The image whose header was read last, and its version.
    header_checked: Option<(String, Option<String>)>,
    /// Per image hash, how many leading bytes were delivered (Range/REST resumes add up).
    prefix: BTreeMap<String, u64>,
    /// The last config delivered in full: (file, sha256).
    last_config: Option<(String, String)>,
    provisioned_ms: Option<u64>,
    burns: u32,
    reboots: u32,
    history: Vec<(PhoneState, u64)>,
    timeline: VecDeque<TimelineEntry>,
    files: VecDeque<FileRecord>,
    /// The id of the newest transfer this device started (ids only grow).
    #[serde(default)]
    newest_transfer: u64,
}

const TIMELINE_MAX: usize = 400;
const FILES_MAX: usize = 500;
const HISTORY_MAX: usize = 200;

/// A transfer's progress, for display.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressView {
    pub transfer_id: u64,
    pub proto: Proto,
    pub file: String,
    pub kind: FileKind,
    /// Bytes of the file delivered so far (a resumed transfer counts from its offset).
    pub bytes: u64,
    pub total: u64,
    pub pct: f64,
    pub rate_bps: u64,
    pub eta_s: Option<u64>,
    pub started_ms: u64,
    pub last_progress_ms: u64,
    /// TFTP: the smoothed DATA→ACK round trip, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    /// TFTP: packets sent again so far in this transfer.
    #[serde(default)]
    pub retransmits: u64,
}

/// A burn, for display.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BurnView {
    pub started_ms: u64,
    pub expected_ms: u64,
    pub elapsed_ms: u64,
    pub image: String,
    pub version: Option<String>,
}

/// One row of the device table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    pub key: String,
    pub mac: Option<String>,
    pub ip: Option<IpAddr>,
    pub static_ip: bool,
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub policy: Option<String>,
    pub firmware: Option<String>,
    pub firmware_source: Option<FirmwareSource>,
    pub target_firmware: Option<String>,
    pub target_image: Option<String>,
    /// The phone's version differs from the store's newest image for its model.
    pub update_pending: bool,
    pub state: PhoneState,
    pub state_since_ms: u64,
    /// Why: the failure, the stall, the rejection, the recovery.
    pub reason: Option<String>,
    /// For `stalled`: the state it stalled in.
    pub stalled_in: Option<PhoneState>,
    pub progress: Option<ProgressView>,
    pub burn: Option<BurnView>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub last_event: Option<String>,
    pub active_transfers: usize,
    pub provisioned_ms: Option<u64>,
    /// Server time this view was made at (for client-side ETA and burn bars).
    pub now_ms: u64,
}

/// A device with its timeline and files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub view: DeviceView,
    pub vendor_class: Option<String>,
    pub requested_options: Vec<u8>,
    pub timeline: Vec<TimelineEntry>,
    pub files: Vec<FileRecord>,
    pub states: Vec<StateAt>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateAt {
    pub state: PhoneState,
    pub at_ms: u64,
}

/// What was done to a phone, for CI: `GET /api/v1/devices/{mac}/receipt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub key: String,
    pub mac: Option<String>,
    pub ip: Option<IpAddr>,
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub policy: Option<String>,
    pub state: PhoneState,
    pub reason: Option<String>,
    pub provisioned: bool,
    pub firmware_before: Option<String>,
    pub firmware_after: Option<String>,
    pub target_firmware: Option<String>,
    pub update_pending: bool,
    pub first_seen_ms: u64,
    pub provisioned_ms: Option<u64>,
    pub time_to_provisioned_ms: Option<u64>,
    pub burns: u32,
    pub reboots: u32,
    pub files: Vec<FileRecord>,
    pub states: Vec<StateAt>,
}

/// A served config whose `system/type` the runner should compare with the phone's model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigCheck {
    pub key: String,
    pub file: String,
    pub sha256: String,
}

/// Settings taken from `[tracker]`, in milliseconds.
#[derive(Debug, Clone)]
pub struct Settings {
    pub stall_after_ms: u64,
    pub default_burn_ms: u64,
    /// Uppercase model → expected burn time.
    pub burn_ms: BTreeMap<String, u64>,
    pub firmware_check_bytes: u64,
    pub check_config_model: bool,
}

impl Settings {
    pub fn from_config(cfg: &TrackerConfig) -> Settings {
        Settings {
            stall_after_ms: cfg.stall_after.get().as_millis() as u64,
            default_burn_ms: cfg.default_burn_time.get().as_millis() as u64,
            burn_ms: cfg
                .burn_time
                .iter()
                .map(|(k, v)| (k.to_ascii_uppercase(), v.get().as_millis() as u64))
                .collect(),
            firmware_check_bytes: cfg.firmware_check_bytes,
            check_config_model: cfg.check_config_model,
        }
    }
}

/// The whole fleet's state: what a journal snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    devices: BTreeMap<String, Device>,
    /// Address → MAC from DHCP ACKs.
    leases: HashMap<String, String>,
    /// Address → MAC learnt from User-Agents (static addresses).
    hints: HashMap<String, String>,
    /// Transfer id → device key.
    transfers: HashMap<u64, String>,
    pub last_seq: u64,
    pub last_transfer_id: u64,
    now_ms: u64,
}

/// The tracker: a [`Fleet`] and the rules.
#[derive(Debug, Clone)]
pub struct Tracker {
    settings: Settings,
    fleet: Fleet,
    /// Devices changed since their views were last published. A set looked up by
    /// `&str`: a request to a device already in it allocates nothing.
    touched: BTreeSet<String>,
    checks: Vec<ConfigCheck>,
}

/// `ip` as text in `buf`, without allocating (45 bytes is the longest IPv6 form).
pub(super) fn ip_str<'a>(ip: &IpAddr, buf: &'a mut [u8; 48]) -> &'a str {
    use std::io::Write as _;
    let mut w: &mut [u8] = &mut buf[..];
    let len = match write!(w, "{ip}") {
        Ok(()) => 48 - w.len(),
        Err(_) => 0,
    };
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

/// `1.5 MiB`-style sizes for people (timeline notes, the CLI).
pub(crate) fn human_bytes(n: u64) -> String {
    HumanBytes(n).to_string()
}

/// A size for people, formatted in place: a timeline note is written into one buffer,
/// not one string per number. Integer arithmetic with ties to even, which gives the
/// same text as `{:.1}` of the exact quotient (and skips float formatting, a visible
/// cost of every tracked transfer).
pub(crate) struct HumanBytes(pub u64);

impl std::fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let n = self.0;
        let mut u = 0;
        while u < UNITS.len() - 1 && n >> (10 * (u + 1)) > 0 {
            u += 1;
        }
        if u == 0 {
            return write!(f, "{n} B");
        }
        let div = 1u128 << (10 * u);
        let scaled = n as u128 * 10;
        let (mut tenths, rem) = (scaled / div, scaled % div);
        if rem * 2 > div || (rem * 2 == div && tenths % 2 == 1) {
            tenths += 1;
        }
        write!(f, "{}.{} {}", tenths / 10, tenths % 10, UNITS[u])
    }
}

/// A duration for people, formatted in place (see [`HumanBytes`]).
struct HumanMs(u64);

impl std::fmt::Display for HumanMs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0;
        if ms < 1000 {
            write!(f, "{ms} ms")
        } else if ms < 120_000 {
            let tenths = (ms + 50) / 100;
            write!(f, "{}.{} s", tenths / 10, tenths % 10)
        } else {
            write!(f, "{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
        }
    }
}

/// The protocol's name in capitals, for notes.
fn proto_upper(p: Proto) -> &'static str {
    match p {
        Proto::Tftp => "TFTP",
        Proto::Ftp => "FTP",
        Proto::Http => "HTTP",
        Proto::Https => "HTTPS",
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        100.0
    } else {
        (part as f64 * 100.0 / whole as f64).min(100.0)
    }
}

/// The kind of a served or requested file: the store's verdict where it has the file,
/// else the extension (`.cfg` and `.xml` are configuration, as for Cisco and Grandstream).
fn classify(file: &str, index: &Index) -> FileKind {
    if let Some(e) = index.find(file)
        && e.kind != FileKind::Other
    {
        return e.kind;
    }
    let lower = file.to_ascii_lowercase();
    match FileKind::of(&lower) {
        FileKind::Other if lower.ends_with(".xml") => FileKind::Config,
        k => k,
    }
}

fn image_version(file: &str, index: &Index) -> Option<String> {
    index
        .find(file)
        .and_then(|e| e.version.clone())
        .or_else(|| names::parse_image_name(file.rsplit('/').next().unwrap_or(file)).version)
}

fn same_model(a: &str, b: &str) -> bool {
    let strip = |s: &str| {
        let u = s.trim().to_ascii_uppercase();
        u.strip_prefix("UC").map(str::to_string).unwrap_or(u)
    };
    strip(a) == strip(b)
}

/// A DHCP message type's timeline kind: `DHCPACK` → `dhcp_ack`.
fn dhcp_kind(what: &str) -> &'static str {
    match what {
        "DHCPDISCOVER" => "dhcp_discover",
        "DHCPOFFER" => "dhcp_offer",
        "DHCPREQUEST" => "dhcp_request",
        "DHCPACK" => "dhcp_ack",
        "DHCPNAK" => "dhcp_nak",
        "DHCPRELEASE" => "dhcp_release",
        "DHCPDECLINE" => "dhcp_decline",
        "DHCPINFORM" => "dhcp_inform",
        _ => "dhcp",
    }
}

fn proto_source(p: Proto) -> &'static str {
    p.as_str()
}

impl Device {
    fn new(key: String, at: u64) -> Device {
        Device {
            key,
            mac: None,
            ip: None,
            static_ip: false,
            model: None,
            vendor: None,
            vendor_class: None,
            policy: None,
            requested_options: Vec::new(),
            asked_160: false,
            firmware: None,
            firmware_source: None,
            firmware_before: None,
            target_firmware: None,
            target_image: None,
            firmware_dir: None,
            state: PhoneState::Discovered,
            state_since_ms: at,
            reason: None,
            stall: None,
            first_seen_ms: at,
            last_seen_ms: at,
            active: BTreeMap::new(),
            burn: None,
            after_burn_boot: false,
            config_since_boot: false,
            header_checked: None,
            prefix: BTreeMap::new(),
            last_config: None,
            provisioned_ms: None,
            burns: 0,
            reboots: 0,
            history: vec![(PhoneState::Discovered, at)],
            timeline: VecDeque::new(),
            files: VecDeque::new(),
            newest_transfer: 0,
        }
    }

    fn note(&mut self, seq: u64, at: u64, source: &'static str, kind: &'static str, text: String) {
        self.last_seen_ms = self.last_seen_ms.max(at);
        self.push_timeline(TimelineEntry {
            seq,
            at_ms: at,
            source: Cow::Borrowed(source),
            kind: Cow::Borrowed(kind),
            text,
            state: None,
        });
    }

    /// The text of the last event noted (state changes are not events).
    fn last_event(&self) -> Option<&str> {
        self.timeline
            .iter()
            .rev()
            .find(|e| e.state.is_none())
            .map(|e| e.text.as_str())
    }

    fn push_timeline(&mut self, e: TimelineEntry) {
        if self.timeline.len() >= TIMELINE_MAX {
            self.timeline.pop_front();
        }
        self.timeline.push_back(e);
    }

    fn set_state(
        &mut self,
        to: PhoneState,
        reason: Option<String>,
        seq: u64,
        at: u64,
        out: &mut Vec<StateChange>,
    ) {
        if self.state == to && self.reason == reason {
            return;
        }
        let from = self.state;
        self.state = to;
        self.reason = reason.clone();
        if from != to {
            self.state_since_ms = at;
            if self.history.len() >= HISTORY_MAX {
                self.history.remove(0);
            }
            self.history.push((to, at));
        }
        if to != PhoneState::Stalled {
            self.stall = None;
        }
        let text = match &reason {
            Some(r) => format!("{from} → {to}: {r}"),
            None => format!("{from} → {to}"),
        };
        self.push_timeline(TimelineEntry {
            seq,
            at_ms: at,
            source: Cow::Borrowed("tracker"),
            kind: Cow::Borrowed("state"),
            text,
            state: Some(to),
        });
        out.push(StateChange {
            seq,
            at_ms: at,
            key: self.key.clone(),
            mac: self.mac.clone(),
            from,
            to,
            reason,
        });
    }

    fn set_firmware(&mut self, version: Option<String>, source: FirmwareSource) {
        let Some(v) = version else { return };
        // A User-Agent is the phone's own word; an inference never overrides it for the
        // same boot (the User-Agent is refreshed on every HTTP request anyway).
        if source == FirmwareSource::ImageName
            && self.firmware_source == Some(FirmwareSource::UserAgent)
            && self.burn.is_none()
        {
            return;
        }
        if self.firmware_before.is_none() && self.burns == 0 {
            self.firmware_before = Some(v.clone());
        }
        self.firmware = Some(v);
        self.firmware_source = Some(source);
    }

    fn is_phone(&self) -> bool {
        self.model.is_some()
            || self.vendor.is_some()
            || !self.files.is_empty()
            || self
                .requested_options
                .iter()
                .any(|o| matches!(o, 66 | 67 | 160))
    }

    fn progress(&self) -> Option<ProgressView> {
        let a = self
            .active
            .values()
            .max_by_key(|a| (a.past_check, a.started_ms, a.id))?;
        let bytes = a.offset + a.bytes;
        let rate = a.rate_bps.max(0.0) as u64;
        let eta_s = (rate > 0).then(|| a.file_size.saturating_sub(bytes).div_ceil(rate));
        Some(ProgressView {
            transfer_id: a.id,
            proto: a.proto,
            file: a.file.clone(),
            kind: a.kind,
            bytes,
            total: a.file_size,
            pct: pct(bytes, a.file_size),
            rate_bps: rate,
            eta_s,
            started_ms: a.started_ms,
            last_progress_ms: a.last_progress_ms,
            rtt_us: a.rtt_us,
            retransmits: a.retransmits,
        })
    }

    fn view(&self, now: u64) -> DeviceView {
        DeviceView {
            key: self.key.clone(),
            mac: self.mac.clone(),
            ip: self.ip,
            static_ip: self.static_ip,
            model: self.model.clone(),
            vendor: self.vendor.clone(),
            policy: self.policy.clone(),
            firmware: self.firmware.clone(),
            firmware_source: self.firmware_source,
            target_firmware: self.target_firmware.clone(),
            target_image: self.target_image.clone(),
            update_pending: match (&self.firmware, &self.target_firmware) {
                (Some(f), Some(t)) => names::compare_versions(f, t) != std::cmp::Ordering::Equal,
                _ => false,
            },
            state: self.state,
            state_since_ms: self.state_since_ms,
            reason: self.reason.clone(),
            stalled_in: self.stall.as_ref().map(|s| s.from),
            progress: self.progress(),
            burn: self
                .burn
                .as_ref()
                .filter(|_| {
                    matches!(
                        self.state,
                        PhoneState::Burning | PhoneState::Recovery | PhoneState::Stalled
                    )
                })
                .map(|b| BurnView {
                    started_ms: b.started_ms,
                    expected_ms: b.expected_ms,
                    elapsed_ms: now.saturating_sub(b.started_ms),
                    image: b.image.clone(),
                    version: b.version.clone(),
                }),
            first_seen_ms: self.first_seen_ms,
            last_seen_ms: self.last_seen_ms,
            last_event: self.last_event().map(str::to_string),
            active_transfers: self.active.len(),
            provisioned_ms: self.provisioned_ms,
            now_ms: now,
        }
    }

    fn states(&self) -> Vec<StateAt> {
        self.history
            .iter()
            .map(|(state, at_ms)| StateAt {
                state: *state,
                at_ms: *at_ms,
            })
            .collect()
    }

    /// Restores the state a stall interrupted when `trigger` is evidence the phone moved.
    fn unstall(&mut self, trigger: Trigger, seq: u64, at: u64, out: &mut Vec<StateChange>) {
        let Some(stall) = self.stall.clone() else {
            return;
        };
        if self.state != PhoneState::Stalled {
            self.stall = None;
            return;
        }
        let resumes = match stall.kind {
            StallKind::Idle => true,
            StallKind::Transfer => matches!(trigger, Trigger::Transfer | Trigger::Discover),
            StallKind::Burn => matches!(trigger, Trigger::Discover | Trigger::Dhcp),
        };
        if resumes {
            self.set_state(stall.from, None, seq, at, out);
        }
    }

    fn record_file(
        &mut self,
        a: Active,
        bytes: u64,
        duration_ms: u64,
        result: &'static str,
        reason: Option<String>,
    ) {
        if self.files.len() >= FILES_MAX {
            self.files.pop_front();
        }
        self.files.push_back(FileRecord {
            transfer_id: a.id,
            proto: a.proto,
            path: a.path,
            file: a.file,
            kind: a.kind,
            sha256: a.sha256,
            version: a.version,
            offset: a.offset,
            bytes,
            file_size: a.file_size,
            started_ms: a.started_ms,
            duration_ms,
            result: Cow::Borrowed(result),
            reason,
        });
    }

    fn add_prefix(&mut self, a: &Active, bytes: u64) -> u64 {
        // Looked up by `&str` first: re-reads of a version allocate nothing.
        if !self.prefix.contains_key(&a.sha256) {
            self.prefix.insert(a.sha256.clone(), 0);
        }
        let Some(p) = self.prefix.get_mut(&a.sha256) else {
            return 0;
        };
        if a.offset <= *p {
            *p = (*p).max(a.offset + bytes);
        }
        *p
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Discover,
    Dhcp,
    Transfer,
}

impl Tracker {
    pub fn new(cfg: &TrackerConfig) -> Tracker {
        Tracker::with_settings(Settings::from_config(cfg))
    }

    pub fn with_settings(settings: Settings) -> Tracker {
        Tracker {
            settings,
            fleet: Fleet::default(),
            touched: BTreeSet::new(),
            checks: Vec::new(),
        }
    }

    /// Replaces the fleet (restore from a journal snapshot).
    pub fn restore(&mut self, fleet: Fleet) {
        self.fleet = fleet;
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    pub fn now_ms(&self) -> u64 {
        self.fleet.now_ms
    }

    /// Keys of the devices changed since the last call (state, progress, anything shown).
    pub fn take_touched(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.touched)
    }

    /// Configs delivered since the last call that should be checked against the
    /// phone's model (see [`Tracker::config_verdict`]).
    pub fn take_config_checks(&mut self) -> Vec<ConfigCheck> {
        std::mem::take(&mut self.checks)
    }

    fn touch(&mut self, key: &str) {
        if !self.touched.contains(key) {
            self.touched.insert(key.to_string());
        }
    }

    fn device_mut(&mut self, key: &str, at: u64) -> &mut Device {
        let devices = &mut self.fleet.devices;
        // Looked up by `&str` first: `entry` would copy the key on every request.
        if !devices.contains_key(key) {
            devices.insert(key.to_string(), Device::new(key.to_string(), at));
        }
        match devices.get_mut(key) {
            Some(d) => d,
            None => unreachable!("the device was inserted above"),
        }
    }

    fn burn_ms(&self, model: Option<&str>) -> u64 {
        model
            .and_then(|m| self.settings.burn_ms.get(&m.to_ascii_uppercase()))
            .copied()
            .unwrap_or(self.settings.default_burn_ms)
    }

    /// Applies one wire event; returns the state transitions it caused.
    pub fn apply(&mut self, ev: &WireEvent, index: &Index) -> Vec<StateChange> {
        self.fleet.last_seq = self.fleet.last_seq.max(ev.seq);
        self.fleet.now_ms = self.fleet.now_ms.max(ev.at_ms);
        let mut out = Vec::new();
        match &ev.kind {
            EventKind::DhcpDiscover(i) => self.on_dhcp("DHCPDISCOVER", i, ev, index, &mut out),
            EventKind::DhcpOffer(i) => self.on_dhcp("DHCPOFFER", i, ev, index, &mut out),
            EventKind::DhcpRequest(i) => self.on_dhcp("DHCPREQUEST", i, ev, index, &mut out),
            EventKind::DhcpAck(i) => self.on_dhcp("DHCPACK", i, ev, index, &mut out),
            EventKind::DhcpNak(i) => self.on_dhcp("DHCPNAK", i, ev, index, &mut out),
            EventKind::DhcpRelease(i) => self.on_dhcp("DHCPRELEASE", i, ev, index, &mut out),
            EventKind::DhcpDecline(i) => self.on_dhcp("DHCPDECLINE", i, ev, index, &mut out),
            EventKind::DhcpInform(i) => self.on_dhcp("DHCPINFORM", i, ev, index, &mut out),
            EventKind::TransferStarted {
                id,
                proto,
                peer,
                path,
                file,
                file_size,
                offset,
                size,
                sha256,
                user_agent,
                ..
            } => {
                self.fleet.last_transfer_id = self.fleet.last_transfer_id.max(*id);
                let start = Start {
                    id: *id,
                    proto: *proto,
                    peer,
                    path,
                    file,
                    file_size: *file_size,
                    offset: *offset,
                    size: *size,
                    sha256,
                    user_agent: user_agent.as_deref(),
                };
                self.on_started(start, ev, index, &mut out);
            }
            EventKind::TransferProgress {
                id,
                bytes,
                rtt_us,
                retransmits,
            } => self.on_progress(*id, *bytes, (*rtt_us, *retransmits), ev, &mut out),
            EventKind::TransferFinished {
                id,
                bytes,
                duration_ms,
                ..
            } => self.on_end(*id, *bytes, *duration_ms, None, ev, index, &mut out),
            EventKind::TransferAborted {
                id,
                bytes,
                reason,
                duration_ms,
            } => self.on_end(*id, *bytes, *duration_ms, Some(reason), ev, index, &mut out),
            EventKind::TransferRefused {
                proto,
                peer,
                path,
                reason,
                user_agent,
            } => self.on_refused(
                *proto,
                peer,
                path,
                reason,
                user_agent.as_deref(),
                ev,
                index,
                &mut out,
            ),
            EventKind::UploadStored {
                proto,
                peer,
                path,
                bytes,
                user_agent,
            } => {
                let text = format!(
                    "{} upload {path} stored ({})",
                    proto_upper(*proto),
                    human_bytes(*bytes)
                );
                self.on_upload(
                    *proto,
                    peer,
                    path,
                    user_agent.as_deref(),
                    "upload",
                    text,
                    ev,
                );
            }
            EventKind::UploadFailed {
                proto,
                peer,
                path,
                reason,
                user_agent,
            } => {
                let text = format!("{} upload {path} not stored: {reason}", proto_upper(*proto));
                self.on_upload(
                    *proto,
                    peer,
                    path,
                    user_agent.as_deref(),
                    "upload_failed",
                    text,
                    ev,
                );
            }
            EventKind::DeviceForgotten { key } => {
                // Its lease and address hints stay: the phone still holds its address,
                // and its next request starts a new row under the same key.
                if self.fleet.devices.remove(key).is_some() {
                    self.fleet.transfers.retain(|_, k| k != key);
                    self.touch(key);
                }
            }
            EventKind::StoreChanged { .. } => {
                let keys: Vec<String> = self.fleet.devices.keys().cloned().collect();
                for k in keys {
                    if self.refresh_target(&k, index) {
                        self.touch(&k);
                    }
                }
            }
        }
        out
    }

    /// Looks up the store's newest image for the phone's model; true if it changed.
    fn refresh_target(&mut self, key: &str, index: &Index) -> bool {
        let Some(d) = self.fleet.devices.get_mut(key) else {
            return false;
        };
        let model = d.model.clone().or_else(|| {
            d.files
                .iter()
                .rev()
                .find(|f| f.kind == FileKind::Firmware)
                .and_then(|f| {
                    names::parse_image_name(f.file.rsplit('/').next().unwrap_or(&f.file)).model
                })
        });
        let Some(model) = model else { return false };
        let dir = d.firmware_dir.clone().unwrap_or_default();
        let found = index
            .newest_image(&dir, &model)
            .or_else(|| index.newest_image("", &model));
        let (v, img) = match found {
            Some(e) => (e.version.clone(), Some(e.path.clone())),
            None => (None, None),
        };
        let changed = d.target_firmware != v || d.target_image != img;
        d.target_firmware = v;
        d.target_image = img;
        changed
    }

    fn on_dhcp(
        &mut self,
        what: &str,
        info: &DhcpInfo,
        ev: &WireEvent,
        index: &Index,
        out: &mut Vec<StateChange>,
    ) {
        let Some(mac) = normalize_mac(&info.mac) else {
            return;
        };
        let (seq, at) = (ev.seq, ev.at_ms);
        let is = |k: &str| what == k;
        if is("DHCPACK")
            && let Some(ip) = info.ip
        {
            self.bind_lease(&mac, IpAddr::V4(ip), seq, at, out);
        }
        if (is("DHCPRELEASE") || is("DHCPDECLINE"))
            && let Some(ip) = info.ip
        {
            let k = ip.to_string();
            if self.fleet.leases.get(&k) == Some(&mac) {
                self.fleet.leases.remove(&k);
            }
        }
        if is("DHCPINFORM")
            && let Some(ip) = info.ip
        {
            self.fleet.hints.insert(ip.to_string(), mac.clone());
        }
        let d = self.device_mut(&mac, at);
        d.mac = Some(mac.clone());
        d.static_ip = false;
        if let Some(m) = &info.model {
            d.model = Some(m.clone());
        }
        if let Some(vc) = &info.vendor_class {
            d.vendor_class = Some(vc.clone());
        }
        if info.policy.is_some() && (is("DHCPOFFER") || is("DHCPACK")) {
            d.policy = info.policy.clone();
        }
        let asks = if is("DHCPDISCOVER") || is("DHCPREQUEST") || is("DHCPINFORM") {
            if !info.requested_options.is_empty() {
                d.requested_options = info.requested_options.clone();
            }
            Some(&info.requested_options)
        } else {
            None
        };
        let mut text = what.to_string();
        if let Some(ip) = info.ip {
            text.push_str(&format!(" {ip}"));
        }
        if is("DHCPDISCOVER") {
            if let Some(m) = &info.model {
                text.push_str(&format!(", model {m}"));
            }
            if !info.requested_options.is_empty() {
                let wanted: Vec<String> = info
                    .requested_options
                    .iter()
                    .filter(|o| matches!(o, 66 | 67 | 150 | 160))
                    .map(u8::to_string)
                    .collect();
                if !wanted.is_empty() {
                    text.push_str(&format!(", asks {}", wanted.join("/")));
                }
            }
        }
        if is("DHCPACK") || is("DHCPOFFER") {
            for (code, v) in &info.provisioning {
                text.push_str(&format!(", {code}={v}"));
            }
            if let Some(p) = &info.policy {
                text.push_str(&format!(" (policy {p})"));
            }
        }
        if let Some(r) = &info.reason {
            text.push_str(&format!(": {r}"));
        }
        d.note(seq, at, "dhcp", dhcp_kind(what), text);

        let trigger = if is("DHCPDISCOVER") {
            Trigger::Discover
        } else {
            Trigger::Dhcp
        };
        d.unstall(trigger, seq, at, out);

        let ask_160 = asks.is_some_and(|a| a.contains(&160));
        let ask_66_67 = asks.is_some_and(|a| a.contains(&66) || a.contains(&67));
        let recovery_ask = asks.is_some() && d.asked_160 && !ask_160 && ask_66_67;
        let back_on_dhcp = is("DHCPDISCOVER") || is("DHCPREQUEST") || is("DHCPACK");
        match d.state {
            PhoneState::Burning if back_on_dhcp => {
                if recovery_ask {
                    d.set_state(
                        PhoneState::Recovery,
                        Some("after the burn the phone asks only for options 66/67, not 160: it is probably running its recovery loader".into()),
                        seq,
                        at,
                        out,
                    );
                } else {
                    let v = d.burn.as_ref().and_then(|b| b.version.clone());
                    d.set_firmware(v, FirmwareSource::ImageName);
                    d.burn = None;
                    d.reboots += 1;
                    d.after_burn_boot = true;
                    d.config_since_boot = false;
                    d.set_state(PhoneState::Rebooted, None, seq, at, out);
                }
            }
            PhoneState::Recovery if back_on_dhcp && asks.is_some() && (ask_160 || !ask_66_67) => {
                if let Some(b) = d.burn.take() {
                    d.set_firmware(b.version, FirmwareSource::ImageName);
                    d.after_burn_boot = true;
                }
                d.reboots += 1;
                d.config_since_boot = false;
                d.set_state(PhoneState::Rebooted, None, seq, at, out);
            }
            PhoneState::Provisioned | PhoneState::ConfigRejected if is("DHCPDISCOVER") => {
                d.reboots += 1;
                d.after_burn_boot = false;
                d.config_since_boot = false;
                d.set_state(PhoneState::Rebooted, None, seq, at, out);
            }
            PhoneState::Leased
            | PhoneState::FirmwareCheck
            | PhoneState::FirmwareDownload
            | PhoneState::ConfigDownload
            | PhoneState::Failed
                if is("DHCPDISCOVER") && d.active.is_empty() =>
            {
                d.set_state(PhoneState::Discovered, None, seq, at, out);
            }
            PhoneState::Discovered if is("DHCPACK") => {
                d.set_state(PhoneState::Leased, None, seq, at, out);
            }
            _ => {}
        }
        if ask_160 && d.state != PhoneState::Recovery {
            d.asked_160 = true;
        }
        self.refresh_target(&mac, index);
        self.touch(&mac);
    }

    /// Records `ip` as leased to `mac`: the previous holder loses it, and a row created
    /// for that address before the ACK (a transfer seen first) is merged into the phone.
    fn bind_lease(&mut self, mac: &str, ip: IpAddr, seq: u64, at: u64, out: &mut Vec<StateChange>) {
        let k = ip.to_string();
        self.fleet.leases.insert(k.clone(), mac.to_string());
        // Whoever held the address before (released, expired, or a lease we never saw
        // end) no longer has it.
        let previous: Vec<String> = self
            .fleet
            .devices
            .values()
            .filter(|d| d.ip == Some(ip) && d.key != mac && d.mac.is_some())
            .map(|d| d.key.clone())
            .collect();
        for prev in previous {
            if let Some(p) = self.fleet.devices.get_mut(&prev) {
                p.ip = None;
                p.note(
                    seq,
                    at,
                    "dhcp",
                    "lease_lost",
                    format!("address {ip} is now leased to {mac}"),
                );
                self.touch(&prev);
            }
        }
        self.fleet.hints.remove(&k);
        let _ = self.device_mut(mac, at);
        if let Some(st) = self.fleet.devices.remove(&ip_key(&ip)) {
            self.merge_into(mac, st, seq, at, out);
            // Tell streaming clients the address row is gone.
            self.touched.insert(ip_key(&ip));
        }
        if let Some(d) = self.fleet.devices.get_mut(mac) {
            d.ip = Some(ip);
        }
    }

    fn merge_into(
        &mut self,
        mac: &str,
        from: Device,
        seq: u64,
        at: u64,
        out: &mut Vec<StateChange>,
    ) {
        for id in from.active.keys() {
            self.fleet.transfers.insert(*id, mac.to_string());
        }
        let Some(d) = self.fleet.devices.get_mut(mac) else {
            return;
        };
        let was_fresh = d.files.is_empty() && d.active.is_empty();
        d.active.extend(from.active);
        let mut tl: Vec<TimelineEntry> = d.timeline.drain(..).chain(from.timeline).collect();
        tl.sort_by_key(|e| (e.at_ms, e.seq));
        d.timeline = tl.into_iter().rev().take(TIMELINE_MAX).rev().collect();
        let mut files: Vec<FileRecord> = d.files.drain(..).chain(from.files).collect();
        files.sort_by_key(|f| (f.started_ms, f.transfer_id));
        d.files = files.into_iter().rev().take(FILES_MAX).rev().collect();
        for (sha, p) in from.prefix {
            let e = d.prefix.entry(sha).or_insert(0);
            *e = (*e).max(p);
        }
        d.first_seen_ms = d.first_seen_ms.min(from.first_seen_ms);
        if d.model.is_none() {
            d.model = from.model;
        }
        if d.vendor.is_none() {
            d.vendor = from.vendor;
        }
        if d.firmware.is_none() {
            d.firmware = from.firmware;
            d.firmware_source = from.firmware_source;
            d.firmware_before = from.firmware_before;
        }
        if was_fresh && !matches!(from.state, PhoneState::Discovered | PhoneState::Leased) {
            d.burn = from.burn;
            d.header_checked = from.header_checked;
            d.last_config = from.last_config;
            d.provisioned_ms = from.provisioned_ms;
            d.firmware_dir = from.firmware_dir;
            d.stall = from.stall;
            d.set_state(
                from.state,
                Some(format!(
                    "transfers from {} seen before its DHCP ACK were merged into this phone",
                    from.key
                )),
                seq,
                at,
                out,
            );
        }
    }

    /// Finds (or creates) the device a transfer belongs to.
    fn attribute(
        &mut self,
        peer: &SocketAddr,
        path: &str,
        user_agent: Option<&str>,
        at: u64,
    ) -> String {
        let ip = peer_ip(peer);
        let ua = user_agent.and_then(ua::parse);
        let by_path = mac_in_path(path);
        let by_ua = ua.as_ref().and_then(|u| u.mac.clone());
        // The address as the lease table's key, formatted once, on the stack (this runs
        // per request).
        let mut buf = [0u8; 48];
        let ip_s = ip_str(&ip, &mut buf);
        let leased = self.fleet.leases.contains_key(ip_s);
        let key = if let Some(m) = by_path.or(by_ua.clone()) {
            m
        } else if let Some(m) = self.fleet.leases.get(ip_s).or(self.fleet.hints.get(ip_s)) {
            m.clone()
        } else {
            ip_key(&ip)
        };
        // A MAC the phone itself sent, from an address no lease explains: remember it,
        // so its TFTP and FTP requests (which carry no identity) find it too.
        if let Some(m) = &by_ua
            && !leased
        {
            self.fleet.hints.insert(ip_s.to_string(), m.clone());
        }
        let is_mac = !key.starts_with("ip:");
        let d = self.device_mut(&key, at);
        if is_mac {
            d.mac = Some(key.clone());
        } else {
            d.static_ip = true;
        }
        if d.ip.is_none() || (!leased && d.static_ip) {
            d.ip = Some(ip);
        }
        if let Some(u) = ua {
            d.vendor = Some(u.vendor);
            if d.model.is_none() {
                d.model = u.model;
            }
            if u.version.is_some() {
                d.set_firmware(u.version, FirmwareSource::UserAgent);
            }
        }
        key
    }

    fn on_started(
        &mut self,
        s: Start<'_>,
        ev: &WireEvent,
        index: &Index,
        out: &mut Vec<StateChange>,
    ) {
        let (seq, at) = (ev.seq, ev.at_ms);
        let key = self.attribute(s.peer, s.path, s.user_agent, at);
        let kind = classify(s.file, index);
        let version = if kind == FileKind::Firmware {
            image_version(s.file, index)
        } else {
            None
        };
        let check_bytes = self.settings.firmware_check_bytes;
        let d = self.device_mut(&key, at);
        let resumed = s.offset > 0 && d.prefix.get(s.sha256).is_some_and(|p| *p >= s.offset);
        let a = Active {
            id: s.id,
            proto: s.proto,
            path: s.path.to_string(),
            file: s.file.to_string(),
            kind,
            sha256: s.sha256.to_string(),
            version: version.clone(),
            offset: s.offset,
            size: s.size,
            file_size: s.file_size,
            started_ms: at,
            bytes: 0,
            last_progress_ms: at,
            rate_bps: 0.0,
            past_check: resumed && s.offset > check_bytes,
            rtt_us: None,
            retransmits: 0,
        };
        // One buffer for the whole note (this runs for every request served).
        let mut text = String::with_capacity(96);
        let _ = write!(text, "{} ", proto_upper(s.proto));
        if s.path.trim_start_matches('/') == s.file {
            text.push_str(s.file);
        } else {
            let _ = write!(text, "{} → {}", s.path, s.file);
        }
        let _ = if s.offset > 0 || s.size < s.file_size {
            write!(
                text,
                ", bytes {}-{} of {}",
                s.offset,
                (s.offset + s.size).saturating_sub(1),
                HumanBytes(s.file_size)
            )
        } else {
            write!(text, ", {}", HumanBytes(s.file_size))
        };
        d.note(seq, at, proto_source(s.proto), "transfer_started", text);
        d.unstall(Trigger::Transfer, seq, at, out);
        let past_check = a.past_check;
        d.newest_transfer = d.newest_transfer.max(s.id);
        if d.active.len() >= MAX_ACTIVE
            && let Some(oldest) = d
                .active
                .values()
                .min_by_key(|x| (x.last_progress_ms, x.id))
                .map(|x| x.id)
        {
            // Only a lost end event (the tracker fell behind the bus) or one address
            // shared by many clients gets here; forgetting the quietest keeps every
            // event O(1) instead of O(orphans).
            d.active.remove(&oldest);
        }
        d.active.insert(s.id, a);
        match kind {
            FileKind::Firmware => {
                if let Some((dir, _)) = s.file.rsplit_once('/') {
                    d.firmware_dir = Some(dir.to_string());
                } else {
                    d.firmware_dir = Some(String::new());
                }
                if d.state != PhoneState::Recovery {
                    if past_check || resumed {
                        d.set_state(PhoneState::FirmwareDownload, None, seq, at, out);
                    } else if d.state != PhoneState::FirmwareDownload {
                        d.set_state(PhoneState::FirmwareCheck, None, seq, at, out);
                    }
                }
            }
            FileKind::Config => {
                // A header read not followed by a download: the phone found its own
                // version in that image (§5: it downloads only when they differ).
                if d.state == PhoneState::FirmwareCheck
                    && let Some((_, v)) = d.header_checked.clone()
                {
                    d.set_firmware(v, FirmwareSource::ImageName);
                }
                // A provisioned phone re-reading the very config it has (a periodic
                // check, or a client polling) stays provisioned: the timeline shows the
                // read, and the journey does not flap through `config_download`.
                let rereading = d.state == PhoneState::Provisioned
                    && d.last_config
                        .as_ref()
                        .is_some_and(|(f, sha)| f == s.file && sha == s.sha256);
                if !rereading {
                    d.set_state(PhoneState::ConfigDownload, None, seq, at, out);
                }
            }
            FileKind::Other => {}
        }
        // Only an image read can change what the target is (its directory, or the model
        // taken from its name); the scan of the index is not paid per config request.
        if kind == FileKind::Firmware {
            self.refresh_target(&key, index);
        }
        self.touch(&key);
        // Last, so the map takes the key instead of a copy.
        self.fleet.transfers.insert(s.id, key);
    }

    /// `link`: TFTP's round trip (µs) and retransmissions so far, when reported.
    fn on_progress(
        &mut self,
        id: u64,
        bytes: u64,
        link: (Option<u64>, u64),
        ev: &WireEvent,
        out: &mut Vec<StateChange>,
    ) {
        let Some(key) = self.fleet.transfers.get(&id).cloned() else {
            return;
        };
        let check_bytes = self.settings.firmware_check_bytes;
        let (seq, at) = (ev.seq, ev.at_ms);
        let Some(d) = self.fleet.devices.get_mut(&key) else {
            return;
        };
        d.last_seen_ms = d.last_seen_ms.max(at);
        d.unstall(Trigger::Transfer, seq, at, out);
        let Some(a) = d.active.get_mut(&id) else {
            return;
        };
        let dt = at.saturating_sub(a.last_progress_ms);
        let db = bytes.saturating_sub(a.bytes);
        if dt > 0 {
            let inst = db as f64 * 1000.0 / dt as f64;
            a.rate_bps = if a.rate_bps == 0.0 {
                inst
            } else {
                a.rate_bps * 0.6 + inst * 0.4
            };
        } else if a.rate_bps == 0.0 && at > a.started_ms {
            a.rate_bps = bytes as f64 * 1000.0 / (at - a.started_ms) as f64;
        }
        a.bytes = a.bytes.max(bytes);
        if db > 0 {
            a.last_progress_ms = at;
        }
        if link.0.is_some() {
            a.rtt_us = link.0;
        }
        a.retransmits = a.retransmits.max(link.1);
        let crossed =
            a.kind == FileKind::Firmware && !a.past_check && a.offset + a.bytes > check_bytes;
        if crossed {
            a.past_check = true;
            if !matches!(d.state, PhoneState::Recovery | PhoneState::FirmwareDownload) {
                d.set_state(PhoneState::FirmwareDownload, None, seq, at, out);
            }
        }
        self.touch(&key);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_end(
        &mut self,
        id: u64,
        bytes: u64,
        duration_ms: u64,
        abort: Option<&String>,
        ev: &WireEvent,
        index: &Index,
        out: &mut Vec<StateChange>,
    ) {
        let Some(key) = self.fleet.transfers.remove(&id) else {
            return;
        };
        let (seq, at) = (ev.seq, ev.at_ms);
        let check_bytes = self.settings.firmware_check_bytes;
        let burn_ms = {
            let model = self.fleet.devices.get(&key).and_then(|d| d.model.clone());
            self.burn_ms(model.as_deref())
        };
        let Some(d) = self.fleet.devices.get_mut(&key) else {
            return;
        };
        let Some(mut a) = d.active.remove(&id) else {
            return;
        };
        a.bytes = a.bytes.max(bytes);
        d.unstall(Trigger::Transfer, seq, at, out);
        // No progress event precedes an end event for the last bytes (it carries the
        // count), so a read that crossed the header-check size is a download here, as
        // `on_progress` would have said.
        if a.kind == FileKind::Firmware && !a.past_check && a.offset + a.bytes > check_bytes {
            a.past_check = true;
            if !matches!(d.state, PhoneState::Recovery | PhoneState::FirmwareDownload) {
                d.set_state(PhoneState::FirmwareDownload, None, seq, at, out);
            }
        }
        let delivered = a.offset + a.bytes;
        let prefix = d.add_prefix(&a, a.bytes);
        let proto = a.proto.as_str();
        match abort {
            None => {
                let rate = (a.bytes * 1000).checked_div(duration_ms).unwrap_or(0);
                d.note(
                    seq,
                    at,
                    proto,
                    "transfer_finished",
                    format!(
                        "{} delivered {} of {} in {} ({}/s), sha256 {}",
                        a.file,
                        HumanBytes(a.bytes),
                        HumanBytes(a.file_size),
                        HumanMs(duration_ms),
                        HumanBytes(rate),
                        a.sha256.get(..12).unwrap_or(&a.sha256)
                    ),
                );
                match a.kind {
                    FileKind::Firmware if a.file_size > 0 && prefix >= a.file_size => {
                        // The whole image is delivered: a later read of it (the header
                        // check after the reboot) starts a new delivery, not another
                        // whole image.
                        d.prefix.remove(&a.sha256);
                        d.header_checked = None;
                        d.burns += 1;
                        d.burn = Some(Burn {
                            started_ms: at,
                            expected_ms: burn_ms,
                            image: a.file.clone(),
                            version: a.version.clone(),
                            sha256: a.sha256.clone(),
                        });
                        if d.state == PhoneState::Recovery {
                            d.note(
                                seq,
                                at,
                                "tracker",
                                "recovery_burn",
                                format!("recovery image {} delivered; the phone burns it", a.file),
                            );
                        } else if d.after_burn_boot && !d.config_since_boot {
                            d.set_state(
                                PhoneState::Recovery,
                                Some("the whole image was fetched again right after a burn, with no config fetch in between: the previous burn probably failed".into()),
                                seq,
                                at,
                                out,
                            );
                        } else {
                            d.set_state(PhoneState::Burning, None, seq, at, out);
                        }
                    }
                    FileKind::Firmware => {
                        d.header_checked = Some((a.file.clone(), a.version.clone()));
                    }
                    FileKind::Config if delivered >= a.file_size => {
                        d.config_since_boot = true;
                        d.provisioned_ms = Some(at);
                        if d.last_config
                            .as_ref()
                            .is_none_or(|(f, sha)| *f != a.file || *sha != a.sha256)
                        {
                            d.last_config = Some((a.file.clone(), a.sha256.clone()));
                        }
                        d.set_state(PhoneState::Provisioned, None, seq, at, out);
                        // Only a phone whose model is known can be told its config is
                        // for another model (see `rejection`).
                        if self.settings.check_config_model && d.model.is_some() {
                            self.checks.push(ConfigCheck {
                                key: key.clone(),
                                file: a.file.clone(),
                                sha256: a.sha256.clone(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            Some(reason) => {
                let header =
                    a.kind == FileKind::Firmware && delivered <= check_bytes && !a.past_check;
                // The phone started another request before this one was seen to end:
                // it had already given this read up. Over HTTP and FTP the server learns
                // of an early close only when its socket buffers (MiBs on a LAN) fill
                // up, often after the phone's next request, so this is how a header
                // check that the kernel read ahead for looks, not a failed download.
                let superseded = !header && d.newest_transfer > a.id;
                let (kind, what) = if header {
                    ("header_read", "header read")
                } else if superseded {
                    ("transfer_abandoned", "abandoned by the phone")
                } else {
                    ("transfer_aborted", "aborted")
                };
                d.note(
                    seq,
                    at,
                    proto,
                    kind,
                    format!(
                        "{} {what} after {} of {}: {reason}",
                        a.file,
                        HumanBytes(a.bytes),
                        HumanBytes(a.file_size)
                    ),
                );
                if superseded {
                    if a.kind == FileKind::Firmware {
                        d.header_checked = Some((a.file.clone(), a.version.clone()));
                    }
                } else {
                    match a.kind {
                        FileKind::Firmware if header => {
                            d.header_checked = Some((a.file.clone(), a.version.clone()));
                            if d.state == PhoneState::FirmwareDownload
                                && !d.active.values().any(|x| x.kind == FileKind::Firmware)
                            {
                                d.set_state(PhoneState::FirmwareCheck, None, seq, at, out);
                            }
                        }
                        FileKind::Firmware if d.state != PhoneState::Recovery => {
                            let r = format!(
                                "firmware download of {} aborted at {:.0} % ({} of {}): {reason}",
                                a.file,
                                pct(delivered, a.file_size),
                                HumanBytes(delivered),
                                HumanBytes(a.file_size)
                            );
                            d.set_state(PhoneState::Failed, Some(r), seq, at, out);
                        }
                        FileKind::Config if d.state != PhoneState::Recovery => {
                            let r = format!(
                                "config {} aborted after {}: {reason}",
                                a.file,
                                HumanBytes(a.bytes)
                            );
                            d.set_state(PhoneState::Failed, Some(r), seq, at, out);
                        }
                        _ => {}
                    }
                }
            }
        }
        // Last, so the record takes the transfer's strings instead of copies.
        let (result, reason) = match abort {
            None => ("finished", None),
            Some(r) => ("aborted", Some(r.clone())),
        };
        let bytes = a.bytes;
        d.record_file(a, bytes, duration_ms, result, reason);
        let _ = index;
        self.touch(&key);
    }

    /// A phone's upload (its logs): a timeline entry, no state change: a phone
    /// uploads logs at any point of its journey.
    #[allow(clippy::too_many_arguments)]
    fn on_upload(
        &mut self,
        proto: Proto,
        peer: &SocketAddr,
        path: &str,
        user_agent: Option<&str>,
        kind: &'static str,
        text: String,
        ev: &WireEvent,
    ) {
        let key = self.attribute(peer, path, user_agent, ev.at_ms);
        let d = self.device_mut(&key, ev.at_ms);
        d.note(ev.seq, ev.at_ms, proto.as_str(), kind, text);
        self.touch(&key);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_refused(
        &mut self,
        proto: Proto,
        peer: &SocketAddr,
        path: &str,
        reason: &str,
        user_agent: Option<&str>,
        ev: &WireEvent,
        index: &Index,
        out: &mut Vec<StateChange>,
    ) {
        let (seq, at) = (ev.seq, ev.at_ms);
        let key = self.attribute(peer, path, user_agent, at);
        let kind = classify(path, index);
        let d = self.device_mut(&key, at);
        d.note(
            seq,
            at,
            proto.as_str(),
            "transfer_refused",
            format!("{} {path} refused: {reason}", proto_upper(proto)),
        );
        // A busy server is transient: the phone retries, so it has not failed.
        if kind == FileKind::Config
            && d.state != PhoneState::Recovery
            && !reason.starts_with(provbox_protocols::events::BUSY_REASON)
        {
            d.set_state(
                PhoneState::Failed,
                Some(format!("config {path} refused: {reason}")),
                seq,
                at,
                out,
            );
        }
        self.touch(&key);
    }

    /// The runner read the config `check` names: `system_type` is its `system/type`
    /// value, if any. A mismatch with the phone's model means the phone rejects the
    /// whole file (phone-behaviour.md §7.4).
    pub fn config_verdict(
        &mut self,
        check: &ConfigCheck,
        system_type: Option<&str>,
        at: u64,
    ) -> Vec<StateChange> {
        let mut out = Vec::new();
        self.fleet.now_ms = self.fleet.now_ms.max(at);
        let Some(r) = self.rejection(check, system_type) else {
            return out;
        };
        if let Some(d) = self.fleet.devices.get_mut(&check.key) {
            d.set_state(PhoneState::ConfigRejected, Some(r), 0, at, &mut out);
            self.touch(&check.key);
        }
        out
    }

    /// True when [`Self::config_verdict`] would change nothing now: no `system/type`,
    /// no known model, a matching one, or a config that is no longer current. The
    /// runner does not journal such a verdict (its replay would change nothing either),
    /// which keeps a phone that re-reads its config in a loop at two records a fetch.
    pub fn verdict_is_noop(&self, check: &ConfigCheck, system_type: Option<&str>) -> bool {
        self.rejection(check, system_type).is_none()
    }

    /// Why the phone discards the config `check` saying `system_type`, if it does.
    fn rejection(&self, check: &ConfigCheck, system_type: Option<&str>) -> Option<String> {
        let d = self.fleet.devices.get(&check.key)?;
        let t = system_type?;
        let model = d.model.as_deref()?;
        let current = d
            .last_config
            .as_ref()
            .is_some_and(|(_, sha)| *sha == check.sha256);
        (!same_model(t, model) && current && d.state == PhoneState::Provisioned).then(|| {
            format!(
                "the served config {} says system/type={t} but this phone is a {model}: the phone discards it",
                check.file
            )
        })
    }

    /// The phones a tick at `now_ms` would mark stalled, with why.
    fn stalls(&self, now_ms: u64) -> Vec<(String, StallKind, String)> {
        let stall_after = self.settings.stall_after_ms;
        let mut found = Vec::new();
        for d in self.fleet.devices.values() {
            let f = match d.state {
                PhoneState::FirmwareCheck
                | PhoneState::FirmwareDownload
                | PhoneState::ConfigDownload
                | PhoneState::Recovery
                    if !d.active.is_empty() =>
                {
                    let last = d.active.values().map(|a| a.last_progress_ms).max().unwrap_or(now_ms);
                    (now_ms.saturating_sub(last) >= stall_after).then(|| {
                        let p = d.progress();
                        let at = p.map(|p| format!(" at {:.0} % of {}", p.pct, p.file)).unwrap_or_default();
                        (StallKind::Transfer, format!("no progress for {}{at}", HumanMs(now_ms.saturating_sub(last))))
                    })
                }
                PhoneState::Burning => d.burn.as_ref().and_then(|b| {
                    let elapsed = now_ms.saturating_sub(b.started_ms);
                    (elapsed >= b.expected_ms + stall_after).then(|| {
                        (
                            StallKind::Burn,
                            format!(
                                "image delivered {} ago (expected burn {}); the phone has not come back on DHCP",
                                HumanMs(elapsed),
                                HumanMs(b.expected_ms)
                            ),
                        )
                    })
                }),
                PhoneState::Discovered | PhoneState::Leased | PhoneState::Rebooted | PhoneState::FirmwareCheck
                    if d.active.is_empty() && d.is_phone() =>
                {
                    let idle = now_ms.saturating_sub(d.last_seen_ms);
                    (idle >= stall_after).then(|| {
                        let last = d.last_event().unwrap_or_default();
                        (StallKind::Idle, format!("nothing for {} since: {last}", HumanMs(idle)))
                    })
                }
                _ => None,
            };
            if let Some((kind, reason)) = f {
                found.push((d.key.clone(), kind, reason));
            }
        }
        found
    }

    /// True when a tick at `now_ms` would change something (the runner journals only
    /// such ticks).
    pub fn tick_due(&self, now_ms: u64) -> bool {
        !self.stalls(now_ms).is_empty()
    }

    /// Marks phones with no progress for `stall_after` as stalled.
    pub fn tick(&mut self, now_ms: u64) -> Vec<StateChange> {
        self.fleet.now_ms = self.fleet.now_ms.max(now_ms);
        let mut out = Vec::new();
        for (key, kind, reason) in self.stalls(now_ms) {
            if let Some(d) = self.fleet.devices.get_mut(&key) {
                let from = d.state;
                d.set_state(PhoneState::Stalled, Some(reason), 0, now_ms, &mut out);
                d.stall = Some(Stall { from, kind });
                self.touch(&key);
            }
        }
        out
    }

    pub fn devices(&self) -> Vec<DeviceView> {
        self.devices_at(self.fleet.now_ms)
    }

    pub fn devices_at(&self, now: u64) -> Vec<DeviceView> {
        self.fleet.devices.values().map(|d| d.view(now)).collect()
    }

    fn find(&self, key: &str) -> Option<&Device> {
        // Keys the tracker itself holds are canonical already (no copy); what a user
        // typed is normalised.
        self.fleet.devices.get(key).or_else(|| {
            self.fleet
                .devices
                .get(&super::attribution::normalize_key(key))
        })
    }

    /// The key the tracker files a device under, for a key as a user spells it.
    pub fn canonical_key(&self, key: &str) -> Option<String> {
        if self.fleet.devices.contains_key(key) {
            return Some(key.to_string());
        }
        let k = super::attribution::normalize_key(key);
        self.fleet.devices.contains_key(&k).then_some(k)
    }

    pub fn view(&self, key: &str, now: u64) -> Option<DeviceView> {
        self.find(key).map(|d| d.view(now))
    }

    pub fn device(&self, key: &str) -> Option<DeviceDetail> {
        self.device_at(key, self.fleet.now_ms)
    }

    pub fn device_at(&self, key: &str, now: u64) -> Option<DeviceDetail> {
        let d = self.find(key)?;
        Some(DeviceDetail {
            view: d.view(now),
            vendor_class: d.vendor_class.clone(),
            requested_options: d.requested_options.clone(),
            timeline: d.timeline.iter().cloned().collect(),
            files: d.files.iter().cloned().collect(),
            states: d.states(),
        })
    }

    /// True when the device has been in `state` at some point (now or earlier).
    pub fn has_reached(&self, key: &str, state: PhoneState) -> bool {
        self.find(key)
            .is_some_and(|d| d.state == state || d.history.iter().any(|(s, _)| *s == state))
    }

    pub fn receipt(&self, key: &str) -> Option<Receipt> {
        let d = self.find(key)?;
        let v = d.view(self.fleet.now_ms);
        Some(Receipt {
            key: d.key.clone(),
            mac: d.mac.clone(),
            ip: d.ip,
            model: d.model.clone(),
            vendor: d.vendor.clone(),
            policy: d.policy.clone(),
            state: d.state,
            reason: d.reason.clone(),
            provisioned: d.state == PhoneState::Provisioned,
            firmware_before: d.firmware_before.clone(),
            firmware_after: d.firmware.clone(),
            target_firmware: d.target_firmware.clone(),
            update_pending: v.update_pending,
            first_seen_ms: d.first_seen_ms,
            provisioned_ms: d.provisioned_ms,
            time_to_provisioned_ms: d.provisioned_ms.map(|p| p.saturating_sub(d.first_seen_ms)),
            burns: d.burns,
            reboots: d.reboots,
            files: d.files.iter().cloned().collect(),
            states: d.states(),
        })
    }

    /// Phones per state (every state listed, zeros included).
    pub fn counts(&self) -> BTreeMap<PhoneState, usize> {
        let mut m: BTreeMap<PhoneState, usize> = PhoneState::ALL.iter().map(|s| (*s, 0)).collect();
        for d in self.fleet.devices.values() {
            *m.entry(d.state).or_insert(0) += 1;
        }
        m
    }

    /// True if a device with this key exists.
    pub fn contains(&self, key: &str) -> bool {
        self.find(key).is_some()
    }
}

/// The fields of a `TransferStarted` the tracker uses.
struct Start<'a> {
    id: u64,
    proto: Proto,
    peer: &'a SocketAddr,
    path: &'a str,
    file: &'a str,
    file_size: u64,
    offset: u64,
    size: u64,
    sha256: &'a str,
    user_agent: Option<&'a str>,
}

/// The `system/type` value of a config file's text, if it has one (`;` comments and
/// blank lines skipped; key matched case-insensitively; the first one wins).
pub fn system_type(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(';') && !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("system/type")
                .then(|| v.trim().trim_matches('"').to_string())
        })
        .filter(|v| !v.is_empty())
}
