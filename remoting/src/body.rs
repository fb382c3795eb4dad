//! JSON bodies of remoting requests and responses (`RemotingSerializable`, fastjson on the
//! Java side).
//!
//! Written as standard, compact JSON with quoted map keys (what a 4.9 name server writes
//! for clients of version 401 and up; older clients and the Go client read it too).
//! Bodies clients send are read leniently: every field optional, unknown fields ignored,
//! enums by name or ordinal.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{RemotingError, Result};

/// A broker group's addresses by broker id (0: master).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerData {
    /// Written with quoted keys (`{"0":"…"}`): fastjson reads them as numbers, and the Go
    /// client's hand parser strips the quotes.
    pub broker_addrs: BTreeMap<u64, String>,
    pub broker_name: String,
    pub cluster: String,
}

/// How many queues a broker serves for a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueData {
    pub broker_name: String,
    pub perm: u32,
    pub read_queue_nums: u32,
    pub topic_sys_flag: u32,
    pub write_queue_nums: u32,
}

/// `GET_ROUTEINFO_BY_TOPIC`'s answer (fields in fastjson's alphabetical order, compact:
/// the Go client's parser breaks on whitespace).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicRouteData {
    pub broker_datas: Vec<BrokerData>,
    pub filter_server_table: BTreeMap<String, Vec<String>>,
    pub queue_datas: Vec<QueueData>,
}

/// `GET_BROKER_CLUSTER_INFO`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    /// By broker name.
    pub broker_addr_table: BTreeMap<String, BrokerData>,
    /// Broker names by cluster.
    pub cluster_addr_table: BTreeMap<String, Vec<String>>,
}

/// A queue as clients name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageQueue {
    #[serde(default)]
    pub broker_name: String,
    #[serde(default)]
    pub queue_id: u32,
    #[serde(default)]
    pub topic: String,
}

/// A consumer's subscription to one topic, as its heartbeat carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubscriptionData {
    pub topic: String,
    /// `*`, `TagA || TagB`, or an SQL92 expression.
    pub sub_string: String,
    /// `TAG` (the default) or `SQL92`.
    pub expression_type: Option<String>,
    pub tags_set: Vec<String>,
    pub code_set: Vec<i32>,
    /// A number from Java and Go; the C++ client (and so PyPI's `rocketmq`, built on it)
    /// writes it as a string, which fastjson reads too.
    #[serde(deserialize_with = "number_or_string")]
    pub sub_version: i64,
    pub class_filter_mode: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerData {
    pub group_name: String,
    /// `CONSUME_ACTIVELY` (pull) or `CONSUME_PASSIVELY` (push), by name or ordinal.
    pub consume_type: Option<serde_json::Value>,
    /// `CLUSTERING` or `BROADCASTING`, by name or ordinal (0 broadcasting, 1 clustering).
    pub message_model: Option<serde_json::Value>,
    pub consume_from_where: Option<serde_json::Value>,
    pub subscription_data_set: Vec<SubscriptionData>,
    pub unit_mode: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProducerData {
    pub group_name: String,
}

impl ConsumerData {
    /// Whether the group consumes in broadcasting mode.
    pub fn broadcasting(&self) -> bool {
        match &self.message_model {
            Some(serde_json::Value::String(s)) => s.eq_ignore_ascii_case("BROADCASTING"),
            Some(serde_json::Value::Number(n)) => n.as_u64() == Some(0),
            _ => false,
        }
    }
}

/// `HEART_BEAT`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct HeartbeatData {
    #[serde(rename = "clientID")]
    pub client_id: String,
    #[serde(rename = "producerDataSet")]
    pub producer_data_set: Vec<ProducerData>,
    #[serde(rename = "consumerDataSet")]
    pub consumer_data_set: Vec<ConsumerData>,
}

/// `LOCK_BATCH_MQ` / `UNLOCK_BATCH_MQ` bodies.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LockBatchRequestBody {
    pub consumer_group: String,
    pub client_id: String,
    pub only_this_broker: bool,
    pub mq_set: Vec<MessageQueue>,
}

/// `LOCK_BATCH_MQ`'s answer: the queues now locked by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct LockBatchResponseBody {
    #[serde(rename = "lockOKMQSet")]
    pub lock_ok_mq_set: Vec<MessageQueue>,
}

/// `GET_CONSUMER_LIST_BY_GROUP`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerListBody {
    pub consumer_id_list: Vec<String>,
}

/// `GET_ALL_TOPIC_LIST_FROM_NAMESERVER`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicList {
    pub topic_list: Vec<String>,
}

/// An integer written as a JSON number or as a string of digits.
fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| D::Error::custom(format!("{n} is not an integer"))),
        serde_json::Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| D::Error::custom(format!("{s:?} is not an integer"))),
        serde_json::Value::Null => Ok(0),
        v => Err(D::Error::custom(format!("expected an integer, got {v}"))),
    }
}

/// Reads a body a client sent.
pub fn from_json<'a, T: Deserialize<'a>>(body: &'a [u8], what: &'static str) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| RemotingError::Malformed {
        what,
        detail: e.to_string(),
    })
}

/// Writes a body for a client.
pub fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| RemotingError::Malformed {
        what: "response body",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker() -> BrokerData {
        BrokerData {
            cluster: "DefaultCluster".into(),
            broker_name: "broker-a".into(),
            broker_addrs: [(0, "127.0.0.1:20911".into())].into_iter().collect(),
        }
    }

    /// What a RocketMQ 4.9.7 name server writes (captured), key for key.
    #[test]
    fn route_data_as_rocketmq_writes_it() {
        let route = TopicRouteData {
            queue_datas: vec![QueueData {
                broker_name: "broker-a".into(),
                perm: 7,
                read_queue_nums: 8,
                topic_sys_flag: 0,
                write_queue_nums: 8,
            }],
            broker_datas: vec![broker()],
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(to_json(&route).unwrap()).unwrap(),
            r#"{"brokerDatas":[{"brokerAddrs":{"0":"127.0.0.1:20911"},"brokerName":"broker-a","cluster":"DefaultCluster"}],"filterServerTable":{},"queueDatas":[{"brokerName":"broker-a","perm":7,"readQueueNums":8,"topicSysFlag":0,"writeQueueNums":8}]}"#
        );
        let info = ClusterInfo {
            broker_addr_table: [("broker-a".into(), broker())].into_iter().collect(),
            cluster_addr_table: [("DefaultCluster".into(), vec!["broker-a".into()])]
                .into_iter()
                .collect(),
        };
        assert_eq!(
            String::from_utf8(to_json(&info).unwrap()).unwrap(),
            r#"{"brokerAddrTable":{"broker-a":{"brokerAddrs":{"0":"127.0.0.1:20911"},"brokerName":"broker-a","cluster":"DefaultCluster"}},"clusterAddrTable":{"DefaultCluster":["broker-a"]}}"#
        );
    }

    /// A Java push consumer's heartbeat, as fastjson writes it.
    #[test]
    fn reads_a_java_heartbeat() {
        let body = br#"{"clientID":"10.0.0.5@1234","consumerDataSet":[{"consumeFromWhere":"CONSUME_FROM_LAST_OFFSET","consumeType":"CONSUME_PASSIVELY","groupName":"cg","messageModel":"CLUSTERING","subscriptionDataSet":[{"classFilterMode":false,"codeSet":[2598919],"expressionType":"TAG","subString":"TagA","subVersion":1700000000000,"tagsSet":["TagA"],"topic":"TopicTest"}],"unitMode":false}],"producerDataSet":[{"groupName":"CLIENT_INNER_PRODUCER"}]}"#;
        let hb: HeartbeatData = from_json(body, "heartbeat").unwrap();
        assert_eq!(hb.client_id, "10.0.0.5@1234");
        let c = &hb.consumer_data_set[0];
        assert!(!c.broadcasting());
        let s = &c.subscription_data_set[0];
        assert_eq!(
            (s.topic.as_str(), s.sub_string.as_str()),
            ("TopicTest", "TagA")
        );
        assert_eq!(s.code_set, vec![2598919]);
        assert!(from_json::<HeartbeatData>(b"[1]", "heartbeat").is_err());
    }

    /// The C++ client's heartbeat (rocketmq-client-cpp as bundled by the Python client
    /// `rocketmq` 0.4.4, captured): enums as ordinals, `subVersion` as a string, no tag
    /// sets.
    #[test]
    fn reads_a_cpp_heartbeat() {
        let body = br#"{"clientID":"26514-127.0.0.1@DEFAULT","consumerDataSet":[{"consumeFromWhere":0,"consumeType":1,"groupName":"py_cg","messageModel":1,"subscriptionDataSet":[{"subString":"*","subVersion":"1796195177651","topic":"%RETRY%py_cg"},{"subString":"TagA || TagB","subVersion":"1796195177651","topic":"PyT"}]}]}
"#;
        let hb: HeartbeatData = from_json(body, "heartbeat").unwrap();
        let c = &hb.consumer_data_set[0];
        assert!(!c.broadcasting());
        assert_eq!(c.subscription_data_set[1].sub_version, 1796195177651);
        assert_eq!(c.subscription_data_set[1].sub_string, "TagA || TagB");
        let bad = br#"{"consumerDataSet":[{"subscriptionDataSet":[{"subVersion":"x"}]}]}"#;
        assert!(from_json::<HeartbeatData>(bad, "heartbeat").is_err());
    }

    #[test]
    fn lock_bodies() {
        let body = br#"{"clientId":"c1","consumerGroup":"g","mqSet":[{"brokerName":"b","queueId":1,"topic":"T"}],"onlyThisBroker":false}"#;
        let req: LockBatchRequestBody = from_json(body, "lock").unwrap();
        assert_eq!(req.mq_set[0].queue_id, 1);
        let resp = LockBatchResponseBody {
            lock_ok_mq_set: req.mq_set.clone(),
        };
        assert_eq!(
            String::from_utf8(to_json(&resp).unwrap()).unwrap(),
            r#"{"lockOKMQSet":[{"brokerName":"b","queueId":1,"topic":"T"}]}"#
        );
    }
}
