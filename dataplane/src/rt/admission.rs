//! Who may hold a TCP connection, and for how long before it must prove itself: the cap on
//! connections per peer address, and the deadlines on a connection's login and on a line
//! (or frame) it has started and not finished. These keep connection floods and slowloris
//! peers from holding descriptors and memory for the 900 s idle timeout.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::rc::Weak;
use std::sync::{Arc, Mutex};

use otedama_shared::bans::AddressKey;

use crate::net::wire::Wire;

/// Seconds a Stratum connection has to log in (V1: subscribe and authorize; V2: the Noise
/// handshake, SetupConnection and a first channel). Real miners do it in well under a
/// second; a socket that has not by then is closed, whatever it is still sending.
pub const STRATUM_LOGIN_DEADLINE_S: u64 = 10;
/// Seconds a started line (V1) or frame (V2) may stay unfinished. A 4 KiB line arrives in
/// one or two segments; a peer trickling bytes to keep a socket open is closed.
pub const STRATUM_PARTIAL_LINE_DEADLINE_S: u64 = 10;

/// Connections per peer address across this process's cores, capped at
/// `connections_per_address_max` (the operator's `connections_per_ip_max` shared between
/// the host's data-plane processes). Touched once per accept and once per close, under a
/// mutex: never on the share path.
///
/// Invariant: the count of a key is the number of live `AddressSlot`s for it, and never
/// exceeds the cap; a key with no slot has no entry, so the map holds only live addresses.
pub struct AddressCounts {
    counts: Mutex<HashMap<AddressKey, u32>>,
    connections_per_address_max: u32,
}

impl AddressCounts {
    pub fn new(connections_per_address_max: u32) -> Arc<Self> {
        Arc::new(AddressCounts {
            counts: Mutex::new(HashMap::new()),
            connections_per_address_max,
        })
    }

    /// A place for one more connection from `ip`, or `None` at the cap.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = AddressKey::of(ip);
        let mut counts = self.counts.lock().expect("address counts");
        let count = counts.entry(key).or_insert(0);
        if *count >= self.connections_per_address_max {
            if *count == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.clone(),
            key,
        })
    }

    /// Live connections from `ip`'s address key.
    pub fn count(&self, ip: IpAddr) -> u32 {
        let counts = self.counts.lock().expect("address counts");
        counts.get(&AddressKey::of(ip)).copied().unwrap_or(0)
    }
}

/// One admitted connection's place; given back when dropped.
pub struct AddressSlot {
    counts: Arc<AddressCounts>,
    key: AddressKey,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().expect("address counts");
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// What a connection must have done by its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    Login,
    PartialLine,
}

/// One core's pending deadlines, kept in due order per kind (almost every entry is due
/// one fixed length from now and goes at the back; one due earlier is put in its place).
/// Entries hold the wire weakly: a closed connection costs nothing until its entry comes
/// due. A wire has at most one entry of each kind, so the queues never hold more than two
/// entries per connection.
#[derive(Default)]
pub struct Deadlines {
    login: VecDeque<(u64, Weak<Wire>)>,
    partial_line: VecDeque<(u64, Weak<Wire>)>,
}

impl Deadlines {
    pub fn push(&mut self, kind: Deadline, due_s: u64, wire: Weak<Wire>) {
        let queue = match kind {
            Deadline::Login => &mut self.login,
            Deadline::PartialLine => &mut self.partial_line,
        };
        // The clock may have stepped, or the deadline began earlier than now.
        let place = queue.partition_point(|(queued_s, _)| *queued_s <= due_s);
        queue.insert(place, (due_s, wire));
    }

    /// Takes every entry due at `now_s`.
    pub fn take_due(&mut self, now_s: u64) -> Vec<(Deadline, Weak<Wire>)> {
        let mut due = Vec::new();
        for (kind, queue) in [
            (Deadline::Login, &mut self.login),
            (Deadline::PartialLine, &mut self.partial_line),
        ] {
            while queue.front().is_some_and(|(due_s, _)| *due_s <= now_s) {
                let (_, wire) = queue.pop_front().expect("front exists");
                due.push((kind, wire));
            }
        }
        due
    }

    pub fn len(&self) -> usize {
        self.login.len() + self.partial_line.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_per_address_and_places_come_back() {
        let counts = AddressCounts::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = counts.admit(a).unwrap();
        let second = counts.admit(a).unwrap();
        assert!(counts.admit(a).is_none(), "the third from one address");
        let other = counts.admit(b).unwrap();
        drop(first);
        let third = counts.admit(a).unwrap();
        assert_eq!(counts.count(a), 2);
        drop((second, third, other));
        assert_eq!(counts.count(a), 0);
        assert!(
            counts.counts.lock().unwrap().is_empty(),
            "no entry for gone addresses"
        );
        // A cap of zero admits no one and keeps no entry.
        let closed = AddressCounts::new(0);
        assert!(closed.admit(a).is_none());
        assert!(closed.counts.lock().unwrap().is_empty());
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let counts = AddressCounts::new(1);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let next_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _held = counts.admit(one).unwrap();
        assert!(counts.admit(same_64).is_none());
        let _other = counts.admit(next_64).unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let _v4 = counts.admit(v4).unwrap();
        assert!(counts.admit(mapped).is_none());
    }

    #[test]
    fn deadlines_come_due_in_order_and_only_when_due() {
        let mut deadlines = Deadlines::default();
        deadlines.push(Deadline::Login, 10, Weak::new());
        deadlines.push(Deadline::Login, 11, Weak::new());
        deadlines.push(Deadline::PartialLine, 10, Weak::new());
        // One due earlier than the queue's back is still taken in time.
        deadlines.push(Deadline::Login, 5, Weak::new());
        assert_eq!(deadlines.take_due(5).len(), 1);
        assert!(deadlines.take_due(9).is_empty());
        let due: Vec<Deadline> = deadlines.take_due(10).into_iter().map(|(k, _)| k).collect();
        assert_eq!(due, vec![Deadline::Login, Deadline::PartialLine]);
        assert_eq!(deadlines.len(), 1);
        assert_eq!(deadlines.take_due(11).len(), 1);
        assert!(deadlines.is_empty());
    }
}
