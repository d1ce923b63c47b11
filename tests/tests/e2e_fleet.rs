//! End-to-end: simulated fleets provisioned by a loopback appliance over each file
//! protocol (issue #7 item 4), and a firmware upgrade of already-provisioned phones
//! followed by their config. Each test checks both sides: the simulator's report, the
//! tracker's journey and version, and the hashes the bus reports for what was sent.
//!
//! `fleet_over_ftp` waits on the FTP server (branch `ftp`): until it is wired into the
//! appliance it fails, saying so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_common;

use std::net::Ipv4Addr;

use e2e_common::*;
use provbox::sim::{Family, Fleet, url::UrlSource};
use provbox::tracker::PhoneState;
use provbox_protocols::events::Proto;

const OLD: &str = "3.4.6.604";
const NEW: &str = "3.4.8.198";
const IMAGE: &str = "450HD_3.4.8.198.img";

/// `n` 450HD phones from `first_mac`, every other one on generic 2.x firmware, all
/// provisioned over `proto` through the default option 160 with the `450HD.img` alias.
async fn fleet_over(proto: Proto, first_mac: &str, n: usize, image_size: u64) {
    let lab = Lab::new();
    let (sha, size) = lab.image(IMAGE, "450HD", NEW, image_size);
    let mut i = 0;
    let fleet = fleet(n, "450HD", first_mac).configure(|p| {
        if i % 2 == 1 {
            p.family = Family::Gen2;
            p.version = Family::Gen2.default_version().into();
        }
        i += 1;
    });
    for p in &fleet.specs {
        lab.config_file(p.mac, "450HD");
    }
    let app = lab
        .start(|c| c.dhcp.provisioning_url = Some(url_for(proto, "450HD.img")))
        .await;
    if proto == Proto::Ftp {
        assert!(
            app.addrs().ftp.is_some(),
            "the FTP server is not running in the appliance (waits on branch `ftp`)"
        );
    }
    let log = EventLog::start(&app);
    let specs = fleet.specs.clone();
    let report = fleet.run(lab.target(&app), None).await.unwrap();
    assert!(report.all_provisioned(), "{}", report.table());
    assert_eq!(report.total, n);

    let leases = log.leases();
    for spec in &specs {
        let mac = spec.mac.to_string();
        let p = phone(&report, &mac);
        assert_sim_upgraded(p, &spec.version, NEW, size);
        assert_eq!(p.url_source, Some(UrlSource::Option160), "{mac}");
        let fw = p.firmware_url.as_deref().unwrap_or_default();
        assert!(
            fw.starts_with(&format!("{proto}://")) && fw.ends_with("/450HD.img"),
            "{mac}: firmware URL {fw}"
        );
        let ip = p.ip.expect("leased");
        assert!(
            leases.iter().any(|(m, l)| *m == mac && *l == ip),
            "{mac}: the bus saw no DHCPACK of {ip}"
        );
        let d = assert_appliance_upgraded(&app, &log, &mac, ip, proto, IMAGE, &sha, NEW).await;
        // The model came from DHCP, and what was there before the upgrade was the
        // phone's own running version (HTTP(S): its User-Agent).
        assert_eq!(d.view.model.as_deref(), Some("450HD"), "{mac}");
        let receipt = app.tracker().receipt(&mac).unwrap();
        assert!(receipt.provisioned && receipt.burns == 1, "{receipt:?}");
        assert_eq!(receipt.firmware_after.as_deref(), Some(NEW));
        if matches!(proto, Proto::Http | Proto::Https) {
            assert_eq!(
                receipt.firmware_before.as_deref(),
                Some(spec.version.as_str()),
                "{mac}"
            );
        }
    }
    // Nothing else was sent: every whole image on the bus went to one of the phones.
    let ips: Vec<Ipv4Addr> = report.phones.iter().filter_map(|p| p.ip).collect();
    for x in log.transfers() {
        assert!(
            ips.iter().any(|ip| x.peer_ip == *ip),
            "a transfer to an address no phone had: {x:?}"
        );
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_over_http() {
    fleet_over(Proto::Http, "00:90:8f:e1:01:01", 6, MIB + 333).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_over_https() {
    fleet_over(Proto::Https, "00:90:8f:e1:02:01", 6, MIB + 333).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_over_tftp() {
    fleet_over(Proto::Tftp, "00:90:8f:e1:03:01", 6, MIB + 333).await;
}

/// Waits on the FTP server (branch `ftp`). The FTP header check is always an early
/// close: the image is larger than loopback's socket buffering, so the server can
/// tell the check from a download (see `early_close_header_check`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_over_ftp() {
    fleet_over(Proto::Ftp, "00:90:8f:e1:04:01", 3, 12 * MIB).await;
}

/// A mixed lab like the demo's: one policy per model (option 60/77), each model over
/// another protocol, every phone to its own model's image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_models_each_get_their_own_image() {
    let lab = Lab::new();
    let models = [
        ("450HD", Proto::Https),
        ("445HD", Proto::Tftp),
        ("430HD", Proto::Http),
    ];
    let mut shas = Vec::new();
    for (m, _) in models {
        let (sha, _) = lab.image(&format!("{m}_{NEW}.img"), m, NEW, 512 * KIB);
        shas.push(sha);
    }
    let names: Vec<&str> = models.iter().map(|(m, _)| *m).collect();
    let mut i = 0;
    let fleet = Fleet::generate(6, &names, Family::Uc, "00:90:8f:e1:05:01".parse().unwrap())
        .configure(|p| {
            fast(p, i, 300);
            i += 1;
        });
    for p in &fleet.specs {
        lab.config_file(p.mac, &p.model);
    }
    let app = lab
        .start(|c| {
            c.dhcp.policies = models
                .iter()
                .map(|(m, proto)| model_policy(m, &url_for(*proto, &format!("{m}.img"))))
                .collect();
        })
        .await;
    let log = EventLog::start(&app);
    let specs = fleet.specs.clone();
    let report = fleet.run(lab.target(&app), None).await.unwrap();
    assert!(report.all_provisioned(), "{}", report.table());
    for spec in &specs {
        let k = models.iter().position(|(m, _)| *m == spec.model).unwrap();
        let mac = spec.mac.to_string();
        let p = phone(&report, &mac);
        assert_sim_upgraded(p, OLD, NEW, 512 * KIB);
        let image = format!("{}_{NEW}.img", spec.model);
        let d = assert_appliance_upgraded(
            &app,
            &log,
            &mac,
            p.ip.unwrap(),
            models[k].1,
            &image,
            &shas[k],
            NEW,
        )
        .await;
        assert_eq!(
            d.view.policy.as_deref(),
            Some(format!("{} e2e", spec.model).as_str())
        );
        // No phone was sent another model's image.
        assert!(
            d.files
                .iter()
                .filter(|f| f.file.ends_with(".img"))
                .all(|f| f.file == image),
            "{mac}: {:#?}",
            d.files
        );
    }
    app.shutdown().await;
}

/// Phones already on the store's firmware only check the header and take their
/// config; then a newer image lands in the store, the tracker marks them out of date,
/// and at their next boot they download it, burn, reboot and take the config again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_upgrade_then_config() {
    const NEXT: &str = "3.4.9.7";
    let lab = Lab::new();
    let (sha_a, _) = lab.image(IMAGE, "450HD", NEW, 768 * KIB);
    let first = "00:90:8f:e1:06:01";
    let make = || fleet(3, "450HD", first).configure(|p| p.version = NEW.into());
    for p in &make().specs {
        lab.config_file(p.mac, "450HD");
    }
    let app = lab
        .start(|c| c.dhcp.provisioning_url = Some(url_for(Proto::Https, "450HD.img")))
        .await;
    let log = EventLog::start(&app);

    // Phase 1: up to date, so no download.
    let specs = make().specs;
    let r1 = make().run(lab.target(&app), None).await.unwrap();
    assert!(r1.all_provisioned(), "{}", r1.table());
    for spec in &specs {
        let mac = spec.mac.to_string();
        let p = phone(&r1, &mac);
        assert_eq!((p.burns, p.firmware_downloads), (0, 0), "{mac}: {p:?}");
        assert_eq!(p.final_version, NEW);
        assert!(p.firmware_checks >= 1);
        let d = settled(&app, &mac, PhoneState::Provisioned).await;
        let seen = states(&d);
        assert!(
            !seen.contains(&PhoneState::FirmwareDownload) && !seen.contains(&PhoneState::Burning),
            "{mac}: {seen:?}"
        );
        assert_eq!(d.view.firmware.as_deref(), Some(NEW));
        assert!(!d.view.update_pending);
    }
    let phase1_end = log.all().last().map_or(0, |e| e.seq);

    // A newer image: the alias now names it, and the tracker says the phones are behind.
    let next_image = format!("450HD_{NEXT}.img");
    let (sha_b, size_b) = lab.image(&next_image, "450HD", NEXT, 900 * KIB);
    assert_ne!(sha_a, sha_b);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    for spec in &specs {
        let mac = spec.mac.to_string();
        loop {
            let v = app.tracker().device(&mac).unwrap().view;
            if v.target_firmware.as_deref() == Some(NEXT) {
                assert!(v.update_pending, "{mac}: {v:?}");
                assert_eq!(v.target_image.as_deref(), Some(next_image.as_str()));
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{mac}: the tracker never saw {next_image} as the target: {v:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    // Phase 2: the same phones boot again.
    let r2 = make().run(lab.target(&app), None).await.unwrap();
    assert!(r2.all_provisioned(), "{}", r2.table());
    for spec in &specs {
        let mac = spec.mac.to_string();
        let p = phone(&r2, &mac);
        assert_sim_upgraded(p, NEW, NEXT, size_b);
        let ip = p.ip.unwrap();
        let d = assert_appliance_upgraded(
            &app,
            &log,
            &mac,
            ip,
            Proto::Https,
            &next_image,
            &sha_b,
            NEXT,
        )
        .await;
        // In phase 2 the journey starts again from the reboot.
        let history = &d.states;
        let p2 = history
            .iter()
            .rposition(|s| {
                s.state == PhoneState::Rebooted
                    && history
                        .iter()
                        .any(|x| x.state == PhoneState::Burning && x.at_ms <= s.at_ms)
            })
            .unwrap_or_else(|| panic!("{mac}: no reboot after a burn: {history:?}"));
        assert_eq!(history.last().unwrap().state, PhoneState::Provisioned);
        assert!(p2 + 1 < history.len());
        let receipt = app.tracker().receipt(&mac).unwrap();
        assert_eq!(receipt.firmware_before.as_deref(), Some(NEW), "{receipt:?}");
        assert_eq!(receipt.firmware_after.as_deref(), Some(NEXT));
        assert_eq!(receipt.burns, 1);
        // On the wire: the whole new image, then (later) the config.
        let xs: Vec<Xfer> = log
            .transfers()
            .into_iter()
            .filter(|x| x.peer_ip == ip)
            .collect();
        let img_done = xs
            .iter()
            .filter(|x| x.file == next_image && x.whole().is_some())
            .filter_map(Xfer::finished_ms)
            .min()
            .unwrap();
        assert!(
            xs.iter().any(|x| x.file.ends_with(".cfg")
                && x.whole().is_some()
                && x.started_ms >= img_done),
            "{mac}: no config fetched after the new image: {xs:#?}"
        );
        // The old image was never downloaded whole in either phase.
        assert!(
            !xs.iter().any(|x| x.file == IMAGE && x.whole().is_some()),
            "{mac}: {xs:#?}"
        );
    }
    assert!(log.all().iter().any(|e| e.seq > phase1_end));
    app.shutdown().await;
}

/// The HTTP header check as an early close (the simulator's default): the phone reads
/// the first KiB of the image and closes. The image is larger than loopback's socket
/// buffering, so the server sees the close as an abort, the tracker as a header read;
/// each phone downloads, burns and provisions once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_close_header_check() {
    let lab = Lab::new();
    let (sha, size) = lab.image(IMAGE, "450HD", NEW, 24 * MIB);
    let fleet = fleet(2, "450HD", "00:90:8f:e1:07:01")
        .configure(|p| p.header_check = provbox::sim::HeaderCheck::EarlyClose);
    for p in &fleet.specs {
        lab.config_file(p.mac, "450HD");
    }
    let app = lab
        .start(|c| c.dhcp.provisioning_url = Some(url_for(Proto::Http, "450HD.img")))
        .await;
    let log = EventLog::start(&app);
    let specs = fleet.specs.clone();
    let report = fleet.run(lab.target(&app), None).await.unwrap();
    assert!(report.all_provisioned(), "{}", report.table());
    for spec in &specs {
        let mac = spec.mac.to_string();
        let p = phone(&report, &mac);
        assert_sim_upgraded(p, OLD, NEW, size);
        let ip = p.ip.unwrap();
        let d =
            assert_appliance_upgraded(&app, &log, &mac, ip, Proto::Http, IMAGE, &sha, NEW).await;
        let xs: Vec<Xfer> = log
            .transfers()
            .into_iter()
            .filter(|x| x.peer_ip == ip && x.file == IMAGE)
            .collect();
        // One download; every other read of the image was a header check, cut short.
        assert_eq!(
            xs.iter().filter(|x| x.whole().is_some()).count(),
            1,
            "{xs:#?}"
        );
        let checks: Vec<&Xfer> = xs.iter().filter(|x| x.whole().is_none()).collect();
        assert_eq!(checks.len() as u32, p.firmware_checks, "{xs:#?}");
        assert!(
            checks
                .iter()
                .all(|x| matches!(x.end, Some(End::Aborted { .. }))),
            "{xs:#?}"
        );
        eprintln!(
            "{mac}: header checks aborted after {:?} bytes; states {:?}",
            checks
                .iter()
                .map(|x| match &x.end {
                    Some(End::Aborted { bytes, .. }) => *bytes,
                    _ => 0,
                })
                .collect::<Vec<_>>(),
            states(&d)
        );
        let receipt = app.tracker().receipt(&mac).unwrap();
        assert_eq!(receipt.burns, 1, "{receipt:#?}");
    }
    app.shutdown().await;
}

/// `[[tftp.quirk]]` follows the model a phone's lease recorded: with a 512-byte cap
/// for the 450HD, every TFTP transfer of these phones, the `<MAC>.cfg` (no model in
/// its name) included, is granted blksize 512 though the phones ask for 1428.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tftp_quirk_follows_the_phones_lease() {
    use provbox_protocols::events::EventKind;
    let lab = Lab::new();
    lab.image(IMAGE, "450HD", NEW, MIB);
    let fleet = fleet(2, "450HD", "00:90:8f:e1:07:01");
    for p in &fleet.specs {
        lab.config_file(p.mac, "450HD");
    }
    let app = lab
        .start(|c| {
            c.dhcp.provisioning_url = Some(url_for(Proto::Tftp, "450HD.img"));
            c.tftp.quirks = vec![provbox_config::TftpQuirk {
                model: "450hd".into(),
                max_blksize: Some(512),
                max_windowsize: None,
                tsize: true,
            }];
        })
        .await;
    let log = EventLog::start(&app);
    let report = fleet.run(lab.target(&app), None).await.unwrap();
    assert!(report.all_provisioned(), "{}", report.table());
    let granted: Vec<(String, u16)> = log
        .all()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TransferStarted {
                proto: Proto::Tftp,
                file,
                tftp: Some(t),
                ..
            } => Some((file.clone(), t.blksize)),
            _ => None,
        })
        .collect();
    assert!(
        granted.iter().any(|(f, _)| f.ends_with(".cfg")) && granted.iter().any(|(f, _)| f == IMAGE),
        "{granted:?}"
    );
    assert!(granted.iter().all(|(_, b)| *b == 512), "{granted:?}");
    app.shutdown().await;
}
