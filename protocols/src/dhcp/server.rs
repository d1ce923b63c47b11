//! The running server: one receive loop that owns the lease table and decides every
//! request inline, and one commit thread that makes leases durable in batches.
//!
//! ```text
//!  udp/67 ──► receive loop ──(parse, rate-limit, decide)──► OFFER / NAK / INFORM-ACK sent now
//!                   │
//!                   └─ ACK + lease, RELEASE, DECLINE ──► commit thread: drain the queue,
//!                        one redb transaction (fsync), then send the ACKs of that batch
//! ```
//!
//! Group commit is what makes "durable before the ACK leaves" cheap: while one fsync
//! runs, the next requests queue up and share the next one. The receive loop never
//! waits for the disk, so OFFERs keep flowing while a commit is in progress.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use dhcproto::v4::MessageType;
use provbox_config::{DhcpConfig, Ipv4Net, MacAddr, TemplateVars};
use provbox_storage::leases::{Lease, LeaseDb, LeaseWrite};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::DhcpError;
use super::decide::{Action, Decision, Dest, Info, decide};
use super::options::Prepared;
use super::policy::{text, user_class_text};
use super::socket;
use super::table::LeaseTable;
use super::wire::{self, Request};
use crate::events::{DhcpInfo, EventBus, EventKind, now_ms};
use crate::warn_limited;

/// Commits waiting beyond this are refused (the disk is stuck); clients retry.
const COMMIT_QUEUE: usize = 65_536;
// The queue holds boxed jobs: a bounded std channel allocates and touches every slot
// up front, and 65 536 inline `Job`s (a lease, a packet and an event each) were 30 MB
// of resident memory before the first DISCOVER.
/// Most jobs in one transaction.
const MAX_BATCH: usize = 4096;
/// Datagrams this large are not DHCP (RFC 2131 messages fit a 1500-byte frame; 4 KiB
/// leaves room for jumbo frames and option 57).
const MAX_DATAGRAM: usize = 4096;

/// A bound, not yet running DHCP server.
pub struct DhcpServer {
    socket: StdUdpSocket,
    local: SocketAddr,
    prep: Arc<Prepared>,
    table: LeaseTable,
    leases: LeaseDb,
    bus: EventBus,
    arp: Arc<Arp>,
    per_mac_rate: u32,
}

impl std::fmt::Debug for DhcpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhcpServer")
            .field("local", &self.local)
            .field("server_ip", &self.prep.server_ip)
            .finish()
    }
}

/// Where ARP entries go, and whether the kernel lets us write them.
#[derive(Debug)]
struct Arp {
    interface: Option<String>,
    works: AtomicBool,
}

impl Arp {
    /// The socket address for a reply to `dest`.
    fn resolve(
        &self,
        sock: &StdUdpSocket,
        dest: Dest,
        mac: MacAddr,
        peer: SocketAddr,
    ) -> SocketAddr {
        let v4 = |ip: Ipv4Addr, port: u16| SocketAddr::V4(SocketAddrV4::new(ip, port));
        match dest {
            Dest::Relay {
                giaddr,
                source_port,
            } => v4(giaddr, if source_port { peer.port() } else { 67 }),
            Dest::Unicast(ip) => v4(ip, 68),
            Dest::Broadcast => v4(Ipv4Addr::BROADCAST, 68),
            Dest::Hardware(ip) => {
                if let Some(ifname) = &self.interface
                    && self.works.load(Ordering::Relaxed)
                {
                    match socket::arp_inject(sock, ifname, ip, mac) {
                        Ok(()) => return v4(ip, 68),
                        Err(e) => {
                            // Without CAP_NET_ADMIN it will never work: stop trying.
                            if e.raw_os_error() == Some(libc::EPERM) {
                                self.works.store(false, Ordering::Relaxed);
                            }
                            warn_limited!(error = %e, interface = %ifname, "cannot add an ARP entry for a DHCP reply; broadcasting instead");
                        }
                    }
                }
                v4(Ipv4Addr::BROADCAST, 68)
            }
        }
    }
}

/// Work for the commit thread. `Ack` is nearly every job, so it stays unboxed (boxing it
/// would cost an allocation per ACK to save bytes in the rare `Write`).
#[allow(clippy::large_enum_variant)]
enum Job {
    /// Commit the lease, then publish the ACK's event and send it.
    Ack {
        lease: Lease,
        packet: Vec<u8>,
        dest: Dest,
        peer: SocketAddr,
        event: DhcpInfo,
    },
    /// Commit only (RELEASE, DECLINE).
    Write(Vec<LeaseWrite>),
}

fn msg_name(t: MessageType) -> &'static str {
    match t {
        MessageType::Discover => "discover",
        MessageType::Offer => "offer",
        MessageType::Request => "request",
        MessageType::Decline => "decline",
        MessageType::Ack => "ack",
        MessageType::Nak => "nak",
        MessageType::Release => "release",
        MessageType::Inform => "inform",
        _ => "other",
    }
}

fn drop_count(reason: &'static str) {
    metrics::counter!("provbox_dhcp_dropped_total", "reason" => reason).increment(1);
}

fn packet_count(t: MessageType) {
    metrics::counter!("provbox_dhcp_packets_total", "type" => msg_name(t)).increment(1);
}

impl DhcpServer {
    /// Resolves `server_ip`, binds the socket (port 0 → ephemeral) and loads the leases.
    /// `vars.server` empty means "use the resolved server_ip".
    pub fn bind(
        cfg: &DhcpConfig,
        vars: TemplateVars,
        leases: LeaseDb,
        bus: EventBus,
    ) -> Result<DhcpServer, DhcpError> {
        let config = |field: &'static str, message: String| DhcpError::Config { field, message };
        if cfg.pool.is_none() && cfg.reservations.is_empty() {
            return Err(config(
                "pool",
                "no addresses to give out: set `pool` (e.g. \"192.0.2.100-192.0.2.199\") or add a [[dhcp.reservation]]".into(),
            ));
        }
        let from_interface = cfg.interface.as_deref().and_then(socket::interface_ipv4);
        if let Some(name) = &cfg.interface
            && from_interface.is_none()
            && cfg.server_ip.is_none()
        {
            return Err(config(
                "interface",
                format!(
                    "interface {name} has no IPv4 address (or does not exist), so server_ip cannot come from it; give it an address or set `server_ip`"
                ),
            ));
        }
        let bind_ip = match cfg.bind.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
            _ => None,
        };
        let Some(server_ip) = cfg
            .server_ip
            .or(from_interface.map(|(ip, _)| ip))
            .or(bind_ip)
        else {
            return Err(config(
                "server_ip",
                "set `server_ip` (option 54 and {server}) or `interface`; provbox does not guess it, because a guess changes when a container restarts".into(),
            ));
        };
        let subnet = cfg
            .subnet
            .or_else(|| {
                if cfg.server_ip.is_none() {
                    from_interface.and_then(|(_, n)| n)
                } else {
                    None
                }
            })
            .or_else(|| Ipv4Net::from_mask(server_ip, cfg.subnet_mask))
            .ok_or_else(|| {
                config(
                    "subnet_mask",
                    "not a contiguous mask; write e.g. \"255.255.255.0\"".into(),
                )
            })?;
        if let Some(pool) = cfg.pool
            && !(subnet.contains(pool.first) && subnet.contains(pool.last))
        {
            return Err(config(
                "pool",
                format!("the pool {pool} lies outside the subnet {subnet}; set `subnet`"),
            ));
        }
        let std_sock =
            socket::bind(cfg.bind, cfg.interface.as_deref()).map_err(|source| DhcpError::Bind {
                addr: cfg.bind,
                interface: cfg.interface.clone(),
                source,
            })?;
        let local = std_sock.local_addr().map_err(|source| DhcpError::Socket {
            what: "local address",
            source,
        })?;
        let mut table = LeaseTable::new(cfg.pool, &cfg.reservations);
        table.load(leases.all());
        let arp_iface = cfg
            .interface
            .clone()
            .or_else(|| socket::interface_for(subnet.network()));
        tracing::info!(%local, %server_ip, %subnet, pool = ?cfg.pool.map(|p| p.to_string()), leases = leases.len(), "DHCP server bound");
        Ok(DhcpServer {
            socket: std_sock,
            local,
            prep: Arc::new(Prepared::new(cfg, server_ip, subnet, vars)),
            table,
            leases,
            bus,
            arp: Arc::new(Arp {
                interface: arp_iface,
                works: AtomicBool::new(true),
            }),
            per_mac_rate: cfg.per_mac_rate.max(1),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Option 54 and `{server}`, as resolved at bind.
    pub fn server_ip(&self) -> Ipv4Addr {
        self.prep.server_ip
    }

    /// Serves until `shutdown`; then commits and answers what is queued, and returns.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), DhcpError> {
        let writer_sock = self
            .socket
            .try_clone()
            .map_err(|source| DhcpError::Socket {
                what: "clone",
                source,
            })?;
        let sock =
            UdpSocket::from_std(
                self.socket
                    .try_clone()
                    .map_err(|source| DhcpError::Socket {
                        what: "clone",
                        source,
                    })?,
            )
            .map_err(|source| DhcpError::Socket {
                what: "register with tokio",
                source,
            })?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Box<Job>>(COMMIT_QUEUE);
        let committer = {
            let (leases, bus, arp) = (self.leases.clone(), self.bus.clone(), self.arp.clone());
            std::thread::Builder::new()
                .name("dhcp-commit".into())
                .spawn(move || commit_loop(rx, leases, writer_sock, bus, arp))
                .map_err(|source| DhcpError::Socket {
                    what: "start the commit thread",
                    source,
                })?
        };
        let mut limiter = MacLimiter::new(self.per_mac_rate);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut out = Vec::with_capacity(1024);
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let now = now_ms();
                    metrics::gauge!("provbox_dhcp_leases_active").set(self.table.active(now) as f64);
                    limiter.gc(now / 1000);
                }
                r = sock.recv_from(&mut buf) => match r {
                    Ok((n, peer)) => {
                        if let Some((packet, dest)) = self.handle(&buf[..n], peer, &mut limiter, &tx, &mut out) {
                            send(&sock, packet, dest).await;
                        }
                    }
                    Err(e) => {
                        // ICMP errors from earlier sends surface here (ECONNREFUSED); not fatal.
                        warn_limited!(error = %e, "DHCP receive error");
                        drop_count("recv_error");
                    }
                },
            }
        }
        drop(tx);
        // The commit thread drains the queue, commits and answers, then exits.
        let joined = tokio::task::spawn_blocking(move || committer.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!(
                "the DHCP commit thread panicked; leases of the last batch may not be durable"
            );
        }
        Ok(())
    }

    /// Handles one datagram; returns a reply to send now, if any.
    fn handle<'o>(
        &mut self,
        data: &[u8],
        peer: SocketAddr,
        limiter: &mut MacLimiter,
        tx: &SyncSender<Box<Job>>,
        out: &'o mut Vec<u8>,
    ) -> Option<(&'o [u8], SocketAddr)> {
        if data.len() >= MAX_DATAGRAM {
            drop_count("oversized");
            warn_limited!(%peer, len = data.len(), "dropped an oversized datagram on the DHCP port");
            return None;
        }
        let req = match wire::parse(data) {
            Ok(r) => r,
            Err(e) => {
                drop_count(e.as_str());
                warn_limited!(%peer, reason = e.as_str(), len = data.len(), "dropped a malformed datagram on the DHCP port");
                return None;
            }
        };
        packet_count(req.msg_type);
        let now = now_ms();
        if !limiter.allow(req.mac, now / 1000) {
            drop_count("rate_limited");
            warn_limited!(mac = %req.mac, "a client exceeds dhcp.per_mac_rate; ignoring it for a while");
            return None;
        }
        let Decision { action, info } = decide(&req, &mut self.table, &self.prep, now);
        let request_kind = match req.msg_type {
            MessageType::Discover => Some(EventKind::DhcpDiscover as fn(DhcpInfo) -> EventKind),
            MessageType::Request => Some(EventKind::DhcpRequest as fn(DhcpInfo) -> EventKind),
            MessageType::Release => Some(EventKind::DhcpRelease as fn(DhcpInfo) -> EventKind),
            MessageType::Decline => Some(EventKind::DhcpDecline as fn(DhcpInfo) -> EventKind),
            MessageType::Inform => Some(EventKind::DhcpInform as fn(DhcpInfo) -> EventKind),
            _ => None,
        };
        if let Some(kind) = request_kind {
            let mut ev = event_info(&req, &info, false);
            if req.msg_type != MessageType::Release && req.msg_type != MessageType::Decline {
                ev.ip = req
                    .requested_ip
                    .or((!req.ciaddr.is_unspecified()).then_some(req.ciaddr));
            }
            self.bus.publish(kind(ev));
        }
        match action {
            Action::Ignore(reason) => {
                drop_count(reason);
                if reason == "pool_exhausted" {
                    warn_limited!(mac = %req.mac, "DHCP pool exhausted: no address to offer to a new client (existing leases still renew)");
                } else {
                    tracing::debug!(mac = %req.mac, reason, detail = ?info.reason, "DHCP request ignored");
                }
                None
            }
            Action::Commit(writes) => {
                self.enqueue(tx, Job::Write(writes));
                None
            }
            Action::Send { spec, dest } => {
                let t = spec.msg_type;
                if let Err(e) = wire::encode_reply(&req, spec, self.prep.server_ip, out) {
                    drop_count("encode_error");
                    warn_limited!(error = %e, "cannot encode a DHCP reply");
                    return None;
                }
                packet_count(t);
                let ev = event_info(&req, &info, true);
                self.bus.publish(match t {
                    MessageType::Offer => EventKind::DhcpOffer(ev),
                    MessageType::Nak => EventKind::DhcpNak(ev),
                    _ => EventKind::DhcpAck(ev),
                });
                let to = self.arp.resolve(&self.socket, dest, req.mac, peer);
                Some((out.as_slice(), to))
            }
            Action::CommitThenSend { lease, spec, dest } => {
                let mut packet = Vec::with_capacity(512);
                if let Err(e) = wire::encode_reply(&req, spec, self.prep.server_ip, &mut packet) {
                    drop_count("encode_error");
                    warn_limited!(error = %e, "cannot encode a DHCP reply");
                    return None;
                }
                let event = event_info(&req, &info, true);
                self.enqueue(
                    tx,
                    Job::Ack {
                        lease,
                        packet,
                        dest,
                        peer,
                        event,
                    },
                );
                None
            }
        }
    }

    fn enqueue(&self, tx: &SyncSender<Box<Job>>, job: Job) {
        match tx.try_send(Box::new(job)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                drop_count("commit_backlog");
                warn_limited!(
                    "the lease database cannot keep up; dropping a lease write (the client will retry)"
                );
            }
            Err(TrySendError::Disconnected(_)) => drop_count("commit_stopped"),
        }
    }
}

/// Sends one reply now; waits for buffer space rather than dropping it.
async fn send(sock: &UdpSocket, packet: &[u8], to: SocketAddr) {
    let r = match sock.try_send_to(packet, to) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.send_to(packet, to).await,
        other => other,
    };
    if let Err(e) = r {
        drop_count("send_error");
        warn_limited!(%to, error = %e, "cannot send a DHCP reply");
    }
}

fn event_info(req: &Request<'_>, info: &Info, reply: bool) -> DhcpInfo {
    DhcpInfo {
        mac: req.mac.to_string(),
        ip: info.ip,
        model: info.model.clone(),
        vendor_class: req.vendor_class.as_deref().map(text),
        user_class: req.user_class.as_deref().map(user_class_text),
        requested_options: req.prl.to_vec(),
        policy: info.policy.clone(),
        giaddr: (!req.giaddr.is_unspecified()).then_some(req.giaddr),
        xid: req.xid,
        provisioning: if reply {
            info.provisioning.clone()
        } else {
            Vec::new()
        },
        reason: info.reason.clone(),
    }
}

/// The commit thread: batches jobs into one durable transaction each, then sends the
/// ACKs of the batch. Exits when the receive loop dropped its sender and the queue is empty.
fn commit_loop(
    rx: Receiver<Box<Job>>,
    leases: LeaseDb,
    sock: StdUdpSocket,
    bus: EventBus,
    arp: Arc<Arp>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut writes: Vec<LeaseWrite> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(*first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(*j),
                Err(_) => break,
            }
        }
        writes.clear();
        for job in &batch {
            match job {
                Job::Ack { lease, .. } => writes.push(LeaseWrite::Put(lease.clone())),
                Job::Write(w) => writes.extend(w.iter().cloned()),
            }
        }
        if let Err(e) = leases.apply(&writes) {
            // No ACK without a durable lease: the clients retry their REQUEST.
            tracing::error!(error = %e, leases = writes.len(), "cannot commit DHCP leases; their ACKs are not sent");
            for _ in &batch {
                drop_count("lease_commit_failed");
            }
            batch.clear();
            continue;
        }
        metrics::histogram!("provbox_dhcp_commit_batch").record(writes.len() as f64);
        for job in batch.drain(..) {
            if let Job::Ack {
                lease,
                packet,
                dest,
                peer,
                event,
            } = job
            {
                let to = arp.resolve(&sock, dest, lease.mac, peer);
                // The lease is durable: publish before sending, because a phone acts on
                // the ACK at once and its first transfer must not reach the tracker
                // before the ACK that explains it.
                bus.publish(EventKind::DhcpAck(event));
                if send_blocking(&sock, &packet, to) {
                    packet_count(MessageType::Ack);
                }
            }
        }
    }
}

/// Sends from the commit thread. The socket is non-blocking (it shares its file with the
/// receive loop's), so a full buffer is waited out briefly, not forever.
fn send_blocking(sock: &StdUdpSocket, packet: &[u8], to: SocketAddr) -> bool {
    for _ in 0..200 {
        match sock.send_to(packet, to) {
            Ok(_) => return true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(500))
            }
            Err(e) => {
                drop_count("send_error");
                warn_limited!(%to, error = %e, "cannot send a DHCP ACK");
                return false;
            }
        }
    }
    drop_count("send_error");
    false
}

/// Per-MAC packet budget per second; a MAC over budget is ignored for two seconds
/// (starvation defence: one client cannot hog the server or the pool).
struct MacLimiter {
    rate: u32,
    seen: HashMap<MacAddr, (u64, u32, u64)>,
}

impl MacLimiter {
    fn new(rate: u32) -> Self {
        Self {
            rate,
            seen: HashMap::new(),
        }
    }

    fn allow(&mut self, mac: MacAddr, now_s: u64) -> bool {
        let e = self.seen.entry(mac).or_insert((now_s, 0, 0));
        if e.2 > now_s {
            return false;
        }
        if e.0 != now_s {
            *e = (now_s, 0, 0);
        }
        e.1 += 1;
        if e.1 > self.rate {
            e.2 = now_s + 2;
            return false;
        }
        true
    }

    fn gc(&mut self, now_s: u64) {
        self.seen.retain(|_, e| e.0 + 2 >= now_s || e.2 > now_s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter() {
        let mut l = MacLimiter::new(3);
        let m = MacAddr([2, 0, 0, 0, 0, 1]);
        assert!((0..3).all(|_| l.allow(m, 10)));
        assert!(!l.allow(m, 10));
        assert!(!l.allow(m, 11), "still blocked");
        assert!(l.allow(m, 12));
        assert!(l.allow(MacAddr([2, 0, 0, 0, 0, 2]), 10));
        l.gc(100);
        assert!(l.seen.is_empty());
    }
}
