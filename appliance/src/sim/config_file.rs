//! Phone configuration files as the simulated phone reads them (phone-behaviour.md §7):
//! one `path/to/key=value` per line, `;` comment lines, blank lines, `include <URL>`
//! lines, CRLF or LF. The `system/type` model check, the hash that decides whether the
//! config changed, and which changed keys need a reboot live here too.

use std::collections::BTreeMap;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// One parsed file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CfgFile {
    /// `key=value` pairs in file order; keys are case-sensitive (ASSUMED).
    pub entries: Vec<(String, String)>,
    /// `include` targets in file order, as written.
    pub includes: Vec<String>,
    /// Lines that were neither comments, includes nor `key=value`.
    pub bad_lines: usize,
}

impl CfgFile {
    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a config file. Never fails: bad lines are counted and skipped, like a phone
/// that keeps what it understands.
pub fn parse(bytes: &[u8]) -> CfgFile {
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = CfgFile::default();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = strip_keyword(line, "include") {
            let target = rest.trim().trim_matches('"');
            if target.is_empty() {
                out.bad_lines += 1;
            } else {
                out.includes.push(target.to_string());
            }
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => out
                .entries
                .push((k.trim().to_string(), v.trim().to_string())),
            _ => out.bad_lines += 1,
        }
    }
    out
}

/// `include <URL>` (keyword case-insensitive, followed by whitespace).
fn strip_keyword<'a>(line: &'a str, kw: &str) -> Option<&'a str> {
    let head = line.get(..kw.len())?;
    let rest = &line[kw.len()..];
    (head.eq_ignore_ascii_case(kw) && rest.starts_with(char::is_whitespace)).then_some(rest)
}

/// `system/type` present and different from `model` (case-insensitive)?
/// Returns the declared model when it is wrong.
pub fn wrong_model<'a>(file: &'a CfgFile, model: &str) -> Option<&'a str> {
    file.get("system/type")
        .filter(|t| !t.trim().eq_ignore_ascii_case(model.trim()))
}

/// A config with its includes merged in order (an include's keys apply at the include
/// line; later lines override earlier ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub values: BTreeMap<String, String>,
}

impl Resolved {
    pub fn apply(&mut self, file: &CfgFile) {
        for (k, v) in &file.entries {
            self.values.insert(k.clone(), v.clone());
        }
    }

    /// SHA-256 of the resolved `key=value` set, hex.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for (k, v) in &self.values {
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }

    /// Keys whose change needs a reboot (ASSUMED, §7.5): `network/…`, `provisioning/…`,
    /// `voip/line/…`, `system/type`.
    pub fn reboot_needed(&self, previous: &Resolved) -> bool {
        let needs = |k: &str| {
            k.starts_with("network/")
                || k.starts_with("provisioning/")
                || k.starts_with("voip/line/")
                || k == "system/type"
        };
        let changed = |k: &String| self.values.get(k) != previous.values.get(k);
        self.values
            .keys()
            .chain(previous.values.keys())
            .any(|k| needs(k) && changed(k))
    }

    /// The periodic re-check interval the config asks for, if any (§7.6):
    /// `provisioning/period/type` = every5minutes, every15minutes, hourly (with
    /// `hourly/hours_interval`), daily, weekly; `powerup` means none.
    pub fn period(&self) -> Option<Duration> {
        let t = self
            .values
            .get("provisioning/period/type")?
            .to_ascii_lowercase();
        let hours = |k: &str, d: u64| {
            self.values
                .get(k)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(d)
                .clamp(1, 168)
        };
        match t.as_str() {
            "every5minutes" => Some(Duration::from_secs(300)),
            "every15minutes" => Some(Duration::from_secs(900)),
            "hourly" => Some(Duration::from_secs(
                3600 * hours("provisioning/period/hourly/hours_interval", 24),
            )),
            "daily" => Some(Duration::from_secs(86_400)),
            "weekly" => Some(Duration::from_secs(7 * 86_400)),
            _ => None,
        }
    }

    /// `provisioning/random_provisioning_time` in seconds (ASSUMED unit), default 120.
    pub fn random_delay(&self) -> Duration {
        let s = self
            .values
            .get("provisioning/random_provisioning_time")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(120);
        Duration::from_secs(s.min(65_535))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_comments_includes_crlf() {
        let f = parse(
            b"\xef\xbb\xbfsystem/type=450HD\r\n; a comment\r\n\r\nvoip/line/0/auth_name = 1001\r\n\
              include https://h/common.cfg\r\nINCLUDE\tshared/<MODEL>.cfg\r\nnonsense\r\n\
              provisioning/firmware/url=http://h/a.img;b.cfg\r\nlync/x={\"abc==\"}\r\n",
        );
        assert_eq!(f.get("system/type"), Some("450HD"));
        assert_eq!(f.get("voip/line/0/auth_name"), Some("1001"));
        assert_eq!(
            f.get("provisioning/firmware/url"),
            Some("http://h/a.img;b.cfg")
        );
        assert_eq!(f.get("lync/x"), Some("{\"abc==\"}"));
        assert_eq!(
            f.includes,
            vec!["https://h/common.cfg", "shared/<MODEL>.cfg"]
        );
        assert_eq!(f.bad_lines, 1);
        // `includeX=1` is a key, not an include.
        assert_eq!(parse(b"includes=1").entries.len(), 1);
    }

    #[test]
    fn model_check() {
        let f = parse(b"system/type=445HD\n");
        assert_eq!(wrong_model(&f, "450HD"), Some("445HD"));
        assert_eq!(wrong_model(&f, "445hd"), None);
        assert_eq!(wrong_model(&parse(b"a=b\n"), "450HD"), None);
    }

    #[test]
    fn hash_reboot_and_period() {
        let mut a = Resolved::default();
        a.apply(&parse(b"personal_settings/x=1\n"));
        let mut b = a.clone();
        assert_eq!(a.hash(), b.hash());
        b.apply(&parse(b"personal_settings/x=2\n"));
        assert_ne!(a.hash(), b.hash());
        assert!(!b.reboot_needed(&a));
        b.apply(&parse(b"network/lan/vlan/mode=DISABLE\nprovisioning/period/type=HOURLY\nprovisioning/period/hourly/hours_interval=2\n"));
        assert!(b.reboot_needed(&a));
        assert_eq!(b.period(), Some(Duration::from_secs(7200)));
        assert_eq!(a.period(), None);
        assert_eq!(a.random_delay(), Duration::from_secs(120));
    }
}
