//! `provbox export-dhcp`: the `[dhcp]` section of a provbox config (subnet, pool,
//! standard options, policies in order, reservations, extra options) written as
//! configuration for a lab's own DHCP server, for labs that keep ISC dhcpd, Kea or
//! dnsmasq and use provbox only for files and the phone timeline.
//!
//! Semantics kept from provbox's own DHCP server:
//! - **first match wins**: policy *n*'s class also requires that no earlier policy
//!   matched, and the `[dhcp]` defaults form a class of clients no policy matched (a
//!   matched policy replaces the defaults as a whole);
//! - text matches are case-insensitive substrings unless `exact = true`;
//! - option 160 goes only to clients that ask for it (option 55) unless `force_160`;
//!   66/67 are always sent;
//! - `{server}` and the port placeholders are expanded now; `{mac}` and `{model}` become
//!   the server's own per-client expression where it has one, else the phone's own
//!   `<MAC>`/`<MODEL>` (which an AudioCodes phone expands itself in option 160), with a
//!   comment saying so.
//!
//! Where a server cannot say exactly what provbox means, the output says how it
//! approximates (Kea 2.2 has no case-insensitive "contains": every offset of the first
//! [`KEA_SCAN`] bytes is compared as written, in upper and in lower case; dnsmasq has
//! no exact match for option 60/77 and only exact matches for option 82).
//!
//! Each output is checked by the real server's own config check in
//! `tests/tests/export_dhcp.rs` (`dhcpd -t`, `kea-dhcp4 -t`, `dnsmasq --test`).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use provbox_config::{Config, CustomOption, MacPrefix, Match};
use serde_json::{Value, json};

/// The DHCP servers provbox can export to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// ISC dhcpd (dhcpd.conf): classes with `match if`.
    Isc,
    /// ISC Kea (kea-dhcp4.conf JSON): client-classes with `test` expressions.
    Kea,
    /// dnsmasq (a file for /etc/dnsmasq.d): tags and `tag-if`.
    Dnsmasq,
}

#[derive(Debug, clap::Args)]
pub struct ExportDhcpArgs {
    /// The provbox config whose [dhcp] section is exported (PROVBOX_* overrides apply).
    #[arg(short, long, env = "PROVBOX_CONFIG")]
    pub config: Option<PathBuf>,
    /// The DHCP server to write configuration for.
    #[arg(long, value_enum)]
    pub format: Format,
    /// The address phones reach provbox's file servers at ({server} in templates);
    /// defaults to [dhcp] server_ip.
    #[arg(long)]
    pub server: Option<String>,
    /// Write here instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Where Kea's hook libraries are (for libdhcp_flex_option.so, used when a
    /// template needs the client's MAC or model).
    #[arg(long, default_value = DEFAULT_KEA_HOOKS)]
    pub kea_hooks_dir: PathBuf,
}

/// Debian's (and Ubuntu's) multiarch location of Kea's hooks.
pub const DEFAULT_KEA_HOOKS: &str = if cfg!(target_arch = "aarch64") {
    "/usr/lib/aarch64-linux-gnu/kea/hooks"
} else {
    "/usr/lib/x86_64-linux-gnu/kea/hooks"
};

/// Kea 2.2 has no "contains": a substring match compares every offset below this.
pub const KEA_SCAN: usize = 64;

/// Runs `provbox export-dhcp`. A bad provbox config exits 64 like `serve`.
pub async fn run(args: ExportDhcpArgs) -> anyhow::Result<ExitCode> {
    let config = match Config::load_with_env(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("provbox: {e}");
            return Ok(ExitCode::from(64));
        }
    };
    let source = args
        .config
        .as_ref()
        .map_or("built-in defaults".to_string(), |p| p.display().to_string());
    let text = render(
        &config,
        &Options {
            format: args.format,
            server: args.server.clone(),
            source,
            kea_hooks_dir: args.kea_hooks_dir.clone(),
        },
    )?;
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// What to render.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: Format,
    /// `{server}`; `[dhcp] server_ip` when `None`.
    pub server: Option<String>,
    /// Named in the output's header.
    pub source: String,
    pub kea_hooks_dir: PathBuf,
}

/// One piece of a template after provbox's own placeholders are expanded.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Mac,
    Model,
}

/// A provisioning option of a class: code, the template's parts, and whether it is
/// sent even when not asked for.
#[derive(Debug, Clone)]
struct ProvOption {
    code: u8,
    parts: Vec<Part>,
    always: bool,
}

/// A policy (or the defaults) as a server-neutral class.
#[derive(Debug, Clone)]
struct Class {
    /// `provbox-1`…, `provbox-default`.
    id: String,
    /// The policy's name, for comments.
    title: String,
    /// `None`: the defaults (clients no policy matched).
    matcher: Option<Match>,
    /// The model `{model}` stands for when the policy itself names one.
    pinned_model: Option<String>,
    prov: Vec<ProvOption>,
    options: Vec<CustomOption>,
}

/// Renders the `[dhcp]` section of `config` for one server.
pub fn render(config: &Config, opts: &Options) -> anyhow::Result<String> {
    let d = &config.dhcp;
    let server = opts
        .server
        .clone()
        .or_else(|| d.server_ip.map(|i| i.to_string()));
    let ports = [
        ("http_port", config.http.bind.port()),
        ("https_port", config.https.bind.port()),
        ("ftp_port", config.ftp.bind.port()),
        ("tftp_port", config.tftp.bind.port()),
    ];
    let tpl = |field: String, t: &Option<String>| -> anyhow::Result<Option<Vec<Part>>> {
        t.as_deref()
            .map(|t| parse_template(t, server.as_deref(), &ports, &field))
            .transpose()
    };
    let prov = |prefix: &str,
                url: &Option<String>,
                tftp: &Option<String>,
                boot: &Option<String>,
                force_160: bool|
     -> anyhow::Result<Vec<ProvOption>> {
        let mut out = Vec::new();
        if let Some(parts) = tpl(format!("{prefix}.provisioning_url"), url)? {
            out.push(ProvOption {
                code: 160,
                parts,
                always: force_160,
            });
        }
        if let Some(parts) = tpl(format!("{prefix}.tftp_server"), tftp)? {
            out.push(ProvOption {
                code: 66,
                parts,
                always: true,
            });
        }
        if let Some(parts) = tpl(format!("{prefix}.boot_file"), boot)? {
            out.push(ProvOption {
                code: 67,
                parts,
                always: true,
            });
        }
        Ok(out)
    };
    let mut classes = Vec::new();
    for (i, p) in d.policies.iter().enumerate() {
        let m = &p.matcher;
        classes.push(Class {
            id: format!("provbox-{}", i + 1),
            title: p.display_name(i),
            matcher: Some(m.clone()),
            pinned_model: m
                .model
                .clone()
                .or_else(|| m.vendor_class.clone())
                .or_else(|| m.user_class.clone()),
            prov: prov(
                &format!("dhcp.policy[{i}]"),
                &p.provisioning_url,
                &p.tftp_server,
                &p.boot_file,
                p.force_160,
            )?,
            options: p.options.clone(),
        });
    }
    let defaults = Class {
        id: "provbox-default".to_string(),
        title: "[dhcp] defaults (no policy matched)".to_string(),
        matcher: None,
        pinned_model: None,
        prov: prov(
            "dhcp",
            &d.provisioning_url,
            &d.tftp_server,
            &d.boot_file,
            false,
        )?,
        options: Vec::new(),
    };
    if !defaults.prov.is_empty() {
        classes.push(defaults);
    }
    let ctx = Ctx {
        config,
        classes,
        opts,
    };
    Ok(match opts.format {
        Format::Isc => isc(&ctx),
        Format::Kea => kea(&ctx)?,
        Format::Dnsmasq => dnsmasq(&ctx),
    })
}

struct Ctx<'a> {
    config: &'a Config,
    classes: Vec<Class>,
    opts: &'a Options,
}

impl Ctx<'_> {
    fn header(&self, prefix: &str) -> String {
        let mut h = String::new();
        let _ = writeln!(
            h,
            "{prefix} Generated by provbox {} export-dhcp from {}.",
            env!("CARGO_PKG_VERSION"),
            self.opts.source
        );
        for line in [
            "Policies become classes in the same order; first match wins: each class also",
            "requires that no earlier one matched, and the [dhcp] defaults apply only to",
            "clients no policy matched. Option 160 goes to clients that ask for it (option 55)",
            "unless the policy sets force_160; options 66 and 67 are always sent.",
        ] {
            let _ = writeln!(h, "{prefix} {line}");
        }
        h
    }
    fn policies(&self) -> impl Iterator<Item = &Class> {
        self.classes.iter().filter(|c| c.matcher.is_some())
    }
}

/// Splits a template into literal text and the per-client `{mac}`/`{model}`, expanding
/// `{server}` and the port placeholders.
fn parse_template(
    t: &str,
    server: Option<&str>,
    ports: &[(&str, u16)],
    field: &str,
) -> anyhow::Result<Vec<Part>> {
    let mut parts: Vec<Part> = Vec::new();
    let mut lit = String::new();
    let mut rest = t;
    while let Some(start) = rest.find('{') {
        lit.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            lit.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = &after[..end];
        match name {
            "server" => match server {
                Some(s) => lit.push_str(s),
                None => bail!(
                    "`{field}` (\"{t}\") uses {{server}}, but no address is known: pass --server ADDRESS (where phones reach provbox) or set [dhcp] server_ip (PROVBOX_DHCP_SERVER_IP)"
                ),
            },
            "mac" | "model" => {
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(if name == "mac" {
                    Part::Mac
                } else {
                    Part::Model
                });
            }
            other => match ports.iter().find(|(n, _)| *n == other) {
                Some((_, port)) => {
                    let _ = write!(lit, "{port}");
                }
                None => lit.push_str(&rest[start..start + end + 2]),
            },
        }
        rest = &after[end + 1..];
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Ok(parts)
}

/// The parts with `{model}` pinned to the policy's own model where it names one.
fn pin(parts: &[Part], pinned: Option<&str>) -> Vec<Part> {
    parts
        .iter()
        .map(|p| match (p, pinned) {
            (Part::Model, Some(m)) => Part::Lit(m.to_string()),
            _ => p.clone(),
        })
        .collect()
}

/// The parts with per-client placeholders replaced by the phone's own `<MAC>`/`<MODEL>`.
fn phone_placeholders(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Lit(s) => s.as_str(),
            Part::Mac => "<MAC>",
            Part::Model => "<MODEL>",
        })
        .collect()
}

fn is_static(parts: &[Part]) -> bool {
    parts.iter().all(|p| matches!(p, Part::Lit(_)))
}

fn option_name(code: u8) -> &'static str {
    match code {
        160 => "provisioning URL (160)",
        66 => "TFTP server (66)",
        _ => "boot file (67)",
    }
}

/// Variants tried for a case-insensitive match where the server compares bytes exactly.
fn case_variants(s: &str) -> Vec<String> {
    let mut v = vec![
        s.to_string(),
        s.to_ascii_uppercase(),
        s.to_ascii_lowercase(),
    ];
    v.dedup();
    let mut seen = Vec::new();
    v.retain(|x| {
        let new = !seen.contains(x);
        seen.push(x.clone());
        new
    });
    v
}

fn mac_colons(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------- ISC

/// A string literal for dhcpd.conf.
fn isc_str(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\{b:03o}");
            }
        }
    }
    out.push('"');
    out
}

/// A POSIX ERE matching `s` literally.
fn ere_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.[]()*+?{}|^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A never-null test of a text option against a pattern (`~~` is dhcpd's
/// case-insensitive regex match; a missing option is read as "" so that `not` works:
/// dhcpd's `not` and `and` turn a missing value into null, which no class matches).
fn isc_text(src: &str, pat: &str, exact: bool, rfc3004: bool) -> String {
    let body = ere_escape(pat);
    let re = if exact {
        // provbox trims blanks (and NULs, where regexec stops anyway) before comparing;
        // option 77 may carry RFC 3004 framing: one length byte before the text.
        let frame = match u8::try_from(pat.len()) {
            // The length byte may be a regex metacharacter ('.' is 46): escape it.
            Ok(n) if rfc3004 && n > 0 => format!("({})?", ere_escape(&char::from(n).to_string())),
            _ => String::new(),
        };
        format!("^{frame}[[:space:]]*{body}[[:space:]]*$")
    } else {
        body
    };
    format!("(pick-first-value({src}, \"\") ~~ {})", isc_str(&re))
}

/// The atoms (ANDed) of a matcher.
fn isc_atoms(m: &Match) -> Vec<String> {
    const VC: &str = "option vendor-class-identifier";
    const UC: &str = "option user-class";
    let mut a = Vec::new();
    if let Some(p) = &m.vendor_class {
        a.push(isc_text(VC, p, m.exact, false));
    }
    if let Some(p) = &m.user_class {
        a.push(isc_text(UC, p, m.exact, true));
    }
    if let Some(p) = &m.model {
        a.push(format!(
            "({} or {})",
            isc_text(VC, p, m.exact, false),
            isc_text(UC, p, m.exact, true)
        ));
    }
    if let Some(mac) = &m.mac {
        a.push(format!(
            "(substring(hardware, 1, 6) = {})",
            mac_colons(&mac.0)
        ));
    }
    if let Some(MacPrefix(p)) = &m.mac_prefix {
        a.push(format!(
            "(substring(hardware, 1, {}) = {})",
            p.len(),
            mac_colons(p)
        ));
    }
    if let Some(p) = &m.circuit_id {
        a.push(isc_text("option agent.circuit-id", p, m.exact, false));
    }
    if let Some(p) = &m.remote_id {
        a.push(isc_text("option agent.remote-id", p, m.exact, false));
    }
    a
}

/// "This earlier policy did not match", never null: De Morgan over non-null atoms.
fn isc_not(m: &Match) -> String {
    let negs: Vec<String> = isc_atoms(m)
        .into_iter()
        .map(|a| format!("(not {a})"))
        .collect();
    format!("({})", negs.join(" or "))
}

/// `{mac}` as twelve lowercase hex digits (binary-to-ascii drops leading zeros, so
/// each byte is padded by hand).
fn isc_mac_expr() -> String {
    let bytes: Vec<String> = (1..=6)
        .map(|i| {
            format!(
                "suffix(concat(\"0\", binary-to-ascii(16, 8, \"\", substring(hardware, {i}, 1))), 2)"
            )
        })
        .collect();
    format!("concat({})", bytes.join(", "))
}

const ISC_MODEL_EXPR: &str =
    "pick-first-value(option vendor-class-identifier, option user-class, \"<MODEL>\")";

fn isc_value(parts: &[Part]) -> String {
    if is_static(parts) {
        return format!(" {}", isc_str(&phone_placeholders(parts)));
    }
    let items: Vec<String> = parts
        .iter()
        .map(|p| match p {
            Part::Lit(s) => isc_str(s),
            Part::Mac => isc_mac_expr(),
            Part::Model => ISC_MODEL_EXPR.to_string(),
        })
        .collect();
    if items.len() == 1 {
        format!(" = {}", items.join(""))
    } else {
        format!(" = concat({})", items.join(", "))
    }
}

/// The dhcpd name and type for an extra option code, one per code.
fn isc_custom_type(uses: &[&CustomOption]) -> &'static str {
    if uses.iter().all(|o| o.text.is_some()) {
        "text"
    } else if uses.iter().all(|o| o.ip.is_some()) {
        "array of ip-address"
    } else {
        "string"
    }
}

fn isc_custom_value(o: &CustomOption, ty: &str) -> String {
    match ty {
        "text" => isc_str(o.text.as_deref().unwrap_or_default()),
        "array of ip-address" => {
            o.ip.iter()
                .flatten()
                .map(Ipv4Addr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
        _ => mac_colons(&o.bytes()),
    }
}

fn isc(ctx: &Ctx<'_>) -> String {
    let c = ctx.config;
    let d = &c.dhcp;
    let mut o = ctx.header("#");
    o.push_str("# Check with: dhcpd -t -cf FILE\n\n");
    o.push_str("option provbox-160 code 160 = text;\n");

    // Extra options: one definition per code, typed by how they are used.
    let mut customs: Vec<&CustomOption> = d.options.iter().collect();
    for p in &d.policies {
        customs.extend(p.options.iter());
    }
    let mut codes: Vec<u8> = customs.iter().map(|o| o.code).collect();
    codes.sort_unstable();
    codes.dedup();
    let types: Vec<(u8, &str)> = codes
        .iter()
        .map(|code| {
            let uses: Vec<&CustomOption> = customs
                .iter()
                .copied()
                .filter(|o| o.code == *code)
                .collect();
            (*code, isc_custom_type(&uses))
        })
        .collect();
    let ty = |code: u8| {
        types
            .iter()
            .find(|(c, _)| *c == code)
            .map_or("string", |(_, t)| t)
    };
    for (code, t) in &types {
        let _ = writeln!(o, "option provbox-opt-{code} code {code} = {t};");
    }
    for opt in &d.options {
        let _ = writeln!(
            o,
            "option provbox-opt-{} {};",
            opt.code,
            isc_custom_value(opt, ty(opt.code))
        );
    }
    o.push('\n');

    let policies: Vec<&Class> = ctx.policies().collect();
    for class in &ctx.classes {
        let _ = writeln!(o, "# {}", class.title);
        let test = match &class.matcher {
            Some(m) => {
                let index = policies.iter().position(|p| p.id == class.id).unwrap_or(0);
                let mut all = isc_atoms(m);
                all.extend(
                    policies[..index]
                        .iter()
                        .filter_map(|p| p.matcher.as_ref())
                        .map(isc_not),
                );
                Some(all.join(" and "))
            }
            None if policies.is_empty() => None,
            None => Some(
                policies
                    .iter()
                    .filter_map(|p| p.matcher.as_ref())
                    .map(isc_not)
                    .collect::<Vec<_>>()
                    .join(" and "),
            ),
        };
        let indent = if test.is_some() { "  " } else { "" };
        if let Some(test) = &test {
            let _ = writeln!(o, "class \"{}\" {{", class.id);
            let _ = writeln!(o, "  match if {test};");
        }
        let mut forced: Vec<u8> = Vec::new();
        for p in &class.prov {
            let parts = pin(&p.parts, class.pinned_model.as_deref());
            let name = match p.code {
                160 => "provbox-160",
                66 => "tftp-server-name",
                _ => "bootfile-name",
            };
            let _ = writeln!(o, "{indent}option {name}{};", isc_value(&parts));
            if p.always {
                forced.push(p.code);
            }
        }
        for opt in &class.options {
            let _ = writeln!(
                o,
                "{indent}option provbox-opt-{} {};",
                opt.code,
                isc_custom_value(opt, ty(opt.code))
            );
        }
        if !forced.is_empty() {
            // dhcpd sends what the client asked for: add these to its request list.
            let _ = writeln!(
                o,
                "{indent}option dhcp-parameter-request-list = concat(pick-first-value(option dhcp-parameter-request-list, \"\"), {});",
                mac_colons(&forced)
            );
        }
        if test.is_some() {
            o.push_str("}\n");
        }
        o.push('\n');
    }

    if let Some(net) = d.effective_subnet() {
        let _ = writeln!(o, "subnet {} netmask {} {{", net.network(), net.mask());
        if let Some(pool) = d.pool {
            let _ = writeln!(o, "  range {} {};", pool.first, pool.last);
        }
        if let Some(r) = d.router {
            let _ = writeln!(o, "  option routers {r};");
        }
        let list = |v: &[Ipv4Addr]| {
            v.iter()
                .map(Ipv4Addr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !d.dns.is_empty() {
            let _ = writeln!(o, "  option domain-name-servers {};", list(&d.dns));
        }
        if !d.ntp.is_empty() {
            let _ = writeln!(o, "  option ntp-servers {};", list(&d.ntp));
        }
        if let Some(dn) = &d.domain_name {
            let _ = writeln!(o, "  option domain-name {};", isc_str(dn));
        }
        let lease = d.lease_time.get().as_secs();
        let (t1, t2) = d.timers();
        let _ = writeln!(
            o,
            "  default-lease-time {lease};\n  max-lease-time {lease};"
        );
        let _ = writeln!(
            o,
            "  option dhcp-renewal-time {};\n  option dhcp-rebinding-time {};",
            t1.as_secs(),
            t2.as_secs()
        );
        o.push_str("}\n\n");
    } else {
        o.push_str("# No subnet: set [dhcp] server_ip or subnet (and pool) to export one.\n\n");
    }
    for (i, r) in d.reservations.iter().enumerate() {
        let _ = writeln!(
            o,
            "host provbox-reservation-{} {{\n  hardware ethernet {};\n  fixed-address {};",
            i + 1,
            r.mac,
            r.ip
        );
        if let Some(h) = &r.hostname {
            let _ = writeln!(o, "  option host-name {};", isc_str(h));
        }
        o.push_str("}\n");
    }
    o
}

// ---------------------------------------------------------------------------- Kea

/// A per-client option value for Kea's flex_option hook: (class, expression, always).
type FlexEntry = (String, String, bool);

/// A Kea expression string literal, or a hex literal when quoting would not survive.
fn kea_lit(s: &str) -> (String, bool) {
    if s.bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'\'' && b != b'\\')
    {
        (format!("'{s}'"), false)
    } else {
        (format!("0x{}", hex::encode(s.as_bytes())), true)
    }
}

/// `field` (an expression with `.text`/`.hex` forms, e.g. `option[60]`) contains (or
/// equals) `pat`, case-insensitively as far as Kea 2.2 can say.
fn kea_text(field: &str, pat: &str, exact: bool) -> String {
    let mut atoms = Vec::new();
    for v in case_variants(pat) {
        let (lit, hex) = kea_lit(&v);
        let src = format!("{field}.{}", if hex { "hex" } else { "text" });
        if exact {
            atoms.push(format!("{src} == {lit}"));
        } else {
            let n = v.len();
            for k in 0..=KEA_SCAN.saturating_sub(n) {
                atoms.push(format!("substring({src},{k},{n}) == {lit}"));
            }
        }
    }
    format!("({})", atoms.join(" or "))
}

fn kea_atoms(m: &Match) -> Vec<String> {
    let mut a = Vec::new();
    if let Some(p) = &m.vendor_class {
        a.push(kea_text("option[60]", p, m.exact));
    }
    if let Some(p) = &m.user_class {
        a.push(kea_text("option[77]", p, m.exact));
    }
    if let Some(p) = &m.model {
        a.push(format!(
            "({} or {})",
            kea_text("option[60]", p, m.exact),
            kea_text("option[77]", p, m.exact)
        ));
    }
    if let Some(mac) = &m.mac {
        a.push(format!("(pkt4.mac == 0x{})", hex::encode(mac.0)));
    }
    if let Some(MacPrefix(p)) = &m.mac_prefix {
        a.push(format!(
            "(substring(pkt4.mac,0,{}) == 0x{})",
            p.len(),
            hex::encode(p)
        ));
    }
    if let Some(p) = &m.circuit_id {
        a.push(kea_text("relay4[1]", p, m.exact));
    }
    if let Some(p) = &m.remote_id {
        a.push(kea_text("relay4[2]", p, m.exact));
    }
    a
}

const KEA_MODEL_EXPR: &str = "ifelse(option[60].exists, option[60].text, ifelse(option[77].exists, option[77].text, '<MODEL>'))";

fn kea_value_expr(parts: &[Part]) -> String {
    let items: Vec<String> = parts
        .iter()
        .map(|p| match p {
            Part::Lit(s) => kea_lit(s).0,
            Part::Mac => "hexstring(pkt4.mac, '')".to_string(),
            Part::Model => KEA_MODEL_EXPR.to_string(),
        })
        .collect();
    items
        .into_iter()
        .reduce(|a, b| format!("concat({a}, {b})"))
        .unwrap_or_else(|| "''".to_string())
}

fn kea_custom(opt: &CustomOption, always: bool) -> Value {
    let mut v = json!({
        "code": opt.code,
        "csv-format": false,
        "data": hex::encode_upper(opt.bytes()),
    });
    if let Some(t) = &opt.text {
        v["comment"] = json!(format!("text \"{t}\""));
    }
    if always {
        v["always-send"] = json!(true);
    }
    v
}

fn kea(ctx: &Ctx<'_>) -> anyhow::Result<String> {
    let d = &ctx.config.dhcp;
    let policies: Vec<&Class> = ctx.policies().collect();
    let mut classes = Vec::new();
    // Per-client values need the flex_option hook: code -> [(class, expression, always)].
    let mut flex: Vec<(u8, Vec<FlexEntry>)> = Vec::new();
    for class in &ctx.classes {
        let test = match &class.matcher {
            Some(m) => {
                let mut all = kea_atoms(m);
                let index = policies.iter().position(|p| p.id == class.id).unwrap_or(0);
                all.extend(
                    policies[..index]
                        .iter()
                        .map(|p| format!("not member('{}')", p.id)),
                );
                Some(all.join(" and "))
            }
            None if policies.is_empty() => None,
            None => Some(
                policies
                    .iter()
                    .map(|p| format!("not member('{}')", p.id))
                    .collect::<Vec<_>>()
                    .join(" and "),
            ),
        };
        let mut data = Vec::new();
        for p in &class.prov {
            let parts = pin(&p.parts, class.pinned_model.as_deref());
            if is_static(&parts) {
                let name = match p.code {
                    160 => "provbox-160",
                    66 => "tftp-server-name",
                    _ => "boot-file-name",
                };
                let mut v = json!({"name": name, "data": phone_placeholders(&parts)});
                if p.always {
                    v["always-send"] = json!(true);
                }
                data.push(v);
            } else {
                let entry = (class.id.clone(), kea_value_expr(&parts), p.always);
                match flex.iter_mut().find(|(c, _)| *c == p.code) {
                    Some((_, list)) => list.push(entry),
                    None => flex.push((p.code, vec![entry])),
                }
            }
        }
        data.extend(class.options.iter().map(|o| kea_custom(o, true)));
        let Some(test) = test else {
            // No policies: the defaults are global.
            continue;
        };
        classes.push(json!({
            "name": class.id,
            "comment": class.title,
            "test": test,
            "option-data": data,
        }));
    }
    let mut global_data: Vec<Value> = d.options.iter().map(|o| kea_custom(o, true)).collect();
    if policies.is_empty()
        && let Some(defaults) = ctx.classes.iter().find(|c| c.matcher.is_none())
    {
        for p in &defaults.prov {
            if is_static(&p.parts) {
                let name = match p.code {
                    160 => "provbox-160",
                    66 => "tftp-server-name",
                    _ => "boot-file-name",
                };
                let mut v = json!({"name": name, "data": phone_placeholders(&p.parts)});
                if p.always {
                    v["always-send"] = json!(true);
                }
                global_data.push(v);
            }
        }
    }
    let mut dhcp4 = json!({
        "comment": ctx.header("").lines().map(str::trim).collect::<Vec<_>>().join(" "),
        "option-def": [{"name": "provbox-160", "code": 160, "type": "string", "space": "dhcp4"}],
        "client-classes": classes,
        "option-data": global_data,
    });
    if !flex.is_empty() {
        // A client that did not list 160 in option 55 gets no 160 unless forced: Kea 2.2
        // has no "contains", so every position of the first KEA_SCAN bytes is tried.
        let asked_160 = (0..KEA_SCAN)
            .map(|k| format!("substring(option[55].hex,{k},1) == 0xa0"))
            .collect::<Vec<_>>()
            .join(" or ");
        let options: Vec<Value> = flex
            .iter()
            .map(|(code, list)| {
                let expr = list
                    .iter()
                    .rev()
                    .fold("''".to_string(), |acc, (class, e, always)| {
                        // Without policies the defaults are not a class: no membership test.
                        let mut cond = Vec::new();
                        if !policies.is_empty() {
                            cond.push(format!("member('{class}')"));
                        }
                        if *code == 160 && !*always {
                            cond.push(format!("({asked_160})"));
                        }
                        if cond.is_empty() {
                            e.clone()
                        } else {
                            format!("ifelse({}, {e}, {acc})", cond.join(" and "))
                        }
                    });
                json!({"code": code, "add": expr})
            })
            .collect();
        dhcp4["hooks-libraries"] = json!([{
            "library": ctx.opts.kea_hooks_dir.join("libdhcp_flex_option.so"),
            "parameters": {"options": options},
        }]);
    }
    if let Some(net) = d.effective_subnet() {
        let mut subnet = json!({
            "id": 1,
            "subnet": net.to_string(),
            "valid-lifetime": d.lease_time.get().as_secs(),
        });
        let (t1, t2) = d.timers();
        subnet["renew-timer"] = json!(t1.as_secs());
        subnet["rebind-timer"] = json!(t2.as_secs());
        if let Some(pool) = d.pool {
            subnet["pools"] = json!([{"pool": format!("{} - {}", pool.first, pool.last)}]);
        }
        let list = |v: &[Ipv4Addr]| {
            v.iter()
                .map(Ipv4Addr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut data = Vec::new();
        if let Some(r) = d.router {
            data.push(json!({"name": "routers", "data": r.to_string()}));
        }
        if !d.dns.is_empty() {
            data.push(json!({"name": "domain-name-servers", "data": list(&d.dns)}));
        }
        if !d.ntp.is_empty() {
            data.push(json!({"name": "ntp-servers", "data": list(&d.ntp)}));
        }
        if let Some(dn) = &d.domain_name {
            data.push(json!({"name": "domain-name", "data": dn}));
        }
        subnet["option-data"] = json!(data);
        let res: Vec<Value> = d
            .reservations
            .iter()
            .map(|r| {
                let mut v =
                    json!({"hw-address": r.mac.to_string(), "ip-address": r.ip.to_string()});
                if let Some(h) = &r.hostname {
                    v["hostname"] = json!(h);
                }
                v
            })
            .collect();
        if !res.is_empty() {
            subnet["reservations"] = json!(res);
        }
        if let Some(i) = &d.interface {
            dhcp4["interfaces-config"] = json!({"interfaces": [i]});
        }
        dhcp4["subnet4"] = json!([subnet]);
    } else if !d.reservations.is_empty() {
        bail!(
            "reservations need a subnet in Kea: set [dhcp] server_ip or subnet (PROVBOX_DHCP_SERVER_IP)"
        );
    }
    let mut text = serde_json::to_string_pretty(&json!({ "Dhcp4": dhcp4 }))
        .context("cannot serialise the Kea config")?;
    text.push('\n');
    Ok(text)
}

// ------------------------------------------------------------------------ dnsmasq

/// A value for a dnsmasq option line: quoted when it has commas, blanks or quotes.
fn dm_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn dnsmasq(ctx: &Ctx<'_>) -> String {
    let d = &ctx.config.dhcp;
    let mut o = ctx.header("#");
    o.push_str(
        "# Check with: dnsmasq --test --conf-file=FILE\n\
         # dnsmasq compares option 60/77 bytes exactly, as substrings: case-insensitivity is\n\
         # approximated by matching the text as written, in upper and in lower case, and\n\
         # `exact = true` cannot be expressed (it matches as a substring). Option 82 ids\n\
         # match exactly. {mac}/{model} have no dnsmasq expression: the phone's own\n\
         # <MAC>/<MODEL> are sent instead (an AudioCodes phone expands them in option 160).\n\n",
    );
    let policies: Vec<&Class> = ctx.policies().collect();
    for (i, class) in policies.iter().enumerate() {
        let Some(m) = &class.matcher else { continue };
        let n = i + 1;
        let _ = writeln!(o, "# {} ({})", class.title, class.id);
        let mut conds: Vec<String> = Vec::new();
        let mut cond = |lines: Vec<String>, o: &mut String| {
            let tag = format!("pb{n}c{}", conds.len() + 1);
            for l in lines {
                let _ = writeln!(o, "{}", l.replace("TAG", &tag));
            }
            conds.push(tag);
        };
        let text_lines = |kind: &str, p: &str| -> Vec<String> {
            case_variants(p)
                .into_iter()
                .map(|v| format!("dhcp-{kind}=set:TAG,{}", dm_str(&v)))
                .collect()
        };
        if let Some(p) = &m.vendor_class {
            cond(text_lines("vendorclass", p), &mut o);
        }
        if let Some(p) = &m.user_class {
            cond(text_lines("userclass", p), &mut o);
        }
        if let Some(p) = &m.model {
            let mut l = text_lines("vendorclass", p);
            l.extend(text_lines("userclass", p));
            cond(l, &mut o);
        }
        if let Some(mac) = &m.mac {
            cond(vec![format!("dhcp-mac=set:TAG,{mac}")], &mut o);
        }
        if let Some(MacPrefix(p)) = &m.mac_prefix {
            let mut parts: Vec<String> = p.iter().map(|b| format!("{b:02x}")).collect();
            while parts.len() < 6 {
                parts.push("*".to_string());
            }
            cond(
                vec![format!("dhcp-mac=set:TAG,{}", parts.join(":"))],
                &mut o,
            );
        }
        if let Some(p) = &m.circuit_id {
            cond(
                vec![format!("dhcp-circuitid=set:TAG,{}", dm_str(p))],
                &mut o,
            );
        }
        if let Some(p) = &m.remote_id {
            cond(vec![format!("dhcp-remoteid=set:TAG,{}", dm_str(p))], &mut o);
        }
        let all: Vec<String> = conds.iter().map(|t| format!("tag:{t}")).collect();
        let _ = writeln!(o, "tag-if=set:pb{n}m,{}", all.join(","));
        o.push('\n');
    }
    // Selection, in order (tag-if lines run in order after the tags above are set).
    o.push_str("# First match wins.\n");
    for (i, _) in policies.iter().enumerate() {
        let n = i + 1;
        let earlier: Vec<String> = (1..n).map(|k| format!(",tag:!pb{k}m")).collect();
        let _ = writeln!(o, "tag-if=set:pb{n},tag:pb{n}m{}", earlier.concat());
    }
    let has_default = ctx.classes.iter().any(|c| c.matcher.is_none());
    if has_default && !policies.is_empty() {
        let none: Vec<String> = (1..=policies.len())
            .map(|k| format!("tag:!pb{k}m"))
            .collect();
        let _ = writeln!(o, "tag-if=set:pbdefault,{}", none.join(","));
    }
    o.push('\n');
    for (i, class) in ctx.classes.iter().enumerate() {
        let tag = match &class.matcher {
            Some(_) => format!("tag:pb{},", i + 1),
            None if policies.is_empty() => String::new(),
            None => "tag:pbdefault,".to_string(),
        };
        let _ = writeln!(o, "# {}", class.title);
        for p in &class.prov {
            let parts = pin(&p.parts, class.pinned_model.as_deref());
            if !is_static(&parts) {
                let _ = writeln!(
                    o,
                    "# {}: per-client {{mac}}/{{model}} sent as the phone's own <MAC>/<MODEL>",
                    option_name(p.code)
                );
            }
            let verb = if p.always {
                "dhcp-option-force"
            } else {
                "dhcp-option"
            };
            let _ = writeln!(
                o,
                "{verb}={tag}{},{}",
                p.code,
                dm_str(&phone_placeholders(&parts))
            );
        }
        for opt in &class.options {
            let _ = writeln!(o, "dhcp-option-force={tag}{}", dm_custom(opt));
        }
        o.push('\n');
    }
    let mask = d
        .effective_subnet()
        .map(|n| n.mask())
        .unwrap_or(d.subnet_mask);
    let lease = d.lease_time.get().as_secs();
    if let Some(pool) = d.pool {
        let _ = writeln!(o, "dhcp-range={},{},{mask},{lease}", pool.first, pool.last);
    } else if let Some(net) = d.effective_subnet() {
        // Reservations only: a static range serves just the dhcp-host entries.
        let _ = writeln!(o, "dhcp-range={},static,{mask},{lease}", net.network());
    }
    if let Some(r) = d.router {
        let _ = writeln!(o, "dhcp-option=option:router,{r}");
    }
    let list = |v: &[Ipv4Addr]| {
        v.iter()
            .map(Ipv4Addr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    if !d.dns.is_empty() {
        let _ = writeln!(o, "dhcp-option=option:dns-server,{}", list(&d.dns));
    }
    if !d.ntp.is_empty() {
        let _ = writeln!(o, "dhcp-option=option:ntp-server,{}", list(&d.ntp));
    }
    if let Some(dn) = &d.domain_name {
        let _ = writeln!(o, "dhcp-option=option:domain-name,{}", dm_str(dn));
    }
    let (t1, t2) = d.timers();
    let _ = writeln!(
        o,
        "dhcp-option=option:T1,{}\ndhcp-option=option:T2,{}",
        t1.as_secs(),
        t2.as_secs()
    );
    for opt in &d.options {
        let _ = writeln!(o, "dhcp-option-force={}", dm_custom(opt));
    }
    for r in &d.reservations {
        let host = r
            .hostname
            .as_ref()
            .map_or(String::new(), |h| format!(",{h}"));
        let _ = writeln!(o, "dhcp-host={},{}{host}", r.mac, r.ip);
    }
    o
}

fn dm_custom(opt: &CustomOption) -> String {
    if let Some(t) = &opt.text {
        format!("{},{}", opt.code, dm_str(t))
    } else if let Some(ips) = &opt.ip {
        let v: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
        format!("{},{}", opt.code, v.join(","))
    } else {
        let bytes = opt.bytes();
        // One byte of hex would be read as a number; dnsmasq reads colon-hex as bytes.
        if bytes.len() == 1 {
            format!("{},{}", opt.code, bytes[0])
        } else {
            format!("{},{}", opt.code, mac_colons(&bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_server_and_ports_and_keep_per_client_parts() {
        let ports = [("http_port", 8080), ("tftp_port", 69)];
        let parts = parse_template(
            "http://{server}:{http_port}/{model}_{mac}.img;<MAC>.cfg{unknown}",
            Some("192.0.2.1"),
            &ports,
            "f",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            parts,
            vec![
                Part::Lit("http://192.0.2.1:8080/".into()),
                Part::Model,
                Part::Lit("_".into()),
                Part::Mac,
                Part::Lit(".img;<MAC>.cfg{unknown}".into()),
            ]
        );
        assert_eq!(
            phone_placeholders(&pin(&parts, Some("445HD"))),
            "http://192.0.2.1:8080/445HD_<MAC>.img;<MAC>.cfg{unknown}"
        );
        let e = parse_template("{server}/x", None, &ports, "dhcp.boot_file")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("`dhcp.boot_file`") && e.contains("--server"),
            "{e}"
        );
    }

    #[test]
    fn isc_patterns_are_escaped_and_framed() {
        // 46 bytes: the RFC 3004 length byte is '.', which must not match any byte.
        let pat = "a".repeat(46);
        let t = isc_text("option user-class", &pat, true, true);
        assert!(t.contains(r#"^(\\.)?[[:space:]]*"#), "{t}");
        assert!(isc_text("x", "a.b", false, false).contains(r#""a\\.b""#));
        // Ten bytes: the length byte is a newline, written as an octal escape.
        let t = isc_text("option user-class", "0123456789", true, true);
        assert!(t.contains(r#"^(\012)?"#), "{t}");
        assert_eq!(isc_str("a\"b\\c"), r#""a\"b\\c""#);
    }

    #[test]
    fn kea_substring_tests_cover_every_offset_and_spelling() {
        let t = kea_text("option[60]", "450hd", false);
        assert!(t.contains("substring(option[60].text,0,5) == '450hd'"));
        assert!(t.contains(&format!(
            "substring(option[60].text,{},5) == '450HD'",
            KEA_SCAN - 5
        )));
        assert!(!t.contains(&format!(",{},5)", KEA_SCAN - 4)));
        // A quote cannot be written in a Kea string: hex instead.
        assert!(kea_text("option[60]", "it's", true).contains("option[60].hex == 0x69742773"));
    }
}
