//! The duplicate filter: which shares each core has taken for each live job content, so a
//! share is credited once, and, when one content fills it, which shares it keeps: those
//! worth the most work, so a flood of cheap shares costs its sender, not the honest miners
//! beside it.

use std::collections::{HashMap, HashSet};

use otedama_kernels::Algorithm;

use crate::share_set::ShareSet;

/// Hashes a share's fingerprint as itself: it is already SHA256d output, so SipHash over it
/// again (the std default, 3 % of a loaded core in a profile) buys nothing. Miners cannot
/// aim those bytes without doing the work of finding them.
#[derive(Clone, Copy, Debug, Default)]
pub struct FingerprintHashBuilder;

impl std::hash::BuildHasher for FingerprintHashBuilder {
    type Hasher = FingerprintHasher;
    fn build_hasher(&self) -> FingerprintHasher {
        FingerprintHasher(0)
    }
}

/// See `FingerprintHashBuilder`.
#[derive(Debug)]
pub struct FingerprintHasher(u64);

impl std::hash::Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // A `u64` arrives through `write_u64`; fold anything else in 8-byte words.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// Shares one core's duplicate filter remembers at most, over all live jobs. Each is one
/// `u64` slot of a table (`ShareSet`: its fingerprint and work) that is at most three
/// quarters full and at least three eighths after it grows, so the filter takes 64 MiB per
/// core in one table at the bound (96 MiB while it grows to that: a minute at most, see
/// `GROWTH_SLOTS_MOVED_PER_TICK`), about
/// 86 MB spread over many. At the bound the work floor rises
/// (`DuplicateFilter::forget_least_work`): the shares of the least work are forgotten,
/// those of jobs no longer live first, at least
/// `DUPLICATE_FILTER_EVICTED_FRACTION_DIVISOR`th of the bound at a time, and shares of a
/// job under its floor are refused from then on (`Claim::BelowFloor`). Memory goes to the
/// shares worth the most work, which the hash proves: a flood of cheap shares evicts
/// itself, raising the floor above an honest miner's shares takes filling the filter with
/// shares of at least their work, and no job goes stale for the bound's sake (a block
/// found on an older job of the same tip still counts). At 3,000 shares/s on one core the
/// bound is 23 minutes of shares.
pub const DUPLICATE_FILTER_SHARES_PER_CORE_MAX: usize = 1 << 22;

/// Block-finding shares one core remembers apart from the bound (`DuplicateFilter` lets a
/// block through under a floor, or when nothing is left to forget). Blocks are rare on a
/// real chain; on regtest, where every share is one, past this the filter judges a block
/// as any share (and a job that had a block it could not remember lets none of its blocks
/// under its floor).
pub const BLOCK_SHARES_REMEMBERED_PER_CORE_MAX: usize = 1024;

/// Slots of share tables' growths a core moves on each second besides those its inserts
/// move (`DuplicateFilter::advance_growths`): a table whose job was superseded while it grew
/// gets few inserts or none, and would hold its old and new tables until its content is
/// dropped. A growth at the bound's size (4,194,304 slots left) so ends within 64 s, and
/// each second's step costs about a millisecond of the core.
pub const GROWTH_SLOTS_MOVED_PER_TICK: usize = 1 << 16;

/// A pass that raises a content's floor frees at least
/// `shares_max / DUPLICATE_FILTER_EVICTED_FRACTION_DIVISOR` shares, so its cost (one pass
/// over the content's shares) is paid once per that many shares taken, not once per share.
pub const DUPLICATE_FILTER_EVICTED_FRACTION_DIVISOR: usize = 16;

/// The work a proof-of-work value proves, in bits: its leading zero bits as a 256-bit
/// little-endian number (each bit doubles the hashes it took), at most `WORK_BITS_MAX`.
/// A copy of a share has the same header, so the same value: the floor judges copies as
/// it judged the original.
pub fn work_bits(pow: &[u8; 32]) -> u8 {
    let mut bits = 0u32;
    for &byte in pow.iter().rev() {
        if byte != 0 {
            bits += byte.leading_zeros();
            break;
        }
        bits += 8;
    }
    bits.min(u32::from(WORK_BITS_MAX)) as u8
}

/// The most work bits a share is recorded with; one more marks a share whose proof of
/// work is not computed yet.
pub const WORK_BITS_MAX: u8 = 254;
const WORK_BITS_PENDING: u8 = WORK_BITS_MAX + 1;

/// The filter's answer to a share arriving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// First time seen: the share may go on to its proof of work.
    Taken,
    /// The same share was taken before (or waits for its hash now).
    Duplicate,
    /// The filter is at its bound and nothing of known work is left to forget (a bound
    /// not much larger than the scrypt queue): refused.
    Full,
    /// The filter is at its bound and this share's job's floor rose above its work:
    /// refused (a forgotten share's copy included, since it has the same work).
    BelowFloor,
}

/// A remembered share: its fingerprint (the first 64 bits of its header hash) with the low
/// 8 bits replaced by its work bits, so a share costs one `u64` of table (`ShareSet`).
/// The table compares and places shares by the fingerprint's 56 bits alone: two different
/// shares share them with odds of about 2^-56 per pair (the later one is then refused as
/// a duplicate, costing its miner one share), and a lookup needs no work bits.
#[derive(Clone, Copy, Debug)]
struct Remembered(u64);

impl Remembered {
    fn new(header_hash: &[u8; 32], bits: u8) -> Remembered {
        Remembered(fingerprint(header_hash) & !0xff | u64::from(bits))
    }

    fn bits(self) -> u8 {
        self.0 as u8
    }
}

/// The shares taken for one job content.
#[derive(Debug, Default)]
struct ContentShares {
    /// Each share's fingerprint and work bits (`WORK_BITS_PENDING` until its proof of work
    /// is computed).
    shares: ShareSet,
    /// Shares of fewer work bits are refused for this content. Never lowered while the
    /// content lives: every share under it was forgotten.
    floor_bits: u8,
    /// A block of this content could not be remembered apart
    /// (`BLOCK_SHARES_REMEMBERED_PER_CORE_MAX`): its copy, once the floor rose over it,
    /// could not be told from a new block, so no block of this content passes the floor.
    block_unremembered: bool,
    /// No live job has this content now (`retire_unlisted`): its shares are the first
    /// forgotten at the bound (`forget_least_work`).
    retired: bool,
}

impl ContentShares {
    /// Nothing here tells a copy from a new share: no share, no floor, no block
    /// unremembered. Such a content may be dropped and started again with no loss.
    fn holds_nothing(&self) -> bool {
        self.shares.is_empty() && self.floor_bits == 0 && !self.block_unremembered
    }

    /// Forgets the shares of known work under `floor_bits` (all of them for
    /// `WORK_BITS_PENDING`) and raises this content's floor just over the most work it
    /// forgot, so a content that lost nothing keeps taking what it took, and a copy of a
    /// forgotten share is under the floor. Returns how many went. Shares waiting for their
    /// proof of work stay (at most the per-core scrypt queue).
    fn forget_under(&mut self, floor_bits: u8) -> usize {
        let mut forgot_bits_max = None;
        let before = self.shares.len();
        self.shares.retain(|share| {
            let share = Remembered(share);
            let kept = share.bits() == WORK_BITS_PENDING || share.bits() >= floor_bits;
            if !kept {
                forgot_bits_max = forgot_bits_max.max(Some(share.bits()));
            }
            kept
        });
        if let Some(bits) = forgot_bits_max {
            self.floor_bits = self.floor_bits.max(bits + 1);
            // Gives back table space once at most half of it is used, so a content that
            // was large once does not hold its peak: the bound counts shares, memory
            // follows capacity.
            if self.shares.len() <= self.shares.capacity() / 2 {
                self.shares.shrink_to_fit();
            }
        }
        before - self.shares.len()
    }
}

/// Remembers the shares taken, grouped by their job's content (`Job::content_key`). The
/// header commits to the job's content and the miner's fields, so equal header hashes
/// mean the same share, whatever job id it came under. Grouping by content, not by job
/// id, is what keeps a job re-sent under the same id (after a control-plane reconnect,
/// with `clean_jobs`) from forgetting the shares already taken for it. A content no live
/// job has any more is kept, with its shares and floor, until the tip changes: the same
/// template built again on the same tip (the mempool did not change) has the same
/// content, and must still refuse a copy of a share it took (one whose ntime the miner
/// rolled ahead) while taking new shares and blocks. At the bound such contents' shares
/// are forgotten first (when they hold enough for a pass), the least work first, their floors raised over them as any
/// forgotten share's (`forget_least_work`): only a template built again could use them,
/// so the live jobs' miners are not refused for the sake of old ones. Contents are kept
/// per tip:
/// their number is the templates the control plane builds on one tip, never anything a
/// miner sends.
///
/// A share is kept as its fingerprint (see `Remembered`). Equal shares always have equal
/// fingerprints, so a duplicate is never let through.
///
/// A scrypt share is claimed here when it arrives, before its proof of work is computed
/// (later, in a batch), and released if that fails: a copy sent while the first waits is
/// refused at once, and one still waiting when a new block drops the set cannot start a
/// fresh set for it. Its work is known only then, so it is judged against the floor when it
/// settles (`settle`). A SHA256d share is claimed once its header is hashed (its hash is
/// its fingerprint and its work, judged at once), which for a Stratum V1 share waiting for
/// the batch hasher is after the wait: such a share is claimed only if no new tip dropped
/// sets since it arrived (`tip_generation`), so no copy finds its first's set gone.
///
/// A share that finds a block is also remembered apart (`blocks`), so no copy of it is
/// taken again whatever happens to its content's set, and the bound never refuses it.
///
/// Each core owns one; extranonce1 values are partitioned per core, so a share can only
/// ever collide with one accepted on the same core, and no cross-core lookup is needed.
///
/// Invariant: `len() <= shares_max`, and a share is never let in unchecked: a content's
/// floor only rises while it lives, and every share forgotten is under its content's
/// floor, so each copy of one is too (`BelowFloor`).
#[derive(Debug)]
pub struct DuplicateFilter {
    /// Keyed by `Job::content_key`, itself a SHA-256 the pool computes, so hashed as a
    /// fingerprint like the shares.
    by_content: HashMap<[u8; 32], ContentShares, FingerprintHashBuilder>,
    /// The chain tip the live jobs build on (`retire_unlisted`).
    tip: Option<[u8; 32]>,
    /// How many times a new tip dropped sets (`tip_generation`).
    tip_generation: u64,
    /// A retired content may hold shares (`forget_least_work` may have work there).
    retired_hold_shares: bool,
    /// Shares that found a block, by content and fingerprint
    /// (`BLOCK_SHARES_REMEMBERED_PER_CORE_MAX`).
    blocks: HashSet<([u8; 32], u64)>,
    shares: usize,
    shares_max: usize,
    refused_full: u64,
}

impl Default for DuplicateFilter {
    fn default() -> Self {
        DuplicateFilter::with_shares_max(DUPLICATE_FILTER_SHARES_PER_CORE_MAX)
    }
}

/// The fingerprint a share is remembered by.
fn fingerprint(header_hash: &[u8; 32]) -> u64 {
    u64::from_le_bytes(header_hash[..8].try_into().expect("8 bytes"))
}

impl DuplicateFilter {
    pub fn with_shares_max(shares_max: usize) -> Self {
        DuplicateFilter {
            by_content: HashMap::default(),
            tip: None,
            tip_generation: 0,
            retired_hold_shares: false,
            blocks: HashSet::new(),
            shares: 0,
            shares_max,
            refused_full: 0,
        }
    }

    /// Raises the work floors to the lowest value that forgets at least `wanted` shares of
    /// known work, the least work first, and forgets the shares under it; returns how many
    /// went, or `None` (nothing forgotten) when there are fewer. `retired_only`: only of
    /// the contents no live job has. Shares waiting for their proof of work stay (at most
    /// the per-core scrypt queue). A floor never falls: a content already above the new
    /// value keeps its own, and one that forgot nothing keeps taking what it took.
    fn forget_least_work(&mut self, wanted: usize, retired_only: bool) -> Option<usize> {
        let in_scope = |content: &ContentShares| !retired_only || content.retired;
        let mut counts = [0usize; WORK_BITS_MAX as usize + 1];
        for content in self.by_content.values().filter(|c| in_scope(c)) {
            for share in content.shares.iter().map(Remembered) {
                if share.bits() != WORK_BITS_PENDING {
                    counts[share.bits() as usize] += 1;
                }
            }
        }
        let mut below = 0;
        let mut floor = 0;
        while floor <= WORK_BITS_MAX as usize && below < wanted {
            below += counts[floor];
            floor += 1;
        }
        if below < wanted {
            return None;
        }
        let floor = floor as u8;
        Some(
            self.by_content
                .values_mut()
                .filter(|content| in_scope(content))
                .map(|content| content.forget_under(floor))
                .sum(),
        )
    }

    /// Claims the share for its job's content as it arrives. A SHA256d share's work is
    /// its header hash's, known now; a scrypt share's waits for its proof of work
    /// (`algorithm` tells which). `is_block`: the share is known to meet the network
    /// target (a SHA256d share's hash is its proof of work): a found block is never
    /// refused for the bound's sake, only as a duplicate.
    pub fn insert(
        &mut self,
        content_key: &[u8; 32],
        algorithm: Algorithm,
        header_hash: [u8; 32],
        is_block: bool,
    ) -> Claim {
        let claim = self.claim(content_key, algorithm, header_hash);
        if !is_block {
            return claim;
        }
        match claim {
            Claim::Taken => {
                if !self.remember_block(content_key, &header_hash) {
                    self.mark_block_unremembered(content_key);
                }
                Claim::Taken
            }
            Claim::BelowFloor | Claim::Full => {
                if !self.block_unremembered(content_key)
                    && self.remember_block(content_key, &header_hash)
                {
                    // Counted as refused by `claim`; it was not.
                    self.refused_full -= 1;
                    Claim::Taken
                } else {
                    claim
                }
            }
            Claim::Duplicate => Claim::Duplicate,
        }
    }

    fn block_unremembered(&self, content_key: &[u8; 32]) -> bool {
        self.by_content
            .get(content_key)
            .is_some_and(|content| content.block_unremembered)
    }

    fn mark_block_unremembered(&mut self, content_key: &[u8; 32]) {
        if let Some(content) = self.by_content.get_mut(content_key) {
            content.block_unremembered = true;
        }
    }

    /// Remembers a block's share apart from the bound; `false` if
    /// `BLOCK_SHARES_REMEMBERED_PER_CORE_MAX` are held already.
    fn remember_block(&mut self, content_key: &[u8; 32], header_hash: &[u8; 32]) -> bool {
        if self.blocks.len() >= BLOCK_SHARES_REMEMBERED_PER_CORE_MAX {
            return false;
        }
        self.blocks.insert((*content_key, fingerprint(header_hash)));
        true
    }

    fn claim(
        &mut self,
        content_key: &[u8; 32],
        algorithm: Algorithm,
        header_hash: [u8; 32],
    ) -> Claim {
        if !self.blocks.is_empty()
            && self
                .blocks
                .contains(&(*content_key, fingerprint(&header_hash)))
        {
            return Claim::Duplicate;
        }
        if self.shares_max == 0 {
            self.refused_full += 1;
            return Claim::Full;
        }
        let bits = match algorithm {
            Algorithm::Sha256d => work_bits(&header_hash),
            Algorithm::Scrypt => WORK_BITS_PENDING,
        };
        let share = Remembered::new(&header_hash, bits);
        let below_bound = self.shares < self.shares_max;
        if let Some(content) = self.by_content.get_mut(content_key) {
            if bits < content.floor_bits {
                if content.shares.contains(share.0) {
                    return Claim::Duplicate;
                }
                self.refused_full += 1;
                return Claim::BelowFloor;
            }
            // The common case in one probe of the set: a share of a known content, with
            // room under the bound.
            if below_bound {
                if !content.shares.insert(share.0) {
                    return Claim::Duplicate;
                }
                self.shares += 1;
                return Claim::Taken;
            }
            if content.shares.contains(share.0) {
                return Claim::Duplicate;
            }
        }
        while self.shares >= self.shares_max {
            let wanted = (self.shares_max / DUPLICATE_FILTER_EVICTED_FRACTION_DIVISOR).max(1);
            // Jobs no longer live go first: only a template built again could use their
            // shares, so live jobs' miners are not refused for old jobs' sake. When they
            // hold too few for a pass, the pass goes over every job instead: forgetting
            // all of theirs would shut a template built again out of every share but its
            // best, where the least work everywhere raises each floor only that far.
            if self.retired_hold_shares {
                match self.forget_least_work(wanted, true) {
                    Some(freed) => {
                        self.shares -= freed;
                        continue;
                    }
                    None => self.retired_hold_shares = false,
                }
            }
            let Some(freed) = self.forget_least_work(wanted, false) else {
                self.refused_full += 1;
                return Claim::Full;
            };
            self.shares -= freed;
            let floor_bits = self
                .by_content
                .get(content_key)
                .map_or(0, |content| content.floor_bits);
            if bits < floor_bits {
                self.refused_full += 1;
                return Claim::BelowFloor;
            }
        }
        let content = self.by_content.entry(*content_key).or_default();
        content.shares.insert(share.0);
        self.shares += 1;
        debug_assert!(self.shares <= self.shares_max);
        Claim::Taken
    }

    /// Records the work of a claimed scrypt share whose proof of work `pow` met its
    /// target (a SHA256d share was judged when claimed). `false` if it is under its
    /// content's floor: the share is forgotten and must be refused, as its copies will be;
    /// unless it found a block (`is_block`), which is remembered apart instead.
    pub fn settle(
        &mut self,
        content_key: &[u8; 32],
        header_hash: &[u8; 32],
        pow: &[u8; 32],
        is_block: bool,
    ) -> bool {
        let bits = work_bits(pow);
        let share = Remembered::new(header_hash, bits);
        let remembered_apart = is_block
            && !self.block_unremembered(content_key)
            && self.remember_block(content_key, header_hash);
        if is_block && !remembered_apart {
            self.mark_block_unremembered(content_key);
        }
        let Some(content) = self.by_content.get_mut(content_key) else {
            // Its content was dropped while the share was hashed (a new tip): the share
            // was first, and any copy is refused as stale.
            return true;
        };
        if bits >= content.floor_bits || remembered_apart {
            if content.shares.contains(share.0) {
                content.shares.replace(share.0);
            }
            return true;
        }
        if content.shares.remove(share.0) {
            self.shares -= 1;
        }
        self.refused_full += 1;
        false
    }

    /// Forgets a share whose claim did not hold (its proof of work fell short). Only a
    /// share that was `Taken` may be given back, so this never frees another's claim.
    pub fn remove(&mut self, content_key: &[u8; 32], header_hash: &[u8; 32]) {
        if !self.blocks.is_empty() {
            self.blocks
                .remove(&(*content_key, fingerprint(header_hash)));
        }
        if let Some(content) = self.by_content.get_mut(content_key) {
            if content.shares.remove(Remembered::new(header_hash, 0).0) {
                self.shares -= 1;
            }
        }
    }

    /// Asks the CPU for the slot where a claim of this share on this content would look, so
    /// the claim soon after finds it in cache (`pow_batch::hash_batch`). Changes
    /// nothing.
    pub fn prefetch(&self, content_key: &[u8; 32], header_hash: &[u8; 32]) {
        if let Some(content) = self.by_content.get(content_key) {
            content.shares.prefetch(Remembered::new(header_hash, 0).0);
        }
    }

    /// Counts the new tips `retire_unlisted` has followed, each of which dropped the sets
    /// of every content no live job has. A share that arrived under one generation and is
    /// claimed under another may be the copy of a share whose set is gone; the session
    /// refuses it as stale instead.
    pub fn tip_generation(&self) -> u64 {
        self.tip_generation
    }

    /// Follows the live jobs in `jobs`. On a new tip every content no live job has is
    /// dropped with its blocks: its shares can only be stale. (A tip that comes back,
    /// A→B→A after a reorg or `invalidateblock`, finds its contents forgotten: the same
    /// template built again could take a copy of a share it took on the first A. Known and
    /// left: a rare event, on stale work.) On the same tip such a content is kept (see
    /// `DuplicateFilter`); one with nothing to remember is dropped.
    pub fn retire_unlisted(&mut self, jobs: &crate::job::JobBook) {
        let tip = jobs.newest().map(|job| job.template.prevhash);
        self.retire_unheld(tip, |content_key| jobs.holds_content(content_key));
    }

    /// `retire_unlisted` for any coin's jobs: `tip` is the newest live job's previous
    /// block (`None` without one), `holds` whether a live job has a content.
    pub fn retire_unheld(&mut self, tip: Option<[u8; 32]>, holds: impl Fn(&[u8; 32]) -> bool) {
        // No live job at all (before the first) counts as a new tip too.
        if tip.is_none() || tip != self.tip {
            self.tip = tip;
            self.tip_generation += 1;
            self.by_content.retain(|content_key, _| holds(content_key));
            for content in self.by_content.values_mut() {
                content.retired = false;
            }
            self.retired_hold_shares = false;
            self.blocks.retain(|(content_key, _)| holds(content_key));
        } else {
            let retired_hold_shares = &mut self.retired_hold_shares;
            self.by_content.retain(|content_key, content| {
                let live = holds(content_key);
                content.retired = !live;
                if !live && !content.shares.is_empty() {
                    *retired_hold_shares = true;
                }
                live || !content.holds_nothing()
            });
        }
        self.shares = self
            .by_content
            .values()
            .map(|content| content.shares.len())
            .sum();
    }

    /// Moves on, by at most `slots` slots in all, the growths of share tables that take
    /// no more shares (see `GROWTH_SLOTS_MOVED_PER_TICK`); returns the slots moved.
    pub fn advance_growths(&mut self, slots: usize) -> usize {
        let mut moved = 0;
        for content in self.by_content.values_mut() {
            if moved >= slots {
                break;
            }
            moved += content.shares.advance_growth(slots - moved);
        }
        moved
    }

    pub fn len(&self) -> usize {
        self.shares
    }

    pub fn is_empty(&self) -> bool {
        self.shares == 0
    }

    /// Shares refused because of the filter's bound (`Full`, `BelowFloor`, or a settle
    /// under the floor) since the last call.
    pub fn take_refused_full(&mut self) -> u64 {
        std::mem::take(&mut self.refused_full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Job;

    /// A header hash with `bits` leading zero bits (as a little-endian number) and `n` in
    /// its fingerprint.
    fn hash(n: u32, bits: u8) -> [u8; 32] {
        let mut hash = [0xffu8; 32];
        hash[1..5].copy_from_slice(&n.to_le_bytes());
        let (whole, part) = (bits as usize / 8, bits % 8);
        for byte in hash.iter_mut().rev().take(whole) {
            *byte = 0;
        }
        if whole < 32 {
            hash[31 - whole] = 0xff >> part;
        }
        hash
    }

    const SHA: Algorithm = Algorithm::Sha256d;

    #[test]
    fn work_bits_count_leading_zero_bits_of_the_number() {
        assert_eq!(work_bits(&[0xff; 32]), 0);
        assert_eq!(work_bits(&hash(1, 11)), 11);
        assert_eq!(work_bits(&hash(1, 32)), 32);
        assert_eq!(work_bits(&hash(1, 77)), 77);
        assert_eq!(work_bits(&[0; 32]), WORK_BITS_MAX);
    }

    #[test]
    fn duplicate_filter_keys_on_job_content_and_hash() {
        let mut filter = DuplicateFilter::default();
        let mut book = crate::job::JobBook::default();
        let job = std::sync::Arc::new(Job::new(crate::job::tests::template(5, true)).unwrap());
        let live = job.content_key;
        assert_eq!(filter.insert(&[1; 32], SHA, [1; 32], false), Claim::Taken);
        assert_eq!(
            filter.insert(&[1; 32], SHA, [1; 32], false),
            Claim::Duplicate
        );
        assert_eq!(filter.insert(&live, SHA, [1; 32], false), Claim::Taken);
        book.insert(job.clone());
        filter.retire_unlisted(&book);
        assert_eq!(filter.len(), 1);
        assert_eq!(filter.insert(&live, SHA, [1; 32], false), Claim::Duplicate);
        filter.remove(&live, &[1; 32]);
        assert!(filter.is_empty());
        assert_eq!(filter.insert(&live, SHA, [1; 32], false), Claim::Taken);
        // The same content under another id and a later ntime shares the set.
        let mut again = crate::job::tests::template(6, true);
        again.ntime += 60;
        assert_eq!(Job::new(again).unwrap().content_key, live);
    }

    /// Each core's filter is bounded by `DUPLICATE_FILTER_SHARES_PER_CORE_MAX`; the
    /// behaviour at a bound is tested below with a small one.
    #[test]
    fn the_core_filter_takes_its_named_bound() {
        assert_eq!(
            DuplicateFilter::default().shares_max,
            DUPLICATE_FILTER_SHARES_PER_CORE_MAX
        );
    }

    /// At the bound the cheapest shares of any live job go, older jobs stay live, and a
    /// forgotten share is never let in again unchecked.
    #[test]
    fn at_the_bound_the_cheapest_shares_of_any_job_go_and_never_come_back() {
        let mut filter = DuplicateFilter::with_shares_max(3);
        for (n, bits) in [(0, 20), (1, 30), (2, 40)] {
            assert_eq!(
                filter.insert(&[1; 32], SHA, hash(n, bits), false),
                Claim::Taken
            );
        }
        assert_eq!(filter.len(), 3);
        // A failed claim frees its place.
        filter.remove(&[1; 32], &hash(2, 40));
        assert_eq!(filter.len(), 2);
        assert_eq!(
            filter.insert(&[1; 32], SHA, hash(2, 40), false),
            Claim::Taken
        );
        // A newer job at the bound: the cheapest share anywhere goes (the older job's
        // 20-bit one), and the older job stays live above its new floor.
        assert_eq!(
            filter.insert(&[2; 32], SHA, hash(5, 35), false),
            Claim::Taken
        );
        assert_eq!(filter.len(), 3);
        assert_eq!(
            filter.insert(&[1; 32], SHA, hash(0, 20), false),
            Claim::BelowFloor
        );
        assert_eq!(
            filter.insert(&[1; 32], SHA, hash(1, 30), false),
            Claim::Duplicate
        );
        assert_eq!(filter.take_refused_full(), 1);
        assert_eq!(filter.take_refused_full(), 0);
        // No live job at all (a new tip) empties it, and a job starts with no floor.
        filter.retire_unlisted(&crate::job::JobBook::default());
        assert!(filter.is_empty());
        assert_eq!(
            filter.insert(&[3; 32], SHA, hash(0, 20), false),
            Claim::Taken
        );
    }

    /// A flood of cheap shares that fills the filter with one job content evicts itself:
    /// the honest miners' shares, of more work each, are kept and go on being taken, and
    /// none of the flood's shares, old or new, gets in again unless it proves more work
    /// than the floor.
    #[test]
    fn one_content_at_the_bound_forgets_the_cheapest_shares_not_the_honest() {
        let shares_max = 64;
        let mut filter = DuplicateFilter::with_shares_max(shares_max);
        let content = [1; 32];
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        let honest: Vec<_> = (0..6).map(|_| hash(next(), 40)).collect();
        for share in &honest {
            assert_eq!(filter.insert(&content, SHA, *share, false), Claim::Taken);
        }
        let mut flooded = Vec::new();
        while filter.len() < shares_max {
            let share = hash(next(), 11 + (flooded.len() % 3) as u8);
            assert_eq!(filter.insert(&content, SHA, share, false), Claim::Taken);
            flooded.push(share);
        }
        // At the bound, an honest share makes room by raising the floor over the cheapest.
        assert_eq!(
            filter.insert(&content, SHA, hash(next(), 40), false),
            Claim::Taken
        );
        assert!(filter.len() <= shares_max - shares_max / 16 + 1);
        for share in &honest {
            assert_eq!(
                filter.insert(&content, SHA, *share, false),
                Claim::Duplicate
            );
        }
        // The flood's forgotten shares and new shares as cheap are refused; each copy of
        // a forgotten one, whenever sent, is under the floor too.
        let forgotten: Vec<_> = flooded
            .iter()
            .filter(|share| work_bits(share) < 12)
            .collect();
        assert!(!forgotten.is_empty());
        for share in &forgotten {
            assert_eq!(
                filter.insert(&content, SHA, **share, false),
                Claim::BelowFloor
            );
        }
        assert_eq!(
            filter.insert(&content, SHA, hash(next(), 11), false),
            Claim::BelowFloor
        );
        // Kept flood shares are still duplicates; honest miners go on.
        let kept = flooded.iter().find(|share| work_bits(share) >= 12).unwrap();
        assert_eq!(filter.insert(&content, SHA, *kept, false), Claim::Duplicate);
        assert_eq!(
            filter.insert(&content, SHA, hash(next(), 40), false),
            Claim::Taken
        );
    }

    /// A scrypt share's work is known when it settles: one under the floor then is
    /// forgotten and refused, and so is its copy, claimed again and settled again.
    #[test]
    fn a_scrypt_share_is_judged_against_the_floor_when_it_settles() {
        let shares_max = 32;
        let mut filter = DuplicateFilter::with_shares_max(shares_max);
        let content = [7; 32];
        let scrypt = Algorithm::Scrypt;
        // Header hashes are only fingerprints for scrypt; the work is the pow's.
        let (pending, pending_pow) = (hash(1000, 0), hash(1, 5));
        assert_eq!(
            filter.insert(&content, scrypt, pending, false),
            Claim::Taken
        );
        for n in 0..shares_max as u32 - 1 {
            assert_eq!(
                filter.insert(&content, scrypt, hash(n, 0), false),
                Claim::Taken
            );
            assert!(filter.settle(&content, &hash(n, 0), &hash(n, 8 + (n % 4) as u8), false));
        }
        // The bound: the floor rises over the cheapest settled shares; the pending one stays.
        assert_eq!(
            filter.insert(&content, scrypt, hash(2000, 0), false),
            Claim::Taken
        );
        assert_eq!(
            filter.insert(&content, scrypt, pending, false),
            Claim::Duplicate
        );
        let before = filter.len();
        assert!(
            !filter.settle(&content, &pending, &pending_pow, false),
            "under the floor"
        );
        assert_eq!(filter.len(), before - 1);
        assert_eq!(
            filter.insert(&content, scrypt, pending, false),
            Claim::Taken
        );
        assert!(
            !filter.settle(&content, &pending, &pending_pow, false),
            "its copy too"
        );
        assert!(filter.settle(&content, &hash(2000, 0), &hash(3, 30), false));
    }

    /// The bound holds through a seeded flood over three jobs of one tip that come and go
    /// (clean jobs retire the others, which may come back), with copies of taken shares
    /// sent again, failed claims given back and scrypt shares settled late, retired or
    /// not; a new tip now and then. No copy of a share that was taken is ever taken again
    /// on the same tip, the count matches the tables, and a content's floor never falls.
    #[test]
    fn the_bound_holds_through_a_seeded_flood() {
        use crate::job::{tests::template, JobBook};
        let shares_max = 500;
        let mut filter = DuplicateFilter::with_shares_max(shares_max);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut job_id = 0;
        let mut job = |variant: u8, clean: bool| {
            job_id += 1;
            let mut template = template(job_id, clean);
            template.coinbase_suffix[0] ^= variant;
            std::sync::Arc::new(Job::new(template).unwrap())
        };
        let mut book = JobBook::default();
        book.insert(job(0, true));
        filter.retire_unlisted(&book);
        let mut pending = std::collections::VecDeque::new();
        // (content, algorithm, share, found a block)
        let mut taken: Vec<([u8; 32], Algorithm, [u8; 32], bool)> = Vec::new();
        let mut floors = HashMap::new();
        let (mut copies_sent, mut retired_forgets, mut blocks_taken) = (0, 0, 0);
        for n in 0..60_000u32 {
            let roll = next();
            let live: Vec<[u8; 32]> = (0..3u8)
                .map(|variant| {
                    let mut template = template(0, false);
                    template.coinbase_suffix[0] ^= variant;
                    Job::new(template).unwrap().content_key
                })
                .filter(|key| book.holds_content(key))
                .collect();
            if roll % 4 == 0 && !taken.is_empty() {
                // A copy of a share taken on this tip, its job live again or still.
                let (content, algorithm, share, is_block) =
                    taken[(roll >> 20) as usize % taken.len()];
                if book.holds_content(&content) {
                    copies_sent += 1;
                    let claim = filter.insert(&content, algorithm, share, is_block);
                    if is_block {
                        assert_eq!(claim, Claim::Duplicate, "a block's copy at {n}");
                    }
                    // A scrypt copy of a forgotten share is claimed before its hash; its
                    // work, the same as the first's, is under the floor when it settles.
                    let credited = claim == Claim::Taken
                        && (algorithm == SHA || filter.settle(&content, &share, &share, false));
                    assert!(!credited, "a copy credited at {n}: {claim:?} {algorithm:?}");
                }
            } else {
                let content = live[(roll >> 12) as usize % live.len()];
                // Work above the share's difficulty is geometric: each bit more, half as
                // many shares.
                let bits = 8 + (next().trailing_zeros() as u8).min(50);
                let algorithm = if roll & (1 << 40) == 0 {
                    SHA
                } else {
                    Algorithm::Scrypt
                };
                let is_block = algorithm == SHA && roll % 97 == 0;
                let share = hash(n, bits);
                if filter.insert(&content, algorithm, share, is_block) == Claim::Taken {
                    if algorithm == Algorithm::Scrypt {
                        pending.push_back((content, share));
                    } else {
                        blocks_taken += is_block as u32;
                        taken.push((content, SHA, share, is_block));
                    }
                }
            }
            // The hasher keeps up: shares settle (or fail) oldest first, as they came.
            if roll % 2 == 0 {
                if let Some((content, share)) = pending.pop_front() {
                    if roll % 3 == 0 {
                        filter.remove(&content, &share);
                    } else if filter.settle(&content, &share, &share, false) {
                        taken.push((content, Algorithm::Scrypt, share, false));
                    }
                }
            }
            if n % 400 == 399 {
                // A new job on the same tip: clean (the others retire) or not.
                book.insert(job((roll >> 30) as u8 % 3, roll & (1 << 50) != 0));
                filter.retire_unlisted(&book);
            }
            assert!(filter.len() <= shares_max, "at {n}");
            assert_eq!(
                filter.shares,
                filter
                    .by_content
                    .values()
                    .map(|c| c.shares.len())
                    .sum::<usize>()
            );
            for (key, content) in &filter.by_content {
                let floor = floors.entry(*key).or_insert(0u8);
                assert!(content.floor_bits >= *floor, "a floor fell");
                if content.retired && content.floor_bits > *floor {
                    retired_forgets += 1;
                }
                *floor = content.floor_bits;
            }
            if n % 6_000 == 5_999 {
                // A new tip: every job and what the filter knew of it goes.
                book = JobBook::default();
                filter.retire_unlisted(&book);
                assert!(filter.is_empty() && filter.by_content.is_empty());
                book.insert(job(0, true));
                filter.retire_unlisted(&book);
                pending.clear();
                taken.clear();
                floors.clear();
            }
        }
        assert!(
            copies_sent > 5_000 && retired_forgets > 20 && blocks_taken > 50,
            "{copies_sent} copies, {retired_forgets} retired forgets, {blocks_taken} blocks"
        );
    }

    /// A found block is never refused for the bound's sake: not under a floor, not when
    /// its scrypt work settles under one; only its copy is, as a duplicate, whatever
    /// became of the original's place; at `BLOCK_SHARES_REMEMBERED_PER_CORE_MAX` the
    /// rule ends.
    #[test]
    fn a_block_passes_the_bound_and_its_copy_does_not() {
        let mut filter = DuplicateFilter::with_shares_max(16);
        for n in 0..16 {
            assert_eq!(
                filter.insert(&[2; 32], SHA, hash(n, 10 + (n % 2) as u8), false),
                Claim::Taken
            );
        }
        // The floor rises over the 10-bit shares.
        assert_eq!(
            filter.insert(&[2; 32], SHA, hash(100, 11), false),
            Claim::Taken
        );
        assert_eq!(
            filter.insert(&[2; 32], SHA, hash(300, 10), false),
            Claim::BelowFloor
        );
        assert_eq!(filter.take_refused_full(), 1);
        assert_eq!(
            filter.insert(&[2; 32], SHA, hash(300, 10), true),
            Claim::Taken
        );
        assert_eq!(
            filter.insert(&[2; 32], SHA, hash(300, 10), true),
            Claim::Duplicate
        );
        assert_eq!(filter.take_refused_full(), 0);
        // A scrypt block settling under the floor is kept; its copy is a duplicate.
        let scrypt = Algorithm::Scrypt;
        assert_eq!(
            filter.insert(&[2; 32], scrypt, hash(400, 0), false),
            Claim::Taken
        );
        assert!(filter.settle(&[2; 32], &hash(400, 0), &hash(1, 3), true));
        assert_eq!(
            filter.insert(&[2; 32], scrypt, hash(400, 0), false),
            Claim::Duplicate
        );
        // A block taken in the ordinary way is remembered apart too: once the floor rose
        // over its place, its copy is still a duplicate, not a new block.
        let mut other = DuplicateFilter::with_shares_max(1);
        assert_eq!(
            other.insert(&[5; 32], SHA, hash(500, 12), true),
            Claim::Taken
        );
        assert_eq!(
            other.insert(&[6; 32], SHA, hash(600, 20), false),
            Claim::Taken
        );
        assert_eq!(
            other.len(),
            1,
            "the block's place went to the share of more work"
        );
        assert_eq!(
            other.insert(&[5; 32], SHA, hash(500, 12), true),
            Claim::Duplicate
        );
        // And a scrypt block settled above the floor, whose copy comes after the floor
        // rose over it.
        assert_eq!(
            other.insert(&[6; 32], scrypt, hash(700, 0), false),
            Claim::Taken
        );
        assert!(other.settle(&[6; 32], &hash(700, 0), &hash(7, 25), true));
        assert_eq!(
            other.insert(&[6; 32], scrypt, hash(700, 0), false),
            Claim::Duplicate
        );
        // Retired with their contents.
        filter.retire_unlisted(&crate::job::JobBook::default());
        assert!(filter.blocks.is_empty());
        // At the limit, a block is refused as any share would be.
        let mut filter = DuplicateFilter::with_shares_max(0);
        for n in 0..BLOCK_SHARES_REMEMBERED_PER_CORE_MAX as u32 {
            assert_eq!(
                filter.insert(&[3; 32], SHA, hash(n, 70), true),
                Claim::Taken
            );
        }
        assert_eq!(
            filter.insert(&[3; 32], SHA, hash(9_999, 70), true),
            Claim::Full
        );
    }

    /// A job content that leaves the live jobs is kept while the tip stays: built again
    /// (the same template on the same tip), it refuses a copy of a share it took and
    /// takes new shares and blocks, scrypt ones included. Its shares still count. A new
    /// tip drops it.
    #[test]
    fn a_content_built_again_on_the_same_tip_knows_its_shares() {
        use crate::job::{tests::template, JobBook};
        let first = std::sync::Arc::new(Job::new(template(1, true)).unwrap());
        let mut other = template(2, true);
        other.coinbase_suffix[0] ^= 1;
        let other = std::sync::Arc::new(Job::new(other).unwrap());
        let mut filter = DuplicateFilter::default();
        let mut book = JobBook::default();
        book.insert(first.clone());
        filter.retire_unlisted(&book);
        for n in 0..100 {
            assert_eq!(
                filter.insert(&first.content_key, SHA, hash(n, 20), false),
                Claim::Taken
            );
        }
        assert_eq!(
            filter.insert(&first.content_key, SHA, hash(1000, 70), true),
            Claim::Taken
        );
        // The other job replaces the first (clean), on the same tip: the first's shares
        // stay counted.
        book.insert(other.clone());
        filter.retire_unlisted(&book);
        assert_eq!(filter.len(), 101);
        assert!(filter.by_content[&first.content_key].retired);
        // The first template comes back: a copy of its shares or block is refused, new
        // shares and blocks are taken, a scrypt one too (judged before its hash only as
        // a copy).
        let mut again = template(3, true);
        again.ntime += 30;
        let again = std::sync::Arc::new(Job::new(again).unwrap());
        assert_eq!(again.content_key, first.content_key);
        book.insert(again.clone());
        filter.retire_unlisted(&book);
        assert!(!filter.by_content[&again.content_key].retired);
        assert_eq!(
            filter.insert(&again.content_key, SHA, hash(1, 20), false),
            Claim::Duplicate
        );
        assert_eq!(
            filter.insert(&again.content_key, SHA, hash(1000, 70), true),
            Claim::Duplicate
        );
        assert_eq!(
            filter.insert(&again.content_key, SHA, hash(2000, 20), false),
            Claim::Taken
        );
        assert_eq!(
            filter.insert(&again.content_key, SHA, hash(2001, 70), true),
            Claim::Taken
        );
        assert_eq!(
            filter.insert(&again.content_key, Algorithm::Scrypt, hash(2002, 0), false),
            Claim::Taken
        );
        assert!(filter.settle(&again.content_key, &hash(2002, 0), &hash(9, 70), true));
        // A content with nothing to remember (its one claim given back) is not kept
        // when it leaves.
        let mut empty = template(5, true);
        empty.coinbase_suffix[0] ^= 2;
        let empty = std::sync::Arc::new(Job::new(empty).unwrap());
        book.insert(empty.clone());
        filter.retire_unlisted(&book);
        assert_eq!(
            filter.insert(&empty.content_key, SHA, hash(3000, 20), false),
            Claim::Taken
        );
        filter.remove(&empty.content_key, &hash(3000, 20));
        assert!(filter.by_content.contains_key(&empty.content_key));
        book.insert(std::sync::Arc::new(Job::new(template(6, true)).unwrap()));
        filter.retire_unlisted(&book);
        assert!(!filter.by_content.contains_key(&empty.content_key));
        assert!(filter.by_content.contains_key(&first.content_key));
        // A new tip drops every content of the old one, with its blocks.
        let mut next_tip = template(4, true);
        next_tip.prevhash = [0x42; 32];
        let next_tip = std::sync::Arc::new(Job::new(next_tip).unwrap());
        book.insert(next_tip.clone());
        filter.retire_unlisted(&book);
        assert!(filter.blocks.is_empty());
        assert!(filter.is_empty());
        assert_eq!(filter.by_content.len(), 0);
        assert_eq!(
            filter.insert(&next_tip.content_key, SHA, hash(1, 20), false),
            Claim::Taken
        );
    }

    /// At the bound the shares of contents no live job has go first, whatever their work,
    /// the least work first: the live job keeps its shares and its floor. Built again, the
    /// old content refuses copies of what it forgot (under its raised floor) and takes
    /// shares of more work and every block. A share waiting for its hash is never
    /// forgotten; once the old jobs hold only those, the live jobs' cheapest shares go.
    #[test]
    fn at_the_bound_the_shares_of_jobs_gone_are_forgotten_first() {
        use crate::job::{tests::template, JobBook};
        let old = std::sync::Arc::new(Job::new(template(1, true)).unwrap());
        let mut live = template(2, true);
        live.coinbase_suffix[0] ^= 1;
        let live = std::sync::Arc::new(Job::new(live).unwrap());
        let scrypt = Algorithm::Scrypt;
        let mut filter = DuplicateFilter::with_shares_max(8);
        let mut book = JobBook::default();
        book.insert(old.clone());
        filter.retire_unlisted(&book);
        for n in 0..4 {
            assert_eq!(
                filter.insert(&old.content_key, SHA, hash(n, 40 + n as u8), false),
                Claim::Taken
            );
        }
        let waiting = hash(5, 0);
        assert_eq!(
            filter.insert(&old.content_key, scrypt, waiting, false),
            Claim::Taken
        );
        book.insert(live.clone());
        filter.retire_unlisted(&book);
        for n in 10..13 {
            assert_eq!(
                filter.insert(&live.content_key, SHA, hash(n, 20), false),
                Claim::Taken
            );
        }
        assert_eq!(filter.len(), 8);
        // At the bound: the old job's cheapest share goes, though of more work than the
        // live job's, and each share after takes the next.
        assert_eq!(
            filter.insert(&live.content_key, SHA, hash(13, 20), false),
            Claim::Taken
        );
        assert_eq!(filter.len(), 8);
        assert_eq!(filter.by_content[&live.content_key].floor_bits, 0);
        assert_eq!(filter.by_content[&old.content_key].floor_bits, 41);
        assert_eq!(
            filter.insert(&old.content_key, SHA, hash(0, 40), false),
            Claim::BelowFloor
        );
        assert_eq!(
            filter.insert(&old.content_key, SHA, hash(1, 41), false),
            Claim::Duplicate
        );
        // The old template comes back on the same tip: a copy of a forgotten share is
        // under its floor, one of more work is taken, a block under the floor too.
        book.insert(std::sync::Arc::new(Job::new(template(3, true)).unwrap()));
        filter.retire_unlisted(&book);
        assert_eq!(
            filter.insert(&old.content_key, SHA, hash(20, 44), false),
            Claim::Taken
        );
        assert_eq!(
            filter.insert(&old.content_key, SHA, hash(21, 30), true),
            Claim::Taken,
            "a block under the floor"
        );
        // The live job leaves again, the old one with it; a third job is live.
        let mut third = template(4, true);
        third.coinbase_suffix[0] ^= 2;
        let third = std::sync::Arc::new(Job::new(third).unwrap());
        book.insert(third.clone());
        filter.retire_unlisted(&book);
        // Every old share of known work goes, the least work first (the live job's four
        // 20-bit ones went when the old job came back); the waiting one stays.
        for n in 30..37 {
            assert_eq!(
                filter.insert(&third.content_key, SHA, hash(n, 25), false),
                Claim::Taken
            );
        }
        assert_eq!(filter.by_content[&third.content_key].floor_bits, 0);
        assert_eq!(filter.len(), 8);
        assert_eq!(filter.shares, 8);
        assert_eq!(
            filter.insert(&old.content_key, scrypt, waiting, false),
            Claim::Duplicate,
            "still waiting"
        );
        assert!(filter.settle(&old.content_key, &waiting, &hash(9, 60), false));
        // Only the third job's shares are left to forget: its cheapest go now.
        for n in 40..42 {
            assert_eq!(
                filter.insert(&third.content_key, SHA, hash(n, 26), false),
                Claim::Taken
            );
        }
        assert!(filter.by_content[&third.content_key].floor_bits > 0);
        assert!(filter.len() <= 8);
    }

    /// A job that lost no share to a raised floor keeps taking what it took; one that did
    /// refuses only what is under the work it lost.
    #[test]
    fn a_floor_rises_only_over_what_its_job_forgot() {
        let mut filter = DuplicateFilter::with_shares_max(4);
        assert_eq!(
            filter.insert(&[1; 32], SHA, hash(1, 10), false),
            Claim::Taken
        );
        assert_eq!(
            filter.insert(&[1; 32], SHA, hash(2, 30), false),
            Claim::Taken
        );
        for n in 3..5 {
            assert_eq!(
                filter.insert(&[2; 32], SHA, hash(n, 25), false),
                Claim::Taken
            );
        }
        // The pass forgets the 10-bit share of job 1 only.
        assert_eq!(
            filter.insert(&[2; 32], SHA, hash(5, 25), false),
            Claim::Taken
        );
        assert_eq!(filter.len(), 4);
        assert_eq!(
            filter.insert(&[1; 32], SHA, hash(6, 10), false),
            Claim::BelowFloor
        );
        // A failed claim frees a place; job 2, which lost nothing, still takes a share of
        // less work than job 1's floor.
        filter.remove(&[2; 32], &hash(5, 25));
        assert_eq!(
            filter.insert(&[2; 32], SHA, hash(7, 10), false),
            Claim::Taken
        );
    }

    /// When a block cannot be remembered apart (`BLOCK_SHARES_REMEMBERED_PER_CORE_MAX`
    /// held), no block of its job passes the floor: its copy could not be told from a new
    /// one once the floor rose over it.
    #[test]
    fn a_block_not_remembered_apart_is_judged_as_any_share() {
        let mut filter = DuplicateFilter::with_shares_max(2);
        for n in 0..BLOCK_SHARES_REMEMBERED_PER_CORE_MAX as u32 {
            filter.blocks.insert(([9; 32], u64::from(n) << 8));
        }
        assert_eq!(
            filter.insert(&[1; 32], SHA, hash(1, 12), true),
            Claim::Taken
        );
        assert_eq!(
            filter.insert(&[1; 32], SHA, hash(2, 30), false),
            Claim::Taken
        );
        // The floor rises over the block's place; its copy is refused, not taken anew.
        assert_eq!(
            filter.insert(&[1; 32], SHA, hash(3, 30), false),
            Claim::Taken
        );
        assert_eq!(
            filter.insert(&[1; 32], SHA, hash(1, 12), true),
            Claim::BelowFloor
        );
        // Room apart again does not change that for this job.
        filter.blocks.clear();
        assert_eq!(
            filter.insert(&[1; 32], SHA, hash(1, 12), true),
            Claim::BelowFloor
        );
    }

    /// Memory follows table capacity, not the shares counted: jobs filled one after
    /// another, each evicting the last at the bound, do not each hold on to their peak.
    #[test]
    fn no_table_holds_on_to_its_peak() {
        let shares_max = 512;
        let mut filter = DuplicateFilter::with_shares_max(shares_max);
        let mut n = 0;
        for job in 0..16u8 {
            for _ in 0..shares_max {
                n += 1;
                assert_eq!(
                    filter.insert(&[job; 32], SHA, hash(n, 10 + job), false),
                    Claim::Taken
                );
            }
            let capacity: usize = filter
                .by_content
                .values()
                .map(|content| content.shares.capacity())
                .sum();
            assert!(capacity <= 3 * shares_max, "{capacity} after job {job}");
        }
    }

    #[test]
    fn a_zero_bound_takes_nothing() {
        let mut filter = DuplicateFilter::with_shares_max(0);
        assert_eq!(
            filter.insert(&[1; 32], SHA, hash(1, 20), false),
            Claim::Full
        );
        assert!(filter.is_empty());
    }
}
