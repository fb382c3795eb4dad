//! Name server requests: broker registration, routes, cluster view.

use bincode::{Decode, Encode};

use crate::codes::RequestCode;
use crate::rpc::Rpc;

/// Topic permission bits (RocketMQ's values).
pub mod perm {
    pub const READ: u8 = 4;
    pub const WRITE: u8 = 2;
    pub const READ_WRITE: u8 = READ | WRITE;

    /// "rw", "r-", "-w" or "--".
    pub fn describe(p: u8) -> &'static str {
        match (p & READ != 0, p & WRITE != 0) {
            (true, true) => "rw",
            (true, false) => "r-",
            (false, true) => "-w",
            (false, false) => "--",
        }
    }
}

/// Broker id of a master; slaves have 1 and up.
pub const MASTER_ID: u64 = 0;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TopicConfig {
    pub name: String,
    pub read_queues: u32,
    pub write_queues: u32,
    pub perm: u8,
}

/// A broker announces itself and every topic it serves; repeated every 30 s. The topics
/// travel in the body ([`RegisteredTopics`]): tens of thousands of them do not fit a header.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RegisterBroker {
    pub cluster: String,
    pub broker_name: String,
    pub broker_id: u64,
    /// Address clients connect to.
    pub addr: String,
    /// Its role, HA address and replication lag.
    pub ha: crate::ha::HaStatus,
}

/// The body of a [`RegisterBroker`]: every topic the broker serves.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Default)]
pub struct RegisteredTopics {
    pub topics: Vec<TopicConfig>,
}

impl RegisteredTopics {
    pub fn encode(&self) -> Result<bytes::Bytes, crate::ProtocolError> {
        crate::rpc::encode_body(self, "registered topics")
    }
    pub fn decode(body: &[u8]) -> Result<Self, crate::ProtocolError> {
        crate::rpc::decode_body(body, "registered topics")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RegisterBrokerResponse {
    /// The master of the broker's group, if one is registered.
    pub master_addr: Option<String>,
    /// Where that master takes its slaves (its HA address), if it has one.
    pub master_ha_addr: Option<String>,
}

impl Rpc for RegisterBroker {
    const CODE: RequestCode = RequestCode::RegisterBroker;
    type Response = RegisterBrokerResponse;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct UnregisterBroker {
    pub cluster: String,
    pub broker_name: String,
    pub broker_id: u64,
    pub addr: String,
}

impl Rpc for UnregisterBroker {
    const CODE: RequestCode = RequestCode::UnregisterBroker;
    type Response = ();
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetRoute {
    pub topic: String,
}

impl Rpc for GetRoute {
    const CODE: RequestCode = RequestCode::GetRoute;
    type Response = TopicRoute;
}

/// Which brokers serve a topic, with how many queues each.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Default)]
pub struct TopicRoute {
    /// Sorted by broker name.
    pub queues: Vec<QueueData>,
    /// Sorted by broker name.
    pub brokers: Vec<BrokerData>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct QueueData {
    pub broker_name: String,
    pub read_queues: u32,
    pub write_queues: u32,
    pub perm: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct BrokerData {
    pub cluster: String,
    pub broker_name: String,
    /// (broker id, address), sorted by id; id 0 is the master.
    pub addrs: Vec<(u64, String)>,
    /// (broker id, its replication as it last reported), sorted by id.
    pub status: Vec<(u64, crate::ha::HaStatus)>,
}

impl BrokerData {
    /// A slave's address (the lowest id above the master's), for reads when the master
    /// is away.
    pub fn slave_addr(&self) -> Option<&str> {
        self.addrs
            .iter()
            .find(|(id, _)| *id != MASTER_ID)
            .map(|(_, a)| a.as_str())
    }

    pub fn master_addr(&self) -> Option<&str> {
        self.addrs
            .iter()
            .find(|(id, _)| *id == MASTER_ID)
            .map(|(_, a)| a.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetClusterInfo;

impl Rpc for GetClusterInfo {
    const CODE: RequestCode = RequestCode::GetClusterInfo;
    type Response = ClusterInfo;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Default)]
pub struct ClusterInfo {
    /// Every live broker group, sorted by (cluster, broker name).
    pub brokers: Vec<BrokerData>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetAllTopics;

impl Rpc for GetAllTopics {
    const CODE: RequestCode = RequestCode::GetAllTopics;
    type Response = TopicList;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Default)]
pub struct TopicList {
    /// Sorted.
    pub topics: Vec<String>,
}

/// Every topic the name servers route, each with its queues per broker: what a topic list
/// shows in one request (RocketMQ's tools make one route request per topic instead). The
/// answer's body is a [`TopicSummaries`] (a header holds at most 1 MiB; 50,000 topics take
/// more).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetTopicSummaries;

impl Rpc for GetTopicSummaries {
    const CODE: RequestCode = RequestCode::GetTopicSummaries;
    type Response = ();
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Default)]
pub struct TopicSummaries {
    /// Sorted by name.
    pub topics: Vec<TopicSummary>,
}

impl TopicSummaries {
    pub fn encode(&self) -> Result<bytes::Bytes, crate::ProtocolError> {
        crate::rpc::encode_body(self, "topic summaries")
    }
    pub fn decode(body: &[u8]) -> Result<Self, crate::ProtocolError> {
        crate::rpc::decode_body(body, "topic summaries")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TopicSummary {
    pub name: String,
    /// Per broker serving it, sorted by broker name.
    pub queues: Vec<QueueData>,
}
