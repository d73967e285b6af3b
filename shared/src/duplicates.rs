//! The duplicate filter: which shares each core has taken for each live job content, and
//! who took them, so a share is credited once and a flood at the bound costs its sender,
//! not the honest miners beside it.

use std::collections::{HashMap, HashSet};

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

/// Hashes a claimant key (an extranonce prefix the pool assigned, so nobody can aim it)
/// with one multiply: sequential prefixes spread over the table's buckets and control bytes.
#[derive(Clone, Copy, Debug, Default)]
struct ClaimantHashBuilder;

impl std::hash::BuildHasher for ClaimantHashBuilder {
    type Hasher = ClaimantHasher;
    fn build_hasher(&self) -> ClaimantHasher {
        ClaimantHasher(0)
    }
}

#[derive(Debug)]
struct ClaimantHasher(u64);

impl std::hash::Hasher for ClaimantHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// What one core's duplicate filter remembers at most, over all live jobs, in shares: each
/// share counts one, each claimant (channel) that holds shares of a content, or was
/// evicted from one, counts `DUPLICATE_FILTER_CLAIMANT_COST_SHARES`. A share costs about 17
/// bytes of table (its 64-bit fingerprint, its claimant's key and a control byte), and a
/// table is at most half full after it grows, so the filter stays under about 140 MB per
/// core. At the bound the oldest job content is forgotten first, and its jobs are stale
/// from then on (`Claim::Forgotten`): a flood only ages jobs out early. With one content
/// alone at the bound, the claimants whose shares carry the least work (the lowest mean
/// difficulty) are forgotten first (`Claim::Evicted`): memory goes to the shares worth
/// the most work, so a flood of cheap shares evicts itself, and pushing an honest miner
/// out takes shares of its difficulty, that is, its work. At 3,000 shares/s on one core the
/// bound is 23 minutes of one job.
pub const DUPLICATE_FILTER_SHARES_PER_CORE_MAX: usize = 1 << 22;

/// What one claimant's entry costs against the bound, in shares: about 33 bytes (its key,
/// share count, work and flag) against a share's 17.
pub const DUPLICATE_FILTER_CLAIMANT_COST_SHARES: usize = 2;

/// An eviction pass frees at least `shares_max / DUPLICATE_FILTER_EVICTED_FRACTION_DIVISOR`
/// shares, so its cost (a sort of the content's claimants and a pass over its shares) is
/// paid once per that many shares, not once per share.
pub const DUPLICATE_FILTER_EVICTED_FRACTION_DIVISOR: usize = 16;

/// Who claimed a share: its extranonce prefix (a V1 connection's extranonce1, a V2
/// channel's prefix), which its header commits to. A duplicate of a share therefore always
/// has its original's claimant; two claimants folded into one key only share a fate. The
/// prefix has a fixed length (`EXTRANONCE1_BYTES`, as does what the miner appends), so no
/// two (prefix, miner part) splits can make the same coinbase.
pub fn claimant_of(extranonce_prefix: &[u8]) -> u64 {
    debug_assert_eq!(extranonce_prefix.len(), crate::limits::EXTRANONCE1_BYTES);
    extranonce_prefix
        .iter()
        .fold(0u64, |key, &byte| key.rotate_left(8) ^ u64::from(byte))
}

/// The filter's answer to a share arriving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// First time seen: the share may go on to its proof of work.
    Taken,
    /// The same share was taken before (or waits for its hash now).
    Duplicate,
    /// The filter's bound is zero: nothing can be remembered, so nothing is taken.
    Full,
    /// This job content's shares were forgotten to make room for a newer one's: its jobs
    /// are stale (a duplicate could no longer be told from a new share).
    Forgotten,
    /// This claimant's shares of this content were forgotten at the bound (they carried
    /// the least work): its shares of this content are refused until the content retires.
    Evicted,
}

/// One claimant's place in a content's shares.
#[derive(Debug, Default)]
struct Claimed {
    shares: u32,
    /// The difficulties of its shares, summed: `work / shares` ranks it for eviction.
    work: f64,
    /// Its shares were forgotten at the bound: it takes none of this content again.
    evicted: bool,
}

/// The shares taken for one job content.
#[derive(Debug, Default)]
struct ContentShares {
    /// Each share's fingerprint and its claimant.
    fingerprints: HashMap<u64, u64, FingerprintHashBuilder>,
    claimants: HashMap<u64, Claimed, ClaimantHashBuilder>,
}

impl ContentShares {
    fn is_evicted(&self, claimant: u64) -> bool {
        self.claimants
            .get(&claimant)
            .is_some_and(|claimed| claimed.evicted)
    }

    /// Forgets the shares of the claimants whose shares carry the least work (then those
    /// holding the most), until at least `wanted` shares are freed; returns how many were.
    /// Evicted claimants stay known, so their shares (a forgotten one's copy included) are
    /// refused from then on.
    fn evict_cheapest(&mut self, wanted: usize) -> usize {
        let mut cheapest: Vec<(f64, u32, u64)> = self
            .claimants
            .iter()
            .filter(|(_, claimed)| claimed.shares > 0)
            .map(|(&claimant, claimed)| {
                let mean = claimed.work / f64::from(claimed.shares);
                (mean, claimed.shares, claimant)
            })
            .collect();
        cheapest.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut freed = 0;
        for (_, shares, claimant) in cheapest {
            if freed >= wanted {
                break;
            }
            let claimed = self.claimants.get_mut(&claimant).expect("listed above");
            *claimed = Claimed {
                shares: 0,
                work: 0.0,
                evicted: true,
            };
            freed += shares as usize;
        }
        let claimants = &self.claimants;
        self.fingerprints
            .retain(|_, claimant| !claimants[claimant].evicted);
        freed
    }
}

/// Remembers the shares taken, grouped by their job's content (`Job::content_key`). The
/// header commits to the job's content and the miner's fields, so equal header hashes
/// mean the same share, whatever job id it came under. Grouping by content, not by job
/// id, is what keeps a job re-sent under the same id (after a control-plane reconnect,
/// with `clean_jobs`) from forgetting the shares already taken for it; a set is dropped
/// once no live job has its content, when its shares are stale.
///
/// A share is kept as its fingerprint, the first 64 bits of its header hash. Equal shares
/// always have equal fingerprints, so a duplicate is never let through; two different
/// shares share one with odds of about 2^-64 per pair (the hash is SHA256d, which no one
/// can aim), and then the later one is refused, which costs its miner one share and
/// gives no one anything.
///
/// Each fingerprint is kept with its claimant (`claimant_of`). A duplicate has its
/// original's claimant, so forgetting one claimant's shares and refusing that claimant
/// from then on lets no duplicate through, while everyone else keeps mining: that is how
/// the filter makes room when one content alone fills it (see
/// `DUPLICATE_FILTER_SHARES_PER_CORE_MAX` for who goes first).
///
/// A share is claimed here when it arrives, before its proof of work is computed (which
/// for scrypt happens later, in a batch), and released if that fails: a copy sent while
/// the first waits is refused at once, and one still waiting when a new block drops the
/// set cannot start a fresh set for it.
///
/// Each core owns one; extranonce1 values are partitioned per core, so a share can only
/// ever collide with one accepted on the same core, and no cross-core lookup is needed.
///
/// Invariant: the shares and claimants remembered cost at most `shares_max`, and a share
/// is never let in unchecked: a content whose shares were forgotten takes no share again
/// (`Forgotten`) until its jobs retire, nor does a claimant whose shares of a content were
/// (`Evicted`).
#[derive(Debug)]
pub struct DuplicateFilter {
    by_content: HashMap<[u8; 32], ContentShares>,
    /// The contents of `by_content`, oldest first.
    order: std::collections::VecDeque<[u8; 32]>,
    /// Contents whose shares were forgotten at the bound.
    forgotten: HashSet<[u8; 32]>,
    /// Fingerprints remembered, over every content.
    shares: usize,
    /// Claimant entries, over every content.
    claimants: usize,
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
            by_content: HashMap::new(),
            order: Default::default(),
            forgotten: HashSet::new(),
            shares: 0,
            claimants: 0,
            shares_max,
            refused_full: 0,
        }
    }

    /// What everything remembered costs against the bound.
    fn cost(&self) -> usize {
        self.shares + DUPLICATE_FILTER_CLAIMANT_COST_SHARES * self.claimants
    }

    fn forget_content(&mut self, content_key: [u8; 32]) {
        if let Some(content) = self.by_content.remove(&content_key) {
            self.shares -= content.fingerprints.len();
            self.claimants -= content.claimants.len();
        }
        self.order.retain(|c| *c != content_key);
        self.forgotten.insert(content_key);
    }

    /// Claims the share for its job's content and its claimant (`claimant_of` its
    /// extranonce prefix); `difficulty` is what it would be credited at.
    pub fn insert(
        &mut self,
        content_key: &[u8; 32],
        claimant: u64,
        difficulty: f64,
        header_hash: [u8; 32],
    ) -> Claim {
        if self.forgotten.contains(content_key) {
            self.refused_full += 1;
            return Claim::Forgotten;
        }
        if self.shares_max == 0 {
            self.refused_full += 1;
            return Claim::Full;
        }
        let fingerprint = fingerprint(&header_hash);
        let mut known_claimant = false;
        if let Some(content) = self.by_content.get(content_key) {
            if content.fingerprints.contains_key(&fingerprint) {
                return Claim::Duplicate;
            }
            if let Some(claimed) = content.claimants.get(&claimant) {
                if claimed.evicted {
                    self.refused_full += 1;
                    return Claim::Evicted;
                }
                known_claimant = true;
            }
        }
        let added = 1 + if known_claimant {
            0
        } else {
            DUPLICATE_FILTER_CLAIMANT_COST_SHARES
        };
        while self.cost() + added > self.shares_max {
            // Forget the oldest other content; its jobs are stale from now on.
            if let Some(&oldest) = self.order.iter().find(|c| *c != content_key) {
                self.forget_content(oldest);
                continue;
            }
            // This content alone fills the filter: forget the claimants whose shares carry
            // the least work.
            let wanted = (self.shares_max / DUPLICATE_FILTER_EVICTED_FRACTION_DIVISOR).max(1);
            let (freed, evicted) = match self.by_content.get_mut(content_key) {
                Some(content) => (content.evict_cheapest(wanted), content.is_evicted(claimant)),
                None => (0, false),
            };
            self.shares -= freed;
            if freed == 0 {
                // Only evicted claimants' entries are left (or the bound is smaller than
                // one claimant): the content is forgotten, as an old one would be.
                self.forget_content(*content_key);
                self.refused_full += 1;
                return Claim::Forgotten;
            }
            if evicted {
                self.refused_full += 1;
                return Claim::Evicted;
            }
        }
        let content = self.by_content.entry(*content_key).or_insert_with(|| {
            self.order.push_back(*content_key);
            ContentShares::default()
        });
        let claimed = content.claimants.entry(claimant).or_insert_with(|| {
            self.claimants += 1;
            Claimed::default()
        });
        claimed.shares += 1;
        claimed.work += difficulty;
        content.fingerprints.insert(fingerprint, claimant);
        self.shares += 1;
        debug_assert!(self.cost() <= self.shares_max);
        Claim::Taken
    }

    /// Forgets a share whose claim did not hold (its proof of work fell short), taken at
    /// `difficulty`. Only a share that was `Taken` may be given back, so this never frees
    /// another's claim; a claimant left with no share and not evicted is forgotten too.
    pub fn remove(&mut self, content_key: &[u8; 32], difficulty: f64, header_hash: &[u8; 32]) {
        let Some(content) = self.by_content.get_mut(content_key) else {
            return;
        };
        let Some(claimant) = content.fingerprints.remove(&fingerprint(header_hash)) else {
            return;
        };
        self.shares -= 1;
        let claimed = content
            .claimants
            .get_mut(&claimant)
            .expect("a remembered share's claimant is remembered");
        claimed.shares -= 1;
        claimed.work -= difficulty;
        if claimed.shares == 0 && !claimed.evicted {
            content.claimants.remove(&claimant);
            self.claimants -= 1;
        }
    }

    /// Forgets the shares of contents no live job in `jobs` has: they can only be stale.
    pub fn retire_unlisted(&mut self, jobs: &crate::job::JobBook) {
        self.by_content
            .retain(|content_key, _| jobs.holds_content(content_key));
        self.order
            .retain(|content_key| jobs.holds_content(content_key));
        self.forgotten
            .retain(|content_key| jobs.holds_content(content_key));
        self.shares = self
            .by_content
            .values()
            .map(|content| content.fingerprints.len())
            .sum();
        self.claimants = self
            .by_content
            .values()
            .map(|content| content.claimants.len())
            .sum();
    }

    pub fn len(&self) -> usize {
        self.shares
    }

    pub fn is_empty(&self) -> bool {
        self.shares == 0
    }

    /// Shares refused because of the filter's bound (`Full`, `Forgotten`, `Evicted`)
    /// since the last call.
    pub fn take_refused_full(&mut self) -> u64 {
        std::mem::take(&mut self.refused_full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Job;

    fn hash(n: u32) -> [u8; 32] {
        let mut hash = [0u8; 32];
        hash[..4].copy_from_slice(&n.to_le_bytes());
        hash
    }

    const COST: usize = DUPLICATE_FILTER_CLAIMANT_COST_SHARES;

    #[test]
    fn duplicate_filter_keys_on_job_content_and_hash() {
        let mut filter = DuplicateFilter::default();
        let mut book = crate::job::JobBook::default();
        let job = std::sync::Arc::new(Job::new(crate::job::tests::template(5, true)).unwrap());
        let live = job.content_key;
        assert_eq!(filter.insert(&[1; 32], 7, 1.0, [1; 32]), Claim::Taken);
        assert_eq!(filter.insert(&[1; 32], 7, 1.0, [1; 32]), Claim::Duplicate);
        assert_eq!(filter.insert(&live, 7, 1.0, [1; 32]), Claim::Taken);
        book.insert(job.clone());
        filter.retire_unlisted(&book);
        assert_eq!(filter.len(), 1);
        assert_eq!(filter.insert(&live, 7, 1.0, [1; 32]), Claim::Duplicate);
        filter.remove(&live, 1.0, &[1; 32]);
        assert!(filter.is_empty());
        assert_eq!(
            filter.cost(),
            0,
            "a claimant left with nothing is forgotten"
        );
        assert_eq!(filter.insert(&live, 7, 1.0, [1; 32]), Claim::Taken);
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

    #[test]
    fn at_the_bound_the_oldest_content_is_forgotten_and_never_let_in_unchecked() {
        let mut filter = DuplicateFilter::with_shares_max(3 + COST);
        for n in 0..3 {
            assert_eq!(filter.insert(&[1; 32], 1, 1.0, hash(n)), Claim::Taken);
        }
        assert_eq!((filter.len(), filter.cost()), (3, 3 + COST));
        // A failed claim frees its place.
        filter.remove(&[1; 32], 1.0, &hash(2));
        assert_eq!(filter.len(), 2);
        assert_eq!(filter.insert(&[1; 32], 1, 1.0, hash(2)), Claim::Taken);
        // A newer content at the bound: the oldest content is forgotten, and its shares
        // are refused from then on (never let in unchecked, even a copy of an old one).
        assert_eq!(filter.insert(&[2; 32], 1, 1.0, hash(5)), Claim::Taken);
        assert_eq!(filter.len(), 1);
        assert_eq!(filter.insert(&[1; 32], 1, 1.0, hash(1)), Claim::Forgotten);
        assert_eq!(filter.insert(&[1; 32], 2, 1.0, hash(7)), Claim::Forgotten);
        assert_eq!(filter.take_refused_full(), 2);
        assert_eq!(filter.take_refused_full(), 0);
        assert_eq!(filter.insert(&[2; 32], 1, 1.0, hash(5)), Claim::Duplicate);
        // Retiring every content empties it and forgets what was forgotten.
        filter.retire_unlisted(&crate::job::JobBook::default());
        assert!(filter.is_empty());
        assert_eq!(filter.cost(), 0);
        assert_eq!(filter.insert(&[1; 32], 1, 1.0, hash(1)), Claim::Taken);
    }

    /// A flood of cheap shares that fills the filter with one job content evicts itself:
    /// the honest miners beside it, whose shares carry more work each, keep their place,
    /// and none of the flooder's shares, old or new, gets in again while the content lives.
    #[test]
    fn one_content_at_the_bound_evicts_the_cheapest_shares_not_the_honest() {
        let shares_max = 64;
        let mut filter = DuplicateFilter::with_shares_max(shares_max);
        let content = [1; 32];
        let (flooder, honest_a, honest_b) = (100, 200, 300);
        let mut next = 0u32;
        let mut take = |filter: &mut DuplicateFilter, claimant, difficulty| {
            next += 1;
            (
                filter.insert(&content, claimant, difficulty, hash(next)),
                hash(next),
            )
        };
        let (_, honest_first) = take(&mut filter, honest_a, 1000.0);
        for _ in 0..5 {
            take(&mut filter, honest_b, 800.0);
        }
        let mut flooded = Vec::new();
        // Fewer shares than honest_b holds would not do either: work per share decides.
        while filter.cost() < shares_max {
            let (claim, share) = take(&mut filter, flooder, 0.001);
            assert_eq!(claim, Claim::Taken);
            flooded.push(share);
        }
        // At the bound, an honest share makes room by forgetting the flooder.
        assert_eq!(take(&mut filter, honest_a, 1000.0).0, Claim::Taken);
        assert_eq!(filter.len(), 7);
        assert_eq!(
            filter.insert(&content, honest_a, 1000.0, honest_first),
            Claim::Duplicate
        );
        // The flooder's copies of its forgotten shares and its new shares are refused.
        for share in &flooded[..3] {
            assert_eq!(
                filter.insert(&content, flooder, 0.001, *share),
                Claim::Evicted
            );
        }
        assert_eq!(take(&mut filter, flooder, 0.001).0, Claim::Evicted);
        assert_eq!(filter.take_refused_full(), 4);
        assert_eq!(take(&mut filter, honest_b, 800.0).0, Claim::Taken);
        assert!(filter.cost() <= shares_max);
    }

    /// Many claimants of one cheap share each (a flooder opening channel after channel)
    /// go before a miner holding many shares of more work each; a pass frees at least its
    /// fraction of the bound.
    #[test]
    fn many_small_cheap_claimants_go_before_one_honest_miner_and_a_pass_frees_its_fraction() {
        let shares_max = 160 * (1 + COST);
        let mut filter = DuplicateFilter::with_shares_max(shares_max);
        let content = [3; 32];
        let honest = u64::MAX;
        let mut n = 0u32;
        for _ in 0..40 {
            n += 1;
            assert_eq!(filter.insert(&content, honest, 50.0, hash(n)), Claim::Taken);
        }
        let mut channel = 0u64;
        while filter.cost() + 1 + COST <= shares_max {
            n += 1;
            channel += 1;
            assert_eq!(
                filter.insert(&content, channel, 0.01, hash(n)),
                Claim::Taken
            );
        }
        let before = filter.len();
        n += 1;
        channel += 1;
        assert_eq!(
            filter.insert(&content, channel, 0.01, hash(n)),
            Claim::Taken
        );
        // At least shares_max / 16 shares went, every one a cheap claimant's.
        assert!(
            before + 1 - filter.len() >= shares_max / DUPLICATE_FILTER_EVICTED_FRACTION_DIVISOR
        );
        assert_eq!(
            filter.insert(&content, honest, 50.0, hash(1)),
            Claim::Duplicate
        );
        n += 1;
        assert_eq!(filter.insert(&content, honest, 50.0, hash(n)), Claim::Taken);
    }

    /// The bound holds through a seeded flood over claimants and difficulties, with failed
    /// claims given back, and when only evicted claimants' entries are left the content is
    /// forgotten rather than the bound broken.
    #[test]
    fn the_bound_holds_through_a_seeded_flood() {
        let shares_max = 500;
        let mut filter = DuplicateFilter::with_shares_max(shares_max);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut taken = Vec::new();
        for n in 0..50_000u32 {
            let roll = next();
            let content = [(roll % 3) as u8; 32];
            let claimant = (roll >> 8) % 300;
            let difficulty = [0.001, 1.0, 64.0][((roll >> 20) % 3) as usize];
            if filter.insert(&content, claimant, difficulty, hash(n)) == Claim::Taken {
                taken.push((content, difficulty, hash(n)));
            }
            if roll % 5 == 0 {
                if let Some((content, difficulty, share)) = taken.pop() {
                    filter.remove(&content, difficulty, &share);
                }
            }
            assert!(filter.cost() <= shares_max, "at {n}");
            assert_eq!(
                filter.shares,
                filter
                    .by_content
                    .values()
                    .map(|c| c.fingerprints.len())
                    .sum::<usize>()
            );
            assert_eq!(
                filter.claimants,
                filter
                    .by_content
                    .values()
                    .map(|c| c.claimants.len())
                    .sum::<usize>()
            );
            if n % 10_000 == 9_999 {
                filter.retire_unlisted(&crate::job::JobBook::default());
            }
        }
    }

    #[test]
    fn a_zero_bound_takes_nothing() {
        let mut filter = DuplicateFilter::with_shares_max(0);
        assert_eq!(filter.insert(&[1; 32], 1, 1.0, hash(1)), Claim::Full);
        assert!(filter.is_empty());
    }

    #[test]
    fn claimants_are_the_prefix_bytes_folded() {
        assert_eq!(claimant_of(&[0, 0, 0, 1]), 1);
        assert_ne!(claimant_of(&[0, 0, 0, 1]), claimant_of(&[0, 0, 1, 0]));
    }
}
