//! Miners and networks the operator has banned. The control plane owns the list and sends
//! each new version to the data planes, which refuse a banned address at authorize, refuse
//! a banned network at accept, and close connections that a new ban covers.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::address::{canonical_address, payout_address_of};

/// Entries one list may hold (addresses and networks together): the whole list travels to
/// every data plane on each change.
pub const BANS_MAX: usize = 100_000;

/// What per-address limits count connections by: an IPv4 address, or an IPv6 /64 (one
/// subscriber's network, which a single host can fill with addresses at will).
/// IPv4-mapped IPv6 addresses count as the IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressKey {
    V4(u32),
    V6Prefix64(u64),
}

impl AddressKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => AddressKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => AddressKey::V6Prefix64((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Connections per peer address (`AddressKey`), capped at `connections_per_address_max`:
/// the Stratum front ends' `connections_per_ip_max` across a data plane's cores, and the
/// API's connections. Touched once per accept and once per close, under a mutex: never on
/// the share path. A poisoned lock is taken over (the counts stay right: no code path
/// panics between reading and writing one).
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
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
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
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
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
        let mut counts = self
            .counts
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// An IP network: an address and how many leading bits of it count. A bare address is a
/// network of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpNetwork {
    address: IpAddr,
    prefix_len: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpNetworkError {
    #[error("{0:?} is not an IP address")]
    Address(String),
    #[error("prefix length {0} is longer than the address")]
    PrefixLen(String),
}

impl IpNetwork {
    /// Whether `ip` is inside this network. IPv4-mapped IPv6 peers count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                masked(u32::from(network).into(), 32, self.prefix_len)
                    == masked(u32::from(ip).into(), 32, self.prefix_len)
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                masked(u128::from(network), 128, self.prefix_len)
                    == masked(u128::from(ip), 128, self.prefix_len)
            }
            _ => false,
        }
    }
}

/// `value` (an address of `bits` bits) with all but its first `prefix_len` bits cleared.
fn masked(value: u128, bits: u8, prefix_len: u8) -> u128 {
    if prefix_len == 0 {
        return 0;
    }
    let host_bits = u32::from(bits - prefix_len);
    value >> host_bits << host_bits
}

impl FromStr for IpNetwork {
    type Err = IpNetworkError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address_text, prefix_text) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address = IpAddr::from_str(address_text.trim())
            .map_err(|_| IpNetworkError::Address(address_text.to_string()))?
            .to_canonical();
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_text {
            None => bits,
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= bits)
                .ok_or_else(|| IpNetworkError::PrefixLen(prefix.to_string()))?,
        };
        // Stored with its host bits cleared, so equal networks compare equal.
        let address = match address {
            IpAddr::V4(v4) => {
                IpAddr::V4((masked(u32::from(v4).into(), 32, prefix_len) as u32).into())
            }
            IpAddr::V6(v6) => IpAddr::V6(masked(u128::from(v6), 128, prefix_len).into()),
        };
        Ok(IpNetwork {
            address,
            prefix_len,
        })
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl Serialize for IpNetwork {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNetwork {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The banned payout addresses and networks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanList {
    pub addresses: BTreeSet<String>,
    pub networks: BTreeSet<IpNetwork>,
}

impl BanList {
    pub fn len(&self) -> usize {
        self.addresses.len() + self.networks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the worker (`ADDRESS` or `ADDRESS.RIG`) mines for a banned address.
    pub fn bans_worker(&self, worker: &str) -> bool {
        !self.addresses.is_empty()
            && self
                .addresses
                .contains(canonical_address(payout_address_of(worker)).as_ref())
    }

    pub fn bans_ip(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|network| network.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(text: &str) -> IpNetwork {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_and_nothing_else() {
        let v4 = network("10.1.2.3/24");
        assert_eq!(v4.to_string(), "10.1.2.0/24");
        assert!(v4.contains(ip("10.1.2.255")));
        assert!(
            v4.contains(ip("::ffff:10.1.2.9")),
            "IPv4-mapped peers count as IPv4"
        );
        assert!(!v4.contains(ip("10.1.3.0")));
        let single = network("127.0.0.7");
        assert_eq!(single.to_string(), "127.0.0.7/32");
        assert!(single.contains(ip("127.0.0.7")) && !single.contains(ip("127.0.0.8")));
        assert!(network("0.0.0.0/0").contains(ip("203.0.113.1")));
        assert!(!network("0.0.0.0/0").contains(ip("2001:db8::1")));
        let v6 = network("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(network("::/0").contains(ip("2001:db8::1")));
    }

    #[test]
    fn prefix_lengths_stop_at_the_address_length() {
        assert!("10.0.0.0/32".parse::<IpNetwork>().is_ok());
        assert_eq!(
            "10.0.0.0/33".parse::<IpNetwork>(),
            Err(IpNetworkError::PrefixLen("33".into()))
        );
        assert!("::/128".parse::<IpNetwork>().is_ok());
        assert!("::/129".parse::<IpNetwork>().is_err());
        assert!("10.0.0/8".parse::<IpNetwork>().is_err());
        assert!("host.example".parse::<IpNetwork>().is_err());
    }

    #[test]
    fn a_banned_address_covers_all_its_rigs_and_round_trips() {
        let mut bans = BanList::default();
        bans.addresses.insert("addr1".into());
        bans.networks.insert(network("192.0.2.0/24"));
        assert!(bans.bans_worker("addr1") && bans.bans_worker("addr1.rig7"));
        assert!(!bans.bans_worker("addr10.rig"));
        assert!(bans.bans_ip(ip("192.0.2.77")) && !bans.bans_ip(ip("192.0.3.1")));
        let json = serde_json::to_string(&bans).unwrap();
        assert_eq!(serde_json::from_str::<BanList>(&json).unwrap(), bans);
    }

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
}
