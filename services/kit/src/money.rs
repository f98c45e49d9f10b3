//! Amounts shared by the services that charge and the one that bills: one rounding rule,
//! so a cost computed on either side is the same number.

/// What `fuel` units cost at `micros_per_gfuel` micro-units per billion, rounded up to a
/// whole micro-unit (any fuel at a non-zero price costs at least one).
pub fn fuel_cost(micros_per_gfuel: i64, fuel: u64) -> i64 {
    let micros = (fuel as i128 * micros_per_gfuel.max(0) as i128 + 999_999_999) / 1_000_000_000;
    micros.min(i64::MAX as i128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuel_rounds_up_to_a_micro_unit() {
        // 2,000 per billion fuel: a 247 M-fuel Python run costs 494 micro-units.
        assert_eq!(fuel_cost(2_000, 247_000_000), 494);
        assert_eq!(fuel_cost(2_000, 1), 1);
        assert_eq!(fuel_cost(2_000, 0), 0);
        assert_eq!(fuel_cost(0, 1_000_000), 0);
        assert_eq!(fuel_cost(i64::MAX, u64::MAX), i64::MAX);
    }
}
