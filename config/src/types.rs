//! Small value types that appear in the config file: human durations (`90s`, `1h`),
//! port ranges (`30100-30199`), IPv4 ranges (`192.0.2.100-192.0.2.199`) and MAC
//! addresses in any common spelling, client networks (`10.20.0.0/16`, `2001:db8::/32`
//! or one address). Each parses from a string and prints back the same way.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Implements serde for a type through `FromStr`/`Display`, so the TOML carries one string.
macro_rules! string_serde {
    ($t:ty, $expect:literal) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse()
                    .map_err(|e| serde::de::Error::custom(format!("{e} (expected {})", $expect)))
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
    };
}

/// A duration written like `90s`, `5m`, `1h 30m` or `250ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Duration)
            .map_err(|e| format!("`{s}` is not a duration: {e}"))
    }
}
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}
string_serde!(Duration, "a duration such as \"90s\", \"5m\" or \"1h\"");

/// An inclusive port range, `30100-30199`, or a single port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn contains(&self, p: u16) -> bool {
        (self.first..=self.last).contains(&p)
    }
    pub fn iter(&self) -> impl Iterator<Item = u16> + use<> {
        self.first..=self.last
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port number (1-65535)"))
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let p = parse(s)?;
                (p, p)
            }
        };
        if first == 0 || last < first {
            return Err(format!(
                "`{s}` is not a port range: write FIRST-LAST with 1 <= FIRST <= LAST"
            ));
        }
        Ok(PortRange { first, last })
    }
}
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}
string_serde!(PortRange, "a port range such as \"30000-30099\"");

/// An inclusive IPv4 address range, `192.0.2.100-192.0.2.199`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Range {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl Ipv4Range {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(ip))
    }
    pub fn len(&self) -> u64 {
        u64::from(u32::from(self.last) - u32::from(self.first)) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl FromStr for Ipv4Range {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not an address range: write FIRST-LAST"))?;
        let first: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
        let last: Ipv4Addr = b
            .trim()
            .parse()
            .map_err(|_| format!("`{b}` is not an IPv4 address"))?;
        if u32::from(last) < u32::from(first) {
            return Err(format!("`{s}`: the last address comes before the first"));
        }
        Ok(Ipv4Range { first, last })
    }
}
impl fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}
string_serde!(
    Ipv4Range,
    "an address range such as \"192.0.2.100-192.0.2.199\""
);

/// An IPv4 network, `192.0.2.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(prefix_to_mask(self.prefix))
    }
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & prefix_to_mask(self.prefix))
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let m = prefix_to_mask(self.prefix);
        u32::from(ip) & m == u32::from(self.addr) & m
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !prefix_to_mask(self.prefix))
    }
    /// The network of `ip` under `mask`, if the mask is contiguous.
    pub fn from_mask(ip: Ipv4Addr, mask: Ipv4Addr) -> Option<Ipv4Net> {
        let m = u32::from(mask);
        let prefix = m.leading_ones();
        (m.count_ones() == prefix).then_some(Ipv4Net {
            addr: ip,
            prefix: prefix as u8,
        })
    }
}

fn prefix_to_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a network: write ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
        let prefix: u8 = p
            .trim()
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("`{p}` is not a prefix length (0-32)"))?;
        Ok(Ipv4Net { addr, prefix })
    }
}
impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}
string_serde!(Ipv4Net, "a network such as \"192.0.2.0/24\"");

/// A client network for an allow-list: `10.20.0.0/16`, `2001:db8::/32`, or a single
/// address (`192.0.2.7`, meaning /32 or /128). ipnet parses the networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientNet(pub ipnet::IpNet);

impl ClientNet {
    /// Whether `ip` is inside; an IPv4-mapped IPv6 address (`::ffff:192.0.2.7`, as a
    /// dual-stack socket reports IPv4 clients) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl FromStr for ClientNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(ClientNet(ipnet::IpNet::from(ip)));
        }
        s.parse::<ipnet::IpNet>()
            .map(|n| ClientNet(n.trunc()))
            .map_err(|_| format!("`{s}` is neither an address nor a network ADDRESS/PREFIX"))
    }
}
impl fmt::Display for ClientNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
string_serde!(
    ClientNet,
    "a network such as \"10.20.0.0/16\" or \"2001:db8::/32\", or one address"
);

/// A MAC address. Accepts `00:90:8f:12:34:56`, `00-90-8F-12-34-56`, `00908f123456`
/// and `0090.8f12.3456`; prints lowercase with colons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Twelve lowercase hex digits, the spelling used in file names.
    pub fn bare(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let digits: String = s
            .chars()
            .filter(|c| !matches!(c, ':' | '-' | '.'))
            .collect();
        let bytes = hex::decode(&digits).map_err(|_| format!("`{s}` is not a MAC address"))?;
        let arr: [u8; 6] = bytes
            .try_into()
            .map_err(|_| format!("`{s}` is not a MAC address (it needs 12 hex digits)"))?;
        Ok(MacAddr(arr))
    }
}
impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}
string_serde!(MacAddr, "a MAC address such as \"00:90:8f:12:34:56\"");

/// A MAC prefix (an OUI or longer), `00:90:8F` or `00908f`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacPrefix(pub Vec<u8>);

impl MacPrefix {
    pub fn matches(&self, mac: &[u8]) -> bool {
        mac.starts_with(&self.0)
    }
}
impl FromStr for MacPrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let digits: String = s
            .chars()
            .filter(|c| !matches!(c, ':' | '-' | '.'))
            .collect();
        let bytes = hex::decode(&digits).map_err(|_| format!("`{s}` is not a MAC prefix"))?;
        if bytes.is_empty() || bytes.len() > 6 {
            return Err(format!("`{s}` is not a MAC prefix (1 to 6 bytes)"));
        }
        Ok(MacPrefix(bytes))
    }
}
impl fmt::Display for MacPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "{}", parts.join(":"))
    }
}
string_serde!(MacPrefix, "a MAC prefix such as \"00:90:8f\"");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values() {
        assert_eq!("90s".parse::<Duration>().map(|d| d.0.as_secs()), Ok(90));
        assert_eq!("1h".parse::<Duration>().map(|d| d.0.as_secs()), Ok(3600));
        assert!("soon".parse::<Duration>().is_err());
        assert_eq!("30100-30199".parse::<PortRange>().map(|r| r.len()), Ok(100));
        assert!("200-100".parse::<PortRange>().is_err());
        let r: Ipv4Range = "192.0.2.100-192.0.2.199"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.len(), 100);
        assert!("192.0.2.9-192.0.2.1".parse::<Ipv4Range>().is_err());
        for s in [
            "00:90:8f:12:34:56",
            "00-90-8F-12-34-56",
            "00908F123456",
            "0090.8f12.3456",
        ] {
            assert_eq!(
                s.parse::<MacAddr>().map(|m| m.bare()),
                Ok("00908f123456".to_string()),
                "{s}"
            );
        }
        assert!("00:90:8f".parse::<MacAddr>().is_err());
        let n: Ipv4Net = "192.0.2.7/24".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(n.contains("192.0.2.200".parse().unwrap_or(Ipv4Addr::UNSPECIFIED)));
        assert_eq!(n.to_string(), "192.0.2.0/24");
    }
}
