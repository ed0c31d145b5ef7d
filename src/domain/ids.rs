//! Identifiers that arrive from upstream, parsed once at the edge: a value of
//! these types is a valid one, from the decoder to the SQL bind.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest order id we accept. Upstream ids are UUIDs or similar; anything
/// much longer is a bug upstream (or an attack) and would bloat every index.
pub const MAX_ORDER_ID_LEN: usize = 128;

/// The longest event id we accept, in bytes.
pub const MAX_EVENT_ID_LEN: usize = 128;

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

/// The id an upstream producer gave one event: 1..=128 bytes of any text. It
/// is what the inbox dedupes on, per input topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event_id must be 1 to {MAX_EVENT_ID_LEN} bytes")]
pub struct EventIdError;

impl EventId {
    pub fn parse(raw: &str) -> Result<Self, EventIdError> {
        if raw.is_empty() || raw.len() > MAX_EVENT_ID_LEN {
            return Err(EventIdError);
        }
        Ok(Self(raw.to_owned()))
    }

    /// A fresh id for an event orderflow itself publishes (UUID v7, so ids
    /// sort by creation).
    pub fn new_v7() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Both ids travel as plain strings on the wire; deserialising one parses it,
/// so an invalid id is a decode error of the message that carries it.
macro_rules! string_id {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $ty::parse(s).map_err(|e| e.to_string())
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = std::borrow::Cow::<'de, str>::deserialize(d)?;
                $ty::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(OrderId);
string_id!(EventId);

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

    #[test]
    fn ids_parse_when_deserialised_and_serialise_as_strings() {
        let id: OrderId = serde_json::from_str("\"ord-1\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"ord-1\"");
        let err = serde_json::from_str::<OrderId>("\"a b\"").unwrap_err();
        assert!(err.to_string().contains("printable ASCII"), "{err}");
        assert!(serde_json::from_str::<EventId>("\"\"").is_err());
        let long = format!("\"{}\"", "é".repeat(65));
        assert!(serde_json::from_str::<EventId>(&long).is_err(), "130 bytes");
        assert_eq!("e-1".parse::<EventId>().unwrap().as_str(), "e-1");
    }
}
