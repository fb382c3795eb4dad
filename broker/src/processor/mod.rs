//! Request processors, one module per family, as RocketMQ's `broker/processor/`. Each adds
//! methods to [`Broker`](crate::broker::Broker) that take a typed request and return a
//! typed result or a [`ProcessError`](crate::error::ProcessError); none sees a frame.
//!
//! - [`send`]: single messages, batches, consumers' send-back;
//! - [`pull`]: reads with tag and WebAssembly filtering and long polling;
//! - [`consumer`]: heartbeats, membership, offsets, queue leases;
//! - [`admin`]: topics, stats, lookups;
//! - [`groups`]: resetting a group's offsets, deleting a group;
//! - [`filter`]: filter uploads, listing, removal;
//! - [`transaction`]: half messages, decisions, pending and dead transactions;
//! - [`trail`]: what the broker knows of a message's delivery.

pub mod admin;
pub mod consumer;
pub mod filter;
pub mod groups;
pub mod pull;
pub mod send;
pub mod trail;
pub mod transaction;

pub use pull::{Admission, Pulled};
pub use send::MAX_BATCH_MESSAGES;
