//! Leases survive `kill -9`: the real server (the `dhcpd` example) serves many phones
//! at once on loopback, is SIGKILLed mid-load, and every lease a phone saw ACKed must be
//! in the lease database; after a restart each of those phones keeps its address.

mod dhcp_support;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dhcp_support::{Phone, dhcpd};
use dhcproto::v4::MessageType;
use provbox_config::MacAddr;
use provbox_storage::leases::{LeaseDb, LeaseState};

/// Kills the server on drop, so a failing test leaves no process behind.
struct Server(std::process::Child, SocketAddr);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(config: &std::path::Path) -> Server {
    let mut child = Command::new(dhcpd())
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start dhcpd: {e}"));
    let out = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("read dhcpd stdout: {e}"));
    let addr: SocketAddr = line
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from dhcpd: {line:?}"));
    Server(child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_leases_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("dhcpd.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\ndir = \"{}\"\n[dhcp]\nbind = \"127.0.0.1:0\"\nserver_ip = \"127.0.0.1\"\nsubnet = \"127.77.0.0/16\"\npool = \"127.77.0.10-127.77.15.250\"\nper_mac_rate = 100\nprovisioning_url = \"http://{{server}}/{{model}}.img;<MAC>.cfg\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let bin = tokio::task::spawn_blocking(dhcpd)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(bin.exists());
    let mut server = tokio::task::spawn_blocking({
        let c = config.clone();
        move || start(&c)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // 32 phones at a time, each running through its own MACs.
    type Record = Arc<Mutex<Vec<([u8; 6], Ipv4Addr)>>>;
    let acked: Record = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..32u8 {
        let (acked, stop, addr) = (acked.clone(), stop.clone(), server.1);
        tasks.push(tokio::spawn(async move {
            for i in 0..100u8 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut p = Phone::new(addr, [0x02, 0x77, 0, t, i, 1], Some("450HD")).await;
                if let Some(ack) = p.dora().await
                    && ack.opts().msg_type() == Some(MessageType::Ack)
                {
                    acked
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((p.mac, ack.yiaddr()));
                }
            }
        }));
    }
    // Kill mid-load: once 400 leases were acknowledged (bounded wait).
    for _ in 0..600 {
        if acked.lock().unwrap_or_else(|e| e.into_inner()).len() >= 400 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.0.kill().unwrap_or_else(|e| panic!("SIGKILL: {e}"));
    server.0.wait().unwrap_or_else(|e| panic!("{e}"));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        acked.len() >= 400,
        "only {} ACKs before the kill",
        acked.len()
    );
    assert!(acked.len() < 3200, "the kill came after the load ended");

    // Every acknowledged lease is in the database.
    let db = LeaseDb::open(&dir.path().join("state/leases.redb")).unwrap_or_else(|e| panic!("{e}"));
    let mut missing = Vec::new();
    for (mac, ip) in &acked {
        match db.by_mac(MacAddr(*mac)) {
            Some(l) if l.ip == *ip && l.state == LeaseState::Bound => {}
            other => missing.push((MacAddr(*mac), *ip, other)),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} ACKed leases lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    drop(db);

    // Restart: the phones keep their addresses (INIT-REBOOT is acknowledged).
    let server = tokio::task::spawn_blocking(move || start(&config))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for (mac, ip) in acked.iter().step_by(acked.len() / 20) {
        let mut p = Phone::new(server.1, *mac, Some("450HD")).await;
        let req = p.message(MessageType::Request, Ipv4Addr::UNSPECIFIED, Some(*ip), None);
        let (ack, _) = p
            .exchange(req, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no reply after restart"));
        assert_eq!(
            (ack.opts().msg_type(), ack.yiaddr()),
            (Some(MessageType::Ack), *ip)
        );
    }
    drop(server);
}
