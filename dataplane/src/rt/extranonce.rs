//! The extranonce1 values one core hands out: `prefix ‖ counter`, four bytes in all, where
//! the prefix is unique per core across the pool, and no value is handed out while a live
//! connection or channel holds it.
//!
//! The prefix is the core's partition byte (unique per process and core on a host) on a
//! single host; in cluster mode the host's slot byte comes first (`otedama_cluster::host`:
//! unique per data-plane process across the cluster while its lease holds), leaving a
//! 16-bit counter.

use std::collections::HashSet;

/// Counters a core with a one-byte prefix can hand out: the 24 bits after it.
pub const EXTRANONCE1_COUNTERS: usize = 1 << 24;
/// Longest prefix: a cluster slot and a partition byte, leaving 65,536 counters a core.
pub const EXTRANONCE1_PREFIX_BYTES_MAX: usize = 2;

#[derive(Debug)]
pub struct ExtranonceAllocator {
    /// The prefix's bytes, high first, in the top bits of every value.
    prefix: u32,
    counter_mask: u32,
    next: u32,
    /// Counters held by a live connection or channel.
    held: HashSet<u32>,
}

impl ExtranonceAllocator {
    /// Counts on from `start` (random at start-up, so a restarted data plane does not hand
    /// out the last run's values first). `prefix` is one byte, or two in cluster mode.
    pub fn new(prefix: &[u8], start: u32) -> Self {
        assert!(
            (1..=EXTRANONCE1_PREFIX_BYTES_MAX).contains(&prefix.len()),
            "an extranonce1 prefix is 1 or 2 bytes"
        );
        let counter_bits = 32 - 8 * prefix.len() as u32;
        let mut value = [0u8; 4];
        value[..prefix.len()].copy_from_slice(prefix);
        let counter_mask = (1u32 << counter_bits) - 1;
        ExtranonceAllocator {
            prefix: u32::from_be_bytes(value),
            counter_mask,
            next: start & counter_mask,
            held: HashSet::new(),
        }
    }

    /// How many values this core can hand out at once.
    pub fn counters(&self) -> usize {
        self.counter_mask as usize + 1
    }

    /// The next value no one holds; it is held until `release`. `None` when every value is
    /// held (a peer that opens connections or channels without end reaches it; the
    /// connection or channel is then refused).
    pub fn allocate(&mut self) -> Option<[u8; 4]> {
        // Fewer values are held than exist, so the search below ends.
        if self.held.len() >= self.counters() {
            return None;
        }
        let counter = loop {
            let counter = self.next;
            self.next = (self.next + 1) & self.counter_mask;
            if self.held.insert(counter) {
                break counter;
            }
        };
        Some((self.prefix | counter).to_be_bytes())
    }

    /// Gives back a value `allocate` handed out; anything else is ignored.
    pub fn release(&mut self, extranonce1: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(extranonce1) else {
            return;
        };
        let value = u32::from_be_bytes(bytes);
        if value & !self.counter_mask == self.prefix {
            self.held.remove(&(value & self.counter_mask));
        }
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15, point 6: once the counter wraps, a value a live miner holds is skipped,
    /// and a released one is handed out again.
    #[test]
    fn a_held_value_is_never_handed_out_again_even_after_the_counter_wraps() {
        let mut extranonces = ExtranonceAllocator::new(&[7], (1 << 24) - 2);
        let last = extranonces.allocate().unwrap();
        assert_eq!(last, [7, 0xff, 0xff, 0xfe]);
        let wrapped = extranonces.allocate().unwrap();
        assert_eq!(wrapped, [7, 0xff, 0xff, 0xff]);
        let zero = extranonces.allocate().unwrap();
        assert_eq!(zero, [7, 0, 0, 0]);
        extranonces.release(&wrapped);
        // Walk the counter all the way round: the two still held are skipped.
        let mut seen = 0usize;
        loop {
            let value = extranonces.allocate().unwrap();
            assert_ne!(value, last);
            assert_ne!(value, zero);
            seen += 1;
            if value == wrapped {
                break;
            }
            extranonces.release(&value);
        }
        assert_eq!(seen, EXTRANONCE1_COUNTERS - 2);
        assert_eq!(extranonces.held(), 3);
        // Another core's value, or a malformed one, is not ours to release.
        extranonces.release(&[8, 0, 0, 0]);
        extranonces.release(&[7, 0, 0]);
        assert_eq!(extranonces.held(), 3);
    }

    /// Cluster mode: the slot byte, then the partition byte, then 16 bits that wrap
    /// without touching either.
    #[test]
    fn a_two_byte_prefix_leaves_sixteen_bits_and_keeps_its_bytes() {
        let mut extranonces = ExtranonceAllocator::new(&[9, 7], 0xfffe);
        assert_eq!(extranonces.counters(), 1 << 16);
        assert_eq!(extranonces.allocate().unwrap(), [9, 7, 0xff, 0xfe]);
        assert_eq!(extranonces.allocate().unwrap(), [9, 7, 0xff, 0xff]);
        assert_eq!(extranonces.allocate().unwrap(), [9, 7, 0, 0]);
        // Same partition under another slot, or another partition: not ours.
        extranonces.release(&[8, 7, 0, 0]);
        extranonces.release(&[9, 6, 0, 0]);
        assert_eq!(extranonces.held(), 3);
        extranonces.release(&[9, 7, 0, 0]);
        assert_eq!(extranonces.held(), 2);
        // Every counter held: refused, never a value handed out twice.
        for _ in 0..(1 << 16) - 2 {
            extranonces.allocate().unwrap();
        }
        assert_eq!(extranonces.held(), 1 << 16);
        assert_eq!(extranonces.allocate(), None);
        extranonces.release(&[9, 7, 0x12, 0x34]);
        assert_eq!(extranonces.allocate(), Some([9, 7, 0x12, 0x34]));
    }
}
