//! The device tracker: wire events → per-phone journeys, kept in a journal and offered
//! to the API, the dashboard and the test fixture.
//!
//! - [`state`]: the pure state machine ([`Tracker`]), driven by events and a clock tick;
//! - [`attribution`]: which phone a transfer belongs to;
//! - [`ua`]: what User-Agents say;
//! - this module: the runner task ([`spawn`]) that subscribes to the bus, journals every
//!   event, rebuilds from the journal at start-up, checks delivered
//!   configs against the phone's model, and publishes a resumable feed (for SSE).
//!
//! # The journal and rebuilding
//!
//! Records are [`Record`]s, one JSON line each. Replaying `Event`, `Verdict` and `Tick`
//! records through the tracker reproduces it exactly (it is deterministic), state
//! changes included, so those are not written: they were a third of the journal's bytes
//! under load, and the API, the feed and each phone's timeline have them. (Journals
//! written before that hold `Change` lines, which a replay skips.)
//! Each rotated file starts with a `Snapshot` of the whole fleet, so a rebuild starts
//! from the newest snapshot and never needs a file rotation dropped.
//!
//! # The feed
//!
//! Every processed record yields feed items, numbered by one counter that the
//! snapshot carries: `wire` (the event), `state` (each transition) and `device` (each
//! changed row). `device` items are coalesced: the runner publishes one per changed
//! row after each batch of records it drained from the bus, so a phone hammered with
//! requests costs one view per batch, not one per event. Batching depends on timing,
//! so a replay cannot regenerate the live numbering: a clean shutdown therefore ends
//! the journal with a snapshot, and a restart continues the numbering exactly. After a
//! `kill -9` the numbering restarts from the last snapshot plus the replay; a client
//! whose `Last-Event-ID` is then ahead reloads. A client that reconnects with
//! `Last-Event-ID` gets what it missed from a ring of recent items; one that is too far
//! behind gets a `reset` and reloads.

pub mod attribution;
pub mod state;
pub mod ua;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use provbox_config::TrackerConfig;
use provbox_protocols::events::{EventBus, EventKind, WireEvent, now_ms};
use provbox_protocols::warn_limited;
use provbox_storage::Store;
use provbox_storage::journal::{self, Journal, JournalError, JournalOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use state::{
    ConfigCheck, DeviceDetail, DeviceView, FileRecord, Fleet, PhoneState, ProgressView, Receipt,
    StateChange, TimelineEntry, Tracker,
};

/// How long journal records may wait in memory before they are written (a `kill -9`
/// loses at most this much of the journal; leases are in their own database).
const FLUSH_DELAY: Duration = Duration::from_millis(25);

/// One journal line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "rec", content = "data", rename_all = "snake_case")]
pub enum Record {
    Event(Arc<WireEvent>),
    /// A state change; no longer written (a replay regenerates it), still read.
    Change(StateChange),
    /// A delivered config's `system/type`, read by the runner.
    Verdict {
        check: ConfigCheck,
        system_type: Option<String>,
        at_ms: u64,
    },
    /// A clock tick that changed something (stalls).
    Tick {
        at_ms: u64,
    },
    /// The whole fleet, first in each rotated file.
    Snapshot {
        feed_seq: u64,
        fleet: Box<Fleet>,
    },
}

/// Tracker start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("cannot rebuild the device tracker from its journal in {dir}: {source}")]
    Journal { dir: PathBuf, source: JournalError },
}

/// Why `wait_for` gave up.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("device {key} did not reach {state} within {timeout:?}; it is {now}")]
    Timeout {
        key: String,
        state: PhoneState,
        timeout: Duration,
        now: String,
    },
    #[error("the tracker stopped while waiting for {key} to reach {state}")]
    Stopped { key: String, state: PhoneState },
}

/// One item of the live feed (an SSE message).
#[derive(Debug)]
pub struct FeedItem {
    pub id: u64,
    /// `wire`, `state` or `device` (or `removed` when an address row merged into a phone).
    pub event: &'static str,
    body: FeedBody,
}

/// A feed item's payload. Wire events, state changes and device views are kept as
/// they are and encoded the first time a subscriber reads one: with nobody watching, a
/// busy server never spends CPU on JSON nobody reads.
#[derive(Debug)]
enum FeedBody {
    Json(String),
    Wire(Arc<WireEvent>, OnceLock<String>),
    State(StateChange, OnceLock<String>),
    View(Box<DeviceView>, OnceLock<String>),
}

impl FeedItem {
    /// The item as JSON.
    pub fn data(&self) -> &str {
        match &self.body {
            FeedBody::Json(s) => s,
            FeedBody::Wire(ev, json) => {
                json.get_or_init(|| serde_json::to_string(&**ev).unwrap_or_default())
            }
            FeedBody::State(c, json) => {
                json.get_or_init(|| serde_json::to_string(c).unwrap_or_default())
            }
            FeedBody::View(v, json) => {
                json.get_or_init(|| serde_json::to_string(v).unwrap_or_default())
            }
        }
    }
}

const FEED_RING: usize = 20_000;

#[derive(Debug)]
struct Feed {
    seq: u64,
    ring: VecDeque<Arc<FeedItem>>,
    tx: broadcast::Sender<Arc<FeedItem>>,
}

impl Feed {
    fn push(&mut self, event: &'static str, data: String) {
        self.push_body(event, FeedBody::Json(data));
    }

    fn push_body(&mut self, event: &'static str, body: FeedBody) {
        self.seq += 1;
        let item = Arc::new(FeedItem {
            id: self.seq,
            event,
            body,
        });
        if self.ring.len() >= FEED_RING {
            self.ring.pop_front();
        }
        self.ring.push_back(item.clone());
        let _ = self.tx.send(item);
    }
}

/// What a feed subscriber gets: the items it missed, then the live receiver.
#[derive(Debug)]
pub struct FeedSubscription {
    pub backlog: Vec<Arc<FeedItem>>,
    /// The requested id is older than the ring: the client must reload its state.
    pub reset: bool,
    pub live: broadcast::Receiver<Arc<FeedItem>>,
}

#[derive(Debug)]
struct Inner {
    tracker: Mutex<Tracker>,
    feed: Mutex<Feed>,
    changes: broadcast::Sender<StateChange>,
    version: watch::Sender<u64>,
    /// Cancelled when long-lived readers (SSE streams) should end: at the start of a
    /// shutdown ([`TrackerHandle::close_streams`]) or when the runner stops.
    closing: CancellationToken,
    /// Cancelled once the runner has written its last record and synced the journal.
    stopped: CancellationToken,
}

/// A handle on the running tracker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TrackerHandle {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl TrackerHandle {
    fn new(tracker: Tracker) -> TrackerHandle {
        let (tx, _) = broadcast::channel(4096);
        let (changes, _) = broadcast::channel(4096);
        let (version, _) = watch::channel(0);
        TrackerHandle {
            inner: Arc::new(Inner {
                tracker: Mutex::new(tracker),
                feed: Mutex::new(Feed {
                    seq: 0,
                    ring: VecDeque::new(),
                    tx,
                }),
                changes,
                version,
                closing: CancellationToken::new(),
                stopped: CancellationToken::new(),
            }),
        }
    }

    /// Every phone, as table rows.
    pub fn devices(&self) -> Vec<DeviceView> {
        lock(&self.inner.tracker).devices_at(now_ms())
    }

    /// One phone with its timeline; `key` is a MAC in any spelling or an address.
    pub fn device(&self, key: &str) -> Option<DeviceDetail> {
        lock(&self.inner.tracker).device_at(key, now_ms())
    }

    /// Forgets a device (MAC in any spelling, or `ip:` key): publishes
    /// `DeviceForgotten` on `bus`, so it is journaled like any event, and waits until
    /// the tracker has applied it. `None` when no such device is known.
    pub async fn forget(
        &self,
        bus: &provbox_protocols::EventBus,
        key: &str,
        timeout: Duration,
    ) -> Option<String> {
        let key = lock(&self.inner.tracker).canonical_key(key)?;
        let mut rx = self.inner.version.subscribe();
        bus.publish(EventKind::DeviceForgotten { key: key.clone() });
        let deadline = tokio::time::Instant::now() + timeout;
        while lock(&self.inner.tracker).view(&key, now_ms()).is_some() {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // Stopped or slow: the event is on the bus; report what was asked.
                _ => break,
            }
        }
        Some(key)
    }

    pub fn receipt(&self, key: &str) -> Option<Receipt> {
        lock(&self.inner.tracker).receipt(key)
    }

    /// Phones per state.
    pub fn counts(&self) -> std::collections::BTreeMap<PhoneState, usize> {
        lock(&self.inner.tracker).counts()
    }

    /// State transitions as they happen.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<StateChange> {
        self.inner.changes.subscribe()
    }

    /// The feed after `after` (none: live only). Atomic with respect to new items:
    /// nothing is missed or repeated between the backlog and the live receiver.
    pub fn subscribe_feed(&self, after: Option<u64>) -> FeedSubscription {
        let feed = lock(&self.inner.feed);
        let live = feed.tx.subscribe();
        let Some(after) = after else {
            return FeedSubscription {
                backlog: Vec::new(),
                reset: false,
                live,
            };
        };
        let oldest = feed.ring.front().map(|i| i.id).unwrap_or(feed.seq + 1);
        // The client is ahead of us (a journal was deleted): it must reload.
        let reset = after > feed.seq || (after + 1 < oldest && after < feed.seq);
        let backlog = feed.ring.iter().filter(|i| i.id > after).cloned().collect();
        FeedSubscription {
            backlog,
            reset,
            live,
        }
    }

    /// The id of the newest feed item.
    pub fn feed_seq(&self) -> u64 {
        lock(&self.inner.feed).seq
    }

    /// Waits until the device `key` has reached `state` (now or at any earlier point of
    /// its timeline), then returns its current row.
    pub async fn wait_for(
        &self,
        key: &str,
        state: PhoneState,
        timeout: Duration,
    ) -> Result<DeviceView, WaitError> {
        let mut rx = self.inner.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let t = lock(&self.inner.tracker);
                if t.has_reached(key, state)
                    && let Some(v) = t.view(key, now_ms())
                {
                    return Ok(v);
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(WaitError::Stopped {
                        key: key.to_string(),
                        state,
                    });
                }
                Err(_) => {
                    let now = lock(&self.inner.tracker)
                        .view(key, now_ms())
                        .map(|v| match v.reason {
                            Some(r) => format!("{} ({r})", v.state),
                            None => v.state.to_string(),
                        })
                        .unwrap_or_else(|| "unknown to the tracker".into());
                    return Err(WaitError::Timeout {
                        key: key.to_string(),
                        state,
                        timeout,
                        now,
                    });
                }
            }
        }
    }

    /// Cancelled when long-lived streams should end: once [`Self::close_streams`] is
    /// called or the runner stops.
    pub fn stop_token(&self) -> CancellationToken {
        self.inner.closing.clone()
    }

    /// Ends long-lived streams now, while the runner goes on recording. A shutdown
    /// calls it first, so the API server can finish while in-flight downloads are
    /// still being tracked through their grace period.
    pub fn close_streams(&self) {
        self.inner.closing.cancel();
    }

    /// True once the runner has stopped and its journal is synced.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.is_cancelled()
    }

    /// Waits until the runner has stopped and its journal is synced.
    pub async fn stopped(&self) {
        self.inner.stopped.cancelled().await;
    }

    /// Publishes a `device` (or `removed`) feed item for every device changed since
    /// the last call. The runner calls it after each batch of records.
    /// Also wakes [`Self::wait_for`] callers, once per batch rather than per record.
    fn publish_views(&self) {
        {
            let mut t = lock(&self.inner.tracker);
            // Devices changed since their last `device` item: one view per batch of
            // records, not one per event.
            let dirty = t.take_touched();
            let mut feed = lock(&self.inner.feed);
            let now = t.now_ms();
            for k in dirty {
                match t.view(&k, now) {
                    Some(v) => {
                        feed.push_body("device", FeedBody::View(Box::new(v), OnceLock::new()))
                    }
                    None => feed.push("removed", serde_json::json!({ "key": k }).to_string()),
                }
            }
        }
        self.inner.version.send_modify(|v| *v += 1);
    }

    /// Applies one record and emits the feed (device views are marked for the next
    /// [`Self::publish_views`]); returns the states entered. Used by the runner and by
    /// the replay.
    fn process(&self, rec: &Record, index: &provbox_storage::Index) -> Vec<PhoneState> {
        let mut t = lock(&self.inner.tracker);
        let changes = match rec {
            Record::Event(ev) => t.apply(ev, index),
            Record::Verdict {
                check,
                system_type,
                at_ms,
            } => t.config_verdict(check, system_type.as_deref(), *at_ms),
            Record::Tick { at_ms } => t.tick(*at_ms),
            Record::Change(_) => return Vec::new(),
            Record::Snapshot { feed_seq, fleet } => {
                t.restore((**fleet).clone());
                let mut feed = lock(&self.inner.feed);
                feed.seq = *feed_seq;
                feed.ring.clear();
                // Views are published from the restored fleet, not from before it.
                let _ = t.take_touched();
                return Vec::new();
            }
        };
        // Copies only for `subscribe_changes` listeners; the feed takes the originals.
        let copies = if self.inner.changes.receiver_count() > 0 {
            changes.clone()
        } else {
            Vec::new()
        };
        let targets = changes.iter().map(|c| c.to).collect();
        let mut feed = lock(&self.inner.feed);
        if let Record::Event(ev) = rec {
            feed.push_body("wire", FeedBody::Wire(ev.clone(), OnceLock::new()));
        }
        for c in changes {
            feed.push_body("state", FeedBody::State(c, OnceLock::new()));
        }
        drop(feed);
        drop(t);
        for c in copies {
            let _ = self.inner.changes.send(c);
        }
        targets
    }
}

/// Rebuilds the tracker from the journal in `journal_dir`, then runs it on the bus
/// until `shutdown`; it then records what is already waiting, ends the journal with a
/// snapshot and syncs it ([`TrackerHandle::stopped`] says when). An appliance cancels
/// `shutdown` only after its servers have finished, so the grace period's downloads
/// are recorded. Must be called inside a tokio runtime.
pub fn spawn(
    cfg: &TrackerConfig,
    bus: EventBus,
    store: Store,
    journal_dir: &Path,
    shutdown: CancellationToken,
) -> Result<TrackerHandle, TrackerError> {
    let jerr = |source| TrackerError::Journal {
        dir: journal_dir.to_path_buf(),
        source,
    };
    // Subscribe before reading, so nothing published meanwhile is lost (events the
    // journal already has are skipped by sequence number).
    let rx = bus.subscribe();
    let handle = TrackerHandle::new(Tracker::new(cfg));
    // Only the tail from the newest snapshot is decoded (serde writes the tag first).
    let read = journal::read_since::<Record>(journal_dir, |line| {
        line.starts_with(br#"{"rec":"snapshot""#)
    })
    .map_err(jerr)?;
    if read.skipped > 0 {
        tracing::warn!(dir = %journal_dir.display(), skipped = read.skipped, "journal lines could not be read and were skipped (a torn last line after a crash is normal)");
    }
    let start = read
        .records
        .iter()
        .rposition(|r| matches!(r, Record::Snapshot { .. }))
        .unwrap_or(0);
    let index = store.index();
    let mut replayed = 0usize;
    for rec in &read.records[start..] {
        handle.process(rec, &index);
        replayed += 1;
    }
    handle.publish_views();
    let (last_seq, last_id) = {
        let t = lock(&handle.inner.tracker);
        (t.fleet().last_seq, t.fleet().last_transfer_id)
    };
    bus.resume_after(last_seq, last_id);
    if replayed > 0 {
        tracing::info!(
            records = replayed,
            devices = handle.devices().len(),
            last_seq,
            "device tracker rebuilt from its journal"
        );
    }
    let journal = Journal::open(
        journal_dir,
        JournalOptions {
            max_bytes: cfg.journal_max_bytes,
            keep: cfg.journal_keep,
        },
    )
    .map_err(jerr)?;
    let runner = Runner {
        handle: handle.clone(),
        store,
        journal,
        skip_until: last_seq,
        system_types: HashMap::new(),
        transitions: HashMap::new(),
    };
    tokio::spawn(runner.run(rx, shutdown));
    Ok(handle)
}

struct Runner {
    handle: TrackerHandle,
    store: Store,
    journal: Journal,
    skip_until: u64,
    /// `system/type` by config content hash: a version's verdict never changes, and a
    /// config fetched thousands of times is read once.
    system_types: HashMap<String, Option<String>>,
    /// Transition counters by target state, looked up once each.
    transitions: HashMap<PhoneState, metrics::Counter>,
}

impl Runner {
    async fn run(
        mut self,
        mut rx: broadcast::Receiver<Arc<WireEvent>>,
        shutdown: CancellationToken,
    ) {
        let (vtx, mut vrx) = mpsc::unbounded_channel::<Record>();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush_at: Option<tokio::time::Instant> = None;
        loop {
            let flush_due = async move {
                match flush_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = flush_due => {}
                _ = shutdown.cancelled() => break,
                r = rx.recv() => {
                    if !self.on_bus(r, &vtx) {
                        break;
                    }
                    // Take whatever else is already waiting, as one batch.
                    if !self.drain_waiting(&mut rx, &vtx, 1024) {
                        break;
                    }
                },
                Some(v) = vrx.recv() => self.record(v, &vtx),
                _ = tick.tick() => {
                    let now = now_ms();
                    // Ticks are journaled only when they change something.
                    let due = lock(&self.handle.inner.tracker).tick_due(now);
                    if due {
                        self.record(Record::Tick { at_ms: now }, &vtx);
                    }
                }
            }
            self.handle.publish_views();
            // Write the journal once records have waited FLUSH_DELAY: under load that
            // is one write per many batches, and a quiet tracker still writes promptly.
            if !self.journal.has_pending() {
                flush_at = None;
            } else {
                let now = tokio::time::Instant::now();
                let due = *flush_at.get_or_insert(now + FLUSH_DELAY);
                if now >= due {
                    flush_at = None;
                    if let Err(e) = self.journal.flush() {
                        metrics::counter!("provbox_journal_errors_total").increment(1);
                        warn_limited!(error = %e, "cannot write to the journal; tracking continues in memory");
                    }
                }
            }
        }
        // Record what the servers published before they stopped.
        self.drain_waiting(&mut rx, &vtx, 65_536);
        // End with a snapshot: the restart starts from it, with this feed numbering.
        self.handle.publish_views();
        let snapshot = self.snapshot();
        self.append(&snapshot);
        if let Err(e) = self.journal.sync() {
            tracing::warn!(error = %e, "cannot sync the journal at shutdown");
        }
        self.handle.inner.closing.cancel();
        self.handle.inner.stopped.cancel();
        self.handle.inner.version.send_modify(|v| *v += 1);
    }

    /// The whole fleet and the feed numbering, as one record.
    fn snapshot(&self) -> Record {
        let t = lock(&self.handle.inner.tracker);
        Record::Snapshot {
            feed_seq: self.handle.feed_seq(),
            fleet: Box::new(t.fleet().clone()),
        }
    }

    /// Handles up to `max` events already waiting on the bus, without waiting for
    /// more; false when the bus is closed.
    fn drain_waiting(
        &mut self,
        rx: &mut broadcast::Receiver<Arc<WireEvent>>,
        vtx: &mpsc::UnboundedSender<Record>,
        max: usize,
    ) -> bool {
        use broadcast::error::{RecvError, TryRecvError};
        for _ in 0..max {
            let r = match rx.try_recv() {
                Ok(ev) => Ok(ev),
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
                Err(TryRecvError::Empty) => break,
            };
            if !self.on_bus(r, vtx) {
                return false;
            }
        }
        true
    }

    /// Handles one receive from the bus; false when the bus is closed.
    fn on_bus(
        &mut self,
        r: Result<Arc<WireEvent>, broadcast::error::RecvError>,
        vtx: &mpsc::UnboundedSender<Record>,
    ) -> bool {
        match r {
            Ok(ev) => {
                if ev.seq <= self.skip_until && !matches!(ev.kind, EventKind::StoreChanged { .. }) {
                    return true;
                }
                self.record(Record::Event(ev), vtx);
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                metrics::counter!("provbox_tracker_events_lost_total").increment(n);
                warn_limited!(
                    lost = n,
                    "the device tracker fell behind the event bus; some events were not tracked"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return false,
        }
        true
    }

    fn record(&mut self, rec: Record, verdicts: &mpsc::UnboundedSender<Record>) {
        if self.journal.should_rotate() {
            self.handle.publish_views();
            let snapshot = self.snapshot();
            if let Err(e) = self.journal.rotate_with(&snapshot) {
                metrics::counter!("provbox_journal_errors_total").increment(1);
                warn_limited!(error = %e, "cannot rotate the journal");
            }
        }
        self.append(&rec);
        if let Record::Verdict {
            check, system_type, ..
        } = &rec
        {
            if self.system_types.len() >= 4096 {
                self.system_types.clear();
            }
            self.system_types
                .insert(check.sha256.clone(), system_type.clone());
        }
        let index = self.store.index();
        let changes = self.handle.process(&rec, &index);
        for to in changes {
            self.transitions
                .entry(to)
                .or_insert_with(
                    || metrics::counter!("provbox_tracker_transitions_total", "to" => to.as_str()),
                )
                .increment(1);
        }
        let checks = lock(&self.handle.inner.tracker).take_config_checks();
        for check in checks {
            if let Some(system_type) = self.system_types.get(&check.sha256) {
                if lock(&self.handle.inner.tracker).verdict_is_noop(&check, system_type.as_deref())
                {
                    continue;
                }
                let _ = verdicts.send(Record::Verdict {
                    check,
                    system_type: system_type.clone(),
                    at_ms: now_ms(),
                });
                continue;
            }
            let store = self.store.clone();
            let tx = verdicts.clone();
            tokio::spawn(async move {
                let system_type = read_system_type(&store, &check).await;
                let _ = tx.send(Record::Verdict {
                    check,
                    system_type,
                    at_ms: now_ms(),
                });
            });
        }
    }

    fn append(&mut self, rec: &Record) {
        if let Err(e) = self.journal.append(rec) {
            metrics::counter!("provbox_journal_errors_total").increment(1);
            warn_limited!(error = %e, "cannot append to the journal; tracking continues in memory");
        }
    }
}

/// Reads the `system/type` of the config version that was served (by hash).
async fn read_system_type(store: &Store, check: &ConfigCheck) -> Option<String> {
    let snap = store.open(&check.file).await.ok()?;
    if snap.entry.sha256 != check.sha256 {
        return None;
    }
    // The snapshot is in memory; the first 64 KiB hold the `[system]` section.
    state::system_type(&String::from_utf8_lossy(&snap.slice(0, 64 * 1024)))
}

#[cfg(test)]
mod tests;
