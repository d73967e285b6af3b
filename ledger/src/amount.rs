//! Amounts of a coin: exact integers of its smallest unit (10^-8 coin: the satoshi, the
//! litoshi), read and written as decimal coins. This is the workspace's one amount codec:
//! the configuration, the API, the exchange and the node wallet all parse and print
//! amounts here, so no two of them can disagree on a digit, and no float ever holds one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Decimal places of a coin's smallest unit.
pub const COIN_DECIMALS: u32 = 8;
/// Smallest units in one coin.
pub const UNITS_PER_COIN: u64 = 10u64.pow(COIN_DECIMALS);

/// An exact amount of a coin, in its smallest unit. `Display` writes it as coins with all
/// eight decimals; `FromStr` reads coins with at most eight (`0.01`, `12`, `.5`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Amount(u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmountError {
    #[error("{0:?} is not an amount in coins with at most {COIN_DECIMALS} decimals")]
    Malformed(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub const fn from_units(units: u64) -> Self {
        Amount(units)
    }

    pub const fn units(self) -> u64 {
        self.0
    }

    /// Reads coins written in decimal, exactly; surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, AmountError> {
        let text = text.trim();
        let malformed = || AmountError::Malformed(text.to_string());
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() && fraction.is_empty()
            || !digits_only(whole)
            || !digits_only(fraction)
            || fraction.len() > COIN_DECIMALS as usize
        {
            return Err(malformed());
        }
        let too_large = || AmountError::TooLarge(text.to_string());
        // Digits only, so a failed parse is an overflow.
        let whole: u64 = match whole {
            "" => 0,
            digits => digits.parse().map_err(|_| too_large())?,
        };
        let fraction_units: u64 = match fraction {
            "" => 0,
            digits => {
                digits.parse::<u64>().map_err(|_| malformed())?
                    * 10u64.pow(COIN_DECIMALS - digits.len() as u32)
            }
        };
        whole
            .checked_mul(UNITS_PER_COIN)
            .and_then(|units| units.checked_add(fraction_units))
            .map(Amount)
            .ok_or_else(too_large)
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    fn from_str(text: &str) -> Result<Self, AmountError> {
        Amount::parse(text)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&coins_text(u128::from(self.0)))
    }
}

impl From<Amount> for u64 {
    fn from(amount: Amount) -> u64 {
        amount.0
    }
}

/// `units` of a coin as coins with all eight decimals: the form Bitcoin Core's RPC takes
/// exactly (as a JSON string it never passes through a float) and the API shows. Wider
/// than `Amount` for sums that may pass it, such as an exchange's price × quantity.
pub fn coins_text(units: u128) -> String {
    let per_coin = u128::from(UNITS_PER_COIN);
    format!("{}.{:08}", units / per_coin, units % per_coin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_parsed_exactly() {
        let units = |text: &str| Amount::parse(text).map(Amount::units);
        assert_eq!(units("0.01"), Ok(1_000_000));
        assert_eq!(units("12"), Ok(1_200_000_000));
        assert_eq!(units(".5"), Ok(50_000_000));
        assert_eq!(units(" 3. "), Ok(300_000_000));
        assert_eq!(units("0.00000001"), Ok(1));
        // The edge: u64::MAX units parse, one more does not.
        assert_eq!(units("184467440737.09551615"), Ok(u64::MAX));
        assert!(matches!(
            units("184467440737.09551616"),
            Err(AmountError::TooLarge(_))
        ));
        assert!(matches!(
            units("99999999999999999999999"),
            Err(AmountError::TooLarge(_))
        ));
        for bad in [
            "",
            ".",
            "0.000000001",
            "1e3",
            "-1",
            "+1",
            "1.2.3",
            "1 000",
            "١",
        ] {
            assert!(
                matches!(units(bad), Err(AmountError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn amounts_are_written_as_exact_decimals() {
        assert_eq!(coins_text(1), "0.00000001");
        assert_eq!(coins_text(100_000_000), "1.00000000");
        assert_eq!(coins_text(2_100_000_000_000_000), "21000000.00000000");
        assert_eq!(coins_text(1_234_567_891), "12.34567891");
        assert_eq!(
            Amount::from_units(u64::MAX).to_string(),
            "184467440737.09551615"
        );
        assert_eq!(
            coins_text(u128::from(u64::MAX) * 3),
            "553402322211.28654845"
        );
    }

    /// Whatever an amount is, writing it and reading it back gives it again.
    #[test]
    fn written_amounts_read_back_to_themselves() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            // xorshift: a fixed seed, so a failure repeats.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            for units in [state, state >> 20, state % 1_000, u64::MAX - state % 3] {
                let amount = Amount::from_units(units);
                assert_eq!(amount.to_string().parse(), Ok(amount));
            }
        }
    }
}
