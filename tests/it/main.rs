//! Integration tests against a real PostgreSQL and a real Kafka-protocol
//! broker (Tansu here, started by scripts/test.sh). Each test has its own
//! database, topics and consumer group, so they run in parallel.

mod analytics;
mod avro;
mod checkouts;
mod crash;
mod dlq;
mod helpers;
mod housekeeping;
mod http_api;
mod lifecycle;
mod partitions;
mod races;
mod replica;
mod restart;
mod streams;
mod tls;
mod track_page;
