//! Money as integer minor units with checked arithmetic. No floats anywhere.

use serde::Serialize;

/// An amount in minor units of some currency (cents for USD). The currency is
/// carried by the order, not by each amount, so this is a checked `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Money(i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("amount overflows a 64-bit count of minor units")]
pub struct Overflow;

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn from_minor(minor: i64) -> Self {
        Money(minor)
    }

    pub const fn minor(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Money) -> Result<Money, Overflow> {
        self.0.checked_add(other.0).map(Money).ok_or(Overflow)
    }

    pub fn checked_mul(self, factor: i64) -> Result<Money, Overflow> {
        self.0.checked_mul(factor).map(Money).ok_or(Overflow)
    }

    /// `self × ppm / 1_000_000`, rounded half away from zero (half-up for the
    /// non-negative amounts we price), computed in 128 bits so it cannot wrap.
    pub fn apply_rate_ppm(self, ppm: u32) -> Result<Money, Overflow> {
        let product = i128::from(self.0) * i128::from(ppm);
        let million = 1_000_000i128;
        let quotient = product / million;
        let remainder = product % million;
        let rounded = if remainder.abs() * 2 >= million {
            quotient + product.signum()
        } else {
            quotient
        };
        i64::try_from(rounded).map(Money).map_err(|_| Overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_rounds_half_up_to_the_minor_unit() {
        // 8.25 % of 10.10 = 0.83325 -> 0.83
        assert_eq!(Money(1010).apply_rate_ppm(82_500), Ok(Money(83)));
        // 10 % of 0.05 = 0.005 -> 0.01 (exactly half rounds up)
        assert_eq!(Money(5).apply_rate_ppm(100_000), Ok(Money(1)));
        // 10 % of 0.04 = 0.004 -> 0.00
        assert_eq!(Money(4).apply_rate_ppm(100_000), Ok(Money(0)));
        assert_eq!(Money(12345).apply_rate_ppm(0), Ok(Money(0)));
        assert_eq!(Money(12345).apply_rate_ppm(1_000_000), Ok(Money(12345)));
    }

    #[test]
    fn arithmetic_reports_overflow_instead_of_wrapping() {
        assert_eq!(Money(i64::MAX).checked_add(Money(1)), Err(Overflow));
        assert_eq!(Money(i64::MAX / 2 + 1).checked_mul(2), Err(Overflow));
        // a 100 % rate on the largest amount still fits; the 128-bit
        // intermediate keeps a large rate on a large amount from wrapping.
        assert_eq!(
            Money(i64::MAX).apply_rate_ppm(1_000_000),
            Ok(Money(i64::MAX))
        );
    }
}
