//! Wire types: the events orderflow consumes and the events it publishes, the
//! dead-letter format, and the codec seam that turns bytes into events.
//!
//! Field names are a public contract shared with the Avro schemas in
//! `schemas/`; extend them, never rename them.

pub mod avro;
pub mod checkout;
pub mod codec;
pub mod dead_letter;
pub mod order_events;
pub mod payment;
pub mod time;

pub use checkout::{Address, CheckoutEvent, CheckoutItem};
pub use codec::{Codec, DecodeError, Normalized};
pub use dead_letter::{DeadLetter, DeadLetterClass};
pub use order_events::{OrderEvent, OrderEventBody};
pub use payment::{Cancellation, PaymentConfirmation, PaymentStatus, RequestedBy};
