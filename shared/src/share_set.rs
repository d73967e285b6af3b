//! The table behind each content's shares in the duplicate filter: open addressing with
//! linear probing over one `u64` a slot, the value itself (a share's 56-bit fingerprint and
//! its 8 work bits, `duplicates::Remembered`), 0 for an empty slot.
//!
//! It replaces a `HashSet` for two measured reasons (BENCHMARKS.md, issue 19): a lookup
//! touches one cache line instead of a control byte and a slot in two places, and a slot's
//! address is known from the fingerprint alone, so the batch hasher can prefetch it
//! (`prefetch`) while it hashes the next shares. At a core's share rate the filter is tens
//! of megabytes, and the miss was the largest cost of a share after its hash.

use std::sync::OnceLock;

/// The table grows past three quarters full, so a probe stays short.
const LOAD_NUMERATOR: usize = 3;
const LOAD_DENOMINATOR: usize = 4;
const SLOTS_MIN: usize = 16;
const EMPTY: u64 = 0;
/// Fibonacci hashing's multiplier: spreads the mixed key over the slot index bits.
const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

/// Mixed into every key before it picks a slot: a miner that grinds hashes to aim many
/// shares at one run of slots (long probes for everyone on the core) does not know it.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(rand::random)
}

/// The fingerprint part of a stored value, which equality and placement use.
fn key(value: u64) -> u64 {
    value >> 8
}

/// A value as stored: a fingerprint of 0 (one share in 2^56) is kept as 1, so a slot of 0
/// always means empty. Such a share and one of fingerprint 1 count as the same, the odds
/// every pair of shares already has (`Remembered`): at worst a share refused as a
/// duplicate, never one let through twice.
fn stored(value: u64) -> u64 {
    if key(value) == 0 {
        value | 1 << 8
    } else {
        value
    }
}

/// A slot of the table being left (`ShareSet::leaving`) whose value was removed before it
/// moved over: not empty, so the runs through it stay whole for the values after it, and
/// of fingerprint 0, which no stored value has (`stored`), so no lookup stops at it.
const LEFT: u64 = 1;
/// Slots of the table being left that move over with each insert. A table grows at three
/// quarters full into one of twice the slots or more, so it is left after at most a
/// quarter of its slot count in inserts; by then it held at most its own slot count of
/// values, against the new table's room for one and a half times that. The new table so
/// never fills before the old one is empty, and no insert ever pays for a whole table.
const SLOTS_MOVED_PER_INSERT: usize = 4;

/// How far past a lookup's home slot `ShareSet::prefetch` asks for a second slot: one
/// 64-byte cache line of `u64` slots, so the line after the home's.
const PREFETCH_SLOTS_AHEAD: usize = 64 / std::mem::size_of::<u64>();

/// Where a fingerprint's value is held.
enum Place {
    Current(usize),
    Leaving(usize),
}

/// The slot of `key`'s home in `slots` (a power of two long).
fn home_in(slots: &[u64], key: u64) -> usize {
    let bits = slots.len().trailing_zeros();
    ((key ^ seed()).wrapping_mul(SPREAD) >> (64 - bits)) as usize
}

/// `Ok(slot)` holding `key`, or `Err(slot)`: the empty slot where it would go. `slots`
/// must not be empty.
fn find_in(slots: &[u64], key: u64) -> Result<usize, usize> {
    let mask = slots.len() - 1;
    let mut slot = home_in(slots, key);
    loop {
        match slots[slot] {
            EMPTY => return Err(slot),
            value if self::key(value) == key => return Ok(slot),
            _ => slot = (slot + 1) & mask,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct ShareSet {
    /// Empty, or a power of two at least `SLOTS_MIN` long.
    slots: Box<[u64]>,
    /// Values held in both tables.
    len: usize,
    /// While the table grows: the table before, whose slots from `moved` on still hold
    /// their values until they move over (`SLOTS_MOVED_PER_INSERT` at each insert), so a
    /// growth costs no share more than a few slots: moving a whole table of hundreds of
    /// thousands of shares at once held its core for 6 to 16 ms (BENCHMARKS.md, issue 19).
    /// Empty otherwise. Invariant: a fingerprint is held in `slots` or in
    /// `leaving[moved..]`, never both; one found in `leaving[..moved]` alone was removed
    /// after it moved.
    leaving: Box<[u64]>,
    moved: usize,
}

impl ShareSet {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many values the table holds before it grows.
    pub fn capacity(&self) -> usize {
        self.slots.len() / LOAD_DENOMINATOR * LOAD_NUMERATOR
    }

    #[cfg(test)]
    fn home(&self, key: u64) -> usize {
        home_in(&self.slots, key)
    }

    fn locate(&self, key: u64) -> Option<Place> {
        if !self.slots.is_empty() {
            if let Ok(slot) = find_in(&self.slots, key) {
                return Some(Place::Current(slot));
            }
        }
        if !self.leaving.is_empty() {
            if let Ok(slot) = find_in(&self.leaving, key) {
                if slot >= self.moved {
                    return Some(Place::Leaving(slot));
                }
            }
        }
        None
    }

    /// Whether a value of the same fingerprint is held.
    pub fn contains(&self, value: u64) -> bool {
        self.locate(key(stored(value))).is_some()
    }

    /// Adds `value`; `false` (and nothing changed) if one of its fingerprint is held.
    pub fn insert(&mut self, value: u64) -> bool {
        let value = stored(value);
        let key = key(value);
        if self.leaving.is_empty() && self.len < self.capacity() {
            // Neither growing nor full: one lookup.
            return match find_in(&self.slots, key) {
                Ok(_) => false,
                Err(slot) => {
                    self.slots[slot] = value;
                    self.len += 1;
                    true
                }
            };
        }
        if self.locate(key).is_some() {
            return false;
        }
        if self.len >= self.capacity() {
            // While growing this cannot happen (`SLOTS_MOVED_PER_INSERT`); if it did, the
            // old table would be finished first, at once: slower, never wrong.
            debug_assert!(
                self.leaving.is_empty(),
                "the new table filled while growing"
            );
            self.finish_moving();
            self.start_growing();
        }
        match find_in(&self.slots, key) {
            Err(slot) => self.slots[slot] = value,
            Ok(_) => unreachable!("a fingerprint not held was found"),
        }
        self.len += 1;
        self.move_some(SLOTS_MOVED_PER_INSERT);
        true
    }

    /// Starts moving into a table of twice the room (or more); the values go over a few
    /// at a time from now on.
    fn start_growing(&mut self) {
        let slots = vec![EMPTY; Self::slots_for((self.len + 1).max(self.len * 2))];
        let before = std::mem::replace(&mut self.slots, slots.into_boxed_slice());
        if self.len > 0 {
            self.leaving = before;
            self.moved = 0;
        }
    }

    /// Moves the next `count` slots of the table being left, and lets it go once all have.
    fn move_some(&mut self, count: usize) {
        if self.leaving.is_empty() {
            return;
        }
        let end = self.moved.saturating_add(count).min(self.leaving.len());
        for index in self.moved..end {
            let value = self.leaving[index];
            if value != EMPTY && value != LEFT {
                match find_in(&self.slots, key(value)) {
                    Err(slot) => self.slots[slot] = value,
                    Ok(_) => unreachable!("a value is held in one table only"),
                }
            }
        }
        self.moved = end;
        if end == self.leaving.len() {
            self.leaving = Box::default();
            self.moved = 0;
        }
    }

    fn finish_moving(&mut self) {
        self.move_some(usize::MAX);
    }

    /// Moves up to `slots` slots of a growth under way and returns how many it moved: for
    /// a table that takes no more inserts (its job superseded, its miners gone), whose
    /// growth would otherwise hold both tables until the content is dropped.
    pub fn advance_growth(&mut self, slots: usize) -> usize {
        let before = self.moved;
        let leaving = self.leaving.len();
        self.move_some(slots);
        if leaving == 0 {
            0
        } else if self.leaving.is_empty() {
            leaving - before
        } else {
            self.moved - before
        }
    }

    /// Replaces the held value of `value`'s fingerprint (its work bits change), if any.
    pub fn replace(&mut self, value: u64) {
        match self.locate(key(stored(value))) {
            Some(Place::Current(slot)) => self.slots[slot] = stored(value),
            Some(Place::Leaving(slot)) => self.leaving[slot] = stored(value),
            None => {}
        }
    }

    /// Removes the value of `value`'s fingerprint; `false` if none was held.
    pub fn remove(&mut self, value: u64) -> bool {
        match self.locate(key(stored(value))) {
            Some(Place::Current(slot)) => self.remove_at(slot),
            Some(Place::Leaving(slot)) => self.leaving[slot] = LEFT,
            None => return false,
        }
        self.len -= 1;
        true
    }

    /// Empties `gap`. The values after it in its run move back into it, so no probe ever
    /// stops short of a value it should find (and no slot is left as a tombstone). Values
    /// only move back towards `gap` along their run, never before it.
    fn remove_at(&mut self, mut gap: usize) {
        let mask = self.slots.len() - 1;
        self.slots[gap] = EMPTY;
        let mut slot = gap;
        loop {
            slot = (slot + 1) & mask;
            let moved = self.slots[slot];
            if moved == EMPTY {
                return;
            }
            let home = home_in(&self.slots, key(moved));
            // The value at `slot` may fill the gap if the gap lies on its way from its home.
            if gap.wrapping_sub(home) & mask < slot.wrapping_sub(home) & mask {
                self.slots[gap] = moved;
                self.slots[slot] = EMPTY;
                gap = slot;
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let leaving = self.leaving.get(self.moved..).unwrap_or_default();
        self.slots
            .iter()
            .chain(leaving)
            .copied()
            .filter(|value| *value != EMPTY && *value != LEFT)
    }

    /// Keeps the values `keep` says to, in place (no second table at the bound's size).
    /// Values not yet seen only move back to the slot being looked at or beyond it, so none
    /// is skipped; one already seen may be seen again (a run wrapping round the end brings
    /// values from the start of the table back to its end), so `keep` must answer the
    /// same each time. A growth under way is finished first.
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.finish_moving();
        let mut slot = 0;
        while slot < self.slots.len() {
            let value = self.slots[slot];
            if value != EMPTY && !keep(value) {
                // A later value of the run may now sit here: look at this slot again.
                self.remove_at(slot);
                self.len -= 1;
            } else {
                slot += 1;
            }
        }
    }

    /// Gives back slots beyond what the values held need (finishing a growth under way).
    pub fn shrink_to_fit(&mut self) {
        self.finish_moving();
        if Self::slots_for(self.len) < self.slots.len() {
            self.rebuild(self.len);
        }
    }

    fn slots_for(values: usize) -> usize {
        if values == 0 {
            return 0;
        }
        (values * LOAD_DENOMINATOR)
            .div_ceil(LOAD_NUMERATOR)
            .next_power_of_two()
            .max(SLOTS_MIN)
    }

    /// Moves every value into a table with room for `values`, at once (only to shrink,
    /// which the filter does when forgetting at its bound).
    fn rebuild(&mut self, values: usize) {
        debug_assert!(self.leaving.is_empty());
        let old = std::mem::replace(
            &mut self.slots,
            vec![EMPTY; Self::slots_for(values.max(self.len))].into_boxed_slice(),
        );
        for value in old.iter().copied().filter(|value| *value != EMPTY) {
            match find_in(&self.slots, key(value)) {
                Err(slot) => self.slots[slot] = value,
                Ok(_) => unreachable!("a table never holds a fingerprint twice"),
            }
        }
    }

    /// Asks the CPU to fetch the slots where `value`'s lookup starts, so a `contains` or
    /// `insert` soon after finds them in cache: the home slot's cache line and the next
    /// (`PREFETCH_SLOTS_AHEAD`). A probe often runs past the home line: up to three
    /// quarters full, an insert's probe averages several slots, and a home near the end of
    /// its line crosses into the next; the profile showed the first slot found in cache
    /// and the wait moved to the next line (BENCHMARKS.md, issue 19). Changes nothing.
    pub fn prefetch(&self, value: u64) {
        let key = key(stored(value));
        for table in [&self.slots, &self.leaving] {
            if table.is_empty() {
                continue;
            }
            let home = home_in(table, key);
            let next_line = (home + PREFETCH_SLOTS_AHEAD) & (table.len() - 1);
            for slot in [&table[home], &table[next_line]] {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: a prefetch reads nothing architecturally and cannot fault; the
                // address is a slot of this table anyway.
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                    _mm_prefetch::<_MM_HINT_T0>((slot as *const u64).cast());
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = slot;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    /// The table's values, all of them, are the model's.
    fn assert_holds_the_model(table: &ShareSet, model: &HashMap<u64, u64>, when: &str) {
        let mut held: Vec<u64> = table.iter().collect();
        let mut expected: Vec<u64> = model.values().copied().collect();
        held.sort_unstable();
        expected.sort_unstable();
        assert_eq!(held, expected, "{when}");
    }

    /// A seeded run of inserts, removes, replaces and retains against a `HashMap` of
    /// fingerprint to value: the table answers every lookup as the map does, whatever the
    /// order, and through its growths and rebuilds. Fingerprints come from a small range so
    /// that runs collide and removals move values back.
    #[test]
    fn the_table_answers_as_a_map_does() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        let mut table = ShareSet::default();
        let mut model: HashMap<u64, u64> = HashMap::new();
        for step in 0..200_000u32 {
            let print = rng.gen_range(0..3_000u64);
            let value = print << 8 | rng.gen_range(0..=255u64);
            match rng.gen_range(0..10) {
                0..=4 => {
                    let fresh = !model.contains_key(&key(stored(value)));
                    assert_eq!(table.insert(value), fresh, "step {step}");
                    model.entry(key(stored(value))).or_insert(stored(value));
                }
                5..=6 => {
                    let held = model.remove(&key(stored(value))).is_some();
                    assert_eq!(table.remove(value), held, "step {step}");
                }
                7 => {
                    table.replace(value);
                    if let Some(held) = model.get_mut(&key(stored(value))) {
                        *held = stored(value);
                    }
                }
                8 if step % 97 == 0 => {
                    let bits = rng.gen_range(0..=255u64);
                    table.retain(|value| value & 0xff >= bits);
                    model.retain(|_, value| *value & 0xff >= bits);
                    table.shrink_to_fit();
                }
                _ => assert_eq!(
                    table.contains(value),
                    model.contains_key(&key(stored(value))),
                    "step {step}"
                ),
            }
            assert_eq!(table.len(), model.len());
        }
        assert_holds_the_model(&table, &model, "the end");
    }

    /// The same against the model while the table keeps growing: fingerprints from a range
    /// that widens with the steps, so most steps fall while a growth is under way, with
    /// removals and replacements of values not yet moved and values moved already. No
    /// retain here (it finishes a growth at once).
    #[test]
    fn the_table_answers_as_a_map_does_while_it_grows() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1919);
        let mut table = ShareSet::default();
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut steps_while_growing = 0;
        for step in 0..300_000u64 {
            let print = rng.gen_range(0..step / 2 + 64);
            let value = print << 8 | rng.gen_range(0..=255u64);
            let growing_before = !table.leaving.is_empty();
            let moved_before = table.moved;
            match rng.gen_range(0..10) {
                0..=5 => {
                    let fresh = !model.contains_key(&key(stored(value)));
                    assert_eq!(table.insert(value), fresh, "step {step}");
                    model.entry(key(stored(value))).or_insert(stored(value));
                    if growing_before && !table.leaving.is_empty() {
                        assert!(table.moved - moved_before <= SLOTS_MOVED_PER_INSERT);
                    }
                }
                6 => {
                    let held = model.remove(&key(stored(value))).is_some();
                    assert_eq!(table.remove(value), held, "step {step}");
                }
                7 => {
                    table.replace(value);
                    if let Some(held) = model.get_mut(&key(stored(value))) {
                        *held = stored(value);
                    }
                }
                _ => assert_eq!(
                    table.contains(value),
                    model.contains_key(&key(stored(value))),
                    "step {step}"
                ),
            }
            steps_while_growing += usize::from(!table.leaving.is_empty());
            assert_eq!(table.len(), model.len());
            if step % 10_007 == 0 {
                assert_holds_the_model(&table, &model, &format!("step {step}"));
            }
        }
        assert!(
            steps_while_growing > 100_000,
            "only {steps_while_growing} steps fell in a growth"
        );
        table.shrink_to_fit();
        assert!(table.leaving.is_empty());
        assert_holds_the_model(&table, &model, "the end");
    }

    /// A growth at its edges: the value that finds the table full starts it and is held at
    /// once; a value removed before it moved is neither found nor moved, and may be
    /// inserted again; a value replaced before it moved moves with its new work; the last
    /// insert of the growth lets the old table go.
    #[test]
    fn a_growth_moves_every_value_once_and_lets_the_old_table_go() {
        let mut table = ShareSet::default();
        let full = (SLOTS_MIN * 64) / LOAD_DENOMINATOR * LOAD_NUMERATOR;
        for print in 1..=full as u64 {
            assert!(table.insert(print << 8));
        }
        while table.slots.len() < SLOTS_MIN * 64 {
            table.finish_moving();
            let next = table.len() as u64 + 1;
            assert!(table.insert(next << 8));
        }
        let full = table.len();
        assert_eq!(full, table.capacity());
        assert!(table.leaving.is_empty());
        let old_slots = table.slots.len();
        assert!(table.insert((full as u64 + 1) << 8));
        assert_eq!(table.slots.len(), old_slots * 2);
        assert_eq!(table.leaving.len(), old_slots);
        assert_eq!(table.moved, SLOTS_MOVED_PER_INSERT);
        // Values still waiting in the old table.
        let waiting: Vec<u64> = table.leaving[table.moved..]
            .iter()
            .copied()
            .filter(|value| *value != EMPTY)
            .take(3)
            .collect();
        assert!(table.remove(waiting[0]));
        assert!(!table.contains(waiting[0]));
        assert!(!table.remove(waiting[0]));
        table.replace(waiting[1] | 0x7f);
        assert!(!table.insert(waiting[2]), "a waiting value is held");
        let before = table.len();
        assert!(table.insert(waiting[0]), "a removed value comes back");
        assert_eq!(table.len(), before + 1);
        let mut inserts = 0;
        while !table.leaving.is_empty() {
            let next = (1 << 40) + inserts;
            assert!(table.insert(next << 8));
            inserts += 1;
        }
        assert!(inserts as usize <= old_slots / SLOTS_MOVED_PER_INSERT);
        let held: Vec<u64> = table.iter().collect();
        assert_eq!(held.len(), table.len());
        assert_eq!(
            held.iter()
                .filter(|value| key(**value) == key(waiting[0]))
                .count(),
            1
        );
        assert!(held.contains(&(waiting[1] | 0x7f)));
        assert!(held.contains(&waiting[2]));
    }

    /// A growth that gets no more inserts is finished by `advance_growth`, a bounded
    /// number of slots at a time, and every value is still found afterwards.
    #[test]
    fn a_growth_without_inserts_is_moved_on_in_bounded_steps() {
        let mut table = ShareSet::default();
        let mut print = 1u64;
        while table.leaving.is_empty() || table.leaving.len() < 4096 {
            table.finish_moving();
            assert!(table.insert(print << 8));
            print += 1;
        }
        let leaving = table.leaving.len();
        let mut steps = 0;
        let mut moved = table.moved;
        while !table.leaving.is_empty() {
            let step = table.advance_growth(1000);
            assert!(step <= 1000);
            moved += step;
            steps += 1;
        }
        assert_eq!(moved, leaving);
        assert_eq!(steps, (leaving - SLOTS_MOVED_PER_INSERT).div_ceil(1000));
        assert_eq!(table.advance_growth(1000), 0, "nothing under way");
        for held in 1..print {
            assert!(table.contains(held << 8), "{held}");
        }
        assert_eq!(table.len(), print as usize - 1);
    }

    /// A run that wraps round the end of the table: removing from it, one value or in a
    /// `retain`, leaves every other value found, and `retain` judges each value it keeps.
    #[test]
    fn a_run_wrapping_round_the_end_stays_whole() {
        let mut table = ShareSet::default();
        assert!(table.insert(1 << 8));
        let last = table.slots.len() - 1;
        // Fingerprints whose home is the last slot: their run goes on at slot 0.
        let wrapping: Vec<u64> = (2..100_000u64)
            .filter(|print| table.home(*print) == last)
            .take(4)
            .map(|print| print << 8)
            .collect();
        assert_eq!(wrapping.len(), 4);
        for value in &wrapping {
            assert!(table.insert(*value));
        }
        assert_ne!(table.slots[0], EMPTY, "the run wrapped");
        assert!(table.remove(wrapping[0]));
        for value in &wrapping[1..] {
            assert!(table.contains(*value));
        }
        let mut judged = std::collections::HashSet::new();
        table.retain(|value| {
            judged.insert(value);
            value != wrapping[1]
        });
        assert!(!table.contains(wrapping[1]));
        for value in wrapping[2..].iter().chain([&(1 << 8)]) {
            assert!(table.contains(*value) && judged.contains(value));
        }
        assert_eq!(table.len(), 3);
    }

    /// The fingerprint 0 is kept (as 1), so it is never mistaken for an empty slot: held
    /// once, refused twice, and removed.
    #[test]
    fn a_zero_fingerprint_is_held() {
        let mut table = ShareSet::default();
        assert!(table.insert(7));
        assert!(!table.insert(9));
        assert!(table.contains(0));
        assert!(!table.insert(1 << 8 | 3), "the same as fingerprint 1");
        assert!(table.remove(0));
        assert!(table.is_empty());
    }

    /// The load limit at its edge: a table of `SLOTS_MIN` slots takes three quarters of
    /// them, and the next value doubles it.
    #[test]
    fn the_table_grows_past_three_quarters() {
        let mut table = ShareSet::default();
        let full = SLOTS_MIN / LOAD_DENOMINATOR * LOAD_NUMERATOR;
        for print in 1..=full as u64 {
            assert!(table.insert(print << 8));
        }
        assert_eq!(table.slots.len(), SLOTS_MIN);
        assert!(table.insert((full as u64 + 1) << 8));
        assert_eq!(table.slots.len(), SLOTS_MIN * 2);
        table.retain(|_| false);
        table.shrink_to_fit();
        assert_eq!((table.len(), table.slots.len()), (0, 0));
    }
}
