//! Shared by the DHCP integration tests: a simulated phone that acts as its own relay
//! agent (giaddr + RFC 8357 Relay Source Port), the way provbox's simulator talks to a
//! server on loopback without root; and the stand-alone `dhcpd` example binary.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use tokio::net::UdpSocket;

/// The relay address the phones claim (inside the loopback test subnet 127.77.0.0/16).
pub const GIADDR: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 1);

/// A simulated phone: its own UDP socket on the giaddr, so replies reach it.
pub struct Phone {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub mac: [u8; 6],
    /// Options 60 and 77.
    pub model: Option<String>,
    /// Option 55.
    pub prl: Vec<u8>,
    pub xid: u32,
}

impl Phone {
    pub async fn new(server: SocketAddr, mac: [u8; 6], model: Option<&str>) -> Phone {
        let sock = UdpSocket::bind((GIADDR, 0))
            .await
            .unwrap_or_else(|e| panic!("bind {GIADDR}: {e}"));
        Phone {
            sock,
            server,
            mac,
            model: model.map(str::to_string),
            prl: vec![1, 3, 6, 66, 67, 160],
            xid: u32::from(mac[5]) << 8,
        }
    }

    pub fn message(
        &mut self,
        t: MessageType,
        ciaddr: Ipv4Addr,
        requested: Option<Ipv4Addr>,
        server_id: Option<Ipv4Addr>,
    ) -> Vec<u8> {
        self.xid = self.xid.wrapping_add(1);
        let mut m = v4::Message::new_with_id(
            self.xid,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            GIADDR,
            &self.mac,
        );
        m.set_hops(1);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(t));
        o.insert(DhcpOption::ParameterRequestList(
            self.prl.iter().map(|c| OptionCode::from(*c)).collect(),
        ));
        if let Some(model) = &self.model {
            o.insert(DhcpOption::ClassIdentifier(model.as_bytes().to_vec()));
            o.insert(DhcpOption::UserClass(model.as_bytes().to_vec()));
        }
        if let Some(ip) = requested {
            o.insert(DhcpOption::RequestedIpAddress(ip));
        }
        if let Some(ip) = server_id {
            o.insert(DhcpOption::ServerIdentifier(ip));
        }
        // Option 82: circuit id, and sub-option 19 (RFC 8357) so the reply comes to our port.
        o.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(82u8),
            vec![1, 4, b'p', b'o', b'r', b't', 19, 2, 0, 0],
        )));
        let mut out = Vec::new();
        m.encode(&mut Encoder::new(&mut out))
            .unwrap_or_else(|e| panic!("{e}"));
        out
    }

    /// Sends and waits (bounded) for the reply with our xid.
    pub async fn exchange(
        &mut self,
        packet: Vec<u8>,
        wait: Duration,
    ) -> Option<(v4::Message, usize)> {
        // Send errors (a killed server) look like silence to a phone.
        self.sock.send_to(&packet, self.server).await.ok()?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = vec![0u8; 2048];
        loop {
            let r = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf))
                .await
                .ok()?;
            let Ok((n, _)) = r else { continue };
            let Ok(m) = v4::Message::decode(&mut Decoder::new(&buf[..n])) else {
                continue;
            };
            if m.xid() == self.xid {
                return Some((m, n));
            }
        }
    }

    pub async fn discover(&mut self) -> Option<v4::Message> {
        let p = self.message(MessageType::Discover, Ipv4Addr::UNSPECIFIED, None, None);
        self.exchange(p, Duration::from_secs(3))
            .await
            .map(|(m, _)| m)
    }

    /// DISCOVER, then REQUEST (selecting): the ACK or NAK.
    pub async fn dora(&mut self) -> Option<v4::Message> {
        let offer = self.discover().await?;
        if offer.opts().msg_type() != Some(MessageType::Offer) {
            return None;
        }
        let sid = match offer.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => *ip,
            other => panic!("no option 54: {other:?}"),
        };
        let p = self.message(
            MessageType::Request,
            Ipv4Addr::UNSPECIFIED,
            Some(offer.yiaddr()),
            Some(sid),
        );
        self.exchange(p, Duration::from_secs(5))
            .await
            .map(|(m, _)| m)
    }
}

/// An option's payload as text.
pub fn opt_text(m: &v4::Message, code: u8) -> Option<String> {
    match m.opts().get(OptionCode::from(code))? {
        DhcpOption::Unknown(u) => Some(String::from_utf8_lossy(u.data()).into_owned()),
        DhcpOption::TFTPServerName(v) | DhcpOption::BootfileName(v) => {
            Some(String::from_utf8_lossy(v).into_owned())
        }
        other => Some(format!("{other:?}")),
    }
}

/// Builds (incrementally) and returns the `dhcpd` example binary.
pub fn dhcpd() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = std::process::Command::new(cargo)
                .current_dir(&root)
                .args([
                    "build",
                    "-q",
                    "-p",
                    "provbox-protocols",
                    "--example",
                    "dhcpd",
                ])
                .status()
                .unwrap_or_else(|e| panic!("cargo build: {e}"));
            assert!(st.success(), "building the dhcpd example failed");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            target.join("debug/examples/dhcpd")
        })
        .clone()
}
