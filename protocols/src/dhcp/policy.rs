//! Who is this client, and which `[[dhcp.policy]]` applies to it.
//!
//! Model detection reads options 60 and 77 (raw or RFC 3004 length-prefixed, the byte
//! layout the 400HD uses is not public: phone-behaviour.md §2). Policies are tried in
//! order, the first whose every set field matches wins; otherwise the `[dhcp]` defaults
//! apply. Patterns are lowercased once at start-up so matching allocates nothing.

use std::fmt::Write as _;

use provbox_config::{DhcpConfig, MacAddr, MacPrefix, Policy};

/// 400HD models, longest first so `C450HD` wins over `450HD` and `405HD` over `405`.
pub const KNOWN_MODELS: [&str; 11] = [
    "C450HD", "405HD", "420HD", "430HD", "440HD", "445HD", "450HD", "310HD", "RX50", "HRS", "405",
];
/// The same, lowercased (matching runs per packet and must not allocate).
const KNOWN_LOWER: [&str; 11] = [
    "c450hd", "405hd", "420hd", "430hd", "440hd", "445hd", "450hd", "310hd", "rx50", "hrs", "405",
];

/// What a client says about itself, borrowed from its request (or made up by `explain`).
#[derive(Debug, Clone, Copy)]
pub struct ClientView<'a> {
    pub mac: MacAddr,
    /// Option 60.
    pub vendor_class: Option<&'a [u8]>,
    /// Option 77, raw bytes.
    pub user_class: Option<&'a [u8]>,
    /// Option 82 sub-options 1 and 2.
    pub circuit_id: Option<&'a [u8]>,
    pub remote_id: Option<&'a [u8]>,
    /// Option 55.
    pub prl: &'a [u8],
}

/// Trailing NULs and blanks are dropped (Cisco phones NUL-terminate option 60).
fn trim(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| *c != 0 && !c.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    let start = b[..end]
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(end);
    &b[start..end]
}

/// The RFC 3004 user-class instances (`len data len data …`), if `b` is exactly that.
/// A raw string such as `450HD` starts with `4` (52), which overruns, so it is not.
pub fn rfc3004_items(b: &[u8]) -> Option<Vec<&[u8]>> {
    let mut items = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let n = usize::from(b[i]);
        if n == 0 || i + 1 + n > b.len() {
            return None;
        }
        items.push(&b[i + 1..i + 1 + n]);
        i += 1 + n;
    }
    (!items.is_empty()).then_some(items)
}

/// Option 77 as text: RFC 3004 framing removed (instances joined with `,`), else raw.
pub fn user_class_text(b: &[u8]) -> String {
    match rfc3004_items(b) {
        Some(items) => items
            .iter()
            .map(|i| String::from_utf8_lossy(trim(i)))
            .collect::<Vec<_>>()
            .join(","),
        None => String::from_utf8_lossy(trim(b)).into_owned(),
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(trim(b)).into_owned()
}

fn contains_ci(hay: &[u8], needle_lower: &[u8]) -> bool {
    needle_lower.is_empty()
        || hay.windows(needle_lower.len()).any(|w| {
            w.iter()
                .zip(needle_lower)
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
        })
}

/// The 400HD model named in option 60 or 77 (case-insensitive), else the raw text of
/// option 60, else of option 77.
pub fn detect_model(vendor_class: Option<&[u8]>, user_class: Option<&[u8]>) -> Option<String> {
    for field in [vendor_class, user_class].into_iter().flatten() {
        for (m, lower) in KNOWN_MODELS.iter().zip(KNOWN_LOWER) {
            if contains_ci(field, lower.as_bytes()) {
                return Some(m.to_string());
            }
        }
    }
    if let Some(v) = vendor_class.map(trim).filter(|v| !v.is_empty()) {
        return Some(String::from_utf8_lossy(v).into_owned());
    }
    user_class.map(user_class_text).filter(|t| !t.is_empty())
}

/// A text pattern, lowercased once.
#[derive(Debug, Clone)]
struct Pattern {
    shown: String,
    lower: Vec<u8>,
}

impl Pattern {
    fn new(s: &str) -> Self {
        Self {
            shown: s.to_string(),
            lower: s.to_ascii_lowercase().into_bytes(),
        }
    }
    fn matches(&self, value: &[u8], exact: bool) -> bool {
        let v = trim(value);
        if exact {
            v.len() == self.lower.len()
                && v.iter()
                    .zip(&self.lower)
                    .all(|(a, b)| a.to_ascii_lowercase() == *b)
        } else {
            contains_ci(v, &self.lower)
        }
    }
}

/// One policy's matcher, ready to run.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub index: usize,
    pub name: String,
    vendor_class: Option<Pattern>,
    user_class: Option<Pattern>,
    model: Option<Pattern>,
    mac: Option<MacAddr>,
    mac_prefix: Option<MacPrefix>,
    circuit_id: Option<Pattern>,
    remote_id: Option<Pattern>,
    exact: bool,
}

/// Option 77 matches raw, or any RFC 3004 instance.
fn user_class_matches(p: &Pattern, raw: &[u8], exact: bool) -> bool {
    p.matches(raw, exact)
        || rfc3004_items(raw).is_some_and(|items| items.iter().any(|i| p.matches(i, exact)))
}

impl Compiled {
    fn new(index: usize, p: &Policy) -> Self {
        let m = &p.matcher;
        Self {
            index,
            name: p.display_name(index),
            vendor_class: m.vendor_class.as_deref().map(Pattern::new),
            user_class: m.user_class.as_deref().map(Pattern::new),
            model: m.model.as_deref().map(Pattern::new),
            mac: m.mac,
            mac_prefix: m.mac_prefix.clone(),
            circuit_id: m.circuit_id.as_deref().map(Pattern::new),
            remote_id: m.remote_id.as_deref().map(Pattern::new),
            exact: m.exact,
        }
    }

    /// `None` when it does not match; else why it matched, for `provbox check`.
    pub fn matches(&self, c: &ClientView<'_>, why: bool) -> Option<String> {
        let how = if self.exact { "equals" } else { "contains" };
        let mut reason = String::new();
        let mut note = |s: std::fmt::Arguments<'_>| {
            if why {
                if !reason.is_empty() {
                    reason.push_str(" and ");
                }
                let _ = reason.write_fmt(s);
            }
        };
        if let Some(p) = &self.vendor_class {
            let v = c.vendor_class?;
            if !p.matches(v, self.exact) {
                return None;
            }
            note(format_args!(
                "option 60 \"{}\" {how} \"{}\"",
                text(v),
                p.shown
            ));
        }
        if let Some(p) = &self.user_class {
            let v = c.user_class?;
            if !user_class_matches(p, v, self.exact) {
                return None;
            }
            note(format_args!(
                "option 77 \"{}\" {how} \"{}\"",
                user_class_text(v),
                p.shown
            ));
        }
        if let Some(p) = &self.model {
            if let Some(v) = c.vendor_class.filter(|v| p.matches(v, self.exact)) {
                note(format_args!(
                    "model: option 60 \"{}\" {how} \"{}\"",
                    text(v),
                    p.shown
                ));
            } else if let Some(v) = c
                .user_class
                .filter(|v| user_class_matches(p, v, self.exact))
            {
                note(format_args!(
                    "model: option 77 \"{}\" {how} \"{}\"",
                    user_class_text(v),
                    p.shown
                ));
            } else {
                return None;
            }
        }
        if let Some(mac) = self.mac {
            if mac != c.mac {
                return None;
            }
            note(format_args!("MAC is {mac}"));
        }
        if let Some(prefix) = &self.mac_prefix {
            if !prefix.matches(&c.mac.0) {
                return None;
            }
            note(format_args!("MAC {} starts with {prefix}", c.mac));
        }
        if let Some(p) = &self.circuit_id {
            let v = c.circuit_id?;
            if !p.matches(v, self.exact) {
                return None;
            }
            note(format_args!(
                "option 82 circuit id \"{}\" {how} \"{}\"",
                text(v),
                p.shown
            ));
        }
        if let Some(p) = &self.remote_id {
            let v = c.remote_id?;
            if !p.matches(v, self.exact) {
                return None;
            }
            note(format_args!(
                "option 82 remote id \"{}\" {how} \"{}\"",
                text(v),
                p.shown
            ));
        }
        Some(reason)
    }
}

/// All policies of a config, in order.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    list: Vec<Compiled>,
}

impl Policies {
    pub fn new(cfg: &DhcpConfig) -> Self {
        Self {
            list: cfg
                .policies
                .iter()
                .enumerate()
                .map(|(i, p)| Compiled::new(i, p))
                .collect(),
        }
    }

    /// The first matching policy's index and name (and the reason when `why`).
    pub fn select(&self, c: &ClientView<'_>, why: bool) -> Option<(usize, &str, String)> {
        self.list
            .iter()
            .find_map(|p| p.matches(c, why).map(|r| (p.index, p.name.as_str(), r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> DhcpConfig {
        provbox_config::Config::parse(text, "t.toml", std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"))
            .dhcp
    }

    fn view<'a>(mac: [u8; 6], v60: Option<&'a [u8]>, v77: Option<&'a [u8]>) -> ClientView<'a> {
        ClientView {
            mac: MacAddr(mac),
            vendor_class: v60,
            user_class: v77,
            circuit_id: None,
            remote_id: None,
            prl: &[],
        }
    }

    #[test]
    fn models() {
        assert_eq!(
            detect_model(Some(b"AUDC C450HD"), None).as_deref(),
            Some("C450HD")
        );
        assert_eq!(
            detect_model(Some(b"450hd\0"), None).as_deref(),
            Some("450HD")
        );
        assert_eq!(
            detect_model(None, Some(b"\x05445HD")).as_deref(),
            Some("445HD")
        );
        assert_eq!(
            detect_model(Some(b"udhcp 1.36"), None).as_deref(),
            Some("udhcp 1.36")
        );
        assert_eq!(
            detect_model(None, Some(b"\x04iPXE\x03abc")).as_deref(),
            Some("iPXE,abc")
        );
        assert_eq!(detect_model(None, None), None);
    }

    #[test]
    fn first_match_wins_and_all_fields_must_match() {
        let c = cfg(r#"
[[dhcp.policy]]
name = "exact 450"
match = { vendor_class = "450HD", exact = true }
[[dhcp.policy]]
name = "445 by 77"
match = { user_class = "445hd" }
[[dhcp.policy]]
name = "ouI and circuit"
match = { mac_prefix = "00:90:8F", circuit_id = "port-7" }
[[dhcp.policy]]
name = "oui"
match = { mac_prefix = "00908f" }
"#);
        let p = Policies::new(&c);
        let aud = [0, 0x90, 0x8f, 1, 2, 3];
        let other = [2, 0, 0, 1, 2, 3];
        let name = |v: ClientView<'_>| p.select(&v, true).map(|(_, n, _)| n.to_string());
        assert_eq!(
            name(view(other, Some(b"450HD"), None)).as_deref(),
            Some("exact 450")
        );
        // Exact: "C450HD" is not "450HD"; falls through to the OUI policy.
        assert_eq!(
            name(view(aud, Some(b"C450HD"), None)).as_deref(),
            Some("oui")
        );
        assert_eq!(name(view(other, Some(b"C450HD"), None)), None);
        // Option 77 raw and RFC 3004-framed.
        assert_eq!(
            name(view(other, None, Some(b"AUDC-445HD"))).as_deref(),
            Some("445 by 77")
        );
        assert_eq!(
            name(view(other, None, Some(b"\x03abc\x05445HD"))).as_deref(),
            Some("445 by 77")
        );
        // Option 82 circuit id, AND-ed with the prefix.
        let mut v = view(aud, None, None);
        v.circuit_id = Some(b"sw1 Port-7");
        let (_, n, why) = p.select(&v, true).unwrap_or_else(|| panic!("match"));
        assert_eq!(n, "ouI and circuit");
        assert!(
            why.contains("circuit id") && why.contains("starts with 00:90:8f"),
            "{why}"
        );
    }
}
