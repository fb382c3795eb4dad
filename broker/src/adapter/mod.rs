//! Protocol adapters: each turns its wire's frames into typed requests for
//! [`Broker::dispatch`](crate::broker::Broker::dispatch) and the answers back, and is the
//! only place that knows its wire's statuses. Adding a protocol adds an adapter here; no
//! processor changes.

pub mod answer_buffers;
pub mod remoting;
pub mod weir;
