//! Which phone a transfer belongs to. In order: a MAC in the requested path
//! (`00908f123456.cfg`, `SEP00908F123456.cnf.xml`, `cfg000b828aa872.xml`), a MAC in the
//! User-Agent (AudioCodes 2.x, Yealink, …), the DHCP lease of the peer's address, an
//! address-to-MAC hint learnt from an earlier User-Agent, and last the bare address: a
//! phone with a static IP still gets its own row (key `ip:<addr>`).

use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;

use regex::Regex;

use super::ua::normalize_mac;

#[allow(clippy::expect_used)] // a constant pattern, exercised by the tests below
static PATH_MAC: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:^|[^0-9a-f])((?:[0-9a-f]{2}[:-]?){5}[0-9a-f]{2})(?:[^0-9a-f]|$)")
        .expect("constant regex")
});

/// The MAC named in a requested path, if any. Common-file names that only look like
/// MACs (`000000000000.cfg` for Polycom, `y000000000025.cfg` for Yealink: OUI
/// 00:00:00) are not MACs.
pub fn mac_in_path(path: &str) -> Option<String> {
    // Only the last path component names a device; a directory named by MAC is rare and
    // ambiguous (a phone may fetch a shared file from another phone's folder).
    let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
    // A MAC is 12 hex digits: most names (`cfg1k.cfg`, `450HD.img`) have fewer, and
    // skipping the regex for them saves its allocations on every request.
    if name.bytes().filter(u8::is_ascii_hexdigit).count() < 12 {
        return None;
    }
    PATH_MAC
        .captures_iter(name)
        .filter_map(|c| c.get(1))
        .filter_map(|m| normalize_mac(m.as_str()))
        .find(|mac| !mac.starts_with("00:00:00"))
}

/// The peer's address as the lease table spells it (IPv4-mapped IPv6 made IPv4).
pub fn peer_ip(peer: &SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The row key of a device known only by its address.
pub fn ip_key(ip: &IpAddr) -> String {
    format!("ip:{ip}")
}

/// Normalises what a user types to name a device: a MAC in any spelling, `ip:<addr>`
/// or a bare address.
pub fn normalize_key(s: &str) -> String {
    if let Some(mac) = normalize_mac(s) {
        return mac;
    }
    let bare = s.strip_prefix("ip:").unwrap_or(s);
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip_key(&ip),
        Err(_) => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Option<String> {
        Some(x.to_string())
    }

    #[test]
    fn macs_in_paths() {
        assert_eq!(mac_in_path("00908f123456.cfg"), s("00:90:8f:12:34:56"));
        assert_eq!(mac_in_path("/cfg/00908F123456.cfg"), s("00:90:8f:12:34:56"));
        assert_eq!(mac_in_path("00-90-8f-12-34-56.cfg"), s("00:90:8f:12:34:56"));
        assert_eq!(
            mac_in_path("SEP00908F123456.cnf.xml"),
            s("00:90:8f:12:34:56")
        );
        assert_eq!(mac_in_path("cfg000b828aa872.xml"), s("00:0b:82:8a:a8:72"));
        assert_eq!(
            mac_in_path("440HD_00908f123456_conf.cfg"),
            s("00:90:8f:12:34:56")
        );
        assert_eq!(mac_in_path("000000000000.cfg"), None);
        assert_eq!(mac_in_path("y000000000025.cfg"), None);
        assert_eq!(mac_in_path("450HD_3.4.8.198.img"), None);
        assert_eq!(mac_in_path("450HD.img"), None);
        // A hash-named file is not a MAC.
        assert_eq!(mac_in_path("0123456789abcdef0123456789abcdef.bin"), None);
        assert_eq!(mac_in_path("00908f123456/common.cfg"), None);
    }

    #[test]
    fn keys() {
        assert_eq!(normalize_key("00908F123456"), "00:90:8f:12:34:56");
        assert_eq!(normalize_key("00-90-8f-12-34-56"), "00:90:8f:12:34:56");
        assert_eq!(normalize_key("192.0.2.7"), "ip:192.0.2.7");
        assert_eq!(normalize_key("ip:192.0.2.7"), "ip:192.0.2.7");
        let mapped: SocketAddr = "[::ffff:127.0.0.9]:80"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        assert_eq!(peer_ip(&mapped).to_string(), "127.0.0.9");
    }
}
