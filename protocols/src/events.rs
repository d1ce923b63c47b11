//! Wire events: what happened on the wire, and nothing more, published on one
//! broadcast bus. Protocol servers publish; the appliance's tracker, journal, API and
//! test fixtures subscribe. Events are serde types because the journal stores them and
//! the API streams them as they are.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// The file protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tftp,
    Ftp,
    Http,
    Https,
}

impl Proto {
    /// The lower-case name (also a metrics label, which a `&'static str` keeps
    /// allocation-free).
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tftp => "tftp",
            Proto::Ftp => "ftp",
            Proto::Http => "http",
            Proto::Https => "https",
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a DHCP exchange said about a client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DhcpInfo {
    /// Lowercase, colon-separated.
    pub mac: String,
    /// The address offered, acknowledged, requested or released.
    pub ip: Option<Ipv4Addr>,
    /// The phone model, from option 60 or 77 where one was recognised.
    pub model: Option<String>,
    /// Option 60 as text (lossy).
    pub vendor_class: Option<String>,
    /// Option 77 as text (lossy, RFC 3004 framing removed).
    pub user_class: Option<String>,
    /// Option 55.
    pub requested_options: Vec<u8>,
    /// The matched policy's name; `None` when the defaults applied.
    pub policy: Option<String>,
    pub giaddr: Option<Ipv4Addr>,
    pub xid: u32,
    /// The provisioning options sent, as text: "160" → URL, "66", "67".
    pub provisioning: Vec<(u8, String)>,
    /// Why a NAK or a drop happened.
    pub reason: Option<String>,
}

/// Negotiated TFTP options of one transfer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TftpOptions {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout_ms: u64,
    pub tsize: Option<u64>,
    /// Round trip of the first exchange (OACK or first block to its ACK), microseconds.
    #[serde(default)]
    pub rtt_us: Option<u64>,
}

/// How a [`EventKind::TransferRefused`] reason starts when the refusal is transient
/// (a server at its transfer limit): the phone retries, so it has not failed.
pub const BUSY_REASON: &str = "server busy";

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventKind {
    DhcpDiscover(DhcpInfo),
    DhcpOffer(DhcpInfo),
    DhcpRequest(DhcpInfo),
    DhcpAck(DhcpInfo),
    DhcpNak(DhcpInfo),
    DhcpRelease(DhcpInfo),
    DhcpDecline(DhcpInfo),
    DhcpInform(DhcpInfo),
    /// A download began. `size` is what will be sent (the range length for a 206).
    TransferStarted {
        id: u64,
        proto: Proto,
        peer: SocketAddr,
        /// The path as the client asked for it.
        path: String,
        /// The store path it resolved to (aliases and MAC spellings differ).
        file: String,
        /// Size of the whole file.
        file_size: u64,
        /// First byte sent (Range, REST) and how many bytes this transfer will send.
        offset: u64,
        size: u64,
        sha256: String,
        /// Absent keys are `None` (a journal line per request is the tracker's main
        /// disk cost under load).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_agent: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tftp: Option<TftpOptions>,
    },
    /// Bytes delivered so far (acknowledged, for TFTP). Rate-limited.
    TransferProgress {
        id: u64,
        bytes: u64,
        /// TFTP: the smoothed round trip of DATA to its ACK, in microseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rtt_us: Option<u64>,
        /// TFTP: packets sent again so far (a lossy or slow link shows here first).
        #[serde(default, skip_serializing_if = "is_zero")]
        retransmits: u64,
    },
    TransferFinished {
        id: u64,
        bytes: u64,
        sha256: String,
        duration_ms: u64,
        retransmits: u64,
    },
    /// The client went away or sent an error. A header probe is a normal abort.
    TransferAborted {
        id: u64,
        bytes: u64,
        reason: String,
        duration_ms: u64,
    },
    /// A request that got no content: missing file, traversal, refused write.
    TransferRefused {
        proto: Proto,
        peer: SocketAddr,
        path: String,
        reason: String,
        user_agent: Option<String>,
    },
    /// An operator asked to forget a device (`DELETE /api/v1/devices/{key}`): its row,
    /// timeline and receipts go; its lease stays. On the bus, so it is journaled and a
    /// restart forgets it too.
    DeviceForgotten {
        key: String,
    },
    /// A client stored a file in an upload area (phone logs).
    UploadStored {
        proto: Proto,
        peer: SocketAddr,
        /// The path as the client named it, inside the upload area.
        path: String,
        bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_agent: Option<String>,
    },
    /// An upload that was not stored: too large, a refused path, the client went away.
    UploadFailed {
        proto: Proto,
        peer: SocketAddr,
        path: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_agent: Option<String>,
    },
    StoreChanged {
        path: String,
        change: StoreChange,
        sha256: Option<String>,
        version: Option<String>,
        model: Option<String>,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreChange {
    Added,
    Modified,
    Removed,
}

/// An event with its sequence number and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEvent {
    /// Monotonic per bus, from 1. SSE uses it as the event id.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The broadcast bus. Cheap to clone. A slow subscriber lags and is told how many
/// events it missed; publishers never block.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<WireEvent>>,
    seq: Arc<AtomicU64>,
    ids: Arc<AtomicU64>,
    /// The transfer counters, looked up once per protocol (see [`crate::progress`]).
    pub(crate) counters: Arc<crate::progress::TransferCounters>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(65536)
    }
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Self {
            tx,
            seq: Arc::new(AtomicU64::new(0)),
            ids: Arc::new(AtomicU64::new(0)),
            counters: Arc::default(),
        }
    }

    /// Continue numbering after `seq` (after a restart rebuilt from the journal).
    pub fn resume_after(&self, seq: u64, transfer_id: u64) {
        self.seq.fetch_max(seq, Ordering::SeqCst);
        self.ids.fetch_max(transfer_id, Ordering::SeqCst);
    }

    pub fn publish(&self, kind: EventKind) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        // No receivers is normal (e.g. a protocol used alone in a test).
        let _ = self.tx.send(Arc::new(WireEvent {
            seq,
            at_ms: now_ms(),
            kind,
        }));
        seq
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WireEvent>> {
        self.tx.subscribe()
    }

    /// A fresh transfer id.
    pub fn next_transfer_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }
}
