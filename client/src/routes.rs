//! What a client makes of a route: the queues a send picks from, and where a queue is read.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use weir_protocol::auth::random_u64;
use weir_protocol::route::TopicRoute;

use crate::{ClientInstance, MessageQueue};

/// A topic's writable queues, each with its broker master's address, made once per route
/// (RocketMQ's `TopicPublishInfo`): what every send picks from, without building anything.
///
/// Up to 8 queues are held inline, in the lines the round robin's counter is in: with
/// 1,024 topics a send's publish info is out of the caches, and the queue and address
/// arrays were two more misses a send, each in a page of its own.
#[derive(Debug)]
pub struct PublishInfo {
    pub route: Arc<TopicRoute>,
    /// Writable queues, in a stable order.
    pub queues: SmallVec<[MessageQueue; 8]>,
    /// The address of each queue's master (by the queue's index), if the route has one.
    pub addrs: SmallVec<[Option<Arc<str>>; 8]>,
    /// The round robin over this topic's queues (RocketMQ's `sendWhichQueue`): one per
    /// topic, so that a producer taking turns between topics still spreads each topic over
    /// all its queues (one counter shared by every topic would send a producer alternating
    /// between two topics of 8 queues to 4 queues of each).
    pub(crate) next_queue: AtomicUsize,
}

impl PublishInfo {
    /// `addrs` gives each master address its one shared copy.
    pub fn new(route: Arc<TopicRoute>, topic: &str, addrs: &AddrNames) -> Self {
        let queues = ClientInstance::queues(&route, topic, true);
        let mut by_broker: HashMap<&str, Option<Arc<str>>> = HashMap::new();
        let masters: Vec<_> = queues
            .iter()
            .map(|q| {
                by_broker
                    .entry(q.broker_name.as_str())
                    .or_insert_with(|| {
                        ClientInstance::master_addr(&route, &q.broker_name).map(|a| addrs.get(&a))
                    })
                    .clone()
            })
            .collect();
        Self::with_queues(Arc::clone(&route), queues, masters)
    }

    /// The publish info of these queues and master addresses (by queue index), its round
    /// robin starting at a random queue.
    pub(crate) fn with_queues(
        route: Arc<TopicRoute>,
        queues: impl IntoIterator<Item = MessageQueue>,
        addrs: impl IntoIterator<Item = Option<Arc<str>>>,
    ) -> Self {
        Self {
            route,
            queues: queues.into_iter().collect(),
            addrs: addrs.into_iter().collect(),
            // A random start, so that fresh producers (each `weir send` process, say) spread
            // over the queues as RocketMQ's do, instead of all starting at queue 0.
            next_queue: AtomicUsize::new(random_u64() as usize),
        }
    }
}

/// Most broker addresses kept (a cluster's masters and slaves; addresses of brokers gone
/// since make room once it is full).
const MAX_ADDR_NAMES: usize = 4_096;

/// Broker addresses, one shared copy each: every topic's publish info points at the same
/// bytes, which each send hashes (the fault table, the connection table). With a copy per
/// topic, a send over 1,024 topics read a copy out of the caches each time.
#[derive(Debug, Default)]
pub struct AddrNames(Mutex<HashSet<Arc<str>>>);

impl AddrNames {
    /// The shared copy of `addr`.
    pub fn get(&self, addr: &str) -> Arc<str> {
        let mut names = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = names.get(addr) {
            return Arc::clone(a);
        }
        if names.len() >= MAX_ADDR_NAMES {
            names.clear();
        }
        let a: Arc<str> = addr.into();
        names.insert(Arc::clone(&a));
        a
    }
}

/// What a client reads from a route: masters, read addresses, queues.
impl ClientInstance {
    /// Address of the master of `broker_name` in `route`.
    pub fn master_addr(route: &TopicRoute, broker_name: &str) -> Option<String> {
        route
            .brokers
            .iter()
            .find(|b| b.broker_name == broker_name)
            .and_then(|b| b.master_addr().map(str::to_owned))
    }

    /// Where to read `broker_name`'s queues (see `routes::read_addr`), given which
    /// brokers were found unreachable lately.
    pub fn read_addr(
        &self,
        route: &TopicRoute,
        broker_name: &str,
        prefer_slave: bool,
    ) -> Option<String> {
        read_addr(route, broker_name, prefer_slave, |a| self.available(a))
    }

    /// Every queue of the topic (writable ones if `write`, else readable ones), in a
    /// stable order.
    pub fn queues(route: &TopicRoute, topic: &str, write: bool) -> Vec<MessageQueue> {
        let mut out = Vec::new();
        for q in &route.queues {
            let (n, bit) = if write {
                (q.write_queues, weir_protocol::route::perm::WRITE)
            } else {
                (q.read_queues, weir_protocol::route::perm::READ)
            };
            if q.perm & bit == 0 {
                continue;
            }
            for queue_id in 0..n {
                out.push(MessageQueue {
                    topic: topic.to_owned(),
                    broker_name: q.broker_name.clone(),
                    queue_id,
                });
            }
        }
        out.sort();
        out
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

    /// Every topic's publish info points at one copy of each master's address (what each
    /// send hashes), and holds a topic of 8 queues inline; a master-less broker has none.
    #[test]
    fn publish_infos_share_one_copy_of_each_address() {
        let mut r = route(&[(0, "10.0.0.1:10911")]);
        r.brokers.push(BrokerData {
            cluster: "c".into(),
            broker_name: "headless".into(),
            addrs: vec![(1, "10.0.0.2:10911".to_owned())],
            status: Vec::new(),
        });
        r.queues = ["b", "headless"]
            .map(|b| weir_protocol::route::QueueData {
                broker_name: b.into(),
                read_queues: 4,
                write_queues: 4,
                perm: weir_protocol::route::perm::READ_WRITE,
            })
            .to_vec();
        let r = Arc::new(r);
        let names = AddrNames::default();
        let a = PublishInfo::new(Arc::clone(&r), "A", &names);
        let b = PublishInfo::new(Arc::clone(&r), "B", &names);
        assert!(!a.queues.spilled() && a.queues.len() == 8);
        let masters = |p: &PublishInfo| {
            p.addrs
                .iter()
                .zip(&p.queues)
                .map(|(a, q)| (q.broker_name.clone(), a.as_deref().map(str::to_owned)))
                .collect::<Vec<_>>()
        };
        let want: Vec<_> = (0..8)
            .map(|i| match i < 4 {
                true => ("b".to_owned(), Some("10.0.0.1:10911".to_owned())),
                false => ("headless".to_owned(), None),
            })
            .collect();
        assert_eq!(masters(&a), want);
        let (first, last) = (a.addrs[0].as_ref().unwrap(), b.addrs[3].as_ref().unwrap());
        assert!(Arc::ptr_eq(first, last), "two copies of one address");
    }
}
