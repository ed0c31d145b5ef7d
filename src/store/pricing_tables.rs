//! Tax and shipping tables, read in the transaction that prices an order.

use std::collections::HashMap;

use sqlx::PgConnection;

use crate::domain::pricing::ShippingRule;
use crate::domain::{Currency, Money};

/// A snapshot of `tax_rates` and `shipping_rates`.
#[derive(Debug, Clone, Default)]
pub struct PricingTables {
    tax: HashMap<(String, String), u32>,
    shipping: HashMap<String, ShippingRule>,
    default_tax_ppm: u32,
}

impl PricingTables {
    pub async fn load(conn: &mut PgConnection, default_tax_ppm: u32) -> sqlx::Result<Self> {
        let tax = sqlx::query_as::<_, (String, String, i32)>(
            "SELECT country, region, rate_ppm FROM tax_rates",
        )
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(c, r, ppm)| ((c, r), u32::try_from(ppm).unwrap_or(0)))
        .collect();
        let shipping = sqlx::query_as::<_, (String, i64, Option<i64>)>(
            "SELECT currency, flat_fee_minor, free_from_minor FROM shipping_rates",
        )
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(c, fee, free)| {
            let rule = ShippingRule {
                flat_fee: Money::from_minor(fee),
                free_from: free.map(Money::from_minor),
            };
            (c, rule)
        })
        .collect();
        Ok(PricingTables {
            tax,
            shipping,
            default_tax_ppm,
        })
    }

    /// (country, region), then (country, ''), then the configured default.
    pub fn tax_rate_ppm(&self, country: &str, region: &str) -> u32 {
        let country = country.trim().to_ascii_uppercase();
        let region = region.trim().to_ascii_uppercase();
        self.tax
            .get(&(country.clone(), region))
            .or_else(|| self.tax.get(&(country, String::new())))
            .copied()
            .unwrap_or(self.default_tax_ppm)
    }

    pub fn shipping_rule(&self, currency: Currency) -> ShippingRule {
        self.shipping
            .get(currency.code())
            .copied()
            .unwrap_or_else(|| ShippingRule::default_for(currency))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tax_falls_back_from_region_to_country_to_default() {
        let t = PricingTables {
            tax: HashMap::from([
                (("US".into(), "CA".into()), 72_500),
                (("DE".into(), String::new()), 190_000),
            ]),
            shipping: HashMap::new(),
            default_tax_ppm: 7,
        };
        assert_eq!(t.tax_rate_ppm("us", "ca"), 72_500);
        assert_eq!(t.tax_rate_ppm("DE", "BY"), 190_000);
        assert_eq!(t.tax_rate_ppm("US", "ZZ"), 7);
        assert_eq!(t.tax_rate_ppm("", ""), 7);
    }
}
