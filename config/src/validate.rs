//! Semantic validation of a parsed [`Config`], and the URL template rules.
//!
//! serde already rejected wrong types and unknown keys; this checks what spans several
//! fields. Errors carry the line of the offending key, found by walking a span-keeping
//! toml_edit parse of the same text (serde's derive does not keep spans).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::{Config, ConfigError};

/// Placeholders provbox expands in URL templates. The phone's own `<MAC>` and `<MODEL>`
/// are different: they are passed through for the phone to expand.
pub const PLACEHOLDERS: [&str; 7] = [
    "server",
    "mac",
    "model",
    "http_port",
    "https_port",
    "ftp_port",
    "tftp_port",
];

/// The appliance-wide values templates may name: the address phones reach provbox at and
/// the ports its file servers listen on. The ports are needed because in loopback and
/// test mode the file servers run on ephemeral ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateVars {
    /// `{server}`: an address or host name. Empty means "the DHCP server's own address",
    /// which the DHCP server fills in once it knows it.
    pub server: String,
    pub http_port: u16,
    pub https_port: u16,
    pub ftp_port: u16,
    pub tftp_port: u16,
}

impl Default for TemplateVars {
    fn default() -> Self {
        Self {
            server: String::new(),
            http_port: 80,
            https_port: 443,
            ftp_port: 21,
            tftp_port: 69,
        }
    }
}

impl TemplateVars {
    /// The values a config file implies: `dhcp.server_ip` and the configured bind ports.
    pub fn from_config(c: &crate::Config) -> Self {
        Self {
            server: c
                .dhcp
                .server_ip
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            http_port: c.http.bind.port(),
            https_port: c.https.bind.port(),
            ftp_port: c.ftp.bind.port(),
            tftp_port: c.tftp.bind.port(),
        }
    }
}

/// Expands provbox's `{...}` placeholders (see [`PLACEHOLDERS`]) in one pass; the phone's
/// own `<MAC>`/`<MODEL>` and any unknown `{name}` stay as they are.
pub fn expand_template(template: &str, vars: &TemplateVars, mac: &str, model: &str) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = &after[..end];
        let mut num = [0u8; 5];
        let value: Option<&str> = match name {
            "server" => Some(&vars.server),
            "mac" => Some(mac),
            "model" => Some(model),
            "http_port" => Some(fmt_port(&mut num, vars.http_port)),
            "https_port" => Some(fmt_port(&mut num, vars.https_port)),
            "ftp_port" => Some(fmt_port(&mut num, vars.ftp_port)),
            "tftp_port" => Some(fmt_port(&mut num, vars.tftp_port)),
            _ => None,
        };
        match value {
            Some(v) => out.push_str(v),
            None => out.push_str(&rest[start..start + end + 2]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Formats a port into `buf` without allocating.
fn fmt_port(buf: &mut [u8; 5], port: u16) -> &str {
    let mut n = port;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// The `{name}` placeholders in a template that provbox does not know.
fn unknown_placeholders(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                if !PLACEHOLDERS.contains(&name) {
                    out.push(format!("{{{name}}}"));
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push("an unclosed `{`".to_string());
                break;
            }
        }
    }
    out
}

/// 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// The line of the key at `path`, or of the deepest ancestor that exists.
fn locate(text: &str, path: &[Seg<'_>]) -> usize {
    let Ok(doc) = toml_edit::Document::parse(text) else {
        return 1;
    };
    walk(text, doc.as_table(), path, 1)
}

fn walk(text: &str, table: &dyn toml_edit::TableLike, path: &[Seg<'_>], mut line: usize) -> usize {
    let Some((Seg::Key(k), rest)) = path.split_first() else {
        return line;
    };
    if let Some(span) = table.key(k).and_then(|key| key.span()) {
        line = line_of(text, span.start);
    }
    match (table.get(k), rest.split_first()) {
        (Some(toml_edit::Item::ArrayOfTables(a)), Some((Seg::Index(i), rest))) => match a.get(*i) {
            Some(t) => {
                if let Some(span) = t.span() {
                    line = line_of(text, span.start);
                }
                walk(text, t, rest, line)
            }
            None => line,
        },
        (Some(item), _) => match item.as_table_like() {
            Some(t) => walk(text, t, rest, line),
            None => line,
        },
        (None, _) => line,
    }
}

struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, path: &[Seg<'_>], message: impl Into<String>) -> ConfigError {
        let field = path
            .iter()
            .map(|s| match s {
                Seg::Key(k) => k.to_string(),
                Seg::Index(i) => format!("[{i}]"),
            })
            .collect::<Vec<_>>()
            .join(".")
            .replace(".[", "[");
        ConfigError::Invalid {
            file: self.file.to_string(),
            line: locate(self.text, path),
            field,
            message: message.into(),
        }
    }
}

/// Checks everything serde cannot.
pub(crate) fn validate(c: &Config, text: &str, file: &str, base: &Path) -> Result<(), ConfigError> {
    let cx = Ctx { text, file };
    use Seg::{Index, Key};

    // DHCP: pool, subnet, reservations, templates, options.
    let d = &c.dhcp;
    if let Some(pool) = d.pool {
        match d.effective_subnet() {
            None => {
                return Err(cx.err(
                    &[Key("dhcp"), Key("subnet_mask")],
                    "the subnet mask is not contiguous; write e.g. \"255.255.255.0\"",
                ));
            }
            Some(net) => {
                if !net.contains(pool.first) || !net.contains(pool.last) {
                    return Err(cx.err(
                        &[Key("dhcp"), Key("pool")],
                        format!(
                            "the pool {pool} lies outside its subnet {net}; set `subnet` (or `server_ip` and `subnet_mask`) to the network the pool belongs to, or move the pool"
                        ),
                    ));
                }
            }
        }
    }
    let mut by_mac = HashMap::new();
    let mut by_ip = HashMap::new();
    for (i, r) in d.reservations.iter().enumerate() {
        if let Some(prev) = by_mac.insert(r.mac, i) {
            return Err(cx.err(
                &[Key("dhcp"), Key("reservation"), Index(i), Key("mac")],
                format!(
                    "MAC {} is already reserved by reservation #{}; keep one",
                    r.mac,
                    prev + 1
                ),
            ));
        }
        if let Some(prev) = by_ip.insert(r.ip, i) {
            return Err(cx.err(
                &[Key("dhcp"), Key("reservation"), Index(i), Key("ip")],
                format!("address {} is already reserved by reservation #{}; give each MAC its own address", r.ip, prev + 1),
            ));
        }
        if let Some(net) = d.effective_subnet()
            && !net.contains(r.ip)
        {
            return Err(cx.err(
                &[Key("dhcp"), Key("reservation"), Index(i), Key("ip")],
                format!("address {} is outside the subnet {net}", r.ip),
            ));
        }
    }
    let check_template = |path: &[Seg<'_>], t: &Option<String>| -> Result<(), ConfigError> {
        if let Some(t) = t {
            let bad = unknown_placeholders(t);
            if !bad.is_empty() {
                return Err(cx.err(
                    path,
                    format!(
                        "unknown placeholder {} in \"{t}\"; provbox expands {{server}}, {{mac}}, {{model}}, {{http_port}}, {{https_port}}, {{ftp_port}} and {{tftp_port}}, and passes the phone's own <MAC> and <MODEL> through",
                        bad.join(", ")
                    ),
                ));
            }
            if t.bytes().any(|b| b == 0) {
                return Err(cx.err(path, "the value contains a NUL byte"));
            }
        }
        Ok(())
    };
    check_template(&[Key("dhcp"), Key("provisioning_url")], &d.provisioning_url)?;
    check_template(&[Key("dhcp"), Key("tftp_server")], &d.tftp_server)?;
    check_template(&[Key("dhcp"), Key("boot_file")], &d.boot_file)?;
    if let Some(url) = &d.provisioning_url {
        check_scheme(&cx, &[Key("dhcp"), Key("provisioning_url")], url)?;
    }
    for (i, p) in d.policies.iter().enumerate() {
        check_template(
            &[
                Key("dhcp"),
                Key("policy"),
                Index(i),
                Key("provisioning_url"),
            ],
            &p.provisioning_url,
        )?;
        check_template(
            &[Key("dhcp"), Key("policy"), Index(i), Key("tftp_server")],
            &p.tftp_server,
        )?;
        check_template(
            &[Key("dhcp"), Key("policy"), Index(i), Key("boot_file")],
            &p.boot_file,
        )?;
        if let Some(url) = &p.provisioning_url {
            check_scheme(
                &cx,
                &[
                    Key("dhcp"),
                    Key("policy"),
                    Index(i),
                    Key("provisioning_url"),
                ],
                url,
            )?;
        }
        if p.matcher.is_empty() {
            return Err(cx.err(
                &[Key("dhcp"), Key("policy"), Index(i), Key("match")],
                "a policy needs at least one match field (vendor_class, user_class, model, mac, mac_prefix, circuit_id, remote_id); put catch-all settings in [dhcp] itself",
            ));
        }
        for (j, o) in p.options.iter().enumerate() {
            check_option(
                &cx,
                &[
                    Key("dhcp"),
                    Key("policy"),
                    Index(i),
                    Key("option"),
                    Index(j),
                ],
                o,
            )?;
        }
    }
    for (j, o) in d.options.iter().enumerate() {
        check_option(&cx, &[Key("dhcp"), Key("option"), Index(j)], o)?;
    }
    if d.lease_time.get().as_secs() < 10 {
        return Err(cx.err(
            &[Key("dhcp"), Key("lease_time")],
            "a lease shorter than 10s is not useful; write e.g. \"1h\"",
        ));
    }
    let (t1, t2) = d.timers();
    if !(t1 < t2 && t2 < d.lease_time.get()) {
        return Err(cx.err(
            &[Key("dhcp"), Key("renew_time")],
            "renew_time (T1) must be shorter than rebind_time (T2), which must be shorter than lease_time",
        ));
    }

    // TFTP limits.
    if !(8..=65464).contains(&c.tftp.max_blksize) {
        return Err(cx.err(
            &[Key("tftp"), Key("max_blksize")],
            "blksize must be 8-65464 (RFC 2348)",
        ));
    }
    if c.tftp.max_windowsize == 0 {
        return Err(cx.err(
            &[Key("tftp"), Key("max_windowsize")],
            "windowsize must be at least 1",
        ));
    }
    for (i, q) in c.tftp.quirks.iter().enumerate() {
        let at = |f| [Key("tftp"), Key("quirk"), Index(i), Key(f)];
        if q.model.trim().is_empty() {
            return Err(cx.err(&at("model"), "name the phone model, e.g. \"420HD\""));
        }
        if q.max_blksize.is_some_and(|b| !(8..=65464).contains(&b)) {
            return Err(cx.err(&at("max_blksize"), "blksize must be 8-65464 (RFC 2348)"));
        }
        if q.max_windowsize == Some(0) {
            return Err(cx.err(&at("max_windowsize"), "windowsize must be at least 1"));
        }
    }

    // API token when exposed.
    if c.api.enabled
        && !c.api.bind.ip().is_loopback()
        && c.api.token.as_deref().is_none_or(str::is_empty)
    {
        return Err(cx.err(
            &[Key("api"), Key("bind")],
            format!(
                "the API is bound to {}, beyond loopback: set `token` so that only holders of it can read the fleet",
                c.api.bind
            ),
        ));
    }

    // FTP users.
    for (i, u) in c.ftp.users.iter().enumerate() {
        let ok = u
            .password_hash
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(cx.err(
                &[Key("ftp"), Key("user"), Index(i), Key("password_hash")],
                "write \"sha256:<64 hex digits>\" (e.g. from `printf %s PASSWORD | sha256sum`)",
            ));
        }
    }

    // Certificates must be readable now, not at the first handshake.
    match (&c.https.cert, &c.https.key) {
        (Some(_), None) | (None, Some(_)) => {
            return Err(cx.err(
                &[Key("https"), Key("cert")],
                "set both `cert` and `key`, or neither (a certificate is then generated)",
            ));
        }
        (Some(cert), Some(key)) if c.https.enabled || c.ftp.ftps => {
            for (name, p) in [("cert", cert), ("key", key)] {
                let full = if p.is_absolute() {
                    p.clone()
                } else {
                    base.join(p)
                };
                if let Err(e) = std::fs::File::open(&full) {
                    return Err(cx.err(
                        &[Key("https"), Key(name)],
                        format!(
                            "cannot read {}: {e}; give a readable PEM file",
                            full.display()
                        ),
                    ));
                }
            }
        }
        _ => {}
    }

    // Two services on one port.
    let mut seen: Vec<(&str, &str, SocketAddr)> = Vec::new();
    let services: [(&str, &str, bool, SocketAddr); 6] = [
        ("dhcp", "udp", c.dhcp.enabled, c.dhcp.bind),
        ("tftp", "udp", c.tftp.enabled, c.tftp.bind),
        ("ftp", "tcp", c.ftp.enabled, c.ftp.bind),
        ("http", "tcp", c.http.enabled, c.http.bind),
        ("https", "tcp", c.https.enabled, c.https.bind),
        ("api", "tcp", c.api.enabled, c.api.bind),
    ];
    for (name, proto, enabled, addr) in services {
        if !enabled || addr.port() == 0 {
            continue;
        }
        for (other, oproto, oaddr) in &seen {
            if *oproto == proto && oaddr.port() == addr.port() && overlaps(oaddr.ip(), addr.ip()) {
                return Err(cx.err(
                    &[Key(name), Key("bind")],
                    format!("{proto} port {} is already used by [{other}] ({oaddr}); pick another port or disable one", addr.port()),
                ));
            }
        }
        seen.push((name, proto, addr));
    }
    if c.ftp.enabled && c.ftp.passive_ports.contains(c.ftp.bind.port()) {
        return Err(cx.err(
            &[Key("ftp"), Key("passive_ports")],
            "the passive range includes the control port",
        ));
    }
    Ok(())
}

fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}

fn check_scheme(cx: &Ctx<'_>, path: &[Seg<'_>], url: &str) -> Result<(), ConfigError> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("http" | "https" | "ftp" | "tftp") => Ok(()),
        _ => Err(cx.err(path, format!("\"{url}\" must start with http://, https://, ftp:// or tftp:// (option 160 grammar)"))),
    }
}

fn check_option(
    cx: &Ctx<'_>,
    path: &[Seg<'_>],
    o: &crate::CustomOption,
) -> Result<(), ConfigError> {
    let n =
        usize::from(o.text.is_some()) + usize::from(o.ip.is_some()) + usize::from(o.hex.is_some());
    if n != 1 {
        return Err(cx.err(
            path,
            format!(
                "option {} needs exactly one of `text`, `ip` or `hex`",
                o.code
            ),
        ));
    }
    if matches!(o.code, 0 | 255 | 53 | 54 | 50 | 51 | 55 | 61 | 82) {
        return Err(cx.err(
            path,
            format!(
                "option {} is managed by the server itself and cannot be set here",
                o.code
            ),
        ));
    }
    if let Some(h) = &o.hex
        && hex::decode(h.replace([':', ' '], "")).is_err()
    {
        return Err(cx.err(
            path,
            format!("`hex` for option {} is not hex: \"{h}\"", o.code),
        ));
    }
    Ok(())
}
