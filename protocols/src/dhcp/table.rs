//! The in-memory lease table the decision logic works on: who holds which address, in
//! which state, until when. It is the single source of truth for allocation (one owner,
//! no locks); the lease database is its durable shadow, loaded into it at start-up.
//!
//! Invariant: an address has at most one holder (`by_ip` is keyed by address), and
//! `by_mac` points a MAC at most at one address, which that MAC holds.
//!
//! Allocation order for a MAC: its reservation; the address it already holds (even
//! expired or released, as long as nobody else took it); the address it asks for, if
//! free; a never-used pool address (a cursor sweeping the pool once); the address whose
//! holder expired longest ago.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use provbox_config::{Ipv4Range, MacAddr, Reservation};
use provbox_storage::leases::{Lease, LeaseState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Offered, not yet requested; held only in memory, for a short while.
    Offered,
    Bound,
    Released,
    /// Quarantined after a DECLINE.
    Declined,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub mac: MacAddr,
    pub state: SlotState,
    /// Until then the address is the holder's; after it, anyone's.
    pub expires_ms: u64,
}

#[derive(Debug, Default)]
pub struct LeaseTable {
    pool: Option<(u32, u32)>,
    res_by_mac: HashMap<MacAddr, Ipv4Addr>,
    res_by_ip: HashMap<Ipv4Addr, MacAddr>,
    by_ip: HashMap<Ipv4Addr, Slot>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
    /// (expires_ms, address) of every pool address that is not reserved: the reclaim order.
    expiry: BTreeSet<(u64, u32)>,
    /// Next never-used pool address to try.
    cursor: u32,
    swept: bool,
}

impl LeaseTable {
    pub fn new(pool: Option<Ipv4Range>, reservations: &[Reservation]) -> Self {
        let pool = pool.map(|p| (u32::from(p.first), u32::from(p.last)));
        Self {
            pool,
            res_by_mac: reservations.iter().map(|r| (r.mac, r.ip)).collect(),
            res_by_ip: reservations.iter().map(|r| (r.ip, r.mac)).collect(),
            cursor: pool.map_or(0, |p| p.0),
            swept: pool.is_none(),
            ..Self::default()
        }
    }

    /// Loads the durable leases (from the lease database) at start-up.
    pub fn load(&mut self, leases: impl IntoIterator<Item = Lease>) {
        for l in leases {
            let state = match l.state {
                LeaseState::Bound => SlotState::Bound,
                LeaseState::Released => SlotState::Released,
                LeaseState::Declined => SlotState::Declined,
            };
            self.set(
                l.ip,
                Slot {
                    mac: l.mac,
                    state,
                    expires_ms: l.expires_at_ms,
                },
            );
        }
    }

    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.pool
            .is_some_and(|(a, b)| (a..=b).contains(&u32::from(ip)))
    }

    pub fn reservation(&self, mac: MacAddr) -> Option<Ipv4Addr> {
        self.res_by_mac.get(&mac).copied()
    }

    pub fn slot(&self, ip: Ipv4Addr) -> Option<&Slot> {
        self.by_ip.get(&ip)
    }

    /// The address this MAC holds (any state but declined), with its slot.
    pub fn held_by(&self, mac: MacAddr) -> Option<(Ipv4Addr, Slot)> {
        let ip = *self.by_mac.get(&mac)?;
        self.by_ip.get(&ip).map(|s| (ip, *s))
    }

    /// Whether `mac` may have `ip` now: the address is in the pool or reserved for it,
    /// not reserved for anyone else, and free or already its own.
    pub fn available(&self, ip: Ipv4Addr, mac: MacAddr, now_ms: u64) -> bool {
        match self.res_by_ip.get(&ip) {
            Some(owner) => return *owner == mac && self.holder_ok(ip, mac, now_ms),
            None if !self.in_pool(ip) => return false,
            None => {}
        }
        // A MAC with a reservation gets that address and no other.
        if self.res_by_mac.contains_key(&mac) {
            return false;
        }
        self.holder_ok(ip, mac, now_ms)
    }

    fn holder_ok(&self, ip: Ipv4Addr, mac: MacAddr, now_ms: u64) -> bool {
        match self.by_ip.get(&ip) {
            None => true,
            Some(s) if s.state == SlotState::Declined => s.expires_ms <= now_ms,
            Some(s) => s.mac == mac || s.expires_ms <= now_ms,
        }
    }

    /// Picks an address for `mac` (see the module doc for the order) without changing
    /// anything. `None`: the pool is exhausted.
    pub fn pick(
        &mut self,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now_ms: u64,
    ) -> Option<Ipv4Addr> {
        if let Some(ip) = self.reservation(mac) {
            return self.holder_ok(ip, mac, now_ms).then_some(ip);
        }
        if let Some((ip, _)) = self.held_by(mac)
            && self.available(ip, mac, now_ms)
        {
            return Some(ip);
        }
        if let Some(ip) = requested
            && self.available(ip, mac, now_ms)
        {
            return Some(ip);
        }
        if let Some(ip) = self.fresh() {
            return Some(ip);
        }
        // Reclaim the longest-expired address. Entries are exact (kept in step with
        // `by_ip`), so the first one is the answer if it has expired.
        let &(exp, ip) = self.expiry.iter().next()?;
        (exp <= now_ms).then_some(Ipv4Addr::from(ip))
    }

    /// The next never-used, unreserved pool address. Amortised O(1): the cursor only
    /// moves forward; addresses behind it are in `by_ip` or reserved.
    fn fresh(&mut self) -> Option<Ipv4Addr> {
        let (_, last) = self.pool?;
        while !self.swept {
            let ip = Ipv4Addr::from(self.cursor);
            if self.cursor == last {
                self.swept = true;
            } else {
                self.cursor += 1;
            }
            if !self.by_ip.contains_key(&ip) && !self.res_by_ip.contains_key(&ip) {
                // Leave the cursor on it: `set` marks it used, and a pick that is not
                // followed by a `set` must find it again.
                self.cursor = u32::from(ip);
                self.swept = false;
                return Some(ip);
            }
        }
        None
    }

    /// Gives `ip` to `slot.mac` in `slot.state`, dropping whoever held it and whatever
    /// the MAC held before.
    pub fn set(&mut self, ip: Ipv4Addr, slot: Slot) {
        if let Some(prev_ip) = self.by_mac.get(&slot.mac).copied()
            && prev_ip != ip
        {
            self.remove(prev_ip);
        }
        if let Some(prev) = self.by_ip.get(&ip).copied() {
            self.unindex(ip, &prev);
        }
        self.by_ip.insert(ip, slot);
        if slot.state != SlotState::Declined {
            self.by_mac.insert(slot.mac, ip);
        }
        if self.in_pool(ip) && !self.res_by_ip.contains_key(&ip) {
            self.expiry.insert((slot.expires_ms, u32::from(ip)));
        }
        if self.pool.is_some() && u32::from(ip) == self.cursor && !self.swept {
            if self.pool.is_some_and(|(_, last)| self.cursor == last) {
                self.swept = true;
            } else {
                self.cursor += 1;
            }
        }
    }

    /// Forgets the holder of `ip`.
    pub fn remove(&mut self, ip: Ipv4Addr) {
        if let Some(prev) = self.by_ip.remove(&ip) {
            self.unindex(ip, &prev);
        }
    }

    fn unindex(&mut self, ip: Ipv4Addr, prev: &Slot) {
        if self.by_mac.get(&prev.mac) == Some(&ip) {
            self.by_mac.remove(&prev.mac);
        }
        self.expiry.remove(&(prev.expires_ms, u32::from(ip)));
    }

    /// Bound, unexpired leases.
    pub fn active(&self, now_ms: u64) -> usize {
        self.by_ip
            .values()
            .filter(|s| s.state == SlotState::Bound && s.expires_ms > now_ms)
            .count()
    }

    /// Every (address, slot), for tests and diagnostics.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, &Slot)> {
        self.by_ip.iter().map(|(ip, s)| (*ip, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }
    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, n)
    }

    #[test]
    fn allocation_order() {
        let pool: Ipv4Range = "192.0.2.10-192.0.2.12"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let res = [Reservation {
            mac: mac(9),
            ip: ip(11),
            hostname: None,
        }];
        let mut t = LeaseTable::new(Some(pool), &res);
        assert_eq!(t.pick(mac(9), None, 0), Some(ip(11)));
        assert_eq!(t.pick(mac(1), None, 0), Some(ip(10)));
        // Picking twice without setting gives the same address.
        assert_eq!(t.pick(mac(1), None, 0), Some(ip(10)));
        t.set(
            ip(10),
            Slot {
                mac: mac(1),
                state: SlotState::Bound,
                expires_ms: 100,
            },
        );
        assert_eq!(t.pick(mac(1), None, 50), Some(ip(10)));
        // The reserved .11 is skipped for others.
        assert_eq!(t.pick(mac(2), Some(ip(11)), 50), Some(ip(12)));
        t.set(
            ip(12),
            Slot {
                mac: mac(2),
                state: SlotState::Bound,
                expires_ms: 200,
            },
        );
        assert_eq!(t.pick(mac(3), None, 50), None, "exhausted");
        // After .10 expires, mac 3 reclaims it; mac 1 then finds nothing.
        assert_eq!(t.pick(mac(3), None, 150), Some(ip(10)));
        t.set(
            ip(10),
            Slot {
                mac: mac(3),
                state: SlotState::Offered,
                expires_ms: 160,
            },
        );
        assert_eq!(t.held_by(mac(1)), None);
        assert_eq!(t.pick(mac(1), None, 150), None);
        // A declined address is nobody's until its quarantine ends.
        t.set(
            ip(12),
            Slot {
                mac: mac(2),
                state: SlotState::Declined,
                expires_ms: 500,
            },
        );
        assert_eq!(t.held_by(mac(2)), None);
        assert!(!t.available(ip(12), mac(2), 400));
        assert!(t.available(ip(12), mac(2), 500));
        // A reserved MAC may not take pool addresses.
        assert!(!t.available(ip(12), mac(9), 600));
    }
}
