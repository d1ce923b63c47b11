//! The simulator against a peer stack, to prove it speaks the standard protocols and
//! not just provbox's (issue #7 item 4). Needs root: it creates network namespaces.
//!
//! - dnsmasq (DHCP + TFTP) and nginx (HTTPS) in a server namespace; the simulated
//!   phones in a client namespace, as normal broadcast DHCP clients on port 68 that
//!   add their leases to the interface and bind their transfers to them. 450HD phones
//!   get option 160 (HTTPS from nginx), 445HD phones options 66/67 (TFTP from
//!   dnsmasq); a phone that loses power while burning recovers over 66/67.
//! - Kea (DHCP) on the loopback of its own namespace, with the phones in relay mode
//!   (giaddr + RFC 8357 relay source port), the mode provbox's demo uses.
//!
//! The phones run in this test binary re-executed inside the namespace
//! (`ip netns exec … <this binary> --exact child_fleet --ignored`), which keeps the
//! test free of `unsafe` `setns` calls; the child prints its report as JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim_common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use provbox::sim::{Family, Fleet, MacCase, SimTarget};
use serde_json::{Value, json};
use sim_common::*;

const MB: u64 = 1 << 20;
const MARK: &str = "PBSIM-REPORT-JSON:";

/// Runs the phones described by `spec` inside `netns`; returns the report as JSON.
fn run_child(netns: &str, spec: &Value) -> Value {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(exe)
        .args([
            "--exact",
            "child_fleet",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("PBSIM_CHILD", spec.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The harness prints `test child_fleet ... ` before the child's own output.
    let line = stdout
        .lines()
        .find_map(|l| l.find(MARK).map(|i| &l[i + MARK.len()..]));
    match line {
        Some(j) => serde_json::from_str(j).unwrap(),
        None => panic!(
            "child fleet printed no report (status {}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The child side: only does something when the parent set `PBSIM_CHILD`.
#[test]
#[ignore = "run by the other tests in this file, inside a network namespace"]
fn child_fleet() {
    let Ok(spec) = std::env::var("PBSIM_CHILD") else {
        return;
    };
    let spec: Value = serde_json::from_str(&spec).unwrap();
    let s = |k: &str| spec[k].as_str().unwrap().to_string();
    let mut fleet = Fleet::new();
    for p in spec["phones"].as_array().unwrap() {
        let family = if p["family"] == "uc" {
            Family::Uc
        } else {
            Family::Gen2
        };
        let mut ps = provbox::sim::PhoneSpec::new(
            p["mac"].as_str().unwrap().parse().unwrap(),
            p["model"].as_str().unwrap(),
            family,
        );
        ps.timings.burn = Duration::from_millis(200);
        ps.timings.reboot = Duration::from_millis(100);
        ps.timings.retry_backoff = vec![Duration::from_millis(200)];
        ps.timings.power_on_delay = Duration::from_millis(20 * fleet.specs.len() as u64);
        ps.faults.power_loss = p["power_loss"].as_bool().unwrap_or(false);
        ps.user_class_rfc3004 = p["rfc3004"].as_bool().unwrap_or(false);
        if let Some(period_ms) = p["recheck_ms"].as_u64() {
            ps.timings.rechecks = 1;
            ps.timings.recheck_period = Some(Duration::from_millis(period_ms));
        }
        if p["lower"].as_bool().unwrap_or(false) {
            ps.mac_case = MacCase::Lower;
        }
        fleet = fleet.phone(ps);
    }
    let mut target = match s("mode").as_str() {
        "broadcast" => SimTarget::broadcast(Some(s("iface")), true),
        _ => SimTarget::relay(s("server").parse().unwrap(), s("giaddr").parse().unwrap()),
    };
    target.tftp.timeout = Duration::from_millis(500);
    target.time_limit = Duration::from_secs(120);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(fleet.run(target, None)).unwrap();
    println!("{MARK}{}", serde_json::to_string(&report).unwrap());
}

fn phone<'a>(report: &'a Value, mac: &str) -> &'a Value {
    report["phones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["mac"] == mac)
        .unwrap_or_else(|| panic!("no phone {mac} in {report}"))
}

#[test]
fn sim_against_dnsmasq_and_nginx_in_netns() {
    assert!(
        is_root(),
        "this test creates network namespaces: run it as root (CI does)"
    );
    let ns = NetnsPair::new();
    let store = TempStore::new();
    store.image("450HD.img", "450HD", "3.4.8.1", 2 * MB, false);
    store.image("445HD.img", "445HD", "2.2.16.501", MB, false);
    let macs = [
        "00:90:8f:b1:00:01",
        "00:90:8f:b1:00:02",
        "00:90:8f:b1:00:03",
        "00:90:8f:b1:00:04",
    ];
    let bare = |m: &str| m.replace(':', "");
    // 450HD phones (UC): uppercase MAC in the file name; 445HD (2.x): lowercase.
    store.write(
        &format!("{}.cfg", bare(macs[0]).to_uppercase()),
        b"system/type=450HD\nvoip/line/0/auth_name=a\n",
    );
    store.write(
        &format!("{}.cfg", bare(macs[1]).to_uppercase()),
        b"system/type=450HD\nvoip/line/0/auth_name=b\n",
    );
    store.write(
        &format!("{}.cfg", bare(macs[2])),
        b"system/type=445HD\nvoip/line/0/auth_name=c\n",
    );
    store.write(
        &format!("{}.cfg", bare(macs[3])),
        b"system/type=445HD\nvoip/line/0/auth_name=d\n",
    );

    let work = TempStore::new();
    let https_port = 20443;
    let (_nginx, access) = start_nginx(
        work.path(),
        store.path(),
        Ipv4Addr::new(198, 18, 0, 1),
        https_port,
        Some(&ns.srv),
    );
    let leases = work.path().join("dnsmasq.leases");
    // No quotes: on the command line dnsmasq would send them as part of the text.
    let o160 = format!("tag:m450,160,https://198.18.0.1:{https_port}/450HD.img;<MAC>.cfg");
    let mut dnsmasq = spawn(
        "dnsmasq",
        Some(&ns.srv),
        &[
            "/usr/sbin/dnsmasq",
            "-k",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--port=0",
            "--user=root",
            "--log-facility=-",
            "--log-dhcp",
            &format!("--interface={}", ns.srv_if),
            "--bind-interfaces",
            "--no-ping",
            "--dhcp-authoritative",
            "--dhcp-range=198.18.1.10,198.18.1.200,255.255.0.0,1h",
            &format!("--dhcp-leasefile={}", leases.display()),
            "--dhcp-vendorclass=set:m450,450HD",
            "--dhcp-vendorclass=set:m445,445HD",
            &format!("--dhcp-option={o160}"),
            // Every phone also gets 66/67 (recovery reads them; 445HD provisions by them).
            "--dhcp-option=66,198.18.0.1",
            "--dhcp-option=tag:m450,67,450HD.img",
            "--dhcp-option=tag:m445,67,445HD.img",
            "--enable-tftp",
            &format!("--tftp-root={}", store.path().display()),
        ],
        work.path().join("dnsmasq.log"),
    );
    wait_udp(67, Some(&ns.srv), &mut dnsmasq);
    wait_udp(69, Some(&ns.srv), &mut dnsmasq);

    let spec = json!({
        "mode": "broadcast",
        "iface": ns.cli_if,
        "phones": [
            {"mac": macs[0], "model": "450HD", "family": "uc"},
            {"mac": macs[1], "model": "450HD", "family": "uc", "power_loss": true, "rfc3004": true},
            {"mac": macs[2], "model": "445HD", "family": "2.x"},
            {"mac": macs[3], "model": "445HD", "family": "2.x"},
        ]
    });
    let report = run_child(&ns.cli, &spec);
    let dlog = dnsmasq.log_text();
    let alog = std::fs::read_to_string(&access).unwrap_or_default();
    let ctx = format!("{report:#}\n--- dnsmasq\n{dlog}\n--- nginx\n{alog}");
    assert_eq!(report["provisioned"], 4, "{ctx}");

    // 450HD over option 160 → HTTPS from nginx, each phone from its own lease.
    for m in [macs[0], macs[1]] {
        let p = phone(&report, m);
        assert_eq!(p["url_source"], "160", "{ctx}");
        assert_eq!(p["final_version"], "3.4.8.1", "{ctx}");
        let ip = p["ip"].as_str().unwrap();
        assert!(ip.starts_with("198.18.1."), "{ctx}");
        assert!(
            alog.lines()
                .any(|l| l.starts_with(&format!("{ip} ")) && l.contains("AUDC-IPPhone-450HD_UC_")),
            "{ip}: {ctx}"
        );
    }
    // The power-loss phone: bricked, DHCP again without 160, TFTP 66/67 recovery, then
    // back to normal provisioning over 160.
    let p = phone(&report, macs[1]);
    assert_eq!(
        (p["power_losses"].as_u64(), p["recoveries"].as_u64()),
        (Some(1), Some(1)),
        "{ctx}"
    );
    assert!(
        p["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["phase"] == "recovery"
                && s["detail"]
                    .as_str()
                    .unwrap()
                    .starts_with("tftp://198.18.0.1/450HD.img")),
        "{ctx}"
    );
    // 445HD over 66/67 → TFTP from dnsmasq, default config name in lowercase.
    for m in [macs[2], macs[3]] {
        let p = phone(&report, m);
        assert_eq!(p["url_source"], "66/67", "{ctx}");
        assert_eq!(p["firmware_url"], "tftp://198.18.0.1/445HD.img", "{ctx}");
        assert_eq!(
            p["config_url"].as_str().unwrap(),
            format!("tftp://198.18.0.1/{}.cfg", bare(m)),
            "{ctx}"
        );
        assert_eq!(p["final_version"], "2.2.16.501", "{ctx}");
    }

    // dnsmasq saw the phones' options: vendor class = model, 160 requested, and the
    // recovery DISCOVER without 160.
    assert!(
        dlog.contains("vendor class: 450HD") && dlog.contains("vendor class: 445HD"),
        "{dlog}"
    );
    assert!(dlog.contains("user class: 445HD"), "raw option 77: {dlog}");
    // dnsmasq prints option 55 over several lines; the last one ends with 120 and 160
    // in a normal boot, with 120 alone in recovery.
    let prl_ends: Vec<&str> = dlog
        .lines()
        .filter(|l| l.contains("requested options: 120:"))
        .map(str::trim_end)
        .collect();
    assert!(
        prl_ends.iter().any(|l| l.ends_with("120:sip-server, 160")),
        "{dlog}"
    );
    assert!(
        prl_ends.iter().any(|l| l.ends_with("120:sip-server")),
        "recovery DISCOVER without 160: {dlog}"
    );
    for m in macs {
        assert!(
            dlog.contains(&format!("DHCPACK({}) ", ns.srv_if)) && dlog.contains(m),
            "{m}: {dlog}"
        );
    }
    // The lease file dnsmasq wrote moves into provbox: each phone keeps its address.
    assert_addresses_kept(
        "dnsmasq",
        &leases,
        "198.18.0.0/16",
        work.path(),
        &report,
        &macs,
    );
    // The phones removed the addresses they added.
    let addrs = Command::new("ip")
        .args(["-n", &ns.cli, "-4", "-o", "addr"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&addrs.stdout).contains("198.18.1."),
        "{}",
        String::from_utf8_lossy(&addrs.stdout)
    );
}

/// Relay mode (what the demo and provbox's loopback mode use) against ISC Kea: the
/// phones relay from giaddr 127.77.0.1 with RFC 8357 sub-option 19, Kea answers to
/// that source port, and the phones then fetch over HTTPS from their 127.77.1.x leases.
#[test]
fn sim_relay_mode_against_kea() {
    assert!(
        is_root(),
        "this test creates a network namespace: run it as root (CI does)"
    );
    let ns = Netns::new("k");
    let store = TempStore::new();
    store.image("450HD.img", "450HD", "3.4.8.1", MB, false);
    let macs = [
        "00:90:8f:b2:00:01",
        "00:90:8f:b2:00:02",
        "00:90:8f:b2:00:03",
    ];
    for m in macs {
        store.write(
            &format!("{}.cfg", m.replace(':', "").to_uppercase()),
            b"system/type=450HD\nvoip/line/0/auth_name=k\n",
        );
    }
    let work = TempStore::new();
    let https_port = 20444;
    let (_nginx, access) = start_nginx(
        work.path(),
        store.path(),
        Ipv4Addr::LOCALHOST,
        https_port,
        Some(&ns.name),
    );

    let kea_dir = work.sub("kea");
    let conf = json!({ "Dhcp4": {
        "interfaces-config": { "interfaces": ["lo"], "dhcp-socket-type": "udp" },
        // Persisted, so the test can move Kea's own lease file into provbox.
        "lease-database": { "type": "memfile", "persist": true, "lfc-interval": 0, "name": kea_dir.join("leases4.csv") },
        "valid-lifetime": 3600,
        "renew-timer": 1,
        "rebind-timer": 2,
        "option-def": [ { "name": "prov-url", "code": 160, "type": "string", "space": "dhcp4" } ],
        "client-classes": [ {
            "name": "p450",
            "test": "substring(option[60].hex,0,5) == '450HD'",
            "option-data": [ { "name": "prov-url", "data": format!("https://127.0.0.1:{https_port}/450HD.img;<MAC>.cfg") } ]
        } ],
        "subnet4": [ { "subnet": "127.77.0.0/16", "pools": [ { "pool": "127.77.1.10 - 127.77.1.200" } ] } ],
        "loggers": [ { "name": "kea-dhcp4", "severity": "INFO", "output_options": [ { "output": "stdout" } ] } ]
    } });
    let conf_path = kea_dir.join("kea.json");
    std::fs::write(&conf_path, conf.to_string()).unwrap();
    let mut kea = {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name, "/usr/sbin/kea-dhcp4", "-c"])
            .arg(&conf_path);
        c.env("KEA_PIDFILE_DIR", &kea_dir)
            .env("KEA_LOCKFILE_DIR", &kea_dir);
        let log = kea_dir.join("kea.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = c
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Peer {
            name: "kea-dhcp4",
            child,
            log,
        }
    };
    wait_udp(67, Some(&ns.name), &mut kea);

    let spec = json!({
        "mode": "relay",
        "server": "127.0.0.1:67",
        "giaddr": "127.77.0.1",
        // The last phone waits 1.5 s for a periodic check: past T1 (1 s), so it renews
        // its lease first, through the relay path like every other message.
        "phones": macs.iter().enumerate().map(|(i, m)| {
            let mut p = json!({"mac": m, "model": "450HD", "family": "uc"});
            if i == macs.len() - 1 {
                p["recheck_ms"] = json!(1500);
            }
            p
        }).collect::<Vec<_>>(),
    });
    let report = run_child(&ns.name, &spec);
    let alog = std::fs::read_to_string(&access).unwrap_or_default();
    let ctx = format!("{report:#}\n--- kea\n{}\n--- nginx\n{alog}", kea.log_text());
    assert_eq!(report["provisioned"], 3, "{ctx}");
    for m in macs {
        let p = phone(&report, m);
        let ip = p["ip"].as_str().unwrap();
        assert!(ip.starts_with("127.77.1."), "{ctx}");
        assert_eq!(p["final_version"], "3.4.8.1", "{ctx}");
        assert!(
            alog.lines().any(|l| l.starts_with(&format!("{ip} "))),
            "nginx saw {ip}: {ctx}"
        );
    }
    // Kea's memfile moves into provbox: each phone keeps its address.
    let csv = kea_dir.join("leases4.csv");
    assert_addresses_kept("kea", &csv, "127.77.0.0/16", &kea_dir, &report, &macs);
}

/// `provbox import-leases` of a peer's own lease `file` into a fresh state directory
/// under `dir`: every phone of `report` keeps the address the peer gave it.
fn assert_addresses_kept(
    from: &str,
    file: &std::path::Path,
    subnet: &str,
    dir: &std::path::Path,
    report: &Value,
    macs: &[&str],
) {
    let state = dir.join("provbox-state");
    let cfg = dir.join("provbox-import.toml");
    std::fs::write(
        &cfg,
        format!("[state]\ndir = {state:?}\n[dhcp]\nsubnet = \"{subnet}\"\n"),
    )
    .unwrap();
    let (code, text) = provbox_tests::import_leases(&cfg, from, file);
    assert!(code == Some(0) && text.contains("imported"), "{text}");
    let db = provbox_storage::leases::LeaseDb::open(&state.join("leases.redb")).unwrap();
    let lines = std::fs::read_to_string(file).unwrap_or_default();
    for m in macs {
        let ip = phone(report, m)["ip"].as_str().unwrap().to_string();
        let mac: provbox_config::MacAddr = m.parse().unwrap();
        assert_eq!(
            db.by_mac(mac).map(|l| l.ip.to_string()),
            Some(ip),
            "{m}: {lines}"
        );
    }
}
