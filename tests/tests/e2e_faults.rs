//! End-to-end faults (issue #7 item 4): a config made for another model, rejected by
//! the phone and flagged by the tracker; and a power loss while burning, after which
//! the bricked phone asks DHCP only for options 66/67, recovers its image over TFTP,
//! burns it, reboots and provisions normally.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_common;

use e2e_common::*;
use provbox::sim::Phase;
use provbox::tracker::PhoneState;
use provbox_protocols::events::{EventKind, Proto};

const OLD: &str = "3.4.6.604";
const NEW: &str = "3.4.8.198";
const IMAGE: &str = "450HD_3.4.8.198.img";

/// One phone's config says `system/type=445HD` but the phone is a 450HD: the phone
/// still upgrades its firmware, then discards the config; the tracker reads the config
/// it served and shows `config_rejected` with why. Its neighbour, with a right config,
/// provisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_model_config_is_rejected() {
    let lab = Lab::new();
    let (sha, size) = lab.image(IMAGE, "450HD", NEW, 512 * KIB);
    let fleet = fleet(2, "450HD", "00:90:8f:e2:01:01");
    let (bad, good) = (fleet.specs[0].mac, fleet.specs[1].mac);
    let bad_cfg = lab.config_file(bad, "445HD");
    lab.config_file(good, "450HD");
    let bad_cfg_sha = provbox_tests::sha256_file(&lab.store().join(&bad_cfg));
    let app = lab
        .start(|c| c.dhcp.provisioning_url = Some(url_for(Proto::Http, "450HD.img")))
        .await;
    let log = EventLog::start(&app);
    let report = fleet.run(lab.target(&app), None).await.unwrap();

    // The simulator: the firmware was fine, the config was not.
    let b = phone(&report, &bad.to_string());
    assert_eq!(b.outcome, Phase::ConfigRejected, "{}", report.table());
    assert!(!b.provisioned);
    assert_eq!((b.burns, b.crc_errors), (1, 0), "{:?}", b.errors);
    assert_eq!(b.final_version, NEW);
    assert_eq!(b.configs_applied, 0);
    assert!(
        b.errors.iter().any(|e| e.contains("system/type=445HD")),
        "{:?}",
        b.errors
    );
    let g = phone(&report, &good.to_string());
    assert_sim_upgraded(g, OLD, NEW, size);

    // The tracker: delivered, read back, rejected.
    let bad_s = bad.to_string();
    let d = settled(&app, &bad_s, PhoneState::ConfigRejected).await;
    assert_journey(
        &d,
        &[
            PhoneState::FirmwareDownload,
            PhoneState::Burning,
            PhoneState::Rebooted,
            PhoneState::ConfigDownload,
            PhoneState::ConfigRejected,
        ],
    );
    let reason = d.view.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("system/type=445HD")
            && reason.contains("450HD")
            && reason.contains(&bad_cfg),
        "reason: {reason}"
    );
    assert_eq!(d.view.firmware.as_deref(), Some(NEW));
    let receipt = app.tracker().receipt(&bad_s).unwrap();
    assert!(!receipt.provisioned && receipt.state == PhoneState::ConfigRejected);
    // The bus: the config the phone rejected is the one in the store, whole.
    let ip = b.ip.unwrap();
    let cfgs: Vec<Xfer> = log
        .transfers()
        .into_iter()
        .filter(|x| x.peer_ip == ip && x.file == bad_cfg)
        .collect();
    assert!(!cfgs.is_empty());
    assert!(
        cfgs.iter().all(|x| x.whole() == Some(bad_cfg_sha.as_str())),
        "{cfgs:#?}"
    );
    // ... and its image was right.
    assert!(
        log.transfers()
            .iter()
            .any(|x| x.peer_ip == ip && x.file == IMAGE && x.whole() == Some(sha.as_str()))
    );

    let g = assert_appliance_upgraded(
        &app,
        &log,
        &good.to_string(),
        g.ip.unwrap(),
        Proto::Http,
        IMAGE,
        &sha,
        NEW,
    )
    .await;
    assert!(!states(&g).contains(&PhoneState::ConfigRejected));
    app.shutdown().await;
}

/// Two of three phones lose power while burning. Bricked, each asks DHCP for options
/// 66/67 only (no 160 in option 55), gets the default policy's TFTP server and boot
/// file, fetches the image over TFTP from the appliance, burns it and reboots; then it
/// asks for 160 again and provisions over HTTP like its neighbour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_during_burn_recovers_over_tftp() {
    let lab = Lab::new();
    let (sha, size) = lab.image(IMAGE, "450HD", NEW, MIB);
    let fleet = fleet(3, "450HD", "00:90:8f:e2:02:01").configure(|p| {
        p.faults.power_loss = p.mac.0[5] != 2;
    });
    for p in &fleet.specs {
        lab.config_file(p.mac, "450HD");
    }
    let specs = fleet.specs.clone();
    let app = lab
        .start(|c| {
            c.dhcp.provisioning_url = Some(url_for(Proto::Http, "450HD.img"));
            c.dhcp.tftp_server = Some("{server}".into());
            c.dhcp.boot_file = Some("{model}.img".into());
        })
        .await;
    let log = EventLog::start(&app);
    let report = fleet.run(lab.target(&app), None).await.unwrap();
    assert!(report.all_provisioned(), "{}", report.table());

    for spec in &specs {
        let mac = spec.mac.to_string();
        let p = phone(&report, &mac);
        assert_sim_upgraded(p, OLD, NEW, size);
        let ip = p.ip.unwrap();
        let d = settled(&app, &mac, PhoneState::Provisioned).await;
        assert_eq!(d.view.firmware.as_deref(), Some(NEW), "{mac}");
        assert!(!d.view.update_pending);
        let whole: Vec<Xfer> = log
            .transfers()
            .into_iter()
            .filter(|x| x.peer_ip == ip && x.file == IMAGE && x.whole().is_some())
            .collect();
        assert!(
            whole.iter().all(|x| x.whole() == Some(sha.as_str())),
            "{whole:#?}"
        );
        let asks = log.requested_options(&mac);
        if !spec.faults.power_loss {
            assert_eq!((p.power_losses, p.recoveries), (0, 0));
            assert_journey(&d, &UPGRADE_JOURNEY);
            assert!(!states(&d).contains(&PhoneState::Recovery));
            assert!(asks.iter().all(|a| a.contains(&160)), "{mac}: {asks:?}");
            continue;
        }
        // The simulator: one power loss, one recovery; the recovery burn counts.
        assert_eq!((p.power_losses, p.recoveries), (1, 1), "{:?}", p.errors);
        assert_eq!(p.firmware_downloads, 2);
        let phases: Vec<Phase> = p.timeline.iter().map(|s| s.phase).collect();
        let rec = phases.iter().position(|ph| *ph == Phase::Recovery).unwrap();
        assert!(phases[..rec].contains(&Phase::Burning), "{phases:?}");
        assert!(phases[rec..].contains(&Phase::ConfigDownload), "{phases:?}");

        // DHCP: 160 asked, then only 66/67 (bricked), then 160 again.
        let no160 = asks
            .iter()
            .position(|a| !a.contains(&160) && a.contains(&66) && a.contains(&67))
            .unwrap_or_else(|| panic!("{mac}: never asked for 66/67 alone: {asks:?}"));
        assert!(asks[..no160].iter().any(|a| a.contains(&160)), "{asks:?}");
        assert!(asks[no160..].iter().any(|a| a.contains(&160)), "{asks:?}");
        // The recovery lease carried 66 = the appliance and 67 = the model's image.
        let recovery_ack = log
            .all()
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::DhcpAck(i)
                    if i.mac == mac && !i.provisioning.iter().any(|(c, _)| *c == 160) =>
                {
                    Some(i.provisioning.clone())
                }
                _ => None,
            })
            .next();
        let prov = recovery_ack.unwrap_or_else(|| panic!("{mac}: no ACK to the recovery request"));
        assert!(prov.contains(&(66, "127.0.0.1".into())), "{prov:?}");
        assert!(prov.contains(&(67, "450HD.img".into())), "{prov:?}");

        // The bus: the image whole twice — over HTTP before the power loss, over TFTP
        // in recovery — both with the store's hash.
        let protos: Vec<Proto> = whole.iter().map(|x| x.proto).collect();
        assert_eq!(protos, vec![Proto::Http, Proto::Tftp], "{mac}: {whole:#?}");

        // The tracker: burning → recovery (with why) → rebooted → … → provisioned.
        assert_journey(
            &d,
            &[
                PhoneState::Leased,
                PhoneState::FirmwareCheck,
                PhoneState::FirmwareDownload,
                PhoneState::Burning,
                PhoneState::Recovery,
                PhoneState::Rebooted,
                PhoneState::ConfigDownload,
                PhoneState::Provisioned,
            ],
        );
        let why = d
            .timeline
            .iter()
            .find(|t| t.state == Some(PhoneState::Recovery))
            .map(|t| t.text.clone())
            .unwrap_or_default();
        assert!(why.contains("66/67"), "{mac}: {why}");
        assert!(
            d.timeline.iter().any(|t| t.kind == "recovery_burn"),
            "{mac}: {:#?}",
            d.timeline
        );
        let receipt = app.tracker().receipt(&mac).unwrap();
        assert!(receipt.provisioned);
        assert_eq!(receipt.firmware_after.as_deref(), Some(NEW));
    }
    app.shutdown().await;
}

/// The demo's own config (one option 160 policy per model) must also recover a phone
/// that lost power while burning: in recovery the phone still names its model (option
/// 77), so its model's policy — not the `[dhcp]` defaults — decides options 66/67.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_config_recovers_power_loss() {
    let lab = Lab::new();
    let fleet = fleet(2, "450HD", "00:90:8f:e2:03:01").configure(|p| {
        p.faults.power_loss = p.mac.0[5] == 1;
    });
    provbox::demo::build_store(&lab.store(), &fleet, 256 * KIB).unwrap();
    let mut c = provbox::demo::demo_config(lab.dir.path());
    let pool = lab.config().dhcp;
    (c.dhcp.subnet, c.dhcp.pool, c.dhcp.router) = (pool.subnet, pool.pool, pool.router);
    let app = provbox::Appliance::builder()
        .config(c)
        .loopback()
        .start()
        .await
        .unwrap();
    let report = fleet.run(lab.target(&app), None).await.unwrap();
    let p = phone(&report, "00:90:8f:e2:03:01");
    assert!(p.provisioned, "{}\n{:?}", report.table(), p.errors);
    assert_eq!((p.power_losses, p.recoveries), (1, 1));
    let d = settled(&app, "00:90:8f:e2:03:01", PhoneState::Provisioned).await;
    assert!(
        states(&d).contains(&PhoneState::Recovery),
        "{:?}",
        states(&d)
    );
    app.shutdown().await;
}
