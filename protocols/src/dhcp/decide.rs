//! The DHCPv4 state machine as a pure function: a parsed request, the lease table and
//! the prepared config in; the reply, where it goes, and what must be made durable out.
//! No sockets, no clock, no disk: the server supplies `now_ms` and carries out the
//! [`Action`], which keeps every RFC 2131 rule unit- and property-testable.

use std::net::Ipv4Addr;

use dhcproto::v4::MessageType;
use provbox_storage::leases::{Lease, LeaseState, LeaseWrite};

use super::options::{Prepared, plan};
use super::policy::{ClientView, text};
use super::table::{LeaseTable, Slot, SlotState};
use super::wire::{ReplySpec, Request};

/// How long an OFFER holds its address for the client (RFC 2131 §4.3.1 leaves it to
/// the server; dnsmasq and Kea use tens of seconds).
pub const OFFER_HOLD_MS: u64 = 30_000;

/// Where a reply goes (RFC 2131 §4.1, RFC 8357).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// To the relay: `giaddr`, on port 67, or on the port the request came from when
    /// the relay sent the RFC 8357 Relay Source Port sub-option.
    Relay { giaddr: Ipv4Addr, source_port: bool },
    /// To a configured client, `ciaddr`:68.
    Unicast(Ipv4Addr),
    /// To 255.255.255.255:68.
    Broadcast,
    /// To `yiaddr`:68 at the client's MAC (needs an ARP entry; broadcast if that fails).
    Hardware(Ipv4Addr),
}

/// What the server must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send now (OFFER, NAK, the ACK to an INFORM).
    Send { spec: ReplySpec, dest: Dest },
    /// Make the lease durable, then send the ACK.
    CommitThenSend {
        lease: Lease,
        spec: ReplySpec,
        dest: Dest,
    },
    /// Make these durable; no reply (RELEASE, DECLINE).
    Commit(Vec<LeaseWrite>),
    /// Nothing to do; the label says why (a metrics label).
    Ignore(&'static str),
}

/// What the exchange said, for events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    pub ip: Option<Ipv4Addr>,
    pub model: Option<String>,
    pub policy: Option<String>,
    pub provisioning: Vec<(u8, String)>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub info: Info,
}

impl Request<'_> {
    pub fn view(&self) -> ClientView<'_> {
        ClientView {
            mac: self.mac,
            vendor_class: self.vendor_class.as_deref(),
            user_class: self.user_class.as_deref(),
            circuit_id: self.relay.as_ref().and_then(|r| r.circuit_id.as_deref()),
            remote_id: self.relay.as_ref().and_then(|r| r.remote_id.as_deref()),
            prl: &self.prl,
        }
    }
}

/// RFC 2131 §4.1: relay first, then ciaddr, then broadcast when asked or when the client
/// cannot receive unicast yet, else unicast to yiaddr at the client's MAC. A NAK without
/// a relay is always broadcast.
pub fn dest_for(req: &Request<'_>, msg: MessageType, yiaddr: Ipv4Addr) -> Dest {
    if !req.giaddr.is_unspecified() {
        return Dest::Relay {
            giaddr: req.giaddr,
            source_port: req.relay.as_ref().is_some_and(|r| r.source_port),
        };
    }
    if msg == MessageType::Nak {
        return Dest::Broadcast;
    }
    if !req.ciaddr.is_unspecified() {
        return Dest::Unicast(req.ciaddr);
    }
    if req.broadcast_flag() || yiaddr.is_unspecified() {
        return Dest::Broadcast;
    }
    Dest::Hardware(yiaddr)
}

fn ignore(reason: &'static str, info: Info) -> Decision {
    Decision {
        action: Action::Ignore(reason),
        info,
    }
}

/// Decides the answer to one request and updates the in-memory table accordingly.
pub fn decide(req: &Request<'_>, table: &mut LeaseTable, p: &Prepared, now_ms: u64) -> Decision {
    let view = req.view();
    let mut info = Info::default();
    // A relayed request must come from our subnet: that is how its pool is chosen, and
    // a relay elsewhere would be handed addresses it cannot route.
    if !req.giaddr.is_unspecified() && !p.subnet.contains(req.giaddr) {
        info.reason = Some(format!(
            "relay {} is outside the subnet {}",
            req.giaddr, p.subnet
        ));
        return ignore("giaddr_outside_subnet", info);
    }
    match req.msg_type {
        MessageType::Discover => discover(req, table, p, now_ms, &view, info),
        MessageType::Request => request(req, table, p, now_ms, &view, info),
        MessageType::Release => release(req, table, p, now_ms, info),
        MessageType::Decline => decline(req, table, p, now_ms, &view, info),
        MessageType::Inform => inform(req, p, &view, info),
        _ => ignore("unsupported_type", info),
    }
}

fn fill(info: &mut Info, pl: &super::options::Plan) {
    info.model = pl.model.clone();
    info.policy = pl.policy.as_ref().map(|(_, n, _)| n.clone());
    info.provisioning = pl.provisioning.clone();
}

fn discover(
    req: &Request<'_>,
    table: &mut LeaseTable,
    p: &Prepared,
    now: u64,
    view: &ClientView<'_>,
    mut info: Info,
) -> Decision {
    let pl = plan(p, view, true, false);
    fill(&mut info, &pl);
    let Some(ip) = table.pick(req.mac, req.requested_ip, now) else {
        info.reason = Some("no free address in the pool".into());
        return ignore("pool_exhausted", info);
    };
    // Hold the address for the client, unless it already holds it for longer.
    match table.slot(ip) {
        Some(s) if s.mac == req.mac && s.state == SlotState::Bound && s.expires_ms > now => {}
        _ => table.set(
            ip,
            Slot {
                mac: req.mac,
                state: SlotState::Offered,
                expires_ms: now + OFFER_HOLD_MS,
            },
        ),
    }
    info.ip = Some(ip);
    let spec = ReplySpec {
        msg_type: MessageType::Offer,
        yiaddr: ip,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: p.server_ip,
        options: pl.options,
    };
    Decision {
        action: Action::Send {
            dest: dest_for(req, MessageType::Offer, ip),
            spec,
        },
        info,
    }
}

fn nak(req: &Request<'_>, p: &Prepared, mut info: Info, why: String) -> Decision {
    let spec = ReplySpec {
        msg_type: MessageType::Nak,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: Ipv4Addr::UNSPECIFIED,
        // Option 56: a message for the client's log.
        options: vec![(56, why.clone().into_bytes())],
    };
    let _ = p;
    info.reason = Some(why);
    Decision {
        action: Action::Send {
            dest: dest_for(req, MessageType::Nak, Ipv4Addr::UNSPECIFIED),
            spec,
        },
        info,
    }
}

fn request(
    req: &Request<'_>,
    table: &mut LeaseTable,
    p: &Prepared,
    now: u64,
    view: &ClientView<'_>,
    mut info: Info,
) -> Decision {
    // Which state the client is in (RFC 2131 §4.3.2) decides where the address is.
    let ip = match (req.server_id, req.requested_ip) {
        // SELECTING: answering an OFFER, ours or another server's.
        (Some(sid), _) if sid != p.server_ip => {
            if let Some((ip, s)) = table.held_by(req.mac)
                && s.state == SlotState::Offered
            {
                table.remove(ip);
            }
            info.reason = Some(format!("the client chose server {sid}"));
            return ignore("other_server", info);
        }
        (Some(_), Some(ip)) => ip,
        (Some(_), None) if !req.ciaddr.is_unspecified() => req.ciaddr,
        // INIT-REBOOT: option 50, no server id.
        (None, Some(ip)) => ip,
        // RENEWING / REBINDING: ciaddr.
        (_, None) if !req.ciaddr.is_unspecified() => req.ciaddr,
        (_, None) => {
            info.reason = Some("REQUEST names no address (no option 50, no ciaddr)".into());
            return ignore("request_without_address", info);
        }
    };
    info.ip = Some(ip);
    if !p.subnet.contains(ip) {
        return nak(
            req,
            p,
            info,
            format!("{ip} is not in this network ({})", p.subnet),
        );
    }
    if !table.available(ip, req.mac, now) {
        let why = match table.reservation(req.mac) {
            Some(r) if r != ip => format!("{} is reserved {r}", req.mac),
            _ if !table.in_pool(ip) && table.reservation(req.mac).is_none() => {
                format!("{ip} is not in the pool")
            }
            _ => format!("{ip} is in use by another client"),
        };
        return nak(req, p, info, why);
    }
    let pl = plan(p, view, true, false);
    fill(&mut info, &pl);
    let expires_at_ms = now + u64::from(p.lease_secs) * 1000;
    table.set(
        ip,
        Slot {
            mac: req.mac,
            state: SlotState::Bound,
            expires_ms: expires_at_ms,
        },
    );
    let lease = Lease {
        mac: req.mac,
        ip,
        expires_at_ms,
        model: pl.model.clone(),
        hostname: req.hostname.as_deref().map(text).filter(|h| !h.is_empty()),
        state: LeaseState::Bound,
    };
    let spec = ReplySpec {
        msg_type: MessageType::Ack,
        yiaddr: ip,
        ciaddr: req.ciaddr,
        siaddr: p.server_ip,
        options: pl.options,
    };
    Decision {
        action: Action::CommitThenSend {
            lease,
            dest: dest_for(req, MessageType::Ack, ip),
            spec,
        },
        info,
    }
}

fn release(
    req: &Request<'_>,
    table: &mut LeaseTable,
    p: &Prepared,
    now: u64,
    mut info: Info,
) -> Decision {
    let ip = req.ciaddr;
    info.ip = Some(ip);
    if req.server_id.is_some_and(|s| s != p.server_ip) {
        return ignore("other_server", info);
    }
    match table.slot(ip) {
        Some(s) if s.mac == req.mac && s.state == SlotState::Bound => {
            // The MAC keeps its claim (it gets the address back if nobody took it).
            table.set(
                ip,
                Slot {
                    mac: req.mac,
                    state: SlotState::Released,
                    expires_ms: now,
                },
            );
            let lease = Lease {
                mac: req.mac,
                ip,
                expires_at_ms: now,
                model: None,
                hostname: None,
                state: LeaseState::Released,
            };
            Decision {
                action: Action::Commit(vec![LeaseWrite::Put(lease)]),
                info,
            }
        }
        _ => {
            info.reason = Some(format!("{ip} is not leased to {}", req.mac));
            ignore("release_unknown", info)
        }
    }
}

fn decline(
    req: &Request<'_>,
    table: &mut LeaseTable,
    p: &Prepared,
    now: u64,
    view: &ClientView<'_>,
    mut info: Info,
) -> Decision {
    let Some(ip) = req.requested_ip else {
        info.reason = Some("DECLINE without option 50".into());
        return ignore("decline_without_address", info);
    };
    info.ip = Some(ip);
    if req.server_id.is_some_and(|s| s != p.server_ip) {
        return ignore("other_server", info);
    }
    match table.slot(ip) {
        Some(s) if s.mac == req.mac && matches!(s.state, SlotState::Bound | SlotState::Offered) => {
            let until = now + p.decline_quarantine_ms;
            table.set(
                ip,
                Slot {
                    mac: req.mac,
                    state: SlotState::Declined,
                    expires_ms: until,
                },
            );
            info.reason = Some(format!("{ip} is in use on the network; quarantined"));
            info.model = super::policy::detect_model(view.vendor_class, view.user_class);
            let lease = Lease {
                mac: req.mac,
                ip,
                expires_at_ms: until,
                model: None,
                hostname: None,
                state: LeaseState::Declined,
            };
            Decision {
                action: Action::Commit(vec![LeaseWrite::Put(lease)]),
                info,
            }
        }
        _ => {
            info.reason = Some(format!("{ip} was not given to {}", req.mac));
            ignore("decline_unknown", info)
        }
    }
}

fn inform(req: &Request<'_>, p: &Prepared, view: &ClientView<'_>, mut info: Info) -> Decision {
    let pl = plan(p, view, false, false);
    fill(&mut info, &pl);
    info.ip = (!req.ciaddr.is_unspecified()).then_some(req.ciaddr);
    // RFC 2131 §4.3.5: no yiaddr, no lease time; to ciaddr (or the relay).
    let spec = ReplySpec {
        msg_type: MessageType::Ack,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        ciaddr: req.ciaddr,
        siaddr: p.server_ip,
        options: pl.options,
    };
    Decision {
        action: Action::Send {
            dest: dest_for(req, MessageType::Ack, Ipv4Addr::UNSPECIFIED),
            spec,
        },
        info,
    }
}

#[cfg(test)]
mod tests;
