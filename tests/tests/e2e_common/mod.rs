//! Shared helpers for the end-to-end tests (`e2e_*.rs`): a loopback appliance over a
//! temporary store of synthetic images and per-phone configs, simulated phones with
//! fast timings, a recorder of every wire event, and the checks each test makes on
//! both sides — the simulator's report, the tracker's journey, and the bus's hashes.
//!
//! Every test gets its own relay network (a random 127.x.y.0/24 pool) and its own MAC
//! range, so tests run side by side under nextest.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use provbox::Appliance;
use provbox::sim::{
    Family, Fleet, HeaderCheck, ImageSpec, PhoneReport, PhoneSpec, SimReport, SimTarget,
};
use provbox::tracker::{DeviceDetail, PhoneState};
use provbox_config::{Config, MacAddr, MacPrefix, Match, Policy};
use provbox_protocols::events::{EventKind, Proto, WireEvent};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// The journey of a phone that upgrades and then takes its config, in order.
pub const UPGRADE_JOURNEY: [PhoneState; 7] = [
    PhoneState::Leased,
    PhoneState::FirmwareCheck,
    PhoneState::FirmwareDownload,
    PhoneState::Burning,
    PhoneState::Rebooted,
    PhoneState::ConfigDownload,
    PhoneState::Provisioned,
];

/// A temporary lab: store and state directories, and the relay network the phones use.
pub struct Lab {
    pub dir: tempfile::TempDir,
    /// 127.x.y.1: the phones' relay address (giaddr) and the pool's router.
    pub giaddr: Ipv4Addr,
}

impl Lab {
    pub fn new() -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("pb-e2e-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        let net = provbox::sim::random_loopback_net();
        let o = net.octets();
        Lab {
            dir,
            giaddr: Ipv4Addr::new(o[0], o[1], o[2], 1),
        }
    }
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A loopback config with this lab's pool, a fast store settle and a burn time
    /// matching the simulated phones'.
    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.store.root = self.store();
        c.state.dir = self.state();
        c.store.settle = provbox_config::Duration::from_millis(100);
        let o = self.giaddr.octets();
        let net = |last: u8| Ipv4Addr::new(o[0], o[1], o[2], last);
        c.dhcp.subnet = format!("{}/24", net(0)).parse().ok();
        c.dhcp.pool = format!("{}-{}", net(10), net(250)).parse().ok();
        c.dhcp.router = Some(self.giaddr);
        c.tracker.default_burn_time = provbox_config::Duration::from_millis(200);
        c
    }

    /// Starts the appliance on loopback with [`Lab::config`] changed by `f`.
    pub async fn start(&self, f: impl FnOnce(&mut Config)) -> Appliance {
        let mut c = self.config();
        f(&mut c);
        Appliance::builder()
            .config(c)
            .loopback()
            .start()
            .await
            .unwrap()
    }

    /// Writes a synthetic image into the store (temp file + rename); returns its
    /// SHA-256 and size.
    pub fn image(&self, rel: &str, model: &str, version: &str, size: u64) -> (String, u64) {
        let path = self.store().join(rel);
        write_image(&path, model, version, size)
    }

    /// Writes a phone's config, `<MAC>.cfg` (uppercase), declaring `system_type`.
    pub fn config_file(&self, mac: MacAddr, system_type: &str) -> String {
        let text = format!(
            "; provbox e2e config for {mac}\nsystem/type={system_type}\nvoip/line/0/enabled=1\nvoip/line/0/id={}\n",
            mac.bare()
        );
        let name = format!("{}.cfg", mac.bare().to_ascii_uppercase());
        std::fs::write(self.store().join(&name), &text).unwrap();
        name
    }

    /// The phones' transport settings against `app`.
    pub fn target(&self, app: &Appliance) -> SimTarget {
        let a = app.addrs();
        let mut t = SimTarget::relay(a.dhcp.expect("DHCP is running"), self.giaddr);
        t.tftp_port = a.tftp.map_or(69, |t| t.port());
        t.ca = Some(self.state().join("tls/cert.pem"));
        t.tftp.timeout = Duration::from_millis(500);
        t.time_limit = Duration::from_secs(60);
        t.dhcp_retransmit.first = Duration::from_millis(300);
        t
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

/// The image bytes for a spec, and its hash.
pub fn image_bytes(model: &str, version: &str, size: u64) -> Vec<u8> {
    ImageSpec {
        model: model.into(),
        version: version.into(),
        date: "20260101".into(),
        size,
        corrupt: false,
    }
    .to_vec()
}

/// Writes an image atomically; returns (sha256, size).
pub fn write_image(path: &Path, model: &str, version: &str, size: u64) -> (String, u64) {
    let bytes = image_bytes(model, version, size);
    let tmp = path.with_extension("tmp-e2e");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    (provbox_tests::sha256(&bytes), bytes.len() as u64)
}

/// A policy serving `url` (option 160) to phones whose MAC starts with `prefix`.
pub fn mac_policy(name: &str, prefix: &str, url: &str) -> Policy {
    Policy {
        name: Some(name.into()),
        matcher: Match {
            mac_prefix: Some(prefix.parse::<MacPrefix>().unwrap()),
            ..Match::default()
        },
        provisioning_url: Some(url.into()),
        ..Policy::default()
    }
}

/// A policy serving `url` (option 160) to phones of `model` (option 60/77).
pub fn model_policy(model: &str, url: &str) -> Policy {
    Policy {
        name: Some(format!("{model} e2e")),
        matcher: Match {
            model: Some(model.into()),
            ..Match::default()
        },
        provisioning_url: Some(url.into()),
        ..Policy::default()
    }
}

/// The option 160 template for a protocol, firmware `fw` and `<MAC>.cfg`.
pub fn url_for(proto: Proto, fw: &str) -> String {
    match proto {
        Proto::Http => format!("http://{{server}}:{{http_port}}/{fw};<MAC>.cfg"),
        Proto::Https => format!("https://{{server}}:{{https_port}}/{fw};<MAC>.cfg"),
        Proto::Tftp => format!("tftp://{{server}}:{{tftp_port}}/{fw};<MAC>.cfg"),
        Proto::Ftp => format!("ftp://{{server}}:{{ftp_port}}/{fw};<MAC>.cfg"),
    }
}

/// Fast phone timings (burn 200 ms, reboot 100 ms, short retry waits), phones spread
/// over `spread_ms` so they are not all in the same millisecond; the HTTP(S) header
/// check is a `Range` request.
///
/// Why Range: with an early close, the server has already pushed the whole of a small
/// image into the loopback socket buffers (several MiB) before the phone closes, so it
/// cannot tell the check from a download. `e2e_fleet::early_close_header_check` covers
/// the early close with an image larger than that.
pub fn fast(p: &mut PhoneSpec, i: usize, spread_ms: u64) {
    p.header_check = HeaderCheck::Range;
    p.timings.burn = Duration::from_millis(200);
    p.timings.reboot = Duration::from_millis(100);
    p.timings.retry_backoff = vec![Duration::from_millis(200), Duration::from_millis(400)];
    p.timings.power_on_delay = Duration::from_millis(if spread_ms == 0 {
        0
    } else {
        (i as u64 * 37) % spread_ms
    });
}

/// `n` UC phones of `model` from `first`, with fast timings.
pub fn fleet(n: usize, model: &str, first: &str) -> Fleet {
    let mut i = 0;
    Fleet::generate(n, &[model], Family::Uc, first.parse().unwrap()).configure(|p| {
        fast(p, i, 400);
        i += 1;
    })
}

/// Every wire event from the moment of [`EventLog::start`].
#[derive(Clone)]
pub struct EventLog {
    events: Arc<Mutex<Vec<Arc<WireEvent>>>>,
    lagged: Arc<Mutex<u64>>,
}

impl EventLog {
    /// Subscribes now (call it before the phones start) and records until the
    /// appliance shuts down.
    pub fn start(app: &Appliance) -> EventLog {
        let log = EventLog {
            events: Arc::default(),
            lagged: Arc::default(),
        };
        let mut rx = app.bus().subscribe();
        let stop = app.shutdown_token();
        let l = log.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = rx.recv() => match r {
                        Ok(ev) => l.events.lock().unwrap().push(ev),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            *l.lagged.lock().unwrap() += n;
                        }
                        Err(_) => break,
                    },
                }
            }
        });
        log
    }

    pub fn all(&self) -> Vec<Arc<WireEvent>> {
        assert_eq!(
            *self.lagged.lock().unwrap(),
            0,
            "the test's event recorder lagged behind the bus: its checks would be incomplete"
        );
        self.events.lock().unwrap().clone()
    }

    /// Every transfer seen, with its start and end.
    pub fn transfers(&self) -> Vec<Xfer> {
        let mut out: Vec<Xfer> = Vec::new();
        for ev in self.all() {
            match &ev.kind {
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
                    ..
                } => out.push(Xfer {
                    id: *id,
                    proto: *proto,
                    peer_ip: peer.ip(),
                    path: path.clone(),
                    file: file.clone(),
                    file_size: *file_size,
                    offset: *offset,
                    size: *size,
                    sha_started: sha256.clone(),
                    started_ms: ev.at_ms,
                    progress: 0,
                    end: None,
                }),
                EventKind::TransferProgress { id, bytes, .. } => {
                    if let Some(x) = out.iter_mut().find(|x| x.id == *id) {
                        x.progress = x.progress.max(*bytes);
                    }
                }
                EventKind::TransferFinished {
                    id, bytes, sha256, ..
                } => {
                    if let Some(x) = out.iter_mut().find(|x| x.id == *id) {
                        x.end = Some(End::Finished {
                            bytes: *bytes,
                            sha256: sha256.clone(),
                            at_ms: ev.at_ms,
                        });
                    }
                }
                EventKind::TransferAborted {
                    id, bytes, reason, ..
                } => {
                    if let Some(x) = out.iter_mut().find(|x| x.id == *id) {
                        x.end = Some(End::Aborted {
                            bytes: *bytes,
                            reason: reason.clone(),
                            at_ms: ev.at_ms,
                        });
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The address each MAC was last acknowledged.
    pub fn leases(&self) -> Vec<(String, Ipv4Addr)> {
        self.all()
            .iter()
            .filter_map(|ev| match &ev.kind {
                EventKind::DhcpAck(i) => i.ip.map(|ip| (i.mac.clone(), ip)),
                _ => None,
            })
            .collect()
    }

    /// Option 55 of every DHCP DISCOVER/REQUEST from `mac`, in order.
    pub fn requested_options(&self, mac: &str) -> Vec<Vec<u8>> {
        self.all()
            .iter()
            .filter_map(|ev| match &ev.kind {
                EventKind::DhcpDiscover(i) | EventKind::DhcpRequest(i) if i.mac == mac => {
                    Some(i.requested_options.clone())
                }
                _ => None,
            })
            .collect()
    }
}

/// One transfer as the bus told it.
#[derive(Debug, Clone)]
pub struct Xfer {
    pub id: u64,
    pub proto: Proto,
    pub peer_ip: std::net::IpAddr,
    pub path: String,
    pub file: String,
    pub file_size: u64,
    pub offset: u64,
    pub size: u64,
    pub sha_started: String,
    pub started_ms: u64,
    /// Bytes delivered, as last reported.
    pub progress: u64,
    pub end: Option<End>,
}

#[derive(Debug, Clone)]
pub enum End {
    Finished {
        bytes: u64,
        sha256: String,
        at_ms: u64,
    },
    Aborted {
        bytes: u64,
        reason: String,
        at_ms: u64,
    },
}

impl Xfer {
    /// A whole file delivered.
    pub fn whole(&self) -> Option<&str> {
        match &self.end {
            Some(End::Finished { bytes, sha256, .. })
                if self.offset == 0 && *bytes == self.file_size =>
            {
                Some(sha256)
            }
            _ => None,
        }
    }
    pub fn finished_ms(&self) -> Option<u64> {
        match &self.end {
            Some(End::Finished { at_ms, .. }) | Some(End::Aborted { at_ms, .. }) => Some(*at_ms),
            None => None,
        }
    }
}

/// Waits until the tracker shows `mac` in `state` with no transfer in flight (the
/// simulator has finished, but the tracker may still be reading the last events), and
/// returns its detail. Bounded by `timeout`.
pub async fn settled(app: &Appliance, mac: &str, state: PhoneState) -> DeviceDetail {
    app.wait_for(mac, state, Duration::from_secs(20))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = app
            .tracker()
            .device(mac)
            .unwrap_or_else(|| panic!("the tracker does not know {mac}"));
        if d.view.state == state && d.view.active_transfers == 0 {
            return d;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{mac}: the tracker shows {} ({:?}) with {} transfers in flight, expected {state} at rest;\ntimeline: {:#?}",
                d.view.state, d.view.reason, d.view.active_transfers, d.timeline
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The states `d` went through, in order.
pub fn states(d: &DeviceDetail) -> Vec<PhoneState> {
    d.states.iter().map(|s| s.state).collect()
}

/// Asserts `want` occurs in order (not necessarily adjacent) in the phone's history.
pub fn assert_journey(d: &DeviceDetail, want: &[PhoneState]) {
    let got = states(d);
    let mut it = got.iter();
    for w in want {
        assert!(
            it.any(|s| s == w),
            "{}: the tracker's journey {:?} lacks {:?} in order {:?};\ntimeline: {:#?}",
            d.view.key,
            got,
            w,
            want,
            d.timeline
        );
    }
}

/// The simulator's side of a successful upgrade: provisioned, one burn, no CRC error,
/// running `version`, the whole image received.
pub fn assert_sim_upgraded(p: &PhoneReport, from: &str, version: &str, image_size: u64) {
    assert!(
        p.provisioned,
        "{}: the simulator says {:?}; errors: {:?}",
        p.mac, p.outcome, p.errors
    );
    assert_eq!(p.initial_version, from, "{}", p.mac);
    assert_eq!(p.final_version, version, "{}: {:?}", p.mac, p.errors);
    assert_eq!(p.burns, 1, "{}: burns; errors: {:?}", p.mac, p.errors);
    assert_eq!(p.crc_errors, 0, "{}: {:?}", p.mac, p.errors);
    assert!(
        p.firmware_bytes >= image_size,
        "{}: received {} firmware bytes, the image is {image_size}",
        p.mac,
        p.firmware_bytes
    );
    assert!(p.config_bytes > 0 && p.config_hash.is_some(), "{}", p.mac);
    assert!(p.configs_applied >= 1, "{}", p.mac);
}

/// The appliance's side of a successful upgrade of `mac` to `version` over `proto`:
/// the tracker's journey and version, and every whole image it was sent (bus events
/// and the tracker's file records) hashing to the store file's `sha`.
#[allow(clippy::too_many_arguments)]
pub async fn assert_appliance_upgraded(
    app: &Appliance,
    log: &EventLog,
    mac: &str,
    ip: Ipv4Addr,
    proto: Proto,
    image: &str,
    sha: &str,
    version: &str,
) -> DeviceDetail {
    let d = settled(app, mac, PhoneState::Provisioned).await;
    assert_journey(&d, &UPGRADE_JOURNEY);
    let v = &d.view;
    assert_eq!(
        v.firmware.as_deref(),
        Some(version),
        "{mac}: firmware shown"
    );
    assert_eq!(v.target_firmware.as_deref(), Some(version), "{mac}: target");
    assert!(!v.update_pending, "{mac}: update still pending");
    assert_eq!(v.ip, Some(ip.into()), "{mac}: address");
    // The bus: the image went to this phone's address whole, with the store's hash.
    let whole: Vec<Xfer> = log
        .transfers()
        .into_iter()
        .filter(|x| x.peer_ip == ip && x.file == image && x.whole().is_some())
        .collect();
    assert!(
        !whole.is_empty(),
        "{mac}: no whole transfer of {image} to {ip} on the bus"
    );
    for x in &whole {
        assert_eq!(x.proto, proto, "{mac}: {x:?}");
        assert_eq!(x.whole(), Some(sha), "{mac}: TransferFinished hash: {x:?}");
        assert_eq!(x.sha_started, sha, "{mac}: TransferStarted hash: {x:?}");
    }
    // The tracker's own record of the files agrees.
    let burned: Vec<_> = d
        .files
        .iter()
        .filter(|f| f.file == image && f.result == "finished" && f.bytes == f.file_size)
        .collect();
    assert!(!burned.is_empty(), "{mac}: files {:#?}", d.files);
    assert!(burned.iter().all(|f| f.sha256 == sha && f.proto == proto));
    assert!(
        d.files
            .iter()
            .any(|f| f.file.ends_with(".cfg") && f.result == "finished" && f.proto == proto),
        "{mac}: no config delivered over {proto}: {:#?}",
        d.files
    );
    d
}

/// Finds a phone in the report.
pub fn phone<'a>(r: &'a SimReport, mac: &str) -> &'a PhoneReport {
    r.phone(mac)
        .unwrap_or_else(|| panic!("no phone {mac} in the report:\n{}", r.table()))
}
