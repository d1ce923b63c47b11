//! Provisioning URLs as a phone derives them: DHCP option 160 in its four grammars,
//! the option 66/67 table, `<MAC>`/`<MODEL>` placeholders, default file names and
//! directory URLs (phone-behaviour.md §2.4, §2.5, §3).
//!
//! URLs may carry a port (`https://127.0.0.1:43123/450HD.img;<MAC>.cfg`) because in
//! demos and tests the servers run on ephemeral ports. A TFTP URL without a port uses
//! the simulator's `--tftp-port` (69 unless set).

use std::fmt;

use thiserror::Error;

/// The four schemes a phone accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Tftp,
    Ftp,
    Http,
    Https,
}

impl Scheme {
    pub fn parse(s: &str) -> Option<Scheme> {
        match s.to_ascii_lowercase().as_str() {
            "tftp" => Some(Scheme::Tftp),
            "ftp" => Some(Scheme::Ftp),
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Tftp => "tftp",
            Scheme::Ftp => "ftp",
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Tftp => 69,
            Scheme::Ftp => 21,
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Why a URL could not be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum UrlError {
    #[error("`{0}`: no scheme (expected tftp://, ftp://, http:// or https://)")]
    NoScheme(String),
    #[error("`{url}`: unsupported scheme `{scheme}` (a phone accepts tftp, ftp, http, https)")]
    Scheme { url: String, scheme: String },
    #[error("`{0}`: no host")]
    NoHost(String),
    #[error("`{0}`: bad port")]
    Port(String),
}

/// One file URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvUrl {
    pub scheme: Scheme,
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// Always starts with `/`.
    pub path: String,
}

impl ProvUrl {
    /// Parses `scheme://[user[:pass]@]host[:port][/path]`.
    pub fn parse(s: &str) -> Result<ProvUrl, UrlError> {
        let s = s.trim();
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(UrlError::NoScheme(s.to_string()));
        };
        let scheme = Scheme::parse(scheme).ok_or_else(|| UrlError::Scheme {
            url: s.to_string(),
            scheme: scheme.to_string(),
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((a, b)) => (Some(a.to_string()), Some(b.to_string())),
                None => (Some(u.to_string()), None),
            },
            None => (None, None),
        };
        let (host, port) =
            split_host_port(hostport).ok_or_else(|| UrlError::Port(s.to_string()))?;
        if host.is_empty() {
            return Err(UrlError::NoHost(s.to_string()));
        }
        Ok(ProvUrl {
            scheme,
            user,
            password,
            host,
            port,
            path: path.to_string(),
        })
    }

    /// The port to connect to; TFTP URLs without one use `tftp_port`.
    pub fn port_or(&self, tftp_port: u16) -> u16 {
        self.port.unwrap_or(match self.scheme {
            Scheme::Tftp => tftp_port,
            s => s.default_port(),
        })
    }

    /// `true` when the path names a directory (ends with `/`).
    pub fn is_dir(&self) -> bool {
        self.path.ends_with('/')
    }

    /// The directory part of the path, ending with `/`.
    pub fn dir(&self) -> &str {
        match self.path.rfind('/') {
            Some(i) => &self.path[..=i],
            None => "/",
        }
    }

    /// This URL with another path.
    pub fn with_path(&self, path: String) -> ProvUrl {
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        ProvUrl {
            path,
            ..self.clone()
        }
    }

    /// A file name appended to a directory URL; a file URL is returned as is.
    pub fn or_default_file(&self, name: &str) -> ProvUrl {
        if self.is_dir() {
            self.with_path(format!("{}{}", self.path, name))
        } else {
            self.clone()
        }
    }

    /// Resolves `reference` (an absolute URL, an absolute path or a relative name)
    /// against this URL, as `include` lines and redirects need.
    pub fn join(&self, reference: &str) -> Result<ProvUrl, UrlError> {
        let r = reference.trim();
        if r.contains("://") {
            ProvUrl::parse(r)
        } else if r.starts_with('/') {
            Ok(self.with_path(r.to_string()))
        } else {
            Ok(self.with_path(format!("{}{}", self.dir(), r)))
        }
    }

    /// `host[:port]` for the HTTP Host header.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) if p != self.scheme.default_port() => format!("{host}:{p}"),
            _ => host,
        }
    }
}

fn split_host_port(hp: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = hp.strip_prefix('[') {
        // [v6]:port
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((h.to_string(), port));
    }
    match hp.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), Some(p.parse().ok()?))),
        None => Some((hp.to_string(), None)),
    }
}

impl fmt::Display for ProvUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        if let Some(u) = &self.user {
            // Never print a password.
            write!(f, "{u}@")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        f.write_str(&self.path)
    }
}

/// Where a phone's URLs came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum UrlSource {
    #[serde(rename = "160")]
    Option160,
    #[serde(rename = "66/67")]
    Option66,
    #[serde(rename = "static")]
    Static,
}

/// The firmware and config URLs of one provisioning pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvUrls {
    pub firmware: ProvUrl,
    pub config: ProvUrl,
    pub source: UrlSource,
}

/// Replaces `<MAC>` and `<MODEL>` (any case) in `s`. `mac` is already in the phone's
/// MAC case.
pub fn substitute(s: &str, model: &str, mac: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    let mut rest = s;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        // `get` rather than indexing: the text comes off the wire and may hold
        // multi-byte characters right after the `<`.
        if tail
            .get(..5)
            .is_some_and(|h| h.eq_ignore_ascii_case("<MAC>"))
        {
            out.push_str(mac);
            rest = &tail[5..];
        } else if tail
            .get(..7)
            .is_some_and(|h| h.eq_ignore_ascii_case("<MODEL>"))
        {
            out.push_str(model);
            rest = &tail[7..];
        } else {
            out.push('<');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Default firmware file name: `<model>.img`.
pub fn default_firmware(model: &str) -> String {
    format!("{model}.img")
}

/// Default config file name: `<MAC>.cfg` in the phone's MAC case.
pub fn default_config(mac: &str) -> String {
    format!("{mac}.cfg")
}

/// Option 160 (phone-behaviour.md §2.4):
/// - `<proto>://<host>` → `<host>/<model>.img`, `<host>/<MAC>.cfg`
/// - `<proto>://<host>/<fw>` → that firmware, `<MAC>.cfg` beside it
/// - `<proto>://<host>/<fw>;<cfg>` → both named (placeholders allowed)
/// - `<proto>://<host>/;<cfg>` → default firmware, named config
///
/// Also (ASSUMED): a directory before the file name is honoured, a directory URL gets
/// both default names, whitespace around `;` is trimmed, trailing NULs are ignored.
pub fn from_option160(text: &str, model: &str, mac: &str) -> Result<ProvUrls, UrlError> {
    let text = text.trim_end_matches('\0').trim();
    let text = substitute(text, model, mac);
    let (fw_part, cfg_part) = match text.split_once(';') {
        Some((a, b)) => (a.trim().to_string(), Some(b.trim().to_string())),
        None => (text.clone(), None),
    };
    let fw = ProvUrl::parse(&fw_part)?;
    let firmware = fw.or_default_file(&default_firmware(model));
    let config = match cfg_part.as_deref() {
        None | Some("") => fw.with_path(format!("{}{}", firmware.dir(), default_config(mac))),
        Some(c) => firmware.join(c)?.or_default_file(&default_config(mac)),
    };
    Ok(ProvUrls {
        firmware,
        config,
        source: UrlSource::Option160,
    })
}

/// The option 66/67 table (phone-behaviour.md §2.5). `None` when option 66 is absent
/// or empty.
pub fn from_66_67(
    opt66: Option<&str>,
    opt67: Option<&str>,
    model: &str,
    mac: &str,
) -> Result<Option<ProvUrls>, UrlError> {
    let Some(o66) = opt66
        .map(|s| s.trim_end_matches('\0').trim())
        .filter(|s| !s.is_empty())
    else {
        return Ok(None);
    };
    let o67 = opt67
        .map(|s| s.trim_end_matches('\0').trim())
        .filter(|s| !s.is_empty());
    let base = if o66.contains("://") {
        let u = ProvUrl::parse(o66)?;
        // `http://host/abc.img;efg.cfg` in 66: 67 is ignored.
        if u.path != "/" || o66.contains(';') {
            let mut urls = from_option160(o66, model, mac)?;
            urls.source = UrlSource::Option66;
            return Ok(Some(urls));
        }
        u
    } else {
        // No scheme: TFTP to that host (and port, if given).
        ProvUrl::parse(&format!("tftp://{}", o66.trim_end_matches('/')))?
    };
    let root = base.with_path("/".to_string());
    let spec = match o67 {
        Some(f) => format!("{}{}", root, f.trim_start_matches('/')),
        None => root.to_string(),
    };
    let mut urls = from_option160(&spec, model, mac)?;
    // from_option160 drops credentials only if absent in `spec`; keep the base's.
    urls.firmware.user.clone_from(&base.user);
    urls.firmware.password.clone_from(&base.password);
    urls.config.user.clone_from(&base.user);
    urls.config.password.clone_from(&base.password);
    urls.source = UrlSource::Option66;
    Ok(Some(urls))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn s(u: &ProvUrl) -> String {
        u.to_string()
    }

    #[test]
    fn option160_grammars() {
        let mac = "00908f123456";
        let u = from_option160("ftp://192.168.2.1", "440HD", mac).unwrap();
        assert_eq!(s(&u.firmware), "ftp://192.168.2.1/440HD.img");
        assert_eq!(s(&u.config), "ftp://192.168.2.1/00908f123456.cfg");

        let u = from_option160("http://h/fw_1.img", "440HD", mac).unwrap();
        assert_eq!(s(&u.firmware), "http://h/fw_1.img");
        assert_eq!(s(&u.config), "http://h/00908f123456.cfg");

        let u = from_option160("tftp://h/440HD.img; <MODEL>_<MAC>_conf.cfg", "440HD", mac).unwrap();
        assert_eq!(s(&u.firmware), "tftp://h/440HD.img");
        assert_eq!(s(&u.config), "tftp://h/440HD_00908f123456_conf.cfg");

        let u = from_option160(
            "https://127.0.0.1:43123/;<MAC>.cfg",
            "450HD",
            "00908F123456",
        )
        .unwrap();
        assert_eq!(s(&u.firmware), "https://127.0.0.1:43123/450HD.img");
        assert_eq!(s(&u.config), "https://127.0.0.1:43123/00908F123456.cfg");
        assert_eq!(u.firmware.port, Some(43123));

        let u = from_option160(
            "https://127.0.0.1:43123/450HD.img;<MAC>.cfg\0",
            "450HD",
            mac,
        )
        .unwrap();
        assert_eq!(s(&u.config), "https://127.0.0.1:43123/00908f123456.cfg");

        // Directory URL and a path before the file.
        let u = from_option160("http://h/phones/", "445HD", mac).unwrap();
        assert_eq!(s(&u.firmware), "http://h/phones/445HD.img");
        assert_eq!(s(&u.config), "http://h/phones/00908f123456.cfg");
        let u = from_option160("http://u:p@h/fw/x.img;cfg/<MAC>.cfg", "445HD", mac).unwrap();
        assert_eq!(s(&u.config), "http://u@h/fw/cfg/00908f123456.cfg");
        assert_eq!(u.config.password.as_deref(), Some("p"));

        assert!(matches!(
            from_option160("gopher://h", "x", mac),
            Err(UrlError::Scheme { .. })
        ));
        assert!(matches!(
            from_option160("h/x.img", "x", mac),
            Err(UrlError::NoScheme(_))
        ));
        assert!(matches!(
            from_option160("http://h:99999/", "x", mac),
            Err(UrlError::Port(_))
        ));
    }

    #[test]
    fn option66_67_table() {
        let mac = "00908f123456";
        assert_eq!(from_66_67(None, Some("a.img"), "440HD", mac), Ok(None));
        assert_eq!(from_66_67(Some(""), None, "440HD", mac), Ok(None));

        let u = from_66_67(Some("10.0.0.1"), None, "440HD", mac)
            .unwrap()
            .unwrap();
        assert_eq!(s(&u.firmware), "tftp://10.0.0.1/440HD.img");
        assert_eq!(s(&u.config), "tftp://10.0.0.1/00908f123456.cfg");
        assert_eq!(u.firmware.port_or(6969), 6969);
        assert_eq!(u.source, UrlSource::Option66);

        let u = from_66_67(Some("10.0.0.1"), Some("abc.img;efg.cfg"), "440HD", mac)
            .unwrap()
            .unwrap();
        assert_eq!(s(&u.firmware), "tftp://10.0.0.1/abc.img");
        assert_eq!(s(&u.config), "tftp://10.0.0.1/efg.cfg");

        let u = from_66_67(
            Some("127.0.0.1:20069"),
            Some("440HD_2.2.2.img"),
            "440HD",
            mac,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s(&u.firmware), "tftp://127.0.0.1:20069/440HD_2.2.2.img");

        let u = from_66_67(Some("http://h"), None, "440HD", mac)
            .unwrap()
            .unwrap();
        assert_eq!(s(&u.firmware), "http://h/440HD.img");
        assert_eq!(s(&u.config), "http://h/00908f123456.cfg");

        let u = from_66_67(Some("http://h"), Some("abc.img;efg.cfg"), "440HD", mac)
            .unwrap()
            .unwrap();
        assert_eq!(s(&u.firmware), "http://h/abc.img");
        assert_eq!(s(&u.config), "http://h/efg.cfg");

        let u = from_66_67(
            Some("http://h/abc.img;efg.cfg"),
            Some("ignored.img"),
            "440HD",
            mac,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s(&u.firmware), "http://h/abc.img");
        assert_eq!(s(&u.config), "http://h/efg.cfg");
    }

    #[test]
    fn placeholders_and_join() {
        assert_eq!(
            substitute("<model>_<Mac>.cfg <x>", "450HD", "AA"),
            "450HD_AA.cfg <x>"
        );
        let base = ProvUrl::parse("https://h:8443/a/b/main.cfg").unwrap();
        assert_eq!(
            s(&base.join("inc.cfg").unwrap()),
            "https://h:8443/a/b/inc.cfg"
        );
        assert_eq!(s(&base.join("/top.cfg").unwrap()), "https://h:8443/top.cfg");
        assert_eq!(s(&base.join("ftp://x/y.cfg").unwrap()), "ftp://x/y.cfg");
        assert_eq!(base.host_header(), "h:8443");
    }
}
