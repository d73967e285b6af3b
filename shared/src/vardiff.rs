//! Variable difficulty: keeps each connection near a target share interval, so a 1 TH/s
//! ASIC and a CPU miner both send a few shares a minute. Sans-IO: time is an argument.
//!
//! The rule: over a window of `retarget_interval_s` (or sooner, once a burst of shares
//! shows the difficulty is far too low), compare the observed seconds per share with the
//! target and scale the difficulty by their ratio, limited to a factor of four per step.
//! Changes under 30 % are ignored, so share-time noise does not make it oscillate.

/// Settings shared by every connection of a front end.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VardiffConfig {
    pub share_interval_target_s: f64,
    pub retarget_interval_s: u64,
    pub difficulty_min: f64,
    pub difficulty_max: f64,
}

impl Default for VardiffConfig {
    fn default() -> Self {
        VardiffConfig {
            share_interval_target_s: 10.0,
            retarget_interval_s: 60,
            difficulty_min: crate::limits::DIFFICULTY_MIN,
            difficulty_max: crate::limits::DIFFICULTY_MAX,
        }
    }
}

/// Shares in a window that trigger an early retarget: the difficulty is far too low.
pub const VARDIFF_BURST_SHARES_MAX: u32 = 20;
/// Largest factor one retarget may change the difficulty by, up or down.
pub const VARDIFF_STEP_FACTOR_MAX: f64 = 4.0;
/// Relative changes smaller than this are not worth a `mining.set_difficulty`.
const VARDIFF_DEAD_BAND: f64 = 0.3;

#[derive(Clone, Debug)]
pub struct Vardiff {
    config: VardiffConfig,
    window_start_s: Option<u64>,
    shares: u32,
}

impl Vardiff {
    pub fn new(config: VardiffConfig) -> Self {
        Vardiff {
            config,
            window_start_s: None,
            shares: 0,
        }
    }

    /// Counts an accepted share.
    pub fn on_share(&mut self) {
        self.shares = self.shares.saturating_add(1);
    }

    /// The new difficulty if it is time to change it, starting a new window either way
    /// once a window is complete.
    pub fn retarget(&mut self, now_s: u64, current: f64) -> Option<f64> {
        let start = *self.window_start_s.get_or_insert(now_s);
        let elapsed_s = now_s.saturating_sub(start);
        let burst = self.shares >= VARDIFF_BURST_SHARES_MAX && elapsed_s >= 1;
        if elapsed_s < self.config.retarget_interval_s && !burst {
            return None;
        }
        let factor = if self.shares == 0 {
            1.0 / VARDIFF_STEP_FACTOR_MAX
        } else {
            let observed_interval_s = elapsed_s as f64 / self.shares as f64;
            self.config.share_interval_target_s / observed_interval_s
        };
        self.window_start_s = Some(now_s);
        self.shares = 0;
        let factor = factor.clamp(1.0 / VARDIFF_STEP_FACTOR_MAX, VARDIFF_STEP_FACTOR_MAX);
        if (factor - 1.0).abs() < VARDIFF_DEAD_BAND {
            return None;
        }
        let next = (current * factor).clamp(self.config.difficulty_min, self.config.difficulty_max);
        (next != current).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vardiff() -> Vardiff {
        Vardiff::new(VardiffConfig {
            difficulty_min: 0.5,
            difficulty_max: 1000.0,
            ..VardiffConfig::default()
        })
    }

    #[test]
    fn on_target_rate_keeps_the_difficulty() {
        let mut v = vardiff();
        assert_eq!(v.retarget(0, 8.0), None);
        for _ in 0..6 {
            v.on_share();
        }
        assert_eq!(v.retarget(60, 8.0), None);
    }

    #[test]
    fn burst_raises_early_by_at_most_the_step_limit() {
        let mut v = vardiff();
        v.retarget(100, 8.0);
        for _ in 0..VARDIFF_BURST_SHARES_MAX {
            v.on_share();
        }
        assert_eq!(v.retarget(102, 8.0), Some(32.0));
    }

    #[test]
    fn silence_lowers_after_a_window_and_respects_the_floor() {
        let mut v = vardiff();
        v.retarget(0, 1.0);
        assert_eq!(v.retarget(59, 1.0), None);
        assert_eq!(v.retarget(60, 1.0), Some(0.5));
    }

    #[test]
    fn slow_shares_lower_the_difficulty_proportionally() {
        let mut v = vardiff();
        v.retarget(0, 100.0);
        v.on_share();
        v.on_share(); // 2 shares in 60 s: 30 s each, target 10 s
        let next = v.retarget(60, 100.0).unwrap();
        assert!((next - 100.0 / 3.0).abs() < 1e-9, "{next}");
    }

    #[test]
    fn ceiling_is_respected() {
        let mut v = vardiff();
        v.retarget(0, 900.0);
        for _ in 0..VARDIFF_BURST_SHARES_MAX {
            v.on_share();
        }
        assert_eq!(v.retarget(1, 900.0), Some(1000.0));
    }
}
