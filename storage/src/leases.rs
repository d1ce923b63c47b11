//! The DHCP lease database: one redb file (`<state>/leases.redb`), keyed by IPv4 address,
//! plus an in-memory mirror the rest of the appliance reads (the tracker maps a TFTP or
//! HTTP peer address to a MAC through [`LeaseDb::by_ip`], the API serves [`LeaseDb::all`]).
//!
//! Keying by address makes "one address, one MAC" a property of the file itself: a new
//! lease for an address replaces whatever was there. A MAC that moves to another address
//! has its old record removed in the same transaction.
//!
//! Writes go through [`LeaseDb::apply`], one redb transaction per call with
//! `Durability::Immediate` (fsync before it returns). The DHCP server batches many
//! leases into one call (group commit) and sends its ACKs only after it returned, so every
//! acknowledged lease survives `kill -9` and power loss.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use provbox_config::MacAddr;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// ip (u32, host order) → encoded [`Lease`] (see `encode`).
const LEASES: TableDefinition<'_, u32, &[u8]> = TableDefinition::new("leases_v1");

/// What a lease record says about its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Acknowledged; valid until `expires_at_ms`.
    Bound,
    /// The client gave it back; the MAC keeps a claim on it until someone else needs it.
    Released,
    /// A client reported the address in use (DHCPDECLINE); out of the pool until
    /// `expires_at_ms`.
    Declined,
}

impl LeaseState {
    fn code(self) -> u8 {
        match self {
            LeaseState::Bound => 1,
            LeaseState::Released => 2,
            LeaseState::Declined => 3,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(LeaseState::Bound),
            2 => Some(LeaseState::Released),
            3 => Some(LeaseState::Declined),
            _ => None,
        }
    }
}

/// One lease, as stored and as served at `/api/v1/leases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// Milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// The phone model seen in option 60/77, if any.
    pub model: Option<String>,
    /// Option 12, if the client sent one.
    pub hostname: Option<String>,
    pub state: LeaseState,
}

impl Lease {
    /// Bound and not yet expired at `now_ms`.
    pub fn is_active(&self, now_ms: u64) -> bool {
        self.state == LeaseState::Bound && self.expires_at_ms > now_ms
    }
}

/// One change in a [`LeaseDb::apply`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseWrite {
    /// Store this lease under its address (replacing any record there), and drop the
    /// MAC's record at any other address.
    Put(Lease),
    /// Forget the record at this address.
    Remove(Ipv4Addr),
}

/// A lease database problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "cannot create the lease directory {path}: {source}; check the state directory's permissions"
    )]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lease database {path}: {source}")]
    Db { path: PathBuf, source: redb::Error },
}

#[derive(Debug, Default)]
struct Mirror {
    by_ip: HashMap<Ipv4Addr, Lease>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
}

impl Mirror {
    /// A declined address is not the MAC's address: the MAC is only recorded as the one
    /// that declined it, so `by_mac` never points at a quarantined record.
    fn put(&mut self, lease: Lease) {
        if lease.state == LeaseState::Declined {
            if self.by_mac.get(&lease.mac) == Some(&lease.ip) {
                self.by_mac.remove(&lease.mac);
            }
            if let Some(prev) = self.by_ip.get(&lease.ip)
                && self.by_mac.get(&prev.mac) == Some(&lease.ip)
            {
                self.by_mac.remove(&prev.mac);
            }
            self.by_ip.insert(lease.ip, lease);
            return;
        }
        if let Some(old_ip) = self.by_mac.get(&lease.mac).copied()
            && old_ip != lease.ip
            && self.by_ip.get(&old_ip).is_some_and(|l| l.mac == lease.mac)
        {
            self.by_ip.remove(&old_ip);
        }
        if let Some(prev) = self.by_ip.get(&lease.ip)
            && prev.mac != lease.mac
            && self.by_mac.get(&prev.mac) == Some(&lease.ip)
        {
            self.by_mac.remove(&prev.mac);
        }
        self.by_mac.insert(lease.mac, lease.ip);
        self.by_ip.insert(lease.ip, lease);
    }
    fn remove(&mut self, ip: Ipv4Addr) {
        if let Some(l) = self.by_ip.remove(&ip)
            && self.by_mac.get(&l.mac) == Some(&ip)
        {
            self.by_mac.remove(&l.mac);
        }
    }
}

struct Inner {
    path: PathBuf,
    db: redb::Database,
    mirror: RwLock<Mirror>,
}

/// The lease database. Cheap to clone (an `Arc` inside); reads never touch the disk.
#[derive(Clone)]
pub struct LeaseDb {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LeaseDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseDb")
            .field("path", &self.inner.path)
            .field("leases", &self.len())
            .finish()
    }
}

impl LeaseDb {
    /// Opens (or creates) the database at `path` and loads every lease into memory.
    /// After a crash redb repairs the file from its last committed state.
    pub fn open(path: &Path) -> Result<LeaseDb, LeaseError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| LeaseError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let err = |e: redb::Error| LeaseError::Db {
            path: path.to_path_buf(),
            source: e,
        };
        // redb caches up to 1 GiB by default; a lease table is kilobytes, and every
        // read is served from the in-memory mirror anyway.
        let db = redb::Builder::new()
            .set_cache_size(16 * 1024 * 1024)
            .create(path)
            .map_err(|e| err(e.into()))?;
        let mut mirror = Mirror::default();
        {
            // Create the table on first use so reads never see "no such table".
            let tx = db.begin_write().map_err(|e| err(e.into()))?;
            tx.open_table(LEASES).map_err(|e| err(e.into()))?;
            tx.commit().map_err(|e| err(e.into()))?;
            let rx = db.begin_read().map_err(|e| err(e.into()))?;
            let table = rx.open_table(LEASES).map_err(|e| err(e.into()))?;
            let mut bad = 0usize;
            for row in table.iter().map_err(|e| err(e.into()))? {
                let (k, v) = row.map_err(|e| err(e.into()))?;
                match decode(Ipv4Addr::from(k.value()), v.value()) {
                    Some(lease) => mirror.put(lease),
                    None => bad += 1,
                }
            }
            if bad > 0 {
                tracing::warn!(path = %path.display(), bad, "skipped lease records this version cannot read");
            }
        }
        Ok(LeaseDb {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                db,
                mirror: RwLock::new(mirror),
            }),
        })
    }

    /// The file this database lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn read(&self) -> RwLockReadGuard<'_, Mirror> {
        self.inner.mirror.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, Mirror> {
        self.inner.mirror.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every lease record, ordered by address.
    pub fn all(&self) -> Vec<Lease> {
        let mut v: Vec<Lease> = self.read().by_ip.values().cloned().collect();
        v.sort_by_key(|l| u32::from(l.ip));
        v
    }

    pub fn by_ip(&self, ip: Ipv4Addr) -> Option<Lease> {
        self.read().by_ip.get(&ip).cloned()
    }

    pub fn by_mac(&self, mac: MacAddr) -> Option<Lease> {
        let m = self.read();
        m.by_mac.get(&mac).and_then(|ip| m.by_ip.get(ip)).cloned()
    }

    /// Number of records (any state).
    pub fn len(&self) -> usize {
        self.read().by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bound, unexpired leases at `now_ms`.
    pub fn active_count(&self, now_ms: u64) -> usize {
        self.read()
            .by_ip
            .values()
            .filter(|l| l.is_active(now_ms))
            .count()
    }

    /// Applies a batch in one durable transaction (fsync before returning), then updates
    /// the in-memory view. Blocking: call it from a dedicated thread.
    pub fn apply(&self, batch: &[LeaseWrite]) -> Result<(), LeaseError> {
        if batch.is_empty() {
            return Ok(());
        }
        let err = |e: redb::Error| LeaseError::Db {
            path: self.inner.path.clone(),
            source: e,
        };
        let mut buf = Vec::with_capacity(64);
        {
            // The MAC → address view as it will be after each write of this batch, so
            // "drop the MAC's old record" also sees earlier writes of the same batch.
            let mirror = self.read();
            let mut moved: HashMap<MacAddr, Ipv4Addr> = HashMap::new();
            let tx = self.inner.db.begin_write().map_err(|e| err(e.into()))?;
            {
                let mut table = tx.open_table(LEASES).map_err(|e| err(e.into()))?;
                for w in batch {
                    match w {
                        LeaseWrite::Put(lease) => {
                            let old = moved
                                .get(&lease.mac)
                                .or_else(|| mirror.by_mac.get(&lease.mac))
                                .copied();
                            if let Some(old_ip) = old
                                && old_ip != lease.ip
                                && lease.state != LeaseState::Declined
                            {
                                let still_theirs = match table
                                    .get(u32::from(old_ip))
                                    .map_err(|e| err(e.into()))?
                                {
                                    Some(v) => decode(old_ip, v.value()).is_some_and(|l| {
                                        l.mac == lease.mac && l.state != LeaseState::Declined
                                    }),
                                    None => false,
                                };
                                if still_theirs {
                                    table.remove(u32::from(old_ip)).map_err(|e| err(e.into()))?;
                                }
                            }
                            encode(lease, &mut buf);
                            table
                                .insert(u32::from(lease.ip), buf.as_slice())
                                .map_err(|e| err(e.into()))?;
                            if lease.state == LeaseState::Declined {
                                if moved.get(&lease.mac) == Some(&lease.ip) {
                                    moved.remove(&lease.mac);
                                }
                            } else {
                                moved.insert(lease.mac, lease.ip);
                            }
                        }
                        LeaseWrite::Remove(ip) => {
                            table.remove(u32::from(*ip)).map_err(|e| err(e.into()))?;
                        }
                    }
                }
            }
            drop(mirror);
            tx.commit().map_err(|e| err(e.into()))?;
        }
        let mut m = self.write();
        for w in batch {
            match w {
                LeaseWrite::Put(lease) => m.put(lease.clone()),
                LeaseWrite::Remove(ip) => m.remove(*ip),
            }
        }
        Ok(())
    }
}

const FORMAT: u8 = 1;

/// `[format=1][mac 6][expires_at_ms u64 LE][state u8][model len u8][model][hostname len u8][hostname]`.
/// A hand-written layout because it is tiny, stable and costs no allocation beyond the
/// reused buffer; text fields are cut at 255 bytes (on a character boundary).
fn encode(l: &Lease, buf: &mut Vec<u8>) {
    buf.clear();
    buf.push(FORMAT);
    buf.extend_from_slice(&l.mac.0);
    buf.extend_from_slice(&l.expires_at_ms.to_le_bytes());
    buf.push(l.state.code());
    for s in [&l.model, &l.hostname] {
        let t = short(s.as_deref().unwrap_or(""));
        buf.push(t.len() as u8);
        buf.extend_from_slice(t.as_bytes());
    }
}

fn short(s: &str) -> &str {
    if s.len() <= 255 {
        return s;
    }
    let mut end = 255;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn decode(ip: Ipv4Addr, b: &[u8]) -> Option<Lease> {
    if b.first() != Some(&FORMAT) || b.len() < 16 {
        return None;
    }
    let mac = MacAddr(b[1..7].try_into().ok()?);
    let expires_at_ms = u64::from_le_bytes(b[7..15].try_into().ok()?);
    let state = LeaseState::from_code(b[15])?;
    let mut rest = &b[16..];
    let mut text = || -> Option<Option<String>> {
        let (&n, tail) = rest.split_first()?;
        let n = usize::from(n);
        if tail.len() < n {
            return None;
        }
        let s = std::str::from_utf8(&tail[..n]).ok()?.to_string();
        rest = &tail[n..];
        Some((!s.is_empty()).then_some(s))
    };
    let model = text()?;
    let hostname = text()?;
    Some(Lease {
        mac,
        ip,
        expires_at_ms,
        model,
        hostname,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(mac: u8, ip: u8, state: LeaseState) -> Lease {
        Lease {
            mac: MacAddr([0, 0x90, 0x8f, 0, 0, mac]),
            ip: Ipv4Addr::new(192, 0, 2, ip),
            expires_at_ms: 1_000_000 + u64::from(ip),
            model: Some("450HD".into()),
            hostname: mac.is_multiple_of(2).then(|| "phone".to_string()),
            state,
        }
    }

    #[test]
    fn encode_round_trip() {
        let mut buf = Vec::new();
        for l in [
            lease(1, 10, LeaseState::Bound),
            lease(2, 11, LeaseState::Declined),
        ] {
            encode(&l, &mut buf);
            assert_eq!(decode(l.ip, &buf), Some(l));
        }
        let mut long = lease(3, 12, LeaseState::Released);
        long.model = Some("é".repeat(200));
        encode(&long, &mut buf);
        let back = decode(long.ip, &buf).unwrap_or_else(|| panic!("decode"));
        assert_eq!(back.model.map(|m| m.len()), Some(254));
        assert_eq!(decode(long.ip, &buf[..buf.len() - 1]), None);
        assert_eq!(decode(long.ip, &[9, 9]), None);
    }

    #[test]
    fn persists_and_moves() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("sub/leases.redb");
        let db = LeaseDb::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let a = lease(1, 10, LeaseState::Bound);
        let b = lease(2, 11, LeaseState::Bound);
        db.apply(&[LeaseWrite::Put(a.clone()), LeaseWrite::Put(b.clone())])
            .unwrap_or_else(|e| panic!("{e}"));
        // MAC 1 moves to .12 in the same batch as another write: its old record goes.
        let mut a2 = a.clone();
        a2.ip = Ipv4Addr::new(192, 0, 2, 12);
        // MAC 3 takes over .11 from MAC 2.
        let mut c = lease(3, 11, LeaseState::Bound);
        c.model = None;
        db.apply(&[LeaseWrite::Put(a2.clone()), LeaseWrite::Put(c.clone())])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(db.by_mac(a.mac), Some(a2.clone()));
        assert_eq!(db.by_ip(a.ip), None);
        assert_eq!(db.by_ip(c.ip), Some(c.clone()));
        assert_eq!(db.by_mac(b.mac), None);
        drop(db);
        let db = LeaseDb::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(db.all(), vec![c.clone(), a2.clone()]);
        assert_eq!(db.by_mac(a.mac), Some(a2));
        db.apply(&[LeaseWrite::Remove(c.ip)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(db.len(), 1);
        assert_eq!(db.active_count(0), 1);
        assert_eq!(db.active_count(u64::MAX), 0);
    }

    /// Renewals rewrite the same keys for ever: redb reuses the pages older commits
    /// freed, so the file stays the size its live records need and no compaction is
    /// required. 2,000 commits over 250 addresses (110,592 bytes after the first 200 and
    /// after all of them; without page reuse each commit would add at least a 4 KiB page).
    #[test]
    fn renewal_churn_does_not_grow_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("leases.redb");
        let db = LeaseDb::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let size = || std::fs::metadata(&path).map_or(0, |m| m.len());
        let mut warm = 0;
        for round in 0..2_000u64 {
            let batch: Vec<_> = (0..5u8)
                .map(|i| {
                    let n = ((round * 5 + u64::from(i)) % 250) as u8;
                    let mut l = lease(n, n, LeaseState::Bound);
                    l.expires_at_ms = round;
                    LeaseWrite::Put(l)
                })
                .collect();
            db.apply(&batch).unwrap_or_else(|e| panic!("{e}"));
            if round == 199 {
                warm = size();
            }
        }
        assert_eq!(db.len(), 250);
        assert!(
            size() <= warm * 2,
            "the lease file grew from {warm} to {} bytes under renewals",
            size()
        );
    }
}
