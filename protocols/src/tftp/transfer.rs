//! The transfer engine: sending a file as DATA blocks (RRQ) and receiving one
//! (WRQ uploads and the client), over a [`Link`] to one peer.
//!
//! # Sending
//!
//! A sliding window of `windowsize` blocks (RFC 7440; 1 is RFC 1350 lock-step).
//! Block numbers are tracked as 64-bit absolute indices and only the low 16 bits go
//! on the wire, so files past 65535 blocks roll over to block 0 like tftp-hpa's.
//!
//! - Only an ACK that *advances* the window makes anything go out. A duplicate ACK
//!   (a client's retransmission, or a copy the network made) sends nothing: that is
//!   the Sorcerer's Apprentice cure of RFC 1123 §4.2.3.1.
//! - An ACK inside the window (the client saw a gap) starts a new window right after
//!   the acknowledged block, as RFC 7440 §4 describes.
//! - On timeout the window is sent again from the oldest unacknowledged block
//!   (go-back-N). The timer follows the measured round trip ([`RttEstimator`]), so a
//!   loss on a LAN costs milliseconds, not the classic second.
//! - A client ERROR ends the transfer at once, whatever state it is in.
//!
//! File reads go through [`BlockReader`]: a chunk of consecutive blocks read with
//! `pread` on the blocking pool, so a cold disk never stalls a runtime worker.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use provbox_storage::Snapshot;

use super::packet::{DATA_HEADER_LEN, ErrorCode, Packet, ack_packet, data_header, error_packet};
use super::rtt::RttEstimator;

/// The path to one peer.
#[derive(Debug)]
pub(crate) enum Link {
    /// A socket of the transfer's own, connected to the peer: the kernel drops
    /// datagrams from anyone else, and an ICMP port-unreachable (the client process
    /// is gone) surfaces as `ConnectionRefused`.
    Own(UdpSocket),
    /// Single-port mode: the listening socket, and the datagrams the listener routed
    /// here by peer address. The listener dropping the sender means "superseded".
    Shared {
        socket: Arc<UdpSocket>,
        peer: SocketAddr,
        rx: mpsc::Receiver<Bytes>,
    },
}

/// Returned by [`Link::recv`] when the listener handed this peer to a new transfer.
pub(crate) const SUPERSEDED: io::ErrorKind = io::ErrorKind::ConnectionAborted;

impl Link {
    pub(crate) async fn send(&self, buf: &[u8]) -> io::Result<()> {
        match self {
            Link::Own(s) => s.send(buf).await.map(drop),
            Link::Shared { socket, peer, .. } => socket.send_to(buf, *peer).await.map(drop),
        }
    }

    /// Receives one datagram (cancel-safe).
    pub(crate) async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Own(s) => s.recv(buf).await,
            Link::Shared { rx, .. } => match rx.recv().await {
                Some(b) => {
                    let n = b.len().min(buf.len());
                    buf[..n].copy_from_slice(&b[..n]);
                    Ok(n)
                }
                None => Err(io::Error::new(
                    SUPERSEDED,
                    "the listener handed this peer to a new request",
                )),
            },
        }
    }

    /// A datagram already waiting, without blocking.
    fn try_recv(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        match self {
            Link::Own(s) => match s.try_recv(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                r => Some(r),
            },
            Link::Shared { rx, .. } => match rx.try_recv() {
                Ok(b) => {
                    let n = b.len().min(buf.len());
                    buf[..n].copy_from_slice(&b[..n]);
                    Some(Ok(n))
                }
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => Some(Err(io::Error::new(
                    SUPERSEDED,
                    "the listener handed this peer to a new request",
                ))),
            },
        }
    }
}

/// What is sent: a pinned file version, or bytes already in memory (netascii).
#[derive(Debug)]
pub(crate) enum Source {
    File(Snapshot),
    Memory(Arc<Vec<u8>>),
}

/// Hands the sender its blocks, as slices of the source.
#[derive(Debug)]
pub(crate) struct BlockReader {
    source: Source,
    len: u64,
    blksize: u64,
}

/// The OACK is retransmitted on this timer (or the negotiated timeout if longer),
/// not on the adaptive one: atftp aborts on a second OACK ("unexpected OACK") when
/// only its ACK 0 was lost, and every client repeats its RRQ (answered at once, see
/// `kick`) or its ACK 0 on its own timer well before this.
const OACK_RETRY: Duration = Duration::from_secs(6);

impl BlockReader {
    pub(crate) fn new(source: Source, len: u64, blksize: u16) -> Self {
        Self {
            source,
            len,
            blksize: u64::from(blksize),
        }
    }

    /// Blocks in the transfer: the last one is short, possibly empty.
    pub(crate) fn total_blocks(&self) -> u64 {
        self.len / self.blksize + 1
    }

    fn range(&self, abs: u64) -> (u64, u64) {
        let start = ((abs - 1) * self.blksize).min(self.len);
        (start, (start + self.blksize).min(self.len))
    }

    /// The payload of block `abs` (1-based).
    pub(crate) fn block(&self, abs: u64) -> io::Result<&[u8]> {
        let (start, end) = self.range(abs);
        match &self.source {
            Source::Memory(m) => {
                let (s, e) = (start as usize, end as usize);
                Ok(&m[s..e])
            }
            // The snapshot is in memory (a mapped blob): a block is a slice of it.
            Source::File(snap) => snap
                .bytes()
                .get(start as usize..end as usize)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file is shorter than its index entry",
                    )
                }),
        }
    }
}

/// Negotiated parameters of a send.
#[derive(Debug, Clone)]
pub(crate) struct SendParams {
    pub blksize: u16,
    pub windowsize: u16,
    /// The ceiling of the retransmission timer (negotiated or configured timeout).
    pub timeout: Duration,
    /// Its floor.
    pub min_timeout: Duration,
    /// Its value until the first round trip is measured.
    pub initial_timeout: Duration,
    /// Retransmissions at the full timeout before giving up.
    pub retries: u32,
    /// The encoded OACK, when options were granted: it goes out first, as "block 0".
    pub oack: Option<Vec<u8>>,
}

/// How a send ended.
#[derive(Debug)]
pub(crate) enum SendEnd {
    /// Every block acknowledged.
    Done,
    /// The client sent an ERROR.
    ClientError { code: ErrorCode, message: String },
    /// No progress through the retry budget.
    TimedOut { retransmissions: u32 },
    /// The client's port is closed (ICMP port unreachable) or the socket failed.
    PeerGone(io::Error),
    /// The file could not be read.
    ReadFailed(io::Error),
    /// Server shutdown.
    Cancelled,
    /// Single-port mode: a new request from the same address took over.
    Superseded,
}

/// What the sender reports as it goes.
pub(crate) trait SendObserver {
    /// The window advanced: `acked` bytes are now acknowledged; `sample` is the round
    /// trip of the acknowledged packet when it was sent once.
    fn acked(&mut self, acked: u64, sample: Option<Duration>, rtt: &RttEstimator);
    /// `n` packets were sent again.
    fn retransmitted(&mut self, n: u64);
    /// The client has everything though its last ACK never came (it closed its port).
    fn delivered(&mut self, len: u64);
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Instant,
    again: bool,
}

/// Sends the whole file (see the module docs for the algorithm). `kick` asks for
/// the first packet to go out again at once (the client repeated its request).
pub(crate) async fn send(
    link: &mut Link,
    reader: &mut BlockReader,
    p: &SendParams,
    obs: &mut impl SendObserver,
    cancel: &CancellationToken,
    kick: &Notify,
) -> SendEnd {
    let total = reader.total_blocks();
    let w = u64::from(p.windowsize.max(1));
    let bs = u64::from(p.blksize);
    // `una`: oldest unacknowledged block; `nxt`: next to send; `high`: one past the
    // highest ever sent (below it, a send is a retransmission). Block 0 is the OACK.
    let mut una: u64 = if p.oack.is_some() { 0 } else { 1 };
    let first = una;
    let mut nxt = una;
    let mut high = una;
    let mut sent: VecDeque<Sent> = VecDeque::with_capacity(w as usize);
    let mut rtt = RttEstimator::new(p.initial_timeout, p.min_timeout, p.timeout);
    let mut strikes: u32 = 0;
    // Consecutive timeouts without progress.
    let mut stalls: u32 = 0;
    let oack_timer = OACK_RETRY.max(p.timeout);
    let oack_strikes = oack_timer
        .as_millis()
        .div_ceil(p.timeout.as_millis().max(1)) as u32;
    let mut errors: u32 = 0;
    let mut pkt = Vec::with_capacity(DATA_HEADER_LEN + usize::from(p.blksize));
    let mut rbuf = vec![0u8; 2048];
    let mut deadline = Instant::now();
    // Made once and polled by reference: a fresh timer and cancellation waiter per
    // packet would cost a timer-wheel insertion and a lock on the shared token.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);

    loop {
        // Fill the window. While the OACK is unacknowledged it is the whole window.
        //
        // From the second timeout in a row the window reaches one block further. A
        // client whose ACK was lost holds the window already; some (atftp) answer only
        // the first duplicate and then wait out their own multi-second timer, but
        // always take the next block in sequence, which gets them acknowledging again.
        // A client that lacks the window takes both in order.
        let extra = u64::from(stalls >= 2);
        let win_end = if una == 0 {
            0
        } else {
            total.min(una + w - 1 + extra)
        };
        let mut burst = false;
        let mut again = 0u64;
        while nxt <= win_end {
            let retrans = nxt < high;
            let res = if nxt == 0 {
                link.send(p.oack.as_deref().unwrap_or_default()).await
            } else {
                pkt.clear();
                pkt.extend_from_slice(&data_header(nxt as u16));
                match reader.block(nxt) {
                    Ok(data) => pkt.extend_from_slice(data),
                    Err(e) => {
                        let _ = link
                            .send(&error_packet(ErrorCode::NotDefined, "server read error"))
                            .await;
                        return SendEnd::ReadFailed(e);
                    }
                }
                link.send(&pkt).await
            };
            if let Err(e) = res {
                return end_on_io(e, una, nxt, total, reader.len, obs);
            }
            sent.push_back(Sent {
                at: Instant::now(),
                again: retrans,
            });
            if retrans {
                again += 1;
            }
            nxt += 1;
            high = high.max(nxt);
            burst = true;
        }
        if again > 0 {
            obs.retransmitted(again);
        }
        if burst {
            deadline = Instant::now() + if una == 0 { oack_timer } else { rtt.rto() };
        }

        // Wait for the next packet, a timeout, a kick, or shutdown. A datagram that
        // is already queued is taken without a trip through the reactor.
        // The timer is re-armed lazily: most ACKs push the deadline later, and moving
        // a timer in the wheel on every packet costs more than waking once per RTO to
        // find the deadline has moved.
        if deadline < timer.deadline() || timer.is_elapsed() {
            timer.as_mut().reset(deadline);
        }
        // A stream of queued datagrams (a peer flooding duplicates) must not starve
        // the timer, shutdown, or the other tasks on this worker.
        let queued = if Instant::now() >= deadline || cancel.is_cancelled() {
            None
        } else {
            link.try_recv(&mut rbuf)
        };
        let got = match queued {
            Some(r) => {
                tokio::task::consume_budget().await;
                Some(r)
            }
            None => tokio::select! {
                biased;
                () = &mut cancelled => return SendEnd::Cancelled,
                r = link.recv(&mut rbuf) => Some(r),
                () = &mut timer => {
                    if Instant::now() < deadline {
                        continue; // the deadline moved on: re-arm
                    }
                    None
                }
                () = kick.notified(), if una == first => {
                    // The client repeated its request before hearing from us: resend.
                    nxt = una;
                    sent.clear();
                    continue;
                }
            },
        };

        let Some(res) = got else {
            // Timeout: count it, back off, go back to the oldest unacknowledged block.
            if una == 0 {
                strikes += oack_strikes;
                if strikes > p.retries {
                    return SendEnd::TimedOut {
                        retransmissions: strikes / oack_strikes - 1,
                    };
                }
            } else if rtt.at_max() {
                strikes += 1;
                if strikes > p.retries {
                    let _ = link
                        .send(&error_packet(
                            ErrorCode::NotDefined,
                            "timed out waiting for ACK",
                        ))
                        .await;
                    return SendEnd::TimedOut {
                        retransmissions: strikes - 1,
                    };
                }
            }
            rtt.backoff();
            stalls += 1;
            nxt = una;
            sent.clear();
            continue;
        };
        let n = match res {
            Ok(n) => {
                errors = 0;
                n
            }
            Err(e) if e.kind() == SUPERSEDED => return SendEnd::Superseded,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return end_on_io(e, una, nxt, total, reader.len, obs);
            }
            Err(e) => {
                // Transient socket errors (e.g. ENOBUFS) are survivable; a stream of them is not.
                errors += 1;
                if errors > 16 {
                    return SendEnd::PeerGone(e);
                }
                continue;
            }
        };
        match Packet::decode(&rbuf[..n]) {
            Ok(Packet::Ack(b)) => {
                let Some(a) = ack_abs(b, una, nxt) else {
                    continue;
                };
                // A new ACK: slide. Karn: only a block sent once gives an RTT sample.
                // The OACK's does not feed the timer: it is not retransmitted on the
                // adaptive timer, so a lost ACK 0 comes back on the client's own timer
                // (seconds) and would poison the estimate for dozens of round trips.
                let idx = (a - una) as usize;
                let mut sample = None;
                if let Some(s) = sent.get(idx)
                    && !s.again
                {
                    sample = Some(s.at.elapsed());
                    if a > 0 {
                        rtt.sample(s.at.elapsed());
                    }
                }
                sent.drain(..(idx + 1).min(sent.len()));
                una = a + 1;
                strikes = 0;
                stalls = 0;
                if a + 1 < nxt && w > 1 {
                    // The client saw a gap: new window right after its ACK (RFC 7440).
                    // (In lock-step a block beyond the ACK is the recovery block above,
                    // still on its way.)
                    nxt = una;
                    sent.clear();
                }
                obs.acked((a * bs).min(reader.len), sample, &rtt);
                if una > total {
                    return SendEnd::Done;
                }
                deadline = Instant::now() + rtt.rto();
            }
            Ok(Packet::Error { code, message }) => return SendEnd::ClientError { code, message },
            Ok(other) => {
                metrics::counter!("provbox_tftp_bad_packets_total", "why" => "unexpected")
                    .increment(1);
                crate::warn_limited!(packet = ?PacketKind(&other), "TFTP: unexpected packet during a read transfer; ignored");
            }
            Err(e) => {
                metrics::counter!("provbox_tftp_bad_packets_total", "why" => "malformed")
                    .increment(1);
                crate::warn_limited!(error = %e, "TFTP: malformed packet during a read transfer; ignored");
            }
        }
    }
}

/// Maps a 16-bit ACK to the absolute block it acknowledges, if it is new: within
/// `una ..= nxt - 1`. Duplicates and stale or bogus ACKs give `None`.
fn ack_abs(b: u16, una: u64, nxt: u64) -> Option<u64> {
    if nxt == 0 {
        return None;
    }
    let a = una + u64::from(b.wrapping_sub(una as u16));
    (a < nxt).then_some(a)
}

/// How a socket error ends a send. A client that closes its port once the final
/// block is out, with everything before it acknowledged, got the file and its final
/// ACK was lost: that is a delivery, not an abort.
fn end_on_io(
    e: io::Error,
    una: u64,
    nxt: u64,
    total: u64,
    len: u64,
    obs: &mut impl SendObserver,
) -> SendEnd {
    if e.kind() == SUPERSEDED {
        SendEnd::Superseded
    } else if e.kind() == io::ErrorKind::ConnectionRefused && una == total && nxt > total {
        obs.delivered(len);
        SendEnd::Done
    } else {
        SendEnd::PeerGone(e)
    }
}

/// For logs: a packet's kind without its payload.
struct PacketKind<'a, 'b>(&'a Packet<'b>);

impl std::fmt::Debug for PacketKind<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Packet::Rrq(r) => write!(f, "RRQ {:?}", r.filename),
            Packet::Wrq(r) => write!(f, "WRQ {:?}", r.filename),
            Packet::Data { block, data } => write!(f, "DATA {block} ({} bytes)", data.len()),
            Packet::Ack(b) => write!(f, "ACK {b}"),
            Packet::Error { code, .. } => write!(f, "ERROR {code}"),
            Packet::Oack(_) => f.write_str("OACK"),
        }
    }
}

/// Negotiated parameters of a receive.
#[derive(Debug, Clone)]
pub(crate) struct RecvParams {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
    pub retries: u32,
}

/// What the sink wants after a block.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sink {
    Continue,
    /// Stop now: an ERROR with this code and message goes to the peer.
    Stop(ErrorCode, String),
}

/// How a receive ended.
#[derive(Debug)]
pub(crate) enum RecvEnd {
    /// The final (short) block arrived and was acknowledged; `last` is its wire number.
    Done {
        last: u16,
    },
    /// The peer sent an ERROR.
    PeerError {
        code: ErrorCode,
        message: String,
    },
    /// The sink stopped the transfer (an ERROR was sent).
    Stopped,
    TimedOut,
    PeerGone(io::Error),
    Cancelled,
    Superseded,
    /// The peer sent something that makes no sense here (an ERROR was sent).
    Protocol(String),
}

/// Receives DATA blocks and acknowledges them, one ACK per window (RFC 7440) or
/// per block. `opening` is the packet that answers the request (ACK 0 or the OACK);
/// it is sent first when `send_opening`, and again on timeout until data flows.
/// `first` is a DATA packet already received (a client that got DATA 1 in reply).
pub(crate) async fn receive(
    link: &mut Link,
    p: &RecvParams,
    opening: Vec<u8>,
    send_opening: bool,
    first: Option<Vec<u8>>,
    sink: &mut impl FnMut(&[u8]) -> Sink,
    cancel: &CancellationToken,
) -> RecvEnd {
    let w = u64::from(p.windowsize.max(1));
    let bs = usize::from(p.blksize);
    let mut expect: u64 = 1;
    let mut acked: u64 = 0;
    let mut since_ack: u64 = 0;
    let mut gap_acked = false;
    let mut last_ack = opening;
    let mut tries: u32 = 0;
    let mut rbuf = vec![0u8; DATA_HEADER_LEN + bs.max(512) + 1];
    let mut pending = first;
    if send_opening && let Err(e) = link.send(&last_ack).await {
        return recv_io_end(e);
    }
    let mut deadline = Instant::now() + p.timeout;
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    loop {
        // Re-armed lazily, as in `send`.
        if deadline < timer.deadline() || timer.is_elapsed() {
            timer.as_mut().reset(deadline);
        }
        let n = if let Some(f) = pending.take() {
            let n = f.len().min(rbuf.len());
            rbuf[..n].copy_from_slice(&f[..n]);
            n
        } else {
            tokio::select! {
                biased;
                () = &mut cancelled => return RecvEnd::Cancelled,
                r = link.recv(&mut rbuf) => match r {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused || e.kind() == SUPERSEDED => return recv_io_end(e),
                    Err(_) => continue,
                },
                () = &mut timer => {
                    if Instant::now() < deadline {
                        continue;
                    }
                    tries += 1;
                    if tries > p.retries {
                        let _ = link.send(&error_packet(ErrorCode::NotDefined, "timed out waiting for DATA")).await;
                        return RecvEnd::TimedOut;
                    }
                    // RFC 7440: on timeout, acknowledge the last block received in order.
                    if acked + 1 < expect {
                        last_ack = ack_packet((expect - 1) as u16).to_vec();
                        acked = expect - 1;
                        since_ack = 0;
                    }
                    if let Err(e) = link.send(&last_ack).await {
                        return recv_io_end(e);
                    }
                    deadline = Instant::now() + p.timeout;
                    continue;
                }
            }
        };
        match Packet::decode(&rbuf[..n]) {
            Ok(Packet::Data { block, data }) => {
                let d = block.wrapping_sub(expect as u16) as i16;
                if d == 0 {
                    if data.len() > bs {
                        let msg = format!(
                            "DATA block of {} bytes exceeds the blksize {bs}",
                            data.len()
                        );
                        let _ = link
                            .send(&error_packet(ErrorCode::IllegalOperation, &msg))
                            .await;
                        return RecvEnd::Protocol(msg);
                    }
                    let last = data.len() < bs;
                    if let Sink::Stop(code, msg) = sink(data) {
                        let _ = link.send(&error_packet(code, &msg)).await;
                        return RecvEnd::Stopped;
                    }
                    expect += 1;
                    since_ack += 1;
                    gap_acked = false;
                    tries = 0;
                    if last || since_ack >= w {
                        last_ack = ack_packet(block).to_vec();
                        acked = expect - 1;
                        since_ack = 0;
                        if let Err(e) = link.send(&last_ack).await {
                            return recv_io_end(e);
                        }
                    }
                    if last {
                        return RecvEnd::Done { last: block };
                    }
                    deadline = Instant::now() + p.timeout;
                } else if d < 0 {
                    // A block we already have: our ACK was lost. Answer the copy of the
                    // block we acknowledged last (one ACK per resent window, not one per block).
                    let a = expect as i64 + i64::from(d);
                    if a == acked as i64 || (w == 1 && a + 1 == expect as i64) {
                        if acked + 1 < expect {
                            last_ack = ack_packet((expect - 1) as u16).to_vec();
                            acked = expect - 1;
                            since_ack = 0;
                        }
                        if let Err(e) = link.send(&last_ack).await {
                            return recv_io_end(e);
                        }
                    }
                } else if !gap_acked && expect > 1 {
                    // A gap: tell the sender at once where to restart (RFC 7440).
                    gap_acked = true;
                    last_ack = ack_packet((expect - 1) as u16).to_vec();
                    acked = expect - 1;
                    since_ack = 0;
                    if let Err(e) = link.send(&last_ack).await {
                        return recv_io_end(e);
                    }
                }
            }
            Ok(Packet::Error { code, message }) => return RecvEnd::PeerError { code, message },
            Ok(Packet::Oack(_)) if expect == 1 => {
                // The OACK again: our ACK 0 was lost.
                if let Err(e) = link.send(&last_ack).await {
                    return recv_io_end(e);
                }
            }
            Ok(_) | Err(_) => {
                metrics::counter!("provbox_tftp_bad_packets_total", "why" => "unexpected")
                    .increment(1);
            }
        }
    }
}

fn recv_io_end(e: io::Error) -> RecvEnd {
    if e.kind() == SUPERSEDED {
        RecvEnd::Superseded
    } else {
        RecvEnd::PeerGone(e)
    }
}

/// After the final ACK: for `time`, answer a repeated final block with the ACK again
/// (RFC 1350 §6 "dallying"), so a lost final ACK does not leave the sender guessing.
pub(crate) async fn dally(link: &mut Link, last: u16, time: Duration) {
    let ack = ack_packet(last);
    let mut buf = vec![0u8; 1024];
    let until = Instant::now() + time;
    // Bounded by `until`; each datagram is answered at most once.
    while let Ok(Ok(n)) = tokio::time::timeout_at(until, link.recv(&mut buf)).await {
        if let Ok(Packet::Data { block, .. }) = Packet::decode(&buf[..n])
            && block == last
        {
            let _ = link.send(&ack).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_mapping_handles_rollover_duplicates_and_bogus_acks() {
        // OACK phase: only ACK 0 is new.
        assert_eq!(ack_abs(0, 0, 1), Some(0));
        assert_eq!(ack_abs(1, 0, 1), None);
        // Window 1..=8 sent (nxt 9), nothing acked (una 1).
        assert_eq!(ack_abs(8, 1, 9), Some(8));
        assert_eq!(ack_abs(3, 1, 9), Some(3));
        assert_eq!(ack_abs(0, 1, 9), None, "duplicate of the last ACK");
        assert_eq!(ack_abs(9, 1, 9), None, "ACK for a block never sent");
        // Rollover: block 65536 goes out as 0.
        assert_eq!(ack_abs(0, 65536, 65537), Some(65536));
        assert_eq!(
            ack_abs(65535, 65536, 65537),
            None,
            "duplicate across the rollover"
        );
        assert_eq!(ack_abs(5, 131_075, 131_080), Some(131_077));
    }
}
