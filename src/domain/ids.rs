//! Identifiers that arrive from upstream and must be checked before use.

use std::fmt;

/// The longest order id we accept. Upstream ids are UUIDs or similar; anything
/// much longer is a bug upstream (or an attack) and would bloat every index.
pub const MAX_ORDER_ID_LEN: usize = 128;

/// An order id assigned upstream: 1..=128 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderIdError {
    #[error("order_id is empty")]
    Empty,
    #[error("order_id is longer than {MAX_ORDER_ID_LEN} characters")]
    TooLong,
    #[error("order_id may contain only printable ASCII without spaces")]
    BadCharacter,
}

impl OrderId {
    pub fn parse(raw: &str) -> Result<Self, OrderIdError> {
        if raw.is_empty() {
            return Err(OrderIdError::Empty);
        }
        if raw.len() > MAX_ORDER_ID_LEN {
            return Err(OrderIdError::TooLong);
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(OrderIdError::BadCharacter);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_must_be_short_printable_ascii() {
        assert!(OrderId::parse("ord-123").is_ok());
        assert_eq!(OrderId::parse(""), Err(OrderIdError::Empty));
        assert_eq!(OrderId::parse("a b"), Err(OrderIdError::BadCharacter));
        assert_eq!(OrderId::parse("é"), Err(OrderIdError::BadCharacter));
        assert_eq!(
            OrderId::parse(&"x".repeat(MAX_ORDER_ID_LEN + 1)),
            Err(OrderIdError::TooLong)
        );
        assert!(OrderId::parse(&"x".repeat(MAX_ORDER_ID_LEN)).is_ok());
    }
}
