//! The phone simulator against third-party servers on loopback: nginx (HTTPS),
//! vsftpd (FTP) and tftp-hpa (TFTP). Phones use the Static method (the URL as if it
//! came in option 160) and bind to their own 127.x addresses; the peers' logs prove
//! what went over the wire (source address per phone, User-Agent, Range).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim_common;

use std::net::Ipv4Addr;
use std::time::Duration;

use provbox::sim::{Family, Fleet, HeaderCheck, Phase, SimTarget};
use sim_common::*;

const MB: u64 = 1 << 20;

fn fast(p: &mut provbox::sim::PhoneSpec) {
    p.timings.burn = Duration::from_millis(100);
    p.timings.reboot = Duration::from_millis(50);
    p.timings.retry_backoff = vec![Duration::from_millis(100)];
}

fn first_ip() -> Ipv4Addr {
    let net = provbox::sim::random_loopback_net();
    Ipv4Addr::from(u32::from(net) + 10)
}

/// A store with a 450HD image, per-phone configs including a shared file.
fn store_450(macs: &[String]) -> TempStore {
    let s = TempStore::new();
    s.image("450HD.img", "450HD", "3.4.8.1", 2 * MB, false);
    s.write(
        "common.cfg",
        b"; shared\r\nprovisioning/period/type=HOURLY\r\nnetwork/lan/vlan/mode=DISABLE\r\n",
    );
    for m in macs {
        s.write(
            &format!("{m}.cfg"),
            format!("system/type=450HD\ninclude common.cfg\nvoip/line/0/auth_name={m}\n")
                .as_bytes(),
        );
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_fleet_against_nginx_upgrades_then_configures() {
    let fleet = Fleet::generate(
        4,
        &["450HD"],
        Family::Uc,
        "00:90:8f:a1:00:01".parse().unwrap(),
    )
    .configure(fast);
    let macs: Vec<String> = fleet.specs.iter().map(|p| p.mac_in_names()).collect();
    assert!(
        macs[0].chars().all(|c| !c.is_ascii_lowercase()),
        "UC phones use uppercase MACs"
    );
    let store = store_450(&macs);
    let work = TempStore::new();
    let port = free_port();
    let (nginx, access) = start_nginx(work.path(), store.path(), Ipv4Addr::LOCALHOST, port, None);

    let ip0 = first_ip();
    let target = SimTarget::static_url(
        &format!("https://127.0.0.1:{port}/450HD.img;<MAC>.cfg"),
        ip0,
    );
    let report = fleet.run(target, None).await.unwrap();
    let log = std::fs::read_to_string(&access).unwrap();
    assert!(report.all_provisioned(), "{}\n{log}", report.table());

    for (i, p) in report.phones.iter().enumerate() {
        assert_eq!(p.initial_version, "3.4.6.604");
        assert_eq!(p.final_version, "3.4.8.1", "{}", report.table());
        assert_eq!((p.burns, p.firmware_downloads, p.crc_errors), (1, 1, 0));
        // Boot, reboot after the burn, reboot after the config changed network/ keys.
        assert_eq!(p.boots, 3, "{:?}", p.timeline);
        assert_eq!(p.configs_applied, 1);
        assert!(p.config_hash.is_some());
        // Three header checks (one per boot) of 1024 bytes each, one full image.
        assert_eq!(p.firmware_checks, 3);
        assert_eq!(p.firmware_bytes, 2 * MB + 3 * 1024);

        // nginx saw this phone from its own address, with the UC User-Agent.
        let ip = Ipv4Addr::from(u32::from(ip0) + i as u32).to_string();
        let mine: Vec<String> = log
            .lines()
            .filter(|l| l.starts_with(&format!("{ip} ")))
            .map(str::to_string)
            .collect();
        let ua = "AUDC/3.4.6.604 AUDC-IPPhone-450HD_UC_3.4.6.604/1";
        assert!(
            mine.iter()
                .any(|l| l.contains(ua) && l.contains("GET /450HD.img")),
            "{ip}: {mine:?}"
        );
        // After the burn the User-Agent carries the new version.
        assert!(
            mine.iter().any(
                |l| l.contains("AUDC/3.4.8.1 ") && l.contains(&format!("GET /{}.cfg", macs[i]))
            ),
            "{mine:?}"
        );
        assert!(
            mine.iter().any(|l| l.contains("GET /common.cfg")),
            "{mine:?}"
        );
        // Three header checks and one full download of the image. (nginx's byte count
        // cannot tell them apart: with sendfile it hands the kernel more than the
        // phone reads before closing; the phone's own count above does.)
        let gets = mine
            .iter()
            .filter(|l| l.contains("GET /450HD.img") && l.contains(" 200 "))
            .count();
        assert_eq!(gets, 4, "{mine:?}");
    }
    drop(nginx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_range_check_corrupt_wrong_model_and_power_loss() {
    let first: provbox_config::MacAddr = "00:90:8f:a2:00:01".parse().unwrap();
    let fleet = Fleet::generate(5, &["450HD"], Family::Gen2, first)
        .configure(fast)
        .configure(|p| {
            p.header_check = HeaderCheck::Range;
            p.config_reboot = false;
        });
    let macs: Vec<String> = fleet.specs.iter().map(|p| p.mac_in_names()).collect();
    assert!(
        macs[0].chars().all(|c| !c.is_ascii_uppercase()),
        "2.x phones use lowercase MACs"
    );
    let fleet = fleet
        .configure_mac(provbox::sim::nth_mac(first, 1), |p| p.faults.corrupt = true)
        .configure_mac(provbox::sim::nth_mac(first, 2), |p| {
            p.faults.wrong_model = true
        })
        .configure_mac(provbox::sim::nth_mac(first, 3), |p| {
            p.faults.power_loss = true
        });
    let store = store_450(&macs);
    // Phone 4 gets a config written for another model.
    store.write(
        &format!("{}.cfg", macs[4]),
        b"system/type=445HD\nvoip/line/0/auth_name=x\n",
    );
    let work = TempStore::new();
    let port = free_port();
    let (_nginx, access) = start_nginx(work.path(), store.path(), Ipv4Addr::LOCALHOST, port, None);

    let target = SimTarget::static_url(&format!("https://127.0.0.1:{port}/"), first_ip());
    let report = fleet.run(target, None).await.unwrap();
    let t = report.table();
    let log = std::fs::read_to_string(&access).unwrap();

    let p = &report.phones;
    assert_eq!(p[0].outcome, Phase::Provisioned, "{t}");
    assert_eq!(p[0].final_version, "3.4.8.1");
    assert!(
        p[0].firmware_url
            .as_deref()
            .unwrap()
            .ends_with("/450HD.img")
    );
    // Corrupt in transit: CRC error, no burn, old firmware, config still applied.
    assert_eq!(p[1].outcome, Phase::Provisioned, "{t}");
    assert_eq!((p[1].crc_errors, p[1].burns), (1, 0), "{t}");
    assert_eq!(p[1].final_version, "2.2.8.61");
    assert!(
        p[1].errors.iter().any(|e| e.contains("CRC Error")),
        "{:?}",
        p[1].errors
    );
    // Wrong-model check and a config for another model: both rejected.
    assert_eq!(p[2].outcome, Phase::ConfigRejected, "{t}");
    assert_eq!(p[4].outcome, Phase::ConfigRejected, "{t}");
    assert!(
        p[4].errors.iter().any(|e| e.contains("system/type=445HD")),
        "{:?}",
        p[4].errors
    );
    // Power loss while burning: bricked; without DHCP there is no 66/67 to recover from.
    assert_eq!(p[3].outcome, Phase::Bricked, "{t}");
    assert_eq!(p[3].power_losses, 1);

    // The header check used Range (nginx answered 206 with 1024 bytes) and the 2.x UA.
    let ranged = lines_with(&log, "\"bytes=0-1023\"");
    assert!(ranged.iter().any(|l| l.contains(" 206 1024 ")), "{log}");
    assert!(
        log.contains(&format!(
            "AUDC-IPPhone/2.2.8.61 (450HD; {})",
            macs[0].to_ascii_uppercase()
        )),
        "2.x User-Agent with the uppercase MAC: {log}"
    );
    assert!(
        log.contains(&format!("GET /{}.cfg", macs[0])),
        "lowercase MAC in the file name: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftp_fleet_against_vsftpd() {
    let fleet = Fleet::generate(
        3,
        &["450HD"],
        Family::Gen2,
        "00:90:8f:a3:00:01".parse().unwrap(),
    )
    .configure(fast);
    let macs: Vec<String> = fleet.specs.iter().map(|p| p.mac_in_names()).collect();
    let store = store_450(&macs);
    let work = TempStore::new();
    let port = free_port();
    let pasv = 21000 + (std::process::id() % 400) as u16 * 20;
    let (vsftpd, xfer) = start_vsftpd(work.path(), store.path(), port, pasv);

    let ip0 = first_ip();
    // A directory URL: both default names (<model>.img, <mac>.cfg).
    let target = SimTarget::static_url(&format!("ftp://127.0.0.1:{port}/"), ip0);
    let report = fleet.run(target, None).await.unwrap();
    let log = std::fs::read_to_string(&xfer).unwrap_or_default();
    assert!(
        report.all_provisioned(),
        "{}\n{}\n{log}",
        report.table(),
        vsftpd.log_text()
    );
    for (i, p) in report.phones.iter().enumerate() {
        assert_eq!(p.final_version, "3.4.8.1");
        assert_eq!(p.burns, 1);
        assert_eq!(
            p.config_url.as_deref(),
            Some(format!("ftp://127.0.0.1:{port}/{}.cfg", macs[i]).as_str())
        );
        // vsftpd's transfer log names the phone's own address for each file.
        let ip = Ipv4Addr::from(u32::from(ip0) + i as u32).to_string();
        let mine = lines_with(&log, &format!(" {ip} "));
        assert!(
            mine.iter()
                .any(|l| l.contains(&format!("{} ", 2 * MB)) && l.contains("450HD.img")),
            "{ip}: {log}"
        );
        assert!(
            mine.iter().any(|l| l.contains(&format!("{}.cfg", macs[i]))),
            "{ip}: {log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_fleet_against_tftpd_hpa() {
    let fleet = Fleet::generate(
        3,
        &["450HD"],
        Family::Uc,
        "00:90:8f:a4:00:01".parse().unwrap(),
    )
    .configure(fast);
    let macs: Vec<String> = fleet.specs.iter().map(|p| p.mac_in_names()).collect();
    let store = store_450(&macs);
    let work = TempStore::new();
    let port = free_udp_port();
    let _tftpd = start_tftpd(work.path(), store.path(), Ipv4Addr::LOCALHOST, port);

    // No port in the URL: the phones use --tftp-port, as with option 66 holding a host.
    let mut target = SimTarget::static_url("tftp://127.0.0.1/450HD.img;<MAC>.cfg", first_ip());
    target.tftp_port = port;
    target.tftp.timeout = Duration::from_millis(500);
    let report = fleet.run(target, None).await.unwrap();
    assert!(report.all_provisioned(), "{}", report.table());
    for p in &report.phones {
        assert_eq!(p.final_version, "3.4.8.1");
        assert_eq!((p.burns, p.firmware_checks), (1, 3));
        // Header checks stop after two 1428-byte blocks (ERROR 0), then one full image.
        assert_eq!(
            p.firmware_bytes,
            2 * MB + 3 * 2 * 1428,
            "{}",
            report.table()
        );
    }
}

/// Rewrites the phone's config the first time it reports `running` (waiting for its
/// periodic check), so the next check sees a changed config.
struct ChangeConfigWhenRunning {
    path: std::path::PathBuf,
    done: std::sync::atomic::AtomicBool,
}

impl provbox::sim::ProgressSink for ChangeConfigWhenRunning {
    fn update(&self, u: &provbox::sim::PhoneUpdate) {
        if u.phase == Phase::Running && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::fs::write(
                &self.path,
                b"system/type=450HD\nvoip/line/0/auth_name=changed\n",
            )
            .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_rechecks_pick_up_a_changed_config_over_a_slow_link() {
    let fleet = Fleet::generate(
        1,
        &["450HD"],
        Family::Uc,
        "00:90:8f:a5:00:01".parse().unwrap(),
    )
    .configure(fast)
    .configure(|p| {
        p.config_reboot = false;
        p.timings.rechecks = 2;
        p.timings.recheck_period = Some(Duration::from_millis(100));
        p.faults.slow = Some(8 * MB);
    });
    let mac = fleet.specs[0].mac_in_names();
    let store = store_450(std::slice::from_ref(&mac));
    let work = TempStore::new();
    let port = free_port();
    let (_nginx, access) = start_nginx(work.path(), store.path(), Ipv4Addr::LOCALHOST, port, None);
    let sink = std::sync::Arc::new(ChangeConfigWhenRunning {
        path: store.path().join(format!("{mac}.cfg")),
        done: std::sync::atomic::AtomicBool::new(false),
    });
    let target = SimTarget::static_url(
        &format!("https://127.0.0.1:{port}/450HD.img;<MAC>.cfg"),
        first_ip(),
    );
    let report = fleet.run(target, Some(sink)).await.unwrap();
    let p = &report.phones[0];
    let log = std::fs::read_to_string(&access).unwrap();
    assert!(report.all_provisioned(), "{}\n{log}", report.table());
    // Boot 1: check + download + burn. Boot 2: check + config. Then two periodic
    // checks without DHCP; the first applies the changed config, the second finds
    // nothing new.
    assert_eq!(
        (
            p.boots,
            p.dhcp_exchanges,
            p.firmware_checks,
            p.configs_applied
        ),
        (2, 2, 4, 2),
        "{:?}",
        p.timeline
    );
    assert_eq!(
        p.timeline
            .iter()
            .filter(|s| s.phase == Phase::Running)
            .count(),
        2
    );
    assert_eq!(
        lines_with(&log, &format!("GET /{mac}.cfg")).len(),
        3,
        "{log}"
    );
    assert_eq!(p.faults, vec![format!("slow={}B/s", 8 * MB)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirects_are_followed() {
    let fleet = Fleet::generate(
        1,
        &["450HD"],
        Family::Uc,
        "00:90:8f:a6:00:01".parse().unwrap(),
    )
    .configure(fast);
    let mac = fleet.specs[0].mac_in_names();
    let store = store_450(std::slice::from_ref(&mac));
    let work = TempStore::new();
    let port = free_port();
    let (_nginx, access) = start_nginx(work.path(), store.path(), Ipv4Addr::LOCALHOST, port, None);
    let target = SimTarget::static_url(
        &format!("https://127.0.0.1:{port}/moved/450HD.img;<MAC>.cfg"),
        first_ip(),
    );
    let report = fleet.run(target, None).await.unwrap();
    let log = std::fs::read_to_string(&access).unwrap();
    assert!(report.all_provisioned(), "{}\n{log}", report.table());
    assert_eq!(report.phones[0].final_version, "3.4.8.1");
    assert!(
        log.contains("\"GET /moved/450HD.img HTTP/1.1\" 302"),
        "{log}"
    );
    assert!(
        log.contains(&format!("\"GET /moved/{mac}.cfg HTTP/1.1\" 302")),
        "{log}"
    );
    assert!(
        log.contains(&format!("\"GET /{mac}.cfg HTTP/1.1\" 200")),
        "{log}"
    );
}
