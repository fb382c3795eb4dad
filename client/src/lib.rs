//! weir's Rust client: [`Producer`], [`TransactionProducer`], [`PushConsumer`],
//! [`PullConsumer`] and [`Admin`] (topics, groups, cluster, consumer groups' WebAssembly
//! filters, transactions), over one shared [`ClientInstance`] per process setting (name
//! servers, routes, broker connections).
//!
//! A received message ([`ReceivedMessage`], [`MessageExt`]) shares its pull's buffer: its
//! body, keys ([`MessageKeys`]) and properties ([`MessageProperties`]) are read in place,
//! and its id is the typed [`MessageId`] (`to_string()` gives the text a
//! lookup takes). Decoding a message with one property cost 280–317 ns with a `String` per
//! key, name, value and id, 173–200 ns now.
//!
//! The allocator matters to a consumer reading fast: each received message is a few small
//! allocations beside each pull's frame-sized one, and glibc's malloc spent a third of a
//! catch-up consumer's time (`weir bench consume`) consolidating the small chunks freed
//! in between. weir's own binaries use mimalloc for that reason (35-45 % less of the
//! consumer's CPU); an application consuming at such rates may set it, or another
//! allocator with per-thread caches, as its `#[global_allocator]` too.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod admin;
mod faults;
mod filter;
mod instance;
mod manage;
mod message;
mod overview;
mod producer;
mod pull;
mod push;
mod received;
mod routes;
mod serve;
mod trail;
mod transaction;

pub use admin::Admin;
pub use filter::FILTER_UPLOAD_TIMEOUT;
pub use instance::{ClientConfig, ClientInstance, DEGRADED_ROUTE_REFRESH};
pub use manage::{BrokerStatsRow, TopicUpdate};
pub use message::{Message, MessageQueue, ReceivedMessage};
pub use overview::{GroupList, GroupOverview};
pub use producer::{Producer, SendResult};
pub use pull::{PullConsumer, PullOutcome, RawPullOutcome};
pub use push::{
    ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus, ConsumeFrom, ConsumeOrderlyContext,
    ConsumeOrderlyStatus, ConsumeStats, Listener, MessageExt, MessageListenerConcurrently,
    MessageListenerOrderly, MessageModel, OnFilterFailure, OnPullError, PushConsumer,
    PushConsumerConfig, StopHandle, allocate_averagely,
};
pub use received::{MessageKeys, MessageProperties};
pub use trail::DeliveryTrail;
pub use transaction::{
    CheckStats, LocalTransactionState, TransactionListener, TransactionProducer,
    TransactionProducerConfig, TransactionSendResult,
};
pub use weir_protocol::admin::{
    BrokerSettings, BrokerStats, CopyKind, GroupDeleted, GroupTrail, MessageCopy, MessageTrail,
    OffsetsReset, QueueReset, ResetTarget,
};
pub use weir_protocol::auth::Credentials;
pub use weir_protocol::broker::{
    ConsumerMember, PullStatus, QueueOffsets, QueueProgress, SendStatus, SentBack,
    TransactionDecision, TransactionInfo, TransactionList, TransactionResolved, TransactionState,
};
pub use weir_protocol::filter::{
    FilterInfo, FilterList, FilterRemoved, FilterReset, FilterStats, FilterUploaded,
};
pub use weir_protocol::route::{ClusterInfo, QueueData, TopicRoute, TopicSummary};
pub use weir_protocol::{CallError, ErrorCode, MessageId};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no name server answered ({0})")]
    NoNameServer(String),
    #[error("topic {topic:?} has no route: {detail}")]
    NoRoute { topic: String, detail: String },
    #[error("broker {broker}: {error}")]
    Broker { broker: String, error: CallError },
    /// A pull refused because the group's WebAssembly filter for the topic failed (this
    /// batch, or it is marked failed); nothing was delivered or skipped.
    #[error(transparent)]
    FilterFailed(#[from] FilterFailed),
    #[error("{0}")]
    Invalid(String),
    #[error("message {0}")]
    BadRecord(#[from] weir_protocol::RecordError),
    /// A TLS setting that cannot be used (a CA file that cannot be read, say).
    #[error(transparent)]
    Tls(#[from] weir_protocol::TlsError),
}

impl ClientError {
    /// The broker's status, when the broker answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { error, .. } => error.code(),
            ClientError::FilterFailed(f) => Some(f.code()),
            _ => None,
        }
    }
}

/// The broker refused a pull because the group's filter failed. The message names the
/// filter (group, topic, version, sha256) and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broker {broker}: {message}")]
pub struct FilterFailed {
    /// The address of the broker that answered.
    pub broker: String,
    /// True when the filter is marked failed: pulls fail without running it until a new
    /// version is uploaded or `weir filter reset` clears the mark. False when only this
    /// batch failed (the filter is tried again on the next pull).
    pub marked: bool,
    pub message: String,
}

impl FilterFailed {
    /// [`ErrorCode::FilterMarkedFailed`] or [`ErrorCode::FilterFailed`].
    pub fn code(&self) -> ErrorCode {
        if self.marked {
            ErrorCode::FilterMarkedFailed
        } else {
            ErrorCode::FilterFailed
        }
    }

    /// A broker's error as a filter failure, if it is one.
    pub(crate) fn from_broker(e: ClientError) -> ClientError {
        match e {
            ClientError::Broker {
                broker,
                error: CallError::Remote { code, message },
            } if matches!(
                code,
                ErrorCode::FilterFailed | ErrorCode::FilterMarkedFailed
            ) =>
            {
                ClientError::FilterFailed(FilterFailed {
                    broker,
                    marked: code == ErrorCode::FilterMarkedFailed,
                    message,
                })
            }
            e => e,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
