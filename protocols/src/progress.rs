//! Per-transfer progress accounting shared by every file protocol.
//!
//! A [`Transfer`] publishes `TransferStarted` when created, rate-limited
//! `TransferProgress` as bytes are delivered, and exactly one of `TransferFinished` or
//! `TransferAborted`. The end events carry the final byte count, so no progress event
//! is sent for the last bytes: a small file costs two events, not three. Dropping it
//! without finishing counts as an abort, so a client that vanishes mid-download is
//! always recorded. [`CountingReader`] wraps an
//! `AsyncRead` for protocols that stream (FTP): EOF finishes, drop aborts.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};

use crate::events::{EventBus, EventKind, Proto, TftpOptions};
use crate::linkstats::LinkStats;
use provbox_storage::Entry;

/// Progress events are sent at most this often per transfer...
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// ...or when this fraction of the transfer (in 1/100) has passed since the last one.
const PROGRESS_PERCENT: u64 = 5;

/// The counters every transfer of one protocol updates.
#[derive(Debug)]
pub(crate) struct ProtoCounters {
    started: metrics::Counter,
    bytes_served: metrics::Counter,
    finished: metrics::Counter,
    aborted: metrics::Counter,
}

/// Per-protocol counters, registered on first use and then reused: a `counter!` with
/// labels builds and hashes its key on every call (about seven allocations per
/// request, a tenth of a small request's total).
#[derive(Debug, Default)]
pub(crate) struct TransferCounters([OnceLock<ProtoCounters>; 4]);

impl TransferCounters {
    fn get(&self, proto: Proto) -> &ProtoCounters {
        self.0[proto as usize].get_or_init(|| {
            let p = proto.as_str();
            ProtoCounters {
                started: metrics::counter!("provbox_transfers_started_total", "proto" => p),
                bytes_served: metrics::counter!("provbox_bytes_served_total", "proto" => p),
                finished: metrics::counter!("provbox_transfers_total", "proto" => p, "result" => "finished"),
                aborted: metrics::counter!("provbox_transfers_total", "proto" => p, "result" => "aborted"),
            }
        })
    }
}

/// One download, from start to its end.
#[derive(Debug)]
pub struct Transfer {
    bus: EventBus,
    id: u64,
    proto: Proto,
    size: u64,
    /// The version served (its hash goes into the end event; holding the entry costs
    /// a reference count, not a copy).
    entry: Arc<Entry>,
    started: Instant,
    bytes: u64,
    last_emit: Instant,
    last_emit_bytes: u64,
    retransmits: u64,
    /// TFTP's smoothed round trip, reported with each progress event.
    rtt: Option<Duration>,
    /// HTTP(S): the connection's live TCP figures, and its retransmission count when
    /// this transfer began (a keep-alive connection carries several).
    link: Option<(Arc<LinkStats>, u64)>,
    ended: bool,
}

/// What is known when a transfer starts.
#[derive(Debug, Clone)]
pub struct TransferStart<'a> {
    pub proto: Proto,
    pub peer: SocketAddr,
    pub path: &'a str,
    pub entry: &'a Arc<Entry>,
    pub offset: u64,
    pub size: u64,
    pub user_agent: Option<String>,
    pub tftp: Option<TftpOptions>,
}

impl Transfer {
    pub fn start(bus: &EventBus, s: TransferStart<'_>) -> Transfer {
        let id = bus.next_transfer_id();
        bus.publish(EventKind::TransferStarted {
            id,
            proto: s.proto,
            peer: s.peer,
            path: s.path.to_string(),
            file: s.entry.path.clone(),
            file_size: s.entry.size,
            offset: s.offset,
            size: s.size,
            sha256: s.entry.sha256.clone(),
            user_agent: s.user_agent,
            tftp: s.tftp,
        });
        bus.counters.get(s.proto).started.increment(1);
        let now = Instant::now();
        Transfer {
            bus: bus.clone(),
            id,
            proto: s.proto,
            size: s.size,
            entry: s.entry.clone(),
            started: now,
            bytes: 0,
            last_emit: now,
            last_emit_bytes: 0,
            retransmits: 0,
            rtt: None,
            link: None,
            ended: false,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records that `total` bytes have now been delivered (not merely read).
    pub fn progress(&mut self, total: u64) {
        let delta = total.saturating_sub(self.bytes);
        self.bytes = self.bytes.max(total);
        if delta > 0 {
            self.bus
                .counters
                .get(self.proto)
                .bytes_served
                .increment(delta);
        }
        // Everything is delivered: the end event that follows carries the count.
        if self.bytes >= self.size {
            return;
        }
        let step = (self.size * PROGRESS_PERCENT / 100).max(1);
        if self.last_emit.elapsed() >= PROGRESS_INTERVAL
            || self.bytes - self.last_emit_bytes >= step
        {
            self.emit_progress();
        }
    }

    /// Takes round trip and retransmissions from a TCP connection's live figures.
    pub fn set_link(&mut self, link: Arc<LinkStats>) {
        let base = link.retransmits();
        self.link = Some((link, base));
    }

    /// The round trip and retransmissions to report now.
    fn link_figures(&mut self) {
        if let Some((link, base)) = &self.link {
            if let Some(rtt) = link.rtt() {
                self.rtt = Some(rtt);
            }
            self.retransmits = link.retransmits().saturating_sub(*base);
        }
    }

    fn emit_progress(&mut self) {
        self.link_figures();
        if self.bytes != self.last_emit_bytes {
            self.bus.publish(EventKind::TransferProgress {
                id: self.id,
                bytes: self.bytes,
                rtt_us: self.rtt.map(|d| d.as_micros() as u64),
                retransmits: self.retransmits,
            });
            self.last_emit_bytes = self.bytes;
        }
        self.last_emit = Instant::now();
    }

    pub fn add_retransmits(&mut self, n: u64) {
        self.retransmits += n;
    }

    /// The current round-trip estimate (TFTP), carried by the next progress event.
    pub fn set_rtt(&mut self, rtt: Duration) {
        self.rtt = Some(rtt);
    }

    /// The transfer delivered everything it meant to.
    pub fn finish(mut self) {
        self.ended = true;
        self.link_figures();
        self.bus.counters.get(self.proto).finished.increment(1);
        self.bus.publish(EventKind::TransferFinished {
            id: self.id,
            bytes: self.bytes,
            sha256: self.entry.sha256.clone(),
            duration_ms: self.started.elapsed().as_millis() as u64,
            retransmits: self.retransmits,
        });
    }

    /// The transfer ended early: `reason` says how ("client closed the connection",
    /// "client sent ERROR 0: ...", "timed out after 6 retransmissions").
    pub fn abort(mut self, reason: impl Into<String>) {
        self.abort_inner(reason.into());
    }

    fn abort_inner(&mut self, reason: String) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.bus.counters.get(self.proto).aborted.increment(1);
        self.bus.publish(EventKind::TransferAborted {
            id: self.id,
            bytes: self.bytes,
            reason,
            duration_ms: self.started.elapsed().as_millis() as u64,
        });
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if !self.ended {
            self.abort_inner("the client went away".to_string());
        }
    }
}

/// An `AsyncRead` that reports every byte it yields to a [`Transfer`]: EOF finishes
/// it, dropping it early aborts it.
#[derive(Debug)]
pub struct CountingReader<R> {
    inner: R,
    transfer: Option<Transfer>,
    read: u64,
}

impl<R> CountingReader<R> {
    pub fn new(inner: R, transfer: Transfer) -> Self {
        Self {
            inner,
            transfer: Some(transfer),
            read: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CountingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let n = (buf.filled().len() - before) as u64;
            self.read += n;
            let read = self.read;
            if n == 0 {
                if let Some(mut t) = self.transfer.take() {
                    t.progress(read);
                    t.finish();
                }
            } else if let Some(t) = self.transfer.as_mut() {
                t.progress(read);
            }
        }
        res
    }
}
