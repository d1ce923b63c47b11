//! One simulated 400HD phone: the state machine of phone-behaviour.md §10.
//!
//! POWER_ON → DHCP → (bricked: TFTP 66/67 recovery → burn → reboot) → URLs from option
//! 160, else 66/67 → firmware header check → (version differs: full download →
//! validate → burn → reboot) → config (+ includes, `system/type` check) → applied
//! (reboot if reboot-relevant keys changed) → provisioned → periodic re-checks.
//! Faults (power loss during burn, corrupt download, wrong-model check, slow link)
//! are per phone. Every wait is bounded, and so is the number of boots.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use provbox_config::MacAddr;
use tokio::time::Instant;

use super::config_file::{self, Resolved};
use super::dhcp_client::{ClientIdentity, DhcpClient, DhcpMode, Lease, Retransmit};
use super::fetch::{self, FetchError, Fetched, HeaderCheck, ReadMode, Request, Transport};
use super::image::{self, FirmwareHeader, ImageValidator};
use super::report::{Phase, PhoneReport, PhoneUpdate, ProgressSink, Step};
use super::url::{self, ProvUrl, ProvUrls, Scheme, UrlSource};

/// Firmware family: decides the User-Agent and the default MAC case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
pub enum Family {
    /// Generic SIP 2.x: `AUDC-IPPhone/<fw> (<hwtype>; <MACUPPER>)`, lowercase MAC in file names.
    #[value(name = "2.x")]
    #[serde(rename = "2.x")]
    Gen2,
    /// UC 3.x: `AUDC/<fw> AUDC-IPPhone-<MODEL>_UC_<fw>/1`, uppercase MAC in file names.
    #[value(name = "uc")]
    #[serde(rename = "uc")]
    Uc,
}

impl Family {
    pub fn default_version(self) -> &'static str {
        match self {
            Family::Gen2 => "2.2.8.61",
            Family::Uc => "3.4.6.604",
        }
    }
}

/// Case of the MAC in requested file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MacCase {
    /// Uppercase for UC, lowercase for 2.x (phone-behaviour.md §3.3).
    #[default]
    Auto,
    Upper,
    Lower,
}

/// Injected failures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Power is lost during the first burn: the phone is bricked and recovers over
    /// TFTP 66/67 only.
    pub power_loss: bool,
    /// The first full firmware download is corrupted in transit (one byte changed):
    /// the checksum fails, "CRC Error", no burn.
    pub corrupt: bool,
    /// The `system/type` check runs against another model, as with a config made for
    /// a different phone: any config that names its model is rejected.
    pub wrong_model: bool,
    /// A slow link: transfers are paced to this many bytes per second.
    pub slow: Option<u64>,
}

impl Faults {
    pub fn names(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.power_loss {
            v.push("power-loss".to_string());
        }
        if self.corrupt {
            v.push("corrupt".to_string());
        }
        if self.wrong_model {
            v.push("wrong-model".to_string());
        }
        if let Some(r) = self.slow {
            v.push(format!("slow={r}B/s"));
        }
        v
    }
}

/// Timings (fast defaults for demos; phone-behaviour.md §6 and §9 give real ones).
#[derive(Debug, Clone)]
pub struct Timings {
    /// Wait before power-on (spreads a fleet's start).
    pub power_on_delay: Duration,
    pub burn: Duration,
    pub reboot: Duration,
    /// Periodic re-check interval; `None` uses the config's `provisioning/period/*`.
    pub recheck_period: Option<Duration>,
    /// How many periodic re-checks to run after provisioning (0: stop when provisioned).
    pub rechecks: u32,
    /// Upper bound of the random wait before a periodic check
    /// (`random_provisioning_time`).
    pub random_delay: Duration,
    /// Waits between attempts at one file; attempts = len + 1.
    pub retry_backoff: Vec<Duration>,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            power_on_delay: Duration::ZERO,
            burn: Duration::from_secs(2),
            reboot: Duration::from_secs(1),
            recheck_period: None,
            rechecks: 0,
            random_delay: Duration::ZERO,
            retry_backoff: vec![Duration::from_secs(1), Duration::from_secs(2)],
        }
    }
}

/// Everything about one phone.
#[derive(Debug, Clone)]
pub struct PhoneSpec {
    pub mac: MacAddr,
    pub model: String,
    /// Hardware type in the 2.x User-Agent (default: the model).
    pub hw_type: Option<String>,
    pub family: Family,
    /// The running firmware version at power-on.
    pub version: String,
    pub mac_case: MacCase,
    /// Option 77 with RFC 3004 framing.
    pub user_class_rfc3004: bool,
    pub header_check: HeaderCheck,
    /// Bytes read by the header check (HTTP/FTP).
    pub header_bytes: u64,
    /// Blocks read by the TFTP header check before the ERROR.
    pub tftp_header_blocks: u16,
    /// Reject configs whose `system/type` names another model.
    pub strict_model: bool,
    /// Reboot after a config change that touches reboot-relevant keys.
    pub config_reboot: bool,
    pub timings: Timings,
    pub faults: Faults,
    /// Upper bound on boots in one run (a phone stuck in a reboot loop ends as failed).
    pub max_boots: u32,
}

impl PhoneSpec {
    pub fn new(mac: MacAddr, model: &str, family: Family) -> Self {
        PhoneSpec {
            mac,
            model: model.to_string(),
            hw_type: None,
            family,
            version: family.default_version().to_string(),
            mac_case: MacCase::Auto,
            user_class_rfc3004: false,
            header_check: HeaderCheck::EarlyClose,
            header_bytes: 1024,
            tftp_header_blocks: 2,
            strict_model: true,
            config_reboot: true,
            timings: Timings::default(),
            faults: Faults::default(),
            max_boots: 8,
        }
    }

    /// The MAC as the phone spells it in file names.
    pub fn mac_in_names(&self) -> String {
        let bare = self.mac.bare();
        match (self.mac_case, self.family) {
            (MacCase::Upper, _) | (MacCase::Auto, Family::Uc) => bare.to_ascii_uppercase(),
            _ => bare,
        }
    }

    /// The User-Agent for the running version (phone-behaviour.md §4).
    pub fn user_agent(&self, version: &str) -> String {
        match self.family {
            Family::Gen2 => format!(
                "AUDC-IPPhone/{version} ({}; {})",
                self.hw_type.as_deref().unwrap_or(&self.model),
                self.mac.bare().to_ascii_uppercase()
            ),
            Family::Uc => format!("AUDC/{version} AUDC-IPPhone-{}_UC_{version}/1", self.model),
        }
    }
}

/// How phones get an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpTarget {
    /// Loopback relay mode (no root).
    Relay {
        server: std::net::SocketAddr,
        giaddr: Ipv4Addr,
    },
    /// Broadcast from port 68 (root). With `assign`, each leased address is added to
    /// `interface` (`ip addr add <ip>/32`) so transfers can be bound to it, and removed
    /// when the phone finishes.
    Broadcast {
        interface: Option<String>,
        server_port: u16,
        client_port: u16,
        assign: bool,
    },
    /// No DHCP: phone `i` uses `first_ip + i` (must be local, e.g. in 127.0.0.0/8) and
    /// `url` as if it had arrived in option 160 (the phone's Static provisioning method).
    Static { first_ip: Ipv4Addr, url: String },
}

/// What all phones of a run share.
pub struct Shared {
    pub transport: Transport,
    pub dhcp: DhcpTarget,
    pub retransmit: Retransmit,
    pub progress: Arc<dyn ProgressSink>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("dhcp", &self.dhcp)
            .finish_non_exhaustive()
    }
}

/// Why a provisioning pass ended.
enum PassEnd {
    Reboot,
    Final(Phase),
}

/// What a chunk sink is told.
enum Chunk<'a> {
    Data(&'a [u8]),
    /// The server could not resume: start over.
    Reset,
}

/// The phone while it runs.
struct Phone {
    index: usize,
    spec: PhoneSpec,
    shared: Arc<Shared>,
    started: Instant,
    version: String,
    bricked: bool,
    config: Resolved,
    config_hash: Option<String>,
    ip: Option<Ipv4Addr>,
    lease: Option<Lease>,
    assigned: Vec<(Ipv4Addr, String)>,
    power_loss_pending: bool,
    corrupt_pending: bool,
    r: PhoneReport,
    last_progress: Option<Instant>,
}

/// Runs one phone to its end and reports.
pub async fn run(
    index: usize,
    spec: PhoneSpec,
    shared: Arc<Shared>,
    time_limit: Duration,
) -> PhoneReport {
    let mut p = Phone::new(index, spec, shared);
    let res = tokio::time::timeout(time_limit, p.life()).await;
    if res.is_err() {
        p.error(format!("time limit of {time_limit:?} reached"));
        p.phase(Phase::Failed, "time limit");
    }
    p.cleanup().await;
    p.finish()
}

impl Phone {
    fn new(index: usize, spec: PhoneSpec, shared: Arc<Shared>) -> Self {
        let r = PhoneReport {
            mac: spec.mac.to_string(),
            model: spec.model.clone(),
            family: match spec.family {
                Family::Gen2 => "2.x".into(),
                Family::Uc => "uc".into(),
            },
            ip: None,
            outcome: Phase::PowerOn,
            provisioned: false,
            initial_version: spec.version.clone(),
            final_version: spec.version.clone(),
            elapsed_ms: 0,
            bytes: 0,
            firmware_bytes: 0,
            config_bytes: 0,
            boots: 0,
            dhcp_exchanges: 0,
            firmware_checks: 0,
            firmware_downloads: 0,
            burns: 0,
            crc_errors: 0,
            power_losses: 0,
            recoveries: 0,
            configs_applied: 0,
            url_source: None,
            firmware_url: None,
            config_url: None,
            config_hash: None,
            header_check: spec.header_check,
            faults: spec.faults.names(),
            errors: Vec::new(),
            timeline: Vec::new(),
        };
        Phone {
            index,
            version: spec.version.clone(),
            power_loss_pending: spec.faults.power_loss,
            corrupt_pending: spec.faults.corrupt,
            spec,
            shared,
            started: Instant::now(),
            bricked: false,
            config: Resolved::default(),
            config_hash: None,
            ip: None,
            lease: None,
            assigned: Vec::new(),
            r,
            last_progress: None,
        }
    }

    fn update(&self, phase: Phase, bytes: u64, total: Option<u64>, detail: &str) {
        self.shared.progress.update(&PhoneUpdate {
            index: self.index,
            mac: self.r.mac.clone(),
            model: self.spec.model.clone(),
            phase,
            ip: self.ip,
            bytes,
            total,
            detail: detail.to_string(),
        });
    }

    fn phase(&mut self, phase: Phase, detail: &str) {
        self.r.timeline.push(Step {
            at_ms: self.started.elapsed().as_millis() as u64,
            phase,
            detail: detail.to_string(),
        });
        self.r.outcome = phase;
        self.update(phase, 0, None, detail);
    }

    fn error(&mut self, e: String) {
        tracing::debug!(mac = %self.r.mac, "{e}");
        self.r.errors.push(e);
    }

    fn finish(mut self) -> PhoneReport {
        if !self.r.outcome.is_final() {
            self.r.outcome = Phase::Failed;
        }
        self.r.provisioned = self.r.outcome == Phase::Provisioned;
        self.r.final_version = self.version.clone();
        self.r.ip = self.ip;
        self.r.elapsed_ms = self.started.elapsed().as_millis() as u64;
        self.r.config_hash = self.config_hash.clone();
        self.r
    }

    fn mac_str(&self) -> String {
        self.spec.mac_in_names()
    }

    async fn life(&mut self) {
        tokio::time::sleep(self.spec.timings.power_on_delay).await;
        self.started = Instant::now();
        'boot: loop {
            self.r.boots += 1;
            if self.r.boots > self.spec.max_boots {
                self.error(format!("gave up after {} boots", self.spec.max_boots));
                self.phase(Phase::Failed, "too many reboots");
                return;
            }
            self.phase(Phase::PowerOn, &format!("firmware {}", self.version));
            let lease = match self.dhcp().await {
                Ok(l) => l,
                Err(e) => {
                    self.error(e.clone());
                    self.phase(
                        if self.bricked {
                            Phase::Bricked
                        } else {
                            Phase::Failed
                        },
                        &e,
                    );
                    return;
                }
            };
            self.ip = Some(lease.ip);
            self.lease = Some(lease.clone());
            self.phase(Phase::Leased, &lease.ip.to_string());

            if self.bricked {
                match self.recover(&lease).await {
                    Ok(()) => continue 'boot,
                    Err(e) => {
                        self.error(e.clone());
                        self.phase(Phase::Bricked, &e);
                        return;
                    }
                }
            }

            let urls = match self.urls(&lease) {
                Ok(Some(u)) => u,
                Ok(None) => {
                    // A real phone would now send a multicast SIP SUBSCRIBE for 5 s
                    // (phone-behaviour.md §8); the simulator only records it.
                    self.phase(
                        Phase::NoProvisioningUrl,
                        "no option 160 or 66 (would send SIP SUBSCRIBE to 224.0.1.75)",
                    );
                    return;
                }
                Err(e) => {
                    self.error(e.clone());
                    self.phase(Phase::Failed, &e);
                    return;
                }
            };
            self.r.url_source = Some(urls.source);
            self.r.firmware_url = Some(urls.firmware.to_string());
            self.r.config_url = Some(urls.config.to_string());

            let mut checks_left = self.spec.timings.rechecks;
            loop {
                match self.pass(&urls).await {
                    PassEnd::Reboot => continue 'boot,
                    PassEnd::Final(ph) => {
                        let period = self
                            .spec
                            .timings
                            .recheck_period
                            .or_else(|| self.config.period());
                        match period {
                            Some(period) if checks_left > 0 => {
                                checks_left -= 1;
                                let jitter = self
                                    .spec
                                    .timings
                                    .random_delay
                                    .mul_f64(rand::random::<f64>());
                                self.phase(
                                    Phase::Running,
                                    &format!(
                                        "{} (next check in {:?})",
                                        ph.label(),
                                        period + jitter
                                    ),
                                );
                                tokio::time::sleep(period + jitter).await;
                                self.renew_if_due().await;
                            }
                            _ => {
                                self.phase(ph, "");
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    async fn dhcp(&mut self) -> Result<Lease, String> {
        self.phase(
            Phase::Dhcp,
            if self.bricked {
                "recovery (no option 160 requested)"
            } else {
                ""
            },
        );
        self.r.dhcp_exchanges += 1;
        if let DhcpTarget::Static { first_ip, url } = &self.shared.dhcp {
            let ip = Ipv4Addr::from(u32::from(*first_ip).wrapping_add(self.index as u32));
            return Ok(Lease {
                ip,
                server_id: None,
                subnet_mask: None,
                router: None,
                lease_secs: None,
                renew_secs: None,
                opt66: None,
                opt67: None,
                opt160: Some(url.clone()),
                opt43: None,
                acked_at: Some(Instant::now()),
            });
        }
        let Some(mode) = dhcp_mode(&self.shared.dhcp) else {
            return Err("static addressing has no DHCP server".into());
        };
        let client = self.dhcp_client(mode);
        let lease = client.acquire().await.map_err(|e| e.to_string())?;
        self.assign(lease.ip).await?;
        Ok(lease)
    }

    fn dhcp_client(&self, mode: DhcpMode) -> DhcpClient {
        DhcpClient::new(
            mode,
            ClientIdentity {
                mac: self.spec.mac.0,
                model: self.spec.model.clone(),
                user_class_rfc3004: self.spec.user_class_rfc3004,
                recovery: self.bricked,
            },
            self.shared.retransmit.clone(),
        )
    }

    /// Broadcast mode with `assign`: put the leased address on the interface so the
    /// phone's sockets can bind to it. `ip addr` rather than a netlink crate: one
    /// command per lease, only in root-only namespace tests.
    async fn assign(&mut self, ip: Ipv4Addr) -> Result<(), String> {
        let DhcpTarget::Broadcast {
            interface: Some(iface),
            assign: true,
            ..
        } = &self.shared.dhcp
        else {
            return Ok(());
        };
        if self.assigned.iter().any(|(a, _)| *a == ip) {
            return Ok(());
        }
        let out = tokio::process::Command::new("ip")
            .args(["addr", "add", &format!("{ip}/32"), "dev", iface])
            .output()
            .await
            .map_err(|e| format!("running `ip addr add {ip}/32 dev {iface}`: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !stderr.contains("File exists") {
            return Err(format!(
                "`ip addr add {ip}/32 dev {iface}` failed: {}",
                stderr.trim()
            ));
        }
        if out.status.success() {
            self.assigned.push((ip, iface.clone()));
        }
        Ok(())
    }

    async fn cleanup(&mut self) {
        for (ip, iface) in std::mem::take(&mut self.assigned) {
            let _ = tokio::process::Command::new("ip")
                .args(["addr", "del", &format!("{ip}/32"), "dev", &iface])
                .output()
                .await;
        }
    }

    async fn renew_if_due(&mut self) {
        let Some(lease) = self.lease.clone() else {
            return;
        };
        let Some(mode) = dhcp_mode(&self.shared.dhcp) else {
            return;
        };
        if lease.renew_due().is_none_or(|due| Instant::now() < due) {
            return;
        }
        self.r.dhcp_exchanges += 1;
        match self.dhcp_client(mode).renew(&lease).await {
            Ok(l) => self.lease = Some(l),
            Err(e) => self.error(format!("renewal: {e}")),
        }
    }

    fn urls(&self, lease: &Lease) -> Result<Option<ProvUrls>, String> {
        let mac = self.mac_str();
        if let Some(o160) = lease
            .opt160
            .as_deref()
            .filter(|s| !s.trim_matches(['\0', ' ']).is_empty())
        {
            let mut u = url::from_option160(o160, &self.spec.model, &mac)
                .map_err(|e| format!("option 160: {e}"))?;
            if matches!(self.shared.dhcp, DhcpTarget::Static { .. }) {
                u.source = UrlSource::Static;
            }
            return Ok(Some(u));
        }
        url::from_66_67(
            lease.opt66.as_deref(),
            lease.opt67.as_deref(),
            &self.spec.model,
            &mac,
        )
        .map_err(|e| format!("options 66/67: {e}"))
    }

    fn request<'a>(&self, url: &'a ProvUrl, ua: &'a str, mode: ReadMode) -> Request<'a> {
        let bind_ip = match &self.shared.dhcp {
            DhcpTarget::Broadcast { assign: false, .. } => None,
            _ => self.ip,
        };
        Request {
            url,
            bind_ip,
            user_agent: ua,
            mode,
            rate: self.spec.faults.slow,
        }
    }

    /// The firmware header check: the first bytes of the image.
    async fn header_check(&mut self, url: &ProvUrl) -> Result<Vec<u8>, FetchError> {
        let ua = self.spec.user_agent(&self.version);
        let mode = ReadMode::Header {
            bytes: self.spec.header_bytes.max(image::HEADER_LEN as u64),
            how: self.spec.header_check,
            tftp_blocks: self.spec.tftp_header_blocks.max(1),
        };
        let req = self.request(url, &ua, mode);
        let mut head = Vec::with_capacity(1024);
        let res = fetch::fetch(&self.shared.transport, &req, &mut |d: &[u8]| {
            head.extend_from_slice(d)
        })
        .await;
        self.r.bytes += head.len() as u64;
        self.r.firmware_bytes += head.len() as u64;
        res.map(|_| head)
    }

    /// A whole file, with the per-file attempts and backoff. FTP resumes with REST
    /// where it stopped; HTTP and TFTP start over (a phone has no way to pin a resume
    /// to one version of the file without a validator, and mixing versions would fail
    /// the checksum anyway).
    async fn download(
        &mut self,
        url: &ProvUrl,
        phase: Phase,
        total: Option<u64>,
        sink: &mut (dyn FnMut(Chunk<'_>) + Send),
    ) -> Result<Fetched, FetchError> {
        let ua = self.spec.user_agent(&self.version);
        let backoff = self.spec.timings.retry_backoff.clone();
        let resumable = url.scheme == Scheme::Ftp;
        let transport = self.shared.transport.clone();
        let mut offset = 0u64;
        let mut attempt = 0usize;
        loop {
            let req = self.request(
                url,
                &ua,
                ReadMode::Full {
                    offset,
                    validator: None,
                },
            );
            let mut got = 0u64;
            let progress = self.shared.progress.clone();
            let (index, ip, base) = (self.index, self.ip, offset);
            let (mac, model, detail) = (
                self.r.mac.clone(),
                self.spec.model.clone(),
                url.path.clone(),
            );
            let mut last = self.last_progress;
            let mut on_data = |d: &[u8]| {
                sink(Chunk::Data(d));
                got += d.len() as u64;
                let now = Instant::now();
                if last.is_none_or(|l| now.duration_since(l) >= Duration::from_millis(100)) {
                    last = Some(now);
                    progress.update(&PhoneUpdate {
                        index,
                        mac: mac.clone(),
                        model: model.clone(),
                        phase,
                        ip,
                        bytes: base + got,
                        total,
                        detail: detail.clone(),
                    });
                }
            };
            let res = fetch::fetch(&transport, &req, &mut on_data).await;
            self.last_progress = last;
            self.r.bytes += got;
            match phase {
                Phase::ConfigDownload => self.r.config_bytes += got,
                _ => self.r.firmware_bytes += got,
            }
            match res {
                Ok(mut f) => {
                    f.bytes += offset;
                    return Ok(f);
                }
                Err(e) if e.retryable() && attempt < backoff.len() => {
                    self.error(format!(
                        "{e} (attempt {} of {})",
                        attempt + 1,
                        backoff.len() + 1
                    ));
                    if resumable && !matches!(e, FetchError::NoResume(_)) {
                        offset += got;
                    } else {
                        sink(Chunk::Reset);
                        offset = 0;
                    }
                    tokio::time::sleep(backoff[attempt]).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One provisioning pass from the firmware check to the config.
    async fn pass(&mut self, urls: &ProvUrls) -> PassEnd {
        if let Some(end) = self.firmware(&urls.firmware).await {
            return end;
        }
        self.configure(&urls.config).await
    }

    /// The firmware step. `Some` ends the pass (a reboot after a burn).
    async fn firmware(&mut self, fw: &ProvUrl) -> Option<PassEnd> {
        self.phase(Phase::FirmwareCheck, &fw.to_string());
        self.r.firmware_checks += 1;
        let head = match self.header_check(fw).await {
            Ok(h) => h,
            Err(e) => {
                // ASSUMED (§9): no firmware → go on to the config.
                self.error(format!("firmware check: {e}"));
                return None;
            }
        };
        let header = match image::parse_header(&head) {
            Ok(h) => h,
            Err(e) => {
                // Not an image the phone understands: "no new firmware" (§9).
                self.error(format!("firmware check {fw}: {e}"));
                return None;
            }
        };
        if !header.model.eq_ignore_ascii_case(&self.spec.model) {
            self.error(format!(
                "firmware {fw} is for model {}, not {}: ignored",
                header.model, self.spec.model
            ));
            return None;
        }
        if header.version == self.version {
            return None;
        }
        self.phase(
            Phase::FirmwareDownload,
            &format!("{} → {}", self.version, header.version),
        );
        self.r.firmware_downloads += 1;
        let checked = match self.download_image(fw, &header).await {
            Ok(h) => h,
            Err(e) => {
                self.error(e);
                return None;
            }
        };
        Some(self.burn(checked).await)
    }

    /// Downloads and validates a whole image. `Err` is a message for the report.
    async fn download_image(
        &mut self,
        fw: &ProvUrl,
        expect: &FirmwareHeader,
    ) -> Result<FirmwareHeader, String> {
        let mut validator = ImageValidator::new();
        let corrupt_at = if std::mem::take(&mut self.corrupt_pending) {
            Some(expect.length / 2)
        } else {
            None
        };
        let mut pos = 0u64;
        let mut sink = |c: Chunk<'_>| match c {
            Chunk::Reset => {
                validator = ImageValidator::new();
                pos = 0;
            }
            Chunk::Data(d) => {
                match corrupt_at {
                    Some(at) if at >= pos && at < pos + d.len() as u64 => {
                        let mut copy = d.to_vec();
                        let i = (at - pos) as usize;
                        copy[i] = copy[i].wrapping_add(1);
                        let _ = validator.feed(&copy);
                    }
                    _ => {
                        let _ = validator.feed(d);
                    }
                }
                pos += d.len() as u64;
            }
        };
        let total = (expect.length > 0).then_some(expect.length);
        let res = self
            .download(fw, Phase::FirmwareDownload, total, &mut sink)
            .await;
        if let Err(e) = res {
            return Err(format!("firmware download: {e} (discarded, no burn)"));
        }
        match validator.finish() {
            Ok(h) => Ok(h),
            Err(e) => {
                self.r.crc_errors += 1;
                Err(format!("firmware {fw}: {e}: Upgrade Fail, no burn"))
            }
        }
    }

    async fn burn(&mut self, h: FirmwareHeader) -> PassEnd {
        self.phase(Phase::Burning, &h.version);
        if std::mem::take(&mut self.power_loss_pending) {
            tokio::time::sleep(self.spec.timings.burn.mul_f64(0.5)).await;
            self.r.power_losses += 1;
            self.bricked = true;
            self.error(format!("power lost while burning {}: bricked", h.version));
            self.phase(Phase::Rebooting, "power loss");
            tokio::time::sleep(self.spec.timings.reboot).await;
            return PassEnd::Reboot;
        }
        tokio::time::sleep(self.spec.timings.burn).await;
        self.r.burns += 1;
        self.version = h.version;
        self.phase(Phase::Rebooting, &format!("firmware {}", self.version));
        tokio::time::sleep(self.spec.timings.reboot).await;
        PassEnd::Reboot
    }

    /// Recovery (phone-behaviour.md §6): TFTP the file in 67 from the server in 66,
    /// burn, reboot. Nothing else.
    async fn recover(&mut self, lease: &Lease) -> Result<(), String> {
        let mac = self.mac_str();
        let urls = url::from_66_67(
            lease.opt66.as_deref(),
            lease.opt67.as_deref(),
            &self.spec.model,
            &mac,
        )
        .map_err(|e| format!("recovery: options 66/67: {e}"))?
        .ok_or("recovery: the DHCP server gave no option 66 (TFTP server)")?;
        let fw = urls.firmware;
        self.phase(Phase::Recovery, &fw.to_string());
        self.r.firmware_downloads += 1;
        let expect = FirmwareHeader {
            model: self.spec.model.clone(),
            version: String::new(),
            date: String::new(),
            length: 0,
        };
        let h = self
            .download_image(&fw, &expect)
            .await
            .map_err(|e| format!("recovery: {e}"))?;
        if !h.model.eq_ignore_ascii_case(&self.spec.model) {
            return Err(format!(
                "recovery: image {fw} is for model {}, not {}",
                h.model, self.spec.model
            ));
        }
        self.r.recoveries += 1;
        self.bricked = false;
        match self.burn(h).await {
            PassEnd::Reboot => Ok(()),
            PassEnd::Final(_) => Ok(()),
        }
    }

    /// Fetches one config file into memory (configs are small; capped at 4 MiB).
    async fn fetch_config(&mut self, url: &ProvUrl) -> Result<Vec<u8>, String> {
        const CAP: usize = 4 << 20;
        let mut buf = Vec::new();
        let mut over = false;
        let mut sink = |c: Chunk<'_>| match c {
            Chunk::Reset => buf.clear(),
            Chunk::Data(d) => {
                if buf.len() + d.len() > CAP {
                    over = true;
                } else {
                    buf.extend_from_slice(d);
                }
            }
        };
        self.download(url, Phase::ConfigDownload, None, &mut sink)
            .await
            .map_err(|e| format!("config: {e}"))?;
        if over {
            return Err(format!("config {url}: larger than 4 MiB"));
        }
        Ok(buf)
    }

    /// The config step: fetch, includes, model check, apply.
    async fn configure(&mut self, cfg_url: &ProvUrl) -> PassEnd {
        self.phase(Phase::ConfigDownload, &cfg_url.to_string());
        let keep = if self.config_hash.is_some() {
            Phase::Provisioned
        } else {
            Phase::Failed
        };
        let main = match self.fetch_config(cfg_url).await {
            Ok(b) => config_file::parse(&b),
            Err(e) => {
                // §9: keep the current config, no reboot.
                self.error(e.clone());
                return PassEnd::Final(keep);
            }
        };
        let check_model = if self.spec.faults.wrong_model {
            format!("{}-WRONG", self.spec.model)
        } else {
            self.spec.model.clone()
        };
        let mut resolved = Resolved::default();
        // Depth-first in file order, bounded in depth and file count.
        let mut stack: Vec<(ProvUrl, config_file::CfgFile, usize, usize)> =
            vec![(cfg_url.clone(), main, 0, 0)];
        let mut files = 1usize;
        while let Some((base, file, depth, next_inc)) = stack.pop() {
            if self.spec.strict_model
                && let Some(t) = config_file::wrong_model(&file, &check_model)
            {
                let msg = format!(
                    "config {base}: system/type={t}, this phone is a {}: rejected",
                    self.spec.model
                );
                self.error(msg.clone());
                self.phase(Phase::ConfigRejected, &msg);
                return PassEnd::Final(Phase::ConfigRejected);
            }
            if next_inc == 0 {
                resolved.apply(&file);
            }
            if next_inc < file.includes.len() && depth < 4 && files < 16 {
                let target =
                    url::substitute(&file.includes[next_inc], &self.spec.model, &self.mac_str());
                let inc_url = base.join(&target);
                stack.push((base.clone(), file, depth, next_inc + 1));
                match inc_url {
                    Ok(u) => match self.fetch_config(&u).await {
                        Ok(b) => {
                            files += 1;
                            stack.push((u, config_file::parse(&b), depth + 1, 0));
                        }
                        Err(e) => self.error(format!("include {target}: {e}")),
                    },
                    Err(e) => self.error(format!("include {target}: {e}")),
                }
            }
        }
        let hash = resolved.hash();
        if self.config_hash.as_deref() == Some(hash.as_str()) {
            return PassEnd::Final(Phase::Provisioned);
        }
        self.r.configs_applied += 1;
        let reboot = self.spec.config_reboot && resolved.reboot_needed(&self.config);
        self.config = resolved;
        self.config_hash = Some(hash);
        if reboot {
            self.phase(Phase::Rebooting, "config changed");
            tokio::time::sleep(self.spec.timings.reboot).await;
            return PassEnd::Reboot;
        }
        PassEnd::Final(Phase::Provisioned)
    }
}

/// The DHCP client mode for a target; `None` for static addressing (no DHCP).
fn dhcp_mode(target: &DhcpTarget) -> Option<DhcpMode> {
    match target {
        DhcpTarget::Static { .. } => None,
        DhcpTarget::Relay { server, giaddr } => Some(DhcpMode::Relay {
            server: *server,
            giaddr: *giaddr,
        }),
        DhcpTarget::Broadcast {
            interface,
            server_port,
            client_port,
            ..
        } => Some(DhcpMode::Broadcast {
            interface: interface.clone(),
            server_port: *server_port,
            client_port: *client_port,
        }),
    }
}
