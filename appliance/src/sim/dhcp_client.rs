//! The phone's DHCP client (dhcproto for the packets).
//!
//! Two modes:
//! - **Relay** (loopback, no root; DESIGN.md "Phones in tests and demos"): the phone is
//!   its own relay agent. It binds a UDP socket to the gateway address (`giaddr`, e.g.
//!   127.77.0.1) on an ephemeral port and sends to the server with `giaddr` set,
//!   `hops` = 1 and option 82 carrying RFC 8357 sub-option 19 (Relay Agent Source
//!   Port, length 0), so the server answers `giaddr:<that port>`.
//! - **Broadcast** (a real segment, e.g. a network namespace against dnsmasq): from
//!   `0.0.0.0:68` to `255.255.255.255:67` with the broadcast flag set, optionally bound
//!   to one interface. Needs root (port 68). Many phones share port 68 through
//!   `SO_REUSEADDR`; broadcast replies reach every socket and each phone keeps the ones
//!   with its own xid and MAC.
//!
//! What the phone sends (phone-behaviour.md §2.1): option 53, 61 (client id: type 1 +
//! MAC), 57, 60 and 77 with its model (77 raw ASCII, or RFC 3004 length-prefixed as a
//! per-phone setting), and 55 = 1, 3, 6, 12, 15, 28, 42, 43, 66, 67, 120, 160 — without
//! 160 in recovery mode.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use dhcproto::v4::relay::{RelayAgentInformation, RelayCode, RelayInfo, UnknownInfo};
use dhcproto::v4::{self, DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// RFC 8357 Relay Agent Source Port sub-option of option 82.
pub const RAI_RELAY_SOURCE_PORT: u8 = 19;

/// Option 55 of a normal boot (ASSUMED beyond 66, 67, 160; phone-behaviour.md §2.1).
pub const PRL: [u8; 12] = [1, 3, 6, 12, 15, 28, 42, 43, 66, 67, 120, 160];

/// How the phone reaches the DHCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpMode {
    /// Act as its own relay agent from `giaddr` (any address on this host).
    Relay {
        server: SocketAddr,
        giaddr: Ipv4Addr,
    },
    /// Broadcast from port 68 (root), optionally bound to `interface`.
    Broadcast {
        interface: Option<String>,
        server_port: u16,
        client_port: u16,
    },
}

/// Who is asking.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub mac: [u8; 6],
    pub model: String,
    /// Option 77 as RFC 3004 user-class instances (`len` + data) instead of raw ASCII.
    pub user_class_rfc3004: bool,
    /// Recovery mode: option 55 without 160.
    pub recovery: bool,
}

/// Retransmission: `first`, doubling up to `max`, `attempts` sends per message.
#[derive(Debug, Clone)]
pub struct Retransmit {
    pub first: Duration,
    pub max: Duration,
    pub attempts: u32,
}

impl Default for Retransmit {
    fn default() -> Self {
        Retransmit {
            first: Duration::from_secs(2),
            max: Duration::from_secs(16),
            attempts: 6,
        }
    }
}

/// What the phone learned from its ACK.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub server_id: Option<Ipv4Addr>,
    pub subnet_mask: Option<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    pub lease_secs: Option<u32>,
    pub renew_secs: Option<u32>,
    /// Option 66 (or the BOOTP `sname` field when 66 is absent).
    pub opt66: Option<String>,
    /// Option 67 (or the BOOTP `file` field).
    pub opt67: Option<String>,
    /// Option 160, as text.
    pub opt160: Option<String>,
    /// Option 43, raw.
    pub opt43: Option<Vec<u8>>,
    #[serde(skip)]
    pub acked_at: Option<Instant>,
}

impl Lease {
    /// When the phone should renew (T1, default half the lease).
    pub fn renew_due(&self) -> Option<Instant> {
        let t1 = self.renew_secs.or(self.lease_secs.map(|l| l / 2))?;
        Some(self.acked_at? + Duration::from_secs(u64::from(t1)))
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DhcpError {
    #[error("DHCP socket {0}: {1}")]
    Socket(String, String),
    #[error("no DHCPOFFER from {0} after {1} DISCOVERs")]
    NoOffer(String, u32),
    #[error("no DHCPACK from {0} after {1} REQUESTs")]
    NoAck(String, u32),
    #[error("DHCPNAK from {0}: {1}")]
    Nak(String, String),
}

/// A phone's DHCP client.
#[derive(Debug)]
pub struct DhcpClient {
    mode: DhcpMode,
    id: ClientIdentity,
    rt: Retransmit,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches('\0')
        .to_string()
}

impl DhcpClient {
    pub fn new(mode: DhcpMode, id: ClientIdentity, rt: Retransmit) -> Self {
        DhcpClient { mode, id, rt }
    }

    fn server_desc(&self) -> String {
        match &self.mode {
            DhcpMode::Relay { server, giaddr } => format!("{server} (relayed from {giaddr})"),
            DhcpMode::Broadcast {
                interface,
                server_port,
                ..
            } => {
                format!(
                    "255.255.255.255:{server_port}{}",
                    interface
                        .as_ref()
                        .map(|i| format!(" on {i}"))
                        .unwrap_or_default()
                )
            }
        }
    }

    async fn socket(
        &self,
        bind_ip: Option<Ipv4Addr>,
    ) -> Result<(UdpSocket, SocketAddr), DhcpError> {
        let err =
            |what: &str, e: std::io::Error| DhcpError::Socket(what.to_string(), e.to_string());
        match &self.mode {
            DhcpMode::Relay { server, giaddr } => {
                let s = UdpSocket::bind(SocketAddrV4::new(*giaddr, 0))
                    .await
                    .map_err(|e| err(&format!("bind {giaddr}:0"), e))?;
                Ok((s, *server))
            }
            DhcpMode::Broadcast {
                interface,
                server_port,
                client_port,
            } => {
                use socket2::{Domain, Protocol, Socket, Type};
                let local =
                    SocketAddrV4::new(bind_ip.unwrap_or(Ipv4Addr::UNSPECIFIED), *client_port);
                let what = format!("bind {local}");
                let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
                    .map_err(|e| err(&what, e))?;
                s.set_reuse_address(true).map_err(|e| err(&what, e))?;
                s.set_broadcast(true).map_err(|e| err(&what, e))?;
                if let Some(i) = interface {
                    s.bind_device(Some(i.as_bytes()))
                        .map_err(|e| err(&format!("bind to device {i}"), e))?;
                }
                s.bind(&local.into()).map_err(|e| err(&what, e))?;
                s.set_nonblocking(true).map_err(|e| err(&what, e))?;
                let s = UdpSocket::from_std(s.into()).map_err(|e| err(&what, e))?;
                let to = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, *server_port));
                Ok((s, to))
            }
        }
    }

    fn message(&self, xid: u32, mt: MessageType, ciaddr: Ipv4Addr) -> Message {
        let giaddr = match &self.mode {
            DhcpMode::Relay { giaddr, .. } => *giaddr,
            DhcpMode::Broadcast { .. } => Ipv4Addr::UNSPECIFIED,
        };
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(xid, ciaddr, z, z, giaddr, &self.id.mac);
        if matches!(self.mode, DhcpMode::Relay { .. }) {
            m.set_hops(1);
        } else if ciaddr.is_unspecified() {
            m.set_flags(Flags::default().set_broadcast());
        }
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(mt));
        let mut cid = vec![1u8];
        cid.extend_from_slice(&self.id.mac);
        o.insert(DhcpOption::ClientIdentifier(cid));
        o.insert(DhcpOption::MaxMessageSize(1500));
        let model = self.id.model.as_bytes().to_vec();
        o.insert(DhcpOption::ClassIdentifier(model.clone()));
        let uc = if self.id.user_class_rfc3004 {
            let mut v = vec![model.len().min(255) as u8];
            v.extend_from_slice(&model[..model.len().min(255)]);
            v
        } else {
            model
        };
        o.insert(DhcpOption::UserClass(uc));
        let prl = PRL
            .iter()
            .filter(|&&c| !(self.id.recovery && c == 160))
            .map(|&c| OptionCode::from(c))
            .collect();
        o.insert(DhcpOption::ParameterRequestList(prl));
        if matches!(self.mode, DhcpMode::Relay { .. }) {
            let mut rai = RelayAgentInformation::default();
            rai.insert(RelayInfo::Unknown(UnknownInfo::new(
                RelayCode::Unknown(RAI_RELAY_SOURCE_PORT),
                Vec::new(),
            )));
            o.insert(DhcpOption::RelayAgentInformation(rai));
        }
        m
    }

    fn encode(m: &Message) -> Vec<u8> {
        let mut buf = m.to_vec().unwrap_or_default();
        if buf.len() < v4::MIN_PACKET_SIZE {
            buf.resize(v4::MIN_PACKET_SIZE, 0);
        }
        buf
    }

    /// Sends `msg` with retransmissions until `accept` returns `Some` for a reply.
    async fn exchange<T>(
        &self,
        sock: &UdpSocket,
        to: SocketAddr,
        msg: &Message,
        mut accept: impl FnMut(&Message) -> Option<T>,
    ) -> Result<Option<T>, DhcpError> {
        let bytes = Self::encode(msg);
        let mut wait = self.rt.first;
        let mut buf = vec![0u8; 2048];
        for _ in 0..self.rt.attempts.max(1) {
            sock.send_to(&bytes, to)
                .await
                .map_err(|e| DhcpError::Socket(format!("send to {to}"), e.to_string()))?;
            // ±12.5 % jitter so a fleet that started together spreads out (RFC 2131 §4.1).
            let jitter = wait.mul_f64(0.875 + rand::random::<f64>() * 0.25);
            let deadline = Instant::now() + jitter;
            loop {
                let r = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
                let (n, _from) = match r {
                    Err(_) => break,
                    Ok(Err(_)) => continue,
                    Ok(Ok(x)) => x,
                };
                let Ok(reply) = Message::decode(&mut Decoder::new(&buf[..n])) else {
                    continue;
                };
                if reply.opcode() != v4::Opcode::BootReply
                    || reply.xid() != msg.xid()
                    || reply.chaddr().get(..6) != Some(&self.id.mac[..])
                {
                    continue;
                }
                if let Some(t) = accept(&reply) {
                    return Ok(Some(t));
                }
            }
            wait = (wait * 2).min(self.rt.max);
        }
        Ok(None)
    }

    /// DISCOVER → OFFER → REQUEST → ACK. A NAK restarts once from DISCOVER.
    pub async fn acquire(&self) -> Result<Lease, DhcpError> {
        let (sock, to) = self.socket(None).await?;
        let mut last_nak = None;
        for _ in 0..2 {
            let xid: u32 = rand::random();
            let discover = self.message(xid, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
            let offer = self
                .exchange(&sock, to, &discover, |m| {
                    (msg_type(m) == Some(MessageType::Offer)).then(|| m.clone())
                })
                .await?
                .ok_or_else(|| DhcpError::NoOffer(self.server_desc(), self.rt.attempts))?;
            let mut request = self.message(xid, MessageType::Request, Ipv4Addr::UNSPECIFIED);
            request
                .opts_mut()
                .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
            if let Some(DhcpOption::ServerIdentifier(sid)) =
                offer.opts().get(OptionCode::ServerIdentifier)
            {
                request
                    .opts_mut()
                    .insert(DhcpOption::ServerIdentifier(*sid));
            }
            let reply = self
                .exchange(&sock, to, &request, |m| match msg_type(m) {
                    Some(MessageType::Ack) | Some(MessageType::Nak) => Some(m.clone()),
                    _ => None,
                })
                .await?
                .ok_or_else(|| DhcpError::NoAck(self.server_desc(), self.rt.attempts))?;
            if msg_type(&reply) == Some(MessageType::Ack) {
                return Ok(lease_from(&reply));
            }
            last_nak = Some(nak_text(&reply));
        }
        Err(DhcpError::Nak(
            self.server_desc(),
            last_nak.unwrap_or_default(),
        ))
    }

    /// Renews `lease` (REQUEST with `ciaddr`). In relay mode it goes through the relay
    /// path like every other message; in broadcast mode it is unicast from the leased
    /// address to the server.
    pub async fn renew(&self, lease: &Lease) -> Result<Lease, DhcpError> {
        let (sock, mut to) = self.socket(Some(lease.ip)).await?;
        if let (DhcpMode::Broadcast { server_port, .. }, Some(sid)) = (&self.mode, lease.server_id)
        {
            to = SocketAddr::V4(SocketAddrV4::new(sid, *server_port));
        }
        let xid: u32 = rand::random();
        let request = self.message(xid, MessageType::Request, lease.ip);
        let reply = self
            .exchange(&sock, to, &request, |m| match msg_type(m) {
                Some(MessageType::Ack) | Some(MessageType::Nak) => Some(m.clone()),
                _ => None,
            })
            .await?
            .ok_or_else(|| DhcpError::NoAck(self.server_desc(), self.rt.attempts))?;
        if msg_type(&reply) == Some(MessageType::Ack) {
            Ok(lease_from(&reply))
        } else {
            Err(DhcpError::Nak(self.server_desc(), nak_text(&reply)))
        }
    }
}

/// Decodes a DHCP message. dhcproto 0.15 has `debug_assert!`s and an unchecked
/// subtraction on option lengths (options 81, 94, 52…), so a malformed reply panics
/// in debug builds; catch that so a bad packet is dropped, not the phone.
pub fn decode(data: &[u8]) -> Option<Message> {
    std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(data)).ok())
        .ok()
        .flatten()
}

fn msg_type(m: &Message) -> Option<MessageType> {
    match m.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(t)) => Some(*t),
        _ => None,
    }
}

fn nak_text(m: &Message) -> String {
    match m.opts().get(OptionCode::Message) {
        Some(DhcpOption::Message(s)) => s.clone(),
        _ => "no reason given".into(),
    }
}

/// Pulls what a phone uses out of an ACK.
pub fn lease_from(m: &Message) -> Lease {
    let o = m.opts();
    let bytes = |code: u8| match o.get(OptionCode::from(code)) {
        Some(DhcpOption::TFTPServerName(b))
        | Some(DhcpOption::BootfileName(b))
        | Some(DhcpOption::VendorExtensions(b)) => Some(b.clone()),
        Some(DhcpOption::Unknown(u)) => Some(u.data().to_vec()),
        _ => None,
    };
    let sname = m.sname().map(text).filter(|s| !s.is_empty());
    let fname = m.fname().map(text).filter(|s| !s.is_empty());
    Lease {
        ip: m.yiaddr(),
        server_id: match o.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        },
        subnet_mask: match o.get(OptionCode::SubnetMask) {
            Some(DhcpOption::SubnetMask(ip)) => Some(*ip),
            _ => None,
        },
        router: match o.get(OptionCode::Router) {
            Some(DhcpOption::Router(v)) => v.first().copied(),
            _ => None,
        },
        lease_secs: match o.get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(s)) => Some(*s),
            _ => None,
        },
        renew_secs: match o.get(OptionCode::Renewal) {
            Some(DhcpOption::Renewal(s)) => Some(*s),
            _ => None,
        },
        opt66: bytes(66).map(|b| text(&b)).or(sname),
        opt67: bytes(67).map(|b| text(&b)).or(fname),
        opt160: bytes(160).map(|b| text(&b)),
        opt43: bytes(43),
        acked_at: Some(Instant::now()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn client(mode: DhcpMode, recovery: bool, rfc3004: bool) -> DhcpClient {
        DhcpClient::new(
            mode,
            ClientIdentity {
                mac: [0, 0x90, 0x8f, 1, 2, 3],
                model: "450HD".into(),
                user_class_rfc3004: rfc3004,
                recovery,
            },
            Retransmit::default(),
        )
    }

    #[test]
    fn discover_carries_phone_options_and_relay_info() {
        let relay = DhcpMode::Relay {
            server: "127.0.0.1:6767".parse().unwrap(),
            giaddr: Ipv4Addr::new(127, 77, 0, 1),
        };
        let c = client(relay, false, false);
        let bytes = DhcpClient::encode(&c.message(7, MessageType::Discover, Ipv4Addr::UNSPECIFIED));
        assert!(bytes.len() >= 300);
        let m = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(m.giaddr(), Ipv4Addr::new(127, 77, 0, 1));
        assert_eq!(m.hops(), 1);
        assert!(!m.flags().broadcast());
        assert_eq!(
            m.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"450HD".to_vec()))
        );
        assert_eq!(
            m.opts().get(OptionCode::UserClass),
            Some(&DhcpOption::UserClass(b"450HD".to_vec()))
        );
        let Some(DhcpOption::ParameterRequestList(prl)) =
            m.opts().get(OptionCode::ParameterRequestList)
        else {
            panic!()
        };
        let prl: Vec<u8> = prl.iter().map(|c| u8::from(*c)).collect();
        assert_eq!(prl, PRL.to_vec());
        let Some(DhcpOption::RelayAgentInformation(rai)) =
            m.opts().get(OptionCode::RelayAgentInformation)
        else {
            panic!()
        };
        assert!(rai.get(RelayCode::Unknown(19)).is_some());
        // The raw bytes carry sub-option 19 with length 0, last before End.
        let tail: Vec<u8> = bytes
            .iter()
            .rev()
            .skip_while(|&&b| b == 0)
            .copied()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        assert!(
            tail.ends_with(&[82, 2, 19, 0, 255]),
            "{:?}",
            &tail[tail.len() - 8..]
        );
    }

    #[test]
    fn recovery_and_rfc3004_and_broadcast_flag() {
        let bc = DhcpMode::Broadcast {
            interface: None,
            server_port: 67,
            client_port: 68,
        };
        let c = client(bc, true, true);
        let m = Message::decode(&mut Decoder::new(&DhcpClient::encode(&c.message(
            9,
            MessageType::Discover,
            Ipv4Addr::UNSPECIFIED,
        ))))
        .unwrap();
        assert!(m.flags().broadcast());
        assert_eq!(m.giaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            m.opts().get(OptionCode::UserClass),
            Some(&DhcpOption::UserClass(b"\x05450HD".to_vec()))
        );
        let Some(DhcpOption::ParameterRequestList(prl)) =
            m.opts().get(OptionCode::ParameterRequestList)
        else {
            panic!()
        };
        assert!(!prl.iter().any(|c| u8::from(*c) == 160));
        assert!(m.opts().get(OptionCode::RelayAgentInformation).is_none());
    }

    #[test]
    fn lease_reads_160_66_67_and_bootp_fields() {
        let mut m = Message::new_with_id(
            1,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(127, 77, 0, 9),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[0, 0x90, 0x8f, 1, 2, 3],
        );
        m.set_opcode(v4::Opcode::BootReply);
        m.set_fname_str("445HD.img");
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(MessageType::Ack));
        o.insert(DhcpOption::TFTPServerName(b"127.0.0.1".to_vec()));
        o.insert(DhcpOption::Unknown(v4::UnknownOption::new(
            OptionCode::from(160u8),
            b"https://h/;<MAC>.cfg".to_vec(),
        )));
        let bytes = m.to_vec().unwrap();
        let back = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        let l = lease_from(&back);
        assert_eq!(l.ip, Ipv4Addr::new(127, 77, 0, 9));
        assert_eq!(l.opt66.as_deref(), Some("127.0.0.1"));
        assert_eq!(l.opt67.as_deref(), Some("445HD.img"));
        assert_eq!(l.opt160.as_deref(), Some("https://h/;<MAC>.cfg"));
    }
}
