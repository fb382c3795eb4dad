//! The weir broker: stores what producers send, serves pulls (with long polling and
//! WebAssembly filters), keeps consumer offsets and topic configs, knows its clients, and
//! registers with name servers.
//!
//! The layout, from the wire in:
//! - [`adapter`]: protocol adapters. Each decodes its frames into a typed
//!   [`dispatch::BrokerRequest`] and encodes the answer, mapping each
//!   [`ProcessError`] kind to its statuses in one place. Today: weir's
//!   own frames.
//! - [`dispatch`]: request → processor, under per-family bounds on requests in flight,
//!   after the access check ([`acl`]).
//! - [`processor`]: one module per request family (send, pull, consumer, admin, filter),
//!   typed requests in, typed results or a domain error out; no frame in sight.
//! - [`service`]: background work (delay levels, name-server registration, client expiry,
//!   writability), stopped by one signal.
//! - [`broker`]: the shared state they all work on; [`startup`]: putting it together.
//! - Supporting state: [`topics`], [`clients`], `locks`, `holds`, [`filter`],
//!   [`subscription`], [`flow`] (sends refused when the store falls behind).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod acl;
pub mod adapter;
pub mod broker;
pub mod clients;
mod config;
pub mod dispatch;
pub mod error;
pub mod filter;
pub mod flow;
mod holds;
pub mod live;
mod locks;
pub mod metrics;
pub mod processor;
pub mod replication;
pub mod service;
pub mod startup;
pub mod stats;
pub mod subscription;
pub mod topics;

pub use broker::Broker;
pub use config::{BrokerConfig, LimitsConfig};
pub use error::{BrokerError, ConfigError, ProcessError};
pub use startup::{RunningBroker, open, start};
