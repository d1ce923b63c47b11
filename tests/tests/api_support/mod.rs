//! Shared by the `api_*` tests: a tracker + API served on a loopback port, fed by a
//! real event bus, and helpers that publish a phone's journey the way the protocol
//! servers do.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use provbox::api::{self, ApiState};
use provbox::tracker::{self, TrackerHandle};
use provbox_config::TrackerConfig;
use provbox_protocols::events::{DhcpInfo, EventBus, EventKind, Proto};
use provbox_storage::{Store, StoreOptions};
use tokio_util::sync::CancellationToken;

pub const IMG: &str = "450HD_3.4.8.198.img";

/// The process-wide recorder (installed once, as the appliance does at start-up).
pub fn prometheus() -> PrometheusHandle {
    static H: OnceLock<PrometheusHandle> = OnceLock::new();
    H.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("install the recorder")
    })
    .clone()
}

pub struct Api {
    pub addr: SocketAddr,
    pub url: String,
    pub bus: EventBus,
    pub tracker: TrackerHandle,
    pub store: Store,
    pub stop: CancellationToken,
    pub dir: tempfile::TempDir,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn start(token: Option<&str>) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    // A small image and a config, so /api/v1/store and targets have something real.
    std::fs::write(root.join(IMG), vec![0x5a; 300 * 1024]).unwrap();
    std::fs::write(root.join("450HD_3.4.6.604.img"), vec![0x11; 1024]).unwrap();
    std::fs::write(root.join("00908f000001.cfg"), "system/type=450HD\n").unwrap();
    let store = Store::start(StoreOptions {
        root,
        state_dir: dir.path().join("state/store"),
        poll: false,
        poll_interval: Duration::from_secs(1),
        settle: Duration::from_millis(50),
        rescan_interval: Duration::from_secs(300),
    })
    .await
    .unwrap();
    let bus = EventBus::new(4096);
    let stop = CancellationToken::new();
    let tracker = tracker::spawn(
        &TrackerConfig::default(),
        bus.clone(),
        store.clone(),
        &dir.path().join("state/journal"),
        stop.clone(),
    )
    .unwrap();
    let leases: api::LeaseSource =
        Arc::new(|| serde_json::json!([{ "mac": "00:90:8f:00:00:01", "ip": "127.77.0.10" }]));
    let state = ApiState {
        tracker: tracker.clone(),
        bus: bus.clone(),
        store: store.clone(),
        leases,
        token: token.map(str::to_string),
        metrics: prometheus(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(api::serve(listener, state, stop.clone()));
    Api {
        addr,
        url: format!("http://{addr}"),
        bus,
        tracker,
        store,
        stop,
        dir,
    }
}

pub fn mac(i: u8) -> String {
    format!("00:90:8f:00:00:{i:02x}")
}

pub fn ip(i: u8) -> String {
    format!("127.77.0.{}", 9 + i)
}

fn info(i: u8, with_ip: bool, opts: &[u8]) -> DhcpInfo {
    DhcpInfo {
        mac: mac(i),
        ip: with_ip.then(|| ip(i).parse().unwrap()),
        model: Some("450HD".into()),
        vendor_class: Some("450HD".into()),
        requested_options: opts.to_vec(),
        policy: Some("audiocodes".into()),
        ..DhcpInfo::default()
    }
}

/// DISCOVER + ACK for phone `i`.
pub fn lease(bus: &EventBus, i: u8) {
    bus.publish(EventKind::DhcpDiscover(info(
        i,
        false,
        &[1, 3, 6, 66, 67, 160],
    )));
    bus.publish(EventKind::DhcpAck(info(i, true, &[])));
}

/// Starts a full image download for phone `i`; returns the transfer id.
pub fn start_download(bus: &EventBus, i: u8, size: u64) -> u64 {
    let id = bus.next_transfer_id();
    bus.publish(EventKind::TransferStarted {
        id,
        proto: Proto::Http,
        peer: SocketAddr::new(ip(i).parse().unwrap(), 40000 + u16::from(i)),
        path: "/450HD.img".into(),
        file: IMG.into(),
        file_size: size,
        offset: 0,
        size,
        sha256: "ab".repeat(32),
        user_agent: Some("AUDC/3.4.6.604 AUDC-IPPhone-450HD_UC_3.4.6.604/1".into()),
        tftp: None,
    });
    id
}

pub fn progress(bus: &EventBus, id: u64, bytes: u64) {
    bus.publish(EventKind::TransferProgress {
        id,
        bytes,
        rtt_us: None,
        retransmits: 0,
    });
}

pub fn finish(bus: &EventBus, id: u64, bytes: u64) {
    bus.publish(EventKind::TransferFinished {
        id,
        bytes,
        sha256: "ab".repeat(32),
        duration_ms: 1200,
        retransmits: 0,
    });
}

/// A config fetch for phone `i`, delivered in full.
pub fn config(bus: &EventBus, i: u8) {
    let id = bus.next_transfer_id();
    let name = format!("{}.cfg", mac(i).replace(':', ""));
    bus.publish(EventKind::TransferStarted {
        id,
        proto: Proto::Tftp,
        peer: SocketAddr::new(ip(i).parse().unwrap(), 50000),
        path: name.clone(),
        file: name,
        file_size: 18,
        offset: 0,
        size: 18,
        sha256: "cd".repeat(32),
        user_agent: None,
        tftp: None,
    });
    bus.publish(EventKind::TransferFinished {
        id,
        bytes: 18,
        sha256: "cd".repeat(32),
        duration_ms: 3,
        retransmits: 0,
    });
}
