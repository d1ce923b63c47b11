//! DHCP over loopback without root, the way simulated phones talk (relay mode,
//! DESIGN.md): the server on 127.0.0.1:<ephemeral>, a pool in 127.77.0.0/16, each phone
//! its own relay with RFC 8357 Relay Source Port. Model policies, the 66/67 fallback,
//! reservations, renewals, a restart, pool exhaustion and garbage on the port.

mod dhcp_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use dhcp_support::{GIADDR, Phone, opt_text};
use dhcproto::v4::{MessageType, OptionCode};
use provbox_config::{Config, TemplateVars};
use provbox_protocols::dhcp::DhcpServer;
use provbox_protocols::{EventBus, EventKind};
use provbox_storage::leases::{LeaseDb, LeaseState};
use tokio_util::sync::CancellationToken;

const CONFIG: &str = r#"
[dhcp]
bind = "127.0.0.1:0"
server_ip = "127.0.0.1"
subnet = "127.77.0.0/16"
pool = "127.77.0.10-127.77.0.20"
lease_time = "1h"
provisioning_url = "http://{server}:{http_port}/{model}.img;<MAC>.cfg"

[[dhcp.policy]]
name = "450HD over HTTPS"
match = { model = "450HD", exact = true }
provisioning_url = "https://{server}:{https_port}/450HD.img;<MAC>.cfg"

[[dhcp.policy]]
name = "445HD over TFTP"
match = { vendor_class = "445HD" }
tftp_server = "{server}"
boot_file = "{model}.img"

[[dhcp.reservation]]
mac = "00:90:8f:00:00:99"
ip = "127.77.0.50"
"#;

struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    bus: EventBus,
}

async fn start(config: &str, db: &Path) -> Running {
    let cfg = Config::parse(config, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let leases = LeaseDb::open(db).unwrap_or_else(|e| panic!("{e}"));
    let bus = EventBus::default();
    let vars = TemplateVars {
        server: String::new(),
        http_port: 8080,
        https_port: 8443,
        ftp_port: 2121,
        tftp_port: 6969,
    };
    let server =
        DhcpServer::bind(&cfg.dhcp, vars, leases, bus.clone()).unwrap_or_else(|e| panic!("{e}"));
    let addr = server.local_addr();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task =
        tokio::spawn(async move { server.run(token).await.unwrap_or_else(|e| panic!("{e}")) });
    Running {
        addr,
        stop,
        task,
        bus,
    }
}

impl Running {
    async fn shutdown(self) {
        self.stop.cancel();
        self.task.await.unwrap_or_else(|e| panic!("{e}"));
    }
}

fn mac(n: u8) -> [u8; 6] {
    [0, 0x90, 0x8f, 0, 0, n]
}

#[tokio::test]
async fn model_policies_and_fallback() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let s = start(CONFIG, &dir.path().join("leases.redb")).await;
    let mut events = s.bus.subscribe();

    // 450HD asks for 160: the policy's HTTPS URL, ports from the template vars, the
    // phone's <MAC> untouched, plain ASCII without NUL.
    let mut p = Phone::new(s.addr, mac(1), Some("450HD")).await;
    let ack = p
        .dora()
        .await
        .unwrap_or_else(|| panic!("no ACK for the 450HD"));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    let url = opt_text(&ack, 160).unwrap_or_else(|| panic!("no option 160"));
    assert_eq!(url, "https://127.0.0.1:8443/450HD.img;<MAC>.cfg");
    assert!(!url.contains('\0'));
    assert!(
        Ipv4Addr::new(127, 77, 0, 10) <= ack.yiaddr()
            && ack.yiaddr() <= Ipv4Addr::new(127, 77, 0, 20)
    );
    assert_eq!(ack.giaddr(), GIADDR);

    // 445HD: the policy sets only 66/67, so 160 is not sent even though it is asked for.
    let mut p = Phone::new(s.addr, mac(2), Some("AUDC 445HD")).await;
    let ack = p
        .dora()
        .await
        .unwrap_or_else(|| panic!("no ACK for the 445HD"));
    assert_eq!(opt_text(&ack, 66).as_deref(), Some("127.0.0.1"));
    assert_eq!(opt_text(&ack, 67).as_deref(), Some("445HD.img"));
    assert_eq!(opt_text(&ack, 160), None);

    // C450HD: "exact" keeps it out of the 450HD policy; the default URL with {model}.
    let mut p = Phone::new(s.addr, mac(3), Some("C450HD")).await;
    let ack = p
        .dora()
        .await
        .unwrap_or_else(|| panic!("no ACK for the C450HD"));
    assert_eq!(
        opt_text(&ack, 160).as_deref(),
        Some("http://127.0.0.1:8080/C450HD.img;<MAC>.cfg")
    );

    // No model at all: {model} is left to the phone as <MODEL>.
    let mut p = Phone::new(s.addr, mac(4), None).await;
    let ack = p.dora().await.unwrap_or_else(|| panic!("no ACK"));
    assert_eq!(
        opt_text(&ack, 160).as_deref(),
        Some("http://127.0.0.1:8080/<MODEL>.img;<MAC>.cfg")
    );

    // A client that does not ask for 160 does not get it (RFC 7710 used 160 for captive portals).
    let mut p = Phone::new(s.addr, mac(5), Some("450HD")).await;
    p.prl = vec![1, 3, 6];
    let ack = p.dora().await.unwrap_or_else(|| panic!("no ACK"));
    assert_eq!(opt_text(&ack, 160), None);

    // Events: the 450HD's ACK carries model, policy, requested options and what was sent.
    let mut seen = false;
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
        if let EventKind::DhcpAck(i) = &ev.kind
            && i.mac == "00:90:8f:00:00:01"
        {
            assert_eq!(i.model.as_deref(), Some("450HD"));
            assert_eq!(i.policy.as_deref(), Some("450HD over HTTPS"));
            assert!(i.requested_options.contains(&160));
            assert_eq!(
                i.provisioning,
                vec![(
                    160,
                    "https://127.0.0.1:8443/450HD.img;<MAC>.cfg".to_string()
                )]
            );
            assert_eq!(i.giaddr, Some(GIADDR));
            seen = true;
            break;
        }
    }
    assert!(seen, "no DhcpAck event for the 450HD");
    s.shutdown().await;
}

#[tokio::test]
async fn reservation_renewal_and_restart() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = dir.path().join("leases.redb");
    let s = start(CONFIG, &db).await;
    let mut reserved = Phone::new(s.addr, mac(0x99), Some("450HD")).await;
    let ack = reserved.dora().await.unwrap_or_else(|| panic!("no ACK"));
    assert_eq!(ack.yiaddr(), Ipv4Addr::new(127, 77, 0, 50));
    let mut p = Phone::new(s.addr, mac(7), Some("440HD")).await;
    let first = p.dora().await.unwrap_or_else(|| panic!("no ACK")).yiaddr();
    // Renewal (ciaddr, no 50/54): the same address, through the relay.
    let renew = p.message(MessageType::Request, first, None, None);
    let (ack, len) = p
        .exchange(renew, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no renewal ACK"));
    assert_eq!(
        (ack.opts().msg_type(), ack.yiaddr()),
        (Some(MessageType::Ack), first)
    );
    assert!(
        len >= 300,
        "replies are padded to the BOOTP minimum, got {len}"
    );
    // Another MAC asking for that address (INIT-REBOOT) is refused.
    let mut thief = Phone::new(s.addr, mac(8), None).await;
    let req = thief.message(
        MessageType::Request,
        Ipv4Addr::UNSPECIFIED,
        Some(first),
        None,
    );
    let (nak, _) = thief
        .exchange(req, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no NAK"));
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    s.shutdown().await;

    // The lease table is readable by the rest of the appliance.
    let leases = LeaseDb::open(&db).unwrap_or_else(|e| panic!("{e}"));
    let l = leases
        .by_ip(first)
        .unwrap_or_else(|| panic!("lease of {first} missing"));
    assert_eq!(
        (l.mac.0, l.state, l.model.as_deref()),
        (mac(7), LeaseState::Bound, Some("440HD"))
    );
    drop(leases);

    // After a restart the MAC keeps its address: INIT-REBOOT is acknowledged, and a
    // fresh DISCOVER is offered the same address.
    let s = start(CONFIG, &db).await;
    p.server = s.addr;
    let req = p.message(
        MessageType::Request,
        Ipv4Addr::UNSPECIFIED,
        Some(first),
        None,
    );
    let (ack, _) = p
        .exchange(req, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no ACK after restart"));
    assert_eq!(
        (ack.opts().msg_type(), ack.yiaddr()),
        (Some(MessageType::Ack), first)
    );
    let offer = p
        .discover()
        .await
        .unwrap_or_else(|| panic!("no OFFER after restart"));
    assert_eq!(offer.yiaddr(), first);
    // RELEASE, then the address comes back to the same MAC.
    let rel = p.message(MessageType::Release, first, None, Some(Ipv4Addr::LOCALHOST));
    p.sock
        .send_to(&rel, p.server)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let again = p
        .dora()
        .await
        .unwrap_or_else(|| panic!("no ACK after release"));
    assert_eq!(again.yiaddr(), first);
    s.shutdown().await;
}

#[tokio::test]
async fn exhaustion_keeps_existing_leases() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let small = CONFIG.replace("127.77.0.10-127.77.0.20", "127.77.0.10-127.77.0.11");
    let s = start(&small, &dir.path().join("leases.redb")).await;
    let mut a = Phone::new(s.addr, mac(1), None).await;
    let mut b = Phone::new(s.addr, mac(2), None).await;
    let ia = a.dora().await.unwrap_or_else(|| panic!("no ACK")).yiaddr();
    b.dora().await.unwrap_or_else(|| panic!("no ACK"));
    let mut c = Phone::new(s.addr, mac(3), None).await;
    assert!(
        c.discover().await.is_none(),
        "an OFFER from an exhausted pool"
    );
    let renew = a.message(MessageType::Request, ia, None, None);
    let (ack, _) = a
        .exchange(renew, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no renewal ACK"));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    s.shutdown().await;
}

#[tokio::test]
async fn garbage_then_a_valid_client() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let s = start(CONFIG, &dir.path().join("leases.redb")).await;
    let mut p = Phone::new(s.addr, mac(1), Some("450HD")).await;
    let good = p.message(MessageType::Discover, Ipv4Addr::UNSPECIFIED, None, None);
    let mut garbage: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0u8; 0],
        good[..100].to_vec(),
        good[..good.len() - 3].to_vec(),
        vec![0xff; 1500],
        vec![0u8; 8000],
    ];
    let mut wrong_op = good.clone();
    wrong_op[0] = 2;
    garbage.push(wrong_op);
    let mut wrong_htype = good.clone();
    wrong_htype[1] = 32;
    garbage.push(wrong_htype);
    // Option 53 with a bad length, and a giant option 55 split in four.
    let mut bad_len = good[..240].to_vec();
    bad_len.extend_from_slice(&[53, 7, 1, 255]);
    garbage.push(bad_len);
    let mut giant = good[..240].to_vec();
    giant.extend_from_slice(&[53, 1, 1]);
    for _ in 0..4 {
        giant.extend_from_slice(&[55, 250]);
        giant.extend(std::iter::repeat_n(6u8, 250));
    }
    giant.push(255);
    garbage.push(giant);
    for (i, g) in garbage.iter().enumerate() {
        for _ in 0..20 {
            p.sock
                .send_to(g, s.addr)
                .await
                .unwrap_or_else(|e| panic!("garbage {i}: {e}"));
        }
    }
    let ack = p
        .dora()
        .await
        .unwrap_or_else(|| panic!("the server stopped serving after garbage"));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert!(ack.opts().get(OptionCode::from(160u8)).is_some());
    s.shutdown().await;
}
