//! The adapter for RocketMQ's 4.x remoting protocol: what lets RocketMQ's own clients
//! (Java, Go, C++, Python, Node.js) produce and consume on weir unchanged.
//!
//! Each request's `extFields` become the same typed [`BrokerRequest`] weir's own frames
//! decode into, run through [`Broker::dispatch`], and the answer is written the way a
//! RocketMQ broker writes it: response codes, header fields and bodies (messages in
//! RocketMQ's layout, JSON bodies as fastjson writes them). Processors never learn which
//! protocol asked. One module per request family: `send`, `pull`, `consumer` (heartbeats,
//! offsets, locks, send-back) and `admin` (topics, lookups, transactions); the mapping from
//! a refusal to RocketMQ's response code is [`response_code`], here and nowhere else.
//!
//! The connection driver hands a request over as its typed header (one byte naming the
//! header's encoding, then the header as sent; see `RemotingCommand::header_parts`) and
//! the frame body, and writes the answer's typed header and body back the same way.

mod admin;
mod consumer;
mod link;
mod pull;
mod send;

use std::sync::Arc;
use std::time::Instant;

use tracing::debug;
use weir_protocol::net::BoxFuture;
use weir_protocol::net::Wire;
use weir_protocol::{Connection, ErrorCode, Handler, Reply, Request};
use weir_remoting::codes::{request as rq, response as rs};
use weir_remoting::{RemotingCommand, RemotingError};
use weir_store::StoreError;

use crate::broker::Broker;
use crate::dispatch::{BrokerRequest, BrokerResponse, RequestContext};
use crate::error::ProcessError;

pub use link::RemotingLink;

/// Serves RocketMQ remoting requests with a broker.
pub struct RemotingAdapter(pub Arc<Broker>);

/// What serving one request came to: its response (not written for one-way requests), or
/// why it was refused.
pub(crate) type Served = Result<RemotingCommand, ProcessError>;

/// The request being served: where it came from and when it arrived.
pub(crate) struct Call<'a> {
    pub conn: &'a Connection,
    /// When the driver read it (flow control measures waits from here).
    pub received: Instant,
}

impl Handler for RemotingAdapter {
    fn handle<'a>(&'a self, conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            let cmd = match RemotingCommand::from_parts(&req.header, req.body) {
                Ok(c) => c,
                // The driver read only the fields it needs; the rest is read here.
                Err(e) => return system_error_reply(req.request_id, &e),
            };
            let call = Call {
                conn,
                received: req.received,
            };
            let response = match self.serve(&call, &cmd).await {
                Ok(r) => r,
                Err(e) => self.refusal(&cmd, &e),
            };
            match response.header_parts() {
                Ok(header) => Reply {
                    status: 0,
                    header,
                    body: response.body,
                },
                Err(e) => system_error_reply(cmd.opaque as u32, &e),
            }
        })
    }

    fn on_close(&self, conn: &Connection) {
        self.0.connection_closed(conn.id());
    }

    /// Sends, send-backs, decisions and commits are stored even when the client is gone by
    /// the time they run (RocketMQ's Go producer sends "one-way" messages as requests and
    /// closes without reading the answers).
    fn completes_after_close(&self, req: &Request) -> bool {
        matches!(
            i32::from(req.code),
            rq::SEND_MESSAGE
                | rq::SEND_MESSAGE_V2
                | rq::SEND_BATCH_MESSAGE
                | rq::CONSUMER_SEND_MSG_BACK
                | rq::END_TRANSACTION
                | rq::UPDATE_CONSUMER_OFFSET
        )
    }
}

impl RemotingAdapter {
    async fn serve(&self, call: &Call<'_>, cmd: &RemotingCommand) -> Served {
        match cmd.code {
            rq::SEND_MESSAGE | rq::SEND_MESSAGE_V2 | rq::SEND_BATCH_MESSAGE => {
                send::serve(self, call, cmd).await
            }
            // RocketMQ 5.x's lite pull consumer says LITE_PULL_MESSAGE for the same pull.
            rq::PULL_MESSAGE | rq::LITE_PULL_MESSAGE => pull::serve(self, call, cmd).await,
            rq::HEART_BEAT
            | rq::UNREGISTER_CLIENT
            | rq::GET_CONSUMER_LIST_BY_GROUP
            | rq::QUERY_CONSUMER_OFFSET
            | rq::UPDATE_CONSUMER_OFFSET
            | rq::CONSUMER_SEND_MSG_BACK
            | rq::LOCK_BATCH_MQ
            | rq::UNLOCK_BATCH_MQ
            | rq::CHECK_CLIENT_CONFIG => consumer::serve(self, call, cmd).await,
            rq::GET_MAX_OFFSET
            | rq::GET_MIN_OFFSET
            | rq::SEARCH_OFFSET_BY_TIMESTAMP
            | rq::QUERY_MESSAGE
            | rq::VIEW_MESSAGE_BY_ID
            | rq::UPDATE_AND_CREATE_TOPIC
            | rq::END_TRANSACTION => admin::serve(self, call, cmd).await,
            code => {
                debug!(
                    code,
                    name = weir_remoting::codes::request_name(code),
                    "remoting request not served"
                );
                Ok(RemotingCommand::response_to(
                    cmd,
                    rs::REQUEST_CODE_NOT_SUPPORTED,
                    Some(format!(
                        "request code {code} ({}) is not supported by weir",
                        weir_remoting::codes::request_name(code)
                    )),
                ))
            }
        }
    }

    /// Runs a typed request through the broker's one dispatch path.
    pub(crate) async fn dispatch(
        &self,
        call: &Call<'_>,
        req: BrokerRequest,
        with_link: bool,
    ) -> Result<BrokerResponse, ProcessError> {
        self.0.dispatch(&Self::context(call, with_link), req).await
    }

    /// Refuses `req` as the dispatch would for access control, without running it: for
    /// an answer the adapter gives on its own, which must say nothing to a stranger.
    pub(crate) fn check_access(
        &self,
        call: &Call<'_>,
        req: &BrokerRequest,
    ) -> Result<(), ProcessError> {
        let ctx = Self::context(call, false);
        self.0
            .acl
            .check(ctx.signed.as_ref(), req, |id| self.0.clients.groups_of(id))
            .map(drop)
    }

    /// [`Self::dispatch`] for a send that creates its topic, if need be, with
    /// `auto_create_queues` queues (at most the broker's default).
    pub(crate) async fn dispatch_send(
        &self,
        call: &Call<'_>,
        req: BrokerRequest,
        auto_create_queues: Option<u32>,
    ) -> Result<BrokerResponse, ProcessError> {
        let ctx = RequestContext {
            auto_create_queues,
            ..Self::context(call, false)
        };
        self.0.dispatch(&ctx, req).await
    }

    fn context(call: &Call<'_>, with_link: bool) -> RequestContext {
        RequestContext {
            peer: call.conn.peer(),
            received: call.received,
            link: with_link.then(|| Arc::new(RemotingLink::new(call.conn.clone())) as _),
            // RocketMQ's ACL signatures are not read: with access control on, the dispatch
            // refuses every unsigned request, these included.
            signed: None,
            auto_create_queues: None,
            answer_room: call.conn.answer_room(),
        }
    }

    /// The answer to a refused request, counted like weir's own.
    fn refusal(&self, cmd: &RemotingCommand, e: &ProcessError) -> RemotingCommand {
        self.0.metrics.error(crate::adapter::weir::status_of(e));
        RemotingCommand::response_to(cmd, response_code(e), Some(e.to_string()))
    }
}

/// A reply for a request whose header cannot be read or answer written.
fn system_error_reply(opaque: u32, e: &RemotingError) -> Reply {
    Wire::Remoting.error_reply(opaque, ErrorCode::SystemError, &e.to_string())
}

/// A request field that is missing or unreadable: RocketMQ answers these with a system
/// error naming the field.
pub(crate) fn bad(e: RemotingError) -> ProcessError {
    ProcessError::BadRequest(format!("bad request header: {e}"))
}

/// RocketMQ's response code for each kind of refusal: the one place they are chosen.
pub fn response_code(e: &ProcessError) -> i32 {
    use ProcessError as P;
    match e {
        P::TopicNotFound(_) => rs::TOPIC_NOT_EXIST,
        P::NoPermission(_) | P::AccessDenied(_) | P::Auth(_) => rs::NO_PERMISSION,
        P::MessageIllegal(_) => rs::MESSAGE_ILLEGAL,
        P::BadSubscription(_) => rs::SUBSCRIPTION_PARSE_FAILED,
        // RocketMQ's producers retry a busy broker's sends elsewhere.
        P::Busy(_) | P::StoreBusy(_) => rs::SYSTEM_BUSY,
        P::NotMaster(_) | P::ReplicaDiverged(_) => rs::SERVICE_NOT_AVAILABLE,
        P::Unsupported(_) => rs::REQUEST_CODE_NOT_SUPPORTED,
        P::Store(s) => match s {
            StoreError::InvalidMessage(_) | StoreError::MessageTooLarge { .. } => {
                rs::MESSAGE_ILLEGAL
            }
            StoreError::ShutDown
            | StoreError::DiskFull { .. }
            | StoreError::WritesStopped { .. }
            | StoreError::FlushFailed(_) => rs::SERVICE_NOT_AVAILABLE,
            _ => rs::SYSTEM_ERROR,
        },
        // A message looked up by offset or sent back that is not there (a lookup by key
        // answers QUERY_NOT_FOUND itself). A pull the group's filter failed: RocketMQ's
        // consumers log a SYSTEM_ERROR's remark (naming the filter, version and cause) and
        // pull again after a pause, which is what a failed filter needs.
        P::NotFound(_)
        | P::BadRequest(_)
        | P::InvalidParameter(_)
        | P::InvalidName(_)
        | P::FilterRejected(_)
        | P::FilterFailed(_)
        | P::FilterMarkedFailed(_)
        | P::FilterNotFound(_)
        | P::TransactionInvalid(_)
        | P::GroupHasMembers(_)
        | P::Topics(_)
        | P::Internal(_) => rs::SYSTEM_ERROR,
    }
}

/// The answer a processor gave when another was expected: a bug, said as such.
pub(crate) fn unexpected(what: &str) -> ProcessError {
    ProcessError::Internal(format!("{what}: the processor gave another kind of answer"))
}
