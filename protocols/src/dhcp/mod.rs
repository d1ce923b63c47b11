//! The DHCPv4 server (RFC 2131/2132) that hands phones their address and their
//! provisioning options: option 160 by model, 66/67 as the fallback.
//!
//! Layout:
//! - [`wire`]: strict request parser, reply encoder (dhcproto), 300-byte padding;
//! - [`policy`]: model detection (options 60/77) and `[[dhcp.policy]]` matching;
//! - [`options`]: which options a client gets, templates expanded;
//! - [`table`]: the in-memory lease table (allocation, reservations, reclaim);
//! - [`decide`]: the state machine as a pure function, unit- and property-tested;
//! - [`socket`]: socket, interface binding, ARP entries for unicast replies;
//! - `server`: the receive loop and the group-commit thread.
//!
//! Entry points: [`DhcpServer::bind`] then [`DhcpServer::run`]; [`explain`] for
//! `provbox check`.

pub mod decide;
pub mod options;
pub mod policy;
mod server;
pub mod socket;
pub mod table;
pub mod wire;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

pub use provbox_config::TemplateVars;
use provbox_config::{DhcpConfig, Ipv4Net, MacAddr};

pub use server::DhcpServer;

/// A DHCP server that cannot start, with the field or address at fault.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("`dhcp.{field}`: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    #[error(
        "cannot bind the DHCP socket to {addr}{}: {source}; port 67 needs root or CAP_NET_BIND_SERVICE, and an interface binding needs CAP_NET_RAW on old kernels",
        interface.as_ref().map(|i| format!(" on interface {i}")).unwrap_or_default()
    )]
    Bind {
        addr: SocketAddr,
        interface: Option<String>,
        source: std::io::Error,
    },
    #[error("DHCP socket ({what}): {source}")]
    Socket {
        what: &'static str,
        source: std::io::Error,
    },
}

/// What `provbox check` prints for one model or MAC.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub mac: Option<MacAddr>,
    /// The model as given, and as detected from it.
    pub model: Option<String>,
    pub detected_model: Option<String>,
    pub requested_160: bool,
    /// Matched policy name and why; `None`: the `[dhcp]` defaults.
    pub policy: Option<(String, String)>,
    /// Index of the matched policy in `dhcp.policy`, to name its fields.
    pub policy_index: Option<usize>,
    pub address: String,
    /// (code, name, value) of every option an ACK would carry.
    pub options: Vec<(u8, &'static str, String)>,
    pub notes: Vec<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client:")?;
        match &self.mac {
            Some(m) => write!(f, " MAC {m}")?,
            None => write!(f, " no MAC given")?,
        }
        match (&self.model, &self.detected_model) {
            (Some(m), Some(d)) if m != d => write!(f, ", options 60/77 \"{m}\" (model {d})")?,
            (Some(m), _) => write!(f, ", options 60/77 \"{m}\"")?,
            (None, _) => write!(f, ", no options 60/77")?,
        }
        writeln!(
            f,
            ", option 55 {} 160",
            if self.requested_160 {
                "asks for"
            } else {
                "does not ask for"
            }
        )?;
        match &self.policy {
            Some((name, why)) => writeln!(f, "policy: \"{name}\", because {why}")?,
            None => writeln!(f, "policy: none matched; the [dhcp] defaults apply")?,
        }
        writeln!(f, "address: {}", self.address)?;
        writeln!(f, "options sent in the ACK:")?;
        for (code, name, value) in &self.options {
            writeln!(f, "  {code:>3}  {name:<22} {value}")?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// Explains what a phone of `model` (sent in options 60 and 77) with `mac` would get:
/// the matched policy and why, its address, and the exact options of the ACK.
pub fn explain(
    cfg: &DhcpConfig,
    vars: &TemplateVars,
    model: Option<&str>,
    mac: Option<MacAddr>,
    requested_160: bool,
) -> Explanation {
    let mut notes = Vec::new();
    let server_ip = cfg.server_ip.or_else(|| vars.server.parse().ok()).unwrap_or_else(|| {
        notes.push("server_ip is not set: the running server takes it from `interface`; shown as 0.0.0.0".into());
        Ipv4Addr::UNSPECIFIED
    });
    let subnet = cfg
        .subnet
        .or_else(|| Ipv4Net::from_mask(server_ip, cfg.subnet_mask))
        .unwrap_or(Ipv4Net {
            addr: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
        });
    let prep = options::Prepared::new(cfg, server_ip, subnet, vars.clone());
    if mac.is_none()
        && cfg
            .policies
            .iter()
            .any(|p| p.matcher.mac.is_some() || p.matcher.mac_prefix.is_some())
    {
        notes.push("no MAC given: policies that match a MAC or MAC prefix were tried against 00:00:00:00:00:00".into());
    }
    let mac_v = mac.unwrap_or(MacAddr([0; 6]));
    let model_bytes = model.map(str::as_bytes);
    let mut prl = vec![1u8, 3, 6, 15, 42, 66, 67];
    if requested_160 {
        prl.push(160);
    }
    let view = policy::ClientView {
        mac: mac_v,
        vendor_class: model_bytes,
        user_class: model_bytes,
        circuit_id: None,
        remote_id: None,
        prl: &prl,
    };
    let plan = options::plan_as(&prep, &view, true, true, mac.is_none().then_some("{mac}"));
    let address = match cfg.reservations.iter().find(|r| Some(r.mac) == mac) {
        Some(r) => format!("{} (reserved for this MAC)", r.ip),
        None => match cfg.pool {
            Some(p) => format!("one from the pool {p}"),
            None => "none: no pool and no reservation for this MAC".into(),
        },
    };
    let mut opts = plan.options.clone();
    if mac.is_none() {
        // `{mac}` was kept as is (a file check must not look for a made-up MAC's file).
        for (code, data) in &opts {
            if matches!(*code, 66 | 67 | 160) && data.windows(5).any(|w| w == b"{mac}") {
                notes.push(format!(
                    "no MAC given: {{mac}} in option {code} is shown unexpanded; provbox fills in each client's MAC"
                ));
            }
        }
    }
    opts.push((54, server_ip.octets().to_vec()));
    opts.sort_by_key(|(c, _)| *c);
    notes.extend(plan.notes.iter().cloned());
    Explanation {
        mac,
        model: model.map(str::to_string),
        detected_model: plan.model.clone(),
        requested_160,
        policy: plan
            .policy
            .as_ref()
            .map(|(_, n, why)| (n.clone(), why.clone())),
        policy_index: plan.policy.as_ref().map(|(i, ..)| *i),
        address,
        options: opts
            .iter()
            .map(|(c, d)| (*c, options::option_name(*c), options::option_value(*c, d)))
            .collect(),
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_example_config() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../provbox.example.toml");
        let c = provbox_config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let vars = TemplateVars::from_config(&c);
        let mac: MacAddr = "00:90:8f:12:34:56"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let e = explain(&c.dhcp, &vars, Some("450HD"), Some(mac), true);
        let s = e.to_string();
        assert!(
            s.contains(
                "policy: \"450HD over HTTPS\", because option 60 \"450HD\" contains \"450HD\""
            ),
            "{s}"
        );
        assert!(
            s.contains("160  provisioning URL       https://192.0.2.1/450HD.img;<MAC>.cfg"),
            "{s}"
        );
        assert!(s.contains("192.0.2.50 (reserved"), "{s}");
        assert!(s.contains(" 42  NTP servers            192.0.2.1"), "{s}");
        // 445HD: the policy sets 66/67 only, so no 160 even though it was asked for.
        let e = explain(&c.dhcp, &vars, Some("445HD"), None, true);
        assert!(
            e.options
                .iter()
                .any(|(c, _, v)| *c == 66 && v == "192.0.2.1"),
            "{e}"
        );
        assert!(
            e.options
                .iter()
                .any(|(c, _, v)| *c == 67 && v == "445HD.img"),
            "{e}"
        );
        assert!(!e.options.iter().any(|(c, ..)| *c == 160), "{e}");
        // An unknown model and a foreign MAC: defaults, {model} left for the phone.
        let e = explain(
            &c.dhcp,
            &vars,
            Some("SomethingElse"),
            Some(MacAddr([2, 0, 0, 0, 0, 1])),
            true,
        );
        assert!(e.policy.is_none());
        assert!(
            e.options
                .iter()
                .any(|(c, _, v)| *c == 160 && v == "http://192.0.2.1/SomethingElse.img;<MAC>.cfg"),
            "{e}"
        );
        let e = explain(
            &c.dhcp,
            &vars,
            None,
            Some(MacAddr([2, 0, 0, 0, 0, 1])),
            false,
        );
        assert!(!e.options.iter().any(|(c, ..)| *c == 160), "{e}");
        assert!(e.to_string().contains("option 160 left out"), "{e}");
        // No MAC: {mac} stays a placeholder rather than the 000000000000 stand-in.
        let mut d = c.dhcp.clone();
        d.provisioning_url = Some("http://{server}/{model}.img;{mac}.cfg".into());
        let e = explain(&d, &vars, Some("SomethingElse"), None, true);
        assert!(
            e.options
                .iter()
                .any(|(c, _, v)| *c == 160 && v == "http://192.0.2.1/SomethingElse.img;{mac}.cfg"),
            "{e}"
        );
        assert_eq!(e.policy_index, None);
        // A literal all-zero name (Poly's master config) is not taken for a MAC.
        let mut d = c.dhcp.clone();
        d.provisioning_url = Some("http://{server}/000000000000.cfg".into());
        let e = explain(&d, &vars, Some("SomethingElse"), None, true);
        assert!(
            e.options
                .iter()
                .any(|(c, _, v)| *c == 160 && v == "http://192.0.2.1/000000000000.cfg"),
            "{e}"
        );
        let e = explain(&c.dhcp, &vars, Some("445HD"), None, true);
        assert_eq!(e.policy_index, Some(1));
    }
}
