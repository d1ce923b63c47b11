//! The TFTP wire format: every packet of RFC 1350 plus the OACK of RFC 2347, and the
//! negotiable options of RFC 2348 (blksize), RFC 2349 (timeout, tsize) and RFC 7440
//! (windowsize). Pure and socket-free, shared by the server, the client and the phone
//! simulator.
//!
//! Hand-written rather than taken from async-tftp: its `packet` module is private
//! (`pub(crate)`), and a codec this size is cheaper to own than to fork.
//!
//! Decoding is lenient where real clients are sloppy (option names in any case, an
//! unpaired trailing option string, NUL padding after the last option) and strict
//! where sloppiness would be dangerous (a missing filename or mode terminator, a
//! non-UTF-8 filename).

use std::fmt;

/// Smallest and largest blksize RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
pub const MAX_BLKSIZE: u16 = 65464;
/// The RFC 1350 block size, used when blksize is not negotiated.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Largest windowsize RFC 7440 allows.
pub const MAX_WINDOWSIZE: u16 = 65535;
/// Bytes before the payload of a DATA packet (opcode, block).
pub const DATA_HEADER_LEN: usize = 4;

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// Transfer mode of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Octet,
    /// Lines end in CR LF on the wire, a lone CR is sent as CR NUL (RFC 764).
    Netascii,
    /// Obsolete (RFC 1350 says so); treated as netascii by servers that accept it.
    Mail,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Octet => "octet",
            Mode::Netascii => "netascii",
            Mode::Mail => "mail",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        if s.eq_ignore_ascii_case("octet") {
            Some(Mode::Octet)
        } else if s.eq_ignore_ascii_case("netascii") {
            Some(Mode::Netascii)
        } else if s.eq_ignore_ascii_case("mail") {
            Some(Mode::Mail)
        } else {
            None
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ERROR packet's code (RFC 1350 §5, plus 8 from RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: see the message.
    NotDefined,
    FileNotFound,
    AccessViolation,
    DiskFull,
    IllegalOperation,
    UnknownTid,
    FileExists,
    NoSuchUser,
    /// 8: the client refuses the OACK (RFC 2347); a tsize probe ends this way.
    OptionRefused,
    Other(u16),
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTid => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionRefused => 8,
            ErrorCode::Other(c) => c,
        }
    }

    pub fn from_code(c: u16) -> ErrorCode {
        match c {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTid,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionRefused,
            c => ErrorCode::Other(c),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::NotDefined => "not defined",
            ErrorCode::FileNotFound => "file not found",
            ErrorCode::AccessViolation => "access violation",
            ErrorCode::DiskFull => "disk full",
            ErrorCode::IllegalOperation => "illegal operation",
            ErrorCode::UnknownTid => "unknown transfer id",
            ErrorCode::FileExists => "file exists",
            ErrorCode::NoSuchUser => "no such user",
            ErrorCode::OptionRefused => "option negotiation refused",
            ErrorCode::Other(_) => "unknown code",
        };
        write!(f, "{} ({name})", self.code())
    }
}

/// One option as it appeared on the wire (name as sent, value as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpOption {
    pub name: String,
    pub value: String,
}

impl TftpOption {
    pub fn new(name: impl Into<String>, value: impl ToString) -> Self {
        Self {
            name: name.into(),
            value: value.to_string(),
        }
    }
}

/// An RRQ or WRQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filename: String,
    pub mode: Mode,
    /// Options in the order the client sent them.
    pub options: Vec<TftpOption>,
}

impl Request {
    /// The options this codec understands, parsed (invalid values are left out).
    pub fn known_options(&self) -> Options {
        Options::from_pairs(&self.options)
    }
}

/// A decoded packet. DATA borrows its payload from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request),
    Wrq(Request),
    Data { block: u16, data: &'a [u8] },
    Ack(u16),
    Error { code: ErrorCode, message: String },
    Oack(Vec<TftpOption>),
}

/// Why a datagram is not a TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("datagram of {0} bytes is too short for a TFTP packet")]
    TooShort(usize),
    #[error("unknown TFTP opcode {0}")]
    UnknownOpcode(u16),
    #[error("the {0} is not NUL-terminated")]
    Unterminated(&'static str),
    #[error("the filename is not valid UTF-8")]
    FilenameNotUtf8,
    #[error("the filename is empty")]
    EmptyFilename,
    #[error("unknown transfer mode {0:?}")]
    BadMode(String),
}

impl<'a> Packet<'a> {
    /// Decodes one datagram.
    pub fn decode(buf: &'a [u8]) -> Result<Packet<'a>, PacketError> {
        if buf.len() < 2 {
            return Err(PacketError::TooShort(buf.len()));
        }
        let op = u16::from_be_bytes([buf[0], buf[1]]);
        let body = &buf[2..];
        match op {
            OP_RRQ | OP_WRQ => {
                let req = decode_request(body)?;
                Ok(if op == OP_RRQ {
                    Packet::Rrq(req)
                } else {
                    Packet::Wrq(req)
                })
            }
            OP_DATA => {
                if body.len() < 2 {
                    return Err(PacketError::TooShort(buf.len()));
                }
                Ok(Packet::Data {
                    block: u16::from_be_bytes([body[0], body[1]]),
                    data: &body[2..],
                })
            }
            OP_ACK => {
                if body.len() < 2 {
                    return Err(PacketError::TooShort(buf.len()));
                }
                Ok(Packet::Ack(u16::from_be_bytes([body[0], body[1]])))
            }
            OP_ERROR => {
                if body.len() < 2 {
                    return Err(PacketError::TooShort(buf.len()));
                }
                let code = ErrorCode::from_code(u16::from_be_bytes([body[0], body[1]]));
                // Clients often omit the terminator or pad; take what is there.
                let msg = &body[2..];
                let msg = msg.split(|&b| b == 0).next().unwrap_or(&[]);
                Ok(Packet::Error {
                    code,
                    message: String::from_utf8_lossy(msg).into_owned(),
                })
            }
            OP_OACK => Ok(Packet::Oack(decode_options(body))),
            op => Err(PacketError::UnknownOpcode(op)),
        }
    }

    /// Appends the encoded packet to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Packet::Rrq(r) => encode_request(OP_RRQ, r, out),
            Packet::Wrq(r) => encode_request(OP_WRQ, r, out),
            Packet::Data { block, data } => {
                out.extend_from_slice(&data_header(*block));
                out.extend_from_slice(data);
            }
            Packet::Ack(block) => {
                out.extend_from_slice(&OP_ACK.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => {
                out.extend_from_slice(&OP_ERROR.to_be_bytes());
                out.extend_from_slice(&code.code().to_be_bytes());
                // A NUL inside the message would end it early on the wire.
                out.extend(message.bytes().filter(|&b| b != 0));
                out.push(0);
            }
            Packet::Oack(opts) => {
                out.extend_from_slice(&OP_OACK.to_be_bytes());
                encode_options(opts, out);
            }
        }
    }

    /// The encoded packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }
}

/// The 4-byte header of a DATA packet; the transfer engine reads the payload right
/// behind it so a block is never copied.
pub fn data_header(block: u16) -> [u8; DATA_HEADER_LEN] {
    let [a, b] = OP_DATA.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

/// An encoded ERROR packet.
pub fn error_packet(code: ErrorCode, message: &str) -> Vec<u8> {
    Packet::Error {
        code,
        message: message.to_string(),
    }
    .encode()
}

/// An encoded ACK packet.
pub fn ack_packet(block: u16) -> [u8; 4] {
    let [a, b] = OP_ACK.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

fn take_cstr<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = buf.iter().position(|&b| b == 0)?;
    let s = &buf[..end];
    *buf = &buf[end + 1..];
    Some(s)
}

fn decode_request(mut body: &[u8]) -> Result<Request, PacketError> {
    let name = take_cstr(&mut body).ok_or(PacketError::Unterminated("filename"))?;
    let filename = std::str::from_utf8(name)
        .map_err(|_| PacketError::FilenameNotUtf8)?
        .to_string();
    if filename.is_empty() {
        return Err(PacketError::EmptyFilename);
    }
    let mode = take_cstr(&mut body).ok_or(PacketError::Unterminated("mode"))?;
    let mode_s = String::from_utf8_lossy(mode);
    let mode = Mode::parse(&mode_s).ok_or_else(|| PacketError::BadMode(mode_s.into_owned()))?;
    Ok(Request {
        filename,
        mode,
        options: decode_options(body),
    })
}

fn decode_options(mut body: &[u8]) -> Vec<TftpOption> {
    let mut opts = Vec::new();
    // Bounded by the datagram: each round consumes at least one byte.
    while let Some(name) = take_cstr(&mut body) {
        if name.is_empty() {
            break; // NUL padding
        }
        let Some(value) = take_cstr(&mut body) else {
            break;
        };
        opts.push(TftpOption {
            name: String::from_utf8_lossy(name).into_owned(),
            value: String::from_utf8_lossy(value).into_owned(),
        });
    }
    opts
}

fn encode_request(op: u16, r: &Request, out: &mut Vec<u8>) {
    out.extend_from_slice(&op.to_be_bytes());
    out.extend(r.filename.bytes().filter(|&b| b != 0));
    out.push(0);
    out.extend_from_slice(r.mode.as_str().as_bytes());
    out.push(0);
    encode_options(&r.options, out);
}

fn encode_options(opts: &[TftpOption], out: &mut Vec<u8>) {
    for o in opts {
        out.extend(o.name.bytes().filter(|&b| b != 0));
        out.push(0);
        out.extend(o.value.bytes().filter(|&b| b != 0));
        out.push(0);
    }
}

/// The options this codec understands, typed. Used both ways: what a client asked
/// for and what an OACK granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// RFC 2348, 8..=65464.
    pub blksize: Option<u16>,
    /// RFC 2349, whole seconds 1..=255.
    pub timeout: Option<u8>,
    /// RFC 2349: 0 in an RRQ asks the server for the size.
    pub tsize: Option<u64>,
    /// RFC 7440, 1..=65535.
    pub windowsize: Option<u16>,
}

impl Options {
    /// Parses known options by case-insensitive name. An invalid value leaves the
    /// option out, as if the peer had not sent it (RFC 2347: ignore what you cannot honour).
    pub fn from_pairs(pairs: &[TftpOption]) -> Options {
        let mut o = Options::default();
        for p in pairs {
            let v = p.value.trim();
            if p.name.eq_ignore_ascii_case("blksize") {
                o.blksize = v
                    .parse::<u32>()
                    .ok()
                    .filter(|b| *b >= u32::from(MIN_BLKSIZE))
                    .map(|b| {
                        // Larger than the RFC allows: offer the RFC maximum instead.
                        b.min(u32::from(MAX_BLKSIZE)) as u16
                    });
            } else if p.name.eq_ignore_ascii_case("timeout") {
                o.timeout = v.parse::<u8>().ok().filter(|t| *t >= 1);
            } else if p.name.eq_ignore_ascii_case("tsize") {
                o.tsize = v.parse::<u64>().ok();
            } else if p.name.eq_ignore_ascii_case("windowsize") {
                o.windowsize = v.parse::<u16>().ok().filter(|w| *w >= 1);
            }
        }
        o
    }

    /// Wire pairs in a fixed order (blksize, timeout, tsize, windowsize).
    pub fn to_pairs(&self) -> Vec<TftpOption> {
        let mut v = Vec::new();
        if let Some(b) = self.blksize {
            v.push(TftpOption::new("blksize", b));
        }
        if let Some(t) = self.timeout {
            v.push(TftpOption::new("timeout", t));
        }
        if let Some(t) = self.tsize {
            v.push(TftpOption::new("tsize", t));
        }
        if let Some(w) = self.windowsize {
            v.push(TftpOption::new("windowsize", w));
        }
        v
    }

    pub fn is_empty(&self) -> bool {
        *self == Options::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_a_curl_style_rrq() {
        let raw = b"\x00\x01/cfg1k.cfg\x00octet\x00tsize\x000\x00blksize\x001468\x00";
        let Ok(Packet::Rrq(r)) = Packet::decode(raw) else {
            panic!("not an RRQ")
        };
        assert_eq!(r.filename, "/cfg1k.cfg");
        assert_eq!(r.mode, Mode::Octet);
        let o = r.known_options();
        assert_eq!(o.tsize, Some(0));
        assert_eq!(o.blksize, Some(1468));
        assert_eq!(o.windowsize, None);
    }

    #[test]
    fn options_are_case_insensitive_and_invalid_values_ignored() {
        let raw = b"\x00\x01f\x00NetASCII\x00BLKSIZE\x004\x00Timeout\x000\x00WindowSize\x0016\x00tsize\x00x\x00";
        let Ok(Packet::Rrq(r)) = Packet::decode(raw) else {
            panic!("not an RRQ")
        };
        assert_eq!(r.mode, Mode::Netascii);
        let o = r.known_options();
        assert_eq!(
            o,
            Options {
                blksize: None,
                timeout: None,
                tsize: None,
                windowsize: Some(16)
            }
        );
    }

    #[test]
    fn oversized_blksize_is_offered_the_maximum() {
        let o = Options::from_pairs(&[TftpOption::new("blksize", 100000)]);
        assert_eq!(o.blksize, Some(MAX_BLKSIZE));
    }

    #[test]
    fn lenient_with_padding_and_unpaired_options() {
        let raw = b"\x00\x01f\x00octet\x00blksize\x001024\x00tsize\x00";
        let Ok(Packet::Rrq(r)) = Packet::decode(raw) else {
            panic!("not an RRQ")
        };
        assert_eq!(r.options.len(), 1);
        let raw = b"\x00\x01f\x00octet\x00\x00\x00\x00";
        let Ok(Packet::Rrq(r)) = Packet::decode(raw) else {
            panic!("not an RRQ")
        };
        assert!(r.options.is_empty());
        let raw = b"\x00\x05\x00\x00no terminator";
        assert_eq!(
            Packet::decode(raw),
            Ok(Packet::Error {
                code: ErrorCode::NotDefined,
                message: "no terminator".into()
            })
        );
    }

    #[test]
    fn refuses_malformed_requests() {
        assert_eq!(Packet::decode(b"\x00"), Err(PacketError::TooShort(1)));
        assert_eq!(
            Packet::decode(b"\x00\x09"),
            Err(PacketError::UnknownOpcode(9))
        );
        assert_eq!(
            Packet::decode(b"\x00\x01abc"),
            Err(PacketError::Unterminated("filename"))
        );
        assert_eq!(
            Packet::decode(b"\x00\x01abc\x00octet"),
            Err(PacketError::Unterminated("mode"))
        );
        assert_eq!(
            Packet::decode(b"\x00\x01\x00octet\x00"),
            Err(PacketError::EmptyFilename)
        );
        assert_eq!(
            Packet::decode(b"\x00\x01\xff\x00octet\x00"),
            Err(PacketError::FilenameNotUtf8)
        );
        assert!(matches!(
            Packet::decode(b"\x00\x01a\x00binary\x00"),
            Err(PacketError::BadMode(_))
        ));
        assert_eq!(
            Packet::decode(b"\x00\x03\x00"),
            Err(PacketError::TooShort(3))
        );
        assert_eq!(
            Packet::decode(b"\x00\x04\x00"),
            Err(PacketError::TooShort(3))
        );
    }

    #[test]
    fn encodes_known_bytes() {
        assert_eq!(Packet::Ack(0x1234).encode(), b"\x00\x04\x12\x34");
        assert_eq!(ack_packet(7), *b"\x00\x04\x00\x07");
        assert_eq!(
            Packet::Data {
                block: 1,
                data: b"hi"
            }
            .encode(),
            b"\x00\x03\x00\x01hi"
        );
        assert_eq!(
            error_packet(ErrorCode::OptionRefused, "no"),
            b"\x00\x05\x00\x08no\x00"
        );
        let oack = Options {
            blksize: Some(1468),
            tsize: Some(99),
            ..Default::default()
        };
        assert_eq!(
            Packet::Oack(oack.to_pairs()).encode(),
            b"\x00\x06blksize\x001468\x00tsize\x0099\x00"
        );
    }

    fn arb_text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_./-]{1,40}"
    }

    fn arb_opts() -> impl Strategy<Value = Vec<TftpOption>> {
        prop::collection::vec(
            (arb_text(), arb_text()).prop_map(|(name, value)| TftpOption { name, value }),
            0..5,
        )
    }

    fn arb_req() -> impl Strategy<Value = Request> {
        let mode = prop_oneof![Just(Mode::Octet), Just(Mode::Netascii), Just(Mode::Mail)];
        (arb_text(), mode, arb_opts()).prop_map(|(filename, mode, options)| Request {
            filename,
            mode,
            options,
        })
    }

    fn arb_packet() -> impl Strategy<Value = Packet<'static>> {
        prop_oneof![
            arb_req().prop_map(Packet::Rrq),
            arb_req().prop_map(Packet::Wrq),
            any::<u16>().prop_map(Packet::Ack),
            (any::<u16>(), "[ -~]{0,60}").prop_map(|(c, m)| Packet::Error {
                code: ErrorCode::from_code(c),
                message: m
            }),
            arb_opts().prop_map(Packet::Oack),
        ]
    }

    proptest! {
        #[test]
        fn roundtrip(p in arb_packet()) {
            let bytes = p.encode();
            prop_assert_eq!(Packet::decode(&bytes), Ok(p));
        }

        #[test]
        fn data_roundtrip(block in any::<u16>(), data in prop::collection::vec(any::<u8>(), 0..600)) {
            let bytes = Packet::Data { block, data: &data }.encode();
            prop_assert_eq!(Packet::decode(&bytes), Ok(Packet::Data { block, data: &data }));
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Packet::decode(&bytes);
        }
    }
}
