//! The name server's side of RocketMQ's remoting protocol: what RocketMQ clients ask a
//! name server, answered from the same route table weir's clients read.
//!
//! Served: `GET_ROUTEINFO_BY_TOPIC` (105), `GET_BROKER_CLUSTER_INFO` (106) and
//! `GET_ALL_TOPIC_LIST_FROM_NAMESERVER` (206). Brokers register over weir's own protocol
//! only; every other code is answered `REQUEST_CODE_NOT_SUPPORTED`.

use std::collections::BTreeMap;
use std::sync::Arc;

use weir_protocol::net::BoxFuture;
use weir_protocol::net::Wire;
use weir_protocol::route::{BrokerData, TopicRoute};
use weir_protocol::{Connection, ErrorCode, Handler, Reply, Request};
use weir_remoting::RemotingCommand;
use weir_remoting::body::{self, ClusterInfo, QueueData, TopicList, TopicRouteData};
use weir_remoting::codes::{request as rq, response as rs};

use crate::NameServer;

/// Serves RocketMQ clients' name-server requests.
pub(crate) struct RemotingNameServer(pub Arc<NameServer>);

fn broker_data(b: &BrokerData) -> body::BrokerData {
    body::BrokerData {
        broker_addrs: b.addrs.iter().cloned().collect(),
        broker_name: b.broker_name.clone(),
        cluster: b.cluster.clone(),
    }
}

/// A route in RocketMQ's shape.
pub(crate) fn route_data(route: &TopicRoute) -> TopicRouteData {
    TopicRouteData {
        broker_datas: route.brokers.iter().map(broker_data).collect(),
        filter_server_table: BTreeMap::new(),
        queue_datas: route
            .queues
            .iter()
            .map(|q| QueueData {
                broker_name: q.broker_name.clone(),
                perm: u32::from(q.perm),
                read_queue_nums: q.read_queues,
                topic_sys_flag: 0,
                write_queue_nums: q.write_queues,
            })
            .collect(),
    }
}

impl RemotingNameServer {
    fn serve(&self, cmd: &RemotingCommand) -> RemotingCommand {
        let ok = |json: Result<Vec<u8>, weir_remoting::RemotingError>| match json {
            Ok(b) => RemotingCommand::response_to(cmd, rs::SUCCESS, None).with_body(b),
            Err(e) => RemotingCommand::response_to(cmd, rs::SYSTEM_ERROR, Some(e.to_string())),
        };
        match cmd.code {
            rq::GET_ROUTEINFO_BY_TOPIC => {
                let topic = match cmd.field("topic") {
                    Ok(t) => t,
                    Err(e) => {
                        return RemotingCommand::response_to(
                            cmd,
                            rs::SYSTEM_ERROR,
                            Some(e.to_string()),
                        );
                    }
                };
                let found = self.0.table().route(topic);
                match found {
                    Some(route) => {
                        crate::metrics::Counters::bump(&self.0.counters.routes_found);
                        ok(body::to_json(&route_data(&route)))
                    }
                    None => {
                        crate::metrics::Counters::bump(&self.0.counters.routes_missing);
                        RemotingCommand::response_to(
                            cmd,
                            rs::TOPIC_NOT_EXIST,
                            Some(format!(
                                "No topic route info in name server for the topic: {topic}"
                            )),
                        )
                    }
                }
            }
            rq::GET_BROKER_CLUSTER_INFO => {
                let info = self.0.table().cluster_info();
                let mut out = ClusterInfo::default();
                for b in &info.brokers {
                    out.cluster_addr_table
                        .entry(b.cluster.clone())
                        .or_default()
                        .push(b.broker_name.clone());
                    out.broker_addr_table
                        .insert(b.broker_name.clone(), broker_data(b));
                }
                ok(body::to_json(&out))
            }
            rq::GET_ALL_TOPIC_LIST_FROM_NAMESERVER => {
                let topic_list = self.0.table().topics.keys().cloned().collect();
                ok(body::to_json(&TopicList { topic_list }))
            }
            code => RemotingCommand::response_to(
                cmd,
                rs::REQUEST_CODE_NOT_SUPPORTED,
                Some(format!(
                    "request code {code} ({}) is not supported by weir's name server",
                    weir_remoting::codes::request_name(code)
                )),
            ),
        }
    }
}

impl Handler for RemotingNameServer {
    fn handle<'a>(&'a self, _conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            let answer = match RemotingCommand::from_parts(&req.header, req.body) {
                Ok(cmd) => self.serve(&cmd),
                Err(e) => {
                    return Wire::Remoting.error_reply(
                        req.request_id,
                        ErrorCode::SystemError,
                        &e.to_string(),
                    );
                }
            };
            Reply {
                status: 0,
                header: answer.header_parts().unwrap_or_default(),
                body: answer.body,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::ha::HaStatus;
    use weir_protocol::route::QueueData as WeirQueue;

    #[test]
    fn a_route_in_rocketmqs_shape() {
        let route = TopicRoute {
            queues: vec![WeirQueue {
                broker_name: "broker-a".into(),
                read_queues: 4,
                write_queues: 4,
                perm: 6,
            }],
            brokers: vec![BrokerData {
                cluster: "DefaultCluster".into(),
                broker_name: "broker-a".into(),
                addrs: vec![(0, "127.0.0.1:10911".into()), (1, "127.0.0.1:10921".into())],
                status: vec![(0, HaStatus::default())],
            }],
        };
        let json = String::from_utf8(body::to_json(&route_data(&route)).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"brokerDatas":[{"brokerAddrs":{"0":"127.0.0.1:10911","1":"127.0.0.1:10921"},"brokerName":"broker-a","cluster":"DefaultCluster"}],"filterServerTable":{},"queueDatas":[{"brokerName":"broker-a","perm":6,"readQueueNums":4,"topicSysFlag":0,"writeQueueNums":4}]}"#
        );
    }

    #[test]
    fn unknown_codes_are_not_supported() {
        let ns = RemotingNameServer(Arc::new(NameServer::for_tests()));
        let req = RemotingCommand::request(rq::REGISTER_BROKER, 5);
        let r = ns.serve(&req);
        assert_eq!(r.code, rs::REQUEST_CODE_NOT_SUPPORTED);
        assert_eq!(r.opaque, 5);
        assert!(r.is_response());
        let missing =
            ns.serve(&RemotingCommand::request(rq::GET_ROUTEINFO_BY_TOPIC, 6).with("topic", "T"));
        assert_eq!(missing.code, rs::TOPIC_NOT_EXIST);
    }
}
