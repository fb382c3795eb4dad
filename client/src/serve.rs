//! What brokers ask of this client on the connections it opened: that a consumer group's
//! members changed (its push consumer rebalances at once), and what became of a
//! transaction (a check-back, answered by the group's transactional producer).
//!
//! Invariant: the handler never blocks its connection's task nor waits on anything: a
//! notice fires a wake-up, a check-back is handed to its producer's thread pool (or dropped
//! when there is no such producer or its pool is full: the broker asks again at its next
//! check interval).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tracing::debug;
use weir_protocol::broker::{CheckTransactionState, NotifyConsumerIdsChanged};
use weir_protocol::net::BoxFuture;
use weir_protocol::{Connection, ErrorCode, Handler, Reply, Request, RequestCode};

use crate::transaction::Checker;

/// Wake-ups of the push consumers in this process, by group: brokers tell us when a
/// group's members change, and its consumer rebalances at once.
#[derive(Default)]
pub(crate) struct RebalanceTriggers {
    groups: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
}

impl RebalanceTriggers {
    pub(crate) fn of(&self, group: &str) -> Arc<tokio::sync::Notify> {
        let mut g = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(g.entry(group.to_owned()).or_default())
    }

    fn fire(&self, group: &str) {
        let g = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = g.get(group) {
            n.notify_one();
        }
    }
}

/// The transactional producers of this client, by producer group: who answers a group's
/// check-backs. Held weakly: a dropped producer answers nothing.
#[derive(Default)]
pub(crate) struct CheckBacks {
    groups: Mutex<HashMap<String, Weak<Checker>>>,
}

impl CheckBacks {
    /// Makes `checker` the one answering `group`'s check-backs; false if a live one does
    /// already (one transactional producer per group and client).
    pub(crate) fn register(&self, group: &str, checker: &Arc<Checker>) -> bool {
        let mut g = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if g.get(group).is_some_and(|w| w.strong_count() > 0) {
            return false;
        }
        g.insert(group.to_owned(), Arc::downgrade(checker));
        true
    }

    /// Forgets `checker` (if it is still the one of `group`).
    pub(crate) fn unregister(&self, group: &str, checker: &Checker) {
        let mut g = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if g.get(group)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), checker))
        {
            g.remove(group);
        }
    }

    fn of(&self, group: &str) -> Option<Arc<Checker>> {
        let g = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        g.get(group).and_then(Weak::upgrade)
    }
}

/// What the handler of every connection of one client serves.
#[derive(Default)]
pub(crate) struct Served {
    pub(crate) rebalance: RebalanceTriggers,
    pub(crate) check_backs: CheckBacks,
}

/// Serves what brokers ask of this client.
pub(crate) struct ClientHandler(pub(crate) Arc<Served>);

impl Handler for ClientHandler {
    fn handle<'a>(&'a self, conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            match RequestCode::from_u16(req.code) {
                Some(RequestCode::NotifyConsumerIdsChanged) => {
                    match req.decode::<NotifyConsumerIdsChanged>() {
                        Ok(n) => {
                            debug!(group = %n.group, "broker says the group's members changed");
                            self.0.rebalance.fire(&n.group);
                            Reply::ok(&())
                        }
                        Err(e) => Reply::error(ErrorCode::BadRequest, e.to_string()),
                    }
                }
                Some(RequestCode::CheckTransactionState) => {
                    match req.decode::<CheckTransactionState>() {
                        Ok(check) => match self.0.check_backs.of(&check.producer_group) {
                            Some(checker) => {
                                checker.submit(conn, check, req.body);
                                Reply::ok(&())
                            }
                            None => {
                                debug!(group = %check.producer_group, transaction = %check.transaction_id,
                                    "check-back for a group without a transactional producer here; dropped");
                                Reply::error(
                                    ErrorCode::InvalidParameter,
                                    format!(
                                        "no transactional producer of group {:?} here",
                                        check.producer_group
                                    ),
                                )
                            }
                        },
                        Err(e) => Reply::error(ErrorCode::BadRequest, e.to_string()),
                    }
                }
                _ => Reply::error(
                    ErrorCode::RequestCodeNotSupported,
                    format!("request code {} is not served by clients", req.code),
                ),
            }
        })
    }
}
