//! Which options a client gets: the standard ones from `[dhcp]`, the provisioning
//! options of its policy (160, 66, 67) with provbox's templates expanded, and the
//! configured extra options by number.
//!
//! Rules (issue #3, phone-behaviour.md §2):
//! - a matched policy replaces the `[dhcp]` provisioning defaults as a whole: a policy
//!   that sets only 66/67 sends no 160, so the phone really falls back to TFTP;
//! - option 160 goes only to clients that list 160 in option 55, or when the policy sets
//!   `force_160` (RFC 7710 once gave 160 to captive portals; other clients may misread it);
//! - 160, 66 and 67 are plain ASCII without a NUL;
//! - `{model}` of a client whose model is unknown becomes the phone's own `<MODEL>`, so
//!   the phone fills it in rather than fetching `/.img`.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use provbox_config::{CustomOption, DhcpConfig, Ipv4Net, MacAddr, TemplateVars, expand_template};

use super::policy::{ClientView, Policies, detect_model};

/// Provisioning templates of the defaults or of one policy.
#[derive(Debug, Clone, Default)]
struct Provisioning {
    url: Option<String>,
    tftp_server: Option<String>,
    boot_file: Option<String>,
    force_160: bool,
    /// Extra options (already encoded) that replace same-numbered global ones.
    options: Vec<(u8, Vec<u8>)>,
}

/// Everything fixed for the server's lifetime, computed once from the config.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub server_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub lease_secs: u32,
    pub t1_secs: u32,
    pub t2_secs: u32,
    pub decline_quarantine_ms: u64,
    pub vars: TemplateVars,
    pub policies: Policies,
    defaults: Provisioning,
    by_policy: Vec<Provisioning>,
    /// 1, 3, 6, 15, 42 and the global extra options, encoded.
    standard: Vec<(u8, Vec<u8>)>,
    hostnames: HashMap<MacAddr, String>,
}

fn encode_custom(list: &[CustomOption]) -> Vec<(u8, Vec<u8>)> {
    list.iter().map(|o| (o.code, o.bytes())).collect()
}

fn secs(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl Prepared {
    /// `server_ip` and `subnet` are resolved by the caller (config, or the bound
    /// interface); `vars.server` empty means "server_ip".
    pub fn new(
        cfg: &DhcpConfig,
        server_ip: Ipv4Addr,
        subnet: Ipv4Net,
        mut vars: TemplateVars,
    ) -> Self {
        if vars.server.is_empty() {
            vars.server = server_ip.to_string();
        }
        let (t1, t2) = cfg.timers();
        let mut standard: Vec<(u8, Vec<u8>)> = vec![(1, subnet.mask().octets().to_vec())];
        if let Some(r) = cfg.router {
            standard.push((3, r.octets().to_vec()));
        }
        let ips = |v: &[Ipv4Addr]| v.iter().flat_map(|i| i.octets()).collect::<Vec<u8>>();
        if !cfg.dns.is_empty() {
            standard.push((6, ips(&cfg.dns)));
        }
        if let Some(d) = &cfg.domain_name {
            standard.push((15, d.as_bytes().to_vec()));
        }
        if !cfg.ntp.is_empty() {
            standard.push((42, ips(&cfg.ntp)));
        }
        for (code, data) in encode_custom(&cfg.options) {
            standard.retain(|(c, _)| *c != code);
            standard.push((code, data));
        }
        Self {
            server_ip,
            subnet,
            lease_secs: secs(cfg.lease_time.get()),
            t1_secs: secs(t1),
            t2_secs: secs(t2),
            decline_quarantine_ms: cfg.decline_quarantine.get().as_millis() as u64,
            vars,
            policies: Policies::new(cfg),
            defaults: Provisioning {
                url: cfg.provisioning_url.clone(),
                tftp_server: cfg.tftp_server.clone(),
                boot_file: cfg.boot_file.clone(),
                force_160: false,
                options: Vec::new(),
            },
            by_policy: cfg
                .policies
                .iter()
                .map(|p| Provisioning {
                    url: p.provisioning_url.clone(),
                    tftp_server: p.tftp_server.clone(),
                    boot_file: p.boot_file.clone(),
                    force_160: p.force_160,
                    options: encode_custom(&p.options),
                })
                .collect(),
            standard,
            hostnames: cfg
                .reservations
                .iter()
                .filter_map(|r| r.hostname.clone().map(|h| (r.mac, h)))
                .collect(),
        }
    }
}

/// The options for one client, and what was decided on the way.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Detected model (option 60/77).
    pub model: Option<String>,
    /// Matched policy: (index, name, why).
    pub policy: Option<(usize, String, String)>,
    /// Options to send besides 53 and 54, in no particular order.
    pub options: Vec<(u8, Vec<u8>)>,
    /// The provisioning options sent, as text (for events).
    pub provisioning: Vec<(u8, String)>,
    /// Things `provbox check` should say (e.g. why 160 was left out).
    pub notes: Vec<String>,
}

/// Plans the options of a reply. `lease`: include 51/58/59 (not for INFORM).
pub fn plan(p: &Prepared, c: &ClientView<'_>, lease: bool, why: bool) -> Plan {
    plan_as(p, c, lease, why, None)
}

/// [`plan`], with `{mac}` expanded to `mac_text` instead of the client's MAC
/// (`provbox check` without a MAC keeps the placeholder rather than invent one).
pub(crate) fn plan_as(
    p: &Prepared,
    c: &ClientView<'_>,
    lease: bool,
    why: bool,
    mac_text: Option<&str>,
) -> Plan {
    let model = detect_model(c.vendor_class, c.user_class);
    let policy = p
        .policies
        .select(c, why)
        .map(|(i, n, r)| (i, n.to_string(), r));
    let prov = match &policy {
        Some((i, ..)) => p.by_policy.get(*i).unwrap_or(&p.defaults),
        None => &p.defaults,
    };
    let mut options = p.standard.clone();
    if lease {
        options.push((51, p.lease_secs.to_be_bytes().to_vec()));
        options.push((58, p.t1_secs.to_be_bytes().to_vec()));
        options.push((59, p.t2_secs.to_be_bytes().to_vec()));
    }
    if let Some(h) = p.hostnames.get(&c.mac) {
        options.push((12, h.as_bytes().to_vec()));
    }
    let bare;
    let mac: &str = match mac_text {
        Some(t) => t,
        None => {
            bare = c.mac.bare();
            &bare
        }
    };
    // Unknown model: let the phone substitute its own.
    let model_text = model.as_deref().unwrap_or("<MODEL>");
    let mut provisioning = Vec::new();
    let mut notes = Vec::new();
    let mut add = |code: u8, template: &Option<String>, options: &mut Vec<(u8, Vec<u8>)>| {
        if let Some(t) = template {
            // NULs cannot come from a validated config; strip them anyway, never send one.
            let v: String = expand_template(t, &p.vars, mac, model_text)
                .chars()
                .filter(|c| *c != '\0')
                .collect();
            options.retain(|(c, _)| *c != code);
            options.push((code, v.clone().into_bytes()));
            provisioning.push((code, v));
        }
    };
    if prov.url.is_some() {
        if c.prl.contains(&160) || prov.force_160 {
            add(160, &prov.url, &mut options);
        } else {
            notes.push(
                "option 160 left out: the client did not ask for it in option 55, and the policy does not set force_160"
                    .to_string(),
            );
        }
    }
    add(66, &prov.tftp_server, &mut options);
    add(67, &prov.boot_file, &mut options);
    for (code, data) in &prov.options {
        options.retain(|(c, _)| c != code);
        options.push((*code, data.clone()));
    }
    Plan {
        model,
        policy,
        options,
        provisioning,
        notes,
    }
}

/// A name for an option number, for `provbox check`.
pub fn option_name(code: u8) -> &'static str {
    match code {
        1 => "subnet mask",
        2 => "time offset",
        3 => "router",
        6 => "DNS servers",
        12 => "host name",
        15 => "domain name",
        28 => "broadcast address",
        42 => "NTP servers",
        43 => "vendor specific",
        51 => "lease time",
        53 => "message type",
        54 => "server identifier",
        56 => "message",
        58 => "renewal time (T1)",
        59 => "rebinding time (T2)",
        66 => "TFTP server",
        67 => "boot file",
        120 => "SIP servers",
        150 => "TFTP server addresses",
        160 => "provisioning URL",
        _ => "option",
    }
}

/// An option's value as text, for `provbox check` and events.
pub fn option_value(code: u8, data: &[u8]) -> String {
    let ip_list = |d: &[u8]| -> Option<String> {
        (!d.is_empty() && d.len().is_multiple_of(4)).then(|| {
            d.chunks(4)
                .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    match code {
        1 | 3 | 6 | 28 | 42 | 54 | 150 => ip_list(data).unwrap_or_else(|| hex::encode(data)),
        51 | 58 | 59 if data.len() == 4 => {
            let s = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            format!("{s} s")
        }
        _ if !data.is_empty() && data.iter().all(|b| b.is_ascii_graphic() || *b == b' ') => {
            String::from_utf8_lossy(data).into_owned()
        }
        _ => format!("hex {}", hex::encode(data)),
    }
}
