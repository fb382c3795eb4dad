//! The one place a typed request meets its processor: every protocol adapter decodes into
//! a [`BrokerRequest`], and [`Broker::dispatch`] checks access (`crate::acl`) and runs it,
//! under its family's bound on requests in flight (where metrics hook in too), and answers
//! a [`BrokerResponse`] or a [`ProcessError`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Semaphore, TryAcquireError};
use tracing::warn;
use weir_protocol::admin::{
    BrokerSettings, BrokerStats, DeleteGroup, GetGroupSummaries, GetMessageTrail, GroupDeleted,
    GroupSummaries, MessageTrail, OffsetsReset, ResetOffset, SetBrokerConfig,
};
use weir_protocol::broker::{
    ConsumeStats, ConsumerConnections, ConsumerList, ConsumerOffset, ConsumerSendMsgBack,
    CreateTopic, DeleteTopic, EndTransaction, GetConsumeStats, GetConsumerConnections,
    GetConsumerList, GetQueueOffsets, GetTopicStats, Heartbeat, ListTransactions, LockBatchMq,
    LockedQueues, OffsetAnswer, PullMessage, QueryConsumerOffset, QueryMessageByKey, QueueOffsets,
    ResolveTransaction, SearchOffsetByTimestamp, SendBatch, SendBatchResult, SendMessage,
    SendResult, SentBack, TopicStats, TransactionList, TransactionResolved, UnlockBatchMq,
    UnregisterClient, UpdateConsumerOffset, ViewMessageById,
};
use weir_protocol::filter::{
    FilterList, FilterRemoved, FilterReset, FilterUploaded, ListFilters, RemoveFilter, ResetFilter,
    UploadFilter,
};
use weir_protocol::net::{AnswerRoom, Cause};
use weir_protocol::route::TopicList;
use weir_store::StoredRecord;

use crate::acl::{Principal, SignedRequest};
use crate::broker::Broker;
use crate::clients::Link;
use crate::config::LimitsConfig;
use crate::error::{ProcessError, Processed};
use crate::processor::{Admission, Pulled};

/// A request, decoded from whatever protocol carried it.
#[derive(Debug)]
pub enum BrokerRequest {
    Send {
        req: SendMessage,
        body: Bytes,
    },
    SendBatch {
        req: SendBatch,
        body: Bytes,
    },
    SendBack(ConsumerSendMsgBack),
    Pull(PullMessage),
    /// A pull that also selects by an SQL92 expression over the messages' properties
    /// (RocketMQ's `MessageSelector.bySql`), after the tag expression and before the
    /// group's filter.
    PullSql {
        req: PullMessage,
        sql92: String,
    },
    Heartbeat(Heartbeat),
    UnregisterClient(UnregisterClient),
    QueryConsumerOffset(QueryConsumerOffset),
    UpdateConsumerOffset(UpdateConsumerOffset),
    LockQueues(LockBatchMq),
    UnlockQueues(UnlockBatchMq),
    ConsumerConnections(GetConsumerConnections),
    ConsumerList(GetConsumerList),
    ConsumeStats(GetConsumeStats),
    CreateTopic(CreateTopic),
    DeleteTopic(DeleteTopic),
    AllTopics,
    TopicStats(GetTopicStats),
    QueueOffsets(GetQueueOffsets),
    SearchOffset(SearchOffsetByTimestamp),
    QueryByKey(QueryMessageByKey),
    ViewById(ViewMessageById),
    MessageTrail(GetMessageTrail),
    GroupSummaries(GetGroupSummaries),
    UploadFilter {
        req: UploadFilter,
        component: Bytes,
    },
    ListFilters(ListFilters),
    RemoveFilter(RemoveFilter),
    ResetFilter(ResetFilter),
    EndTransaction(EndTransaction),
    ListTransactions(ListTransactions),
    ResolveTransaction(ResolveTransaction),
    ResetOffset(ResetOffset),
    DeleteGroup(DeleteGroup),
    BrokerStats,
    BrokerConfig,
    SetBrokerConfig(SetBrokerConfig),
}

/// What a request's processor answered.
#[derive(Debug)]
pub enum BrokerResponse {
    Sent(SendResult),
    SentBatch(SendBatchResult),
    SentBack(SentBack),
    Pulled(Pulled),
    /// Done; nothing to say.
    Done,
    ConsumerOffset(ConsumerOffset),
    LockedQueues(LockedQueues),
    ConsumerConnections(ConsumerConnections),
    ConsumerList(ConsumerList),
    ConsumeStats(ConsumeStats),
    TopicList(TopicList),
    TopicStats(TopicStats),
    QueueOffsets(QueueOffsets),
    Offset(OffsetAnswer),
    /// Messages found by a lookup, as stored.
    Records(Vec<StoredRecord>),
    FilterUploaded(FilterUploaded),
    FilterList(FilterList),
    FilterRemoved(FilterRemoved),
    FilterReset(FilterReset),
    Transactions(TransactionList),
    TransactionResolved(TransactionResolved),
    OffsetsReset(OffsetsReset),
    GroupDeleted(GroupDeleted),
    BrokerStats(BrokerStats),
    BrokerSettings(BrokerSettings),
    MessageTrail(MessageTrail),
    GroupSummaries(GroupSummaries),
}

/// Families of requests, each with its own bound on requests in flight, so one family
/// flooding the broker does not starve the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Send,
    Pull,
    Consumer,
    Admin,
    Filter,
}

/// Every family, in the order of [`Family::index`].
pub const FAMILIES: [Family; 5] = [
    Family::Send,
    Family::Pull,
    Family::Consumer,
    Family::Admin,
    Family::Filter,
];

impl Family {
    /// Its place in [`FAMILIES`] and in [`FamilyLimits`]' tables.
    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Send => "send",
            Family::Pull => "pull",
            Family::Consumer => "consumer",
            Family::Admin => "admin",
            Family::Filter => "filter",
        }
    }
}

impl BrokerRequest {
    /// Whether the request changes the log or the topics: only masters take those.
    pub fn writes(&self) -> bool {
        use BrokerRequest as R;
        matches!(
            self,
            R::Send { .. }
                | R::SendBatch { .. }
                | R::SendBack(_)
                | R::EndTransaction(_)
                | R::ResolveTransaction(_)
                | R::CreateTopic(_)
                | R::DeleteTopic(_)
                | R::UploadFilter { .. }
                | R::RemoveFilter(_)
                | R::ResetOffset(_)
                | R::DeleteGroup(_)
        )
    }

    pub fn family(&self) -> Family {
        use BrokerRequest as R;
        match self {
            R::Send { .. } | R::SendBatch { .. } | R::SendBack(_) | R::EndTransaction(_) => {
                Family::Send
            }
            R::Pull(_) | R::PullSql { .. } => Family::Pull,
            R::Heartbeat(_)
            | R::UnregisterClient(_)
            | R::QueryConsumerOffset(_)
            | R::UpdateConsumerOffset(_)
            | R::LockQueues(_)
            | R::UnlockQueues(_)
            | R::ConsumerConnections(_)
            | R::ConsumerList(_)
            | R::ConsumeStats(_) => Family::Consumer,
            R::CreateTopic(_)
            | R::DeleteTopic(_)
            | R::AllTopics
            | R::TopicStats(_)
            | R::QueueOffsets(_)
            | R::SearchOffset(_)
            | R::QueryByKey(_)
            | R::ViewById(_)
            | R::MessageTrail(_)
            | R::GroupSummaries(_)
            | R::ListTransactions(_)
            | R::ResolveTransaction(_)
            | R::ResetOffset(_)
            | R::DeleteGroup(_)
            | R::BrokerStats
            | R::BrokerConfig
            | R::SetBrokerConfig(_) => Family::Admin,
            R::UploadFilter { .. } | R::ListFilters(_) | R::RemoveFilter(_) | R::ResetFilter(_) => {
                Family::Filter
            }
        }
    }
}

/// Who sent a request.
#[derive(Clone)]
pub struct RequestContext {
    /// When the request arrived whole (its frame read, for weir's frames): flow control
    /// measures a send's wait for the store from here.
    pub received: Instant,
    pub peer: SocketAddr,
    /// How to reach the client again (membership notices); given with heartbeats.
    pub link: Option<Link>,
    /// The request as signed, for access control (given while it is on).
    pub signed: Option<SignedRequest>,
    /// Queues a send asks for should it create its topic (RocketMQ's
    /// `defaultTopicQueueNums`); at most the broker's default, which `None` means.
    pub auto_create_queues: Option<u32>,
    /// How many bytes the answer may take (see [`AnswerRoom`]): the connection's, or
    /// unbounded in-process.
    pub answer_room: AnswerRoom,
}

/// How long a pull that ended another connection's held pull early waits for its room
/// (that pull answers at once; past this the pull is refused as busy).
const PREEMPTED_ROOM_WAIT: Duration = Duration::from_secs(1);

/// Requests in flight per family, each table indexed by [`Family::index`].
pub struct FamilyLimits {
    permits: [Semaphore; 5],
    caps: [usize; 5],
    /// Requests refused at the bound, per family; logged at most once per interval.
    refused: [Cause; 5],
}

impl FamilyLimits {
    pub fn new(c: &LimitsConfig) -> Self {
        let caps = [
            c.inflight_send,
            c.inflight_pull,
            c.inflight_consumer,
            c.inflight_admin,
            c.inflight_filter,
        ];
        Self {
            permits: caps.map(Semaphore::new),
            caps,
            refused: Default::default(),
        }
    }

    /// Requests of `family` in flight now.
    pub fn in_flight(&self, family: Family) -> usize {
        let i = family.index();
        self.caps[i].saturating_sub(self.permits[i].available_permits())
    }

    /// Requests of `family` refused as busy at its bound since start.
    pub fn refused(&self, family: Family) -> u64 {
        self.refused[family.index()].total()
    }
}

impl Broker {
    /// Requests of `family` in flight now, and refused as busy at its bound since start.
    pub fn family_load(&self, family: Family) -> (usize, u64) {
        (self.limits.in_flight(family), self.limits.refused(family))
    }

    /// Runs `req` with its processor, within its family's bound on requests in flight.
    pub async fn dispatch(
        &self,
        ctx: &RequestContext,
        req: BrokerRequest,
    ) -> Processed<BrokerResponse> {
        let family = req.family();
        let principal = self
            .acl
            .check(ctx.signed.as_ref(), &req, |id| self.clients.groups_of(id))?;
        if req.writes() {
            self.check_master()?;
        } else if let Some(why) = self.replication.diverged() {
            return Err(ProcessError::ReplicaDiverged(format!(
                "this slave's log differs from its master's; it serves nothing: {why}"
            )));
        }
        let permits = &self.limits.permits[family.index()];
        let (_permit, may_hold) = match permits.try_acquire() {
            Ok(p) => (Some(p), true),
            // A held pull of a connection holding more than its share answers now, and
            // this pull takes its place (the semaphore hands it to the longest waiting).
            Err(TryAcquireError::NoPermits)
                if family == Family::Pull && self.holds.preempt_for(ctx.peer) =>
            {
                match tokio::time::timeout(PREEMPTED_ROOM_WAIT, permits.acquire()).await {
                    Ok(Ok(p)) => (Some(p), true),
                    Ok(Err(_)) | Err(_) => (None, false),
                }
            }
            // A pull past the bound is still answered when it finds messages at once
            // (it is over as soon as it is read); only one that would be held is refused.
            Err(TryAcquireError::NoPermits) if family == Family::Pull => (None, false),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                return Err(self.busy(family));
            }
        };
        let admission = Admission {
            from: Some(ctx.peer),
            may_hold,
            answer_room: ctx.answer_room.clone(),
        };
        let started = Instant::now();
        let answer = self
            .process(ctx, req, principal.as_deref(), admission)
            .await;
        match family {
            Family::Send => self.metrics.observe_send(started.elapsed()),
            Family::Pull => self.metrics.observe_pull(started.elapsed()),
            Family::Consumer | Family::Admin | Family::Filter => {}
        }
        answer
    }

    /// Counts and answers a refusal at `family`'s bound.
    pub(crate) fn busy(&self, family: Family) -> ProcessError {
        let i = family.index();
        let cap = self.limits.caps[i];
        self.limits.refused[i].record(|count| {
            warn!(
                cap,
                count,
                "{} requests refused as busy at limits.inflight_{}: {count} since the last report",
                family.name(),
                family.name()
            );
        });
        ProcessError::Busy(format!(
            "{cap} {} requests are in flight already (limits.inflight_{}); retry shortly",
            family.name(),
            family.name()
        ))
    }

    /// `principal`: who signed the request, while access control is on (a send-back's
    /// record is checked against it once read); `admission`: how a pull was let in.
    async fn process(
        &self,
        ctx: &RequestContext,
        req: BrokerRequest,
        principal: Option<&Principal>,
        admission: Admission,
    ) -> Processed<BrokerResponse> {
        use BrokerRequest as R;
        use BrokerResponse as A;
        Ok(match req {
            R::Send { req, body } => A::Sent(self.send(req, body, ctx).await?),
            R::SendBatch { req, body } => A::SentBatch(self.send_batch(req, body, ctx).await?),
            R::SendBack(r) => A::SentBack(self.send_back(r, principal).await?),
            R::Pull(r) => A::Pulled(self.pull_selected(r, None, admission).await?),
            R::PullSql { req, sql92 } => {
                A::Pulled(self.pull_selected(req, Some(&sql92), admission).await?)
            }
            R::Heartbeat(hb) => {
                let link = ctx.link.as_ref().ok_or_else(|| {
                    ProcessError::Internal(
                        "a heartbeat came without a way back to its client".into(),
                    )
                })?;
                let owner = principal.map(|p| p.credentials.access_key());
                self.heartbeat(hb, link, owner)?;
                A::Done
            }
            R::UnregisterClient(r) => {
                self.unregister_client(r, principal.map(|p| p.credentials.access_key()))?;
                A::Done
            }
            R::QueryConsumerOffset(r) => A::ConsumerOffset(self.query_consumer_offset(r)),
            R::UpdateConsumerOffset(r) => {
                self.update_consumer_offset(r)?;
                A::Done
            }
            R::LockQueues(r) => A::LockedQueues(self.lock_queues(r)?),
            R::UnlockQueues(r) => {
                self.unlock_queues(r);
                A::Done
            }
            R::ConsumerConnections(r) => A::ConsumerConnections(self.consumer_connections(r)),
            R::ConsumerList(r) => A::ConsumerList(self.consumer_list(r)),
            R::ConsumeStats(r) => A::ConsumeStats(self.consume_stats(r)),
            R::CreateTopic(r) => {
                self.create_topic(r)?;
                A::Done
            }
            R::DeleteTopic(r) => {
                self.delete_topic(r).await?;
                A::Done
            }
            R::AllTopics => A::TopicList(self.all_topics()),
            R::TopicStats(r) => A::TopicStats(self.topic_stats(r)?),
            R::QueueOffsets(r) => A::QueueOffsets(self.queue_offsets(r)),
            R::SearchOffset(r) => A::Offset(self.search_offset(r)),
            R::QueryByKey(r) => A::Records(self.query_by_key(r, &admission.answer_room)?),
            R::ViewById(r) => A::Records(vec![self.view_by_id(r)?]),
            R::MessageTrail(r) => A::MessageTrail(self.message_trail(r)?),
            R::GroupSummaries(r) => A::GroupSummaries(self.group_summaries(r)),
            R::UploadFilter { req, component } => {
                A::FilterUploaded(self.upload_filter(req, component).await?)
            }
            R::ListFilters(r) => A::FilterList(self.list_filters(r)),
            R::RemoveFilter(r) => A::FilterRemoved(self.remove_filter(r).await?),
            R::ResetFilter(r) => A::FilterReset(self.reset_filter(r).await?),
            R::EndTransaction(r) => {
                self.end_transaction(r).await?;
                A::Done
            }
            R::ListTransactions(r) => A::Transactions(self.list_transactions(r)?),
            R::ResolveTransaction(r) => A::TransactionResolved(self.resolve_transaction(r).await?),
            R::ResetOffset(r) => A::OffsetsReset(self.reset_offset(r).await?),
            R::DeleteGroup(r) => A::GroupDeleted(self.delete_group(r).await?),
            R::BrokerStats => A::BrokerStats(self.stats()),
            R::BrokerConfig => A::BrokerSettings(self.live_settings()),
            R::SetBrokerConfig(r) => A::BrokerSettings(self.set_live_setting(r)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_has_its_own_bound() {
        let c = LimitsConfig {
            inflight_send: 1,
            inflight_pull: 2,
            inflight_consumer: 3,
            inflight_admin: 4,
            inflight_filter: 5,
            ..LimitsConfig::default()
        };
        let limits = FamilyLimits::new(&c);
        for (i, f) in FAMILIES.into_iter().enumerate() {
            assert_eq!(f.index(), i, "{}", f.name());
            assert_eq!(limits.caps[i], i + 1, "{}", f.name());
            assert_eq!(limits.in_flight(f), 0);
        }
        let _held = limits.permits[Family::Pull.index()].try_acquire().unwrap();
        assert_eq!(limits.in_flight(Family::Pull), 1);
        assert_eq!(limits.in_flight(Family::Send), 0);
    }
}
