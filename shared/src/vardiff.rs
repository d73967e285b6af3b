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
/// Target share intervals without a share after which a miner is taken to be silent: its
/// difficulty is lowered by `VARDIFF_STEP_FACTOR_MAX` at once, and again after as many more
/// (as ckpool does), instead of waiting for a share or a job that may not come for long.
/// A miner that overstates its hash rate (or suggests a difficulty it cannot reach) is so
/// brought down to what it can do. Six intervals, in a window with no share yet: an honest
/// miner at the right difficulty goes that long without a share with probability e^-6
/// (0.25 %), about once every 7 hours at one retarget window a minute. The credit rule is untouched: a lowered difficulty takes effect like any
/// other change.
pub const VARDIFF_SILENT_SHARE_INTERVALS: u64 = 6;
/// Relative changes smaller than this are not worth a `mining.set_difficulty`.
const VARDIFF_DEAD_BAND: f64 = 0.3;

#[derive(Clone, Debug)]
pub struct Vardiff {
    config: VardiffConfig,
    window_start_s: Option<u64>,
    shares: u32,
    /// Since when the miner has been quiet: its last submission, or the last change of
    /// its difficulty (silence counts from when it learned what to meet).
    quiet_since_s: Option<u64>,
}

impl Vardiff {
    pub fn new(config: VardiffConfig) -> Self {
        Vardiff {
            config,
            window_start_s: None,
            shares: 0,
            quiet_since_s: None,
        }
    }

    /// The miner submitted something (any share, good or not), or its difficulty changed:
    /// it is not silent as of `now_s`.
    pub fn note_activity(&mut self, now_s: u64) {
        self.quiet_since_s = Some(now_s);
    }

    /// Counts an accepted share.
    pub fn on_share(&mut self) {
        self.shares = self.shares.saturating_add(1);
    }

    /// When the miner counts as silent if nothing comes: `VARDIFF_SILENT_SHARE_INTERVALS`
    /// target intervals after its last submission, its last difficulty change or the
    /// start of the window, whichever is latest. `None` before the first window starts
    /// and once a share came in this window: the normal retarget then has what it needs,
    /// and an honest miner's long gap between two shares is not mistaken for silence.
    pub fn silent_at_s(&self) -> Option<u64> {
        let start = self.window_start_s?;
        if self.shares > 0 {
            return None;
        }
        let since = self.quiet_since_s.map_or(start, |quiet| quiet.max(start));
        let interval_s = self.config.share_interval_target_s.max(1.0).ceil() as u64;
        Some(since + VARDIFF_SILENT_SHARE_INTERVALS * interval_s)
    }

    /// The lowered difficulty if the miner is silent at `now_s` (see `silent_at_s`),
    /// starting a new window and a new quiet period; `None` otherwise or at the floor.
    pub fn retarget_silent(&mut self, now_s: u64, current: f64) -> Option<f64> {
        if self.silent_at_s().is_none_or(|at| now_s < at) {
            return None;
        }
        self.window_start_s = Some(now_s);
        self.shares = 0;
        self.quiet_since_s = Some(now_s);
        let next = (current / VARDIFF_STEP_FACTOR_MAX).max(self.config.difficulty_min);
        (next < current).then_some(next)
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
        // One share short of the burst: no early retarget.
        for _ in 1..VARDIFF_BURST_SHARES_MAX {
            v.on_share();
        }
        assert_eq!(v.retarget(102, 8.0), None);
        v.on_share();
        assert_eq!(v.retarget(102, 8.0), Some(32.0));
    }

    /// One retarget moves by exactly `VARDIFF_STEP_FACTOR_MAX` when the shares call for
    /// that much, and by no more when they call for more, both ways.
    #[test]
    fn a_retarget_steps_at_most_the_step_limit_either_way() {
        let step = VARDIFF_STEP_FACTOR_MAX;
        // Shares in one 60 s window against a 10 s target: 6 is on target, so 6 × step
        // asks for exactly the limit and one more share for more.
        let on_target = 6.0;
        let after = |shares: u32, window_s: u64, current: f64| {
            let mut v = Vardiff::new(VardiffConfig {
                retarget_interval_s: window_s,
                difficulty_min: 1e-3,
                difficulty_max: 1e6,
                ..VardiffConfig::default()
            });
            v.retarget(0, current);
            for _ in 0..shares {
                v.on_share();
            }
            v.retarget(window_s, current)
        };
        let at_limit = (on_target * step) as u32;
        assert_eq!(after(at_limit, 60, 8.0), Some(8.0 * step));
        assert_eq!(after(at_limit + 1, 60, 8.0), Some(8.0 * step));
        // Down: 3 shares in a window of 3 × step target intervals are exactly 1/step of
        // the rate; 1 share asks for less.
        let slow_window_s = (3.0 * step * 10.0) as u64;
        assert_eq!(after(3, slow_window_s, 8.0), Some(8.0 / step));
        assert_eq!(after(1, slow_window_s, 8.0), Some(8.0 / step));
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

    /// A miner that sends nothing is lowered once `VARDIFF_SILENT_SHARE_INTERVALS` target
    /// intervals pass without a share (not a second earlier), again after as many more,
    /// never below the floor; any submission (or difficulty change) starts the wait again,
    /// and a share in the window leaves it to the normal retarget.
    #[test]
    fn a_silent_miner_is_lowered_after_its_share_intervals() {
        let mut v = vardiff();
        let silent_s = VARDIFF_SILENT_SHARE_INTERVALS * 10;
        assert_eq!(v.silent_at_s(), None, "no window yet");
        v.retarget(100, 64.0);
        assert_eq!(v.silent_at_s(), Some(100 + silent_s));
        assert_eq!(v.retarget_silent(100 + silent_s - 1, 64.0), None);
        assert_eq!(v.retarget_silent(100 + silent_s, 64.0), Some(16.0));
        assert_eq!(v.retarget_silent(100 + 2 * silent_s - 1, 16.0), None);
        assert_eq!(v.retarget_silent(100 + 2 * silent_s, 16.0), Some(4.0));
        assert_eq!(
            v.retarget_silent(100 + 3 * silent_s, 1.0),
            Some(0.5),
            "the floor"
        );
        assert_eq!(v.retarget_silent(100 + 4 * silent_s, 0.5), None);
        // A submission (or a difficulty change) starts the quiet period again.
        v.note_activity(100 + 5 * silent_s);
        assert_eq!(v.silent_at_s(), Some(100 + 6 * silent_s));
        assert_eq!(v.retarget_silent(100 + 6 * silent_s - 1, 8.0), None);
        assert_eq!(v.retarget_silent(100 + 6 * silent_s, 8.0), Some(2.0));
        // A share in the window: the normal retarget decides, silence does not.
        v.on_share();
        assert_eq!(v.silent_at_s(), None);
        assert_eq!(v.retarget_silent(100 + 20 * silent_s, 8.0), None);
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
