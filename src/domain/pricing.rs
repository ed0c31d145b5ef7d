//! Turning a cart into a priced order: line totals, subtotal, tax, shipping.
//!
//! Rules (also in the README):
//! - `line_total = quantity × unit_price_minor`, checked.
//! - `subtotal = Σ line_total`, checked.
//! - `tax = subtotal × rate`, the rate in parts per million from the region's
//!   tax table, rounded half-up once, on the subtotal (never per line).
//! - `shipping = 0` when `subtotal ≥ free_from`, else the flat fee. Tax is not
//!   charged on shipping.
//! - `total = subtotal + tax + shipping`, checked.
//!
//! Any violation is a [`Rejection`] with a human-readable reason; pricing never
//! panics on hostile input.

use super::currency::{Currency, UnknownCurrency};
use super::money::{Money, Overflow};

/// Upper bound on lines per cart; a real cart never comes close.
pub const MAX_LINES: usize = 1_000;
pub const MAX_SKU_LEN: usize = 64;
pub const MAX_NAME_LEN: usize = 512;

/// A cart line as it arrived, not yet trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLine {
    pub sku: String,
    pub name: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedLine {
    pub sku: String,
    pub name: String,
    pub quantity: i32,
    pub unit_price: Money,
    pub line_total: Money,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedOrder {
    pub currency: Currency,
    pub lines: Vec<PricedLine>,
    pub subtotal: Money,
    pub tax_rate_ppm: u32,
    pub tax: Money,
    pub shipping: Money,
    pub total: Money,
}

impl PricedOrder {
    /// Units across all lines (3 × A + 1 × B = 4).
    pub fn item_count(&self) -> i64 {
        self.lines.iter().map(|l| i64::from(l.quantity)).sum()
    }
}

/// Flat-fee shipping with a free-shipping threshold, in the order's currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShippingRule {
    pub flat_fee: Money,
    /// Orders whose subtotal reaches this amount ship free; `None`: never free.
    pub free_from: Option<Money>,
}

impl ShippingRule {
    /// The rule for a currency that has no row in `shipping_rates`: a flat fee
    /// of 5 major units, free from 50 major units.
    pub fn default_for(currency: Currency) -> Self {
        let major = currency.minor_per_major();
        ShippingRule {
            flat_fee: Money::from_minor(5 * major),
            free_from: Some(Money::from_minor(50 * major)),
        }
    }

    fn fee_for(&self, subtotal: Money) -> Money {
        match self.free_from {
            Some(threshold) if subtotal >= threshold => Money::ZERO,
            _ => self.flat_fee,
        }
    }
}

/// Why a checkout cannot become an order. The text is stored and published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("cart has no items")]
    NoItems,
    #[error("cart has {0} lines, more than the {MAX_LINES} allowed")]
    TooManyLines(usize),
    #[error("item {line} ({sku}): quantity {quantity} must be at least 1")]
    NonPositiveQuantity {
        line: usize,
        sku: String,
        quantity: i32,
    },
    #[error("item {line} ({sku}): unit price {price} must not be negative")]
    NegativePrice {
        line: usize,
        sku: String,
        price: i64,
    },
    #[error("item {line}: sku must be 1 to {MAX_SKU_LEN} characters")]
    BadSku { line: usize },
    #[error("item {line}: name must be at most {MAX_NAME_LEN} characters")]
    NameTooLong { line: usize },
    #[error(transparent)]
    UnknownCurrency(#[from] UnknownCurrency),
    #[error("order total overflows: {0}")]
    Overflow(&'static str),
    #[error("{0}")]
    Field(String),
}

/// Validates and prices a cart. `tax_rate_ppm` and `shipping` come from the
/// region and currency tables (see `store::pricing_tables`).
pub fn price_cart(
    currency: &str,
    items: &[CartLine],
    tax_rate_ppm: u32,
    shipping: impl FnOnce(Currency) -> ShippingRule,
) -> Result<PricedOrder, Rejection> {
    let currency = Currency::parse(currency)?;
    if items.is_empty() {
        return Err(Rejection::NoItems);
    }
    if items.len() > MAX_LINES {
        return Err(Rejection::TooManyLines(items.len()));
    }
    let mut lines = Vec::with_capacity(items.len());
    let mut subtotal = Money::ZERO;
    for (i, item) in items.iter().enumerate() {
        let line = i + 1;
        let sku_len = item.sku.chars().count();
        if sku_len == 0 || sku_len > MAX_SKU_LEN {
            return Err(Rejection::BadSku { line });
        }
        if item.name.chars().count() > MAX_NAME_LEN {
            return Err(Rejection::NameTooLong { line });
        }
        if item.quantity <= 0 {
            return Err(Rejection::NonPositiveQuantity {
                line,
                sku: item.sku.clone(),
                quantity: item.quantity,
            });
        }
        if item.unit_price_minor < 0 {
            return Err(Rejection::NegativePrice {
                line,
                sku: item.sku.clone(),
                price: item.unit_price_minor,
            });
        }
        let unit_price = Money::from_minor(item.unit_price_minor);
        let line_total = unit_price
            .checked_mul(i64::from(item.quantity))
            .map_err(|Overflow| Rejection::Overflow("a line total"))?;
        subtotal = subtotal
            .checked_add(line_total)
            .map_err(|Overflow| Rejection::Overflow("the subtotal"))?;
        lines.push(PricedLine {
            sku: item.sku.clone(),
            name: item.name.clone(),
            quantity: item.quantity,
            unit_price,
            line_total,
        });
    }
    let tax = subtotal
        .apply_rate_ppm(tax_rate_ppm)
        .map_err(|Overflow| Rejection::Overflow("the tax"))?;
    let shipping = shipping(currency).fee_for(subtotal);
    let total = subtotal
        .checked_add(tax)
        .and_then(|t| t.checked_add(shipping))
        .map_err(|Overflow| Rejection::Overflow("the total"))?;
    Ok(PricedOrder {
        currency,
        lines,
        subtotal,
        tax_rate_ppm,
        tax,
        shipping,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: i32, unit_price_minor: i64) -> CartLine {
        CartLine {
            sku: sku.into(),
            name: format!("{sku} name"),
            quantity,
            unit_price_minor,
        }
    }

    fn usd_rule(_: Currency) -> ShippingRule {
        ShippingRule {
            flat_fee: Money::from_minor(499),
            free_from: Some(Money::from_minor(5_000)),
        }
    }

    #[test]
    fn a_small_cart_pays_tax_on_the_subtotal_and_flat_shipping() {
        let order = price_cart(
            "USD",
            &[line("A", 3, 333), line("B", 1, 1)],
            82_500,
            usd_rule,
        )
        .unwrap();
        assert_eq!(order.subtotal.minor(), 1000);
        assert_eq!(order.tax.minor(), 83); // 82.5 rounds half-up
        assert_eq!(order.shipping.minor(), 499);
        assert_eq!(order.total.minor(), 1000 + 83 + 499);
        assert_eq!(order.item_count(), 4);
        assert_eq!(order.lines[0].line_total.minor(), 999);
    }

    #[test]
    fn tax_is_rounded_once_on_the_subtotal_not_per_line() {
        // Per line: 3 × round(0.5) = 3; on the subtotal: round(1.5) = 2.
        let cart = [line("A", 1, 5), line("B", 1, 5), line("C", 1, 5)];
        let order = price_cart("USD", &cart, 100_000, usd_rule).unwrap();
        assert_eq!(order.tax.minor(), 2);
    }

    #[test]
    fn shipping_is_free_from_the_threshold() {
        let order = price_cart("USD", &[line("A", 1, 5_000)], 0, usd_rule).unwrap();
        assert_eq!(order.shipping, Money::ZERO);
        let order = price_cart("USD", &[line("A", 1, 4_999)], 0, usd_rule).unwrap();
        assert_eq!(order.shipping.minor(), 499);
    }

    #[test]
    fn the_default_shipping_rule_scales_with_the_currency_exponent() {
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(ShippingRule::default_for(jpy).flat_fee.minor(), 5);
        let kwd = Currency::parse("KWD").unwrap();
        assert_eq!(
            ShippingRule::default_for(kwd).free_from,
            Some(Money::from_minor(50_000))
        );
    }

    #[test]
    fn invalid_carts_are_rejected_with_a_reason() {
        let cases: Vec<(&str, Vec<CartLine>, &str)> = vec![
            ("USD", vec![], "cart has no items"),
            (
                "USD",
                vec![line("A", 0, 100)],
                "quantity 0 must be at least 1",
            ),
            ("USD", vec![line("A", -2, 100)], "quantity -2"),
            (
                "USD",
                vec![line("A", 1, -1)],
                "unit price -1 must not be negative",
            ),
            (
                "ZZZ",
                vec![line("A", 1, 1)],
                "unknown currency code \"ZZZ\"",
            ),
            ("USD", vec![line("", 1, 1)], "sku must be"),
            (
                "USD",
                vec![line("A", 2, i64::MAX)],
                "overflows: a line total",
            ),
            (
                "USD",
                vec![line("A", 1, i64::MAX), line("B", 1, 1)],
                "overflows: the subtotal",
            ),
            (
                "USD",
                vec![line("A", 1, i64::MAX - 100)],
                "overflows: the total",
            ),
        ];
        for (currency, items, expected) in cases {
            let err = price_cart(currency, &items, 50_000, usd_rule).unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{err} should mention {expected:?}"
            );
        }
        let many: Vec<_> = (0..=MAX_LINES)
            .map(|i| line(&format!("S{i}"), 1, 1))
            .collect();
        assert_eq!(
            price_cart("USD", &many, 0, usd_rule),
            Err(Rejection::TooManyLines(MAX_LINES + 1))
        );
    }

    #[test]
    fn free_items_are_allowed() {
        let order = price_cart("EUR", &[line("GIFT", 1, 0)], 190_000, usd_rule).unwrap();
        assert_eq!(order.subtotal, Money::ZERO);
        assert_eq!(order.tax, Money::ZERO);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_line() -> impl Strategy<Value = CartLine> {
            ("[A-Z]{0,70}", ".{0,20}", any::<i32>(), any::<i64>()).prop_map(
                |(sku, name, quantity, unit_price_minor)| CartLine {
                    sku,
                    name,
                    quantity,
                    unit_price_minor,
                },
            )
        }

        proptest! {
            /// Whatever the cart, pricing answers (never panics), and an
            /// order it prices adds up to the minor unit.
            #[test]
            fn any_cart_prices_or_is_rejected_and_priced_carts_add_up(
                lines in proptest::collection::vec(any_line(), 0..20),
                rate in 0u32..=1_000_000,
                currency in prop_oneof![Just("USD".to_string()), Just("JPY".to_string()), Just("KWD".to_string()), "[A-Z]{3}"],
            ) {
                if let Ok(order) = price_cart(&currency, &lines, rate, usd_rule) {
                    let subtotal: i128 = order.lines.iter().map(|l| i128::from(l.line_total.minor())).sum();
                    prop_assert_eq!(subtotal, i128::from(order.subtotal.minor()));
                    for l in &order.lines {
                        prop_assert!(l.quantity >= 1 && l.unit_price.minor() >= 0);
                        prop_assert_eq!(i128::from(l.line_total.minor()), i128::from(l.quantity) * i128::from(l.unit_price.minor()));
                    }
                    let exact = i128::from(order.subtotal.minor()) * i128::from(rate);
                    let tax = i128::from(order.tax.minor()) * 1_000_000;
                    prop_assert!((tax - exact).abs() * 2 <= 1_000_000, "tax rounds to the nearest minor unit");
                    prop_assert_eq!(
                        i128::from(order.total.minor()),
                        i128::from(order.subtotal.minor()) + i128::from(order.tax.minor()) + i128::from(order.shipping.minor())
                    );
                }
            }
        }
    }
}
