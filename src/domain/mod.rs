//! Pure business rules: identifiers, money, currencies, pricing, order status
//! and the order state machine.
//!
//! Nothing here performs I/O; every type is parsed at the edge so that a value
//! that exists is a valid one. Unit tests live next to the code.

pub mod currency;
pub mod ids;
pub mod lifecycle;
pub mod money;
pub mod pricing;
pub mod status;

pub use currency::Currency;
pub use ids::{EventId, OrderId};
pub use money::Money;
pub use status::OrderStatus;

/// The first `max` characters of `s` (never splits a character). Used to
/// store untrusted text at a bounded size.
pub fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
