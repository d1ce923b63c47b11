//! DHCPv4 on the wire: a strict, allocation-light parser for requests and the reply
//! encoder.
//!
//! Requests are parsed here rather than with `dhcproto::v4::Message::decode` because
//! dhcproto stops silently at a malformed option and returns `Ok` with what it saw
//! (crates-and-style.md §2): a packet with a bad option length must be *dropped and
//! counted*, not half-read. The walk below checks every option's length against the
//! packet, fixed-size options against their size, concatenates split options (RFC 3396)
//! and borrows everything else from the receive buffer. Replies are built with
//! dhcproto (long-option splitting, option 82 last) and padded to the 300-byte BOOTP
//! minimum, which dhcproto does not do.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use dhcproto::v4::{self, DhcpOption, Encodable, Encoder, MessageType, OptionCode, UnknownOption};
use provbox_config::MacAddr;

/// The BOOTP minimum message size (RFC 951 / RFC 2131 §2); some ROMs drop shorter replies.
pub const MIN_REPLY: usize = 300;
/// Options after the fixed header start here (after the magic cookie).
const OPTIONS_AT: usize = 240;
/// A parameter request list longer than this is an attack or a bug, not a client.
pub const MAX_PRL: usize = 255;

/// Why a datagram was not a usable request. `as_str` is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Truncated,
    BadCookie,
    NotRequest,
    BadHardware,
    BadOptionLength,
    NoMessageType,
    BadMessageType,
    GiantOption,
}

impl Malformed {
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::Truncated => "truncated",
            Malformed::BadCookie => "bad_cookie",
            Malformed::NotRequest => "not_request",
            Malformed::BadHardware => "bad_htype",
            Malformed::BadOptionLength => "bad_option_length",
            Malformed::NoMessageType => "no_message_type",
            Malformed::BadMessageType => "bad_message_type",
            Malformed::GiantOption => "giant_option",
        }
    }
}

/// Option 82 sub-options provbox looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayInfo<'a> {
    /// The whole option, echoed back unchanged (RFC 3046 §2.2).
    pub raw: Cow<'a, [u8]>,
    pub circuit_id: Option<Vec<u8>>,
    pub remote_id: Option<Vec<u8>>,
    /// RFC 8357 Relay Source Port sub-option (19) present: reply to the relay's source port.
    pub source_port: bool,
}

/// A parsed, validated client request (BOOTREQUEST with option 53).
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub msg_type: MessageType,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub hops: u8,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub mac: MacAddr,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    /// Option 55; empty when absent.
    pub prl: Cow<'a, [u8]>,
    pub vendor_class: Option<Cow<'a, [u8]>>,
    pub user_class: Option<Cow<'a, [u8]>>,
    pub hostname: Option<Cow<'a, [u8]>>,
    pub client_id: Option<Cow<'a, [u8]>>,
    pub relay: Option<RelayInfo<'a>>,
}

impl Request<'_> {
    pub fn broadcast_flag(&self) -> bool {
        self.flags & 0x8000 != 0
    }
    /// Whether the client listed `code` in option 55.
    pub fn requested(&self, code: u8) -> bool {
        self.prl.contains(&code)
    }
}

/// Parses and validates one datagram.
pub fn parse(buf: &[u8]) -> Result<Request<'_>, Malformed> {
    if buf.len() < OPTIONS_AT {
        return Err(Malformed::Truncated);
    }
    if buf[0] != 1 {
        return Err(Malformed::NotRequest);
    }
    // Ethernet only: the MAC is the identity everything else keys on.
    if buf[1] != 1 || buf[2] != 6 {
        return Err(Malformed::BadHardware);
    }
    if buf[236..240] != v4::MAGIC {
        return Err(Malformed::BadCookie);
    }
    let be32 = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let mut chaddr = [0u8; 16];
    chaddr.copy_from_slice(&buf[28..44]);
    let mac = MacAddr([
        chaddr[0], chaddr[1], chaddr[2], chaddr[3], chaddr[4], chaddr[5],
    ]);

    let mut msg_type = None;
    let mut requested_ip = None;
    let mut server_id = None;
    let mut prl: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut vendor_class = None;
    let mut user_class = None;
    let mut hostname = None;
    let mut client_id = None;
    let mut relay_raw: Option<Cow<'_, [u8]>> = None;

    // Appends a repeated option's data (RFC 3396) or stores its first part.
    fn put<'a>(slot: &mut Option<Cow<'a, [u8]>>, data: &'a [u8]) {
        match slot {
            Some(v) => v.to_mut().extend_from_slice(data),
            None => *slot = Some(Cow::Borrowed(data)),
        }
    }

    let mut i = OPTIONS_AT;
    let mut prl_slot: Option<Cow<'_, [u8]>> = None;
    let mut ended = false;
    while i < buf.len() {
        let code = buf[i];
        if code == 0 {
            i += 1;
            continue;
        }
        if code == 255 {
            ended = true;
            break;
        }
        let Some(&len) = buf.get(i + 1) else {
            return Err(Malformed::BadOptionLength);
        };
        let start = i + 2;
        let end = start + usize::from(len);
        if end > buf.len() {
            return Err(Malformed::BadOptionLength);
        }
        let data = &buf[start..end];
        let fixed = match code {
            53 => Some(1),
            50 | 54 | 51 => Some(4),
            57 => Some(2),
            _ => None,
        };
        if fixed.is_some_and(|n| n != data.len()) {
            return Err(Malformed::BadOptionLength);
        }
        match code {
            53 => msg_type = Some(data[0]),
            50 => requested_ip = Some(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
            54 => server_id = Some(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
            55 => put(&mut prl_slot, data),
            60 => put(&mut vendor_class, data),
            77 => put(&mut user_class, data),
            12 => put(&mut hostname, data),
            61 => put(&mut client_id, data),
            82 => put(&mut relay_raw, data),
            _ => {}
        }
        i = end;
    }
    // A message without the End option is truncated (RFC 2131 §3: options end with 255);
    // tolerate trailing padding only.
    if !ended {
        return Err(Malformed::Truncated);
    }
    if let Some(p) = prl_slot {
        if p.len() > MAX_PRL {
            return Err(Malformed::GiantOption);
        }
        prl = p;
    }
    let msg_type = match msg_type {
        None => return Err(Malformed::NoMessageType),
        Some(t @ 1..=8) => MessageType::from(t),
        Some(_) => return Err(Malformed::BadMessageType),
    };
    // Only client messages: OFFER (2), ACK (5) and NAK (6) sent to a server port are noise.
    if matches!(
        msg_type,
        MessageType::Offer | MessageType::Ack | MessageType::Nak
    ) {
        return Err(Malformed::BadMessageType);
    }
    let relay = match relay_raw {
        Some(raw) => Some(parse_relay(raw)?),
        None => None,
    };
    Ok(Request {
        msg_type,
        xid: be32(4),
        secs: u16::from_be_bytes([buf[8], buf[9]]),
        flags: u16::from_be_bytes([buf[10], buf[11]]),
        hops: buf[3],
        ciaddr: Ipv4Addr::from(be32(12)),
        giaddr: Ipv4Addr::from(be32(24)),
        chaddr,
        mac,
        requested_ip,
        server_id,
        prl,
        vendor_class,
        user_class,
        hostname,
        client_id,
        relay,
    })
}

/// Option 82 sub-options (RFC 3046): code, length, data, each within the option.
fn parse_relay(raw: Cow<'_, [u8]>) -> Result<RelayInfo<'_>, Malformed> {
    let mut info = RelayInfo {
        raw: Cow::Borrowed(&[]),
        circuit_id: None,
        remote_id: None,
        source_port: false,
    };
    let b: &[u8] = &raw;
    let mut i = 0;
    while i < b.len() {
        let len = usize::from(*b.get(i + 1).ok_or(Malformed::BadOptionLength)?);
        let data = b
            .get(i + 2..i + 2 + len)
            .ok_or(Malformed::BadOptionLength)?;
        match b[i] {
            1 => info.circuit_id = Some(data.to_vec()),
            2 => info.remote_id = Some(data.to_vec()),
            19 => info.source_port = true,
            _ => {}
        }
        i += 2 + len;
    }
    info.raw = raw;
    Ok(info)
}

/// Everything that goes into one reply datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplySpec {
    pub msg_type: MessageType,
    pub yiaddr: Ipv4Addr,
    /// ciaddr is echoed for INFORM and renewals (RFC 2131 table 3).
    pub ciaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    /// Options other than 53, 54 and 82, in any order (encoded in code order).
    pub options: Vec<(u8, Vec<u8>)>,
}

/// Encodes a reply to `req` into `out` (cleared first), padded to [`MIN_REPLY`].
pub fn encode_reply(
    req: &Request<'_>,
    spec: ReplySpec,
    server_ip: Ipv4Addr,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut m = v4::Message::new_with_id(
        req.xid,
        spec.ciaddr,
        spec.yiaddr,
        spec.siaddr,
        req.giaddr,
        &req.chaddr[..6],
    );
    m.set_opcode(v4::Opcode::BootReply)
        .set_htype(v4::HType::Eth)
        .set_hops(0)
        .set_flags(v4::Flags::new(req.flags));
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(spec.msg_type));
    opts.insert(DhcpOption::ServerIdentifier(server_ip));
    for (code, data) in spec.options {
        opts.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(code),
            data,
        )));
    }
    if let Some(r) = &req.relay {
        // Echo option 82 unchanged; dhcproto moves it after every other option.
        opts.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(82u8),
            r.raw.to_vec(),
        )));
    }
    out.clear();
    m.encode(&mut Encoder::new(out))
        .map_err(|e| e.to_string())?;
    if out.len() < MIN_REPLY {
        out.resize(MIN_REPLY, 0);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod build {
    //! Request builders for tests, written with dhcproto so the parser is checked against
    //! an independent encoder.
    use super::*;

    pub fn request(mt: MessageType, mac: [u8; 6], extra: Vec<DhcpOption>) -> Vec<u8> {
        let mut m = v4::Message::new_with_id(
            0x1234_5678,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.opts_mut().insert(DhcpOption::MessageType(mt));
        for o in extra {
            m.opts_mut().insert(o);
        }
        let mut out = Vec::new();
        m.encode(&mut Encoder::new(&mut out))
            .unwrap_or_else(|e| panic!("{e}"));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::request;
    use super::*;
    use dhcproto::Decodable;

    const MAC: [u8; 6] = [0, 0x90, 0x8f, 1, 2, 3];

    #[test]
    fn parses_discover() {
        let b = request(
            MessageType::Discover,
            MAC,
            vec![
                DhcpOption::ClassIdentifier(b"450HD".to_vec()),
                DhcpOption::UserClass(b"450HD".to_vec()),
                DhcpOption::ParameterRequestList(vec![
                    OptionCode::SubnetMask,
                    OptionCode::from(160u8),
                ]),
                DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 0, 2, 9)),
            ],
        );
        let r = parse(&b).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(r.msg_type, MessageType::Discover);
        assert_eq!(r.mac.0, MAC);
        assert!(r.requested(160) && r.requested(1) && !r.requested(66));
        assert_eq!(r.vendor_class.as_deref(), Some(&b"450HD"[..]));
        assert_eq!(r.requested_ip, Some(Ipv4Addr::new(192, 0, 2, 9)));
    }

    #[test]
    fn rejects_bad_input() {
        let good = request(
            MessageType::Discover,
            MAC,
            vec![DhcpOption::ClassIdentifier(b"x".to_vec())],
        );
        assert!(parse(&good).is_ok());
        assert_eq!(parse(&good[..100]).err(), Some(Malformed::Truncated));
        // Cut inside the options: the length of option 60 runs past the end.
        let opt60 = good
            .iter()
            .skip(240)
            .position(|b| *b == 60)
            .map(|p| p + 240)
            .unwrap_or(0);
        assert_eq!(
            parse(&good[..opt60 + 2]).err(),
            Some(Malformed::BadOptionLength)
        );
        let mut b = good.clone();
        b[0] = 2;
        assert_eq!(parse(&b).err(), Some(Malformed::NotRequest));
        let mut b = good.clone();
        b[1] = 6;
        assert_eq!(parse(&b).err(), Some(Malformed::BadHardware));
        let mut b = good.clone();
        b[237] = 0;
        assert_eq!(parse(&b).err(), Some(Malformed::BadCookie));
        // Option 53 with length 2.
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 2, 1, 1, 255]);
        assert_eq!(parse(&b).err(), Some(Malformed::BadOptionLength));
        // No End option.
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 1]);
        assert_eq!(parse(&b).err(), Some(Malformed::Truncated));
        // A giant option 55, split over three instances.
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 1]);
        for _ in 0..3 {
            b.push(55);
            b.push(200);
            b.extend(std::iter::repeat_n(1u8, 200));
        }
        b.push(255);
        assert_eq!(parse(&b).err(), Some(Malformed::GiantOption));
        // Server message types sent to the server port.
        let b = request(MessageType::Offer, MAC, vec![]);
        assert_eq!(parse(&b).err(), Some(Malformed::BadMessageType));
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 99, 255]);
        assert_eq!(parse(&b).err(), Some(Malformed::BadMessageType));
        let mut b = good[..240].to_vec();
        b.push(255);
        assert_eq!(parse(&b).err(), Some(Malformed::NoMessageType));
        // Bad option 82 sub-option length.
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 1, 82, 4, 1, 5, 0, 0, 255]);
        assert_eq!(parse(&b).err(), Some(Malformed::BadOptionLength));
    }

    #[test]
    fn concatenated_options_and_relay() {
        let mut b = request(MessageType::Request, MAC, vec![])[..240].to_vec();
        b.extend_from_slice(&[53, 1, 3, 60, 3, b'4', b'5', b'0', 60, 2, b'H', b'D']);
        b.extend_from_slice(&[82, 9, 1, 3, b'c', b'i', b'd', 19, 2, 0x27, 0x10, 255]);
        let r = parse(&b).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(r.vendor_class.as_deref(), Some(&b"450HD"[..]));
        let relay = r.relay.clone().unwrap_or_else(|| panic!("relay"));
        assert_eq!(relay.circuit_id.as_deref(), Some(&b"cid"[..]));
        assert!(relay.source_port);
    }

    #[test]
    fn reply_is_padded_and_echoes_82() {
        let mut b = request(MessageType::Discover, MAC, vec![])[..240].to_vec();
        b.extend_from_slice(&[53, 1, 1, 82, 5, 1, 3, b'c', b'i', b'd', 255]);
        let req = parse(&b).unwrap_or_else(|e| panic!("{e:?}"));
        let spec = ReplySpec {
            msg_type: MessageType::Offer,
            yiaddr: Ipv4Addr::new(192, 0, 2, 10),
            ciaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::new(192, 0, 2, 1),
            options: vec![
                (160, b"http://192.0.2.1/x.img".to_vec()),
                (1, vec![255, 255, 255, 0]),
            ],
        };
        let mut out = Vec::new();
        encode_reply(&req, spec, Ipv4Addr::new(192, 0, 2, 1), &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.len() >= MIN_REPLY);
        let m = v4::Message::decode(&mut dhcproto::Decoder::new(&out))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.opcode(), v4::Opcode::BootReply);
        assert_eq!(m.yiaddr(), Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(m.chaddr(), &MAC[..]);
        match m.opts().get(OptionCode::from(160u8)) {
            Some(DhcpOption::Unknown(u)) => assert_eq!(u.data(), b"http://192.0.2.1/x.img"),
            other => panic!("option 160: {other:?}"),
        }
        // Option 82 is the last option before End.
        let end = out.iter().rposition(|b| *b == 255).unwrap_or(0);
        assert_eq!(&out[end - 7..end], &[82, 5, 1, 3, b'c', b'i', b'd']);
    }
}
