//! orderflow: checkouts, payments and cancellations in; orders, in PostgreSQL
//! and on `order-events`, out.
//!
//! Component map:
//! - [`config`]: settings from the environment, checked at start.
//! - [`domain`]: pure rules — ids, money, currencies, pricing, statuses, the
//!   order state machine.
//! - [`events`]: wire types, Avro schemas and the codec seam (JSON and
//!   Confluent Avro, detected per message).
//! - [`store`]: PostgreSQL — orders, inbox (dedupe), outbox, read queries.
//! - [`workers`]: handlers (pure of Kafka), the generic consumer loop, the
//!   outbox relay.
//! - [`kafka`]: client configuration, topic definitions, dead letters.
//! - [`http`]: the read API, health and metrics.
//! - [`app`]: wiring and graceful shutdown.
//! - [`produce`]: sample traffic.
//! - [`schemas`]: `schemas register` / `schemas check` against a registry.
//! - [`bench`]: the benchmark harness.
//! - [`telemetry`]: logging and metric definitions.

pub mod app;
pub mod bench;
pub mod config;
pub mod domain;
pub mod events;
pub mod http;
pub mod kafka;
pub mod produce;
pub mod schemas;
pub mod store;
pub mod telemetry;
pub mod workers;
