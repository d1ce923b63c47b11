//! Tracker tests driven by recorded event sequences: every state, the races (a transfer
//! before the DHCP ACK, an address reused by another MAC), and the rebuild from the
//! journal through the real runner.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use provbox_config::TrackerConfig;
use provbox_protocols::events::{DhcpInfo, EventBus, EventKind, Proto, WireEvent};
use provbox_storage::{Index, Store, StoreOptions};
use tokio_util::sync::CancellationToken;

use super::state::{PhoneState as S, system_type};
use super::*;

const MAC: &str = "00:90:8f:12:34:56";
const MB10: u64 = 10 * 1024 * 1024;
const IMG: &str = "UC450HD_3.4.8.198.img";
const SHA_IMG: &str = "aa11";
const SHA_CFG: &str = "cc22";
const UC_UA: &str = "AUDC/3.4.6.604 AUDC-IPPhone-450HD_UC_3.4.6.604/1";

fn cfg() -> TrackerConfig {
    TrackerConfig {
        stall_after: provbox_config::Duration::from_secs(60),
        ..TrackerConfig::default()
    }
}

/// Drives a tracker with events at a controlled clock.
struct Sim {
    t: Tracker,
    index: std::sync::Arc<Index>,
    seq: u64,
    now: u64,
    changes: Vec<StateChange>,
    log: Vec<Record>,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            t: Tracker::new(&cfg()),
            index: std::sync::Arc::new(Index::default()),
            seq: 0,
            now: 1_700_000_000_000,
            changes: vec![],
            log: vec![],
        }
    }

    fn ev(&mut self, kind: EventKind) -> Vec<StateChange> {
        self.seq += 1;
        self.now += 100;
        let ev = WireEvent {
            seq: self.seq,
            at_ms: self.now,
            kind,
        };
        self.log.push(Record::Event(Arc::new(ev.clone())));
        let c = self.t.apply(&ev, &self.index);
        self.changes.extend(c.clone());
        c
    }

    fn advance(&mut self, ms: u64) -> Vec<StateChange> {
        self.now += ms;
        let c = self.t.tick(self.now);
        if !c.is_empty() {
            self.log.push(Record::Tick { at_ms: self.now });
        }
        self.changes.extend(c.clone());
        c
    }

    fn info(mac: &str, ip: Option<&str>, opts: &[u8]) -> DhcpInfo {
        DhcpInfo {
            mac: mac.into(),
            ip: ip.map(|i| i.parse().unwrap()),
            model: Some("450HD".into()),
            vendor_class: Some("450HD".into()),
            requested_options: opts.to_vec(),
            policy: Some("audiocodes".into()),
            ..DhcpInfo::default()
        }
    }

    /// DISCOVER, OFFER, REQUEST, ACK.
    fn dora(&mut self, mac: &str, ip: &str, opts: &[u8]) {
        self.ev(EventKind::DhcpDiscover(Self::info(mac, None, opts)));
        self.ev(EventKind::DhcpOffer(Self::info(mac, Some(ip), &[])));
        self.ev(EventKind::DhcpRequest(Self::info(mac, Some(ip), opts)));
        self.ev(EventKind::DhcpAck(Self::info(mac, Some(ip), &[])));
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        id: u64,
        proto: Proto,
        ip: &str,
        path: &str,
        file: &str,
        size: u64,
        range: (u64, u64),
        ua: Option<&str>,
    ) {
        let sha = if file.ends_with(".cfg") {
            SHA_CFG
        } else {
            SHA_IMG
        };
        self.start_sha(id, proto, ip, path, file, size, range, ua, sha);
    }

    /// [`Sim::start`] of a given content version.
    #[allow(clippy::too_many_arguments)]
    fn start_sha(
        &mut self,
        id: u64,
        proto: Proto,
        ip: &str,
        path: &str,
        file: &str,
        size: u64,
        range: (u64, u64),
        ua: Option<&str>,
        sha: &str,
    ) {
        self.ev(EventKind::TransferStarted {
            id,
            proto,
            peer: SocketAddr::new(ip.parse().unwrap(), 40000),
            path: path.into(),
            file: file.into(),
            file_size: size,
            offset: range.0,
            size: range.1,
            sha256: sha.into(),
            user_agent: ua.map(str::to_string),
            tftp: None,
        });
    }

    fn progress(&mut self, id: u64, bytes: u64) {
        self.ev(EventKind::TransferProgress {
            id,
            bytes,
            rtt_us: None,
            retransmits: 0,
        });
    }
    fn finish(&mut self, id: u64, bytes: u64) {
        self.ev(EventKind::TransferFinished {
            id,
            bytes,
            sha256: "x".into(),
            duration_ms: 1000,
            retransmits: 0,
        });
    }
    fn abort(&mut self, id: u64, bytes: u64, reason: &str) {
        self.ev(EventKind::TransferAborted {
            id,
            bytes,
            reason: reason.into(),
            duration_ms: 10,
        });
    }

    fn state(&self, key: &str) -> S {
        self.t
            .device(key)
            .unwrap_or_else(|| panic!("no device {key}"))
            .view
            .state
    }

    fn view(&self, key: &str) -> DeviceView {
        self.t.device(key).unwrap().view
    }

    fn path(&self, key: &str) -> Vec<S> {
        self.t
            .device(key)
            .unwrap()
            .states
            .iter()
            .map(|s| s.state)
            .collect()
    }

    /// A full HTTP upgrade: header read by Range, full download, burn, reboot, header
    /// read by early close, config.
    fn upgrade(&mut self, mac: &str, ip: &str) {
        self.dora(mac, ip, &[1, 3, 6, 66, 67, 160]);
        self.start(
            1,
            Proto::Http,
            ip,
            "/450HD.img",
            IMG,
            MB10,
            (0, 1024),
            Some(UC_UA),
        );
        self.finish(1, 1024);
        self.start(
            2,
            Proto::Http,
            ip,
            "/450HD.img",
            IMG,
            MB10,
            (0, MB10),
            Some(UC_UA),
        );
        for i in 1..=10 {
            self.progress(2, MB10 * i / 10);
        }
        self.finish(2, MB10);
        self.now += 60_000;
        self.dora(mac, ip, &[1, 3, 6, 66, 67, 160]);
        self.start(3, Proto::Http, ip, "/450HD.img", IMG, MB10, (0, MB10), None);
        self.abort(3, 1024, "client closed the connection");
        let cfg = format!("{}.cfg", mac.replace(':', ""));
        self.start(
            4,
            Proto::Http,
            ip,
            &format!("/{cfg}"),
            &cfg,
            2000,
            (0, 2000),
            None,
        );
        self.finish(4, 2000);
    }
}

#[test]
fn a_full_upgrade_walks_every_main_state() {
    let mut s = Sim::new();
    s.upgrade(MAC, "127.77.0.10");
    assert_eq!(
        s.path(MAC),
        vec![
            S::Discovered,
            S::Leased,
            S::FirmwareCheck,
            S::FirmwareDownload,
            S::Burning,
            S::Rebooted,
            S::FirmwareCheck,
            S::ConfigDownload,
            S::Provisioned
        ]
    );
    let v = s.view(MAC);
    // The UC User-Agent said 3.4.6.604 before the burn; the burned image is 3.4.8.198.
    assert_eq!(v.firmware.as_deref(), Some("3.4.8.198"));
    assert_eq!(v.model.as_deref(), Some("450HD"));
    assert_eq!(v.ip, Some("127.77.0.10".parse().unwrap()));
    assert_eq!(v.policy.as_deref(), Some("audiocodes"));
    assert!(v.progress.is_none());
    let r = s.t.receipt(MAC).unwrap();
    assert_eq!(r.firmware_before.as_deref(), Some("3.4.6.604"));
    assert_eq!(r.firmware_after.as_deref(), Some("3.4.8.198"));
    assert!(r.provisioned);
    assert_eq!(r.burns, 1);
    assert_eq!(r.reboots, 1);
    assert_eq!(r.files.len(), 4);
    assert_eq!(r.files[1].bytes, MB10);
    assert_eq!(r.files[2].result, "aborted");
    assert!(r.time_to_provisioned_ms.unwrap() >= 60_000);
    // Every change was reported.
    assert_eq!(s.changes.iter().filter(|c| c.key == MAC).count(), 8);
}

/// After a burn, the header check by Range of the same image (bytes 0-1023) is a header
/// read, not a second whole image (its prefix once added up to the file size).
#[test]
fn range_header_check_after_the_burn_is_not_another_image() {
    let mut s = Sim::new();
    let ip = "127.77.0.10";
    s.dora(MAC, ip, &[1, 3, 6, 66, 67, 160]);
    s.start(
        1,
        Proto::Http,
        ip,
        "/450HD.img",
        IMG,
        MB10,
        (0, 1024),
        Some(UC_UA),
    );
    s.finish(1, 1024);
    s.start(
        2,
        Proto::Http,
        ip,
        "/450HD.img",
        IMG,
        MB10,
        (0, MB10),
        Some(UC_UA),
    );
    s.progress(2, MB10);
    s.finish(2, MB10);
    s.dora(MAC, ip, &[1, 3, 6, 66, 67, 160]);
    s.start(3, Proto::Http, ip, "/450HD.img", IMG, MB10, (0, 1024), None);
    s.finish(3, 1024);
    assert_eq!(s.state(MAC), S::FirmwareCheck);
    s.start(
        4,
        Proto::Http,
        ip,
        "/00908f123456.cfg",
        "00908f123456.cfg",
        20,
        (0, 20),
        None,
    );
    s.finish(4, 20);
    assert_eq!(
        s.path(MAC),
        vec![
            S::Discovered,
            S::Leased,
            S::FirmwareCheck,
            S::FirmwareDownload,
            S::Burning,
            S::Rebooted,
            S::FirmwareCheck,
            S::ConfigDownload,
            S::Provisioned
        ]
    );
    assert_eq!(s.t.receipt(MAC).unwrap().burns, 1);
}

#[test]
fn progress_has_bytes_rate_and_eta() {
    let mut s = Sim::new();
    s.dora(MAC, "127.77.0.10", &[66, 67, 160]);
    s.start(
        7,
        Proto::Tftp,
        "127.77.0.10",
        "450HD.img",
        IMG,
        MB10,
        (0, MB10),
        None,
    );
    s.progress(7, 512 * 1024);
    s.now += 900;
    s.progress(7, MB10 / 2);
    let v = s.view(MAC);
    assert_eq!(v.state, S::FirmwareDownload);
    let p = v.progress.unwrap();
    assert_eq!(p.bytes, MB10 / 2);
    assert_eq!(p.total, MB10);
    assert!((p.pct - 50.0).abs() < 0.01);
    assert!(p.rate_bps > 0);
    assert!(p.eta_s.is_some());
    assert_eq!(p.proto, Proto::Tftp);
    assert_eq!((p.rtt_us, p.retransmits), (None, 0));

    // TFTP's link figures: the latest round trip is shown, and a progress event
    // without one (an early block) does not blank it.
    s.ev(EventKind::TransferProgress {
        id: 7,
        bytes: MB10 * 6 / 10,
        rtt_us: Some(1_850),
        retransmits: 3,
    });
    s.progress(7, MB10 * 7 / 10);
    let p = s.view(MAC).progress.unwrap();
    assert_eq!((p.rtt_us, p.retransmits), (Some(1_850), 3));
}

#[test]
fn tftp_header_check_by_error_after_two_blocks_is_not_a_failure() {
    let mut s = Sim::new();
    s.dora(MAC, "127.77.0.10", &[66, 67]);
    s.start(
        1,
        Proto::Tftp,
        "127.77.0.10",
        "450HD.img",
        IMG,
        MB10,
        (0, MB10),
        None,
    );
    s.progress(1, 2 * 1428);
    s.abort(1, 2 * 1428, "client sent ERROR 0: header read");
    assert_eq!(s.state(MAC), S::FirmwareCheck);
    assert!(s.view(MAC).reason.is_none());
    // Then a config with no download: the phone runs the image's version.
    s.start(
        2,
        Proto::Tftp,
        "127.77.0.10",
        "00908f123456.cfg",
        "00908f123456.cfg",
        100,
        (0, 100),
        None,
    );
    assert_eq!(s.view(MAC).firmware.as_deref(), Some("3.4.8.198"));
}

#[test]
fn stalled_download_and_recovery_from_the_stall() {
    let mut s = Sim::new();
    s.dora(MAC, "127.77.0.10", &[66, 67, 160]);
    s.start(
        1,
        Proto::Http,
        "127.77.0.10",
        "/450HD.img",
        IMG,
        MB10,
        (0, MB10),
        None,
    );
    s.progress(1, MB10 / 3);
    assert!(s.advance(30_000).is_empty(), "not yet stalled");
    let c = s.advance(31_000);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].to, S::Stalled);
    let v = s.view(MAC);
    assert_eq!(v.stalled_in, Some(S::FirmwareDownload));
    assert!(
        v.reason.unwrap().contains("no progress"),
        "reason names the stall"
    );
    // Ticks while stalled change nothing more.
    assert!(s.advance(100_000).is_empty());
    s.progress(1, MB10 / 2);
    assert_eq!(s.state(MAC), S::FirmwareDownload);
    assert!(s.view(MAC).reason.is_none());
}

#[test]
fn a_phone_that_never_returns_from_the_burn_stalls() {
    let mut s = Sim::new();
    s.dora(MAC, "127.77.0.10", &[66, 67, 160]);
    s.start(
        1,
        Proto::Http,
        "127.77.0.10",
        "/450HD.img",
        IMG,
        MB10,
        (0, MB10),
        None,
    );
    s.finish(1, MB10);
    assert_eq!(s.state(MAC), S::Burning);
    let b = s.view(MAC).burn.unwrap();
    assert_eq!(b.expected_ms, 120_000);
    assert_eq!(b.version.as_deref(), Some("3.4.8.198"));
    assert!(
        s.advance(150_000).is_empty(),
        "within burn time + stall_after"
    );
    assert_eq!(s.advance(40_000)[0].to, S::Stalled);
    assert_eq!(s.view(MAC).stalled_in, Some(S::Burning));
    s.ev(EventKind::DhcpDiscover(Sim::info(
        MAC,
        None,
        &[66, 67, 160],
    )));
    assert_eq!(s.state(MAC), S::Rebooted);
    assert_eq!(s.view(MAC).firmware.as_deref(), Some("3.4.8.198"));
}

#[test]
fn burn_time_per_model_comes_from_config() {
    let mut c = cfg();
    c.burn_time
        .insert("450hd".into(), provbox_config::Duration::from_secs(300));
    let mut s = Sim::new();
    s.t = Tracker::new(&c);
    s.dora(MAC, "127.77.0.10", &[160]);
    s.start(
        1,
        Proto::Http,
        "127.77.0.10",
        "/450HD.img",
        IMG,
        1000,
        (0, 1000),
        None,
    );
    s.finish(1, 1000);
    assert_eq!(s.view(MAC).burn.unwrap().expected_ms, 300_000);
}

#[test]
fn idle_after_lease_stalls_only_for_phones() {
    let mut s = Sim::new();
    s.dora(MAC, "127.77.0.10", &[66, 67, 160]);
    // A laptop: no model, no provisioning options.
    s.ev(EventKind::DhcpAck(DhcpInfo {
        mac: "02:00:00:00:00:01".into(),
        ip: Some(Ipv4Addr::new(127, 77, 0, 11)),
        ..Default::default()
    }));
    s.advance(61_000);
    assert_eq!(s.state(MAC), S::Stalled);
    assert!(s.view(MAC).reason.unwrap().contains("DHCPACK"));
    assert_eq!(s.state("02:00:00:00:00:01"), S::Leased);
    // Any activity resumes an idle stall.
    s.start(
        1,
        Proto::Http,
        "127.77.0.10",
        "/450HD.img",
        IMG,
        MB10,
        (0, 1024),
        None,
    );
    assert_eq!(s.state(MAC), S::FirmwareCheck);
}

#[test]
fn aborted_download_and_refused_config_fail_with_reasons() {
    let mut s = Sim::new();
    s.dora(MAC, "127.77.0.10", &[160]);
    s.start(
        1,
        Proto::Ftp,
        "127.77.0.10",
        "/450HD.img",
        IMG,
        MB10,
        (0, MB10),
        None,
    );
    s.progress(1, MB10 * 63 / 100);
    s.abort(1, MB10 * 63 / 100, "the client went away");
    assert_eq!(s.state(MAC), S::Failed);
    let r = s.view(MAC).reason.unwrap();
    assert!(
        r.contains("63 %") && r.contains("the client went away"),
        "{r}"
    );

    let other = "00:90:8f:00:00:02";
    s.dora(other, "127.77.0.12", &[160]);
    s.ev(EventKind::TransferRefused {
        proto: Proto::Http,
        peer: "127.77.0.12:5000".parse().unwrap(),
        path: "/00908F000002.cfg".into(),
        reason: "no such file".into(),
        user_agent: None,
    });
    assert_eq!(s.state(other), S::Failed);
    assert!(s.view(other).reason.unwrap().contains("no such file"));
    // A server at its transfer limit is transient: noted, not a failure.
    let third = "00:90:8f:00:00:03";
    s.dora(third, "127.77.0.13", &[160]);
    s.ev(EventKind::TransferRefused {
        proto: Proto::Tftp,
        peer: "127.77.0.13:5000".parse().unwrap(),
        path: "00908F000003.cfg".into(),
        reason: format!(
            "{}: [tftp] max_transfers (1) reached",
            provbox_protocols::events::BUSY_REASON
        ),
        user_agent: None,
    });
    assert_eq!(s.state(third), S::Leased);
    assert!(
        s.view(third)
            .last_event
            .is_some_and(|e| e.contains("server busy")),
        "{:?}",
        s.view(third)
    );
    // A failed phone that boots again starts over.
    s.ev(EventKind::DhcpDiscover(Sim::info(other, None, &[160])));
    assert_eq!(s.state(other), S::Discovered);
}

#[test]
fn a_config_for_another_model_is_rejected() {
    let mut s = Sim::new();
    s.upgrade(MAC, "127.77.0.10");
    let checks = s.t.take_config_checks();
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].sha256, SHA_CFG);
    // Matching model (UC prefix and case ignored): nothing.
    assert!(
        s.t.config_verdict(&checks[0], Some("uc450hd"), s.now)
            .is_empty()
    );
    assert!(s.t.config_verdict(&checks[0], None, s.now).is_empty());
    // The runner skips journaling exactly the verdicts that change nothing.
    assert!(s.t.verdict_is_noop(&checks[0], Some("uc450hd")));
    assert!(s.t.verdict_is_noop(&checks[0], None));
    assert!(!s.t.verdict_is_noop(&checks[0], Some("445HD")));
    let c = s.t.config_verdict(&checks[0], Some("445HD"), s.now);
    assert_eq!(c[0].to, S::ConfigRejected);
    assert!(s.view(MAC).reason.unwrap().contains("system/type=445HD"));
    // A reboot after that counts as a new attempt.
    s.ev(EventKind::DhcpDiscover(Sim::info(MAC, None, &[160])));
    assert_eq!(s.state(MAC), S::Rebooted);
}

#[test]
fn system_type_is_read_from_config_text() {
    assert_eq!(
        system_type("; comment\n\nsystem/type=450HD\nvoip/x=1\n").as_deref(),
        Some("450HD")
    );
    assert_eq!(
        system_type("System/Type = C450HD\r\n").as_deref(),
        Some("C450HD")
    );
    assert_eq!(system_type("voip/line/0/enabled=1\n"), None);
    assert_eq!(system_type(";system/type=445HD\n"), None);
}

#[test]
fn recovery_when_the_phone_asks_only_66_67_after_a_burn() {
    let mut s = Sim::new();
    s.dora(MAC, "127.77.0.10", &[1, 3, 66, 67, 160]);
    s.start(
        1,
        Proto::Http,
        "127.77.0.10",
        "/450HD.img",
        IMG,
        MB10,
        (0, MB10),
        None,
    );
    s.finish(1, MB10);
    assert_eq!(s.state(MAC), S::Burning);
    s.ev(EventKind::DhcpDiscover(Sim::info(
        MAC,
        None,
        &[1, 3, 66, 67],
    )));
    assert_eq!(s.state(MAC), S::Recovery);
    assert!(s.view(MAC).reason.unwrap().contains("66/67"));
    // The recovery loader fetches the image over TFTP: progress shows, state stays.
    s.ev(EventKind::DhcpAck(Sim::info(MAC, Some("127.77.0.10"), &[])));
    s.start(
        2,
        Proto::Tftp,
        "127.77.0.10",
        "450HD_3.4.8.198.img",
        IMG,
        MB10,
        (0, MB10),
        None,
    );
    s.progress(2, MB10 / 2);
    assert_eq!(s.state(MAC), S::Recovery);
    assert!(s.view(MAC).progress.is_some());
    s.finish(2, MB10);
    assert_eq!(s.state(MAC), S::Recovery);
    assert!(s.view(MAC).burn.is_some());
    // Back with option 160: recovered.
    s.ev(EventKind::DhcpDiscover(Sim::info(
        MAC,
        None,
        &[1, 3, 66, 67, 160],
    )));
    assert_eq!(s.state(MAC), S::Rebooted);
}

#[test]
fn recovery_when_the_image_is_fetched_again_after_a_burn_without_config() {
    let mut s = Sim::new();
    // A 66/67 phone: no option 160 ever, so only the second rule can tell.
    s.dora(MAC, "127.77.0.10", &[66, 67]);
    s.start(
        1,
        Proto::Tftp,
        "127.77.0.10",
        "450HD.img",
        IMG,
        500_000,
        (0, 500_000),
        None,
    );
    s.finish(1, 500_000);
    s.dora(MAC, "127.77.0.10", &[66, 67]);
    assert_eq!(s.state(MAC), S::Rebooted);
    s.start(
        2,
        Proto::Tftp,
        "127.77.0.10",
        "450HD.img",
        IMG,
        500_000,
        (0, 500_000),
        None,
    );
    s.progress(2, 400_000);
    assert_eq!(s.state(MAC), S::FirmwareDownload);
    s.finish(2, 500_000);
    assert_eq!(s.state(MAC), S::Recovery);
    assert!(s.view(MAC).reason.unwrap().contains("burn probably failed"));
}

#[test]
fn a_transfer_before_the_dhcp_ack_is_merged_into_the_phone() {
    let mut s = Sim::new();
    s.ev(EventKind::DhcpDiscover(Sim::info(MAC, None, &[160])));
    // The TFTP server's event overtook the DHCP server's ACK.
    s.start(
        1,
        Proto::Tftp,
        "127.77.0.10",
        "450HD.img",
        IMG,
        MB10,
        (0, MB10),
        None,
    );
    assert_eq!(s.state("ip:127.77.0.10"), S::FirmwareCheck);
    assert!(s.view("127.77.0.10").static_ip);
    s.ev(EventKind::DhcpAck(Sim::info(MAC, Some("127.77.0.10"), &[])));
    assert!(
        s.t.device("ip:127.77.0.10").is_none(),
        "the address row is gone"
    );
    assert_eq!(s.state(MAC), S::FirmwareCheck);
    // Its transfer now belongs to the phone.
    s.progress(1, MB10 / 2);
    assert_eq!(s.state(MAC), S::FirmwareDownload);
    assert_eq!(s.view(MAC).progress.unwrap().bytes, MB10 / 2);
}

#[test]
fn an_address_reused_by_another_mac_goes_to_the_new_holder() {
    let mut s = Sim::new();
    let (a, b) = ("00:90:8f:00:00:0a", "00:90:8f:00:00:0b");
    s.dora(a, "127.77.0.10", &[160]);
    s.ev(EventKind::DhcpRelease(Sim::info(
        a,
        Some("127.77.0.10"),
        &[],
    )));
    s.dora(b, "127.77.0.10", &[160]);
    s.start(
        1,
        Proto::Tftp,
        "127.77.0.10",
        "450HD.img",
        IMG,
        MB10,
        (0, 2048),
        None,
    );
    assert_eq!(s.state(b), S::FirmwareCheck);
    assert_eq!(s.state(a), S::Leased);
    assert_eq!(s.view(a).ip, None);
    assert_eq!(s.view(b).ip, Some("127.77.0.10".parse().unwrap()));
    // Without a release too (the lease expired).
    s.dora(a, "127.77.0.20", &[160]);
    s.dora(b, "127.77.0.20", &[160]);
    s.start(
        2,
        Proto::Tftp,
        "127.77.0.20",
        "450HD.img",
        IMG,
        MB10,
        (0, 2048),
        None,
    );
    assert_eq!(s.view(b).active_transfers, 2);
    assert_eq!(s.view(a).ip, None);
}

#[test]
fn attribution_by_path_user_agent_lease_and_static_address() {
    let mut s = Sim::new();
    // Path MAC, from an address nobody leased.
    s.start(
        1,
        Proto::Http,
        "127.9.9.9",
        "/00908FAABBCC.cfg",
        "00908faabbcc.cfg",
        100,
        (0, 100),
        None,
    );
    assert_eq!(s.state("00:90:8f:aa:bb:cc"), S::ConfigDownload);
    // AudioCodes 2.x User-Agent with its MAC: learnt as a hint for that address…
    s.start(
        2,
        Proto::Http,
        "127.9.9.8",
        "/440HD.img",
        "440HD_2.2.16.501.img",
        MB10,
        (0, 1024),
        Some("AUDC-IPPhone/2.2.8.61 (440HDG-Rev0; 00908F602AAC)"),
    );
    let v = s.view("00:90:8f:60:2a:ac");
    assert_eq!(
        (v.firmware.as_deref(), v.vendor.as_deref()),
        (Some("2.2.8.61"), Some("AudioCodes"))
    );
    assert_eq!(v.model.as_deref(), Some("440HDG"));
    // …so its TFTP request (no identity at all) finds it.
    s.start(
        3,
        Proto::Tftp,
        "127.9.9.8",
        "440HD.img",
        "440HD_2.2.16.501.img",
        MB10,
        (0, MB10),
        None,
    );
    assert_eq!(s.view("00:90:8f:60:2a:ac").active_transfers, 2);
    // A UC User-Agent has no MAC: the lease decides.
    s.dora(MAC, "127.77.0.10", &[160]);
    s.start(
        4,
        Proto::Https,
        "127.77.0.10",
        "/450HD.img",
        IMG,
        MB10,
        (0, 1024),
        Some(UC_UA),
    );
    assert_eq!(s.view(MAC).firmware.as_deref(), Some("3.4.6.604"));
    // Nothing at all: a row for the static address.
    s.start(
        5,
        Proto::Ftp,
        "127.5.5.5",
        "/450HD.img",
        IMG,
        MB10,
        (0, 1024),
        None,
    );
    let st = s.view("ip:127.5.5.5");
    assert!(st.static_ip);
    assert_eq!(st.mac, None);
    assert_eq!(st.state, S::FirmwareCheck);
}

/// An early-close header check over HTTP: the server pushed MiBs into socket buffers
/// and learns of the close only after the phone has asked for its config.
#[test]
fn an_image_read_abandoned_for_a_later_request_is_not_a_failure() {
    let mut s = Sim::new();
    let ip = "127.77.0.10";
    s.dora(MAC, ip, &[160]);
    s.start(1, Proto::Http, ip, "/450HD.img", IMG, MB10, (0, MB10), None);
    s.progress(1, MB10 / 4);
    let cfg = "00908f123456.cfg";
    s.start(
        2,
        Proto::Http,
        ip,
        &format!("/{cfg}"),
        cfg,
        20,
        (0, 20),
        None,
    );
    s.finish(2, 20);
    assert_eq!(s.state(MAC), S::Provisioned);
    s.abort(1, MB10 / 4, "the client went away");
    assert_eq!(s.state(MAC), S::Provisioned, "{:?}", s.view(MAC).reason);
    let v = s.view(MAC);
    assert!(
        v.last_event
            .as_deref()
            .is_some_and(|e| e.contains("abandoned by the phone")),
        "{:?}",
        v.last_event
    );

    // The same abort with no later request is still a failed download.
    let other = "00:90:8f:00:00:02";
    s.dora(other, "127.77.0.12", &[160]);
    s.start(
        3,
        Proto::Http,
        "127.77.0.12",
        "/450HD.img",
        IMG,
        MB10,
        (0, MB10),
        None,
    );
    s.abort(3, MB10 / 4, "the client went away");
    assert_eq!(s.state(other), S::Failed);
}

#[test]
fn a_resumed_download_completes_the_image() {
    let mut s = Sim::new();
    s.dora(MAC, "127.77.0.10", &[160]);
    s.start(
        1,
        Proto::Http,
        "127.77.0.10",
        "/450HD.img",
        IMG,
        MB10,
        (0, MB10),
        None,
    );
    s.progress(1, MB10 / 2);
    s.abort(1, MB10 / 2, "connection reset");
    assert_eq!(s.state(MAC), S::Failed);
    s.start(
        2,
        Proto::Http,
        "127.77.0.10",
        "/450HD.img",
        IMG,
        MB10,
        (MB10 / 2, MB10 / 2),
        None,
    );
    assert_eq!(s.state(MAC), S::FirmwareDownload);
    s.finish(2, MB10 / 2);
    assert_eq!(s.state(MAC), S::Burning);
}

#[test]
fn provisioned_phone_renewing_its_lease_stays_provisioned() {
    let mut s = Sim::new();
    s.upgrade(MAC, "127.77.0.10");
    s.ev(EventKind::DhcpRequest(Sim::info(
        MAC,
        Some("127.77.0.10"),
        &[160],
    )));
    s.ev(EventKind::DhcpAck(Sim::info(MAC, Some("127.77.0.10"), &[])));
    assert_eq!(s.state(MAC), S::Provisioned);
    s.advance(10 * 60_000);
    assert_eq!(
        s.state(MAC),
        S::Provisioned,
        "provisioned phones never stall"
    );
}

#[test]
fn update_pending_against_the_store() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("450HD_3.4.8.198.img"), b"new image").unwrap();
        std::fs::write(root.join("450HD_3.4.6.604.img"), b"old image").unwrap();
        let store = store_at(dir.path()).await;
        let mut s = Sim::new();
        s.index = store.index();
        s.dora(MAC, "127.77.0.10", &[160]);
        s.start(
            1,
            Proto::Http,
            "127.77.0.10",
            "/450HD.img",
            "450HD_3.4.8.198.img",
            9,
            (0, 9),
            Some(UC_UA),
        );
        let v = s.view(MAC);
        assert_eq!(v.firmware.as_deref(), Some("3.4.6.604"));
        assert_eq!(v.target_firmware.as_deref(), Some("3.4.8.198"));
        assert!(v.update_pending);
    });
}

async fn store_at(dir: &std::path::Path) -> Store {
    Store::start(StoreOptions {
        root: dir.join("store"),
        state_dir: dir.join("state/store"),
        poll: false,
        poll_interval: Duration::from_secs(1),
        settle: Duration::from_millis(50),
        rescan_interval: Duration::from_secs(300),
    })
    .await
    .unwrap()
}

#[test]
fn replaying_the_log_rebuilds_the_same_fleet() {
    let mut s = Sim::new();
    s.upgrade(MAC, "127.77.0.10");
    s.dora("00:90:8f:00:00:02", "127.77.0.11", &[160]);
    s.start(
        9,
        Proto::Tftp,
        "127.77.0.11",
        "450HD.img",
        IMG,
        MB10,
        (0, MB10),
        None,
    );
    s.progress(9, MB10 / 4);
    s.advance(70_000);
    let mut t = Tracker::new(&cfg());
    for r in &s.log {
        match r {
            Record::Event(e) => {
                t.apply(e, &s.index);
            }
            Record::Tick { at_ms } => {
                t.tick(*at_ms);
            }
            _ => {}
        }
    }
    assert_eq!(t.fleet(), s.t.fleet());
}

// ---- The runner: journal, rebuild, wait_for ----

async fn publish_upgrade(bus: &EventBus, mac: &str, ip: &str) {
    let info = |ip: Option<&str>, opts: &[u8]| Sim::info(mac, ip, opts);
    bus.publish(EventKind::DhcpDiscover(info(None, &[66, 67, 160])));
    bus.publish(EventKind::DhcpAck(info(Some(ip), &[])));
    let id = bus.next_transfer_id();
    bus.publish(EventKind::TransferStarted {
        id,
        proto: Proto::Http,
        peer: SocketAddr::new(ip.parse().unwrap(), 40000),
        path: "/450HD.img".into(),
        file: IMG.into(),
        file_size: MB10,
        offset: 0,
        size: MB10,
        sha256: SHA_IMG.into(),
        user_agent: None,
        tftp: None,
    });
    bus.publish(EventKind::TransferProgress {
        id,
        bytes: MB10 / 2,
        rtt_us: None,
        retransmits: 0,
    });
    bus.publish(EventKind::TransferFinished {
        id,
        bytes: MB10,
        sha256: SHA_IMG.into(),
        duration_ms: 5,
        retransmits: 0,
    });
}

#[tokio::test]
async fn the_runner_journals_and_a_restart_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("store")).unwrap();
    let store = store_at(dir.path()).await;
    let jdir = dir.path().join("state/journal");
    let mut c = cfg();
    c.journal_max_bytes = 2000; // force rotations, so the rebuild goes through snapshots
    c.journal_keep = 2;

    let bus = EventBus::new(1024);
    let stop = CancellationToken::new();
    let h = spawn(&c, bus.clone(), store.clone(), &jdir, stop.clone()).unwrap();
    for i in 0..6u8 {
        publish_upgrade(
            &bus,
            &format!("00:90:8f:00:00:{i:02x}"),
            &format!("127.77.0.{}", 10 + i),
        )
        .await;
    }
    let v = h
        .wait_for("00908f000005", S::Burning, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(v.mac.as_deref(), Some("00:90:8f:00:00:05"));
    let before = h.devices();
    let last_seq = bus.last_seq();
    stop.cancel();
    for _ in 0..100 {
        if h.is_stopped() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(h.is_stopped());
    // The numbering where the stopped process ended (its last device views included).
    let feed_before = h.feed_seq();
    assert!(journal::files(&jdir).len() >= 2, "rotated");
    // The rebuild finds restart points by this prefix, without decoding every line.
    let cur = std::fs::read_to_string(jdir.join("journal.jsonl")).unwrap();
    let last = cur.lines().last().unwrap();
    assert!(last.starts_with(r#"{"rec":"snapshot""#), "{last:.80}");

    // A new process: a fresh bus, numbering continues after the journal.
    let bus2 = EventBus::new(1024);
    let stop2 = CancellationToken::new();
    let h2 = spawn(&c, bus2.clone(), store, &jdir, stop2.clone()).unwrap();
    assert_eq!(bus2.last_seq(), last_seq);
    assert_eq!(h2.feed_seq(), feed_before);
    let after = h2.devices();
    assert_eq!(after.len(), 6);
    for (a, b) in before.iter().zip(after.iter()) {
        assert_eq!(
            (
                a.key.as_str(),
                a.state,
                a.burn.as_ref().map(|b| b.started_ms)
            ),
            (
                b.key.as_str(),
                b.state,
                b.burn.as_ref().map(|b| b.started_ms)
            )
        );
    }
    // It keeps tracking: the phone comes back from the burn.
    bus2.publish(EventKind::DhcpDiscover(Sim::info(
        "00:90:8f:00:00:03",
        None,
        &[66, 67, 160],
    )));
    h2.wait_for("00:90:8f:00:00:03", S::Rebooted, Duration::from_secs(10))
        .await
        .unwrap();
    // A resumed feed subscription gets what came after.
    let sub = h2.subscribe_feed(Some(feed_before));
    assert!(!sub.reset);
    assert!(
        sub.backlog
            .iter()
            .any(|i| i.event == "state" && i.data().contains("rebooted"))
    );
    stop2.cancel();
}

#[tokio::test]
async fn wait_for_times_out_with_the_current_state() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("store")).unwrap();
    let store = store_at(dir.path()).await;
    let bus = EventBus::new(64);
    let stop = CancellationToken::new();
    let h = spawn(
        &cfg(),
        bus.clone(),
        store,
        &dir.path().join("j"),
        stop.clone(),
    )
    .unwrap();
    bus.publish(EventKind::DhcpDiscover(Sim::info(MAC, None, &[160])));
    let e = h
        .wait_for(MAC, S::Provisioned, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("discovered"), "{e}");
    stop.cancel();
}

#[tokio::test]
async fn a_delivered_config_for_another_model_is_checked_by_the_runner() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("00908f123456.cfg"),
        "system/type=445HD\nvoip/line/0/enabled=1\n",
    )
    .unwrap();
    let store = store_at(dir.path()).await;
    let entry = store.lookup("00908f123456.cfg").unwrap();
    let bus = EventBus::new(64);
    let stop = CancellationToken::new();
    let h = spawn(
        &cfg(),
        bus.clone(),
        store,
        &dir.path().join("j"),
        stop.clone(),
    )
    .unwrap();
    bus.publish(EventKind::DhcpDiscover(Sim::info(MAC, None, &[160])));
    bus.publish(EventKind::DhcpAck(Sim::info(MAC, Some("127.77.0.10"), &[])));
    let id = bus.next_transfer_id();
    bus.publish(EventKind::TransferStarted {
        id,
        proto: Proto::Http,
        peer: "127.77.0.10:4000".parse().unwrap(),
        path: "/00908F123456.cfg".into(),
        file: entry.path.clone(),
        file_size: entry.size,
        offset: 0,
        size: entry.size,
        sha256: entry.sha256.clone(),
        user_agent: None,
        tftp: None,
    });
    bus.publish(EventKind::TransferFinished {
        id,
        bytes: entry.size,
        sha256: entry.sha256.clone(),
        duration_ms: 1,
        retransmits: 0,
    });
    let v = h
        .wait_for(MAC, S::ConfigRejected, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(v.reason.unwrap().contains("445HD"));
    stop.cancel();
}

#[test]
fn human_sizes_match_the_exact_quotient_rounded_to_one_decimal() {
    use super::state::human_bytes;
    // The reference: `{:.1}` of the exact quotient (exact in f64 below 2^53), which
    // rounds ties to even.
    fn reference(n: u64) -> String {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let (mut v, mut u) = (n as f64, 0);
        while v >= 1024.0 && u < UNITS.len() - 1 {
            v /= 1024.0;
            u += 1;
        }
        if u == 0 {
            format!("{n} B")
        } else {
            format!("{v:.1} {}", UNITS[u])
        }
    }
    let mut cases = vec![
        0,
        1,
        1023,
        1024,
        1075,
        1076,
        1280,
        1331,
        20 << 20,
        (1 << 20) - 1,
    ];
    cases.extend((0..5000u64).map(|i| i * 977 + 3));
    cases.extend([1u64 << 40, (1 << 40) * 3 / 2, (1 << 50) + 12345]);
    for n in cases {
        assert_eq!(human_bytes(n), reference(n), "{n} bytes");
    }
    assert_eq!(human_bytes(1280), "1.2 KiB", "a tie rounds to even");
    assert_eq!(human_bytes(20 << 20), "20.0 MiB");
}

/// The protocols send no progress event for a transfer's last bytes (the end event
/// carries them): an image delivered in one go is still a download, then a burn.
#[test]
fn an_image_finished_without_progress_events_is_a_download_then_a_burn() {
    let mut s = Sim::new();
    s.dora(MAC, "127.77.0.11", &[1, 3, 6, 66, 67, 160]);
    s.start(
        1,
        Proto::Http,
        "127.77.0.11",
        "/450HD.img",
        IMG,
        MB10,
        (0, MB10),
        Some(UC_UA),
    );
    s.finish(1, MB10);
    assert_eq!(
        s.path(MAC),
        vec![
            S::Discovered,
            S::Leased,
            S::FirmwareCheck,
            S::FirmwareDownload,
            S::Burning
        ]
    );
}

/// A provisioned phone re-reading the config it has stays provisioned (the read is in
/// its timeline); a changed config is a new config download.
#[test]
fn rereading_the_same_config_does_not_restart_the_journey() {
    let mut s = Sim::new();
    let ip = "127.77.0.12";
    s.upgrade(MAC, ip);
    let cfg = format!("{}.cfg", MAC.replace(':', ""));
    let before = s.path(MAC).len();
    let notes = s.t.device(MAC).unwrap().timeline.len();
    for id in 10..13 {
        s.now += 1000;
        s.start(
            id,
            Proto::Http,
            ip,
            &format!("/{cfg}"),
            &cfg,
            2000,
            (0, 2000),
            None,
        );
        s.finish(id, 2000);
    }
    assert_eq!(s.state(MAC), S::Provisioned);
    assert_eq!(s.path(MAC).len(), before, "{:?}", s.path(MAC));
    let d = s.t.device(MAC).unwrap();
    assert_eq!(d.timeline.len(), notes + 6, "each read is in the timeline");
    // The config changed in the store: a download of new content, then provisioned.
    s.now += 1000;
    s.start_sha(
        20,
        Proto::Http,
        ip,
        &format!("/{cfg}"),
        &cfg,
        2100,
        (0, 2100),
        None,
        "dd33",
    );
    assert_eq!(s.state(MAC), S::ConfigDownload);
    s.finish(20, 2100);
    assert_eq!(s.state(MAC), S::Provisioned);
}

#[test]
fn addresses_format_on_the_stack_like_display() {
    use super::state::ip_str;
    use std::net::IpAddr;
    for s in [
        "127.0.0.1",
        "255.255.255.255",
        "198.18.0.10",
        "::1",
        "fe80::1",
        // The longest textual IPv6 form: 45 bytes.
        "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        "1111:2222:3333:4444:5555:6666:7777:8888",
    ] {
        let ip: IpAddr = s.parse().unwrap();
        let mut buf = [0u8; 48];
        assert_eq!(ip_str(&ip, &mut buf), ip.to_string(), "{s}");
    }
}
