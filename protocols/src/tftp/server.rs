//! The TFTP server: the listening socket, request handling (path resolution through
//! the store, option negotiation, refusals), and one tokio task per transfer.
//!
//! The listener only decodes requests and spawns; a transfer opens its file, binds
//! its own socket (from `port_range` if set) and runs the engine in
//! [`super::transfer`], so a slow open or a slow client never holds up anyone else.
//! Transfers run on the per-core runtimes of [`super::workers`], so they spread over
//! every core.
//!
//! In single-port mode every transfer answers from the listening socket: the listener
//! routes each datagram to the transfer of its source address through a channel.
//!
//! A client that repeats its request before hearing from us gets the first packet
//! again from the transfer already running, not a second transfer. Any other request
//! from the same address starts a new transfer (a phone's full download after its
//! header probe, a PXE ROM's real request after its tsize probe).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use provbox_config::{AccessConfig, PortRange, TftpConfig, TftpQuirk};
use provbox_storage::{Entry, Store, StoreError};

use super::netascii;
use super::packet::{self, ErrorCode, MIN_BLKSIZE, Mode, Options, Packet, Request, error_packet};
use super::rtt::RttEstimator;
use super::transfer::{self, BlockReader, Link, SendEnd, SendObserver, SendParams, Source};
use super::upload;
use super::workers::{self, Workers};
use crate::events::{EventBus, EventKind, Proto, TftpOptions};
use crate::progress::{Transfer, TransferStart};
use crate::uploads::UploadArea;

/// Files served in netascii are translated in memory; larger ones must be fetched in octet mode.
const NETASCII_MAX: u64 = 16 * 1024 * 1024;
/// Payload bytes one window may hold; windowsize is lowered to fit (RFC 7440 lets the
/// server answer less). A window must fit a client's default UDP receive buffer
/// (208 KiB on Linux, counted with per-datagram overhead) or its tail is dropped.
const WINDOW_BYTES_MAX: u64 = 128 * 1024;
/// Datagrams queued per transfer in single-port mode before the listener drops them.
const SHARED_QUEUE: usize = 256;

/// Errors that stop the server (bad input never does).
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error(
        "cannot bind the TFTP socket to {addr}: {source} (another TFTP server on that port? ports below 1024 need root or CAP_NET_BIND_SERVICE; set [tftp] bind)"
    )]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("the TFTP socket on {addr} failed: {source}")]
    Socket { addr: SocketAddr, source: io::Error },
    #[error(
        "cannot use the TFTP upload directory {path}: {source}; create it or fix [tftp] upload_dir"
    )]
    UploadDir {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

/// A bound, not yet running, TFTP server.
#[derive(Debug)]
pub struct TftpServer {
    socket: std::net::UdpSocket,
    local: SocketAddr,
    cfg: TftpConfig,
    store: Store,
    bus: EventBus,
    access: AccessConfig,
    models: Option<ModelLookup>,
    uploads: Option<Arc<UploadArea>>,
}

/// The phone model at a client address (from its DHCP lease), for `[[tftp.quirk]]`.
#[derive(Clone)]
pub struct ModelLookup(pub Arc<dyn Fn(IpAddr) -> Option<String> + Send + Sync>);

impl std::fmt::Debug for ModelLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelLookup")
    }
}

impl TftpServer {
    /// How to learn a client's model, so `[[tftp.quirk]]` applies to requests that do
    /// not name one (`<MAC>.cfg`); without it only the requested file name counts.
    pub fn with_models(mut self, lookup: ModelLookup) -> Self {
        self.models = Some(lookup);
        self
    }

    /// Serve only the clients `access` permits; others get ERROR 2.
    pub fn with_access(mut self, access: AccessConfig) -> Self {
        self.access = access;
        self
    }

    /// Binds `cfg.bind` (port 0: any free port). Nothing is served until [`Self::run`].
    pub fn bind(cfg: &TftpConfig, store: Store, bus: EventBus) -> Result<TftpServer, TftpError> {
        let addr = cfg.bind;
        let err = |source| TftpError::Bind { addr, source };
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .map_err(err)?;
        // Single-port mode receives every client's ACKs here: give bursts room.
        let _ = sock.set_recv_buffer_size(if cfg.single_port { 4 << 20 } else { 1 << 20 });
        if addr.is_ipv6() {
            let _ = sock.set_only_v6(false);
        }
        sock.bind(&addr.into()).map_err(err)?;
        sock.set_nonblocking(true).map_err(err)?;
        let socket: std::net::UdpSocket = sock.into();
        let local = socket.local_addr().map_err(err)?;
        let uploads = match &cfg.upload_dir {
            Some(dir) => Some(Arc::new(UploadArea::open(dir, cfg.upload_max).map_err(
                |source| TftpError::UploadDir {
                    path: dir.clone(),
                    source,
                },
            )?)),
            None => None,
        };
        Ok(TftpServer {
            socket,
            local,
            cfg: cfg.clone(),
            store,
            bus,
            access: AccessConfig::default(),
            models: None,
            uploads,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves until `shutdown` is cancelled; then every transfer is told (ERROR 0) and
    /// ended, and this returns once they have all been recorded.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), TftpError> {
        let local = self.local;
        let socket =
            Arc::new(
                UdpSocket::from_std(self.socket).map_err(|source| TftpError::Socket {
                    addr: local,
                    source,
                })?,
            );
        let workers =
            Workers::start(workers::default_count()).map_err(|source| TftpError::Socket {
                addr: local,
                source,
            })?;
        let sh = Arc::new(Shared {
            cfg: self.cfg,
            access: self.access,
            models: self.models,
            uploads: self.uploads,
            store: self.store,
            bus: self.bus,
            listen: socket.clone(),
            local,
            active: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            cancel: shutdown.clone(),
            tasks: TaskTracker::new(),
            workers,
        });
        tracing::info!(addr = %local, single_port = sh.cfg.single_port, "TFTP server listening");
        let mut buf = vec![0u8; 65536];
        let mut errors = 0u32;
        let res = loop {
            let (n, peer) = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                r = socket.recv_from(&mut buf) => match r {
                    Ok(x) => { errors = 0; x }
                    Err(e) => {
                        // Transient errors (ICMP echoes, ENOBUFS) must not stop the server;
                        // a socket that only fails is broken.
                        errors += 1;
                        crate::warn_limited!(error = %e, "TFTP: receive error on the listening socket");
                        if errors > 1000 {
                            break Err(TftpError::Socket { addr: local, source: e });
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                },
            };
            sh.on_datagram(&buf[..n], peer);
        };
        sh.tasks.close();
        sh.tasks.wait().await;
        tracing::info!(addr = %local, "TFTP server stopped");
        res
    }
}

/// State every transfer task shares.
#[derive(Debug)]
pub(super) struct Shared {
    cfg: TftpConfig,
    access: AccessConfig,
    models: Option<ModelLookup>,
    /// Where WRQ uploads go (`[tftp] upload_dir`), opened once at bind.
    uploads: Option<Arc<UploadArea>>,
    store: Store,
    bus: EventBus,
    listen: Arc<UdpSocket>,
    local: SocketAddr,
    /// The transfer of each client address.
    active: Mutex<HashMap<SocketAddr, Active>>,
    generation: AtomicU64,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// The runtimes transfers run on.
    workers: Workers,
}

#[derive(Debug)]
struct Active {
    generation: u64,
    /// The request datagram, to recognise a repeat.
    request: Vec<u8>,
    /// Whether the client has answered the transfer yet.
    heard: Arc<AtomicBool>,
    kick: Arc<Notify>,
    /// Single-port mode: where this peer's datagrams go.
    tx: Option<mpsc::Sender<Bytes>>,
}

/// One request, as the task handling it receives it.
#[derive(Debug)]
pub(super) struct Job {
    pub peer: SocketAddr,
    pub req: Request,
    pub generation: u64,
    pub heard: Arc<AtomicBool>,
    pub kick: Arc<Notify>,
    pub rx: Option<mpsc::Receiver<Bytes>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Active>> {
        match self.active.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn on_datagram(self: &Arc<Self>, data: &[u8], peer: SocketAddr) {
        let opcode = if data.len() >= 2 {
            u16::from_be_bytes([data[0], data[1]])
        } else {
            0
        };
        let is_request = opcode == 1 || opcode == 2;
        if self.cfg.single_port && !is_request {
            let tx = self.lock().get(&peer).and_then(|a| a.tx.clone());
            match tx {
                // A full queue means the transfer is far behind: drop, as the network would.
                Some(tx) => drop(tx.try_send(Bytes::copy_from_slice(data))),
                None => metrics::counter!("provbox_tftp_bad_packets_total", "why" => "no_transfer")
                    .increment(1),
            }
            return;
        }
        match Packet::decode(data) {
            Ok(Packet::Rrq(req)) => self.on_request(data, peer, req, false),
            Ok(Packet::Wrq(req)) => self.on_request(data, peer, req, true),
            Ok(_) => {
                // A late ACK or ERROR of a finished transfer, or noise.
                metrics::counter!("provbox_tftp_bad_packets_total", "why" => "no_transfer")
                    .increment(1);
            }
            Err(e) => {
                metrics::counter!("provbox_tftp_bad_packets_total", "why" => "malformed")
                    .increment(1);
                crate::warn_limited!(%peer, error = %e, "TFTP: malformed request; answered with ERROR 4");
                if is_request {
                    self.reply_error(
                        peer,
                        ErrorCode::IllegalOperation,
                        &format!("malformed request: {e}"),
                    );
                }
            }
        }
    }

    fn on_request(self: &Arc<Self>, raw: &[u8], peer: SocketAddr, req: Request, write: bool) {
        if !self.access.permits(peer.ip()) {
            crate::warn_limited!(%peer, path = %req.filename, "TFTP: client not in [access] allow; refused");
            metrics::counter!("provbox_access_denied_total", "proto" => "tftp").increment(1);
            self.bus.publish(EventKind::TransferRefused {
                proto: Proto::Tftp,
                peer,
                path: req.filename.clone(),
                reason: "client address not in [access] allow".to_string(),
                user_agent: None,
            });
            self.reply_error(peer, ErrorCode::AccessViolation, "access violation");
            return;
        }
        let max = self.cfg.max_transfers.max(1);
        let mut active = self.lock();
        if let Some(a) = active.get(&peer)
            && a.request == raw
            && !a.heard.load(Ordering::Acquire)
        {
            // The client repeated its request: the running transfer answers again.
            a.kick.notify_one();
            metrics::counter!("provbox_tftp_repeated_requests_total").increment(1);
            return;
        }
        if active.len() >= max && !active.contains_key(&peer) {
            drop(active);
            metrics::counter!("provbox_tftp_busy_total").increment(1);
            crate::warn_limited!(%peer, limit = max, "TFTP: [tftp] max_transfers reached; request refused");
            self.bus.publish(EventKind::TransferRefused {
                proto: Proto::Tftp,
                peer,
                path: req.filename.clone(),
                reason: format!(
                    "{}: [tftp] max_transfers ({max}) reached",
                    crate::events::BUSY_REASON
                ),
                user_agent: None,
            });
            self.reply_error(peer, ErrorCode::NotDefined, "server busy, try again");
            return;
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let heard = Arc::new(AtomicBool::new(false));
        let kick = Arc::new(Notify::new());
        let (tx, rx) = if self.cfg.single_port {
            let (tx, rx) = mpsc::channel(SHARED_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        // In single-port mode this drops the previous transfer's sender: it ends as superseded.
        active.insert(
            peer,
            Active {
                generation,
                request: raw.to_vec(),
                heard: heard.clone(),
                kick: kick.clone(),
                tx,
            },
        );
        drop(active);
        metrics::counter!("provbox_tftp_requests_total", "op" => if write { "wrq" } else { "rrq" })
            .increment(1);
        let job = Job {
            peer,
            req,
            generation,
            heard,
            kick,
            rx,
        };
        let sh = self.clone();
        self.workers.spawn(&self.tasks, async move {
            let peer = job.peer;
            let generation = job.generation;
            if write {
                upload::serve(&sh, job).await;
            } else {
                sh.serve_read(job).await;
            }
            let mut active = sh.lock();
            if active
                .get(&peer)
                .is_some_and(|a| a.generation == generation)
            {
                active.remove(&peer);
            }
        });
    }

    /// An ERROR from the listening socket, for requests refused before a transfer exists.
    pub(super) fn reply_error(&self, peer: SocketAddr, code: ErrorCode, msg: &str) {
        // try_send: the listener never waits on a full socket buffer for an error reply.
        let _ = self.listen.try_send_to(&error_packet(code, msg), peer);
    }

    /// Records and answers a request that gets no content.
    pub(super) fn refuse(
        &self,
        peer: SocketAddr,
        path: &str,
        code: ErrorCode,
        msg: &str,
        reason: String,
    ) {
        tracing::info!(%peer, path, %reason, "TFTP request refused");
        metrics::counter!("provbox_tftp_refused_total", "code" => code.code().to_string())
            .increment(1);
        self.bus.publish(EventKind::TransferRefused {
            proto: Proto::Tftp,
            peer,
            path: path.to_string(),
            reason,
            user_agent: None,
        });
        self.reply_error(peer, code, msg);
    }

    /// The `[[tftp.quirk]]` for this client: by the model its lease recorded, else the
    /// model of the image it asks for.
    fn quirk(&self, peer: SocketAddr, entry: &Entry) -> Option<&TftpQuirk> {
        if self.cfg.quirks.is_empty() {
            return None;
        }
        let leased = self.models.as_ref().and_then(|f| (f.0)(peer.ip()));
        leased
            .as_deref()
            .or(entry.model.as_deref())
            .and_then(|m| self.cfg.quirk_for(m))
    }

    pub(super) fn upload_area(&self) -> Option<&UploadArea> {
        self.uploads.as_deref()
    }

    pub(super) fn bus(&self) -> &EventBus {
        &self.bus
    }

    pub(super) fn cfg(&self) -> &TftpConfig {
        &self.cfg
    }

    pub(super) fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The path to the client for a transfer: its own socket (connected), or the
    /// listening socket in single-port mode.
    pub(super) async fn link(
        &self,
        peer: SocketAddr,
        rx: Option<mpsc::Receiver<Bytes>>,
    ) -> io::Result<Link> {
        if let Some(rx) = rx {
            return Ok(Link::Shared {
                socket: self.listen.clone(),
                peer,
                rx,
            });
        }
        let std = bind_transfer_socket(self.local.ip(), self.cfg.port_range)?;
        std.set_nonblocking(true)?;
        let sock = UdpSocket::from_std(std)?;
        sock.connect(peer).await?;
        Ok(Link::Own(sock))
    }

    async fn serve_read(&self, job: Job) {
        let Job {
            peer,
            req,
            heard,
            kick,
            rx,
            ..
        } = job;
        let path = normalise(&req.filename);
        let snap = match self.store.open(&path).await {
            Ok(s) => s,
            Err(StoreError::Refused { reason, .. }) => {
                return self.refuse(
                    peer,
                    &req.filename,
                    ErrorCode::AccessViolation,
                    "access violation",
                    format!("path refused: {reason}"),
                );
            }
            Err(StoreError::NotFound(_)) => {
                return self.refuse(
                    peer,
                    &req.filename,
                    ErrorCode::FileNotFound,
                    "file not found",
                    "no such file".to_string(),
                );
            }
            Err(e) => {
                tracing::error!(%peer, path = %req.filename, error = %e, "TFTP: cannot open a store file");
                return self.refuse(
                    peer,
                    &req.filename,
                    ErrorCode::NotDefined,
                    "server error",
                    format!("cannot open: {e}"),
                );
            }
        };
        let entry = snap.entry.clone();
        let netascii = req.mode != Mode::Octet;
        let (source, len) = if netascii {
            if entry.size > NETASCII_MAX {
                let msg = format!(
                    "file too large for netascii ({} bytes); fetch it in octet mode",
                    entry.size
                );
                return self.refuse(
                    peer,
                    &req.filename,
                    ErrorCode::NotDefined,
                    &msg,
                    msg.clone(),
                );
            }
            // The snapshot is already in memory; encoding a large file is CPU work,
            // so it runs off the runtime threads.
            let s = snap.clone();
            match tokio::task::spawn_blocking(move || netascii::encode(s.bytes())).await {
                Ok(t) => {
                    let len = t.len() as u64;
                    (Source::Memory(Arc::new(t)), len)
                }
                Err(e) => {
                    return self.refuse(
                        peer,
                        &req.filename,
                        ErrorCode::NotDefined,
                        "server error",
                        format!("cannot read: {e}"),
                    );
                }
            }
        } else {
            (Source::File(snap), entry.size)
        };

        let quirk = self.quirk(peer, &entry);
        let (granted, params) = negotiate(&self.cfg, quirk, &req.known_options(), len);
        let mut link = match self.link(peer, rx).await {
            Ok(l) => l,
            Err(e) => {
                crate::warn_limited!(%peer, error = %e, "TFTP: cannot open a transfer socket");
                return self.refuse(
                    peer,
                    &req.filename,
                    ErrorCode::NotDefined,
                    "server busy, try again",
                    format!("no transfer socket: {e}"),
                );
            }
        };
        let mut reader = BlockReader::new(source, len, params.blksize);
        let mut acct = Accounting {
            bus: &self.bus,
            peer,
            path: &req.filename,
            entry: &entry,
            size: len,
            options: TftpOptions {
                blksize: params.blksize,
                windowsize: params.windowsize,
                timeout_ms: params.timeout.as_millis() as u64,
                tsize: granted.tsize,
                rtt_us: None,
            },
            transfer: None,
            retransmits: 0,
            heard: &heard,
            srtt: None,
            acked: 0,
            reported: 0,
        };
        tracing::debug!(%peer, path = %req.filename, mode = %req.mode, ?granted, "TFTP read transfer starting");
        let end = transfer::send(
            &mut link,
            &mut reader,
            &params,
            &mut acct,
            &self.cancel,
            &kick,
        )
        .await;
        if matches!(end, SendEnd::Cancelled) {
            let _ = link
                .send(&error_packet(ErrorCode::NotDefined, "server shutting down"))
                .await;
        }
        acct.end(end, params.timeout);
    }
}

/// TFTP clients name files Windows-style too: `\` becomes `/` before the resolver
/// (which refuses backslashes) sees the path; it strips the leading `/` itself.
fn normalise(name: &str) -> String {
    name.replace('\\', "/")
}

/// The options granted for a read of `len` bytes, and the engine's parameters.
fn negotiate(
    cfg: &TftpConfig,
    quirk: Option<&TftpQuirk>,
    asked: &Options,
    len: u64,
) -> (Options, SendParams) {
    let mut g = Options::default();
    let max_blksize = quirk
        .and_then(|q| q.max_blksize)
        .map_or(cfg.max_blksize, |q| q.min(cfg.max_blksize));
    let max_windowsize = quirk
        .and_then(|q| q.max_windowsize)
        .map_or(cfg.max_windowsize, |q| q.min(cfg.max_windowsize));
    if let Some(b) = asked.blksize {
        g.blksize = Some(b.min(max_blksize.max(MIN_BLKSIZE)));
    }
    g.timeout = asked.timeout;
    if asked.tsize.is_some() && quirk.is_none_or(|q| q.tsize) {
        g.tsize = Some(len);
    }
    let blksize = g.blksize.unwrap_or(packet::DEFAULT_BLKSIZE);
    if let Some(w) = asked.windowsize {
        let cap = (WINDOW_BYTES_MAX / u64::from(blksize)).clamp(1, u64::from(u16::MAX)) as u16;
        g.windowsize = Some(w.min(max_windowsize.max(1)).min(cap));
    }
    let timeout = match g.timeout {
        Some(t) => Duration::from_secs(u64::from(t)),
        None => cfg.timeout.get(),
    };
    let params = SendParams {
        blksize,
        windowsize: g.windowsize.unwrap_or(1),
        timeout,
        min_timeout: cfg.min_timeout.get().min(timeout),
        // A client asking for a long timeout (curl asks 6 s) must not make the first
        // lost block cost that long: until measured, the configured timeout applies.
        initial_timeout: cfg.timeout.get().min(timeout),
        retries: cfg.retries,
        oack: (!g.is_empty()).then(|| Packet::Oack(g.to_pairs()).encode()),
    };
    (g, params)
}

/// Binds a transfer socket on `ip`, in `range` if configured (starting at a random
/// port, so consecutive transfers do not all probe the same busy ports).
fn bind_transfer_socket(ip: IpAddr, range: Option<PortRange>) -> io::Result<std::net::UdpSocket> {
    let Some(r) = range else {
        return std::net::UdpSocket::bind((ip, 0));
    };
    let n = r.len();
    let start = rand::random_range(0..n);
    for i in 0..n {
        let port = r.first + ((start + i) % n) as u16;
        match std::net::UdpSocket::bind((ip, port)) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "every port of the transfer range {}-{} is in use",
            r.first, r.last
        ),
    ))
}

/// Turns the engine's reports into wire events. `TransferStarted` goes out at the
/// first ACK, so it carries the handshake round trip; a transfer that ends before
/// any ACK is started and ended together.
struct Accounting<'a> {
    bus: &'a EventBus,
    peer: SocketAddr,
    path: &'a str,
    entry: &'a Arc<Entry>,
    size: u64,
    options: TftpOptions,
    transfer: Option<Transfer>,
    retransmits: u64,
    heard: &'a AtomicBool,
    srtt: Option<Duration>,
    /// Bytes acknowledged, and the part of them already given to the `Transfer`
    /// (it is told every [`REPORT_BYTES`], not every ACK: it counts metrics per call).
    acked: u64,
    reported: u64,
}

/// Acknowledged bytes between two progress reports to the `Transfer`.
const REPORT_BYTES: u64 = 64 * 1024;

impl Accounting<'_> {
    fn transfer(&mut self) -> &mut Transfer {
        let (bus, peer, path, entry, size) =
            (self.bus, self.peer, self.path, self.entry, self.size);
        let options = &self.options;
        let pending = self.retransmits;
        self.transfer.get_or_insert_with(|| {
            let mut t = Transfer::start(
                bus,
                TransferStart {
                    proto: Proto::Tftp,
                    peer,
                    path,
                    entry,
                    offset: 0,
                    size,
                    user_agent: None,
                    tftp: Some(options.clone()),
                },
            );
            t.add_retransmits(pending);
            t
        })
    }

    fn end(mut self, end: SendEnd, timeout: Duration) {
        let retransmits = self.retransmits;
        let acked = self.acked;
        let t = self.transfer();
        t.progress(acked);
        let id = t.id();
        let reason = match end {
            SendEnd::Done => {
                if let Some(s) = self.srtt {
                    metrics::histogram!("provbox_tftp_rtt_seconds").record(s.as_secs_f64());
                }
                tracing::debug!(peer = %self.peer, path = self.path, id, retransmits, srtt = ?self.srtt, "TFTP read transfer finished");
                if let Some(t) = self.transfer.take() {
                    t.finish();
                }
                return;
            }
            SendEnd::ClientError { code, message } => {
                metrics::counter!("provbox_tftp_client_errors_total", "code" => code.code().to_string()).increment(1);
                if message.is_empty() {
                    format!("client sent ERROR {code}")
                } else {
                    format!("client sent ERROR {code}: {message}")
                }
            }
            SendEnd::TimedOut { retransmissions } => {
                format!(
                    "no ACK from the client after {retransmissions} retransmissions at the {timeout:?} timeout"
                )
            }
            SendEnd::PeerGone(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                "the client's port is closed (ICMP port unreachable)".to_string()
            }
            SendEnd::PeerGone(e) => format!("socket error: {e}"),
            SendEnd::ReadFailed(e) => {
                tracing::error!(peer = %self.peer, path = self.path, error = %e, "TFTP: cannot read a store file mid-transfer");
                format!("server could not read the file: {e}")
            }
            SendEnd::Cancelled => "server shutting down".to_string(),
            SendEnd::Superseded => "superseded by a new request from the same address".to_string(),
        };
        let reason = if retransmits > 0 {
            format!("{reason} ({retransmits} packets retransmitted)")
        } else {
            reason
        };
        tracing::debug!(peer = %self.peer, path = self.path, id, %reason, "TFTP read transfer aborted");
        if let Some(t) = self.transfer.take() {
            t.abort(reason);
        }
    }
}

impl SendObserver for Accounting<'_> {
    fn acked(&mut self, acked: u64, sample: Option<Duration>, rtt: &RttEstimator) {
        self.srtt = rtt.srtt();
        if self.transfer.is_none() {
            self.heard.store(true, Ordering::Release);
            self.options.rtt_us = sample.map(|d| d.as_micros() as u64);
        }
        self.acked = acked;
        if self.reported == 0 || acked - self.reported >= REPORT_BYTES || acked >= self.size {
            self.reported = acked;
            let srtt = self.srtt;
            let t = self.transfer();
            if let Some(r) = srtt {
                t.set_rtt(r);
            }
            t.progress(acked);
        }
    }

    fn delivered(&mut self, len: u64) {
        tracing::debug!(peer = %self.peer, path = self.path, "TFTP: final ACK lost, client closed its port: counted as delivered");
        self.transfer().progress(len);
    }

    fn retransmitted(&mut self, n: u64) {
        metrics::counter!("provbox_tftp_retransmits_total").increment(n);
        self.retransmits += n;
        if let Some(t) = self.transfer.as_mut() {
            t.add_retransmits(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quirk_lowers_the_caps_and_can_withhold_tsize() {
        let cfg = TftpConfig {
            max_blksize: 1468,
            quirks: vec![TftpQuirk {
                model: "420HD".into(),
                max_blksize: Some(512),
                max_windowsize: Some(1),
                tsize: false,
            }],
            ..TftpConfig::default()
        };
        let asked = Options {
            blksize: Some(1428),
            timeout: None,
            tsize: Some(0),
            windowsize: Some(8),
        };
        let quirk = cfg.quirk_for("AUDC-420HD");
        assert!(
            quirk.is_some(),
            "matched as a substring, case-insensitively"
        );
        let (g, p) = negotiate(&cfg, quirk, &asked, 1234);
        assert_eq!(
            (g.blksize, g.tsize, g.windowsize),
            (Some(512), None, Some(1))
        );
        assert_eq!((p.blksize, p.windowsize), (512, 1));
        // Another model: the [tftp] limits only.
        assert!(cfg.quirk_for("450HD").is_none());
        let (g, _) = negotiate(&cfg, None, &asked, 1234);
        assert_eq!(
            (g.blksize, g.tsize, g.windowsize),
            (Some(1428), Some(1234), Some(8))
        );
        // A quirk never raises a limit.
        let loose = TftpQuirk {
            model: "x".into(),
            max_blksize: Some(9000),
            max_windowsize: None,
            tsize: true,
        };
        let big = Options {
            blksize: Some(9000),
            ..Options::default()
        };
        assert_eq!(negotiate(&cfg, Some(&loose), &big, 1).0.blksize, Some(1468));
    }

    #[test]
    fn negotiation_caps_and_answers() {
        let cfg = TftpConfig {
            max_blksize: 1468,
            max_windowsize: 16,
            ..TftpConfig::default()
        };
        let asked = Options {
            blksize: Some(65464),
            timeout: Some(3),
            tsize: Some(0),
            windowsize: Some(64),
        };
        let (g, p) = negotiate(&cfg, None, &asked, 1234);
        assert_eq!(
            g,
            Options {
                blksize: Some(1468),
                timeout: Some(3),
                tsize: Some(1234),
                windowsize: Some(16)
            }
        );
        assert_eq!(p.timeout, Duration::from_secs(3));
        assert!(p.oack.is_some());
        let (g, p) = negotiate(&cfg, None, &Options::default(), 1234);
        assert!(g.is_empty());
        assert!(
            p.oack.is_none(),
            "no options asked: plain RFC 1350, no OACK"
        );
        assert_eq!((p.blksize, p.windowsize), (512, 1));
        // Large blocks: the window is lowered to fit a client receive buffer.
        let cfg = TftpConfig::default();
        let asked = Options {
            blksize: Some(65464),
            windowsize: Some(64),
            ..Options::default()
        };
        assert_eq!(negotiate(&cfg, None, &asked, 1).0.windowsize, Some(2));
        let asked = Options {
            blksize: Some(1468),
            windowsize: Some(64),
            ..Options::default()
        };
        assert_eq!(negotiate(&cfg, None, &asked, 1).0.windowsize, Some(64));
    }

    #[test]
    fn backslashes_become_slashes() {
        assert_eq!(normalise("\\boot\\x64\\pxe.0"), "/boot/x64/pxe.0");
    }
}
