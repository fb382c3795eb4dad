//! The adapter for weir's own frames: decodes a frame's header into a typed
//! [`BrokerRequest`], runs it through [`Broker::dispatch`], and encodes the answer; maps
//! each [`ProcessError`] kind to its status here and nowhere else.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use weir_protocol::admin::{GetBrokerConfig, GetBrokerStats};
use weir_protocol::broker::{CheckTransactionState, NotifyConsumerIdsChanged, RecordCount};
use weir_protocol::net::BoxFuture;
use weir_protocol::route::GetAllTopics;
use weir_protocol::{Connection, ErrorCode, Handler, ProtocolError, Reply, Request, RequestCode};
use weir_store::{StoreError, StoredRecord};

use super::answer_buffers::AnswerBuffers;
use crate::acl::SignedRequest;
use crate::broker::Broker;
use crate::clients::{ClientLink, Link};
use crate::dispatch::{BrokerRequest, BrokerResponse, RequestContext};
use crate::error::ProcessError;

/// Serves weir frames with a broker.
pub struct WeirAdapter(pub Arc<Broker>);

impl Handler for WeirAdapter {
    fn handle<'a>(&'a self, conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            let decoded = match decode(&req) {
                Ok(r) => r,
                Err(e) => return self.error_reply(&e),
            };
            // Only a heartbeat keeps a way back to the client.
            let link: Option<Link> = match decoded {
                BrokerRequest::Heartbeat(_) => Some(Arc::new(WeirLink(conn.clone()))),
                _ => None,
            };
            // The signed parts, only while access control is on (else nothing to check).
            let signed = self.0.acl.enabled().then(|| SignedRequest {
                code: req.code,
                oneway: req.oneway,
                auth: req.auth.clone(),
                header: req.header.clone(),
                body: req.body.clone(),
            });
            let ctx = RequestContext {
                received: req.received,
                peer: conn.peer(),
                link,
                signed,
                auto_create_queues: None,
                answer_room: conn.answer_room(),
            };
            match self.0.dispatch(&ctx, decoded).await {
                Ok(answer) => encode(answer),
                Err(e) => self.error_reply(&e),
            }
        })
    }

    fn on_close(&self, conn: &Connection) {
        self.0.connection_closed(conn.id());
    }

    /// Writes run to their end even when the client is gone by then.
    fn completes_after_close(&self, req: &Request) -> bool {
        matches!(
            RequestCode::from_u16(req.code),
            Some(
                RequestCode::SendMessage
                    | RequestCode::SendBatch
                    | RequestCode::ConsumerSendMsgBack
                    | RequestCode::EndTransaction
                    | RequestCode::UpdateConsumerOffset
            )
        )
    }
}

/// A weir connection as the broker's way back to a client.
struct WeirLink(Connection);

impl ClientLink for WeirLink {
    fn id(&self) -> u64 {
        self.0.id()
    }
    fn peer(&self) -> SocketAddr {
        self.0.peer()
    }
    fn notify_consumer_ids_changed(&self, group: &str) -> BoxFuture<'static, Result<(), String>> {
        let conn = self.0.clone();
        let req = NotifyConsumerIdsChanged {
            group: group.to_owned(),
        };
        Box::pin(async move {
            conn.oneway(&req, Bytes::new())
                .await
                .map_err(|e| e.to_string())
        })
    }
    fn check_transaction_state(
        &self,
        check: CheckTransactionState,
        half: Bytes,
    ) -> BoxFuture<'static, Result<(), String>> {
        let conn = self.0.clone();
        Box::pin(async move { conn.oneway(&check, half).await.map_err(|e| e.to_string()) })
    }
}

fn decode(req: &Request) -> Result<BrokerRequest, ProcessError> {
    use BrokerRequest as R;
    let bad = |e: ProtocolError| ProcessError::BadRequest(e.to_string());
    let body = || req.body.clone();
    let Some(code) = RequestCode::from_u16(req.code) else {
        return Err(unsupported(req.code));
    };
    Ok(match code {
        RequestCode::SendMessage => R::Send {
            req: req.decode().map_err(bad)?,
            body: body(),
        },
        RequestCode::SendBatch => R::SendBatch {
            req: req.decode().map_err(bad)?,
            body: body(),
        },
        RequestCode::ConsumerSendMsgBack => R::SendBack(req.decode().map_err(bad)?),
        RequestCode::PullMessage => R::Pull(req.decode().map_err(bad)?),
        RequestCode::Heartbeat => R::Heartbeat(req.decode().map_err(bad)?),
        RequestCode::UnregisterClient => R::UnregisterClient(req.decode().map_err(bad)?),
        RequestCode::QueryConsumerOffset => R::QueryConsumerOffset(req.decode().map_err(bad)?),
        RequestCode::UpdateConsumerOffset => R::UpdateConsumerOffset(req.decode().map_err(bad)?),
        RequestCode::LockBatchMq => R::LockQueues(req.decode().map_err(bad)?),
        RequestCode::UnlockBatchMq => R::UnlockQueues(req.decode().map_err(bad)?),
        RequestCode::GetConsumerConnections => R::ConsumerConnections(req.decode().map_err(bad)?),
        RequestCode::GetConsumerList => R::ConsumerList(req.decode().map_err(bad)?),
        RequestCode::GetConsumeStats => R::ConsumeStats(req.decode().map_err(bad)?),
        RequestCode::CreateTopic => R::CreateTopic(req.decode().map_err(bad)?),
        RequestCode::DeleteTopic => R::DeleteTopic(req.decode().map_err(bad)?),
        RequestCode::GetAllTopics => {
            req.decode::<GetAllTopics>().map_err(bad)?;
            R::AllTopics
        }
        RequestCode::GetTopicStats => R::TopicStats(req.decode().map_err(bad)?),
        RequestCode::GetQueueOffsets => R::QueueOffsets(req.decode().map_err(bad)?),
        RequestCode::SearchOffsetByTimestamp => R::SearchOffset(req.decode().map_err(bad)?),
        RequestCode::QueryMessage => R::QueryByKey(req.decode().map_err(bad)?),
        RequestCode::ViewMessageById => R::ViewById(req.decode().map_err(bad)?),
        RequestCode::GetMessageTrail => R::MessageTrail(req.decode().map_err(bad)?),
        RequestCode::GetGroupSummaries => R::GroupSummaries(req.decode().map_err(bad)?),
        RequestCode::UploadFilter => R::UploadFilter {
            req: req.decode().map_err(bad)?,
            component: body(),
        },
        RequestCode::ListFilters => R::ListFilters(req.decode().map_err(bad)?),
        RequestCode::RemoveFilter => R::RemoveFilter(req.decode().map_err(bad)?),
        RequestCode::ResetFilter => R::ResetFilter(req.decode().map_err(bad)?),
        RequestCode::EndTransaction => R::EndTransaction(req.decode().map_err(bad)?),
        RequestCode::ListTransactions => R::ListTransactions(req.decode().map_err(bad)?),
        RequestCode::ResolveTransaction => R::ResolveTransaction(req.decode().map_err(bad)?),
        RequestCode::ResetOffset => R::ResetOffset(req.decode().map_err(bad)?),
        RequestCode::DeleteGroup => R::DeleteGroup(req.decode().map_err(bad)?),
        RequestCode::GetBrokerStats => {
            req.decode::<GetBrokerStats>().map_err(bad)?;
            R::BrokerStats
        }
        RequestCode::GetBrokerConfig => {
            req.decode::<GetBrokerConfig>().map_err(bad)?;
            R::BrokerConfig
        }
        RequestCode::SetBrokerConfig => R::SetBrokerConfig(req.decode().map_err(bad)?),
        RequestCode::CheckTransactionState
        | RequestCode::HaHello
        | RequestCode::HaData
        | RequestCode::HaAck
        | RequestCode::HaSync
        | RequestCode::HaComponent
        | RequestCode::NotifyConsumerIdsChanged
        | RequestCode::RegisterBroker
        | RequestCode::UnregisterBroker
        | RequestCode::GetRoute
        | RequestCode::GetClusterInfo
        | RequestCode::GetTopicSummaries => return Err(unsupported(req.code)),
    })
}

fn unsupported(code: u16) -> ProcessError {
    ProcessError::Unsupported(format!("the broker does not serve request code {code}"))
}

/// Stored records one after another, as weir's pull and lookup answers carry them.
fn concat(records: &[StoredRecord]) -> Bytes {
    let len = records.iter().map(StoredRecord::len).sum();
    AnswerBuffers::shared().concat(records.iter().map(StoredRecord::bytes), len)
}

fn encode(answer: BrokerResponse) -> Reply {
    use BrokerResponse as A;
    match answer {
        A::Sent(r) => Reply::ok(&r),
        A::SentBatch(r) => Reply::ok(&r),
        A::SentBack(r) => Reply::ok(&r),
        A::Pulled(p) => Reply::ok_with_body(&p.result, concat(&p.records)),
        A::Done => Reply::ok(&()),
        A::ConsumerOffset(r) => Reply::ok(&r),
        A::LockedQueues(r) => Reply::ok(&r),
        A::ConsumerConnections(r) => Reply::ok(&r),
        A::ConsumerList(r) => Reply::ok(&r),
        A::ConsumeStats(r) => Reply::ok(&r),
        A::TopicList(r) => Reply::ok(&r),
        A::TopicStats(r) => Reply::ok(&r),
        A::QueueOffsets(r) => Reply::ok(&r),
        A::Offset(r) => Reply::ok(&r),
        A::Records(recs) => Reply::ok_with_body(
            &RecordCount {
                count: recs.len() as u32,
            },
            concat(&recs),
        ),
        A::FilterUploaded(r) => Reply::ok(&r),
        A::FilterList(r) => Reply::ok(&r),
        A::FilterRemoved(r) => Reply::ok(&r),
        A::FilterReset(r) => Reply::ok(&r),
        A::Transactions(r) => Reply::ok(&r),
        A::TransactionResolved(r) => Reply::ok(&r),
        A::OffsetsReset(r) => Reply::ok(&r),
        A::GroupDeleted(r) => Reply::ok(&r),
        A::BrokerStats(r) => Reply::ok(&r),
        A::BrokerSettings(r) => Reply::ok(&r),
        A::MessageTrail(r) => Reply::ok(&r),
        A::GroupSummaries(r) => match r.encode() {
            Ok(body) => Reply::ok_with_body(&(), body),
            Err(e) => Reply::error(ErrorCode::SystemError, e.to_string()),
        },
    }
}

impl WeirAdapter {
    /// The answer to a refused request, counted by its status.
    fn error_reply(&self, e: &ProcessError) -> Reply {
        let code = status_of(e);
        self.0.metrics.error(code);
        Reply::error(code, e.to_string())
    }
}

/// The weir status of each kind of refusal: the one place they are chosen.
pub fn status_of(e: &ProcessError) -> ErrorCode {
    use ProcessError as P;
    match e {
        P::BadRequest(_) => ErrorCode::BadRequest,
        P::InvalidParameter(_) | P::InvalidName(_) => ErrorCode::InvalidParameter,
        P::TopicNotFound(_) => ErrorCode::TopicNotExist,
        P::NoPermission(_) => ErrorCode::NoPermission,
        P::MessageIllegal(_) => ErrorCode::MessageIllegal,
        P::BadSubscription(_) => ErrorCode::SubscriptionParseFailed,
        P::NotFound(_) => ErrorCode::QueryNotFound,
        P::FilterRejected(_) => ErrorCode::FilterRejected,
        P::FilterFailed(_) => ErrorCode::FilterFailed,
        P::FilterMarkedFailed(_) => ErrorCode::FilterMarkedFailed,
        P::FilterNotFound(_) => ErrorCode::FilterNotFound,
        P::Busy(_) => ErrorCode::SystemBusy,
        P::StoreBusy(_) => ErrorCode::StoreBusy,
        P::TransactionInvalid(_) => ErrorCode::TransactionInvalid,
        P::GroupHasMembers(_) => ErrorCode::GroupHasMembers,
        P::NotMaster(_) => ErrorCode::NotMaster,
        P::ReplicaDiverged(_) => ErrorCode::ReplicaDiverged,
        P::Unsupported(_) => ErrorCode::RequestCodeNotSupported,
        P::AccessDenied(_) => ErrorCode::AccessDenied,
        P::Auth(a) => a.code(),
        P::Topics(_) | P::Internal(_) => ErrorCode::SystemError,
        P::Store(s) => match s {
            StoreError::InvalidMessage(_) | StoreError::MessageTooLarge { .. } => {
                ErrorCode::MessageIllegal
            }
            StoreError::ShutDown => ErrorCode::ServiceNotAvailable,
            StoreError::DiskFull { .. } => ErrorCode::DiskFull,
            StoreError::WritesStopped { .. } | StoreError::FlushFailed(_) => {
                ErrorCode::WritesStopped
            }
            _ => ErrorCode::SystemError,
        },
    }
}
