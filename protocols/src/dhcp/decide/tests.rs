//! Unit and property tests of [`decide`](super::decide): every RFC 2131 path, the reply
//! addressing rules, and "no address is ever held by two MACs".

use std::net::Ipv4Addr;

use dhcproto::v4::{self, DhcpOption, Encodable, Encoder, MessageType, OptionCode, UnknownOption};
use proptest::prelude::*;
use provbox_config::{Config, MacAddr, TemplateVars};
use provbox_storage::leases::{LeaseState, LeaseWrite};

use super::*;
use crate::dhcp::options::Prepared;
use crate::dhcp::table::LeaseTable;
use crate::dhcp::wire::{self, ReplySpec};

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn setup(extra: &str) -> (Prepared, LeaseTable) {
    let text = format!(
        r#"
[dhcp]
server_ip = "192.0.2.1"
pool = "192.0.2.10-192.0.2.13"
router = "192.0.2.1"
dns = ["192.0.2.1"]
lease_time = "1h"
provisioning_url = "http://{{server}}/{{model}}.img;<MAC>.cfg"
{extra}
"#
    );
    let c =
        Config::parse(&text, "t.toml", std::path::Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let d = c.dhcp;
    let subnet = d.effective_subnet().unwrap_or_else(|| panic!("subnet"));
    let prep = Prepared::new(&d, SERVER, subnet, TemplateVars::default());
    let table = LeaseTable::new(d.pool, &d.reservations);
    (prep, table)
}

fn mac(n: u8) -> [u8; 6] {
    [0, 0x90, 0x8f, 0, 0, n]
}

#[derive(Default, Clone)]
struct B {
    ciaddr: Option<Ipv4Addr>,
    giaddr: Option<Ipv4Addr>,
    broadcast: bool,
    requested: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
    prl: Vec<u8>,
    vendor: Option<&'static str>,
    relay: Option<Vec<u8>>,
}

fn bytes(t: MessageType, m: [u8; 6], b: &B) -> Vec<u8> {
    let mut msg = v4::Message::new_with_id(
        7,
        b.ciaddr.unwrap_or(Ipv4Addr::UNSPECIFIED),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        b.giaddr.unwrap_or(Ipv4Addr::UNSPECIFIED),
        &m,
    );
    if b.broadcast {
        msg.set_flags(v4::Flags::default().set_broadcast());
    }
    let o = msg.opts_mut();
    o.insert(DhcpOption::MessageType(t));
    if let Some(ip) = b.requested {
        o.insert(DhcpOption::RequestedIpAddress(ip));
    }
    if let Some(ip) = b.server_id {
        o.insert(DhcpOption::ServerIdentifier(ip));
    }
    if !b.prl.is_empty() {
        o.insert(DhcpOption::ParameterRequestList(
            b.prl.iter().map(|c| OptionCode::from(*c)).collect(),
        ));
    }
    if let Some(v) = b.vendor {
        o.insert(DhcpOption::ClassIdentifier(v.as_bytes().to_vec()));
    }
    if let Some(r) = &b.relay {
        o.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(82u8),
            r.clone(),
        )));
    }
    let mut out = Vec::new();
    msg.encode(&mut Encoder::new(&mut out))
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

fn run(
    t: MessageType,
    m: [u8; 6],
    b: &B,
    table: &mut LeaseTable,
    p: &Prepared,
    now: u64,
) -> Decision {
    let raw = bytes(t, m, b);
    let req = wire::parse(&raw).unwrap_or_else(|e| panic!("{e:?}"));
    decide(&req, table, p, now)
}

fn sent(d: &Decision) -> (&ReplySpec, Dest) {
    match &d.action {
        Action::Send { spec, dest } | Action::CommitThenSend { spec, dest, .. } => (spec, *dest),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn opt(s: &ReplySpec, code: u8) -> Option<&[u8]> {
    s.options
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, d)| d.as_slice())
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, n)
}

#[test]
fn dora_renew_rebind_release() {
    let (p, mut t) = setup("");
    let b = B {
        prl: vec![1, 3, 66, 67, 160],
        vendor: Some("450HD"),
        ..B::default()
    };
    let d = run(MessageType::Discover, mac(1), &b, &mut t, &p, 1000);
    let (offer, dest) = sent(&d);
    assert_eq!(offer.msg_type, MessageType::Offer);
    assert_eq!(offer.yiaddr, ip(10));
    assert_eq!(dest, Dest::Hardware(ip(10)));
    assert_eq!(
        opt(offer, 160),
        Some(&b"http://192.0.2.1/450HD.img;<MAC>.cfg"[..])
    );
    assert_eq!(opt(offer, 51), Some(&3600u32.to_be_bytes()[..]));
    assert_eq!(opt(offer, 58), Some(&1800u32.to_be_bytes()[..]));
    assert_eq!(opt(offer, 59), Some(&3150u32.to_be_bytes()[..]));
    assert_eq!(opt(offer, 1), Some(&[255, 255, 255, 0][..]));
    assert_eq!(d.info.model.as_deref(), Some("450HD"));

    // SELECTING.
    let sel = B {
        requested: Some(ip(10)),
        server_id: Some(SERVER),
        ..b.clone()
    };
    let d = run(MessageType::Request, mac(1), &sel, &mut t, &p, 2000);
    match &d.action {
        Action::CommitThenSend { lease, spec, .. } => {
            assert_eq!(spec.msg_type, MessageType::Ack);
            assert_eq!(
                (lease.ip, lease.state, lease.expires_at_ms),
                (ip(10), LeaseState::Bound, 2000 + 3_600_000)
            );
            assert_eq!(lease.model.as_deref(), Some("450HD"));
        }
        other => panic!("{other:?}"),
    }
    // RENEWING: unicast to ciaddr.
    let renew = B {
        ciaddr: Some(ip(10)),
        ..B::default()
    };
    let d = run(MessageType::Request, mac(1), &renew, &mut t, &p, 3000);
    let (ack, dest) = sent(&d);
    assert_eq!(
        (ack.msg_type, ack.yiaddr, ack.ciaddr, dest),
        (MessageType::Ack, ip(10), ip(10), Dest::Unicast(ip(10)))
    );
    // REBINDING from another MAC for the same address: NAK, broadcast.
    let d = run(MessageType::Request, mac(2), &renew, &mut t, &p, 3000);
    let (nak, dest) = sent(&d);
    assert_eq!((nak.msg_type, dest), (MessageType::Nak, Dest::Broadcast));
    // A second client gets another address; the first keeps its own after a restart-like reload.
    let d = run(
        MessageType::Discover,
        mac(2),
        &B::default(),
        &mut t,
        &p,
        3000,
    );
    assert_eq!(sent(&d).0.yiaddr, ip(11));
    // No 160 for a client that did not ask.
    assert_eq!(opt(sent(&d).0, 160), None);
    // RELEASE, then DISCOVER: the same address comes back.
    let d = run(
        MessageType::Release,
        mac(1),
        &B {
            ciaddr: Some(ip(10)),
            server_id: Some(SERVER),
            ..B::default()
        },
        &mut t,
        &p,
        4000,
    );
    assert!(
        matches!(&d.action, Action::Commit(w) if matches!(&w[..], [LeaseWrite::Put(l)] if l.state == LeaseState::Released))
    );
    let d = run(
        MessageType::Discover,
        mac(1),
        &B::default(),
        &mut t,
        &p,
        5000,
    );
    assert_eq!(sent(&d).0.yiaddr, ip(10));
}

#[test]
fn selecting_another_server_frees_the_offer() {
    let (p, mut t) = setup("");
    let d = run(MessageType::Discover, mac(1), &B::default(), &mut t, &p, 0);
    assert_eq!(sent(&d).0.yiaddr, ip(10));
    let other = B {
        requested: Some(ip(10)),
        server_id: Some(ip(99)),
        ..B::default()
    };
    let d = run(MessageType::Request, mac(1), &other, &mut t, &p, 10);
    assert_eq!(d.action, Action::Ignore("other_server"));
    assert!(t.slot(ip(10)).is_none());
}

#[test]
fn init_reboot_rules() {
    let (p, mut t) = setup("");
    // Wrong network: NAK.
    let b = B {
        requested: Some(Ipv4Addr::new(10, 1, 1, 1)),
        ..B::default()
    };
    let d = run(MessageType::Request, mac(1), &b, &mut t, &p, 0);
    assert_eq!(sent(&d).0.msg_type, MessageType::Nak);
    // A free pool address after a server restart: granted.
    let b = B {
        requested: Some(ip(12)),
        ..B::default()
    };
    let d = run(MessageType::Request, mac(1), &b, &mut t, &p, 0);
    assert_eq!(sent(&d).0.msg_type, MessageType::Ack);
    // Outside the pool but inside the subnet: NAK.
    let b = B {
        requested: Some(ip(200)),
        ..B::default()
    };
    let d = run(MessageType::Request, mac(2), &b, &mut t, &p, 0);
    assert_eq!(sent(&d).0.msg_type, MessageType::Nak);
    // Taken by mac 1: NAK for mac 2.
    let b = B {
        requested: Some(ip(12)),
        ..B::default()
    };
    let d = run(MessageType::Request, mac(2), &b, &mut t, &p, 0);
    assert_eq!(sent(&d).0.msg_type, MessageType::Nak);
}

#[test]
fn reservation_and_exhaustion() {
    let (p, mut t) = setup(
        "[[dhcp.reservation]]\nmac = \"00:90:8f:00:00:09\"\nip = \"192.0.2.50\"\nhostname = \"lobby\"\n",
    );
    let d = run(MessageType::Discover, mac(9), &B::default(), &mut t, &p, 0);
    let (offer, _) = sent(&d);
    assert_eq!(offer.yiaddr, ip(50));
    assert_eq!(opt(offer, 12), Some(&b"lobby"[..]));
    // The reserved MAC may not take a pool address.
    let d = run(
        MessageType::Request,
        mac(9),
        &B {
            requested: Some(ip(10)),
            ..B::default()
        },
        &mut t,
        &p,
        0,
    );
    assert_eq!(sent(&d).0.msg_type, MessageType::Nak);
    // Fill the 4-address pool.
    for n in 1..=4 {
        let d = run(MessageType::Discover, mac(n), &B::default(), &mut t, &p, 0);
        let y = sent(&d).0.yiaddr;
        let d = run(
            MessageType::Request,
            mac(n),
            &B {
                requested: Some(y),
                server_id: Some(SERVER),
                ..B::default()
            },
            &mut t,
            &p,
            0,
        );
        assert_eq!(sent(&d).0.msg_type, MessageType::Ack);
    }
    let d = run(MessageType::Discover, mac(5), &B::default(), &mut t, &p, 0);
    assert_eq!(d.action, Action::Ignore("pool_exhausted"));
    // Existing leases still renew.
    let d = run(
        MessageType::Request,
        mac(3),
        &B {
            ciaddr: Some(ip(12)),
            ..B::default()
        },
        &mut t,
        &p,
        10,
    );
    assert_eq!(sent(&d).0.msg_type, MessageType::Ack);
    // After the leases expire, the new MAC gets the longest-expired one.
    let d = run(
        MessageType::Discover,
        mac(5),
        &B::default(),
        &mut t,
        &p,
        3_600_001,
    );
    assert_eq!(sent(&d).0.yiaddr, ip(10));
}

#[test]
fn decline_quarantines() {
    let (p, mut t) = setup("decline_quarantine = \"10m\"");
    let d = run(MessageType::Discover, mac(1), &B::default(), &mut t, &p, 0);
    let y = sent(&d).0.yiaddr;
    run(
        MessageType::Request,
        mac(1),
        &B {
            requested: Some(y),
            server_id: Some(SERVER),
            ..B::default()
        },
        &mut t,
        &p,
        0,
    );
    let d = run(
        MessageType::Decline,
        mac(1),
        &B {
            requested: Some(y),
            server_id: Some(SERVER),
            ..B::default()
        },
        &mut t,
        &p,
        5,
    );
    assert!(
        matches!(&d.action, Action::Commit(w) if matches!(&w[..], [LeaseWrite::Put(l)] if l.state == LeaseState::Declined && l.expires_at_ms == 600_005))
    );
    let d = run(MessageType::Discover, mac(1), &B::default(), &mut t, &p, 10);
    assert_ne!(sent(&d).0.yiaddr, y);
    let d = run(
        MessageType::Discover,
        mac(2),
        &B {
            requested: Some(y),
            ..B::default()
        },
        &mut t,
        &p,
        10,
    );
    assert_ne!(sent(&d).0.yiaddr, y);
}

#[test]
fn inform_and_relay_addressing() {
    let (p, mut t) = setup("");
    let d = run(
        MessageType::Inform,
        mac(1),
        &B {
            ciaddr: Some(ip(77)),
            prl: vec![160],
            ..B::default()
        },
        &mut t,
        &p,
        0,
    );
    let (ack, dest) = sent(&d);
    assert_eq!(
        (ack.msg_type, ack.yiaddr, dest),
        (
            MessageType::Ack,
            Ipv4Addr::UNSPECIFIED,
            Dest::Unicast(ip(77))
        )
    );
    assert_eq!(opt(ack, 51), None);
    assert!(opt(ack, 160).is_some());
    assert!(
        matches!(d.action, Action::Send { .. }),
        "INFORM commits nothing"
    );
    // Relay with RFC 8357 sub-option 19.
    let relayed = B {
        giaddr: Some(ip(2)),
        relay: Some(vec![1, 2, b'p', b'1', 19, 2, 0x4e, 0x20]),
        ..B::default()
    };
    let d = run(MessageType::Discover, mac(2), &relayed, &mut t, &p, 0);
    assert_eq!(
        sent(&d).1,
        Dest::Relay {
            giaddr: ip(2),
            source_port: true
        }
    );
    let relayed = B {
        giaddr: Some(ip(2)),
        broadcast: true,
        ..B::default()
    };
    let d = run(MessageType::Discover, mac(3), &relayed, &mut t, &p, 0);
    assert_eq!(
        sent(&d).1,
        Dest::Relay {
            giaddr: ip(2),
            source_port: false
        }
    );
    // A relay outside the subnet is ignored.
    let far = B {
        giaddr: Some(Ipv4Addr::new(10, 0, 0, 1)),
        ..B::default()
    };
    assert_eq!(
        run(MessageType::Discover, mac(4), &far, &mut t, &p, 0).action,
        Action::Ignore("giaddr_outside_subnet")
    );
    // Broadcast flag.
    let d = run(
        MessageType::Discover,
        mac(5),
        &B {
            broadcast: true,
            ..B::default()
        },
        &mut t,
        &p,
        0,
    );
    assert_eq!(sent(&d).1, Dest::Broadcast);
}

#[test]
fn policies_pick_options() {
    let (p, mut t) = setup(
        r#"
[[dhcp.policy]]
name = "445 tftp"
match = { model = "445HD" }
tftp_server = "{server}"
boot_file = "{model}.img"
[[dhcp.policy]]
name = "forced"
match = { mac_prefix = "00:90:8f:00:00" }
provisioning_url = "https://{server}:{https_port}/{mac}.img"
force_160 = true
[[dhcp.policy.option]]
code = 150
ip = ["192.0.2.1"]
"#,
    );
    let d = run(
        MessageType::Discover,
        mac(1),
        &B {
            vendor: Some("445HD"),
            prl: vec![160],
            ..B::default()
        },
        &mut t,
        &p,
        0,
    );
    let (o, _) = sent(&d);
    assert_eq!(
        (opt(o, 66), opt(o, 67), opt(o, 160)),
        (Some(&b"192.0.2.1"[..]), Some(&b"445HD.img"[..]), None)
    );
    assert_eq!(d.info.policy.as_deref(), Some("445 tftp"));
    let d = run(MessageType::Discover, mac(2), &B::default(), &mut t, &p, 0);
    let (o, _) = sent(&d);
    assert_eq!(
        opt(o, 160),
        Some(&b"https://192.0.2.1:443/00908f000002.img"[..])
    );
    assert_eq!(opt(o, 150), Some(&[192, 0, 2, 1][..]));
    assert_eq!(
        d.info.provisioning,
        vec![(160, "https://192.0.2.1:443/00908f000002.img".to_string())]
    );
}

#[derive(Debug, Clone)]
enum Op {
    Discover(u8),
    Select(u8),
    InitReboot(u8, u8),
    Renew(u8),
    Release(u8),
    Decline(u8),
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6).prop_map(Op::Discover),
        (0u8..6).prop_map(Op::Select),
        (0u8..6, 8u8..16).prop_map(|(m, i)| Op::InitReboot(m, i)),
        (0u8..6).prop_map(Op::Renew),
        (0u8..6).prop_map(Op::Release),
        (0u8..6).prop_map(Op::Decline),
        (0u64..4_000_000).prop_map(Op::Wait),
    ]
}

proptest! {
    /// Whatever clients do, no two MACs ever hold an unexpired ACKed lease on the same
    /// address, and every ACKed address is in the pool or reserved for that MAC.
    #[test]
    fn no_address_is_given_to_two_macs(ops in proptest::collection::vec(op(), 1..120)) {
        let (p, mut t) = setup("[[dhcp.reservation]]\nmac = \"00:90:8f:00:00:05\"\nip = \"192.0.2.60\"\n");
        let mut now = 0u64;
        // What each MAC was last told: (address, lease end).
        let mut held: std::collections::HashMap<u8, (Ipv4Addr, u64)> = Default::default();
        let mut offered: std::collections::HashMap<u8, Ipv4Addr> = Default::default();
        for o in ops {
            now += 1;
            let (m, d) = match o {
                Op::Wait(ms) => { now += ms; continue; }
                Op::Discover(m) => (m, run(MessageType::Discover, mac(m), &B::default(), &mut t, &p, now)),
                Op::Select(m) => {
                    let Some(y) = offered.get(&m).copied() else { continue };
                    (m, run(MessageType::Request, mac(m), &B { requested: Some(y), server_id: Some(SERVER), ..B::default() }, &mut t, &p, now))
                }
                Op::InitReboot(m, i) => (m, run(MessageType::Request, mac(m), &B { requested: Some(ip(i)), ..B::default() }, &mut t, &p, now)),
                Op::Renew(m) => {
                    let Some((y, _)) = held.get(&m).copied() else { continue };
                    (m, run(MessageType::Request, mac(m), &B { ciaddr: Some(y), ..B::default() }, &mut t, &p, now))
                }
                Op::Release(m) => {
                    let Some((y, _)) = held.get(&m).copied() else { continue };
                    let d = run(MessageType::Release, mac(m), &B { ciaddr: Some(y), ..B::default() }, &mut t, &p, now);
                    if matches!(d.action, Action::Commit(_)) { held.remove(&m); }
                    continue;
                }
                Op::Decline(m) => {
                    let Some((y, _)) = held.get(&m).copied() else { continue };
                    let d = run(MessageType::Decline, mac(m), &B { requested: Some(y), ..B::default() }, &mut t, &p, now);
                    if matches!(d.action, Action::Commit(_)) { held.remove(&m); }
                    continue;
                }
            };
            match &d.action {
                Action::Send { spec, .. } if spec.msg_type == MessageType::Offer => { offered.insert(m, spec.yiaddr); }
                Action::CommitThenSend { lease, .. } => {
                    let mine = MacAddr(mac(m));
                    prop_assert_eq!(lease.mac, mine);
                    let reserved = m == 5;
                    prop_assert!(if reserved { lease.ip == ip(60) } else { (10..=13).contains(&lease.ip.octets()[3]) && lease.ip.octets()[..3] == [192, 0, 2] }, "{:?}", lease);
                    for (other, (oip, until)) in &held {
                        prop_assert!(*other == m || *oip != lease.ip || *until <= now, "{} given to {} while {} holds it until {}", lease.ip, m, other, until);
                    }
                    held.insert(m, (lease.ip, lease.expires_at_ms));
                }
                _ => {}
            }
        }
    }
}
