//! The payout schemes, as pure functions from a round's shares to integer credits.
//!
//! Amounts are in the coin's smallest unit (satoshis, litoshis) and never pass through a
//! float. Share difficulties become integer work units (`work_units`); a reward is divided
//! by the largest-remainder method, so the credits and the fee always add up to the reward
//! exactly. The pool fee is in parts per million of the amount it applies to.
//!
//! Block schemes (the reward of a found block is divided among miners):
//! - **PPLNS**: the last N difficulty-weighted shares before the block, where N is
//!   `window_factor` × network difficulty; credit_i = (R − fee) · W_i / N, with W_i the
//!   miner's difficulty inside the window, the oldest share counted only in part.
//! - **PROP**: every share of the round (since the previous block);
//!   credit_i = (R − fee) · D_i / D_round.
//! - **PPLNT**: PROP, but a miner present for a fraction p of the round below
//!   `presence_min` has its difficulty scaled by p. Presence is the span from its first to
//!   its last share in the round, over the round's length.
//! - **SOLO**: the finder takes R − fee.
//!
//! Per-share schemes (the pool pays at once and keeps the blocks' rewards):
//! - **PPS**: credit = (1 − fee) · (d_share / d_network) · subsidy.
//! - **FPPS**: credit = (1 − fee) · (d_share / d_network) · (subsidy + mean fees per block).

use std::collections::BTreeMap;

/// One million: the pool fee is given in parts per million.
pub const PPM: u64 = 1_000_000;
/// Work units per difficulty 1. 2^32 keeps difficulty 1e-9 at 4 units and difficulty
/// 10^15 (far above any network) inside 2^82, so sums over millions of shares fit u128.
const WORK_UNITS_PER_DIFFICULTY: f64 = 4_294_967_296.0;
/// Weights are shifted down to at most this many bits before multiplying by an amount
/// (a u64), so products stay inside u128; the relative error is 2^-64.
const WEIGHT_BITS_MAX: u32 = 64;
const _: () = assert!(WEIGHT_BITS_MAX + u64::BITS <= u128::BITS);

/// A share as the schemes see it.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundShare {
    /// Where this share's credit goes (the miner's payout address).
    pub address: String,
    pub difficulty: f64,
    pub accepted_at_ms: u64,
}

/// How a pool divides rewards; chosen per pool in config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scheme {
    Pplns { window_factor: f64 },
    Prop,
    Pplnt { presence_min: f64 },
    Solo,
    Pps,
    Fpps,
}

/// What one block's reward becomes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockSplit {
    /// The pool's part: its fee, or under PPS/FPPS the whole reward.
    pub pool: u64,
    pub credits: BTreeMap<String, u64>,
}

/// The fee on `amount` at `fee_ppm`, rounded down.
pub fn fee_of(amount: u64, fee_ppm: u64) -> u64 {
    (u128::from(amount) * u128::from(fee_ppm.min(PPM)) / u128::from(PPM)) as u64
}

/// A difficulty as integer work units (at least 1 for any positive difficulty).
pub fn work_units(difficulty: f64) -> u128 {
    if !(difficulty.is_finite() && difficulty > 0.0) {
        return 0;
    }
    ((difficulty * WORK_UNITS_PER_DIFFICULTY) as u128).max(1)
}

/// Divides `amount` in proportion to `weights`, exactly: each gets the floor of its share,
/// and the units left over go one each to the largest remainders (ties: address order).
/// Nothing is lost to rounding; with no weight at all the result is empty.
pub fn split_exact(amount: u64, weights: &BTreeMap<String, u128>) -> BTreeMap<String, u64> {
    let total: u128 = weights.values().sum();
    if total == 0 || amount == 0 {
        return BTreeMap::new();
    }
    let shift = (128 - total.leading_zeros()).saturating_sub(WEIGHT_BITS_MAX);
    let total_shifted = (total >> shift).max(1);
    let mut shares: Vec<(&String, u64, u128)> = weights
        .iter()
        .filter(|(_, w)| **w > 0)
        .map(|(address, weight)| {
            let product = u128::from(amount) * (weight >> shift);
            (
                address,
                (product / total_shifted) as u64,
                product % total_shifted,
            )
        })
        .collect();
    let given: u64 = shares.iter().map(|(_, base, _)| base).sum();
    let mut left = amount - given;
    let mut order: Vec<usize> = (0..shares.len()).collect();
    // Largest remainder first; the sort is stable, so equal remainders keep address order.
    order.sort_by(|a, b| shares[*b].2.cmp(&shares[*a].2));
    for index in order.into_iter().cycle() {
        if left == 0 {
            break;
        }
        shares[index].1 += 1;
        left -= 1;
    }
    shares
        .into_iter()
        .filter(|(_, amount, _)| *amount > 0)
        .map(|(address, amount, _)| (address.clone(), amount))
        .collect()
}

/// PPLNS weights: walking back from the newest share, each address's work until the window
/// of `window_units` is full; the share that crosses the edge counts only up to it.
pub fn pplns_weights<'a>(
    shares_newest_first: impl IntoIterator<Item = &'a RoundShare>,
    window_units: u128,
) -> BTreeMap<String, u128> {
    let mut weights = BTreeMap::new();
    let mut counted: u128 = 0;
    for share in shares_newest_first {
        if counted >= window_units {
            break;
        }
        let units = work_units(share.difficulty).min(window_units - counted);
        if units == 0 {
            // An uncredited block's record (difficulty 0): no work to count.
            continue;
        }
        counted += units;
        *weights.entry(share.address.clone()).or_insert(0) += units;
    }
    weights
}

/// PROP weights: every share of the round.
pub fn prop_weights<'a>(
    shares: impl IntoIterator<Item = &'a RoundShare>,
) -> BTreeMap<String, u128> {
    let mut weights = BTreeMap::new();
    for share in shares {
        let units = work_units(share.difficulty);
        if units > 0 {
            *weights.entry(share.address.clone()).or_insert(0) += units;
        }
    }
    weights
}

/// PPLNT weights: PROP, with each address present less than `presence_min` of the round
/// scaled by its presence.
pub fn pplnt_weights(
    shares: &[RoundShare],
    round_start_ms: u64,
    round_end_ms: u64,
    presence_min: f64,
) -> BTreeMap<String, u128> {
    let round_ms = round_end_ms.saturating_sub(round_start_ms).max(1);
    let mut spans: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    // Presence comes from shares of work only: an uncredited block's record (difficulty
    // 0, nearly free on a cheap chain) must not open a miner's span.
    for share in shares
        .iter()
        .filter(|share| work_units(share.difficulty) > 0)
    {
        let span = spans
            .entry(&share.address)
            .or_insert((share.accepted_at_ms, share.accepted_at_ms));
        span.0 = span.0.min(share.accepted_at_ms);
        span.1 = span.1.max(share.accepted_at_ms);
    }
    // Presence in parts per million, so the scaling stays in integers.
    let presence_min_ppm = (presence_min.clamp(0.0, 1.0) * PPM as f64) as u128;
    prop_weights(shares)
        .into_iter()
        .map(|(address, weight)| {
            let (first, last) = spans[address.as_str()];
            let presence_ppm = (u128::from(last - first) * u128::from(PPM) / u128::from(round_ms))
                .min(u128::from(PPM));
            let weight = if presence_ppm < presence_min_ppm {
                weight * presence_ppm / u128::from(PPM)
            } else {
                weight
            };
            (address, weight)
        })
        .collect()
}

/// The round that ended with a found block.
#[derive(Clone, Copy, Debug)]
pub struct Round<'a> {
    /// The address whose share was the block.
    pub finder: &'a str,
    /// The pool's share history, newest first from the block's own share, back to at
    /// least the PPLNS window.
    pub shares_newest_first: &'a [RoundShare],
    /// How many of `shares_newest_first` are the round's (after the previous block's
    /// share): PROP and PPLNT count only these.
    pub round_shares: usize,
    pub network_difficulty: f64,
    /// The previous block's time and this one's: the round's length, for PPLNT presence.
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Divides a found block's `reward` under `scheme`.
pub fn split_block(scheme: Scheme, reward: u64, fee_ppm: u64, round: &Round<'_>) -> BlockSplit {
    let Round {
        finder,
        shares_newest_first,
        round_shares,
        network_difficulty,
        start_ms: round_start_ms,
        end_ms: round_end_ms,
    } = *round;
    // The caller cut the round at share records, (previous block's share, this block's
    // share]: a share belongs to one round, never to two or none.
    let in_round = || shares_newest_first.iter().take(round_shares);
    let weights = match scheme {
        // The per-share schemes already paid; the block belongs to the pool.
        Scheme::Pps | Scheme::Fpps => {
            return BlockSplit {
                pool: reward,
                credits: BTreeMap::new(),
            }
        }
        Scheme::Solo => BTreeMap::from([(finder.to_string(), 1)]),
        Scheme::Pplns { window_factor } => pplns_weights(
            shares_newest_first,
            work_units(network_difficulty * window_factor.max(0.0)),
        ),
        Scheme::Prop => prop_weights(in_round()),
        Scheme::Pplnt { presence_min } => {
            let round: Vec<RoundShare> = in_round().cloned().collect();
            pplnt_weights(&round, round_start_ms, round_end_ms, presence_min)
        }
    };
    let fee = fee_of(reward, fee_ppm);
    let credits = split_exact(reward - fee, &weights);
    // With no share to credit (an empty window), the pool holds the reward.
    let credited: u64 = credits.values().sum();
    BlockSplit {
        pool: reward - credited,
        credits,
    }
}

/// The PPS credit of one share: (1 − fee) · (d_share / d_network) · `block_value`, rounded
/// down. FPPS passes subsidy plus the recent mean of fees per block as `block_value`.
pub fn per_share_credit(
    block_value: u64,
    fee_ppm: u64,
    share_difficulty: f64,
    network_difficulty: f64,
) -> u64 {
    let (share, network) = (work_units(share_difficulty), work_units(network_difficulty));
    if network == 0 {
        return 0;
    }
    let net_value = block_value - fee_of(block_value, fee_ppm);
    let shift = (128 - share.max(network).leading_zeros()).saturating_sub(WEIGHT_BITS_MAX);
    let (share, network) = (share >> shift, (network >> shift).max(1));
    (u128::from(net_value) * share / network).min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weights summing to exactly `WEIGHT_BITS_MAX` bits are used unshifted; one bit more
    /// and they are shifted by one. Either way the largest amount any coin has is split
    /// without overflow and to the last unit.
    #[test]
    fn weights_at_their_bit_limit_split_exactly() {
        const AMOUNT: u64 = (1 << 51) - 1;
        let at_limit = BTreeMap::from([
            ("a".to_string(), (1u128 << 63) - 1),
            ("b".to_string(), 1u128 << 63),
        ]);
        let total: u128 = at_limit.values().sum();
        assert_eq!(128 - total.leading_zeros(), WEIGHT_BITS_MAX);
        let split = split_exact(AMOUNT, &at_limit);
        assert_eq!(split.values().sum::<u64>(), AMOUNT);
        assert!(split["b"] >= split["a"] && split["b"] - split["a"] <= 1);

        let past = BTreeMap::from([
            ("a".to_string(), 1u128 << 63),
            ("b".to_string(), 1u128 << 63),
        ]);
        let total: u128 = past.values().sum();
        assert_eq!(128 - total.leading_zeros(), WEIGHT_BITS_MAX + 1);
        let split = split_exact(AMOUNT, &past);
        assert_eq!(split.values().sum::<u64>(), AMOUNT);
        assert!(split["a"].abs_diff(split["b"]) <= 1);
    }

    fn share(address: &str, difficulty: f64, at_ms: u64) -> RoundShare {
        RoundShare {
            address: address.into(),
            difficulty,
            accepted_at_ms: at_ms,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn split(
        scheme: Scheme,
        reward: u64,
        fee_ppm: u64,
        finder: &str,
        shares_newest_first: &[RoundShare],
        network_difficulty: f64,
        start_ms: u64,
        end_ms: u64,
    ) -> BlockSplit {
        // As the share history cuts a round: from the block's share back, (start, end].
        let shares_newest_first: Vec<RoundShare> = shares_newest_first
            .iter()
            .filter(|s| s.accepted_at_ms <= end_ms)
            .cloned()
            .collect();
        let round_shares = shares_newest_first
            .iter()
            .take_while(|s| s.accepted_at_ms > start_ms)
            .count();
        let round = Round {
            finder,
            shares_newest_first: &shares_newest_first,
            round_shares,
            network_difficulty,
            start_ms,
            end_ms,
        };
        split_block(scheme, reward, fee_ppm, &round)
    }

    fn credits(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(a, v)| (a.to_string(), *v)).collect()
    }

    #[test]
    fn rounding_gives_every_unit_to_someone() {
        let weights: BTreeMap<String, u128> = [("a", 1), ("b", 1), ("c", 1)]
            .map(|(a, w)| (a.to_string(), w))
            .into();
        assert_eq!(
            split_exact(10, &weights),
            credits(&[("a", 4), ("b", 3), ("c", 3)])
        );
        assert_eq!(
            split_exact(100, &weights),
            credits(&[("a", 34), ("b", 33), ("c", 33)])
        );
        // Largest remainder wins the odd unit: 7 split 2:1 is 4.67 / 2.33 → 5 / 2.
        let weights: BTreeMap<String, u128> =
            [("a", 2), ("b", 1)].map(|(a, w)| (a.to_string(), w)).into();
        assert_eq!(split_exact(7, &weights), credits(&[("a", 5), ("b", 2)]));
    }

    #[test]
    fn pplns_counts_the_oldest_share_in_part() {
        // Window 10 difficulty (factor 10 × network difficulty 1); newest first 4, 4, 4:
        // the third share counts for 2 of its 4.
        let shares = [share("a", 4.0, 3), share("b", 4.0, 2), share("c", 4.0, 1)];
        let split = split(
            Scheme::Pplns {
                window_factor: 10.0,
            },
            1000,
            0,
            "a",
            &shares,
            1.0,
            0,
            3,
        );
        assert_eq!(
            split.credits,
            credits(&[("a", 400), ("b", 400), ("c", 200)])
        );
        assert_eq!(split.pool, 0);
    }

    #[test]
    fn pplns_weighs_a_difficulty_change_inside_the_window() {
        // Newest first: a at difficulty 2 twice (4), b at 1 four times (4), c outside.
        let shares = [
            share("a", 2.0, 7),
            share("a", 2.0, 6),
            share("b", 1.0, 5),
            share("b", 1.0, 4),
            share("b", 1.0, 3),
            share("b", 1.0, 2),
            share("c", 1.0, 1),
        ];
        let split = split(
            Scheme::Pplns { window_factor: 8.0 },
            1000,
            0,
            "a",
            &shares,
            1.0,
            0,
            7,
        );
        assert_eq!(split.credits, credits(&[("a", 500), ("b", 500)]));
    }

    #[test]
    fn the_fee_comes_off_first_and_everything_adds_up() {
        let shares = [share("a", 1.0, 2), share("b", 2.0, 1)];
        // 1 % of 1,000,001 is 10,000 (rounded down); 990,001 split 1:2.
        let split = split(Scheme::Prop, 1_000_001, 10_000, "a", &shares, 1.0, 0, 2);
        assert_eq!(split.pool, 10_000);
        assert_eq!(split.credits, credits(&[("a", 330_000), ("b", 660_001)]));
        assert_eq!(split.pool + split.credits.values().sum::<u64>(), 1_000_001);
    }

    #[test]
    fn solo_pays_the_finder_less_the_fee() {
        let split = split(Scheme::Solo, 625_000_000, 5_000, "finder", &[], 1.0, 0, 1);
        assert_eq!(split.pool, 3_125_000);
        assert_eq!(split.credits, credits(&[("finder", 621_875_000)]));
    }

    #[test]
    fn prop_counts_only_the_round() {
        let shares = [
            share("a", 1.0, 200),
            share("b", 1.0, 150),
            share("old", 5.0, 50),
        ];
        let split = split(Scheme::Prop, 100, 0, "a", &shares, 1.0, 100, 200);
        assert_eq!(split.credits, credits(&[("a", 50), ("b", 50)]));
    }

    #[test]
    fn pplnt_scales_a_miner_present_for_part_of_the_round() {
        // Round (0, 1000] ms. a mines all of it; b only the last 10 %, below a 50 % minimum,
        // so b's 2 difficulty counts as 0.2 against a's 2.
        let shares = [
            share("a", 1.0, 1000),
            share("b", 1.0, 1000),
            share("b", 1.0, 900),
            share("a", 1.0, 1),
        ];
        let split = split(
            Scheme::Pplnt { presence_min: 0.5 },
            2200,
            0,
            "a",
            &shares,
            1.0,
            0,
            1000,
        );
        assert_eq!(split.credits, credits(&[("a", 2000), ("b", 200)]));
        // Uncredited block records (difficulty 0) of b early in the round give b no
        // presence and no weight.
        let with_records = [
            share("a", 1.0, 1000),
            share("b", 1.0, 1000),
            share("b", 1.0, 900),
            share("b", 0.0, 2),
            share("a", 1.0, 1),
        ];
        let split_with_records = super::tests::split(
            Scheme::Pplnt { presence_min: 0.5 },
            2200,
            0,
            "a",
            &with_records,
            1.0,
            0,
            1000,
        );
        assert_eq!(split_with_records.credits, split.credits);
    }

    /// Rounds are half-open, (start, end]: a share in the millisecond (or, with the data
    /// plane's whole-second times, the second) a round starts at belongs to the round
    /// before, so PROP never pays it from two blocks.
    #[test]
    fn a_share_at_the_round_start_belongs_to_the_round_before() {
        let shares = [share("a", 1.0, 2000), share("b", 1.0, 1000)];
        let split = split(Scheme::Prop, 100, 0, "a", &shares, 1.0, 1000, 2000);
        assert_eq!(split.credits, credits(&[("a", 100)]));
    }

    #[test]
    fn an_empty_window_leaves_the_reward_with_the_pool() {
        let split = split(
            Scheme::Pplns { window_factor: 2.0 },
            500,
            0,
            "a",
            &[],
            1.0,
            0,
            1,
        );
        assert_eq!(
            split,
            BlockSplit {
                pool: 500,
                credits: BTreeMap::new()
            }
        );
    }

    #[test]
    fn per_share_credits_follow_the_pps_formula() {
        // 50 coins, 2 % fee, share difficulty 1 against network 1000: 0.98 · 5e9 / 1000.
        assert_eq!(
            per_share_credit(5_000_000_000, 20_000, 1.0, 1000.0),
            4_900_000
        );
        // FPPS is the same formula over subsidy plus mean fees: (5e9 + 1e8) · 0.98 / 1000.
        assert_eq!(
            per_share_credit(5_100_000_000, 20_000, 1.0, 1000.0),
            4_998_000
        );
        assert_eq!(per_share_credit(5_000_000_000, 0, 1.0, 0.0), 0);
        let split = split(
            Scheme::Pps,
            700,
            20_000,
            "a",
            &[share("a", 1.0, 1)],
            1.0,
            0,
            1,
        );
        assert_eq!(
            split,
            BlockSplit {
                pool: 700,
                credits: BTreeMap::new()
            }
        );
    }

    #[test]
    fn huge_weights_do_not_overflow_and_still_add_up() {
        let weights: BTreeMap<String, u128> =
            [("a", u128::MAX / 4), ("b", u128::MAX / 4), ("c", 7)]
                .map(|(a, w)| (a.to_string(), w))
                .into();
        let split = split_exact(2_100_000_000_000_000, &weights);
        assert_eq!(split.values().sum::<u64>(), 2_100_000_000_000_000);
        assert_eq!(split["a"], split["b"]);
    }
}
