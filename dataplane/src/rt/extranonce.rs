//! The extranonce1 values one core hands out: `partition ‖ 24-bit counter`, where the
//! partition byte is unique per process and core, and no value is handed out while a live
//! connection or channel holds it.

use std::collections::HashSet;

/// Counters one core can hand out: the 24 bits after its partition byte.
pub const EXTRANONCE1_COUNTERS: usize = 1 << 24;
const COUNTER_MASK: u32 = 0x00ff_ffff;

#[derive(Debug)]
pub struct ExtranonceAllocator {
    partition: u8,
    next: u32,
    /// Counters held by a live connection or channel.
    held: HashSet<u32>,
}

impl ExtranonceAllocator {
    /// Counts on from `start` (random at start-up, so a restarted data plane does not hand
    /// out the last run's values first).
    pub fn new(partition: u8, start: u32) -> Self {
        ExtranonceAllocator {
            partition,
            next: start & COUNTER_MASK,
            held: HashSet::new(),
        }
    }

    /// The next value no one holds; it is held until `release`.
    pub fn allocate(&mut self) -> [u8; 4] {
        // Fewer values are held than exist (a core holds far fewer than 2^24 connections
        // and channels), so the search ends.
        assert!(
            self.held.len() < EXTRANONCE1_COUNTERS,
            "every extranonce1 of a core is held"
        );
        let counter = loop {
            let counter = self.next;
            self.next = (self.next + 1) & COUNTER_MASK;
            if self.held.insert(counter) {
                break counter;
            }
        };
        let mut value = counter.to_be_bytes();
        value[0] = self.partition;
        value
    }

    /// Gives back a value `allocate` handed out; anything else is ignored.
    pub fn release(&mut self, extranonce1: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(extranonce1) else {
            return;
        };
        if bytes[0] == self.partition {
            self.held
                .remove(&(u32::from_be_bytes(bytes) & COUNTER_MASK));
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
        let mut extranonces = ExtranonceAllocator::new(7, COUNTER_MASK - 1);
        let last = extranonces.allocate();
        assert_eq!(last, [7, 0xff, 0xff, 0xfe]);
        let wrapped = extranonces.allocate();
        assert_eq!(wrapped, [7, 0xff, 0xff, 0xff]);
        let zero = extranonces.allocate();
        assert_eq!(zero, [7, 0, 0, 0]);
        extranonces.release(&wrapped);
        // Walk the counter all the way round: the two still held are skipped.
        let mut seen = 0usize;
        loop {
            let value = extranonces.allocate();
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
}
