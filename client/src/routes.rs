//! What a client makes of a route: the queues a send picks from, and where a queue is read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use weir_protocol::auth::random_u64;
use weir_protocol::route::TopicRoute;

use crate::{ClientInstance, MessageQueue};

/// A topic's writable queues, each with its broker master's address, made once per route
/// (RocketMQ's `TopicPublishInfo`): what every send picks from, without building anything.
#[derive(Debug)]
pub struct PublishInfo {
    pub route: Arc<TopicRoute>,
    /// Writable queues, in a stable order.
    pub queues: Vec<MessageQueue>,
    /// The address of each queue's master (by the queue's index), if the route has one.
    pub addrs: Vec<Option<Arc<str>>>,
    /// The round robin over this topic's queues (RocketMQ's `sendWhichQueue`): one per
    /// topic, so that a producer taking turns between topics still spreads each topic over
    /// all its queues (one counter shared by every topic would send a producer alternating
    /// between two topics of 8 queues to 4 queues of each).
    pub(crate) next_queue: AtomicUsize,
}

impl PublishInfo {
    pub fn new(route: Arc<TopicRoute>, topic: &str) -> Self {
        let queues = ClientInstance::queues(&route, topic, true);
        let mut by_broker: HashMap<&str, Option<Arc<str>>> = HashMap::new();
        let addrs = queues
            .iter()
            .map(|q| {
                by_broker
                    .entry(q.broker_name.as_str())
                    .or_insert_with(|| {
                        ClientInstance::master_addr(&route, &q.broker_name).map(Arc::from)
                    })
                    .clone()
            })
            .collect();
        Self::with_queues(Arc::clone(&route), queues, addrs)
    }

    /// The publish info of these queues and master addresses (by queue index), its round
    /// robin starting at a random queue.
    pub(crate) fn with_queues(
        route: Arc<TopicRoute>,
        queues: Vec<MessageQueue>,
        addrs: Vec<Option<Arc<str>>>,
    ) -> Self {
        Self {
            route,
            queues,
            addrs,
            // A random start, so that fresh producers (each `weir send` process, say) spread
            // over the queues as RocketMQ's do, instead of all starting at queue 0.
            next_queue: AtomicUsize::new(random_u64() as usize),
        }
    }
}

/// Where to read `broker_name`'s queues: its master while it is `up`, else a slave; a
/// slave first when `prefer_slave` (the master suggested it) and one is up. When none is
/// up, the master, else a slave, rather than nothing; `None` when the route has neither.
pub fn read_addr(
    route: &TopicRoute,
    broker_name: &str,
    prefer_slave: bool,
    up: impl Fn(&str) -> bool,
) -> Option<String> {
    let b = route
        .brokers
        .iter()
        .find(|b| b.broker_name == broker_name)?;
    let master = b.master_addr();
    let slave = b.slave_addr();
    let up = |a: &&str| up(a);
    let pick = match prefer_slave {
        true => slave.filter(up).or(master.filter(up)),
        false => master.filter(up).or(slave.filter(up)),
    };
    pick.or(master).or(slave).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use weir_protocol::route::BrokerData;

    use super::*;

    fn route(addrs: &[(u64, &str)]) -> TopicRoute {
        TopicRoute {
            queues: Vec::new(),
            brokers: vec![BrokerData {
                cluster: "c".into(),
                broker_name: "b".into(),
                addrs: addrs.iter().map(|(i, a)| (*i, (*a).to_owned())).collect(),
                status: Vec::new(),
            }],
        }
    }

    #[test]
    fn reads_go_to_the_master_unless_it_is_down_or_suggests_the_slave() {
        let both = route(&[(0, "m"), (1, "s")]);
        let all_up = |_: &str| true;
        assert_eq!(read_addr(&both, "b", false, all_up).as_deref(), Some("m"));
        assert_eq!(read_addr(&both, "b", true, all_up).as_deref(), Some("s"));
        let master_down = |a: &str| a != "m";
        assert_eq!(
            read_addr(&both, "b", false, master_down).as_deref(),
            Some("s")
        );
        let slave_down = |a: &str| a != "s";
        assert_eq!(
            read_addr(&both, "b", true, slave_down).as_deref(),
            Some("m")
        );
        let none_up = |_: &str| false;
        assert_eq!(read_addr(&both, "b", true, none_up).as_deref(), Some("m"));
        let slave_only = route(&[(1, "s")]);
        assert_eq!(
            read_addr(&slave_only, "b", false, all_up).as_deref(),
            Some("s")
        );
        assert_eq!(read_addr(&both, "other", false, all_up), None);
    }
}
