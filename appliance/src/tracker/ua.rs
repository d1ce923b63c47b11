//! What a phone's HTTP User-Agent says about it: vendor, model, firmware version and,
//! for the families that send one, its MAC. One regex per family, from the samples in
//! phone-behaviour.md §4 and §12 (AudioCodes 2.x carries the MAC, AudioCodes UC 3.x does
//! not; Yealink, Grandstream, Snom, Fanvil, Htek, Mitel and Panasonic do; Polycom does
//! not). Anything unrecognised yields `None`: a User-Agent is a hint, never trusted
//! for more than attribution and display.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// What one User-Agent told.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UaInfo {
    pub vendor: String,
    pub model: Option<String>,
    pub version: Option<String>,
    /// Lowercase, colon-separated.
    pub mac: Option<String>,
}

struct Family {
    vendor: &'static str,
    re: Regex,
    /// Capture group numbers of model, version and MAC (0 = absent).
    model: usize,
    version: usize,
    mac: usize,
    /// Cleans the model capture (e.g. `440HDG-Rev0` → `440HDG`, `SIP-T46G` → `T46G`).
    clean_model: fn(&str) -> String,
}

fn keep(s: &str) -> String {
    s.to_string()
}

fn strip_rev(s: &str) -> String {
    match s.find("-Rev") {
        Some(i) => s[..i].to_string(),
        None => s.to_string(),
    }
}

fn strip_sip(s: &str) -> String {
    s.strip_prefix("SIP-")
        .or_else(|| s.strip_prefix("SIP "))
        .unwrap_or(s)
        .to_string()
}

#[allow(clippy::expect_used)] // the patterns are constants, checked by the tests below
fn re(p: &str) -> Regex {
    Regex::new(p).expect("constant regex")
}

static FAMILIES: LazyLock<Vec<Family>> = LazyLock::new(|| {
    const MAC_ANY: &str = r"([0-9A-Fa-f]{2}(?:[:-]?[0-9A-Fa-f]{2}){5})";
    vec![
        // AudioCodes 2.x: `AUDC-IPPhone/2.2.8.61 (440HDG-Rev0; 00908F602AAC)` (§11.5).
        Family {
            vendor: "AudioCodes",
            re: re(r"^AUDC-IPPhone/(\S+) \(([^;]+); ([0-9A-Fa-f]{12})\)"),
            model: 2,
            version: 1,
            mac: 3,
            clean_model: strip_rev,
        },
        // AudioCodes UC 3.x: `AUDC/3.4.6.604 AUDC-IPPhone-C450HD_UC_3.4.6.604/1` (§11.5): no MAC.
        Family {
            vendor: "AudioCodes",
            re: re(r"AUDC-IPPhone-(\w+?)_UC_([\d.]+)"),
            model: 1,
            version: 2,
            mac: 0,
            clean_model: keep,
        },
        // Poly: `FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Application`.
        Family {
            vendor: "Poly",
            re: re(r"Polycom\w*-([A-Za-z0-9_]+)-UA/([\d.]+)"),
            model: 1,
            version: 2,
            mac: 0,
            clean_model: keep,
        },
        // Yealink: `Yealink SIP-T46G 28.72.0.1 00:15:65:4a:a9:37` (T5x without colons).
        Family {
            vendor: "Yealink",
            re: re(&format!(r"Yealink\s+(\S+)\s+([\d.]+)\s+{MAC_ANY}")),
            model: 1,
            version: 2,
            mac: 3,
            clean_model: strip_sip,
        },
        // Grandstream: `Grandstream Model HW GXP2135 SW 1.0.7.97 DevId 000b828aa872`.
        Family {
            vendor: "Grandstream",
            re: re(&format!(
                r"Grandstream Model HW (\S+).*?SW ([\d.]+).*?DevId {MAC_ANY}"
            )),
            model: 1,
            version: 2,
            mac: 3,
            clean_model: keep,
        },
        // Snom: `Mozilla/4.0 (compatible; snomD785-SIP 10.1.169.16 … 00041396D9B4 …)`.
        Family {
            vendor: "Snom",
            re: re(r"(?i)snom\s?([A-Za-z0-9]+?)(?:-SIP)?\s+([\d.]+)\b.*?\b([0-9A-Fa-f]{12})\b"),
            model: 1,
            version: 2,
            mac: 3,
            clean_model: keep,
        },
        // Fanvil: `Fanvil X5U-V2 2.12.1 0c3800000000`.
        Family {
            vendor: "Fanvil",
            re: re(&format!(r"Fanvil (\S+) ([\d.]+) {MAC_ANY}")),
            model: 1,
            version: 2,
            mac: 3,
            clean_model: keep,
        },
        // Htek: `Htek UC926 2.0.4.2 00:1f:c1:…`.
        Family {
            vendor: "Htek",
            re: re(&format!(r"Htek (\S+) ([\d.]+) {MAC_ANY}")),
            model: 1,
            version: 2,
            mac: 3,
            clean_model: keep,
        },
        // Mitel/Aastra: `Mitel6940 MAC:14-00-E9-29-4C-6B V:6.4.0.4006-SIP`.
        Family {
            vendor: "Mitel",
            re: re(&format!(r"(?:Mitel|Aastra)(\w+) MAC:{MAC_ANY} V:(\S+)")),
            model: 1,
            version: 3,
            mac: 2,
            clean_model: keep,
        },
        // Panasonic: `Panasonic_KX-UT670/01.022 (0080f000000)` (MAC when 12 digits).
        Family {
            vendor: "Panasonic",
            re: re(r"Panasonic_(KX-\w+)/(\S+)(?: \(([0-9A-Fa-f]{12})\))?"),
            model: 1,
            version: 2,
            mac: 3,
            clean_model: keep,
        },
        // Cisco MPP (best effort; TFTP-only Cisco phones send none):
        // `Cisco-CP-8845-3PCC/11.3.1 (00562b043615)`.
        Family {
            vendor: "Cisco",
            re: re(r"Cisco-(?:CP-)?([\w-]+?)(?:-3PCC)?/(\S+)(?: \(([0-9A-Fa-f]{12})\))?"),
            model: 1,
            version: 2,
            mac: 3,
            clean_model: keep,
        },
    ]
});

/// Parses a User-Agent; `None` when no family matches.
pub fn parse(ua: &str) -> Option<UaInfo> {
    FAMILIES.iter().find_map(|f| {
        let c = f.re.captures(ua)?;
        let get = |i: usize| {
            if i == 0 {
                None
            } else {
                c.get(i).map(|m| m.as_str())
            }
        };
        Some(UaInfo {
            vendor: f.vendor.to_string(),
            model: get(f.model).map(f.clean_model).filter(|m| !m.is_empty()),
            version: get(f.version).map(str::to_string),
            mac: get(f.mac).and_then(normalize_mac),
        })
    })
}

/// Twelve hex digits in any spelling (`00908F602AAC`, `00:90:8f:60:2a:ac`,
/// `00-90-8F-…`) → `00:90:8f:60:2a:ac`. `None` for anything else and for the all-zero
/// and broadcast addresses.
pub fn normalize_mac(s: &str) -> Option<String> {
    let hex: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '.'))
        .collect();
    if hex.len() != 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    if hex == "000000000000" || hex == "ffffffffffff" {
        return None;
    }
    let mut out = String::with_capacity(17);
    for (i, ch) in hex.chars().enumerate() {
        if i > 0 && i % 2 == 0 {
            out.push(':');
        }
        out.push(ch);
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(ua: &str) -> (String, Option<String>, Option<String>, Option<String>) {
        let i = parse(ua).unwrap_or_else(|| panic!("no match for {ua}"));
        (i.vendor, i.model, i.version, i.mac)
    }

    fn s(x: &str) -> Option<String> {
        Some(x.to_string())
    }

    #[test]
    fn audiocodes_both_families() {
        assert_eq!(
            p("AUDC-IPPhone/2.2.8.61 (440HDG-Rev0; 00908F602AAC)"),
            (
                "AudioCodes".into(),
                s("440HDG"),
                s("2.2.8.61"),
                s("00:90:8f:60:2a:ac")
            )
        );
        assert_eq!(
            p("AUDC-IPPhone/2.0.0_build_15 (420HD; 00908F3BBCBA)"),
            (
                "AudioCodes".into(),
                s("420HD"),
                s("2.0.0_build_15"),
                s("00:90:8f:3b:bc:ba")
            )
        );
        assert_eq!(
            p("AUDC/3.4.6.604 AUDC-IPPhone-C450HD_UC_3.4.6.604/1"),
            ("AudioCodes".into(), s("C450HD"), s("3.4.6.604"), None)
        );
        assert_eq!(
            p("AUDC-IPPhone-445HD_UC_3.4.8/1.0"),
            ("AudioCodes".into(), s("445HD"), s("3.4.8"), None)
        );
    }

    #[test]
    fn other_vendors() {
        assert_eq!(
            p("FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Application"),
            ("Poly".into(), s("VVX_500"), s("5.9.7.4477"), None)
        );
        assert_eq!(
            p("Yealink SIP-T46G 28.72.0.1 00:15:65:4a:a9:37"),
            (
                "Yealink".into(),
                s("T46G"),
                s("28.72.0.1"),
                s("00:15:65:4a:a9:37")
            )
        );
        assert_eq!(
            p("Grandstream Model HW GXP2135 SW 1.0.7.97 DevId 000b828aa872"),
            (
                "Grandstream".into(),
                s("GXP2135"),
                s("1.0.7.97"),
                s("00:0b:82:8a:a8:72")
            )
        );
        assert_eq!(
            p("Mozilla/4.0 (compatible; snomD785-SIP 10.1.169.16 1.1.5-IFX-26.11.09 00041396D9B4)"),
            (
                "Snom".into(),
                s("D785"),
                s("10.1.169.16"),
                s("00:04:13:96:d9:b4")
            )
        );
        assert_eq!(
            p("Mozilla/4.0 (compatible; Snom M900 05.20.0001 000413b60680)"),
            (
                "Snom".into(),
                s("M900"),
                s("05.20.0001"),
                s("00:04:13:b6:06:80")
            )
        );
        assert_eq!(
            p("Mitel6940 MAC:14-00-E9-29-4C-6B V:6.4.0.4006-SIP"),
            (
                "Mitel".into(),
                s("6940"),
                s("6.4.0.4006-SIP"),
                s("14:00:e9:29:4c:6b")
            )
        );
        assert_eq!(
            p("Fanvil X5U-V2 2.12.1 0c3811223344"),
            (
                "Fanvil".into(),
                s("X5U-V2"),
                s("2.12.1"),
                s("0c:38:11:22:33:44")
            )
        );
        assert_eq!(
            p("Panasonic_KX-UT670/01.022 (0080f000000)").1,
            s("KX-UT670")
        );
    }

    #[test]
    fn unknown_agents() {
        assert_eq!(parse("curl/8.5.0"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("Mozilla/5.0 (X11; Linux x86_64)"), None);
    }

    #[test]
    fn macs() {
        assert_eq!(normalize_mac("00908F602AAC"), s("00:90:8f:60:2a:ac"));
        assert_eq!(normalize_mac("00-90-8f-60-2a-ac"), s("00:90:8f:60:2a:ac"));
        assert_eq!(normalize_mac("0090.8f60.2aac"), s("00:90:8f:60:2a:ac"));
        assert_eq!(normalize_mac("000000000000"), None);
        assert_eq!(normalize_mac("00908F602AA"), None);
        assert_eq!(normalize_mac("00908F602AAG"), None);
    }
}
