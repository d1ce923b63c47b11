//! What a file name says: its kind (`.img` firmware, `.cfg` config), the phone model and
//! firmware version in names like `450HD_3.4.8.198.img`, whether it is a temporary file
//! that must stay invisible, and the normalised lookup key that makes MAC-named files
//! match in any case and with or without `:`/`-`.

use serde::{Deserialize, Serialize};

/// What a file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// `.img`: firmware.
    Firmware,
    /// `.cfg`: configuration.
    Config,
    Other,
}

impl FileKind {
    pub fn of(name: &str) -> FileKind {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".img") {
            FileKind::Firmware
        } else if lower.ends_with(".cfg") {
            FileKind::Config
        } else {
            FileKind::Other
        }
    }
}

/// Temp, hidden and editor files stay invisible until renamed into place.
pub fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name == "4913"
        || [".tmp", ".part", ".swp", ".swx", ".crdownload"]
            .iter()
            .any(|s| ends_with_ignore_case(name, s))
}

/// `name` ends with the ASCII `suffix`, in any case (no copy: this runs for every
/// path component of every request).
fn ends_with_ignore_case(name: &str, suffix: &str) -> bool {
    let (n, s) = (name.as_bytes(), suffix.as_bytes());
    n.len() >= s.len() && n[n.len() - s.len()..].eq_ignore_ascii_case(s)
}

/// True when any component of a relative path is hidden.
pub fn path_is_hidden(rel: &str) -> bool {
    rel.split('/').any(is_hidden)
}

/// Model and version parsed from a firmware file name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageName {
    pub model: Option<String>,
    pub version: Option<String>,
}

/// Parses `450HD_3.4.8.198.img`, `UC450HD_3.4.4.1000.69.img`,
/// `AudioCodes_UCC450HD_3.4.8.198.1.img`, `310HD_1.4.1_build_32.img` and plain `450HD.img`.
/// The model drops a `UC` family prefix (`UCC450HD` is the UC build for `C450HD`).
pub fn parse_image_name(file_name: &str) -> ImageName {
    let lower = file_name.to_ascii_lowercase();
    let Some(stem) = lower
        .strip_suffix(".img")
        .map(|_| &file_name[..file_name.len() - 4])
    else {
        return ImageName::default();
    };
    let tokens: Vec<&str> = stem.split('_').filter(|t| !t.is_empty()).collect();
    let is_version_start = |t: &str| {
        let mut parts = t.split('.');
        parts
            .next()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            && t.contains('.')
    };
    let vpos = tokens.iter().position(|t| is_version_start(t));
    let (model_tok, version) = match vpos {
        Some(0) => (None, Some(tokens.join("_"))),
        Some(p) => (Some(tokens[p - 1]), Some(tokens[p..].join("_"))),
        None => (tokens.last().copied(), None),
    };
    let model = model_tok
        .map(strip_family_prefix)
        .filter(|m| looks_like_model(m))
        .map(|m| m.to_ascii_uppercase());
    ImageName { model, version }
}

fn strip_family_prefix(tok: &str) -> &str {
    let upper = tok.to_ascii_uppercase();
    if upper.starts_with("UC") && tok.len() > 2 {
        let rest = &tok[2..];
        if rest
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c.eq_ignore_ascii_case(&'C'))
        {
            return rest;
        }
    }
    tok
}

fn looks_like_model(m: &str) -> bool {
    !m.is_empty() && m.len() <= 16 && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Lookup key for a relative path: lowercase, with a MAC written with `:` or `-` in
/// the file name reduced to its twelve hex digits.
pub fn lookup_key(rel: &str) -> String {
    let lower = rel.to_ascii_lowercase();
    match lower.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/{}", strip_mac_separators(name)),
        None => strip_mac_separators(&lower),
    }
}

/// `00:90:8f:12:34:56.cfg` → `00908f123456.cfg`; other names unchanged.
fn strip_mac_separators(name: &str) -> String {
    let b = name.as_bytes();
    // Look for 6 hex pairs separated by ':' or '-' anywhere in the name.
    let mut i = 0;
    while i + 17 <= b.len() {
        let window = &b[i..i + 17];
        let sep = window[2];
        let is_mac = (sep == b':' || sep == b'-')
            && (0..6).all(|k| {
                window[k * 3].is_ascii_hexdigit() && window[k * 3 + 1].is_ascii_hexdigit()
            })
            && (0..5).all(|k| window[k * 3 + 2] == sep);
        if is_mac {
            let digits: String = window
                .iter()
                .filter(|c| **c != sep)
                .map(|c| *c as char)
                .collect();
            return format!("{}{}{}", &name[..i], digits, &name[i + 17..]);
        }
        i += 1;
    }
    name.to_string()
}

/// Compares dotted versions numerically where both parts are numbers.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let split = |s: &str| -> Vec<String> { s.split(['.', '_']).map(str::to_string).collect() };
    let (va, vb) = (split(a), split(b));
    for (x, y) in va.iter().zip(vb.iter()) {
        let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(p), Ok(q)) => p.cmp(&q),
            _ => x.cmp(y),
        };
        if ord != std::cmp::Ordering::Equal {
            return ord;
        }
    }
    va.len().cmp(&vb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(n: &str) -> (Option<String>, Option<String>) {
        let p = parse_image_name(n);
        (p.model, p.version)
    }

    #[test]
    fn image_names() {
        let s = |x: &str| Some(x.to_string());
        assert_eq!(parsed("450HD_3.4.8.198.img"), (s("450HD"), s("3.4.8.198")));
        assert_eq!(
            parsed("UC450HD_3.4.4.1000.69.img"),
            (s("450HD"), s("3.4.4.1000.69"))
        );
        assert_eq!(
            parsed("AudioCodes_UCC450HD_3.4.8.198.1.img"),
            (s("C450HD"), s("3.4.8.198.1"))
        );
        assert_eq!(
            parsed("440HD_2.2.16.501.img"),
            (s("440HD"), s("2.2.16.501"))
        );
        assert_eq!(
            parsed("310HD_1.4.1_build_32.img"),
            (s("310HD"), s("1.4.1_build_32"))
        );
        assert_eq!(parsed("450HD.img"), (s("450HD"), None));
        assert_eq!(parsed("00908f123456.cfg"), (None, None));
    }

    #[test]
    fn hidden_names() {
        for n in [
            ".x.img",
            "a.img~",
            "a.tmp",
            "a.part",
            ".a.swp",
            "4913",
            "a.img.TMP",
            "é.CrDownload",
        ] {
            assert!(is_hidden(n), "{n}");
        }
        for n in [
            "450HD.img",
            "00908f123456.cfg",
            "SHA256SUMS",
            "tmp",
            "swp.é",
        ] {
            assert!(!is_hidden(n), "{n}");
        }
        assert!(path_is_hidden("dir/.git/x"));
    }

    #[test]
    fn mac_keys() {
        assert_eq!(lookup_key("00908F123456.cfg"), "00908f123456.cfg");
        assert_eq!(lookup_key("00:90:8F:12:34:56.cfg"), "00908f123456.cfg");
        assert_eq!(
            lookup_key("cfg/00-90-8f-12-34-56.cfg"),
            "cfg/00908f123456.cfg"
        );
        assert_eq!(
            lookup_key("SEP00-90-8f-12-34-56.cnf.xml"),
            "sep00908f123456.cnf.xml"
        );
        assert_eq!(lookup_key("450HD.img"), "450hd.img");
    }

    #[test]
    fn versions_compare() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("3.4.10", "3.4.8"), Greater);
        assert_eq!(compare_versions("3.4.8", "3.4.8.1"), Less);
        assert_eq!(compare_versions("2.2.16.501", "2.2.16.501"), Equal);
    }
}
