//! The watched file store: an index of the store directory, kept live by notify, and
//! immutable snapshots that clients are served from.
//!
//! # How a client never gets half old, half new bytes
//!
//! Clients are never served the operator's files directly. When a file is new or has
//! changed, and has been quiet for `settle` (and, with inotify, its writer has closed
//! it), the indexer copies it (a reflink where the filesystem can, a plain copy
//! elsewhere) into `state/store/blobs/.tmp-*`, hashes the copy, and checks that the
//! source's size, mtime, ctime and inode did not change while it was copied. Only
//! then is the copy renamed to `blobs/<sha256>` (read-only, never written again) and
//! the index entry switched to it. A copy that raced a writer is thrown away and
//! retried once the file is quiet again.
//!
//! Opening a file pins its blob: a [`Snapshot`] holds the blob's bytes (a read-only
//! memory map, or a heap copy for small files), shared by every reader of that
//! version. A rename or an in-place overwrite (`cp new.img 450HD.img`) of the source
//! only ever produces a new blob; an in-flight download keeps reading the old one,
//! whose mapping stays valid after the blob is deleted once unreferenced.
//!
//! # Why memory maps
//!
//! Serving a 1 KiB config at tens of thousands of requests a second cannot afford a
//! blocking-pool hop to `open(2)` per request, and a fleet downloading one image
//! cannot afford a fresh buffer, a zero-fill and a `pread` copy per chunk. So the
//! store keeps each current blob open once, as `Bytes`, and protocols slice it:
//! plain HTTP sends them with `sendfile(2)` from the blob's file ([`crate::mapped`]),
//! TLS encrypts from them, TFTP and FTP copy from them without a system call. Mapping is safe because blobs are the
//! store's own files: written completely, made read-only, renamed into place and never
//! written again (only unlinked); a reflink copy is a separate inode, so the
//! operator's later writes to the source cannot reach it. The mapping is created with
//! `MAP_POPULATE` on the blocking pool so its first reader does not fault pages in on
//! a runtime thread.
//!
//! One task owns the index. Readers take an `Arc` of the current index without
//! waiting. A manifest of (path, stat, sha256) lets a restart reuse blobs instead of
//! hashing everything again.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use notify::EventKind as NK;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::names::{self, FileKind};
use crate::resolve::{self, ResolveError};

/// Store errors a protocol turns into its own "not found" or "access denied".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("refused path {path:?}: {reason}")]
    Refused { path: String, reason: ResolveError },
    #[error("no such file: {0}")]
    NotFound(String),
    #[error("store I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("file watcher error on {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

impl StoreError {
    /// True for refusals a client caused (traversal and friends).
    pub fn is_refusal(&self) -> bool {
        matches!(self, StoreError::Refused { .. })
    }
}

/// How the store is run. Mirrors `[store]` in the config.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub root: PathBuf,
    /// Where snapshots and the manifest live (`<state>/store`).
    pub state_dir: PathBuf,
    pub poll: bool,
    pub poll_interval: Duration,
    pub settle: Duration,
    pub rescan_interval: Duration,
}

/// One served file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path with `/` separators, as the operator named it.
    pub path: String,
    pub size: u64,
    /// Modification time of the source, ms since the epoch.
    pub mtime_ms: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    pub kind: FileKind,
    /// Phone model and firmware version parsed from the name, where present.
    pub model: Option<String>,
    pub version: Option<String>,
}

impl Entry {
    /// The file name (last path component).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
    pub fn mtime(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.mtime_ms)
    }
}

/// A source file's identity; any change means "new content may be there".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stat {
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

impl Stat {
    fn of(m: &std::fs::Metadata) -> Stat {
        Stat {
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
    fn mtime_ms(&self) -> u64 {
        (self.mtime_ns / 1_000_000).max(0) as u64
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Indexed {
    entry: Arc<Entry>,
    stat: Stat,
}

/// An immutable view of the index.
#[derive(Debug, Default)]
pub struct Index {
    files: BTreeMap<String, Indexed>,
    /// `names::lookup_key(path)` → path.
    keys: HashMap<String, String>,
    /// directory → upper-case model → the newest firmware image there. Built once per
    /// publish: every `450HD.img` request used to scan the whole index (2.6 % of the
    /// server's CPU in a 500-phone FTP fleet).
    images: HashMap<String, HashMap<String, Arc<Entry>>>,
}

/// Which of two images of one model is newer: by parsed version, then mtime.
fn newer(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    let v = match (&a.version, &b.version) {
        (Some(x), Some(y)) => names::compare_versions(x, y),
        (Some(_), None) => std::cmp::Ordering::Greater,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (None, None) => std::cmp::Ordering::Equal,
    };
    v.then(a.mtime_ms.cmp(&b.mtime_ms))
}

impl Index {
    fn build(files: BTreeMap<String, Indexed>) -> Index {
        let keys = files
            .keys()
            .map(|p| (names::lookup_key(p), p.clone()))
            .collect();
        let mut images: HashMap<String, HashMap<String, Arc<Entry>>> = HashMap::new();
        for e in files.values().map(|i| &i.entry) {
            let Some(model) = e.model.as_deref().filter(|_| e.kind == FileKind::Firmware) else {
                continue;
            };
            let dir = e.path.rsplit_once('/').map_or("", |(d, _)| d);
            let slot = images
                .entry(dir.to_string())
                .or_default()
                .entry(model.to_ascii_uppercase());
            match slot {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(e.clone());
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    // `>=`: of equal candidates the later path wins, as `max_by` did.
                    if newer(e, o.get()) != std::cmp::Ordering::Less {
                        o.insert(e.clone());
                    }
                }
            }
        }
        Index {
            files,
            keys,
            images,
        }
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// The content hashes of every current version.
    fn shas(&self) -> std::collections::HashSet<&str> {
        self.files
            .values()
            .map(|i| i.entry.sha256.as_str())
            .collect()
    }
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
    pub fn entries(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.files.values().map(|i| &i.entry)
    }

    /// Finds a file: the exact path, then the case- and MAC-separator-insensitive key,
    /// then a model alias (`450HD.img` or `UC450HD.img` → the newest `450HD_<version>.img`
    /// in the same directory).
    pub fn find(&self, rel: &str) -> Option<&Arc<Entry>> {
        if let Some(i) = self.files.get(rel) {
            return Some(&i.entry);
        }
        if let Some(p) = self.keys.get(&names::lookup_key(rel)) {
            return self.files.get(p).map(|i| &i.entry);
        }
        let (dir, name) = rel.rsplit_once('/').map_or(("", rel), |(d, n)| (d, n));
        let parsed = names::parse_image_name(name);
        let model = parsed.model.filter(|_| parsed.version.is_none())?;
        self.newest_image(dir, &model)
    }

    /// The newest `.img` for a model in a directory (by parsed version, then mtime).
    pub fn newest_image(&self, dir: &str, model: &str) -> Option<&Arc<Entry>> {
        self.images
            .get(dir)?
            .get(model.to_ascii_uppercase().as_str())
    }

    /// Whether `dir` (relative, "" for the root) holds any file.
    pub fn is_dir(&self, dir: &str) -> bool {
        dir.is_empty() || {
            let prefix = format!("{dir}/");
            self.files
                .range(prefix.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&prefix))
        }
    }

    /// The files and subdirectories directly inside `dir`.
    pub fn list(&self, dir: &str) -> Vec<DirItem> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut dirs: BTreeMap<String, u64> = BTreeMap::new();
        let mut files = Vec::new();
        for (path, i) in self.files.range(prefix.clone()..) {
            let Some(rest) = path.strip_prefix(&prefix) else {
                break;
            };
            match rest.split_once('/') {
                Some((sub, _)) => {
                    let m = dirs.entry(sub.to_string()).or_insert(0);
                    *m = (*m).max(i.entry.mtime_ms);
                }
                None => files.push(DirItem {
                    name: rest.to_string(),
                    entry: Some(i.entry.clone()),
                    mtime_ms: i.entry.mtime_ms,
                }),
            }
        }
        dirs.into_iter()
            .map(|(name, mtime_ms)| DirItem {
                name,
                entry: None,
                mtime_ms,
            })
            .chain(files)
            .collect()
    }
}

/// A listing row: a file (with its entry) or a directory.
#[derive(Debug, Clone)]
pub struct DirItem {
    pub name: String,
    pub entry: Option<Arc<Entry>>,
    pub mtime_ms: u64,
}

/// A change the indexer committed.
#[derive(Debug, Clone)]
pub enum StoreEvent {
    Added(Arc<Entry>),
    Modified(Arc<Entry>),
    Removed(String),
}

/// An open, pinned version of a file: its entry and its bytes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub entry: Arc<Entry>,
    data: Bytes,
}

impl Snapshot {
    /// The whole version. Slicing it is free; the bytes stay valid as long as any
    /// slice lives, whatever happens to the store.
    pub fn bytes(&self) -> &Bytes {
        &self.data
    }

    /// `len` bytes from `offset`, clipped to the end of the file.
    pub fn slice(&self, offset: u64, len: usize) -> Bytes {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        let end = start.saturating_add(len).min(self.data.len());
        self.data.slice(start..end)
    }

    /// Fills `buf` from `offset` as far as the file allows; returns the bytes copied
    /// (fewer at the end of the file).
    pub fn read_full_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let src = self.slice(offset, buf.len());
        buf[..src.len()].copy_from_slice(&src);
        Ok(src.len())
    }

    /// A reader positioned at `offset` (implements `std::io::Read` and tokio's `AsyncRead`).
    pub fn reader(&self, offset: u64) -> std::io::Cursor<Bytes> {
        let mut c = std::io::Cursor::new(self.data.clone());
        c.set_position(offset.min(self.data.len() as u64));
        c
    }
}

/// Locks a mutex, ignoring poisoning (the cache holds no invariant a panic can break).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Files up to this size are read onto the heap rather than mapped: a mapping costs a
/// page and a kernel VMA however small the file.
const HEAP_BLOB_MAX: u64 = 64 * 1024;
/// Open blobs kept at most; past this, blobs no current entry uses are dropped first.
/// Each mapping keeps its blob's descriptor open (for [`crate::mapped::send_mapped`]),
/// so this bounds open files as well as kernel VMAs; `provbox serve` raises its soft
/// descriptor limit to the hard limit at start.
const BLOB_CACHE_MAX: usize = 4096;

/// Loads a blob as `Bytes`: read for small files, a populated read-only map otherwise.
fn load_blob(path: &Path, size: u64) -> std::io::Result<Bytes> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len != size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("blob is {len} bytes, its index entry says {size}"),
        ));
    }
    if len <= HEAP_BLOB_MAX {
        let mut v = Vec::with_capacity(len as usize);
        (&file).take(len).read_to_end(&mut v)?;
        return Ok(Bytes::from(v));
    }
    crate::mapped::map_blob(file)
}

/// Handle to the store; cheap to clone. When the last clone is dropped the indexer
/// task ends and the watcher (an inotify instance or a poll thread) is released.
#[derive(Debug, Clone)]
pub struct Store {
    shared: Arc<Shared>,
    _life: Arc<StopOnDrop>,
}

/// Tells the indexer to stop once no `Store` handle is left. The indexer holds
/// `Shared`, and `Shared` holds the sender of the indexer's own channel, so the channel
/// never closes by itself: without this, every store started on a long-lived runtime
/// (a test fixture starting many appliances) kept its task and inotify instance.
#[derive(Debug)]
struct StopOnDrop(mpsc::UnboundedSender<Msg>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(Msg::Stop);
    }
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    blobs: PathBuf,
    index: RwLock<Arc<Index>>,
    /// Open blobs by sha256; pruned to the current index on every publish.
    open: Mutex<HashMap<String, Bytes>>,
    /// Loads in progress by sha256. Opens of one blob wait for one load: when 500
    /// phones asked for a new image at once, each mapped and populated its own copy
    /// (tens of mappings, hundreds of MiB of RSS, and as many page-table fills).
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    changes: broadcast::Sender<StoreEvent>,
    control: mpsc::UnboundedSender<Msg>,
}

enum Msg {
    Notify(notify_debouncer_full::DebounceEventResult),
    Rescan(Option<oneshot::Sender<()>>),
    /// The last `Store` handle was dropped.
    Stop,
}

impl Store {
    /// Opens the store: creates the directories, starts the watcher, indexes every file
    /// (reusing snapshots from a previous run), and keeps the index live in a task.
    /// Must be called inside a tokio runtime.
    pub async fn start(opts: StoreOptions) -> Result<Store, StoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(&opts.root).map_err(io(&opts.root))?;
        let blobs = opts.state_dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        let root = opts.root.canonicalize().map_err(io(&opts.root))?;

        let (control, rx) = mpsc::unbounded_channel();
        let (changes, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            root: root.clone(),
            blobs: blobs.clone(),
            index: RwLock::new(Arc::new(Index::default())),
            open: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            changes,
            control: control.clone(),
        });

        // Watch before the first scan, so nothing written during the scan is missed.
        let watcher = start_watcher(&opts, &root, control.clone())?;
        let manifest_path = opts.state_dir.join("manifest.json");
        let manifest: HashMap<String, Indexed> = std::fs::read(&manifest_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut indexer = Indexer {
            shared: shared.clone(),
            opts: opts.clone(),
            files: BTreeMap::new(),
            pending: HashMap::new(),
            manifest_path,
            dirty: false,
            _watcher: watcher,
        };
        let (root2, blobs2) = (root.clone(), blobs.clone());
        let files = tokio::task::spawn_blocking(move || initial_scan(&root2, &blobs2, manifest))
            .await
            .map_err(|e| StoreError::Io {
                path: root.clone(),
                source: std::io::Error::other(e),
            })?;
        indexer.files = files;
        indexer.publish();
        indexer.collect_garbage_all();
        indexer.save_manifest();
        tokio::spawn(indexer.run(rx));
        Ok(Store {
            shared,
            _life: Arc::new(StopOnDrop(control)),
        })
    }

    /// The store directory (canonical).
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// The current index.
    pub fn index(&self) -> Arc<Index> {
        match self.shared.index.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Changes as the indexer commits them.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.shared.changes.subscribe()
    }

    /// Resolves and finds a file without opening it.
    pub fn lookup(&self, requested: &str) -> Result<Arc<Entry>, StoreError> {
        let rel = resolve::resolve(requested).map_err(|reason| StoreError::Refused {
            path: requested.to_string(),
            reason,
        })?;
        self.index()
            .find(&rel)
            .cloned()
            .ok_or(StoreError::NotFound(rel))
    }

    /// Opens the current version of a file. The returned snapshot keeps reading that
    /// version whatever happens to the source afterwards.
    pub async fn open(&self, requested: &str) -> Result<Snapshot, StoreError> {
        // The blob of the entry we looked up may be collected between lookup and open
        // if the file changed at that instant: look up again once.
        for _ in 0..3 {
            let entry = self.lookup(requested)?;
            if let Some(data) = lock(&self.shared.open).get(&entry.sha256).cloned() {
                return Ok(Snapshot { entry, data });
            }
            let gate = lock(&self.shared.loading)
                .entry(entry.sha256.clone())
                .or_default()
                .clone();
            let _loading = gate.lock().await;
            // Whoever held the gate before us has probably loaded it.
            if let Some(data) = lock(&self.shared.open).get(&entry.sha256).cloned() {
                return Ok(Snapshot { entry, data });
            }
            let blob = self.shared.blobs.join(&entry.sha256);
            let size = entry.size;
            let loaded = tokio::task::spawn_blocking(move || load_blob(&blob, size)).await;
            if let Ok(Ok(data)) = &loaded {
                self.remember(&entry.sha256, data.clone());
            }
            // Only now, with the blob in the cache, may a new opener pass without the
            // gate: it finds the cache (or, if that was refused, loads again itself).
            {
                let mut loading = lock(&self.shared.loading);
                if loading
                    .get(&entry.sha256)
                    .is_some_and(|g| Arc::ptr_eq(g, &gate))
                {
                    loading.remove(&entry.sha256);
                }
            }
            match loaded {
                Ok(Ok(data)) => return Ok(Snapshot { entry, data }),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Ok(Err(source)) => {
                    return Err(StoreError::Io {
                        path: self.shared.blobs.join(&entry.sha256),
                        source,
                    });
                }
                Err(e) => {
                    return Err(StoreError::Io {
                        path: self.shared.blobs.clone(),
                        source: std::io::Error::other(e),
                    });
                }
            }
        }
        Err(StoreError::NotFound(requested.to_string()))
    }

    /// Keeps an opened blob for the next reader, within [`BLOB_CACHE_MAX`].
    fn remember(&self, sha: &str, data: Bytes) {
        let index = self.index();
        let used = index.shas();
        if !used.contains(sha) {
            // Replaced while it was being opened: the next publish would not prune it.
            return;
        }
        let mut open = lock(&self.shared.open);
        if open.len() >= BLOB_CACHE_MAX {
            open.retain(|k, _| used.contains(k.as_str()));
            if open.len() >= BLOB_CACHE_MAX {
                // Every cached blob is current: forget them all rather than track
                // recency; each is reopened by its next reader.
                open.clear();
            }
        }
        open.insert(sha.to_string(), data);
    }

    /// Forces a full rescan and waits until it is committed (tests, `provbox check`).
    pub async fn rescan(&self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.control.send(Msg::Rescan(Some(tx))).is_ok() {
            let _ = rx.await;
        }
    }
}

fn start_watcher(
    opts: &StoreOptions,
    root: &Path,
    control: mpsc::UnboundedSender<Msg>,
) -> Result<Box<dyn std::any::Any + Send>, StoreError> {
    let werr = |source| StoreError::Watch {
        path: root.to_path_buf(),
        source,
    };
    let handler = move |res| {
        let _ = control.send(Msg::Notify(res));
    };
    // A short debounce: the indexer applies its own settle rule on top.
    let debounce = Duration::from_millis(50);
    if opts.poll {
        let cfg = notify::Config::default().with_poll_interval(opts.poll_interval);
        let mut d = notify_debouncer_full::new_debouncer_opt::<_, notify::PollWatcher, _>(
            debounce,
            None,
            handler,
            notify_debouncer_full::NoCache,
            cfg,
        )
        .map_err(werr)?;
        d.watch(root, notify::RecursiveMode::Recursive)
            .map_err(werr)?;
        Ok(Box::new(d))
    } else {
        let mut d = notify_debouncer_full::new_debouncer(debounce, None, handler).map_err(werr)?;
        d.watch(root, notify::RecursiveMode::Recursive)
            .map_err(werr)?;
        Ok(Box::new(d))
    }
}

/// A path seen changing, not yet snapshotted.
#[derive(Debug)]
struct Pending {
    stat: Option<Stat>,
    quiet_since: Instant,
    /// Seen modified and not yet closed by its writer (inotify only).
    writing: bool,
}

/// A writer that never reports closing is trusted to be done after this long quiet.
const WRITER_GRACE: Duration = Duration::from_secs(10);

struct Indexer {
    shared: Arc<Shared>,
    opts: StoreOptions,
    files: BTreeMap<String, Indexed>,
    pending: HashMap<String, Pending>,
    manifest_path: PathBuf,
    dirty: bool,
    _watcher: Box<dyn std::any::Any + Send>,
}

impl Indexer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rescan =
            tokio::time::interval(self.opts.rescan_interval.max(Duration::from_secs(1)));
        rescan.tick().await;
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    // Dropping `self` drops the watcher, whose thread ends with it.
                    None | Some(Msg::Stop) => return,
                    Some(Msg::Notify(Ok(events))) => {
                        for e in events {
                            if e.need_rescan() { self.rescan_all(); } else { self.on_event(&e.event); }
                        }
                    }
                    Some(Msg::Notify(Err(errs))) => {
                        tracing::warn!(?errs, "store watcher reported errors; rescanning");
                        self.rescan_all();
                    }
                    Some(Msg::Rescan(done)) => {
                        self.rescan_all();
                        self.settle_pending(true).await;
                        if let Some(d) = done { let _ = d.send(()); }
                    }
                },
                _ = tick.tick(), if !self.pending.is_empty() => self.settle_pending(false).await,
                _ = rescan.tick() => self.rescan_all(),
            }
        }
    }

    fn rel(&self, p: &Path) -> Option<String> {
        let rel = p.strip_prefix(&self.shared.root).ok()?;
        let s = rel.to_str()?.to_string();
        (!s.is_empty()).then_some(s)
    }

    fn on_event(&mut self, e: &notify::Event) {
        use notify::event::{AccessKind, AccessMode, ModifyKind};
        for p in &e.paths {
            let Some(rel) = self.rel(p) else { continue };
            if names::path_is_hidden(&rel) {
                continue;
            }
            match e.kind {
                // Our own servers open files all the time; reads change nothing.
                NK::Access(AccessKind::Open(_))
                | NK::Access(AccessKind::Close(AccessMode::Read)) => continue,
                NK::Access(AccessKind::Close(AccessMode::Write)) => self.touch(&rel, Some(false)),
                NK::Modify(ModifyKind::Data(_)) => self.touch(&rel, Some(!self.opts.poll)),
                _ => {
                    if p.is_dir() {
                        self.scan_subtree(&rel);
                    } else {
                        self.touch(&rel, None);
                        // A directory removed or renamed away takes its files with it.
                        let prefix = format!("{rel}/");
                        let under: Vec<String> = self
                            .files
                            .keys()
                            .filter(|k| k.starts_with(&prefix))
                            .cloned()
                            .collect();
                        for k in under {
                            self.touch(&k, None);
                        }
                    }
                }
            }
        }
    }

    /// Marks a path for re-examination. `writing`: Some(true) a writer is active,
    /// Some(false) it closed, None unknown (keep what we knew).
    fn touch(&mut self, rel: &str, writing: Option<bool>) {
        let p = self.pending.entry(rel.to_string()).or_insert(Pending {
            stat: None,
            quiet_since: Instant::now(),
            writing: false,
        });
        p.quiet_since = Instant::now();
        p.stat = None;
        if let Some(w) = writing {
            p.writing = w;
        }
    }

    fn scan_subtree(&mut self, rel: &str) {
        let mut found = Vec::new();
        walk(&self.shared.root, &self.shared.root.join(rel), &mut found);
        for (r, _) in found {
            self.touch(&r, None);
        }
    }

    fn rescan_all(&mut self) {
        let mut found = Vec::new();
        walk(&self.shared.root, &self.shared.root, &mut found);
        let present: std::collections::HashSet<&String> = found.iter().map(|(r, _)| r).collect();
        let gone: Vec<String> = self
            .files
            .keys()
            .filter(|k| !present.contains(k))
            .cloned()
            .collect();
        for g in gone {
            self.touch(&g, None);
        }
        for (rel, meta) in &found {
            let changed = self.files.get(rel).is_none_or(|i| i.stat != Stat::of(meta));
            if changed && !self.pending.contains_key(rel) {
                self.touch(rel, None);
            }
        }
    }

    /// Snapshots every pending path that has been quiet long enough (`force`: now).
    async fn settle_pending(&mut self, force: bool) {
        let now = Instant::now();
        let mut ready = Vec::new();
        let root = self.shared.root.clone();
        let paths: Vec<String> = self.pending.keys().cloned().collect();
        for rel in paths {
            let meta = std::fs::metadata(root.join(&rel))
                .ok()
                .filter(|m| m.is_file());
            let Some(p) = self.pending.get_mut(&rel) else {
                continue;
            };
            let stat = meta.as_ref().map(Stat::of);
            if stat != p.stat {
                p.stat = stat;
                p.quiet_since = now;
                if !force {
                    continue;
                }
            }
            let quiet = now.duration_since(p.quiet_since);
            let settled =
                force || (quiet >= self.opts.settle && (!p.writing || quiet >= WRITER_GRACE));
            if settled {
                ready.push((rel, stat));
            }
        }
        for (rel, stat) in ready {
            self.pending.remove(&rel);
            match stat {
                None => self.remove(&rel),
                Some(stat) if self.files.get(&rel).is_some_and(|i| i.stat == stat) => {}
                Some(_) => {
                    let (root, blobs, r) = (root.clone(), self.shared.blobs.clone(), rel.clone());
                    let res =
                        tokio::task::spawn_blocking(move || snapshot(&root, &blobs, &r)).await;
                    match res {
                        Ok(Ok(indexed)) => self.commit(rel, indexed),
                        Ok(Err(SnapError::Changed)) => self.touch(&rel, None),
                        Ok(Err(SnapError::Io(e))) => {
                            tracing::warn!(path = %rel, error = %e, "cannot snapshot store file; it is not served until readable");
                            if e.kind() == std::io::ErrorKind::NotFound {
                                self.remove(&rel);
                            }
                        }
                        Err(e) => tracing::error!(path = %rel, error = %e, "snapshot task failed"),
                    }
                }
            }
        }
        if self.dirty {
            self.publish();
            self.save_manifest();
        }
    }

    fn commit(&mut self, rel: String, indexed: Indexed) {
        let entry = indexed.entry.clone();
        let old = self.files.insert(rel, indexed);
        let ev = match &old {
            None => StoreEvent::Added(entry),
            Some(o) if o.entry.sha256 == entry.sha256 => {
                self.dirty = true;
                return;
            }
            Some(_) => StoreEvent::Modified(entry),
        };
        tracing::info!(event = ?ev, "store changed");
        if let Some(o) = old {
            self.release_blob(&o.entry.sha256);
        }
        self.dirty = true;
        let _ = self.shared.changes.send(ev);
    }

    fn remove(&mut self, rel: &str) {
        if let Some(old) = self.files.remove(rel) {
            self.release_blob(&old.entry.sha256);
            self.dirty = true;
            tracing::info!(path = %rel, "store file removed");
            let _ = self
                .shared
                .changes
                .send(StoreEvent::Removed(rel.to_string()));
        }
    }

    fn publish(&mut self) {
        let idx = Arc::new(Index::build(self.files.clone()));
        // Blobs of replaced or removed versions are dropped here; readers that still
        // hold a snapshot keep their own reference.
        let used = idx.shas();
        lock(&self.shared.open).retain(|k, _| used.contains(k.as_str()));
        match self.shared.index.write() {
            Ok(mut g) => *g = idx,
            Err(p) => *p.into_inner() = idx,
        }
    }

    /// Deletes a blob no entry uses any more. Open descriptors keep reading it.
    fn release_blob(&self, sha: &str) {
        if !self.files.values().any(|i| i.entry.sha256 == sha) {
            let _ = std::fs::remove_file(self.shared.blobs.join(sha));
        }
    }

    fn collect_garbage_all(&self) {
        let used: std::collections::HashSet<&str> = self
            .files
            .values()
            .map(|i| i.entry.sha256.as_str())
            .collect();
        if let Ok(rd) = std::fs::read_dir(&self.shared.blobs) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !used.contains(name.as_str()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    fn save_manifest(&mut self) {
        self.dirty = false;
        let Ok(bytes) = serde_json::to_vec(&self.files) else {
            return;
        };
        let tmp = self.manifest_path.with_extension("json.tmp");
        if std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &self.manifest_path))
            .is_err()
        {
            tracing::warn!(path = %self.manifest_path.display(), "cannot write the store manifest; the next start rehashes the store");
        }
    }
}

/// Every visible regular file under `dir`, with metadata. Symlinks are followed only
/// when they stay inside the root.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, std::fs::Metadata)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if names::is_hidden(name) {
            continue;
        }
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_symlink() {
            match path.canonicalize() {
                Ok(target) if target.starts_with(root) => {}
                _ => {
                    tracing::warn!(path = %path.display(), "symlink leaves the store root; not served");
                    continue;
                }
            }
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if !ft.is_symlink() {
                walk(root, &path, out);
            }
        } else if meta.is_file()
            && let Ok(rel) = path.strip_prefix(root)
            && let Some(rel) = rel.to_str()
        {
            out.push((rel.to_string(), meta));
        }
    }
}

fn initial_scan(
    root: &Path,
    blobs: &Path,
    manifest: HashMap<String, Indexed>,
) -> BTreeMap<String, Indexed> {
    let mut found = Vec::new();
    walk(root, root, &mut found);
    let mut files = BTreeMap::new();
    for (rel, meta) in found {
        let stat = Stat::of(&meta);
        if let Some(m) = manifest.get(&rel)
            && m.stat == stat
            && blobs.join(&m.entry.sha256).is_file()
        {
            files.insert(rel, m.clone());
            continue;
        }
        // A file still being written at start-up is picked up by the watcher once it changes again.
        match snapshot(root, blobs, &rel) {
            Ok(i) => {
                files.insert(rel, i);
            }
            Err(e) => {
                tracing::warn!(path = %rel, error = ?e, "cannot snapshot store file at start-up")
            }
        }
    }
    files
}

#[derive(Debug)]
enum SnapError {
    /// The source changed while it was copied.
    Changed,
    Io(std::io::Error),
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Copies `rel` into an immutable blob named by its hash (see the module docs).
fn snapshot(root: &Path, blobs: &Path, rel: &str) -> Result<Indexed, SnapError> {
    let src = root.join(rel);
    let before = Stat::of(&std::fs::metadata(&src).map_err(SnapError::Io)?);
    let tmp = blobs.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let cleanup = |e| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    reflink_copy::reflink_or_copy(&src, &tmp)
        .map_err(SnapError::Io)
        .map_err(cleanup)?;
    let after = std::fs::metadata(&src)
        .map(|m| Stat::of(&m))
        .map_err(SnapError::Io)
        .map_err(cleanup)?;
    if after != before {
        return Err(cleanup(SnapError::Changed));
    }
    let mut f = std::fs::File::open(&tmp)
        .map_err(SnapError::Io)
        .map_err(cleanup)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(SnapError::Io).map_err(cleanup)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        h.update(&buf[..n]);
    }
    if len != before.len {
        return Err(cleanup(SnapError::Changed));
    }
    let sha = hex::encode(h.finalize());
    let blob = blobs.join(&sha);
    if blob.is_file() {
        let _ = std::fs::remove_file(&tmp);
    } else {
        let mut perm = f
            .metadata()
            .map_err(SnapError::Io)
            .map_err(cleanup)?
            .permissions();
        perm.set_readonly(true);
        let _ = std::fs::set_permissions(&tmp, perm);
        std::fs::rename(&tmp, &blob)
            .map_err(SnapError::Io)
            .map_err(cleanup)?;
    }
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let img = names::parse_image_name(name);
    Ok(Indexed {
        entry: Arc::new(Entry {
            path: rel.to_string(),
            size: len,
            mtime_ms: before.mtime_ms(),
            sha256: sha,
            kind: FileKind::of(name),
            model: img.model,
            version: img.version,
        }),
        stat: before,
    })
}

/// What a read-only look at a store directory found (for `provbox check`): no
/// snapshots are taken and nothing is written.
#[derive(Debug, Default)]
pub struct Survey {
    pub files: Vec<SurveyFile>,
    /// The index the servers would build from these files, without content hashes
    /// (`sha256` is empty): `index.find(path)` answers as a running store would.
    pub index: Index,
}

/// One file a survey found.
#[derive(Debug)]
pub struct SurveyFile {
    pub path: String,
    pub kind: FileKind,
    pub model: Option<String>,
    pub version: Option<String>,
    pub size: u64,
}

/// Lists the files a store directory would serve.
pub fn survey(root: &Path) -> Result<Survey, StoreError> {
    let root = root.canonicalize().map_err(|source| StoreError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let mut found = Vec::new();
    walk(&root, &root, &mut found);
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut indexed = BTreeMap::new();
    let files = found
        .into_iter()
        .map(|(rel, meta)| {
            let name = rel.rsplit('/').next().unwrap_or(&rel).to_string();
            let img = names::parse_image_name(&name);
            let stat = Stat::of(&meta);
            let entry = Entry {
                path: rel.clone(),
                size: meta.len(),
                mtime_ms: stat.mtime_ms(),
                sha256: String::new(),
                kind: FileKind::of(&name),
                model: img.model.clone(),
                version: img.version.clone(),
            };
            indexed.insert(
                rel.clone(),
                Indexed {
                    entry: Arc::new(entry),
                    stat,
                },
            );
            SurveyFile {
                path: rel,
                kind: FileKind::of(&name),
                model: img.model,
                version: img.version,
                size: meta.len(),
            }
        })
        .collect();
    Ok(Survey {
        files,
        index: Index::build(indexed),
    })
}
